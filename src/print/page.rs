//! A fax page as the output stage holds it: the CCITT-coded data plus the
//! geometry and resolution needed to put it on paper at its true size.
//!
//! Pages stay coded. A decoded A4 page at 204x196 dpi is about 0.5 MB as
//! packed bits (4 MB at 8 bits per pixel); coded it is a few tens of KB,
//! and the PDF renderer passes the coded bytes straight through.

use faxgate_fax::tiff::{TiffCompression, TiffReader};
use faxgate_fax::{
    Bitmap, Coding, DecodeEvent, Decoder, DecoderOptions, EncoderOptions, FaxError, Resolution,
};

/// The resolution used for pages whose file does not say (PBM input).
pub const DEFAULT_DPI: (u32, u32) = (204, 196);

/// How a page's data is coded, in the terms a PDF /CCITTFaxDecode filter
/// needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageCoding {
    /// T.4 MH with an EOL before every line (PDF K = 0, EndOfLine).
    Mh {
        /// EOLs end on byte boundaries (T.4 fill; PDF EncodedByteAlign).
        fill: bool,
    },
    /// T.4 MR with an EOL and tag bit before every line (PDF K > 0).
    Mr {
        /// The K parameter (at least 1).
        k: u32,
        /// EOLs end on byte boundaries.
        fill: bool,
    },
    /// T.6 MMR ending in EOFB (PDF K = -1).
    Mmr,
}

impl PageCoding {
    /// The `faxgate-fax` coding scheme.
    pub fn coding(self) -> Coding {
        match self {
            PageCoding::Mh { .. } => Coding::Mh,
            PageCoding::Mr { k, .. } => Coding::Mr { k },
            PageCoding::Mmr => Coding::Mmr,
        }
    }

    /// The options under which data of this coding was produced (TIFF
    /// strip framing: EOLs for MH/MR, no RTC; EOFB for MMR).
    pub fn encoder_options(self, width: u32) -> EncoderOptions {
        let mut o = EncoderOptions::tiff(self.coding(), width);
        o.byte_align_eol = matches!(
            self,
            PageCoding::Mh { fill: true } | PageCoding::Mr { fill: true, .. }
        );
        o
    }
}

/// One coded bilevel page with its resolution.
#[derive(Clone, PartialEq, Eq)]
pub struct FaxPage {
    width: u32,
    height: u32,
    dpi: (u32, u32),
    coding: PageCoding,
    data: Vec<u8>,
}

impl std::fmt::Debug for FaxPage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaxPage")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("dpi", &self.dpi)
            .field("coding", &self.coding)
            .field("bytes", &self.data.len())
            .finish()
    }
}

impl FaxPage {
    /// Codes a bitmap. `coding` MR with `k == 0` takes the K that T.4
    /// recommends for the vertical resolution.
    pub fn from_bitmap(bmp: &Bitmap, dpi: (u32, u32), coding: Coding) -> Result<Self, FaxError> {
        if bmp.width() == 0 || bmp.height() == 0 {
            return Err(FaxError::Geometry {
                reason: format!("empty page {}x{}", bmp.width(), bmp.height()),
            });
        }
        if dpi.0 == 0 || dpi.1 == 0 {
            return Err(FaxError::Geometry {
                reason: format!("resolution {}x{} dpi", dpi.0, dpi.1),
            });
        }
        let coding = match coding {
            Coding::Mh => PageCoding::Mh { fill: false },
            Coding::Mr { k } => PageCoding::Mr {
                k: if k == 0 {
                    if dpi.1 < 150 { 2 } else { 4 }
                } else {
                    k
                },
                fill: false,
            },
            Coding::Mmr => PageCoding::Mmr,
        };
        let data = bmp.encode(coding.encoder_options(bmp.width()))?;
        Ok(FaxPage {
            width: bmp.width(),
            height: bmp.height(),
            dpi,
            coding,
            data,
        })
    }

    /// Takes coded data as it is, for pages that arrive coded (a TIFF
    /// strip, a received fax). The data must be what
    /// [`PageCoding::encoder_options`] describes.
    pub fn from_coded(
        width: u32,
        height: u32,
        dpi: (u32, u32),
        coding: PageCoding,
        data: Vec<u8>,
    ) -> Result<Self, FaxError> {
        if width == 0 || width > faxgate_fax::MAX_WIDTH || height == 0 || dpi.0 == 0 || dpi.1 == 0 {
            return Err(FaxError::Geometry {
                reason: format!("page {width}x{height} at {}x{} dpi", dpi.0, dpi.1),
            });
        }
        if let PageCoding::Mr { k: 0, .. } = coding {
            return Err(FaxError::InvalidOptions {
                reason: "MR needs K >= 1".into(),
            });
        }
        Ok(FaxPage {
            width,
            height,
            dpi,
            coding,
            data,
        })
    }

    /// Every page of a TIFF-F (or any bilevel TIFF) file.
    ///
    /// A page whose single strip is already in a form a PDF reader takes
    /// (MSB-first, min-is-white, MH/MR with EOLs or MMR) keeps its bytes;
    /// any other layout is decoded and coded again as MMR.
    pub fn from_tiff(file: &[u8]) -> Result<Vec<FaxPage>, FaxError> {
        let reader = TiffReader::new(file)?;
        let mut pages = Vec::with_capacity(reader.pages().len());
        for (i, p) in reader.pages().iter().enumerate() {
            let dpi = tiff_dpi(
                p.resolution,
                p.x_resolution,
                p.y_resolution,
                p.resolution_unit,
            );
            let strips = reader.strips(i);
            let fill = p.t4_options & faxgate_fax::tiff::T4_FILL_BITS != 0;
            let direct = match (p.compression, p.coding) {
                (TiffCompression::Group3, Coding::Mh) => Some(PageCoding::Mh { fill }),
                // TIFF does not record MR's K; any K >= 1 reads the same,
                // because every line carries its own 1-D/2-D tag bit.
                (TiffCompression::Group3, Coding::Mr { .. }) => Some(PageCoding::Mr { k: 4, fill }),
                (TiffCompression::Group4, Coding::Mmr) if p.t6_options == 0 => {
                    Some(PageCoding::Mmr)
                }
                _ => None,
            };
            let complete = strips.len() == 1 && p.rows_per_strip >= p.height;
            match direct {
                Some(coding)
                    if complete
                        && p.fill_order == 1
                        && p.photometric == 0
                        && p.t4_options & faxgate_fax::tiff::T4_UNCOMPRESSED == 0 =>
                {
                    pages.push(FaxPage::from_coded(
                        p.width,
                        p.height,
                        dpi,
                        coding,
                        strips[0].to_vec(),
                    )?);
                }
                _ => {
                    let (bmp, _) = reader.decode_page(i)?;
                    pages.push(FaxPage::from_bitmap(&bmp, dpi, Coding::Mmr)?);
                }
            }
        }
        Ok(pages)
    }

    /// Pixels per line.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Lines.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// (horizontal, vertical) dots per inch.
    pub fn dpi(&self) -> (u32, u32) {
        self.dpi
    }

    /// The fax resolution, if the page has one of the five.
    pub fn resolution(&self) -> Option<Resolution> {
        Resolution::from_dpi(f64::from(self.dpi.0), f64::from(self.dpi.1))
    }

    /// The coding of [`FaxPage::data`].
    pub fn coding(&self) -> PageCoding {
        self.coding
    }

    /// The coded bytes.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Page size in PostScript points (1/72 inch), as the largest `f32`
    /// strictly below the exact size. Renderers size the raster as
    /// ceil(points x dpi / 72): a value a hair above the exact size (1728
    /// px at 300 dpi is 414.72 pt, whose nearest f32 is above it) adds a
    /// pixel column, and poppler resamples an image that maps to a whole
    /// number of pixels exactly (36 pt at 300 dpi) off by a pixel here and
    /// there; one ULP below renders pixel-identical (tested with
    /// pdftoppm at every fax resolution).
    pub fn size_pt(&self) -> (f32, f32) {
        let down = |px: u32, dpi: u32| {
            let exact = f64::from(px) * 72.0 / f64::from(dpi);
            let mut v = exact as f32;
            while f64::from(v) >= exact && v > 0.0 {
                v = f32::from_bits(v.to_bits() - 1);
            }
            v
        };
        (down(self.width, self.dpi.0), down(self.height, self.dpi.1))
    }

    /// Decodes the page line by line (1 = black), in bounded memory.
    pub fn decode_lines(&self, mut line: impl FnMut(&[u8])) -> Result<(), FaxError> {
        let o = self.coding.encoder_options(self.width);
        let mut dec = Decoder::new(DecoderOptions {
            coding: o.coding,
            width: self.width,
            eol: o.eol,
            byte_align_rows: false,
            rows: Some(u64::from(self.height)),
        })?;
        dec.push(&self.data)?;
        dec.finish();
        let mut n = 0u32;
        while let Some(DecodeEvent::Line { pixels, .. }) = dec.next_line()? {
            line(&pixels[..self.width.div_ceil(8) as usize]);
            n += 1;
        }
        // A short page is padded white, as the TIFF reader does.
        let blank = vec![0u8; self.width.div_ceil(8) as usize];
        for _ in n..self.height {
            line(&blank);
        }
        Ok(())
    }

    /// The length in rows of the paper a page of this width is printed
    /// on: A4 (297 mm) up to 220 mm wide (T.4's 1728 dots), B4 (364 mm)
    /// up to 265 mm (2048 dots), A3 (420 mm) beyond (2432 dots).
    pub fn sheet_rows(&self) -> u32 {
        let width_mm = f64::from(self.width) * 25.4 / f64::from(self.dpi.0);
        let length_mm = if width_mm <= 220.0 {
            297.0
        } else if width_mm <= 265.0 {
            364.0
        } else {
            420.0
        };
        (length_mm / 25.4 * f64::from(self.dpi.1)).round() as u32
    }

    /// Whether the page is too long for one sheet of its paper: more than
    /// 10% longer (a little longer is scaled to fit, as fax machines do).
    pub fn longer_than_paper(&self) -> bool {
        u64::from(self.height) * 10 > u64::from(self.sheet_rows()) * 11
    }

    /// The page as sheets of its paper. T.4 pages have no length limit
    /// (a roll); a fax machine prints one longer than its paper across
    /// several sheets, so such a page is cut into sheets of the paper's
    /// length, each coded again in the page's coding. Any other page is
    /// returned as it is. Decodes one sheet at a time.
    pub fn into_sheets(self) -> Result<Vec<FaxPage>, FaxError> {
        if !self.longer_than_paper() {
            return Ok(vec![self]);
        }
        let rows = self.sheet_rows().max(1);
        let coding = self.coding.coding();
        let mut sheets = Vec::new();
        let mut sheet = Bitmap::with_width(self.width);
        let mut failed = None;
        self.decode_lines(|l| {
            if failed.is_some() {
                return;
            }
            sheet.push_row(l);
            if sheet.height() == rows {
                let full = std::mem::replace(&mut sheet, Bitmap::with_width(self.width));
                match FaxPage::from_bitmap(&full, self.dpi, coding) {
                    Ok(p) => sheets.push(p),
                    Err(e) => failed = Some(e),
                }
            }
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        if sheet.height() > 0 {
            sheets.push(FaxPage::from_bitmap(&sheet, self.dpi, coding)?);
        }
        Ok(sheets)
    }

    /// Decodes the whole page.
    pub fn to_bitmap(&self) -> Result<Bitmap, FaxError> {
        let mut bmp = Bitmap::with_width(self.width);
        self.decode_lines(|l| bmp.push_row(l))?;
        Ok(bmp)
    }
}

/// The resolution of a TIFF page in dpi: the fax resolution it amounts
/// to, else its tags converted to inches, else [`DEFAULT_DPI`].
fn tiff_dpi(fax: Option<Resolution>, x: Option<f64>, y: Option<f64>, unit: u16) -> (u32, u32) {
    if let Some(r) = fax {
        return r.dpi();
    }
    let scale = if unit == 3 { 2.54 } else { 1.0 };
    match (x, y) {
        (Some(x), Some(y)) if x > 0.0 && y > 0.0 && unit != 1 => {
            ((x * scale).round() as u32, (y * scale).round() as u32)
        }
        _ => DEFAULT_DPI,
    }
}

/// Scales a bitmap from one resolution to another (nearest neighbour,
/// which keeps a bilevel page bilevel and is exact for integer ratios).
pub fn rescale(bmp: &Bitmap, from: (u32, u32), to: (u32, u32)) -> Bitmap {
    if from == to || from.0 == 0 || from.1 == 0 {
        return bmp.clone();
    }
    let w = (u64::from(bmp.width()) * u64::from(to.0)).div_ceil(u64::from(from.0)) as u32;
    let h = (u64::from(bmp.height()) * u64::from(to.1)).div_ceil(u64::from(from.1)) as u32;
    let mut out = Bitmap::new(w.max(1), h.max(1));
    // Source column for each output column, computed once.
    let xs: Vec<u32> = (0..out.width())
        .map(|x| {
            ((u64::from(x) * u64::from(from.0)) / u64::from(to.0)).min(u64::from(bmp.width() - 1))
                as u32
        })
        .collect();
    for y in 0..out.height() {
        let sy = ((u64::from(y) * u64::from(from.1)) / u64::from(to.1))
            .min(u64::from(bmp.height() - 1)) as u32;
        for (x, &sx) in xs.iter().enumerate() {
            if bmp.pixel(sx, sy) {
                out.set_pixel(x as u32, y, true);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use faxgate_fax::tiff::{TiffWriterOptions, write_tiff};

    /// A roll five thousand fine rows long (2.2 A4 sheets) is cut into
    /// sheets of A4 length, 2292 rows at 196 dpi, in its own coding, and
    /// the sheets' rows are the page's rows; a page 5% longer than A4
    /// stays whole, and B4 and A3 widths get their own paper's length.
    #[test]
    fn a_page_longer_than_its_paper_is_cut_into_sheets() {
        let bmp = sample(1728, 5000);
        for coding in [Coding::Mh, Coding::Mr { k: 4 }, Coding::Mmr] {
            let page = FaxPage::from_bitmap(&bmp, (204, 196), coding).unwrap();
            assert_eq!(page.sheet_rows(), 2292);
            let sheets = page.into_sheets().unwrap();
            let heights: Vec<u32> = sheets.iter().map(FaxPage::height).collect();
            assert_eq!(heights, [2292, 2292, 416], "{coding:?}");
            let mut rows = Bitmap::with_width(1728);
            for s in &sheets {
                assert_eq!(s.coding().coding(), coding);
                assert_eq!(s.dpi(), (204, 196));
                s.decode_lines(|l| rows.push_row(l)).unwrap();
            }
            assert!(
                rows == bmp,
                "{coding:?}: the sheets' rows differ from the page's"
            );
        }
        let a4_plus = FaxPage::from_bitmap(&sample(1728, 2400), (204, 196), Coding::Mmr).unwrap();
        assert!(!a4_plus.longer_than_paper());
        assert_eq!(a4_plus.into_sheets().unwrap().len(), 1);
        let b4 = FaxPage::from_bitmap(&sample(2048, 10), (204, 98), Coding::Mmr).unwrap();
        assert_eq!(b4.sheet_rows(), (364.0 / 25.4 * 98.0f64).round() as u32);
        let a3 = FaxPage::from_bitmap(&sample(2432, 10), (204, 98), Coding::Mmr).unwrap();
        assert_eq!(a3.sheet_rows(), (420.0 / 25.4 * 98.0f64).round() as u32);
    }

    pub(crate) fn sample(width: u32, height: u32) -> Bitmap {
        let mut b = Bitmap::new(width, height);
        for y in 0..height {
            for x in 0..width {
                // Diagonal stripes, a box and a dot grid: all run lengths.
                let black = (x + y) % 37 < 5
                    || (x > 100 && x < 300 && y > 10 && y < 40)
                    || (x % 97 == 0 && y % 13 == 0);
                if black {
                    b.set_pixel(x, y, true);
                }
            }
        }
        b
    }

    #[test]
    fn codings_round_trip() {
        let bmp = sample(1728, 60);
        for coding in [Coding::Mh, Coding::Mr { k: 0 }, Coding::Mmr] {
            let page = FaxPage::from_bitmap(&bmp, (204, 98), coding).unwrap();
            assert_eq!(page.to_bitmap().unwrap(), bmp, "{coding:?}");
        }
    }

    #[test]
    fn tiff_pages_pass_through_when_they_can() {
        let pages = [sample(1728, 40), sample(1728, 41)];
        for (coding, want) in [
            (Coding::Mh, PageCoding::Mh { fill: false }),
            (Coding::Mr { k: 0 }, PageCoding::Mr { k: 4, fill: false }),
            (Coding::Mmr, PageCoding::Mmr),
        ] {
            let file = write_tiff(
                &pages,
                coding,
                Resolution::Fine,
                TiffWriterOptions::default(),
            )
            .unwrap();
            let read = FaxPage::from_tiff(&file).unwrap();
            assert_eq!(read.len(), 2);
            for (p, b) in read.iter().zip(&pages) {
                assert_eq!(p.coding(), want);
                assert_eq!(p.dpi(), (204, 196));
                assert_eq!(&p.to_bitmap().unwrap(), b);
            }
        }
    }

    #[test]
    fn rescale_doubles_rows() {
        let bmp = sample(64, 10);
        let fine = rescale(&bmp, (204, 98), (204, 196));
        assert_eq!((fine.width(), fine.height()), (64, 20));
        for y in 0..20 {
            assert_eq!(fine.row(y), bmp.row(y / 2));
        }
        assert_eq!(rescale(&bmp, (204, 98), (204, 98)), bmp);
    }

    #[test]
    fn page_size_is_true_size() {
        let page = FaxPage::from_bitmap(&sample(1728, 98), (204, 98), Coding::Mmr).unwrap();
        let (w, h) = page.size_pt();
        assert!((w - 1728.0 * 72.0 / 204.0).abs() < 1e-3);
        assert!(h < 72.0 && (h - 72.0).abs() < 1e-3);
        for (px, dpi) in [(1728u32, 300u32), (2048, 204), (1728, 204), (120, 196)] {
            let p = FaxPage::from_bitmap(&sample(px, 4), (dpi, 98), Coding::Mmr).unwrap();
            let w = f64::from(p.size_pt().0);
            let exact = f64::from(px) * 72.0 / f64::from(dpi);
            assert!(w < exact && exact - w < 1e-4, "{px} px at {dpi} dpi: {w}");
        }
    }
}
