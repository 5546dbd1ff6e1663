//! Configuration of the appliance daemon (`faxgate appliance`): one
//! section per actor, so each actor gets only its own part.

use crate::relay::{ClientTlsConfig, RelayClientConfig};
use crate::{ConfigError, Secret, check_duration, check_path, invalid, is_loopback_host};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole `appliance.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplianceConfig {
    /// Holds `store.db`, the outbox and inbox page files, and the archive
    /// unless `inbox.archive_dir` says otherwise.
    pub state_dir: PathBuf,
    /// How the appliance logs in to its relay (seed 001).
    pub relay: RelayClientConfig,
    /// The fax sessions: identity, capabilities, timers and retries.
    #[serde(default)]
    pub fax: FaxSection,
    /// What happens to received documents.
    #[serde(default)]
    pub inbox: InboxSection,
    /// Where received documents are printed. Absent: they are only kept
    /// (and archived when `inbox.archive_dir` is set).
    #[serde(default)]
    pub printer: Option<PrinterSection>,
    /// The scanner `faxgate scan-send` uses. Absent: no scanning.
    #[serde(default)]
    pub scanner: Option<ScannerSection>,
    /// Hot folders (`[[hot_folder]]`): every document dropped into one is
    /// faxed to its relay user.
    #[serde(default, rename = "hot_folder")]
    pub hot_folders: Vec<HotFolderSection>,
    /// The front-panel API the `faxgate send|jobs|...` commands talk to.
    #[serde(default)]
    pub panel: PanelSection,
    /// The print agent that serves `[printer]` at the relay's IPP front
    /// (seed 000). Absent: no agent.
    #[serde(default)]
    pub agent: Option<AgentSection>,
    /// A Class 1 fax modem on a telephone line that answers fax calls
    /// and puts the faxes in the inbox. Absent: no PSTN line.
    #[serde(default)]
    pub modem: Option<ModemSection>,
}

/// A fax resolution by its T.30 name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaxResolution {
    /// 204x98 dpi.
    Standard,
    /// 204x196 dpi.
    Fine,
    /// 204x391 dpi.
    Superfine,
    /// 300x300 dpi.
    #[serde(rename = "300")]
    R300,
    /// 400x400 dpi.
    #[serde(rename = "400")]
    R400,
}

/// A fax coding scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaxCoding {
    /// T.4 one-dimensional (always supported).
    Mh,
    /// T.4 two-dimensional.
    Mr,
    /// T.6 (needs ECM).
    Mmr,
}

/// Paper sizes a page is scanned or converted for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PaperName {
    /// ISO A4 (1728 pels).
    A4,
    /// US Letter (1728 pels).
    Letter,
    /// ISO B4 (2048 pels).
    B4,
    /// ISO A3 (2432 pels).
    A3,
}

/// The fax engine: who we are, what we can do, how hard we try.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaxSection {
    /// Our T.30 identity (TSI when sending, CSI when answering): up to 20
    /// digits, spaces and `+`.
    #[serde(default = "defaults::ident")]
    pub ident: String,
    /// Resolutions we offer and accept (standard is always included).
    #[serde(default = "defaults::resolutions")]
    pub resolutions: Vec<FaxResolution>,
    /// Codings we offer and accept (MH is always included).
    #[serde(default = "defaults::codings")]
    pub codings: Vec<FaxCoding>,
    /// Page widths in pels we accept (1728 is always included).
    #[serde(default = "defaults::widths")]
    pub widths: Vec<u32>,
    /// Offer error correction mode (T.4 Annex A). MMR needs it.
    #[serde(default = "defaults::yes")]
    pub ecm: bool,
    /// Answer incoming demands at all. `false` rejects every demand.
    #[serde(default = "defaults::yes")]
    pub answer: bool,
    /// A received page with more bad lines than this percentage is
    /// refused with RTN, and the sender sends it again.
    #[serde(default = "defaults::max_bad_percent")]
    pub max_bad_percent: u32,
    /// ... or with more consecutive bad lines than this.
    #[serde(default = "defaults::max_consecutive_bad")]
    pub max_consecutive_bad: u64,
    /// T.30 timers, for tests and slow links; defaults are T.30's.
    #[serde(default)]
    pub timers: TimerSection,
    /// Sessions sending at once.
    #[serde(default = "defaults::concurrent_sends")]
    pub concurrent_sends: usize,
    /// First retry delay of a job; doubles up to `retry_max`, with jitter.
    #[serde(default = "defaults::retry_initial", with = "humantime_serde")]
    pub retry_initial: Duration,
    /// Longest retry delay.
    #[serde(default = "defaults::retry_max", with = "humantime_serde")]
    pub retry_max: Duration,
    /// Attempts before a job fails for good.
    #[serde(default = "defaults::max_attempts")]
    pub max_attempts: u32,
}

impl Default for FaxSection {
    fn default() -> Self {
        FaxSection {
            ident: defaults::ident(),
            resolutions: defaults::resolutions(),
            codings: defaults::codings(),
            widths: defaults::widths(),
            ecm: true,
            answer: true,
            max_bad_percent: defaults::max_bad_percent(),
            max_consecutive_bad: defaults::max_consecutive_bad(),
            timers: TimerSection::default(),
            concurrent_sends: defaults::concurrent_sends(),
            retry_initial: defaults::retry_initial(),
            retry_max: defaults::retry_max(),
            max_attempts: defaults::max_attempts(),
        }
    }
}

/// T.30 timers. The defaults are the values T.30 gives.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimerSection {
    /// T1: how long to wait for the other station to identify itself.
    #[serde(default = "defaults::t1", with = "humantime_serde")]
    pub t1: Duration,
    /// T2: how long to wait for a command or page data.
    #[serde(default = "defaults::t2", with = "humantime_serde")]
    pub t2: Duration,
    /// T4: how long to wait for a response before repeating a command.
    #[serde(default = "defaults::t4", with = "humantime_serde")]
    pub t4: Duration,
    /// T5: how long an ECM receiver may stay not-ready.
    #[serde(default = "defaults::t5", with = "humantime_serde")]
    pub t5: Duration,
}

impl Default for TimerSection {
    fn default() -> Self {
        TimerSection {
            t1: defaults::t1(),
            t2: defaults::t2(),
            t4: defaults::t4(),
            t5: defaults::t5(),
        }
    }
}

/// What happens to a received document.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboxSection {
    /// Print each document as soon as it is complete. `false` holds it
    /// until `faxgate inbox release ID`.
    #[serde(default = "defaults::yes")]
    pub print: bool,
    /// Also keep a PDF of every document here (the archive).
    #[serde(default)]
    pub archive_dir: Option<PathBuf>,
    /// Documents held (unprinted) before new demands are rejected as
    /// "inbox full".
    #[serde(default = "defaults::max_held")]
    pub max_held: usize,
    /// How long a reception broken off mid-document (the sender's
    /// session failed, or a restart) waits for the sender to resume it.
    /// After that its pages print as a partial document; a later resume
    /// goes to a document of its own with the pages not yet here, so no
    /// page prints twice. A telephone call, or a caller without
    /// faxgate's job tag, cannot resume: its pages print at once.
    #[serde(default = "defaults::resume_window", with = "humantime_serde")]
    pub resume_window: Duration,
}

impl Default for InboxSection {
    fn default() -> Self {
        InboxSection {
            print: true,
            archive_dir: None,
            max_held: defaults::max_held(),
            resume_window: defaults::resume_window(),
        }
    }
}

/// The printer received documents go to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrinterSection {
    /// A printer URI as `faxgate print --printer` takes it: `ipp://...`,
    /// `cups:QUEUE`, `dir:/path?format=pdf|tiff`, `device:/dev/...`.
    pub uri: String,
    /// How long an IPP (or CUPS) job is watched in one go (1 s..=24 h).
    /// A job not finished by then stays at the printer and is followed
    /// again on the next pass (every `retry`), never sent twice.
    #[serde(default = "defaults::job_timeout", with = "humantime_serde")]
    pub job_timeout: Duration,
    /// Delay before a failed print is tried again (1 s..=1 h).
    #[serde(default = "defaults::print_retry", with = "humantime_serde")]
    pub retry: Duration,
}

/// Most pages `scanner.pages` may ask for in one scan.
pub const MAX_SCAN_PAGES: u32 = 1000;

/// The SANE scanner and how its pages become fax pages.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScannerSection {
    /// The SANE device name (`scanimage -L` lists them; `test` is SANE's
    /// test backend).
    pub device: String,
    /// Pages per scan for devices without a feeder (the test backend),
    /// 1..=[`MAX_SCAN_PAGES`].
    #[serde(default)]
    pub pages: Option<u32>,
    /// Scan resolution of the fax pages.
    #[serde(default = "defaults::scan_resolution")]
    pub resolution: FaxResolution,
    /// Paper size of the fax pages.
    #[serde(default = "defaults::paper")]
    pub paper: PaperName,
    /// `text` (adaptive threshold) or `photo` (dithering).
    #[serde(default = "defaults::mode")]
    pub mode: String,
}

/// A hot folder: every document (PDF, TIFF, PNG, JPEG, PNM) dropped
/// into `dir` is converted to fax pages and queued for the relay user
/// `to`, as `faxgate send` would. The file goes to `dir/done/` once the
/// job is queued, or to `dir/failed/` with `NAME.reason.txt` saying why.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HotFolderSection {
    /// The folder to watch; it must exist. Write a file under a temporary
    /// name (`.part`, `.tmp`, a leading dot) and rename it when complete,
    /// or just write it: a file is taken once unchanged for `settle`.
    pub dir: PathBuf,
    /// The relay user each document is faxed to.
    pub to: String,
    /// Resolution of the fax pages.
    #[serde(default = "defaults::scan_resolution")]
    pub resolution: FaxResolution,
    /// Paper size of the fax pages.
    #[serde(default = "defaults::paper")]
    pub paper: PaperName,
    /// `text` (adaptive threshold) or `photo` (dithering).
    #[serde(default = "defaults::mode")]
    pub mode: String,
    /// How long a file's size and time must stay unchanged before it is
    /// taken.
    #[serde(default = "defaults::hot_folder_settle", with = "humantime_serde")]
    pub settle: Duration,
}

/// A Class 1 fax modem (ITU-T T.31) on a serial line: a real modem on
/// `/dev/ttyS0` or a USB adapter, or a software modem's pty (iaxmodem).
/// It answers fax calls, and each fax received goes to the inbox (from
/// the user `pstn`) and is printed like one received over the relay; and
/// it places the outbox's jobs to telephone numbers (`faxgate send --to
/// tel:NUMBER`), one call at a time between incoming ones. The engine
/// runs with `[fax]`'s identity, capabilities, timers and retries, in
/// training mode (TCF) and without ECM (not built for Class 1).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModemSection {
    /// The modem's serial device, e.g. `/dev/ttyS0` or `/dev/ttyIAX0`.
    pub device: String,
    /// Extra AT commands (without `AT`) sent before `+FCLASS=1`, for a
    /// modem that needs them (e.g. `["&F", "S7=60"]`).
    #[serde(default)]
    pub init: Vec<String>,
    /// Answer fax calls on the line. `false`: calls are not answered; the
    /// modem still places the outbox's calls to telephone numbers.
    #[serde(default = "defaults::yes")]
    pub answer: bool,
}

/// The front-panel API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PanelSection {
    /// Loopback address of the HTTP+JSON API. It has no authentication,
    /// so it must stay on a loopback address.
    #[serde(default = "defaults::panel_listen")]
    pub listen: SocketAddr,
}

impl Default for PanelSection {
    fn default() -> Self {
        PanelSection {
            listen: defaults::panel_listen(),
        }
    }
}

/// The print agent (seed 000): the PWG 5100.18 *Proxy* that connects out
/// to a server site at the relay's IPP front, registers the `[printer]`
/// as its output device, fetches the site's jobs and prints them there,
/// byte for byte. `ipp/INFRA.md` is the protocol.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    /// The site URI at the relay, e.g.
    /// `ipps://relay.example.net:8632/ipp/print/osaka-printer`.
    pub site: String,
    /// The relay user the site names as its agent (HTTP Basic).
    pub user: String,
    /// That user's password.
    pub password: Secret<String>,
    /// How the relay's certificate is checked (`pin_sha256` or
    /// `ca_file`); required for `ipps://` and `https://`.
    #[serde(default)]
    pub tls: Option<ClientTlsConfig>,
    /// Allow a plain `ipp://` site on a host that is not loopback (the
    /// password then crosses the network in clear; the front must also
    /// allow plain agents).
    #[serde(default)]
    pub allow_plain: bool,
    /// When to be attached: `always`, or `on-mail` (on a signed wake-up
    /// command mail, until `idle_detach` passes without jobs).
    #[serde(default)]
    pub attach: AttachMode,
    /// `auto` (what the front's description offers, long poll first),
    /// `long-poll` or `poll`.
    #[serde(default)]
    pub transport: AgentTransport,
    /// How often to ask for jobs when polling (raised to the front's
    /// minimum), and how often the state of a job being printed is
    /// checked at the front.
    #[serde(default = "defaults::agent_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How often the real printer's state is read; a change is passed on
    /// to the site at once.
    #[serde(default = "defaults::agent_status_interval", with = "humantime_serde")]
    pub status_interval: Duration,
    /// With `attach = "on-mail"`: detach after this long without jobs.
    #[serde(default = "defaults::agent_idle_detach", with = "humantime_serde")]
    pub idle_detach: Duration,
    /// How often a job printing on the real printer is looked at.
    #[serde(default = "defaults::agent_job_poll", with = "humantime_serde")]
    pub job_poll_interval: Duration,
    /// First delay before attaching again after a failure; doubles up to
    /// `reconnect_max`, with jitter.
    #[serde(
        default = "defaults::agent_reconnect_initial",
        with = "humantime_serde"
    )]
    pub reconnect_initial: Duration,
    /// Longest delay between attempts.
    #[serde(default = "defaults::agent_reconnect_max", with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// Deadline for a TCP connection plus the TLS handshake.
    #[serde(default = "defaults::agent_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Deadline for one request (a long poll gets the front's wait on
    /// top).
    #[serde(default = "defaults::agent_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// On shutdown, how long a document already sent to the printer may
    /// take to finish before the job is handed back unfinished.
    #[serde(default = "defaults::agent_shutdown_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// The mailbox wake-up commands arrive in; required with
    /// `attach = "on-mail"`.
    #[serde(default)]
    pub mail: Option<AgentMailSection>,
}

/// When the agent is attached to its site.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttachMode {
    /// Attach at start and stay attached (the seed's constant connection).
    #[default]
    Always,
    /// Attach when a signed wake-up mail arrives; detach when idle.
    OnMail,
}

/// How the agent learns about new jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentTransport {
    /// What the front's description offers, long poll first.
    #[default]
    Auto,
    /// Get-Notifications with notify-wait (the seed's blocking system).
    LongPoll,
    /// Get-Jobs every `poll_interval` (the seed's non-blocking system).
    Poll,
}

/// How the IMAP connection of the agent's mailbox is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MailTls {
    /// TLS from the first byte (port 993).
    #[default]
    Implicit,
    /// STARTTLS before login (port 143).
    Starttls,
    /// No TLS: only to a loopback host.
    None,
}

/// The signature scheme of command mails (`mail/COMMAND-MAIL.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MailScheme {
    /// HMAC-SHA256; `key` is the shared secret in hex (16 bytes or more).
    #[default]
    HmacSha256,
    /// Ed25519; `key` is the relay's public key in hex (32 bytes).
    Ed25519,
}

/// The agent's mailbox for wake-up and cancel command mails.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentMailSection {
    /// IMAP server host.
    pub host: String,
    /// IMAP port; 993 for `implicit`, else 143.
    #[serde(default)]
    pub port: Option<u16>,
    /// `implicit`, `starttls` or `none` (loopback only).
    #[serde(default)]
    pub tls: MailTls,
    /// SHA-256 of the IMAP server's certificate (hex, colons allowed);
    /// else `ca_file`, else the system roots.
    #[serde(default)]
    pub pin_sha256: Option<String>,
    /// PEM file of CA certificates for the IMAP server.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// IMAP login.
    pub user: String,
    /// IMAP password.
    pub password: Secret<String>,
    /// The mailbox commands arrive in.
    #[serde(default = "defaults::mailbox")]
    pub mailbox: String,
    /// Where handled commands are moved.
    #[serde(default = "defaults::processed_folder")]
    pub processed_folder: String,
    /// Where refused mails are moved.
    #[serde(default = "defaults::quarantine_folder")]
    pub quarantine_folder: String,
    /// The printer name command mails carry; default: the site name (the
    /// last segment of `site`, `%25` read as `%`).
    #[serde(default)]
    pub printer: Option<String>,
    /// `hmac-sha256` or `ed25519`, as the relay signs.
    #[serde(default)]
    pub scheme: MailScheme,
    /// The verifying key in hex: the shared secret, or the relay's
    /// Ed25519 public key.
    pub key: Secret<String>,
    /// Use IMAP IDLE where the server has it; else poll.
    #[serde(default = "defaults::yes")]
    pub use_idle: bool,
    /// How often to look for mail without IDLE.
    #[serde(default = "defaults::mail_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
}

/// A site URI taken apart: what the agent and its config checks need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteUri {
    /// `ipps`/`https` (true) or `ipp`/`http`.
    pub secure: bool,
    /// The host, without brackets.
    pub host: String,
    /// The site name: the path segment after `/ipp/print/`, `%25` read
    /// as `%`.
    pub name: String,
}

impl SiteUri {
    /// Parses `scheme://host[:port]/ipp/print/NAME`.
    pub fn parse(uri: &str) -> Result<SiteUri, String> {
        let (scheme, rest) = uri
            .split_once("://")
            .ok_or("not a scheme://host/path URI")?;
        let secure = match scheme.to_ascii_lowercase().as_str() {
            "ipps" | "https" => true,
            "ipp" | "http" => false,
            _ => return Err("the scheme must be ipps, https, ipp or http".into()),
        };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let host = if let Some(v6) = authority.strip_prefix('[') {
            v6.split(']').next().unwrap_or("")
        } else {
            authority.split(':').next().unwrap_or("")
        };
        if host.is_empty() {
            return Err("no host".into());
        }
        let name = path
            .strip_prefix("/ipp/print/")
            .map(|n| n.trim_end_matches('/'))
            .filter(|n| !n.is_empty() && !n.contains('/'))
            .ok_or("the path must be /ipp/print/NAME")?;
        Ok(SiteUri {
            secure,
            host: host.to_owned(),
            name: name.replace("%25", "%"),
        })
    }
}

/// Decodes hex (colons allowed between bytes).
pub fn decode_hex(s: &str) -> Option<Vec<u8>> {
    let digits: Vec<u8> = s.bytes().filter(|b| *b != b':').collect();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    digits
        .chunks(2)
        .map(|pair| {
            let hi = char::from(pair[0]).to_digit(16)?;
            let lo = char::from(pair[1]).to_digit(16)?;
            u8::try_from(hi * 16 + lo).ok()
        })
        .collect()
}

fn check_pin(field: &'static str, pin: &str) -> Result<(), ConfigError> {
    match decode_hex(pin) {
        Some(bytes) if bytes.len() == 32 => Ok(()),
        _ => Err(invalid(field, "must be 64 hex digits (colons allowed)")),
    }
}

impl AgentSection {
    /// Checks ranges and combinations that serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let site = SiteUri::parse(&self.site)
            .map_err(|reason| invalid("agent.site", format!("`{}`: {reason}", self.site)))?;
        if self.user.is_empty() || self.user.len() > 64 || self.user.contains(':') {
            return Err(invalid("agent.user", "must be 1..=64 bytes without `:`"));
        }
        if self.password.expose().is_empty() {
            return Err(invalid("agent.password", "must not be empty"));
        }
        match (&self.tls, site.secure) {
            (Some(tls), true) => {
                if let Some(pin) = &tls.pin_sha256 {
                    check_pin("agent.tls.pin_sha256", pin)?;
                } else if tls.ca_file.is_none() {
                    return Err(invalid(
                        "agent.tls",
                        "set `pin_sha256` (the relay prints it) or `ca_file`",
                    ));
                }
                if let Some(ca) = &tls.ca_file {
                    check_path("agent.tls.ca_file", ca)?;
                }
                if tls.server_name.as_ref().is_some_and(|n| n.is_empty()) {
                    return Err(invalid(
                        "agent.tls.server_name",
                        "must not be empty (leave it out to use the host of `site`)",
                    ));
                }
            }
            (None, true) => {
                return Err(invalid(
                    "agent.tls",
                    "an ipps:// or https:// site needs [agent.tls] with `pin_sha256` or `ca_file`",
                ));
            }
            (Some(_), false) => {
                return Err(invalid(
                    "agent.tls",
                    "the site is plain ipp:// or http://; use ipps:// to use TLS",
                ));
            }
            (None, false) => {
                if !self.allow_plain && !is_loopback_host(&site.host) {
                    return Err(invalid(
                        "agent.site",
                        format!(
                            "plain ipp:// to `{}` would send the password in clear; use ipps:// \
                             (or set allow_plain = true on a trusted network)",
                            site.host
                        ),
                    ));
                }
            }
        }
        for (field, d) in [
            ("agent.poll_interval", self.poll_interval),
            ("agent.status_interval", self.status_interval),
            ("agent.idle_detach", self.idle_detach),
            ("agent.job_poll_interval", self.job_poll_interval),
            ("agent.connect_timeout", self.connect_timeout),
            ("agent.request_timeout", self.request_timeout),
        ] {
            if d.is_zero() {
                return Err(invalid(field, "must be longer than zero"));
            }
        }
        if self.reconnect_initial.is_zero() || self.reconnect_max < self.reconnect_initial {
            return Err(invalid(
                "agent.reconnect_initial",
                "need 0 < reconnect_initial <= reconnect_max",
            ));
        }
        match (self.attach, &self.mail) {
            (AttachMode::OnMail, None) => {
                return Err(invalid(
                    "agent.mail",
                    "attach = \"on-mail\" needs an [agent.mail] section",
                ));
            }
            (AttachMode::Always, Some(_)) => {
                return Err(invalid(
                    "agent.mail",
                    "[agent.mail] is only used with attach = \"on-mail\"",
                ));
            }
            (_, Some(m)) => m.validate()?,
            (_, None) => {}
        }
        Ok(())
    }

    /// The site name command mails must carry.
    pub fn printer_name(&self) -> String {
        self.mail
            .as_ref()
            .and_then(|m| m.printer.clone())
            .or_else(|| SiteUri::parse(&self.site).ok().map(|s| s.name))
            .unwrap_or_default()
    }
}

impl AgentMailSection {
    /// The IMAP port: configured, or the scheme's usual one.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.tls {
            MailTls::Implicit => 993,
            MailTls::Starttls | MailTls::None => 143,
        })
    }

    /// Checks ranges and combinations that serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.host.is_empty() {
            return Err(invalid("agent.mail.host", "must not be empty"));
        }
        if self.tls == MailTls::None && !is_loopback_host(&self.host) {
            return Err(invalid(
                "agent.mail.tls",
                format!(
                    "plain IMAP (tls = \"none\") is only allowed to a loopback host, not `{}`",
                    self.host
                ),
            ));
        }
        if self.port == Some(0) {
            return Err(invalid("agent.mail.port", "must be 1..=65535"));
        }
        if let Some(ca) = &self.ca_file {
            check_path("agent.mail.ca_file", ca)?;
        }
        if let Some(pin) = &self.pin_sha256 {
            check_pin("agent.mail.pin_sha256", pin)?;
            if self.ca_file.is_some() {
                return Err(invalid(
                    "agent.mail.ca_file",
                    "set `pin_sha256` or `ca_file`, not both",
                ));
            }
        }
        if self.user.is_empty() {
            return Err(invalid("agent.mail.user", "must not be empty"));
        }
        let folders = [
            &self.mailbox,
            &self.processed_folder,
            &self.quarantine_folder,
        ];
        if folders.iter().any(|f| f.is_empty())
            || folders[0] == folders[1]
            || folders[0] == folders[2]
            || folders[1] == folders[2]
        {
            return Err(invalid(
                "agent.mail.processed_folder",
                "mailbox, processed_folder and quarantine_folder must be set and differ",
            ));
        }
        if self.printer.as_ref().is_some_and(|p| p.is_empty()) {
            return Err(invalid("agent.mail.printer", "must not be empty"));
        }
        let key = decode_hex(self.key.expose());
        match (self.scheme, key) {
            (_, None) => return Err(invalid("agent.mail.key", "must be hex")),
            (MailScheme::HmacSha256, Some(k)) if k.len() < 16 => {
                return Err(invalid(
                    "agent.mail.key",
                    "an hmac-sha256 secret needs at least 16 bytes (32 hex digits)",
                ));
            }
            (MailScheme::Ed25519, Some(k)) if k.len() != 32 => {
                return Err(invalid(
                    "agent.mail.key",
                    "an ed25519 public key is 32 bytes (64 hex digits)",
                ));
            }
            _ => {}
        }
        if self.poll_interval.is_zero() {
            return Err(invalid(
                "agent.mail.poll_interval",
                "must be longer than zero",
            ));
        }
        Ok(())
    }
}

impl std::str::FromStr for ApplianceConfig {
    type Err = ConfigError;

    /// Parses and validates without touching the filesystem.
    fn from_str(text: &str) -> Result<Self, ConfigError> {
        crate::load_str(text)
    }
}

impl crate::Validate for ApplianceConfig {
    fn check(&self) -> Result<(), ConfigError> {
        self.validate()
    }
}

impl ApplianceConfig {
    /// Reads, parses and validates a file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        crate::load_file(path)
    }

    /// Checks ranges and combinations that serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_path("state_dir", &self.state_dir)?;
        self.relay.validate_in("relay.")?;
        let f = &self.fax;
        if f.ident.chars().count() > 20
            || !f
                .ident
                .chars()
                .all(|c| c.is_ascii_digit() || c == ' ' || c == '+')
        {
            return Err(invalid(
                "fax.ident",
                format!(
                    "`{}` is not a T.30 identity: up to 20 digits, spaces and `+`",
                    f.ident
                ),
            ));
        }
        for w in &f.widths {
            if ![1728, 2048, 2432].contains(w) {
                return Err(invalid(
                    "fax.widths",
                    format!("{w} is no fax width (1728, 2048 or 2432)"),
                ));
            }
        }
        if f.codings.contains(&FaxCoding::Mmr) && !f.ecm {
            return Err(invalid(
                "fax.codings",
                "mmr needs ecm = true (T.30 sends T.6 only in error correction mode)",
            ));
        }
        if f.max_bad_percent > 100 {
            return Err(invalid("fax.max_bad_percent", "must be 0..=100"));
        }
        if f.concurrent_sends == 0 {
            return Err(invalid("fax.concurrent_sends", "must be at least 1"));
        }
        if f.retry_initial.is_zero() || f.retry_max < f.retry_initial {
            return Err(invalid(
                "fax.retry_initial",
                "need 0 < retry_initial <= retry_max",
            ));
        }
        if f.max_attempts == 0 {
            return Err(invalid("fax.max_attempts", "must be at least 1"));
        }
        let t = &f.timers;
        for (field, d) in [
            ("fax.timers.t1", t.t1),
            ("fax.timers.t2", t.t2),
            ("fax.timers.t4", t.t4),
            ("fax.timers.t5", t.t5),
        ] {
            if d.is_zero() {
                return Err(invalid(field, "timers must be longer than zero"));
            }
        }
        if self.inbox.max_held == 0 {
            // Zero held documents is an inbox that is always full.
            return Err(invalid(
                "inbox.max_held",
                "must be at least 1 (to refuse every fax, set fax.answer = false)",
            ));
        }
        if let Some(dir) = &self.inbox.archive_dir {
            check_path("inbox.archive_dir", dir)?;
        }
        if !self.panel.listen.ip().is_loopback() {
            return Err(invalid(
                "panel.listen",
                format!(
                    "{} is not a loopback address; the panel API has no authentication",
                    self.panel.listen
                ),
            ));
        }
        if let Some(s) = &self.scanner {
            if s.device.is_empty() {
                return Err(invalid("scanner.device", "must not be empty"));
            }
            check_mode("scanner.mode", &s.mode)?;
            if s.device.chars().any(char::is_control) {
                return Err(invalid(
                    "scanner.device",
                    "must not contain control characters",
                ));
            }
            // A flatbed never runs out of pages: the count is the bound.
            if let Some(n) = s.pages
                && !(1..=MAX_SCAN_PAGES).contains(&n)
            {
                return Err(invalid(
                    "scanner.pages",
                    format!("{n} is outside 1..={MAX_SCAN_PAGES}"),
                ));
            }
        }
        for (i, h) in self.hot_folders.iter().enumerate() {
            let field = |name: &str| format!("hot_folder[{i}].{name}");
            check_path(&field("dir"), &h.dir)?;
            if h.to.is_empty() || h.to.len() > 64 || h.to.chars().any(char::is_control) {
                return Err(invalid(
                    field("to"),
                    format!(
                        "`{}` is not a relay user ID (1..=64 bytes, no control characters)",
                        h.to.escape_debug()
                    ),
                ));
            }
            check_mode(&field("mode"), &h.mode)?;
            check_duration(
                &field("settle"),
                h.settle,
                Duration::from_millis(100),
                Duration::from_secs(3600),
            )?;
            if let Some(j) = self.hot_folders[..i].iter().position(|o| o.dir == h.dir) {
                return Err(invalid(
                    field("dir"),
                    format!(
                        "{} is also hot_folder[{j}].dir; one folder can feed one hot folder",
                        h.dir.display()
                    ),
                ));
            }
        }
        if let Some(p) = &self.printer {
            if p.uri.is_empty() {
                return Err(invalid("printer.uri", "must not be empty"));
            }
            // Zero would time a job out at its first look (and print it
            // again on each retry); zero retry spins on the print queue.
            check_duration(
                "printer.job_timeout",
                p.job_timeout,
                Duration::from_secs(1),
                Duration::from_secs(24 * 3600),
            )?;
            check_duration(
                "printer.retry",
                p.retry,
                Duration::from_secs(1),
                Duration::from_secs(3600),
            )?;
        }
        if let Some(m) = &self.modem {
            if m.device.is_empty() {
                return Err(invalid("modem.device", "must not be empty"));
            }
            if m.device.chars().any(char::is_control) {
                return Err(invalid(
                    "modem.device",
                    "must not contain control characters",
                ));
            }
            for (i, cmd) in m.init.iter().enumerate() {
                // One command per entry, sent as `AT<cmd>\r`: a line
                // break would smuggle in a second command.
                if cmd.is_empty() || cmd.chars().any(char::is_control) {
                    return Err(invalid(
                        format!("modem.init[{i}]"),
                        "must be one AT command without `AT`, not empty, no control characters",
                    ));
                }
            }
        }
        if let Some(agent) = &self.agent {
            agent.validate()?;
            let takes_ipp = self.printer.as_ref().is_some_and(|p| {
                let uri = p.uri.to_ascii_lowercase();
                uri.starts_with("ipp://") || uri.starts_with("http://")
            });
            if !takes_ipp {
                return Err(invalid(
                    "agent",
                    "the print agent passes jobs to [printer], which must be an ipp:// printer",
                ));
            }
        }
        Ok(())
    }
}

/// A page conversion mode: `text` or `photo`.
fn check_mode(field: &str, mode: &str) -> Result<(), ConfigError> {
    if ["text", "photo"].contains(&mode) {
        Ok(())
    } else {
        Err(invalid(field, format!("`{mode}`: use text or photo")))
    }
}

mod defaults {
    use super::{FaxCoding, FaxResolution, PaperName};
    use std::net::SocketAddr;
    use std::time::Duration;

    pub fn ident() -> String {
        String::new()
    }
    pub fn resolutions() -> Vec<FaxResolution> {
        vec![
            FaxResolution::Standard,
            FaxResolution::Fine,
            FaxResolution::Superfine,
            FaxResolution::R300,
            FaxResolution::R400,
        ]
    }
    pub fn codings() -> Vec<FaxCoding> {
        vec![FaxCoding::Mh, FaxCoding::Mr, FaxCoding::Mmr]
    }
    pub fn widths() -> Vec<u32> {
        vec![1728, 2048, 2432]
    }
    pub fn yes() -> bool {
        true
    }
    pub fn max_bad_percent() -> u32 {
        10
    }
    pub fn max_consecutive_bad() -> u64 {
        16
    }
    pub fn concurrent_sends() -> usize {
        2
    }
    pub fn retry_initial() -> Duration {
        Duration::from_secs(5)
    }
    pub fn retry_max() -> Duration {
        Duration::from_secs(300)
    }
    pub fn max_attempts() -> u32 {
        20
    }
    pub fn t1() -> Duration {
        Duration::from_secs(35)
    }
    pub fn t2() -> Duration {
        Duration::from_secs(6)
    }
    pub fn t4() -> Duration {
        Duration::from_secs(3)
    }
    pub fn t5() -> Duration {
        Duration::from_secs(60)
    }
    pub fn max_held() -> usize {
        100
    }
    /// Longer than a sender's retries take with the default `[outbox]`
    /// backoff (5 s doubling to 5 min, 20 attempts: about 75 minutes).
    pub fn resume_window() -> Duration {
        Duration::from_secs(2 * 3600)
    }
    pub fn job_timeout() -> Duration {
        Duration::from_secs(300)
    }
    pub fn print_retry() -> Duration {
        Duration::from_secs(30)
    }
    pub fn scan_resolution() -> FaxResolution {
        FaxResolution::Fine
    }
    pub fn paper() -> PaperName {
        PaperName::A4
    }
    pub fn mode() -> String {
        "text".into()
    }
    pub fn hot_folder_settle() -> Duration {
        Duration::from_secs(2)
    }
    pub fn panel_listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 4680))
    }
    pub fn agent_poll_interval() -> Duration {
        Duration::from_secs(5)
    }
    pub fn agent_status_interval() -> Duration {
        Duration::from_secs(10)
    }
    pub fn agent_idle_detach() -> Duration {
        Duration::from_secs(300)
    }
    pub fn agent_job_poll() -> Duration {
        Duration::from_secs(1)
    }
    pub fn agent_reconnect_initial() -> Duration {
        Duration::from_secs(1)
    }
    pub fn agent_reconnect_max() -> Duration {
        Duration::from_secs(300)
    }
    pub fn agent_connect_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn agent_request_timeout() -> Duration {
        Duration::from_secs(60)
    }
    pub fn agent_shutdown_grace() -> Duration {
        Duration::from_secs(10)
    }
    pub fn mailbox() -> String {
        "INBOX".into()
    }
    pub fn processed_folder() -> String {
        "faxgate-processed".into()
    }
    pub fn quarantine_folder() -> String {
        "faxgate-quarantine".into()
    }
    pub fn mail_poll_interval() -> Duration {
        Duration::from_secs(60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr as _;

    const BASE: &str = "state_dir = \"/tmp/x\"\n[relay]\nserver = \"127.0.0.1:1\"\nuser = \"a\"\npassword = \"p\"\n";

    #[test]
    fn minimal_config_takes_the_defaults() {
        let c = ApplianceConfig::from_str(BASE).unwrap();
        assert!(c.fax.ecm && c.fax.answer && c.inbox.print);
        assert_eq!(c.fax.timers.t1, Duration::from_secs(35));
        assert_eq!(c.panel.listen.port(), 4680);
        assert!(c.printer.is_none() && c.scanner.is_none() && c.modem.is_none());
    }

    #[test]
    fn modem_takes_defaults_and_checks_its_values() {
        let c = ApplianceConfig::from_str(&format!("{BASE}[modem]\ndevice = \"/dev/ttyS0\"\n"))
            .unwrap();
        let m = c.modem.unwrap();
        assert_eq!(m.device, "/dev/ttyS0");
        assert!(m.answer && m.init.is_empty());
        let c = ApplianceConfig::from_str(&format!(
            "{BASE}[modem]\ndevice = \"/dev/ttyIAX0\"\ninit = [\"&F\", \"S7=60\"]\nanswer = false\n"
        ))
        .unwrap();
        let m = c.modem.unwrap();
        assert_eq!(m.init, ["&F", "S7=60"]);
        assert!(!m.answer);
        for (section, field) in [
            ("device = \"\"\n", "`modem.device`"),
            ("device = \"/dev/tty\\nS0\"\n", "`modem.device`"),
            (
                "device = \"/dev/ttyS0\"\ninit = [\"\"]\n",
                "`modem.init[0]`",
            ),
            (
                "device = \"/dev/ttyS0\"\ninit = [\"&F\", \"Z\\rD123\"]\n",
                "`modem.init[1]`",
            ),
            ("device = \"/dev/ttyS0\"\nspeed = 9600\n", "speed"),
            ("init = []\n", "device"),
        ] {
            let err = ApplianceConfig::from_str(&format!("{BASE}[modem]\n{section}")).unwrap_err();
            assert!(err.to_string().contains(field), "{section}: {err}");
        }
    }

    #[test]
    fn hot_folders_take_defaults_and_their_values_are_checked() {
        let c = ApplianceConfig::from_str(&format!(
            "{BASE}[[hot_folder]]\ndir = \"/srv/a\"\nto = \"osaka\"\n\
             [[hot_folder]]\ndir = \"/srv/b\"\nto = \"kobe\"\nresolution = \"standard\"\nmode = \"photo\"\nsettle = \"500ms\"\n"
        ))
        .unwrap();
        assert_eq!(c.hot_folders.len(), 2);
        let (a, b) = (&c.hot_folders[0], &c.hot_folders[1]);
        assert_eq!(
            (a.to.as_str(), a.resolution, a.paper, a.mode.as_str()),
            ("osaka", FaxResolution::Fine, PaperName::A4, "text")
        );
        assert_eq!(a.settle, Duration::from_secs(2));
        assert_eq!(
            (b.resolution, b.mode.as_str(), b.settle),
            (FaxResolution::Standard, "photo", Duration::from_millis(500))
        );
        let hot =
            |body: &str| format!("{BASE}[[hot_folder]]\ndir = \"/srv/a\"\nto = \"osaka\"\n{body}");
        for (text, field) in [
            (
                format!("{BASE}[[hot_folder]]\ndir = \"\"\nto = \"osaka\"\n"),
                "`hot_folder[0].dir`",
            ),
            (
                format!("{BASE}[[hot_folder]]\ndir = \"/a\"\nto = \"\"\n"),
                "`hot_folder[0].to`",
            ),
            (
                format!(
                    "{BASE}[[hot_folder]]\ndir = \"/a\"\nto = \"{}\"\n",
                    "u".repeat(65)
                ),
                "`hot_folder[0].to`",
            ),
            (hot("mode = \"sepia\"\n"), "`hot_folder[0].mode`"),
            (hot("settle = \"0s\"\n"), "`hot_folder[0].settle`"),
            (
                hot(
                    "[[hot_folder]]\ndir = \"/srv/b\"\nto = \"x\"\n[[hot_folder]]\ndir = \"/srv/a\"\nto = \"y\"\n",
                ),
                "`hot_folder[2].dir`",
            ),
            (hot("colour = true\n"), "colour"),
        ] {
            let err = ApplianceConfig::from_str(&text).unwrap_err();
            assert!(err.to_string().contains(field), "{text}: {err}");
        }
        assert!(
            ApplianceConfig::from_str(BASE)
                .unwrap()
                .hot_folders
                .is_empty()
        );
    }

    #[test]
    fn bad_values_name_their_field() {
        for (extra, field) in [
            ("[fax]\nident = \"abc\"\n", "fax.ident"),
            ("[fax]\nwidths = [1000]\n", "fax.widths"),
            ("[fax]\necm = false\n", "fax.codings"),
            ("[fax]\nmax_bad_percent = 101\n", "fax.max_bad_percent"),
            ("[fax.timers]\nt4 = \"0s\"\n", "fax.timers"),
            ("[panel]\nlisten = \"0.0.0.0:4680\"\n", "panel.listen"),
            (
                "[scanner]\ndevice = \"test\"\nmode = \"sepia\"\n",
                "scanner.mode",
            ),
        ] {
            let err = ApplianceConfig::from_str(&format!("{BASE}{extra}")).unwrap_err();
            assert!(err.to_string().contains(field), "{extra}: {err}");
        }
        let err = ApplianceConfig::from_str(&format!("{BASE}[fax]\ncolour = true\n")).unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
    }

    #[test]
    fn printer_durations_are_bounded() {
        for (extra, field) in [
            ("job_timeout = \"0s\"\n", "`printer.job_timeout`"),
            ("job_timeout = \"500ms\"\n", "`printer.job_timeout`"),
            ("job_timeout = \"2days\"\n", "`printer.job_timeout`"),
            ("retry = \"0s\"\n", "`printer.retry`"),
            ("retry = \"2h\"\n", "`printer.retry`"),
        ] {
            let err = ApplianceConfig::from_str(&format!("{BASE}{PRINTER}{extra}")).unwrap_err();
            assert!(err.to_string().contains(field), "{extra}: {err}");
        }
        let c = ApplianceConfig::from_str(&format!(
            "{BASE}{PRINTER}job_timeout = \"1s\"\nretry = \"1h\"\n"
        ))
        .unwrap();
        let p = c.printer.unwrap();
        assert_eq!(
            (p.job_timeout, p.retry),
            (Duration::from_secs(1), Duration::from_secs(3600))
        );
    }

    #[test]
    fn scanner_values_are_checked() {
        for (section, field) in [
            ("device = \"test\"\npages = 0\n", "`scanner.pages`"),
            ("device = \"test\"\npages = 1001\n", "`scanner.pages`"),
            ("device = \"te\\nst\"\n", "`scanner.device`"),
            ("device = \"\"\n", "`scanner.device`"),
        ] {
            let err =
                ApplianceConfig::from_str(&format!("{BASE}[scanner]\n{section}")).unwrap_err();
            assert!(err.to_string().contains(field), "{section}: {err}");
        }
        let c = ApplianceConfig::from_str(&format!(
            "{BASE}[scanner]\ndevice = \"airscan:e0:Canon TS5300 series\"\npages = 1000\n"
        ))
        .unwrap();
        assert_eq!(c.scanner.unwrap().pages, Some(MAX_SCAN_PAGES));
    }

    #[test]
    fn relay_errors_name_the_relay_table() {
        let relay = |fields: &str| {
            ApplianceConfig::from_str(&format!("state_dir = \"/tmp/x\"\n[relay]\n{fields}"))
                .unwrap_err()
                .to_string()
        };
        let err = relay("server = \"relay.example.net\"\nuser = \"a\"\npassword = \"p\"\n");
        assert!(err.contains("`relay.server`"), "{err}");
        let err = relay("server = \"relay.example.net:0\"\nuser = \"a\"\npassword = \"p\"\n");
        assert!(err.contains("`relay.server`"), "{err}");
        let err = relay("server = \"r:1\"\nuser = \"\"\npassword = \"p\"\n");
        assert!(err.contains("`relay.user`"), "{err}");
        let err = relay(
            "server = \"r:1\"\nuser = \"a\"\npassword = \"p\"\n[relay.tls]\npin_sha256 = \"zz\"\n",
        );
        assert!(err.contains("`relay.tls.pin_sha256`"), "{err}");
        let err =
            relay("server = \"r:1\"\nuser = \"a\"\npassword = \"p\"\nconnect_timeout = \"0s\"\n");
        assert!(err.contains("`relay.connect_timeout`"), "{err}");
    }

    #[test]
    fn empty_paths_and_a_zero_inbox_are_refused() {
        let err = ApplianceConfig::from_str(&BASE.replace("/tmp/x", "")).unwrap_err();
        assert!(err.to_string().contains("`state_dir`"), "{err}");
        for (extra, field) in [
            ("[inbox]\nmax_held = 0\n", "`inbox.max_held`"),
            ("[inbox]\narchive_dir = \"\"\n", "`inbox.archive_dir`"),
        ] {
            let err = ApplianceConfig::from_str(&format!("{BASE}{extra}")).unwrap_err();
            assert!(err.to_string().contains(field), "{extra}: {err}");
        }
        let err = agent(&format!(
            "site = \"ipps://relay.example.net/ipp/print/x\"\n[agent.tls]\npin_sha256 = \"{PIN}\"\nserver_name = \"\"\n"
        ))
        .unwrap_err();
        assert!(err.to_string().contains("`agent.tls.server_name`"), "{err}");
    }

    const PRINTER: &str = "[printer]\nuri = \"ipp://127.0.0.1:8631/ipp/print/local\"\n";
    const PIN: &str = "5f3a9c00112233445566778899aabbccddeeff00112233445566778899aabbcc";

    fn agent(extra: &str) -> Result<ApplianceConfig, ConfigError> {
        ApplianceConfig::from_str(&format!(
            "{BASE}{PRINTER}[agent]\nuser = \"osaka\"\npassword = \"pw\"\n{extra}"
        ))
    }

    #[test]
    fn agent_defaults_and_a_tls_site() {
        let c = agent(&format!(
            "site = \"ipps://relay.example.net:8632/ipp/print/expp1%25abc.com\"\n[agent.tls]\npin_sha256 = \"{PIN}\"\n"
        ))
        .unwrap();
        let a = c.agent.unwrap();
        assert_eq!(a.attach, AttachMode::Always);
        assert_eq!(a.transport, AgentTransport::Auto);
        assert_eq!(a.poll_interval, Duration::from_secs(5));
        assert_eq!(a.printer_name(), "expp1%abc.com");
        assert!(format!("{a:?}").contains("MASKED") && !format!("{a:?}").contains("\"pw\""));
    }

    #[test]
    fn agent_on_mail_needs_a_mailbox_and_a_good_key() {
        let site = "site = \"ipp://127.0.0.1:8631/ipp/print/osaka\"\n";
        let mail = "[agent.mail]\nhost = \"127.0.0.1\"\ntls = \"none\"\nuser = \"osaka\"\npassword = \"m\"\n";
        let c = agent(&format!(
            "{site}attach = \"on-mail\"\ntransport = \"poll\"\n{mail}key = \"00112233445566778899aabbccddeeff\"\n"
        ))
        .unwrap();
        let a = c.agent.unwrap();
        let m = a.mail.as_ref().unwrap();
        assert_eq!((m.port(), m.scheme), (143, MailScheme::HmacSha256));
        assert_eq!(a.printer_name(), "osaka");
        for (extra, field) in [
            (format!("{site}attach = \"on-mail\"\n"), "agent.mail"),
            (
                format!("{site}{mail}key = \"00112233445566778899aabbccddeeff\"\n"),
                "agent.mail",
            ),
            (
                format!("{site}attach = \"on-mail\"\n{mail}key = \"0011\"\n"),
                "agent.mail.key",
            ),
            (
                format!("{site}attach = \"on-mail\"\n{mail}key = \"zz\"\n"),
                "agent.mail.key",
            ),
            (
                format!(
                    "{site}attach = \"on-mail\"\n{mail}scheme = \"ed25519\"\nkey = \"00112233445566778899aabbccddeeff\"\n"
                ),
                "agent.mail.key",
            ),
            (
                format!(
                    "{site}attach = \"on-mail\"\n[agent.mail]\nhost = \"mail.example.net\"\ntls = \"none\"\nuser = \"u\"\npassword = \"p\"\nkey = \"00112233445566778899aabbccddeeff\"\n"
                ),
                "agent.mail.tls",
            ),
        ] {
            let err = agent(&extra).unwrap_err();
            assert!(err.to_string().contains(field), "{extra}: {err}");
        }
    }

    #[test]
    fn agent_bad_values_name_their_field() {
        let tls_site = "site = \"ipps://relay.example.net/ipp/print/x\"\n";
        for (extra, field) in [
            (
                "site = \"ipps://relay.example.net/ipp/print/x\"\n".to_owned(),
                "agent.tls",
            ),
            (
                "site = \"ipp://relay.example.net/ipp/print/x\"\n".to_owned(),
                "agent.site",
            ),
            (
                "site = \"ipp://127.0.0.1/printers/x\"\n".to_owned(),
                "agent.site",
            ),
            (
                "site = \"lpd://127.0.0.1/ipp/print/x\"\n".to_owned(),
                "agent.site",
            ),
            (
                format!("{tls_site}[agent.tls]\npin_sha256 = \"abc\"\n"),
                "agent.tls.pin_sha256",
            ),
            (format!("{tls_site}[agent.tls]\n"), "agent.tls"),
            (
                format!(
                    "site = \"ipp://127.0.0.1/ipp/print/x\"\n[agent.tls]\npin_sha256 = \"{PIN}\"\n"
                ),
                "agent.tls",
            ),
            (
                "site = \"ipp://127.0.0.1/ipp/print/x\"\npoll_interval = \"0s\"\n".to_owned(),
                "agent.poll_interval",
            ),
            (
                "site = \"ipp://127.0.0.1/ipp/print/x\"\ntransport = \"carrier-pigeon\"\n"
                    .to_owned(),
                "transport",
            ),
        ] {
            let err = agent(&extra).unwrap_err();
            assert!(err.to_string().contains(field), "{extra}: {err}");
        }
        assert!(
            agent("site = \"ipp://relay.example.net/ipp/print/x\"\nallow_plain = true\n").is_ok()
        );
        // The agent needs an IPP printer to pass jobs to.
        let err = ApplianceConfig::from_str(&format!(
            "{BASE}[printer]\nuri = \"cups:office\"\n[agent]\nsite = \"ipp://127.0.0.1/ipp/print/x\"\nuser = \"u\"\npassword = \"p\"\n"
        ))
        .unwrap_err();
        assert!(err.to_string().contains("ipp://"), "{err}");
    }

    #[test]
    fn site_uris_parse() {
        let s = SiteUri::parse("ipps://[::1]:8632/ipp/print/expp1%25abc.com/").unwrap();
        assert_eq!(
            s,
            SiteUri {
                secure: true,
                host: "::1".into(),
                name: "expp1%abc.com".into()
            }
        );
        assert_eq!(decode_hex("0a:FF"), Some(vec![10, 255]));
        assert_eq!(decode_hex("0g"), None);
        assert_eq!(decode_hex("abc"), None);
    }
}
