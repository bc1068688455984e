//! A home router made of network namespaces, for the reverse-path tests: a LAN namespace behind a router
//! namespace that masquerades its traffic to this machine (the "internet") and lets nothing in that the LAN did
//! not start. No port is forwarded, and this machine has no route to the LAN: only connections the LAN opens
//! work, as behind a real home router.
//!
//! ```text
//! this machine 10.201.N.1 ── veth ── 10.201.N.2 router (masquerade, forward: established only) 10.202.N.1 ── veth ── 10.202.N.2 LAN
//! ```

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
    /// Builds one; `n` (1–250) keeps its names and subnets apart from other tests' routers.
    pub fn new(n: u8) -> Self {
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
        ip(&[
            "addr",
            "add",
            &format!("{}/24", r.internet_address()),
            "dev",
            &wan,
        ]);
        ip(&["link", "set", &wan, "up"]);
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

    /// This machine's address on the router's internet side: what a server for the LAN listens on.
    pub fn internet_address(&self) -> String {
        format!("10.201.{}.1", self.n)
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
