//! `faxgate bench fax`: a relay and two appliances on loopback (TLS, as
//! in the demo) send a 10-page fine-resolution document, several rounds.
//! Reported, each with its same-run reference:
//!
//! * pages per second through one session, send to done;
//! * time from send to the first page durable at the receiver, and to the
//!   whole document printed (PDF written), against what a 14.4 kbit/s
//!   line needs for the first page's and the document's coded size
//!   (the coding the session negotiated: MMR with ECM).

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use faxgate_fax::Coding;
use faxgate_fax::t30::{self, Capabilities};
use faxgate_fax::tiff::{TiffWriterOptions, write_tiff};
use tokio_util::sync::CancellationToken;

use super::appliance::api;
use super::demo::Pair;
use crate::appliance::BusEvent;
use crate::print::FaxPage;

const SAMPLE: &[u8] = include_bytes!("../../assets/sample.tif");

/// Runs the benchmark.
pub async fn run(pages: usize, rounds: usize, shutdown: CancellationToken) -> anyhow::Result<()> {
    let sample = FaxPage::from_tiff(SAMPLE)?;
    let resolution = sample[0].resolution().context("sample has no resolution")?;
    let bitmaps: Vec<_> = (0..pages)
        .map(|i| sample[i % sample.len()].to_bitmap())
        .collect::<Result<_, _>>()?;
    let params = t30::negotiate(
        &Capabilities::all(),
        &Capabilities::all(),
        resolution,
        bitmaps[0].width(),
    )
    .map_err(|f| anyhow::anyhow!("negotiation: {f}"))?;
    let coded: Vec<usize> = bitmaps
        .iter()
        .map(|b| t30::encode_page(b, &params).map(|v| v.len()))
        .collect::<Result<_, _>>()?;
    let total: usize = coded.iter().sum();
    let line = |bytes: usize| bytes as f64 * 8.0 / 14_400.0;
    let tiff = write_tiff(
        &bitmaps,
        Coding::Mmr,
        resolution,
        TiffWriterOptions {
            software: None,
            date_time: None,
            total_pages: None,
        },
    )?;

    let dir = tempfile::tempdir()?;
    let pair = Pair::start(
        dir.path(),
        &dir.path().join("printed"),
        "pdf",
        false,
        &shutdown,
    )
    .await?;
    println!(
        "fax: {pages} pages, {} coded as {:?} (ECM {}), {total} bytes; {rounds} rounds on loopback TLS through the relay",
        crate::appliance::store::resolution_name(params.resolution),
        params.coding,
        params.ecm
    );
    let mut pps = Vec::new();
    let mut first = Vec::new();
    let mut printed = Vec::new();
    for _ in 0..rounds {
        let mut bus = pair.osaka.bus.subscribe();
        let mut tbus = pair.tokyo.bus.subscribe();
        let t0 = Instant::now();
        let job = api(
            pair.tokyo.panel_addr,
            "POST",
            "/api/jobs?to=osaka&title=bench",
            Some(tiff.clone()),
        )
        .await?;
        let id = job["id"].as_str().context("no job id")?.to_owned();
        let (mut t_first, mut t_done, mut t_print) = (None, None, None);
        let deadline = t0 + Duration::from_secs(120);
        while t_first.is_none() || t_done.is_none() || t_print.is_none() {
            if Instant::now() > deadline {
                bail!("the bench job did not finish in 120 s");
            }
            tokio::select! {
                e = bus.recv() => match e? {
                    BusEvent::PageStored { job_id, page: 1, .. } if job_id == id => t_first = Some(t0.elapsed()),
                    BusEvent::Inbox(d) if d.job_id == id && d.print == crate::appliance::store::PrintState::Printed => t_print = Some(t0.elapsed()),
                    _ => {}
                },
                e = tbus.recv() => if let BusEvent::Job(j) = e? && j.id == id {
                    match j.state {
                        crate::appliance::store::JobState::Done => t_done = Some(t0.elapsed()),
                        s if s.is_final() => bail!("bench job ended {s:?}: {j}"),
                        _ => {}
                    }
                },
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        let (f, d, p) = (
            t_first.unwrap_or_default(),
            t_done.unwrap_or_default(),
            t_print.unwrap_or_default(),
        );
        pps.push(pages as f64 / d.as_secs_f64());
        first.push(f.as_secs_f64());
        printed.push(p.as_secs_f64());
    }
    pair.stop().await;
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (pps, first, printed) = (med(&mut pps), med(&mut first), med(&mut printed));
    println!(
        "fax: {pps:.1} pages/s through one session (a 14.4 kbit/s line: {:.3} pages/s; ratio {:.0}x)",
        pages as f64 / line(total),
        pps * line(total) / pages as f64
    );
    println!(
        "fax: send -> first page durable at the receiver {:.1} ms (14.4 kbit/s line for that page: {:.1} s; ratio {:.4})",
        first * 1000.0,
        line(coded[0]),
        first / line(coded[0])
    );
    println!(
        "fax: send -> {pages}-page document printed {:.1} ms (14.4 kbit/s line for {total} bytes: {:.1} s; ratio {:.4})",
        printed * 1000.0,
        line(total),
        printed / line(total)
    );
    Ok(())
}
