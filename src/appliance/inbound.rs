//! The answering actor: takes the relay client's incoming demands,
//! accepts them when the appliance can receive (it answers, and the inbox
//! is not full), and runs a receiving fax session for each.
//!
//! A received page is stored durably before the engine answers MCF
//! ([`Hooks::page_received`]). The caller's NSS job tag names the job and
//! the page index it starts at, so a resumed job continues the same
//! inbox document (or, if that one ended partial and was printed, a new
//! one with the rest: see [`Store::begin_receive`]) and a page that
//! arrives a second time (its MCF was lost) is answered MCF again without
//! being stored twice.

use anyhow::Context as _;
use faxgate_config::{FaxSection, InboxSection};
use faxgate_fax::Bitmap;
use faxgate_fax::t30::{self, Params, Role, T30};
use faxgate_relay::client::Incoming;
use faxgate_relay::{IncomingDemand, RelayClient};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use super::session::{self, Hooks, JobTag, SessionEnd};
use super::store::{InboxDoc, InboxState, Store};
use super::{Bus, BusEvent, PrintHandle, fax_caps};

/// Everything a receiving session needs.
#[derive(Clone, Debug)]
pub struct Inbound {
    /// The store.
    pub store: Store,
    /// Fax settings (identity, capabilities, timers, `answer`).
    pub fax: FaxSection,
    /// Inbox policy (hold, `max_held`).
    pub inbox: InboxSection,
    /// The output stage, woken when a document is complete.
    pub print: PrintHandle,
    /// The event bus.
    pub bus: Bus,
}

impl Inbound {
    /// Starts the answering loop on the relay client's demands.
    pub fn spawn(
        self,
        _relay: RelayClient,
        mut incoming: Incoming,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) {
        let sessions = tracker.clone();
        tracker.spawn(
            async move {
                loop {
                    let demand = tokio::select! {
                        d = incoming.recv() => match d {
                            Some(d) => d,
                            None => break,
                        },
                        () = shutdown.cancelled() => break,
                    };
                    let me = self.clone();
                    let park = shutdown.child_token();
                    let span = tracing::info_span!("receive", from = %demand.from, session = demand.session_id);
                    sessions.spawn(async move { me.answer(demand, park).await }.instrument(span));
                }
                tracing::info!("Answering stopped.");
            }
            .instrument(tracing::info_span!("inbound")),
        );
    }

    /// Rejects a demand (the caller gets REJECTED) and records why.
    async fn reject(&self, demand: IncomingDemand, why: String) {
        let from = demand.from.clone();
        demand.reject();
        let noted = self
            .store
            .note(
                format!("session:{from}"),
                format!("demand from {from} rejected: {why}"),
            )
            .await;
        if let Err(e) = noted {
            tracing::warn!(error = format!("{e:#}"), "Cannot record a rejected demand.");
        }
    }

    /// Accepts or rejects one demand, then receives.
    async fn answer(self, demand: IncomingDemand, park: CancellationToken) {
        if !self.fax.answer {
            tracing::info!("Demand rejected: set not to answer.");
            self.reject(demand, "set not to answer".into()).await;
            return;
        }
        match self.store.held_count().await {
            Ok(n) if n >= self.inbox.max_held => {
                tracing::warn!(held = n, "Demand rejected: the inbox is full.");
                self.reject(demand, format!("the inbox is full ({n} held)"))
                    .await;
                return;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(
                    error = format!("{e:#}"),
                    "Demand rejected: the store failed."
                );
                demand.reject();
                return;
            }
        }
        let from = demand.from.clone();
        let mut stream = match demand.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::info!(error = %e, "Demand could not be accepted.");
                return;
            }
        };
        let config = t30::Config {
            role: Role::Answerer,
            ident: self.fax.ident.clone(),
            caps: fax_caps(&self.fax),
            timers: super::timers(&self.fax),
            non_standard: None,
            max_bad_percent: self.fax.max_bad_percent,
            max_consecutive_bad: self.fax.max_consecutive_bad,
            // T.38 over TCP carries no training check (TCF).
            training: false,
        };
        let engine = match T30::new(config, std::time::Instant::now()) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, "Bad fax settings; hanging up.");
                let _ = stream.close().await;
                return;
            }
        };
        let mut hooks = ReceiverHooks {
            me: &self,
            from: from.clone(),
            doc: None,
            tag: None,
        };
        let end = session::run(
            &mut stream,
            engine,
            false,
            &mut hooks,
            CancellationToken::new(),
            park,
        )
        .await;
        // Recorded before the session's close, which a peer that does not
        // end its side can hold up to the relay's terminate deadline.
        let doc = hooks.doc.take();
        if let Err(e) = self.finish(&from, doc, end).await {
            tracing::error!(error = format!("{e:#}"), "Cannot record the reception.");
        }
        if let Err(e) = stream.close().await {
            tracing::debug!(error = %e, "Session close was not clean.");
        }
    }

    async fn finish(
        &self,
        from: &str,
        doc: Option<InboxDoc>,
        end: SessionEnd,
    ) -> anyhow::Result<()> {
        let (state, reason) = match &end {
            SessionEnd::T30(o) => match &o.result {
                Ok(()) if o.remote_ended_early => (InboxState::Partial, None),
                Ok(()) => (InboxState::Complete, None),
                Err(f) => (InboxState::Interrupted, Some(format!("T.30: {f}"))),
            },
            SessionEnd::Parked => (InboxState::Interrupted, Some("shutdown".to_owned())),
            SessionEnd::Error(e) => (InboxState::Interrupted, Some(format!("{e:#}"))),
        };
        let Some(doc) = doc else {
            let why = reason.as_deref().unwrap_or("no pages");
            tracing::warn!(reason = why, "Session ended before any document.");
            self.store
                .note(
                    format!("session:{from}"),
                    format!("session from {from} ended before any page: {why}"),
                )
                .await?;
            return Ok(());
        };
        let ending = Ending::new(&self.store, &self.print, &self.bus, &self.inbox);
        let why = reason
            .as_ref()
            .map(|r| format!("session from {from} ended: {r}"));
        let done = ending
            .close(doc.id, why, |fresh| {
                // EOP for a document we do not have every page of would
                // be a sender bug; keep it open for a resume rather than
                // print a hole. Nor print a document without pages: a
                // continuation whose session only repeated pages of the
                // partial document before it.
                match (state, fresh.pages_expected) {
                    (InboxState::Complete, Some(n)) if fresh.pages < n => InboxState::Interrupted,
                    (InboxState::Complete | InboxState::Partial, _) if fresh.pages == 0 => {
                        InboxState::Interrupted
                    }
                    // A caller without faxgate's job tag cannot resume:
                    // the pages it sent print now.
                    (InboxState::Interrupted, None) if fresh.pages > 0 => InboxState::Partial,
                    (s, _) => s,
                }
            })
            .await?;
        match done.state {
            InboxState::Complete | InboxState::Partial => {
                tracing::info!(doc = done.id, pages = done.pages, state = ?done.state, "Fax received.");
            }
            _ => tracing::info!(
                doc = done.id,
                pages = done.pages,
                reason = reason.as_deref().unwrap_or(""),
                "Reception interrupted; waiting for the sender to resume."
            ),
        }
        Ok(())
    }
}

/// What ends a reception, relay or telephone alike: the reason noted
/// against the document, its final state, the output stage woken for a
/// document that prints, and the bus told.
pub(super) struct Ending<'a> {
    store: &'a Store,
    print: &'a PrintHandle,
    bus: &'a Bus,
    /// Keep received documents held (`[inbox] print = false`).
    hold: bool,
}

impl<'a> Ending<'a> {
    /// The ending of receptions into `store`, printing through `print`
    /// unless `inbox` holds documents.
    pub fn new(
        store: &'a Store,
        print: &'a PrintHandle,
        bus: &'a Bus,
        inbox: &InboxSection,
    ) -> Self {
        Ending {
            store,
            print,
            bus,
            hold: !inbox.print,
        }
    }

    /// Closes document `id`: notes `why` (if the reception did not end
    /// cleanly) in its history, re-reads it so `state_of` judges the pages
    /// actually stored, records that state, wakes the output stage if the
    /// document is complete or partial (both print), and publishes it.
    pub async fn close(
        &self,
        id: i64,
        why: Option<String>,
        state_of: impl FnOnce(&InboxDoc) -> InboxState,
    ) -> anyhow::Result<InboxDoc> {
        if let Some(why) = why {
            self.store.note(format!("inbox:{id}"), why).await?;
        }
        let fresh = self
            .store
            .inbox_doc(id)
            .await?
            .context("the inbox document vanished")?;
        let state = state_of(&fresh);
        let done = self.store.finish_receive(id, state, self.hold).await?;
        if matches!(state, InboxState::Complete | InboxState::Partial) {
            self.print.wake().await;
        }
        self.bus.publish(BusEvent::Inbox(done.clone()));
        Ok(done)
    }
}

struct ReceiverHooks<'a> {
    me: &'a Inbound,
    from: String,
    doc: Option<InboxDoc>,
    tag: Option<JobTag>,
}

impl Hooks for ReceiverHooks<'_> {
    async fn need_page(&mut self, index: u32, _params: Params) -> anyhow::Result<Vec<u8>> {
        anyhow::bail!(
            "the caller asked us for page {} although we answered",
            index + 1
        )
    }

    async fn page_sent(&mut self, _index: u32) -> anyhow::Result<()> {
        Ok(())
    }

    async fn peer(
        &mut self,
        ident: Option<String>,
        nonstandard: Option<Vec<u8>>,
    ) -> anyhow::Result<()> {
        // A caller without faxgate's tag (another T.38 terminal) gets a
        // document of its own per session.
        let tag = nonstandard.as_deref().and_then(JobTag::parse);
        let (job_id, expected) = match &tag {
            Some(t) => (t.job_id.clone(), Some(t.total_pages)),
            None => (format!("{:016x}", rand::random::<u64>()), None),
        };
        let doc = self
            .me
            .store
            .begin_receive(&self.from, &job_id, ident, expected)
            .await?;
        if let Some(t) = &tag {
            // Pages of the job here: those of this document and, for a
            // continuation, those of the partial document(s) before it.
            let have = doc.first_page + doc.pages;
            anyhow::ensure!(
                t.first_page <= have,
                "the caller resumes job {} at page {} but only {have} pages are here",
                t.job_id,
                t.first_page + 1,
            );
            if have > 0 {
                tracing::info!(job_id = %t.job_id, have, resume_at = t.first_page + 1, doc = doc.id, "Job resumes.");
            }
            if doc.first_page > 0 {
                tracing::info!(
                    job_id = %t.job_id,
                    doc = doc.id,
                    from_page = doc.first_page + 1,
                    "The job's earlier pages ended as a partial document; the rest goes to a new one."
                );
            }
        }
        self.tag = tag;
        self.doc = Some(doc);
        Ok(())
    }

    async fn page_received(
        &mut self,
        index: u32,
        params: Params,
        page: Bitmap,
    ) -> anyhow::Result<()> {
        let doc = self
            .doc
            .as_ref()
            .context("a page arrived before the session's setup")?;
        let number = self.tag.as_ref().map_or(0, |t| t.first_page) + index;
        // A page before this document's first (a continuation's) is in
        // the partial document before it, stored and printed: MCF again.
        let stored = match number.checked_sub(doc.first_page) {
            Some(local) => {
                self.me
                    .store
                    .store_page(doc.id, local, page, params.resolution)
                    .await?
            }
            None => false,
        };
        if stored {
            tracing::info!(doc = doc.id, page = number + 1, "Page stored.");
            let job_id = match &self.tag {
                Some(t) => t.job_id.clone(),
                None => doc.job_id.clone(),
            };
            self.me.bus.publish(BusEvent::PageStored {
                job_id,
                page: number + 1,
            });
        } else {
            tracing::info!(
                doc = doc.id,
                page = number + 1,
                "Page already stored (repeated); not kept twice."
            );
        }
        Ok(())
    }

    fn negotiated(&mut self, params: Params) {
        tracing::info!(?params, "Negotiated.");
    }
}
