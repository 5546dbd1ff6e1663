//! TIFF-F (RFC 3949 profiles S and F) reading and writing.
//!
//! Reading takes any multipage bilevel TIFF that libtiff writes for fax:
//! Compression 2 (MH, rows byte-aligned, no EOL), 3 (MH or MR with EOLs,
//! T4Options), 4 (MMR) and 1 (uncompressed), either byte order, both fill
//! orders, any strip layout. Each strip is decoded on its own (libtiff
//! restarts the coding at every strip), with the damage tolerance of
//! [`Decoder`].
//!
//! Writing uses a small writer of our own rather than the `tiff` crate:
//! a fax page is one pre-coded strip plus a dozen fixed tags, and owning
//! the bytes lets us lay each page out as IFD, values, strip, emit pages
//! as they come (a multipage file never has to be held whole), and keep
//! the output byte-for-byte reproducible. The `tiff` crate would decode
//! G4 only and ignores FillOrder (see DESIGN.md), so reading is ours too.

use crate::bitmap::Bitmap;
use crate::decoder::{DecodeEvent, Decoder, DecoderOptions, PageEndReason, PageSummary};
use crate::encoder::EncoderOptions;
use crate::error::FaxError;
use crate::{Coding, Resolution};

const NEW_SUBFILE_TYPE: u16 = 254;
const IMAGE_WIDTH: u16 = 256;
const IMAGE_LENGTH: u16 = 257;
const BITS_PER_SAMPLE: u16 = 258;
const COMPRESSION: u16 = 259;
const PHOTOMETRIC: u16 = 262;
const FILL_ORDER: u16 = 266;
const STRIP_OFFSETS: u16 = 273;
const SAMPLES_PER_PIXEL: u16 = 277;
const ROWS_PER_STRIP: u16 = 278;
const STRIP_BYTE_COUNTS: u16 = 279;
const X_RESOLUTION: u16 = 282;
const Y_RESOLUTION: u16 = 283;
const PLANAR_CONFIGURATION: u16 = 284;
const T4_OPTIONS: u16 = 292;
const T6_OPTIONS: u16 = 293;
const RESOLUTION_UNIT: u16 = 296;
const PAGE_NUMBER: u16 = 297;
const SOFTWARE: u16 = 305;
const DATE_TIME: u16 = 306;
const BAD_FAX_LINES: u16 = 326;
const CLEAN_FAX_DATA: u16 = 327;
const CONSECUTIVE_BAD_FAX_LINES: u16 = 328;

const TYPE_ASCII: u16 = 2;
const TYPE_SHORT: u16 = 3;
const TYPE_LONG: u16 = 4;
const TYPE_RATIONAL: u16 = 5;

/// T4Options bit 0: two-dimensional coding (MR).
pub const T4_2D: u32 = 1;
/// T4Options bit 1: uncompressed mode (not supported).
pub const T4_UNCOMPRESSED: u32 = 2;
/// T4Options bit 2: fill bits so that EOLs end on byte boundaries.
pub const T4_FILL_BITS: u32 = 4;

/// Limits that keep a hostile file from making us allocate or loop forever.
const MAX_PAGES: usize = 100_000;
const MAX_STRIPS: usize = 1 << 20;
/// The most of an ASCII tag read (Software, DateTime).
const MAX_ASCII: u64 = 1024;

/// The TIFF Compression values we handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TiffCompression {
    /// 1: no compression.
    None,
    /// 2: CCITT modified Huffman, rows byte-aligned, no EOLs.
    CcittRle,
    /// 3: T.4 (MH or MR per T4Options), EOL before every row.
    Group3,
    /// 4: T.6 (MMR).
    Group4,
}

/// One page (IFD) of a TIFF file, as far as fax cares.
#[derive(Clone, Debug, PartialEq)]
pub struct TiffPage {
    /// ImageWidth.
    pub width: u32,
    /// ImageLength.
    pub height: u32,
    /// Compression.
    pub compression: TiffCompression,
    /// The coding of the strips (MR's K is not recorded in TIFF; 0 here).
    pub coding: Coding,
    /// T4Options (0 if absent).
    pub t4_options: u32,
    /// T6Options (0 if absent).
    pub t6_options: u32,
    /// FillOrder: 1 = MSB first, 2 = LSB first.
    pub fill_order: u16,
    /// PhotometricInterpretation: 0 = min-is-white, 1 = min-is-black.
    pub photometric: u16,
    /// XResolution as stored.
    pub x_resolution: Option<f64>,
    /// YResolution as stored.
    pub y_resolution: Option<f64>,
    /// ResolutionUnit: 1 none, 2 inch, 3 centimetre.
    pub resolution_unit: u16,
    /// The fax resolution these values amount to, if any.
    pub resolution: Option<Resolution>,
    /// PageNumber (page, total).
    pub page_number: Option<(u16, u16)>,
    /// Software.
    pub software: Option<String>,
    /// DateTime.
    pub date_time: Option<String>,
    /// RowsPerStrip (the image height if absent).
    pub rows_per_strip: u32,
    /// (offset, byte count) of each strip.
    strips: Vec<(u64, u64)>,
}

/// A parsed TIFF file; pages are decoded on demand.
#[derive(Debug)]
pub struct TiffReader<'a> {
    data: &'a [u8],
    pages: Vec<TiffPage>,
}

/// Byte-order aware access to the file.
#[derive(Clone, Copy)]
struct Bytes<'a> {
    data: &'a [u8],
    le: bool,
}

impl Bytes<'_> {
    fn err(offset: u64, reason: impl Into<String>) -> FaxError {
        FaxError::TiffFormat {
            reason: reason.into(),
            offset,
        }
    }

    fn slice(&self, off: u64, len: u64) -> Result<&[u8], FaxError> {
        usize::try_from(off)
            .ok()
            .zip(usize::try_from(len).ok())
            .and_then(|(o, l)| self.data.get(o..o.checked_add(l)?))
            .ok_or_else(|| Self::err(off, format!("{len} bytes needed past the end of the file")))
    }

    fn u16(&self, off: u64) -> Result<u16, FaxError> {
        let b = self.slice(off, 2)?;
        let b = [b[0], b[1]];
        Ok(if self.le {
            u16::from_le_bytes(b)
        } else {
            u16::from_be_bytes(b)
        })
    }

    fn u32(&self, off: u64) -> Result<u32, FaxError> {
        let b = self.slice(off, 4)?;
        let b = [b[0], b[1], b[2], b[3]];
        Ok(if self.le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    }
}

/// One IFD entry, values still in the file.
#[derive(Clone, Copy, Debug)]
struct Entry {
    tag: u16,
    typ: u16,
    count: u32,
    /// Where the values are (inline in the entry or at the offset).
    at: u64,
}

impl Entry {
    fn size_of(typ: u16) -> Option<u64> {
        match typ {
            1 | 2 | 6 | 7 => Some(1),
            3 | 8 => Some(2),
            4 | 9 | 11 => Some(4),
            5 | 10 | 12 => Some(8),
            _ => None,
        }
    }

    /// The first `limit` integer values (BYTE, SHORT, LONG; all of them
    /// if fewer). Values past `limit` are never read.
    fn first_uints(&self, b: Bytes<'_>, limit: usize) -> Result<Vec<u64>, FaxError> {
        let n = (self.count as usize).min(limit);
        if n > MAX_STRIPS {
            return Err(Bytes::err(
                self.at,
                format!("tag {} has {n} values", self.tag),
            ));
        }
        (0..n as u64)
            .map(|i| match self.typ {
                1 => Ok(u64::from(b.slice(self.at + i, 1)?[0])),
                3 => Ok(u64::from(b.u16(self.at + 2 * i)?)),
                4 => Ok(u64::from(b.u32(self.at + 4 * i)?)),
                t => Err(Bytes::err(
                    self.at,
                    format!("tag {} has non-integer type {t}", self.tag),
                )),
            })
            .collect()
    }

    /// The value of a scalar tag: its first value only. TIFF 6.0 gives
    /// these tags a count of 1 (BitsPerSample: one per sample), but a
    /// larger count is read leniently rather than refused; the values
    /// past the first are never read, so a count of a million costs no
    /// more than a count of one.
    fn uint(&self, b: Bytes<'_>) -> Result<u64, FaxError> {
        self.first_uints(b, 1)?
            .first()
            .copied()
            .ok_or_else(|| Bytes::err(self.at, format!("tag {} has no value", self.tag)))
    }

    fn rational(&self, b: Bytes<'_>) -> Result<f64, FaxError> {
        match self.typ {
            5 => {
                let (n, d) = (b.u32(self.at)?, b.u32(self.at + 4)?);
                Ok(if d == 0 {
                    0.0
                } else {
                    f64::from(n) / f64::from(d)
                })
            }
            _ => Ok(self.uint(b)? as f64),
        }
    }

    /// An ASCII tag's text, up to its NUL and at most [`MAX_ASCII`]
    /// bytes: Software and DateTime are short, and a count of megabytes
    /// (shared by every IFD of the file) must not be scanned per page.
    fn ascii(&self, b: Bytes<'_>) -> Result<String, FaxError> {
        let raw = b.slice(self.at, u64::from(self.count).min(MAX_ASCII))?;
        let end = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
        Ok(String::from_utf8_lossy(&raw[..end]).into_owned())
    }
}

impl<'a> TiffReader<'a> {
    /// Parses the header and every IFD.
    pub fn new(data: &'a [u8]) -> Result<Self, FaxError> {
        let le = match data.get(..4) {
            Some([b'I', b'I', 42, 0]) => true,
            Some([b'M', b'M', 0, 42]) => false,
            _ => {
                return Err(Bytes::err(
                    0,
                    "not a TIFF file (or BigTIFF, which fax does not use)",
                ));
            }
        };
        let b = Bytes { data, le };
        let mut pages = Vec::new();
        let mut next = u64::from(b.u32(4)?);
        let mut seen = std::collections::HashSet::new();
        // Strips kept for all pages together: pages can share one strip
        // table, so a small file could otherwise declare a million strips
        // on each of its pages.
        let mut strips = 0usize;
        // Strip bytes of all pages together (each strip cut at the end of
        // the file). Strips that do not overlap fit in the file; ones that
        // do would make decoding copy the same bytes again for every strip
        // (a megabyte strip listed for each of 80,000 rows), so they are
        // refused, within a page and across pages.
        let mut strip_bytes = 0u64;
        // IFD entries of all pages together, 12 bytes each: IFDs that do
        // not overlap fit in the file. Overlapping ones (each starting an
        // entry further on) would make every page cost a whole table of
        // up to 65,535 entries, read and searched, from a few bytes each.
        let mut ifd_entries = 0u64;
        while next != 0 {
            if !seen.insert(next) || pages.len() >= MAX_PAGES {
                return Err(Bytes::err(next, "IFD chain loops"));
            }
            ifd_entries += u64::from(b.u16(next)?);
            if ifd_entries * 12 > data.len() as u64 {
                return Err(Bytes::err(
                    next,
                    format!(
                        "IFDs overlap: {ifd_entries} entries in the first {} IFDs \
                         need more than the {} bytes of the file",
                        pages.len() + 1,
                        data.len()
                    ),
                ));
            }
            let (page, after) = Self::parse_ifd(b, next, pages.len())?;
            strips += page.strips.len();
            if strips > MAX_STRIPS {
                return Err(FaxError::TiffUnsupported {
                    page: pages.len(),
                    reason: format!("the file has more than {MAX_STRIPS} strips in all"),
                });
            }
            let file_len = data.len() as u64;
            for &(off, len) in &page.strips {
                let start = off.min(file_len);
                strip_bytes =
                    strip_bytes.saturating_add(off.saturating_add(len).min(file_len) - start);
            }
            if strip_bytes > file_len {
                return Err(FaxError::TiffUnsupported {
                    page: pages.len(),
                    reason: format!(
                        "strips overlap: their byte counts add up to {strip_bytes} \
                         (this page and those before it), more than the {file_len} \
                         bytes of the file"
                    ),
                });
            }
            pages.push(page);
            next = after;
        }
        if pages.is_empty() {
            return Err(Bytes::err(4, "no pages"));
        }
        Ok(TiffReader { data, pages })
    }

    fn parse_ifd(b: Bytes<'_>, at: u64, index: usize) -> Result<(TiffPage, u64), FaxError> {
        let n = u64::from(b.u16(at)?);
        let mut entries = Vec::with_capacity(n as usize);
        for i in 0..n {
            let e = at + 2 + 12 * i;
            let (tag, typ, count) = (b.u16(e)?, b.u16(e + 2)?, b.u32(e + 4)?);
            let Some(size) = Entry::size_of(typ) else {
                continue;
            };
            let at = if size * u64::from(count) <= 4 {
                e + 8
            } else {
                u64::from(b.u32(e + 8)?)
            };
            entries.push(Entry {
                tag,
                typ,
                count,
                at,
            });
        }
        let next = u64::from(b.u32(at + 2 + 12 * n)?);
        let find = |tag| entries.iter().find(|e| e.tag == tag);
        let unsupported = |reason: String| FaxError::TiffUnsupported {
            page: index,
            reason,
        };
        let need = |tag, name: &str| find(tag).ok_or_else(|| unsupported(format!("no {name} tag")));

        let width = need(IMAGE_WIDTH, "ImageWidth")?.uint(b)?;
        let height = need(IMAGE_LENGTH, "ImageLength")?.uint(b)?;
        if width == 0 || width > u64::from(crate::MAX_WIDTH) || height > u64::from(u32::MAX) {
            return Err(unsupported(format!("size {width}x{height}")));
        }
        if height > crate::MAX_PAGE_LINES {
            return Err(unsupported(format!(
                "height {height}: a fax page has at most {} lines",
                crate::MAX_PAGE_LINES
            )));
        }
        let (width, height) = (width as u32, height as u32);
        if let Some(bps) = find(BITS_PER_SAMPLE) {
            let v = bps.uint(b)?;
            if v != 1 {
                return Err(unsupported(format!("BitsPerSample {v}, fax pages have 1")));
            }
        }
        if let Some(spp) = find(SAMPLES_PER_PIXEL) {
            let v = spp.uint(b)?;
            if v != 1 {
                return Err(unsupported(format!("SamplesPerPixel {v}")));
            }
        }
        let get = |tag, default: u64| find(tag).map_or(Ok(default), |e| e.uint(b));
        let t4_options = get(T4_OPTIONS, 0)? as u32;
        let t6_options = get(T6_OPTIONS, 0)? as u32;
        let (compression, coding) = match get(COMPRESSION, 1)? {
            1 => (TiffCompression::None, Coding::Mh),
            2 => (TiffCompression::CcittRle, Coding::Mh),
            3 if t4_options & T4_UNCOMPRESSED != 0 => {
                return Err(unsupported("T4Options uncompressed mode".into()));
            }
            3 if t4_options & T4_2D != 0 => (TiffCompression::Group3, Coding::Mr { k: 0 }),
            3 => (TiffCompression::Group3, Coding::Mh),
            4 => (TiffCompression::Group4, Coding::Mmr),
            c => return Err(unsupported(format!("Compression {c}"))),
        };
        let fill_order = get(FILL_ORDER, 1)? as u16;
        let photometric = get(PHOTOMETRIC, 0)? as u16;
        if photometric > 1 {
            return Err(unsupported(format!(
                "PhotometricInterpretation {photometric}"
            )));
        }
        let rows_per_strip =
            get(ROWS_PER_STRIP, u64::from(u32::MAX))?.clamp(1, u64::from(u32::MAX)) as u32;
        let nstrips = u64::from(height).div_ceil(u64::from(rows_per_strip)) as usize;
        // Only the strips the page uses are read (a tag may list more).
        let offsets = need(STRIP_OFFSETS, "StripOffsets")?.first_uints(b, nstrips)?;
        let counts = need(STRIP_BYTE_COUNTS, "StripByteCounts")?.first_uints(b, nstrips)?;
        if offsets.len() < nstrips || counts.len() < nstrips {
            return Err(unsupported(format!(
                "{} strip offsets and {} byte counts for {nstrips} strips",
                offsets.len(),
                counts.len()
            )));
        }
        let strips = offsets.into_iter().zip(counts).take(nstrips).collect();
        let x_resolution = find(X_RESOLUTION).map(|e| e.rational(b)).transpose()?;
        let y_resolution = find(Y_RESOLUTION).map(|e| e.rational(b)).transpose()?;
        let resolution_unit = get(RESOLUTION_UNIT, 2)? as u16;
        let resolution = match (x_resolution, y_resolution, resolution_unit) {
            (Some(x), Some(y), 2) => Resolution::from_dpi(x, y),
            (Some(x), Some(y), 3) => Resolution::from_dpi(x * 2.54, y * 2.54),
            _ => None,
        };
        let page_number = match find(PAGE_NUMBER).map(|e| e.first_uints(b, 2)).transpose()? {
            Some(v) if v.len() >= 2 => Some((v[0] as u16, v[1] as u16)),
            _ => None,
        };
        let software = find(SOFTWARE).map(|e| e.ascii(b)).transpose()?;
        let date_time = find(DATE_TIME).map(|e| e.ascii(b)).transpose()?;
        let page = TiffPage {
            width,
            height,
            compression,
            coding,
            t4_options,
            t6_options,
            fill_order,
            photometric,
            x_resolution,
            y_resolution,
            resolution_unit,
            resolution,
            page_number,
            software,
            date_time,
            rows_per_strip,
            strips,
        };
        Ok((page, next))
    }

    /// The pages, in file order.
    pub fn pages(&self) -> &[TiffPage] {
        &self.pages
    }

    /// The raw bytes of each strip of a page (truncated at the end of the
    /// file if the file is short), in file fill order.
    pub fn strips(&self, index: usize) -> Vec<&'a [u8]> {
        let Some(page) = self.pages.get(index) else {
            return Vec::new();
        };
        page.strips
            .iter()
            .map(|&(off, len)| {
                let start = usize::try_from(off)
                    .unwrap_or(usize::MAX)
                    .min(self.data.len());
                let end = usize::try_from(off.saturating_add(len))
                    .unwrap_or(usize::MAX)
                    .min(self.data.len());
                &self.data[start..end]
            })
            .collect()
    }

    /// Decodes page `index` line by line, calling `line` for each of its
    /// `height` rows (1 = black). Damage is tolerated and counted.
    pub fn decode_page_lines(
        &self,
        index: usize,
        mut line: impl FnMut(&[u8]),
    ) -> Result<PageSummary, FaxError> {
        let page = self
            .pages
            .get(index)
            .ok_or_else(|| FaxError::TiffUnsupported {
                page: index,
                reason: format!("no such page (the file has {})", self.pages.len()),
            })?;
        // Every coded row takes at least one bit (a T.6 V0), so a height
        // beyond that is a forged header, not a page to pad with blanks.
        let available: u64 = self.strips(index).iter().map(|s| s.len() as u64).sum();
        if u64::from(page.height) > available.saturating_mul(8) + 64 {
            return Err(FaxError::TiffUnsupported {
                page: index,
                reason: format!(
                    "height {} is impossible with {available} bytes of strip data",
                    page.height
                ),
            });
        }
        let stride = (page.width as usize).div_ceil(8);
        let invert = page.photometric == 1;
        let mut out = vec![0u8; stride];
        let mut total = PageSummary {
            lines: 0,
            bad_lines: 0,
            max_consecutive_bad: 0,
            end: PageEndReason::RowCount,
        };
        let mut consecutive = 0u64;
        let mut y = 0u32;
        let mut reversed = Vec::new();
        for strip in self.strips(index) {
            if y >= page.height {
                break;
            }
            let rows = page.rows_per_strip.min(page.height - y);
            let strip = if page.fill_order == 2 {
                reversed.clear();
                reversed.extend(strip.iter().map(|b| b.reverse_bits()));
                &reversed[..]
            } else {
                strip
            };
            let mut emit = |l: &[u8], bad: bool| {
                out.copy_from_slice(&l[..stride]);
                if invert {
                    out.iter_mut().for_each(|b| *b = !*b);
                    if page.width % 8 != 0 {
                        out[stride - 1] &= !(0xFFu8 >> (page.width % 8));
                    }
                }
                line(&out);
                total.lines += 1;
                if bad {
                    total.bad_lines += 1;
                    consecutive += 1;
                    total.max_consecutive_bad = total.max_consecutive_bad.max(consecutive);
                } else {
                    consecutive = 0;
                }
            };
            if page.compression == TiffCompression::None {
                for r in 0..rows as usize {
                    match strip.get(r * stride..(r + 1) * stride) {
                        Some(l) => emit(l, false),
                        None => emit(&vec![0u8; stride], true),
                    }
                }
            } else {
                let opts = DecoderOptions {
                    coding: page.coding,
                    width: page.width,
                    eol: page.compression == TiffCompression::Group3,
                    byte_align_rows: page.compression == TiffCompression::CcittRle,
                    rows: Some(u64::from(rows)),
                };
                let mut dec = Decoder::new(opts)?;
                dec.push(strip)?;
                dec.finish();
                while let Some(DecodeEvent::Line { pixels, bad }) = dec.next_line()? {
                    emit(pixels, bad);
                }
                if dec.summary().end == PageEndReason::Undecodable {
                    total.end = PageEndReason::Undecodable;
                }
            }
            y += rows;
        }
        // Strips missing altogether: white rows, counted bad.
        let blank = vec![0u8; stride];
        while y < page.height {
            line(&blank);
            total.lines += 1;
            total.bad_lines += 1;
            consecutive += 1;
            total.max_consecutive_bad = total.max_consecutive_bad.max(consecutive);
            y += 1;
        }
        Ok(total)
    }

    /// Decodes page `index` into a bitmap.
    pub fn decode_page(&self, index: usize) -> Result<(Bitmap, PageSummary), FaxError> {
        let width = self.pages.get(index).map_or(1, |p| p.width);
        let mut bmp = Bitmap::with_width(width);
        let summary = self.decode_page_lines(index, |l| bmp.push_row(l))?;
        Ok((bmp, summary))
    }
}

/// One page ready for a TIFF-F file: a single strip of coded data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedPage {
    /// Pixels per line.
    pub width: u32,
    /// Lines.
    pub height: u32,
    /// MH or MR (Compression 3, EOLs, no RTC) or MMR (Compression 4).
    pub coding: Coding,
    /// Whether EOLs are byte-aligned (T4Options bit 2).
    pub fill_bits: bool,
    /// Compression 2 (CCITT RLE: MH without EOLs, every row byte-aligned)
    /// instead of 3. Not part of TIFF-F; for readers that want it.
    pub rle: bool,
    /// The page's resolution.
    pub resolution: Resolution,
    /// The strip: exactly what [`EncodedPage::encoder_options`] produces.
    pub data: Vec<u8>,
    /// Bad lines of a received page, written as BadFaxLines,
    /// CleanFaxData and ConsecutiveBadFaxLines.
    pub damage: Option<PageSummary>,
}

impl EncodedPage {
    /// The encoder options whose output goes into a TIFF-F strip.
    pub fn encoder_options(coding: Coding, width: u32, fill_bits: bool) -> EncoderOptions {
        let mut o = EncoderOptions::tiff(coding, width);
        o.byte_align_eol = fill_bits && o.eol;
        o
    }

    /// The encoder options for a Compression 2 (CCITT RLE) strip.
    pub fn rle_encoder_options(width: u32) -> EncoderOptions {
        EncoderOptions {
            eol: false,
            byte_align_rows: true,
            ..EncoderOptions::tiff(Coding::Mh, width)
        }
    }

    /// Codes a bitmap for TIFF-F. MR uses the K that T.4 recommends for
    /// the resolution when `coding` is `Mr` with `k == 0`.
    pub fn from_bitmap(
        bmp: &Bitmap,
        coding: Coding,
        resolution: Resolution,
    ) -> Result<Self, FaxError> {
        let coding = match coding {
            Coding::Mr { k: 0 } => Coding::Mr {
                k: resolution.mr_k(),
            },
            c => c,
        };
        let data = bmp.encode(Self::encoder_options(coding, bmp.width(), false))?;
        Ok(EncodedPage {
            width: bmp.width(),
            height: bmp.height(),
            coding,
            fill_bits: false,
            rle: false,
            resolution,
            data,
            damage: None,
        })
    }
}

/// Document-wide tags for [`TiffWriter`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TiffWriterOptions {
    /// Software tag.
    pub software: Option<String>,
    /// DateTime tag, "YYYY:MM:DD HH:MM:SS" (the caller owns the clock).
    pub date_time: Option<String>,
    /// The page count for PageNumber, if known up front (else 0, which
    /// TIFF defines as "unknown").
    pub total_pages: Option<u16>,
}

/// Writes a multipage TIFF-F file page by page.
///
/// Each call returns the bytes to append to the file. A page is held
/// until the next one (or `finish`) arrives, because its IFD must say
/// whether another page follows. Layout per page: IFD, its values, strip.
#[derive(Debug)]
pub struct TiffWriter {
    opts: TiffWriterOptions,
    /// Bytes emitted so far.
    offset: u64,
    pending: Option<EncodedPage>,
    pages: u32,
}

impl TiffWriter {
    /// A writer; fails if `date_time` is not in TIFF's format.
    pub fn new(opts: TiffWriterOptions) -> Result<Self, FaxError> {
        if let Some(dt) = &opts.date_time {
            let ok = dt.len() == 19
                && dt.bytes().enumerate().all(|(i, c)| match i {
                    4 | 7 => c == b':',
                    10 => c == b' ',
                    13 | 16 => c == b':',
                    _ => c.is_ascii_digit(),
                });
            if !ok {
                return Err(FaxError::InvalidOptions {
                    reason: format!("DateTime {dt:?} is not \"YYYY:MM:DD HH:MM:SS\""),
                });
            }
        }
        Ok(TiffWriter {
            opts,
            offset: 0,
            pending: None,
            pages: 0,
        })
    }

    /// Adds a page; returns bytes to append (the header and the previous page).
    pub fn add_page(&mut self, page: EncodedPage) -> Result<Vec<u8>, FaxError> {
        if page.width == 0 || page.width > crate::MAX_WIDTH || page.height == 0 {
            return Err(FaxError::Geometry {
                reason: format!("page {}x{}", page.width, page.height),
            });
        }
        if page.rle && (page.coding != Coding::Mh || page.fill_bits) {
            return Err(FaxError::InvalidOptions {
                reason: "Compression 2 (RLE) is MH without EOLs".into(),
            });
        }
        let mut out = Vec::new();
        if self.offset == 0 {
            out.extend_from_slice(b"II*\0");
            out.extend_from_slice(&8u32.to_le_bytes());
            self.offset = 8;
        }
        if let Some(prev) = self.pending.take() {
            self.emit(prev, true, &mut out)?;
        }
        self.pending = Some(page);
        Ok(out)
    }

    /// Writes the last page; returns the final bytes.
    pub fn finish(mut self) -> Result<Vec<u8>, FaxError> {
        let mut out = Vec::new();
        match self.pending.take() {
            Some(p) => self.emit(p, false, &mut out)?,
            None => {
                return Err(FaxError::Geometry {
                    reason: "a TIFF file needs at least one page".into(),
                });
            }
        }
        Ok(out)
    }

    fn emit(&mut self, page: EncodedPage, more: bool, out: &mut Vec<u8>) -> Result<(), FaxError> {
        let start = self.offset;
        let (xdpi, ydpi) = page.resolution.dpi();
        let mut entries: Vec<(u16, u16, u32, Value)> = vec![
            (NEW_SUBFILE_TYPE, TYPE_LONG, 1, Value::Inline(2)),
            (IMAGE_WIDTH, TYPE_LONG, 1, Value::Inline(page.width)),
            (IMAGE_LENGTH, TYPE_LONG, 1, Value::Inline(page.height)),
            (BITS_PER_SAMPLE, TYPE_SHORT, 1, Value::Inline(1)),
        ];
        let g4 = matches!(page.coding, Coding::Mmr);
        let compression = match (g4, page.rle) {
            (true, _) => 4,
            (false, true) => 2,
            (false, false) => 3,
        };
        entries.push((COMPRESSION, TYPE_SHORT, 1, Value::Inline(compression)));
        entries.push((PHOTOMETRIC, TYPE_SHORT, 1, Value::Inline(0)));
        entries.push((FILL_ORDER, TYPE_SHORT, 1, Value::Inline(1)));
        entries.push((STRIP_OFFSETS, TYPE_LONG, 1, Value::StripOffset));
        entries.push((SAMPLES_PER_PIXEL, TYPE_SHORT, 1, Value::Inline(1)));
        entries.push((ROWS_PER_STRIP, TYPE_LONG, 1, Value::Inline(page.height)));
        let len = u32::try_from(page.data.len()).map_err(|_| FaxError::Geometry {
            reason: "strip over 4 GiB".into(),
        })?;
        entries.push((STRIP_BYTE_COUNTS, TYPE_LONG, 1, Value::Inline(len)));
        entries.push((X_RESOLUTION, TYPE_RATIONAL, 1, Value::Bytes(rational(xdpi))));
        entries.push((Y_RESOLUTION, TYPE_RATIONAL, 1, Value::Bytes(rational(ydpi))));
        entries.push((PLANAR_CONFIGURATION, TYPE_SHORT, 1, Value::Inline(1)));
        if g4 {
            entries.push((T6_OPTIONS, TYPE_LONG, 1, Value::Inline(0)));
        } else if !page.rle {
            let mut t4 = 0;
            if matches!(page.coding, Coding::Mr { .. }) {
                t4 |= T4_2D;
            }
            if page.fill_bits {
                t4 |= T4_FILL_BITS;
            }
            entries.push((T4_OPTIONS, TYPE_LONG, 1, Value::Inline(t4)));
        }
        entries.push((RESOLUTION_UNIT, TYPE_SHORT, 1, Value::Inline(2)));
        let total = u32::from(self.opts.total_pages.unwrap_or(0));
        entries.push((
            PAGE_NUMBER,
            TYPE_SHORT,
            2,
            Value::Inline(self.pages.min(0xFFFF) | (total << 16)),
        ));
        for (tag, s) in [
            (SOFTWARE, &self.opts.software),
            (DATE_TIME, &self.opts.date_time),
        ] {
            if let Some(s) = s {
                let mut b = s.as_bytes().to_vec();
                b.push(0);
                entries.push((tag, TYPE_ASCII, b.len() as u32, Value::Bytes(b)));
            }
        }
        if let Some(d) = page.damage {
            let sat = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
            entries.push((BAD_FAX_LINES, TYPE_LONG, 1, Value::Inline(sat(d.bad_lines))));
            entries.push((
                CLEAN_FAX_DATA,
                TYPE_SHORT,
                1,
                Value::Inline(u32::from(d.bad_lines > 0)),
            ));
            entries.push((
                CONSECUTIVE_BAD_FAX_LINES,
                TYPE_LONG,
                1,
                Value::Inline(sat(d.max_consecutive_bad)),
            ));
        }

        // IFD, then out-of-line values (each word-aligned), then the strip.
        let ifd_len = 2 + 12 * entries.len() as u64 + 4;
        let mut values = Vec::new();
        let mut value_at = Vec::with_capacity(entries.len());
        for (_, _, _, v) in &entries {
            if let Value::Bytes(b) = v
                && b.len() > 4
            {
                value_at.push(Some(start + ifd_len + values.len() as u64));
                values.extend_from_slice(b);
                if values.len() % 2 == 1 {
                    values.push(0);
                }
                continue;
            }
            value_at.push(None);
        }
        let strip_at = start + ifd_len + values.len() as u64;
        let end = strip_at + page.data.len() as u64;
        let next_ifd = end + end % 2;
        if next_ifd > u64::from(u32::MAX) {
            return Err(FaxError::Geometry {
                reason: "TIFF file over 4 GiB".into(),
            });
        }
        out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
        for ((tag, typ, count, v), at) in entries.iter().zip(&value_at) {
            out.extend_from_slice(&tag.to_le_bytes());
            out.extend_from_slice(&typ.to_le_bytes());
            out.extend_from_slice(&count.to_le_bytes());
            let field: [u8; 4] = match (v, at) {
                (_, Some(at)) => (*at as u32).to_le_bytes(),
                (Value::Inline(x), None) if *typ == TYPE_SHORT && *count == 1 => {
                    let mut f = [0u8; 4];
                    f[..2].copy_from_slice(&(*x as u16).to_le_bytes());
                    f
                }
                // Two SHORTs packed as low | high << 16 in file order.
                (Value::Inline(x), None) if *typ == TYPE_SHORT => {
                    let mut f = [0u8; 4];
                    f[..2].copy_from_slice(&(*x as u16).to_le_bytes());
                    f[2..].copy_from_slice(&((*x >> 16) as u16).to_le_bytes());
                    f
                }
                (Value::Inline(x), None) => x.to_le_bytes(),
                (Value::StripOffset, None) => (strip_at as u32).to_le_bytes(),
                (Value::Bytes(b), None) => {
                    let mut f = [0u8; 4];
                    f[..b.len()].copy_from_slice(b);
                    f
                }
            };
            out.extend_from_slice(&field);
        }
        let next = if more { next_ifd as u32 } else { 0 };
        out.extend_from_slice(&next.to_le_bytes());
        out.extend_from_slice(&values);
        out.extend_from_slice(&page.data);
        if end % 2 == 1 {
            out.push(0);
        }
        self.offset = next_ifd;
        self.pages += 1;
        Ok(())
    }
}

/// An IFD entry's value as the writer lays it out.
enum Value {
    /// A number that fits the entry.
    Inline(u32),
    /// The strip's offset, known once the IFD size is.
    StripOffset,
    /// Raw little-endian bytes, inline if 4 or fewer.
    Bytes(Vec<u8>),
}

fn rational(v: u32) -> Vec<u8> {
    [v.to_le_bytes(), 1u32.to_le_bytes()].concat()
}

/// Writes bitmaps as a TIFF-F file in one go.
pub fn write_tiff(
    pages: &[Bitmap],
    coding: Coding,
    resolution: Resolution,
    opts: TiffWriterOptions,
) -> Result<Vec<u8>, FaxError> {
    let total = u16::try_from(pages.len()).ok();
    let mut w = TiffWriter::new(TiffWriterOptions {
        total_pages: opts.total_pages.or(total),
        ..opts
    })?;
    let mut out = Vec::new();
    for p in pages {
        out.extend_from_slice(&w.add_page(EncodedPage::from_bitmap(p, coding, resolution)?)?);
    }
    out.extend_from_slice(&w.finish()?);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(seed: u64) -> Bitmap {
        let mut b = Bitmap::new(1728, 50);
        for i in 0..400u64 {
            let x = ((i * 7919 + seed * 31) % 1728) as u32;
            let y = ((i * 104729 + seed) % 50) as u32;
            b.set_pixel(x, y, true);
        }
        b
    }

    #[test]
    fn write_read_round_trip() {
        let pages = [page(1), page(2), page(3)];
        for coding in [Coding::Mh, Coding::Mr { k: 0 }, Coding::Mmr] {
            let opts = TiffWriterOptions {
                software: Some("faxgate test".into()),
                date_time: Some("2026:11:21 09:00:00".into()),
                total_pages: None,
            };
            let file = write_tiff(&pages, coding, Resolution::Fine, opts).unwrap();
            let r = TiffReader::new(&file).unwrap();
            assert_eq!(r.pages().len(), 3);
            for (i, p) in pages.iter().enumerate() {
                let info = &r.pages()[i];
                assert_eq!(info.page_number, Some((i as u16, 3)));
                assert_eq!(info.resolution, Some(Resolution::Fine));
                assert_eq!(info.software.as_deref(), Some("faxgate test"));
                assert_eq!(info.date_time.as_deref(), Some("2026:11:21 09:00:00"));
                let (bmp, sum) = r.decode_page(i).unwrap();
                assert_eq!(sum.bad_lines, 0);
                assert_eq!(&bmp, p);
            }
        }
    }

    #[test]
    fn a_page_longer_than_any_fax_is_refused() {
        let file = write_tiff(
            &[page(1)],
            Coding::Mmr,
            Resolution::Fine,
            TiffWriterOptions::default(),
        )
        .unwrap();
        let h = page(1).height();
        // The ImageLength entry: tag 0x0101, LONG, count 1, the height.
        let mut entry = vec![0x01, 0x01, 4, 0, 1, 0, 0, 0];
        entry.extend(h.to_le_bytes());
        let at = file
            .windows(entry.len())
            .position(|w| w == entry)
            .expect("the ImageLength entry");
        for claimed in [100_000u32, u32::MAX] {
            let mut bad = file.clone();
            bad[at + 8..at + 12].copy_from_slice(&claimed.to_le_bytes());
            let Err(e) = TiffReader::new(&bad) else {
                panic!("a page of {claimed} lines was accepted");
            };
            let e = e.to_string();
            assert!(
                e.contains(&format!("height {claimed}")) && e.contains("80000"),
                "{e}"
            );
        }
    }

    #[test]
    fn strips_are_budgeted_across_the_whole_file() {
        // Pages of one row each, chained, all sharing one strip table
        // (a strip per row): 40,000 strips a page, so the 27th page
        // passes the budget of 2^20 strips in all. Every IFD is built by
        // hand: 10 entries, then the next IFD's offset. The strips are
        // empty (a byte count table of zeros), so that they do not
        // overlap: only their number is over budget.
        let rows_per_page = 40_000u32;
        let pages = 30u32;
        let table_at = 8u32;
        let table_len = rows_per_page * 4;
        let counts_at = table_at + table_len;
        let ifd_len = 2 + 10 * 12 + 4;
        let first_ifd = counts_at + table_len;
        let mut f = b"II*\0".to_vec();
        f.extend(first_ifd.to_le_bytes());
        for i in 0..rows_per_page {
            f.extend((first_ifd + pages * ifd_len + i % 4).to_le_bytes());
        }
        f.extend(vec![0u8; table_len as usize]);
        for p in 0..pages {
            let next = if p + 1 == pages {
                0
            } else {
                first_ifd + (p + 1) * ifd_len
            };
            f.extend(10u16.to_le_bytes());
            let mut entry = |tag: u16, typ: u16, count: u32, value: u32| {
                f.extend(tag.to_le_bytes());
                f.extend(typ.to_le_bytes());
                f.extend(count.to_le_bytes());
                f.extend(value.to_le_bytes());
            };
            entry(256, 4, 1, 1728); // ImageWidth
            entry(257, 4, 1, rows_per_page); // ImageLength
            entry(258, 3, 1, 1); // BitsPerSample
            entry(259, 3, 1, 4); // Compression: T.6
            entry(262, 3, 1, 0); // Photometric
            entry(273, 4, rows_per_page, table_at); // StripOffsets
            entry(277, 3, 1, 1); // SamplesPerPixel
            entry(278, 4, 1, 1); // RowsPerStrip
            entry(279, 4, rows_per_page, counts_at); // StripByteCounts
            entry(293, 4, 1, 0); // T6Options
            f.extend(next.to_le_bytes());
        }
        f.extend([0u8; 8]);
        let Err(e) = TiffReader::new(&f) else {
            panic!("30 pages of 40,000 strips were accepted");
        };
        assert!(e.to_string().contains("strips in all"), "{e}");
        // The same file cut to 20 pages (800,000 strips) is read.
        let cut = first_ifd as usize + 19 * ifd_len as usize + 2 + 10 * 12;
        f[cut..cut + 4].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(TiffReader::new(&f).unwrap().pages().len(), 20);
    }

    /// A one-page little-endian MMR TIFF built by hand: `data` at byte 8,
    /// then the StripOffsets and StripByteCounts tables, then the IFD.
    fn hand_made_tiff(height: u32, data: &[u8], strips: &[(u32, u32)]) -> Vec<u8> {
        let tables_at = 8 + data.len() as u32;
        let counts_at = tables_at + 4 * strips.len() as u32;
        let ifd_at = counts_at + 4 * strips.len() as u32;
        let mut f = b"II*\0".to_vec();
        f.extend(ifd_at.to_le_bytes());
        f.extend(data);
        f.extend(strips.iter().flat_map(|s| s.0.to_le_bytes()));
        f.extend(strips.iter().flat_map(|s| s.1.to_le_bytes()));
        let n = strips.len() as u32;
        // One LONG fits in the entry: the value itself, not a table.
        let (offsets, counts) = match strips {
            [(o, c)] => (*o, *c),
            _ => (tables_at, counts_at),
        };
        let entries: [(u16, u16, u32, u32); 7] = [
            (IMAGE_WIDTH, TYPE_LONG, 1, 1728),
            (IMAGE_LENGTH, TYPE_LONG, 1, height),
            (COMPRESSION, TYPE_SHORT, 1, 4),
            (PHOTOMETRIC, TYPE_SHORT, 1, 0),
            (STRIP_OFFSETS, TYPE_LONG, n, offsets),
            (ROWS_PER_STRIP, TYPE_LONG, 1, 1),
            (STRIP_BYTE_COUNTS, TYPE_LONG, n, counts),
        ];
        f.extend((entries.len() as u16).to_le_bytes());
        for (tag, typ, count, value) in entries {
            f.extend(tag.to_le_bytes());
            f.extend(typ.to_le_bytes());
            f.extend(count.to_le_bytes());
            f.extend(value.to_le_bytes());
        }
        f.extend(0u32.to_le_bytes());
        f
    }

    #[test]
    fn overlapping_strips_are_refused() {
        // 2,000 rows of one strip each, every strip the same 100 bytes:
        // decoding would copy those bytes once per row. (At 80,000 rows
        // and a 10 MB strip that is 800 GB of copying.)
        let rows = 2_000u32;
        let data = [0xFFu8; 100];
        let shared = vec![(8, data.len() as u32); rows as usize];
        let f = hand_made_tiff(rows, &data, &shared);
        let Err(e) = TiffReader::new(&f) else {
            panic!("{rows} strips sharing one range were accepted");
        };
        let e = e.to_string();
        assert!(
            e.starts_with("TIFF page 0:")
                && e.contains("strips overlap")
                && e.contains(&format!("more than the {} bytes", f.len())),
            "{e}"
        );
        // Two pages sharing one strip of more than half the file: each
        // fits, but not both side by side. Refused at the second page.
        let big = [0xFFu8; 1000];
        let one = hand_made_tiff(1, &big, &[(8, big.len() as u32)]);
        assert_eq!(TiffReader::new(&one).unwrap().pages().len(), 1);
        let mut two = one.clone();
        let second_ifd = two.len() as u32;
        let first_ifd = u32::from_le_bytes([one[4], one[5], one[6], one[7]]) as usize;
        two.extend_from_slice(&one[first_ifd..]);
        let next_at = first_ifd + 2 + 7 * 12;
        two[next_at..next_at + 4].copy_from_slice(&second_ifd.to_le_bytes());
        let Err(e) = TiffReader::new(&two) else {
            panic!("two pages sharing one strip were accepted");
        };
        assert!(
            e.to_string().starts_with("TIFF page 1: strips overlap"),
            "{e}"
        );
        // The same rows in strips of their own are read.
        let own: Vec<(u32, u32)> = (0..100).map(|i| (8 + i, 1)).collect();
        let f = hand_made_tiff(100, &data, &own);
        let (bmp, _) = TiffReader::new(&f).unwrap().decode_page(0).unwrap();
        assert_eq!(bmp.height(), 100);
    }

    /// `count` IFDs laid over one table of 12-byte entries, IFD k
    /// starting one entry after IFD k-1 (its entry count sits in the top
    /// half of the value of the entry before it) and holding one entry
    /// more, so that each has all seven page tags and a next-IFD offset
    /// of its own (in the tag and type of an entry the later IFDs skip
    /// as of unknown type). Every IFD is a valid one-row page.
    fn overlapping_ifds(count: u32) -> Vec<u8> {
        let entry = |tag: u16, typ: u16, n: u32, value: u32| {
            let mut e = [0u8; 12];
            e[..2].copy_from_slice(&tag.to_le_bytes());
            e[2..4].copy_from_slice(&typ.to_le_bytes());
            e[4..8].copy_from_slice(&n.to_le_bytes());
            e[8..].copy_from_slice(&value.to_le_bytes());
            e
        };
        const DUMMY: u16 = 65_000;
        let x = 10u32;
        let m = count + 7;
        let mut grid = vec![entry(DUMMY, TYPE_LONG, 1, 0); (m + 2 * count - 1) as usize];
        let real = [
            entry(IMAGE_WIDTH, TYPE_LONG, 1, 1728),
            entry(IMAGE_LENGTH, TYPE_LONG, 1, 1),
            entry(COMPRESSION, TYPE_SHORT, 1, 4),
            entry(PHOTOMETRIC, TYPE_SHORT, 1, 0),
            entry(STRIP_OFFSETS, TYPE_LONG, 1, 8),
            entry(ROWS_PER_STRIP, TYPE_LONG, 1, 1),
            entry(STRIP_BYTE_COUNTS, TYPE_LONG, 1, 1),
        ];
        for (i, e) in real.into_iter().enumerate() {
            grid[count as usize + i] = e;
        }
        for k in 1..count {
            grid[(k - 1) as usize] = entry(DUMMY, TYPE_LONG, 1, (m + k) << 16);
        }
        for k in 0..count {
            let next = if k + 1 < count { x + 12 * (k + 1) } else { 0 };
            grid[(m + 2 * k) as usize][..4].copy_from_slice(&next.to_le_bytes());
        }
        let mut f = b"II*\0".to_vec();
        f.extend(x.to_le_bytes());
        f.extend([0xFF, 0]); // the strip, and a pad byte
        f.extend((m as u16).to_le_bytes());
        f.extend(grid.iter().flatten());
        f
    }

    #[test]
    fn overlapping_ifds_are_refused() {
        let one = overlapping_ifds(1);
        assert_eq!(TiffReader::new(&one).unwrap().pages().len(), 1);
        let f = overlapping_ifds(3);
        let Err(e) = TiffReader::new(&f) else {
            panic!("3 IFDs over one entry table were accepted");
        };
        let e = e.to_string();
        assert!(
            e.contains("IFDs overlap: 21 entries in the first 2 IFDs"),
            "{e}"
        );
    }

    #[test]
    fn scalar_tags_read_only_their_first_value() {
        // ImageWidth with a count of 1,000,000 LONGs, of which the file
        // holds only the first (the last 4 bytes): reading them all would
        // run off the end (and cost a million reads per IFD).
        let pages = [page(1)];
        let mut file = write_tiff(
            &pages,
            Coding::Mmr,
            Resolution::Fine,
            TiffWriterOptions::default(),
        )
        .unwrap();
        let mut entry = vec![0x00, 0x01, 4, 0, 1, 0, 0, 0];
        entry.extend(1728u32.to_le_bytes());
        let at = file
            .windows(entry.len())
            .position(|w| w == entry)
            .expect("the ImageWidth entry");
        let value_at = file.len() as u32;
        file.extend(1728u32.to_le_bytes());
        file[at + 4..at + 8].copy_from_slice(&1_000_000u32.to_le_bytes());
        file[at + 8..at + 12].copy_from_slice(&value_at.to_le_bytes());
        let r = TiffReader::new(&file).unwrap();
        assert_eq!(r.pages()[0].width, 1728);
        assert_eq!(r.decode_page(0).unwrap().0, pages[0]);

        // An ASCII tag is read up to MAX_ASCII bytes, however long.
        let long = "x".repeat(5000);
        let file = write_tiff(
            &pages,
            Coding::Mmr,
            Resolution::Fine,
            TiffWriterOptions {
                software: Some(long),
                ..Default::default()
            },
        )
        .unwrap();
        let r = TiffReader::new(&file).unwrap();
        assert_eq!(r.pages()[0].software.as_deref().map(str::len), Some(1024));
    }

    #[test]
    fn rejects_bad_headers_and_date() {
        assert!(TiffReader::new(b"II*\0\0\0\0\0").is_err());
        assert!(TiffReader::new(b"XX").is_err());
        assert!(TiffReader::new(b"II*\0\x08\0\0\0\x00\x00\x08\0\0\0").is_err());
        assert!(
            TiffWriter::new(TiffWriterOptions {
                date_time: Some("yesterday".into()),
                ..Default::default()
            })
            .is_err()
        );
    }
}
