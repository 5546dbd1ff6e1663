//! Code tables of ITU-T T.4 (modified Huffman run lengths, 2-D mode codes)
//! and the lookup tables built from them at compile time.
//!
//! Encoding uses `(code, length)` pairs indexed by run length, packed by
//! a `const fn` into [`TERM_CODES`] and [`MAKEUP_CODES`] so that a run's
//! makeup and terminating codes are written together. Decoding peeks a
//! fixed number of bits (12 for white, 13 for black, 7 for 2-D modes) and
//! indexes a table built by a `const fn`, so a run code is resolved with
//! one load instead of a bit-by-bit tree walk.

/// A code as `(bit length, code value)`, the value right-aligned.
pub(crate) type Code = (u8, u16);

/// White terminating codes, runs 0..=63 (T.4 table 2).
pub(crate) const WHITE_TERM: [Code; 64] = [
    (8, 0x35),
    (6, 0x7),
    (4, 0x7),
    (4, 0x8),
    (4, 0xB),
    (4, 0xC),
    (4, 0xE),
    (4, 0xF),
    (5, 0x13),
    (5, 0x14),
    (5, 0x7),
    (5, 0x8),
    (6, 0x8),
    (6, 0x3),
    (6, 0x34),
    (6, 0x35),
    (6, 0x2A),
    (6, 0x2B),
    (7, 0x27),
    (7, 0xC),
    (7, 0x8),
    (7, 0x17),
    (7, 0x3),
    (7, 0x4),
    (7, 0x28),
    (7, 0x2B),
    (7, 0x13),
    (7, 0x24),
    (7, 0x18),
    (8, 0x2),
    (8, 0x3),
    (8, 0x1A),
    (8, 0x1B),
    (8, 0x12),
    (8, 0x13),
    (8, 0x14),
    (8, 0x15),
    (8, 0x16),
    (8, 0x17),
    (8, 0x28),
    (8, 0x29),
    (8, 0x2A),
    (8, 0x2B),
    (8, 0x2C),
    (8, 0x2D),
    (8, 0x4),
    (8, 0x5),
    (8, 0xA),
    (8, 0xB),
    (8, 0x52),
    (8, 0x53),
    (8, 0x54),
    (8, 0x55),
    (8, 0x24),
    (8, 0x25),
    (8, 0x58),
    (8, 0x59),
    (8, 0x5A),
    (8, 0x5B),
    (8, 0x4A),
    (8, 0x4B),
    (8, 0x32),
    (8, 0x33),
    (8, 0x34),
];

/// Black terminating codes, runs 0..=63 (T.4 table 2).
pub(crate) const BLACK_TERM: [Code; 64] = [
    (10, 0x37),
    (3, 0x2),
    (2, 0x3),
    (2, 0x2),
    (3, 0x3),
    (4, 0x3),
    (4, 0x2),
    (5, 0x3),
    (6, 0x5),
    (6, 0x4),
    (7, 0x4),
    (7, 0x5),
    (7, 0x7),
    (8, 0x4),
    (8, 0x7),
    (9, 0x18),
    (10, 0x17),
    (10, 0x18),
    (10, 0x8),
    (11, 0x67),
    (11, 0x68),
    (11, 0x6C),
    (11, 0x37),
    (11, 0x28),
    (11, 0x17),
    (11, 0x18),
    (12, 0xCA),
    (12, 0xCB),
    (12, 0xCC),
    (12, 0xCD),
    (12, 0x68),
    (12, 0x69),
    (12, 0x6A),
    (12, 0x6B),
    (12, 0xD2),
    (12, 0xD3),
    (12, 0xD4),
    (12, 0xD5),
    (12, 0xD6),
    (12, 0xD7),
    (12, 0x6C),
    (12, 0x6D),
    (12, 0xDA),
    (12, 0xDB),
    (12, 0x54),
    (12, 0x55),
    (12, 0x56),
    (12, 0x57),
    (12, 0x64),
    (12, 0x65),
    (12, 0x52),
    (12, 0x53),
    (12, 0x24),
    (12, 0x37),
    (12, 0x38),
    (12, 0x27),
    (12, 0x28),
    (12, 0x58),
    (12, 0x59),
    (12, 0x2B),
    (12, 0x2C),
    (12, 0x5A),
    (12, 0x66),
    (12, 0x67),
];

/// Makeup codes for runs 64, 128, ..., 2560 (index `run / 64 - 1`); the
/// entries from 1792 on are the extended makeup codes shared by both
/// colours (T.4 tables 3a and 3b).
pub(crate) const WHITE_MAKEUP: [Code; 40] = [
    (5, 0x1B),
    (5, 0x12),
    (6, 0x17),
    (7, 0x37),
    (8, 0x36),
    (8, 0x37),
    (8, 0x64),
    (8, 0x65),
    (8, 0x68),
    (8, 0x67),
    (9, 0xCC),
    (9, 0xCD),
    (9, 0xD2),
    (9, 0xD3),
    (9, 0xD4),
    (9, 0xD5),
    (9, 0xD6),
    (9, 0xD7),
    (9, 0xD8),
    (9, 0xD9),
    (9, 0xDA),
    (9, 0xDB),
    (9, 0x98),
    (9, 0x99),
    (9, 0x9A),
    (6, 0x18),
    (9, 0x9B),
    (11, 0x8),
    (11, 0xC),
    (11, 0xD),
    (12, 0x12),
    (12, 0x13),
    (12, 0x14),
    (12, 0x15),
    (12, 0x16),
    (12, 0x17),
    (12, 0x1C),
    (12, 0x1D),
    (12, 0x1E),
    (12, 0x1F),
];

/// Black makeup codes, same indexing as [`WHITE_MAKEUP`].
pub(crate) const BLACK_MAKEUP: [Code; 40] = [
    (10, 0xF),
    (12, 0xC8),
    (12, 0xC9),
    (12, 0x5B),
    (12, 0x33),
    (12, 0x34),
    (12, 0x35),
    (13, 0x6C),
    (13, 0x6D),
    (13, 0x4A),
    (13, 0x4B),
    (13, 0x4C),
    (13, 0x4D),
    (13, 0x72),
    (13, 0x73),
    (13, 0x74),
    (13, 0x75),
    (13, 0x76),
    (13, 0x77),
    (13, 0x52),
    (13, 0x53),
    (13, 0x54),
    (13, 0x55),
    (13, 0x5A),
    (13, 0x5B),
    (13, 0x64),
    (13, 0x65),
    (11, 0x8),
    (11, 0xC),
    (11, 0xD),
    (12, 0x12),
    (12, 0x13),
    (12, 0x14),
    (12, 0x15),
    (12, 0x16),
    (12, 0x17),
    (12, 0x1C),
    (12, 0x1D),
    (12, 0x1E),
    (12, 0x1F),
];

/// The EOL code, 0000 0000 0001.
pub(crate) const EOL_CODE: u32 = 1;
/// Length of the EOL code in bits.
pub(crate) const EOL_LEN: u32 = 12;

/// Bits peeked for a white run code (the longest white code has 12).
pub(crate) const WHITE_BITS: u32 = 12;
/// Bits peeked for a black run code (the longest black code has 13).
pub(crate) const BLACK_BITS: u32 = 13;

/// Run value in a decode entry that marks the EOL code.
pub(crate) const RUN_EOL: u16 = 0xFFF;
/// Run value in a decode entry for bits that start no code (its length
/// is 0). Like [`RUN_EOL`] it is not below 64, so the decoder's hot path
/// tells a terminating code from everything else with one comparison.
pub(crate) const RUN_INVALID: u16 = 0xFFE;

/// A decode table entry packs the code length (low 4 bits, 0 = no code
/// starts with these bits) and the run length (upper 12 bits). A run below
/// 64 is a terminating code, 64 and more is a makeup code (or one of the
/// markers [`RUN_EOL`] and [`RUN_INVALID`]).
const fn build_run_table<const N: usize>(
    bits: u32,
    term: &[Code; 64],
    makeup: &[Code; 40],
) -> [u16; N] {
    let mut t = [RUN_INVALID << 4; N];
    let mut i = 0;
    while i < 64 + 40 + 1 {
        let (len, code, run) = if i < 64 {
            (term[i].0, term[i].1, i as u16)
        } else if i < 104 {
            (makeup[i - 64].0, makeup[i - 64].1, ((i - 63) * 64) as u16)
        } else {
            (EOL_LEN as u8, EOL_CODE as u16, RUN_EOL)
        };
        let shift = bits - len as u32;
        let first = (code as usize) << shift;
        let count = 1usize << shift;
        let mut j = 0;
        while j < count {
            t[first + j] = (run << 4) | len as u16;
            j += 1;
        }
        i += 1;
    }
    t
}

/// White run decode table indexed by the next 12 bits.
pub(crate) static WHITE_DECODE: [u16; 1 << WHITE_BITS] =
    build_run_table::<{ 1 << WHITE_BITS }>(WHITE_BITS, &WHITE_TERM, &WHITE_MAKEUP);
/// Black run decode table indexed by the next 13 bits.
pub(crate) static BLACK_DECODE: [u16; 1 << BLACK_BITS] =
    build_run_table::<{ 1 << BLACK_BITS }>(BLACK_BITS, &BLACK_TERM, &BLACK_MAKEUP);

/// A code packed for the encoder: the code value shifted left by 8, the
/// length in the low 8 bits; 0 is the empty code.
const fn pack(c: Code) -> u32 {
    ((c.1 as u32) << 8) | c.0 as u32
}

const fn build_term_codes() -> [[u32; 64]; 2] {
    let mut t = [[0u32; 64]; 2];
    let mut i = 0;
    while i < 64 {
        t[0][i] = pack(WHITE_TERM[i]);
        t[1][i] = pack(BLACK_TERM[i]);
        i += 1;
    }
    t
}

const fn build_makeup_codes() -> [[u32; 41]; 2] {
    let mut t = [[0u32; 41]; 2];
    let mut i = 1;
    while i < 41 {
        t[0][i] = pack(WHITE_MAKEUP[i - 1]);
        t[1][i] = pack(BLACK_MAKEUP[i - 1]);
        i += 1;
    }
    t
}

/// Terminating codes packed for the encoder, indexed by colour (0 white,
/// 1 black) and then by `run % 64`.
pub(crate) static TERM_CODES: [[u32; 64]; 2] = build_term_codes();
/// Makeup codes packed for the encoder, indexed by colour and then by
/// `run / 64` (0 to 40); entry 0 is the empty code, so a run below 64
/// needs no branch.
pub(crate) static MAKEUP_CODES: [[u32; 41]; 2] = build_makeup_codes();

/// A 2-D coding mode (T.4 table 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Pass,
    Horizontal,
    /// Vertical mode with `a1 - b1` in -3..=3.
    Vertical(i8),
    /// 0000001xxx: the extension (uncompressed mode), which we do not support.
    Extension,
}

/// Bits peeked for a 2-D mode code.
pub(crate) const MODE_BITS: u32 = 7;

/// The 2-D mode codes as `(length, code, mode)`.
pub(crate) const MODE_CODES: [(u8, u8, Mode); 10] = [
    (1, 0b1, Mode::Vertical(0)),
    (3, 0b011, Mode::Vertical(1)),
    (3, 0b010, Mode::Vertical(-1)),
    (3, 0b001, Mode::Horizontal),
    (4, 0b0001, Mode::Pass),
    (6, 0b000011, Mode::Vertical(2)),
    (6, 0b000010, Mode::Vertical(-2)),
    (7, 0b0000011, Mode::Vertical(3)),
    (7, 0b0000010, Mode::Vertical(-3)),
    (7, 0b0000001, Mode::Extension),
];

/// The kind of a packed mode entry: 0 to 6 are vertical modes with
/// `a1 - b1 = kind - 3`, so the decoder tells the common vertical modes
/// from the rest with one comparison (`kind < KIND_PASS`) rather than a
/// jump table, whose indirect branch the CPU mispredicts far more often.
pub(crate) const KIND_PASS: u8 = 7;
/// Horizontal mode.
pub(crate) const KIND_HORIZONTAL: u8 = 8;
/// The extension code, and bits that start no code.
pub(crate) const KIND_OTHER: u8 = 9;

const fn mode_kind(mode: Mode) -> u8 {
    match mode {
        Mode::Vertical(d) => (d + 3) as u8,
        Mode::Pass => KIND_PASS,
        Mode::Horizontal => KIND_HORIZONTAL,
        Mode::Extension => KIND_OTHER,
    }
}

/// A mode decode entry packs the code length (low 8 bits, 0 = no code
/// starts with these bits) and the kind (upper 8 bits).
const fn build_mode_table() -> [u16; 1 << MODE_BITS] {
    let mut t = [(KIND_OTHER as u16) << 8; 1 << MODE_BITS];
    let mut i = 0;
    while i < MODE_CODES.len() {
        let (len, code, mode) = MODE_CODES[i];
        let shift = MODE_BITS - len as u32;
        let first = (code as usize) << shift;
        let mut j = 0;
        while j < (1usize << shift) {
            t[first + j] = ((mode_kind(mode) as u16) << 8) | len as u16;
            j += 1;
        }
        i += 1;
    }
    t
}

/// 2-D mode decode table indexed by the next 7 bits.
pub(crate) static MODE_DECODE: [u16; 1 << MODE_BITS] = build_mode_table();

/// Encoding of the 2-D modes as `(code, length)`.
pub(crate) const PASS: (u32, u32) = (0b0001, 4);
pub(crate) const HORIZONTAL: (u32, u32) = (0b001, 3);
/// Vertical mode codes indexed by `a1 - b1 + 3`.
pub(crate) const VERTICAL: [(u32, u32); 7] = [
    (0b0000010, 7),
    (0b000010, 6),
    (0b010, 3),
    (0b1, 1),
    (0b011, 3),
    (0b000011, 6),
    (0b0000011, 7),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Every code in the tables decodes back to its own run and length,
    /// which also proves the tables are prefix-free (a clash would have
    /// overwritten an entry).
    #[test]
    fn run_tables_round_trip() {
        for (bits, table, term, makeup) in [
            (WHITE_BITS, &WHITE_DECODE[..], &WHITE_TERM, &WHITE_MAKEUP),
            (BLACK_BITS, &BLACK_DECODE[..], &BLACK_TERM, &BLACK_MAKEUP),
        ] {
            let all = term.iter().enumerate().map(|(r, c)| (r as u16, *c)).chain(
                makeup
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (((i + 1) * 64) as u16, *c)),
            );
            for (run, (len, code)) in all {
                let e = table[(code as usize) << (bits - len as u32)];
                assert_eq!(e & 15, len as u16, "run {run}");
                assert_eq!(e >> 4, run, "run {run}");
            }
        }
        assert_eq!(WHITE_DECODE[1] >> 4, RUN_EOL);
        assert_eq!(WHITE_DECODE[0], RUN_INVALID << 4);
        assert_eq!(BLACK_DECODE[0], RUN_INVALID << 4);
        // Every entry is a code or a marker, never a zero-length run.
        for e in WHITE_DECODE.iter().chain(BLACK_DECODE.iter()) {
            assert!((e & 15 == 0) == (e >> 4 == RUN_INVALID), "{e:#x}");
        }
    }

    #[test]
    fn packed_encode_tables_match_the_code_tables() {
        for (colour, term, makeup) in [
            (0, &WHITE_TERM, &WHITE_MAKEUP),
            (1, &BLACK_TERM, &BLACK_MAKEUP),
        ] {
            for (run, &(len, code)) in term.iter().enumerate() {
                let p = TERM_CODES[colour][run];
                assert_eq!((p & 0xFF, p >> 8), (u32::from(len), u32::from(code)));
            }
            assert_eq!(MAKEUP_CODES[colour][0], 0);
            for (i, &(len, code)) in makeup.iter().enumerate() {
                let p = MAKEUP_CODES[colour][i + 1];
                assert_eq!((p & 0xFF, p >> 8), (u32::from(len), u32::from(code)));
            }
        }
    }

    #[test]
    fn mode_table_round_trip() {
        for (len, code, mode) in MODE_CODES {
            let e = MODE_DECODE[(code as usize) << (MODE_BITS - len as u32)];
            assert_eq!(
                (e & 0xFF, (e >> 8) as u8),
                (u16::from(len), mode_kind(mode))
            );
        }
        for (i, (code, len)) in VERTICAL.iter().enumerate() {
            let e = MODE_DECODE[(*code as usize) << (MODE_BITS - len)];
            assert_eq!((u32::from(e & 0xFF), e >> 8), (*len, i as u16));
        }
        // Bits that start no code: length 0, not vertical.
        assert_eq!(MODE_DECODE[0], u16::from(KIND_OTHER) << 8);
        let valid = MODE_DECODE.iter().filter(|&&e| e & 0xFF != 0).count();
        assert_eq!(valid, 127);
    }
}
