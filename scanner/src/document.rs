//! A document: the fax pages that came from one file or one scan, kept
//! together in order.

use std::path::PathBuf;

use faxgate_fax::{Bitmap, Resolution};

use crate::convert::{ConvertOptions, Paper, SourcePage, convert_page};
use crate::decode::PageSink;
use crate::error::ScanError;

/// The most source pages one document may have unless a loader says
/// otherwise ([`crate::FileLoader::max_pages`]): enough for the largest
/// feeder batch the appliance allows, and a bound on the work and memory a
/// small file claiming endless pages can cause.
pub const MAX_DOCUMENT_PAGES: usize = 1000;

/// The most bytes the pages of one document may take as bitmaps (one bit
/// a pixel) unless a loader says otherwise
/// ([`crate::FileLoader::max_decoded_bytes`]). A document's pages are all
/// held in memory until it is stored, and a small file can claim huge
/// pages (MMR codes a white line in one bit, and fax TIFF pages may share
/// one strip), so every page counts against this, and a fax TIFF's page
/// headers are checked against it before anything is decoded. 1000 A4
/// pages at fine resolution (about 494 MB) fit; it is the limit of the
/// panel's upload path too.
pub const MAX_DOCUMENT_BYTES: u64 = 512 << 20;

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
    max_pages: usize,
    /// Bitmap bytes of the pages kept so far.
    decoded: u64,
    max_decoded_bytes: u64,
}

impl DocumentBuilder {
    /// A builder that refuses more than `max_pages` source pages, and
    /// pages that take more than `max_decoded_bytes` as bitmaps in all.
    pub(crate) fn new(
        name: impl Into<String>,
        origin: Origin,
        opts: &ConvertOptions,
        max_pages: usize,
        max_decoded_bytes: u64,
    ) -> Self {
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
            max_pages,
            decoded: 0,
            max_decoded_bytes,
        }
    }

    /// Refuses a document whose stated page count is over the limit,
    /// before any page is decoded or rendered.
    pub(crate) fn expect_pages(&self, pages: usize) -> Result<(), ScanError> {
        if pages > self.max_pages {
            return Err(ScanError::TooManyPages {
                name: self.doc.name.clone(),
                pages,
                at_least: false,
                limit: self.max_pages,
            });
        }
        Ok(())
    }

    /// Refuses a document whose next source pages, of these stated sizes
    /// (width, height), would bring it over the bitmap limit at one bit a
    /// pixel, before any of them is decoded. Blank pages that would be
    /// dropped count too: their size is not known to be harmless yet.
    pub(crate) fn expect_sizes(
        &self,
        sizes: impl IntoIterator<Item = (u32, u32)>,
    ) -> Result<(), ScanError> {
        let mut total = self.decoded;
        for (i, (width, height)) in sizes.into_iter().enumerate() {
            total = total.saturating_add(bitmap_bytes(width, height));
            self.check_decoded(self.seen + i + 1, width, height, total)?;
        }
        Ok(())
    }

    /// Converts and appends the next source page; refuses one past the
    /// page limit, and a page that brings the kept bitmaps over their
    /// limit.
    pub(crate) fn push(&mut self, page: &SourcePage) -> Result<(), ScanError> {
        if self.seen >= self.max_pages {
            return Err(ScanError::TooManyPages {
                name: self.doc.name.clone(),
                pages: self.seen + 1,
                at_least: true,
                limit: self.max_pages,
            });
        }
        self.seen += 1;
        match convert_page(&self.doc.name, self.seen, page, &self.opts)? {
            Some(bmp) => {
                let total = self
                    .decoded
                    .saturating_add(bitmap_bytes(bmp.width(), bmp.height()));
                self.check_decoded(self.seen, bmp.width(), bmp.height(), total)?;
                self.decoded = total;
                self.doc.pages.push(bmp);
            }
            None => self.doc.dropped_blank.push(self.seen),
        }
        Ok(())
    }

    /// Refuses page `page` (`width` x `height`) if it brings the document
    /// to `total` bitmap bytes, over the limit.
    fn check_decoded(
        &self,
        page: usize,
        width: u32,
        height: u32,
        total: u64,
    ) -> Result<(), ScanError> {
        if total > self.max_decoded_bytes {
            return Err(ScanError::TooMuchDecoded {
                name: self.doc.name.clone(),
                page,
                width,
                height,
                total,
                limit: self.max_decoded_bytes,
            });
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

/// The bytes of a `width` x `height` bitmap, rows padded to a byte.
fn bitmap_bytes(width: u32, height: u32) -> u64 {
    u64::from(width.div_ceil(8)) * u64::from(height)
}

impl PageSink for DocumentBuilder {
    fn page_count(&mut self, pages: usize) -> Result<(), ScanError> {
        self.expect_pages(pages)
    }

    fn page_sizes(&mut self, sizes: &[(u32, u32)]) -> Result<(), ScanError> {
        self.expect_sizes(sizes.iter().copied())
    }

    fn page(&mut self, page: SourcePage) -> Result<(), ScanError> {
        self.push(&page)
    }
}

/// Hands pages on to a builder with the DPI set (a renderer or scanner
/// knows it even when its output format does not carry it).
pub(crate) struct WithDpi<'a> {
    /// Where the pages go.
    pub builder: &'a mut DocumentBuilder,
    /// Horizontal and vertical dots per inch.
    pub dpi: (f64, f64),
}

impl PageSink for WithDpi<'_> {
    fn page_count(&mut self, pages: usize) -> Result<(), ScanError> {
        self.builder.expect_pages(pages)
    }

    fn page_sizes(&mut self, sizes: &[(u32, u32)]) -> Result<(), ScanError> {
        self.builder.expect_sizes(sizes.iter().copied())
    }

    fn page(&mut self, mut page: SourcePage) -> Result<(), ScanError> {
        page.set_dpi(Some(self.dpi));
        self.builder.push(&page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::GrayPage;

    fn page() -> SourcePage {
        let mut g = vec![255u8; 100 * 100];
        g[4000..6000].fill(0);
        SourcePage::Gray(GrayPage::new(100, 100, g, None).unwrap())
    }

    #[test]
    fn page_limit_is_enforced_with_the_name_and_limit() {
        let o = ConvertOptions::default();
        let mut b = DocumentBuilder::new(
            "big.tif",
            Origin::File("big.tif".into()),
            &o,
            2,
            MAX_DOCUMENT_BYTES,
        );
        b.push(&page()).unwrap();
        b.push(&page()).unwrap();
        let e = b.push(&page()).unwrap_err();
        assert!(
            matches!(
                e,
                ScanError::TooManyPages {
                    pages: 3,
                    at_least: true,
                    limit: 2,
                    ..
                }
            ),
            "{e}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains("big.tif") && msg.contains("at least 3 pages") && msg.contains('2'),
            "{msg}"
        );
        let e = b.expect_pages(12_000).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("big.tif: 12000 pages, more than the 2 allowed"),
            "{msg}"
        );
        assert!(b.expect_pages(2).is_ok());
        assert_eq!(b.finish().unwrap().pages.len(), 2);
    }

    #[test]
    fn bitmap_limit_refuses_the_page_that_crosses_it_naming_the_limit() {
        let o = ConvertOptions::default();
        let origin = || Origin::HotFolder("in/roll.tif".into());
        let mut one = DocumentBuilder::new("roll.tif", origin(), &o, 10, MAX_DOCUMENT_BYTES);
        one.push(&page()).unwrap();
        let per_page = one.finish().unwrap().pages[0].data().len() as u64;
        let limit = per_page * 5 / 2;
        let mut b = DocumentBuilder::new("roll.tif", origin(), &o, 10, limit);
        b.push(&page()).unwrap();
        b.push(&page()).unwrap();
        let e = b.push(&page()).unwrap_err();
        let ScanError::TooMuchDecoded {
            page,
            total,
            limit: l,
            ..
        } = &e
        else {
            panic!("{e}");
        };
        assert_eq!((*page, *total, *l), (3, 3 * per_page, limit), "{e}");
        let msg = e.to_string();
        assert!(
            msg.starts_with("roll.tif: page 3 (")
                && msg.contains(&format!("more than the {limit} allowed in one document")),
            "{msg}"
        );

        // Stated sizes are refused before anything is decoded, counting
        // the pages already kept: 80 x 50 is 500 bytes.
        let b = DocumentBuilder::new("fax.tif", origin(), &o, 10, 1000);
        assert!(b.expect_sizes([(80, 50), (80, 50)]).is_ok());
        let e = b.expect_sizes([(80, 50), (80, 50), (80, 1)]).unwrap_err();
        assert!(
            matches!(
                e,
                ScanError::TooMuchDecoded {
                    page: 3,
                    width: 80,
                    height: 1,
                    total: 1010,
                    limit: 1000,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("fax.tif: page 3 (80x1 pels)"), "{e}");
    }
}
