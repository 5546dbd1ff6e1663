//! faxgate-fax: the sans-io fax codecs.
//!
//! This crate turns bilevel pages into fax data and back. It does no I/O:
//! bytes in, lines and bytes out. The T.30 state machine and the T.38
//! IFP/TPKT codec (issue #4) will live here too.
//!
//! # Layout
//!
//! - [`Encoder`] / [`Decoder`]: streaming T.4 one-dimensional (MH), T.4
//!   two-dimensional (MR) and T.6 (MMR) coding, one scan line at a time in
//!   bounded memory, so a page of any length (a roll) never needs a full
//!   copy. [`EncoderOptions`] and [`DecoderOptions`] choose the framing:
//!   EOLs, byte-aligned EOLs, RTC/EOFB, minimum scan-line fill.
//! - Damage: the decoder replaces an undecodable line by the previous one,
//!   resyncs at the next EOL and counts bad lines in a [`PageSummary`],
//!   which T.30 uses to choose between MCF and RTN. In MR the 2-D lines
//!   coded against a bad line, up to the next 1-D line, are bad too.
//! - [`tiff`]: TIFF-F (RFC 3949 profiles S and F) reading and writing,
//!   multipage, both fill orders and any strip layout on reading.
//! - [`pbm`]: PBM import and export for tests and tools.
//! - [`Bitmap`]: a whole page in memory, with one-shot encode and decode.
//! - [`t30`]: the T.30 fax procedure (DIS/DCS, pages, ECM, timers), sans-io.
//! - [`t38`]: T.38 IFP packets (ASN.1 aligned PER) and TPKT framing.
//!
//! Scan lines are packed MSB first with 1 = black (the PBM convention).
//!
//! # Internals
//!
//! `tables` holds the T.4 code tables and the lookup tables built from
//! them at compile time, `bits` the 64-bit-window bit reader and writer,
//! and `runs` the conversion between packed lines and changing-element
//! lists, the form both coders work on, with the b1 bookkeeping of 2-D
//! coding. The hot loops keep their state in locals (the writer lends a
//! `BitSink`, the decoder copies its reader), avoid data-dependent
//! branches where the CPU would often guess wrong, and allocate nothing
//! per line. [`Bitmap::decode`] decodes the common lines in a loop of
//! their own, drawing them straight into the bitmap; every other line
//! takes the streaming decoder's path.

#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod bitmap;
mod bits;
mod decoder;
mod encoder;
mod error;
pub mod pbm;
mod runs;
pub mod t30;
pub mod t38;
mod tables;
pub mod tiff;

pub use bitmap::Bitmap;
pub use decoder::{DecodeEvent, Decoder, DecoderOptions, PageEndReason, PageSummary};
pub use encoder::{Encoder, EncoderOptions};
pub use error::FaxError;

/// The widest line the codecs accept. T.4 pages are at most 4864 pixels
/// wide (A3 at 400 dpi); the margin allows odd scanner output.
pub const MAX_WIDTH: u32 = 1 << 16;

/// The most lines a page kept in memory may have: 5 m of paper at 400
/// lines per inch. [`Bitmap::decode`] (which the T.30 receiver uses) stops
/// there ([`PageEndReason::TooLong`], never confirmed with MCF), and a TIFF
/// page claiming more is refused, so a hostile page cannot grow a bitmap
/// without bound: every MMR bit can be a whole line.
pub const MAX_PAGE_LINES: u64 = 80_000;

/// The coding scheme of a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Coding {
    /// T.4 one-dimensional: modified Huffman.
    Mh,
    /// T.4 two-dimensional: modified READ. Every `k`-th line is coded
    /// one-dimensionally (T.4 uses 2 at standard and 4 at fine resolution).
    Mr {
        /// The K parameter (at least 1).
        k: u32,
    },
    /// T.6: modified modified READ, every line two-dimensional.
    Mmr,
}

/// Standard fax page widths in pixels (T.4 at 8 pels/mm).
pub mod width {
    /// ISO A4 (and Letter) at 204 dpi horizontal.
    pub const A4: u32 = 1728;
    /// ISO B4.
    pub const B4: u32 = 2048;
    /// ISO A3.
    pub const A3: u32 = 2432;
}

/// The resolutions fax machines negotiate (T.30 DIS/DCS), in dots per inch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Resolution {
    /// 204x98: standard.
    Standard,
    /// 204x196: fine.
    Fine,
    /// 204x391: superfine.
    SuperFine,
    /// 300x300.
    R300,
    /// 400x400 (ultrafine).
    R400,
}

impl Resolution {
    /// All resolutions, coarsest first.
    pub const ALL: [Resolution; 5] = [
        Resolution::Standard,
        Resolution::Fine,
        Resolution::SuperFine,
        Resolution::R300,
        Resolution::R400,
    ];

    /// (horizontal, vertical) dots per inch, as written to TIFF.
    pub fn dpi(self) -> (u32, u32) {
        match self {
            Resolution::Standard => (204, 98),
            Resolution::Fine => (204, 196),
            Resolution::SuperFine => (204, 391),
            Resolution::R300 => (300, 300),
            Resolution::R400 => (400, 400),
        }
    }

    /// The K that T.4 recommends for MR at this vertical resolution.
    pub fn mr_k(self) -> u32 {
        match self {
            Resolution::Standard => 2,
            _ => 4,
        }
    }

    /// The resolution nearest to the given dots per inch, if any is
    /// within 10% (TIFF writers round 7.7 lines/mm in different ways).
    pub fn from_dpi(x: f64, y: f64) -> Option<Resolution> {
        let near = |a: f64, b: u32| (a - f64::from(b)).abs() <= f64::from(b) * 0.1;
        Resolution::ALL.into_iter().find(|r| {
            let (rx, ry) = r.dpi();
            near(x, rx) && near(y, ry)
        })
    }
}
