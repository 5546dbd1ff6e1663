//! Decoding image bytes into source pages. Pure: bytes in, pages out.
//!
//! The format is sniffed from the first bytes, never from the file name:
//! PNG, JPEG, TIFF (multipage; bilevel fax TIFFs through
//! [`faxgate_fax::tiff::TiffReader`] so that every CCITT coding and fill
//! order works, everything else through the `tiff` crate), and netpbm
//! (PBM through [`faxgate_fax::pbm`], which takes several images in one
//! file; PGM, PPM and PAM through `image`). PDF is recognised here but
//! rendered by `pdftoppm` in [`crate::files`].
//!
//! Colour becomes luminance (Rec. 601 weights) and transparency is laid
//! over white paper. The DPI is taken from PNG `pHYs`, the JPEG JFIF
//! header or the TIFF resolution tags when they are there.

use std::io::Cursor;

use faxgate_fax::Bitmap;
use faxgate_fax::tiff::TiffReader;
use image::{DynamicImage, ImageFormat};
use tiff::ColorType;
use tiff::decoder::{Decoder as TiffDecoder, DecodingResult};
use tiff::tags::Tag;

use crate::convert::{GrayPage, SourcePage, check_source_size};
use crate::error::ScanError;

/// The formats we read, as sniffed from the first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// PNG.
    Png,
    /// JPEG (JFIF or EXIF).
    Jpeg,
    /// TIFF, either byte order.
    Tiff,
    /// PBM (P1 or P4): bilevel netpbm.
    Pbm,
    /// PGM, PPM or PAM (P2, P3, P5, P6, P7).
    Pnm,
    /// PDF, rendered through `pdftoppm`.
    Pdf,
}

impl Format {
    /// Sniffs the format from the first bytes.
    pub fn sniff(data: &[u8]) -> Option<Format> {
        match data {
            [0x89, b'P', b'N', b'G', ..] => Some(Format::Png),
            [0xFF, 0xD8, 0xFF, ..] => Some(Format::Jpeg),
            [b'I', b'I', 42, 0, ..] | [b'M', b'M', 0, 42, ..] => Some(Format::Tiff),
            [b'P', b'1' | b'4', ..] => Some(Format::Pbm),
            [b'P', b'2' | b'3' | b'5' | b'6' | b'7', ..] => Some(Format::Pnm),
            _ if data.starts_with(b"%PDF-") => Some(Format::Pdf),
            _ => None,
        }
    }

    /// The name used in messages.
    pub fn name(self) -> &'static str {
        match self {
            Format::Png => "PNG",
            Format::Jpeg => "JPEG",
            Format::Tiff => "TIFF",
            Format::Pbm => "PBM",
            Format::Pnm => "PNM",
            Format::Pdf => "PDF",
        }
    }
}

/// Hex of the first bytes, for "unknown format" messages.
pub(crate) fn magic_hex(data: &[u8]) -> String {
    let hex: Vec<String> = data.iter().take(8).map(|b| format!("{b:02x}")).collect();
    if hex.is_empty() {
        "nothing: the file is empty".into()
    } else {
        hex.join(" ")
    }
}

/// Where decoded pages go, one at a time, so that a multi-page file never
/// holds more than one decoded page at once (a `Vec` collects them all).
pub(crate) trait PageSink {
    /// The file's page count, when its format states it before the pages
    /// (a fax TIFF). Called before the first page; refusing it stops the
    /// decoding.
    fn page_count(&mut self, pages: usize) -> Result<(), ScanError>;
    /// Every page's size (width, height), when the format states them
    /// before the pages (a fax TIFF). Called after `page_count`, before
    /// the first page; refusing them stops the decoding.
    fn page_sizes(&mut self, sizes: &[(u32, u32)]) -> Result<(), ScanError>;
    /// The next page. An error stops the decoding.
    fn page(&mut self, page: SourcePage) -> Result<(), ScanError>;
}

impl PageSink for Vec<SourcePage> {
    fn page_count(&mut self, _pages: usize) -> Result<(), ScanError> {
        Ok(())
    }

    fn page_sizes(&mut self, _sizes: &[(u32, u32)]) -> Result<(), ScanError> {
        Ok(())
    }

    fn page(&mut self, page: SourcePage) -> Result<(), ScanError> {
        self.push(page);
        Ok(())
    }
}

/// Decodes every page of an image file (anything but PDF) into a `Vec`.
/// The loaders use [`decode_into`], which hands over one page at a time.
pub fn decode_image(name: &str, data: &[u8]) -> Result<Vec<SourcePage>, ScanError> {
    let mut pages = Vec::new();
    decode_into(name, data, &mut pages)?;
    Ok(pages)
}

/// Decodes the pages of an image file (anything but PDF) one at a time
/// into `sink`. Page sizes are checked against
/// [`crate::convert::check_source_size`] before a page is decoded where
/// the format allows it.
pub(crate) fn decode_into(
    name: &str,
    data: &[u8],
    sink: &mut dyn PageSink,
) -> Result<(), ScanError> {
    let format = Format::sniff(data).ok_or_else(|| ScanError::UnknownFormat {
        name: name.into(),
        magic: magic_hex(data),
    })?;
    let err = |page: usize, reason: String| ScanError::Decode {
        name: name.into(),
        page,
        format: format.name(),
        reason,
    };
    let size = |page: usize, width: u32, height: u32| {
        check_source_size(width, height).map_err(|reason| ScanError::Geometry {
            name: name.into(),
            page,
            width: width.into(),
            height: height.into(),
            reason,
        })
    };
    let image_format = match format {
        Format::Png => ImageFormat::Png,
        Format::Jpeg => ImageFormat::Jpeg,
        Format::Pnm => ImageFormat::Pnm,
        Format::Pbm => return decode_pbm(data, &err, &size, sink),
        Format::Tiff => return decode_tiff(data, &err, &size, sink),
        Format::Pdf => {
            return Err(err(
                1,
                "PDF needs pdftoppm; read it with files::load_file".into(),
            ));
        }
    };
    let (w, h) = image::ImageReader::with_format(Cursor::new(data), image_format)
        .into_dimensions()
        .map_err(|e| err(1, e.to_string()))?;
    size(1, w, h)?;
    let img = image::load_from_memory_with_format(data, image_format)
        .map_err(|e| err(1, e.to_string()))?;
    let dpi = match format {
        Format::Png => png_dpi(data),
        Format::Jpeg => jfif_dpi(data),
        _ => None,
    };
    let page = dynamic_to_page(&img, dpi).map_err(|r| err(1, r))?;
    drop(img);
    sink.page(page)
}

/// A PBM file, one image at a time (a file may hold several). Each header
/// is checked before its raster is touched, so a tiny file claiming a huge
/// image is refused rather than allocated.
fn decode_pbm(
    data: &[u8],
    err: &dyn Fn(usize, String) -> ScanError,
    size: &dyn Fn(usize, u32, u32) -> Result<(), ScanError>,
    sink: &mut dyn PageSink,
) -> Result<(), ScanError> {
    let mut pos = 0;
    let mut n = 0;
    while pos < data.len() {
        n += 1;
        let head = faxgate_fax::pbm::read_header(data, pos).map_err(|e| err(n, e.to_string()))?;
        size(n, head.width, head.height)?;
        let (bitmap, end) =
            faxgate_fax::pbm::read_pbm_at(data, pos).map_err(|e| err(n, e.to_string()))?;
        sink.page(SourcePage::Bilevel { bitmap, dpi: None })?;
        pos = end;
        // Whitespace may separate images.
        while data.get(pos).is_some_and(u8::is_ascii_whitespace) {
            pos += 1;
        }
    }
    if n == 0 {
        return Err(err(1, "no PBM header".into()));
    }
    Ok(())
}

/// A decoded `image` image as a grey page, alpha laid over white.
fn dynamic_to_page(img: &DynamicImage, dpi: Option<(f64, f64)>) -> Result<SourcePage, String> {
    let (w, h) = (img.width(), img.height());
    let data = if img.color().has_alpha() {
        img.to_luma_alpha8()
            .pixels()
            .map(|p| over_white(p.0[0], p.0[1]))
            .collect()
    } else {
        img.to_luma8().into_raw()
    };
    GrayPage::new(w, h, data, dpi)
        .map(SourcePage::Gray)
        .ok_or_else(|| format!("decoder returned the wrong number of pixels for {w}x{h}"))
}

/// Grey `l` with alpha `a` over white paper.
fn over_white(l: u8, a: u8) -> u8 {
    let (l, a) = (u32::from(l), u32::from(a));
    ((l * a + 255 * (255 - a) + 127) / 255) as u8
}

/// Rec. 601 luminance.
fn luma(r: u32, g: u32, b: u32) -> u8 {
    ((r * 299 + g * 587 + b * 114 + 500) / 1000).min(255) as u8
}

/// DPI from a PNG `pHYs` chunk (unit 1 = per metre).
pub fn png_dpi(data: &[u8]) -> Option<(f64, f64)> {
    let mut pos = 8;
    while pos + 8 <= data.len() {
        let len = u32::from_be_bytes(data[pos..pos + 4].try_into().ok()?) as usize;
        let kind = &data[pos + 4..pos + 8];
        let body = data.get(pos + 8..pos.checked_add(8 + len)?)?;
        match kind {
            b"pHYs" if len == 9 && body[8] == 1 => {
                let x = u32::from_be_bytes(body[0..4].try_into().ok()?);
                let y = u32::from_be_bytes(body[4..8].try_into().ok()?);
                return Some((f64::from(x) * 0.0254, f64::from(y) * 0.0254));
            }
            b"IDAT" | b"IEND" => return None,
            _ => {}
        }
        pos += 12 + len;
    }
    None
}

/// DPI from a JPEG JFIF APP0 segment (units 1 = per inch, 2 = per cm).
pub fn jfif_dpi(data: &[u8]) -> Option<(f64, f64)> {
    let mut pos = 2;
    while pos + 4 <= data.len() && data[pos] == 0xFF {
        let marker = data[pos + 1];
        let len = usize::from(u16::from_be_bytes([data[pos + 2], data[pos + 3]]));
        let body = data.get(pos + 4..pos + 2 + len)?;
        if marker == 0xE0 && body.len() >= 12 && body.starts_with(b"JFIF\0") {
            let x = f64::from(u16::from_be_bytes([body[8], body[9]]));
            let y = f64::from(u16::from_be_bytes([body[10], body[11]]));
            return match body[7] {
                1 => Some((x, y)),
                2 => Some((x * 2.54, y * 2.54)),
                _ => None,
            };
        }
        if marker == 0xDA {
            return None;
        }
        pos += 2 + len;
    }
    None
}

/// A TIFF, one page at a time: bilevel fax pages through our reader,
/// anything else through the `tiff` crate.
fn decode_tiff(
    data: &[u8],
    err: &dyn Fn(usize, String) -> ScanError,
    size: &dyn Fn(usize, u32, u32) -> Result<(), ScanError>,
    sink: &mut dyn PageSink,
) -> Result<(), ScanError> {
    if let Ok(reader) = TiffReader::new(data) {
        sink.page_count(reader.pages().len())?;
        let sizes: Vec<(u32, u32)> = reader.pages().iter().map(|p| (p.width, p.height)).collect();
        sink.page_sizes(&sizes)?;
        for (i, page) in reader.pages().iter().enumerate() {
            // Before decoding: a fax page's height is bounded only by its
            // data (up to 8 lines a byte), its width by 65536.
            size(i + 1, page.width, page.height)?;
            let (bitmap, _summary) = reader
                .decode_page(i)
                .map_err(|e| err(i + 1, e.to_string()))?;
            let dpi = match (page.x_resolution, page.y_resolution, page.resolution_unit) {
                (Some(x), Some(y), 2) => Some((x, y)),
                (Some(x), Some(y), 3) => Some((x * 2.54, y * 2.54)),
                _ => None,
            };
            sink.page(SourcePage::Bilevel { bitmap, dpi })?;
        }
        return Ok(());
    }
    let mut dec = TiffDecoder::new(Cursor::new(data)).map_err(|e| err(1, e.to_string()))?;
    let mut n = 1;
    loop {
        let (w, h) = dec.dimensions().map_err(|e| err(n, e.to_string()))?;
        size(n, w, h)?;
        let page = tiff_page(&mut dec).map_err(|reason| err(n, reason))?;
        sink.page(page)?;
        if !dec.more_images() {
            return Ok(());
        }
        n += 1;
        dec.next_image().map_err(|e| err(n, e.to_string()))?;
    }
}

/// The current page of a `tiff` decoder as a grey (or bilevel) page.
fn tiff_page(dec: &mut TiffDecoder<Cursor<&[u8]>>) -> Result<SourcePage, String> {
    let (w, h) = dec.dimensions().map_err(|e| e.to_string())?;
    // Checked by the caller too; a zero width would also break the row
    // arithmetic below.
    check_source_size(w, h)?;
    let color = dec.colortype().map_err(|e| e.to_string())?;
    let dpi = tiff_dpi(dec);
    let image = dec.read_image().map_err(|e| e.to_string())?;
    let (wu, hu) = (w as usize, h as usize);
    let gray: Vec<u8> = match (color, image) {
        (ColorType::Gray(bits @ (1 | 2 | 4)), DecodingResult::U8(packed)) => {
            let stride = (wu * usize::from(bits)).div_ceil(8);
            if packed.len() < stride * hu {
                return Err("short image data".into());
            }
            if bits == 1 {
                // Min-is-black 1-bit: 0 = black. Keep it bilevel.
                let data: Vec<u8> = packed[..stride * hu].iter().map(|b| !b).collect();
                let bitmap = Bitmap::from_packed(w, h, data).map_err(|e| e.to_string())?;
                return Ok(SourcePage::Bilevel { bitmap, dpi });
            }
            let max = (1u32 << bits) - 1;
            let per = 8 / usize::from(bits);
            let mut out = Vec::with_capacity(wu * hu);
            for row in packed.chunks_exact(stride).take(hu) {
                out.extend((0..wu).map(|x| {
                    let shift = 8 - usize::from(bits) * (x % per + 1);
                    let v = (u32::from(row[x / per]) >> shift) & max;
                    (v * 255 / max) as u8
                }));
            }
            out
        }
        (ColorType::Gray(8), DecodingResult::U8(v)) => v,
        (ColorType::Gray(16), DecodingResult::U16(v)) => v.iter().map(|s| (s >> 8) as u8).collect(),
        (color, result) => {
            let samples: Vec<u8> = match result {
                DecodingResult::U8(v) => v,
                DecodingResult::U16(v) => v.iter().map(|s| (s >> 8) as u8).collect(),
                _ => return Err(format!("{color:?} samples are not supported")),
            };
            match color {
                ColorType::GrayA(_) => samples
                    .chunks_exact(2)
                    .map(|p| over_white(p[0], p[1]))
                    .collect(),
                ColorType::RGB(_) => samples
                    .chunks_exact(3)
                    .map(|p| luma(p[0].into(), p[1].into(), p[2].into()))
                    .collect(),
                ColorType::RGBA(_) => samples
                    .chunks_exact(4)
                    .map(|p| over_white(luma(p[0].into(), p[1].into(), p[2].into()), p[3]))
                    .collect(),
                ColorType::CMYK(_) => samples
                    .chunks_exact(4)
                    .map(|p| {
                        let k = 255 - u32::from(p[3]);
                        let ch = |c: u8| (255 - u32::from(c)) * k / 255;
                        luma(ch(p[0]), ch(p[1]), ch(p[2]))
                    })
                    .collect(),
                other => return Err(format!("colour type {other:?} is not supported")),
            }
        }
    };
    GrayPage::new(w, h, gray, dpi)
        .map(SourcePage::Gray)
        .ok_or_else(|| format!("image data does not match {w}x{h}"))
}

/// XResolution/YResolution with ResolutionUnit (2 = inch, 3 = cm).
fn tiff_dpi(dec: &mut TiffDecoder<Cursor<&[u8]>>) -> Option<(f64, f64)> {
    let x = dec.get_tag_f64(Tag::XResolution).ok()?;
    let y = dec.get_tag_f64(Tag::YResolution).ok()?;
    let unit = dec
        .find_tag_unsigned::<u16>(Tag::ResolutionUnit)
        .ok()
        .flatten()
        .unwrap_or(2);
    match unit {
        2 => Some((x, y)),
        3 => Some((x * 2.54, y * 2.54)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_formats() {
        let table: [(&[u8], Option<Format>); 9] = [
            (b"\x89PNG\r\n\x1a\n", Some(Format::Png)),
            (b"\xff\xd8\xff\xe0", Some(Format::Jpeg)),
            (b"II*\0", Some(Format::Tiff)),
            (b"MM\0*", Some(Format::Tiff)),
            (b"P4\n", Some(Format::Pbm)),
            (b"P1\n", Some(Format::Pbm)),
            (b"P5\n", Some(Format::Pnm)),
            (b"%PDF-1.4", Some(Format::Pdf)),
            (b"hello", None),
        ];
        for (bytes, want) in table {
            assert_eq!(Format::sniff(bytes), want, "{bytes:?}");
        }
    }

    #[test]
    fn unknown_format_names_the_file_and_bytes() {
        let e = decode_image("notes.txt", b"hello").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("notes.txt") && msg.contains("68 65 6c"),
            "{msg}"
        );
        let e = decode_image("empty", b"").unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
    }

    #[test]
    fn broken_png_names_the_page_and_format() {
        let e = decode_image("x.png", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR").unwrap_err();
        assert!(
            matches!(
                e,
                ScanError::Decode {
                    page: 1,
                    format: "PNG",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn pbm_header_claiming_a_huge_image_is_refused_before_allocating() {
        // 20 bytes claiming 65536 x 65536 pixels (512 MiB of bitmap).
        let e = decode_image("huge.pbm", b"P1\n65536 65536\n1").unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, ScanError::Geometry { page: 1, .. }), "{msg}");
        assert!(
            msg.contains("huge.pbm") && msg.contains("268435456"),
            "{msg}"
        );
        // Few pixels, but more lines than any fax page.
        let e = decode_image("tall.pbm", b"P1\n8 100000\n1").unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, ScanError::Geometry { page: 1, .. }), "{msg}");
        assert!(msg.contains("tall.pbm") && msg.contains("80000"), "{msg}");
        // Within the limits but with too little data: truncated.
        let e = decode_image("short.pbm", b"P4\n16 4\n\x00\x00").unwrap_err();
        assert!(matches!(e, ScanError::Decode { page: 1, .. }), "{e}");
    }

    #[test]
    fn pbm_files_with_several_images_decode_in_order() {
        let p1 = b"P1\n# two rows\n3 2\n101\n0 1 0\n";
        let mut data = p1.to_vec();
        data.extend_from_slice(b"\nP4\n8 1\n\x81\n");
        let pages = decode_image("two.pbm", &data).unwrap();
        assert_eq!(pages.len(), 2);
        let SourcePage::Bilevel { bitmap, .. } = &pages[0] else {
            panic!("not bilevel");
        };
        assert_eq!((bitmap.width(), bitmap.height()), (3, 2));
        assert!(bitmap.pixel(0, 0) && !bitmap.pixel(1, 0) && bitmap.pixel(2, 0));
        assert!(!bitmap.pixel(0, 1) && bitmap.pixel(1, 1));
        let SourcePage::Bilevel { bitmap, .. } = &pages[1] else {
            panic!("not bilevel");
        };
        assert_eq!(bitmap.data(), &[0x81]);
        // A later image that is too tall names its page.
        data.extend_from_slice(b"P4\n8 90000\n");
        let e = decode_image("three.pbm", &data).unwrap_err();
        assert!(matches!(e, ScanError::Geometry { page: 3, .. }), "{e}");
    }

    #[test]
    fn zero_width_tiff_is_an_error_not_a_panic() {
        // Little-endian TIFF, one IFD: 0 x 4, 2-bit grey, uncompressed.
        let mut t = b"II*\0\x08\0\0\0".to_vec();
        let entries: [(u16, u16, u32); 7] = [
            (256, 3, 0),   // ImageWidth
            (257, 3, 4),   // ImageLength
            (258, 3, 2),   // BitsPerSample
            (259, 3, 1),   // Compression: none
            (262, 3, 1),   // PhotometricInterpretation: min-is-black
            (273, 4, 200), // StripOffsets
            (279, 4, 4),   // StripByteCounts
        ];
        t.extend_from_slice(&(entries.len() as u16).to_le_bytes());
        for (tag, typ, value) in entries {
            t.extend_from_slice(&tag.to_le_bytes());
            t.extend_from_slice(&typ.to_le_bytes());
            t.extend_from_slice(&1u32.to_le_bytes());
            if typ == 3 {
                t.extend_from_slice(&(value as u16).to_le_bytes());
                t.extend_from_slice(&[0, 0]);
            } else {
                t.extend_from_slice(&value.to_le_bytes());
            }
        }
        t.extend_from_slice(&0u32.to_le_bytes());
        t.resize(204, 0);
        let e = decode_image("flat.tif", &t).unwrap_err();
        assert!(e.to_string().contains("flat.tif"), "{e}");
    }

    #[test]
    fn jfif_density_is_read() {
        // SOI, APP0 JFIF with units 1, 300x150.
        let mut j = vec![0xFF, 0xD8, 0xFF, 0xE0, 0, 16];
        j.extend_from_slice(b"JFIF\0\x01\x02\x01");
        j.extend_from_slice(&[0x01, 0x2C, 0x00, 0x96, 0, 0]);
        assert_eq!(jfif_dpi(&j), Some((300.0, 150.0)));
        j[13] = 2; // per cm
        let (x, y) = jfif_dpi(&j).unwrap();
        assert!((x - 762.0).abs() < 1e-9 && (y - 381.0).abs() < 1e-9);
        j[13] = 0; // aspect only
        assert_eq!(jfif_dpi(&j), None);
    }

    #[test]
    fn alpha_is_laid_over_white() {
        assert_eq!(over_white(0, 255), 0);
        assert_eq!(over_white(0, 0), 255);
        assert_eq!(over_white(0, 128), 127);
    }

    /// Records what a decoder hands over, refusing the stated sizes.
    #[derive(Default)]
    struct Refusing {
        sizes: Vec<(u32, u32)>,
        pages: usize,
    }

    impl PageSink for Refusing {
        fn page_count(&mut self, _pages: usize) -> Result<(), ScanError> {
            Ok(())
        }

        fn page_sizes(&mut self, sizes: &[(u32, u32)]) -> Result<(), ScanError> {
            self.sizes = sizes.to_vec();
            Err(ScanError::NoPages {
                name: "refused".into(),
            })
        }

        fn page(&mut self, _page: SourcePage) -> Result<(), ScanError> {
            self.pages += 1;
            Ok(())
        }
    }

    #[test]
    fn fax_tiff_page_sizes_are_stated_before_any_page_is_decoded() {
        use faxgate_fax::tiff::{TiffWriterOptions, write_tiff};
        use faxgate_fax::{Coding, Resolution};
        let pages = [Bitmap::new(1728, 40), Bitmap::new(2048, 30)];
        let tiff = write_tiff(
            &pages,
            Coding::Mmr,
            Resolution::Fine,
            TiffWriterOptions::default(),
        )
        .unwrap();
        let mut sink = Refusing::default();
        let e = decode_into("two.tif", &tiff, &mut sink).unwrap_err();
        assert!(matches!(e, ScanError::NoPages { .. }), "{e}");
        assert_eq!(sink.sizes, [(1728, 40), (2048, 30)]);
        assert_eq!(sink.pages, 0, "no page decoded once the sizes are refused");
    }
}
