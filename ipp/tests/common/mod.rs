//! Shared helpers for the IPP front tests: a front on free loopback ports
//! with its state in a temporary directory, a relay user store with the
//! agents `osaka` and `kyoto`, an HTTP/1.1 (and HTTPS) IPP caller, and
//! request builders and response readers over the `ipp` crate.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use faxgate_config::IppFrontSection;
use faxgate_ipp::message;
use faxgate_ipp::server::{IppFront, WakeRequest};
use faxgate_relay::auth::Authenticator;
use faxgate_relay::store::UserStore;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use ipp::model::DelimiterTag;
use ipp::prelude::*;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The site `osaka`'s agent.
pub const OSAKA: (&str, &str) = ("osaka", "osaka-secret-1");
/// Another site's agent.
pub const KYOTO: (&str, &str) = ("kyoto", "kyoto-secret-2");

/// Output device UUIDs (one per agent process start).
pub const DEVICE_A: &str = "urn:uuid:0b7e5a52-1111-4a1a-8a1a-00000000000a";
/// A second start of the agent.
pub const DEVICE_B: &str = "urn:uuid:0b7e5a52-2222-4b2b-8b2b-00000000000b";

/// Longest any one HTTP exchange may take before the test fails.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(15);

/// The front's config: both listeners on free loopback ports, short
/// waits, and `sites` (TOML `[[sites]]` tables) appended.
pub fn config(notify_wait: &str, agent_lease: &str, sites: &str) -> IppFrontSection {
    let text = format!(
        "listen = \"127.0.0.1:0\"\n\
         listen_tls = \"127.0.0.1:0\"\n\
         notify_wait = \"{notify_wait}\"\n\
         agent_lease = \"{agent_lease}\"\n\
         poll_interval_min = \"1s\"\n\
         {sites}"
    );
    match toml::from_str(&text) {
        Ok(cfg) => cfg,
        Err(e) => panic!("test config does not parse: {e}\n{text}"),
    }
}

/// Two sites, each served by its own agent user.
pub const TWO_SITES: &str = "
[[sites]]
name = \"osaka\"
agent = \"osaka\"

[[sites]]
name = \"kyoto\"
agent = \"kyoto\"
";

/// A running front and what a test needs to talk to it.
pub struct TestFront {
    front: Option<IppFront>,
    /// Plain HTTP (`ipp://`).
    pub plain: SocketAddr,
    /// TLS (`ipps://`).
    pub tls: SocketAddr,
    /// A client config pinned to the front's certificate.
    pub client_tls: Arc<rustls::ClientConfig>,
    /// Wake-up and cancel mail requests the front made.
    pub wake_rx: mpsc::UnboundedReceiver<WakeRequest>,
    /// The state directory (kept by the caller's `TempDir`).
    pub state: PathBuf,
}

/// The relay user store with `osaka` and `kyoto`, cheap Argon2 (64 KiB,
/// one pass) and failure limits no test reaches.
pub fn authenticator(state: &Path) -> Arc<Authenticator> {
    let path = state.join("users.db");
    let fresh = !path.exists();
    let store = Arc::new(UserStore::open(&path, 64, 1).expect("open user store"));
    if fresh {
        for (user, password) in [OSAKA, KYOTO] {
            store.add_user(user, password, &[]).expect("add user");
        }
    }
    Arc::new(Authenticator::new(store, 1000, 1000, Duration::from_secs(60)).expect("authenticator"))
}

impl TestFront {
    /// Starts a front with `cfg` on `state` (reused across restarts).
    pub async fn start(cfg: IppFrontSection, state: &Path) -> Self {
        let identity =
            faxgate_relay::tls::server_identity(None, state).expect("generate TLS identity");
        let (wake_tx, wake_rx) = mpsc::unbounded_channel();
        let front = IppFront::start(
            cfg,
            state,
            authenticator(state),
            Some(Arc::clone(&identity.config)),
            Some(wake_tx),
            CancellationToken::new(),
        )
        .await
        .expect("start the IPP front");
        Self {
            plain: front.addr.expect("plain listener"),
            tls: front.tls_addr.expect("TLS listener"),
            front: Some(front),
            client_tls: faxgate_relay::tls::pinned_client_config(identity.fingerprint),
            wake_rx,
            state: state.to_owned(),
        }
    }

    /// The front itself (for `wake_outcome`).
    pub fn front(&self) -> &IppFront {
        self.front.as_ref().expect("front running")
    }

    /// Stops the front and waits for its tasks.
    pub async fn stop(mut self) {
        if let Some(f) = self.front.take() {
            assert!(
                f.shutdown(Duration::from_secs(10)).await,
                "the front did not stop within 10 s"
            );
        }
    }

    /// The site's URI (the plain one; the front only checks presence).
    pub fn site_uri(&self, site: &str) -> String {
        format!("ipp://127.0.0.1:{}/ipp/print/{site}", self.plain.port())
    }

    /// A request for `op` on `site` as user `user`.
    pub fn req(&self, op: u16, site: &str, user: &str) -> Req {
        Req::new(op, &self.site_uri(site), user)
    }

    /// Sends `req` (plus `doc`) to `/ipp/print/SITE` as a client: plain
    /// HTTP, no credentials. Checks the request-id is echoed.
    pub async fn client(&self, site: &str, req: &Req, doc: &[u8]) -> Ipp {
        let reply = self.send(Via::Plain, site, req, doc, None).await;
        assert_eq!(reply.http, 200, "HTTP status for a client request");
        reply.ipp_for(req)
    }

    /// Sends `req` to `/ipp/print/SITE` as an agent: TLS with Basic
    /// credentials. Expects HTTP 200.
    pub async fn agent(&self, site: &str, creds: (&str, &str), req: &Req) -> Ipp {
        let reply = self.send(Via::Tls, site, req, b"", Some(creds)).await;
        assert_eq!(reply.http, 200, "HTTP status for an agent request");
        reply.ipp_for(req)
    }

    /// Sends `req` (plus `doc`) to `/ipp/print/SITE`.
    pub async fn send(
        &self,
        via: Via,
        site: &str,
        req: &Req,
        doc: &[u8],
        basic: Option<(&str, &str)>,
    ) -> Reply {
        let mut body = req.bytes();
        body.extend_from_slice(doc);
        let addr = self.addr(via);
        let tls = self.tls_for(via);
        post(addr, tls, &format!("/ipp/print/{site}"), body, basic).await
    }

    /// The listener for `via`.
    pub fn addr(&self, via: Via) -> SocketAddr {
        match via {
            Via::Plain => self.plain,
            Via::Tls => self.tls,
        }
    }

    /// The client TLS config for `via`.
    pub fn tls_for(&self, via: Via) -> Option<&Arc<rustls::ClientConfig>> {
        match via {
            Via::Plain => None,
            Via::Tls => Some(&self.client_tls),
        }
    }

    /// Registers (or updates) an output device on `site` with these
    /// printer attributes.
    pub async fn register(
        &self,
        site: &str,
        creds: (&str, &str),
        device: &str,
        printer: Vec<(&str, IppValue)>,
    ) -> Ipp {
        let mut req = self
            .req(
                faxgate_ipp::codes::op::UPDATE_OUTPUT_DEVICE_ATTRIBUTES,
                site,
                creds.0,
            )
            .op("output-device-uuid", message::uri(device));
        for (name, value) in printer {
            req = req.add(DelimiterTag::PrinterAttributes, name, value);
        }
        self.agent(site, creds, &req).await
    }

    /// A client Print-Job of `doc` as `user`; returns the job id.
    pub async fn print(&self, site: &str, user: &str, doc: &[u8]) -> i32 {
        let req = self
            .req(faxgate_ipp::codes::op::PRINT_JOB, site, user)
            .op("job-name", message::name("test page"))
            .op("document-format", message::mime("application/pdf"));
        let resp = self.client(site, &req, doc).await;
        assert_eq!(resp.status(), 0, "Print-Job: {}", resp.message());
        resp.job_int("job-id").expect("Print-Job answers job-id")
    }

    /// A client Get-Job-Attributes of every attribute, as someone other
    /// than the job's owner (who does not see its private attributes).
    pub async fn job(&self, site: &str, id: i32) -> Ipp {
        self.job_as(site, id, "tester").await
    }

    /// A client Get-Job-Attributes of every attribute as `user`, from
    /// 127.0.0.1 (as every client here): the owner when `user` printed it.
    pub async fn job_as(&self, site: &str, id: i32, user: &str) -> Ipp {
        let req = self
            .req(faxgate_ipp::codes::op::GET_JOB_ATTRIBUTES, site, user)
            .op("job-id", IppValue::Integer(id))
            .op("requested-attributes", message::keyword("all"));
        let resp = self.client(site, &req, b"").await;
        assert_eq!(resp.status(), 0, "Get-Job-Attributes: {}", resp.message());
        resp
    }

    /// A client Get-Printer-Attributes of every attribute.
    pub async fn printer(&self, site: &str) -> Ipp {
        let req = self
            .req(
                faxgate_ipp::codes::op::GET_PRINTER_ATTRIBUTES,
                site,
                "tester",
            )
            .op("requested-attributes", message::keyword("all"));
        let resp = self.client(site, &req, b"").await;
        assert_eq!(
            resp.status(),
            0,
            "Get-Printer-Attributes: {}",
            resp.message()
        );
        resp
    }

    /// Waits at most `within` for the next wake-up request.
    pub async fn next_wake(&mut self, within: Duration) -> WakeRequest {
        match tokio::time::timeout(within, self.wake_rx.recv()).await {
            Ok(Some(w)) => w,
            Ok(None) => panic!("the wake-up channel closed"),
            Err(_) => panic!("no wake-up request within {within:?}"),
        }
    }
}

/// Which listener a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// `ipp://`.
    Plain,
    /// `ipps://`.
    Tls,
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status code.
    pub http: u16,
    /// The `WWW-Authenticate` header.
    pub www_authenticate: Option<String>,
    /// The `Content-Type` header.
    pub content_type: Option<String>,
    /// The body.
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as an IPP response.
    pub fn ipp(&self) -> Ipp {
        Ipp::parse(&self.body)
    }

    /// The body as the IPP response to `req`: same request-id.
    pub fn ipp_for(&self, req: &Req) -> Ipp {
        let ipp = self.ipp();
        assert_eq!(
            ipp.header.request_id,
            req.id(),
            "the response echoes the request-id"
        );
        ipp
    }
}

static NEXT_ID: AtomicI32 = AtomicI32::new(1);

/// A request under construction.
pub struct Req(IppRequestResponse);

impl std::fmt::Debug for Req {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Req")
            .field("header", self.0.header())
            .field("attributes", self.0.attributes())
            .finish()
    }
}

impl Req {
    /// `op` on `printer_uri` as `user`, with a fresh request-id.
    pub fn new(op: u16, printer_uri: &str, user: &str) -> Self {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        Self(message::request(op, printer_uri, user, id))
    }

    /// Adds an operation attribute.
    pub fn op(self, name: &str, value: IppValue) -> Self {
        self.add(DelimiterTag::OperationAttributes, name, value)
    }

    /// Adds an attribute to the first group with `tag` (made if needed).
    pub fn add(mut self, tag: DelimiterTag, name: &str, value: IppValue) -> Self {
        self.0
            .attributes_mut()
            .add(tag, message::attribute(name, value));
        self
    }

    /// The request-id.
    pub fn id(&self) -> i32 {
        self.0.header().request_id
    }

    /// The encoded request (header, groups, end tag).
    pub fn bytes(&self) -> Vec<u8> {
        self.0.to_bytes().to_vec()
    }
}

/// A parsed IPP response and whatever followed its attributes.
#[derive(Debug)]
pub struct Ipp {
    /// Version, status and request-id.
    pub header: IppHeader,
    /// The groups.
    pub attrs: IppAttributes,
    /// The bytes after the end-of-attributes tag.
    pub doc: Vec<u8>,
}

impl Ipp {
    /// Parses a response; panics when it does not parse.
    pub fn parse(bytes: &[u8]) -> Self {
        let reader = ipp::reader::IppReader::new(std::io::Cursor::new(bytes.to_vec()));
        let (header, attrs, rest) = match ipp::parser::IppParser::new(reader).parse_parts() {
            Ok(x) => x,
            Err(e) => panic!("the response does not parse ({e}): {bytes:02x?}"),
        };
        let at = rest.into_inner().position() as usize;
        Self {
            header,
            attrs,
            doc: bytes[at..].to_vec(),
        }
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.header.operation_or_status as u16
    }

    /// The `status-message`, or "".
    pub fn message(&self) -> String {
        self.op("status-message")
            .and_then(message::as_str)
            .unwrap_or("")
            .to_owned()
    }

    /// An attribute of the first group with `tag`.
    pub fn get(&self, tag: DelimiterTag, name: &str) -> Option<&IppValue> {
        self.attrs
            .groups_of(tag)
            .next()
            .and_then(|g| g.get(name))
            .map(IppAttribute::value)
    }

    /// An operation attribute.
    pub fn op(&self, name: &str) -> Option<&IppValue> {
        self.get(DelimiterTag::OperationAttributes, name)
    }

    /// A job attribute (first job group).
    pub fn job_attr(&self, name: &str) -> Option<&IppValue> {
        self.get(DelimiterTag::JobAttributes, name)
    }

    /// An integer or enum job attribute.
    pub fn job_int(&self, name: &str) -> Option<i32> {
        self.job_attr(name).and_then(message::as_int)
    }

    /// A string job attribute.
    pub fn job_str(&self, name: &str) -> Option<String> {
        self.job_attr(name)
            .and_then(message::as_str)
            .map(str::to_owned)
    }

    /// All string values of a job attribute.
    pub fn job_strings(&self, name: &str) -> Vec<String> {
        message::strings(self.job_attr(name))
    }

    /// All string values of a printer attribute.
    pub fn printer_strings(&self, name: &str) -> Vec<String> {
        message::strings(self.get(DelimiterTag::PrinterAttributes, name))
    }

    /// An integer or enum printer attribute.
    pub fn printer_int(&self, name: &str) -> Option<i32> {
        self.get(DelimiterTag::PrinterAttributes, name)
            .and_then(message::as_int)
    }

    /// The groups with `tag`.
    pub fn groups(&self, tag: DelimiterTag) -> Vec<&IppAttributeGroup> {
        self.attrs.groups_of(tag).collect()
    }
}

/// POSTs `body` as `application/ipp` to `path` over HTTP/1.1 (TLS when
/// `tls` is given), with Basic credentials when given. Returns the HTTP
/// status and body.
pub async fn post(
    addr: SocketAddr,
    tls: Option<&Arc<rustls::ClientConfig>>,
    path: &str,
    body: Vec<u8>,
    basic: Option<(&str, &str)>,
) -> Reply {
    request(
        addr,
        tls,
        "POST",
        path,
        Some("application/ipp"),
        body,
        basic,
    )
    .await
}

/// Like [`post`], but a connection the front drops without answering is
/// an `Err` with the reason instead of a panic.
pub async fn try_post(addr: SocketAddr, path: &str, body: Vec<u8>) -> Result<Reply, String> {
    post_via(None, addr, path, body).await
}

/// POSTs `body` as `application/ipp` to `path` over plain HTTP, without
/// credentials, from the local address `from`: on Linux every 127.0.0.0/8
/// address is loopback, so 127.0.0.2 is another client. Like
/// [`try_post`], a connection the front drops is an `Err`.
pub async fn post_from(
    from: std::net::IpAddr,
    addr: SocketAddr,
    path: &str,
    body: Vec<u8>,
) -> Result<Reply, String> {
    post_via(Some(from), addr, path, body).await
}

/// [`try_post`] from the local address `from`, or any.
async fn post_via(
    from: Option<std::net::IpAddr>,
    addr: SocketAddr,
    path: &str,
    body: Vec<u8>,
) -> Result<Reply, String> {
    let req = hyper::Request::post(path)
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::CONTENT_TYPE, "application/ipp")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let tcp = match from {
            None => TcpStream::connect(addr).await.map_err(|e| e.to_string())?,
            Some(from) => {
                let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
                socket
                    .bind(SocketAddr::new(from, 0))
                    .map_err(|e| format!("bind {from}: {e}"))?;
                socket.connect(addr).await.map_err(|e| e.to_string())?
            }
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
        let driver = tokio::spawn(conn);
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let reply = read_reply(resp).await;
        driver.abort();
        reply
    };
    tokio::time::timeout(EXCHANGE_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer within {EXCHANGE_TIMEOUT:?}"))?
}

/// One HTTP/1.1 exchange on a fresh connection.
pub async fn request(
    addr: SocketAddr,
    tls: Option<&Arc<rustls::ClientConfig>>,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
    basic: Option<(&str, &str)>,
) -> Reply {
    use base64::Engine as _;
    let mut builder = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, addr.to_string());
    if let Some(ct) = content_type {
        builder = builder.header(hyper::header::CONTENT_TYPE, ct);
    }
    if let Some((user, password)) = basic {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        builder = builder.header(hyper::header::AUTHORIZATION, format!("Basic {token}"));
    }
    let req = builder
        .body(Full::new(Bytes::from(body)))
        .expect("a valid HTTP request");
    let exchange = async {
        let tcp = TcpStream::connect(addr)
            .await
            .expect("connect to the front");
        match tls {
            None => exchange(tcp, req).await,
            Some(cfg) => {
                let connector = tokio_rustls::TlsConnector::from(Arc::clone(cfg));
                let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
                let stream = connector.connect(name, tcp).await.expect("TLS handshake");
                exchange(stream, req).await
            }
        }
    };
    match tokio::time::timeout(EXCHANGE_TIMEOUT, exchange).await {
        Ok(reply) => reply,
        Err(_) => panic!("no answer to {method} {path} within {EXCHANGE_TIMEOUT:?}"),
    }
}

async fn exchange<S>(io: S, req: hyper::Request<Full<Bytes>>) -> Reply
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .expect("HTTP handshake");
    let driver = tokio::spawn(conn);
    let resp = sender.send_request(req).await.expect("HTTP exchange");
    let reply = read_reply(resp).await.expect("HTTP body");
    driver.abort();
    reply
}

/// Reads a response whole: status, the headers tests look at, body.
pub async fn read_reply(resp: hyper::Response<hyper::body::Incoming>) -> Result<Reply, String> {
    let header = |h: hyper::header::HeaderName| {
        resp.headers()
            .get(h)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let http = resp.status().as_u16();
    let www_authenticate = header(hyper::header::WWW_AUTHENTICATE);
    let content_type = header(hyper::header::CONTENT_TYPE);
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes()
        .to_vec();
    Ok(Reply {
        http,
        www_authenticate,
        content_type,
        body,
    })
}

/// Polls `check` every 20 ms until it returns Some, at most `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("{what}: not within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A PDF-looking document with bytes of every value, so a change shows.
pub fn pdf(len: usize) -> Vec<u8> {
    let mut doc = b"%PDF-1.7\n".to_vec();
    doc.extend((0..len).map(|i| (i * 31 % 251) as u8));
    doc.extend_from_slice(b"\n%%EOF\n");
    doc
}
