//! The output-stage actor: prints complete received documents (and
//! archives a PDF of each), one at a time, in arrival order.
//!
//! A document is marked printed only after the printer took it (IPP: the
//! job completed). A printer that is stopped (media-empty, jam, offline)
//! keeps the document pending and it is tried again after
//! `printer.retry`; a printer that refuses it for good marks it failed.
//! A crash between the printer's confirmation and the store's update
//! prints the document again on restart (at least once, never lost).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use super::store::{InboxDoc, PrintState, Store};
use super::{Bus, BusEvent};
use crate::print::{Document, DocumentFormat, Printer, PrinterStatus};

/// Handle to the print actor.
#[derive(Clone, Debug)]
pub struct PrintHandle {
    tx: mpsc::Sender<()>,
    status: tokio::sync::watch::Receiver<PrinterStatus>,
}

impl PrintHandle {
    /// Starts the actor. `printer` is `None` when received documents are
    /// only archived.
    pub fn spawn(
        store: Store,
        printer: Option<Printer>,
        archive: Option<PathBuf>,
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
            archive,
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

    /// Archives and prints one document. `Ok(false)`: try again later.
    async fn output(&mut self, doc: &InboxDoc) -> anyhow::Result<bool> {
        let pages = self.store.inbox_pages(doc.id).await?;
        let mut title = format!("Fax {} from {}", doc.id, doc.from);
        if doc.state == super::store::InboxState::Partial {
            title.push_str(" (partial)");
        }
        let document = Document { title, pages };
        let mut archived = None;
        if let Some(dir) = &self.archive {
            let path = dir.join(format!("fax-{:05}-{}.pdf", doc.id, doc.from));
            let bytes = DocumentFormat::Pdf
                .render(&document)
                .context("while rendering the archive PDF")?;
            let p = path.clone();
            tokio::task::spawn_blocking(move || {
                std::fs::create_dir_all(p.parent().context("archive path has no folder")?)?;
                std::fs::write(&p, bytes)?;
                anyhow::Ok(())
            })
            .await
            .context("the archive task panicked")?
            .with_context(|| format!("while writing {}", path.display()))?;
            tracing::info!(doc = doc.id, path = %path.display(), "Archived.");
            archived = Some(path.display().to_string());
        }
        let Some(printer) = &self.printer else {
            self.store
                .set_print_state(
                    doc.id,
                    PrintState::Held,
                    Some("no printer configured".into()),
                    archived,
                )
                .await?;
            return Ok(true);
        };
        match printer.print(&document).await {
            Ok(report) => {
                tracing::info!(doc = doc.id, pages = doc.pages, report = ?report, "Printed.");
                self.store
                    .set_print_state(
                        doc.id,
                        PrintState::Printed,
                        Some(report.destination.clone()),
                        archived,
                    )
                    .await?;
            }
            Err(e) if e.keeps_job() => {
                tracing::warn!(doc = doc.id, error = %e, "Printer cannot take the document now; will retry.");
                self.store
                    .set_print_state(doc.id, PrintState::Pending, Some(e.to_string()), archived)
                    .await?;
                return Ok(false);
            }
            Err(e) => {
                tracing::error!(doc = doc.id, error = %e, "Printer refused the document.");
                self.store
                    .set_print_state(doc.id, PrintState::Failed, Some(e.to_string()), archived)
                    .await?;
            }
        }
        if let Some(d) = self.store.inbox_doc(doc.id).await? {
            self.bus.publish(BusEvent::Inbox(d));
        }
        Ok(true)
    }
}
