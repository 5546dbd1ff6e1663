//! Seed 001, processes (1) to (24), over loopback against the real
//! server and client library. Each test names the processes it covers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{PW, Raw, http, pattern, relay, relay_with};
use faxgate_config::Secret;
use faxgate_relay::RelayClient;
use faxgate_relay::protocol::{Code, Frame};
use std::str::FromStr as _;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// (1)-(3): login with user ID and password; every failure looks the
/// same to the client, and the relay counts each reason apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_success_and_each_failure() {
    let r = relay("").await;
    r.add_user("tokyo", &["branches"]);
    r.add_user("nagoya", &["branches"]);
    r.server
        .shared
        .store()
        .set_disabled("nagoya", true)
        .unwrap();

    let (_ok, f) = Raw::login(r.addr, "tokyo", PW).await;
    match f {
        Frame::LoginOk {
            hold_interval_ms,
            token,
            ..
        } => {
            assert_eq!(
                hold_interval_ms, 30_000,
                "relay announces its hold interval"
            );
            assert!(token.is_some(), "a password login issues a resume token");
        }
        other => panic!("expected LOGIN-OK, got {other:?}"),
    }

    let mut answers = Vec::new();
    for (user, pw) in [("tokyo", "wrong"), ("nobody", PW), ("nagoya", PW)] {
        let (mut raw, f) = Raw::login(r.addr, user, pw).await;
        answers.push(f);
        assert!(
            raw.recv().await.is_none(),
            "{user}: relay closes after a failed login"
        );
    }
    for f in &answers {
        assert_eq!(
            f,
            &Frame::Err {
                code: Code::AuthFailed,
                message: "login failed".into()
            },
            "the three failures must be indistinguishable"
        );
    }
    assert_eq!(r.metric(|m| &m.fail_wrong_password), 1);
    assert_eq!(r.metric(|m| &m.fail_unknown_user), 1);
    assert_eq!(r.metric(|m| &m.fail_disabled), 1);
    assert_eq!(r.metric(|m| &m.logins), 1);
}

/// Failed logins are limited per user: after the limit even the right
/// password is refused with RATE_LIMITED, and the client lib reports it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_rate_limited_per_user_and_per_address() {
    let r = relay(
        "[relay.rate_limit]\nmax_failures_per_user = 3\nmax_failures_per_ip = 6\nwindow = \"1m\"\n",
    )
    .await;
    r.add_user("osaka", &["b"]);
    r.add_user("kobe", &["b"]);
    for _ in 0..3 {
        let (_, f) = Raw::login(r.addr, "osaka", "guess").await;
        assert!(
            matches!(
                f,
                Frame::Err {
                    code: Code::AuthFailed,
                    ..
                }
            ),
            "{f:?}"
        );
    }
    let (_, f) = Raw::login(r.addr, "osaka", PW).await;
    assert!(
        matches!(
            f,
            Frame::Err {
                code: Code::RateLimited,
                ..
            }
        ),
        "{f:?}"
    );
    // kobe is not limited per user yet, but the address gathers failures.
    let (_, f) = Raw::login(r.addr, "kobe", PW).await;
    assert!(matches!(f, Frame::LoginOk { .. }), "{f:?}");
    for _ in 0..3 {
        let (_, f) = Raw::login(r.addr, "kobe", "guess").await;
        assert!(matches!(f, Frame::Err { .. }), "{f:?}");
    }
    let (_, f) = Raw::login(r.addr, "kobe", PW).await;
    assert!(
        matches!(
            f,
            Frame::Err {
                code: Code::RateLimited,
                ..
            }
        ),
        "per-address limit: {f:?}"
    );
    let mut cfg = r.client_config("osaka");
    cfg.password = Secret::new(PW.into());
    let err = RelayClient::start(cfg).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::RateLimited), "{err}");
    assert!(r.metric(|m| &m.fail_rate_limited) >= 3);
}

/// (4)-(5): HOLD is answered with HOLD-ACK carrying the same sequence.
/// A connection silent for 2.5 intervals is closed and presence updated:
/// not before 2.5 intervals, and well before 4 (a relay that never
/// closes, or waits much longer, fails).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_is_answered_and_silent_connections_are_closed() {
    const INTERVAL: Duration = Duration::from_millis(400);
    let r = relay("hold_interval = \"400ms\"\n").await;
    r.add_user("tokyo", &["b"]);
    let (mut raw, f) = Raw::login(r.addr, "tokyo", PW).await;
    assert!(
        matches!(
            f,
            Frame::LoginOk {
                hold_interval_ms: 400,
                ..
            }
        ),
        "{f:?}"
    );
    let start = tokio::time::Instant::now();
    let mut silent_from = start;
    // 4 x 300 ms is more than 2.5 intervals: only the HOLDs keep it open.
    for seq in 1..=4 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        silent_from = tokio::time::Instant::now();
        raw.send(&Frame::Hold { seq }).await;
        assert_eq!(raw.recv().await, Some(Frame::HoldAck { seq }));
    }
    assert_eq!(r.counts().1, 1, "holding kept the connection alive");
    // Now go silent: a device that died without a FIN.
    let bye = raw.recv().await;
    let waited = silent_from.elapsed();
    assert!(
        matches!(
            bye,
            Some(Frame::Bye {
                code: Code::IdleTimeout,
                ..
            })
        ),
        "{bye:?}"
    );
    assert!(
        waited >= INTERVAL * 5 / 2 - Duration::from_millis(20),
        "closed {waited:?} after the last HOLD, before 2.5 intervals"
    );
    assert!(
        waited < INTERVAL * 4,
        "closed {waited:?} after the last HOLD; 2.5 intervals is {:?}",
        INTERVAL * 5 / 2
    );
    assert!(raw.recv().await.is_none(), "socket closed after BYE");
    r.eventually("presence removed", |r| r.counts().0 == 0)
        .await;
    assert_eq!(r.metric(|m| &m.hold_timeouts), 1);
    assert!(start.elapsed() > INTERVAL * 3);
}

/// The device side of dead-peer detection: a "relay" that logs the
/// device in but never answers HOLD (a half-open connection, as leaky
/// relays produce) is abandoned and the client reconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_detects_a_relay_that_stops_answering_hold() {
    use faxgate_relay::connection::Connection;
    use faxgate_relay::transport::Stream;
    // Not a mock of the relay's logic: a socket that answers LOGIN and
    // then goes deaf, which is exactly the fault under test.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let acc = accepted.clone();
    tokio::spawn(async move {
        let mut keep = Vec::new();
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            acc.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut c = Connection::new(Stream::Plain(tcp), 1 << 20);
            c.read_preamble().await.unwrap();
            let _login = c.read_frame().await.unwrap();
            c.write_frame(&Frame::LoginOk {
                conn_id: 1,
                hold_interval_ms: 100,
                max_connections: 1,
                token: Some(Secret::new([1; 32])),
            })
            .await
            .unwrap();
            keep.push(c); // never read again: HOLDs go unanswered
        }
    });
    let mut cfg = faxgate_config::RelayClientConfig::from_str(&format!(
        "server = \"{addr}\"\nuser = \"u\"\npassword = \"p\"\nspares = 0\nmax_connections = 1\nreconnect_initial = \"50ms\"\nreconnect_max = \"100ms\"\n"
    ))
    .unwrap();
    cfg.spares = 0;
    let (_client, _in) = RelayClient::start(cfg).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while accepted.load(std::sync::atomic::Ordering::SeqCst) < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "client never gave up on the deaf relay"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// LIST shows the logged-in users this user may see (ACL: same group),
/// each with its vacant connections; a second login from elsewhere adds
/// connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_shows_visible_users_and_vacancies() {
    let r = relay("").await;
    r.add_user("tokyo", &["branches"]);
    r.add_user("osaka", &["branches"]);
    r.add_user("paris", &["europe"]);
    let (tokyo, _t) = r.client("tokyo", 1, 4).await;
    let (_osaka, _o) = r.client("osaka", 2, 4).await;
    let (_paris, _p) = r.client("paris", 0, 1).await;
    let list = tokyo.list().await.unwrap();
    let names: Vec<_> = list.iter().map(|u| u.user.as_str()).collect();
    assert_eq!(names, ["osaka", "tokyo"], "paris is in another group");
    assert_eq!((list[0].vacant, list[0].connections), (3, 3));
    // A second device logging in as osaka adds connections.
    let (_osaka2, _o2) = r.client("osaka", 0, 1).await;
    let list = tokyo.list().await.unwrap();
    assert_eq!(list[0].connections, 4);
}

/// (6)-(9): CONNECT to a user who is not logged in, forbidden, busy,
/// rejected and timed out; each with its own code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_have_their_codes() {
    // Long enough that the answered demands (rejected, accepted) are
    // never timed out on a loaded machine; the timed-out one takes 2 s.
    let r = relay("connect_timeout = \"2s\"\n").await;
    for u in ["tokyo", "osaka", "kyoto", "sapporo", "offline"] {
        r.add_user(u, &["branches"]);
    }
    r.add_user("paris", &["europe"]);
    let (tokyo, _t) = r.client("tokyo", 1, 4).await;

    let e = tokyo.connect("offline").await.unwrap_err();
    assert_eq!(e.code(), Some(Code::NotLoggedIn), "{e}");
    let e = tokyo.connect("ghost").await.unwrap_err();
    assert_eq!(
        e.code(),
        Some(Code::NotLoggedIn),
        "unknown users look offline: {e}"
    );
    let e = tokyo.connect("paris").await.unwrap_err();
    assert_eq!(
        e.code(),
        Some(Code::Forbidden),
        "not logged in but forbidden: {e}"
    );
    let (_paris, _p) = r.client("paris", 0, 1).await;
    let e = tokyo.connect("paris").await.unwrap_err();
    assert_eq!(e.code(), Some(Code::Forbidden), "{e}");

    // Rejected.
    let (_osaka, mut osaka_in) = r.client("osaka", 0, 1).await;
    let rejecter = tokio::spawn(async move {
        let d = osaka_in.recv().await.unwrap();
        assert_eq!(d.from, "tokyo");
        d.reject();
        osaka_in
    });
    let e = tokyo.connect("osaka").await.unwrap_err();
    assert_eq!(e.code(), Some(Code::Rejected), "{e}");
    let _osaka_in = rejecter.await.unwrap();

    // Timed out: kyoto's device gets the demand but never answers.
    let (mut kyoto, f) = Raw::login(r.addr, "kyoto", PW).await;
    assert!(matches!(f, Frame::LoginOk { .. }));
    let e = tokyo.connect("kyoto").await.unwrap_err();
    assert_eq!(e.code(), Some(Code::Timeout), "{e}");
    let notify = kyoto.recv().await.unwrap();
    let Frame::ConnectNotify { session_id, from } = notify else {
        panic!("expected CONNECT-NOTIFY, got {notify:?}");
    };
    assert_eq!(from, "tokyo");
    assert_eq!(kyoto.recv().await, Some(Frame::NotifyCancel { session_id }));
    // A late ACCEPT is ignored and the connection is vacant again.
    kyoto.send(&Frame::Accept { session_id }).await;
    kyoto.send(&Frame::Hold { seq: 9 }).await;
    assert_eq!(kyoto.recv().await, Some(Frame::HoldAck { seq: 9 }));

    // Busy: sapporo's only connection is in a session with kyoto.
    let (sapporo, _s) = r.client("sapporo", 0, 1).await;
    let kyoto_answer = tokio::spawn(async move {
        let f = kyoto.recv().await.unwrap();
        let Frame::ConnectNotify { session_id, .. } = f else {
            panic!("{f:?}")
        };
        kyoto.send(&Frame::Accept { session_id }).await;
        assert!(matches!(kyoto.recv().await, Some(Frame::ConnectOk { .. })));
        kyoto
    });
    let _busy_session = sapporo.connect("kyoto").await.unwrap();
    let _kyoto = kyoto_answer.await.unwrap();
    let e = tokyo.connect("sapporo").await.unwrap_err();
    assert_eq!(e.code(), Some(Code::Busy), "{e}");

    assert_eq!(r.metric(|m| &m.connect_not_logged_in), 2);
    assert_eq!(r.metric(|m| &m.connect_forbidden), 2);
    assert_eq!(r.metric(|m| &m.connect_rejected), 1);
    assert_eq!(r.metric(|m| &m.connect_timeout), 1);
    assert_eq!(r.metric(|m| &m.connect_busy), 1);
}

/// (6)-(9) accepted, then (15)-(18): 10 MB each way at the same time
/// through the bridge arrives byte-exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_megabytes_each_way_arrive_byte_exact() {
    let r = relay("").await;
    r.add_user("tokyo", &["b"]);
    r.add_user("osaka", &["b"]);
    let (tokyo, _t) = r.client("tokyo", 0, 2).await;
    let (_osaka, mut osaka_in) = r.client("osaka", 0, 2).await;
    const N: usize = 10 * 1024 * 1024;
    let up = pattern(N, 1);
    let down = pattern(N, 2);
    let (up2, down2) = (up.clone(), down.clone());
    let b = tokio::spawn(async move {
        let s = osaka_in.recv().await.unwrap().accept().await.unwrap();
        exchange(s, down2, up2.len()).await
    });
    let s = tokyo.connect("osaka").await.unwrap();
    let got_down = exchange(s, up.clone(), N).await;
    let got_up = b.await.unwrap();
    assert!(got_up == up, "tokyo -> osaka bytes differ");
    assert!(got_down == down, "osaka -> tokyo bytes differ");
    // Headers count too: 10 MiB of payload plus a few frame headers.
    r.eventually("session ended", |r| r.counts().3 == 0).await;
    let up_bytes = r.metric(|m| &m.bytes_up);
    assert!(
        up_bytes >= N as u64 && up_bytes < N as u64 + 4096,
        "{up_bytes}"
    );
}

/// Writes `send` in odd-sized chunks while reading `expect` bytes, then
/// TERMINATE/RELEASE. Returns what was read.
async fn exchange(mut s: faxgate_relay::Session, send: Vec<u8>, expect: usize) -> Vec<u8> {
    let (mut rx, mut tx) = tokio::io::split(&mut s);
    let writer = async {
        for chunk in send.chunks(100_003) {
            tx.write_all(chunk).await.unwrap();
        }
        tx.shutdown().await.unwrap();
    };
    let reader = async {
        let mut got = Vec::with_capacity(expect);
        rx.read_to_end(&mut got).await.unwrap();
        got
    };
    let ((), got) = tokio::join!(writer, reader);
    s.close().await.unwrap();
    got
}

/// (19)-(21): TERMINATE from either side reaches the other, both
/// connections are released (vacant again), and the same connection
/// carries a second session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_release_and_reuse_of_the_connection() {
    let r = relay("").await;
    r.add_user("tokyo", &["b"]);
    r.add_user("osaka", &["b"]);
    // One connection each: reuse is the only way to a second session.
    let (tokyo, _t) = r.client("tokyo", 0, 1).await;
    let (osaka, mut osaka_in) = r.client("osaka", 0, 1).await;
    for round in 0..2u8 {
        let callee = async {
            let mut s = osaka_in.recv().await.unwrap().accept().await.unwrap();
            let mut buf = Vec::new();
            // Round 0: tokyo terminates first; round 1: osaka does.
            if round == 0 {
                s.read_to_end(&mut buf).await.unwrap();
                assert_eq!(s.peer_end(), Some(Code::Normal));
                s.close().await.unwrap();
            } else {
                s.write_all(b"bye").await.unwrap();
                s.shutdown().await.unwrap();
                s.read_to_end(&mut buf).await.unwrap();
                s.close().await.unwrap();
            }
            buf
        };
        let caller = async {
            let mut s = tokyo.connect("osaka").await.unwrap();
            let mut buf = Vec::new();
            if round == 0 {
                s.write_all(b"page 1").await.unwrap();
                s.shutdown().await.unwrap();
                s.read_to_end(&mut buf).await.unwrap();
            } else {
                s.read_to_end(&mut buf).await.unwrap();
                assert_eq!(s.peer_end(), Some(Code::Normal));
            }
            s.close().await.unwrap();
            buf
        };
        let (got_b, got_a) = tokio::join!(callee, caller);
        if round == 0 {
            assert_eq!(got_b, b"page 1");
            assert!(got_a.is_empty());
        } else {
            assert_eq!(got_a, b"bye");
        }
        tokyo.wait_vacant(1, Duration::from_secs(5)).await.unwrap();
        osaka.wait_vacant(1, Duration::from_secs(5)).await.unwrap();
        r.eventually("both released and vacant", |r| {
            let (_, conns, vacant, sessions) = r.counts();
            conns == 2 && vacant == 2 && sessions == 0
        })
        .await;
        assert_eq!(tokyo.status().connections, 1);
    }
    assert_eq!(r.metric(|m| &m.sessions), 2);
    assert_eq!(r.metric(|m| &m.logins), 2, "reuse needed no new login");
}

/// (10)-(14): spare connections log in with the resume token (no second
/// password check) and carry two sessions at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spare_connections_carry_two_sessions_at_once() {
    let r = relay("").await;
    for u in ["tokyo", "osaka", "kyoto"] {
        r.add_user(u, &["b"]);
    }
    let (osaka, mut osaka_in) = r.client("osaka", 1, 2).await;
    assert_eq!(osaka.status().connections, 2);
    assert_eq!(
        r.metric(|m| &m.resumes),
        1,
        "the spare used the resume token"
    );
    assert_eq!(r.metric(|m| &m.logins), 1, "only one password check");
    let (tokyo, _t) = r.client("tokyo", 0, 1).await;
    let (kyoto, _k) = r.client("kyoto", 0, 1).await;

    // osaka echoes each session back, in parallel.
    let echo = tokio::spawn(async move {
        let mut tasks = Vec::new();
        for _ in 0..2 {
            let d = osaka_in.recv().await.unwrap();
            tasks.push(tokio::spawn(async move {
                let mut s = d.accept().await.unwrap();
                let mut buf = Vec::new();
                s.read_to_end(&mut buf).await.unwrap();
                s.write_all(&buf).await.unwrap();
                s.shutdown().await.unwrap();
                s.close().await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    // Both callers and the checker meet twice: once both sessions are
    // bridged, and again after the checker has looked.
    let both_up = std::sync::Arc::new(tokio::sync::Barrier::new(3));
    let checked = std::sync::Arc::new(tokio::sync::Barrier::new(3));
    let call = |client: RelayClient, seed: u64| {
        let (both_up, checked) = (both_up.clone(), checked.clone());
        async move {
            let mut s = client.connect("osaka").await.unwrap();
            both_up.wait().await;
            checked.wait().await;
            let data = pattern(300_000, seed);
            s.write_all(&data).await.unwrap();
            s.shutdown().await.unwrap();
            let mut back = Vec::new();
            s.read_to_end(&mut back).await.unwrap();
            s.close().await.unwrap();
            assert!(back == data, "echo differs for seed {seed}");
        }
    };
    let watcher = async {
        both_up.wait().await;
        // The relay sends CONNECT-OK before it records the session, so a
        // caller can be bridged a moment before the registry says so.
        let osaka_in_session = |r: &common::Relay| {
            r.users()
                .into_iter()
                .find(|u| u.user == "osaka")
                .map_or(0, |u| {
                    u.connections
                        .iter()
                        .filter(|c| c.state == faxgate_relay::registry::ConnState::InSession)
                        .count()
                })
        };
        r.eventually(
            "two sessions bridged at once, on osaka's two connections",
            |r| r.counts().3 == 2 && osaka_in_session(r) == 2,
        )
        .await;
        let (_, conns, vacant, _) = r.counts();
        assert_eq!(
            (conns, vacant),
            (4, 0),
            "osaka's two and the callers' one each, all busy"
        );
        checked.wait().await;
    };
    tokio::join!(call(tokyo, 7), call(kyoto, 8), watcher);
    echo.await.unwrap();
    assert_eq!(r.metric(|m| &m.sessions), 2);
    // The pool keeps growing to stay ready: osaka may open more (max 2).
    assert!(osaka.status().connections <= 2);
}

/// (22)-(24): LOGOUT closes every connection of the user, including one
/// in a session (whose peer is told), and ends its resume token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_closes_everything() {
    let r = relay("").await;
    r.add_user("tokyo", &["b"]);
    r.add_user("osaka", &["b"]);
    let (tokyo, mut tokyo_in) = r.client("tokyo", 2, 4).await;
    let (osaka, _o) = r.client("osaka", 0, 2).await;
    // osaka is in a session with tokyo when tokyo logs out.
    let accept =
        tokio::spawn(async move { tokyo_in.recv().await.unwrap().accept().await.unwrap() });
    let mut tokyo_side = osaka.connect("tokyo").await.unwrap();
    let mut tokyo_session = accept.await.unwrap();
    // A second device logged in as tokyo, with its own token.
    let (mut raw_spare, f) = Raw::login(r.addr, "tokyo", PW).await;
    let Frame::LoginOk { token, .. } = f else {
        panic!("{f:?}")
    };
    let token = token.unwrap();
    tokyo.logout().await.unwrap();
    r.eventually_gone("tokyo").await;
    // The raw extra connection got BYE(LOGGED_OUT), then the close.
    assert!(matches!(
        raw_spare.recv().await,
        Some(Frame::Bye {
            code: Code::LoggedOut,
            ..
        })
    ));
    assert!(raw_spare.recv().await.is_none());
    // The session's peer learns why the session ended.
    let mut buf = Vec::new();
    let e = tokyo_side.read_to_end(&mut buf).await.unwrap_err();
    assert!(e.to_string().contains("LOGGED_OUT"), "{e}");
    tokyo_side.close().await.unwrap();
    // The resume token died with the logout.
    let mut raw = Raw::open(r.addr).await;
    raw.send(&Frame::Resume {
        user: "tokyo".into(),
        token,
    })
    .await;
    assert!(matches!(
        raw.recv().await,
        Some(Frame::Err {
            code: Code::AuthFailed,
            ..
        })
    ));
    // tokyo's own session sees its connection closed by the relay.
    let mut buf = Vec::new();
    assert!(tokyo_session.read_to_end(&mut buf).await.is_err());
    drop(tokyo_session);
    tokyo.wait_vacant(0, Duration::from_secs(1)).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokyo.status().connections != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "tokyo's pool did not empty"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        osaka
            .list()
            .await
            .unwrap()
            .iter()
            .all(|u| u.user != "tokyo")
    );
}

/// An admin kicks a user through the status endpoint; the metrics and
/// JSON status show logins, sessions and bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_metrics_and_admin_kick() {
    let r = relay_with(
        "",
        "[status]\nlisten = \"127.0.0.1:0\"\nadmin_token = \"letmein-0123456789\"\n",
    )
    .await;
    r.add_user("tokyo", &["b"]);
    let (mut raw, _) = Raw::login(r.addr, "tokyo", PW).await;
    let status = r.server.status_addr.unwrap();
    let (code, body) = http(status, "GET", "/status", None).await;
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["users_logged_in"], 1);
    assert_eq!(v["users"][0]["user"], "tokyo");
    assert_eq!(v["users"][0]["connections"][0]["state"], "vacant");
    let (code, body) = http(status, "GET", "/metrics", None).await;
    assert_eq!(code, 200);
    assert!(
        body.contains("faxgate_relay_logins_total{kind=\"password\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("faxgate_relay_connections{state=\"logged_in\"} 1"),
        "{body}"
    );
    let (code, _) = http(status, "POST", "/admin/kick/tokyo", Some("wrong")).await;
    assert_eq!(code, 401);
    let (code, body) = http(
        status,
        "POST",
        "/admin/kick/tokyo",
        Some("letmein-0123456789"),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert!(matches!(
        raw.recv().await,
        Some(Frame::Bye {
            code: Code::Kicked,
            ..
        })
    ));
    r.eventually("kicked user gone", |r| r.counts().0 == 0)
        .await;
}

/// /status shows a live session's bytes and /metrics the finished
/// session's, exactly: the bridge counts every byte it forwards, DATA
/// headers and TERMINATE included, and nothing it swallows (HOLD).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_metrics_count_a_sessions_bytes() {
    let r = relay_with("", "[status]\nlisten = \"127.0.0.1:0\"\n").await;
    r.add_user("tokyo", &["b"]);
    r.add_user("osaka", &["b"]);
    let status = r.server.status_addr.unwrap();
    let (mut tokyo, mut osaka) = common::bridged_raw(&r, "tokyo", "osaka").await;
    let up: Vec<Vec<u8>> = [1000, 70_000, 1]
        .iter()
        .enumerate()
        .map(|(i, &n)| pattern(n, i as u64))
        .collect();
    for (i, d) in up.iter().enumerate() {
        tokyo
            .send(&Frame::Data(bytes::Bytes::from(d.clone())))
            .await;
        if i == 0 {
            // Swallowed inside a session: neither forwarded nor counted.
            tokyo.send(&Frame::Hold { seq: 1 }).await;
        }
    }
    for d in &up {
        assert_eq!(
            osaka.recv().await,
            Some(Frame::Data(bytes::Bytes::from(d.clone())))
        );
    }
    let down = pattern(500, 9);
    osaka
        .send(&Frame::Data(bytes::Bytes::from(down.clone())))
        .await;
    assert_eq!(
        tokyo.recv().await,
        Some(Frame::Data(bytes::Bytes::from(down)))
    );
    let up_bytes: u64 = up.iter().map(|d| d.len() as u64 + 5).sum();
    assert_eq!(up_bytes, 71_016);
    let down_bytes = 505u64;

    // The bridge counts a write after it returns, so tokyo can hold the
    // bytes a moment before /status shows them: poll, with a deadline.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let (code, body, v) = loop {
        let (code, body) = http(status, "GET", "/status", None).await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        if v["sessions"][0]["bytes_down"] == down_bytes || tokio::time::Instant::now() >= deadline {
            break (code, body, v);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(code, 200);
    assert_eq!(v["sessions_active"], 1, "{body}");
    let s = &v["sessions"][0];
    assert_eq!(
        (s["caller"].as_str(), s["target"].as_str()),
        (Some("tokyo"), Some("osaka"))
    );
    assert_eq!(s["bytes_up"], up_bytes, "{body}");
    assert_eq!(s["bytes_down"], down_bytes, "{body}");

    // Both TERMINATEs (7 bytes each) and RELEASE end the session.
    let t = Frame::Terminate { code: Code::Normal };
    tokyo.send(&t).await;
    assert_eq!(osaka.recv().await, Some(t.clone()));
    osaka.send(&t).await;
    assert_eq!(tokyo.recv().await, Some(t));
    tokyo.send(&Frame::Release).await;
    osaka.send(&Frame::Release).await;
    r.eventually("session over, both vacant", |r| r.counts() == (2, 2, 2, 0))
        .await;

    let (_, body) = http(status, "GET", "/status", None).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["sessions"].as_array().map(Vec::len), Some(0), "{body}");
    let (code, body) = http(status, "GET", "/metrics", None).await;
    assert_eq!(code, 200);
    for line in [
        format!(
            "faxgate_relay_bytes_forwarded_total{{direction=\"caller_to_target\"}} {}",
            up_bytes + 7
        ),
        format!(
            "faxgate_relay_bytes_forwarded_total{{direction=\"target_to_caller\"}} {}",
            down_bytes + 7
        ),
        "faxgate_relay_sessions_total 1".to_owned(),
        "faxgate_relay_sessions_active 0".to_owned(),
    ] {
        assert!(body.lines().any(|l| l == line), "no `{line}` in:\n{body}");
    }
}

/// (19)-(22) when one side never ends: after tokyo's TERMINATE, osaka
/// sends data for longer than the terminate deadline (all of it reaches
/// tokyo), then falls silent without a TERMINATE. One deadline after its
/// last byte the relay closes osaka and tells tokyo TERMINATE(TIMEOUT);
/// tokyo's connection then carries a RELEASE and is vacant again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_side_that_never_terminates_is_closed_and_its_peer_told() {
    let r = relay("terminate_timeout = \"700ms\"\n").await;
    r.add_user("tokyo", &["b"]);
    r.add_user("osaka", &["b"]);
    let (mut tokyo, mut osaka) = common::bridged_raw(&r, "tokyo", "osaka").await;
    tokyo.send(&Frame::Terminate { code: Code::Normal }).await;
    assert_eq!(
        osaka.recv().await,
        Some(Frame::Terminate { code: Code::Normal })
    );
    // 2.1 s of data after tokyo's TERMINATE: three deadlines.
    let mut last_sent = tokio::time::Instant::now();
    for i in 0..7u64 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let d = bytes::Bytes::from(pattern(2000, i));
        // The relay can only see this byte after it is sent.
        last_sent = tokio::time::Instant::now();
        osaka.send(&Frame::Data(d.clone())).await;
        assert_eq!(tokyo.recv().await, Some(Frame::Data(d)), "frame {i}");
    }
    assert_eq!(
        tokyo.recv().await,
        Some(Frame::Terminate {
            code: Code::Timeout
        })
    );
    assert!(
        last_sent.elapsed() >= Duration::from_millis(700),
        "closed {:?} after osaka's last byte",
        last_sent.elapsed()
    );
    // osaka's connection is closed (after a BYE, if it could be told).
    let mut closed = false;
    for _ in 0..3 {
        match osaka.recv().await {
            None => {
                closed = true;
                break;
            }
            Some(Frame::Bye { .. } | Frame::Terminate { .. }) => {}
            Some(f) => panic!("osaka got {f:?}"),
        }
    }
    assert!(closed, "osaka's connection was not closed");
    tokyo.send(&Frame::Release).await;
    tokyo.send(&Frame::Hold { seq: 5 }).await;
    assert_eq!(tokyo.recv().await, Some(Frame::HoldAck { seq: 5 }));
    r.eventually("no session, tokyo vacant", |r| {
        let (_, _, vacant, sessions) = r.counts();
        sessions == 0 && vacant >= 1
    })
    .await;
}

/// (22): a device whose every connection carries a session still logs
/// out: LOGOUT goes over a connection of its own, and the relay closes
/// everything, the session too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_works_while_every_connection_is_in_a_session() {
    let r = relay("").await;
    r.add_user("tokyo", &["b"]);
    r.add_user("osaka", &["b"]);
    let (tokyo, mut tokyo_in) = r.client("tokyo", 0, 1).await;
    let (osaka, _o) = r.client("osaka", 0, 2).await;
    let accept =
        tokio::spawn(async move { tokyo_in.recv().await.unwrap().accept().await.unwrap() });
    let mut tokyo_side = osaka.connect("tokyo").await.unwrap();
    let _tokyo_session = accept.await.unwrap();
    tokyo.logout().await.unwrap();
    r.eventually_gone("tokyo").await;
    let mut buf = Vec::new();
    let e = tokyo_side.read_to_end(&mut buf).await.unwrap_err();
    assert!(e.to_string().contains("LOGGED_OUT"), "{e}");
}
