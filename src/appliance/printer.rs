//! The output-stage actor: prints complete received documents (and
//! archives a PDF of each, once), one at a time, in arrival order.
//!
//! A document is marked printed only after the printer took it (IPP and
//! CUPS: the job completed). A printer that is stopped (media-empty, jam,
//! offline) or says "not now" keeps the document pending and it is tried
//! again after `printer.retry`; a printer that refuses it for good marks
//! it failed.
//!
//! Once a printer has accepted a document as a job, the job (printer URI
//! and job-id) is stored with it and the document is `submitted`: a job
//! still unfinished after `printer.job_timeout`, a printer unreachable
//! while it is watched, or a restart, means the same job is followed
//! again at the next pass, never that the document is sent again. A job
//! the printer no longer knows (purged after it ended) counts as printed.
//! A document tried before is looked for at the printer first (by its
//! job name, unique per document: [`Printer::resubmit`]), so a Print-Job
//! whose answer was lost (the connection dropped, the printer stopped
//! reading) is followed rather than sent again, after a retry or a
//! restart. Only a printer that cannot list jobs, or a crash between the
//! printer's answer to Print-Job and the store's commit on a first try,
//! sends a document twice (at least once, never lost).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use faxgate_config::appliance::InboxSection;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use super::store::{InboxDoc, PrintState, Store};
use super::{Bus, BusEvent};
use crate::print::{Document, DocumentFormat, Printer, PrinterJob, PrinterStatus, Submission};

/// Handle to the print actor.
#[derive(Clone, Debug)]
pub struct PrintHandle {
    tx: mpsc::Sender<()>,
    status: tokio::sync::watch::Receiver<PrinterStatus>,
}

impl PrintHandle {
    /// Starts the actor. `printer` is `None` when received documents are
    /// only archived; `inbox` says where the archive is, whether
    /// documents are held, and how long an interrupted reception waits
    /// for its sender ([`Store::close_abandoned`]).
    pub fn spawn(
        store: Store,
        printer: Option<Printer>,
        inbox: &InboxSection,
        retry: Duration,
        bus: Bus,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> PrintHandle {
        let (tx, rx) = mpsc::channel(16);
        let (status_tx, status) = tokio::sync::watch::channel(PrinterStatus::idle());
        let actor = PrintActor {
            store,
            printer,
            archive: inbox.archive_dir.clone(),
            hold: !inbox.print,
            resume_window: inbox.resume_window,
            retry,
            bus,
            rx,
            status: status_tx,
            shutdown,
        };
        tracker.spawn(actor.run().instrument(tracing::info_span!("print")));
        PrintHandle { tx, status }
    }

    /// Looks at the print queue now.
    pub async fn wake(&self) {
        let _ = self.tx.try_send(());
    }

    /// The printer's last known status.
    pub fn status(&self) -> PrinterStatus {
        self.status.borrow().clone()
    }
}

struct PrintActor {
    store: Store,
    printer: Option<Printer>,
    archive: Option<PathBuf>,
    /// Keep received documents held (`[inbox] print = false`).
    hold: bool,
    /// How long an interrupted reception waits for its sender.
    resume_window: Duration,
    retry: Duration,
    bus: Bus,
    rx: mpsc::Receiver<()>,
    status: tokio::sync::watch::Sender<PrinterStatus>,
    shutdown: CancellationToken,
}

impl PrintActor {
    async fn run(mut self) {
        loop {
            let mut again = false;
            match self
                .store
                .close_abandoned(self.resume_window, self.hold)
                .await
            {
                Ok(closed) => {
                    for doc in closed {
                        tracing::warn!(doc = doc.id, pages = doc.pages, from = %doc.from, "An interrupted reception will not be resumed; its pages print as a partial fax.");
                        self.bus.publish(BusEvent::Inbox(doc));
                    }
                }
                Err(e) => tracing::error!(
                    error = format!("{e:#}"),
                    "Cannot close abandoned receptions."
                ),
            }
            match self.store.print_queue().await {
                Ok(queue) => {
                    for doc in queue {
                        if self.shutdown.is_cancelled() {
                            break;
                        }
                        match self.output(&doc).await {
                            Ok(true) => {}
                            Ok(false) => again = true,
                            Err(e) => {
                                tracing::error!(
                                    doc = doc.id,
                                    error = format!("{e:#}"),
                                    "Cannot output a received document."
                                );
                                again = true;
                            }
                        }
                    }
                }
                Err(e) => tracing::error!(error = format!("{e:#}"), "Cannot read the print queue."),
            }
            if let Some(p) = &self.printer {
                let _ = self.status.send(p.status().await);
            }
            let wait = if again {
                self.retry
            } else {
                Duration::from_secs(60)
            };
            tokio::select! {
                m = self.rx.recv() => if m.is_none() { break },
                () = tokio::time::sleep(wait) => {}
                () = self.shutdown.cancelled() => break,
            }
        }
        tracing::info!("Output stage stopped.");
    }

    /// Archives (once) and prints one document, or follows the printer
    /// job it already is. `Ok(false)`: try again later. Errors are the
    /// store's; the archive's and the printer's are recorded with the
    /// document.
    async fn output(&mut self, doc: &InboxDoc) -> anyhow::Result<bool> {
        if doc.print == PrintState::Submitted
            && let Some(job) = &doc.printer_job
        {
            return self.follow(doc, job).await;
        }
        let pages = match self.store.inbox_pages(doc.id).await {
            Ok(pages) => pages,
            // The store's database failing is not the document's fault:
            // tried again at the next pass.
            Err(e) if e.chain().any(|c| c.is::<rusqlite::Error>()) => return Err(e),
            Err(e) => {
                // A page file missing or damaged does not mend itself:
                // the document fails with the reason (`faxgate inbox
                // release` tries again once someone has looked).
                let reason = format!("cannot read the received pages: {e:#}");
                tracing::error!(doc = doc.id, reason = %reason, "Cannot print a received document.");
                self.store
                    .set_print_state(doc.id, PrintState::Failed, Some(reason))
                    .await?;
                self.publish(doc.id).await?;
                return Ok(true);
            }
        };
        let title = job_name(doc);
        let document = Document { title, pages };
        if doc.archived.is_none() {
            self.archive(doc, &document).await?;
        }
        let Some(printer) = &self.printer else {
            self.store
                .set_print_state(
                    doc.id,
                    PrintState::Held,
                    Some("no printer configured".into()),
                )
                .await?;
            return Ok(true);
        };
        // A document tried before may have become a job already (a
        // Print-Job whose answer was lost, then a retry or a restart):
        // the printer is asked for it before the document is sent again.
        // A first try cut by a crash is not marked: the printer may hold
        // a job of part of it (some complete such a job), and following
        // that would lose pages; sent again, it prints at least once.
        let sending = async {
            if doc.print_reason.is_some() {
                printer.resubmit(&document).await
            } else {
                printer.submit(&document).await
            }
        };
        let sent = if matches!(printer, Printer::Device(_)) {
            // A device that takes no data holds a write for its stall
            // time; shutdown does not wait for that (the document stays
            // pending). An IPP exchange is finished (bounded by its
            // inactivity deadlines), so that the printer is not left
            // with half a document.
            tokio::select! {
                r = sending => r,
                () = self.shutdown.cancelled() => return Ok(false),
            }
        } else {
            sending.await
        };
        match sent {
            Ok(Submission::Done(report)) => {
                tracing::info!(doc = doc.id, pages = doc.pages, report = ?report, "Printed.");
                self.store
                    .set_print_state(doc.id, PrintState::Printed, Some(report.destination))
                    .await?;
            }
            Ok(Submission::Accepted { job, report }) => {
                // Durable before the job is watched: from here on the job
                // is followed, after a timeout or a restart too, and the
                // document is never sent again.
                tracing::info!(doc = doc.id, report = ?report, "The printer accepted the document.");
                self.store.set_submitted(doc.id, job.clone()).await?;
                self.publish(doc.id).await?;
                return self.follow(doc, &job).await;
            }
            Err(e) if e.keeps_job() => {
                tracing::warn!(doc = doc.id, error = %e, "Printer cannot take the document now; will retry.");
                self.store
                    .set_print_state(doc.id, PrintState::Pending, Some(e.to_string()))
                    .await?;
                return Ok(false);
            }
            Err(e) => {
                tracing::error!(doc = doc.id, error = %e, "Printer refused the document.");
                self.store
                    .set_print_state(doc.id, PrintState::Failed, Some(e.to_string()))
                    .await?;
            }
        }
        self.publish(doc.id).await?;
        Ok(true)
    }

    /// Follows the printer job a document became until it ends. Shutdown
    /// stops following at once: the job is in the store, and the next run
    /// follows it again.
    async fn follow(&mut self, doc: &InboxDoc, job: &PrinterJob) -> anyhow::Result<bool> {
        let followed = match &self.printer {
            Some(p) => {
                tokio::select! {
                    r = p.follow(job) => r,
                    () = self.shutdown.cancelled() => return Ok(false),
                }
            }
            // No printer configured any more: follow the job at its own.
            None => {
                let p = Printer::from_uri(&job.printer);
                tokio::select! {
                    r = async { p?.follow(job).await } => r,
                    () = self.shutdown.cancelled() => return Ok(false),
                }
            }
        };
        match followed {
            Ok(()) => {
                tracing::info!(doc = doc.id, job = %job.destination(), "Printed.");
                self.store
                    .set_print_state(doc.id, PrintState::Printed, Some(job.destination()))
                    .await?;
            }
            Err(e) if e.keeps_job() => {
                tracing::warn!(
                    doc = doc.id,
                    job = %job.destination(),
                    error = %e,
                    "The print job has not ended yet; it is followed again later."
                );
                self.store
                    .set_print_state(doc.id, PrintState::Submitted, Some(e.to_string()))
                    .await?;
                return Ok(false);
            }
            Err(e) => {
                tracing::error!(doc = doc.id, job = %job.destination(), error = %e, "The print job failed.");
                self.store
                    .set_print_state(doc.id, PrintState::Failed, Some(e.to_string()))
                    .await?;
            }
        }
        self.publish(doc.id).await?;
        Ok(true)
    }

    /// Tells the bus what became of a document.
    async fn publish(&self, id: i64) -> anyhow::Result<()> {
        if let Some(d) = self.store.inbox_doc(id).await? {
            self.bus.publish(BusEvent::Inbox(d));
        }
        Ok(())
    }

    /// Writes the archive PDF of a document not archived yet and records
    /// it, so that it is written once however often printing is retried.
    /// A failure is recorded with the document (once per distinct
    /// reason) and does not stop printing; it is tried again on the next
    /// pass while the document waits for the printer.
    async fn archive(&self, doc: &InboxDoc, document: &Document) -> anyhow::Result<()> {
        let Some(dir) = &self.archive else {
            return Ok(());
        };
        let path = dir.join(format!("fax-{:05}-{}.pdf", doc.id, doc.from));
        match write_archive(dir, &path, document) {
            Ok(()) => {
                tracing::info!(doc = doc.id, path = %path.display(), "Archived.");
                self.store
                    .set_archived(doc.id, path.display().to_string())
                    .await
            }
            Err(e) => {
                let reason = format!("{e:#}");
                if doc.archive_error.as_deref() == Some(reason.as_str()) {
                    tracing::debug!(doc = doc.id, error = %reason, "Still cannot archive the document.");
                    return Ok(());
                }
                tracing::error!(
                    doc = doc.id,
                    error = %reason,
                    "Cannot archive the document; it is printed without an archive copy."
                );
                self.store.set_archive_failed(doc.id, reason).await
            }
        }
    }
}

/// The job name of a document at the printer: its number, sender and
/// arrival time, unique per document (numbers start again with a new
/// store), so that a printer's job list can be searched for it
/// ([`Printer::resubmit`]).
fn job_name(doc: &InboxDoc) -> String {
    let received =
        std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(doc.created_ms).unwrap_or(0));
    let mut name = format!(
        "Fax {} from {}, received {}",
        doc.id,
        doc.from,
        humantime::format_rfc3339_seconds(received)
    );
    if doc.state == super::store::InboxState::Partial {
        name.push_str(" (partial)");
    }
    name
}

/// Renders `document` into a temporary file in `dir`, then renames it to
/// `path`: an archive file is whole or absent, never half written.
fn write_archive(dir: &Path, path: &Path, document: &Document) -> anyhow::Result<()> {
    crate::print::blocking(|| std::fs::create_dir_all(dir))
        .with_context(|| format!("while creating {}", dir.display()))?;
    let (tmp, _) = DocumentFormat::Pdf
        .spool(document, Some(dir))
        .context("while writing the archive PDF")?;
    crate::print::blocking(|| {
        tmp.persist(path)?;
        crate::print::sync_dir(dir).map_err(|e| anyhow::anyhow!(e))
    })
    .with_context(|| format!("while writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::appliance::store::InboxState;
    use crate::print::PrinterState;
    use faxgate_fax::{Bitmap, Resolution};

    /// A one-page document received completely from `tokyo`.
    async fn received(store: &Store) -> i64 {
        let d = store
            .begin_receive("tokyo", "job-1", Some("+81 3 1234".into()), Some(1))
            .await
            .unwrap();
        let mut page = Bitmap::new(1728, 60);
        for x in 100..600 {
            page.set_pixel(x, 30, true);
        }
        assert!(
            store
                .store_page(d.id, 0, page, Resolution::Fine)
                .await
                .unwrap()
        );
        store
            .finish_receive(d.id, InboxState::Complete, false)
            .await
            .unwrap();
        d.id
    }

    /// Polls the store until `done` holds (10 s at most).
    async fn wait_doc(store: &Store, id: i64, done: impl Fn(&InboxDoc) -> bool) -> InboxDoc {
        let mut last = None;
        for _ in 0..500 {
            let d = store.inbox_doc(id).await.unwrap().unwrap();
            if done(&d) {
                return d;
            }
            last = Some(d);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("inbox document {id} never reached the expected state: {last:?}");
    }

    /// Waits (10 s at most) until the document's history shows `n` tries
    /// that left it pending. Polled: each try writes the store with an
    /// fsync, which can take a while on a loaded machine.
    async fn wait_tries(store: &Store, id: i64, n: usize) {
        let mut tries = 0;
        for _ in 0..200 {
            tries = store
                .history(Some(format!("inbox:{id}")), 100)
                .await
                .unwrap()
                .iter()
                .filter(|h| h.message.starts_with("pending:"))
                .count();
            if tries >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("only {tries} tries in 10 s");
    }

    fn files(dir: &std::path::Path) -> Vec<PathBuf> {
        match std::fs::read_dir(dir) {
            Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// A printer that is stopped (here a folder that is gone: `stopped`,
    /// `offline-report`) makes `print` fail with an error that keeps the
    /// job. The document stays pending in the store (a fresh store on the
    /// same folder still queues it), is retried every `retry` without
    /// printing, and prints exactly once after the printer comes back.
    /// (Real time with a short retry: the root package's tokio has no
    /// `test-util` for a paused clock.)
    #[tokio::test]
    async fn a_stopped_printer_keeps_the_document_until_it_prints_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let out = dir.path().join("printer");
        let printer = Printer::from_uri(&format!("dir:{}", out.display())).unwrap();
        let id = received(&store).await;
        let retry = Duration::from_millis(200);
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let bus = Bus::default();
        let mut events = bus.subscribe();
        let handle = PrintHandle::spawn(
            store.clone(),
            Some(printer),
            &InboxSection::default(),
            retry,
            bus,
            shutdown.clone(),
            &tracker,
        );

        let d = wait_doc(&store, id, |d| d.print_reason.is_some()).await;
        assert_eq!(d.print, PrintState::Pending, "{d:?}");
        let reason = d.print_reason.unwrap_or_default();
        assert!(
            reason.contains("stopped") && reason.contains("the job is kept"),
            "{reason}"
        );
        // The panel sees the printer stopped, with its reason.
        for _ in 0..500 {
            if handle.status().state == PrinterState::Stopped {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let status = handle.status();
        assert!(
            status.state == PrinterState::Stopped && status.has("offline"),
            "{status}"
        );
        // Durable: what a restarted appliance would find.
        let ids: Vec<i64> = Store::open(&dir.path().join("store"))
            .unwrap()
            .print_queue()
            .await
            .unwrap()
            .iter()
            .map(|d| d.id)
            .collect();
        assert_eq!(ids, vec![id]);
        // Three more retries with the printer still stopped: still
        // pending, nothing printed. Polled (10 s at most) rather than a
        // fixed sleep: each retry writes the store with an fsync, which
        // can take a while on a loaded machine.
        wait_tries(&store, id, 3).await;
        let d = store.inbox_doc(id).await.unwrap().unwrap();
        assert_eq!(d.print, PrintState::Pending);
        assert!(files(&out).is_empty());

        // The printer comes back: the next retry prints it.
        std::fs::create_dir(&out).unwrap();
        let d = wait_doc(&store, id, |d| d.print != PrintState::Pending).await;
        assert_eq!(d.print, PrintState::Printed, "{d:?}");
        let printed = files(&out);
        assert_eq!(printed.len(), 1, "{printed:?}");
        assert_eq!(d.print_reason.as_deref(), printed[0].to_str());
        assert!(std::fs::read(&printed[0]).unwrap().starts_with(b"%PDF-"));
        let ev = events.recv().await.unwrap();
        assert!(
            matches!(&ev, BusEvent::Inbox(d) if d.id == id && d.print == PrintState::Printed),
            "{ev:?}"
        );

        // Exactly once: a wake-up and more retry periods print nothing more.
        handle.wake().await;
        tokio::time::sleep(retry * 4).await;
        assert_eq!(files(&out).len(), 1, "printed again");
        assert!(store.print_queue().await.unwrap().is_empty());
        assert_eq!(
            store.inbox_doc(id).await.unwrap().unwrap().print,
            PrintState::Printed
        );

        shutdown.cancel();
        tracker.close();
        tracker.wait().await;
    }

    /// A printer that answers every IPP request with server-error-busy
    /// (as one does while it prints for someone else or warms up) keeps
    /// the document pending with the printer's answer as the reason, and
    /// it is asked again after `retry`; nothing is marked failed.
    #[tokio::test]
    async fn a_busy_ipp_printer_keeps_the_document_pending() {
        let server =
            crate::print::ipp::test_server::answering(faxgate_ipp::codes::status::BUSY).await;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let id = received(&store).await;
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let _handle = PrintHandle::spawn(
            store.clone(),
            Some(Printer::from_uri(&server.uri).unwrap()),
            &InboxSection::default(),
            Duration::from_millis(100),
            Bus::default(),
            shutdown.clone(),
            &tracker,
        );
        let d = wait_doc(&store, id, |d| d.print_reason.is_some()).await;
        assert_eq!(d.print, PrintState::Pending, "{d:?}");
        let reason = d.print_reason.unwrap_or_default();
        assert!(reason.contains("server-error-busy"), "{reason}");
        // Asked again later, and still pending.
        let seen = server.requests.load(std::sync::atomic::Ordering::SeqCst);
        for _ in 0..500 {
            if server.requests.load(std::sync::atomic::Ordering::SeqCst) > seen + 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(server.requests.load(std::sync::atomic::Ordering::SeqCst) > seen + 2);
        assert_eq!(
            store.inbox_doc(id).await.unwrap().unwrap().print,
            PrintState::Pending
        );
        shutdown.cancel();
        tracker.close();
        tracker.wait().await;
    }

    /// Starts the actor on `store` printing to a new folder `printer`
    /// in `dir` (returned), with an archive folder, retrying every 100 ms.
    fn folder_actor(
        store: &Store,
        dir: &Path,
        archive: Option<PathBuf>,
    ) -> (PathBuf, PrintHandle, CancellationToken, TaskTracker) {
        let out = dir.join("printer");
        std::fs::create_dir(&out).unwrap();
        let uri = format!("dir:{}", out.display());
        let (handle, shutdown, tracker) =
            spawn_actor(store, Some(&uri), archive, Duration::from_millis(100));
        (out, handle, shutdown, tracker)
    }

    /// Starts the actor on `store` with a printer URI, an archive folder
    /// and a retry period.
    fn spawn_actor(
        store: &Store,
        printer: Option<&str>,
        archive: Option<PathBuf>,
        retry: Duration,
    ) -> (PrintHandle, CancellationToken, TaskTracker) {
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let handle = PrintHandle::spawn(
            store.clone(),
            printer.map(|u| Printer::from_uri(u).unwrap()),
            &InboxSection {
                archive_dir: archive,
                ..InboxSection::default()
            },
            retry,
            Bus::default(),
            shutdown.clone(),
            &tracker,
        );
        (handle, shutdown, tracker)
    }

    async fn stop(shutdown: CancellationToken, tracker: TaskTracker) {
        shutdown.cancel();
        tracker.close();
        tracker.wait().await;
    }

    /// An archive folder that cannot be made (its parent is a regular
    /// file, which stops root too) does not stop printing: the document
    /// is printed, and the archive failure is recorded with it (and in
    /// its history) for the panel.
    #[tokio::test]
    async fn an_archive_failure_is_recorded_and_the_document_still_prints() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let id = received(&store).await;
        let file = dir.path().join("not-a-folder");
        std::fs::write(&file, b"").unwrap();
        let archive = file.join("archive");
        let (out, _handle, shutdown, tracker) =
            folder_actor(&store, dir.path(), Some(archive.clone()));
        let d = wait_doc(&store, id, |d| d.print != PrintState::Pending).await;
        assert_eq!(d.print, PrintState::Printed, "{d:?}");
        assert_eq!(files(&out).len(), 1);
        assert_eq!(d.archived, None);
        let err = d.archive_error.unwrap_or_default();
        assert!(err.contains(&archive.display().to_string()), "{err}");
        let history = store
            .history(Some(format!("inbox:{id}")), 100)
            .await
            .unwrap();
        assert!(
            history
                .iter()
                .any(|h| h.message.starts_with("archive failed:")),
            "{history:?}"
        );
        stop(shutdown, tracker).await;
    }

    #[tokio::test]
    async fn a_document_whose_page_cannot_be_read_fails_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let id = received(&store).await;
        let tif = dir.path().join(format!("store/inbox/{id}/0000.tif"));
        std::fs::write(&tif, b"not a TIFF").unwrap();
        let (out, _handle, shutdown, tracker) = folder_actor(&store, dir.path(), None);
        let d = wait_doc(&store, id, |d| d.print != PrintState::Pending).await;
        assert_eq!(d.print, PrintState::Failed, "{d:?}");
        let reason = d.print_reason.unwrap_or_default();
        assert!(reason.contains("0000.tif"), "{reason}");
        assert!(files(&out).is_empty());
        stop(shutdown, tracker).await;
    }

    #[tokio::test]
    async fn a_reception_open_at_a_crash_prints_once_the_actor_starts() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        // A telephone call with one confirmed page when the power went.
        let d = store.begin_receive("pstn", "c9", None, None).await.unwrap();
        let mut page = Bitmap::new(1728, 60);
        page.set_pixel(7, 7, true);
        store
            .store_page(d.id, 0, page, Resolution::Fine)
            .await
            .unwrap();
        store.recover().await.unwrap();
        let (out, _handle, shutdown, tracker) = folder_actor(&store, dir.path(), None);
        let d = wait_doc(&store, d.id, |d| d.print == PrintState::Printed).await;
        assert_eq!(d.state, InboxState::Partial);
        assert_eq!(files(&out).len(), 1);
        stop(shutdown, tracker).await;
    }

    /// While the printer is stopped the document is retried, but its
    /// archive PDF is written once: the same file (inode) and one
    /// `archived` line in its history, however many tries.
    #[tokio::test]
    async fn the_archive_is_written_once_while_printing_is_retried() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let id = received(&store).await;
        let archive = dir.path().join("archive");
        let out = dir.path().join("printer");
        let (_handle, shutdown, tracker) = spawn_actor(
            &store,
            Some(&format!("dir:{}", out.display())),
            Some(archive.clone()),
            Duration::from_millis(100),
        );
        let d = wait_doc(&store, id, |d| d.archived.is_some()).await;
        let path = PathBuf::from(d.archived.unwrap());
        let inode = std::fs::metadata(&path).unwrap().ino();
        wait_tries(&store, id, 4).await;
        assert_eq!(std::fs::metadata(&path).unwrap().ino(), inode, "rewritten");
        assert_eq!(files(&archive), vec![path.clone()]);
        let archived = store
            .history(Some(format!("inbox:{id}")), 100)
            .await
            .unwrap()
            .iter()
            .filter(|h| h.message.starts_with("archived:"))
            .count();
        assert_eq!(archived, 1);
        // The printer comes back: printed, still the one archive file.
        std::fs::create_dir(&out).unwrap();
        let d = wait_doc(&store, id, |d| d.print != PrintState::Pending).await;
        assert_eq!(d.print, PrintState::Printed);
        assert_eq!(std::fs::metadata(&path).unwrap().ino(), inode);
        stop(shutdown, tracker).await;
    }

    /// A stand-in printer that takes PDF and makes job 7 of a Print-Job;
    /// Get-Job-Attributes answers as `phase` says: 0 processing, 1
    /// server-error-busy, 2 completed, 3 client-error-not-found (purged).
    async fn stand_in(
        phase: std::sync::Arc<std::sync::atomic::AtomicU8>,
    ) -> crate::print::ipp::test_server::StandIn {
        use crate::print::ipp::test_server::{idle_pdf_printer, job, response, serve};
        use faxgate_ipp::codes::{job_state, op, status};
        serve(
            move |o| match (o, phase.load(std::sync::atomic::Ordering::SeqCst)) {
                (op::GET_PRINTER_ATTRIBUTES, _) => response(status::OK, &[idle_pdf_printer()]),
                (op::PRINT_JOB, _) => response(status::OK, &[job(7, job_state::PENDING)]),
                (op::GET_JOB_ATTRIBUTES, 0) => {
                    response(status::OK, &[job(7, job_state::PROCESSING)])
                }
                (op::GET_JOB_ATTRIBUTES, 1) => response(status::BUSY, &[]),
                (op::GET_JOB_ATTRIBUTES, 2) => {
                    response(status::OK, &[job(7, job_state::COMPLETED)])
                }
                _ => response(status::NOT_FOUND, &[]),
            },
        )
        .await
    }

    /// A job the printer accepted but that is slow to finish is followed,
    /// never sent again: past the job timeout the document stays
    /// `submitted` with job 7 in the store; while the printer is busy it
    /// stays so; after a restart (a new actor on the reopened store) the
    /// same job is followed; when it completes the document is printed.
    /// One Print-Job in all.
    #[tokio::test]
    async fn a_slow_job_is_followed_to_its_end_and_never_sent_twice() {
        use faxgate_ipp::codes::op;
        use std::sync::atomic::{AtomicU8, Ordering};
        let phase = std::sync::Arc::new(AtomicU8::new(0));
        let printer = stand_in(phase.clone()).await;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let id = received(&store).await;
        let start = |store: &Store| {
            let shutdown = CancellationToken::new();
            let tracker = TaskTracker::new();
            let handle = PrintHandle::spawn(
                store.clone(),
                Some(
                    Printer::from_uri(&printer.uri)
                        .unwrap()
                        .with_job_timeout(Duration::from_millis(300)),
                ),
                &InboxSection::default(),
                Duration::from_millis(100),
                Bus::default(),
                shutdown.clone(),
                &tracker,
            );
            (handle, shutdown, tracker)
        };
        let (_handle, shutdown, tracker) = start(&store);
        let timed_out = |d: &InboxDoc| {
            d.print_reason
                .as_deref()
                .is_some_and(|r| r.contains("still processing"))
        };
        let d = wait_doc(&store, id, timed_out).await;
        assert_eq!(d.print, PrintState::Submitted, "{d:?}");
        let job = d.printer_job.clone().unwrap();
        assert_eq!(
            (job.printer.as_str(), job.job_id),
            (printer.uri.as_str(), 7)
        );
        // Busy while the job is followed: still submitted, still job 7.
        phase.store(1, Ordering::SeqCst);
        let d = wait_doc(&store, id, |d| {
            d.print_reason
                .as_deref()
                .is_some_and(|r| r.contains("server-error-busy"))
        })
        .await;
        assert_eq!(d.print, PrintState::Submitted, "{d:?}");
        phase.store(0, Ordering::SeqCst);
        wait_doc(&store, id, timed_out).await;
        stop(shutdown, tracker).await;

        // A restart: the job is followed, not sent again.
        let store = Store::open(&dir.path().join("store")).unwrap();
        let before = printer.requests.load(Ordering::SeqCst);
        let (_handle, shutdown, tracker) = start(&store);
        for _ in 0..500 {
            if printer.requests.load(Ordering::SeqCst) > before + 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            store.inbox_doc(id).await.unwrap().unwrap().print,
            PrintState::Submitted
        );
        phase.store(2, Ordering::SeqCst);
        let d = wait_doc(&store, id, |d| d.print != PrintState::Submitted).await;
        assert_eq!(d.print, PrintState::Printed, "{d:?}");
        assert_eq!(
            d.print_reason.as_deref(),
            Some(format!("{} job 7", printer.uri).as_str())
        );
        assert_eq!(printer.count(op::PRINT_JOB), 1, "sent again");
        assert!(store.print_queue().await.unwrap().is_empty());
        stop(shutdown, tracker).await;
    }

    /// A printer that purges ended jobs answers client-error-not-found
    /// for the job it accepted: the document counts as printed (the
    /// printer had it), not failed, and is not sent again.
    #[tokio::test]
    async fn a_job_the_printer_no_longer_knows_counts_as_printed() {
        use faxgate_ipp::codes::op;
        let printer = stand_in(std::sync::Arc::new(std::sync::atomic::AtomicU8::new(3))).await;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let id = received(&store).await;
        let (_handle, shutdown, tracker) =
            spawn_actor(&store, Some(&printer.uri), None, Duration::from_millis(100));
        let d = wait_doc(&store, id, |d| {
            !matches!(d.print, PrintState::Pending | PrintState::Submitted)
        })
        .await;
        assert_eq!(d.print, PrintState::Printed, "{d:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(printer.count(op::PRINT_JOB), 1);
        stop(shutdown, tracker).await;
    }

    /// A document (sender's job `job`) received from `osaka` whose one
    /// page is noise: as PWG
    /// raster it is far larger than a pipe holds.
    async fn received_noise(store: &Store, job: &str) -> i64 {
        let d = store
            .begin_receive("osaka", job, None, Some(1))
            .await
            .unwrap();
        let mut page = Bitmap::new(1728, 600);
        let mut x: u32 = 0x9E37_79B9;
        for y in 0..600 {
            for c in 0..1728 {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                if x & 1 == 1 {
                    page.set_pixel(c, y, true);
                }
            }
        }
        assert!(
            store
                .store_page(d.id, 0, page, Resolution::Fine)
                .await
                .unwrap()
        );
        store
            .finish_receive(d.id, InboxState::Complete, false)
            .await
            .unwrap();
        d.id
    }

    /// A device printer that stops taking data (a pipe whose reader stops
    /// reading, as a USB printer out of paper stops its port) does not
    /// hold the print actor: the attempt ends after the stall time, the
    /// document stays pending saying the device is not taking data, the
    /// printer shows stopped, and the runtime runs on meanwhile (a ticker
    /// task keeps ticking). Once the device takes data the document
    /// prints. And shutdown during a stalled write (the default 60 s
    /// stall) is prompt. (Before, the write blocked the actor, and on a
    /// single-threaded runtime everything, for ever.)
    #[tokio::test]
    async fn a_device_that_takes_no_data_keeps_the_document_and_the_actor_responsive() {
        use crate::print::local::tests::{drain, fifo, idle_reader};
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let id = received_noise(&store, "job-8").await;
        let path = fifo(dir.path(), "lp0");
        let reader = idle_reader(&path);
        let uri = format!("device:{}?format=pwg", path.display());
        let ticks = Arc::new(AtomicU32::new(0));
        let ticker = {
            let ticks = ticks.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    ticks.fetch_add(1, Ordering::SeqCst);
                }
            })
        };
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let handle = PrintHandle::spawn(
            store.clone(),
            Some(
                Printer::from_uri(&uri)
                    .unwrap()
                    .with_deadlines(Duration::from_millis(500), Duration::from_secs(1)),
            ),
            &InboxSection::default(),
            Duration::from_millis(200),
            Bus::default(),
            shutdown.clone(),
            &tracker,
        );
        let before = ticks.load(Ordering::SeqCst);
        let d = wait_doc(&store, id, |d| {
            d.print_reason
                .as_deref()
                .is_some_and(|r| r.contains("is not taking data"))
        })
        .await;
        assert_eq!(d.print, PrintState::Pending, "{d:?}");
        assert!(
            ticks.load(Ordering::SeqCst) > before + 10,
            "the runtime stood still during the write"
        );
        for _ in 0..500 {
            if handle.status().blocks_printing() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let status = handle.status();
        assert!(status.to_string().contains("not taking data"), "{status}");
        // Retries meanwhile write nothing more to the full device.
        wait_tries(&store, id, 2).await;

        // The printer takes data again.
        let stop_reading = Arc::new(AtomicBool::new(false));
        let reading = {
            let stop = stop_reading.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    got.extend(drain(&reader));
                }
                got
            })
        };
        let d = wait_doc(&store, id, |d| d.print != PrintState::Pending).await;
        assert_eq!(d.print, PrintState::Printed, "{d:?}");
        stop_reading.store(true, Ordering::SeqCst);
        // What the full pipe held (64 KiB), then the whole document.
        let got = reading.join().unwrap().len();
        assert!(got > 65_536 + 100_000, "{got} bytes");
        stop(shutdown, tracker).await;

        // Shutdown while a write is stalled, with the default stall time.
        let path = fifo(dir.path(), "lp1");
        let _reader = idle_reader(&path);
        let id = received_noise(&store, "job-9").await;
        let (_handle, shutdown, tracker) = spawn_actor(
            &store,
            Some(&format!("device:{}?format=pwg", path.display())),
            None,
            Duration::from_millis(200),
        );
        // The pipe fills, then the write waits for the device.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            store.inbox_doc(id).await.unwrap().unwrap().print,
            PrintState::Pending
        );
        let start = std::time::Instant::now();
        shutdown.cancel();
        tracker.close();
        tokio::time::timeout(Duration::from_secs(3), tracker.wait())
            .await
            .expect("shutdown waited for the stalled device");
        assert!(start.elapsed() < Duration::from_secs(3));
        ticker.abort();
    }

    /// A printer whose answer to Print-Job is lost (`print`: Hang or
    /// Silent), which lists the job it made of it as job `id` (Get-Jobs,
    /// our user and the job-name it got) once `listed` holds, and says
    /// that job completed. Returns it and the job-name it got.
    async fn answer_lost(
        print: crate::print::ipp::test_server::Answer,
        listed: std::sync::Arc<std::sync::atomic::AtomicBool>,
        id: i32,
    ) -> (
        crate::print::ipp::test_server::StandIn,
        std::sync::Arc<std::sync::Mutex<String>>,
    ) {
        use crate::print::ipp::test_server::{
            Answer, Reading, attribute_value, idle_pdf_printer, job, named_job, response,
            serve_with,
        };
        use faxgate_ipp::codes::{job_state, op, status};
        use std::sync::atomic::Ordering;
        use std::sync::{Arc, Mutex};
        let name = Arc::new(Mutex::new(String::new()));
        let n = name.clone();
        let user = std::env::var("USER").unwrap_or_else(|_| "faxgate".into());
        let printer = serve_with(Reading::Fast, move |o, body| match o {
            op::GET_PRINTER_ATTRIBUTES => {
                Answer::Reply(response(status::OK, &[idle_pdf_printer()]))
            }
            op::PRINT_JOB => {
                *n.lock().unwrap() = attribute_value(body, "job-name").unwrap_or_default();
                print.clone()
            }
            op::GET_JOBS if listed.load(Ordering::SeqCst) => {
                let ours = n.lock().unwrap().clone();
                Answer::Reply(response(
                    status::OK,
                    &[named_job(id, job_state::PROCESSING, &ours, &user)],
                ))
            }
            op::GET_JOBS => Answer::Reply(response(status::OK, &[])),
            op::GET_JOB_ATTRIBUTES => {
                Answer::Reply(response(status::OK, &[job(id, job_state::COMPLETED)]))
            }
            _ => Answer::Reply(response(status::NOT_FOUND, &[])),
        })
        .await;
        (printer, name)
    }

    /// A printer that made the job but lost its answer to Print-Job
    /// (closed the connection once it had the whole request) and lists
    /// the job only a moment later: the document stays pending, saying
    /// the printer may have it; after a restart (a new actor on the
    /// reopened store) the printer is asked for the job by its name
    /// (Get-Jobs) before anything is sent, and the job is followed to
    /// completion. One Print-Job in all. (A test double; before, the
    /// retry sent the document again.)
    #[tokio::test]
    async fn a_lost_print_job_answer_is_looked_for_after_a_restart_not_sent_again() {
        use crate::print::ipp::test_server::Answer;
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let listed = Arc::new(AtomicBool::new(false));
        let (printer, name) = answer_lost(Answer::Hang, listed.clone(), 4).await;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let id = received(&store).await;
        // A long retry: the restart comes first.
        let (_handle, shutdown, tracker) =
            spawn_actor(&store, Some(&printer.uri), None, Duration::from_secs(600));
        let d = wait_doc(&store, id, |d| {
            d.print_reason
                .as_deref()
                .is_some_and(|r| r.contains("may have the job"))
        })
        .await;
        assert_eq!(d.print, PrintState::Pending, "{d:?}");
        stop(shutdown, tracker).await;
        // The job name carries the document's number and arrival time.
        let sent = name.lock().unwrap().clone();
        assert!(
            sent.starts_with(&format!("Fax {id} from tokyo, received 20")),
            "{sent}"
        );

        listed.store(true, Ordering::SeqCst);
        restart_follows(dir.path(), id, &printer, 4).await;
    }

    /// A restart on the store in `dir`: document `id` is printed by
    /// following the printer's job `job`; the document was sent once.
    async fn restart_follows(
        dir: &Path,
        id: i64,
        printer: &crate::print::ipp::test_server::StandIn,
        job: i32,
    ) {
        let store = Store::open(&dir.join("store")).unwrap();
        let (_handle, shutdown, tracker) =
            spawn_actor(&store, Some(&printer.uri), None, Duration::from_secs(600));
        let d = wait_doc(&store, id, |d| d.print == PrintState::Printed).await;
        assert_eq!(
            d.print_reason.as_deref(),
            Some(format!("{} job {job}", printer.uri).as_str())
        );
        let sent = printer.count(faxgate_ipp::codes::op::PRINT_JOB);
        assert_eq!(sent, 1, "sent again");
        stop(shutdown, tracker).await;
    }
}
