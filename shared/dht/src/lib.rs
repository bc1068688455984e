//! The Commons DHT: rust-libp2p Kademlia under a private protocol name, with signed records.
//!
//! Coordinators and agents each run a [`Dht`] node. A worker publishes `worker/<PeerId>` (its services,
//! endpoint, load) and announces itself under its shard of each `service/<name>` key; a coordinator publishes
//! `coordinator/<PeerId>` (its URL, region) and announces itself under `coordinator/<region>` and
//! `coordinator/*`. Records are signed envelopes that storers check before storing and readers check again
//! ([`record`]); they live twice the refresh period, so a dead node drops out of discovery within two.
//! Keys and record bodies are plain data in `commons_shared::dht`.
#![deny(missing_docs)]

mod node;
pub mod record;

pub use libp2p::identity::Keypair;
pub use libp2p::multiaddr::Protocol;
pub use libp2p::{Multiaddr, PeerId};
pub use node::{
    Config, Connection, Dht, DhtError, Found, ID_PROTOCOL, KAD_PROTOCOL, RelayLimits, Role,
    Snapshot, now_ms, role_of, split_peer,
};

/// The multiaddrs among `list` (seeds as text: settings, caches, answers); what does not parse is skipped.
pub fn parse_addrs<S: AsRef<str>>(list: impl IntoIterator<Item = S>) -> Vec<Multiaddr> {
    list.into_iter()
        .filter_map(|a| a.as_ref().parse().ok())
        .collect()
}

/// Every address of every seed in an edge's `GET /api/dht/bootstrap` answer.
pub fn bootstrap_addrs(b: &commons_shared::edge::Bootstrap) -> Vec<Multiaddr> {
    parse_addrs(b.seeds.iter().flat_map(|s| &s.multiaddrs))
}

/// A new ed25519 identity.
pub fn generate_keypair() -> Keypair {
    Keypair::generate_ed25519()
}

/// An identity as bytes to keep (protobuf encoding), and back.
pub fn encode_keypair(key: &Keypair) -> Vec<u8> {
    key.to_protobuf_encoding().expect("an ed25519 key encodes")
}

/// Reads an identity kept by [`encode_keypair`].
pub fn decode_keypair(bytes: &[u8]) -> Result<Keypair, DhtError> {
    Keypair::from_protobuf_encoding(bytes).map_err(DhtError::Identity)
}
