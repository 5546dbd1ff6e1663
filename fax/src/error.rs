//! The error type of the fax codecs.
//!
//! Damaged fax data is not an error: the decoders replace bad lines and
//! count them (see [`crate::PageSummary`]). These errors are for input
//! that cannot be a fax page at all, or for a caller's mistake.

/// What went wrong, with the context needed to find it.
#[derive(Debug, thiserror::Error)]
pub enum FaxError {
    /// Codec options that cannot work together.
    #[error("invalid codec options: {reason}")]
    InvalidOptions {
        /// Which option, and why.
        reason: String,
    },
    /// A scan line handed to an encoder is shorter than the page width needs.
    #[error("scan line {line} has {got} bytes, but width {width} needs {need}")]
    ShortLine {
        /// Zero-based line number on the page.
        line: u64,
        /// Bytes given.
        got: usize,
        /// Bytes needed.
        need: usize,
        /// Page width in pixels.
        width: u32,
    },
    /// Bytes were pushed into a decoder after `finish()`.
    #[error("data pushed into a decoder after finish()")]
    PushAfterFinish,
    /// A TIFF file that cannot be parsed.
    #[error("TIFF: {reason} (at byte {offset})")]
    TiffFormat {
        /// What is wrong.
        reason: String,
        /// Where in the file.
        offset: u64,
    },
    /// A TIFF page that is valid TIFF but not a fax page we can read.
    #[error("TIFF page {page}: {reason}")]
    TiffUnsupported {
        /// Zero-based page index.
        page: usize,
        /// What is not supported.
        reason: String,
    },
    /// A PBM file that cannot be parsed.
    #[error("PBM: {reason} (at byte {offset})")]
    Pbm {
        /// What is wrong.
        reason: String,
        /// Where in the file.
        offset: usize,
    },
    /// A page whose size does not fit the data or the codec.
    #[error("bad page geometry: {reason}")]
    Geometry {
        /// What is wrong.
        reason: String,
    },
}
