//! `faxgate demo`, the README's main-job command, on a fresh directory:
//! it must finish and leave a PDF with the sample's two pages, each a
//! 1-bit CCITT image (never expanded), that poppler renders.

use crate::common::{faxgate, need, run};
use std::process::Command;

#[test]
fn demo_prints_the_sample_to_a_pdf_in_out() {
    need("pdfimages", "poppler-utils");
    let dir = tempfile::tempdir().unwrap();
    let out = run(Command::new(faxgate())
        .args(["demo", "--out"])
        .arg(dir.path().join("out")));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let pdf = stdout
        .lines()
        .find_map(|l| l.strip_prefix("demo: done; the printed fax is "))
        .unwrap_or_else(|| panic!("the demo did not say where the PDF is:\n{stdout}"));
    assert!(
        std::path::Path::new(pdf).starts_with(dir.path().join("out")),
        "{pdf} is not under --out"
    );
    assert!(stdout.contains("done, 2 pages"), "{stdout}");
    let list = run(Command::new("pdfimages").args(["-list", pdf]));
    let list = String::from_utf8_lossy(&list.stdout);
    let images: Vec<&str> = list.lines().skip(2).collect();
    assert_eq!(images.len(), 2, "{list}");
    for l in images {
        let cols: Vec<&str> = l.split_whitespace().collect();
        // page num type width height color comp bpc enc ...
        assert_eq!(
            (cols[3], cols[4], cols[7], cols[8]),
            ("1728", "2200", "1", "ccitt"),
            "{l}"
        );
    }
}
