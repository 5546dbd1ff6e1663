//! HDLC framing in software, for ECM blocks sent and received as Class 1
//! high-speed data (`+FTM`/`+FRM`): a pure codec, no I/O.
//!
//! A Class 1 modem frames HDLC itself only for V.21 (`+FTH=3`/`+FRH=3`).
//! T.30's error correction mode (T.4 Annex A) sends its image frames (FCD
//! and RCP) at the page's high speed, so the DTE frames them, as HylaFAX
//! does: flags (0x7E), a zero inserted after every five ones inside a
//! frame, and the 16-bit FCS of T.30 section 5.3.7 (ISO/IEC 13239: the
//! CRC of polynomial x^16 + x^12 + x^5 + 1, reflected, preset to ones,
//! sent complemented, low octet first).
//!
//! Bits go on the line least significant bit first, and the modem takes
//! and gives octets that way: the first bit on the line is bit 0 of the
//! first octet. The [`Encoder`] packs its output so, and the [`Decoder`]
//! reads its input so, finding flags at any bit offset.

/// The HDLC flag, which opens and closes frames.
pub const FLAG: u8 = 0x7E;

/// Longest frame the decoder keeps (address, control, FCF, frame number,
/// 256 octets of data and the FCS, with room to spare); a longer run
/// between flags is noise and is dropped whole.
const MAX_FRAME: usize = 512;

/// The FCS register after the whole frame, FCS included, when the FCS is
/// right (ISO/IEC 13239's "good FCS" remainder).
const GOOD_FCS: u16 = 0xF0B8;

/// Runs the FCS register over `data` from `crc`.
fn crc_update(mut crc: u16, data: &[u8]) -> u16 {
    for &b in data {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x8408
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// The FCS of `frame` as it is sent: complemented; its low octet goes
/// first.
pub fn fcs(frame: &[u8]) -> u16 {
    !crc_update(0xFFFF, frame)
}

/// Frames octets into a bit-stuffed HDLC bit stream.
#[derive(Debug, Default)]
pub struct Encoder {
    out: Vec<u8>,
    /// Bits not yet a whole octet, the first in bit 0.
    acc: u16,
    bits: u32,
    /// Ones in a row within the current frame.
    ones: u32,
}

impl Encoder {
    /// An empty stream.
    pub fn new() -> Self {
        Self::default()
    }

    fn bit(&mut self, one: bool) {
        if one {
            self.acc |= 1 << self.bits;
        }
        self.bits += 1;
        if self.bits == 8 {
            self.out.push(self.acc as u8);
            self.acc = 0;
            self.bits = 0;
        }
    }

    /// Appends `n` flags.
    pub fn flags(&mut self, n: usize) {
        for _ in 0..n {
            for i in 0..8 {
                self.bit(FLAG >> i & 1 != 0);
            }
        }
        self.ones = 0;
    }

    fn octet(&mut self, b: u8) {
        for i in 0..8 {
            let one = b >> i & 1 != 0;
            self.bit(one);
            if one {
                self.ones += 1;
                if self.ones == 5 {
                    self.bit(false);
                    self.ones = 0;
                }
            } else {
                self.ones = 0;
            }
        }
    }

    /// Appends one frame: `frame` (address, control, FCF and FIF), its
    /// FCS, and a closing flag, which may also open the next frame.
    pub fn frame(&mut self, frame: &[u8]) {
        self.ones = 0;
        for &b in frame {
            self.octet(b);
        }
        let [lo, hi] = fcs(frame).to_le_bytes();
        self.octet(lo);
        self.octet(hi);
        self.flags(1);
    }

    /// The stream, its last octet filled up with the start of one more
    /// flag (so the line stays idle in flags, never aborts).
    pub fn finish(mut self) -> Vec<u8> {
        let mut i = 0;
        while self.bits != 0 {
            self.bit(FLAG >> i & 1 != 0);
            i += 1;
        }
        self.out
    }
}

/// One frame the [`Decoder`] found between flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The frame without its FCS.
    pub bytes: Vec<u8>,
    /// Whether the FCS was right. A frame with a bad FCS is still
    /// reported (T.30 counts it as missing).
    pub fcs_ok: bool,
}

/// Finds frames in an HDLC bit stream, fed in chunks of any size.
#[derive(Debug, Default)]
pub struct Decoder {
    /// Ones in a row, not yet known to be data, stuffing or a flag.
    ones: u32,
    /// A flag has been seen since the last abort, so bits are frame bits.
    synced: bool,
    /// Bits not yet a whole octet, the first in bit 0.
    acc: u16,
    bits: u32,
    buf: Vec<u8>,
    /// The frame outgrew [`MAX_FRAME`]; the rest of it is dropped.
    overlong: bool,
    frames: Vec<Frame>,
}

impl Decoder {
    /// A decoder hunting for its first flag.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes more of the stream and returns the frames it completed.
    pub fn push(&mut self, data: &[u8]) -> Vec<Frame> {
        for &b in data {
            for i in 0..8 {
                self.bit(b >> i & 1 != 0);
            }
        }
        std::mem::take(&mut self.frames)
    }

    fn bit(&mut self, one: bool) {
        if one {
            self.ones = self.ones.saturating_add(1);
            if self.ones == 7 {
                // Abort (or an idle line): no frame until the next flag.
                self.synced = false;
                self.restart();
            }
            return;
        }
        match self.ones {
            5 => {
                // A stuffed zero: the five ones were data.
                for _ in 0..5 {
                    self.data_bit(true);
                }
            }
            6 => {
                self.flag();
            }
            n if n > 6 => {
                // The zero that ends an abort; the next flag resyncs.
            }
            n => {
                for _ in 0..n {
                    self.data_bit(true);
                }
                self.data_bit(false);
            }
        }
        self.ones = 0;
    }

    fn data_bit(&mut self, one: bool) {
        if !self.synced || self.overlong {
            return;
        }
        if one {
            self.acc |= 1 << self.bits;
        }
        self.bits += 1;
        if self.bits == 8 {
            if self.buf.len() == MAX_FRAME {
                self.overlong = true;
            } else {
                self.buf.push(self.acc as u8);
            }
            self.acc = 0;
            self.bits = 0;
        }
    }

    /// A flag ended: its leading zero went in as a data bit, so a frame
    /// that fills whole octets has exactly that one bit over.
    fn flag(&mut self) {
        if self.synced && !self.overlong && self.bits == 1 && self.buf.len() >= 3 {
            let fcs_ok = crc_update(0xFFFF, &self.buf) == GOOD_FCS;
            let mut bytes = std::mem::take(&mut self.buf);
            bytes.truncate(bytes.len() - 2);
            self.frames.push(Frame { bytes, fcs_ok });
        }
        // Anything else between two flags (nothing, a run too short to
        // hold an FCS, or not whole octets) is not a frame.
        self.synced = true;
        self.restart();
    }

    fn restart(&mut self) {
        self.buf.clear();
        self.acc = 0;
        self.bits = 0;
        self.overlong = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fcs_is_iso_13239s() {
        // CRC-16/X-25's check value (the register complemented, as sent).
        assert_eq!(fcs(b"123456789"), 0x906E);
        // A frame followed by its FCS, low octet first, leaves the good
        // remainder.
        let mut f = b"123456789".to_vec();
        f.extend_from_slice(&fcs(b"123456789").to_le_bytes());
        assert_eq!(crc_update(0xFFFF, &f), GOOD_FCS);
    }

    #[test]
    fn an_rcp_frame_is_framed_as_hylafax_frames_it() {
        // HylaFAX (faxd/Class1.c++) ends a block it receives with the raw
        // RCP frame FF 03 86 and its FCS 69 CB.
        assert_eq!(fcs(&[0xFF, 0x03, 0x86]).to_le_bytes(), [0x69, 0xCB]);
        let mut e = Encoder::new();
        e.flags(1);
        e.frame(&[0xFF, 0x03, 0x86]);
        let line = bits(&e.finish());
        // Flag; FF as five ones, a stuffed zero, three ones; 03, whose
        // two ones make five with FF's last three, so another zero
        // follows them; 86; 69; CB; flag.
        let want = [
            "01111110",
            "111110111",
            "110000000",
            "01100001",
            "10010110",
            "11010011",
            "01111110",
        ]
        .concat();
        assert!(line.starts_with(&want), "{line}\n{want}");
    }

    /// The bits of `data`, first on the line first.
    fn bits(data: &[u8]) -> String {
        data.iter()
            .flat_map(|b| (0..8).map(move |i| if b >> i & 1 != 0 { '1' } else { '0' }))
            .collect()
    }

    #[test]
    fn stuffing_and_flags_are_on_the_line_as_hdlc_puts_them() {
        let mut e = Encoder::new();
        e.flags(1);
        e.frame(&[0xFF]);
        let out = e.finish();
        let line = bits(&out);
        // Flag, then 0xFF as five ones, a stuffed zero, three ones.
        assert!(line.starts_with("01111110" /* flag */), "{line}");
        assert_eq!(&line[8..17], "111110111", "{line}");
        // The FCS of [0xFF] (0x00FF ^ preset, through the CRC): checked
        // by decoding below; here only that a flag follows it.
        let fcs = fcs(&[0xFF]).to_le_bytes();
        let mut e2 = Encoder::new();
        e2.octet(fcs[0]);
        e2.octet(fcs[1]);
        let fcs_bits = bits(&e2.finish());
        let fcs_bits = &fcs_bits[..fcs_bits.len() - (fcs_bits.len() % 8)];
        assert!(line[17..].starts_with(&fcs_bits[..16]), "{line}");
    }

    #[test]
    fn a_frame_of_all_ones_never_shows_six_ones_in_a_row() {
        let mut e = Encoder::new();
        e.frame(&[0xFF; 64]);
        let out = e.finish();
        let line = bits(&out);
        // The only runs of six ones are the closing flag's (and the fill).
        let body = &line[..line.find("01111110").unwrap_or(line.len())];
        assert!(!body.contains("111111"), "{line}");
    }

    fn frames_of(seed: u32) -> Vec<Vec<u8>> {
        // Frames with every octet value, and runs of ones and of flags.
        let mut x = seed;
        (0..7u32)
            .map(|n| {
                (0..(3 + n * 41) as usize)
                    .map(|i| {
                        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                        match n {
                            0 => 0x7E,
                            1 => 0xFF,
                            _ => (x >> 16) as u8 ^ i as u8,
                        }
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn frames_come_back_at_any_bit_offset_and_in_any_chunks() {
        let frames = frames_of(7);
        for offset in 0..8 {
            let mut e = Encoder::new();
            // `offset` ones before the preamble: the line's idle before
            // the modem's carrier, which shifts every later octet.
            for _ in 0..offset {
                e.bit(true);
            }
            e.flags(4);
            for f in &frames {
                e.frame(f);
            }
            e.flags(3);
            let stream = e.finish();
            for chunk in [1, 3, 64, stream.len()] {
                let mut d = Decoder::new();
                let mut got = Vec::new();
                for c in stream.chunks(chunk) {
                    got.extend(d.push(c));
                }
                let want: Vec<Frame> = frames
                    .iter()
                    .map(|f| Frame {
                        bytes: f.clone(),
                        fcs_ok: true,
                    })
                    .collect();
                assert_eq!(got, want, "offset {offset}, chunk {chunk}");
            }
        }
    }

    #[test]
    fn a_flipped_bit_gives_a_bad_fcs_or_loses_only_that_frame() {
        let frames = frames_of(11);
        let mut e = Encoder::new();
        e.flags(2);
        for f in &frames {
            e.frame(f);
        }
        let mut stream = e.finish();
        // Flip one bit inside the fourth frame's data.
        let at = 2 + frames[..3].iter().map(|f| f.len() + 3).sum::<usize>() + 20;
        stream[at] ^= 0x10;
        let got = Decoder::new().push(&stream);
        let good: Vec<&Vec<u8>> = got.iter().filter(|f| f.fcs_ok).map(|f| &f.bytes).collect();
        let want: Vec<&Vec<u8>> = frames
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 3)
            .map(|(_, f)| f)
            .collect();
        assert_eq!(good, want);
        assert!(
            got.iter().any(|f| !f.fcs_ok),
            "the damaged frame is reported bad"
        );
    }

    #[test]
    fn an_abort_drops_the_frame_and_the_next_flag_resyncs() {
        let mut e = Encoder::new();
        e.flags(1);
        e.octet(0x12);
        e.octet(0x34);
        for _ in 0..8 {
            e.bit(true); // abort
        }
        e.flags(1);
        e.frame(&[0xFF, 0x03, 0x06, 0x00, 0xAA]);
        let got = Decoder::new().push(&e.finish());
        assert_eq!(
            got,
            vec![Frame {
                bytes: vec![0xFF, 0x03, 0x06, 0x00, 0xAA],
                fcs_ok: true
            }]
        );
    }

    #[test]
    fn noise_before_the_first_flag_and_overlong_runs_give_no_frames() {
        let mut d = Decoder::new();
        assert!(d.push(&[0x12, 0x34, 0x56, 0x00, 0x55]).is_empty());
        let mut e = Encoder::new();
        e.flags(1);
        for _ in 0..MAX_FRAME + 10 {
            e.octet(0x55);
        }
        e.flags(1);
        e.frame(&[1, 2, 3]);
        let got = d.push(&e.finish());
        assert_eq!(
            got,
            vec![Frame {
                bytes: vec![1, 2, 3],
                fcs_ok: true
            }]
        );
    }
}
