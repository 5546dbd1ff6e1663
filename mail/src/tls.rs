//! Transport security settings shared by the IMAP watcher and the SMTP
//! sender, and the rustls client config they turn into. The certificate
//! pinning and CA loading are the relay's ([`faxgate_relay::tls`]).

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::error::ConfigError;

/// How a mail connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    /// TLS from the first byte (IMAPS 993, SMTPS/submissions 465).
    Implicit,
    /// Plain connect, then STARTTLS before any credentials are sent
    /// (IMAP 143, submission 587).
    StartTls,
    /// No TLS at all. Only accepted for a loopback host: tests and a mail
    /// server on the same machine.
    None,
}

/// Which server certificates are trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// The operating system's root certificates.
    SystemRoots,
    /// The CA certificates in this PEM file (for a private CA or a
    /// self-signed server certificate).
    CaFile(PathBuf),
    /// Exactly the certificate whose SHA-256 is this (IMAP only; lettre
    /// cannot pin).
    Pin([u8; 32]),
}

/// True for `localhost` and loopback IP literals.
pub fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Refuses [`Tls::None`] for a host that is not loopback.
pub(crate) fn check_plain_allowed(tls: Tls, host: &str) -> Result<(), ConfigError> {
    if tls == Tls::None && !is_loopback(host) {
        return Err(ConfigError::Invalid {
            field: "tls",
            reason: format!("plain (no TLS) is only allowed to a loopback host, not `{host}`"),
        });
    }
    Ok(())
}

/// The rustls client config for `trust`.
pub(crate) fn client_config(trust: &Trust) -> Result<Arc<rustls::ClientConfig>, ConfigError> {
    use faxgate_relay::tls;
    match trust {
        Trust::Pin(pin) => Ok(tls::pinned_client_config(*pin)),
        Trust::CaFile(path) => Ok(tls::ca_client_config(path)?),
        Trust::SystemRoots => {
            let loaded = rustls_native_certs::load_native_certs();
            let mut roots = rustls::RootCertStore::empty();
            let (added, _ignored) = roots.add_parsable_certificates(loaded.certs);
            if added == 0 {
                let errors: Vec<String> = loaded.errors.iter().map(|e| e.to_string()).collect();
                return Err(ConfigError::SystemRoots(if errors.is_empty() {
                    "no root certificate found (is ca-certificates installed?)".to_owned()
                } else {
                    errors.join("; ")
                }));
            }
            let config = rustls::ClientConfig::builder_with_provider(tls::provider())
                .with_safe_default_protocol_versions()
                .map_err(tls::TlsError::from)?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Ok(Arc::new(config))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for host in ["localhost", "127.0.0.1", "127.1.2.3", "::1", "[::1]"] {
            assert!(is_loopback(host), "{host}");
            assert!(check_plain_allowed(Tls::None, host).is_ok());
        }
        for host in ["mail.example.net", "10.0.0.1", "192.168.1.1", ""] {
            assert!(!is_loopback(host), "{host}");
            assert!(check_plain_allowed(Tls::None, host).is_err());
            assert!(check_plain_allowed(Tls::StartTls, host).is_ok());
        }
    }
}
