//! A home router made of network namespaces, for the reverse-path tests: a LAN namespace behind a router
//! namespace that masquerades its traffic to this machine (the "internet") and lets nothing in that the LAN did
//! not start. No port is forwarded, and this machine has no route to the LAN: only connections the LAN opens
//! work, as behind a real home router.
//!
//! ```text
//! this machine 10.201.N.1 ── veth ── 10.201.N.2 router (masquerade, forward: established only) 10.202.N.1 ── veth ── 10.202.N.2 LAN
//! ```
//!
//! For two routers that must reach each other (hole punching), the "internet" is a namespace of its own that
//! forwards between them ([`Internet`]), so that this machine's own forwarding is never turned on.

use std::process::Command;

/// The namespaces and links; dropped, they are deleted (and the veths with them).
#[derive(Debug)]
pub struct HomeRouter {
    /// The router's namespace.
    pub router: String,
    /// The LAN's namespace, where a volunteer's agent runs.
    pub lan: String,
    n: u8,
}

/// A namespace that stands for the internet: routers' WAN sides meet in it, and it forwards between them.
#[derive(Debug)]
pub struct Internet {
    /// Its name.
    pub ns: String,
}

impl Internet {
    /// Makes one; `n` keeps its name apart from other tests'.
    pub fn new(n: u8) -> Self {
        let ns = format!("commons-i{}-{n}", std::process::id());
        ip(&["netns", "add", &ns]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        in_ns(&ns, "sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
        Internet { ns }
    }

    /// `program`, run in it.
    pub fn command(&self, program: &std::path::Path) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("ip");
        c.args(["netns", "exec", &self.ns]).arg(program);
        c
    }
}

impl Drop for Internet {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// Runs `ip` with `args` (iproute2), failing the test with its error when it fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("the ip command (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `program` with `args` in the namespace `ns`.
fn in_ns(ns: &str, program: &str, args: &[&str]) {
    ip(&[&["netns", "exec", ns, program], args].concat());
}

impl HomeRouter {
    /// Builds one on this machine; `n` (1–250) keeps its names and subnets apart from other tests' routers.
    pub fn new(n: u8) -> Self {
        Self::build(n, None)
    }

    /// Builds one whose WAN side is in `internet`.
    pub fn on(internet: &Internet, n: u8) -> Self {
        Self::build(n, Some(&internet.ns))
    }

    fn build(n: u8, internet: Option<&str>) -> Self {
        let pid = std::process::id();
        let r = Self {
            router: format!("commons-r{pid}-{n}"),
            lan: format!("commons-l{pid}-{n}"),
            n,
        };
        let (wan, wan_r, lan_r, lan) = r.links();
        ip(&["netns", "add", &r.router]);
        ip(&["netns", "add", &r.lan]);
        ip(&["link", "add", &wan, "type", "veth", "peer", "name", &wan_r]);
        ip(&["link", "set", &wan_r, "netns", &r.router]);
        // Where the WAN's far end is: this machine, or the internet namespace.
        let inet: Vec<&str> = match internet {
            Some(ns) => {
                ip(&["link", "set", &wan, "netns", ns]);
                vec!["-n", ns]
            }
            None => Vec::new(),
        };
        let wan_address = format!("{}/24", r.internet_address());
        ip(&[&inet[..], &["addr", "add", &wan_address, "dev", &wan]].concat());
        ip(&[&inet[..], &["link", "set", &wan, "up"]].concat());
        let (router, lan_ns) = (r.router.as_str(), r.lan.as_str());
        ip(&[
            "-n",
            router,
            "addr",
            "add",
            &format!("10.201.{n}.2/24"),
            "dev",
            &wan_r,
        ]);
        ip(&["-n", router, "link", "set", &wan_r, "up"]);
        ip(&[
            "-n",
            router,
            "route",
            "add",
            "default",
            "via",
            &r.internet_address(),
        ]);
        ip(&[
            "-n", router, "link", "add", &lan_r, "type", "veth", "peer", "name", &lan,
        ]);
        ip(&["-n", router, "link", "set", &lan, "netns", lan_ns]);
        ip(&[
            "-n",
            router,
            "addr",
            "add",
            &format!("10.202.{n}.1/24"),
            "dev",
            &lan_r,
        ]);
        ip(&["-n", router, "link", "set", &lan_r, "up"]);
        ip(&[
            "-n",
            lan_ns,
            "addr",
            "add",
            &format!("10.202.{n}.2/24"),
            "dev",
            &lan,
        ]);
        ip(&["-n", lan_ns, "link", "set", &lan, "up"]);
        ip(&["-n", lan_ns, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            lan_ns,
            "route",
            "add",
            "default",
            "via",
            &format!("10.202.{n}.1"),
        ]);
        in_ns(router, "sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
        in_ns(
            router,
            "iptables",
            &[
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-o",
                &wan_r,
                "-j",
                "MASQUERADE",
            ],
        );
        in_ns(router, "iptables", &["-P", "FORWARD", "DROP"]);
        // Nothing new comes in to the router itself either: it drops, as home routers do, rather than answer
        // with a reset.
        in_ns(
            router,
            "iptables",
            &[
                "-A",
                "INPUT",
                "-i",
                &wan_r,
                "-m",
                "conntrack",
                "--ctstate",
                "NEW,INVALID",
                "-j",
                "DROP",
            ],
        );
        in_ns(
            router,
            "iptables",
            &[
                "-A",
                "FORWARD",
                "-m",
                "conntrack",
                "--ctstate",
                "ESTABLISHED,RELATED",
                "-j",
                "ACCEPT",
            ],
        );
        in_ns(
            router,
            "iptables",
            &["-A", "FORWARD", "-i", &lan_r, "-o", &wan_r, "-j", "ACCEPT"],
        );
        r
    }

    /// The veths: this machine's end, the router's two ends, the LAN's end (at most 15 characters each).
    fn links(&self) -> (String, String, String, String) {
        let tag = format!("{}{}", std::process::id() % 10_000, self.n);
        (
            format!("cw{tag}"),
            format!("cwr{tag}"),
            format!("clr{tag}"),
            format!("cl{tag}"),
        )
    }

    /// This machine's (or the internet namespace's) address on the router's internet side: what a server for
    /// the LAN listens on.
    pub fn internet_address(&self) -> String {
        format!("10.201.{}.1", self.n)
    }

    /// The router's public address: what the LAN's connections come from, seen from the internet.
    pub fn public_address(&self) -> String {
        format!("10.201.{}.2", self.n)
    }

    /// The LAN's namespace as a file, for `setns` (a thread that runs a node in the LAN).
    pub fn lan_netns_path(&self) -> std::path::PathBuf {
        std::path::Path::new("/var/run/netns").join(&self.lan)
    }

    /// `program`, run in the LAN.
    pub fn command_in_lan(&self, program: &std::path::Path) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("ip");
        c.args(["netns", "exec", &self.lan]).arg(program);
        c
    }
}

impl Drop for HomeRouter {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veths in it, and so their peers here.
        for ns in [&self.lan, &self.router] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// A DHT node on a thread of its own inside a network namespace (its sockets are the namespace's), with a
/// runtime of its own; dropped, it stops.
#[derive(Debug)]
pub struct NodeIn {
    /// The handle (usable from any runtime).
    pub dht: commons_dht::Dht,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NodeIn {
    /// Starts a node with `config` in the namespace at `netns` (a `/var/run/netns/<name>` file).
    pub fn start(netns: &std::path::Path, config: commons_dht::Config) -> Self {
        let netns = netns.to_owned();
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let f = std::fs::File::open(&netns).expect("the namespace's file");
            // Only this thread moves into the namespace.
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("setns {}: {e}", netns.display()));
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async move {
                let dht = commons_dht::Dht::start(config)
                    .await
                    .expect("the node starts");
                tx.send(dht.clone()).expect("the test waits for the node");
                let _ = stopped.await;
                dht.shutdown().await;
            });
        });
        let dht = rx.recv().expect("the node started");
        NodeIn {
            dht,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for NodeIn {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
