//! Native timing of the layout: `cargo run --release -p commons-portal --example ticks`.
fn main() {
    use commons_shared::dht::{DhtTopology, LinkKind, NodeRole, TopologyEdge, TopologyNode};
    let node = |id: String, role: NodeRole| TopologyNode {
        id,
        role,
        services: vec![],
        worker_id: None,
        tier: Some(2),
        status: None,
        location: None,
        capacity: None,
        requests: None,
        load: None,
    };
    let mut nodes = vec![node("c".into(), NodeRole::Coordinator)];
    let mut edges = vec![];
    for i in 0..1000 {
        nodes.push(node(format!("w{i}"), NodeRole::Worker));
        edges.push(TopologyEdge {
            from: format!("w{i}"),
            to: "c".into(),
            kind: LinkKind::Registered,
        });
    }
    let t = DhtTopology {
        node_count: nodes.len(),
        nodes,
        edges,
        dht_enabled: false,
    };
    let mut l = commons_portal::layout::Layout::new();
    let s = std::time::Instant::now();
    l.sync(&t);
    println!("sync {:?}", s.elapsed());
    let s = std::time::Instant::now();
    let mut n = 0;
    while l.tick() {
        n += 1;
    }
    println!(
        "{n} ticks in {:?} ({:?}/tick)",
        s.elapsed(),
        s.elapsed() / n.max(1)
    );
}
