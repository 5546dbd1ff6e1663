//! Errors of the mail crate: one enum per job, each variant with the
//! context an operator needs (which field, which folder, which step).

use std::path::PathBuf;
use std::time::SystemTime;

/// Why a mail was not accepted as a command. Every variant except
/// [`CommandError::NotACommand`] and [`CommandError::NonceNotRecorded`]
/// means "someone sent a command mail that must not be acted on"; the
/// watcher quarantines the mail and logs [`CommandError::code`]. (Not a
/// command: quarantined too. Nonce not recorded: a local failure, so the
/// mail is left for another try.) Reasons never quote the mail body, so
/// they are safe to log.
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
    /// A valid command whose nonce could not be written to the nonce file
    /// (disk full, permissions, the file replaced by a directory). Unlike
    /// the other reasons this says nothing about the mail: the watcher
    /// leaves it in the mailbox and tries again, and an operator must act.
    #[error(
        "cannot record the nonce in {}: {reason}; the command is not acted on",
        path.display()
    )]
    NonceNotRecorded {
        /// The nonce file.
        path: PathBuf,
        /// The step that failed and the operating system's error.
        reason: String,
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
            Self::NonceNotRecorded { .. } => "nonce-not-recorded",
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
    /// The nonce file cannot be read, written or parsed.
    #[error("mail config: {0}")]
    NonceFile(#[from] NonceFileError),
}

/// The nonce file of a durable replay cache
/// ([`crate::NonceCache::open`]) cannot be used. The agent must not start
/// without it: it would forget which commands it has already acted on.
#[derive(Debug, thiserror::Error)]
pub enum NonceFileError {
    /// Reading, writing, syncing or renaming failed.
    #[error("nonce file {}: cannot {during}: {source}", path.display())]
    Io {
        /// The nonce file (or its temporary copy or folder).
        path: PathBuf,
        /// The step, e.g. `read`, `rename the compacted copy into place`.
        during: &'static str,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A line is not `nonce expiry_unix`. Only a last line without its
    /// line end (a write cut short by a crash) is skipped; any other bad
    /// line stops the load, because skipping it could forget a nonce and
    /// let a replay through.
    #[error(
        "nonce file {}, line {line}: {reason}; fix or delete the line (deleting a line \
         lets a replay of its command through until the command expires)",
        path.display()
    )]
    Corrupt {
        /// The nonce file.
        path: PathBuf,
        /// The line number, from 1.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
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
    /// A valid command's nonce could not be recorded in the nonce file, so
    /// the command was not handed over. The session ends, the mail stays
    /// in the mailbox, and it is tried again after a growing delay.
    #[error("command mail UID {uid} left in the mailbox: {source}")]
    NonceNotRecorded {
        /// The mail's UID.
        uid: u32,
        /// [`CommandError::NonceNotRecorded`].
        source: CommandError,
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
    /// The server took the connection but did not finish the submission
    /// in time (a transient failure: the mail is tried again).
    #[error(
        "SMTP send failed: the server at {server} did not finish the submission within {}",
        humantime::format_duration(*after)
    )]
    Stalled {
        /// host:port.
        server: String,
        /// The deadline that ran out.
        after: std::time::Duration,
    },
}

impl SmtpError {
    /// Whether trying again cannot help: the order cannot be written as a
    /// mail, or the server refused it with a 5xx reply.
    pub fn is_permanent(&self) -> bool {
        match self {
            SmtpError::Build(_) | SmtpError::Address { .. } => true,
            SmtpError::Send(e) => e.is_permanent(),
            SmtpError::Stalled { .. } => false,
        }
    }
}

/// The mailer has stopped (cancelled, or its task ended), so an order
/// could not be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the mailer has stopped; the mail order was not taken")]
pub struct MailerClosed;
