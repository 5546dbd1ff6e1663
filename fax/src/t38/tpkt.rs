//! TPKT framing (RFC 1006 section 6), which T.38 uses to delimit IFP
//! packets on a TCP connection.

use super::{Asn1Edition, Ifp, T38Error};

/// The TPKT version octet; RFC 1006 defines only 3.
pub const TPKT_VERSION: u8 = 3;

/// Octets in a TPKT header: version, reserved, 16-bit length.
pub const TPKT_HEADER_LEN: usize = 4;

/// The largest frame the 16-bit length can describe, header included;
/// the default maximum of [`TpktDecoder`]. A frame carries at most
/// 65531 IFP octets.
pub const TPKT_MAX_FRAME_LEN: usize = 65535;

/// The smallest valid frame: the header and a one-octet IFP packet (the
/// shortest IFP packet, an indicator, is one octet).
const TPKT_MIN_FRAME_LEN: usize = TPKT_HEADER_LEN + 1;

/// Appends one TPKT frame holding the IFP packet `ifp` to `out`.
///
/// Fails, appending nothing, if `ifp` is empty or longer than 65531
/// octets, since the length field could not describe the frame.
pub fn tpkt_frame(ifp: &[u8], out: &mut Vec<u8>) -> Result<(), T38Error> {
    let total = ifp.len() + TPKT_HEADER_LEN;
    let len = match u16::try_from(total) {
        Ok(len) if !ifp.is_empty() => len,
        _ => {
            return Err(T38Error::TpktPayloadSize {
                len: ifp.len(),
                max: TPKT_MAX_FRAME_LEN - TPKT_HEADER_LEN,
            });
        }
    };
    out.reserve(total);
    out.push(TPKT_VERSION);
    out.push(0);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(ifp);
    Ok(())
}

/// Splits a TCP byte stream into the IFP packets of its TPKT frames.
///
/// Bytes go in with [`push`](TpktDecoder::push) as they arrive, in any
/// pieces; [`next_packet`](TpktDecoder::next_packet) returns each complete
/// frame's payload. A header is checked as soon as its 4 octets are in,
/// so a bad stream is refused before its claimed body is buffered.
///
/// Memory: the buffer holds only bytes not yet returned. Frames are at
/// most [`max_frame_len`](TpktDecoder::with_max_frame_len) octets (65535
/// by default, the most TPKT can express; T.38 peers announce far less in
/// `T38FaxMaxBuffer`), so a caller that drains `next_packet` after each
/// `push` of at most N bytes never holds more than that maximum plus N.
///
/// A bad header leaves the stream out of step with no way back (TPKT has
/// no resynchronisation marker), so the error is sticky: every later call
/// returns it again, and pushed bytes are dropped.
#[derive(Debug, Clone)]
pub struct TpktDecoder {
    buf: Vec<u8>,
    /// Bytes of `buf` already returned.
    start: usize,
    /// Stream offset of `buf[0]`.
    base: u64,
    max_frame_len: usize,
    failed: Option<T38Error>,
}

impl Default for TpktDecoder {
    fn default() -> Self {
        TpktDecoder::new()
    }
}

impl TpktDecoder {
    /// A decoder accepting frames of up to 65535 octets.
    pub fn new() -> TpktDecoder {
        TpktDecoder::with_max_frame_len(TPKT_MAX_FRAME_LEN)
    }

    /// A decoder refusing frames longer than `max` octets, header
    /// included (clamped to 5..=65535), to bound memory per connection.
    pub fn with_max_frame_len(max: usize) -> TpktDecoder {
        TpktDecoder {
            buf: Vec::new(),
            start: 0,
            base: 0,
            max_frame_len: max.clamp(TPKT_MIN_FRAME_LEN, TPKT_MAX_FRAME_LEN),
            failed: None,
        }
    }

    /// Appends bytes read from the connection. Ignored after an error.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_none() {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// Bytes pushed but not yet returned in a packet.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Stream offset of the next unreturned byte (the next frame header),
    /// for log lines.
    pub fn stream_offset(&self) -> u64 {
        self.base + self.start as u64
    }

    /// The payload of the next complete frame, `Ok(None)` if more bytes
    /// are needed, or an error for a bad header (sticky; see the type
    /// docs).
    pub fn next_packet(&mut self) -> Result<Option<Vec<u8>>, T38Error> {
        self.next_frame().map(|f| f.map(|(_, payload)| payload))
    }

    /// Like `next_packet`, also giving the stream offset of the frame.
    fn next_frame(&mut self) -> Result<Option<(u64, Vec<u8>)>, T38Error> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let offset = self.stream_offset();
        let pending = &self.buf[self.start..];
        let Some(&[version, reserved, hi, lo]) = pending.get(..TPKT_HEADER_LEN) else {
            return Ok(None);
        };
        let length = u16::from_be_bytes([hi, lo]);
        let err = if version != TPKT_VERSION {
            Some(T38Error::TpktVersion {
                offset,
                value: version,
            })
        } else if reserved != 0 {
            Some(T38Error::TpktReserved {
                offset,
                value: reserved,
            })
        } else if !(TPKT_MIN_FRAME_LEN..=self.max_frame_len).contains(&usize::from(length)) {
            Some(T38Error::TpktLength {
                offset,
                length,
                min: TPKT_MIN_FRAME_LEN,
                max: self.max_frame_len,
            })
        } else {
            None
        };
        if let Some(e) = err {
            self.failed = Some(e.clone());
            self.buf = Vec::new();
            self.start = 0;
            return Err(e);
        }
        let Some(frame) = pending.get(..usize::from(length)) else {
            return Ok(None);
        };
        let payload = frame[TPKT_HEADER_LEN..].to_vec();
        self.start += usize::from(length);
        self.compact();
        Ok(Some((offset, payload)))
    }

    /// Drops returned bytes once they are at least half the buffer, so
    /// the buffer does not grow with the length of the connection.
    fn compact(&mut self) {
        if self.start == self.buf.len() {
            self.base += self.start as u64;
            self.buf.clear();
            self.start = 0;
        } else if self.start >= 4096 && self.start * 2 >= self.buf.len() {
            self.base += self.start as u64;
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }
}

/// Decoded IFP packets from a TCP byte stream: a [`TpktDecoder`] followed
/// by [`Ifp::decode_as`].
///
/// A frame whose IFP packet does not decode yields
/// [`T38Error::InFrame`] and the stream carries on with the next frame
/// (the framing is still in step); a bad TPKT header is sticky as for
/// [`TpktDecoder`].
#[derive(Debug, Clone, Default)]
pub struct IfpStream {
    tpkt: TpktDecoder,
    edition: Asn1Edition,
}

impl IfpStream {
    /// A stream of IFP packets in the given ASN.1 edition, with frames of
    /// up to 65535 octets.
    pub fn new(edition: Asn1Edition) -> IfpStream {
        IfpStream {
            tpkt: TpktDecoder::new(),
            edition,
        }
    }

    /// The same with a custom frame decoder (for a lower maximum).
    pub fn with_decoder(tpkt: TpktDecoder, edition: Asn1Edition) -> IfpStream {
        IfpStream { tpkt, edition }
    }

    /// Appends bytes read from the connection.
    pub fn push(&mut self, bytes: &[u8]) {
        self.tpkt.push(bytes);
    }

    /// The next decoded packet, `Ok(None)` if more bytes are needed.
    pub fn next_ifp(&mut self) -> Result<Option<Ifp>, T38Error> {
        match self.tpkt.next_frame()? {
            None => Ok(None),
            Some((offset, payload)) => {
                Ifp::decode_as(&payload, self.edition)
                    .map(Some)
                    .map_err(|e| T38Error::InFrame {
                        offset,
                        source: Box::new(e),
                    })
            }
        }
    }

    /// The frame decoder, for [`TpktDecoder::buffered`] and
    /// [`TpktDecoder::stream_offset`].
    pub fn decoder(&self) -> &TpktDecoder {
        &self.tpkt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_and_unframe() {
        let mut out = Vec::new();
        tpkt_frame(&[0x02], &mut out).unwrap();
        tpkt_frame(&[0xC0, 0x01, 0x20], &mut out).unwrap();
        assert_eq!(out, [3, 0, 0, 5, 0x02, 3, 0, 0, 7, 0xC0, 0x01, 0x20]);
        let mut d = TpktDecoder::new();
        d.push(&out);
        assert_eq!(d.next_packet().unwrap(), Some(vec![0x02]));
        assert_eq!(d.stream_offset(), 5);
        assert_eq!(d.next_packet().unwrap(), Some(vec![0xC0, 0x01, 0x20]));
        assert_eq!(d.next_packet().unwrap(), None);
        assert_eq!(d.buffered(), 0);
        assert_eq!(d.stream_offset(), 12);
    }

    #[test]
    fn frame_size_limits() {
        let mut out = Vec::new();
        assert_eq!(
            tpkt_frame(&[], &mut out),
            Err(T38Error::TpktPayloadSize { len: 0, max: 65531 })
        );
        assert!(tpkt_frame(&vec![0; 65532], &mut out).is_err());
        assert!(out.is_empty());
        tpkt_frame(&vec![0; 65531], &mut out).unwrap();
        assert_eq!(&out[..4], &[3, 0, 0xFF, 0xFF]);
    }

    #[test]
    fn compaction_keeps_offsets() {
        let mut frame = Vec::new();
        tpkt_frame(&[0x02; 1000], &mut frame).unwrap();
        let stream: Vec<u8> = frame.iter().copied().cycle().take(1004 * 30).collect();
        let mut d = TpktDecoder::new();
        let mut got = 0u64;
        // Chunks of a frame and a half: the buffer rarely empties, so
        // compaction by draining is exercised, and offsets must survive it.
        for chunk in stream.chunks(1506) {
            d.push(chunk);
            while let Some(p) = d.next_packet().unwrap() {
                assert_eq!(p.len(), 1000);
                got += 1;
                assert_eq!(d.stream_offset(), got * 1004);
            }
            assert!(d.buf.len() <= 2 * 4096 + 1506, "buffer {}", d.buf.len());
        }
        assert_eq!(got, 30);
        assert_eq!(d.buffered(), 0);
    }
}
