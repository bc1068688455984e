//! One DHT node: a libp2p swarm (TCP + noise + yamux; Kademlia, identify, ping; AutoNAT, circuit relay v2 and
//! DCUtR hole punching for nodes behind NATs) driven by a task, and a cloneable handle that talks to it over a
//! channel.
//!
//! Reachability: AutoNAT asks connected peers to dial the node back. A node found public becomes a DHT server
//! when its config lets it (`auto_server`); a node found private stays a client and reserves a slot on a relay
//! (a coordinator that serves circuit relay v2), so that others can reach it at `<relay>/p2p-circuit/p2p/<it>`.
//! A connection that arrives over the relay is upgraded to a direct one by DCUtR where the NATs allow it (TCP
//! simultaneous open from the ports the node listens on, which libp2p's TCP transport reuses for its dials).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use commons_shared::api::{PathKind, PathReport};
use commons_shared::backoff::Backoff;
use commons_shared::dht::{
    CoordinatorRecord, NatStatus, NodeRole, RecordBody, RecordPayload, SERVICE_SHARDS,
    WorkerRecord, coordinator_key, provider_key_allowed, service_key, worker_key,
};
use futures::StreamExt;
use libp2p::core::ConnectedPoint;
use libp2p::core::transport::ListenerId;
use libp2p::identity::Keypair;
use libp2p::kad::store::{MemoryStore, MemoryStoreConfig, RecordStore};
use libp2p::kad::{self, Quorum, Record, RecordKey};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{ConnectionId, NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, autonat, dcutr, identify, noise, ping, relay, tcp,
    yamux,
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::record::{self, MAX_VALUE_BYTES, RecordError};

/// Our Kademlia protocol: private, so the DHT never mixes with the public libp2p one.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/commons/kad/1.0.0");
/// Our identify protocol version; peers that speak another are not added to the routing table.
pub const ID_PROTOCOL: &str = "/commons/id/1.0.0";
/// Largest Kademlia message (a provider list of a busy shard fits).
const MAX_PACKET: usize = 64 * 1024;
/// Providers kept per key. A storer answers with at most 20 (k) of them, so a service's shards, not this
/// limit, set how many providers a lookup can find: 20 × `SERVICE_SHARDS`.
const MAX_PROVIDERS_PER_KEY: usize = 64;

/// What a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A coordinator: always serves the DHT.
    Coordinator,
    /// A volunteer agent.
    Agent,
}

impl Role {
    fn agent_version(self) -> String {
        let name = match self {
            Role::Coordinator => "coordinator",
            Role::Agent => "agent",
        };
        format!("commons-{name}/{}", env!("CARGO_PKG_VERSION"))
    }
}

/// The role a peer announced (from identify's agent version).
pub fn role_of(agent_version: &str) -> NodeRole {
    if agent_version.starts_with("commons-coordinator/") {
        NodeRole::Coordinator
    } else if agent_version.starts_with("commons-agent/") {
        NodeRole::Worker
    } else {
        NodeRole::Peer
    }
}

/// How to run a node.
#[derive(Debug, Clone)]
pub struct Config {
    /// Its identity.
    pub keypair: Keypair,
    /// What it is.
    pub role: Role,
    /// Where it listens.
    pub listen: Vec<Multiaddr>,
    /// Addresses others reach it at, when known (a public address, a forwarded port).
    pub external: Vec<Multiaddr>,
    /// Serve the DHT (answer queries, store records). Nodes others cannot reach should not.
    pub server: bool,
    /// How often its record is published again; records and provider announcements live twice this long.
    pub refresh: Duration,
    /// How long a lookup may take.
    pub query_timeout: Duration,
    /// How long an idle connection stays open.
    pub idle_timeout: Duration,
    /// Serve circuit relay v2 for nodes behind NATs, within these limits (coordinators).
    pub relay: Option<RelayLimits>,
    /// Become a DHT server once AutoNAT finds the node publicly reachable, and a client again when it finds it
    /// private (agents). `server` serves from the start, whatever AutoNAT finds.
    pub auto_server: bool,
    /// Treat private and loopback addresses as reachable ones: AutoNAT probes them and answers probes from peers
    /// seen at them. For a LAN deployment and tests; on the internet a peer seen at a private address proves
    /// nothing about reachability.
    pub private_addresses: bool,
    /// AutoNAT: the first probe this long after start, then every `probe_interval` until sure (every 15 min
    /// after).
    pub probe_delay: Duration,
    /// AutoNAT: the wait between probes while unsure.
    pub probe_interval: Duration,
}

/// What a relay grants the nodes behind NATs that use it. A relayed connection carries DHT requests and the
/// hole punch's coordination, not bulk data: circuits are short and small, and a node that needs more gets a
/// direct connection by hole punching.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayLimits {
    /// Nodes holding a reservation at once, in all.
    pub reservations: usize,
    /// Circuits open at once, in all.
    pub circuits: usize,
    /// Circuits open at once per node.
    pub circuits_per_peer: usize,
    /// How long one circuit may last.
    pub circuit_duration: Duration,
    /// Bytes one circuit may carry (each way).
    pub circuit_bytes: u64,
}

impl Default for RelayLimits {
    fn default() -> Self {
        RelayLimits {
            reservations: 4096,
            circuits: 256,
            circuits_per_peer: 4,
            circuit_duration: Duration::from_secs(120),
            circuit_bytes: 1 << 20,
        }
    }
}

impl Config {
    /// Defaults: listen on every interface (a port the OS picks), serve, refresh every minute.
    pub fn new(keypair: Keypair, role: Role) -> Self {
        Config {
            keypair,
            role,
            listen: vec!["/ip4/0.0.0.0/tcp/0".parse().expect("a valid multiaddr")],
            external: Vec::new(),
            server: true,
            refresh: Duration::from_secs(60),
            query_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            relay: None,
            auto_server: false,
            private_addresses: false,
            probe_delay: Duration::from_secs(15),
            probe_interval: Duration::from_secs(90),
        }
    }
}

/// Why the DHT could not do something.
#[derive(Debug, thiserror::Error)]
pub enum DhtError {
    /// The kept identity cannot be read.
    #[error("the kept DHT identity is unreadable: {0}")]
    Identity(#[source] libp2p::identity::DecodingError),
    /// An address cannot be listened on.
    #[error("the DHT node cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Why.
        #[source]
        source: libp2p::TransportError<std::io::Error>,
    },
    /// A listener failed while starting.
    #[error("the DHT node's listener failed: {0}")]
    Listener(#[source] std::io::Error),
    /// No listener came up in time.
    #[error("the DHT node could not start: no listen address within 5 s")]
    NoListenAddress,
    /// The transport or the behaviour could not be built.
    #[error("the DHT node could not start: {0}")]
    Build(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// No seed but this node.
    #[error("no DHT seed answered (no seed other than this node)")]
    NoSeeds,
    /// The bootstrap query failed.
    #[error("no DHT seed answered ({0})")]
    Bootstrap(#[source] kad::BootstrapError),
    /// The bootstrap went through but found nobody.
    #[error("no DHT seed answered (the routing table stayed empty)")]
    EmptyRoutingTable,
    /// No peer is known to bootstrap from.
    #[error("no DHT seed answered ({0})")]
    NoKnownPeers(#[source] kad::NoKnownPeers),
    /// A seed's address lacks its `/p2p/<peer id>`.
    #[error("seed address {0} has no /p2p/<peer id>")]
    SeedWithoutPeer(Multiaddr),
    /// Publishing failed locally.
    #[error("could not publish: {0}")]
    Publish(#[source] kad::store::Error),
    /// The node's task has stopped.
    #[error("the DHT node has stopped")]
    Stopped,
    /// An address to connect to lacks its `/p2p/<peer id>`.
    #[error("address {0} has no /p2p/<peer id> at its end")]
    NoPeer(Multiaddr),
    /// A connection could not be made.
    #[error("cannot connect to {peer}: {source}")]
    Dial {
        /// The peer.
        peer: PeerId,
        /// Why.
        #[source]
        source: std::sync::Arc<libp2p::swarm::DialError>,
    },
}

/// A record found in the DHT, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Found<T> {
    /// The peer that signed it.
    pub peer: PeerId,
    /// Its sequence number.
    pub seq: u64,
    /// When it expires (Unix ms).
    pub expires_at_ms: u64,
    /// What it says.
    pub record: T,
}

/// A node's view of itself and its neighbours.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Figures.
    pub stats: commons_shared::dht::DhtStats,
    /// Routing-table peers with the role they announced.
    pub links: Vec<(PeerId, NodeRole)>,
    /// Open connections.
    pub connections: Vec<Connection>,
    /// Circuits through this node's relay now: (the node that asked, the node it reached).
    pub circuits: Vec<(PeerId, PeerId)>,
}

impl Snapshot {
    /// How this node is connected to its peers, kind by kind (direct, hole-punched, relayed), each with the median
    /// of its connections' last ping round trips; kinds without a connection are left out.
    pub fn paths(&self) -> Vec<PathReport> {
        [PathKind::Direct, PathKind::HolePunched, PathKind::Relayed]
            .into_iter()
            .filter_map(|kind| {
                let of_kind: Vec<_> = self
                    .connections
                    .iter()
                    .filter(|c| c.kind() == kind)
                    .collect();
                let mut rtts: Vec<_> = of_kind.iter().filter_map(|c| c.rtt).collect();
                rtts.sort_unstable();
                (!of_kind.is_empty()).then(|| PathReport {
                    kind,
                    rtt_ms: rtts
                        .get(rtts.len() / 2)
                        .map(|d| u32::try_from(d.as_millis()).unwrap_or(u32::MAX)),
                    connections: u32::try_from(of_kind.len()).unwrap_or(u32::MAX),
                })
            })
            .collect()
    }
}

/// One open connection.
#[derive(Debug, Clone, PartialEq)]
pub struct Connection {
    /// The peer.
    pub peer: PeerId,
    /// Its address on this connection (`.../p2p-circuit` when relayed).
    pub address: Multiaddr,
    /// Through a relay rather than direct.
    pub relayed: bool,
    /// The last ping's round trip on this connection.
    pub rtt: Option<Duration>,
    /// A direct connection that a hole punch made (DCUtR).
    pub punched: bool,
}

impl Connection {
    /// Which way it goes.
    pub fn kind(&self) -> PathKind {
        if self.relayed {
            PathKind::Relayed
        } else if self.punched {
            PathKind::HolePunched
        } else {
            PathKind::Direct
        }
    }
}

enum Cmd {
    Bootstrap {
        seeds: Vec<(PeerId, Multiaddr)>,
        reply: oneshot::Sender<Result<Duration, DhtError>>,
    },
    Publish {
        body: RecordBody,
        provide: Vec<String>,
        reply: oneshot::Sender<Result<(), DhtError>>,
    },
    Withdraw {
        reply: oneshot::Sender<()>,
    },
    Get {
        key: String,
        reply: oneshot::Sender<Option<RecordPayload>>,
    },
    Providers {
        key: String,
        reply: oneshot::Sender<HashSet<PeerId>>,
    },
    PutRaw {
        key: String,
        value: Vec<u8>,
        reply: oneshot::Sender<bool>,
    },
    Snapshot {
        reply: oneshot::Sender<Snapshot>,
    },
    Connect {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<(), DhtError>>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// A handle on a running node; clones share it. The node stops when the last handle is dropped or on
/// [`Dht::shutdown`].
#[derive(Debug, Clone)]
pub struct Dht {
    tx: mpsc::Sender<Cmd>,
    peer_id: PeerId,
    addrs: watch::Receiver<Vec<Multiaddr>>,
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    kad: kad::Behaviour<MemoryStore>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    autonat: autonat::Behaviour,
    relay: Toggle<relay::Behaviour>,
    relay_client: relay::client::Behaviour,
    dcutr: dcutr::Behaviour,
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The peer id at the end of a multiaddr (`.../p2p/<id>`), and the address without it.
pub fn split_peer(addr: &Multiaddr) -> Option<(PeerId, Multiaddr)> {
    let mut a = addr.clone();
    match a.pop() {
        Some(Protocol::P2p(peer)) => Some((peer, a)),
        _ => None,
    }
}

impl Dht {
    /// Starts a node and waits until it listens.
    pub async fn start(config: Config) -> Result<Dht, DhtError> {
        let peer_id = config.keypair.public().to_peer_id();
        let mut swarm = build_swarm(&config)?;
        let mut pending_listeners = HashSet::new();
        for a in &config.listen {
            let id = swarm
                .listen_on(a.clone())
                .map_err(|source| DhtError::Listen {
                    addr: a.clone(),
                    source,
                })?;
            pending_listeners.insert(id);
        }
        for a in &config.external {
            swarm.add_external_address(a.clone());
        }
        // Provider records carry the provider's external addresses, and storers hand out only providers they can
        // give an address for (kad drops the others from its answers): a node without configured addresses
        // advertises where it listens. Its kad mode is set explicitly, so this does not make a client a server.
        let advertise_listen = config.external.is_empty();
        let (addr_tx, addr_rx) = watch::channel(Vec::new());
        let (tx, rx) = mpsc::channel(256);
        let mut node = Node {
            swarm,
            keypair: config.keypair.clone(),
            peer_id,
            refresh: config.refresh,
            rx,
            addrs: Vec::new(),
            addr_tx,
            advertise_listen,
            pending: HashMap::new(),
            roles: HashMap::new(),
            seen: HashMap::new(),
            published: None,
            provided: Vec::new(),
            published_at: 0,
            seq: 0,
            lookups: 0,
            lookup_failures: 0,
            rejected: 0,
            own_put: None,
            announcing: HashMap::new(),
            retry: Retry::default(),
            publish_failures: 0,
            bootstrap_ms: None,
            server: config.server,
            auto_server: config.auto_server,
            nat: NatStatus::Unknown,
            relays: HashMap::new(),
            reservation: None,
            relayed_by: None,
            hole_punched: 0,
            hole_punch_failures: 0,
            relayed_circuits: 0,
            reserved: HashSet::new(),
            circuits: HashMap::new(),
            punched: HashSet::new(),
            conns: HashMap::new(),
            connecting: HashMap::new(),
        };
        // Until every listener has an address; the node handles the events as it will later.
        let deadline = tokio::time::sleep(Duration::from_secs(5));
        tokio::pin!(deadline);
        while !pending_listeners.is_empty() {
            tokio::select! {
                ev = node.swarm.select_next_some() => {
                    match ev {
                        SwarmEvent::ListenerError { error, .. }
                        | SwarmEvent::ListenerClosed { reason: Err(error), .. } => {
                            return Err(DhtError::Listener(error));
                        }
                        ev => {
                            if let SwarmEvent::NewListenAddr { listener_id, .. } = &ev {
                                pending_listeners.remove(listener_id);
                            }
                            node.on_event(ev);
                        }
                    }
                }
                _ = &mut deadline => return Err(DhtError::NoListenAddress),
            }
        }
        tokio::spawn(node.run());
        Ok(Dht {
            tx,
            peer_id,
            addrs: addr_rx,
        })
    }

    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Connects to `addr` (ending in `/p2p/<peer id>`; a relayed one, `.../p2p-circuit/p2p/<peer id>`, goes
    /// through that relay), and returns once a connection to the peer is open.
    pub async fn connect(&self, addr: Multiaddr) -> Result<(), DhtError> {
        self.ask(|reply| Cmd::Connect { addr, reply }).await?
    }

    /// Where it listens, each with `/p2p/<peer id>` (what a seed list holds).
    pub fn addresses(&self) -> Vec<Multiaddr> {
        self.addrs.borrow().clone()
    }

    /// [`Dht::addresses`] as text, as the APIs carry them.
    pub fn address_strings(&self) -> Vec<String> {
        self.addrs
            .borrow()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Cmd) -> Result<T, DhtError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| DhtError::Stopped)?;
        rx.await.map_err(|_| DhtError::Stopped)
    }

    /// Joins through `seeds` (multiaddrs ending in `/p2p/<peer id>`); how long until the routing table was
    /// filled. Seeds that do not answer are skipped; it fails only when none does.
    pub async fn bootstrap(&self, seeds: &[Multiaddr]) -> Result<Duration, DhtError> {
        let mut list = Vec::new();
        for s in seeds {
            let (peer, addr) = split_peer(s).ok_or_else(|| DhtError::SeedWithoutPeer(s.clone()))?;
            if peer != self.peer_id {
                list.push((peer, addr));
            }
        }
        if list.is_empty() {
            return Err(DhtError::NoSeeds);
        }
        self.ask(|reply| Cmd::Bootstrap { seeds: list, reply })
            .await?
    }

    /// Publishes this worker's record and announces its services; the node refreshes both until withdrawn.
    pub async fn publish_worker(&self, record: WorkerRecord) -> Result<(), DhtError> {
        let peer = self.peer_id.to_base58();
        let shard = commons_shared::dht::shard_of(&peer);
        let provide = record
            .services
            .iter()
            .map(|s| service_key(s, shard))
            .collect();
        self.ask(|reply| Cmd::Publish {
            body: RecordBody::Worker(record),
            provide,
            reply,
        })
        .await?
    }

    /// Publishes this coordinator's record and announces it for its region and for any region.
    pub async fn publish_coordinator(&self, record: CoordinatorRecord) -> Result<(), DhtError> {
        let provide = vec![
            commons_shared::dht::region_key(&record.region),
            commons_shared::dht::region_key(commons_shared::dht::ANY_REGION),
        ];
        self.ask(|reply| Cmd::Publish {
            body: RecordBody::Coordinator(record),
            provide,
            reply,
        })
        .await?
    }

    /// Stops refreshing and announcing (the record and announcements then expire where they are stored).
    pub async fn withdraw(&self) {
        let _ = self.ask(|reply| Cmd::Withdraw { reply }).await;
    }

    /// The valid record under `key`, newest seen; `None` when there is none (or only invalid ones).
    pub async fn get(&self, key: &str) -> Option<RecordPayload> {
        self.ask(|reply| Cmd::Get {
            key: key.to_owned(),
            reply,
        })
        .await
        .ok()
        .flatten()
    }

    /// Every provider found under a provider key.
    pub async fn providers(&self, key: &str) -> HashSet<PeerId> {
        self.ask(|reply| Cmd::Providers {
            key: key.to_owned(),
            reply,
        })
        .await
        .unwrap_or_default()
    }

    /// Every peer announcing `service`, over all its shards.
    pub async fn service_providers(&self, service: &str) -> HashSet<PeerId> {
        let lookups = (0..SERVICE_SHARDS).map(|s| {
            let key = service_key(service, s);
            async move { self.providers(&key).await }
        });
        futures::future::join_all(lookups)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// The live workers offering `service`: providers whose signed, unexpired record lists it.
    pub async fn find_service(&self, service: &str) -> Vec<Found<WorkerRecord>> {
        let peers = self.service_providers(service).await;
        futures::stream::iter(peers)
            .map(|p| async move { (p, self.get(&worker_key(&p.to_base58())).await) })
            .buffer_unordered(32)
            .filter_map(|(peer, payload)| async move {
                let p = payload?;
                match p.body {
                    RecordBody::Worker(w) if w.services.iter().any(|s| s == service) => {
                        Some(Found {
                            peer,
                            seq: p.seq,
                            expires_at_ms: p.expires_at_ms,
                            record: w,
                        })
                    }
                    _ => None,
                }
            })
            .collect()
            .await
    }

    /// The live coordinators of `region`, and when it has none, of any region.
    pub async fn find_coordinators(&self, region: &str) -> Vec<Found<CoordinatorRecord>> {
        let mut peers = self
            .providers(&commons_shared::dht::region_key(region))
            .await;
        if peers.is_empty() && region != commons_shared::dht::ANY_REGION {
            peers = self
                .providers(&commons_shared::dht::region_key(
                    commons_shared::dht::ANY_REGION,
                ))
                .await;
        }
        futures::stream::iter(peers)
            .map(|p| async move { (p, self.get(&coordinator_key(&p.to_base58())).await) })
            .buffer_unordered(16)
            .filter_map(|(peer, payload)| async move {
                match payload?.clone() {
                    RecordPayload {
                        seq,
                        expires_at_ms,
                        body: RecordBody::Coordinator(c),
                        ..
                    } => Some(Found {
                        peer,
                        seq,
                        expires_at_ms,
                        record: c,
                    }),
                    _ => None,
                }
            })
            .collect()
            .await
    }

    /// Puts bytes as they are under `key` (records relayed or signed elsewhere); whether the put reached
    /// anyone. A put that "succeeds" proves nothing: storers validate and may have dropped it.
    pub async fn put_raw(&self, key: &str, value: Vec<u8>) -> bool {
        self.ask(|reply| Cmd::PutRaw {
            key: key.to_owned(),
            value,
            reply,
        })
        .await
        .unwrap_or(false)
    }

    /// Figures and routing-table links.
    pub async fn snapshot(&self) -> Snapshot {
        self.ask(|reply| Cmd::Snapshot { reply })
            .await
            .unwrap_or_default()
    }

    /// Stops the node and closes its connections.
    pub async fn shutdown(&self) {
        let _ = self.ask(|reply| Cmd::Shutdown { reply }).await;
    }
}

fn with_peer(addrs: &[Multiaddr], peer: PeerId) -> Vec<Multiaddr> {
    addrs
        .iter()
        .map(|a| a.clone().with(Protocol::P2p(peer)))
        .collect()
}

fn build_swarm(config: &Config) -> Result<Swarm<Behaviour>, DhtError> {
    let refresh = config.refresh;
    let server = config.server;
    let query_timeout = config.query_timeout;
    let role = config.role;
    let relay_limits = config.relay;
    let autonat_config = autonat::Config {
        boot_delay: config.probe_delay,
        retry_interval: config.probe_interval,
        throttle_server_period: config.probe_interval.min(Duration::from_secs(90)),
        only_global_ips: !config.private_addresses,
        ..autonat::Config::default()
    };
    // TCP dials reuse the port the node listens on (libp2p's default), so that a NAT maps the node's outgoing
    // connections to the same public port: what identify observes, and what a hole punch dials.
    let swarm = libp2p::SwarmBuilder::with_existing_identity(config.keypair.clone())
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| DhtError::Build(Box::new(e)))?
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| DhtError::Build(Box::new(e)))?
        .with_behaviour(|key, relay_client| {
            let peer = key.public().to_peer_id();
            let mut kc = kad::Config::new(KAD_PROTOCOL);
            kc.set_query_timeout(query_timeout)
                .set_record_filtering(kad::StoreInserts::FilterBoth)
                .set_record_ttl(Some(refresh * 2))
                .set_provider_record_ttl(Some(refresh * 2))
                .set_provider_publication_interval(Some(refresh))
                // The publisher refreshes its own record; storers need not re-replicate records this short-lived
                // (with thousands of them, that would be most of the traffic).
                .set_publication_interval(None)
                .set_replication_interval(None)
                .set_max_packet_size(MAX_PACKET);
            let store = MemoryStore::with_config(
                peer,
                MemoryStoreConfig {
                    max_records: 4096,
                    max_value_bytes: MAX_VALUE_BYTES,
                    max_providers_per_key: MAX_PROVIDERS_PER_KEY,
                    max_provided_keys: 4096,
                },
            );
            let mut kad = kad::Behaviour::with_config(peer, store, kc);
            kad.set_mode(Some(if server {
                kad::Mode::Server
            } else {
                kad::Mode::Client
            }));
            let identify = identify::Behaviour::new(
                identify::Config::new(ID_PROTOCOL.into(), key.public())
                    .with_agent_version(role.agent_version())
                    .with_cache_size(0),
            );
            let relay = relay_limits.map(|l| {
                relay::Behaviour::new(
                    peer,
                    relay::Config {
                        max_reservations: l.reservations,
                        max_circuits: l.circuits,
                        max_circuits_per_peer: l.circuits_per_peer,
                        max_circuit_duration: l.circuit_duration,
                        max_circuit_bytes: l.circuit_bytes,
                        ..relay::Config::default()
                    },
                )
            });
            Behaviour {
                kad,
                identify,
                ping: ping::Behaviour::default(),
                autonat: autonat::Behaviour::new(peer, autonat_config),
                relay: relay.into(),
                relay_client,
                dcutr: dcutr::Behaviour::new(peer),
            }
        })
        .map_err(|e| DhtError::Build(Box::new(e)))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(config.idle_timeout))
        .build();
    Ok(swarm)
}

enum Pending {
    Bootstrap {
        started: Instant,
        reply: oneshot::Sender<Result<Duration, DhtError>>,
    },
    Get {
        key: String,
        reply: oneshot::Sender<Option<RecordPayload>>,
    },
    Providers {
        found: HashSet<PeerId>,
        reply: oneshot::Sender<HashSet<PeerId>>,
    },
    Put {
        reply: oneshot::Sender<bool>,
    },
}

struct Node {
    swarm: Swarm<Behaviour>,
    keypair: Keypair,
    peer_id: PeerId,
    refresh: Duration,
    rx: mpsc::Receiver<Cmd>,
    addrs: Vec<Multiaddr>,
    addr_tx: watch::Sender<Vec<Multiaddr>>,
    advertise_listen: bool,
    pending: HashMap<kad::QueryId, Pending>,
    /// Agent versions that peers announced.
    roles: HashMap<PeerId, NodeRole>,
    /// Newest sequence number read per key, with its expiry: older ones are replays.
    seen: HashMap<String, (u64, u64)>,
    published: Option<RecordBody>,
    provided: Vec<String>,
    /// Routing-table size at the last publication: when the table has doubled since, the record and the
    /// announcements go out again, so a node that published into a small network is not left stored only on
    /// its first few peers until the next refresh.
    published_at: usize,
    seq: u64,
    lookups: u64,
    lookup_failures: u64,
    rejected: u64,
    /// The put of this node's own record in flight, if any.
    own_put: Option<kad::QueryId>,
    /// Announcements of this node's provider keys in flight.
    announcing: HashMap<kad::QueryId, String>,
    /// What failed to go out and when it is tried again.
    retry: Retry,
    /// Own puts and announcements that reached nobody (each is retried).
    publish_failures: u64,
    bootstrap_ms: Option<u64>,
    /// Serves the DHT whatever AutoNAT finds.
    server: bool,
    /// Serves it while AutoNAT finds the node public.
    auto_server: bool,
    nat: NatStatus,
    /// Connected peers that serve circuit relay v2, with the address this node reached each at.
    relays: HashMap<PeerId, Multiaddr>,
    /// The relay listener asked for (a reservation pending or held).
    reservation: Option<(PeerId, ListenerId)>,
    /// The relay that accepted the reservation.
    relayed_by: Option<PeerId>,
    hole_punched: u64,
    hole_punch_failures: u64,
    relayed_circuits: u64,
    /// Nodes holding a reservation on this node's relay.
    reserved: HashSet<PeerId>,
    /// Circuits through this node's relay, by (asking node, reached node): how many are open.
    circuits: HashMap<(PeerId, PeerId), u32>,
    /// Hole-punched connections DCUtR announced before the swarm did.
    punched: HashSet<ConnectionId>,
    conns: HashMap<ConnectionId, Connection>,
    /// Who waits for a connection to a peer.
    connecting: HashMap<PeerId, Vec<oneshot::Sender<Result<(), DhtError>>>>,
}

/// A publication of this node's own (its record, a provider key) that reached no peer: under load the lookup of
/// the closest peers can time out, and kad then stores nothing anywhere. Left alone, the record would be missing
/// until the next refresh, and, its lifetime being two refreshes, a second slow refresh would let it expire
/// everywhere. It is tried again after a short backoff instead (1 s, doubling, at most a quarter of the refresh).
#[derive(Debug, Default)]
struct Retry {
    /// When to try again; `None` when nothing waits.
    due: Option<tokio::time::Instant>,
    /// Consecutive failures, for the backoff.
    attempts: u32,
    /// The record must be put again.
    record: bool,
    /// Provider keys to announce again.
    keys: HashSet<String>,
}

impl Retry {
    fn schedule(&mut self, refresh: Duration) {
        if self.due.is_none() {
            let backoff = Backoff::new(
                Duration::from_secs(1),
                (refresh / 4).min(Duration::from_secs(64)),
            )
            .after(self.attempts)
            .max(Duration::from_millis(100));
            self.attempts += 1;
            self.due = Some(tokio::time::Instant::now() + backoff);
        }
    }
}

/// Sleeps until `due`, or for ever when there is none.
async fn until(due: Option<tokio::time::Instant>) {
    match due {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

impl Node {
    async fn run(mut self) {
        let mut refresh = tokio::time::interval(self.refresh);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        refresh.tick().await;
        loop {
            let retry_due = self.retry.due;
            tokio::select! {
                ev = self.swarm.select_next_some() => self.on_event(ev),
                cmd = self.rx.recv() => match cmd {
                    None => break,
                    Some(Cmd::Shutdown { reply }) => {
                        let _ = reply.send(());
                        break;
                    }
                    Some(c) => self.on_cmd(c),
                },
                _ = refresh.tick() => self.republish(),
                _ = until(retry_due) => self.retry_publication(),
            }
        }
        tracing::debug!(peer = %self.peer_id, "DHT node stopped");
    }

    fn kad(&mut self) -> &mut kad::Behaviour<MemoryStore> {
        &mut self.swarm.behaviour_mut().kad
    }

    fn on_cmd(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Bootstrap { seeds, reply } => {
                for (peer, addr) in seeds {
                    self.kad().add_address(&peer, addr);
                }
                match self.kad().bootstrap() {
                    Ok(id) => {
                        self.pending.insert(
                            id,
                            Pending::Bootstrap {
                                started: Instant::now(),
                                reply,
                            },
                        );
                    }
                    Err(e) => {
                        let _ = reply.send(Err(DhtError::NoKnownPeers(e)));
                    }
                }
            }
            Cmd::Publish {
                body,
                provide,
                reply,
            } => {
                self.published = Some(body);
                let r = self.put_own();
                for key in &provide {
                    if !self.provided.contains(key)
                        && let Err(e) = self.announce(key)
                    {
                        let _ = reply.send(Err(DhtError::Publish(e)));
                        return;
                    }
                }
                for key in std::mem::take(&mut self.provided) {
                    if !provide.contains(&key) {
                        self.kad().stop_providing(&RecordKey::new(&key));
                    }
                }
                self.provided = provide;
                let _ = reply.send(r);
            }
            Cmd::Withdraw { reply } => {
                if let Some(key) = self.own_key() {
                    self.kad().remove_record(&RecordKey::new(&key));
                }
                self.published = None;
                self.retry = Retry::default();
                for key in std::mem::take(&mut self.provided) {
                    self.kad().stop_providing(&RecordKey::new(&key));
                }
                let _ = reply.send(());
            }
            Cmd::Get { key, reply } => {
                self.lookups += 1;
                let id = self.kad().get_record(RecordKey::new(&key));
                self.pending.insert(id, Pending::Get { key, reply });
            }
            Cmd::Providers { key, reply } => {
                self.lookups += 1;
                let id = self.kad().get_providers(RecordKey::new(&key));
                self.pending.insert(
                    id,
                    Pending::Providers {
                        found: HashSet::new(),
                        reply,
                    },
                );
            }
            Cmd::PutRaw { key, value, reply } => {
                match self
                    .kad()
                    .put_record(Record::new(RecordKey::new(&key), value), Quorum::One)
                {
                    Ok(id) => {
                        self.pending.insert(id, Pending::Put { reply });
                    }
                    Err(_) => {
                        let _ = reply.send(false);
                    }
                }
            }
            Cmd::Snapshot { reply } => {
                let _ = reply.send(self.snapshot());
            }
            Cmd::Connect { addr, reply } => {
                let Some((peer, _)) = split_peer(&addr) else {
                    let _ = reply.send(Err(DhtError::NoPeer(addr)));
                    return;
                };
                let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                    .addresses(vec![addr])
                    .condition(libp2p::swarm::dial_opts::PeerCondition::Always)
                    .build();
                match self.swarm.dial(opts) {
                    Ok(()) => self.connecting.entry(peer).or_default().push(reply),
                    Err(e) => {
                        let _ = reply.send(Err(DhtError::Dial {
                            peer,
                            source: std::sync::Arc::new(e),
                        }));
                    }
                }
            }
            Cmd::Shutdown { .. } => unreachable!("handled in run"),
        }
    }

    fn own_key(&self) -> Option<String> {
        let peer = self.peer_id.to_base58();
        match self.published.as_ref()? {
            RecordBody::Worker(_) => Some(worker_key(&peer)),
            RecordBody::Coordinator(_) => Some(coordinator_key(&peer)),
        }
    }

    /// Signs and puts this node's record with a new sequence number and expiry.
    fn put_own(&mut self) -> Result<(), DhtError> {
        let (Some(body), Some(key)) = (self.published.clone(), self.own_key()) else {
            return Ok(());
        };
        let now = now_ms();
        // Time-based, so a restarted node's record is newer than what it left behind.
        self.seq = (self.seq + 1).max(now);
        let lifetime = self.refresh * 2;
        let payload = RecordPayload {
            peer_id: self.peer_id.to_base58(),
            seq: self.seq,
            expires_at_ms: now + lifetime.as_millis() as u64,
            body,
        };
        let value = record::sign(&self.keypair, &payload);
        self.published_at = self.routing_table_size();
        let mut rec = Record::new(RecordKey::new(&key), value);
        rec.expires = Some(Instant::now() + lifetime);
        let id = self
            .kad()
            .put_record(rec, Quorum::One)
            .map_err(DhtError::Publish)?;
        self.own_put = Some(id);
        self.retry.record = false;
        Ok(())
    }

    /// Announces this node as a provider under `key` (again), watching whether the announcement goes out.
    fn announce(&mut self, key: &str) -> Result<(), kad::store::Error> {
        let id = self.kad().start_providing(RecordKey::new(&key))?;
        self.retry.keys.remove(key);
        self.announcing.insert(id, key.to_owned());
        Ok(())
    }

    /// Puts and announces again what reached nobody.
    fn retry_publication(&mut self) {
        self.retry.due = None;
        if self.retry.record {
            self.republish();
        }
        for key in std::mem::take(&mut self.retry.keys) {
            if self.provided.contains(&key)
                && let Err(e) = self.announce(&key)
            {
                tracing::warn!(key, error = ?e, "could not announce again");
            }
        }
    }

    /// Notes how one of this node's own publications ended: a failure that reached no peer is tried again soon.
    fn on_own_publication(
        &mut self,
        id: kad::QueryId,
        result: &kad::QueryResult,
        stats: &kad::QueryStats,
    ) {
        let failed = match result {
            kad::QueryResult::PutRecord(r) | kad::QueryResult::RepublishRecord(r)
                if self.own_put == Some(id) =>
            {
                self.own_put = None;
                match r {
                    // Quorum::One: any peer that took it makes the record readable.
                    Err(
                        kad::PutRecordError::QuorumFailed { success, .. }
                        | kad::PutRecordError::Timeout { success, .. },
                    ) if success.is_empty() && self.published.is_some() => {
                        self.retry.record = true;
                        Some(format!("{r:?}"))
                    }
                    _ => None,
                }
            }
            kad::QueryResult::StartProviding(r) | kad::QueryResult::RepublishProvider(r) => {
                // Ours (`announce`), or kad's own periodic re-announcement, whose key the result carries.
                let key = self.announcing.remove(&id).unwrap_or_else(|| {
                    let key = match r {
                        Ok(ok) => &ok.key,
                        Err(kad::AddProviderError::Timeout { key }) => key,
                    };
                    String::from_utf8_lossy(key.as_ref()).into_owned()
                });
                // kad reports an announcement as done once it is sent, even when the lookup reached no peer
                // to send it to: a query without a single answer reached nobody.
                let failure = match r {
                    Err(e) => Some(format!("{e:?}")),
                    Ok(_) if stats.num_successes() == 0 => Some("no peer answered".to_owned()),
                    Ok(_) => None,
                };
                match failure {
                    Some(e) if self.provided.contains(&key) => {
                        self.retry.keys.insert(key);
                        Some(e)
                    }
                    _ => None,
                }
            }
            _ => return,
        };
        match failed {
            Some(error) => {
                // A node alone (the first coordinator) has nobody to publish to: not a failure, but tried again
                // all the same, so the first peer to arrive gets the record.
                if self.routing_table_size() > 0 {
                    self.publish_failures += 1;
                }
                self.retry.schedule(self.refresh);
                tracing::debug!(error, "a publication reached no peer; trying again");
            }
            None if self.retry.due.is_none()
                && !self.retry.record
                && self.retry.keys.is_empty() =>
            {
                self.retry.attempts = 0;
            }
            None => {}
        }
    }

    fn routing_table_size(&mut self) -> usize {
        self.kad().kbuckets().map(|b| b.num_entries()).sum()
    }

    fn republish(&mut self) {
        if let Err(e) = self.put_own() {
            tracing::warn!(error = %e, "could not refresh the DHT record");
        }
    }

    fn snapshot(&mut self) -> Snapshot {
        let mut links = Vec::new();
        for bucket in self.swarm.behaviour_mut().kad.kbuckets() {
            for entry in bucket.iter() {
                let p = *entry.node.key.preimage();
                links.push(p);
            }
        }
        let links: Vec<_> = links
            .into_iter()
            .map(|p| (p, self.roles.get(&p).copied().unwrap_or(NodeRole::Peer)))
            .collect();
        let stored_records = self.kad().store_mut().records().count();
        let stats = commons_shared::dht::DhtStats {
            enabled: true,
            peer_id: Some(self.peer_id.to_base58()),
            addresses: with_peer(&self.addrs, self.peer_id)
                .iter()
                .map(ToString::to_string)
                .collect(),
            routing_table: links.len(),
            connected: self.swarm.connected_peers().count(),
            stored_records,
            provided_keys: self.provided.len(),
            lookups: self.lookups,
            lookup_failures: self.lookup_failures,
            rejected: self.rejected,
            publish_failures: self.publish_failures,
            bootstrap_ms: self.bootstrap_ms,
            nat: self.nat,
            relayed_by: self.relayed_by.map(|p| p.to_base58()),
            hole_punched: self.hole_punched,
            hole_punch_failures: self.hole_punch_failures,
            relayed_circuits: self.relayed_circuits,
            reservations: self.reserved.len() as u64,
        };
        Snapshot {
            stats,
            links,
            connections: self.conns.values().cloned().collect(),
            circuits: self.circuits.keys().copied().collect(),
        }
    }

    fn on_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::NewListenAddr { address, .. } if !self.addrs.contains(&address) => {
                if self.advertise_listen {
                    self.swarm.add_external_address(address.clone());
                }
                self.addrs.push(address);
                let _ = self.addr_tx.send(with_peer(&self.addrs, self.peer_id));
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.swarm.remove_external_address(&address);
                self.addrs.retain(|a| a != &address);
                let _ = self.addr_tx.send(with_peer(&self.addrs, self.peer_id));
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                if info.protocol_version != ID_PROTOCOL {
                    return;
                }
                self.roles.insert(peer_id, role_of(&info.agent_version));
                let speaks_kad = info.protocols.contains(&KAD_PROTOCOL);
                if info.protocols.contains(&relay::HOP_PROTOCOL_NAME)
                    && let Some(at) = self
                        .conns
                        .values()
                        .find(|c| c.peer == peer_id && !c.relayed)
                        .map(|c| c.address.clone())
                {
                    self.relays.insert(peer_id, at);
                    self.reserve();
                }
                if speaks_kad {
                    for a in info.listen_addrs {
                        self.kad().add_address(&peer_id, a);
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(ev)) => self.on_kad(ev),
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                let address = match &endpoint {
                    ConnectedPoint::Dialer { address, .. } => address.clone(),
                    ConnectedPoint::Listener { send_back_addr, .. } => send_back_addr.clone(),
                };
                self.conns.insert(
                    connection_id,
                    Connection {
                        peer: peer_id,
                        address,
                        relayed: endpoint.is_relayed(),
                        rtt: None,
                        punched: self.punched.remove(&connection_id),
                    },
                );
                for reply in self.connecting.remove(&peer_id).unwrap_or_default() {
                    let _ = reply.send(Ok(()));
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } => {
                self.conns.remove(&connection_id);
                self.punched.remove(&connection_id);
                if num_established == 0 {
                    self.relays.remove(&peer_id);
                }
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                ..
            } => {
                let waiting = self.connecting.remove(&peer).unwrap_or_default();
                let error = std::sync::Arc::new(error);
                for reply in waiting {
                    let _ = reply.send(Err(DhtError::Dial {
                        peer,
                        source: error.clone(),
                    }));
                }
            }
            SwarmEvent::ListenerClosed { listener_id, .. }
                if self.reservation.is_some_and(|(_, id)| id == listener_id) =>
            {
                // The relay went or refused: another (or the same, later) is asked at the next chance.
                if let Some((relay, _)) = self.reservation.take() {
                    tracing::info!(%relay, "the relay reservation ended");
                    self.relays.remove(&relay);
                }
                self.relayed_by = None;
                self.reserve();
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                connection,
                result: Ok(rtt),
                ..
            })) => {
                if let Some(c) = self.conns.get_mut(&connection) {
                    c.rtt = Some(rtt);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Autonat(autonat::Event::StatusChanged {
                new,
                ..
            })) => self.on_nat(new),
            SwarmEvent::Behaviour(BehaviourEvent::RelayClient(
                relay::client::Event::ReservationReqAccepted { relay_peer_id, .. },
            )) => {
                tracing::info!(relay = %relay_peer_id, "reachable through a relay");
                self.relayed_by = Some(relay_peer_id);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Relay(ev)) => self.on_relay(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(dcutr::Event {
                remote_peer_id,
                result,
            })) => match result {
                Ok(connection) => {
                    tracing::info!(peer = %remote_peer_id, "hole punched: a direct connection");
                    self.hole_punched += 1;
                    match self.conns.get_mut(&connection) {
                        Some(c) => c.punched = true,
                        None => {
                            self.punched.insert(connection);
                        }
                    }
                }
                Err(error) => {
                    tracing::info!(peer = %remote_peer_id, %error, "hole punch failed: the connection stays relayed");
                    self.hole_punch_failures += 1;
                }
            },
            _ => {}
        }
    }

    /// What this node's relay did: reservations and circuits come and go.
    fn on_relay(&mut self, ev: relay::Event) {
        match ev {
            relay::Event::ReservationReqAccepted { src_peer_id, .. } => {
                self.reserved.insert(src_peer_id);
            }
            relay::Event::ReservationClosed { src_peer_id }
            | relay::Event::ReservationTimedOut { src_peer_id } => {
                self.reserved.remove(&src_peer_id);
            }
            relay::Event::CircuitReqAccepted {
                src_peer_id,
                dst_peer_id,
            } => {
                self.relayed_circuits += 1;
                *self.circuits.entry((src_peer_id, dst_peer_id)).or_default() += 1;
            }
            relay::Event::CircuitClosed {
                src_peer_id,
                dst_peer_id,
                ..
            } => {
                if let Some(n) = self.circuits.get_mut(&(src_peer_id, dst_peer_id)) {
                    *n -= 1;
                    if *n == 0 {
                        self.circuits.remove(&(src_peer_id, dst_peer_id));
                    }
                }
            }
            _ => {}
        }
    }

    /// AutoNAT changed its mind: a public node serves the DHT (when allowed to); a private one is a client and
    /// reserves a relay slot.
    fn on_nat(&mut self, status: autonat::NatStatus) {
        self.nat = match status {
            autonat::NatStatus::Public(_) => NatStatus::Public,
            autonat::NatStatus::Private => NatStatus::Private,
            autonat::NatStatus::Unknown => NatStatus::Unknown,
        };
        tracing::info!(nat = self.nat.as_str(), "reachability");
        if !self.server && self.auto_server {
            let mode = if self.nat == NatStatus::Public {
                kad::Mode::Server
            } else {
                kad::Mode::Client
            };
            self.kad().set_mode(Some(mode));
        }
        if self.nat == NatStatus::Private {
            self.reserve();
        } else if let Some((_, listener)) = self.reservation.take() {
            // Reachable directly: the relay's slot is for those who are not.
            self.swarm.remove_listener(listener);
            self.relayed_by = None;
        }
    }

    /// Behind a NAT and without a reservation: asks a connected relay for one (listening on its circuit
    /// address).
    fn reserve(&mut self) {
        // A node that serves the DHT whatever AutoNAT says (a coordinator) is meant to be reachable: it does not
        // hide behind a relay.
        if self.server || self.nat != NatStatus::Private || self.reservation.is_some() {
            return;
        }
        let Some((&relay, at)) = self.relays.iter().next() else {
            return;
        };
        let mut addr = at.clone();
        if !matches!(addr.iter().last(), Some(Protocol::P2p(_))) {
            addr.push(Protocol::P2p(relay));
        }
        match self.swarm.listen_on(addr.with(Protocol::P2pCircuit)) {
            Ok(id) => self.reservation = Some((relay, id)),
            Err(e) => {
                tracing::info!(%relay, error = %e, "cannot ask the relay for a reservation");
                self.relays.remove(&relay);
            }
        }
    }

    fn on_kad(&mut self, ev: kad::Event) {
        match ev {
            kad::Event::InboundRequest {
                request:
                    kad::InboundRequest::PutRecord {
                        source,
                        record: Some(record),
                        ..
                    },
            } => self.store_checked(source, record),
            kad::Event::InboundRequest {
                request:
                    kad::InboundRequest::AddProvider {
                        record: Some(record),
                    },
            } => {
                let key = String::from_utf8_lossy(record.key.as_ref()).into_owned();
                if provider_key_allowed(&key, &record.provider.to_base58()) {
                    if let Err(e) = self.kad().store_mut().add_provider(record) {
                        tracing::debug!(error = ?e, "provider record not stored");
                    }
                } else {
                    self.rejected += 1;
                    tracing::debug!(key, provider = %record.provider, "provider announcement refused");
                }
            }
            kad::Event::OutboundQueryProgressed {
                id,
                result,
                step,
                stats,
            } => {
                self.on_own_publication(id, &result, &stats);
                self.on_progress(id, result, step.last)
            }
            kad::Event::RoutingUpdated {
                is_new_peer: true, ..
            } if self.published.is_some() => {
                let size = self.routing_table_size();
                if size >= 2 * self.published_at.max(1) {
                    self.republish();
                    for key in self.provided.clone() {
                        let _ = self.announce(&key);
                    }
                }
            }
            _ => {}
        }
    }

    /// Stores a record a peer put here, if it is valid and newer than the one held.
    fn store_checked(&mut self, source: PeerId, mut record: Record) {
        let key = String::from_utf8_lossy(record.key.as_ref()).into_owned();
        let now = now_ms();
        let payload = match record::verify(&key, &record.value, now) {
            Ok(p) => p,
            Err(e) => {
                self.rejected += 1;
                tracing::debug!(%source, key, error = %e, "record refused");
                return;
            }
        };
        let held = self
            .kad()
            .store_mut()
            .get(&record.key)
            .and_then(|r| record::verify(&key, &r.value, now).ok())
            .map(|p| p.seq);
        if let Some(held) = held
            && held >= payload.seq
        {
            if held > payload.seq {
                self.rejected += 1;
                tracing::debug!(%source, key, error = %RecordError::Replay { got: payload.seq, held }, "record refused");
            }
            return;
        }
        // Kept by this node's own clock: the record's time left as the signer's clock has it (with the slack for
        // clocks that disagree), and never past the store's TTL from now.
        let left = Duration::from_millis(
            payload
                .expires_at_ms
                .saturating_add(commons_shared::dht::MAX_CLOCK_SKEW_MS)
                .saturating_sub(now),
        );
        let until = Instant::now() + left;
        record.expires = Some(record.expires.map_or(until, |e| e.min(until)));
        if let Err(e) = self.kad().store_mut().put(record) {
            tracing::debug!(error = ?e, "record not stored");
        }
    }

    /// Checks a record a lookup found: valid, and not older than one read before.
    fn read_checked(&mut self, key: &str, record: &Record) -> Option<RecordPayload> {
        let now = now_ms();
        let payload = match record::verify(key, &record.value, now) {
            Ok(p) => p,
            Err(e) => {
                self.rejected += 1;
                tracing::debug!(key, error = %e, "record read refused");
                return None;
            }
        };
        if let Some(&(held, _)) = self.seen.get(key)
            && held > payload.seq
        {
            self.rejected += 1;
            tracing::debug!(key, error = %RecordError::Replay { got: payload.seq, held }, "record read refused");
            return None;
        }
        if self.seen.len() > 16_384 {
            self.seen.retain(|_, (_, exp)| *exp > now);
        }
        self.seen
            .insert(key.to_owned(), (payload.seq, payload.expires_at_ms));
        Some(payload)
    }

    fn on_progress(&mut self, id: kad::QueryId, result: kad::QueryResult, last: bool) {
        let Some(pending) = self.pending.remove(&id) else {
            return;
        };
        match (pending, result) {
            (Pending::Bootstrap { started, reply }, kad::QueryResult::Bootstrap(r)) => {
                let done = match &r {
                    Ok(ok) => ok.num_remaining == 0,
                    Err(kad::BootstrapError::Timeout { num_remaining, .. }) => {
                        num_remaining.unwrap_or(0) == 0
                    }
                };
                if !done && !last {
                    self.pending
                        .insert(id, Pending::Bootstrap { started, reply });
                    return;
                }
                let took = started.elapsed();
                let filled = self.swarm.behaviour_mut().kad.kbuckets().count() > 0;
                if filled {
                    self.bootstrap_ms = Some(took.as_millis() as u64);
                    let _ = reply.send(Ok(took));
                } else {
                    let _ = reply.send(Err(match r {
                        Err(e) => DhtError::Bootstrap(e),
                        Ok(_) => DhtError::EmptyRoutingTable,
                    }));
                }
            }
            (Pending::Get { key, reply }, kad::QueryResult::GetRecord(r)) => match r {
                Ok(kad::GetRecordOk::FoundRecord(found)) => {
                    if let Some(p) = self.read_checked(&key, &found.record) {
                        let _ = reply.send(Some(p));
                        if let Some(mut q) = self.kad().query_mut(&id) {
                            q.finish();
                        }
                    } else if last {
                        self.lookup_failures += 1;
                        let _ = reply.send(None);
                    } else {
                        self.pending.insert(id, Pending::Get { key, reply });
                    }
                }
                _ => {
                    self.lookup_failures += 1;
                    let _ = reply.send(None);
                }
            },
            (Pending::Providers { mut found, reply }, kad::QueryResult::GetProviders(r)) => {
                if let Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) = r {
                    found.extend(providers);
                } else if r.is_err() && found.is_empty() {
                    self.lookup_failures += 1;
                }
                if last {
                    let _ = reply.send(found);
                } else {
                    self.pending.insert(id, Pending::Providers { found, reply });
                }
            }
            (Pending::Put { reply }, kad::QueryResult::PutRecord(r)) => {
                let _ = reply.send(r.is_ok());
            }
            (p, _) => {
                self.pending.insert(id, p);
            }
        }
    }
}
