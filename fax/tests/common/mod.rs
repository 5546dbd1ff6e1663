//! Helpers for the interop tests: the reference tools (libtiff-tools,
//! netpbm, jbigkit) and the eight CCITT test documents.
//!
//! A missing tool or data file fails the test with the Debian package to
//! install; nothing is skipped.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use faxgate_fax::Bitmap;
use faxgate_fax::pbm::{read_pbm, read_pbm_all};

/// The Debian packages these tests need.
pub const PACKAGES: &str = "libtiff-tools netpbm jbigkit-bin jbigkit-testdata";

/// The full path of `name`, or a panic naming the package to install.
pub fn tool(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "`{name}` is not installed: run `apt-get install -y --no-install-recommends {package}` \
         (all fax tests need: {PACKAGES})"
    );
}

/// Runs a command, panicking with its stderr unless it succeeds.
pub fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Runs `name` (from `package`) with `args`.
pub fn run_tool(name: &str, package: &str, args: &[&Path]) -> Vec<u8> {
    run(Command::new(tool(name, package)).args(args))
}

/// Where jbigkit-testdata keeps the CCITT documents.
const CCITT_DIR: &str = "/usr/share/jbigkit-testdata";

/// The eight CCITT test documents as PBM files in `dir`, with their bitmaps.
pub fn ccitt_pages(dir: &Path) -> Vec<(PathBuf, Bitmap)> {
    (1..=8)
        .map(|i| {
            let jbg = Path::new(CCITT_DIR).join(format!("ccitt{i}.jbg"));
            assert!(
                jbg.is_file(),
                "{} is missing: run `apt-get install -y --no-install-recommends jbigkit-testdata`",
                jbg.display()
            );
            let pbm = dir.join(format!("ccitt{i}.pbm"));
            run_tool("jbgtopbm", "jbigkit-bin", &[&jbg, &pbm]);
            let bmp = read_pbm(&std::fs::read(&pbm).unwrap()).unwrap();
            (pbm, bmp)
        })
        .collect()
}

/// Reads every image of a PBM stream.
pub fn pbms(data: &[u8]) -> Vec<Bitmap> {
    read_pbm_all(data).unwrap()
}

/// The first row where two bitmaps differ, for assertion messages.
pub fn first_diff(a: &Bitmap, b: &Bitmap) -> String {
    if (a.width(), a.height()) != (b.width(), b.height()) {
        return format!(
            "size {}x{} vs {}x{}",
            a.width(),
            a.height(),
            b.width(),
            b.height()
        );
    }
    match (0..a.height()).find(|&y| a.row(y) != b.row(y)) {
        Some(y) => format!("row {y} differs"),
        None => "identical".into(),
    }
}

/// A deterministic page with text-like blobs and rules, for tests that
/// must not depend on the CCITT documents.
pub fn sample_page(width: u32, height: u32, seed: u64) -> Bitmap {
    let mut b = Bitmap::new(width, height);
    let mut s = seed;
    let mut rnd = |n: u32| {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 33) % u64::from(n.max(1))) as u32
    };
    for _ in 0..(width * height / 300) {
        let (x, y, w, h) = (rnd(width), rnd(height), rnd(30) + 1, rnd(10) + 1);
        for yy in y..(y + h).min(height) {
            for xx in x..(x + w).min(width) {
                b.set_pixel(xx, yy, true);
            }
        }
    }
    for y in (0..height).step_by(17) {
        for x in 0..width {
            b.set_pixel(x, y, true);
        }
    }
    b
}
