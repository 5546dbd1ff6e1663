//! Errors of the mail crate: one enum per job, each variant with the
//! context an operator needs (which field, which folder, which step).

use std::time::SystemTime;

/// Why a mail was not accepted as a command. Every variant except
/// [`CommandError::NotACommand`] means "someone sent a command mail that
/// must not be acted on"; the watcher quarantines the mail and logs
/// [`CommandError::code`]. Reasons never quote the mail body, so they are
/// safe to log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The mail has no text/plain part with a `faxgate-command:` line
    /// (ordinary mail, spam, a bounce).
    #[error("not a command mail: no `faxgate-command:` line in a text/plain part")]
    NotACommand,
    /// The mail is larger than any command mail can be
    /// ([`crate::command::MAX_MESSAGE_SIZE`]); it is not read.
    #[error("mail of {size} bytes is too large for a command mail (at most {max})")]
    TooLarge {
        /// Its size in bytes.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// A field is missing, out of order or has a bad value. Also returned
    /// when building a mail from a command whose fields cannot be written.
    #[error("malformed command mail: field `{field}`: {reason}")]
    Malformed {
        /// The field (`Kind`, `Proxy`, ..., `Signature`, `From`, `To`).
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The mail is signed with another scheme than the one configured
    /// for this printer.
    #[error("command mail signed with {found}, but this printer expects {expected}")]
    SchemeMismatch {
        /// The scheme the verifier holds a key for.
        expected: &'static str,
        /// The scheme named in the `Signature` line.
        found: &'static str,
    },
    /// The signature does not match the signed lines: the mail was altered
    /// or signed with another key.
    #[error("command mail signature does not verify")]
    BadSignature,
    /// A valid command for another printer.
    #[error("command mail is for printer `{found}`, this is `{expected}`")]
    WrongPrinter {
        /// This printer's name.
        expected: String,
        /// The printer named in the mail.
        found: String,
    },
    /// A valid command whose expiry has passed.
    #[error("command mail expired at {}", humantime::format_rfc3339_seconds(*expired_at))]
    Expired {
        /// When it expired.
        expired_at: SystemTime,
    },
    /// A valid command whose expiry is further away than the verifier
    /// accepts; the nonce could not be remembered that long.
    #[error(
        "command mail expires at {}, more than {max_secs} s ahead",
        humantime::format_rfc3339_seconds(*expires)
    )]
    ExpiryTooFar {
        /// The expiry in the mail.
        expires: SystemTime,
        /// The longest accepted lifetime in seconds.
        max_secs: u64,
    },
    /// A valid command whose nonce was already accepted once.
    #[error("command mail replayed: nonce {nonce} was already used")]
    Replayed {
        /// The nonce seen twice.
        nonce: String,
    },
    /// The replay cache is full of unexpired nonces, so a new one cannot be
    /// remembered; the mail is refused rather than risking a replay.
    #[error("replay cache full ({capacity} unexpired nonces); command refused")]
    ReplayCacheFull {
        /// The cache's capacity.
        capacity: usize,
    },
}

impl CommandError {
    /// A short stable name for the reason, used in logs and as the IMAP
    /// keyword (`$faxgate-<code>`) set on a quarantined mail.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotACommand => "not-a-command",
            Self::TooLarge { .. } => "too-large",
            Self::Malformed { .. } => "malformed",
            Self::SchemeMismatch { .. } => "scheme-mismatch",
            Self::BadSignature => "bad-signature",
            Self::WrongPrinter { .. } => "wrong-printer",
            Self::Expired { .. } => "expired",
            Self::ExpiryTooFar { .. } => "expiry-too-far",
            Self::Replayed { .. } => "replayed",
            Self::ReplayCacheFull { .. } => "replay-cache-full",
        }
    }
}

/// A signing or verifying key could not be made from the bytes given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// An HMAC secret shorter than [`crate::command::MIN_HMAC_SECRET`].
    #[error("HMAC secret has {len} bytes; at least {min} are needed")]
    SecretTooShort {
        /// Its length.
        len: usize,
        /// The minimum.
        min: usize,
    },
    /// An Ed25519 key that is not a 32-byte seed, a 32-byte public key or
    /// a PKCS#8 document.
    #[error("Ed25519 {what} is invalid")]
    Ed25519 {
        /// Which kind of key.
        what: &'static str,
    },
}

/// A watcher or sender configuration that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A field has a value that cannot work.
    #[error("mail config: `{field}`: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// TLS could not be set up (CA file unreadable, bad host name).
    #[error("mail config: TLS: {0}")]
    Tls(#[from] faxgate_relay::tls::TlsError),
    /// The system's root certificates could not be loaded.
    #[error("mail config: cannot load the system's root certificates: {0}")]
    SystemRoots(String),
    /// lettre refused the SMTP settings.
    #[error("mail config: SMTP: {0}")]
    Smtp(#[from] lettre::transport::smtp::Error),
}

/// Why an IMAP session ended; the watcher logs it and reconnects.
#[derive(Debug, thiserror::Error)]
pub enum WatcherError {
    /// TCP connect failed.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// host:port.
        addr: String,
        /// The error.
        source: std::io::Error,
    },
    /// The TLS handshake failed (bad certificate, wrong pin, no TLS).
    #[error("TLS handshake with {host} failed: {source}")]
    Tls {
        /// The server name.
        host: String,
        /// The error.
        source: std::io::Error,
    },
    /// The server refused the login (wrong user or password): an operator
    /// must act.
    #[error("IMAP login as {user} refused: {source}")]
    Login {
        /// The user.
        user: String,
        /// The server's answer.
        source: async_imap::error::Error,
    },
    /// An IMAP command failed or the connection broke during it.
    #[error("IMAP {during} failed: {source}")]
    Imap {
        /// The step (`SELECT INBOX`, `UID MOVE`, ...).
        during: String,
        /// The error.
        source: async_imap::error::Error,
    },
    /// A step did not finish within the I/O timeout.
    #[error("IMAP {during} timed out")]
    Timeout {
        /// The step.
        during: String,
    },
    /// The server closed the connection or sent something unexpected.
    #[error("IMAP {during}: {what}")]
    Protocol {
        /// The step.
        during: String,
        /// What happened.
        what: String,
    },
}

/// Sending a command mail failed.
#[derive(Debug, thiserror::Error)]
pub enum SmtpError {
    /// The command could not be written as a mail.
    #[error("cannot build the command mail: {0}")]
    Build(#[from] CommandError),
    /// An envelope address is invalid.
    #[error("invalid envelope address `{address}`: {reason}")]
    Address {
        /// The address.
        address: String,
        /// Why.
        reason: String,
    },
    /// The SMTP exchange failed (connection, TLS, authentication, or the
    /// server refused the mail).
    #[error("SMTP send failed: {0}")]
    Send(#[from] lettre::transport::smtp::Error),
}
