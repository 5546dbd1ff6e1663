//! faxgate-config: typed configuration for every faxgate process.
//!
//! # Layout
//! - [`secret`]: [`Secret`], a wrapper that never prints its contents.
//! - [`relay`]: [`RelayServerConfig`] for `faxgate relay` and
//!   [`RelayClientConfig`] for devices that log in to a relay.
//! - [`appliance`]: [`ApplianceConfig`] for `faxgate appliance`, one
//!   section per actor.
//! - [`error`]: [`ConfigError`], naming the file and field that was wrong.
//!
//! Every config is TOML with `deny_unknown_fields`. Loading is three steps,
//! so each can be tested alone: a pure `from_str`, then `validate()`, then
//! `from_file` which does both. The files in `config/examples/` are parsed
//! by a test, so they cannot rot.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod appliance;
pub mod error;
pub mod relay;
pub mod secret;

pub use appliance::{
    ApplianceConfig, FaxCoding, FaxResolution, FaxSection, InboxSection, PanelSection, PaperName,
    PrinterSection, ScannerSection, TimerSection,
};
pub use error::ConfigError;
pub use relay::{
    AclConfig, AclDefault, AclRule, ClientTlsConfig, IppFrontSection, MailerSection,
    RateLimitConfig, RelayClientConfig, RelaySection, RelayServerConfig, SiteConfig, StatusSection,
    TlsServerConfig, WakeConfig, WakeTimeout,
};
pub use secret::Secret;

use std::path::Path;

/// Parses a TOML document into `T`, naming `origin` in any error.
pub(crate) fn parse_toml<T: serde::de::DeserializeOwned>(
    text: &str,
    origin: &str,
) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|source| ConfigError::Parse {
        origin: origin.to_owned(),
        message: source.to_string(),
    })
}

/// A config type that can check itself after parsing.
pub(crate) trait Validate: serde::de::DeserializeOwned {
    /// Checks ranges and combinations that serde cannot.
    fn check(&self) -> Result<(), ConfigError>;
}

/// The pure half of loading: parse, then validate.
pub(crate) fn load_str<T: Validate>(text: &str) -> Result<T, ConfigError> {
    let config: T = parse_toml(text, "<string>")?;
    config.check()?;
    Ok(config)
}

/// Loading from a file: read, parse and validate, naming the file.
pub(crate) fn load_file<T: Validate>(path: &Path) -> Result<T, ConfigError> {
    let text = read_file(path)?;
    let config: T = parse_toml(&text, &path.display().to_string())?;
    config.check()?;
    Ok(config)
}

/// Reads a whole config file, naming it in the error.
pub(crate) fn read_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_owned(),
        source,
    })
}
