//! Who this worker is (credentials in the keyring, capabilities) and joining a coordinator: resuming as the worker
//! it was, or registering through the DHT's coordinators and the configured entry, with backoff.

use std::sync::Arc;
use std::time::Duration;

use commons_shared::api::{RegisterRequest, RegisterResponse};
use commons_shared::backoff::Backoff;
use commons_shared::caps::Capabilities;
use rand::Rng;

use super::{Agent, Command, State};
use crate::client::{CallError, Client};
use crate::credentials::{CredentialError, CredentialStore, Credentials};
use crate::hardware::{self, GpuProbe};

/// The joined coordinator.
pub(super) struct Joined {
    pub(super) creds: Credentials,
    pub(super) interval: Duration,
    pub(super) version: u64,
}

/// This worker: its credential store, hardware probe, coordinator client and reported version.
pub(super) struct Identity {
    store: Arc<dyn CredentialStore>,
    probe: Arc<dyn GpuProbe>,
    client: Client,
    /// The version reported to the coordinator.
    version: String,
    /// Detected at the last join.
    caps: Option<Capabilities>,
}

/// A random wait of at most `max_ms`, so that many agents do not retry in step.
pub(super) fn jitter(max_ms: u64) -> Duration {
    Duration::from_millis(rand::rng().random_range(0..=max_ms))
}

impl Identity {
    pub(super) fn new(
        store: Arc<dyn CredentialStore>,
        probe: Arc<dyn GpuProbe>,
        version: String,
    ) -> Self {
        Self {
            store,
            probe,
            client: Client::new(),
            version,
            caps: None,
        }
    }

    pub(super) fn store(&self) -> Arc<dyn CredentialStore> {
        self.store.clone()
    }

    pub(super) fn client(&self) -> &Client {
        &self.client
    }

    pub(super) fn probe(&self) -> Arc<dyn GpuProbe> {
        self.probe.clone()
    }

    pub(super) fn version(&self) -> &str {
        &self.version
    }

    /// The capabilities detected at the last join.
    pub(super) fn caps(&self) -> Capabilities {
        self.caps.clone().unwrap_or_default()
    }

    /// This machine's capabilities, detected once per join (not on every retry), off the async threads.
    async fn detect(&mut self, region: Option<&str>) -> Capabilities {
        let probe = self.probe.clone();
        let mut caps = crate::blocking(move || hardware::detect(probe.as_ref()))
            .await
            .capabilities;
        caps.agent_version = self.version.clone();
        caps.region = region.unwrap_or_default().to_owned();
        self.caps = Some(caps.clone());
        caps
    }

    /// Keeps the credentials (the keyring, off the async threads); they last until this agent stops otherwise.
    async fn save(&self, creds: &Credentials) {
        let (store, creds) = (self.store.clone(), creds.clone());
        if let Err(e) = crate::blocking(move || store.save(&creds)).await {
            tracing::error!(error = %e, "cannot keep the credentials; they last until this agent stops");
        }
    }

    /// Forgets the worker's credentials.
    pub(super) async fn forget(&self) {
        let store = self.store.clone();
        if let Err(e) = crate::blocking(move || store.clear()).await {
            tracing::warn!(error = %e, "could not forget the credentials");
        }
    }

    /// Unregisters from the joined coordinator and forgets the credentials.
    pub(super) async fn unregister(&self, j: &Joined) {
        match self
            .client
            .unregister(
                &j.creds.coordinator_url,
                &j.creds.worker_id,
                &j.creds.worker_token,
            )
            .await
        {
            Ok(()) | Err(CallError::Unknown(_)) => {}
            Err(e) => {
                tracing::warn!(error = %e, "could not unregister; the coordinator will mark this worker stale")
            }
        }
        self.forget().await;
    }
}

impl Agent {
    /// Resumes as the worker this machine was, when the keyring has its credentials: the first heartbeat tells
    /// whether the coordinator still knows it.
    pub(super) async fn resume(&mut self) -> Result<Option<Joined>, CredentialError> {
        let store = self.me.store();
        let Some(c) = crate::blocking(move || store.load()).await? else {
            return Ok(None);
        };
        self.me.detect(self.settings.region.as_deref()).await;
        self.trust_catalogue(&c.coordinator_url).await;
        self.ui.update(|s| {
            s.worker_id = c.worker_id.clone();
            s.coordinator_url = c.coordinator_url.clone();
        });
        Ok(Some(Joined {
            creds: c,
            interval: Duration::from_secs(1),
            version: 0,
        }))
    }

    /// Fetches the coordinator's catalogue and trusts it when the project's key or one of the volunteer's operator
    /// keys signed it; otherwise (or when it cannot be fetched) only the shipped catalogue's services run.
    async fn trust_catalogue(&mut self, coordinator: &str) {
        let offer = match self.me.client.catalogue(coordinator).await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, "cannot fetch the coordinator's catalogue; the shipped one applies");
                commons_shared::catalogue::CatalogueOffer::default()
            }
        };
        let mut keys = vec![commons_shared::release::PROJECT_KEY];
        keys.extend(self.settings.catalogue_keys.iter().map(String::as_str));
        self.work.trust(&offer, &keys);
        let signer = self.work.signer();
        self.ui.update(|s| s.catalogue = Some(signer));
    }

    fn register_request(&self, caps: &Capabilities) -> RegisterRequest {
        RegisterRequest {
            capabilities: caps.clone(),
            // The tunnel's address can change between attempts: read it each time.
            endpoint: self.reach.endpoint(),
            enrollment_token: self.settings.enrollment_token.clone(),
            peer_id: self.presence.peer_id(),
            ..Default::default()
        }
    }

    /// Coordinators to try, in order: from the DHT (least loaded first, not the one that just failed), then the
    /// configured entry (the edge, or a fixed coordinator, which is then the only choice).
    async fn entries(&self, failover: bool) -> Vec<String> {
        let mut list = Vec::new();
        if failover || self.settings.coordinator_url.is_none() {
            let failed = self.ui.coordinator_url();
            let region = self.settings.region.clone().unwrap_or_default();
            list = self
                .presence
                .coordinators(
                    &region,
                    failover.then_some(failed.as_str()),
                    Duration::from_millis(self.settings.dht_join_wait_ms),
                )
                .await;
        }
        list.push(if failover {
            self.settings.edge_url.clone()
        } else {
            self.settings.entry_url().to_owned()
        });
        list
    }

    /// Registers, retrying with backoff and jitter; `None` when told to quit meanwhile.
    pub(super) async fn join(&mut self, failover: bool) -> Option<Joined> {
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
        let caps = self.me.detect(self.settings.region.as_deref()).await;
        loop {
            let req = self.register_request(&caps);
            let mut again = false;
            for entry in self.entries(failover).await {
                match self.me.client.register(&entry, &req).await {
                    Ok(r) => {
                        let seeds = r.dht_seeds.clone();
                        let j = self.joined(r).await;
                        self.presence.join_via(&seeds, &self.settings).await;
                        return Some(j);
                    }
                    // A coordinator on the internet cannot use a gateway on loopback (nor a LAN address): join
                    // without an endpoint; the coordinator reaches this worker over its channel.
                    Err(CallError::Refused {
                        status: 422,
                        message,
                        field: Some(field),
                        ..
                    }) if req.endpoint.is_some() && field == "endpoint" => {
                        tracing::info!(%message, "the coordinator cannot use this worker's endpoint: joining without one, to be reached over the channel");
                        self.reach.refuse_endpoint();
                        again = true;
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(entry = %entry, error = %e, "registration failed");
                        if let CallError::Refused {
                            status, message, ..
                        } = &e
                            && (*status == 401 || *status == 403 || *status == 422)
                        {
                            self.ui
                                .set(State::Error(format!("registration refused: {message}")));
                        }
                    }
                }
            }
            if again {
                continue;
            }
            let wait = backoff.fail();
            let wait = wait + jitter(wait.as_millis() as u64 / 2);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                c = self.rx.recv() => match c {
                    Some(Command::Quit | Command::Handover) | None => return None,
                    Some(Command::Pause) => self.ui.set_paused(true),
                    Some(Command::Resume) => self.ui.set_paused(false),
                    Some(Command::Apply(s)) => self.apply(*s).await,
                },
            }
        }
    }

    /// Takes a registration: keeps the credentials, shows the session, takes the assignment.
    async fn joined(&mut self, r: RegisterResponse) -> Joined {
        let creds = Credentials {
            worker_id: r.worker_id.to_string(),
            worker_token: r.worker_token.clone(),
            coordinator_url: r.coordinator_url.clone(),
        };
        self.me.save(&creds).await;
        self.ui.update(|s| {
            s.worker_id = creds.worker_id.clone();
            s.coordinator_url = creds.coordinator_url.clone();
            s.registrations += 1;
            s.tier = Some(r.tier.number());
        });
        tracing::info!(worker = %creds.worker_id, coordinator = %creds.coordinator_url, tier = r.tier.number(), "joined");
        self.trust_catalogue(&creds.coordinator_url).await;
        self.work.set_hardware(&self.me.caps());
        self.work.assign(r.assigned_containers.clone());
        self.show_containers();
        self.reach.reported(r.endpoint.clone());
        Joined {
            creds,
            interval: Duration::from_secs(r.heartbeat_interval.max(1)),
            version: r.assignment_version,
        }
    }
}
