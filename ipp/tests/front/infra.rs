//! The agent's session (INFRA.md steps 1 to 8) with raw requests, and
//! what a client sees of it.

use std::time::{Duration, Instant};

use faxgate_ipp::codes::{job_state, op, status};
use faxgate_ipp::message::{self, keyword, keywords, mime, uri};
use ipp::model::DelimiterTag;
use ipp::prelude::*;

use crate::common::{DEVICE_A, Ipp, OSAKA, TWO_SITES, TestFront, config, eventually, pdf};

/// What the agent read from the real printer.
pub fn printer_attrs() -> Vec<(&'static str, IppValue)> {
    vec![
        (
            "document-format-supported",
            message::one_or_many(vec![
                mime("application/pdf"),
                mime("image/urf"),
                mime("image/pwg-raster"),
            ]),
        ),
        ("document-format-default", mime("application/pdf")),
        ("printer-state", IppValue::Enum(3)),
        ("printer-state-reasons", keyword("none")),
        (
            "printer-make-and-model",
            message::text("Brother HL-L2350DW"),
        ),
        (
            "media-supported",
            keywords(&["iso_a4_210x297mm", "na_letter_8.5x11in"]),
        ),
        (
            "sides-supported",
            keywords(&["one-sided", "two-sided-long-edge"]),
        ),
    ]
}

/// An agent request on `site` naming `device`.
pub fn infra(t: &TestFront, op: u16, device: &str) -> crate::common::Req {
    t.req(op, "osaka", "osaka")
        .op("output-device-uuid", uri(device))
}

/// Subscribes to job-fetchable and job-state-changed; returns the id.
pub async fn subscribe(t: &TestFront) -> i32 {
    let req = infra(t, op::CREATE_PRINTER_SUBSCRIPTIONS, DEVICE_A)
        .add(
            DelimiterTag::SubscriptionAttributes,
            "notify-pull-method",
            keyword("ippget"),
        )
        .add(
            DelimiterTag::SubscriptionAttributes,
            "notify-events",
            keywords(&["job-fetchable", "job-state-changed"]),
        )
        .add(
            DelimiterTag::SubscriptionAttributes,
            "notify-lease-duration",
            IppValue::Integer(60),
        );
    let resp = t.agent("osaka", OSAKA, &req).await;
    assert_eq!(resp.status(), status::OK, "{}", resp.message());
    resp.get(
        DelimiterTag::SubscriptionAttributes,
        "notify-subscription-id",
    )
    .and_then(message::as_int)
    .expect("notify-subscription-id")
}

/// Get-Notifications with notify-wait from sequence number `seq`.
pub async fn long_poll(t: &TestFront, sub: i32, seq: i32) -> Ipp {
    let req = infra(t, op::GET_NOTIFICATIONS, DEVICE_A)
        .op("notify-subscription-ids", IppValue::Integer(sub))
        .op("notify-sequence-numbers", IppValue::Integer(seq))
        .op("notify-wait", IppValue::Boolean(true));
    let resp = t.agent("osaka", OSAKA, &req).await;
    assert_eq!(resp.status(), status::OK, "{}", resp.message());
    assert!(
        resp.op("notify-get-interval")
            .and_then(message::as_int)
            .is_some_and(|n| n > 0),
        "notify-get-interval in the operation group"
    );
    resp
}

/// The events of a Get-Notifications answer: (seq, event, job, state).
pub fn events(resp: &Ipp) -> Vec<(i32, String, i32, i32)> {
    resp.groups(DelimiterTag::EventNotificationAttributes)
        .into_iter()
        .map(|g| {
            let int = |n: &str| {
                g.get(n)
                    .map(IppAttribute::value)
                    .and_then(message::as_int)
                    .unwrap_or(-1)
            };
            let event = g
                .get("notify-subscribed-event")
                .map(IppAttribute::value)
                .and_then(message::as_str)
                .unwrap_or("")
                .to_owned();
            (
                int("notify-sequence-number"),
                event,
                int("notify-job-id"),
                int("job-state"),
            )
        })
        .collect()
}

/// Get-Jobs which-jobs=fetchable: the job ids.
pub async fn fetchable(t: &TestFront, device: &str) -> Vec<i32> {
    let req = infra(t, op::GET_JOBS, device).op("which-jobs", keyword("fetchable"));
    let resp = t.agent("osaka", OSAKA, &req).await;
    assert_eq!(resp.status(), status::OK, "{}", resp.message());
    resp.groups(DelimiterTag::JobAttributes)
        .into_iter()
        .filter_map(|g| {
            g.get("job-id")
                .map(IppAttribute::value)
                .and_then(message::as_int)
        })
        .collect()
}

/// Fetch-Document 1 of `job`.
pub async fn fetch_document(t: &TestFront, device: &str, job: i32) -> Ipp {
    let req = infra(t, op::FETCH_DOCUMENT, device)
        .op("job-id", IppValue::Integer(job))
        .op("document-number", IppValue::Integer(1))
        .op("compression-accepted", keyword("none"));
    t.agent("osaka", OSAKA, &req).await
}

/// Acknowledge-Job; expects OK.
pub async fn acknowledge(t: &TestFront, device: &str, job: i32) {
    let req = infra(t, op::ACKNOWLEDGE_JOB, device).op("job-id", IppValue::Integer(job));
    let resp = t.agent("osaka", OSAKA, &req).await;
    assert_eq!(
        resp.status(),
        status::OK,
        "Acknowledge-Job: {}",
        resp.message()
    );
}

/// Update-Job-Status with a state, reasons and message; expects OK.
pub async fn report(t: &TestFront, job: i32, state: i32, reasons: &[&str], msg: &str) {
    let req = infra(t, op::UPDATE_JOB_STATUS, DEVICE_A)
        .op("job-id", IppValue::Integer(job))
        .add(
            DelimiterTag::JobAttributes,
            "output-device-job-state",
            IppValue::Enum(state),
        )
        .add(
            DelimiterTag::JobAttributes,
            "output-device-job-state-reasons",
            keywords(reasons),
        )
        .add(
            DelimiterTag::JobAttributes,
            "output-device-job-state-message",
            message::text(msg),
        )
        .add(
            DelimiterTag::JobAttributes,
            "job-impressions-completed",
            IppValue::Integer(1),
        );
    let resp = t.agent("osaka", OSAKA, &req).await;
    assert_eq!(
        resp.status(),
        status::OK,
        "Update-Job-Status: {}",
        resp.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_session_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    // notify_wait 30 s: a long poll that returns well before it returned
    // on the event, however slow the Print-Job before it.
    let t = TestFront::start(config("30s", "10s", TWO_SITES), dir.path()).await;

    // 1. Register.
    let resp = t.register("osaka", OSAKA, DEVICE_A, printer_attrs()).await;
    assert_eq!(resp.status(), status::OK, "{}", resp.message());
    let printer = t.printer("osaka").await;
    assert_eq!(printer.printer_strings("printer-state-reasons"), ["none"]);
    assert_eq!(printer.printer_int("printer-state"), Some(3));
    assert_eq!(
        printer.printer_strings("printer-make-and-model"),
        ["Brother HL-L2350DW"]
    );
    assert!(
        printer
            .printer_strings("document-format-supported")
            .contains(&"application/pdf".to_owned())
    );

    // The site now takes what the device prints, and nothing else.
    let req = t
        .req(op::VALIDATE_JOB, "osaka", "alice")
        .op("document-format", mime("image/jpeg"));
    let resp = t.client("osaka", &req, b"").await;
    assert_eq!(
        resp.status(),
        status::DOCUMENT_FORMAT_NOT_SUPPORTED,
        "{}",
        resp.message()
    );

    // 2. Subscribe, then a long poll that a client's Print-Job wakes.
    let sub = subscribe(&t).await;
    let doc = pdf(50_000);
    let print = t
        .req(op::PRINT_JOB, "osaka", "alice")
        .op("job-name", message::name("quarterly report"))
        .op("document-format", mime("application/pdf"))
        .add(DelimiterTag::JobAttributes, "copies", IppValue::Integer(2))
        .add(
            DelimiterTag::JobAttributes,
            "sides",
            keyword("two-sided-long-edge"),
        );
    let started = Instant::now();
    let (notes, printed) = tokio::join!(long_poll(&t, sub, 1), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        t.client("osaka", &print, &doc).await
    });
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the long poll returned on the event, not after notify_wait"
    );
    assert_eq!(printed.status(), status::OK, "{}", printed.message());
    let job = printed.job_int("job-id").unwrap();
    assert_eq!(printed.job_int("job-state"), Some(job_state::PENDING));
    let evs = events(&notes);
    assert_eq!(
        evs,
        [(1, "job-fetchable".to_owned(), job, job_state::PENDING)],
        "one job-fetchable event"
    );
    let g = notes.groups(DelimiterTag::EventNotificationAttributes)[0];
    assert_eq!(
        g.get("notify-subscription-id").map(|a| a.value().clone()),
        Some(IppValue::Integer(sub))
    );
    assert!(
        message::strings(g.get("job-state-reasons").map(IppAttribute::value))
            .contains(&"job-fetchable".to_owned())
    );

    // 3. Poll: the job is fetchable.
    assert_eq!(fetchable(&t, DEVICE_A).await, [job]);

    // 4. Fetch-Job: the whole job, with the client's address and port.
    let req = infra(&t, op::FETCH_JOB, DEVICE_A).op("job-id", IppValue::Integer(job));
    let fetched = t.agent("osaka", OSAKA, &req).await;
    assert_eq!(fetched.status(), status::OK, "{}", fetched.message());
    assert_eq!(fetched.job_int("job-id"), Some(job));
    assert!(
        fetched
            .job_str("job-uuid")
            .is_some_and(|u| u.starts_with("urn:uuid:"))
    );
    assert_eq!(
        fetched.job_str("job-name").as_deref(),
        Some("quarterly report")
    );
    assert_eq!(
        fetched.job_str("job-originating-user-name").as_deref(),
        Some("alice")
    );
    assert_eq!(
        fetched.job_str("document-format").as_deref(),
        Some("application/pdf")
    );
    assert_eq!(fetched.job_int("number-of-documents"), Some(1));
    assert_eq!(fetched.job_int("copies"), Some(2));
    assert_eq!(
        fetched.job_str("sides").as_deref(),
        Some("two-sided-long-edge")
    );
    assert_eq!(
        fetched.job_str("job-client-addr").as_deref(),
        Some("127.0.0.1")
    );
    assert!(
        fetched
            .job_int("job-client-port")
            .is_some_and(|p| (1..=65535).contains(&p)),
        "job-client-port {:?}",
        fetched.job_attr("job-client-port")
    );

    // Acknowledge-Job: the device's now.
    acknowledge(&t, DEVICE_A, job).await;
    let j = t.job("osaka", job).await;
    assert_eq!(j.job_int("job-state"), Some(job_state::PROCESSING));
    assert!(
        j.job_strings("job-state-reasons")
            .contains(&"job-fetched".to_owned())
    );
    assert!(fetchable(&t, DEVICE_A).await.is_empty());
    // The holder may repeat Fetch-Job and Acknowledge-Job (a resume).
    let again = t.agent("osaka", OSAKA, &req).await;
    assert_eq!(again.status(), status::OK, "{}", again.message());
    assert_eq!(again.job_int("job-id"), Some(job));
    acknowledge(&t, DEVICE_A, job).await;

    // 5. Fetch-Document: the bytes after the attributes, unchanged.
    let d = fetch_document(&t, DEVICE_A, job).await;
    assert_eq!(d.status(), status::OK, "{}", d.message());
    assert_eq!(
        d.op("document-format").and_then(message::as_str),
        Some("application/pdf")
    );
    assert_eq!(d.op("document-number").and_then(message::as_int), Some(1));
    assert_eq!(d.doc.len(), doc.len());
    assert!(d.doc == doc, "the document comes back byte for byte");
    let req = infra(&t, op::ACKNOWLEDGE_DOCUMENT, DEVICE_A)
        .op("job-id", IppValue::Integer(job))
        .op("document-number", IppValue::Integer(1));
    let resp = t.agent("osaka", OSAKA, &req).await;
    assert_eq!(resp.status(), status::OK, "{}", resp.message());

    // 6. Update-Job-Status: printing, then completed.
    report(
        &t,
        job,
        job_state::PROCESSING,
        &["job-printing"],
        "printing page 1",
    )
    .await;
    let j = t.job("osaka", job).await;
    assert_eq!(j.job_int("job-state"), Some(job_state::PROCESSING));
    assert_eq!(
        j.job_str("job-state-message").as_deref(),
        Some("printing page 1")
    );
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
    assert_eq!(
        j.job_strings("job-state-reasons"),
        ["job-completed-successfully"]
    );
    assert_eq!(j.job_int("job-impressions-completed"), Some(1));

    // The state changes reached the subscription, in order.
    let notes = long_poll(&t, sub, 2).await;
    let evs = events(&notes);
    assert!(
        evs.iter().all(|e| e.1 == "job-state-changed" && e.2 == job),
        "{evs:?}"
    );
    let seqs: Vec<i32> = evs.iter().map(|e| e.0).collect();
    assert_eq!(seqs, (2..2 + evs.len() as i32).collect::<Vec<_>>());
    assert_eq!(
        evs.last().map(|e| e.3),
        Some(job_state::COMPLETED),
        "{evs:?}"
    );

    // The client sees it among the completed jobs.
    let req = t
        .req(op::GET_JOBS, "osaka", "alice")
        .op("which-jobs", keyword("completed"));
    let resp = t.client("osaka", &req, b"").await;
    assert_eq!(resp.status(), status::OK);
    assert_eq!(resp.job_int("job-id"), Some(job));
    // A finished job is not fetchable any more.
    let d = fetch_document(&t, DEVICE_A, job).await;
    assert_eq!(d.status(), status::NOT_FETCHABLE, "{}", d.message());
    assert!(d.doc.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn printer_state_follows_the_device() {
    let dir = tempfile::tempdir().unwrap();
    let t = TestFront::start(config("1s", "10s", TWO_SITES), dir.path()).await;
    let resp = t.register("osaka", OSAKA, DEVICE_A, printer_attrs()).await;
    assert_eq!(resp.status(), status::OK);
    assert_eq!(
        t.printer("osaka")
            .await
            .printer_strings("printer-state-reasons"),
        ["none"]
    );

    // The printer jams: the agent sends only what changed.
    let resp = t
        .register(
            "osaka",
            OSAKA,
            DEVICE_A,
            vec![
                ("printer-state", IppValue::Enum(5)),
                ("printer-state-reasons", keyword("media-jam")),
                (
                    "printer-state-message",
                    message::text("Paper jam in tray 2"),
                ),
                // Attributes the front owns are not taken from the device.
                ("printer-name", message::name("not-osaka")),
                ("printer-is-accepting-jobs", IppValue::Boolean(false)),
            ],
        )
        .await;
    assert_eq!(resp.status(), status::OK, "{}", resp.message());
    let p = t.printer("osaka").await;
    assert_eq!(p.printer_strings("printer-state-reasons"), ["media-jam"]);
    assert_eq!(p.printer_int("printer-state"), Some(5));
    assert_eq!(
        p.printer_strings("printer-state-message"),
        ["Paper jam in tray 2"]
    );
    assert_eq!(p.printer_strings("printer-name"), ["osaka"]);
    assert_eq!(
        p.get(DelimiterTag::PrinterAttributes, "printer-is-accepting-jobs"),
        Some(&IppValue::Boolean(true))
    );
    // What the first registration said is kept.
    assert_eq!(
        p.printer_strings("printer-make-and-model"),
        ["Brother HL-L2350DW"]
    );
    // Also in the printer list.
    let req = crate::common::Req::new(
        op::GET_PRINTERS,
        &format!("ipp://127.0.0.1:{}/ipp/print", t.plain.port()),
        "tester",
    );
    let reply = crate::common::post(t.plain, None, "/ipp/print", req.bytes(), None).await;
    let list = reply.ipp_for(&req);
    assert_eq!(list.status(), status::OK);
    let osaka = list
        .groups(DelimiterTag::PrinterAttributes)
        .into_iter()
        .find(|g| {
            g.get("printer-name")
                .and_then(|a| message::as_str(a.value()))
                == Some("osaka")
        })
        .expect("osaka in Get-Printers");
    assert_eq!(
        message::strings(osaka.get("printer-state-reasons").map(IppAttribute::value)),
        ["media-jam"]
    );

    // Cleared.
    t.register(
        "osaka",
        OSAKA,
        DEVICE_A,
        vec![
            ("printer-state", IppValue::Enum(3)),
            ("printer-state-reasons", keyword("none")),
            ("printer-state-message", message::text("")),
        ],
    )
    .await;
    let p = t.printer("osaka").await;
    assert_eq!(p.printer_strings("printer-state-reasons"), ["none"]);
    assert_eq!(p.printer_int("printer-state"), Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_of_a_fetched_job_waits_for_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let t = TestFront::start(config("1s", "10s", TWO_SITES), dir.path()).await;
    t.register("osaka", OSAKA, DEVICE_A, printer_attrs()).await;
    let sub = subscribe(&t).await;

    // Not fetched yet: canceled at once.
    let early = t.print("osaka", "alice", &pdf(10)).await;
    let cancel = |id: i32, user: &str| {
        t.req(op::CANCEL_JOB, "osaka", user)
            .op("job-id", IppValue::Integer(id))
    };
    let resp = t.client("osaka", &cancel(early, "alice"), b"").await;
    assert_eq!(resp.status(), status::OK, "{}", resp.message());
    assert_eq!(
        t.job("osaka", early).await.job_int("job-state"),
        Some(job_state::CANCELED)
    );

    // Fetched: processing with processing-to-stop-point until the agent
    // reports.
    let job = t.print("osaka", "alice", &pdf(10)).await;
    acknowledge(&t, DEVICE_A, job).await;
    report(
        &t,
        job,
        job_state::PROCESSING,
        &["job-printing"],
        "printing",
    )
    .await;
    // Someone else may not cancel it.
    let resp = t.client("osaka", &cancel(job, "mallory"), b"").await;
    assert_eq!(resp.status(), status::NOT_AUTHORIZED, "{}", resp.message());
    let resp = t.client("osaka", &cancel(job, "alice"), b"").await;
    assert_eq!(resp.status(), status::OK, "{}", resp.message());
    let j = t.job("osaka", job).await;
    assert_eq!(j.job_int("job-state"), Some(job_state::PROCESSING));
    assert!(
        j.job_strings("job-state-reasons")
            .contains(&"processing-to-stop-point".to_owned()),
        "{:?}",
        j.job_strings("job-state-reasons")
    );
    // The long-polling agent hears of it...
    let evs = events(&long_poll(&t, sub, 1).await);
    assert!(
        evs.iter()
            .any(|e| e.1 == "job-state-changed" && e.2 == job && e.3 == job_state::PROCESSING),
        "{evs:?}"
    );
    // ...and a polling agent through Get-Job-Attributes.
    let req = infra(&t, op::GET_JOB_ATTRIBUTES, DEVICE_A).op("job-id", IppValue::Integer(job));
    let seen = t.agent("osaka", OSAKA, &req).await;
    assert!(
        seen.job_strings("job-state-reasons")
            .contains(&"processing-to-stop-point".to_owned())
    );
    // A progress report does not lose the cancel request.
    report(
        &t,
        job,
        job_state::PROCESSING,
        &["job-printing"],
        "stopping",
    )
    .await;
    let j = t.job("osaka", job).await;
    assert_eq!(j.job_int("job-state"), Some(job_state::PROCESSING));
    assert!(
        j.job_strings("job-state-reasons")
            .contains(&"processing-to-stop-point".to_owned())
    );
    // Canceled only when the agent says so.
    report(
        &t,
        job,
        job_state::CANCELED,
        &["job-canceled-by-user"],
        "canceled",
    )
    .await;
    let j = t.job("osaka", job).await;
    assert_eq!(j.job_int("job-state"), Some(job_state::CANCELED));
    assert!(
        !j.job_strings("job-state-reasons")
            .contains(&"processing-to-stop-point".to_owned())
    );
    // A final job cannot be canceled again.
    let resp = t.client("osaka", &cancel(job, "alice"), b"").await;
    assert_eq!(resp.status(), status::NOT_POSSIBLE, "{}", resp.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deregistering_shows_offline_and_hands_jobs_back() {
    let dir = tempfile::tempdir().unwrap();
    let t = TestFront::start(config("1s", "10s", TWO_SITES), dir.path()).await;
    t.register("osaka", OSAKA, DEVICE_A, printer_attrs()).await;
    let job = t.print("osaka", "alice", &pdf(10)).await;
    acknowledge(&t, DEVICE_A, job).await;
    // A second job with a cancel the agent never confirmed.
    let stopping = t.print("osaka", "alice", &pdf(10)).await;
    acknowledge(&t, DEVICE_A, stopping).await;
    let cancel = t
        .req(op::CANCEL_JOB, "osaka", "alice")
        .op("job-id", IppValue::Integer(stopping));
    assert_eq!(t.client("osaka", &cancel, b"").await.status(), status::OK);
    assert!(
        !t.printer("osaka")
            .await
            .printer_strings("printer-state-reasons")
            .contains(&"offline-report".to_owned())
    );

    let req = infra(&t, op::DEREGISTER_OUTPUT_DEVICE, DEVICE_A);
    let resp = t.agent("osaka", OSAKA, &req).await;
    assert_eq!(resp.status(), status::OK, "{}", resp.message());

    let p = t.printer("osaka").await;
    assert!(
        p.printer_strings("printer-state-reasons")
            .contains(&"offline-report".to_owned()),
        "{:?}",
        p.printer_strings("printer-state-reasons")
    );
    assert!(
        p.printer_strings("printer-state-message")
            .first()
            .is_some_and(|m| m.contains("No printer agent attached")),
        "{:?}",
        p.printer_strings("printer-state-message")
    );
    // The unfinished job waits for the next device.
    let tr = &t;
    let j = eventually(Duration::from_secs(2), "job handed back", || async move {
        let j = tr.job("osaka", job).await;
        (j.job_int("job-state") == Some(job_state::PENDING)).then_some(j)
    })
    .await;
    assert!(
        j.job_strings("job-state-reasons")
            .contains(&"job-fetchable".to_owned())
    );
    // The one with a pending cancel is canceled.
    let j = t.job("osaka", stopping).await;
    assert_eq!(j.job_int("job-state"), Some(job_state::CANCELED));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_in_flight_does_not_undo_a_deregistration() {
    let dir = tempfile::tempdir().unwrap();
    let t = TestFront::start(config("1s", "10s", TWO_SITES), dir.path()).await;
    t.register("osaka", OSAKA, DEVICE_A, printer_attrs()).await;
    let sub = subscribe(&t).await;
    // The agent shuts down: its long poll is still open when it
    // deregisters (INFRA.md step 8).
    // Whatever the long poll answers (no events, or a refusal now that
    // the device is gone), it must not attach the device again.
    let poll = infra(&t, op::GET_NOTIFICATIONS, DEVICE_A)
        .op("notify-subscription-ids", IppValue::Integer(sub))
        .op("notify-sequence-numbers", IppValue::Integer(1))
        .op("notify-wait", IppValue::Boolean(true));
    let (notes, resp) = tokio::join!(t.agent("osaka", OSAKA, &poll), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let req = infra(&t, op::DEREGISTER_OUTPUT_DEVICE, DEVICE_A);
        t.agent("osaka", OSAKA, &req).await
    });
    assert_eq!(resp.status(), status::OK, "{}", resp.message());
    assert!(events(&notes).is_empty());
    let p = t.printer("osaka").await;
    assert!(
        p.printer_strings("printer-state-reasons")
            .contains(&"offline-report".to_owned()),
        "the site must stay offline after Deregister-Output-Device, but the long poll that \
         ended after it re-attached the device: printer-state-reasons {:?}",
        p.printer_strings("printer-state-reasons")
    );
}

/// Template values the real printer does not support: with
/// ipp-attribute-fidelity true the job is refused (0x040B) naming them;
/// with false it is accepted without them (0x0001) and the agent never
/// sees them.
#[tokio::test(flavor = "multi_thread")]
async fn unsupported_template_values_follow_ipp_attribute_fidelity() {
    let dir = tempfile::tempdir().unwrap();
    let t = TestFront::start(config("1s", "10s", TWO_SITES), dir.path()).await;
    let mut attrs = printer_attrs();
    attrs.retain(|(n, _)| *n != "sides-supported");
    attrs.push(("sides-supported", keyword("one-sided")));
    assert_eq!(
        t.register("osaka", OSAKA, DEVICE_A, attrs).await.status(),
        status::OK
    );
    let job = |fidelity: bool| {
        t.req(op::PRINT_JOB, "osaka", "tester")
            .op("document-format", mime("application/pdf"))
            .op("ipp-attribute-fidelity", IppValue::Boolean(fidelity))
            .add(
                DelimiterTag::JobAttributes,
                "sides",
                keyword("two-sided-long-edge"),
            )
            .add(DelimiterTag::JobAttributes, "copies", IppValue::Integer(2))
    };
    let strict = t.client("osaka", &job(true), b"%PDF-1.4 strict").await;
    assert_eq!(
        strict.status(),
        status::ATTRIBUTES_OR_VALUES_NOT_SUPPORTED,
        "{}",
        strict.message()
    );
    assert!(strict.message().contains("sides"), "{}", strict.message());
    assert!(
        strict
            .get(DelimiterTag::UnsupportedAttributes, "sides")
            .is_some()
    );

    let lenient = t.client("osaka", &job(false), b"%PDF-1.4 lenient").await;
    assert_eq!(
        lenient.status(),
        status::OK_IGNORED_OR_SUBSTITUTED,
        "{}",
        lenient.message()
    );
    assert!(
        lenient
            .get(DelimiterTag::UnsupportedAttributes, "sides")
            .is_some()
    );
    let id = lenient.job_int("job-id").unwrap();
    let kept = t.job("osaka", id).await;
    assert_eq!(kept.job_int("copies"), Some(2));
    assert!(kept.job_attr("sides").is_none(), "sides was dropped");
}

/// The seed's printer on/off line: Pause-Printer (by the site's agent
/// only) stops the site and keeps new jobs from being fetched, also by
/// an agent that goes by events rather than Get-Jobs: no job-fetchable
/// event, and Fetch-Job and Acknowledge-Job answer
/// client-error-not-fetchable. Resume-Printer offers them again, as
/// job-fetchable, without the paused message. CUPS-Get-Printers and
/// Get-Printers list both sites with their state.
#[tokio::test(flavor = "multi_thread")]
async fn pause_and_resume_and_the_printer_lists() {
    let dir = tempfile::tempdir().unwrap();
    let t = TestFront::start(config("1s", "10s", TWO_SITES), dir.path()).await;
    assert_eq!(
        t.register("osaka", OSAKA, DEVICE_A, printer_attrs())
            .await
            .status(),
        status::OK
    );
    let sub = subscribe(&t).await;
    // A job waiting from before the pause.
    let before = t.print("osaka", "tester", &pdf(100)).await;
    let seen = events(&long_poll(&t, sub, 1).await);
    assert_eq!(
        seen.iter().map(|e| (e.1.as_str(), e.2)).collect::<Vec<_>>(),
        [("job-fetchable", before)]
    );
    // A client cannot pause the site.
    let pause = t.req(op::PAUSE_PRINTER, "osaka", "tester");
    let reply = t
        .send(crate::common::Via::Tls, "osaka", &pause, b"", None)
        .await;
    assert_eq!(reply.ipp_for(&pause).status(), status::NOT_AUTHENTICATED);
    // The agent can.
    let pause = t.req(op::PAUSE_PRINTER, "osaka", "osaka");
    assert_eq!(t.agent("osaka", OSAKA, &pause).await.status(), status::OK);
    let p = t.printer("osaka").await;
    assert_eq!(p.printer_int("printer-state"), Some(5));
    assert!(
        p.printer_strings("printer-state-reasons")
            .contains(&"paused".to_owned())
    );
    let id = t.print("osaka", "tester", &pdf(2000)).await;
    for job in [before, id] {
        let j = t.job("osaka", job).await;
        assert_eq!(j.job_int("job-state"), Some(job_state::PENDING));
        assert_eq!(j.job_strings("job-state-reasons"), ["printer-stopped"]);
        assert_eq!(
            j.job_str("job-state-message").as_deref(),
            Some("the printer is paused")
        );
    }
    assert!(
        fetchable(&t, DEVICE_A).await.is_empty(),
        "nothing is fetchable while paused"
    );
    // An agent that goes by events hears of nothing (the long poll ends
    // after notify_wait with no event)...
    assert!(
        events(&long_poll(&t, sub, 2).await).is_empty(),
        "no job-fetchable while paused"
    );
    // ...and may not fetch what it heard of before.
    for job in [before, id] {
        for code in [op::FETCH_JOB, op::ACKNOWLEDGE_JOB, op::FETCH_DOCUMENT] {
            let req = infra(&t, code, DEVICE_A)
                .op("job-id", IppValue::Integer(job))
                .op("document-number", IppValue::Integer(1));
            let resp = t.agent("osaka", OSAKA, &req).await;
            assert_eq!(
                resp.status(),
                status::NOT_FETCHABLE,
                "{} of job {job} while paused: {}",
                op::name(code),
                resp.message()
            );
            assert!(resp.doc.is_empty());
        }
    }

    let resume = t.req(op::RESUME_PRINTER, "osaka", "osaka");
    assert_eq!(t.agent("osaka", OSAKA, &resume).await.status(), status::OK);
    let seen = events(&long_poll(&t, sub, 2).await);
    assert_eq!(
        seen.iter().map(|e| (e.1.as_str(), e.2)).collect::<Vec<_>>(),
        [("job-fetchable", before), ("job-fetchable", id)],
        "Resume-Printer offers what waits"
    );
    for job in [before, id] {
        let j = t.job("osaka", job).await;
        assert_eq!(j.job_strings("job-state-reasons"), ["job-fetchable"]);
        assert!(
            j.job_str("job-state-message")
                .is_none_or(|m| !m.contains("paused")),
            "{:?}",
            j.job_str("job-state-message")
        );
    }
    assert_eq!(fetchable(&t, DEVICE_A).await, [before, id]);
    assert_eq!(
        t.printer("osaka").await.printer_int("printer-state"),
        Some(3)
    );
    acknowledge(&t, DEVICE_A, id).await;

    for code in [op::CUPS_GET_PRINTERS, op::GET_PRINTERS] {
        let req = crate::common::Req::new(
            code,
            &format!("ipp://127.0.0.1:{}/ipp/print", t.plain.port()),
            "tester",
        );
        let reply = crate::common::post(t.plain, None, "/ipp/print", req.bytes(), None).await;
        let list = reply.ipp_for(&req);
        assert_eq!(list.status(), status::OK, "{}", list.message());
        let names: Vec<String> = list
            .groups(DelimiterTag::PrinterAttributes)
            .into_iter()
            .filter_map(|g| {
                g.get("printer-name")
                    .map(IppAttribute::value)
                    .and_then(message::as_str)
                    .map(str::to_owned)
            })
            .collect();
        assert_eq!(names.len(), 2, "{}: {names:?}", op::name(code));
        assert!(names.contains(&"osaka".to_owned()));
    }
}

/// RFC 3995 5.3.3 and what ippsample's ippproxy reads: each event names
/// its job by `notify-job-id` (integer), and carries
/// `notify-printer-uri` and `printer-up-time`. (`job-id` stays while
/// agents that read only it are about.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_name_their_job_by_notify_job_id_and_their_printer() {
    let dir = tempfile::tempdir().unwrap();
    let t = TestFront::start(config("5s", "10s", TWO_SITES), dir.path()).await;
    t.register("osaka", OSAKA, DEVICE_A, printer_attrs()).await;
    let sub = subscribe(&t).await;
    let job = t.print("osaka", "alice", &pdf(10)).await;
    let notes = long_poll(&t, sub, 1).await;
    let groups = notes.groups(DelimiterTag::EventNotificationAttributes);
    assert!(!groups.is_empty(), "an event after the Print-Job");
    for g in groups {
        let get = |n: &str| g.get(n).map(IppAttribute::value);
        assert_eq!(
            get("notify-job-id"),
            Some(&IppValue::Integer(job)),
            "notify-job-id (integer) names the job: {g:?}"
        );
        assert_eq!(get("job-id"), Some(&IppValue::Integer(job)));
        let printer_uri = get("notify-printer-uri").expect("notify-printer-uri");
        assert!(
            matches!(printer_uri, IppValue::Uri(_))
                && message::as_str(printer_uri).is_some_and(|u| u.ends_with("/ipp/print/osaka")),
            "notify-printer-uri is the site's URI: {printer_uri:?}"
        );
        assert!(
            matches!(get("printer-up-time"), Some(IppValue::Integer(n)) if *n > 0),
            "printer-up-time in the event group: {g:?}"
        );
    }
}

/// A spooled document that is gone (a disk fault, a spool cleaned by
/// hand) is refused before anything is sent, and its job is aborted with
/// the reason, instead of every fetch breaking mid-stream and the Proxy
/// fetching it again for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_spool_file_aborts_its_job_instead_of_breaking_every_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let t = TestFront::start(config("1s", "10s", TWO_SITES), dir.path()).await;
    t.register("osaka", OSAKA, DEVICE_A, printer_attrs()).await;
    let job = t.print("osaka", "alice", &pdf(3_000)).await;
    acknowledge(&t, DEVICE_A, job).await;
    let name = format!("job-{job}-doc-1");
    let spooled: Vec<_> = walk(dir.path())
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == name.as_str()))
        .collect();
    assert_eq!(spooled.len(), 1, "{spooled:?}");
    std::fs::remove_file(&spooled[0]).unwrap();
    let d = fetch_document(&t, DEVICE_A, job).await;
    assert_eq!(d.status(), status::NOT_FETCHABLE, "{}", d.message());
    assert!(d.message().contains("is lost"), "{}", d.message());
    assert!(d.doc.is_empty());
    let j = t.job("osaka", job).await;
    assert_eq!(
        j.job_attr("job-state").and_then(message::as_int),
        Some(job_state::ABORTED)
    );
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Fetch-Document as ippsample's ippproxy asks for it: compression-accepted
/// only allows compression, so `gzip` gets the bytes as they are with
/// `compression` = none; a document-format-accepted without the
/// document's format is client-error-not-fetchable (the front converts
/// nothing), one with it gets the document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_document_takes_compression_accepted_and_honours_document_format_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let t = TestFront::start(config("1s", "10s", TWO_SITES), dir.path()).await;
    t.register("osaka", OSAKA, DEVICE_A, printer_attrs()).await;
    let doc = pdf(3_000);
    let job = t.print("osaka", "alice", &doc).await;
    acknowledge(&t, DEVICE_A, job).await;
    let fetch = |extra: Vec<(&'static str, IppValue)>| {
        let mut req = infra(&t, op::FETCH_DOCUMENT, DEVICE_A)
            .op("job-id", IppValue::Integer(job))
            .op("document-number", IppValue::Integer(1));
        for (n, v) in extra {
            req = req.op(n, v);
        }
        req
    };

    let req = fetch(vec![("compression-accepted", keyword("gzip"))]);
    let d = t.agent("osaka", OSAKA, &req).await;
    assert_eq!(d.status(), status::OK, "{}", d.message());
    assert_eq!(d.op("compression").and_then(message::as_str), Some("none"));
    assert!(d.doc == doc, "the bytes as the client sent them");

    let req = fetch(vec![
        ("compression-accepted", keywords(&["gzip", "deflate"])),
        (
            "document-format-accepted",
            message::one_or_many(vec![mime("image/urf"), mime("image/pwg-raster")]),
        ),
    ]);
    let d = t.agent("osaka", OSAKA, &req).await;
    assert_eq!(d.status(), status::NOT_FETCHABLE, "{}", d.message());
    assert!(d.doc.is_empty(), "no document in another format");

    let req = fetch(vec![(
        "document-format-accepted",
        message::one_or_many(vec![mime("image/urf"), mime("application/pdf")]),
    )]);
    let d = t.agent("osaka", OSAKA, &req).await;
    assert_eq!(d.status(), status::OK, "{}", d.message());
    assert_eq!(
        d.op("document-format").and_then(message::as_str),
        Some("application/pdf")
    );
    assert!(d.doc == doc);
}

/// Update-Active-Jobs (0x0045) as ippserver answers it: the listed jobs
/// the front has ended in another state, the unfinished jobs the device
/// holds that it did not list, and the ids that are not its jobs in the
/// unsupported-attributes group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_active_jobs_tells_the_proxy_what_differs() {
    const UPDATE_ACTIVE_JOBS: u16 = 0x0045;
    let dir = tempfile::tempdir().unwrap();
    let t = TestFront::start(config("1s", "10s", TWO_SITES), dir.path()).await;
    t.register("osaka", OSAKA, DEVICE_A, printer_attrs()).await;
    let ended = t.print("osaka", "alice", &pdf(10)).await;
    let forgotten = t.print("osaka", "alice", &pdf(10)).await;
    let same = t.print("osaka", "alice", &pdf(10)).await;
    let waiting = t.print("osaka", "alice", &pdf(10)).await;
    for job in [ended, forgotten, same] {
        acknowledge(&t, DEVICE_A, job).await;
    }
    report(
        &t,
        ended,
        job_state::COMPLETED,
        &["job-completed-successfully"],
        "done",
    )
    .await;
    report(&t, same, job_state::PROCESSING, &["job-printing"], "").await;

    // The Proxy thinks `ended` still prints, has `same`, lists `waiting`
    // (not its job) and a job that does not exist, and forgot `forgotten`.
    let req = infra(&t, UPDATE_ACTIVE_JOBS, DEVICE_A)
        .op(
            "job-ids",
            message::one_or_many(vec![
                IppValue::Integer(ended),
                IppValue::Integer(same),
                IppValue::Integer(waiting),
                IppValue::Integer(9999),
            ]),
        )
        .op(
            "output-device-job-states",
            message::one_or_many(vec![IppValue::Enum(5); 4]),
        );
    let resp = t.agent("osaka", OSAKA, &req).await;
    assert_eq!(resp.status(), status::OK, "{}", resp.message());
    let ints = |v: Option<&IppValue>| message::ints(v);
    assert_eq!(ints(resp.op("job-ids")), [ended, forgotten]);
    assert_eq!(
        resp.op("output-device-job-states").map(message::values),
        Some(vec![
            &IppValue::Enum(job_state::COMPLETED),
            &IppValue::Enum(job_state::PROCESSING)
        ])
    );
    assert_eq!(
        ints(resp.get(DelimiterTag::UnsupportedAttributes, "job-ids")),
        [waiting, 9999]
    );

    // Mismatched lists are a bad request.
    let req = infra(&t, UPDATE_ACTIVE_JOBS, DEVICE_A)
        .op("job-ids", IppValue::Integer(same))
        .op(
            "output-device-job-states",
            message::one_or_many(vec![IppValue::Enum(5), IppValue::Enum(5)]),
        );
    let resp = t.agent("osaka", OSAKA, &req).await;
    assert_eq!(resp.status(), status::BAD_REQUEST, "{}", resp.message());
}

/// Get-Output-Device-Attributes (0x0044): what each device of the site
/// reported, merged, filtered by requested-attributes; an unknown UUID
/// is not found, another site's is forbidden.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_output_device_attributes_answers_each_devices_own() {
    use crate::common::{DEVICE_B, KYOTO};
    let dir = tempfile::tempdir().unwrap();
    let t = TestFront::start(config("1s", "10s", TWO_SITES), dir.path()).await;
    t.register("osaka", OSAKA, DEVICE_A, printer_attrs()).await;
    t.register(
        "osaka",
        OSAKA,
        DEVICE_A,
        vec![("printer-state", IppValue::Enum(5))],
    )
    .await;
    t.register(
        "osaka",
        OSAKA,
        DEVICE_B,
        vec![(
            "printer-make-and-model",
            message::text("Another Printer 9000"),
        )],
    )
    .await;
    let get = |device: &str| infra(&t, op::GET_OUTPUT_DEVICE_ATTRIBUTES, device);
    let a = t.agent("osaka", OSAKA, &get(DEVICE_A)).await;
    assert_eq!(a.status(), status::OK, "{}", a.message());
    assert_eq!(
        a.printer_strings("printer-make-and-model"),
        ["Brother HL-L2350DW"]
    );
    assert_eq!(a.printer_int("printer-state"), Some(5));
    assert!(
        a.printer_strings("document-format-supported")
            .contains(&"application/pdf".to_owned())
    );
    let req = get(DEVICE_A).op("requested-attributes", keyword("printer-state"));
    let only = t.agent("osaka", OSAKA, &req).await;
    let names: Vec<String> = only.groups(DelimiterTag::PrinterAttributes)[0]
        .attributes()
        .iter()
        .map(|a| a.name().as_str().to_owned())
        .collect();
    assert_eq!(names, ["printer-state"]);
    let b = t.agent("osaka", OSAKA, &get(DEVICE_B)).await;
    assert_eq!(
        b.printer_strings("printer-make-and-model"),
        ["Another Printer 9000"]
    );

    let unknown = get("urn:uuid:0b7e5a52-9999-4999-8999-000000000009");
    let resp = t.agent("osaka", OSAKA, &unknown).await;
    assert_eq!(resp.status(), status::NOT_FOUND, "{}", resp.message());
    let req = t
        .req(op::GET_OUTPUT_DEVICE_ATTRIBUTES, "kyoto", "kyoto")
        .op("output-device-uuid", uri(DEVICE_A));
    let resp = t.agent("kyoto", KYOTO, &req).await;
    assert_eq!(resp.status(), status::FORBIDDEN, "{}", resp.message());
}

/// Identify-Printer from a client waits for the agent
/// (`identify-printer-requested`); Acknowledge-Identify-Printer (0x0040)
/// hands its identify-actions and message over once, and answers `none`
/// when nothing waits. The operations are advertised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledge_identify_printer_hands_over_a_waiting_identify() {
    const ACKNOWLEDGE_IDENTIFY_PRINTER: u16 = 0x0040;
    let dir = tempfile::tempdir().unwrap();
    let t = TestFront::start(config("1s", "10s", TWO_SITES), dir.path()).await;
    t.register("osaka", OSAKA, DEVICE_A, printer_attrs()).await;
    let ack = infra(&t, ACKNOWLEDGE_IDENTIFY_PRINTER, DEVICE_A);
    let resp = t.agent("osaka", OSAKA, &ack).await;
    assert_eq!(resp.status(), status::OK, "{}", resp.message());
    assert_eq!(
        message::strings(resp.op("identify-actions")),
        ["none"],
        "nothing waits"
    );

    let identify = t
        .req(op::IDENTIFY_PRINTER, "osaka", "alice")
        .op("identify-actions", keywords(&["flash", "sound"]))
        .op("message", message::text("Where are you?"));
    let resp = t.client("osaka", &identify, b"").await;
    assert_eq!(resp.status(), status::OK, "{}", resp.message());
    assert!(
        t.printer("osaka")
            .await
            .printer_strings("printer-state-reasons")
            .contains(&"identify-printer-requested".to_owned())
    );
    let resp = t.agent("osaka", OSAKA, &ack).await;
    assert_eq!(resp.status(), status::OK, "{}", resp.message());
    assert_eq!(
        message::strings(resp.op("identify-actions")),
        ["flash", "sound"]
    );
    assert_eq!(
        resp.op("message").and_then(message::as_str),
        Some("Where are you?")
    );
    assert!(
        !t.printer("osaka")
            .await
            .printer_strings("printer-state-reasons")
            .contains(&"identify-printer-requested".to_owned())
    );
    let resp = t.agent("osaka", OSAKA, &ack).await;
    assert_eq!(message::strings(resp.op("identify-actions")), ["none"]);

    let ops = message::ints(
        t.printer("osaka")
            .await
            .get(DelimiterTag::PrinterAttributes, "operations-supported"),
    );
    for code in [0x003C, 0x0040, 0x0044, 0x0045] {
        assert!(
            ops.contains(&code),
            "operations-supported lacks {code:#06x}"
        );
    }
}
