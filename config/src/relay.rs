//! Configuration of the relay server (`faxgate relay`) and of the relay
//! client that devices use to log in to it.

use crate::{ConfigError, Secret, check_duration, check_path, invalid};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole `relay.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayServerConfig {
    /// The relay listener (seed 001).
    pub relay: RelaySection,
    /// The HTTP status and admin endpoint. Absent means no endpoint.
    #[serde(default)]
    pub status: Option<StatusSection>,
    /// The IPP front: public server sites for printers behind firewalls
    /// (seed 000, PWG 5100.18). Absent means no IPP listener.
    #[serde(default)]
    pub ipp: Option<IppFrontSection>,
    /// The mailer that sends wake-up and cancel mails (extension 1).
    /// Needed when a site has a `wake` section.
    #[serde(default)]
    pub mailer: Option<MailerSection>,
}

/// The IPP front's listeners, limits and sites.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IppFrontSection {
    /// Plain HTTP (`ipp://`): loopback, tests and trusted networks.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// HTTPS (`ipps://`), with the relay's certificate: the one to expose.
    #[serde(default)]
    pub listen_tls: Option<SocketAddr>,
    /// Host name put in printer and job URIs. Absent: the request's `Host`.
    #[serde(default)]
    pub public_host: Option<String>,
    /// Longest a Get-Notifications with notify-wait is held open.
    #[serde(default = "defaults::notify_wait", with = "humantime_serde")]
    pub notify_wait: Duration,
    /// An attached device not heard from for this long is detached and
    /// its unfinished jobs are offered again.
    #[serde(default = "defaults::agent_lease", with = "humantime_serde")]
    pub agent_lease: Duration,
    /// Shortest polling interval an agent may use (advertised).
    #[serde(default = "defaults::poll_interval_min", with = "humantime_serde")]
    pub poll_interval_min: Duration,
    /// Deadline for the TLS handshake.
    #[serde(default = "defaults::handshake_timeout", with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// How long a client may take to send a request's headers (on a
    /// kept-alive connection, from the end of the previous answer).
    #[serde(default = "defaults::ipp_header_timeout", with = "humantime_serde")]
    pub header_timeout: Duration,
    /// How long a request's body may make no progress (each piece must
    /// arrive within this time of the one before; an upload that keeps
    /// moving may take as long as it needs). A stalled request gets
    /// client-error-timeout and its connection is closed.
    #[serde(default = "defaults::ipp_body_stall_timeout", with = "humantime_serde")]
    pub body_stall_timeout: Duration,
    /// The slowest a request body may arrive on average, in bytes a
    /// second, once `body_stall_timeout` has passed (0: no minimum). A
    /// client trickling a byte now and then, never quite stalling, would
    /// otherwise hold its connection, and enough of them every
    /// connection the front allows (agents' too). 1 KiB/s is 8 kbit/s.
    #[serde(default = "defaults::ipp_min_body_rate")]
    pub min_body_rate: u64,
    /// How long a client may take none of an answer (its TCP window shut,
    /// or nothing acknowledged) before its connection is dropped: TCP
    /// user timeout on every accepted connection, with keepalive to find
    /// clients that vanished. A client that pipelines requests and reads
    /// no answers would otherwise hold its connection for ever. Longer
    /// than a printer may pause an agent's Fetch-Document (60 s).
    #[serde(
        default = "defaults::ipp_answer_stall_timeout",
        with = "humantime_serde"
    )]
    pub answer_stall_timeout: Duration,
    /// Connections open at once, both listeners together; more are closed
    /// as soon as they are accepted.
    #[serde(default = "defaults::ipp_max_connections")]
    pub max_connections: usize,
    /// Connections open at once from one client address (IPv6: its /64).
    #[serde(default = "defaults::ipp_max_connections_per_address")]
    pub max_connections_per_address: usize,
    /// Largest document accepted, in bytes.
    #[serde(default = "defaults::max_document")]
    pub max_document: u64,
    /// Jobs not yet ended that one site holds at once; a new job past it
    /// is refused with server-error-busy (the client tries later), so
    /// anonymous clients cannot fill the relay's disk through one site.
    #[serde(default = "defaults::max_active_jobs")]
    pub max_active_jobs: usize,
    /// Bytes of documents of one site's jobs not yet ended; a document
    /// arriving once they reach it is refused with server-error-busy.
    #[serde(default = "defaults::max_site_spool")]
    pub max_site_spool: u64,
    /// How long finished jobs stay visible (Get-Jobs which-jobs=completed).
    #[serde(default = "defaults::job_retention", with = "humantime_serde")]
    pub job_retention: Duration,
    /// The sites, one logical printer each.
    #[serde(default)]
    pub sites: Vec<SiteConfig>,
}

/// One server site: `/ipp/print/NAME` (and `/ipp/print/ACCOUNT%DOMAIN`
/// when `mail` is set).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    /// The site name in the URI path: letters, digits, `-`, `_`, `.`, `%`.
    pub name: String,
    /// The relay user whose agent serves this site (HTTP Basic).
    pub agent: String,
    /// The printer's mail address; also gives the `account%domain` alias.
    #[serde(default)]
    pub mail: Option<String>,
    /// printer-info.
    #[serde(default)]
    pub info: Option<String>,
    /// printer-location.
    #[serde(default)]
    pub location: Option<String>,
    /// Accept INFRA calls over plain HTTP (loopback demos only).
    #[serde(default)]
    pub allow_plain_agents: bool,
    /// Wake the agent with a command mail when a job waits (extension 1).
    #[serde(default)]
    pub wake: Option<WakeConfig>,
}

/// Wake-up by command mail for one site.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WakeConfig {
    /// HMAC-SHA256 shared secret (hex) or Ed25519 seed (hex, 32 bytes),
    /// per `scheme`.
    pub key: Secret<String>,
    /// `hmac-sha256` or `ed25519`.
    #[serde(default = "defaults::wake_scheme")]
    pub scheme: String,
    /// How long the agent has to attach after the mail is sent.
    #[serde(default = "defaults::wake_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// What happens to the jobs when it does not: abort or hold.
    #[serde(default)]
    pub on_timeout: WakeTimeout,
}

/// What a wake-up timeout does to the waiting jobs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WakeTimeout {
    /// job-state aborted, reason aborted-by-system.
    #[default]
    Abort,
    /// job-state pending-held, reason job-hold-until-specified.
    Hold,
}

/// The SMTP submission server the relay's mailer uses.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailerSection {
    /// Submission server host.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// `starttls`, `implicit` or `none` (loopback only).
    #[serde(default = "defaults::mail_tls")]
    pub tls: String,
    /// PEM CA file to trust instead of the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// SMTP login.
    #[serde(default)]
    pub user: Option<String>,
    /// SMTP password.
    #[serde(default)]
    pub password: Secret<String>,
    /// The From address of command mails.
    pub from: String,
    /// First retry delay after an SMTP failure.
    #[serde(default = "defaults::reconnect_initial", with = "humantime_serde")]
    pub retry_initial: Duration,
    /// Longest retry delay.
    #[serde(default = "defaults::reconnect_max", with = "humantime_serde")]
    pub retry_max: Duration,
    /// Attempts before giving up on one mail.
    #[serde(default = "defaults::mail_attempts")]
    pub max_attempts: u32,
}

/// The relay listener and its protocol limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelaySection {
    /// Plain TCP listener. Only for loopback, tests and trusted networks.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// TLS listener: the one to expose to the Internet.
    #[serde(default)]
    pub listen_tls: Option<SocketAddr>,
    /// Holds `users.db` and, when generated, `relay-cert.pem`/`relay-key.pem`.
    pub state_dir: PathBuf,
    /// Certificate and key. Absent: a self-signed pair is generated in
    /// `state_dir` on first start and its fingerprint printed.
    #[serde(default)]
    pub tls: Option<TlsServerConfig>,
    /// Interval announced at login; devices send HOLD this often.
    #[serde(default = "defaults::hold_interval", with = "humantime_serde")]
    pub hold_interval: Duration,
    /// Deadline for the preamble and LOGIN/RESUME after TCP accept.
    #[serde(default = "defaults::handshake_timeout", with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// How long a target has to ACCEPT or REJECT a CONNECT-NOTIFY.
    #[serde(default = "defaults::connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// After a side's TERMINATE, how long the other may move no bytes
    /// without answering with its own before it is closed.
    #[serde(default = "defaults::terminate_timeout", with = "humantime_serde")]
    pub terminate_timeout: Duration,
    /// Most connections one user may hold at once (all logins together).
    #[serde(default = "defaults::max_connections_per_user")]
    pub max_connections_per_user: u16,
    /// Most connections that may be in the handshake at once.
    #[serde(default = "defaults::max_pending_handshakes")]
    pub max_pending_handshakes: usize,
    /// Most handshaking connections from one source address.
    #[serde(default = "defaults::max_pending_per_ip")]
    pub max_pending_per_ip: usize,
    /// Largest DATA frame payload the relay forwards.
    #[serde(default = "defaults::max_data_frame")]
    pub max_data_frame: u32,
    /// Failed-login limits.
    #[serde(default)]
    pub rate_limit: RateLimitConfig,
    /// Who may see and connect to whom.
    #[serde(default)]
    pub acl: AclConfig,
    /// Argon2id cost for new password hashes (memory in KiB).
    #[serde(default = "defaults::argon2_memory_kib")]
    pub argon2_memory_kib: u32,
    /// Argon2id iterations for new password hashes.
    #[serde(default = "defaults::argon2_iterations")]
    pub argon2_iterations: u32,
}

/// A configured certificate chain and key, both PEM.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsServerConfig {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Failed-login rate limits, counted in a sliding window.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Failures from one source address before it is refused.
    #[serde(default = "defaults::failures_per_ip")]
    pub max_failures_per_ip: u32,
    /// Failures for one user ID before it is refused.
    #[serde(default = "defaults::failures_per_user")]
    pub max_failures_per_user: u32,
    /// The window over which failures are counted.
    #[serde(default = "defaults::rate_window", with = "humantime_serde")]
    pub window: Duration,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            max_failures_per_ip: defaults::failures_per_ip(),
            max_failures_per_user: defaults::failures_per_user(),
            window: defaults::rate_window(),
        }
    }
}

/// Who may see (LIST) and connect to (CONNECT) whom.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclConfig {
    /// The rule applied when no `allow` entry matches.
    #[serde(default)]
    pub default: AclDefault,
    /// Extra directed permissions: members of `from` may reach members of `to`.
    #[serde(default)]
    pub allow: Vec<AclRule>,
}

/// The base ACL policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AclDefault {
    /// Users may reach users that share at least one group with them.
    #[default]
    SameGroup,
    /// Every user may reach every user.
    All,
    /// Only `allow` rules grant access.
    None,
}

/// One directed group-to-group permission.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclRule {
    /// Group of the caller, or `*`.
    pub from: String,
    /// Group of the target, or `*`.
    pub to: String,
}

/// The HTTP status endpoint (JSON and Prometheus) and admin actions.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusSection {
    /// Address to serve on; keep it on loopback or a management network.
    pub listen: SocketAddr,
    /// Bearer token for admin actions (kick). Absent: admin actions are off.
    #[serde(default)]
    pub admin_token: Option<Secret<String>>,
}

mod defaults {
    use std::time::Duration;
    pub fn hold_interval() -> Duration {
        Duration::from_secs(30)
    }
    pub fn handshake_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn connect_timeout() -> Duration {
        Duration::from_secs(15)
    }
    pub fn terminate_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub fn max_connections_per_user() -> u16 {
        8
    }
    pub fn max_pending_handshakes() -> usize {
        4096
    }
    pub fn max_pending_per_ip() -> usize {
        64
    }
    pub fn max_data_frame() -> u32 {
        1 << 20
    }
    pub fn failures_per_ip() -> u32 {
        20
    }
    pub fn failures_per_user() -> u32 {
        5
    }
    pub fn rate_window() -> Duration {
        Duration::from_secs(300)
    }
    pub fn argon2_memory_kib() -> u32 {
        19 * 1024
    }
    pub fn argon2_iterations() -> u32 {
        2
    }
    pub fn spares() -> u16 {
        1
    }
    pub fn max_client_connections() -> u16 {
        4
    }
    pub fn reconnect_initial() -> Duration {
        Duration::from_millis(500)
    }
    pub fn reconnect_max() -> Duration {
        Duration::from_secs(60)
    }
    pub fn client_connect_timeout() -> Duration {
        Duration::from_secs(20)
    }
    pub fn notify_wait() -> Duration {
        Duration::from_secs(30)
    }
    pub fn agent_lease() -> Duration {
        Duration::from_secs(90)
    }
    pub fn poll_interval_min() -> Duration {
        Duration::from_secs(1)
    }
    pub fn max_document() -> u64 {
        256 << 20
    }
    pub fn max_active_jobs() -> usize {
        1000
    }
    pub fn max_site_spool() -> u64 {
        4 << 30
    }
    pub fn ipp_header_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub fn ipp_min_body_rate() -> u64 {
        1024
    }
    pub fn ipp_body_stall_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub fn ipp_answer_stall_timeout() -> Duration {
        Duration::from_secs(120)
    }
    pub fn ipp_max_connections() -> usize {
        512
    }
    pub fn ipp_max_connections_per_address() -> usize {
        32
    }
    pub fn job_retention() -> Duration {
        Duration::from_secs(24 * 3600)
    }
    pub fn wake_scheme() -> String {
        "hmac-sha256".into()
    }
    pub fn wake_timeout() -> Duration {
        Duration::from_secs(120)
    }
    pub fn mail_tls() -> String {
        "starttls".into()
    }
    pub fn mail_attempts() -> u32 {
        10
    }
}

impl std::str::FromStr for RelayServerConfig {
    type Err = ConfigError;

    /// Parses and validates without touching the filesystem.
    fn from_str(text: &str) -> Result<Self, ConfigError> {
        crate::load_str(text)
    }
}

impl crate::Validate for RelayServerConfig {
    fn check(&self) -> Result<(), ConfigError> {
        self.validate()
    }
}

impl RelayServerConfig {
    /// Reads, parses and validates a file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        crate::load_file(path)
    }

    /// Checks ranges and combinations that serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let r = &self.relay;
        if r.listen.is_none() && r.listen_tls.is_none() {
            return Err(invalid(
                "relay.listen",
                "set at least one of `listen` and `listen_tls`",
            ));
        }
        check_path("relay.state_dir", &r.state_dir)?;
        if let Some(tls) = &r.tls {
            check_path("relay.tls.cert", &tls.cert)?;
            check_path("relay.tls.key", &tls.key)?;
        }
        if r.hold_interval < Duration::from_millis(100)
            || r.hold_interval > Duration::from_secs(3600)
        {
            return Err(invalid(
                "relay.hold_interval",
                format!("{:?} is outside 100ms..1h", r.hold_interval),
            ));
        }
        for (field, value) in [
            ("relay.handshake_timeout", r.handshake_timeout),
            ("relay.connect_timeout", r.connect_timeout),
            ("relay.terminate_timeout", r.terminate_timeout),
        ] {
            if value.is_zero() {
                return Err(invalid(field, "must be greater than zero"));
            }
        }
        if r.max_connections_per_user == 0 {
            return Err(invalid(
                "relay.max_connections_per_user",
                "must be at least 1",
            ));
        }
        if r.max_pending_handshakes == 0 {
            return Err(invalid(
                "relay.max_pending_handshakes",
                "must be at least 1",
            ));
        }
        if r.max_pending_per_ip == 0 {
            return Err(invalid("relay.max_pending_per_ip", "must be at least 1"));
        }
        if !(1024..=16 << 20).contains(&r.max_data_frame) {
            return Err(invalid(
                "relay.max_data_frame",
                format!("{} is outside 1 KiB..16 MiB", r.max_data_frame),
            ));
        }
        for (field, value) in [
            (
                "relay.rate_limit.max_failures_per_ip",
                r.rate_limit.max_failures_per_ip,
            ),
            (
                "relay.rate_limit.max_failures_per_user",
                r.rate_limit.max_failures_per_user,
            ),
        ] {
            if value == 0 {
                return Err(invalid(field, "must be at least 1"));
            }
        }
        // A zero window counts no failure at all: no rate limit.
        check_duration(
            "relay.rate_limit.window",
            r.rate_limit.window,
            Duration::from_secs(1),
            Duration::from_secs(24 * 3600),
        )?;
        if r.argon2_memory_kib < 8 {
            return Err(invalid(
                "relay.argon2_memory_kib",
                "argon2 needs at least 8 KiB",
            ));
        }
        if r.argon2_iterations == 0 {
            return Err(invalid("relay.argon2_iterations", "must be at least 1"));
        }
        for rule in &r.acl.allow {
            if rule.from.is_empty() || rule.to.is_empty() {
                return Err(invalid("relay.acl.allow", "group names must not be empty"));
            }
        }
        if let Some(status) = &self.status
            && let Some(token) = &status.admin_token
            && token.expose().len() < 16
        {
            // An empty token matches a request without one.
            return Err(invalid(
                "status.admin_token",
                "must be at least 16 bytes (leave it out to turn admin actions off)",
            ));
        }
        if let Some(ipp) = &self.ipp {
            self.validate_ipp(ipp)?;
        }
        if let Some(m) = &self.mailer {
            if m.host.is_empty() {
                return Err(invalid("mailer.host", "must not be empty"));
            }
            if m.port == 0 {
                return Err(invalid("mailer.port", "must be 1..=65535"));
            }
            if !matches!(m.tls.as_str(), "starttls" | "implicit" | "none") {
                return Err(invalid(
                    "mailer.tls",
                    format!("`{}` is not starttls, implicit or none", m.tls),
                ));
            }
            if m.tls == "none" && !crate::is_loopback_host(&m.host) {
                return Err(invalid(
                    "mailer.tls",
                    format!(
                        "plain SMTP (tls = \"none\") is only allowed to a loopback host, not `{}`",
                        m.host
                    ),
                ));
            }
            if m.tls == "none" && m.user.is_some() {
                return Err(invalid(
                    "mailer.user",
                    "a password is never sent without TLS; remove user or use TLS",
                ));
            }
            if let Some(ca) = &m.ca_file {
                check_path("mailer.ca_file", ca)?;
            }
            if m.max_attempts == 0 {
                return Err(invalid("mailer.max_attempts", "must be at least 1"));
            }
            if m.retry_initial.is_zero() || m.retry_max < m.retry_initial {
                return Err(invalid(
                    "mailer.retry_initial",
                    "need 0 < retry_initial <= retry_max",
                ));
            }
            if !m.from.contains('@') {
                return Err(invalid(
                    "mailer.from",
                    format!("`{}` is not an address", m.from),
                ));
            }
        }
        Ok(())
    }

    fn validate_ipp(&self, ipp: &IppFrontSection) -> Result<(), ConfigError> {
        if ipp.listen.is_none() && ipp.listen_tls.is_none() {
            return Err(invalid(
                "ipp.listen",
                "set at least one of `listen` and `listen_tls`",
            ));
        }
        if ipp.notify_wait.is_zero() || ipp.notify_wait > Duration::from_secs(300) {
            return Err(invalid("ipp.notify_wait", "must be within 1ms..5m"));
        }
        if ipp.agent_lease <= ipp.notify_wait {
            return Err(invalid(
                "ipp.agent_lease",
                "must be longer than notify_wait, or every long poll would detach",
            ));
        }
        if ipp.handshake_timeout.is_zero() {
            return Err(invalid(
                "ipp.handshake_timeout",
                "must be greater than zero",
            ));
        }
        // The upper bound keeps the body limit (max_document plus the
        // attributes) far from overflowing.
        for (field, d) in [
            ("ipp.header_timeout", ipp.header_timeout),
            ("ipp.body_stall_timeout", ipp.body_stall_timeout),
            ("ipp.answer_stall_timeout", ipp.answer_stall_timeout),
        ] {
            check_duration(
                field,
                d,
                Duration::from_millis(100),
                Duration::from_secs(3600),
            )?;
        }
        if ipp.max_connections == 0 {
            return Err(invalid("ipp.max_connections", "must be at least 1"));
        }
        if ipp.max_connections_per_address == 0
            || ipp.max_connections_per_address > ipp.max_connections
        {
            return Err(invalid(
                "ipp.max_connections_per_address",
                format!(
                    "{} is outside 1..=max_connections ({})",
                    ipp.max_connections_per_address, ipp.max_connections
                ),
            ));
        }
        if ipp.max_document == 0 || ipp.max_document > 1 << 40 {
            return Err(invalid(
                "ipp.max_document",
                format!("{} is outside 1..=1 TiB (in bytes)", ipp.max_document),
            ));
        }
        if ipp.max_active_jobs == 0 {
            return Err(invalid("ipp.max_active_jobs", "must be at least 1"));
        }
        if ipp.max_site_spool < ipp.max_document {
            return Err(invalid(
                "ipp.max_site_spool",
                format!(
                    "{} is below ipp.max_document ({}): the largest document could never be taken",
                    ipp.max_site_spool, ipp.max_document
                ),
            ));
        }
        if let Some(host) = &ipp.public_host {
            // A name or IPv4 address, or an IPv6 address with or without
            // brackets; never a port (the URIs get the listener's).
            let inner = host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(host);
            let ipv6 = inner.parse::<std::net::Ipv6Addr>().is_ok();
            let name_ok = !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
            if !(name_ok || ipv6) {
                return Err(invalid(
                    "ipp.public_host",
                    format!(
                        "`{host}` is not a host name or IP address (no port, scheme or path: \
                         the listeners' ports are added)"
                    ),
                ));
            }
        }
        let mut names = std::collections::HashSet::new();
        for site in &ipp.sites {
            let ok = !site.name.is_empty()
                && site.name.len() <= 127
                && site
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.%".contains(&b));
            if !ok {
                return Err(invalid(
                    "ipp.sites.name",
                    format!(
                        "`{}` must be 1..=127 of letters, digits, `-`, `_`, `.`, `%`",
                        site.name
                    ),
                ));
            }
            if !names.insert(site.name.clone()) {
                return Err(invalid(
                    "ipp.sites.name",
                    format!("`{}` is configured twice", site.name),
                ));
            }
            if let Some(mail) = &site.mail {
                let alias = mail.replacen('@', "%", 1);
                if !mail.contains('@') || (alias != site.name && !names.insert(alias)) {
                    return Err(invalid(
                        "ipp.sites.mail",
                        format!("`{mail}` is not an address or its alias is taken"),
                    ));
                }
            }
            if site.agent.is_empty() {
                return Err(invalid("ipp.sites.agent", "must name a relay user"));
            }
            if let Some(w) = &site.wake {
                if site.mail.is_none() {
                    return Err(invalid(
                        "ipp.sites.wake",
                        format!(
                            "site `{}` has a wake section but no mail address",
                            site.name
                        ),
                    ));
                }
                if self.mailer.is_none() {
                    return Err(invalid(
                        "mailer",
                        "a site wakes by mail but [mailer] is missing",
                    ));
                }
                if !matches!(w.scheme.as_str(), "hmac-sha256" | "ed25519") {
                    return Err(invalid(
                        "ipp.sites.wake.scheme",
                        format!("`{}` is not hmac-sha256 or ed25519", w.scheme),
                    ));
                }
                let key = w.key.expose();
                if key.len() < 32
                    || key.len() % 2 != 0
                    || !key.bytes().all(|b| b.is_ascii_hexdigit())
                {
                    return Err(invalid(
                        "ipp.sites.wake.key",
                        "must be hex, at least 16 bytes (32 hex digits)",
                    ));
                }
                // The wake mail's command lives as long as the timeout,
                // and a command mail lives at most 24 h (the replay cache
                // keeps nonces that long: faxgate_mail::command).
                if w.timeout.is_zero() || w.timeout > Duration::from_secs(24 * 3600) {
                    return Err(invalid(
                        "ipp.sites.wake.timeout",
                        format!(
                            "{} is outside 1s..=24h (a command mail lives at most 24 h)",
                            humantime_serde::re::humantime::format_duration(w.timeout)
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// How a device logs in to a relay (the `[relay]` part of an appliance,
/// or the whole file given to `faxgate relay-client --config`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayClientConfig {
    /// `host:port` of the relay.
    pub server: String,
    /// TLS settings; absent means plain TCP (loopback and tests only).
    #[serde(default)]
    pub tls: Option<ClientTlsConfig>,
    /// The user ID to log in as.
    pub user: String,
    /// The password for `user`.
    pub password: Secret<String>,
    /// Vacant connections to keep ready for incoming demands.
    #[serde(default = "defaults::spares")]
    pub spares: u16,
    /// Most connections this device opens.
    #[serde(default = "defaults::max_client_connections")]
    pub max_connections: u16,
    /// First reconnect delay; doubles up to `reconnect_max`, with jitter.
    #[serde(default = "defaults::reconnect_initial", with = "humantime_serde")]
    pub reconnect_initial: Duration,
    /// Largest reconnect delay.
    #[serde(default = "defaults::reconnect_max", with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// Deadline for a CONNECT to be answered, and for TCP/TLS/LOGIN.
    #[serde(default = "defaults::client_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
}

/// How the client checks the relay's certificate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTlsConfig {
    /// SHA-256 of the relay's leaf certificate (hex, colons allowed). When
    /// set, only that certificate is accepted.
    #[serde(default)]
    pub pin_sha256: Option<String>,
    /// PEM file of CA certificates to verify against when not pinning.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Name to send in SNI and to verify; defaults to the host of `server`.
    #[serde(default)]
    pub server_name: Option<String>,
}

impl std::str::FromStr for RelayClientConfig {
    type Err = ConfigError;

    /// Parses and validates without touching the filesystem.
    fn from_str(text: &str) -> Result<Self, ConfigError> {
        crate::load_str(text)
    }
}

impl crate::Validate for RelayClientConfig {
    fn check(&self) -> Result<(), ConfigError> {
        self.validate()
    }
}

impl RelayClientConfig {
    /// Reads, parses and validates a file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        crate::load_file(path)
    }

    /// Checks ranges and combinations that serde cannot, naming fields as
    /// in a relay-client file (`server`, `tls.pin_sha256`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_in("")
    }

    /// [`RelayClientConfig::validate`] for a client config that is the
    /// table `prefix` of a larger file: `prefix` is put before every field
    /// name in errors, e.g. `relay.` gives `relay.server`.
    pub fn validate_in(&self, prefix: &str) -> Result<(), ConfigError> {
        let field = |name: &str| format!("{prefix}{name}");
        if self.user.is_empty() || self.user.len() > 64 {
            return Err(invalid(field("user"), "must be 1..=64 bytes"));
        }
        crate::check_host_port(&self.server).map_err(|reason| invalid(field("server"), reason))?;
        if self.max_connections == 0 {
            return Err(invalid(field("max_connections"), "must be at least 1"));
        }
        if self.spares >= self.max_connections {
            return Err(invalid(
                field("spares"),
                format!(
                    "{} spares leave no room under max_connections = {}",
                    self.spares, self.max_connections
                ),
            ));
        }
        if self.reconnect_initial.is_zero() || self.reconnect_max < self.reconnect_initial {
            return Err(invalid(
                field("reconnect_initial"),
                "need 0 < reconnect_initial <= reconnect_max",
            ));
        }
        // Zero would time out every connection attempt at once.
        check_duration(
            &field("connect_timeout"),
            self.connect_timeout,
            Duration::from_millis(1),
            Duration::from_secs(3600),
        )?;
        if let Some(tls) = &self.tls {
            if let Some(pin) = &tls.pin_sha256 {
                let hex: String = pin.chars().filter(|c| *c != ':').collect();
                if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Err(invalid(field("tls.pin_sha256"), "must be 64 hex digits"));
                }
            } else if tls.ca_file.is_none() {
                return Err(invalid(
                    field("tls"),
                    "set `pin_sha256` (the relay prints it) or `ca_file`",
                ));
            }
            if let Some(ca) = &tls.ca_file {
                check_path(&field("tls.ca_file"), ca)?;
            }
            if tls.server_name.as_ref().is_some_and(|n| n.is_empty()) {
                return Err(invalid(
                    field("tls.server_name"),
                    "must not be empty (leave it out to use the host of `server`)",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr as _;

    const MINIMAL: &str = r#"
        [relay]
        listen = "127.0.0.1:0"
        state_dir = "/tmp/x"
    "#;

    #[test]
    fn minimal_relay_config_gets_defaults() {
        let c = RelayServerConfig::from_str(MINIMAL).unwrap();
        assert_eq!(c.relay.hold_interval, Duration::from_secs(30));
        assert_eq!(c.relay.acl.default, AclDefault::SameGroup);
        assert!(c.status.is_none());
    }

    #[test]
    fn unknown_field_is_named() {
        let err = RelayServerConfig::from_str(&format!("{MINIMAL}\nholdinterval = 3")).unwrap_err();
        assert!(err.to_string().contains("holdinterval"), "{err}");
    }

    /// A wake-up timeout is at most 24 h: the command mail it sends lives
    /// that long, and a longer one would be refused by every mailer.
    #[test]
    fn a_wake_timeout_over_a_day_is_refused() {
        let example = include_str!("../examples/relay.toml");
        assert!(RelayServerConfig::from_str(example).is_ok());
        for (timeout, ok) in [("24h", true), ("25h", false), ("0s", false)] {
            let text = example.replace("timeout = \"2m\"", &format!("timeout = \"{timeout}\""));
            let got = RelayServerConfig::from_str(&text);
            match (ok, got) {
                (true, r) => assert!(r.is_ok(), "{timeout}: {r:?}"),
                (false, r) => {
                    let e = r.unwrap_err().to_string();
                    assert!(e.contains("ipp.sites.wake.timeout"), "{timeout}: {e}");
                }
            }
        }
    }

    /// A misspelt secret is refused by its name and place, and the error
    /// (which goes to the log) does not quote its value.
    #[test]
    fn a_parse_error_names_the_place_but_never_quotes_the_line() {
        let text = "server = \"relay.example.net:4651\"\nuser = \"tokyo\"\npasword = \"hunter2\"\n";
        let err = RelayClientConfig::from_str(text).unwrap_err().to_string();
        assert!(
            err.contains("pasword") && err.contains("line 3, column 1"),
            "{err}"
        );
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn no_listener_is_rejected() {
        let err = RelayServerConfig::from_str("[relay]\nstate_dir = \"/x\"").unwrap_err();
        assert!(err.to_string().contains("relay.listen"), "{err}");
    }

    #[test]
    fn client_tls_needs_a_pin_or_ca() {
        let err = RelayClientConfig::from_str(
            "server = \"r:1\"\nuser = \"a\"\npassword = \"p\"\n[tls]\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("pin_sha256"), "{err}");
        let err = RelayClientConfig::from_str(
            "server = \"r:1\"\nuser = \"a\"\npassword = \"p\"\n[tls]\npin_sha256 = \"zz\"\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("64 hex"), "{err}");
    }

    const CLIENT: &str = "user = \"a\"\npassword = \"p\"\n";

    #[test]
    fn client_server_must_be_host_and_port() {
        for bad in [
            "relay.example.net",
            "relay:0",
            "relay:65536",
            "relay:+80",
            "relay:http",
            ":4651",
            "relay:",
            "127.0.0.1:0",
            "[::1]",
            "[::1]:0",
            "[nothost]:4651",
            "::1:4651",
            "re lay:4651",
        ] {
            let err =
                RelayClientConfig::from_str(&format!("server = \"{bad}\"\n{CLIENT}")).unwrap_err();
            assert!(err.to_string().contains("`server`"), "{bad}: {err}");
        }
        for good in [
            "relay.example.net:4651",
            "relay-1.example.net.:1",
            "127.0.0.1:65535",
            "[::1]:4651",
            "[2001:db8::1]:4651",
        ] {
            RelayClientConfig::from_str(&format!("server = \"{good}\"\n{CLIENT}"))
                .unwrap_or_else(|e| panic!("{good}: {e}"));
        }
    }

    #[test]
    fn client_bad_values_name_their_field() {
        for (extra, field) in [
            ("connect_timeout = \"0s\"\n", "`connect_timeout`"),
            ("max_connections = 0\n", "`max_connections`"),
            (
                "[tls]\nca_file = \"/etc/ca.pem\"\nserver_name = \"\"\n",
                "`tls.server_name`",
            ),
            ("[tls]\nca_file = \"\"\n", "`tls.ca_file`"),
        ] {
            let err = RelayClientConfig::from_str(&format!("server = \"r:1\"\n{CLIENT}{extra}"))
                .unwrap_err();
            assert!(err.to_string().contains(field), "{extra}: {err}");
        }
    }

    #[test]
    fn invalid_value_in_a_file_names_the_file() {
        let path = std::env::temp_dir().join(format!(
            "faxgate-config-test-{}-relay-client.toml",
            std::process::id()
        ));
        std::fs::write(&path, format!("server = \"relay\"\n{CLIENT}")).unwrap();
        let err = RelayClientConfig::from_file(&path).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        let text = err.to_string();
        assert!(text.contains("`server`"), "{text}");
        assert!(text.contains(&path.display().to_string()), "{text}");
        // Loaded from a string, there is no file to name.
        let err =
            RelayClientConfig::from_str(&format!("server = \"relay\"\n{CLIENT}")).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Invalid { file: None, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn server_bad_values_name_their_field() {
        let mailer = "[mailer]\nfrom = \"relay@example.net\"\n";
        let ipp = "[ipp]\nlisten = \"127.0.0.1:0\"\n";
        for (extra, field) in [
            (
                "max_pending_per_ip = 0\n".to_owned(),
                "relay.max_pending_per_ip",
            ),
            (
                "argon2_iterations = 0\n".to_owned(),
                "relay.argon2_iterations",
            ),
            (
                "[relay.rate_limit]\nmax_failures_per_user = 0\n".to_owned(),
                "relay.rate_limit.max_failures_per_user",
            ),
            (
                "[relay.rate_limit]\nwindow = \"0s\"\n".to_owned(),
                "relay.rate_limit.window",
            ),
            (
                "[relay.tls]\ncert = \"\"\nkey = \"/k.pem\"\n".to_owned(),
                "relay.tls.cert",
            ),
            (
                "[status]\nlisten = \"127.0.0.1:0\"\nadmin_token = \"\"\n".to_owned(),
                "status.admin_token",
            ),
            (
                format!("{mailer}host = \"smtp.example.net\"\nport = 0\n"),
                "mailer.port",
            ),
            (format!("{mailer}host = \"\"\nport = 587\n"), "mailer.host"),
            (
                format!("{mailer}host = \"smtp.example.net\"\nport = 25\ntls = \"none\"\n"),
                "mailer.tls",
            ),
            (
                format!("{mailer}host = \"127.0.0.1\"\nport = 25\ntls = \"none\"\nuser = \"u\"\n"),
                "mailer.user",
            ),
            (
                format!("{mailer}host = \"smtp.example.net\"\nport = 587\nmax_attempts = 0\n"),
                "mailer.max_attempts",
            ),
            (
                format!("{ipp}public_host = \"relay.example.net:8632\"\n"),
                "ipp.public_host",
            ),
            (format!("{ipp}public_host = \"\"\n"), "ipp.public_host"),
            (format!("{ipp}max_active_jobs = 0\n"), "ipp.max_active_jobs"),
            (
                format!("{ipp}max_document = 1000\nmax_site_spool = 999\n"),
                "ipp.max_site_spool",
            ),
            (format!("{ipp}max_document = 0\n"), "ipp.max_document"),
            (
                format!("{ipp}body_stall_timeout = \"0s\"\n"),
                "ipp.body_stall_timeout",
            ),
            (
                format!("{ipp}header_timeout = \"2h\"\n"),
                "ipp.header_timeout",
            ),
            (format!("{ipp}max_connections = 0\n"), "ipp.max_connections"),
            (
                format!("{ipp}max_connections = 10\nmax_connections_per_address = 11\n"),
                "ipp.max_connections_per_address",
            ),
        ] {
            let err = RelayServerConfig::from_str(&format!("{MINIMAL}{extra}")).unwrap_err();
            assert!(
                err.to_string().contains(&format!("`{field}`")),
                "{extra}: {err}"
            );
        }
        let err =
            RelayServerConfig::from_str("[relay]\nlisten = \"127.0.0.1:0\"\nstate_dir = \"\"\n")
                .unwrap_err();
        assert!(err.to_string().contains("`relay.state_dir`"), "{err}");
        for ok in [
            format!("{mailer}host = \"127.0.0.1\"\nport = 25\ntls = \"none\"\n"),
            format!("{ipp}public_host = \"relay.example.net\"\n"),
            format!("{ipp}public_host = \"[2001:db8::1]\"\n"),
            "[status]\nlisten = \"127.0.0.1:0\"\nadmin_token = \"0123456789abcdef\"\n".to_owned(),
        ] {
            RelayServerConfig::from_str(&format!("{MINIMAL}{ok}"))
                .unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn client_password_is_masked() {
        let c =
            RelayClientConfig::from_str("server = \"r:1\"\nuser = \"a\"\npassword = \"s3cr3t\"")
                .unwrap();
        assert!(!format!("{c:?}").contains("s3cr3t"));
    }
}
