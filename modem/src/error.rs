//! What can go wrong between faxgate and a fax modem.

use std::time::Duration;

/// A modem that did not do what a command asked, or a line that failed.
#[derive(Debug, thiserror::Error)]
pub enum ModemError {
    /// The serial device could not be opened or set up.
    #[error("serial device {device}: {what}")]
    Device {
        /// The device path.
        device: String,
        /// What was being done (opening, setting raw mode).
        what: &'static str,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing the serial device failed.
    #[error("serial I/O while {what}")]
    Io {
        /// What was being done.
        what: String,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// The modem closed the device (a pty whose modem process ended).
    #[error("the modem closed the serial line while {what}")]
    Closed {
        /// What was being done.
        what: String,
    },
    /// No final result code within the command's deadline.
    #[error("no answer from the modem to {command} within {}", humantime::format_duration(*waited))]
    Timeout {
        /// The command (or phase) that went unanswered.
        command: String,
        /// How long we waited.
        waited: Duration,
    },
    /// The modem answered a command with something else than expected.
    #[error("the modem answered {command} with {response:?}, expected {expected}")]
    Unexpected {
        /// The command.
        command: String,
        /// The final result code or line it gave.
        response: String,
        /// What would have been right.
        expected: &'static str,
    },
    /// The modem cannot do fax Class 1 (`AT+FCLASS=1` refused or no
    /// fax modulations listed).
    #[error("the modem does not support fax Class 1: {reason}")]
    NoClass1 {
        /// What it said.
        reason: String,
    },
    /// The call could not be made: BUSY, NO ANSWER, NO DIALTONE, NO
    /// CARRIER or ERROR after ATD.
    #[error("dialing {number} failed: {result}")]
    DialFailed {
        /// The number dialed.
        number: String,
        /// The modem's result code.
        result: String,
    },
    /// More than a frame's worth of bytes before its end (DLE ETX).
    #[error("an HDLC frame from the modem exceeded {limit} octets")]
    FrameTooLong {
        /// The limit.
        limit: usize,
    },
}

impl ModemError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        ModemError::Io {
            what: what.into(),
            source,
        }
    }
}
