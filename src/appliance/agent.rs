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
//! 9. Never sends a document again while the printer may have it: a
//!    Print-Job is watched for progress rather than cut at a total
//!    deadline, and one whose outcome is unknown (broken after it left,
//!    answer lost, or a crash before its job was recorded) is followed
//!    by a look at the printer's jobs for it (by a job name unique to
//!    the site job and document) before the document goes out again. A
//!    printer job the printer no longer knows counts as printed, as in
//!    the appliance's own print stage.
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
use faxgate_ipp::client::{ClientError, IppClient};
use faxgate_ipp::codes::{job_state, op, status};
use faxgate_mail::{Incoming, Kind, Tls, Trust, Verifier, WatcherConfig, WatcherHandle};
use ipp::prelude::*;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument as _, debug, error, info, info_span, warn};

use crate::print::conn::{Deadlines, Failure};

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

    /// The longest `job-name` sent (RFC 8011: name(MAX), 255 octets).
    const MAX_NAME: usize = 255;

    /// The `job-name` of document `document` of site job `site_job` at
    /// the real printer: the job's name, numbered for a multi-document
    /// job, then the site job's id and the start of its `job-uuid`, e.g.
    /// `report.pdf (2/2) [site job 17, 3f2a9c1e]`.
    ///
    /// The name is how a Print-Job whose answer was lost is found again
    /// (Get-Jobs, [`find_local_job`]), so it must not match any other
    /// job the printer lists: names like `report.pdf` repeat across
    /// site jobs, and a printer such as CUPS keeps completed jobs for
    /// days. The site job id makes it unique per site job and document;
    /// the uuid part keeps it unique if the site's ids start over (a new
    /// site database). A unique name was chosen over comparing the
    /// printer's `time-at-creation` with its `printer-up-time` at the
    /// attempt's start: that needs the up-time kept across a restart of
    /// the agent, and it means nothing across a reboot of the printer.
    /// The site's part is shortened (at a character boundary) so that a
    /// printer that cuts long names does not cut the unique tail.
    pub fn local_job_name(job: &FetchedJob, site_job: i32, document: i32) -> String {
        let numbered = if job.documents > 1 {
            format!(" ({document}/{})", job.documents)
        } else {
            String::new()
        };
        let uuid = job
            .uuid
            .as_deref()
            .map(|u| u.trim_start_matches("urn:uuid:"))
            .map(|u| {
                u.chars()
                    .filter(char::is_ascii_hexdigit)
                    .take(8)
                    .collect::<String>()
            })
            .filter(|u| !u.is_empty())
            .map(|u| format!(", {u}"))
            .unwrap_or_default();
        let tail = format!("{numbered} [site job {site_job}{uuid}]");
        let mut end = job.name.len().min(MAX_NAME.saturating_sub(tail.len()));
        while !job.name.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}{tail}", &job.name[..end])
    }

    /// The Print-Job for the real printer: the job's name
    /// ([`local_job_name`]), its user, the document's format and the
    /// passed template attributes. The document follows unchanged.
    pub fn print_job_request(
        printer_uri: &str,
        job: &FetchedJob,
        site_job: i32,
        format: &str,
        document: i32,
    ) -> IppRequestResponse {
        let mut req = message::request(op::PRINT_JOB, printer_uri, &job.user, 1);
        let ops = DelimiterTag::OperationAttributes;
        let title = local_job_name(job, site_job, document);
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

    /// Get-Jobs for `user`'s own jobs (`my-jobs`) at the real printer,
    /// `which` being `not-completed` or `completed`.
    pub fn my_jobs_request(printer_uri: &str, user: &str, which: &str) -> IppRequestResponse {
        let mut req = printer_request(op::GET_JOBS, printer_uri, user);
        let ops = DelimiterTag::OperationAttributes;
        let attrs = req.attributes_mut();
        attrs.add(ops, attribute("which-jobs", keyword(which)));
        attrs.add(ops, attribute("my-jobs", IppValue::Boolean(true)));
        attrs.add(
            ops,
            attribute(
                "requested-attributes",
                keywords(&[
                    "job-id",
                    "job-name",
                    "job-originating-user-name",
                    "job-state",
                ]),
            ),
        );
        req
    }

    /// The newest job of a Get-Jobs answer named `job_name`, of `user`
    /// (when the printer says whose it is), that was not aborted or
    /// canceled: the job a Print-Job whose outcome is unknown made. An
    /// aborted job is one made of a document that did not arrive whole
    /// (the upload broke), a canceled one was stopped: neither is the
    /// document printed, so the document is sent again. (The same rule
    /// as the appliance's own print stage, `print::ipp::find_job`.)
    pub fn find_local_job(resp: &IppRequestResponse, job_name: &str, user: &str) -> Option<i32> {
        resp.attributes()
            .groups_of(DelimiterTag::JobAttributes)
            .filter(|g| g.get("job-name").and_then(|a| as_str(a.value())) == Some(job_name))
            .filter(|g| {
                g.get("job-originating-user-name")
                    .and_then(|a| as_str(a.value()))
                    .is_none_or(|u| u == user)
            })
            .filter(|g| {
                !matches!(
                    g.get("job-state").and_then(|a| as_int(a.value())),
                    Some(job_state::ABORTED | job_state::CANCELED)
                )
            })
            .filter_map(|g| g.get("job-id").and_then(|a| as_int(a.value())))
            .max()
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
            upload: upload_deadlines(cfg.connect_timeout, cfg.request_timeout),
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
    /// The inactivity deadlines of a Print-Job ([`upload_deadlines`]).
    upload: Deadlines,
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
    /// The document a Print-Job is (or was last) being sent for, written
    /// before the first one goes out and cleared once the printer's job
    /// is in `at_printer`. Set at a start means the process stopped
    /// while the printer may have made a job of it (a crash between the
    /// printer's answer and the record of its job, or a Print-Job whose
    /// outcome was unknown): the printer's jobs are looked at before the
    /// document is sent ([`JobRun::find_local`]).
    submitting: Option<i32>,
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
    /// canceled or aborted, or the printer no longer knows it, the
    /// document is printed again.
    canceled: bool,
    /// The job was found at the printer (Get-Jobs) after a Print-Job
    /// whose outcome was unknown, not named in a Print-Job answer: if it
    /// ends aborted (made of a document that did not arrive whole), the
    /// document is sent again.
    #[serde(default)]
    found: bool,
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
    /// Whether the command (if from a mail) may still be acted on: until
    /// its expiry plus the clock skew the watcher allowed it
    /// ([`faxgate_mail::command::CLOCK_SKEW`]).
    fn expired(&self) -> bool {
        self.incoming.as_ref().is_some_and(|i| {
            i.command.expires + faxgate_mail::command::CLOCK_SKEW <= SystemTime::now()
        })
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
                    .watch_document(&job, n, at.local_job, &[], at.canceled, at.found)
                    .await
                {
                    Printed::Again => {
                        info!(
                            document = n,
                            local_job = at.local_job,
                            "The printer's job did not print the document; printing it again."
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
    ///
    /// A Print-Job that failed after the request may have reached the
    /// printer (a deadline passed, the connection broke, the answer was
    /// lost: [`SendFailed::Unknown`]) may still have made a job, and
    /// sending the document again would print it twice. So before the
    /// document goes out again the printer's jobs are looked at
    /// ([`JobRun::find_local`]) and a job made of it is followed instead.
    /// When the record says the document was being submitted when the
    /// process stopped ([`JobRecord::submitting`]: a crash, a shutdown
    /// mid-upload), nothing tells whether the printer got all of it: a
    /// job it made of it may hold part of the document (a printer may
    /// complete such a job), and following that would lose pages. So a
    /// job found then is canceled and the document sent again: at least
    /// once, at worst a second copy, never a page lost. A Print-Job that
    /// broke while the document was still going out is different: a job
    /// the printer made of it holds part of the document, so it is
    /// canceled and the document sent again, never followed. A site
    /// cancel or a shutdown drops an upload under way; on cancel a job
    /// made of the part sent is canceled too.
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
        // Whether the printer may have a job of this document that the
        // agent does not know of, made of all of it.
        let mut look = false;
        if self.record.submitting == Some(n) {
            info!(
                document = n,
                "The document was being sent to the printer when the agent stopped; canceling any job made of it and sending it again."
            );
            self.cancel_found(&job, n).await;
        }
        loop {
            let (local, found) = loop {
                if self.stop.is_cancelled() {
                    return Printed::End(JobOutcome::HandedBack);
                }
                if self.cancel.is_cancelled() {
                    if look {
                        self.cancel_found(&job, n).await;
                    }
                    return Printed::End(JobOutcome::Canceled);
                }
                if look {
                    match self.find_local(&job, n).await {
                        Ok(Some(local)) => {
                            info!(
                                document = n,
                                local_job = local,
                                "The printer has a job of this document from an earlier try; following it instead of sending the document again."
                            );
                            break (local, true);
                        }
                        Ok(None) => look = false,
                        Err(e) if e.is_transient() => {
                            // Sending now might print the document twice.
                            debug!(document = n, error = %e, "Cannot list the printer's jobs now; waiting before sending the document.");
                            self.wait_for_printer(&e.to_string(), &mut told_waiting)
                                .await;
                            continue;
                        }
                        Err(e) => {
                            warn!(document = n, error = %e, "Cannot list the printer's jobs; if an earlier Print-Job of this document made a job, it prints twice.");
                            look = false;
                        }
                    }
                }
                if self.record.submitting != Some(n) {
                    self.record.submitting = Some(n);
                    self.save_record().await;
                }
                let req = proto::print_job_request(&ctx.printer_uri, &job, self.job_id, format, n);
                // The upload may take hours (a slow printer, a large
                // document): a cancel or shutdown drops it, which closes
                // the connection mid-document.
                let sent = tokio::select! {
                    sent = send_document(&ctx.printer_uri, ctx.upload, req, path) => Some(sent),
                    () = self.cancel.cancelled() => None,
                    () = self.stop.cancelled() => None,
                };
                let Some(sent) = sent else {
                    if self.stop.is_cancelled() {
                        // `submitting` stays set: the next start cancels a
                        // job made of the part sent, and sends it again.
                        info!(
                            document = n,
                            "Shutting down while the document was going out to the printer; dropped the upload and handing the job back."
                        );
                        return Printed::End(JobOutcome::HandedBack);
                    }
                    info!(
                        document = n,
                        "The site canceled the job while the document was going out to the printer; dropped the upload."
                    );
                    // A job the printer made of the part it got would
                    // print it.
                    self.cancel_found(&job, n).await;
                    return Printed::End(JobOutcome::Canceled);
                };
                match sent {
                    Ok(resp) => match proto::created_job_id(&resp) {
                        Some(local) => break (local, false),
                        None => {
                            return Printed::End(JobOutcome::Aborted(
                                "the printer took the document but gave no job-id".into(),
                            ));
                        }
                    },
                    Err(SendFailed::Unknown {
                        reason,
                        whole: true,
                    }) => {
                        warn!(document = n, error = %reason, "The Print-Job's outcome is unknown: the printer may have the document. Looking at its jobs before sending it again.");
                        look = true;
                        self.wait_for_printer(&reason, &mut told_waiting).await;
                    }
                    Err(SendFailed::Unknown {
                        reason,
                        whole: false,
                    }) => {
                        // Part of the document went out (the printer
                        // stopped reading: a jam, no paper). A job it made
                        // of that part lacks the end, and following it
                        // could count the document printed with pages
                        // missing: it is canceled, and the next try sends
                        // the document whole (as the print stage does,
                        // `print::ipp::IppPrinter::send`). Best effort: a
                        // printer that cannot be asked may print the part
                        // as well.
                        warn!(document = n, error = %reason, "The Print-Job broke while the document was going out; canceling any job the printer made of part of it and sending it again.");
                        self.cancel_found(&job, n).await;
                        look = false;
                        self.wait_for_printer(&reason, &mut told_waiting).await;
                    }
                    Err(SendFailed::Known(e)) if e.is_transient() => {
                        if !told_waiting {
                            warn!(document = n, error = %e, "The printer cannot take the document now; waiting.");
                        }
                        self.wait_for_printer(&e.to_string(), &mut told_waiting)
                            .await;
                    }
                    Err(SendFailed::Known(e))
                        if e.ipp_status() == Some(status::ATTRIBUTES_OR_VALUES_NOT_SUPPORTED)
                            && proto::drop_unsupported(&mut job, e.unsupported()) =>
                    {
                        left_out.extend(e.unsupported().iter().cloned());
                        warn!(document = n, left_out = ?left_out, "The printer does not support some job attributes; printing without them.");
                    }
                    Err(SendFailed::Known(e)) => {
                        warn!(document = n, error = %e, "The printer refused the document.");
                        return Printed::End(JobOutcome::Aborted(format!(
                            "the printer refused document {n}: {e}"
                        )));
                    }
                }
            };
            if !found {
                info!(
                    document = n,
                    local_job = local,
                    format,
                    "Document sent to the printer."
                );
            }
            self.record.at_printer = Some(AtPrinter {
                document: n,
                local_job: local,
                canceled: false,
                found,
            });
            self.record.submitting = None;
            self.save_record().await;
            match self
                .watch_document(&job, n, local, &left_out, false, found)
                .await
            {
                Printed::Again => {
                    info!(
                        document = n,
                        local_job = local,
                        "The job found at the printer did not print the document; sending it again."
                    );
                    self.record.at_printer = None;
                }
                printed => return printed,
            }
        }
    }

    /// Tells the site (once) that the job waits for the printer, then
    /// waits [`JobCtx::printer_retry`] (less on cancel or shutdown) and
    /// asks the site whether to stop.
    async fn wait_for_printer(&self, error: &str, told_waiting: &mut bool) {
        if !*told_waiting {
            self.progress(&JobReport::waiting(&format!(
                "waiting for the printer: {error}"
            )))
            .await;
            *told_waiting = true;
        }
        tokio::select! {
            () = tokio::time::sleep(self.ctx.printer_retry) => {}
            () = self.cancel.cancelled() => {}
            () = self.stop.cancelled() => {}
        }
        if self.site_wants_stop().await {
            self.cancel.cancel();
        }
    }

    /// The printer's job made of document `n` by an earlier Print-Job
    /// whose outcome is unknown, if it has one: Get-Jobs for the user the
    /// agent sends as (`my-jobs`), not-completed then completed, by the
    /// job name that is unique to the site job and document
    /// ([`proto::local_job_name`]), not aborted or canceled
    /// ([`proto::find_local_job`]).
    async fn find_local(&self, job: &FetchedJob, n: i32) -> Result<Option<i32>, ClientError> {
        let name = proto::local_job_name(job, self.job_id, n);
        for which in ["not-completed", "completed"] {
            let req = proto::my_jobs_request(&self.ctx.printer_uri, &job.user, which);
            let resp = self.ctx.printer.call(req, None).await?;
            if let Some(local) = proto::find_local_job(&resp, &name, &job.user) {
                return Ok(Some(local));
            }
        }
        Ok(None)
    }

    /// The site canceled the job while a Print-Job of document `n` had an
    /// unknown outcome: cancels the job the printer made of it, if it
    /// made one (best effort, logged).
    async fn cancel_found(&self, job: &FetchedJob, n: i32) {
        let local = match self.find_local(job, n).await {
            Ok(Some(local)) => local,
            Ok(None) => return,
            Err(e) => {
                warn!(document = n, error = %e, "Cannot list the printer's jobs to cancel one an earlier Print-Job may have made.");
                return;
            }
        };
        let req = proto::local_job_request(op::CANCEL_JOB, &self.ctx.printer_uri, &job.user, local);
        match self.ctx.printer.call(req, None).await {
            Ok(_) => info!(
                local_job = local,
                "Canceled the job an earlier Print-Job made at the printer."
            ),
            Err(e) => warn!(local_job = local, error = %e, "Cancel-Job at the printer failed."),
        }
    }

    /// Follows document `n`'s job `local` at the printer to its end and
    /// records a completed document, so that no retry or restart prints
    /// it again. `canceled_on_stop`: the agent canceled that job when it
    /// last shut down; if it ended canceled or aborted, or the printer no
    /// longer knows it, the document is to be printed again
    /// ([`Printed::Again`]). `found`: the job was found at the printer
    /// after a Print-Job with an unknown outcome; if it ended aborted
    /// (made of a document that did not arrive whole), likewise.
    async fn watch_document(
        &mut self,
        job: &FetchedJob,
        n: i32,
        local: i32,
        left_out: &[String],
        canceled_on_stop: bool,
        found: bool,
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
        let again = match &end {
            LocalEnd::Aborted(_) => canceled_on_stop || found,
            LocalEnd::Canceled { by_site: false } => canceled_on_stop,
            // A job the printer purged after it ended has no state left
            // to read. One the agent submitted and left alone counts as
            // printed, as in the appliance's own print stage
            // (`appliance::printer`): the printer ended it, and a
            // document that failed there is rare next to the harm of
            // printing a finished one twice. One the agent canceled on
            // shutdown is printed again: it was still unfinished when
            // the cancel went out, so it most likely ended canceled,
            // and had the printer finished it first `stop_local` would
            // have seen that and recorded it printed. Printing again
            // may duplicate it in the rare race where the printer
            // finished it unseen; counting it printed could lose it.
            // (One the agent canceled at the site's request never comes
            // here: `watch_local` ends it canceled.)
            LocalEnd::Purged(_) => canceled_on_stop,
            LocalEnd::Completed(_) | LocalEnd::Canceled { by_site: true } => false,
            LocalEnd::HandedBack => false,
        };
        if again {
            return Printed::Again;
        }
        let end = match end {
            LocalEnd::Purged(impressions) => {
                info!(
                    local_job = local,
                    "The printer no longer knows its job (purged after it ended); the document counts as printed."
                );
                LocalEnd::Completed(impressions)
            }
            end => end,
        };
        let state = match &end {
            LocalEnd::Completed(_) => job_state::COMPLETED,
            LocalEnd::Canceled { .. } => job_state::CANCELED,
            LocalEnd::Aborted(_) => job_state::ABORTED,
            LocalEnd::HandedBack | LocalEnd::Purged(_) => {
                return Printed::End(JobOutcome::HandedBack);
            }
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
            LocalEnd::HandedBack | LocalEnd::Purged(_) => Printed::End(JobOutcome::HandedBack),
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
        // The job's impressions when last read, for a job purged unseen.
        let mut impressions = 0;
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
                // The agent canceled it at the site's request: a printer
                // that drops canceled jobs at once forgets it, and that is
                // the cancel, not a job that ended and was purged. (Had
                // the printer finished it first, the site still asked to
                // cancel; reporting it canceled prints nothing twice.)
                Err(e) if e.ipp_status() == Some(status::NOT_FOUND) && cancel_sent => {
                    info!(
                        local_job = local,
                        "The printer no longer knows the job it was asked to cancel; it counts as canceled."
                    );
                    return LocalEnd::Canceled { by_site: true };
                }
                Err(e) if e.ipp_status() == Some(status::NOT_FOUND) => {
                    return LocalEnd::Purged(impressions);
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
                impressions = s.impressions.unwrap_or(impressions);
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
        let found = self
            .record
            .at_printer
            .is_some_and(|a| a.local_job == local && a.found);
        self.record.at_printer = Some(AtPrinter {
            document,
            local_job: local,
            canceled: true,
            found,
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

/// How a Print-Job with a document failed.
enum SendFailed {
    /// The printer answered with an error, or the request never reached
    /// it (no connection, the document unreadable): this try made no job.
    Known(ClientError),
    /// The exchange broke, or a deadline passed, once the request may
    /// have reached the printer: it may have made a job of it.
    Unknown {
        /// What happened.
        reason: String,
        /// Whether the whole document had been handed to the connection
        /// (if not, a job the printer made of it lacks the end, and the
        /// printer aborts it).
        whole: bool,
    },
}

/// The slowest a printer may take a document on the whole: a Print-Job
/// with a document of N bytes must be over within the request deadline
/// plus N at this rate (about 2.8 hours for 40 MB). Within that bound it
/// is watched for progress instead ([`send_document`]).
const MIN_UPLOAD_RATE: u64 = 4 * 1024;

/// The inactivity deadlines of a Print-Job with a document, from the
/// agent's `connect_timeout` and `request_timeout`: the printer may take
/// none of the document for `request_timeout`, and may take twice that
/// to answer once it has all of it (the print stage's 60 s and 120 s by
/// default, `print::conn::Deadlines`).
fn upload_deadlines(connect: Duration, request: Duration) -> Deadlines {
    Deadlines {
        connect,
        idle: request,
        answer: request.saturating_mul(2),
    }
}

/// Sends a Print-Job with the document at `path` to the printer at
/// `printer_uri` (`ipp://` or `http://`, as the agent's printer client).
///
/// Not through [`IppClient::call`]: its deadline covers the whole
/// exchange, and a printer that reads the document as it prints takes as
/// long as the printing takes, so a 40 MB PDF was cut at 60 s, sent
/// again and cut again, maybe printing a part each time. The exchange
/// goes through the print stage's [`crate::print::conn::post`] instead,
/// which watches progress (the bytes the printer has acknowledged, the
/// answer) with inactivity `deadlines`, and says whether a broken
/// exchange had sent anything. The whole is bounded by
/// [`MIN_UPLOAD_RATE`].
///
/// A failure once any of the request left is [`SendFailed::Unknown`].
async fn send_document(
    printer_uri: &str,
    deadlines: Deadlines,
    mut req: IppRequestResponse,
    path: &Path,
) -> Result<IppRequestResponse, SendFailed> {
    use tokio_util::compat::TokioAsyncReadCompatExt as _;
    const OPERATION: &str = "Print-Job";
    let bad_uri = |reason: &str| {
        SendFailed::Known(ClientError::BadUri {
            uri: printer_uri.to_owned(),
            reason: reason.to_owned(),
        })
    };
    let parsed: Uri = printer_uri
        .parse()
        .map_err(|_| bad_uri("not a scheme://host[:port]/path URI"))?;
    if !matches!(parsed.scheme_str(), Some("ipp" | "http")) {
        return Err(bad_uri(
            "the agent sends documents over ipp:// or http:// only",
        ));
    }
    let host = parsed
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| bad_uri("no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = parsed
        .port_u16()
        .unwrap_or(faxgate_ipp::client::DEFAULT_PORT);
    let target = parsed
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let addr = format!("{host}:{port}");

    let unreadable = |source| {
        SendFailed::Known(ClientError::Document {
            path: path.to_owned(),
            source,
        })
    };
    let file = tokio::fs::File::open(path).await.map_err(unreadable)?;
    let document = file.metadata().await.map_err(unreadable)?.len();
    let length = req.to_bytes().len() as u64 + document;
    *req.payload_mut() = IppPayload::new_async(file.compat());
    let bound = deadlines
        .connect
        .saturating_add(deadlines.answer)
        .saturating_add(Duration::from_secs(document / MIN_UPLOAD_RATE));
    let posted = tokio::time::timeout(
        bound,
        crate::print::conn::post(
            &host,
            port,
            &target,
            req.into_async_read(),
            length,
            deadlines,
        ),
    )
    .await;
    let bytes = match posted {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(Failure::NotSent(reason))) => {
            return Err(SendFailed::Known(ClientError::Unreachable {
                addr,
                source: std::io::Error::other(reason),
            }));
        }
        Ok(Err(Failure::Http(status))) => {
            return Err(SendFailed::Known(ClientError::Http {
                uri: printer_uri.to_owned(),
                operation: OPERATION,
                status,
            }));
        }
        Ok(Err(Failure::Broken { reason, whole })) => {
            return Err(SendFailed::Unknown {
                reason: format!("{OPERATION} to {addr}: {reason}"),
                whole,
            });
        }
        Err(_) => {
            return Err(SendFailed::Unknown {
                reason: format!("{OPERATION} to {addr}: not over within {bound:?}"),
                whole: false,
            });
        }
    };
    let resp = ipp::parser::AsyncIppParser::new(futures_util::io::Cursor::new(bytes))
        .parse()
        .await
        .map_err(|e| {
            SendFailed::Known(ClientError::Unparsable {
                uri: printer_uri.to_owned(),
                operation: OPERATION,
                reason: e.to_string(),
            })
        })?;
    faxgate_ipp::client::check_status(printer_uri, OPERATION, resp).map_err(SendFailed::Known)
}

/// How the printer's job ended.
enum LocalEnd {
    Completed(i32),
    Canceled {
        by_site: bool,
    },
    Aborted(String),
    HandedBack,
    /// The printer no longer knows the job (client-error-not-found):
    /// it ended and was purged. Its impressions when last read.
    Purged(i32),
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

    /// Site job 17 as Fetch-Job describes it: alice's report.pdf in
    /// `documents` PDF documents, with the attributes `more` after.
    fn job_17(documents: i32, more: Vec<IppAttribute>) -> IppRequestResponse {
        let mut attrs = vec![
            attribute("job-id", IppValue::Integer(17)),
            attribute("job-uuid", message::uri("urn:uuid:abc")),
            attribute("job-name", message::name("report.pdf")),
            attribute("job-originating-user-name", message::name("alice")),
            attribute("document-format", message::mime("application/pdf")),
            attribute("number-of-documents", IppValue::Integer(documents)),
        ];
        attrs.extend(more);
        response(vec![group(DelimiterTag::JobAttributes, attrs)])
    }

    fn fetched() -> IppRequestResponse {
        job_17(
            2,
            vec![
                attribute("job-state", IppValue::Enum(3)),
                attribute("copies", IppValue::Integer(2)),
                attribute("media", keyword("iso_a4_210x297mm")),
                attribute("sides", keyword("two-sided-long-edge")),
                attribute("print-quality", IppValue::Enum(5)),
                attribute("job-hold-until", keyword("indefinite")),
                attribute("job-client-addr", text("203.0.113.9")),
                attribute("job-client-port", IppValue::Integer(50123)),
            ],
        )
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
            17,
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
        assert_eq!(
            op_str("job-name").as_deref(),
            Some("report.pdf (2/2) [site job 17, abc]")
        );
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
                found: false,
            }),
            submitting: None,
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
            submitting: Some(3),
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
    fn local_job_names_are_unique_per_site_job_and_document_and_found_by_name() {
        let mut job = FetchedJob::from_response(&fetched(), 17).unwrap();
        job.uuid = Some("urn:uuid:3f2a9c1e-0000-4000-8000-000000000000".into());
        assert_eq!(
            local_job_name(&job, 17, 2),
            "report.pdf (2/2) [site job 17, 3f2a9c1e]"
        );
        job.documents = 1;
        job.uuid = None;
        assert_eq!(local_job_name(&job, 17, 1), "report.pdf [site job 17]");
        // A long name is cut before the unique tail, at a character.
        job.name = "é".repeat(200);
        let long = local_job_name(&job, 17, 1);
        assert!(long.len() <= 255, "{}", long.len());
        assert!(long.ends_with("é [site job 17]"), "{long}");

        let ours = "report.pdf [site job 17]";
        let listed = |jobs: &[(i32, i32, &str, &str)]| {
            response(
                jobs.iter()
                    .map(|(id, state, name, user)| {
                        group(
                            DelimiterTag::JobAttributes,
                            vec![
                                attribute("job-id", IppValue::Integer(*id)),
                                attribute("job-state", IppValue::Enum(*state)),
                                attribute("job-name", message::name(name)),
                                attribute("job-originating-user-name", message::name(user)),
                            ],
                        )
                    })
                    .collect(),
            )
        };
        let resp = listed(&[
            // An older job of another site job with the same name.
            (3, job_state::COMPLETED, "report.pdf", "alice"),
            (4, job_state::ABORTED, ours, "alice"),
            (5, job_state::CANCELED, ours, "alice"),
            (6, job_state::PROCESSING, ours, "bob"),
        ]);
        assert_eq!(find_local_job(&resp, ours, "alice"), None);
        let resp = listed(&[
            (7, job_state::PROCESSING, ours, "alice"),
            (8, job_state::COMPLETED, "report.pdf [site job 1]", "alice"),
        ]);
        assert_eq!(find_local_job(&resp, ours, "alice"), Some(7));
        message::check_request(&my_jobs_request("ipp://p/ipp/print", "alice", "completed"))
            .unwrap();
    }

    /// A stand-in IPP printer or site (the print stage's test double).
    use crate::print::ipp::test_server::{
        self as stand_in, Answer, Reading, StandIn, attribute_value, named_job,
    };

    /// Site job 17 as Fetch-Job describes it: one PDF document of alice's.
    fn site_job() -> IppRequestResponse {
        job_17(1, vec![])
    }

    /// The printer's name for site job 17's document.
    fn local_name() -> String {
        local_job_name(&FetchedJob::from_response(&site_job(), 17).unwrap(), 17, 1)
    }

    /// A site that hands out [`site_job`] with a document of `size`
    /// bytes and takes every report.
    async fn stand_in_site(size: usize) -> StandIn {
        stand_in::serve(move |o| match o {
            op::FETCH_JOB => site_job().to_bytes().to_vec(),
            op::FETCH_DOCUMENT => {
                let mut b = response(vec![]).to_bytes().to_vec();
                b.extend(std::iter::repeat_n(b'x', size));
                b
            }
            _ => response(vec![]).to_bytes().to_vec(),
        })
        .await
    }

    /// Whether an IPP request is about printer job `id`.
    fn asks_for_job(body: &[u8], id: i32) -> bool {
        attribute_value(body, "job-id") == Some(String::from_utf8_lossy(&id.to_be_bytes()).into())
    }

    /// The printer's answer to Get-Job-Attributes: job `id` completed,
    /// any other aborted.
    fn only_completed(body: &[u8], id: i32) -> Answer {
        let state = if asks_for_job(body, id) {
            job_state::COMPLETED
        } else {
            job_state::ABORTED
        };
        let (tag, attrs) = stand_in::job(id, state);
        Answer::Reply(stand_in::response(status::OK, &[(tag, attrs)]))
    }

    /// A printer that lists job 5, named for site job 17's document 1, as
    /// ours and processing, and says it completed (Get-Job-Attributes);
    /// OK to anything else.
    fn has_job_5(o: u16, body: &[u8]) -> Answer {
        match o {
            op::GET_JOBS => Answer::Reply(stand_in::response(
                status::OK,
                &[named_job(5, job_state::PROCESSING, &local_name(), "alice")],
            )),
            op::GET_JOB_ATTRIBUTES => only_completed(body, 5),
            _ => Answer::Reply(stand_in::response(status::OK, &[])),
        }
    }

    /// A run of site job 17 against `site` and `printer`, the printer's
    /// request deadline `timeout`, the agent's records in `dir`.
    fn job_run(site: &StandIn, printer: &StandIn, timeout: Duration, dir: &Path) -> JobRun {
        std::fs::create_dir_all(dir.join("spool")).unwrap();
        let ctx = JobCtx {
            site: IppClient::builder(site.uri.clone()).build().unwrap(),
            printer: IppClient::builder(printer.uri.clone())
                .request_timeout(timeout)
                .build()
                .unwrap(),
            printer_uri: printer.uri.clone(),
            upload: upload_deadlines(Duration::from_secs(5), timeout),
            infra: Infra {
                site: site.uri.clone(),
                user: "osaka".into(),
                uuid: device_uuid([7; 16]),
            },
            spool: dir.join("spool"),
            book: JobBook {
                dir: dir.join("agent-jobs"),
            },
            front_check: Duration::from_secs(60),
            job_poll: Duration::from_millis(20),
            printer_retry: Duration::from_millis(100),
            grace: Duration::from_secs(5),
        };
        JobRun {
            ctx: Arc::new(ctx),
            job_id: 17,
            cancel: CancellationToken::new(),
            stop: CancellationToken::new(),
            impressions: 0,
            record: JobRecord::default(),
        }
    }

    /// Runs the job, within a bound: an agent that sends the document
    /// again and again would never end.
    async fn run_job(run: JobRun) -> JobOutcome {
        tokio::time::timeout(Duration::from_secs(30), run.run())
            .await
            .expect("the job run did not end")
            .outcome
    }

    /// A Print-Job whose outcome is unknown (the printer reads the whole
    /// request, makes job 5, then drops the connection, or answers only
    /// after the agent's deadline) is not sent again: the agent finds
    /// job 5 at the printer by its unique name (not the older
    /// `report.pdf`, nor an aborted job of the same name) and follows
    /// it to completion. (Test doubles: a real printer does not lose
    /// answers on demand.)
    #[tokio::test]
    async fn a_print_job_with_an_unknown_outcome_is_found_at_the_printer_not_sent_again() {
        for hang in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let site = stand_in_site(64 * 1024).await;
            let made = Arc::new(std::sync::Mutex::new(None::<String>));
            let m = made.clone();
            let printer = stand_in::serve_with(Reading::Fast, move |o, body| match o {
                op::PRINT_JOB => {
                    *m.lock().unwrap() = attribute_value(body, "job-name");
                    if hang { Answer::Hang } else { Answer::Silent }
                }
                op::GET_JOBS => {
                    let mut jobs = vec![named_job(3, job_state::COMPLETED, "report.pdf", "alice")];
                    if let Some(ours) = m.lock().unwrap().clone() {
                        jobs.push(named_job(4, job_state::ABORTED, &ours, "alice"));
                        jobs.push(named_job(5, job_state::PROCESSING, &ours, "alice"));
                    }
                    Answer::Reply(stand_in::response(status::OK, &jobs))
                }
                op::GET_JOB_ATTRIBUTES => only_completed(body, 5),
                _ => Answer::Reply(stand_in::response(status::OK, &[])),
            })
            .await;
            let run = job_run(&site, &printer, Duration::from_millis(300), dir.path());
            let book = run.ctx.book.clone();
            let outcome = run_job(run).await;
            assert!(
                matches!(outcome, JobOutcome::Completed),
                "hang {hang}: {outcome:?}"
            );
            assert_eq!(printer.count(op::PRINT_JOB), 1, "hang {hang}: sent again");
            assert_eq!(made.lock().unwrap().as_deref(), Some(local_name().as_str()));
            assert!(printer.count(op::GET_JOBS) >= 1);
            assert_eq!(book.load(17).await, None, "the final report was taken");
        }
    }

    /// A printer that reads the document as it prints, slower than the
    /// request deadline allows for the whole exchange, gets it once: the
    /// upload is watched for progress, not cut at a total deadline.
    #[tokio::test]
    async fn a_large_upload_that_makes_progress_is_not_cut() {
        let dir = tempfile::tempdir().unwrap();
        let site = stand_in_site(256 * 1024).await;
        let pace = Reading::Paced {
            bytes: 4096,
            every: Duration::from_millis(8),
        };
        let printer = stand_in::serve_with(pace, |o, body| match o {
            op::PRINT_JOB => {
                let (tag, attrs) = stand_in::job(5, job_state::PENDING);
                Answer::Reply(stand_in::response(status::OK, &[(tag, attrs)]))
            }
            op::GET_JOB_ATTRIBUTES => only_completed(body, 5),
            _ => Answer::Reply(stand_in::response(status::OK, &[])),
        })
        .await;
        let run = job_run(&site, &printer, Duration::from_millis(300), dir.path());
        let start = Instant::now();
        let outcome = run_job(run).await;
        assert!(matches!(outcome, JobOutcome::Completed), "{outcome:?}");
        assert_eq!(printer.count(op::PRINT_JOB), 1, "sent again");
        assert!(
            start.elapsed() > Duration::from_millis(300),
            "the printer read faster than the test means: {:?}",
            start.elapsed()
        );
    }

    /// After a restart whose record says the document was being
    /// submitted (and names no printer job), nothing tells whether the
    /// printer got all of it: the job it made of it (job 5) may hold part
    /// of it, so it is canceled, and the document is sent again (job 6)
    /// and followed to completion. (The CI once caught the other way
    /// round, following the job, completing a site job whose document
    /// ippeveprinter had only in part.)
    #[tokio::test]
    async fn a_restart_while_submitting_cancels_the_job_found_and_sends_again() {
        let dir = tempfile::tempdir().unwrap();
        let site = stand_in_site(1024).await;
        let printer = stand_in::serve_with(Reading::Fast, |o, body| match o {
            op::PRINT_JOB => {
                let (tag, attrs) = stand_in::job(6, job_state::PENDING);
                Answer::Reply(stand_in::response(status::OK, &[(tag, attrs)]))
            }
            op::GET_JOB_ATTRIBUTES => only_completed(body, 6),
            o => has_job_5(o, body),
        })
        .await;
        let run = job_run(&site, &printer, Duration::from_secs(5), dir.path());
        let stored = JobRecord {
            job_uuid: Some("urn:uuid:abc".into()),
            submitting: Some(1),
            ..JobRecord::default()
        };
        run.ctx.book.save(17, &stored).await.unwrap();
        let outcome = run_job(run).await;
        assert!(matches!(outcome, JobOutcome::Completed), "{outcome:?}");
        assert_eq!(printer.count(op::CANCEL_JOB), 1, "the job found canceled");
        assert_eq!(printer.count(op::PRINT_JOB), 1, "sent once more");
    }

    /// A printer job the agent follows after a restart that the printer
    /// no longer knows (client-error-not-found: it ended and was
    /// purged) counts as printed; one the agent canceled on shutdown is
    /// printed again, since it may have ended canceled.
    #[tokio::test]
    async fn a_purged_printer_job_counts_as_printed_unless_canceled_on_stop() {
        for canceled in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let site = stand_in_site(1024).await;
            let printer = stand_in::serve_with(Reading::Fast, |o, body| match o {
                op::PRINT_JOB => {
                    let (tag, attrs) = stand_in::job(8, job_state::PENDING);
                    Answer::Reply(stand_in::response(status::OK, &[(tag, attrs)]))
                }
                op::GET_JOB_ATTRIBUTES if asks_for_job(body, 7) => {
                    Answer::Reply(stand_in::response(status::NOT_FOUND, &[]))
                }
                op::GET_JOB_ATTRIBUTES => only_completed(body, 8),
                _ => Answer::Reply(stand_in::response(status::OK, &[])),
            })
            .await;
            let run = job_run(&site, &printer, Duration::from_secs(5), dir.path());
            let stored = JobRecord {
                job_uuid: Some("urn:uuid:abc".into()),
                at_printer: Some(AtPrinter {
                    document: 1,
                    local_job: 7,
                    canceled,
                    found: false,
                }),
                ..JobRecord::default()
            };
            run.ctx.book.save(17, &stored).await.unwrap();
            let outcome = run_job(run).await;
            assert!(
                matches!(outcome, JobOutcome::Completed),
                "canceled {canceled}: {outcome:?}"
            );
            assert_eq!(
                printer.count(op::PRINT_JOB),
                usize::from(canceled),
                "canceled {canceled}"
            );
        }
    }

    /// Waits (at most 20 s) until `done` holds.
    async fn until(mut done: impl FnMut() -> bool) {
        let start = Instant::now();
        while !done() {
            assert!(start.elapsed() < Duration::from_secs(20), "waited too long");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The job's outcome once it ended (within 30 s).
    async fn outcome_of(task: tokio::task::JoinHandle<JobResult>) -> JobOutcome {
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("the job run did not end")
            .unwrap()
            .outcome
    }

    /// The document states the site was told (Update-Document-Status).
    fn document_states(site: &StandIn) -> Vec<i32> {
        site.bodies(op::UPDATE_DOCUMENT_STATUS)
            .iter()
            .filter_map(|b| attribute_value(b, "output-device-document-state"))
            .filter_map(|v| Some(i32::from_be_bytes(v.as_bytes().try_into().ok()?)))
            .collect()
    }

    /// The site cancels a job whose printer job is being watched, and the
    /// printer drops a canceled job at once: the next look finds nothing
    /// (client-error-not-found). That is the agent's own cancel, not a
    /// job that ended and was purged: the job is canceled, the document
    /// not printed.
    #[tokio::test]
    async fn a_printer_job_gone_after_the_sites_cancel_is_canceled_not_printed() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let site = stand_in_site(1024).await;
        let dropped = Arc::new(AtomicBool::new(false));
        let d = dropped.clone();
        let printer = stand_in::serve_with(Reading::Fast, move |o, _| match o {
            op::PRINT_JOB => {
                let (tag, attrs) = stand_in::job(5, job_state::PENDING);
                Answer::Reply(stand_in::response(status::OK, &[(tag, attrs)]))
            }
            op::GET_JOB_ATTRIBUTES if d.load(Ordering::SeqCst) => {
                Answer::Reply(stand_in::response(status::NOT_FOUND, &[]))
            }
            op::GET_JOB_ATTRIBUTES => {
                let (tag, attrs) = stand_in::job(5, job_state::PROCESSING);
                Answer::Reply(stand_in::response(status::OK, &[(tag, attrs)]))
            }
            op::CANCEL_JOB => {
                d.store(true, Ordering::SeqCst);
                Answer::Reply(stand_in::response(status::OK, &[]))
            }
            _ => Answer::Reply(stand_in::response(status::OK, &[])),
        })
        .await;
        let run = job_run(&site, &printer, Duration::from_secs(5), dir.path());
        let cancel = run.cancel.clone();
        let task = tokio::spawn(run.run());
        until(|| printer.count(op::GET_JOB_ATTRIBUTES) >= 2).await;
        cancel.cancel();
        let outcome = outcome_of(task).await;
        assert!(matches!(outcome, JobOutcome::Canceled), "{outcome:?}");
        assert_eq!(printer.count(op::CANCEL_JOB), 1);
        let states = document_states(&site);
        assert!(
            !states.contains(&job_state::COMPLETED),
            "printed: {states:?}"
        );
        assert_eq!(states.last(), Some(&job_state::CANCELED));
    }

    /// A Print-Job that broke while the document was going out (the
    /// printer stopped reading: a jam) leaves a job made of part of it,
    /// which this printer would end completed: the agent cancels it and
    /// sends the document again instead of following it. (The stand-in
    /// takes no document better the second time; the site cancels the
    /// job once the second try broke too.)
    #[tokio::test]
    async fn a_job_made_of_part_of_a_document_is_canceled_not_followed() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let site = stand_in_site(256 * 1024).await;
        let canceled = Arc::new(AtomicBool::new(false));
        let c = canceled.clone();
        let printer =
            stand_in::serve_with(Reading::Stops { after: 4096 }, move |o, body| match o {
                op::GET_JOBS => {
                    let state = if c.load(Ordering::SeqCst) {
                        job_state::CANCELED
                    } else {
                        job_state::PROCESSING_STOPPED
                    };
                    let job = named_job(5, state, &local_name(), "alice");
                    Answer::Reply(stand_in::response(status::OK, &[job]))
                }
                op::CANCEL_JOB => {
                    c.store(true, Ordering::SeqCst);
                    Answer::Reply(stand_in::response(status::OK, &[]))
                }
                op::GET_JOB_ATTRIBUTES => only_completed(body, 5),
                _ => Answer::Reply(stand_in::response(status::OK, &[])),
            })
            .await;
        let run = job_run(&site, &printer, Duration::from_millis(300), dir.path());
        let cancel = run.cancel.clone();
        let task = tokio::spawn(run.run());
        // Each broken try is followed by a look (Get-Jobs not-completed,
        // and completed when that finds nothing): three means the
        // document went out again and broke again.
        until(|| task.is_finished() || printer.count(op::GET_JOBS) >= 3).await;
        cancel.cancel();
        let outcome = outcome_of(task).await;
        assert!(matches!(outcome, JobOutcome::Canceled), "{outcome:?}");
        assert!(
            printer.count(op::CANCEL_JOB) >= 1,
            "the partial job canceled"
        );
        assert_eq!(printer.count(op::GET_JOB_ATTRIBUTES), 0, "followed");
        let states = document_states(&site);
        assert!(
            !states.contains(&job_state::COMPLETED),
            "printed: {states:?}"
        );
    }

    /// A site cancel, or shutdown, while a slow printer reads a large
    /// document drops the upload at once instead of waiting for it (it
    /// would take over a minute here). On cancel the job the printer made
    /// of part of it is canceled; on shutdown the job is handed back and
    /// the record still says the document was being submitted, so a
    /// restart looks at the printer first.
    #[tokio::test]
    async fn cancel_or_shutdown_during_an_upload_ends_it_at_once() {
        for stop in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let site = stand_in_site(1024 * 1024).await;
            let pace = Reading::Paced {
                bytes: 4096,
                every: Duration::from_millis(300),
            };
            let printer = stand_in::serve_with(pace, has_job_5).await;
            let run = job_run(&site, &printer, Duration::from_secs(5), dir.path());
            let (cancel, shutdown, book) =
                (run.cancel.clone(), run.stop.clone(), run.ctx.book.clone());
            let task = tokio::spawn(run.run());
            let start = Instant::now();
            loop {
                let record = book.load(17).await;
                if record.is_some_and(|r| r.submitting == Some(1)) {
                    break;
                }
                assert!(start.elapsed() < Duration::from_secs(20), "never submitted");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            let asked = Instant::now();
            if stop {
                shutdown.cancel();
            } else {
                cancel.cancel();
            }
            let outcome = tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .unwrap_or_else(|_| panic!("stop {stop}: the upload went on"))
                .unwrap()
                .outcome;
            assert!(asked.elapsed() < Duration::from_secs(10));
            assert_eq!(
                printer.count(op::GET_JOB_ATTRIBUTES),
                0,
                "stop {stop}: followed"
            );
            if stop {
                assert!(matches!(outcome, JobOutcome::HandedBack), "{outcome:?}");
                let record = book.load(17).await.unwrap();
                assert_eq!(record.submitting, Some(1), "a restart looks first");
                assert_eq!(record.printed, 0);
            } else {
                assert!(matches!(outcome, JobOutcome::Canceled), "{outcome:?}");
                assert_eq!(printer.count(op::CANCEL_JOB), 1, "the partial job canceled");
            }
        }
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
