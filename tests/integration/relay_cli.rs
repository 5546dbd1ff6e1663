//! `faxgate relay` (users, status, kick, SIGTERM) and `faxgate
//! relay-client` (login, list) as an operator runs them: the real binary
//! against a real relay process on 127.0.0.1, on ports the kernel picks,
//! with a temporary state directory.

use crate::common::{Proc, faxgate, run, wait_for};
use faxgate_config::Secret;
use faxgate_relay::connection::Connection;
use faxgate_relay::protocol::{self, Code, Frame, PREAMBLE};
use faxgate_relay::transport::Stream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";

/// A `faxgate relay` process and the config the admin commands use.
struct RelayProc {
    proc: Proc,
    dir: tempfile::TempDir,
    /// The config with the ports the relay really bound, so that `relay
    /// status` and `relay kick` find the status endpoint.
    cfg: PathBuf,
    /// The plain-TCP relay listener.
    addr: String,
}

fn relay_toml(state: &Path, listen: &str, status: &str) -> String {
    format!(
        "[relay]\nlisten = \"{listen}\"\nstate_dir = {:?}\n\
         argon2_memory_kib = 1024\nargon2_iterations = 1\n\
         [status]\nlisten = \"{status}\"\nadmin_token = \"{ADMIN_TOKEN}\"\n",
        state.display().to_string()
    )
}

impl RelayProc {
    /// Starts the relay with both listeners on port 0 and reads the bound
    /// addresses from what it prints.
    fn start() -> RelayProc {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let boot = d.join("relay.toml");
        let state = d.join("state");
        std::fs::write(&boot, relay_toml(&state, "127.0.0.1:0", "127.0.0.1:0")).unwrap();
        let proc = crate::common::spawn_relay(&boot, d);
        let (mut addr, mut status) = (String::new(), String::new());
        wait_for("the relay's listen lines", Duration::from_secs(20), || {
            let out = std::fs::read_to_string(d.join("relay.out")).unwrap_or_default();
            let find = |prefix: &str| {
                out.lines()
                    .find_map(|l| l.strip_prefix(prefix))
                    .map(|s| s.trim().to_owned())
            };
            match (
                find("relay (tcp) listening on "),
                find("status listening on "),
            ) {
                (Some(a), Some(s)) => {
                    (addr, status) = (a, s);
                    true
                }
                _ => false,
            }
        });
        let cfg = d.join("admin.toml");
        std::fs::write(&cfg, relay_toml(&state, &addr, &status)).unwrap();
        RelayProc {
            proc,
            dir,
            cfg,
            addr,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("relay.log")).unwrap_or_default()
    }

    /// `faxgate relay --config admin.toml ARGS`, which must succeed;
    /// returns its standard output.
    fn admin(&self, args: &[&str]) -> String {
        let out = run(Command::new(faxgate())
            .args(["relay", "--config"])
            .arg(&self.cfg)
            .args(args)
            .env("RUST_LOG", "error"));
        String::from_utf8(out.stdout).unwrap()
    }

    /// `relay user add|passwd NAME ... --password-env FG_PW`.
    fn admin_pw(&self, args: &[&str], password: &str) -> String {
        let out = run(Command::new(faxgate())
            .args(["relay", "--config"])
            .arg(&self.cfg)
            .args(args)
            .args(["--password-env", "FG_PW"])
            .env("FG_PW", password)
            .env("RUST_LOG", "error"));
        String::from_utf8(out.stdout).unwrap()
    }

    /// `faxgate relay-client --server ADDR --user USER ARGS`, not checked.
    fn client(&self, user: &str, password: &str, args: &[&str]) -> Output {
        Command::new(faxgate())
            .args(["relay-client", "--server", &self.addr, "--user", user])
            .args(["--password-env", "FG_PW"])
            .args(args)
            .env("FG_PW", password)
            .env("RUST_LOG", "error")
            .output()
            .unwrap()
    }

    /// The users `user` sees with `relay-client list`; panics if the
    /// login fails.
    fn list_as(&self, user: &str, password: &str) -> Vec<String> {
        let out = self.client(user, password, &["list"]);
        assert!(
            out.status.success(),
            "relay-client list as {user} failed: {}\n--- relay log ---\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        let mut lines = stdout.lines();
        let header: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
        assert_eq!(header, ["user", "vacant", "connections"], "{stdout}");
        lines
            .map(|l| l.split_whitespace().next().unwrap().to_owned())
            .collect()
    }

    /// The `faxgate: ...` error line of a `relay-client list` that must
    /// fail to log in.
    fn login_error(&self, user: &str, password: &str) -> String {
        let out = self.client(user, password, &["list"]);
        assert!(
            !out.status.success(),
            "{user} logged in: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let stderr = String::from_utf8(out.stderr).unwrap();
        stderr
            .lines()
            .find(|l| l.starts_with("faxgate: "))
            .unwrap_or_else(|| panic!("no error line in: {stderr}"))
            .to_owned()
    }

    /// `relay status --json`, parsed.
    fn status_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.admin(&["status", "--json"])).unwrap()
    }

    /// The users `relay status --json` shows, with their connection IDs.
    fn logged_in(&self) -> Vec<(String, Vec<u64>)> {
        let v = self.status_json();
        v["users"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| {
                let ids = u["connections"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c["id"].as_u64().unwrap())
                    .collect();
                (u["user"].as_str().unwrap().to_owned(), ids)
            })
            .collect()
    }
}

/// `relay user list` rows: (name, state, groups).
fn user_rows(list: &str) -> Vec<(String, String, String)> {
    let mut lines = list.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    assert_eq!(header, ["user", "state", "groups"], "{list}");
    lines
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[0].to_owned(),
                f[1].to_owned(),
                f.get(2).copied().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

/// Starts `relay-client login` for `user` from a config file whose
/// reconnect delays are long, and waits until it says it is logged in.
fn start_login(relay: &RelayProc, user: &str, password: &str) -> (Proc, PathBuf) {
    let d = relay.dir.path();
    let cfg = d.join(format!("client-{user}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "server = \"{}\"\nuser = \"{user}\"\npassword = \"{password}\"\nspares = 0\n\
             max_connections = 1\nreconnect_initial = \"30s\"\nreconnect_max = \"60s\"\n",
            relay.addr
        ),
    )
    .unwrap();
    let err = d.join(format!("client-{user}.log"));
    let proc = Proc(
        Command::new(faxgate())
            .args(["relay-client", "--config"])
            .arg(&cfg)
            .arg("login")
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_for(
        &format!("relay-client login as {user}"),
        Duration::from_secs(20),
        || {
            std::fs::read_to_string(&err)
                .unwrap_or_default()
                .contains(&format!("logged in as {user}"))
        },
    );
    (proc, err)
}

#[test]
fn relay_user_admin_status_kick_and_relay_client_work_end_to_end() {
    let relay = RelayProc::start();

    // user add, list.
    let out = relay.admin_pw(&["user", "add", "tokyo", "-g", "branches"], "tokyo-pw-1");
    assert!(out.contains("added user tokyo"), "{out}");
    relay.admin_pw(&["user", "add", "osaka", "-g", "branches"], "osaka-pw-1");
    relay.admin_pw(&["user", "add", "paris", "-g", "europe"], "paris-pw-1");
    let rows = user_rows(&relay.admin(&["user", "list"]));
    assert_eq!(
        rows,
        [
            ("osaka".into(), "enabled".into(), "branches".into()),
            ("paris".into(), "enabled".into(), "europe".into()),
            ("tokyo".into(), "enabled".into(), "branches".into()),
        ],
        "user list"
    );

    // relay-client login stays logged in; list shows it to its group.
    let (mut osaka, osaka_log) = start_login(&relay, "osaka", "osaka-pw-1");
    assert_eq!(relay.list_as("tokyo", "tokyo-pw-1"), ["osaka", "tokyo"]);
    assert_eq!(
        relay.list_as("paris", "paris-pw-1"),
        ["paris"],
        "paris is in another group"
    );

    // passwd: the old password fails, the new one works.
    let out = relay.admin_pw(&["user", "passwd", "tokyo"], "tokyo-pw-2");
    assert!(out.contains("password changed for tokyo"), "{out}");
    let wrong_password = relay.login_error("tokyo", "tokyo-pw-1");
    assert!(wrong_password.contains("AUTH_FAILED"), "{wrong_password}");
    assert_eq!(relay.list_as("tokyo", "tokyo-pw-2"), ["osaka", "tokyo"]);

    // disable: the right password fails exactly like a wrong one; enable
    // restores the login.
    let out = relay.admin(&["user", "disable", "tokyo"]);
    assert!(out.contains("disabled tokyo"), "{out}");
    assert_eq!(
        relay.login_error("tokyo", "tokyo-pw-2"),
        wrong_password,
        "a disabled user must look like a wrong password"
    );
    assert!(
        user_rows(&relay.admin(&["user", "list"]))
            .iter()
            .any(|(n, s, _)| n == "tokyo" && s == "disabled")
    );
    relay.admin(&["user", "enable", "tokyo"]);
    assert_eq!(relay.list_as("tokyo", "tokyo-pw-2"), ["osaka", "tokyo"]);

    // groups: paris joins branches and sees osaka. (The ACL takes the
    // groups at login; each `relay-client list` logs in afresh.)
    let out = relay.admin(&["user", "groups", "paris", "-g", "europe", "-g", "branches"]);
    assert!(out.contains("paris is now in"), "{out}");
    // tokyo's `list` above has exited, but the relay may not have
    // dropped its connection yet.
    wait_for("tokyo's list logged out", Duration::from_secs(10), || {
        !relay.logged_in().iter().any(|(u, _)| u == "tokyo")
    });
    assert_eq!(relay.list_as("paris", "paris-pw-1"), ["osaka", "paris"]);
    assert!(user_rows(&relay.admin(&["user", "list"])).contains(&(
        "paris".into(),
        "enabled".into(),
        "branches,europe".into()
    )));

    // del: gone from the list, and its login fails the same way.
    let out = relay.admin(&["user", "del", "paris"]);
    assert!(out.contains("deleted paris"), "{out}");
    assert!(
        user_rows(&relay.admin(&["user", "list"]))
            .iter()
            .all(|(n, _, _)| n != "paris")
    );
    assert_eq!(relay.login_error("paris", "paris-pw-1"), wrong_password);

    // status: only osaka's `login` is left once the `list` runs logged out.
    wait_for("only osaka logged in", Duration::from_secs(10), || {
        relay
            .logged_in()
            .iter()
            .map(|(u, _)| u.as_str())
            .eq(["osaka"])
    });
    let v = relay.status_json();
    assert_eq!(v["users_logged_in"], 1, "{v}");
    assert_eq!(v["users"][0]["user"], "osaka", "{v}");
    assert_eq!(v["users"][0]["connections"][0]["state"], "vacant", "{v}");
    let first_conn = relay.logged_in()[0].1.clone();
    let human = relay.admin(&["status"]);
    assert!(
        human.starts_with("users logged in: 1   connections: 1 (1 vacant)   sessions: 0"),
        "{human}"
    );
    assert!(human.lines().any(|l| l == "user osaka"), "{human}");
    assert!(
        human.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.first() == Some(&"conn")
                && f.get(1) == Some(&first_conn[0].to_string().as_str())
                && f.get(3) == Some(&"vacant")
        }),
        "{human}"
    );

    // kick: the connection is closed with KICKED. The operator's way to
    // keep a device out is disable, then kick.
    relay.admin(&["user", "disable", "osaka"]);
    // User IDs may hold '%': `osak%61` is another user, not a
    // percent-encoded osaka.
    let out = relay.admin(&["kick", "osak%61"]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (v["user"].as_str(), v["closed"].as_u64()),
        (Some("osak%61"), Some(0)),
        "{v}"
    );
    assert_eq!(relay.logged_in().len(), 1, "osaka is still logged in");
    let out = relay.admin(&["kick", "osaka"]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (v["user"].as_str(), v["closed"].as_u64()),
        (Some("osaka"), Some(1))
    );
    wait_for("the client to hear KICKED", Duration::from_secs(10), || {
        std::fs::read_to_string(&osaka_log)
            .unwrap_or_default()
            .contains("Kicked by the relay admin")
    });
    wait_for("osaka gone from status", Duration::from_secs(10), || {
        relay.logged_in().is_empty()
    });
    assert!(
        osaka.0.try_wait().unwrap().is_none(),
        "relay-client login keeps running (and retrying) after a kick"
    );
    let human = relay.admin(&["status"]);
    assert!(human.starts_with("users logged in: 0"), "{human}");

    // A wrong admin token is refused by kick.
    std::fs::write(
        &relay.cfg,
        std::fs::read_to_string(&relay.cfg)
            .unwrap()
            .replace(ADMIN_TOKEN, "wrong-token-0123456789abcdef"),
    )
    .unwrap();
    let out = Command::new(faxgate())
        .args(["relay", "--config"])
        .arg(&relay.cfg)
        .args(["kick", "osaka"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("kick failed (401)"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A raw device: preamble, LOGIN, frames.
async fn raw_login(addr: &str, user: &str, password: &str) -> Connection {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut c = Connection::new(Stream::Plain(tcp), protocol::MAX_DATA_PAYLOAD);
    c.stream.write_all(&PREAMBLE).await.unwrap();
    c.write_frame(&Frame::Login {
        user: user.into(),
        password: Secret::new(password.into()),
        client: "relay-cli-test".into(),
    })
    .await
    .unwrap();
    let f = recv(&mut c).await;
    assert!(matches!(f, Some(Frame::LoginOk { .. })), "{f:?}");
    c
}

/// The next frame, or None once the relay closed; panics after 15 s.
async fn recv(c: &mut Connection) -> Option<Frame> {
    tokio::time::timeout(Duration::from_secs(15), c.read_frame())
        .await
        .expect("nothing from the relay for 15 s")
        .ok()
        .flatten()
}

async fn until_close(c: &mut Connection) -> Vec<Frame> {
    let mut out = Vec::new();
    while let Some(f) = recv(c).await {
        out.push(f);
    }
    out
}

/// SIGTERM: every logged-in device hears BYE(SHUTDOWN), the two sides of
/// a bridged session are told the relay is going away, and the process
/// exits 0 well within its 10 s shutdown deadline.
#[test]
fn sigterm_says_bye_to_devices_and_exits_zero() {
    let mut relay = RelayProc::start();
    for u in ["nagoya", "tokyo", "osaka"] {
        relay.admin_pw(&["user", "add", u, "-g", "g"], "pw-123456");
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (mut idle, mut tokyo, mut osaka) = rt.block_on(async {
        let idle = raw_login(&relay.addr, "nagoya", "pw-123456").await;
        let mut tokyo = raw_login(&relay.addr, "tokyo", "pw-123456").await;
        let mut osaka = raw_login(&relay.addr, "osaka", "pw-123456").await;
        tokyo
            .write_frame(&Frame::Connect {
                target: "osaka".into(),
            })
            .await
            .unwrap();
        let Some(Frame::ConnectNotify { session_id, .. }) = recv(&mut osaka).await else {
            panic!("osaka got no CONNECT-NOTIFY");
        };
        osaka
            .write_frame(&Frame::Accept { session_id })
            .await
            .unwrap();
        assert!(matches!(
            recv(&mut osaka).await,
            Some(Frame::ConnectOk { .. })
        ));
        assert!(matches!(
            recv(&mut tokyo).await,
            Some(Frame::ConnectOk { .. })
        ));
        (idle, tokyo, osaka)
    });
    // CONNECT-OK goes out a moment before the relay records the session.
    wait_for(
        "the session in relay status",
        Duration::from_secs(10),
        || relay.status_json()["sessions_active"] == 1,
    );

    let pid = relay.proc.0.id();
    run(Command::new("sh")
        .arg("-c")
        .arg(format!("kill -TERM {pid}")));
    let sent = Instant::now();

    let (idle_frames, tokyo_frames, osaka_frames) = rt.block_on(async {
        (
            until_close(&mut idle).await,
            until_close(&mut tokyo).await,
            until_close(&mut osaka).await,
        )
    });
    let status = loop {
        if let Some(s) = relay.proc.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(15),
            "the relay did not exit within 15 s of SIGTERM\n{}",
            relay.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}\n{}", relay.log());
    assert!(
        relay.log().contains("SIGTERM received; shutting down."),
        "{}",
        relay.log()
    );
    assert!(
        matches!(
            idle_frames.as_slice(),
            [Frame::Bye {
                code: Code::Shutdown,
                ..
            }]
        ),
        "the vacant device: {idle_frames:?}"
    );
    let told = |frames: &[Frame]| {
        frames.iter().any(|f| {
            matches!(
                f,
                Frame::Bye {
                    code: Code::Shutdown,
                    ..
                } | Frame::Terminate {
                    code: Code::Shutdown
                }
            )
        })
    };
    assert!(
        told(&tokyo_frames) && told(&osaka_frames),
        "a session's sides must hear TERMINATE or BYE(SHUTDOWN) before the close; \
         the caller got {tokyo_frames:?}, the target {osaka_frames:?}"
    );
}

/// `relay-client connect` and `listen --once` pipe stdin and stdout like
/// netcat with half-close: the listener answers at once and ends its side
/// while the caller's stdin is still coming (the second half arrives after
/// the listener's TERMINATE has reached the caller). Every byte of the
/// caller's stdin must reach the listener's stdout, and the answer the
/// caller's. (Before, the caller ended the session on the peer's
/// TERMINATE and dropped the rest of its stdin; both exited 0. The NAT
/// test hit it under CI load.)
#[test]
fn relay_client_pipes_all_of_stdin_after_the_peer_has_ended() {
    use std::io::Write as _;
    use std::process::Stdio;
    let relay = RelayProc::start();
    for u in ["tokyo", "osaka"] {
        relay.admin_pw(&["user", "add", u, "-g", "b"], "pw-123456");
    }
    let d = relay.dir.path();
    std::fs::write(d.join("answer"), b"pong").unwrap();
    let client = |user: &str| {
        let mut c = Command::new(faxgate());
        c.args(["relay-client", "--server", &relay.addr, "--user", user])
            .args(["--password-env", "FG_PW"])
            .env("FG_PW", "pw-123456")
            .env("RUST_LOG", "warn");
        c
    };
    let mut listener = Proc(
        client("osaka")
            .args(["listen", "--once"])
            .stdin(std::fs::File::open(d.join("answer")).unwrap())
            .stdout(std::fs::File::create(d.join("got_osaka")).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_for("osaka logged in", Duration::from_secs(20), || {
        relay.logged_in().iter().any(|(u, _)| u == "osaka")
    });
    let half: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 253) as u8).collect();
    let mut caller = Proc(
        client("tokyo")
            .args(["connect", "osaka"])
            .stdin(Stdio::piped())
            .stdout(std::fs::File::create(d.join("got_tokyo")).unwrap())
            .spawn()
            .unwrap(),
    );
    let mut stdin = caller.0.stdin.take().unwrap();
    stdin.write_all(&half).unwrap();
    // osaka's stdin is 4 bytes: its answer and TERMINATE come back now.
    wait_for("osaka's answer at tokyo", Duration::from_secs(20), || {
        std::fs::read(d.join("got_tokyo")).unwrap_or_default() == b"pong"
    });
    std::thread::sleep(Duration::from_millis(300));
    if let Err(e) = stdin.write_all(&half) {
        panic!(
            "tokyo's relay-client stopped taking its stdin once osaka had ended ({e}): the rest would be lost"
        );
    }
    drop(stdin);
    let deadline = Instant::now() + Duration::from_secs(30);
    for (who, p) in [("tokyo", &mut caller), ("osaka", &mut listener)] {
        let status = loop {
            if let Some(s) = p.0.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "{who}'s relay-client did not end"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "{who}: {status}");
    }
    let got = std::fs::read(d.join("got_osaka")).unwrap();
    assert_eq!(got.len(), 2 * half.len(), "osaka got a cut stream");
    assert!(got[..half.len()] == half[..] && got[half.len()..] == half[..]);
    assert_eq!(std::fs::read(d.join("got_tokyo")).unwrap(), b"pong");
}
