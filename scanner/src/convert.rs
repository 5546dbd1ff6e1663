//! Conversion of decoded images to bilevel fax pages. Pure: no I/O.
//!
//! A page goes through three steps:
//!
//! 1. **Placement** ([`placement`]): the page is scaled to the fax line
//!    width of the chosen [`Paper`] at the chosen [`Resolution`], keeping
//!    its aspect ratio. If the source's DPI is known its physical size is
//!    kept (an A4 scan at 300 dpi is 1687 pels wide at 204 dpi, centred in
//!    the 1728-pel line, as a fax machine does), shrunk only when it is
//!    wider than the line; if not, it is assumed to fill the line width.
//!    Fax pixels are not square at 204x98 and 204x196, so the height is
//!    scaled by vertical dpi over horizontal dpi.
//! 2. **Resampling** ([`resample`]): a box (area-average) filter, separable,
//!    one output row at a time, so a 300-dpi scan never needs a second full
//!    copy.
//! 3. **Binarisation**: [`Mode::Text`] uses an adaptive threshold
//!    ([`adaptive_threshold`], Bradley-Roth local mean over a sliding window
//!    kept as running column sums, i.e. an integral image one row at a time)
//!    so that text on grey or unevenly lit paper stays readable;
//!    [`Mode::Photo`] uses Floyd-Steinberg error diffusion
//!    ([`floyd_steinberg`]) so that grey levels become dot densities.
//!
//! Blank pages can be dropped: a page is blank when its ink ratio (black
//! pixels over all pixels, ignoring a margin where scanners leave edge
//! shadows) is at most [`BlankPolicy::max_ink_ratio`]. The default, 0.2% of
//! the page, is well under one short typed line (about 1%) and well over
//! the speckle of a clean scan.
//!
//! Pages that already are fax pages (bilevel, line width, and the target
//! resolution or no resolution at all) pass through untouched, so a TIFF-F
//! file is not degraded by a needless resample.

use faxgate_fax::{Bitmap, Resolution};

use crate::error::ScanError;

/// The tallest page we make, in lines: a 5-metre roll at 400 dpi. Anything
/// taller is a broken source, not a fax.
pub const MAX_PAGE_LINES: u32 = 80_000;

/// The most pixels a source page may have (256 Mi: an A3 page at 1200 dpi
/// is a third of that). Sources are checked against this and
/// [`MAX_PAGE_LINES`] before they are decoded where the format allows, so
/// that a small file claiming a huge page is refused, not allocated.
pub const MAX_SOURCE_PIXELS: u64 = 1 << 28;

/// Whether a `width` x `height` source page is one we convert: not empty,
/// at most [`MAX_PAGE_LINES`] tall and at most [`MAX_SOURCE_PIXELS`] in
/// all. The message says which limit was passed.
pub fn check_source_size(width: u32, height: u32) -> Result<(), String> {
    if width == 0 || height == 0 {
        return Err("the image is empty".into());
    }
    if height > MAX_PAGE_LINES {
        return Err(format!(
            "the page is {height} lines tall, more than the {MAX_PAGE_LINES} allowed"
        ));
    }
    let pixels = u64::from(width) * u64::from(height);
    if pixels > MAX_SOURCE_PIXELS {
        return Err(format!(
            "the page has {pixels} pixels, more than the {MAX_SOURCE_PIXELS} allowed"
        ));
    }
    Ok(())
}

/// The paper size, which fixes the fax line width (T.4 scan line lengths).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Paper {
    /// ISO A4 (215 mm scan line).
    #[default]
    A4,
    /// US Letter: same scan line as A4.
    Letter,
    /// ISO B4 (255 mm).
    B4,
    /// ISO A3 (303 mm).
    A3,
}

impl Paper {
    /// Pixels per scan line for this paper at `resolution` (T.4 Table 1:
    /// 1728/2048/2432 at 8 pels/mm, 2592/3072/3648 at 300 dpi,
    /// 3456/4096/4864 at 400 dpi).
    pub fn line_width(self, resolution: Resolution) -> u32 {
        let i = match self {
            Paper::A4 | Paper::Letter => 0,
            Paper::B4 => 1,
            Paper::A3 => 2,
        };
        let table: [u32; 3] = match resolution {
            Resolution::R300 => [2592, 3072, 3648],
            Resolution::R400 => [3456, 4096, 4864],
            Resolution::Standard | Resolution::Fine | Resolution::SuperFine => [
                faxgate_fax::width::A4,
                faxgate_fax::width::B4,
                faxgate_fax::width::A3,
            ],
        };
        table[i]
    }
}

/// How grey becomes black and white.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Mode {
    /// Adaptive threshold: crisp text, robust to grey paper and shadows.
    #[default]
    Text,
    /// Floyd-Steinberg error diffusion: grey levels as dot densities.
    Photo,
}

/// Parameters of the text-mode adaptive threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThresholdParams {
    /// Side of the square window for the local mean, in output pixels;
    /// 0 picks an eighth of the line width (27 mm), Bradley-Roth's choice.
    pub window: u32,
    /// A pixel is black when it is this many percent darker than the
    /// local mean (Bradley-Roth use 15).
    pub percent: u8,
    /// Pixels darker than this are black whatever their neighbourhood, so
    /// that solid areas wider than the window stay black.
    pub dark_floor: u8,
    /// Pixels lighter than this are white whatever their neighbourhood, so
    /// that paper texture does not turn into speckle.
    pub light_ceiling: u8,
}

impl Default for ThresholdParams {
    fn default() -> Self {
        ThresholdParams {
            window: 0,
            percent: 15,
            dark_floor: 96,
            light_ceiling: 224,
        }
    }
}

/// When a page counts as blank.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlankPolicy {
    /// Largest share of black pixels (0.0 to 1.0) that is still blank.
    pub max_ink_ratio: f64,
    /// Share of the width and of the height ignored on each edge (scanner
    /// lids and feeders leave dark borders there).
    pub margin: f64,
}

impl Default for BlankPolicy {
    fn default() -> Self {
        BlankPolicy {
            max_ink_ratio: 0.002,
            margin: 0.05,
        }
    }
}

/// Everything the conversion needs to know.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ConvertOptions {
    /// Paper size, which fixes the line width.
    pub paper: Paper,
    /// Fax resolution of the output.
    pub resolution: Resolution,
    /// Text or photo binarisation.
    pub mode: Mode,
    /// Text-mode threshold parameters.
    pub threshold: ThresholdParams,
    /// Drop blank pages when set.
    pub drop_blank: Option<BlankPolicy>,
    /// Keep the physical size given by the source's DPI (when known);
    /// when false every page is stretched to the full line width.
    pub use_source_dpi: bool,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            paper: Paper::A4,
            resolution: Resolution::Fine,
            mode: Mode::Text,
            threshold: ThresholdParams::default(),
            drop_blank: None,
            use_source_dpi: true,
        }
    }
}

impl ConvertOptions {
    /// The output line width in pixels.
    pub fn line_width(&self) -> u32 {
        self.paper.line_width(self.resolution)
    }
}

/// An 8-bit grey image (0 = black, 255 = white), one decoded source page.
#[derive(Clone, PartialEq)]
pub struct GrayPage {
    width: u32,
    height: u32,
    data: Vec<u8>,
    dpi: Option<(f64, f64)>,
}

impl std::fmt::Debug for GrayPage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrayPage")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("dpi", &self.dpi)
            .finish()
    }
}

impl GrayPage {
    /// A page from `width * height` grey bytes, row by row. `None` if the
    /// sizes do not match.
    pub fn new(width: u32, height: u32, data: Vec<u8>, dpi: Option<(f64, f64)>) -> Option<Self> {
        (data.len() as u64 == u64::from(width) * u64::from(height)).then_some(GrayPage {
            width,
            height,
            data,
            dpi: sane_dpi(dpi),
        })
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// The grey bytes, row by row.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Horizontal and vertical dots per inch, if the source said.
    pub fn dpi(&self) -> Option<(f64, f64)> {
        self.dpi
    }

    /// Sets the DPI (a scanner knows it even when its output format does not).
    pub fn set_dpi(&mut self, dpi: Option<(f64, f64)>) {
        self.dpi = sane_dpi(dpi);
    }
}

/// One decoded page of a source document, before conversion.
#[derive(Clone, Debug, PartialEq)]
pub enum SourcePage {
    /// Grey (colour has already been reduced to luminance).
    Gray(GrayPage),
    /// Already bilevel (PBM, fax TIFF): 1 = black.
    Bilevel {
        /// The page.
        bitmap: Bitmap,
        /// Dots per inch, if known.
        dpi: Option<(f64, f64)>,
    },
}

impl SourcePage {
    /// (width, height) in pixels.
    pub fn size(&self) -> (u32, u32) {
        match self {
            SourcePage::Gray(g) => (g.width, g.height),
            SourcePage::Bilevel { bitmap, .. } => (bitmap.width(), bitmap.height()),
        }
    }

    /// Dots per inch, if known.
    pub fn dpi(&self) -> Option<(f64, f64)> {
        match self {
            SourcePage::Gray(g) => g.dpi,
            SourcePage::Bilevel { dpi, .. } => *dpi,
        }
    }

    /// Sets the DPI.
    pub fn set_dpi(&mut self, new: Option<(f64, f64)>) {
        match self {
            SourcePage::Gray(g) => g.set_dpi(new),
            SourcePage::Bilevel { dpi, .. } => *dpi = sane_dpi(new),
        }
    }
}

/// Keeps a DPI only if both values are plausible (PNG and JPEG writers
/// put 0 or 1 there to mean "unknown").
fn sane_dpi(dpi: Option<(f64, f64)>) -> Option<(f64, f64)> {
    dpi.filter(|&(x, y)| (10.0..=10_000.0).contains(&x) && (10.0..=10_000.0).contains(&y))
}

/// Where a source page lands on the fax page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The fax line width (the output bitmap's width).
    pub line_width: u32,
    /// Left edge of the scaled image within the line.
    pub x: u32,
    /// Width of the scaled image.
    pub width: u32,
    /// Height of the scaled image, which is the page height.
    pub height: u32,
}

/// Computes where a `src_w` x `src_h` image with optional DPI lands.
pub fn placement(
    src_w: u32,
    src_h: u32,
    dpi: Option<(f64, f64)>,
    opts: &ConvertOptions,
) -> Result<Placement, String> {
    if src_w == 0 || src_h == 0 {
        return Err("the image is empty".into());
    }
    let line = opts.line_width();
    let (hdpi, vdpi) = opts.resolution.dpi();
    let (hdpi, vdpi) = (f64::from(hdpi), f64::from(vdpi));
    let (sw, sh) = (f64::from(src_w), f64::from(src_h));
    let (mut w, mut h) = match sane_dpi(dpi).filter(|_| opts.use_source_dpi) {
        Some((sx, sy)) => (sw / sx * hdpi, sh / sy * vdpi),
        None => (f64::from(line), sh * f64::from(line) / sw * vdpi / hdpi),
    };
    if w > f64::from(line) {
        h *= f64::from(line) / w;
        w = f64::from(line);
    }
    let w = (w.round() as u32).clamp(1, line);
    let h = h.round().max(1.0);
    if h > f64::from(MAX_PAGE_LINES) {
        return Err(format!(
            "the page would be {h} lines tall at this width (at most {MAX_PAGE_LINES})"
        ));
    }
    Ok(Placement {
        line_width: line,
        x: (line - w) / 2,
        width: w,
        height: h as u32,
    })
}

/// One output sample: the first source index and the weights from there.
struct Taps {
    start: usize,
    weights: Vec<f32>,
}

/// Box-filter taps mapping `src` samples onto `dst` samples: each output
/// sample averages the source interval it covers, weighted by overlap.
fn taps(src: usize, dst: usize) -> Vec<Taps> {
    let scale = src as f64 / dst as f64;
    (0..dst)
        .map(|o| {
            let a = o as f64 * scale;
            let b = ((o + 1) as f64 * scale).min(src as f64);
            let i0 = (a.floor() as usize).min(src - 1);
            let i1 = (b.ceil() as usize).clamp(i0 + 1, src);
            let span = (b - a).max(f64::MIN_POSITIVE);
            let weights = (i0..i1)
                .map(|i| {
                    let lo = a.max(i as f64);
                    let hi = b.min(i as f64 + 1.0);
                    ((hi - lo).max(0.0) / span) as f32
                })
                .collect();
            Taps { start: i0, weights }
        })
        .collect()
}

/// Resamples a grey image to `dw` x `dh` with a box (area-average) filter.
/// Works row by row: memory beyond the output is one source row of floats.
/// All sizes must be non-zero and `src` must hold `sw * sh` bytes.
pub fn resample(src: &[u8], sw: u32, sh: u32, dw: u32, dh: u32) -> Vec<u8> {
    let (sw, sh, dw, dh) = (sw as usize, sh as usize, dw as usize, dh as usize);
    let mut out = Vec::with_capacity(dw * dh);
    if sw == 0 || sh == 0 || dw == 0 || dh == 0 || src.len() < sw * sh {
        out.resize(dw * dh, 255);
        return out;
    }
    let vt = taps(sh, dh);
    let ht = taps(sw, dw);
    let mut acc = vec![0f32; sw];
    for t in &vt {
        acc.fill(0.0);
        for (k, &w) in t.weights.iter().enumerate() {
            let row = &src[(t.start + k) * sw..][..sw];
            for (a, &p) in acc.iter_mut().zip(row) {
                *a += w * f32::from(p);
            }
        }
        for h in &ht {
            let v: f32 = h
                .weights
                .iter()
                .zip(&acc[h.start..])
                .map(|(w, a)| w * a)
                .sum();
            out.push(v.round().clamp(0.0, 255.0) as u8);
        }
    }
    out
}

/// Packs a row of booleans (true = black) MSB first.
fn pack_row(out: &mut Vec<u8>, black: impl Iterator<Item = bool>) {
    let mut byte = 0u8;
    let mut n = 0;
    for b in black {
        byte = (byte << 1) | u8::from(b);
        n += 1;
        if n == 8 {
            out.push(byte);
            byte = 0;
            n = 0;
        }
    }
    if n > 0 {
        out.push(byte << (8 - n));
    }
}

/// Text mode: Bradley-Roth adaptive threshold. A pixel is black when it is
/// `percent`% darker than the mean of the window around it, or darker than
/// `dark_floor`; it is white when lighter than `light_ceiling`. The window
/// sums come from running column sums updated as the window slides down
/// and a prefix sum across each row, so the cost is O(pixels) and the
/// extra memory O(width).
pub fn adaptive_threshold(gray: &[u8], width: u32, height: u32, p: &ThresholdParams) -> Bitmap {
    let (w, h) = (width as usize, height as usize);
    let mut data = Vec::with_capacity(w.div_ceil(8) * h);
    if w == 0 || gray.len() < w * h {
        return Bitmap::new(width, height);
    }
    let win = if p.window == 0 {
        (w / 8).max(3)
    } else {
        p.window as usize
    };
    let r = win / 2;
    let keep = 100 - u64::from(p.percent.min(100));
    let mut col = vec![0u64; w];
    let mut prefix = vec![0u64; w + 1];
    let (mut top, mut bottom) = (0usize, 0usize);
    for y in 0..h {
        let y0 = y.saturating_sub(r);
        let y1 = (y + r + 1).min(h);
        while bottom < y1 {
            for (c, &v) in col.iter_mut().zip(&gray[bottom * w..][..w]) {
                *c += u64::from(v);
            }
            bottom += 1;
        }
        while top < y0 {
            for (c, &v) in col.iter_mut().zip(&gray[top * w..][..w]) {
                *c -= u64::from(v);
            }
            top += 1;
        }
        for x in 0..w {
            prefix[x + 1] = prefix[x] + col[x];
        }
        let rows = (y1 - y0) as u64;
        let row = &gray[y * w..][..w];
        pack_row(
            &mut data,
            row.iter().enumerate().map(|(x, &v)| {
                if v < p.dark_floor {
                    return true;
                }
                if v > p.light_ceiling {
                    return false;
                }
                let x0 = x.saturating_sub(r);
                let x1 = (x + r + 1).min(w);
                let sum = prefix[x1] - prefix[x0];
                let count = (x1 - x0) as u64 * rows;
                u64::from(v) * count * 100 <= sum * keep
            }),
        );
    }
    Bitmap::from_packed(width, height, data).unwrap_or_else(|_| Bitmap::new(width, height))
}

/// Photo mode: Floyd-Steinberg error diffusion, serpentine (alternate rows
/// run right to left, which avoids the diagonal "worms" of one-way scans).
/// A uniform grey `g` comes out with about `1 - g/255` of its pixels black.
pub fn floyd_steinberg(gray: &[u8], width: u32, height: u32) -> Bitmap {
    let (w, h) = (width as usize, height as usize);
    if w == 0 || gray.len() < w * h {
        return Bitmap::new(width, height);
    }
    // Errors in sixteenths, with one guard cell on each side.
    let mut cur = vec![0i32; w + 2];
    let mut next = vec![0i32; w + 2];
    let mut black = vec![false; w];
    let mut data = Vec::with_capacity(w.div_ceil(8) * h);
    for y in 0..h {
        let row = &gray[y * w..][..w];
        let ltr = y % 2 == 0;
        for i in 0..w {
            let x = if ltr { i } else { w - 1 - i };
            let c = x + 1;
            let old = i32::from(row[x]) + cur[c] / 16;
            let is_black = old < 128;
            black[x] = is_black;
            let err = old - if is_black { 0 } else { 255 };
            let (fwd, back) = if ltr { (c + 1, c - 1) } else { (c - 1, c + 1) };
            cur[fwd] += err * 7;
            next[back] += err * 3;
            next[c] += err * 5;
            next[fwd] += err;
        }
        pack_row(&mut data, black.iter().copied());
        std::mem::swap(&mut cur, &mut next);
        next.fill(0);
    }
    Bitmap::from_packed(width, height, data).unwrap_or_else(|_| Bitmap::new(width, height))
}

/// Share of black pixels (0.0 to 1.0) inside the page less `margin` (a
/// share of width and height) on each edge.
pub fn ink_ratio(bmp: &Bitmap, margin: f64) -> f64 {
    let margin = margin.clamp(0.0, 0.49);
    let (w, h) = (bmp.width(), bmp.height());
    let mx = (f64::from(w) * margin) as u32;
    let my = (f64::from(h) * margin) as u32;
    let (x0, x1, y0, y1) = (mx, w - mx, my, h - my);
    if x1 <= x0 || y1 <= y0 {
        return 0.0;
    }
    let mut black = 0u64;
    for y in y0..y1 {
        let row = bmp.row(y);
        black += (x0..x1)
            .filter(|&x| row[(x / 8) as usize] & (0x80 >> (x % 8)) != 0)
            .count() as u64;
    }
    black as f64 / (f64::from(x1 - x0) * f64::from(y1 - y0))
}

/// Whether a page counts as blank under `policy`.
pub fn is_blank(bmp: &Bitmap, policy: &BlankPolicy) -> bool {
    ink_ratio(bmp, policy.margin) <= policy.max_ink_ratio
}

/// Converts one source page into a fax page (`opts.line_width()` wide).
pub fn to_fax_page(page: &SourcePage, opts: &ConvertOptions) -> Result<Bitmap, String> {
    let line = opts.line_width();
    let (sw, sh) = page.size();
    // Also for pages that pass through: a fax page may not be taller either.
    check_source_size(sw, sh)?;
    if let SourcePage::Bilevel { bitmap, dpi } = page {
        let fax_res = dpi.and_then(|(x, y)| Resolution::from_dpi(x, y));
        if sw == line && (dpi.is_none() || fax_res == Some(opts.resolution)) {
            return Ok(bitmap.clone());
        }
    }
    let place = placement(sw, sh, page.dpi(), opts)?;
    let gray_owned;
    let gray: &[u8] = match page {
        SourcePage::Gray(g) => &g.data,
        SourcePage::Bilevel { bitmap, .. } => {
            gray_owned = bilevel_to_gray(bitmap);
            &gray_owned
        }
    };
    let scaled = resample(gray, sw, sh, place.width, place.height);
    let (lw, pw, x) = (line as usize, place.width as usize, place.x as usize);
    let mut canvas = vec![255u8; lw * place.height as usize];
    for (dst, src) in canvas.chunks_exact_mut(lw).zip(scaled.chunks_exact(pw)) {
        dst[x..x + pw].copy_from_slice(src);
    }
    Ok(match opts.mode {
        Mode::Text => adaptive_threshold(&canvas, line, place.height, &opts.threshold),
        Mode::Photo => floyd_steinberg(&canvas, line, place.height),
    })
}

/// Expands a bitmap to grey (black 0, white 255).
fn bilevel_to_gray(bmp: &Bitmap) -> Vec<u8> {
    let w = bmp.width();
    let mut out = Vec::with_capacity(w as usize * bmp.height() as usize);
    for row in bmp.rows() {
        out.extend((0..w).map(|x| {
            if row[(x / 8) as usize] & (0x80 >> (x % 8)) != 0 {
                0
            } else {
                255
            }
        }));
    }
    out
}

/// Converts page `number` (one-based, for messages) of document `name`:
/// `Ok(None)` if it is blank and blank pages are dropped.
pub fn convert_page(
    name: &str,
    number: usize,
    page: &SourcePage,
    opts: &ConvertOptions,
) -> Result<Option<Bitmap>, ScanError> {
    let (width, height) = page.size();
    let bmp = to_fax_page(page, opts).map_err(|reason| ScanError::Geometry {
        name: name.into(),
        page: number,
        width: width.into(),
        height: height.into(),
        reason,
    })?;
    Ok(match &opts.drop_blank {
        Some(policy) if is_blank(&bmp, policy) => None,
        _ => Some(bmp),
    })
}

/// The fax pages of a document, and which source pages were dropped.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvertedPages {
    /// The fax pages, in order.
    pub pages: Vec<Bitmap>,
    /// One-based numbers of the source pages dropped as blank.
    pub dropped_blank: Vec<usize>,
}

/// Converts every page of document `name`, dropping blank ones if asked.
/// A document with no pages, or only blank ones, is an error: there is
/// nothing to send.
pub fn convert_pages(
    name: &str,
    pages: &[SourcePage],
    opts: &ConvertOptions,
) -> Result<ConvertedPages, ScanError> {
    if pages.is_empty() {
        return Err(ScanError::NoPages { name: name.into() });
    }
    let mut out = ConvertedPages {
        pages: Vec::with_capacity(pages.len()),
        dropped_blank: Vec::new(),
    };
    for (i, page) in pages.iter().enumerate() {
        match convert_page(name, i + 1, page, opts)? {
            Some(bmp) => out.pages.push(bmp),
            None => out.dropped_blank.push(i + 1),
        }
    }
    if out.pages.is_empty() {
        return Err(ScanError::AllBlank {
            name: name.into(),
            pages: pages.len(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn black_count(b: &Bitmap) -> u64 {
        b.data().iter().map(|x| u64::from(x.count_ones())).sum()
    }

    fn opts(paper: Paper, resolution: Resolution) -> ConvertOptions {
        ConvertOptions {
            paper,
            resolution,
            ..ConvertOptions::default()
        }
    }

    #[test]
    fn line_widths_follow_t4() {
        use Resolution::*;
        let table = [
            (Paper::A4, Standard, 1728),
            (Paper::Letter, Fine, 1728),
            (Paper::B4, SuperFine, 2048),
            (Paper::A3, Fine, 2432),
            (Paper::A4, R300, 2592),
            (Paper::A3, R400, 4864),
        ];
        for (paper, res, want) in table {
            assert_eq!(paper.line_width(res), want, "{paper:?} {res:?}");
        }
    }

    #[test]
    fn placement_without_dpi_fills_the_line_and_keeps_the_aspect() {
        // A square image at 204x98: 1728 wide, 1728 * 98/204 = 830 lines.
        let p = placement(1000, 1000, None, &opts(Paper::A4, Resolution::Standard)).unwrap();
        assert_eq!((p.x, p.width, p.height), (0, 1728, 830));
        // At fine, 1728 * 196/204 = 1660.
        let p = placement(1000, 1000, None, &opts(Paper::A4, Resolution::Fine)).unwrap();
        assert_eq!(p.height, 1660);
        // Square pixels at 300x300 keep the exact ratio.
        let p = placement(1000, 2000, None, &opts(Paper::A4, Resolution::R300)).unwrap();
        assert_eq!((p.width, p.height), (2592, 5184));
        // B4 widens the line.
        let p = placement(100, 100, None, &opts(Paper::B4, Resolution::Fine)).unwrap();
        assert_eq!((p.width, p.height), (2048, 1968));
    }

    #[test]
    fn placement_with_dpi_keeps_the_physical_size() {
        // A4 at 300 dpi: 2480x3508 -> 8.267in * 204 = 1686.4, 11.69in * 196 = 2292.
        let p = placement(
            2480,
            3508,
            Some((300.0, 300.0)),
            &opts(Paper::A4, Resolution::Fine),
        )
        .unwrap();
        assert_eq!(p.width, 1686);
        assert_eq!(p.height, 2292);
        assert_eq!(p.x, (1728 - 1686) / 2);
        // Wider than the line: shrunk to fit, aspect kept.
        let p = placement(
            1000,
            500,
            Some((100.0, 100.0)),
            &opts(Paper::A4, Resolution::Fine),
        )
        .unwrap();
        assert_eq!(p.width, 1728);
        // 10in x 5in -> 2040 x 980, shrunk by 1728/2040.
        assert_eq!(p.height, (980.0f64 * 1728.0 / 2040.0).round() as u32);
        // use_source_dpi = false ignores it.
        let mut o = opts(Paper::A4, Resolution::Fine);
        o.use_source_dpi = false;
        let p = placement(2480, 3508, Some((300.0, 300.0)), &o).unwrap();
        assert_eq!(p.width, 1728);
        // Nonsense DPI is ignored.
        let p = placement(
            850,
            1100,
            Some((1.0, 1.0)),
            &opts(Paper::A4, Resolution::Fine),
        )
        .unwrap();
        assert_eq!(p.width, 1728);
    }

    #[test]
    fn placement_refuses_empty_and_absurd_pages() {
        let o = opts(Paper::A4, Resolution::Fine);
        assert!(placement(0, 10, None, &o).is_err());
        assert!(placement(10, 10_000, None, &o).is_err());
    }

    #[test]
    fn resample_box_filter_averages_and_preserves_uniform() {
        let src = vec![200u8; 30 * 20];
        assert!(resample(&src, 30, 20, 7, 5).iter().all(|&v| v == 200));
        assert!(resample(&src, 30, 20, 61, 41).iter().all(|&v| v == 200));
        // Halving a checkerboard gives the mean.
        let cb: Vec<u8> = (0..16)
            .map(|i| if (i % 4 + i / 4) % 2 == 0 { 0 } else { 255 })
            .collect();
        assert!(
            resample(&cb, 4, 4, 2, 2)
                .iter()
                .all(|&v| v.abs_diff(128) <= 1)
        );
        // Doubling repeats pixels.
        let src = [0u8, 255];
        assert_eq!(resample(&src, 2, 1, 4, 1), vec![0, 0, 255, 255]);
    }

    #[test]
    fn adaptive_threshold_finds_text_on_grey_paper() {
        // Grey paper (180) with a dark grey (110) stroke: a global threshold
        // at 128 would keep the stroke, but one at 100 would lose it and one
        // at 190 would blacken the paper. The adaptive one gets both right.
        let (w, h) = (200u32, 100u32);
        let mut g = vec![180u8; (w * h) as usize];
        for y in 40..50 {
            for x in 20..180 {
                g[(y * w + x) as usize] = 110;
            }
        }
        let b = adaptive_threshold(&g, w, h, &ThresholdParams::default());
        for y in 0..h {
            for x in 0..w {
                let stroke = (40..50).contains(&y) && (20..180).contains(&x);
                assert_eq!(b.pixel(x, y), stroke, "pixel ({x},{y})");
            }
        }
    }

    #[test]
    fn adaptive_threshold_handles_shading_and_solid_areas() {
        // Paper shading from 250 to 150 left to right, no ink: all white.
        let (w, h) = (400u32, 50u32);
        let g: Vec<u8> = (0..w * h).map(|i| (250 - (i % w) / 4) as u8).collect();
        let b = adaptive_threshold(&g, w, h, &ThresholdParams::default());
        assert_eq!(black_count(&b), 0);
        // A solid black area wider than the window stays black inside.
        let g = vec![10u8; (w * h) as usize];
        let b = adaptive_threshold(&g, w, h, &ThresholdParams::default());
        assert_eq!(black_count(&b), u64::from(w * h));
        // White stays white.
        let g = vec![255u8; (w * h) as usize];
        assert_eq!(
            black_count(&adaptive_threshold(&g, w, h, &ThresholdParams::default())),
            0
        );
    }

    #[test]
    fn dithering_proportions_follow_the_grey_level() {
        let (w, h) = (256u32, 256u32);
        for level in [0u8, 32, 64, 128, 192, 230, 255] {
            let g = vec![level; (w * h) as usize];
            let b = floyd_steinberg(&g, w, h);
            let ratio = black_count(&b) as f64 / f64::from(w * h);
            let want = 1.0 - f64::from(level) / 255.0;
            assert!(
                (ratio - want).abs() < 0.01,
                "grey {level}: {ratio:.4} black, want {want:.4}"
            );
        }
        // A ramp dithers to a ramp: the left quarter is much darker than
        // the right quarter.
        let g: Vec<u8> = (0..w * h).map(|i| (i % w) as u8).collect();
        let b = floyd_steinberg(&g, w, h);
        let col_black = |x0: u32, x1: u32| {
            (0..h)
                .flat_map(|y| (x0..x1).map(move |x| (x, y)))
                .filter(|&(x, y)| b.pixel(x, y))
                .count()
        };
        assert!(col_black(0, 64) > 4 * col_black(192, 256));
    }

    #[test]
    fn dithering_has_no_long_runs_in_mid_grey() {
        // Serpentine FS on 50% grey is close to a checkerboard: no run of
        // more than a few equal pixels.
        let (w, h) = (64u32, 64u32);
        let g = vec![128u8; (w * h) as usize];
        let b = floyd_steinberg(&g, w, h);
        for y in 4..h {
            let mut run = 1;
            for x in 1..w {
                run = if b.pixel(x, y) == b.pixel(x - 1, y) {
                    run + 1
                } else {
                    1
                };
                assert!(run <= 4, "run of {run} at ({x},{y})");
            }
        }
    }

    #[test]
    fn ink_ratio_and_blank_detection() {
        let mut b = Bitmap::new(1000, 1000);
        assert_eq!(ink_ratio(&b, 0.05), 0.0);
        let policy = BlankPolicy::default();
        assert!(is_blank(&b, &policy));
        // A dark border inside the margin does not count.
        for x in 0..1000 {
            for y in 0..30 {
                b.set_pixel(x, y, true);
            }
        }
        assert!(is_blank(&b, &policy));
        // A line of text (300x20 px of which half is ink: 0.33%) is not blank.
        for y in 500..520 {
            for x in (200..500).step_by(2) {
                b.set_pixel(x, y, true);
            }
        }
        let r = ink_ratio(&b, 0.05);
        assert!((r - 3000.0 / 810_000.0).abs() < 1e-9, "{r}");
        assert!(!is_blank(&b, &policy));
    }

    #[test]
    fn source_size_limits_name_the_limit() {
        assert!(check_source_size(1728, MAX_PAGE_LINES).is_ok());
        assert_eq!(check_source_size(0, 10).unwrap_err(), "the image is empty");
        let e = check_source_size(1728, MAX_PAGE_LINES + 1).unwrap_err();
        assert!(e.contains("80001") && e.contains("80000"), "{e}");
        let e = check_source_size(65_536, 70_000).unwrap_err();
        assert!(e.contains(&MAX_SOURCE_PIXELS.to_string()), "{e}");
    }

    #[test]
    fn too_tall_fax_pages_do_not_pass_through() {
        // A line-width bilevel page at the target resolution would pass
        // through untouched; one taller than MAX_PAGE_LINES is refused
        // with the page number and the limit.
        let page = SourcePage::Bilevel {
            bitmap: Bitmap::new(1728, MAX_PAGE_LINES + 1),
            dpi: None,
        };
        let o = opts(Paper::A4, Resolution::Fine);
        let e = convert_page("tall.tif", 3, &page, &o).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, ScanError::Geometry { page: 3, .. }), "{msg}");
        assert!(
            msg.contains("tall.tif") && msg.contains("page 3") && msg.contains("80000"),
            "{msg}"
        );
    }

    #[test]
    fn fax_bilevel_pages_pass_through() {
        let mut b = Bitmap::new(1728, 50);
        b.set_pixel(3, 3, true);
        let page = SourcePage::Bilevel {
            bitmap: b.clone(),
            dpi: Some((204.0, 196.0)),
        };
        let o = opts(Paper::A4, Resolution::Fine);
        assert_eq!(to_fax_page(&page, &o).unwrap(), b);
        // Another resolution is rescaled: 50 fine lines -> 25 standard ones.
        let o = opts(Paper::A4, Resolution::Standard);
        let out = to_fax_page(&page, &o).unwrap();
        assert_eq!((out.width(), out.height()), (1728, 25));
    }

    #[test]
    fn rectangle_lands_where_scaling_puts_it() {
        // 850x1100 grey page (no DPI) with a black rectangle at
        // x 100..300, y 200..500. Scale 1728/850 horizontally, and
        // 1728/850 * 196/204 vertically at fine.
        let (w, h) = (850u32, 1100u32);
        let mut g = vec![255u8; (w * h) as usize];
        for y in 200..500 {
            for x in 100..300 {
                g[(y * w + x) as usize] = 0;
            }
        }
        let page = SourcePage::Gray(GrayPage::new(w, h, g, None).unwrap());
        for mode in [Mode::Text, Mode::Photo] {
            let o = ConvertOptions {
                mode,
                ..opts(Paper::A4, Resolution::Fine)
            };
            let b = to_fax_page(&page, &o).unwrap();
            let sx: f64 = 1728.0 / 850.0;
            let sy = sx * 196.0 / 204.0;
            assert_eq!(b.width(), 1728);
            assert_eq!(b.height(), (1100.0 * sy).round() as u32);
            let (x0, x1) = ((100.0 * sx) as u32, (300.0 * sx) as u32);
            let (y0, y1) = ((200.0 * sy) as u32, (500.0 * sy) as u32);
            for y in 0..b.height() {
                for x in 0..b.width() {
                    let inside = x > x0 + 1 && x + 1 < x1 && y > y0 + 1 && y + 1 < y1;
                    let outside = x + 2 < x0 || x > x1 + 2 || y + 2 < y0 || y > y1 + 2;
                    if inside {
                        assert!(b.pixel(x, y), "{mode:?}: ({x},{y}) should be black");
                    } else if outside {
                        assert!(!b.pixel(x, y), "{mode:?}: ({x},{y}) should be white");
                    }
                }
            }
        }
    }

    #[test]
    fn convert_pages_drops_blank_pages_and_refuses_empty_documents() {
        let blank = SourcePage::Gray(GrayPage::new(100, 100, vec![255; 10_000], None).unwrap());
        let mut ink = vec![255u8; 10_000];
        ink[4000..6000].fill(0);
        let inked = SourcePage::Gray(GrayPage::new(100, 100, ink, None).unwrap());
        let mut o = ConvertOptions::default();
        let all = convert_pages("d", &[blank.clone(), inked.clone()], &o).unwrap();
        assert_eq!(all.pages.len(), 2);
        o.drop_blank = Some(BlankPolicy::default());
        let some = convert_pages("d", &[blank.clone(), inked, blank.clone()], &o).unwrap();
        assert_eq!(some.pages.len(), 1);
        assert_eq!(some.dropped_blank, vec![1, 3]);
        assert!(matches!(
            convert_pages("d", &[blank], &o),
            Err(ScanError::AllBlank { pages: 1, .. })
        ));
        assert!(matches!(
            convert_pages("d", &[], &o),
            Err(ScanError::NoPages { .. })
        ));
    }
}
