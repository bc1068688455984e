//! The agent's DHT presence: its node, joining the DHT (cached seeds, the edge's, or the coordinator's), finding
//! coordinators, and the worker record it publishes.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use commons_dht::{Dht, Protocol};
use commons_shared::api::PathReport;
use commons_shared::dht::{NatStatus, WorkerRecord};
use tokio::sync::watch;

use crate::client::Client;
use crate::credentials::CredentialStore;
use crate::settings::Settings;

/// How other DHT nodes reach this computer.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct DhtReach {
    /// AutoNAT's finding.
    pub nat: NatStatus,
    /// The TCP port the node listens on.
    pub port: Option<u16>,
    /// Its connections: direct, hole-punched, relayed.
    pub paths: Vec<PathReport>,
}

/// The node, whether it has joined, and what it published.
pub(super) struct Presence {
    node: Arc<OnceLock<Dht>>,
    /// `None` while joining, then whether the node is in the DHT.
    joined: Arc<watch::Sender<Option<bool>>>,
    /// What was last published (`None`: nothing, or withdrawn).
    published: Option<WorkerRecord>,
}

impl Presence {
    /// No node yet; `node` is shared with the agent's handle.
    pub(super) fn new(node: Arc<OnceLock<Dht>>) -> Self {
        Self {
            node,
            joined: Arc::new(watch::channel(None).0),
            published: None,
        }
    }

    /// The node's peer id, once it runs.
    pub(super) fn peer_id(&self) -> Option<String> {
        self.node.get().map(|d| d.peer_id().to_base58())
    }

    /// How other DHT nodes reach this one: AutoNAT's finding, the TCP port the node listens on (what a volunteer
    /// would forward), and its connections kind by kind. `None` without a node.
    pub(super) async fn reach(&self) -> Option<DhtReach> {
        let node = self.node.get()?;
        let snap = node.snapshot().await;
        let port = node.addresses().iter().find_map(|a| {
            let relayed = a.iter().any(|p| p == Protocol::P2pCircuit);
            a.iter().find_map(|p| match p {
                Protocol::Tcp(port) if !relayed => Some(port),
                _ => None,
            })
        });
        Some(DhtReach {
            nat: snap.stats.nat,
            port,
            paths: snap.paths(),
        })
    }

    /// Starts the node and joins through cached seeds or the edge's; without it the agent works through its
    /// coordinator alone.
    pub(super) async fn start(
        &self,
        settings: &Settings,
        creds: Arc<dyn CredentialStore>,
        client: &Client,
    ) {
        let dht = match crate::dht::start(settings, creds).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "no DHT node; carrying on through the coordinator");
                return;
            }
        };
        let _ = self.node.set(dht.clone());
        // Joining runs beside registration: dead cached seeds must not hold the agent back.
        let (settings, client, joined) = (settings.clone(), client.clone(), self.joined.clone());
        tokio::spawn(async move {
            match crate::dht::join(&dht, &settings, &client).await {
                Ok(took) => {
                    tracing::info!(peer = %dht.peer_id(), ms = took.as_millis() as u64, "joined the DHT");
                    joined.send_replace(Some(true));
                }
                Err(e) => {
                    tracing::info!(error = %e, "not in the DHT yet; the coordinator's seeds will do");
                    // A join through the coordinator's seeds may have succeeded meanwhile.
                    joined.send_if_modified(|j| {
                        let unset = j.is_none();
                        if unset {
                            *j = Some(false);
                        }
                        unset
                    });
                }
            }
        });
    }

    /// Whether the node is in the DHT, waiting at most `wait` for a join in progress.
    async fn in_dht(&self, wait: Duration) -> bool {
        if self.node.get().is_none() {
            return false;
        }
        let mut rx = self.joined.subscribe();
        tokio::time::timeout(wait, rx.wait_for(Option::is_some))
            .await
            .ok()
            .and_then(Result::ok)
            .is_some_and(|j| *j == Some(true))
    }

    /// Coordinators the DHT knows in `region`, least loaded first, except `except`: none when the node is not in
    /// the DHT within `wait`.
    pub(super) async fn coordinators(
        &self,
        region: &str,
        except: Option<&str>,
        wait: Duration,
    ) -> Vec<String> {
        if !self.in_dht(wait).await {
            return Vec::new();
        }
        let Some(d) = self.node.get() else {
            return Vec::new();
        };
        crate::dht::coordinators(d, region, except)
            .await
            .into_iter()
            .map(|c| c.url)
            .collect()
    }

    /// Joins the DHT through the seeds a coordinator handed out, when the cache and the edge gave none.
    pub(super) async fn join_via(&self, seeds: &[String], settings: &Settings) {
        let (Some(d), false) = (self.node.get(), *self.joined.borrow() == Some(true)) else {
            return;
        };
        let seeds = commons_dht::parse_addrs(seeds);
        if seeds.is_empty() {
            return;
        }
        match d.bootstrap(&seeds).await {
            Ok(_) => {
                self.joined.send_replace(Some(true));
                crate::dht::cache_seeds(&settings.seed_cache_path(), &seeds);
                tracing::info!("joined the DHT through the coordinator's seeds");
            }
            Err(e) => tracing::info!(error = %e, "the coordinator's DHT seeds did not answer"),
        }
    }

    /// Publishes `record` when it changed (anything but the load, or the load by more than 0.1); `None` withdraws
    /// what was published. The node refreshes what was published.
    pub(super) async fn publish(&mut self, record: Option<WorkerRecord>) {
        let Some(d) = self.node.get().cloned() else {
            return;
        };
        let Some(rec) = record else {
            if self.published.take().is_some() {
                d.withdraw().await;
            }
            return;
        };
        let same = self.published.as_ref().is_some_and(|p| {
            (p.load - rec.load).abs() <= 0.1
                && WorkerRecord {
                    load: 0.0,
                    ..p.clone()
                } == WorkerRecord {
                    load: 0.0,
                    ..rec.clone()
                }
        });
        if same {
            return;
        }
        match d.publish_worker(rec.clone()).await {
            Ok(()) => self.published = Some(rec),
            Err(e) => tracing::warn!(error = %e, "cannot publish in the DHT"),
        }
    }

    /// Withdraws the record and stops the node.
    pub(super) async fn leave(&mut self) {
        if let Some(d) = self.node.get() {
            d.withdraw().await;
            d.shutdown().await;
        }
        self.published = None;
    }
}
