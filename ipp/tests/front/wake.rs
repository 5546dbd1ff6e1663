//! Wake-up by command mail (INFRA.md, extension 1): the front asks the
//! mailer through its channel, shows the mailer's outcome in the job, and
//! aborts or holds the job when no agent attaches in time.

use std::time::Duration;

use faxgate_ipp::codes::{job_state, op, status};
use faxgate_ipp::server::{WakeKind, WakeOutcome};

use crate::common::{OSAKA, TestFront, config, eventually, pdf};
use crate::infra::printer_attrs;

const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

/// Two sites, nara (abort on timeout) and kobe (hold), each with the
/// given wake-up timeout.
fn sites(timeout: &str) -> String {
    format!(
        "
[[sites]]
name = \"nara\"
agent = \"osaka\"
mail = \"nara@example.com\"

[sites.wake]
key = \"{KEY}\"
timeout = \"{timeout}\"

[[sites]]
name = \"kobe\"
agent = \"kyoto\"
mail = \"kobe@example.com\"

[sites.wake]
key = \"{KEY}\"
timeout = \"{timeout}\"
on_timeout = \"hold\"
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wake_up_mail_outcomes_and_the_timeout_abort_or_hold() {
    let dir = tempfile::tempdir().unwrap();
    // agent_lease 800 ms: the reaper checks the wake deadline every 100 ms.
    // The 3 s wake timeout leaves room for the job to be read after Sent
    // (below) before it runs out, on a loaded machine too.
    let mut t = TestFront::start(config("300ms", "800ms", &sites("3s")), dir.path()).await;

    // No agent attached: each Print-Job asks for a wake-up mail.
    let nara = t.print("nara", "alice", &pdf(10)).await;
    let w = t.next_wake(Duration::from_secs(2)).await;
    assert_eq!(w.kind, WakeKind::Wake);
    assert_eq!(w.site, "nara");
    assert_eq!(w.to, "nara@example.com");
    assert_eq!(w.jobs, [nara as u64]);
    assert_eq!(w.ttl, Duration::from_secs(3));
    assert!(
        w.proxy_uri.starts_with("ipps://") && w.proxy_uri.ends_with("/ipp/print/nara"),
        "{}",
        w.proxy_uri
    );
    let nara_wake = w.wake;
    let kobe = t.print("kobe", "bob", &pdf(10)).await;
    let w = t.next_wake(Duration::from_secs(2)).await;
    assert_eq!((w.kind, w.site.as_str()), (WakeKind::Wake, "kobe"));
    assert_eq!(w.jobs, [kobe as u64]);
    assert_ne!(w.wake, nara_wake, "each wake-up has its own id");
    let kobe_wake = w.wake;
    // One wake-up at a time per site: a second job does not ask again.
    let nara2 = t.print("nara", "alice", &pdf(10)).await;

    // The mailer cannot reach its server yet.
    t.front().wake_outcome(
        "nara",
        WakeKind::Wake,
        nara_wake,
        WakeOutcome::Retrying {
            error: "smtp down".into(),
        },
    );
    let j = t.job("nara", nara).await;
    assert_eq!(j.job_int("job-state"), Some(job_state::PENDING));
    let msg = j.job_str("job-state-message").unwrap_or_default();
    assert!(
        msg.contains("smtp down") && msg.contains("not sent yet"),
        "job-state-message: {msg}"
    );
    let p = t.printer("nara").await;
    assert!(
        p.printer_strings("printer-state-message")
            .first()
            .is_some_and(|m| m.contains("smtp down")),
        "{:?}",
        p.printer_strings("printer-state-message")
    );

    // Sent: the agent has the wake timeout (3 s) to attach. It does not.
    for (site, wake) in [("nara", nara_wake), ("kobe", kobe_wake)] {
        t.front()
            .wake_outcome(site, WakeKind::Wake, wake, WakeOutcome::Sent);
    }
    let j = t.job("nara", nara).await;
    let msg = j.job_str("job-state-message").unwrap_or_default();
    assert!(
        msg.contains("sent") && !msg.contains("smtp down"),
        "job-state-message after Sent: {msg}"
    );
    let mut cancels = Vec::new();
    let mut rewakes = Vec::new();
    while cancels.len() < 2 {
        let w = t.next_wake(Duration::from_secs(6)).await;
        match w.kind {
            WakeKind::Cancel => cancels.push((w.site.clone(), w.jobs.clone())),
            WakeKind::Wake => rewakes.push(w),
        }
    }
    cancels.sort();
    assert_eq!(cancels[0], ("kobe".to_owned(), vec![kobe as u64]));
    assert_eq!(cancels[1].0, "nara");
    assert!(cancels[1].1.contains(&(nara as u64)), "{cancels:?}");
    // on_timeout = abort (default).
    let tr = &t;
    let j = eventually(
        Duration::from_secs(2),
        "nara's job aborted",
        || async move {
            let j = tr.job("nara", nara).await;
            (j.job_int("job-state") == Some(job_state::ABORTED)).then_some(j)
        },
    )
    .await;
    assert_eq!(j.job_strings("job-state-reasons"), ["aborted-by-system"]);
    let msg = j.job_str("job-state-message").unwrap_or_default();
    assert!(msg.contains("did not attach"), "job-state-message: {msg}");
    // on_timeout = hold.
    let j = eventually(Duration::from_secs(2), "kobe's job held", || async move {
        let j = tr.job("kobe", kobe).await;
        (j.job_int("job-state") == Some(job_state::PENDING_HELD)).then_some(j)
    })
    .await;
    assert_eq!(
        j.job_strings("job-state-reasons"),
        ["job-hold-until-specified"]
    );
    // The job that arrived while the wake-up was under way waits for the
    // same absent agent: it must end the same way, or get a wake-up of
    // its own; never stay pending with neither an agent nor a wake-up.
    tokio::time::sleep(Duration::from_millis(200)).await;
    while let Ok(w) = t.wake_rx.try_recv() {
        rewakes.push(w);
    }
    let state = t.job("nara", nara2).await.job_int("job-state");
    let rewoken = rewakes
        .iter()
        .any(|w| w.kind == WakeKind::Wake && w.jobs.contains(&(nara2 as u64)));
    assert!(
        state == Some(job_state::ABORTED) || rewoken,
        "job {nara2}, printed to nara during its wake-up, is left in state {state:?} with no \
         wake-up request for it (wake requests after the timeout: {rewakes:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailer_that_gives_up_ends_the_jobs_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = TestFront::start(config("300ms", "800ms", &sites("1s")), dir.path()).await;
    let nara = t.print("nara", "alice", &pdf(10)).await;
    let kobe = t.print("kobe", "bob", &pdf(10)).await;
    let mut wakes = Vec::new();
    for _ in 0..2 {
        let w = t.next_wake(Duration::from_secs(2)).await;
        assert_eq!(w.kind, WakeKind::Wake);
        wakes.push((w.site, w.wake));
    }
    for (site, wake) in &wakes {
        t.front().wake_outcome(
            site,
            WakeKind::Wake,
            *wake,
            WakeOutcome::GaveUp {
                error: "550 no such user".into(),
            },
        );
    }
    let j = t.job("nara", nara).await;
    assert_eq!(j.job_int("job-state"), Some(job_state::ABORTED));
    assert_eq!(j.job_strings("job-state-reasons"), ["aborted-by-system"]);
    let msg = j.job_str("job-state-message").unwrap_or_default();
    assert!(msg.contains("550 no such user"), "job-state-message: {msg}");
    let j = t.job("kobe", kobe).await;
    assert_eq!(j.job_int("job-state"), Some(job_state::PENDING_HELD));
    assert_eq!(
        j.job_strings("job-state-reasons"),
        ["job-hold-until-specified"]
    );
    // Nothing more is asked of the mailer: no cancel for a mail never sent.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(t.wake_rx.try_recv().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_attaches_in_time_stops_the_wake_timeout() {
    let dir = tempfile::tempdir().unwrap();
    // A 3 s wake timeout and a 5 s lease: registering (TLS, SQLite) and
    // each poll below fit in them on a loaded machine too. The reaper
    // checks every 625 ms (lease / 8).
    let mut t = TestFront::start(config("300ms", "5s", &sites("3s")), dir.path()).await;
    let job = t.print("nara", "alice", &pdf(10)).await;
    let w = t.next_wake(Duration::from_secs(2)).await;
    assert_eq!((w.kind, w.jobs.clone()), (WakeKind::Wake, vec![job as u64]));
    t.front()
        .wake_outcome("nara", WakeKind::Wake, w.wake, WakeOutcome::Sent);
    let sent = tokio::time::Instant::now();
    // The agent reads the mail and attaches.
    let resp = t
        .register("nara", OSAKA, crate::common::DEVICE_A, printer_attrs())
        .await;
    assert_eq!(resp.status(), status::OK, "{}", resp.message());
    // Past the timeout: no cancel mail, the job still waits to be fetched.
    // (The device keeps its lease by polling.)
    let deadline = sent + Duration::from_secs(3) + Duration::from_millis(1300);
    while tokio::time::Instant::now() < deadline {
        let req = t
            .req(op::GET_JOBS, "nara", "osaka")
            .op("which-jobs", faxgate_ipp::message::keyword("fetchable"))
            .op(
                "output-device-uuid",
                faxgate_ipp::message::uri(crate::common::DEVICE_A),
            );
        let resp = t.agent("nara", OSAKA, &req).await;
        assert_eq!(resp.status(), status::OK);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(
        t.wake_rx.try_recv().is_err(),
        "no cancel mail once the agent attached"
    );
    let j = t.job("nara", job).await;
    assert_eq!(j.job_int("job-state"), Some(job_state::PENDING));
}

/// A mailer report is tied to its wake-up: a late GaveUp for an earlier
/// wake-up (ended when the agent attached, while its mail was still being
/// retried) must not take the current wake-up and abort its jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_report_about_an_earlier_wake_up_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    // A 5 s lease: the device below stays until it deregisters.
    let mut t = TestFront::start(config("300ms", "5s", &sites("3s")), dir.path()).await;
    let job = t.print("nara", "alice", &pdf(10)).await;
    let first = t.next_wake(Duration::from_secs(2)).await;
    assert_eq!(
        (first.kind, first.jobs.clone()),
        (WakeKind::Wake, vec![job as u64])
    );
    // The agent attaches anyway (the wake-up is over), and leaves before
    // fetching the job: a new wake-up for the same job.
    let resp = t
        .register("nara", OSAKA, crate::common::DEVICE_A, printer_attrs())
        .await;
    assert_eq!(resp.status(), status::OK, "{}", resp.message());
    let req = t.req(op::DEREGISTER_OUTPUT_DEVICE, "nara", "osaka").op(
        "output-device-uuid",
        faxgate_ipp::message::uri(crate::common::DEVICE_A),
    );
    let resp = t.agent("nara", OSAKA, &req).await;
    assert_eq!(resp.status(), status::OK, "{}", resp.message());
    let second = t.next_wake(Duration::from_secs(2)).await;
    assert_eq!(
        (second.kind, second.jobs.clone()),
        (WakeKind::Wake, vec![job as u64])
    );
    assert_ne!(second.wake, first.wake);

    // The mailer finally gives up on the first mail: nothing happens.
    t.front().wake_outcome(
        "nara",
        WakeKind::Wake,
        first.wake,
        WakeOutcome::GaveUp {
            error: "550 stale mail".into(),
        },
    );
    let j = t.job("nara", job).await;
    assert_eq!(
        j.job_int("job-state"),
        Some(job_state::PENDING),
        "a report about an earlier wake-up ended the current one's job: {:?}",
        j.job_str("job-state-message")
    );
    let msg = j.job_str("job-state-message").unwrap_or_default();
    assert!(!msg.contains("stale"), "job-state-message: {msg}");
    // The current wake-up's own reports still count.
    t.front().wake_outcome(
        "nara",
        WakeKind::Wake,
        second.wake,
        WakeOutcome::GaveUp {
            error: "550 current mail".into(),
        },
    );
    let j = t.job("nara", job).await;
    assert_eq!(j.job_int("job-state"), Some(job_state::ABORTED));
    let msg = j.job_str("job-state-message").unwrap_or_default();
    assert!(msg.contains("550 current mail"), "job-state-message: {msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_answers_under_its_account_percent_domain_alias() {
    let dir = tempfile::tempdir().unwrap();
    let t = TestFront::start(config("300ms", "800ms", &sites("1s")), dir.path()).await;
    for path in ["nara%25example.com", "nara%example.com"] {
        let req = t.req(op::GET_PRINTER_ATTRIBUTES, path, "tester");
        let resp = t.client(path, &req, b"").await;
        assert_eq!(
            resp.status(),
            status::OK,
            "/ipp/print/{path}: {}",
            resp.message()
        );
        assert_eq!(resp.printer_strings("printer-name"), ["nara"], "{path}");
    }
}

/// Half-way to the deadline with no agent, the mail is asked for once
/// more (a lost mail, or one an agent read just before it crashed, must
/// not cost the jobs): the same wake-up and jobs, for the time left. What
/// becomes of that second mail does not move the deadline, which still
/// runs from the first, nor end the jobs early.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_does_not_attach_gets_a_second_mail_half_way() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = TestFront::start(config("300ms", "800ms", &sites("6s")), dir.path()).await;
    let job = t.print("nara", "alice", &pdf(10)).await;
    let first = t.next_wake(Duration::from_secs(2)).await;
    assert_eq!(
        (first.kind, first.jobs.clone()),
        (WakeKind::Wake, vec![job as u64])
    );
    let sent = std::time::Instant::now();
    t.front()
        .wake_outcome("nara", WakeKind::Wake, first.wake, WakeOutcome::Sent);
    let again = t.next_wake(Duration::from_secs(6)).await;
    let at = sent.elapsed();
    assert_eq!(again.kind, WakeKind::Wake);
    assert_eq!(
        (again.wake, again.jobs.clone()),
        (first.wake, first.jobs.clone())
    );
    assert!(at >= Duration::from_secs(3), "not before half-way: {at:?}");
    assert!(
        again.ttl <= Duration::from_secs(3),
        "valid for the time left: {:?}",
        again.ttl
    );
    // The second mail's fate changes nothing: not the deadline, not the job.
    t.front().wake_outcome(
        "nara",
        WakeKind::Wake,
        first.wake,
        WakeOutcome::GaveUp {
            error: "550 mailbox full".into(),
        },
    );
    assert_eq!(
        t.job("nara", job).await.job_int("job-state"),
        Some(job_state::PENDING)
    );
    t.front()
        .wake_outcome("nara", WakeKind::Wake, first.wake, WakeOutcome::Sent);
    let second_sent = std::time::Instant::now();
    let cancel = t.next_wake(Duration::from_secs(8)).await;
    assert_eq!(cancel.kind, WakeKind::Cancel, "one second mail only");
    // Due 6 s after the first mail, about 3 s from now; a deadline moved
    // by the second mail would be 6 s from now.
    assert!(
        sent.elapsed() >= Duration::from_secs(6),
        "{:?}",
        sent.elapsed()
    );
    assert!(
        second_sent.elapsed() < Duration::from_millis(4_500),
        "the deadline runs from the first mail, not the second: cancel {:?} after it",
        second_sent.elapsed()
    );
}
