//! Wrong answers from volunteers: the rules by which answers are compared and trust is earned and lost.
//!
//! A volunteer's machine can answer garbage, by fault or on purpose. For a deterministic request (the catalogue's
//! `verify`: OCR, embeddings on one model) the router sends a sample to a second worker as well and compares the two
//! answers; when they differ, a third worker breaks the tie, and the worker the other two outvote loses trust. The
//! consumer always gets the first worker's answer, and the extra requests are not counted against its key.
//!
//! Trust is a number from 0 to 1 kept with each worker: a new one starts at [`NEW_TRUST`], each confirmed answer
//! moves it a tenth of the way to 1, each outvoted one halves it. It scales the worker's share of requests and
//! divides its sampling rate (a new worker is checked twice as often), and below the coordinator's
//! `trust_threshold` the worker gets no requests at all (drained; the portal shows it).

use commons_shared::WorkerId;
use serde_json::Value;

/// A new worker's trust: limited until other workers confirm its answers.
pub const NEW_TRUST: f64 = 0.5;

/// Two numbers agree when they differ by at most this share of the larger one (or by this much, near zero):
/// embeddings computed on a CPU and on a GPU differ in their last digits, wrong ones in the first.
pub const TOLERANCE: f64 = 0.01;

/// The largest request body sampled (it is held in memory to be sent twice).
pub const MAX_REQUEST_BYTES: usize = 8 << 20;

/// The most of an answer kept to compare; a longer answer is not judged.
pub const MAX_ANSWER_BYTES: usize = 4 << 20;

/// How likely a request to a worker of trust `trust` is checked, when the coordinator checks `fraction` of the
/// requests of trusted workers.
pub fn probability(fraction: f64, trust: f64) -> f64 {
    if fraction <= 0.0 {
        return 0.0;
    }
    (fraction / trust.max(0.05)).min(1.0)
}

/// Trust after an answer others confirmed.
pub fn confirmed(trust: f64) -> f64 {
    trust + (1.0 - trust) * 0.1
}

/// Trust after an answer others outvoted.
pub fn outvoted(trust: f64) -> f64 {
    trust * 0.5
}

/// Whether two answers say the same: as JSON, the same structure, strings equal up to whitespace, numbers within
/// [`TOLERANCE`], the keys in `ignore` (at any depth) left out; otherwise the same bytes.
pub fn agree(a: &[u8], b: &[u8], ignore: &[String]) -> bool {
    match (
        serde_json::from_slice::<Value>(a),
        serde_json::from_slice::<Value>(b),
    ) {
        (Ok(x), Ok(y)) => same(&x, &y, ignore),
        _ => a == b,
    }
}

fn same(a: &Value, b: &Value, ignore: &[String]) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => (x - y).abs() <= TOLERANCE * x.abs().max(y.abs()).max(1.0),
            _ => x == y,
        },
        (Value::String(x), Value::String(y)) => x.split_whitespace().eq(y.split_whitespace()),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y, ignore))
        }
        (Value::Object(x), Value::Object(y)) => {
            let kept = |k: &&String| !ignore.contains(k);
            x.keys().filter(kept).count() == y.keys().filter(kept).count()
                && x.iter()
                    .filter(|(k, _)| kept(k))
                    .all(|(k, v)| y.get(k).is_some_and(|w| same(v, w, ignore)))
        }
        _ => a == b,
    }
}

/// What comparing the answers to one request found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// They agreed: each of these workers' answers was confirmed.
    Agreed(Vec<WorkerId>),
    /// One worker's answer differed from two others that agreed.
    Outvoted {
        /// Whose answer was wrong.
        wrong: WorkerId,
        /// Whose answers agreed.
        right: [WorkerId; 2],
    },
    /// The answers differed and nobody could break the tie (no third worker, or three different answers).
    Unresolved,
}

/// The verdict on two answers and, when they differ, a third (`None`: no third worker could answer).
pub fn judge(
    first: (WorkerId, &[u8]),
    second: (WorkerId, &[u8]),
    third: Option<(WorkerId, &[u8])>,
    ignore: &[String],
) -> Verdict {
    if agree(first.1, second.1, ignore) {
        return Verdict::Agreed(vec![first.0, second.0]);
    }
    match third {
        Some(t) if agree(t.1, first.1, ignore) => Verdict::Outvoted {
            wrong: second.0,
            right: [first.0, t.0],
        },
        Some(t) if agree(t.1, second.1, ignore) => Verdict::Outvoted {
            wrong: first.0,
            right: [second.0, t.0],
        },
        _ => Verdict::Unresolved,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ignore() -> Vec<String> {
        vec!["ms".into(), "id".into()]
    }

    #[test]
    fn answers_agree_up_to_whitespace_rounding_and_ignored_keys() {
        let a = br#"{"text":"Volunteers answer\nthis request","ms":120,"words":[{"confidence":96.5,"bbox":[1,2,3,4]}]}"#;
        let b = br#"{"ms":340,"text":"Volunteers  answer this request","words":[{"confidence":96.6,"bbox":[1,2,3,4]}]}"#;
        assert!(agree(a, b, &ignore()));
        // A word, a box, a missing key or a number off by more than 1 % is another answer.
        for other in [
            &br#"{"text":"Volunteers answer that request","ms":1,"words":[{"confidence":96.5,"bbox":[1,2,3,4]}]}"#[..],
            br#"{"text":"Volunteers answer this request","ms":1,"words":[{"confidence":96.5,"bbox":[1,2,3,5]}]}"#,
            br#"{"text":"Volunteers answer this request","ms":1}"#,
            br#"{"text":"Volunteers answer this request","ms":1,"words":[{"confidence":90,"bbox":[1,2,3,4]}]}"#,
        ] {
            assert!(!agree(a, other, &ignore()), "{}", String::from_utf8_lossy(other));
        }
        // Embeddings from a CPU and a GPU agree; a vector of another model does not.
        let e = |v: &[f64]| {
            serde_json::to_vec(&serde_json::json!({"data":[{"embedding": v}], "id": "x"})).unwrap()
        };
        assert!(agree(
            &e(&[0.12345, -0.5, 0.0001]),
            &e(&[0.1235, -0.5001, 0.0002]),
            &ignore()
        ));
        assert!(!agree(
            &e(&[0.12345, -0.5, 0.0001]),
            &e(&[0.3, -0.1, 0.2]),
            &ignore()
        ));
        assert!(!agree(&e(&[0.1, 0.2]), &e(&[0.1, 0.2, 0.3]), &ignore()));
        // Not JSON: byte for byte.
        assert!(agree(b"plain", b"plain", &[]));
        assert!(!agree(b"plain", b"plain ", &[]));
    }

    #[test]
    fn the_odd_one_out_is_outvoted() {
        let (a, b, c) = (WorkerId(1), WorkerId(2), WorkerId(3));
        let (good, bad) = (&br#"{"text":"right"}"#[..], &br#"{"text":"wrong"}"#[..]);
        assert_eq!(
            judge((a, good), (b, good), None, &[]),
            Verdict::Agreed(vec![a, b])
        );
        assert_eq!(
            judge((a, good), (b, bad), Some((c, good)), &[]),
            Verdict::Outvoted {
                wrong: b,
                right: [a, c]
            }
        );
        assert_eq!(
            judge((a, bad), (b, good), Some((c, good)), &[]),
            Verdict::Outvoted {
                wrong: a,
                right: [b, c]
            }
        );
        assert_eq!(judge((a, good), (b, bad), None, &[]), Verdict::Unresolved);
        assert_eq!(
            judge((a, good), (b, bad), Some((c, br#"{"text":"third"}"#)), &[]),
            Verdict::Unresolved
        );
    }

    #[test]
    fn trust_is_earned_slowly_and_lost_fast() {
        // A new worker outvoted twice falls below the default threshold (0.2); a trusted one three times.
        assert!(outvoted(outvoted(NEW_TRUST)) < 0.2);
        assert!(outvoted(outvoted(1.0)) >= 0.2 && outvoted(outvoted(outvoted(1.0))) < 0.2);
        let mut t = NEW_TRUST;
        for _ in 0..20 {
            let next = confirmed(t);
            assert!(next > t && next < 1.0);
            t = next;
        }
        assert!(t > 0.9);
        // Less trust, more checks; none when checks are off; never more than every request.
        assert_eq!(probability(0.02, 1.0), 0.02);
        assert_eq!(probability(0.02, NEW_TRUST), 0.04);
        assert_eq!(probability(0.0, 0.1), 0.0);
        assert_eq!(probability(0.5, 0.1), 1.0);
    }
}
