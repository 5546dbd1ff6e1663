//! Word-at-a-time bit I/O, most significant bit first (FillOrder 1).

/// Appends codes to a byte vector through a 64-bit accumulator, so that
/// bytes are stored four at a time rather than bit by bit.
#[derive(Debug, Default)]
pub(crate) struct BitWriter {
    out: Vec<u8>,
    /// Pending bits, right-aligned: the low `n` bits are valid.
    acc: u64,
    n: u32,
    /// Bits already moved to `out` and then taken by the caller.
    taken_bits: u64,
}

impl BitWriter {
    /// Appends the low `len` bits of `code` (`len <= 32`).
    #[inline]
    pub(crate) fn put(&mut self, code: u32, len: u32) {
        debug_assert!(len <= 32);
        if len == 0 {
            return;
        }
        self.acc = (self.acc << len) | u64::from(code);
        self.n += len;
        if self.n >= 32 {
            self.n -= 32;
            // Truncation keeps exactly the 32 oldest pending bits.
            self.out
                .extend_from_slice(&((self.acc >> self.n) as u32).to_be_bytes());
        }
    }

    /// Appends `count` zero bits.
    pub(crate) fn zeros(&mut self, mut count: u64) {
        while count > 0 {
            let k = count.min(32) as u32;
            self.put(0, k);
            count -= u64::from(k);
        }
    }

    /// Total bits written since creation.
    #[inline]
    pub(crate) fn bit_pos(&self) -> u64 {
        self.taken_bits + self.out.len() as u64 * 8 + u64::from(self.n)
    }

    /// Pads with zero bits up to the next byte boundary.
    pub(crate) fn align(&mut self) {
        let r = self.n % 8;
        if r != 0 {
            self.put(0, 8 - r);
        }
    }

    /// Takes the complete bytes written so far, leaving partial bits.
    pub(crate) fn take(&mut self) -> Vec<u8> {
        while self.n >= 8 {
            self.n -= 8;
            self.out.push((self.acc >> self.n) as u8);
        }
        let out = std::mem::take(&mut self.out);
        self.taken_bits += out.len() as u64 * 8;
        out
    }
}

/// Reads bits from a byte slice through a 64-bit window.
///
/// Reading past the end yields zero bits; callers compare
/// [`BitReader::remaining`] to tell real data from that padding.
#[derive(Debug)]
pub(crate) struct BitReader<'a> {
    data: &'a [u8],
    /// Next byte to load into `acc`.
    pos: usize,
    /// Bits, left-aligned: the top `n` bits are valid, the rest zero or
    /// the correct following bits.
    acc: u64,
    n: u32,
}

impl<'a> BitReader<'a> {
    /// A reader starting at bit `bit` of `data`.
    pub(crate) fn new(data: &'a [u8], bit: usize) -> Self {
        let mut r = BitReader {
            data,
            pos: bit / 8,
            acc: 0,
            n: 0,
        };
        r.refill();
        r.consume((bit % 8) as u32);
        r
    }

    /// Tops the window up to at least 56 valid bits.
    #[inline]
    fn refill(&mut self) {
        if let Some(bytes) = self.data.get(self.pos..self.pos + 8) {
            let mut w = [0u8; 8];
            w.copy_from_slice(bytes);
            // Branch-free refill: the bits loaded below the new count are
            // the true following bits, so loading them again later is harmless.
            self.acc |= u64::from_be_bytes(w) >> self.n;
            self.pos += ((63 - self.n) >> 3) as usize;
            self.n |= 56;
        } else {
            while self.n <= 56 {
                let b = self.data.get(self.pos).copied().unwrap_or(0);
                self.acc |= u64::from(b) << (56 - self.n);
                self.pos += 1;
                self.n += 8;
            }
        }
    }

    /// The next `k` bits (`1 <= k <= 32`) without consuming them.
    #[inline]
    pub(crate) fn peek(&mut self, k: u32) -> u32 {
        if self.n < 32 {
            self.refill();
        }
        (self.acc >> (64 - k)) as u32
    }

    /// Consumes `k` bits (`k <= 32`, and at most what was peeked).
    #[inline]
    pub(crate) fn consume(&mut self, k: u32) {
        if self.n < k {
            self.refill();
        }
        self.acc = self.acc.checked_shl(k).unwrap_or(0);
        self.n -= k;
    }

    /// The slice being read.
    pub(crate) fn data(&self) -> &'a [u8] {
        self.data
    }

    /// Position of the next bit, counted from the start of the slice.
    #[inline]
    pub(crate) fn bit_pos(&self) -> usize {
        self.pos * 8 - self.n as usize
    }

    /// Real bits left (negative once reading has gone past the end).
    #[inline]
    pub(crate) fn remaining(&self) -> isize {
        (self.data.len() * 8) as isize - self.bit_pos() as isize
    }

    /// Counts zero bits before the next one bit, consuming them (but not
    /// the one bit). Stops after `limit` zeros or at the end of the real
    /// data, whichever comes first.
    pub(crate) fn skip_zeros(&mut self, limit: usize) -> usize {
        let mut count = 0;
        loop {
            let avail = self.remaining();
            if avail <= 0 || count >= limit {
                return count;
            }
            if self.n < 32 {
                self.refill();
            }
            let z = (self.acc.leading_zeros().min(32) as usize)
                .min(avail as usize)
                .min(limit - count);
            if z == 0 {
                return count;
            }
            self.consume(z as u32);
            count += z;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_read() {
        let mut w = BitWriter::default();
        let items: Vec<(u32, u32)> = (1..200u32)
            .map(|i| (i * 7919 % (1 << (i % 13 + 1)), i % 13 + 1))
            .collect();
        for &(c, l) in &items {
            w.put(c, l);
        }
        let total = w.bit_pos();
        w.align();
        let bytes = w.take();
        assert_eq!(bytes.len() as u64, total.div_ceil(8));
        let mut r = BitReader::new(&bytes, 0);
        for &(c, l) in &items {
            assert_eq!(r.peek(l), c);
            r.consume(l);
        }
        assert_eq!(r.bit_pos() as u64, total);
    }

    #[test]
    fn start_mid_byte_and_skip_zeros() {
        let data = [0b1010_0000, 0, 0b0000_0100];
        let mut r = BitReader::new(&data, 3);
        assert_eq!(r.skip_zeros(100), 18);
        assert_eq!(r.peek(1), 1);
        assert_eq!(r.remaining(), 3);
        let mut r = BitReader::new(&data, 3);
        assert_eq!(r.skip_zeros(5), 5);
        let mut r = BitReader::new(&[0u8; 2], 0);
        assert_eq!(r.skip_zeros(100), 16);
        assert_eq!(r.remaining(), 0);
    }
}
