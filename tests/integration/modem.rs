//! Faxes over a telephone line: `faxgate modem` against efax, a fax
//! program that drives Class 1 modems, through two software fax modems.
//!
//! iaxmodem (Debian package) is spandsp's T.31 fax modem on a pty; two of
//! them joined by an IAX2 call on loopback stand in for two modems on a
//! phone line. Nothing is mocked: the modems modulate and demodulate real
//! V.21 and V.17/V.29/V.27ter audio, so T.30 timing, TCF training and the
//! DLE framing of Class 1 all happen as on a line.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{Proc, faxgate, need, read_line_after, run, wait_for};

/// Two iaxmodems, A (the caller's) and B (number [`Line::B_NUMBER`]),
/// each on a free UDP port with its config under /etc/iaxmodem (where
/// iaxmodem reads it); both stopped and their files removed on drop.
struct Line {
    dir: tempfile::TempDir,
    names: [String; 2],
    _modems: Vec<Proc>,
}

impl Line {
    const B_NUMBER: &'static str = "200";

    fn start() -> Line {
        need("iaxmodem", "iaxmodem");
        let dir = tempfile::tempdir().unwrap();
        let ports = [free_udp_port(), free_udp_port()];
        let tag = format!("fgtest-{}-{}", std::process::id(), ports[0]);
        let names = [format!("{tag}-a"), format!("{tag}-b")];
        std::fs::create_dir_all("/etc/iaxmodem").unwrap();
        let mut modems = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let tty = dir.path().join(if i == 0 { "ttyA" } else { "ttyB" });
            // A calls B: its "server" is B's port. B never calls.
            let cfg = format!(
                "device {}\nowner root:root\nmode 660\nport {}\nrefresh 0\nserver 127.0.0.1:{}\n\
                 peername {name}\nsecret x\ncidname {name}\ncidnumber {}\ncodec slinear\n",
                tty.display(),
                ports[i],
                ports[1],
                100 + i
            );
            std::fs::write(format!("/etc/iaxmodem/{name}"), cfg).unwrap();
            let log = std::fs::File::create(dir.path().join(format!("{name}.log"))).unwrap();
            modems.push(Proc(
                Command::new("iaxmodem")
                    .arg(name)
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .expect("iaxmodem"),
            ));
            wait_for("iaxmodem's pty", Duration::from_secs(10), || tty.exists());
            if i == 0 {
                // libiax2 seeds its call numbers from the clock's
                // seconds: two modems started in the same second would
                // pick the same numbers and refuse each other's calls.
                std::thread::sleep(Duration::from_millis(1100));
            }
        }
        Line {
            dir,
            names,
            _modems: modems,
        }
    }

    fn tty(&self, side: usize) -> PathBuf {
        self.dir
            .path()
            .join(if side == 0 { "ttyA" } else { "ttyB" })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        for name in &self.names {
            std::fs::remove_file(format!("/etc/iaxmodem/{name}")).ok();
        }
    }
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A fine-resolution A4-wide page with text-like detail: stripes, a
/// checkerboard and diagonal strokes, different on each page.
fn page(seed: u32, rows: u32) -> Vec<Vec<bool>> {
    (0..rows)
        .map(|y| {
            (0..1728u32)
                .map(|x| match (y / 40) % 3 {
                    0 => (x / (8 + seed)).is_multiple_of(2) && y % 40 < 30,
                    1 => ((x / 16) + (y / 16) + seed).is_multiple_of(2),
                    _ => (x + y * (1 + seed)) % 97 < 6,
                })
                .collect()
        })
        .collect()
}

fn write_pbm(path: &Path, rows: &[Vec<bool>]) {
    let w = rows[0].len();
    let mut out = format!("P4\n{w} {}\n", rows.len()).into_bytes();
    for row in rows {
        for chunk in row.chunks(8) {
            let mut b = 0u8;
            for (i, &black) in chunk.iter().enumerate() {
                if black {
                    b |= 0x80 >> i;
                }
            }
            out.push(b);
        }
    }
    std::fs::write(path, out).unwrap();
}

/// The pixels of every page of a TIFF, decoded by netpbm's tifftopnm
/// (libtiff), not by faxgate's codec.
fn tiff_pages(path: &Path) -> Vec<Vec<Vec<bool>>> {
    need("tifftopnm", "netpbm");
    need("tiffsplit", "libtiff-tools");
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("p");
    let out = Command::new("tiffsplit")
        .arg(path)
        .arg(&prefix)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tiffsplit {}: {out:?}",
        path.display()
    );
    let mut parts: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    parts.sort();
    parts
        .iter()
        .map(|p| {
            let out = Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "tifftopnm {} 2>/dev/null | pamtopnm -plain",
                    p.display()
                ))
                .output()
                .unwrap();
            plain_pbm(&out.stdout)
        })
        .collect()
}

/// Parses a plain (P1) PBM.
fn plain_pbm(text: &[u8]) -> Vec<Vec<bool>> {
    let text = String::from_utf8_lossy(text);
    let mut tokens = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .flat_map(str::split_whitespace)
        .flat_map(|t| {
            if t.len() > 1 && t.chars().all(|c| c == '0' || c == '1') {
                t.chars().map(|c| c.to_string()).collect()
            } else {
                vec![t.to_owned()]
            }
        });
    assert_eq!(tokens.next().as_deref(), Some("P1"), "not a plain PBM");
    let w: usize = tokens.next().unwrap().parse().unwrap();
    let h: usize = tokens.next().unwrap().parse().unwrap();
    let bits: Vec<bool> = tokens.map(|t| t == "1").collect();
    assert_eq!(bits.len(), w * h, "PBM data length");
    bits.chunks(w).map(<[bool]>::to_vec).collect()
}

/// `pages` as one multi-page PBM file `name` in the line's folder.
fn pbm_document(line: &Line, name: &str, pages: &[Vec<Vec<bool>>]) -> PathBuf {
    let path = line.path(name);
    let mut all = Vec::new();
    for (i, p) in pages.iter().enumerate() {
        let one = line.path(&format!("{name}.{i}.pbm"));
        write_pbm(&one, p);
        all.extend(std::fs::read(&one).unwrap());
    }
    std::fs::write(&path, all).unwrap();
    path
}

/// efax answering one call on modem B, receiving into `rx.NNN` in the
/// line's folder; returns once it takes calls, with its log's path.
fn efax_answering(line: &Line) -> (Proc, PathBuf) {
    let log = line.path("efax.log");
    let efax = Proc(
        Command::new("efax")
            .args(["-d", line.tty(1).to_str().unwrap()])
            .args(["-o1", "-kZ", "-w", "-iS0=1", "-v", "ewinchamr"])
            .args(["-r", line.path("rx").to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("efax"),
    );
    wait_for_efax_ready(&log);
    (efax, log)
}

/// Waits until efax's log shows it waiting for a call, then 6 s more:
/// iaxmodem refuses calls as busy for 5 s after the ATZ efax starts with.
fn wait_for_efax_ready(log: &Path) {
    wait_for("efax waiting for a call", Duration::from_secs(20), || {
        std::fs::read_to_string(log).is_ok_and(|t| t.contains("waiting for activity"))
    });
    std::thread::sleep(Duration::from_secs(6));
}

fn wait_exit(
    child: &mut std::process::Child,
    what: &str,
    limit: Duration,
) -> std::process::ExitStatus {
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            start.elapsed() < limit,
            "{what} did not finish within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Codes `pages` for efax with efix (PBM in, raw G3 out), as
/// `p0.g3`, `p1.g3`... in the line's folder.
fn efax_pages(line: &Line, pages: &[Vec<Vec<bool>>]) -> Vec<PathBuf> {
    need("efix", "efax");
    let mut raw = Vec::new();
    for (i, p) in pages.iter().enumerate() {
        let pbm = line.path(&format!("p{i}.pbm"));
        write_pbm(&pbm, p);
        let g3 = line.path(&format!("p{i}.g3"));
        let out = Command::new("efix")
            .args(["-i", "pbm", "-o", "fax"])
            .arg(&pbm)
            .output()
            .unwrap();
        assert!(out.status.success(), "efix: {out:?}");
        std::fs::write(&g3, out.stdout).unwrap();
        raw.push(g3);
    }
    raw
}

/// efax on modem A faxes `raw` to B's number as "+49 30 3333".
fn efax_send(line: &Line, raw: &[PathBuf]) -> std::process::Output {
    efax_sender(line, raw).output().unwrap()
}

/// [`efax_send`] in the background, its log in the line's folder as
/// `log`.
fn efax_spawn(line: &Line, raw: &[PathBuf], log: &str) -> Proc {
    Proc(
        efax_sender(line, raw)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(line.path(log)).unwrap())
            .spawn()
            .unwrap(),
    )
}

/// The efax command of [`efax_send`], to run or spawn.
fn efax_sender(line: &Line, raw: &[PathBuf]) -> Command {
    need("efax", "efax");
    let mut efax = Command::new("efax");
    efax.args(["-d", line.tty(0).to_str().unwrap()])
        .args(["-o1", "-v", "ewinchamr", "-l", "+49 30 3333", "-h", ""])
        .args(["-t", Line::B_NUMBER])
        .args(raw);
    efax
}

/// Asserts that `got` (pages received from efax) are `want` below
/// efax's header band: blank with `-h ""`, 20 white rows, then the
/// page's rows unchanged.
fn assert_efax_pages(what: &str, got: &[Vec<Vec<bool>>], want: &[Vec<Vec<bool>>]) {
    assert_eq!(got.len(), want.len(), "{what}: pages");
    for (i, (page, want)) in got.iter().zip(want).enumerate() {
        assert_eq!(page.len(), want.len() + 20, "{what} page {}: rows", i + 1);
        let (header, body) = page.split_at(20);
        assert!(
            header.iter().flatten().all(|&black| !black),
            "{what} page {}: the header band is not blank",
            i + 1
        );
        let differing = body.iter().zip(want).filter(|(a, b)| a != b).count();
        assert_eq!(
            differing,
            0,
            "{what} page {}: {differing} rows differ",
            i + 1
        );
    }
}

#[test]
fn faxgate_faxes_two_pages_to_efax_over_a_phone_line() {
    need("efax", "efax");
    let line = Line::start();
    let pages = [page(0, 600), page(3, 500)];
    let src = pbm_document(&line, "doc.pbm", &pages);
    let (mut efax, efax_log) = efax_answering(&line);
    let out = faxgate_send(&line.tty(0), &src);
    let efax_text = || std::fs::read_to_string(&efax_log).unwrap_or_default();
    assert!(
        out.status.success(),
        "faxgate modem send failed: {}\n{}\nefax:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        efax_text()
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("sent 2 page(s) to 200"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let status = wait_exit(&mut efax.0, "efax", Duration::from_secs(60));
    assert!(status.success(), "efax: {status}\n{}", efax_text());
    for (i, want) in pages.iter().enumerate() {
        let file = line.path(&format!("rx.{:03}", i + 1));
        let got = tiff_pages(&file);
        assert_eq!(got.len(), 1, "{} pages in {}", got.len(), file.display());
        assert_eq!(
            got[0].len(),
            want.len(),
            "page {}: rows received by efax",
            i + 1
        );
        let differing = got[0].iter().zip(want).filter(|(a, b)| a != b).count();
        assert_eq!(differing, 0, "page {}: {differing} rows differ", i + 1);
    }
    assert!(
        efax_text().contains("+81 3 1111"),
        "efax did not see our TSI:\n{}",
        efax_text()
    );
}

/// `faxgate modem send` of `src` from the modem on `device` to B's number
/// as "+81 3 1111", with the T.30 frames in its log (stderr).
fn faxgate_send(device: &Path, src: &Path) -> std::process::Output {
    Command::new(faxgate())
        .args(["modem", "send", "--device", device.to_str().unwrap()])
        .args(["--to", Line::B_NUMBER, "--ident", "+81 3 1111"])
        .arg(src)
        .env("RUST_LOG", "faxgate_modem=debug,info")
        .output()
        .unwrap()
}

/// `faxgate modem receive` answering one call on modem B as "+81 6 2222",
/// into the folder `inbox`, its stdout in `NAME.out` and its log in
/// `NAME.log`; returned once it can take the call.
fn faxgate_receiving(line: &Line, name: &str) -> (Proc, PathBuf, PathBuf) {
    let inbox = line.path("inbox");
    let log = line.path(&format!("{name}.log"));
    let rx = Proc(
        Command::new(faxgate())
            .args([
                "modem",
                "receive",
                "--device",
                line.tty(1).to_str().unwrap(),
            ])
            .args(["--ident", "+81 6 2222", "--calls", "1", "--out"])
            .arg(&inbox)
            .env("RUST_LOG", "faxgate_modem=debug,info")
            .stdout(std::fs::File::create(line.path(&format!("{name}.out"))).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    // Its log says when the modem is set up; iaxmodem then refuses calls
    // as busy for 5 s after the ATH0 of that setup.
    wait_for(
        "faxgate waiting for a call",
        Duration::from_secs(20),
        || std::fs::read_to_string(&log).is_ok_and(|t| t.contains("Waiting for calls.")),
    );
    std::thread::sleep(Duration::from_secs(6));
    (rx, inbox, log)
}

#[test]
fn efax_faxes_two_pages_to_faxgate_over_a_phone_line() {
    let line = Line::start();
    let pages = [page(1, 450), page(2, 700)];
    let raw = efax_pages(&line, &pages);
    let (mut rx, inbox, fg_log) = faxgate_receiving(&line, "faxgate");
    let out = efax_send(&line, &raw);
    let fg_text = || std::fs::read_to_string(&fg_log).unwrap_or_default();
    assert!(
        out.status.success(),
        "efax send: {}\n{}\nfaxgate:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        fg_text()
    );
    let status = wait_exit(&mut rx.0, "faxgate modem receive", Duration::from_secs(60));
    let said = std::fs::read_to_string(line.path("faxgate.out")).unwrap();
    assert!(status.success(), "faxgate: {status}\n{said}\n{}", fg_text());
    assert!(
        said.contains("received 2 page(s) from \"+49 30 3333\""),
        "{said}\n{}",
        fg_text()
    );
    let files: Vec<PathBuf> = std::fs::read_dir(&inbox)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "tif"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_efax_pages(
        &files[0].display().to_string(),
        &tiff_pages(&files[0]),
        &pages,
    );
}

/// A page of `rows` rows whose left `noisy` pixels are noise: MMR codes
/// noise to more than its raw size, so such a page fills several ECM
/// blocks (64 KiB each).
fn noise_page(seed: u64, rows: u32, noisy: u32) -> Vec<Vec<bool>> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..rows)
        .map(|_| {
            (0..1728u32)
                .map(|c| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    c < noisy && x.is_multiple_of(3)
                })
                .collect()
        })
        .collect()
}

/// A burst of noise between faxgate and its modem: a pty pair whose
/// slave the sender opens as its modem, copied both ways to iaxmodem's
/// pty, except that one octet of the first ECM block's data (the first
/// `AT+FTM=146`, V.17 14400 with short training: TCF goes with long
/// training) is flipped [`NoisyLine::AT`] octets in, past the preamble.
/// The modem sends the damaged bits as it got them, so the receiver sees
/// a bad FCS, as after noise on a real line. iaxmodem cannot add noise
/// itself; this stands in for it.
struct NoisyLine {
    path: PathBuf,
    flips: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Our own hold on the slave, so the master does not read EIO before
    /// faxgate opens it; closed on drop, which ends the copying thread.
    _slave: std::fs::File,
}

impl NoisyLine {
    const AT: usize = 4000;

    fn start(modem: &Path) -> NoisyLine {
        use std::io::{Read, Write};
        use std::os::fd::FromRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        use std::sync::atomic::Ordering;
        let (mut master, mut slave) = (0, 0);
        let mut name = [0 as libc::c_char; 128];
        // SAFETY: openpty writes two descriptors and the name into the
        // buffers given (128 octets, more than a /dev/pts path).
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                name.as_mut_ptr(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: both descriptors are new and owned from here on.
        let (mut to_faxgate, slave) = unsafe {
            (
                std::fs::File::from_raw_fd(master),
                std::fs::File::from_raw_fd(slave),
            )
        };
        // SAFETY: openpty wrote a NUL-terminated path.
        let path = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }
            .to_str()
            .unwrap()
            .to_owned();
        let mut to_modem = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(modem)
            .unwrap();
        for fd in [&slave, &to_modem] {
            use std::os::fd::AsRawFd;
            // SAFETY: termios calls on open descriptors with a zeroed,
            // then filled, struct. Raw: no echo, no XON/XOFF handling
            // here (the modem's XON/XOFF pass through to faxgate).
            unsafe {
                let mut t: libc::termios = std::mem::zeroed();
                assert_eq!(libc::tcgetattr(fd.as_raw_fd(), &mut t), 0);
                libc::cfmakeraw(&mut t);
                assert_eq!(libc::tcsetattr(fd.as_raw_fd(), libc::TCSANOW, &t), 0);
            }
        }
        let flips = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut from_faxgate = to_faxgate.try_clone().unwrap();
        let mut from_modem = to_modem.try_clone().unwrap();
        let counted = flips.clone();
        std::thread::spawn(move || {
            let mut seen: Vec<u8> = Vec::new();
            // Octets of the first ECM block passed so far (None: not in it).
            let mut in_block: Option<usize> = None;
            let mut prev = 0u8;
            let mut buf = [0u8; 4096];
            while let Ok(n) = from_faxgate.read(&mut buf) {
                if n == 0 {
                    break;
                }
                for b in &mut buf[..n] {
                    if let Some(at) = in_block.as_mut() {
                        *at += 1;
                        // Not a DLE, nor the octet after one, nor one
                        // that would become a DLE: the framing stays.
                        if *at >= Self::AT && *b != 0x10 && *b ^ 0x08 != 0x10 && prev != 0x10 {
                            *b ^= 0x08;
                            counted.fetch_add(1, Ordering::SeqCst);
                            in_block = None;
                            seen.clear();
                        }
                    } else if counted.load(Ordering::SeqCst) == 0 {
                        seen.push(*b);
                        if seen.ends_with(b"AT+FTM=146\r") {
                            in_block = Some(0);
                        }
                        if seen.len() > 64 {
                            seen.drain(..32);
                        }
                    }
                    prev = *b;
                }
                if to_modem.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = from_modem.read(&mut buf) {
                if n == 0 || to_faxgate.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
        NoisyLine {
            path: PathBuf::from(path),
            flips,
            _slave: slave,
        }
    }
}

/// faxgate to faxgate over the phone line with error correction: both
/// offer ECM and MMR, so T.30 picks them, and the pages go as blocks of
/// HDLC frames that faxgate frames and unframes itself at V.17 speed
/// (the modems only modulate). A burst of noise ([`NoisyLine`]) damages
/// a frame of the first block: the receiver asks for it again (PPR) and
/// the sender sends it again. The second page needs more than one block
/// (PPS-NULL between them). Both pages arrive pixel-equal, decoded by
/// libtiff.
#[test]
fn faxgate_faxes_to_faxgate_with_ecm_and_mmr_over_a_noisy_phone_line() {
    let line = Line::start();
    let noisy = NoisyLine::start(&line.tty(0));
    let pages = [page(4, 800), noise_page(9, 260, 1728)];
    let src = pbm_document(&line, "doc.pbm", &pages);
    let (mut rx, inbox, rx_log) = faxgate_receiving(&line, "receiver");
    let out = faxgate_send(&noisy.path, &src);
    let rx_text = || std::fs::read_to_string(&rx_log).unwrap_or_default();
    let tx_text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "faxgate modem send failed: {}
{tx_text}
receiver:
{}",
        String::from_utf8_lossy(&out.stdout),
        rx_text()
    );
    let status = wait_exit(&mut rx.0, "faxgate modem receive", Duration::from_secs(60));
    let said = std::fs::read_to_string(line.path("receiver.out")).unwrap();
    assert!(
        status.success(),
        "receiver: {status}
{said}
{}",
        rx_text()
    );
    assert!(
        said.contains("received 2 page(s) from \"+81 3 1111\""),
        "{said}\n{}",
        rx_text()
    );
    // Both ends agreed on ECM and MMR, and the pages went as blocks.
    for (who, log) in [("sender", tx_text.clone()), ("receiver", rx_text())] {
        assert!(
            log.contains("coding: Mmr") && log.contains("ecm: true"),
            "{who} did not negotiate ECM with MMR:\n{log}"
        );
    }
    // One octet was damaged; the receiver asked for its frame again and
    // the sender sent it again: a block more than the pages need.
    assert_eq!(noisy.flips.load(std::sync::atomic::Ordering::SeqCst), 1);
    let rx_said = rx_text();
    // A PPR got the frame again, at full speed: fewer than four PPRs and
    // no continue-to-correct (CTR), which would mean the resent frames
    // were missed and the block crept through at a lower speed instead.
    // (More than one PPR can happen on a loaded machine: an audio glitch
    // of the software modems damages a resent frame too.)
    let out_frames = |fcf: &str| {
        rx_said
            .lines()
            .filter(|l| l.contains("T.30 out.") && l.contains(fcf))
            .count()
    };
    let pprs = out_frames("PPR");
    assert!(
        (1..4).contains(&pprs),
        "{pprs} PPRs sent by the receiver:\n{rx_said}"
    );
    assert_eq!(
        out_frames("CTR"),
        0,
        "CTRs sent by the receiver:\n{rx_said}"
    );
    assert!(
        tx_text
            .lines()
            .any(|l| l.contains("T.30 in.") && l.contains("PPR")),
        "the sender heard no PPR:\n{tx_text}"
    );
    let blocks = tx_text.matches("ECM block out.").count();
    assert!(
        blocks >= 4,
        "{blocks} ECM blocks sent; the second page needs two or more, and \
         the first a resend:\n{tx_text}"
    );
    let files: Vec<PathBuf> = std::fs::read_dir(&inbox)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "tif"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let got = tiff_pages(&files[0]);
    assert_eq!(got.len(), pages.len(), "pages in {}", files[0].display());
    for (i, (g, w)) in got.iter().zip(&pages).enumerate() {
        assert_eq!(g.len(), w.len(), "page {}: rows", i + 1);
        let differing = g.iter().zip(w).filter(|(a, b)| a != b).count();
        assert_eq!(differing, 0, "page {}: {differing} rows differ", i + 1);
    }
}

/// A relay and one appliance ("tokyo") whose `[modem]` is iaxmodem B:
/// efax on modem A faxes two pages to B's number; the appliance answers,
/// keeps the fax in its inbox (from "pstn", with efax's TSI) and prints
/// it to a folder, pixel for pixel.
/// A relay and one appliance ("tokyo") whose `[modem]` is iaxmodem
/// `side` of `line` (answering calls if `answer`), printing to a folder
/// as TIFF; both stopped when dropped.
struct Appliance {
    panel: String,
    cfg: PathBuf,
    out: PathBuf,
    log: PathBuf,
    state: PathBuf,
    printed: PathBuf,
    _relay: Proc,
    appliance: Proc,
}

impl Appliance {
    fn start(line: &Line, side: usize, answer: bool) -> Appliance {
        Appliance::start_with(line, side, answer, "")
    }

    /// [`Appliance::start`] with `extra` appended to its configuration.
    fn start_with(line: &Line, side: usize, answer: bool, extra: &str) -> Appliance {
        let a = Appliance::on_device(line.path("site"), &line.tty(side), answer, extra);
        wait_for(
            "the appliance's modem set up",
            Duration::from_secs(20),
            || a.log_text().contains("Waiting for calls."),
        );
        // iaxmodem refuses calls as busy for 5 s after the setup's ATH0.
        std::thread::sleep(Duration::from_secs(6));
        a
    }

    /// The relay and the appliance in `d`, its `[modem]` on `device`,
    /// without waiting for the modem.
    fn on_device(d: PathBuf, device: &Path, answer: bool, extra: &str) -> Appliance {
        let printed = d.join("printed");
        std::fs::create_dir_all(&printed).unwrap();
        let relay_cfg = d.join("relay.toml");
        std::fs::write(
            &relay_cfg,
            format!(
                "[relay]\nlisten = \"127.0.0.1:0\"\nstate_dir = {:?}\n\
                 argon2_memory_kib = 1024\nargon2_iterations = 1\n",
                d.join("relay-state").display().to_string()
            ),
        )
        .unwrap();
        run(Command::new(faxgate())
            .args(["relay", "--config"])
            .arg(&relay_cfg)
            .args(["user", "add", "tokyo", "--password-env", "FG_PW"])
            .env("FG_PW", "pw-tokyo-123"));
        let relay = crate::common::spawn_relay(&relay_cfg, &d);
        let relay_addr = read_line_after(&d.join("relay.out"), "relay (tcp) listening on ");
        let cfg = d.join("tokyo.toml");
        let state = d.join("tokyo-state");
        std::fs::write(
            &cfg,
            format!(
                "state_dir = {:?}\n\
                 [relay]\nserver = \"{relay_addr}\"\nuser = \"tokyo\"\npassword = \"pw-tokyo-123\"\n\
                 [fax]\nident = \"+81 3 0000\"\nretry_initial = \"1s\"\n\
                 [panel]\nlisten = \"127.0.0.1:0\"\n\
                 [printer]\nuri = \"dir:{}?format=tiff\"\nretry = \"1s\"\n\
                 [modem]\ndevice = {:?}\nanswer = {answer}\n{extra}",
                state.display().to_string(),
                printed.display(),
                device.display().to_string(),
            ),
        )
        .unwrap();
        let log = d.join("tokyo.log");
        let out = d.join("tokyo.out");
        let (appliance, panel) = Appliance::spawn(&cfg, &out, &log);
        Appliance {
            panel,
            cfg,
            out,
            log,
            state,
            printed,
            _relay: relay,
            appliance,
        }
    }

    /// `faxgate appliance --config cfg`, and its panel's address once up.
    fn spawn(cfg: &Path, out: &Path, log: &Path) -> (Proc, String) {
        let appliance = Proc(
            Command::new(faxgate())
                .args(["appliance", "--config"])
                .arg(cfg)
                .env("RUST_LOG", "info,faxgate=debug,faxgate_modem=debug")
                .env("NO_COLOR", "1")
                .stdout(std::fs::File::create(out).unwrap())
                .stderr(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(log)
                        .unwrap(),
                )
                .spawn()
                .unwrap(),
        );
        (
            appliance,
            read_line_after(out, "appliance: panel API on http://"),
        )
    }

    /// Stops the appliance with SIGTERM and returns how it exited (within
    /// `limit`, else the test fails).
    fn stop(&mut self, limit: Duration) -> std::process::ExitStatus {
        let pid = libc::pid_t::try_from(self.appliance.0.id()).unwrap();
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        wait_exit(&mut self.appliance.0, "the appliance", limit)
    }

    /// Waits (up to 90 s) until the modem has received page `n` of a call.
    fn wait_for_page(&self, n: u32) {
        let said = format!("Page received. page={n} ");
        wait_for(
            &format!("page {n} received"),
            Duration::from_secs(90),
            || self.log_text().contains(&said),
        );
    }

    /// `faxgate send --no-wait --to tel:NUMBER FILE` through the panel;
    /// fails the test unless the job was queued.
    fn send_to_tel(&self, number: &str, file: &Path) {
        let out = Command::new(faxgate())
            .args(["send", "--no-wait", "--to", &format!("tel:{number}")])
            .args(["--panel", &self.panel])
            .arg(file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "faxgate send: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The files printed so far (TIFF).
    fn printed_files(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.printed)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "tif" || e == "tiff"))
            .collect()
    }

    /// Asserts that the history has a note on inbox document `doc` that
    /// says `word` (why its reception ended).
    fn assert_noted(&self, doc: &serde_json::Value, word: &str) {
        let history = self.json(&["history"]);
        let subject = format!("inbox:{}", doc["id"]);
        assert!(
            history.as_array().is_some_and(|h| h.iter().any(|e| {
                e["subject"] == subject.as_str()
                    && e["message"].as_str().is_some_and(|m| m.contains(word))
            })),
            "no note saying {word:?} on {subject} in the history: {history}\nappliance:\n{}",
            self.log_text()
        );
    }

    /// Starts the appliance again on the same configuration and state.
    fn restart(&mut self) {
        let (appliance, panel) = Appliance::spawn(&self.cfg, &self.out, &self.log);
        self.appliance = appliance;
        self.panel = panel;
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `faxgate inbox`: the received documents.
    fn inbox(&self) -> Vec<serde_json::Value> {
        self.json(&["inbox"])
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The first inbox document from "pstn" once it is printed (within
    /// 90 s; else the test fails with the inbox and the log).
    fn printed_from_pstn(&self) -> serde_json::Value {
        let done = std::time::Instant::now() + Duration::from_secs(90);
        while std::time::Instant::now() < done {
            if let Some(d) = self.inbox().into_iter().find(|d| d["from"] == "pstn")
                && d["print"] == "printed"
            {
                return d;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "no printed document from pstn: {:?}\nappliance:\n{}",
            self.inbox(),
            self.log_text()
        );
    }

    /// `faxgate ARGS --json --panel P`, parsed.
    fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = Command::new(faxgate())
            .args(args)
            .args(["--json", "--panel", &self.panel])
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    }
}

#[test]
fn efax_faxes_to_the_appliance_which_prints_it() {
    let line = Line::start();
    let pages = [page(4, 520), page(5, 380)];
    let raw = efax_pages(&line, &pages);
    let site = Appliance::start(&line, 1, true);
    let state = site.state.clone();
    let log_text = || site.log_text();

    let sent = efax_send(&line, &raw);
    assert!(
        sent.status.success(),
        "efax send: {}\n{}\nappliance:\n{}",
        sent.status,
        String::from_utf8_lossy(&sent.stderr),
        log_text()
    );

    let doc = site.printed_from_pstn();
    assert_eq!(doc["state"], "complete", "{doc}");
    assert_eq!(doc["pages"], 2, "{doc}");
    assert_eq!(doc["remote_ident"], "+49 30 3333", "{doc}");
    let job_id = doc["job_id"].as_str().unwrap_or_default();
    assert!(
        job_id.len() == 16 && job_id.chars().all(|c| c.is_ascii_hexdigit()),
        "job id {job_id:?}"
    );
    assert_eq!(
        site.inbox().len(),
        1,
        "one call, one document: {:?}",
        site.inbox()
    );

    // The pages as stored, one TIFF each, and as printed, one TIFF.
    let id = doc["id"].as_i64().unwrap();
    let stored: Vec<Vec<Vec<bool>>> = (0..2)
        .flat_map(|i| tiff_pages(&state.join(format!("inbox/{id}/{i:04}.tif"))))
        .collect();
    assert_efax_pages("stored", &stored, &pages);
    let files = site.printed_files();
    assert_eq!(files.len(), 1, "printed: {files:?}");
    assert_efax_pages("printed", &tiff_pages(&files[0]), &pages);
}

/// efax starts a three-page fax to the appliance and dies once the first
/// page is confirmed (the sender's line goes dead mid-call). A PSTN
/// sender cannot resume, so the appliance keeps the page it confirmed as
/// a partial document, notes why, and prints it; nothing confirmed is
/// lost, and the line takes the next call.
#[test]
fn a_call_cut_after_the_first_page_leaves_a_partial_fax_that_prints() {
    let line = Line::start();
    let pages = [page(8, 420), page(9, 900), page(10, 900)];
    let raw = efax_pages(&line, &pages);
    let site = Appliance::start(&line, 1, true);
    let log_text = || site.log_text();

    let mut efax = efax_spawn(&line, &raw, "efax-cut.log");
    site.wait_for_page(1);
    efax.0.kill().unwrap();
    efax.0.wait().unwrap();

    let doc = site.printed_from_pstn();
    assert_eq!(doc["state"], "partial", "{doc}");
    assert_eq!(doc["pages"], 1, "{doc}");
    assert_eq!(doc["remote_ident"], "+49 30 3333", "{doc}");
    let files = site.printed_files();
    assert_eq!(files.len(), 1, "printed: {files:?}");
    assert_efax_pages("printed", &tiff_pages(&files[0]), &pages[..1]);
    // Why it is partial is on record for the operator.
    site.assert_noted(&doc, "ended");

    // The line takes the next call: a whole fax this time. (iaxmodem
    // refuses calls for 5 s after efax's ATZ; efax retries on BUSY.)
    std::thread::sleep(Duration::from_secs(6));
    let sent = efax_send(&line, &raw[2..]);
    assert!(
        sent.status.success(),
        "efax send after the cut call: {}\n{}\nappliance:\n{}",
        sent.status,
        String::from_utf8_lossy(&sent.stderr),
        log_text()
    );
    wait_for(
        "the second call's document",
        Duration::from_secs(60),
        || {
            site.inbox()
                .iter()
                .any(|d| d["from"] == "pstn" && d["state"] == "complete" && d["pages"] == 1)
        },
    );
}

/// The appliance is stopped (SIGTERM) while efax is sending it the second
/// page of three: it hangs up and exits within its shutdown deadline,
/// keeping the page it confirmed. Started again, it records the call as
/// cut by the shutdown and prints that page: nothing confirmed is lost.
#[test]
fn stopping_the_appliance_mid_call_hangs_up_and_keeps_the_confirmed_page() {
    let line = Line::start();
    let pages = [page(11, 420), page(12, 900), page(13, 900)];
    let raw = efax_pages(&line, &pages);
    let mut site = Appliance::start(&line, 1, true);
    let mut efax = efax_spawn(&line, &raw, "efax-stop.log");
    site.wait_for_page(1);
    // Into the second page.
    std::thread::sleep(Duration::from_secs(3));
    let status = site.stop(Duration::from_secs(30));
    assert!(
        status.success(),
        "the appliance: {status}\n{}",
        site.log_text()
    );
    // efax hears the hangup and gives up.
    let efax_status = wait_exit(&mut efax.0, "efax", Duration::from_secs(60));
    assert!(!efax_status.success(), "efax says the cut call succeeded");

    site.restart();
    let doc = site.printed_from_pstn();
    assert_eq!(doc["state"], "partial", "{doc}");
    assert_eq!(doc["pages"], 1, "{doc}");
    let files = site.printed_files();
    assert_eq!(files.len(), 1, "printed: {files:?}");
    assert_efax_pages("printed", &tiff_pages(&files[0]), &pages[..1]);
    site.assert_noted(&doc, "shutdown");
}

/// An inbox that holds documents (`print = false`) and is full
/// (`max_held = 1`) leaves the next call ringing, unanswered, and says so
/// in the history. Released while that call still rings, the held
/// document prints, and the next ring is answered: the caller's fax
/// arrives whole. (A caller that gives up first calls again later.)
#[test]
fn a_full_inbox_leaves_a_call_ringing_until_a_document_is_released() {
    let line = Line::start();
    let pages = [page(14, 300), page(15, 320)];
    let raw = efax_pages(&line, &pages);
    let site = Appliance::start_with(&line, 1, true, "[inbox]\nprint = false\nmax_held = 1\n");
    let sent = efax_send(&line, &raw[..1]);
    assert!(
        sent.status.success(),
        "efax send: {}\n{}\nappliance:\n{}",
        sent.status,
        String::from_utf8_lossy(&sent.stderr),
        site.log_text()
    );
    let held = |d: &serde_json::Value| d["from"] == "pstn" && d["print"] == "held";
    wait_for("the first fax held", Duration::from_secs(30), || {
        site.inbox().iter().any(held)
    });
    let first = site.inbox().into_iter().find(held).unwrap();
    assert_eq!(first["state"], "complete", "{first}");

    // The inbox is full: the second call rings and is not answered.
    // (efax waits up to 45 s for an answer: iaxmodem's NO ANSWER.)
    std::thread::sleep(Duration::from_secs(6));
    let mut efax = efax_spawn(&line, &raw[1..], "efax-full.log");
    wait_for(
        "the refusal in the history",
        Duration::from_secs(30),
        || {
            site.json(&["history"]).as_array().is_some_and(|h| {
                h.iter().any(|e| {
                    e["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("not answered: the inbox is full"))
                })
            })
        },
    );
    // A few more rings, still unanswered.
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(site.inbox().len(), 1, "{:?}", site.inbox());
    assert_eq!(
        site.log_text().matches("Call answered; receiving.").count(),
        1,
        "the second call was answered while the inbox was full:\n{}",
        site.log_text()
    );

    // Released, the first document prints, and the ringing call is
    // answered: efax delivers the second fax.
    run(Command::new(faxgate())
        .args(["inbox", "--panel", &site.panel, "release"])
        .arg(first["id"].to_string()));
    wait_for(
        "the released document printed",
        Duration::from_secs(20),
        || site.printed_files().len() == 1,
    );
    assert_efax_pages(
        "printed",
        &tiff_pages(&site.printed_files()[0]),
        &pages[..1],
    );
    let status = wait_exit(&mut efax.0, "efax", Duration::from_secs(90));
    let efax_said = std::fs::read_to_string(line.path("efax-full.log")).unwrap_or_default();
    assert!(
        status.success(),
        "efax: {status}\n{efax_said}\nappliance:\n{}",
        site.log_text()
    );
    wait_for("the second fax complete", Duration::from_secs(30), || {
        site.inbox()
            .iter()
            .any(|d| d["id"] != first["id"] && d["state"] == "complete")
    });
    let second = site
        .inbox()
        .into_iter()
        .find(|d| d["id"] != first["id"])
        .unwrap();
    assert_eq!(second["state"], "complete", "{second}");
    assert_eq!(second["print"], "held", "{second}");
    let id = second["id"].as_i64().unwrap();
    assert_efax_pages(
        "stored",
        &tiff_pages(&site.state.join(format!("inbox/{id}/0000.tif"))),
        &pages[1..],
    );
}

#[test]
fn the_appliance_faxes_a_job_to_a_telephone_number() {
    need("efax", "efax");
    let line = Line::start();
    let pages = [page(6, 480), page(7, 360)];
    let doc = pbm_document(&line, "letter.pbm", &pages);
    // The appliance's modem is A and does not answer; efax answers on B.
    let site = Appliance::start(&line, 0, false);
    let (mut efax, efax_log) = efax_answering(&line);
    site.send_to_tel(Line::B_NUMBER, &doc);
    // A telephone number that no modem could dial is refused at once.
    let bad = Command::new(faxgate())
        .args([
            "send",
            "--no-wait",
            "--to",
            "tel:12;H",
            "--panel",
            &site.panel,
        ])
        .arg(&doc)
        .output()
        .unwrap();
    assert!(!bad.status.success(), "a dial string with ';' was taken");
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("is not a telephone number"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let efax_text = || std::fs::read_to_string(&efax_log).unwrap_or_default();
    let mut job = serde_json::Value::Null;
    let until = std::time::Instant::now() + Duration::from_secs(150);
    while std::time::Instant::now() < until {
        let jobs = site.json(&["jobs"]);
        if let Some(j) = jobs.as_array().and_then(|a| a.first())
            && (j["state"] == "done" || j["state"] == "failed")
        {
            job = j.clone();
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(
        job["state"],
        "done",
        "{job}\nappliance:\n{}\nefax:\n{}",
        site.log_text(),
        efax_text()
    );
    assert_eq!(job["delivered"], 2, "{job}");
    let status = wait_exit(&mut efax.0, "efax", Duration::from_secs(60));
    assert!(status.success(), "efax: {status}\n{}", efax_text());
    assert!(
        efax_text().contains("+81 3 0000"),
        "efax did not see the appliance's TSI:\n{}",
        efax_text()
    );
    for (i, want) in pages.iter().enumerate() {
        let got = tiff_pages(&line.path(&format!("rx.{:03}", i + 1)));
        assert_eq!(got.len(), 1, "rx.{:03}", i + 1);
        assert_eq!(got[0].len(), want.len(), "page {}: rows", i + 1);
        let differing = got[0].iter().zip(want).filter(|(a, b)| a != b).count();
        assert_eq!(differing, 0, "page {}: {differing} rows differ", i + 1);
    }
}

/// A modem that is not there does not stop the daemon: the relay side
/// works, the line's actor says why and keeps trying, and a job to a
/// telephone number is put back to retrying with that reason rather
/// than waiting for ever or failing for good.
#[test]
fn a_missing_modem_leaves_the_appliance_running_and_tel_jobs_retrying() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-tty");
    let site = Appliance::on_device(dir.path().join("site"), &missing, true, "");
    wait_for(
        "the appliance saying the modem cannot be set up",
        Duration::from_secs(20),
        || site.log_text().contains("Cannot set up the fax modem"),
    );
    assert!(
        site.log_text().contains("no-such-tty"),
        "the log does not name the device:\n{}",
        site.log_text()
    );
    // The panel answers: the daemon is up.
    let users = site.json(&["users"]);
    assert!(users.is_array(), "users: {users}");
    let pbm = dir.path().join("p.pbm");
    write_pbm(&pbm, &page(1, 100));
    site.send_to_tel("200", &pbm);
    let mut job = serde_json::Value::Null;
    wait_for("the tel: job retrying", Duration::from_secs(30), || {
        job = site
            .json(&["jobs"])
            .as_array()
            .and_then(|a| a.first().cloned())
            .unwrap_or_default();
        job["state"] == "retrying"
    });
    let reason = job["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("fax modem is not working") && reason.contains("no-such-tty"),
        "{job}"
    );
    assert_eq!(job["delivered"], 0, "{job}");
}
