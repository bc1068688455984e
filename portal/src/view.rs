//! Pure data transforms behind the pages: routes, the graph's filter and styling, table sorting, chart paths,
//! number formatting, the JSON export. Tested natively.

use std::collections::HashSet;

use commons_shared::api::WorkerStatus;
use commons_shared::api::{HistoryPoint, WorkerSummary};
use commons_shared::dht::{DhtTopology, NodeRole, TopologyNode};

/// The pages, addressed by the URL's fragment (`#/workers/42`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Totals and charts.
    Overview,
    /// The graph.
    Topology,
    /// The table of workers.
    Workers,
    /// One worker.
    Worker(String),
    /// Coverage per service.
    Services,
    /// Coordinators (from the edge or the DHT).
    Coordinators,
    /// Installers.
    Downloads,
    /// API keys.
    Consumers,
    /// The volunteers' leaderboard.
    Volunteers,
}

impl Route {
    /// The route of a fragment; unknown ones are the overview.
    pub fn parse(hash: &str) -> Self {
        let path = hash.trim_start_matches('#').trim_start_matches('/');
        let mut parts = path.splitn(2, '/');
        match (parts.next().unwrap_or(""), parts.next()) {
            ("topology", _) => Self::Topology,
            ("workers", Some(id)) if !id.is_empty() => Self::Worker(id.to_owned()),
            ("workers", _) => Self::Workers,
            ("services", _) => Self::Services,
            ("coordinators", _) => Self::Coordinators,
            ("downloads", _) => Self::Downloads,
            ("consumers", _) => Self::Consumers,
            ("volunteers", _) => Self::Volunteers,
            _ => Self::Overview,
        }
    }

    /// The fragment that leads here.
    pub fn href(&self) -> String {
        match self {
            Self::Overview => "#/".into(),
            Self::Topology => "#/topology".into(),
            Self::Workers => "#/workers".into(),
            Self::Worker(id) => format!("#/workers/{id}"),
            Self::Services => "#/services".into(),
            Self::Coordinators => "#/coordinators".into(),
            Self::Downloads => "#/downloads".into(),
            Self::Consumers => "#/consumers".into(),
            Self::Volunteers => "#/volunteers".into(),
        }
    }
}

/// What the graph shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only workers of this tier.
    pub tier: Option<u8>,
    /// Only workers that run this service.
    pub service: Option<String>,
    /// Only workers in this status.
    pub status: Option<WorkerStatus>,
    /// Only nodes whose id or worker id contains this.
    pub search: String,
}

impl Filter {
    /// Whether a node passes. Edges and coordinators always do (the graph's skeleton), except for a search.
    pub fn admits(&self, n: &TopologyNode) -> bool {
        let search = self.search.trim();
        if !search.is_empty() {
            let hit =
                n.id.contains(search) || n.worker_id.as_deref().is_some_and(|w| w.contains(search));
            if !hit && n.role == NodeRole::Worker {
                return false;
            }
        }
        if n.role != NodeRole::Worker {
            return true;
        }
        self.tier.is_none_or(|t| n.tier == Some(t))
            && self
                .service
                .as_ref()
                .is_none_or(|s| n.services.iter().any(|x| x == s))
            && self.status.as_ref().is_none_or(|s| n.status == Some(*s))
    }

    /// The part of a topology that passes: its nodes, and the links whose both ends do.
    pub fn apply(&self, t: &DhtTopology) -> DhtTopology {
        let nodes: Vec<TopologyNode> = t.nodes.iter().filter(|n| self.admits(n)).cloned().collect();
        let ids: HashSet<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
        let edges = t
            .edges
            .iter()
            .filter(|e| ids.contains(e.from.as_str()) && ids.contains(e.to.as_str()))
            .cloned()
            .collect();
        DhtTopology {
            node_count: nodes.len(),
            nodes,
            edges,
            dht_enabled: t.dht_enabled,
        }
    }
}

/// Every service and status that appears in a topology's workers, sorted (the filter's choices).
pub fn choices(t: &DhtTopology) -> (Vec<String>, Vec<WorkerStatus>) {
    let mut services: Vec<String> = t
        .nodes
        .iter()
        .flat_map(|n| n.services.iter().cloned())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    services.sort();
    let mut statuses: Vec<WorkerStatus> = t
        .nodes
        .iter()
        .filter(|n| n.role == NodeRole::Worker)
        .filter_map(|n| n.status)
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    statuses.sort();
    (services, statuses)
}

/// A node's radius: hubs large, workers by the square root of their capacity.
pub fn radius(n: &TopologyNode) -> f32 {
    match n.role {
        NodeRole::Edge => 18.0,
        NodeRole::Coordinator => 12.0 + (n.capacity.unwrap_or(0.0) as f32).sqrt().min(12.0),
        NodeRole::Peer => 4.0,
        NodeRole::Worker => 3.0 + (n.capacity.unwrap_or(1.0).max(0.0) as f32).sqrt().min(7.0),
    }
}

/// A node's fill: by role, workers by tier; workers that are stale or offline are grey.
pub fn colour(n: &TopologyNode) -> &'static str {
    if n.role == NodeRole::Worker && n.status.is_some_and(|s| !s.is_live()) {
        return "#9aa0a6";
    }
    match (n.role, n.tier) {
        (NodeRole::Edge, _) => "#202124",
        (NodeRole::Coordinator, _) => "#7b1fa2",
        (NodeRole::Worker, Some(1)) => "#d93025",
        (NodeRole::Worker, Some(2)) => "#1a73e8",
        (NodeRole::Worker, Some(3)) => "#188038",
        _ => "#5f6368",
    }
}

/// A link's width by the requests of the node it carries traffic for: 1 to 6 px, logarithmic.
pub fn link_width(requests: u64) -> f32 {
    (1.0 + (requests as f32 + 1.0).log10()).min(6.0)
}

/// The graph as JSON (what "Export JSON" downloads): the filtered topology with each node's position.
pub fn export_json(t: &DhtTopology, position: impl Fn(&str) -> Option<(f32, f32)>) -> String {
    let nodes: Vec<serde_json::Value> = t
        .nodes
        .iter()
        .map(|n| {
            let mut v = serde_json::to_value(n).expect("nodes serialise");
            if let (Some((x, y)), Some(o)) = (position(&n.id), v.as_object_mut()) {
                o.insert("x".into(), x.round().into());
                o.insert("y".into(), y.round().into());
            }
            v
        })
        .collect();
    serde_json::to_string_pretty(&serde_json::json!({
        "nodes": nodes,
        "edges": t.edges,
        "node_count": t.nodes.len(),
        "dht_enabled": t.dht_enabled,
    }))
    .expect("a topology serialises")
}

/// Columns of the workers table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    /// Worker id.
    Id,
    /// Tier.
    Tier,
    /// Status.
    Status,
    /// Load.
    Load,
    /// GPUs.
    Gpus,
    /// Last heartbeat.
    Heartbeat,
    /// Requests.
    Requests,
    /// Errors.
    Errors,
}

/// Sorts workers by a column (ties by id), descending when asked.
pub fn sort_workers(list: &mut [WorkerSummary], by: Column, descending: bool) {
    list.sort_by(|a, b| {
        let o = match by {
            Column::Id => a.worker_id.to_string().cmp(&b.worker_id.to_string()),
            Column::Tier => a.tier.number().cmp(&b.tier.number()),
            Column::Status => a.status.as_str().cmp(b.status.as_str()),
            Column::Load => a.current_load.total_cmp(&b.current_load),
            Column::Gpus => a.capabilities.gpus.len().cmp(&b.capabilities.gpus.len()),
            Column::Heartbeat => a.last_heartbeat.cmp(&b.last_heartbeat),
            Column::Requests => a.requests.cmp(&b.requests),
            Column::Errors => a.errors.cmp(&b.errors),
        };
        let o = o.then_with(|| a.worker_id.to_string().cmp(&b.worker_id.to_string()));
        if descending { o.reverse() } else { o }
    });
}

/// Whether a worker matches the table's text filter (id, status, a service, a GPU's name).
pub fn worker_matches(w: &WorkerSummary, text: &str) -> bool {
    let t = text.trim().to_lowercase();
    t.is_empty()
        || w.worker_id.to_string().to_lowercase().contains(&t)
        || w.status.as_str() == t
        || w.services.iter().any(|s| s.to_lowercase().contains(&t))
        || w.capabilities
            .gpus
            .iter()
            .any(|g| g.name.to_lowercase().contains(&t))
}

/// One line of a chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend.
    pub label: String,
    /// Stroke colour.
    pub colour: &'static str,
    /// (x, y) points, x ascending.
    pub points: Vec<(f64, f64)>,
}

/// The SVG path of a series in a `width` × `height` box, x over `[x0, x1]` and y over `[0, y_max]` (y grows
/// upwards).
pub fn chart_path(
    points: &[(f64, f64)],
    x0: f64,
    x1: f64,
    y_max: f64,
    width: f64,
    height: f64,
) -> String {
    let sx = width / (x1 - x0).max(1e-9);
    let sy = height / y_max.max(1e-9);
    let mut d = String::with_capacity(points.len() * 16);
    for (i, (x, y)) in points.iter().enumerate() {
        let px = (x - x0) * sx;
        let py = height - y.clamp(0.0, y_max) * sy;
        d.push_str(if i == 0 { "M" } else { " L" });
        d.push_str(&format!("{px:.1},{py:.1}"));
    }
    d
}

/// Colours of the lines of a chart with one line per key.
const KEY_COLOURS: [&str; 5] = ["#1a73e8", "#d93025", "#188038", "#f9ab00", "#9334e6"];

/// The Consumers page's chart: requests per bucket for the (at most five) keys with the most requests, labelled
/// with the key's name where `name` knows it (anonymous clients as "anonymous").
pub fn usage_series(
    report: &commons_shared::usage::UsageReport,
    name: impl Fn(&str) -> Option<String>,
) -> Vec<Series> {
    report
        .keys
        .iter()
        .zip(KEY_COLOURS)
        .map(|(k, colour)| Series {
            label: match k.key_id.as_str() {
                "" => "anonymous".into(),
                id => name(id).unwrap_or_else(|| id.to_owned()),
            },
            colour,
            points: k
                .series
                .iter()
                .map(|p| (p.at_ms as f64, p.totals.requests as f64))
                .collect(),
        })
        .collect()
}

/// A volunteer as the leaderboard names them: their chosen name, or "Anonymous volunteer" and the start of the
/// worker's id.
pub fn volunteer_name(v: &commons_shared::usage::Volunteer) -> String {
    match &v.display_name {
        Some(n) => n.clone(),
        None => format!(
            "Anonymous volunteer {}",
            v.worker_id.get(..6).unwrap_or(&v.worker_id)
        ),
    }
}

/// The overview's charts from the history: workers online by tier, average load by tier, requests per minute.
pub fn history_series(points: &[HistoryPoint]) -> [Vec<Series>; 3] {
    let x = |p: &HistoryPoint| p.ts_ms as f64;
    let tiers = |f: &dyn Fn(&HistoryPoint) -> [f64; 3]| -> Vec<Series> {
        ["Tier 1 (GPU)", "Tier 2 (service)", "Tier 3 (data)"]
            .iter()
            .zip(["#d93025", "#1a73e8", "#188038"])
            .enumerate()
            .map(|(i, (label, colour))| Series {
                label: (*label).into(),
                colour,
                points: points.iter().map(|p| (x(p), f(p)[i])).collect(),
            })
            .collect()
    };
    let online = tiers(&|p| {
        [
            p.workers_by_tier.gpu_workers as f64,
            p.workers_by_tier.service_workers as f64,
            p.workers_by_tier.data_workers as f64,
        ]
    });
    let load = tiers(&|p| {
        [
            p.average_load_by_tier.gpu_workers,
            p.average_load_by_tier.service_workers,
            p.average_load_by_tier.data_workers,
        ]
    });
    let requests = vec![
        Series {
            label: "Requests/min".into(),
            colour: "#1a73e8",
            points: points.iter().map(|p| (x(p), p.requests as f64)).collect(),
        },
        Series {
            label: "Errors/min".into(),
            colour: "#d93025",
            points: points.iter().map(|p| (x(p), p.errors as f64)).collect(),
        },
    ];
    [online, load, requests]
}

/// Requests per minute and error rate (%) over the history's last point, or none yet.
pub fn rates(points: &[HistoryPoint]) -> Option<(u64, f64)> {
    let p = points.last()?;
    let rate = if p.requests == 0 {
        0.0
    } else {
        100.0 * p.errors as f64 / p.requests as f64
    };
    Some((p.requests, rate))
}

/// Bytes in binary units: "1.5 GiB".
pub use commons_shared::units::binary as bytes;

/// The services a key form names: comma- or space-separated, lowercased; empty (or "all"): every service.
pub fn key_services(text: &str) -> Vec<String> {
    let names: Vec<String> = text
        .split([',', ' '])
        .map(|s| s.trim().to_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    if names.iter().any(|s| s == "all") {
        Vec::new()
    } else {
        names
    }
}

/// Today's use of a key against its daily quota, in words.
pub fn quota_use(used: u64, quota: Option<u64>) -> String {
    match quota {
        Some(q) => format!(
            "{used} of {q} ({:.0} %)",
            100.0 * used as f64 / q.max(1) as f64
        ),
        None => format!("{used} (no quota)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use commons_shared::dht::{LinkKind, TopologyEdge};

    fn node(
        id: &str,
        role: NodeRole,
        tier: Option<u8>,
        status: WorkerStatus,
        services: &[&str],
    ) -> TopologyNode {
        TopologyNode {
            id: id.into(),
            role,
            services: services.iter().map(|s| (*s).into()).collect(),
            worker_id: (role == NodeRole::Worker).then(|| format!("w-{id}")),
            tier,
            status: Some(status),
            location: None,
            capacity: Some(4.0),
            requests: Some(10),
            load: Some(0.2),
        }
    }

    fn topo() -> DhtTopology {
        let nodes = vec![
            node("c", NodeRole::Coordinator, None, WorkerStatus::Healthy, &[]),
            node(
                "a",
                NodeRole::Worker,
                Some(1),
                WorkerStatus::Healthy,
                &["llm"],
            ),
            node(
                "b",
                NodeRole::Worker,
                Some(2),
                WorkerStatus::Stale,
                &["ocr"],
            ),
        ];
        let edges = ["a", "b"]
            .iter()
            .map(|w| TopologyEdge {
                from: (*w).into(),
                to: "c".into(),
                kind: LinkKind::Registered,
            })
            .collect();
        DhtTopology {
            node_count: 3,
            nodes,
            edges,
            dht_enabled: true,
        }
    }

    #[test]
    fn routes_round_trip() {
        for r in [
            Route::Overview,
            Route::Topology,
            Route::Workers,
            Route::Worker("42".into()),
            Route::Services,
            Route::Coordinators,
            Route::Downloads,
            Route::Consumers,
            Route::Volunteers,
        ] {
            assert_eq!(Route::parse(&r.href()), r);
        }
        assert_eq!(Route::parse(""), Route::Overview);
        assert_eq!(Route::parse("#/nonsense"), Route::Overview);
        assert_eq!(Route::parse("#/workers/"), Route::Workers);
    }

    #[test]
    fn usage_lines_and_volunteer_names() {
        use commons_shared::usage::{Credit, KeyUsage, Totals, UsagePoint, UsageReport, Volunteer};
        let key = |id: &str, n: u64| KeyUsage {
            key_id: id.into(),
            totals: Totals::default(),
            series: vec![UsagePoint {
                at_ms: 3_600_000,
                totals: Totals {
                    requests: n,
                    ..Totals::default()
                },
            }],
            services: vec![],
        };
        let report = UsageReport {
            keys: (0..7)
                .map(|i| key(&format!("key_{i}"), i))
                .chain([key("", 9)])
                .collect(),
            ..UsageReport::default()
        };
        let lines = usage_series(&report, |id| (id == "key_1").then(|| "lab".to_owned()));
        assert_eq!(lines.len(), 5, "five lines at most");
        assert_eq!(lines[1].label, "lab");
        assert_eq!(lines[2].label, "key_2");
        assert_eq!(lines[1].points, vec![(3_600_000.0, 1.0)]);
        let only_anonymous = UsageReport {
            keys: vec![key("", 9)],
            ..UsageReport::default()
        };
        assert_eq!(
            usage_series(&only_anonymous, |_| None)[0].label,
            "anonymous"
        );
        let mut v = Volunteer {
            rank: 1,
            worker_id: "0123456789abcdef".into(),
            display_name: None,
            credit: Credit::default(),
            points: 0.0,
        };
        assert_eq!(volunteer_name(&v), "Anonymous volunteer 012345");
        v.display_name = Some("Ada".into());
        assert_eq!(volunteer_name(&v), "Ada");
    }

    #[test]
    fn key_forms() {
        assert_eq!(key_services(" LLM, ocr  rag,"), ["llm", "ocr", "rag"]);
        assert!(key_services("").is_empty());
        assert!(key_services("all").is_empty());
        assert_eq!(quota_use(3, Some(4)), "3 of 4 (75 %)");
        assert_eq!(quota_use(3, None), "3 (no quota)");
    }

    #[test]
    fn filters_hide_workers_and_their_links_but_keep_the_skeleton() {
        let t = topo();
        let by_tier = Filter {
            tier: Some(1),
            ..Default::default()
        }
        .apply(&t);
        assert_eq!(
            by_tier
                .nodes
                .iter()
                .map(|n| n.id.as_str())
                .collect::<Vec<_>>(),
            ["c", "a"]
        );
        assert_eq!(by_tier.edges.len(), 1);
        let by_service = Filter {
            service: Some("ocr".into()),
            ..Default::default()
        }
        .apply(&t);
        assert_eq!(by_service.node_count, 2);
        let by_status = Filter {
            status: Some(WorkerStatus::Stale),
            ..Default::default()
        }
        .apply(&t);
        assert_eq!(by_status.nodes[1].id, "b");
        let search = Filter {
            search: "w-a".into(),
            ..Default::default()
        }
        .apply(&t);
        assert_eq!(search.node_count, 2);
        assert_eq!(Filter::default().apply(&t), t);
        assert_eq!(
            choices(&t),
            (
                vec!["llm".into(), "ocr".into()],
                vec![WorkerStatus::Healthy, WorkerStatus::Stale]
            )
        );
    }

    #[test]
    fn styling_reflects_role_tier_status_and_traffic() {
        let t = topo();
        assert_eq!(colour(&t.nodes[1]), "#d93025");
        assert_eq!(colour(&t.nodes[2]), "#9aa0a6", "stale greys out");
        assert!(radius(&t.nodes[0]) > radius(&t.nodes[1]));
        assert!(link_width(1000) > link_width(0));
        assert!(link_width(u64::MAX) <= 6.0);
    }

    #[test]
    fn the_export_is_json_with_positions() {
        let t = topo();
        let json = export_json(&t, |id| (id == "a").then_some((1.4, 2.6)));
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["node_count"], 3);
        assert_eq!(v["nodes"][1]["x"], 1.0);
        assert_eq!(v["nodes"][1]["y"], 3.0);
        assert!(v["nodes"][0].get("x").is_none());
        assert_eq!(v["edges"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn chart_paths_fit_the_box() {
        let d = chart_path(
            &[(0.0, 0.0), (5.0, 10.0), (10.0, 20.0)],
            0.0,
            10.0,
            10.0,
            100.0,
            50.0,
        );
        assert_eq!(d, "M0.0,50.0 L50.0,0.0 L100.0,0.0");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 * 1024 * 1024 * 1024 / 2), "1.5 GiB");
    }
}
