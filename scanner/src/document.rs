//! A document: the fax pages that came from one file or one scan, kept
//! together in order.

use std::path::PathBuf;

use faxgate_fax::{Bitmap, Resolution};

use crate::convert::{ConvertOptions, Paper, SourcePage, convert_page};
use crate::error::ScanError;

/// Where a document came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A file read directly.
    File(PathBuf),
    /// A file dropped into a hot folder (its path there when picked up).
    HotFolder(PathBuf),
    /// A scan from a SANE device.
    Sane {
        /// The SANE device name (`test`, `epson2:libusb:001:004`, ...).
        device: String,
    },
}

/// The pages of one document, converted and ready for the fax encoder:
/// every page is `paper.line_width(resolution)` pixels wide, 1 = black,
/// rows packed MSB first.
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    /// A name for logs and job lists (the file name, or the device).
    pub name: String,
    /// Where it came from.
    pub origin: Origin,
    /// The resolution the pages were made for.
    pub resolution: Resolution,
    /// The paper size the pages were made for.
    pub paper: Paper,
    /// The pages, in order.
    pub pages: Vec<Bitmap>,
    /// One-based numbers of source pages dropped as blank.
    pub dropped_blank: Vec<usize>,
}

/// Collects pages one at a time, so that a long source (a PDF, a feeder)
/// never holds more than one grey page at once.
#[derive(Debug)]
pub(crate) struct DocumentBuilder {
    doc: Document,
    opts: ConvertOptions,
    seen: usize,
}

impl DocumentBuilder {
    pub(crate) fn new(name: impl Into<String>, origin: Origin, opts: &ConvertOptions) -> Self {
        DocumentBuilder {
            doc: Document {
                name: name.into(),
                origin,
                resolution: opts.resolution,
                paper: opts.paper,
                pages: Vec::new(),
                dropped_blank: Vec::new(),
            },
            opts: *opts,
            seen: 0,
        }
    }

    /// Converts and appends the next source page.
    pub(crate) fn push(&mut self, page: &SourcePage) -> Result<(), ScanError> {
        self.seen += 1;
        match convert_page(&self.doc.name, self.seen, page, &self.opts)? {
            Some(bmp) => self.doc.pages.push(bmp),
            None => self.doc.dropped_blank.push(self.seen),
        }
        Ok(())
    }

    /// The document, or an error if it has no page to send.
    pub(crate) fn finish(self) -> Result<Document, ScanError> {
        if self.seen == 0 {
            return Err(ScanError::NoPages {
                name: self.doc.name,
            });
        }
        if self.doc.pages.is_empty() {
            return Err(ScanError::AllBlank {
                name: self.doc.name,
                pages: self.seen,
            });
        }
        Ok(self.doc)
    }
}
