//! Donating: heartbeats (with the load, GPU and container samples), the coordinator probe and failover, and the
//! volunteer's commands while joined.

use std::time::{Duration, Instant};

use commons_shared::api::{HeartbeatRequest, ReportedStatus};

use super::join::{Joined, jitter};
use super::{Agent, Command, DRAINED, Ended, Next, State};
use crate::client::CallError;
use crate::hardware::{self, LoadSampler};

/// Heartbeats between two readings of the volunteer's contribution.
const CONTRIBUTION_EVERY: u32 = 10;

impl Agent {
    /// Publishes what this computer served today and donated this week, from the coordinator's records.
    async fn show_contribution(&self, j: &Joined) {
        match self
            .me
            .client()
            .contribution(
                &j.creds.coordinator_url,
                &j.creds.worker_id,
                &j.creds.worker_token,
            )
            .await
        {
            Ok(c) => {
                let sentence = c.sentence();
                self.ui.update(|s| s.contribution = Some(sentence));
            }
            // An older coordinator without the ledger, or a passing failure: the last figure stays.
            Err(e) => tracing::debug!(error = %e, "cannot read this computer's contribution"),
        }
    }

    /// The next heartbeat, and whether a GPU is over the limit. The samples (sysinfo, NVML) are read off the async
    /// threads.
    async fn heartbeat_request(
        &self,
        j: &Joined,
        sampler: &mut Option<LoadSampler>,
    ) -> (HeartbeatRequest, bool) {
        let (mut taken, probe) = (sampler.take().unwrap_or_default(), self.me.probe());
        let (taken, load, gpus) = crate::blocking(move || {
            let load = taken.sample();
            (taken, load, probe.read().unwrap_or_default())
        })
        .await;
        *sampler = Some(taken);
        let over = gpus
            .iter()
            .any(|g| g.temperature_c > self.settings.max_gpu_temp_c);
        let hot = self.holds.too_hot(over, Instant::now());
        let status = if !self.donating() || hot {
            ReportedStatus::Paused
        } else if load.cpu > 0.9 {
            ReportedStatus::Busy
        } else {
            ReportedStatus::Healthy
        };
        let hb = HeartbeatRequest {
            worker_id: j.creds.worker_id.clone(),
            status,
            load: load.cpu.max(self.reach.busy()),
            free_memory_bytes: Some(load.free_memory),
            available_memory: None,
            gpus: hardware::gpus_to_samples(&gpus),
            containers: self.work.statuses(),
            endpoint: self.reach.unreported(),
            assignment_version: Some(j.version),
            agent_version: Some(self.me.version().to_owned()),
            display_name: self
                .settings
                .display_name
                .as_deref()
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_owned),
            rtt_ms: self.reach.rtt_ms(),
            nat: self.reach.nat(),
            paths: Some(self.reach.paths()),
        };
        (hb, over)
    }

    /// Publishes this worker in the DHT, or withdraws it while it does not donate.
    async fn publish(&mut self, j: &Joined, load: f64) {
        let record = self.donating().then(|| {
            crate::dht::worker_record(
                &j.creds.worker_id,
                self.work.services(),
                self.reach.endpoint(),
                &j.creds.coordinator_url,
                &self.me.caps(),
                load,
            )
        });
        self.presence.publish(record).await;
    }

    /// Heartbeats until something ends this session.
    pub(super) async fn donate(&mut self, mut j: Joined) -> Next {
        // Requests come back over the agent's own connection: no port to open, no tunnel needed.
        self.reach.keep_channel(crate::channel::Opener {
            coordinator_url: j.creds.coordinator_url.clone(),
            worker_id: j.creds.worker_id.clone(),
            worker_token: j.creds.worker_token.clone(),
        });
        let mut sampler = Some(LoadSampler::new());
        let probe_every = Duration::from_millis(self.settings.probe_interval_ms);
        let mut next_beat = Instant::now();
        let mut next_probe = Instant::now() + probe_every;
        let mut probe_failures = 0;
        let mut beat_failures = 0;
        let reconcile_every = Duration::from_secs(5);
        // The volunteer's contribution is read from the coordinator's records every few heartbeats (the first at
        // once).
        let mut beats = 0u32;
        let mut next_reconcile = Instant::now() + reconcile_every;
        self.update_hold().await;
        if self.donating() && self.work.has_work() {
            self.ui.set(State::Pulling);
            self.reconcile().await;
        }
        loop {
            let now = Instant::now();
            if now >= next_reconcile {
                if self.donating() {
                    self.reconcile().await;
                }
                next_reconcile = Instant::now() + reconcile_every;
            }
            if now >= next_beat {
                self.update_hold().await;
                let dht = self.presence.reach().await;
                self.reach.set_dht(dht);
                self.reach.probe_tunnel(self.me.client());
                let (hb, over) = self.heartbeat_request(&j, &mut sampler).await;
                let sent = Instant::now();
                match self
                    .me
                    .client()
                    .heartbeat(&j.creds.coordinator_url, &j.creds.worker_token, &hb)
                    .await
                {
                    Ok(r) => {
                        beat_failures = 0;
                        self.reach.measured(sent.elapsed());
                        if hb.endpoint.is_some() {
                            self.reach.reported(hb.endpoint.clone());
                        }
                        j.interval = Duration::from_secs(r.heartbeat_interval.max(1));
                        if r.drained != self.drained {
                            self.drained = r.drained;
                            if r.drained {
                                tracing::warn!("drained by the coordinator: {DRAINED}");
                            }
                            self.show_problem();
                        }
                        if let Some(list) = r.assigned_containers {
                            j.version = r.assignment_version;
                            tracing::info!(containers = list.len(), "new assignment");
                            self.work.assign(list);
                            self.show_containers();
                            if self.donating() {
                                self.reconcile().await;
                            }
                        }
                        self.holds.set_heat(over, Instant::now());
                        self.show_held();
                        self.show_endpoint();
                        self.ui.set(if self.holds.heat_holds() {
                            State::Paused
                        } else {
                            self.active_state()
                        });
                        self.publish(&j, hb.load).await;
                        if beats.is_multiple_of(CONTRIBUTION_EVERY) {
                            self.show_contribution(&j).await;
                        }
                        beats = beats.wrapping_add(1);
                    }
                    Err(CallError::Unknown(status)) => {
                        tracing::info!(
                            status,
                            "the coordinator no longer knows this worker; registering again"
                        );
                        self.me.forget().await;
                        return Next::Rejoin { via_entry: false };
                    }
                    Err(e) => {
                        beat_failures += 1;
                        tracing::warn!(error = %e, "heartbeat failed");
                        if beat_failures >= 2 {
                            return Next::Rejoin { via_entry: true };
                        }
                    }
                }
                next_beat = Instant::now() + j.interval;
            }
            if now >= next_probe {
                if self
                    .me
                    .client()
                    .alive(&j.creds.coordinator_url, Duration::from_millis(1500))
                    .await
                {
                    probe_failures = 0;
                } else {
                    probe_failures += 1;
                    tracing::warn!(coordinator = %j.creds.coordinator_url, "coordinator not answering");
                    if probe_failures >= 2 {
                        tracing::warn!("coordinator gone; failing over through the edge");
                        tokio::time::sleep(jitter(500)).await;
                        return Next::Rejoin { via_entry: true };
                    }
                }
                // Probe faster while in doubt.
                next_probe = Instant::now()
                    + if probe_failures > 0 {
                        probe_every / 3
                    } else {
                        probe_every
                    };
            }
            let wake = next_beat.min(next_probe).min(next_reconcile);
            tokio::select! {
                _ = tokio::time::sleep_until(wake.into()) => {}
                c = self.rx.recv() => match c {
                    Some(Command::Pause) => {
                        self.ui.set_paused(true);
                        self.pause_containers().await;
                        self.ui.set(State::Paused);
                        next_beat = Instant::now();
                    }
                    Some(Command::Resume) => {
                        self.ui.set_paused(false);
                        if !self.held() {
                            self.reconcile().await;
                        }
                        self.ui.set(self.active_state());
                        next_beat = Instant::now();
                    }
                    Some(Command::Apply(s)) => {
                        self.apply(*s).await;
                        self.ui.set(self.active_state());
                        next_beat = Instant::now();
                    }
                    Some(Command::Quit) | None => { self.stop(Some(&j), false).await; return Next::End(Ended::Quit); }
                    Some(Command::Handover) => { self.stop(Some(&j), true).await; return Next::End(Ended::Handover); }
                },
            }
        }
    }
}
