//! A CUPS scheduler of a test's own: `cupsd` with its configuration,
//! spool and logs in a temporary folder, on a loopback port, stopped by
//! PID. `infra.rs` starts one inside a network namespace with the same
//! configuration; the print tests start one here on a free port.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::common::{TermProc, need, on_free_port, run};

/// Writes `cupsd.conf` and `cups-files.conf` under `root` for a cupsd
/// that listens on `listen` only, lets anyone administer it (loopback,
/// tests), and keeps all its state under `root`. Returns the two paths.
pub(crate) fn write_cupsd_config(root: &Path, listen: &str) -> (PathBuf, PathBuf) {
    for sub in ["conf", "spool", "cache", "state", "tmp", "log"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    let conf = root.join("conf/cupsd.conf");
    std::fs::write(
        &conf,
        format!(
            "Listen {listen}\nLogLevel warn\nWebInterface No\nBrowsing Off\n\
             <Location />\n  Order allow,deny\n  Allow all\n</Location>\n\
             <Location /admin>\n  Order allow,deny\n  Allow all\n</Location>\n\
             <Policy default>\n  <Limit All>\n    Order deny,allow\n  </Limit>\n</Policy>\n"
        ),
    )
    .unwrap();
    let p = |s: &str| root.join(s).display().to_string();
    let files = root.join("conf/cups-files.conf");
    std::fs::write(
        &files,
        format!(
            "ServerRoot {}\nRequestRoot {}\nCacheDir {}\nStateDir {}\nTempDir {}\n\
             AccessLog {}/access_log\nErrorLog {}/error_log\nPageLog {}/page_log\n\
             User lp\nGroup lp\nSystemGroup root\nSandboxing Relaxed\n",
            p("conf"),
            p("spool"),
            p("cache"),
            p("state"),
            p("tmp"),
            p("log"),
            p("log"),
            p("log")
        ),
    )
    .unwrap();
    // cupsd drops to `lp` for its filters and backends.
    run(Command::new("chmod").args(["-R", "a+rwX"]).arg(root));
    (conf, files)
}

/// A `cupsd` on 127.0.0.1 and a free port, stopped with SIGTERM when
/// dropped ([`TermProc`]).
pub(crate) struct Cupsd {
    _proc: TermProc,
    /// `127.0.0.1:PORT`, for `CUPS_SERVER` (or `-h`).
    pub(crate) server: String,
    /// The scheduler's own folder (config, spool, logs).
    pub(crate) dir: tempfile::TempDir,
}

impl Cupsd {
    /// Starts a scheduler with no queues.
    pub(crate) fn start() -> Cupsd {
        need("cupsd", "cups-daemon");
        need("lpadmin", "cups-client");
        let dir = tempfile::tempdir().unwrap();
        run(Command::new("chmod").arg("a+rx").arg(dir.path()));
        let started = on_free_port("cupsd", |port| {
            let (conf, files) =
                write_cupsd_config(&dir.path().join("cups"), &format!("127.0.0.1:{port}"));
            TermProc(
                Command::new("cupsd")
                    .arg("-f")
                    .arg("-c")
                    .arg(&conf)
                    .arg("-s")
                    .arg(&files)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start cupsd"),
            )
        });
        if let Some((proc, port)) = started {
            return Cupsd {
                _proc: proc,
                server: format!("127.0.0.1:{port}"),
                dir,
            };
        }
        panic!(
            "cupsd exited three times before listening; its log: {}",
            std::fs::read_to_string(dir.path().join("cups/log/error_log")).unwrap_or_default()
        );
    }

    /// A CUPS command (`lpadmin`, `lpstat`, `cupsdisable`...) aimed at
    /// this scheduler.
    pub(crate) fn cmd(&self, tool: &str) -> Command {
        let mut c = Command::new(tool);
        c.env("CUPS_SERVER", &self.server).env("LC_ALL", "C");
        c
    }

    /// Runs a CUPS command that must succeed; returns its stdout.
    pub(crate) fn run(&self, tool: &str, args: &[&str]) -> String {
        let out: Output = run(self.cmd(tool).args(args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The scheduler's error log, for assertion messages.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("cups/log/error_log")).unwrap_or_default()
    }

    /// `ipp://` URI of a queue, for IPP clients that talk to CUPS itself.
    pub(crate) fn queue_uri(&self, queue: &str) -> String {
        format!("ipp://{}/printers/{queue}", self.server)
    }
}

/// `faxgate print` to a queue of `cups`, with a job timeout; spawned with
/// its output piped.
fn spawn_print(cups: &Cupsd, file: &Path, printer: &str, timeout: &str) -> crate::common::Proc {
    crate::common::Proc(
        Command::new(crate::common::faxgate())
            .arg("print")
            .arg(file)
            .args([
                "--printer",
                printer,
                "--title",
                "held",
                "--job-timeout",
                timeout,
            ])
            .env("CUPS_SERVER", &cups.server)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

/// A `cups:` printer follows its job in CUPS to the end, as an IPP
/// printer does: on a queue that holds every job
/// (`job-hold-until-default=indefinite`), printing waits while the job
/// is held, fails naming the job and `canceled` once the test cancels
/// it, and a hold never released ends at the job timeout with the job
/// kept (`still pending-held`), not as printed.
#[test]
fn a_held_cups_job_is_followed_until_it_is_canceled() {
    use std::time::{Duration, Instant};
    let (cups, _eve) = crate::print::cups_queue("held");
    cups.run(
        "lpadmin",
        &["-p", "held", "-o", "job-hold-until-default=indefinite"],
    );
    let dir = tempfile::tempdir().unwrap();
    let (tiff, _) = crate::print::tiff_document(dir.path());

    let mut job = spawn_print(&cups, &tiff, "cups:held", "60s");
    crate::common::wait_for("CUPS to hold the job", Duration::from_secs(30), || {
        cups.run("lpstat", &["-o", "held"]).contains("held-1")
    });
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        job.0.try_wait().unwrap().is_none(),
        "print returned while CUPS held the job"
    );
    let canceled_at = Instant::now();
    cups.run("cancel", &["held-1"]);
    let (ok, out, err) = crate::print::finish(job, Duration::from_secs(30));
    assert!(!ok, "a canceled job must fail the print: {out}");
    assert!(
        err.contains("cups:held at") && err.contains("job 1 was canceled"),
        "{err}\n{}",
        cups.log()
    );
    assert!(!err.contains("the job is kept"), "{err}");
    assert!(canceled_at.elapsed() < Duration::from_secs(10));

    // Never released: the job timeout ends the watch, the job is kept.
    let job = spawn_print(&cups, &tiff, "cups:held", "2s");
    let (ok, out, err) = crate::print::finish(job, Duration::from_secs(30));
    assert!(!ok, "a held job is not printed: {out}");
    assert!(err.contains("job 2 still pending-held after"), "{err}");
    assert!(
        cups.run("lpstat", &["-o", "held"]).contains("held-2"),
        "the held job is still in CUPS"
    );
}
