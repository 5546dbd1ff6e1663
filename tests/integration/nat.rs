//! Acceptance: two branches behind NAT routers (MASQUERADE, inbound
//! dropped) cannot reach each other directly, but exchange data through
//! a relay on a public address. Real namespaces, veths and iptables; the
//! test removes everything it creates.
//!
//! ```text
//!  ns a (10.1.0.2) -- ra [MASQUERADE, FORWARD/INPUT drop new inbound] --+
//!                                                          192.0.2.2   |  192.0.2.1
//!                                                                      pub (relay, "Internet")
//!  ns b (10.2.0.2) -- rb [MASQUERADE, FORWARD/INPUT drop new inbound] --+  192.0.2.5
//!                                                          192.0.2.6
//! ```

use crate::common::{Proc, faxgate, require_root_and, run, wait_for};
use crate::netns::{Topology, can_connect, start_relay};
use std::process::Command;
use std::time::Duration;

#[test]
fn branches_behind_nat_talk_only_through_the_relay() {
    require_root_and(&[
        ("ip", "iproute2"),
        ("iptables", "iptables"),
        ("python3", "python3"),
    ]);
    let t = Topology::build();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // A TCP service on branch B, to prove that direct access fails for
    // the NAT's sake and not for want of a listener.
    let _b_service = Proc(
        t.exec("b")
            .args([
                "python3",
                "-c",
                "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
                 s.bind(('0.0.0.0',9000))\ns.listen()\nwhile True:\n  c,_=s.accept(); c.close()\n",
            ])
            .spawn()
            .unwrap(),
    );
    wait_for("B's own service", Duration::from_secs(5), || {
        can_connect(&t, "b", "10.2.0.2", 9000)
    });
    assert!(
        !can_connect(&t, "a", "10.2.0.2", 9000),
        "A reached B's private address"
    );
    assert!(
        !can_connect(&t, "a", "192.0.2.6", 9000),
        "A got through B's NAT router"
    );

    // The relay on the public address.
    let cfg = d.join("relay.toml");
    std::fs::write(
        &cfg,
        format!(
            "[relay]\nlisten_tls = \"0.0.0.0:4651\"\nstate_dir = {:?}\nhold_interval = \"5s\"\n\
             [status]\nlisten = \"127.0.0.1:4652\"\n",
            d.join("state").display().to_string()
        ),
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap().to_owned();
    for user in ["tokyo", "osaka"] {
        run(Command::new(faxgate())
            .args([
                "relay", "--config", &cfg, "user", "add", user, "--group", "branches",
            ])
            .args(["--password-env", "FG_PW"])
            .env("FG_PW", format!("pw-{user}-123")));
    }
    let (relay, pin) = start_relay(&t, d, std::path::Path::new(&cfg));

    // B listens through the relay; A connects and sends 1 MB, B answers.
    let to_b: Vec<u8> = (0..1_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let to_a: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(40_503) >> 7) as u8)
        .collect();
    std::fs::write(d.join("to_b"), &to_b).unwrap();
    std::fs::write(d.join("to_a"), &to_a).unwrap();
    let client = |short: &str, user: &str, server: &str| {
        let mut c = t.exec(short);
        c.args([
            faxgate(),
            "relay-client",
            "--server",
            server,
            "--pin",
            &pin,
            "--user",
            user,
        ])
        .env("FAXGATE_PASSWORD", format!("pw-{user}-123"))
        .env("RUST_LOG", "warn");
        c
    };
    let mut b = client("b", "osaka", "192.0.2.5:4651");
    b.args(["listen", "--once"])
        .stdin(std::fs::File::open(d.join("to_a")).unwrap())
        .stdout(std::fs::File::create(d.join("got_b")).unwrap());
    let mut b = Proc(b.spawn().unwrap());
    let status = || {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &t.name("pub"),
                faxgate(),
                "relay",
                "--config",
                &cfg,
                "status",
                "--json",
            ])
            .output()
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()
    };
    wait_for("osaka logged in", Duration::from_secs(20), || {
        status()["users"]
            .as_array()
            .is_some_and(|u| u.iter().any(|u| u["user"] == "osaka"))
    });
    let mut a = client("a", "tokyo", "192.0.2.1:4651");
    a.args(["connect", "osaka"])
        .stdin(std::fs::File::open(d.join("to_b")).unwrap())
        .stdout(std::fs::File::create(d.join("got_a")).unwrap());
    let a_out = a.output().unwrap();
    assert!(
        a_out.status.success(),
        "tokyo's connect failed: {}",
        String::from_utf8_lossy(&a_out.stderr)
    );
    let b_status = b.0.wait().unwrap();
    assert!(b_status.success(), "osaka's listen failed");
    assert!(
        std::fs::read(d.join("got_b")).unwrap() == to_b,
        "osaka received different bytes"
    );
    assert!(
        std::fs::read(d.join("got_a")).unwrap() == to_a,
        "tokyo received different bytes"
    );

    // The relay saw only the routers' public addresses: both branches
    // were behind NAT, and neither private address reached the Internet.
    let log = std::fs::read_to_string(d.join("relay.log")).unwrap();
    let logins: Vec<&str> = log.lines().filter(|l| l.contains("Logged in.")).collect();
    assert!(
        logins
            .iter()
            .any(|l| l.contains("peer=192.0.2.2:") && l.contains("user=tokyo")),
        "tokyo not seen from A's router: {logins:?}"
    );
    assert!(
        logins
            .iter()
            .any(|l| l.contains("peer=192.0.2.6:") && l.contains("user=osaka")),
        "osaka not seen from B's router: {logins:?}"
    );
    assert!(
        !log.contains("10.1.0.2") && !log.contains("10.2.0.2"),
        "a private address reached the relay"
    );
    // Both clients have exited; the relay ends the session a moment
    // after the last bytes, so give it a few seconds.
    wait_for("the session released", Duration::from_secs(10), || {
        status()["sessions_active"] == 0
    });
    drop(relay);
    drop(_b_service);
    let tag = format!("fg{}", t.tag);
    drop(t);
    let left = String::from_utf8(run(Command::new("ip").args(["netns", "list"])).stdout).unwrap();
    assert!(!left.contains(&tag), "namespaces left behind: {left}");
}
