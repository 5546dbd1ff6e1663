//! Conversion between packed scan lines and changing-element lists.
//!
//! A scan line is packed MSB first, 1 = black, `ceil(width / 8)` bytes.
//! Its changing elements are the pixel positions where the colour differs
//! from the pixel to the left (the line starts white), in increasing
//! order. Both coders work on changing elements, so the per-pixel work is
//! confined to [`line_to_changes`] and [`changes_to_line`], which handle
//! 64 pixels per step. The b1 helpers at the end move the 2-D coders
//! along the reference line.

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

/// Writes the changing elements of `line` (of `width` pixels) to the
/// start of `out`, then three `width` sentinels, and returns the number
/// of changing elements. Bits past `width` in the last byte are ignored.
/// `out` must hold `width + 3` elements (a line has at most `width`
/// changing elements, one per pixel).
///
/// Works a word at a time: `w ^ (w >> 1)` (with the last pixel of the
/// previous word shifted in) has a bit set exactly at each change, and
/// the set bits are read off with `leading_zeros`.
pub(crate) fn line_to_changes(line: &[u8], width: u32, out: &mut [u32]) -> usize {
    let nbytes = (width as usize).div_ceil(8).min(line.len());
    let line = &line[..nbytes];
    // Whole words inside the line (no masking needed), in blocks of four
    // so that white stretches are passed over 256 pixels at a time.
    let whole = (width / 64) as usize;
    let (blocks, rest) = line[..(whole * 8).min(nbytes)].as_chunks::<32>();
    let mut n = 0;
    let mut carry = 0u64;
    let mut base = 0u32;
    for block in blocks {
        if carry == 0 && *block == [0u8; 32] {
            base += 256;
            continue;
        }
        for word in block.as_chunks::<8>().0 {
            (n, carry) = word_changes(u64::from_be_bytes(*word), carry, base, out, n);
            base += 64;
        }
    }
    for word in rest.as_chunks::<8>().0 {
        (n, carry) = word_changes(u64::from_be_bytes(*word), carry, base, out, n);
        base += 64;
    }
    // The last, partial word: drop the changes at and past `width`.
    if base < width {
        let w = load_word(line, base as usize / 8);
        let t = (w ^ ((w >> 1) | (carry << 63))) & !(u64::MAX >> (width - base));
        n = push_changes(t, base, out, n);
    }
    out[n..n + 3].fill(width);
    n
}

/// The changes in the 64 pixels `w` from `base` on, `carry` being the
/// pixel before them: appended to `out[n..]`. Returns the new count and
/// the last pixel.
#[inline(always)]
fn word_changes(w: u64, carry: u64, base: u32, out: &mut [u32], n: usize) -> (usize, u64) {
    let t = w ^ ((w >> 1) | (carry << 63));
    let n = if t != 0 {
        push_changes(t, base, out, n)
    } else {
        n
    };
    (n, w & 1)
}

/// Appends to `out[n..]` the positions `base + i` of the bits `i` set in
/// `t` (counted from the top), and returns the new count.
#[inline(always)]
fn push_changes(mut t: u64, base: u32, out: &mut [u32], mut n: usize) -> usize {
    while t != 0 {
        let lz = t.leading_zeros();
        // Each change is a distinct pixel below `width`, so `n < width`
        // and `out` (of `width + 3`) has room.
        out[n] = base + lz;
        n += 1;
        t ^= (1u64 << 63) >> lz;
    }
    n
}

/// Writes the line described by `changes` into `out` (all of it is
/// overwritten; pixels past `width` are left 0). `changes` must be
/// strictly increasing below `width`; elements at or past `width` (such
/// as sentinels) are ignored.
///
/// Clears `out`, then builds each 64-pixel word that has black pixels in
/// a register, from the black runs (between an even-indexed change and
/// the next), and stores it whole. The stores are aligned to the line and
/// nothing is read back, so no store waits for an earlier overlapping
/// one (a read-modify-write per run did, which cost more than the rest of
/// the work). Give `out` room for whole words (up to 7 bytes of slack
/// past the line) or it is drawn in a copy.
pub(crate) fn changes_to_line(changes: &[u32], width: u32, out: &mut [u8]) {
    out.fill(0);
    draw_changes(changes, width, out);
}

/// [`changes_to_line`] into an `out` that is zero already.
pub(crate) fn draw_changes(changes: &[u32], width: u32, out: &mut [u8]) {
    let end = width.min(u32::try_from(out.len() * 8).unwrap_or(u32::MAX));
    let (words, _) = out.as_chunks_mut::<8>();
    if words.len() * 64 >= end as usize {
        draw_runs(changes, end, words);
    } else {
        // No slack: draw into a copy that has it.
        let mut padded = vec![[0u8; 8]; (end as usize).div_ceil(64)];
        draw_runs(changes, end, &mut padded);
        let n = out.len();
        out.copy_from_slice(&padded.as_flattened()[..n]);
    }
}

/// Draws the black runs of `changes` (below `end`) into `words`, which
/// hold pixels `0..end` and are zero.
fn draw_runs(changes: &[u32], end: u32, words: &mut [[u8; 8]]) {
    // Cut the list at `end` once, so the loop needs no clamping.
    let changes = &changes[..changes.partition_point(|&c| c < end)];
    let (pairs, last) = changes.as_chunks::<2>();
    // The word being built: its index and its pixels so far.
    let mut cw = 0usize;
    let mut acc = 0u64;
    for &[a, b] in pairs {
        (cw, acc) = add_run(words, cw, acc, a, b);
    }
    if let &[a] = last {
        add_run(words, cw, acc, a, end);
    }
}

/// Adds the black run `a..b` (`a < b`) to the line being built in
/// `words`, whose word `cw` holds `acc` so far (runs come left to right).
/// Returns the new word being built and its pixels, which are stored
/// already.
#[inline(always)]
fn add_run(words: &mut [[u8; 8]], cw: usize, acc: u64, a: u32, b: u32) -> (usize, u64) {
    let (wa, wb) = ((a / 64) as usize, ((b - 1) / 64) as usize);
    let head = u64::MAX >> (a % 64);
    // The top `b % 64` bits (all 64 when `b` is a multiple of 64).
    let tail = u64::MAX << (b.wrapping_neg() % 64);
    // Start afresh on a new word (the old one is stored already).
    let acc = if wa == cw { acc } else { 0 };
    if wa == wb {
        let acc = acc | (head & tail);
        store_word(words, wa, acc);
        (wa, acc)
    } else {
        store_word(words, wa, acc | head);
        for k in wa + 1..wb {
            store_word(words, k, u64::MAX);
        }
        store_word(words, wb, tail);
        (wb, tail)
    }
}

/// Stores pixels `64 k .. 64 k + 64` of the line.
#[inline(always)]
fn store_word(words: &mut [[u8; 8]], k: usize, word: u64) {
    if let Some(w) = words.get_mut(k) {
        *w = word.to_be_bytes();
    }
}

// Moving b1 along a reference line.
//
// The 2-D coders keep `bi`, the index in the reference line `refl` of
// b1: the first changing element right of a0 whose colour is opposite to
// a0's (T.4 4.2.1.3.1). As even indices are changes to black, `bi & 1` is
// a0's colour. `refl` is strictly increasing below the width and ends
// with at least three width sentinels, and b1 is the element of the right
// parity that is the first above a0, which pins down where it can move
// after each mode. These helpers take the new a0, which must be below the
// width (the line ends otherwise), so the sentinels end every scan.

/// b1 after pass mode: a0 moved to b2 = `refl[bi + 1]` and keeps its
/// colour, so b1 is the next element of the same parity.
#[inline(always)]
pub(crate) fn b1_after_pass(bi: usize) -> usize {
    bi + 2
}

/// b1 after vertical mode: a0 moved to `a1` (within 3 of b1) and changed
/// colour. Only b1's left neighbour can lie between a1 and b1 (the
/// element before it is not above the old a0, which is below a1);
/// otherwise the search goes right.
#[inline(always)]
pub(crate) fn b1_after_vertical(refl: &[u32], bi: usize, a1: u32) -> usize {
    let mut j = if bi > 0 && refl[bi - 1] > a1 {
        bi - 1
    } else {
        bi + 1
    };
    while refl[j] <= a1 {
        j += 2;
    }
    j
}

/// b1 after horizontal mode: a0 moved to `a2` and kept its colour; a2 is
/// not left of the old a0, so b1 can only move right.
#[inline(always)]
pub(crate) fn b1_after_horizontal(refl: &[u32], bi: usize, a2: u32) -> usize {
    let mut j = bi;
    while refl[j] <= a2 {
        j += 2;
    }
    j
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
                let mut ch = vec![0; width as usize + 3];
                let n = line_to_changes(&line, width, &mut ch);
                assert_eq!(&ch[n..n + 3], &[width; 3]);
                ch.truncate(n);
                assert_eq!(
                    ch,
                    naive_changes(&line, width),
                    "width {width} density {density}"
                );
                let mut back = vec![0xAAu8; nbytes];
                changes_to_line(&ch, width, &mut back);
                assert_eq!(back, line, "width {width} density {density}");
                // With slack (the decoder's layout), and with sentinels.
                let mut slack = vec![0x55u8; nbytes + 8];
                let mut sentinels = ch.clone();
                sentinels.extend_from_slice(&[width; 4]);
                changes_to_line(&sentinels, width, &mut slack);
                assert_eq!(
                    &slack[..nbytes],
                    &line[..],
                    "width {width} density {density}"
                );
                assert!(slack[nbytes..].iter().all(|&b| b == 0));
            }
        }
    }

    #[test]
    fn runs_of_every_length_and_offset() {
        for width in [64u32, 72, 200] {
            for a in 0..width.min(80) {
                for b in a + 1..=width {
                    let nbytes = width.div_ceil(8) as usize;
                    let mut expect = vec![0u8; nbytes];
                    for x in a..b {
                        expect[(x / 8) as usize] |= 0x80 >> (x % 8);
                    }
                    for extra in [0, 3, 8] {
                        let mut out = vec![0xFFu8; nbytes + extra];
                        changes_to_line(&[a, b], width, &mut out);
                        assert_eq!(&out[..nbytes], &expect[..], "{a}..{b} of {width}");
                        assert!(out[nbytes..].iter().all(|&x| x == 0));
                    }
                }
            }
        }
    }

    /// b1 by its definition: the first element above `a0` whose index
    /// has the parity `colour`.
    fn b1_by_definition(refl: &[u32], a0: i64, colour: usize) -> usize {
        (0..refl.len())
            .find(|&j| j & 1 == colour && i64::from(refl[j]) > a0)
            .unwrap()
    }

    #[test]
    fn b1_moves_as_defined() {
        let width = 40u32;
        let mut seed = 7u64;
        for _ in 0..300 {
            // A random strictly increasing reference line, then sentinels.
            let mut refl = Vec::new();
            let mut x = 0;
            loop {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                x += (seed >> 33) as u32 % 6;
                if x >= width {
                    break;
                }
                refl.push(x);
                x += 1;
            }
            refl.extend_from_slice(&[width; 4]);
            for a0 in -1i64..i64::from(width) {
                for colour in 0..2 {
                    let bi = b1_by_definition(&refl, a0, colour);
                    let b1 = i64::from(refl[bi]);
                    let b2 = i64::from(refl[bi + 1]);
                    if b2 < i64::from(width) {
                        assert_eq!(
                            b1_after_pass(bi),
                            b1_by_definition(&refl, b2, colour),
                            "{refl:?} pass from {a0}"
                        );
                    }
                    for d in -3..=3 {
                        let a1 = b1 + d;
                        if a1 > a0 && a1 < i64::from(width) {
                            assert_eq!(
                                b1_after_vertical(&refl, bi, a1 as u32),
                                b1_by_definition(&refl, a1, colour ^ 1),
                                "{refl:?} V{d} from {a0}"
                            );
                        }
                    }
                    for a2 in a0.max(0)..i64::from(width) {
                        assert_eq!(
                            b1_after_horizontal(&refl, bi, a2 as u32),
                            b1_by_definition(&refl, a2, colour),
                            "{refl:?} H to {a2} from {a0}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn padding_bits_are_ignored() {
        let mut ch = vec![0; 12];
        assert_eq!(line_to_changes(&[0x00, 0x7F], 9, &mut ch), 0);
        assert_eq!(line_to_changes(&[0xFF, 0xFF], 9, &mut ch), 1);
        assert_eq!(&ch[..4], &[0, 9, 9, 9]);
    }
}
