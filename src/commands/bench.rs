//! `faxgate bench relay`: relay benchmarks, each reported as a ratio to a
//! reference measured in the same run (these machines are noisy):
//!
//! * bridged throughput vs. direct loopback TCP throughput;
//! * connect-demand to bridged latency (p50, p99) vs. a loopback TCP
//!   round trip;
//! * relay memory per idle logged-in connection at N connections vs. a
//!   minimal tokio server holding N idle sockets (both child processes,
//!   measured by their RSS).
//!
//! BENCHMARKS.md records the results and this command.

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use faxgate_config::{RelayClientConfig, RelayServerConfig, Secret};
use faxgate_relay::connection::Connection;
use faxgate_relay::protocol::{self, Frame, PREAMBLE};
use faxgate_relay::{RelayClient, RelayServer};
use std::io::BufRead as _;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::str::FromStr as _;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Arguments of `faxgate bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    which: BenchWhich,
}

#[derive(Debug, Subcommand)]
enum BenchWhich {
    /// Relay throughput, latency and memory.
    Relay {
        /// MiB sent per throughput run.
        #[arg(long, default_value_t = 512)]
        mib: usize,
        /// Throughput runs of each kind (the median is reported).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Connect-demand samples for the latency percentiles.
        #[arg(long, default_value_t = 2000)]
        samples: usize,
        /// Idle logged-in connections for the memory measurement.
        #[arg(long, default_value_t = 10_000)]
        idle: usize,
        /// Idle logged-in TLS connections for the TLS memory measurement.
        #[arg(long, default_value_t = 10_000)]
        tls_idle: usize,
        /// Run only these parts (default: all).
        #[arg(long, value_delimiter = ',')]
        only: Vec<RelayPart>,
        /// Tokio worker threads of the throughput runs, one run per value
        /// (the sender's loop runs on the runtime's block_on thread, the
        /// receiver and the relay on the workers).
        #[arg(long, value_delimiter = ',', default_values_t = [2, 1])]
        workers: Vec<usize>,
        /// Also run with the relay pinned to a CPU of its own and both
        /// endpoints pinned to the other (needs two CPUs).
        #[arg(long)]
        pinned: bool,
        /// Also measure TLS: devices on the relay's TLS listener (pinned
        /// certificate) against a direct rustls loopback connection with
        /// the same certificate, in a runtime with the first of --workers.
        #[arg(long)]
        tls: bool,
    },
    /// Fax codec speed on the eight CCITT test pages against libtiff's
    /// tiffcp, both timed in this run.
    Codec {
        /// Copies of the eight pages per timed run (amortises tiffcp's
        /// process start-up).
        #[arg(long, default_value_t = 20)]
        copies: usize,
    },
    /// Fax through the relay between two appliances on loopback: pages
    /// per second, time to first page and to printed, against a 14.4
    /// kbit/s line.
    Fax {
        /// Pages in the document.
        #[arg(long, default_value_t = 10)]
        pages: usize,
        /// Rounds (the median is reported).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// Printing through the relay's IPP front: Print-Job to the agent's
    /// Fetch-Job latency and jobs per second, against ippeveprinter.
    Ipp {
        /// Latency samples.
        #[arg(long, default_value_t = 500)]
        samples: usize,
        /// Jobs for the throughput run.
        #[arg(long, default_value_t = 500)]
        jobs: usize,
    },
    /// (Internal) the memory reference: accept and hold idle sockets.
    #[command(hide = true)]
    IdleServer,
}

/// A part of `faxgate bench relay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum RelayPart {
    /// Bridged against direct throughput.
    Throughput,
    /// Connect-demand to bridged latency.
    Latency,
    /// Memory per idle logged-in connection.
    Memory,
}

/// Runs a benchmark.
pub async fn run(args: BenchArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    match args.which {
        BenchWhich::Fax { pages, rounds } => super::bench_fax::run(pages, rounds, shutdown).await,
        BenchWhich::Ipp { samples, jobs } => super::bench_ipp::run(samples, jobs, shutdown).await,
        BenchWhich::IdleServer => idle_server().await,
        BenchWhich::Codec { copies } => tokio::task::spawn_blocking(move || codec(copies)).await?,
        BenchWhich::Relay {
            mib,
            rounds,
            samples,
            idle,
            tls_idle,
            only,
            workers,
            pinned,
            tls,
        } => {
            let part = |p: RelayPart| only.is_empty() || only.contains(&p);
            println!(
                "faxgate bench relay: {mib} MiB x {rounds} rounds, {samples} samples, {idle} idle connections"
            );
            if part(RelayPart::Throughput) {
                if workers.contains(&0) {
                    bail!("--workers: a runtime needs at least one worker thread, got 0");
                }
                let runs = workers
                    .iter()
                    .map(|&w| (w, false))
                    .chain(tls.then(|| (workers.first().copied().unwrap_or(2), true)));
                for (workers, tls) in runs {
                    let (direct, bridged) = tokio::task::spawn_blocking(move || {
                        tokio::runtime::Builder::new_multi_thread()
                            .worker_threads(workers)
                            .enable_all()
                            .build()?
                            .block_on(throughput(mib << 20, rounds, tls))
                    })
                    .await??;
                    let shape = if tls {
                        format!("TLS, tokio workers: {workers}")
                    } else {
                        format!("tokio workers: {workers}")
                    };
                    report_throughput(&shape, tls, direct, bridged);
                }
                if pinned {
                    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
                    if cpus < 2 {
                        println!("throughput, relay on a CPU of its own: skipped ({cpus} CPU)");
                    } else {
                        let (direct, bridged) = tokio::task::spawn_blocking(move || {
                            throughput_pinned(mib << 20, rounds)
                        })
                        .await??;
                        report_throughput(
                            "relay alone on CPU 1, both endpoints on CPU 0",
                            false,
                            direct,
                            bridged,
                        );
                    }
                }
            }
            if part(RelayPart::Latency) {
                let (rtt, p50, p99) = latency(samples).await?;
                println!(
                    "latency connect-demand -> bridged: p50 {:.0} us, p99 {:.0} us (loopback TCP round trip p50 {:.0} us; p50 ratio {:.1})",
                    p50,
                    p99,
                    rtt,
                    p50 / rtt
                );
            }
            if part(RelayPart::Memory) {
                let (relay_per, floor_per) = memory(idle, false).await?;
                println!(
                    "memory per idle logged-in connection at {idle}: relay {:.2} KiB, bare tokio socket {:.2} KiB (ratio {:.2})",
                    relay_per / 1024.0,
                    floor_per / 1024.0,
                    relay_per / floor_per
                );
                let (tls_per, floor_per) = memory(tls_idle, true).await?;
                println!(
                    "memory per idle logged-in TLS connection at {tls_idle}: relay {:.2} KiB, bare tokio socket {:.2} KiB (ratio {:.2})",
                    tls_per / 1024.0,
                    floor_per / 1024.0,
                    tls_per / floor_per
                );
            }
            Ok(())
        }
    }
}

async fn bench_relay(
    argon2_kib: u32,
    max_per_user: u16,
) -> anyhow::Result<(RelayServer, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    // The TLS listener generates its certificate in state_dir.
    let cfg = RelayServerConfig::from_str(&format!(
        "[relay]\nlisten = \"127.0.0.1:0\"\nlisten_tls = \"127.0.0.1:0\"\nstate_dir = {:?}\n\
         argon2_memory_kib = {argon2_kib}\nargon2_iterations = 1\n\
         max_connections_per_user = {max_per_user}\nhold_interval = \"600s\"\n",
        dir.path().display().to_string()
    ))?;
    let server = RelayServer::start(cfg, CancellationToken::new()).await?;
    Ok((server, dir))
}

fn client_cfg(addr: SocketAddr, user: &str, spares: u16) -> anyhow::Result<RelayClientConfig> {
    let mut c = RelayClientConfig::from_str(&format!(
        "server = \"{addr}\"\nuser = \"{user}\"\npassword = \"x\"\nspares = {spares}\nmax_connections = {}\n",
        spares + 2
    ))?;
    c.password = Secret::new("bench-password".into());
    Ok(c)
}

/// Where the bench relay listens: plain TCP, or TLS with the relay's
/// generated certificate (pinned by the clients, and served by the direct
/// reference too).
#[derive(Clone)]
enum Leg {
    Plain(SocketAddr),
    Tls {
        addr: SocketAddr,
        server: std::sync::Arc<rustls::ServerConfig>,
        pin: [u8; 32],
    },
}

impl Leg {
    fn of(server: &RelayServer, tls: bool) -> anyhow::Result<Leg> {
        if !tls {
            return Ok(Leg::Plain(server.tcp_addr.context("no relay address")?));
        }
        let id = server.identity.as_ref().context("no TLS identity")?;
        Ok(Leg::Tls {
            addr: server.tls_addr.context("no relay TLS address")?,
            server: std::sync::Arc::clone(&id.config),
            pin: id.fingerprint,
        })
    }

    fn client(&self, user: &str) -> anyhow::Result<RelayClientConfig> {
        match self {
            Leg::Plain(addr) => client_cfg(*addr, user, 0),
            Leg::Tls { addr, pin, .. } => {
                let mut c = client_cfg(*addr, user, 0)?;
                c.tls = Some(faxgate_config::ClientTlsConfig {
                    pin_sha256: Some(faxgate_relay::tls::format_fingerprint(pin)),
                    ca_file: None,
                    server_name: Some("faxgate-relay".into()),
                });
                Ok(c)
            }
        }
    }

    /// One direct round on a fresh loopback connection, TLS alike.
    async fn direct(&self, n: usize) -> anyhow::Result<Rate> {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        let la = l.local_addr()?;
        let (w, accepted) = tokio::join!(TcpStream::connect(la), l.accept());
        let (w, (r, _)) = (w?, accepted?);
        w.set_nodelay(true)?;
        r.set_nodelay(true)?;
        match self {
            Leg::Plain(_) => Ok(pump(w, r, n).await?.0),
            Leg::Tls { server, pin, .. } => {
                let connector = tokio_rustls::TlsConnector::from(
                    faxgate_relay::tls::pinned_client_config(*pin),
                );
                let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::clone(server));
                let name = faxgate_relay::tls::server_name("faxgate-relay")?;
                let (w, r) = tokio::join!(connector.connect(name, w), acceptor.accept(r));
                Ok(pump(w?, r?, n).await?.0)
            }
        }
    }
}

/// One throughput run: MiB/s, and the CPU time the whole process spent
/// per GiB moved (user + system, all threads; the process runs nothing
/// but the benchmark, and loopback's softirq work is charged to it).
#[derive(Debug, Clone, Copy)]
struct Rate {
    mib_s: f64,
    cpu_s_per_gib: f64,
}

/// The medians of a series of runs.
fn medians(runs: &[Rate]) -> Rate {
    let mut t: Vec<f64> = runs.iter().map(|r| r.mib_s).collect();
    let mut c: Vec<f64> = runs.iter().map(|r| r.cpu_s_per_gib).collect();
    Rate {
        mib_s: median(&mut t),
        cpu_s_per_gib: median(&mut c),
    }
}

/// Sends `n` bytes from a writer to a reader.
async fn pump<W, R>(mut w: W, mut r: R, n: usize) -> anyhow::Result<(Rate, W, R)>
where
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    let chunk = vec![0x5au8; 256 * 1024];
    let cpu = process_cpu_seconds()?;
    let start = Instant::now();
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0usize;
        loop {
            let k = r.read(&mut buf).await?;
            if k == 0 {
                break;
            }
            got += k;
        }
        anyhow::Ok((got, r))
    });
    let mut sent = 0;
    while sent < n {
        let k = chunk.len().min(n - sent);
        w.write_all(&chunk[..k]).await?;
        sent += k;
    }
    w.shutdown().await?;
    let (got, r) = reader.await??;
    let secs = start.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds()? - cpu;
    if got != n {
        bail!("reader got {got} of {n} bytes");
    }
    let gib = n as f64 / (1u64 << 30) as f64;
    let rate = Rate {
        mib_s: gib * 1024.0 / secs,
        cpu_s_per_gib: cpu / gib,
    };
    Ok((rate, w, r))
}

/// User + system CPU seconds of this process, all threads.
fn process_cpu_seconds() -> anyhow::Result<f64> {
    // SAFETY: getrusage only writes into the zeroed struct it is given.
    let (rc, ru) = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        (libc::getrusage(libc::RUSAGE_SELF, &mut ru), ru)
    };
    if rc != 0 {
        bail!("getrusage: {}", std::io::Error::last_os_error());
    }
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    Ok(t(ru.ru_utime) + t(ru.ru_stime))
}

/// Bridged throughput with the relay in this process and runtime, beside
/// both endpoints, against direct loopback TCP in the same runtime:
/// returns the medians (direct, bridged).
async fn throughput(n: usize, rounds: usize, tls: bool) -> anyhow::Result<(Rate, Rate)> {
    let (server, _dir) = bench_relay(64, 4).await?;
    let store = server.shared.store();
    for u in ["bench-a", "bench-b"] {
        store.add_user(u, "bench-password", &["bench".into()])?;
    }
    throughput_rounds(Leg::of(&server, tls)?, n, rounds).await
}

/// Pins the calling thread to one CPU.
fn pin_to_cpu(cpu: usize) -> anyhow::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET only write into
    // it, and sched_setaffinity(0, ..) reads it for the calling thread.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        bail!(
            "sched_setaffinity to CPU {cpu}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Bridged throughput with the relay alone on CPU 1 (its own
/// single-threaded runtime, as a relay on its own machine) and both
/// endpoints on CPU 0 (one single-threaded runtime), against direct
/// loopback TCP between the same endpoints on CPU 0: returns the medians
/// (direct, bridged).
fn throughput_pinned(n: usize, rounds: usize) -> anyhow::Result<(Rate, Rate)> {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let stop = CancellationToken::new();
    let relay_stop = stop.clone();
    let relay = std::thread::spawn(move || -> anyhow::Result<()> {
        pin_to_cpu(1)?;
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(async move {
                let (server, _dir) = bench_relay(64, 4).await?;
                let store = server.shared.store();
                for u in ["bench-a", "bench-b"] {
                    store.add_user(u, "bench-password", &["bench".into()])?;
                }
                let _ = addr_tx.send(Leg::of(&server, false)?);
                relay_stop.cancelled().await;
                anyhow::Ok(())
            })
    });
    let run = (|| {
        let leg = addr_rx
            .recv()
            .map_err(|_| anyhow::anyhow!("the relay thread ended before listening"))?;
        pin_to_cpu(0)?;
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(throughput_rounds(leg, n, rounds))
    })();
    stop.cancel();
    let relayed = relay
        .join()
        .map_err(|_| anyhow::anyhow!("the relay thread panicked"))?;
    let r = run?;
    relayed?;
    Ok(r)
}

/// Alternates direct loopback and bridged rounds through the relay at
/// `leg` (users bench-a and bench-b exist) in the current runtime, both
/// plain TCP or both TLS; returns the medians (direct, bridged).
async fn throughput_rounds(leg: Leg, n: usize, rounds: usize) -> anyhow::Result<(Rate, Rate)> {
    let (a, _ai) = RelayClient::start(leg.client("bench-a")?).await?;
    let (_b, mut bi) = RelayClient::start(leg.client("bench-b")?).await?;
    let mut direct = Vec::new();
    let mut bridged = Vec::new();
    for _ in 0..rounds {
        // Direct loopback, same runtime.
        direct.push(leg.direct(n).await?);

        // Bridged: client library -> relay -> client library.
        let accept = tokio::spawn(async move {
            let d = bi.recv().await.context("no demand")?;
            let s = d.accept().await?;
            anyhow::Ok((s, bi))
        });
        let sa = a.connect("bench-b").await?;
        let (sb, back) = accept.await??;
        bi = back;
        let (rate, sa, sb) = pump(sa, sb, n).await?;
        bridged.push(rate);
        let (x, y) = tokio::join!(sa.close(), sb.close());
        x?;
        y?;
        a.wait_vacant(1, Duration::from_secs(5)).await?;
    }
    Ok((medians(&direct), medians(&bridged)))
}

fn report_throughput(shape: &str, tls: bool, direct: Rate, bridged: Rate) {
    let direct_kind = if tls { "TLS" } else { "TCP" };
    println!(
        "throughput ({shape}): direct loopback {direct_kind} {:.0} MiB/s, bridged through the relay {:.0} MiB/s, ratio {:.2}; CPU per GiB moved: direct {:.2} s, bridged {:.2} s (ratio {:.2})",
        direct.mib_s,
        bridged.mib_s,
        bridged.mib_s / direct.mib_s,
        direct.cpu_s_per_gib,
        bridged.cpu_s_per_gib,
        bridged.cpu_s_per_gib / direct.cpu_s_per_gib
    );
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

async fn latency(samples: usize) -> anyhow::Result<(f64, f64, f64)> {
    // Reference: a 1-byte ping-pong on a loopback TCP connection.
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let la = l.local_addr()?;
    let echo = tokio::spawn(async move {
        let (mut s, _) = l.accept().await?;
        s.set_nodelay(true)?;
        let mut b = [0u8; 1];
        while s.read_exact(&mut b).await.is_ok() {
            s.write_all(&b).await?;
        }
        anyhow::Ok(())
    });
    let mut c = TcpStream::connect(la).await?;
    c.set_nodelay(true)?;
    let mut rtts = Vec::with_capacity(samples);
    let mut b = [7u8; 1];
    for _ in 0..samples {
        let t = Instant::now();
        c.write_all(&b).await?;
        c.read_exact(&mut b).await?;
        rtts.push(t.elapsed().as_secs_f64() * 1e6);
    }
    drop(c);
    let _ = echo.await;

    let (server, _dir) = bench_relay(64, 4).await?;
    let store = server.shared.store();
    for u in ["lat-a", "lat-b"] {
        store.add_user(u, "bench-password", &["bench".into()])?;
    }
    let addr = server.tcp_addr.context("no relay address")?;
    let (a, _ai) = RelayClient::start(client_cfg(addr, "lat-a", 1)?).await?;
    let (b, mut bi) = RelayClient::start(client_cfg(addr, "lat-b", 1)?).await?;
    a.wait_vacant(2, Duration::from_secs(5)).await?;
    b.wait_vacant(2, Duration::from_secs(5)).await?;
    // The target accepts every demand at once and ends the session when
    // the caller does.
    tokio::spawn(async move {
        while let Some(d) = bi.recv().await {
            tokio::spawn(async move {
                if let Ok(mut s) = d.accept().await {
                    let mut sink = Vec::new();
                    let _ = s.read_to_end(&mut sink).await;
                    let _ = s.close().await;
                }
            });
        }
    });
    let mut lat = Vec::with_capacity(samples);
    for _ in 0..samples {
        a.wait_vacant(1, Duration::from_secs(5)).await?;
        b.wait_vacant(1, Duration::from_secs(5)).await?;
        let t = Instant::now();
        let s = a.connect("lat-b").await?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
        s.close().await?;
    }
    Ok((
        percentile(&mut rtts, 0.5),
        percentile(&mut lat, 0.5),
        percentile(&mut lat, 0.99),
    ))
}

/// Reads VmRSS of a process, in bytes.
fn rss(pid: u32) -> anyhow::Result<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")?;
    Ok(kb * 1024.0)
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `faxgate` with `args` and returns it with the address it
/// prints on a line starting with `prefix`.
fn spawn_child(args: &[&str], prefix: &str) -> anyhow::Result<(Killed, SocketAddr)> {
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn()?;
    let out = child.stdout.take().context("no stdout")?;
    let child = Killed(child);
    for line in std::io::BufReader::new(out).lines() {
        let line = line?;
        if let Some(a) = line.strip_prefix(prefix) {
            return Ok((child, a.trim().parse()?));
        }
    }
    bail!("child exited before printing `{prefix}`")
}

async fn open_idle(
    addr: SocketAddr,
    n: usize,
    tls: Option<std::sync::Arc<faxgate_relay::client::TlsTarget>>,
    hello: impl Fn(usize) -> Option<Frame> + Clone + Send + 'static,
) -> anyhow::Result<Vec<Connection>> {
    let mut conns = Vec::with_capacity(n);
    let mut i = 0;
    while i < n {
        let batch = (n - i).min(250);
        let mut tasks = Vec::with_capacity(batch);
        for k in i..i + batch {
            let hello = hello.clone();
            let tls = tls.clone();
            tasks.push(tokio::spawn(async move {
                let stream = faxgate_relay::client::dial(
                    &addr.to_string(),
                    tls.as_deref(),
                    Duration::from_secs(30),
                )
                .await?;
                let mut c = Connection::new(stream, protocol::MAX_DATA_PAYLOAD);
                if let Some(f) = hello(k) {
                    c.stream.write_all(&PREAMBLE).await?;
                    c.write_frame(&f).await?;
                    match c.read_frame().await? {
                        Some(Frame::LoginOk { .. }) => {}
                        other => bail!("login {k} answered {other:?}"),
                    }
                }
                anyhow::Ok(c)
            }));
        }
        for t in tasks {
            conns.push(t.await??);
        }
        i += batch;
    }
    Ok(conns)
}

/// Relay RSS per idle logged-in connection, and the same for a bare
/// tokio server, both as child processes.
async fn memory(n: usize, tls: bool) -> anyhow::Result<(f64, f64)> {
    let users = n.div_ceil(100);
    let per_user = n.div_ceil(users);
    let dir = tempfile::tempdir()?;
    let cfg_path = dir.path().join("relay.toml");
    std::fs::write(
        &cfg_path,
        format!(
            "[relay]\n{} = \"127.0.0.1:0\"\nstate_dir = {:?}\nargon2_memory_kib = 256\nargon2_iterations = 1\n\
             max_connections_per_user = {per_user}\nhold_interval = \"3600s\"\nmax_pending_per_ip = 4096\n",
            if tls { "listen_tls" } else { "listen" },
            dir.path().display().to_string()
        ),
    )?;
    {
        let cfg = RelayServerConfig::from_file(&cfg_path)?;
        let store = faxgate_relay::store::UserStore::open(
            &dir.path().join("users.db"),
            cfg.relay.argon2_memory_kib,
            cfg.relay.argon2_iterations,
        )?;
        for u in 0..users {
            store.add_user(&format!("idle{u}"), "bench-password", &["bench".into()])?;
        }
    }
    let cfg = cfg_path.display().to_string();
    let prefix = if tls {
        "relay (tls) listening on "
    } else {
        "relay (tcp) listening on "
    };
    let (relay, addr) = spawn_child(&["relay", "--config", &cfg], prefix)?;
    let pid = relay.0.id();
    let tls = if tls {
        // The relay generated its certificate in state_dir; pin it.
        let id = faxgate_relay::tls::server_identity(None, dir.path())?;
        Some(std::sync::Arc::new((
            faxgate_relay::tls::pinned_client_config(id.fingerprint),
            faxgate_relay::tls::server_name("faxgate-relay")?,
        )))
    } else {
        None
    };
    // One password login per user first (their Argon2 runs and the
    // user-store cache are not per-connection costs), then the baseline.
    let mut first = Vec::new();
    let mut tokens = Vec::new();
    for u in 0..users {
        let stream =
            faxgate_relay::client::dial(&addr.to_string(), tls.as_deref(), Duration::from_secs(30))
                .await?;
        let mut c = Connection::new(stream, protocol::MAX_DATA_PAYLOAD);
        c.stream.write_all(&PREAMBLE).await?;
        c.write_frame(&Frame::Login {
            user: format!("idle{u}"),
            password: Secret::new("bench-password".into()),
            client: "bench".into(),
        })
        .await?;
        match c.read_frame().await? {
            Some(Frame::LoginOk { token: Some(t), .. }) => tokens.push(t),
            other => bail!("login of idle{u} answered {other:?}"),
        }
        first.push(c);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let base = rss(pid)?;
    let spares = n - users;
    let tokens = std::sync::Arc::new(tokens);
    let conns = open_idle(addr, spares, tls, move |k| {
        let u = k % users;
        Some(Frame::Resume {
            user: format!("idle{u}"),
            token: tokens[u].clone(),
        })
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let loaded = rss(pid)?;
    let relay_per = (loaded - base) / spares as f64;
    drop(conns);
    drop(first);
    drop(relay);

    let (floor, faddr) = spawn_child(&["bench", "idle-server"], "idle server listening on ")?;
    let fpid = floor.0.id();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fbase = rss(fpid)?;
    let fconns = open_idle(faddr, spares, None, |_| None).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let floaded = rss(fpid)?;
    drop(fconns);
    Ok((relay_per, (floaded - fbase) / spares as f64))
}

/// The memory reference: a tokio server with one task per accepted
/// socket, parked in a read, the least any async server can hold.
async fn idle_server() -> anyhow::Result<()> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    println!("idle server listening on {}", l.local_addr()?);
    loop {
        let (mut s, _) = l.accept().await?;
        tokio::spawn(async move {
            let mut b = [0u8; 1];
            let _ = s.read(&mut b).await;
        });
    }
}

/// Runs a tool, failing with its stderr (and the package to install).
fn tool(program: &str, package: &str, args: &[&std::ffi::OsStr]) -> anyhow::Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}: apt-get install {package}"))?;
    if !out.status.success() {
        bail!("{program} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Our encode/decode of the CCITT pages vs. `tiffcp` doing the same on a
/// multi-page TIFF of the same pages (one process for all of them, so
/// its start-up is amortised; its file I/O goes to the page cache).
fn codec(copies: usize) -> anyhow::Result<()> {
    use faxgate_fax::{Bitmap, Coding, DecoderOptions, EncoderOptions};
    use std::ffi::OsStr;
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let mut pages = Vec::new();
    let mut tiffs = Vec::new();
    for i in 1..=8 {
        let jbg = format!("/usr/share/jbigkit-testdata/ccitt{i}.jbg");
        anyhow::ensure!(
            std::path::Path::new(&jbg).is_file(),
            "{jbg} is missing: apt-get install jbigkit-testdata"
        );
        let pbm = d.join(format!("p{i}.pbm"));
        tool(
            "jbgtopbm",
            "jbigkit-bin",
            &[OsStr::new(&jbg), pbm.as_os_str()],
        )?;
        pages.push(faxgate_fax::pbm::read_pbm(&std::fs::read(&pbm)?)?);
        let tif = d.join(format!("p{i}.tif"));
        // min-is-white, as fax pages are: otherwise libtiff codes the
        // inverted page and the sizes are not comparable.
        let out = Command::new("pnmtotiff")
            .arg("-miniswhite")
            // Fine resolution, so libtiff picks K = 4 for MR as we do.
            .args(["-xresolution", "204", "-yresolution", "196"])
            .arg(&pbm)
            .output()
            .context("cannot run pnmtotiff: apt-get install netpbm")?;
        anyhow::ensure!(out.status.success(), "pnmtotiff failed");
        std::fs::write(&tif, out.stdout)?;
        tiffs.push(tif);
    }
    // One uncompressed multi-page TIFF with `copies` x 8 pages.
    let raw = d.join("all-none.tif");
    let mut args: Vec<&OsStr> = vec![OsStr::new("-c"), OsStr::new("none")];
    for _ in 0..copies {
        args.extend(tiffs.iter().map(|t| t.as_os_str()));
    }
    args.push(raw.as_os_str());
    tool("tiffcp", "libtiff-tools", &args)?;
    let n = (copies * pages.len()) as f64;
    println!("faxgate bench codec: 8 CCITT pages x {copies} copies, pages per second");
    println!(
        "| coding | our encode | tiffcp encode | ratio | our decode | tiffcp decode | ratio | tiffinfo -D decode | ratio | tifftopnm decode | ratio | our bytes / libtiff bytes |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (coding, name, flag) in [
        (Coding::Mh, "MH", "g3:1d"),
        (Coding::Mr { k: 4 }, "MR", "g3:2d"),
        (Coding::Mmr, "MMR", "g4"),
    ] {
        // Ours, from memory.
        let opts = EncoderOptions::tiff(coding, pages[0].width());
        let t = Instant::now();
        let mut coded = Vec::new();
        for _ in 0..copies {
            coded = pages
                .iter()
                .map(|p| p.encode(opts.clone()))
                .collect::<Result<Vec<_>, _>>()?;
        }
        let ours_enc = t.elapsed().as_secs_f64() * 1e3 / n;
        let t = Instant::now();
        let mut last = None;
        for _ in 0..copies {
            for (p, c) in pages.iter().zip(&coded) {
                last = Some(Bitmap::decode(
                    c,
                    DecoderOptions::tiff(coding, p.width(), u64::from(p.height())),
                )?);
            }
        }
        let ours_dec = t.elapsed().as_secs_f64() * 1e3 / n;
        // The decoded pages must be the originals, or the timing is moot.
        for (p, c) in pages.iter().zip(&coded) {
            let (b, _) = Bitmap::decode(
                c,
                DecoderOptions::tiff(coding, p.width(), u64::from(p.height())),
            )?;
            anyhow::ensure!(&b == p, "{name}: our round trip changed a page");
        }
        drop(last);
        let our_bytes: usize = coded.iter().map(Vec::len).sum();
        // libtiff: encode the raw file, then decode its output.
        let enc_out = d.join(format!("all-{name}.tif"));
        let t = Instant::now();
        // One strip per page, as we write it.
        tool(
            "tiffcp",
            "libtiff-tools",
            &[
                OsStr::new("-c"),
                OsStr::new(flag),
                OsStr::new("-r"),
                OsStr::new("100000"),
                raw.as_os_str(),
                enc_out.as_os_str(),
            ],
        )?;
        let lib_enc = t.elapsed().as_secs_f64() * 1e3 / n;
        let dec_out = d.join(format!("back-{name}.tif"));
        let t = Instant::now();
        tool(
            "tiffcp",
            "libtiff-tools",
            &[
                OsStr::new("-c"),
                OsStr::new("none"),
                enc_out.as_os_str(),
                dec_out.as_os_str(),
            ],
        )?;
        let lib_dec = t.elapsed().as_secs_f64() * 1e3 / n;
        // netpbm's decoder (libtiff underneath), every page to PBM; its
        // output goes to /dev/null, so it pays no file writing.
        let t = Instant::now();
        let st = Command::new("tifftopnm")
            .arg(&enc_out)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("cannot run tifftopnm: apt-get install netpbm")?;
        anyhow::ensure!(st.success(), "tifftopnm failed on {}", enc_out.display());
        let pnm_dec = t.elapsed().as_secs_f64() * 1e3 / n;
        // libtiff's decoder alone: tiffinfo -D reads and decodes every
        // strip and writes nothing, the steadiest reference.
        let t = Instant::now();
        let st = Command::new("tiffinfo")
            .arg("-D")
            .arg(&enc_out)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("cannot run tiffinfo: apt-get install libtiff-tools")?;
        anyhow::ensure!(st.success(), "tiffinfo -D failed on {}", enc_out.display());
        let info_dec = t.elapsed().as_secs_f64() * 1e3 / n;
        // The first copy of the eight pages, strip bytes only.
        let enc_file = std::fs::read(&enc_out)?;
        let reader = faxgate_fax::tiff::TiffReader::new(&enc_file)?;
        let lib_bytes: usize = (0..pages.len())
            .map(|i| reader.strips(i).iter().map(|s| s.len()).sum::<usize>())
            .sum();
        let pps = |ms: f64| 1e3 / ms;
        println!(
            "| {name} | {:.0} | {:.0} | {:.1}x | {:.0} | {:.0} | {:.1}x | {:.0} | {:.1}x | {:.0} | {:.1}x | {:.3} |",
            pps(ours_enc),
            pps(lib_enc),
            lib_enc / ours_enc,
            pps(ours_dec),
            pps(lib_dec),
            lib_dec / ours_dec,
            pps(info_dec),
            info_dec / ours_dec,
            pps(pnm_dec),
            pnm_dec / ours_dec,
            our_bytes as f64 / lib_bytes as f64
        );
    }
    Ok(())
}
