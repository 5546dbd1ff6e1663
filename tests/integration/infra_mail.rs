//! Printing through a firewall (seed 000) end to end on loopback, with
//! every part real: `faxgate relay` serves the site on its IPP front
//! (ipp/INFRA.md) and mails through OpenSMTPD, Dovecot keeps the printer's
//! mailbox, `faxgate appliance` runs the print agent (the INFRA Proxy)
//! that watches it (mail/COMMAND-MAIL.md), and `ippeveprinter` is the
//! printer behind the firewall, keeping each document it gets (`-k`).
//! Clients are third-party tools (`ipptool`) or `faxgate print
//! --via-mail`; clients use the front's plain listener, the agent its TLS
//! listener with the printed fingerprint pinned.
//!
//! Needs root and the Debian packages of print.rs (`cups-ipp-utils
//! avahi-daemon dbus`) and of the mail harness (`dovecot-imapd
//! dovecot-lmtpd opensmtpd swaks`).

use std::cell::RefCell;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use faxgate_mail::command::random_nonce;
use faxgate_mail::{Command as MailCommand, Kind, Signer};
use serde_json::Value;

use crate::common::{Proc, faxgate, need, run};
use crate::print::{EvePrinter, spooled, start_ippeveprinter};

#[path = "../../mail/tests/common/mod.rs"]
mod mailsrv;

use mailsrv::{Dovecot, DovecotOptions, OpenSmtpd};

/// The site's name at the front.
const SITE: &str = "osaka";
/// The printer's mail address: the Dovecot account of the harness.
const PRINTER_MAIL: &str = mailsrv::USER;
/// The HMAC-SHA256 secret the relay signs with and the agent checks.
const KEY_HEX: &str = "6661786761746520696e667261206d61696c2074657374206b6579203031";
/// Another secret, for forged mails.
const WRONG_KEY_HEX: &str = "6d616c6c6f727920747269657320746f20666f7267652061206d61696c21";
/// The relay user the site names as its agent.
const AGENT_USER: &str = "osaka-agent";
const AGENT_PASSWORD: &str = "agent-pw-0123456";
/// The relay user the appliance logs in with for fax (seed 001).
const BRANCH_USER: &str = "osaka";
const BRANCH_PASSWORD: &str = "branch-pw-0123456";
const PROCESSED: &str = "faxgate-processed";
const QUARANTINE: &str = "faxgate-quarantine";

/// Runs an async harness helper (IMAP checks) to completion.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Polls `f` every 100 ms until it holds or `limit` passes; on timeout
/// panics with `diag()` (the logs) so the failure explains itself.
fn until(what: &str, limit: Duration, diag: impl Fn() -> String, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}\n{}",
            diag()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A PDF with a binary stream (every byte value) and a tag making it
/// unique, so "byte-exact in the spool" cannot match another test's file.
fn pdf(tag: &str) -> Vec<u8> {
    let binary: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    let mut out = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n".to_vec();
    out.extend_from_slice(
        b"1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n\
          2 0 obj\n<< /Type /Pages /Kids [3 0 R] /Count 1 >>\nendobj\n\
          3 0 obj\n<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] >>\nendobj\n",
    );
    out.extend_from_slice(format!("% faxgate test: {tag}\n").as_bytes());
    out.extend_from_slice(b"4 0 obj\n<< /Length 4096 >>\nstream\n");
    out.extend_from_slice(&binary);
    out.extend_from_slice(b"\nendstream\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n");
    out
}

/// Whether ippeveprinter kept a file with exactly these bytes.
fn printed(printer: &EvePrinter, doc: &[u8]) -> bool {
    spooled(printer.spool.path())
        .iter()
        .any(|(_, bytes)| bytes == doc)
}

/// How the site wakes its agent.
enum Wake {
    /// No wake section: the agent is always attached, or the client mails.
    None,
    /// `[ipp.sites.wake]` and `[mailer]` to this SMTP port.
    ByMail {
        timeout: &'static str,
        smtp_port: u16,
    },
}

/// A running `faxgate relay` with the IPP front.
struct Relay {
    proc: Proc,
    dir: PathBuf,
    /// The plain IPP listener (clients, the site's JSON status).
    ipp: SocketAddr,
    /// The TLS IPP listener (the agent).
    ipps: SocketAddr,
    /// The fax relay listener (the appliance logs in there).
    tcp: SocketAddr,
    /// SHA-256 fingerprint of the front's certificate.
    pin: String,
}

impl Relay {
    fn start(dir: &Path, wake: &Wake) -> Relay {
        let dir = dir.join("relay");
        std::fs::create_dir_all(&dir).unwrap();
        let (site_wake, mailer) = match wake {
            Wake::None => (String::new(), String::new()),
            Wake::ByMail { timeout, smtp_port } => (
                format!(
                    "[ipp.sites.wake]\nkey = \"{KEY_HEX}\"\nscheme = \"hmac-sha256\"\n\
                     timeout = \"{timeout}\"\non_timeout = \"abort\"\n"
                ),
                format!(
                    "[mailer]\nhost = \"127.0.0.1\"\nport = {smtp_port}\ntls = \"none\"\n\
                     from = \"relay@faxgate.test\"\nretry_initial = \"250ms\"\n\
                     retry_max = \"1s\"\nmax_attempts = 200\n"
                ),
            ),
        };
        let cfg = dir.join("relay.toml");
        std::fs::write(
            &cfg,
            format!(
                "[relay]\nlisten = \"127.0.0.1:0\"\nstate_dir = {:?}\n\
                 argon2_memory_kib = 1024\nargon2_iterations = 1\n\
                 [ipp]\nlisten = \"127.0.0.1:0\"\nlisten_tls = \"127.0.0.1:0\"\n\
                 notify_wait = \"5s\"\nagent_lease = \"30s\"\n\
                 [[ipp.sites]]\nname = \"{SITE}\"\nagent = \"{AGENT_USER}\"\n\
                 mail = \"{PRINTER_MAIL}\"\ninfo = \"behind the firewall\"\n\
                 {site_wake}{mailer}",
                dir.join("state").display().to_string()
            ),
        )
        .unwrap();
        for (user, password) in [(AGENT_USER, AGENT_PASSWORD), (BRANCH_USER, BRANCH_PASSWORD)] {
            run(Command::new(faxgate())
                .args(["relay", "--config"])
                .arg(&cfg)
                .args(["user", "add", user, "--password-env", "FG_PW"])
                .env("FG_PW", password));
        }
        let proc = crate::common::spawn_relay(&cfg, &dir);
        let mut relay = Relay {
            proc,
            ipp: SocketAddr::from(([127, 0, 0, 1], 0)),
            ipps: SocketAddr::from(([127, 0, 0, 1], 0)),
            tcp: SocketAddr::from(([127, 0, 0, 1], 0)),
            pin: String::new(),
            dir,
        };
        let out = relay.dir.join("relay.out");
        let log = relay.dir.join("relay.log");
        let diag = || format!("relay stdout:\n{}\nrelay log:\n{}", read(&out), read(&log));
        until(
            "the relay's listeners",
            Duration::from_secs(20),
            diag,
            || {
                assert!(
                    relay.proc.0.try_wait().unwrap().is_none(),
                    "the relay exited:\n{}",
                    diag()
                );
                read(&out).contains("relay (tcp) listening on ")
            },
        );
        let text = read(&out);
        let value = |prefix: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(prefix))
                .unwrap_or_else(|| panic!("no `{prefix}` in the relay's output:\n{text}"))
                .trim()
                .to_owned()
        };
        relay.ipp = value("ipp (http) listening on ").parse().unwrap();
        relay.ipps = value("ipp (https) listening on ").parse().unwrap();
        relay.tcp = value("relay (tcp) listening on ").parse().unwrap();
        relay.pin = value("IPP TLS certificate fingerprint (SHA-256): ");
        relay
    }

    /// The site URI clients print to.
    fn site_uri(&self) -> String {
        format!("ipp://127.0.0.1:{}/ipp/print/{SITE}", self.ipp.port())
    }

    /// The site URI the agent attaches to.
    fn agent_uri(&self) -> String {
        format!("ipps://127.0.0.1:{}/ipp/print/{SITE}", self.ipps.port())
    }

    fn log(&self) -> String {
        read(&self.dir.join("relay.log"))
    }

    /// How many times an agent registered (Update-Output-Device-Attributes
    /// that attached a device).
    fn attachments(&self) -> usize {
        self.log().matches("Printer agent attached.").count()
    }

    /// The site's JSON status page (GET on the site URL).
    fn site_status(&self) -> Value {
        let Ok(mut s) = TcpStream::connect(self.ipp) else {
            return Value::Null;
        };
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let req = format!(
            "GET /ipp/print/{SITE} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
            self.ipp.port()
        );
        if s.write_all(req.as_bytes()).is_err() {
            return Value::Null;
        }
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        let text = String::from_utf8_lossy(&buf);
        text.split_once("\r\n\r\n")
            .and_then(|(_, body)| serde_json::from_str(body).ok())
            .unwrap_or(Value::Null)
    }

    fn attached(&self) -> bool {
        self.site_status()["attached"] == Value::Bool(true)
    }

    /// Prints `doc` with ipptool's Print-Job; returns the job id.
    fn print(&self, doc: &[u8], name: &str) -> i32 {
        let file = self.dir.join(format!("{name}.pdf"));
        std::fs::write(&file, doc).unwrap();
        let out = ipptool(
            &self.site_uri(),
            &self.dir,
            &format!(
                "OPERATION Print-Job\n\
                 ATTR name job-name {name}\n\
                 ATTR mimeMediaType document-format application/pdf\n\
                 FILE $filename\n\
                 STATUS successful-ok\n\
                 DISPLAY job-id\n\
                 DISPLAY job-state\n"
            ),
            Some(&file),
        );
        field(&out, "job-id")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no job-id in ipptool's output:\n{out}"))
    }

    /// The job as a client sees it (ipptool Get-Job-Attributes):
    /// (job-state, job-state-reasons, job-state-message).
    fn job(&self, id: i32) -> (String, String, String) {
        let out = ipptool(
            &self.site_uri(),
            &self.dir,
            &format!(
                "OPERATION Get-Job-Attributes\n\
                 ATTR integer job-id {id}\n\
                 STATUS successful-ok\n\
                 DISPLAY job-state\n\
                 DISPLAY job-state-reasons\n\
                 DISPLAY job-state-message\n"
            ),
            None,
        );
        (
            field(&out, "job-state").unwrap_or_default(),
            field(&out, "job-state-reasons").unwrap_or_default(),
            field(&out, "job-state-message").unwrap_or_default(),
        )
    }
}

/// Runs one ipptool test (`ops` after the common operation attributes)
/// against `uri`; fails unless it passes. Returns ipptool's report.
fn ipptool(uri: &str, dir: &Path, ops: &str, file: Option<&Path>) -> String {
    need("ipptool", "cups-ipp-utils");
    let (operation, rest) = ops.split_once('\n').unwrap();
    let test = dir.join("ipptool.test");
    std::fs::write(
        &test,
        format!(
            "{{\n NAME \"{operation}\"\n {operation}\n GROUP operation-attributes-tag\n \
             ATTR charset attributes-charset utf-8\n \
             ATTR naturalLanguage attributes-natural-language en\n \
             ATTR uri printer-uri $uri\n \
             ATTR name requesting-user-name tester\n{rest}}}\n"
        ),
    )
    .unwrap();
    let mut cmd = Command::new("ipptool");
    cmd.args(["-T", "10", "-t"]);
    if let Some(f) = file {
        cmd.arg("-f").arg(f);
    }
    let out = cmd.arg(uri).arg(&test).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && !text.contains("[FAIL]"),
        "ipptool {operation} failed: {}\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The value ipptool DISPLAYs for `name` (`name (type) = value`).
fn field(report: &str, name: &str) -> Option<String> {
    report.lines().find_map(|l| {
        let rest = l.trim().strip_prefix(name)?.strip_prefix(" (")?;
        Some(rest.split_once(") = ")?.1.trim().to_owned())
    })
}

/// When the agent attaches.
enum Attach {
    Always,
    /// Always attached, asking for jobs by polling (no long poll).
    AlwaysPolling,
    /// On a wake-up mail in the Dovecot account on this IMAP port.
    OnMail {
        imap_port: u16,
    },
}

/// A running `faxgate appliance` with the print agent.
struct Appliance {
    proc: Proc,
    dir: PathBuf,
}

impl Appliance {
    fn start(dir: &Path, relay: &Relay, printer: &EvePrinter, attach: &Attach) -> Appliance {
        let dir = dir.join("appliance");
        std::fs::create_dir_all(&dir).unwrap();
        let (mode, mail) = match attach {
            Attach::Always => ("always", String::new()),
            Attach::AlwaysPolling => ("always\"\ntransport = \"poll", String::new()),
            Attach::OnMail { imap_port } => (
                "on-mail",
                format!(
                    "[agent.mail]\nhost = \"127.0.0.1\"\nport = {imap_port}\ntls = \"none\"\n\
                     user = \"{}\"\npassword = \"{}\"\nscheme = \"hmac-sha256\"\n\
                     key = \"{KEY_HEX}\"\npoll_interval = \"1s\"\n",
                    mailsrv::USER,
                    mailsrv::PASSWORD
                ),
            ),
        };
        let cfg = dir.join("appliance.toml");
        std::fs::write(
            &cfg,
            format!(
                "state_dir = {:?}\n\
                 [relay]\nserver = \"{}\"\nuser = \"{BRANCH_USER}\"\npassword = \"{BRANCH_PASSWORD}\"\n\
                 [printer]\nuri = \"{}\"\n\
                 [panel]\nlisten = \"127.0.0.1:0\"\n\
                 [agent]\nsite = \"{}\"\nuser = \"{AGENT_USER}\"\npassword = \"{AGENT_PASSWORD}\"\n\
                 attach = \"{mode}\"\npoll_interval = \"1s\"\nstatus_interval = \"2s\"\n\
                 idle_detach = \"2s\"\njob_poll_interval = \"200ms\"\n\
                 reconnect_initial = \"200ms\"\nreconnect_max = \"2s\"\nconnect_timeout = \"5s\"\n\
                 request_timeout = \"20s\"\nshutdown_grace = \"1s\"\n\
                 [agent.tls]\npin_sha256 = \"{}\"\n{mail}",
                dir.join("state").display().to_string(),
                relay.tcp,
                printer.uri,
                relay.agent_uri(),
                relay.pin,
            ),
        )
        .unwrap();
        let proc = Proc(
            Command::new(faxgate())
                .args(["appliance", "--config"])
                .arg(&cfg)
                .env("RUST_LOG", "info")
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(dir.join("appliance.out")).unwrap())
                .stderr(std::fs::File::create(dir.join("appliance.log")).unwrap())
                .spawn()
                .unwrap(),
        );
        let mut app = Appliance { proc, dir };
        let out = app.dir.join("appliance.out");
        let log = app.dir.join("appliance.log");
        let diag = || format!("appliance log:\n{}", read(&log));
        until(
            "the appliance to start",
            Duration::from_secs(20),
            diag,
            || {
                assert!(
                    app.proc.0.try_wait().unwrap().is_none(),
                    "the appliance exited:\n{}",
                    diag()
                );
                read(&out).contains("appliance: panel API on ")
            },
        );
        app
    }

    fn log(&self) -> String {
        read(&self.dir.join("appliance.log"))
    }
}

/// Everything a failure message needs.
fn logs(relay: &Relay, app: Option<&Appliance>) -> String {
    format!(
        "--- relay log:\n{}\n--- appliance log:\n{}",
        relay.log(),
        app.map(Appliance::log).unwrap_or_default()
    )
}

/// A wake command for the site, as the relay would sign it.
fn wake_command(proxy: &str, expires: SystemTime) -> MailCommand {
    MailCommand::new(Kind::Wake, proxy, SITE, vec![], expires, random_nonce())
}

fn signer(hex_key: &str) -> Signer {
    Signer::hmac(&hex::decode(hex_key).unwrap()).unwrap()
}

/// The raw messages in `folder` of the harness account.
fn mails(dovecot: &Dovecot, folder: &str) -> Vec<String> {
    block_on(mailsrv::messages(dovecot.imap_port, folder))
        .iter()
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .collect()
}

/// Runs `cmd` with its output in files, killing it after `limit`.
fn output_within(cmd: &mut Command, dir: &Path, limit: Duration) -> Output {
    let (out, err) = (dir.join("cmd.out"), dir.join("cmd.err"));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} did not finish within {limit:?}\nstdout: {}\nstderr: {}",
                read(&out),
                read(&err)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    Output {
        status,
        stdout: std::fs::read(&out).unwrap_or_default(),
        stderr: std::fs::read(&err).unwrap_or_default(),
    }
}

/// Extension 1: the relay mails the sleeping agent, the agent wakes,
/// fetches and prints; the client only ever speaks IPP to the site.
#[test]
fn extension_1_relay_wakes_the_agent_by_mail() {
    let dir = tempfile::tempdir().unwrap();
    let printer = start_ippeveprinter("application/pdf,application/octet-stream", "/bin/true");
    let dovecot = Dovecot::start(DovecotOptions::default());
    let smtpd = OpenSmtpd::start(&dovecot.lmtp);
    let relay = Relay::start(
        dir.path(),
        &Wake::ByMail {
            timeout: "20s",
            smtp_port: smtpd.port,
        },
    );
    let app = Appliance::start(
        dir.path(),
        &relay,
        &printer,
        &Attach::OnMail {
            imap_port: dovecot.imap_port,
        },
    );
    let diag = || logs(&relay, Some(&app));
    assert!(
        !relay.attached() && relay.attachments() == 0,
        "an on-mail agent must not attach before a mail:\n{}",
        diag()
    );

    let doc = pdf("extension 1");
    let job = relay.print(&doc, "wake-by-mail");
    until(
        "the document in ippeveprinter's spool",
        Duration::from_secs(40),
        || format!("{}\n--- smtpd:\n{}", diag(), smtpd.log()),
        || printed(&printer, &doc),
    );
    until(
        "the client to see the job completed",
        Duration::from_secs(20),
        diag,
        || relay.job(job).0 == "completed",
    );
    until(
        "the command mail in the processed folder",
        Duration::from_secs(10),
        diag,
        || dovecot.count(PROCESSED) == 1 && dovecot.count("INBOX") == 0,
    );
    let processed = mails(&dovecot, PROCESSED);
    assert!(
        processed[0].contains("Kind: wake")
            && processed[0].contains(&format!("Jobs: {job}\r\n"))
            && processed[0].contains(&format!("Printer: {SITE}\r\n")),
        "{}",
        processed[0]
    );
    assert_eq!(dovecot.count(QUARANTINE), 0, "{}", diag());
    assert!(relay.log().contains("Wake-up mail sent"), "{}", relay.log());
    // BENCHMARKS.md records this: Print-Job accepted -> the woken agent's
    // Fetch-Job, from the relay's own log timestamps (no threshold).
    let log = relay.log();
    let at = |what: &str| {
        log.lines()
            .find(|l| l.contains(what) && l.contains(&format!("job_id={job} ")))
            .and_then(|l| l.split_whitespace().next())
            .and_then(seconds_of_day)
    };
    let first = |what: &str| {
        log.lines()
            .find(|l| l.contains(what))
            .and_then(|l| l.split_whitespace().next())
            .and_then(seconds_of_day)
    };
    if let (Some(a), Some(m), Some(att), Some(f)) = (
        at("Job accepted and spooled."),
        first("Wake-up mail sent"),
        first("Printer agent attached."),
        at("Job fetched by the printer agent."),
    ) {
        println!(
            "bench: Print-Job -> Fetch-Job with a command-mail wake-up: {:.0} ms \
             (accepted -> mail sent {:.0} ms, -> agent attached {:.0} ms, -> fetched {:.0} ms)",
            (f - a) * 1000.0,
            (m - a) * 1000.0,
            (att - m) * 1000.0,
            (f - att) * 1000.0
        );
    }
}

/// Seconds since midnight of an RFC 3339 UTC log timestamp.
fn seconds_of_day(ts: &str) -> Option<f64> {
    let time = ts.split('T').nth(1)?.trim_end_matches('Z');
    let mut parts = time.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// The seed's basic model: no wake section at the relay; the client
/// prints to the site and mails the agent itself.
#[test]
fn basic_model_client_sends_the_command_mail() {
    let dir = tempfile::tempdir().unwrap();
    let printer = start_ippeveprinter("application/pdf,application/octet-stream", "/bin/true");
    let dovecot = Dovecot::start(DovecotOptions::default());
    let smtpd = OpenSmtpd::start(&dovecot.lmtp);
    let relay = Relay::start(dir.path(), &Wake::None);
    let app = Appliance::start(
        dir.path(),
        &relay,
        &printer,
        &Attach::OnMail {
            imap_port: dovecot.imap_port,
        },
    );
    let diag = || logs(&relay, Some(&app));

    let doc = pdf("basic model");
    let file = dir.path().join("basic.pdf");
    std::fs::write(&file, &doc).unwrap();
    let out = output_within(
        Command::new(faxgate())
            .arg("print")
            .arg(&file)
            .args(["--via-mail", PRINTER_MAIL, "--proxy", &relay.site_uri()])
            .args(["--smtp", &format!("127.0.0.1:{}", smtpd.port)])
            .args(["--smtp-tls", "none", "--from", "client@faxgate.test"])
            .args(["--key-env", "FG_PRINTER_KEY", "--attach-timeout", "30s"])
            .args(["--user", "tester"])
            .env("FG_PRINTER_KEY", KEY_HEX)
            .env("NO_COLOR", "1"),
        dir.path(),
        Duration::from_secs(50),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "faxgate print --via-mail failed: {}\nstdout: {stdout}\nstderr: {}\n{}\n--- smtpd:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        diag(),
        smtpd.log()
    );
    assert!(
        stdout.contains("command mail sent") && stdout.contains("completed"),
        "{stdout}"
    );
    until(
        "the document in ippeveprinter's spool",
        Duration::from_secs(10),
        diag,
        || printed(&printer, &doc),
    );
    until(
        "the command mail in the processed folder",
        Duration::from_secs(10),
        diag,
        || dovecot.count(PROCESSED) == 1,
    );
}

/// Extension 2: an agent that stays attached needs no mail at all.
#[test]
fn extension_2_always_attached() {
    let dir = tempfile::tempdir().unwrap();
    let printer = start_ippeveprinter("application/pdf,application/octet-stream", "/bin/true");
    let relay = Relay::start(dir.path(), &Wake::None);
    let app = Appliance::start(dir.path(), &relay, &printer, &Attach::Always);
    let diag = || logs(&relay, Some(&app));
    until("the agent to attach", Duration::from_secs(20), diag, || {
        relay.attached()
    });
    let doc = pdf("extension 2");
    let job = relay.print(&doc, "always-attached");
    until(
        "the document in ippeveprinter's spool",
        Duration::from_secs(20),
        diag,
        || printed(&printer, &doc),
    );
    until(
        "the client to see the job completed",
        Duration::from_secs(20),
        diag,
        || relay.job(job).0 == "completed",
    );
    assert!(relay.attached(), "{}", diag());
    assert_eq!(relay.attachments(), 1, "{}", diag());
}

/// Mails that are not valid commands for this agent do nothing and are
/// kept in the quarantine folder with the reason as a keyword.
#[test]
fn forged_expired_and_replayed_command_mails_do_nothing_and_are_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let printer = start_ippeveprinter("application/pdf,application/octet-stream", "/bin/true");
    let dovecot = Dovecot::start(DovecotOptions::default());
    let relay = Relay::start(dir.path(), &Wake::None);
    let app = Appliance::start(
        dir.path(),
        &relay,
        &printer,
        &Attach::OnMail {
            imap_port: dovecot.imap_port,
        },
    );
    let diag = || logs(&relay, Some(&app));
    let quarantined = || -> Vec<String> {
        let mut k: Vec<String> = block_on(mailsrv::keywords(dovecot.imap_port, QUARANTINE))
            .into_iter()
            .flatten()
            .collect();
        k.sort();
        k
    };
    let proxy = relay.agent_uri();
    let now = SystemTime::now();
    let message = |cmd: &MailCommand, key: &str| {
        cmd.to_message(&signer(key), "relay@faxgate.test", PRINTER_MAIL, now)
            .unwrap()
    };

    // Forged (another key) and expired (signed right, but too late).
    let forged = message(
        &wake_command(&proxy, now + Duration::from_secs(300)),
        WRONG_KEY_HEX,
    );
    let expired = message(
        &wake_command(
            &proxy,
            now - faxgate_mail::command::CLOCK_SKEW - Duration::from_secs(60),
        ),
        KEY_HEX,
    );
    block_on(mailsrv::append(dovecot.imap_port, &forged));
    block_on(mailsrv::append(dovecot.imap_port, &expired));
    until(
        "the forged and the expired mail in quarantine",
        Duration::from_secs(20),
        diag,
        || dovecot.count(QUARANTINE) == 2,
    );
    assert_eq!(
        quarantined(),
        ["$faxgate-bad-signature", "$faxgate-expired"],
        "{}",
        diag()
    );
    assert_eq!(dovecot.count(PROCESSED), 0);
    assert_eq!(relay.attachments(), 0, "{}", diag());
    assert!(!relay.attached(), "{}", diag());

    // A valid one wakes the agent, which detaches again when idle.
    let valid = message(
        &wake_command(&proxy, now + Duration::from_secs(300)),
        KEY_HEX,
    );
    block_on(mailsrv::append(dovecot.imap_port, &valid));
    until(
        "the valid mail to attach the agent",
        Duration::from_secs(20),
        diag,
        || dovecot.count(PROCESSED) == 1 && relay.attachments() == 1,
    );
    until(
        "the idle agent to detach",
        Duration::from_secs(20),
        diag,
        || !relay.attached(),
    );

    // The same mail again is a replay.
    block_on(mailsrv::append(dovecot.imap_port, &valid));
    until(
        "the replayed mail in quarantine",
        Duration::from_secs(20),
        diag,
        || dovecot.count(QUARANTINE) == 3,
    );
    assert_eq!(
        quarantined(),
        [
            "$faxgate-bad-signature",
            "$faxgate-expired",
            "$faxgate-replayed"
        ],
        "{}",
        diag()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(relay.attachments(), 1, "the replay attached:\n{}", diag());
    assert!(!relay.attached(), "{}", diag());
    assert_eq!(dovecot.count(PROCESSED), 1);
    assert_eq!(dovecot.count("INBOX"), 0);
}

/// No agent answers the wake-up mail: after the wake timeout the relay
/// mails a cancel and aborts the job, saying why.
#[test]
fn wake_timeout_sends_cancel_mail_and_aborts_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let dovecot = Dovecot::start(DovecotOptions::default());
    let smtpd = OpenSmtpd::start(&dovecot.lmtp);
    let relay = Relay::start(
        dir.path(),
        // Long enough that the client's polls (one ipptool each) cannot
        // all miss the "wake-up mail sent" state on a loaded machine.
        &Wake::ByMail {
            timeout: "6s",
            smtp_port: smtpd.port,
        },
    );
    let diag = || format!("{}\n--- smtpd:\n{}", logs(&relay, None), smtpd.log());
    let job = relay.print(&pdf("wake timeout"), "nobody-home");
    // Every state the client saw, in order, without repeats.
    let seen = RefCell::new(Vec::<(String, String, String)>::new());
    until(
        "the job to be aborted",
        Duration::from_secs(40),
        || format!("seen: {:#?}\n{}", seen.borrow(), diag()),
        || {
            let now = relay.job(job);
            let done = now.0 == "aborted";
            let mut seen = seen.borrow_mut();
            if seen.last() != Some(&now) {
                seen.push(now);
            }
            done
        },
    );
    // While it waited, the job said the mail had gone out.
    assert!(
        seen.borrow()
            .iter()
            .any(|(state, _, message)| state == "pending" && message.contains("wake-up mail sent")),
        "seen: {:#?}",
        seen.borrow()
    );
    let (_, reasons, message) = relay.job(job);
    assert!(reasons.contains("aborted-by-system"), "{reasons}");
    assert!(
        message.contains("did not attach"),
        "job-state-message: {message}"
    );
    // The wake mail, the second one half-way to the deadline (a fresh
    // command), and the cancel mail.
    until(
        "the two wake mails and the cancel mail in the mailbox",
        Duration::from_secs(20),
        diag,
        || dovecot.count("INBOX") == 3,
    );
    let inbox = mails(&dovecot, "INBOX");
    let jobs_line = format!("Jobs: {job}\r\n");
    let wakes: Vec<&String> = inbox
        .iter()
        .filter(|m| m.contains("Kind: wake\r\n") && m.contains(&jobs_line))
        .collect();
    assert_eq!(wakes.len(), 2, "{inbox:?}");
    let nonce = |m: &str| {
        m.lines()
            .find_map(|l| l.strip_prefix("Nonce: "))
            .map(str::to_owned)
    };
    assert_ne!(
        nonce(wakes[0]),
        nonce(wakes[1]),
        "each mail its own command"
    );
    assert!(
        inbox
            .iter()
            .any(|m| m.contains("Kind: cancel\r\n") && m.contains(&jobs_line)),
        "{inbox:?}"
    );
}

/// The mail server is down when the job comes: the job waits with the
/// mailer's error in its message while the mailer retries; once the
/// server is up the mail goes, the agent wakes and the job prints.
#[test]
fn mail_server_down_is_retried_and_the_job_waits_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let printer = start_ippeveprinter("application/pdf,application/octet-stream", "/bin/true");
    let dovecot = Dovecot::start(DovecotOptions::default());
    let smtp_port = mailsrv::free_port();
    let relay = Relay::start(
        dir.path(),
        &Wake::ByMail {
            timeout: "20s",
            smtp_port,
        },
    );
    let app = Appliance::start(
        dir.path(),
        &relay,
        &printer,
        &Attach::OnMail {
            imap_port: dovecot.imap_port,
        },
    );
    let diag = || logs(&relay, Some(&app));
    let doc = pdf("mail server down");
    let job = relay.print(&doc, "smtp-down");
    let last = RefCell::new(Default::default());
    until(
        "the job to say the wake-up mail is not sent yet",
        Duration::from_secs(15),
        || format!("last seen: {:?}\n{}", last.borrow(), diag()),
        || {
            let seen = relay.job(job);
            let waiting = seen.0 == "pending"
                && seen.2.contains("wake-up mail not sent yet (")
                && seen.2.contains("retrying");
            *last.borrow_mut() = seen;
            waiting
        },
    );
    assert!(
        relay.log().contains("Wake-up mail not sent yet"),
        "{}",
        diag()
    );
    assert_eq!(relay.attachments(), 0, "{}", diag());

    let smtpd = OpenSmtpd::start_on(&dovecot.lmtp, Some(smtp_port));
    until(
        "the document in ippeveprinter's spool",
        Duration::from_secs(40),
        || format!("{}\n--- smtpd:\n{}", diag(), smtpd.log()),
        || printed(&printer, &doc),
    );
    until(
        "the client to see the job completed",
        Duration::from_secs(20),
        diag,
        || relay.job(job).0 == "completed",
    );
    until(
        "the command mail in the processed folder",
        Duration::from_secs(10),
        diag,
        || dovecot.count(PROCESSED) == 1,
    );
}

/// The seed's non-blocking system: an agent that polls. It mirrors the
/// real printer's jam to the site, and a client's cancel of a job being
/// printed reaches the printer; the client sees the job canceled.
#[test]
fn polling_agent_mirrors_a_jam_and_a_cancel_reaches_the_printer() {
    let dir = tempfile::tempdir().unwrap();
    // The print command reports a jam, as a driver would, and goes on
    // printing until the test releases it (at most 60 s), so the cancel
    // reaches the printer while the job is still being printed, however
    // slow the machine.
    let script = dir.path().join("jam.sh");
    let release = dir.path().join("release");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho 'STATE: +media-jam-error' >&2\ni=0\n\
             while [ ! -e '{}' ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done\n",
            release.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let printer = start_ippeveprinter(
        "application/pdf,application/octet-stream",
        script.to_str().unwrap(),
    );
    let relay = Relay::start(dir.path(), &Wake::None);
    let app = Appliance::start(dir.path(), &relay, &printer, &Attach::AlwaysPolling);
    let diag = || logs(&relay, Some(&app));
    until("the agent to attach", Duration::from_secs(20), diag, || {
        relay.attached()
    });
    let doc = pdf("polled and canceled");
    let job = relay.print(&doc, "polled");
    until(
        "the job to be fetched",
        Duration::from_secs(20),
        diag,
        || relay.job(job).0 == "processing",
    );
    let out = ipptool(
        &relay.site_uri(),
        &relay.dir,
        &format!("OPERATION Cancel-Job\nATTR integer job-id {job}\nSTATUS successful-ok\n"),
        None,
    );
    assert!(out.contains("[PASS]"), "Cancel-Job: {out}");
    until(
        "the agent to cancel the job at the printer",
        Duration::from_secs(20),
        diag,
        || app.log().contains("Canceled the job at the printer."),
    );
    std::fs::write(&release, b"").unwrap();
    until(
        "the client to see the job canceled",
        Duration::from_secs(20),
        diag,
        || relay.job(job).0 == "canceled",
    );
    // The jam the printer reported reaches the site's clients.
    until(
        "media-jam in the site's printer-state-reasons",
        Duration::from_secs(20),
        diag,
        || {
            let out = ipptool(
                &relay.site_uri(),
                &relay.dir,
                "OPERATION Get-Printer-Attributes\nSTATUS successful-ok\nDISPLAY printer-state-reasons\n",
                None,
            );
            field(&out, "printer-state-reasons").is_some_and(|r| r.contains("media-jam"))
        },
    );
    assert!(
        read(&app.dir.join("appliance.log")).contains("transport=\"poll\""),
        "{}",
        diag()
    );
}
