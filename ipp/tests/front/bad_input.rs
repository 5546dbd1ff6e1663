//! Malformed requests: each gets its status code (with the request-id
//! echoed when the header was readable), and the front keeps serving.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use faxgate_ipp::codes::{op, status};
use ipp::model::DelimiterTag;

use crate::common::{
    Ipp, TWO_SITES, TestFront, Via, config, eventually, post, post_from, request, try_post,
};

/// A header and operation attributes up to and including `printer-uri`,
/// without the end tag. `charset` / `language` leave those out when
/// false.
fn prefix(version: [u8; 2], request_id: i32, charset: bool, language: bool) -> Vec<u8> {
    let mut raw = vec![version[0], version[1]];
    raw.extend(op::GET_PRINTER_ATTRIBUTES.to_be_bytes());
    raw.extend(request_id.to_be_bytes());
    raw.push(0x01);
    if charset {
        value(&mut raw, 0x47, "attributes-charset", b"utf-8");
    }
    if language {
        value(&mut raw, 0x48, "attributes-natural-language", b"en");
    }
    value(
        &mut raw,
        0x45,
        "printer-uri",
        b"ipp://127.0.0.1/ipp/print/osaka",
    );
    raw
}

/// Appends one attribute: tag, name, value (lengths from the slices).
fn value(raw: &mut Vec<u8>, tag: u8, name: &str, v: &[u8]) {
    raw.push(tag);
    raw.extend((name.len() as u16).to_be_bytes());
    raw.extend(name.as_bytes());
    raw.extend((v.len() as u16).to_be_bytes());
    raw.extend(v);
}

fn with(mut raw: Vec<u8>, tail: &[u8]) -> Vec<u8> {
    raw.extend_from_slice(tail);
    raw
}

/// The front answers a well-formed request normally.
async fn still_serving(t: &TestFront) {
    let req = t.req(op::GET_PRINTER_ATTRIBUTES, "osaka", "tester");
    let resp = t.client("osaka", &req, b"").await;
    assert_eq!(resp.status(), status::OK, "{}", resp.message());
    assert_eq!(
        resp.printer_strings("printer-name"),
        ["osaka"],
        "the healthy request is answered in full"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_their_status_and_the_front_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let t = TestFront::start(config("1s", "5s", TWO_SITES), dir.path()).await;
    let good = |id| prefix([2, 0], id, true, true);
    // (case, body, status, request-id the answer must carry)
    let cases: Vec<(&str, Vec<u8>, u16, i32)> = vec![
        (
            "version 0.0",
            with(prefix([0, 0], 4242, true, true), &[0x03]),
            status::VERSION_NOT_SUPPORTED,
            4242,
        ),
        (
            "version 3.0",
            with(prefix([3, 0], 4243, true, true), &[0x03]),
            status::VERSION_NOT_SUPPORTED,
            4243,
        ),
        (
            "no attributes-charset",
            with(prefix([2, 0], 11, false, true), &[0x03]),
            status::BAD_REQUEST,
            11,
        ),
        (
            "no attributes-natural-language",
            with(prefix([2, 0], 12, true, false), &[0x03]),
            status::BAD_REQUEST,
            12,
        ),
        (
            "no operation group at all",
            vec![2, 0, 0, 0x0b, 0, 0, 0, 13, 0x03],
            status::BAD_REQUEST,
            13,
        ),
        (
            "cut inside a value",
            {
                let mut raw = good(14);
                raw.push(0x42);
                raw.extend(8u16.to_be_bytes());
                raw.extend(b"job-name");
                raw.extend(20u16.to_be_bytes());
                raw.extend(b"only5");
                raw
            },
            status::BAD_REQUEST,
            14,
        ),
        (
            "cut inside a name",
            with(good(15), &[0x44, 0x00, 0x10, b'w', b'h']),
            status::BAD_REQUEST,
            15,
        ),
        (
            "no end-of-attributes tag",
            good(16),
            status::BAD_REQUEST,
            16,
        ),
        (
            "value length 0xffff with three bytes",
            with(
                good(17),
                &[0x44, 0, 1, b'x', 0xff, 0xff, b'a', b'b', b'c', 0x03],
            ),
            status::BAD_REQUEST,
            17,
        ),
        (
            "name length 0xffff with two bytes",
            with(good(18), &[0x44, 0xff, 0xff, b'a', b'b']),
            status::BAD_REQUEST,
            18,
        ),
        (
            "value tag 0x7f",
            with(good(19), &[0x7f, 0, 1, b'x', 0, 1, b'y', 0x03]),
            status::BAD_REQUEST,
            19,
        ),
        (
            "tag 0xff",
            with(good(20), &[0xff, 0, 1, b'x', 0, 0, 0x03]),
            status::BAD_REQUEST,
            20,
        ),
        (
            "delimiter tag 0x0f",
            with(good(21), &[0x0f, 0x03]),
            status::BAD_REQUEST,
            21,
        ),
        (
            "keyword longer than 255 octets",
            {
                let mut raw = good(22);
                value(&mut raw, 0x44, "which-jobs", &[b'a'; 300]);
                raw.push(0x03);
                raw
            },
            status::BAD_REQUEST,
            22,
        ),
        (
            "request-id 0",
            with(prefix([1, 1], 0, true, true), &[0x03]),
            status::BAD_REQUEST,
            0,
        ),
        (
            "request-id negative",
            with(prefix([1, 1], -5, true, true), &[0x03]),
            status::BAD_REQUEST,
            -5,
        ),
    ];
    for (case, body, code, id) in cases {
        let reply = post(t.plain, None, "/ipp/print/osaka", body, None).await;
        assert_eq!(reply.http, 200, "{case}: HTTP status");
        assert_eq!(
            reply.content_type.as_deref(),
            Some("application/ipp"),
            "{case}"
        );
        let resp = reply.ipp();
        assert_eq!(
            resp.status(),
            code,
            "{case}: status 0x{:04x} ({})",
            resp.status(),
            resp.message()
        );
        assert_eq!(resp.header.request_id, id, "{case}: request-id echoed");
        assert!(!resp.message().is_empty(), "{case}: a status-message");
        assert!(
            matches!(resp.header.version.0, 0x0101 | 0x0200),
            "{case}: answered in a version the front speaks, not 0x{:04x}",
            resp.header.version.0
        );
        still_serving(&t).await;
    }
    // A header cut short: nothing to echo, but still an IPP answer.
    for short in [vec![], vec![0x02, 0x00, 0x00]] {
        let reply = post(t.plain, None, "/ipp/print/osaka", short.clone(), None).await;
        assert_eq!(reply.http, 200);
        assert_eq!(reply.ipp().status(), status::BAD_REQUEST, "{short:?}");
        still_serving(&t).await;
    }
    // The same over TLS.
    let reply = post(
        t.tls,
        Some(&t.client_tls),
        "/ipp/print/osaka",
        with(good(30), &[0x7f, 0x03]),
        None,
    )
    .await;
    assert_eq!(reply.ipp().status(), status::BAD_REQUEST);
    assert_eq!(reply.ipp().header.request_id, 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attributes_over_one_mib_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let t = TestFront::start(config("1s", "5s", TWO_SITES), dir.path()).await;
    let mut raw = prefix([2, 0], 77, true, true);
    raw.push(0x02);
    let mut n = 0;
    // octetString values have no length limit of their own: only the
    // 1 MiB bound on the attributes stops this request.
    while raw.len() < (1 << 20) + 100 {
        value(&mut raw, 0x30, &format!("x-pad-{n}"), &[0x5a; 60_000]);
        n += 1;
    }
    raw.push(0x03);
    let reply = post(t.plain, None, "/ipp/print/osaka", raw, None).await;
    assert_eq!(reply.http, 200);
    let resp = reply.ipp();
    assert!(
        matches!(
            resp.status(),
            status::REQUEST_ENTITY_TOO_LARGE | status::BAD_REQUEST
        ),
        "status 0x{:04x} ({})",
        resp.status(),
        resp.message()
    );
    assert_eq!(resp.header.request_id, 77);
    still_serving(&t).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_is_not_application_ipp_is_http_415() {
    let dir = tempfile::tempdir().unwrap();
    let t = TestFront::start(config("1s", "5s", TWO_SITES), dir.path()).await;
    let body = t.req(op::GET_PRINTER_ATTRIBUTES, "osaka", "tester").bytes();
    for ct in [Some("text/plain"), Some("application/json"), None] {
        let reply = request(
            t.plain,
            None,
            "POST",
            "/ipp/print/osaka",
            ct,
            body.clone(),
            None,
        )
        .await;
        assert_eq!(reply.http, 415, "Content-Type {ct:?}");
    }
    still_serving(&t).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_description_document_offers_long_poll_and_poll() {
    let dir = tempfile::tempdir().unwrap();
    let t = TestFront::start(config("2s", "5s", TWO_SITES), dir.path()).await;
    for via in [Via::Plain, Via::Tls] {
        let reply = request(
            t.addr(via),
            t.tls_for(via),
            "GET",
            "/.well-known/faxgate-infra.json",
            None,
            Vec::new(),
            None,
        )
        .await;
        assert_eq!(reply.http, 200, "{via:?}");
        assert_eq!(reply.content_type.as_deref(), Some("application/json"));
        let doc: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(doc["version"], 1);
        assert_eq!(doc["printers_path"], "/ipp/print/");
        assert_eq!(doc["transports"], serde_json::json!(["long-poll", "poll"]));
        assert_eq!(
            doc["wake_up"],
            serde_json::json!(["command-mail", "always-attached"])
        );
        assert_eq!(doc["notify_wait_seconds"], 2);
        assert_eq!(doc["agent_lease_seconds"], 5);
        assert_eq!(doc["poll_interval_min_seconds"], 1);
        assert_eq!(doc["tls_required_for_agents"], true);
    }
    // A GET of anything else the front does not know is a 404.
    let reply = request(t.plain, None, "GET", "/favicon.ico", None, vec![], None).await;
    assert_eq!(reply.http, 404);
    // An unknown site is an IPP not-found.
    let req = t.req(op::GET_PRINTER_ATTRIBUTES, "nara", "tester");
    let resp = t.client("nara", &req, b"").await;
    assert_eq!(resp.status(), status::NOT_FOUND);
    assert!(resp.groups(DelimiterTag::PrinterAttributes).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_with_language_value_with_a_bad_inner_length_is_a_bad_request() {
    let dir = tempfile::tempdir().unwrap();
    let t = TestFront::start(config("1s", "5s", TWO_SITES), dir.path()).await;
    // textWithLanguage (0x35) and nameWithLanguage (0x36) values hold two
    // length-prefixed strings; here the first length (0x1e1e) runs past
    // the 4-octet value. Found by the fuzzer (ipp/fuzz).
    for (tag, id) in [(0x35u8, 91), (0x36, 92)] {
        let mut raw = prefix([2, 0], id, true, true);
        value(&mut raw, tag, "job-name", &[0x1e, 0x1e, b'e', b'n']);
        raw.push(0x03);
        let reply = try_post(t.plain, "/ipp/print/osaka", raw).await;
        let reply = match reply {
            Ok(r) => r,
            Err(e) => panic!(
                "tag 0x{tag:02x}: the front dropped the connection instead of answering \
                 client-error-bad-request ({e})"
            ),
        };
        assert_eq!(reply.http, 200);
        let resp = reply.ipp();
        assert_eq!(resp.status(), status::BAD_REQUEST, "{}", resp.message());
        assert_eq!(resp.header.request_id, id);
    }
    still_serving(&t).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collections_nested_too_deep_are_a_bad_request() {
    let dir = tempfile::tempdir().unwrap();
    let t = TestFront::start(config("1s", "5s", TWO_SITES), dir.path()).await;
    // 10,000 nested collections in 160 KB: the `ipp` crate clones and
    // drops a collection recursively, so a parse of this would overflow a
    // worker's stack and abort the process. The front refuses it first.
    let mut raw = prefix([2, 0], 93, true, true);
    value(&mut raw, 0x34, "media-col", b"");
    for _ in 0..10_000 {
        value(&mut raw, 0x4a, "", b"m");
        value(&mut raw, 0x34, "", b"");
    }
    for _ in 0..=10_000 {
        value(&mut raw, 0x37, "", b"");
    }
    raw.push(0x03);
    let reply = try_post(t.plain, "/ipp/print/osaka", raw)
        .await
        .expect("the front answers instead of dropping the connection");
    assert_eq!(reply.http, 200);
    let resp = reply.ipp();
    assert_eq!(resp.status(), status::BAD_REQUEST, "{}", resp.message());
    assert!(
        resp.message().contains("nested"),
        "the message names the nesting: {}",
        resp.message()
    );
    assert_eq!(resp.header.request_id, 93);

    // Nesting as deep as the limit still parses.
    let mut raw = prefix([2, 0], 94, true, true);
    raw.push(0x03);
    let mut ok = raw[..raw.len() - 1].to_vec();
    value(&mut ok, 0x34, "media-col", b"");
    for _ in 1..faxgate_ipp::message::MAX_COLLECTION_DEPTH {
        value(&mut ok, 0x4a, "", b"m");
        value(&mut ok, 0x34, "", b"");
    }
    for _ in 0..faxgate_ipp::message::MAX_COLLECTION_DEPTH {
        value(&mut ok, 0x37, "", b"");
    }
    ok.push(0x03);
    let reply = try_post(t.plain, "/ipp/print/osaka", ok).await.unwrap();
    assert_eq!(
        reply.ipp().status(),
        status::OK,
        "{}",
        reply.ipp().message()
    );
    still_serving(&t).await;
}

/// A client that sends a request's headers and then nothing is answered
/// with client-error-timeout and cut off once the body has made no
/// progress for `ipp.body_stall_timeout` (3 s here; it used to hold its
/// connection and task forever), and the front serves others meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_that_stalls_is_cut_off_and_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config("1s", "5s", TWO_SITES);
    cfg.body_stall_timeout = Duration::from_secs(3);
    let t = TestFront::start(cfg, dir.path()).await;
    let stalled = post_headers(&t, 4096).await;
    let started = tokio::time::Instant::now();
    still_serving(&t).await;
    let resp = cut_off(stalled, true).await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(2500),
        "cut off after {waited:?}, before the 3 s stall timeout"
    );
    assert_eq!(resp.status(), status::TIMEOUT, "{}", resp.message());
    assert!(resp.message().contains("stalled"), "{}", resp.message());
    still_serving(&t).await;
}

/// A connection to osaka's site that has sent the headers of a POST of
/// `length` bytes, and nothing of its body yet.
async fn post_headers(t: &TestFront, length: usize) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt as _;
    let mut conn = tokio::net::TcpStream::connect(t.plain).await.unwrap();
    let head = format!(
        "POST /ipp/print/osaka HTTP/1.1\r\nHost: {}\r\nContent-Type: application/ipp\r\n\
         Content-Length: {length}\r\n\r\n",
        t.plain
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn
}

/// The IPP answer on a connection the front closes after it (within
/// 20 s), with HTTP 200. `clean`: the close must be clean (a client still
/// writing may see a reset after the answer instead).
async fn cut_off(mut conn: impl tokio::io::AsyncRead + Unpin, clean: bool) -> Ipp {
    use tokio::io::AsyncReadExt as _;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), conn.read_to_end(&mut answer))
        .await
        .expect("the request still held its connection after 20 s");
    if clean {
        read.expect("the connection ends cleanly");
    }
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let body = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| at + 4)
        .unwrap_or_else(|| panic!("no end of the HTTP head: {text}"));
    Ipp::parse(&answer[body..])
}

/// A body that trickles in (a few bytes every 100 ms: it never stalls)
/// is cut off once it has averaged less than `ipp.min_body_rate` past
/// the stall timeout, so trickling clients cannot hold the front's
/// connections; a request at a normal pace is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_trickles_below_the_minimum_rate_is_cut_off() {
    use tokio::io::AsyncWriteExt as _;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config("1s", "5s", TWO_SITES);
    cfg.body_stall_timeout = Duration::from_secs(1);
    cfg.min_body_rate = 1000;
    let t = TestFront::start(cfg, dir.path()).await;
    let (rd, mut wr) = post_headers(&t, 100_000).await.into_split();
    let trickle = tokio::spawn(async move {
        // 10 bytes every 100 ms: 100 bytes a second.
        while wr.write_all(&[0x02; 10]).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    still_serving(&t).await;
    let resp = cut_off(rd, false).await;
    trickle.abort();
    assert_eq!(resp.status(), status::TIMEOUT, "{}", resp.message());
    assert!(
        resp.message()
            .contains("below the minimum of 1000 bytes a second"),
        "{}",
        resp.message()
    );
    still_serving(&t).await;
}

/// One client address holds at most `ipp.max_connections_per_address`
/// connections at once (the default 32 here, then 5): the next is closed
/// at once, while other addresses are served, and a place comes free when
/// a connection ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_per_address_cap_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config("1s", "5s", TWO_SITES);
    assert_eq!(cfg.max_connections_per_address, 32, "the default");
    let t = TestFront::start(cfg, dir.path()).await;
    let body = t.req(op::GET_PRINTER_ATTRIBUTES, "osaka", "tester").bytes();
    let mut held = Vec::new();
    for _ in 0..32 {
        held.push(tokio::net::TcpStream::connect(t.plain).await.unwrap());
    }
    let over = try_post(t.plain, "/ipp/print/osaka", body.clone()).await;
    assert!(
        over.is_err(),
        "a 33rd connection from one address was served: {over:?}"
    );
    drop(held);
    drop(t);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config("1s", "5s", TWO_SITES);
    cfg.max_connections_per_address = 5;
    let t = TestFront::start(cfg, dir.path()).await;
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(tokio::net::TcpStream::connect(t.plain).await.unwrap());
    }
    let over = try_post(t.plain, "/ipp/print/osaka", body.clone()).await;
    assert!(
        over.is_err(),
        "a 6th connection from one address was served: {over:?}"
    );
    // Another address is not held up by this one.
    let elsewhere = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let reply = post_from(elsewhere, t.plain, "/ipp/print/osaka", body.clone())
        .await
        .expect("a client at another address is served");
    assert_eq!(reply.ipp().status(), status::OK);
    // One connection ends: the address is served again.
    held.pop();
    let tr = &t;
    let body = &body;
    eventually(Duration::from_secs(5), "a free place", || async move {
        try_post(tr.plain, "/ipp/print/osaka", body.clone())
            .await
            .ok()
            .map(|r| assert_eq!(r.ipp().status(), status::OK))
    })
    .await;
}

/// A client that pipelines requests and reads none of the answers (its
/// receive window shut) does not hold its connection for ever: after
/// `ipp.answer_stall_timeout` (2 s here) of taking nothing the kernel
/// drops it, and its address's only place (the cap is 1 here) serves
/// again. Without the user timeout the front waited on the write for
/// ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_no_answers_loses_its_connection() {
    use tokio::io::AsyncWriteExt as _;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config("1s", "5s", TWO_SITES);
    cfg.max_connections_per_address = 1;
    cfg.answer_stall_timeout = Duration::from_secs(2);
    let t = TestFront::start(cfg, dir.path()).await;
    let body = t.req(op::GET_PRINTER_ATTRIBUTES, "osaka", "tester").bytes();
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut greedy = sock.connect(t.plain).await.unwrap();
    let mut one = format!(
        "POST /ipp/print/osaka HTTP/1.1\r\nHost: {}\r\nContent-Type: application/ipp\r\n\
         Content-Length: {}\r\n\r\n",
        t.plain,
        body.len()
    )
    .into_bytes();
    one.extend_from_slice(&body);
    // Far more answers than the two sockets' buffers hold; the writes
    // stop counting once the front stops reading.
    let pipelined = one.repeat(2000);
    let _ = tokio::time::timeout(Duration::from_secs(2), greedy.write_all(&pipelined)).await;
    let over = try_post(t.plain, "/ipp/print/osaka", body.clone()).await;
    assert!(over.is_err(), "the address's one place was free: {over:?}");
    let tr = &t;
    let body = &body;
    eventually(
        Duration::from_secs(30),
        "the place held by the greedy client",
        || async move {
            try_post(tr.plain, "/ipp/print/osaka", body.clone())
                .await
                .ok()
                .map(|r| assert_eq!(r.ipp().status(), status::OK))
        },
    )
    .await;
    drop(greedy);
}

/// A site holds at most `max_active_jobs` jobs not yet ended and
/// `max_site_spool` bytes of their documents: past either, a new job (or
/// document) is refused busy, saying why, and taken again once a job
/// ends. Anonymous clients cannot fill the relay's disk through a site.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_site_refuses_new_jobs_busy_until_one_ends() {
    use faxgate_ipp::message;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config("1s", "10s", TWO_SITES);
    cfg.max_active_jobs = 3;
    cfg.max_document = 10_000;
    cfg.max_site_spool = 12_000;
    let t = TestFront::start(cfg, dir.path()).await;
    let print = |doc: Vec<u8>| {
        let req = t
            .req(op::PRINT_JOB, "osaka", "alice")
            .op("job-name", message::name("quota"))
            .op("document-format", message::mime("application/pdf"));
        let t = &t;
        async move { t.client("osaka", &req, &doc).await }
    };
    // Bytes: 7 000 and 7 000 go (under 12 000 before each), the next not.
    let first = print(crate::common::pdf(7_000)).await;
    assert_eq!(first.status(), status::OK, "{}", first.message());
    let second = print(crate::common::pdf(7_000)).await;
    assert_eq!(second.status(), status::OK, "{}", second.message());
    let full = print(crate::common::pdf(100)).await;
    assert_eq!(full.status(), status::BUSY, "{}", full.message());
    assert!(full.message().contains("bytes"), "{}", full.message());
    // The other site is not affected.
    let req = t
        .req(op::PRINT_JOB, "kyoto", "bob")
        .op("document-format", message::mime("application/pdf"));
    let other = t.client("kyoto", &req, &crate::common::pdf(100)).await;
    assert_eq!(other.status(), status::OK, "{}", other.message());
    // A job ends: there is room again.
    let id = first.job_int("job-id").unwrap();
    let cancel = t
        .req(op::CANCEL_JOB, "osaka", "alice")
        .op("job-id", ipp::value::IppValue::Integer(id));
    let c = t.client("osaka", &cancel, &[]).await;
    assert_eq!(c.status(), status::OK, "{}", c.message());
    let third = print(crate::common::pdf(100)).await;
    assert_eq!(third.status(), status::OK, "{}", third.message());
    // Jobs: the site now holds 2 (7 100 bytes); one more makes 3, the
    // most it takes, and the next is refused for the count.
    let fourth = print(crate::common::pdf(100)).await;
    assert_eq!(fourth.status(), status::OK, "{}", fourth.message());
    let over = print(crate::common::pdf(100)).await;
    assert_eq!(over.status(), status::BUSY, "{}", over.message());
    assert!(over.message().contains("jobs"), "{}", over.message());
}
