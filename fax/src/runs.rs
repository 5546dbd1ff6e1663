//! Conversion between packed scan lines and changing-element lists.
//!
//! A scan line is packed MSB first, 1 = black, `ceil(width / 8)` bytes.
//! Its changing elements are the pixel positions where the colour differs
//! from the pixel to the left (the line starts white), in increasing
//! order. Both coders work on changing elements, so the per-pixel work is
//! confined to these two functions, which handle 64 pixels per step.

/// Loads the 64 pixels starting at byte `i` (zero past the end).
#[inline]
fn load_word(line: &[u8], i: usize) -> u64 {
    match line.get(i..i + 8) {
        Some(chunk) => {
            let mut w = [0u8; 8];
            w.copy_from_slice(chunk);
            u64::from_be_bytes(w)
        }
        None => {
            let mut w = [0u8; 8];
            let tail = line.get(i..).unwrap_or(&[]);
            w[..tail.len()].copy_from_slice(tail);
            u64::from_be_bytes(w)
        }
    }
}

/// Replaces `out` with the changing elements of `line` (of `width`
/// pixels). Bits past `width` in the last byte are ignored.
///
/// Works a word at a time: `w ^ (w >> 1)` (with the last pixel of the
/// previous word shifted in) has a bit set exactly at each change, and
/// the set bits are read off with `leading_zeros`.
pub(crate) fn line_to_changes(line: &[u8], width: u32, out: &mut Vec<u32>) {
    out.clear();
    let nbytes = (width as usize).div_ceil(8).min(line.len());
    let line = &line[..nbytes];
    let mut carry = 0u64;
    let mut i = 0;
    while i < nbytes {
        let w = load_word(line, i);
        let mut t = w ^ ((w >> 1) | (carry << 63));
        carry = w & 1;
        let base = i as u32 * 8;
        while t != 0 {
            let lz = t.leading_zeros();
            let pos = base + lz;
            if pos >= width {
                return;
            }
            out.push(pos);
            t ^= (1u64 << 63) >> lz;
        }
        i += 8;
    }
}

/// Writes the line described by `changes` into `out` (all of it is
/// overwritten; pixels past `width` are left 0). `changes` must be
/// nondecreasing; elements at or past `width` are ignored.
///
/// Works a word at a time: the changes in a word are set as bits, and a
/// prefix XOR (six shift-XOR steps) turns them into pixels.
pub(crate) fn changes_to_line(changes: &[u32], width: u32, out: &mut [u8]) {
    let end = width.min(out.len() as u32 * 8);
    let mut ci = 0;
    let mut color = 0u64;
    let mut i = 0;
    while i < out.len() {
        let base = i as u32 * 8;
        let limit = (base + 64).min(end);
        let mut t = 0u64;
        while let Some(&c) = changes.get(ci) {
            if c >= limit {
                break;
            }
            t ^= (1u64 << 63) >> (c - base);
            ci += 1;
        }
        let word = if t == 0 {
            color
        } else {
            let mut x = t;
            x ^= x >> 1;
            x ^= x >> 2;
            x ^= x >> 4;
            x ^= x >> 8;
            x ^= x >> 16;
            x ^= x >> 32;
            let word = x ^ color;
            color = 0u64.wrapping_sub(word & 1);
            word
        };
        let bytes = word.to_be_bytes();
        if let Some(dst) = out.get_mut(i..i + 8) {
            dst.copy_from_slice(&bytes);
        } else {
            let n = out.len() - i;
            out[i..].copy_from_slice(&bytes[..n]);
        }
        i += 8;
        if limit == end && ci < changes.len() {
            // Only sentinels (or junk past the width) are left.
            ci = changes.len();
        }
    }
    // Clear the pixels past `width`.
    let full = (end / 8) as usize;
    if full < out.len() {
        out[full] &= !(0xFFu8 >> (end % 8));
        out[full + 1..].fill(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_changes(line: &[u8], width: u32) -> Vec<u32> {
        let mut out = Vec::new();
        let mut prev = false;
        for x in 0..width {
            let px = line[(x / 8) as usize] & (0x80 >> (x % 8)) != 0;
            if px != prev {
                out.push(x);
                prev = px;
            }
        }
        out
    }

    #[test]
    fn round_trip_patterns() {
        let mut seed = 12345u64;
        for width in [1u32, 7, 8, 9, 63, 64, 65, 130, 1728, 2432] {
            for density in [0u64, 1, 10, 50, 90, 100] {
                let nbytes = width.div_ceil(8) as usize;
                let mut line = vec![0u8; nbytes];
                let mut black = false;
                for x in 0..width {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    if (seed >> 33) % 100 < density / 5 + 1 && density > 0 {
                        black = !black;
                    }
                    if density == 100 || (black && density > 0) {
                        line[(x / 8) as usize] |= 0x80 >> (x % 8);
                    }
                }
                let mut ch = Vec::new();
                line_to_changes(&line, width, &mut ch);
                assert_eq!(
                    ch,
                    naive_changes(&line, width),
                    "width {width} density {density}"
                );
                let mut back = vec![0xAAu8; nbytes];
                changes_to_line(&ch, width, &mut back);
                assert_eq!(back, line, "width {width} density {density}");
            }
        }
    }

    #[test]
    fn padding_bits_are_ignored() {
        let mut ch = Vec::new();
        line_to_changes(&[0x00, 0x7F], 9, &mut ch);
        assert!(ch.is_empty());
        line_to_changes(&[0xFF, 0xFF], 9, &mut ch);
        assert_eq!(ch, vec![0]);
    }
}
