//! Damaged data: truncated pages, flipped bits and garbage decode to a
//! page plus a count of bad lines, never a panic.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::sample_page;
use faxgate_fax::tiff::{TiffReader, TiffWriterOptions, write_tiff};
use faxgate_fax::{
    Bitmap, Coding, DecodeEvent, Decoder, DecoderOptions, EncoderOptions, PageEndReason, Resolution,
};
use proptest::prelude::*;

const W: u32 = 1728;

/// Every decoder configuration a page can arrive in.
fn all_decoders(width: u32, rows: Option<u64>) -> Vec<DecoderOptions> {
    let base = |coding, eol, byte_align_rows| DecoderOptions {
        coding,
        width,
        eol,
        byte_align_rows,
        rows,
    };
    vec![
        base(Coding::Mh, true, false),
        base(Coding::Mr { k: 4 }, true, false),
        base(Coding::Mmr, false, false),
        base(Coding::Mh, false, true),
        base(Coding::Mh, false, false),
    ]
}

/// Decodes with a hard cap on the work, so a decoder that loops fails.
fn decode_capped(
    data: &[u8],
    opts: DecoderOptions,
    chunk: usize,
) -> (Vec<Vec<u8>>, faxgate_fax::PageSummary) {
    let mut dec = Decoder::new(opts).unwrap();
    let mut lines = Vec::new();
    let mut chunks = data.chunks(chunk.max(1));
    let mut calls = 0u64;
    loop {
        calls += 1;
        assert!(calls < 10_000_000, "decoder does not make progress");
        match dec.next_line().unwrap() {
            Some(DecodeEvent::Line { pixels, .. }) => lines.push(pixels.to_vec()),
            Some(DecodeEvent::PageEnd(s)) => return (lines, s),
            None => match chunks.next() {
                Some(c) => dec.push(c).unwrap(),
                None => dec.finish(),
            },
        }
    }
}

fn wire(coding: Coding, page: &Bitmap) -> Vec<u8> {
    page.encode(EncoderOptions::wire(coding, page.width()))
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Random bytes never panic any decoder, and a known row count is met.
    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..3000),
                                width in 1u32..3000, rows in proptest::option::of(0u64..300),
                                chunk in 1usize..700) {
        for opts in all_decoders(width, rows) {
            let (lines, sum) = decode_capped(&data, opts, chunk);
            prop_assert_eq!(lines.len() as u64, sum.lines);
            prop_assert!(sum.bad_lines <= sum.lines);
            if let Some(r) = rows {
                prop_assert_eq!(sum.lines, r);
            }
            for l in &lines {
                prop_assert_eq!(l.len(), width.div_ceil(8) as usize);
            }
        }
    }

    /// Random flips in valid data: still no panic, still the right number
    /// of lines when the row count is known.
    #[test]
    fn flipped_bits_never_panic(flips in proptest::collection::vec((any::<usize>(), 0u8..8), 1..20),
                                seed in any::<u64>()) {
        let page = sample_page(300, 60, seed);
        for coding in [Coding::Mh, Coding::Mr { k: 4 }, Coding::Mmr] {
            let mut data = wire(coding, &page);
            for &(at, bit) in &flips {
                let n = data.len();
                data[at % n] ^= 1 << bit;
            }
            let opts = DecoderOptions { rows: Some(60), ..DecoderOptions::wire(coding, 300) };
            let (_, sum) = decode_capped(&data, opts, 64);
            prop_assert_eq!(sum.lines, 60);
            let (_, sum) = decode_capped(&data, DecoderOptions::wire(coding, 300), 1 << 20);
            // Every line costs at least one bit (a flipped EOFB can leave
            // V0 codes that each make a whole line), so this bounds the work.
            prop_assert!(sum.lines <= data.len() as u64 * 8, "{:?} {:?}", coding, sum);
        }
    }

    /// Random bytes never panic the TIFF reader, nor decoding its pages.
    #[test]
    fn random_tiff_never_panics(mut data in proptest::collection::vec(any::<u8>(), 0..600), le in any::<bool>()) {
        if data.len() >= 8 {
            data[..4].copy_from_slice(if le { b"II*\0" } else { b"MM\0*" });
        }
        if let Ok(r) = TiffReader::new(&data) {
            for i in 0..r.pages().len().min(4) {
                if u64::from(r.pages()[i].width) * u64::from(r.pages()[i].height) < 1 << 22 {
                    let _ = r.decode_page(i);
                }
            }
        }
    }
}

/// Mutating real TIFF bytes (header, IFD, strips) never panics.
#[test]
fn mutated_tiff_never_panics() {
    let pages = [sample_page(W, 40, 1), sample_page(W, 40, 2)];
    for coding in [Coding::Mh, Coding::Mr { k: 0 }, Coding::Mmr] {
        let file = write_tiff(
            &pages,
            coding,
            Resolution::Fine,
            TiffWriterOptions::default(),
        )
        .unwrap();
        for i in 0..file.len().min(600) {
            for bit in [0u8, 3, 7] {
                let mut f = file.clone();
                f[i] ^= 1 << bit;
                if let Ok(r) = TiffReader::new(&f) {
                    for p in 0..r.pages().len() {
                        let info = &r.pages()[p];
                        if u64::from(info.width) * u64::from(info.height) < 1 << 24 {
                            let _ = r.decode_page(p);
                        }
                    }
                }
            }
        }
    }
}

/// A flipped bit in MH or MR costs a few lines, not the page: the page
/// keeps its length (resync at the next EOL), the bad lines are counted,
/// and lines away from the damage are intact.
#[test]
fn flipped_bit_is_contained() {
    let page = sample_page(W, 200, 9);
    for coding in [Coding::Mh, Coding::Mr { k: 4 }] {
        let clean = wire(coding, &page);
        let mut damaged = 0;
        for at in (100..clean.len() - 20).step_by(97) {
            let mut data = clean.clone();
            data[at] ^= 0x10;
            let (lines, sum) = decode_capped(&data, DecoderOptions::wire(coding, W), 4096);
            assert_eq!(sum.end, PageEndReason::Rtc, "{coding:?} flip at {at}");
            // A flip may merge two lines (a destroyed EOL), split one (a
            // flip that makes eleven zeros and a one: a false EOL), or go
            // unnoticed; it never costs more than that in line count.
            assert!(
                (199..=201).contains(&sum.lines),
                "{coding:?} flip at {at}: {sum:?}"
            );
            if sum.lines == 200 {
                let wrong = (0..200).filter(|&y| lines[y] != page.row(y as u32)).count() as u64;
                // MR damage spreads until the next 1-D line (K = 4).
                let spread = if coding == Coding::Mh { 2 } else { 5 };
                assert!(
                    wrong <= spread * sum.bad_lines.max(1),
                    "{coding:?} flip at {at}: {wrong} wrong lines"
                );
            }
            damaged += u64::from(sum.bad_lines > 0);
        }
        assert!(damaged > 0, "{coding:?}: no flip was detected at all");
    }
}

/// A page cut short keeps what arrived and counts the cut line as bad.
#[test]
fn truncated_page() {
    let page = sample_page(W, 120, 4);
    for coding in [Coding::Mh, Coding::Mr { k: 2 }, Coding::Mmr] {
        let data = wire(coding, &page);
        let cut = &data[..data.len() / 2];
        let (lines, sum) = decode_capped(cut, DecoderOptions::wire(coding, W), 1000);
        // MH and MR end at the data's end; MMR, cut inside a line with no
        // EOL after it, cannot say what it lost.
        let end = if coding == Coding::Mmr {
            PageEndReason::Undecodable
        } else {
            PageEndReason::EndOfData
        };
        assert_eq!(sum.end, end, "{coding:?}");
        assert!(
            sum.lines > 40 && sum.lines < 80,
            "{coding:?}: {} lines",
            sum.lines
        );
        assert!(sum.bad_lines <= 1, "{coding:?}: {} bad", sum.bad_lines);
        let good = (sum.lines - sum.bad_lines) as usize;
        for (y, line) in lines.iter().enumerate().take(good) {
            assert_eq!(line.as_slice(), page.row(y as u32), "{coding:?} line {y}");
        }
        // With the row count known (TIFF), the page keeps its height.
        let opts = DecoderOptions {
            rows: Some(120),
            ..DecoderOptions::wire(coding, W)
        };
        let (lines, sum) = decode_capped(cut, opts, 1000);
        assert_eq!(lines.len(), 120);
        assert!(sum.bad_lines >= 40, "{coding:?}: {} bad", sum.bad_lines);
    }
}

/// Garbage between lines and before the first EOL is skipped.
#[test]
fn garbage_is_skipped() {
    let page = sample_page(W, 50, 5);
    let mut opts = EncoderOptions::wire(Coding::Mh, W);
    opts.byte_align_eol = true;
    let clean = page.encode(opts).unwrap();
    // Byte-aligned EOLs are xxxx0000 00000001: find the 10th and put
    // garbage (without 11 zeros in a row) in front of it.
    let eols: Vec<usize> = (1..clean.len())
        .filter(|&i| clean[i] == 1 && clean[i - 1] & 0x0F == 0)
        .collect();
    let at = eols[10] - 1;
    let mut data = vec![0xA5, 0xFF, 0x13];
    data.extend_from_slice(&clean[..at]);
    data.extend_from_slice(&[0xDE, 0xAD, 0xBE, 0xEF, 0x55]);
    data.extend_from_slice(&clean[at..]);
    let (lines, sum) = decode_capped(&data, DecoderOptions::wire(Coding::Mh, W), 100);
    assert_eq!(sum.lines, 50);
    assert_eq!(sum.bad_lines, 1);
    assert_eq!(sum.end, PageEndReason::Rtc);
    let wrong: Vec<usize> = (0..50)
        .filter(|&y| lines[y] != page.row(y as u32))
        .collect();
    assert!(wrong.len() <= 1, "{wrong:?}");
    // Pure garbage is an empty page, not an error.
    let (lines, sum) = decode_capped(&[0xFF; 500], DecoderOptions::wire(Coding::Mh, W), 100);
    assert_eq!((lines.len(), sum.lines), (0, 0));
}

/// The decoder's summary drives T.30's MCF/RTN choice.
#[test]
fn summary_threshold() {
    let page = sample_page(W, 100, 6);
    let mut data = wire(Coding::Mh, &page);
    let n = data.len();
    for i in (n / 4..n / 2).step_by(50) {
        data[i] = 0xFF;
    }
    let (_, sum) = decode_capped(&data, DecoderOptions::wire(Coding::Mh, W), 4096);
    assert!(sum.bad_lines >= 5, "{sum:?}");
    assert!(!sum.acceptable(1, 0));
    assert!(sum.acceptable(100, u64::MAX));
}

/// A TIFF whose MMR strip is cut short keeps its height (the rest padded
/// and counted bad) and reports the page as undecodable past that line.
#[test]
fn truncated_tiff_keeps_height() {
    let pages = [sample_page(W, 80, 7)];
    let file = write_tiff(
        &pages,
        Coding::Mmr,
        Resolution::Fine,
        TiffWriterOptions::default(),
    )
    .unwrap();
    let whole = TiffReader::new(&file).unwrap().decode_page(0).unwrap().1;
    assert_eq!(whole.end, PageEndReason::RowCount);
    let cut = &file[..file.len() * 2 / 3];
    let r = TiffReader::new(cut).unwrap();
    let (bmp, sum) = r.decode_page(0).unwrap();
    assert_eq!(bmp.height(), 80);
    assert!(sum.bad_lines > 0);
    assert_eq!(sum.end, PageEndReason::Undecodable, "{sum:?}");
}

/// MMR has no EOLs to resynchronise at: a line that does not decode loses
/// the rest of the page, however long it was. The summary says so
/// (`Undecodable`), and such a page is never acceptable, whatever the
/// thresholds: its lost lines cannot be counted, so a percentage of bad
/// lines would vouch for a page that lost most of its content.
#[test]
fn undecodable_mmr_is_never_acceptable() {
    let page = sample_page(W, 200, 7);
    let clean = wire(Coding::Mmr, &page);
    let (_, sum) = decode_capped(&clean, DecoderOptions::wire(Coding::Mmr, W), 512);
    assert_eq!((sum.lines, sum.end), (200, PageEndReason::Eofb));
    assert!(sum.acceptable(0, 0));

    let mut data = clean.clone();
    let mid = data.len() / 2;
    // 64 zero bits: no 2-D code starts with seven zeros.
    data[mid..mid + 8].fill(0);
    let (lines, sum) = decode_capped(&data, DecoderOptions::wire(Coding::Mmr, W), 512);
    assert_eq!(sum.end, PageEndReason::Undecodable, "{sum:?}");
    assert!(
        sum.lines < 150 && sum.bad_lines == 1,
        "only the lines up to the damage are counted: {sum:?}"
    );
    let good = (sum.lines - 1) as usize;
    assert!(good > 20, "{sum:?}");
    for (y, line) in lines.iter().take(good).enumerate() {
        assert_eq!(
            line[..],
            page.row(y as u32)[..],
            "line {y} before the damage"
        );
    }
    assert!(!sum.acceptable(100, u64::MAX), "{sum:?}");

    // T.30 decodes a page with `Bitmap::decode`: the same verdict.
    let (bmp, fast) = Bitmap::decode(&data, DecoderOptions::wire(Coding::Mmr, W)).unwrap();
    assert_eq!(fast, sum);
    assert_eq!(u64::from(bmp.height()), sum.lines);

    // Data that simply stops (no EOFB) inside a line: the same.
    let cut = &clean[..clean.len() / 2];
    let (_, sum) = decode_capped(cut, DecoderOptions::wire(Coding::Mmr, W), 512);
    assert_eq!(sum.end, PageEndReason::Undecodable, "{sum:?}");
    assert!(!sum.acceptable(100, u64::MAX));

    // MH with EOLs resynchronises at the next one: damage there stays a
    // counted bad line, and the page can be acceptable.
    let mut mh = wire(Coding::Mh, &page);
    let mid = mh.len() / 2;
    mh[mid..mid + 8].fill(0);
    let (_, sum) = decode_capped(&mh, DecoderOptions::wire(Coding::Mh, W), 512);
    assert_eq!(sum.end, PageEndReason::Rtc, "{sum:?}");
    assert!(sum.acceptable(100, u64::MAX));
}

/// A hostile page cannot grow a bitmap without bound: every 1 bit of MMR
/// is a whole white line (V0 against a white line), so 20,000 bytes claim
/// 160,000 lines. Decoding stops at MAX_PAGE_LINES, and such a page is
/// never confirmed.
#[test]
fn a_page_of_endless_lines_stops_at_the_page_limit() {
    let data = vec![0xFFu8; 20_000];
    let (bmp, sum) = Bitmap::decode(&data, DecoderOptions::wire(Coding::Mmr, W)).unwrap();
    assert_eq!(u64::from(bmp.height()), faxgate_fax::MAX_PAGE_LINES);
    assert_eq!(sum.lines, faxgate_fax::MAX_PAGE_LINES);
    assert_eq!(sum.end, PageEndReason::TooLong);
    assert!(!sum.acceptable(100, u64::MAX), "{sum:?}");
    // A TIFF row count past the limit is refused too (not padded).
    let opts = DecoderOptions::tiff(Coding::Mmr, W, 1 << 32);
    let (bmp, sum) = Bitmap::decode(&data[..10], opts).unwrap();
    assert_eq!(u64::from(bmp.height()), faxgate_fax::MAX_PAGE_LINES);
    assert_eq!(sum.end, PageEndReason::TooLong);
}
