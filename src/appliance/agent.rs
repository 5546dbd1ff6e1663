//! The print agent (seed 000): the PWG 5100.18 INFRA *Proxy* that gives
//! the appliance's `[printer]` a public server site at the relay's IPP
//! front, through the firewall, by connecting out. `ipp/INFRA.md` is the
//! contract with the front; this file follows it step by step.
//!
//! # What it does
//!
//! 1. Reads the front's description document to choose long poll or poll.
//! 2. Reads the real printer (Get-Printer-Attributes) and registers it as
//!    the site's output device (Update-Output-Device-Attributes) under a
//!    `urn:uuid` made fresh at each process start (kept in
//!    `state_dir/agent-device`; the previous process's device is
//!    deregistered first, so that the site offers its unfinished jobs again
//!    at once instead of when its lease runs out).
//! 3. Waits for jobs: Get-Notifications with notify-wait on a
//!    subscription, or Get-Jobs `which-jobs=fetchable` every interval.
//! 4. Takes each job in turn: Fetch-Job, Acknowledge-Job, then per
//!    document Fetch-Document (streamed to a file in the state folder and
//!    synced), Acknowledge-Document, Print-Job to the real printer with the
//!    job's format and template attributes (the bytes unchanged), and
//!    watches that job, reporting Update-Job-Status and
//!    Update-Document-Status.
//! 5. Mirrors the printer's state every `status_interval`, so a client of
//!    the site sees `media-jam` as the printer reports it.
//! 6. Cancels: when the site asks a held job to stop
//!    (`processing-to-stop-point`), cancels it at the printer (or drops it
//!    if it was not sent) and reports `canceled`.
//! 7. Deregisters when idle (`attach = "on-mail"`) and on shutdown, after
//!    finishing the document at the printer or, once the grace ran out,
//!    canceling it there and handing the job back unreported (the front
//!    offers it again; never reported completed unless it was).
//! 8. Keeps a durable record per job it holds (`state_dir/agent-jobs`):
//!    the documents completed at the printer, the printer's job of the
//!    document in progress, and a final report the site did not take. A
//!    retried or re-offered job resumes after its printed documents
//!    (following the printer's job rather than sending it again), and
//!    an owed report is sent after the next registration (a restart
//!    included) instead of printing the job again.
//!
//! With `attach = "on-mail"` it attaches only when a verified wake-up
//! command mail for its site arrives (`faxgate_mail::WatcherHandle`), and
//! acknowledges the mail once attached.
//!
//! # Layout
//!
//! - [`proto`]: pure: the description document and the transport choice,
//!   printer state snapshots and their diffing, INFRA request builders,
//!   event parsing, and the Print-Job built from a fetched job. No I/O.
//! - [`AgentHandle`] / `AgentActor`: the actor (one task) that owns the
//!   session; a job in progress is a future the actor polls, so status
//!   mirroring, events and cancels go on while it prints.
//!
//! # Channels
//!
//! In: the mail watcher's `Incoming` commands (a bounded mpsc, each
//! acknowledged once acted on) and the shutdown token. Out: an
//! [`AgentStatus`] on a `watch` channel ([`AgentHandle::status`]).

use std::collections::VecDeque;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use faxgate_config::appliance::{AgentSection, AgentTransport, AttachMode, MailScheme, MailTls};
use faxgate_ipp::client::{ClientError, Document, IppClient};
use faxgate_ipp::codes::{job_state, op, status};
use faxgate_mail::{Incoming, Kind, Tls, Trust, Verifier, WatcherConfig, WatcherHandle};
use ipp::prelude::*;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument as _, debug, error, info, info_span, warn};

use self::proto::{
    Event, FetchedJob, Infra, JobReport, JobState, Plan, PrinterSnapshot, Transport,
};

/// The pure part of the agent: what is sent and how answers are read.
pub mod proto {
    use std::time::Duration;

    use faxgate_config::appliance::AgentTransport;
    use faxgate_ipp::codes::{job_state, op, printer_state};
    use faxgate_ipp::message::{
        self, as_int, as_str, attribute, keyword, keywords, mime, name, strings, text, uri,
    };
    use ipp::model::DelimiterTag;
    use ipp::prelude::*;
    use serde::{Deserialize, Serialize};

    /// Where the front serves its description document.
    pub const DESCRIPTION_PATH: &str = "/.well-known/faxgate-infra.json";
    /// The front's lease when its description does not say.
    pub const DEFAULT_LEASE: Duration = Duration::from_secs(90);
    /// The front's long-poll wait when its description does not say.
    pub const DEFAULT_NOTIFY_WAIT: Duration = Duration::from_secs(30);

    /// The front's description document (the seed's ExPM description
    /// file). Unknown fields are ignored; missing ones take defaults.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
    #[serde(default)]
    pub struct Description {
        /// Format version (1).
        pub version: u32,
        /// `long-poll`, `poll`.
        pub transports: Vec<String>,
        /// How long the front holds a Get-Notifications with notify-wait.
        pub notify_wait_seconds: Option<u64>,
        /// The shortest poll interval the front accepts.
        pub poll_interval_min_seconds: Option<u64>,
        /// A device not heard from this long is detached.
        pub agent_lease_seconds: Option<u64>,
        /// Whether INFRA operations need TLS.
        pub tls_required_for_agents: Option<bool>,
    }

    impl Description {
        /// Parses the JSON document.
        pub fn parse(bytes: &[u8]) -> Result<Description, String> {
            serde_json::from_slice(bytes).map_err(|e| e.to_string())
        }
    }

    /// How the agent learns about jobs.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Transport {
        /// Get-Notifications with notify-wait on a subscription.
        LongPoll,
        /// Get-Jobs `which-jobs=fetchable` every interval.
        Poll,
    }

    impl Transport {
        /// The keyword the description uses.
        pub fn as_str(self) -> &'static str {
            match self {
                Transport::LongPoll => "long-poll",
                Transport::Poll => "poll",
            }
        }
    }

    /// The transport and timings for one session.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Plan {
        /// Long poll or poll.
        pub transport: Transport,
        /// The poll interval: the configured one, at least the front's
        /// minimum and well within its lease.
        pub poll_interval: Duration,
        /// How long the front holds a long poll.
        pub notify_wait: Duration,
        /// The front's device lease.
        pub lease: Duration,
    }

    /// Chooses the transport from the front's description (`None`: the
    /// front has none; assume both transports and the defaults) and the
    /// configured wish. Long poll is preferred when offered, unless the
    /// config says `poll`.
    pub fn choose_transport(
        desc: Option<&Description>,
        want: AgentTransport,
        poll_interval: Duration,
    ) -> Result<Plan, String> {
        let offered = |t: &str| {
            desc.is_none_or(|d| d.transports.is_empty() || d.transports.iter().any(|x| x == t))
        };
        let list = || desc.map(|d| d.transports.join(", ")).unwrap_or_default();
        let transport = match want {
            AgentTransport::Auto if offered("long-poll") => Transport::LongPoll,
            AgentTransport::Auto if offered("poll") => Transport::Poll,
            AgentTransport::Auto => {
                return Err(format!(
                    "the front offers neither long-poll nor poll (it offers: {})",
                    list()
                ));
            }
            AgentTransport::LongPoll if offered("long-poll") => Transport::LongPoll,
            AgentTransport::Poll if offered("poll") => Transport::Poll,
            AgentTransport::LongPoll | AgentTransport::Poll => {
                let want = if want == AgentTransport::Poll {
                    "poll"
                } else {
                    "long-poll"
                };
                return Err(format!(
                    "transport = \"{want}\" is configured, but the front offers only: {}",
                    list()
                ));
            }
        };
        let secs = |v: Option<u64>| v.filter(|s| *s > 0).map(Duration::from_secs);
        let min = desc
            .and_then(|d| secs(d.poll_interval_min_seconds))
            .unwrap_or(Duration::ZERO);
        let lease = desc
            .and_then(|d| secs(d.agent_lease_seconds))
            .unwrap_or(DEFAULT_LEASE);
        let notify_wait = desc
            .and_then(|d| secs(d.notify_wait_seconds))
            .unwrap_or(DEFAULT_NOTIFY_WAIT);
        // Three polls per lease, so one lost request does not detach us.
        let poll_interval = poll_interval.min(lease / 3).max(min);
        Ok(Plan {
            transport,
            poll_interval,
            notify_wait,
            lease,
        })
    }

    /// The printer attributes the front keeps for itself (INFRA.md step
    /// 1), and local ones no client on the Internet can use.
    fn not_forwarded(n: &str) -> bool {
        const EXACT: &[&str] = &[
            "printer-uri-supported",
            "printer-name",
            "operations-supported",
            "ipp-versions-supported",
            "natural-language-configured",
            "generated-natural-language-supported",
            "printer-up-time",
            "queued-job-count",
            "printer-is-accepting-jobs",
            "compression-supported",
            "printer-more-info",
            "printer-uuid",
            // Local URIs and clocks: meaningless or stale at the site.
            "printer-icons",
            "printer-supply-info-uri",
            "printer-strings-uri",
            "printer-xri-supported",
            "printer-current-time",
            "printer-config-change-date-time",
            "printer-config-change-time",
            "printer-state-change-date-time",
            "printer-state-change-time",
            "printer-dns-sd-name",
            "job-ids-supported",
        ];
        EXACT.contains(&n)
            || n.starts_with("charset-")
            || (n.starts_with("uri-") && n.ends_with("-supported"))
    }

    /// The printer attributes of a Get-Printer-Attributes answer that go
    /// to the site in Update-Output-Device-Attributes.
    pub fn device_attributes(resp: &IppRequestResponse) -> Vec<IppAttribute> {
        resp.attributes()
            .groups_of(DelimiterTag::PrinterAttributes)
            .flat_map(|g| g.attributes().iter())
            .filter(|a| !not_forwarded(a.name().as_str()))
            .cloned()
            .collect()
    }

    /// The real printer's state as the site shows it. Compared whole to
    /// decide whether the site must hear of a change; reasons are sorted
    /// and `none` is dropped, so order and `none` do not count as changes.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct PrinterSnapshot {
        /// `printer-state` (3 idle, 4 processing, 5 stopped).
        pub state: i32,
        /// `printer-state-reasons`, sorted, without `none`.
        pub reasons: Vec<String>,
        /// `printer-state-message`.
        pub message: String,
    }

    impl PrinterSnapshot {
        /// Reads the three attributes from a printer group.
        pub fn from_attributes(attrs: &[IppAttribute]) -> PrinterSnapshot {
            let get = |n: &str| {
                attrs
                    .iter()
                    .find(|a| a.name().as_str() == n)
                    .map(IppAttribute::value)
            };
            let mut reasons: Vec<String> = strings(get("printer-state-reasons"))
                .into_iter()
                .filter(|r| r != "none")
                .collect();
            reasons.sort();
            reasons.dedup();
            PrinterSnapshot {
                state: get("printer-state")
                    .and_then(as_int)
                    .unwrap_or(printer_state::IDLE),
                reasons,
                message: get("printer-state-message")
                    .and_then(as_str)
                    .unwrap_or_default()
                    .to_owned(),
            }
        }

        /// Reads them from a Get-Printer-Attributes answer.
        pub fn from_response(resp: &IppRequestResponse) -> PrinterSnapshot {
            let attrs: Vec<IppAttribute> = resp
                .attributes()
                .groups_of(DelimiterTag::PrinterAttributes)
                .flat_map(|g| g.attributes().iter().cloned())
                .collect();
            PrinterSnapshot::from_attributes(&attrs)
        }

        /// What the site shows while the printer does not answer.
        pub fn unreachable(error: &str) -> PrinterSnapshot {
            PrinterSnapshot {
                state: printer_state::STOPPED,
                reasons: vec!["offline-report".into()],
                message: message::truncate(
                    &format!("the printer behind the agent does not answer: {error}"),
                    255,
                ),
            }
        }

        /// The three attributes, for Update-Output-Device-Attributes.
        pub fn attributes(&self) -> Vec<IppAttribute> {
            vec![
                attribute("printer-state", IppValue::Enum(self.state)),
                attribute(
                    "printer-state-reasons",
                    if self.reasons.is_empty() {
                        keyword("none")
                    } else {
                        keywords(&self.reasons)
                    },
                ),
                attribute("printer-state-message", text(&self.message)),
            ]
        }

        /// Replaces the three attributes in a full attribute list.
        pub fn apply_to(&self, attrs: &mut Vec<IppAttribute>) {
            attrs.retain(|a| {
                !matches!(
                    a.name().as_str(),
                    "printer-state" | "printer-state-reasons" | "printer-state-message"
                )
            });
            attrs.extend(self.attributes());
        }

        /// `stopped (media-jam-error): Jam`, for logs and status.
        pub fn summary(&self) -> String {
            let state = match self.state {
                printer_state::IDLE => "idle",
                printer_state::PROCESSING => "processing",
                printer_state::STOPPED => "stopped",
                _ => "unknown",
            };
            let mut out = state.to_owned();
            if !self.reasons.is_empty() {
                out.push_str(&format!(" ({})", self.reasons.join(", ")));
            }
            if !self.message.is_empty() {
                out.push_str(&format!(": {}", self.message));
            }
            out
        }
    }

    /// What a notification or a poll tells the agent.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Event {
        /// This job waits to be fetched.
        Fetchable(i32),
        /// The site wants this job stopped (a client canceled it).
        Stop(i32),
    }

    /// Whether a job's state at the site asks the agent to stop it.
    pub fn stop_requested(state: Option<i32>, reasons: &[String]) -> bool {
        matches!(state, Some(job_state::CANCELED | job_state::ABORTED))
            || reasons.iter().any(|r| r == "processing-to-stop-point")
    }

    /// The events of a Get-Notifications answer.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Notifications {
        /// In sequence order.
        pub events: Vec<Event>,
        /// The next sequence number to ask for.
        pub next_seq: i32,
        /// The front's `notify-get-interval`.
        pub get_interval: Option<Duration>,
    }

    /// Reads the event groups of a Get-Notifications answer for
    /// subscription `sub`, skipping those before `next_seq`.
    pub fn parse_notifications(
        resp: &IppRequestResponse,
        sub: i32,
        next_seq: i32,
    ) -> Notifications {
        let mut events = Vec::new();
        let mut next = next_seq;
        for g in resp
            .attributes()
            .groups_of(DelimiterTag::EventNotificationAttributes)
        {
            let get = |n: &str| g.get(n).map(IppAttribute::value);
            if get("notify-subscription-id")
                .and_then(as_int)
                .is_some_and(|s| s != sub)
            {
                continue;
            }
            if let Some(seq) = get("notify-sequence-number").and_then(as_int) {
                if seq < next_seq {
                    continue;
                }
                next = next.max(seq.saturating_add(1));
            }
            // RFC 3995 names it notify-job-id (what ippserver sends and
            // ippproxy reads); faxgate's front also sends job-id.
            let Some(job_id) = get("notify-job-id")
                .or_else(|| get("job-id"))
                .and_then(as_int)
            else {
                continue;
            };
            let state = get("job-state").and_then(as_int);
            let reasons = strings(get("job-state-reasons"));
            let kind = get("notify-subscribed-event")
                .and_then(as_str)
                .unwrap_or("");
            let event = match kind {
                "job-fetchable" => Some(Event::Fetchable(job_id)),
                _ if stop_requested(state, &reasons) => Some(Event::Stop(job_id)),
                _ if state == Some(job_state::PENDING)
                    && reasons.iter().any(|r| r == "job-fetchable") =>
                {
                    Some(Event::Fetchable(job_id))
                }
                _ => None,
            };
            events.extend(event);
        }
        Notifications {
            events,
            next_seq: next,
            get_interval: message::op_attr(resp, "notify-get-interval")
                .and_then(as_int)
                .filter(|s| *s > 0)
                .map(|s| Duration::from_secs(s as u64)),
        }
    }

    /// The subscription id of a Create-Printer-Subscriptions answer, or
    /// why there is none.
    pub fn subscription_id(resp: &IppRequestResponse) -> Result<i32, String> {
        let group = resp
            .attributes()
            .groups_of(DelimiterTag::SubscriptionAttributes)
            .next()
            .ok_or("the answer has no subscription group")?;
        if let Some(code) = group
            .get("notify-status-code")
            .map(IppAttribute::value)
            .and_then(as_int)
        {
            return Err(format!(
                "the subscription was refused (notify-status-code 0x{code:04x})"
            ));
        }
        group
            .get("notify-subscription-id")
            .map(IppAttribute::value)
            .and_then(as_int)
            .ok_or_else(|| "the answer has no notify-subscription-id".to_owned())
    }

    /// The job ids of a Get-Jobs answer, in its order (oldest first).
    pub fn job_ids(resp: &IppRequestResponse) -> Vec<i32> {
        resp.attributes()
            .groups_of(DelimiterTag::JobAttributes)
            .filter_map(|g| g.get("job-id").map(IppAttribute::value).and_then(as_int))
            .collect()
    }

    /// A job's state as Get-Job-Attributes reports it (the site's or the
    /// printer's).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct JobState {
        /// `job-state`.
        pub state: i32,
        /// `job-state-reasons`, without `none`.
        pub reasons: Vec<String>,
        /// `job-state-message`.
        pub message: Option<String>,
        /// `job-impressions-completed`.
        pub impressions: Option<i32>,
    }

    impl JobState {
        /// Reads the first job group; `None` without one or a job-state.
        pub fn from_response(resp: &IppRequestResponse) -> Option<JobState> {
            let g = resp
                .attributes()
                .groups_of(DelimiterTag::JobAttributes)
                .next()?;
            let get = |n: &str| g.get(n).map(IppAttribute::value);
            Some(JobState {
                state: get("job-state").and_then(as_int)?,
                reasons: strings(get("job-state-reasons"))
                    .into_iter()
                    .filter(|r| r != "none")
                    .collect(),
                message: get("job-state-message")
                    .and_then(as_str)
                    .filter(|m| !m.is_empty())
                    .map(str::to_owned),
                impressions: get("job-impressions-completed").and_then(as_int),
            })
        }
    }

    /// Job template attributes passed from the site's job to the real
    /// printer. `job-hold-until` is left out: the job was released at the
    /// site, and holding it again at the printer would strand it.
    pub const PASSED_TEMPLATE: &[&str] = &[
        "copies",
        "finishings",
        "finishings-col",
        "job-priority",
        "job-sheets",
        "media",
        "media-col",
        "multiple-document-handling",
        "number-up",
        "orientation-requested",
        "output-bin",
        "page-delivery",
        "page-ranges",
        "presentation-direction-number-up",
        "print-color-mode",
        "print-content-optimize",
        "print-quality",
        "print-rendering-intent",
        "print-scaling",
        "printer-resolution",
        "sides",
        "x-image-position",
        "x-image-shift",
        "x-side1-image-shift",
        "x-side2-image-shift",
        "y-image-position",
        "y-image-shift",
        "y-side1-image-shift",
        "y-side2-image-shift",
    ];

    /// A job as Fetch-Job describes it.
    #[derive(Debug, Clone)]
    pub struct FetchedJob {
        /// `job-uuid`.
        pub uuid: Option<String>,
        /// `job-name`.
        pub name: String,
        /// `job-originating-user-name`.
        pub user: String,
        /// `document-format` of the job.
        pub format: Option<String>,
        /// `number-of-documents` (at least 1).
        pub documents: i32,
        /// The template attributes to pass on ([`PASSED_TEMPLATE`]).
        pub template: Vec<IppAttribute>,
        /// `job-client-addr`: where the client printed from (seed).
        pub client_addr: Option<String>,
        /// `job-client-port`.
        pub client_port: Option<i32>,
    }

    impl FetchedJob {
        /// Reads the job group of a Fetch-Job answer.
        pub fn from_response(resp: &IppRequestResponse, job_id: i32) -> Option<FetchedJob> {
            let g = resp
                .attributes()
                .groups_of(DelimiterTag::JobAttributes)
                .next()?;
            let get = |n: &str| g.get(n).map(IppAttribute::value);
            let text_of = |n: &str| {
                get(n)
                    .and_then(as_str)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
            };
            Some(FetchedJob {
                uuid: text_of("job-uuid"),
                name: text_of("job-name").unwrap_or_else(|| format!("job {job_id}")),
                user: text_of("job-originating-user-name").unwrap_or_else(|| "anonymous".into()),
                format: text_of("document-format"),
                documents: get("number-of-documents")
                    .and_then(as_int)
                    .unwrap_or(1)
                    .max(1),
                template: g
                    .attributes()
                    .iter()
                    .filter(|a| PASSED_TEMPLATE.contains(&a.name().as_str()))
                    .cloned()
                    .collect(),
                client_addr: text_of("job-client-addr"),
                client_port: get("job-client-port").and_then(as_int),
            })
        }
    }

    /// The Print-Job for the real printer: the job's name (numbered for a
    /// multi-document job), its user, the document's format and the
    /// passed template attributes. The document follows unchanged.
    pub fn print_job_request(
        printer_uri: &str,
        job: &FetchedJob,
        format: &str,
        document: i32,
    ) -> IppRequestResponse {
        let mut req = message::request(op::PRINT_JOB, printer_uri, &job.user, 1);
        let ops = DelimiterTag::OperationAttributes;
        let title = if job.documents > 1 {
            format!("{} ({document}/{})", job.name, job.documents)
        } else {
            job.name.clone()
        };
        req.attributes_mut()
            .add(ops, attribute("job-name", name(&title)));
        req.attributes_mut()
            .add(ops, attribute("document-format", mime(format)));
        if !job.template.is_empty() {
            let mut group = IppAttributeGroup::new(DelimiterTag::JobAttributes);
            group.attributes_mut().extend(job.template.iter().cloned());
            req.attributes_mut().groups_mut().push(group);
        }
        req
    }

    /// Leaves out the template attributes a printer named as unsupported.
    /// False when that changes nothing (nothing named, or only
    /// attributes that are not template ones, such as document-format):
    /// then the job cannot be printed as asked.
    pub fn drop_unsupported(job: &mut FetchedJob, unsupported: &[String]) -> bool {
        let before = job.template.len();
        job.template
            .retain(|a| !unsupported.iter().any(|u| u == a.name().as_str()));
        job.template.len() < before
    }

    /// A request to the real printer.
    pub fn printer_request(op: u16, printer_uri: &str, user: &str) -> IppRequestResponse {
        message::request(op, printer_uri, user, 1)
    }

    /// Get-Printer-Attributes for these attributes (or `all`).
    pub fn printer_attributes_request(
        printer_uri: &str,
        attributes: &[&str],
    ) -> IppRequestResponse {
        let mut req = printer_request(op::GET_PRINTER_ATTRIBUTES, printer_uri, "faxgate-agent");
        req.attributes_mut().add(
            DelimiterTag::OperationAttributes,
            attribute("requested-attributes", keywords(attributes)),
        );
        req
    }

    /// A request about one job at the real printer (Get-Job-Attributes,
    /// Cancel-Job).
    pub fn local_job_request(
        op: u16,
        printer_uri: &str,
        user: &str,
        job_id: i32,
    ) -> IppRequestResponse {
        let mut req = printer_request(op, printer_uri, user);
        req.attributes_mut().add(
            DelimiterTag::OperationAttributes,
            attribute("job-id", IppValue::Integer(job_id)),
        );
        if op == op::GET_JOB_ATTRIBUTES {
            req.attributes_mut().add(
                DelimiterTag::OperationAttributes,
                attribute(
                    "requested-attributes",
                    keywords(&[
                        "job-state",
                        "job-state-reasons",
                        "job-state-message",
                        "job-impressions-completed",
                    ]),
                ),
            );
        }
        req
    }

    /// The `job-id` of a Print-Job answer.
    pub fn created_job_id(resp: &IppRequestResponse) -> Option<i32> {
        message::attr(resp, DelimiterTag::JobAttributes, "job-id").and_then(as_int)
    }

    /// What Update-Job-Status tells the site. Serializable: a final
    /// report the site did not take is kept in the agent's job records.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct JobReport {
        /// `output-device-job-state` (3..=9).
        pub state: i32,
        /// `output-device-job-state-reasons`.
        pub reasons: Vec<String>,
        /// `output-device-job-state-message`.
        pub message: String,
        /// `job-impressions-completed`, when known.
        pub impressions: Option<i32>,
    }

    impl JobReport {
        /// Printing: the printer's job state (pending at the printer
        /// counts as processing at the site, since the site's job is
        /// under way), its reasons, and impressions so far (`done` from
        /// earlier documents plus this one's).
        pub fn progress(local: &JobState, done: i32) -> JobReport {
            let state = match local.state {
                job_state::PROCESSING_STOPPED => job_state::PROCESSING_STOPPED,
                _ => job_state::PROCESSING,
            };
            let mut reasons = local.reasons.clone();
            if matches!(local.state, job_state::PENDING | job_state::PENDING_HELD) {
                reasons.push("job-queued".into());
            }
            if reasons.is_empty() {
                reasons.push("job-printing".into());
            }
            JobReport {
                state,
                reasons,
                message: local.message.clone().unwrap_or_default(),
                impressions: Some(done.saturating_add(local.impressions.unwrap_or(0))),
            }
        }

        /// Waiting for the printer to take the document.
        pub fn waiting(message: &str) -> JobReport {
            JobReport {
                state: job_state::PROCESSING_STOPPED,
                reasons: vec!["printer-stopped".into()],
                message: message.to_owned(),
                impressions: None,
            }
        }

        /// Done.
        pub fn completed(impressions: i32) -> JobReport {
            JobReport {
                state: job_state::COMPLETED,
                reasons: vec!["job-completed-successfully".into()],
                message: "printed".into(),
                impressions: Some(impressions),
            }
        }

        /// Canceled (at the site's request, or at the printer).
        pub fn canceled(message: &str, impressions: i32) -> JobReport {
            JobReport {
                state: job_state::CANCELED,
                reasons: vec!["job-canceled-by-user".into()],
                message: message.to_owned(),
                impressions: Some(impressions),
            }
        }

        /// Aborted, with the reasons that say why.
        pub fn aborted(reasons: Vec<String>, message: &str, impressions: i32) -> JobReport {
            let reasons = if reasons.is_empty() {
                vec!["aborted-by-system".to_owned()]
            } else {
                reasons
            };
            JobReport {
                state: job_state::ABORTED,
                reasons,
                message: message.to_owned(),
                impressions: Some(impressions),
            }
        }
    }

    /// Builds the INFRA requests of one device at one site.
    #[derive(Debug, Clone)]
    pub struct Infra {
        /// The site URI (`printer-uri`).
        pub site: String,
        /// The agent user (`requesting-user-name`).
        pub user: String,
        /// `output-device-uuid`.
        pub uuid: String,
    }

    impl Infra {
        fn base(&self, op: u16) -> IppRequestResponse {
            let mut req = message::request(op, &self.site, &self.user, 1);
            req.attributes_mut().add(
                DelimiterTag::OperationAttributes,
                attribute("output-device-uuid", uri(&self.uuid)),
            );
            req
        }

        fn with_job(&self, op: u16, job_id: i32) -> IppRequestResponse {
            let mut req = self.base(op);
            req.attributes_mut().add(
                DelimiterTag::OperationAttributes,
                attribute("job-id", IppValue::Integer(job_id)),
            );
            req
        }

        /// Update-Output-Device-Attributes with these printer attributes.
        pub fn update_device(&self, attrs: Vec<IppAttribute>) -> IppRequestResponse {
            let mut req = self.base(op::UPDATE_OUTPUT_DEVICE_ATTRIBUTES);
            let mut group = IppAttributeGroup::new(DelimiterTag::PrinterAttributes);
            group.attributes_mut().extend(attrs);
            req.attributes_mut().groups_mut().push(group);
            req
        }

        /// Deregister-Output-Device.
        pub fn deregister(&self) -> IppRequestResponse {
            self.base(op::DEREGISTER_OUTPUT_DEVICE)
        }

        /// Create-Printer-Subscriptions for job-fetchable and
        /// job-state-changed, pulled with ippget.
        pub fn subscribe(&self, lease: Duration) -> IppRequestResponse {
            let mut req = self.base(op::CREATE_PRINTER_SUBSCRIPTIONS);
            let mut group = IppAttributeGroup::new(DelimiterTag::SubscriptionAttributes);
            group.attributes_mut().extend([
                attribute("notify-pull-method", keyword("ippget")),
                attribute(
                    "notify-events",
                    keywords(&["job-fetchable", "job-state-changed"]),
                ),
                attribute(
                    "notify-lease-duration",
                    IppValue::Integer(lease.as_secs().min(i32::MAX as u64) as i32),
                ),
            ]);
            req.attributes_mut().groups_mut().push(group);
            req
        }

        /// Get-Notifications with notify-wait.
        pub fn notifications(&self, sub: i32, next_seq: i32) -> IppRequestResponse {
            let mut req = self.base(op::GET_NOTIFICATIONS);
            let ops = DelimiterTag::OperationAttributes;
            req.attributes_mut().add(
                ops,
                attribute("notify-subscription-ids", IppValue::Integer(sub)),
            );
            req.attributes_mut().add(
                ops,
                attribute("notify-sequence-numbers", IppValue::Integer(next_seq)),
            );
            req.attributes_mut()
                .add(ops, attribute("notify-wait", IppValue::Boolean(true)));
            req
        }

        /// Get-Jobs `which-jobs=fetchable`.
        pub fn fetchable_jobs(&self) -> IppRequestResponse {
            let mut req = self.base(op::GET_JOBS);
            let ops = DelimiterTag::OperationAttributes;
            req.attributes_mut()
                .add(ops, attribute("which-jobs", keyword("fetchable")));
            req.attributes_mut().add(
                ops,
                attribute(
                    "requested-attributes",
                    keywords(&["job-id", "job-state", "job-state-reasons"]),
                ),
            );
            req
        }

        /// Fetch-Job, Acknowledge-Job or Get-Job-Attributes of a job.
        pub fn job(&self, op: u16, job_id: i32) -> IppRequestResponse {
            let mut req = self.with_job(op, job_id);
            if op == op::GET_JOB_ATTRIBUTES {
                req.attributes_mut().add(
                    DelimiterTag::OperationAttributes,
                    attribute(
                        "requested-attributes",
                        keywords(&["job-state", "job-state-reasons"]),
                    ),
                );
            }
            req
        }

        /// Fetch-Document (uncompressed) or Acknowledge-Document.
        pub fn document(&self, op: u16, job_id: i32, number: i32) -> IppRequestResponse {
            let mut req = self.with_job(op, job_id);
            let ops = DelimiterTag::OperationAttributes;
            req.attributes_mut()
                .add(ops, attribute("document-number", IppValue::Integer(number)));
            if op == op::FETCH_DOCUMENT {
                req.attributes_mut()
                    .add(ops, attribute("compression-accepted", keyword("none")));
            }
            req
        }

        /// Update-Job-Status.
        pub fn job_status(&self, job_id: i32, report: &JobReport) -> IppRequestResponse {
            let mut req = self.with_job(op::UPDATE_JOB_STATUS, job_id);
            let mut group = IppAttributeGroup::new(DelimiterTag::JobAttributes);
            let a = group.attributes_mut();
            a.push(attribute(
                "output-device-job-state",
                IppValue::Enum(report.state),
            ));
            a.push(attribute(
                "output-device-job-state-reasons",
                if report.reasons.is_empty() {
                    keyword("none")
                } else {
                    keywords(&report.reasons)
                },
            ));
            if !report.message.is_empty() {
                a.push(attribute(
                    "output-device-job-state-message",
                    text(&report.message),
                ));
            }
            if let Some(n) = report.impressions {
                a.push(attribute("job-impressions-completed", IppValue::Integer(n)));
            }
            req.attributes_mut().groups_mut().push(group);
            req
        }

        /// Update-Document-Status.
        pub fn document_status(&self, job_id: i32, number: i32, state: i32) -> IppRequestResponse {
            let mut req = self.with_job(op::UPDATE_DOCUMENT_STATUS, job_id);
            req.attributes_mut().add(
                DelimiterTag::OperationAttributes,
                attribute("document-number", IppValue::Integer(number)),
            );
            let mut group = IppAttributeGroup::new(DelimiterTag::DocumentAttributes);
            group.attributes_mut().push(attribute(
                "output-device-document-state",
                IppValue::Enum(state),
            ));
            req.attributes_mut().groups_mut().push(group);
            req
        }
    }

    /// A `urn:uuid:` (RFC 9562 version 4) from 16 random bytes.
    pub fn device_uuid(mut b: [u8; 16]) -> String {
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
        format!(
            "urn:uuid:{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }

    /// Whether a command mail's proxy URI names the configured site (the
    /// site names match; hosts may differ between what the relay
    /// publishes and what the agent is configured with).
    pub fn same_site(proxy_uri: &str, site: &str) -> bool {
        use faxgate_config::appliance::SiteUri;
        match (SiteUri::parse(proxy_uri), SiteUri::parse(site)) {
            (Ok(a), Ok(b)) => a.name == b.name,
            _ => false,
        }
    }
}

/// What the agent is doing, for the panel, the CLI and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentStatus {
    /// The site URI.
    pub site: String,
    /// This process's `output-device-uuid`.
    pub device_uuid: String,
    /// Registered at the site now.
    pub attached: bool,
    /// `long-poll` or `poll` while attached.
    pub transport: Option<&'static str>,
    /// The site's job id being printed.
    pub current_job: Option<i32>,
    /// Jobs printed to completion.
    pub jobs_printed: u64,
    /// Jobs canceled at the site's request or at the printer.
    pub jobs_canceled: u64,
    /// Jobs aborted (the printer refused or failed them).
    pub jobs_failed: u64,
    /// The printer's state as last mirrored.
    pub printer: Option<String>,
    /// The last error that ended a session.
    pub last_error: Option<String>,
}

/// Handle to the print agent actor. The actor's inputs are the site, the
/// printer, command mail and the shutdown token; the handle reads its
/// status.
#[derive(Debug, Clone)]
pub struct AgentHandle {
    status: watch::Receiver<AgentStatus>,
}

impl AgentHandle {
    /// Builds the clients (and the mail watcher for `on-mail`) from
    /// config and starts the actor on `tracker`. `printer_uri` is the
    /// appliance's `[printer] uri`; the spool and the nonce file live in
    /// `state_dir`.
    pub fn spawn(
        cfg: AgentSection,
        printer_uri: &str,
        state_dir: &Path,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> anyhow::Result<AgentHandle> {
        let mut site = IppClient::builder(cfg.site.clone())
            .basic_auth(cfg.user.clone(), cfg.password.clone())
            .connect_timeout(cfg.connect_timeout)
            .request_timeout(cfg.request_timeout);
        if let Some(tls) = &cfg.tls {
            use faxgate_relay::tls;
            let config = match (&tls.pin_sha256, &tls.ca_file) {
                (Some(pin), _) => tls::pinned_client_config(
                    tls::parse_fingerprint(pin).context("while reading agent.tls.pin_sha256")?,
                ),
                (None, Some(ca)) => tls::ca_client_config(ca)
                    .with_context(|| format!("while loading agent.tls.ca_file {}", ca.display()))?,
                (None, None) => anyhow::bail!("agent.tls needs pin_sha256 or ca_file"),
            };
            site = site.tls(config);
            if let Some(name) = &tls.server_name {
                site = site.server_name(name.clone());
            }
        }
        let site = site.build().context("while setting up the site client")?;
        let printer = IppClient::builder(printer_uri)
            .connect_timeout(cfg.connect_timeout)
            .request_timeout(cfg.request_timeout)
            .build()
            .context("while setting up the printer client")?;
        let uuid = proto::device_uuid(rand::random());
        let device_file = state_dir.join(DEVICE_FILE);
        let previous_device = std::fs::read_to_string(&device_file)
            .ok()
            .map(|t| t.trim().to_owned())
            .filter(|t| t.starts_with("urn:uuid:") && t.len() == 45);
        if let Err(e) = crate::appliance::store::write_durable(&device_file, uuid.as_bytes()) {
            // Only the hand-back at the next start is slower (the lease).
            warn!(path = %device_file.display(), error = %format!("{e:#}"), "Cannot note the device UUID.");
        }
        let mail = match (&cfg.attach, &cfg.mail) {
            (AttachMode::OnMail, Some(m)) => {
                let (watcher, rx) = start_watcher(&cfg, m, state_dir, &shutdown)?;
                Some(MailIn {
                    watcher,
                    rx: Some(rx),
                })
            }
            (AttachMode::OnMail, None) => anyhow::bail!("attach = on-mail needs [agent.mail]"),
            (AttachMode::Always, _) => None,
        };
        let ctx = Arc::new(JobCtx {
            site,
            printer,
            printer_uri: printer_uri.to_owned(),
            infra: Infra {
                site: cfg.site.clone(),
                user: cfg.user.clone(),
                uuid: uuid.clone(),
            },
            spool: state_dir.join("agent-spool"),
            book: JobBook {
                dir: state_dir.join("agent-jobs"),
            },
            front_check: cfg.poll_interval,
            job_poll: cfg.job_poll_interval,
            printer_retry: cfg.status_interval,
            grace: cfg.shutdown_grace,
        });
        let (status_tx, status) = watch::channel(AgentStatus {
            site: cfg.site.clone(),
            device_uuid: uuid.clone(),
            ..AgentStatus::default()
        });
        let span = info_span!("agent", site = %cfg.site, device = %uuid);
        let actor = AgentActor {
            cfg,
            ctx,
            mail,
            status: status_tx,
            shutdown,
            cached_attrs: None,
            mirrored: None,
            retry_jobs: Vec::new(),
            unreported: Vec::new(),
            recent: VecDeque::new(),
            retry_until: None,
            previous_device,
        };
        tracker.spawn(actor.run().instrument(span));
        Ok(AgentHandle { status })
    }

    /// The agent's status now.
    pub fn status(&self) -> AgentStatus {
        self.status.borrow().clone()
    }
}

/// The IMAP watcher for wake-up mails, from `[agent.mail]`.
fn start_watcher(
    cfg: &AgentSection,
    m: &faxgate_config::appliance::AgentMailSection,
    state_dir: &Path,
    shutdown: &CancellationToken,
) -> anyhow::Result<(WatcherHandle, mpsc::Receiver<Incoming>)> {
    let mut w = WatcherConfig::new(
        m.host.clone(),
        m.port(),
        m.user.clone(),
        m.password.clone(),
        cfg.printer_name(),
    );
    w.tls = match m.tls {
        MailTls::Implicit => Tls::Implicit,
        MailTls::Starttls => Tls::StartTls,
        MailTls::None => Tls::None,
    };
    w.trust = match (&m.pin_sha256, &m.ca_file) {
        (Some(pin), _) => Trust::Pin(
            faxgate_relay::tls::parse_fingerprint(pin)
                .context("while reading agent.mail.pin_sha256")?,
        ),
        (None, Some(ca)) => Trust::CaFile(ca.clone()),
        (None, None) => Trust::SystemRoots,
    };
    w.mailbox = m.mailbox.clone();
    w.processed_folder = m.processed_folder.clone();
    w.quarantine_folder = m.quarantine_folder.clone();
    w.use_idle = m.use_idle;
    w.poll_interval = m.poll_interval;
    w.nonce_file = Some(state_dir.join("agent-nonces"));
    let key = faxgate_config::appliance::decode_hex(m.key.expose())
        .context("agent.mail.key is not hex")?;
    let verifier = match m.scheme {
        MailScheme::HmacSha256 => Verifier::hmac(&key),
        MailScheme::Ed25519 => Verifier::ed25519(&key),
    }
    .context("while reading agent.mail.key")?;
    WatcherHandle::spawn(w, verifier, shutdown.clone())
        .context("while starting the command-mail watcher")
}

/// What the job runs share.
#[derive(Debug)]
struct JobCtx {
    site: IppClient,
    printer: IppClient,
    printer_uri: String,
    infra: Infra,
    spool: PathBuf,
    /// What the agent must remember across retries and restarts.
    book: JobBook,
    /// How often the site is asked whether a printing job was canceled.
    front_check: Duration,
    /// How often the printer's job is looked at.
    job_poll: Duration,
    /// How often to try again when the printer cannot take a job.
    printer_retry: Duration,
    /// How long a document at the printer may finish after shutdown.
    grace: Duration,
}

/// How long the printer gets to confirm a Cancel-Job sent on shutdown
/// (after the grace) before the job is handed back unconfirmed.
const CANCEL_CONFIRM: Duration = Duration::from_secs(3);

/// What the agent keeps on disk about a job it holds, so that neither a
/// retry nor a restart (which brings a new device UUID, so the site
/// offers the job again) prints a document twice or loses a final
/// report. Removed once the site took the job's final report.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
struct JobRecord {
    /// The job's `job-uuid`: a record whose job id came back for another
    /// job is not used.
    job_uuid: Option<String>,
    /// Documents 1 to `printed` completed at the printer.
    printed: i32,
    /// Their impressions.
    impressions: i32,
    /// The document at the printer whose end is not known yet.
    at_printer: Option<AtPrinter>,
    /// A final report the site has not taken yet.
    report: Option<JobReport>,
}

/// A document the printer took (Print-Job answered with a job id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct AtPrinter {
    /// Its document-number at the site.
    document: i32,
    /// The printer's job id.
    local_job: i32,
    /// Cancel-Job was sent on shutdown: if the printer's job ends
    /// canceled or aborted, the document is printed again.
    canceled: bool,
}

impl JobRecord {
    /// The record to go on with for a job just fetched: the stored one
    /// if it is about this job (same `job-uuid`), else a fresh one.
    fn resume(stored: Option<JobRecord>, job_uuid: Option<&str>) -> JobRecord {
        match stored {
            Some(r) if r.job_uuid.as_deref() == job_uuid => r,
            _ => JobRecord {
                job_uuid: job_uuid.map(str::to_owned),
                ..JobRecord::default()
            },
        }
    }

    /// The first document still to print, of `documents`.
    fn first_document(&self, documents: i32) -> i32 {
        self.printed.clamp(0, documents) + 1
    }
}

/// The agent's job records: one JSON file per site job,
/// `job-ID.json`, in `state_dir/agent-jobs`, written durably.
#[derive(Debug, Clone)]
struct JobBook {
    /// The folder.
    dir: PathBuf,
}

impl JobBook {
    /// Records older than this are dropped at startup: their jobs ended
    /// at the site without this agent (canceled while it was away).
    const KEEP: Duration = Duration::from_secs(30 * 24 * 3600);

    /// Where a job's record lives.
    fn path(&self, job_id: i32) -> PathBuf {
        self.dir.join(format!("job-{job_id}.json"))
    }

    /// A job's record; none when there is none or it cannot be read
    /// (logged).
    async fn load(&self, job_id: i32) -> Option<JobRecord> {
        let path = self.path(job_id);
        match tokio::fs::read(&path).await {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(r) => Some(r),
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "An agent job record is unreadable; ignored.");
                    None
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                warn!(path = %path.display(), error = %e, "Cannot read an agent job record; ignored.");
                None
            }
        }
    }

    /// Writes a job's record so that it survives a crash: temp file,
    /// fsync, rename, fsync of the folder.
    async fn save(&self, job_id: i32, record: &JobRecord) -> anyhow::Result<()> {
        let data = serde_json::to_vec(record)
            .with_context(|| format!("while encoding the record of job {job_id}"))?;
        let path = self.path(job_id);
        tokio::task::spawn_blocking(move || super::store::write_durable(&path, &data))
            .await
            .context("the job record writer panicked")?
    }

    /// Removes a job's record, durably (logged on failure).
    async fn remove(&self, job_id: i32) {
        let dir = self.dir.clone();
        let path = self.path(job_id);
        let removed = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                r => r.with_context(|| format!("while removing {}", path.display()))?,
            }
            super::store::sync_dir(&dir)
        })
        .await;
        match removed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                warn!(job_id, error = %format!("{e:#}"), "Cannot remove the agent's record of a finished job.")
            }
            Err(e) => warn!(job_id, error = %e, "The job record remover panicked."),
        }
    }

    /// Every record, by job id. Records older than [`JobBook::KEEP`]
    /// and temp files of interrupted writes are removed.
    async fn all(&self) -> Vec<(i32, JobRecord)> {
        let mut out = Vec::new();
        let mut dir = match tokio::fs::read_dir(&self.dir).await {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return out,
            Err(e) => {
                warn!(path = %self.dir.display(), error = %e, "Cannot read the agent's job records.");
                return out;
            }
        };
        while let Ok(Some(entry)) = dir.next_entry().await {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(job_id) = name
                .strip_prefix("job-")
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| n.parse::<i32>().ok())
            else {
                if name.ends_with(".tmp") {
                    let _ = tokio::fs::remove_file(&path).await;
                }
                continue;
            };
            let stale = entry
                .metadata()
                .await
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > Self::KEEP);
            if stale {
                info!(job_id, "Dropping an agent job record older than 30 days.");
                self.remove(job_id).await;
                continue;
            }
            if let Some(r) = self.load(job_id).await {
                out.push((job_id, r));
            }
        }
        out.sort_by_key(|(id, _)| *id);
        out
    }
}

struct MailIn {
    watcher: WatcherHandle,
    rx: Option<mpsc::Receiver<Incoming>>,
}

/// A wake-up: the jobs it names and the mail to acknowledge once
/// attached.
struct Wake {
    jobs: Vec<i32>,
    incoming: Option<Incoming>,
}

impl Wake {
    /// Whether the command (if from a mail) may still be acted on.
    fn expired(&self) -> bool {
        self.incoming
            .as_ref()
            .is_some_and(|i| i.command.expires <= SystemTime::now())
    }
}

/// How a session ended.
enum End {
    /// Shut down (deregistered).
    Shutdown,
    /// Detached on purpose (deregistered).
    Detached,
    /// Failed; attach again after a backoff. `wake` is a wake-up not yet
    /// acted on.
    Failed {
        error: String,
        wake: Option<Wake>,
        attached: bool,
        fatal: bool,
    },
}

/// How a job run ended.
#[derive(Debug)]
enum JobOutcome {
    Completed,
    Canceled,
    Aborted(String),
    /// Not ours after all (fetched by another device, canceled before).
    Skipped(String),
    /// Ours but unfinished because the site could not be reached; fetch
    /// it again in the next session.
    Retry(String),
    /// Shutdown came first; not reported, the site offers it again.
    HandedBack,
}

struct JobResult {
    job_id: i32,
    outcome: JobOutcome,
    /// A final report that did not get through; sent again after the
    /// next registration.
    unreported: Option<JobReport>,
}

type JobFuture = Pin<Box<dyn Future<Output = JobResult> + Send>>;

struct Worker {
    job_id: i32,
    cancel: CancellationToken,
    stop: CancellationToken,
    fut: JobFuture,
}

/// What one wait (a long poll, or a poll interval and Get-Jobs) found.
struct Waited {
    events: Vec<Event>,
    next_seq: i32,
    /// Wait this long before the next long poll (the front answered at
    /// once with nothing: it does not hold requests).
    pause: Duration,
}

type WaitFuture = Pin<Box<dyn Future<Output = Result<Waited, ClientError>> + Send>>;

struct AgentActor {
    cfg: AgentSection,
    ctx: Arc<JobCtx>,
    mail: Option<MailIn>,
    status: watch::Sender<AgentStatus>,
    shutdown: CancellationToken,
    /// The printer's full attributes from the last good read.
    cached_attrs: Option<Vec<IppAttribute>>,
    /// The printer state the site has.
    mirrored: Option<PrinterSnapshot>,
    /// Jobs this device acknowledged but did not finish (the site was
    /// unreachable); fetched first in the next session.
    retry_jobs: Vec<i32>,
    /// Final reports that did not get through.
    unreported: Vec<(i32, JobReport)>,
    /// Jobs finished lately, so late events about them are ignored.
    recent: VecDeque<i32>,
    /// `on-mail`: keep attaching again after failures until then.
    retry_until: Option<Instant>,
    /// The device UUID of the process before this one, deregistered at
    /// the first attach.
    previous_device: Option<String>,
}

/// The file in `state_dir` naming the device UUID of the running process.
const DEVICE_FILE: &str = "agent-device";

/// Awaits an optional future; pending forever without one.
async fn maybe<F: Future + Unpin>(f: &mut Option<F>) -> F::Output {
    match f {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

async fn recv_opt<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Errors an operator must fix: wrong password, wrong user, TLS refused.
fn needs_operator(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::NotAuthenticated { .. } | ClientError::Tls { .. }
    ) || matches!(
        e.ipp_status(),
        Some(status::NOT_AUTHENTICATED | status::NOT_AUTHORIZED | status::FORBIDDEN)
    )
}

impl AgentActor {
    async fn run(mut self) {
        info!(mode = ?self.cfg.attach, "Print agent started.");
        self.clean_spool().await;
        self.load_unreported().await;
        let mut failures = 0u32;
        let mut wake: Option<Wake> = None;
        loop {
            if self.shutdown.is_cancelled() {
                break;
            }
            let attach_now = match self.cfg.attach {
                AttachMode::Always => true,
                AttachMode::OnMail => {
                    wake.is_some() || self.retry_until.is_some_and(|t| Instant::now() < t)
                }
            };
            if !attach_now {
                if self.idle(&mut wake).await {
                    break;
                }
                continue;
            }
            match self.session(wake.take()).await {
                End::Shutdown => break,
                End::Detached => {
                    failures = 0;
                    self.retry_until = None;
                }
                End::Failed {
                    error,
                    wake: left,
                    attached,
                    fatal,
                } => {
                    if attached {
                        failures = 0;
                    }
                    let delay = crate::appliance::outbox::backoff(
                        self.cfg.reconnect_initial,
                        self.cfg.reconnect_max,
                        failures,
                    );
                    failures = failures.saturating_add(1);
                    if fatal {
                        error!(error = %error, retry_in = ?delay, "The site refused the agent; check agent.user, agent.password and agent.tls.");
                    } else {
                        warn!(error = %error, retry_in = ?delay, "Print agent session failed; will attach again.");
                    }
                    self.status.send_modify(|s| s.last_error = Some(error));
                    wake = left.filter(|w| {
                        if w.expired() {
                            info!("The wake-up command expired before the agent could attach.");
                            false
                        } else {
                            true
                        }
                    });
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = self.shutdown.cancelled() => break,
                    }
                }
            }
        }
        if let Some(m) = &self.mail {
            m.watcher.shutdown();
            if tokio::time::timeout(Duration::from_secs(5), m.watcher.stopped())
                .await
                .is_err()
            {
                debug!("The mail watcher did not stop in time.");
            }
        }
        self.status.send_modify(|s| {
            s.attached = false;
            s.transport = None;
            s.current_job = None;
        });
        info!("Print agent stopped.");
    }

    /// Removes document files left by an earlier process (their jobs are
    /// offered again under this process's new device UUID).
    async fn clean_spool(&self) {
        if let Err(e) = tokio::fs::create_dir_all(&self.ctx.spool).await {
            warn!(path = %self.ctx.spool.display(), error = %e, "Cannot create the agent's spool folder.");
            return;
        }
        let Ok(mut dir) = tokio::fs::read_dir(&self.ctx.spool).await else {
            return;
        };
        while let Ok(Some(entry)) = dir.next_entry().await {
            let _ = tokio::fs::remove_file(entry.path()).await;
        }
    }

    /// Takes up the final reports an earlier process could not deliver
    /// (from the job records): they are sent after the first
    /// registration, before any job is fetched, and their jobs are not
    /// printed again when the site offers them (it does: this process
    /// deregisters the earlier one's device and registers a new one).
    async fn load_unreported(&mut self) {
        for (job_id, record) in self.ctx.book.all().await {
            if let Some(report) = record.report {
                info!(
                    job_id,
                    state = job_state::name(report.state),
                    "A final job report from before the restart is still owed; it is sent once attached."
                );
                self.unreported.push((job_id, report));
                self.recent.push_back(job_id);
            }
        }
    }

    /// Detached (`on-mail`): waits for a wake-up. True on shutdown.
    async fn idle(&mut self, wake: &mut Option<Wake>) -> bool {
        self.status.send_modify(|s| {
            s.attached = false;
            s.transport = None;
        });
        tokio::select! {
            () = self.shutdown.cancelled() => true,
            inc = recv_mail(&mut self.mail) => {
                match inc {
                    Some(incoming) => self.mail_while_idle(incoming, wake),
                    None => {
                        error!("The command-mail watcher stopped; the agent cannot be woken any more.");
                        if let Some(m) = &mut self.mail {
                            m.rx = None;
                        }
                    }
                }
                false
            }
        }
    }

    fn mail_while_idle(&mut self, incoming: Incoming, wake: &mut Option<Wake>) {
        let cmd = &incoming.command;
        if !proto::same_site(&cmd.proxy_uri, &self.cfg.site) {
            warn!(proxy = %cmd.proxy_uri, "A command mail names another site; ignored.");
            incoming.ack();
            return;
        }
        match cmd.kind {
            Kind::Wake => {
                let jobs = mail_job_ids(&cmd.job_ids);
                info!(jobs = ?jobs, "Wake-up command received; attaching.");
                *wake = Some(Wake {
                    jobs,
                    incoming: Some(incoming),
                });
            }
            Kind::Cancel => {
                debug!("Cancel command while detached; nothing to do.");
                incoming.ack();
            }
        }
    }

    /// Reads the description and chooses the transport.
    async fn plan(&self) -> Result<Plan, ClientError> {
        let desc = match self.ctx.site.get(proto::DESCRIPTION_PATH, 64 * 1024).await {
            Ok(bytes) => match proto::Description::parse(&bytes) {
                Ok(d) => Some(d),
                Err(e) => {
                    warn!(error = %e, "The front's description document is unreadable; assuming defaults.");
                    None
                }
            },
            Err(ClientError::Http { status, .. }) => {
                debug!(
                    status,
                    "The front has no description document; assuming defaults."
                );
                None
            }
            Err(e) => return Err(e),
        };
        proto::choose_transport(desc.as_ref(), self.cfg.transport, self.cfg.poll_interval).map_err(
            |reason| ClientError::BadUri {
                uri: self.cfg.site.clone(),
                reason,
            },
        )
    }

    /// Reads the printer and registers it (Update-Output-Device-Attributes).
    /// Deregisters the device of the process before this one (it may have
    /// crashed holding jobs): the site hands its unfinished jobs back at
    /// once, and this device fetches them (resuming from the job records)
    /// instead of waiting out the old device's lease. Any IPP answer
    /// settles it (not-found: it was deregistered already); a transport
    /// error is tried again at the next attach.
    async fn retire_previous_device(&mut self) -> Result<(), ClientError> {
        let Some(old) = self.previous_device.clone() else {
            return Ok(());
        };
        let infra = proto::Infra {
            uuid: old.clone(),
            ..self.ctx.infra.clone()
        };
        match self.ctx.site.call(infra.deregister(), None).await {
            Ok(_) => {
                info!(device = %old, "The device of the previous run is deregistered; the site offers its unfinished jobs again.");
            }
            Err(e) if e.ipp_status().is_some() => {
                debug!(device = %old, error = %e, "The device of the previous run was not deregistered (the site answered).");
            }
            Err(e) => return Err(e),
        }
        self.previous_device = None;
        Ok(())
    }

    async fn register(&mut self) -> Result<(), ClientError> {
        let req = proto::printer_attributes_request(&self.ctx.printer_uri, &["all"]);
        let attrs = match self.ctx.printer.call(req, None).await {
            Ok(resp) => {
                let attrs = proto::device_attributes(&resp);
                self.cached_attrs = Some(attrs.clone());
                attrs
            }
            Err(e) => match &self.cached_attrs {
                Some(cached) => {
                    warn!(error = %e, "The printer does not answer; registering its last known attributes as offline.");
                    let mut attrs = cached.clone();
                    PrinterSnapshot::unreachable(&e.to_string()).apply_to(&mut attrs);
                    attrs
                }
                None => return Err(e),
            },
        };
        let snapshot = PrinterSnapshot::from_attributes(&attrs);
        self.ctx
            .site
            .call(self.ctx.infra.update_device(attrs), None)
            .await?;
        self.status
            .send_modify(|s| s.printer = Some(snapshot.summary()));
        self.mirrored = Some(snapshot);
        Ok(())
    }

    /// Reads the printer's state and tells the site when it changed.
    async fn mirror(&mut self) {
        let req = proto::printer_attributes_request(
            &self.ctx.printer_uri,
            &[
                "printer-state",
                "printer-state-reasons",
                "printer-state-message",
            ],
        );
        let snapshot = match self.ctx.printer.call(req, None).await {
            Ok(resp) => PrinterSnapshot::from_response(&resp),
            Err(e) => PrinterSnapshot::unreachable(&e.to_string()),
        };
        if self.mirrored.as_ref() == Some(&snapshot) {
            return;
        }
        let summary = snapshot.summary();
        match self
            .ctx
            .site
            .call(self.ctx.infra.update_device(snapshot.attributes()), None)
            .await
        {
            Ok(_) => {
                info!(printer = %summary, "Printer state changed; the site shows it.");
                self.mirrored = Some(snapshot);
                self.status.send_modify(|s| s.printer = Some(summary));
            }
            // Tried again at the next tick; a broken site also ends the
            // wait, which restarts the session.
            Err(e) => debug!(error = %e, "Could not pass on the printer state."),
        }
    }

    async fn fetchable(&self) -> Result<Vec<i32>, ClientError> {
        let resp = self
            .ctx
            .site
            .call(self.ctx.infra.fetchable_jobs(), None)
            .await?;
        Ok(proto::job_ids(&resp))
    }

    async fn subscribe(&self, plan: &Plan) -> Result<i32, ClientError> {
        let lease = (plan.notify_wait * 4).max(Duration::from_secs(300));
        let resp = self
            .ctx
            .site
            .call(self.ctx.infra.subscribe(lease), None)
            .await?;
        proto::subscription_id(&resp).map_err(|reason| ClientError::Unparsable {
            uri: self.cfg.site.clone(),
            operation: op::name(op::CREATE_PRINTER_SUBSCRIPTIONS),
            reason,
        })
    }

    /// The next wait: a long poll, or a poll interval then Get-Jobs.
    fn wait(&self, plan: &Plan, sub: Option<(i32, i32)>, pause: Duration) -> WaitFuture {
        let ctx = Arc::clone(&self.ctx);
        match (plan.transport, sub) {
            (Transport::LongPoll, Some((sub, seq))) => {
                let timeout = plan.notify_wait + ctx.site.request_timeout();
                Box::pin(async move {
                    if !pause.is_zero() {
                        tokio::time::sleep(pause).await;
                    }
                    let started = Instant::now();
                    let resp = ctx
                        .site
                        .call_timeout(ctx.infra.notifications(sub, seq), None, timeout)
                        .await?;
                    let n = proto::parse_notifications(&resp, sub, seq);
                    // Nothing new, at once: the front did not hold the
                    // request, so wait as it says before asking again.
                    // (Events that need no action still count as news.)
                    let quick = n.next_seq == seq && started.elapsed() < Duration::from_secs(1);
                    Ok(Waited {
                        events: n.events,
                        next_seq: n.next_seq,
                        pause: if quick {
                            n.get_interval
                                .unwrap_or(Duration::from_secs(1))
                                .clamp(Duration::from_secs(1), Duration::from_secs(30))
                        } else {
                            Duration::ZERO
                        },
                    })
                })
            }
            _ => {
                let interval = plan.poll_interval;
                Box::pin(async move {
                    tokio::time::sleep(interval).await;
                    let resp = ctx.site.call(ctx.infra.fetchable_jobs(), None).await?;
                    Ok(Waited {
                        events: proto::job_ids(&resp)
                            .into_iter()
                            .map(Event::Fetchable)
                            .collect(),
                        next_seq: 0,
                        pause: Duration::ZERO,
                    })
                })
            }
        }
    }

    /// Registers, subscribes (long poll) and lists the fetchable jobs:
    /// the start of a session, and again when the front forgot the
    /// subscription (it restarted).
    async fn attach(
        &mut self,
        plan: &mut Plan,
        queue: &mut VecDeque<i32>,
    ) -> Result<Option<(i32, i32)>, ClientError> {
        self.retire_previous_device().await?;
        self.register().await?;
        let mut sub = None;
        if plan.transport == Transport::LongPoll {
            match self.subscribe(plan).await {
                Ok(id) => sub = Some((id, 1)),
                Err(e)
                    if self.cfg.transport == AgentTransport::Auto
                        && e.ipp_status() == Some(status::OPERATION_NOT_SUPPORTED) =>
                {
                    warn!(error = %e, "The front cannot long-poll; polling instead.");
                    plan.transport = Transport::Poll;
                }
                Err(e) => return Err(e),
            }
        }
        for id in self.fetchable().await? {
            enqueue(queue, id, None, &self.recent);
        }
        Ok(sub)
    }

    async fn session(&mut self, mut wake: Option<Wake>) -> End {
        let failed = |e: &ClientError, wake: Option<Wake>, attached: bool| End::Failed {
            error: e.to_string(),
            wake,
            attached,
            fatal: needs_operator(e),
        };
        let mut plan = match self.plan().await {
            Ok(p) => p,
            Err(e) => return failed(&e, wake, false),
        };
        let mut queue: VecDeque<i32> = VecDeque::new();
        // Jobs this device holds from an earlier session come first, then
        // the ones a wake-up names.
        for id in std::mem::take(&mut self.retry_jobs) {
            enqueue(&mut queue, id, None, &VecDeque::new());
        }
        if let Some(w) = &wake {
            for id in &w.jobs {
                enqueue(&mut queue, *id, None, &self.recent);
            }
        }
        let mut sub = match self.attach(&mut plan, &mut queue).await {
            Ok(s) => s,
            Err(e) => {
                self.retry_jobs.extend(queue.iter().copied());
                return failed(&e, wake, false);
            }
        };
        info!(transport = plan.transport.as_str(), poll_interval = ?plan.poll_interval, jobs = queue.len(), "Attached to the site.");
        self.status.send_modify(|s| {
            s.attached = true;
            s.transport = Some(plan.transport.as_str());
            s.last_error = None;
        });
        if let Some(incoming) = wake.as_mut().and_then(|w| w.incoming.take()) {
            incoming.ack();
        }
        self.flush_unreported().await;
        if self.cfg.attach == AttachMode::OnMail {
            self.retry_until = Some(Instant::now() + self.cfg.idle_detach);
        }

        let mut wait = Some(self.wait(&plan, sub, Duration::ZERO));
        let mut worker: Option<Worker> = None;
        let start = Instant::now() + self.cfg.status_interval;
        let mut status_tick = tokio::time::interval_at(start, self.cfg.status_interval);
        status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_activity = Instant::now();
        let mut stopping = false;
        let mut detach = false;
        let mut broken: Option<ClientError> = None;
        let end = loop {
            if worker.is_none() {
                if stopping {
                    break End::Shutdown;
                }
                if let Some(e) = broken.take() {
                    self.retry_jobs.extend(queue.iter().copied());
                    break failed(&e, None, true);
                }
                if detach {
                    break End::Detached;
                }
                // A job whose final report is still owed was printed: it
                // is reported, never fetched again.
                queue.retain(|id| !self.unreported.iter().any(|(j, _)| j == id));
                if let Some(id) = queue.pop_front() {
                    worker = Some(self.start_job(id));
                    last_activity = Instant::now();
                }
            }
            let idle_at =
                (self.cfg.attach == AttachMode::OnMail && worker.is_none() && queue.is_empty())
                    .then(|| last_activity + self.cfg.idle_detach);
            tokio::select! {
                () = self.shutdown.cancelled(), if !stopping => {
                    stopping = true;
                    if let Some(w) = &worker {
                        info!(job_id = w.job_id, grace = ?self.ctx.grace, "Shutting down: finishing or handing back the job in progress.");
                        w.stop.cancel();
                    }
                }
                result = maybe_job(&mut worker) => {
                    worker = None;
                    last_activity = Instant::now();
                    if self.cfg.attach == AttachMode::OnMail {
                        self.retry_until = Some(last_activity + self.cfg.idle_detach);
                    }
                    if let Some(e) = self.job_finished(result) {
                        broken.get_or_insert(e);
                    }
                }
                r = maybe(&mut wait) => {
                    wait = None;
                    match r {
                        Ok(w) => {
                            if !w.events.is_empty() {
                                debug!(events = ?w.events, "Events from the site.");
                            }
                            for ev in w.events {
                                self.on_event(ev, &mut queue, worker.as_ref());
                            }
                            if let Some((_, seq)) = &mut sub {
                                *seq = w.next_seq;
                            }
                            wait = Some(self.wait(&plan, sub, w.pause));
                        }
                        Err(e) if sub.is_some() && e.ipp_status() == Some(status::NOT_FOUND) => {
                            info!("The front no longer knows the subscription (it restarted); registering again.");
                            match self.attach(&mut plan, &mut queue).await {
                                Ok(s) => {
                                    sub = s;
                                    wait = Some(self.wait(&plan, sub, Duration::ZERO));
                                }
                                Err(e) => { broken.get_or_insert(e); }
                            }
                        }
                        Err(e) => { broken.get_or_insert(e); }
                    }
                }
                _ = status_tick.tick() => self.mirror().await,
                inc = recv_mail(&mut self.mail) => match inc {
                    Some(incoming) => {
                        last_activity = Instant::now();
                        if self.mail_while_attached(incoming, &mut queue, worker.as_ref()) {
                            detach = true;
                        }
                    }
                    None => {
                        if let Some(m) = &mut self.mail {
                            m.rx = None;
                        }
                    }
                },
                () = sleep_until_opt(idle_at) => {
                    info!(idle = ?self.cfg.idle_detach, "No jobs for a while; detaching.");
                    detach = true;
                }
            }
        };
        if matches!(end, End::Shutdown | End::Detached) {
            self.deregister().await;
        }
        self.status.send_modify(|s| {
            s.attached = false;
            s.transport = None;
            s.current_job = None;
        });
        end
    }

    /// A command mail while attached. True: detach.
    fn mail_while_attached(
        &mut self,
        incoming: Incoming,
        queue: &mut VecDeque<i32>,
        worker: Option<&Worker>,
    ) -> bool {
        let cmd = &incoming.command;
        if !proto::same_site(&cmd.proxy_uri, &self.cfg.site) {
            warn!(proxy = %cmd.proxy_uri, "A command mail names another site; ignored.");
            incoming.ack();
            return false;
        }
        let detach = match cmd.kind {
            Kind::Wake => {
                let jobs = mail_job_ids(&cmd.job_ids);
                info!(jobs = ?jobs, "Wake-up command while attached; fetching its jobs.");
                for id in jobs {
                    enqueue(queue, id, worker.map(|w| w.job_id), &self.recent);
                }
                false
            }
            Kind::Cancel if worker.is_none() && queue.is_empty() => {
                info!("Cancel command: detaching.");
                true
            }
            Kind::Cancel => {
                info!("Cancel command while printing; staying attached until the jobs are done.");
                false
            }
        };
        incoming.ack();
        detach
    }

    fn on_event(&mut self, event: Event, queue: &mut VecDeque<i32>, worker: Option<&Worker>) {
        match event {
            Event::Fetchable(id) => enqueue(queue, id, worker.map(|w| w.job_id), &self.recent),
            Event::Stop(id) => {
                if let Some(w) = worker.filter(|w| w.job_id == id) {
                    if !w.cancel.is_cancelled() {
                        info!(job_id = id, "The site asks to stop the job.");
                        w.cancel.cancel();
                    }
                } else {
                    queue.retain(|q| *q != id);
                }
            }
        }
    }

    fn start_job(&self, job_id: i32) -> Worker {
        let cancel = CancellationToken::new();
        let stop = CancellationToken::new();
        let run = JobRun {
            ctx: Arc::clone(&self.ctx),
            job_id,
            cancel: cancel.clone(),
            stop: stop.clone(),
            impressions: 0,
            record: JobRecord::default(),
        };
        self.status.send_modify(|s| s.current_job = Some(job_id));
        Worker {
            job_id,
            cancel,
            stop,
            fut: Box::pin(run.run().instrument(info_span!("job", job_id))),
        }
    }

    /// Books a finished job. Returns an error that should end the session.
    fn job_finished(&mut self, result: JobResult) -> Option<ClientError> {
        let JobResult {
            job_id,
            outcome,
            unreported,
        } = result;
        self.status.send_modify(|s| s.current_job = None);
        if let Some(report) = unreported {
            self.unreported.push((job_id, report));
        }
        match outcome {
            JobOutcome::Completed => {
                info!(job_id, "Job printed.");
                self.status.send_modify(|s| s.jobs_printed += 1);
            }
            JobOutcome::Canceled => {
                info!(job_id, "Job canceled.");
                self.status.send_modify(|s| s.jobs_canceled += 1);
            }
            JobOutcome::Aborted(why) => {
                warn!(job_id, reason = %why, "Job aborted.");
                self.status.send_modify(|s| s.jobs_failed += 1);
            }
            JobOutcome::Skipped(why) => {
                debug!(job_id, reason = %why, "Job skipped.");
                return None;
            }
            JobOutcome::Retry(why) => {
                warn!(job_id, reason = %why, "Job interrupted; it is fetched again once the site answers.");
                self.retry_jobs.push(job_id);
                return Some(ClientError::Io {
                    addr: self.ctx.site.addr(),
                    operation: "job",
                    reason: why,
                });
            }
            JobOutcome::HandedBack => {
                info!(
                    job_id,
                    "Job handed back unfinished; the site offers it again."
                );
                return None;
            }
        }
        self.recent.push_back(job_id);
        while self.recent.len() > 256 {
            self.recent.pop_front();
        }
        None
    }

    /// Sends the final reports that did not get through before. A job
    /// the site handed back meanwhile (this device's lease ran out) is
    /// acknowledged again first, so that it is not printed twice.
    async fn flush_unreported(&mut self) {
        let pending = std::mem::take(&mut self.unreported);
        for (job_id, report) in pending {
            let site = &self.ctx.site;
            let mut sent = site
                .call(self.ctx.infra.job_status(job_id, &report), None)
                .await;
            if matches!(&sent, Err(e) if e.ipp_status() == Some(status::NOT_POSSIBLE)) {
                let ack = site
                    .call(self.ctx.infra.job(op::ACKNOWLEDGE_JOB, job_id), None)
                    .await;
                if ack.is_ok() {
                    sent = site
                        .call(self.ctx.infra.job_status(job_id, &report), None)
                        .await;
                }
            }
            match sent {
                Ok(_) => {
                    info!(
                        job_id,
                        state = job_state::name(report.state),
                        "Late job report delivered."
                    );
                    self.ctx.book.remove(job_id).await;
                }
                Err(e) if e.is_transient() => self.unreported.push((job_id, report)),
                Err(e) => {
                    warn!(job_id, error = %e, "The site refused a late job report; dropped.");
                    self.ctx.book.remove(job_id).await;
                }
            }
        }
    }

    async fn deregister(&self) {
        let timeout = self.cfg.request_timeout.min(Duration::from_secs(5));
        match self
            .ctx
            .site
            .call_timeout(self.ctx.infra.deregister(), None, timeout)
            .await
        {
            Ok(_) => info!("Deregistered from the site."),
            Err(e) => {
                warn!(error = %e, "Could not deregister; the site detaches the device when its lease runs out.")
            }
        }
    }
}

async fn maybe_job(worker: &mut Option<Worker>) -> JobResult {
    match worker {
        Some(w) => (&mut w.fut).await,
        None => std::future::pending().await,
    }
}

async fn recv_mail(mail: &mut Option<MailIn>) -> Option<Incoming> {
    match mail {
        Some(m) => recv_opt(&mut m.rx).await,
        None => std::future::pending().await,
    }
}

/// Queues a job unless it is queued, in progress or finished lately.
fn enqueue(queue: &mut VecDeque<i32>, id: i32, current: Option<i32>, recent: &VecDeque<i32>) {
    if current != Some(id) && !queue.contains(&id) && !recent.contains(&id) {
        queue.push_back(id);
    }
}

/// Job ids of a command mail that fit IPP's integer.
fn mail_job_ids(ids: &[u64]) -> Vec<i32> {
    ids.iter()
        .filter_map(|id| i32::try_from(*id).ok())
        .filter(|id| *id > 0)
        .collect()
}

/// How a document's run at the printer ended.
enum Printed {
    /// Done; go on with the next document.
    Done,
    /// Someone canceled it at the printer itself.
    CanceledAtPrinter,
    /// The printer's job (from before a restart) ended canceled or
    /// aborted after the agent canceled it on shutdown: print it again.
    Again,
    /// The job ends here.
    End(JobOutcome),
}

/// One job from Fetch-Job to the final report.
struct JobRun {
    ctx: Arc<JobCtx>,
    job_id: i32,
    /// The site asked to stop the job.
    cancel: CancellationToken,
    /// The agent is shutting down.
    stop: CancellationToken,
    /// Impressions of the documents printed so far.
    impressions: i32,
    /// What is on disk about the job (read after Acknowledge-Job).
    record: JobRecord,
}

/// Errors that mean the job is not (or no longer) this device's to print.
fn gone(e: &ClientError) -> bool {
    matches!(
        e.ipp_status(),
        Some(status::NOT_FETCHABLE | status::NOT_FOUND | status::GONE | status::NOT_POSSIBLE)
    )
}

impl JobRun {
    async fn run(mut self) -> JobResult {
        let (outcome, unreported) = self.steps().await;
        JobResult {
            job_id: self.job_id,
            outcome,
            unreported,
        }
    }

    async fn steps(&mut self) -> (JobOutcome, Option<JobReport>) {
        let ctx = Arc::clone(&self.ctx);
        let id = self.job_id;
        let resp = match ctx.site.call(ctx.infra.job(op::FETCH_JOB, id), None).await {
            Ok(r) => r,
            Err(e) if gone(&e) => return (JobOutcome::Skipped(e.to_string()), None),
            Err(e) => return (JobOutcome::Retry(e.to_string()), None),
        };
        let Some(job) = FetchedJob::from_response(&resp, id) else {
            return (
                JobOutcome::Skipped("the Fetch-Job answer has no job attributes".into()),
                None,
            );
        };
        info!(
            job_uuid = job.uuid.as_deref().unwrap_or("?"),
            name = %job.name,
            user = %job.user,
            client = %format!("{}:{}", job.client_addr.as_deref().unwrap_or("?"), job.client_port.unwrap_or(0)),
            documents = job.documents,
            format = job.format.as_deref().unwrap_or("?"),
            "Job fetched."
        );
        if self.stop.is_cancelled() {
            return (JobOutcome::HandedBack, None);
        }
        match ctx
            .site
            .call(ctx.infra.job(op::ACKNOWLEDGE_JOB, id), None)
            .await
        {
            Ok(_) => {}
            Err(e) if gone(&e) => return (JobOutcome::Skipped(e.to_string()), None),
            Err(e) => return (JobOutcome::Retry(e.to_string()), None),
        }
        self.record = JobRecord::resume(ctx.book.load(id).await, job.uuid.as_deref());
        if let Some(report) = self.record.report.clone() {
            info!(
                "The job was finished before; sending its final report instead of printing it again."
            );
            return self.finish(report).await;
        }
        self.impressions = self.record.impressions;
        let first = self.record.first_document(job.documents);
        if first > 1 {
            info!(
                printed = first - 1,
                "Documents printed before (an earlier session or process) are not printed again."
            );
            for k in 1..first {
                self.document_state(k, job_state::COMPLETED).await;
            }
        }
        for n in first..=job.documents {
            if self.stop.is_cancelled() {
                return (JobOutcome::HandedBack, None);
            }
            if self.cancel.is_cancelled() {
                return self.canceled("canceled before it was printed").await;
            }
            // The printer took this document before a retry or restart:
            // follow that job rather than sending the document again.
            if let Some(at) = self.record.at_printer.filter(|a| a.document == n) {
                info!(
                    document = n,
                    local_job = at.local_job,
                    "The printer took this document before; following its job there."
                );
                match self
                    .watch_document(&job, n, at.local_job, &[], at.canceled)
                    .await
                {
                    Printed::Again => {
                        info!(
                            document = n,
                            "The printer's job was canceled at shutdown; printing the document again."
                        );
                        self.record.at_printer = None;
                    }
                    printed => match self.after_document(n, printed).await {
                        Some(end) => return end,
                        None => continue,
                    },
                }
            }
            let path = ctx.spool.join(format!("job-{id}-doc-{n}"));
            let fetched = self.fetch_document(n, &path).await;
            let format = match fetched {
                Ok(f) => f
                    .or_else(|| job.format.clone())
                    .unwrap_or_else(|| "application/octet-stream".into()),
                Err(outcome) => {
                    remove(&path).await;
                    return match outcome {
                        FetchFailed::Interrupted if self.stop.is_cancelled() => {
                            (JobOutcome::HandedBack, None)
                        }
                        FetchFailed::Interrupted => {
                            self.canceled("canceled before it was printed").await
                        }
                        FetchFailed::Gone(msg) => {
                            self.finish(JobReport::aborted(
                                vec!["aborted-by-system".into()],
                                &msg,
                                self.impressions,
                            ))
                            .await
                        }
                        FetchFailed::Retry(msg) => (JobOutcome::Retry(msg), None),
                    };
                }
            };
            if let Err(e) = ctx
                .site
                .call(ctx.infra.document(op::ACKNOWLEDGE_DOCUMENT, id, n), None)
                .await
            {
                if e.is_transient() {
                    remove(&path).await;
                    return (JobOutcome::Retry(e.to_string()), None);
                }
                warn!(document = n, error = %e, "Acknowledge-Document refused; printing anyway.");
            }
            let printed = self.print_document(&job, n, &path, &format).await;
            remove(&path).await;
            if let Some(end) = self.after_document(n, printed).await {
                return end;
            }
        }
        self.finish(JobReport::completed(self.impressions)).await
    }

    /// How the job goes on after document `n`: `None` to the next
    /// document, or how it ends. ([`Printed::Again`] comes only from a
    /// resumed printer job; the caller prints the document again.)
    async fn after_document(
        &mut self,
        n: i32,
        printed: Printed,
    ) -> Option<(JobOutcome, Option<JobReport>)> {
        let end = match printed {
            Printed::Done | Printed::Again => return None,
            Printed::End(JobOutcome::Canceled) => {
                self.canceled("canceled at the site's request").await
            }
            Printed::CanceledAtPrinter => {
                let message = format!("document {n} was canceled at the printer");
                self.canceled(&message).await
            }
            Printed::End(JobOutcome::Aborted(msg)) => {
                let report = JobReport::aborted(Vec::new(), &msg, self.impressions);
                self.finish(report).await
            }
            Printed::End(other) => (other, None),
        };
        Some(end)
    }

    async fn canceled(&mut self, message: &str) -> (JobOutcome, Option<JobReport>) {
        self.finish(JobReport::canceled(message, self.impressions))
            .await
    }

    /// Sends the final report (three tries); returns it as unreported
    /// when it did not get through.
    async fn finish(&mut self, report: JobReport) -> (JobOutcome, Option<JobReport>) {
        let outcome = match report.state {
            job_state::COMPLETED => JobOutcome::Completed,
            job_state::CANCELED => JobOutcome::Canceled,
            _ => JobOutcome::Aborted(report.message.clone()),
        };
        let mut delay = Duration::from_secs(1);
        for attempt in 1..=3 {
            match self
                .ctx
                .site
                .call(self.ctx.infra.job_status(self.job_id, &report), None)
                .await
            {
                Ok(_) => {
                    self.ctx.book.remove(self.job_id).await;
                    return (outcome, None);
                }
                Err(e) if e.is_transient() && attempt < 3 => {
                    debug!(error = %e, "Final job report failed; trying again.");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(e) if e.is_transient() => {
                    warn!(error = %e, "Final job report failed; it is sent again after the next registration.");
                    break;
                }
                Err(e) => {
                    warn!(error = %e, "The site refused the final job report.");
                    self.ctx.book.remove(self.job_id).await;
                    return (outcome, None);
                }
            }
        }
        // Kept on disk too: after a restart the site offers the job to the
        // new device, which must report it, not print it again.
        self.record.report = Some(report.clone());
        self.record.at_printer = None;
        self.save_record().await;
        (outcome, Some(report))
    }

    /// Writes the job's record. A failure is logged and the job goes on
    /// (not printing would be worse than a repeat after a crash).
    async fn save_record(&self) {
        if let Err(e) = self.ctx.book.save(self.job_id, &self.record).await {
            warn!(error = %format!("{e:#}"), "Cannot write the agent's record of the job; a restart may print a document again.");
        }
    }

    /// A progress report; failures only logged.
    async fn progress(&self, report: &JobReport) {
        if let Err(e) = self
            .ctx
            .site
            .call(self.ctx.infra.job_status(self.job_id, report), None)
            .await
        {
            debug!(error = %e, "Job progress report failed.");
        }
    }

    async fn document_state(&self, number: i32, state: i32) {
        if let Err(e) = self
            .ctx
            .site
            .call(
                self.ctx.infra.document_status(self.job_id, number, state),
                None,
            )
            .await
        {
            debug!(document = number, error = %e, "Document status report failed.");
        }
    }

    /// Whether the site asks to stop this job (for polling agents, and as
    /// a backstop to events).
    async fn site_wants_stop(&self) -> bool {
        match self
            .ctx
            .site
            .call(
                self.ctx.infra.job(op::GET_JOB_ATTRIBUTES, self.job_id),
                None,
            )
            .await
        {
            Ok(resp) => JobState::from_response(&resp)
                .is_some_and(|s| proto::stop_requested(Some(s.state), &s.reasons)),
            Err(e) if gone(&e) => true,
            Err(e) => {
                debug!(error = %e, "Could not look at the job at the site.");
                false
            }
        }
    }

    /// Streams document `n` to `path` and syncs it. Returns its format.
    async fn fetch_document(&self, n: i32, path: &Path) -> Result<Option<String>, FetchFailed> {
        let ctx = &self.ctx;
        let req = ctx.infra.document(op::FETCH_DOCUMENT, self.job_id, n);
        let (resp, mut reader) = match ctx.site.call_streaming(req).await {
            Ok(x) => x,
            Err(e) if gone(&e) => {
                return Err(FetchFailed::Gone(format!(
                    "document {n} cannot be fetched: {e}"
                )));
            }
            Err(e) => return Err(FetchFailed::Retry(e.to_string())),
        };
        let format = faxgate_ipp::message::op_attr(&resp, "document-format")
            .and_then(faxgate_ipp::message::as_str)
            .map(str::to_owned);
        drop(resp);
        let local =
            |e: std::io::Error| FetchFailed::Retry(format!("writing {}: {e}", path.display()));
        let copy = async {
            let mut file = tokio::fs::File::create(path).await.map_err(local)?;
            let bytes = tokio::io::copy(&mut reader, &mut file)
                .await
                .map_err(|e| FetchFailed::Retry(format!("receiving document {n}: {e}")))?;
            file.flush().await.map_err(local)?;
            file.sync_all().await.map_err(local)?;
            Ok::<_, FetchFailed>(bytes)
        };
        let bytes = tokio::select! {
            r = copy => r?,
            () = self.cancel.cancelled() => return Err(FetchFailed::Interrupted),
            () = self.stop.cancelled() => return Err(FetchFailed::Interrupted),
        };
        info!(
            document = n,
            bytes,
            format = format.as_deref().unwrap_or("?"),
            "Document fetched."
        );
        Ok(format)
    }

    /// Sends document `n` to the printer and watches it to its end.
    async fn print_document(
        &mut self,
        job: &FetchedJob,
        n: i32,
        path: &Path,
        format: &str,
    ) -> Printed {
        let ctx = Arc::clone(&self.ctx);
        let mut told_waiting = false;
        // Template attributes the printer refused; left out on a retry,
        // as a printer without ipp-attribute-fidelity would substitute.
        let mut job = job.clone();
        let mut left_out: Vec<String> = Vec::new();
        let local = loop {
            if self.stop.is_cancelled() {
                return Printed::End(JobOutcome::HandedBack);
            }
            if self.cancel.is_cancelled() {
                return Printed::End(JobOutcome::Canceled);
            }
            let req = proto::print_job_request(&ctx.printer_uri, &job, format, n);
            match ctx
                .printer
                .call(req, Some(Document::File(path.to_owned())))
                .await
            {
                Ok(resp) => match proto::created_job_id(&resp) {
                    Some(local) => break local,
                    None => {
                        return Printed::End(JobOutcome::Aborted(
                            "the printer took the document but gave no job-id".into(),
                        ));
                    }
                },
                Err(e) if e.is_transient() => {
                    if !told_waiting {
                        warn!(document = n, error = %e, "The printer cannot take the document now; waiting.");
                        self.progress(&JobReport::waiting(&format!(
                            "waiting for the printer: {e}"
                        )))
                        .await;
                        told_waiting = true;
                    }
                    tokio::select! {
                        () = tokio::time::sleep(ctx.printer_retry) => {}
                        () = self.cancel.cancelled() => {}
                        () = self.stop.cancelled() => {}
                    }
                    if self.site_wants_stop().await {
                        self.cancel.cancel();
                    }
                }
                Err(e)
                    if e.ipp_status() == Some(status::ATTRIBUTES_OR_VALUES_NOT_SUPPORTED)
                        && proto::drop_unsupported(&mut job, e.unsupported()) =>
                {
                    left_out.extend(e.unsupported().iter().cloned());
                    warn!(document = n, left_out = ?left_out, "The printer does not support some job attributes; printing without them.");
                }
                Err(e) => {
                    warn!(document = n, error = %e, "The printer refused the document.");
                    return Printed::End(JobOutcome::Aborted(format!(
                        "the printer refused document {n}: {e}"
                    )));
                }
            }
        };
        info!(
            document = n,
            local_job = local,
            format,
            "Document sent to the printer."
        );
        self.record.at_printer = Some(AtPrinter {
            document: n,
            local_job: local,
            canceled: false,
        });
        self.save_record().await;
        self.watch_document(&job, n, local, &left_out, false).await
    }

    /// Follows document `n`'s job `local` at the printer to its end and
    /// records a completed document, so that no retry or restart prints
    /// it again. `canceled_on_stop`: the agent canceled that job when it
    /// last shut down; if it ended canceled or aborted, the document is
    /// to be printed again ([`Printed::Again`]).
    async fn watch_document(
        &mut self,
        job: &FetchedJob,
        n: i32,
        local: i32,
        left_out: &[String],
        canceled_on_stop: bool,
    ) -> Printed {
        self.document_state(n, job_state::PROCESSING).await;
        let done = self.impressions;
        let mut message = format!("printing document {n} of {}", job.documents);
        if !left_out.is_empty() {
            message.push_str(&format!(
                "; the printer does not support {}, printed without",
                left_out.join(", ")
            ));
        }
        self.progress(&JobReport {
            state: job_state::PROCESSING,
            reasons: vec!["job-printing".into()],
            message,
            impressions: Some(done),
        })
        .await;
        let end = self.watch_local(&job.user, n, local).await;
        let not_printed = matches!(
            end,
            LocalEnd::Canceled { by_site: false } | LocalEnd::Aborted(_)
        );
        if canceled_on_stop && not_printed {
            return Printed::Again;
        }
        let state = match &end {
            LocalEnd::Completed(_) => job_state::COMPLETED,
            LocalEnd::Canceled { .. } => job_state::CANCELED,
            LocalEnd::Aborted(_) => job_state::ABORTED,
            LocalEnd::HandedBack => return Printed::End(JobOutcome::HandedBack),
        };
        self.document_state(n, state).await;
        match end {
            LocalEnd::Completed(impressions) => {
                self.impressions = done.saturating_add(impressions);
                self.record.printed = n;
                self.record.impressions = self.impressions;
                self.record.at_printer = None;
                self.save_record().await;
                Printed::Done
            }
            LocalEnd::Canceled { by_site: true } => Printed::End(JobOutcome::Canceled),
            LocalEnd::Canceled { by_site: false } => Printed::CanceledAtPrinter,
            LocalEnd::Aborted(msg) => Printed::End(JobOutcome::Aborted(msg)),
            LocalEnd::HandedBack => Printed::End(JobOutcome::HandedBack),
        }
    }

    /// Watches the printer's job (document `document`) until it ends,
    /// passing progress to the site, canceling it when the site asks,
    /// and, on shutdown, canceling it there after the grace
    /// ([`JobRun::stop_local`]).
    async fn watch_local(&mut self, user: &str, document: i32, local: i32) -> LocalEnd {
        let ctx = Arc::clone(&self.ctx);
        let done = self.impressions;
        let mut last: Option<JobReport> = None;
        let mut cancel_sent = false;
        let mut stop_at: Option<Instant> = None;
        let mut cancel_deadline: Option<Instant> = None;
        let mut next_site_check = Instant::now() + ctx.front_check;
        let mut failures = 0u32;
        loop {
            tokio::select! {
                () = tokio::time::sleep(ctx.job_poll) => {}
                () = self.cancel.cancelled(), if !cancel_sent => {}
                () = self.stop.cancelled(), if stop_at.is_none() => {}
            }
            if self.stop.is_cancelled() && stop_at.is_none() {
                stop_at = Some(Instant::now() + ctx.grace);
            }
            if stop_at.is_some_and(|t| Instant::now() >= t) {
                return self.stop_local(user, document, local).await;
            }
            if self.cancel.is_cancelled() && !cancel_sent {
                cancel_sent = true;
                let req = proto::local_job_request(op::CANCEL_JOB, &ctx.printer_uri, user, local);
                match ctx.printer.call(req, None).await {
                    Ok(_) => info!(local_job = local, "Canceled the job at the printer."),
                    Err(e) => {
                        warn!(local_job = local, error = %e, "Cancel-Job at the printer failed; reporting canceled anyway.")
                    }
                }
            }
            let req =
                proto::local_job_request(op::GET_JOB_ATTRIBUTES, &ctx.printer_uri, user, local);
            let state = match ctx.printer.call(req, None).await {
                Ok(resp) => {
                    failures = 0;
                    JobState::from_response(&resp)
                }
                Err(e) if e.ipp_status() == Some(status::NOT_FOUND) => {
                    return LocalEnd::Aborted(format!(
                        "the printer no longer knows its job {local}"
                    ));
                }
                Err(e) => {
                    failures += 1;
                    if failures == 3 {
                        self.progress(&JobReport::waiting(&format!(
                            "the printer does not answer: {e}"
                        )))
                        .await;
                        last = None;
                    }
                    debug!(error = %e, "Could not look at the job at the printer.");
                    None
                }
            };
            if let Some(s) = state {
                match s.state {
                    job_state::COMPLETED => {
                        return LocalEnd::Completed(s.impressions.unwrap_or(0));
                    }
                    job_state::CANCELED => {
                        return LocalEnd::Canceled {
                            by_site: cancel_sent,
                        };
                    }
                    job_state::ABORTED => {
                        let why = s.message.clone().unwrap_or_else(|| s.reasons.join(", "));
                        return LocalEnd::Aborted(format!("the printer aborted the job: {why}"));
                    }
                    _ => {
                        let report = JobReport::progress(&s, done);
                        if last.as_ref() != Some(&report) && !cancel_sent {
                            self.progress(&report).await;
                            last = Some(report);
                        }
                    }
                }
            }
            if cancel_sent {
                // The printer may take a moment; a canceled job that never
                // ends there is reported canceled after the grace.
                let deadline = *cancel_deadline.get_or_insert(Instant::now() + ctx.grace);
                if Instant::now() >= deadline {
                    return LocalEnd::Canceled { by_site: true };
                }
                continue;
            }
            if Instant::now() >= next_site_check {
                next_site_check = Instant::now() + ctx.front_check;
                if self.site_wants_stop().await {
                    info!("The site asks to stop the job.");
                    self.cancel.cancel();
                }
            }
        }
    }

    /// Shutdown, and the grace ran out: cancels the printer's job before
    /// the job is handed back, so that the site's next offer does not
    /// print the document a second time. `Completed` when the printer
    /// finished it first (it counts as printed). The record says the
    /// cancel was sent before it is sent: if the printer does not
    /// confirm within [`CANCEL_CONFIRM`], the next run follows that job
    /// at the printer and prints the document again only if it ended
    /// canceled or aborted.
    async fn stop_local(&mut self, user: &str, document: i32, local: i32) -> LocalEnd {
        let ctx = Arc::clone(&self.ctx);
        self.record.at_printer = Some(AtPrinter {
            document,
            local_job: local,
            canceled: true,
        });
        self.save_record().await;
        let req = proto::local_job_request(op::CANCEL_JOB, &ctx.printer_uri, user, local);
        match ctx.printer.call_timeout(req, None, CANCEL_CONFIRM).await {
            Ok(_) => info!(
                local_job = local,
                "Shutting down: canceled the job at the printer before handing it back."
            ),
            Err(e) => warn!(
                local_job = local,
                error = %e,
                "Shutting down: Cancel-Job at the printer failed; looking at the job there."
            ),
        }
        let until = Instant::now() + CANCEL_CONFIRM;
        loop {
            let req =
                proto::local_job_request(op::GET_JOB_ATTRIBUTES, &ctx.printer_uri, user, local);
            let left = until.saturating_duration_since(Instant::now());
            match ctx
                .printer
                .call_timeout(req, None, left.max(Duration::from_millis(100)))
                .await
            {
                Ok(resp) => match JobState::from_response(&resp) {
                    Some(s) if s.state == job_state::COMPLETED => {
                        info!(
                            local_job = local,
                            "The printer finished the document before the cancel; it counts as printed."
                        );
                        return LocalEnd::Completed(s.impressions.unwrap_or(0));
                    }
                    Some(s) if matches!(s.state, job_state::CANCELED | job_state::ABORTED) => {
                        info!(
                            local_job = local,
                            "The printer confirmed the cancel; handing the job back."
                        );
                        return LocalEnd::HandedBack;
                    }
                    _ => {}
                },
                Err(e) if e.ipp_status() == Some(status::NOT_FOUND) => {
                    return LocalEnd::HandedBack;
                }
                Err(e) => debug!(error = %e, "Could not look at the job at the printer."),
            }
            if Instant::now() >= until {
                warn!(
                    local_job = local,
                    "The printer has not confirmed the cancel; handing the job back. The next start looks at that job before printing the document again."
                );
                return LocalEnd::HandedBack;
            }
            tokio::time::sleep(ctx.job_poll.min(Duration::from_millis(500))).await;
        }
    }
}

/// How the printer's job ended.
enum LocalEnd {
    Completed(i32),
    Canceled { by_site: bool },
    Aborted(String),
    HandedBack,
}

enum FetchFailed {
    /// Cancel or shutdown came first.
    Interrupted,
    /// The site no longer has the document.
    Gone(String),
    /// The site could not be reached.
    Retry(String),
}

async fn remove(path: &Path) {
    if let Err(e) = tokio::fs::remove_file(path).await
        && e.kind() != std::io::ErrorKind::NotFound
    {
        warn!(path = %path.display(), error = %e, "Cannot remove a spooled document.");
    }
}

#[cfg(test)]
mod tests {
    use super::proto::*;
    use super::*;
    use faxgate_ipp::message::{self, attribute, keyword, keywords, text};
    use ipp::model::DelimiterTag;

    fn group(tag: DelimiterTag, attrs: Vec<IppAttribute>) -> IppAttributeGroup {
        let mut g = IppAttributeGroup::new(tag);
        g.attributes_mut().extend(attrs);
        g
    }

    fn response(groups: Vec<IppAttributeGroup>) -> IppRequestResponse {
        let mut r = message::response(IppVersion::v2_0(), 1, 0, None);
        r.attributes_mut().groups_mut().extend(groups);
        r
    }

    #[test]
    fn transport_follows_the_description_and_the_config() {
        let desc = Description::parse(
            br#"{"version":1,"service":"x","printers_path":"/ipp/print/",
                "transports":["long-poll","poll"],"wake_up":["command-mail"],
                "notify_wait_seconds":30,"poll_interval_min_seconds":2,
                "agent_lease_seconds":90,"tls_required_for_agents":true}"#,
        )
        .unwrap();
        let five = Duration::from_secs(5);
        let p = choose_transport(Some(&desc), AgentTransport::Auto, five).unwrap();
        assert_eq!(p.transport, Transport::LongPoll);
        assert_eq!(p.notify_wait, Duration::from_secs(30));
        let p = choose_transport(
            Some(&desc),
            AgentTransport::Poll,
            Duration::from_millis(100),
        )
        .unwrap();
        assert_eq!(p.transport, Transport::Poll);
        assert_eq!(
            p.poll_interval,
            Duration::from_secs(2),
            "raised to the minimum"
        );
        let p =
            choose_transport(Some(&desc), AgentTransport::Poll, Duration::from_secs(600)).unwrap();
        assert_eq!(p.poll_interval, Duration::from_secs(30), "within the lease");

        let poll_only = Description {
            transports: vec!["poll".into()],
            ..Description::default()
        };
        let p = choose_transport(Some(&poll_only), AgentTransport::Auto, five).unwrap();
        assert_eq!(p.transport, Transport::Poll);
        let e = choose_transport(Some(&poll_only), AgentTransport::LongPoll, five).unwrap_err();
        assert!(e.contains("poll"), "{e}");
        let none = Description {
            transports: vec!["carrier-pigeon".into()],
            ..Description::default()
        };
        assert!(choose_transport(Some(&none), AgentTransport::Auto, five).is_err());
        // No description: both assumed, defaults.
        let p = choose_transport(None, AgentTransport::Auto, five).unwrap();
        assert_eq!(
            (p.transport, p.lease, p.poll_interval),
            (Transport::LongPoll, DEFAULT_LEASE, five)
        );
        assert!(Description::parse(b"not json").is_err());
    }

    #[test]
    fn printer_state_changes_ignore_order_and_none() {
        let attrs = |state: i32, reasons: &[&str], msg: &str| {
            vec![
                attribute("printer-state", IppValue::Enum(state)),
                attribute("printer-state-reasons", keywords(reasons)),
                attribute("printer-state-message", text(msg)),
            ]
        };
        let a = PrinterSnapshot::from_attributes(&attrs(3, &["none"], "Idle."));
        let b = PrinterSnapshot::from_attributes(&attrs(3, &[], "Idle."));
        assert_eq!(a, b);
        assert!(a.reasons.is_empty());
        let jam1 = PrinterSnapshot::from_attributes(&attrs(
            5,
            &["media-jam-error", "toner-low-report"],
            "Jam",
        ));
        let jam2 = PrinterSnapshot::from_attributes(&attrs(
            5,
            &["toner-low-report", "media-jam-error"],
            "Jam",
        ));
        assert_eq!(jam1, jam2);
        assert_ne!(a, jam1);
        assert_eq!(
            jam1.summary(),
            "stopped (media-jam-error, toner-low-report): Jam"
        );
        let msg = PrinterSnapshot::from_attributes(&attrs(3, &["none"], "Warming up."));
        assert_ne!(a, msg, "a new message is a change too");
        // Round trip through the attributes sent to the site.
        assert_eq!(PrinterSnapshot::from_attributes(&jam1.attributes()), jam1);
        assert_eq!(PrinterSnapshot::from_attributes(&a.attributes()), a);
        let off = PrinterSnapshot::unreachable("cannot connect to 127.0.0.1:1");
        assert_eq!(off.state, 5);
        assert_eq!(off.reasons, ["offline-report"]);
        let mut full = vec![
            attribute("printer-make-and-model", text("X")),
            attribute("printer-state", IppValue::Enum(3)),
        ];
        off.apply_to(&mut full);
        assert_eq!(PrinterSnapshot::from_attributes(&full), off);
        assert_eq!(full.len(), 4);
    }

    #[test]
    fn device_attributes_leave_out_what_the_front_owns() {
        let resp = response(vec![group(
            DelimiterTag::PrinterAttributes,
            vec![
                attribute(
                    "printer-uri-supported",
                    message::uri("ipp://10.0.0.5/ipp/print"),
                ),
                attribute("uri-security-supported", keyword("none")),
                attribute("charset-supported", keyword("utf-8")),
                attribute("printer-icons", message::uri("http://10.0.0.5/icon.png")),
                attribute("printer-uuid", message::uri("urn:uuid:1")),
                attribute(
                    "document-format-supported",
                    message::mime("application/pdf"),
                ),
                attribute(
                    "media-supported",
                    keywords(&["iso_a4_210x297mm", "na_letter_8.5x11in"]),
                ),
                attribute("printer-state", IppValue::Enum(3)),
            ],
        )]);
        let names: Vec<String> = device_attributes(&resp)
            .iter()
            .map(|a| a.name().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "document-format-supported",
                "media-supported",
                "printer-state"
            ]
        );
    }

    #[test]
    fn notifications_become_events_in_order() {
        let event = |seq: i32, kind: &str, job: i32, state: i32, reasons: &[&str]| {
            group(
                DelimiterTag::EventNotificationAttributes,
                vec![
                    attribute("notify-subscription-id", IppValue::Integer(7)),
                    attribute("notify-sequence-number", IppValue::Integer(seq)),
                    attribute("notify-subscribed-event", keyword(kind)),
                    attribute("job-id", IppValue::Integer(job)),
                    attribute("job-state", IppValue::Enum(state)),
                    attribute("job-state-reasons", keywords(reasons)),
                ],
            )
        };
        let mut resp = response(vec![
            event(3, "job-fetchable", 11, 3, &["job-fetchable"]),
            // Our own Acknowledge-Job: not a stop.
            event(4, "job-state-changed", 11, 5, &["job-fetched"]),
            event(
                5,
                "job-state-changed",
                11,
                5,
                &["job-fetched", "processing-to-stop-point"],
            ),
            event(6, "job-state-changed", 12, 7, &["job-canceled-by-user"]),
            event(
                7,
                "job-state-changed",
                13,
                9,
                &["job-completed-successfully"],
            ),
            // Seen before: skipped.
            event(2, "job-fetchable", 10, 3, &["job-fetchable"]),
        ]);
        resp.attributes_mut().add(
            DelimiterTag::OperationAttributes,
            attribute("notify-get-interval", IppValue::Integer(30)),
        );
        let n = parse_notifications(&resp, 7, 3);
        assert_eq!(
            n.events,
            [Event::Fetchable(11), Event::Stop(11), Event::Stop(12)]
        );
        assert_eq!(n.next_seq, 8);
        assert_eq!(n.get_interval, Some(Duration::from_secs(30)));
        // Another subscription's events are not ours.
        assert!(parse_notifications(&resp, 8, 1).events.is_empty());
    }

    /// An Infrastructure Printer that follows RFC 3995 to the letter (as
    /// ippserver does) names the job only `notify-job-id`.
    #[test]
    fn events_naming_the_job_notify_job_id_are_read() {
        let resp = response(vec![group(
            DelimiterTag::EventNotificationAttributes,
            vec![
                attribute("notify-subscription-id", IppValue::Integer(7)),
                attribute("notify-sequence-number", IppValue::Integer(1)),
                attribute("notify-subscribed-event", keyword("job-fetchable")),
                attribute("notify-job-id", IppValue::Integer(5)),
                attribute("job-state", IppValue::Enum(3)),
                attribute("job-state-reasons", keywords(&["job-fetchable"])),
            ],
        )]);
        assert_eq!(
            parse_notifications(&resp, 7, 1).events,
            [Event::Fetchable(5)]
        );
    }

    #[test]
    fn subscription_ids_and_job_lists_are_read() {
        let ok = response(vec![group(
            DelimiterTag::SubscriptionAttributes,
            vec![attribute("notify-subscription-id", IppValue::Integer(42))],
        )]);
        assert_eq!(subscription_id(&ok), Ok(42));
        let refused = response(vec![group(
            DelimiterTag::SubscriptionAttributes,
            vec![attribute("notify-status-code", IppValue::Enum(0x040B))],
        )]);
        assert!(subscription_id(&refused).unwrap_err().contains("0x040b"));
        assert!(subscription_id(&response(vec![])).is_err());
        let jobs = response(vec![
            group(
                DelimiterTag::JobAttributes,
                vec![attribute("job-id", IppValue::Integer(3))],
            ),
            group(
                DelimiterTag::JobAttributes,
                vec![attribute("job-id", IppValue::Integer(5))],
            ),
        ]);
        assert_eq!(job_ids(&jobs), [3, 5]);
    }

    fn fetched() -> IppRequestResponse {
        response(vec![group(
            DelimiterTag::JobAttributes,
            vec![
                attribute("job-id", IppValue::Integer(17)),
                attribute("job-uuid", message::uri("urn:uuid:abc")),
                attribute("job-name", message::name("report.pdf")),
                attribute("job-originating-user-name", message::name("alice")),
                attribute("job-state", IppValue::Enum(3)),
                attribute("document-format", message::mime("application/pdf")),
                attribute("number-of-documents", IppValue::Integer(2)),
                attribute("copies", IppValue::Integer(2)),
                attribute("media", keyword("iso_a4_210x297mm")),
                attribute("sides", keyword("two-sided-long-edge")),
                attribute("print-quality", IppValue::Enum(5)),
                attribute("job-hold-until", keyword("indefinite")),
                attribute("job-client-addr", text("203.0.113.9")),
                attribute("job-client-port", IppValue::Integer(50123)),
            ],
        )])
    }

    #[test]
    fn a_fetched_job_becomes_a_print_job_for_the_printer() {
        let job = FetchedJob::from_response(&fetched(), 17).unwrap();
        assert_eq!(job.documents, 2);
        assert_eq!(job.uuid.as_deref(), Some("urn:uuid:abc"));
        assert_eq!(job.user, "alice");
        assert_eq!(job.client_addr.as_deref(), Some("203.0.113.9"));
        assert_eq!(job.client_port, Some(50123));
        let names: Vec<&str> = job.template.iter().map(|a| a.name().as_str()).collect();
        assert_eq!(names, ["copies", "media", "sides", "print-quality"]);

        let req = print_job_request(
            "ipp://127.0.0.1:8631/ipp/print/local",
            &job,
            "application/pdf",
            2,
        );
        // It must be a valid request that survives the wire.
        let bytes = req.to_bytes();
        let back = ipp::parser::IppParser::new(ipp::reader::IppReader::new(std::io::Cursor::new(
            bytes.to_vec(),
        )))
        .parse()
        .unwrap();
        message::check_request(&back).unwrap();
        assert_eq!(back.header().operation_or_status as u16, op::PRINT_JOB);
        let op_str = |n: &str| {
            message::op_attr(&back, n)
                .and_then(message::as_str)
                .map(str::to_owned)
        };
        assert_eq!(
            op_str("printer-uri").as_deref(),
            Some("ipp://127.0.0.1:8631/ipp/print/local")
        );
        assert_eq!(op_str("requesting-user-name").as_deref(), Some("alice"));
        assert_eq!(op_str("job-name").as_deref(), Some("report.pdf (2/2)"));
        assert_eq!(
            op_str("document-format").as_deref(),
            Some("application/pdf")
        );
        let job_attr = |n: &str| message::attr(&back, DelimiterTag::JobAttributes, n).cloned();
        assert_eq!(job_attr("copies"), Some(IppValue::Integer(2)));
        assert_eq!(job_attr("print-quality"), Some(IppValue::Enum(5)));
        assert!(job_attr("job-hold-until").is_none());

        // A printer that refuses duplex gets the job without `sides`.
        let mut job = job;
        assert!(drop_unsupported(&mut job, &["sides".into()]));
        assert!(!job.template.iter().any(|a| a.name().as_str() == "sides"));
        assert!(
            !drop_unsupported(&mut job, &["sides".into()]),
            "nothing left to drop"
        );
        assert!(!drop_unsupported(&mut job, &["document-format".into()]));
    }

    #[test]
    fn infra_requests_carry_the_device_and_pass_the_checks() {
        let infra = Infra {
            site: "ipps://relay.example.net/ipp/print/osaka".into(),
            user: "osaka".into(),
            uuid: device_uuid([7; 16]),
        };
        let report = JobReport::progress(
            &JobState {
                state: 6,
                reasons: vec!["media-jam".into()],
                message: Some("Jam".into()),
                impressions: Some(3),
            },
            4,
        );
        assert_eq!(report.state, 6);
        assert_eq!(report.impressions, Some(7));
        for req in [
            infra.update_device(PrinterSnapshot::unreachable("x").attributes()),
            infra.deregister(),
            infra.subscribe(Duration::from_secs(300)),
            infra.notifications(3, 1),
            infra.fetchable_jobs(),
            infra.job(op::FETCH_JOB, 17),
            infra.document(op::FETCH_DOCUMENT, 17, 1),
            infra.job_status(17, &report),
            infra.document_status(17, 1, job_state::COMPLETED),
        ] {
            message::check_request(&req).unwrap();
            assert_eq!(
                message::op_attr(&req, "output-device-uuid").and_then(message::as_str),
                Some(infra.uuid.as_str())
            );
        }
        let r = infra.job_status(17, &JobReport::canceled("stop", 1));
        assert_eq!(
            message::attr(&r, DelimiterTag::JobAttributes, "output-device-job-state").cloned(),
            Some(IppValue::Enum(7))
        );
        let r = infra.document(op::FETCH_DOCUMENT, 17, 2);
        assert_eq!(
            message::op_attr(&r, "compression-accepted").and_then(message::as_str),
            Some("none")
        );
    }

    #[test]
    fn device_uuids_are_version_4_urns_and_sites_match_by_name() {
        let u = device_uuid([0xff; 16]);
        assert_eq!(u, "urn:uuid:ffffffff-ffff-4fff-bfff-ffffffffffff");
        assert_ne!(device_uuid(rand::random()), device_uuid(rand::random()));
        assert!(same_site(
            "ipps://relay.example.net/ipp/print/expp1%abc.com",
            "ipps://10.0.0.1:8632/ipp/print/expp1%25abc.com"
        ));
        assert!(!same_site(
            "ipps://relay.example.net/ipp/print/other",
            "ipps://relay.example.net/ipp/print/osaka"
        ));
    }

    #[test]
    fn stop_is_asked_by_reason_or_final_state() {
        assert!(stop_requested(
            Some(5),
            &["processing-to-stop-point".into()]
        ));
        assert!(stop_requested(Some(7), &[]));
        assert!(!stop_requested(Some(5), &["job-fetched".into()]));
        assert!(!stop_requested(Some(9), &[]));
    }

    #[test]
    fn a_job_record_resumes_after_the_printed_documents_of_the_same_job() {
        let stored = JobRecord {
            job_uuid: Some("urn:uuid:a".into()),
            printed: 1,
            impressions: 3,
            at_printer: Some(AtPrinter {
                document: 2,
                local_job: 7,
                canceled: true,
            }),
            report: None,
        };
        let r = JobRecord::resume(Some(stored.clone()), Some("urn:uuid:a"));
        assert_eq!(r, stored);
        assert_eq!(r.first_document(2), 2);
        assert_eq!(
            r.first_document(1),
            2,
            "all printed: only the report is left"
        );
        // The same job id for another job starts afresh.
        let other = JobRecord::resume(Some(stored), Some("urn:uuid:b"));
        assert_eq!(other.printed, 0);
        assert_eq!(other.first_document(2), 1);
        assert_eq!(other.job_uuid.as_deref(), Some("urn:uuid:b"));
        assert_eq!(JobRecord::resume(None, None).first_document(3), 1);
    }

    #[tokio::test]
    async fn job_records_survive_on_disk_until_removed() {
        let dir = tempfile::tempdir().unwrap();
        let book = JobBook {
            dir: dir.path().join("agent-jobs"),
        };
        assert!(book.all().await.is_empty(), "no folder yet");
        assert_eq!(book.load(4).await, None);
        let record = JobRecord {
            job_uuid: Some("urn:uuid:x".into()),
            printed: 2,
            impressions: 5,
            at_printer: None,
            report: Some(JobReport::completed(5)),
        };
        book.save(4, &record).await.unwrap();
        book.save(9, &JobRecord::default()).await.unwrap();
        // A write cut short and a stranger are not records.
        std::fs::write(book.dir.join("job-5.tmp"), b"{").unwrap();
        std::fs::write(book.dir.join("notes.txt"), b"x").unwrap();
        // An unreadable record is ignored.
        std::fs::write(book.dir.join("job-6.json"), b"{not json").unwrap();
        assert_eq!(book.load(4).await, Some(record.clone()));
        let all = book.all().await;
        assert_eq!(all, vec![(4, record), (9, JobRecord::default())]);
        assert!(!book.dir.join("job-5.tmp").exists());
        book.remove(4).await;
        book.remove(4).await;
        assert_eq!(book.load(4).await, None);
        assert_eq!(book.all().await.len(), 1);
    }

    #[test]
    fn the_queue_skips_current_queued_and_recent_jobs() {
        let mut q = VecDeque::new();
        let recent = VecDeque::from([9]);
        enqueue(&mut q, 1, None, &recent);
        enqueue(&mut q, 1, None, &recent);
        enqueue(&mut q, 2, Some(2), &recent);
        enqueue(&mut q, 9, None, &recent);
        enqueue(&mut q, 3, Some(2), &recent);
        assert_eq!(q, [1, 3]);
        assert_eq!(mail_job_ids(&[5, 0, u64::MAX]), [5]);
    }
}
