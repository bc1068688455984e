//! How the coordinator reaches this worker: the local gateway in front of the containers, and the tunnel (or the
//! configured endpoint) in front of the gateway.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use commons_shared::api::{PathKind, PathReport};
use commons_shared::dht::NatStatus;
use parking_lot::Mutex;

use super::AgentError;
use super::presence::DhtReach;
use crate::channel::{Kept, Opener};
use crate::containers::Upstream;
use crate::gateway::Gateway;
use crate::settings::{Settings, TunnelKind};
use crate::tunnel::{Mode, Tunnel};

/// The gateway, the tunnel, and the endpoint the coordinator has.
#[derive(Default)]
pub(super) struct Reach {
    gateway: Option<Gateway>,
    tunnel: Option<Tunnel>,
    /// The endpoint the coordinator was last told (at registration or in a heartbeat).
    reported: Option<String>,
    /// The channel to the coordinator now joined.
    channel: Option<Kept>,
    /// The coordinator refused the endpoint (a gateway on loopback, which a public coordinator cannot use): the
    /// channel is the only way, and no endpoint is reported.
    refused: bool,
    /// The round trip of the last heartbeat: how far away the coordinator is.
    rtt: Option<std::time::Duration>,
    /// How other DHT nodes reach this computer (AutoNAT, its node's port and connections).
    dht: Option<DhtReach>,
    /// The tunnel's round trip, ms, as last probed (`None`: not yet, or the probe failed).
    tunnel_rtt: Arc<Mutex<Option<u32>>>,
    /// When the tunnel is probed next.
    next_probe: Option<Instant>,
}

/// How often the tunnel's round trip is measured.
const TUNNEL_PROBE_EVERY: Duration = Duration::from_secs(30);

impl Reach {
    /// Starts the gateway and the tunnel in front of it.
    pub(super) async fn open(settings: &Settings) -> Result<Self, AgentError> {
        let g = Gateway::start(settings.gateway_listen).await?;
        let mode = match settings.tunnel {
            TunnelKind::Quick => Mode::Quick {
                program: settings.cloudflared.clone(),
                to: g.url(),
            },
            TunnelKind::Named => Mode::Named {
                program: settings.cloudflared.clone(),
                token: crate::blocking(crate::credentials::tunnel_token).await?,
                url: settings.tunnel_hostname.clone().unwrap_or_default(),
            },
            TunnelKind::None => Mode::None(settings.endpoint.clone().unwrap_or_else(|| g.url())),
        };
        let mut tunnel = Tunnel::start(mode);
        // A quick tunnel needs a moment for its address; register without one rather than wait forever.
        let _ = tokio::time::timeout(
            Duration::from_secs(30),
            tunnel.url.wait_for(Option::is_some),
        )
        .await;
        Ok(Self {
            gateway: Some(g),
            tunnel: Some(tunnel),
            reported: None,
            channel: None,
            refused: false,
            rtt: None,
            dht: None,
            tunnel_rtt: Arc::default(),
            next_probe: None,
        })
    }

    /// Where the coordinator reaches this worker now.
    pub(super) fn endpoint(&self) -> Option<String> {
        if self.refused {
            return None;
        }
        self.tunnel.as_ref().and_then(|t| t.url.borrow().clone())
    }

    /// The coordinator cannot use the endpoint: report none, and be reached over the channel only.
    pub(super) fn refuse_endpoint(&mut self) {
        self.refused = true;
    }

    /// The endpoint when the coordinator does not have it yet (for the next heartbeat).
    pub(super) fn unreported(&self) -> Option<String> {
        self.endpoint()
            .filter(|e| Some(e) != self.reported.as_ref())
    }

    /// The coordinator has this endpoint now.
    pub(super) fn reported(&mut self, endpoint: Option<String>) {
        self.reported = endpoint;
    }

    /// The share of the gateway's capacity busy with requests.
    pub(super) fn busy(&self) -> f64 {
        self.gateway.as_ref().map_or(0.0, |g| g.routes.load())
    }

    /// Routes the gateway to these services.
    pub(super) fn set_routes(&self, routes: HashMap<String, Upstream>) {
        if let Some(g) = &self.gateway {
            g.routes.set(routes);
        }
    }

    /// Keeps the channel open to this coordinator, as this worker: a new one when either changed (a failover, a
    /// new registration), the one open otherwise. The gateway takes that coordinator's key from now on.
    pub(super) fn keep_channel(&mut self, to: Opener) {
        let Some(g) = &self.gateway else { return };
        g.routes.set_key(Some(commons_server::auth::gateway_key(
            &commons_server::auth::hash_token(&to.worker_token),
        )));
        if self.channel.as_ref().is_none_or(|k| k.to != to) {
            self.channel = Some(crate::channel::keep(to, g.app.clone()));
        }
    }

    /// A heartbeat went to the coordinator and back in `rtt`.
    pub(super) fn measured(&mut self, rtt: std::time::Duration) {
        self.rtt = Some(rtt);
    }

    /// What the DHT node found about how others reach it.
    pub(super) fn set_dht(&mut self, dht: Option<DhtReach>) {
        self.dht = dht;
    }

    /// What AutoNAT found.
    pub(super) fn nat(&self) -> Option<NatStatus> {
        self.dht.as_ref().map(|d| d.nat)
    }

    /// The tunnel's `https://` address, when the coordinator reaches this worker through one.
    fn tunnel_url(&self) -> Option<String> {
        self.endpoint().filter(|e| e.starts_with("https://"))
    }

    /// Measures the tunnel's round trip in the background, every [`TUNNEL_PROBE_EVERY`] (what the coordinator's
    /// requests through it pay, less the last hop on this machine).
    pub(super) fn probe_tunnel(&mut self, client: &crate::client::Client) {
        let now = Instant::now();
        let Some(url) = self.tunnel_url() else {
            *self.tunnel_rtt.lock() = None;
            return;
        };
        if self.next_probe.is_some_and(|at| now < at) {
            return;
        }
        self.next_probe = Some(now + TUNNEL_PROBE_EVERY);
        let (client, rtt) = (client.clone(), self.tunnel_rtt.clone());
        tokio::spawn(async move {
            let took = client.round_trip(&url).await;
            if let Err(e) = &took {
                tracing::info!(error = %e, "the tunnel did not answer its probe");
            }
            *rtt.lock() = took
                .ok()
                .map(|d| u32::try_from(d.as_millis()).unwrap_or(u32::MAX));
        });
    }

    /// Every way this worker is reached now, fastest kind first, each with its round trip: its channel to the
    /// coordinator, its tunnel, and its DHT node's connections.
    pub(super) fn paths(&self) -> Vec<PathReport> {
        let mut paths = self
            .dht
            .as_ref()
            .map(|d| d.paths.clone())
            .unwrap_or_default();
        if self.channel_open() {
            paths.push(PathReport {
                kind: PathKind::Reverse,
                rtt_ms: self.rtt_ms(),
                connections: 1,
            });
        }
        if self.tunnel_url().is_some() {
            paths.push(PathReport {
                kind: PathKind::Tunnel,
                rtt_ms: *self.tunnel_rtt.lock(),
                connections: 1,
            });
        }
        paths.sort_by_key(|p| PathKind::ALL.iter().position(|k| *k == p.kind));
        paths
    }

    /// How other Commons nodes reach this computer, in plain words with the fix where there is one, and the
    /// connections it holds.
    pub(super) fn peers_sentence(&self) -> Option<String> {
        let d = self.dht.as_ref()?;
        let nat = peers_sentence(d.nat, d.port);
        let held = connections_sentence(&d.paths);
        match (nat, held) {
            (None, None) => None,
            (a, b) => Some([a, b].into_iter().flatten().collect::<Vec<_>>().join(" ")),
        }
    }

    /// The last heartbeat's round trip, ms.
    pub(super) fn rtt_ms(&self) -> Option<u32> {
        self.rtt
            .map(|d| u32::try_from(d.as_millis()).unwrap_or(u32::MAX))
    }

    /// Whether the channel is open now.
    pub(super) fn channel_open(&self) -> bool {
        self.channel
            .as_ref()
            .is_some_and(|k| k.open.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Stops the channel, the tunnel and the gateway.
    pub(super) async fn close(&mut self) {
        self.channel = None;
        if let Some(t) = self.tunnel.take() {
            t.stop().await;
        }
        self.gateway = None;
    }
}

/// The DHT connections this computer holds, kind by kind with their round trips, for the volunteer ("3 connections
/// to other Commons computers: 2 direct (4 ms), 1 through a relay (31 ms).").
pub(crate) fn connections_sentence(paths: &[PathReport]) -> Option<String> {
    let dht: Vec<_> = paths
        .iter()
        .filter(|p| {
            matches!(
                p.kind,
                PathKind::Direct | PathKind::HolePunched | PathKind::Relayed
            ) && p.connections > 0
        })
        .collect();
    let total: u32 = dht.iter().map(|p| p.connections).sum();
    if total == 0 {
        return None;
    }
    let parts: Vec<_> = dht
        .iter()
        .map(|p| {
            let how = match p.kind {
                PathKind::Direct => "direct",
                PathKind::HolePunched => "direct after a hole punch through your router",
                _ => "through a relay",
            };
            let rtt = p.rtt_ms.map(|ms| format!(" ({ms} ms)")).unwrap_or_default();
            format!("{} {how}{rtt}", p.connections)
        })
        .collect();
    let connections = if total == 1 {
        "connection"
    } else {
        "connections"
    };
    Some(format!(
        "{total} {connections} to other Commons computers: {}.",
        parts.join(", ")
    ))
}

/// How other Commons nodes (the DHT) reach this computer, for the volunteer: nothing while unknown.
pub(crate) fn peers_sentence(nat: NatStatus, port: Option<u16>) -> Option<String> {
    match nat {
        NatStatus::Unknown => None,
        NatStatus::Public => Some(match port {
            Some(p) => format!(
                "Other Commons computers reach this one directly (TCP port {p} is open to them)."
            ),
            None => "Other Commons computers reach this one directly.".to_owned(),
        }),
        NatStatus::Private => {
            let forward = match port {
                Some(p) => format!("forward TCP port {p} to this computer"),
                None => "forward the port Commons listens on to this computer".to_owned(),
            };
            Some(format!(
                "Your router blocks incoming connections, so other Commons computers reach this one through a relay, \
                 which is slower (a direct path is tried each time). Turn on UPnP on your router, or {forward}, to \
                 get a direct path. Requests from the coordinator are not affected: they come back over this \
                 computer's own connection."
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connections_sentence_counts_each_kind_with_its_round_trip() {
        let p = |kind, rtt_ms, connections| PathReport {
            kind,
            rtt_ms,
            connections,
        };
        assert_eq!(connections_sentence(&[]), None);
        assert_eq!(
            connections_sentence(&[p(PathKind::Reverse, Some(3), 1)]),
            None,
            "the channel is said elsewhere"
        );
        assert_eq!(
            connections_sentence(&[
                p(PathKind::Direct, Some(4), 2),
                p(PathKind::HolePunched, None, 1),
                p(PathKind::Reverse, Some(3), 1),
                p(PathKind::Relayed, Some(31), 1),
            ])
            .unwrap(),
            "4 connections to other Commons computers: 2 direct (4 ms), 1 direct after a hole punch through \
             your router, 1 through a relay (31 ms)."
        );
        assert_eq!(
            connections_sentence(&[p(PathKind::Direct, Some(4), 1)]).unwrap(),
            "1 connection to other Commons computers: 1 direct (4 ms)."
        );
    }

    #[test]
    fn the_peers_sentence_says_what_to_fix() {
        assert_eq!(peers_sentence(NatStatus::Unknown, Some(4001)), None);
        let private = peers_sentence(NatStatus::Private, Some(4001)).unwrap();
        assert!(
            private.starts_with("Your router blocks incoming connections"),
            "{private}"
        );
        assert!(private.contains("forward TCP port 4001"), "{private}");
        assert!(private.contains("UPnP"), "{private}");
        let public = peers_sentence(NatStatus::Public, Some(4001)).unwrap();
        assert!(
            public.contains("directly") && public.contains("4001"),
            "{public}"
        );
        assert!(
            !peers_sentence(NatStatus::Private, None)
                .unwrap()
                .contains("port None")
        );
    }
}
