//! The few ALIGNED PER (ITU-T X.691) building blocks an IFP packet needs:
//! bit fields, octet alignment, extensible ENUMERATEDs, normally small
//! numbers and the unconstrained length determinant.
//!
//! Bits are numbered from the most significant bit of the first octet, as
//! X.691 lays out a field-list.

use super::T38Error;

/// Where an enumerated value sits in an extensible ENUMERATED: in the
/// root (before the `...`) or among the extension additions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Code {
    /// Index in the root list.
    Root(u8),
    /// Index among the extension additions (0 = the first after `...`).
    Ext(u8),
}

/// Appends PER bit fields to a byte vector.
///
/// Each new octet is pushed as zero when its first bit is written, so
/// padding is always zero and `align` only moves the bit position.
pub(crate) struct BitWriter<'a> {
    out: &'a mut Vec<u8>,
    /// Bits written since creation.
    bits: usize,
}

impl<'a> BitWriter<'a> {
    pub(crate) fn new(out: &'a mut Vec<u8>) -> Self {
        BitWriter { out, bits: 0 }
    }

    /// Appends the low `n` bits of `value`, most significant first.
    pub(crate) fn put(&mut self, value: u32, n: u32) {
        debug_assert!(n <= 32);
        for i in (0..n).rev() {
            if self.bits.is_multiple_of(8) {
                self.out.push(0);
            }
            if (value >> i) & 1 != 0
                && let Some(last) = self.out.last_mut()
            {
                *last |= 0x80 >> (self.bits % 8);
            }
            self.bits += 1;
        }
    }

    /// Pads with zero bits to the next octet boundary (X.691 "octet-aligned
    /// in the ALIGNED variant").
    pub(crate) fn align(&mut self) {
        self.bits = self.bits.div_ceil(8) * 8;
    }

    /// Appends whole octets, octet-aligned.
    pub(crate) fn put_octets(&mut self, bytes: &[u8]) {
        self.align();
        self.out.extend_from_slice(bytes);
        self.bits += bytes.len() * 8;
    }

    /// An extensible ENUMERATED: the extension bit, then either the root
    /// index as a `root_bits` wide constrained whole number or the
    /// extension index as a normally small non-negative whole number.
    pub(crate) fn put_enum(&mut self, code: Code, root_bits: u32) {
        match code {
            Code::Root(v) => {
                self.put(0, 1);
                self.put(u32::from(v), root_bits);
            }
            Code::Ext(v) => {
                self.put(1, 1);
                self.put_small(v);
            }
        }
    }

    /// A normally small non-negative whole number (X.691 10.6): `0` and
    /// six bits up to 63, else `1` and a semi-constrained whole number
    /// (octet-aligned length octet, then the value in one octet).
    pub(crate) fn put_small(&mut self, v: u8) {
        if v < 64 {
            self.put(0, 1);
            self.put(u32::from(v), 6);
        } else {
            self.put(1, 1);
            self.align();
            self.put(1, 8);
            self.put(u32::from(v), 8);
        }
    }
}

/// Reads PER bit fields from a byte slice.
pub(crate) struct BitReader<'a> {
    buf: &'a [u8],
    /// Bit position from the start of `buf`.
    pos: usize,
}

/// The input ended: `needed` bits were missing at byte `offset`.
#[derive(Debug)]
pub(crate) struct Short {
    offset: usize,
    needed: usize,
    len: usize,
}

impl Short {
    /// The public error, naming the field that was being read.
    pub(crate) fn at(self, field: impl Into<String>) -> T38Error {
        T38Error::Truncated {
            field: field.into(),
            offset: self.offset,
            needed_bits: self.needed,
            len: self.len,
        }
    }
}

impl<'a> BitReader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        BitReader { buf, pos: 0 }
    }

    /// The octet holding the next bit to read.
    pub(crate) fn byte_pos(&self) -> usize {
        self.pos / 8
    }

    /// Bits not yet read.
    pub(crate) fn remaining_bits(&self) -> usize {
        self.buf.len() * 8 - self.pos
    }

    fn short(&self, n: usize) -> Short {
        Short {
            offset: self.pos / 8,
            needed: n - self.remaining_bits(),
            len: self.buf.len(),
        }
    }

    /// Reads an `n`-bit field (`n <= 32`), most significant bit first.
    pub(crate) fn read(&mut self, n: u32) -> Result<u32, Short> {
        debug_assert!(n <= 32);
        if n as usize > self.remaining_bits() {
            return Err(self.short(n as usize));
        }
        let mut v = 0u32;
        for _ in 0..n {
            let byte = self.buf.get(self.pos / 8).copied().unwrap_or(0);
            let bit = (byte >> (7 - self.pos % 8)) & 1;
            v = (v << 1) | u32::from(bit);
            self.pos += 1;
        }
        Ok(v)
    }

    /// Skips to the next octet boundary. Padding bits are not checked:
    /// X.691 has encoders write zeros, and nothing depends on them.
    pub(crate) fn align(&mut self) {
        self.pos = self.pos.div_ceil(8) * 8;
    }

    /// Reads `n` whole octets, octet-aligned.
    pub(crate) fn octets(&mut self, n: usize) -> Result<&'a [u8], Short> {
        self.align();
        let start = self.pos / 8;
        match self.buf.get(start..start + n) {
            Some(s) => {
                self.pos += n * 8;
                Ok(s)
            }
            None => Err(self.short(n * 8)),
        }
    }

    /// The counterpart of [`BitWriter::put_enum`]. `field` names the
    /// ENUMERATED in errors.
    pub(crate) fn read_enum(
        &mut self,
        root_bits: u32,
        field: &'static str,
    ) -> Result<Code, T38Error> {
        let ext = self
            .read(1)
            .map_err(|e| e.at(format!("{field} extension bit")))?;
        if ext == 0 {
            let v = self.read(root_bits).map_err(|e| e.at(field))?;
            // root_bits <= 4 here, so the value fits.
            Ok(Code::Root(v as u8))
        } else {
            self.read_small(field).map(Code::Ext)
        }
    }

    /// The counterpart of [`BitWriter::put_small`]. Values beyond 255 are
    /// valid PER but no T.38 edition comes near them; they are refused
    /// rather than silently folded.
    pub(crate) fn read_small(&mut self, field: &'static str) -> Result<u8, T38Error> {
        let big = self
            .read(1)
            .map_err(|e| e.at(format!("{field} extension index")))?;
        if big == 0 {
            let v = self
                .read(6)
                .map_err(|e| e.at(format!("{field} extension index")))?;
            return Ok(v as u8);
        }
        self.align();
        let offset = self.byte_pos();
        let len = self
            .read(8)
            .map_err(|e| e.at(format!("{field} extension index length")))?;
        if len == 0 || len >= 0x80 {
            return Err(T38Error::BadLength {
                field,
                offset,
                value: len as u8,
            });
        }
        let octets = self
            .octets(len as usize)
            .map_err(|e| e.at(format!("{field} extension index")))?;
        let value = octets.iter().fold(0u64, |acc, &b| {
            acc.saturating_mul(256).saturating_add(u64::from(b))
        });
        u8::try_from(value).map_err(|_| T38Error::ExtensionTooLarge {
            field,
            offset,
            value,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_packs_msb_first_and_pads_with_zeros() {
        let mut out = Vec::new();
        let mut w = BitWriter::new(&mut out);
        w.put(0b101, 3);
        w.align();
        w.put(0xABCD, 16);
        w.put(1, 1);
        w.put_octets(&[0x55]);
        assert_eq!(out, [0b1010_0000, 0xAB, 0xCD, 0x80, 0x55]);
    }

    #[test]
    fn reader_mirrors_writer() {
        let bytes = [0b1010_0000, 0xAB, 0xCD, 0x80, 0x55];
        let mut r = BitReader::new(&bytes);
        assert_eq!(r.read(3).unwrap(), 0b101);
        r.align();
        assert_eq!(r.read(16).unwrap(), 0xABCD);
        assert_eq!(r.read(1).unwrap(), 1);
        assert_eq!(r.octets(1).unwrap(), &[0x55]);
        assert_eq!(r.remaining_bits(), 0);
        let e = r.read(1).unwrap_err();
        assert_eq!((e.offset, e.needed, e.len), (5, 1, 5));
    }

    #[test]
    fn small_numbers_both_forms() {
        for v in [0u8, 1, 5, 63, 64, 200, 255] {
            let mut out = Vec::new();
            let mut w = BitWriter::new(&mut out);
            w.put(0b11, 2);
            w.put_small(v);
            let mut r = BitReader::new(&out);
            assert_eq!(r.read(2).unwrap(), 0b11);
            assert_eq!(r.read_small("test").unwrap(), v, "value {v}");
        }
        // 64 takes the long form: 11 + 1, pad, length 1, value.
        let mut out = Vec::new();
        let mut w = BitWriter::new(&mut out);
        w.put(0b11, 2);
        w.put_small(64);
        assert_eq!(out, [0b1110_0000, 0x01, 0x40]);
    }

    #[test]
    fn small_number_too_large_is_refused() {
        // 1 (long form), pad, length 2, value 0x0100.
        let bytes = [0x80, 0x02, 0x01, 0x00];
        let err = BitReader::new(&bytes).read_small("t30-data").unwrap_err();
        assert_eq!(
            err,
            T38Error::ExtensionTooLarge {
                field: "t30-data",
                offset: 1,
                value: 256
            }
        );
    }
}
