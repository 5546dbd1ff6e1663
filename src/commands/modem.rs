//! `faxgate modem`: faxes over a telephone line, through a Class 1 fax
//! modem on a serial port (or a software modem's pty, such as iaxmodem's).
//!
//! `send` dials a number and sends files as one fax; `receive` waits for
//! calls and keeps each fax received as a TIFF-F file. Both run T.30 in
//! faxgate (the modem only modulates), with TCF training, and with ECM
//! (and so MMR) when both ends offer it, framed in faxgate (HDLC at high
//! speed); `--no-ecm` turns it off.

use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use faxgate_fax::t30::{self, Capabilities, Role, Timers};
use faxgate_fax::{Coding, Resolution};
use faxgate_modem::class1::Class1;
use faxgate_modem::fax::{self, Page};
use faxgate_modem::port::SerialPort;
use tokio_util::sync::CancellationToken;

use crate::commands::convert::{ResolutionArg, read_pages, write_atomically};
use crate::print::{Document, DocumentFormat, FaxPage};

/// Arguments of `faxgate modem`.
#[derive(Debug, Args)]
pub struct ModemArgs {
    #[command(subcommand)]
    command: ModemCommand,
}

#[derive(Debug, Subcommand)]
enum ModemCommand {
    /// Dial a number and send files as one fax.
    Send(SendArgs),
    /// Answer calls and keep each fax received as a TIFF-F file.
    Receive(ReceiveArgs),
}

/// The modem and our identity on the line.
#[derive(Debug, Args)]
struct LineArgs {
    /// The modem's serial device, e.g. /dev/ttyS0 or /dev/ttyIAX0.
    #[arg(long)]
    device: String,
    /// Our fax identity (TSI when sending, CSI when receiving): up to 20
    /// digits, spaces and '+'.
    #[arg(long, default_value = "")]
    ident: String,
    /// An extra AT command (without "AT") sent before +FCLASS=1; may be
    /// given more than once.
    #[arg(long = "init")]
    init: Vec<String>,
    /// Neither offer nor use error correction mode (ECM), and so no MMR:
    /// pages go MH or MR, with retraining for a bad line.
    #[arg(long)]
    no_ecm: bool,
}

#[derive(Debug, Args)]
struct SendArgs {
    #[command(flatten)]
    line: LineArgs,
    /// The number to dial.
    #[arg(long)]
    to: String,
    /// Files to send, in order: PBM, TIFF-F, PNG, JPEG or PDF.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// The resolution PBM input is taken to be at (fine if unset).
    #[arg(long, value_enum)]
    resolution: Option<ResolutionArg>,
}

#[derive(Debug, Args)]
struct ReceiveArgs {
    #[command(flatten)]
    line: LineArgs,
    /// Folder for the received faxes (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Calls to take before exiting; 0 answers calls until stopped.
    #[arg(long, default_value_t = 1)]
    calls: u32,
}

/// Runs `faxgate modem`.
pub async fn run(args: ModemArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    match args.command {
        ModemCommand::Send(a) => send(a, shutdown).await,
        ModemCommand::Receive(a) => receive(a, shutdown).await,
    }
}

fn t30_config(line: &LineArgs) -> t30::Config {
    let mut caps = Capabilities::all();
    if line.no_ecm {
        caps.ecm = false;
        caps.mmr = false;
    }
    t30::Config {
        role: Role::Answerer,
        ident: line.ident.clone(),
        caps,
        timers: Timers::default(),
        non_standard: None,
        max_bad_percent: 10,
        max_consecutive_bad: 32,
        training: true,
    }
}

async fn open(line: &LineArgs) -> anyhow::Result<Class1<SerialPort>> {
    let port = SerialPort::open(&line.device)?;
    let mut modem = Class1::on_port(port)?;
    modem
        .init(&line.init)
        .await
        .with_context(|| format!("while setting up the modem on {}", line.device))?;
    Ok(modem)
}

async fn send(args: SendArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let dpi = args
        .resolution
        .map_or(crate::print::page::DEFAULT_DPI, ResolutionArg::dpi);
    let mut pages = Vec::new();
    for file in &args.files {
        for (i, p) in read_pages(file, dpi).await?.into_iter().enumerate() {
            let (x, y) = p.dpi();
            let resolution =
                Resolution::from_dpi(f64::from(x), f64::from(y)).with_context(|| {
                    format!(
                        "{} page {}: {x}x{y} dpi is no fax resolution",
                        file.display(),
                        i + 1
                    )
                })?;
            let bitmap = p
                .to_bitmap()
                .with_context(|| format!("while decoding {} page {}", file.display(), i + 1))?;
            pages.push(Page { bitmap, resolution });
        }
    }
    let Some(first) = pages.first() else {
        bail!("no pages to send");
    };
    let form = (first.resolution, first.bitmap.width());
    let count = u32::try_from(pages.len()).context("too many pages")?;
    let mut modem = open(&args.line).await?;
    let mut doc = fax::InMemory::new(&pages);
    let ended = {
        let call = fax::send(
            &mut modem,
            &args.to,
            t30_config(&args.line),
            count,
            form,
            &mut doc,
        );
        tokio::select! {
            r = call => Some(r),
            () = shutdown.cancelled() => None,
        }
    };
    let outcome = match ended {
        Some(Ok(o)) => o,
        Some(Err(e)) => {
            return Err(anyhow::Error::new(e).context(format!(
                "while faxing {} ({} of {count} page(s) confirmed before this)",
                args.to, doc.delivered
            )));
        }
        None => {
            modem.hangup().await.ok();
            bail!(
                "stopped; the call to {} was hung up after {} of {count} page(s)",
                args.to,
                doc.delivered
            );
        }
    };
    let remote = outcome.remote_ident.clone().unwrap_or_default();
    match outcome.result {
        Ok(()) => {
            println!(
                "sent {} page(s) to {} (remote {remote:?})",
                outcome.pages, args.to
            );
            Ok(())
        }
        Err(failure) => bail!(
            "the fax to {} failed after {} of {} page(s): {failure}",
            args.to,
            outcome.pages,
            pages.len()
        ),
    }
}

async fn receive(args: ReceiveArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let mut modem = open(&args.line).await?;
    tracing::info!(device = %args.line.device, "Waiting for calls.");
    let mut taken = 0u32;
    while args.calls == 0 || taken < args.calls {
        tokio::select! {
            r = modem.wait_for_ring() => r?,
            () = shutdown.cancelled() => return Ok(()),
        }
        taken += 1;
        let stamp = humantime::format_rfc3339_seconds(SystemTime::now())
            .to_string()
            .replace(':', "");
        let path = args.out.join(format!("fax-{stamp}-{taken}.tif"));
        let mut store = TiffFile {
            path: path.clone(),
            pages: Vec::new(),
        };
        let ended = {
            let call = fax::receive(&mut modem, t30_config(&args.line), &mut store);
            tokio::select! {
                r = call => Some(r),
                () = shutdown.cancelled() => None,
            }
        };
        let Some(outcome) = ended else {
            modem.hangup().await.ok();
            if !store.pages.is_empty() {
                println!(
                    "stopped; {} page(s) received so far are in {}",
                    store.pages.len(),
                    path.display()
                );
            }
            return Ok(());
        };
        match outcome {
            Ok(o) => {
                let from = o.remote_ident.clone().unwrap_or_default();
                match o.result {
                    Ok(()) => println!(
                        "received {} page(s) from {from:?} into {}",
                        o.pages,
                        path.display()
                    ),
                    Err(f) if o.pages > 0 => println!(
                        "received {} page(s) from {from:?} into {} before the call failed: {f}",
                        o.pages,
                        path.display()
                    ),
                    Err(f) => eprintln!("faxgate: a call from {from:?} brought no page: {f}"),
                }
            }
            Err(e) => {
                eprintln!("faxgate: the call failed: {e:#}");
                if !store.pages.is_empty() {
                    println!(
                        "received {} page(s) into {} before the call failed",
                        store.pages.len(),
                        path.display()
                    );
                }
                // The modem may be left mid-command: set it up again.
                modem.init(&args.line.init).await.with_context(|| {
                    format!("while setting up the modem on {} again", args.line.device)
                })?;
            }
        }
    }
    Ok(())
}

/// A received fax as one TIFF-F file: each page is written (atomically,
/// with the ones before it) before MCF confirms it.
struct TiffFile {
    path: PathBuf,
    pages: Vec<FaxPage>,
}

impl fax::Pages for TiffFile {
    async fn page(
        &mut self,
        _remote_ident: Option<&str>,
        index: u32,
        params: t30::Params,
        bmp: faxgate_fax::Bitmap,
    ) -> Result<(), String> {
        // Synchronous writes: this command runs one call at a time.
        let page = FaxPage::from_bitmap(&bmp, params.resolution.dpi(), Coding::Mh)
            .map_err(|e| format!("coding page {}: {e}", index + 1))?;
        self.pages.push(page);
        let doc = Document {
            title: "fax".into(),
            pages: self.pages.clone(),
        };
        let bytes = DocumentFormat::Tiff(Coding::Mh)
            .render(&doc)
            .map_err(|e| format!("{e:#}"))?;
        write_atomically(&self.path, &bytes).map_err(|e| format!("{e:#}"))
    }
}
