//! Word-at-a-time bit I/O, most significant bit first (FillOrder 1).

/// Appends codes to a byte vector through a 64-bit accumulator.
///
/// Hot loops write through a [`BitSink`] from [`BitWriter::sink`], whose
/// state is a local the compiler keeps in registers. Storing is free of
/// data-dependent branches: every flush stores the whole accumulator into
/// scratch space past the output and advances by the complete bytes, so
/// the CPU never has to guess whether a word is full.
#[derive(Debug, Default)]
pub(crate) struct BitWriter {
    /// `out[..pos]` is the output so far; the rest is scratch space.
    out: Vec<u8>,
    pos: usize,
    /// Pending bits, left-aligned: the top `n` bits are valid and the
    /// rest are zero.
    acc: u64,
    /// Pending bit count, below 8 between codes.
    n: u32,
    /// Bits already moved to `out` and then taken by the caller.
    taken_bits: u64,
}

/// A [`BitWriter`] lent to a hot loop (see [`BitWriter::sink`]).
#[derive(Debug)]
pub(crate) struct BitSink<'a> {
    out: &'a mut Vec<u8>,
    pos: usize,
    acc: u64,
    n: u32,
}

impl BitSink<'_> {
    /// Appends the low `len` bits of `code` (`len <= 32`, and `code` has
    /// no bits set at or above `len`) without storing anything: the codes
    /// put between two [`BitSink::flush`]es may add up to 56 bits.
    #[inline(always)]
    pub(crate) fn put_pending(&mut self, code: u32, len: u32) {
        debug_assert!(len <= 32 && u64::from(code) >> len == 0 && self.n + len <= 63);
        // `64 - n - len` is in 1..=64; 64 only for an empty code (`code`
        // 0, `n` 0), where wrapping the shift to 0 still gives 0.
        self.acc |= u64::from(code).wrapping_shl(64 - self.n - len);
        self.n += len;
    }

    /// Stores the complete bytes pending, keeping the rest (under 8 bits).
    #[inline(always)]
    pub(crate) fn flush(&mut self) {
        let word = self.acc.to_be_bytes();
        match self.out.get_mut(self.pos..self.pos + 8) {
            Some(dst) => dst.copy_from_slice(&word),
            None => grow_and_store(self.out, self.pos, word),
        }
        // `n <= 63`, so at most 7 bytes and a shift of at most 56.
        let bytes = self.n / 8;
        self.pos += bytes as usize;
        self.acc <<= bytes * 8;
        self.n %= 8;
    }

    /// Appends a code (as [`BitSink::put_pending`]) and flushes.
    #[inline(always)]
    pub(crate) fn put(&mut self, code: u32, len: u32) {
        self.put_pending(code, len);
        self.flush();
    }
}

/// [`BitSink::flush`] when the scratch space has run out: makes more
/// (doubling, so this is rare), then stores.
#[cold]
fn grow_and_store(out: &mut Vec<u8>, pos: usize, word: [u8; 8]) {
    let len = (pos + 8).max(out.len() * 2).max(256);
    out.resize(len, 0);
    out[pos..pos + 8].copy_from_slice(&word);
}

impl BitWriter {
    /// Runs `f` with a [`BitSink`] on this writer. The sink holds the
    /// writer's state by value, so in `f`'s loops it stays in registers
    /// instead of being loaded and stored around every code.
    #[inline(always)]
    pub(crate) fn sink<R>(&mut self, f: impl FnOnce(&mut BitSink<'_>) -> R) -> R {
        let mut s = BitSink {
            out: &mut self.out,
            pos: self.pos,
            acc: self.acc,
            n: self.n,
        };
        let r = f(&mut s);
        let (pos, acc, n) = (s.pos, s.acc, s.n);
        self.pos = pos;
        self.acc = acc;
        self.n = n;
        r
    }

    /// Appends the low `len` bits of `code` (see [`BitSink::put_pending`]).
    #[inline]
    pub(crate) fn put(&mut self, code: u32, len: u32) {
        self.sink(|s| s.put(code, len));
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
        self.taken_bits + self.pos as u64 * 8 + u64::from(self.n)
    }

    /// Pads with zero bits up to the next byte boundary.
    pub(crate) fn align(&mut self) {
        if self.n != 0 {
            self.put(0, 8 - self.n);
        }
    }

    /// Takes the complete bytes written so far, leaving partial bits.
    pub(crate) fn take(&mut self) -> Vec<u8> {
        self.out.truncate(self.pos);
        let out = std::mem::take(&mut self.out);
        self.taken_bits += self.pos as u64 * 8;
        self.pos = 0;
        out
    }
}

/// Reads bits from a byte slice through a 64-bit window.
///
/// Reading past the end yields zero bits; callers compare
/// [`BitReader::remaining`] to tell real data from that padding.
#[derive(Clone, Copy, Debug)]
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
        r.fill();
        r.consume((bit % 8) as u32);
        r
    }

    /// Tops the window up to at least 56 valid bits. Hot loops top up once
    /// per mode or per pair of runs ([`BitReader::ensure32`]) and then
    /// read several codes with [`BitReader::show`], without a test each.
    #[inline(always)]
    pub(crate) fn fill(&mut self) {
        if let Some(bytes) = self.data.get(self.pos..self.pos + 8) {
            let mut w = [0u8; 8];
            w.copy_from_slice(bytes);
            // Branch-free refill: the bits loaded below the new count are
            // the true following bits, so loading them again later is harmless.
            self.acc |= u64::from_be_bytes(w) >> self.n;
            self.pos += ((63 - self.n) >> 3) as usize;
            self.n |= 56;
        } else {
            (self.acc, self.pos, self.n) = refill_tail(self.data, self.acc, self.pos, self.n);
        }
    }

    /// Tops the window up if it holds fewer than 32 bits, so that at
    /// least 32 can be read with [`BitReader::show`].
    #[inline(always)]
    pub(crate) fn ensure32(&mut self) {
        if self.n < 32 {
            self.fill();
        }
    }

    /// The next `k` bits (`1 <= k <= 32`) without consuming them.
    #[inline(always)]
    pub(crate) fn peek(&mut self, k: u32) -> u32 {
        self.ensure32();
        (self.acc >> (64 - k)) as u32
    }

    /// The next `k` bits (`1 <= k <= 32`) without consuming them or
    /// topping up: a [`BitReader::fill`] must have left at least `k`.
    #[inline(always)]
    pub(crate) fn show(&self, k: u32) -> u32 {
        debug_assert!(k <= self.n);
        (self.acc >> (64 - k)) as u32
    }

    /// Zero bits at the start of the window; meaningful up to the number
    /// of bits a top-up guaranteed (past them, they may be padding).
    #[inline(always)]
    pub(crate) fn leading_zeros(&self) -> u32 {
        self.acc.leading_zeros()
    }

    /// Consumes `k` bits (`k <= 32`).
    #[inline]
    pub(crate) fn consume(&mut self, k: u32) {
        if self.n < k {
            self.fill();
        }
        self.skip(k);
    }

    /// Consumes `k` bits that are in the window (a [`BitReader::peek`] or
    /// [`BitReader::show`] of at least `k` bits has shown them).
    #[inline(always)]
    pub(crate) fn skip(&mut self, k: u32) {
        debug_assert!(k <= self.n);
        // `k <= 32`, so the shift is in range.
        self.acc <<= k;
        self.n -= k;
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
                self.fill();
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

/// [`BitReader::fill`] within 8 bytes of the end, byte by byte with zeros
/// past the end. It takes and returns the state by value, so that a hot
/// loop's reader does not have to live in memory for its sake.
#[cold]
fn refill_tail(data: &[u8], mut acc: u64, mut pos: usize, mut n: u32) -> (u64, usize, u32) {
    while n <= 56 {
        let b = data.get(pos).copied().unwrap_or(0);
        acc |= u64::from(b) << (56 - n);
        pos += 1;
        n += 8;
    }
    (acc, pos, n)
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

    /// Taking the output at any point, with bits still pending, and
    /// codes of every length, pending or flushed, give the same bytes.
    #[test]
    fn take_mid_stream_and_pending_codes() {
        // Lengths 0 to 28, so that two codes fit between flushes.
        let items: Vec<(u32, u32)> = (0..3000u64)
            .map(|i| {
                let len = (i % 29) as u32;
                let v = (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 17) & ((1 << len) - 1);
                (v as u32, len)
            })
            .collect();
        let mut one = BitWriter::default();
        for &(c, l) in &items {
            one.put(c, l);
        }
        one.align();
        let whole = one.take();
        for every in [1usize, 3, 7, 64] {
            let mut w = BitWriter::default();
            let mut out = Vec::new();
            for (i, pair) in items.chunks(2).enumerate() {
                w.sink(|s| {
                    for &(c, l) in pair {
                        s.put_pending(c, l);
                    }
                    s.flush();
                });
                if i % every == 0 {
                    out.extend_from_slice(&w.take());
                }
            }
            w.align();
            out.extend_from_slice(&w.take());
            assert_eq!(out, whole, "taking every {every}");
        }
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
