//! faxgate-mail: command mail (issue #5).
//!
//! This crate will own the command-mail format, its signing and
//! verification, the IMAP IDLE watcher and the SMTP sender.
