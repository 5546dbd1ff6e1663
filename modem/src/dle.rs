//! The DLE framing of Class 1 data (ITU-T T.31 section 8.3.2): a pure
//! codec, no I/O.
//!
//! Between the DTE (faxgate) and the modem, data for `+FTM`/`+FTH` and
//! from `+FRM`/`+FRH` is transparent except for DLE (0x10): a DLE in the
//! data goes as DLE DLE, and DLE ETX ends the stream. spandsp's T.31 also
//! sends DLE SUB for two DLEs in a row, which is decoded here too.
//!
//! Octets go on the line least significant bit first. HDLC frames hold
//! T.30 octet values, which are in that order already; non-ECM image data
//! from the fax crate has its first bit in the most significant bit, so it
//! is bit-reversed with [`reverse_bits`] on the way to and from the modem.

/// Data link escape.
pub const DLE: u8 = 0x10;
/// End of text: after DLE, the end of a data stream.
pub const ETX: u8 = 0x03;
/// Substitute: after DLE, two DLEs (T.31 section 8.3.2.2, spandsp).
pub const SUB: u8 = 0x1a;
/// Transmit on: the modem may take more data (software flow control).
pub const XON: u8 = 0x11;
/// Transmit off: the modem's buffer is full; stop until XON.
pub const XOFF: u8 = 0x13;

/// Appends `data` to `out` with every DLE doubled.
pub fn stuff(data: &[u8], out: &mut Vec<u8>) {
    out.reserve(data.len() + data.len() / 64 + 2);
    for &b in data {
        out.push(b);
        if b == DLE {
            out.push(DLE);
        }
    }
}

/// Appends the end of a data stream (DLE ETX).
pub fn end(out: &mut Vec<u8>) {
    out.extend_from_slice(&[DLE, ETX]);
}

/// `data` with the bit order of every octet reversed (MSB-first page data
/// to the modem's LSB-first line order, and back).
pub fn reverse_bits(data: &[u8]) -> Vec<u8> {
    data.iter().map(|b| b.reverse_bits()).collect()
}

/// Decodes a DLE-framed stream from the modem, in any chunking.
#[derive(Debug, Default)]
pub struct Unstuffer {
    /// The last chunk ended with a lone DLE.
    pending_dle: bool,
    /// DLE ETX was seen: the stream has ended.
    ended: bool,
}

impl Unstuffer {
    /// A decoder at the start of a stream.
    pub fn new() -> Self {
        Unstuffer::default()
    }

    /// Decodes `input` into `out` up to the end of the stream. Returns how
    /// many bytes of `input` were used: all of them, unless the stream
    /// ended (DLE ETX) inside `input`, in which case what follows DLE ETX
    /// (the modem's result code) is left to the caller.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> usize {
        let mut i = 0;
        while i < input.len() && !self.ended {
            let b = input[i];
            i += 1;
            if self.pending_dle {
                self.pending_dle = false;
                match b {
                    DLE => out.push(DLE),
                    ETX => self.ended = true,
                    SUB => out.extend_from_slice(&[DLE, DLE]),
                    // Other DLE pairs are commands or shielded codes the
                    // data does not contain (T.31 Table 5); dropped.
                    _ => {}
                }
            } else if b == DLE {
                self.pending_dle = true;
            } else {
                out.push(b);
            }
        }
        i
    }

    /// Whether DLE ETX has been seen.
    pub fn ended(&self) -> bool {
        self.ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stuffing_doubles_dle_only() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"", b""),
            (&[1, 2, 3], &[1, 2, 3]),
            (&[DLE], &[DLE, DLE]),
            (&[DLE, ETX], &[DLE, DLE, ETX]),
            (&[0, DLE, DLE, 0], &[0, DLE, DLE, DLE, DLE, 0]),
        ];
        for (input, want) in cases {
            let mut out = Vec::new();
            stuff(input, &mut out);
            assert_eq!(&out, want, "stuff({input:?})");
        }
    }

    #[test]
    fn unstuffing_inverts_stuffing_in_any_chunking() {
        let data: Vec<u8> = (0..=255u8).chain([DLE, DLE, ETX, SUB, DLE]).collect();
        let mut wire = Vec::new();
        stuff(&data, &mut wire);
        end(&mut wire);
        wire.extend_from_slice(b"\r\nOK\r\n");
        for chunk in 1..=wire.len() {
            let mut u = Unstuffer::new();
            let mut out = Vec::new();
            let mut used_total = 0;
            for piece in wire.chunks(chunk) {
                let used = u.feed(piece, &mut out);
                used_total += used;
                if u.ended() {
                    break;
                }
                assert_eq!(used, piece.len());
            }
            assert!(u.ended(), "chunk {chunk}: no end seen");
            assert_eq!(out, data, "chunk {chunk}");
            assert_eq!(&wire[used_total..], b"\r\nOK\r\n", "chunk {chunk}");
        }
    }

    #[test]
    fn dle_sub_is_two_dles_and_unknown_pairs_are_dropped() {
        let mut u = Unstuffer::new();
        let mut out = Vec::new();
        let used = u.feed(&[7, DLE, SUB, 8, DLE, b'!', 9, DLE, ETX, 1], &mut out);
        assert_eq!(out, [7, DLE, DLE, 8, 9]);
        assert_eq!(used, 9);
        assert!(u.ended());
    }

    #[test]
    fn reversing_bits_is_an_involution() {
        assert_eq!(
            reverse_bits(&[0x01, 0x80, 0xF0, 0x00]),
            [0x80, 0x01, 0x0F, 0x00]
        );
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(reverse_bits(&reverse_bits(&all)), all);
    }
}
