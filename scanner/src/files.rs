//! The file source: PNG, JPEG, TIFF, netpbm and PDF files become
//! documents.
//!
//! A file is opened once and must be a regular file of at most
//! [`FileLoader::max_file_bytes`]; FIFOs, devices and folders are refused
//! before they are opened. Image files are decoded and converted on the
//! blocking pool (the work is CPU-bound), one page at a time. PDFs are
//! rendered by poppler's `pdftoppm` to grey PGM pages, up to eight pages
//! at a time into a private temporary folder, so a long PDF costs the
//! disk and memory of eight grey pages plus the finished bilevel ones.
//! The tools read a copy of the bytes that were read and checked, in that
//! folder, never the file's own path.
//! `pdfinfo` (same package) gives the page count, checked against
//! [`FileLoader::max_pages`] before anything is rendered, and each page's
//! size: a page renders at the target resolution unless that would make
//! it more than twice the line width wide, [`MAX_PAGE_LINES`] rows tall or
//! [`MAX_SOURCE_PIXELS`] in all, in which case it renders at the
//! resolution that fits (its physical size is kept either way); a page
//! that would be too tall on the fax page is refused before rendering.
//! The whole of a document's reading and conversion has a deadline,
//! [`FileLoader::max_duration`].

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::convert::{ConvertOptions, MAX_PAGE_LINES, MAX_SOURCE_PIXELS};
use crate::decode::{Format, decode_into, magic_hex};
use crate::document::{
    Document, DocumentBuilder, MAX_DOCUMENT_BYTES, MAX_DOCUMENT_PAGES, Origin, WithDpi,
};
use crate::error::{CREATING_TEMP_FOLDER, ScanError, WRITING_TEMP_FILE};
use crate::tool::{self, ToolInfo};

const POPPLER: ToolInfo = ToolInfo {
    package: "poppler-utils",
    purpose: "reading PDF files",
};

/// PDF pages rendered per `pdftoppm` run.
const PDF_CHUNK: usize = 8;

/// The most `pdfinfo` output we read (a line or two per page).
const PDFINFO_MAX_OUTPUT: u64 = 16 << 20;

/// The largest PGM file a rendered page may be: the pixel budget plus a
/// header.
const MAX_RENDERED_BYTES: u64 = MAX_SOURCE_PIXELS + 4096;

/// Reads files into documents. Cheap to clone; holds only options.
#[derive(Clone, Debug, PartialEq)]
pub struct FileLoader {
    /// How pages are converted.
    pub convert: ConvertOptions,
    /// The `pdftoppm` program.
    pub pdftoppm: PathBuf,
    /// The `pdfinfo` program.
    pub pdfinfo: PathBuf,
    /// Deadline for each run of an external program.
    pub tool_timeout: Duration,
    /// Deadline for reading and converting a whole document (all its
    /// tool runs and pages together).
    pub max_duration: Duration,
    /// Larger files are refused before they are read.
    pub max_file_bytes: u64,
    /// Documents with more pages are refused ([`MAX_DOCUMENT_PAGES`] by
    /// default); a PDF's page count is checked before it is rendered.
    pub max_pages: usize,
    /// Documents whose pages take more bytes as bitmaps (one bit a pixel)
    /// are refused ([`MAX_DOCUMENT_BYTES`] by default); a fax TIFF's page
    /// headers are checked before any page is decoded.
    pub max_decoded_bytes: u64,
}

impl Default for FileLoader {
    fn default() -> Self {
        FileLoader {
            convert: ConvertOptions::default(),
            pdftoppm: "pdftoppm".into(),
            pdfinfo: "pdfinfo".into(),
            tool_timeout: Duration::from_secs(120),
            max_duration: Duration::from_secs(600),
            max_file_bytes: 256 << 20,
            max_pages: MAX_DOCUMENT_PAGES,
            max_decoded_bytes: MAX_DOCUMENT_BYTES,
        }
    }
}

impl FileLoader {
    /// A loader with these conversion options and default tools.
    pub fn new(convert: ConvertOptions) -> Self {
        FileLoader {
            convert,
            ..FileLoader::default()
        }
    }

    /// Reads, decodes and converts one file into a document.
    pub async fn load(&self, path: &Path) -> Result<Document, ScanError> {
        self.load_as(
            path,
            file_name(path),
            Origin::File(path.to_path_buf()),
            Links::Follow,
        )
        .await
    }

    /// As [`FileLoader::load`], recording `origin`. Gives up with
    /// [`ScanError::DeadlineExceeded`] after [`FileLoader::max_duration`]:
    /// a running tool is killed then; a page being converted on the
    /// blocking pool finishes on its own and is thrown away.
    /// `name` names the document (in errors too); `links` says whether a
    /// symbolic link at `path` is read through.
    pub(crate) async fn load_as(
        &self,
        path: &Path,
        name: String,
        origin: Origin,
        links: Links,
    ) -> Result<Document, ScanError> {
        match tokio::time::timeout(
            self.max_duration,
            self.load_inner(path, name.clone(), origin, links),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(ScanError::DeadlineExceeded {
                name,
                limit: self.max_duration,
            }),
        }
    }

    async fn load_inner(
        &self,
        path: &Path,
        name: String,
        origin: Origin,
        links: Links,
    ) -> Result<Document, ScanError> {
        let data = match read_limited(path, self.max_file_bytes, "reading", links).await? {
            Limited::Data(data) => data,
            Limited::TooLarge(size) => {
                return Err(ScanError::TooLarge {
                    name,
                    size,
                    limit: self.max_file_bytes,
                });
            }
        };
        match Format::sniff(&data) {
            Some(Format::Pdf) => self.load_pdf(data, name, origin).await,
            Some(_) => {
                let loader = self.clone();
                blocking(&name.clone(), move || {
                    let mut builder = loader.builder(name.clone(), origin);
                    decode_into(&name, &data, &mut builder)?;
                    builder.finish()
                })
                .await
            }
            None => Err(ScanError::UnknownFormat {
                name,
                magic: magic_hex(&data),
            }),
        }
    }

    /// Runs `pdfinfo` with `args` before the PDF's path; its stdout as text.
    async fn run_pdfinfo(
        &self,
        path: &Path,
        name: &str,
        args: &[&str],
    ) -> Result<String, ScanError> {
        let mut all: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        all.push(path.as_os_str());
        let out = tool::run_limited(
            &self.pdfinfo,
            &all,
            POPPLER,
            name,
            self.tool_timeout,
            PDFINFO_MAX_OUTPUT,
        )
        .await?;
        let out = tool::check(&self.pdfinfo, name, out)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Renders a PDF with `pdftoppm`, a chunk of pages at a time. The
    /// tools read a copy of `data` in a private temporary folder, never
    /// the file's own path: that could be replaced (by a link to another
    /// file, say) after it was checked and read.
    async fn load_pdf(
        &self,
        data: Vec<u8>,
        name: String,
        origin: Origin,
    ) -> Result<Document, ScanError> {
        let dir = tempfile::Builder::new()
            .prefix("faxgate-pdf-")
            .tempdir()
            .map_err(|e| ScanError::io(std::env::temp_dir(), CREATING_TEMP_FOLDER, e))?;
        let path = dir.path().join("document.pdf");
        tokio::fs::write(&path, data)
            .await
            .map_err(|e| ScanError::io(&path, WRITING_TEMP_FILE, e))?;
        let info = self.run_pdfinfo(&path, &name, &[]).await?;
        let pages = parse_pdfinfo_pages(&info).ok_or_else(|| ScanError::ToolFailed {
            tool: self.pdfinfo.display().to_string(),
            subject: name.clone(),
            status: "no Pages: line".into(),
            stderr: String::new(),
        })?;
        let mut builder = self.builder(name.clone(), origin);
        builder.expect_pages(pages)?;
        if pages == 0 {
            return builder.finish();
        }
        // Every page's size, to choose its resolution before rendering.
        let last_arg = pages.to_string();
        let info = self
            .run_pdfinfo(&path, &name, &["-f", "1", "-l", last_arg.as_str()])
            .await?;
        let boxes = parse_pdfinfo_boxes(&info, pages);
        let mut plan = Vec::with_capacity(pages);
        for (i, b) in boxes.iter().enumerate() {
            let page = i + 1;
            let &Some((w, h)) = b else {
                return Err(ScanError::ToolFailed {
                    tool: self.pdfinfo.display().to_string(),
                    subject: name.clone(),
                    status: format!("no size for page {page}"),
                    stderr: String::new(),
                });
            };
            let dpi =
                pdf_render_dpi(w, h, &self.convert).map_err(|reason| ScanError::Geometry {
                    name: name.clone(),
                    page,
                    width: w.round() as u64,
                    height: h.round() as u64,
                    reason,
                })?;
            plan.push(dpi);
        }
        let prefix = dir.path().join("p");
        let mut first = 1;
        while first <= pages {
            // Consecutive pages with the same resolution share a run.
            let dpi = plan[first - 1];
            let mut last = first;
            while last < pages
                && last + 1 - first < PDF_CHUNK
                && plan[last].to_bits() == dpi.to_bits()
            {
                last += 1;
            }
            let (f, l, r) = (first.to_string(), last.to_string(), dpi.to_string());
            let args: [&OsStr; 11] = [
                "-q".as_ref(),
                "-cropbox".as_ref(),
                "-r".as_ref(),
                r.as_ref(),
                "-gray".as_ref(),
                "-f".as_ref(),
                f.as_ref(),
                "-l".as_ref(),
                l.as_ref(),
                path.as_os_str(),
                prefix.as_os_str(),
            ];
            let out = tool::run(&self.pdftoppm, &args, POPPLER, &name, self.tool_timeout).await?;
            let out = tool::check(&self.pdftoppm, &name, out)?;
            let files = rendered_pages(dir.path())?;
            let want = last + 1 - first;
            if files.len() != want {
                return Err(self.render_failed(
                    &name,
                    format!(
                        "it wrote {} page images for pages {first} to {last}, expected {want}",
                        files.len()
                    ),
                    tool::stderr_text(&out),
                ));
            }
            for (k, file) in files.into_iter().enumerate() {
                let page = first + k;
                let read = read_limited(&file, MAX_RENDERED_BYTES, "reading", Links::Refuse).await;
                // The rendered file is ours either way; failing to remove
                // it is not worth failing the document for, and the
                // temporary folder goes at the end.
                let _ = tokio::fs::remove_file(&file).await;
                let data = match read {
                    Ok(Limited::Data(data)) => data,
                    Ok(Limited::TooLarge(size)) => {
                        return Err(self.render_failed(
                            &name,
                            format!(
                                "page {page} came out as {size} bytes, more than the {MAX_RENDERED_BYTES} allowed"
                            ),
                            String::new(),
                        ));
                    }
                    Err(e) => {
                        return Err(self.render_failed(
                            &name,
                            format!("page {page}: its image could not be read"),
                            e.to_string(),
                        ));
                    }
                };
                let n = name.clone();
                builder = blocking(&name, move || {
                    let mut sink = WithDpi {
                        builder: &mut builder,
                        dpi: (dpi, dpi),
                    };
                    decode_into(&n, &data, &mut sink).map_err(|e| on_page(e, page))?;
                    Ok(builder)
                })
                .await?;
            }
            first = last + 1;
        }
        builder.finish()
    }

    /// A builder with this loader's options and limits.
    fn builder(&self, name: String, origin: Origin) -> DocumentBuilder {
        DocumentBuilder::new(
            name,
            origin,
            &self.convert,
            self.max_pages,
            self.max_decoded_bytes,
        )
    }

    /// A pdftoppm failure on this PDF.
    fn render_failed(&self, name: &str, status: String, stderr: String) -> ScanError {
        ScanError::ToolFailed {
            tool: self.pdftoppm.display().to_string(),
            subject: name.into(),
            status,
            stderr,
        }
    }
}

/// Reads one file with default tools and `opts`.
pub async fn load_file(path: &Path, opts: &ConvertOptions) -> Result<Document, ScanError> {
    FileLoader::new(*opts).load(path).await
}

/// Decodes and converts an image held in memory (any format but PDF), one
/// page at a time, refusing more than [`MAX_DOCUMENT_PAGES`] pages and
/// more than [`MAX_DOCUMENT_BYTES`] of bitmaps.
pub fn document_from_bytes(
    name: &str,
    origin: Origin,
    data: &[u8],
    opts: &ConvertOptions,
) -> Result<Document, ScanError> {
    let mut builder =
        DocumentBuilder::new(name, origin, opts, MAX_DOCUMENT_PAGES, MAX_DOCUMENT_BYTES);
    decode_into(name, data, &mut builder)?;
    builder.finish()
}

/// The last path component, for messages.
pub(crate) fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// Runs CPU-bound work on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> Result<T, ScanError> + Send + 'static,
) -> Result<T, ScanError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ScanError::TaskFailed {
            name: name.into(),
            reason: e.to_string(),
        })?
}

/// A decode or size error from one rendered or scanned page file, which
/// counts as page 1 of that file, renumbered as page `number` of the
/// document.
pub(crate) fn on_page(mut e: ScanError, number: usize) -> ScanError {
    if let ScanError::Decode { page, .. } | ScanError::Geometry { page, .. } = &mut e {
        *page = number;
    }
    e
}

/// A file's bytes, or its size if it is over the limit.
pub(crate) enum Limited {
    /// The whole file.
    Data(Vec<u8>),
    /// The size seen: over the limit (a growing file may be larger still).
    TooLarge(u64),
}

/// Whether a path that is a symbolic link is read through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Links {
    /// Read what it points to (a file named by the user, on the command
    /// line say).
    Follow,
    /// Refuse it: a hot folder, where whoever may write the folder could
    /// otherwise have us read (and fax, or copy to `done/`) any file the
    /// daemon can read, such as a received fax or the configuration; and
    /// the pages our tools write, which are never links.
    Refuse,
}

/// Reads a regular file of at most `limit` bytes. The path is checked to
/// be a regular file before it is opened (opening a FIFO waits for a
/// writer; a device such as /dev/zero never ends), the open file is
/// checked again, and at most `limit + 1` bytes are read, so a file that
/// grows while it is read is refused too.
///
/// With [`Links::Refuse`] a symbolic link is refused and never opened,
/// and a file with more than one name (a hard link) is refused unread.
/// The crate has no `libc` (and forbids `unsafe`), and `O_NOFOLLOW` has
/// another value on ARM than on x86, so instead of opening with it the
/// path is checked with `symlink_metadata` and the opened file must be
/// that very file (same device and inode): a link put in place between
/// the check and the open is refused rather than read through. The same
/// check guards the followed path against a file swapped meanwhile.
pub(crate) async fn read_limited(
    path: &Path,
    limit: u64,
    action: &'static str,
    links: Links,
) -> Result<Limited, ScanError> {
    use std::os::unix::fs::MetadataExt as _;
    let io = |e: std::io::Error| ScanError::io(path, action, e);
    let refused = |why: &str| io(std::io::Error::new(std::io::ErrorKind::InvalidInput, why));
    let before = match links {
        Links::Follow => tokio::fs::metadata(path).await,
        Links::Refuse => tokio::fs::symlink_metadata(path).await,
    }
    .map_err(io)?;
    if before.file_type().is_symlink() {
        return Err(refused(NOT_FOLLOWED));
    }
    if !before.is_file() {
        return Err(refused(NOT_REGULAR));
    }
    let file = tokio::fs::File::open(path).await.map_err(io)?;
    let meta = file.metadata().await.map_err(io)?;
    if !meta.is_file() {
        return Err(refused(NOT_REGULAR));
    }
    if (meta.dev(), meta.ino()) != (before.dev(), before.ino()) {
        return Err(refused(
            "the file was replaced (by a link or another file) while it was being opened",
        ));
    }
    if matches!(links, Links::Refuse) && meta.nlink() > 1 {
        return Err(refused(HARD_LINKED));
    }
    if meta.len() > limit {
        return Ok(Limited::TooLarge(meta.len()));
    }
    let mut data = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(limit.saturating_add(1))
        .read_to_end(&mut data)
        .await
        .map_err(io)?;
    if data.len() as u64 > limit {
        return Ok(Limited::TooLarge(data.len() as u64));
    }
    Ok(Limited::Data(data))
}

/// Why a symbolic link is not read.
pub(crate) const NOT_FOLLOWED: &str =
    "a symbolic link; only regular files are read here, never what a link points to";

/// Why a file with more than one name is not read where links are
/// refused: a hard link is a link too. It can make a file that belongs
/// elsewhere (a received fax in the appliance's state, say) appear in a
/// hot folder, as a symbolic link can; the kernel's
/// `fs.protected_hardlinks` stops only links to files the linker could
/// not read and write.
pub(crate) const HARD_LINKED: &str = "a hard link (the file has more than one name); only files with one name are read here: put a copy of the file into the folder";

/// Why a folder, device or pipe is not read.
const NOT_REGULAR: &str = "not a regular file (a folder, device or pipe)";

/// The `Pages:` count from `pdfinfo` output.
fn parse_pdfinfo_pages(text: &str) -> Option<usize> {
    text.lines()
        .find_map(|l| l.strip_prefix("Pages:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Each page's size in points as rendered (rotation applied), from the
/// `Page    N size: W x H pts` and `Page    N rot:  R` lines of
/// `pdfinfo -f 1 -l N` (the crop box, which `pdftoppm -cropbox` renders).
fn parse_pdfinfo_boxes(text: &str, pages: usize) -> Vec<Option<(f64, f64)>> {
    let mut sizes: Vec<Option<(f64, f64)>> = vec![None; pages];
    let mut rotated = vec![false; pages];
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("Page") else {
            continue;
        };
        let Some((number, rest)) = rest.trim_start().split_once(' ') else {
            continue;
        };
        let Some(i) = number
            .parse::<usize>()
            .ok()
            .and_then(|n| n.checked_sub(1))
            .filter(|&i| i < pages)
        else {
            continue;
        };
        let rest = rest.trim_start();
        if let Some(v) = rest.strip_prefix("size:") {
            let mut words = v.split_whitespace();
            let w = words.next().and_then(|w| w.parse::<f64>().ok());
            let x = words.next();
            let h = words.next().and_then(|h| h.parse::<f64>().ok());
            if let (Some(w), Some("x"), Some(h)) = (w, x, h) {
                sizes[i] = Some((w, h));
            }
        } else if let Some(v) = rest.strip_prefix("rot:") {
            rotated[i] = v
                .trim()
                .parse::<i64>()
                .is_ok_and(|r| r.rem_euclid(180) == 90);
        }
    }
    sizes
        .into_iter()
        .zip(rotated)
        .map(|(s, rot)| s.map(|(w, h)| if rot { (h, w) } else { (w, h) }))
        .collect()
}

/// The resolution to render a `w_pt` x `h_pt` PDF page at (points, as
/// rendered): the target resolution (the larger of its two dpi values),
/// lowered so that the rendered page is at most twice the width placement
/// shrinks it to, at most [`MAX_PAGE_LINES`] rows tall and within
/// [`MAX_SOURCE_PIXELS`]. The page keeps its physical size, since the
/// grey page carries the resolution it was rendered at. A page that would
/// be too tall on the fax page, or too large to render at 10 dpi, is
/// refused, naming its size and the limit.
fn pdf_render_dpi(w_pt: f64, h_pt: f64, opts: &ConvertOptions) -> Result<f64, String> {
    let what = || {
        format!(
            "the page box is {w_pt} x {h_pt} pt ({:.0} x {:.0} mm)",
            w_pt / 72.0 * 25.4,
            h_pt / 72.0 * 25.4
        )
    };
    if !(w_pt.is_finite() && h_pt.is_finite() && w_pt > 0.0 && h_pt > 0.0) {
        return Err(format!("{}: not a page size", what()));
    }
    let line = f64::from(opts.line_width());
    let (hdpi, vdpi) = opts.resolution.dpi();
    let (hdpi, vdpi) = (f64::from(hdpi), f64::from(vdpi));
    let dpi = hdpi.max(vdpi);
    let (w_in, h_in) = (w_pt / 72.0, h_pt / 72.0);
    // The fax page's height, as placement() will make it.
    let lines = if opts.use_source_dpi && w_in * hdpi <= line {
        h_in * vdpi
    } else {
        h_in / w_in * line * vdpi / hdpi
    };
    if lines.round() > f64::from(MAX_PAGE_LINES) {
        return Err(format!(
            "{}; on the fax page it would be {lines:.0} lines tall, more than the {MAX_PAGE_LINES} allowed",
            what()
        ));
    }
    // A little under the limits: pdftoppm rounds the size up.
    let max_w_px = 2.0 * line * dpi / hdpi;
    let max_rows = f64::from(MAX_PAGE_LINES) - 2.0;
    let max_pixels = MAX_SOURCE_PIXELS as f64 * 0.99;
    let r = dpi
        .min(max_w_px * 72.0 / w_pt)
        .min(max_rows * 72.0 / h_pt)
        .min(72.0 * (max_pixels / (w_pt * h_pt)).sqrt());
    // Three decimals, rounded down, so that what pdftoppm is told is
    // exactly what the page is said to have.
    let r = (r * 1000.0).floor() / 1000.0;
    if r < 10.0 {
        return Err(format!(
            "{}: too large to render (it would need {r} dpi)",
            what()
        ));
    }
    Ok(r)
}

/// The PGM files `pdftoppm` wrote, in page order (`p-1.pgm`, `p-01.pgm`,
/// ... its zero padding depends on the page count).
fn rendered_pages(dir: &Path) -> Result<Vec<PathBuf>, ScanError> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| ScanError::io(dir, "listing rendered PDF pages", e))?;
    let mut pages: Vec<(u32, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let path = e.path();
            let stem = path.file_stem()?.to_str()?;
            let n = stem.rsplit('-').next()?.parse().ok()?;
            Some((n, path))
        })
        .collect();
    pages.sort();
    Ok(pages.into_iter().map(|(_, p)| p).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pdfinfo_page_count() {
        let text = "Title:  x\nPages:          12\nEncrypted:      no\n";
        assert_eq!(parse_pdfinfo_pages(text), Some(12));
        assert_eq!(parse_pdfinfo_pages("Title: x\n"), None);
    }

    #[test]
    fn pdfinfo_page_boxes_with_rotation() {
        let text = "Pages:          3\n\
                    Page    1 size: 612 x 792 pts (letter)\n\
                    Page    1 rot:  0\n\
                    Page    2 size: 595.276 x 841.89 pts (A4)\n\
                    Page    2 rot:  90\n\
                    File size:      1234 bytes\n";
        let boxes = parse_pdfinfo_boxes(text, 3);
        assert_eq!(
            boxes,
            vec![Some((612.0, 792.0)), Some((841.89, 595.276)), None]
        );
    }

    #[test]
    fn pdf_pages_render_at_the_target_dpi_unless_too_big() {
        use faxgate_fax::Resolution;
        let fine = ConvertOptions {
            resolution: Resolution::Fine,
            ..ConvertOptions::default()
        };
        // Letter and A4 render at 204 dpi, as ever.
        assert_eq!(pdf_render_dpi(612.0, 792.0, &fine), Ok(204.0));
        assert_eq!(pdf_render_dpi(595.276, 841.89, &fine), Ok(204.0));
        // Ten times wider: at most twice the line width.
        let r = pdf_render_dpi(6120.0, 792.0, &fine).unwrap();
        assert!(6120.0 * r / 72.0 <= 2.0 * 1728.0, "{r}");
        assert!(r > 40.0, "{r}");
        // 200 x 200 inches: within the pixel budget and line count.
        let r = pdf_render_dpi(14_400.0, 14_400.0, &fine).unwrap();
        let side = 14_400.0 * r / 72.0;
        assert!(side * side <= MAX_SOURCE_PIXELS as f64, "{r}");
        assert!(side <= f64::from(MAX_PAGE_LINES), "{r}");
        // Too tall for any fax page: refused, naming the limit.
        let e = pdf_render_dpi(612.0, 50_000.0, &fine).unwrap_err();
        assert!(e.contains("50000 pt") && e.contains("80000"), "{e}");
        // Nonsense boxes.
        assert!(pdf_render_dpi(0.0, 792.0, &fine).is_err());
        assert!(pdf_render_dpi(f64::NAN, 792.0, &fine).is_err());
    }

    #[test]
    fn rendered_pages_sort_numerically() {
        let dir = tempfile::tempdir().unwrap();
        for n in ["p-10.pgm", "p-2.pgm", "p-1.pgm"] {
            std::fs::write(dir.path().join(n), b"").unwrap();
        }
        let got: Vec<String> = rendered_pages(dir.path())
            .unwrap()
            .iter()
            .map(|p| file_name(p))
            .collect();
        assert_eq!(got, ["p-1.pgm", "p-2.pgm", "p-10.pgm"]);
    }

    /// The hot-folder attack: a fax TIFF of 40 pages, each 1728 x 80000
    /// (17 MB as a bitmap) from 10 kB of MMR. Refused from its page
    /// headers at the page that crosses 512 MiB, before any page is
    /// decoded (decoding 31 such pages would take 535 MB; that the sizes
    /// come before any page is tested in `decode`).
    #[test]
    fn a_small_fax_tiff_claiming_gigabytes_of_pages_is_refused_before_decoding() {
        use faxgate_fax::tiff::{EncodedPage, TiffWriter};
        use faxgate_fax::{Coding, Resolution};
        let mut w = TiffWriter::new(Default::default()).unwrap();
        let mut tiff = Vec::new();
        for _ in 0..40 {
            // 10 000 bytes of V0 codes: 80 000 white lines.
            let page = EncodedPage {
                width: 1728,
                height: 80_000,
                coding: Coding::Mmr,
                fill_bits: false,
                rle: false,
                resolution: Resolution::Fine,
                data: vec![0xFF; 10_000],
                damage: None,
            };
            tiff.extend(w.add_page(page).unwrap());
        }
        tiff.extend(w.finish().unwrap());
        assert!(tiff.len() < 500_000, "{}", tiff.len());
        let e = document_from_bytes(
            "roll.tif",
            Origin::HotFolder("in/roll.tif".into()),
            &tiff,
            &ConvertOptions::default(),
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                ScanError::TooMuchDecoded {
                    page: 32,
                    width: 1728,
                    height: 80_000,
                    limit: MAX_DOCUMENT_BYTES,
                    ..
                }
            ),
            "{e}"
        );
        let msg = e.to_string();
        assert!(
            msg.starts_with("roll.tif: page 32 (1728x80000 pels)") && msg.contains("536870912"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn a_symlink_is_read_through_only_when_links_are_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("secret.toml");
        std::fs::write(&target, b"password = 1").unwrap();
        let link = dir.path().join("x.tif");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = match read_limited(&link, 1000, "reading", Links::Refuse).await {
            Err(e) => e,
            Ok(_) => panic!("a link was read through"),
        };
        let msg = e.to_string();
        assert!(msg.contains("x.tif") && msg.contains(NOT_FOLLOWED), "{msg}");
        let Limited::Data(data) = read_limited(&link, 1000, "reading", Links::Follow)
            .await
            .unwrap()
        else {
            panic!("too large");
        };
        assert_eq!(data, b"password = 1");
        // A regular file reads either way.
        let Limited::Data(data) = read_limited(&target, 1000, "reading", Links::Refuse)
            .await
            .unwrap()
        else {
            panic!("too large");
        };
        assert_eq!(data, b"password = 1");
    }
}
