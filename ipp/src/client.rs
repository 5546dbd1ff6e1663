//! An IPP client over HTTP/1.1 (`ipp://`, `http://`) or HTTPS (`ipps://`,
//! `https://`), for the print agent: it talks INFRA to the relay's front
//! and plain RFC 8011 to the real printer behind it.
//!
//! - Connections are kept alive and reused: a long-polling agent makes a
//!   request every few seconds, and a TLS handshake per request would cost
//!   more than the request. A few idle connections are pooled, so a long
//!   poll in flight does not hold up a status report.
//! - A request on a reused connection that the server had already closed
//!   is sent again once on a fresh connection, when that is safe: the
//!   request never left, or the operation can be repeated and its
//!   document can be read again.
//! - Documents are streamed both ways: [`Document`] from a file (with a
//!   `Content-Length`) or any reader (chunked), and
//!   [`IppClient::call_streaming`] hands back a reader over the bytes that
//!   follow the response's attributes (Fetch-Document).
//! - HTTP Basic credentials are sent with every request; the password is
//!   never logged or printed.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use faxgate_config::Secret;
use futures_util::{Stream, StreamExt as _};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyDataStream, BodyExt as _, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use ipp::model::{DelimiterTag, StatusCode};
use ipp::parser::AsyncIppParser;
use ipp::prelude::*;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_util::compat::TokioAsyncReadCompatExt as _;
use tokio_util::io::{ReaderStream, StreamReader};

use crate::codes::{op, status};
use crate::message;

/// The IPP port (RFC 8010 section 8.1) for every scheme unless the URI
/// names another.
pub const DEFAULT_PORT: u16 = 631;
/// Default deadline for a TCP connection plus the TLS handshake.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default deadline for one exchange, from sending the request to the
/// end of the response's attributes.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// The largest response [`IppClient::call`] reads (attributes only; a
/// document comes through [`IppClient::call_streaming`]).
pub const MAX_RESPONSE: usize = 16 << 20;
/// Idle connections kept per client.
const MAX_IDLE: usize = 4;
/// Chunk size when streaming a document out.
const CHUNK: usize = 64 * 1024;

/// Why an IPP exchange failed. Each variant names the server (as
/// `host:port` or the URI) and, once a request was built, the operation.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URI or the client's settings cannot work.
    #[error("IPP URI {uri:?}: {reason}")]
    BadUri {
        /// The URI as given.
        uri: String,
        /// What is wrong.
        reason: String,
    },
    /// No TCP connection (refused, no route, name not found, or no
    /// answer within the connect deadline).
    #[error("cannot connect to {addr}: {source}")]
    Unreachable {
        /// `host:port`.
        addr: String,
        /// The socket error (`TimedOut` for the deadline).
        #[source]
        source: io::Error,
    },
    /// The TLS handshake failed (certificate not trusted, pin mismatch,
    /// protocol error).
    #[error("TLS handshake with {addr} failed: {source}")]
    Tls {
        /// `host:port`.
        addr: String,
        /// The handshake error.
        #[source]
        source: io::Error,
    },
    /// The connection broke during an exchange.
    #[error("{operation} to {addr}: {reason}")]
    Io {
        /// `host:port`.
        addr: String,
        /// The IPP operation (or `GET`).
        operation: &'static str,
        /// What the HTTP layer reported.
        reason: String,
    },
    /// No answer within the request deadline.
    #[error("{operation} to {addr}: no answer within {after:?}")]
    Timeout {
        /// `host:port`.
        addr: String,
        /// The IPP operation (or `GET`).
        operation: &'static str,
        /// The deadline.
        after: Duration,
    },
    /// HTTP 401: the credentials are missing or wrong.
    #[error("{operation} to {uri}: not authenticated (HTTP 401){}", user.as_deref().map(|u| format!("; user {u:?} was refused")).unwrap_or_else(|| "; no credentials configured".into()))]
    NotAuthenticated {
        /// The target URI.
        uri: String,
        /// The IPP operation.
        operation: &'static str,
        /// The user sent, if any (never the password).
        user: Option<String>,
    },
    /// Any other HTTP status than 200 (and 401).
    #[error("{operation} to {uri}: HTTP {status}")]
    Http {
        /// The target URI.
        uri: String,
        /// The IPP operation (or `GET`).
        operation: &'static str,
        /// The HTTP status code.
        status: u16,
    },
    /// The body was not an IPP response.
    #[error("{operation} to {uri}: unparsable response: {reason}")]
    Unparsable {
        /// The target URI.
        uri: String,
        /// The IPP operation.
        operation: &'static str,
        /// What the parser said.
        reason: String,
    },
    /// The server answered with an IPP error status.
    #[error("{operation} to {uri}: {name} (0x{status:04x}){}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Ipp {
        /// The target URI.
        uri: String,
        /// The IPP operation.
        operation: &'static str,
        /// The status code.
        status: u16,
        /// Its IANA keyword, e.g. `client-error-not-found`.
        name: &'static str,
        /// The response's `status-message`, if any.
        message: Option<String>,
        /// The attributes the server named as unsupported (its
        /// unsupported-attributes group).
        unsupported: Vec<String>,
    },
    /// The local document could not be read.
    #[error("document {path}: {source}")]
    Document {
        /// The file (or `<reader>`).
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl ClientError {
    /// The IPP status code, for [`ClientError::Ipp`].
    pub fn ipp_status(&self) -> Option<u16> {
        match self {
            ClientError::Ipp { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The attributes an IPP error named as unsupported.
    pub fn unsupported(&self) -> &[String] {
        match self {
            ClientError::Ipp { unsupported, .. } => unsupported,
            _ => &[],
        }
    }

    /// Whether trying again later may work without anyone changing
    /// anything: the server was unreachable, slow, broke the connection,
    /// answered 5xx, or an IPP server-error status such as busy or
    /// temporary-error.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Unreachable { .. }
            | ClientError::Io { .. }
            | ClientError::Timeout { .. } => true,
            ClientError::Http { status, .. } => *status >= 500 || *status == 408 || *status == 429,
            ClientError::Ipp { status, .. } => {
                matches!(
                    *status,
                    status::SERVICE_UNAVAILABLE
                        | status::TEMPORARY_ERROR
                        | status::NOT_ACCEPTING_JOBS
                        | status::BUSY
                        | status::DEVICE_ERROR
                        | status::INTERNAL_ERROR
                        | status::TIMEOUT
                )
            }
            _ => false,
        }
    }
}

/// `resp` when its status is a success; otherwise the [`ClientError::Ipp`]
/// that says why (status, `status-message`, unsupported attributes), for
/// `operation` to `uri`. Public for callers that send over a transport
/// of their own and still want this client's errors.
pub fn check_status(
    uri: &str,
    operation: &'static str,
    resp: IppRequestResponse,
) -> Result<IppRequestResponse, ClientError> {
    let code = resp.header().operation_or_status as u16;
    if status::is_success(code) {
        return Ok(resp);
    }
    Err(ClientError::Ipp {
        uri: uri.to_owned(),
        operation,
        status: code,
        name: status_name(code),
        message: message::op_attr(&resp, "status-message")
            .and_then(message::as_str)
            .map(str::to_owned),
        unsupported: resp
            .attributes()
            .groups_of(DelimiterTag::UnsupportedAttributes)
            .flat_map(|g| g.attributes().iter().map(|a| a.name().to_string()))
            .collect(),
    })
}

/// The IANA keyword of an IPP status code (RFC 8011 section 4.1.6 and the
/// IPP registry), for logs and errors.
pub fn status_name(code: u16) -> &'static str {
    match code {
        status::OK => "successful-ok",
        status::OK_IGNORED_OR_SUBSTITUTED => "successful-ok-ignored-or-substituted-attributes",
        0x0002 => "successful-ok-conflicting-attributes",
        0x0003 => "successful-ok-ignored-subscriptions",
        0x0005 => "successful-ok-too-many-events",
        status::OK_EVENTS_COMPLETE => "successful-ok-events-complete",
        status::BAD_REQUEST => "client-error-bad-request",
        status::FORBIDDEN => "client-error-forbidden",
        status::NOT_AUTHENTICATED => "client-error-not-authenticated",
        status::NOT_AUTHORIZED => "client-error-not-authorized",
        status::NOT_POSSIBLE => "client-error-not-possible",
        status::TIMEOUT => "client-error-timeout",
        status::NOT_FOUND => "client-error-not-found",
        status::GONE => "client-error-gone",
        status::REQUEST_ENTITY_TOO_LARGE => "client-error-request-entity-too-large",
        status::REQUEST_VALUE_TOO_LONG => "client-error-request-value-too-long",
        status::DOCUMENT_FORMAT_NOT_SUPPORTED => "client-error-document-format-not-supported",
        status::ATTRIBUTES_OR_VALUES_NOT_SUPPORTED => {
            "client-error-attributes-or-values-not-supported"
        }
        status::URI_SCHEME_NOT_SUPPORTED => "client-error-uri-scheme-not-supported",
        status::CHARSET_NOT_SUPPORTED => "client-error-charset-not-supported",
        status::CONFLICTING_ATTRIBUTES => "client-error-conflicting-attributes",
        status::COMPRESSION_NOT_SUPPORTED => "client-error-compression-not-supported",
        status::COMPRESSION_ERROR => "client-error-compression-error",
        status::DOCUMENT_FORMAT_ERROR => "client-error-document-format-error",
        status::DOCUMENT_ACCESS_ERROR => "client-error-document-access-error",
        status::NOT_FETCHABLE => "client-error-not-fetchable",
        status::INTERNAL_ERROR => "server-error-internal-error",
        status::OPERATION_NOT_SUPPORTED => "server-error-operation-not-supported",
        status::SERVICE_UNAVAILABLE => "server-error-service-unavailable",
        status::VERSION_NOT_SUPPORTED => "server-error-version-not-supported",
        status::DEVICE_ERROR => "server-error-device-error",
        status::TEMPORARY_ERROR => "server-error-temporary-error",
        status::NOT_ACCEPTING_JOBS => "server-error-not-accepting-jobs",
        status::BUSY => "server-error-busy",
        status::JOB_CANCELED => "server-error-job-canceled",
        status::MULTIPLE_DOCUMENT_JOBS_NOT_SUPPORTED => {
            "server-error-multiple-document-jobs-not-supported"
        }
        c if c < 0x0100 => "successful-ok",
        c if (0x0400..0x0500).contains(&c) => "client-error",
        c if (0x0500..0x0600).contains(&c) => "server-error",
        _ => "unknown-status",
    }
}

/// A document sent after a request's attributes.
pub enum Document {
    /// Bytes in memory (sent with a `Content-Length`).
    Bytes(Bytes),
    /// A file, streamed with a `Content-Length`. It is opened when the
    /// request is sent, and again if the request must be repeated.
    File(PathBuf),
    /// Any reader, read once: with `length` it is sent with a
    /// `Content-Length` (and must yield exactly that many bytes),
    /// without it chunked.
    Reader {
        /// The bytes.
        reader: Box<dyn AsyncRead + Send + Unpin>,
        /// How many bytes it yields, if known.
        length: Option<u64>,
    },
}

impl std::fmt::Debug for Document {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Document::Bytes(b) => write!(f, "Document::Bytes({} bytes)", b.len()),
            Document::File(p) => write!(f, "Document::File({})", p.display()),
            Document::Reader { length, .. } => write!(f, "Document::Reader({length:?} bytes)"),
        }
    }
}

impl Document {
    /// Whether the document can be read again for a repeated request.
    fn replayable(&self) -> bool {
        !matches!(self, Document::Reader { .. })
    }
}

/// The connection to the server: plain TCP or TLS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

type Body = UnsyncBoxBody<Bytes, io::Error>;
type Sender = SendRequest<Body>;

/// Builds an [`IppClient`].
#[derive(Debug)]
pub struct IppClientBuilder {
    uri: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    server_name: Option<String>,
    user: Option<String>,
    password: Option<Secret<String>>,
    connect_timeout: Duration,
    request_timeout: Duration,
}

impl IppClientBuilder {
    /// The TLS settings for `ipps://` and `https://` (required there,
    /// ignored for plain schemes), e.g. from
    /// `faxgate_relay::tls::pinned_client_config` or `ca_client_config`.
    pub fn tls(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    /// The name sent in SNI and verified, when it is not the URI's host.
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// HTTP Basic credentials sent with every request.
    pub fn basic_auth(mut self, user: impl Into<String>, password: Secret<String>) -> Self {
        self.user = Some(user.into());
        self.password = Some(password);
        self
    }

    /// The deadline for TCP connect plus the TLS handshake.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The default deadline for one exchange.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Checks the URI and settings; nothing is sent yet.
    pub fn build(self) -> Result<IppClient, ClientError> {
        let target = Target::parse(&self.uri)?;
        let bad = |reason: &str| ClientError::BadUri {
            uri: self.uri.clone(),
            reason: reason.to_owned(),
        };
        let tls = if target.secure {
            let config = self
                .tls
                .ok_or_else(|| bad("ipps:// and https:// need a TLS configuration"))?;
            let name = self.server_name.as_deref().unwrap_or(&target.host);
            let name = faxgate_relay::tls::server_name(name)
                .map_err(|e| bad(&format!("TLS server name: {e}")))?;
            Some((TlsConnector::from(config), name))
        } else {
            None
        };
        let authorization = match (&self.user, &self.password) {
            (Some(user), Some(password)) => {
                if user.contains(':') {
                    return Err(bad("a Basic user name cannot contain `:`"));
                }
                let raw = format!("{user}:{}", password.expose());
                let mut value = hyper::header::HeaderValue::try_from(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(raw)
                ))
                .map_err(|_| bad("the credentials cannot be sent in an HTTP header"))?;
                value.set_sensitive(true);
                Some(value)
            }
            _ => None,
        };
        Ok(IppClient {
            inner: Arc::new(Inner {
                uri: self.uri,
                target,
                tls,
                user: self.user,
                authorization,
                connect_timeout: self.connect_timeout,
                request_timeout: self.request_timeout,
                idle: Mutex::new(Vec::new()),
                next_id: AtomicI32::new(1),
            }),
        })
    }
}

/// An IPP client for one printer URI. Cloning is cheap and clones share
/// the connection pool and request-id sequence.
#[derive(Clone)]
pub struct IppClient {
    inner: Arc<Inner>,
}

struct Inner {
    uri: String,
    target: Target,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    user: Option<String>,
    /// `Basic ...`, marked sensitive; never printed.
    authorization: Option<hyper::header::HeaderValue>,
    connect_timeout: Duration,
    request_timeout: Duration,
    idle: Mutex<Vec<Sender>>,
    next_id: AtomicI32,
}

impl std::fmt::Debug for IppClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IppClient")
            .field("uri", &self.inner.uri)
            .field("tls", &self.inner.tls.is_some())
            .field("user", &self.inner.user)
            .field(
                "password",
                &self.inner.authorization.as_ref().map(|_| "MASKED"),
            )
            .finish()
    }
}

/// Where the client connects, from the URI.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    secure: bool,
    host: String,
    port: u16,
    /// The request target, percent-encoded where needed.
    path: String,
}

impl Target {
    /// Parses `scheme://host[:port]/path` leniently: a `%` that starts no
    /// escape (the seed's `account%domain` site names) is sent as `%25`.
    fn parse(uri: &str) -> Result<Target, ClientError> {
        let bad = |reason: &str| ClientError::BadUri {
            uri: uri.to_owned(),
            reason: reason.to_owned(),
        };
        let (scheme, rest) = uri
            .split_once("://")
            .ok_or_else(|| bad("not a scheme://host/path URI"))?;
        let secure = match scheme.to_ascii_lowercase().as_str() {
            "ipp" | "http" => false,
            "ipps" | "https" => true,
            _ => return Err(bad("the scheme must be ipp, ipps, http or https")),
        };
        let (authority, path) = match rest.find(['/', '?', '#']) {
            Some(i) => rest.split_at(i),
            None => (rest, "/"),
        };
        if authority.contains('@') {
            return Err(bad(
                "credentials in the URI are not supported; configure them apart",
            ));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("unclosed [ in the host"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(bad("junk after the IPv6 host")),
            };
            (host, port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad("the port must be 1..=65535"))?,
        };
        let path = path.split('#').next().unwrap_or("/");
        let path = if path.starts_with('/') {
            path.to_owned()
        } else {
            format!("/{path}")
        };
        Ok(Target {
            secure,
            host: host.to_owned(),
            port,
            path: encode_path(&path),
        })
    }

    fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Percent-encodes what may not stand in an HTTP request target: a `%`
/// that starts no escape, spaces, controls and non-ASCII bytes.
fn encode_path(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    for (i, &b) in bytes.iter().enumerate() {
        let escape_follows = bytes.len() > i + 2
            && bytes[i + 1].is_ascii_hexdigit()
            && bytes[i + 2].is_ascii_hexdigit();
        match b {
            b'%' if escape_follows => out.push('%'),
            b'%' => out.push_str("%25"),
            b'!' | b'$' | b'&'..=b';' | b'=' | b'?'..=b'Z' | b'_' | b'a'..=b'z' | b'~' => {
                out.push(char::from(b));
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Operations a server may see twice without harm; only these are sent
/// again after the connection broke under a request that had left.
fn repeatable(operation: u16) -> bool {
    !matches!(
        operation,
        op::PRINT_JOB
            | op::PRINT_URI
            | op::CREATE_JOB
            | op::SEND_DOCUMENT
            | op::SEND_URI
            | op::CREATE_PRINTER_SUBSCRIPTIONS
    )
}

impl IppClient {
    /// Starts building a client for `uri` (`ipp://`, `ipps://`, `http://`
    /// or `https://`; port 631 unless given).
    pub fn builder(uri: impl Into<String>) -> IppClientBuilder {
        IppClientBuilder {
            uri: uri.into(),
            tls: None,
            server_name: None,
            user: None,
            password: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }

    /// The URI this client targets (what goes in `printer-uri`).
    pub fn uri(&self) -> &str {
        &self.inner.uri
    }

    /// `host:port`, for logs.
    pub fn addr(&self) -> String {
        self.inner.target.addr()
    }

    /// The user of the Basic credentials, if any.
    pub fn user(&self) -> Option<&str> {
        self.inner.user.as_deref()
    }

    /// The default request deadline.
    pub fn request_timeout(&self) -> Duration {
        self.inner.request_timeout
    }

    /// Sends `req` (its request-id replaced by the client's next one) with
    /// an optional document, and returns the response. An HTTP or IPP
    /// error status is an error; successful-ok-* statuses are not.
    pub async fn call(
        &self,
        req: IppRequestResponse,
        document: Option<Document>,
    ) -> Result<IppRequestResponse, ClientError> {
        self.call_timeout(req, document, self.inner.request_timeout)
            .await
    }

    /// [`IppClient::call`] with its own deadline (a long poll needs longer
    /// than the server's wait).
    pub async fn call_timeout(
        &self,
        req: IppRequestResponse,
        document: Option<Document>,
        timeout: Duration,
    ) -> Result<IppRequestResponse, ClientError> {
        let operation = req.header().operation_or_status as u16;
        let name = op::name(operation);
        let addr = self.addr();
        let work = async {
            let (resp, sender) = self.exchange(req, document).await?;
            let bytes = Limited::new(resp.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| ClientError::Io {
                    addr: addr.clone(),
                    operation: name,
                    reason: format!("reading the response: {e}"),
                })?
                .to_bytes();
            self.inner.put_back(sender);
            message::check_before_parse(&bytes).map_err(|r| self.unparsable(name, &r))?;
            let resp = AsyncIppParser::new(futures_util::io::Cursor::new(bytes))
                .parse()
                .await
                .map_err(|e| self.unparsable(name, &e))?;
            self.check_status(name, resp)
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| ClientError::Timeout {
                addr: self.addr(),
                operation: name,
                after: timeout,
            })?
    }

    /// Sends `req` and returns the response's attributes plus a reader
    /// over the bytes that follow them (Fetch-Document's document). The
    /// deadline covers the exchange up to the end of the attributes; after
    /// that each read must make progress within the request deadline. The
    /// connection is reused once the reader has reached its end.
    pub async fn call_streaming(
        &self,
        req: IppRequestResponse,
    ) -> Result<(IppRequestResponse, DocumentReader), ClientError> {
        let operation = req.header().operation_or_status as u16;
        let name = op::name(operation);
        let timeout = self.inner.request_timeout;
        let work = async {
            let (resp, sender) = self.exchange(req, None).await?;
            let stream: DataStream = Box::pin(
                BodyDataStream::new(resp.into_body()).map(|r| r.map_err(io::Error::other)),
            );
            let parser = AsyncIppParser::new(StreamReader::new(stream).compat());
            let (header, attributes, rest) = parser.parse_parts().await.map_err(|e| match e {
                ipp::parser::IppParseError::IoError(io) => ClientError::Io {
                    addr: self.addr(),
                    operation: name,
                    reason: format!("reading the response: {io}"),
                },
                other => self.unparsable(name, &other),
            })?;
            let mut head = message::response(header.version, header.request_id, 0, None);
            *head.header_mut() = header;
            *head.attributes_mut() = attributes;
            let reader = DocumentReader {
                inner: rest.into_inner().into_inner(),
                sender: Some(sender),
                client: Arc::clone(&self.inner),
                idle: timeout,
                deadline: Box::pin(tokio::time::sleep(timeout)),
            };
            Ok((head, reader))
        };
        let (head, reader) =
            tokio::time::timeout(timeout, work)
                .await
                .map_err(|_| ClientError::Timeout {
                    addr: self.addr(),
                    operation: name,
                    after: timeout,
                })??;
        let head = self.check_status(name, head)?;
        Ok((head, reader))
    }

    /// `GET path` on the same server (the front's description document),
    /// without credentials. Returns the body of a 200 answer.
    pub async fn get(&self, path: &str, max: usize) -> Result<Bytes, ClientError> {
        let addr = self.addr();
        let timeout = self.inner.request_timeout;
        let work = async {
            let (mut sender, _) = self.inner.checkout().await?;
            let request = hyper::Request::get(encode_path(path))
                .header(hyper::header::HOST, self.inner.host_header())
                .header(hyper::header::USER_AGENT, user_agent())
                .body(empty_body())
                .map_err(|e| ClientError::BadUri {
                    uri: path.to_owned(),
                    reason: e.to_string(),
                })?;
            let resp = sender
                .send_request(request)
                .await
                .map_err(|e| ClientError::Io {
                    addr: addr.clone(),
                    operation: "GET",
                    reason: hyper_reason(&e),
                })?;
            if resp.status() != hyper::StatusCode::OK {
                return Err(ClientError::Http {
                    uri: path.to_owned(),
                    operation: "GET",
                    status: resp.status().as_u16(),
                });
            }
            let bytes = Limited::new(resp.into_body(), max)
                .collect()
                .await
                .map_err(|e| ClientError::Io {
                    addr: addr.clone(),
                    operation: "GET",
                    reason: format!("reading the body: {e}"),
                })?
                .to_bytes();
            self.inner.put_back(sender);
            Ok(bytes)
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| ClientError::Timeout {
                addr: self.addr(),
                operation: "GET",
                after: timeout,
            })?
    }

    /// One HTTP exchange up to the response head, sending the request
    /// again once on a fresh connection when a reused one turns out to be
    /// closed and that is safe. Returns the response and its connection
    /// (to be put back once the body is read).
    async fn exchange(
        &self,
        mut req: IppRequestResponse,
        mut document: Option<Document>,
    ) -> Result<(hyper::Response<Incoming>, Sender), ClientError> {
        let operation = req.header().operation_or_status as u16;
        let name = op::name(operation);
        req.header_mut().request_id = self.inner.next_request_id();
        let head = req.to_bytes();
        let addr = self.addr();
        tracing::trace!(operation = name, bytes = head.len(), server = %addr, "IPP request.");
        let mut retried = false;
        let mut pending: Option<hyper::Request<Body>> = None;
        loop {
            let (mut sender, reused) = self.inner.checkout().await?;
            let request = match pending.take() {
                Some(r) => r,
                None => self.inner.request(&head, document.as_mut()).await?,
            };
            match sender.try_send_request(request).await {
                Ok(resp) => return self.check_http(name, resp).map(|r| (r, sender)),
                Err(mut e) => {
                    let unsent = e.take_message();
                    let error = e.into_error();
                    let can_repeat =
                        repeatable(operation) && document.as_ref().is_none_or(Document::replayable);
                    if reused && !retried && (unsent.is_some() || can_repeat) {
                        tracing::debug!(operation = name, server = %addr, error = %hyper_reason(&error), "Kept-alive connection was closed; sending again on a new one.");
                        retried = true;
                        pending = unsent;
                        continue;
                    }
                    return Err(ClientError::Io {
                        addr,
                        operation: name,
                        reason: hyper_reason(&error),
                    });
                }
            }
        }
    }

    fn check_http(
        &self,
        operation: &'static str,
        resp: hyper::Response<Incoming>,
    ) -> Result<hyper::Response<Incoming>, ClientError> {
        match resp.status() {
            hyper::StatusCode::OK => Ok(resp),
            hyper::StatusCode::UNAUTHORIZED => Err(ClientError::NotAuthenticated {
                uri: self.inner.uri.clone(),
                operation,
                user: self.inner.user.clone(),
            }),
            other => Err(ClientError::Http {
                uri: self.inner.uri.clone(),
                operation,
                status: other.as_u16(),
            }),
        }
    }

    fn check_status(
        &self,
        operation: &'static str,
        resp: IppRequestResponse,
    ) -> Result<IppRequestResponse, ClientError> {
        check_status(&self.inner.uri, operation, resp)
    }

    fn unparsable(&self, operation: &'static str, e: &dyn std::fmt::Display) -> ClientError {
        ClientError::Unparsable {
            uri: self.inner.uri.clone(),
            operation,
            reason: e.to_string(),
        }
    }
}

impl Inner {
    fn next_request_id(&self) -> i32 {
        // 1..=i32::MAX, wrapping back to 1 (RFC 8011 section 4.1.2).
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if id <= 0 {
            self.next_id.store(2, Ordering::Relaxed);
            1
        } else {
            id
        }
    }

    fn host_header(&self) -> String {
        let t = &self.target;
        let default = DEFAULT_PORT;
        if t.port == default {
            if t.host.contains(':') {
                format!("[{}]", t.host)
            } else {
                t.host.clone()
            }
        } else {
            t.addr()
        }
    }

    /// A POST of the IPP head plus the document.
    async fn request(
        &self,
        head: &Bytes,
        document: Option<&mut Document>,
    ) -> Result<hyper::Request<Body>, ClientError> {
        let (reader, length): (Option<Box<dyn AsyncRead + Send + Unpin>>, Option<u64>) =
            match document {
                None => (None, Some(0)),
                Some(Document::Bytes(b)) => (
                    Some(Box::new(io::Cursor::new(b.clone()))),
                    Some(b.len() as u64),
                ),
                Some(Document::File(path)) => {
                    let doc_err = |source| ClientError::Document {
                        path: path.clone(),
                        source,
                    };
                    let file = tokio::fs::File::open(&*path).await.map_err(doc_err)?;
                    let len = file.metadata().await.map_err(doc_err)?.len();
                    (Some(Box::new(file)), Some(len))
                }
                Some(Document::Reader { reader, length }) => {
                    let taken = std::mem::replace(reader, Box::new(tokio::io::empty()));
                    (Some(taken), *length)
                }
            };
        let first = futures_util::stream::once(std::future::ready(Ok::<_, io::Error>(
            Frame::data(head.clone()),
        )));
        let body: Body = match reader {
            None => StreamBody::new(first).boxed_unsync(),
            Some(r) => StreamBody::new(
                first.chain(ReaderStream::with_capacity(r, CHUNK).map(|c| c.map(Frame::data))),
            )
            .boxed_unsync(),
        };
        let mut builder = hyper::Request::post(self.target.path.as_str())
            .header(hyper::header::HOST, self.host_header())
            .header(hyper::header::CONTENT_TYPE, "application/ipp")
            .header(hyper::header::USER_AGENT, user_agent());
        if let Some(len) = length {
            builder = builder.header(hyper::header::CONTENT_LENGTH, head.len() as u64 + len);
        }
        if let Some(auth) = &self.authorization {
            builder = builder.header(hyper::header::AUTHORIZATION, auth.clone());
        }
        builder.body(body).map_err(|e| ClientError::BadUri {
            uri: self.uri.clone(),
            reason: format!("cannot build the HTTP request: {e}"),
        })
    }

    /// An idle connection that is still open, or a new one. The flag says
    /// whether it was reused.
    async fn checkout(&self) -> Result<(Sender, bool), ClientError> {
        loop {
            let candidate = match self.idle.lock() {
                Ok(mut idle) => idle.pop(),
                Err(poisoned) => poisoned.into_inner().pop(),
            };
            let Some(mut sender) = candidate else { break };
            if sender.is_closed() {
                continue;
            }
            if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(1), sender.ready()).await {
                return Ok((sender, true));
            }
        }
        Ok((self.connect().await?, false))
    }

    /// Returns a connection whose response has been read in full.
    fn put_back(&self, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = match self.idle.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if idle.len() < MAX_IDLE {
            idle.push(sender);
        }
    }

    async fn connect(&self) -> Result<Sender, ClientError> {
        let addr = self.target.addr();
        let connect = async {
            let tcp = TcpStream::connect((self.target.host.as_str(), self.target.port))
                .await
                .map_err(|source| ClientError::Unreachable {
                    addr: addr.clone(),
                    source,
                })?;
            let _ = tcp.set_nodelay(true);
            let io: Box<dyn Io> = match &self.tls {
                None => Box::new(tcp),
                Some((connector, name)) => Box::new(
                    connector
                        .connect(name.clone(), tcp)
                        .await
                        .map_err(|source| ClientError::Tls {
                            addr: addr.clone(),
                            source,
                        })?,
                ),
            };
            hyper::client::conn::http1::handshake::<_, Body>(TokioIo::new(io))
                .await
                .map_err(|e| ClientError::Io {
                    addr: addr.clone(),
                    operation: "HTTP handshake",
                    reason: hyper_reason(&e),
                })
        };
        let (sender, conn) = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| ClientError::Unreachable {
                addr: addr.clone(),
                source: io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no connection within {:?}", self.connect_timeout),
                ),
            })??;
        // The connection task ends when every sender is dropped or the
        // server closes; it owns nothing else.
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(server = %addr, error = %hyper_reason(&e), "IPP connection ended with an error.");
            }
        });
        Ok(sender)
    }
}

fn user_agent() -> &'static str {
    concat!("faxgate/", env!("CARGO_PKG_VERSION"))
}

fn empty_body() -> Body {
    http_body_util::Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A hyper error with its causes, e.g. `connection error: Connection reset
/// by peer`.
fn hyper_reason(e: &hyper::Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

type DataStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// The bytes after a response's attributes (a fetched document). Reaching
/// the end returns the connection to the client's pool; dropping it
/// earlier closes the connection.
pub struct DocumentReader {
    inner: StreamReader<DataStream, Bytes>,
    sender: Option<Sender>,
    client: Arc<Inner>,
    idle: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl std::fmt::Debug for DocumentReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DocumentReader")
            .field("server", &self.client.target.addr())
            .finish()
    }
}

impl AsyncRead for DocumentReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() == before {
                    // End of the body: the connection can serve again.
                    if let Some(sender) = this.sender.take() {
                        this.client.put_back(sender);
                    }
                } else {
                    let next = tokio::time::Instant::now() + this.idle;
                    this.deadline.as_mut().reset(next);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "no document bytes from {} for {:?}",
                        this.client.target.addr(),
                        this.idle
                    ),
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

/// The first group with `tag`, as a list of attributes (empty if none).
pub fn group(resp: &IppRequestResponse, tag: DelimiterTag) -> &[IppAttribute] {
    resp.attributes()
        .groups_of(tag)
        .next()
        .map(|g| g.attributes())
        .unwrap_or(&[])
}

/// The status of a response as the `ipp` crate's enum, for callers that
/// prefer it.
pub fn status_code(resp: &IppRequestResponse) -> StatusCode {
    resp.header().status_code()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::sync::atomic::AtomicUsize;

    use hyper::service::service_fn;
    use tokio::io::AsyncReadExt as _;
    use tokio::net::TcpListener;

    use crate::codes::op;

    /// `unwrap_err` needs `Debug` on the success type, which
    /// `IppRequestResponse` lacks.
    fn expect_err<T>(r: Result<T, ClientError>) -> ClientError {
        match r {
            Ok(_) => panic!("expected an error"),
            Err(e) => e,
        }
    }

    #[test]
    fn uris_parse_with_default_port_and_lenient_percent() {
        let t = Target::parse("ipps://relay.example.net/ipp/print/expp1%abc.com").unwrap();
        assert!(t.secure);
        assert_eq!((t.host.as_str(), t.port), ("relay.example.net", 631));
        assert_eq!(
            t.path, "/ipp/print/expp1%abc.com",
            "%ab is an escape already"
        );
        let t = Target::parse("ipp://127.0.0.1:8631/ipp/print/a%b").unwrap();
        assert_eq!(t.path, "/ipp/print/a%25b");
        assert_eq!(t.addr(), "127.0.0.1:8631");
        let t = Target::parse("http://[::1]:80").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.path.as_str()), ("::1", 80, "/"));
        assert_eq!(t.addr(), "[::1]:80");
        let t = Target::parse("ipp://h/a b").unwrap();
        assert_eq!(t.path, "/a%20b");
        for (uri, needle) in [
            ("lpd://h/q", "scheme"),
            ("ipp:/h", "scheme://"),
            ("ipp://:631/x", "no host"),
            ("ipp://h:0/x", "port"),
            ("ipp://u:p@h/x", "credentials"),
        ] {
            let e = Target::parse(uri).unwrap_err().to_string();
            assert!(e.contains(needle), "{uri}: {e}");
        }
    }

    #[test]
    fn ipps_needs_tls_and_debug_hides_the_password() {
        let e = IppClient::builder("ipps://h/ipp/print/x")
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("TLS"), "{e}");
        let c = IppClient::builder("ipp://h/ipp/print/x")
            .basic_auth("agent", Secret::new("hunter22".into()))
            .build()
            .unwrap();
        let shown = format!("{c:?}");
        assert!(
            shown.contains("MASKED") && !shown.contains("hunter22"),
            "{shown}"
        );
        assert!(
            !shown.contains("aHVudGVy"),
            "no base64 of it either: {shown}"
        );
    }

    #[test]
    fn status_names_are_iana_keywords() {
        assert_eq!(status_name(status::NOT_FOUND), "client-error-not-found");
        assert_eq!(
            status_name(status::NOT_FETCHABLE),
            "client-error-not-fetchable"
        );
        assert_eq!(status_name(0x04FF), "client-error");
        assert_eq!(status_name(0x0000), "successful-ok");
    }

    /// What the test server saw.
    #[derive(Default)]
    struct Seen {
        connections: AtomicUsize,
        requests: Mutex<Vec<SeenRequest>>,
    }

    #[derive(Debug, Clone)]
    struct SeenRequest {
        operation: u16,
        request_id: i32,
        authorization: Option<String>,
        content_length: Option<String>,
        chunked: bool,
        document: Vec<u8>,
    }

    /// How the test server answers.
    #[derive(Clone, Copy)]
    enum Mode {
        /// Echo the document back after the attributes, status OK.
        Echo,
        /// Answer 401 unless the Basic credentials are agent:pw.
        Auth,
        /// Answer IPP not-found with a status-message.
        NotFound,
        /// Close the connection after each response.
        Close,
        /// Answer OK with a printer attribute of collections nested
        /// 10,000 deep (a hostile or broken printer).
        Nested,
    }

    async fn serve(mode: Mode) -> (String, Arc<Seen>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let s = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                s.connections.fetch_add(1, Ordering::SeqCst);
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<Incoming>| {
                        let s = s.clone();
                        async move { Ok::<_, Infallible>(answer(mode, &s, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(!matches!(mode, Mode::Close))
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        (format!("ipp://{addr}/ipp/print/test"), seen)
    }

    async fn answer(
        mode: Mode,
        seen: &Seen,
        req: hyper::Request<Incoming>,
    ) -> hyper::Response<http_body_util::Full<Bytes>> {
        let header = |n: hyper::header::HeaderName| {
            req.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let authorization = header(hyper::header::AUTHORIZATION);
        let content_length = header(hyper::header::CONTENT_LENGTH);
        let chunked = header(hyper::header::TRANSFER_ENCODING).is_some_and(|v| v == "chunked");
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let parsed = AsyncIppParser::new(futures_util::io::Cursor::new(body.clone()))
            .parse_parts()
            .await
            .unwrap();
        let (h, _, mut rest) = (parsed.0, parsed.1, parsed.2.into_inner());
        let mut document = Vec::new();
        futures_util::AsyncReadExt::read_to_end(&mut rest, &mut document)
            .await
            .unwrap();
        seen.requests.lock().unwrap().push(SeenRequest {
            operation: h.operation_or_status as u16,
            request_id: h.request_id,
            authorization: authorization.clone(),
            content_length,
            chunked,
            document: document.clone(),
        });
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("agent:pw")
        );
        if matches!(mode, Mode::Auth) && authorization.as_deref() != Some(expected.as_str()) {
            return hyper::Response::builder()
                .status(401)
                .header("WWW-Authenticate", "Basic realm=\"faxgate\"")
                .body(http_body_util::Full::new(Bytes::new()))
                .unwrap();
        }
        let mut resp = match mode {
            Mode::NotFound => message::response(
                IppVersion::v2_0(),
                h.request_id,
                status::NOT_FOUND,
                Some("no such subscription"),
            ),
            _ => message::response(IppVersion::v2_0(), h.request_id, status::OK, None),
        };
        resp.attributes_mut().add(
            DelimiterTag::JobAttributes,
            message::attribute("job-id", IppValue::Integer(7)),
        );
        let mut out = resp.to_bytes().to_vec();
        if matches!(mode, Mode::Nested) {
            // Replace the end tag with a printer group of nested collections.
            out.pop();
            out.push(0x04);
            let mut attr = |tag: u8, name: &str, value: &[u8]| {
                out.push(tag);
                out.extend((name.len() as u16).to_be_bytes());
                out.extend(name.as_bytes());
                out.extend((value.len() as u16).to_be_bytes());
                out.extend(value);
            };
            attr(0x34, "media-col-ready", b"");
            for _ in 0..10_000 {
                attr(0x4a, "", b"m");
                attr(0x34, "", b"");
            }
            for _ in 0..=10_000 {
                attr(0x37, "", b"");
            }
            out.push(0x03);
        }
        out.extend_from_slice(&document);
        hyper::Response::builder()
            .header("Content-Type", "application/ipp")
            .body(http_body_util::Full::new(Bytes::from(out)))
            .unwrap()
    }

    fn get_jobs(uri: &str) -> IppRequestResponse {
        message::request(op::GET_JOBS, uri, "agent", 99)
    }

    #[tokio::test]
    async fn calls_reuse_one_connection_and_number_requests() {
        let (uri, seen) = serve(Mode::Echo).await;
        let client = IppClient::builder(&uri).build().unwrap();
        for _ in 0..3 {
            let resp = client.call(get_jobs(&uri), None).await.unwrap();
            assert_eq!(
                message::attr(&resp, DelimiterTag::JobAttributes, "job-id")
                    .and_then(message::as_int),
                Some(7)
            );
        }
        assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
        let ids: Vec<i32> = seen
            .requests
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.request_id)
            .collect();
        assert_eq!(ids, [1, 2, 3]);
        assert!(
            seen.requests
                .lock()
                .unwrap()
                .iter()
                .all(|r| r.operation == op::GET_JOBS)
        );
    }

    #[tokio::test]
    async fn documents_stream_with_length_or_chunked() {
        let (uri, seen) = serve(Mode::Echo).await;
        let client = IppClient::builder(&uri).build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("doc.pdf");
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();

        client
            .call(get_jobs(&uri), Some(Document::File(path.clone())))
            .await
            .unwrap();
        client
            .call(
                get_jobs(&uri),
                Some(Document::Reader {
                    reader: Box::new(tokio::fs::File::open(&path).await.unwrap()),
                    length: None,
                }),
            )
            .await
            .unwrap();
        client
            .call(
                get_jobs(&uri),
                Some(Document::Bytes(Bytes::from_static(b"%PDF"))),
            )
            .await
            .unwrap();
        let reqs = seen.requests.lock().unwrap().clone();
        assert_eq!(reqs[0].document, data);
        let head_len = get_jobs(&uri).to_bytes().len();
        assert_eq!(
            reqs[0].content_length.as_deref(),
            Some((head_len + data.len()).to_string().as_str())
        );
        assert!(!reqs[0].chunked);
        assert_eq!(reqs[1].document, data);
        assert!(reqs[1].chunked && reqs[1].content_length.is_none());
        assert_eq!(reqs[2].document, b"%PDF");
    }

    #[tokio::test]
    async fn a_drained_stream_gives_its_connection_back() {
        let (uri, seen) = serve(Mode::Echo).await;
        let client = IppClient::builder(&uri).build().unwrap();
        let (resp, mut reader) = client.call_streaming(get_jobs(&uri)).await.unwrap();
        assert_eq!(
            message::attr(&resp, DelimiterTag::JobAttributes, "job-id").and_then(message::as_int),
            Some(7)
        );
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        client.call(get_jobs(&uri), None).await.unwrap();
        assert_eq!(seen.connections.load(Ordering::SeqCst), 1);

        // A reader dropped before its end costs its connection.
        let (_, reader) = client.call_streaming(get_jobs(&uri)).await.unwrap();
        drop(reader);
        client.call(get_jobs(&uri), None).await.unwrap();
        assert!(seen.connections.load(Ordering::SeqCst) <= 2);
    }

    #[tokio::test]
    async fn streaming_reads_a_large_document_after_the_attributes() {
        // A server that answers every request with attributes plus 1 MB.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 241) as u8).collect();
        let served = data.clone();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let svc = service_fn(move |req: hyper::Request<Incoming>| {
                let served = served.clone();
                async move {
                    let _ = req.into_body().collect().await;
                    let mut resp = message::response(IppVersion::v2_0(), 1, status::OK, None);
                    resp.attributes_mut().add(
                        DelimiterTag::OperationAttributes,
                        message::attribute("document-format", message::mime("application/pdf")),
                    );
                    let mut out = resp.to_bytes().to_vec();
                    out.extend_from_slice(&served);
                    Ok::<_, Infallible>(hyper::Response::new(http_body_util::Full::new(
                        Bytes::from(out),
                    )))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
        let uri = format!("ipp://{addr}/ipp/print/x");
        let client = IppClient::builder(&uri).build().unwrap();
        let req = message::request(op::FETCH_DOCUMENT, &uri, "agent", 1);
        let (resp, mut reader) = client.call_streaming(req).await.unwrap();
        assert_eq!(
            message::op_attr(&resp, "document-format").and_then(message::as_str),
            Some("application/pdf")
        );
        let mut got = Vec::new();
        reader.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), data.len());
        assert!(got == data);
    }

    #[tokio::test]
    async fn wrong_credentials_are_not_authenticated_and_right_ones_pass() {
        let (uri, seen) = serve(Mode::Auth).await;
        let bad = IppClient::builder(&uri)
            .basic_auth("agent", Secret::new("nope".into()))
            .build()
            .unwrap();
        let e = expect_err(bad.call(get_jobs(&uri), None).await);
        assert!(matches!(e, ClientError::NotAuthenticated { .. }), "{e}");
        assert!(!e.to_string().contains("nope"), "{e}");
        let good = IppClient::builder(&uri)
            .basic_auth("agent", Secret::new("pw".into()))
            .build()
            .unwrap();
        good.call(get_jobs(&uri), None).await.unwrap();
        let reqs = seen.requests.lock().unwrap();
        assert!(
            reqs[1]
                .authorization
                .as_deref()
                .unwrap()
                .starts_with("Basic ")
        );
    }

    #[tokio::test]
    async fn ipp_error_status_names_the_code_and_message() {
        let (uri, _) = serve(Mode::NotFound).await;
        let client = IppClient::builder(&uri).build().unwrap();
        let e = expect_err(client.call(get_jobs(&uri), None).await);
        assert_eq!(e.ipp_status(), Some(status::NOT_FOUND));
        let text = e.to_string();
        assert!(
            text.contains("client-error-not-found") && text.contains("no such subscription"),
            "{text}"
        );
        assert!(!e.is_transient());
    }

    #[tokio::test]
    async fn a_response_nested_too_deep_is_unparsable_not_a_crash() {
        let (uri, _) = serve(Mode::Nested).await;
        let client = IppClient::builder(&uri).build().unwrap();
        let e = expect_err(client.call(get_jobs(&uri), None).await);
        assert!(
            matches!(e, ClientError::Unparsable { .. }) && e.to_string().contains("nested"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_server_that_closes_each_connection_gets_a_new_one() {
        let (uri, seen) = serve(Mode::Close).await;
        let client = IppClient::builder(&uri).build().unwrap();
        for _ in 0..3 {
            client.call(get_jobs(&uri), None).await.unwrap();
        }
        assert_eq!(seen.connections.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_silently_dropped_keepalive_connection_is_replaced_once() {
        // A server that answers one request per connection and then
        // closes the socket without saying so (no Connection: close).
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let c = conns.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut tcp, _)) = listener.accept().await else {
                    return;
                };
                c.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    use tokio::io::AsyncWriteExt as _;
                    let mut buf = vec![0u8; 65536];
                    let mut got = Vec::new();
                    // Read until the IPP head (no document) is in.
                    loop {
                        let n = tcp.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        got.extend_from_slice(&buf[..n]);
                        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                            let text = String::from_utf8_lossy(&got[..i]).to_lowercase();
                            let len: usize = text
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length: "))
                                .and_then(|v| v.trim().parse().ok())
                                .unwrap_or(0);
                            if got.len() >= i + 4 + len {
                                break;
                            }
                        }
                    }
                    let body = message::response(IppVersion::v2_0(), 1, 0, None).to_bytes();
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/ipp\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    );
                    let _ = tcp.write_all(head.as_bytes()).await;
                    let _ = tcp.write_all(&body).await;
                    let _ = tcp.flush().await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    // Dropped: closed without notice.
                });
            }
        });
        let uri = format!("ipp://{addr}/ipp/print/x");
        let client = IppClient::builder(&uri).build().unwrap();
        client.call(get_jobs(&uri), None).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        client.call(get_jobs(&uri), None).await.unwrap();
        assert_eq!(conns.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn unreachable_names_host_and_port() {
        // Bound but never listening: connects are refused, and while
        // `reserved` lives no other test can take the port.
        let reserved = tokio::net::TcpSocket::new_v4().unwrap();
        reserved.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = reserved.local_addr().unwrap();
        let uri = format!("ipp://{addr}/ipp/print/x");
        let client = IppClient::builder(&uri).build().unwrap();
        let e = expect_err(client.call(get_jobs(&uri), None).await);
        assert!(matches!(e, ClientError::Unreachable { .. }), "{e}");
        assert!(e.to_string().contains(&addr.to_string()), "{e}");
        assert!(e.is_transient());
    }

    #[tokio::test]
    async fn ipps_with_a_pinned_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let identity = faxgate_relay::tls::server_identity(None, dir.path()).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(identity.config.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = service_fn(|req: hyper::Request<Incoming>| async move {
                        let _ = req.into_body().collect().await;
                        let resp = message::response(IppVersion::v2_0(), 1, status::OK, None);
                        Ok::<_, Infallible>(hyper::Response::new(http_body_util::Full::new(
                            resp.to_bytes(),
                        )))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        let uri = format!("ipps://{addr}/ipp/print/x");
        let good = IppClient::builder(&uri)
            .tls(faxgate_relay::tls::pinned_client_config(
                identity.fingerprint,
            ))
            .build()
            .unwrap();
        good.call(get_jobs(&uri), None).await.unwrap();
        let bad = IppClient::builder(&uri)
            .tls(faxgate_relay::tls::pinned_client_config([0u8; 32]))
            .build()
            .unwrap();
        let e = expect_err(bad.call(get_jobs(&uri), None).await);
        assert!(matches!(e, ClientError::Tls { .. }), "{e}");
    }

    #[tokio::test]
    async fn a_stalled_call_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (_tcp, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(60)).await;
        });
        let uri = format!("ipp://{addr}/ipp/print/x");
        let client = IppClient::builder(&uri)
            .request_timeout(Duration::from_millis(200))
            .build()
            .unwrap();
        let e = expect_err(client.call(get_jobs(&uri), None).await);
        assert!(matches!(e, ClientError::Timeout { .. }), "{e}");
    }

    #[tokio::test]
    async fn get_fetches_a_document_without_credentials() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let svc = service_fn(|req: hyper::Request<Incoming>| async move {
                let status = if req.uri().path() == "/.well-known/faxgate-infra.json"
                    && req.headers().get(hyper::header::AUTHORIZATION).is_none()
                {
                    200
                } else {
                    404
                };
                Ok::<_, Infallible>(
                    hyper::Response::builder()
                        .status(status)
                        .body(http_body_util::Full::new(Bytes::from_static(
                            b"{\"version\":1}",
                        )))
                        .unwrap(),
                )
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
        let uri = format!("ipp://{addr}/ipp/print/x");
        let client = IppClient::builder(&uri)
            .basic_auth("agent", Secret::new("pw".into()))
            .build()
            .unwrap();
        let body = client
            .get("/.well-known/faxgate-infra.json", 4096)
            .await
            .unwrap();
        assert_eq!(&body[..], b"{\"version\":1}");
        let e = expect_err(client.get("/nothing", 4096).await);
        assert!(matches!(e, ClientError::Http { status: 404, .. }), "{e}");
    }
}
