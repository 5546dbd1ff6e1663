//! `faxgate convert`: PBM, TIFF-F, PNG, JPEG and PDF in; TIFF-F, PDF or
//! PBM out.
//!
//! Inputs are read into coded pages ([`FaxPage`]), brought to the chosen
//! resolution, and written in the format the output's extension names.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use faxgate_fax::{Coding, Resolution, pbm};

use crate::print::{Document, DocumentFormat, FaxPage, page::DEFAULT_DPI, page::rescale};

/// Arguments of `faxgate convert`.
#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// Input files, read by content: PBM and TIFF-F as fax pages; PNG,
    /// JPEG, other TIFFs, PNM and PDF (through pdftoppm) converted to A4
    /// fax pages. Pages are taken in order.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Output file: .tiff/.tif (TIFF-F), .pdf or .pbm.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Page resolution. Pages at another resolution are resampled; PBM
    /// input, which has none, is taken to be at this one (fine if unset).
    #[arg(long, value_enum)]
    pub resolution: Option<ResolutionArg>,
    /// Coding of the TIFF-F or PDF pages (default: MH for TIFF-F, as
    /// RFC 3949 profile S; MMR for PDF).
    #[arg(long, value_enum)]
    pub coding: Option<CodingArg>,
}

/// Fax resolutions by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ResolutionArg {
    /// 204x98 dpi.
    Standard,
    /// 204x196 dpi.
    Fine,
    /// 204x391 dpi.
    Superfine,
    /// 300x300 dpi.
    #[value(name = "300")]
    R300,
    /// 400x400 dpi.
    #[value(name = "400")]
    R400,
}

impl ResolutionArg {
    /// (x, y) dots per inch.
    pub fn dpi(self) -> (u32, u32) {
        match self {
            ResolutionArg::Standard => (204, 98),
            ResolutionArg::Fine => (204, 196),
            ResolutionArg::Superfine => (204, 391),
            ResolutionArg::R300 => (300, 300),
            ResolutionArg::R400 => (400, 400),
        }
    }
}

/// Fax codings by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CodingArg {
    /// T.4 one-dimensional (modified Huffman).
    Mh,
    /// T.4 two-dimensional (modified READ), K as T.4 recommends.
    Mr,
    /// T.6 (modified modified READ).
    Mmr,
}

impl CodingArg {
    /// The codec's coding (MR's K chosen from the resolution).
    pub fn coding(self) -> Coding {
        match self {
            CodingArg::Mh => Coding::Mh,
            CodingArg::Mr => Coding::Mr { k: 0 },
            CodingArg::Mmr => Coding::Mmr,
        }
    }
}

/// Reads fax pages from a file, by content (magic bytes), so a misnamed
/// file still reads. PBM and TIFF-F are read as fax pages (`dpi` is for
/// PBM, which has none); PNG, JPEG, other TIFFs, PNM and PDF go through
/// the scanner's file source (scaled to A4 fax width, text-mode bilevel).
pub async fn read_pages(path: &Path, dpi: (u32, u32)) -> anyhow::Result<Vec<FaxPage>> {
    let data = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let pages = if data.starts_with(b"II*\0") || data.starts_with(b"MM\0*") {
        FaxPage::from_tiff(&data)
            .with_context(|| format!("{} is not a readable TIFF-F file", path.display()))?
    } else if data.starts_with(b"P4") || data.starts_with(b"P1") {
        pbm::read_pbm_all(&data)
            .with_context(|| format!("{} is not a readable PBM file", path.display()))?
            .iter()
            .map(|b| FaxPage::from_bitmap(b, dpi, Coding::Mmr))
            .collect::<Result<_, _>>()
            .with_context(|| format!("while coding the pages of {}", path.display()))?
    } else {
        let resolution =
            Resolution::from_dpi(f64::from(dpi.0), f64::from(dpi.1)).unwrap_or(Resolution::Fine);
        let opts = faxgate_scanner::ConvertOptions {
            resolution,
            ..Default::default()
        };
        let doc = faxgate_scanner::load_file(path, &opts)
            .await
            .with_context(|| format!("while reading {} as an image or PDF", path.display()))?;
        doc.pages
            .iter()
            .map(|b| FaxPage::from_bitmap(b, resolution.dpi(), Coding::Mmr))
            .collect::<Result<_, _>>()
            .with_context(|| format!("while coding the pages of {}", path.display()))?
    };
    anyhow::ensure!(!pages.is_empty(), "{} has no pages", path.display());
    Ok(pages)
}

/// Runs `faxgate convert`.
pub async fn run(args: ConvertArgs) -> anyhow::Result<()> {
    let ext = args
        .output
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    let format = match ext.as_str() {
        "tif" | "tiff" => "tiff",
        "pdf" => "pdf",
        "pbm" => "pbm",
        _ => bail!(
            "output {}: the extension must be .tiff, .tif, .pdf or .pbm",
            args.output.display()
        ),
    };
    let pbm_dpi = args.resolution.map_or(DEFAULT_DPI, ResolutionArg::dpi);
    let mut pages = Vec::new();
    for input in &args.inputs {
        pages.extend(read_pages(input, pbm_dpi).await?);
    }
    let default_coding = if format == "pdf" {
        Coding::Mmr
    } else {
        Coding::Mh
    };
    let coding = args.coding.map_or(default_coding, CodingArg::coding);
    // Bring every page to the requested resolution and coding; pages
    // already there keep their bytes.
    let mut out_pages = Vec::with_capacity(pages.len());
    for (i, page) in pages.into_iter().enumerate() {
        let want_dpi = args.resolution.map_or(page.dpi(), ResolutionArg::dpi);
        let same_coding = matches!(
            (page.coding().coding(), coding),
            (Coding::Mh, Coding::Mh)
                | (Coding::Mmr, Coding::Mmr)
                | (Coding::Mr { .. }, Coding::Mr { .. })
        );
        if want_dpi == page.dpi() && (same_coding || format == "pbm") {
            out_pages.push(page);
            continue;
        }
        let bmp = page
            .to_bitmap()
            .with_context(|| format!("while decoding page {}", i + 1))?;
        let bmp = rescale(&bmp, page.dpi(), want_dpi);
        out_pages.push(
            FaxPage::from_bitmap(&bmp, want_dpi, coding)
                .with_context(|| format!("while coding page {}", i + 1))?,
        );
    }
    let title = args
        .output
        .file_stem()
        .map_or_else(|| "fax".into(), |s| s.to_string_lossy().into_owned());
    let doc = Document {
        title,
        pages: out_pages,
    };
    let bytes = match format {
        "tiff" => DocumentFormat::Tiff(coding).render(&doc).with_context(|| {
            "while writing TIFF-F (pages must be at 204x98, 204x196, 204x391, 300x300 or 400x400 dpi; use --resolution)"
        })?,
        "pdf" => DocumentFormat::Pdf.render(&doc)?,
        _ => {
            let mut out = Vec::new();
            for (i, p) in doc.pages.iter().enumerate() {
                let bmp = p
                    .to_bitmap()
                    .with_context(|| format!("while decoding page {}", i + 1))?;
                out.extend_from_slice(&pbm::write_pbm(&bmp));
            }
            out
        }
    };
    write_atomically(&args.output, &bytes)?;
    tracing::info!(
        output = %args.output.display(),
        pages = doc.pages.len(),
        bytes = bytes.len(),
        "Converted."
    );
    Ok(())
}

/// Writes a file through a temporary file in the same folder, so a
/// reader never sees half of it, and syncs it and the folder.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".faxgate-")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    tmp.write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))?;
    // Durable before it is reported (`faxgate modem receive` confirms a
    // page with MCF only after this returns).
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("cannot write {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync {}", dir.display()))?;
    Ok(())
}
