//! Printers on this machine: a CUPS queue (over IPP), a folder of
//! PDF or TIFF-F files, and a raw device file.
//!
//! Their status is mapped onto IPP's: a folder or device that is missing
//! or read-only is `stopped` (`offline-report` / `other-error`), one
//! being written is `processing`. A CUPS queue is an IPP printer at the
//! scheduler ([`CupsPrinter`]).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::ipp::IppPrinter;
use super::{
    Document, DocumentFormat, PrintError, PrintReport, PrinterJob, PrinterState, PrinterStatus,
};

/// Counts jobs in progress; a printer with any is `processing`.
#[derive(Debug, Default, Clone)]
struct Busy(Arc<AtomicUsize>);

/// Decrements the busy count when the job ends, however it ends.
struct BusyGuard(Arc<AtomicUsize>);

impl Busy {
    fn enter(&self) -> BusyGuard {
        self.0.fetch_add(1, Ordering::SeqCst);
        BusyGuard(self.0.clone())
    }

    fn is_busy(&self) -> bool {
        self.0.load(Ordering::SeqCst) > 0
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Status of a path we write to: stopped if missing or read-only.
fn path_status(path: &Path, want_dir: bool, busy: &Busy) -> PrinterStatus {
    match std::fs::metadata(path) {
        Err(e) => PrinterStatus::stopped("offline-report", format!("{}: {e}", path.display())),
        Ok(m) if want_dir && !m.is_dir() => PrinterStatus::stopped(
            "offline-report",
            format!("{} is not a folder", path.display()),
        ),
        Ok(m) if m.permissions().readonly() => {
            PrinterStatus::stopped("other-error", format!("{} is read-only", path.display()))
        }
        Ok(_) if busy.is_busy() => PrinterStatus {
            state: PrinterState::Processing,
            reasons: Vec::new(),
            message: None,
        },
        Ok(_) => PrinterStatus::idle(),
    }
}

fn refuse_if_stopped(printer: &str, status: PrinterStatus) -> Result<(), PrintError> {
    if status.blocks_printing() {
        return Err(PrintError::Stopped {
            printer: printer.to_string(),
            status,
        });
    }
    Ok(())
}

/// A CUPS queue, driven over IPP at the scheduler
/// (`ipp://SERVER/printers/QUEUE`) with the IPP printer's code: its
/// status is the queue's printer-state, and a job is followed until CUPS
/// says it completed, so that a filter failure, an abort, a cancel or a
/// hold is seen, with the same job timeout as an IPP printer.
#[derive(Debug, Clone)]
pub struct CupsPrinter {
    queue: String,
    ipp: IppPrinter,
}

impl CupsPrinter {
    /// The queue `queue` of the CUPS scheduler that CUPS's own tools
    /// would use ([`cups_server`]).
    pub fn new(queue: &str) -> Result<Self, PrintError> {
        let conf: Vec<String> = [Some(PathBuf::from("/etc/cups/client.conf"))]
            .into_iter()
            .chain([std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cups/client.conf"))])
            .flatten()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .collect();
        let conf: Vec<&str> = conf.iter().map(String::as_str).collect();
        let server = cups_server(std::env::var("CUPS_SERVER").ok().as_deref(), &conf);
        let ipp = IppPrinter::new(&format!("ipp://{server}/printers/{queue}"))?
            .named(format!("cups:{queue} at {server}"));
        Ok(CupsPrinter {
            queue: queue.to_string(),
            ipp,
        })
    }

    /// The IPP printer that is the queue.
    pub fn ipp(&self) -> &IppPrinter {
        &self.ipp
    }

    /// Sets how often a job is polled and how long it is watched.
    pub fn with_job_watch(mut self, poll: Duration, timeout: Duration) -> Self {
        self.ipp = self.ipp.with_job_watch(poll, timeout);
        self
    }

    /// Sets the scheduler's inactivity deadlines
    /// ([`IppPrinter::with_deadlines`]).
    // Test-only until the [printer] configuration has a setting for it.
    #[cfg(test)]
    pub fn with_deadlines(mut self, idle: Duration, answer: Duration) -> Self {
        self.ipp = self.ipp.with_deadlines(idle, answer);
        self
    }

    /// The queue's state (disabled is `stopped` with `paused`), or
    /// `stopped` with `offline-report` when the scheduler cannot be asked.
    pub async fn status(&self) -> PrinterStatus {
        self.ipp.status().await
    }

    /// Sends the document (Print-Job, PDF when the queue takes it); the
    /// report names the CUPS request id (`QUEUE-N`).
    pub async fn submit(&self, doc: &Document) -> Result<(PrinterJob, PrintReport), PrintError> {
        let sent = self.ipp.submit(doc).await;
        self.report(sent)
    }

    /// Sends a document tried before, after looking for the job an
    /// earlier try may have made ([`IppPrinter::resubmit`]).
    pub async fn resubmit(&self, doc: &Document) -> Result<(PrinterJob, PrintReport), PrintError> {
        let sent = self.ipp.resubmit(doc).await;
        self.report(sent)
    }

    fn report(
        &self,
        sent: Result<(PrinterJob, PrintReport), PrintError>,
    ) -> Result<(PrinterJob, PrintReport), PrintError> {
        let (job, mut report) = sent?;
        report.destination = format!("cups:{} request {}-{}", self.queue, self.queue, job.job_id);
        Ok((job, report))
    }
}

/// The CUPS scheduler's `host:port`, found as CUPS's own tools find it:
/// `CUPS_SERVER`, else the last `ServerName` in the client.conf files
/// given (`/etc/cups/client.conf`, then `~/.cups/client.conf`), else
/// `localhost`; the port defaults to 631. A domain socket (a path) is
/// reached as `localhost:631` instead, where cupsd listens too by
/// default; a `/version=...` suffix is ignored.
pub fn cups_server(env: Option<&str>, client_conf: &[&str]) -> String {
    let from_conf = client_conf
        .iter()
        .flat_map(|c| c.lines())
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            match words.next() {
                Some(k) if k.eq_ignore_ascii_case("ServerName") => words.next(),
                _ => None,
            }
        })
        .next_back();
    let named = env
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .or(from_conf)
        .unwrap_or("localhost");
    let named = named.split("/version=").next().unwrap_or(named);
    if named.is_empty() || named.starts_with('/') {
        return "localhost:631".into();
    }
    let has_port = named.rsplit_once(':').is_some_and(|(host, port)| {
        !port.is_empty()
            && port.chars().all(|c| c.is_ascii_digit())
            && (!host.contains(':') || host.ends_with(']'))
    });
    if has_port {
        named.to_string()
    } else if named.contains(':') && !named.starts_with('[') {
        format!("[{named}]:631")
    } else {
        format!("{named}:631")
    }
}

/// A folder that receives one file per document, for archives and tests.
#[derive(Debug, Clone)]
pub struct FolderPrinter {
    dir: PathBuf,
    format: DocumentFormat,
    busy: Busy,
}

impl FolderPrinter {
    /// Files in `format` go to `dir`.
    pub fn new(dir: impl Into<PathBuf>, format: DocumentFormat) -> Self {
        FolderPrinter {
            dir: dir.into(),
            format,
            busy: Busy::default(),
        }
    }

    fn name(&self) -> String {
        format!("dir:{}", self.dir.display())
    }

    /// Stopped if the folder is missing or read-only.
    pub fn status(&self) -> PrinterStatus {
        path_status(&self.dir, true, &self.busy)
    }

    /// Writes the document as a new file: a temporary file in the folder
    /// first, renamed (never over an existing file) when complete.
    pub async fn print(&self, doc: &Document) -> Result<PrintReport, PrintError> {
        refuse_if_stopped(&self.name(), self.status())?;
        let _busy = self.busy.enter();
        // Rendered straight into a temporary file in the folder, then
        // renamed into place.
        let (tmp, len) = self.format.spool(doc, Some(&self.dir))?;
        let (dir, stem, ext) = (&self.dir, file_stem(&doc.title), self.format.extension());
        let path = super::blocking(|| persist_new_file(tmp, dir, &stem, ext))?;
        tracing::info!(path = %path.display(), bytes = len, "Document written to the folder.");
        Ok(PrintReport {
            format: self.format.mime(),
            bytes: len,
            destination: path.display().to_string(),
        })
    }
}

/// A file name from a job title: letters, digits, `-` and `_` only.
fn file_stem(title: &str) -> String {
    let s: String = title
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(60)
        .collect();
    if s.is_empty() { "fax".into() } else { s }
}

/// Renames a complete (synced) temporary file in `dir` to a fresh
/// `STEM-SECONDS-N.EXT` there, never over an existing file, and syncs
/// `dir`.
fn persist_new_file(
    mut tmp: tempfile::NamedTempFile,
    dir: &Path,
    stem: &str,
    ext: &str,
) -> Result<PathBuf, PrintError> {
    let io = |what: String| move |e: std::io::Error| PrintError::Io { what, source: e };
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut n = 1u32;
    loop {
        let path = dir.join(format!("{stem}-{secs}-{n}.{ext}"));
        match tmp.persist_noclobber(&path) {
            Ok(_) => {
                // Only a synced folder keeps the new name after a crash;
                // the job counts as printed once this returns.
                super::sync_dir(dir)?;
                return Ok(path);
            }
            Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists && n < 10_000 => {
                tmp = e.file;
                n += 1;
            }
            Err(e) => return Err(io(format!("renaming to {}", path.display()))(e.error)),
        }
    }
}

/// A device file (a USB printer's `/dev/usb/lp0`, a parallel port) that
/// takes a printer language raw: PDF or PWG raster.
///
/// A printer that stops taking data (out of paper, switched off with
/// its buffer full) blocks a plain write for ever, so the document is
/// written on a thread of its own with non-blocking writes and a
/// progress watchdog: nothing taken for the stall time ends the attempt
/// with [`PrintError::DeviceStuck`], and the print actor, and shutdown,
/// never wait longer than that. After a stall the device counts as
/// stopped until it takes data again, so that a retry does not pile
/// another copy behind the one it holds.
#[derive(Debug, Clone)]
pub struct DevicePrinter {
    path: PathBuf,
    format: DocumentFormat,
    busy: Busy,
    stall: Duration,
    /// Why the last write stalled, until the device takes data again.
    stalled: Arc<Mutex<Option<String>>>,
}

/// How long a device may take no data before a write is given up.
const DEVICE_STALL: Duration = Duration::from_secs(60);

impl DevicePrinter {
    /// Documents in `format` are written to `path`.
    pub fn new(path: impl Into<PathBuf>, format: DocumentFormat) -> Self {
        DevicePrinter {
            path: path.into(),
            format,
            busy: Busy::default(),
            stall: DEVICE_STALL,
            stalled: Arc::new(Mutex::new(None)),
        }
    }

    /// Sets how long the device may take no data before a write is given
    /// up (60 s by default).
    // Test-only until the [printer] configuration has a setting for it.
    #[cfg(test)]
    pub fn with_stall_timeout(mut self, stall: Duration) -> Self {
        self.stall = stall;
        self
    }

    fn name(&self) -> String {
        format!("device:{}", self.path.display())
    }

    /// Stopped if the device is missing or read-only, or if the last
    /// write stalled and it still takes no data.
    pub fn status(&self) -> PrinterStatus {
        let status = path_status(&self.path, false, &self.busy);
        if status.state == PrinterState::Stopped || self.busy.is_busy() {
            return status;
        }
        let mut stalled = self.stalled.lock().unwrap_or_else(|e| e.into_inner());
        let Some(reason) = stalled.clone() else {
            return status;
        };
        if writable_now(&self.path) {
            *stalled = None;
            return status;
        }
        PrinterStatus::stopped("other-error", format!("not taking data: {reason}"))
    }

    /// Writes the document to the device (appending, never creating it),
    /// rendered a page at a time on a writer thread; returns once it is
    /// written, or with [`PrintError::DeviceStuck`] once the device has
    /// taken nothing for the stall time. Dropping the future stops the
    /// writer within a quarter of a second.
    pub async fn print(&self, doc: &Document) -> Result<PrintReport, PrintError> {
        refuse_if_stopped(&self.name(), self.status())?;
        let _busy = self.busy.enter();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let cancel = CancelOnDrop(Arc::new(AtomicBool::new(false)));
        let job = DeviceWrite {
            path: self.path.clone(),
            name: self.name(),
            format: self.format.clone(),
            doc: doc.clone(),
            stall: self.stall,
            cancel: cancel.0.clone(),
        };
        std::thread::Builder::new()
            .name("faxgate-device".into())
            .spawn(move || {
                let _ = tx.send(job.run());
            })
            .map_err(|e| PrintError::Io {
                what: format!("starting a writer for {}", self.path.display()),
                source: e,
            })?;
        let written = rx.await.map_err(|_| PrintError::Io {
            what: format!("writing to {}", self.path.display()),
            source: std::io::Error::other("the writer thread ended without a result"),
        })?;
        let bytes = match written {
            Err(e @ PrintError::DeviceStuck { .. }) => {
                if let PrintError::DeviceStuck { reason, .. } = &e {
                    *self.stalled.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.clone());
                }
                tracing::warn!(device = %self.path.display(), error = %e, "The device stopped taking the document.");
                return Err(e);
            }
            other => other?,
        };
        Ok(PrintReport {
            format: self.format.mime(),
            bytes,
            destination: self.path.display().to_string(),
        })
    }
}

/// Tells a writer thread to stop when the print future goes away.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// One document for a device, written on its own thread.
struct DeviceWrite {
    path: PathBuf,
    name: String,
    format: DocumentFormat,
    doc: Document,
    stall: Duration,
    cancel: Arc<AtomicBool>,
}

impl DeviceWrite {
    fn run(self) -> Result<u64, PrintError> {
        let stuck = |reason: String| PrintError::DeviceStuck {
            device: self.name.clone(),
            reason,
        };
        let dev = open_nonblocking(&self.path).map_err(|e| {
            if e.raw_os_error() == Some(libc::ENXIO) {
                // A FIFO nobody reads, a device with no printer attached.
                stuck("nothing is reading it (no printer attached?)".into())
            } else {
                PrintError::Io {
                    what: format!("opening {}", self.path.display()),
                    source: e,
                }
            }
        })?;
        let mut paced = Paced {
            file: dev,
            stall: self.stall,
            cancel: self.cancel.clone(),
            blocked_since: None,
            written: 0,
            stalled: false,
        };
        let mut w = std::io::BufWriter::with_capacity(64 * 1024, &mut paced);
        let result = self.format.write_to(&self.doc, &mut w).and_then(|n| {
            w.flush().map(|()| n).map_err(|e| PrintError::Io {
                what: format!("writing to {}", self.path.display()),
                source: e,
            })
        });
        // Whatever is left in the buffer is not written again on drop.
        let _ = w.into_parts();
        if paced.stalled {
            return Err(stuck(format!(
                "it took nothing for {:?}, after {} bytes of the document (the printer may print those)",
                self.stall, paced.written
            )));
        }
        if self.cancel.load(Ordering::Relaxed) {
            return Err(PrintError::Io {
                what: format!("writing to {}", self.path.display()),
                source: std::io::Error::other("stopped before the document was written"),
            });
        }
        result
    }
}

/// Opens a device for appending without blocking (a FIFO without a
/// reader fails with ENXIO instead of waiting for one).
fn open_nonblocking(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .append(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
}

/// Whether a device would take a write now.
fn writable_now(path: &Path) -> bool {
    open_nonblocking(path).is_ok_and(|f| wait_writable(&f, Duration::ZERO))
}

/// Waits up to `timeout` for a file to take a write; true if it will.
fn wait_writable(file: &std::fs::File, timeout: Duration) -> bool {
    use std::os::fd::AsRawFd as _;
    let mut fd = libc::pollfd {
        fd: file.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `fd` is one valid pollfd, live for the call, and nfds is 1;
    // its descriptor belongs to `file`, open for the call.
    let r = unsafe { libc::poll(&mut fd, 1, ms) };
    r > 0 && fd.revents & libc::POLLOUT != 0
}

/// A non-blocking device file written as if blocking, but never for
/// longer than the stall time without progress, and not after cancel.
struct Paced {
    file: std::fs::File,
    stall: Duration,
    cancel: Arc<AtomicBool>,
    /// Since when the device has refused bytes we had for it.
    blocked_since: Option<Instant>,
    written: u64,
    stalled: bool,
}

impl std::io::Write for Paced {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        loop {
            if self.stalled {
                return Err(std::io::ErrorKind::TimedOut.into());
            }
            if self.cancel.load(Ordering::Relaxed) {
                return Err(std::io::Error::other("cancelled"));
            }
            match self.file.write(buf) {
                Ok(n) => {
                    self.written += n as u64;
                    self.blocked_since = None;
                    return Ok(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    // Time spent rendering between writes does not count.
                    let idle = self
                        .blocked_since
                        .get_or_insert_with(Instant::now)
                        .elapsed();
                    if idle >= self.stall {
                        self.stalled = true;
                        continue;
                    }
                    let wait = (self.stall - idle).min(Duration::from_millis(250));
                    wait_writable(&self.file, wait);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::print::FaxPage;
    use faxgate_fax::{Bitmap, Coding};

    fn doc() -> Document {
        let mut b = Bitmap::new(1728, 20);
        b.set_pixel(5, 5, true);
        Document {
            title: "Fax from +81 3/1234".into(),
            pages: vec![FaxPage::from_bitmap(&b, (204, 98), Coding::Mh).unwrap()],
        }
    }

    #[test]
    fn the_cups_server_is_found_as_cups_tools_find_it() {
        let conf = "# comment\nServerName print.example:8631\n";
        for (env, conf, want) in [
            (None, &[][..], "localhost:631"),
            (Some("127.0.0.1:40123"), &[conf][..], "127.0.0.1:40123"),
            (Some(""), &[conf][..], "print.example:8631"),
            (None, &["ServerName a\n", "servername b\n"][..], "b:631"),
            (Some("/run/cups/cups.sock"), &[][..], "localhost:631"),
            (Some("cups.local/version=1.1"), &[][..], "cups.local:631"),
            (Some("[::1]:631"), &[][..], "[::1]:631"),
            (Some("::1"), &[][..], "[::1]:631"),
        ] {
            assert_eq!(cups_server(env, conf), want, "{env:?} {conf:?}");
        }
    }

    #[tokio::test]
    async fn folder_writes_unique_files_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let p = FolderPrinter::new(dir.path(), DocumentFormat::Pdf);
        assert_eq!(p.status(), PrinterStatus::idle());
        let a = p.print(&doc()).await.unwrap();
        let b = p.print(&doc()).await.unwrap();
        assert_ne!(a.destination, b.destination);
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "no temporary files left: {names:?}");
        assert!(
            names
                .iter()
                .all(|n| n.starts_with("Fax_from__81_3_1234-") && n.ends_with(".pdf"))
        );
        assert!(std::fs::read(&a.destination).unwrap().starts_with(b"%PDF-"));
    }

    #[tokio::test]
    async fn missing_folder_or_device_is_stopped_and_keeps_the_job() {
        let p = FolderPrinter::new("/nonexistent/faxgate", DocumentFormat::Pdf);
        assert_eq!(p.status().state, PrinterState::Stopped);
        let e = p.print(&doc()).await.unwrap_err();
        assert!(
            matches!(e, PrintError::Stopped { .. }) && e.keeps_job(),
            "{e}"
        );
        let d = DevicePrinter::new("/nonexistent/lp0", DocumentFormat::Pdf);
        assert!(d.status().has("offline"));
        assert!(d.print(&doc()).await.unwrap_err().keeps_job());
    }

    #[tokio::test]
    async fn device_gets_the_bytes_appended() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lp0");
        std::fs::write(&path, b"").unwrap();
        // PWG raster is byte-for-byte reproducible (a PDF has a fresh ID).
        let format = DocumentFormat::PwgRaster(crate::print::PwgOptions {
            kind: crate::print::PwgType::Black1,
            dpi: None,
            media: None,
        });
        let d = DevicePrinter::new(&path, format.clone());
        let r1 = d.print(&doc()).await.unwrap();
        let r2 = d.print(&doc()).await.unwrap();
        let written = std::fs::read(&path).unwrap();
        assert_eq!(written.len() as u64, r1.bytes + r2.bytes);
        assert_eq!(written, format.render(&doc()).unwrap().repeat(2));
    }

    /// A named pipe at `dir/name`, as a device file.
    pub(crate) fn fifo(dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        let out = std::process::Command::new("mkfifo")
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "mkfifo: {out:?}");
        path
    }

    /// Opens the reading end of a pipe without reading it (a printer
    /// that stopped taking data), non-blocking so that it does not wait
    /// for a writer.
    pub(crate) fn idle_reader(path: &Path) -> std::fs::File {
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .unwrap()
    }

    /// Reads a non-blocking pipe until it has been empty for a while;
    /// returns what it read.
    pub(crate) fn drain(mut reader: &std::fs::File) -> Vec<u8> {
        use std::io::Read as _;
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        let mut quiet = 0;
        while quiet < 20 {
            match reader.read(&mut buf) {
                Ok(n) if n > 0 => {
                    got.extend_from_slice(&buf[..n]);
                    quiet = 0;
                }
                _ => {
                    quiet += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
        got
    }

    /// A document far larger than a pipe's 64 KiB: a page of noise as
    /// PWG raster (every line literal).
    fn big_doc() -> Document {
        let mut b = Bitmap::new(1728, 600);
        let mut x: u32 = 0x1234_5678;
        for y in 0..600 {
            for c in 0..1728 {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                if x & 1 == 1 {
                    b.set_pixel(c, y, true);
                }
            }
        }
        Document {
            title: "noise".into(),
            pages: vec![FaxPage::from_bitmap(&b, (204, 196), Coding::Mmr).unwrap()],
        }
    }

    /// A device nothing reads (a pipe without a reader: no printer
    /// attached) fails at once, and one that stops taking data (a pipe
    /// whose reader stopped reading: a printer out of paper) fails once
    /// it has taken nothing for the stall time, saying how much it took,
    /// instead of blocking the writer for ever; the error keeps the job.
    /// Until it takes data again the device is stopped, so that a retry
    /// does not stack another copy behind the one it holds; once read,
    /// it prints.
    #[tokio::test]
    async fn a_device_that_takes_no_data_fails_within_the_stall_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = fifo(dir.path(), "lp0");
        let format = DocumentFormat::PwgRaster(crate::print::PwgOptions {
            kind: crate::print::PwgType::Black1,
            dpi: None,
            media: None,
        });
        let stall = Duration::from_millis(500);
        let d = DevicePrinter::new(&path, format.clone()).with_stall_timeout(stall);
        let start = Instant::now();
        let e = d.print(&big_doc()).await.unwrap_err();
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
        assert!(
            matches!(e, PrintError::DeviceStuck { .. }) && e.keeps_job(),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .contains("is not taking data: nothing is reading it"),
            "{e}"
        );

        let reader = idle_reader(&path);
        let start = Instant::now();
        let e = d.print(&big_doc()).await.unwrap_err();
        let took = start.elapsed();
        assert!(
            took >= stall && took < stall + Duration::from_secs(1),
            "{took:?}"
        );
        assert!(
            matches!(e, PrintError::DeviceStuck { .. }) && e.keeps_job(),
            "{e:?}"
        );
        let text = e.to_string();
        assert!(
            text.contains("is not taking data: it took nothing for 500ms, after "),
            "{text}"
        );
        let status = d.status();
        assert!(
            status.blocks_printing() && status.to_string().contains("not taking data"),
            "{status}"
        );
        assert!(
            d.print(&big_doc())
                .await
                .unwrap_err()
                .to_string()
                .contains("stopped")
        );

        // The printer takes data again: the device is idle and prints.
        // What the pipe held is what the error said was written.
        let held = drain(&reader);
        assert!(
            text.contains(&format!("after {} bytes", held.len())),
            "{text}"
        );
        assert!(held.len() > 60_000, "{}", held.len());
        assert_eq!(d.status(), PrinterStatus::idle());
        let stop = Arc::new(AtomicBool::new(false));
        let reading = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    got.extend(drain(&reader));
                }
                got.extend(drain(&reader));
                got
            })
        };
        let r = d.print(&big_doc()).await.unwrap();
        stop.store(true, Ordering::SeqCst);
        let got = reading.join().unwrap();
        assert_eq!(got.len() as u64, r.bytes);
        assert_eq!(got, format.render(&big_doc()).unwrap());
    }
}
