//! Backpressure through the bridge: a slow receiver holds the sender
//! back, and every byte arrives, in order.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{PW, Raw, pattern, relay};
use faxgate_config::Secret;
use faxgate_relay::bridge::BRIDGE_BUF;
use faxgate_relay::connection::Connection;
use faxgate_relay::protocol::{self, Code, Frame, PREAMBLE};
use faxgate_relay::transport::Stream;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

/// The third field of `/proc/sys/net/ipv4/tcp_{w,r}mem`: the most a
/// socket's send or receive buffer may grow to by autotuning.
fn tcp_mem_max(which: &str) -> u64 {
    let path = format!("/proc/sys/net/ipv4/tcp_{which}");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.split_whitespace().nth(2).unwrap().parse().unwrap()
}

/// Logs in over a socket whose send and receive buffers are fixed at
/// `buf` bytes (which turns autotuning off for them). Returns the raw
/// connection and the sizes the kernel granted (it doubles the request).
async fn login_fixed(addr: SocketAddr, user: &str, buf: u32) -> (Raw, u64, u64) {
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_send_buffer_size(buf).unwrap();
    sock.set_recv_buffer_size(buf).unwrap();
    let (snd, rcv) = (
        u64::from(sock.send_buffer_size().unwrap()),
        u64::from(sock.recv_buffer_size().unwrap()),
    );
    let tcp = sock.connect(addr).await.unwrap();
    let mut conn = Connection::new(Stream::Plain(tcp), protocol::MAX_DATA_PAYLOAD);
    conn.stream.write_all(&PREAMBLE).await.unwrap();
    let mut raw = Raw { conn };
    raw.send(&Frame::Login {
        user: user.into(),
        password: Secret::new(PW.into()),
        client: "backpressure-test".into(),
    })
    .await;
    assert!(matches!(raw.recv().await, Some(Frame::LoginOk { .. })));
    (raw, snd, rcv)
}

/// tokyo writes as fast as it can; osaka reads at most 64 KiB at a time with a
/// pause after each read. When tokyo's last write returns, every byte not
/// yet read by osaka must sit in a bounded place:
///
/// * tokyo's send buffer (fixed, `snd`),
/// * the relay's receive buffer from tokyo (autotuned, at most
///   `tcp_rmem[2]`),
/// * the bridge's buffer for that direction (`BRIDGE_BUF`; counted twice
///   for the headroom its `reserve` may add),
/// * the relay's send buffer to osaka (at most `tcp_wmem[2]`),
/// * osaka's receive buffer (fixed, `rcv`).
///
/// So osaka has read at least `total - bound` by then. The test sends
/// `bound + 16 MiB`, so a relay that buffered without limit (reading
/// tokyo at full speed) fails: osaka would have read a few MiB at most.
/// Then the whole stream, frame headers and TERMINATE included, must
/// arrive exactly as sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_receiver_holds_the_sender_back_and_loses_nothing() {
    let r = relay("").await;
    r.add_user("tokyo", &["g"]);
    r.add_user("osaka", &["g"]);
    let (mut tokyo, snd, _) = login_fixed(r.addr, "tokyo", 128 * 1024).await;
    let (mut osaka, _, rcv) = login_fixed(r.addr, "osaka", 128 * 1024).await;
    tokyo
        .send(&Frame::Connect {
            target: "osaka".into(),
        })
        .await;
    let Some(Frame::ConnectNotify { session_id, .. }) = osaka.recv().await else {
        panic!("osaka got no CONNECT-NOTIFY");
    };
    osaka.send(&Frame::Accept { session_id }).await;
    assert!(matches!(osaka.recv().await, Some(Frame::ConnectOk { .. })));
    assert!(matches!(tokyo.recv().await, Some(Frame::ConnectOk { .. })));
    assert!(osaka.conn.rbuf.is_empty() && tokyo.conn.rbuf.is_empty());

    let bound = snd + tcp_mem_max("rmem") + 2 * BRIDGE_BUF as u64 + tcp_mem_max("wmem") + rcv;
    let payload_len = (bound + 16 * 1024 * 1024) as usize;
    // The wire image: DATA frames of 256 KiB (what implementations send),
    // then TERMINATE(NORMAL).
    let payload = pattern(payload_len, 42);
    let mut wire = Vec::with_capacity(payload_len + payload_len / 1000 + 64);
    for chunk in payload.chunks(256 * 1024) {
        wire.extend_from_slice(&protocol::data_header(chunk.len()));
        wire.extend_from_slice(chunk);
    }
    drop(payload);
    wire.extend_from_slice(&[0x81, 0, 0, 0, 2, 0, 0]);
    let wire = Arc::new(wire);
    let total = wire.len() as u64;

    let read_so_far = Arc::new(AtomicU64::new(0));
    let reader = {
        let read_so_far = Arc::clone(&read_so_far);
        tokio::spawn(async move {
            let mut got = Vec::with_capacity(total as usize);
            let mut buf = vec![0u8; 64 * 1024];
            while (got.len() as u64) < total {
                let n =
                    tokio::time::timeout(Duration::from_secs(10), osaka.conn.stream.read(&mut buf))
                        .await
                        .expect("the stream stalled for 10 s")
                        .unwrap();
                assert!(n > 0, "closed after {} of {total} bytes", got.len());
                got.extend_from_slice(&buf[..n]);
                read_so_far.store(got.len() as u64, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            (osaka, got)
        })
    };
    for piece in wire.chunks(64 * 1024) {
        tokyo.conn.stream.write_all(piece).await.unwrap();
    }
    let read_when_sent = read_so_far.load(Ordering::SeqCst);
    let (mut osaka, got) = reader.await.unwrap();
    eprintln!(
        "sent {total} bytes; {read_when_sent} read when the sender finished \
         ({} in flight, bound {bound})",
        total - read_when_sent
    );

    assert!(
        read_when_sent + bound >= total,
        "the sender finished when the receiver had read only {read_when_sent} of {total} \
         bytes; at most {bound} can be in buffers, so the relay did not hold the sender back"
    );
    assert_eq!(got.len() as u64, total);
    if let Some(i) = got.iter().zip(wire.iter()).position(|(a, b)| a != b) {
        panic!("the stream differs first at byte {i} of {total}");
    }
    // osaka answers; the session ends cleanly.
    let t = Frame::Terminate { code: Code::Normal };
    osaka.send(&t).await;
    assert_eq!(tokyo.recv().await, Some(t));
    r.eventually("session over", |r| r.counts().3 == 0).await;
    assert_eq!(r.metric(|m| &m.bytes_up), total);
}
