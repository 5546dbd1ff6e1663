//! Helpers: tool checks, test images and pixel assertions.

use faxgate_fax::Bitmap;

/// Fails the test (never skips) when `tool` is not on PATH.
pub fn require_tool(tool: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is not installed: apt-get install -y --no-install-recommends {package}"
    );
}

/// An inclusive-exclusive rectangle in pixels.
#[derive(Clone, Copy, Debug)]
pub struct Rect {
    pub x0: f64,
    pub y0: f64,
    pub x1: f64,
    pub y1: f64,
}

impl Rect {
    pub fn new(x0: f64, y0: f64, x1: f64, y1: f64) -> Self {
        Rect { x0, y0, x1, y1 }
    }

    /// The rectangle scaled by (sx, sy) and shifted by dx.
    pub fn map(self, sx: f64, sy: f64, dx: f64) -> Self {
        Rect {
            x0: self.x0 * sx + dx,
            y0: self.y0 * sy,
            x1: self.x1 * sx + dx,
            y1: self.y1 * sy,
        }
    }
}

/// A white grey image `w` x `h` with black rectangles.
pub fn gray_with_rects(w: u32, h: u32, rects: &[Rect]) -> image::GrayImage {
    image::GrayImage::from_fn(w, h, |x, y| {
        let (fx, fy) = (f64::from(x), f64::from(y));
        let black = rects
            .iter()
            .any(|r| fx >= r.x0 && fx < r.x1 && fy >= r.y0 && fy < r.y1);
        image::Luma([if black { 0 } else { 255 }])
    })
}

/// Asserts that every pixel more than `tol` inside a rectangle is black
/// and every pixel more than `tol` outside all of them is white.
pub fn assert_rects(b: &Bitmap, rects: &[Rect], tol: f64, what: &str) {
    let mut wrong = 0u64;
    let mut first = None;
    for y in 0..b.height() {
        for x in 0..b.width() {
            let (fx, fy) = (f64::from(x) + 0.5, f64::from(y) + 0.5);
            let inside = rects
                .iter()
                .any(|r| fx > r.x0 + tol && fx < r.x1 - tol && fy > r.y0 + tol && fy < r.y1 - tol);
            let near = rects
                .iter()
                .any(|r| fx > r.x0 - tol && fx < r.x1 + tol && fy > r.y0 - tol && fy < r.y1 + tol);
            let want = if inside {
                Some(true)
            } else if !near {
                Some(false)
            } else {
                None
            };
            if let Some(want) = want
                && b.pixel(x, y) != want
            {
                wrong += 1;
                first.get_or_insert((x, y, want));
            }
        }
    }
    assert_eq!(
        wrong, 0,
        "{what}: {wrong} wrong pixels, first {first:?} (x, y, should be black)"
    );
}

/// Share of black pixels in columns x0..x1 of the whole height.
pub fn black_share(b: &Bitmap, x0: u32, x1: u32) -> f64 {
    let mut n = 0u64;
    for y in 0..b.height() {
        n += (x0..x1).filter(|&x| b.pixel(x, y)).count() as u64;
    }
    n as f64 / (f64::from(x1 - x0) * f64::from(b.height()))
}
