//! The HTTP status endpoint: `GET /status` (JSON: who is logged in, the
//! sessions and their bytes), `GET /metrics` (Prometheus text), and
//! `POST /admin/kick/{user}` guarded by a bearer token.
//!
//! It serves HTTP/1.1 on its own accept loop rather than `axum::serve`,
//! which sets no header-read deadline and no connection cap: here a
//! request's header must arrive within [`HEADER_TIMEOUT`], a connection
//! lives at most [`CONNECTION_LIFETIME`], and at most [`MAX_CONNECTIONS`]
//! are open at once (more are closed at once). Wrong admin tokens are
//! rate-limited per address like logins.

use crate::auth::{FailureLimiter, limit_key};
use crate::protocol::{Code, valid_user_id};
use crate::registry::Snapshot;
use crate::server::Shared;
use anyhow::Context as _;
use axum::Router;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use faxgate_config::Secret;
use sha2::{Digest as _, Sha256};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a request's header may take to arrive.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one connection (with keep-alive, many requests) may live.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Connections open at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Wrong admin tokens allowed per address (IPv6: per /64) in
/// [`BAD_TOKEN_WINDOW`].
const MAX_BAD_TOKENS: u32 = 5;
const BAD_TOKEN_WINDOW: Duration = Duration::from_secs(300);

#[derive(Clone)]
struct AppState {
    shared: Arc<Shared>,
    /// The SHA-256 of the admin token: compared digest to digest, so the
    /// comparison takes the same time whatever the length of a guess.
    admin_token: Option<[u8; 32]>,
    bad_tokens: Arc<FailureLimiter<IpAddr>>,
}

/// What `GET /status` returns.
#[derive(Debug, serde::Serialize)]
pub struct StatusReport {
    /// Users logged in.
    pub users_logged_in: usize,
    /// Connections logged in.
    pub connections: usize,
    /// Of those, vacant.
    pub vacant: usize,
    /// Sessions bridged now.
    pub sessions_active: usize,
    /// Everything in detail.
    #[serde(flatten)]
    pub snapshot: Snapshot,
}

/// Binds the endpoint and serves it until `shutdown`.
pub async fn serve(
    shared: Arc<Shared>,
    listen: SocketAddr,
    admin_token: Option<Secret<String>>,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> anyhow::Result<SocketAddr> {
    let state = AppState {
        shared,
        admin_token: admin_token.map(|t| Sha256::digest(t.expose().as_bytes()).into()),
        bad_tokens: Arc::new(FailureLimiter::new(MAX_BAD_TOKENS, BAD_TOKEN_WINDOW)),
    };
    let app = Router::new()
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/admin/kick/{user}", post(kick))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("while binding the status endpoint on {listen}"))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "Status endpoint listening.");
    let conns = tracker.clone();
    tracker.spawn(accept_loop(listener, app, shutdown, conns));
    Ok(addr)
}

/// Accepts connections and serves each on its own task, within the
/// deadlines and the cap in the module docs, until `shutdown`.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, peer) = tokio::select! {
            () = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "Status endpoint cannot accept; retrying.");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!(%peer, "Status endpoint full; connection closed.");
            continue;
        };
        let app = app.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let _slot = slot;
            // The handlers see the peer as `ConnectInfo`, as under axum::serve.
            let service = hyper_util::service::TowerToHyperService::new(
                app.layer(axum::Extension(ConnectInfo(peer))),
            );
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service);
            tokio::select! {
                r = tokio::time::timeout(CONNECTION_LIFETIME, conn) => match r {
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "Status connection ended with an error."),
                    Err(_) => tracing::debug!(%peer, "Status connection closed at its lifetime."),
                    Ok(Ok(())) => {}
                },
                () = shutdown.cancelled() => {}
            }
        });
    }
}

async fn status(State(s): State<AppState>) -> impl IntoResponse {
    let (users, conns, vacant, sessions) = s.shared.registry.counts();
    axum::Json(StatusReport {
        users_logged_in: users,
        connections: conns,
        vacant,
        sessions_active: sessions,
        snapshot: s.shared.registry.snapshot(),
    })
}

async fn metrics(State(s): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.shared.metrics.render(&s.shared.registry),
    )
        .into_response()
}

async fn kick(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(user): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(expected) = &s.admin_token else {
        return (
            StatusCode::NOT_FOUND,
            "admin actions are disabled (no status.admin_token)\n",
        )
            .into_response();
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let key = limit_key(peer.ip());
    let now = Instant::now();
    if !s.bad_tokens.try_reserve(&key, now) {
        tracing::warn!(peer = %peer.ip(), "Kick refused: too many bad admin tokens from this address.");
        return (
            StatusCode::TOO_MANY_REQUESTS,
            "too many bad admin tokens from this address; wait a few minutes\n",
        )
            .into_response();
    }
    let digest: [u8; 32] = Sha256::digest(given.as_bytes()).into();
    let ok: bool = digest.ct_eq(expected).into();
    if !ok {
        // The reservation stays: a failure.
        tracing::warn!(peer = %peer.ip(), "Kick refused: bad admin token.");
        return (StatusCode::UNAUTHORIZED, "bad admin token\n").into_response();
    }
    s.bad_tokens.release(&key, now);
    // The ID came percent-decoded from the path: checked before it is
    // logged (a newline would forge a log line) or looked up.
    if !valid_user_id(&user) {
        return (
            StatusCode::BAD_REQUEST,
            "not a user ID (1..=64 of ASCII letters, digits and ._-@%)\n",
        )
            .into_response();
    }
    let n = s.shared.registry.close_user(&user, Code::Kicked);
    tracing::info!(%user, connections = n, "User kicked by admin.");
    axum::Json(serde_json::json!({ "user": user, "closed": n })).into_response()
}
