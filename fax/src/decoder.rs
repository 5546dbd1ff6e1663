//! The streaming T.4/T.6 decoder: push bytes, pull scan lines.
//!
//! Damage is handled the way a fax machine handles it. A line that does
//! not decode (an invalid code, a wrong pixel count, junk before the next
//! EOL, a truncated end) is replaced by the previous good line and counted
//! as bad; MH and MR decoding then resyncs at the next EOL. In MR the
//! 2-D lines after a bad line were coded against a line the decoder does
//! not have, so they are bad too (repeats of the last good line) until
//! the next 1-D line, from which decoding is exact again. MMR and
//! EOL-less MH have no resync point, so after an error the rest of the
//! page is made of bad copies of the last good line (when the row count
//! is known) or the page ends there: no line after the error is decoded.

use crate::bits::BitReader;
use crate::error::FaxError;
use crate::runs::{
    b1_after_horizontal, b1_after_pass, b1_after_vertical, changes_to_line, draw_changes,
};
use crate::tables::{
    BLACK_BITS, BLACK_DECODE, KIND_HORIZONTAL, KIND_PASS, MODE_BITS, MODE_DECODE, RUN_EOL,
    RUN_INVALID, WHITE_BITS, WHITE_DECODE,
};
use crate::{Coding, MAX_WIDTH};

/// How a [`Decoder`] expects its input to be framed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecoderOptions {
    /// MH, MR or MMR (the K of MR is not needed to decode).
    pub coding: Coding,
    /// Pixels per line.
    pub width: u32,
    /// Lines are preceded by EOLs (T.4, TIFF Compression 3). Required for
    /// MR; must be false for MMR. Fill bits before an EOL are always accepted.
    pub eol: bool,
    /// Every line starts on a byte boundary (TIFF Compression 2).
    pub byte_align_rows: bool,
    /// The number of lines, when known (TIFF). The decoder then yields
    /// exactly this many lines, padding a short page with copies of its
    /// last line (counted as bad).
    pub rows: Option<u64>,
}

impl DecoderOptions {
    /// A TIFF strip: Compression 3 for MH/MR, 4 for MMR, with `rows` lines.
    pub fn tiff(coding: Coding, width: u32, rows: u64) -> Self {
        DecoderOptions {
            eol: !matches!(coding, Coding::Mmr),
            coding,
            width,
            byte_align_rows: false,
            rows: Some(rows),
        }
    }

    /// A page from the fax line, ended by RTC, EOFB or the end of the data.
    pub fn wire(coding: Coding, width: u32) -> Self {
        DecoderOptions {
            eol: !matches!(coding, Coding::Mmr),
            coding,
            width,
            byte_align_rows: false,
            rows: None,
        }
    }

    fn validate(&self) -> Result<(), FaxError> {
        let bad = |reason: String| Err(FaxError::InvalidOptions { reason });
        if self.width == 0 || self.width > MAX_WIDTH {
            return bad(format!("width {} is not in 1..={MAX_WIDTH}", self.width));
        }
        match self.coding {
            Coding::Mr { .. } if !self.eol => bad("MR needs EOLs".into()),
            Coding::Mmr if self.eol => bad("MMR has no EOLs".into()),
            Coding::Mmr | Coding::Mr { .. } if self.byte_align_rows => {
                bad("byte-aligned rows are for MH only".into())
            }
            _ => Ok(()),
        }
    }
}

/// Why a page ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageEndReason {
    /// RTC (return to control) was seen.
    Rtc,
    /// EOFB (end of facsimile block) was seen.
    Eofb,
    /// The expected number of rows was decoded.
    RowCount,
    /// The data ended (normal for TIFF strips and EOL-less data).
    EndOfData,
    /// A line did not decode in data without EOLs (MMR, EOL-less MH),
    /// which offers no point to resynchronise at: the rest of the page
    /// is lost however many lines it had. Never acceptable for MCF.
    Undecodable,
    /// The page reached [`crate::MAX_PAGE_LINES`]; the rest was not
    /// decoded. Never acceptable for MCF.
    TooLong,
}

/// The outcome of a page, so that T.30 can decide between MCF and RTN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageSummary {
    /// Lines yielded, bad ones included.
    pub lines: u64,
    /// Lines replaced by the last good line: those that did not decode,
    /// MR 2-D lines coded against one of them, and padding.
    pub bad_lines: u64,
    /// The longest run of consecutive bad lines.
    pub max_consecutive_bad: u64,
    /// Why the page ended.
    pub end: PageEndReason,
}

impl PageSummary {
    /// Whether the page is good enough to confirm (MCF) rather than ask
    /// for retraining (RTN): at most `max_bad_percent` percent bad lines
    /// and no more than `max_consecutive` bad lines in a row.
    pub fn acceptable(&self, max_bad_percent: u32, max_consecutive: u64) -> bool {
        // The lines after an undecodable one are not counted (nobody
        // knows how many there were), so no percentage can vouch for it.
        !matches!(
            self.end,
            PageEndReason::Undecodable | PageEndReason::TooLong
        ) && self.bad_lines * 100 <= self.lines * u64::from(max_bad_percent)
            && self.max_consecutive_bad <= max_consecutive
    }
}

/// What [`Decoder::next_line`] produced.
#[derive(Debug, PartialEq, Eq)]
pub enum DecodeEvent<'a> {
    /// One scan line.
    Line {
        /// The pixels, packed MSB first with 1 = black.
        pixels: &'a [u8],
        /// True if the line is a copy of the last good one: it did not
        /// decode, or (MR) it is a 2-D line coded against a bad line.
        bad: bool,
    },
    /// The page is complete; further calls return this again.
    PageEnd(PageSummary),
}

/// Zero bytes kept after a line's pixels, so that its last 64-pixel word
/// is stored whole (see `runs::changes_to_line`).
const LINE_SLACK: usize = 8;

/// Room in a changing-element list beyond `width`: one more element (a
/// change at `width` itself) and four sentinels.
const CHANGES_SLACK: usize = 5;

/// Why a line did not decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LineErr {
    /// Not a valid line.
    Invalid,
    /// The data ended inside the line.
    Incomplete,
}

/// The codings [`Decoder::draw_clean_lines`] has a loop for.
const CLEAN_MMR: u8 = 0;
const CLEAN_MH: u8 = 1;
const CLEAN_MR: u8 = 2;

/// What [`Decoder::advance`] decided.
enum Advance {
    /// More bytes are needed.
    Need,
    /// A line: good (drawn from the reference line) or bad (a repeat).
    Line { bad: bool },
    /// The page ended.
    End(PageSummary),
}

/// What [`Decoder::draw_next_line`] did.
#[derive(Debug)]
pub(crate) enum Drawn {
    /// More bytes are needed.
    Need,
    /// A line was appended.
    Line,
    /// The page ended.
    End(PageSummary),
}

/// What one decoding step found.
enum Step {
    /// Nothing decided yet: more bytes are needed.
    Need,
    /// A line, good or bad, possibly the last one of the page.
    Line {
        bad: bool,
        then_end: Option<PageEndReason>,
    },
    /// The page ended without another line.
    End(PageEndReason),
}

/// Outcome of reading what follows an EOL.
enum AfterEol {
    /// Line data follows.
    Line,
    /// RTC: the page ends.
    Rtc,
    /// The data ended.
    End,
    /// More bytes needed to tell.
    Need,
}

/// Decodes one page line by line.
///
/// Push bytes with [`Decoder::push`] and call [`Decoder::finish`] once the
/// data is complete; [`Decoder::next_line`] yields lines, `Ok(None)` when
/// it needs more bytes, and finally [`DecodeEvent::PageEnd`]. Memory is
/// bounded by one line plus the bytes not yet decoded.
#[derive(Debug)]
pub struct Decoder {
    opts: DecoderOptions,
    buf: Vec<u8>,
    /// Bit position in `buf` of the next undecoded bit.
    bit: usize,
    finished: bool,
    /// EOL modes: the first EOL has been found.
    started: bool,
    /// MR: the line after the last EOL is 2-D.
    next_2d: bool,
    /// A bad line has been yielded since the last good 1-D line, so
    /// `refl` is not the line the sender coded the next 2-D line
    /// against: MR's 2-D lines are bad until the next 1-D line.
    ref_lost: bool,
    /// Changing elements of the last line yielded (`refl_n` of them),
    /// then four `width` sentinels. `width + 5` long: a decoded line has
    /// at most `width + 1` changing elements (strictly increasing, 0 to
    /// `width`), so both lists are allocated once.
    refl: Vec<u32>,
    refl_n: usize,
    /// The line being decoded (`cur_n` changing elements once it is).
    cur: Vec<u32>,
    cur_n: usize,
    /// The pixels of the last line yielded (`stride` bytes), then
    /// [`LINE_SLACK`] bytes so that it is drawn a word at a time.
    line: Vec<u8>,
    /// Bytes per line.
    stride: usize,
    /// Once finished: the bit position just after the last one bit of
    /// `buf` (0 if there is none); only zero bits follow it.
    data_end: usize,
    lines: u64,
    /// The page ends ([`PageEndReason::TooLong`]) at this many lines.
    max_lines: u64,
    bad: u64,
    consecutive_bad: u64,
    max_consecutive_bad: u64,
    end: Option<PageEndReason>,
    /// No resync is possible any more (MMR or EOL-less MH after an error).
    dead: bool,
}

impl Decoder {
    /// A decoder for one page; fails on inconsistent options.
    pub fn new(opts: DecoderOptions) -> Result<Self, FaxError> {
        opts.validate()?;
        let w = opts.width;
        Ok(Decoder {
            line: vec![0; (w as usize).div_ceil(8) + LINE_SLACK],
            stride: (w as usize).div_ceil(8),
            data_end: 0,
            opts,
            buf: Vec::new(),
            bit: 0,
            finished: false,
            started: false,
            next_2d: false,
            ref_lost: false,
            refl: vec![w; w as usize + CHANGES_SLACK],
            refl_n: 0,
            cur: vec![w; w as usize + CHANGES_SLACK],
            cur_n: 0,
            lines: 0,
            max_lines: u64::MAX,
            bad: 0,
            consecutive_bad: 0,
            max_consecutive_bad: 0,
            end: None,
            dead: false,
        })
    }

    /// Adds coded bytes.
    pub fn push(&mut self, data: &[u8]) -> Result<(), FaxError> {
        if self.finished {
            return Err(FaxError::PushAfterFinish);
        }
        // Drop consumed bytes once they dominate the buffer.
        let done = self.bit / 8;
        if done > 4096 && done * 2 > self.buf.len() {
            self.buf.drain(..done);
            self.bit -= done * 8;
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    /// Marks the end of the data: the decoder no longer waits for bytes.
    pub fn finish(&mut self) {
        self.finished = true;
        self.data_end = match self.buf.iter().rposition(|&b| b != 0) {
            Some(i) => i * 8 + 8 - self.buf[i].trailing_zeros() as usize,
            None => 0,
        };
    }

    /// Lines yielded so far.
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// Bad lines so far.
    pub fn bad_lines(&self) -> u64 {
        self.bad
    }

    /// The summary so far (its `end` is `EndOfData` until the page ends).
    pub fn summary(&self) -> PageSummary {
        PageSummary {
            lines: self.lines,
            bad_lines: self.bad,
            max_consecutive_bad: self.max_consecutive_bad,
            end: self.end.unwrap_or(PageEndReason::EndOfData),
        }
    }

    /// Bytes held in the input buffer (decoded ones are dropped lazily);
    /// this is what bounds the decoder's memory.
    pub fn buffered_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Bytes pushed but not decoded yet (e.g. data after RTC).
    pub fn remaining_input(&self) -> &[u8] {
        self.buf.get(self.bit.div_ceil(8)..).unwrap_or(&[])
    }

    /// The next line, `Ok(None)` if more bytes are needed, or the page end.
    pub fn next_line(&mut self) -> Result<Option<DecodeEvent<'_>>, FaxError> {
        Ok(match self.advance() {
            Advance::Need => None,
            Advance::End(summary) => Some(DecodeEvent::PageEnd(summary)),
            Advance::Line { bad } => {
                if !bad {
                    changes_to_line(&self.refl[..self.refl_n], self.opts.width, &mut self.line);
                }
                // A bad line repeats the previous one, which `line` holds.
                Some(DecodeEvent::Line {
                    pixels: &self.line[..self.stride],
                    bad,
                })
            }
        })
    }

    /// [`Decoder::next_line`] for [`crate::Bitmap::decode`]: appends the
    /// line to `rows`, the page so far, drawing it there directly instead
    /// of in `line` (which this leaves stale, so a decoder is driven by
    /// one of the two methods only). A bad line repeats the last row.
    pub(crate) fn draw_next_line(&mut self, rows: &mut Vec<u8>) -> Drawn {
        match self.advance() {
            Advance::Need => Drawn::Need,
            Advance::End(summary) => Drawn::End(summary),
            Advance::Line { bad } => {
                let (start, stride) = (rows.len(), self.stride);
                if !bad {
                    self.draw_ref_row(rows);
                } else if let Some(prev) = start.checked_sub(stride) {
                    rows.extend_from_within(prev..start);
                } else {
                    // Nothing before the first line: it repeats white.
                    rows.resize(start + stride, 0);
                }
                Drawn::Line
            }
        }
    }

    /// Appends the reference line (the line just decoded) to `rows`.
    fn draw_ref_row(&self, rows: &mut Vec<u8>) {
        let (start, stride) = (rows.len(), self.stride);
        if self.refl_n == 0 {
            // A white line.
            rows.resize(start + stride, 0);
            return;
        }
        // Whole words to draw in, then cut back to the row.
        rows.resize(start + stride.next_multiple_of(8), 0);
        draw_changes(
            &self.refl[..self.refl_n],
            self.opts.width,
            &mut rows[start..],
        );
        rows.truncate(start + stride);
    }

    /// For [`crate::Bitmap::decode`], once all the data is pushed and
    /// finished: decodes lines and appends them to `rows` in one loop,
    /// keeping the bit reader across lines, for as long as they are the
    /// common case. That is a good MMR line not at EOFB, or (MH and MR,
    /// after the first EOL, and not after a bad line while MR's reference
    /// is lost) a good line followed by an EOL, the tag bit and the next
    /// line. Returns the number of lines drawn. It stops before
    /// the first line that is anything else, leaving that line to
    /// [`Decoder::draw_next_line`]; each line drawn here is the one the
    /// general path would draw, with the same state after it.
    pub(crate) fn draw_clean_lines(&mut self, rows: &mut Vec<u8>) -> u32 {
        if !self.finished || self.dead || self.end.is_some() {
            return 0;
        }
        // One loop per coding, each compiled on its own: sharing one body,
        // the codings' loops slowed each other down.
        match (self.opts.eol, self.opts.coding) {
            (false, Coding::Mmr) => self.clean_lines::<CLEAN_MMR>(rows),
            (true, Coding::Mh) if self.started => self.clean_lines::<CLEAN_MH>(rows),
            // A lost reference: the general path makes the 2-D lines up
            // to the next 1-D line bad, and the loop resumes after it.
            (true, Coding::Mr { .. }) if self.started && !self.ref_lost => {
                self.clean_lines::<CLEAN_MR>(rows)
            }
            // EOL-less MH is rare: the general path does it all.
            _ => 0,
        }
    }

    /// The loop of [`Decoder::draw_clean_lines`] for one coding.
    #[inline(never)]
    fn clean_lines<const CODING: u8>(&mut self, rows: &mut Vec<u8>) -> u32 {
        let width = self.opts.width;
        let limit = self.opts.rows.unwrap_or(u64::MAX).min(self.max_lines);
        // The reader borrows the data while lines update the rest.
        let buf = std::mem::take(&mut self.buf);
        let mut r = BitReader::new(&buf, self.bit);
        let mut drawn = 0u32;
        // As in `advance` and the steps: the row count, then only zeros left.
        while self.lines < limit && self.bit < self.data_end && drawn < u32::MAX {
            let mut t = r;
            let refl = &self.refl[..self.refl_n + 4];
            let n = if CODING == CLEAN_MMR {
                // EOFB, or the end of the data near: the general path.
                if t.remaining() < 24 || t.peek(12) == 1 {
                    break;
                }
                match decode_2d_inline(&mut t, width, refl, &mut self.cur) {
                    Ok(n) => n,
                    Err(_) => break,
                }
            } else {
                let mr = CODING == CLEAN_MR;
                let res = if mr && self.next_2d {
                    decode_2d_inline(&mut t, width, refl, &mut self.cur)
                } else if mr {
                    decode_1d_inline(&mut t, width, &mut self.cur)
                } else {
                    // Inlined, MH's loop is slower (its registers run short).
                    decode_1d(&mut t, width, &mut self.cur)
                };
                let Ok(n) = res else { break };
                let Some(tag_2d) = eol_then_line(&mut t, mr) else {
                    break;
                };
                if mr {
                    self.next_2d = tag_2d;
                }
                n
            };
            r = t;
            self.cur_n = n;
            self.bit = r.bit_pos();
            self.emit(false);
            self.draw_ref_row(rows);
            drawn += 1;
        }
        self.buf = buf;
        drawn
    }

    /// Ends the page ([`PageEndReason::TooLong`]) once `n` lines are out:
    /// for callers that keep the whole page in memory. A decoder that
    /// hands lines on one by one needs no limit.
    pub(crate) fn limit_lines(&mut self, n: u64) {
        self.max_lines = n;
    }

    /// Decides the next line or the page end, and does the bookkeeping;
    /// the callers draw the line.
    fn advance(&mut self) -> Advance {
        loop {
            let rows = self.opts.rows;
            let cut = if self.dead {
                PageEndReason::Undecodable
            } else {
                PageEndReason::EndOfData
            };
            if rows.is_some_and(|r| self.lines >= r) {
                self.end.get_or_insert(if self.dead {
                    cut
                } else {
                    PageEndReason::RowCount
                });
                return Advance::End(self.summary());
            }
            if self.lines >= self.max_lines {
                self.end = Some(PageEndReason::TooLong);
                return Advance::End(self.summary());
            }
            if self.end.is_some() || self.dead {
                if rows.is_some() {
                    // Pad a short page to its known length.
                    self.emit(true);
                    return Advance::Line { bad: true };
                }
                self.end.get_or_insert(cut);
                return Advance::End(self.summary());
            }
            let step = if self.opts.eol {
                self.step_eol()
            } else {
                self.step_plain()
            };
            match step {
                Step::Need => return Advance::Need,
                Step::Line { bad, then_end } => {
                    self.emit(bad);
                    if let Some(e) = then_end {
                        self.end = Some(e);
                    }
                    return Advance::Line { bad };
                }
                Step::End(e) => self.end = Some(e),
            }
        }
    }

    /// Counts a line: the freshly decoded `cur` becomes the reference
    /// line, unless the line is bad and repeats the previous one.
    fn emit(&mut self, bad: bool) {
        let w = self.opts.width;
        if bad {
            self.ref_lost = true;
            self.bad += 1;
            self.consecutive_bad += 1;
            self.max_consecutive_bad = self.max_consecutive_bad.max(self.consecutive_bad);
        } else {
            self.consecutive_bad = 0;
            std::mem::swap(&mut self.cur, &mut self.refl);
            self.refl_n = self.cur_n;
            let n = self.refl_n;
            self.refl[n..n + 4].fill(w);
        }
        self.lines += 1;
    }

    /// The data ended: consume everything and emit the last line.
    fn end_of_data(&mut self, bad: bool) -> Step {
        self.bit = self.buf.len() * 8;
        Step::Line {
            bad,
            then_end: Some(PageEndReason::EndOfData),
        }
    }

    /// True when the data is complete and only zero bits are left.
    fn only_zeros_left(&self) -> bool {
        self.finished && self.bit >= self.data_end
    }

    /// One step for data without EOLs: EOL-less MH or MMR.
    fn step_plain(&mut self) -> Step {
        if self.only_zeros_left() {
            return Step::End(PageEndReason::EndOfData);
        }
        let width = self.opts.width;
        let mut r = BitReader::new(&self.buf, self.bit);
        let res = match self.opts.coding {
            Coding::Mmr => {
                // EOFB (two EOLs) where a line would start.
                if r.remaining() >= 12 && r.peek(12) == 1 {
                    if r.remaining() >= 24 && r.peek(24) == 0x1001 {
                        r.consume(24);
                        self.bit = r.bit_pos();
                        return Step::End(PageEndReason::Eofb);
                    }
                    if r.remaining() < 24 && !self.finished {
                        return Step::Need;
                    }
                }
                decode_2d(&mut r, width, &self.refl[..self.refl_n + 4], &mut self.cur)
            }
            Coding::Mh | Coding::Mr { .. } => decode_1d(&mut r, width, &mut self.cur),
        };
        match res {
            Ok(n) => {
                self.cur_n = n;
                if self.opts.byte_align_rows {
                    let pad = (8 - r.bit_pos() % 8) % 8;
                    r.consume(pad as u32);
                }
                self.bit = r.bit_pos().min(self.buf.len() * 8);
                Step::Line {
                    bad: false,
                    then_end: None,
                }
            }
            Err(LineErr::Incomplete) if !self.finished => Step::Need,
            Err(_) => {
                self.dead = true;
                self.bit = self.buf.len() * 8;
                Step::Line {
                    bad: true,
                    then_end: None,
                }
            }
        }
    }

    /// One step for data with EOLs (MH, MR).
    fn step_eol(&mut self) -> Step {
        let width = self.opts.width;
        let mr = matches!(self.opts.coding, Coding::Mr { .. });
        let finished = self.finished;
        let mut r = BitReader::new(&self.buf, self.bit);
        if !self.started {
            if !find_eol(&mut r) {
                return if finished {
                    Step::End(PageEndReason::EndOfData)
                } else {
                    Step::Need
                };
            }
            match after_eol(&mut r, mr, finished, &mut self.next_2d) {
                AfterEol::Need => return Step::Need,
                AfterEol::Rtc => {
                    self.bit = r.bit_pos().min(self.buf.len() * 8);
                    return Step::End(PageEndReason::Rtc);
                }
                AfterEol::End => return Step::End(PageEndReason::EndOfData),
                AfterEol::Line => {
                    self.started = true;
                    self.bit = r.bit_pos();
                }
            }
        }
        if self.only_zeros_left() {
            return Step::End(PageEndReason::EndOfData);
        }
        let start = r.bit_pos();
        let two_d = mr && self.next_2d;
        let res = if two_d && !self.ref_lost {
            decode_2d(&mut r, width, &self.refl[..self.refl_n + 4], &mut self.cur)
        } else if two_d {
            // Coded against a line we lost: whatever it decodes to may be
            // wrong, and nothing tells, so it is bad like that line.
            Err(LineErr::Invalid)
        } else {
            // A 1-D line needs no reference: it ends any loss.
            self.ref_lost = false;
            decode_1d(&mut r, width, &mut self.cur)
        };
        let bad = match res {
            Ok(n) => {
                self.cur_n = n;
                if let Some(tag_2d) = eol_then_line(&mut r, mr) {
                    if mr {
                        self.next_2d = tag_2d;
                    }
                    self.bit = r.bit_pos();
                    return Step::Line {
                        bad: false,
                        then_end: None,
                    };
                }
                // Fill, then the next EOL (or the end of the data).
                let zeros = r.skip_zeros(usize::MAX);
                if r.remaining() <= 0 {
                    if !finished {
                        return Step::Need;
                    }
                    return self.end_of_data(false);
                }
                if zeros >= 11 {
                    r.consume(1);
                    false
                } else if find_eol(&mut r) {
                    // Junk between the line and the EOL: the line is suspect.
                    true
                } else if finished {
                    return self.end_of_data(true);
                } else {
                    return Step::Need;
                }
            }
            Err(LineErr::Incomplete) => {
                if !finished {
                    return Step::Need;
                }
                return self.end_of_data(true);
            }
            Err(LineErr::Invalid) => {
                // Resync at the first EOL after the start of the bad line.
                r = BitReader::new(&self.buf, start);
                if !find_eol(&mut r) {
                    if !finished {
                        return Step::Need;
                    }
                    return self.end_of_data(true);
                }
                true
            }
        };
        // Positioned right after an EOL.
        let mut next_2d = self.next_2d;
        let then_end = match after_eol(&mut r, mr, finished, &mut next_2d) {
            AfterEol::Need => return Step::Need,
            AfterEol::Line => None,
            AfterEol::Rtc => Some(PageEndReason::Rtc),
            AfterEol::End => Some(PageEndReason::EndOfData),
        };
        self.next_2d = next_2d;
        self.bit = r.bit_pos().min(self.buf.len() * 8);
        Step::Line { bad, then_end }
    }
}

/// The usual end of a good line: an EOL (with at most 9 fill bits), the
/// MR tag bit, and the start of the next line rather than another EOL.
/// Returns whether the tag asks for 2-D, with `r` moved past the tag;
/// `None` leaves `r` alone for the general path (more fill, junk, RTC,
/// or the end of the data near). With 64 bits of real data left, none of
/// the general path's end-of-data cases can arise, so it would find the
/// same.
#[inline]
fn eol_then_line(r: &mut BitReader<'_>, mr: bool) -> Option<bool> {
    if r.remaining() < 64 {
        return None;
    }
    let mut p = *r;
    p.ensure32();
    // The window holds 32 bits, so a one bit within it is real.
    let zeros = p.leading_zeros();
    if !(11..=20).contains(&zeros) {
        return None;
    }
    p.skip(zeros + 1);
    let tag_2d = if mr {
        let t = p.show(1) == 0;
        p.skip(1);
        t
    } else {
        false
    };
    p.ensure32();
    if p.leading_zeros() >= 11 {
        return None;
    }
    *r = p;
    Some(tag_2d)
}

/// Skips to just after the next EOL (11 or more zeros, then a one).
fn find_eol(r: &mut BitReader<'_>) -> bool {
    loop {
        let zeros = r.skip_zeros(usize::MAX);
        if r.remaining() <= 0 {
            return false;
        }
        r.consume(1);
        if zeros >= 11 {
            return true;
        }
    }
}

/// Reads the MR tag bit after an EOL and checks for RTC (another EOL
/// right away, fill allowed). Leaves `r` at the line data, or after RTC.
fn after_eol(r: &mut BitReader<'_>, mr: bool, finished: bool, next_2d: &mut bool) -> AfterEol {
    let incomplete = if finished {
        AfterEol::End
    } else {
        AfterEol::Need
    };
    if mr {
        if r.remaining() < 1 {
            return incomplete;
        }
        *next_2d = r.peek(1) == 0;
        r.consume(1);
    }
    let mut probe = *r;
    let zeros = probe.skip_zeros(usize::MAX);
    if probe.remaining() <= 0 {
        return incomplete;
    }
    if zeros < 11 {
        return AfterEol::Line;
    }
    // RTC: swallow the rest of its EOLs (and their tag bits).
    probe.consume(1);
    *r = probe;
    loop {
        let mut probe = *r;
        if mr && probe.remaining() >= 1 {
            probe.consume(1);
        }
        let zeros = probe.skip_zeros(usize::MAX);
        if probe.remaining() <= 0 || zeros < 11 {
            return AfterEol::Rtc;
        }
        probe.consume(1);
        *r = probe;
    }
}

/// What a code that is not valid here means: the data may just have
/// ended inside it (`need` bits were wanted), or the line is damaged.
#[cold]
fn code_error(r: &BitReader<'_>, need: u32) -> LineErr {
    if r.remaining() < need as isize {
        LineErr::Incomplete
    } else {
        LineErr::Invalid
    }
}

/// The verdict on a line once its codes are read. The hot loops do not
/// test for the end of the data at every code: past the end the reader
/// yields zero bits, which start no code, so decoding soon stops there. A
/// line that read past the end is incomplete, whatever else was found;
/// this is the verdict a check before every code would give.
#[inline]
fn line_verdict(r: &BitReader<'_>, res: Result<usize, LineErr>) -> Result<usize, LineErr> {
    if r.remaining() < 0 {
        Err(LineErr::Incomplete)
    } else {
        res
    }
}

/// Decodes one run (makeup codes, then a terminating code), white or
/// black as `BLACK` says; `line_verdict` then checks for the end of data.
///
/// The window must hold the 13 bits (12 for white) that a code is read
/// with; the run tops up after a makeup code, so a terminating code is
/// all it takes from what the caller's top-up left.
#[inline(always)]
fn decode_run<const BLACK: bool>(r: &mut BitReader<'_>, limit: u32) -> Result<u32, LineErr> {
    let mut run = 0u32;
    loop {
        let e = if BLACK {
            BLACK_DECODE[r.show(BLACK_BITS) as usize]
        } else {
            WHITE_DECODE[r.show(WHITE_BITS) as usize]
        };
        let v = u32::from(e >> 4);
        let len = u32::from(e & 15);
        if v < 64 {
            // A terminating code: the common case, one test.
            r.skip(len);
            return Ok(run + v);
        }
        if v >= u32::from(RUN_INVALID) {
            // No code starts here (13 bits decide), or an EOL inside a line.
            let need = if v == u32::from(RUN_EOL) {
                len
            } else {
                BLACK_BITS
            };
            return Err(code_error(r, need));
        }
        r.skip(len);
        r.fill();
        run += v;
        if run > limit {
            return Err(LineErr::Invalid);
        }
    }
}

/// Appends a changing element to `cur[..*n]`; an element equal to the
/// last one cancels it (a zero-length run), which keeps the list strictly
/// increasing. The elements come in nondecreasing order from 0 to the
/// width, so the list never outgrows `width + 1`; were it to, the line
/// would be refused rather than the decoder panic.
#[inline(always)]
fn push_change(cur: &mut [u32], n: &mut usize, v: u32) -> Result<(), LineErr> {
    if cur.get(n.wrapping_sub(1)) == Some(&v) {
        *n -= 1;
    } else {
        *cur.get_mut(*n).ok_or(LineErr::Invalid)? = v;
        *n += 1;
    }
    Ok(())
}

/// MH: one line of alternating white and black runs. Returns the number
/// of changing elements written to `cur`.
#[inline(never)]
fn decode_1d(r: &mut BitReader<'_>, width: u32, cur: &mut [u32]) -> Result<usize, LineErr> {
    decode_1d_inline(r, width, cur)
}

/// [`decode_1d`], inlined where lines are decoded in a loop.
#[inline(always)]
fn decode_1d_inline(r: &mut BitReader<'_>, width: u32, cur: &mut [u32]) -> Result<usize, LineErr> {
    // A local copy of the reader stays in registers in the loop.
    let mut local = *r;
    let res = decode_1d_runs(&mut local, width, cur);
    *r = local;
    line_verdict(r, res)
}

/// Where the next run (at `pos`) leaves the line: `Some` once it reaches
/// the width, with the line's fate.
#[inline(always)]
fn line_end(pos: u32, width: u32, n: usize) -> Option<Result<usize, LineErr>> {
    if pos < width {
        None
    } else if pos == width {
        Some(Ok(n))
    } else {
        Some(Err(LineErr::Invalid))
    }
}

#[inline(always)]
fn decode_1d_runs(r: &mut BitReader<'_>, width: u32, cur: &mut [u32]) -> Result<usize, LineErr> {
    let mut pos = 0u32;
    let mut n = 0;
    loop {
        // One top-up for a pair of runs: two terminating codes take at
        // most 8 + 12 bits (and the second is read with 13), and a makeup
        // code tops up on its own.
        r.ensure32();
        pos += decode_run::<false>(r, width)?;
        if let Some(end) = line_end(pos, width, n) {
            return end;
        }
        push_change(cur, &mut n, pos)?;
        pos += decode_run::<true>(r, width)?;
        if let Some(end) = line_end(pos, width, n) {
            return end;
        }
        push_change(cur, &mut n, pos)?;
    }
}

/// T.4 2-D / T.6: one line coded against the reference line `refl`
/// (strictly increasing below `width`, then at least three `width`
/// sentinels). Returns the number of changing elements written to `cur`.
fn decode_2d(
    r: &mut BitReader<'_>,
    width: u32,
    refl: &[u32],
    cur: &mut [u32],
) -> Result<usize, LineErr> {
    decode_2d_inline(r, width, refl, cur)
}

/// [`decode_2d`], inlined where lines are decoded in a loop.
#[inline(always)]
fn decode_2d_inline(
    r: &mut BitReader<'_>,
    width: u32,
    refl: &[u32],
    cur: &mut [u32],
) -> Result<usize, LineErr> {
    let mut local = *r;
    let res = decode_2d_modes(&mut local, width, refl, cur);
    *r = local;
    line_verdict(r, res)
}

/// The mode loop of [`decode_2d`]. `bi` indexes b1 in `refl`; its parity
/// is the colour of a0 (even indices are changes to black), and
/// `runs::b1_after_*` move it along as a0 advances.
#[inline(always)]
fn decode_2d_modes(
    r: &mut BitReader<'_>,
    width: u32,
    refl: &[u32],
    cur: &mut [u32],
) -> Result<usize, LineErr> {
    let w = width as i32;
    let mut a0: i32 = -1;
    let mut bi = 0usize;
    let mut n = 0usize;
    loop {
        // Enough for a mode code and, in horizontal mode, two runs: 7
        // bits, or 3 + 12 and then 13 to read the second run.
        r.ensure32();
        let e = MODE_DECODE[r.show(MODE_BITS) as usize];
        let (len, kind) = (u32::from(e & 0xFF), (e >> 8) as u8);
        r.skip(len);
        let b1 = refl[bi] as i32;
        if kind < KIND_PASS {
            // Vertical: a1 is b1 moved by -3 to 3. As a1 > a0 and no
            // element of `cur` is above a0, a1 cannot cancel one.
            let a1 = b1 + i32::from(kind) - 3;
            if a1 <= a0 || a1 > w {
                return Err(LineErr::Invalid);
            }
            *cur.get_mut(n).ok_or(LineErr::Invalid)? = a1 as u32;
            n += 1;
            if a1 == w {
                return Ok(n);
            }
            a0 = a1;
            bi = b1_after_vertical(refl, bi, a1 as u32);
        } else if kind == KIND_PASS {
            let b2 = refl[bi + 1] as i32;
            if b2 >= w {
                return Ok(n);
            }
            a0 = b2;
            bi = b1_after_pass(bi);
        } else if kind == KIND_HORIZONTAL {
            let start = a0.max(0) as u32;
            let (r1, r2) = if bi & 1 == 0 {
                let r1 = decode_run::<false>(r, width)?;
                (r1, decode_run::<true>(r, width)?)
            } else {
                let r1 = decode_run::<true>(r, width)?;
                (r1, decode_run::<false>(r, width)?)
            };
            let a1 = start + r1;
            let a2 = a1 + r2;
            if a2 > width {
                return Err(LineErr::Invalid);
            }
            push_change(cur, &mut n, a1)?;
            push_change(cur, &mut n, a2)?;
            if a2 == width {
                return Ok(n);
            }
            a0 = a2 as i32;
            bi = b1_after_horizontal(refl, bi, a2);
        } else if len == 0 {
            return Err(code_error(r, 13));
        } else {
            // The extension (uncompressed mode), which we do not support.
            return Err(LineErr::Invalid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bitmap::Bitmap;
    use crate::encoder::EncoderOptions;

    /// A page with text-like blobs, long runs and edge pixels.
    pub(crate) fn sample_page(width: u32, height: u32, seed: u64) -> Bitmap {
        let mut b = Bitmap::new(width, height);
        let mut s = seed;
        let mut rnd = |n: u32| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) % u64::from(n.max(1))) as u32
        };
        for _ in 0..(width * height / 400) {
            let (x, y, w, h) = (rnd(width), rnd(height), rnd(40) + 1, rnd(12) + 1);
            for yy in y..(y + h).min(height) {
                for xx in x..(x + w).min(width) {
                    b.set_pixel(xx, yy, true);
                }
            }
        }
        for y in 0..height {
            b.set_pixel(0, y, y % 3 == 0);
            b.set_pixel(width - 1, y, y % 5 == 0);
        }
        if height > 4 {
            for x in 0..width {
                b.set_pixel(x, 2, true);
            }
        }
        b
    }

    fn codings() -> Vec<Coding> {
        vec![
            Coding::Mh,
            Coding::Mr { k: 2 },
            Coding::Mr { k: 4 },
            Coding::Mmr,
        ]
    }

    #[test]
    fn round_trip_all_framings() {
        for width in [1u32, 5, 64, 1728, 2432, 3000] {
            let page = sample_page(width, 40, u64::from(width));
            for coding in codings() {
                let g3 = !matches!(coding, Coding::Mmr);
                let mut variants = vec![
                    EncoderOptions::tiff(coding, width),
                    EncoderOptions::wire(coding, width),
                ];
                if g3 {
                    let mut o = EncoderOptions::wire(coding, width);
                    o.byte_align_eol = true;
                    o.min_line_bits = 400;
                    variants.push(o);
                }
                if coding == Coding::Mh {
                    let mut o = EncoderOptions::tiff(coding, width);
                    o.eol = false;
                    o.byte_align_rows = true;
                    variants.push(o);
                }
                for eo in variants {
                    let data = page.encode(eo.clone()).unwrap();
                    let dopts = DecoderOptions {
                        coding,
                        width,
                        eol: eo.eol,
                        byte_align_rows: eo.byte_align_rows,
                        rows: None,
                    };
                    let (back, sum) = Bitmap::decode(&data, dopts.clone()).unwrap();
                    assert_eq!(sum.bad_lines, 0, "{eo:?}");
                    assert_eq!(back, page, "{eo:?}");
                    let expect_end = if eo.end_of_page {
                        if g3 {
                            PageEndReason::Rtc
                        } else {
                            PageEndReason::Eofb
                        }
                    } else {
                        PageEndReason::EndOfData
                    };
                    assert_eq!(sum.end, expect_end, "{eo:?}");
                    // Known row count.
                    let (back, sum) = Bitmap::decode(
                        &data,
                        DecoderOptions {
                            rows: Some(40),
                            ..dopts.clone()
                        },
                    )
                    .unwrap();
                    assert_eq!((back, sum.bad_lines), (page.clone(), 0), "{eo:?}");
                    // Byte by byte through the streaming interface.
                    let mut dec = Decoder::new(dopts).unwrap();
                    let mut got = Bitmap::with_width(width);
                    let mut summary = None;
                    for b in data.iter().map(std::slice::from_ref).chain([&[][..]]) {
                        if b.is_empty() {
                            dec.finish();
                        } else {
                            dec.push(b).unwrap();
                        }
                        while let Some(ev) = dec.next_line().unwrap() {
                            match ev {
                                DecodeEvent::Line { pixels, .. } => got.push_row(pixels),
                                DecodeEvent::PageEnd(s) => {
                                    summary = Some(s);
                                    break;
                                }
                            }
                        }
                        if summary.is_some() {
                            break;
                        }
                    }
                    assert_eq!(got, page, "streamed {eo:?}");
                    assert_eq!(summary.unwrap().bad_lines, 0);
                }
            }
        }
    }

    /// `Bitmap::decode` draws lines its own way (a loop for the common
    /// lines, straight into the bitmap); it must give what the streaming
    /// decoder gives, line for line, on damaged data too.
    #[test]
    fn bitmap_decode_matches_streaming_on_damage() {
        let mut seed = 99u64;
        let mut rnd = |n: usize| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) as usize) % n.max(1)
        };
        let width = 1728;
        let page = sample_page(width, 120, 5);
        let mut damaged = 0;
        for coding in codings() {
            let mut framings = vec![
                EncoderOptions::tiff(coding, width),
                EncoderOptions::wire(coding, width),
            ];
            if coding == Coding::Mh {
                let mut o = EncoderOptions::tiff(coding, width);
                o.eol = false;
                o.byte_align_rows = true;
                framings.push(o);
            }
            for eo in framings {
                let data = page.encode(eo.clone()).unwrap();
                let mut inputs = vec![data.clone(), data[..data.len() * 2 / 3].to_vec()];
                for flips in [1, 4, 30] {
                    let mut d = data.clone();
                    for _ in 0..flips {
                        let bit = rnd(d.len() * 8);
                        d[bit / 8] ^= 0x80 >> (bit % 8);
                    }
                    inputs.push(d);
                }
                let mut d = data.clone();
                let at = rnd(d.len() - 40);
                d[at..at + 30].fill(0);
                inputs.push(d);
                let mut d = data.clone();
                d.extend_from_slice(&[0, 1, 0xAB, 0, 0, 0x10]);
                inputs.push(d);
                for input in &inputs {
                    for rows in [None, Some(120), Some(200), Some(30)] {
                        let opts = DecoderOptions {
                            coding,
                            width,
                            eol: eo.eol,
                            byte_align_rows: eo.byte_align_rows,
                            rows,
                        };
                        let (got, sum) = Bitmap::decode(input, opts.clone()).unwrap();
                        let mut dec = Decoder::new(opts).unwrap();
                        dec.push(input).unwrap();
                        dec.finish();
                        let mut want = Bitmap::with_width(width);
                        let want_sum = loop {
                            match dec.next_line().unwrap() {
                                Some(DecodeEvent::Line { pixels, .. }) => want.push_row(pixels),
                                Some(DecodeEvent::PageEnd(s)) => break s,
                                None => unreachable!("finished"),
                            }
                        };
                        assert_eq!((&got, sum), (&want, want_sum), "{eo:?} rows {rows:?}");
                        damaged += usize::from(sum.bad_lines > 0);
                    }
                }
            }
        }
        // Damage did reach the comparison.
        assert!(damaged > 100, "{damaged}");
    }

    /// Where each line's data starts in clean coded data (after its EOL
    /// and tag bit with EOLs), as the decoder reads it.
    fn line_starts(data: &[u8], opts: DecoderOptions) -> Vec<usize> {
        let mut dec = Decoder::new(opts.clone()).unwrap();
        dec.push(data).unwrap();
        dec.finish();
        let mut starts = vec![0];
        if opts.eol {
            let mut r = BitReader::new(data, 0);
            assert!(find_eol(&mut r));
            let tag = u32::from(matches!(opts.coding, Coding::Mr { .. }));
            r.consume(tag);
            starts[0] = r.bit_pos();
        }
        while let Some(DecodeEvent::Line { bad, .. }) = dec.next_line().unwrap() {
            assert!(!bad);
            starts.push(dec.bit);
        }
        // The last entry is where the page's last line ends.
        starts.pop();
        starts
    }

    /// The bad-line contract, for both decode paths, under damage that a
    /// decoder is bound to see: the data of random lines overwritten from
    /// its start with `000000001` (no code, and too few zeros for an EOL,
    /// so the line cannot decode and every EOL stays), and sometimes the
    /// data cut short. Every line is either exactly the line sent or
    /// flagged bad and a copy of the last good line: none is silently
    /// wrong. Without a cut the bad lines are known exactly: in MR the
    /// damaged ones and the 2-D lines after each up to the next 1-D line;
    /// in MMR, which cannot resync, every line from the first damaged one
    /// (the page ends there unless the row count is known).
    #[test]
    fn damaged_lines_are_exact_or_flagged_never_silently_wrong() {
        let mut seed = 7u64;
        let mut rnd = |n: usize| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) as usize) % n.max(1)
        };
        let bit = |d: &[u8], i: usize| d[i / 8] & (0x80 >> (i % 8)) != 0;
        let set = |d: &mut [u8], i: usize, one: bool| {
            let m = 0x80u8 >> (i % 8);
            d[i / 8] = if one { d[i / 8] | m } else { d[i / 8] & !m };
        };
        let h = 40usize;
        let (mut spans, mut mmr_cases) = (0, 0);
        for trial in 0..400u64 {
            let width = [37u32, 300, 1728][rnd(3)];
            let page = sample_page(width, h as u32, trial);
            let mmr = rnd(4) == 0;
            let coding = if mmr {
                Coding::Mmr
            } else {
                Coding::Mr {
                    k: 1 + rnd(5) as u32,
                }
            };
            let mut eo = if rnd(2) == 0 {
                EncoderOptions::wire(coding, width)
            } else {
                EncoderOptions::tiff(coding, width)
            };
            if !mmr && rnd(2) == 0 {
                // Fill makes even short lines long enough to damage.
                eo.min_line_bits = 40;
            }
            let clean = page.encode(eo.clone()).unwrap();
            let base = DecoderOptions {
                coding,
                width,
                eol: eo.eol,
                byte_align_rows: false,
                rows: None,
            };
            let starts = line_starts(&clean, base.clone());
            assert_eq!(starts.len(), h);
            let bits = clean.len() * 8;
            // Lines whose start can take the pattern: MR keeps the 11
            // zeros of the EOL after it intact.
            let room = |y: usize| {
                let end = if mmr {
                    bits
                } else {
                    let mut r = BitReader::new(&clean, starts[y]);
                    if find_eol(&mut r) {
                        r.bit_pos() - 12
                    } else {
                        bits
                    }
                };
                starts[y] + 9 <= end
            };
            let eligible: Vec<usize> = (0..h).filter(|&y| room(y)).collect();
            let mut damaged = vec![false; h];
            for _ in 0..1 + rnd(if mmr { 1 } else { 3 }) {
                if let Some(&y) = eligible.get(rnd(eligible.len())) {
                    damaged[y] = true;
                }
            }
            let mut data = clean.clone();
            for y in (0..h).filter(|&y| damaged[y]) {
                for i in 0..9 {
                    set(&mut data, starts[y] + i, i == 8);
                }
            }
            let cut = rnd(3) == 0;
            if cut {
                data.truncate(rnd(data.len()));
            }
            // Which lines must come out bad, when nothing is cut.
            let mut want_bad = vec![false; h];
            for y in 0..h {
                // MR's tag bit, just before the line's data.
                let one_d = !mmr && bit(&clean, starts[y] - 1);
                let after_bad = y > 0 && want_bad[y - 1];
                want_bad[y] = damaged[y] || (after_bad && !one_d);
            }
            spans += usize::from((1..h).any(|y| want_bad[y] && !damaged[y]));
            mmr_cases += usize::from(mmr && damaged.contains(&true));
            for rows in [None, Some(h as u64)] {
                let opts = DecoderOptions {
                    rows,
                    ..base.clone()
                };
                let what = format!("trial {trial} {eo:?} rows {rows:?} cut {cut}");
                let mut dec = Decoder::new(opts.clone()).unwrap();
                dec.push(&data).unwrap();
                dec.finish();
                let mut lines: Vec<(Vec<u8>, bool)> = Vec::new();
                let sum = loop {
                    match dec.next_line().unwrap() {
                        Some(DecodeEvent::Line { pixels, bad }) => {
                            lines.push((pixels.to_vec(), bad));
                        }
                        Some(DecodeEvent::PageEnd(s)) => break s,
                        None => unreachable!("finished"),
                    }
                };
                assert!(lines.len() <= h, "{what}");
                let white = vec![0u8; width.div_ceil(8) as usize];
                let mut last_good = &white;
                for (y, (pixels, bad)) in lines.iter().enumerate() {
                    if *bad {
                        assert_eq!(pixels, last_good, "{what}: bad line {y}");
                    } else {
                        assert_eq!(pixels, page.row(y as u32), "{what}: line {y}");
                        last_good = pixels;
                    }
                }
                let flagged = lines.iter().filter(|l| l.1).count() as u64;
                assert_eq!((sum.lines, sum.bad_lines), (lines.len() as u64, flagged));
                if !cut {
                    let mut want = want_bad.clone();
                    if mmr && rows.is_none() {
                        // The page ends at the line that did not decode.
                        want.truncate(want.iter().position(|&b| b).map_or(h, |y| y + 1));
                    }
                    let got: Vec<bool> = lines.iter().map(|l| l.1).collect();
                    assert_eq!(got, want, "{what}: bad lines");
                }
                // The one-shot path: the same lines and counts.
                let (bmp, bsum) = Bitmap::decode(&data, opts).unwrap();
                assert_eq!(bsum, sum, "{what}: Bitmap::decode");
                let rows_got: Vec<&[u8]> = bmp.rows().collect();
                let rows_want: Vec<&[u8]> = lines.iter().map(|l| &l.0[..]).collect();
                assert!(rows_got == rows_want, "{what}: Bitmap::decode lines");
            }
        }
        // The cases that matter were drawn.
        assert!(spans > 150 && mmr_cases > 50, "{spans} {mmr_cases}");
    }

    /// A roll: 100,000 lines through encoder and decoder, streamed in
    /// chunks, with the decoder's buffer staying small throughout.
    #[test]
    fn long_page_in_bounded_memory() {
        let width = 1728;
        let lines: Vec<Vec<u8>> = (0..7u32)
            .map(|i| {
                let mut l = vec![0u8; 216];
                for x in (i * 5..width).step_by(37 + i as usize) {
                    l[(x / 8) as usize] |= 0x80 >> (x % 8);
                }
                l
            })
            .collect();
        for coding in [Coding::Mh, Coding::Mr { k: 4 }, Coding::Mmr] {
            let mut enc = crate::Encoder::new(EncoderOptions::wire(coding, width)).unwrap();
            let mut dec = Decoder::new(DecoderOptions::wire(coding, width)).unwrap();
            let total = 100_000u64;
            let mut seen = 0u64;
            let mut max_buf = 0;
            let drain = |dec: &mut Decoder, seen: &mut u64| {
                while let Some(ev) = dec.next_line().unwrap() {
                    match ev {
                        DecodeEvent::Line { pixels, bad } => {
                            assert!(!bad);
                            assert_eq!(pixels, &lines[(*seen % 7) as usize][..]);
                            *seen += 1;
                        }
                        DecodeEvent::PageEnd(s) => {
                            assert_eq!((s.lines, s.bad_lines), (total, 0));
                            return;
                        }
                    }
                }
            };
            for y in 0..total {
                enc.encode_line(&lines[(y % 7) as usize]).unwrap();
                if y % 100 == 99 {
                    dec.push(&enc.take_output()).unwrap();
                    drain(&mut dec, &mut seen);
                    max_buf = max_buf.max(dec.buffered_bytes());
                }
            }
            dec.push(&enc.finish()).unwrap();
            dec.finish();
            drain(&mut dec, &mut seen);
            assert_eq!(seen, total);
            assert!(
                max_buf < 64 * 1024,
                "{coding:?}: decoder buffer grew to {max_buf}"
            );
        }
    }

    #[test]
    fn min_line_bits_are_respected() {
        let page = Bitmap::new(1728, 10);
        let mut o = EncoderOptions::wire(Coding::Mh, 1728);
        o.min_line_bits = 1000;
        let data = page.encode(o).unwrap();
        // 10 lines of at least 1000 bits, then RTC.
        assert!(data.len() * 8 >= 10 * 1000 + 72, "{}", data.len());
        let plain = page.encode(EncoderOptions::wire(Coding::Mh, 1728)).unwrap();
        assert!(plain.len() * 8 < 10 * 40 + 80);
    }

    #[test]
    fn byte_aligned_eols_end_on_byte_boundaries() {
        let page = sample_page(1728, 20, 7);
        let mut o = EncoderOptions::wire(Coding::Mh, 1728);
        o.byte_align_eol = true;
        let data = page.encode(o).unwrap();
        // Every EOL is the bit pattern xxxx0000 00000001 on a byte boundary.
        let eols = data
            .windows(2)
            .filter(|w| w[0] & 0x0F == 0 && w[1] == 1)
            .count();
        assert!(eols > 20, "{eols}");
        assert_eq!(&data[..2], &[0x00, 0x01]);
    }

    /// Golden bytes: an all-white 1728 line in MH is EOL, white 1728
    /// makeup (010011011), white 0 terminating (00110101).
    #[test]
    fn golden_white_line() {
        let page = Bitmap::new(1728, 1);
        let data = page.encode(EncoderOptions::tiff(Coding::Mh, 1728)).unwrap();
        // 000000000001 010011011 00110101 + pad
        assert_eq!(data, vec![0x00, 0x14, 0xD9, 0xA8]);
        let g4 = page
            .encode(EncoderOptions::tiff(Coding::Mmr, 1728))
            .unwrap();
        // V0, then EOFB (000000000001 x2), padded: 1 0000 0000 0001 0000 0000 0001 ...
        assert_eq!(g4, vec![0x80, 0x08, 0x00, 0x80]);
    }
}
