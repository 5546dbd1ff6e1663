//! The error type of the page sources and the conversion.
//!
//! Every variant names what was being read (a file, a page, a device) and,
//! for external tools, the tool and what it said on stderr, so that an
//! operator can act on the message alone.

use std::path::PathBuf;
use std::time::Duration;

/// What went wrong while reading, scanning or converting a document.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// A file or folder could not be read, written or moved.
    #[error("{path}: {action}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What we were doing ("reading", "moving to done/", ...).
        action: &'static str,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The bytes are none of the formats we read.
    #[error(
        "{name}: unknown image format (starts with {magic}); expected PNG, JPEG, TIFF, PBM/PGM/PPM or PDF"
    )]
    UnknownFormat {
        /// The document's name.
        name: String,
        /// The first bytes, hex.
        magic: String,
    },
    /// An image of a known format that could not be decoded.
    #[error("{name}: page {page}: cannot decode {format}: {reason}")]
    Decode {
        /// The document's name.
        name: String,
        /// One-based page number.
        page: usize,
        /// The format ("PNG", "TIFF", ...).
        format: &'static str,
        /// The decoder's message.
        reason: String,
    },
    /// An image whose size we refuse (zero, or absurdly large).
    #[error("{name}: page {page}: unusable image size {width}x{height}: {reason}")]
    Geometry {
        /// The document's name.
        name: String,
        /// One-based page number.
        page: usize,
        /// Source width in pixels.
        width: u64,
        /// Source height in pixels.
        height: u64,
        /// Why it is refused.
        reason: String,
    },
    /// A file larger than we read.
    #[error("{name}: the file is too large: {size} bytes, more than the {limit} allowed")]
    TooLarge {
        /// The file's name.
        name: String,
        /// Its size in bytes as seen (a file still growing may be larger).
        size: u64,
        /// The most we read.
        limit: u64,
    },
    /// A document with more pages than one document may have.
    #[error(
        "{name}: {}{pages} pages, more than the {limit} allowed in one document",
        at_least_prefix(.at_least)
    )]
    TooManyPages {
        /// The document's name.
        name: String,
        /// Its page count, or the pages seen so far when `at_least`.
        pages: usize,
        /// The file does not state its page count; it has at least `pages`.
        at_least: bool,
        /// The most pages allowed.
        limit: usize,
    },
    /// A document whose pages would take more memory than one document
    /// may: the pages are kept as bitmaps (one bit a pixel) until the
    /// document is stored, and a small file can claim huge pages.
    #[error(
        "{name}: page {page} ({width}x{height} pels) brings the document to {total} bytes of bitmaps, more than the {limit} allowed in one document (one bit a pixel); send it in parts"
    )]
    TooMuchDecoded {
        /// The document's name.
        name: String,
        /// One-based number of the page that crossed the limit.
        page: usize,
        /// That page's width in pixels.
        width: u32,
        /// That page's height in pixels.
        height: u32,
        /// The document's bitmap bytes with that page.
        total: u64,
        /// The most bitmap bytes one document may have.
        limit: u64,
    },
    /// Reading and converting a document took longer than its deadline.
    #[error("{name}: gave up after {limit:?}: reading and converting the document took too long")]
    DeadlineExceeded {
        /// The document's name.
        name: String,
        /// The deadline.
        limit: Duration,
    },
    /// The conversion task stopped unexpectedly (a bug, not bad input).
    #[error("{name}: the conversion stopped unexpectedly: {reason}")]
    TaskFailed {
        /// The document's name.
        name: String,
        /// What the task runtime said.
        reason: String,
    },
    /// An external program we need is not installed.
    #[error(
        "{tool} is not installed (needed for {purpose}): apt-get install -y --no-install-recommends {package}"
    )]
    ToolMissing {
        /// The program.
        tool: String,
        /// What it is needed for.
        purpose: &'static str,
        /// The Debian package that has it.
        package: &'static str,
    },
    /// An external program ran but failed.
    #[error("{tool} failed on {subject} ({status}): {stderr}")]
    ToolFailed {
        /// The program.
        tool: String,
        /// The file or device it worked on.
        subject: String,
        /// Its exit status, or "timed out".
        status: String,
        /// What it wrote to stderr (trimmed).
        stderr: String,
    },
    /// A document without any page.
    #[error("{name}: the document has no pages")]
    NoPages {
        /// The document's name.
        name: String,
    },
    /// Every page was blank and blank pages are dropped.
    #[error("{name}: all {pages} pages are blank (blank-page drop is on)")]
    AllBlank {
        /// The document's name.
        name: String,
        /// How many pages there were.
        pages: usize,
    },
    /// Options that cannot work.
    #[error("invalid scanner options: {reason}")]
    InvalidOptions {
        /// Which option, and why.
        reason: String,
    },
    /// The actor behind a handle has stopped.
    #[error("the {actor} actor has stopped")]
    ActorStopped {
        /// Which actor.
        actor: &'static str,
    },
}

/// "at least " for page counts that are a lower bound.
fn at_least_prefix(at_least: &bool) -> &'static str {
    if *at_least { "at least " } else { "" }
}

/// The action of an I/O error creating one of our own temporary folders
/// (a full or read-only `/tmp`): nothing to do with the document.
pub(crate) const CREATING_TEMP_FOLDER: &str = "creating a temporary folder";

/// The action of an I/O error writing a file of ours into such a folder.
pub(crate) const WRITING_TEMP_FILE: &str = "writing a temporary copy";

impl ScanError {
    /// Whether the failure may pass by itself, so that reading the same
    /// file again later may work: the deadline ran out (the appliance may
    /// have been busy), or a temporary folder or file of ours could not
    /// be made.
    /// Errors about the document itself (unreadable, too many pages, too
    /// large) are not: reading it again gives the same answer.
    pub fn is_transient(&self) -> bool {
        match self {
            ScanError::DeadlineExceeded { .. } => true,
            ScanError::Io { action, .. } => {
                *action == CREATING_TEMP_FOLDER || *action == WRITING_TEMP_FILE
            }
            _ => false,
        }
    }

    /// An I/O error with its path and action.
    pub(crate) fn io(
        path: impl Into<PathBuf>,
        action: &'static str,
        source: std::io::Error,
    ) -> Self {
        ScanError::Io {
            path: path.into(),
            action,
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_failures_that_may_pass_are_transient() {
        let io = |action| ScanError::io("/tmp", action, std::io::Error::other("full"));
        let table = [
            (
                ScanError::DeadlineExceeded {
                    name: "a".into(),
                    limit: Duration::from_secs(1),
                },
                true,
            ),
            (io(CREATING_TEMP_FOLDER), true),
            (io(WRITING_TEMP_FILE), true),
            (io("reading"), false),
            (
                ScanError::TooMuchDecoded {
                    name: "a".into(),
                    page: 2,
                    width: 1728,
                    height: 80_000,
                    total: 1 << 30,
                    limit: 512 << 20,
                },
                false,
            ),
            (
                ScanError::TooManyPages {
                    name: "a".into(),
                    pages: 2,
                    at_least: false,
                    limit: 1,
                },
                false,
            ),
            (ScanError::NoPages { name: "a".into() }, false),
        ];
        for (e, want) in table {
            assert_eq!(e.is_transient(), want, "{e}");
        }
    }
}
