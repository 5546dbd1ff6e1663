//! Issue 3 acceptance checks that look inside the coded data line by
//! line: the minimum scan-line time on the wire, what a damaged line
//! turns into, and TIFF-F at the wide pages and high resolutions as
//! libtiff (`tiffinfo`, `tifftopnm`) sees them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{first_diff, pbms, run_tool, sample_page};
use faxgate_fax::tiff::{TiffCompression, TiffReader, TiffWriterOptions, write_tiff};
use faxgate_fax::{
    Bitmap, Coding, DecodeEvent, Decoder, DecoderOptions, EncoderOptions, PageEndReason,
    Resolution, width,
};

/// The bit index of the final 1 of every EOL (eleven or more zeros, then
/// a one) in `data`, read MSB first. Fill zeros before an EOL merge with
/// its zeros, so the distance between two of these indices is the whole
/// coded line: EOL (and MR tag bit), line data and fill.
fn eol_ones(data: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut zeros = 0usize;
    for i in 0..data.len() * 8 {
        if data[i / 8] & (0x80 >> (i % 8)) == 0 {
            zeros += 1;
        } else {
            if zeros >= 11 {
                out.push(i);
            }
            zeros = 0;
        }
    }
    out
}

fn bit(data: &[u8], i: usize) -> bool {
    data[i / 8] & (0x80 >> (i % 8)) != 0
}

fn set_bit(data: &mut [u8], i: usize, one: bool) {
    if one {
        data[i / 8] |= 0x80 >> (i % 8);
    } else {
        data[i / 8] &= !(0x80 >> (i % 8));
    }
}

/// Every line of a page through the streaming decoder: (pixels, bad),
/// and the page summary.
fn decode_lines(
    data: &[u8],
    opts: DecoderOptions,
) -> (Vec<(Vec<u8>, bool)>, faxgate_fax::PageSummary) {
    let mut dec = Decoder::new(opts).unwrap();
    dec.push(data).unwrap();
    dec.finish();
    let mut lines = Vec::new();
    loop {
        match dec.next_line().unwrap() {
            Some(DecodeEvent::Line { pixels, bad }) => {
                assert!(lines.len() < 100_000, "the decoder does not stop");
                lines.push((pixels.to_vec(), bad));
            }
            Some(DecodeEvent::PageEnd(sum)) => return (lines, sum),
            None => panic!("the decoder wants more bytes after finish()"),
        }
    }
}

/// A page whose lines code to very different lengths: all-white lines
/// (an EOL and two codes, 29 bits in MH), single dots, all-black lines,
/// and dense lines far longer than any minimum used below.
fn mixed_page(w: u32) -> Bitmap {
    let mut b = Bitmap::new(w, 48);
    for y in 0..48u32 {
        match y % 6 {
            0 | 3 => {} // all white
            1 => b.set_pixel((y * 31) % w, y, true),
            2 => (0..w).for_each(|x| b.set_pixel(x, y, true)),
            4 => (0..w).for_each(|x| b.set_pixel(x, y, (x / (1 + y % 5)) % 2 == 0)),
            _ => (0..w).for_each(|x| b.set_pixel(x, y, (x * 7 + y) % 13 < 4)),
        }
    }
    b
}

/// Item 1: with a minimum scan-line time, every coded line on the wire,
/// from its EOL to the next EOL with its fill, takes at least the
/// minimum number of bits; lines that are already longer get no fill,
/// and shorter ones get exactly what they lack (byte alignment may add
/// up to 7 bits). The padded page decodes to the same page.
#[test]
fn every_wire_line_takes_at_least_the_minimum_scan_line_time() {
    let w = width::A4;
    let page = mixed_page(w);
    let h = page.height() as usize;
    // 2400 bit/s x 40 ms, 14400 bit/s x 20 ms, 9600 bit/s x 40 ms: below,
    // between and above the lengths the page's lines code to.
    for min in [96u32, 288, 384] {
        for coding in [Coding::Mh, Coding::Mr { k: 2 }, Coding::Mr { k: 4 }] {
            for align in [false, true] {
                let what = format!("{coding:?} min {min} aligned {align}");
                let mut o = EncoderOptions::wire(coding, w);
                o.byte_align_eol = align;
                let natural = eol_ones(&page.encode(o.clone()).unwrap());
                o.min_line_bits = min;
                let data = page.encode(o).unwrap();
                let eols = eol_ones(&data);
                // One EOL per line, then the six of RTC.
                assert_eq!(eols.len(), h + 6, "{what}: EOLs found");
                assert_eq!(natural.len(), h + 6, "{what}: EOLs found unpadded");
                let mr = matches!(coding, Coding::Mr { .. });
                let (mut short, mut long) = (0, 0);
                for y in 0..h {
                    let len = eols[y + 1] - eols[y];
                    let plain = natural[y + 1] - natural[y];
                    short += usize::from(plain < min as usize);
                    long += usize::from(plain > min as usize);
                    assert!(
                        len >= min as usize,
                        "{what}: line {y} takes {len} bits (EOL to EOL, fill included)"
                    );
                    let want = plain.max(min as usize);
                    if align {
                        assert!(
                            (want..want + 8).contains(&len),
                            "{what}: line {y} takes {len} bits, wanted {want} plus alignment"
                        );
                        assert_eq!((eols[y] + 1) % 8, 0, "{what}: EOL {y} is not byte-aligned");
                    } else {
                        assert_eq!(len, want, "{what}: line {y} ({plain} bits unpadded)");
                    }
                    if let Coding::Mr { k } = coding {
                        // The tag bit after each EOL: 1 before a 1-D line.
                        assert_eq!(
                            bit(&data, eols[y] + 1),
                            y % k as usize == 0,
                            "{what}: tag bit of line {y}"
                        );
                    }
                }
                // RTC follows the last line directly: its EOLs take no fill.
                let eol_len = if mr { 13 } else { 12 };
                for i in h..h + 5 {
                    assert_eq!(eols[i + 1] - eols[i], eol_len, "{what}: RTC EOL {}", i - h);
                }
                // The page has lines that needed fill (white ones) and
                // lines that did not (dense ones).
                assert!(short >= h / 3, "{what}: only {short} short lines");
                assert!(long >= 4, "{what}: only {long} long lines");
                let (lines, sum) = decode_lines(&data, DecoderOptions::wire(coding, w));
                assert_eq!(sum.end, PageEndReason::Rtc, "{what}");
                assert_eq!((sum.lines, sum.bad_lines), (h as u64, 0), "{what}");
                for (y, (l, _)) in lines.iter().enumerate() {
                    assert_eq!(l.as_slice(), page.row(y as u32), "{what}: line {y}");
                }
            }
        }
    }
    // MMR has no EOLs to fill before; asking for a minimum is an error.
    let mut o = EncoderOptions::wire(Coding::Mmr, w);
    o.min_line_bits = 96;
    assert!(page.encode(o).is_err());
}

/// A page whose every line differs from the one before (a block moving
/// right, a dot, a ragged edge), so a repeated line is visible.
fn moving_page(w: u32, h: u32) -> Bitmap {
    let mut b = Bitmap::new(w, h);
    for y in 0..h {
        let x0 = (y * 53) % (w - 300);
        for x in x0..x0 + 40 + (y % 7) * 20 {
            b.set_pixel(x, y, true);
        }
        b.set_pixel((y * 211 + 7) % w, y, true);
        for x in w - 1 - (y % 5)..w {
            b.set_pixel(x, y, true);
        }
    }
    for y in 1..h {
        assert_ne!(b.row(y), b.row(y - 1), "row {y} repeats row {}", y - 1);
    }
    b
}

/// Overwrites the start of line `y`'s data (after its EOL and, for MR,
/// its tag bit) with `000000001`: fewer zeros than an EOL, and no T.4
/// code, so the line cannot decode while every EOL stays intact.
fn damage_line(data: &mut [u8], eols: &[usize], y: usize, mr: bool) {
    let start = eols[y] + 1 + usize::from(mr);
    assert!(
        start + 9 < eols[y + 1] - 11,
        "line {y} is too short to damage"
    );
    for i in 0..9 {
        set_bit(data, start + i, i == 8);
    }
}

/// Item 2: a damaged MH or MR line comes out as a copy of the line before
/// it, flagged bad and counted; decoding resyncs at the next EOL. In MR
/// the 2-D lines after it, up to the next one-dimensional line, were
/// coded against the lost line: they are bad too, copies of the same last
/// good line. Every line after that (MH: the next line; MR: from the next
/// one-dimensional line) decodes to exactly what was sent.
#[test]
fn damaged_lines_repeat_the_previous_line_and_decoding_resyncs() {
    let w = width::A4;
    let (h, page) = (64u32, moving_page(width::A4, 64));
    // `bad`: the lines that must come out bad; all others must be exact.
    let check = |what: &str, lines: &[(Vec<u8>, bool)], bad: &[usize]| {
        assert_eq!(lines.len(), h as usize, "{what}: the page keeps its length");
        for &y in bad {
            // The copy is of the line before, as output (a run of bad
            // lines all repeat the last good one).
            let good = (0..y).rev().find(|g| !bad.contains(g)).unwrap();
            assert!(lines[y].1, "{what}: line {y} is not flagged bad");
            assert!(
                lines[y].0.as_slice() == page.row(good as u32),
                "{what}: line {y} is not a copy of line {good}"
            );
        }
        for (y, (l, flagged)) in lines.iter().enumerate() {
            if bad.contains(&y) {
                continue;
            }
            assert!(!flagged, "{what}: line {y} flagged bad");
            assert!(
                l.as_slice() == page.row(y as u32),
                "{what}: line {y} differs from what was sent"
            );
        }
    };

    // MH: one damaged line, and two in a row.
    let clean = page.encode(EncoderOptions::wire(Coding::Mh, w)).unwrap();
    let eols = eol_ones(&clean);
    for damaged in [vec![20usize], vec![40, 41]] {
        let mut data = clean.clone();
        for &y in &damaged {
            damage_line(&mut data, &eols, y, false);
        }
        let what = format!("MH damage at {damaged:?}");
        let (lines, sum) = decode_lines(&data, DecoderOptions::wire(Coding::Mh, w));
        assert_eq!(sum.end, PageEndReason::Rtc, "{what}");
        assert_eq!(sum.bad_lines, damaged.len() as u64, "{what}: {sum:?}");
        assert_eq!(sum.max_consecutive_bad, damaged.len() as u64, "{what}");
        check(&what, &lines, &damaged);
    }

    // MR, K = 4: lines 0, 4, 8... are one-dimensional. Damage a 2-D line
    // (22) and a 1-D one (40). The 2-D lines after the damaged one, up to
    // the next 1-D line, are coded against the lost line: bad as well.
    // From the next 1-D line on everything must be exact.
    let k = 4usize;
    let coding = Coding::Mr { k: k as u32 };
    let clean = page.encode(EncoderOptions::wire(coding, w)).unwrap();
    let eols = eol_ones(&clean);
    for y in [22usize, 40] {
        let mut data = clean.clone();
        damage_line(&mut data, &eols, y, true);
        let next_1d = (y / k + 1) * k;
        // The tag bits say which lines the encoder coded 1-D.
        for (t, &eol) in eols.iter().enumerate().take(next_1d + 1).skip(y + 1) {
            assert_eq!(bit(&data, eol + 1), t == next_1d, "tag bit of line {t}");
        }
        let bad: Vec<usize> = (y..next_1d).collect();
        let what = format!("MR damage at {y} ({}-D)", if y % k == 0 { 1 } else { 2 });
        let (lines, sum) = decode_lines(&data, DecoderOptions::wire(coding, w));
        assert_eq!(sum.end, PageEndReason::Rtc, "{what}");
        // 22: itself and 23; 40: itself and 41 to 43.
        assert_eq!(sum.bad_lines, bad.len() as u64, "{what}: {sum:?}");
        assert_eq!(sum.max_consecutive_bad, bad.len() as u64, "{what}");
        check(&what, &lines, &bad);
        // The one-shot decoder (its own loop for clean lines) agrees.
        let (bmp, bsum) = Bitmap::decode(&data, DecoderOptions::wire(coding, w)).unwrap();
        assert_eq!(bsum, sum, "{what}: Bitmap::decode");
        for (y, (l, _)) in lines.iter().enumerate() {
            assert!(
                bmp.row(y as u32) == l.as_slice(),
                "{what}: Bitmap::decode line {y}"
            );
        }
    }
}

/// Item 3: TIFF-F at the B4 and A3 widths and at every fax resolution
/// (300x300 and 400x400 included), written by us in MH, MR and MMR:
/// `tiffinfo` reads the tags we mean, `tifftopnm` decodes every page to
/// the identical bitmap, and our reader gets tags and pages back.
#[test]
fn wide_and_high_resolution_tiff_f_interoperates_with_libtiff() {
    let dir = tempfile::tempdir().unwrap();
    for w in [width::B4, width::A3] {
        let pages = [sample_page(w, 90, u64::from(w)), moving_page(w, 70)];
        for res in Resolution::ALL {
            let (xdpi, ydpi) = res.dpi();
            for (coding, name) in [
                (Coding::Mh, "mh"),
                (Coding::Mr { k: 0 }, "mr"),
                (Coding::Mmr, "mmr"),
            ] {
                let what = format!("{w} px {xdpi}x{ydpi} {name}");
                let opts = TiffWriterOptions {
                    software: Some("faxgate acceptance".into()),
                    date_time: Some("2026:11:21 10:00:00".into()),
                    total_pages: None,
                };
                let file = write_tiff(&pages, coding, res, opts).unwrap();
                let path = dir.path().join(format!("{w}-{xdpi}x{ydpi}-{name}.tif"));
                std::fs::write(&path, &file).unwrap();

                // libtiff's view of each directory.
                let out = std::process::Command::new(common::tool("tiffinfo", "libtiff-tools"))
                    .arg(&path)
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{what}: tiffinfo failed");
                assert!(
                    out.stderr.is_empty(),
                    "{what}: tiffinfo warns: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let info = String::from_utf8_lossy(&out.stdout);
                let dirs: Vec<&str> = info.split("TIFF Directory at offset").skip(1).collect();
                assert_eq!(dirs.len(), 2, "{what}: directories:\n{info}");
                for (i, (d, p)) in dirs.iter().zip(&pages).enumerate() {
                    let options = match coding {
                        Coding::Mh => "Group 3 Options: (0 = 0x0)",
                        Coding::Mr { .. } => "Group 3 Options: 2-d encoding (1 = 0x1)",
                        Coding::Mmr => "Group 4 Options: (0 = 0x0)",
                    };
                    let scheme = if coding == Coding::Mmr {
                        "Compression Scheme: CCITT Group 4"
                    } else {
                        "Compression Scheme: CCITT Group 3"
                    };
                    for want in [
                        format!("Image Width: {w} Image Length: {}", p.height()),
                        format!("Resolution: {xdpi}, {ydpi} pixels/inch"),
                        scheme.to_string(),
                        options.to_string(),
                        "Photometric Interpretation: min-is-white".into(),
                        "FillOrder: msb-to-lsb".into(),
                        format!("Page Number: {i}-2"),
                    ] {
                        assert!(
                            d.lines().any(|l| l.trim() == want),
                            "{what} page {i}: tiffinfo lacks {want:?}:\n{d}"
                        );
                    }
                }

                // libtiff decodes every page to the identical bitmap.
                let decoded = pbms(&run_tool("tifftopnm", "netpbm", &[&path]));
                assert_eq!(decoded.len(), 2, "{what}: tifftopnm pages");
                for (i, (got, want)) in decoded.iter().zip(&pages).enumerate() {
                    assert!(got == want, "{what} page {i}: {}", first_diff(got, want));
                }

                // Our reader gets the tags and the pages back.
                let r = TiffReader::new(&file).unwrap();
                assert_eq!(r.pages().len(), 2, "{what}");
                for (i, want) in pages.iter().enumerate() {
                    let p = &r.pages()[i];
                    assert_eq!((p.width, p.height), (w, want.height()), "{what}");
                    assert_eq!(p.resolution, Some(res), "{what}");
                    assert_eq!(
                        (p.x_resolution, p.y_resolution, p.resolution_unit),
                        (Some(f64::from(xdpi)), Some(f64::from(ydpi)), 2),
                        "{what}"
                    );
                    let (compression, t4, t6) = match coding {
                        Coding::Mh => (TiffCompression::Group3, 0, 0),
                        Coding::Mr { .. } => (TiffCompression::Group3, 1, 0),
                        Coding::Mmr => (TiffCompression::Group4, 0, 0),
                    };
                    assert_eq!(
                        (p.compression, p.t4_options, p.t6_options),
                        (compression, t4, t6),
                        "{what}"
                    );
                    assert_eq!(p.page_number, Some((i as u16, 2)), "{what}");
                    let (bmp, sum) = r.decode_page(i).unwrap();
                    assert_eq!(sum.bad_lines, 0, "{what} page {i}");
                    assert!(&bmp == want, "{what} page {i}: {}", first_diff(&bmp, want));
                }
            }
        }
    }
}
