//! The streaming T.4/T.6 decoder: push bytes, pull scan lines.
//!
//! Damage is handled the way a fax machine handles it. A line that does
//! not decode (an invalid code, a wrong pixel count, junk before the next
//! EOL, a truncated end) is replaced by the previous line and counted as
//! bad; MH and MR decoding then resyncs at the next EOL. MMR and EOL-less
//! MH have no resync point, so after an error the rest of the page is
//! made of copies of the last line (when the row count is known) or the
//! page ends.

use crate::bits::BitReader;
use crate::encoder::find_b1;
use crate::error::FaxError;
use crate::runs::changes_to_line;
use crate::tables::{
    BLACK_BITS, BLACK_DECODE, MODE_BITS, MODE_DECODE, Mode, RUN_EOL, WHITE_BITS, WHITE_DECODE,
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
}

/// The outcome of a page, so that T.30 can decide between MCF and RTN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageSummary {
    /// Lines yielded, bad ones included.
    pub lines: u64,
    /// Lines that did not decode and were replaced by the previous line.
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
        self.bad_lines * 100 <= self.lines * u64::from(max_bad_percent)
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
        /// True if the line did not decode and is a copy of the previous one.
        bad: bool,
    },
    /// The page is complete; further calls return this again.
    PageEnd(PageSummary),
}

/// Why a line did not decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LineErr {
    /// Not a valid line.
    Invalid,
    /// The data ended inside the line.
    Incomplete,
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
    /// Changing elements of the last line yielded, plus sentinels.
    refl: Vec<u32>,
    cur: Vec<u32>,
    line: Vec<u8>,
    lines: u64,
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
            line: vec![0; (w as usize).div_ceil(8)],
            opts,
            buf: Vec::new(),
            bit: 0,
            finished: false,
            started: false,
            next_2d: false,
            refl: vec![w, w, w, w],
            cur: Vec::new(),
            lines: 0,
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
        let rows = self.opts.rows;
        if rows.is_some_and(|r| self.lines >= r) {
            self.end.get_or_insert(PageEndReason::RowCount);
            return Ok(Some(DecodeEvent::PageEnd(self.summary())));
        }
        if self.end.is_some() || self.dead {
            if rows.is_some() {
                // Pad a short page to its known length.
                self.emit(true);
                return Ok(Some(DecodeEvent::Line {
                    pixels: &self.line,
                    bad: true,
                }));
            }
            self.end.get_or_insert(PageEndReason::EndOfData);
            return Ok(Some(DecodeEvent::PageEnd(self.summary())));
        }
        let step = if self.opts.eol {
            self.step_eol()
        } else {
            self.step_plain()
        };
        match step {
            Step::Need => Ok(None),
            Step::Line { bad, then_end } => {
                self.emit(bad);
                if let Some(e) = then_end {
                    self.end = Some(e);
                }
                Ok(Some(DecodeEvent::Line {
                    pixels: &self.line,
                    bad,
                }))
            }
            Step::End(e) => {
                self.end = Some(e);
                self.next_line()
            }
        }
    }

    /// Yields a line: the freshly decoded `cur`, or a copy of the previous
    /// line when bad.
    fn emit(&mut self, bad: bool) {
        let w = self.opts.width;
        if bad {
            self.bad += 1;
            self.consecutive_bad += 1;
            self.max_consecutive_bad = self.max_consecutive_bad.max(self.consecutive_bad);
        } else {
            self.consecutive_bad = 0;
            std::mem::swap(&mut self.cur, &mut self.refl);
            self.refl.extend_from_slice(&[w, w, w, w]);
        }
        changes_to_line(&self.refl, w, &mut self.line);
        self.lines += 1;
    }

    /// True when the data is complete and only zero bits are left.
    /// The data ended: consume everything and emit the last line.
    fn end_of_data(&mut self, bad: bool) -> Step {
        self.bit = self.buf.len() * 8;
        Step::Line {
            bad,
            then_end: Some(PageEndReason::EndOfData),
        }
    }

    fn only_zeros_left(&self) -> bool {
        if !self.finished {
            return false;
        }
        let mut r = BitReader::new(&self.buf, self.bit);
        r.skip_zeros(usize::MAX);
        r.remaining() <= 0
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
                decode_2d(&mut r, width, &self.refl, &mut self.cur)
            }
            Coding::Mh | Coding::Mr { .. } => decode_1d(&mut r, width, &mut self.cur),
        };
        match res {
            Ok(()) => {
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
        let res = if mr && self.next_2d {
            decode_2d(&mut r, width, &self.refl, &mut self.cur)
        } else {
            decode_1d(&mut r, width, &mut self.cur)
        };
        let bad = match res {
            Ok(()) => {
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
    let mut probe = BitReader::new(r.data(), r.bit_pos());
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
        let mut probe = BitReader::new(r.data(), r.bit_pos());
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

/// Decodes one run (makeup codes, then a terminating code).
#[inline]
fn decode_run(r: &mut BitReader<'_>, black: bool, limit: u32) -> Result<u32, LineErr> {
    let mut run = 0u32;
    loop {
        let e = if black {
            BLACK_DECODE[r.peek(BLACK_BITS) as usize]
        } else {
            WHITE_DECODE[r.peek(WHITE_BITS) as usize]
        };
        let len = u32::from(e & 15);
        if len == 0 {
            return Err(if r.remaining() < BLACK_BITS as isize {
                LineErr::Incomplete
            } else {
                LineErr::Invalid
            });
        }
        if len as isize > r.remaining() {
            return Err(LineErr::Incomplete);
        }
        let v = e >> 4;
        if v == RUN_EOL {
            return Err(LineErr::Invalid);
        }
        r.consume(len);
        run += u32::from(v);
        if v < 64 {
            return Ok(run);
        }
        if run > limit {
            return Err(LineErr::Invalid);
        }
    }
}

/// Appends a changing element; an element equal to the last one cancels
/// it (a zero-length run), which keeps the list strictly increasing.
#[inline]
fn push_change(cur: &mut Vec<u32>, v: u32) {
    if cur.last() == Some(&v) {
        cur.pop();
    } else {
        cur.push(v);
    }
}

/// MH: one line of alternating white and black runs.
fn decode_1d(r: &mut BitReader<'_>, width: u32, cur: &mut Vec<u32>) -> Result<(), LineErr> {
    cur.clear();
    let mut pos = 0u32;
    let mut black = false;
    loop {
        pos += decode_run(r, black, width)?;
        if pos > width {
            return Err(LineErr::Invalid);
        }
        if pos == width {
            return Ok(());
        }
        push_change(cur, pos);
        black = !black;
    }
}

/// T.4 2-D / T.6: one line coded against the reference line `refl`
/// (which ends with at least three `width` sentinels).
fn decode_2d(
    r: &mut BitReader<'_>,
    width: u32,
    refl: &[u32],
    cur: &mut Vec<u32>,
) -> Result<(), LineErr> {
    cur.clear();
    let w = width as i32;
    let mut a0: i32 = -1;
    let mut color = 0usize;
    let mut bi = 0usize;
    while a0 < w {
        let (len, mode) = MODE_DECODE[r.peek(MODE_BITS) as usize];
        if len == 0 {
            return Err(if r.remaining() < 13 {
                LineErr::Incomplete
            } else {
                LineErr::Invalid
            });
        }
        if len as isize > r.remaining() {
            return Err(LineErr::Incomplete);
        }
        r.consume(u32::from(len));
        find_b1(refl, a0, color, &mut bi);
        let b1 = refl[bi] as i32;
        match mode {
            Mode::Pass => a0 = refl[bi + 1] as i32,
            Mode::Horizontal => {
                let start = a0.max(0) as u32;
                let r1 = decode_run(r, color == 1, width)?;
                let r2 = decode_run(r, color == 0, width)?;
                let a1 = start + r1;
                let a2 = a1 + r2;
                if a2 > width {
                    return Err(LineErr::Invalid);
                }
                push_change(cur, a1);
                push_change(cur, a2);
                a0 = a2 as i32;
            }
            Mode::Vertical(d) => {
                let a1 = b1 + i32::from(d);
                if a1 <= a0 || a1 > w {
                    return Err(LineErr::Invalid);
                }
                push_change(cur, a1 as u32);
                a0 = a1;
                color ^= 1;
            }
            Mode::Extension | Mode::Invalid => return Err(LineErr::Invalid),
        }
    }
    Ok(())
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
