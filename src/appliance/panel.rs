//! The front panel's API: HTTP+JSON on a loopback address, the interface
//! the `faxgate send|scan-send|users|jobs|cancel|inbox|history` commands
//! (and a local web UI) use. It binds only to loopback (config validation
//! enforces it) and has no authentication of its own: whoever can open a
//! socket on the appliance may use the panel, as with a front panel.
//!
//! A web browser on the appliance can open such sockets for any page it
//! shows, so every request passes [`guard`] first (403 otherwise):
//!
//! - `Host` must be the panel's own `IP:port`, `localhost:port` or
//!   `[::1]:port`, so a page on a rebound DNS name cannot read answers;
//! - an `Origin` header, if any, must be the panel's own origin, and
//!   `Sec-Fetch-Site` must not be `cross-site` or `same-site`;
//! - every request but GET and HEAD must carry [`PANEL_HEADER`]`: 1`, which
//!   a page can send to another origin only after a CORS preflight, and
//!   the panel grants none. The faxgate commands send it.
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
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use faxgate_fax::t30::frame::{line_widths, width_class};
use faxgate_fax::tiff::{TiffPage, TiffReader};
use faxgate_fax::{Bitmap, Resolution};
use faxgate_relay::RelayClient;
use faxgate_scanner::{MAX_DOCUMENT_PAGES, SaneScanner};
use serde::Deserialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::store::{JobInfo, Store, check_document};
use super::{OutboxHandle, PrintHandle};

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

/// The most bytes the decoded pages of one upload may take (one bit a
/// pixel). The store takes a document as bitmaps, and a few hundred bytes
/// of TIFF can claim huge pages (MMR codes a white line in one bit, and
/// pages may share a strip), so the claim is checked before anything is
/// decoded. 1000 A4 pages at fine resolution (about 494 MB) fit.
const MAX_DECODED_BYTES: u64 = 512 << 20;

/// The header (value `1`) that every panel request but GET and HEAD must
/// carry: a web page can send a header of its own to another origin only
/// after a CORS preflight, which the panel never grants, so a page of
/// another site cannot queue, cancel or release anything.
pub const PANEL_HEADER: &str = "x-faxgate-panel";

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
        .layer(middleware::from_fn_with_state(local, guard))
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

/// Refuses, before any handler runs, a request that a web browser sends
/// for a page of another site (see the module docs): 403 naming the
/// header at fault. `local` is the panel's bound address.
async fn guard(State(local): State<SocketAddr>, req: Request, next: Next) -> Response {
    match check_browser(local, req.method(), req.headers()) {
        Ok(()) => next.run(req).await,
        Err(e) => {
            tracing::warn!(
                method = %req.method(),
                path = req.uri().path(),
                reason = %e.1,
                "Refused a panel request."
            );
            e.into_response()
        }
    }
}

/// The checks of [`guard`], on a request's method and headers.
fn check_browser(local: SocketAddr, method: &Method, headers: &HeaderMap) -> Result<(), ApiError> {
    let forbidden = |msg: String| Err(ApiError(StatusCode::FORBIDDEN, msg));
    let hosts = own_hosts(local);
    let text = |v: &HeaderValue| String::from_utf8_lossy(v.as_bytes()).into_owned();
    // `hosts` are lowercase, and host names compare without case.
    let ours = |v: &str, prefix: &str| {
        v.to_ascii_lowercase()
            .strip_prefix(prefix)
            .is_some_and(|v| hosts.iter().any(|h| h == v))
    };
    let mut host = headers.get_all(header::HOST).iter();
    match (host.next(), host.next()) {
        (Some(h), None) if ours(&text(h), "") => {}
        (Some(h), None) => {
            return forbidden(format!(
                "the panel answers only requests for {}, not for Host {:?}",
                hosts.join(", "),
                text(h)
            ));
        }
        _ => return forbidden("a panel request needs exactly one Host header".into()),
    }
    for origin in headers.get_all(header::ORIGIN) {
        if !ours(&text(origin), "http://") {
            return forbidden(format!(
                "the panel refuses requests from web pages of other sites (Origin {:?})",
                text(origin)
            ));
        }
    }
    for site in headers.get_all("sec-fetch-site") {
        let site = text(site);
        if site.eq_ignore_ascii_case("cross-site") || site.eq_ignore_ascii_case("same-site") {
            return forbidden(format!(
                "the panel refuses requests from web pages of other sites (Sec-Fetch-Site {site})"
            ));
        }
    }
    if method != Method::GET
        && method != Method::HEAD
        && headers.get(PANEL_HEADER).is_none_or(|v| v != "1")
    {
        return forbidden(format!(
            "a {method} to the panel must carry the header {PANEL_HEADER}: 1 (the faxgate \
             commands send it; web pages of other sites cannot)"
        ));
    }
    Ok(())
}

/// The `Host` values under which the panel at `local` answers: its own
/// address, `localhost` and `[::1]` with its port (without the port too
/// when that is 80, as clients then leave it out).
fn own_hosts(local: SocketAddr) -> Vec<String> {
    let port = local.port();
    let ip = match local {
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
    };
    let mut names = vec![ip, "localhost".to_owned(), "[::1]".to_owned()];
    names.dedup();
    let mut hosts: Vec<String> = names.iter().map(|n| format!("{n}:{port}")).collect();
    if port == 80 {
        hosts.extend(names);
    }
    hosts
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

/// Refuses a recipient the relay would refuse (as a protocol violation,
/// at every attempt of the job): [`faxgate_relay::protocol::valid_user_id`].
/// `tel:NUMBER` is a telephone number, faxed through `[modem]`; the
/// number must be a dial string the modem can take.
fn check_user(to: &str) -> Result<(), ApiError> {
    if let Some(number) = super::outbox::tel_number(to) {
        if !faxgate_modem::class1::valid_dial_string(number) {
            return Err(bad(format!(
                "{to:?} is not a telephone number: after tel: give 1 to 64 digits,                  letters, '+', '*', '#', ',', '-', '(', ')', 'W', '@', '!' or spaces"
            )));
        }
        return Ok(());
    }
    if !faxgate_relay::protocol::valid_user_id(to) {
        return Err(bad(format!(
            "{to:?} is not a relay user ID: it must be 1 to 64 ASCII letters, digits, \
             '.', '_', '-', '@' or '%'"
        )));
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
/// widths, a width that is no T.4 scan line at its resolution, which the
/// outbox would fail only at sending), 500 if the store fails (the job was
/// not queued then: the store's transaction left nothing behind, so
/// sending again is safe).
async fn queue_job(
    store: &Store,
    to: &str,
    title: &str,
    pages: Vec<Bitmap>,
    resolution: Resolution,
) -> Result<JobInfo, ApiError> {
    let width = check_document(&pages).map_err(|e| bad(format!("{e:#}")))?;
    check_width(width, resolution).map_err(|e| bad(format!("the document {e}")))?;
    store
        .add_job(to, title, pages, resolution)
        .await
        .map_err(|e| internal(e.context("while queueing the job")))
}

/// Why a page `width` pels wide cannot be sent at `resolution`, if it
/// cannot: a fax page is A4, B4 or A3 wide in T.4 scan line pels
/// ([`width_class`]), and the outbox fails any other width at sending.
fn check_width(width: u32, resolution: Resolution) -> Result<(), String> {
    if width_class(width, resolution).is_some() {
        return Ok(());
    }
    let [a4, b4, a3] = line_widths(resolution);
    let (x, y) = resolution.dpi();
    Err(format!(
        "is {width} pels wide, which is no T.4 scan line at {x}x{y} dpi \
         (A4 {a4}, B4 {b4} or A3 {a3} pels)"
    ))
}

/// The fax resolution of a TIFF page, read as the output stage reads it
/// (`FaxPage::from_tiff`): the one its resolution tags amount to, fine
/// when it has none; `Err` names the resolution that is no fax one.
fn page_resolution(p: &TiffPage) -> Result<Resolution, String> {
    let scale = if p.resolution_unit == 3 { 2.54 } else { 1.0 };
    match (p.x_resolution, p.y_resolution) {
        (Some(x), Some(y)) if x > 0.0 && y > 0.0 && p.resolution_unit != 1 => {
            let (x, y) = (x * scale, y * scale);
            Resolution::from_dpi(x, y)
                .ok_or_else(|| format!("{x:.0}x{y:.0} dpi, which is no fax resolution"))
        }
        _ => Ok(Resolution::Fine),
    }
}

/// The pages of an uploaded TIFF-F, which must all share one fax
/// resolution and one T.4 width. Every page's header is checked before
/// any page is decoded: at most [`MAX_DOCUMENT_PAGES`] pages, T.4 widths,
/// and at most [`MAX_DECODED_BYTES`] decoded in all (the TIFF reader
/// refuses a page of more than [`faxgate_fax::MAX_PAGE_LINES`] lines).
fn decode_upload(body: &[u8]) -> anyhow::Result<(Vec<Bitmap>, Resolution)> {
    anyhow::ensure!(
        !body.is_empty(),
        "the request has no document (send TIFF-F)"
    );
    let tiff = TiffReader::new(body).context("the document is not a readable TIFF-F file")?;
    let resolution = check_upload(&tiff)?;
    let pages = (0..tiff.pages().len())
        .map(|i| {
            tiff.decode_page(i)
                .map(|(bmp, _)| bmp)
                .with_context(|| format!("page {} does not decode", i + 1))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok((pages, resolution))
}

/// The checks of [`decode_upload`] on every page's header, before any
/// page is decoded; the document's resolution.
fn check_upload(tiff: &TiffReader<'_>) -> anyhow::Result<Resolution> {
    let heads = tiff.pages();
    anyhow::ensure!(
        heads.len() <= MAX_DOCUMENT_PAGES,
        "the document has {} pages; a job takes at most {MAX_DOCUMENT_PAGES}",
        heads.len()
    );
    let first = heads.first().context("the document has no pages")?;
    let resolution = page_resolution(first).map_err(|e| anyhow::anyhow!("page 1 is {e}"))?;
    let mut decoded = 0u64;
    for (i, p) in heads.iter().enumerate() {
        let n = i + 1;
        let r = page_resolution(p).map_err(|e| anyhow::anyhow!("page {n} is {e}"))?;
        anyhow::ensure!(
            r == resolution,
            "page {n} has another resolution than page 1"
        );
        check_width(p.width, r).map_err(|e| anyhow::anyhow!("page {n} {e}"))?;
        decoded += u64::from(p.width.div_ceil(8)) * u64::from(p.height);
        anyhow::ensure!(
            decoded <= MAX_DECODED_BYTES,
            "page {n} ({}x{} pels) brings the document to more than {} MiB decoded, \
             the most one job may have; send it in parts",
            p.width,
            p.height,
            MAX_DECODED_BYTES >> 20
        );
    }
    Ok(resolution)
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
    use crate::commands::appliance::api;
    use crate::commands::demo::Pair;
    use faxgate_fax::Coding;
    use faxgate_fax::tiff::{TiffWriterOptions, write_tiff};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    fn page(width: u32) -> Bitmap {
        Bitmap::new(width, 8)
    }

    /// A one-page TIFF-F of a white page `width` pels wide.
    fn tiff(width: u32, resolution: Resolution) -> Vec<u8> {
        write_tiff(
            &[Bitmap::new(width, 16)],
            Coding::Mmr,
            resolution,
            TiffWriterOptions::default(),
        )
        .unwrap()
    }

    /// A little-endian TIFF whose pages, `(width, height)` each at `dpi`,
    /// all use the one MMR strip `strip`: what a small hostile upload can
    /// claim.
    fn shared_strip_tiff(pages: &[(u32, u32)], dpi: (u32, u32), strip: &[u8]) -> Vec<u8> {
        let (x_at, y_at, strip_at) = (8u32, 16u32, 24u32);
        let mut out = b"II*\0".to_vec();
        let first_ifd = (strip_at + strip.len() as u32).next_multiple_of(2);
        out.extend(first_ifd.to_le_bytes());
        for v in [dpi.0, 1, dpi.1, 1] {
            out.extend(v.to_le_bytes());
        }
        out.extend(strip);
        out.resize(first_ifd as usize, 0);
        let (short, long, rational) = (3u16, 4u16, 5u16);
        for (i, &(width, height)) in pages.iter().enumerate() {
            let entries: [(u16, u16, u32); 12] = [
                (256, long, width),
                (257, long, height),
                (258, short, 1),
                (259, short, 4),
                (262, short, 0),
                (273, long, strip_at),
                (277, short, 1),
                (278, long, height),
                (279, long, strip.len() as u32),
                (282, rational, x_at),
                (283, rational, y_at),
                (296, short, 2),
            ];
            out.extend((entries.len() as u16).to_le_bytes());
            for (tag, typ, value) in entries {
                out.extend(tag.to_le_bytes());
                out.extend(typ.to_le_bytes());
                out.extend(1u32.to_le_bytes());
                out.extend(value.to_le_bytes());
            }
            let next = if i + 1 < pages.len() {
                out.len() as u32 + 4
            } else {
                0
            };
            out.extend(next.to_le_bytes());
        }
        out
    }

    /// A relay with appliances tokyo and osaka; tests use tokyo's panel.
    struct Fixture {
        pair: Pair,
        shutdown: CancellationToken,
        _dir: tempfile::TempDir,
    }

    impl Fixture {
        async fn start() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let shutdown = CancellationToken::new();
            let printed = dir.path().join("printed");
            let pair = Pair::start(dir.path(), &printed, "pdf", false, &shutdown)
                .await
                .unwrap();
            Fixture {
                pair,
                shutdown,
                _dir: dir,
            }
        }

        fn panel(&self) -> SocketAddr {
            self.pair.tokyo.panel_addr
        }

        async fn stop(self) {
            self.pair.stop().await;
            self.shutdown.cancel();
        }
    }

    /// Sends one HTTP/1.1 request with exactly `headers` (plus
    /// Content-Length and Connection: close), as a browser or a script
    /// could; returns the status and the body.
    async fn request(
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, String) {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut head = format!("{method} {path} HTTP/1.1\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str(&format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        ));
        tcp.write_all(head.as_bytes()).await.unwrap();
        tcp.write_all(body).await.unwrap();
        let mut reply = Vec::new();
        tcp.read_to_end(&mut reply).await.unwrap();
        let reply = String::from_utf8_lossy(&reply).into_owned();
        let code = reply
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no status in {reply:?}"));
        let body = reply
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_owned();
        (code, body)
    }

    /// A browser page cannot use the panel: not from another origin
    /// (Origin, Sec-Fetch-Site), not through a rebound DNS name (Host),
    /// and not with a simple request that lacks the panel header; the CLI
    /// (api()) and a page of the panel's own origin can.
    #[tokio::test]
    async fn the_panel_refuses_requests_that_browsers_send_for_other_sites() {
        let f = Fixture::start().await;
        let addr = f.panel();
        let own = addr.to_string();
        let doc = tiff(1728, Resolution::Fine);
        let jobs = "/api/jobs?to=osaka&title=t";
        let refused = [
            (
                "POST",
                jobs,
                vec![
                    ("Host", own.as_str()),
                    (PANEL_HEADER, "1"),
                    ("Origin", "http://evil.example"),
                ],
                "Origin",
            ),
            (
                "POST",
                jobs,
                vec![("Host", "evil.example:4680"), (PANEL_HEADER, "1")],
                "Host",
            ),
            (
                "GET",
                "/api/inbox",
                vec![("Host", "evil.example:4680")],
                "Host",
            ),
            ("GET", "/api/users", vec![], "Host"),
            ("POST", jobs, vec![("Host", own.as_str())], PANEL_HEADER),
            (
                "POST",
                jobs,
                vec![
                    ("Host", own.as_str()),
                    (PANEL_HEADER, "1"),
                    ("Sec-Fetch-Site", "cross-site"),
                ],
                "Sec-Fetch-Site",
            ),
            (
                "POST",
                "/api/scan-send?to=osaka",
                vec![("Host", own.as_str())],
                PANEL_HEADER,
            ),
            (
                "POST",
                "/api/inbox/1/release",
                vec![("Host", own.as_str())],
                PANEL_HEADER,
            ),
            (
                "POST",
                "/api/jobs/0123456789abcdef/cancel",
                vec![("Host", own.as_str())],
                PANEL_HEADER,
            ),
        ];
        for (method, path, headers, named) in refused {
            let (code, body) = request(addr, method, path, &headers, &doc).await;
            assert_eq!(code, 403, "{method} {path} {headers:?}: {body}");
            assert!(body.contains(named), "{headers:?}: {body}");
        }
        let queued = api(addr, "GET", "/api/jobs", None).await.unwrap();
        assert_eq!(queued, json!([]), "a refused request queued a job");

        // The panel's own origin, under any of its names, may.
        let localhost = format!("localhost:{}", addr.port());
        let origin = format!("http://{localhost}");
        let (code, body) = request(
            addr,
            "POST",
            jobs,
            &[
                ("Host", localhost.as_str()),
                (PANEL_HEADER, "1"),
                ("Origin", origin.as_str()),
                ("Sec-Fetch-Site", "same-origin"),
            ],
            &doc,
        )
        .await;
        assert_eq!(code, 201, "{body}");
        // The CLI's request helper passes.
        let job = api(addr, "POST", jobs, Some(doc)).await.unwrap();
        assert!(job["id"].is_string(), "{job}");
        let status = api(addr, "GET", "/api/status", None).await.unwrap();
        assert_eq!(status["user"], "tokyo", "{status}");
        f.stop().await;
    }

    /// What the outbox or the relay would refuse only later is refused at
    /// the panel with a 400 that says what is wrong: a page claiming a
    /// huge size, a width that is no T.4 scan line at the document's
    /// resolution, and a recipient ID the relay does not take.
    #[tokio::test]
    async fn the_panel_answers_400_for_what_cannot_be_sent() {
        let f = Fixture::start().await;
        let addr = f.panel();
        let huge = shared_strip_tiff(&[(65536, 80_000)], (204, 196), &[0xFF]);
        let r300 = tiff(2542, Resolution::R300);
        let fine = tiff(1728, Resolution::Fine);
        let cases: [(&str, &[u8], &[&str]); 4] = [
            ("osaka", &huge, &["page 1", "65536", "1728"]),
            (
                "osaka",
                &r300,
                &["2542", "300x300", "2592, B4 3072 or A3 3648"],
            ),
            ("a%20b", &fine, &["\"a b\"", "letters, digits"]),
            ("", &fine, &["relay user ID"]),
        ];
        for (to, doc, named) in cases {
            let path = format!("/api/jobs?to={to}");
            let err = api(addr, "POST", &path, Some(doc.to_vec()))
                .await
                .expect_err(&format!("{path} was queued"))
                .to_string();
            assert!(err.contains("400"), "{err}");
            for n in named {
                assert!(err.contains(n), "{n:?} not in {err}");
            }
        }
        let queued = api(addr, "GET", "/api/jobs", None).await.unwrap();
        assert_eq!(queued, json!([]));
        f.stop().await;
    }

    /// Why decode_upload refuses `doc`.
    fn refusal(doc: &[u8]) -> String {
        match decode_upload(doc) {
            Ok((pages, _)) => panic!("{} pages were taken", pages.len()),
            Err(e) => format!("{e:#}"),
        }
    }

    /// A small upload cannot make the panel decode more than it allows:
    /// every page's header is checked first (T.4 width, page count, the
    /// decoded size in all).
    #[test]
    fn decode_upload_checks_every_page_header_before_decoding() {
        let fine = (204, 196);
        let huge = shared_strip_tiff(&[(65536, 80_000)], fine, &[0xFF]);
        let e = refusal(&huge);
        assert!(e.contains("page 1 is 65536 pels wide"), "{e}");
        // A later page is checked before the first is decoded too.
        let mixed = shared_strip_tiff(&[(1728, 8), (1728, 8), (65536, 80_000)], fine, &[0xFF]);
        let e = refusal(&mixed);
        assert!(e.contains("page 3 is 65536 pels wide"), "{e}");

        let many = shared_strip_tiff(&[(1728, 8); MAX_DOCUMENT_PAGES + 1], fine, &[0xFF]);
        let e = refusal(&many);
        assert!(
            e.contains("1001 pages") && e.contains("at most 1000"),
            "{e}"
        );
        let most = shared_strip_tiff(&[(1728, 8); MAX_DOCUMENT_PAGES], fine, &[0xFF]);
        let (pages, r) = decode_upload(&most).unwrap();
        assert_eq!((pages.len(), r), (MAX_DOCUMENT_PAGES, Resolution::Fine));

        // A3 at 400 dpi, 80,000 lines: 48.6 MB a page decoded. The page
        // headers alone are checked here, so all pages share one byte of
        // strip (the TIFF reader refuses strips whose byte counts add up to
        // more than the file: the 10,000 bytes of MMR such a page takes,
        // shared, would be refused before these checks).
        let a3 = (4864, 80_000);
        let strip = vec![0xFF; 1];
        let eleven = shared_strip_tiff(&[a3; 11], (400, 400), &strip);
        let twelve = shared_strip_tiff(&[a3; 12], (400, 400), &strip);
        let e = refusal(&twelve);
        assert!(
            e.contains("page 12 (4864x80000 pels)") && e.contains("512 MiB"),
            "{e}"
        );
        // Eleven such pages (535 MB) pass the checks; they are not decoded
        // here, to spare the test the memory.
        let r = check_upload(&TiffReader::new(&eleven).unwrap()).unwrap();
        assert_eq!(r, Resolution::R400);
    }

    /// A scanned document (queued without decode_upload) whose width is
    /// no T.4 scan line at its resolution is refused with the widths that
    /// are, and so is the same width at another resolution.
    #[tokio::test]
    async fn queue_job_answers_400_for_a_width_that_is_no_t4_scan_line() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for (width, r, allowed) in [
            (2542, Resolution::R300, "A4 2592, B4 3072 or A3 3648"),
            (2592, Resolution::Fine, "A4 1728, B4 2048 or A3 2432"),
            (1728, Resolution::R400, "A4 3456, B4 4096 or A3 4864"),
        ] {
            let Err(ApiError(code, msg)) =
                queue_job(&store, "osaka", "t", vec![page(width)], r).await
            else {
                panic!("{width} pels at {r:?} were queued");
            };
            assert_eq!(code, StatusCode::BAD_REQUEST, "{msg}");
            assert!(
                msg.contains(&format!("is {width} pels wide")) && msg.contains(allowed),
                "{msg}"
            );
        }
        for (width, r) in [(2592, Resolution::R300), (2048, Resolution::Standard)] {
            assert!(
                queue_job(&store, "osaka", "t", vec![page(width)], r)
                    .await
                    .is_ok()
            );
        }
    }

    /// The panel takes exactly the recipient IDs the relay takes.
    #[test]
    fn check_user_takes_what_the_relay_takes() {
        let long = "x".repeat(65);
        for to in ["osaka", "a.b_c-d@e%f", "X9", &long[..64]] {
            assert!(check_user(to).is_ok(), "{to}");
        }
        for to in ["", "a b", "a/b", "ösaka", "a\u{7f}", "a:b", &long] {
            let Err(ApiError(code, msg)) = check_user(to) else {
                panic!("{to:?} was taken");
            };
            assert_eq!(code, StatusCode::BAD_REQUEST);
            assert!(msg.contains("'.', '_', '-', '@' or '%'"), "{msg}");
        }
    }

    /// Which Host, Origin and Sec-Fetch-Site values pass, and which
    /// methods need the panel header.
    #[test]
    fn check_browser_takes_only_the_panels_own_names() {
        let v4: SocketAddr = "127.0.0.1:4680".parse().unwrap();
        let v6: SocketAddr = "[::1]:4680".parse().unwrap();
        let port80: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let check = |local, method: Method, pairs: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (n, v) in pairs {
                h.append(
                    header::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            check_browser(local, &method, &h).map_err(|ApiError(code, msg)| {
                assert_eq!(code, StatusCode::FORBIDDEN);
                msg
            })
        };
        let get = Method::GET;
        for (local, host) in [
            (v4, "127.0.0.1:4680"),
            (v4, "LOCALHOST:4680"),
            (v4, "[::1]:4680"),
            (v6, "[::1]:4680"),
            (v6, "localhost:4680"),
            (port80, "127.0.0.1"),
            (port80, "localhost:80"),
        ] {
            assert_eq!(
                check(local, get.clone(), &[("host", host)]),
                Ok(()),
                "{host}"
            );
        }
        for (local, host) in [
            (v4, "evil.example:4680"),
            (v4, "127.0.0.1"),
            (v4, "127.0.0.1:4681"),
            (v4, "localhost.:4680"),
            (v4, "127.0.0.2:4680"),
            (v6, "[::2]:4680"),
        ] {
            let e = check(local, get.clone(), &[("host", host)]).unwrap_err();
            assert!(e.contains(host), "{e}");
        }
        assert!(check(v4, get.clone(), &[]).is_err(), "no Host");
        let two = [("host", "127.0.0.1:4680"), ("host", "localhost:4680")];
        assert!(check(v4, get.clone(), &two).is_err(), "two Hosts");

        let host = ("host", "127.0.0.1:4680");
        let cli = (PANEL_HEADER, "1");
        for origin in ["http://127.0.0.1:4680", "http://localhost:4680"] {
            assert_eq!(
                check(v4, Method::POST, &[host, cli, ("origin", origin)]),
                Ok(())
            );
        }
        for origin in [
            "null",
            "http://evil.example",
            "https://127.0.0.1:4680",
            "http://127.0.0.1:8000",
        ] {
            let e = check(v4, Method::POST, &[host, cli, ("origin", origin)]).unwrap_err();
            assert!(e.contains(origin), "{e}");
            assert!(check(v4, get.clone(), &[host, ("origin", origin)]).is_err());
        }
        for (site, ok) in [
            ("same-origin", true),
            ("none", true),
            ("same-site", false),
            ("cross-site", false),
        ] {
            let r = check(v4, Method::POST, &[host, cli, ("sec-fetch-site", site)]);
            assert_eq!(r.is_ok(), ok, "{site}: {r:?}");
        }
        for method in [Method::POST, Method::PUT, Method::DELETE, Method::OPTIONS] {
            let e = check(v4, method.clone(), &[host]).unwrap_err();
            assert!(e.contains(PANEL_HEADER), "{e}");
            let e = check(v4, method.clone(), &[host, (PANEL_HEADER, "0")]).unwrap_err();
            assert!(e.contains(PANEL_HEADER), "{e}");
            assert_eq!(check(v4, method, &[host, cli]), Ok(()));
        }
        assert_eq!(check(v4, Method::HEAD, &[host]), Ok(()));
    }

    #[tokio::test]
    async fn queue_job_answers_400_for_a_bad_document_and_500_for_a_store_failure() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let fine = Resolution::Fine;
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
