//! One IPP request over a fresh HTTP/1.1 connection, with inactivity
//! deadlines instead of a cap on the whole exchange.
//!
//! A printer that reads the document as it prints takes as long as the
//! printing takes: a long fax at a few KB/s needs minutes, so no total
//! deadline fits every document. What is watched instead is progress:
//!
//! - while the request is going out, the bytes the printer has taken
//!   (written to the socket, less what its kernel has not acknowledged,
//!   `TIOCOUTQ`): none for [`Deadlines::idle`] is a printer that stopped
//!   reading;
//! - once all of it is acknowledged, the answer: none within
//!   [`Deadlines::answer`] is a printer that will not answer;
//! - while the answer comes in, its bytes: none for `answer` again.
//!
//! A failure says whether any byte of the request had left ([`Failure`]):
//! after that, a printer may have made a job of it, and the caller must
//! find out before sending the document again.

use std::os::fd::{AsFd as _, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use http_body_util::{BodyExt as _, Limited, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::io::ReaderStream;

/// The largest response read.
const MAX_RESPONSE: usize = 1 << 20;

/// How long an exchange may go without progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadlines {
    /// For the TCP connection to open.
    pub connect: Duration,
    /// While the request is sent: how long the printer may take none of
    /// it.
    pub idle: Duration,
    /// Once the printer has all of the request: how long it may take to
    /// start answering; and then how long its answer may stall.
    pub answer: Duration,
}

impl Default for Deadlines {
    /// 10 s to connect; 60 s without the printer taking any of the
    /// request; 120 s for the answer once it has all of it (a printer
    /// with a large receive buffer reads the end of the document from it
    /// while it prints, and answers only then).
    fn default() -> Self {
        Deadlines {
            connect: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            answer: Duration::from_secs(120),
        }
    }
}

/// Why an exchange failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No byte of the request left this machine (no connection, a
    /// refused connection): the printer has nothing from it.
    NotSent(String),
    /// The exchange broke, or a deadline passed, after some of the request
    /// had been sent: the printer may have acted on it.
    Broken {
        /// What broke.
        reason: String,
        /// Whether the printer had acknowledged all of the request; if
        /// not, a job it made of it lacks part of its document.
        whole: bool,
    },
    /// The printer answered with an HTTP status other than success.
    Http(u16),
}

/// What has moved on the connection, shared by the stream wrapper, the
/// body and the watchdog.
#[derive(Debug, Default)]
struct Traffic {
    /// Bytes handed to the socket.
    written: AtomicU64,
    /// Bytes of the answer read.
    read: AtomicU64,
    /// Bytes of the request body handed to the connection.
    pulled: AtomicU64,
    /// The answer's headers have arrived.
    answered: AtomicBool,
}

impl Traffic {
    /// Whether the whole request (`length` bytes of body, after the HTTP
    /// head) has been written to the socket.
    fn all_handed_over(&self, length: u64) -> bool {
        self.pulled.load(Ordering::Relaxed) >= length
            && self.written.load(Ordering::Relaxed) > length
    }
}

/// A TCP stream that counts the bytes through it.
struct Counted {
    inner: TcpStream,
    traffic: Arc<Traffic>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        self.traffic.read.fetch_add(n as u64, Ordering::Relaxed);
        r
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.traffic.written.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &r {
            self.traffic.written.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Bytes written to a TCP socket that its peer has not acknowledged yet
/// (Linux `TIOCOUTQ`); 0 where that cannot be asked.
fn unacknowledged(socket: Option<&OwnedFd>) -> u64 {
    #[cfg(target_os = "linux")]
    if let Some(fd) = socket {
        use std::os::fd::AsRawFd as _;
        let mut n: libc::c_int = 0;
        // SAFETY: TIOCOUTQ writes one c_int through the pointer, which
        // points at `n`, live for the call; the descriptor is our own
        // duplicate of the connection's socket, open while `fd` lives.
        let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCOUTQ, &mut n as *mut libc::c_int) };
        if r == 0 {
            return u64::try_from(n).unwrap_or(0);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = socket;
    0
}

/// Sends `head` and then `document` (together `length` bytes) as an HTTP
/// POST of `application/ipp` to `host:port` `path`; returns the answer's
/// body.
pub async fn post(
    host: &str,
    port: u16,
    path: &str,
    request: impl futures_util::io::AsyncRead + Send + 'static,
    length: u64,
    deadlines: Deadlines,
) -> Result<Bytes, Failure> {
    let tcp = tokio::time::timeout(deadlines.connect, TcpStream::connect((host, port)))
        .await
        .map_err(|_| Failure::NotSent(format!("no connection within {:?}", deadlines.connect)))?
        .map_err(|e| Failure::NotSent(format!("{host}:{port}: {e}")))?;
    // A duplicate of the socket, to ask how much the printer has taken.
    let socket = tcp.as_fd().try_clone_to_owned().ok();
    let traffic = Arc::new(Traffic::default());
    let stream = Counted {
        inner: tcp,
        traffic: traffic.clone(),
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| Failure::NotSent(format!("HTTP handshake: {e}")))?;
    let driver = tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "IPP connection ended with an error.");
        }
    });
    let pulled = traffic.clone();
    let body = ReaderStream::new(tokio_util::compat::FuturesAsyncReadCompatExt::compat(
        request,
    ))
    .map(move |r| {
        if let Ok(b) = &r {
            pulled.pulled.fetch_add(b.len() as u64, Ordering::Relaxed);
        }
        r.map(Frame::data)
    });
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let request = hyper::Request::post(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::CONTENT_TYPE, "application/ipp")
        .header(hyper::header::CONTENT_LENGTH, length)
        .body(StreamBody::new(body))
        .map_err(|e| Failure::NotSent(format!("cannot build the HTTP request: {e}")))?;
    let answered = traffic.clone();
    let exchange = async {
        let resp = sender
            .send_request(request)
            .await
            .map_err(|e| format!("{e}"))?;
        answered.answered.store(true, Ordering::Relaxed);
        if !resp.status().is_success() {
            return Ok(Err(resp.status().as_u16()));
        }
        Limited::new(resp.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map(|c| Ok(c.to_bytes()))
            .map_err(|e| format!("reading the answer: {e}"))
    };
    let result = tokio::select! {
        r = exchange => r,
        stalled = watch(&traffic, socket.as_ref(), length, deadlines) => Err(stalled),
    };
    driver.abort();
    match result {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(status)) => Err(Failure::Http(status)),
        Err(reason) if traffic.written.load(Ordering::Relaxed) == 0 => {
            Err(Failure::NotSent(reason))
        }
        Err(reason) => Err(Failure::Broken {
            reason,
            whole: traffic.all_handed_over(length) && unacknowledged(socket.as_ref()) == 0,
        }),
    }
}

/// Returns (why) when the exchange stops making progress (see the module
/// documentation); runs until then.
async fn watch(
    traffic: &Traffic,
    socket: Option<&OwnedFd>,
    length: u64,
    deadlines: Deadlines,
) -> String {
    let tick = (deadlines.idle.min(deadlines.answer) / 4)
        .clamp(Duration::from_millis(10), Duration::from_millis(250));
    let mut last = Instant::now();
    let mut taken_before = 0u64;
    let mut read_before = 0u64;
    let mut all_taken_at: Option<Instant> = None;
    loop {
        tokio::time::sleep(tick).await;
        let now = Instant::now();
        if traffic.answered.load(Ordering::Relaxed) {
            let read = traffic.read.load(Ordering::Relaxed);
            if read > read_before {
                (read_before, last) = (read, now);
            } else if now - last >= deadlines.answer {
                return format!("the answer stopped for {:?}", deadlines.answer);
            }
            continue;
        }
        let pending = unacknowledged(socket);
        let taken = traffic
            .written
            .load(Ordering::Relaxed)
            .saturating_sub(pending);
        if taken > taken_before {
            (taken_before, last) = (taken, now);
            all_taken_at = None;
        }
        if traffic.all_handed_over(length) && pending == 0 {
            let since = *all_taken_at.get_or_insert(now);
            if now - since >= deadlines.answer {
                return format!(
                    "no answer {:?} after the printer had all {length} bytes of the request",
                    deadlines.answer
                );
            }
        } else if now - last >= deadlines.idle {
            return format!(
                "the printer took none of the request for {:?}, after {taken_before} bytes",
                deadlines.idle
            );
        }
    }
}
