//! The front panel's API: HTTP+JSON on a loopback address, the interface
//! the `faxgate send|scan-send|users|jobs|cancel|inbox` commands (and a
//! local web UI) use. It binds only to loopback (config validation
//! enforces it) and has no authentication of its own: whoever can open a
//! socket on the appliance may use the panel, as with a front panel.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/api/status` | relay pool, printer status, counts, print agent |
//! | GET | `/api/users` | the relay directory (LIST) |
//! | POST | `/api/jobs?to=USER&title=T` | body: TIFF-F; queues a job |
//! | POST | `/api/scan-send?to=USER` | scans and queues a job |
//! | GET | `/api/jobs`, `/api/jobs/{id}` | outbox jobs |
//! | POST | `/api/jobs/{id}/cancel` | cancels a job |
//! | GET | `/api/inbox`, `/api/inbox/{id}` | received documents |
//! | POST | `/api/inbox/{id}/release` | prints a held document |
//! | GET | `/api/history?subject=S` | the history log |
//!
//! Errors are `{"error": "..."}` with a 4xx or 5xx status.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Json;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use faxgate_relay::RelayClient;
use faxgate_scanner::SaneScanner;
use serde::Deserialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::store::{JobInfo, Store, check_document};
use super::{OutboxHandle, PrintHandle};
use crate::print::FaxPage;

/// What the panel's handlers reach.
#[derive(Clone, Debug)]
pub struct PanelState {
    /// The store.
    pub store: Store,
    /// The outbox actor.
    pub outbox: OutboxHandle,
    /// The relay client (directory and pool status).
    pub relay: RelayClient,
    /// The output stage (printer status).
    pub print: PrintHandle,
    /// The scanner, when configured.
    pub scanner: Option<Arc<SaneScanner>>,
    /// The print agent, when `[agent]` is configured.
    pub agent: Option<super::AgentHandle>,
}

/// The largest document `POST /api/jobs` takes.
const MAX_UPLOAD: usize = 256 * 1024 * 1024;

/// Binds the panel and serves it until `shutdown`.
pub async fn spawn(
    addr: SocketAddr,
    state: PanelState,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("while binding the panel API to {addr}"))?;
    let local = listener.local_addr()?;
    let app = axum::Router::new()
        .route("/api/status", get(status))
        .route("/api/users", get(users))
        .route("/api/jobs", get(jobs).post(add_job))
        .route("/api/jobs/{id}", get(job))
        .route("/api/jobs/{id}/cancel", post(cancel))
        .route("/api/scan-send", post(scan_send))
        .route("/api/inbox", get(inbox))
        .route("/api/inbox/{id}", get(inbox_doc))
        .route("/api/inbox/{id}/release", post(release))
        .route("/api/history", get(history))
        .layer(DefaultBodyLimit::max(MAX_UPLOAD))
        .with_state(state);
    tracker.spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "The panel API failed.");
        }
    });
    tracing::info!(%local, "Panel API listening.");
    Ok(local)
}

/// An error answer: status plus a message naming what was wrong.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

fn internal(e: anyhow::Error) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"))
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

type ApiResult = Result<Response, ApiError>;

fn ok(v: impl serde::Serialize) -> ApiResult {
    Ok(Json(v).into_response())
}

async fn status(State(s): State<PanelState>) -> ApiResult {
    let pool = s.relay.status();
    let printer = s.print.status();
    let jobs = s.store.jobs(1000).await.map_err(internal)?;
    let active = jobs.iter().filter(|j| !j.state.is_final()).count();
    ok(json!({
        "user": s.relay.user(),
        "relay": {
            "connections": pool.connections,
            "vacant": pool.vacant,
        },
        "printer": printer.to_string(),
        "active_jobs": active,
        "scanner": s.scanner.is_some(),
        "print_agent": s.agent.as_ref().map(|a| {
            let st = a.status();
            json!({
                "site": st.site,
                "attached": st.attached,
                "transport": st.transport,
                "current_job": st.current_job,
                "printed": st.jobs_printed,
                "canceled": st.jobs_canceled,
                "failed": st.jobs_failed,
                "printer": st.printer,
                "last_error": st.last_error,
            })
        }),
    }))
}

async fn users(State(s): State<PanelState>) -> ApiResult {
    let list = s
        .relay
        .list()
        .await
        .map_err(|e| ApiError(StatusCode::BAD_GATEWAY, format!("relay: {e}")))?;
    ok(list
        .into_iter()
        .map(|u| json!({"user": u.user, "vacant": u.vacant, "connections": u.connections}))
        .collect::<Vec<_>>())
}

async fn jobs(State(s): State<PanelState>) -> ApiResult {
    let jobs = s.store.jobs(200).await.map_err(internal)?;
    ok(jobs
        .into_iter()
        .map(|j| {
            let text = j.to_string();
            let mut v = serde_json::to_value(j).unwrap_or_default();
            v["status"] = json!(text);
            v
        })
        .collect::<Vec<_>>())
}

async fn job(State(s): State<PanelState>, Path(id): Path<String>) -> ApiResult {
    match s.store.job(&id).await.map_err(internal)? {
        Some(j) => {
            let text = j.to_string();
            let mut v = serde_json::to_value(j).map_err(|e| internal(e.into()))?;
            v["status"] = json!(text);
            ok(v)
        }
        None => Err(ApiError(StatusCode::NOT_FOUND, format!("no job {id}"))),
    }
}

#[derive(Deserialize)]
struct SendQuery {
    to: String,
    #[serde(default)]
    title: Option<String>,
}

fn check_user(to: &str) -> Result<(), ApiError> {
    if to.is_empty() || to.len() > 64 || to.chars().any(char::is_control) {
        return Err(bad(format!("`{to}` is not a relay user ID")));
    }
    Ok(())
}

async fn add_job(
    State(s): State<PanelState>,
    Query(q): Query<SendQuery>,
    body: axum::body::Bytes,
) -> ApiResult {
    check_user(&q.to)?;
    let title = q.title.unwrap_or_else(|| "document".into());
    let (pages, resolution) = tokio::task::spawn_blocking(move || decode_upload(&body))
        .await
        .map_err(|e| internal(e.into()))?
        .map_err(|e| bad(format!("{e:#}")))?;
    let job = queue_job(&s.store, &q.to, &title, pages, resolution).await?;
    s.outbox.wake().await;
    Ok((StatusCode::CREATED, Json(job)).into_response())
}

/// Queues a document: 400 if it cannot be a fax job (no pages, mixed
/// widths), 500 if the store fails (the job was not queued then: the
/// store's transaction left nothing behind, so sending again is safe).
async fn queue_job(
    store: &Store,
    to: &str,
    title: &str,
    pages: Vec<faxgate_fax::Bitmap>,
    resolution: faxgate_fax::Resolution,
) -> Result<JobInfo, ApiError> {
    check_document(&pages).map_err(|e| bad(format!("{e:#}")))?;
    store
        .add_job(to, title, pages, resolution)
        .await
        .map_err(|e| internal(e.context("while queueing the job")))
}

/// The pages of an uploaded TIFF-F, which must all share one fax
/// resolution and one width.
fn decode_upload(
    body: &[u8],
) -> anyhow::Result<(Vec<faxgate_fax::Bitmap>, faxgate_fax::Resolution)> {
    anyhow::ensure!(
        !body.is_empty(),
        "the request has no document (send TIFF-F)"
    );
    let pages = FaxPage::from_tiff(body).context("the document is not a readable TIFF-F file")?;
    anyhow::ensure!(!pages.is_empty(), "the document has no pages");
    let resolution = pages[0].resolution().with_context(|| {
        format!(
            "page 1 is {}x{} dpi, which is no fax resolution",
            pages[0].dpi().0,
            pages[0].dpi().1
        )
    })?;
    let mut out = Vec::with_capacity(pages.len());
    for (i, p) in pages.iter().enumerate() {
        anyhow::ensure!(
            p.resolution() == Some(resolution),
            "page {} has another resolution than page 1",
            i + 1
        );
        out.push(
            p.to_bitmap()
                .with_context(|| format!("page {} does not decode", i + 1))?,
        );
    }
    Ok((out, resolution))
}

async fn scan_send(State(s): State<PanelState>, Query(q): Query<SendQuery>) -> ApiResult {
    check_user(&q.to)?;
    let scanner = s.scanner.as_ref().ok_or_else(|| {
        ApiError(
            StatusCode::CONFLICT,
            "no scanner is configured ([scanner] in appliance.toml)".into(),
        )
    })?;
    let doc = scanner
        .scan()
        .await
        .map_err(|e| ApiError(StatusCode::BAD_GATEWAY, format!("scan failed: {e}")))?;
    let title = q.title.unwrap_or_else(|| format!("scan from {}", doc.name));
    let job = queue_job(&s.store, &q.to, &title, doc.pages, doc.resolution).await?;
    s.outbox.wake().await;
    Ok((StatusCode::CREATED, Json(job)).into_response())
}

async fn cancel(State(s): State<PanelState>, Path(id): Path<String>) -> ApiResult {
    match s.outbox.cancel(&id).await {
        Ok(j) => ok(j),
        Err(e) => Err(ApiError(StatusCode::CONFLICT, format!("{e:#}"))),
    }
}

async fn inbox(State(s): State<PanelState>) -> ApiResult {
    ok(s.store.inbox(200).await.map_err(internal)?)
}

async fn inbox_doc(State(s): State<PanelState>, Path(id): Path<i64>) -> ApiResult {
    match s.store.inbox_doc(id).await.map_err(internal)? {
        Some(d) => ok(d),
        None => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no inbox document {id}"),
        )),
    }
}

async fn release(State(s): State<PanelState>, Path(id): Path<i64>) -> ApiResult {
    let d = s
        .store
        .release(id)
        .await
        .map_err(|e| ApiError(StatusCode::CONFLICT, format!("{e:#}")))?;
    s.print.wake().await;
    ok(d)
}

#[derive(Deserialize)]
struct HistoryQuery {
    #[serde(default)]
    subject: Option<String>,
}

async fn history(State(s): State<PanelState>, Query(q): Query<HistoryQuery>) -> ApiResult {
    ok(s.store.history(q.subject, 500).await.map_err(internal)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(width: u32) -> faxgate_fax::Bitmap {
        faxgate_fax::Bitmap::new(width, 8)
    }

    #[tokio::test]
    async fn queue_job_answers_400_for_a_bad_document_and_500_for_a_store_failure() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let fine = faxgate_fax::Resolution::Fine;
        let Err(ApiError(code, msg)) =
            queue_job(&store, "osaka", "t", vec![page(1728), page(2048)], fine).await
        else {
            panic!("mixed widths were queued");
        };
        assert_eq!(code, StatusCode::BAD_REQUEST, "{msg}");
        assert!(msg.contains("one width"), "{msg}");
        store
            .execute_batch_for_test(
                "CREATE TRIGGER history_full BEFORE INSERT ON history
                 BEGIN SELECT RAISE(ABORT, 'history is full'); END;",
            )
            .await
            .unwrap();
        let Err(ApiError(code, msg)) =
            queue_job(&store, "osaka", "t", vec![page(1728)], fine).await
        else {
            panic!("queued although the store failed");
        };
        assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR, "{msg}");
        assert!(
            msg.contains("while queueing the job") && msg.contains("history is full"),
            "{msg}"
        );
        assert!(store.jobs(10).await.unwrap().is_empty());
    }
}
