//! The file source: PNG, JPEG, TIFF (grey multipage and fax), PBM, with
//! golden checks that a black rectangle lands where scaling puts it.

use std::io::Cursor;

use faxgate_fax::{Bitmap, Coding, Resolution};
use faxgate_scanner::{
    ConvertOptions, Document, FileLoader, Mode, Origin, Paper, ScanError, load_file,
};

use crate::common::{Rect, assert_rects, gray_with_rects};

/// 8.5 x 11 at 100 px/in with a rectangle 1in from the left, 2in from the
/// top, 2in wide and 3in tall.
const W: u32 = 850;
const H: u32 = 1100;
fn rect() -> Rect {
    Rect::new(100.0, 200.0, 300.0, 500.0)
}

fn fine() -> ConvertOptions {
    ConvertOptions {
        paper: Paper::A4,
        resolution: Resolution::Fine,
        ..ConvertOptions::default()
    }
}

/// Without DPI the page fills the 1728-pel line; fine pixels are 196/204
/// as tall as wide.
fn fill_width_rect(r: Rect) -> Rect {
    let s = 1728.0 / f64::from(W);
    r.map(s, s * 196.0 / 204.0, 0.0)
}

async fn load_bytes(
    dir: &tempfile::TempDir,
    name: &str,
    bytes: &[u8],
    opts: &ConvertOptions,
) -> Document {
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    let doc = load_file(&path, opts).await.unwrap();
    assert_eq!(doc.origin, Origin::File(path));
    assert_eq!(doc.name, name);
    assert_eq!(doc.resolution, opts.resolution);
    doc
}

fn encode(img: &image::GrayImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

#[tokio::test]
async fn png_jpeg_tiff_pbm_put_the_rectangle_where_scaling_puts_it() {
    let dir = tempfile::tempdir().unwrap();
    let img = gray_with_rects(W, H, &[rect()]);
    let mut pbm = Bitmap::new(W, H);
    for y in 200..500 {
        for x in 100..300 {
            pbm.set_pixel(x, y, true);
        }
    }
    let cases: Vec<(&str, Vec<u8>, f64)> = vec![
        ("page.png", encode(&img, image::ImageFormat::Png), 3.0),
        // JPEG rings at edges; the threshold absorbs it within a pixel or two.
        ("page.jpg", encode(&img, image::ImageFormat::Jpeg), 4.0),
        ("page.tif", encode(&img, image::ImageFormat::Tiff), 3.0),
        ("page.pbm", faxgate_fax::pbm::write_pbm(&pbm), 3.0),
    ];
    let want_h = (f64::from(H) * 1728.0 / f64::from(W) * 196.0 / 204.0).round() as u32;
    for (name, bytes, tol) in cases {
        for mode in [Mode::Text, Mode::Photo] {
            let opts = ConvertOptions { mode, ..fine() };
            let doc = load_bytes(&dir, name, &bytes, &opts).await;
            assert_eq!(doc.pages.len(), 1, "{name}");
            let page = &doc.pages[0];
            assert_eq!(
                (page.width(), page.height()),
                (1728, want_h),
                "{name} {mode:?}"
            );
            assert_rects(
                page,
                &[fill_width_rect(rect())],
                tol,
                &format!("{name} {mode:?}"),
            );
        }
    }
}

/// Inserts a pHYs chunk (pixels per metre) after IHDR.
fn with_phys(png: &[u8], ppm: u32) -> Vec<u8> {
    fn crc32(data: &[u8]) -> u32 {
        let mut c = 0xFFFF_FFFFu32;
        for &b in data {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }
    let ihdr_end = 8 + 8 + 13 + 4;
    let mut body = b"pHYs".to_vec();
    body.extend_from_slice(&ppm.to_be_bytes());
    body.extend_from_slice(&ppm.to_be_bytes());
    body.push(1);
    let mut out = png[..ihdr_end].to_vec();
    out.extend_from_slice(&9u32.to_be_bytes());
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
    out.extend_from_slice(&png[ihdr_end..]);
    out
}

#[tokio::test]
async fn png_dpi_keeps_the_physical_size_centred() {
    // 800 x 1000 at 100 dpi = 8 x 10 inches: 1632 pels wide at 204 dpi,
    // centred in 1728 (48 pels each side), 1960 lines at 196 dpi.
    let dir = tempfile::tempdir().unwrap();
    let r = Rect::new(100.0, 200.0, 300.0, 500.0);
    let png = encode(&gray_with_rects(800, 1000, &[r]), image::ImageFormat::Png);
    let png = with_phys(&png, 3937); // 3937 px/m = 100.0 dpi
    let doc = load_bytes(&dir, "dpi.png", &png, &fine()).await;
    let page = &doc.pages[0];
    assert_eq!((page.width(), page.height()), (1728, 1960));
    let s = 3937.0 * 0.0254 / 100.0; // 0.99998: pHYs is integral per metre
    assert_rects(page, &[r.map(2.04 / s, 1.96 / s, 48.0)], 3.0, "dpi.png");
    // Columns outside the image are white.
    for y in (0..page.height()).step_by(7) {
        for x in (0..46).chain(1682..1728) {
            assert!(!page.pixel(x, y), "({x},{y}) outside the image");
        }
    }
}

#[tokio::test]
async fn multipage_grey_tiff_stays_one_document_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let r1 = Rect::new(100.0, 200.0, 300.0, 500.0);
    let r2 = Rect::new(500.0, 700.0, 800.0, 1000.0);
    let mut bytes = Cursor::new(Vec::new());
    {
        let mut enc = tiff::encoder::TiffEncoder::new(&mut bytes).unwrap();
        for r in [r1, r2] {
            let img = gray_with_rects(W, H, &[r]);
            enc.write_image::<tiff::encoder::colortype::Gray8>(W, H, img.as_raw())
                .unwrap();
        }
    }
    let doc = load_bytes(&dir, "two.tif", bytes.get_ref(), &fine()).await;
    assert_eq!(doc.pages.len(), 2);
    assert_rects(&doc.pages[0], &[fill_width_rect(r1)], 3.0, "page 1");
    assert_rects(&doc.pages[1], &[fill_width_rect(r2)], 3.0, "page 2");
}

#[tokio::test]
async fn fax_tiff_passes_through_bit_exact_or_is_rescaled() {
    let dir = tempfile::tempdir().unwrap();
    let mut pages = Vec::new();
    for p in 0..3u32 {
        let mut b = Bitmap::new(1728, 300);
        for y in 20 + p * 50..80 + p * 50 {
            for x in 100..400 {
                b.set_pixel(x, y, true);
            }
        }
        pages.push(b);
    }
    let tiff = faxgate_fax::tiff::write_tiff(
        &pages,
        Coding::Mmr,
        Resolution::Fine,
        faxgate_fax::tiff::TiffWriterOptions::default(),
    )
    .unwrap();
    let doc = load_bytes(&dir, "fax.tif", &tiff, &fine()).await;
    assert_eq!(doc.pages, pages, "fine fax TIFF read at fine is unchanged");
    // At standard resolution the pages are halved vertically.
    let std_opts = ConvertOptions {
        resolution: Resolution::Standard,
        ..fine()
    };
    let doc = load_bytes(&dir, "fax.tif", &tiff, &std_opts).await;
    assert_eq!(doc.pages.len(), 3);
    for (i, page) in doc.pages.iter().enumerate() {
        assert_eq!((page.width(), page.height()), (1728, 150));
        let top = 10.0 + 25.0 * i as f64;
        assert_rects(
            page,
            &[Rect::new(100.0, top, 400.0, top + 30.0)],
            1.5,
            "standard",
        );
    }
}

#[tokio::test]
async fn b4_and_a3_use_their_line_widths() {
    let dir = tempfile::tempdir().unwrap();
    let png = encode(&gray_with_rects(W, H, &[rect()]), image::ImageFormat::Png);
    for (paper, width) in [
        (Paper::B4, 2048u32),
        (Paper::A3, 2432),
        (Paper::Letter, 1728),
    ] {
        let opts = ConvertOptions { paper, ..fine() };
        let doc = load_bytes(&dir, "p.png", &png, &opts).await;
        let s = f64::from(width) / f64::from(W);
        assert_eq!(doc.pages[0].width(), width);
        assert_rects(
            &doc.pages[0],
            &[rect().map(s, s * 196.0 / 204.0, 0.0)],
            3.0,
            "paper",
        );
    }
}

#[tokio::test]
async fn unreadable_files_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::write(&path, b"just text").unwrap();
    let err = load_file(&path, &fine()).await.unwrap_err();
    assert!(matches!(err, ScanError::UnknownFormat { .. }), "{err}");
    assert!(err.to_string().contains("notes.txt"), "{err}");

    let missing = dir.path().join("nope.png");
    let err = FileLoader::default().load(&missing).await.unwrap_err();
    assert!(matches!(err, ScanError::Io { .. }), "{err}");
    assert!(err.to_string().contains("nope.png"), "{err}");

    let path = dir.path().join("cut.png");
    let png = encode(&gray_with_rects(W, H, &[rect()]), image::ImageFormat::Png);
    std::fs::write(&path, &png[..png.len() / 2]).unwrap();
    let err = load_file(&path, &fine()).await.unwrap_err();
    assert!(
        matches!(
            err,
            ScanError::Decode {
                page: 1,
                format: "PNG",
                ..
            }
        ),
        "{err}"
    );
}

/// A fax TIFF whose all-white T.6 strip (one bit a line) decodes to far
/// more lines than any fax page: refused before it is decoded, naming the
/// file, the page and the limit. It is exactly the line width at the
/// target resolution, so it would otherwise pass through untouched.
#[tokio::test]
async fn tall_fax_tiff_is_refused_naming_page_and_limit() {
    let dir = tempfile::tempdir().unwrap();
    let ok = Bitmap::new(1728, 100);
    let mut w = faxgate_fax::tiff::TiffWriter::new(Default::default()).unwrap();
    let mut tiff = w
        .add_page(
            faxgate_fax::tiff::EncodedPage::from_bitmap(&ok, Coding::Mmr, Resolution::Fine)
                .unwrap(),
        )
        .unwrap();
    // 25 000 bytes of V0 codes: 200 000 white lines.
    tiff.extend(
        w.add_page(faxgate_fax::tiff::EncodedPage {
            width: 1728,
            height: 200_000,
            coding: Coding::Mmr,
            fill_bits: false,
            rle: false,
            resolution: Resolution::Fine,
            data: vec![0xFF; 25_000],
            damage: None,
        })
        .unwrap(),
    );
    tiff.extend(w.finish().unwrap());
    let path = dir.path().join("roll.tif");
    std::fs::write(&path, &tiff).unwrap();
    let err = load_file(&path, &fine()).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ScanError::Geometry { page: 2, .. }), "{msg}");
    assert!(
        msg.contains("roll.tif")
            && msg.contains("page 2")
            && msg.contains("200000")
            && msg.contains("80000"),
        "{msg}"
    );
}

/// More pages than the loader allows: a fax TIFF states its count up
/// front (refused with the exact count), a grey TIFF is refused at the
/// first page past the limit.
#[tokio::test]
async fn tiffs_with_too_many_pages_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let loader = FileLoader {
        max_pages: 2,
        ..FileLoader::default()
    };
    let pages = vec![Bitmap::new(1728, 50); 3];
    let fax = faxgate_fax::tiff::write_tiff(
        &pages,
        Coding::Mmr,
        Resolution::Fine,
        faxgate_fax::tiff::TiffWriterOptions::default(),
    )
    .unwrap();
    let path = dir.path().join("three.tif");
    std::fs::write(&path, &fax).unwrap();
    let err = loader.load(&path).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            ScanError::TooManyPages {
                pages: 3,
                at_least: false,
                limit: 2,
                ..
            }
        ),
        "{msg}"
    );
    assert!(
        msg.contains("three.tif: 3 pages, more than the 2 allowed"),
        "{msg}"
    );

    let mut bytes = Cursor::new(Vec::new());
    {
        let mut enc = tiff::encoder::TiffEncoder::new(&mut bytes).unwrap();
        for _ in 0..3 {
            let img = gray_with_rects(100, 100, &[Rect::new(10.0, 10.0, 50.0, 50.0)]);
            enc.write_image::<tiff::encoder::colortype::Gray8>(100, 100, img.as_raw())
                .unwrap();
        }
    }
    let path = dir.path().join("grey.tif");
    std::fs::write(&path, bytes.get_ref()).unwrap();
    let err = loader.load(&path).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            ScanError::TooManyPages {
                pages: 3,
                at_least: true,
                limit: 2,
                ..
            }
        ),
        "{msg}"
    );
    assert!(msg.contains("grey.tif: at least 3 pages"), "{msg}");
}

/// A file over the size limit is reported as too large, with its size and
/// the limit, not as an image size problem.
#[tokio::test]
async fn too_large_file_names_its_size_and_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.png");
    let png = encode(&gray_with_rects(W, H, &[rect()]), image::ImageFormat::Png);
    std::fs::write(&path, &png).unwrap();
    let loader = FileLoader {
        max_file_bytes: 100,
        ..FileLoader::default()
    };
    let err = loader.load(&path).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, ScanError::TooLarge { limit: 100, .. }),
        "{msg}"
    );
    assert!(
        msg.contains("big.png")
            && msg.contains("too large")
            && msg.contains(&png.len().to_string())
            && msg.contains("100"),
        "{msg}"
    );
}

/// A FIFO or a device is refused as not a regular file, promptly: it is
/// never opened (opening a FIFO waits for a writer; /dev/zero never ends).
#[tokio::test]
async fn fifos_and_devices_are_refused_without_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe.png");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success(), "mkfifo failed");
    let result = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        FileLoader::default().load(&fifo),
    )
    .await;
    // Release a reader stuck opening the FIFO (O_RDWR does not block on
    // Linux), so that a failure here does not hang the test runtime.
    drop(
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&fifo),
    );
    let err = result
        .expect("loading a FIFO hung")
        .expect_err("a FIFO is not an image");
    let msg = err.to_string();
    assert!(matches!(err, ScanError::Io { .. }), "{msg}");
    assert!(
        msg.contains("pipe.png") && msg.contains("not a regular file"),
        "{msg}"
    );

    let err = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        FileLoader::default().load(std::path::Path::new("/dev/zero")),
    )
    .await
    .expect("loading /dev/zero hung")
    .unwrap_err();
    assert!(err.to_string().contains("not a regular file"), "{err}");
}
