//! Helpers: a relay server on 127.0.0.1:0 in a temp dir, users with
//! cheap Argon2 parameters (the cost is a config value; production keeps
//! the default), clients, and a raw-frame connection for exact checks.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use faxgate_config::{RelayClientConfig, RelayServerConfig, Secret};
use faxgate_relay::connection::Connection;
use faxgate_relay::protocol::{self, Frame, PREAMBLE};
use faxgate_relay::transport::Stream;
use faxgate_relay::{RelayClient, RelayServer};
use std::net::SocketAddr;
use std::str::FromStr as _;
use std::time::Duration;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

pub const PW: &str = "correct horse";

pub struct Relay {
    pub server: RelayServer,
    pub addr: SocketAddr,
    pub dir: TempDir,
    pub token: CancellationToken,
}

/// Starts a relay with `extra` appended to its `[relay]` section.
pub async fn relay(extra: &str) -> Relay {
    relay_with(extra, "").await
}

/// Starts a relay; `tail` is appended after `[relay]` (other sections).
pub async fn relay_with(extra: &str, tail: &str) -> Relay {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[relay]\nlisten = \"127.0.0.1:0\"\nstate_dir = {:?}\nargon2_memory_kib = 64\nargon2_iterations = 1\n{extra}\n{tail}",
        dir.path().display().to_string()
    );
    let cfg = RelayServerConfig::from_str(&text).unwrap();
    let token = CancellationToken::new();
    let server = RelayServer::start(cfg, token.clone()).await.unwrap();
    let addr = server.tcp_addr.unwrap();
    Relay {
        server,
        addr,
        dir,
        token,
    }
}

impl Relay {
    pub fn add_user(&self, name: &str, groups: &[&str]) {
        let groups: Vec<String> = groups.iter().map(|s| s.to_string()).collect();
        self.server
            .shared
            .store()
            .add_user(name, PW, &groups)
            .unwrap();
    }

    pub fn client_config(&self, user: &str) -> RelayClientConfig {
        let mut c = RelayClientConfig::from_str(&format!(
            "server = \"{}\"\nuser = \"{user}\"\npassword = \"x\"\nreconnect_initial = \"50ms\"\nreconnect_max = \"500ms\"\nconnect_timeout = \"5s\"\n",
            self.addr
        ))
        .unwrap();
        c.password = Secret::new(PW.to_owned());
        c
    }

    /// A client with `spares` spare connections and at most `max`.
    pub async fn client(
        &self,
        user: &str,
        spares: u16,
        max: u16,
    ) -> (RelayClient, faxgate_relay::client::Incoming) {
        let mut c = self.client_config(user);
        c.spares = spares;
        c.max_connections = max;
        let (client, incoming) = RelayClient::start(c).await.unwrap();
        client
            .wait_vacant(usize::from(spares) + 1, Duration::from_secs(5))
            .await
            .unwrap();
        (client, incoming)
    }

    pub fn metric(
        &self,
        f: impl Fn(&faxgate_relay::metrics::Metrics) -> &std::sync::atomic::AtomicU64,
    ) -> u64 {
        f(&self.server.shared.metrics).load(std::sync::atomic::Ordering::Relaxed)
    }

    /// (users, connections, vacant, sessions)
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        self.server.shared.registry.counts()
    }

    /// The registry's users now, with their connections.
    pub fn users(&self) -> Vec<faxgate_relay::registry::UserStatus> {
        self.server.shared.registry.snapshot().users
    }

    /// Waits (as [`Relay::eventually`]) until the registry no longer
    /// lists `user`.
    pub async fn eventually_gone(&self, user: &str) {
        self.eventually(&format!("{user} gone"), |r| {
            r.users().iter().all(|u| u.user != user)
        })
        .await;
    }

    /// Polls `f` until it holds, for at most 5 s.
    pub async fn eventually(&self, what: &str, f: impl Fn(&Relay) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !f(self) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for: {what} (counts now {:?})",
                self.counts()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A connection speaking raw frames, for exact protocol checks.
pub struct Raw {
    pub conn: Connection,
}

impl Raw {
    pub async fn open(addr: SocketAddr) -> Raw {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut conn = Connection::new(Stream::Plain(tcp), protocol::MAX_DATA_PAYLOAD);
        conn.stream.write_all(&PREAMBLE).await.unwrap();
        Raw { conn }
    }

    /// As [`Raw::open`], from the source address `from` (127.0.0.0/8
    /// holds many: a second device, an attacker elsewhere).
    pub async fn open_from(addr: SocketAddr, from: std::net::IpAddr) -> Raw {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::new(from, 0)).unwrap();
        let tcp = sock.connect(addr).await.unwrap();
        let mut conn = Connection::new(Stream::Plain(tcp), protocol::MAX_DATA_PAYLOAD);
        conn.stream.write_all(&PREAMBLE).await.unwrap();
        Raw { conn }
    }

    pub async fn login(addr: SocketAddr, user: &str, pw: &str) -> (Raw, Frame) {
        Raw::login_from(addr, "127.0.0.1".parse().unwrap(), user, pw).await
    }

    /// LOGIN from the source address `from`; the relay's answer.
    pub async fn login_from(
        addr: SocketAddr,
        from: std::net::IpAddr,
        user: &str,
        pw: &str,
    ) -> (Raw, Frame) {
        Raw::open_from(addr, from).await.log_in(user, pw).await
    }

    /// LOGIN on this opened connection; the relay's answer.
    pub async fn log_in(mut self, user: &str, pw: &str) -> (Raw, Frame) {
        self.send(&Frame::Login {
            user: user.into(),
            password: Secret::new(pw.into()),
            client: "raw-test".into(),
        })
        .await;
        let f = self
            .recv()
            .await
            .expect("relay closed instead of answering LOGIN");
        (self, f)
    }

    pub async fn send(&mut self, f: &Frame) {
        self.conn.write_frame(f).await.unwrap();
    }

    /// The next frame, or None when the relay closed; panics after 5 s.
    pub async fn recv(&mut self) -> Option<Frame> {
        tokio::time::timeout(Duration::from_secs(5), self.conn.read_frame())
            .await
            .expect("no frame from the relay within 5 s")
            .ok()
            .flatten()
    }
}

/// Two raw devices bridged: `caller` CONNECTs `target`, which ACCEPTs.
pub async fn bridged_raw(r: &Relay, caller: &str, target: &str) -> (Raw, Raw) {
    let (c, f) = Raw::login(r.addr, caller, PW).await;
    assert!(matches!(f, Frame::LoginOk { .. }), "{f:?}");
    let (t, f) = Raw::login(r.addr, target, PW).await;
    assert!(matches!(f, Frame::LoginOk { .. }), "{f:?}");
    bridge(c, t, target).await
}

/// Two logged-in raw devices bridged: `c` CONNECTs `target` (logged in
/// on `t`), which ACCEPTs.
pub async fn bridge(mut c: Raw, mut t: Raw, target: &str) -> (Raw, Raw) {
    c.send(&Frame::Connect {
        target: target.into(),
    })
    .await;
    let Some(Frame::ConnectNotify { session_id, .. }) = t.recv().await else {
        panic!("{target} got no CONNECT-NOTIFY");
    };
    t.send(&Frame::Accept { session_id }).await;
    assert!(matches!(t.recv().await, Some(Frame::ConnectOk { .. })));
    assert!(matches!(c.recv().await, Some(Frame::ConnectOk { .. })));
    (c, t)
}

/// Deterministic pseudo-random bytes (xorshift), so a failure is
/// reproducible and the payload is not compressible or repetitive.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

pub async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
) -> (u16, String) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut resp = String::new();
    tcp.read_to_string(&mut resp).await.unwrap();
    let code = resp[9..12].parse().unwrap();
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}
