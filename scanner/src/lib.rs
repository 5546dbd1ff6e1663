//! faxgate-scanner: page sources (issue #3).
//!
//! This crate will own the page sources (files, hot folder, SANE) and the
//! conversion of scanned images to bilevel fax pages.
