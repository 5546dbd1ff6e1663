//! The HTTP status endpoint: `GET /status` (JSON: who is logged in, the
//! sessions and their bytes), `GET /metrics` (Prometheus text), and
//! `POST /admin/kick/{user}` guarded by a bearer token.

use crate::protocol::Code;
use crate::registry::Snapshot;
use crate::server::Shared;
use anyhow::Context as _;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use faxgate_config::Secret;
use std::net::SocketAddr;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone)]
struct AppState {
    shared: Arc<Shared>,
    admin_token: Option<Arc<Secret<String>>>,
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
        admin_token: admin_token.map(Arc::new),
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
    tracker.spawn(async move {
        let r = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "Status endpoint failed.");
        }
    });
    Ok(addr)
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

async fn kick(State(s): State<AppState>, Path(user): Path<String>, headers: HeaderMap) -> Response {
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
    let ok: bool = given.as_bytes().ct_eq(expected.expose().as_bytes()).into();
    if !ok {
        tracing::warn!(%user, "Kick refused: bad admin token.");
        return (StatusCode::UNAUTHORIZED, "bad admin token\n").into_response();
    }
    let n = s.shared.registry.close_user(&user, Code::Kicked);
    tracing::info!(%user, connections = n, "User kicked by admin.");
    axum::Json(serde_json::json!({ "user": user, "closed": n })).into_response()
}
