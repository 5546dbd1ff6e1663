//! The byte streams a relay connection runs on: plain TCP or TLS, either
//! side. One enum rather than `Box<dyn>` so that the plain-TCP path costs
//! no indirection, and so the bridge can pair a TLS device with a TCP one.

use crate::lean_tls::LeanTlsStream;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A connected stream, plain or TLS.
#[derive(Debug)]
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS accepted by the relay, on rustls's unbuffered API so that an
    /// idle connection holds no TLS buffers (see [`crate::lean_tls`]).
    TlsServer(Box<LeanTlsStream>),
    /// TLS opened by a device.
    TlsClient(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::TlsServer(s) => s.tcp(),
            Stream::TlsClient(s) => s.get_ref().0,
        }
    }

    /// Whether the stream is TLS.
    pub fn is_tls(&self) -> bool {
        !matches!(self, Stream::Plain(_))
    }

    /// Bytes the stream itself has moved to the socket beyond what its
    /// writes reported taken: the ciphertext of the relay's TLS
    /// ([`LeanTlsStream::wire_written`]); 0 where a write is the socket's.
    pub fn wire_progress(&self) -> u64 {
        match self {
            Stream::TlsServer(s) => s.wire_written(),
            _ => 0,
        }
    }
}

/// How many bytes of what was sent on `tcp` the peer has acknowledged
/// (Linux's `tcpi_bytes_acked`, kernel 4.1 and later): what the peer's
/// kernel took, however the writes on our side were batched. `None`
/// where the kernel does not say.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn bytes_acked(tcp: &TcpStream) -> Option<u64> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: tcp_info holds only integers, for which all zeroes is a
    // valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `info`, which is
    // that large, and stores in `len` how many it wrote.
    let rc = unsafe {
        libc::getsockopt(
            tcp.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    let needed = std::mem::offset_of!(libc::tcp_info, tcpi_bytes_acked) + 8;
    (rc == 0 && len as usize >= needed).then_some(info.tcpi_bytes_acked)
}

/// Not known here: only the relay's own writes count as progress.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn bytes_acked(_tcp: &TcpStream) -> Option<u64> {
    None
}

/// Keepalive probes sent before a silent peer is declared dead.
const KEEPALIVE_RETRIES: u32 = 3;

/// Turns on TCP keepalive so that a peer that vanished without a FIN
/// (a NAT that forgot us, a relay that leaks half-open sockets) is found
/// even while a session is quiet, and disables Nagle: frames are small
/// and latency matters for T.30. Both ends do this; the relay also sets
/// [`set_user_timeout`].
///
/// A device sets no TCP user timeout: Linux applies it to a window held
/// shut as well as to unacknowledged data, and inside a session the relay
/// holds a sender's window shut for as long as the receiver is slower
/// (backpressure, which the relay tolerates for a slow but steady
/// reader), so the device's kernel would end a healthy session. A device
/// finds a dead relay by its HOLD answers outside a session, by its
/// application's timers inside one (T.30's are seconds), and, for data
/// the relay stops acknowledging altogether, by `tcp_retries2`.
pub fn tune_socket(tcp: &TcpStream, idle: Duration) -> io::Result<()> {
    tcp.set_nodelay(true)?;
    let sock = socket2::SockRef::from(tcp);
    let (idle, interval) = keepalive_times(idle);
    let ka = socket2::TcpKeepalive::new()
        .with_time(idle)
        .with_interval(interval)
        .with_retries(KEEPALIVE_RETRIES);
    sock.set_tcp_keepalive(&ka)?;
    Ok(())
}

/// The relay's side of [`tune_socket`]: keepalive does not probe while
/// sent data waits for its ACK, so TCP_USER_TIMEOUT (Linux) bounds that
/// case too, at three hold intervals instead of the ~15 minutes of
/// `tcp_retries2`. Longer than the bridge's stall limit (2.5 holds),
/// because Linux also applies it to data held back by a zero window: a
/// receiver that takes nothing is ended by the relay, which tells the
/// other side (TERMINATE), not by the kernel; one that takes a little at a
/// time opens its window each time.
pub fn set_user_timeout(tcp: &TcpStream, idle: Duration) -> io::Result<()> {
    let (idle, interval) = keepalive_times(idle);
    #[cfg(any(target_os = "linux", target_os = "android"))]
    socket2::SockRef::from(tcp)
        .set_tcp_user_timeout(Some(dead_peer_time(idle, interval) + idle))?;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = (tcp, interval);
    Ok(())
}

/// Keepalive's idle time and probe interval for a hold interval of `idle`.
fn keepalive_times(idle: Duration) -> (Duration, Duration) {
    let idle = idle.max(Duration::from_secs(1));
    (idle, (idle / 3).max(Duration::from_secs(1)))
}

/// How long a peer may stay silent (no ACK, no keepalive answer) before
/// its connection is given up: the keepalive idle time plus its probes.
fn dead_peer_time(idle: Duration, interval: Duration) -> Duration {
    idle + interval * KEEPALIVE_RETRIES
}

macro_rules! dispatch {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Stream::Plain($s) => {
                let $s = Pin::new($s);
                $e
            }
            Stream::TlsServer($s) => {
                let $s = Pin::new(&mut **$s);
                $e
            }
            Stream::TlsClient($s) => {
                let $s = Pin::new(&mut **$s);
                $e
            }
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        dispatch!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        dispatch!(self, s => s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        dispatch!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::TlsServer(s) => s.is_write_vectored(),
            Stream::TlsClient(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        dispatch!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        dispatch!(self, s => s.poll_shutdown(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// The relay's end of a connection gives up on unacknowledged data
    /// after the keepalive's dead-peer time plus a hold interval (three
    /// hold intervals), not after tcp_retries2 (about 15 minutes); a
    /// device's end sets none (see [`tune_socket`]).
    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[tokio::test]
    async fn the_relay_sets_a_user_timeout_past_the_stall_limit_and_a_device_none() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (c, s) = tokio::join!(TcpStream::connect(l.local_addr().unwrap()), l.accept());
        let (c, s) = (c.unwrap(), s.unwrap().0);
        for (tcp, hold, want) in [(&c, 30, 90), (&s, 3, 9)] {
            tune_socket(tcp, Duration::from_secs(hold)).unwrap();
            let sock = socket2::SockRef::from(tcp);
            assert_eq!(sock.tcp_user_timeout().unwrap(), None, "a device's socket");
            set_user_timeout(tcp, Duration::from_secs(hold)).unwrap();
            let got = sock.tcp_user_timeout().unwrap();
            assert_eq!(got, Some(Duration::from_secs(want)), "hold {hold} s");
            assert!(sock.keepalive().unwrap());
        }
    }
}
