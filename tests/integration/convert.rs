//! `faxgate convert` on images that are not fax pages yet: they go
//! through the scanner's file source and come out as CCITT fax pages.

use crate::common::{faxgate, need, run};
use std::process::Command;

#[test]
fn png_becomes_a_fax_page_in_pdf_and_tiff() {
    for (tool, pkg) in [
        ("pnmtopng", "netpbm"),
        ("pdfimages", "poppler-utils"),
        ("tifftopnm", "libtiff-tools"),
    ] {
        need(tool, pkg);
    }
    let d = tempfile::tempdir().unwrap();
    // 80x40 image: left half black, right half white.
    let mut pbm = b"P1\n80 40\n".to_vec();
    for _ in 0..40 {
        for x in 0..80 {
            pbm.extend_from_slice(if x < 40 { b"1 " } else { b"0 " });
        }
        pbm.push(b'\n');
    }
    std::fs::write(d.path().join("in.pbm"), &pbm).unwrap();
    let png = run(Command::new("pnmtopng").arg(d.path().join("in.pbm"))).stdout;
    std::fs::write(d.path().join("in.png"), png).unwrap();

    let pdf = d.path().join("out.pdf");
    run(Command::new(faxgate())
        .arg("convert")
        .arg(d.path().join("in.png"))
        .arg("-o")
        .arg(&pdf));
    let list =
        String::from_utf8(run(Command::new("pdfimages").arg("-list").arg(&pdf)).stdout).unwrap();
    let row = list.lines().nth(2).expect("one image row");
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[3], "1728", "fax width: {row}");
    assert_eq!(
        (cols[5], cols[7], cols[8]),
        ("gray", "1", "ccitt"),
        "1-bit CCITT: {row}"
    );

    let tiff = d.path().join("out.tiff");
    run(Command::new(faxgate())
        .arg("convert")
        .arg(d.path().join("in.png"))
        .args(["-o"])
        .arg(&tiff)
        .args(["--resolution", "standard", "--coding", "mr"]));
    let pnm = run(Command::new("tifftopnm").arg(&tiff)).stdout;
    // P4 header: "P4\n1728 H\n", then rows of 216 bytes.
    let text = String::from_utf8_lossy(&pnm[..20]).into_owned();
    let mut it = text.split_whitespace();
    assert_eq!(it.next(), Some("P4"));
    assert_eq!(it.next(), Some("1728"));
    let h: usize = it.next().unwrap().parse().unwrap();
    // 2:1 aspect at 204x98 dpi: 1728 wide means about 1728/2 * 98/204 rows.
    assert!((400..=430).contains(&h), "height {h}");
    let header_len = pnm.len() - 216 * h;
    let mid = &pnm[header_len + 216 * (h / 2)..header_len + 216 * (h / 2 + 1)];
    assert!(mid[..100].iter().all(|b| *b == 0xff), "left half black");
    assert!(mid[116..].iter().all(|b| *b == 0), "right half white");

    std::fs::write(d.path().join("notes.txt"), "hello").unwrap();
    let out = Command::new(faxgate())
        .arg("convert")
        .arg(d.path().join("notes.txt"))
        .arg("-o")
        .arg(d.path().join("x.pdf"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown image format") && err.contains("notes.txt"),
        "{err}"
    );
}
