//! The operations: RFC 8011 for clients, PWG 5100.18 for agents, RFC
//! 3995/3996 subscriptions and ippget notifications, PWG 5100.22
//! Get-Printers. Each handler checks its request and answers; state
//! changes go through the store first, then to the site's subscribers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ipp::model::DelimiterTag;
use ipp::prelude::*;
use tokio::io::{AsyncRead, AsyncWriteExt as _};
use tracing::{debug, info, warn};

use super::attrs::{self, JobView, PrinterView, Requested};
use super::store::{Cancel, JobRow, NewDoc, NewJob};
use super::{
    Answer, Attached, Conn, Event, Front, Site, Subscription, Target, Wake, WakeKind, WakeOutcome,
    WakeRequest, unix_now,
};
use crate::codes::{job_state, op, status};
use crate::message::{
    self, Attrs as _, Parsed, Refusal, as_bool, as_int, as_str, attribute, keyword, op_attr,
};
use faxgate_config::WakeTimeout;

/// What a handler sees of its request.
pub(crate) struct Ctx<'a> {
    pub(crate) front: &'a Arc<Front>,
    pub(crate) conn: &'a Arc<Conn>,
    pub(crate) host: Option<&'a str>,
    pub(crate) authorization: Option<&'a str>,
    pub(crate) target: Target,
    #[allow(dead_code)]
    pub(crate) path: &'a str,
}

type Doc<'a> = &'a mut (dyn AsyncRead + Unpin + Send);

type OpResult = Result<Answer, Refusal>;

/// A request with no requested-attributes, to get a handler's defaults.
static BLANK: std::sync::LazyLock<Parsed> = std::sync::LazyLock::new(|| {
    let r = message::request(0, "", "", 1);
    Parsed {
        header: *r.header(),
        attributes: r.attributes().clone(),
    }
});

/// Runs one request and builds its answer.
pub(crate) async fn dispatch(ctx: Ctx<'_>, req: Parsed, doc: Doc<'_>) -> Answer {
    let version = req.header().version;
    let request_id = req.header().request_id;
    let code = req.header().operation_or_status as u16;
    let result = run(&ctx, &req, code, doc).await;
    match result {
        Ok(answer) => answer,
        Err(refusal) => {
            debug!(op = op::name(code), status = %refusal, "IPP request refused.");
            let mut answer = Answer::ok(message::response(
                if matches!(version.0 >> 8, 1 | 2) {
                    version
                } else {
                    IppVersion::v1_1()
                },
                request_id,
                refusal.status,
                Some(&refusal.message),
            ));
            if refusal.status == status::NOT_AUTHENTICATED {
                answer.http = hyper::StatusCode::UNAUTHORIZED;
            }
            for (name, value) in refusal.unsupported {
                answer
                    .resp
                    .attributes_mut()
                    .add(DelimiterTag::UnsupportedAttributes, attribute(&name, value));
            }
            answer
        }
    }
}

async fn run(ctx: &Ctx<'_>, req: &Parsed, code: u16, doc: Doc<'_>) -> OpResult {
    message::check_request(req)?;
    let site = match &ctx.target {
        Target::List => {
            return match code {
                op::GET_PRINTERS | op::CUPS_GET_PRINTERS => get_printers(ctx, req),
                _ => Err(Refusal::new(
                    status::NOT_FOUND,
                    format!("{} needs a site URI (/ipp/print/NAME)", op::name(code)),
                )),
            };
        }
        Target::Unknown(name) => {
            return Err(Refusal::new(
                status::NOT_FOUND,
                format!("there is no printer site `{name}` here"),
            ));
        }
        Target::Site(site) => Arc::clone(site),
    };
    if code != op::GET_PRINTERS && code != op::CUPS_GET_PRINTERS {
        match op_attr(req, "printer-uri").and_then(as_str) {
            Some(_) => {}
            None if op_attr(req, "job-uri").is_some() => {}
            None => {
                return Err(Refusal::new(
                    status::BAD_REQUEST,
                    "missing printer-uri operation attribute",
                ));
            }
        }
    }
    let s = &site;
    match code {
        op::GET_PRINTER_ATTRIBUTES => get_printer_attributes(ctx, s, req),
        op::VALIDATE_JOB => validate_job(ctx, s, req).map(|c| with_ignored(ok(req), c.ignored)),
        op::PRINT_JOB => print_job(ctx, s, req, doc).await,
        op::CREATE_JOB => create_job(ctx, s, req).await,
        op::SEND_DOCUMENT => send_document(ctx, s, req, doc).await,
        op::CLOSE_JOB => close_job(ctx, s, req).await,
        op::CANCEL_JOB => cancel_job(ctx, s, req).await,
        op::RELEASE_JOB => release_job(ctx, s, req).await,
        op::GET_JOB_ATTRIBUTES => get_job_attributes(ctx, s, req).await,
        op::GET_JOBS => get_jobs(ctx, s, req).await,
        op::GET_PRINTERS | op::CUPS_GET_PRINTERS => get_printers(ctx, req),
        op::PAUSE_PRINTER | op::RESUME_PRINTER => {
            agent(ctx, s).await?;
            pause(ctx, s, req, code == op::PAUSE_PRINTER)
        }
        op::UPDATE_OUTPUT_DEVICE_ATTRIBUTES => update_device(ctx, s, req).await,
        op::CREATE_PRINTER_SUBSCRIPTIONS => create_subscriptions(ctx, s, req).await,
        op::GET_NOTIFICATIONS => get_notifications(ctx, s, req).await,
        op::CANCEL_SUBSCRIPTION => cancel_subscription(ctx, s, req).await,
        op::FETCH_JOB => fetch_job(ctx, s, req).await,
        op::ACKNOWLEDGE_JOB => acknowledge_job(ctx, s, req).await,
        op::FETCH_DOCUMENT => fetch_document(ctx, s, req).await,
        op::ACKNOWLEDGE_DOCUMENT => acknowledge_document(ctx, s, req).await,
        op::UPDATE_JOB_STATUS => update_job_status(ctx, s, req).await,
        op::UPDATE_DOCUMENT_STATUS => update_document_status(ctx, s, req).await,
        op::DEREGISTER_OUTPUT_DEVICE => deregister(ctx, s, req).await,
        op::GET_OUTPUT_DEVICE_ATTRIBUTES => get_device_attributes(ctx, s, req).await,
        attrs::UPDATE_ACTIVE_JOBS => update_active_jobs(ctx, s, req).await,
        op::IDENTIFY_PRINTER => identify_printer(ctx, s, req).await,
        attrs::ACKNOWLEDGE_IDENTIFY_PRINTER => acknowledge_identify(ctx, s, req).await,
        other => Err(Refusal::new(
            status::OPERATION_NOT_SUPPORTED,
            format!(
                "operation 0x{other:04x} ({}) is not supported",
                op::name(other)
            ),
        )),
    }
}

fn ok(req: &Parsed) -> Answer {
    Answer::ok(message::response(
        req.header().version,
        req.header().request_id,
        status::OK,
        None,
    ))
}

fn store_err(e: super::StoreError) -> Refusal {
    warn!(error = %e, "IPP job store failed.");
    Refusal::new(status::INTERNAL_ERROR, "the job store failed; try again")
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

impl Front {
    fn printer_view<'a>(
        &'a self,
        ctx: &Ctx<'_>,
        site: &'a Site,
        device: &'a [IppAttribute],
    ) -> PrinterView<'a> {
        let st = site.lock();
        let attached = !st.devices.is_empty();
        let identify = st.identify.is_some();
        let wake_note = st.wake.as_ref().map(|w| match (&w.sent, &w.error) {
            (_, Some(e)) => format!("wake-up mail not sent yet ({e}); retrying"),
            (Some(_), None) => "wake-up mail sent; waiting for the agent".to_owned(),
            (None, None) => "sending a wake-up mail".to_owned(),
        });
        drop(st);
        PrinterView {
            name: &site.cfg.name,
            info: site.cfg.info.as_deref(),
            location: site.cfg.location.as_deref(),
            uris: self.site_uris(&site.cfg.name, ctx.host, ctx.conn.tls),
            device,
            attached,
            paused: self.store.is_paused(&site.cfg.name).unwrap_or(false),
            queued: self
                .store
                .active(&site.cfg.name, None)
                .map(|(n, _)| n)
                .unwrap_or(0),
            now: unix_now(),
            wake_note,
            identify,
        }
    }

    /// What a job's attributes depend on besides its row. `private`:
    /// whether the requester sees the job's private attributes (see
    /// [`Requester::sees_private`]); `agent`: whether it is the site's
    /// agent, the only one shown which output device holds the job.
    fn job_view<'a>(
        &self,
        ctx: &Ctx<'_>,
        site: &Site,
        printer_uri: &'a str,
        job: &JobRow,
        private: bool,
        agent: bool,
    ) -> JobView<'a> {
        let _ = ctx;
        let intervening = if job.is_final() {
            0
        } else {
            self.store
                .active(&site.cfg.name, Some(job.id))
                .map(|(n, _)| n)
                .unwrap_or(0)
        };
        JobView {
            job_uri: format!("{printer_uri}/{}", job.id),
            printer_uri,
            now: unix_now(),
            intervening,
            private,
            agent,
        }
    }

    /// Detaches a device: its unfinished jobs are offered again, or
    /// canceled if a cancel was waiting for it. The store decides which in
    /// one transaction, so a Cancel-Job at the same moment is not lost.
    pub(crate) fn detach(&self, site: &Arc<Site>, uuid: &str) {
        let jobs = blocking(|| {
            let _ = self.store.detach_device(&site.cfg.name, uuid);
            self.store.hand_back(
                &site.cfg.name,
                uuid,
                "canceled; the printer agent left before confirming",
                "the printer agent left before finishing; offered again",
                unix_now(),
            )
        });
        let jobs = match jobs {
            Ok(j) => j,
            Err(e) => {
                warn!(error = %e, device = %uuid, "Could not hand a detached device's jobs back.");
                return;
            }
        };
        for j in jobs {
            info!(site = %site.cfg.name, job_id = j.id, state = job_state::name(j.state), "Job handed back from a detached device.");
            if j.state == job_state::CANCELED {
                site.publish("job-state-changed", &j);
            } else {
                self.offer(site, &j);
            }
        }
        self.maybe_wake(site);
    }

    /// Whether the site is paused (Pause-Printer).
    pub(crate) fn paused(&self, site: &Site) -> bool {
        self.store.is_paused(&site.cfg.name).unwrap_or(false)
    }

    /// Tells the agents a job waits to be fetched (`job-fetchable`),
    /// unless the site is paused: then nothing is offered, and
    /// Resume-Printer offers what waits.
    pub(crate) fn offer(&self, site: &Site, job: &JobRow) {
        if !self.paused(site) {
            site.publish("job-fetchable", job);
        }
    }

    /// Starts a wake-up when jobs wait, no device is attached, the site
    /// wakes by mail, and no wake-up is under way.
    pub(crate) fn maybe_wake(&self, site: &Arc<Site>) {
        let (Some(wake_cfg), Some(to), Some(tx)) = (&site.cfg.wake, &site.cfg.mail, &self.wake)
        else {
            return;
        };
        if self.store.is_paused(&site.cfg.name).unwrap_or(false) {
            return;
        }
        let waiting: Vec<i32> = match self.store.jobs(&site.cfg.name, Some(false)) {
            Ok(jobs) => jobs
                .iter()
                .filter(|j| j.is_fetchable())
                .map(|j| j.id)
                .collect(),
            Err(e) => {
                warn!(error = %e, "Could not list jobs for a wake-up.");
                return;
            }
        };
        if waiting.is_empty() {
            return;
        }
        let wake_id = self
            .next_wake
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        {
            let mut st = site.lock();
            if !st.devices.is_empty() {
                return;
            }
            if let Some(w) = st.wake.as_mut() {
                // A wake-up is under way: the new jobs wait with it (and
                // end with it if the agent never comes).
                for id in &waiting {
                    if !w.jobs.contains(id) {
                        w.jobs.push(*id);
                    }
                }
                drop(st);
                self.note_waiting(site);
                return;
            }
            st.wake = Some(Wake {
                id: wake_id,
                jobs: waiting.clone(),
                sent: None,
                resent: false,
                error: None,
            });
        }
        info!(site = %site.cfg.name, jobs = ?waiting, wake = wake_id, "No printer agent attached; asking the mailer for a wake-up mail.");
        let request = WakeRequest {
            kind: WakeKind::Wake,
            wake: wake_id,
            site: site.cfg.name.clone(),
            to: to.clone(),
            proxy_uri: self.proxy_uri(&site.cfg.name),
            jobs: waiting.iter().map(|j| *j as u64).collect(),
            ttl: wake_cfg.timeout,
        };
        if tx.send(request).is_err() {
            warn!(site = %site.cfg.name, "The mailer is gone; cannot wake the printer agent.");
        }
        self.note_waiting(site);
    }

    /// Writes the wake-up state into the waiting jobs' messages.
    fn note_waiting(&self, site: &Site) {
        let (jobs, note) = {
            let st = site.lock();
            let Some(w) = &st.wake else { return };
            let note = match (&w.sent, &w.error) {
                (_, Some(e)) => format!(
                    "waiting for the printer agent: wake-up mail not sent yet ({e}); retrying"
                ),
                (Some(_), None) => "waiting for the printer agent: wake-up mail sent".to_owned(),
                (None, None) => "waiting for the printer agent: sending a wake-up mail".to_owned(),
            };
            (w.jobs.clone(), note)
        };
        for id in jobs {
            // Only while the job is still pending: one canceled or fetched
            // meanwhile keeps its state.
            if let Err(e) = blocking(|| self.store.set_pending_message(id, &note)) {
                debug!(error = %e, job_id = id, "Could not note the wake-up in a job.");
            }
        }
    }

    /// What the mailer did with the request of wake-up `wake`. A report
    /// about another wake-up than the site's current one (an earlier one,
    /// ended by an agent attaching or a timeout, whose mail was still being
    /// retried) is ignored: it must not end the current one's jobs.
    pub(crate) fn wake_outcome(
        &self,
        site_name: &str,
        kind: WakeKind,
        wake: u64,
        outcome: WakeOutcome,
    ) {
        let Some(site) = self.sites.get(site_name).cloned() else {
            return;
        };
        if kind == WakeKind::Cancel {
            match outcome {
                WakeOutcome::Sent => info!(site = %site_name, wake, "Cancel mail sent."),
                WakeOutcome::Retrying { error } => {
                    info!(site = %site_name, wake, %error, "Cancel mail not sent yet; the mailer retries.");
                }
                WakeOutcome::GaveUp { error } => {
                    warn!(site = %site_name, wake, %error, "Cancel mail could not be sent.");
                }
            }
            return;
        }
        let give_up = {
            let mut st = site.lock();
            let Some(w) = st.wake.as_mut().filter(|w| w.id == wake) else {
                debug!(site = %site_name, wake, outcome = ?outcome, "Mailer report about a wake-up that is over; ignoring it.");
                return;
            };
            if w.sent.is_some() {
                // About the second mail: the first is out, and its
                // deadline runs whatever becomes of this one.
                match outcome {
                    WakeOutcome::Sent => info!(site = %site_name, "Second wake-up mail sent."),
                    other => {
                        debug!(site = %site_name, outcome = ?other, "Second wake-up mail not sent; the first one's deadline runs on.")
                    }
                }
                return;
            }
            match outcome {
                WakeOutcome::Sent => {
                    info!(site = %site_name, "Wake-up mail sent; waiting for the agent to attach.");
                    w.sent = Some(Instant::now());
                    w.error = None;
                    None
                }
                WakeOutcome::Retrying { error } => {
                    info!(site = %site_name, %error, "Wake-up mail not sent yet; the mailer retries.");
                    w.error = Some(error);
                    None
                }
                WakeOutcome::GaveUp { error } => st.wake.take().map(|w| (w, error)),
            }
        };
        match give_up {
            None => self.note_waiting(&site),
            Some((w, error)) => {
                warn!(site = %site_name, %error, "Wake-up mail could not be sent; giving up on the waiting jobs.");
                self.end_wake(
                    &site,
                    &w.jobs,
                    &format!("the wake-up mail could not be sent: {error}"),
                );
            }
        }
    }

    /// Ends the waiting jobs after a failed wake-up: aborted, or held.
    fn end_wake(&self, site: &Arc<Site>, jobs: &[i32], why: &str) {
        let hold = site
            .cfg
            .wake
            .as_ref()
            .is_some_and(|w| w.on_timeout == WakeTimeout::Hold);
        let (state, reason, message) = if hold {
            (
                job_state::PENDING_HELD,
                "job-hold-until-specified",
                format!("held: {why}; Release-Job sends it again"),
            )
        } else {
            (
                job_state::ABORTED,
                "aborted-by-system",
                format!("aborted: {why}"),
            )
        };
        let reasons = [reason.to_owned()];
        let now = unix_now();
        for &id in jobs {
            // Only a job still waiting for a device: one canceled or
            // fetched meanwhile stays as it is.
            let r = blocking(|| -> Result<Option<JobRow>, super::StoreError> {
                if self
                    .store
                    .end_waiting_job(id, state, &reasons, &message, now)?
                {
                    self.store.job(id)
                } else {
                    Ok(None)
                }
            });
            if let Ok(Some(j)) = r {
                info!(site = %site.cfg.name, job_id = id, state = job_state::name(j.state), %why, "Job ended after a failed wake-up.");
                site.publish("job-state-changed", &j);
            }
        }
    }

    pub(crate) fn check_wake_deadline(&self, site: &Arc<Site>, now: Instant) {
        let Some(wake_cfg) = &site.cfg.wake else {
            return;
        };
        let (expired, resend) = {
            let mut st = site.lock();
            let attached = !st.devices.is_empty();
            match st.wake.as_mut() {
                Some(w) if !attached => match w.sent.map(|t| now.duration_since(t)) {
                    Some(waited) if waited >= wake_cfg.timeout => (st.wake.take(), None),
                    // Half-way and no agent: the mail may be lost (a spam
                    // filter, a mailbox the agent read just before it
                    // crashed, so its restart files the mail as a replay).
                    // A second mail, with a fresh nonce, for the time left.
                    Some(waited) if waited >= wake_cfg.timeout / 2 && !w.resent => {
                        w.resent = true;
                        (
                            None,
                            Some((w.id, w.jobs.clone(), wake_cfg.timeout - waited)),
                        )
                    }
                    _ => (None, None),
                },
                _ => (None, None),
            }
        };
        if let (Some((wake, jobs, left)), Some(tx), Some(to)) = (resend, &self.wake, &site.cfg.mail)
        {
            info!(site = %site.cfg.name, wake, left = ?left, "The printer agent has not attached; sending the wake-up mail again.");
            let _ = tx.send(WakeRequest {
                kind: WakeKind::Wake,
                wake,
                site: site.cfg.name.clone(),
                to: to.clone(),
                proxy_uri: self.proxy_uri(&site.cfg.name),
                jobs: jobs.iter().map(|j| *j as u64).collect(),
                ttl: left,
            });
        }
        let Some(w) = expired else { return };
        warn!(site = %site.cfg.name, timeout = ?wake_cfg.timeout, "The printer agent did not attach after the wake-up mail; sending a cancel mail.");
        if let (Some(tx), Some(to)) = (&self.wake, &site.cfg.mail) {
            let _ = tx.send(WakeRequest {
                kind: WakeKind::Cancel,
                wake: w.id,
                site: site.cfg.name.clone(),
                to: to.clone(),
                proxy_uri: self.proxy_uri(&site.cfg.name),
                jobs: w.jobs.iter().map(|j| *j as u64).collect(),
                ttl: wake_cfg.timeout,
            });
        }
        let why = format!(
            "the printer agent did not attach within {} after the wake-up mail",
            humantime_like(wake_cfg.timeout)
        );
        self.end_wake(site, &w.jobs, &why);
    }

    /// Jobs still taking documents with no operation for the
    /// multiple-operation-time-out (counted from their last operation,
    /// not their creation): closed when they have documents, aborted when
    /// they have none.
    pub(crate) fn expire_open_jobs(&self, site: &Arc<Site>) {
        let now = unix_now();
        let limit = super::MULTIPLE_OPERATION_TIME_OUT;
        let message =
            format!("no document arrived within the multiple-operation time-out ({limit} s)");
        let ended = blocking(|| {
            self.store
                .expire_idle_jobs(&site.cfg.name, now - i64::from(limit), &message, now)
        });
        let ended = match ended {
            Ok(j) => j,
            Err(e) => {
                // Every tick tries again; the store error is logged by
                // the operations that fail on it.
                debug!(error = %e, site = %site.cfg.name, "Could not expire idle open jobs.");
                return;
            }
        };
        for j in ended {
            info!(site = %site.cfg.name, job_id = j.id, state = job_state::name(j.state), closed = j.closed, "Open job ended by the multiple-operation time-out.");
            if j.is_fetchable() {
                self.offer(site, &j);
            } else {
                site.publish("job-state-changed", &j);
            }
        }
    }
}

fn humantime_like(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 && s.is_multiple_of(60) {
        format!("{} min", s / 60)
    } else if s > 0 {
        format!("{s} s")
    } else {
        format!("{} ms", d.as_millis())
    }
}

// ---------------------------------------------------------------- printer

fn printer_uri_of(ctx: &Ctx<'_>, site: &Site) -> String {
    ctx.front
        .site_uris(&site.cfg.name, ctx.host, ctx.conn.tls)
        .into_iter()
        .next()
        .map(|(u, _)| u)
        .unwrap_or_default()
}

fn device_attrs(site: &Site) -> Vec<IppAttribute> {
    site.lock().attrs.clone()
}

fn get_printer_attributes(ctx: &Ctx<'_>, site: &Arc<Site>, req: &Parsed) -> OpResult {
    if let Some(f) = op_attr(req, "document-format").and_then(as_str) {
        check_format(site, f)?;
    }
    let device = device_attrs(site);
    let view = ctx.front.printer_view(ctx, site, &device);
    let want = Requested::from_request(req, &["all"]);
    let mut answer = ok(req);
    for a in attrs::printer_attributes(&view, &want) {
        answer
            .resp
            .attributes_mut()
            .add(DelimiterTag::PrinterAttributes, a);
    }
    if answer
        .resp
        .attributes()
        .groups_of(DelimiterTag::PrinterAttributes)
        .next()
        .is_none()
    {
        answer
            .resp
            .attributes_mut()
            .groups_mut()
            .push(IppAttributeGroup::new(DelimiterTag::PrinterAttributes));
    }
    Ok(answer)
}

fn get_printers(ctx: &Ctx<'_>, req: &Parsed) -> OpResult {
    let want = Requested::from_request(
        req,
        &[
            "printer-uri-supported",
            "printer-name",
            "printer-state",
            "printer-state-reasons",
            "printer-state-message",
            "printer-info",
            "printer-location",
            "printer-is-accepting-jobs",
            "queued-job-count",
            "printer-uuid",
        ],
    );
    let limit = op_attr(req, "limit")
        .and_then(as_int)
        .unwrap_or(i32::MAX)
        .max(0) as usize;
    let mut answer = ok(req);
    for site in ctx.front.list.iter().take(limit) {
        let device = device_attrs(site);
        let view = ctx.front.printer_view(ctx, site, &device);
        let mut group = IppAttributeGroup::new(DelimiterTag::PrinterAttributes);
        group
            .attributes_mut()
            .extend(attrs::printer_attributes(&view, &want));
        answer.resp.attributes_mut().groups_mut().push(group);
    }
    Ok(answer)
}

/// Pause-Printer and Resume-Printer. While paused, the jobs waiting for
/// a device say `printer-stopped` and "the printer is paused", none is
/// offered (no `job-fetchable` event, none in Get-Jobs fetchable) and
/// none may be fetched or acknowledged. Resume-Printer makes them
/// `job-fetchable` again, without the paused message, and offers them.
fn pause(ctx: &Ctx<'_>, site: &Arc<Site>, req: &Parsed, paused: bool) -> OpResult {
    let name = &site.cfg.name;
    let (reasons, message) = if paused {
        (vec!["printer-stopped".to_owned()], PAUSED_MESSAGE)
    } else if site.attached() {
        (vec!["job-fetchable".to_owned()], "")
    } else {
        (vec!["job-fetchable".to_owned()], WAITING_MESSAGE)
    };
    let jobs = blocking(|| {
        ctx.front.store.set_paused(name, paused)?;
        ctx.front
            .store
            .set_waiting_reasons(name, &reasons, message, unix_now())
    })
    .map_err(store_err)?;
    info!(site = %name, paused, jobs = jobs.len(), "Site paused or resumed.");
    if !paused {
        for j in &jobs {
            site.publish("job-fetchable", j);
        }
        ctx.front.maybe_wake(site);
    }
    Ok(ok(req))
}

/// job-state-message of a job waiting while its site is paused.
const PAUSED_MESSAGE: &str = "the printer is paused";

/// job-state-message of a job waiting while no device is attached.
const WAITING_MESSAGE: &str = "waiting for the printer agent to attach";

/// client-error-not-fetchable for a job a device does not hold yet while
/// the site is paused.
fn paused_refusal(job: &JobRow) -> Refusal {
    Refusal::new(
        status::NOT_FETCHABLE,
        format!(
            "job {} is not fetchable: the printer is paused (Resume-Printer offers it again)",
            job.id
        ),
    )
}

// ---------------------------------------------------------------- jobs

fn supported_formats(site: &Site) -> Vec<String> {
    let st = site.lock();
    let device = st
        .attrs
        .iter()
        .find(|a| a.name().as_str() == "document-format-supported")
        .map(|a| message::strings(Some(a.value())))
        .unwrap_or_default();
    drop(st);
    let mut formats = if device.is_empty() {
        attrs::DEFAULT_FORMATS
            .iter()
            .map(|s| (*s).to_owned())
            .collect()
    } else {
        device
    };
    if !formats.iter().any(|f| f == "application/octet-stream") {
        formats.push("application/octet-stream".into());
    }
    formats
}

fn check_format(site: &Site, format: &str) -> Result<(), Refusal> {
    if supported_formats(site)
        .iter()
        .any(|f| f.eq_ignore_ascii_case(format))
    {
        Ok(())
    } else {
        Err(Refusal::new(
            status::DOCUMENT_FORMAT_NOT_SUPPORTED,
            format!("document-format {format} is not supported by this printer"),
        ))
    }
}

/// The checks Validate-Job, Print-Job and Create-Job share. Returns the
/// document format.
/// A job request that passed the checks.
struct Checked {
    format: String,
    /// The template attributes to keep (unsupported ones dropped when
    /// ipp-attribute-fidelity is false).
    template: Vec<u8>,
    /// What was dropped, for the unsupported-attributes group.
    ignored: Vec<(String, IppValue)>,
}

/// [`check_job`] plus the template against what the device supports:
/// with ipp-attribute-fidelity true an unsupported value refuses the job
/// (0x040B), otherwise it is dropped and reported (0x0001).
fn validate_job(ctx: &Ctx<'_>, site: &Arc<Site>, req: &Parsed) -> Result<Checked, Refusal> {
    let format = check_job(ctx, site, req)?;
    let template = attrs::template_of(req);
    let device = device_attrs(site);
    let ignored = attrs::unsupported(&template, &device);
    let fidelity = op_attr(req, "ipp-attribute-fidelity")
        .and_then(as_bool)
        .unwrap_or(false);
    if fidelity && !ignored.is_empty() {
        let names: Vec<&str> = ignored.iter().map(|(n, _)| n.as_str()).collect();
        let mut r = Refusal::new(
            status::ATTRIBUTES_OR_VALUES_NOT_SUPPORTED,
            format!(
                "the printer does not support the requested {}",
                names.join(", ")
            ),
        );
        r.unsupported = ignored;
        return Err(r);
    }
    let kept: Vec<IppAttribute> = template
        .into_iter()
        .filter(|a| !ignored.iter().any(|(n, _)| n == a.name().as_str()))
        .collect();
    Ok(Checked {
        format,
        template: attrs::encode(&kept),
        ignored,
    })
}

/// Adds what was dropped from the template to a job answer (0x0001).
fn with_ignored(mut answer: Answer, ignored: Vec<(String, IppValue)>) -> Answer {
    if !ignored.is_empty() {
        answer.resp.header_mut().operation_or_status = status::OK_IGNORED_OR_SUBSTITUTED as i16;
        for (name, value) in ignored {
            answer
                .resp
                .attributes_mut()
                .add(DelimiterTag::UnsupportedAttributes, attribute(&name, value));
        }
    }
    answer
}

/// The checks Validate-Job, Print-Job, Create-Job and Send-Document share.
/// Returns the document format.
fn check_job(_ctx: &Ctx<'_>, site: &Arc<Site>, req: &Parsed) -> Result<String, Refusal> {
    if let Some(c) = op_attr(req, "compression") {
        match as_str(c) {
            Some("none") => {}
            Some(other) => {
                return Err(Refusal::new(
                    status::COMPRESSION_NOT_SUPPORTED,
                    format!("compression {other} is not supported (none is)"),
                ));
            }
            None => {
                return Err(Refusal::new(
                    status::BAD_REQUEST,
                    "compression must be a keyword",
                ));
            }
        }
    }
    let format = match op_attr(req, "document-format") {
        None => "application/octet-stream".to_owned(),
        Some(v) => match v {
            IppValue::MimeMediaType(m) => m.as_str().to_owned(),
            _ => {
                return Err(Refusal::new(
                    status::BAD_REQUEST,
                    "document-format must be a mimeMediaType",
                ));
            }
        },
    };
    check_format(site, &format)?;
    for n in ["job-name", "requesting-user-name", "document-name"] {
        if let Some(v) = op_attr(req, n)
            && !matches!(
                v,
                IppValue::NameWithoutLanguage(_) | IppValue::NameWithLanguage { .. }
            )
        {
            return Err(Refusal::new(
                status::BAD_REQUEST,
                format!("{n} must have the name syntax"),
            ));
        }
    }
    if let Some(v) = op_attr(req, "ipp-attribute-fidelity")
        && as_bool(v).is_none()
    {
        return Err(Refusal::new(
            status::BAD_REQUEST,
            "ipp-attribute-fidelity must be a boolean",
        ));
    }
    if let Some(c) = message::attr(req, DelimiterTag::JobAttributes, "copies") {
        match as_int(c) {
            Some(n) if (1..=999).contains(&n) => {}
            _ => {
                return Err(Refusal::new(
                    status::ATTRIBUTES_OR_VALUES_NOT_SUPPORTED,
                    "copies must be an integer in 1..999",
                ));
            }
        }
    }
    Ok(format)
}

fn requesting_user(req: &Parsed) -> String {
    op_attr(req, "requesting-user-name")
        .and_then(as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or("anonymous")
        .to_owned()
}

/// How often a Send-Document whose document is still arriving refreshes
/// its job's last operation, so a long upload that makes progress does
/// not run into the multiple-operation-time-out.
const TOUCH_EVERY: Duration = Duration::from_secs(30);

/// Streams the document into a temporary spool file and fsyncs it. For a
/// Send-Document (`job`), the job's last operation is refreshed while
/// bytes arrive, and the upload stops when the job ends meanwhile.
async fn spool_document(
    ctx: &Ctx<'_>,
    doc: Doc<'_>,
    job: Option<i32>,
) -> Result<(std::path::PathBuf, i64), Refusal> {
    use tokio::io::AsyncReadExt as _;
    let path = ctx.front.store.temp_path();
    let io_err = |what: &str, e: std::io::Error| {
        warn!(error = %e, path = %path.display(), "Spooling a document failed.");
        Refusal::new(
            status::INTERNAL_ERROR,
            format!("cannot spool the document ({what})"),
        )
    };
    let mut file = tokio::fs::File::create(&path)
        .await
        .map_err(|e| io_err("create", e))?;
    let max = ctx.front.cfg.max_document;
    let mut limited = tokio::io::AsyncReadExt::take(doc, max + 1);
    let mut buf = vec![0u8; 64 * 1024];
    let mut n: u64 = 0;
    let mut touched = Instant::now();
    loop {
        let got = match limited.read(&mut buf).await {
            Ok(0) => break,
            Ok(got) => got,
            Err(e) => {
                let _ = tokio::fs::remove_file(&path).await;
                return Err(super::stalled(&e).unwrap_or_else(|| {
                    Refusal::new(
                        status::BAD_REQUEST,
                        format!("the document was cut off: {e}"),
                    )
                }));
            }
        };
        if let Err(e) = file.write_all(&buf[..got]).await {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(io_err("write", e));
        }
        n += got as u64;
        if let Some(id) = job
            && touched.elapsed() >= TOUCH_EVERY
        {
            touched = Instant::now();
            match blocking(|| ctx.front.store.touch_job(id, unix_now())) {
                Ok(true) => {}
                Ok(false) => {
                    // Canceled or aborted meanwhile: stop receiving it.
                    let _ = tokio::fs::remove_file(&path).await;
                    return Err(not_open(ctx, id));
                }
                // Storing the document at the end will tell.
                Err(e) => {
                    debug!(error = %e, job_id = id, "Could not refresh a job's last operation.");
                }
            }
        }
    }
    if n > max {
        let _ = tokio::fs::remove_file(&path).await;
        return Err(Refusal::new(
            status::REQUEST_ENTITY_TOO_LARGE,
            format!("the document is larger than {max} bytes"),
        ));
    }
    file.flush().await.map_err(|e| io_err("flush", e))?;
    file.sync_all().await.map_err(|e| io_err("fsync", e))?;
    Ok((path, n as i64))
}

fn job_response(ctx: &Ctx<'_>, site: &Site, req: &Parsed, job: &JobRow) -> Answer {
    let printer_uri = printer_uri_of(ctx, site);
    // The fixed set below holds no private attribute.
    let view = ctx
        .front
        .job_view(ctx, site, &printer_uri, job, false, false);
    let mut answer = ok(req);
    // Print-Job and friends answer with these whatever
    // requested-attributes says.
    let want = Requested::from_request(
        &*BLANK,
        &[
            "job-id",
            "job-uri",
            "job-state",
            "job-state-reasons",
            "job-state-message",
            "number-of-intervening-jobs",
        ],
    );
    answer
        .resp
        .attributes_mut()
        .groups_mut()
        .push(job_group(job, &view, &want));
    answer
}

/// A new job's fields from the request and its connection (the seed's
/// client address and port among them).
struct JobFields {
    name: String,
    user: String,
    authenticated: bool,
    uuid: String,
    addr: String,
    port: u16,
    template: Vec<u8>,
    now: i64,
}

impl JobFields {
    /// The job's owner is `who` (see [`Requester`]).
    fn of(ctx: &Ctx<'_>, req: &Parsed, who: &Requester, template: Vec<u8>) -> Self {
        Self {
            name: op_attr(req, "job-name")
                .or_else(|| op_attr(req, "document-name"))
                .and_then(as_str)
                .unwrap_or("untitled")
                .to_owned(),
            user: who.user.clone(),
            authenticated: who.authenticated,
            uuid: new_job_uuid(),
            addr: who.addr.clone(),
            port: ctx.conn.peer.port(),
            template,
            now: unix_now(),
        }
    }

    fn new_job<'a>(&'a self, site: &'a str, format: &'a str) -> NewJob<'a> {
        NewJob {
            site,
            uuid: &self.uuid,
            name: &self.name,
            user: &self.user,
            authenticated: self.authenticated,
            client_addr: &self.addr,
            client_port: self.port,
            format,
            template: &self.template,
            now: self.now,
        }
    }
}

/// One job's attributes group, filtered by `want`.
fn job_group(job: &JobRow, view: &JobView<'_>, want: &Requested) -> IppAttributeGroup {
    let mut group = IppAttributeGroup::new(DelimiterTag::JobAttributes);
    group
        .attributes_mut()
        .extend(attrs::job_attributes(job, view, want));
    group
}

fn new_job_uuid() -> String {
    let b: [u8; 16] = rand::random();
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "urn:uuid:{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

fn initial_reasons(ctx: &Ctx<'_>, site: &Site) -> (Vec<&'static str>, String) {
    if ctx.front.paused(site) {
        return (vec!["printer-stopped"], PAUSED_MESSAGE.into());
    }
    if site.attached() {
        (vec!["job-fetchable"], String::new())
    } else {
        (vec!["job-fetchable"], WAITING_MESSAGE.into())
    }
}

/// Refuses a new job (`new_job`) or document while the site holds as
/// many jobs not yet ended, or as many bytes of their documents, as the
/// front allows (`ipp.max_active_jobs`, `ipp.max_site_spool`): busy, so
/// that the client tries again once some have printed.
fn admit(ctx: &Ctx<'_>, site: &Site, new_job: bool) -> Result<(), Refusal> {
    let (jobs, bytes) =
        blocking(|| ctx.front.store.active(&site.cfg.name, None)).map_err(store_err)?;
    let cfg = &ctx.front.cfg;
    let full = if new_job && jobs >= cfg.max_active_jobs {
        Some(format!(
            "{jobs} jobs are waiting or printing (at most {})",
            cfg.max_active_jobs
        ))
    } else if bytes >= cfg.max_site_spool {
        Some(format!(
            "the documents of its jobs take {bytes} bytes (at most {})",
            cfg.max_site_spool
        ))
    } else {
        None
    };
    match full {
        None => Ok(()),
        Some(why) => {
            warn!(site = %site.cfg.name, %why, "Site full; refusing a job.");
            Err(Refusal::new(
                status::BUSY,
                format!("the printer is full: {why}; try again later"),
            ))
        }
    }
}

async fn print_job(ctx: &Ctx<'_>, site: &Arc<Site>, req: &Parsed, doc: Doc<'_>) -> OpResult {
    let Checked {
        format,
        template,
        ignored,
    } = validate_job(ctx, site, req)?;
    let who = requester(ctx, site, req).await?;
    admit(ctx, site, true)?;
    let (temp, size) = spool_document(ctx, doc, None).await?;
    let fields = JobFields::of(ctx, req, &who, template);
    let doc_name = op_attr(req, "document-name")
        .and_then(as_str)
        .unwrap_or(&fields.name)
        .to_owned();
    let new = fields.new_job(&site.cfg.name, &format);
    let (reasons, msg) = initial_reasons(ctx, site);
    let job = blocking(|| {
        let j = ctx.front.store.create_job(
            &new,
            job_state::PENDING,
            &reasons,
            Some((&temp, &doc_name, size)),
        )?;
        if !msg.is_empty() {
            ctx.front.store.set_pending_message(j.id, &msg)?;
        }
        ctx.front.store.job(j.id).map(|o| o.unwrap_or(j))
    });
    let job = match job {
        Ok(j) => j,
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            return Err(store_err(e));
        }
    };
    info!(site = %site.cfg.name, job_id = job.id, bytes = size, %format, client = %ctx.conn.peer, "Job accepted and spooled.");
    ctx.front.offer(site, &job);
    ctx.front.maybe_wake(site);
    let job = ctx.front.store.job(job.id).ok().flatten().unwrap_or(job);
    Ok(with_ignored(job_response(ctx, site, req, &job), ignored))
}

async fn create_job(ctx: &Ctx<'_>, site: &Arc<Site>, req: &Parsed) -> OpResult {
    let Checked {
        format,
        template,
        ignored,
    } = validate_job(ctx, site, req)?;
    let who = requester(ctx, site, req).await?;
    admit(ctx, site, true)?;
    let fields = JobFields::of(ctx, req, &who, template);
    let new = fields.new_job(&site.cfg.name, &format);
    let job = blocking(|| {
        ctx.front
            .store
            .create_job(&new, job_state::PENDING, &["job-incoming"], None)
    })
    .map_err(store_err)?;
    info!(site = %site.cfg.name, job_id = job.id, client = %ctx.conn.peer, "Job created; waiting for its documents.");
    Ok(with_ignored(job_response(ctx, site, req, &job), ignored))
}

/// The job a request names (job-id, or job-uri), on this site.
fn job_of(ctx: &Ctx<'_>, site: &Site, req: &Parsed) -> Result<JobRow, Refusal> {
    let id = match op_attr(req, "job-id") {
        Some(v) => as_int(v)
            .ok_or_else(|| Refusal::new(status::BAD_REQUEST, "job-id must be an integer"))?,
        None => match op_attr(req, "job-uri").and_then(as_str) {
            Some(u) => u
                .rsplit('/')
                .next()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| {
                    Refusal::new(status::BAD_REQUEST, format!("job-uri {u} names no job"))
                })?,
            None => {
                return Err(Refusal::new(
                    status::BAD_REQUEST,
                    "missing job-id (or job-uri) operation attribute",
                ));
            }
        },
    };
    match ctx.front.store.job(id).map_err(store_err)? {
        Some(j) if j.site == site.cfg.name => Ok(j),
        _ => Err(Refusal::new(
            status::NOT_FOUND,
            format!("job {id} does not exist on this printer"),
        )),
    }
}

/// Send-Document and Close-Job on a job that takes no more documents.
fn takes_no_more(job: &JobRow) -> Refusal {
    let why = if job.is_final() || !job.closed {
        format!("it is {}", job_state::name(job.state))
    } else {
        "its last document was already received".to_owned()
    };
    Refusal::new(
        status::NOT_POSSIBLE,
        format!("job {} takes no more documents: {why}", job.id),
    )
}

/// The refusal for a job that stopped taking documents while an
/// operation on it was under way (canceled, aborted by the
/// multiple-operation-time-out, or closed by another request).
fn not_open(ctx: &Ctx<'_>, id: i32) -> Refusal {
    match ctx.front.store.job(id) {
        Ok(Some(j)) => takes_no_more(&j),
        Ok(None) => Refusal::new(
            status::NOT_FOUND,
            format!("job {id} does not exist on this printer"),
        ),
        Err(e) => store_err(e),
    }
}

async fn send_document(ctx: &Ctx<'_>, site: &Arc<Site>, req: &Parsed, doc: Doc<'_>) -> OpResult {
    let job = job_of(ctx, site, req)?;
    may_change(ctx, site, req, &job).await?;
    let last = match op_attr(req, "last-document") {
        Some(v) => as_bool(v)
            .ok_or_else(|| Refusal::new(status::BAD_REQUEST, "last-document must be a boolean"))?,
        None => {
            return Err(Refusal::new(
                status::BAD_REQUEST,
                "missing last-document operation attribute",
            ));
        }
    };
    if job.is_final() || job.closed {
        return Err(takes_no_more(&job));
    }
    let format = check_job(ctx, site, req)?;
    admit(ctx, site, false)?;
    // The operation starts: the multiple-operation-time-out counts from
    // here (RFC 8011: it is the time between operations), and again from
    // its end; spool_document keeps it fresh while the document arrives.
    if !blocking(|| ctx.front.store.touch_job(job.id, unix_now())).map_err(store_err)? {
        return Err(not_open(ctx, job.id));
    }
    let (temp, size) = spool_document(ctx, doc, Some(job.id)).await?;
    let name = op_attr(req, "document-name")
        .and_then(as_str)
        .unwrap_or(&job.name)
        .to_owned();
    let closing: Option<(Vec<String>, String)> = last.then(|| {
        let (reasons, msg) = initial_reasons(ctx, site);
        (reasons.iter().map(|s| (*s).to_owned()).collect(), msg)
    });
    let close = closing
        .as_ref()
        .map(|(reasons, msg)| (reasons.as_slice(), msg.as_str()));
    let now = unix_now();
    // Both writes are compare-and-sets on the job still taking documents:
    // it may have been canceled, aborted or closed while this document
    // arrived.
    let stored = match close {
        Some((reasons, msg)) if size == 0 && job.documents > 0 => {
            let _ = std::fs::remove_file(&temp);
            blocking(|| {
                if ctx.front.store.close_job(job.id, reasons, msg, now)? {
                    ctx.front.store.job(job.id)
                } else {
                    Ok(None)
                }
            })
        }
        _ => {
            let new = NewDoc {
                temp: &temp,
                format: &format,
                name: &name,
                size,
            };
            blocking(|| ctx.front.store.add_document(job.id, &new, close, now))
        }
    };
    let job = match stored {
        Ok(Some(j)) => j,
        Ok(None) => {
            info!(site = %site.cfg.name, job_id = job.id, bytes = size, "Document refused: the job stopped taking documents while it arrived.");
            return Err(not_open(ctx, job.id));
        }
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            return Err(store_err(e));
        }
    };
    info!(site = %site.cfg.name, job_id = job.id, document = job.documents, bytes = size, last, "Document spooled.");
    if job.is_fetchable() {
        ctx.front.offer(site, &job);
        ctx.front.maybe_wake(site);
    }
    Ok(job_response(ctx, site, req, &job))
}

async fn close_job(ctx: &Ctx<'_>, site: &Arc<Site>, req: &Parsed) -> OpResult {
    let job = job_of(ctx, site, req)?;
    may_change(ctx, site, req, &job).await?;
    if job.is_final() || job.closed {
        return Ok(job_response(ctx, site, req, &job));
    }
    if job.documents == 0 {
        return Err(Refusal::new(
            status::NOT_POSSIBLE,
            format!("job {} has no document yet", job.id),
        ));
    }
    let (reasons, msg) = initial_reasons(ctx, site);
    let reasons: Vec<String> = reasons.iter().map(|s| (*s).to_owned()).collect();
    // A compare-and-set: a job canceled or aborted since the read above
    // stays so (it must not come back as pending and fetchable).
    let id = job.id;
    let (closed, row) = blocking(|| {
        let closed = ctx.front.store.close_job(id, &reasons, &msg, unix_now())?;
        Ok::<_, super::StoreError>((closed, ctx.front.store.job(id)?))
    })
    .map_err(store_err)?;
    let job = row.unwrap_or(job);
    if closed {
        ctx.front.offer(site, &job);
        ctx.front.maybe_wake(site);
    }
    Ok(job_response(ctx, site, req, &job))
}

/// Who sent a request, as far as job ownership and privacy go.
#[derive(Debug)]
struct Requester {
    /// The most authenticated name (RFC 8011): the user of verified HTTP
    /// Basic credentials, else requesting-user-name (`anonymous` when
    /// absent).
    user: String,
    /// Whether `user` was authenticated.
    authenticated: bool,
    /// The client's address, as a job records it (`JobRow::client_addr`).
    addr: String,
    /// The site's printer agent: authenticated as the site's agent user,
    /// over TLS (or plain HTTP where the site allows agents there).
    agent: bool,
}

impl Requester {
    /// Whether this is the job's owner. An authenticated requester owns
    /// the jobs of its user. An unauthenticated one only names itself, and
    /// anyone can give any name: it owns a job only when it gives the
    /// job's requesting-user-name *and* comes from the address the job was
    /// created from, and only when the job's user was not authenticated.
    fn owns(&self, job: &JobRow) -> bool {
        self.user == job.user
            && (self.authenticated || (!job.authenticated && self.addr == job.client_addr))
    }

    /// Whether the job's private attributes (job-originating-user-name,
    /// job-client-addr, job-client-port) are shown: to its owner and the
    /// site's agent, as CUPS's default JobPrivateAccess; others do not get
    /// them.
    fn sees_private(&self, job: &JobRow) -> bool {
        self.agent || self.owns(job)
    }
}

/// The request's sender. HTTP Basic credentials, when the request carries
/// them, are verified (any client may send them; a missing or wrong one
/// is client-error-not-authenticated, HTTP 401).
async fn requester(ctx: &Ctx<'_>, site: &Site, req: &Parsed) -> Result<Requester, Refusal> {
    let authenticated = match ctx.authorization {
        Some(_) => Some(basic_user(ctx, "the HTTP Basic credentials were not accepted").await?),
        None => None,
    };
    let agent = authenticated.as_deref() == Some(site.cfg.agent.as_str())
        && (ctx.conn.tls || site.cfg.allow_plain_agents);
    Ok(Requester {
        authenticated: authenticated.is_some(),
        user: authenticated.unwrap_or_else(|| requesting_user(req)),
        addr: ctx.conn.peer.ip().to_canonical().to_string(),
        agent,
    })
}

/// Whether the requester may change this job (Cancel-Job, Release-Job,
/// Send-Document, Close-Job): the site's agent, or the job's owner (see
/// [`Requester::owns`]). Returns the requester.
async fn may_change(
    ctx: &Ctx<'_>,
    site: &Site,
    req: &Parsed,
    job: &JobRow,
) -> Result<Requester, Refusal> {
    let who = requester(ctx, site, req).await?;
    if who.agent || who.owns(job) {
        return Ok(who);
    }
    if job.authenticated && !who.authenticated {
        return Err(Refusal::new(
            status::NOT_AUTHENTICATED,
            format!(
                "job {} belongs to an authenticated user; send that user's HTTP Basic credentials",
                job.id
            ),
        ));
    }
    Err(Refusal::new(
        status::NOT_AUTHORIZED,
        format!(
            "job {} belongs to another user (without credentials, only the same \
             requesting-user-name from the same address may change it)",
            job.id
        ),
    ))
}

async fn cancel_job(ctx: &Ctx<'_>, site: &Arc<Site>, req: &Parsed) -> OpResult {
    let job = job_of(ctx, site, req)?;
    let who = may_change(ctx, site, req, &job).await?;
    if job.is_final() {
        return Err(already_final(&job));
    }
    // The message is public (Get-Jobs, the status page): it names no user.
    let by = if who.owns(&job) {
        "its owner"
    } else {
        "the printer agent"
    };
    // One compare-and-set in the store, against an Acknowledge-Job at the
    // same moment: whichever lands first decides whether the job is
    // canceled now or handed to the device to stop.
    let canceled = format!("canceled by {by} before the printer fetched it");
    let stopping = format!("cancel requested by {by}; waiting for the printer agent to stop it");
    let outcome = blocking(|| {
        ctx.front
            .store
            .cancel_job(job.id, &canceled, &stopping, unix_now())
    })
    .map_err(store_err)?;
    let job = match outcome {
        Cancel::Canceled(j) | Cancel::Stopping(j) => j,
        // Ended (by its device, or another cancel) since the read above.
        Cancel::Final(j) => return Err(already_final(&j)),
        Cancel::Gone => {
            return Err(Refusal::new(
                status::NOT_FOUND,
                format!("job {} does not exist on this printer", job.id),
            ));
        }
    };
    info!(site = %site.cfg.name, job_id = job.id, state = job_state::name(job.state), "Cancel-Job.");
    site.publish("job-state-changed", &job);
    Ok(ok(req))
}

/// Cancel-Job on a job that has ended.
fn already_final(job: &JobRow) -> Refusal {
    Refusal::new(
        status::NOT_POSSIBLE,
        format!("job {} is already {}", job.id, job_state::name(job.state)),
    )
}

async fn release_job(ctx: &Ctx<'_>, site: &Arc<Site>, req: &Parsed) -> OpResult {
    let job = job_of(ctx, site, req)?;
    may_change(ctx, site, req, &job).await?;
    let not_held = |id: i32| Refusal::new(status::NOT_POSSIBLE, format!("job {id} is not held"));
    if job.state != job_state::PENDING_HELD {
        return Err(not_held(job.id));
    }
    // A compare-and-set on the job still being held: one canceled since
    // the read above stays canceled.
    let id = job.id;
    let (reason, message) = if ctx.front.paused(site) {
        ("printer-stopped", "released; the printer is paused")
    } else {
        ("job-fetchable", "released; waiting for the printer agent")
    };
    let released = blocking(|| {
        if ctx
            .front
            .store
            .release_job(id, &[reason.to_owned()], message, unix_now())?
        {
            ctx.front.store.job(id)
        } else {
            Ok(None)
        }
    })
    .map_err(store_err)?;
    let Some(job) = released else {
        return Err(not_held(id));
    };
    ctx.front.offer(site, &job);
    ctx.front.maybe_wake(site);
    Ok(ok(req))
}

async fn get_job_attributes(ctx: &Ctx<'_>, site: &Arc<Site>, req: &Parsed) -> OpResult {
    let job = job_of(ctx, site, req)?;
    let who = requester(ctx, site, req).await?;
    if who.agent {
        // An agent polling the jobs it holds renews its lease.
        touch(ctx, site, req);
    }
    let printer_uri = printer_uri_of(ctx, site);
    let view = ctx.front.job_view(
        ctx,
        site,
        &printer_uri,
        &job,
        who.sees_private(&job),
        who.agent,
    );
    let want = Requested::from_request(req, &["all"]);
    let mut answer = ok(req);
    answer
        .resp
        .attributes_mut()
        .groups_mut()
        .push(job_group(&job, &view, &want));
    Ok(answer)
}

async fn get_jobs(ctx: &Ctx<'_>, site: &Arc<Site>, req: &Parsed) -> OpResult {
    let which = op_attr(req, "which-jobs")
        .and_then(as_str)
        .unwrap_or("not-completed")
        .to_owned();
    let paused = ctx.front.paused(site);
    let jobs = match which.as_str() {
        "fetchable" => {
            agent(ctx, site).await?;
            touch(ctx, site, req);
            if paused {
                Vec::new()
            } else {
                ctx.front
                    .store
                    .jobs(&site.cfg.name, Some(false))
                    .map_err(store_err)?
                    .into_iter()
                    .filter(JobRow::is_fetchable)
                    .collect()
            }
        }
        "not-completed" => ctx
            .front
            .store
            .jobs(&site.cfg.name, Some(false))
            .map_err(store_err)?,
        "completed" => {
            let mut j = ctx
                .front
                .store
                .jobs(&site.cfg.name, Some(true))
                .map_err(store_err)?;
            j.reverse();
            j
        }
        "all" => ctx
            .front
            .store
            .jobs(&site.cfg.name, None)
            .map_err(store_err)?,
        other => {
            let mut answer = Answer::ok(message::response(
                req.header().version,
                req.header().request_id,
                status::ATTRIBUTES_OR_VALUES_NOT_SUPPORTED,
                Some(&format!("which-jobs {other} is not supported")),
            ));
            answer.resp.attributes_mut().add(
                DelimiterTag::UnsupportedAttributes,
                attribute("which-jobs", keyword(other)),
            );
            return Ok(answer);
        }
    };
    let my_jobs = op_attr(req, "my-jobs").and_then(as_bool).unwrap_or(false);
    let who = requester(ctx, site, req).await?;
    let limit = match op_attr(req, "limit") {
        Some(v) => match as_int(v) {
            Some(n) if n > 0 => n as usize,
            _ => {
                return Err(Refusal::new(
                    status::BAD_REQUEST,
                    "limit must be a positive integer",
                ));
            }
        },
        None => usize::MAX,
    };
    let want = Requested::from_request(req, &["job-id", "job-uri"]);
    let printer_uri = printer_uri_of(ctx, site);
    let mut answer = ok(req);
    for job in jobs.iter().filter(|j| !my_jobs || who.owns(j)).take(limit) {
        let view = ctx.front.job_view(
            ctx,
            site,
            &printer_uri,
            job,
            who.sees_private(job),
            who.agent,
        );
        answer
            .resp
            .attributes_mut()
            .groups_mut()
            .push(job_group(job, &view, &want));
    }
    Ok(answer)
}

// ---------------------------------------------------------------- INFRA

/// Checks the request comes from the site's agent: over TLS (unless the
/// site allows plain), with valid Basic credentials of the site's agent
/// user. Returns the user.
async fn agent(ctx: &Ctx<'_>, site: &Site) -> Result<String, Refusal> {
    if !ctx.conn.tls && !site.cfg.allow_plain_agents {
        return Err(Refusal::new(
            status::FORBIDDEN,
            "printer agent operations need TLS (ipps://)",
        ));
    }
    let user = basic_user(
        ctx,
        "printer agent operations need HTTP Basic credentials of the site's agent",
    )
    .await?;
    if user != site.cfg.agent {
        info!(%user, site = %site.cfg.name, "A user tried to act as another site's printer agent.");
        return Err(Refusal::new(
            status::NOT_AUTHORIZED,
            format!("user {user} is not the printer agent of this site"),
        ));
    }
    Ok(user)
}

/// The user of the request's HTTP Basic credentials, checked against the
/// relay's user store (once per connection and header). Missing,
/// malformed or wrong credentials are refused with
/// client-error-not-authenticated (HTTP 401) and `why`.
async fn basic_user(ctx: &Ctx<'_>, why: &str) -> Result<String, Refusal> {
    use base64::Engine as _;
    use sha2::Digest as _;
    let unauthenticated = || Refusal::new(status::NOT_AUTHENTICATED, why);
    let header = ctx.authorization.ok_or_else(unauthenticated)?;
    let encoded = header
        .strip_prefix("Basic ")
        .or_else(|| header.strip_prefix("basic "))
        .ok_or_else(unauthenticated)?;
    let hash: [u8; 32] = sha2::Sha256::digest(encoded.trim().as_bytes()).into();
    let cached = match ctx.conn.verified.lock() {
        Ok(g) => g.clone(),
        Err(p) => p.into_inner().clone(),
    };
    let user = match cached {
        Some((user, h)) if subtle::ConstantTimeEq::ct_eq(&h[..], &hash[..]).into() => user,
        _ => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .map_err(|_| unauthenticated())?;
            let text = String::from_utf8(decoded).map_err(|_| unauthenticated())?;
            let (user, password) = text.split_once(':').ok_or_else(unauthenticated)?;
            let ip = ctx.conn.peer.ip().to_canonical();
            match ctx
                .front
                .auth
                .check_password(ip, user, password.to_owned())
                .await
            {
                Ok(record) => {
                    let mut g = match ctx.conn.verified.lock() {
                        Ok(g) => g,
                        Err(p) => p.into_inner(),
                    };
                    *g = Some((record.name.clone(), hash));
                    record.name
                }
                Err(failure) => {
                    info!(%user, peer = %ctx.conn.peer, reason = failure.as_str(), "IPP authentication failed.");
                    return Err(unauthenticated());
                }
            }
        }
    };
    Ok(user)
}

fn device_uuid(req: &Parsed) -> Result<String, Refusal> {
    op_attr(req, "output-device-uuid")
        .and_then(as_str)
        .filter(|u| u.starts_with("urn:uuid:") && u.len() <= 45)
        .map(str::to_owned)
        .ok_or_else(|| {
            Refusal::new(
                status::BAD_REQUEST,
                "missing or malformed output-device-uuid (urn:uuid:...)",
            )
        })
}

/// The request's output-device-uuid, refused (client-error-forbidden)
/// when another site's agent registered that UUID: a UUID names a device
/// within its site, and one site's agent must not act for another's
/// device (its Deregister would hand that site's jobs back).
fn own_device_uuid(ctx: &Ctx<'_>, site: &Site, req: &Parsed) -> Result<String, Refusal> {
    let uuid = device_uuid(req)?;
    let other = blocking(|| {
        ctx.front
            .store
            .device_of_another(&uuid, &site.cfg.name, &site.cfg.agent)
    })
    .map_err(store_err)?;
    if let Some(other) = other {
        info!(site = %site.cfg.name, device = %uuid, %other, "An agent named another site's output device; refused.");
        return Err(Refusal::new(
            status::FORBIDDEN,
            format!("output device {uuid} is registered to another site"),
        ));
    }
    Ok(uuid)
}

/// Renews the lease of the device named in the request (see
/// [`touch_uuid`]).
fn touch(ctx: &Ctx<'_>, site: &Site, req: &Parsed) {
    if let Ok(uuid) = device_uuid(req) {
        touch_uuid(ctx, site, uuid);
    }
}

/// Renews the lease of the device `uuid`, when it is the attached one;
/// re-attaches it when it was detached by lease expiry (a device this
/// site registered, never one it does not know).
fn touch_uuid(ctx: &Ctx<'_>, site: &Site, uuid: String) {
    let mut st = site.lock();
    if let Some(d) = st.devices.get_mut(&uuid) {
        d.last_seen = Instant::now();
        return;
    }
    // A device that deregistered stays gone until it registers again (a
    // long poll still open at its Deregister must not undo it).
    if st.deregistered.contains(&uuid) {
        return;
    }
    drop(st);
    let known = ctx
        .front
        .store
        .device(&site.cfg.name, &uuid)
        .is_ok_and(|d| d.is_some());
    if !known {
        return;
    }
    let mut st = site.lock();
    if !st.devices.contains_key(&uuid) && !st.deregistered.contains(&uuid) {
        info!(site = %site.cfg.name, device = %uuid, "Printer agent back after its lease ran out; attached again.");
        st.devices.insert(uuid, Attached::new());
        st.wake = None;
    }
}

/// The request's device must be the attached one.
fn attached_device(ctx: &Ctx<'_>, site: &Site, req: &Parsed) -> Result<String, Refusal> {
    let uuid = own_device_uuid(ctx, site, req)?;
    touch(ctx, site, req);
    let st = site.lock();
    match st.devices.get(&uuid) {
        Some(_) => Ok(uuid),
        _ => Err(Refusal::new(
            status::NOT_POSSIBLE,
            "this output device is not registered; send Update-Output-Device-Attributes first",
        )),
    }
}

async fn update_device(ctx: &Ctx<'_>, site: &Arc<Site>, req: &Parsed) -> OpResult {
    let user = agent(ctx, site).await?;
    let uuid = own_device_uuid(ctx, site, req)?;
    let incoming: Vec<IppAttribute> = req
        .attributes()
        .groups_of(DelimiterTag::PrinterAttributes)
        .flat_map(|g| g.attributes().iter().cloned())
        .collect();
    // Later calls under the same UUID merge into what it sent before
    // (kept in the store, so also across a lease that ran out or a
    // restart of the front).
    let stored = blocking(|| ctx.front.store.device(&site.cfg.name, &uuid)).map_err(store_err)?;
    let (new, merged) = {
        let mut st = site.lock();
        let mut merged = stored.map(|d| attrs::decode(&d.attrs)).unwrap_or_default();
        for a in incoming {
            if let Some(slot) = merged.iter_mut().find(|m| m.name() == a.name()) {
                *slot = a;
            } else {
                merged.push(a);
            }
        }
        if merged.is_empty() {
            merged = st.attrs.clone();
        }
        st.attrs = merged.clone();
        st.deregistered.remove(&uuid);
        let new = match st.devices.get_mut(&uuid) {
            Some(d) => {
                d.last_seen = Instant::now();
                false
            }
            None => {
                st.devices.insert(uuid.clone(), Attached::new());
                true
            }
        };
        st.wake = None;
        // The subscriptions this agent made before registering (ippproxy
        // subscribes first, and names no device in it) poll for this
        // device.
        let from = ctx.conn.peer.ip().to_canonical();
        for sub in st.subscriptions.values_mut() {
            if sub.device.is_none() && sub.addr == from {
                sub.device = Some(uuid.clone());
            }
        }
        (new, merged)
    };
    let encoded = attrs::encode(&merged);
    blocking(|| {
        ctx.front
            .store
            .upsert_device(&uuid, &site.cfg.name, &user, &encoded, unix_now())
    })
    .map_err(store_err)?;
    if new {
        // Other devices of the site stay as they are, with their jobs: a
        // site may have several (an agent that restarts under a new UUID
        // should deregister the old one; otherwise its lease runs out).
        info!(site = %site.cfg.name, device = %uuid, %user, "Printer agent attached.");
        if !ctx.front.paused(site)
            && let Ok(jobs) = ctx.front.store.jobs(&site.cfg.name, Some(false))
        {
            for j in jobs.iter().filter(|j| j.is_fetchable()) {
                // No more wake-up note (only while still pending).
                let _ = blocking(|| ctx.front.store.set_pending_message(j.id, ""));
                site.publish("job-fetchable", j);
            }
        }
    } else {
        debug!(site = %site.cfg.name, device = %uuid, "Output device attributes updated.");
    }
    Ok(ok(req))
}

async fn deregister(ctx: &Ctx<'_>, site: &Arc<Site>, req: &Parsed) -> OpResult {
    agent(ctx, site).await?;
    let uuid = own_device_uuid(ctx, site, req)?;
    let was = {
        let mut st = site.lock();
        if st.deregistered.len() >= 64 {
            st.deregistered.clear();
        }
        st.deregistered.insert(uuid.clone());
        st.devices.remove(&uuid).is_some()
    };
    info!(site = %site.cfg.name, device = %uuid, was_attached = was, "Printer agent deregistered.");
    ctx.front.detach(site, &uuid);
    Ok(ok(req))
}

async fn create_subscriptions(ctx: &Ctx<'_>, site: &Arc<Site>, req: &Parsed) -> OpResult {
    agent(ctx, site).await?;
    let device = match op_attr(req, "output-device-uuid") {
        Some(_) => Some(own_device_uuid(ctx, site, req)?),
        None => None,
    };
    touch(ctx, site, req);
    let groups: Vec<&IppAttributeGroup> = req
        .attributes()
        .groups_of(DelimiterTag::SubscriptionAttributes)
        .collect();
    if groups.is_empty() {
        return Err(Refusal::new(
            status::BAD_REQUEST,
            "missing subscription attributes group",
        ));
    }
    let mut answer = ok(req);
    for g in groups {
        let method = g
            .get("notify-pull-method")
            .map(IppAttribute::value)
            .and_then(as_str);
        let mut out = IppAttributeGroup::new(DelimiterTag::SubscriptionAttributes);
        if method != Some("ippget") {
            out.attributes_mut().push(attribute(
                "notify-status-code",
                IppValue::Enum(i32::from(status::ATTRIBUTES_OR_VALUES_NOT_SUPPORTED)),
            ));
            answer.resp.attributes_mut().groups_mut().push(out);
            answer.resp.header_mut().operation_or_status = status::OK_IGNORED_OR_SUBSTITUTED as i16;
            continue;
        }
        let events = message::strings(g.get("notify-events").map(IppAttribute::value));
        let events = if events.is_empty() {
            vec!["job-fetchable".to_owned(), "job-state-changed".to_owned()]
        } else {
            events
        };
        let lease = g
            .get("notify-lease-duration")
            .map(IppAttribute::value)
            .and_then(as_int)
            .filter(|n| *n > 0)
            .unwrap_or(3600)
            .min(86_400);
        let lease = Duration::from_secs(lease as u64);
        let id = ctx.front.next_subscription_id();
        {
            let mut st = site.lock();
            if st.subscriptions.len() >= super::MAX_SUBSCRIPTIONS
                && let Some(oldest) = st.subscriptions.keys().min().copied()
            {
                st.subscriptions.remove(&oldest);
            }
            st.subscriptions.insert(
                id,
                Subscription {
                    events,
                    lease_until: Instant::now() + lease,
                    lease,
                    next_seq: 1,
                    queue: Default::default(),
                    device: device.clone(),
                    addr: ctx.conn.peer.ip().to_canonical(),
                },
            );
        }
        out.attributes_mut()
            .push(attribute("notify-subscription-id", IppValue::Integer(id)));
        out.attributes_mut().push(attribute(
            "notify-lease-duration",
            IppValue::Integer(lease.as_secs() as i32),
        ));
        answer.resp.attributes_mut().groups_mut().push(out);
    }
    Ok(answer)
}

async fn cancel_subscription(ctx: &Ctx<'_>, site: &Arc<Site>, req: &Parsed) -> OpResult {
    agent(ctx, site).await?;
    let id = op_attr(req, "notify-subscription-id")
        .and_then(as_int)
        .ok_or_else(|| Refusal::new(status::BAD_REQUEST, "missing notify-subscription-id"))?;
    if site.lock().subscriptions.remove(&id).is_none() {
        return Err(Refusal::new(
            status::NOT_FOUND,
            format!("no subscription {id}"),
        ));
    }
    Ok(ok(req))
}

async fn get_notifications(ctx: &Ctx<'_>, site: &Arc<Site>, req: &Parsed) -> OpResult {
    agent(ctx, site).await?;
    let ids = message::ints(op_attr(req, "notify-subscription-ids"));
    if ids.is_empty() {
        return Err(Refusal::new(
            status::BAD_REQUEST,
            "missing notify-subscription-ids",
        ));
    }
    let seqs = message::ints(op_attr(req, "notify-sequence-numbers"));
    let wait = op_attr(req, "notify-wait")
        .and_then(as_bool)
        .unwrap_or(false);
    let vouched = vouched_devices(ctx, site, req, &ids)?;
    for uuid in &vouched {
        touch_uuid(ctx, site, uuid.clone());
    }
    // The devices are alive while this poll waits, and when it ends.
    let _hold = LeaseHold::new(site, &vouched);
    let mut changes = site.events.subscribe();
    let deadline = tokio::time::Instant::now() + ctx.front.cfg.notify_wait;
    loop {
        for uuid in &vouched {
            touch_uuid(ctx, site, uuid.clone());
        }
        // Mark the current version seen *before* reading the queues: an
        // event published after this point wakes the wait below, so none
        // is missed between the read and the wait.
        changes.borrow_and_update();
        let events = {
            let mut st = site.lock();
            let mut out = Vec::new();
            for (i, id) in ids.iter().enumerate() {
                let Some(sub) = st.subscriptions.get_mut(id) else {
                    return Err(Refusal::new(
                        status::NOT_FOUND,
                        format!(
                            "subscription {id} is unknown (the server may have restarted); subscribe again"
                        ),
                    ));
                };
                sub.lease_until = Instant::now() + sub.lease;
                let from = seqs.get(i).copied().unwrap_or(1);
                while sub.queue.front().is_some_and(|e| e.seq < from) {
                    sub.queue.pop_front();
                }
                out.extend(sub.queue.iter().cloned().map(|e| (*id, e)));
            }
            out
        };
        if !events.is_empty() || !wait || tokio::time::Instant::now() >= deadline {
            return Ok(notifications_answer(ctx, site, req, events));
        }
        tokio::select! {
            _ = changes.changed() => {}
            () = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// The devices a Get-Notifications vouches for: the one it names, and
/// the ones its subscriptions poll for. A subscription not yet tied to a
/// device is tied to the one the request names, or to the site's only
/// attached device. (ippproxy's Get-Notifications names no device, and
/// it makes no other request while its printer runs a job: its
/// subscription keeps its device's lease.)
fn vouched_devices(
    ctx: &Ctx<'_>,
    site: &Site,
    req: &Parsed,
    ids: &[i32],
) -> Result<Vec<String>, Refusal> {
    let named = match op_attr(req, "output-device-uuid") {
        Some(_) => Some(own_device_uuid(ctx, site, req)?),
        None => None,
    };
    let mut st = site.lock();
    let only = match st.devices.len() {
        1 => st.devices.keys().next().cloned(),
        _ => None,
    };
    let mut out: Vec<String> = named.iter().cloned().collect();
    for id in ids {
        let Some(sub) = st.subscriptions.get_mut(id) else {
            continue;
        };
        if sub.device.is_none() {
            sub.device = named.clone().or_else(|| only.clone());
        }
        if let Some(d) = &sub.device
            && !out.contains(d)
        {
            out.push(d.clone());
        }
    }
    Ok(out)
}

/// Devices with a long poll open: counted in [`Attached::polls`] (the
/// reaper leaves them be) until dropped, which renews their leases.
struct LeaseHold<'a> {
    site: &'a Site,
    devices: Vec<String>,
}

impl<'a> LeaseHold<'a> {
    fn new(site: &'a Site, devices: &[String]) -> Self {
        let mut st = site.lock();
        for uuid in devices {
            if let Some(d) = st.devices.get_mut(uuid) {
                d.polls += 1;
            }
        }
        drop(st);
        Self {
            site,
            devices: devices.to_vec(),
        }
    }
}

impl Drop for LeaseHold<'_> {
    fn drop(&mut self) {
        let mut st = self.site.lock();
        for uuid in &self.devices {
            if let Some(d) = st.devices.get_mut(uuid) {
                d.polls = d.polls.saturating_sub(1);
                d.last_seen = Instant::now();
            }
        }
    }
}

/// A Get-Notifications answer (RFC 3996 5.2.2): `notify-get-interval`
/// and `printer-up-time` in the operation group, then one
/// event-notification group per event with what RFC 3995 5.3.3 requires
/// of a job event. The job is named by `notify-job-id`, which Proxies
/// such as ippsample's ippproxy read; `job-id` repeats it for agents that
/// still read that.
fn notifications_answer(
    ctx: &Ctx<'_>,
    site: &Site,
    req: &Parsed,
    events: Vec<(i32, Event)>,
) -> Answer {
    let mut answer = ok(req);
    let interval = ctx.front.cfg.notify_wait.as_secs().max(1) as i32;
    let up_time = IppValue::Integer(unix_now().clamp(1, i64::from(i32::MAX)) as i32);
    let printer_uri = printer_uri_of(ctx, site);
    let ops = DelimiterTag::OperationAttributes;
    answer.resp.attributes_mut().add(
        ops,
        attribute("notify-get-interval", IppValue::Integer(interval)),
    );
    answer
        .resp
        .attributes_mut()
        .add(ops, attribute("printer-up-time", up_time.clone()));
    for (id, e) in events {
        let mut g = IppAttributeGroup::new(DelimiterTag::EventNotificationAttributes);
        let a = g.attributes_mut();
        a.push(attribute("notify-subscription-id", IppValue::Integer(id)));
        a.push(attribute("notify-printer-uri", message::uri(&printer_uri)));
        a.push(attribute("notify-subscribed-event", keyword(e.kind)));
        a.push(attribute("printer-up-time", up_time.clone()));
        a.push(attribute(
            "notify-sequence-number",
            IppValue::Integer(e.seq),
        ));
        a.push(attribute(
            "notify-charset",
            IppValue::Charset(ipp::value::IppCharset::new_truncated("utf-8".to_owned())),
        ));
        a.push(attribute(
            "notify-natural-language",
            IppValue::NaturalLanguage(ipp::value::IppLanguage::new_truncated("en".to_owned())),
        ));
        a.push(attribute(
            "notify-text",
            message::text(&format!(
                "job {} is {}",
                e.job_id,
                job_state::name(e.job_state)
            )),
        ));
        a.push(attribute("notify-job-id", IppValue::Integer(e.job_id)));
        // Kept while agents that read only job-id are about.
        a.push(attribute("job-id", IppValue::Integer(e.job_id)));
        a.push(attribute("job-state", IppValue::Enum(e.job_state)));
        a.push(attribute(
            "job-state-reasons",
            if e.reasons.is_empty() {
                keyword("none")
            } else {
                message::keywords(&e.reasons)
            },
        ));
        answer.resp.attributes_mut().groups_mut().push(g);
    }
    answer
}

async fn fetch_job(ctx: &Ctx<'_>, site: &Arc<Site>, req: &Parsed) -> OpResult {
    agent(ctx, site).await?;
    let uuid = attached_device(ctx, site, req)?;
    let job = job_of(ctx, site, req)?;
    if !(job.is_fetchable() || job.device == uuid) || job.is_final() {
        return Err(Refusal::new(
            status::NOT_FETCHABLE,
            format!(
                "job {} is not fetchable ({})",
                job.id,
                job_state::name(job.state)
            ),
        ));
    }
    // The device holding it may fetch it again (a resume); nothing new
    // starts while paused.
    if job.device != uuid && ctx.front.paused(site) {
        return Err(paused_refusal(&job));
    }
    let printer_uri = printer_uri_of(ctx, site);
    let view = ctx
        .front
        .job_view(ctx, site, &printer_uri, &job, true, true);
    let want = Requested::from_request(&*BLANK, &["all"]);
    let mut answer = ok(req);
    answer
        .resp
        .attributes_mut()
        .groups_mut()
        .push(job_group(&job, &view, &want));
    Ok(answer)
}

async fn acknowledge_job(ctx: &Ctx<'_>, site: &Arc<Site>, req: &Parsed) -> OpResult {
    agent(ctx, site).await?;
    let uuid = attached_device(ctx, site, req)?;
    let job = job_of(ctx, site, req)?;
    if job.device == uuid {
        return Ok(ok(req));
    }
    if !job.is_fetchable() {
        return Err(not_fetchable(&job, &uuid));
    }
    if ctx.front.paused(site) {
        return Err(paused_refusal(&job));
    }
    // A compare-and-set on the job still being fetchable: a Cancel-Job
    // (or another device) that came after the read above wins, and the
    // device must not print the job.
    let (acknowledged, row) = blocking(|| {
        let acknowledged = ctx.front.store.acknowledge_job(
            job.id,
            &uuid,
            "fetched by the printer agent",
            unix_now(),
        )?;
        Ok::<_, super::StoreError>((acknowledged, ctx.front.store.job(job.id)?))
    })
    .map_err(store_err)?;
    let job = match row {
        Some(j) if acknowledged => j,
        // The same device acknowledging twice at once.
        Some(j) if j.device == uuid => return Ok(ok(req)),
        Some(j) => {
            info!(site = %site.cfg.name, job_id = j.id, state = job_state::name(j.state), device = %uuid, "Acknowledge-Job lost to a change of the job.");
            return Err(not_fetchable(&j, &uuid));
        }
        None => {
            return Err(Refusal::new(
                status::NOT_FOUND,
                format!("job {} does not exist on this printer", job.id),
            ));
        }
    };
    info!(site = %site.cfg.name, job_id = job.id, device = %uuid, "Job fetched by the printer agent.");
    site.publish("job-state-changed", &job);
    Ok(ok(req))
}

/// PWG 5100.18: Acknowledge-Job on a job that is not (or no longer)
/// fetchable by this device.
fn not_fetchable(job: &JobRow, uuid: &str) -> Refusal {
    let why = if job.is_final() {
        ""
    } else if !job.device.is_empty() && job.device != uuid {
        ": another output device acknowledged it"
    } else if !job.closed {
        ": its documents are still arriving"
    } else {
        ""
    };
    Refusal::new(
        status::NOT_FETCHABLE,
        format!(
            "job {} is not fetchable ({}){why}",
            job.id,
            job_state::name(job.state)
        ),
    )
}

/// The request's job, which must be held by the device `uuid`. A job
/// handed back from that device (its lease ran out while it printed) that
/// no other device has taken since is taken back: the device's report
/// about it is the truth, and offering it again would print it twice.
fn owned_job(ctx: &Ctx<'_>, site: &Site, req: &Parsed, uuid: &str) -> Result<JobRow, Refusal> {
    let job = job_of(ctx, site, req)?;
    if job.device == uuid {
        return Ok(job);
    }
    let not_this_devices = || {
        Refusal::new(
            status::NOT_POSSIBLE,
            format!("job {} was not acknowledged by this output device", job.id),
        )
    };
    if !(job.is_fetchable() && job.last_device == uuid) {
        return Err(not_this_devices());
    }
    let (reclaimed, row) = blocking(|| {
        let reclaimed = ctx.front.store.reclaim_job(
            job.id,
            uuid,
            "fetched by the printer agent (taken back after its lease ran out)",
            unix_now(),
        )?;
        Ok::<_, super::StoreError>((reclaimed, ctx.front.store.job(job.id)?))
    })
    .map_err(store_err)?;
    match row {
        Some(j) if reclaimed || j.device == uuid => {
            if reclaimed {
                info!(site = %site.cfg.name, job_id = j.id, device = %uuid, "Job taken back by the device it was handed back from.");
                site.publish("job-state-changed", &j);
            }
            Ok(j)
        }
        _ => Err(not_this_devices()),
    }
}

fn document_number(req: &Parsed) -> Result<i32, Refusal> {
    op_attr(req, "document-number")
        .and_then(as_int)
        .filter(|n| *n >= 1)
        .ok_or_else(|| Refusal::new(status::BAD_REQUEST, "missing or bad document-number"))
}

async fn fetch_document(ctx: &Ctx<'_>, site: &Arc<Site>, req: &Parsed) -> OpResult {
    agent(ctx, site).await?;
    let uuid = attached_device(ctx, site, req)?;
    let job = job_of(ctx, site, req)?;
    if !(job.device == uuid || job.is_fetchable()) || job.is_final() {
        return Err(Refusal::new(
            status::NOT_FETCHABLE,
            format!(
                "job {} is not fetchable ({})",
                job.id,
                job_state::name(job.state)
            ),
        ));
    }
    if job.device != uuid && ctx.front.paused(site) {
        return Err(paused_refusal(&job));
    }
    let number = document_number(req)?;
    // compression-accepted only says what the Proxy could take: the bytes
    // go as the client sent them, and `compression` = none says so
    // (ippproxy sends gzip and must not be refused for it).
    let docs = ctx.front.store.documents(job.id).map_err(store_err)?;
    let Some(d) = docs.into_iter().find(|d| d.number == number) else {
        return Err(Refusal::new(
            status::NOT_FOUND,
            format!("job {} has no document {number}", job.id),
        ));
    };
    // The front converts nothing: a Proxy that takes none of the formats
    // the document is in cannot fetch it (as ippserver answers when it
    // cannot transform). application/octet-stream among them takes any.
    if let Some(v) = op_attr(req, "document-format-accepted") {
        let accepted = message::strings(Some(v));
        let takes = |f: &str| {
            accepted
                .iter()
                .any(|a| a.eq_ignore_ascii_case(f) || a == "application/octet-stream")
        };
        if !accepted.is_empty() && !takes(&d.format) {
            return Err(Refusal::new(
                status::NOT_FETCHABLE,
                format!(
                    "document {number} of job {} is {}, which is not among \
                     document-format-accepted ({}); the front does not convert documents",
                    job.id,
                    d.format,
                    accepted.join(", ")
                ),
            ));
        }
    }
    // The spool file is opened before the answer says OK: a document
    // that is gone (a disk fault, someone cleaning the spool) would
    // otherwise break every fetch mid-stream, and the Proxy would fetch it
    // again for ever. A file that is not there cannot print: its job is
    // aborted, and says why; any other failure to open it is temporary.
    if let Err(e) = tokio::fs::File::open(&d.path).await {
        if e.kind() != std::io::ErrorKind::NotFound {
            // Out of file handles, a disk error: the file may be there;
            // the Proxy tries again.
            warn!(site = %site.cfg.name, job_id = job.id, path = %d.path.display(), error = %e, "Cannot open a spooled document now.");
            return Err(Refusal::new(
                status::INTERNAL_ERROR,
                format!(
                    "document {number} of job {} cannot be read now ({e}); try again",
                    job.id
                ),
            ));
        }
        let message = format!(
            "document {number} of job {} is lost: its spool file cannot be opened ({e})",
            job.id
        );
        warn!(site = %site.cfg.name, job_id = job.id, path = %d.path.display(), error = %e, "A spooled document is lost; aborting its job.");
        let reasons = ["aborted-by-system".to_owned()];
        let aborted = blocking(|| {
            ctx.front.store.set_state(
                job.id,
                job_state::ABORTED,
                &reasons,
                &message,
                unix_now(),
            )?;
            ctx.front.store.job(job.id)
        })
        .map_err(store_err)?;
        if let Some(j) = aborted {
            site.publish("job-state-changed", &j);
        }
        return Err(Refusal::new(status::NOT_FETCHABLE, message));
    }
    let mut answer = ok(req);
    let ops = DelimiterTag::OperationAttributes;
    answer
        .resp
        .attributes_mut()
        .add(ops, attribute("document-format", message::mime(&d.format)));
    answer
        .resp
        .attributes_mut()
        .add(ops, attribute("document-number", IppValue::Integer(number)));
    answer
        .resp
        .attributes_mut()
        .add(ops, attribute("compression", keyword("none")));
    let mut g = IppAttributeGroup::new(DelimiterTag::DocumentAttributes);
    g.attributes_mut()
        .push(attribute("document-name", message::name(&d.name)));
    g.attributes_mut()
        .push(attribute("document-format", message::mime(&d.format)));
    g.attributes_mut()
        .push(attribute("document-number", IppValue::Integer(number)));
    g.attributes_mut().push(attribute(
        "k-octets",
        IppValue::Integer(((d.size + 1023) / 1024) as i32),
    ));
    answer.resp.attributes_mut().groups_mut().push(g);
    answer.document = Some(d.path);
    Ok(answer)
}

async fn acknowledge_document(ctx: &Ctx<'_>, site: &Arc<Site>, req: &Parsed) -> OpResult {
    agent(ctx, site).await?;
    let uuid = attached_device(ctx, site, req)?;
    let job = owned_job(ctx, site, req, &uuid)?;
    let number = document_number(req)?;
    blocking(|| {
        ctx.front
            .store
            .set_document_state(job.id, number, job_state::PROCESSING)
    })
    .map_err(store_err)?;
    Ok(ok(req))
}

async fn update_job_status(ctx: &Ctx<'_>, site: &Arc<Site>, req: &Parsed) -> OpResult {
    agent(ctx, site).await?;
    let uuid = attached_device(ctx, site, req)?;
    let job = owned_job(ctx, site, req, &uuid)?;
    let get = |n: &str| message::attr(req, DelimiterTag::JobAttributes, n);
    let Some(state) = get("output-device-job-state").and_then(as_int) else {
        return Err(Refusal::new(
            status::BAD_REQUEST,
            "missing output-device-job-state in the job attributes",
        ));
    };
    if !(3..=9).contains(&state) {
        return Err(Refusal::new(
            status::BAD_REQUEST,
            format!("output-device-job-state {state} is not a job state"),
        ));
    }
    if job.is_final() {
        return Ok(ok(req));
    }
    let mut reasons: Vec<String> = message::strings(get("output-device-job-state-reasons"))
        .into_iter()
        .filter(|r| r != "none")
        .collect();
    if job_state::is_final(state) && reasons.is_empty() {
        reasons.push(attrs::final_reason(state).to_owned());
    }
    let msg = get("output-device-job-state-message").and_then(as_str);
    let impressions = get("job-impressions-completed").and_then(as_int);
    // Read and written in one transaction in the store: a Cancel-Job that
    // came since the read above keeps its processing-to-stop-point, and a
    // job handed back or ended meanwhile is left alone.
    let reported = blocking(|| {
        ctx.front.store.report_job_state(
            job.id,
            &uuid,
            state,
            &reasons,
            msg,
            impressions,
            unix_now(),
        )
    })
    .map_err(store_err)?;
    let Some(job) = reported else {
        // Ended (answered as before), or no longer this device's.
        owned_job(ctx, site, req, &uuid)?;
        return Ok(ok(req));
    };
    info!(site = %site.cfg.name, job_id = job.id, state = job_state::name(job.state), reasons = ?job.reasons, "Job state from the printer agent.");
    site.publish("job-state-changed", &job);
    Ok(ok(req))
}

async fn update_document_status(ctx: &Ctx<'_>, site: &Arc<Site>, req: &Parsed) -> OpResult {
    agent(ctx, site).await?;
    let uuid = attached_device(ctx, site, req)?;
    let job = owned_job(ctx, site, req, &uuid)?;
    let number = document_number(req)?;
    let state = message::attr(
        req,
        DelimiterTag::DocumentAttributes,
        "output-device-document-state",
    )
    .and_then(as_int)
    .ok_or_else(|| {
        Refusal::new(
            status::BAD_REQUEST,
            "missing output-device-document-state in the document attributes",
        )
    })?;
    blocking(|| ctx.front.store.set_document_state(job.id, number, state)).map_err(store_err)?;
    Ok(ok(req))
}

/// Get-Output-Device-Attributes (PWG 5100.18): what the device `uuid` of
/// this site last told the front (Update-Output-Device-Attributes,
/// merged), attached or not, filtered by requested-attributes.
async fn get_device_attributes(ctx: &Ctx<'_>, site: &Arc<Site>, req: &Parsed) -> OpResult {
    agent(ctx, site).await?;
    let uuid = own_device_uuid(ctx, site, req)?;
    touch(ctx, site, req);
    let Some(row) =
        blocking(|| ctx.front.store.device(&site.cfg.name, &uuid)).map_err(store_err)?
    else {
        return Err(Refusal::new(
            status::NOT_FOUND,
            format!("no output device {uuid} is registered on this printer"),
        ));
    };
    let want = Requested::from_request(req, &["all"]);
    let mut group = IppAttributeGroup::new(DelimiterTag::PrinterAttributes);
    group
        .attributes_mut()
        .extend(attrs::device_attributes(&attrs::decode(&row.attrs), &want));
    let mut answer = ok(req);
    answer.resp.attributes_mut().groups_mut().push(group);
    Ok(answer)
}

/// Update-Active-Jobs (PWG 5100.18), as ippserver answers it. The Proxy
/// lists the jobs it has (`job-ids`) with their states at the printer
/// (`output-device-job-states`). The answer lists, as `job-ids` and
/// `output-device-job-states` (the front's state), the listed jobs the
/// front has stopped or ended (processing-stopped and after) in another
/// state than the Proxy's, and the unfinished jobs this device holds
/// that the Proxy did not list; ids that are not this device's jobs on
/// this site go back in the unsupported-attributes group.
async fn update_active_jobs(ctx: &Ctx<'_>, site: &Arc<Site>, req: &Parsed) -> OpResult {
    agent(ctx, site).await?;
    let uuid = attached_device(ctx, site, req)?;
    let ints_of = |name: &str| -> Result<Vec<i32>, Refusal> {
        let v = op_attr(req, name).ok_or_else(|| {
            Refusal::new(
                status::BAD_REQUEST,
                format!("missing {name} operation attribute"),
            )
        })?;
        let all = message::values(v);
        let ints: Vec<i32> = all.iter().copied().filter_map(as_int).collect();
        if ints.len() != all.len() {
            return Err(Refusal::new(
                status::BAD_REQUEST,
                format!("{name} must hold integers"),
            ));
        }
        Ok(ints)
    };
    let ids = ints_of("job-ids")?;
    let states = ints_of("output-device-job-states")?;
    if ids.len() != states.len() {
        return Err(Refusal::new(
            status::BAD_REQUEST,
            "job-ids and output-device-job-states do not have the same number of values",
        ));
    }
    let mut different: Vec<(i32, i32)> = Vec::new();
    let mut unsupported: Vec<i32> = Vec::new();
    for (&id, &state) in ids.iter().zip(&states) {
        match ctx.front.store.job(id).map_err(store_err)? {
            Some(j) if j.site == site.cfg.name && j.device == uuid => {
                if j.state >= job_state::PROCESSING_STOPPED && j.state != state {
                    different.push((j.id, j.state));
                }
            }
            _ => unsupported.push(id),
        }
    }
    let held = ctx
        .front
        .store
        .unfinished_of_device(&site.cfg.name, &uuid)
        .map_err(store_err)?;
    for j in held.iter().filter(|j| !ids.contains(&j.id)) {
        different.push((j.id, j.state));
    }
    let mut answer = ok(req);
    if !different.is_empty() {
        let ops = DelimiterTag::OperationAttributes;
        answer.resp.attributes_mut().add(
            ops,
            attribute(
                "job-ids",
                message::one_or_many(different.iter().map(|d| IppValue::Integer(d.0)).collect()),
            ),
        );
        answer.resp.attributes_mut().add(
            ops,
            attribute(
                "output-device-job-states",
                message::one_or_many(different.iter().map(|d| IppValue::Enum(d.1)).collect()),
            ),
        );
    }
    if !unsupported.is_empty() {
        answer.resp.attributes_mut().add(
            DelimiterTag::UnsupportedAttributes,
            attribute(
                "job-ids",
                message::one_or_many(unsupported.into_iter().map(IppValue::Integer).collect()),
            ),
        );
    }
    Ok(answer)
}

/// Identify-Printer (PWG 5100.13) from any client: kept until the site's
/// agent takes it with Acknowledge-Identify-Printer and carries it out on
/// the real printer; meanwhile printer-state-reasons says
/// `identify-printer-requested` (PWG 5100.18), which is how the agent
/// learns of it.
async fn identify_printer(_ctx: &Ctx<'_>, site: &Arc<Site>, req: &Parsed) -> OpResult {
    let mut actions = message::strings(op_attr(req, "identify-actions"));
    if actions.is_empty() {
        actions.push("flash".to_owned());
    }
    let bad: Vec<String> = actions
        .iter()
        .filter(|a| !attrs::IDENTIFY_ACTIONS.contains(&a.as_str()))
        .cloned()
        .collect();
    if !bad.is_empty() {
        let mut r = Refusal::new(
            status::ATTRIBUTES_OR_VALUES_NOT_SUPPORTED,
            format!("identify-actions {} not supported", bad.join(", ")),
        );
        r.unsupported = vec![("identify-actions".to_owned(), message::keywords(&bad))];
        return Err(r);
    }
    let text = op_attr(req, "message")
        .and_then(as_str)
        .map(|m| message::truncate(m, 127));
    info!(site = %site.cfg.name, ?actions, "Identify-Printer; waiting for the agent to acknowledge it.");
    site.lock().identify = Some((actions, text));
    Ok(ok(req))
}

/// Acknowledge-Identify-Printer (PWG 5100.18): the site's agent takes the
/// waiting Identify-Printer: its identify-actions (and message), or
/// identify-actions `none` when nothing waits.
async fn acknowledge_identify(ctx: &Ctx<'_>, site: &Arc<Site>, req: &Parsed) -> OpResult {
    agent(ctx, site).await?;
    attached_device(ctx, site, req)?;
    let pending = site.lock().identify.take();
    let mut answer = ok(req);
    let ops = DelimiterTag::OperationAttributes;
    match pending {
        Some((actions, text)) => {
            answer.resp.attributes_mut().add(
                ops,
                attribute("identify-actions", message::keywords(&actions)),
            );
            if let Some(t) = text {
                answer
                    .resp
                    .attributes_mut()
                    .add(ops, attribute("message", message::text(&t)));
            }
        }
        None => answer
            .resp
            .attributes_mut()
            .add(ops, attribute("identify-actions", keyword("none"))),
    }
    Ok(answer)
}
