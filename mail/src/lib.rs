//! faxgate-mail: command mail, the wake-up path of printing through a
//! firewall (seed 000; PWG 5100.18 INFRA agents behind NAT).
//!
//! When a job waits at the relay for a printer agent that is not
//! connected, the relay's mailer sends the printer's mail address a signed
//! *command mail*; the agent, which can only make outbound connections,
//! watches its mailbox over IMAP and connects to the proxy when a valid
//! command arrives. A *cancel mail* in the same format withdraws it.
//!
//! # Layout
//!
//! - [`command`]: the format of `COMMAND-MAIL.md`. Pure (no I/O, no clock):
//!   [`Command`], [`Signer`] and [`Verifier`] (HMAC-SHA256 or Ed25519),
//!   [`Command::to_message`] and [`parse_and_verify`].
//! - [`nonces`]: the replay [`NonceCache`], in memory or backed by a nonce
//!   file so that a restarted agent still refuses a replay.
//! - [`watcher`]: the IMAP watcher actor ([`WatcherHandle`]): IDLE or
//!   polling, reconnects with backoff, files each mail into a processed or
//!   quarantine folder.
//! - [`mailer`]: the mailer actor ([`Mailer`]): turns a [`MailOrder`] into
//!   a signed command mail with a fresh nonce, sends it, retries with
//!   backoff, one task per order.
//! - [`smtp`]: [`SmtpSender`], which submits command mails.
//! - [`tls`]: the [`Tls`] mode and [`Trust`] settings both share.
//! - [`error`]: one error enum per job.
//!
//! # Channels
//!
//! Watcher. In: the IMAP server (the watcher's only input) and a
//! `CancellationToken` for shutdown. Out: a bounded
//! `mpsc::Receiver<`[`Incoming`]`>` to the owner (the agent), each carrying
//! a verified [`Command`] and a `oneshot` ack; the mail is moved to the
//! processed folder only after the ack. Status goes out on a `watch`
//! channel ([`WatcherHandle::subscribe`]).
//!
//! Mailer. In: [`MailOrder`]s through its handle ([`Mailer::send`], a
//! bounded `mpsc`) and a `CancellationToken`. Out: each step
//! ([`MailReport`]: sent, retrying, gave up) on a bounded
//! `mpsc::Receiver` to its owner (the relay or the CLI). Only the
//! per-order tasks wait for the owner to read a report, never the loop
//! that takes orders, so the two channels make no cycle. Underneath, [`SmtpSender::send_command`] is a plain async
//! call.

#![warn(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod command;
pub mod error;
pub mod mailer;
pub mod nonces;
pub mod smtp;
pub mod tls;
pub mod watcher;

pub use command::{Command, Kind, Scheme, Signer, Verifier, parse_and_verify};
pub use error::{
    CommandError, ConfigError, KeyError, MailerClosed, NonceFileError, SmtpError, WatcherError,
};
pub use mailer::{MailOrder, MailReport, Mailer, MailerConfig, SignerLookup};
pub use nonces::NonceCache;
pub use smtp::{SmtpConfig, SmtpSender};
pub use tls::{Tls, Trust};
pub use watcher::{Incoming, WatcherConfig, WatcherHandle, WatcherState, WatcherStatus};
