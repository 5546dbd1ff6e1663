//! PWG raster (PWG 5102.4) for IPP printers that take image/pwg-raster.
//!
//! A file is the sync word `RaS2`, then per page a 1796-byte header and
//! the page's lines in PWG's run-length coding: a line-repeat byte, then
//! runs (0..=127: the next pixel repeated n+1 times; 129..=255: 257-n
//! literal pixels). Pixels narrower than 8 bits are coded a byte at a
//! time. Pure code: bitmaps in, bytes out.
//!
//! Each page is rendered onto a sheet of paper ([`Media`]) at the output
//! resolution: printers print raster as it comes and do not scale it, so
//! a fax page larger than the paper (an A4 fax, 215 mm wide, on 210 mm
//! A4 or 279 mm Letter) is scaled down here to fit, never up. It is
//! centred across the sheet (T.4 centres the scan line on the document)
//! and top-aligned: a page shorter than the sheet (the end of a roll, a
//! short page) starts at the top as it would from a fax machine, with
//! the sender's header line at the top edge.

use faxgate_fax::Bitmap;

use super::media::Media;
use super::page::FaxPage;

/// The size of a PWG page header.
pub const HEADER_LEN: usize = 1796;
/// The sync word that starts every PWG raster stream.
pub const SYNC: &[u8; 4] = b"RaS2";

/// The pwg-raster-document-type of the output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PwgType {
    /// `black_1`: 1 bit per pixel, 1 = black (ColorSpace 3, K).
    Black1,
    /// `sgray_1`: 1 bit per pixel, 0 = black (ColorSpace 18, sGray).
    Sgray1,
    /// `sgray_8`: 8 bits per pixel, 0 = black. For printers without a
    /// 1-bit type; the page is widened only on its way to the printer.
    Sgray8,
}

impl PwgType {
    /// The IPP keyword.
    pub fn keyword(self) -> &'static str {
        match self {
            PwgType::Black1 => "black_1",
            PwgType::Sgray1 => "sgray_1",
            PwgType::Sgray8 => "sgray_8",
        }
    }

    /// The types we write, best first.
    pub const PREFERENCE: [PwgType; 3] = [PwgType::Black1, PwgType::Sgray1, PwgType::Sgray8];

    fn color_space(self) -> u32 {
        match self {
            PwgType::Black1 => 3,
            PwgType::Sgray1 | PwgType::Sgray8 => 18,
        }
    }

    fn bits(self) -> u32 {
        match self {
            PwgType::Sgray8 => 8,
            _ => 1,
        }
    }
}

/// What a PWG raster document is made for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PwgOptions {
    /// The pixel format.
    pub kind: PwgType,
    /// Output resolution (x, y) in dpi; `None` keeps each page's own.
    pub dpi: Option<(u32, u32)>,
    /// The paper every page is rendered onto; `None` is each page's own
    /// paper ([`Media::for_page`]: A4 for a 1728-dot page).
    pub media: Option<Media>,
}

/// Renders pages as one PWG raster document.
pub fn render_pwg(pages: &[FaxPage], opts: &PwgOptions) -> Result<Vec<u8>, faxgate_fax::FaxError> {
    let mut out = Vec::new();
    for chunk in pwg_chunks(pages, opts) {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

/// A PWG raster document in pieces: the sync word, then one piece per
/// page, each made only when it is asked for (a decoded page at a time).
pub fn pwg_chunks<'a>(
    pages: &'a [FaxPage],
    opts: &PwgOptions,
) -> impl Iterator<Item = Result<Vec<u8>, faxgate_fax::FaxError>> + 'a {
    let total = u32::try_from(pages.len()).unwrap_or(u32::MAX);
    let opts = opts.clone();
    std::iter::once(Ok(SYNC.to_vec())).chain(pages.iter().map(move |page| {
        let bmp = page.to_bitmap()?;
        let dpi = opts.dpi.unwrap_or(page.dpi());
        let media = opts.media.clone().unwrap_or_else(|| Media::for_page(page));
        let sheet = place_on_sheet(&bmp, page.dpi(), dpi, &media);
        let mut out = Vec::new();
        write_page(&sheet, dpi, &media, opts.kind, total, &mut out);
        Ok(out)
    }))
}

/// A page on its sheet: the bitmap of the whole sheet, and where on it
/// the page's marks are.
#[derive(Debug)]
pub struct Sheet {
    /// The whole sheet at the output resolution.
    pub bitmap: Bitmap,
    /// The page's box on the sheet in pixels: left, top, right, bottom
    /// (PWG raster's ImageBox).
    pub image_box: (u32, u32, u32, u32),
}

/// Renders a page of `page_dpi` onto a sheet of `media` at `dpi`: at its
/// true size when it fits, else scaled down by the same factor in both
/// directions until it does; centred across, top-aligned (see the module
/// documentation). Enlarging (to a higher dpi) repeats pixels; shrinking
/// makes a pixel black when any pixel it covers is, so that a one-dot
/// line survives.
pub fn place_on_sheet(bmp: &Bitmap, page_dpi: (u32, u32), dpi: (u32, u32), media: &Media) -> Sheet {
    let (sw, sh) = media.pixels(dpi);
    // The page at the output resolution, before fitting.
    let iw = f64::from(bmp.width()) * f64::from(dpi.0) / f64::from(page_dpi.0.max(1));
    let ih = f64::from(bmp.height()) * f64::from(dpi.1) / f64::from(page_dpi.1.max(1));
    let scale = (f64::from(sw) / iw).min(f64::from(sh) / ih).min(1.0);
    let tw = ((iw * scale).round() as u32).clamp(1, sw);
    let th = ((ih * scale).round() as u32).clamp(1, sh);
    let left = (sw - tw) / 2;
    let cols = spans(bmp.width(), tw);
    let rows = spans(bmp.height(), th);
    let stride = sw.div_ceil(8) as usize;
    let mut data = vec![0u8; stride * sh as usize];
    let mut src = vec![0u8; bmp.stride()];
    for (y, &(r0, r1)) in rows.iter().enumerate() {
        src.fill(0);
        for r in r0..r1 {
            for (d, s) in src.iter_mut().zip(bmp.row(r)) {
                *d |= s;
            }
        }
        let out = &mut data[y * stride..(y + 1) * stride];
        for (x, &(c0, c1)) in cols.iter().enumerate() {
            if (c0..c1).any(|c| src[(c / 8) as usize] & (0x80 >> (c % 8)) != 0) {
                let ox = left + x as u32;
                out[(ox / 8) as usize] |= 0x80 >> (ox % 8);
            }
        }
    }
    // `data` is exactly sw x sh packed rows, which from_packed takes.
    let bitmap = Bitmap::from_packed(sw, sh, data).unwrap_or_else(|_| Bitmap::new(sw, sh));
    Sheet {
        bitmap,
        image_box: (left, 0, left + tw, th),
    }
}

/// For each of `dst` pixels along one direction, the range of the `src`
/// pixels it shows: one pixel when enlarging (nearest neighbour), every
/// pixel it covers when shrinking.
fn spans(src: u32, dst: u32) -> Vec<(u32, u32)> {
    let (s, d) = (u64::from(src), u64::from(dst.max(1)));
    (0..d)
        .map(|i| {
            let start = (i * s / d).min(s.saturating_sub(1));
            let end = if d >= s {
                start + 1
            } else {
                ((i + 1) * s).div_ceil(d).clamp(start + 1, s)
            };
            (start as u32, end as u32)
        })
        .collect()
}

/// Writes one page: header, then coded lines. The header names the
/// sheet's media (PageSize in points, PageSizeName) and where the page's
/// marks are (ImageBox).
pub fn write_page(
    sheet: &Sheet,
    dpi: (u32, u32),
    media: &Media,
    kind: PwgType,
    total: u32,
    out: &mut Vec<u8>,
) {
    let bmp = &sheet.bitmap;
    let bytes_per_line = (bmp.width() * kind.bits()).div_ceil(8);
    let (w_pt, h_pt) = media.size_pt();
    let mut h = vec![0u8; HEADER_LEN];
    let put_str = |h: &mut [u8], off: usize, s: &str| {
        let b = s.as_bytes();
        let n = b.len().min(63);
        h[off..off + n].copy_from_slice(&b[..n]);
    };
    let put = |h: &mut [u8], off: usize, v: u32| h[off..off + 4].copy_from_slice(&v.to_be_bytes());
    put_str(&mut h, 0, "PwgRaster");
    put(&mut h, 276, dpi.0); // HWResolution
    put(&mut h, 280, dpi.1);
    put(&mut h, 340, 1); // NumCopies
    put(&mut h, 352, w_pt); // PageSize, points
    put(&mut h, 356, h_pt);
    put(&mut h, 372, bmp.width()); // Width
    put(&mut h, 376, bmp.height()); // Height
    put(&mut h, 384, kind.bits()); // BitsPerColor
    put(&mut h, 388, kind.bits()); // BitsPerPixel
    put(&mut h, 392, bytes_per_line); // BytesPerLine
    put(&mut h, 396, 0); // ColorOrder: chunky
    put(&mut h, 400, kind.color_space()); // ColorSpace
    put(&mut h, 420, 1); // NumColors
    put(&mut h, 452, total); // TotalPageCount
    put(&mut h, 456, 1); // CrossFeedTransform
    put(&mut h, 460, 1); // FeedTransform
    let (left, top, right, bottom) = sheet.image_box;
    put(&mut h, 464, left); // ImageBoxLeft
    put(&mut h, 468, top); // ImageBoxTop
    put(&mut h, 472, right); // ImageBoxRight
    put(&mut h, 476, bottom); // ImageBoxBottom
    put(&mut h, 480, 0x00FF_FFFF); // AlternatePrimary: white
    put_str(&mut h, 1732, &media.name); // PageSizeName
    out.extend_from_slice(&h);

    let mut prev: Option<Vec<u8>> = None;
    let mut repeat = 0u32;
    let mut line = Vec::with_capacity(bytes_per_line as usize);
    for row in bmp.rows() {
        line.clear();
        pixels(row, kind, &mut line);
        // 8-bit pixels come from whole bytes: drop the padding past the width.
        line.truncate(bytes_per_line as usize);
        match &prev {
            Some(p) if *p == line && repeat < 255 => repeat += 1,
            _ => {
                if let Some(p) = prev.take() {
                    code_line(&p, repeat, out);
                }
                prev = Some(line.clone());
                repeat = 0;
            }
        }
    }
    if let Some(p) = prev {
        code_line(&p, repeat, out);
    }
}

/// A bitmap row (1 = black) as the output's pixel bytes.
fn pixels(row: &[u8], kind: PwgType, out: &mut Vec<u8>) {
    match kind {
        PwgType::Black1 => out.extend_from_slice(row),
        // Padding bits past the width come out white either way.
        PwgType::Sgray1 => out.extend(row.iter().map(|b| !b)),
        PwgType::Sgray8 => {
            for b in row {
                for bit in (0..8).rev() {
                    out.push(if b >> bit & 1 == 1 { 0 } else { 255 });
                }
            }
        }
    }
}

/// Codes one line with its repeat count (0 = shown once).
fn code_line(line: &[u8], repeat: u32, out: &mut Vec<u8>) {
    out.push(repeat as u8);
    // 1-bit pixels are coded a byte (eight pixels) at a time, like 8-bit ones.
    let mut i = 0;
    while i < line.len() {
        let mut run = 1;
        while i + run < line.len() && line[i + run] == line[i] && run < 128 {
            run += 1;
        }
        if run >= 2 {
            out.push((run - 1) as u8);
            out.push(line[i]);
            i += run;
            continue;
        }
        // Literals until the next pair of equal bytes.
        let start = i;
        while i < line.len() && i - start < 128 {
            if i + 1 < line.len() && line[i + 1] == line[i] {
                break;
            }
            i += 1;
        }
        let n = i - start;
        if n == 1 {
            out.push(0);
        } else {
            out.push((257 - n) as u8);
        }
        out.extend_from_slice(&line[start..i]);
    }
}

/// A decoded PWG raster page: its header fields and lines.
#[cfg(test)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PwgPage {
    /// The 1796 header bytes.
    pub header: Vec<u8>,
    /// Lines of `BytesPerLine` bytes each.
    pub lines: Vec<Vec<u8>>,
}

#[cfg(test)]
impl PwgPage {
    /// A big-endian header field at a byte offset.
    pub fn field(&self, offset: usize) -> u32 {
        self.header
            .get(offset..offset + 4)
            .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A NUL-terminated header string at a byte offset.
    pub fn string(&self, offset: usize) -> String {
        let b = self.header.get(offset..offset + 64).unwrap_or(&[]);
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..end]).into_owned()
    }
}

/// Parses a PWG raster stream (for tests); `Err` names what is wrong and
/// where.
#[cfg(test)]
pub fn parse_pwg(data: &[u8]) -> Result<Vec<PwgPage>, String> {
    if data.get(..4) != Some(SYNC) {
        return Err("no RaS2 sync word".into());
    }
    let mut pos = 4;
    let mut pages = Vec::new();
    while pos < data.len() {
        let header = data
            .get(pos..pos + HEADER_LEN)
            .ok_or(format!("short header at {pos}"))?
            .to_vec();
        pos += HEADER_LEN;
        let mut page = PwgPage {
            header,
            lines: Vec::new(),
        };
        let height = page.field(376) as usize;
        let bpl = page.field(392) as usize;
        let unit = (page.field(388) as usize).div_ceil(8).max(1);
        while page.lines.len() < height {
            let repeat = *data
                .get(pos)
                .ok_or(format!("eof at line {}", page.lines.len()))?;
            pos += 1;
            let mut line = Vec::with_capacity(bpl);
            while line.len() < bpl {
                let n = *data.get(pos).ok_or("eof in line")? as usize;
                pos += 1;
                if n < 128 {
                    let px = data.get(pos..pos + unit).ok_or("eof in run")?;
                    for _ in 0..=n {
                        line.extend_from_slice(px);
                    }
                    pos += unit;
                } else if n == 128 {
                    return Err(format!("code 128 at {}", pos - 1));
                } else {
                    let len = (257 - n) * unit;
                    line.extend_from_slice(data.get(pos..pos + len).ok_or("eof in literal")?);
                    pos += len;
                }
            }
            if line.len() != bpl {
                return Err(format!("line {} overruns BytesPerLine", page.lines.len()));
            }
            for _ in 0..=repeat {
                page.lines.push(line.clone());
            }
        }
        if page.lines.len() != height {
            return Err("line repeat overruns the page".into());
        }
        pages.push(page);
    }
    Ok(pages)
}

#[cfg(test)]
mod tests {
    use super::*;
    use faxgate_fax::Coding;

    fn page() -> FaxPage {
        let mut b = Bitmap::new(1728, 300);
        for y in 0..300 {
            for x in 0..1728 {
                if (x / 7 + y / 5) % 9 == 0 || (y > 100 && y < 120) {
                    b.set_pixel(x, y, true);
                }
            }
        }
        FaxPage::from_bitmap(&b, (204, 196), Coding::Mmr).unwrap()
    }

    fn opts(kind: PwgType, dpi: Option<(u32, u32)>, media: Option<Media>) -> PwgOptions {
        PwgOptions { kind, dpi, media }
    }

    /// A page and its sheet in the same resolution: the page fits, so
    /// its rows are on the sheet bit for bit, centred across and from the
    /// top, and the rest of the sheet is white.
    #[test]
    fn header_fields_follow_pwg_5102_4() {
        // 1600 dots at 204 dpi (199 mm) fit on A4 (1687 dots) as they are.
        let mut b = Bitmap::new(1600, 300);
        for y in 0..300 {
            for x in 0..1600 {
                if (x / 7 + y / 5) % 9 == 0 || (y > 100 && y < 120) || x == 0 || x == 1599 {
                    b.set_pixel(x, y, true);
                }
            }
        }
        let p = FaxPage::from_bitmap(&b, (204, 196), Coding::Mmr).unwrap();
        let data = render_pwg(&[p.clone(), p], &opts(PwgType::Black1, None, None)).unwrap();
        let pages = parse_pwg(&data).unwrap();
        assert_eq!(pages.len(), 2);
        let h = &pages[0];
        assert_eq!(h.string(0), "PwgRaster");
        assert_eq!((h.field(276), h.field(280)), (204, 196));
        // A 1600-dot page is an A4 fax: A4 paper, 210 x 297 mm.
        assert_eq!((h.field(352), h.field(356)), (595, 842), "PageSize");
        assert_eq!(h.string(1732), "iso_a4_210x297mm", "PageSizeName");
        // A4 at 204 x 196 dpi: 1686.6 x 2291.8 dots.
        assert_eq!((h.field(372), h.field(376)), (1687, 2292));
        assert_eq!((h.field(384), h.field(388), h.field(392)), (1, 1, 211));
        assert_eq!(h.field(400), 3, "black = ColorSpace 3");
        assert_eq!(h.field(420), 1);
        assert_eq!(h.field(452), 2, "TotalPageCount");
        assert_eq!((h.field(456), h.field(460)), (1, 1));
        let left = (1687 - 1600) / 2;
        let image_box = (h.field(464), h.field(468), h.field(472), h.field(476));
        assert_eq!(image_box, (left, 0, left + 1600, 300), "ImageBox");
        assert_eq!(h.field(480), 0x00FF_FFFF);
        let sheet = Bitmap::from_packed(1687, 2292, h.lines.concat()).unwrap();
        for y in 0..2292 {
            for x in 0..1687 {
                let want = y < 300 && x >= left && x < left + 1600 && b.pixel(x - left, y);
                assert_eq!(sheet.pixel(x, y), want, "({x},{y})");
            }
        }
    }

    /// An A4 fax page (1728 x 2287 at 204 x 196 dpi: 215.1 x 296.4 mm)
    /// for an A4 printer at 300 dpi is an A4 sheet (PageSize 595 x 842
    /// pt, PageSizeName iso_a4_210x297mm, 2480 x 3508 dots) with the page
    /// shrunk 2.4% to its width, top-aligned; for a Letter printer it is
    /// a Letter sheet with the page shrunk 5.7% to its length, centred
    /// across. Before, it went out at its own odd size (610 x 840 pt, no
    /// name) and the printer clipped it.
    #[test]
    fn an_a4_fax_page_is_rendered_onto_the_chosen_paper() {
        let mut b = Bitmap::new(1728, 2287);
        for y in 0..2287 {
            // A frame, so that every edge of the page is marked.
            b.set_pixel(0, y, true);
            b.set_pixel(1727, y, true);
        }
        for x in 0..1728 {
            b.set_pixel(x, 0, true);
            b.set_pixel(x, 2286, true);
        }
        let p = FaxPage::from_bitmap(&b, (204, 196), Coding::Mmr).unwrap();
        let letter = Media::named("na_letter_8.5x11in").unwrap();
        for (media, size_pt, dots, image_box) in [
            (Media::a4(), (595, 842), (2480, 3508), (0, 0, 2480, 3416)),
            (letter, (612, 792), (2550, 3300), (77, 0, 77 + 2396, 3300)),
        ] {
            let data = render_pwg(
                std::slice::from_ref(&p),
                &opts(PwgType::Black1, Some((300, 300)), Some(media.clone())),
            )
            .unwrap();
            let h = &parse_pwg(&data).unwrap()[0];
            assert_eq!(h.string(1732), media.name, "PageSizeName");
            assert_eq!((h.field(352), h.field(356)), size_pt, "PageSize");
            assert_eq!((h.field(372), h.field(376)), dots, "Width, Height");
            let got = (h.field(464), h.field(468), h.field(472), h.field(476));
            assert_eq!(got, image_box, "ImageBox {}", media.name);
            // The frame is on the sheet on all four sides, nothing outside.
            let sheet = Bitmap::from_packed(dots.0, dots.1, h.lines.concat()).unwrap();
            let (l, t, r, bottom) = image_box;
            let mid = (l + r) / 2;
            assert!(
                sheet.pixel(l, t + 500) && sheet.pixel(r - 1, t + 500),
                "{}",
                media.name
            );
            assert!(
                sheet.pixel(mid, t) && sheet.pixel(mid, bottom - 1),
                "{}",
                media.name
            );
            if l > 0 {
                assert!(!sheet.pixel(l - 1, 500) && !sheet.pixel(r, 500));
            }
            if bottom < dots.1 {
                assert!((bottom..dots.1).all(|y| sheet.row(y).iter().all(|&v| v == 0)));
            }
        }
    }

    /// Shrinking keeps every one-dot line: an output dot is black when
    /// any dot it covers is.
    #[test]
    fn shrinking_keeps_thin_lines() {
        // 1728 dots at 204 dpi onto A4 at 204 dpi: 1687 dots, 41 fewer.
        let mut b = Bitmap::new(1728, 40);
        for x in (0..1728).step_by(5) {
            b.set_pixel(x, 20, true);
        }
        for y in 0..40 {
            b.set_pixel(1000, y, true);
        }
        let sheet = place_on_sheet(&b, (204, 196), (204, 196), &Media::a4());
        assert_eq!(sheet.image_box, (0, 0, 1687, 39));
        let dots = (0..1687).filter(|&x| sheet.bitmap.pixel(x, 19)).count();
        // Every fifth dot: 346 of them, and none merged into a neighbour.
        assert!(dots >= 338, "{dots} of 346 dots left");
        for y in 0..39 {
            assert!((970..1000).any(|x| sheet.bitmap.pixel(x, y)), "row {y}");
        }
        assert_eq!(spans(10, 4), vec![(0, 3), (2, 5), (5, 8), (7, 10)]);
        assert_eq!(
            spans(3, 6),
            vec![(0, 1), (0, 1), (1, 2), (1, 2), (2, 3), (2, 3)]
        );
    }

    #[test]
    fn sgray_types_invert_and_widen() {
        let p = page();
        let bmp = p.to_bitmap().unwrap();
        for kind in [PwgType::Sgray1, PwgType::Sgray8] {
            let data = render_pwg(
                std::slice::from_ref(&p),
                &opts(kind, Some((300, 300)), None),
            )
            .unwrap();
            let pages = parse_pwg(&data).unwrap();
            let h = &pages[0];
            assert_eq!(h.field(400), 18, "sgray");
            assert_eq!((h.field(276), h.field(280)), (300, 300));
            let sheet = place_on_sheet(&bmp, (204, 196), (300, 300), &Media::a4()).bitmap;
            assert_eq!(h.field(372), sheet.width());
            assert_eq!(h.lines.len() as u32, sheet.height());
            for (y, line) in h.lines.iter().enumerate() {
                for x in 0..sheet.width() {
                    let black = match kind {
                        PwgType::Sgray1 => line[(x / 8) as usize] & (0x80 >> (x % 8)) == 0,
                        _ => line[x as usize] == 0,
                    };
                    assert_eq!(black, sheet.pixel(x, y as u32), "({x},{y}) {kind:?}");
                }
            }
        }
    }

    #[test]
    fn run_coding_edge_cases() {
        for line in [
            vec![0u8; 1],
            vec![5u8; 300],
            (0..=255u8).collect::<Vec<_>>(),
            vec![1, 2, 2, 3, 4, 4, 4, 5],
            (0..400).map(|i| (i % 3) as u8).collect(),
        ] {
            let mut out = SYNC.to_vec();
            let mut header = vec![0u8; HEADER_LEN];
            header[376..380].copy_from_slice(&1u32.to_be_bytes());
            header[388..392].copy_from_slice(&8u32.to_be_bytes());
            header[392..396].copy_from_slice(&(line.len() as u32).to_be_bytes());
            out.extend_from_slice(&header);
            code_line(&line, 0, &mut out);
            assert_eq!(parse_pwg(&out).unwrap()[0].lines, vec![line]);
        }
    }
}
