//! Acceptance for real-time fax between branches (issue #4): a relay in
//! the public namespace, appliance A ("tokyo") and appliance B ("osaka")
//! each behind its own NAT router, all real `faxgate` processes. B prints
//! to a folder as TIFF-F, which the tests decode with libtiff's
//! `tifftopnm` and compare pixel for pixel with what A sent.
//!
//! The fault tests slow A's uplink with a token-bucket filter (`tc tbf`)
//! so that a 10-page document takes several seconds and a fault lands in
//! the middle of it; the faults themselves are real: SIGKILL, iptables
//! DROP.

use crate::common::{Proc, faxgate, require_root_and, run, wait_for};
use crate::netns::{Topology, start_relay};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A deterministic page: blocks of "text" whose layout depends on `seed`,
/// so that every page differs and codes to a realistic size.
fn page(seed: u32) -> (u32, u32, Vec<u8>) {
    let (w, h) = (1728u32, 2200u32);
    let stride = (w / 8) as usize;
    let mut data = vec![0u8; stride * h as usize];
    let mut x: u32 = seed.wrapping_mul(2_654_435_761) | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    let mut y = 150;
    while y + 40 < h - 150 {
        let mut col = 120;
        while col < w - 200 {
            let word = 20 + next() % 120;
            for yy in y..y + 22 {
                for xx in col..(col + word).min(w - 120) {
                    if (xx + yy + next() % 3) % 4 != 0 {
                        data[yy as usize * stride + (xx / 8) as usize] |= 0x80 >> (xx % 8);
                    }
                }
            }
            col += word + 18;
        }
        y += 40 + next() % 20;
    }
    (w, h, data)
}

fn write_pbm(path: &Path, (w, h, data): &(u32, u32, Vec<u8>)) {
    let mut f = format!("P4\n{w} {h}\n").into_bytes();
    f.extend_from_slice(data);
    std::fs::write(path, f).unwrap();
}

/// Splits concatenated raw PBMs (as `tifftopnm` writes a multipage TIFF)
/// into (width, height, raster).
fn parse_pbms(mut b: &[u8]) -> Vec<(u32, u32, Vec<u8>)> {
    let mut out = Vec::new();
    while !b.is_empty() {
        assert!(b.starts_with(b"P4"), "not a raw PBM");
        b = &b[2..];
        let mut nums = Vec::new();
        while nums.len() < 2 {
            while b[0].is_ascii_whitespace() {
                b = &b[1..];
            }
            if b[0] == b'#' {
                while b[0] != b'\n' {
                    b = &b[1..];
                }
                continue;
            }
            let end = b.iter().position(|c| !c.is_ascii_digit()).unwrap();
            nums.push(
                std::str::from_utf8(&b[..end])
                    .unwrap()
                    .parse::<u32>()
                    .unwrap(),
            );
            b = &b[end..];
        }
        b = &b[1..];
        let len = nums[0].div_ceil(8) as usize * nums[1] as usize;
        out.push((nums[0], nums[1], b[..len].to_vec()));
        b = &b[len..];
    }
    out
}

/// Decodes a TIFF-F file with libtiff.
fn tiff_pages(path: &Path) -> Vec<(u32, u32, Vec<u8>)> {
    let out = run(Command::new("tifftopnm").arg(path).stderr(Stdio::null()));
    parse_pbms(&out.stdout)
}

/// The test site: topology, relay and two appliances.
struct Site {
    t: Topology,
    dir: tempfile::TempDir,
    relay: Option<Proc>,
    a: Option<Proc>,
    b: Option<Proc>,
    pin: String,
}

/// Per-test settings.
#[derive(Default)]
struct Opts {
    /// Extra lines for B's `[fax]` section.
    b_fax: &'static str,
    /// Extra lines for A's `[fax]` section.
    a_fax: &'static str,
    /// A's `[scanner]` section.
    a_scanner: bool,
    /// A `[[hot_folder]]` at A: `hot/` in the test folder, faxing to osaka.
    a_hot_folder: bool,
    /// Rate of A's uplink (`tc tbf`), e.g. "400kbit".
    uplink: Option<&'static str>,
}

impl Site {
    fn d(&self) -> &Path {
        self.dir.path()
    }

    fn start(opts: Opts) -> Site {
        require_root_and(&[
            ("ip", "iproute2"),
            ("iptables", "iptables"),
            ("tc", "iproute2"),
            ("python3", "python3"),
            ("tifftopnm", "libtiff-tools"),
        ]);
        let t = Topology::build();
        if let Some(rate) = opts.uplink {
            t.sh(
                "ra",
                &format!("tc qdisc add dev wan root tbf rate {rate} burst 16kb latency 5s"),
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let mut site = Site {
            t,
            dir,
            relay: None,
            a: None,
            b: None,
            pin: String::new(),
        };
        let d = site.d().to_owned();
        std::fs::write(
            d.join("relay.toml"),
            format!(
                "[relay]\nlisten_tls = \"0.0.0.0:4651\"\nstate_dir = {:?}\nhold_interval = \"2s\"\n\
                 [status]\nlisten = \"127.0.0.1:4652\"\n",
                d.join("relay-state").display().to_string()
            ),
        )
        .unwrap();
        for user in ["tokyo", "osaka", "mallory"] {
            run(Command::new(faxgate())
                .args(["relay", "--config"])
                .arg(d.join("relay.toml"))
                .args(["user", "add", user, "--group", "branches"])
                .args(["--password-env", "FG_PW"])
                .env("FG_PW", format!("pw-{user}-123")));
        }
        site.start_relay();
        std::fs::create_dir_all(d.join("printed")).unwrap();
        let mut scanner = if opts.a_scanner {
            "[scanner]\ndevice = \"test\"\npages = 10\nresolution = \"fine\"\n".to_owned()
        } else {
            String::new()
        };
        if opts.a_hot_folder {
            std::fs::create_dir_all(d.join("hot")).unwrap();
            scanner += &format!(
                "[[hot_folder]]\ndir = {:?}\nto = \"osaka\"\nresolution = \"fine\"\nsettle = \"500ms\"\n",
                d.join("hot").display().to_string()
            );
        }
        for (short, user, server, fax, extra) in [
            ("a", "tokyo", "192.0.2.1:4651", opts.a_fax, scanner),
            (
                "b",
                "osaka",
                "192.0.2.5:4651",
                opts.b_fax,
                format!(
                    "[printer]\nuri = \"dir:{}?format=tiff-mmr\"\nretry = \"1s\"\n",
                    d.join("printed").display()
                ),
            ),
        ] {
            std::fs::write(
                d.join(format!("{short}.toml")),
                format!(
                    "state_dir = {:?}\n\
                     [relay]\nserver = \"{server}\"\nuser = \"{user}\"\npassword = \"pw-{user}-123\"\n\
                     reconnect_initial = \"200ms\"\nreconnect_max = \"2s\"\nconnect_timeout = \"5s\"\n\
                     [relay.tls]\npin_sha256 = \"{}\"\nserver_name = \"faxgate-relay\"\n\
                     [fax]\nident = \"+81 {short} 0000\"\nretry_initial = \"500ms\"\nretry_max = \"3s\"\n{fax}\n\
                     {extra}",
                    d.join(format!("{short}-state")).display().to_string(),
                    site.pin,
                )
                .replace("+81 a 0000", "+81 3 0000")
                .replace("+81 b 0000", "+81 6 0000"),
            )
            .unwrap();
        }
        site.start_appliance("a");
        site.start_appliance("b");
        site
    }

    fn start_relay(&mut self) {
        let d = self.d().to_owned();
        let (relay, pin) = start_relay(&self.t, &d, &d.join("relay.toml"));
        self.relay = Some(relay);
        self.pin = pin;
    }

    fn kill_relay(&mut self) {
        if let Some(mut p) = self.relay.take() {
            let _ = p.0.kill();
            let _ = p.0.wait();
            std::mem::forget(p);
        }
    }

    fn start_appliance(&mut self, short: &str) {
        let d = self.d().to_owned();
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(d.join(format!("{short}.log")))
            .unwrap();
        let p = Proc(
            self.t
                .exec(short)
                .arg(faxgate())
                .args(["appliance", "--config"])
                .arg(d.join(format!("{short}.toml")))
                .env("RUST_LOG", "info,faxgate=debug")
                .env("NO_COLOR", "1")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        match short {
            "a" => self.a = Some(p),
            _ => self.b = Some(p),
        }
        wait_for(
            &format!("appliance {short}'s panel"),
            Duration::from_secs(30),
            || self.cli(short, &["jobs", "--json"]).status.success(),
        );
    }

    /// SIGKILL, no chance to park anything.
    fn kill_appliance(&mut self, short: &str) {
        let slot = if short == "a" {
            &mut self.a
        } else {
            &mut self.b
        };
        if let Some(mut p) = slot.take() {
            let _ = p.0.kill();
            let _ = p.0.wait();
            std::mem::forget(p);
        }
    }

    /// Runs a panel command in the appliance's namespace.
    fn cli(&self, short: &str, args: &[&str]) -> Output {
        self.t
            .exec(short)
            .arg(faxgate())
            .args(args)
            .arg("--config")
            .arg(self.d().join(format!("{short}.toml")))
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    }

    fn json(&self, short: &str, args: &[&str]) -> Value {
        let out = self.cli(short, args);
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    fn job(&self, id: &str) -> Value {
        self.json("a", &["jobs", "--json"])
            .as_array()
            .into_iter()
            .flatten()
            .find(|j| j["id"] == id)
            .cloned()
            .unwrap_or(Value::Null)
    }

    fn inbox_doc(&self, job_id: &str) -> Value {
        self.json("b", &["inbox", "--json"])
            .as_array()
            .into_iter()
            .flatten()
            .find(|d| d["job_id"] == job_id)
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// Sends PBM files from A to B; returns the job id.
    fn send(&self, files: &[PathBuf]) -> String {
        self.send_to(files, "osaka")
    }

    /// Sends PBM files from A to a relay user; returns the job id.
    fn send_to(&self, files: &[PathBuf], to: &str) -> String {
        let mut args = vec!["send", "--to", to, "--no-wait", "--resolution", "fine"];
        let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        args.extend(names.iter().map(String::as_str));
        let out = self.cli("a", &args);
        assert!(
            out.status.success(),
            "send failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .nth(1)
            .unwrap()
            .trim_end_matches(':')
            .to_owned()
    }

    fn wait_delivered(&self, id: &str, n: u64, limit: Duration) {
        wait_for(&format!("{n} pages of job {id} delivered"), limit, || {
            self.job(id)["delivered"].as_u64().unwrap_or(0) >= n
        });
    }

    fn wait_state(&self, id: &str, state: &str, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let j = self.job(id);
            if j["state"] == state {
                return j;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} not {state} in {limit:?}: {j}\nA's log tail:\n{}",
                self.tail("a.log")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn tail(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.d().join(name)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The printed files at B.
    fn printed(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.d().join("printed"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "tif"))
            .collect();
        v.sort();
        v
    }

    /// Waits for B to print the document of `job_id`, then checks that
    /// exactly one file was printed for it and returns its pages.
    fn printed_pages(&self, job_id: &str, limit: Duration) -> Vec<(u32, u32, Vec<u8>)> {
        wait_for("B printed the document", limit, || {
            self.inbox_doc(job_id)["print"] == "printed"
        });
        let doc = self.inbox_doc(job_id);
        let file = PathBuf::from(doc["print_reason"].as_str().unwrap());
        tiff_pages(&file)
    }

    /// `faxgate relay status --json` on the relay's host (Null if it
    /// does not answer).
    fn relay_status(&self) -> Value {
        let out = self
            .t
            .exec("pub")
            .arg(faxgate())
            .args(["relay", "--config"])
            .arg(self.d().join("relay.toml"))
            .args(["status", "--json"])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    /// The relay reports every connection vacant and no session.
    fn assert_all_vacant(&self) {
        wait_for(
            "every relay connection vacant",
            Duration::from_secs(15),
            || {
                let v = self.relay_status();
                v["sessions_active"] == 0
                    && v["connections"].as_u64().unwrap_or(0) >= 2
                    && v["connections"] == v["vacant"]
            },
        );
    }
}

/// A page as (width, height, packed rows).
type Page = (u32, u32, Vec<u8>);

fn ten_pages(d: &Path) -> (Vec<PathBuf>, Vec<Page>) {
    let pages: Vec<_> = (1..=10).map(page).collect();
    let files: Vec<PathBuf> = pages
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let f = d.join(format!("page{:02}.pbm", i + 1));
            write_pbm(&f, p);
            f
        })
        .collect();
    (files, pages)
}

fn assert_same_pages(got: &[(u32, u32, Vec<u8>)], want: &[(u32, u32, Vec<u8>)]) {
    assert_eq!(got.len(), want.len(), "page count");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!((g.0, g.1), (w.0, w.1), "page {} size", i + 1);
        assert!(g.2 == w.2, "page {} differs", i + 1);
    }
}

/// Acceptance 1: 10 pages from files and 10 from `scanimage -d test`,
/// both arrive bit-exact, print once, and leave the relay idle.
#[test]
fn ten_pages_from_files_and_from_the_scanner_arrive_bit_exact_behind_nat() {
    crate::common::need("scanimage", "sane-utils");
    let site = Site::start(Opts {
        a_scanner: true,
        ..Opts::default()
    });
    let (files, pages) = ten_pages(site.d());
    let id = site.send(&files);
    let job = site.wait_state(&id, "done", Duration::from_secs(90));
    assert_eq!(job["delivered"], 10);
    assert_eq!(job["pages"], 10);
    assert_same_pages(&site.printed_pages(&id, Duration::from_secs(30)), &pages);
    assert_eq!(site.inbox_doc(&id)["state"], "complete");

    // The scanner: A's stored pages are what was scanned; B prints them.
    let out = site.cli("a", &["scan-send", "--to", "osaka", "--no-wait"]);
    assert!(
        out.status.success(),
        "scan-send failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let scan_id = text
        .split_whitespace()
        .nth(1)
        .unwrap()
        .trim_end_matches(':');
    let job = site.wait_state(scan_id, "done", Duration::from_secs(120));
    assert_eq!(job["delivered"], 10);
    let scanned: Vec<_> = (0..10)
        .flat_map(|i| {
            tiff_pages(
                &site
                    .d()
                    .join("a-state/outbox")
                    .join(scan_id)
                    .join(format!("{i:04}.tif")),
            )
        })
        .collect();
    assert_same_pages(
        &site.printed_pages(scan_id, Duration::from_secs(30)),
        &scanned,
    );
    assert_eq!(site.printed().len(), 2, "each document printed once");
    site.assert_all_vacant();
}

/// A document dropped into A's hot folder is faxed to B once: B prints
/// it bit-exact, and the file moves to `done/`. Then the state that a
/// crash between queueing the job and moving the file leaves (the file
/// still in `processing/` under its key, the job already queued) is made
/// by hand: after A's restart the file is recognised by its key, moved
/// to `done/`, and not sent again.
#[test]
fn a_document_dropped_into_the_hot_folder_is_faxed_once() {
    use faxgate_fax::tiff::{TiffWriterOptions, write_tiff};
    let mut site = Site::start(Opts {
        a_hot_folder: true,
        ..Opts::default()
    });
    let hot = site.d().join("hot");
    let pages: Vec<Page> = (21..=23).map(page).collect();
    let bitmaps: Vec<_> = pages
        .iter()
        .map(|(w, h, d)| faxgate_fax::Bitmap::from_packed(*w, *h, d.clone()).unwrap())
        .collect();
    let tiff = write_tiff(
        &bitmaps,
        faxgate_fax::Coding::Mmr,
        faxgate_fax::Resolution::Fine,
        TiffWriterOptions::default(),
    )
    .unwrap();
    // Written under a temporary name and renamed, as a scanner would.
    std::fs::write(hot.join("memo.tif.part"), &tiff).unwrap();
    std::fs::rename(hot.join("memo.tif.part"), hot.join("memo.tif")).unwrap();
    let jobs = |site: &Site| {
        site.json("a", &["jobs", "--json"])
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    wait_for("a job for memo.tif at A", Duration::from_secs(30), || {
        jobs(&site).iter().any(|j| j["title"] == "memo.tif")
    });
    let id = jobs(&site)[0]["id"].as_str().unwrap().to_owned();
    let job = site.wait_state(&id, "done", Duration::from_secs(90));
    assert_eq!(
        (job["to"].as_str(), job["delivered"].as_u64()),
        (Some("osaka"), Some(3))
    );
    assert_same_pages(&site.printed_pages(&id, Duration::from_secs(30)), &pages);
    let claimed = || std::fs::read_dir(hot.join("processing")).unwrap().count();
    wait_for("memo.tif in done/", Duration::from_secs(10), || {
        hot.join("done/memo.tif").exists() && claimed() == 0
    });
    assert_eq!(std::fs::read(hot.join("done/memo.tif")).unwrap(), tiff);
    assert!(!hot.join("memo.tif").exists());

    site.kill_appliance("a");
    std::fs::rename(
        hot.join("done/memo.tif"),
        hot.join("processing").join(format!("{id}-memo.tif")),
    )
    .unwrap();
    site.start_appliance("a");
    wait_for("memo.tif back in done/", Duration::from_secs(30), || {
        hot.join("done/memo.tif").exists() && claimed() == 0
    });
    let all = jobs(&site);
    assert_eq!(all.len(), 1, "the file made a second job: {all:?}");
    assert_eq!(all[0]["state"], "done");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(site.printed().len(), 1, "printed once");
    assert!(
        site.tail("a.log").contains("queued before a restart"),
        "{}",
        site.tail("a.log")
    );
    site.assert_all_vacant();
}

/// Runs a 10-page job over a slow uplink, applies `fault` once two pages
/// are delivered, and checks the job completes with every page at B
/// exactly once.
fn survives(fault: impl FnOnce(&mut Site)) {
    survives_with(Opts::default(), fault);
}

/// [`survives`] with per-test settings (the uplink is always slowed).
fn survives_with(opts: Opts, fault: impl FnOnce(&mut Site)) {
    let mut site = Site::start(Opts {
        uplink: Some("600kbit"),
        ..opts
    });
    let (files, pages) = ten_pages(site.d());
    let id = site.send(&files);
    site.wait_delivered(&id, 2, Duration::from_secs(60));
    let before = site.job(&id)["delivered"].as_u64().unwrap();
    assert!(before < 10, "the document finished before the fault");
    fault(&mut site);
    let job = site.wait_state(&id, "done", Duration::from_secs(180));
    assert_eq!(job["delivered"], 10);
    assert!(
        job["attempts"].as_u64().unwrap() >= 2,
        "the fault did not interrupt the session: {job}"
    );
    assert!(
        std::fs::read_to_string(site.d().join("b.log"))
            .unwrap()
            .contains("Job resumes."),
        "B never saw the job resume:\n{}",
        site.tail("b.log")
    );
    assert_same_pages(&site.printed_pages(&id, Duration::from_secs(60)), &pages);
    assert_eq!(site.printed().len(), 1, "printed exactly once");
    let doc = site.inbox_doc(&id);
    assert_eq!(
        (doc["pages"].as_u64(), doc["state"].as_str()),
        (Some(10), Some("complete"))
    );
}

#[test]
fn relay_killed_mid_document() {
    survives(|site| {
        site.kill_relay();
        std::thread::sleep(Duration::from_secs(2));
        site.start_relay();
    });
}

#[test]
fn network_cut_for_20_seconds() {
    survives(|site| {
        site.t.sh("ra", "iptables -I FORWARD 1 -j DROP");
        std::thread::sleep(Duration::from_secs(20));
        site.t.sh("ra", "iptables -D FORWARD 1");
    });
}

#[test]
fn receiver_killed_and_restarted() {
    survives(|site| {
        site.kill_appliance("b");
        std::thread::sleep(Duration::from_secs(1));
        site.start_appliance("b");
    });
}

#[test]
fn sender_killed_and_restarted() {
    survives(|site| {
        site.kill_appliance("a");
        std::thread::sleep(Duration::from_secs(1));
        site.start_appliance("a");
    });
}

/// SIGTERM to A: its session parks at the next page boundary (no DCN),
/// A exits cleanly, and after the restart the job resumes.
fn sigterm_parks_a(site: &mut Site) {
    let pid = site.a.as_ref().unwrap().0.id();
    run(Command::new("kill").args(["-TERM", &pid.to_string()]));
    let status = site.a.as_mut().unwrap().0.wait().unwrap();
    assert!(status.success(), "SIGTERM exit: {status}");
    site.a = None;
    let log = std::fs::read_to_string(site.d().join("a.log")).unwrap();
    assert!(
        log.contains("Job parked for shutdown."),
        "{}",
        site.tail("a.log")
    );
    site.start_appliance("a");
}

#[test]
fn sender_stopped_with_sigterm_parks_and_resumes() {
    survives(sigterm_parks_a);
}

/// The same without ECM (MH/MR pages): the engine asks for the next page
/// and sends it in one go after MCF, so the park must happen when the
/// page is asked for, not wait for a boundary the session never sees
/// (it used to run into the shutdown deadline instead of parking).
#[test]
fn sender_without_ecm_stopped_with_sigterm_parks_and_resumes() {
    survives_with(
        Opts {
            a_fax: "ecm = false\ncodings = [\"mh\", \"mr\"]\n",
            ..Opts::default()
        },
        sigterm_parks_a,
    );
}

/// A cancel mid-document ends the session with DCN; B keeps the complete
/// pages as a partial document.
#[test]
fn cancel_mid_document_keeps_complete_pages_as_partial() {
    let site = Site::start(Opts {
        uplink: Some("600kbit"),
        ..Opts::default()
    });
    let (files, pages) = ten_pages(site.d());
    let id = site.send(&files);
    site.wait_delivered(&id, 2, Duration::from_secs(60));
    let out = site.cli("a", &["cancel", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job = site.wait_state(&id, "cancelled", Duration::from_secs(30));
    let n = job["delivered"].as_u64().unwrap() as usize;
    assert!((2..10).contains(&n), "delivered {n}");
    let got = site.printed_pages(&id, Duration::from_secs(30));
    assert_same_pages(&got, &pages[..n]);
    let doc = site.inbox_doc(&id);
    assert_eq!(doc["state"], "partial");
    assert_eq!(doc["pages"].as_u64(), Some(n as u64));
    assert!(
        std::fs::read_to_string(site.d().join("a.log"))
            .unwrap()
            .contains("DCN"),
        "A's log does not show the DCN"
    );
    site.assert_all_vacant();
}

/// Acceptance 2 at system level: a receiver that supports only MH at
/// standard resolution gets the fine document converted, not refused.
#[test]
fn mh_standard_only_receiver_gets_a_converted_document() {
    let site = Site::start(Opts {
        b_fax: "codings = [\"mh\"]\nresolutions = [\"standard\"]\necm = false\n",
        ..Opts::default()
    });
    let (files, pages) = ten_pages(site.d());
    let id = site.send(&files[..2]);
    let job = site.wait_state(&id, "done", Duration::from_secs(60));
    assert_eq!(job["delivered"], 2);
    let got = site.printed_pages(&id, Duration::from_secs(30));
    assert_eq!(got.len(), 2);
    for (g, w) in got.iter().zip(&pages) {
        // Standard resolution: one of each pair of fine lines (nearest
        // neighbour at the pair's centre: the second).
        assert_eq!((g.0, g.1), (1728, 1100));
        let stride = 216;
        for y in 0..1100usize {
            let src = 2 * y + 1;
            assert!(
                g.2[y * stride..(y + 1) * stride] == w.2[src * stride..(src + 1) * stride],
                "line {y} is not fine line {src}"
            );
        }
    }
    assert!(
        std::fs::read_to_string(site.d().join("a.log"))
            .unwrap()
            .contains("Mh"),
        "A's log does not show MH negotiated"
    );
}

/// A peer that is not a fax machine: `faxgate relay-client` as mallory,
/// scripted with raw bytes. `input` is what mallory sends.
fn mallory_calls_b(site: &Site, input: Vec<u8>) -> Output {
    let f = site.d().join("mallory.in");
    std::fs::write(&f, input).unwrap();
    site.t
        .exec("a")
        .arg(faxgate())
        .args([
            "relay-client",
            "--server",
            "192.0.2.1:4651",
            "--pin",
            &site.pin,
        ])
        .args(["--user", "mallory", "connect", "osaka"])
        .env("FAXGATE_PASSWORD", "pw-mallory-123")
        .env("RUST_LOG", "warn")
        .stdin(std::fs::File::open(&f).unwrap())
        .output()
        .unwrap()
}

/// Mallory listens once and answers A's call with `answer`, keeping its
/// side open (no TERMINATE) until the returned process is dropped.
fn mallory_answers(site: &Site, answer: &[u8]) -> (Proc, std::process::ChildStdin) {
    use std::io::Write as _;
    let mut child = site
        .t
        .exec("b")
        .arg(faxgate())
        .args([
            "relay-client",
            "--server",
            "192.0.2.5:4651",
            "--pin",
            &site.pin,
        ])
        .args(["--user", "mallory", "listen", "--once"])
        .env("FAXGATE_PASSWORD", "pw-mallory-123")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(answer).unwrap();
    stdin.flush().unwrap();
    // A's call must find mallory logged in, however long the login takes.
    wait_for("mallory logged in", Duration::from_secs(30), || {
        site.relay_status()["users"]
            .as_array()
            .is_some_and(|u| u.iter().any(|u| u["user"] == "mallory"))
    });
    (Proc(child), stdin)
}

fn tpkt(ifp: &faxgate_fax::t38::Ifp) -> Vec<u8> {
    let mut out = Vec::new();
    faxgate_fax::t38::tpkt_frame(&ifp.to_bytes(), &mut out).unwrap();
    out
}

/// One V.21 HDLC frame (in-memory T.30 form) as a T.38 packet: the
/// octets bit-reversed, as T.38 carries them.
fn v21(frame: &[u8]) -> Vec<u8> {
    use faxgate_fax::t38::{DataType, Field, FieldType, Ifp};
    let mut frame = frame.to_vec();
    faxgate_fax::t38::reverse_bits(&mut frame);
    tpkt(&Ifp::Data {
        modulation: DataType::V21,
        fields: vec![
            Field {
                kind: FieldType::HdlcData,
                data: Some(frame.to_vec()),
            },
            Field {
                kind: FieldType::HdlcFcsOkSigEnd,
                data: None,
            },
        ],
    })
}

/// Acceptance 4: garbage, an unknown T.30 frame, a DCS asking for what
/// DIS did not offer, and silence. Each session ends within the T.30
/// timers with a clear reason, and the appliance goes on serving.
#[test]
fn bad_peers_end_sessions_with_a_reason_and_the_daemon_goes_on() {
    let site = Site::start(Opts {
        a_fax: "max_attempts = 1\n[fax.timers]\nt1 = \"6s\"\n",
        b_fax: "resolutions = [\"standard\", \"fine\"]\n",
        ..Opts::default()
    });
    let (files, pages) = ten_pages(site.d());

    // Garbage IFP to B.
    let _ = mallory_calls_b(&site, vec![0x03, 0x00, 0x00, 0x08, 0xff, 0xff, 0xff, 0xff]);
    // An unknown T.30 frame to B (FCF 0x7e is no T.30 command).
    let _ = mallory_calls_b(&site, v21(&[0xff, 0x13, 0x7e, 0x00]));
    // A DCS for 400x400, which B's DIS did not offer.
    let params = faxgate_fax::t30::Params {
        resolution: faxgate_fax::Resolution::R400,
        width: 1728,
        coding: faxgate_fax::Coding::Mh,
        ecm: false,
    };
    let mut dcs = vec![0xff, 0x13, faxgate_fax::t30::frame::fcf::DCS | 0x01];
    dcs.extend_from_slice(&params.to_dcs_fif());
    let _ = mallory_calls_b(&site, v21(&dcs));
    // Each ended with its reason in B's history (`faxgate history`). B
    // notes the last one just after its session ends, so mallory can be
    // gone a moment before: wait for it.
    let reasons = ["malformed t.38", "0x7e", "not offered"];
    let history = || {
        site.json("b", &["history", "--json"])
            .to_string()
            .to_ascii_lowercase()
    };
    let mut last = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while std::time::Instant::now() < deadline {
        last = history();
        if reasons.iter().all(|r| last.contains(r)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for reason in reasons {
        assert!(
            last.contains(reason),
            "B's history has no reason mentioning {reason:?}: {last}\n{}",
            site.tail("b.log")
        );
    }

    // Silence from a "receiver": A's job ends with T1.
    let silent = mallory_answers(&site, &[]);
    let id = site.send_to(&files[..1], "mallory");
    let job = site.wait_state(&id, "failed", Duration::from_secs(30));
    assert!(
        job["reason"].as_str().unwrap_or("").contains("T1"),
        "reason: {}",
        job["reason"]
    );
    drop(silent);

    // Garbage from a "receiver": A's job names it.
    let garbage = mallory_answers(&site, &[0x03, 0x00, 0x00, 0x06, 0x99, 0x99]);
    let id = site.send_to(&files[..1], "mallory");
    let job = site.wait_state(&id, "failed", Duration::from_secs(30));
    assert!(
        job["reason"].as_str().unwrap_or("").contains("malformed"),
        "reason: {}",
        job["reason"]
    );
    drop(garbage);

    // And B still receives a real fax.
    let id = site.send(&files[..1]);
    site.wait_state(&id, "done", Duration::from_secs(60));
    assert_same_pages(
        &site.printed_pages(&id, Duration::from_secs(30)),
        &pages[..1],
    );
}
