//! `faxgate appliance` (the daemon) and the front-panel commands that talk
//! to a running appliance over its loopback API: `send`, `scan-send`,
//! `users`, `jobs`, `cancel` and `inbox`.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use faxgate_config::ApplianceConfig;
use faxgate_fax::t30::frame::{line_widths, width_class};
use faxgate_fax::t30::{Params, fit_page};
use faxgate_fax::tiff::{TiffWriterOptions, write_tiff};
use faxgate_fax::{Bitmap, Coding, Resolution};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::convert::{ResolutionArg, read_pages};
use crate::topology::Appliance;

/// Arguments of `faxgate appliance`.
#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// The appliance config (see config/examples/appliance.toml).
    #[arg(long, short)]
    config: PathBuf,
    /// How long shutdown may take before actors are abandoned.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    shutdown_deadline: Duration,
}

/// Runs the daemon until SIGINT/SIGTERM.
pub async fn daemon(args: DaemonArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let cfg = ApplianceConfig::from_file(&args.config)?;
    let app = Appliance::start(cfg, shutdown.clone()).await?;
    println!("appliance: panel API on http://{}", app.panel_addr);
    shutdown.cancelled().await;
    tracing::info!("Shutting down: sessions park at a page boundary.");
    app.stop(args.shutdown_deadline).await;
    Ok(())
}

/// How the panel commands find the appliance.
#[derive(Debug, Args)]
pub struct PanelTarget {
    /// The panel API address.
    #[arg(long, env = "FAXGATE_PANEL", default_value = "127.0.0.1:4680")]
    panel: SocketAddr,
    /// Read the panel address from this appliance config instead.
    #[arg(long, short)]
    config: Option<PathBuf>,
}

impl PanelTarget {
    fn addr(&self) -> anyhow::Result<SocketAddr> {
        match &self.config {
            Some(path) => Ok(ApplianceConfig::from_file(path)?.panel.listen),
            None => Ok(self.panel),
        }
    }
}

/// Arguments of `faxgate send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    #[command(flatten)]
    target: PanelTarget,
    /// The relay user to send to.
    #[arg(long)]
    to: String,
    /// Files to send, in order: TIFF-F, PBM, PNG, JPEG, PDF.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Resolution of the document (pages are scaled to it).
    #[arg(long, value_enum, default_value = "fine")]
    resolution: ResolutionArg,
    /// A title for the job list (default: the first file's name).
    #[arg(long)]
    title: Option<String>,
    /// Return once the job is queued instead of following it.
    #[arg(long)]
    no_wait: bool,
}

/// Arguments of `faxgate scan-send`.
#[derive(Debug, Args)]
pub struct ScanSendArgs {
    #[command(flatten)]
    target: PanelTarget,
    /// The relay user to send to.
    #[arg(long)]
    to: String,
    /// Return once the job is queued instead of following it.
    #[arg(long)]
    no_wait: bool,
}

/// Arguments of the listing commands.
#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    target: PanelTarget,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Arguments of `faxgate cancel`.
#[derive(Debug, Args)]
pub struct CancelArgs {
    #[command(flatten)]
    target: PanelTarget,
    /// The job id (`faxgate jobs` lists them).
    job: String,
}

/// Arguments of `faxgate inbox`.
#[derive(Debug, Args)]
pub struct InboxArgs {
    #[command(flatten)]
    target: PanelTarget,
    #[command(subcommand)]
    action: Option<InboxAction>,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// What `faxgate inbox` does besides listing.
#[derive(Debug, Subcommand)]
pub enum InboxAction {
    /// Print a held document.
    Release {
        /// The document number.
        id: i64,
    },
}

/// Arguments of `faxgate history`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    target: PanelTarget,
    /// Only this subject: a job id, `inbox:N` or `session:USER`.
    subject: Option<String>,
    /// Print the API's JSON instead of lines.
    #[arg(long)]
    json: bool,
}

/// `faxgate history`.
pub async fn history(args: HistoryArgs) -> anyhow::Result<()> {
    let path = match &args.subject {
        Some(s) => format!("/api/history?subject={}", urlencode(s)),
        None => "/api/history".to_owned(),
    };
    let v = api(args.target.addr()?, "GET", &path, None).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    for e in v.as_array().into_iter().flatten().rev() {
        println!(
            "{}  {:<20}  {}",
            crate::appliance::store::format_ms(e["at_ms"].as_i64().unwrap_or(0)),
            e["subject"].as_str().unwrap_or(""),
            e["message"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

/// `faxgate send`.
pub async fn send(args: SendArgs) -> anyhow::Result<()> {
    let addr = args.target.addr()?;
    let dpi = args.resolution.dpi();
    let resolution =
        Resolution::from_dpi(f64::from(dpi.0), f64::from(dpi.1)).context("unknown resolution")?;
    let mut pages: Vec<Bitmap> = Vec::new();
    for file in &args.files {
        for (i, p) in read_pages(file, dpi).await?.into_iter().enumerate() {
            let bmp = p
                .to_bitmap()
                .with_context(|| format!("page {} of {} does not decode", i + 1, file.display()))?;
            let bmp = to_fax_width(&bmp, p.dpi(), resolution);
            if let Some(first) = pages.first()
                && first.width() != bmp.width()
            {
                bail!(
                    "page {} of {} is {} pels wide, but the document's first page is {}; send documents of one paper size",
                    i + 1,
                    file.display(),
                    bmp.width(),
                    first.width()
                );
            }
            pages.push(bmp);
        }
    }
    let count = pages.len();
    let tiff = tokio::task::spawn_blocking(move || {
        write_tiff(
            &pages,
            Coding::Mmr,
            resolution,
            TiffWriterOptions {
                software: Some(format!("faxgate {}", env!("CARGO_PKG_VERSION"))),
                date_time: None,
                total_pages: u16::try_from(count).ok(),
            },
        )
    })
    .await??;
    let title = args.title.clone().unwrap_or_else(|| {
        args.files[0]
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "document".into())
    });
    let path = format!(
        "/api/jobs?to={}&title={}",
        urlencode(&args.to),
        urlencode(&title)
    );
    let job = api(addr, "POST", &path, Some(tiff)).await?;
    let id = job["id"].as_str().context("the panel returned no job id")?;
    println!("job {id}: {count} pages to {} queued", args.to);
    if args.no_wait {
        return Ok(());
    }
    follow(addr, id).await
}

/// A page read from a file (`dpi` as the file says) brought to
/// `target`, paper to paper: a page whose width is a T.4 paper (A4, B4, A3)
/// at its resolution lands on that paper's scan line at `target` (1728
/// pels at fine become 2592 at 300 dpi, not 2542), any other on the
/// nearest paper, scaled with its aspect kept. The panel refuses a width
/// that is no T.4 scan line, and the outbox could not send it.
fn to_fax_width(bmp: &Bitmap, dpi: (u32, u32), target: Resolution) -> Bitmap {
    // A page at no fax resolution is scaled to `target`'s first.
    let (bmp, from) = match Resolution::from_dpi(f64::from(dpi.0), f64::from(dpi.1)) {
        Some(r) => (Cow::Borrowed(bmp), r),
        None => (
            Cow::Owned(crate::print::page::rescale(bmp, dpi, target.dpi())),
            target,
        ),
    };
    let class = width_class(bmp.width(), from).unwrap_or_else(|| {
        // Paper widths in 8 pels/mm terms, as fit_page compares them.
        let paper = u64::from(bmp.width()) * 204 / u64::from(from.dpi().0);
        let a4_b4_a3 = line_widths(Resolution::Standard);
        (0..a4_b4_a3.len())
            .min_by_key(|&c| paper.abs_diff(u64::from(a4_b4_a3[c])))
            .unwrap_or(0)
    });
    let params = Params {
        resolution: target,
        width: line_widths(target)[class],
        coding: Coding::Mmr,
        ecm: false,
    };
    fit_page(&bmp, from, &params)
}

/// `faxgate scan-send`.
pub async fn scan_send(args: ScanSendArgs) -> anyhow::Result<()> {
    let addr = args.target.addr()?;
    let job = api(
        addr,
        "POST",
        &format!("/api/scan-send?to={}", urlencode(&args.to)),
        None,
    )
    .await?;
    let id = job["id"].as_str().context("the panel returned no job id")?;
    println!(
        "job {id}: {} scanned pages to {} queued",
        job["pages"], args.to
    );
    if args.no_wait {
        return Ok(());
    }
    follow(addr, id).await
}

/// Follows a job with a progress bar until it is done, failed or
/// cancelled; fails unless it is done.
async fn follow(addr: SocketAddr, id: &str) -> anyhow::Result<()> {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} pages  {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    loop {
        let job = api(addr, "GET", &format!("/api/jobs/{id}"), None).await?;
        bar.set_length(job["pages"].as_u64().unwrap_or(0));
        bar.set_position(job["delivered"].as_u64().unwrap_or(0));
        bar.set_message(job["status"].as_str().unwrap_or("").to_owned());
        match job["state"].as_str() {
            Some("done") => {
                bar.finish();
                println!("job {id}: {}", job["status"].as_str().unwrap_or("done"));
                return Ok(());
            }
            Some(s @ ("failed" | "cancelled")) => {
                bar.abandon();
                bail!("job {id} {s}: {}", job["status"].as_str().unwrap_or(""));
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// `faxgate users`.
pub async fn users(args: ListArgs) -> anyhow::Result<()> {
    let v = api(args.target.addr()?, "GET", "/api/users", None).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{:<24} {:>7} {:>11}  reachable",
        "user", "vacant", "connections"
    );
    for u in v.as_array().into_iter().flatten() {
        let vacant = u["vacant"].as_u64().unwrap_or(0);
        println!(
            "{:<24} {:>7} {:>11}  {}",
            u["user"].as_str().unwrap_or("?"),
            vacant,
            u["connections"].as_u64().unwrap_or(0),
            if vacant > 0 { "yes" } else { "busy" }
        );
    }
    Ok(())
}

/// `faxgate jobs`.
pub async fn jobs(args: ListArgs) -> anyhow::Result<()> {
    let v = api(args.target.addr()?, "GET", "/api/jobs", None).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("{:<16}  {:<16}  {:<24}  status", "job", "to", "title");
    for j in v.as_array().into_iter().flatten() {
        println!(
            "{:<16}  {:<16}  {:<24}  {}",
            j["id"].as_str().unwrap_or("?"),
            j["to"].as_str().unwrap_or("?"),
            j["title"].as_str().unwrap_or(""),
            j["status"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

/// `faxgate cancel`.
pub async fn cancel(args: CancelArgs) -> anyhow::Result<()> {
    let v = api(
        args.target.addr()?,
        "POST",
        &format!("/api/jobs/{}/cancel", urlencode(&args.job)),
        None,
    )
    .await?;
    println!(
        "job {}: cancel requested ({})",
        args.job,
        v["state"].as_str().unwrap_or("?")
    );
    Ok(())
}

/// `faxgate inbox`.
pub async fn inbox(args: InboxArgs) -> anyhow::Result<()> {
    let addr = args.target.addr()?;
    if let Some(InboxAction::Release { id }) = args.action {
        let v = api(addr, "POST", &format!("/api/inbox/{id}/release"), None).await?;
        println!("inbox {id}: released for printing ({} pages)", v["pages"]);
        return Ok(());
    }
    let v = api(addr, "GET", "/api/inbox", None).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{:>5}  {:<16}  {:>5}  {:<11}  {:<8}  note",
        "id", "from", "pages", "state", "print"
    );
    for d in v.as_array().into_iter().flatten() {
        println!(
            "{:>5}  {:<16}  {:>5}  {:<11}  {:<8}  {}",
            d["id"],
            d["from"].as_str().unwrap_or("?"),
            d["pages"],
            d["state"].as_str().unwrap_or("?"),
            d["print"].as_str().unwrap_or("?"),
            d["print_reason"]
                .as_str()
                .or(d["archived"].as_str())
                .unwrap_or("")
        );
    }
    Ok(())
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One request to the panel API; an error status becomes an error with
/// the panel's message. It carries the panel's own Host and
/// [`crate::appliance::panel::PANEL_HEADER`], which the panel requires of
/// every request that changes something.
pub async fn api(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
) -> anyhow::Result<Value> {
    use http_body_util::{BodyExt as _, Full};
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| {
            format!("cannot reach the appliance's panel at {addr}; is `faxgate appliance` running?")
        })?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header(crate::appliance::panel::PANEL_HEADER, "1")
        .header("content-type", "image/tiff")
        .body(Full::new(bytes::Bytes::from(body.unwrap_or_default())))?;
    let resp = sender.send_request(req).await?;
    let code = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if !code.is_success() {
        let msg = v["error"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
        bail!("the appliance answered {code}: {msg}");
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `faxgate send` maps paper to paper: every page lands on the T.4
    /// scan line of the target resolution for its paper (so the panel and
    /// the outbox take it), with the lines scaled by the resolutions.
    #[test]
    fn send_maps_each_page_to_the_t4_width_of_the_target_resolution() {
        use Resolution::{Fine, R300, R400, Standard, SuperFine};
        let cases = [
            // (width, height, dpi of the file, target, width, height)
            (1728, 196, Fine.dpi(), R300, 2592, 300),
            (2592, 300, R300.dpi(), Fine, 1728, 196),
            (1728, 98, Standard.dpi(), Fine, 1728, 196),
            (2048, 196, Fine.dpi(), R400, 4096, 400),
            (3648, 300, R300.dpi(), SuperFine, 2432, 391),
            (1728, 196, Fine.dpi(), Fine, 1728, 196),
            // No T.4 width: scaled onto the nearest paper (A4 here), the
            // aspect kept; 2480 is A4 as a 300 dpi scanner makes it.
            (1700, 200, Fine.dpi(), Fine, 1728, 203),
            (2480, 600, R300.dpi(), Fine, 1728, 402),
            // No fax resolution: scaled to the target first, then as above.
            (4960, 1200, (600, 600), R300, 2592, 615),
        ];
        for (w, h, dpi, target, want_w, want_h) in cases {
            let page = to_fax_width(&Bitmap::new(w, h), dpi, target);
            assert_eq!(
                (page.width(), page.height()),
                (want_w, want_h),
                "{w}x{h} at {dpi:?} to {target:?}"
            );
        }
    }

    /// What is black stays where it was on the paper: the right edge of
    /// an A4 page at fine is still near the right edge at 300 dpi.
    #[test]
    fn send_keeps_the_page_content_in_place() {
        let mut bmp = Bitmap::with_width(1728);
        let mut row = vec![0u8; 1728 / 8];
        row[200] = 0xFF; // pels 1600..1608
        for _ in 0..4 {
            bmp.push_row(&row);
        }
        let page = to_fax_width(&bmp, Resolution::Fine.dpi(), Resolution::R300);
        let black: Vec<usize> = (0..2592)
            .filter(|&x| page.row(0)[x / 8] & (0x80 >> (x % 8)) != 0)
            .collect();
        let (first, last) = (black[0], black[black.len() - 1]);
        // 1600/204 in = 2353 pels at 300 dpi.
        assert!((2350..=2356).contains(&first), "{first}");
        assert!((2362..=2368).contains(&last), "{last}");
    }
}
