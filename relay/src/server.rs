//! The relay server: listeners, the handshake, and one task per
//! connection that runs the seed's processes (2) to (24) for it.
//!
//! A connection task owns its [`Connection`]. When it is the caller of a
//! CONNECT, the target's task lends it the target's connection through
//! the [`Demand`] reply, the caller's task bridges the two, and gives the
//! target's connection back when both sides have sent TERMINATE.

use crate::auth::{AuthFailure, Authenticator, TokenHash, new_token};
use crate::bridge::{self, SideEnd};
use crate::connection::{ConnError, Connection};
use crate::lean_tls;
use crate::metrics::Metrics;
use crate::protocol::{Code, Frame};
use crate::registry::{
    Acl, ConnState, ConnTicket, Demand, DemandOutcome, IssuedToken, Registry, Reserve,
    ResumeRefused, SessionInfo,
};
use crate::store::UserStore;
use crate::tls::{self, ServerIdentity};
use crate::transport::{Stream, tune_socket};
use anyhow::Context as _;
use faxgate_config::Secret;
use faxgate_config::{RelaySection, RelayServerConfig};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::time::{Instant, sleep_until, timeout, timeout_at};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

/// Everything the connection tasks share.
#[derive(Debug)]
pub struct Shared {
    /// The `[relay]` section.
    pub cfg: RelaySection,
    /// Presence and sessions.
    pub registry: Registry,
    /// Password and token checks.
    pub auth: Arc<Authenticator>,
    /// Counters.
    pub metrics: Metrics,
    pending: PendingLimits,
    tracker: TaskTracker,
}

impl Shared {
    /// The user store.
    pub fn store(&self) -> &Arc<UserStore> {
        self.auth.store()
    }
}

/// Counts handshaking connections, globally and per source address
/// (IPv6 by its /64, like the login limits: one subscriber can use any
/// address in its prefix).
#[derive(Debug, Default)]
struct PendingLimits {
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// Releases a handshake slot when dropped.
#[derive(Debug)]
struct PendingGuard {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.shared.metrics.pending.fetch_sub(1, Ordering::Relaxed);
        let mut map = self
            .shared
            .pending
            .per_ip
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

fn try_pending(shared: &Arc<Shared>, ip: IpAddr) -> Option<PendingGuard> {
    let ip = crate::auth::limit_key(ip);
    let mut map = shared
        .pending
        .per_ip
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let total = shared.metrics.pending.load(Ordering::Relaxed) as usize;
    let mine = map.get(&ip).copied().unwrap_or(0);
    if total >= shared.cfg.max_pending_handshakes || mine >= shared.cfg.max_pending_per_ip {
        return None;
    }
    map.insert(ip, mine + 1);
    shared.metrics.pending.fetch_add(1, Ordering::Relaxed);
    Some(PendingGuard {
        shared: Arc::clone(shared),
        ip,
    })
}

/// A running relay server.
#[derive(Debug)]
pub struct RelayServer {
    /// Shared state, for the status endpoint and tests.
    pub shared: Arc<Shared>,
    /// Where the plain listener is bound.
    pub tcp_addr: Option<SocketAddr>,
    /// Where the TLS listener is bound.
    pub tls_addr: Option<SocketAddr>,
    /// Where the status endpoint is bound.
    pub status_addr: Option<SocketAddr>,
    /// The TLS identity, when a TLS listener runs.
    pub identity: Option<ServerIdentity>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl RelayServer {
    /// Opens the user store, loads or generates the certificate, binds
    /// the listeners and starts accepting. Stops when `shutdown` fires.
    pub async fn start(
        config: RelayServerConfig,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let cfg = config.relay;
        std::fs::create_dir_all(&cfg.state_dir)
            .with_context(|| format!("while creating state_dir {}", cfg.state_dir.display()))?;
        let store = Arc::new(
            UserStore::open(
                &cfg.state_dir.join("users.db"),
                cfg.argon2_memory_kib,
                cfg.argon2_iterations,
            )
            .context("while opening the user store")?,
        );
        let auth = Arc::new(
            Authenticator::new(
                store,
                cfg.rate_limit.max_failures_per_ip,
                cfg.rate_limit.max_failures_per_user,
                cfg.rate_limit.window,
            )
            .context("while preparing the authenticator")?,
        );
        let identity = match cfg.listen_tls {
            Some(_) => {
                let configured = cfg
                    .tls
                    .as_ref()
                    .map(|t| (t.cert.as_path(), t.key.as_path()));
                let id = tls::server_identity(configured, &cfg.state_dir)
                    .context("while loading the TLS certificate")?;
                let fp = tls::format_fingerprint(&id.fingerprint);
                if id.generated {
                    info!(cert = %id.cert_path.display(), fingerprint = %fp, "Generated a self-signed certificate; devices pin this fingerprint.");
                } else {
                    info!(cert = %id.cert_path.display(), fingerprint = %fp, "Loaded the TLS certificate.");
                }
                Some(id)
            }
            None => None,
        };
        let tracker = TaskTracker::new();
        let shared = Arc::new(Shared {
            registry: Registry::new(Acl::new(&cfg.acl), shutdown.child_token()),
            auth,
            metrics: Metrics::default(),
            pending: PendingLimits::default(),
            tracker: tracker.clone(),
            cfg,
        });

        let mut tcp_addr = None;
        if let Some(addr) = shared.cfg.listen {
            let l = TcpListener::bind(addr)
                .await
                .with_context(|| format!("while binding the relay listener on {addr}"))?;
            tcp_addr = Some(l.local_addr()?);
            info!(addr = %l.local_addr()?, "Relay listening (plain TCP).");
            tracker.spawn(accept_loop(Arc::clone(&shared), l, None, shutdown.clone()));
        }
        let mut tls_addr = None;
        if let (Some(addr), Some(id)) = (shared.cfg.listen_tls, identity.as_ref()) {
            let l = TcpListener::bind(addr)
                .await
                .with_context(|| format!("while binding the relay TLS listener on {addr}"))?;
            tls_addr = Some(l.local_addr()?);
            info!(addr = %l.local_addr()?, "Relay listening (TLS).");
            tracker.spawn(accept_loop(
                Arc::clone(&shared),
                l,
                Some(Arc::clone(&id.config)),
                shutdown.clone(),
            ));
        }
        let mut status_addr = None;
        if let Some(status) = config.status {
            let addr = crate::status::serve(
                Arc::clone(&shared),
                status.listen,
                status.admin_token,
                shutdown.clone(),
                &tracker,
            )
            .await?;
            status_addr = Some(addr);
        }
        Ok(Self {
            shared,
            tcp_addr,
            tls_addr,
            status_addr,
            identity,
            shutdown,
            tracker,
        })
    }

    /// Asks every task to stop and waits for them, at most `deadline`.
    /// Returns whether all tasks finished in time.
    pub async fn shutdown(self, deadline: Duration) -> bool {
        self.shutdown.cancel();
        self.tracker.close();
        timeout(deadline, self.tracker.wait()).await.is_ok()
    }

    /// Waits until the shutdown token fires and every task has ended.
    pub async fn wait(self) {
        self.shutdown.cancelled().await;
        self.tracker.close();
        self.tracker.wait().await;
    }
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: CancellationToken,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(error = %e, "Accept failed; retrying shortly.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        Metrics::inc(&shared.metrics.accepted);
        match try_pending(&shared, peer.ip()) {
            Some(guard) => {
                let span = info_span!("conn", %peer, tls = tls.is_some());
                let task = serve_conn(Arc::clone(&shared), tcp, peer, tls.clone(), guard);
                shared.tracker.spawn(task.instrument(span));
            }
            None => {
                Metrics::inc(&shared.metrics.pending_refused);
                debug!(%peer, "Too many handshaking connections; refusing.");
                shared.tracker.spawn(refuse(tcp, tls.is_some()));
            }
        }
    }
}

/// Tells a plain-TCP client why it is refused; TLS clients just see the
/// close, since answering would cost a handshake.
async fn refuse(tcp: TcpStream, is_tls: bool) {
    if is_tls {
        return;
    }
    let mut conn = Connection::new(Stream::Plain(tcp), 0);
    let _ = timeout(
        Duration::from_secs(1),
        conn.write_frame(&Frame::Err {
            code: Code::TooManyPending,
            message: "too many connections are logging in; retry later".into(),
        }),
    )
    .await;
}

/// Sends a frame with a deadline, so a peer that stopped reading cannot
/// hold a task forever.
async fn send(conn: &mut Connection, frame: &Frame, limit: Duration) -> Result<(), ConnError> {
    match timeout(limit, conn.write_frame(frame)).await {
        Ok(r) => r.map_err(ConnError::Io),
        Err(_) => Err(ConnError::Io(std::io::ErrorKind::TimedOut.into())),
    }
}

fn err(code: Code, message: impl Into<String>) -> Frame {
    Frame::Err {
        code,
        message: message.into(),
    }
}

async fn serve_conn(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
    guard: PendingGuard,
) {
    let hold = shared.cfg.hold_interval;
    if let Err(e) =
        tune_socket(&tcp, hold).and_then(|()| crate::transport::set_user_timeout(&tcp, hold))
    {
        debug!(error = %e, "Could not tune the socket.");
    }
    let deadline = Instant::now() + shared.cfg.handshake_timeout;
    let stream = match tls {
        None => Stream::Plain(tcp),
        Some(config) => match timeout_at(deadline, lean_tls::accept(tcp, config)).await {
            Ok(Ok(s)) => Stream::TlsServer(Box::new(s)),
            Ok(Err(e)) => {
                debug!(error = %e, "TLS handshake failed.");
                return;
            }
            Err(_) => {
                Metrics::inc(&shared.metrics.handshake_timeouts);
                debug!("TLS handshake did not finish in time.");
                return;
            }
        },
    };
    // No DATA before login: a DATA header with a length is refused at
    // once instead of making the relay buffer up to max_data_frame for a
    // peer that has not logged in.
    let mut conn = Connection::new(stream, 0);
    let first = timeout_at(deadline, async {
        conn.read_preamble().await?;
        conn.read_frame().await
    })
    .await;
    let limit = shared.cfg.handshake_timeout;
    let first = match first {
        Err(_) => {
            Metrics::inc(&shared.metrics.handshake_timeouts);
            info!("Handshake did not complete in time; closing.");
            let _ = send(
                &mut conn,
                &err(
                    Code::HandshakeTimeout,
                    "no LOGIN within the handshake deadline",
                ),
                Duration::from_secs(1),
            )
            .await;
            return;
        }
        Ok(Ok(Some(f))) => f,
        Ok(Ok(None)) => {
            debug!("Closed before logging in.");
            return;
        }
        Ok(Err(e)) => {
            match e.protocol_error() {
                Some((code, message)) => {
                    Metrics::inc(&shared.metrics.protocol_errors);
                    info!(error = %e, "Bad handshake; closing.");
                    // A peer that closed mid-frame may still read.
                    let _ = send(&mut conn, &err(code, message), limit).await;
                }
                None => debug!(error = %e, "Handshake read failed."),
            }
            return;
        }
    };
    let tls_used = conn.stream.is_tls();
    let max = shared.cfg.max_connections_per_user;
    let (ticket, token) = match first {
        Frame::Login {
            user,
            password,
            client,
        } => {
            let checked = shared
                .auth
                .check_password(peer.ip(), &user, password.expose().clone())
                .await;
            match checked {
                Ok(record) => {
                    let token = new_token();
                    let issued = IssuedToken {
                        token: TokenHash::of(&token),
                        credential: credential_of(&record),
                    };
                    match shared.registry.add_login(
                        &user,
                        record.groups,
                        issued,
                        peer,
                        tls_used,
                        max,
                    ) {
                        Ok(t) => {
                            Metrics::inc(&shared.metrics.logins);
                            // Device-chosen text: log a bounded, printable prefix.
                            let client: String = client
                                .chars()
                                .filter(|c| !c.is_control())
                                .take(64)
                                .collect();
                            info!(%user, conn_id = t.id, %client, "Logged in.");
                            (t, Some(token))
                        }
                        Err(code) => {
                            info!(%user, %code, "Login refused: connection limit reached.");
                            let _ = send(
                                &mut conn,
                                &err(code, format!("at most {max} connections per user")),
                                limit,
                            )
                            .await;
                            return;
                        }
                    }
                }
                Err(why) => {
                    login_failed(&shared, &mut conn, &user, why).await;
                    return;
                }
            }
        }
        Frame::Resume { user, token } => {
            // Only the address limit: a 256-bit token cannot be guessed,
            // and someone failing passwords for this user must not keep
            // its device from opening spare connections.
            let attempt = match shared.auth.begin_resume(peer.ip()) {
                Ok(a) => a,
                Err(why) => {
                    login_failed(&shared, &mut conn, &user, why).await;
                    return;
                }
            };
            // The user must still exist, be enabled and have the password
            // the token was issued under: an admin's `passwd` or `disable`
            // ends what a stolen token could do.
            let store = Arc::clone(shared.store());
            let name = user.clone();
            let stored = tokio::task::spawn_blocking(move || store.get(&name)).await;
            let record = match stored {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "User store lookup failed during resume.");
                    None
                }
                Err(e) => {
                    tracing::error!(error = %e, "User store lookup task failed during resume.");
                    None
                }
            };
            let credential = match record {
                None => {
                    login_failed(&shared, &mut conn, &user, AuthFailure::UnknownUser).await;
                    return;
                }
                Some(r) if r.disabled => {
                    login_failed(&shared, &mut conn, &user, AuthFailure::Disabled).await;
                    return;
                }
                Some(r) => credential_of(&r),
            };
            let hash = TokenHash::of(token.expose());
            let added = shared
                .registry
                .add_resume(&user, &hash, &credential, peer, tls_used, max);
            // A refused token stays counted as a failure.
            if matches!(added, Ok(_) | Err(ResumeRefused::TooManyConnections)) {
                attempt.succeeded();
            }
            match added {
                Ok(t) => {
                    Metrics::inc(&shared.metrics.resumes);
                    info!(%user, conn_id = t.id, "Spare connection logged in with resume token.");
                    (t, None)
                }
                Err(ResumeRefused::TooManyConnections) => {
                    info!(%user, "Resume refused: connection limit reached.");
                    let _ = send(
                        &mut conn,
                        &err(
                            Code::TooManyConnections,
                            format!("at most {max} connections per user"),
                        ),
                        limit,
                    )
                    .await;
                    return;
                }
                Err(ResumeRefused::BadToken) => {
                    login_failed(&shared, &mut conn, &user, AuthFailure::BadToken).await;
                    return;
                }
                Err(ResumeRefused::PasswordChanged) => {
                    login_failed(&shared, &mut conn, &user, AuthFailure::PasswordChanged).await;
                    return;
                }
            }
        }
        other => {
            Metrics::inc(&shared.metrics.protocol_errors);
            info!(frame = ?other.frame_type(), "First frame was not LOGIN or RESUME; closing.");
            let _ = send(
                &mut conn,
                &err(
                    Code::UnexpectedFrame,
                    "the first frame must be LOGIN or RESUME",
                ),
                limit,
            )
            .await;
            return;
        }
    };
    drop(guard);
    conn.max_data = shared.cfg.max_data_frame as usize;
    let ok = Frame::LoginOk {
        conn_id: ticket.id,
        hold_interval_ms: hold.as_millis().min(u128::from(u32::MAX)) as u32,
        max_connections: max,
        token: token.map(Secret::new),
    };
    let user = ticket.user.clone();
    let id = ticket.id;
    // Vacant before the device hears LOGIN-OK: a CONNECT that follows
    // the login at once must find this connection.
    let (demand_tx, demand_rx) = oneshot::channel();
    shared.registry.set_vacant(&user, id, demand_tx);
    if send(&mut conn, &ok, limit).await.is_ok() {
        let task = ConnTask {
            shared: Arc::clone(&shared),
            ticket,
        };
        let span = info_span!("user", %user, conn_id = id);
        task.run(conn, demand_rx).instrument(span).await;
    }
    let left = shared.registry.remove(&user, id);
    info!(%user, conn_id = id, connections_left = left, "Connection closed.");
}

/// What a resume token is bound to: the user's stored password hash (its
/// salt makes every `passwd` change it, even to the same password).
fn credential_of(record: &crate::store::UserRecord) -> TokenHash {
    TokenHash::of(record.hash.as_bytes())
}

async fn login_failed(shared: &Shared, conn: &mut Connection, user: &str, why: AuthFailure) {
    let m = &shared.metrics;
    Metrics::inc(match why {
        AuthFailure::UnknownUser => &m.fail_unknown_user,
        AuthFailure::WrongPassword => &m.fail_wrong_password,
        AuthFailure::Disabled => &m.fail_disabled,
        AuthFailure::BadToken | AuthFailure::PasswordChanged => &m.fail_bad_token,
        AuthFailure::RateLimited => &m.fail_rate_limited,
    });
    warn!(%user, reason = why.as_str(), "Login failed.");
    let frame = if why == AuthFailure::RateLimited {
        err(
            Code::RateLimited,
            "too many failed logins; wait before retrying",
        )
    } else {
        err(Code::AuthFailed, "login failed")
    };
    let _ = send(conn, &frame, shared.cfg.handshake_timeout).await;
}

/// What happened to the connection after handling something.
enum Next {
    /// Keep serving it; it is vacant (may take demands).
    Serve(Connection),
    /// A session ended on it; it waits for RELEASE before it is vacant.
    Draining(Connection),
    /// Vacant, but first handle this frame (read while busy elsewhere).
    Reprocess(Connection, Frame),
    /// It is gone (closed, lent out and lost, or killed).
    Gone,
}

struct ConnTask {
    shared: Arc<Shared>,
    ticket: ConnTicket,
}

enum Event {
    Killed,
    Demand(Demand),
    Silent,
    Frame(Result<Option<Frame>, ConnError>),
}

async fn recv_demand(rx: &mut Option<oneshot::Receiver<Demand>>) -> Option<Demand> {
    match rx {
        Some(r) => {
            let d = r.await.ok();
            *rx = None;
            d
        }
        None => std::future::pending().await,
    }
}

impl ConnTask {
    fn user(&self) -> &str {
        &self.ticket.user
    }

    fn write_limit(&self) -> Duration {
        self.shared.cfg.hold_interval.max(Duration::from_secs(5))
    }

    /// The idle limit: 2.5 hold intervals without a frame.
    fn silence_limit(&self) -> Duration {
        self.shared.cfg.hold_interval * 5 / 2
    }

    async fn run(self, mut conn: Connection, demand_rx: oneshot::Receiver<Demand>) {
        let mut demand_rx = Some(demand_rx);
        let mut released = true;
        let mut last_rx = Instant::now();
        let mut pending_frame: Option<Frame> = None;
        loop {
            if released && demand_rx.is_none() {
                let (tx, rx) = oneshot::channel();
                self.shared
                    .registry
                    .set_vacant(self.user(), self.ticket.id, tx);
                demand_rx = Some(rx);
            }
            let event = match pending_frame.take() {
                Some(f) => Event::Frame(Ok(Some(f))),
                None => {
                    tokio::select! {
                        biased;
                        _ = self.ticket.kill.cancelled() => Event::Killed,
                        d = recv_demand(&mut demand_rx) => match d {
                            Some(d) => Event::Demand(d),
                            None => continue,
                        },
                        _ = sleep_until(last_rx + self.silence_limit()) => Event::Silent,
                        f = conn.read_frame() => Event::Frame(f),
                    }
                }
            };
            let next = match event {
                Event::Killed => {
                    let code = self.shared.registry.kill_code(self.user(), self.ticket.id);
                    info!(%code, "Closing connection on request.");
                    let bye = Frame::Bye {
                        code,
                        message: format!("connection closed by the relay: {code}"),
                    };
                    let _ = send(&mut conn, &bye, Duration::from_secs(2)).await;
                    return;
                }
                Event::Silent => {
                    Metrics::inc(&self.shared.metrics.hold_timeouts);
                    info!(
                        silent_ms = self.silence_limit().as_millis() as u64,
                        "No HOLD for 2.5 intervals; closing the connection as dead."
                    );
                    let bye = Frame::Bye {
                        code: Code::IdleTimeout,
                        message: "no HOLD received for 2.5 hold intervals".into(),
                    };
                    let _ = send(&mut conn, &bye, Duration::from_secs(1)).await;
                    return;
                }
                Event::Demand(d) => Box::pin(self.answer_demand(conn, d, &mut demand_rx)).await,
                Event::Frame(Err(e)) => {
                    match e.protocol_error() {
                        Some((code, message)) => {
                            Metrics::inc(&self.shared.metrics.protocol_errors);
                            info!(error = %e, "Protocol violation; closing.");
                            let _ = send(&mut conn, &err(code, message), self.write_limit()).await;
                        }
                        None => debug!(error = %e, "Connection failed."),
                    }
                    return;
                }
                Event::Frame(Ok(None)) => {
                    debug!("Device closed the connection.");
                    return;
                }
                Event::Frame(Ok(Some(frame))) => match frame {
                    Frame::Release => {
                        if !released {
                            debug!("Connection released; vacant again.");
                        }
                        Next::Serve(conn)
                    }
                    // The answer to a TERMINATE the relay sent for a peer
                    // that vanished; nothing more to do.
                    // Likewise DATA the device sent before it read that
                    // TERMINATE: the session is over, drop it.
                    Frame::Terminate { .. } | Frame::Data(_) if !released => Next::Draining(conn),
                    // CONNECT on a draining connection implies RELEASE.
                    Frame::Connect { target } => {
                        Box::pin(self.connect(conn, &mut demand_rx, target)).await
                    }
                    other if released => self.common(conn, other).await,
                    other => match self.common(conn, other).await {
                        Next::Serve(c) => Next::Draining(c),
                        n => n,
                    },
                },
            };
            conn = match next {
                Next::Serve(c) => {
                    released = true;
                    c
                }
                Next::Draining(c) => {
                    released = false;
                    // Not vacant: make sure no demand sender stays parked.
                    demand_rx = None;
                    self.shared.registry.set_state(
                        self.user(),
                        self.ticket.id,
                        ConnState::Draining,
                    );
                    c
                }
                Next::Reprocess(c, f) => {
                    released = true;
                    pending_frame = Some(f);
                    c
                }
                Next::Gone => return,
            };
            conn.shrink();
            last_rx = Instant::now();
        }
    }

    /// Frames that mean the same in every state: HOLD, LIST, LOGOUT, and
    /// the ones that are never allowed here.
    async fn common(&self, mut conn: Connection, frame: Frame) -> Next {
        let limit = self.write_limit();
        let reply = match frame {
            Frame::Hold { seq } => Frame::HoldAck { seq },
            Frame::List => Frame::ListResult {
                users: self
                    .shared
                    .registry
                    .list_for(self.user(), &self.ticket.groups),
            },
            Frame::Logout => {
                let n = self
                    .shared
                    .registry
                    .close_user(self.user(), Code::LoggedOut);
                info!(
                    connections = n,
                    "Logged out; closing all of the user's connections."
                );
                let bye = Frame::Bye {
                    code: Code::LoggedOut,
                    message: "logged out".into(),
                };
                let _ = send(&mut conn, &bye, limit).await;
                return Next::Gone;
            }
            Frame::Accept { session_id } | Frame::Reject { session_id, .. } => {
                debug!(session_id, "Late answer to a withdrawn demand; ignored.");
                return Next::Serve(conn);
            }
            other => err(
                Code::UnexpectedFrame,
                format!(
                    "{:?} is not allowed on a connection that is not in a session",
                    other.frame_type()
                ),
            ),
        };
        match send(&mut conn, &reply, limit).await {
            Ok(()) => Next::Serve(conn),
            Err(_) => Next::Gone,
        }
    }

    /// Seed (7)-(8): tell the device who wants it; wait for its answer.
    async fn answer_demand(
        &self,
        mut conn: Connection,
        d: Demand,
        demand_rx: &mut Option<oneshot::Receiver<Demand>>,
    ) -> Next {
        let Demand {
            session_id,
            from,
            mut reply,
        } = d;
        let limit = self.write_limit();
        let notify = Frame::ConnectNotify {
            session_id,
            from: from.clone(),
        };
        if send(&mut conn, &notify, limit).await.is_err() {
            let _ = reply.send(DemandOutcome::Rejected(Code::PeerLost));
            return Next::Gone;
        }
        debug!(session_id, %from, "CONNECT-NOTIFY sent.");
        let deadline = Instant::now() + self.shared.cfg.connect_timeout;
        enum Wait {
            Killed,
            CallerGone,
            Timeout,
            Frame(Result<Option<Frame>, ConnError>),
        }
        loop {
            let w = tokio::select! {
                biased;
                _ = self.ticket.kill.cancelled() => Wait::Killed,
                _ = reply.closed() => Wait::CallerGone,
                _ = sleep_until(deadline) => Wait::Timeout,
                f = conn.read_frame() => Wait::Frame(f),
            };
            let cancel = Frame::NotifyCancel { session_id };
            match w {
                Wait::Killed => {
                    // The main loop sees the kill token next and says BYE.
                    let _ = reply.send(DemandOutcome::Rejected(Code::PeerLost));
                    return Next::Serve(conn);
                }
                Wait::CallerGone => {
                    debug!(session_id, "Caller left before the answer.");
                    return self.after_cancel(conn, cancel).await;
                }
                Wait::Timeout => {
                    info!(session_id, %from, "Demand not answered in time.");
                    let _ = reply.send(DemandOutcome::Rejected(Code::Timeout));
                    return self.after_cancel(conn, cancel).await;
                }
                Wait::Frame(Ok(Some(Frame::Accept { session_id: s }))) if s == session_id => {
                    let (back_tx, back_rx) = oneshot::channel();
                    match reply.send(DemandOutcome::Accepted {
                        conn,
                        conn_id: self.ticket.id,
                        kill: self.ticket.kill.clone(),
                        back: back_tx,
                    }) {
                        Ok(()) => {
                            // The caller's task bridges; wait for our
                            // connection to come back.
                            return match back_rx.await {
                                Ok(Some(c)) => Next::Draining(c),
                                _ => Next::Gone,
                            };
                        }
                        Err(DemandOutcome::Accepted { conn, .. }) => {
                            return self.after_cancel(conn, cancel).await;
                        }
                        Err(DemandOutcome::Rejected(_)) => return Next::Gone,
                    }
                }
                Wait::Frame(Ok(Some(Frame::Reject {
                    session_id: s,
                    code,
                }))) if s == session_id => {
                    info!(session_id, %from, %code, "Demand rejected by the device.");
                    // A device that cannot take the notify (it is busy
                    // with a request of its own) says BUSY, and the caller
                    // hears BUSY; any other code is a refusal.
                    let code = if code == Code::Busy {
                        Code::Busy
                    } else {
                        Code::Rejected
                    };
                    // Vacant again before the caller hears the refusal: a
                    // CONNECT it sends at once must find this connection.
                    let (tx, rx) = oneshot::channel();
                    self.shared
                        .registry
                        .set_vacant(self.user(), self.ticket.id, tx);
                    *demand_rx = Some(rx);
                    let _ = reply.send(DemandOutcome::Rejected(code));
                    return Next::Serve(conn);
                }
                Wait::Frame(Ok(Some(Frame::Hold { seq }))) => {
                    if send(&mut conn, &Frame::HoldAck { seq }, limit)
                        .await
                        .is_err()
                    {
                        let _ = reply.send(DemandOutcome::Rejected(Code::PeerLost));
                        return Next::Gone;
                    }
                }
                Wait::Frame(Ok(Some(Frame::List))) => {
                    let list = Frame::ListResult {
                        users: self
                            .shared
                            .registry
                            .list_for(self.user(), &self.ticket.groups),
                    };
                    if send(&mut conn, &list, limit).await.is_err() {
                        let _ = reply.send(DemandOutcome::Rejected(Code::PeerLost));
                        return Next::Gone;
                    }
                }
                Wait::Frame(Ok(Some(f @ (Frame::Connect { .. } | Frame::Logout)))) => {
                    // The device's own request crossed our notify: that
                    // is a refusal of the demand.
                    debug!(session_id, "Demand crossed by the device's own request.");
                    let _ = reply.send(DemandOutcome::Rejected(Code::Busy));
                    return Next::Reprocess(conn, f);
                }
                Wait::Frame(Ok(Some(Frame::Release))) => {}
                Wait::Frame(Ok(Some(
                    Frame::Accept { session_id: s } | Frame::Reject { session_id: s, .. },
                ))) => {
                    // The answer to an earlier, withdrawn demand: ignored,
                    // as anywhere else (PROTOCOL.md).
                    debug!(
                        session_id,
                        stale = s,
                        "Ignored an answer to a withdrawn demand."
                    );
                }
                Wait::Frame(Ok(Some(other))) => {
                    let e = err(
                        Code::UnexpectedFrame,
                        format!(
                            "{:?} while a CONNECT-NOTIFY awaits ACCEPT or REJECT",
                            other.frame_type()
                        ),
                    );
                    if send(&mut conn, &e, limit).await.is_err() {
                        let _ = reply.send(DemandOutcome::Rejected(Code::PeerLost));
                        return Next::Gone;
                    }
                }
                Wait::Frame(Ok(None)) | Wait::Frame(Err(_)) => {
                    let _ = reply.send(DemandOutcome::Rejected(Code::PeerLost));
                    return Next::Gone;
                }
            }
        }
    }

    /// The caller of demand `session_id` is gone or killed: the demand is
    /// withdrawn. A target that accepted just now is told the session
    /// ended before it began (CONNECT-OK, then TERMINATE(PEER_LOST)) and
    /// keeps its connection, which drains until its RELEASE. The channel
    /// is closed first, so a later ACCEPT is refused back to the target's
    /// task, which sends NOTIFY-CANCEL.
    async fn abandon_demand(
        &self,
        reply_rx: &mut oneshot::Receiver<DemandOutcome>,
        session_id: u64,
    ) {
        reply_rx.close();
        if let Ok(DemandOutcome::Accepted {
            conn: mut peer,
            back,
            ..
        }) = reply_rx.try_recv()
        {
            let limit = self.write_limit();
            let ended = [
                Frame::ConnectOk {
                    session_id,
                    peer: self.user().to_owned(),
                },
                Frame::Terminate {
                    code: Code::PeerLost,
                },
            ];
            let mut ok = true;
            for f in &ended {
                ok = ok && send(&mut peer, f, limit).await.is_ok();
            }
            let _ = back.send(ok.then_some(peer));
        }
    }

    async fn after_cancel(&self, mut conn: Connection, cancel: Frame) -> Next {
        match send(&mut conn, &cancel, self.write_limit()).await {
            // The device was told; it is vacant again.
            Ok(()) => Next::Serve(conn),
            Err(_) => Next::Gone,
        }
    }

    /// Seed (6) and (9): find the target, notify it, and bridge.
    async fn connect(
        &self,
        mut conn: Connection,
        demand_rx: &mut Option<oneshot::Receiver<Demand>>,
        target: String,
    ) -> Next {
        let m = &self.shared.metrics;
        Metrics::inc(&m.connects);
        let reserved = self.shared.registry.reserve(&self.ticket, &target);
        // A demand that reached us before the registry marked us busy
        // crossed our CONNECT: refuse it.
        if let Some(mut rx) = demand_rx.take()
            && let Ok(d) = rx.try_recv()
        {
            let _ = d.reply.send(DemandOutcome::Rejected(Code::Busy));
        }
        let limit = self.write_limit();
        let (session_id, demand) = match reserved {
            Reserve::Ok { session_id, demand } => (session_id, demand),
            Reserve::Refused(code) => return self.connect_failed(conn, &target, code).await,
            Reserve::Absent => {
                let store = Arc::clone(self.shared.store());
                let name = target.clone();
                let stored = tokio::task::spawn_blocking(move || store.get(&name))
                    .await
                    .ok()
                    .and_then(|r| r.ok())
                    .flatten();
                let code = match stored {
                    Some(rec)
                        if !self.shared.registry.acl().allows(
                            self.user(),
                            &self.ticket.groups,
                            &rec.name,
                            &rec.groups,
                        ) =>
                    {
                        Code::Forbidden
                    }
                    _ => Code::NotLoggedIn,
                };
                return self.connect_failed(conn, &target, code).await;
            }
        };
        let (reply_tx, reply_rx) = oneshot::channel();
        let demand_msg = Demand {
            session_id,
            from: self.user().to_owned(),
            reply: reply_tx,
        };
        if demand.send(demand_msg).is_err() {
            // The target connection closed while we reserved it.
            return self.connect_failed(conn, &target, Code::Busy).await;
        }
        // The target task owns the answer deadline; ours only guards
        // against a target task that vanished without answering.
        let wait = self.shared.cfg.connect_timeout + Duration::from_secs(2);
        let mut reply_rx = reply_rx;
        let deadline = Instant::now() + wait;
        // The caller's connection is read while the answer is awaited, so
        // a caller that leaves withdraws its demand at once.
        let outcome = loop {
            tokio::select! {
                biased;
                _ = self.ticket.kill.cancelled() => {
                    self.abandon_demand(&mut reply_rx, session_id).await;
                    return Next::Serve(conn);
                }
                r = timeout_at(deadline, &mut reply_rx) => break match r {
                    Ok(Ok(o)) => o,
                    Ok(Err(_)) => DemandOutcome::Rejected(Code::Busy),
                    Err(_) => answer_overdue(&mut reply_rx),
                },
                f = conn.read_frame() => match f {
                    Ok(Some(Frame::Hold { seq })) => {
                        if send(&mut conn, &Frame::HoldAck { seq }, limit).await.is_err() {
                            self.abandon_demand(&mut reply_rx, session_id).await;
                            return Next::Gone;
                        }
                    }
                    Ok(Some(f @ Frame::Logout)) => {
                        self.abandon_demand(&mut reply_rx, session_id).await;
                        return Next::Reprocess(conn, f);
                    }
                    // The device's answer to a demand that crossed this
                    // CONNECT (already refused as BUSY), or a late RELEASE.
                    Ok(Some(Frame::Accept { .. } | Frame::Reject { .. } | Frame::Release)) => {}
                    Ok(Some(other)) => {
                        Metrics::inc(&m.protocol_errors);
                        let e = err(
                            Code::UnexpectedFrame,
                            format!("{:?} while CONNECT awaits its answer", other.frame_type()),
                        );
                        if send(&mut conn, &e, limit).await.is_err() {
                            self.abandon_demand(&mut reply_rx, session_id).await;
                            return Next::Gone;
                        }
                    }
                    Ok(None) | Err(_) => {
                        debug!(session_id, "Caller left while its demand waited.");
                        self.abandon_demand(&mut reply_rx, session_id).await;
                        return Next::Gone;
                    }
                },
            }
        };
        let (mut peer, target_conn_id, peer_kill_token, back) = match outcome {
            DemandOutcome::Accepted {
                conn: peer,
                conn_id,
                kill,
                back,
            } => (peer, conn_id, kill, back),
            DemandOutcome::Rejected(code) => {
                return self.connect_failed(conn, &target, code).await;
            }
        };
        // Seed (9): both sides learn the session is bridged.
        let ok_caller = Frame::ConnectOk {
            session_id,
            peer: target.clone(),
        };
        let ok_target = Frame::ConnectOk {
            session_id,
            peer: self.user().to_owned(),
        };
        let caller_ok = send(&mut conn, &ok_caller, limit).await.is_ok();
        let target_ok = send(&mut peer, &ok_target, limit).await.is_ok();
        if !(caller_ok && target_ok) {
            // One side vanished at the last moment: tell the other the
            // session ended before it began.
            let t = Frame::Terminate {
                code: Code::PeerLost,
            };
            if caller_ok {
                let _ = send(&mut conn, &t, limit).await;
            }
            if target_ok {
                let _ = send(&mut peer, &t, limit).await;
            }
            // A target that heard CONNECT-OK and TERMINATE drains until
            // its RELEASE, like after any session.
            let _ = back.send(target_ok.then_some(peer));
            return if caller_ok {
                Next::Draining(conn)
            } else {
                Next::Gone
            };
        }
        let info = SessionInfo {
            id: session_id,
            caller: self.user().to_owned(),
            target: target.clone(),
            caller_conn: self.ticket.id,
            target_conn: target_conn_id,
            started: Registry::now_epoch(),
            up: Arc::new(AtomicU64::new(0)),
            down: Arc::new(AtomicU64::new(0)),
        };
        let (up, down) = (Arc::clone(&info.up), Arc::clone(&info.down));
        self.shared.registry.start_session(info);
        Metrics::inc(&m.sessions);
        info!(session_id, %target, "Session bridged.");

        let registry = &self.shared.registry;
        let my_kill = || registry.kill_code(self.user(), self.ticket.id);
        let peer_kill = || registry.kill_code(&target, target_conn_id);
        let mut a = bridge::Side {
            conn: &mut conn,
            kill: &self.ticket.kill,
            kill_code: &my_kill,
            sent: &up,
        };
        let mut b = bridge::Side {
            conn: &mut peer,
            kill: &peer_kill_token,
            kill_code: &peer_kill,
            sent: &down,
        };
        // A side that stops reading is as dead as one that stops sending
        // HOLD outside a session: 2.5 hold intervals.
        let outcome = bridge::run(
            &mut a,
            &mut b,
            self.shared.cfg.terminate_timeout,
            self.silence_limit(),
        )
        .await;
        let (bytes_up, bytes_down) = (up.load(Ordering::Relaxed), down.load(Ordering::Relaxed));
        m.bytes_up.fetch_add(bytes_up, Ordering::Relaxed);
        m.bytes_down.fetch_add(bytes_down, Ordering::Relaxed);
        for (who, end) in [("caller", outcome.a), ("target", outcome.b)] {
            if end == SideEnd::Stalled {
                Metrics::inc(&m.session_stalls);
                warn!(
                    session_id,
                    side = who,
                    "A side stopped reading for 2.5 hold intervals; session ended."
                );
            }
        }
        self.shared.registry.end_session(session_id);
        info!(session_id, %target, bytes_up, bytes_down, caller = ?outcome.a, target_end = ?outcome.b, "Session ended.");
        peer.shrink();
        let _ = back.send(match outcome.b {
            SideEnd::Clean => Some(peer),
            SideEnd::Dead(_) | SideEnd::Stalled => None,
        });
        match outcome.a {
            SideEnd::Clean => Next::Draining(conn),
            SideEnd::Dead(_) | SideEnd::Stalled => Next::Gone,
        }
    }

    async fn connect_failed(&self, mut conn: Connection, target: &str, code: Code) -> Next {
        let m = &self.shared.metrics;
        Metrics::inc(match code {
            Code::NotLoggedIn => &m.connect_not_logged_in,
            Code::Forbidden => &m.connect_forbidden,
            Code::Timeout => &m.connect_timeout,
            Code::Rejected => &m.connect_rejected,
            _ => &m.connect_busy,
        });
        let message = match code {
            Code::NotLoggedIn => format!("{target} is not logged in"),
            Code::Forbidden => format!("you may not connect to {target}"),
            Code::Timeout => format!("{target} did not answer in time"),
            Code::Rejected => format!("{target} rejected the connection"),
            _ => format!("{target} has no vacant connection"),
        };
        let code = match code {
            Code::NotLoggedIn | Code::Forbidden | Code::Timeout | Code::Rejected => code,
            _ => Code::Busy,
        };
        info!(%target, %code, "CONNECT failed.");
        match send(&mut conn, &err(code, message), self.write_limit()).await {
            Ok(()) => Next::Serve(conn),
            Err(_) => Next::Gone,
        }
    }
}

/// The caller's own deadline for a demand passed (the target's task is
/// stuck writing to its device). The demand is withdrawn as by
/// [`ConnTask::abandon_demand`]: the channel is closed first, so an ACCEPT
/// the target reads later is refused back to its task, which sends the
/// device NOTIFY-CANCEL instead of dropping its connection with the
/// undelivered answer. An answer that arrived just now is taken.
fn answer_overdue(reply_rx: &mut oneshot::Receiver<DemandOutcome>) -> DemandOutcome {
    reply_rx.close();
    reply_rx
        .try_recv()
        .unwrap_or(DemandOutcome::Rejected(Code::Timeout))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr as _;

    /// After the caller's deadline, the target's task can no longer hand
    /// over an answer (its `send` fails, so it sends NOTIFY-CANCEL); an
    /// answer that beat the close is kept.
    #[test]
    fn an_overdue_demand_is_withdrawn_so_a_late_answer_is_refused() {
        let (tx, mut rx) = oneshot::channel();
        assert!(matches!(
            answer_overdue(&mut rx),
            DemandOutcome::Rejected(Code::Timeout)
        ));
        assert!(tx.is_closed(), "a late ACCEPT would be delivered and lost");
        assert!(tx.send(DemandOutcome::Rejected(Code::Busy)).is_err());

        let (tx, mut rx) = oneshot::channel();
        tx.send(DemandOutcome::Rejected(Code::Rejected)).unwrap();
        assert!(matches!(
            answer_overdue(&mut rx),
            DemandOutcome::Rejected(Code::Rejected)
        ));
    }

    /// One IPv6 /64 is one address for the handshake cap, as for the
    /// login limits: a subscriber's prefix cannot fill the global pool.
    #[tokio::test]
    async fn pending_handshakes_are_capped_per_ipv6_slash_64() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = RelayServerConfig::from_str(&format!(
            "[relay]\nlisten = \"127.0.0.1:0\"\nstate_dir = {:?}\nargon2_memory_kib = 64\n\
             argon2_iterations = 1\nmax_pending_per_ip = 1\n",
            dir.path().display().to_string()
        ))
        .unwrap();
        let server = RelayServer::start(cfg, CancellationToken::new())
            .await
            .unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let first = try_pending(&server.shared, ip("2001:db8:0:1::1"));
        assert!(first.is_some());
        assert!(
            try_pending(&server.shared, ip("2001:db8:0:1::ffff:2")).is_none(),
            "another address in the same /64 took a second slot"
        );
        let other = try_pending(&server.shared, ip("2001:db8:0:2::1"));
        assert!(other.is_some(), "another /64 is another subscriber");
        drop(first);
        assert!(try_pending(&server.shared, ip("2001:db8:0:1::3")).is_some());
        drop(other);
    }
}
