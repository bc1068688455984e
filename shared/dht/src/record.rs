//! Signed records: a [`RecordPayload`] as JSON inside a libp2p signed envelope.
//!
//! A record is valid when the envelope's signature verifies, the signer's peer id is the one named in the key
//! and in the payload, the body's kind matches the key's, and it has not expired (nor claims to live longer than
//! [`MAX_RECORD_LIFETIME_MS`]), both read with [`MAX_CLOCK_SKEW_MS`] of slack for clocks that disagree. Storers check
//! this before storing and readers again after reading; both also refuse a sequence number lower than one they hold
//! (a replay).

use commons_shared::dht::{
    KeyKind, MAX_CLOCK_SKEW_MS, MAX_RECORD_LIFETIME_MS, MAX_RECORD_SERVICES, RecordBody,
    RecordPayload, parse_record_key,
};
use libp2p::PeerId;
use libp2p::core::SignedEnvelope;
use libp2p::identity::Keypair;

/// Domain separation of our envelopes: a signature made for anything else never verifies here.
const DOMAIN: &str = "commons-dht-record";
/// Payload type of our envelopes.
const PAYLOAD_TYPE: &[u8] = b"/commons/record/1";
/// Largest record value accepted.
pub const MAX_VALUE_BYTES: usize = 8 * 1024;

/// Why a record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The key is not one of ours.
    #[error("the key is not a Commons record key")]
    BadKey,
    /// Too large.
    #[error("the record is larger than {MAX_VALUE_BYTES} bytes")]
    TooLarge,
    /// Not an envelope, or the signature does not verify.
    #[error("the signature does not verify")]
    BadSignature,
    /// Signed by someone other than the key names.
    #[error("signed by {signer}, but the key names {named}")]
    WrongSigner {
        /// Who signed.
        signer: String,
        /// Who the key names.
        named: String,
    },
    /// The payload is not a record, or its kind or fields do not match the key.
    #[error("the payload does not match the key: {0}")]
    BadPayload(String),
    /// Past its expiry, or claiming too long a life.
    #[error("the record has expired or claims to live too long")]
    Expired,
    /// Older than what is held.
    #[error("sequence {got} is not newer than the {held} already held")]
    Replay {
        /// The record's sequence number.
        got: u64,
        /// The one held.
        held: u64,
    },
}

/// Signs `payload` with `key`; the bytes to put under `key`'s record key.
pub fn sign(key: &Keypair, payload: &RecordPayload) -> Vec<u8> {
    let bytes = serde_json::to_vec(payload).expect("a record serialises");
    SignedEnvelope::new(key, DOMAIN.into(), PAYLOAD_TYPE.to_vec(), bytes)
        .expect("an ed25519 key signs")
        .into_protobuf_encoding()
}

/// Checks a record found under `key` at `now_ms` (Unix ms); the payload when it is valid.
pub fn verify(key: &str, value: &[u8], now_ms: u64) -> Result<RecordPayload, RecordError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(RecordError::TooLarge);
    }
    let kind = parse_record_key(key).ok_or(RecordError::BadKey)?;
    let envelope =
        SignedEnvelope::from_protobuf_encoding(value).map_err(|_| RecordError::BadSignature)?;
    let (bytes, signer) = envelope
        .payload_and_signing_key(DOMAIN.into(), PAYLOAD_TYPE)
        .map_err(|_| RecordError::BadSignature)?;
    let signer = signer.to_peer_id().to_base58();
    let named = match &kind {
        KeyKind::Worker { peer } | KeyKind::Coordinator { peer } => *peer,
    };
    if signer != named {
        return Err(RecordError::WrongSigner {
            signer,
            named: named.into(),
        });
    }
    let payload: RecordPayload =
        serde_json::from_slice(bytes).map_err(|e| RecordError::BadPayload(e.to_string()))?;
    if payload.peer_id != signer {
        return Err(RecordError::BadPayload("peer_id is not the signer".into()));
    }
    match (&kind, &payload.body) {
        (KeyKind::Worker { .. }, RecordBody::Worker(w)) => {
            if w.services.len() > MAX_RECORD_SERVICES {
                return Err(RecordError::BadPayload("too many services".into()));
            }
        }
        (KeyKind::Coordinator { .. }, RecordBody::Coordinator(c)) => {
            if c.url.is_empty() || c.url.len() > 2048 {
                return Err(RecordError::BadPayload("bad coordinator URL".into()));
            }
        }
        _ => return Err(RecordError::BadPayload("kind differs from the key".into())),
    }
    // With [`MAX_CLOCK_SKEW_MS`] of slack either way: the signer's clock and ours need not agree.
    if payload.expires_at_ms.saturating_add(MAX_CLOCK_SKEW_MS) <= now_ms
        || payload.expires_at_ms > now_ms.saturating_add(MAX_RECORD_LIFETIME_MS + MAX_CLOCK_SKEW_MS)
    {
        return Err(RecordError::Expired);
    }
    Ok(payload)
}

/// The peer id a record key names, if it is one of ours.
pub fn signer_of(key: &str) -> Option<PeerId> {
    match parse_record_key(key)? {
        KeyKind::Worker { peer } | KeyKind::Coordinator { peer } => peer.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use commons_shared::dht::{WorkerRecord, worker_key};

    use super::*;

    fn payload(key: &Keypair, seq: u64, expires_at_ms: u64) -> RecordPayload {
        RecordPayload {
            peer_id: key.public().to_peer_id().to_base58(),
            seq,
            expires_at_ms,
            body: RecordBody::Worker(WorkerRecord {
                services: vec!["ocr".into()],
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_signed_record_verifies_and_a_forged_one_does_not() {
        let alice = Keypair::generate_ed25519();
        let mallory = Keypair::generate_ed25519();
        let key = worker_key(&alice.public().to_peer_id().to_base58());
        let good = sign(&alice, &payload(&alice, 1, 10_000));
        assert_eq!(verify(&key, &good, 5_000).unwrap().seq, 1);

        // Mallory signs a record naming Alice: the key's peer is not the signer.
        let mut p = payload(&alice, 2, 10_000);
        p.peer_id = alice.public().to_peer_id().to_base58();
        let forged = sign(&mallory, &p);
        assert!(matches!(
            verify(&key, &forged, 5_000),
            Err(RecordError::WrongSigner { .. })
        ));

        // A flipped byte breaks the signature.
        let mut tampered = good.clone();
        let at = tampered.len() - 10;
        tampered[at] ^= 1;
        assert!(verify(&key, &tampered, 5_000).is_err());

        // Expired (past the slack for clocks), and too long a life.
        assert_eq!(
            verify(&key, &good, 10_000 + MAX_CLOCK_SKEW_MS),
            Err(RecordError::Expired)
        );
        let eternal = sign(&alice, &payload(&alice, 3, u64::MAX));
        assert_eq!(verify(&key, &eternal, 5_000), Err(RecordError::Expired));

        // Under a key of another kind.
        assert_eq!(
            verify("service/ocr/0", &good, 5_000),
            Err(RecordError::BadKey)
        );
        assert!(signer_of(&key).is_some());
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(128))]

            #[test]
            fn any_bytes_under_any_key_are_refused_not_a_panic(
                key in "(worker|coordinator|other)/[1-9A-HJ-NP-Za-km-z]{0,52}",
                value in proptest::collection::vec(any::<u8>(), 0..600),
                now in any::<u64>(),
            ) {
                prop_assert!(verify(&key, &value, now).is_err());
            }

            #[test]
            fn a_signed_record_verifies_until_any_byte_of_it_changes(
                seq in any::<u64>(),
                life in 1u64..3_600_000,
                services in proptest::collection::vec("[a-z]{1,8}", 0..8),
                at in any::<prop::sample::Index>(),
                flip in 1u8..,
            ) {
                let alice = Keypair::generate_ed25519();
                let key = worker_key(&alice.public().to_peer_id().to_base58());
                let now = 1_800_000_000_000;
                let mut p = payload(&alice, seq, now + life);
                if let RecordBody::Worker(w) = &mut p.body {
                    w.services = services;
                }
                let good = sign(&alice, &p);
                prop_assert_eq!(verify(&key, &good, now).unwrap(), p);
                let mut bad = good.clone();
                let i = at.index(bad.len());
                bad[i] ^= flip;
                prop_assert!(verify(&key, &bad, now).is_err(), "byte {i} of {}", bad.len());
            }
        }
    }
}
