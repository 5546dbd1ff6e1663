//! The file source: PNG, JPEG, TIFF, netpbm and PDF files become
//! documents.
//!
//! Image files are read with tokio and decoded and converted on the
//! blocking pool (the work is CPU-bound). PDFs are rendered by poppler's
//! `pdftoppm` to grey PGM pages at the target resolution, eight pages at a
//! time into a private temporary folder, so a long PDF costs the disk and
//! memory of eight grey pages plus the finished bilevel ones. `pdfinfo`
//! (same package) gives the page count.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::convert::ConvertOptions;
use crate::decode::{Format, decode_image, magic_hex};
use crate::document::{Document, DocumentBuilder, Origin};
use crate::error::ScanError;
use crate::tool::{self, ToolInfo};

const POPPLER: ToolInfo = ToolInfo {
    package: "poppler-utils",
    purpose: "reading PDF files",
};

/// PDF pages rendered per `pdftoppm` run.
const PDF_CHUNK: u32 = 8;

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
    /// Larger files are refused before they are read.
    pub max_file_bytes: u64,
}

impl Default for FileLoader {
    fn default() -> Self {
        FileLoader {
            convert: ConvertOptions::default(),
            pdftoppm: "pdftoppm".into(),
            pdfinfo: "pdfinfo".into(),
            tool_timeout: Duration::from_secs(120),
            max_file_bytes: 256 << 20,
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
        self.load_as(path, Origin::File(path.to_path_buf())).await
    }

    /// As [`FileLoader::load`], recording `origin`.
    pub(crate) async fn load_as(&self, path: &Path, origin: Origin) -> Result<Document, ScanError> {
        let name = file_name(path);
        let meta = tokio::fs::metadata(path)
            .await
            .map_err(|e| ScanError::io(path, "reading", e))?;
        if meta.len() > self.max_file_bytes {
            return Err(ScanError::Geometry {
                name,
                page: 1,
                width: 0,
                height: 0,
                reason: format!(
                    "the file has {} bytes, more than the {} allowed",
                    meta.len(),
                    self.max_file_bytes
                ),
            });
        }
        let data = tokio::fs::read(path)
            .await
            .map_err(|e| ScanError::io(path, "reading", e))?;
        match Format::sniff(&data) {
            Some(Format::Pdf) => {
                drop(data);
                self.load_pdf(path, name, origin).await
            }
            Some(_) => {
                let opts = self.convert;
                blocking(&name.clone(), move || {
                    document_from_bytes(&name, origin, &data, &opts)
                })
                .await
            }
            None => Err(ScanError::UnknownFormat {
                name,
                magic: magic_hex(&data),
            }),
        }
    }

    /// Renders a PDF with `pdftoppm`, a chunk of pages at a time.
    async fn load_pdf(
        &self,
        path: &Path,
        name: String,
        origin: Origin,
    ) -> Result<Document, ScanError> {
        // A relative path starting with '-' would read as an option.
        let path = if path.is_relative() {
            Path::new(".").join(path)
        } else {
            path.to_path_buf()
        };
        let info = tool::run(
            &self.pdfinfo,
            &[path.as_os_str()],
            POPPLER,
            &name,
            self.tool_timeout,
        )
        .await?;
        let info = tool::check(&self.pdfinfo, &name, info)?;
        let pages =
            parse_pdfinfo_pages(&String::from_utf8_lossy(&info.stdout)).ok_or_else(|| {
                ScanError::ToolFailed {
                    tool: self.pdfinfo.display().to_string(),
                    subject: name.clone(),
                    status: "no Pages: line".into(),
                    stderr: tool::stderr_text(&info),
                }
            })?;
        let (h, v) = self.convert.resolution.dpi();
        let dpi = h.max(v);
        let dpi_arg = dpi.to_string();
        let dir = tempfile::Builder::new()
            .prefix("faxgate-pdf-")
            .tempdir()
            .map_err(|e| ScanError::io(std::env::temp_dir(), "creating a temporary folder", e))?;
        let prefix = dir.path().join("p");
        let mut builder = DocumentBuilder::new(name.clone(), origin, &self.convert);
        let mut first = 1;
        while first <= pages {
            let last = (first + PDF_CHUNK - 1).min(pages);
            let (f, l) = (first.to_string(), last.to_string());
            let args: [&OsStr; 10] = [
                "-q".as_ref(),
                "-r".as_ref(),
                dpi_arg.as_ref(),
                "-gray".as_ref(),
                "-f".as_ref(),
                f.as_ref(),
                "-l".as_ref(),
                l.as_ref(),
                path.as_os_str(),
                prefix.as_os_str(),
            ];
            let out = tool::run(&self.pdftoppm, &args, POPPLER, &name, self.tool_timeout).await?;
            tool::check(&self.pdftoppm, &name, out)?;
            for file in rendered_pages(dir.path())? {
                let data = tokio::fs::read(&file)
                    .await
                    .map_err(|e| ScanError::io(&file, "reading a rendered PDF page", e))?;
                tokio::fs::remove_file(&file)
                    .await
                    .map_err(|e| ScanError::io(&file, "removing a rendered PDF page", e))?;
                let n = name.clone();
                builder = blocking(&name, move || {
                    for mut page in decode_image(&n, &data)? {
                        page.set_dpi(Some((f64::from(dpi), f64::from(dpi))));
                        builder.push(&page)?;
                    }
                    Ok(builder)
                })
                .await?;
            }
            first = last + 1;
        }
        builder.finish()
    }
}

/// Reads one file with default tools and `opts`.
pub async fn load_file(path: &Path, opts: &ConvertOptions) -> Result<Document, ScanError> {
    FileLoader::new(*opts).load(path).await
}

/// Decodes and converts an image held in memory (any format but PDF).
pub fn document_from_bytes(
    name: &str,
    origin: Origin,
    data: &[u8],
    opts: &ConvertOptions,
) -> Result<Document, ScanError> {
    let mut builder = DocumentBuilder::new(name, origin, opts);
    for page in decode_image(name, data)? {
        builder.push(&page)?;
    }
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
        .map_err(|e| ScanError::Decode {
            name: name.into(),
            page: 0,
            format: "image",
            reason: format!("the conversion task failed: {e}"),
        })?
}

/// The `Pages:` count from `pdfinfo` output.
fn parse_pdfinfo_pages(text: &str) -> Option<u32> {
    text.lines()
        .find_map(|l| l.strip_prefix("Pages:"))
        .and_then(|v| v.trim().parse().ok())
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
}
