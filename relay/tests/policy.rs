//! Limits and access policy: the per-user connection cap and ACLs other
//! than the default same-group rule.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{PW, Raw, relay};
use faxgate_relay::RelayClient;
use faxgate_relay::client::Incoming;
use faxgate_relay::protocol::{Code, Frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A password login or a RESUME beyond `max_connections_per_user` gets
/// `ERR(TOO_MANY_CONNECTIONS)` and a close; closing one connection makes
/// room again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_per_user_maximum_are_refused() {
    let r = relay("max_connections_per_user = 2\n").await;
    r.add_user("tokyo", &["g"]);
    let (first, f) = Raw::login(r.addr, "tokyo", PW).await;
    let Frame::LoginOk {
        max_connections,
        token,
        ..
    } = f
    else {
        panic!("{f:?}")
    };
    assert_eq!(max_connections, 2, "LOGIN-OK announces the maximum");
    let token = token.unwrap();
    let (_second, f) = Raw::login(r.addr, "tokyo", PW).await;
    assert!(matches!(f, Frame::LoginOk { .. }), "{f:?}");

    let (mut third, f) = Raw::login(r.addr, "tokyo", PW).await;
    match f {
        Frame::Err { code, message } => {
            assert_eq!(code, Code::TooManyConnections, "{message}");
            assert!(message.contains("at most 2"), "{message}");
        }
        other => panic!("expected TOO_MANY_CONNECTIONS, got {other:?}"),
    }
    assert!(third.recv().await.is_none(), "refused login is closed");

    let mut spare = Raw::open(r.addr).await;
    spare
        .send(&Frame::Resume {
            user: "tokyo".into(),
            token: token.clone(),
        })
        .await;
    assert!(
        matches!(
            spare.recv().await,
            Some(Frame::Err {
                code: Code::TooManyConnections,
                ..
            })
        ),
        "a RESUME counts against the same maximum"
    );
    assert!(spare.recv().await.is_none());
    assert_eq!(r.counts().1, 2, "the refused ones were never added");
    assert_eq!(r.metric(|m| &m.logins), 2);

    drop(first);
    r.eventually("one connection closed", |r| r.counts().1 == 1)
        .await;
    let mut spare = Raw::open(r.addr).await;
    spare
        .send(&Frame::Resume {
            user: "tokyo".into(),
            token,
        })
        .await;
    assert!(
        matches!(spare.recv().await, Some(Frame::LoginOk { .. })),
        "room again after a close"
    );
    assert_eq!(r.counts().1, 2);
}

fn names(list: &[faxgate_relay::protocol::PresenceEntry]) -> Vec<&str> {
    list.iter().map(|u| u.user.as_str()).collect()
}

/// `caller` reaches `target` through a whole session.
async fn reaches(r: &common::Relay, caller: &RelayClient, target_in: &mut Incoming, target: &str) {
    let callee = async {
        let d = target_in.recv().await.unwrap();
        assert_eq!(d.from, caller.user());
        let mut s = d.accept().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        s.close().await.unwrap();
        got
    };
    let call = async {
        let mut s = caller
            .connect(target)
            .await
            .unwrap_or_else(|e| panic!("{} -> {target}: {e}", caller.user()));
        s.write_all(b"hello").await.unwrap();
        s.shutdown().await.unwrap();
        let mut nothing = Vec::new();
        s.read_to_end(&mut nothing).await.unwrap();
        s.close().await.unwrap();
    };
    let (got, ()) = tokio::join!(callee, call);
    assert_eq!(got, b"hello");
    // The clients count their connections vacant before the relay has
    // read their RELEASEs: wait for the relay too, so that the next
    // CONNECT does not find the target BUSY.
    r.eventually("the session over at the relay", |r| {
        let (_, conns, vacant, sessions) = r.counts();
        sessions == 0 && vacant == conns
    })
    .await;
}

/// `default = "none"` with directed allow rules: hq reaches everyone,
/// branches reach hq only (not each other, though they share a group),
/// europe reaches nobody. LIST and CONNECT agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_none_with_allow_rules_governs_list_and_connect() {
    let r = relay(
        "[relay.acl]\ndefault = \"none\"\n\
         [[relay.acl.allow]]\nfrom = \"hq\"\nto = \"*\"\n\
         [[relay.acl.allow]]\nfrom = \"branches\"\nto = \"hq\"\n",
    )
    .await;
    r.add_user("boss", &["hq"]);
    r.add_user("tokyo", &["branches"]);
    r.add_user("osaka", &["branches"]);
    r.add_user("paris", &["europe"]);
    let (boss, mut boss_in) = r.client("boss", 0, 2).await;
    let (tokyo, _tokyo_in) = r.client("tokyo", 0, 2).await;
    let (_osaka, _osaka_in) = r.client("osaka", 0, 2).await;
    let (paris, mut paris_in) = r.client("paris", 0, 2).await;

    assert_eq!(
        names(&boss.list().await.unwrap()),
        ["boss", "osaka", "paris", "tokyo"]
    );
    assert_eq!(
        names(&tokyo.list().await.unwrap()),
        ["boss", "tokyo"],
        "same group is not enough under default = none"
    );
    assert_eq!(names(&paris.list().await.unwrap()), ["paris"]);

    let e = tokyo.connect("osaka").await.unwrap_err();
    assert_eq!(e.code(), Some(Code::Forbidden), "{e}");
    let e = paris.connect("boss").await.unwrap_err();
    assert_eq!(e.code(), Some(Code::Forbidden), "rules are directed: {e}");
    reaches(&r, &tokyo, &mut boss_in, "boss").await;
    reaches(&r, &boss, &mut paris_in, "paris").await;
    assert_eq!(r.metric(|m| &m.connect_forbidden), 2);
    assert_eq!(r.metric(|m| &m.sessions), 2);
}

/// `default = "all"`: groups do not matter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_all_lets_everyone_see_and_reach_everyone() {
    let r = relay("[relay.acl]\ndefault = \"all\"\n").await;
    r.add_user("tokyo", &["branches"]);
    r.add_user("paris", &["europe"]);
    r.add_user("loner", &[]);
    let (_tokyo, mut tokyo_in) = r.client("tokyo", 0, 2).await;
    let (paris, _paris_in) = r.client("paris", 0, 2).await;
    let (loner, _loner_in) = r.client("loner", 0, 2).await;
    assert_eq!(
        names(&loner.list().await.unwrap()),
        ["loner", "paris", "tokyo"]
    );
    reaches(&r, &paris, &mut tokyo_in, "tokyo").await;
    reaches(&r, &loner, &mut tokyo_in, "tokyo").await;
    assert_eq!(r.metric(|m| &m.connect_forbidden), 0);
}

/// After an admin kick the client library must not come straight back:
/// PROTOCOL.md says "a device that was kicked waits its longest reconnect
/// backoff", so it is back no sooner than `reconnect_max` (1 s here),
/// however short `reconnect_initial` is. It must come back in the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kicked_client_waits_before_it_reconnects() {
    let r = relay("").await;
    r.add_user("tokyo", &["g"]);
    let mut cfg = r.client_config("tokyo");
    cfg.spares = 0;
    cfg.max_connections = 1;
    cfg.reconnect_initial = std::time::Duration::from_millis(20);
    cfg.reconnect_max = std::time::Duration::from_secs(1);
    let (tokyo, _in) = RelayClient::start(cfg).await.unwrap();
    r.eventually("tokyo logged in", |r| r.counts().1 == 1).await;
    let conn_ids = |r: &common::Relay| -> Vec<u64> {
        r.users()
            .iter()
            .flat_map(|u| u.connections.iter().map(|c| c.id))
            .collect()
    };
    let before = conn_ids(&r);
    let kicked_at = tokio::time::Instant::now();
    assert_eq!(
        r.server.shared.registry.close_user("tokyo", Code::Kicked),
        1
    );
    let deadline = kicked_at + std::time::Duration::from_secs(4);
    loop {
        let now = conn_ids(&r);
        if !now.is_empty() && now != before {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the kicked client never came back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let back_after = kicked_at.elapsed();
    assert!(
        back_after >= std::time::Duration::from_secs(1),
        "the kicked client was back after {back_after:?}; expected at least reconnect_max (1 s)"
    );
    // The relay registers the connection before its LOGIN reply reaches
    // the client, so the client's own count follows a moment later.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while tokyo.status().connections != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay has tokyo's new connection but the client counts {}",
            tokyo.status().connections
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}
