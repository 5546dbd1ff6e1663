//! faxgate-modem: the PSTN side (issue #4 and later).
//!
//! This crate will own the AT command engine, the Class 2.0 and Class 1
//! drivers, and the modem emulator used by tests.
