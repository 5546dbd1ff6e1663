//! Printing through a firewall (seed 000, PWG 5100.18), end to end in
//! network namespaces: the relay and its IPP front in `pub` (the
//! Internet), the printer (`ippeveprinter`) and its agent (a `faxgate
//! appliance` with no mail, `attach = "always"`) in `b`, behind a router
//! that drops every inbound connection, and the clients (`ipptool`, CUPS
//! `lp` through a local `cupsd`) in `a`, behind another NAT.
//!
//! Real parts only: ipptool's own RFC 8011 conformance files, CUPS, and
//! ippeveprinter keeping every document it receives (`-k`).

use crate::common::{Proc, TermProc, faxgate, run, wait_for};
use crate::netns::{Topology, can_connect, start_relay};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const SITE: &str = "osaka-printer";
const EVE_PORT: u16 = 8000;

/// One firewall topology with a relay, a printer and its agent.
/// Fields drop in declaration order: the processes are killed before the
/// namespaces and the directory they use are removed.
struct Infra {
    relay: Option<Proc>,
    agent: Option<Proc>,
    _eve: Proc,
    pin: String,
    t: Topology,
    dir: tempfile::TempDir,
}

impl Infra {
    fn d(&self) -> &Path {
        self.dir.path()
    }

    /// While held, the printer's print command does not return (for at
    /// most 60 s), so a job stays `processing`.
    fn hold_printer(&self, hold: bool) {
        let f = self.d().join("hold-printer");
        if hold {
            std::fs::write(f, b"").unwrap();
        } else {
            std::fs::remove_file(f).unwrap();
        }
    }

    /// ippeveprinter's print command returns at once, unless the test
    /// holds the printer ([`Infra::hold_printer`]).
    fn build() -> Infra {
        let t = Topology::build();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_owned();
        std::fs::write(
            d.join("relay.toml"),
            format!(
                "[relay]\nlisten_tls = \"0.0.0.0:4651\"\nstate_dir = {:?}\n\
                 argon2_memory_kib = 1024\nargon2_iterations = 1\n\
                 [ipp]\nlisten = \"0.0.0.0:8631\"\nlisten_tls = \"0.0.0.0:8632\"\n\
                 notify_wait = \"5s\"\nagent_lease = \"12s\"\n\
                 [[ipp.sites]]\nname = \"{SITE}\"\nagent = \"osaka\"\nmail = \"expp1@abc.com\"\n\
                 info = \"Osaka branch\"\nlocation = \"Osaka 3F\"\n",
                d.join("relay-state").display().to_string()
            ),
        )
        .unwrap();
        run(Command::new(faxgate())
            .args(["relay", "--config"])
            .arg(d.join("relay.toml"))
            .args(["user", "add", "osaka", "--password-env", "FG_PW"])
            .env("FG_PW", "pw-osaka-123"));
        let (relay, pin) = start_relay(&t, &d, &d.join("relay.toml"));
        wait_for("the IPP front", Duration::from_secs(10), || {
            can_connect(&t, "pub", "192.0.2.1", 8631)
        });

        // The real printer, inside the firewall.
        crate::print::start_dns_sd();
        let spool = d.join("eve-spool");
        std::fs::create_dir_all(&spool).unwrap();
        let script = d.join("print-cmd.sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\ni=0\nwhile [ -e '{}' ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done\n",
                d.join("hold-printer").display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let eve = Proc(
            t.exec("b")
                .args(["ippeveprinter", "-k", "-d"])
                .arg(&spool)
                .arg("-c")
                .arg(&script)
                .args([
                    "-f",
                    "application/pdf,image/pwg-raster,image/urf,application/octet-stream",
                    "-p",
                    &EVE_PORT.to_string(),
                    "-n",
                    "localhost",
                    &format!("faxgate-infra-{}", t.tag),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        wait_for("ippeveprinter in b", Duration::from_secs(15), || {
            can_connect(&t, "b", "127.0.0.1", EVE_PORT)
        });
        let mut infra = Infra {
            t,
            dir,
            relay: Some(relay),
            agent: None,
            _eve: eve,
            pin,
        };
        infra.write_agent_config();
        infra.start_agent();
        infra
    }

    fn write_agent_config(&self) {
        let d = self.d();
        std::fs::write(
            d.join("b.toml"),
            format!(
                "state_dir = {:?}\n\
                 [relay]\nserver = \"192.0.2.5:4651\"\nuser = \"osaka\"\npassword = \"pw-osaka-123\"\n\
                 reconnect_initial = \"200ms\"\nreconnect_max = \"2s\"\n\
                 [relay.tls]\npin_sha256 = \"{pin}\"\nserver_name = \"faxgate-relay\"\n\
                 [fax]\nident = \"+81 6 0000\"\n\
                 [printer]\nuri = \"ipp://127.0.0.1:{EVE_PORT}/ipp/print\"\n\
                 [agent]\nsite = \"ipps://192.0.2.5:8632/ipp/print/expp1%abc.com\"\n\
                 user = \"osaka\"\npassword = \"pw-osaka-123\"\nattach = \"always\"\n\
                 status_interval = \"1s\"\njob_poll_interval = \"200ms\"\n\
                 reconnect_initial = \"200ms\"\nreconnect_max = \"2s\"\n\
                 [agent.tls]\npin_sha256 = \"{pin}\"\nserver_name = \"faxgate-relay\"\n",
                d.join("b-state").display().to_string(),
                pin = self.pin,
            ),
        )
        .unwrap();
    }

    fn start_agent(&mut self) {
        let d = self.d().to_owned();
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(d.join("b.log"))
            .unwrap();
        self.agent = Some(Proc(
            self.t
                .exec("b")
                .arg(faxgate())
                .args(["appliance", "--config"])
                .arg(d.join("b.toml"))
                .env("RUST_LOG", "info")
                .env("NO_COLOR", "1")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        ));
        self.wait_attached(true);
    }

    fn kill_agent(&mut self) {
        if let Some(mut p) = self.agent.take() {
            let _ = p.0.kill();
            let _ = p.0.wait();
            std::mem::forget(p);
        }
    }

    fn stop_agent_gracefully(&mut self) {
        if let Some(mut p) = self.agent.take() {
            sigterm(p.0.id());
            let _ = p.0.wait();
            std::mem::forget(p);
        }
    }

    fn kill_relay(&mut self) {
        if let Some(mut p) = self.relay.take() {
            let _ = p.0.kill();
            let _ = p.0.wait();
            std::mem::forget(p);
        }
    }

    fn restart_relay(&mut self) {
        let d = self.d().to_owned();
        let (relay, pin) = start_relay(&self.t, &d, &d.join("relay.toml"));
        assert_eq!(pin, self.pin, "the relay keeps its certificate");
        self.relay = Some(relay);
        wait_for("the IPP front", Duration::from_secs(10), || {
            can_connect(&self.t, "pub", "192.0.2.1", 8631)
        });
    }

    /// The site's status page, fetched from the client side.
    fn status(&self) -> serde_json::Value {
        let out = self
            .t
            .exec("a")
            .args(["curl", "-s", "--max-time", "5"])
            .arg(format!("http://192.0.2.1:8631/ipp/print/{SITE}"))
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    fn wait_attached(&self, attached: bool) {
        wait_for(
            &format!("the site to show attached = {attached}"),
            Duration::from_secs(40),
            || self.status()["attached"] == serde_json::Value::Bool(attached),
        );
    }

    fn uri(&self) -> String {
        format!("ipp://192.0.2.1:8631/ipp/print/{SITE}")
    }

    /// Runs ipptool in the client namespace with the test files in `dir`.
    fn ipptool(&self, args: &[&str]) -> String {
        let out = self
            .t
            .exec("a")
            .arg("ipptool")
            .args(args)
            .current_dir(self.d().join("ipptool"))
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// Prints `file` (a PDF) from the client side and returns the job id.
    fn print(&self, file: &Path) -> i32 {
        let out = self.ipptool(&[
            "-tv",
            "-f",
            file.to_str().unwrap(),
            &self.uri(),
            "print.test",
        ]);
        out.lines()
            .find_map(|l| l.trim().strip_prefix("job-id (integer) = "))
            .unwrap_or_else(|| panic!("no job-id from Print-Job:\n{out}"))
            .trim()
            .parse()
            .unwrap()
    }

    fn job_state(&self, id: i32) -> String {
        let out = self.ipptool(&[
            "-tv",
            "-d",
            &format!("job={id}"),
            &self.uri(),
            "get-job.test",
        ]);
        out.lines()
            .find_map(|l| l.trim().strip_prefix("job-state (enum) = "))
            .unwrap_or("?")
            .trim()
            .to_owned()
    }

    /// Creates a job of two PDF documents (Create-Job, then
    /// Send-Document twice) from the client side and returns its id.
    fn print_two(&self, first: &Path, second: &Path) -> i32 {
        let out = self.ipptool(&[
            "-tv",
            "-d",
            &format!("doc1={}", first.display()),
            "-d",
            &format!("doc2={}", second.display()),
            &self.uri(),
            "two-docs.test",
        ]);
        assert!(!out.contains("[FAIL]"), "Create-Job/Send-Document:\n{out}");
        out.lines()
            .find_map(|l| l.trim().strip_prefix("job-id (integer) = "))
            .unwrap_or_else(|| panic!("no job-id from Create-Job:\n{out}"))
            .trim()
            .parse()
            .unwrap()
    }

    /// The `job-state` of every job ippeveprinter knows, asked from
    /// inside the firewall (it forgets a job a minute after it ended).
    fn printer_jobs(&self) -> Vec<String> {
        let out = self
            .t
            .exec("b")
            .arg("ipptool")
            .args([
                "-tv",
                &format!("ipp://127.0.0.1:{EVE_PORT}/ipp/print"),
                "printer-jobs.test",
            ])
            .current_dir(self.d().join("ipptool"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().strip_prefix("job-state (enum) = "))
            .map(|s| s.trim().to_owned())
            .collect()
    }

    /// How many jobs ippeveprinter printed to the end (a job canceled
    /// there keeps its spool file, so [`Infra::printed`] counts it too).
    fn completed_at_printer(&self) -> usize {
        self.printer_jobs()
            .iter()
            .filter(|s| s.as_str() == "completed")
            .count()
    }

    /// How many documents ippeveprinter kept whose bytes equal `bytes`.
    fn printed(&self, bytes: &[u8]) -> usize {
        crate::print::spooled(&self.d().join("eve-spool"))
            .iter()
            .filter(|(_, b)| b == bytes)
            .count()
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.d().join(name)).unwrap_or_default()
    }
}

fn sigterm(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}

/// The ipptool files: Debian's conformance tests (without their sample
/// documents, so we bring our own PDF) plus two small ones of ours.
fn ipptool_dir(d: &Path) -> PathBuf {
    let dir = d.join("ipptool");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["ipp-1.1.test", "ipp-2.0.test"] {
        std::fs::copy(Path::new("/usr/share/cups/ipptool").join(f), dir.join(f)).unwrap_or_else(
            |e| panic!("/usr/share/cups/ipptool/{f}: {e} (apt-get install cups-ipp-utils)"),
        );
    }
    run(Command::new(faxgate())
        .args(["convert"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/sample.tif"))
        .arg("-o")
        .arg(dir.join("document.pdf")));
    std::fs::write(
        dir.join("print.test"),
        "{\n NAME \"Print-Job\"\n OPERATION Print-Job\n GROUP operation-attributes-tag\n\
         ATTR charset attributes-charset utf-8\n ATTR naturalLanguage attributes-natural-language en\n\
         ATTR uri printer-uri $uri\n ATTR name requesting-user-name tester\n\
         ATTR mimeMediaType document-format application/pdf\n FILE $filename\n\
         STATUS successful-ok\n}\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("get-job.test"),
        "{\n NAME \"Get-Job-Attributes\"\n OPERATION Get-Job-Attributes\n GROUP operation-attributes-tag\n\
         ATTR charset attributes-charset utf-8\n ATTR naturalLanguage attributes-natural-language en\n\
         ATTR uri printer-uri $uri\n ATTR integer job-id $job\n ATTR name requesting-user-name tester\n\
         STATUS successful-ok\n}\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("two-docs.test"),
        "{\n NAME \"Create-Job\"\n OPERATION Create-Job\n GROUP operation-attributes-tag\n\
         ATTR charset attributes-charset utf-8\n ATTR naturalLanguage attributes-natural-language en\n\
         ATTR uri printer-uri $uri\n ATTR name requesting-user-name tester\n\
         ATTR name job-name two-docs\n STATUS successful-ok\n EXPECT job-id\n}\n\
         {\n NAME \"Send-Document 1\"\n OPERATION Send-Document\n GROUP operation-attributes-tag\n\
         ATTR charset attributes-charset utf-8\n ATTR naturalLanguage attributes-natural-language en\n\
         ATTR uri printer-uri $uri\n ATTR integer job-id $job-id\n ATTR name requesting-user-name tester\n\
         ATTR mimeMediaType document-format application/pdf\n ATTR boolean last-document false\n\
         FILE $doc1\n STATUS successful-ok\n}\n\
         {\n NAME \"Send-Document 2\"\n OPERATION Send-Document\n GROUP operation-attributes-tag\n\
         ATTR charset attributes-charset utf-8\n ATTR naturalLanguage attributes-natural-language en\n\
         ATTR uri printer-uri $uri\n ATTR integer job-id $job-id\n ATTR name requesting-user-name tester\n\
         ATTR mimeMediaType document-format application/pdf\n ATTR boolean last-document true\n\
         FILE $doc2\n STATUS successful-ok\n}\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("printer-jobs.test"),
        "{\n NAME \"Get-Jobs\"\n OPERATION Get-Jobs\n GROUP operation-attributes-tag\n\
         ATTR charset attributes-charset utf-8\n ATTR naturalLanguage attributes-natural-language en\n\
         ATTR uri printer-uri $uri\n ATTR name requesting-user-name faxgate\n\
         ATTR keyword which-jobs all\n ATTR keyword requested-attributes job-id,job-state\n\
         STATUS successful-ok\n}\n",
    )
    .unwrap();
    dir
}

/// A PDF no other test document equals: ours plus a comment line after
/// `%%EOF` (ippeveprinter sniffs documents, so they must stay PDFs).
/// Holds the printer, prints a unique PDF (`ipptool/TAG.pdf`) and waits
/// until the document is at the printer; returns its bytes and job id.
fn print_held(infra: &Infra, tag: &str) -> (Vec<u8>, i32) {
    infra.hold_printer(true);
    let bytes = unique_pdf(infra.d(), tag);
    let f = infra.d().join(format!("ipptool/{tag}.pdf"));
    std::fs::write(&f, &bytes).unwrap();
    let id = infra.print(&f);
    wait_for(
        "the document at the printer",
        Duration::from_secs(30),
        || infra.printed(&bytes) == 1,
    );
    (bytes, id)
}

fn unique_pdf(d: &Path, tag: &str) -> Vec<u8> {
    let mut bytes = std::fs::read(d.join("ipptool/document.pdf")).unwrap();
    bytes.extend_from_slice(format!("\n%faxgate-test {tag}\n").as_bytes());
    bytes
}

/// A `cupsd` of its own in namespace `a`, on 127.0.0.1:8700 there.
fn start_cupsd(t: &Topology, d: &Path) -> TermProc {
    crate::common::need("cupsd", "cups-daemon");
    let root = d.join("cups");
    crate::cups::write_cupsd_config(&root, "127.0.0.1:8700");
    run(Command::new("chmod").args(["a+rx"]).arg(d));
    let proc = TermProc(
        t.exec("a")
            .arg("cupsd")
            .args(["-f", "-c"])
            .arg(root.join("conf/cupsd.conf"))
            .arg("-s")
            .arg(root.join("conf/cups-files.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for("cupsd in a", Duration::from_secs(15), || {
        can_connect(t, "a", "127.0.0.1", 8700)
    });
    proc
}

#[test]
fn ipp_clients_print_through_the_firewall_and_ipptool_conformance_passes() {
    crate::common::need("ipptool", "cups-ipp-utils");
    crate::common::need("lp", "cups-client");
    let infra = Infra::build();
    let d = infra.d().to_owned();
    let tools = ipptool_dir(&d);

    // The printer cannot be reached from outside its network.
    assert!(!can_connect(&infra.t, "a", "10.2.0.2", EVE_PORT));
    assert!(!can_connect(&infra.t, "pub", "192.0.2.6", EVE_PORT));
    assert!(can_connect(&infra.t, "b", "127.0.0.1", EVE_PORT));

    // RFC 8011 conformance, as CUPS's ipptool checks it, against the site.
    let out = infra.ipptool(&[
        "-t",
        "-f",
        "document.pdf",
        &infra.uri(),
        "ipp-1.1.test",
        "ipp-2.0.test",
    ]);
    assert!(out.contains("Summary:"), "ipptool did not run:\n{out}");
    assert!(
        !out.contains("[FAIL]"),
        "ipptool conformance failed:\n{out}\n--- relay ---\n{}\n--- agent ---\n{}",
        infra.log("relay.log"),
        infra.log("b.log")
    );
    assert!(out.contains(", 0 failed,"), "{out}");
    // Its Print-Job documents arrived byte for byte at the printer.
    let pdf = std::fs::read(tools.join("document.pdf")).unwrap();
    assert!(
        infra.printed(&pdf) >= 1,
        "the PDF never reached ippeveprinter's spool"
    );

    // A job of ours, through the seed's account%domain path, byte-exact,
    // and the client sees it completed.
    let doc = d.join("ipptool/unique.pdf");
    let bytes = unique_pdf(&d, "alias");
    std::fs::write(&doc, &bytes).unwrap();
    let alias = "ipp://192.0.2.1:8631/ipp/print/expp1%25abc.com";
    let out = infra.ipptool(&["-tv", "-f", doc.to_str().unwrap(), alias, "print.test"]);
    let id: i32 = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("job-id (integer) = "))
        .unwrap_or_else(|| panic!("{out}"))
        .trim()
        .parse()
        .unwrap();
    wait_for("the job to complete", Duration::from_secs(30), || {
        infra.job_state(id) == "completed"
    });
    assert_eq!(
        infra.printed(&bytes),
        1,
        "printed exactly once, byte for byte"
    );

    // CUPS: a queue on the client side that points at the site.
    let _cupsd = start_cupsd(&infra.t, &d);
    let lp_bytes = unique_pdf(&d, "lp");
    let lp_doc = d.join("lp-doc.pdf");
    std::fs::write(&lp_doc, &lp_bytes).unwrap();
    let cups = |args: &[&str]| {
        let out = infra.t.exec("a").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    cups(&[
        "lpadmin",
        "-h",
        "127.0.0.1:8700",
        "-p",
        "osaka",
        "-E",
        "-v",
        &infra.uri(),
        "-m",
        "raw",
    ]);
    let queued = cups(&[
        "lp",
        "-h",
        "127.0.0.1:8700",
        "-d",
        "osaka",
        lp_doc.to_str().unwrap(),
    ]);
    assert!(queued.contains("request id is osaka-"), "{queued}");
    wait_for(
        "CUPS to report the job completed",
        Duration::from_secs(60),
        || {
            cups(&[
                "lpstat",
                "-h",
                "127.0.0.1:8700",
                "-W",
                "completed",
                "-o",
                "osaka",
            ])
            .contains("osaka-1")
        },
    );
    assert_eq!(
        infra.printed(&lp_bytes),
        1,
        "lp's document arrived byte for byte"
    );
}

#[test]
fn spooled_jobs_survive_a_relay_restart_and_a_killed_agent_reprints() {
    crate::common::need("ipptool", "cups-ipp-utils");
    let mut infra = Infra::build();
    let d = infra.d().to_owned();
    ipptool_dir(&d);

    // 1. The agent leaves; three jobs are spooled at the relay.
    infra.stop_agent_gracefully();
    infra.wait_attached(false);
    let docs: Vec<Vec<u8>> = (0..3)
        .map(|n| unique_pdf(&d, &format!("spooled-{n}")))
        .collect();
    let mut ids = Vec::new();
    for (n, bytes) in docs.iter().enumerate() {
        let f = d.join(format!("ipptool/job-{n}.pdf"));
        std::fs::write(&f, bytes).unwrap();
        ids.push(infra.print(&f));
    }
    for id in &ids {
        assert_eq!(infra.job_state(*id), "pending");
    }
    // 2. The relay dies (no shutdown) and comes back.
    infra.kill_relay();
    infra.restart_relay();
    for id in &ids {
        assert_eq!(
            infra.job_state(*id),
            "pending",
            "job {id} survived the restart"
        );
    }
    // 3. The agent attaches again: every job prints, once.
    infra.start_agent();
    for id in &ids {
        wait_for(
            &format!("job {id} to complete"),
            Duration::from_secs(60),
            || infra.job_state(*id) == "completed",
        );
    }
    for (n, bytes) in docs.iter().enumerate() {
        assert_eq!(infra.printed(bytes), 1, "job {n} printed exactly once");
    }

    // 4. The agent is killed while the printer works on a job (the
    // printer is held, so the job cannot finish first on a slow machine).
    infra.hold_printer(true);
    let bytes = unique_pdf(&d, "killed");
    let f = d.join("ipptool/killed.pdf");
    std::fs::write(&f, &bytes).unwrap();
    let id = infra.print(&f);
    wait_for("the job to be printing", Duration::from_secs(30), || {
        infra.job_state(id) == "processing"
    });
    infra.kill_agent();
    assert_ne!(infra.job_state(id), "completed");
    infra.start_agent();
    infra.hold_printer(false);
    wait_for(
        "the handed-back job to complete",
        Duration::from_secs(60),
        || infra.job_state(id) == "completed",
    );
    assert!(
        infra.printed(&bytes) >= 1,
        "the job was printed after the restart"
    );
    assert!(
        infra
            .log("relay.log")
            .contains("Job handed back from a detached device."),
        "{}",
        infra.log("relay.log")
    );
}

#[test]
fn a_relay_restart_between_documents_prints_each_document_once() {
    crate::common::need("ipptool", "cups-ipp-utils");
    let mut infra = Infra::build();
    let d = infra.d().to_owned();
    ipptool_dir(&d);

    // A job of two documents; the first stays at the printer (held).
    infra.hold_printer(true);
    let first = unique_pdf(&d, "two-docs-1");
    let second = unique_pdf(&d, "two-docs-2");
    let (f1, f2) = (d.join("ipptool/doc-1.pdf"), d.join("ipptool/doc-2.pdf"));
    std::fs::write(&f1, &first).unwrap();
    std::fs::write(&f2, &second).unwrap();
    let id = infra.print_two(&f1, &f2);
    wait_for(
        "the first document at the printer",
        Duration::from_secs(30),
        || infra.printed(&first) == 1,
    );

    // The relay dies; the first document finishes meanwhile, and the
    // second cannot be fetched: the job is interrupted.
    infra.kill_relay();
    infra.hold_printer(false);
    wait_for(
        "the first document printed",
        Duration::from_secs(30),
        || infra.completed_at_printer() == 1,
    );
    wait_for(
        "the agent to give the job up for now",
        Duration::from_secs(60),
        || {
            infra
                .log("b.log")
                .contains("Job interrupted; it is fetched again once the site answers.")
        },
    );

    // The relay comes back: the job is fetched again and finishes with
    // the second document only.
    infra.restart_relay();
    wait_for("the job to complete", Duration::from_secs(60), || {
        infra.job_state(id) == "completed"
    });
    assert_eq!(
        infra.printed(&first),
        1,
        "the first document was printed again:\n{}",
        infra.log("b.log")
    );
    assert_eq!(
        infra.printed(&second),
        1,
        "the second document printed once"
    );
    assert_eq!(
        infra.completed_at_printer(),
        2,
        "{:?}",
        infra.printer_jobs()
    );
}

#[test]
fn a_graceful_stop_mid_print_does_not_print_twice() {
    crate::common::need("ipptool", "cups-ipp-utils");
    let mut infra = Infra::build();
    let d = infra.d().to_owned();
    ipptool_dir(&d);

    // The printer holds the document while the agent is asked to stop;
    // the grace runs out and the job is handed back.
    let (_, id) = print_held(&infra, "graceful");
    infra.stop_agent_gracefully();
    assert_ne!(infra.job_state(id), "completed");

    // The printer lets go of it; had it not been canceled there, it
    // would print now, and once more when the job is offered again.
    infra.hold_printer(false);
    wait_for("the printer's job to end", Duration::from_secs(30), || {
        let jobs = infra.printer_jobs();
        !jobs.is_empty()
            && jobs
                .iter()
                .all(|s| matches!(s.as_str(), "completed" | "canceled" | "aborted"))
    });
    infra.start_agent();
    wait_for(
        "the handed-back job to complete",
        Duration::from_secs(60),
        || infra.job_state(id) == "completed",
    );
    assert_eq!(
        infra.completed_at_printer(),
        1,
        "printed exactly once: {:?}\n{}",
        infra.printer_jobs(),
        infra.log("b.log")
    );
}

#[test]
fn a_final_report_lost_with_the_relay_is_sent_after_a_restart_not_reprinted() {
    crate::common::need("ipptool", "cups-ipp-utils");
    let mut infra = Infra::build();
    let d = infra.d().to_owned();
    ipptool_dir(&d);

    // The job prints while the relay is down: its final report cannot
    // be delivered, and the agent dies before the relay is back.
    let (bytes, id) = print_held(&infra, "lost-report");
    infra.kill_relay();
    infra.hold_printer(false);
    wait_for("the final report to fail", Duration::from_secs(60), || {
        infra
            .log("b.log")
            .contains("Final job report failed; it is sent again after the next registration.")
    });
    infra.kill_agent();

    // A new agent process (a new device UUID: the relay offers the job
    // again) reports it instead of printing it again.
    infra.restart_relay();
    infra.start_agent();
    wait_for("the job to complete", Duration::from_secs(60), || {
        infra.job_state(id) == "completed"
    });
    assert_eq!(
        infra.printed(&bytes),
        1,
        "printed again after the restart:\n{}",
        infra.log("b.log")
    );
    assert_eq!(
        infra.completed_at_printer(),
        1,
        "{:?}",
        infra.printer_jobs()
    );
    assert!(
        infra.log("b.log").contains("Late job report delivered."),
        "{}",
        infra.log("b.log")
    );
}
