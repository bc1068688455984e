//! The registrar: with an edge configured, the coordinator registers there at start, heartbeats its figures,
//! registers again when the edge no longer knows it, and deregisters on shutdown. It also keeps the federation's
//! consumer API keys: whenever an answer of the edge carries another version of them, it fetches them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use commons_shared::backoff::Backoff;
use commons_shared::consumers::SharedKeys;
use commons_shared::edge::{
    CoordinatorFigures, EdgeAck, EdgeCapabilities, EdgeHeartbeat, EdgeRegisterRequest,
};
use tokio::task::JoinHandle;

use crate::state::AppState;

/// This coordinator's figures for the edge.
pub fn figures(state: &AppState) -> CoordinatorFigures {
    let now = Instant::now();
    let (mut workers, mut load, mut queue, mut latency, mut with_latency) =
        (0u32, 0.0, 0u32, 0.0, 0u32);
    for w in state.registry.all() {
        let live = w.live.lock();
        if live.status(now, state.liveness).is_live() {
            workers += 1;
            load += live.load;
        }
        queue += w.stats.in_flight();
        let l = w.stats.latency_ms();
        if l > 0.0 {
            latency += l;
            with_latency += 1;
        }
    }
    let mut services = BTreeMap::new();
    for (i, spec) in state.catalogue.services().iter().enumerate() {
        let healthy = state
            .registry
            .providers(i)
            .iter()
            .filter(|w| w.live.lock().status(now, state.liveness).is_routable())
            .count();
        services.insert(spec.name.clone(), healthy as u32);
    }
    CoordinatorFigures {
        load: if workers == 0 {
            0.0
        } else {
            (load / f64::from(workers)).clamp(0.0, 1.0)
        },
        workers,
        queue_depth: queue,
        latency_ms: if with_latency == 0 {
            0.0
        } else {
            latency / f64::from(with_latency)
        },
        services,
    }
}

struct Edge {
    client: reqwest::Client,
    url: String,
    key: String,
    id: String,
}

impl Edge {
    fn new(state: &AppState, id: &str) -> Option<Self> {
        let c = &state.config;
        Some(Self {
            client: commons_server::tls::http()
                .timeout(Duration::from_secs(10))
                .build()
                .ok()?,
            url: c.edge_url.clone()?.trim_end_matches('/').to_owned(),
            key: c.federation_key.clone()?.0,
            id: id.to_owned(),
        })
    }

    /// Fetches the federation's consumer keys when the edge's answer says they are not the ones held.
    async fn sync_keys(&self, state: &AppState, ack: &EdgeAck) {
        if state.consumers.federated_version() == Some(ack.keys_version) {
            return;
        }
        let r = self
            .client
            .get(format!("{}/api/edge/keys", self.url))
            .bearer_auth(&self.key)
            .send()
            .await;
        match r {
            Ok(r) if r.status().is_success() => match r.json::<SharedKeys>().await {
                Ok(keys) => {
                    tracing::info!(
                        keys = keys.keys.len(),
                        version = keys.version,
                        "the federation's API keys"
                    );
                    state.consumers.federate(keys);
                }
                Err(e) => tracing::warn!(error = %e, "unreadable API keys from the edge"),
            },
            Ok(r) => tracing::warn!(status = %r.status(), "the edge refused its API keys"),
            Err(e) => tracing::warn!(error = %e, "cannot fetch the API keys from the edge"),
        }
    }

    /// Registers; the heartbeat interval the edge asks for.
    async fn register(&self, state: &AppState) -> Result<Duration, String> {
        let body = EdgeRegisterRequest {
            id: Some(self.id.clone()),
            url: Some(state.coordinator_url.clone()),
            region: state.config.region.clone(),
            capabilities: Some(EdgeCapabilities {
                location: state.config.region.clone(),
            }),
            figures: Some(figures(state)),
            dht_addrs: state
                .dht
                .get()
                .map(commons_dht::Dht::address_strings)
                .unwrap_or_default(),
            ..Default::default()
        };
        let r = self
            .client
            .post(format!("{}/api/edge/register", self.url))
            .bearer_auth(&self.key)
            .json(&body)
            .send()
            .await;
        match r {
            Ok(r) if r.status().is_success() => {
                let ack = r
                    .json::<EdgeAck>()
                    .await
                    .map_err(|e| format!("unreadable answer from the edge: {e}"))?;
                self.sync_keys(state, &ack).await;
                Ok(Duration::from_secs(ack.heartbeat_interval))
            }
            Ok(r) => Err(format!(
                "the edge answered {}: {}",
                r.status(),
                r.text().await.unwrap_or_default()
            )),
            Err(e) => Err(format!("cannot reach the edge: {e}")),
        }
    }

    /// `Ok(true)` when the edge knows us, `Ok(false)` when it asks us to register again.
    async fn heartbeat(&self, state: &AppState) -> Result<bool, String> {
        let body = EdgeHeartbeat {
            id: self.id.clone(),
            figures: figures(state),
        };
        let r = self
            .client
            .post(format!("{}/api/edge/heartbeat", self.url))
            .bearer_auth(&self.key)
            .json(&body)
            .send()
            .await;
        match r {
            Ok(r) if r.status().is_success() => {
                if let Ok(ack) = r.json::<EdgeAck>().await {
                    self.sync_keys(state, &ack).await;
                }
                Ok(true)
            }
            Ok(r) if r.status() == 404 => Ok(false),
            Ok(r) => Err(format!(
                "the edge answered {}: {}",
                r.status(),
                r.text().await.unwrap_or_default()
            )),
            Err(e) => Err(format!("cannot reach the edge: {e}")),
        }
    }
}

/// Starts the registrar when an edge is configured.
pub fn spawn(state: &AppState, id: &str) -> Option<JoinHandle<()>> {
    let edge = Edge::new(state, id)?;
    let state = state.clone();
    Some(tokio::spawn(async move {
        let mut every = Duration::from_millis(state.config.edge_heartbeat_interval_ms);
        let mut registered = false;
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        loop {
            if !registered {
                match edge.register(&state).await {
                    Ok(asked) => {
                        // In the DHT, the edge asks for rare heartbeats (liveness flows through the DHT); never
                        // beat more often than configured.
                        if state.dht.get().is_some() {
                            every = every.max(asked);
                        }
                        tracing::info!(edge = %edge.url, id = %edge.id, every_secs = every.as_secs(), "registered with the edge");
                        registered = true;
                        backoff.reset();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "edge registration failed; retrying");
                        tokio::time::sleep(backoff.fail().min(every)).await;
                        continue;
                    }
                }
            }
            tokio::time::sleep(every).await;
            match edge.heartbeat(&state).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::info!("the edge no longer knows this coordinator; registering again");
                    registered = false;
                }
                Err(e) => tracing::warn!(error = %e, "edge heartbeat failed"),
            }
        }
    }))
}

/// Tells the edge this coordinator is leaving (best effort, bounded).
pub async fn deregister(state: &AppState, id: &str) {
    let Some(edge) = Edge::new(state, id) else {
        return;
    };
    let r = edge
        .client
        .delete(format!("{}/api/edge/coordinators/{}", edge.url, edge.id))
        .bearer_auth(&edge.key)
        .timeout(Duration::from_secs(3))
        .send()
        .await;
    match r {
        Ok(r) if r.status().is_success() => tracing::info!("deregistered from the edge"),
        Ok(r) => tracing::warn!(status = %r.status(), "the edge refused the deregistration"),
        Err(e) => tracing::warn!(error = %e, "cannot reach the edge to deregister"),
    }
}
