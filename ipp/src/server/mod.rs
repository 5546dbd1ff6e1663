//! The relay's IPP front: a PWG 5100.18 Infrastructure Printer with one
//! server site per printer agent (seed 000). See `ipp/INFRA.md`.
//!
//! # Shape
//!
//! [`IppFront::start`] binds the plain and TLS listeners and spawns one
//! task per connection (hyper HTTP/1.1). Requests share one [`Front`]:
//! the durable [`store::JobStore`] and, per site, a small in-memory state
//! (the attached devices and their leases, subscriptions and their event
//! queues, the wake-up state) behind a mutex, plus a `watch` counter that wakes long polls.
//! A reaper task expires device leases, subscriptions and open jobs, and
//! purges old finished jobs.
//!
//! # Channels
//!
//! Out: [`WakeRequest`]s on an unbounded mpsc to the mailer (the topology
//! turns them into command and cancel mails). In: the mailer's outcomes
//! through [`IppFront::wake_outcome`], and a `CancellationToken`.

mod attrs;
mod ops;
pub mod store;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use faxgate_config::{IppFrontSection, SiteConfig};
use faxgate_relay::auth::Authenticator;
use futures_util::TryStreamExt as _;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use ipp::prelude::*;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_util::io::{ReaderStream, StreamReader};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument as _, debug, info, warn};

pub use store::{JobStore, StoreError};

use crate::codes::status;
use crate::message;

/// The path of the description document (the seed's ExPM description
/// file).
pub const DESCRIPTION_PATH: &str = "/.well-known/faxgate-infra.json";

/// Most bytes of IPP attributes a request may carry before its document.
const MAX_ATTRIBUTE_BYTES: u64 = 1 << 20;

/// Most subscriptions one site keeps (oldest dropped first).
const MAX_SUBSCRIPTIONS: usize = 64;

/// Most events a subscription keeps unread.
const MAX_EVENTS: usize = 1000;

// Connection caps (`ipp.max_connections`, per address
// `ipp.max_connections_per_address`, so one slow or hostile client cannot
// take them all), the header deadline (`ipp.header_timeout`) and the body
// stall deadline (`ipp.body_stall_timeout`: each piece of a body must
// arrive within it; a stalled request is answered client-error-timeout
// and its connection closed) come from the config.

/// multiple-operation-time-out (RFC 8011 5.4.28), in seconds, as
/// advertised: a job still taking documents that sees no operation for
/// this long is closed (or aborted, without a document). It runs from the
/// job's last operation (`JobRow::activity`).
const MULTIPLE_OPERATION_TIME_OUT: i32 = 300;

/// What the front asks the mailer for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WakeKind {
    /// A command mail: attach and fetch these jobs.
    Wake,
    /// A cancel mail: the front gave up waiting.
    Cancel,
}

/// A request for a command or cancel mail (extension 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WakeRequest {
    /// Wake or cancel.
    pub kind: WakeKind,
    /// The wake-up this request belongs to (unique in the process). The
    /// mailer's outcomes must carry it back ([`IppFront::wake_outcome`]):
    /// an outcome for an earlier wake-up is ignored.
    pub wake: u64,
    /// The site name.
    pub site: String,
    /// The printer's mail address.
    pub to: String,
    /// The site URI the agent connects to.
    pub proxy_uri: String,
    /// The waiting job ids.
    pub jobs: Vec<u64>,
    /// How long the command stays valid.
    pub ttl: Duration,
}

/// What became of a [`WakeRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WakeOutcome {
    /// Handed to the mail server.
    Sent,
    /// Failed for now; the mailer retries.
    Retrying {
        /// Why it failed.
        error: String,
    },
    /// The mailer gave up.
    GaveUp {
        /// Why.
        error: String,
    },
}

/// A running IPP front.
#[derive(Debug)]
pub struct IppFront {
    front: Arc<Front>,
    /// Where the plain listener is bound.
    pub addr: Option<SocketAddr>,
    /// Where the TLS listener is bound.
    pub tls_addr: Option<SocketAddr>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl IppFront {
    /// Opens the job store in `state_dir/ipp`, binds the listeners and
    /// starts serving. `tls` is required when `listen_tls` is set. Wake-up
    /// requests go to `wake` (None: sites cannot wake agents).
    pub async fn start(
        cfg: IppFrontSection,
        state_dir: &Path,
        auth: Arc<Authenticator>,
        tls: Option<Arc<rustls::ServerConfig>>,
        wake: Option<mpsc::UnboundedSender<WakeRequest>>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let dir = state_dir.join("ipp");
        let store = tokio::task::block_in_place(|| JobStore::open(&dir))
            .with_context(|| format!("while opening the IPP job store in {}", dir.display()))?;
        let plain = match cfg.listen {
            Some(a) => Some(
                TcpListener::bind(a)
                    .await
                    .with_context(|| format!("while binding the IPP listener on {a}"))?,
            ),
            None => None,
        };
        let secure = match (cfg.listen_tls, &tls) {
            (Some(a), Some(_)) => Some(
                TcpListener::bind(a)
                    .await
                    .with_context(|| format!("while binding the IPPS listener on {a}"))?,
            ),
            (Some(_), None) => anyhow::bail!("ipp.listen_tls is set but no TLS identity was given"),
            (None, _) => None,
        };
        let addr = plain.as_ref().map(TcpListener::local_addr).transpose()?;
        let tls_addr = secure.as_ref().map(TcpListener::local_addr).transpose()?;
        let now = unix_now();
        let mut sites = HashMap::new();
        let mut list = Vec::new();
        for sc in &cfg.sites {
            let site = Arc::new(Site::load(sc.clone(), &store, now)?);
            sites.insert(sc.name.clone(), Arc::clone(&site));
            if let Some(mail) = &sc.mail {
                sites.insert(mail.replacen('@', "%", 1), Arc::clone(&site));
            }
            list.push(site);
        }
        let front = Arc::new(Front {
            cfg,
            store,
            auth,
            sites,
            list,
            wake,
            plain_port: addr.map(|a| a.port()),
            tls_port: tls_addr.map(|a| a.port()),
            next_subscription: Mutex::new(1),
            next_wake: AtomicU64::new(1),
            connections: Arc::default(),
        });
        let tracker = TaskTracker::new();
        if let Some(l) = plain {
            info!(addr = ?addr, "IPP front listening (plain HTTP).");
            tracker.spawn(accept_loop(
                Arc::clone(&front),
                l,
                None,
                shutdown.clone(),
                tracker.clone(),
            ));
        }
        if let (Some(l), Some(tls)) = (secure, tls) {
            info!(addr = ?tls_addr, "IPP front listening (TLS).");
            tracker.spawn(accept_loop(
                Arc::clone(&front),
                l,
                Some(TlsAcceptor::from(tls)),
                shutdown.clone(),
                tracker.clone(),
            ));
        }
        tracker.spawn(reaper(Arc::clone(&front), shutdown.clone()));
        // Jobs that were waiting for an absent agent before a restart.
        for site in &front.list {
            front.maybe_wake(site);
        }
        Ok(Self {
            front,
            addr,
            tls_addr,
            tracker,
            shutdown,
        })
    }

    /// Reports what the mailer did with the request of wake-up `wake`
    /// ([`WakeRequest::wake`]).
    pub fn wake_outcome(&self, site: &str, kind: WakeKind, wake: u64, outcome: WakeOutcome) {
        self.front.wake_outcome(site, kind, wake, outcome);
    }

    /// A handle for the mailer bridge, which outlives borrows of `self`.
    pub fn handle(&self) -> FrontHandle {
        FrontHandle(Arc::clone(&self.front))
    }

    /// A snapshot for status pages: `(site, attached, queued jobs)`.
    pub fn sites(&self) -> Vec<(String, bool, usize)> {
        self.front
            .list
            .iter()
            .map(|s| {
                let queued = self
                    .front
                    .store
                    .jobs(&s.cfg.name, Some(false))
                    .map(|j| j.len())
                    .unwrap_or(0);
                (s.cfg.name.clone(), s.attached(), queued)
            })
            .collect()
    }

    /// Stops accepting and waits for the tasks, at most `deadline`.
    pub async fn shutdown(self, deadline: Duration) -> bool {
        self.shutdown.cancel();
        self.tracker.close();
        tokio::time::timeout(deadline, self.tracker.wait())
            .await
            .is_ok()
    }
}

/// A cloneable handle to a running front, for the wake-up mail bridge.
#[derive(Debug, Clone)]
pub struct FrontHandle(Arc<Front>);

impl FrontHandle {
    /// Reports what the mailer did with the request of wake-up `wake`
    /// ([`WakeRequest::wake`]).
    pub fn wake_outcome(&self, site: &str, kind: WakeKind, wake: u64, outcome: WakeOutcome) {
        self.0.wake_outcome(site, kind, wake, outcome);
    }
}

/// State shared by every request.
#[derive(Debug)]
pub(crate) struct Front {
    cfg: IppFrontSection,
    store: JobStore,
    auth: Arc<Authenticator>,
    /// By name and by `account%domain` alias.
    sites: HashMap<String, Arc<Site>>,
    list: Vec<Arc<Site>>,
    wake: Option<mpsc::UnboundedSender<WakeRequest>>,
    plain_port: Option<u16>,
    tls_port: Option<u16>,
    next_subscription: Mutex<i32>,
    /// The next [`Wake::id`].
    next_wake: AtomicU64,
    /// Open connections, for [`MAX_CONNECTIONS`] and
    /// [`MAX_CONNECTIONS_PER_ADDRESS`].
    connections: Arc<Mutex<Connections>>,
}

/// One server site.
#[derive(Debug)]
pub(crate) struct Site {
    cfg: SiteConfig,
    state: Mutex<SiteState>,
    /// Bumped on every event, so long polls wake.
    events: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct SiteState {
    /// The attached output devices, by UUID: a site may have several
    /// (PWG 5100.18), each holding the jobs it acknowledged; the first
    /// Acknowledge-Job of a job wins it.
    devices: HashMap<String, Attached>,
    /// The printer attributes the site mirrors: those of the device that
    /// last sent Update-Output-Device-Attributes.
    attrs: Vec<IppAttribute>,
    subscriptions: HashMap<i32, Subscription>,
    wake: Option<Wake>,
    /// Devices that deregistered (bounded): only a new registration
    /// brings them back.
    deregistered: std::collections::HashSet<String>,
    /// An Identify-Printer waiting for the agent: its identify-actions
    /// and message, handed over by Acknowledge-Identify-Printer.
    identify: Option<(Vec<String>, Option<String>)>,
}

/// An attached output device (the key of [`SiteState::devices`] is its
/// UUID).
#[derive(Debug, Clone)]
struct Attached {
    /// The last sign of life: its lease runs from here.
    last_seen: Instant,
    /// Get-Notifications long polls open now on its subscriptions: a
    /// device waiting in one is alive however long the wait.
    polls: usize,
}

impl Attached {
    fn new() -> Self {
        Self {
            last_seen: Instant::now(),
            polls: 0,
        }
    }
}

#[derive(Debug)]
struct Subscription {
    events: Vec<String>,
    lease_until: Instant,
    lease: Duration,
    next_seq: i32,
    queue: std::collections::VecDeque<Event>,
    /// The output device whose agent polls it: a Get-Notifications on it
    /// renews that device's lease even when it names no device (ippproxy
    /// names none). Set from output-device-uuid at Create-Printer-
    /// Subscriptions, or later (see `ops::vouched_devices`).
    device: Option<String>,
    /// Who created it, to tie it to the device registered next from there.
    addr: IpAddr,
}

#[derive(Debug, Clone)]
struct Event {
    seq: i32,
    kind: &'static str,
    job_id: i32,
    job_state: i32,
    reasons: Vec<String>,
}

/// A wake-up in progress for a site.
#[derive(Debug, Clone)]
struct Wake {
    /// Tells the mailer's outcomes for this wake-up from late ones for an
    /// earlier one ([`WakeRequest::wake`]).
    id: u64,
    jobs: Vec<i32>,
    /// When the mail went out; the attach deadline runs from here.
    sent: Option<Instant>,
    /// A second mail was asked for, half-way to the deadline.
    resent: bool,
    /// The mailer's last error while it retries.
    error: Option<String>,
}

impl Site {
    fn load(cfg: SiteConfig, store: &JobStore, _now: i64) -> Result<Self, StoreError> {
        let devices = store.devices(&cfg.name)?;
        let mut state = SiteState::default();
        if let Some(last) = devices.last() {
            state.attrs = attrs::decode(&last.attrs);
        }
        // Give each device that had not left one lease to come back after
        // a restart.
        for d in devices.iter().filter(|d| !d.detached) {
            state.devices.insert(d.uuid.clone(), Attached::new());
        }
        Ok(Self {
            cfg,
            state: Mutex::new(state),
            events: watch::channel(0).0,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SiteState> {
        match self.state.lock() {
            Ok(g) => g,
            // The state is plain data, consistent between statements.
            Err(p) => p.into_inner(),
        }
    }

    fn attached(&self) -> bool {
        !self.lock().devices.is_empty()
    }

    /// Queues an event for every subscription that wants it and wakes the
    /// long polls.
    fn publish(&self, kind: &'static str, job: &store::JobRow) {
        {
            let mut st = self.lock();
            for sub in st.subscriptions.values_mut() {
                let wanted = sub.events.iter().any(|e| {
                    e == kind
                        || (e == "job-state-changed" && kind == "job-completed")
                        || (e == "job-completed" && kind == "job-state-changed" && job.is_final())
                });
                if !wanted {
                    continue;
                }
                let seq = sub.next_seq;
                sub.next_seq += 1;
                sub.queue.push_back(Event {
                    seq,
                    kind,
                    job_id: job.id,
                    job_state: job.state,
                    reasons: job.reasons.clone(),
                });
                while sub.queue.len() > MAX_EVENTS {
                    sub.queue.pop_front();
                }
            }
        }
        self.events.send_modify(|n| *n += 1);
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(1)
}

/// The key a client address is capped by: IPv4 (also when mapped into
/// IPv6) as it is, IPv6 by its /64, which one subscriber holds whole.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from(
            u128::from(v6) & !((1u128 << 64) - 1),
        )),
        v4 => v4,
    }
}

/// The open connections, for the caps (`ipp.max_connections`,
/// `ipp.max_connections_per_address`).
#[derive(Debug, Default)]
struct Connections {
    total: usize,
    by_addr: HashMap<IpAddr, usize>,
}

impl Connections {
    /// Counts a new connection from `addr` in, or names the cap it would
    /// go over.
    fn admit(
        this: &Arc<Mutex<Self>>,
        addr: IpAddr,
        max: usize,
        max_per_addr: usize,
    ) -> Result<ConnSlot, &'static str> {
        let mut guard = match this.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let c = &mut *guard;
        if c.total >= max {
            return Err("the front's connection limit");
        }
        let n = c.by_addr.entry(addr).or_default();
        if *n >= max_per_addr {
            return Err("the per-address connection limit");
        }
        *n += 1;
        c.total += 1;
        Ok(ConnSlot {
            connections: Arc::clone(this),
            addr,
        })
    }
}

/// An admitted connection's place in [`Connections`], given back when the
/// connection's task ends.
#[derive(Debug)]
struct ConnSlot {
    connections: Arc<Mutex<Connections>>,
    addr: IpAddr,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut guard = match self.connections.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let c = &mut *guard;
        c.total = c.total.saturating_sub(1);
        let left = match c.by_addr.get_mut(&self.addr) {
            Some(n) => {
                *n = n.saturating_sub(1);
                *n
            }
            None => 0,
        };
        if left == 0 {
            c.by_addr.remove(&self.addr);
        }
    }
}

/// Per-connection facts.
#[derive(Debug)]
pub(crate) struct Conn {
    peer: SocketAddr,
    tls: bool,
    /// The user whose Basic credentials were verified on this connection,
    /// with a hash of the header that carried them.
    verified: Mutex<Option<(String, [u8; 32])>>,
}

async fn accept_loop(
    front: Arc<Front>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            () = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "IPP accept failed; retrying.");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let slot = match Connections::admit(
            &front.connections,
            address_key(peer.ip()),
            front.cfg.max_connections,
            front.cfg.max_connections_per_address,
        ) {
            Ok(slot) => slot,
            Err(limit) => {
                warn!(%peer, "IPP connection refused: {limit} is reached; closing it.");
                drop(tcp);
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        if let Err(e) = watch_liveness(&tcp, front.cfg.answer_stall_timeout) {
            debug!(error = %e, "Cannot set keepalive and the user timeout on an IPP connection.");
        }
        let front = Arc::clone(&front);
        let tls = tls.clone();
        let shutdown = shutdown.clone();
        let span = tracing::info_span!("ipp", %peer);
        tracker.spawn(
            async move {
                // Counted until the connection ends.
                let _slot = slot;
                let deadline = front.cfg.handshake_timeout;
                match tls {
                    None => serve(front, tcp, peer, false, shutdown).await,
                    Some(acceptor) => {
                        match tokio::time::timeout(deadline, acceptor.accept(tcp)).await {
                            Ok(Ok(stream)) => serve(front, stream, peer, true, shutdown).await,
                            Ok(Err(e)) => debug!(error = %e, "TLS handshake failed."),
                            Err(_) => debug!(?deadline, "TLS handshake timed out."),
                        }
                    }
                }
            }
            .instrument(span),
        );
    }
}

/// Makes the kernel end a connection whose client is gone or takes
/// nothing: keepalive probes after a minute of quiet find a client that
/// vanished (an agent's long poll whose NAT forgot it), and TCP's user
/// timeout drops one that takes none of an answer for `answer_stall`
/// (Linux counts a shut window as well as unacknowledged data), such as a
/// client pipelining requests and reading no answers. hyper's own
/// deadlines only cover reading a request.
fn watch_liveness(tcp: &tokio::net::TcpStream, answer_stall: Duration) -> std::io::Result<()> {
    let sock = socket2::SockRef::from(tcp);
    sock.set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(Duration::from_secs(60))
            .with_interval(Duration::from_secs(20))
            .with_retries(3),
    )?;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    sock.set_tcp_user_timeout(Some(answer_stall))?;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = answer_stall;
    Ok(())
}

async fn serve<S>(
    front: Arc<Front>,
    stream: S,
    peer: SocketAddr,
    tls: bool,
    shutdown: CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let conn = Arc::new(Conn {
        peer,
        tls,
        verified: Mutex::new(None),
    });
    let header_timeout = front.cfg.header_timeout;
    let service = hyper::service::service_fn(move |req| {
        let front = Arc::clone(&front);
        let conn = Arc::clone(&conn);
        async move { Ok::<_, Infallible>(handle(front, conn, req).await) }
    });
    let http = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(http);
    tokio::select! {
        r = http.as_mut() => if let Err(e) = r {
            debug!(error = %e, "IPP connection ended with an error.");
        },
        () = shutdown.cancelled() => {
            http.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), http).await;
        }
    }
}

/// A response body: bytes, or bytes followed by a spooled document.
pub(crate) type Body = BoxBody<Bytes, std::io::Error>;

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

fn plain_response(code: StatusCode, body: &str) -> Response<Body> {
    let mut r = Response::new(full(body.to_owned()));
    *r.status_mut() = code;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Which site (or the printer list) a path names.
pub(crate) enum Target {
    /// `/ipp/print` or `/`: Get-Printers, CUPS-Get-Printers.
    List,
    /// A site (with the job id when the path is a job URI).
    Site(Arc<Site>),
    /// No such site.
    Unknown(String),
}

impl Front {
    fn target(&self, path: &str) -> Target {
        let path = path.trim_end_matches('/');
        if path.is_empty() || path == "/ipp/print" || path == "/ipp" {
            return Target::List;
        }
        let Some(rest) = path.strip_prefix("/ipp/print/") else {
            return Target::Unknown(path.to_owned());
        };
        let name = rest.split('/').next().unwrap_or(rest);
        // The seed's `account%domain`: raw, or with the % itself encoded.
        let candidates = [
            name.to_owned(),
            name.replace("%25", "%"),
            percent_decode(name),
        ];
        for c in candidates {
            if let Some(site) = self.sites.get(&c) {
                return Target::Site(Arc::clone(site));
            }
        }
        Target::Unknown(name.to_owned())
    }

    /// The site's URIs as clients should use them, from the request's
    /// Host header (or `public_host`).
    fn site_uris(
        &self,
        site: &str,
        host_header: Option<&str>,
        conn_tls: bool,
    ) -> Vec<(String, &'static str)> {
        let host = self
            .cfg
            .public_host
            .clone()
            .or_else(|| host_header.map(|h| host_only(h).to_owned()))
            .unwrap_or_else(|| "localhost".to_owned());
        let mut out = Vec::new();
        // The scheme the request came in on first.
        let mut schemes = vec![(conn_tls, self.tls_port), (!conn_tls, self.plain_port)];
        schemes[1].1 = if conn_tls {
            self.plain_port
        } else {
            self.tls_port
        };
        schemes[0].1 = if conn_tls {
            self.tls_port
        } else {
            self.plain_port
        };
        for (tls, port) in schemes {
            let Some(port) = port else { continue };
            let (scheme, sec) = if tls {
                ("ipps", "tls")
            } else {
                ("ipp", "none")
            };
            out.push((
                format!("{scheme}://{}:{port}/ipp/print/{site}", bracket(&host)),
                sec,
            ));
        }
        out
    }

    /// The URI a wake-up mail names: the TLS one when there is one.
    fn proxy_uri(&self, site: &str) -> String {
        let host = self
            .cfg
            .public_host
            .clone()
            .unwrap_or_else(|| "localhost".to_owned());
        match (self.tls_port, self.plain_port) {
            (Some(p), _) => format!("ipps://{}:{p}/ipp/print/{site}", bracket(&host)),
            (None, Some(p)) => format!("ipp://{}:{p}/ipp/print/{site}", bracket(&host)),
            (None, None) => format!("ipps://{}/ipp/print/{site}", bracket(&host)),
        }
    }

    fn description(&self) -> serde_json::Value {
        serde_json::json!({
            "version": 1,
            "service": "faxgate IPP front (PWG 5100.18 Infrastructure Printer)",
            "printers_path": "/ipp/print/",
            "transports": ["long-poll", "poll"],
            "wake_up": ["command-mail", "always-attached"],
            "notify_wait_seconds": self.cfg.notify_wait.as_secs_f64().ceil() as u64,
            "poll_interval_min_seconds": self.cfg.poll_interval_min.as_secs_f64().ceil() as u64,
            "agent_lease_seconds": self.cfg.agent_lease.as_secs(),
            "tls_required_for_agents": true,
            "sites": self.list.iter().map(|s| serde_json::json!({
                "name": s.cfg.name,
                "attached": s.attached(),
                "wake_by_mail": s.cfg.wake.is_some(),
            })).collect::<Vec<_>>(),
        })
    }

    /// The site's status page (printer-more-info): JSON a person or a
    /// script can read. Anyone may GET it, so it holds no job's private
    /// attributes (who printed it, from where): ids, states, reasons and
    /// messages only, and the front's own messages name no client.
    fn site_status(&self, site: &Site) -> serde_json::Value {
        let jobs = self
            .store
            .jobs(&site.cfg.name, Some(false))
            .unwrap_or_default();
        let st = site.lock();
        serde_json::json!({
            "site": site.cfg.name,
            "attached": !st.devices.is_empty(),
            "devices": st.devices.len(),
            "paused": self.store.is_paused(&site.cfg.name).unwrap_or(false),
            "waking": st.wake.is_some(),
            "jobs": jobs.iter().map(|j| serde_json::json!({
                "id": j.id,
                "state": crate::codes::job_state::name(j.state),
                "reasons": j.reasons,
                "message": j.message,
            })).collect::<Vec<_>>(),
        })
    }

    fn next_subscription_id(&self) -> i32 {
        let mut n = match self.next_subscription.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let id = *n;
        *n = if *n >= i32::MAX - 1 { 1 } else { *n + 1 };
        id
    }
}

fn bracket(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

fn host_only(host_header: &str) -> &str {
    if let Some(rest) = host_header.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    host_header.rsplit_once(':').map_or(host_header, |(h, _)| h)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

type BodyStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = std::io::Result<Bytes>> + Send>>;

/// The request body as a reader, cut off after `limit` bytes (the caller
/// checks whether the limit was reached). A body that makes no progress
/// for `stall`, or that has averaged less than `min_rate` bytes a second
/// once `stall` has passed (0: no minimum), ends with a `TimedOut` error
/// (see [`stalled`]).
fn body_reader(
    body: Incoming,
    limit: u64,
    stall: Duration,
    min_rate: u64,
) -> tokio::io::Take<StreamReader<BodyStream, Bytes>> {
    use futures_util::StreamExt as _;
    let frames = Box::pin(http_body_util::BodyStream::new(body));
    let started = tokio::time::Instant::now();
    // The state: the frames still to read and the bytes read so far.
    let stream = futures_util::stream::unfold(Some((frames, 0u64)), move |state| async move {
        let (mut frames, had) = state?;
        // When what has come so far falls below the minimum rate.
        let behind = (min_rate > 0)
            .then(|| started + stall + Duration::from_secs_f64(had as f64 / min_rate as f64));
        let stall_at = tokio::time::Instant::now() + stall;
        let (by, too_slow) = match behind {
            Some(b) if b < stall_at => (b, true),
            _ => (stall_at, false),
        };
        match tokio::time::timeout_at(by, frames.next()).await {
            Ok(None) => None,
            Ok(Some(Ok(frame))) => {
                let data = frame.into_data().unwrap_or_default();
                let had = had + data.len() as u64;
                Some((Ok(data), Some((frames, had))))
            }
            Ok(Some(Err(e))) => Some((Err(std::io::Error::other(e)), Some((frames, had)))),
            Err(_) if too_slow => {
                info!(
                    min_rate,
                    bytes = had,
                    "IPP request too slow: its body arrives below the minimum rate; answering client-error-timeout and closing the connection."
                );
                let e = std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "{had} bytes of request data in {:.1} s, below the minimum of {min_rate} bytes a second",
                        started.elapsed().as_secs_f64()
                    ),
                );
                Some((Err(e), None))
            }
            Err(_) => {
                info!(timeout = ?stall, "IPP request stalled: no body data within the timeout; answering client-error-timeout and closing the connection.");
                let e = std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no request data for {stall:?}"),
                );
                Some((Err(e), None))
            }
        }
    });
    tokio::io::AsyncReadExt::take(StreamReader::new(Box::pin(stream) as BodyStream), limit)
}

/// client-error-timeout for a read of the request that failed because the
/// request stalled ([`body_reader`]); None for any other failure.
pub(crate) fn stalled(e: &std::io::Error) -> Option<message::Refusal> {
    (e.kind() == std::io::ErrorKind::TimedOut).then(|| {
        message::Refusal::new(
            status::TIMEOUT,
            format!("the request stalled ({e}); closing the connection"),
        )
    })
}

/// An answer: the IPP response, maybe a document to send after it, and
/// the HTTP status (200, or 401 for missing credentials).
pub(crate) struct Answer {
    pub(crate) resp: IppRequestResponse,
    pub(crate) document: Option<std::path::PathBuf>,
    pub(crate) http: StatusCode,
}

impl Answer {
    pub(crate) fn ok(resp: IppRequestResponse) -> Self {
        Self {
            resp,
            document: None,
            http: StatusCode::OK,
        }
    }
}

async fn handle(front: Arc<Front>, conn: Arc<Conn>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    if req.method() == hyper::Method::GET {
        if path == DESCRIPTION_PATH {
            let mut r = Response::new(full(front.description().to_string()));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            return r;
        }
        if let Target::Site(site) = front.target(&path) {
            let mut r = Response::new(full(front.site_status(&site).to_string()));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            return r;
        }
        return plain_response(
            StatusCode::NOT_FOUND,
            "not found; IPP is POST application/ipp\n",
        );
    }
    if req.method() != hyper::Method::POST {
        return plain_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "use POST with application/ipp\n",
        );
    }
    let is_ipp = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().to_ascii_lowercase().starts_with("application/ipp"));
    if !is_ipp {
        return plain_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/ipp\n",
        );
    }
    let host = req
        .headers()
        .get(hyper::header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let authorization = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = req.into_body();
    let limit = MAX_ATTRIBUTE_BYTES + front.cfg.max_document + 1;
    let mut reader = body_reader(
        body,
        limit,
        front.cfg.body_stall_timeout,
        front.cfg.min_body_rate,
    );

    // The header first, so even an unparsable request is answered with its
    // own version and request-id.
    let mut head = [0u8; 8];
    if let Err(e) = tokio::io::AsyncReadExt::read_exact(&mut reader, &mut head).await {
        let r = stalled(&e).unwrap_or_else(|| {
            message::Refusal::new(status::BAD_REQUEST, format!("truncated IPP header: {e}"))
        });
        return ipp_response(Answer::ok(message::response(
            IppVersion::v1_1(),
            1,
            r.status,
            Some(&r.message),
        )));
    }
    let version = IppVersion(u16::from_be_bytes([head[0], head[1]]));
    let request_id = i32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    let answer_version = if matches!(version.0 >> 8, 1 | 2) {
        version
    } else {
        IppVersion::v1_1()
    };
    // The attributes (at most MAX_ATTRIBUTE_BYTES) are read into memory
    // and parsed there; what follows them is the document, streamed.
    let refused = |r: message::Refusal| {
        debug!(status = %r, "IPP request refused before its operation.");
        ipp_response(Answer::ok(message::response(
            answer_version,
            request_id,
            r.status,
            Some(&r.message),
        )))
    };
    let bytes = match read_attributes(&mut reader, head).await {
        Ok(b) => b,
        Err(r) => return refused(r),
    };
    let msg = match message::parse(&bytes) {
        Ok((msg, _)) => msg,
        Err(r) => return refused(r),
    };
    let document = &mut reader;
    let ctx = ops::Ctx {
        front: &front,
        conn: &conn,
        host: host.as_deref(),
        authorization: authorization.as_deref(),
        target: front.target(&path),
        path: &path,
    };
    let answer = ops::dispatch(ctx, msg, document).await;
    ipp_response(answer)
}

/// Reads a request's attribute section, header included, by walking its
/// framing (tag; name length, name; value length, value) up to the
/// end-of-attributes tag, so that nothing past it is consumed. Refuses a
/// section over [`MAX_ATTRIBUTE_BYTES`] or one cut short.
async fn read_attributes<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    head: [u8; 8],
) -> Result<Vec<u8>, message::Refusal> {
    use tokio::io::AsyncReadExt as _;
    let cut = |what: &str| {
        message::Refusal::new(
            status::BAD_REQUEST,
            format!("malformed IPP request: the attributes end inside {what}"),
        )
    };
    let mut buf = head.to_vec();
    loop {
        if buf.len() as u64 > MAX_ATTRIBUTE_BYTES {
            return Err(message::Refusal::new(
                status::REQUEST_ENTITY_TOO_LARGE,
                "the request's attributes exceed 1 MiB",
            ));
        }
        let tag = r.read_u8().await.map_err(|e| {
            stalled(&e).unwrap_or_else(|| cut("the attribute list (no end-of-attributes-tag)"))
        })?;
        buf.push(tag);
        if tag == 0x03 {
            return Ok(buf);
        }
        if tag < 0x10 {
            continue;
        }
        for what in ["an attribute name", "an attribute value"] {
            let n = r
                .read_u16()
                .await
                .map_err(|e| stalled(&e).unwrap_or_else(|| cut(what)))?;
            buf.extend_from_slice(&n.to_be_bytes());
            let start = buf.len();
            buf.resize(start + usize::from(n), 0);
            r.read_exact(&mut buf[start..])
                .await
                .map_err(|e| stalled(&e).unwrap_or_else(|| cut(what)))?;
        }
    }
}

fn ipp_response(answer: Answer) -> Response<Body> {
    let head = answer.resp.to_bytes();
    let body = match answer.document {
        None => full(head),
        Some(path) => {
            let head_stream =
                futures_util::stream::once(async move { Ok::<_, std::io::Error>(head) });
            let file_stream =
                futures_util::stream::once(async move { tokio::fs::File::open(path).await })
                    .map_ok(ReaderStream::new)
                    .try_flatten();
            use futures_util::StreamExt as _;
            BodyExt::boxed(StreamBody::new(
                head_stream.chain(file_stream).map_ok(Frame::data),
            ))
        }
    };
    let mut r = Response::new(body);
    *r.status_mut() = answer.http;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/ipp"),
    );
    if answer.http == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Basic realm=\"faxgate\""),
        );
    }
    r
}

async fn reaper(front: Arc<Front>, shutdown: CancellationToken) {
    let tick = (front.cfg.agent_lease / 8).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut last_purge = Instant::now();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(tick) => {}
        }
        let now = Instant::now();
        for site in &front.list {
            let expired: Vec<String> = {
                let mut st = site.lock();
                st.subscriptions.retain(|_, s| s.lease_until > now);
                let expired: Vec<String> = st
                    .devices
                    .iter()
                    .filter(|(_, d)| {
                        d.polls == 0 && now.duration_since(d.last_seen) > front.cfg.agent_lease
                    })
                    .map(|(uuid, _)| uuid.clone())
                    .collect();
                for uuid in &expired {
                    st.devices.remove(uuid);
                }
                expired
            };
            for uuid in expired {
                info!(site = %site.cfg.name, device = %uuid, "Printer agent lease expired; detaching it.");
                front.detach(site, &uuid);
            }
            front.check_wake_deadline(site, now);
            front.expire_open_jobs(site);
        }
        if now.duration_since(last_purge) > Duration::from_secs(60) {
            last_purge = now;
            let before = unix_now() - front.cfg.job_retention.as_secs() as i64;
            match tokio::task::block_in_place(|| front.store.purge_finished(before)) {
                Ok(0) => {}
                Ok(n) => info!(jobs = n, "Purged finished jobs past retention."),
                Err(e) => warn!(error = %e, "Purging finished jobs failed."),
            }
        }
    }
}

#[cfg(test)]
mod address_tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_capped_by_their_slash_64() {
        let k = |s: &str| address_key(s.parse().unwrap());
        assert_eq!(k("2001:db8:0:1::1"), k("2001:db8:0:1:ffff::2"));
        assert_ne!(k("2001:db8:0:1::1"), k("2001:db8:0:2::1"));
        assert_eq!(k("::ffff:192.0.2.7"), k("192.0.2.7"));
        assert_ne!(k("192.0.2.7"), k("192.0.2.8"));
    }
}
