//! `faxgate bench ipp`: printing through the relay's IPP front, each
//! number next to a reference measured in the same run against a real
//! `ippeveprinter` on loopback:
//!
//! * latency from a client's Print-Job to the agent's Fetch-Job answer
//!   (p50, p99), with the agent attached by long poll over TLS, against a
//!   direct Print-Job to ippeveprinter;
//! * jobs per second sustained through one site (client Print-Job, agent
//!   fetch, document, acknowledge, completed), against sequential direct
//!   Print-Jobs to ippeveprinter.
//!
//! The agent here is a minimal INFRA loop written with the same client
//! the appliance's agent uses; it does not print, so the numbers are the
//! front's and the protocol's, not a printer's. The mail wake-up latency
//! is measured by the mail integration test (it needs Dovecot and
//! OpenSMTPD) and recorded in BENCHMARKS.md.

use std::process::{Child, Command, Stdio};
use std::str::FromStr as _;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use faxgate_config::{RelayServerConfig, Secret};
use faxgate_ipp::client::{Document as IppDocument, IppClient};
use faxgate_ipp::codes::{job_state, op};
use faxgate_ipp::message::{self, attribute, keyword, mime};
use ipp::model::DelimiterTag;
use ipp::value::IppValue;
use tokio::io::AsyncReadExt as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::print::{Document, DocumentFormat, FaxPage};

const SAMPLE: &[u8] = include_bytes!("../../assets/sample.tif");

struct Eve(Child);

impl Drop for Eve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn start_eve(spool: &std::path::Path) -> anyhow::Result<(Eve, String)> {
    let port = free_port()?;
    let child = Command::new("ippeveprinter")
        .arg("-k")
        .arg("-d")
        .arg(spool)
        .args([
            "-c",
            "/bin/true",
            "-f",
            "application/pdf,application/octet-stream",
        ])
        .args(["-p", &port.to_string(), "-n", "localhost"])
        .arg(format!("faxgate-bench-{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("ippeveprinter (apt-get install cups-ipp-utils avahi-daemon)")?;
    let eve = Eve(child);
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!(
                "ippeveprinter did not listen within 15 s (it needs D-Bus and avahi-daemon running)"
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((eve, format!("ipp://127.0.0.1:{port}/ipp/print")))
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn print_job(uri: &str, n: usize) -> ipp::prelude::IppRequestResponse {
    let mut req = message::request(op::PRINT_JOB, uri, "bench", 1);
    let ops = DelimiterTag::OperationAttributes;
    req.attributes_mut().add(
        ops,
        attribute("job-name", message::name(&format!("bench-{n}"))),
    );
    req.attributes_mut()
        .add(ops, attribute("document-format", mime("application/pdf")));
    req
}

/// A direct Print-Job to ippeveprinter, which answers server-error-busy
/// while it still prints the previous job: retried until accepted. Returns
/// the time of the accepted attempt alone.
async fn direct_print(
    direct: &IppClient,
    uri: &str,
    n: usize,
    pdf: &bytes::Bytes,
) -> anyhow::Result<Duration> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let t0 = Instant::now();
        match direct
            .call(print_job(uri, n), Some(IppDocument::Bytes(pdf.clone())))
            .await
        {
            Ok(_) => return Ok(t0.elapsed()),
            Err(e) if e.ipp_status() == Some(faxgate_ipp::codes::status::BUSY) => {
                if Instant::now() > deadline {
                    bail!("ippeveprinter stayed busy for 30 s");
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn job_id(resp: &ipp::prelude::IppRequestResponse) -> anyhow::Result<i32> {
    message::attr(resp, DelimiterTag::JobAttributes, "job-id")
        .and_then(message::as_int)
        .context("no job-id in the answer")
}

/// Runs the benchmark.
pub async fn run(samples: usize, jobs: usize, shutdown: CancellationToken) -> anyhow::Result<()> {
    let pages = FaxPage::from_tiff(SAMPLE)?;
    let pdf = bytes::Bytes::from(DocumentFormat::Pdf.render(&Document {
        title: "bench".into(),
        pages,
    })?);
    let dir = tempfile::tempdir()?;
    let spool = dir.path().join("eve");
    std::fs::create_dir_all(&spool)?;
    let (_eve, eve_uri) = start_eve(&spool)?;

    // The relay with its IPP front.
    let state = dir.path().join("relay");
    let cfg = RelayServerConfig::from_str(&format!(
        "[relay]\nlisten = \"127.0.0.1:0\"\nlisten_tls = \"127.0.0.1:0\"\nstate_dir = {:?}\n\
         argon2_memory_kib = 1024\nargon2_iterations = 1\n\
         [ipp]\nlisten = \"127.0.0.1:0\"\nlisten_tls = \"127.0.0.1:0\"\nnotify_wait = \"30s\"\n\
         [[ipp.sites]]\nname = \"bench\"\nagent = \"bench\"\n",
        state.display().to_string()
    ))?;
    let ipp_cfg = cfg.ipp.clone().context("no [ipp]")?;
    let relay = faxgate_relay::RelayServer::start(cfg, shutdown.child_token()).await?;
    relay
        .shared
        .store()
        .add_user("bench", "bench-password", &[])
        .context("adding the bench user")?;
    let front = crate::relay_topology::start_ipp_front(
        ipp_cfg,
        None,
        &state,
        None,
        &relay,
        shutdown.child_token(),
    )
    .await?;
    let plain = front.addr.context("no plain IPP listener")?;
    let tls = front.tls_addr.context("no IPPS listener")?;
    let pin = relay
        .identity
        .as_ref()
        .context("no TLS identity")?
        .fingerprint;
    let site = format!("ipp://127.0.0.1:{}/ipp/print/bench", plain.port());
    let agent_site = format!("ipps://127.0.0.1:{}/ipp/print/bench", tls.port());

    let agent = IppClient::builder(agent_site.clone())
        .tls(faxgate_relay::tls::pinned_client_config(pin))
        .server_name("localhost")
        .basic_auth("bench", Secret::new("bench-password".to_owned()))
        .request_timeout(Duration::from_secs(60))
        .build()?;
    let (fetched_tx, mut fetched) = mpsc::unbounded_channel();
    let (done_tx, mut done) = mpsc::unbounded_channel();
    let stop = shutdown.child_token();
    let loop_task = tokio::spawn(bench_agent(
        agent,
        agent_site,
        fetched_tx,
        done_tx,
        stop.clone(),
    ));
    // Wait for the agent to attach.
    let client = IppClient::builder(site.clone()).build()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !front.sites().iter().any(|(_, attached, _)| *attached) {
        if Instant::now() > deadline {
            bail!("the bench agent did not attach");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let direct = IppClient::builder(eve_uri.clone()).build()?;
    println!(
        "ipp: {samples} samples, {jobs} jobs; PDF of {} bytes; site on loopback, agent by long poll over TLS; reference: ippeveprinter on loopback",
        pdf.len()
    );

    // Latency: Print-Job -> the agent's Fetch-Job answer.
    let mut ours = Vec::with_capacity(samples);
    let mut theirs = Vec::with_capacity(samples);
    for n in 0..samples {
        let t0 = Instant::now();
        let resp = client
            .call(print_job(&site, n), Some(IppDocument::Bytes(pdf.clone())))
            .await?;
        let id = job_id(&resp)?;
        loop {
            let (fid, t) = tokio::time::timeout(Duration::from_secs(30), fetched.recv())
                .await
                .context("the agent did not fetch within 30 s")?
                .context("the agent stopped")?;
            if fid == id {
                ours.push(t.duration_since(t0).as_secs_f64() * 1000.0);
                break;
            }
        }
        let took = direct_print(&direct, &eve_uri, n, &pdf).await?;
        theirs.push(took.as_secs_f64() * 1000.0);
    }
    while done.try_recv().is_ok() {}
    let (o50, o99) = (pct(&mut ours, 0.5), pct(&mut ours, 0.99));
    let (t50, t99) = (pct(&mut theirs, 0.5), pct(&mut theirs, 0.99));
    println!(
        "ipp: Print-Job -> agent's Fetch-Job p50 {o50:.2} ms, p99 {o99:.2} ms; direct Print-Job to ippeveprinter p50 {t50:.2} ms, p99 {t99:.2} ms; ratio p50 {:.2}, p99 {:.2}",
        o50 / t50,
        o99 / t99
    );

    // Throughput: jobs per second through one site, fetched and completed.
    let t0 = Instant::now();
    let mut ids = std::collections::HashSet::new();
    for n in 0..jobs {
        let resp = client
            .call(print_job(&site, n), Some(IppDocument::Bytes(pdf.clone())))
            .await?;
        ids.insert(job_id(&resp)?);
    }
    while !ids.is_empty() {
        let id = tokio::time::timeout(Duration::from_secs(30), done.recv())
            .await
            .context("the agent did not finish within 30 s")?
            .context("the agent stopped")?;
        ids.remove(&id);
    }
    let site_rate = jobs as f64 / t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    for n in 0..jobs {
        direct_print(&direct, &eve_uri, n, &pdf).await?;
    }
    let direct_rate = jobs as f64 / t0.elapsed().as_secs_f64();
    println!(
        "ipp: {site_rate:.0} jobs/s through one site (accepted, fetched, completed); {direct_rate:.0} jobs/s accepted by ippeveprinter directly (one at a time: it answers busy while printing); ratio {:.2}",
        site_rate / direct_rate
    );
    stop.cancel();
    let _ = loop_task.await;
    front.shutdown(Duration::from_secs(5)).await;
    relay.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

/// A minimal INFRA Proxy: register, subscribe, long poll, and for each
/// fetchable job: Fetch-Job (reported), Acknowledge-Job, Fetch-Document
/// (read to the end), Acknowledge-Document, Update-Job-Status completed
/// (reported).
async fn bench_agent(
    client: IppClient,
    site: String,
    fetched: mpsc::UnboundedSender<(i32, Instant)>,
    done: mpsc::UnboundedSender<i32>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let uuid = "urn:uuid:00000000-0000-4000-8000-00000000beef".to_owned();
    let ops = DelimiterTag::OperationAttributes;
    let req = |code: u16| {
        let mut r = message::request(code, &site, "bench", 1);
        r.attributes_mut()
            .add(ops, attribute("output-device-uuid", message::uri(&uuid)));
        r
    };
    let mut reg = req(op::UPDATE_OUTPUT_DEVICE_ATTRIBUTES);
    let p = DelimiterTag::PrinterAttributes;
    reg.attributes_mut().add(
        p,
        attribute(
            "document-format-supported",
            message::one_or_many(vec![
                mime("application/pdf"),
                mime("application/octet-stream"),
            ]),
        ),
    );
    reg.attributes_mut()
        .add(p, attribute("printer-state", IppValue::Enum(3)));
    reg.attributes_mut()
        .add(p, attribute("printer-state-reasons", keyword("none")));
    client.call(reg, None).await?;
    let mut sub = req(op::CREATE_PRINTER_SUBSCRIPTIONS);
    let s = DelimiterTag::SubscriptionAttributes;
    sub.attributes_mut()
        .add(s, attribute("notify-pull-method", keyword("ippget")));
    sub.attributes_mut()
        .add(s, attribute("notify-events", keyword("job-fetchable")));
    let resp = client.call(sub, None).await?;
    let sub_id = message::attr(&resp, s, "notify-subscription-id")
        .and_then(message::as_int)
        .context("no subscription id")?;
    let mut seq = 1;
    let int = |n: &str, v: i32| attribute(n, IppValue::Integer(v));
    loop {
        let mut get = req(op::GET_NOTIFICATIONS);
        get.attributes_mut()
            .add(ops, int("notify-subscription-ids", sub_id));
        get.attributes_mut()
            .add(ops, int("notify-sequence-numbers", seq));
        get.attributes_mut()
            .add(ops, attribute("notify-wait", IppValue::Boolean(true)));
        let resp = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            r = client.call(get, None) => r?,
        };
        let events: Vec<(i32, i32)> = resp
            .attributes()
            .groups_of(DelimiterTag::EventNotificationAttributes)
            .filter_map(|g| {
                let n = g
                    .get("notify-sequence-number")
                    .map(|a| a.value())
                    .and_then(message::as_int)?;
                let job = g
                    .get("job-id")
                    .map(|a| a.value())
                    .and_then(message::as_int)?;
                Some((n, job))
            })
            .collect();
        for (n, job) in events {
            seq = seq.max(n + 1);
            let with_job = |code: u16| {
                let mut r = req(code);
                r.attributes_mut().add(ops, int("job-id", job));
                r
            };
            if client.call(with_job(op::FETCH_JOB), None).await.is_err() {
                continue;
            }
            let _ = fetched.send((job, Instant::now()));
            client.call(with_job(op::ACKNOWLEDGE_JOB), None).await?;
            let mut fd = with_job(op::FETCH_DOCUMENT);
            fd.attributes_mut().add(ops, int("document-number", 1));
            let (_, mut reader) = client.call_streaming(fd).await?;
            let mut sink = Vec::new();
            reader.read_to_end(&mut sink).await?;
            let mut ad = with_job(op::ACKNOWLEDGE_DOCUMENT);
            ad.attributes_mut().add(ops, int("document-number", 1));
            client.call(ad, None).await?;
            let mut up = with_job(op::UPDATE_JOB_STATUS);
            up.attributes_mut().add(
                DelimiterTag::JobAttributes,
                attribute(
                    "output-device-job-state",
                    IppValue::Enum(job_state::COMPLETED),
                ),
            );
            client.call(up, None).await?;
            let _ = done.send(job);
        }
    }
}
