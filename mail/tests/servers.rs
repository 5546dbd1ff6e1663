//! The watcher and the sender against real servers: OpenSMTPD takes the
//! mail over SMTP and hands it to Dovecot over LMTP; the watcher reads it
//! over IMAP. Needs root and the Debian packages
//! `dovecot-imapd dovecot-lmtpd opensmtpd swaks`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::{
    Dovecot, DovecotOptions, OpenSmtpd, PASSWORD, USER, append, eventually, free_port,
    init_tracing, keywords, messages,
};
use faxgate_config::Secret;
use faxgate_mail::command::random_nonce;
use faxgate_mail::{
    Command, Incoming, Kind, MailOrder, MailReport, Mailer, MailerConfig, NonceCache, Signer,
    SignerLookup, SmtpConfig, SmtpSender, Tls, Trust, WatcherConfig, WatcherHandle, WatcherState,
    WatcherStatus, parse_and_verify,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const PRINTER: &str = "expp1%abc.com";
const SECRET: &[u8] = b"expp1 shared secret, test only!";
const FROM: &str = "mailer@relay.faxgate.test";
const PROXY: &str = "ipps://relay.faxgate.test/ipp/print/expp1%abc.com";
const PROCESSED: &str = "faxgate-processed";
const QUARANTINE: &str = "faxgate-quarantine";

/// A wake command for `jobs`, expiring at `expires`.
fn wake_until(expires: SystemTime, jobs: Vec<u64>) -> Command {
    Command::new(Kind::Wake, PROXY, PRINTER, jobs, expires, random_nonce())
}

/// A wake command for `jobs`, signed by `signer` and put in the mailbox
/// of the Dovecot listening on `imap_port`.
async fn send_wake(signer: &Signer, imap_port: u16, jobs: Vec<u64>) -> Command {
    let cmd = wake(jobs);
    let raw = cmd
        .to_message(signer, FROM, USER, SystemTime::now())
        .unwrap();
    append(imap_port, &raw).await;
    cmd
}

/// A wake command for `jobs`, valid for ten minutes.
fn wake(jobs: Vec<u64>) -> Command {
    wake_until(SystemTime::now() + Duration::from_secs(600), jobs)
}

/// A watcher on `imap_port` keeping its nonces in `nonce_file`, started
/// and idling; its config (to start it again) and the commands' signer.
async fn idling_with_nonces(
    imap_port: u16,
    nonce_file: &std::path::Path,
) -> (
    WatcherConfig,
    Signer,
    WatcherHandle,
    mpsc::Receiver<Incoming>,
) {
    let mut config = watcher_config(imap_port);
    config.nonce_file = Some(nonce_file.to_owned());
    let signer = Signer::hmac(SECRET).unwrap();
    let (handle, rx) =
        WatcherHandle::spawn(config.clone(), signer.verifier(), CancellationToken::new()).unwrap();
    wait_status(&handle, "IDLE", |s| s.state == WatcherState::Idling).await;
    (config, signer, handle, rx)
}

fn watcher_config(port: u16) -> WatcherConfig {
    let mut c = WatcherConfig::new(
        "127.0.0.1",
        port,
        USER,
        Secret::new(PASSWORD.to_owned()),
        PRINTER,
    );
    c.tls = Tls::None;
    c.backoff_min = Duration::from_millis(50);
    c.backoff_max = Duration::from_millis(500);
    c.io_timeout = Duration::from_secs(10);
    // Long enough that only IDLE can explain a quick delivery.
    c.poll_interval = Duration::from_secs(600);
    c.idle_timeout = Duration::from_secs(60);
    c
}

async fn next(rx: &mut mpsc::Receiver<Incoming>) -> Incoming {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("timed out waiting for a command from the watcher")
        .expect("the watcher stopped")
}

async fn wait_status(
    handle: &WatcherHandle,
    what: &str,
    pred: impl Fn(&WatcherStatus) -> bool,
) -> WatcherStatus {
    let mut rx = handle.subscribe();
    let found = tokio::time::timeout(Duration::from_secs(15), rx.wait_for(|s| pred(s))).await;
    match found {
        Ok(Ok(status)) => status.clone(),
        _ => panic!(
            "watcher never reached {what}; last status {:?}",
            handle.status()
        ),
    }
}

async fn stop(handle: WatcherHandle) {
    handle.shutdown();
    tokio::time::timeout(Duration::from_secs(5), handle.stopped())
        .await
        .expect("watcher did not stop within 5 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_mail_through_opensmtpd_reaches_the_idle_watcher_once() {
    init_tracing();
    let dovecot = Dovecot::start(DovecotOptions::default());
    let smtpd = OpenSmtpd::start(&dovecot.lmtp);
    let signer = Signer::hmac(SECRET).unwrap();
    let (handle, mut rx) = WatcherHandle::spawn(
        watcher_config(dovecot.imap_port),
        signer.verifier(),
        CancellationToken::new(),
    )
    .unwrap();
    wait_status(&handle, "IDLE", |s| {
        s.state == WatcherState::Idling && s.using_idle
    })
    .await;

    let mut smtp = SmtpConfig::new("127.0.0.1", smtpd.port);
    smtp.tls = Tls::None;
    let sender = SmtpSender::new(&smtp).unwrap();
    let cmd = wake(vec![41, 42]);
    let now = SystemTime::now();
    let sent_at = Instant::now();
    sender
        .send_command(&cmd, &signer, FROM, USER, now)
        .await
        .unwrap();
    let submitted = sent_at.elapsed();
    eventually("delivery into the Maildir", Duration::from_secs(10), || {
        dovecot.count("INBOX") == 1
    })
    .await;
    let stored = sent_at.elapsed();
    let incoming = next(&mut rx).await;
    let received = sent_at.elapsed();
    // Measured, not asserted: Dovecot batches IDLE notifications for
    // about 0.5 s, which dominates.
    println!(
        "latency: SMTP accepted {submitted:?}, in Maildir {stored:?}, \
         at the watcher's owner {received:?} (lettre -> OpenSMTPD -> LMTP -> Dovecot -> IDLE)"
    );
    assert_eq!(incoming.command, cmd);

    // Not acknowledged yet, so the mail must still be in INBOX.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(dovecot.count("INBOX"), 1, "{}", dovecot.log());
    assert_eq!(dovecot.count(PROCESSED), 0);
    incoming.ack();
    eventually(
        "the acknowledged mail in the processed folder",
        Duration::from_secs(5),
        || dovecot.count(PROCESSED) == 1 && dovecot.count("INBOX") == 0,
    )
    .await;

    // A replayed copy (same bytes, so the same nonce), a tampered one and
    // an expired one, sent with swaks and lettre.
    let replay = cmd.to_message(&signer, FROM, USER, now).unwrap();
    smtpd.swaks(FROM, USER, &replay);
    let other = wake(vec![7]);
    let tampered = String::from_utf8(other.to_message(&signer, FROM, USER, now).unwrap())
        .unwrap()
        .replace("Jobs: 7\r\n", "Jobs: 8\r\n");
    smtpd.swaks(FROM, USER, tampered.as_bytes());
    let expired = wake_until(
        SystemTime::now() - faxgate_mail::command::CLOCK_SKEW - Duration::from_secs(60),
        vec![9],
    );
    sender
        .send_command(&expired, &signer, FROM, USER, SystemTime::now())
        .await
        .unwrap();
    eventually("three mails in quarantine", Duration::from_secs(10), || {
        dovecot.count(QUARANTINE) == 3
    })
    .await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), rx.recv())
            .await
            .is_err(),
        "a refused mail reached the owner"
    );
    let mut reasons: Vec<String> = keywords(dovecot.imap_port, QUARANTINE)
        .await
        .into_iter()
        .flatten()
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            "$faxgate-bad-signature",
            "$faxgate-expired",
            "$faxgate-replayed"
        ]
    );
    assert_eq!(dovecot.count("INBOX"), 0);
    assert_eq!(dovecot.count(PROCESSED), 1);
    let status = handle.status();
    assert_eq!(
        (status.delivered, status.quarantined, status.sessions),
        (1, 3, 1)
    );
    stop(handle).await;
    assert!(smtpd.log().contains("result=Ok"), "{}", smtpd.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_reconnects_after_dovecot_crashes_and_restarts() {
    init_tracing();
    let mut dovecot = Dovecot::start(DovecotOptions::default());
    let signer = Signer::hmac(SECRET).unwrap();
    let (handle, mut rx) = WatcherHandle::spawn(
        watcher_config(dovecot.imap_port),
        signer.verifier(),
        CancellationToken::new(),
    )
    .unwrap();
    wait_status(&handle, "the first IDLE", |s| {
        s.state == WatcherState::Idling && s.sessions == 1
    })
    .await;
    let restarted = Instant::now();
    dovecot.crash_and_restart();
    let status = wait_status(&handle, "IDLE on a second session", |s| {
        s.state == WatcherState::Idling && s.sessions == 2
    })
    .await;
    println!(
        "reconnected {:?} after the restart began",
        restarted.elapsed()
    );
    assert!(status.last_error.is_some(), "{status:?}");

    let cmd = send_wake(&signer, dovecot.imap_port, vec![5]).await;
    let incoming = next(&mut rx).await;
    assert_eq!(incoming.command, cmd);
    // A second command arrives while the first waits for its ack. The
    // server announces it in its reply to the first one's MOVE, and IDLE
    // would not announce it again: it must still come at once, not after
    // the 60 s idle timeout.
    let second = send_wake(&signer, dovecot.imap_port, vec![6]).await;
    incoming.ack();
    let incoming = next(&mut rx).await;
    assert_eq!(incoming.command, second);
    incoming.ack();
    eventually(
        "both mails in the processed folder",
        Duration::from_secs(5),
        || dovecot.count(PROCESSED) == 2 && dovecot.count("INBOX") == 0,
    )
    .await;
    stop(handle).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_without_idle_or_move_is_polled() {
    init_tracing();
    // Dovecot advertising neither IDLE nor MOVE nor UIDPLUS: the watcher
    // must poll and file with COPY, STORE \Deleted and EXPUNGE.
    let dovecot = Dovecot::start(DovecotOptions {
        capabilities: Some("IMAP4rev1 LITERAL+ SASL-IR LOGIN-REFERRALS ID ENABLE".to_owned()),
        ..DovecotOptions::default()
    });
    let signer = Signer::hmac(SECRET).unwrap();
    let mut config = watcher_config(dovecot.imap_port);
    config.poll_interval = Duration::from_millis(200);
    let (handle, mut rx) =
        WatcherHandle::spawn(config, signer.verifier(), CancellationToken::new()).unwrap();
    wait_status(&handle, "polling", |s| {
        s.state == WatcherState::Polling && !s.using_idle && s.sessions == 1
    })
    .await;

    let cmd = send_wake(&signer, dovecot.imap_port, vec![11, 12, 13]).await;
    // The owner drops the first offer without acknowledging it: the mail
    // must stay and be offered again, not be called a replay.
    let first = next(&mut rx).await;
    assert_eq!(first.command, cmd);
    drop(first);
    let second = next(&mut rx).await;
    assert_eq!(second.command, cmd);
    assert_eq!(dovecot.count("INBOX"), 1);
    second.ack();
    eventually(
        "the mail in the processed folder",
        Duration::from_secs(5),
        || dovecot.count(PROCESSED) == 1 && dovecot.count("INBOX") == 0,
    )
    .await;
    let status = handle.status();
    assert_eq!((status.delivered, status.quarantined), (1, 0));
    stop(handle).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_tls_with_pin_and_starttls_with_ca_file() {
    init_tracing();
    let dovecot = Dovecot::start(DovecotOptions {
        tls: true,
        ..DovecotOptions::default()
    });
    let signer = Signer::hmac(SECRET).unwrap();
    let setups = [
        (
            "implicit TLS, pinned",
            Tls::Implicit,
            "127.0.0.1",
            dovecot.imaps_port,
            Trust::Pin(dovecot.cert_fingerprint),
        ),
        (
            "STARTTLS, CA file",
            Tls::StartTls,
            "localhost",
            dovecot.imap_port,
            Trust::CaFile(dovecot.cert_pem.clone()),
        ),
    ];
    for (n, (what, tls, host, port, trust)) in setups.into_iter().enumerate() {
        let mut config = watcher_config(port);
        config.host = host.to_owned();
        config.tls = tls;
        config.trust = trust;
        let (handle, mut rx) =
            WatcherHandle::spawn(config, signer.verifier(), CancellationToken::new()).unwrap();
        wait_status(&handle, what, |s| s.state == WatcherState::Idling).await;
        let cmd = send_wake(&signer, dovecot.imap_port, vec![n as u64 + 1]).await;
        let incoming = next(&mut rx).await;
        assert_eq!(incoming.command, cmd, "{what}");
        incoming.ack();
        eventually(what, Duration::from_secs(5), || {
            dovecot.count(PROCESSED) == n + 1
        })
        .await;
        stop(handle).await;
    }

    // A wrong pin never gets as far as LOGIN.
    let mut config = watcher_config(dovecot.imaps_port);
    config.tls = Tls::Implicit;
    config.trust = Trust::Pin([0; 32]);
    let (handle, _rx) =
        WatcherHandle::spawn(config, signer.verifier(), CancellationToken::new()).unwrap();
    let status = wait_status(&handle, "a TLS failure", |s| s.last_error.is_some()).await;
    assert!(
        status
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("TLS handshake"),
        "{status:?}"
    );
    assert_eq!(status.sessions, 0);
    stop(handle).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_nonces_survive_a_restart_and_an_unwritable_file_keeps_the_mail() {
    init_tracing();
    let dovecot = Dovecot::start(DovecotOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let nonce_file = dir.path().join("nonces");
    let (config, signer, handle, mut rx) = idling_with_nonces(dovecot.imap_port, &nonce_file).await;
    assert!(nonce_file.is_file(), "the nonce file is created at start");

    // A folder where the file was: no nonce can be written, so the
    // command must not be handed over, nor the mail filed.
    std::fs::remove_file(&nonce_file).unwrap();
    std::fs::create_dir(&nonce_file).unwrap();
    let cmd = wake(vec![31]);
    let raw = cmd
        .to_message(&signer, FROM, USER, SystemTime::now())
        .unwrap();
    append(dovecot.imap_port, &raw).await;
    let status = wait_status(&handle, "a nonce-file error", |s| {
        s.last_error
            .as_deref()
            .is_some_and(|e| e.contains("cannot record the nonce"))
    })
    .await;
    let shown = status.last_error.unwrap_or_default();
    assert!(shown.contains(&nonce_file.display().to_string()), "{shown}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        rx.try_recv().is_err(),
        "a command was handed over unrecorded"
    );
    assert_eq!((dovecot.count("INBOX"), dovecot.count(QUARANTINE)), (1, 0));

    // Once the file can be written again, the mail is tried again.
    std::fs::remove_dir(&nonce_file).unwrap();
    let incoming = next(&mut rx).await;
    assert_eq!(incoming.command, cmd);
    incoming.ack();
    eventually(
        "the mail in the processed folder",
        Duration::from_secs(5),
        || dovecot.count(PROCESSED) == 1,
    )
    .await;
    let stored = std::fs::read_to_string(&nonce_file).unwrap();
    assert!(stored.contains(&cmd.nonce), "{stored}");
    stop(handle).await;

    // A restarted watcher (a fresh cache, loaded from the file) refuses a
    // replayed copy and still takes a new command.
    let (handle, mut rx) =
        WatcherHandle::spawn(config, signer.verifier(), CancellationToken::new()).unwrap();
    wait_status(&handle, "IDLE after the restart", |s| {
        s.state == WatcherState::Idling
    })
    .await;
    append(dovecot.imap_port, &raw).await;
    eventually("the replay in quarantine", Duration::from_secs(10), || {
        dovecot.count(QUARANTINE) == 1
    })
    .await;
    assert_eq!(
        keywords(dovecot.imap_port, QUARANTINE).await,
        [["$faxgate-replayed"]]
    );
    let fresh = send_wake(&signer, dovecot.imap_port, vec![32]).await;
    let incoming = next(&mut rx).await;
    assert_eq!(
        incoming.command, fresh,
        "the replay must not be handed over"
    );
    incoming.ack();
    eventually("two mails processed", Duration::from_secs(5), || {
        dovecot.count(PROCESSED) == 2
    })
    .await;
    stop(handle).await;
}

/// A mailer submitting to `port` without TLS, with the printer's key.
fn mailer(port: u16, config: MailerConfig) -> (Mailer, mpsc::Receiver<MailReport>) {
    let mut smtp = SmtpConfig::new("127.0.0.1", port);
    smtp.tls = Tls::None;
    smtp.timeout = Duration::from_secs(10);
    let signers: SignerLookup =
        Arc::new(|printer: &str| (printer == PRINTER).then(|| Signer::hmac(SECRET).unwrap()));
    Mailer::spawn(
        SmtpSender::new(&smtp).unwrap(),
        signers,
        config,
        CancellationToken::new(),
    )
}

fn order(kind: Kind, jobs: Vec<u64>) -> MailOrder {
    MailOrder {
        kind,
        printer: PRINTER.to_owned(),
        to: USER.to_owned(),
        from: FROM.to_owned(),
        proxy_uri: PROXY.to_owned(),
        jobs,
        ttl: Duration::from_secs(600),
        wake: 0,
    }
}

async fn report(rx: &mut mpsc::Receiver<MailReport>) -> MailReport {
    tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("timed out waiting for a mail report")
        .expect("the mailer stopped")
}

/// The commands in INBOX, each verified with the printer's verifier.
async fn received(dovecot: &Dovecot) -> Vec<Command> {
    let verifier = Signer::hmac(SECRET).unwrap().verifier();
    messages(dovecot.imap_port, "INBOX")
        .await
        .iter()
        .map(|raw| {
            parse_and_verify(
                raw,
                &verifier,
                PRINTER,
                SystemTime::now(),
                &mut NonceCache::default(),
            )
            .unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailer_orders_arrive_through_opensmtpd_signed_for_the_printer() {
    init_tracing();
    let dovecot = Dovecot::start(DovecotOptions::default());
    let smtpd = OpenSmtpd::start(&dovecot.lmtp);
    let (mailer, mut reports) = mailer(smtpd.port, MailerConfig::default());
    let wake = order(Kind::Wake, vec![21, 22]);
    let cancel = order(Kind::Cancel, vec![]);
    let ordered_at = SystemTime::now();
    mailer.send(wake.clone()).await.unwrap();
    mailer.send(cancel.clone()).await.unwrap();
    let mut sent = Vec::new();
    for _ in 0..2 {
        match report(&mut reports).await {
            MailReport::Sent { order, attempts: 1 } => sent.push(order),
            other => panic!("expected Sent after one attempt, got {other:?}"),
        }
    }
    sent.sort_by_key(|o| o.kind == Kind::Cancel);
    assert_eq!(sent, [wake, cancel]);
    eventually("both mails in the Maildir", Duration::from_secs(10), || {
        dovecot.count("INBOX") == 2
    })
    .await;
    let mut commands = received(&dovecot).await;
    commands.sort_by_key(|c| c.kind == Kind::Cancel);
    let shape: Vec<_> = commands
        .iter()
        .map(|c| {
            (
                c.kind,
                c.printer.as_str(),
                c.proxy_uri.as_str(),
                c.job_ids.clone(),
            )
        })
        .collect();
    assert_eq!(
        shape,
        [
            (Kind::Wake, PRINTER, PROXY, vec![21, 22]),
            (Kind::Cancel, PRINTER, PROXY, vec![])
        ]
    );
    for c in &commands {
        // `expires` is now + ttl, cut to whole seconds.
        let lead = c.expires.duration_since(ordered_at).unwrap_or_default();
        assert!(
            lead > Duration::from_secs(590) && lead <= Duration::from_secs(600),
            "{lead:?}"
        );
    }
    assert_ne!(
        commands[0].nonce, commands[1].nonce,
        "each order has its own nonce"
    );
    assert!(smtpd.log().contains("result=Ok"), "{}", smtpd.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailer_retries_until_opensmtpd_listens_then_sends() {
    init_tracing();
    let dovecot = Dovecot::start(DovecotOptions::default());
    // Nothing listens on this port until OpenSMTPD is started on it.
    let port = free_port();
    let config = MailerConfig {
        retry_initial: Duration::from_millis(100),
        retry_max: Duration::from_millis(400),
        max_attempts: 1000,
    };
    let (mailer, mut reports) = mailer(port, config);
    let wake = order(Kind::Wake, vec![7]);
    mailer.send(wake.clone()).await.unwrap();
    for n in 1..=3 {
        match report(&mut reports).await {
            MailReport::Retrying {
                order,
                attempt,
                error,
                next_in,
            } => {
                assert_eq!((&order, attempt), (&wake, n));
                assert!(error.contains("SMTP send failed"), "{error}");
                assert!(next_in <= Duration::from_millis(400), "{next_in:?}");
            }
            other => panic!("expected Retrying {n}, got {other:?}"),
        }
    }
    // Blocks this worker until no other test holds OpenSMTPD's lock; the
    // mailer keeps retrying on the other one.
    let smtpd = OpenSmtpd::start_on(&dovecot.lmtp, Some(port));
    let mut last = 3;
    let attempts = loop {
        match report(&mut reports).await {
            MailReport::Retrying { attempt, .. } => {
                assert_eq!(attempt, last + 1, "attempts count up one by one");
                last = attempt;
            }
            MailReport::Sent { order, attempts } => {
                assert_eq!(order, wake);
                break attempts;
            }
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(attempts, last + 1);
    eventually("the mail in the Maildir", Duration::from_secs(10), || {
        dovecot.count("INBOX") == 1
    })
    .await;
    let commands = received(&dovecot).await;
    assert_eq!(commands.len(), 1);
    assert_eq!(
        (commands[0].kind, commands[0].job_ids.clone()),
        (Kind::Wake, vec![7])
    );
    assert!(smtpd.log().contains("result=Ok"), "{}", smtpd.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mail_that_cannot_be_filed_does_not_hold_up_newer_mail() {
    init_tracing();
    let dovecot = Dovecot::start(DovecotOptions::default());
    let signer = Signer::hmac(SECRET).unwrap();
    let (handle, mut rx) = WatcherHandle::spawn(
        watcher_config(dovecot.imap_port),
        signer.verifier(),
        CancellationToken::new(),
    )
    .unwrap();
    wait_status(&handle, "IDLE", |s| s.state == WatcherState::Idling).await;
    // The processed folder refuses every move, as one over quota would.
    dovecot.set_writable(PROCESSED, false);
    let mail = |cmd: &Command| {
        cmd.to_message(&signer, FROM, USER, SystemTime::now())
            .unwrap()
    };
    let (first, second) = (wake(vec![41]), wake(vec![42]));
    append(dovecot.imap_port, &mail(&first)).await;
    let incoming = next(&mut rx).await;
    assert_eq!(incoming.command, first);
    append(dovecot.imap_port, &mail(&second)).await;
    // Acknowledged, but its move is refused: UID 2 must still come.
    incoming.ack();
    let incoming = next(&mut rx).await;
    assert_eq!(
        incoming.command, second,
        "an unfileable mail held up newer mail"
    );
    incoming.ack();
    // Retries back off within the session instead of reconnecting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = handle.status();
    assert_eq!(status.sessions, 1, "reconnected: {status:?}");
    assert_eq!(status.delivered, 0, "{status:?}");
    assert_eq!(dovecot.count("INBOX"), 2);

    // Once the folder takes mail again, both are filed, in that session.
    dovecot.set_writable(PROCESSED, true);
    let status = wait_status(&handle, "both filed", |s| s.delivered == 2).await;
    assert_eq!(status.sessions, 1, "{status:?}");
    assert_eq!((dovecot.count("INBOX"), dovecot.count(PROCESSED)), (0, 2));
    assert!(rx.try_recv().is_err(), "a command was handed over twice");
    stop(handle).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_arriving_while_a_backlog_is_filed_is_not_missed() {
    init_tracing();
    let dovecot = Dovecot::start(DovecotOptions::default());
    let signer = Signer::hmac(SECRET).unwrap();
    // Each move adds two unsolicited responses; the library keeps 100.
    let mut s = common::imap(dovecot.imap_port).await;
    for i in 0..150 {
        let spam = format!("From: a@b.test\r\nSubject: spam {i}\r\n\r\nnot a command\r\n");
        s.append("INBOX", None, None, spam.as_bytes())
            .await
            .unwrap();
    }
    s.logout().await.unwrap();
    let (handle, mut rx) = WatcherHandle::spawn(
        watcher_config(dovecot.imap_port),
        signer.verifier(),
        CancellationToken::new(),
    )
    .unwrap();
    wait_status(&handle, "the backlog half filed", |s| s.quarantined >= 60).await;
    let cmd = send_wake(&signer, dovecot.imap_port, vec![51]).await;
    // `next` waits 10 s; the IDLE would last 60 s.
    let incoming = next(&mut rx).await;
    assert_eq!(incoming.command, cmd);
    incoming.ack();
    let status = wait_status(&handle, "all filed", |s| {
        s.delivered == 1 && s.quarantined == 150
    })
    .await;
    assert_eq!(status.sessions, 1, "{status:?}");
    stop(handle).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_handed_over_before_shutdown_is_not_handed_over_again() {
    init_tracing();
    let dovecot = Dovecot::start(DovecotOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let (config, signer, handle, mut rx) =
        idling_with_nonces(dovecot.imap_port, &dir.path().join("nonces")).await;
    send_wake(&signer, dovecot.imap_port, vec![61]).await;
    // The owner holds the command (it may be acting on it) at shutdown.
    let held = next(&mut rx).await;
    stop(handle).await;
    drop(held);
    drop(rx);

    let (handle, mut rx) =
        WatcherHandle::spawn(config, signer.verifier(), CancellationToken::new()).unwrap();
    eventually(
        "the mail filed as a replay",
        Duration::from_secs(10),
        || dovecot.count(QUARANTINE) == 1,
    )
    .await;
    assert_eq!(
        keywords(dovecot.imap_port, QUARANTINE).await,
        [["$faxgate-replayed"]]
    );
    assert!(rx.try_recv().is_err(), "the command was handed over twice");
    stop(handle).await;
}
