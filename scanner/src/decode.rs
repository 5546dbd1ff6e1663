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

use crate::convert::{GrayPage, SourcePage};
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

/// Decodes every page of an image file (anything but PDF).
pub fn decode_image(name: &str, data: &[u8]) -> Result<Vec<SourcePage>, ScanError> {
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
    match format {
        Format::Png => {
            let img = image::load_from_memory_with_format(data, ImageFormat::Png)
                .map_err(|e| err(1, e.to_string()))?;
            Ok(vec![
                dynamic_to_page(&img, png_dpi(data)).map_err(|r| err(1, r))?,
            ])
        }
        Format::Jpeg => {
            let img = image::load_from_memory_with_format(data, ImageFormat::Jpeg)
                .map_err(|e| err(1, e.to_string()))?;
            Ok(vec![
                dynamic_to_page(&img, jfif_dpi(data)).map_err(|r| err(1, r))?,
            ])
        }
        Format::Pnm => {
            let img = image::load_from_memory_with_format(data, ImageFormat::Pnm)
                .map_err(|e| err(1, e.to_string()))?;
            Ok(vec![dynamic_to_page(&img, None).map_err(|r| err(1, r))?])
        }
        Format::Pbm => {
            let pages = faxgate_fax::pbm::read_pbm_all(data).map_err(|e| err(1, e.to_string()))?;
            Ok(pages
                .into_iter()
                .map(|bitmap| SourcePage::Bilevel { bitmap, dpi: None })
                .collect())
        }
        Format::Tiff => decode_tiff(data, &err),
        Format::Pdf => Err(err(
            1,
            "PDF needs pdftoppm; read it with files::load_file".into(),
        )),
    }
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

/// A TIFF: bilevel fax pages through our reader, anything else through
/// the `tiff` crate.
fn decode_tiff(
    data: &[u8],
    err: &dyn Fn(usize, String) -> ScanError,
) -> Result<Vec<SourcePage>, ScanError> {
    if let Ok(reader) = TiffReader::new(data) {
        let mut pages = Vec::with_capacity(reader.pages().len());
        for (i, page) in reader.pages().iter().enumerate() {
            let (bitmap, _summary) = reader
                .decode_page(i)
                .map_err(|e| err(i + 1, e.to_string()))?;
            let dpi = match (page.x_resolution, page.y_resolution, page.resolution_unit) {
                (Some(x), Some(y), 2) => Some((x, y)),
                (Some(x), Some(y), 3) => Some((x * 2.54, y * 2.54)),
                _ => None,
            };
            pages.push(SourcePage::Bilevel { bitmap, dpi });
        }
        return Ok(pages);
    }
    let mut dec = TiffDecoder::new(Cursor::new(data)).map_err(|e| err(1, e.to_string()))?;
    let mut pages = Vec::new();
    loop {
        let n = pages.len() + 1;
        pages.push(tiff_page(&mut dec).map_err(|reason| err(n, reason))?);
        if !dec.more_images() {
            return Ok(pages);
        }
        dec.next_image().map_err(|e| err(n + 1, e.to_string()))?;
    }
}

/// The current page of a `tiff` decoder as a grey (or bilevel) page.
fn tiff_page(dec: &mut TiffDecoder<Cursor<&[u8]>>) -> Result<SourcePage, String> {
    let (w, h) = dec.dimensions().map_err(|e| e.to_string())?;
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
}
