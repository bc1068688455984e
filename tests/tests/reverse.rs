//! The reverse path on loopback, in process: a real coordinator and the agent's own channel code
//! (`commons_agent::channel`) serving routes that watch what happens to each request. A consumer that goes away
//! cancels the request at the worker; an answer streams back as it is made, not once it is whole.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::routing::any;
use commons_agent::channel::{Kept, Opener, keep};
use commons_tests::{Coordinator, WorkerServer, catalogue_only, eventually, heartbeat, register};
use tokio::sync::Notify;

/// What the worker's routes saw.
#[derive(Debug, Default)]
struct Watched {
    started: AtomicU64,
    finished: AtomicU64,
    /// Requests whose handler was dropped before it finished: cancelled.
    cancelled: AtomicU64,
    /// Lets a streaming answer's second half go.
    go_on: Notify,
}

/// Counts a request as cancelled unless it finished.
struct Guard(Arc<Watched>, bool);

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.1 {
            self.0.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// `/api/service/echo/slow`: takes a minute; `/api/service/echo/stream`: one chunk now, the next when the test says.
fn routes(w: Arc<Watched>) -> Router {
    async fn slow(State(w): State<Arc<Watched>>) -> &'static str {
        w.started.fetch_add(1, Ordering::SeqCst);
        let mut guard = Guard(w.clone(), false);
        tokio::time::sleep(Duration::from_secs(60)).await;
        guard.1 = true;
        w.finished.fetch_add(1, Ordering::SeqCst);
        "done"
    }
    async fn stream(State(w): State<Arc<Watched>>) -> Body {
        let chunks = futures::stream::unfold(0, move |i| {
            let w = w.clone();
            async move {
                match i {
                    0 => Some((Ok::<_, std::io::Error>(bytes::Bytes::from("first;")), 1)),
                    1 => {
                        w.go_on.notified().await;
                        Some((Ok(bytes::Bytes::from("second")), 2))
                    }
                    _ => None,
                }
            }
        });
        Body::from_stream(chunks)
    }
    Router::new()
        .route("/api/service/echo/slow", any(slow))
        .route("/api/service/echo/stream", any(stream))
        .with_state(w)
}

/// A coordinator, and a worker there whose endpoint refuses connections: only its channel reaches it.
async fn reached_only_over_its_channel(w: Arc<Watched>) -> (Coordinator, Kept) {
    let c =
        Coordinator::start(|cfg, dir| cfg.catalogue = Some(catalogue_only(dir, &[("echo", 1)])))
            .await;
    let client = reqwest::Client::new();
    let closed = WorkerServer::start("closed").await;
    let endpoint = closed.url();
    closed.stop().await;
    let reg = register(&client, &c.url(), &endpoint).await;
    heartbeat(&client, &c.url(), &reg, "healthy", 0.0).await;
    let kept = keep(
        Opener {
            coordinator_url: c.url(),
            worker_id: reg.id.clone(),
            worker_token: reg.token.clone(),
        },
        routes(w),
    );
    assert!(
        eventually(10, || async { kept.open.load(Ordering::Relaxed) }).await,
        "the channel opens"
    );
    (c, kept)
}

#[tokio::test]
async fn a_consumer_that_goes_away_cancels_the_request_at_the_worker() {
    let w = Arc::new(Watched::default());
    let (c, _kept) = reached_only_over_its_channel(w.clone()).await;
    let client = reqwest::Client::new();
    let gone = client
        .get(format!("{}/api/service/echo/slow", c.url()))
        .timeout(Duration::from_millis(500))
        .send()
        .await;
    assert!(gone.is_err(), "the consumer gave up: {gone:?}");
    assert_eq!(
        w.started.load(Ordering::SeqCst),
        1,
        "the request reached the worker"
    );
    assert!(
        eventually(10, || async { w.cancelled.load(Ordering::SeqCst) == 1 }).await,
        "the worker's handler was dropped when the consumer went away"
    );
    assert_eq!(w.finished.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn an_answer_streams_back_over_the_channel_as_it_is_made() {
    let w = Arc::new(Watched::default());
    let (c, _kept) = reached_only_over_its_channel(w.clone()).await;
    let client = reqwest::Client::new();
    let mut r = client
        .get(format!("{}/api/service/echo/stream", c.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-commons-path"], "reverse");
    // The first half arrives while the worker still holds back the second.
    let first = tokio::time::timeout(Duration::from_secs(10), r.chunk())
        .await
        .expect("the first chunk before the answer is whole")
        .unwrap()
        .unwrap();
    assert_eq!(first.as_ref(), b"first;");
    w.go_on.notify_one();
    let rest = r.bytes().await.unwrap();
    assert_eq!(rest.as_ref(), b"second");
}
