//! The outbox actor: runs each due job through a fax session over the
//! relay, records every delivered page, and schedules retries with
//! exponential backoff and jitter.
//!
//! A page counts as delivered only after its MCF ([`Hooks::page_sent`]),
//! and a new session resumes at the first undelivered page, telling the
//! receiver the job id and page index in its NSS so that the receiver can
//! recognise a page it already has.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use faxgate_config::FaxSection;
use faxgate_fax::t30::{self, Failure, Params, Role, T30};
use faxgate_relay::{ClientError, RelayClient};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::pstn::{Call, JobPages, PstnHandle};
use super::session::{self, Hooks, JobTag, SessionEnd};
use super::store::{JobInfo, JobState, Store, now_ms, parse_resolution};
use super::{Bus, BusEvent, fax_caps};

/// Messages to the outbox actor.
#[derive(Debug)]
enum OutboxMsg {
    /// A job was added or became due: look at the queue now.
    Wake,
    /// Cancel a job (DCN if it is in a session).
    Cancel {
        id: String,
        reply: oneshot::Sender<anyhow::Result<JobInfo>>,
    },
}

/// Handle to the outbox actor.
#[derive(Clone, Debug)]
pub struct OutboxHandle {
    tx: mpsc::Sender<OutboxMsg>,
}

impl OutboxHandle {
    /// Starts the actor.
    pub fn spawn(
        store: Store,
        relay: RelayClient,
        pstn: Option<PstnHandle>,
        fax: FaxSection,
        bus: Bus,
        shutdown: CancellationToken,
        tracker: &tokio_util::task::TaskTracker,
    ) -> OutboxHandle {
        let (tx, rx) = mpsc::channel(64);
        let actor = OutboxActor {
            store,
            relay,
            pstn,
            fax,
            bus,
            rx,
            running: HashMap::new(),
            tasks: JoinSet::new(),
            task_jobs: HashMap::new(),
            holds: LocalHolds::default(),
            shutdown,
        };
        tracker.spawn(actor.run().instrument(tracing::info_span!("outbox")));
        OutboxHandle { tx }
    }

    /// Looks at the queue now (after a job was added).
    pub async fn wake(&self) {
        let _ = self.tx.send(OutboxMsg::Wake).await;
    }

    /// Cancels a job.
    pub async fn cancel(&self, id: &str) -> anyhow::Result<JobInfo> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(OutboxMsg::Cancel {
                id: id.to_owned(),
                reply,
            })
            .await
            .ok()
            .context("the outbox is shutting down")?;
        rx.await.context("the outbox is shutting down")?
    }
}

struct RunningJob {
    cancel: CancellationToken,
}

/// What an attempt's task returns: the job id, and the delay the job is
/// held for if the attempt failed locally.
type Attempted = (String, Option<Duration>);

/// Jobs whose last attempt failed locally (a store error: a full disk
/// reads but does not write), each held back for a growing [`backoff`].
/// The store may not be able to record the delay, so the actor keeps it:
/// without it a job that stays due would be started again as soon as its
/// task ended, in a loop with no pause.
#[derive(Debug, Default)]
struct LocalHolds {
    jobs: HashMap<String, Hold>,
}

#[derive(Debug)]
struct Hold {
    /// Not started again before this.
    until: Instant,
    /// Local failures in a row: the backoff's exponent.
    failures: u32,
}

impl LocalHolds {
    /// Local failures of `id` in a row so far.
    fn failures(&self, id: &str) -> u32 {
        self.jobs.get(id).map_or(0, |h| h.failures)
    }

    /// Another local failure of `id`: hold it for `delay` from `now`.
    fn failed(&mut self, id: String, delay: Duration, now: Instant) {
        let failures = self.failures(&id).saturating_add(1);
        let until = now + delay;
        self.jobs.insert(id, Hold { until, failures });
    }

    /// An attempt of `id` ended without a local error, or it was cancelled.
    fn clear(&mut self, id: &str) {
        self.jobs.remove(id);
    }

    /// Whether `id` must not start at `now`.
    fn is_held(&self, id: &str, now: Instant) -> bool {
        self.jobs.get(id).is_some_and(|h| h.until > now)
    }

    /// How long from `now` until the first hold that is still on ends.
    fn next_end(&self, now: Instant) -> Option<Duration> {
        self.jobs
            .values()
            .filter(|h| h.until > now)
            .map(|h| h.until - now)
            .min()
    }
}

struct OutboxActor {
    store: Store,
    relay: RelayClient,
    pstn: Option<PstnHandle>,
    fax: FaxSection,
    bus: Bus,
    rx: mpsc::Receiver<OutboxMsg>,
    running: HashMap<String, RunningJob>,
    tasks: JoinSet<Attempted>,
    /// The job each attempt's task runs (to free a job whose task
    /// panicked).
    task_jobs: HashMap<tokio::task::Id, String>,
    holds: LocalHolds,
    shutdown: CancellationToken,
}

impl OutboxActor {
    async fn run(mut self) {
        match self.store.recover().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(jobs = n, "Jobs interrupted by a restart will resume."),
            Err(e) => tracing::error!(error = format!("{e:#}"), "Cannot recover the outbox."),
        }
        loop {
            if let Err(e) = self.start_due().await {
                tracing::error!(error = format!("{e:#}"), "Cannot read the outbox.");
            }
            let mut next = match self.store.next_due().await {
                Ok(Some(ms)) => Duration::from_millis(u64::try_from(ms - now_ms()).unwrap_or(0)),
                _ => Duration::from_secs(60),
            };
            if let Some(hold) = self.holds.next_end(Instant::now()) {
                next = next.min(hold);
            }
            let next = next.clamp(Duration::from_millis(50), Duration::from_secs(60));
            tokio::select! {
                msg = self.rx.recv() => match msg {
                    Some(OutboxMsg::Wake) => {}
                    Some(OutboxMsg::Cancel { id, reply }) => {
                        let _ = reply.send(self.cancel(&id).await);
                    }
                    None => break,
                },
                Some(done) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    let (id, held) = match done {
                        Ok((task, attempted)) => {
                            self.task_jobs.remove(&task);
                            attempted
                        }
                        // A panic in an attempt: the job goes back to
                        // retrying after the local-error backoff, and its
                        // slot is free again.
                        Err(e) => {
                            let Some(id) = self.task_jobs.remove(&e.id()) else {
                                continue;
                            };
                            let failures = self.holds.failures(&id);
                            let delay = backoff(self.fax.retry_initial, self.fax.retry_max, failures);
                            let error = anyhow::anyhow!("the attempt's task failed: {e}");
                            tracing::error!(job_id = %id, error = %error, retry_in = ?delay, "Job attempt failed locally.");
                            after_local_error(&self.store, &self.bus, &id, &error, delay).await;
                            (id, Some(delay))
                        }
                    };
                    self.running.remove(&id);
                    match held {
                        Some(delay) => self.holds.failed(id, delay, Instant::now()),
                        None => self.holds.clear(&id),
                    }
                }
                () = tokio::time::sleep(next) => {}
                () = self.shutdown.cancelled() => break,
            }
        }
        // Shutdown: sessions park at their next page boundary (their
        // `park` token is a child of `shutdown`); wait for them.
        while self.tasks.join_next().await.is_some() {}
        tracing::info!("Outbox stopped.");
    }

    async fn start_due(&mut self) -> anyhow::Result<()> {
        if self.running.len() >= self.fax.concurrent_sends {
            return Ok(());
        }
        let now = Instant::now();
        for job in self.store.due_jobs(now_ms()).await? {
            if self.running.len() >= self.fax.concurrent_sends {
                break;
            }
            if self.running.contains_key(&job.id) || self.holds.is_held(&job.id, now) {
                continue;
            }
            let cancel = CancellationToken::new();
            self.running.insert(
                job.id.clone(),
                RunningJob {
                    cancel: cancel.clone(),
                },
            );
            let ctx = SendCtx {
                store: self.store.clone(),
                relay: self.relay.clone(),
                pstn: self.pstn.clone(),
                fax: self.fax.clone(),
                bus: self.bus.clone(),
                cancel,
                park: self.shutdown.child_token(),
            };
            let failures = self.holds.failures(&job.id);
            let span = tracing::info_span!("job", job_id = %job.id, to = %job.to);
            let job_id = job.id.clone();
            let task = self.tasks.spawn(
                async move {
                    let id = job.id.clone();
                    let Err(e) = attempt(&ctx, job).await else {
                        return (id, None);
                    };
                    let delay = backoff(ctx.fax.retry_initial, ctx.fax.retry_max, failures);
                    tracing::error!(
                        error = format!("{e:#}"),
                        retry_in = ?delay,
                        "Job attempt failed locally."
                    );
                    after_local_error(&ctx.store, &ctx.bus, &id, &e, delay).await;
                    (id, Some(delay))
                }
                .instrument(span),
            );
            self.task_jobs.insert(task.id(), job_id);
        }
        Ok(())
    }

    async fn cancel(&mut self, id: &str) -> anyhow::Result<JobInfo> {
        let job = self.store.request_cancel(id).await?;
        self.holds.clear(id);
        if let Some(r) = self.running.get(id) {
            r.cancel.cancel();
        } else {
            self.bus.publish(BusEvent::Job(job.clone()));
        }
        Ok(job)
    }
}

struct SendCtx {
    store: Store,
    relay: RelayClient,
    pstn: Option<PstnHandle>,
    fax: FaxSection,
    bus: Bus,
    cancel: CancellationToken,
    park: CancellationToken,
}

impl SendCtx {
    async fn set(
        &self,
        id: &str,
        state: JobState,
        reason: Option<String>,
        next: Option<i64>,
    ) -> anyhow::Result<JobInfo> {
        let job = self.store.set_job_state(id, state, reason, next).await?;
        self.bus.publish(BusEvent::Job(job.clone()));
        Ok(job)
    }

    /// Retry later, or fail once the attempts are used up.
    async fn retry(&self, job: &JobInfo, reason: String) -> anyhow::Result<()> {
        let attempts = self
            .store
            .job(&job.id)
            .await?
            .map_or(job.attempts, |j| j.attempts);
        if attempts >= self.fax.max_attempts {
            tracing::warn!(attempts, %reason, "Job failed: no attempts left.");
            self.set(
                &job.id,
                JobState::Failed,
                Some(format!("gave up after {attempts} attempts; last: {reason}")),
                None,
            )
            .await?;
            return Ok(());
        }
        let delay = backoff(
            self.fax.retry_initial,
            self.fax.retry_max,
            attempts.saturating_sub(1),
        );
        let at = now_ms() + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 2);
        tracing::info!(%reason, retry_in = ?delay, "Job will be retried.");
        self.set(&job.id, JobState::Retrying, Some(reason), Some(at))
            .await?;
        Ok(())
    }
}

/// The delay before attempt `n + 1`: `initial * 2^n`, capped, then a
/// random 50-100% of it so that many jobs do not retry in step.
pub fn backoff(initial: Duration, max: Duration, n: u32) -> Duration {
    use rand::Rng as _;
    let full = initial.saturating_mul(1u32 << n.min(20)).min(max);
    full.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
}

/// After an attempt failed locally (the store, a page file): puts the
/// job back to retrying in `delay`, the error as its reason, so that it
/// does not stay connecting or sending until a restart. Best effort: a
/// store that cannot write fails here too (logged), and then the actor's
/// [`LocalHolds`] alone keeps the job from starting again at once. A job
/// already in a final state (recorded before the error) keeps it.
async fn after_local_error(
    store: &Store,
    bus: &Bus,
    id: &str,
    error: &anyhow::Error,
    delay: Duration,
) {
    let put_back = async {
        let job = store.job(id).await?.context("the job vanished")?;
        if job.state.is_final() {
            return Ok(());
        }
        let at = now_ms() + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 2);
        let reason = format!("local error: {error:#}");
        let job = store
            .set_job_state(id, JobState::Retrying, Some(reason), Some(at))
            .await?;
        bus.publish(BusEvent::Job(job));
        anyhow::Ok(())
    };
    if let Err(e) = put_back.await {
        tracing::warn!(
            error = format!("{e:#}"),
            "Cannot put the job back to retrying after a local error."
        );
    }
}

/// One attempt of one job: connect, run T.30, record the outcome.
async fn attempt(ctx: &SendCtx, job: JobInfo) -> anyhow::Result<()> {
    if job.cancel_requested {
        ctx.set(
            &job.id,
            JobState::Cancelled,
            Some("cancelled by the user".into()),
            None,
        )
        .await?;
        return Ok(());
    }
    if job.delivered >= job.pages {
        // Every page had its MCF (the end of the last attempt was cut
        // short): nothing is sent again.
        ctx.set(
            &job.id,
            JobState::Done,
            Some("every page was confirmed".into()),
            None,
        )
        .await?;
        return Ok(());
    }
    let connecting = ctx
        .set(&job.id, JobState::Connecting, job.reason.clone(), None)
        .await?;
    if let Some(number) = tel_number(&job.to) {
        return attempt_pstn(ctx, &job, number).await;
    }
    let mut stream = match ctx.relay.connect(&job.to).await {
        Ok(s) => s,
        Err(e) => {
            let permanent = matches!(&e, ClientError::Refused { code, .. }
                if *code == faxgate_relay::protocol::Code::Forbidden);
            let reason = format!("relay: {e}");
            if permanent {
                ctx.set(&job.id, JobState::Failed, Some(reason), None)
                    .await?;
            } else {
                ctx.retry(&job, reason).await?;
            }
            return Ok(());
        }
    };
    tracing::info!(session = stream.id(), "Bridged; starting T.30.");
    let first = job.delivered;
    let resolution = parse_resolution(&job.resolution)?;
    let config = t30::Config {
        role: Role::Caller {
            pages: job.pages - first,
            document_resolution: resolution,
            document_width: job.width,
        },
        ident: ctx.fax.ident.clone(),
        caps: fax_caps(&ctx.fax),
        timers: super::timers(&ctx.fax),
        non_standard: Some(
            JobTag {
                job_id: job.id.clone(),
                first_page: first,
                total_pages: job.pages,
            }
            .to_bytes(),
        ),
        max_bad_percent: ctx.fax.max_bad_percent,
        max_consecutive_bad: ctx.fax.max_consecutive_bad,
        // T.38 over TCP carries no training check (TCF).
        training: false,
    };
    let mut engine = match T30::new(config, std::time::Instant::now()) {
        Ok(e) => e,
        Err(e) => {
            ctx.set(
                &job.id,
                JobState::Failed,
                Some(format!("bad fax settings: {e}")),
                None,
            )
            .await?;
            return Ok(());
        }
    };
    // A failure this job retries ends the session without DCN, so that
    // the receiver keeps its document open for the resume instead of
    // printing it as partial and dropping the pages the resume brings
    // (see `T30::set_resumable`). The last attempt is not retried
    // (`SendCtx::retry` counts the same attempts): it ends with DCN, and
    // the receiver prints what it has.
    engine.set_resumable(connecting.attempts < ctx.fax.max_attempts);
    ctx.set(&job.id, JobState::Sending, None, None).await?;
    let mut hooks = SenderHooks {
        ctx,
        job: &job,
        first,
    };
    let end = session::run(
        &mut stream,
        engine,
        true,
        &mut hooks,
        ctx.cancel.clone(),
        ctx.park.clone(),
    )
    .await;
    // The outcome is recorded first: a peer that does not end its side
    // (the relay gives it the terminate deadline) must not hold the job's
    // state back. Then TERMINATE, drain, RELEASE: the connection goes back
    // to vacant.
    let recorded = record_outcome(ctx, &job, first, end).await;
    if let Err(e) = stream.close().await {
        tracing::debug!(error = %e, "Session close was not clean.");
    }
    recorded
}

/// The number of a job to a telephone number (`tel:NUMBER`), if it is one.
pub fn tel_number(to: &str) -> Option<&str> {
    to.strip_prefix("tel:")
}

/// One attempt of a job to a telephone number: the line's actor dials
/// and sends the pages not yet confirmed, as a fax of their own (a fax
/// machine cannot resume a document); each page is recorded delivered
/// after its MCF.
async fn attempt_pstn(ctx: &SendCtx, job: &JobInfo, number: &str) -> anyhow::Result<()> {
    let Some(pstn) = &ctx.pstn else {
        ctx.set(
            &job.id,
            JobState::Failed,
            Some("no [modem] is set up for telephone numbers (tel:)".into()),
            None,
        )
        .await?;
        return Ok(());
    };
    let first = job.delivered;
    let resolution = parse_resolution(&job.resolution)?;
    let config = t30::Config {
        // The driver sets the caller's role, training on and ECM off.
        role: Role::Answerer,
        ident: ctx.fax.ident.clone(),
        caps: fax_caps(&ctx.fax),
        timers: super::timers(&ctx.fax),
        non_standard: None,
        max_bad_percent: ctx.fax.max_bad_percent,
        max_consecutive_bad: ctx.fax.max_consecutive_bad,
        training: true,
    };
    let call = Call {
        number: number.to_owned(),
        config,
        pages: job.pages - first,
        form: (resolution, job.width),
        doc: JobPages {
            store: ctx.store.clone(),
            bus: ctx.bus.clone(),
            job_id: job.id.clone(),
            first,
            delivered: 0,
        },
        cancel: ctx.cancel.clone(),
    };
    let end = match pstn.dial(call).await {
        Ok(outcome) => SessionEnd::T30(outcome),
        Err(_) if ctx.park.is_cancelled() => SessionEnd::Parked,
        Err(e) => SessionEnd::Error(anyhow::anyhow!("modem: {e}")),
    };
    record_outcome(ctx, job, first, end).await
}

/// "page 3" or "pages 3, 5": one-based job page numbers of the session's
/// zero-based `pages`, the session having started at job page `first`
/// (zero-based).
fn uncorrected_text(first: u32, pages: &[u32]) -> String {
    let list: Vec<String> = pages.iter().map(|p| (first + p + 1).to_string()).collect();
    match list.len() {
        1 => format!("page {}", list[0]),
        _ => format!("pages {}", list.join(", ")),
    }
}

/// Records how a sending session ended: done, retry, failed, cancelled
/// or parked.
async fn record_outcome(
    ctx: &SendCtx,
    job: &JobInfo,
    first: u32,
    end: SessionEnd,
) -> anyhow::Result<()> {
    let now = ctx.store.job(&job.id).await?.context("the job vanished")?;
    // Pages the receiver confirmed after ECM gave up correcting a block
    // (EOR/ERR): delivered, but the job says so, in its history and, when
    // this session finishes it, in its reason.
    let uncorrected = match &end {
        SessionEnd::T30(o) if !o.uncorrected_pages.is_empty() => {
            let text = uncorrected_text(first, &o.uncorrected_pages);
            tracing::warn!(pages = %text, "Pages went with uncorrected errors.");
            ctx.store.note(job.id.clone(), format!("{text} went with uncorrected errors: ECM gave up correcting a block (EOR/ERR) and the receiver kept what it got")).await?;
            Some(format!("{text} went with uncorrected errors"))
        }
        _ => None,
    };
    if now.delivered >= now.pages {
        // Every page has its MCF: the fax is delivered, whatever ended the
        // call after that (a shutdown or a modem error during DCN and
        // hangup, a cancel too late to stop anything).
        let after = match &end {
            SessionEnd::T30(o) => o.result.as_ref().err().map(|f| format!("T.30: {f}")),
            SessionEnd::Parked => Some("shutdown".to_owned()),
            SessionEnd::Error(e) => Some(format!("{e:#}")),
        };
        if let Some(why) = after {
            ctx.store
                .note(
                    job.id.clone(),
                    format!("every page was confirmed; then the call ended: {why}"),
                )
                .await?;
        }
        tracing::info!(pages = now.delivered, "Job done.");
        ctx.set(&job.id, JobState::Done, uncorrected, None).await?;
        return Ok(());
    }
    match end {
        SessionEnd::T30(outcome) => match outcome.result {
            Ok(()) => {
                ctx.retry(
                    &now,
                    format!(
                        "session ended after {} of {} pages",
                        now.delivered, now.pages
                    ),
                )
                .await?;
            }
            Err(Failure::Cancelled) => {
                ctx.set(
                    &job.id,
                    JobState::Cancelled,
                    Some(format!(
                        "cancelled by the user after {} of {} pages",
                        now.delivered, now.pages
                    )),
                    None,
                )
                .await?;
            }
            // The same split as the engine's DCN (`T30::set_resumable`):
            // a failure that is not retried ended with DCN.
            Err(f) if !f.is_retryable() => {
                ctx.set(&job.id, JobState::Failed, Some(format!("T.30: {f}")), None)
                    .await?;
            }
            Err(f) => ctx.retry(&now, format!("T.30: {f}")).await?,
        },
        SessionEnd::Parked => {
            tracing::info!(delivered = now.delivered, "Job parked for shutdown.");
            ctx.set(
                &job.id,
                JobState::Retrying,
                Some("parked by a shutdown".into()),
                Some(now_ms()),
            )
            .await?;
        }
        SessionEnd::Error(e) => ctx.retry(&now, format!("{e:#}")).await?,
    }
    Ok(())
}

struct SenderHooks<'a> {
    ctx: &'a SendCtx,
    job: &'a JobInfo,
    first: u32,
}

impl Hooks for SenderHooks<'_> {
    async fn need_page(&mut self, index: u32, params: Params) -> anyhow::Result<Vec<u8>> {
        let doc_index = self.first + index;
        let (page, resolution) = self.ctx.store.job_page(&self.job.id, doc_index).await?;
        let page = t30::fit_page(&page, resolution, &params);
        tokio::task::spawn_blocking(move || t30::encode_page(&page, &params))
            .await
            .context("the page encoder panicked")?
            .with_context(|| format!("while coding page {}", doc_index + 1))
    }

    async fn page_sent(&mut self, index: u32) -> anyhow::Result<()> {
        let job = self
            .ctx
            .store
            .page_delivered(&self.job.id, self.first + index)
            .await?;
        tracing::info!(
            page = self.first + index + 1,
            of = job.pages,
            "Page delivered."
        );
        self.ctx.bus.publish(BusEvent::Job(job));
        Ok(())
    }

    async fn peer(
        &mut self,
        ident: Option<String>,
        _nonstandard: Option<Vec<u8>>,
    ) -> anyhow::Result<()> {
        if let Some(ident) = ident {
            tracing::info!(csi = %ident, "Receiver identified.");
        }
        Ok(())
    }

    async fn page_received(
        &mut self,
        index: u32,
        _params: Params,
        _page: faxgate_fax::Bitmap,
    ) -> anyhow::Result<()> {
        anyhow::bail!(
            "the receiver sent us page {} although we are the caller",
            index + 1
        )
    }

    fn negotiated(&mut self, params: Params) {
        tracing::info!(?params, "Negotiated.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uncorrected_pages_are_named_by_their_job_page_numbers() {
        assert_eq!(uncorrected_text(0, &[2]), "page 3");
        assert_eq!(uncorrected_text(4, &[0, 3]), "pages 5, 8");
    }
    use faxgate_fax::{Bitmap, Resolution};

    /// A job that failed locally is held for the backoff, longer after
    /// each failure in a row, and released by an attempt that ran.
    #[test]
    fn local_failures_hold_the_job_back() {
        let now = Instant::now();
        let mut holds = LocalHolds::default();
        assert!(!holds.is_held("a", now));
        assert_eq!(holds.next_end(now), None);
        let d = Duration::from_secs(10);
        holds.failed("a".into(), d, now);
        assert!(holds.is_held("a", now), "not started again at once");
        assert!(holds.is_held("a", now + d / 2));
        assert!(!holds.is_held("a", now + d));
        assert!(!holds.is_held("b", now));
        assert_eq!(holds.next_end(now), Some(d));
        assert_eq!(holds.next_end(now + d), None, "an ended hold sets no timer");
        assert_eq!(holds.failures("a"), 1);
        holds.failed("a".into(), d, now + d);
        assert_eq!(holds.failures("a"), 2, "the backoff grows");
        holds.clear("a");
        assert_eq!(holds.failures("a"), 0);
        assert!(!holds.is_held("a", now));
    }

    /// A local error puts the job back to retrying (with the error and a
    /// delay), unless it is final; with a store that cannot write, the
    /// attempt fails quietly and the job is left to the actor's hold.
    #[tokio::test]
    async fn a_local_error_puts_the_job_back_to_retrying() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let bus = Bus::default();
        let doc = || vec![Bitmap::new(1728, 8)];
        let job = store
            .add_job("osaka", "t", doc(), Resolution::Fine)
            .await
            .unwrap();
        store
            .set_job_state(&job.id, JobState::Sending, None, None)
            .await
            .unwrap();
        let err = anyhow::anyhow!("disk full").context("while recording page 2");
        let delay = Duration::from_secs(30);
        after_local_error(&store, &bus, &job.id, &err, delay).await;
        let j = store.job(&job.id).await.unwrap().unwrap();
        assert_eq!(j.state, JobState::Retrying);
        let reason = j.reason.clone().unwrap_or_default();
        assert!(
            reason.contains("while recording page 2: disk full"),
            "{reason}"
        );
        assert!(j.next_attempt_ms.unwrap() > now_ms() + 20_000, "{j:?}");
        assert!(store.due_jobs(now_ms()).await.unwrap().is_empty());
        // A final state stays.
        let done = store
            .add_job("osaka", "t", doc(), Resolution::Fine)
            .await
            .unwrap();
        store
            .set_job_state(&done.id, JobState::Done, None, None)
            .await
            .unwrap();
        after_local_error(&store, &bus, &done.id, &err, delay).await;
        let j = store.job(&done.id).await.unwrap().unwrap();
        assert_eq!(j.state, JobState::Done);
        // Writes fail, reads work: the job stays as it is (due), no panic.
        let stuck = store
            .add_job("osaka", "t", doc(), Resolution::Fine)
            .await
            .unwrap();
        store
            .execute_batch_for_test("PRAGMA query_only = ON;")
            .await
            .unwrap();
        assert!(
            store
                .set_job_state(&stuck.id, JobState::Connecting, None, None)
                .await
                .is_err()
        );
        after_local_error(&store, &bus, &stuck.id, &err, delay).await;
        let j = store.job(&stuck.id).await.unwrap().unwrap();
        assert_eq!(j.state, JobState::Queued);
    }

    #[test]
    fn backoff_doubles_caps_and_jitters_within_half() {
        let (i, m) = (Duration::from_secs(1), Duration::from_secs(10));
        for n in 0..8 {
            let full = Duration::from_secs(1 << n).min(m);
            for _ in 0..50 {
                let d = backoff(i, m, n);
                assert!(d >= full / 2 && d <= full, "n={n}: {d:?} vs {full:?}");
            }
        }
    }
}
