//! An IPP printer (RFC 8011) reached over HTTP: Get-Printer-Attributes to
//! learn its state, formats and paper, Print-Job, then Get-Job-Attributes
//! until the job is completed, aborted or canceled.
//!
//! The paper is chosen for the fax ([`PrinterInfo::choose_media`]): of
//! the media loaded (media-ready), else the default (media-default), else
//! any the printer supports, the one the page suits best. The job names
//! it (`media`) when the printer lists it in media-supported; PWG raster
//! is rendered onto it (printers do not scale raster), and a PDF job asks
//! for `print-scaling=fit` where the printer supports it, so that a page
//! larger than the paper shrinks rather than being clipped.
//!
//! Messages are built and parsed by the `ipp` crate; the HTTP exchange is
//! a one-shot hyper connection per request, and the document is streamed
//! from the request's `AsyncRead` (futures-io, bridged to tokio with
//! tokio-util's compat) rather than copied into one buffer.

use std::time::Duration;

use ipp::operation::IppOperation as _;
use ipp::parser::AsyncIppParser;
use ipp::prelude::*;
use tokio_util::compat::TokioAsyncReadCompatExt as _;

use faxgate_ipp::codes::{job_state, status};
use faxgate_ipp::message::{attribute, keyword};

use super::conn::{self, Deadlines, Failure};
use super::media::{Media, best_media, page_mm};
use super::{
    Document, DocumentFormat, IppFailure, PrintError, PrintReport, PrinterJob, PrinterState,
    PrinterStatus,
};
use super::{PwgOptions, PwgType};

/// A document body for an IPP request: a reader and its length.
type DocumentBody = (
    Box<dyn futures_util::io::AsyncRead + Send + Unpin + 'static>,
    u64,
);

/// The printer attributes we ask for.
const PRINTER_ATTRIBUTES: [&str; 10] = [
    "printer-state",
    "printer-state-reasons",
    "printer-state-message",
    "document-format-supported",
    "pwg-raster-document-type-supported",
    "pwg-raster-document-resolution-supported",
    "media-ready",
    "media-default",
    "media-supported",
    "print-scaling-supported",
];

/// An IPP printer at an `ipp://` URI.
#[derive(Debug, Clone)]
pub struct IppPrinter {
    uri: Uri,
    host: String,
    port: u16,
    path: String,
    poll: Duration,
    job_timeout: Duration,
    deadlines: Deadlines,
    /// What errors call the printer, when not its URI.
    name: Option<String>,
}

/// What Get-Printer-Attributes told us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrinterInfo {
    /// printer-state and its reasons.
    pub status: PrinterStatus,
    /// document-format-supported.
    pub formats: Vec<String>,
    /// pwg-raster-document-type-supported.
    pub pwg_types: Vec<String>,
    /// pwg-raster-document-resolution-supported, in dpi.
    pub pwg_resolutions: Vec<(u32, u32)>,
    /// media-ready: the paper loaded, as media keywords.
    pub media_ready: Vec<String>,
    /// media-default.
    pub media_default: Option<String>,
    /// media-supported: what a job's `media` may name.
    pub media_supported: Vec<String>,
    /// print-scaling-supported (`auto`, `fit`, `fill`, `none`...).
    pub print_scaling: Vec<String>,
}

impl PrinterInfo {
    /// The paper for a fax page of `page_mm` millimetres
    /// ([`best_media`]): chosen among the media loaded (media-ready),
    /// else the default, else those supported, with the default first
    /// among equals. `None` when the printer names no paper we can size.
    pub fn choose_media(&self, page_mm: (f64, f64)) -> Option<Media> {
        let sized = |names: &[String]| -> Vec<Media> {
            // The default first: it wins a tie.
            let mut v: Vec<Media> = self
                .media_default
                .iter()
                .filter(|d| names.contains(d))
                .chain(
                    names
                        .iter()
                        .filter(|n| Some(*n) != self.media_default.as_ref()),
                )
                .filter_map(|n| Media::named(n))
                .collect();
            v.dedup();
            v
        };
        let ready = sized(&self.media_ready);
        if !ready.is_empty() {
            return best_media(page_mm, &ready);
        }
        if let Some(d) = self.media_default.as_deref().and_then(Media::named) {
            return Some(d);
        }
        best_media(page_mm, &sized(&self.media_supported))
    }

    /// Whether a job may name `media`: the printer lists it in
    /// media-supported.
    pub fn takes_media(&self, media: &Media) -> bool {
        self.media_supported.contains(&media.name)
    }

    /// Whether a job may ask for `print-scaling=fit`.
    pub fn scales_to_fit(&self) -> bool {
        self.print_scaling.iter().any(|s| s == "fit")
    }

    /// The format to send: PDF if the printer takes it, else PWG raster
    /// in the best 1-bit type and the nearest resolution at or above the
    /// pages' own, rendered onto `media` (each page's own paper if
    /// `None`).
    pub fn choose_format(
        &self,
        page_dpi: (u32, u32),
        media: Option<Media>,
    ) -> Option<DocumentFormat> {
        let takes = |m: &str| self.formats.iter().any(|f| f.eq_ignore_ascii_case(m));
        if takes("application/pdf") {
            return Some(DocumentFormat::Pdf);
        }
        if !takes("image/pwg-raster") {
            return None;
        }
        let kind = PwgType::PREFERENCE
            .into_iter()
            .find(|t| self.pwg_types.iter().any(|s| s == t.keyword()))
            // A printer that lists no types still takes black_1 by spec.
            .or(if self.pwg_types.is_empty() {
                Some(PwgType::Black1)
            } else {
                None
            })?;
        // Resolutions a printer can mean: one that claims 0 or 100 000
        // dpi (garbage, or spoofed) would have a page squeezed into a dot
        // or rendered into terabytes. A printer that lists only such
        // values offers no raster we can make.
        let usable: Vec<(u32, u32)> = self
            .pwg_resolutions
            .iter()
            .copied()
            .filter(|r| DPI_RANGE.contains(&r.0) && DPI_RANGE.contains(&r.1))
            .collect();
        if usable.is_empty() && !self.pwg_resolutions.is_empty() {
            return None;
        }
        let dpi = if usable.contains(&page_dpi) || usable.is_empty() {
            page_dpi
        } else {
            let need = page_dpi.0.max(page_dpi.1);
            let mut sorted = usable;
            sorted.sort_by_key(|r| r.0.min(r.1));
            sorted
                .iter()
                .copied()
                .find(|r| r.0.min(r.1) >= need)
                .or_else(|| sorted.last().copied())
                .unwrap_or(page_dpi)
        };
        Some(DocumentFormat::PwgRaster(PwgOptions {
            kind,
            dpi: Some(dpi),
            media,
        }))
    }
}

/// The raster resolutions (dpi, each direction) we render at.
const DPI_RANGE: std::ops::RangeInclusive<u32> = 72..=2400;

impl IppPrinter {
    /// A printer at `ipp://host[:port]/path`; nothing is sent yet.
    pub fn new(uri: &str) -> Result<Self, PrintError> {
        let bad = |reason: String| PrintError::BadUri {
            uri: uri.to_string(),
            reason,
        };
        let parsed: Uri = uri
            .parse()
            .map_err(|e| bad(format!("not an ipp://host[:port]/path URI ({e})")))?;
        if parsed.scheme_str() != Some("ipp") {
            return Err(bad("not an ipp:// URI".into()));
        }
        let host = parsed
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("no host".into()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = parsed.port_u16().unwrap_or(631);
        let path = match parsed.path() {
            "" => "/".to_string(),
            p => p.to_string(),
        };
        Ok(IppPrinter {
            uri: parsed,
            host,
            port,
            path,
            poll: Duration::from_millis(250),
            job_timeout: Duration::from_secs(600),
            deadlines: Deadlines::default(),
            name: None,
        })
    }

    /// Changes how long a request may go without progress: `idle` while
    /// it is sent (the printer taking none of it), `answer` for the
    /// answer once the printer has all of it (see [`super::conn`]).
    // Test-only until the [printer] configuration has a setting for it.
    #[cfg(test)]
    pub fn with_deadlines(mut self, idle: Duration, answer: Duration) -> Self {
        self.deadlines.idle = idle;
        self.deadlines.answer = answer;
        self
    }

    /// Changes how often a job is polled and how long it is watched.
    pub fn with_job_watch(mut self, poll: Duration, timeout: Duration) -> Self {
        self.poll = poll;
        self.job_timeout = timeout;
        self
    }

    /// Names the printer in errors (`cups:QUEUE`) instead of its URI.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The printer URI.
    pub fn uri(&self) -> String {
        self.uri.to_string()
    }

    /// What errors call the printer: its name, or its URI.
    pub fn name(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.uri())
    }

    /// Get-Printer-Attributes.
    pub async fn info(&self) -> Result<PrinterInfo, PrintError> {
        let op = IppOperationBuilder::get_printer_attributes(self.uri.clone())
            .attributes(PRINTER_ATTRIBUTES)
            .build()
            .map_err(|e| self.bad_request(&e))?;
        let resp = self
            .call("Get-Printer-Attributes", op.into_ipp_request(), None)
            .await?;
        let get = |name: &str| printer_attr(&resp, name);
        let state = match get("printer-state") {
            Some(IppValue::Enum(4)) => PrinterState::Processing,
            Some(IppValue::Enum(5)) => PrinterState::Stopped,
            _ => PrinterState::Idle,
        };
        let reasons = keywords(get("printer-state-reasons"))
            .into_iter()
            .filter(|r| r != "none")
            .collect();
        let message = get("printer-state-message")
            .map(|v| v.to_string())
            .filter(|m| !m.is_empty());
        let pwg_resolutions = get("pwg-raster-document-resolution-supported")
            .map(|v| {
                v.into_iter()
                    .filter_map(|r| match r {
                        IppValue::Resolution {
                            cross_feed,
                            feed,
                            units,
                        } => {
                            // units 3 = dots per inch, 4 = dots per cm.
                            let f = if *units == 4 { 2.54 } else { 1.0 };
                            Some((
                                (f64::from(*cross_feed) * f).round() as u32,
                                (f64::from(*feed) * f).round() as u32,
                            ))
                        }
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(PrinterInfo {
            status: PrinterStatus::from_ipp(state, reasons, message),
            formats: keywords(get("document-format-supported")),
            pwg_types: keywords(get("pwg-raster-document-type-supported")),
            pwg_resolutions,
            media_ready: keywords(get("media-ready")),
            media_default: keywords(get("media-default")).into_iter().next(),
            media_supported: keywords(get("media-supported")),
            print_scaling: keywords(get("print-scaling-supported")),
        })
    }

    /// The printer's status; unreachable or failing is `stopped` with
    /// `offline-report`.
    pub async fn status(&self) -> PrinterStatus {
        match self.info().await {
            Ok(info) => info.status,
            Err(e) => PrinterStatus::stopped("offline-report", e.to_string()),
        }
    }

    /// The same printer settings for another printer URI (to follow a job
    /// sent to a printer configured earlier).
    pub fn at(&self, uri: &str) -> Result<Self, PrintError> {
        let mut p = IppPrinter::new(uri)?.with_job_watch(self.poll, self.job_timeout);
        p.deadlines = self.deadlines;
        Ok(p)
    }

    /// Sends a document (Print-Job) in the best format the printer takes;
    /// returns the job the printer made of it. A printer that is stopped
    /// gets nothing.
    ///
    /// A Print-Job that breaks after part of it was sent
    /// ([`PrintError::OutcomeUnknown`]) may still have made a job: the
    /// printer is asked at once for a job of ours with the document's
    /// title ([`Self::find_job`]), which is returned if there is one.
    pub async fn submit(&self, doc: &Document) -> Result<(PrinterJob, PrintReport), PrintError> {
        self.send(doc, false).await
    }

    /// Sends a document that was tried before: first looks for a job of
    /// ours with its title (an earlier Print-Job whose answer was lost may
    /// have made one, before a retry or a restart) and returns that job
    /// if the printer has it; otherwise as [`Self::submit`].
    pub async fn resubmit(&self, doc: &Document) -> Result<(PrinterJob, PrintReport), PrintError> {
        self.send(doc, true).await
    }

    async fn send(
        &self,
        doc: &Document,
        look_first: bool,
    ) -> Result<(PrinterJob, PrintReport), PrintError> {
        if look_first && let Some(found) = self.found(&doc.title, "an earlier try").await? {
            return Ok(found);
        }
        let info = self.info().await?;
        if info.status.blocks_printing() {
            return Err(PrintError::Stopped {
                printer: self.name(),
                status: info.status,
            });
        }
        let page_dpi = doc.pages.first().map_or((300, 300), |p| p.dpi());
        // The paper is chosen for the widest (then longest) page.
        let size = doc
            .pages
            .iter()
            .map(page_mm)
            .max_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)))
            .unwrap_or((210.0, 297.0));
        let media = info.choose_media(size);
        let format =
            info.choose_format(page_dpi, media.clone())
                .ok_or_else(|| PrintError::NoFormat {
                    printer: self.name(),
                    offered: info.formats.join(", "),
                })?;
        let mut job_attributes = Vec::new();
        if let Some(m) = media.as_ref().filter(|m| info.takes_media(m)) {
            job_attributes.push(attribute("media", keyword(&m.name)));
        }
        if format == DocumentFormat::Pdf && info.scales_to_fit() {
            job_attributes.push(attribute("print-scaling", keyword("fit")));
        }
        // Rendered into a temporary file first: the body streams from it,
        // and its length is known for Content-Length.
        let (spooled, bytes) = format.spool(doc, None)?;
        let file = spooled.reopen().map_err(|e| PrintError::Io {
            what: format!("reopening {}", spooled.path().display()),
            source: e,
        })?;
        let body: DocumentBody = (Box::new(tokio::fs::File::from_std(file).compat()), bytes);
        let op = IppOperationBuilder::print_job(self.uri.clone(), IppPayload::empty())
            .user_name(requesting_user())
            .job_title(&doc.title)
            .document_format(format.mime())
            .attributes(job_attributes)
            .build()
            .map_err(|e| self.bad_request(&e))?;
        let resp = match self
            .call("Print-Job", op.into_ipp_request(), Some(body))
            .await
        {
            Ok(resp) => resp,
            Err(e @ PrintError::OutcomeUnknown { whole: false, .. }) => {
                // Part of the document went out (the printer stopped
                // reading: a jam, no paper). A job it made of that part
                // would print a partial document, and the next try, which
                // looks for a job of this title first, would follow it
                // instead of sending the document whole: it is canceled
                // now (a canceled job is never followed). Best effort: a
                // printer that cannot be asked keeps the risk.
                tracing::warn!(printer = %self.uri, error = %e, "Print-Job broke while the document was going out; canceling any job made of part of it.");
                if let Ok(Some(partial)) = self.find_job(&doc.title).await {
                    match self.cancel_job(partial).await {
                        Ok(()) => {
                            tracing::info!(printer = %self.uri, job_id = partial, "Canceled the job made of part of the document.");
                        }
                        Err(c) => {
                            tracing::warn!(printer = %self.uri, job_id = partial, error = %c, "Cannot cancel the job made of part of the document; the next try may follow it.");
                        }
                    }
                }
                return Err(e);
            }
            Err(e @ PrintError::OutcomeUnknown { whole: true, .. }) => {
                tracing::warn!(printer = %self.uri, error = %e, "Print-Job broke after the printer had all of it; looking for the job.");
                // The printer may have made the job: look before anyone
                // sends the document again. If it is not there (yet), the
                // next try looks again first.
                return match self
                    .found(&doc.title, "a Print-Job whose answer was lost")
                    .await
                {
                    Ok(Some(found)) => Ok(found),
                    Ok(None) | Err(_) => Err(e),
                };
            }
            Err(e) => return Err(e),
        };
        let job_id = match job_attr(&resp, "job-id") {
            Some(IppValue::Integer(id)) => *id,
            _ => {
                return Err(PrintError::Ipp {
                    printer: self.name(),
                    operation: "Print-Job",
                    status: IppFailure::NoJobId,
                    message: None,
                });
            }
        };
        tracing::info!(
            printer = %self.uri,
            job_id,
            format = format.mime(),
            media = media.as_ref().map_or("", |m| m.name.as_str()),
            bytes,
            "Print job accepted."
        );
        let job = PrinterJob {
            printer: self.uri.to_string(),
            job_id,
        };
        let report = PrintReport {
            format: format.mime(),
            bytes,
            destination: job.destination(),
        };
        Ok((job, report))
    }

    /// A job of ours titled `title` at the printer, as a job to follow,
    /// with a report saying it was sent by `when`.
    async fn found(
        &self,
        title: &str,
        when: &str,
    ) -> Result<Option<(PrinterJob, PrintReport)>, PrintError> {
        let Some(job_id) = self.find_job(title).await? else {
            return Ok(None);
        };
        tracing::info!(printer = %self.uri, job_id, title, "The printer has the job from {when}; following it instead of sending the document again.");
        let job = PrinterJob {
            printer: self.uri.to_string(),
            job_id,
        };
        let report = PrintReport {
            format: "(sent before)",
            bytes: 0,
            destination: job.destination(),
        };
        Ok(Some((job, report)))
    }

    /// An IPP/1.1 request `op` to this printer as our user
    /// (requesting-user-name), with `attrs` added to its operation
    /// attributes.
    fn request_as_us(
        &self,
        op: Operation,
        attrs: impl IntoIterator<Item = IppAttribute>,
    ) -> Result<IppRequestResponse, PrintError> {
        let mut req = IppRequestResponse::new(IppVersion::v1_1(), op, Some(self.uri.clone()))
            .map_err(|e| self.bad_request(&e))?;
        let ops = DelimiterTag::OperationAttributes;
        let all = req.attributes_mut();
        all.add(
            ops,
            attribute(
                "requesting-user-name",
                faxgate_ipp::message::name(&requesting_user()),
            ),
        );
        for a in attrs {
            all.add(ops, a);
        }
        Ok(req)
    }

    /// Cancel-Job for job `job_id` of ours.
    async fn cancel_job(&self, job_id: i32) -> Result<(), PrintError> {
        let req = self.request_as_us(
            Operation::CancelJob,
            [attribute("job-id", IppValue::Integer(job_id))],
        )?;
        self.call("Cancel-Job", req, None).await.map(drop)
    }

    /// The newest job of ours (requesting-user-name) named `name` that
    /// was not aborted or canceled (Get-Jobs with my-jobs, not-completed
    /// then completed; an aborted job is one a printer made of a
    /// document it did not get whole, so the document is sent again). A
    /// printer that cannot list jobs (Get-Jobs refused for good) is
    /// answered `None`, with a warning: the document is sent again. An
    /// unreachable or busy printer is an error that keeps the job.
    pub async fn find_job(&self, name: &str) -> Result<Option<i32>, PrintError> {
        let user = requesting_user();
        for which in ["not-completed", "completed"] {
            let req = self.request_as_us(
                Operation::GetJobs,
                [
                    attribute("which-jobs", keyword(which)),
                    attribute("my-jobs", IppValue::Boolean(true)),
                    attribute(
                        "requested-attributes",
                        faxgate_ipp::message::keywords(&[
                            "job-id",
                            "job-name",
                            "job-originating-user-name",
                            "job-state",
                        ]),
                    ),
                ],
            )?;
            let resp = match self.call("Get-Jobs", req, None).await {
                Ok(resp) => resp,
                Err(e) if e.keeps_job() => return Err(e),
                Err(e) => {
                    tracing::warn!(printer = %self.uri, error = %e, "Cannot list the printer's jobs; a document whose earlier Print-Job was lost may print twice.");
                    return Ok(None);
                }
            };
            let newest = resp
                .attributes()
                .groups_of(DelimiterTag::JobAttributes)
                .filter(|g| {
                    g.get("job-name")
                        .is_some_and(|v| v.value().to_string() == name)
                })
                .filter(|g| {
                    g.get("job-originating-user-name")
                        .is_none_or(|v| v.value().to_string() == user)
                })
                .filter(|g| {
                    !matches!(
                        g.get("job-state").map(IppAttribute::value),
                        Some(IppValue::Enum(job_state::ABORTED | job_state::CANCELED))
                    )
                })
                .filter_map(|g| match g.get("job-id").map(IppAttribute::value) {
                    Some(IppValue::Integer(id)) => Some(*id),
                    _ => None,
                })
                .max();
            if newest.is_some() {
                return Ok(newest);
            }
        }
        Ok(None)
    }

    /// Polls Get-Job-Attributes until job `job_id` ends (see
    /// [`super::Printer::follow`]). A poll that fails for a reason that
    /// passes (the printer unreachable for a moment, busy) is tried again
    /// at the next poll; at the job timeout the last such error, or
    /// [`PrintError::JobTimeout`], is returned. Client-error-not-found
    /// means the printer purged the job after it ended: done.
    pub async fn follow(&self, job_id: i32) -> Result<(), PrintError> {
        let start = tokio::time::Instant::now();
        let user = requesting_user();
        let mut state = job_state::PENDING;
        loop {
            let op = IppOperationBuilder::get_job_attributes(self.uri.clone(), job_id)
                .user_name(&user)
                .build()
                .map_err(|e| self.bad_request(&e))?;
            let mut failed = None;
            match self
                .call("Get-Job-Attributes", op.into_ipp_request(), None)
                .await
            {
                Ok(resp) => {
                    if let Some(IppValue::Enum(s)) = job_attr(&resp, "job-state") {
                        state = *s;
                    }
                    match state {
                        job_state::COMPLETED => {
                            tracing::info!(printer = %self.uri, job_id, "Print job completed.");
                            return Ok(());
                        }
                        job_state::CANCELED | job_state::ABORTED => {
                            return Err(PrintError::JobFailed {
                                printer: self.name(),
                                job_id,
                                state: job_state::name(state).into(),
                                reasons: keywords(job_attr(&resp, "job-state-reasons")).join(", "),
                                message: job_attr(&resp, "job-state-message")
                                    .map(|v| v.to_string())
                                    .filter(|m| !m.is_empty()),
                            });
                        }
                        _ => {}
                    }
                }
                Err(e) if e.ipp_status() == Some(status::NOT_FOUND) => {
                    tracing::info!(
                        printer = %self.uri,
                        job_id,
                        "Print job no longer known to the printer (purged after it ended); counted as printed."
                    );
                    return Ok(());
                }
                Err(e) if e.keeps_job() => {
                    tracing::debug!(printer = %self.uri, job_id, error = %e, "Cannot read the print job's state now.");
                    failed = Some(e);
                }
                Err(e) => return Err(e),
            }
            if start.elapsed() >= self.job_timeout {
                return Err(failed.unwrap_or_else(|| PrintError::JobTimeout {
                    printer: self.name(),
                    job_id,
                    state: job_state::name(state).into(),
                    waited: start.elapsed(),
                }));
            }
            tokio::time::sleep(self.poll).await;
        }
    }

    fn bad_request(&self, e: &dyn std::fmt::Display) -> PrintError {
        PrintError::BadUri {
            uri: self.name(),
            reason: format!("cannot build an IPP request: {e}"),
        }
    }

    /// One IPP request over a fresh HTTP/1.1 connection, with an optional
    /// document after the attributes, watched by inactivity deadlines
    /// ([`super::conn`]). A Print-Job that breaks once any of it was sent
    /// is [`PrintError::OutcomeUnknown`]; other broken requests, and
    /// requests that never left, are [`PrintError::Unreachable`].
    async fn call(
        &self,
        operation: &'static str,
        mut req: IppRequestResponse,
        document: Option<DocumentBody>,
    ) -> Result<IppRequestResponse, PrintError> {
        let length = req.to_bytes().len() as u64 + document.as_ref().map_or(0, |d| d.1);
        let with_document = document.is_some();
        if let Some((reader, _)) = document {
            *req.payload_mut() = IppPayload::new_async(reader);
        }
        let bytes = conn::post(
            &self.host,
            self.port,
            &self.path,
            req.into_async_read(),
            length,
            self.deadlines,
        )
        .await
        .map_err(|f| match f {
            Failure::Http(code) => PrintError::Ipp {
                printer: self.name(),
                operation,
                status: IppFailure::Http(code),
                message: None,
            },
            Failure::Broken { reason, whole } if with_document => PrintError::OutcomeUnknown {
                printer: self.name(),
                operation,
                reason,
                whole,
            },
            Failure::Broken { reason, .. } | Failure::NotSent(reason) => PrintError::Unreachable {
                printer: self.name(),
                reason: format!("{operation}: {reason}"),
            },
        })?;
        let resp = AsyncIppParser::new(futures_util::io::Cursor::new(bytes))
            .parse()
            .await
            .map_err(|e| PrintError::Ipp {
                printer: self.name(),
                operation,
                status: IppFailure::Unparsable(e.to_string()),
                message: None,
            })?;
        let status = resp.header().status_code();
        if !status.is_success() {
            return Err(PrintError::Ipp {
                printer: self.name(),
                operation,
                status: IppFailure::Status(u16::from_be_bytes(
                    resp.header().operation_or_status.to_be_bytes(),
                )),
                message: operation_attr(&resp, "status-message").map(|v| v.to_string()),
            });
        }
        Ok(resp)
    }
}

fn attr_in<'a>(
    resp: &'a IppRequestResponse,
    tag: DelimiterTag,
    name: &str,
) -> Option<&'a IppValue> {
    resp.attributes()
        .groups_of(tag)
        .find_map(|g| g.get(name))
        .map(IppAttribute::value)
}

fn printer_attr<'a>(resp: &'a IppRequestResponse, name: &str) -> Option<&'a IppValue> {
    attr_in(resp, DelimiterTag::PrinterAttributes, name)
}

fn job_attr<'a>(resp: &'a IppRequestResponse, name: &str) -> Option<&'a IppValue> {
    attr_in(resp, DelimiterTag::JobAttributes, name)
}

fn operation_attr<'a>(resp: &'a IppRequestResponse, name: &str) -> Option<&'a IppValue> {
    attr_in(resp, DelimiterTag::OperationAttributes, name)
}

/// The requesting-user-name we send: the login name, or `faxgate`.
fn requesting_user() -> String {
    std::env::var("USER").unwrap_or_else(|_| "faxgate".into())
}

/// The values of a (possibly one-valued) keyword or string attribute.
fn keywords(v: Option<&IppValue>) -> Vec<String> {
    v.map(|v| v.into_iter().map(|k| k.to_string()).collect())
        .unwrap_or_default()
}

/// A stand-in IPP printer for unit tests: a loopback HTTP server that
/// answers each IPP request as a test's function says (by operation id),
/// for behaviour a real printer shows only now and then: busy, warming
/// up, purging jobs. The real ippeveprinter is used by the integration
/// tests.
#[cfg(test)]
pub(crate) mod test_server {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// The operation id and body of each request answered, in order.
    type Seen = Arc<Mutex<Vec<(u16, Vec<u8>)>>>;

    /// The server; it stops when dropped.
    #[derive(Debug)]
    pub(crate) struct StandIn {
        /// `ipp://127.0.0.1:PORT/ipp/print`.
        pub(crate) uri: String,
        /// Requests answered so far.
        pub(crate) requests: Arc<AtomicUsize>,
        /// The operation id and body of each request, in order.
        ops: Seen,
        task: tokio::task::JoinHandle<()>,
    }

    impl StandIn {
        /// How many requests had operation id `op`.
        pub(crate) fn count(&self, op: u16) -> usize {
            self.ops
                .lock()
                .unwrap()
                .iter()
                .filter(|o| o.0 == op)
                .count()
        }

        /// The bodies (IPP message and document) of the requests with
        /// operation id `op`.
        pub(crate) fn bodies(&self, op: u16) -> Vec<Vec<u8>> {
            self.ops
                .lock()
                .unwrap()
                .iter()
                .filter(|o| o.0 == op)
                .map(|o| o.1.clone())
                .collect()
        }
    }

    impl Drop for StandIn {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    /// One attribute: value tag, name, value.
    fn attr(out: &mut Vec<u8>, tag: u8, name: &str, value: &[u8]) {
        out.push(tag);
        out.extend_from_slice(&(name.len() as u16).to_be_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(value.len() as u16).to_be_bytes());
        out.extend_from_slice(value);
    }

    /// An IPP response: version 1.1, `status`, the operation attributes
    /// (charset, language), then `groups` as (group tag, attributes).
    pub(crate) fn response(status: u16, groups: &[(u8, Vec<u8>)]) -> Vec<u8> {
        let mut b = vec![1, 1];
        b.extend_from_slice(&status.to_be_bytes());
        b.extend_from_slice(&1i32.to_be_bytes());
        b.push(0x01);
        attr(&mut b, 0x47, "attributes-charset", b"utf-8");
        attr(&mut b, 0x48, "attributes-natural-language", b"en");
        for (tag, attrs) in groups {
            b.push(*tag);
            b.extend_from_slice(attrs);
        }
        b.push(0x03);
        b
    }

    /// Printer attributes: idle, no reasons, takes PDF.
    pub(crate) fn idle_pdf_printer() -> (u8, Vec<u8>) {
        let mut a = Vec::new();
        attr(&mut a, 0x23, "printer-state", &3i32.to_be_bytes());
        attr(&mut a, 0x44, "printer-state-reasons", b"none");
        attr(
            &mut a,
            0x49,
            "document-format-supported",
            b"application/pdf",
        );
        (0x04, a)
    }

    /// Printer attributes as (value tag, name, values): a one-set
    /// attribute's further values go with an empty name.
    pub(crate) fn printer_attrs(list: &[(u8, &str, &[&[u8]])]) -> (u8, Vec<u8>) {
        let mut a = Vec::new();
        for (tag, name, values) in list {
            for (i, v) in values.iter().enumerate() {
                attr(&mut a, *tag, if i == 0 { name } else { "" }, v);
            }
        }
        (0x04, a)
    }

    /// Job attributes: job-id and job-state.
    pub(crate) fn job(id: i32, state: i32) -> (u8, Vec<u8>) {
        let mut a = Vec::new();
        attr(&mut a, 0x21, "job-id", &id.to_be_bytes());
        attr(&mut a, 0x23, "job-state", &state.to_be_bytes());
        (0x02, a)
    }

    /// The value of the first attribute called `name` in an IPP message
    /// (a test double's way to read the job-name a client sent).
    pub(crate) fn attribute_value(message: &[u8], name: &str) -> Option<String> {
        let n = name.len();
        (3..message.len().saturating_sub(n + 2)).find_map(|i| {
            let named = message[i..].starts_with(name.as_bytes())
                && message[i - 2..i] == (n as u16).to_be_bytes();
            if !named {
                return None;
            }
            let at = i + n;
            let len = usize::from(u16::from_be_bytes([message[at], message[at + 1]]));
            message
                .get(at + 2..at + 2 + len)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        })
    }

    /// Job attributes with a job-name and job-originating-user-name, as
    /// Get-Jobs lists a job.
    pub(crate) fn named_job(id: i32, state: i32, name: &str, user: &str) -> (u8, Vec<u8>) {
        let (tag, mut a) = job(id, state);
        attr(&mut a, 0x42, "job-name", name.as_bytes());
        attr(&mut a, 0x42, "job-originating-user-name", user.as_bytes());
        (tag, a)
    }

    /// How a stand-in reads request bodies.
    #[derive(Clone, Copy, Debug, Default)]
    pub(crate) enum Reading {
        /// As fast as they come.
        #[default]
        Fast,
        /// `bytes` every `every`, through a small receive buffer, like a
        /// printer that reads the document as it prints.
        Paced { bytes: usize, every: Duration },
        /// The first `after` bytes of a body, then nothing, through a
        /// small receive buffer, like a printer out of paper that holds
        /// the connection.
        Stops { after: usize },
    }

    /// What a stand-in does with a request.
    #[derive(Clone)]
    pub(crate) enum Answer {
        /// Sends this IPP response.
        Reply(Vec<u8>),
        /// Closes the connection without a word (a lost answer).
        Hang,
        /// Keeps the connection open and says nothing.
        Silent,
    }

    /// Reads one HTTP request (headers and a Content-Length body);
    /// returns the body.
    async fn read_request(
        s: &mut tokio::net::TcpStream,
        reading: Reading,
    ) -> std::io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let mut body = buf.split_off(end);
        while body.len() < length {
            let want = match reading {
                Reading::Fast => chunk.len(),
                Reading::Paced { bytes, every } => {
                    tokio::time::sleep(every).await;
                    bytes.min(chunk.len())
                }
                Reading::Stops { after } if body.len() >= after => std::future::pending().await,
                Reading::Stops { .. } => chunk.len(),
            };
            let n = s.read(&mut chunk[..want]).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            body.extend_from_slice(&chunk[..n]);
        }
        Ok(body)
    }

    /// Starts a server on a free loopback port; `answer` makes the IPP
    /// response to each request from its operation id.
    pub(crate) async fn serve(answer: impl Fn(u16) -> Vec<u8> + Send + Sync + 'static) -> StandIn {
        serve_with(Reading::Fast, move |op, _| Answer::Reply(answer(op))).await
    }

    /// Starts a server on a free loopback port that reads request bodies
    /// as `reading` says; `answer` decides from the operation id and the
    /// request (IPP message and document) what to do.
    pub(crate) async fn serve_with(
        reading: Reading,
        answer: impl Fn(u16, &[u8]) -> Answer + Send + Sync + 'static,
    ) -> StandIn {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if let Reading::Paced { .. } | Reading::Stops { .. } = reading {
            // A small window: the client sees the pace of the reading,
            // not how much a large kernel buffer takes at once.
            socket.set_recv_buffer_size(4096).unwrap();
        }
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(64).unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let ops = Arc::new(Mutex::new(Vec::new()));
        let answer = Arc::new(answer);
        let (counter, seen) = (requests.clone(), ops.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let (counter, seen, answer) = (counter.clone(), seen.clone(), answer.clone());
                tokio::spawn(async move {
                    let Ok(body) = read_request(&mut s, reading).await else {
                        return;
                    };
                    let op = body
                        .get(2..4)
                        .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
                    let reply = answer(op, &body);
                    seen.lock().unwrap().push((op, body));
                    counter.fetch_add(1, Ordering::SeqCst);
                    let body = match reply {
                        Answer::Reply(body) => body,
                        Answer::Hang => return,
                        Answer::Silent => std::future::pending().await,
                    };
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/ipp\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = s.write_all(head.as_bytes()).await;
                    let _ = s.write_all(&body).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        StandIn {
            uri: format!("ipp://127.0.0.1:{port}/ipp/print"),
            requests,
            ops,
            task,
        }
    }

    /// A server that answers every request with `status` and nothing else.
    pub(crate) async fn answering(status: u16) -> StandIn {
        serve(move |_| response(status, &[])).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn info(formats: &[&str], types: &[&str], res: &[(u32, u32)]) -> PrinterInfo {
        PrinterInfo {
            status: PrinterStatus::idle(),
            formats: formats.iter().map(|s| s.to_string()).collect(),
            pwg_types: types.iter().map(|s| s.to_string()).collect(),
            pwg_resolutions: res.to_vec(),
            media_ready: Vec::new(),
            media_default: None,
            media_supported: Vec::new(),
            print_scaling: Vec::new(),
        }
    }

    #[test]
    fn pdf_is_preferred_then_pwg_raster() {
        let both = info(&["image/pwg-raster", "application/pdf"], &["black_1"], &[]);
        assert_eq!(
            both.choose_format((204, 196), None),
            Some(DocumentFormat::Pdf)
        );
        let pwg = info(
            &["image/pwg-raster"],
            &["srgb_8", "sgray_8", "black_1"],
            &[(300, 300), (600, 600)],
        );
        assert_eq!(
            pwg.choose_format((204, 196), None),
            Some(DocumentFormat::PwgRaster(PwgOptions {
                kind: PwgType::Black1,
                dpi: Some((300, 300)),
                media: None,
            }))
        );
        let grey = info(&["image/pwg-raster"], &["sgray_8"], &[(150, 150)]);
        assert_eq!(
            grey.choose_format((400, 400), None),
            Some(DocumentFormat::PwgRaster(PwgOptions {
                kind: PwgType::Sgray8,
                dpi: Some((150, 150)),
                media: None,
            }))
        );
        assert_eq!(
            info(&["image/jpeg"], &[], &[]).choose_format((204, 98), None),
            None
        );
        assert_eq!(
            info(&["image/pwg-raster"], &["srgb_8"], &[]).choose_format((204, 98), None),
            None
        );
        // Resolutions no printer means are left out; only those: no raster.
        let odd = info(&["image/pwg-raster"], &["black_1"], &[(0, 0), (300, 300)]);
        assert_eq!(
            odd.choose_format((204, 196), None),
            Some(DocumentFormat::PwgRaster(PwgOptions {
                kind: PwgType::Black1,
                dpi: Some((300, 300)),
                media: None,
            }))
        );
        let absurd = info(
            &["image/pwg-raster"],
            &["black_1"],
            &[(0, 0), (100_000, 100_000)],
        );
        assert_eq!(absurd.choose_format((204, 196), None), None);
    }

    /// The paper for an A4 fax: the loaded media it suits best (A4 over
    /// Letter, Letter over an envelope), else the default, else the best
    /// supported; none when the printer names no paper.
    #[test]
    fn the_paper_is_chosen_from_ready_then_default_then_supported() {
        let page = (215.1, 296.4);
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mut i = info(&["application/pdf"], &[], &[]);
        assert_eq!(i.choose_media(page), None);
        i.media_supported =
            strings(&["na_letter_8.5x11in", "iso_a4_210x297mm", "iso_a3_297x420mm"]);
        assert_eq!(i.choose_media(page).unwrap().name, "iso_a4_210x297mm");
        i.media_default = Some("na_letter_8.5x11in".into());
        assert_eq!(i.choose_media(page).unwrap().name, "na_letter_8.5x11in");
        i.media_ready = strings(&["na_number-10_4.125x9.5in", "na_letter_8.5x11in"]);
        assert_eq!(i.choose_media(page).unwrap().name, "na_letter_8.5x11in");
        i.media_ready = strings(&["na_letter_8.5x11in", "iso_a4_210x297mm"]);
        let a4 = i.choose_media(page).unwrap();
        assert_eq!(a4.name, "iso_a4_210x297mm");
        assert!(i.takes_media(&a4));
        assert!(!i.takes_media(&Media::named("na_legal_8.5x14in").unwrap()));
        // A B4 page goes on A3 when no B4 is loaded.
        i.media_ready = strings(&["iso_a4_210x297mm", "iso_a3_297x420mm"]);
        assert_eq!(
            i.choose_media((255.0, 364.0)).unwrap().name,
            "iso_a3_297x420mm"
        );
        // PWG raster is rendered onto the chosen paper.
        let pwg = info(&["image/pwg-raster"], &["black_1"], &[(300, 300)]);
        assert_eq!(
            pwg.choose_format((204, 196), Some(a4.clone())),
            Some(DocumentFormat::PwgRaster(PwgOptions {
                kind: PwgType::Black1,
                dpi: Some((300, 300)),
                media: Some(a4),
            }))
        );
    }

    #[test]
    fn uri_defaults() {
        let p = IppPrinter::new("ipp://printer.local/ipp/print").unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.path.as_str()),
            ("printer.local", 631, "/ipp/print")
        );
        let p = IppPrinter::new("ipp://[::1]:8631").unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.path.as_str()),
            ("::1", 8631, "/")
        );
    }

    #[tokio::test]
    async fn unreachable_printer_is_stopped_offline() {
        // Bound but never listening: connects are refused, and while
        // `reserved` lives no other test can take the port.
        let reserved = tokio::net::TcpSocket::new_v4().unwrap();
        reserved.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = reserved.local_addr().unwrap().port();
        let p = IppPrinter::new(&format!("ipp://127.0.0.1:{port}/ipp/print")).unwrap();
        let s = p.status().await;
        assert_eq!(s.state, PrinterState::Stopped);
        assert!(s.has("offline"), "{s}");
        let doc = Document {
            title: "t".into(),
            pages: vec![],
        };
        let e = p.submit(&doc).await.unwrap_err();
        assert!(e.keeps_job(), "{e}");
        assert!(e.to_string().contains("cannot reach"), "{e}");
    }

    /// A printer that answers server-error-busy (or another "not now"
    /// status) keeps the document for a later try; one that answers a
    /// client error refuses it for good.
    #[tokio::test]
    async fn busy_or_unavailable_printers_keep_the_job() {
        use faxgate_ipp::codes::status;
        let doc = Document {
            title: "t".into(),
            pages: vec![],
        };
        for (code, keeps, name) in [
            (status::BUSY, true, "server-error-busy (0x0507)"),
            (
                status::SERVICE_UNAVAILABLE,
                true,
                "server-error-service-unavailable",
            ),
            (status::DEVICE_ERROR, true, "server-error-device-error"),
            (
                status::TEMPORARY_ERROR,
                true,
                "server-error-temporary-error",
            ),
            (
                status::NOT_ACCEPTING_JOBS,
                true,
                "server-error-not-accepting-jobs",
            ),
            (status::NOT_AUTHORIZED, false, "client-error-not-authorized"),
            (
                status::VERSION_NOT_SUPPORTED,
                false,
                "server-error-version-not-supported",
            ),
        ] {
            let server = test_server::answering(code).await;
            let p = IppPrinter::new(&server.uri).unwrap();
            let e = p.submit(&doc).await.unwrap_err();
            assert!(
                matches!(&e, PrintError::Ipp { status: IppFailure::Status(c), .. } if *c == code),
                "{e:?}"
            );
            assert_eq!(e.keeps_job(), keeps, "{e}");
            assert!(e.to_string().contains(name), "{e}");
            assert!(server.requests.load(std::sync::atomic::Ordering::SeqCst) >= 1);
        }
    }

    /// A one-page fine A4 document.
    fn a4_doc() -> Document {
        let mut bmp = faxgate_fax::Bitmap::new(1728, 2287);
        bmp.set_pixel(10, 10, true);
        let page =
            super::super::FaxPage::from_bitmap(&bmp, (204, 196), faxgate_fax::Coding::Mmr).unwrap();
        Document {
            title: "Fax 1 from tokyo".into(),
            pages: vec![page],
        }
    }

    /// An idle printer that reports an empty tray as `media-empty-report`
    /// (an optional tray on a multi-tray printer) gets the job: -report
    /// is informational (RFC 8011 5.4.12). The same condition as
    /// `media-empty-error` stops it, and nothing is sent. (A stand-in
    /// printer: ippeveprinter never reports -error while idle.)
    #[tokio::test]
    async fn a_report_reason_does_not_hold_the_job_but_an_error_does() {
        use faxgate_ipp::codes::{job_state, op, status};
        use test_server::{job, printer_attrs, response, serve};
        for (reason, prints) in [("media-empty-report", true), ("media-empty-error", false)] {
            let server = serve(move |o| match o {
                op::GET_PRINTER_ATTRIBUTES => response(
                    status::OK,
                    &[printer_attrs(&[
                        (0x23, "printer-state", &[&3i32.to_be_bytes()]),
                        (0x44, "printer-state-reasons", &[reason.as_bytes()]),
                        (0x49, "document-format-supported", &[b"application/pdf"]),
                    ])],
                ),
                op::PRINT_JOB => response(status::OK, &[job(3, job_state::PENDING)]),
                _ => response(status::NOT_FOUND, &[]),
            })
            .await;
            let p = IppPrinter::new(&server.uri).unwrap();
            let s = p.status().await;
            assert!(s.has("media-empty"), "{s}");
            let r = p.submit(&a4_doc()).await;
            if prints {
                assert_eq!(s.state, PrinterState::Idle, "{s}");
                assert_eq!(r.unwrap().0.job_id, 3);
                assert_eq!(server.count(op::PRINT_JOB), 1);
            } else {
                assert_eq!(s.state, PrinterState::Stopped, "{s}");
                let e = r.unwrap_err();
                assert!(
                    matches!(e, PrintError::Stopped { .. }) && e.keeps_job(),
                    "{e}"
                );
                assert_eq!(server.count(op::PRINT_JOB), 0);
            }
        }
    }

    /// A Print-Job's job attributes (name = value) and its document.
    async fn sent_job(body: &[u8]) -> (Vec<(String, String)>, Vec<u8>) {
        use futures_util::AsyncReadExt as _;
        let req = AsyncIppParser::new(futures_util::io::Cursor::new(body.to_vec()))
            .parse()
            .await
            .unwrap();
        let attrs = req
            .attributes()
            .groups_of(DelimiterTag::JobAttributes)
            .flat_map(|g| g.attributes().iter())
            .map(|a| (a.name().to_string(), a.value().to_string()))
            .collect();
        let mut doc = Vec::new();
        req.into_payload().read_to_end(&mut doc).await.unwrap();
        (attrs, doc)
    }

    /// The job names the paper chosen for the fax and, for PDF, asks the
    /// printer to fit the page to it where print-scaling is supported; a
    /// PWG raster job is rendered onto that paper. (Stand-in printers
    /// for attributes ippeveprinter does not report, such as
    /// print-scaling-supported; the integration tests check ippeveprinter
    /// itself.)
    #[tokio::test]
    async fn the_job_asks_for_the_chosen_paper_and_fit_scaling() {
        use faxgate_ipp::codes::{job_state, op, status};
        use test_server::{job, printer_attrs, response, serve};
        const LETTER: &[&[u8]] = &[b"na_letter_8.5x11in"];
        const BOTH: &[&[u8]] = &[b"na_letter_8.5x11in", b"iso_a4_210x297mm"];
        const FIT: &[&[u8]] = &[b"auto", b"fit"];
        const NONE: &[&[u8]] = &[b"none"];
        let (media, fit) = (("media", "na_letter_8.5x11in"), ("print-scaling", "fit"));
        let a4 = ("media", "iso_a4_210x297mm");
        for (format, ready, scaling, want) in [
            ("application/pdf", LETTER, FIT, &[media, fit][..]),
            ("application/pdf", BOTH, NONE, &[a4][..]),
            ("image/pwg-raster", BOTH, FIT, &[a4][..]),
        ] {
            let supported = BOTH;
            let server = serve(move |o| match o {
                op::GET_PRINTER_ATTRIBUTES => response(
                    status::OK,
                    &[printer_attrs(&[
                        (0x23, "printer-state", &[&3i32.to_be_bytes()]),
                        (0x44, "printer-state-reasons", &[b"none"]),
                        (0x49, "document-format-supported", &[format.as_bytes()]),
                        (0x44, "pwg-raster-document-type-supported", &[b"black_1"]),
                        (0x44, "media-default", &[b"na_letter_8.5x11in"]),
                        (0x44, "media-ready", ready),
                        (0x44, "media-supported", supported),
                        (0x44, "print-scaling-supported", scaling),
                    ])],
                ),
                op::PRINT_JOB => response(status::OK, &[job(3, job_state::PENDING)]),
                _ => response(status::NOT_FOUND, &[]),
            })
            .await;
            let p = IppPrinter::new(&server.uri).unwrap();
            p.submit(&a4_doc()).await.unwrap();
            let bodies = server.bodies(op::PRINT_JOB);
            assert_eq!(bodies.len(), 1);
            let (attrs, doc) = sent_job(&bodies[0]).await;
            let want: Vec<(String, String)> = want
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect();
            assert_eq!(attrs, want, "{format}");
            if format == "image/pwg-raster" {
                let pages = super::super::pwg::parse_pwg(&doc).unwrap();
                assert_eq!(pages[0].string(1732), "iso_a4_210x297mm");
                assert_eq!((pages[0].field(352), pages[0].field(356)), (595, 842));
            }
        }
    }

    /// A document of `rows` rows of noise, which MMR cannot compress: its
    /// PDF is larger than any socket buffer in these tests.
    fn noisy_doc(rows: u32) -> Document {
        let mut bmp = faxgate_fax::Bitmap::new(1728, rows);
        let mut x: u32 = 0x2545_F491;
        for y in 0..rows {
            for c in 0..1728 {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                if x & 1 == 1 {
                    bmp.set_pixel(c, y, true);
                }
            }
        }
        let page =
            super::super::FaxPage::from_bitmap(&bmp, (204, 196), faxgate_fax::Coding::Mmr).unwrap();
        Document {
            title: "Fax 2 from osaka, received 2026-11-21T10:00:00Z".into(),
            pages: vec![page],
        }
    }

    /// Idle, takes PDF; Print-Job makes job 3.
    fn pdf_printer(o: u16) -> Vec<u8> {
        use faxgate_ipp::codes::{job_state, op, status};
        use test_server::{idle_pdf_printer, job, response};
        match o {
            op::GET_PRINTER_ATTRIBUTES => response(status::OK, &[idle_pdf_printer()]),
            op::PRINT_JOB => response(status::OK, &[job(3, job_state::PENDING)]),
            _ => response(status::NOT_FOUND, &[]),
        }
    }

    /// A printer (a test double) that reads the document `bytes` at a
    /// time every `every`, as one that reads it while it prints, gets it
    /// through inactivity deadlines of `deadlines` (idle, answer), and
    /// makes one job of it. As the print actor does, a try that fails
    /// and keeps the document is tried again; that must not be needed.
    /// Returns how long the first try took.
    async fn slow_reader_case(
        bytes: usize,
        every: Duration,
        deadlines: Option<(Duration, Duration)>,
    ) -> Duration {
        use faxgate_ipp::codes::op;
        use test_server::{Answer, Reading, serve_with};
        let server = serve_with(Reading::Paced { bytes, every }, |o, _| {
            Answer::Reply(pdf_printer(o))
        })
        .await;
        let mut p = IppPrinter::new(&server.uri).unwrap();
        if let Some((idle, answer)) = deadlines {
            p = p.with_deadlines(idle, answer);
        }
        let doc = noisy_doc(300);
        let start = tokio::time::Instant::now();
        let first = p.submit(&doc).await;
        let took = start.elapsed();
        let (failed, result) = match first {
            Err(e) if e.keeps_job() => (Some(e.to_string()), p.resubmit(&doc).await),
            r => (None, r),
        };
        assert_eq!(failed, None, "the first try failed after {took:?}");
        let (job, report) = result.unwrap();
        assert_eq!(job.job_id, 3);
        assert!(report.bytes > 100_000, "{} bytes", report.bytes);
        assert_eq!(server.count(op::PRINT_JOB), 1, "sent again");
        took
    }

    /// A printer that reads a long document slowly, for longer than any
    /// deadline on the whole exchange would allow (here 40 KB/s for
    /// about 4 s against 1 s idle and 2 s answer deadlines; before, a
    /// fixed 120 s cap on the whole exchange failed it as unreachable,
    /// and the retry sent a second Print-Job), gets it once.
    #[tokio::test]
    async fn a_printer_that_reads_slowly_gets_the_job_once() {
        let took = slow_reader_case(
            2048,
            Duration::from_millis(50),
            Some((Duration::from_secs(1), Duration::from_secs(2))),
        )
        .await;
        assert!(
            took > Duration::from_secs(3),
            "the printer read for {took:?}, longer than idle + answer"
        );
    }

    /// A printer that loses its answer to Print-Job (it closes the
    /// connection once it has the whole request, having made job 9 of
    /// it): the try fails keeping the document and saying the printer may
    /// have it; when the printer lists the job (Get-Jobs, by its unique
    /// name, ours), it is followed rather than sent again, whether it is
    /// listed at once or only at the retry. An aborted job of the same
    /// name (made from a document that did not arrive whole) and other
    /// people's jobs are not taken for it. (A test double: a real printer
    /// does not lose answers on demand.)
    #[tokio::test]
    async fn a_print_job_whose_answer_is_lost_is_found_and_not_sent_again() {
        use faxgate_ipp::codes::{job_state, op, status};
        use std::sync::atomic::{AtomicBool, Ordering};
        use test_server::{Answer, Reading, attribute_value, job, named_job, response, serve_with};
        for listed_at_once in [false, true] {
            let listed = Arc::new(AtomicBool::new(listed_at_once));
            let sent_name = Arc::new(std::sync::Mutex::new(String::new()));
            let (l, n) = (listed.clone(), sent_name.clone());
            let user = requesting_user();
            let server = serve_with(Reading::Fast, move |o, body| match o {
                op::PRINT_JOB => {
                    *n.lock().unwrap() = attribute_value(body, "job-name").unwrap_or_default();
                    Answer::Hang
                }
                op::GET_JOBS if l.load(Ordering::SeqCst) => {
                    let ours = n.lock().unwrap().clone();
                    Answer::Reply(response(
                        status::OK,
                        &[
                            named_job(8, job_state::PROCESSING, "Fax 1 from tokyo", &user),
                            named_job(9, job_state::PROCESSING, &ours, &user),
                            named_job(10, job_state::ABORTED, &ours, &user),
                            named_job(11, job_state::PENDING, &ours, "somebody-else"),
                        ],
                    ))
                }
                op::GET_JOBS => Answer::Reply(response(status::OK, &[])),
                op::GET_JOB_ATTRIBUTES => {
                    Answer::Reply(response(status::OK, &[job(9, job_state::COMPLETED)]))
                }
                o => Answer::Reply(pdf_printer(o)),
            })
            .await;
            let p = IppPrinter::new(&server.uri).unwrap();
            let doc = noisy_doc(20);
            let job = match p.submit(&doc).await {
                Ok((job, _)) => {
                    assert!(listed_at_once, "found a job the printer did not list");
                    job
                }
                Err(e) => {
                    assert!(!listed_at_once, "{e}");
                    assert!(
                        matches!(e, PrintError::OutcomeUnknown { whole: true, .. })
                            && e.keeps_job(),
                        "{e:?}"
                    );
                    assert!(e.to_string().contains("may have the job"), "{e}");
                    listed.store(true, Ordering::SeqCst);
                    p.resubmit(&doc).await.unwrap().0
                }
            };
            assert_eq!(*sent_name.lock().unwrap(), doc.title);
            assert_eq!(job.job_id, 9);
            p.follow(job.job_id).await.unwrap();
            assert_eq!(server.count(op::PRINT_JOB), 1, "sent again");
            assert!(server.count(op::GET_JOBS) >= 1);
        }
    }

    /// A printer that stops reading the document, or has all of a request
    /// and never answers, fails the try within the inactivity deadline,
    /// and the error keeps the document; a Print-Job that broke while its
    /// document was going out says the printer did not have it whole.
    /// (Test doubles holding the connection open.)
    #[tokio::test]
    async fn a_printer_that_stops_reading_or_never_answers_fails_at_the_deadline() {
        use faxgate_ipp::codes::op;
        use test_server::{Answer, Reading, serve_with};
        let (idle, answer) = (Duration::from_millis(500), Duration::from_millis(700));
        // Takes the attributes, then reads no more of the document.
        let stuck = serve_with(Reading::Stops { after: 4096 }, |o, _| {
            Answer::Reply(pdf_printer(o))
        })
        .await;
        let quick = |uri: &str| IppPrinter::new(uri).unwrap().with_deadlines(idle, answer);
        // Get-Printer-Attributes has no body to wait for, so it works.
        let start = tokio::time::Instant::now();
        let e = quick(&stuck.uri).submit(&noisy_doc(300)).await.unwrap_err();
        let took = start.elapsed();
        assert!(
            matches!(e, PrintError::OutcomeUnknown { whole: false, .. }),
            "{e:?}"
        );
        assert!(e.keeps_job());
        assert!(
            e.to_string().contains("took none of the request for 500ms"),
            "{e}"
        );
        assert!(took < idle + Duration::from_secs(2), "{took:?}");
        // Reads everything, answers nothing.
        let silent = serve_with(Reading::Fast, |o, _| match o {
            op::GET_PRINTER_ATTRIBUTES => Answer::Silent,
            o => Answer::Reply(pdf_printer(o)),
        })
        .await;
        let start = tokio::time::Instant::now();
        let e = quick(&silent.uri).info().await.unwrap_err();
        assert!(
            matches!(e, PrintError::Unreachable { .. }) && e.keeps_job(),
            "{e:?}"
        );
        assert!(e.to_string().contains("no answer 700ms after"), "{e}");
        assert!(start.elapsed() < answer + Duration::from_secs(2));
    }

    /// A Print-Job that broke while its document was going out (the
    /// printer stopped reading: a jam) leaves a job made of part of it:
    /// that job is canceled, and the next try does not follow it but
    /// sends the document again. (A test double that reads 4 KiB of a
    /// body, then nothing.)
    #[tokio::test]
    async fn a_job_made_of_part_of_a_document_is_canceled_not_followed() {
        use faxgate_ipp::codes::op;
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        use test_server::{Answer, Reading, named_job, response, serve_with};
        let doc = noisy_doc(300);
        let title = doc.title.clone();
        let user = requesting_user();
        let canceled = Arc::new(AtomicBool::new(false));
        let c = canceled.clone();
        let stuck = serve_with(Reading::Stops { after: 4096 }, move |o, _| match o {
            op::GET_JOBS => {
                let state = if c.load(Ordering::SeqCst) {
                    job_state::CANCELED
                } else {
                    job_state::PROCESSING_STOPPED
                };
                Answer::Reply(response(status::OK, &[named_job(3, state, &title, &user)]))
            }
            op::CANCEL_JOB => {
                c.store(true, Ordering::SeqCst);
                Answer::Reply(response(status::OK, &[]))
            }
            o => Answer::Reply(pdf_printer(o)),
        })
        .await;
        let (idle, answer) = (Duration::from_millis(300), Duration::from_millis(500));
        let p = IppPrinter::new(&stuck.uri)
            .unwrap()
            .with_deadlines(idle, answer);
        let e = p.submit(&doc).await.unwrap_err();
        assert!(
            matches!(e, PrintError::OutcomeUnknown { whole: false, .. }),
            "{e:?}"
        );
        assert_eq!(stuck.count(op::CANCEL_JOB), 1, "the partial job canceled");
        // The next try looks first, finds only the canceled job, and sends
        // the document again (which this printer takes no better).
        let again = p.resubmit(&doc).await.unwrap_err();
        assert!(
            matches!(again, PrintError::OutcomeUnknown { whole: false, .. }),
            "followed the partial job: {again:?}"
        );
        // (The stand-in counts a request once it has read all of it, which
        // a stuck Print-Job never is: the looks are counted instead.)
        assert!(stuck.count(op::GET_JOBS) >= 2, "looked at each try");
    }

    #[test]
    fn http_server_errors_are_temporary() {
        assert!(IppFailure::Http(503).is_temporary());
        assert!(IppFailure::Http(500).is_temporary());
        assert!(!IppFailure::Http(404).is_temporary());
        assert!(!IppFailure::NoJobId.is_temporary());
        assert_eq!(
            IppFailure::Http(503).to_string(),
            "HTTP 503 Service Unavailable"
        );
    }
}
