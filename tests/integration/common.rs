//! Helpers for tests that run the `faxgate` binary and system tools.

use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

/// The `faxgate` binary built for this test run.
pub fn faxgate() -> &'static str {
    env!("CARGO_BIN_EXE_faxgate")
}

/// Runs a command to completion; panics with its output if it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `sh -c` a line, panicking with its output on failure.
pub fn sh(line: &str) -> Output {
    run(Command::new("sh").arg("-c").arg(line))
}

/// Fails the test unless we are root and `tools` are on PATH.
pub fn require_root_and(tools: &[(&str, &str)]) {
    // SAFETY-free check: /proc/self/status has our effective UID.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let euid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or("1");
    assert_eq!(
        euid, "0",
        "this test builds network namespaces and needs root"
    );
    for (tool, package) in tools {
        need(tool, package);
    }
}

/// Fails (never skips) unless `tool` is on PATH, naming the package.
pub fn need(tool: &str, package: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "`{tool}` is missing: apt-get install -y --no-install-recommends {package}"
    );
}

/// A child process killed (and reaped) when dropped.
pub struct Proc(pub Child);

/// Starts `faxgate relay --config cfg` with its stdout in `dir/relay.out`
/// (the listen lines tests read addresses from) and its log in
/// `dir/relay.log`.
pub fn spawn_relay(cfg: &std::path::Path, dir: &std::path::Path) -> Proc {
    Proc(
        Command::new(faxgate())
            .args(["relay", "--config"])
            .arg(cfg)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(dir.join("relay.out")).unwrap())
            .stderr(std::fs::File::create(dir.join("relay.log")).unwrap())
            .spawn()
            .unwrap(),
    )
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A daemon stopped with SIGTERM when dropped, so that it can stop what
/// it started itself (cupsd's filters and backends: a SIGKILL would
/// orphan a backend still talking to the printer); it is killed if it has
/// not exited within 10 s.
pub struct TermProc(pub Child);

impl Drop for TermProc {
    fn drop(&mut self) {
        let child = &mut self.0;
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: kill(2) on our own child's PID, which is not reaped
            // yet (we hold its Child and have not waited on it).
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if !matches!(child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl AsMut<Child> for Proc {
    fn as_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl AsMut<Child> for TermProc {
    fn as_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

/// Starts a daemon on a free loopback port: `spawn(port)` starts it, and
/// it is ready once the port accepts. The port is free when chosen but
/// not reserved until the daemon binds it: if another process takes it
/// first, the daemon exits, and another port is tried (three in all).
/// Returns `None` if the daemon exited every time.
pub fn on_free_port<P: AsMut<Child>>(
    what: &str,
    mut spawn: impl FnMut(u16) -> P,
) -> Option<(P, u16)> {
    for _ in 0..3 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut daemon = spawn(port);
        let mut exited = false;
        wait_for(&format!("{what}'s port"), Duration::from_secs(15), || {
            exited = !matches!(daemon.as_mut().try_wait(), Ok(None));
            exited || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        if !exited {
            return Some((daemon, port));
        }
    }
    None
}

/// Polls `f` every 50 ms until it returns true or `limit` passes.
pub fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits (20 s at most) for a line starting with `prefix` in a file that
/// a process is writing; returns the rest of the line.
pub fn read_line_after(path: &std::path::Path, prefix: &str) -> String {
    let mut found = String::new();
    wait_for(
        &format!("{prefix:?} in {}", path.display()),
        Duration::from_secs(20),
        || {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            match text.lines().find_map(|l| l.strip_prefix(prefix)) {
                Some(rest) => {
                    found = rest.trim().to_owned();
                    true
                }
                None => false,
            }
        },
    );
    found
}
