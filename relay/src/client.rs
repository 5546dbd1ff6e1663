//! The device side of the relay: log in, keep connections alive with
//! HOLD, keep spare connections so several sessions can run at once,
//! reconnect with backoff, and turn a bridged connection into a
//! [`Session`] (`AsyncRead + AsyncWrite`).
//!
//! # Actors
//! - One **worker** task per connection owns it while it is vacant: it
//!   sends HOLD on the interval the relay announced, watches for the
//!   answer (a missing HOLD-ACK means a dead relay or a NAT that forgot
//!   us), runs CONNECT/LIST/LOGOUT commands, and turns CONNECT-NOTIFY
//!   into an [`IncomingDemand`]. During a session the connection is lent
//!   to the [`Session`] and comes back after RELEASE.
//! - One **supervisor** task keeps `1 + spares` vacant connections (up to
//!   `max_connections`), opening spares with the resume token so they
//!   cost the relay no Argon2 check, and retrying failures with
//!   exponential backoff and full jitter.

use crate::connection::{ConnError, Connection};
use crate::protocol::{
    self, Code, Frame, FrameType, HEADER_LEN, PREAMBLE, PresenceEntry, TOKEN_LEN,
};
use crate::tls;
use crate::transport::{Stream, tune_socket};
use bytes::{Buf, BufMut, BytesMut};
use faxgate_config::{RelayClientConfig, Secret};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{Instrument, debug, info, info_span, warn};

/// Errors a client call can return.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The network failed.
    #[error("relay connection failed: {0}")]
    Io(#[from] io::Error),
    /// TLS setup failed.
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    /// The relay sent something that is not the protocol.
    #[error("relay protocol error: {0}")]
    Protocol(#[from] ConnError),
    /// The relay answered ERR.
    #[error("relay refused: {code}: {message}")]
    Refused {
        /// Why.
        code: Code,
        /// The relay's explanation.
        message: String,
    },
    /// The relay closed the connection with BYE.
    #[error("relay closed the connection: {code}: {message}")]
    Closed {
        /// Why.
        code: Code,
        /// The relay's explanation.
        message: String,
    },
    /// A deadline passed.
    #[error("timed out while {0}")]
    Timeout(&'static str),
    /// No connection to the relay is up.
    #[error("not connected to the relay")]
    NotConnected,
    /// Every connection is in a session and no more may be opened.
    #[error("no vacant relay connection (all {0} are in sessions)")]
    NoVacantConnection(usize),
    /// The demand was withdrawn by the relay before it could be accepted.
    #[error("the relay withdrew the demand (the caller gave up or it timed out)")]
    Withdrawn,
    /// The client was logged out or shut down.
    #[error("the client is logged out")]
    LoggedOut,
}

impl ClientError {
    /// The relay's code, when the relay said why.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Refused { code, .. } | ClientError::Closed { code, .. } => Some(*code),
            _ => None,
        }
    }
}

enum WorkerCmd {
    Connect {
        target: String,
        reply: oneshot::Sender<Result<Session, ClientError>>,
    },
    List {
        reply: oneshot::Sender<Result<Vec<PresenceEntry>, ClientError>>,
    },
    Logout {
        reply: oneshot::Sender<Result<(), ClientError>>,
    },
}

struct Slot {
    id: u64,
    cmd: mpsc::Sender<WorkerCmd>,
    busy: Arc<AtomicBool>,
}

/// What the pool looks like now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStatus {
    /// Connections logged in.
    pub connections: usize,
    /// Of those, vacant.
    pub vacant: usize,
}

struct Inner {
    cfg: RelayClientConfig,
    tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
    token: Mutex<Option<Secret<[u8; TOKEN_LEN]>>>,
    slots: Mutex<Vec<Slot>>,
    changed: Notify,
    incoming: mpsc::Sender<IncomingDemand>,
    shutdown: CancellationToken,
    /// Stops the supervisor from opening connections (logout), while the
    /// workers still run the LOGOUT itself.
    pool_stop: CancellationToken,
    next_slot: AtomicU64,
    /// Set after a kick: the next reconnect waits the longest backoff.
    kicked: AtomicBool,
    /// Set after an AUTH_FAILED login: retry slowly.
    auth_failed: AtomicBool,
}

/// A logged-in device. Cheap to clone; the connections close when the
/// last clone is dropped or [`RelayClient::logout`] is called.
#[derive(Clone)]
pub struct RelayClient {
    inner: Arc<Inner>,
    _guard: Arc<DropGuard>,
}

impl std::fmt::Debug for RelayClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayClient")
            .field("user", &self.inner.cfg.user)
            .field("server", &self.inner.cfg.server)
            .field("pool", &self.status())
            .finish()
    }
}

/// Demands from other users, in arrival order.
pub type Incoming = mpsc::Receiver<IncomingDemand>;

impl RelayClient {
    /// Logs in with the password (seed (1)-(3)), then keeps the pool
    /// going in the background. Fails if the first login fails, with the
    /// relay's reason.
    pub async fn start(cfg: RelayClientConfig) -> Result<(RelayClient, Incoming), ClientError> {
        let tls = match &cfg.tls {
            None => None,
            Some(t) => {
                let config = match (&t.pin_sha256, &t.ca_file) {
                    (Some(pin), _) => tls::pinned_client_config(tls::parse_fingerprint(pin)?),
                    (None, Some(ca)) => tls::ca_client_config(ca)?,
                    (None, None) => tls::pinned_client_config(tls::parse_fingerprint("")?),
                };
                let host = t
                    .server_name
                    .clone()
                    .unwrap_or_else(|| host_of(&cfg.server));
                Some((config, tls::server_name(&host)?))
            }
        };
        let (incoming_tx, incoming_rx) = mpsc::channel(16);
        let shutdown = CancellationToken::new();
        let inner = Arc::new(Inner {
            cfg,
            tls,
            token: Mutex::new(None),
            slots: Mutex::new(Vec::new()),
            changed: Notify::new(),
            incoming: incoming_tx,
            pool_stop: shutdown.child_token(),
            shutdown: shutdown.clone(),
            next_slot: AtomicU64::new(1),
            kicked: AtomicBool::new(false),
            auth_failed: AtomicBool::new(false),
        });
        let (conn, hold) = open(&inner, false).await?;
        spawn_worker(&inner, conn, hold);
        let span = info_span!("relay_pool", user = %inner.cfg.user);
        tokio::spawn(supervise(Arc::clone(&inner)).instrument(span));
        let client = RelayClient {
            inner,
            _guard: Arc::new(shutdown.drop_guard()),
        };
        Ok((client, incoming_rx))
    }

    /// The user this client logged in as.
    pub fn user(&self) -> &str {
        &self.inner.cfg.user
    }

    /// Connections and vacancies now.
    pub fn status(&self) -> PoolStatus {
        let slots = lock(&self.inner.slots);
        PoolStatus {
            connections: slots.len(),
            vacant: slots
                .iter()
                .filter(|s| !s.busy.load(Ordering::Acquire))
                .count(),
        }
    }

    /// Waits until the pool has at least `vacant` vacant connections.
    pub async fn wait_vacant(&self, vacant: usize, limit: Duration) -> Result<(), ClientError> {
        let deadline = Instant::now() + limit;
        loop {
            let notified = self.inner.changed.notified();
            if self.status().vacant >= vacant {
                return Ok(());
            }
            tokio::select! {
                _ = notified => {}
                _ = sleep_until(deadline) => return Err(ClientError::Timeout("waiting for vacant connections")),
            }
        }
    }

    /// Takes a vacant connection for a command, waiting (up to the
    /// connect timeout) for the supervisor to open one or for a session
    /// to release one.
    async fn take_vacant(&self) -> Result<(mpsc::Sender<WorkerCmd>, Arc<AtomicBool>), ClientError> {
        let deadline = Instant::now() + self.inner.cfg.connect_timeout;
        loop {
            if self.inner.shutdown.is_cancelled() {
                return Err(ClientError::LoggedOut);
            }
            let notified = self.inner.changed.notified();
            let total = {
                let slots = lock(&self.inner.slots);
                for s in slots.iter() {
                    if s.busy
                        .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        return Ok((s.cmd.clone(), Arc::clone(&s.busy)));
                    }
                }
                slots.len()
            };
            if total < usize::from(self.inner.cfg.max_connections) {
                // Wake the supervisor: it may open another connection.
                self.inner.changed.notify_waiters();
            }
            // Otherwise a session will end and release its connection.
            tokio::select! {
                _ = notified => {}
                _ = sleep_until(deadline) => {
                    return Err(if total == 0 { ClientError::NotConnected } else { ClientError::NoVacantConnection(total) });
                }
            }
        }
    }

    /// Seed (6)-(9): asks the relay to bridge us to `target`.
    pub async fn connect(&self, target: &str) -> Result<Session, ClientError> {
        let (cmd, busy) = self.take_vacant().await?;
        let (tx, rx) = oneshot::channel();
        let msg = WorkerCmd::Connect {
            target: target.to_owned(),
            reply: tx,
        };
        if cmd.send(msg).await.is_err() {
            busy.store(false, Ordering::Release);
            return Err(ClientError::NotConnected);
        }
        rx.await.unwrap_or(Err(ClientError::NotConnected))
    }

    /// The logged-in users this user may see, with their vacant counts.
    pub async fn list(&self) -> Result<Vec<PresenceEntry>, ClientError> {
        let (cmd, busy) = self.take_vacant().await?;
        let (tx, rx) = oneshot::channel();
        if cmd.send(WorkerCmd::List { reply: tx }).await.is_err() {
            busy.store(false, Ordering::Release);
            return Err(ClientError::NotConnected);
        }
        rx.await.unwrap_or(Err(ClientError::NotConnected))
    }

    /// Seed (22)-(24): logs out; the relay closes every connection of
    /// this user, and the pool stops reconnecting.
    pub async fn logout(&self) -> Result<(), ClientError> {
        // From here on the supervisor opens nothing new.
        self.inner.pool_stop.cancel();
        let taken = self.take_vacant().await;
        let result = match taken {
            Ok((cmd, _busy)) => {
                let (tx, rx) = oneshot::channel();
                if cmd.send(WorkerCmd::Logout { reply: tx }).await.is_err() {
                    Err(ClientError::NotConnected)
                } else {
                    rx.await.unwrap_or(Err(ClientError::NotConnected))
                }
            }
            // Every connection carries a session (none came free within
            // the connect timeout): LOGOUT goes over a connection of its
            // own, so the relay still closes everything and the token dies.
            Err(ClientError::NoVacantConnection(_)) => self.logout_on_a_new_connection().await,
            Err(e) => Err(e),
        };
        // Wait for the vacant workers to see their connections close;
        // ones lent to sessions end when the application drops those.
        let deadline = Instant::now() + Duration::from_secs(5);
        let vacant_left = |inner: &Inner| {
            lock(&inner.slots)
                .iter()
                .any(|s| !s.busy.load(Ordering::Acquire))
        };
        while vacant_left(&self.inner) && Instant::now() < deadline {
            let notified = self.inner.changed.notified();
            let _ = timeout(Duration::from_millis(100), notified).await;
        }
        self.inner.shutdown.cancel();
        result
    }

    /// LOGOUT over a connection opened for it (RESUME, no password).
    async fn logout_on_a_new_connection(&self) -> Result<(), ClientError> {
        let (mut conn, _hold) = open(&self.inner, true).await?;
        conn.write_frame(&Frame::Logout).await?;
        match Worker::answer(&mut conn, self.inner.cfg.connect_timeout, None).await {
            Err(ClientError::Closed {
                code: Code::LoggedOut,
                ..
            }) => Ok(()),
            Err(e) => Err(e),
            Ok(f) => Err(unexpected(&f)),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn host_of(server: &str) -> String {
    let host = server.rsplit_once(':').map(|(h, _)| h).unwrap_or(server);
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned()
}

/// Opens one connection and logs it in: RESUME when `resume` and a
/// token is known, LOGIN otherwise. Returns it with the hold interval.
/// TLS settings for [`dial`]: the rustls config and the server name.
pub type TlsTarget = (
    Arc<rustls::ClientConfig>,
    rustls::pki_types::ServerName<'static>,
);

/// Opens TCP to the relay, and TLS over it when `tls` is given, each
/// step within `limit`.
pub async fn dial(
    server: &str,
    tls: Option<&TlsTarget>,
    limit: Duration,
) -> Result<Stream, ClientError> {
    let tcp = timeout(limit, TcpStream::connect(server))
        .await
        .map_err(|_| ClientError::Timeout("connecting to the relay"))??;
    Ok(match tls {
        None => Stream::Plain(tcp),
        Some((config, name)) => {
            let connector = tokio_rustls::TlsConnector::from(Arc::clone(config));
            let s = timeout(limit, connector.connect(name.clone(), tcp))
                .await
                .map_err(|_| ClientError::Timeout("in the TLS handshake"))??;
            Stream::TlsClient(Box::new(s))
        }
    })
}

async fn open(inner: &Arc<Inner>, resume: bool) -> Result<(Connection, Duration), ClientError> {
    let limit = inner.cfg.connect_timeout;
    let stream = dial(&inner.cfg.server, inner.tls.as_ref(), limit).await?;
    let mut conn = Connection::new(stream, protocol::MAX_DATA_PAYLOAD);
    let token = if resume {
        lock(&inner.token).clone()
    } else {
        None
    };
    let is_resume = token.is_some();
    let login = match token {
        Some(token) => Frame::Resume {
            user: inner.cfg.user.clone(),
            token,
        },
        None => Frame::Login {
            user: inner.cfg.user.clone(),
            password: inner.cfg.password.clone(),
            client: concat!("faxgate/", env!("CARGO_PKG_VERSION")).to_owned(),
        },
    };
    let answer = timeout(limit, async {
        conn.stream.write_all(&PREAMBLE).await?;
        conn.write_frame(&login).await?;
        conn.read_frame().await.map_err(ClientError::from)
    })
    .await
    .map_err(|_| ClientError::Timeout("logging in"))??;
    match answer {
        Some(Frame::LoginOk {
            conn_id,
            hold_interval_ms,
            token,
            ..
        }) => {
            if let Some(t) = token {
                *lock(&inner.token) = Some(t);
            }
            let hold = Duration::from_millis(u64::from(hold_interval_ms.max(100)));
            if let Err(e) = tune_socket(conn.stream.tcp(), hold) {
                debug!(error = %e, "Could not tune the socket.");
            }
            inner.auth_failed.store(false, Ordering::Relaxed);
            info!(
                conn_id,
                resume = is_resume,
                hold_ms = hold.as_millis() as u64,
                "Logged in to the relay."
            );
            Ok((conn, hold))
        }
        Some(Frame::Err { code, message }) => {
            if code == Code::AuthFailed {
                if is_resume {
                    // The token died with our last connection, or at logout.
                    *lock(&inner.token) = None;
                } else {
                    inner.auth_failed.store(true, Ordering::Relaxed);
                }
            }
            Err(ClientError::Refused { code, message })
        }
        Some(Frame::Bye { code, message }) => Err(ClientError::Closed { code, message }),
        Some(other) => Err(ClientError::Refused {
            code: Code::UnexpectedFrame,
            message: format!("relay answered login with {:?}", other.frame_type()),
        }),
        None => Err(ClientError::Io(io::ErrorKind::UnexpectedEof.into())),
    }
}

fn spawn_worker(inner: &Arc<Inner>, conn: Connection, hold: Duration) {
    let (tx, rx) = mpsc::channel(1);
    let busy = Arc::new(AtomicBool::new(false));
    let id = inner.next_slot.fetch_add(1, Ordering::Relaxed);
    lock(&inner.slots).push(Slot {
        id,
        cmd: tx,
        busy: Arc::clone(&busy),
    });
    inner.changed.notify_waiters();
    let w = Worker {
        inner: Arc::clone(inner),
        id,
        busy,
        hold,
    };
    let span = info_span!("relay_conn", user = %inner.cfg.user, slot = id);
    tokio::spawn(w.run(conn, rx).instrument(span));
}

/// Keeps `1 + spares` vacant connections, within `max_connections`.
async fn supervise(inner: Arc<Inner>) {
    let cfg = &inner.cfg;
    let want_vacant = usize::from(cfg.spares) + 1;
    let max = usize::from(cfg.max_connections);
    let mut backoff = cfg.reconnect_initial;
    loop {
        let notified = inner.changed.notified();
        let (total, vacant) = {
            let slots = lock(&inner.slots);
            let vacant = slots
                .iter()
                .filter(|s| !s.busy.load(Ordering::Acquire))
                .count();
            (slots.len(), vacant)
        };
        if inner.pool_stop.is_cancelled() {
            return;
        }
        if total < max && vacant < want_vacant {
            if inner.kicked.load(Ordering::Relaxed) {
                // An admin closed our connections: stay away for the
                // longest backoff rather than bounce straight back. Every
                // worker of the kick sets the flag within moments, so it
                // is cleared only after the wait.
                let delay = kicked_delay(cfg.reconnect_max);
                warn!(
                    retry_ms = delay.as_millis() as u64,
                    "Kicked by the relay admin; waiting before logging in again."
                );
                tokio::select! {
                    _ = inner.pool_stop.cancelled() => return,
                    _ = sleep(delay) => {}
                }
                inner.kicked.store(false, Ordering::Relaxed);
                backoff = cfg.reconnect_max;
                continue;
            }
            // With no live connection the token is dead at the relay.
            match open(&inner, total > 0).await {
                Ok((conn, hold)) => {
                    backoff = cfg.reconnect_initial;
                    if inner.pool_stop.is_cancelled() {
                        return;
                    }
                    spawn_worker(&inner, conn, hold);
                    continue;
                }
                Err(e) => {
                    if matches!(e.code(), Some(Code::AuthFailed)) && total > 0 {
                        // Resume token refused: retry at once with LOGIN.
                        debug!("Resume token refused; logging in with the password.");
                        if lock(&inner.token).is_none() {
                            continue;
                        }
                    }
                    if inner.auth_failed.load(Ordering::Relaxed) {
                        backoff = cfg.reconnect_max;
                    }
                    let delay = jitter(backoff, cfg.reconnect_initial);
                    warn!(error = %e, retry_ms = delay.as_millis() as u64, "Relay connection failed; retrying.");
                    backoff = (backoff * 2).min(cfg.reconnect_max);
                    tokio::select! {
                        _ = inner.pool_stop.cancelled() => return,
                        _ = sleep(delay) => {}
                    }
                    continue;
                }
            }
        }
        tokio::select! {
            _ = inner.pool_stop.cancelled() => return,
            _ = notified => {}
        }
    }
}

/// After a kick: the longest backoff, `reconnect_max` (PROTOCOL.md: "a
/// device that was kicked waits its longest reconnect backoff"), plus a
/// random up to half of it, so that devices kicked together do not come
/// back together. The jitter only adds: a kick is never answered sooner.
fn kicked_delay(max: Duration) -> Duration {
    use rand::Rng;
    let max_ms = max.as_millis() as u64;
    Duration::from_millis(max_ms + rand::thread_rng().gen_range(0..=max_ms / 2))
}

/// "Full jitter": a random delay in `[floor/2, backoff]`, so that many
/// devices cut off at once do not come back at once.
fn jitter(backoff: Duration, floor: Duration) -> Duration {
    use rand::Rng;
    let lo = (floor / 2).as_millis() as u64;
    let hi = (backoff.as_millis() as u64).max(lo + 1);
    Duration::from_millis(rand::thread_rng().gen_range(lo..=hi))
}

struct Worker {
    inner: Arc<Inner>,
    id: u64,
    busy: Arc<AtomicBool>,
    hold: Duration,
}

enum WEvent {
    Shutdown,
    Cmd(Option<WorkerCmd>),
    HoldDue,
    HoldLost,
    Frame(Result<Option<Frame>, ConnError>),
}

impl Worker {
    fn set_busy(&self, busy: bool) {
        self.busy.store(busy, Ordering::Release);
        self.inner.changed.notify_waiters();
    }

    async fn run(self, mut conn: Connection, mut cmds: mpsc::Receiver<WorkerCmd>) {
        let end = loop {
            match self.vacant_loop(conn, &mut cmds).await {
                Ok(c) => conn = c,
                Err(end) => break end,
            }
        };
        match &end {
            ClientError::Closed { code, .. } if *code == Code::Kicked => {
                warn!("Kicked by the relay admin.");
                self.inner.kicked.store(true, Ordering::Relaxed);
            }
            ClientError::Closed { code, .. } if *code == Code::LoggedOut => {
                info!("Logged out.");
            }
            e => info!(reason = %e, "Relay connection ended."),
        }
        lock(&self.inner.slots).retain(|s| s.id != self.id);
        self.inner.changed.notify_waiters();
    }

    /// Serves the connection while vacant, until it is lent to a session
    /// and comes back (`Ok`) or dies (`Err`).
    async fn vacant_loop(
        &self,
        mut conn: Connection,
        cmds: &mut mpsc::Receiver<WorkerCmd>,
    ) -> Result<Connection, ClientError> {
        let mut seq: u32 = 0;
        let mut next_hold = Instant::now() + self.hold;
        let mut awaiting: Option<(u32, Instant)> = None;
        loop {
            let ack_deadline = awaiting.map(|(_, d)| d);
            let ev = tokio::select! {
                biased;
                _ = self.inner.shutdown.cancelled(), if cmds.is_empty() => WEvent::Shutdown,
                c = cmds.recv() => WEvent::Cmd(c),
                _ = sleep_until(ack_deadline.unwrap_or(next_hold)), if ack_deadline.is_some() => WEvent::HoldLost,
                _ = sleep_until(next_hold), if ack_deadline.is_none() => WEvent::HoldDue,
                f = conn.read_frame() => WEvent::Frame(f),
            };
            match ev {
                WEvent::Shutdown | WEvent::Cmd(None) => {
                    // Dropping the connection closes it; the relay counts
                    // it gone (a LOGOUT, if any, was sent by a command).
                    return Err(ClientError::LoggedOut);
                }
                WEvent::HoldDue => {
                    seq = seq.wrapping_add(1);
                    conn.write_frame(&Frame::Hold { seq }).await?;
                    awaiting = Some((
                        seq,
                        Instant::now() + self.hold.max(Duration::from_millis(500)),
                    ));
                    next_hold = Instant::now() + self.hold;
                }
                WEvent::HoldLost => {
                    warn!(
                        hold_ms = self.hold.as_millis() as u64,
                        "No HOLD-ACK from the relay; treating the connection as dead."
                    );
                    return Err(ClientError::Timeout("waiting for HOLD-ACK"));
                }
                WEvent::Cmd(Some(cmd)) => {
                    conn = self.command(conn, cmd).await?;
                    next_hold = Instant::now() + self.hold;
                    awaiting = None;
                }
                WEvent::Frame(f) => match f? {
                    None => return Err(ClientError::Io(io::ErrorKind::UnexpectedEof.into())),
                    Some(Frame::HoldAck { seq: s }) => {
                        if awaiting.is_some_and(|(want, _)| want == s) {
                            awaiting = None;
                        }
                    }
                    Some(Frame::ConnectNotify { session_id, from }) => {
                        if self
                            .busy
                            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                            .is_err()
                        {
                            // A command of ours is queued on this connection:
                            // refuse the demand before it goes out (a LIST
                            // would not refuse it at the relay, which would
                            // keep the caller waiting for its deadline).
                            debug!(session_id, %from, "Demand crossed our own command; rejecting.");
                            conn.write_frame(&Frame::Reject {
                                session_id,
                                code: Code::Busy,
                            })
                            .await?;
                            continue;
                        }
                        self.inner.changed.notify_waiters();
                        conn = self.incoming(conn, session_id, from).await?;
                        next_hold = Instant::now() + self.hold;
                        awaiting = None;
                    }
                    Some(Frame::NotifyCancel { .. }) | Some(Frame::Err { .. }) => {}
                    Some(Frame::Bye { code, message }) => {
                        return Err(ClientError::Closed { code, message });
                    }
                    Some(other) => {
                        debug!(frame = ?other.frame_type(), "Unexpected frame on a vacant connection; ignored.");
                    }
                },
            }
        }
    }

    /// Reads the answer to a request, skipping HOLD-ACKs and withdrawals
    /// of earlier demands, and refusing demands that crossed the request
    /// (BUSY: this connection is not vacant for them). After an ACCEPT,
    /// `accepted` names its session, whose NOTIFY-CANCEL is the answer.
    async fn answer(
        conn: &mut Connection,
        limit: Duration,
        accepted: Option<u64>,
    ) -> Result<Frame, ClientError> {
        let deadline = Instant::now() + limit;
        loop {
            let f = tokio::time::timeout_at(deadline, conn.read_frame())
                .await
                .map_err(|_| ClientError::Timeout("waiting for the relay's answer"))??;
            match f {
                None => return Err(ClientError::Io(io::ErrorKind::UnexpectedEof.into())),
                Some(f @ Frame::NotifyCancel { session_id }) if Some(session_id) == accepted => {
                    return Ok(f);
                }
                Some(Frame::ConnectNotify { session_id, from }) => {
                    debug!(session_id, %from, "Demand crossed our own request; rejecting.");
                    conn.write_frame(&Frame::Reject {
                        session_id,
                        code: Code::Busy,
                    })
                    .await?;
                }
                Some(Frame::HoldAck { .. } | Frame::NotifyCancel { .. }) => {}
                Some(Frame::Bye { code, message }) => {
                    return Err(ClientError::Closed { code, message });
                }
                Some(f) => return Ok(f),
            }
        }
    }

    async fn command(
        &self,
        mut conn: Connection,
        cmd: WorkerCmd,
    ) -> Result<Connection, ClientError> {
        let limit = self.inner.cfg.connect_timeout;
        match cmd {
            WorkerCmd::List { reply } => {
                conn.write_frame(&Frame::List).await?;
                let r = match Self::answer(&mut conn, limit, None).await {
                    Ok(Frame::ListResult { users }) => Ok(users),
                    Ok(Frame::Err { code, message }) => Err(ClientError::Refused { code, message }),
                    Ok(f) => Err(unexpected(&f)),
                    Err(e) => {
                        let _ = reply.send(Err(ClientError::NotConnected));
                        self.set_busy(false);
                        return Err(e);
                    }
                };
                let _ = reply.send(r);
                self.set_busy(false);
                Ok(conn)
            }
            WorkerCmd::Logout { reply } => {
                conn.write_frame(&Frame::Logout).await?;
                let r = match Self::answer(&mut conn, limit, None).await {
                    Err(ClientError::Closed {
                        code: Code::LoggedOut,
                        ..
                    }) => Ok(()),
                    Err(e) => Err(e),
                    Ok(f) => Err(unexpected(&f)),
                };
                let _ = reply.send(r);
                Err(ClientError::LoggedOut)
            }
            WorkerCmd::Connect { target, reply } => {
                conn.write_frame(&Frame::Connect {
                    target: target.clone(),
                })
                .await?;
                // The relay's own deadline for the target is shorter than
                // ours, so its TIMEOUT reaches us first.
                match Self::answer(&mut conn, limit + Duration::from_secs(5), None).await {
                    Ok(Frame::ConnectOk { session_id, peer }) => {
                        info!(session_id, %peer, "Session bridged (outgoing).");
                        self.lend(conn, session_id, peer, reply).await
                    }
                    Ok(Frame::Err { code, message }) => {
                        let _ = reply.send(Err(ClientError::Refused { code, message }));
                        self.set_busy(false);
                        Ok(conn)
                    }
                    Ok(f) => {
                        let _ = reply.send(Err(unexpected(&f)));
                        self.set_busy(false);
                        Ok(conn)
                    }
                    Err(e) => {
                        let _ = reply.send(Err(ClientError::NotConnected));
                        Err(e)
                    }
                }
            }
        }
    }

    /// Gives the connection to a [`Session`] and waits until it comes
    /// back after RELEASE.
    async fn lend(
        &self,
        conn: Connection,
        session_id: u64,
        peer: String,
        reply: oneshot::Sender<Result<Session, ClientError>>,
    ) -> Result<Connection, ClientError> {
        let (back_tx, back_rx) = oneshot::channel();
        let session = Session::new(conn, session_id, peer, back_tx);
        if let Err(Ok(session)) = reply.send(Ok(session)) {
            // Nobody wants the session any more: end it at once.
            drop(session);
        }
        match back_rx.await {
            Ok(Some(conn)) => {
                debug!(session_id, "Connection released; vacant again.");
                self.set_busy(false);
                Ok(conn)
            }
            _ => Err(ClientError::Io(io::ErrorKind::ConnectionAborted.into())),
        }
    }

    /// Seed (7)-(8) on the target: offer the demand to the application
    /// and pass its decision to the relay.
    async fn incoming(
        &self,
        mut conn: Connection,
        session_id: u64,
        from: String,
    ) -> Result<Connection, ClientError> {
        let (tx, rx) = oneshot::channel();
        let demand = IncomingDemand {
            from: from.clone(),
            session_id,
            decide: tx,
        };
        if self.inner.incoming.try_send(demand).is_err() {
            info!(session_id, %from, "No one is taking demands; rejecting.");
            conn.write_frame(&Frame::Reject {
                session_id,
                code: Code::Busy,
            })
            .await?;
            self.set_busy(false);
            return Ok(conn);
        }
        let limit = self.inner.cfg.connect_timeout;
        let mut rx = rx;
        let decision = loop {
            tokio::select! {
                d = &mut rx => break d.ok(),
                f = conn.read_frame() => match f? {
                    Some(Frame::NotifyCancel { session_id: s }) if s == session_id => {
                        debug!(session_id, "Demand withdrawn by the relay.");
                        self.set_busy(false);
                        return Ok(conn);
                    }
                    Some(Frame::Bye { code, message }) => return Err(ClientError::Closed { code, message }),
                    None => return Err(ClientError::Io(io::ErrorKind::UnexpectedEof.into())),
                    Some(_) => {}
                },
                _ = sleep(limit) => break None,
            }
        };
        let code = match decision {
            Some(Decision::Accept(reply)) => {
                conn.write_frame(&Frame::Accept { session_id }).await?;
                return match Self::answer(&mut conn, limit, Some(session_id)).await {
                    Ok(Frame::ConnectOk {
                        session_id: s,
                        peer,
                    }) if s == session_id => {
                        info!(session_id, %peer, "Session bridged (incoming).");
                        self.lend(conn, session_id, peer, reply).await
                    }
                    Ok(Frame::NotifyCancel { .. }) => {
                        debug!(session_id, "Demand withdrawn after our ACCEPT.");
                        let _ = reply.send(Err(ClientError::Withdrawn));
                        self.set_busy(false);
                        Ok(conn)
                    }
                    Ok(f) => {
                        let _ = reply.send(Err(unexpected(&f)));
                        self.set_busy(false);
                        Ok(conn)
                    }
                    Err(e) => {
                        let _ = reply.send(Err(ClientError::NotConnected));
                        Err(e)
                    }
                };
            }
            Some(Decision::Reject(code)) => code,
            None => Code::Timeout,
        };
        conn.write_frame(&Frame::Reject { session_id, code })
            .await?;
        self.set_busy(false);
        Ok(conn)
    }
}

fn unexpected(f: &Frame) -> ClientError {
    ClientError::Refused {
        code: Code::UnexpectedFrame,
        message: format!("relay sent {:?} unexpectedly", f.frame_type()),
    }
}

enum Decision {
    Accept(oneshot::Sender<Result<Session, ClientError>>),
    Reject(Code),
}

/// Another user asks for a session (CONNECT-NOTIFY). Accept or reject it
/// promptly: the relay answers the caller TIMEOUT after its deadline.
pub struct IncomingDemand {
    /// The caller's user ID.
    pub from: String,
    /// The session ID the relay assigned.
    pub session_id: u64,
    decide: oneshot::Sender<Decision>,
}

impl std::fmt::Debug for IncomingDemand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncomingDemand")
            .field("from", &self.from)
            .field("session_id", &self.session_id)
            .finish()
    }
}

impl IncomingDemand {
    /// Accepts; returns the bridged session.
    pub async fn accept(self) -> Result<Session, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.decide
            .send(Decision::Accept(tx))
            .map_err(|_| ClientError::Withdrawn)?;
        rx.await.unwrap_or(Err(ClientError::Withdrawn))
    }

    /// Rejects; the caller gets REJECTED.
    pub fn reject(self) {
        let _ = self.decide.send(Decision::Reject(Code::Rejected));
    }
}

/// Largest DATA frame a session writes.
const SESSION_FRAME: usize = 256 * 1024;
/// Small writes are gathered up to this size before a flush is forced.
const WBUF_HIGH: usize = 64 * 1024;

/// A bridged session: bytes written here arrive unchanged at the peer's
/// session, and the peer's bytes are read here. `shutdown()` sends
/// TERMINATE (no more writes); a read returns EOF once the peer's
/// TERMINATE arrives, or an error if the relay ended the session for
/// another reason (peer lost, kicked). [`Session::close`] finishes the
/// exchange and RELEASEs the connection back to the pool; dropping the
/// session does the same in the background.
pub struct Session {
    conn: Option<Connection>,
    session_id: u64,
    peer: String,
    back: Option<oneshot::Sender<Option<Connection>>>,
    in_data: usize,
    peer_end: Option<Code>,
    wbuf: BytesMut,
    we_terminated: bool,
    broken: bool,
    /// Set on the copy that finishes a dropped session in the background:
    /// if that task is itself dropped (runtime shutdown), give up instead
    /// of spawning again.
    detached: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("session_id", &self.session_id)
            .field("peer", &self.peer)
            .field("peer_end", &self.peer_end)
            .field("we_terminated", &self.we_terminated)
            .finish()
    }
}

fn broken_pipe(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, what.to_owned())
}

impl Session {
    fn new(
        conn: Connection,
        session_id: u64,
        peer: String,
        back: oneshot::Sender<Option<Connection>>,
    ) -> Self {
        Self {
            conn: Some(conn),
            session_id,
            peer,
            back: Some(back),
            in_data: 0,
            peer_end: None,
            wbuf: BytesMut::new(),
            we_terminated: false,
            broken: false,
            detached: false,
        }
    }

    /// The relay's session ID.
    pub fn id(&self) -> u64 {
        self.session_id
    }

    /// The user at the other end.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Why the peer ended the session, once it has.
    pub fn peer_end(&self) -> Option<Code> {
        self.peer_end
    }

    fn conn(&mut self) -> io::Result<&mut Connection> {
        if self.broken {
            return Err(broken_pipe("the session's connection failed"));
        }
        self.conn
            .as_mut()
            .ok_or_else(|| broken_pipe("the session is closed"))
    }

    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.wbuf.is_empty() {
            if self.broken {
                return Poll::Ready(Err(broken_pipe("the session's connection failed")));
            }
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(Err(broken_pipe("the session is closed")));
            };
            let n = match ready!(Pin::new(&mut conn.stream).poll_write(cx, &self.wbuf)) {
                Ok(0) => Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => Ok(n),
                Err(e) => Err(e),
            };
            match n {
                Ok(n) => self.wbuf.advance(n),
                Err(e) => {
                    self.broken = true;
                    return Poll::Ready(Err(e));
                }
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Ends the session: sends TERMINATE (if not yet sent), waits for
    /// the peer's, sends RELEASE, and returns the connection to the pool.
    pub async fn close(mut self) -> Result<(), ClientError> {
        let r = self.finish().await;
        let conn = if r.is_ok() { self.conn.take() } else { None };
        if let Some(back) = self.back.take() {
            let _ = back.send(conn);
        }
        r
    }

    async fn finish(&mut self) -> Result<(), ClientError> {
        let limit = Duration::from_secs(30);
        timeout(limit, async {
            if !self.we_terminated {
                self.shutdown().await?;
            }
            self.flush().await?;
            let mut sink = [0u8; 8192];
            while self.peer_end.is_none() {
                use tokio::io::AsyncReadExt;
                match self.read(&mut sink).await {
                    Ok(0) => break,
                    Ok(_) => {}
                    // The relay said why the peer ended; the connection
                    // itself is still fine.
                    Err(_) if self.peer_end.is_some() => break,
                    Err(e) => return Err(ClientError::Io(e)),
                }
            }
            let conn = self.conn().map_err(ClientError::Io)?;
            conn.write_frame(&Frame::Release).await?;
            Ok(())
        })
        .await
        .map_err(|_| ClientError::Timeout("ending the session"))?
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let Some(back) = self.back.take() else {
            return;
        };
        if self.broken || self.conn.is_none() || self.detached {
            let _ = back.send(None);
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            let _ = back.send(None);
            return;
        };
        let rest = Session {
            conn: self.conn.take(),
            session_id: self.session_id,
            peer: std::mem::take(&mut self.peer),
            back: Some(back),
            in_data: self.in_data,
            peer_end: self.peer_end,
            wbuf: std::mem::take(&mut self.wbuf),
            we_terminated: self.we_terminated,
            broken: false,
            detached: true,
        };
        handle.spawn(async move {
            if let Err(e) = rest.close().await {
                debug!(error = %e, "Dropped session did not end cleanly.");
            }
        });
    }
}

impl AsyncRead for Session {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if let Some(code) = this.peer_end {
                return if code == Code::Normal {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        format!("session ended by the relay: {code}"),
                    )))
                };
            }
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            let in_data = this.in_data;
            let conn = this.conn()?;
            if in_data > 0 {
                if !conn.rbuf.is_empty() {
                    let n = in_data.min(conn.rbuf.len()).min(buf.remaining());
                    buf.put_slice(&conn.rbuf[..n]);
                    conn.rbuf.advance(n);
                    this.in_data -= n;
                    return Poll::Ready(Ok(()));
                }
                // Payload straight into the caller's buffer: no copy.
                let n = in_data.min(buf.remaining());
                let dst = buf.initialize_unfilled_to(n);
                let mut rb = ReadBuf::new(dst);
                match ready!(Pin::new(&mut conn.stream).poll_read(cx, &mut rb)) {
                    Ok(()) => {}
                    Err(e) => {
                        this.broken = true;
                        return Poll::Ready(Err(e));
                    }
                }
                let got = rb.filled().len();
                if got == 0 {
                    this.broken = true;
                    return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                }
                buf.advance(got);
                this.in_data -= got;
                return Poll::Ready(Ok(()));
            }
            match protocol::parse_header(&conn.rbuf, conn.max_data) {
                Err(e) => {
                    this.broken = true;
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                }
                Ok(Some(h)) if h.kind == FrameType::Data => {
                    conn.rbuf.advance(HEADER_LEN);
                    this.in_data = h.len;
                    continue;
                }
                Ok(Some(h)) if conn.rbuf.len() >= HEADER_LEN + h.len => {
                    let parsed = protocol::parse_frame(&conn.rbuf, conn.max_data);
                    match parsed {
                        Ok(Some((Frame::Terminate { code }, used))) => {
                            conn.rbuf.advance(used);
                            this.peer_end = Some(code);
                            continue;
                        }
                        Ok(Some((Frame::Bye { code, message }, _))) => {
                            this.broken = true;
                            return Poll::Ready(Err(io::Error::new(
                                io::ErrorKind::ConnectionAborted,
                                format!("relay closed the connection: {code}: {message}"),
                            )));
                        }
                        Ok(Some((f, used))) => {
                            conn.rbuf.advance(used);
                            debug!(frame = ?f.frame_type(), "Ignoring a control frame inside a session.");
                            continue;
                        }
                        Ok(None) => {}
                        Err(e) => {
                            this.broken = true;
                            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                        }
                    }
                }
                Ok(_) => {}
            }
            // Need more bytes for a header or a control frame.
            conn.rbuf.reserve(4096);
            match ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut conn.stream),
                cx,
                &mut conn.rbuf
            )) {
                Ok(0) => {
                    this.broken = true;
                    return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                }
                Ok(_) => {}
                Err(e) => {
                    this.broken = true;
                    return Poll::Ready(Err(e));
                }
            }
        }
    }
}

impl AsyncWrite for Session {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.we_terminated {
            return Poll::Ready(Err(broken_pipe("the session was terminated (shutdown)")));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = buf.len().min(SESSION_FRAME);
        if n >= WBUF_HIGH / 4 {
            // Big write: what is buffered goes first, then header and
            // payload in one vectored write straight from the caller's
            // buffer. A full socket is backpressure (Pending, nothing
            // taken), not a reason to copy the payload; only the tail of
            // a frame the socket took in part is copied.
            ready!(this.poll_drain(cx))?;
            let header = protocol::data_header(n);
            let conn = this.conn()?;
            let bufs = [io::IoSlice::new(&header), io::IoSlice::new(&buf[..n])];
            let w = match ready!(Pin::new(&mut conn.stream).poll_write_vectored(cx, &bufs)) {
                Ok(0) => {
                    this.broken = true;
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Ok(w) => w,
                Err(e) => {
                    this.broken = true;
                    return Poll::Ready(Err(e));
                }
            };
            if w < HEADER_LEN {
                this.wbuf.put_slice(&header[w..]);
                this.wbuf.put_slice(&buf[..n]);
            } else if w < HEADER_LEN + n {
                this.wbuf.put_slice(&buf[w - HEADER_LEN..n]);
            }
            return Poll::Ready(Ok(n));
        }
        if this.wbuf.len() >= WBUF_HIGH {
            ready!(this.poll_drain(cx))?;
        }
        this.wbuf.put_slice(&protocol::data_header(n));
        this.wbuf.put_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        let conn = this.conn()?;
        Pin::new(&mut conn.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.we_terminated {
            this.we_terminated = true;
            let mut t = BytesMut::new();
            protocol::encode_frame(&Frame::Terminate { code: Code::Normal }, &mut t);
            this.wbuf.put_slice(&t);
        }
        ready!(this.poll_drain(cx))?;
        let conn = this.conn()?;
        Pin::new(&mut conn.stream).poll_flush(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::jitter;
    use std::time::Duration;

    const MS: Duration = Duration::from_millis(1);

    /// Full jitter: every delay lies in `[floor/2, backoff]`, and many
    /// draws spread over the range rather than sit at one end.
    #[test]
    fn jitter_stays_in_half_floor_to_backoff_and_spreads() {
        for (backoff, floor) in [(500, 500), (1000, 500), (8000, 500), (60_000, 200)] {
            let (backoff, floor) = (backoff * MS, floor * MS);
            let (lo, hi) = (floor / 2, backoff);
            let draws: Vec<Duration> = (0..2000).map(|_| jitter(backoff, floor)).collect();
            for d in &draws {
                assert!(
                    (lo..=hi).contains(d),
                    "{d:?} outside [{lo:?}, {hi:?}] for backoff {backoff:?}"
                );
            }
            // With 2000 uniform draws, each end tenth of the range is
            // hit with probability 1 - 0.9^2000: a certainty in practice.
            let tenth = (hi - lo) / 10;
            assert!(draws.iter().any(|d| *d < lo + tenth), "never near {lo:?}");
            assert!(draws.iter().any(|d| *d > hi - tenth), "never near {hi:?}");
        }
    }

    /// A backoff below half the floor (never produced by the supervisor,
    /// but the function must not panic on an empty range) still yields a
    /// short, bounded delay.
    #[test]
    fn jitter_handles_a_backoff_below_half_the_floor() {
        for _ in 0..100 {
            let d = jitter(10 * MS, 500 * MS);
            assert!((250 * MS..=251 * MS).contains(&d), "{d:?}");
        }
        assert!(jitter(Duration::ZERO, Duration::ZERO) <= MS);
    }
}
