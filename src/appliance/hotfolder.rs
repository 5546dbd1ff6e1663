//! The hot folder feeder: a document dropped into a `[[hot_folder]]` is
//! queued as an outbox job to that folder's relay user, as `faxgate send`
//! would.
//!
//! Each folder is a [`HotFolderHandle`] actor (scanner crate: settle,
//! claim, read, convert). A feeder task per folder takes its
//! [`HotFolderItem`]s and queues each under the item's key
//! ([`Store::add_job_once`]), so that a document offered again after a
//! restart (the file was still in `processing/` when the appliance
//! stopped or crashed, its job already queued) is recognised and not sent
//! twice. Only then does it confirm the item, and the file moves to
//! `done/`; then the outbox is woken. A document that can never be a fax
//! job (pages of different widths) is refused, and its file goes to
//! `failed/` with the reason at once. A store error leaves the item
//! unconfirmed: the hot folder offers it again with backoff.

use faxgate_config::HotFolderSection;
use faxgate_scanner::{
    ConvertOptions, FileLoader, HotFolderConfig, HotFolderHandle, HotFolderItem,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::appliance::OutboxHandle;
use crate::appliance::store::{Store, check_document};

/// Starts a hot folder and its feeder for each section; documents are
/// converted with `convert(section)`. Fails when a folder is missing or
/// `done/`, `failed/` or `processing/` cannot be made in it.
pub async fn spawn(
    sections: &[HotFolderSection],
    convert: impl Fn(&HotFolderSection) -> ConvertOptions,
    store: &Store,
    outbox: &OutboxHandle,
    cancel: &CancellationToken,
    tracker: &TaskTracker,
) -> anyhow::Result<Vec<HotFolderHandle>> {
    let mut handles = Vec::with_capacity(sections.len());
    for section in sections {
        let mut config = HotFolderConfig::new(&section.dir);
        config.settle = section.settle;
        config.loader = FileLoader::new(convert(section));
        let (tx, rx) = mpsc::channel(1);
        let handle = HotFolderHandle::spawn(config, tx, cancel.child_token(), tracker)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "while starting the hot folder {}: {e}",
                    section.dir.display()
                )
            })?;
        let span =
            tracing::info_span!("hot_folder", dir = %section.dir.display(), to = %section.to);
        tracker.spawn(feed(section.to.clone(), rx, store.clone(), outbox.clone()).instrument(span));
        tracing::info!(dir = %section.dir.display(), to = %section.to, "Hot folder watched.");
        handles.push(handle);
    }
    Ok(handles)
}

/// Queues each document from one hot folder for `to`. Ends when the hot
/// folder stops (its sender is dropped).
async fn feed(
    to: String,
    mut rx: mpsc::Receiver<HotFolderItem>,
    store: Store,
    outbox: OutboxHandle,
) {
    while let Some(HotFolderItem {
        document: doc,
        key,
        ack,
    }) = rx.recv().await
    {
        let file = doc.name.clone();
        if let Err(e) = check_document(&doc.pages) {
            tracing::warn!(%file, error = %format!("{e:#}"), "The document cannot be a fax; its file goes to failed/.");
            let _ = ack.refuse(format!("it cannot be a fax: {e:#}"));
            continue;
        }
        match store
            .add_job_once(&key, &to, &file, doc.pages, doc.resolution)
            .await
        {
            Ok((job, queued)) => {
                if queued {
                    tracing::info!(%file, job = %job.id, pages = job.pages, "Hot folder document queued.");
                } else {
                    tracing::info!(%file, job = %job.id, "Hot folder document was queued before a restart; not queued again.");
                }
                if !ack.confirm() {
                    tracing::info!(%file, job = %job.id, "The hot folder stopped before the confirmation; the file is offered again at the next start and recognised then.");
                }
                if queued {
                    outbox.wake().await;
                }
            }
            Err(e) => {
                // Unconfirmed: the hot folder offers it again later.
                tracing::error!(%file, error = %format!("{e:#}"), "Cannot queue the hot folder document; it is offered again later.");
                drop(ack);
            }
        }
    }
}
