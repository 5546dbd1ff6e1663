//! The telephone-line answering actor: a Class 1 fax modem (`[modem]`)
//! that answers fax calls and puts each fax in the inbox, where the
//! output stage prints it like a fax received over the relay.
//!
//! One call at a time (a modem is one line). On each RING the actor
//! checks that the inbox has room (if not, the call is left ringing and
//! noted), answers, and runs [`fax::receive`]. A received page is stored
//! durably before MCF confirms it ([`fax::Pages`]). A document is from
//! the user [`FROM`], with a fresh random job id per call, and is begun
//! at its first page, with the sender's TSI. A PSTN sender cannot resume
//! a call, so a call that breaks off after some pages ends
//! [`InboxState::Partial`] and those pages print; a call that brought no
//! page is only noted in the history.
//!
//! The same actor places the outbox's calls to telephone numbers (jobs
//! to `tel:NUMBER`, [`PstnHandle::dial`]), between incoming calls: the
//! modem is one line. Each page of such a call is taken from the job's
//! stored pages when T.30 needs it, and recorded delivered once the
//! receiver confirmed it (MCF); a retry sends the pages not yet
//! confirmed, as a new fax (a fax machine cannot resume a document).
//!
//! A missing device or a modem that refuses its setup is retried with
//! backoff, never fatal to the daemon; calls asked for meanwhile fail at
//! once (the outbox retries them). On shutdown a call in progress is hung
//! up and ends as a failed one would.

use std::time::Duration;

use anyhow::Context as _;
use faxgate_config::{FaxSection, InboxSection, ModemSection};
use faxgate_fax::t30::{self, Failure, Outcome, Params, Role};
use faxgate_fax::{Bitmap, Resolution};
use faxgate_modem::class1::Class1;
use faxgate_modem::fax::{self, CallError, Document, Page, Pages};
use faxgate_modem::port::SerialPort;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use super::inbound::Ending;
use super::store::{InboxDoc, InboxState, JobState, Store};
use super::{Bus, BusEvent, PrintHandle, fax_caps};

/// The `from` of every document received on the telephone line.
pub const FROM: &str = "pstn";

/// First delay before the modem is set up again after a failure; it
/// doubles (with jitter) up to [`RETRY_MAX`].
const RETRY_INITIAL: Duration = Duration::from_secs(2);

/// Longest delay between attempts to set up the modem.
const RETRY_MAX: Duration = Duration::from_secs(300);

/// A RING this soon after one that was refused belongs to the same call
/// (a line rings every 5 to 6 s): it is not noted again.
const SAME_CALL: Duration = Duration::from_secs(12);

/// Everything the answering actor needs.
#[derive(Clone, Debug)]
pub struct Pstn {
    /// The store.
    pub store: Store,
    /// The modem and its setup.
    pub modem: ModemSection,
    /// Fax settings (identity, capabilities, timers).
    pub fax: FaxSection,
    /// Inbox policy (hold, `max_held`).
    pub inbox: InboxSection,
    /// The output stage, woken when a document is complete.
    pub print: PrintHandle,
    /// The event bus.
    pub bus: Bus,
}

/// A call the outbox asks for: fax a queued job's pages to a number.
#[derive(Debug)]
pub struct Call {
    /// The number to dial (a dial string).
    pub number: String,
    /// The caller's T.30 settings (identity, capabilities, timers).
    pub config: t30::Config,
    /// Pages in this call, and the first one's form.
    pub pages: u32,
    /// Resolution and scan line width of the document.
    pub form: (Resolution, u32),
    /// Where the pages come from and are recorded delivered.
    pub doc: JobPages,
    /// The user cancelled the job: hang up.
    pub cancel: CancellationToken,
}

/// A [`Call`] with the way back for its end: the engine's outcome, or why
/// there was no proper call (dialing failed, the modem failed).
#[derive(Debug)]
struct Dial {
    call: Call,
    reply: oneshot::Sender<Result<Outcome, String>>,
}

/// Handle to the line's actor, for placing calls.
#[derive(Clone, Debug)]
pub struct PstnHandle {
    tx: mpsc::Sender<Dial>,
}

impl PstnHandle {
    /// Places a call once the line is free, and waits for its end.
    pub async fn dial(&self, call: Call) -> Result<Outcome, String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Dial { call, reply })
            .await
            .map_err(|_| "the telephone line's actor has stopped".to_owned())?;
        rx.await
            .map_err(|_| "the telephone line's actor has stopped".to_owned())?
    }
}

/// A queued job's pages, read from the store as T.30 asks for them;
/// delivered pages are recorded at once (after MCF).
#[derive(Debug)]
pub struct JobPages {
    /// The store.
    pub store: Store,
    /// The event bus (job progress).
    pub bus: Bus,
    /// The job.
    pub job_id: String,
    /// The job's page this call starts at (0-based).
    pub first: u32,
    /// Pages of this call confirmed so far.
    pub delivered: u32,
}

impl Document for JobPages {
    async fn page(&mut self, index: u32) -> Result<Page, String> {
        if index == 0 {
            // The call is answered and T.30 wants the first page.
            let job = self
                .store
                .set_job_state(&self.job_id, JobState::Sending, None, None)
                .await
                .map_err(|e| format!("{e:#}"))?;
            self.bus.publish(BusEvent::Job(job));
        }
        let (bitmap, resolution) = self
            .store
            .job_page(&self.job_id, self.first + index)
            .await
            .map_err(|e| format!("{e:#}"))?;
        Ok(Page { bitmap, resolution })
    }

    async fn delivered(&mut self, index: u32) -> Result<(), String> {
        let job = self
            .store
            .page_delivered(&self.job_id, self.first + index)
            .await
            .map_err(|e| format!("{e:#}"))?;
        self.delivered = self.delivered.max(index + 1);
        tracing::info!(
            page = self.first + index + 1,
            of = job.pages,
            "Page delivered."
        );
        self.bus.publish(BusEvent::Job(job));
        Ok(())
    }
}

/// How a call ended, for the inbox.
enum CallEnd {
    /// The engine finished (well or not).
    T30(Outcome),
    /// The modem or the store failed.
    Error(CallError),
    /// Shutdown hung up the call.
    Shutdown,
}

impl Pstn {
    /// Starts the line's actor: it answers calls (if `[modem] answer`)
    /// and places the calls asked for through the handle.
    pub fn spawn(self, shutdown: CancellationToken, tracker: &TaskTracker) -> PstnHandle {
        let (tx, rx) = mpsc::channel(16);
        let span = tracing::info_span!("pstn", device = %self.modem.device);
        tracker.spawn(async move { self.run(rx, shutdown).await }.instrument(span));
        PstnHandle { tx }
    }

    async fn run(self, mut dials: mpsc::Receiver<Dial>, shutdown: CancellationToken) {
        // Consecutive failures of the modem, for the backoff.
        let mut failures = 0u32;
        let mut last_error = String::new();
        'setup: loop {
            if failures > 0 {
                let delay = super::outbox::backoff(RETRY_INITIAL, RETRY_MAX, failures - 1);
                let until = tokio::time::Instant::now() + delay;
                loop {
                    tokio::select! {
                        () = tokio::time::sleep_until(until) => break,
                        Some(d) = dials.recv() => {
                            let _ = d.reply.send(Err(format!("the fax modem is not working: {last_error}")));
                        }
                        () = shutdown.cancelled() => break 'setup,
                    }
                }
            }
            let mut modem = match self.open().await {
                Ok(m) => m,
                Err(e) => {
                    last_error = format!("{e:#}");
                    failures += 1;
                    let retry_in = super::outbox::backoff(RETRY_INITIAL, RETRY_MAX, failures - 1);
                    tracing::error!(
                        error = format!("{e:#}"),
                        ?retry_in,
                        "Cannot set up the fax modem; no fax calls are answered until it works. Will retry."
                    );
                    continue 'setup;
                }
            };
            tracing::info!("Waiting for calls.");
            let mut refused_at: Option<tokio::time::Instant> = None;
            loop {
                let ring = tokio::select! {
                    r = modem.wait_for_ring() => r,
                    Some(d) = dials.recv() => {
                        if !self.place_call(&mut modem, d, &shutdown).await {
                            if shutdown.is_cancelled() {
                                break 'setup;
                            }
                            last_error = "the modem failed during a call".into();
                            failures += 1;
                            continue 'setup;
                        }
                        // The modem works: a call (or a cancel) that ended
                        // with it hung up is no failure, and the backoff
                        // starts afresh.
                        failures = 0;
                        tracing::info!("Waiting for calls.");
                        continue;
                    }
                    () = shutdown.cancelled() => break 'setup,
                };
                if let Err(e) = ring {
                    failures += 1;
                    tracing::error!(
                        error = %e,
                        "The fax modem failed while waiting for calls; setting it up again."
                    );
                    continue 'setup;
                }
                failures = 0;
                if !self.modem.answer {
                    continue;
                }
                // Every ring asks again, so a call still ringing when the
                // inbox gets room is answered; the refusal is noted once
                // per call.
                let now = tokio::time::Instant::now();
                let same_call = refused_at.is_some_and(|t| now - t < SAME_CALL);
                match self.room().await {
                    Ok(()) => refused_at = None,
                    Err(why) => {
                        refused_at = Some(now);
                        if !same_call {
                            tracing::warn!(reason = %why, "Call not answered.");
                            self.note(format!(
                                "a call on {} was not answered: {why}",
                                self.modem.device
                            ))
                            .await;
                        }
                        continue;
                    }
                }
                if !self.take_call(&mut modem, &shutdown).await {
                    // The modem failed or we are stopping: set it up
                    // again from scratch (or leave).
                    if shutdown.is_cancelled() {
                        break 'setup;
                    }
                    failures += 1;
                    continue 'setup;
                }
            }
        }
        tracing::info!("Answering on the telephone line stopped.");
    }

    /// Places one call for the outbox and replies with its end. Returns
    /// whether the modem can take the next call as it is.
    async fn place_call(
        &self,
        modem: &mut Class1<SerialPort>,
        dial: Dial,
        shutdown: &CancellationToken,
    ) -> bool {
        let Dial {
            call:
                Call {
                    number,
                    config,
                    pages,
                    form,
                    mut doc,
                    cancel,
                },
            reply,
        } = dial;
        let span = tracing::info_span!("send", to = %number, job_id = %doc.job_id);
        async {
            tracing::info!(pages, first = doc.first + 1, "Dialing.");
            let ended = {
                let call = fax::send(modem, &number, config, pages, form, &mut doc);
                tokio::select! {
                    r = call => Ended::Call(r),
                    () = cancel.cancelled() => Ended::Cancelled,
                    () = shutdown.cancelled() => Ended::Shutdown,
                }
            };
            let (result, modem_ok) = match ended {
                Ended::Call(Ok(o)) => (Ok(o), true),
                Ended::Call(Err(
                    e @ CallError::Modem(faxgate_modem::ModemError::DialFailed { .. }),
                )) => (Err(format!("{e:#}")), true),
                Ended::Call(Err(e @ CallError::Modem(_))) => (Err(format!("{e:#}")), false),
                Ended::Call(Err(e)) => (Err(format!("{e:#}")), true),
                Ended::Cancelled => (Ok(cut_short(Failure::Cancelled, doc.delivered)), false),
                Ended::Shutdown => (Err("shutdown; the call was hung up".to_owned()), false),
            };
            // Dropped mid-command (a cancel, a modem error): once the
            // modem confirms the hangup it is in command mode and takes
            // the next call as it is; only one that does not is set up
            // again (and counts as a failure of the modem). A cancel is
            // the user's, never the modem's fault.
            let usable = modem_ok || {
                let hung_up = modem.hangup().await.is_ok() || modem.hangup().await.is_ok();
                if !hung_up {
                    tracing::warn!("The modem did not confirm the hangup.");
                }
                hung_up
            };
            let _ = reply.send(result);
            usable
        }
        .instrument(span)
        .await
    }

    /// Opens the device and puts the modem in fax Class 1.
    async fn open(&self) -> anyhow::Result<Class1<SerialPort>> {
        let port = SerialPort::open(&self.modem.device)?;
        let mut modem = Class1::on_port(port)?;
        modem
            .init(&self.modem.init)
            .await
            .with_context(|| format!("while setting up the modem on {}", self.modem.device))?;
        Ok(modem)
    }

    /// Whether the inbox can take another document.
    async fn room(&self) -> Result<(), String> {
        match self.store.held_count().await {
            Ok(n) if n >= self.inbox.max_held => Err(format!("the inbox is full ({n} held)")),
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "The store failed.");
                Err(format!("the store failed: {e:#}"))
            }
        }
    }

    /// A line in the history about the line (best effort).
    async fn note(&self, message: String) {
        if let Err(e) = self.store.note(format!("session:{FROM}"), message).await {
            tracing::warn!(
                error = format!("{e:#}"),
                "Cannot record a call in the history."
            );
        }
    }

    /// Answers and receives one call, then records it. Returns whether
    /// the modem can take the next call as it is (false: set it up again).
    async fn take_call(
        &self,
        modem: &mut Class1<SerialPort>,
        shutdown: &CancellationToken,
    ) -> bool {
        let job_id = format!("{:016x}", rand::random::<u64>());
        let span = tracing::info_span!("receive", from = FROM, %job_id);
        async {
            let config = t30::Config {
                role: Role::Answerer,
                ident: self.fax.ident.clone(),
                caps: fax_caps(&self.fax),
                timers: super::timers(&self.fax),
                non_standard: None,
                max_bad_percent: self.fax.max_bad_percent,
                max_consecutive_bad: self.fax.max_consecutive_bad,
                // The driver turns training (TCF) on; ECM and MMR as
                // [fax] allows them.
                training: true,
            };
            let mut reception = Reception {
                me: self,
                job_id: job_id.clone(),
                doc: None,
            };
            let end = tokio::select! {
                r = fax::receive(modem, config, &mut reception) => match r {
                    Ok(o) => CallEnd::T30(o),
                    Err(e) => CallEnd::Error(e),
                },
                () = shutdown.cancelled() => CallEnd::Shutdown,
            };
            let modem_ok = match &end {
                CallEnd::T30(_) => true,
                CallEnd::Error(CallError::Modem(_)) => false,
                CallEnd::Error(_) => true,
                CallEnd::Shutdown => {
                    // The call was dropped mid-command; the first command
                    // may only end the modem's data mode.
                    let hung_up = modem.hangup().await.is_ok() || modem.hangup().await.is_ok();
                    if !hung_up {
                        tracing::warn!("The modem did not confirm the hangup.");
                    }
                    false
                }
            };
            let doc = reception.doc.take();
            if let Err(e) = self.finish(&job_id, doc, end).await {
                tracing::error!(error = format!("{e:#}"), "Cannot record the reception.");
            }
            modem_ok
        }
        .instrument(span)
        .await
    }

    async fn finish(
        &self,
        job_id: &str,
        doc: Option<InboxDoc>,
        end: CallEnd,
    ) -> anyhow::Result<()> {
        let (clean, reason) = match &end {
            CallEnd::T30(o) => match &o.result {
                Ok(()) if o.remote_ended_early => {
                    (false, Some("the sender hung up before EOP".to_owned()))
                }
                Ok(()) => (true, None),
                Err(f) => (false, Some(format!("T.30: {f}"))),
            },
            CallEnd::Error(e) => (false, Some(format!("{e:#}"))),
            CallEnd::Shutdown => (false, Some("shutdown; the call was hung up".to_owned())),
        };
        let remote = match &end {
            CallEnd::T30(o) => o.remote_ident.clone(),
            _ => None,
        }
        .or_else(|| doc.as_ref().and_then(|d| d.remote_ident.clone()))
        .unwrap_or_default();
        let Some(doc) = doc else {
            let why = reason.as_deref().unwrap_or("no pages");
            tracing::warn!(reason = why, remote = %remote, "Call ended before any page.");
            self.note(format!(
                "call {job_id} from {remote:?} on {} ended before any page: {why}",
                self.modem.device
            ))
            .await;
            return Ok(());
        };
        let ending = Ending::new(&self.store, &self.print, &self.bus, &self.inbox);
        let why = reason
            .as_ref()
            .map(|r| format!("call from {remote:?} on {} ended: {r}", self.modem.device));
        // The sender cannot resume: whatever pages are here print. A
        // document without pages (its first page could not be stored)
        // stays interrupted and never prints.
        let done = ending
            .close(doc.id, why, |fresh| match (clean, fresh.pages) {
                (_, 0) => InboxState::Interrupted,
                (true, _) => InboxState::Complete,
                (false, _) => InboxState::Partial,
            })
            .await?;
        match done.state {
            InboxState::Complete => {
                tracing::info!(doc = done.id, pages = done.pages, remote = %remote, "Fax received.");
            }
            InboxState::Partial => tracing::warn!(
                doc = done.id,
                pages = done.pages,
                remote = %remote,
                reason = reason.as_deref().unwrap_or(""),
                "Fax received in part; the pages received will print."
            ),
            _ => tracing::warn!(
                doc = done.id,
                reason = reason.as_deref().unwrap_or(""),
                "Call ended without a stored page."
            ),
        }
        Ok(())
    }
}

/// How a placed call ended.
enum Ended {
    /// The call ran to its end.
    Call(Result<Outcome, CallError>),
    /// The user cancelled the job.
    Cancelled,
    /// The daemon is stopping.
    Shutdown,
}

/// The outcome of a call we ended ourselves, after `delivered` pages.
fn cut_short(failure: Failure, delivered: u32) -> Outcome {
    Outcome {
        result: Err(failure),
        pages: delivered,
        uncorrected_pages: Vec::new(),
        remote_ident: None,
        remote_ended_early: false,
    }
}

/// One call's document: begun at its first page, each page stored before
/// MCF.
struct Reception<'a> {
    me: &'a Pstn,
    job_id: String,
    doc: Option<InboxDoc>,
}

impl Reception<'_> {
    async fn store(
        &mut self,
        remote_ident: Option<&str>,
        index: u32,
        params: Params,
        page: Bitmap,
    ) -> anyhow::Result<()> {
        let doc = match &self.doc {
            Some(d) => d,
            None => {
                let d = self
                    .me
                    .store
                    .begin_receive(FROM, &self.job_id, remote_ident.map(str::to_owned), None)
                    .await
                    .context("while starting the inbox document")?;
                tracing::info!(
                    doc = d.id,
                    remote = remote_ident.unwrap_or(""),
                    "Inbox document started."
                );
                self.doc.insert(d)
            }
        };
        let stored = self
            .me
            .store
            .store_page(doc.id, index, page, params.resolution)
            .await
            .with_context(|| {
                format!(
                    "while storing page {} in inbox document {}",
                    index + 1,
                    doc.id
                )
            })?;
        if stored {
            tracing::info!(doc = doc.id, page = index + 1, "Page stored.");
            self.me.bus.publish(BusEvent::PageStored {
                job_id: self.job_id.clone(),
                page: index + 1,
            });
        } else {
            tracing::info!(
                doc = doc.id,
                page = index + 1,
                "Page already stored (repeated); not kept twice."
            );
        }
        Ok(())
    }
}

impl Pages for Reception<'_> {
    async fn page(
        &mut self,
        remote_ident: Option<&str>,
        index: u32,
        params: Params,
        page: Bitmap,
    ) -> Result<(), String> {
        self.store(remote_ident, index, params, page)
            .await
            .map_err(|e| format!("{e:#}"))
    }
}
