//! Integration tests of faxgate-scanner against real parts: SANE's `test`
//! device through `scanimage`, poppler's `pdftoppm`, a real folder written
//! slowly, and image files made by the `image` and `tiff` encoders.
//!
//! A test whose tool is missing fails with the `apt-get install` line; it
//! never passes silently.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod files;
mod hotfolder;
mod pdf;
mod sane;
