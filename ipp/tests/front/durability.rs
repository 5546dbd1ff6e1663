//! Jobs outlive the front and the agent: a restart keeps them, a device
//! that leaves (or whose lease runs out) hands back what it held, and
//! several devices share a site.

use std::time::Duration;

use faxgate_ipp::codes::{job_state, op, status};
use ipp::prelude::*;

use crate::common::{DEVICE_A, DEVICE_B, OSAKA, TWO_SITES, TestFront, config, eventually, pdf};
use crate::infra::{
    acknowledge, fetch_document, fetchable, infra, printer_attrs, report, subscribe,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let waiting_doc = pdf(30_000);
    let printing_doc = pdf(7_000);
    let (waiting, printing, sub) = {
        let t = TestFront::start(config("1s", "10s", TWO_SITES), dir.path()).await;
        t.register("osaka", OSAKA, DEVICE_A, printer_attrs()).await;
        let sub = subscribe(&t).await;
        let waiting = t.print("osaka", "alice", &waiting_doc).await;
        let printing = t.print("osaka", "bob", &printing_doc).await;
        acknowledge(&t, DEVICE_A, printing).await;
        report(
            &t,
            printing,
            job_state::PROCESSING,
            &["job-printing"],
            "printing",
        )
        .await;
        t.stop().await;
        (waiting, printing, sub)
    };

    // A 1 s lease this time.
    let t = TestFront::start(config("1s", "1s", TWO_SITES), dir.path()).await;
    // Both jobs are still there, as they were.
    // (Its owner sees who printed it.)
    let j = t.job_as("osaka", waiting, "alice").await;
    assert_eq!(j.job_int("job-state"), Some(job_state::PENDING));
    assert_eq!(
        j.job_str("job-originating-user-name").as_deref(),
        Some("alice")
    );
    let j = t.job("osaka", printing).await;
    assert_eq!(j.job_int("job-state"), Some(job_state::PROCESSING));
    // Subscriptions do not survive: the agent is told to subscribe again.
    let req = infra(&t, op::GET_NOTIFICATIONS, DEVICE_A)
        .op("notify-subscription-ids", IppValue::Integer(sub))
        .op("notify-sequence-numbers", IppValue::Integer(1))
        .op("notify-wait", IppValue::Boolean(true));
    let resp = t.agent("osaka", OSAKA, &req).await;
    assert_eq!(resp.status(), status::NOT_FOUND, "{}", resp.message());
    // The agent comes back as a new process: a new UUID.
    let resp = t.register("osaka", OSAKA, DEVICE_B, printer_attrs()).await;
    assert_eq!(resp.status(), status::OK, "{}", resp.message());
    // The old process's device had one lease after the restart; when it
    // ran out, the job it was printing is offered again, oldest first.
    let tr = &t;
    let ids = eventually(
        Duration::from_secs(5),
        "both jobs fetchable",
        || async move {
            let ids = fetchable(tr, DEVICE_B).await;
            (ids.len() == 2).then_some(ids)
        },
    )
    .await;
    assert_eq!(ids, [waiting, printing]);
    for (job, doc) in [(waiting, &waiting_doc), (printing, &printing_doc)] {
        let req = infra(&t, op::FETCH_JOB, DEVICE_B).op("job-id", IppValue::Integer(job));
        let fetched = t.agent("osaka", OSAKA, &req).await;
        assert_eq!(fetched.status(), status::OK, "{}", fetched.message());
        assert_eq!(fetched.job_int("job-state"), Some(job_state::PENDING));
        acknowledge(&t, DEVICE_B, job).await;
        let d = fetch_document(&t, DEVICE_B, job).await;
        assert_eq!(d.status(), status::OK, "{}", d.message());
        assert!(d.doc == *doc, "job {job}: the same bytes after a restart");
    }
    t.stop().await;
}

/// A site may have several output devices (PWG 5100.18): a second one
/// registering leaves the first attached with the job it is printing
/// (it was: handed back, printed twice), the first Acknowledge-Job of a
/// job wins it, and a device that leaves hands back only its own jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_device_does_not_evict_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let t = TestFront::start(config("1s", "10s", TWO_SITES), dir.path()).await;
    t.register("osaka", OSAKA, DEVICE_A, printer_attrs()).await;
    let doc = pdf(4_000);
    let job = t.print("osaka", "alice", &doc).await;
    acknowledge(&t, DEVICE_A, job).await;
    report(
        &t,
        job,
        job_state::PROCESSING,
        &["job-printing"],
        "printing",
    )
    .await;

    let resp = t.register("osaka", OSAKA, DEVICE_B, printer_attrs()).await;
    assert_eq!(resp.status(), status::OK, "{}", resp.message());
    let j = t.job("osaka", job).await;
    assert_eq!(j.job_int("job-state"), Some(job_state::PROCESSING));
    assert_eq!(j.job_strings("job-state-reasons"), ["job-printing"]);
    assert!(fetchable(&t, DEVICE_B).await.is_empty());
    // B cannot take it.
    let req = infra(&t, op::ACKNOWLEDGE_JOB, DEVICE_B).op("job-id", IppValue::Integer(job));
    let resp = t.agent("osaka", OSAKA, &req).await;
    assert_eq!(resp.status(), status::NOT_FETCHABLE, "{}", resp.message());
    let d = fetch_document(&t, DEVICE_B, job).await;
    assert_eq!(d.status(), status::NOT_FETCHABLE, "{}", d.message());
    assert!(d.doc.is_empty());

    // A new job: the first device to acknowledge it has it.
    let second = t.print("osaka", "bob", &doc).await;
    assert_eq!(fetchable(&t, DEVICE_B).await, [second]);
    assert_eq!(fetchable(&t, DEVICE_A).await, [second]);
    acknowledge(&t, DEVICE_B, second).await;
    let req = infra(&t, op::ACKNOWLEDGE_JOB, DEVICE_A).op("job-id", IppValue::Integer(second));
    let resp = t.agent("osaka", OSAKA, &req).await;
    assert_eq!(resp.status(), status::NOT_FETCHABLE, "{}", resp.message());

    // A finishes its job.
    report(
        &t,
        job,
        job_state::COMPLETED,
        &["job-completed-successfully"],
        "done",
    )
    .await;
    assert_eq!(
        t.job("osaka", job).await.job_int("job-state"),
        Some(job_state::COMPLETED)
    );

    // A leaves: B keeps its job, and the site stays online.
    let third = t.print("osaka", "carol", &doc).await;
    acknowledge(&t, DEVICE_A, third).await;
    let req = infra(&t, op::DEREGISTER_OUTPUT_DEVICE, DEVICE_A);
    assert_eq!(t.agent("osaka", OSAKA, &req).await.status(), status::OK);
    let j = t.job("osaka", second).await;
    assert_eq!(j.job_int("job-state"), Some(job_state::PROCESSING));
    assert_eq!(
        t.job("osaka", third).await.job_int("job-state"),
        Some(job_state::PENDING),
        "A's own job is handed back"
    );
    assert_eq!(fetchable(&t, DEVICE_B).await, [third]);
    assert!(
        !t.printer("osaka")
            .await
            .printer_strings("printer-state-reasons")
            .contains(&"offline-report".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_detaches_the_device_and_hands_its_job_back() {
    let dir = tempfile::tempdir().unwrap();
    // A short lease; the reaper looks every lease/8 (at least 50 ms).
    let t = TestFront::start(config("200ms", "600ms", TWO_SITES), dir.path()).await;
    t.register("osaka", OSAKA, DEVICE_A, printer_attrs()).await;
    let job = t.print("osaka", "alice", &pdf(10)).await;
    acknowledge(&t, DEVICE_A, job).await;
    // The agent goes silent.
    let tr = &t;
    let j = eventually(
        Duration::from_secs(3),
        "the job handed back",
        || async move {
            let j = tr.job("osaka", job).await;
            (j.job_int("job-state") == Some(job_state::PENDING)).then_some(j)
        },
    )
    .await;
    assert!(
        j.job_strings("job-state-reasons")
            .contains(&"job-fetchable".to_owned())
    );
    assert!(
        t.printer("osaka")
            .await
            .printer_strings("printer-state-reasons")
            .contains(&"offline-report".to_owned())
    );
}

/// ippproxy subscribes before it registers, and its Get-Notifications
/// names no device; while its printer runs a job it makes no other
/// request. Its long polls keep its device's lease: the job is not handed
/// back, the site stays online, and its final report is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_without_a_device_uuid_keep_the_lease() {
    use faxgate_ipp::message::{self, keyword, keywords};
    use ipp::model::DelimiterTag;

    let dir = tempfile::tempdir().unwrap();
    // notify_wait 3 s, lease 1 s.
    let t = TestFront::start(config("3s", "1s", TWO_SITES), dir.path()).await;
    let req = t
        .req(op::CREATE_PRINTER_SUBSCRIPTIONS, "osaka", "osaka")
        .add(
            DelimiterTag::SubscriptionAttributes,
            "notify-pull-method",
            keyword("ippget"),
        )
        .add(
            DelimiterTag::SubscriptionAttributes,
            "notify-events",
            keywords(&["job-fetchable", "job-state-changed"]),
        );
    let resp = t.agent("osaka", OSAKA, &req).await;
    assert_eq!(resp.status(), status::OK, "{}", resp.message());
    let sub = resp
        .get(
            DelimiterTag::SubscriptionAttributes,
            "notify-subscription-id",
        )
        .and_then(message::as_int)
        .unwrap();
    t.register("osaka", OSAKA, DEVICE_A, printer_attrs()).await;
    let job = t.print("osaka", "alice", &pdf(10)).await;
    acknowledge(&t, DEVICE_A, job).await;

    let poll = |seq: i32, wait: bool| {
        t.req(op::GET_NOTIFICATIONS, "osaka", "osaka")
            .op("notify-subscription-ids", IppValue::Integer(sub))
            .op("notify-sequence-numbers", IppValue::Integer(seq))
            .op("notify-wait", IppValue::Boolean(wait))
    };
    let resp = t.agent("osaka", OSAKA, &poll(1, false)).await;
    assert_eq!(resp.status(), status::OK, "{}", resp.message());
    let next = 1 + crate::infra::events(&resp)
        .iter()
        .map(|e| e.0)
        .max()
        .unwrap_or(0);
    // Three leases long, with no event to end it early.
    let long = poll(next, true);
    let (resp, (printer, j)) = tokio::join!(t.agent("osaka", OSAKA, &long), async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        (t.printer("osaka").await, t.job("osaka", job).await)
    });
    assert_eq!(resp.status(), status::OK, "{}", resp.message());
    assert!(
        !printer
            .printer_strings("printer-state-reasons")
            .contains(&"offline-report".to_owned()),
        "offline while the agent long-polls: {:?}",
        printer.printer_strings("printer-state-reasons")
    );
    assert_eq!(j.job_int("job-state"), Some(job_state::PROCESSING));

    report(
        &t,
        job,
        job_state::COMPLETED,
        &["job-completed-successfully"],
        "done",
    )
    .await;
    assert_eq!(
        t.job("osaka", job).await.job_int("job-state"),
        Some(job_state::COMPLETED)
    );
    assert!(
        !t.printer("osaka")
            .await
            .printer_strings("printer-state-reasons")
            .contains(&"offline-report".to_owned())
    );
}

/// A device whose lease ran out while it printed (its job was handed
/// back) and that comes back with its report takes the job back while no
/// other device has: its report is taken, and the job is not printed
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_former_holder_takes_back_a_handed_back_job_with_its_report() {
    let dir = tempfile::tempdir().unwrap();
    let t = TestFront::start(config("200ms", "600ms", TWO_SITES), dir.path()).await;
    t.register("osaka", OSAKA, DEVICE_A, printer_attrs()).await;
    let job = t.print("osaka", "alice", &pdf(10)).await;
    acknowledge(&t, DEVICE_A, job).await;
    // Silent for longer than its lease.
    let tr = &t;
    eventually(
        Duration::from_secs(3),
        "the job handed back",
        || async move {
            let j = tr.job("osaka", job).await;
            (j.job_int("job-state") == Some(job_state::PENDING)).then_some(())
        },
    )
    .await;
    report(
        &t,
        job,
        job_state::COMPLETED,
        &["job-completed-successfully"],
        "done",
    )
    .await;
    let j = t.job("osaka", job).await;
    assert_eq!(j.job_int("job-state"), Some(job_state::COMPLETED));
    assert!(fetchable(&t, DEVICE_A).await.is_empty());
}
