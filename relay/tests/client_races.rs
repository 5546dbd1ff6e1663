//! The client library against a scripted relay, for the races a real
//! relay produces only by chance: a demand withdrawn just after the
//! device's ACCEPT, and a demand that crosses the device's LIST. The
//! scripted relay is a test double speaking the real wire protocol (the
//! real relay's side of these races is tested in robustness.rs).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use faxgate_config::{RelayClientConfig, Secret};
use faxgate_relay::connection::Connection;
use faxgate_relay::protocol::{self, Code, Frame, PresenceEntry};
use faxgate_relay::transport::Stream;
use faxgate_relay::{ClientError, RelayClient};
use std::str::FromStr as _;
use std::time::Duration;
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpListener;

/// Accepts one device, checks its preamble and LOGIN, answers LOGIN-OK
/// (no spares are asked for, so it is the only connection).
async fn scripted_relay() -> (RelayClient, faxgate_relay::client::Incoming, Connection) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut cfg = RelayClientConfig::from_str(&format!(
        "server = \"{addr}\"\nuser = \"osaka\"\npassword = \"x\"\nspares = 0\n\
         max_connections = 1\nconnect_timeout = \"15s\"\n"
    ))
    .unwrap();
    cfg.password = Secret::new("pw".into());
    let relay = async {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut preamble = [0u8; 5];
        tcp.read_exact(&mut preamble).await.unwrap();
        assert_eq!(preamble, protocol::PREAMBLE);
        let mut conn = Connection::new(Stream::Plain(tcp), protocol::MAX_DATA_PAYLOAD);
        let login = conn.read_frame().await.unwrap().unwrap();
        assert!(matches!(login, Frame::Login { .. }), "{login:?}");
        conn.write_frame(&Frame::LoginOk {
            conn_id: 1,
            hold_interval_ms: 600_000,
            max_connections: 1,
            token: Some(Secret::new([1u8; protocol::TOKEN_LEN])),
        })
        .await
        .unwrap();
        conn
    };
    let (started, conn) = tokio::join!(RelayClient::start(cfg), relay);
    let (client, incoming) = started.unwrap();
    (client, incoming, conn)
}

/// The next frame from the device, within 2 s (a fraction of the 15 s
/// connect timeout the device would otherwise wait out).
async fn next(conn: &mut Connection) -> Frame {
    tokio::time::timeout(Duration::from_secs(2), conn.read_frame())
        .await
        .expect("no frame from the device within 2 s")
        .unwrap()
        .expect("the device closed its connection")
}

/// The relay withdraws a demand the device has just accepted (its caller
/// left): accept() ends with Withdrawn at once, not after the connect
/// timeout, and the connection stays logged in and vacant.
#[tokio::test]
async fn a_demand_withdrawn_after_accept_is_withdrawn_at_once() {
    let (client, mut incoming, mut relay) = scripted_relay().await;
    relay
        .write_frame(&Frame::ConnectNotify {
            session_id: 7,
            from: "tokyo".into(),
        })
        .await
        .unwrap();
    let demand = incoming.recv().await.unwrap();
    assert_eq!((demand.from.as_str(), demand.session_id), ("tokyo", 7));
    let accepted = tokio::spawn(demand.accept());
    assert_eq!(next(&mut relay).await, Frame::Accept { session_id: 7 });
    relay
        .write_frame(&Frame::NotifyCancel { session_id: 7 })
        .await
        .unwrap();
    let r = tokio::time::timeout(Duration::from_secs(2), accepted)
        .await
        .expect("accept() waited for the connect timeout")
        .unwrap();
    assert!(matches!(r, Err(ClientError::Withdrawn)), "{r:?}");
    // The same connection serves the next request.
    let list = tokio::spawn(async move { client.list().await });
    assert_eq!(next(&mut relay).await, Frame::List);
    relay
        .write_frame(&Frame::ListResult { users: vec![] })
        .await
        .unwrap();
    assert_eq!(list.await.unwrap().unwrap(), vec![]);
}

/// A demand that crosses the device's LIST is refused BUSY at once (the
/// relay answers the LIST and keeps waiting for the demand's answer), and
/// the LIST still gets its result.
#[tokio::test]
async fn a_demand_that_crosses_a_list_is_refused_busy() {
    let (client, _incoming, mut relay) = scripted_relay().await;
    let list = tokio::spawn(async move { client.list().await });
    assert_eq!(next(&mut relay).await, Frame::List);
    relay
        .write_frame(&Frame::ConnectNotify {
            session_id: 9,
            from: "tokyo".into(),
        })
        .await
        .unwrap();
    let users = vec![PresenceEntry {
        user: "tokyo".into(),
        vacant: 1,
        connections: 1,
    }];
    relay
        .write_frame(&Frame::ListResult {
            users: users.clone(),
        })
        .await
        .unwrap();
    assert_eq!(
        next(&mut relay).await,
        Frame::Reject {
            session_id: 9,
            code: Code::Busy
        }
    );
    assert_eq!(list.await.unwrap().unwrap(), users);
}
