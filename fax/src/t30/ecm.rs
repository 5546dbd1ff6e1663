//! T.4 Annex A partial pages: cutting a coded page into FCD frames and
//! blocks (sender), and putting the blocks back together (receiver).
//!
//! A block (partial page) holds up to 256 frames of 256 octets; every
//! frame is padded to the full size, as spandsp's `get_partial_ecm_page`
//! does ("most receivers expect that"). The padding is zero fill after
//! RTC/EOFB, which decoders ignore. FCD payloads carry the coded bits in
//! HDLC order (first bit in the LSB), so each octet of the crate's
//! MSB-first coding is bit-reversed on the way in and out.

use std::ops::Range;

use super::frame;

/// Octets per FCD frame (DCS bit 28 clear).
pub(super) const FRAME_SIZE: usize = 256;
/// Frames per block: the frame number is one octet.
pub(super) const FRAMES_PER_BLOCK: usize = 256;

/// The sender's view of one page in ECM.
#[derive(Debug)]
pub(super) struct EcmTx {
    /// Every frame's payload, bit-reversed and padded.
    frames: Vec<Vec<u8>>,
    /// The block being sent (0-based).
    block: usize,
    /// PPRs received for the current block since the last CTC.
    pub(super) ppr_count: u32,
    /// CTCs sent for the current block.
    pub(super) ctc_count: u32,
    /// Frames of the current block the receiver has not confirmed yet.
    unconfirmed: Vec<bool>,
    /// Frames newly confirmed by PPRs since the last CTC (spandsp
    /// `ecm_progress`): whether correcting is getting anywhere.
    pub(super) progress: u32,
    /// The frames the last PPR asked for, sent again after CTR.
    pub(super) asked: Vec<usize>,
}

impl EcmTx {
    /// Cuts a coded page (MSB-first, as [`crate::Encoder`] writes it).
    pub(super) fn new(page: &[u8]) -> Self {
        let mut frames: Vec<Vec<u8>> = page
            .chunks(FRAME_SIZE)
            .map(|c| {
                let mut f: Vec<u8> = c.iter().map(|b| b.reverse_bits()).collect();
                f.resize(FRAME_SIZE, 0);
                f
            })
            .collect();
        if frames.is_empty() {
            frames.push(vec![0; FRAME_SIZE]);
        }
        let mut tx = EcmTx {
            frames,
            block: 0,
            ppr_count: 0,
            ctc_count: 0,
            unconfirmed: Vec::new(),
            progress: 0,
            asked: Vec::new(),
        };
        tx.start_block();
        tx
    }

    /// Resets the per-block correction state.
    fn start_block(&mut self) {
        self.ppr_count = 0;
        self.ctc_count = 0;
        self.unconfirmed = vec![true; self.frame_count()];
        self.progress = 0;
        self.asked.clear();
    }

    /// Takes a PPR's list: the frames of this block to send again (those
    /// it names that exist). Every frame it does not name counts as
    /// confirmed, and each one confirmed for the first time counts as
    /// progress (T.30 Annex A: CTC only while correcting gets somewhere).
    pub(super) fn take_ppr(&mut self, asked: &[usize]) -> Vec<usize> {
        let n = self.frame_count();
        let only: Vec<usize> = asked.iter().copied().filter(|&i| i < n).collect();
        for (i, open) in self.unconfirmed.iter_mut().enumerate() {
            let again = only.contains(&i);
            if *open && !again {
                self.progress += 1;
            }
            *open = again;
        }
        self.asked.clone_from(&only);
        only
    }

    /// The current block number (0-based).
    pub(super) fn block(&self) -> usize {
        self.block
    }

    fn blocks(&self) -> usize {
        self.frames.len().div_ceil(FRAMES_PER_BLOCK)
    }

    /// Whether the current block ends the page (its PPS carries the PPM).
    pub(super) fn is_last_block(&self) -> bool {
        self.block + 1 >= self.blocks()
    }

    fn range(&self) -> Range<usize> {
        let start = self.block * FRAMES_PER_BLOCK;
        start..(start + FRAMES_PER_BLOCK).min(self.frames.len())
    }

    /// Frames in the current block.
    pub(super) fn frame_count(&self) -> usize {
        self.range().len()
    }

    /// Moves to the next block.
    pub(super) fn next_block(&mut self) {
        self.block += 1;
        self.start_block();
    }

    /// The high-speed burst for the current block: every frame, or only
    /// those `only` names (a PPR's list), then RCP three times (T.4 A.1).
    pub(super) fn burst(&self, only: Option<&[usize]>) -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = self.frames[self.range()]
            .iter()
            .enumerate()
            .filter(|(i, _)| only.is_none_or(|o| o.contains(i)))
            .map(|(i, data)| frame::fcd_frame(i as u8, data))
            .collect();
        out.extend((0..3).map(|_| frame::rcp_frame()));
        out
    }
}

/// The receiver's view of the page being received in ECM.
#[derive(Debug)]
pub(super) struct EcmRx {
    /// The current block's frames by number, as received.
    frames: Vec<Option<Vec<u8>>>,
    /// Frames in the current block, as the largest PPS count says.
    count: usize,
    /// The page so far (whole blocks, MSB-first again).
    page: Vec<u8>,
    /// (page, block) counters of the last PPS answered with MCF, to spot
    /// a repeat whose MCF was lost.
    pub(super) last_confirmed: Option<(u8, u8)>,
    /// The block counter (mod 256) the next PPS of this page must carry.
    pub(super) block: u8,
}

impl EcmRx {
    pub(super) fn new() -> Self {
        EcmRx {
            frames: vec![None; FRAMES_PER_BLOCK],
            count: 0,
            page: Vec::new(),
            last_confirmed: None,
            block: 0,
        }
    }

    /// Keeps a good FCD frame (a repeat replaces the earlier copy).
    pub(super) fn store(&mut self, number: u8, data: &[u8]) {
        self.frames[usize::from(number)] = Some(data.to_vec());
    }

    /// The frames still missing from a block the PPS says has
    /// `pps_frames` frames. The count only grows: a sender may count just
    /// the frames of a retransmission burst.
    pub(super) fn missing(&mut self, pps_frames: u16) -> Vec<usize> {
        self.count = self
            .count
            .max(usize::from(pps_frames))
            .min(FRAMES_PER_BLOCK);
        (0..self.count)
            .filter(|&i| self.frames[i].is_none())
            .collect()
    }

    /// Appends the complete current block to the page and clears it.
    ///
    /// Returns false, appending nothing, if the page would grow past
    /// `max` octets: a peer that sends block after block (PPS-NULL) and
    /// never ends the page must not grow it without bound.
    #[must_use]
    pub(super) fn commit_block(&mut self, max: usize) -> bool {
        let block: usize = self.frames[..self.count]
            .iter()
            .flatten()
            .map(Vec::len)
            .sum();
        if self.page.len().saturating_add(block) > max {
            return false;
        }
        for slot in &mut self.frames[..self.count] {
            if let Some(d) = slot.take() {
                self.page.extend(d.iter().map(|b| b.reverse_bits()));
            }
        }
        self.drop_block();
        self.block = self.block.wrapping_add(1);
        true
    }

    /// Whether no frame of the current block has arrived.
    pub(super) fn is_empty(&self) -> bool {
        self.frames.iter().all(Option::is_none)
    }

    /// Forgets the current block's frames (the page so far stays).
    pub(super) fn drop_block(&mut self) {
        self.frames.iter_mut().for_each(|s| *s = None);
        self.count = 0;
    }

    /// The whole page (after the last block), leaving the buffer empty;
    /// the next page starts at block 0.
    pub(super) fn take_page(&mut self) -> Vec<u8> {
        self.block = 0;
        std::mem::take(&mut self.page)
    }

    /// Drops everything (a new DCS starts the page again).
    pub(super) fn reset(&mut self) {
        *self = EcmRx::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_and_reassemble() {
        let page: Vec<u8> = (0..(FRAME_SIZE * 300 + 17))
            .map(|i| (i * 7) as u8)
            .collect();
        let mut tx = EcmTx::new(&page);
        let mut rx = EcmRx::new();
        assert_eq!(tx.frame_count(), 256);
        assert!(!tx.is_last_block());
        loop {
            for f in tx.burst(None) {
                if let Ok(frame::EcmFrame::Fcd { number, data }) = frame::parse_ecm_frame(&f) {
                    assert_eq!(data.len(), FRAME_SIZE);
                    rx.store(number, data);
                }
            }
            assert!(rx.missing(tx.frame_count() as u16).is_empty());
            assert!(rx.commit_block(usize::MAX));
            if tx.is_last_block() {
                break;
            }
            tx.next_block();
        }
        assert_eq!(tx.block(), 1);
        let got = rx.take_page();
        assert_eq!(&got[..page.len()], &page[..]);
        assert!(got[page.len()..].iter().all(|&b| b == 0));
    }

    #[test]
    fn payload_is_in_hdlc_bit_order() {
        // The first coded bit (MSB of the encoder's first octet) goes first
        // on the line, i.e. into the LSB of the FCD octet.
        let burst = EcmTx::new(&[0x80, 0x03]).burst(None);
        assert_eq!(&burst[0][..6], &[0xFF, 0x03, 0x06, 0x00, 0x01, 0xC0]);
        assert_eq!(burst.len(), 1 + 3);
        assert_eq!(burst[1], vec![0xFF, 0x03, 0x86]);
    }

    #[test]
    fn partial_resend() {
        let page = vec![0xA5u8; FRAME_SIZE * 4];
        let tx = EcmTx::new(&page);
        let mut rx = EcmRx::new();
        for f in tx.burst(None) {
            if let Ok(frame::EcmFrame::Fcd { number, data }) = frame::parse_ecm_frame(&f)
                && number != 2
            {
                rx.store(number, data);
            }
        }
        assert_eq!(rx.missing(4), vec![2]);
        let again = tx.burst(Some(&[2]));
        assert_eq!(again.len(), 1 + 3);
        // A retransmission PPS may count only its own frames.
        for f in again {
            if let Ok(frame::EcmFrame::Fcd { number, data }) = frame::parse_ecm_frame(&f) {
                rx.store(number, data);
            }
        }
        assert!(rx.missing(1).is_empty());
        assert!(rx.commit_block(usize::MAX));
        assert_eq!(rx.take_page(), page);
    }

    #[test]
    fn ppr_progress_counts_frames_confirmed_for_the_first_time() {
        let mut tx = EcmTx::new(&vec![0x55u8; FRAME_SIZE * 5]);
        assert_eq!(tx.take_ppr(&[1, 3, 300]), vec![1, 3], "no frame 300");
        assert_eq!(tx.progress, 3, "frames 0, 2 and 4");
        assert_eq!(tx.take_ppr(&[1, 3]), vec![1, 3]);
        assert_eq!(tx.progress, 3, "the same frames again: no progress");
        assert_eq!(tx.take_ppr(&[3]), vec![3]);
        assert_eq!(tx.progress, 4);
        assert_eq!(tx.asked, vec![3]);
        tx.progress = 0;
        tx.next_block();
        assert_eq!((tx.progress, tx.ppr_count, tx.ctc_count), (0, 0, 0));
    }

    #[test]
    fn commit_block_stops_at_the_page_limit() {
        let mut rx = EcmRx::new();
        let block = |rx: &mut EcmRx| {
            for n in 0..4u8 {
                rx.store(n, &[0xA5; FRAME_SIZE]);
            }
            assert!(rx.missing(4).is_empty());
        };
        let max = FRAME_SIZE * 4 * 2;
        block(&mut rx);
        assert!(rx.commit_block(max));
        block(&mut rx);
        assert!(rx.commit_block(max), "exactly at the limit is allowed");
        block(&mut rx);
        assert!(!rx.commit_block(max), "one block past the limit");
        assert_eq!(
            rx.take_page().len(),
            max,
            "the refused block was not appended"
        );
    }
}
