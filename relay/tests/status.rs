//! The status endpoint under abuse: a request header that never ends, a
//! flood of idle connections, guessed admin tokens, and a kick path that
//! tries to forge a log line. The endpoint keeps serving through all of it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{PW, Raw, http, relay_with};
use faxgate_relay::protocol::Frame;
use faxgate_relay::status::{HEADER_TIMEOUT, MAX_CONNECTIONS};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TAIL: &str = "[status]\nlisten = \"127.0.0.1:0\"\nadmin_token = \"letmein-0123456789\"\n";

/// Reads until EOF; `None` if the server kept the connection open for
/// `limit`.
async fn closed_within(tcp: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    tokio::time::timeout(limit, tcp.read_to_end(&mut out))
        .await
        .ok()
        .map(|_| out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_header_that_never_ends_is_cut_off() {
    let r = relay_with("", TAIL).await;
    let status = r.server.status_addr.unwrap();
    let mut tcp = TcpStream::connect(status).await.unwrap();
    tcp.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let t = Instant::now();
    let got = closed_within(&mut tcp, HEADER_TIMEOUT + Duration::from_secs(10)).await;
    assert!(
        got.is_some(),
        "the connection was still open after {:?}",
        t.elapsed()
    );
    assert!(
        t.elapsed() >= HEADER_TIMEOUT - Duration::from_secs(1),
        "{:?}",
        t.elapsed()
    );
    // And the endpoint still answers.
    let (code, _) = http(status, "GET", "/healthz", None).await;
    assert_eq!(code, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_closed_at_once_and_freed_slots_serve_again() {
    let r = relay_with("", TAIL).await;
    let status = r.server.status_addr.unwrap();
    let mut idle = Vec::new();
    for _ in 0..MAX_CONNECTIONS {
        idle.push(TcpStream::connect(status).await.unwrap());
    }
    // Let the accept loop take them all.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut extra = TcpStream::connect(status).await.unwrap();
    let got = closed_within(&mut extra, Duration::from_secs(5)).await;
    assert_eq!(
        got.as_deref(),
        Some(&b""[..]),
        "the connection over the cap was not closed at once"
    );
    drop(idle);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (code, _) = http(status, "GET", "/healthz", None).await;
    assert_eq!(code, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessed_admin_tokens_are_rate_limited_and_forged_ids_refused() {
    let r = relay_with("", TAIL).await;
    r.add_user("tokyo", &["b"]);
    let (mut raw, _) = Raw::login(r.addr, "tokyo", PW).await;
    let status = r.server.status_addr.unwrap();
    // A user ID with a newline would forge a log line: refused before it
    // is logged or looked up.
    let (code, body) = http(
        status,
        "POST",
        "/admin/kick/x%0AFAKE%20line",
        Some("letmein-0123456789"),
    )
    .await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("not a user ID"), "{body}");
    // Five wrong tokens (of any length) are answered 401, then the
    // address is refused for a while, even with the right token.
    for guess in [
        "wrong",
        "",
        "letmein-0123456788",
        "x".repeat(200).as_str(),
        "letmein",
    ] {
        let (code, _) = http(status, "POST", "/admin/kick/tokyo", Some(guess)).await;
        assert_eq!(code, 401, "{guess}");
    }
    let (code, body) = http(
        status,
        "POST",
        "/admin/kick/tokyo",
        Some("letmein-0123456789"),
    )
    .await;
    assert_eq!(code, 429, "{body}");
    // Nothing was kicked; reads are not limited.
    let (code, body) = http(status, "GET", "/status", None).await;
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["users_logged_in"], 1);
    raw.send(&Frame::Hold { seq: 9 }).await;
    assert!(matches!(
        raw.recv().await,
        Some(Frame::HoldAck { seq: 9, .. })
    ));
}
