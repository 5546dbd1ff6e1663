//! Multi-document jobs (Create-Job, Send-Document): the
//! multiple-operation-time-out runs from a job's last operation, and a
//! document that finishes arriving after its job ended is refused.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use faxgate_ipp::codes::{job_state, op, status};
use faxgate_ipp::message::{self, mime};
use hyper_util::rt::TokioIo;
use ipp::prelude::*;
use tokio::sync::mpsc;

use crate::common::{Ipp, Reply, Req, TWO_SITES, TestFront, config, eventually};

/// A client Create-Job on osaka; returns the job id.
async fn create_job(t: &TestFront) -> i32 {
    let req = t
        .req(op::CREATE_JOB, "osaka", "alice")
        .op("job-name", message::name("two parts"))
        .op("document-format", mime("application/pdf"));
    let resp = t.client("osaka", &req, b"").await;
    assert_eq!(resp.status(), status::OK, "Create-Job: {}", resp.message());
    resp.job_int("job-id").expect("Create-Job answers job-id")
}

/// A Send-Document request for `job` as its owner.
fn send_document(t: &TestFront, job: i32, last: bool) -> Req {
    t.req(op::SEND_DOCUMENT, "osaka", "alice")
        .op("job-id", IppValue::Integer(job))
        .op("last-document", IppValue::Boolean(last))
        .op("document-format", mime("application/pdf"))
}

/// The front's job database, opened beside it (WAL: both may use it).
fn db(t: &TestFront) -> rusqlite::Connection {
    let db = rusqlite::Connection::open(t.state.join("ipp").join("ipp.db")).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    db
}

/// Moves a job's time `column` (Unix seconds) `secs` into the past, as if
/// that much time had gone by since.
fn age(t: &TestFront, job: i32, column: &str, secs: i64) {
    let n = db(t)
        .execute(
            &format!("UPDATE jobs SET {column} = {column} - ?1 WHERE id = ?2"),
            rusqlite::params![secs, job],
        )
        .unwrap();
    assert_eq!(n, 1, "job {job} in the database");
}

/// A job's time `column` (Unix seconds).
fn time_of(t: &TestFront, job: i32, column: &str) -> i64 {
    db(t)
        .query_row(
            &format!("SELECT {column} FROM jobs WHERE id = ?1"),
            rusqlite::params![job],
            |r| r.get(0),
        )
        .unwrap()
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The names of the files in the front's spool directory, sorted.
fn spool(t: &TestFront) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(t.state.join("ipp").join("spool"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// POSTs to `/ipp/print/osaka` over plain HTTP a body that arrives in
/// pieces from `rx` (chunked; it ends when `rx` closes), so a test can act
/// while the front is still receiving a document.
async fn streaming_post(addr: SocketAddr, rx: mpsc::Receiver<Bytes>) -> Reply {
    let chunks = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::io::Error>(hyper::body::Frame::data(b)), rx))
    });
    let req = hyper::Request::post("/ipp/print/osaka")
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::CONTENT_TYPE, "application/ipp")
        .body(http_body_util::StreamBody::new(Box::pin(chunks)))
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    let driver = tokio::spawn(conn);
    let resp = tokio::time::timeout(Duration::from_secs(15), sender.send_request(req))
        .await
        .expect("an answer within 15 s")
        .unwrap();
    let reply = crate::common::read_reply(resp).await.unwrap();
    driver.abort();
    reply
}

/// RFC 8011 multiple-operation-time-out (300 s here) is the time between
/// operations on a job: a job created long ago whose last Send-Document
/// was just now stays open; one with no operation for that long ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operation_time_out_runs_from_the_last_send_document() {
    let dir = tempfile::tempdir().unwrap();
    // agent_lease 1 s: the reaper looks every 125 ms.
    let t = TestFront::start(config("1s", "1s", TWO_SITES), dir.path()).await;

    let busy = create_job(&t).await;
    let req = send_document(&t, busy, false);
    let resp = t.client("osaka", &req, b"%PDF-1.4 part one").await;
    assert_eq!(resp.status(), status::OK, "{}", resp.message());
    // Created an hour ago; its last operation is the Send-Document above.
    age(&t, busy, "created", 3600);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let j = t.job("osaka", busy).await;
    assert_eq!(j.job_int("job-state"), Some(job_state::PENDING));
    // Still open: the last document joins it.
    let req = send_document(&t, busy, true);
    let resp = t.client("osaka", &req, b"%PDF-1.4 part two").await;
    assert_eq!(
        resp.status(),
        status::OK,
        "a job whose last Send-Document was 1 s ago was timed out from its creation: {}",
        resp.message()
    );
    let j = t.job("osaka", busy).await;
    assert_eq!(j.job_int("number-of-documents"), Some(2));
    assert_eq!(j.job_int("job-state"), Some(job_state::PENDING));

    // A job with no operation for longer than the time-out still ends
    // (aborted: it has no document).
    let idle = create_job(&t).await;
    age(&t, idle, "created", 3600);
    age(&t, idle, "activity", 3600);
    let tr = &t;
    let j = eventually(
        Duration::from_secs(5),
        "the idle job aborted",
        || async move {
            let j = tr.job("osaka", idle).await;
            (j.job_int("job-state") == Some(job_state::ABORTED)).then_some(j)
        },
    )
    .await;
    assert_eq!(j.job_strings("job-state-reasons"), ["aborted-by-system"]);
    let req = send_document(&t, idle, true);
    let resp = t.client("osaka", &req, b"%PDF-1.4 too late").await;
    assert_eq!(resp.status(), status::NOT_POSSIBLE, "{}", resp.message());
    t.stop().await;
}

/// A Cancel-Job while a Send-Document is still receiving its document:
/// the document must not join the canceled job (it did: the job was
/// checked before the upload and written after it), the client is told
/// so, and nothing of it stays in the spool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_still_arriving_when_its_job_is_canceled_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let t = TestFront::start(config("1s", "10s", TWO_SITES), dir.path()).await;
    let job = create_job(&t).await;
    let req = send_document(&t, job, false);
    let resp = t.client("osaka", &req, b"%PDF-1.4 part one").await;
    assert_eq!(resp.status(), status::OK, "{}", resp.message());
    assert_eq!(spool(&t), [format!("job-{job}-doc-1")]);
    // 200 s without an operation: not timed out yet.
    age(&t, job, "activity", 200);
    let before = unix_now();

    // The second (last) document starts arriving...
    let req = send_document(&t, job, true);
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let mut head = req.bytes();
    head.extend_from_slice(b"%PDF-1.4 part two, first half ");
    tx.send(Bytes::from(head)).await.unwrap();
    let upload = tokio::spawn(streaming_post(t.plain, rx));
    // ...the front checked the job and is spooling it...
    let tr = &t;
    eventually(
        Duration::from_secs(10),
        "the front spooling the document",
        || async move {
            spool(tr)
                .iter()
                .any(|f| f.starts_with("incoming-"))
                .then_some(())
        },
    )
    .await;
    // ...and the Send-Document counts as an operation from its start.
    assert!(
        time_of(&t, job, "activity") >= before,
        "the job's last operation is the Send-Document under way"
    );

    // The client cancels the job meanwhile.
    let cancel = t
        .req(op::CANCEL_JOB, "osaka", "alice")
        .op("job-id", IppValue::Integer(job));
    let resp = t.client("osaka", &cancel, b"").await;
    assert_eq!(resp.status(), status::OK, "{}", resp.message());

    // The rest of the document arrives.
    let _ = tx.send(Bytes::from_static(b"second half\n%%EOF\n")).await;
    drop(tx);
    let reply = upload.await.unwrap();
    assert_eq!(reply.http, 200);
    let resp: Ipp = reply.ipp_for(&req);
    assert_eq!(
        resp.status(),
        status::NOT_POSSIBLE,
        "a document joined a canceled job: {}",
        resp.message()
    );
    assert!(
        resp.message().contains(&format!("job {job}")) && resp.message().contains("canceled"),
        "the refusal names the job and its state: {}",
        resp.message()
    );
    let j = t.job("osaka", job).await;
    assert_eq!(j.job_int("job-state"), Some(job_state::CANCELED));
    assert_eq!(j.job_int("number-of-documents"), Some(1));
    assert_eq!(
        spool(&t),
        [format!("job-{job}-doc-1")],
        "the refused document left a file in the spool"
    );
    t.stop().await;
}
