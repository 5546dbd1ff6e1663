//! The SMTP sender: the relay's mailer uses it to post command and cancel
//! mails to a printer's address (lettre over tokio and rustls).

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use faxgate_config::Secret;
use lettre::address::{Address, Envelope};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, CertificateStore, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport as _, Tokio1Executor};
use tracing::info;

use crate::command::{Command, Signer};
use crate::error::{ConfigError, SmtpError};
use crate::tls::{self, Tls};

/// How many [`SmtpConfig::timeout`]s a whole submission may take. lettre
/// applies its timeout to the connect only, so a server that accepts the
/// connection and then stalls (in the greeting, TLS, AUTH or DATA) would
/// otherwise hold the attempt forever.
pub const SUBMISSION_TIMEOUTS: u32 = 4;

/// Where and how command mail is submitted.
#[derive(Debug, Clone)]
pub struct SmtpConfig {
    /// Submission server host name or IP literal.
    pub host: String,
    /// Port (587 for [`Tls::StartTls`], 465 for [`Tls::Implicit`]).
    pub port: u16,
    /// Connection security; STARTTLS here is required, never optional.
    pub tls: Tls,
    /// PEM file of CA certificates to trust instead of the system's
    /// roots. (Pinning is not offered: lettre cannot pin.)
    pub ca_file: Option<PathBuf>,
    /// Login for submission, if the server wants one.
    pub user: Option<String>,
    /// Its password; prints as `MASKED`.
    pub password: Secret<String>,
    /// Name sent in EHLO; `None` sends `localhost`.
    pub hello_name: Option<String>,
    /// Deadline for connecting; the whole submission, from the greeting
    /// to QUIT, must finish within [`SUBMISSION_TIMEOUTS`] times it.
    pub timeout: Duration,
}

impl SmtpConfig {
    /// STARTTLS on `port`, system roots, no login, 30 s timeout.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
            tls: Tls::StartTls,
            ca_file: None,
            user: None,
            password: Secret::default(),
            hello_name: None,
            timeout: Duration::from_secs(30),
        }
    }

    /// Checks the values that cannot work together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.host.is_empty() {
            return Err(ConfigError::Invalid {
                field: "host",
                reason: "must not be empty".into(),
            });
        }
        tls::check_plain_allowed(self.tls, &self.host)?;
        if self.tls == Tls::None && self.user.is_some() {
            return Err(ConfigError::Invalid {
                field: "user",
                reason: "a password is never sent without TLS".into(),
            });
        }
        Ok(())
    }
}

/// Sends command mails. Cheap to clone; each send is one SMTP connection
/// that ends with QUIT.
#[derive(Clone)]
pub struct SmtpSender {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    server: String,
    /// For the whole submission.
    deadline: Duration,
}

impl std::fmt::Debug for SmtpSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpSender")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl SmtpSender {
    /// Builds the transport; reads the CA file now, so a bad path fails
    /// at start-up rather than at the first mail.
    pub fn new(config: &SmtpConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let tls = match config.tls {
            Tls::None => lettre::transport::smtp::client::Tls::None,
            Tls::Implicit => lettre::transport::smtp::client::Tls::Wrapper(tls_parameters(config)?),
            Tls::StartTls => {
                lettre::transport::smtp::client::Tls::Required(tls_parameters(config)?)
            }
        };
        // `builder_dangerous` only means "no TLS unless set": TLS is set
        // right here, and `Tls::None` passed `validate` only for loopback.
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.host)
            .port(config.port)
            .tls(tls)
            .timeout(Some(config.timeout));
        if let Some(user) = &config.user {
            builder = builder.credentials(Credentials::new(
                user.clone(),
                config.password.expose().clone(),
            ));
        }
        if let Some(name) = &config.hello_name {
            builder = builder.hello_name(ClientId::Domain(name.clone()));
        }
        Ok(Self {
            transport: builder.build(),
            server: format!("{}:{}", config.host, config.port),
            deadline: config.timeout.saturating_mul(SUBMISSION_TIMEOUTS),
        })
    }

    /// Signs `command`, writes it as a mail from `from` to `to` dated
    /// `now`, and submits it.
    pub async fn send_command(
        &self,
        command: &Command,
        signer: &Signer,
        from: &str,
        to: &str,
        now: SystemTime,
    ) -> Result<(), SmtpError> {
        let message = command.to_message(signer, from, to, now)?;
        self.send_raw(from, to, &message).await?;
        info!(
            server = %self.server,
            kind = %command.kind,
            printer = %command.printer,
            to,
            "Command mail sent."
        );
        Ok(())
    }

    /// Submits an already written RFC 5322 message.
    pub async fn send_raw(&self, from: &str, to: &str, message: &[u8]) -> Result<(), SmtpError> {
        let envelope = Envelope::new(Some(address(from)?), vec![address(to)?]).map_err(|e| {
            SmtpError::Address {
                address: to.to_owned(),
                reason: e.to_string(),
            }
        })?;
        tokio::time::timeout(self.deadline, self.transport.send_raw(&envelope, message))
            .await
            .map_err(|_| SmtpError::Stalled {
                server: self.server.clone(),
                after: self.deadline,
            })??;
        Ok(())
    }
}

fn address(s: &str) -> Result<Address, SmtpError> {
    s.parse()
        .map_err(|e: lettre::address::AddressError| SmtpError::Address {
            address: s.to_owned(),
            reason: e.to_string(),
        })
}

fn tls_parameters(config: &SmtpConfig) -> Result<TlsParameters, ConfigError> {
    let mut params = TlsParameters::builder(config.host.clone());
    if let Some(path) = &config.ca_file {
        let pem = std::fs::read(path).map_err(|source| {
            ConfigError::Tls(faxgate_relay::tls::TlsError::Io {
                what: "cannot read CA file",
                path: path.clone(),
                source,
            })
        })?;
        params = params
            .certificate_store(CertificateStore::None)
            .add_root_certificate(Certificate::from_pem(&pem)?);
    }
    Ok(params.build_rustls()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_smtp_only_to_loopback_and_never_with_a_password() {
        let mut c = SmtpConfig::new("127.0.0.1", 2525);
        c.tls = Tls::None;
        assert!(SmtpSender::new(&c).is_ok());
        c.user = Some("relay".into());
        assert!(c.validate().is_err());
        let mut c = SmtpConfig::new("mail.example.net", 25);
        c.tls = Tls::None;
        assert!(c.validate().is_err());
        c.tls = Tls::StartTls;
        c.ca_file = Some("/nonexistent/ca.pem".into());
        assert!(SmtpSender::new(&c).is_err());
    }
}
