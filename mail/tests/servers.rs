//! The watcher and the sender against real servers: OpenSMTPD takes the
//! mail over SMTP and hands it to Dovecot over LMTP; the watcher reads it
//! over IMAP. Needs root and the Debian packages
//! `dovecot-imapd dovecot-lmtpd opensmtpd swaks`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant, SystemTime};

use common::{
    Dovecot, DovecotOptions, OpenSmtpd, PASSWORD, USER, append, eventually, init_tracing, keywords,
};
use faxgate_config::Secret;
use faxgate_mail::command::random_nonce;
use faxgate_mail::{
    Command, Incoming, Kind, Signer, SmtpConfig, SmtpSender, Tls, Trust, WatcherConfig,
    WatcherHandle, WatcherState, WatcherStatus,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const PRINTER: &str = "expp1%abc.com";
const SECRET: &[u8] = b"expp1 shared secret, test only!";
const FROM: &str = "mailer@relay.faxgate.test";
const PROCESSED: &str = "faxgate-processed";
const QUARANTINE: &str = "faxgate-quarantine";

/// A wake command for `jobs`, expiring at `expires`.
fn wake_until(expires: SystemTime, jobs: Vec<u64>) -> Command {
    Command::new(
        Kind::Wake,
        "ipps://relay.faxgate.test/ipp/print/expp1%abc.com",
        PRINTER,
        jobs,
        expires,
        random_nonce(),
    )
}

/// A wake command for `jobs`, valid for ten minutes.
fn wake(jobs: Vec<u64>) -> Command {
    wake_until(SystemTime::now() + Duration::from_secs(600), jobs)
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
    let expired = wake_until(SystemTime::now() - Duration::from_secs(60), vec![9]);
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

    let cmd = wake(vec![5]);
    let raw = cmd
        .to_message(&signer, FROM, USER, SystemTime::now())
        .unwrap();
    append(dovecot.imap_port, &raw).await;
    let incoming = next(&mut rx).await;
    assert_eq!(incoming.command, cmd);
    // A second command arrives while the first waits for its ack. The
    // server announces it in its reply to the first one's MOVE, and IDLE
    // would not announce it again: it must still come at once, not after
    // the 60 s idle timeout.
    let second = wake(vec![6]);
    let raw = second
        .to_message(&signer, FROM, USER, SystemTime::now())
        .unwrap();
    append(dovecot.imap_port, &raw).await;
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

    let cmd = wake(vec![11, 12, 13]);
    let raw = cmd
        .to_message(&signer, FROM, USER, SystemTime::now())
        .unwrap();
    append(dovecot.imap_port, &raw).await;
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
        let cmd = wake(vec![n as u64 + 1]);
        let raw = cmd
            .to_message(&signer, FROM, USER, SystemTime::now())
            .unwrap();
        append(dovecot.imap_port, &raw).await;
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
