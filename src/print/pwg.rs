//! PWG raster (PWG 5102.4) for IPP printers that take image/pwg-raster.
//!
//! A file is the sync word `RaS2`, then per page a 1796-byte header and
//! the page's lines in PWG's run-length coding: a line-repeat byte, then
//! runs (0..=127: the next pixel repeated n+1 times; 129..=255: 257-n
//! literal pixels). Pixels narrower than 8 bits are coded a byte at a
//! time. Pure code: bitmaps in, bytes out.

use faxgate_fax::Bitmap;

use super::page::{FaxPage, rescale};

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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PwgOptions {
    /// The pixel format.
    pub kind: PwgType,
    /// Output resolution (x, y) in dpi; `None` keeps each page's own.
    pub dpi: Option<(u32, u32)>,
}

/// Renders pages as one PWG raster document.
pub fn render_pwg(pages: &[FaxPage], opts: PwgOptions) -> Result<Vec<u8>, faxgate_fax::FaxError> {
    let mut out = Vec::new();
    for chunk in pwg_chunks(pages, opts) {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

/// A PWG raster document in pieces: the sync word, then one piece per
/// page, each made only when it is asked for (a decoded page at a time).
pub fn pwg_chunks(
    pages: &[FaxPage],
    opts: PwgOptions,
) -> impl Iterator<Item = Result<Vec<u8>, faxgate_fax::FaxError>> + '_ {
    let total = u32::try_from(pages.len()).unwrap_or(u32::MAX);
    std::iter::once(Ok(SYNC.to_vec())).chain(pages.iter().map(move |page| {
        let bmp = page.to_bitmap()?;
        let dpi = opts.dpi.unwrap_or(page.dpi());
        let bmp = rescale(&bmp, page.dpi(), dpi);
        // The media is the fax page's size, whatever the raster's dpi.
        let (w, h) = page.size_pt();
        let size = (w.round() as u32, h.round() as u32);
        let mut out = Vec::new();
        write_page(&bmp, dpi, size, opts.kind, total, &mut out);
        Ok(out)
    }))
}

/// The well-known media size name for a page, if it is within 2 mm of one.
fn size_name(w_pt: u32, h_pt: u32) -> &'static str {
    const SIZES: [(&str, f64, f64); 4] = [
        ("iso_a4_210x297mm", 210.0, 297.0),
        ("na_letter_8.5x11in", 215.9, 279.4),
        ("iso_b4_250x353mm", 250.0, 353.0),
        ("iso_a3_297x420mm", 297.0, 420.0),
    ];
    let mm = |pt: u32| f64::from(pt) * 25.4 / 72.0;
    SIZES
        .iter()
        .find(|(_, w, h)| (mm(w_pt) - w).abs() <= 2.0 && (mm(h_pt) - h).abs() <= 2.0)
        .map_or("", |(n, _, _)| n)
}

/// Writes one page: header, then coded lines. `size_pt` is the media
/// size in points.
pub fn write_page(
    bmp: &Bitmap,
    dpi: (u32, u32),
    size_pt: (u32, u32),
    kind: PwgType,
    total: u32,
    out: &mut Vec<u8>,
) {
    let bytes_per_line = (bmp.width() * kind.bits()).div_ceil(8);
    let (w_pt, h_pt) = size_pt;
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
    put(&mut h, 472, bmp.width()); // ImageBoxRight
    put(&mut h, 476, bmp.height()); // ImageBoxBottom
    put(&mut h, 480, 0x00FF_FFFF); // AlternatePrimary: white
    put_str(&mut h, 1732, size_name(w_pt, h_pt)); // PageSizeName
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

    #[test]
    fn header_fields_follow_pwg_5102_4() {
        let p = page();
        let data = render_pwg(
            &[p.clone(), p.clone()],
            PwgOptions {
                kind: PwgType::Black1,
                dpi: None,
            },
        )
        .unwrap();
        let pages = parse_pwg(&data).unwrap();
        assert_eq!(pages.len(), 2);
        let h = &pages[0];
        assert_eq!(h.string(0), "PwgRaster");
        assert_eq!((h.field(276), h.field(280)), (204, 196));
        // 1728 px at 204 dpi = 609.9 pt; 300 lines at 196 dpi = 110.2 pt.
        assert_eq!((h.field(352), h.field(356)), (610, 110));
        assert_eq!((h.field(372), h.field(376)), (1728, 300));
        assert_eq!((h.field(384), h.field(388), h.field(392)), (1, 1, 216));
        assert_eq!(h.field(400), 3, "black = ColorSpace 3");
        assert_eq!(h.field(420), 1);
        assert_eq!(h.field(452), 2, "TotalPageCount");
        assert_eq!((h.field(456), h.field(460)), (1, 1));
        assert_eq!(h.field(480), 0x00FF_FFFF);
        let bmp = p.to_bitmap().unwrap();
        for (y, line) in h.lines.iter().enumerate() {
            assert_eq!(&line[..], bmp.row(y as u32), "line {y}");
        }
    }

    #[test]
    fn sgray_types_invert_and_widen() {
        let p = page();
        let bmp = p.to_bitmap().unwrap();
        for kind in [PwgType::Sgray1, PwgType::Sgray8] {
            let data = render_pwg(
                std::slice::from_ref(&p),
                PwgOptions {
                    kind,
                    dpi: Some((300, 300)),
                },
            )
            .unwrap();
            let pages = parse_pwg(&data).unwrap();
            let h = &pages[0];
            assert_eq!(h.field(400), 18, "sgray");
            assert_eq!((h.field(276), h.field(280)), (300, 300));
            let scaled = rescale(&bmp, (204, 196), (300, 300));
            assert_eq!(h.field(372), scaled.width());
            assert_eq!(h.lines.len() as u32, scaled.height());
            for (y, line) in h.lines.iter().enumerate() {
                for x in 0..scaled.width() {
                    let black = match kind {
                        PwgType::Sgray1 => line[(x / 8) as usize] & (0x80 >> (x % 8)) == 0,
                        _ => line[x as usize] == 0,
                    };
                    assert_eq!(black, scaled.pixel(x, y as u32), "({x},{y}) {kind:?}");
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
