//! PDF through poppler's pdftoppm: a hand-written two-page PDF (no PDF
//! tool needed to make it) with one black rectangle per page.

use std::path::PathBuf;

use faxgate_fax::Resolution;
use faxgate_scanner::{ConvertOptions, FileLoader, Paper, ScanError, load_file};

use crate::common::{Rect, assert_rects, require_tool};

/// A minimal PDF: Letter pages (612 x 792 pt), each with the given
/// content stream.
pub fn make_pdf(pages: &[String]) -> Vec<u8> {
    make_pdf_sized(pages, 612, 792)
}

/// A minimal PDF whose pages are `w` x `h` points.
pub fn make_pdf_sized(pages: &[String], w: u32, h: u32) -> Vec<u8> {
    let n = pages.len();
    let kids: Vec<String> = (0..n).map(|i| format!("{} 0 R", 3 + 2 * i)).collect();
    let mut objs = vec![
        "<< /Type /Catalog /Pages 2 0 R >>".to_string(),
        format!("<< /Type /Pages /Kids [{}] /Count {n} >>", kids.join(" ")),
    ];
    for (i, content) in pages.iter().enumerate() {
        objs.push(format!(
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {w} {h}] /Contents {} 0 R >>",
            4 + 2 * i
        ));
        objs.push(format!(
            "<< /Length {} >>\nstream\n{content}\nendstream",
            content.len()
        ));
    }
    let mut out = b"%PDF-1.4\n".to_vec();
    let mut offsets = Vec::new();
    for (i, o) in objs.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n{o}\nendobj\n", i + 1).as_bytes());
    }
    let xref = out.len();
    out.extend_from_slice(format!("xref\n0 {}\n0000000000 65535 f \n", objs.len() + 1).as_bytes());
    for off in offsets {
        out.extend_from_slice(format!("{off:010} 00000 n \n").as_bytes());
    }
    out.extend_from_slice(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
            objs.len() + 1
        )
        .as_bytes(),
    );
    out
}

/// A black rectangle in PDF points (origin bottom left).
fn rect_pt(x: u32, y: u32, w: u32, h: u32) -> String {
    format!("0 0 0 rg {x} {y} {w} {h} re f")
}

/// Where a rectangle in points lands on a fine fax page: pdftoppm renders
/// at 204 dpi (the larger of 204 x 196), the 8.5in page is 1734 pels and
/// is shrunk to the 1728-pel line.
fn on_fine_page(x: u32, y: u32, w: u32, h: u32) -> Rect {
    let shrink = 1728.0 / 1734.0;
    let (sx, sy) = (204.0 / 72.0 * shrink, 196.0 / 72.0 * shrink);
    let top = 792 - y - h;
    Rect::new(
        f64::from(x) * sx,
        f64::from(top) * sy,
        f64::from(x + w) * sx,
        f64::from(top + h) * sy,
    )
}

fn write_pdf(dir: &tempfile::TempDir, name: &str, pages: &[String]) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, make_pdf(pages)).unwrap();
    path
}

#[tokio::test]
async fn pdf_pages_render_in_order_with_rectangles_in_place() {
    require_tool("pdftoppm", "poppler-utils");
    require_tool("pdfinfo", "poppler-utils");
    let dir = tempfile::tempdir().unwrap();
    let path = write_pdf(
        &dir,
        "two.pdf",
        &[rect_pt(72, 72, 144, 216), rect_pt(300, 500, 200, 100)],
    );
    let opts = ConvertOptions {
        paper: Paper::Letter,
        resolution: Resolution::Fine,
        ..ConvertOptions::default()
    };
    let doc = load_file(&path, &opts).await.unwrap();
    assert_eq!(doc.pages.len(), 2);
    // 11in at 196 dpi, shrunk by 1728/1734.
    let want_h = (11.0f64 * 196.0 * 1728.0 / 1734.0).round() as u32;
    for p in &doc.pages {
        assert_eq!(p.width(), 1728);
        assert!(p.height().abs_diff(want_h) <= 2, "height {}", p.height());
    }
    assert_rects(
        &doc.pages[0],
        &[on_fine_page(72, 72, 144, 216)],
        3.0,
        "pdf page 1",
    );
    assert_rects(
        &doc.pages[1],
        &[on_fine_page(300, 500, 200, 100)],
        3.0,
        "pdf page 2",
    );
}

#[tokio::test]
async fn long_pdf_is_rendered_in_chunks_and_stays_in_order() {
    require_tool("pdftoppm", "poppler-utils");
    let dir = tempfile::tempdir().unwrap();
    // 11 pages (more than one chunk of 8); page i has a bar at a height
    // that encodes i.
    let pages: Vec<String> = (0..11)
        .map(|i| rect_pt(72, 700 - 50 * i, 400, 20))
        .collect();
    let path = write_pdf(&dir, "long.pdf", &pages);
    let opts = ConvertOptions {
        resolution: Resolution::Standard,
        ..ConvertOptions::default()
    };
    let doc = load_file(&path, &opts).await.unwrap();
    assert_eq!(doc.pages.len(), 11);
    let shrink = 1728.0 / 1734.0;
    for (i, page) in doc.pages.iter().enumerate() {
        let y_pt = 792 - (700 - 50 * i as u32) - 10; // bar centre from the top
        let y = (f64::from(y_pt) * 98.0 / 72.0 * shrink) as u32;
        assert!(page.pixel(800, y), "page {} bar at line {y}", i + 1);
        assert!(!page.pixel(800, y + 30), "page {} below the bar", i + 1);
    }
}

#[tokio::test]
async fn blank_pdf_pages_are_dropped_when_asked() {
    require_tool("pdftoppm", "poppler-utils");
    let dir = tempfile::tempdir().unwrap();
    let path = write_pdf(
        &dir,
        "gaps.pdf",
        &[String::new(), rect_pt(72, 72, 300, 300), String::new()],
    );
    let opts = ConvertOptions {
        drop_blank: Some(faxgate_scanner::BlankPolicy::default()),
        ..ConvertOptions::default()
    };
    let doc = load_file(&path, &opts).await.unwrap();
    assert_eq!(doc.pages.len(), 1);
    assert_eq!(doc.dropped_blank, vec![1, 3]);
    let path = write_pdf(&dir, "white.pdf", &[String::new()]);
    let err = load_file(&path, &opts).await.unwrap_err();
    assert!(matches!(err, ScanError::AllBlank { pages: 1, .. }), "{err}");
}

#[tokio::test]
async fn broken_pdf_reports_poppler_stderr() {
    require_tool("pdfinfo", "poppler-utils");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.pdf");
    std::fs::write(&path, b"%PDF-1.4\nthis is not a PDF body\n").unwrap();
    let err = load_file(&path, &ConvertOptions::default())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ScanError::ToolFailed { .. }), "{msg}");
    assert!(
        msg.contains("pdfinfo") && msg.contains("broken.pdf"),
        "{msg}"
    );
    assert!(
        msg.to_lowercase().contains("error"),
        "stderr missing: {msg}"
    );
}

#[tokio::test]
async fn missing_poppler_names_the_package() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_pdf(&dir, "one.pdf", &[rect_pt(72, 72, 144, 216)]);
    let loader = FileLoader {
        pdfinfo: "/nonexistent/pdfinfo".into(),
        pdftoppm: "/nonexistent/pdftoppm".into(),
        ..FileLoader::default()
    };
    let err = loader.load(&path).await.unwrap_err();
    assert!(
        matches!(
            err,
            ScanError::ToolMissing {
                package: "poppler-utils",
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("apt-get install -y --no-install-recommends poppler-utils"),
        "{err}"
    );
}

/// With `pdfinfo` present and only `pdftoppm` missing, the page count is
/// read and the render step fails with the same clear error, naming
/// pdftoppm and its package.
#[tokio::test]
async fn missing_pdftoppm_alone_names_it_and_the_package() {
    require_tool("pdfinfo", "poppler-utils");
    let dir = tempfile::tempdir().unwrap();
    let path = write_pdf(&dir, "one.pdf", &[rect_pt(72, 72, 144, 216)]);
    let loader = FileLoader {
        pdftoppm: "/nonexistent/pdftoppm".into(),
        ..FileLoader::default()
    };
    let err = loader.load(&path).await.unwrap_err();
    let msg = err.to_string();
    match &err {
        ScanError::ToolMissing { tool, package, .. } => {
            assert_eq!(tool, "/nonexistent/pdftoppm", "{msg}");
            assert_eq!(*package, "poppler-utils", "{msg}");
        }
        other => panic!("expected ToolMissing for pdftoppm, got {other:?}: {msg}"),
    }
    assert!(
        msg.contains("/nonexistent/pdftoppm")
            && msg.contains("apt-get install -y --no-install-recommends poppler-utils"),
        "{msg}"
    );
    assert!(
        !msg.contains("pdfinfo"),
        "pdfinfo worked; the error is about pdftoppm: {msg}"
    );
}

/// A PDF with more pages than the loader allows is refused after pdfinfo,
/// with the file, its page count and the limit, before anything is
/// rendered (pdftoppm is missing here, so rendering would fail otherwise).
#[tokio::test]
async fn pdf_with_too_many_pages_is_refused_before_rendering() {
    require_tool("pdfinfo", "poppler-utils");
    let dir = tempfile::tempdir().unwrap();
    let pages: Vec<String> = (0..3).map(|_| rect_pt(72, 72, 100, 100)).collect();
    let path = write_pdf(&dir, "three.pdf", &pages);
    let loader = FileLoader {
        pdftoppm: "/nonexistent/pdftoppm".into(),
        max_pages: 2,
        ..FileLoader::default()
    };
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
        msg.contains("three.pdf") && msg.contains("3 pages") && msg.contains("2 allowed"),
        "{msg}"
    );
}

/// A page box far taller than any fax page is refused from its size alone,
/// naming the file and the page, before pdftoppm would render a huge
/// image (it is missing here).
#[tokio::test]
async fn absurdly_tall_pdf_page_is_refused_before_rendering() {
    require_tool("pdfinfo", "poppler-utils");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scroll.pdf");
    // 612 x 50000 pt: 694 inches, 136000 fine lines.
    std::fs::write(
        &path,
        make_pdf_sized(&[rect_pt(72, 72, 100, 100)], 612, 50_000),
    )
    .unwrap();
    let loader = FileLoader {
        pdftoppm: "/nonexistent/pdftoppm".into(),
        ..FileLoader::default()
    };
    let err = loader.load(&path).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ScanError::Geometry { page: 1, .. }), "{msg}");
    assert!(msg.contains("scroll.pdf") && msg.contains("80000"), "{msg}");
}

/// A page ten times wider than Letter renders at a lowered resolution (at
/// most twice the line width) and still lands on the fax page as before:
/// shrunk to the line width, its left half black.
#[tokio::test]
async fn very_wide_pdf_page_renders_bounded_and_in_place() {
    require_tool("pdftoppm", "poppler-utils");
    require_tool("pdfinfo", "poppler-utils");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wide.pdf");
    std::fs::write(
        &path,
        make_pdf_sized(&[rect_pt(0, 0, 3060, 792)], 6120, 792),
    )
    .unwrap();
    let opts = ConvertOptions {
        resolution: Resolution::Fine,
        ..ConvertOptions::default()
    };
    let doc = load_file(&path, &opts).await.unwrap();
    assert_eq!(doc.pages.len(), 1);
    let page = &doc.pages[0];
    // 11in at 196 dpi, shrunk by 1728 / (85in * 204).
    let want_h = (11.0f64 * 196.0 * 1728.0 / (85.0 * 204.0)).round() as u32;
    assert_eq!(page.width(), 1728);
    assert!(
        page.height().abs_diff(want_h) <= 2,
        "height {}",
        page.height()
    );
    let y = page.height() / 2;
    for x in [50, 400, 800] {
        assert!(page.pixel(x, y), "({x},{y}) should be black");
    }
    for x in [900, 1300, 1700] {
        assert!(!page.pixel(x, y), "({x},{y}) should be white");
    }
}
