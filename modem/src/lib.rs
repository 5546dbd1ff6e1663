//! faxgate-modem: the PSTN side, a fax modem on a serial line.
//!
//! faxgate sends and receives faxes over a telephone line through a fax
//! modem in Class 1 (ITU-T T.31): the modem modulates, and faxgate runs
//! T.30 itself with the same sans-io engine that runs its real-time fax
//! over the relay ([`faxgate_fax::t30`]), in training mode (TCF), since a
//! phone line needs it.
//!
//! # Layout
//!
//! - [`dle`]: the DLE framing of Class 1 data, and bit order (pure).
//! - [`port`]: the serial device, raw and non-blocking, as an async stream.
//! - [`class1`]: the Class 1 AT commands as async primitives: dial,
//!   answer, send and receive HDLC frames and high-speed data.
//! - [`hdlc`]: HDLC framing in software, for ECM blocks (pure).
//! - [`fax`]: one fax call, sending or receiving, driving the T.30 engine
//!   over [`class1::Class1`].
//!
//! ECM (and so MMR) works with any Class 1 modem: its blocks are
//! HDLC-framed here ([`hdlc`]) and sent as high-speed data, as HylaFAX
//! does; the modem frames only V.21.
//!
//! # Limits
//!
//! - Class 2/2.0 modems (which run T.30 themselves) are not supported.
//! - No adaptive reception (`+FAR`): the driver says whether it expects
//!   frames or page data, and falls back after a few seconds.
//! - Received V.21 frames are taken to carry their FCS octets, as
//!   spandsp and most modems deliver them.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod class1;
pub mod dle;
mod error;
pub mod fax;
pub mod hdlc;
pub mod port;

pub use error::ModemError;
