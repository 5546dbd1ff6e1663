//! Real scans from SANE's `test` device through `scanimage`.

use faxgate_fax::Resolution;
use faxgate_scanner::{
    BlankPolicy, ConvertOptions, Mode, Origin, Paper, SaneOptions, SaneScanner, ScanArea, ScanError,
};

use crate::common::{black_share, require_tool};

/// The test device over a 200 x 200 mm area at 100 dpi (787 x 787 px).
fn test_device(picture: &str) -> SaneOptions {
    let mut o = SaneOptions::new("test");
    o.resolution_dpi = 100;
    o.area = Some(ScanArea {
        left_mm: 0.0,
        top_mm: 0.0,
        width_mm: 200.0,
        height_mm: 200.0,
    });
    o.extra_args = vec!["--test-picture".into(), picture.into()];
    o
}

fn fine() -> ConvertOptions {
    ConvertOptions {
        paper: Paper::A4,
        resolution: Resolution::Fine,
        ..ConvertOptions::default()
    }
}

#[tokio::test]
async fn grid_scan_becomes_a_fine_fax_page() {
    require_tool("scanimage", "sane-utils");
    let doc = SaneScanner::new(test_device("Grid"), fine())
        .scan()
        .await
        .unwrap();
    assert_eq!(
        doc.origin,
        Origin::Sane {
            device: "test".into()
        }
    );
    assert_eq!(doc.pages.len(), 1);
    let page = &doc.pages[0];
    assert_eq!(page.width(), 1728);
    // 787 px at 100 dpi = 7.87 in: 1605 pels at 204 dpi, 1543 lines at 196.
    let want_h = 787.0 / 100.0 * 196.0;
    assert!(
        (f64::from(page.height()) - want_h).abs() <= 3.0,
        "height {} for {want_h:.0}",
        page.height()
    );
    let w = (787.0f64 / 100.0 * 204.0).round() as u32;
    let x0 = (1728 - w) / 2;
    // The grid is half black inside the scanned area, white outside it.
    let inside = black_share(page, x0 + 2, x0 + w - 2);
    assert!((0.45..=0.55).contains(&inside), "black share {inside:.3}");
    assert_eq!(black_share(page, 0, x0.saturating_sub(2)), 0.0);
    assert_eq!(black_share(page, x0 + w + 2, 1728), 0.0);
    let whole = black_share(page, 0, 1728);
    assert!((0.42..=0.50).contains(&whole), "whole page {whole:.3}");
    // Golden check on the squares: 10 mm squares, the top-left one white;
    // square (i, j) is black when i + j is odd. Sample each centre.
    let px_per_mm_x = 204.0 / 25.4;
    let px_per_mm_y = 196.0 / 25.4;
    for i in 0..19u32 {
        for j in 0..19u32 {
            let x = f64::from(x0) + (f64::from(i) * 10.0 + 5.0) * px_per_mm_x;
            let y = (f64::from(j) * 10.0 + 5.0) * px_per_mm_y;
            let want = (i + j) % 2 == 1;
            assert_eq!(
                page.pixel(x as u32, y as u32),
                want,
                "square ({i},{j}) at ({x:.0},{y:.0})"
            );
        }
    }
}

#[tokio::test]
async fn standard_resolution_halves_the_lines() {
    require_tool("scanimage", "sane-utils");
    let opts = ConvertOptions {
        resolution: Resolution::Standard,
        ..fine()
    };
    let doc = SaneScanner::new(test_device("Grid"), opts)
        .scan()
        .await
        .unwrap();
    let h = doc.pages[0].height();
    assert!((f64::from(h) - 787.0 / 100.0 * 98.0).abs() <= 2.0, "{h}");
}

#[tokio::test]
async fn feeder_batch_keeps_pages_together() {
    require_tool("scanimage", "sane-utils");
    let mut o = test_device("Grid");
    o.source = Some("Automatic Document Feeder".into());
    o.pages = Some(3);
    let doc = SaneScanner::new(o.clone(), fine()).scan().await.unwrap();
    assert_eq!(doc.pages.len(), 3);
    assert!(
        doc.pages
            .iter()
            .all(|p| p.width() == 1728 && p == &doc.pages[0])
    );
    // The test feeder holds 10 sheets: asking for 25 ends at 10, normally.
    o.pages = Some(25);
    o.area = Some(ScanArea {
        left_mm: 0.0,
        top_mm: 0.0,
        width_mm: 50.0,
        height_mm: 50.0,
    });
    let doc = SaneScanner::new(o, fine()).scan().await.unwrap();
    assert_eq!(doc.pages.len(), 10);
}

#[tokio::test]
async fn photo_mode_dithers_and_solid_pictures_behave() {
    require_tool("scanimage", "sane-utils");
    // Solid black stays black in both modes.
    for mode in [Mode::Text, Mode::Photo] {
        let opts = ConvertOptions { mode, ..fine() };
        let doc = SaneScanner::new(test_device("Solid black"), opts)
            .scan()
            .await
            .unwrap();
        let p = &doc.pages[0];
        let x0 = (1728 - 1605) / 2;
        let share = black_share(p, x0 + 2, x0 + 1600);
        assert!(share > 0.99, "{mode:?}: {share}");
    }
    // A white scan is blank: dropped, so the document is refused.
    let opts = ConvertOptions {
        drop_blank: Some(BlankPolicy::default()),
        ..fine()
    };
    let err = SaneScanner::new(test_device("Solid white"), opts)
        .scan()
        .await
        .unwrap_err();
    assert!(matches!(err, ScanError::AllBlank { pages: 1, .. }), "{err}");
    // The colour pattern in grey has mid tones: photo mode gives a mix.
    let mut o = test_device("Color pattern");
    o.mode = faxgate_scanner::SaneMode::Color;
    let opts = ConvertOptions {
        mode: Mode::Photo,
        ..fine()
    };
    let doc = SaneScanner::new(o, opts).scan().await.unwrap();
    let share = black_share(&doc.pages[0], 100, 1600);
    assert!((0.05..0.95).contains(&share), "{share}");
}

#[tokio::test]
async fn unknown_device_reports_scanimage_stderr() {
    require_tool("scanimage", "sane-utils");
    let o = SaneOptions::new("nosuchdevice");
    let err = SaneScanner::new(o, fine()).scan().await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ScanError::ToolFailed { .. }), "{msg}");
    assert!(msg.contains("nosuchdevice"), "{msg}");
    assert!(msg.contains("open of device nosuchdevice failed"), "{msg}");
}

#[tokio::test]
async fn missing_scanimage_names_the_package() {
    let mut o = SaneOptions::new("test");
    o.program = "/nonexistent/scanimage".into();
    let err = SaneScanner::new(o, fine()).scan().await.unwrap_err();
    assert!(
        matches!(
            err,
            ScanError::ToolMissing {
                package: "sane-utils",
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("apt-get install -y --no-install-recommends sane-utils"),
        "{err}"
    );
}
