//! Issue 3, acceptance 5: memory stays bounded on a 100-page document.
//!
//! A counting global allocator measures the peak heap of this test
//! binary while a document streams through the codec and TIFF-F, one
//! scan line at a time, with no page ever held as a bitmap:
//!
//! - encode: lines -> [`Encoder`] -> [`TiffWriter`] -> a file on disk;
//! - decode: the file -> [`TiffReader`] -> lines, compared with the
//!   lines that were sent (the file itself is read into memory first,
//!   because `TiffReader` works on a byte slice; it is counted apart);
//! - wire: one page as long as the whole document (a roll), through the
//!   wire encoder and the streaming decoder, bytes passed as they come.
//!
//! Peak heap for 100 pages must be that for 10 pages plus a small slack
//! for per-page bookkeeping (the reader's page table), independent of
//! the page count. Run with `--nocapture` for the numbers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};

use faxgate_fax::tiff::{EncodedPage, TiffReader, TiffWriter, TiffWriterOptions};
use faxgate_fax::{
    Coding, DecodeEvent, Decoder, DecoderOptions, Encoder, EncoderOptions, Resolution, width,
};

/// The system allocator, counting bytes in use and their peak.
struct Counting;

static IN_USE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = IN_USE.fetch_add(by, Ordering::SeqCst) + by;
    PEAK.fetch_max(now, Ordering::SeqCst);
}

// SAFETY: every call is forwarded to `System` with the caller's layout;
// the counters do not affect the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator with this layout.
        unsafe { System.dealloc(ptr, layout) };
        IN_USE.fetch_sub(layout.size(), Ordering::SeqCst);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            IN_USE.fetch_sub(layout.size(), Ordering::SeqCst);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f` and returns its result with the peak heap it added above
/// what was in use when it started.
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = IN_USE.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let out = f();
    (out, PEAK.load(Ordering::SeqCst) - base)
}

/// A4 at fine resolution: 1728 x 2287 (297 mm at 7.7 lines/mm).
const W: u32 = width::A4;
const H: u32 = 2287;
const STRIDE: usize = (W as usize).div_ceil(8);

/// Line `y` of page `page`: text-like bands of short black runs, a rule
/// every 97 lines, margins white. Computed from (page, y) alone, so the
/// decoder's output can be checked without keeping any page.
fn line(page: u32, y: u32, out: &mut [u8]) {
    out.fill(0);
    if y.is_multiple_of(97) {
        out[8..STRIDE - 8].fill(0xFF);
        return;
    }
    if y % 40 >= 24 || !(100..H - 100).contains(&y) {
        return;
    }
    let mut s = u64::from(page) * 1_000_003 + u64::from(y / 3) * 7919 + 17;
    for b in (10..STRIDE - 10).step_by(3) {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        if (s >> 60) < 9 {
            out[b] = ((s >> 40) as u8) & 0x3C;
        }
    }
}

/// Encodes `pages` pages streaming into a TIFF-F file; returns its size.
fn write_document(path: &std::path::Path, pages: u32, coding: Coding) -> u64 {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut w = TiffWriter::new(TiffWriterOptions {
        software: Some("faxgate bounded-memory test".into()),
        date_time: None,
        total_pages: u16::try_from(pages).ok(),
    })
    .unwrap();
    let mut row = vec![0u8; STRIDE];
    for p in 0..pages {
        let mut enc = Encoder::new(EncodedPage::encoder_options(coding, W, false)).unwrap();
        let mut data = Vec::new();
        for y in 0..H {
            line(p, y, &mut row);
            enc.encode_line(&row).unwrap();
            if y % 64 == 63 {
                data.extend_from_slice(&enc.take_output());
            }
        }
        data.extend_from_slice(&enc.finish());
        let page = EncodedPage {
            width: W,
            height: H,
            coding,
            fill_bits: false,
            rle: false,
            resolution: Resolution::Fine,
            data,
            damage: None,
        };
        file.write_all(&w.add_page(page).unwrap()).unwrap();
    }
    file.write_all(&w.finish().unwrap()).unwrap();
    file.into_inner().unwrap().sync_all().unwrap();
    std::fs::metadata(path).unwrap().len()
}

/// Decodes every page of `file` line by line and checks each line.
fn read_document(file: &[u8], pages: u32) {
    let r = TiffReader::new(file).unwrap();
    assert_eq!(r.pages().len(), pages as usize);
    let mut want = vec![0u8; STRIDE];
    for p in 0..pages {
        let mut y = 0u32;
        let sum = r
            .decode_page_lines(p as usize, |l| {
                line(p, y, &mut want);
                assert!(l == want.as_slice(), "page {p} line {y} differs");
                y += 1;
            })
            .unwrap();
        assert_eq!((sum.lines, sum.bad_lines), (u64::from(H), 0), "page {p}");
    }
}

/// One page of `pages * H` lines on the wire, encoder output pushed to
/// the decoder as it is produced; returns the coded size.
fn roll(pages: u32, coding: Coding) -> u64 {
    let mut enc = Encoder::new(EncoderOptions::wire(coding, W)).unwrap();
    let mut dec = Decoder::new(DecoderOptions::wire(coding, W)).unwrap();
    let (mut row, mut want) = (vec![0u8; STRIDE], vec![0u8; STRIDE]);
    let (mut sent, mut got, mut bytes) = (0u64, 0u64, 0u64);
    let mut check = |dec: &mut Decoder, got: &mut u64| {
        while let Some(DecodeEvent::Line { pixels, bad }) = dec.next_line().unwrap() {
            assert!(!bad, "roll line {got} is bad");
            let (p, y) = ((*got / u64::from(H)) as u32, (*got % u64::from(H)) as u32);
            line(p, y, &mut want);
            assert!(pixels == want.as_slice(), "roll line {got} differs");
            *got += 1;
        }
    };
    for p in 0..pages {
        for y in 0..H {
            line(p, y, &mut row);
            enc.encode_line(&row).unwrap();
            sent += 1;
            if sent.is_multiple_of(16) {
                let out = enc.take_output();
                bytes += out.len() as u64;
                dec.push(&out).unwrap();
                check(&mut dec, &mut got);
            }
        }
    }
    let out = enc.finish();
    bytes += out.len() as u64;
    dec.push(&out).unwrap();
    dec.finish();
    check(&mut dec, &mut got);
    assert_eq!(got, sent, "roll: lines decoded");
    bytes
}

/// Peak heap of each stage for `pages` pages: (encode, file size,
/// decode, wire roll, roll bytes).
fn measure(dir: &std::path::Path, pages: u32, coding: Coding) -> [usize; 5] {
    let path = dir.join(format!("doc-{pages}-{coding:?}.tif"));
    let (size, enc_peak) = peak_of(|| write_document(&path, pages, coding));
    let file = std::fs::read(&path).unwrap();
    assert_eq!(file.len() as u64, size);
    let ((), dec_peak) = peak_of(|| read_document(&file, pages));
    drop(file);
    std::fs::remove_file(&path).unwrap();
    let (roll_bytes, roll_peak) = peak_of(|| roll(pages, coding));
    [
        enc_peak,
        size as usize,
        dec_peak,
        roll_peak,
        roll_bytes as usize,
    ]
}

/// Per-page bookkeeping the bound allows for: the reader's page table
/// (a `TiffPage` with its strip list and Software string per page).
const PER_PAGE_SLACK: usize = 512;
/// Allocator noise between runs (buffer growth steps).
const SLACK: usize = 64 * 1024;

#[test]
fn peak_heap_for_100_pages_is_that_for_10_pages() {
    let dir = tempfile::tempdir().unwrap();
    let decoded_page = STRIDE * H as usize;
    for coding in [Coding::Mh, Coding::Mr { k: 4 }, Coding::Mmr] {
        let small = measure(dir.path(), 10, coding);
        let large = measure(dir.path(), 100, coding);
        println!(
            "{coding:?}: peak heap 10 pages / 100 pages: encode+TIFF write {} / {} B, \
             TIFF read+decode {} / {} B (file {} / {} B, held by the caller), \
             wire roll {} / {} B ({} / {} B coded); one decoded page is {decoded_page} B",
            small[0],
            large[0],
            small[2],
            large[2],
            small[1],
            large[1],
            small[3],
            large[3],
            small[4],
            large[4]
        );
        let bound = |s: usize| s + SLACK + 90 * PER_PAGE_SLACK;
        for (stage, i) in [("encode+write", 0), ("read+decode", 2), ("wire roll", 3)] {
            assert!(
                large[i] <= bound(small[i]),
                "{coding:?} {stage}: peak heap {} B for 100 pages, {} B for 10",
                large[i],
                small[i]
            );
        }
        // The bound is meaningful: the data itself grew tenfold, and no
        // stage holds anything like a page per page.
        assert!(large[1] > 9 * small[1], "{coding:?}: file sizes");
        assert!(large[4] > 9 * small[4], "{coding:?}: roll sizes");
        for (stage, i) in [("encode+write", 0), ("read+decode", 2), ("wire roll", 3)] {
            assert!(
                large[i] < 2 * decoded_page,
                "{coding:?} {stage}: peak heap {} B is more than two decoded pages",
                large[i]
            );
        }
    }
}
