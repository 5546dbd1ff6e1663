//! Network namespaces for tests that cross a network: two branches, each
//! behind its own NAT router, and a public "Internet" namespace for the
//! relay. Deleting a namespace removes its veths, routes and iptables
//! rules with it; [`Topology`] deletes what it built when dropped.
//!
//! ```text
//!  ns a (10.1.0.2) -- ra [MASQUERADE, FORWARD/INPUT drop new inbound] --+
//!                                                          192.0.2.2   |  192.0.2.1
//!                                                                      pub (relay, "Internet")
//!  ns b (10.2.0.2) -- rb [MASQUERADE, FORWARD/INPUT drop new inbound] --+  192.0.2.5
//!                                                          192.0.2.6
//! ```

use crate::common::{Proc, faxgate, run, sh, wait_for};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Starts `faxgate relay --config cfg` in the `pub` namespace, logging to
/// `dir/relay.out` and `dir/relay.log` (appended, so a restarted relay
/// keeps the earlier run's lines), and waits for its certificate
/// fingerprint and its TLS port 4651 on 192.0.2.1. Returns the process
/// and the fingerprint.
pub fn start_relay(t: &Topology, dir: &Path, cfg: &Path) -> (Proc, String) {
    let append = |name: &str| {
        std::fs::File::options()
            .create(true)
            .append(true)
            .open(dir.join(name))
            .unwrap()
    };
    let relay = Proc(
        t.exec("pub")
            .arg(faxgate())
            .args(["relay", "--config"])
            .arg(cfg)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(append("relay.out"))
            .stderr(append("relay.log"))
            .spawn()
            .unwrap(),
    );
    let mut pin = String::new();
    wait_for("the relay's fingerprint", Duration::from_secs(20), || {
        let out = std::fs::read_to_string(dir.join("relay.out")).unwrap_or_default();
        match out
            .lines()
            .find_map(|l| l.strip_prefix("relay TLS certificate fingerprint (SHA-256): "))
        {
            Some(p) => {
                pin = p.trim().to_owned();
                true
            }
            None => false,
        }
    });
    wait_for("the relay port", Duration::from_secs(10), || {
        can_connect(t, "pub", "192.0.2.1", 4651)
    });
    (relay, pin)
}

/// The namespaces of one test run; deleting a namespace removes its
/// veths, routes and iptables rules with it.
pub struct Topology {
    ns: Vec<String>,
    pub tag: String,
}

impl Topology {
    pub fn name(&self, short: &str) -> String {
        format!("fg{}{short}", self.tag)
    }

    pub fn exec(&self, short: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name(short)]);
        c
    }

    pub fn sh(&self, short: &str, line: &str) -> std::process::Output {
        run(self.exec(short).args(["sh", "-c", line]))
    }

    pub fn build() -> Topology {
        // Unique per process and per test: tests run in parallel threads.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag = format!("{}{n}", std::process::id() % 10_000);
        let mut t = Topology {
            ns: Vec::new(),
            tag,
        };
        for short in ["a", "ra", "b", "rb", "pub"] {
            let n = t.name(short);
            let _ = Command::new("ip").args(["netns", "del", &n]).output();
            sh(&format!("ip netns add {n}"));
            t.ns.push(n.clone());
            t.sh(short, "ip link set lo up");
        }
        let n = |s: &str| t.name(s);
        // veth pairs, named inside their namespaces.
        let link = |x: &str, xi: &str, y: &str, yi: &str| {
            let (a, b) = (format!("v{}{xi}", t.tag), format!("v{}{yi}", t.tag));
            sh(&format!(
                "ip link add {a} netns {} type veth peer name {b} netns {}",
                n(x),
                n(y)
            ));
            t.sh(
                x,
                &format!("ip link set {a} name {xi} && ip link set {xi} up"),
            );
            t.sh(
                y,
                &format!("ip link set {b} name {yi} && ip link set {yi} up"),
            );
        };
        link("a", "lan0", "ra", "lan");
        link("b", "lan0", "rb", "lan");
        link("ra", "wan", "pub", "toa");
        link("rb", "wan", "pub", "tob");
        t.sh(
            "a",
            "ip addr add 10.1.0.2/24 dev lan0 && ip route add default via 10.1.0.1",
        );
        t.sh(
            "b",
            "ip addr add 10.2.0.2/24 dev lan0 && ip route add default via 10.2.0.1",
        );
        t.sh(
            "pub",
            "ip addr add 192.0.2.1/30 dev toa && ip addr add 192.0.2.5/30 dev tob",
        );
        for (r, lan, wan, gw) in [
            ("ra", "10.1.0.1/24", "192.0.2.2/30", "192.0.2.1"),
            ("rb", "10.2.0.1/24", "192.0.2.6/30", "192.0.2.5"),
        ] {
            t.sh(
                r,
                &format!(
                    "ip addr add {lan} dev lan && ip addr add {wan} dev wan && \
                     ip route add default via {gw} && sysctl -qw net.ipv4.ip_forward=1 && \
                     iptables -t nat -A POSTROUTING -o wan -j MASQUERADE && \
                     iptables -P FORWARD DROP && \
                     iptables -A FORWARD -i lan -o wan -j ACCEPT && \
                     iptables -A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT && \
                     iptables -P INPUT DROP && \
                     iptables -A INPUT -i lo -j ACCEPT && \
                     iptables -A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"
                ),
            );
        }
        // The "Internet" forwards between the two routers' public sides
        // but knows nothing of the private 10.x networks.
        t.sh("pub", "sysctl -qw net.ipv4.ip_forward=1");
        t
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for n in &self.ns {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

/// Whether a TCP connect from namespace `short` to `addr:port` succeeds
/// within 2 s.
pub fn can_connect(t: &Topology, short: &str, addr: &str, port: u16) -> bool {
    let script = format!(
        "import socket,sys\ns=socket.socket()\ns.settimeout(2)\n\
         try:\n  s.connect(('{addr}',{port}))\nexcept Exception as e:\n  print(e); sys.exit(1)\n"
    );
    t.exec(short)
        .args(["python3", "-c", &script])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}
