//! A fair queue per service: when every worker of a service is serving as many requests as the catalogue says it
//! can (`concurrency`), a request waits here, in a bounded queue, until one finishes.
//!
//! Waiters leave in start-time fair order (start-time fair queuing): each consumer (an API key, or all anonymous
//! clients together) has a virtual clock that advances by `1 / weight` per request, and the waiter with the smallest
//! tag goes first. Two busy consumers of equal weight alternate, whatever their number of clients; one with twice the
//! weight gets twice the turns; a consumer that was idle starts at the queue's current time, so it neither jumps ahead
//! with saved-up credit nor waits behind a heavy one's backlog.
//!
//! A waiter whose client goes away (its future is dropped) leaves the queue at once. A [`Slot`] is held for as long
//! as the request is served (the answer's body included); dropping it hands the slot to the next waiter.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::oneshot;

/// Who a request is for, and how much of the service they get relative to others (their key's priority).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tenant {
    /// The key's id; empty for anonymous clients.
    pub id: String,
    /// Weight, at least 1.
    pub weight: u32,
}

/// The queue was full, or the request waited too long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// As many requests wait as the queue holds.
    Full {
        /// Requests waiting.
        waiting: usize,
    },
    /// The request waited the longest a request may wait.
    TimedOut(Duration),
}

/// Tags are in units of 1 / (2^20 × weight) requests, so integer arithmetic keeps weights exact.
const UNIT: u64 = 1 << 20;

struct Waiter {
    tenant: String,
    grant: oneshot::Sender<Slot>,
}

#[derive(Default)]
struct State {
    /// Requests being served.
    in_flight: u32,
    /// How many may be served at once (the healthy workers' concurrency together), as last told.
    capacity: u32,
    /// Waiters by (tag, arrival): the first is the next to go.
    waiting: BTreeMap<(u64, u64), Waiter>,
    /// Each tenant's last tag.
    last: HashMap<String, u64>,
    /// The queue's virtual time: the tag of the last waiter that went.
    now: u64,
    arrivals: u64,
}

/// One service's queue.
pub struct ServiceQueue {
    state: Mutex<State>,
    max_waiting: usize,
}

impl std::fmt::Debug for ServiceQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.state.lock();
        f.debug_struct("ServiceQueue")
            .field("in_flight", &s.in_flight)
            .field("waiting", &s.waiting.len())
            .finish()
    }
}

/// A request's right to be served; the next waiter gets it when this is dropped.
#[derive(Debug)]
pub struct Slot {
    queue: Option<Arc<ServiceQueue>>,
    /// How long the request waited for it.
    pub waited: Duration,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(q) = self.queue.take() {
            q.release();
        }
    }
}

/// Removes a waiter that gave up (its client went away, or it timed out).
struct Leave<'a> {
    queue: &'a Arc<ServiceQueue>,
    key: (u64, u64),
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.queue.state.lock().waiting.remove(&self.key);
    }
}

impl ServiceQueue {
    /// A queue that holds at most `max_waiting` waiters.
    pub fn new(max_waiting: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State::default()),
            max_waiting,
        })
    }

    /// Requests waiting now.
    pub fn waiting(&self) -> usize {
        self.state.lock().waiting.len()
    }

    /// Requests being served now.
    #[cfg(test)]
    pub fn in_flight(&self) -> u32 {
        self.state.lock().in_flight
    }

    /// A slot for `tenant`'s request: at once while fewer than `capacity` are served and nobody waits, else after
    /// waiting its fair turn, at most `patience`.
    pub async fn admit(
        self: &Arc<Self>,
        tenant: &Tenant,
        capacity: u32,
        patience: Duration,
    ) -> Result<Slot, Refused> {
        let start = Instant::now();
        let (key, rx) = {
            let mut s = self.state.lock();
            s.capacity = capacity;
            if s.waiting.is_empty() && s.in_flight < capacity {
                s.in_flight += 1;
                return Ok(Slot {
                    queue: Some(self.clone()),
                    waited: Duration::ZERO,
                });
            }
            if s.waiting.len() >= self.max_waiting {
                return Err(Refused::Full {
                    waiting: s.waiting.len(),
                });
            }
            let last = s.last.get(&tenant.id).copied().unwrap_or(0);
            let tag = s.now.max(last) + UNIT / u64::from(tenant.weight.max(1));
            s.last.insert(tenant.id.clone(), tag);
            s.arrivals += 1;
            let key = (tag, s.arrivals);
            let (tx, rx) = oneshot::channel();
            s.waiting.insert(
                key,
                Waiter {
                    tenant: tenant.id.clone(),
                    grant: tx,
                },
            );
            (key, rx)
        };
        let _leave = Leave { queue: self, key };
        match tokio::time::timeout(patience, rx).await {
            Ok(Ok(mut slot)) => {
                slot.waited = start.elapsed();
                Ok(slot)
            }
            // The sender is only dropped with the queue; a timeout leaves through `_leave`.
            Ok(Err(_)) | Err(_) => Err(Refused::TimedOut(start.elapsed())),
        }
    }

    /// A slot came back: the next waiters get slots while there is room.
    fn release(self: &Arc<Self>) {
        let mut s = self.state.lock();
        s.in_flight = s.in_flight.saturating_sub(1);
        while s.in_flight < s.capacity.max(1) {
            let Some((key, waiter)) = s.waiting.pop_first() else {
                break;
            };
            s.now = s.now.max(key.0);
            s.in_flight += 1;
            let slot = Slot {
                queue: Some(self.clone()),
                waited: Duration::ZERO,
            };
            if let Err(mut unsent) = waiter.grant.send(slot) {
                // The waiter is gone (its receiver dropped before it could leave): the slot was never taken.
                unsent.queue = None;
                s.in_flight -= 1;
                tracing::trace!(tenant = %waiter.tenant, "a waiter left as its turn came");
            }
        }
        // Forget the tags of tenants that no longer wait and are behind the queue's time: they restart from it.
        if s.waiting.is_empty() {
            let now = s.now;
            s.last.retain(|_, t| *t > now);
        }
    }
}

/// The queues of every service, made on first use.
#[derive(Debug)]
pub struct Queues {
    by_service: Mutex<HashMap<usize, Arc<ServiceQueue>>>,
    max_waiting: usize,
}

impl Queues {
    /// Queues that hold at most `max_waiting` waiters each.
    pub fn new(max_waiting: usize) -> Self {
        Self {
            by_service: Mutex::new(HashMap::new()),
            max_waiting,
        }
    }

    /// The queue of the service with this catalogue index.
    pub fn of(&self, service: usize) -> Arc<ServiceQueue> {
        self.by_service
            .lock()
            .entry(service)
            .or_insert_with(|| ServiceQueue::new(self.max_waiting))
            .clone()
    }

    /// Requests waiting for the service, now.
    pub fn waiting(&self, service: usize) -> usize {
        self.by_service
            .lock()
            .get(&service)
            .map_or(0, |q| q.waiting())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(id: &str, weight: u32) -> Tenant {
        Tenant {
            id: id.into(),
            weight,
        }
    }

    const WAIT: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn two_busy_tenants_alternate_whatever_their_backlogs() {
        let q = ServiceQueue::new(100);
        let held = q.admit(&tenant("a", 1), 1, WAIT).await.unwrap();
        // a queues five requests, then b two: b's are not behind all of a's.
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for who in ["a", "a", "a", "a", "a", "b", "b"] {
            let (queue, order) = (q.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let slot = queue.admit(&tenant(who, 1), 1, WAIT).await.unwrap();
                order.lock().push(who);
                tokio::time::sleep(Duration::from_millis(5)).await;
                drop(slot);
            }));
            tokio::task::yield_now().await;
            while q.waiting() < tasks.len() {
                tokio::task::yield_now().await;
            }
        }
        drop(held);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock(), ["a", "b", "a", "b", "a", "a", "a"]);
        assert_eq!((q.in_flight(), q.waiting()), (0, 0));
    }

    #[tokio::test]
    async fn weights_give_shares() {
        let q = ServiceQueue::new(100);
        let held = q.admit(&tenant("x", 1), 1, WAIT).await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for who in ["heavy", "heavy", "heavy", "heavy", "light", "light"] {
            let (queue, order) = (q.clone(), order.clone());
            let weight = if who == "heavy" { 2 } else { 1 };
            tasks.push(tokio::spawn(async move {
                let slot = queue.admit(&tenant(who, weight), 1, WAIT).await.unwrap();
                order.lock().push(who);
                drop(slot);
            }));
            while q.waiting() < tasks.len() {
                tokio::task::yield_now().await;
            }
        }
        drop(held);
        for t in tasks {
            t.await.unwrap();
        }
        // Tags: heavy 0.5, 1, 1.5, 2; light 1, 2 (ties go by arrival).
        assert_eq!(
            *order.lock(),
            ["heavy", "heavy", "light", "heavy", "heavy", "light"]
        );
    }

    #[tokio::test]
    async fn a_waiter_that_goes_away_leaves_and_a_full_queue_refuses() {
        let q = ServiceQueue::new(2);
        let held = q.admit(&tenant("a", 1), 1, WAIT).await.unwrap();
        let gone = {
            let q = q.clone();
            tokio::spawn(async move { q.admit(&tenant("a", 1), 1, WAIT).await.map(|_| ()) })
        };
        let stays = {
            let q = q.clone();
            tokio::spawn(async move { q.admit(&tenant("b", 1), 1, WAIT).await.map(|s| s.waited) })
        };
        while q.waiting() < 2 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            q.admit(&tenant("c", 1), 1, WAIT).await.unwrap_err(),
            Refused::Full { waiting: 2 }
        );
        // The first waiter's client goes away: it leaves the queue, and the slot goes to the one that stayed.
        gone.abort();
        let _ = gone.await;
        assert_eq!(q.waiting(), 1);
        drop(held);
        let waited = stays.await.unwrap().unwrap();
        assert!(waited > Duration::ZERO);
        assert_eq!((q.in_flight(), q.waiting()), (0, 0));
        // A waiter that waits too long is refused and leaves.
        let held = q.admit(&tenant("a", 1), 1, WAIT).await.unwrap();
        let r = q.admit(&tenant("b", 1), 1, Duration::from_millis(20)).await;
        assert!(matches!(r, Err(Refused::TimedOut(_))), "{r:?}");
        assert_eq!(q.waiting(), 0);
        drop(held);
        assert_eq!(q.in_flight(), 0);
    }

    #[tokio::test]
    async fn more_capacity_serves_more_at_once() {
        let q = ServiceQueue::new(10);
        let mut slots = Vec::new();
        for _ in 0..3 {
            slots.push(q.admit(&tenant("a", 1), 3, WAIT).await.unwrap());
        }
        assert_eq!((q.in_flight(), q.waiting()), (3, 0));
        assert!(slots.iter().all(|s| s.waited.is_zero()));
        drop(slots);
        assert_eq!(q.in_flight(), 0);
    }
}
