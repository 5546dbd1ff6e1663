//! Job ownership and privacy (INFRA.md, "Authentication and ownership"):
//! only a job's owner, or the site's agent, may change a job or see who
//! printed it from where. Without credentials the owner is the same
//! requesting-user-name from the same address; with HTTP Basic
//! credentials it is the authenticated user. 127.0.0.2 (a loopback alias
//! on Linux) plays another client.

use std::net::{IpAddr, Ipv4Addr};

use faxgate_ipp::codes::{job_state, op, status};
use faxgate_ipp::message::{keyword, mime};
use ipp::model::DelimiterTag;
use ipp::prelude::*;

use crate::common::{
    DEVICE_A, Ipp, KYOTO, OSAKA, Req, TWO_SITES, TestFront, Via, config, pdf, post_from, request,
};
use crate::infra::{acknowledge, printer_attrs};

/// The address of every other test's client.
const HERE: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// Another client.
const ELSEWHERE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// The attributes only a job's owner and the site's agent see.
const PRIVATE: [&str; 3] = [
    "job-originating-user-name",
    "job-client-addr",
    "job-client-port",
];

/// Sends `req` (plus `doc`) to osaka over plain HTTP from `from`, without
/// credentials.
async fn send_from(t: &TestFront, from: IpAddr, req: &Req, doc: &[u8]) -> Ipp {
    let mut body = req.bytes();
    body.extend_from_slice(doc);
    let reply = post_from(from, t.plain, "/ipp/print/osaka", body)
        .await
        .unwrap_or_else(|e| panic!("a request from {from}: {e}"));
    assert_eq!(reply.http, 200, "HTTP status of a request from {from}");
    reply.ipp_for(req)
}

fn job_attrs(t: &TestFront, user: &str, job: i32) -> Req {
    t.req(op::GET_JOB_ATTRIBUTES, "osaka", user)
        .op("job-id", IppValue::Integer(job))
        .op("requested-attributes", keyword("all"))
}

fn cancel(t: &TestFront, user: &str, job: i32) -> Req {
    t.req(op::CANCEL_JOB, "osaka", user)
        .op("job-id", IppValue::Integer(job))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_owner_changes_a_job_or_sees_where_it_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let t = TestFront::start(config("1s", "10s", TWO_SITES), dir.path()).await;
    // alice prints from 127.0.0.1.
    let job = t.print("osaka", "alice", &pdf(10)).await;
    let strangers = [("mallory", HERE), ("alice", ELSEWHERE)];

    // The owner sees who printed it and from where...
    let mine = send_from(&t, HERE, &job_attrs(&t, "alice", job), b"").await;
    assert_eq!(mine.status(), status::OK, "{}", mine.message());
    assert_eq!(
        mine.job_str("job-originating-user-name").as_deref(),
        Some("alice")
    );
    assert_eq!(
        mine.job_str("job-client-addr").as_deref(),
        Some("127.0.0.1")
    );
    assert!(mine.job_int("job-client-port").is_some());
    // ...another user, or the same name from another address, does not.
    for (user, addr) in strangers {
        let seen = send_from(&t, addr, &job_attrs(&t, user, job), b"").await;
        assert_eq!(seen.status(), status::OK, "{}", seen.message());
        assert_eq!(seen.job_int("job-state"), Some(job_state::PENDING));
        for name in PRIVATE {
            assert!(
                seen.job_attr(name).is_none(),
                "{user} from {addr} sees {name}: {:?}",
                seen.job_attr(name)
            );
        }
    }
    let list = t
        .req(op::GET_JOBS, "osaka", "mallory")
        .op("which-jobs", keyword("all"))
        .op("requested-attributes", keyword("all"));
    let resp = send_from(&t, HERE, &list, b"").await;
    assert_eq!(resp.status(), status::OK, "{}", resp.message());
    let groups = resp.groups(DelimiterTag::JobAttributes);
    assert_eq!(groups.len(), 1);
    for name in PRIVATE {
        assert!(groups[0].get(name).is_none(), "Get-Jobs shows {name}");
    }
    // The site's agent sees everything.
    let seen = t.agent("osaka", OSAKA, &job_attrs(&t, "osaka", job)).await;
    assert_eq!(
        seen.job_str("job-originating-user-name").as_deref(),
        Some("alice")
    );
    assert_eq!(
        seen.job_str("job-client-addr").as_deref(),
        Some("127.0.0.1")
    );

    // Fetched by the agent: nobody but the owner may cancel it.
    t.register("osaka", OSAKA, DEVICE_A, printer_attrs()).await;
    acknowledge(&t, DEVICE_A, job).await;
    for (user, addr) in strangers {
        let resp = send_from(&t, addr, &cancel(&t, user, job), b"").await;
        assert_eq!(
            resp.status(),
            status::NOT_AUTHORIZED,
            "Cancel-Job by {user} from {addr}: {}",
            resp.message()
        );
    }
    let j = t.job("osaka", job).await;
    assert_eq!(j.job_int("job-state"), Some(job_state::PROCESSING));
    assert!(
        !j.job_strings("job-state-reasons")
            .contains(&"processing-to-stop-point".to_owned())
    );
    let resp = send_from(&t, HERE, &cancel(&t, "alice", job), b"").await;
    assert_eq!(resp.status(), status::OK, "{}", resp.message());
    // The cancel shows to everyone without naming who asked, on the
    // status page too.
    let j = t.job("osaka", job).await;
    assert!(
        j.job_strings("job-state-reasons")
            .contains(&"processing-to-stop-point".to_owned())
    );
    let msg = j.job_str("job-state-message").unwrap_or_default();
    assert!(!msg.contains("alice"), "job-state-message: {msg}");
    let page = request(t.plain, None, "GET", "/ipp/print/osaka", None, vec![], None).await;
    assert_eq!(page.http, 200);
    let text = String::from_utf8_lossy(&page.body);
    assert!(text.contains(&format!("\"id\":{job}")), "{text}");
    assert!(
        !text.contains("alice") && !text.contains("127.0.0.1"),
        "the status page names a client: {text}"
    );

    // A job taking documents: nobody else adds one or closes it.
    let create = t
        .req(op::CREATE_JOB, "osaka", "alice")
        .op("document-format", mime("application/pdf"));
    let resp = send_from(&t, HERE, &create, b"").await;
    assert_eq!(resp.status(), status::OK, "{}", resp.message());
    let open = resp.job_int("job-id").unwrap();
    let send = |user: &str| {
        t.req(op::SEND_DOCUMENT, "osaka", user)
            .op("job-id", IppValue::Integer(open))
            .op("last-document", IppValue::Boolean(true))
            .op("document-format", mime("application/pdf"))
    };
    let close = |user: &str| {
        t.req(op::CLOSE_JOB, "osaka", user)
            .op("job-id", IppValue::Integer(open))
    };
    for (user, addr) in strangers {
        let resp = send_from(&t, addr, &send(user), &pdf(10)).await;
        assert_eq!(
            resp.status(),
            status::NOT_AUTHORIZED,
            "Send-Document by {user} from {addr}: {}",
            resp.message()
        );
        let resp = send_from(&t, addr, &close(user), b"").await;
        assert_eq!(
            resp.status(),
            status::NOT_AUTHORIZED,
            "Close-Job by {user} from {addr}: {}",
            resp.message()
        );
        let resp = send_from(&t, addr, &cancel(&t, user, open), b"").await;
        assert_eq!(resp.status(), status::NOT_AUTHORIZED, "{}", resp.message());
    }
    let j = t.job("osaka", open).await;
    assert_eq!(j.job_int("number-of-documents"), Some(0));
    assert_eq!(j.job_int("job-state"), Some(job_state::PENDING));
    // The owner can.
    let resp = send_from(&t, HERE, &send("alice"), &pdf(10)).await;
    assert_eq!(resp.status(), status::OK, "{}", resp.message());
    assert_eq!(
        t.job("osaka", open).await.job_int("number-of-documents"),
        Some(1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authenticated_requester_is_its_user_whatever_name_it_gives() {
    let dir = tempfile::tempdir().unwrap();
    let t = TestFront::start(config("1s", "10s", TWO_SITES), dir.path()).await;
    // kyoto (a relay user, not osaka's agent) prints with its credentials
    // but calls itself alice.
    let print = t
        .req(op::PRINT_JOB, "osaka", "alice")
        .op("document-format", mime("application/pdf"));
    let reply = t
        .send(Via::Plain, "osaka", &print, &pdf(10), Some(KYOTO))
        .await;
    assert_eq!(reply.http, 200);
    let resp = reply.ipp_for(&print);
    assert_eq!(resp.status(), status::OK, "{}", resp.message());
    let job = resp.job_int("job-id").unwrap();
    let req = job_attrs(&t, "alice", job);
    let seen = t
        .send(Via::Plain, "osaka", &req, b"", Some(KYOTO))
        .await
        .ipp_for(&req);
    assert_eq!(
        seen.job_str("job-originating-user-name").as_deref(),
        Some("kyoto")
    );

    // Without credentials no name owns it, not even from its address: the
    // front asks for them (HTTP 401).
    for user in ["alice", "kyoto"] {
        let req = cancel(&t, user, job);
        let reply = t.send(Via::Plain, "osaka", &req, b"", None).await;
        assert_eq!(reply.http, 401, "Cancel-Job as {user} without credentials");
        assert_eq!(reply.ipp_for(&req).status(), status::NOT_AUTHENTICATED);
    }
    // Wrong credentials are refused, not ignored.
    let req = cancel(&t, "kyoto", job);
    let reply = t
        .send(Via::Plain, "osaka", &req, b"", Some(("kyoto", "wrong")))
        .await;
    assert_eq!(reply.http, 401);
    assert_eq!(
        t.job("osaka", job).await.job_int("job-state"),
        Some(job_state::PENDING)
    );
    // With them, whatever name the request gives.
    let req = cancel(&t, "someone", job);
    let resp = t
        .send(Via::Plain, "osaka", &req, b"", Some(KYOTO))
        .await
        .ipp_for(&req);
    assert_eq!(resp.status(), status::OK, "{}", resp.message());
    assert_eq!(
        t.job("osaka", job).await.job_int("job-state"),
        Some(job_state::CANCELED)
    );
}
