//! PBM (netpbm bilevel) import and export: P4 (raw) both ways, P1
//! (plain) for reading. PBM uses 1 = black, like [`Bitmap`].

use crate::bitmap::Bitmap;
use crate::error::FaxError;

/// Parses every image of a PBM file (netpbm allows several in a row).
pub fn read_pbm_all(data: &[u8]) -> Result<Vec<Bitmap>, FaxError> {
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let (bmp, next) = read_one(data, pos)?;
        out.push(bmp);
        pos = next;
        // Whitespace may separate images.
        while data.get(pos).is_some_and(|b| b.is_ascii_whitespace()) {
            pos += 1;
        }
        if pos >= data.len() {
            return Ok(out);
        }
    }
}

/// Parses the first image of a PBM file.
pub fn read_pbm(data: &[u8]) -> Result<Bitmap, FaxError> {
    read_one(data, 0).map(|(b, _)| b)
}

/// The size a PBM image's header claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PbmHeader {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

/// Reads the header of the image starting at byte `pos`, without touching
/// its raster: a caller can refuse a size before anything is allocated.
pub fn read_header(data: &[u8], pos: usize) -> Result<PbmHeader, FaxError> {
    header(data, pos).map(|(_, h, _)| h)
}

/// Parses the image starting at byte `pos` (of a file that may hold
/// several); returns it and the byte after its raster.
pub fn read_pbm_at(data: &[u8], pos: usize) -> Result<(Bitmap, usize), FaxError> {
    read_one(data, pos)
}

/// Writes a bitmap as raw PBM (P4).
pub fn write_pbm(bmp: &Bitmap) -> Vec<u8> {
    let mut out = format!("P4\n{} {}\n", bmp.width(), bmp.height()).into_bytes();
    out.extend_from_slice(bmp.data());
    out
}

fn err(offset: usize, reason: &str) -> FaxError {
    FaxError::Pbm {
        reason: reason.to_string(),
        offset,
    }
}

/// Skips whitespace and `#` comments.
fn skip_ws(data: &[u8], mut pos: usize) -> usize {
    while let Some(&b) = data.get(pos) {
        if b == b'#' {
            while data.get(pos).is_some_and(|&c| c != b'\n' && c != b'\r') {
                pos += 1;
            }
        } else if b.is_ascii_whitespace() {
            pos += 1;
        } else {
            break;
        }
    }
    pos
}

fn read_uint(data: &[u8], pos: usize) -> Result<(u32, usize), FaxError> {
    let mut pos = skip_ws(data, pos);
    let start = pos;
    let mut v: u32 = 0;
    while let Some(d) = data.get(pos).filter(|b| b.is_ascii_digit()) {
        v = v
            .checked_mul(10)
            .and_then(|v| v.checked_add(u32::from(d - b'0')))
            .ok_or_else(|| err(start, "number too large"))?;
        pos += 1;
    }
    if pos == start {
        return Err(err(start, "expected a number"));
    }
    Ok((v, pos))
}

/// The header at `pos`: whether the raster is raw (P4), the size, and
/// where the header's numbers end.
fn header(data: &[u8], pos: usize) -> Result<(bool, PbmHeader, usize), FaxError> {
    let magic = data
        .get(pos..pos + 2)
        .ok_or_else(|| err(pos, "no PBM header"))?;
    let raw = match magic {
        b"P4" => true,
        b"P1" => false,
        _ => return Err(err(pos, "not a PBM file (P1 or P4)")),
    };
    let (width, p) = read_uint(data, pos + 2)?;
    let (height, p) = read_uint(data, p)?;
    Ok((raw, PbmHeader { width, height }, p))
}

fn read_one(data: &[u8], pos: usize) -> Result<(Bitmap, usize), FaxError> {
    let (raw, PbmHeader { width, height }, p) = header(data, pos)?;
    if width == 0 || width > crate::MAX_WIDTH {
        return Err(err(pos, "width out of range"));
    }
    let stride = (width as usize).div_ceil(8);
    let size = stride
        .checked_mul(height as usize)
        .filter(|&s| s <= 1 << 30)
        .ok_or_else(|| err(pos, "image too large"))?;
    if raw {
        // Exactly one whitespace byte after the height.
        let start = p + 1;
        let body = data
            .get(start..start + size)
            .ok_or_else(|| err(start, "truncated raster"))?;
        Ok((
            Bitmap::from_packed(width, height, body.to_vec())?,
            start + size,
        ))
    } else {
        // Every pixel is one '0' or '1' character: a header claiming more
        // pixels than there are bytes left is refused before the bitmap
        // is allocated (up to 1 GiB for a dozen bytes of header).
        let pixels = u64::from(width) * u64::from(height);
        let left = data.len().saturating_sub(p) as u64;
        if left < pixels {
            return Err(FaxError::Pbm {
                reason: format!(
                    "raster too short for {width}x{height}: needs at least {pixels} \
                     characters, {left} bytes left"
                ),
                offset: p,
            });
        }
        let mut bmp = Bitmap::new(width, height);
        let mut p = p;
        for y in 0..height {
            for x in 0..width {
                p = skip_ws(data, p);
                match data.get(p) {
                    Some(b'1') => bmp.set_pixel(x, y, true),
                    Some(b'0') => {}
                    Some(_) => return Err(err(p, "expected 0 or 1")),
                    None => return Err(err(p, "truncated raster")),
                }
                p += 1;
            }
        }
        Ok((bmp, p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p1_and_p4_agree() {
        let p1 = b"P1\n# comment\n10 2\n1 0 0 0 0 0 0 0 0 1\n0101010101\n";
        let a = read_pbm(p1).unwrap();
        assert_eq!(a.data(), &[0x80, 0x40, 0x55, 0x40]);
        let p4 = write_pbm(&a);
        assert_eq!(&p4[..9], b"P4\n10 2\n\x80");
        assert_eq!(read_pbm(&p4).unwrap(), a);
        let two = [p4.clone(), p4].concat();
        assert_eq!(read_pbm_all(&two).unwrap().len(), 2);
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            &b""[..],
            b"P4",
            b"P4\n10",
            b"P4\n10 2\n\x80",
            b"P5\n1 1\n\0",
            b"P1 2 1 0 2",
        ] {
            assert!(read_pbm(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn p1_header_without_its_raster_is_refused_before_allocating() {
        // 65536 x 131072 is 1 GiB of bitmap, within the size limit; the
        // characters the raster needs are not there, which is what refuses
        // it (not the truncation found while filling the bitmap).
        for (bad, pixels) in [
            (&b"P1 65536 131072 "[..], 65536u64 * 131072),
            (b"P1 3 2 101", 6),
        ] {
            let e = read_pbm(bad).unwrap_err().to_string();
            assert!(
                e.contains(&format!("needs at least {pixels} characters")),
                "{e}"
            );
        }
        // Exactly the pixels, no whitespace, is enough.
        assert_eq!(read_pbm(b"P1 3 2 101010").unwrap().data(), &[0xA0, 0x40]);
    }
}
