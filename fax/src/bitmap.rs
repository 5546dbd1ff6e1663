//! A bilevel page held in memory, and the one-shot helpers built on the
//! streaming coders.

use crate::decoder::{Decoder, DecoderOptions, Drawn, PageSummary};
use crate::encoder::{Encoder, EncoderOptions};
use crate::error::FaxError;

/// The most [`Bitmap::decode`] reserves before decoding (64 MiB).
const MAX_RESERVE: u64 = 64 << 20;

/// A bilevel image: rows packed MSB first, 1 = black, each row
/// `ceil(width / 8)` bytes with the padding bits zero.
///
/// This is the in-memory form for tests, tools and the output stage; the
/// coders themselves work line by line and never need a whole page.
#[derive(Clone, PartialEq, Eq)]
pub struct Bitmap {
    width: u32,
    height: u32,
    data: Vec<u8>,
}

impl std::fmt::Debug for Bitmap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bitmap")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("bytes", &self.data.len())
            .finish()
    }
}

impl Bitmap {
    /// An all-white bitmap.
    pub fn new(width: u32, height: u32) -> Self {
        let stride = (width as usize).div_ceil(8);
        Bitmap {
            width,
            height,
            data: vec![0; stride * height as usize],
        }
    }

    /// A bitmap from packed rows; padding bits past `width` are cleared.
    pub fn from_packed(width: u32, height: u32, mut data: Vec<u8>) -> Result<Self, FaxError> {
        let stride = (width as usize).div_ceil(8);
        if data.len() != stride * height as usize {
            return Err(FaxError::Geometry {
                reason: format!(
                    "{width}x{height} needs {} bytes, got {}",
                    stride * height as usize,
                    data.len()
                ),
            });
        }
        if !width.is_multiple_of(8) {
            let mask = !(0xFFu8 >> (width % 8));
            for row in data.chunks_exact_mut(stride) {
                if let Some(last) = row.last_mut() {
                    *last &= mask;
                }
            }
        }
        Ok(Bitmap {
            width,
            height,
            data,
        })
    }

    /// An empty bitmap of `width` to which rows are appended.
    pub fn with_width(width: u32) -> Self {
        Bitmap {
            width,
            height: 0,
            data: Vec::new(),
        }
    }

    /// Appends a row (`stride()` bytes; extra bytes are ignored).
    pub fn push_row(&mut self, row: &[u8]) {
        let stride = self.stride();
        let start = self.data.len();
        self.data.extend_from_slice(&row[..stride.min(row.len())]);
        self.data.resize(start + stride, 0);
        if !self.width.is_multiple_of(8)
            && let Some(last) = self.data.last_mut()
        {
            *last &= !(0xFFu8 >> (self.width % 8));
        }
        self.height += 1;
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Bytes per row.
    pub fn stride(&self) -> usize {
        (self.width as usize).div_ceil(8)
    }

    /// Row `y` (panics if `y >= height`, like slice indexing).
    pub fn row(&self, y: u32) -> &[u8] {
        let s = self.stride();
        &self.data[y as usize * s..(y as usize + 1) * s]
    }

    /// The rows, top to bottom.
    pub fn rows(&self) -> impl Iterator<Item = &[u8]> {
        self.data.chunks_exact(self.stride().max(1))
    }

    /// All packed rows.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Whether pixel (x, y) is black (panics outside the bitmap).
    pub fn pixel(&self, x: u32, y: u32) -> bool {
        self.row(y)[(x / 8) as usize] & (0x80 >> (x % 8)) != 0
    }

    /// Sets pixel (x, y) (panics outside the bitmap).
    pub fn set_pixel(&mut self, x: u32, y: u32, black: bool) {
        let i = y as usize * self.stride() + (x / 8) as usize;
        let m = 0x80u8 >> (x % 8);
        if black {
            self.data[i] |= m;
        } else {
            self.data[i] &= !m;
        }
    }

    /// Encodes the whole bitmap with `options` (whose width must match).
    pub fn encode(&self, options: EncoderOptions) -> Result<Vec<u8>, FaxError> {
        if options.width != self.width {
            return Err(FaxError::Geometry {
                reason: format!(
                    "encoder width {} but bitmap width {}",
                    options.width, self.width
                ),
            });
        }
        let mut enc = Encoder::new(options)?;
        // The whole page is in memory already, so the output is not taken
        // in pieces (which would copy it and regrow the encoder's buffer).
        for row in self.rows() {
            enc.encode_line(row)?;
        }
        Ok(enc.finish())
    }

    /// Decodes one page of coded data into a bitmap, of at most
    /// [`crate::MAX_PAGE_LINES`] lines (the page then ends
    /// [`PageEndReason::TooLong`](crate::PageEndReason::TooLong)).
    pub fn decode(data: &[u8], options: DecoderOptions) -> Result<(Bitmap, PageSummary), FaxError> {
        let mut bmp = Bitmap::with_width(options.width);
        if let Some(rows) = options.rows {
            // Room for the page up front, unless the row count is out of
            // proportion to the data (every line takes at least one bit,
            // so more rows are padding) or the page is huge: then the
            // bitmap grows as lines come.
            let likely = rows.min(data.len() as u64 * 8 + 1);
            // Plus the 8 bytes the last line is drawn with.
            let bytes = likely.saturating_mul(bmp.stride() as u64) + 8;
            if bytes <= MAX_RESERVE {
                bmp.data.reserve_exact(bytes as usize);
            }
        }
        let mut dec = Decoder::new(options)?;
        // The whole page is kept: a hostile page (every MMR bit can be a
        // line) must not grow it without bound.
        dec.limit_lines(crate::MAX_PAGE_LINES);
        dec.push(data)?;
        dec.finish();
        // Lines are drawn straight into the bitmap, not copied there, and
        // the common ones in a loop of their own.
        loop {
            bmp.height += dec.draw_clean_lines(&mut bmp.data);
            match dec.draw_next_line(&mut bmp.data) {
                Drawn::Line => bmp.height += 1,
                Drawn::End(summary) => return Ok((bmp, summary)),
                // Unreachable after finish(); stop rather than spin.
                Drawn::Need => return Ok((bmp, dec.summary())),
            }
        }
    }
}
