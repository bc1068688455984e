//! Accounting: every service request the coordinator routes becomes an event on a bounded channel; one task sums
//! them per minute, key, service and worker and hands the sums to the ledger ([`crate::ledger`]) every few seconds in
//! one write. (Donated time and display names come with heartbeats: they are kept in the worker and booked with its
//! live row by the flusher, [`crate::state::AppState::flush`], so no heartbeat sends an event.)
//!
//! The request path only fills a record and `try_send`s it: no lock, no I/O. When the channel is full (the writer
//! cannot keep up) the event is dropped and counted (`commons_accounting_dropped_total`), never waited for.
//!
//! Credit comes from what the coordinator saw only: a worker earns for the requests it completed (a 2xx or 3xx answer
//! that reached the client whole, counted here) and for the time between its heartbeats while it donated (measured
//! by the coordinator's clock); nothing it reports about itself counts.

use std::time::Duration;

use commons_shared::WorkerId;
use commons_shared::usage::Totals;
use rustc_hash::FxHashMap;
use tokio::sync::mpsc;

use crate::ledger::{Batch, CreditRow, UsageRow};
use crate::store::Store;

const MINUTE_MS: i64 = 60_000;
/// Records waiting for the task at most.
const CHANNEL: usize = 65_536;

/// One service request, once its answer ended.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Record {
    /// When it arrived, ms since the epoch.
    pub at_ms: i64,
    /// The consumer's key id ("" anonymous).
    pub key: String,
    /// The service's catalogue index.
    pub service: usize,
    /// The worker that served it; none when no worker of ours took it (none could, the queue refused it, or it
    /// went to another coordinator's worker found in the DHT).
    pub worker: Option<WorkerId>,
    /// What a second of that worker's compute is worth ([`commons_shared::usage::compute_weight`]).
    pub weight: f64,
    /// Its sums (`requests` 1; `completed` 1 when it completed).
    pub totals: Totals,
}

/// The request path's end of accounting.
#[derive(Debug)]
pub(crate) struct Accounting {
    tx: Option<mpsc::Sender<Record>>,
    dropped: metrics::Counter,
}

impl Accounting {
    /// Accounting on (with the receiver for [`run`]) or off.
    pub(crate) fn new(on: bool) -> (Self, Option<mpsc::Receiver<Record>>) {
        metrics::describe_counter!(
            "commons_accounting_dropped_total",
            "Accounting events dropped because the ledger could not keep up"
        );
        let dropped = metrics::counter!("commons_accounting_dropped_total");
        if !on {
            return (Self { tx: None, dropped }, None);
        }
        let (tx, rx) = mpsc::channel(CHANNEL);
        (
            Self {
                tx: Some(tx),
                dropped,
            },
            Some(rx),
        )
    }

    /// Whether requests are accounted (so worth measuring).
    pub(crate) fn on(&self) -> bool {
        self.tx.is_some()
    }

    /// Hands a record to the task without waiting; dropped (and counted) when it is behind.
    pub(crate) fn send(&self, record: Record) {
        if let Some(tx) = &self.tx
            && tx.try_send(record).is_err()
        {
            self.dropped.increment(1);
        }
    }
}

/// The sums since the last write.
#[derive(Default)]
struct Sums {
    usage: FxHashMap<(i64, String, usize, Option<WorkerId>), Totals>,
    credit: FxHashMap<WorkerId, CreditRow>,
}

impl Sums {
    fn add(&mut self, r: Record) {
        if let Some(worker) = r.worker
            && r.totals.completed > 0
        {
            let c = self.credit.entry(worker).or_default();
            c.requests += r.totals.completed;
            c.compute_ms += r.totals.duration_ms as f64 * r.weight;
        }
        let t = self
            .usage
            .entry((r.at_ms.div_euclid(MINUTE_MS), r.key, r.service, r.worker))
            .or_default();
        add(t, &r.totals);
    }

    fn batch(&mut self, names: &[String]) -> Batch {
        let taken = std::mem::take(self);
        Batch {
            usage: taken
                .usage
                .into_iter()
                .map(|((minute, key_id, service, worker), totals)| UsageRow {
                    minute,
                    key_id,
                    service: names.get(service).cloned().unwrap_or_default(),
                    worker_id: worker,
                    totals,
                })
                .collect(),
            credit: taken.credit.into_iter().collect(),
        }
    }
}

fn add(t: &mut Totals, r: &Totals) {
    t.requests += r.requests;
    t.completed += r.completed;
    t.bytes_in += r.bytes_in;
    t.bytes_out += r.bytes_out;
    t.duration_ms += r.duration_ms;
    t.prompt_tokens += r.prompt_tokens;
    t.completion_tokens += r.completion_tokens;
}

/// The accounting task: sums events and writes them every `every` (and what is left when the channel closes).
/// `services` are the catalogue's names by index.
pub(crate) async fn run(
    store: Store,
    services: Vec<String>,
    mut rx: mpsc::Receiver<Record>,
    every: Duration,
) {
    let mut sums = Sums::default();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            e = rx.recv() => match e {
                Some(e) => sums.add(e),
                None => break,
            },
            _ = tick.tick() => {
                let batch = sums.batch(&services);
                if !batch.is_empty() {
                    store.add_usage(batch, crate::state::now_ms());
                }
            }
        }
    }
    let batch = sums.batch(&services);
    if !batch.is_empty() {
        store.add_usage(batch, crate::state::now_ms());
    }
}

/// The prompt and completion tokens an OpenAI-compatible answer reports in its `usage` (the last one in the text:
/// a stream's final chunk), from the answer's tail.
pub(crate) fn tokens(tail: &[u8]) -> (u64, u64) {
    fn last_number(text: &[u8], field: &[u8]) -> u64 {
        let Some(at) = text.windows(field.len()).rposition(|w| w == field) else {
            return 0;
        };
        text[at + field.len()..]
            .iter()
            .skip_while(|b| matches!(b, b' ' | b':'))
            .take_while(|b| b.is_ascii_digit())
            .fold(0u64, |n, b| {
                n.saturating_mul(10).saturating_add(u64::from(b - b'0'))
            })
    }
    (
        last_number(tail, b"\"prompt_tokens\""),
        last_number(tail, b"\"completion_tokens\""),
    )
}

/// How much of an llm answer's end is kept to read its `usage` from.
pub(crate) const TAIL: usize = 2048;

/// Keeps the last [`TAIL`] bytes of what goes by.
pub(crate) fn keep_tail(tail: &mut Vec<u8>, chunk: &[u8]) {
    if chunk.len() >= TAIL {
        tail.clear();
        tail.extend_from_slice(&chunk[chunk.len() - TAIL..]);
        return;
    }
    let over = (tail.len() + chunk.len()).saturating_sub(TAIL);
    tail.drain(..over);
    tail.extend_from_slice(chunk);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(worker: u128, completed: u64, ms: u64) -> Record {
        Record {
            at_ms: 61 * MINUTE_MS + 5,
            key: "k".into(),
            service: 1,
            worker: Some(WorkerId(worker)),
            weight: 2.0,
            totals: Totals {
                requests: 1,
                completed,
                duration_ms: ms,
                ..Totals::default()
            },
        }
    }

    #[test]
    fn only_completed_requests_earn_credit() {
        let mut s = Sums::default();
        s.add(record(1, 1, 100));
        s.add(record(1, 0, 900));
        s.add(record(2, 0, 50));
        let mut nobody = record(3, 1, 10);
        nobody.worker = None;
        s.add(nobody);
        let b = s.batch(&["ocr".into(), "llm".into()]);
        assert_eq!(b.usage.len(), 3);
        assert!(
            b.usage.iter().any(|u| u.worker_id.is_none()),
            "recorded without a worker"
        );
        let w1 = b
            .usage
            .iter()
            .find(|u| u.worker_id == Some(WorkerId(1)))
            .unwrap();
        assert_eq!((w1.minute, w1.service.as_str()), (61, "llm"));
        assert_eq!(
            (
                w1.totals.requests,
                w1.totals.completed,
                w1.totals.duration_ms
            ),
            (2, 1, 1000)
        );
        let credit: FxHashMap<_, _> = b.credit.into_iter().collect();
        let c1 = &credit[&WorkerId(1)];
        assert_eq!((c1.requests, c1.compute_ms), (1, 200.0));
        assert!(
            !credit.contains_key(&WorkerId(2)),
            "a failed request earns nothing"
        );
        assert!(s.batch(&[]).is_empty(), "a batch takes the sums");
    }

    #[test]
    fn tokens_from_a_json_answer_and_a_stream() {
        let json = br#"{"choices":[],"usage":{"completion_tokens":12,"prompt_tokens":34,"total_tokens":46}}"#;
        assert_eq!(tokens(json), (34, 12));
        let stream = b"data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\": 7,\"completion_tokens\": 3}}\n\ndata: [DONE]\n\n";
        assert_eq!(tokens(stream), (7, 3));
        assert_eq!(tokens(b"{\"data\":[]}"), (0, 0));
    }

    #[test]
    fn the_tail_keeps_the_end() {
        let mut tail = Vec::new();
        keep_tail(&mut tail, &[1; 1000]);
        keep_tail(&mut tail, &[2; 1500]);
        assert_eq!(tail.len(), TAIL);
        assert_eq!(tail[TAIL - 1500 - 1], 1);
        assert_eq!(tail[TAIL - 1500], 2);
        keep_tail(&mut tail, &[3; 5000]);
        assert_eq!(tail, vec![3; TAIL]);
    }
}
