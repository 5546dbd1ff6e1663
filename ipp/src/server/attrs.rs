//! Attribute sets the front answers with: a site's printer attributes
//! (its own plus those mirrored from the agent's device) and a job's
//! attributes. Pure functions over rows and the request.

use ipp::model::DelimiterTag;
use ipp::prelude::*;

use super::store::JobRow;
use crate::codes::{job_state, op, printer_state};
use crate::message::{self, attribute, keyword, keywords, mime, name, one_or_many, text, uri};

/// Encodes attributes for storage (the IPP wire form, no group tag).
pub fn encode(attrs: &[IppAttribute]) -> Vec<u8> {
    let mut out = Vec::new();
    for a in attrs {
        out.extend_from_slice(&a.to_bytes());
    }
    out
}

/// Decodes what [`encode`] wrote. Bad bytes give an empty list (they were
/// written by us; a warning is logged).
pub fn decode(bytes: &[u8]) -> Vec<IppAttribute> {
    if bytes.is_empty() {
        return Vec::new();
    }
    let mut buf = vec![0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x02];
    buf.extend_from_slice(bytes);
    buf.push(0x03);
    let parsed =
        ipp::parser::IppParser::new(ipp::reader::IppReader::new(std::io::Cursor::new(buf))).parse();
    match parsed {
        Ok(msg) => msg
            .attributes()
            .groups_of(DelimiterTag::JobAttributes)
            .flat_map(|g| g.attributes().iter().cloned())
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "Stored IPP attributes do not parse; ignoring them.");
            Vec::new()
        }
    }
}

/// What `requested-attributes` asks for.
#[derive(Debug, Clone)]
pub struct Requested {
    all: bool,
    names: Vec<String>,
    template: bool,
    description: bool,
}

impl Requested {
    /// From a request; `default` is used when the attribute is absent.
    pub fn from_request(req: &impl message::Attrs, default: &[&str]) -> Self {
        let names = match message::op_attr(req, "requested-attributes") {
            Some(v) => message::strings(Some(v)),
            None => default.iter().map(|s| (*s).to_owned()).collect(),
        };
        Self {
            all: names.iter().any(|n| n == "all"),
            template: names.iter().any(|n| n == "job-template"),
            description: names
                .iter()
                .any(|n| n == "printer-description" || n == "job-description"),
            names,
        }
    }

    /// Whether an attribute is wanted. `is_template` says whether it is a
    /// job template attribute (or a printer's -default/-supported of one).
    pub fn wants(&self, attr: &str, is_template: bool) -> bool {
        self.all
            || self.names.iter().any(|n| n == attr)
            || (self.template && is_template)
            || (self.description && !is_template)
    }
}

/// Job template attribute names (RFC 8011 section 5.2 and PWG 5100.x),
/// the ones a job keeps and a printer has -default/-supported for.
pub const TEMPLATE: &[&str] = &[
    "copies",
    "finishings",
    "finishings-col",
    "job-hold-until",
    "job-priority",
    "job-sheets",
    "media",
    "media-col",
    "multiple-document-handling",
    "number-up",
    "orientation-requested",
    "output-bin",
    "page-ranges",
    "print-color-mode",
    "print-content-optimize",
    "print-quality",
    "print-rendering-intent",
    "print-scaling",
    "printer-resolution",
    "sides",
];

fn is_template_printer_attr(n: &str) -> bool {
    TEMPLATE.iter().any(|t| {
        n.strip_prefix(t)
            .is_some_and(|rest| matches!(rest, "-default" | "-supported" | "-ready" | "-database"))
    }) || matches!(n, "media-col-ready" | "media-ready")
}

/// Attributes the front owns: a device's values for them are ignored.
pub const OWNED: &[&str] = &[
    "printer-uri-supported",
    "uri-security-supported",
    "uri-authentication-supported",
    "printer-name",
    "printer-info",
    "printer-location",
    "printer-uuid",
    "printer-more-info",
    "operations-supported",
    "ipp-versions-supported",
    "charset-configured",
    "charset-supported",
    "natural-language-configured",
    "generated-natural-language-supported",
    "printer-up-time",
    "printer-current-time",
    "queued-job-count",
    "printer-is-accepting-jobs",
    "compression-supported",
    "multiple-document-jobs-supported",
    "multiple-operation-time-out",
    "notify-events-supported",
    "notify-pull-method-supported",
    "notify-lease-duration-supported",
    "which-jobs-supported",
    "job-ids-supported",
    "printer-state",
    "printer-state-reasons",
    "printer-state-message",
    "printer-state-change-time",
    "pdl-override-supported",
    "ippget-event-life",
];

/// Acknowledge-Identify-Printer (PWG 5100.18), not in `crate::codes::op`.
pub const ACKNOWLEDGE_IDENTIFY_PRINTER: u16 = 0x0040;

/// Update-Active-Jobs (PWG 5100.18), not in `crate::codes::op`.
pub const UPDATE_ACTIVE_JOBS: u16 = 0x0045;

/// The identify-actions a site takes (PWG 5100.13); its agent carries
/// them out on the real printer.
pub const IDENTIFY_ACTIONS: &[&str] = &["display", "flash", "sound", "speak"];

/// The operations a site serves.
pub const OPERATIONS: &[u16] = &[
    op::PRINT_JOB,
    op::VALIDATE_JOB,
    op::CREATE_JOB,
    op::SEND_DOCUMENT,
    op::CANCEL_JOB,
    op::GET_JOB_ATTRIBUTES,
    op::GET_JOBS,
    op::GET_PRINTER_ATTRIBUTES,
    op::RELEASE_JOB,
    op::PAUSE_PRINTER,
    op::RESUME_PRINTER,
    op::CREATE_PRINTER_SUBSCRIPTIONS,
    op::CANCEL_SUBSCRIPTION,
    op::GET_NOTIFICATIONS,
    op::CLOSE_JOB,
    op::IDENTIFY_PRINTER,
    op::ACKNOWLEDGE_DOCUMENT,
    ACKNOWLEDGE_IDENTIFY_PRINTER,
    op::ACKNOWLEDGE_JOB,
    op::FETCH_DOCUMENT,
    op::FETCH_JOB,
    op::GET_OUTPUT_DEVICE_ATTRIBUTES,
    UPDATE_ACTIVE_JOBS,
    op::DEREGISTER_OUTPUT_DEVICE,
    op::UPDATE_DOCUMENT_STATUS,
    op::UPDATE_JOB_STATUS,
    op::UPDATE_OUTPUT_DEVICE_ATTRIBUTES,
    op::GET_PRINTERS,
    op::CUPS_GET_PRINTERS,
];

/// Formats a site accepts before any device has told it what it prints.
pub const DEFAULT_FORMATS: &[&str] = &[
    "application/octet-stream",
    "application/pdf",
    "image/pwg-raster",
    "image/urf",
    "image/jpeg",
];

/// Everything the printer attribute set depends on besides the device.
#[derive(Debug, Clone)]
pub struct PrinterView<'a> {
    /// The site name.
    pub name: &'a str,
    /// printer-info.
    pub info: Option<&'a str>,
    /// printer-location.
    pub location: Option<&'a str>,
    /// `(uri, security)` pairs, e.g. `("ipps://h:8632/ipp/print/a", "tls")`.
    pub uris: Vec<(String, &'static str)>,
    /// The device's printer attributes (the last registration's).
    pub device: &'a [IppAttribute],
    /// Whether a device is attached now.
    pub attached: bool,
    /// Paused by Pause-Printer.
    pub paused: bool,
    /// Jobs not yet final.
    pub queued: usize,
    /// Unix seconds now (printer-up-time, as CUPS does).
    pub now: i64,
    /// Extra reason/message while waking the agent, e.g. mail trouble.
    pub wake_note: Option<String>,
    /// An Identify-Printer waits for the agent's
    /// Acknowledge-Identify-Printer (`identify-printer-requested`).
    pub identify: bool,
}

fn device_attr<'a>(device: &'a [IppAttribute], n: &str) -> Option<&'a IppValue> {
    device
        .iter()
        .find(|a| a.name().as_str() == n)
        .map(IppAttribute::value)
}

/// The site's printer-state, reasons and message: the device's, with
/// `paused` and `offline-report` (no agent attached) on top.
pub fn printer_status(v: &PrinterView<'_>) -> (i32, Vec<String>, String) {
    let mut state = device_attr(v.device, "printer-state")
        .and_then(message::as_int)
        .filter(|s| (3..=5).contains(s))
        .unwrap_or(printer_state::IDLE);
    let mut reasons: Vec<String> = message::strings(device_attr(v.device, "printer-state-reasons"))
        .into_iter()
        .filter(|r| r != "none")
        .collect();
    let mut msg = device_attr(v.device, "printer-state-message")
        .and_then(message::as_str)
        .unwrap_or("")
        .to_owned();
    if !v.attached {
        // Not processing anything here while no agent is attached.
        if state == printer_state::PROCESSING {
            state = printer_state::IDLE;
        }
        reasons.retain(|r| r != "offline-report");
        reasons.push("offline-report".into());
        msg = match &v.wake_note {
            Some(note) => format!("No printer agent attached: {note}"),
            None => "No printer agent attached; jobs wait until it connects.".into(),
        };
    }
    if v.identify {
        reasons.push("identify-printer-requested".into());
    }
    if v.paused {
        state = printer_state::STOPPED;
        reasons.push("paused".into());
        msg = "Paused (Pause-Printer); jobs are kept until Resume-Printer.".into();
    }
    (state, reasons, msg)
}

/// The attributes a site answers Get-Printer-Attributes with.
pub fn printer_attributes(v: &PrinterView<'_>, want: &Requested) -> Vec<IppAttribute> {
    let mut out: Vec<IppAttribute> = Vec::new();
    let mut put = |n: &str, value: IppValue| {
        if want.wants(n, is_template_printer_attr(n)) {
            out.push(attribute(n, value));
        }
    };
    let (state, reasons, msg) = printer_status(v);
    put(
        "printer-uri-supported",
        one_or_many(v.uris.iter().map(|(u, _)| uri(u)).collect()),
    );
    put(
        "uri-security-supported",
        one_or_many(v.uris.iter().map(|(_, s)| keyword(s)).collect()),
    );
    put(
        "uri-authentication-supported",
        one_or_many(v.uris.iter().map(|_| keyword("none")).collect()),
    );
    put("printer-name", name(v.name));
    put("printer-info", text(v.info.unwrap_or(v.name)));
    put("printer-location", text(v.location.unwrap_or("")));
    if let Some((u, _)) = v.uris.first() {
        // The site's status page: same host and port, over HTTP(S).
        let more = u
            .replacen("ipps://", "https://", 1)
            .replacen("ipp://", "http://", 1);
        put("printer-more-info", uri(&more));
    }
    put("printer-uuid", uri(&site_uuid(v.name)));
    put("printer-state", IppValue::Enum(state));
    put(
        "printer-state-reasons",
        if reasons.is_empty() {
            keyword("none")
        } else {
            keywords(&reasons)
        },
    );
    if !msg.is_empty() {
        put("printer-state-message", text(&msg));
    }
    put(
        "operations-supported",
        one_or_many(
            OPERATIONS
                .iter()
                .map(|o| IppValue::Enum(i32::from(*o)))
                .collect(),
        ),
    );
    put("ipp-versions-supported", keywords(&message::VERSIONS));
    put("charset-configured", IppValue::Charset(charset("utf-8")));
    put(
        "charset-supported",
        one_or_many(vec![
            IppValue::Charset(charset("utf-8")),
            IppValue::Charset(charset("us-ascii")),
        ]),
    );
    put(
        "natural-language-configured",
        IppValue::NaturalLanguage(language("en")),
    );
    put(
        "generated-natural-language-supported",
        IppValue::NaturalLanguage(language("en")),
    );
    put(
        "printer-up-time",
        IppValue::Integer(v.now.clamp(1, i64::from(i32::MAX)) as i32),
    );
    put(
        "queued-job-count",
        IppValue::Integer(v.queued.min(i32::MAX as usize) as i32),
    );
    put("printer-is-accepting-jobs", IppValue::Boolean(true));
    put("compression-supported", keyword("none"));
    put("multiple-document-jobs-supported", IppValue::Boolean(true));
    put(
        "multiple-operation-time-out",
        IppValue::Integer(super::MULTIPLE_OPERATION_TIME_OUT),
    );
    put("pdl-override-supported", keyword("attempted"));
    put(
        "notify-events-supported",
        keywords(&["job-fetchable", "job-state-changed", "job-completed"]),
    );
    put("notify-pull-method-supported", keyword("ippget"));
    put("ippget-event-life", IppValue::Integer(300));
    put(
        "which-jobs-supported",
        keywords(&["completed", "not-completed", "all", "fetchable"]),
    );
    put("job-ids-supported", IppValue::Boolean(true));
    if device_attr(v.device, "identify-actions-supported").is_none() {
        put("identify-actions-supported", keywords(IDENTIFY_ACTIONS));
    }
    if device_attr(v.device, "identify-actions-default").is_none() {
        put("identify-actions-default", keyword("flash"));
    }
    let formats = message::strings(device_attr(v.device, "document-format-supported"));
    let mut formats: Vec<&str> = if formats.is_empty() {
        DEFAULT_FORMATS.to_vec()
    } else {
        formats.iter().map(String::as_str).collect()
    };
    if !formats.contains(&"application/octet-stream") {
        formats.insert(0, "application/octet-stream");
    }
    put(
        "document-format-supported",
        one_or_many(formats.iter().map(|f| mime(f)).collect()),
    );
    if device_attr(v.device, "document-format-default").is_none() {
        put("document-format-default", mime("application/octet-stream"));
    }
    // Everything else the device reported, as it reported it.
    for a in v.device {
        let n = a.name().as_str();
        if OWNED.contains(&n) || n == "document-format-supported" {
            continue;
        }
        put(n, a.value().clone());
    }
    out
}

fn charset(s: &str) -> ipp::value::IppCharset {
    ipp::value::IppCharset::new_truncated(s.to_owned())
}

fn language(s: &str) -> ipp::value::IppLanguage {
    ipp::value::IppLanguage::new_truncated(s.to_owned())
}

/// A stable `urn:uuid:` for a site, derived from its name (SHA-256, so
/// it survives restarts and upgrades).
pub fn site_uuid(site: &str) -> String {
    use sha2::Digest as _;
    let h = sha2::Sha256::digest(format!("faxgate-site:{site}").as_bytes());
    let hex: String = h.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!(
        "urn:uuid:{}-{}-4{}-8{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    )
}

/// Everything a job's attributes depend on besides its row.
#[derive(Debug, Clone)]
pub struct JobView<'a> {
    /// The job's URI (`.../ipp/print/SITE/ID`).
    pub job_uri: String,
    /// The site's printer URI.
    pub printer_uri: &'a str,
    /// Unix seconds now.
    pub now: i64,
    /// Jobs ahead of this one.
    pub intervening: usize,
    /// Whether the requester sees the job's private attributes
    /// (job-originating-user-name, job-client-addr, job-client-port): the
    /// job's owner and the site's agent do; for anyone else they are left
    /// out.
    pub private: bool,
    /// Whether the requester is the site's agent: only it is shown
    /// `output-device-assigned` (a device's UUID is the agent's business,
    /// and was once enough to act for it).
    pub agent: bool,
}

/// The attributes of a job, filtered by `want`.
pub fn job_attributes(job: &JobRow, v: &JobView<'_>, want: &Requested) -> Vec<IppAttribute> {
    let mut out: Vec<IppAttribute> = Vec::new();
    let mut put = |n: &str, value: IppValue| {
        if want.wants(n, TEMPLATE.contains(&n)) {
            out.push(attribute(n, value));
        }
    };
    let time = |t: i64| {
        if t == 0 {
            IppValue::NoValue
        } else {
            IppValue::Integer(t.clamp(0, i64::from(i32::MAX)) as i32)
        }
    };
    put("job-id", IppValue::Integer(job.id));
    put("job-uri", uri(&v.job_uri));
    put("job-uuid", uri(&job.uuid));
    put("job-printer-uri", uri(v.printer_uri));
    put("job-name", name(&job.name));
    if v.private {
        put("job-originating-user-name", name(&job.user));
    }
    put("job-state", IppValue::Enum(job.state));
    put("job-state-reasons", reasons_value(job));
    if !job.message.is_empty() {
        put("job-state-message", text(&job.message));
    }
    put("number-of-documents", IppValue::Integer(job.documents));
    put("document-format", mime(&job.format));
    put("time-at-creation", time(job.created));
    put("time-at-processing", time(job.processing));
    put("time-at-completed", time(job.completed));
    put("job-printer-up-time", time(v.now));
    put(
        "job-k-octets",
        IppValue::Integer(((job.octets + 1023) / 1024).min(i64::from(i32::MAX)) as i32),
    );
    put(
        "job-impressions-completed",
        IppValue::Integer(job.impressions),
    );
    if !job.is_final() {
        put(
            "number-of-intervening-jobs",
            IppValue::Integer(v.intervening.min(i32::MAX as usize) as i32),
        );
    }
    if v.agent && !job.device.is_empty() {
        put("output-device-assigned", name(&job.device));
    }
    // The seed's client identification.
    if v.private {
        put("job-client-addr", text(&job.client_addr));
        put(
            "job-client-port",
            IppValue::Integer(i32::from(job.client_port)),
        );
    }
    for a in decode(&job.template) {
        let n = a.name().as_str().to_owned();
        put(&n, a.into_value());
    }
    out
}

/// job-state-reasons as a value (`none` when empty).
pub fn reasons_value(job: &JobRow) -> IppValue {
    if job.reasons.is_empty() {
        keyword("none")
    } else {
        keywords(&job.reasons)
    }
}

/// The reasons a final state gets when the agent gave none.
pub fn final_reason(state: i32) -> &'static str {
    match state {
        job_state::COMPLETED => "job-completed-successfully",
        job_state::CANCELED => "job-canceled-by-user",
        _ => "aborted-by-system",
    }
}

/// An output device's stored attributes as Get-Output-Device-Attributes
/// answers them, filtered by `want`.
pub fn device_attributes(stored: &[IppAttribute], want: &Requested) -> Vec<IppAttribute> {
    stored
        .iter()
        .filter(|a| {
            let n = a.name().as_str();
            want.wants(n, is_template_printer_attr(n))
        })
        .cloned()
        .collect()
}

/// Whether `value` is among the device's `supported` values: members of
/// a 1setOf, or inside a rangeOfInteger. Collections are not checked.
pub fn value_supported(value: &IppValue, supported: &IppValue) -> bool {
    if matches!(value, IppValue::Collection(_)) {
        return true;
    }
    message::values(value).into_iter().all(|v| {
        message::values(supported)
            .into_iter()
            .any(|s| match (v, s) {
                (IppValue::Integer(i), IppValue::RangeOfInteger { min, max }) => {
                    (*min..=*max).contains(i)
                }
                (IppValue::Collection(_), _) => true,
                (a, b) => match (message::as_str(a), message::as_str(b)) {
                    (Some(x), Some(y)) => x == y,
                    _ => a == b,
                },
            })
    })
}

/// The template attributes whose values the device does not support
/// (`NAME-supported` known and not matching), as `(name, value)`.
pub fn unsupported(template: &[IppAttribute], device: &[IppAttribute]) -> Vec<(String, IppValue)> {
    template
        .iter()
        .filter(|a| {
            let n = format!("{}-supported", a.name().as_str());
            device_attr(device, &n).is_some_and(|s| {
                // A boolean -supported (e.g. page-ranges-supported) says
                // whether the attribute is supported at all.
                match s {
                    IppValue::Boolean(b) => !b,
                    s => !value_supported(a.value(), s),
                }
            })
        })
        .map(|a| (a.name().as_str().to_owned(), a.value().clone()))
        .collect()
}

/// The job template attributes of a request's job group, for storage.
pub fn template_of(req: &impl message::Attrs) -> Vec<IppAttribute> {
    message::Attrs::attributes(req)
        .groups_of(DelimiterTag::JobAttributes)
        .flat_map(|g| g.attributes().iter())
        .filter(|a| TEMPLATE.contains(&a.name().as_str()))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip() {
        let attrs = vec![
            attribute("copies", IppValue::Integer(2)),
            attribute("media", keyword("iso_a4_210x297mm")),
            attribute("sides", keywords(&["one-sided"])),
        ];
        let back = decode(&encode(&attrs));
        assert_eq!(back.len(), 3);
        assert_eq!(back[0].value(), &IppValue::Integer(2));
        assert_eq!(message::as_str(back[1].value()), Some("iso_a4_210x297mm"));
    }

    #[test]
    fn unattached_paused_site_reports_offline_and_paused() {
        let device = vec![
            attribute("printer-state", IppValue::Enum(5)),
            attribute("printer-state-reasons", keywords(&["media-jam-error"])),
        ];
        let v = PrinterView {
            name: "a",
            info: None,
            location: None,
            uris: vec![("ipp://h/ipp/print/a".into(), "none")],
            device: &device,
            attached: false,
            paused: true,
            queued: 0,
            now: 5,
            wake_note: None,
            identify: false,
        };
        let (state, reasons, _) = printer_status(&v);
        assert_eq!(state, printer_state::STOPPED);
        assert_eq!(reasons, ["media-jam-error", "offline-report", "paused"]);
    }

    #[test]
    fn requested_attributes_filter() {
        let req = message::request(op::GET_PRINTER_ATTRIBUTES, "ipp://h/p", "u", 1);
        let all = Requested::from_request(&req, &["all"]);
        assert!(all.wants("printer-name", false));
        let mut req = req;
        req.attributes_mut().add(
            DelimiterTag::OperationAttributes,
            attribute("requested-attributes", keyword("printer-uri-supported")),
        );
        let one = Requested::from_request(&req, &["all"]);
        assert!(one.wants("printer-uri-supported", false));
        assert!(!one.wants("printer-name", false));
    }

    #[test]
    fn template_values_are_checked_against_the_device() {
        let device = vec![
            attribute("sides-supported", keyword("one-sided")),
            attribute(
                "copies-supported",
                IppValue::RangeOfInteger { min: 1, max: 9 },
            ),
            attribute(
                "print-quality-supported",
                one_or_many(vec![IppValue::Enum(4), IppValue::Enum(5)]),
            ),
        ];
        let template = vec![
            attribute("sides", keyword("two-sided-long-edge")),
            attribute("copies", IppValue::Integer(3)),
            attribute("print-quality", IppValue::Enum(3)),
            attribute("media", keyword("iso_a4_210x297mm")),
        ];
        let bad: Vec<String> = unsupported(&template, &device)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(bad, ["sides", "print-quality"]);
        let ok = vec![attribute("copies", IppValue::Integer(10))];
        assert_eq!(unsupported(&ok, &device).len(), 1, "10 is outside 1..=9");
    }

    #[test]
    fn site_uuids_are_stable_and_distinct() {
        assert_eq!(site_uuid("a"), site_uuid("a"));
        assert_ne!(site_uuid("a"), site_uuid("b"));
        assert_eq!(site_uuid("a").len(), "urn:uuid:".len() + 36);
    }
}
