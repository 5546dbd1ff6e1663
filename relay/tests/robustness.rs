//! Bad input and TLS: the relay answers garbage with clear errors, frees
//! what it took, and keeps serving good clients; TLS works with the
//! generated certificate and a wrong pin is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{PW, Raw, bridged_raw, pattern, relay};
use faxgate_config::{ClientTlsConfig, RelayServerConfig};
use faxgate_relay::connection::Connection;
use faxgate_relay::protocol::{Code, Frame};
use faxgate_relay::transport::Stream;
use faxgate_relay::{ClientError, RelayClient, RelayServer};
use std::str::FromStr as _;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

async fn read_all(tcp: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out))
        .await
        .expect("relay did not close")
        .ok();
    out
}

/// Parses the ERR frame a relay sent before closing.
fn err_frame(bytes: &[u8]) -> (Code, String) {
    match faxgate_relay::protocol::parse_frame(bytes, 1024).unwrap() {
        Some((Frame::Err { code, message }, _)) => (code, message),
        other => panic!("expected ERR, got {other:?} from {bytes:?}"),
    }
}

/// A good client does a whole session; used after each abuse.
async fn good_session(r: &common::Relay) {
    let (a, _ai) = r.client("good-a", 0, 1).await;
    let (_b, mut bi) = r.client("good-b", 0, 1).await;
    let echo = tokio::spawn(async move {
        let mut s = bi.recv().await.unwrap().accept().await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        s.write_all(&buf).await.unwrap();
        s.shutdown().await.unwrap();
        s.close().await.unwrap();
    });
    let mut s = a.connect("good-b").await.unwrap();
    let data = pattern(50_000, 3);
    s.write_all(&data).await.unwrap();
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).await.unwrap();
    s.close().await.unwrap();
    echo.await.unwrap();
    assert!(back == data);
    a.logout().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_oversized_and_cut_frames_get_clear_errors() {
    // Long enough that the cut LOGIN below is answered for the cut, not
    // timed out, however slowly a loaded machine gets to its close.
    let r = relay("handshake_timeout = \"3s\"\n").await;
    for u in ["good-a", "good-b", "tokyo"] {
        r.add_user(u, &["g"]);
    }

    // Random bytes instead of the preamble.
    let mut tcp = TcpStream::connect(r.addr).await.unwrap();
    tcp.write_all(&pattern(4096, 9)).await.unwrap();
    let (code, msg) = err_frame(&read_all(&mut tcp).await);
    assert_eq!(code, Code::BadFrame);
    assert!(msg.contains("preamble"), "{msg}");

    // HTTP by mistake: also a preamble error, not a hang.
    let mut tcp = TcpStream::connect(r.addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: relay\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(err_frame(&read_all(&mut tcp).await).0, Code::BadFrame);

    // A future protocol version.
    let mut tcp = TcpStream::connect(r.addr).await.unwrap();
    tcp.write_all(b"FGRL\x07").await.unwrap();
    let (code, msg) = err_frame(&read_all(&mut tcp).await);
    assert_eq!(code, Code::UnsupportedVersion);
    assert!(msg.contains("version 7"), "{msg}");

    // Random bytes after a valid preamble.
    let mut tcp = TcpStream::connect(r.addr).await.unwrap();
    tcp.write_all(b"FGRL\x01").await.unwrap();
    tcp.write_all(&[0xee; 64]).await.unwrap();
    let (code, msg) = err_frame(&read_all(&mut tcp).await);
    assert_eq!(code, Code::BadFrame);
    assert!(msg.contains("unknown frame type 0xee"), "{msg}");

    // An oversized LOGIN: refused from the header, before the payload.
    let mut tcp = TcpStream::connect(r.addr).await.unwrap();
    tcp.write_all(b"FGRL\x01\x01\x10\x00\x00\x00")
        .await
        .unwrap();
    let (code, msg) = err_frame(&read_all(&mut tcp).await);
    assert_eq!(code, Code::FrameTooLarge);
    assert!(msg.contains("exceeds"), "{msg}");

    // An oversized DATA frame from a logged-in device.
    let (mut raw, _) = Raw::login(r.addr, "tokyo", PW).await;
    raw.conn
        .stream
        .write_all(&[0x80, 0x7f, 0, 0, 0])
        .await
        .unwrap();
    match raw.recv().await {
        Some(Frame::Err { code, message }) => {
            assert_eq!(code, Code::FrameTooLarge);
            assert!(message.contains("Data"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(raw.recv().await.is_none());

    // A frame cut off in the middle, then the sender's side closes. The
    // relay answers at once with BAD_FRAME naming the cut (not with
    // HANDSHAKE_TIMEOUT at the deadline), counts a protocol error, and
    // the handshake slot is free again.
    r.eventually("earlier handshakes freed", |r| {
        r.metric(|m| &m.pending) == 0
    })
    .await;
    let timeouts_before = r.metric(|m| &m.handshake_timeouts);
    let errors_before = r.metric(|m| &m.protocol_errors);
    let mut tcp = TcpStream::connect(r.addr).await.unwrap();
    tcp.write_all(b"FGRL\x01\x01\x00\x00\x00\x40tok")
        .await
        .unwrap();
    r.eventually("the cut LOGIN waits in the handshake", |r| {
        r.metric(|m| &m.pending) == 1
    })
    .await;
    tcp.shutdown().await.unwrap();
    let (code, msg) = err_frame(&read_all(&mut tcp).await);
    assert_eq!(code, Code::BadFrame);
    assert!(msg.contains("middle of a frame"), "{msg}");
    assert_eq!(r.metric(|m| &m.protocol_errors), errors_before + 1);
    r.eventually("the cut connection's slot freed", |r| {
        r.metric(|m| &m.pending) == 0
    })
    .await;
    assert_eq!(
        r.metric(|m| &m.handshake_timeouts),
        timeouts_before,
        "closed for the cut, not by the deadline"
    );

    // The same after login: a HOLD cut after 2 of its 4 payload bytes.
    let (mut raw, f) = Raw::login(r.addr, "tokyo", PW).await;
    assert!(matches!(f, Frame::LoginOk { .. }), "{f:?}");
    r.eventually("tokyo logged in", |r| r.counts().1 == 1).await;
    raw.conn
        .stream
        .write_all(&[0x03, 0, 0, 0, 4, 0, 0])
        .await
        .unwrap();
    raw.conn.stream.shutdown().await.unwrap();
    match raw.recv().await {
        Some(Frame::Err { code, message }) => {
            assert_eq!(code, Code::BadFrame);
            assert!(message.contains("middle of a frame"), "{message}");
        }
        other => panic!("a HOLD cut in the middle answered {other:?}"),
    }
    assert!(raw.recv().await.is_none(), "closed after the ERR");
    r.eventually("tokyo's cut connection removed", |r| {
        r.counts() == (0, 0, 0, 0)
    })
    .await;

    // A well-formed but malformed LOGIN (bad user ID).
    let mut tcp = TcpStream::connect(r.addr).await.unwrap();
    tcp.write_all(b"FGRL\x01\x01\x00\x00\x00\x09\x00\x03a b\x00\x00\x00\x00")
        .await
        .unwrap();
    let (code, msg) = err_frame(&read_all(&mut tcp).await);
    assert_eq!(code, Code::BadFrame);
    assert!(msg.contains("user ID"), "{msg}");

    // A frame that is valid but not a login.
    let mut tcp = TcpStream::connect(r.addr).await.unwrap();
    tcp.write_all(b"FGRL\x01\x04\x00\x00\x00\x00")
        .await
        .unwrap();
    let (code, msg) = err_frame(&read_all(&mut tcp).await);
    assert_eq!(code, Code::UnexpectedFrame);
    assert!(msg.contains("LOGIN"), "{msg}");

    // A login that never completes: HANDSHAKE_TIMEOUT after the deadline.
    // The deadline runs from the relay's accept, after `started`.
    let started = tokio::time::Instant::now();
    let mut tcp = TcpStream::connect(r.addr).await.unwrap();
    tcp.write_all(b"FGRL\x01\x01\x00").await.unwrap();
    let (code, _) = err_frame(&read_all(&mut tcp).await);
    assert_eq!(code, Code::HandshakeTimeout);
    assert!(started.elapsed() >= Duration::from_millis(2990));

    r.eventually("handshakes freed", |r| r.metric(|m| &m.pending) == 0)
        .await;
    good_session(&r).await;
    assert!(r.metric(|m| &m.protocol_errors) >= 6);
}

/// Garbage inside a session closes the sender's connection; its peer is
/// told with TERMINATE and its connection stays usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_frame_inside_a_session_ends_only_that_side() {
    let r = relay("").await;
    r.add_user("tokyo", &["g"]);
    r.add_user("osaka", &["g"]);
    let (osaka, mut osaka_in) = r.client("osaka", 0, 1).await;
    let (mut raw, _) = Raw::login(r.addr, "tokyo", PW).await;
    raw.send(&Frame::Connect {
        target: "osaka".into(),
    })
    .await;
    let mut s = osaka_in.recv().await.unwrap().accept().await.unwrap();
    assert!(matches!(raw.recv().await, Some(Frame::ConnectOk { .. })));
    raw.send(&Frame::Data(bytes::Bytes::from_static(b"ok")))
        .await;
    raw.send(&Frame::List).await; // not allowed inside a session
    let mut buf = [0u8; 2];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ok");
    let mut rest = Vec::new();
    let e = s.read_to_end(&mut rest).await.unwrap_err();
    assert!(e.to_string().contains("BAD_FRAME"), "{e}");
    s.close().await.unwrap();
    assert!(
        raw.recv().await.is_none(),
        "the violator's connection is closed"
    );
    osaka.wait_vacant(1, Duration::from_secs(5)).await.unwrap();
    r.eventually("osaka vacant at the relay", |r| r.counts().2 == 1)
        .await;
}

/// 1000 connections that never log in: each is closed at the handshake
/// deadline, the per-address cap refuses the excess at once, and a good
/// client from another address is served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_connections_do_not_stop_good_clients() {
    // The first 800 must still be waiting when the last 200 arrive, on
    // however slow a machine: the deadline leaves room for the flood.
    let r = relay("handshake_timeout = \"5s\"\nmax_pending_per_ip = 800\n").await;
    for u in ["good-a", "good-b"] {
        r.add_user(u, &["g"]);
    }
    let flood_src = "127.0.0.2:0".parse().unwrap();
    let mut flood = Vec::new();
    for _ in 0..1000 {
        let sock = TcpSocket::new_v4().unwrap();
        sock.bind(flood_src).unwrap();
        flood.push(sock.connect(r.addr).await.unwrap());
    }
    r.eventually("flood accepted", |r| r.metric(|m| &m.accepted) >= 1000)
        .await;
    // 800 wait in the handshake; 200 were refused at once with a reason.
    // A connection counts as accepted a moment before its refusal is
    // counted, so wait for the refusals themselves.
    r.eventually("the excess refused", |r| {
        r.metric(|m| &m.pending_refused) >= 200
    })
    .await;
    assert!(r.metric(|m| &m.pending) <= 800);
    assert_eq!(r.metric(|m| &m.pending_refused), 200);
    // The good clients come from 127.0.0.1 and are served meanwhile.
    good_session(&r).await;
    let mut refused = 0;
    let mut timed_out = 0;
    for mut tcp in flood {
        let bytes = read_all(&mut tcp).await;
        match err_frame(&bytes).0 {
            Code::TooManyPending => refused += 1,
            Code::HandshakeTimeout => timed_out += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((refused, timed_out), (200, 800));
    r.eventually("all handshakes freed", |r| r.metric(|m| &m.pending) == 0)
        .await;
    good_session(&r).await;
}

/// A relay on TLS only, with a generated certificate; `extra` goes into
/// its `[relay]` section.
async fn tls_relay(extra: &str) -> (RelayServer, tempfile::TempDir, [u8; 32]) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = RelayServerConfig::from_str(&format!(
        "[relay]\nlisten_tls = \"127.0.0.1:0\"\nstate_dir = {:?}\nargon2_memory_kib = 64\nargon2_iterations = 1\n{extra}\n",
        dir.path().display().to_string()
    ))
    .unwrap();
    let server = RelayServer::start(cfg, CancellationToken::new())
        .await
        .unwrap();
    let fp = server.identity.as_ref().unwrap().fingerprint;
    assert!(server.identity.as_ref().unwrap().generated);
    for u in ["tokyo", "osaka"] {
        server
            .shared
            .store()
            .add_user(u, PW, &["g".into()])
            .unwrap();
    }
    (server, dir, fp)
}

fn tls_client(
    server: &RelayServer,
    user: &str,
    pin: &[u8; 32],
) -> faxgate_config::RelayClientConfig {
    let mut c = faxgate_config::RelayClientConfig::from_str(&format!(
        "server = \"{}\"\nuser = \"{user}\"\npassword = \"{PW}\"\nspares = 0\nmax_connections = 2\n",
        server.tls_addr.unwrap()
    ))
    .unwrap();
    c.tls = Some(ClientTlsConfig {
        pin_sha256: Some(faxgate_relay::tls::format_fingerprint(pin)),
        ca_file: None,
        server_name: Some("faxgate-relay".into()),
    });
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_end_to_end_with_the_generated_certificate() {
    let (server, _dir, fp) = tls_relay("").await;
    let (tokyo, _t) = RelayClient::start(tls_client(&server, "tokyo", &fp))
        .await
        .unwrap();
    let (_osaka, mut osaka_in) = RelayClient::start(tls_client(&server, "osaka", &fp))
        .await
        .unwrap();
    let data = pattern(2_000_000, 5);
    let expect = data.clone();
    let b = tokio::spawn(async move {
        let mut s = osaka_in.recv().await.unwrap().accept().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        s.close().await.unwrap();
        got
    });
    let mut s = tokyo.connect("osaka").await.unwrap();
    s.write_all(&data).await.unwrap();
    s.shutdown().await.unwrap();
    let mut nothing = Vec::new();
    s.read_to_end(&mut nothing).await.unwrap();
    s.close().await.unwrap();
    assert!(b.await.unwrap() == expect, "bytes through TLS differ");
    let snap = server.shared.registry.snapshot();
    assert!(
        snap.users
            .iter()
            .flat_map(|u| &u.connections)
            .all(|c| c.tls)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_pinned_to_the_wrong_fingerprint_is_refused() {
    let (server, _dir, mut fp) = tls_relay("").await;
    fp[0] ^= 0x01;
    let err = RelayClient::start(tls_client(&server, "tokyo", &fp))
        .await
        .unwrap_err();
    match &err {
        ClientError::Io(e) => {
            assert!(
                e.to_string().contains("invalid peer certificate"),
                "expected a certificate error, got: {e}"
            );
        }
        other => panic!("expected a TLS certificate error, got {other:?}"),
    }
    assert_eq!(server.shared.registry.counts().1, 0, "nobody logged in");
}

/// Everything a raw connection receives until the relay closes it: the
/// bytes already buffered, then the socket to EOF (or a reset).
async fn rest_of(raw: &mut Raw) -> Vec<u8> {
    let mut out = raw.conn.rbuf.split().to_vec();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), raw.conn.stream.read(&mut buf))
            .await
            .expect("the relay did not close the survivor within 5 s")
        {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// A device dies inside a DATA frame: it sent a header promising 1000
/// bytes, 10 of them, and closed. Its peer's stream cannot be repaired,
/// so the relay forwards what came and closes the peer too (PROTOCOL.md,
/// "Inside a session"); both connections are freed and a good client is
/// served. Tried with the caller dying and with the target dying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_side_dying_inside_a_data_frame_closes_its_peer() {
    let r = relay("").await;
    for u in ["tokyo", "osaka", "good-a", "good-b"] {
        r.add_user(u, &["g"]);
    }
    for caller_dies in [true, false] {
        let (c, t) = bridged_raw(&r, "tokyo", "osaka").await;
        let (mut dying, mut survivor) = if caller_dies { (c, t) } else { (t, c) };
        let mut sent = faxgate_relay::protocol::data_header(1000).to_vec();
        sent.extend_from_slice(b"0123456789");
        dying.conn.stream.write_all(&sent).await.unwrap();
        dying.conn.stream.flush().await.unwrap();
        drop(dying);
        let got = rest_of(&mut survivor).await;
        assert_eq!(
            got, sent,
            "caller_dies={caller_dies}: the survivor gets the cut frame as sent, then the close"
        );
        r.eventually("both connections freed", |r| r.counts() == (0, 0, 0, 0))
            .await;
    }
    good_session(&r).await;
}

/// A device dies between frames: its peer gets the complete DATA, then
/// TERMINATE(PEER_LOST). The peer's DATA and TERMINATE after that are
/// dropped until its RELEASE, and its connection carries a new session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_side_dying_at_a_frame_boundary_gets_its_peer_peer_lost() {
    let r = relay("").await;
    for u in ["tokyo", "osaka", "kyoto", "good-a", "good-b"] {
        r.add_user(u, &["g"]);
    }
    for caller_dies in [true, false] {
        let (c, t) = bridged_raw(&r, "tokyo", "osaka").await;
        let (mut dying, mut survivor, survivor_user) = if caller_dies {
            (c, t, "osaka")
        } else {
            (t, c, "tokyo")
        };
        let data = bytes::Bytes::from_static(b"last words");
        dying.send(&Frame::Data(data.clone())).await;
        drop(dying);
        assert_eq!(survivor.recv().await, Some(Frame::Data(data)));
        assert_eq!(
            survivor.recv().await,
            Some(Frame::Terminate {
                code: Code::PeerLost
            }),
            "caller_dies={caller_dies}"
        );
        // Late DATA and the answering TERMINATE are dropped; RELEASE
        // makes the connection vacant again.
        survivor
            .send(&Frame::Data(bytes::Bytes::from_static(b"into the void")))
            .await;
        survivor
            .send(&Frame::Terminate { code: Code::Normal })
            .await;
        survivor.send(&Frame::Release).await;
        survivor.send(&Frame::Hold { seq: 7 }).await;
        assert_eq!(survivor.recv().await, Some(Frame::HoldAck { seq: 7 }));
        r.eventually("the dead side freed, the survivor vacant", |r| {
            r.counts() == (1, 1, 1, 0)
        })
        .await;
        // The survivor's connection carries the next session.
        let (mut kyoto, f) = Raw::login(r.addr, "kyoto", PW).await;
        assert!(matches!(f, Frame::LoginOk { .. }), "{f:?}");
        kyoto
            .send(&Frame::Connect {
                target: survivor_user.into(),
            })
            .await;
        let Some(Frame::ConnectNotify { session_id, from }) = survivor.recv().await else {
            panic!("the survivor got no CONNECT-NOTIFY");
        };
        assert_eq!(from, "kyoto");
        survivor.send(&Frame::Accept { session_id }).await;
        assert!(matches!(
            survivor.recv().await,
            Some(Frame::ConnectOk { .. })
        ));
        assert!(matches!(kyoto.recv().await, Some(Frame::ConnectOk { .. })));
        let hello = bytes::Bytes::from_static(b"hello again");
        kyoto.send(&Frame::Data(hello.clone())).await;
        assert_eq!(survivor.recv().await, Some(Frame::Data(hello)));
        drop((kyoto, survivor));
        r.eventually("all freed", |r| r.counts() == (0, 0, 0, 0))
            .await;
    }
    good_session(&r).await;
}

/// A receiver that stays connected but stops reading, while its peer
/// sends bulk data and then hangs up: the relay, blocked writing to the
/// receiver, would never read the sender again and so never see it go.
/// After 2.5 hold intervals without progress the bridge ends the session:
/// the stalled receiver is closed, the sender's connection is freed, and
/// the registry lists neither the session nor either connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_stops_reading_ends_the_session_after_a_stall() {
    let r = relay("hold_interval = \"200ms\"\n").await;
    for u in ["tokyo", "osaka"] {
        r.add_user(u, &["g"]);
    }
    let (mut tokyo, osaka) = bridged_raw(&r, "tokyo", "osaka").await;
    socket2::SockRef::from(osaka.conn.stream.tcp())
        .set_recv_buffer_size(4096)
        .unwrap();
    let frame = {
        let mut f = faxgate_relay::protocol::data_header(64 * 1024).to_vec();
        f.extend_from_slice(&pattern(64 * 1024, 9));
        f
    };
    // Until a write blocks (osaka reads nothing, so every buffer on the
    // way fills); bounded, in case the relay frees tokyo first and then
    // drains it.
    for _ in 0..1024 {
        let w = tokyo.conn.stream.write_all(&frame);
        if tokio::time::timeout(Duration::from_millis(300), w)
            .await
            .is_err()
        {
            break;
        }
    }
    drop(tokyo);
    r.eventually("the session and both connections gone", |r| {
        let snap = r.server.shared.registry.snapshot();
        snap.sessions.is_empty() && snap.users.is_empty()
    })
    .await;
    assert_eq!(r.metric(|m| &m.session_stalls), 1);
    drop(osaka);
}

/// The caller vanishes (a reset) while its demand waits: the relay, which
/// reads the caller's connection meanwhile, withdraws the demand at once
/// (NOTIFY-CANCEL well before the 15 s answer deadline), and the target's
/// late ACCEPT is ignored; its connection stays usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_vanishes_while_its_demand_waits_withdraws_it_at_once() {
    let r = relay("").await;
    for u in ["tokyo", "osaka", "good-a", "good-b"] {
        r.add_user(u, &["b"]);
    }
    let (mut c, f) = Raw::login(r.addr, "tokyo", PW).await;
    assert!(matches!(f, Frame::LoginOk { .. }), "{f:?}");
    let (mut t, f) = Raw::login(r.addr, "osaka", PW).await;
    assert!(matches!(f, Frame::LoginOk { .. }), "{f:?}");
    c.send(&Frame::Connect {
        target: "osaka".into(),
    })
    .await;
    let Some(Frame::ConnectNotify { session_id, .. }) = t.recv().await else {
        panic!("no CONNECT-NOTIFY");
    };
    let faxgate_relay::transport::Stream::Plain(tcp) = &c.conn.stream else {
        unreachable!()
    };
    socket2::SockRef::from(tcp)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(c);
    // Raw::recv gives up after 5 s, a third of the answer deadline.
    assert_eq!(
        t.recv().await,
        Some(Frame::NotifyCancel { session_id }),
        "the demand is withdrawn when its caller leaves"
    );
    t.send(&Frame::Accept { session_id }).await;
    t.send(&Frame::Hold { seq: 42 }).await;
    assert_eq!(
        t.recv().await,
        Some(Frame::HoldAck { seq: 42 }),
        "the late ACCEPT is ignored and the target's connection serves on"
    );
    good_session(&r).await;
}

/// An ACCEPT or REJECT for a withdrawn demand that arrives while a newer
/// demand waits is ignored (PROTOCOL.md), not an error; the newer demand
/// is answered as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_answer_to_a_withdrawn_demand_is_ignored() {
    let r = relay("").await;
    r.add_user("tokyo", &["b"]);
    r.add_user("osaka", &["b"]);
    let (mut t, _) = Raw::login(r.addr, "osaka", PW).await;
    let (mut c1, _) = Raw::login(r.addr, "tokyo", PW).await;
    c1.send(&Frame::Connect {
        target: "osaka".into(),
    })
    .await;
    let Some(Frame::ConnectNotify { session_id: s1, .. }) = t.recv().await else {
        panic!("no first CONNECT-NOTIFY");
    };
    drop(c1);
    assert_eq!(
        t.recv().await,
        Some(Frame::NotifyCancel { session_id: s1 }),
        "the first demand is withdrawn when its caller leaves"
    );
    let (mut c2, _) = Raw::login(r.addr, "tokyo", PW).await;
    c2.send(&Frame::Connect {
        target: "osaka".into(),
    })
    .await;
    let Some(Frame::ConnectNotify { session_id: s2, .. }) = t.recv().await else {
        panic!("no second CONNECT-NOTIFY");
    };
    assert_ne!(s1, s2);
    t.send(&Frame::Reject {
        session_id: s1,
        code: Code::Rejected,
    })
    .await;
    t.send(&Frame::Accept { session_id: s1 }).await;
    t.send(&Frame::Accept { session_id: s2 }).await;
    assert!(
        matches!(t.recv().await, Some(Frame::ConnectOk { session_id, .. }) if session_id == s2),
        "the stale answers were not ignored"
    );
    assert!(matches!(c2.recv().await, Some(Frame::ConnectOk { .. })));
}

/// A CONNECT-NOTIFY crosses the device's own CONNECT; the device answers
/// it REJECT(BUSY) while its CONNECT waits, but the target's ACCEPT wins,
/// so the REJECT reaches the relay after the session is bridged. The
/// relay drops it (it answers a demand already refused) instead of
/// taking it for a bad frame: the session carries the caller's DATA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reject_for_a_crossed_notify_that_lands_in_the_session_is_dropped() {
    let r = relay("").await;
    r.add_user("tokyo", &["b"]);
    r.add_user("osaka", &["b"]);
    let (mut osaka_a, _) = Raw::login(r.addr, "osaka", PW).await;
    let (mut osaka_b, _) = Raw::login(r.addr, "osaka", PW).await;
    let (mut tokyo, _) = Raw::login(r.addr, "tokyo", PW).await;
    osaka_a
        .send(&Frame::Connect {
            target: "tokyo".into(),
        })
        .await;
    let Some(Frame::ConnectNotify { session_id: s1, .. }) = tokyo.recv().await else {
        panic!("tokyo got no CONNECT-NOTIFY");
    };
    // tokyo's own CONNECT crosses the notify (the relay refuses osaka A
    // BUSY); osaka B takes it.
    tokyo
        .send(&Frame::Connect {
            target: "osaka".into(),
        })
        .await;
    assert!(
        matches!(
            osaka_a.recv().await,
            Some(Frame::Err {
                code: Code::Busy,
                ..
            })
        ),
        "the crossed demand is refused BUSY"
    );
    let Some(Frame::ConnectNotify { session_id: s2, .. }) = osaka_b.recv().await else {
        panic!("osaka B got no CONNECT-NOTIFY");
    };
    osaka_b.send(&Frame::Accept { session_id: s2 }).await;
    assert!(
        matches!(osaka_b.recv().await, Some(Frame::ConnectOk { session_id, .. }) if session_id == s2)
    );
    // Bridged now: tokyo's answer to the crossed notify comes only now.
    tokyo
        .send(&Frame::Reject {
            session_id: s1,
            code: Code::Busy,
        })
        .await;
    let x = bytes::Bytes::from_static(b"x");
    tokyo.send(&Frame::Data(x.clone())).await;
    assert!(
        matches!(tokyo.recv().await, Some(Frame::ConnectOk { session_id, .. }) if session_id == s2)
    );
    assert_eq!(
        osaka_b.recv().await,
        Some(Frame::Data(x)),
        "the stale REJECT broke the session"
    );
}

/// The target's REJECT code reaches the caller: REJECT(BUSY) (a device
/// that cannot take the notify) as BUSY, any other code as REJECTED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reject_busy_reaches_the_caller_as_busy() {
    let r = relay("").await;
    r.add_user("tokyo", &["b"]);
    r.add_user("osaka", &["b"]);
    let (mut t, _) = Raw::login(r.addr, "osaka", PW).await;
    let (mut c, _) = Raw::login(r.addr, "tokyo", PW).await;
    for (sent, heard) in [
        (Code::Busy, Code::Busy),
        (Code::Rejected, Code::Rejected),
        (Code::Normal, Code::Rejected),
    ] {
        c.send(&Frame::Connect {
            target: "osaka".into(),
        })
        .await;
        let Some(Frame::ConnectNotify { session_id, .. }) = t.recv().await else {
            panic!("no CONNECT-NOTIFY");
        };
        t.send(&Frame::Reject {
            session_id,
            code: sent,
        })
        .await;
        let f = c.recv().await;
        assert!(
            matches!(f, Some(Frame::Err { code, .. }) if code == heard),
            "REJECT({sent}) reached the caller as {f:?}"
        );
    }
}

/// Reads `osaka` slowly but steadily for `secs`: `chunk` bytes every
/// `every`. Returns the bytes read; panics if the relay closes it.
async fn read_slowly(osaka: &mut Raw, chunk: usize, every: Duration, secs: u64) -> usize {
    let end = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut buf = vec![0u8; chunk];
    let mut total = 0;
    while tokio::time::Instant::now() < end {
        let n = osaka.conn.stream.read(&mut buf).await.unwrap();
        assert!(
            n > 0,
            "the relay closed a steady reader after {total} bytes"
        );
        total += n;
        tokio::time::sleep(every).await;
    }
    total
}

/// Floods `tokyo` with 64 KiB DATA frames until a write fails (the
/// session ends, or its kernel gave up on the relay) or the task is
/// aborted. Its socket is tuned as a device's is (`tune_socket` for
/// `hold`).
fn flood(tokyo: Raw, hold: Duration) -> tokio::task::JoinHandle<std::io::Error> {
    faxgate_relay::transport::tune_socket(tokyo.conn.stream.tcp(), hold).unwrap();
    let mut tokyo = tokyo;
    tokio::spawn(async move {
        let mut f = faxgate_relay::protocol::data_header(64 * 1024).to_vec();
        f.extend_from_slice(&pattern(64 * 1024, 11));
        loop {
            if let Err(e) = tokyo.conn.stream.write_all(&f).await {
                return e;
            }
        }
    })
}

/// A receiver that reads slowly but steadily (160 KB/s against a sender
/// that floods) keeps its session: the stall limit (2.5 hold intervals,
/// 2.5 s here) ends only a side that takes nothing. The kernel wakes a
/// writer to a full socket only once a third of its send buffer
/// (autotuned to megabytes) has drained, many seconds at this pace, so
/// the relay counts the receiver's TCP acknowledgements as progress.
/// Meanwhile the relay reads nothing from the sender, whose window stays
/// shut for seconds: the sender's connection must outlast that (a TCP user
/// timeout on a device's socket, which Linux applies to a shut window,
/// ended it after 5 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_steady_reader_is_not_taken_for_a_stall() {
    let r = relay("hold_interval = \"1s\"\n").await;
    for u in ["tokyo", "osaka"] {
        r.add_user(u, &["g"]);
    }
    let (tokyo, mut osaka) = bridged_raw(&r, "tokyo", "osaka").await;
    let sender = flood(tokyo, Duration::from_secs(1));
    let got = read_slowly(&mut osaka, 8192, Duration::from_millis(50), 8).await;
    assert_eq!(r.metric(|m| &m.session_stalls), 0, "cut after {got} bytes");
    assert_eq!(r.server.shared.registry.snapshot().sessions.len(), 1);
    // And the sender's own kernel kept its connection through the
    // backpressure.
    assert!(
        !sender.is_finished(),
        "the sender's writes failed: {:?}",
        sender.await
    );
    sender.abort();
}

/// A raw-frame device on the relay's TLS listener (its generated
/// certificate pinned), logged in as `user`.
async fn tls_raw_login(server: &RelayServer, user: &str, pin: &[u8; 32]) -> Raw {
    let tcp = TcpStream::connect(server.tls_addr.unwrap()).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(faxgate_relay::tls::pinned_client_config(*pin))
        .connect(
            faxgate_relay::tls::server_name("faxgate-relay").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let mut conn = Connection::new(
        Stream::TlsClient(Box::new(tls)),
        faxgate_relay::protocol::MAX_DATA_PAYLOAD,
    );
    conn.stream
        .write_all(&faxgate_relay::protocol::PREAMBLE)
        .await
        .unwrap();
    let (raw, answer) = Raw { conn }.log_in(user, PW).await;
    assert!(matches!(answer, Frame::LoginOk { .. }), "{answer:?}");
    raw
}

/// The same over TLS: the relay's TLS takes plaintext a record at a
/// time, so what a slow reader takes shows first as ciphertext trickling
/// out and then as the peer's acknowledgements; either keeps the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_steady_tls_reader_is_not_taken_for_a_stall() {
    let (server, _dir, fp) = tls_relay("hold_interval = \"1s\"").await;
    let tokyo = tls_raw_login(&server, "tokyo", &fp).await;
    let osaka = tls_raw_login(&server, "osaka", &fp).await;
    let (tokyo, mut osaka) = common::bridge(tokyo, osaka, "osaka").await;
    let sender = flood(tokyo, Duration::from_secs(1));
    let got = read_slowly(&mut osaka, 8192, Duration::from_millis(50), 6).await;
    let stalls = server
        .shared
        .metrics
        .session_stalls
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(stalls, 0, "cut after {got} bytes");
    assert_eq!(server.shared.registry.snapshot().sessions.len(), 1);
    sender.abort();
}
