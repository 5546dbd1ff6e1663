//! Printers on this machine: a CUPS queue (over IPP), a folder of
//! PDF or TIFF-F files, and a raw device file.
//!
//! Their status is mapped onto IPP's: a folder or device that is missing
//! or read-only is `stopped` (`offline-report` / `other-error`), one
//! being written is `processing`. A CUPS queue is an IPP printer at the
//! scheduler ([`CupsPrinter`]).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

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

    /// The queue's state (disabled is `stopped` with `paused`), or
    /// `stopped` with `offline-report` when the scheduler cannot be asked.
    pub async fn status(&self) -> PrinterStatus {
        self.ipp.status().await
    }

    /// Sends the document (Print-Job, PDF when the queue takes it); the
    /// report names the CUPS request id (`QUEUE-N`).
    pub async fn submit(&self, doc: &Document) -> Result<(PrinterJob, PrintReport), PrintError> {
        let (job, mut report) = self.ipp.submit(doc).await?;
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
#[derive(Debug, Clone)]
pub struct DevicePrinter {
    path: PathBuf,
    format: DocumentFormat,
    busy: Busy,
}

impl DevicePrinter {
    /// Documents in `format` are written to `path`.
    pub fn new(path: impl Into<PathBuf>, format: DocumentFormat) -> Self {
        DevicePrinter {
            path: path.into(),
            format,
            busy: Busy::default(),
        }
    }

    fn name(&self) -> String {
        format!("device:{}", self.path.display())
    }

    /// Stopped if the device is missing or read-only.
    pub fn status(&self) -> PrinterStatus {
        path_status(&self.path, false, &self.busy)
    }

    /// Writes the document to the device (appending, never creating it).
    pub async fn print(&self, doc: &Document) -> Result<PrintReport, PrintError> {
        refuse_if_stopped(&self.name(), self.status())?;
        let _busy = self.busy.enter();
        // Rendered straight into the device, a page at a time.
        let bytes = super::blocking(|| {
            let dev = std::fs::OpenOptions::new()
                .append(true)
                .open(&self.path)
                .map_err(|e| PrintError::Io {
                    what: format!("opening {}", self.path.display()),
                    source: e,
                })?;
            let mut w = std::io::BufWriter::with_capacity(64 * 1024, dev);
            let n = self.format.write_to(doc, &mut w)?;
            w.flush().map_err(|e| PrintError::Io {
                what: format!("writing to {}", self.path.display()),
                source: e,
            })?;
            Ok::<_, PrintError>(n)
        })?;
        Ok(PrintReport {
            format: self.format.mime(),
            bytes,
            destination: self.path.display().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
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
}
