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
    ApplianceConfig, FaxCoding, FaxResolution, FaxSection, HotFolderSection, InboxSection,
    ModemSection, PanelSection, PaperName, PrinterSection, ScannerSection, TimerSection,
};
pub use error::ConfigError;
pub use relay::{
    AclConfig, AclDefault, AclRule, ClientTlsConfig, IppFrontSection, MailerSection,
    RateLimitConfig, RelayClientConfig, RelaySection, RelayServerConfig, SiteConfig, StatusSection,
    TlsServerConfig, WakeConfig, WakeTimeout,
};
pub use secret::Secret;

use std::path::Path;
use std::time::Duration;

/// Parses a TOML document into `T`, naming `origin` in any error.
pub(crate) fn parse_toml<T: serde::de::DeserializeOwned>(
    text: &str,
    origin: &str,
) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e: toml::de::Error| ConfigError::Parse {
        origin: origin.to_owned(),
        message: parse_message(&e, text),
    })
}

/// toml's message and where it points, by line and column, without the
/// quoted source line toml's own Display adds: that line may hold a
/// password or a key (a misspelt `pasword = "..."` is refused as an
/// unknown field), and the error goes to the log.
fn parse_message(e: &toml::de::Error, text: &str) -> String {
    let at = e
        .span()
        .and_then(|s| Some((text.get(..s.start)?, text.get(s.start..)?)))
        .map(|(before, after)| {
            let line = before.matches('\n').count() + 1;
            let start = before.rsplit('\n').next().unwrap_or_default();
            let column = start.chars().count() + 1;
            // The key the line sets, if it is a plain `key = value` line
            // (names are no secret; the value is not shown).
            let whole = format!("{start}{}", after.split('\n').next().unwrap_or_default());
            let key = whole
                .split_once('=')
                .map(|(k, _)| k.trim())
                .filter(|k| {
                    !k.is_empty()
                        && k.chars()
                            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
                })
                .map(|k| format!("`{k}`, "))
                .unwrap_or_default();
            format!(" ({key}line {line}, column {column})")
        })
        .unwrap_or_default();
    format!("{}{at}", e.message().trim_end())
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
    warn_if_others_can_read(path, &text);
    let config: T = parse_toml(&text, &path.display().to_string())?;
    config.check().map_err(|e| e.in_file(path))?;
    Ok(config)
}

/// Warns when a config file that holds a secret (a password, key or
/// token) can be read by users other than its owner. Only a warning: the
/// examples copied as they are must still run.
fn warn_if_others_can_read(path: &Path, text: &str) {
    if let Some(mode) = secret_readable_by_others(path, text) {
        tracing::warn!(
            file = %path.display(),
            mode = format!("{mode:o}"),
            "The config file can be read by other users and holds passwords or keys; chmod 600 it."
        );
    }
}

/// The file's permission bits when `text` sets a secret-holding key and
/// the group or others may read the file.
fn secret_readable_by_others(path: &Path, text: &str) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (holds_secret(text) && mode & 0o044 != 0).then_some(mode)
    }
    #[cfg(not(unix))]
    {
        let _ = (path, text);
        None
    }
}

/// Whether a line of `text` sets a key that holds a secret: `password`,
/// `key`, a name ending in `_password`, `_key`, `_secret` or `_token`
/// (`admin_token`). Comments, names that only mention one (`key_file`)
/// and values that are paths (`[tls] key = "/etc/..."`) do not count.
fn holds_secret(text: &str) -> bool {
    text.lines()
        .map(str::trim_start)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().trim_matches('"').to_ascii_lowercase(), v.trim()))
        // `[tls] key` names the file of a private key: a path, no secret.
        .filter(|(_, v)| !(v.starts_with("\"/") || v.ends_with(".pem\"")))
        .any(|(k, _)| {
            ["password", "key", "secret", "token"]
                .iter()
                .any(|w| k == *w || k.ends_with(&format!("_{w}")))
        })
}

/// Reads a whole config file, naming it in the error.
pub(crate) fn read_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_owned(),
        source,
    })
}

/// An [`ConfigError::Invalid`] for `field` (its full TOML path).
pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
        file: None,
    }
}

/// Checks `min <= value <= max` for a duration, naming `field`.
pub(crate) fn check_duration(
    field: &str,
    value: Duration,
    min: Duration,
    max: Duration,
) -> Result<(), ConfigError> {
    use humantime_serde::re::humantime::format_duration;
    if value < min || value > max {
        return Err(invalid(
            field,
            format!(
                "`{}` is outside {}..={}",
                format_duration(value),
                format_duration(min),
                format_duration(max)
            ),
        ));
    }
    Ok(())
}

/// Checks that a configured path is not empty (`""` would silently mean
/// the working directory, or fail later with an unhelpful error).
pub(crate) fn check_path(field: &str, path: &Path) -> Result<(), ConfigError> {
    if path.as_os_str().is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    Ok(())
}

/// True for `localhost` and loopback IP literals (brackets allowed).
pub(crate) fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Checks a `host:port` to connect to: a non-empty host name or IPv4
/// address, or an IPv6 address in brackets, and a port in 1..=65535.
pub(crate) fn check_host_port(value: &str) -> Result<(), String> {
    let hint = "write host:port, e.g. relay.example.net:4651 or [2001:db8::1]:4651";
    if let Ok(addr) = value.parse::<std::net::SocketAddr>() {
        // An IP literal: IPv4, or IPv6 in brackets (a numeric scope allowed).
        return if addr.port() == 0 {
            Err(format!(
                "`{value}`: port 0 cannot be connected to; use 1..=65535"
            ))
        } else {
            Ok(())
        };
    }
    let port = if let Some(rest) = value.strip_prefix('[') {
        let v6 = rest.split(']').next().unwrap_or_default();
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("`{v6}` in `{value}` is not an IPv6 address"));
        }
        rest.split_once("]:")
            .map(|(_, port)| port)
            .ok_or_else(|| format!("`{value}` has no port; {hint}"))?
    } else {
        let (host, port) = value
            .rsplit_once(':')
            .ok_or_else(|| format!("`{value}` has no port; {hint}"))?;
        if host.contains(':') {
            return Err(format!(
                "`{value}`: put an IPv6 address in brackets, e.g. [::1]:4651"
            ));
        }
        if host.is_empty() {
            return Err(format!("`{value}` has no host; {hint}"));
        }
        if !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        {
            return Err(format!("`{host}` in `{value}` is not a host name"));
        }
        port
    };
    match port.parse::<u16>() {
        Ok(p) if p != 0 && port.bytes().all(|b| b.is_ascii_digit()) => Ok(()),
        _ => Err(format!(
            "the port `{port}` in `{value}` is not a number in 1..=65535"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_holding_keys_are_told_from_mentions() {
        assert!(holds_secret("[relay]\npassword = \"x\"\n"));
        assert!(holds_secret("  admin_token = \"x\""));
        assert!(holds_secret("[[command_mail.sender]]\nkey = \"00ff\""));
        assert!(holds_secret("imap_password=\"x\""));
        assert!(!holds_secret("# password = \"x\"\nuser = \"a\""));
        assert!(!holds_secret(
            "key_file = \"/etc/faxgate/key.pem\"\nmonkey = 1"
        ));
        assert!(!holds_secret("name = \"password\""));
        assert!(!holds_secret("[tls]\nkey = \"/etc/faxgate/relay.key\"\n"));
        assert!(!holds_secret("[tls]\nkey = \"relay-key.pem\"\n"));
    }

    #[cfg(unix)]
    #[test]
    fn a_secret_readable_by_others_is_found_and_a_private_one_is_not() {
        use std::os::unix::fs::PermissionsExt as _;
        let path = std::env::temp_dir().join(format!(
            "faxgate-config-mode-{}-{:?}.toml",
            std::process::id(),
            std::thread::current().id()
        ));
        let secret = "[relay]\npassword = \"change-me\"\n";
        std::fs::write(&path, secret).unwrap();
        let set = |mode| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode));
        set(0o644).unwrap();
        assert_eq!(secret_readable_by_others(&path, secret), Some(0o644));
        set(0o640).unwrap();
        assert_eq!(secret_readable_by_others(&path, secret), Some(0o640));
        set(0o600).unwrap();
        assert_eq!(secret_readable_by_others(&path, secret), None);
        set(0o644).unwrap();
        assert_eq!(
            secret_readable_by_others(&path, "[relay]\nuser = \"a\"\n"),
            None
        );
        std::fs::remove_file(&path).unwrap();
    }
}
