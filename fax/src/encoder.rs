//! The streaming T.4/T.6 encoder: push scan lines, take bytes.

use crate::bits::BitWriter;
use crate::error::FaxError;
use crate::runs::line_to_changes;
use crate::tables::{
    BLACK_MAKEUP, BLACK_TERM, Code, EOL_CODE, EOL_LEN, HORIZONTAL, PASS, VERTICAL, WHITE_MAKEUP,
    WHITE_TERM,
};
use crate::{Coding, MAX_WIDTH};

/// How an [`Encoder`] frames its output.
///
/// The presets [`EncoderOptions::tiff`] and [`EncoderOptions::wire`] give
/// the two framings that matter; the fields allow the variations found in
/// the wild (byte-aligned EOLs, a minimum scan-line time).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncoderOptions {
    /// MH, MR (with its K) or MMR.
    pub coding: Coding,
    /// Pixels per line.
    pub width: u32,
    /// An EOL code before every line (T.4 and TIFF Compression 3). Must be
    /// true for MR, whose 1-D/2-D tag bit follows the EOL, and false for MMR.
    pub eol: bool,
    /// Fill so that every EOL ends on a byte boundary (T.4 fill bits, TIFF
    /// T4Options bit 2).
    pub byte_align_eol: bool,
    /// Start every line on a byte boundary (TIFF Compression 2, MH only).
    pub byte_align_rows: bool,
    /// End the page with RTC (MH, MR) or EOFB (MMR).
    pub end_of_page: bool,
    /// Minimum bits per coded line, EOL included; shorter lines get zero
    /// fill before the next EOL. This is the minimum scan-line time of
    /// T.30 multiplied by the bit rate (0 for none). Needs `eol`.
    pub min_line_bits: u32,
}

impl EncoderOptions {
    /// Strip data for TIFF-F as libtiff writes it: Compression 3 (EOL per
    /// line, no RTC) for MH and MR, Compression 4 with EOFB for MMR.
    pub fn tiff(coding: Coding, width: u32) -> Self {
        let g3 = !matches!(coding, Coding::Mmr);
        EncoderOptions {
            coding,
            width,
            eol: g3,
            byte_align_eol: false,
            byte_align_rows: false,
            end_of_page: !g3,
            min_line_bits: 0,
        }
    }

    /// A page on the fax line: an EOL before every line and RTC at the
    /// end (MH, MR), or EOFB at the end (MMR, which T.30 sends with ECM).
    pub fn wire(coding: Coding, width: u32) -> Self {
        let g3 = !matches!(coding, Coding::Mmr);
        EncoderOptions {
            coding,
            width,
            eol: g3,
            byte_align_eol: false,
            byte_align_rows: false,
            end_of_page: true,
            min_line_bits: 0,
        }
    }

    fn validate(&self) -> Result<(), FaxError> {
        let bad = |reason: &str| {
            Err(FaxError::InvalidOptions {
                reason: reason.to_string(),
            })
        };
        if self.width == 0 || self.width > MAX_WIDTH {
            return Err(FaxError::InvalidOptions {
                reason: format!("width {} is not in 1..={MAX_WIDTH}", self.width),
            });
        }
        match self.coding {
            Coding::Mr { k: 0 } => return bad("MR needs K >= 1"),
            Coding::Mr { .. } if !self.eol => return bad("MR needs an EOL before every line"),
            Coding::Mmr if self.eol => return bad("MMR has no EOLs"),
            Coding::Mh | Coding::Mr { .. } | Coding::Mmr => {}
        }
        if self.byte_align_rows && !matches!(self.coding, Coding::Mh) {
            return bad("byte-aligned rows are for MH only");
        }
        if (self.byte_align_eol || self.min_line_bits > 0) && !self.eol {
            return bad("EOL fill needs EOLs");
        }
        Ok(())
    }
}

/// Encodes one page line by line in bounded memory.
///
/// Lines are packed MSB first with 1 = black (the PBM convention). Take
/// the output with [`Encoder::take_output`] as often as convenient, and
/// call [`Encoder::finish`] at the end of the page.
#[derive(Debug)]
pub struct Encoder {
    opts: EncoderOptions,
    w: BitWriter,
    /// Changing elements of the previous line, followed by sentinels.
    refl: Vec<u32>,
    cur: Vec<u32>,
    /// MR: 2-D lines still allowed before the next 1-D line.
    k_left: u32,
    lines: u64,
    /// Bit position where the last line (its EOL included) started.
    line_start: Option<u64>,
}

impl Encoder {
    /// A new encoder for one page; fails on inconsistent options.
    pub fn new(opts: EncoderOptions) -> Result<Self, FaxError> {
        opts.validate()?;
        let w = opts.width;
        Ok(Encoder {
            opts,
            w: BitWriter::default(),
            refl: vec![w, w, w],
            cur: Vec::new(),
            k_left: 0,
            lines: 0,
            line_start: None,
        })
    }

    /// The options this encoder was made with.
    pub fn options(&self) -> &EncoderOptions {
        &self.opts
    }

    /// Lines encoded so far.
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// Encodes one scan line (`ceil(width / 8)` bytes or more).
    pub fn encode_line(&mut self, line: &[u8]) -> Result<(), FaxError> {
        let width = self.opts.width;
        let need = (width as usize).div_ceil(8);
        if line.len() < need {
            return Err(FaxError::ShortLine {
                line: self.lines,
                got: line.len(),
                need,
                width,
            });
        }
        line_to_changes(line, width, &mut self.cur);
        self.cur.extend_from_slice(&[width, width, width]);
        let two_d = match self.opts.coding {
            Coding::Mh => false,
            Coding::Mr { .. } => self.k_left > 0,
            Coding::Mmr => true,
        };
        if self.opts.eol {
            self.put_eol(two_d);
        }
        if two_d {
            encode_2d(&mut self.w, &self.cur, &self.refl, width);
        } else {
            encode_1d(&mut self.w, &self.cur, width);
        }
        if self.opts.byte_align_rows {
            self.w.align();
        }
        if let Coding::Mr { k } = self.opts.coding {
            self.k_left = if two_d { self.k_left - 1 } else { k - 1 };
        }
        std::mem::swap(&mut self.cur, &mut self.refl);
        self.lines += 1;
        Ok(())
    }

    /// Puts the fill the previous line still needs, then an EOL (with the
    /// MR tag bit: 1 when the next line is 1-D).
    fn put_eol(&mut self, next_2d: bool) {
        self.fill_min_time();
        if self.opts.byte_align_eol {
            // The EOL must end on a byte boundary: start it 4 bits into a byte.
            let r = (self.w.bit_pos() % 8) as u32;
            self.w.put(0, (12 - r) % 8);
        }
        self.line_start = Some(self.w.bit_pos());
        match self.opts.coding {
            Coding::Mr { .. } => self
                .w
                .put((EOL_CODE << 1) | u32::from(!next_2d), EOL_LEN + 1),
            Coding::Mh | Coding::Mmr => self.w.put(EOL_CODE, EOL_LEN),
        }
    }

    fn fill_min_time(&mut self) {
        if let Some(start) = self.line_start {
            let used = self.w.bit_pos() - start;
            let min = u64::from(self.opts.min_line_bits);
            if used < min {
                self.w.zeros(min - used);
            }
        }
    }

    /// Takes the complete bytes encoded so far.
    pub fn take_output(&mut self) -> Vec<u8> {
        self.w.take()
    }

    /// Ends the page (RTC or EOFB if asked for), pads to a byte boundary
    /// and returns the rest of the output.
    pub fn finish(mut self) -> Vec<u8> {
        if self.opts.end_of_page {
            if self.opts.eol {
                // RTC: six EOLs (each with tag bit 1 for MR).
                self.put_eol(false);
                for _ in 0..5 {
                    match self.opts.coding {
                        Coding::Mr { .. } => self.w.put((EOL_CODE << 1) | 1, EOL_LEN + 1),
                        Coding::Mh | Coding::Mmr => self.w.put(EOL_CODE, EOL_LEN),
                    }
                }
            } else if matches!(self.opts.coding, Coding::Mmr) {
                // EOFB: two EOLs.
                self.w.put(EOL_CODE, EOL_LEN);
                self.w.put(EOL_CODE, EOL_LEN);
            }
        }
        self.w.align();
        self.w.take()
    }
}

#[inline]
fn put_code(w: &mut BitWriter, (len, code): Code) {
    w.put(u32::from(code), u32::from(len));
}

/// Puts the code of a run: makeup codes as needed, then a terminating code.
#[inline]
fn put_run(w: &mut BitWriter, black: bool, mut run: u32) {
    let (term, makeup) = if black {
        (&BLACK_TERM, &BLACK_MAKEUP)
    } else {
        (&WHITE_TERM, &WHITE_MAKEUP)
    };
    while run >= 2624 {
        put_code(w, makeup[39]);
        run -= 2560;
    }
    if run >= 64 {
        put_code(w, makeup[(run / 64 - 1) as usize]);
        run %= 64;
    }
    put_code(w, term[run as usize]);
}

/// MH: alternate white and black runs, starting with white.
fn encode_1d(w: &mut BitWriter, cur: &[u32], width: u32) {
    let mut pos = 0;
    let mut black = false;
    for &c in cur {
        let c = c.min(width);
        put_run(w, black, c - pos);
        pos = c;
        if pos >= width {
            return;
        }
        black = !black;
    }
}

/// Finds b1: the first changing element on the reference line right of
/// `a0` whose colour is opposite to that of a0 (even indices are changes
/// to black). `bi` moves monotonically apart from a one-step back-up.
#[inline]
pub(crate) fn find_b1(refl: &[u32], a0: i32, color: usize, bi: &mut usize) {
    while *bi > 0 && refl[*bi - 1] as i32 > a0 {
        *bi -= 1;
    }
    if *bi & 1 != color {
        *bi += 1;
    }
    while refl[*bi] as i32 <= a0 {
        *bi += 2;
    }
}

/// T.4 2-D / T.6 coding of one line against its reference line. Both
/// lists end with at least three `width` sentinels.
fn encode_2d(w: &mut BitWriter, cur: &[u32], refl: &[u32], width: u32) {
    let width = width as i32;
    let mut a0: i32 = -1;
    let mut color = 0usize;
    let mut ai = 0usize;
    let mut bi = 0usize;
    while a0 < width {
        let a1 = cur[ai] as i32;
        find_b1(refl, a0, color, &mut bi);
        let b1 = refl[bi] as i32;
        let b2 = refl[bi + 1] as i32;
        if b2 < a1 {
            w.put(PASS.0, PASS.1);
            a0 = b2;
        } else if (a1 - b1).abs() <= 3 {
            let (c, l) = VERTICAL[(a1 - b1 + 3) as usize];
            w.put(c, l);
            a0 = a1;
            color ^= 1;
            ai += 1;
        } else {
            let a2 = cur[ai + 1] as i32;
            w.put(HORIZONTAL.0, HORIZONTAL.1);
            put_run(w, color == 1, (a1 - a0.max(0)) as u32);
            put_run(w, color == 0, (a2 - a1) as u32);
            a0 = a2;
            ai += 2;
        }
    }
}
