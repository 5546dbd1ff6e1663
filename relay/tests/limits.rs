//! Limits that protect the relay and its users: nothing before login may
//! make the relay buffer a DATA frame; failing passwords for a user from
//! elsewhere locks out neither its resume tokens nor the addresses it
//! logs in from; resume tokens do not pile up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{PW, Raw, relay};
use faxgate_config::Secret;
use faxgate_relay::protocol::{Code, Frame, FrameType, PREAMBLE};
use faxgate_relay::registry::Registry;
use std::net::IpAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_frame_before_login_is_refused_at_once() {
    let r = relay("").await;
    r.add_user("osaka", &["b"]);
    r.add_user("tokyo", &["b"]);
    let mut tcp = TcpStream::connect(r.addr).await.unwrap();
    tcp.write_all(&PREAMBLE).await.unwrap();
    // A DATA header announcing 1 MiB, and a first part of it.
    let mut head = vec![FrameType::Data as u8];
    head.extend_from_slice(&(1u32 << 20).to_be_bytes());
    tcp.write_all(&head).await.unwrap();
    tcp.write_all(&[0u8; 4096]).await.unwrap();
    let t = Instant::now();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(3), tcp.read_to_end(&mut out))
        .await
        .expect("the relay waited for the frame instead of refusing it")
        .ok();
    assert!(t.elapsed() < Duration::from_secs(3));
    match faxgate_relay::protocol::parse_frame(&out, 1024).unwrap() {
        Some((Frame::Err { code, .. }, _)) => {
            assert_ne!(code, Code::HandshakeTimeout, "refused only at the deadline");
        }
        other => panic!("expected ERR, got {other:?}"),
    }
    // Logged-in devices still move DATA (the limit is back after login).
    let (mut a, mut b) = common::bridged_raw(&r, "osaka", "tokyo").await;
    let data = bytes::Bytes::from(common::pattern(200_000, 7));
    a.send(&Frame::Data(data.clone())).await;
    assert_eq!(b.recv().await, Some(Frame::Data(data)));
}

/// The per-user limit stops a guesser spread over many addresses, but it
/// must not be a switch anyone can use to cut a device off: a RESUME is
/// limited by address only, and a password login from an address the
/// user logged in from lately likewise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_passwords_from_elsewhere_lock_out_neither_resume_nor_a_known_address() {
    let r = relay(
        "[relay.rate_limit]\nmax_failures_per_user = 3\nmax_failures_per_ip = 5\nwindow = \"5m\"\n",
    )
    .await;
    r.add_user("tokyo", &["b"]);
    let device = ip("127.0.0.1");
    let (mut first, f) = Raw::login_from(r.addr, device, "tokyo", PW).await;
    let Frame::LoginOk {
        token: Some(token), ..
    } = f
    else {
        panic!("{f:?}");
    };
    // Someone at 127.0.0.9 fails tokyo's password until the user's limit.
    for _ in 0..3 {
        let (_, f) = Raw::login_from(r.addr, ip("127.0.0.9"), "tokyo", "guess").await;
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
    // A third address with the right password is refused: the per-user
    // limit holds for addresses tokyo never logged in from.
    let (_, f) = Raw::login_from(r.addr, ip("127.0.0.3"), "tokyo", PW).await;
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
    // The device's spare connection resumes with its token, even from
    // another address (a carrier-grade NAT maps a device's connections
    // to a pool of public addresses).
    let mut spare = Raw::open_from(r.addr, ip("127.0.0.4")).await;
    spare
        .send(&Frame::Resume {
            user: "tokyo".into(),
            token: Secret::new(*token.expose()),
        })
        .await;
    let f = spare.recv().await.unwrap();
    assert!(matches!(f, Frame::LoginOk { .. }), "resume refused: {f:?}");
    // And when its connections drop, it logs in again from its address.
    first.send(&Frame::Logout).await;
    drop(first);
    drop(spare);
    r.eventually("tokyo gone", |r| r.counts().0 == 0).await;
    let (_, f) = Raw::login_from(r.addr, device, "tokyo", PW).await;
    assert!(
        matches!(f, Frame::LoginOk { .. }),
        "known address refused: {f:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_tokens_do_not_pile_up_while_a_user_stays_logged_in() {
    let r = relay("max_connections_per_user = 2\n").await;
    r.add_user("tokyo", &["b"]);
    let (_keep, f) = Raw::login(r.addr, "tokyo", PW).await;
    assert!(matches!(f, Frame::LoginOk { .. }), "{f:?}");
    let mut newest = None;
    for _ in 0..20 {
        let (c, f) = Raw::login(r.addr, "tokyo", PW).await;
        let Frame::LoginOk { token: Some(t), .. } = f else {
            panic!("{f:?}");
        };
        newest = Some(t);
        drop(c);
        r.eventually("the extra connection closed", |r| r.counts().1 == 1)
            .await;
    }
    let held = r.server.shared.registry.token_count("tokyo");
    assert!(held <= Registry::max_tokens(2), "{held} tokens held");
    // The newest token still resumes.
    let mut spare = Raw::open(r.addr).await;
    spare
        .send(&Frame::Resume {
            user: "tokyo".into(),
            token: newest.unwrap(),
        })
        .await;
    let f = spare.recv().await.unwrap();
    assert!(matches!(f, Frame::LoginOk { .. }), "{f:?}");
}

/// RESUME with `token`; the relay's answer.
async fn resume(addr: std::net::SocketAddr, user: &str, token: &Secret<[u8; 32]>) -> Frame {
    let mut spare = Raw::open(addr).await;
    spare
        .send(&Frame::Resume {
            user: user.into(),
            token: token.clone(),
        })
        .await;
    spare
        .recv()
        .await
        .expect("the relay closed without an answer")
}

/// A resume token ends with the credentials it was issued under: after
/// an admin changes the user's password, or disables the user, RESUME
/// with a token from before fails like a bad login (AUTH_FAILED), while
/// the user still has a live connection that would keep it alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_tokens_die_with_a_password_change_or_a_disable() {
    let r = relay("").await;
    r.add_user("tokyo", &["b"]);
    let store = r.server.shared.store();
    for change in ["passwd", "disable"] {
        let (_keep, f) = Raw::login(r.addr, "tokyo", PW).await;
        let Frame::LoginOk { token: Some(t), .. } = f else {
            panic!("{f:?}");
        };
        let ok = resume(r.addr, "tokyo", &t).await;
        assert!(matches!(ok, Frame::LoginOk { .. }), "{change}: {ok:?}");
        match change {
            // The same password: a new hash all the same.
            "passwd" => store.set_password("tokyo", PW).unwrap(),
            _ => store.set_disabled("tokyo", true).unwrap(),
        }
        let f = resume(r.addr, "tokyo", &t).await;
        assert!(
            matches!(
                f,
                Frame::Err {
                    code: Code::AuthFailed,
                    ..
                }
            ),
            "{change}: an old token still resumes: {f:?}"
        );
        store.set_disabled("tokyo", false).unwrap();
    }
}
