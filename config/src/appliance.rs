//! Configuration of the appliance daemon (`faxgate appliance`): one
//! section per actor, so each actor gets only its own part.

use crate::ConfigError;
use crate::relay::RelayClientConfig;
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
    /// The front-panel API the `faxgate send|jobs|...` commands talk to.
    #[serde(default)]
    pub panel: PanelSection,
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
}

impl Default for InboxSection {
    fn default() -> Self {
        InboxSection {
            print: true,
            archive_dir: None,
            max_held: defaults::max_held(),
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
    /// How long an IPP job is watched before it counts as failed.
    #[serde(default = "defaults::job_timeout", with = "humantime_serde")]
    pub job_timeout: Duration,
    /// Delay before a failed print is tried again.
    #[serde(default = "defaults::print_retry", with = "humantime_serde")]
    pub retry: Duration,
}

/// The SANE scanner and how its pages become fax pages.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScannerSection {
    /// The SANE device name (`scanimage -L` lists them; `test` is SANE's
    /// test backend).
    pub device: String,
    /// Pages per scan for devices without a feeder (the test backend).
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
        self.relay.validate()?;
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
        if [t.t1, t.t2, t.t4, t.t5].iter().any(|d| d.is_zero()) {
            return Err(invalid("fax.timers", "timers must be longer than zero"));
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
            if !["text", "photo"].contains(&s.mode.as_str()) {
                return Err(invalid(
                    "scanner.mode",
                    format!("`{}`: use text or photo", s.mode),
                ));
            }
            if s.pages == Some(0) {
                return Err(invalid("scanner.pages", "must be at least 1"));
            }
        }
        if let Some(p) = &self.printer
            && p.uri.is_empty()
        {
            return Err(invalid("printer.uri", "must not be empty"));
        }
        Ok(())
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: reason.into(),
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
    pub fn panel_listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 4680))
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
        assert!(c.printer.is_none() && c.scanner.is_none());
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
}
