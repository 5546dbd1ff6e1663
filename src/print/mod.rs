//! The output stage: fax pages to paper (issue #3).
//!
//! Pages arrive coded ([`FaxPage`]: CCITT data plus resolution) and leave
//! as a document a printer takes: PDF with the CCITT data passed straight
//! through, PWG raster, or TIFF-F for archive folders.
//!
//! # Layout
//!
//! - [`page`]: [`FaxPage`], loading TIFF-F and bitmaps, resampling.
//! - [`media`]: paper sizes, and which of a printer's media suits a
//!   fax page.
//! - [`pdf`]: pages to PDF, written as it goes (/CCITTFaxDecode image
//!   XObjects; pdf-writer for the objects).
//! - [`pwg`]: pages to PWG raster (PWG 5102.4), each page rendered
//!   onto its paper, and a parser for tests.
//! - [`conn`]: one HTTP exchange with a printer, watched by inactivity
//!   deadlines rather than a total one.
//! - [`ipp`]: an IPP printer: Get-Printer-Attributes (state, formats,
//!   media), Print-Job with the chosen media, then Get-Job-Attributes
//!   until the job ends.
//! - [`local`]: a CUPS queue (over IPP), a folder, a device file.
//! - This file: [`Printer`] (built from a URI), [`PrinterStatus`],
//!   [`DocumentFormat`] and [`PrintError`].
//!
//! Rendering is pure; only the printers do I/O.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod conn;
pub mod ipp;
pub mod local;
pub mod media;
pub mod page;
pub mod pdf;
pub mod pwg;

use std::fmt;
use std::io::Write;

use faxgate_fax::tiff::{EncodedPage, TiffWriter, TiffWriterOptions};
use faxgate_fax::{Coding, FaxError};

pub use media::Media;
pub use page::{FaxPage, PageCoding};
pub use pwg::{PwgOptions, PwgType};

/// A document to print: its pages and a title for the job.
#[derive(Clone, Debug)]
pub struct Document {
    /// Job name shown by the printer.
    pub title: String,
    /// The pages, in order.
    pub pages: Vec<FaxPage>,
}

impl Document {
    /// The document as it goes on paper: a page longer than its paper is
    /// cut into sheets ([`FaxPage::into_sheets`]). Borrowed unchanged when
    /// no page needs it.
    pub fn on_paper(&self) -> Result<std::borrow::Cow<'_, Document>, FaxError> {
        if !self.pages.iter().any(FaxPage::longer_than_paper) {
            return Ok(std::borrow::Cow::Borrowed(self));
        }
        let mut pages = Vec::with_capacity(self.pages.len());
        for p in &self.pages {
            pages.extend(p.clone().into_sheets()?);
        }
        Ok(std::borrow::Cow::Owned(Document {
            title: self.title.clone(),
            pages,
        }))
    }
}

/// What bytes a printer is sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DocumentFormat {
    /// `application/pdf`.
    Pdf,
    /// `image/pwg-raster`.
    PwgRaster(PwgOptions),
    /// `image/tiff` as TIFF-F, in the given coding (folders only).
    Tiff(Coding),
}

impl DocumentFormat {
    /// The MIME type.
    pub fn mime(&self) -> &'static str {
        match self {
            DocumentFormat::Pdf => "application/pdf",
            DocumentFormat::PwgRaster(_) => "image/pwg-raster",
            DocumentFormat::Tiff(_) => "image/tiff",
        }
    }

    /// The usual file name extension.
    pub fn extension(&self) -> &'static str {
        match self {
            DocumentFormat::Pdf => "pdf",
            DocumentFormat::PwgRaster(_) => "pwg",
            DocumentFormat::Tiff(_) => "tif",
        }
    }

    /// Renders a document in this format.
    pub fn render(&self, doc: &Document) -> Result<Vec<u8>, FaxError> {
        match self {
            DocumentFormat::Pdf => pdf::render_pdf(&doc.pages, &doc.title),
            DocumentFormat::PwgRaster(o) => pwg::render_pwg(&doc.pages, o),
            DocumentFormat::Tiff(coding) => render_tiff(&doc.pages, *coding),
        }
    }
}

impl DocumentFormat {
    /// Writes a document in this format to `out` as it is rendered, a
    /// page at a time, so that no whole rendered copy is ever held;
    /// returns the bytes written. The same bytes as [`Self::render`].
    pub fn write_to<W: Write>(&self, doc: &Document, out: W) -> Result<u64, PrintError> {
        let mut out = out;
        match self {
            DocumentFormat::Pdf => {
                pdf::write_pdf(&doc.pages, &doc.title, &mut out).map_err(write_error)
            }
            DocumentFormat::PwgRaster(o) => write_chunks(pwg::pwg_chunks(&doc.pages, o), &mut out),
            DocumentFormat::Tiff(coding) => {
                write_chunks(tiff_chunks(&doc.pages, *coding), &mut out)
            }
        }
    }

    /// Renders a document into a new temporary file (in `dir`, or the
    /// system's temporary folder), flushed and synced; returns it with
    /// its length. The file is deleted when dropped, unless persisted.
    pub fn spool(
        &self,
        doc: &Document,
        dir: Option<&std::path::Path>,
    ) -> Result<(tempfile::NamedTempFile, u64), PrintError> {
        let where_ = dir.map_or_else(std::env::temp_dir, std::path::Path::to_path_buf);
        let suffix = format!(".{}.part", self.extension());
        let tmp = tempfile::Builder::new()
            .prefix(".faxgate-")
            .suffix(&suffix)
            .tempfile_in(&where_)
            .map_err(|e| PrintError::Io {
                what: format!("creating a file in {}", where_.display()),
                source: e,
            })?;
        blocking(|| {
            let mut w = std::io::BufWriter::with_capacity(64 * 1024, tmp.as_file());
            let n = self.write_to(doc, &mut w)?;
            let io = |e| PrintError::Io {
                what: format!("writing {}", tmp.path().display()),
                source: e,
            };
            w.flush().map_err(io)?;
            drop(w);
            tmp.as_file().sync_all().map_err(io)?;
            Ok((tmp, n))
        })
    }
}

/// Syncs a folder, so that a rename into it survives a crash (the file's
/// own fsync does not cover its name).
pub(crate) fn sync_dir(dir: &std::path::Path) -> Result<(), PrintError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| PrintError::Io {
            what: format!("syncing the folder {}", dir.display()),
            source: e,
        })
}

/// Runs blocking file work from async code: on a multi-threaded runtime
/// the worker hands its other tasks on first; elsewhere it just runs.
pub(crate) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn write_error(e: std::io::Error) -> PrintError {
    PrintError::Io {
        what: "writing the rendered document".into(),
        source: e,
    }
}

/// Writes a document's pieces as they are made.
fn write_chunks<W: Write>(
    chunks: impl Iterator<Item = Result<Vec<u8>, FaxError>>,
    out: &mut W,
) -> Result<u64, PrintError> {
    let mut n = 0u64;
    for chunk in chunks {
        let chunk = chunk?;
        out.write_all(&chunk).map_err(write_error)?;
        n += chunk.len() as u64;
    }
    out.flush().map_err(write_error)?;
    Ok(n)
}

/// Pages as a TIFF-F file. Pages already in `coding` keep their bytes;
/// pages at a resolution TIFF-F does not have are refused.
pub fn render_tiff(pages: &[FaxPage], coding: Coding) -> Result<Vec<u8>, FaxError> {
    let mut out = Vec::new();
    for chunk in tiff_chunks(pages, coding) {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

/// A TIFF-F file in pieces, one per page and then the end, each made only
/// when it is asked for.
fn tiff_chunks(
    pages: &[FaxPage],
    coding: Coding,
) -> impl Iterator<Item = Result<Vec<u8>, FaxError>> + '_ {
    let mut writer = Some(TiffWriter::new(TiffWriterOptions {
        software: Some(format!("faxgate {}", env!("CARGO_PKG_VERSION"))),
        date_time: None,
        total_pages: u16::try_from(pages.len()).ok(),
    }));
    let mut pages = pages.iter().enumerate();
    // After an error, or after the end, the writer is gone: nothing more.
    std::iter::from_fn(move || {
        let mut w = match writer.take()? {
            Ok(w) => w,
            Err(e) => return Some(Err(e)),
        };
        match pages.next() {
            Some((i, p)) => {
                let r = tiff_page(&mut w, i, p, coding);
                if r.is_ok() {
                    writer = Some(Ok(w));
                }
                Some(r)
            }
            None => Some(w.finish()),
        }
    })
}

/// One page's bytes from the TIFF-F writer.
fn tiff_page(
    w: &mut TiffWriter,
    i: usize,
    p: &FaxPage,
    coding: Coding,
) -> Result<Vec<u8>, FaxError> {
    let resolution = p.resolution().ok_or_else(|| FaxError::Geometry {
        reason: format!(
            "page {} is {}x{} dpi, which is no TIFF-F resolution",
            i + 1,
            p.dpi().0,
            p.dpi().1
        ),
    })?;
    let same = match (p.coding(), coding) {
        (PageCoding::Mh { .. }, Coding::Mh) | (PageCoding::Mmr, Coding::Mmr) => true,
        (PageCoding::Mr { .. }, Coding::Mr { k }) => k == 0,
        _ => false,
    };
    let page = if same {
        let fill = matches!(
            p.coding(),
            PageCoding::Mh { fill: true } | PageCoding::Mr { fill: true, .. }
        );
        EncodedPage {
            width: p.width(),
            height: p.height(),
            coding: p.coding().coding(),
            fill_bits: fill,
            rle: false,
            resolution,
            data: p.data().to_vec(),
            damage: None,
        }
    } else {
        EncodedPage::from_bitmap(&p.to_bitmap()?, coding, resolution)?
    };
    w.add_page(page)
}

/// Whether a printer can take work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrinterState {
    /// Ready for a job (IPP printer-state 3).
    Idle,
    /// Printing (IPP printer-state 4).
    Processing,
    /// Cannot print until someone acts (IPP printer-state 5).
    Stopped,
}

impl fmt::Display for PrinterState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PrinterState::Idle => "idle",
            PrinterState::Processing => "processing",
            PrinterState::Stopped => "stopped",
        })
    }
}

/// A printer's status as the rest of the daemon reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrinterStatus {
    /// Idle, processing or stopped.
    pub state: PrinterState,
    /// IPP printer-state-reasons keywords (`media-empty-error`,
    /// `media-jam`, `offline-report`...), without `none`.
    pub reasons: Vec<String>,
    /// A human-readable message, if the printer gave one.
    pub message: Option<String>,
}

impl PrinterStatus {
    /// Idle with no reasons.
    pub fn idle() -> Self {
        PrinterStatus {
            state: PrinterState::Idle,
            reasons: Vec::new(),
            message: None,
        }
    }

    /// Builds a status from IPP's printer-state and reasons. A reason
    /// with the `-error` suffix means the printer is stopped (RFC 8011
    /// 5.4.12: a printer that reports an error MUST be stopped), whatever
    /// its printer-state says; `-report` and `-warning` reasons are kept
    /// for display and leave the state as the printer gave it.
    pub fn from_ipp(state: PrinterState, reasons: Vec<String>, message: Option<String>) -> Self {
        let state = if reasons.iter().any(|r| reason_stops_printing(r)) {
            PrinterState::Stopped
        } else {
            state
        };
        PrinterStatus {
            state,
            reasons,
            message,
        }
    }

    /// Stopped for one reason.
    pub fn stopped(reason: &str, message: impl Into<String>) -> Self {
        PrinterStatus {
            state: PrinterState::Stopped,
            reasons: vec![reason.to_string()],
            message: Some(message.into()),
        }
    }

    /// Whether a reason keyword is present, with or without its
    /// `-error`/`-warning`/`-report` suffix (`has("media-empty")`).
    pub fn has(&self, reason: &str) -> bool {
        self.reasons.iter().any(|r| {
            r == reason
                || r.strip_prefix(reason)
                    .is_some_and(|rest| matches!(rest, "-error" | "-warning" | "-report"))
        })
    }

    /// Whether a job sent now would be refused or stall: the printer is
    /// stopped (printer-state 5, whatever its reasons), or reports an
    /// `-error` reason ([`reason_stops_printing`]). `-report` and
    /// `-warning` reasons (`media-empty-report` for an empty optional
    /// tray, `toner-low-warning`) never hold the queue.
    pub fn blocks_printing(&self) -> bool {
        self.state == PrinterState::Stopped || self.reasons.iter().any(|r| reason_stops_printing(r))
    }
}

/// Whether one printer-state-reasons keyword by itself stops printing:
/// only an `-error` reason does. RFC 8011 (5.4.12) makes `-report`
/// informational and `-warning` a precursor that "MUST contain nothing
/// that prevents a job from completing"; a multi-tray printer reports an
/// empty optional tray as `media-empty-report` (ippeveprinter reports
/// every condition as `-report` while idle) and still prints from its
/// other trays. An unsuffixed reason (`paused`, `connecting-to-device`,
/// `moving-to-paused`) is a sub-state rather than a severity: it stops
/// printing only together with printer-state stopped, which
/// [`PrinterStatus::blocks_printing`] checks on its own.
pub fn reason_stops_printing(reason: &str) -> bool {
    reason.ends_with("-error")
}

impl fmt::Display for PrinterStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.state)?;
        if !self.reasons.is_empty() {
            write!(f, " ({})", self.reasons.join(", "))?;
        }
        if let Some(m) = &self.message {
            write!(f, ": {m}")?;
        }
        Ok(())
    }
}

/// What a successful print did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrintReport {
    /// The MIME type sent.
    pub format: &'static str,
    /// Bytes sent or written.
    pub bytes: u64,
    /// Where it went: the IPP job URI or id, the `lp` request id, the
    /// file written.
    pub destination: String,
}

/// A job a printer accepted: where to follow it until it ends. The print
/// actor keeps it with the document, so that a job that is slow to finish
/// is followed again after a retry or a restart rather than sent again.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PrinterJob {
    /// The `ipp://` URI of the printer (or CUPS queue) that has the job.
    pub printer: String,
    /// The printer's job-id.
    pub job_id: i32,
}

impl PrinterJob {
    /// `PRINTER job N`, as reports and the inbox show it.
    pub fn destination(&self) -> String {
        format!("{} job {}", self.printer, self.job_id)
    }
}

/// What [`Printer::submit`] did with a document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Submission {
    /// Printed: folders and devices are done once the bytes are written.
    Done(PrintReport),
    /// The printer accepted it as a job that has still to end
    /// ([`Printer::follow`]) before the document counts as printed.
    Accepted {
        /// The job, to follow.
        job: PrinterJob,
        /// What was sent.
        report: PrintReport,
    },
}

/// Why printing failed. [`PrintError::keeps_job`] says whether the
/// document should stay queued for another try.
#[derive(Debug, thiserror::Error)]
pub enum PrintError {
    /// The printer URI cannot be used.
    #[error("printer URI {uri:?}: {reason}")]
    BadUri {
        /// The URI as given.
        uri: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The printer is stopped; nothing was sent.
    #[error("printer {printer} is {status}; the job is kept")]
    Stopped {
        /// The printer URI.
        printer: String,
        /// Its status.
        status: PrinterStatus,
    },
    /// A request broke after part of it was sent (the connection dropped,
    /// the printer stopped reading or never answered): the printer may
    /// have made a job of it, so it is looked for ([`Printer::resubmit`])
    /// before the document is sent again.
    #[error(
        "printer {printer}: {operation} broke after it was sent ({reason}); the printer may have the job, and it is looked for there before the document is sent again"
    )]
    OutcomeUnknown {
        /// The printer URI.
        printer: String,
        /// The operation, e.g. `Print-Job`.
        operation: &'static str,
        /// What broke.
        reason: String,
        /// Whether the printer had acknowledged all of the request.
        whole: bool,
    },
    /// A device file stopped taking the document (a printer out of paper
    /// or switched off with its buffer full), or nothing reads it.
    #[error("{device} is not taking data: {reason}")]
    DeviceStuck {
        /// `device:/path`.
        device: String,
        /// How long it took nothing, and how much it had taken.
        reason: String,
    },
    /// The printer could not be reached.
    #[error("cannot reach printer {printer}: {reason}")]
    Unreachable {
        /// The printer URI.
        printer: String,
        /// The connection or HTTP error.
        reason: String,
    },
    /// An IPP operation was refused.
    #[error("printer {printer}: {operation} failed with {status}{}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Ipp {
        /// The printer URI.
        printer: String,
        /// The operation, e.g. `Print-Job`.
        operation: &'static str,
        /// What the printer answered: the IPP or HTTP status.
        status: IppFailure,
        /// status-message, if any.
        message: Option<String>,
    },
    /// The printer takes none of the formats we write.
    #[error(
        "printer {printer} takes none of application/pdf, image/pwg-raster (it takes {offered})"
    )]
    NoFormat {
        /// The printer URI.
        printer: String,
        /// Its document-format-supported.
        offered: String,
    },
    /// The job was accepted but ended aborted or canceled.
    #[error("printer {printer}: job {job_id} was {state} ({reasons}){}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    JobFailed {
        /// The printer URI.
        printer: String,
        /// The printer's job id.
        job_id: i32,
        /// `aborted` or `canceled`.
        state: String,
        /// job-state-reasons.
        reasons: String,
        /// job-state-message, if any.
        message: Option<String>,
    },
    /// The job did not finish in time.
    #[error("printer {printer}: job {job_id} still {state} after {waited:?}")]
    JobTimeout {
        /// The printer URI.
        printer: String,
        /// The printer's job id.
        job_id: i32,
        /// The last job-state seen.
        state: String,
        /// How long we watched.
        waited: std::time::Duration,
    },
    /// A local file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, naming the path.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The document could not be rendered.
    #[error("cannot render the document: {0}")]
    Render(#[from] FaxError),
}

impl PrintError {
    /// Whether the document should stay queued and be tried again later:
    /// true when the printer was stopped, unreachable, busy or otherwise
    /// temporarily unable ([`IppFailure::is_temporary`]), or timed out;
    /// false when the document or the configuration is at fault.
    pub fn keeps_job(&self) -> bool {
        match self {
            PrintError::Stopped { .. }
            | PrintError::Unreachable { .. }
            | PrintError::OutcomeUnknown { .. }
            | PrintError::DeviceStuck { .. }
            | PrintError::JobTimeout { .. }
            | PrintError::Io { .. } => true,
            PrintError::Ipp { status, .. } => status.is_temporary(),
            _ => false,
        }
    }

    /// The IPP status code of a refused operation.
    pub fn ipp_status(&self) -> Option<u16> {
        match self {
            PrintError::Ipp {
                status: IppFailure::Status(code),
                ..
            } => Some(*code),
            _ => None,
        }
    }
}

/// What an IPP printer answered instead of success.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IppFailure {
    /// An IPP status code (RFC 8011 section 4.1.6).
    Status(u16),
    /// An HTTP status other than success.
    Http(u16),
    /// A Print-Job answer that named no job.
    NoJobId,
    /// An answer that is no IPP message.
    Unparsable(String),
}

impl IppFailure {
    /// Whether the printer said "not now" rather than "no": IPP
    /// server-error-service-unavailable (0x0502), -device-error (0x0504),
    /// -temporary-error (0x0505), -not-accepting-jobs (0x0506) and -busy
    /// (0x0507), which printers answer while busy, warming up or paused,
    /// and any HTTP 5xx.
    pub fn is_temporary(&self) -> bool {
        use faxgate_ipp::codes::status;
        match self {
            IppFailure::Status(code) => matches!(
                *code,
                status::SERVICE_UNAVAILABLE
                    | status::DEVICE_ERROR
                    | status::TEMPORARY_ERROR
                    | status::NOT_ACCEPTING_JOBS
                    | status::BUSY
            ),
            IppFailure::Http(code) => (500..600).contains(code),
            IppFailure::NoJobId | IppFailure::Unparsable(_) => false,
        }
    }
}

impl fmt::Display for IppFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IppFailure::Status(code) => write!(
                f,
                "{} (0x{code:04x})",
                faxgate_ipp::client::status_name(*code)
            ),
            IppFailure::Http(code) => {
                write!(f, "HTTP {code}")?;
                match hyper::StatusCode::from_u16(*code)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                {
                    Some(reason) => write!(f, " {reason}"),
                    None => Ok(()),
                }
            }
            IppFailure::NoJobId => f.write_str("no job-id in the response"),
            IppFailure::Unparsable(e) => write!(f, "unparsable response ({e})"),
        }
    }
}

/// A printer, built from a URI:
///
/// - `ipp://host[:port]/path`: an IPP printer (port 631 by default).
/// - `cups:QUEUE` or `lp:QUEUE`: a CUPS queue, over IPP at the scheduler
///   (`CUPS_SERVER`, client.conf's `ServerName`, or localhost:631).
/// - `dir:/path` or `file:///path`: a folder; `?format=pdf` (default) or
///   `?format=tiff` (TIFF-F, MH; `tiff-mmr` for MMR).
/// - `device:/dev/...`: a device file that takes the bytes raw;
///   `?format=pdf` (default) or `?format=pwg` (black_1, `&dpi=300` to
///   resample, `&media=na_letter_8.5x11in` for the paper; each page's
///   own paper, A4 for a 1728-dot page, by default).
#[derive(Debug)]
pub enum Printer {
    /// An IPP printer.
    Ipp(ipp::IppPrinter),
    /// A CUPS queue.
    Cups(local::CupsPrinter),
    /// A folder of files.
    Folder(local::FolderPrinter),
    /// A raw device file.
    Device(local::DevicePrinter),
}

impl Printer {
    /// Parses a printer URI (see the type's documentation).
    pub fn from_uri(uri: &str) -> Result<Printer, PrintError> {
        let bad = |reason: &str| PrintError::BadUri {
            uri: uri.to_string(),
            reason: reason.to_string(),
        };
        let (scheme, rest) = uri
            .split_once(':')
            .ok_or_else(|| bad("no scheme (use ipp://, cups:, dir:, file:// or device:)"))?;
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, q),
            None => (rest, ""),
        };
        let params: Vec<(&str, &str)> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| p.split_once('=').unwrap_or((p, "")))
            .collect();
        let param = |k: &str| params.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
        match scheme.to_ascii_lowercase().as_str() {
            "ipp" => Ok(Printer::Ipp(ipp::IppPrinter::new(uri)?)),
            "ipps" => Err(bad(
                "ipps:// (IPP over TLS) is not supported yet; use ipp:// or a CUPS queue",
            )),
            "cups" | "lp" => {
                let queue = rest.trim_start_matches('/');
                if queue.is_empty() || queue.contains(char::is_whitespace) {
                    return Err(bad("needs a queue name, e.g. cups:office"));
                }
                Ok(Printer::Cups(local::CupsPrinter::new(queue)?))
            }
            "dir" | "file" => {
                let path = if scheme.eq_ignore_ascii_case("file") {
                    rest.strip_prefix("//")
                        .filter(|p| p.starts_with('/'))
                        .ok_or_else(|| bad("file URIs are file:///absolute/path (no host)"))?
                } else {
                    rest
                };
                if !path.starts_with('/') {
                    return Err(bad("the folder must be an absolute path"));
                }
                let format = match param("format").unwrap_or("pdf") {
                    "pdf" => DocumentFormat::Pdf,
                    "tiff" | "tif" => DocumentFormat::Tiff(Coding::Mh),
                    "tiff-mmr" => DocumentFormat::Tiff(Coding::Mmr),
                    other => {
                        return Err(bad(&format!(
                            "format {other:?}: folders take pdf, tiff or tiff-mmr"
                        )));
                    }
                };
                Ok(Printer::Folder(local::FolderPrinter::new(path, format)))
            }
            "device" => {
                if !rest.starts_with('/') {
                    return Err(bad(
                        "the device must be an absolute path, e.g. device:/dev/usb/lp0",
                    ));
                }
                let dpi = match param("dpi") {
                    None => None,
                    Some(v) => Some(
                        v.parse::<u32>()
                            .ok()
                            .filter(|d| (72..=2400).contains(d))
                            .ok_or_else(|| bad("dpi must be a number from 72 to 2400"))?,
                    ),
                };
                let media = match param("media") {
                    None => None,
                    Some(m) => Some(Media::named(m).ok_or_else(|| {
                        bad("media must be a PWG media name with its size, e.g. iso_a4_210x297mm")
                    })?),
                };
                let format = match param("format").unwrap_or("pdf") {
                    "pdf" => DocumentFormat::Pdf,
                    "pwg" => DocumentFormat::PwgRaster(PwgOptions {
                        kind: PwgType::Black1,
                        dpi: dpi.map(|d| (d, d)),
                        media,
                    }),
                    other => {
                        return Err(bad(&format!("format {other:?}: devices take pdf or pwg")));
                    }
                };
                Ok(Printer::Device(local::DevicePrinter::new(rest, format)))
            }
            other => Err(bad(&format!(
                "unknown scheme {other:?} (use ipp://, cups:, dir:, file:// or device:)"
            ))),
        }
    }

    /// The printer's current status. An unreachable printer is reported
    /// as stopped with `offline-report`, never as an error.
    pub async fn status(&self) -> PrinterStatus {
        match self {
            Printer::Ipp(p) => p.status().await,
            Printer::Cups(p) => p.status().await,
            Printer::Folder(p) => p.status(),
            Printer::Device(p) => p.status(),
        }
    }

    /// Sets how long an IPP or CUPS job is watched before
    /// [`PrintError::JobTimeout`] (other printers finish when the bytes
    /// are written).
    pub fn with_job_timeout(self, timeout: std::time::Duration) -> Self {
        let poll = std::time::Duration::from_millis(250);
        match self {
            Printer::Ipp(p) => Printer::Ipp(p.with_job_watch(poll, timeout)),
            Printer::Cups(p) => Printer::Cups(p.with_job_watch(poll, timeout)),
            other => other,
        }
    }

    /// Sets how long a printer may take none of a document before the
    /// attempt fails: an IPP printer or CUPS not reading the request for
    /// `idle`, or not answering within `answer` once it has all of it; a
    /// device taking no data for `idle`. (The defaults are 60 s and 120
    /// s.) No total deadline applies: a printer that reads a long fax
    /// slowly as it prints is given the time it takes.
    // Test-only until the [printer] configuration has a setting for it.
    #[cfg(test)]
    pub fn with_deadlines(self, idle: std::time::Duration, answer: std::time::Duration) -> Self {
        match self {
            Printer::Ipp(p) => Printer::Ipp(p.with_deadlines(idle, answer)),
            Printer::Cups(p) => Printer::Cups(p.with_deadlines(idle, answer)),
            Printer::Device(p) => Printer::Device(p.with_stall_timeout(idle)),
            other => other,
        }
    }

    /// Prints a document and waits until the printer has it (IPP: until
    /// the job is completed): [`Self::submit`], then [`Self::follow`]. A
    /// stopped printer gets nothing and the error says so
    /// ([`PrintError::keeps_job`]).
    pub async fn print(&self, doc: &Document) -> Result<PrintReport, PrintError> {
        match self.submit(doc).await? {
            Submission::Done(report) => Ok(report),
            Submission::Accepted { job, report } => {
                self.follow(&job).await?;
                Ok(report)
            }
        }
    }

    /// Sends a document to the printer. Folders and devices are done
    /// when this returns; an IPP printer (or CUPS queue) has accepted a
    /// job, which [`Self::follow`] watches to its end. A stopped printer
    /// gets nothing ([`PrintError::Stopped`]).
    pub async fn submit(&self, doc: &Document) -> Result<Submission, PrintError> {
        if doc.pages.is_empty() {
            return Err(PrintError::Render(FaxError::Geometry {
                reason: "the document has no pages".into(),
            }));
        }
        // Paper printers get a long page (a roll) as sheets; a folder
        // keeps the document as it came.
        if let Printer::Folder(p) = self {
            return p.print(doc).await.map(Submission::Done);
        }
        let paper = doc.on_paper()?;
        match self {
            Printer::Ipp(p) => p
                .submit(&paper)
                .await
                .map(|(job, report)| Submission::Accepted { job, report }),
            Printer::Cups(p) => p
                .submit(&paper)
                .await
                .map(|(job, report)| Submission::Accepted { job, report }),
            Printer::Device(p) => p.print(&paper).await.map(Submission::Done),
            Printer::Folder(p) => p.print(doc).await.map(Submission::Done),
        }
    }

    /// Sends a document that was tried before. An IPP printer or CUPS
    /// queue is first asked for a job of ours with the document's title
    /// (an earlier Print-Job whose answer was lost, before a retry or a
    /// restart, may have made one; [`PrintError::OutcomeUnknown`]), and
    /// that job is returned to follow instead of sending the document
    /// again. Other printers: as [`Self::submit`].
    pub async fn resubmit(&self, doc: &Document) -> Result<Submission, PrintError> {
        if doc.pages.is_empty() {
            return self.submit(doc).await;
        }
        match self {
            Printer::Ipp(p) => {
                let paper = doc.on_paper()?;
                p.resubmit(&paper)
                    .await
                    .map(|(job, report)| Submission::Accepted { job, report })
            }
            Printer::Cups(p) => {
                let paper = doc.on_paper()?;
                p.resubmit(&paper)
                    .await
                    .map(|(job, report)| Submission::Accepted { job, report })
            }
            _ => self.submit(doc).await,
        }
    }

    /// Watches a job the printer accepted until it ends: `Ok` once it
    /// completed, or once the printer no longer knows it (printers purge
    /// ended jobs; it had the document). A job still pending or
    /// processing after the job timeout, or a printer that cannot be
    /// reached meanwhile, is an error that keeps the job
    /// ([`PrintError::keeps_job`]): follow it again later, never send the
    /// document again. A job that was not sent by this printer (the
    /// configuration changed since) is followed at its own printer.
    pub async fn follow(&self, job: &PrinterJob) -> Result<(), PrintError> {
        match self {
            Printer::Ipp(p) if p.uri() == job.printer => p.follow(job.job_id).await,
            Printer::Cups(p) if p.ipp().uri() == job.printer => p.ipp().follow(job.job_id).await,
            Printer::Ipp(p) => p.at(&job.printer)?.follow(job.job_id).await,
            Printer::Cups(p) => p.ipp().at(&job.printer)?.follow(job.job_id).await,
            _ => ipp::IppPrinter::new(&job.printer)?.follow(job.job_id).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use faxgate_fax::Bitmap;

    fn doc(dpi: (u32, u32)) -> Document {
        let pages = (0..3u32)
            .map(|i| {
                let mut bmp = Bitmap::new(1728, 40 + i);
                for x in (0..1728).step_by(3 + i as usize) {
                    bmp.set_pixel(x, 5 + i, true);
                }
                FaxPage::from_bitmap(&bmp, dpi, Coding::Mmr).unwrap()
            })
            .collect();
        Document {
            title: "three pages".into(),
            pages,
        }
    }

    /// Written a page at a time to a writer, every format gives exactly
    /// the bytes rendered whole, and the count returned is their length.
    #[test]
    fn streamed_documents_equal_the_rendered_ones() {
        let d = doc((204, 196));
        let pwg = PwgOptions {
            kind: PwgType::Black1,
            dpi: None,
            media: None,
        };
        for format in [
            DocumentFormat::Pdf,
            DocumentFormat::PwgRaster(pwg),
            DocumentFormat::Tiff(Coding::Mmr),
            DocumentFormat::Tiff(Coding::Mh),
        ] {
            let whole = format.render(&d).unwrap();
            let mut streamed = Vec::new();
            let n = format.write_to(&d, &mut streamed).unwrap();
            assert_eq!(streamed, whole, "{format:?}");
            assert_eq!(n, whole.len() as u64, "{format:?}");
            let (file, len) = format.spool(&d, None).unwrap();
            assert_eq!(std::fs::read(file.path()).unwrap(), whole, "{format:?}");
            assert_eq!(len, whole.len() as u64);
        }
    }

    /// A page TIFF-F cannot hold stops the document with an error naming
    /// it; nothing after it is written.
    #[test]
    fn a_page_tiff_cannot_hold_names_itself_and_stops_the_document() {
        let mut d = doc((204, 196));
        d.pages[1] = doc((100, 100)).pages.remove(1);
        let mut out = Vec::new();
        let e = DocumentFormat::Tiff(Coding::Mmr)
            .write_to(&d, &mut out)
            .unwrap_err();
        assert!(e.to_string().contains("page 2 is 100x100 dpi"), "{e}");
        let first_page = render_tiff(&d.pages[..1], Coding::Mmr).unwrap();
        assert!(
            out.len() < first_page.len(),
            "only page 1 may have been written"
        );
    }

    #[test]
    fn uris_parse_and_errors_name_the_problem() {
        assert!(matches!(
            Printer::from_uri("ipp://localhost:8631/ipp/print"),
            Ok(Printer::Ipp(_))
        ));
        assert!(matches!(
            Printer::from_uri("cups:office"),
            Ok(Printer::Cups(_))
        ));
        assert!(matches!(
            Printer::from_uri("lp:office"),
            Ok(Printer::Cups(_))
        ));
        assert!(matches!(
            Printer::from_uri("file:///var/spool/fax"),
            Ok(Printer::Folder(_))
        ));
        assert!(matches!(
            Printer::from_uri("dir:/tmp/x?format=tiff"),
            Ok(Printer::Folder(_))
        ));
        assert!(matches!(
            Printer::from_uri("device:/dev/usb/lp0?format=pwg&dpi=300"),
            Ok(Printer::Device(_))
        ));
        assert!(matches!(
            Printer::from_uri("device:/dev/usb/lp0?format=pwg&media=na_letter_8.5x11in"),
            Ok(Printer::Device(_))
        ));
        for (uri, needle) in [
            ("nothing", "no scheme"),
            ("gopher://x", "unknown scheme"),
            ("cups:", "queue name"),
            ("dir:relative", "absolute"),
            ("file://host/x", "file:///"),
            ("dir:/x?format=png", "format"),
            ("device:/dev/x?dpi=5", "dpi"),
            ("device:/dev/x?format=pwg&media=letter", "media"),
            ("ipp://", "host"),
            ("ipps://printer/ipp", "not supported"),
        ] {
            let e = Printer::from_uri(uri).expect_err(uri).to_string();
            assert!(e.contains(needle), "{uri}: {e}");
        }
    }

    #[test]
    fn status_reasons_match_with_suffixes() {
        let s = PrinterStatus {
            state: PrinterState::Stopped,
            reasons: vec!["media-empty-error".into(), "toner-low-report".into()],
            message: None,
        };
        assert!(s.has("media-empty"));
        assert!(s.has("toner-low"));
        assert!(!s.has("media-jam"));
        assert!(s.blocks_printing());
        assert_eq!(
            s.to_string(),
            "stopped (media-empty-error, toner-low-report)"
        );
        // An idle printer that reports an empty (optional) tray as a
        // report is still idle and still prints: RFC 8011 makes -report
        // informational, and ippeveprinter reports every condition so
        // while idle.
        let s = PrinterStatus::from_ipp(
            PrinterState::Idle,
            vec!["media-empty-report".into()],
            Some("Idle.".into()),
        );
        assert_eq!(s.state, PrinterState::Idle);
        assert!(!s.blocks_printing());
        assert!(s.has("media-empty"));
        assert_eq!(s.to_string(), "idle (media-empty-report): Idle.");
        // Unsuffixed sub-states do not stop an idle or processing printer.
        for r in ["media-empty", "connecting-to-device", "moving-to-paused"] {
            let s = PrinterStatus::from_ipp(PrinterState::Processing, vec![r.into()], None);
            assert_eq!(s.state, PrinterState::Processing, "{r}");
            assert!(!s.blocks_printing(), "{r}");
        }
        // ...but a stopped printer is stopped whatever its reasons say.
        let s = PrinterStatus::from_ipp(PrinterState::Stopped, vec!["paused".into()], None);
        assert!(s.blocks_printing());
        let s =
            PrinterStatus::from_ipp(PrinterState::Stopped, vec!["toner-low-report".into()], None);
        assert!(s.blocks_printing());
        // An -error reason stops printing even where printer-state lags.
        let s = PrinterStatus::from_ipp(
            PrinterState::Idle,
            vec!["media-empty-error".into(), "toner-low-report".into()],
            None,
        );
        assert_eq!(s.state, PrinterState::Stopped);
        assert!(s.blocks_printing());
        let s = PrinterStatus::from_ipp(PrinterState::Idle, vec!["toner-low-warning".into()], None);
        assert_eq!(s.state, PrinterState::Idle);
        assert!(!s.blocks_printing());
        let s = PrinterStatus::from_ipp(
            PrinterState::Processing,
            vec!["media-jam-warning".into()],
            None,
        );
        assert!(!s.blocks_printing());
    }
}
