//! faxgate-scanner: page sources and their conversion to bilevel fax pages.
//!
//! This crate owns everything between paper (or a file standing in for
//! it) and the fax encoder: it turns files, hot-folder drops and SANE
//! scans into [`Document`]s whose pages are [`faxgate_fax::Bitmap`]s of
//! exactly the fax line width (1 = black, rows packed MSB first), made for
//! one [`faxgate_fax::Resolution`] and one [`Paper`] size. A multi-page
//! source stays one document.
//!
//! # Layout
//!
//! - [`convert`] (pure): placement on the page (fax width for A4/Letter,
//!   B4, A3; aspect ratio kept; source DPI used when known), box-filter
//!   resampling, text mode (adaptive threshold) and photo mode
//!   (Floyd-Steinberg), blank-page detection.
//! - [`decode`] (pure): PNG, JPEG, TIFF (multipage, bilevel fax TIFFs via
//!   [`faxgate_fax::tiff`]), netpbm; format sniffed from the bytes.
//! - [`files`]: [`FileLoader`] reads a file with tokio and converts it on
//!   the blocking pool; PDFs go through poppler's `pdftoppm`.
//! - [`sane`]: [`SaneScanner`] scans through `scanimage` (sane-utils), one
//!   page or a feeder batch.
//! - [`hotfolder`]: the [`HotFolderHandle`] actor.
//! - `error`: [`ScanError`], naming the file, page, device or tool (with
//!   its stderr) that failed, and the Debian package of a missing tool.
//!
//! # Channels
//!
//! - In: [`HotFolderHandle`] takes `HotFolderMsg`s (status, rescan) on its
//!   own bounded mpsc, with `oneshot` replies, and a `CancellationToken`
//!   for shutdown. [`FileLoader::load`] and [`SaneScanner::scan`] are plain
//!   async calls for whoever asks (the panel, the CLI).
//! - Out: the hot folder sends each [`Document`] as a [`HotFolderItem`]
//!   on a bounded `mpsc::Sender<HotFolderItem>` given to it by the
//!   topology (the fax send queue). The consumer stores the document
//!   under the item's key (a key it already stored means "already
//!   taken": no second copy after a restart) and confirms through the
//!   item's [`HotFolderAck`]; only then is the file moved to `done/`.
//!   Until then the hot folder waits, leaving further files in the
//!   folder; an item dropped unconfirmed leaves its file in `processing/`
//!   to be offered again, and [`HotFolderAck::refuse`] sends it to
//!   `failed/` with the consumer's reason.
//!
//! # Limits
//!
//! Bad input is an error naming the file (or device), the page and the
//! limit, never a panic or an allocation it dictates: files are at most
//! [`FileLoader::max_file_bytes`] and must be regular files; a document
//! has at most [`FileLoader::max_pages`] pages ([`MAX_DOCUMENT_PAGES`]),
//! checked against a stated count (PDF, fax TIFF) before decoding; its
//! pages take at most [`FileLoader::max_decoded_bytes`]
//! ([`MAX_DOCUMENT_BYTES`]) as bitmaps, one bit a pixel, checked as each
//! page is added and, for a fax TIFF, from its page headers before
//! decoding; a source page is at most [`convert::MAX_PAGE_LINES`] tall
//! and [`convert::MAX_SOURCE_PIXELS`] in all, checked from its header
//! before it is decoded; a whole file has [`FileLoader::max_duration`];
//! each tool run has a deadline and at most 256 MiB of stdout is read
//! from it.
//! Tools run in the C locale.
//!
//! # External tools
//!
//! `pdftoppm` and `pdfinfo` (poppler-utils) for PDF, `scanimage`
//! (sane-utils) for SANE. A missing tool is [`ScanError::ToolMissing`]
//! with the `apt-get install` line.

#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod convert;
pub mod decode;
mod document;
mod error;
pub mod files;
pub mod hotfolder;
pub mod sane;
mod tool;

pub use convert::{
    BlankPolicy, ConvertOptions, GrayPage, Mode, Paper, SourcePage, ThresholdParams,
};
pub use document::{Document, MAX_DOCUMENT_BYTES, MAX_DOCUMENT_PAGES, Origin};
pub use error::ScanError;
pub use files::{FileLoader, load_file};
pub use hotfolder::{
    HotFolderAck, HotFolderConfig, HotFolderHandle, HotFolderItem, HotFolderStatus,
};
pub use sane::{SaneMode, SaneOptions, SaneScanner, ScanArea};
