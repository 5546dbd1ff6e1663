//! The relay's TLS server stream, built on rustls's unbuffered API so that
//! an idle connection holds no TLS record buffers.
//!
//! `tokio-rustls` wraps rustls's buffered connection, which keeps a 4 KiB
//! deframer buffer for every connection that has ever read, plus its
//! queues; across thousands of idle devices that is most of the relay's
//! memory. Here the buffers belong to us and are empty (capacity 0)
//! whenever a connection is quiet:
//!
//! - **Incoming ciphertext** is read into a buffer on the stack (only while
//!   the socket is being polled) and decrypted there. Only the tail of a
//!   record that has not fully arrived is copied into `incoming`, which is
//!   freed as soon as it holds no partial record.
//! - **Plaintext** the caller has not consumed yet waits in `plain`, which
//!   is freed when drained.
//! - **Outgoing ciphertext** is encrypted straight into `out` and freed
//!   once the socket has taken all of it.
//!
//! [`Engine`] is the I/O-free part: bytes in, plaintext and ciphertext
//! out. [`LeanTlsStream`] pairs it with the `TcpStream` and implements
//! `AsyncRead`/`AsyncWrite`. [`accept`] runs the handshake; callers put
//! their own deadline around it.
//!
//! Behaviour matches `tokio_rustls::server::TlsStream` where the relay can
//! tell: a peer's close_notify reads as EOF, a TCP EOF without it is an
//! `UnexpectedEof` error, `poll_shutdown` sends close_notify and then a
//! FIN, and TLS errors are `InvalidData` with rustls's text. A client's
//! TLS 1.3 KeyUpdate is handled inside rustls; the answering KeyUpdate goes
//! out ahead of our next record, as RFC 8446 requires. Early data is never
//! accepted (the relay's `ServerConfig` leaves `max_early_data_size` at 0).

use rustls::ServerConfig;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus,
};
use std::fmt;
use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Bytes read from the socket per read: one largest TLS record
/// (5 + 2^14 + 256) and change, on the stack.
const READ_CHUNK: usize = 17 * 1024;

/// Most plaintext encrypted by one `poll_write`: four full records, so a
/// bulk writer makes one syscall per 64 KiB.
const MAX_WRITE: usize = 64 * 1024;

/// Largest TLS plaintext record; vectored writes gather up to this much.
const MAX_RECORD: usize = 16 * 1024;

/// A generous bound on the bytes a record adds around its plaintext
/// (header, explicit nonce, tag, inner content type). A wrong guess costs
/// one retry, not correctness.
const RECORD_OVERHEAD: usize = 64;

/// A partial record may keep this much spare capacity while we wait for
/// its rest; more is given back.
const SPARE_SLACK: usize = 1024;

/// What the caller wants done once rustls reaches its quiescent state.
#[derive(Debug, Clone, Copy)]
enum Job<'a> {
    /// Only process the input.
    Read,
    /// Encrypt this plaintext into `out`.
    Encrypt(&'a [u8]),
    /// Encrypt a close_notify alert into `out`.
    CloseNotify,
}

/// Where processing stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// The handshake needs more bytes from the peer.
    Handshaking,
    /// The handshake is done and nothing is left to process.
    Traffic,
    /// Both sides have sent close_notify.
    Closed,
}

/// The I/O-free half: rustls's unbuffered connection and the plaintext and
/// ciphertext it has produced but nobody has taken yet.
struct Engine {
    conn: UnbufferedServerConnection,
    /// Decrypted bytes not yet read by the caller, from `plain_pos` on.
    plain: Vec<u8>,
    plain_pos: usize,
    /// Ciphertext not yet written to the socket, from `out_pos` on.
    out: Vec<u8>,
    out_pos: usize,
    /// Ciphertext written to the socket so far (progress a slow reader
    /// makes inside a record, which plaintext writes do not show).
    written: u64,
    /// The peer sent close_notify: reads give EOF once `plain` is drained.
    peer_closed: bool,
    /// We queued our close_notify: no more writes.
    sent_close: bool,
    /// A fatal TLS error; every later call fails with it.
    failed: Option<rustls::Error>,
}

impl Engine {
    fn new(conn: UnbufferedServerConnection) -> Self {
        Self {
            conn,
            plain: Vec::new(),
            plain_pos: 0,
            out: Vec::new(),
            out_pos: 0,
            written: 0,
            peer_closed: false,
            sent_close: false,
            failed: None,
        }
    }

    fn check(&self) -> io::Result<()> {
        match &self.failed {
            Some(e) => Err(tls_error(e)),
            None => Ok(()),
        }
    }

    /// Feeds `data` (ciphertext, oldest first) to rustls until it needs
    /// more, collecting plaintext into `plain` and records to send into
    /// `out`, then does `job`. Returns how many bytes of `data` rustls is
    /// done with; the caller must keep the rest for the next call.
    fn process(&mut self, data: &mut [u8], job: Job<'_>) -> io::Result<(usize, Stop)> {
        self.check()?;
        let mut used = 0;
        loop {
            let UnbufferedStatus { mut discard, state } =
                self.conn.process_tls_records(&mut data[used..]);
            let state = match state {
                Ok(s) => s,
                Err(e) => return Err(self.fail(e)),
            };
            let stop = match state {
                ConnectionState::ReadTraffic(mut records) => {
                    while let Some(record) = records.next_record() {
                        let record = match record {
                            Ok(r) => r,
                            Err(e) => return Err(self.fail(e)),
                        };
                        discard += record.discard;
                        if self.plain_pos == self.plain.len() {
                            self.plain.clear();
                            self.plain_pos = 0;
                        }
                        self.plain.extend_from_slice(record.payload);
                    }
                    None
                }
                ConnectionState::EncodeTlsData(mut enc) => {
                    append_with(&mut self.out, 0, |b| enc.encode(b), encode_needed)?;
                    None
                }
                // `out` keeps records in order and the caller flushes it
                // before waiting on the peer, so "transmitted" may be
                // declared once the records are queued.
                ConnectionState::TransmitTlsData(t) => {
                    t.done();
                    None
                }
                ConnectionState::PeerClosed => {
                    self.peer_closed = true;
                    None
                }
                ConnectionState::Closed => Some(Stop::Closed),
                ConnectionState::BlockedHandshake => Some(Stop::Handshaking),
                ConnectionState::WriteTraffic(mut w) => {
                    match job {
                        Job::Read => {}
                        Job::Encrypt(plain) => {
                            let estimate =
                                plain.len() + (plain.len() / MAX_RECORD + 2) * RECORD_OVERHEAD;
                            append_with(
                                &mut self.out,
                                estimate,
                                |b| w.encrypt(plain, b),
                                encrypt_needed,
                            )?;
                        }
                        Job::CloseNotify => {
                            append_with(
                                &mut self.out,
                                2 * RECORD_OVERHEAD,
                                |b| w.queue_close_notify(b),
                                encrypt_needed,
                            )?;
                            self.sent_close = true;
                        }
                    }
                    Some(Stop::Traffic)
                }
                ConnectionState::ReadEarlyData(_) => {
                    return Err(
                        self.fail(rustls::Error::General("early data is not supported".into()))
                    );
                }
                other => {
                    let what = format!("unexpected TLS connection state {other:?}");
                    return Err(self.fail(rustls::Error::General(what)));
                }
            };
            used += discard;
            if let Some(stop) = stop {
                return Ok((used, stop));
            }
        }
    }

    /// Records a fatal error and queues the alert rustls wants to send
    /// about it, if any.
    fn fail(&mut self, e: rustls::Error) -> io::Error {
        let err = tls_error(&e);
        self.failed = Some(e);
        // After an error rustls yields its queued alert as EncodeTlsData
        // (then TransmitTlsData); anything else means there is none. The
        // bound only guards against a rustls change looping us forever.
        for _ in 0..4 {
            let mut empty = [0u8; 0];
            let status = self.conn.process_tls_records(&mut empty);
            match status.state {
                Ok(ConnectionState::EncodeTlsData(mut enc)) => {
                    if append_with(&mut self.out, 0, |b| enc.encode(b), encode_needed).is_err() {
                        break;
                    }
                }
                Ok(ConnectionState::TransmitTlsData(t)) => t.done(),
                _ => break,
            }
        }
        err
    }

    /// Moves decrypted bytes into `buf`; false when there are none.
    fn take_plain(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        let pending = &self.plain[self.plain_pos..];
        if pending.is_empty() {
            return false;
        }
        let n = pending.len().min(buf.remaining());
        buf.put_slice(&pending[..n]);
        self.plain_pos += n;
        if self.plain_pos == self.plain.len() {
            self.plain = Vec::new();
            self.plain_pos = 0;
        }
        true
    }

    fn has_output(&self) -> bool {
        self.out_pos < self.out.len()
    }

    /// Notes that `n` more bytes of `out` reached the socket; frees `out`
    /// once all of it has.
    fn sent(&mut self, n: usize) {
        self.written += n as u64;
        self.out_pos += n;
        if self.out_pos >= self.out.len() {
            self.out = Vec::new();
            self.out_pos = 0;
        }
    }
}

/// Appends what `f` writes to `out`, growing it to the size rustls asks
/// for when `estimate` was too small.
fn append_with<E: fmt::Display>(
    out: &mut Vec<u8>,
    estimate: usize,
    mut f: impl FnMut(&mut [u8]) -> Result<usize, E>,
    needed: fn(&E) -> Option<usize>,
) -> io::Result<()> {
    let start = out.len();
    out.resize(start + estimate, 0);
    let written = match f(&mut out[start..]) {
        Ok(n) => Ok(n),
        Err(e) => match needed(&e) {
            Some(size) => {
                out.resize(start + size, 0);
                f(&mut out[start..])
            }
            None => Err(e),
        },
    };
    match written {
        Ok(n) => {
            out.truncate(start + n);
            Ok(())
        }
        Err(e) => {
            out.truncate(start);
            Err(io::Error::other(format!("TLS: {e}")))
        }
    }
}

fn encode_needed(e: &EncodeError) -> Option<usize> {
    match e {
        EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => {
            Some(*required_size)
        }
        _ => None,
    }
}

fn encrypt_needed(e: &EncryptError) -> Option<usize> {
    match e {
        EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => {
            Some(*required_size)
        }
        _ => None,
    }
}

fn tls_error(e: &rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// A TLS connection accepted by the relay: `AsyncRead + AsyncWrite` over
/// a `TcpStream`, holding no TLS buffers while idle (see the module docs).
pub struct LeanTlsStream {
    tcp: TcpStream,
    engine: Engine,
    /// The start of a record that has not fully arrived (or handshake
    /// bytes rustls has not released yet). Empty means capacity 0.
    incoming: Vec<u8>,
    /// The peer's FIN arrived.
    tcp_eof: bool,
}

impl fmt::Debug for LeanTlsStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeanTlsStream")
            .field("tcp", &self.tcp)
            .field("incoming", &self.incoming.len())
            .field("plain", &(self.engine.plain.len() - self.engine.plain_pos))
            .field("out", &(self.engine.out.len() - self.engine.out_pos))
            .field("peer_closed", &self.engine.peer_closed)
            .field("sent_close", &self.engine.sent_close)
            .field("tcp_eof", &self.tcp_eof)
            .finish()
    }
}

/// Runs the server side of a TLS handshake on `tcp`. It waits on the peer
/// for as long as the peer stalls, so wrap it in the handshake deadline.
/// Application data that arrives with the client's last flight is kept
/// for the first read.
pub async fn accept(tcp: TcpStream, config: Arc<ServerConfig>) -> io::Result<LeanTlsStream> {
    let conn = UnbufferedServerConnection::new(config).map_err(|e| tls_error(&e))?;
    let mut stream = LeanTlsStream {
        tcp,
        engine: Engine::new(conn),
        incoming: Vec::new(),
        tcp_eof: false,
    };
    poll_fn(|cx| stream.poll_handshake(cx)).await?;
    Ok(stream)
}

impl LeanTlsStream {
    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Ciphertext bytes written to the socket so far. A write of
    /// plaintext is taken a record's worth (up to 64 KiB) at a time, only
    /// once the last one's ciphertext is out, so a slow reader shows its
    /// progress here long before the next plaintext write does.
    pub fn wire_written(&self) -> u64 {
        self.engine.written
    }

    /// Capacities of the incoming, plaintext and outgoing buffers.
    #[cfg(test)]
    fn buffer_capacities(&self) -> [usize; 3] {
        [
            self.incoming.capacity(),
            self.engine.plain.capacity(),
            self.engine.out.capacity(),
        ]
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            ready!(self.poll_flush_out(cx))?;
            if !self.engine.conn.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            ready!(self.poll_fill(cx))?;
            if self.tcp_eof {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "tls handshake eof",
                )));
            }
        }
    }

    /// Reads once from the socket and processes what came. Sets `tcp_eof`
    /// on a FIN. On a TLS error, sends the alert if the socket takes it
    /// at once.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut raw = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut rb = ReadBuf::uninit(&mut raw);
        if Pin::new(&mut self.tcp).poll_read(cx, &mut rb)?.is_pending() {
            // Going idle: a partial record keeps only what it holds.
            if self.incoming.capacity() > self.incoming.len() + SPARE_SLACK {
                self.incoming.shrink_to_fit();
            }
            return Poll::Pending;
        }
        if rb.filled().is_empty() {
            self.tcp_eof = true;
            return Poll::Ready(Ok(()));
        }
        let r = self.ingest(rb.filled_mut());
        if r.is_err() {
            self.try_flush_out();
        }
        Poll::Ready(r)
    }

    /// Processes freshly read ciphertext: in place when nothing is
    /// pending, else after the pending partial record.
    fn ingest(&mut self, fresh: &mut [u8]) -> io::Result<()> {
        if self.incoming.is_empty() {
            let (used, _) = self.engine.process(fresh, Job::Read)?;
            if let Some(rest) = fresh.get(used..).filter(|r| !r.is_empty()) {
                self.incoming = rest.to_vec();
            }
            Ok(())
        } else {
            self.incoming.extend_from_slice(fresh);
            self.run(Job::Read).map(|_| ())
        }
    }

    /// Processes the pending input, then does `job`.
    fn run(&mut self, job: Job<'_>) -> io::Result<Stop> {
        let (used, stop) = self.engine.process(&mut self.incoming, job)?;
        if used >= self.incoming.len() {
            self.incoming = Vec::new();
        } else if used > 0 {
            self.incoming.drain(..used);
        }
        Ok(stop)
    }

    /// Writes `out` until the socket has all of it.
    fn poll_flush_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.engine.has_output() {
            let pending = &self.engine.out[self.engine.out_pos..];
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.engine.sent(n);
        }
        Poll::Ready(Ok(()))
    }

    /// Writes what the socket takes right now, without registering for
    /// writability: used from the read side, whose waker must not replace
    /// a writer's.
    fn try_flush_out(&mut self) {
        while self.engine.has_output() {
            match self.tcp.try_write(&self.engine.out[self.engine.out_pos..]) {
                Ok(n) if n > 0 => self.engine.sent(n),
                _ => return,
            }
        }
    }

    /// Encrypts `plain` into `out`.
    fn encrypt(&mut self, plain: &[u8]) -> io::Result<()> {
        match self.run(Job::Encrypt(plain))? {
            Stop::Traffic => Ok(()),
            Stop::Closed => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "TLS connection is closed",
            )),
            Stop::Handshaking => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "TLS handshake not complete",
            )),
        }
    }

    fn write_gate(&self) -> io::Result<()> {
        self.engine.check()?;
        if self.engine.sent_close {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after TLS close_notify",
            ));
        }
        Ok(())
    }

    /// Encrypts `plain` (at most `MAX_WRITE` of it) and starts sending it.
    fn poll_write_plain(&mut self, cx: &mut Context<'_>, plain: &[u8]) -> Poll<io::Result<usize>> {
        self.write_gate()?;
        ready!(self.poll_flush_out(cx))?;
        if plain.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = plain.len().min(MAX_WRITE);
        self.encrypt(&plain[..n])?;
        // The bytes are ours now; what the socket does not take at once
        // goes out on the next write or flush.
        if let Poll::Ready(Err(e)) = self.poll_flush_out(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }
}

impl AsyncRead for LeanTlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.engine.take_plain(buf) {
                return Poll::Ready(Ok(()));
            }
            this.engine.check()?;
            if this.engine.peer_closed {
                return Poll::Ready(Ok(()));
            }
            if this.tcp_eof {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed connection without sending TLS close_notify",
                )));
            }
            ready!(this.poll_fill(cx))?;
            this.try_flush_out();
        }
    }
}

impl AsyncWrite for LeanTlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_plain(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let Some(first) = bufs.iter().find(|b| !b.is_empty()) else {
            return this.poll_write_plain(cx, &[]);
        };
        if first.len() >= MAX_RECORD {
            return this.poll_write_plain(cx, first);
        }
        // Small slices (a frame header, then its payload) go into one
        // record rather than one record each.
        let mut gather = [0u8; MAX_RECORD];
        let mut len = 0;
        for b in bufs {
            let n = b.len().min(MAX_RECORD - len);
            gather[len..len + n].copy_from_slice(&b[..n]);
            len += n;
            if len == MAX_RECORD {
                break;
            }
        }
        this.poll_write_plain(cx, &gather[..len])
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_flush_out(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.engine.sent_close && this.engine.failed.is_none() {
            // A connection that cannot say close_notify still gets its FIN.
            let _ = this.run(Job::CloseNotify);
        }
        ready!(this.poll_flush_out(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls;
    use rustls::ClientConfig;
    use std::io::{Read as _, Write as _};
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::time::timeout;
    use tokio_rustls::client::TlsStream as ClientTls;

    struct Fixture {
        _dir: tempfile::TempDir,
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
        pin: [u8; 32],
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let id = tls::server_identity(None, dir.path()).unwrap();
        Fixture {
            client: tls::pinned_client_config(id.fingerprint),
            pin: id.fingerprint,
            server: id.config,
            _dir: dir,
        }
    }

    /// A client pinned to the fixture's certificate, as devices are, but
    /// speaking TLS 1.2 only.
    fn tls12_client(pin: [u8; 32]) -> Arc<ClientConfig> {
        Arc::new(
            ClientConfig::builder_with_provider(tls::provider())
                .with_protocol_versions(&[&rustls::version::TLS12])
                .unwrap()
                .dangerous()
                .with_custom_certificate_verifier(tls::pinned_verifier(pin))
                .with_no_client_auth(),
        )
    }

    /// Both ends of a loopback TCP connection: (server side, client side).
    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
        (s.unwrap().0, c.unwrap())
    }

    async fn tls_pair(
        server: &Arc<ServerConfig>,
        client: &Arc<ClientConfig>,
    ) -> (LeanTlsStream, ClientTls<TcpStream>) {
        let (s, c) = tcp_pair().await;
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(client));
        let name = tls::server_name("faxgate-relay").unwrap();
        let (s, c) = tokio::join!(accept(s, Arc::clone(server)), connector.connect(name, c));
        (s.unwrap(), c.unwrap())
    }

    /// xorshift64*: reproducible chunk sizes and payloads.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn upto(&mut self, max: usize) -> usize {
            1 + (self.next() % max as u64) as usize
        }

        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    async fn echo_once(f: &Fixture, client_cfg: &Arc<ClientConfig>) -> rustls::ProtocolVersion {
        let (mut server, mut client) = tls_pair(&f.server, client_cfg).await;
        client.write_all(b"hello relay").await.unwrap();
        client.flush().await.unwrap();
        let mut buf = [0u8; 11];
        server.read_exact(&mut buf).await.unwrap();
        server.write_all(&buf).await.unwrap();
        server.flush().await.unwrap();
        let mut back = [0u8; 11];
        client.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"hello relay");
        client.get_ref().1.protocol_version().unwrap()
    }

    #[tokio::test]
    async fn handshake_and_echo_tls13() {
        let f = fixture();
        let v = echo_once(&f, &f.client).await;
        assert_eq!(v, rustls::ProtocolVersion::TLSv1_3);
    }

    #[tokio::test]
    async fn handshake_and_echo_tls12() {
        let f = fixture();
        let v = echo_once(&f, &tls12_client(f.pin)).await;
        assert_eq!(v, rustls::ProtocolVersion::TLSv1_2);
    }

    #[tokio::test]
    async fn ten_megabytes_each_way_with_random_chunks() {
        const TOTAL: usize = 10 * 1024 * 1024;
        let f = fixture();
        let (mut server, client) = tls_pair(&f.server, &f.client).await;
        let echo = tokio::spawn(async move {
            let mut rng = Rng(7);
            let mut buf = vec![0u8; 100_000];
            loop {
                let want = rng.upto(buf.len());
                let n = server.read(&mut buf[..want]).await.unwrap();
                if n == 0 {
                    break;
                }
                server.write_all(&buf[..n]).await.unwrap();
                server.flush().await.unwrap();
            }
            server.shutdown().await.unwrap();
        });
        let data = Rng(42).bytes(TOTAL);
        let (mut rd, mut wr) = tokio::io::split(client);
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            let mut rng = Rng(99);
            let mut off = 0;
            while off < sent.len() {
                let n = rng.upto(100_000).min(sent.len() - off);
                wr.write_all(&sent[off..off + n]).await.unwrap();
                off += n;
            }
            wr.shutdown().await.unwrap();
        });
        let mut got = Vec::with_capacity(TOTAL);
        let mut rng = Rng(5);
        let mut buf = vec![0u8; 100_000];
        loop {
            let want = rng.upto(buf.len());
            // Ok(0) only on the server's close_notify.
            let n = rd.read(&mut buf[..want]).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        writer.await.unwrap();
        echo.await.unwrap();
        assert_eq!(got.len(), TOTAL);
        assert!(got == data, "echoed bytes differ");
    }

    #[tokio::test]
    async fn writes_bigger_than_a_record_are_split() {
        let f = fixture();
        let (mut server, mut client) = tls_pair(&f.server, &f.client).await;
        let big = Rng(3).bytes(200_000);
        // One poll_write takes several records' worth; the client's rustls
        // would refuse any record over 16 KiB.
        let n = server.write(&big).await.unwrap();
        assert!(n > 16 * 1024, "one write took only {n} bytes");
        server.write_all(&big[n..]).await.unwrap();
        // Vectored: a small header and a payload go out together.
        let header = [1u8, 2, 3, 4, 5];
        let bufs = [io::IoSlice::new(&header), io::IoSlice::new(&big[..30_000])];
        let m = server.write_vectored(&bufs).await.unwrap();
        assert_eq!(m, 16 * 1024);
        server.flush().await.unwrap();
        // Every plaintext byte went out, in records a little larger.
        let wire = server.wire_written();
        let plain = (big.len() + m) as u64;
        assert!(
            wire > plain && wire < plain + plain / 50,
            "{wire} for {plain}"
        );
        let mut got = vec![0u8; big.len() + m];
        client.read_exact(&mut got).await.unwrap();
        assert!(got[..big.len()] == big[..]);
        assert_eq!(&got[big.len()..big.len() + 5], &header);
        assert!(got[big.len() + 5..] == big[..m - 5]);
    }

    #[tokio::test]
    async fn close_notify_both_ways() {
        let f = fixture();
        let (mut server, mut client) = tls_pair(&f.server, &f.client).await;
        client.write_all(b"last words").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        // read_to_end succeeds only on close_notify, not on a bare FIN.
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"last words");
        // Half-closed: the server may still answer, then close.
        server.write_all(b"bye").await.unwrap();
        server.shutdown().await.unwrap();
        let mut back = Vec::new();
        // tokio-rustls reports UnexpectedEof unless close_notify came.
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"bye");
        let e = server.write_all(b"more").await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
    }

    #[tokio::test]
    async fn tcp_eof_without_close_notify_is_an_error() {
        let f = fixture();
        let (mut server, mut client) = tls_pair(&f.server, &f.client).await;
        client.get_mut().0.shutdown().await.unwrap();
        let mut buf = [0u8; 16];
        let e = server.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn garbage_instead_of_client_hello_fails() {
        let f = fixture();
        for garbage in [
            &b"GET / HTTP/1.1\r\nHost: relay\r\n\r\n"[..],
            // A handshake record header with an absurd length.
            &[0x16, 0x03, 0x01, 0xff, 0xff, 0, 0, 0][..],
            // A well-framed record holding no ClientHello.
            &[0x16, 0x03, 0x01, 0x00, 0x04, 0x63, 0x00, 0x00, 0x00][..],
        ] {
            let (s, mut c) = tcp_pair().await;
            c.write_all(garbage).await.unwrap();
            let r = timeout(Duration::from_secs(10), accept(s, Arc::clone(&f.server)))
                .await
                .expect("accept must not hang on garbage");
            let e = r.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
            // Whatever the client gets back is an alert record, then EOF.
            let mut back = Vec::new();
            let _ = c.read_to_end(&mut back).await;
            if let Some(&t) = back.first() {
                assert_eq!(t, 0x15, "expected an alert, got {back:?}");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn stalled_handshake_is_cut_by_the_callers_deadline() {
        let f = fixture();
        let (s, mut c) = tcp_pair().await;
        // The first bytes of a ClientHello record, then nothing.
        c.write_all(&[0x16, 0x03, 0x01, 0x00]).await.unwrap();
        let r = timeout(Duration::from_secs(10), accept(s, Arc::clone(&f.server))).await;
        assert!(
            r.is_err(),
            "accept finished: {:?}",
            r.map(|x| x.map(|_| ()))
        );
        drop(c);
    }

    #[tokio::test]
    async fn idle_after_a_burst_holds_no_buffers() {
        const BURST: usize = 1024 * 1024;
        let f = fixture();
        let (mut server, client) = tls_pair(&f.server, &f.client).await;
        assert_eq!(server.buffer_capacities(), [0, 0, 0]);
        let (mut rd, mut wr) = tokio::io::split(client);
        let data = Rng(11).bytes(BURST);
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            wr.write_all(&sent).await.unwrap();
            wr.flush().await.unwrap();
            wr
        });
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; BURST];
            rd.read_exact(&mut got).await.unwrap();
            (rd, got)
        });
        let mut buf = vec![0u8; 1000];
        let mut done = 0;
        let mut saw_plain = false;
        while done < BURST {
            let n = server.read(&mut buf).await.unwrap();
            assert!(n > 0);
            // Records are 16 KiB; a 1000-byte read leaves plaintext behind.
            saw_plain |= server.buffer_capacities()[1] > 0;
            server.write_all(&buf[..n]).await.unwrap();
            server.flush().await.unwrap();
            done += n;
        }
        assert!(saw_plain);
        let wr = writer.await.unwrap();
        let (rd, got) = reader.await.unwrap();
        assert!(got == data);
        // Idle: the read parks, and nothing is held.
        let mut b = [0u8; 256];
        assert!(
            timeout(Duration::from_millis(50), server.read(&mut b))
                .await
                .is_err()
        );
        assert_eq!(server.buffer_capacities(), [0, 0, 0]);
        drop((rd, wr));
    }

    #[tokio::test]
    async fn client_key_update_is_handled() {
        let f = fixture();
        let (mut server, mut client) = tls_pair(&f.server, &f.client).await;
        let mut buf = [0u8; 3];
        for round in 0..3u8 {
            // KeyUpdate(update_requested): the server must switch its read
            // keys, and answer with its own before its next record.
            client.get_mut().1.refresh_traffic_keys().unwrap();
            client.write_all(&[round; 3]).await.unwrap();
            client.flush().await.unwrap();
            server.read_exact(&mut buf).await.unwrap();
            assert_eq!(buf, [round; 3]);
            // The answer: a 27-byte KeyUpdate record (5 header + 5
            // message + 1 type + 16 tag), then the 25-byte data record.
            server.encrypt(&[round + 10; 3]).unwrap();
            assert_eq!(server.engine.out.len(), 27 + 25);
            server.flush().await.unwrap();
            client.read_exact(&mut buf).await.unwrap();
            assert_eq!(buf, [round + 10; 3]);
        }
    }

    /// A client whose application data rides in the same write as its
    /// Finished: the server must hand it out after the handshake.
    #[tokio::test]
    async fn data_with_the_last_handshake_flight_is_kept() {
        let f = fixture();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let client_cfg = Arc::clone(&f.client);
        let client = std::thread::spawn(move || {
            let mut sock = std::net::TcpStream::connect(addr).unwrap();
            let name = tls::server_name("faxgate-relay").unwrap();
            let mut conn = rustls::ClientConnection::new(client_cfg, name).unwrap();
            while conn.wants_write() {
                conn.write_tls(&mut sock).unwrap();
            }
            while conn.is_handshaking() {
                conn.read_tls(&mut sock).unwrap();
                conn.process_new_packets().unwrap();
            }
            // Finished is queued but unsent; the data joins it.
            conn.writer().write_all(b"early bird").unwrap();
            while conn.wants_write() {
                conn.write_tls(&mut sock).unwrap();
            }
            let mut back = [0u8; 10];
            let mut have = 0;
            while have < back.len() {
                conn.read_tls(&mut sock).unwrap();
                conn.process_new_packets().unwrap();
                match conn.reader().read(&mut back[have..]) {
                    Ok(n) => have += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("{e}"),
                }
            }
            back
        });
        let (tcp, _) = l.accept().await.unwrap();
        let mut server = accept(tcp, Arc::clone(&f.server)).await.unwrap();
        assert_eq!(
            server.engine.plain.len(),
            10,
            "the data should have come with the Finished"
        );
        let mut got = [0u8; 10];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"early bird");
        server.write_all(b"late reply").await.unwrap();
        server.flush().await.unwrap();
        let back = tokio::task::spawn_blocking(move || client.join().unwrap())
            .await
            .unwrap();
        assert_eq!(&back, b"late reply");
    }
}
