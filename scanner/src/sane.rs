//! The SANE source: scans through `scanimage` (Debian `sane-utils`), so
//! any device SANE knows works, local or over `saned`, with no C bindings.
//!
//! A single page is read from scanimage's stdout as PNM. A feeder scan
//! (`pages: Some(n)`) runs scanimage in batch mode into a private
//! temporary folder and collects the pages in order; a feeder that runs
//! out of paper after at least one page ends the document normally. The
//! requested resolution is the page's DPI (PNM carries none), so the
//! physical size of the scan is kept on the fax page.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::convert::ConvertOptions;
use crate::decode::decode_into;
use crate::document::{
    Document, DocumentBuilder, MAX_DOCUMENT_BYTES, MAX_DOCUMENT_PAGES, Origin, WithDpi,
};
use crate::error::{CREATING_TEMP_FOLDER, ScanError};
use crate::files::{Limited, Links, blocking, on_page, read_limited};
use crate::tool::{self, MAX_TOOL_STDOUT, ToolInfo};

const SANE_UTILS: ToolInfo = ToolInfo {
    package: "sane-utils",
    purpose: "scanning with SANE",
};

/// The colour mode to ask the device for. Backends name their modes
/// differently; `Other` passes any name through.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub enum SaneMode {
    /// `Gray`: the best input for both text and photo conversion.
    #[default]
    Gray,
    /// `Color`: reduced to luminance here.
    Color,
    /// `Lineart`: the device thresholds (1-bit PBM output).
    Lineart,
    /// A backend-specific mode name.
    Other(String),
}

impl SaneMode {
    fn as_arg(&self) -> &str {
        match self {
            SaneMode::Gray => "Gray",
            SaneMode::Color => "Color",
            SaneMode::Lineart => "Lineart",
            SaneMode::Other(s) => s,
        }
    }
}

/// The scan area in millimetres (SANE's standard `-l -t -x -y`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScanArea {
    /// Left edge.
    pub left_mm: f64,
    /// Top edge.
    pub top_mm: f64,
    /// Width.
    pub width_mm: f64,
    /// Height.
    pub height_mm: f64,
}

/// How to run `scanimage`.
#[derive(Clone, Debug, PartialEq)]
pub struct SaneOptions {
    /// The SANE device name (`scanimage -L` lists them; `test` is SANE's
    /// test backend).
    pub device: String,
    /// Scan resolution in dpi. 200 is plenty for fine (204x196).
    pub resolution_dpi: u32,
    /// Colour mode.
    pub mode: SaneMode,
    /// `--source` (e.g. `Flatbed`, `ADF`, `Automatic Document Feeder`).
    pub source: Option<String>,
    /// The scan area; the device's default if unset.
    pub area: Option<ScanArea>,
    /// `None`: one page. `Some(n)`: batch mode, up to `n` pages or until
    /// the feeder is empty. A flatbed never runs out, hence the bound.
    pub pages: Option<u32>,
    /// Backend-specific options passed as they are, e.g.
    /// `["--test-picture", "Grid"]`.
    pub extra_args: Vec<String>,
    /// The `scanimage` program.
    pub program: PathBuf,
    /// Deadline for the whole scan.
    pub timeout: Duration,
}

impl SaneOptions {
    /// Options for `device` with the defaults: 200 dpi grey, one page.
    pub fn new(device: impl Into<String>) -> Self {
        SaneOptions {
            device: device.into(),
            resolution_dpi: 200,
            mode: SaneMode::Gray,
            source: None,
            area: None,
            pages: None,
            extra_args: Vec::new(),
            program: "scanimage".into(),
            timeout: Duration::from_secs(300),
        }
    }

    /// The scanimage arguments; `batch` is the file pattern for batch mode.
    pub fn args(&self, batch: Option<&Path>) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec![
            format!("--device-name={}", self.device).into(),
            "--format=pnm".into(),
            format!("--resolution={}", self.resolution_dpi).into(),
            format!("--mode={}", self.mode.as_arg()).into(),
        ];
        if let Some(source) = &self.source {
            a.push(format!("--source={source}").into());
        }
        if let Some(area) = &self.area {
            for (flag, v) in [
                ("-l", area.left_mm),
                ("-t", area.top_mm),
                ("-x", area.width_mm),
                ("-y", area.height_mm),
            ] {
                a.push(flag.into());
                a.push(format!("{v}").into());
            }
        }
        if let Some(pattern) = batch {
            let mut b = OsString::from("--batch=");
            b.push(pattern.as_os_str());
            a.push(b);
            if let Some(n) = self.pages {
                a.push(format!("--batch-count={n}").into());
            }
        }
        a.extend(self.extra_args.iter().map(OsString::from));
        a
    }

    fn validate(&self) -> Result<(), ScanError> {
        let bad = |reason: String| Err(ScanError::InvalidOptions { reason });
        if self.device.is_empty() {
            return bad("the SANE device name is empty".into());
        }
        if !(10..=4800).contains(&self.resolution_dpi) {
            return bad(format!(
                "scan resolution {} dpi is outside 10..=4800",
                self.resolution_dpi
            ));
        }
        if self.pages == Some(0) {
            return bad("a batch scan of 0 pages".into());
        }
        Ok(())
    }
}

/// Scans documents from one SANE device.
#[derive(Clone, Debug, PartialEq)]
pub struct SaneScanner {
    /// How to scan.
    pub sane: SaneOptions,
    /// How to convert.
    pub convert: ConvertOptions,
}

impl SaneScanner {
    /// A scanner with these options.
    pub fn new(sane: SaneOptions, convert: ConvertOptions) -> Self {
        SaneScanner { sane, convert }
    }

    /// Scans one document (one page, or a feeder's worth in batch mode).
    pub async fn scan(&self) -> Result<Document, ScanError> {
        self.sane.validate()?;
        let device = self.sane.device.clone();
        let subject = format!("device {device}");
        let origin = Origin::Sane {
            device: device.clone(),
        };
        let name = format!("scan from {device}");
        let dpi = f64::from(self.sane.resolution_dpi);
        let mut builder = DocumentBuilder::new(
            name.clone(),
            origin,
            &self.convert,
            MAX_DOCUMENT_PAGES,
            MAX_DOCUMENT_BYTES,
        );
        match self.sane.pages {
            None => {
                let args = self.sane.args(None);
                let out = self.run(&args, &subject).await?;
                let out = tool::check(&self.sane.program, &subject, out)?;
                if out.stdout.is_empty() {
                    return Err(self.failed(&subject, "no image data", &out));
                }
                blocking(&name.clone(), move || {
                    let mut sink = WithDpi {
                        builder: &mut builder,
                        dpi: (dpi, dpi),
                    };
                    decode_into(&name, &out.stdout, &mut sink)?;
                    builder.finish()
                })
                .await
            }
            Some(_) => {
                let dir = tempfile::Builder::new()
                    .prefix("faxgate-scan-")
                    .tempdir()
                    .map_err(|e| ScanError::io(std::env::temp_dir(), CREATING_TEMP_FOLDER, e))?;
                let pattern = dir.path().join("page-%06d.pnm");
                let args = self.sane.args(Some(&pattern));
                let out = self.run(&args, &subject).await?;
                let files = batch_pages(dir.path())?;
                let stderr = tool::stderr_text(&out);
                let feeder_empty = stderr.contains("out of documents");
                // A feeder that ran dry after some pages ends the batch normally.
                let ended_normally = out.status.success() || (feeder_empty && !files.is_empty());
                if !ended_normally {
                    return Err(self.failed(&subject, &out.status.to_string(), &out));
                }
                if files.is_empty() {
                    return Err(self.failed(&subject, "no pages scanned", &out));
                }
                builder.expect_pages(files.len())?;
                for (k, file) in files.into_iter().enumerate() {
                    let data = match read_limited(
                        &file,
                        MAX_TOOL_STDOUT,
                        "reading a scanned page",
                        Links::Refuse,
                    )
                    .await?
                    {
                        Limited::Data(data) => data,
                        Limited::TooLarge(size) => {
                            return Err(self.failed(
                                &subject,
                                &format!(
                                    "page {} is {size} bytes, more than the {MAX_TOOL_STDOUT} allowed for one page",
                                    k + 1
                                ),
                                &out,
                            ));
                        }
                    };
                    let n = name.clone();
                    builder = blocking(&name, move || {
                        let mut sink = WithDpi {
                            builder: &mut builder,
                            dpi: (dpi, dpi),
                        };
                        decode_into(&n, &data, &mut sink).map_err(|e| on_page(e, k + 1))?;
                        Ok(builder)
                    })
                    .await?;
                }
                builder.finish()
            }
        }
    }

    async fn run(
        &self,
        args: &[OsString],
        subject: &str,
    ) -> Result<std::process::Output, ScanError> {
        let args: Vec<&OsStr> = args.iter().map(OsString::as_os_str).collect();
        tool::run(
            &self.sane.program,
            &args,
            SANE_UTILS,
            subject,
            self.sane.timeout,
        )
        .await
    }

    fn failed(&self, subject: &str, status: &str, out: &std::process::Output) -> ScanError {
        ScanError::ToolFailed {
            tool: self.sane.program.display().to_string(),
            subject: subject.into(),
            status: status.into(),
            stderr: tool::stderr_text(out),
        }
    }
}

/// The page files of a batch scan, in page order (the pattern pads to six
/// digits, so the names sort).
fn batch_pages(dir: &Path) -> Result<Vec<PathBuf>, ScanError> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| ScanError::io(dir, "listing scanned pages", e))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "pnm"))
        .collect();
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_for_a_single_page() {
        let mut o = SaneOptions::new("test");
        o.resolution_dpi = 150;
        o.extra_args = vec!["--test-picture".into(), "Grid".into()];
        let a: Vec<String> = o
            .args(None)
            .into_iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            a,
            [
                "--device-name=test",
                "--format=pnm",
                "--resolution=150",
                "--mode=Gray",
                "--test-picture",
                "Grid"
            ]
        );
    }

    #[test]
    fn args_for_a_feeder_batch() {
        let mut o = SaneOptions::new("epson2:net:10.0.0.9");
        o.mode = SaneMode::Other("Grayscale".into());
        o.source = Some("ADF".into());
        o.pages = Some(5);
        o.area = Some(ScanArea {
            left_mm: 0.0,
            top_mm: 0.0,
            width_mm: 210.0,
            height_mm: 297.0,
        });
        let a: Vec<String> = o
            .args(Some(Path::new("/tmp/x/page-%06d.pnm")))
            .into_iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            a,
            [
                "--device-name=epson2:net:10.0.0.9",
                "--format=pnm",
                "--resolution=200",
                "--mode=Grayscale",
                "--source=ADF",
                "-l",
                "0",
                "-t",
                "0",
                "-x",
                "210",
                "-y",
                "297",
                "--batch=/tmp/x/page-%06d.pnm",
                "--batch-count=5"
            ]
        );
    }

    #[test]
    fn bad_options_are_refused() {
        let mut o = SaneOptions::new("");
        assert!(o.validate().is_err());
        o.device = "test".into();
        o.resolution_dpi = 5;
        assert!(o.validate().is_err());
        o.resolution_dpi = 200;
        o.pages = Some(0);
        assert!(o.validate().is_err());
    }
}
