//! `faxgate print`: prints a fax document (TIFF-F or PBM, or an image or
//! PDF converted to fax pages) on a printer named by URI, and reports
//! where it went; `--status` only shows the printer's status.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::print::{Document, PrintError, Printer, page::DEFAULT_DPI};

/// Arguments of `faxgate print`.
#[derive(Debug, Args)]
pub struct PrintArgs {
    /// The document: TIFF-F or PBM (printed as they are), or PNG, JPEG,
    /// another TIFF or PDF (converted to A4 fax pages at fine resolution).
    /// Not needed with --status.
    #[arg(required_unless_present = "status")]
    pub file: Option<PathBuf>,
    /// Printer URI: ipp://host[:port]/path, cups:QUEUE (or lp:QUEUE),
    /// dir:/folder or file:///folder (?format=pdf|tiff|tiff-mmr),
    /// device:/dev/... (?format=pdf|pwg&dpi=N). Not used with --via-mail.
    #[arg(long, short, required_unless_present = "via_mail", default_value = "")]
    pub printer: String,
    /// Job title (default: the file name).
    #[arg(long)]
    pub title: Option<String>,
    /// Only show the printer's status.
    #[arg(long)]
    pub status: bool,
    /// How long to watch an IPP job before giving up.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub job_timeout: std::time::Duration,
    /// Printing through a firewall, basic model (seed 000).
    #[command(flatten)]
    pub via: super::print_mail::ViaMailArgs,
}

/// Runs `faxgate print`.
pub async fn run(args: PrintArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let file = || {
        args.file
            .clone()
            .context("a FILE to print is needed (only --status works without one)")
    };
    if args.via.via_mail.is_some() {
        return super::print_mail::run(&args.via, &file()?, args.title, shutdown).await;
    }
    let printer = Printer::from_uri(&args.printer)?.with_job_timeout(args.job_timeout);
    if args.status {
        println!("{}", printer.status().await);
        return Ok(());
    }
    let file = file()?;
    let pages = super::convert::read_pages(&file, DEFAULT_DPI).await?;
    let title = args.title.unwrap_or_else(|| {
        file.file_name()
            .map_or_else(|| "fax".into(), |s| s.to_string_lossy().into_owned())
    });
    let doc = Document { title, pages };
    let report = tokio::select! {
        r = printer.print(&doc) => r
            .map_err(|e| anyhow::anyhow!("{e}{}", hint(&e)))
            .with_context(|| format!("while printing {}", file.display()))?,
        () = shutdown.cancelled() => anyhow::bail!("interrupted before the printer confirmed the job"),
    };
    println!(
        "printed {} ({} pages, {} bytes of {}) to {}",
        file.display(),
        doc.pages.len(),
        report.bytes,
        report.format,
        report.destination
    );
    Ok(())
}

/// What the operator can do about a failed job.
fn hint(e: &PrintError) -> &'static str {
    match e {
        PrintError::Stopped { status, .. } if status.has("media-empty") => " (load paper)",
        PrintError::Stopped { status, .. } if status.has("media-jam") => " (clear the paper jam)",
        // The job is at the printer: running the command again would
        // print it twice.
        PrintError::JobTimeout { .. } => {
            " (the job is still at the printer; look there before printing it again)"
        }
        // The printer may have the job; or the device some of the bytes.
        PrintError::OutcomeUnknown { .. } => {
            " (the printer may have the job: look at its queue before printing it again)"
        }
        PrintError::DeviceStuck { .. } => {
            " (part of the document may have reached the device; check it before printing again)"
        }
        e if e.keeps_job() => " (nothing was printed; try again when the printer is ready)",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job that outlived the watch is still at the printer: the hint
    /// must not invite the operator to print it again.
    #[test]
    fn a_timed_out_job_is_not_called_unprinted() {
        let e = PrintError::JobTimeout {
            printer: "ipp://p/ipp/print".into(),
            job_id: 7,
            state: "processing".into(),
            waited: std::time::Duration::from_secs(300),
        };
        assert!(e.keeps_job());
        let h = hint(&e);
        assert!(h.contains("still at the printer"), "{h}");
        assert!(!h.contains("nothing was printed"), "{h}");
        for e in [
            PrintError::OutcomeUnknown {
                printer: "ipp://p/ipp/print".into(),
                operation: "Print-Job",
                reason: "connection reset".into(),
                whole: true,
            },
            PrintError::DeviceStuck {
                device: "device:/dev/usb/lp0".into(),
                reason: "took nothing for 60 s".into(),
            },
        ] {
            assert!(e.keeps_job());
            assert!(
                !hint(&e).contains("nothing was printed"),
                "{e}: {}",
                hint(&e)
            );
        }
    }
}
