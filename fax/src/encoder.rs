//! The streaming T.4/T.6 encoder: push scan lines, take bytes.

use crate::bits::{BitSink, BitWriter};
use crate::error::FaxError;
use crate::runs::{b1_after_horizontal, b1_after_pass, b1_after_vertical, line_to_changes};
use crate::tables::{EOL_CODE, EOL_LEN, HORIZONTAL, MAKEUP_CODES, PASS, TERM_CODES, VERTICAL};
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
    /// Changing elements of the previous line (`refl_n` of them),
    /// followed by three `width` sentinels; `width + 3` long, the most a
    /// line can need.
    refl: Vec<u32>,
    refl_n: usize,
    /// The same for the line being coded.
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
            refl: vec![w; w as usize + 3],
            refl_n: 0,
            cur: vec![w; w as usize + 3],
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
        let n = line_to_changes(line, width, &mut self.cur);
        let two_d = match self.opts.coding {
            Coding::Mh => false,
            Coding::Mr { .. } => self.k_left > 0,
            Coding::Mmr => true,
        };
        if self.opts.eol {
            self.put_eol(two_d);
        }
        let cur = &self.cur[..n + 3];
        if two_d {
            encode_2d(&mut self.w, cur, &self.refl[..self.refl_n + 3], width);
        } else {
            encode_1d(&mut self.w, cur, width);
        }
        if self.opts.byte_align_rows {
            self.w.align();
        }
        if let Coding::Mr { k } = self.opts.coding {
            self.k_left = if two_d { self.k_left - 1 } else { k - 1 };
        }
        std::mem::swap(&mut self.cur, &mut self.refl);
        self.refl_n = n;
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

/// Puts the code of a run of `colour` (0 white, 1 black): makeup codes as
/// needed, then a terminating code, put together as one code of up to 25
/// bits (20 for white) from the packed tables. Pending only: the caller
/// flushes, after at most 56 bits.
#[inline(always)]
fn put_run(w: &mut BitSink<'_>, colour: usize, mut run: u32) {
    let colour = colour & 1;
    // Runs of 2624 pixels or more (only lines that wide have them) take
    // 2560-pixel makeup codes first. The loop is inline: a call taking the
    // sink would keep the sink in memory for every code.
    while run >= 2624 {
        let m = MAKEUP_CODES[colour][40];
        w.flush();
        w.put(m >> 8, m & 0xFF);
        run -= 2560;
    }
    // `run < 2624`, so `run >> 6 <= 40` indexes the 41-entry table.
    let m = MAKEUP_CODES[colour][(run >> 6) as usize];
    let t = TERM_CODES[colour][(run & 63) as usize];
    let tl = t & 0xFF;
    w.put_pending(((m >> 8) << tl) | (t >> 8), (m & 0xFF) + tl);
}

/// MH: alternate white and black runs, starting with white. `cur` is
/// below `width` and ends with a `width` sentinel.
fn encode_1d(w: &mut BitWriter, cur: &[u32], width: u32) {
    w.sink(|w| {
        let mut pos = 0;
        let mut changes = cur.iter().copied();
        // One flush per white-black pair: at most 7 + 20 + 25 bits.
        while let Some(c) = changes.next() {
            put_run(w, 0, c - pos);
            if c >= width {
                break;
            }
            let Some(d) = changes.next() else { break };
            put_run(w, 1, d - c);
            w.flush();
            if d >= width {
                return;
            }
            pos = d;
        }
        w.flush();
    });
}

/// T.4 2-D / T.6 coding of one line against its reference line. Both
/// lists end with at least three `width` sentinels; `refl` is strictly
/// increasing below them. `bi` indexes b1 in `refl` (see the b1 helpers
/// in `runs`), so a0's colour is `bi & 1`.
fn encode_2d(w: &mut BitWriter, cur: &[u32], refl: &[u32], width: u32) {
    w.sink(|w| {
        let mut a0: u32 = 0;
        let mut ai = 0usize;
        let mut bi = 0usize;
        loop {
            let a1 = cur[ai];
            let b1 = refl[bi];
            let b2 = refl[bi + 1];
            if b2 < a1 {
                // b2 < a1 <= width, so the line goes on.
                w.put(PASS.0, PASS.1);
                a0 = b2;
                bi = b1_after_pass(bi);
            } else if a1.abs_diff(b1) <= 3 {
                let (c, l) = VERTICAL[(a1 + 3 - b1) as usize];
                w.put(c, l);
                if a1 >= width {
                    return;
                }
                a0 = a1;
                ai += 1;
                bi = b1_after_vertical(refl, bi, a1);
            } else {
                let a2 = cur[ai + 1];
                let colour = bi & 1;
                // At most 7 + 3 + 25 + 25 bits before the flush.
                w.put_pending(HORIZONTAL.0, HORIZONTAL.1);
                put_run(w, colour, a1 - a0);
                put_run(w, colour ^ 1, a2 - a1);
                w.flush();
                if a2 >= width {
                    return;
                }
                a0 = a2;
                ai += 2;
                bi = b1_after_horizontal(refl, bi, a2);
            }
        }
    });
}
