//! A stream paired with a read buffer, speaking frames. Both the server
//! and the client use it; the bridge borrows its stream and buffer.

use crate::protocol::{self, Frame, FrameError, HEADER_LEN};
use crate::transport::Stream;
use bytes::BytesMut;
use std::io;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Why a connection could not deliver a frame.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The socket failed.
    #[error("connection I/O failed: {0}")]
    Io(#[from] io::Error),
    /// The peer sent bytes that are not a valid frame.
    #[error("protocol violation: {0}")]
    Frame(#[from] FrameError),
    /// The peer closed the connection in the middle of a frame.
    #[error("connection closed in the middle of a frame ({0} bytes buffered)")]
    Truncated(usize),
}

impl ConnError {
    /// The code and message to answer the peer with when the error is the
    /// peer's fault: a bad frame, or a frame cut off by the peer's close.
    /// `None` for I/O failures, where there is no one to tell.
    pub fn protocol_error(&self) -> Option<(protocol::Code, String)> {
        match self {
            ConnError::Frame(e) => Some((e.code(), e.to_string())),
            ConnError::Truncated(_) => Some((protocol::Code::BadFrame, self.to_string())),
            ConnError::Io(_) => None,
        }
    }
}

/// The initial read buffer. Idle connections hold only this much, which
/// keeps a logged-in idle device cheap; a big frame grows it and
/// [`Connection::shrink`] gives the memory back.
const IDLE_BUF: usize = 256;

/// A framed connection.
#[derive(Debug)]
pub struct Connection {
    /// The byte stream.
    pub stream: Stream,
    /// Bytes read but not yet consumed.
    pub rbuf: BytesMut,
    /// Largest DATA payload accepted from the peer.
    pub max_data: usize,
}

impl Connection {
    /// Wraps a stream.
    pub fn new(stream: Stream, max_data: usize) -> Self {
        Self {
            stream,
            rbuf: BytesMut::new(),
            max_data,
        }
    }

    /// Reads until the preamble is complete; consumes it.
    pub async fn read_preamble(&mut self) -> Result<(), ConnError> {
        loop {
            if let Some(n) = protocol::check_preamble(&self.rbuf)? {
                let _ = self.rbuf.split_to(n);
                return Ok(());
            }
            self.fill().await?;
        }
    }

    /// Reads the next frame. `Ok(None)` means the peer closed cleanly
    /// between frames.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>, ConnError> {
        loop {
            if let Some((frame, used)) = protocol::parse_frame(&self.rbuf, self.max_data)? {
                let _ = self.rbuf.split_to(used);
                return Ok(Some(frame));
            }
            if self.fill().await? == 0 {
                return if self.rbuf.is_empty() {
                    Ok(None)
                } else {
                    Err(ConnError::Truncated(self.rbuf.len()))
                };
            }
        }
    }

    /// Reads more bytes into the buffer, growing it only as far as the
    /// frame being read needs.
    async fn fill(&mut self) -> Result<usize, ConnError> {
        let want = match protocol::parse_header(&self.rbuf, self.max_data)? {
            Some(h) => (HEADER_LEN + h.len).saturating_sub(self.rbuf.len()),
            None => IDLE_BUF,
        };
        self.rbuf.reserve(want.clamp(1, 64 * 1024));
        Ok(self.stream.read_buf(&mut self.rbuf).await?)
    }

    /// Encodes and writes one frame, then flushes.
    pub async fn write_frame(&mut self, frame: &Frame) -> io::Result<()> {
        let mut out = BytesMut::with_capacity(64);
        protocol::encode_frame(frame, &mut out);
        self.stream.write_all(&out).await?;
        self.stream.flush().await
    }

    /// Drops spare read-buffer capacity after a session or a big frame.
    pub fn shrink(&mut self) {
        if self.rbuf.capacity() > 4 * IDLE_BUF {
            self.rbuf = BytesMut::from(&self.rbuf[..]);
        }
    }
}
