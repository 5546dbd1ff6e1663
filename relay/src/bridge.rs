//! The bridge: copies a session's bytes both ways between two
//! connections, in one task, without changing them.
//!
//! The relay reads only frame headers. A DATA header and its payload are
//! forwarded as they came, in as few writes as the buffer allows; the
//! payload is never parsed. TERMINATE (7 bytes) is forwarded too and ends
//! that direction; HOLD is swallowed (a device may keep the relay's idle
//! timer happy during a long quiet session). Anything else inside a
//! session is a protocol violation.
//!
//! Each direction has one bounded buffer (the source connection's read
//! buffer, from [`BRIDGE_BUF_MIN`] growing to at most [`BRIDGE_BUF`] while
//! reads fill it). It is read only when everything in it
//! has been written, so a slow receiver stops the relay reading from the
//! sender, whose TCP window then closes: backpressure end to end, and
//! nothing is dropped.
//!
//! A side the relay closes (kick, logout, shutdown) is told first, when
//! what the relay writes to it is at a frame boundary: TERMINATE with the
//! reason ends its session, and BYE with the same code explains the close
//! that follows (at most two seconds later, taken or not).
//!
//! When a side dies (EOF, I/O error, violation, kick) the other side gets
//! `TERMINATE(PEER_LOST)` (or the kick's code) if its stream is at a frame
//! boundary; if the dead side stopped in the middle of a DATA frame the
//! survivor's framing cannot be repaired and it is closed too. The bridge
//! then ends at once (a kicked connection is gone at once; one closed by
//! its user's LOGOUT first delivers what it sends up to its TERMINATE
//! while those bytes keep moving, see `on_kill`), leaving the survivor at
//! a frame boundary; its own task drops whatever DATA it still sends until
//! its TERMINATE and RELEASE.
//!
//! A side that takes none of the bytes the relay has for it for the
//! stall period (2.5 hold intervals, the relay's measure of a dead
//! connection; what its TCP acknowledges counts as taken, so a slow
//! reader is not one) has stopped reading: it is closed as a dead side. Without
//! this, a direction blocked on it would never read its source again, so
//! a source that hung up meanwhile would never be noticed.

use crate::connection::Connection;
use crate::protocol::{self, Code, Frame, FrameError, FrameType, HEADER_LEN};
use crate::transport::Stream;
use bytes::Buf;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::AsyncWrite;
use tokio_util::sync::CancellationToken;

/// Largest read buffer per direction while bridged. A direction starts
/// at [`BRIDGE_BUF_MIN`] and doubles whenever a read fills its buffer, so
/// only a bulk transfer grows to this; 1 MiB measured best on loopback
/// (256 KiB: ratio 0.74 to direct TCP, 512 KiB: 0.77-0.82, 1 MiB:
/// 0.80-0.92, 4 MiB: 0.71-0.91; see BENCHMARKS.md).
pub const BRIDGE_BUF: usize = 1024 * 1024;

/// The read buffer a direction starts with: plenty for T.38 fax, which
/// moves a few KiB per second.
pub const BRIDGE_BUF_MIN: usize = 64 * 1024;

/// How a side of the bridge came out of the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SideEnd {
    /// Both TERMINATEs were exchanged; the connection can be released.
    Clean,
    /// The connection is unusable and must be closed.
    Dead(Code),
    /// The side took none of the bytes the relay had for it for the stall
    /// period (it stopped reading); it was closed and its peer told
    /// `TERMINATE(PEER_LOST)`.
    Stalled,
}

/// The result of a bridged session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BridgeOutcome {
    /// The first side (the caller).
    pub a: SideEnd,
    /// The second side (the target).
    pub b: SideEnd,
}

/// One side of the bridge.
pub struct Side<'a> {
    /// The connection.
    pub conn: &'a mut Connection,
    /// Cancelled to close this side (kick, logout, shutdown).
    pub kill: &'a CancellationToken,
    /// The code to report when `kill` fires (read only then).
    pub kill_code: &'a (dyn Fn() -> Code + Sync),
    /// Bytes forwarded from this side to the other.
    pub sent: &'a AtomicU64,
}

impl std::fmt::Debug for Side<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Side")
            .field("conn", &self.conn)
            .field("sent", &self.sent)
            .finish_non_exhaustive()
    }
}

/// What a scan of buffered bytes found.
#[derive(Debug, Default, PartialEq, Eq)]
struct Scan {
    /// Bytes at the front to forward as they are.
    forward: usize,
    /// The forwarded bytes end with a TERMINATE.
    terminate: bool,
    /// Bytes at the front to drop (a HOLD, or a stale ACCEPT or REJECT).
    drop: usize,
}

/// Finds how much of `buf` can be forwarded. `in_data` carries the unread
/// payload of a DATA frame across calls. `fresh` says that nothing has
/// been forwarded from this side yet: an ACCEPT or REJECT then is the
/// device's answer to a CONNECT-NOTIFY that crossed its own CONNECT
/// (PROTOCOL.md), sent before it heard CONNECT-OK and read by the relay
/// only after the session was bridged, and is dropped like a HOLD.
fn scan(buf: &[u8], max_data: usize, in_data: &mut usize, fresh: bool) -> Result<Scan, FrameError> {
    let mut off = 0;
    loop {
        if *in_data > 0 {
            let take = (*in_data).min(buf.len() - off);
            off += take;
            *in_data -= take;
            if *in_data > 0 {
                return Ok(Scan {
                    forward: off,
                    ..Scan::default()
                });
            }
            continue;
        }
        let Some(h) = protocol::parse_header(&buf[off..], max_data)? else {
            return Ok(Scan {
                forward: off,
                ..Scan::default()
            });
        };
        match h.kind {
            FrameType::Data => {
                off += HEADER_LEN;
                *in_data = h.len;
            }
            FrameType::Terminate => {
                if h.len != 2 {
                    return Err(FrameError::Malformed {
                        kind: h.kind,
                        what: "TERMINATE payload must be 2 bytes",
                    });
                }
                if buf.len() - off < HEADER_LEN + 2 {
                    return Ok(Scan {
                        forward: off,
                        ..Scan::default()
                    });
                }
                return Ok(Scan {
                    forward: off + HEADER_LEN + 2,
                    terminate: true,
                    drop: 0,
                });
            }
            FrameType::Hold if off == 0 => {
                return Ok(Scan {
                    drop: if buf.len() >= HEADER_LEN + h.len {
                        HEADER_LEN + h.len
                    } else {
                        0
                    },
                    ..Scan::default()
                });
            }
            FrameType::Hold => {
                return Ok(Scan {
                    forward: off,
                    ..Scan::default()
                });
            }
            FrameType::Accept | FrameType::Reject if fresh && off == 0 => {
                let want = if h.kind == FrameType::Accept { 8 } else { 10 };
                if h.len != want {
                    return Err(FrameError::Malformed {
                        kind: h.kind,
                        what: "ACCEPT payload must be 8 bytes, REJECT 10",
                    });
                }
                return Ok(Scan {
                    drop: if buf.len() >= HEADER_LEN + h.len {
                        HEADER_LEN + h.len
                    } else {
                        0
                    },
                    ..Scan::default()
                });
            }
            kind => {
                return Err(FrameError::Malformed {
                    kind,
                    what: "only DATA, TERMINATE and HOLD may be sent inside a session",
                });
            }
        }
    }
}

/// Why a direction stopped.
#[derive(Debug)]
enum DirEnd {
    /// Its TERMINATE was forwarded (or dropped, when discarding).
    Terminated,
    /// The source closed, failed or broke the protocol.
    SourceDead(Code),
    /// Writing to the destination failed.
    DestDead,
}

#[derive(Debug)]
struct Dir {
    /// This direction's read buffer size, [`BRIDGE_BUF_MIN`]..=[`BRIDGE_BUF`].
    cap: usize,
    fwd: usize,
    in_data: usize,
    terminating: bool,
    dirty: bool,
    done: bool,
    /// Something (DATA or TERMINATE) has been forwarded from the source.
    forwarded: bool,
}

impl Default for Dir {
    fn default() -> Self {
        Self {
            cap: BRIDGE_BUF_MIN,
            fwd: 0,
            in_data: 0,
            terminating: false,
            dirty: false,
            done: false,
            forwarded: false,
        }
    }
}

impl Dir {
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut Connection,
        mut dst: Option<&mut Stream>,
        sent: &AtomicU64,
    ) -> Poll<DirEnd> {
        loop {
            if self.fwd > 0 {
                match dst.as_deref_mut() {
                    Some(d) => match ready!(Pin::new(d).poll_write(cx, &src.rbuf[..self.fwd])) {
                        Ok(0) | Err(_) => return Poll::Ready(DirEnd::DestDead),
                        Ok(n) => {
                            src.rbuf.advance(n);
                            self.fwd -= n;
                            self.dirty = true;
                            sent.fetch_add(n as u64, Ordering::Relaxed);
                        }
                    },
                    None => {
                        src.rbuf.advance(self.fwd);
                        self.fwd = 0;
                    }
                }
                continue;
            }
            if self.dirty {
                if let Some(d) = dst.as_deref_mut()
                    && ready!(Pin::new(d).poll_flush(cx)).is_err()
                {
                    return Poll::Ready(DirEnd::DestDead);
                }
                self.dirty = false;
            }
            if self.terminating {
                return Poll::Ready(DirEnd::Terminated);
            }
            match scan(&src.rbuf, src.max_data, &mut self.in_data, !self.forwarded) {
                Err(e) => {
                    tracing::warn!(error = %e, "Protocol violation inside a session; closing that side.");
                    return Poll::Ready(DirEnd::SourceDead(e.code()));
                }
                Ok(s) if s.drop > 0 => {
                    src.rbuf.advance(s.drop);
                    continue;
                }
                Ok(s) if s.forward > 0 => {
                    self.fwd = s.forward;
                    self.forwarded = true;
                    self.terminating = s.terminate;
                    continue;
                }
                Ok(_) => {}
            }
            if src.rbuf.capacity() - src.rbuf.len() < 4096 {
                src.rbuf
                    .reserve(self.cap - src.rbuf.len().min(self.cap / 2));
            }
            let spare = src.rbuf.capacity() - src.rbuf.len();
            match ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut src.stream),
                cx,
                &mut src.rbuf
            )) {
                Ok(0) | Err(_) => return Poll::Ready(DirEnd::SourceDead(Code::PeerLost)),
                // The sender had more waiting than we could take: fewer,
                // bigger reads and writes from now on.
                Ok(n) if n == spare && self.cap < BRIDGE_BUF => self.cap *= 2,
                Ok(_) => {}
            }
        }
    }
}

/// Frames the relay itself writes to a side: a TERMINATE to a survivor,
/// or a farewell to a side it closes.
#[derive(Debug)]
struct Inject {
    bytes: Vec<u8>,
    off: usize,
}

impl Inject {
    fn new(code: Code) -> Self {
        let c = code.to_u16().to_be_bytes();
        Self {
            bytes: vec![FrameType::Terminate as u8, 0, 0, 0, 2, c[0], c[1]],
            off: 0,
        }
    }

    /// TERMINATE(code) ends the session for the side's application, and
    /// BYE(code) then tells its connection why it is being closed.
    fn farewell(code: Code) -> Self {
        let mut out = bytes::BytesMut::new();
        protocol::encode_frame(
            &Frame::Bye {
                code,
                message: format!("connection closed by the relay: {code}"),
            },
            &mut out,
        );
        let mut inject = Self::new(code);
        inject.bytes.extend_from_slice(&out);
        inject
    }

    fn poll(&mut self, cx: &mut Context<'_>, dst: &mut Stream) -> Poll<io::Result<()>> {
        while self.off < self.bytes.len() {
            let n = ready!(Pin::new(&mut *dst).poll_write(cx, &self.bytes[self.off..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.off += n;
        }
        Pin::new(dst).poll_flush(cx)
    }
}

struct SideState<'s, 'a> {
    side: &'s mut Side<'a>,
    dead: Option<Code>,
    inject: Option<Inject>,
    /// The TERMINATE a side closed by the relay (kick, logout, shutdown)
    /// is told before its connection goes, flushed even though the side
    /// is dead.
    farewell: Option<Inject>,
    /// The side's user logged out (on another connection) before this
    /// side's TERMINATE was forwarded: it is closed once it has been, or
    /// when its bytes stop moving (see [`on_kill`]).
    leaving: bool,
    /// It stopped reading: it took none of the bytes waiting for it for
    /// the stall period.
    stalled: bool,
}

/// Bridges `a` and `b` until both have sent TERMINATE or died. After the
/// first TERMINATE, a side that moves no bytes for `terminate_timeout`
/// and has not answered with its own is closed. A side that takes none of
/// the bytes waiting for it for `stall_timeout` is closed at any time.
pub async fn run<'a>(
    a: &mut Side<'a>,
    b: &mut Side<'a>,
    terminate_timeout: Duration,
    stall_timeout: Duration,
) -> BridgeOutcome {
    let mut sa = SideState {
        side: a,
        dead: None,
        inject: None,
        farewell: None,
        leaving: false,
        stalled: false,
    };
    let mut sb = SideState {
        side: b,
        dead: None,
        inject: None,
        farewell: None,
        leaving: false,
        stalled: false,
    };
    let mut ab = Dir::default();
    let mut ba = Dir::default();
    let kill_a = sa.side.kill.clone();
    let kill_b = sb.side.kill.clone();
    let mut killed_a = std::pin::pin!(kill_a.cancelled());
    let mut killed_b = std::pin::pin!(kill_b.cancelled());
    let mut deadline: Option<ProgressDeadline> = None;
    let mut farewell_deadline: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let mut leave_deadline: Option<ProgressDeadline> = None;
    let mut stall_ab: Option<StallWatch> = None;
    let mut stall_ba: Option<StallWatch> = None;

    std::future::poll_fn(|cx| {
        loop {
            let mut progressed = false;
            // Forward what has arrived first, so that a kill finds a
            // TERMINATE already read as draining rather than unseen.
            progressed |= step(cx, &mut sa, &mut sb, &mut ab);
            progressed |= step(cx, &mut sb, &mut sa, &mut ba);
            if sa.dead.is_none() && !sa.leaving && killed_a.as_mut().poll(cx).is_ready() {
                on_kill(&mut sa, &ab, &ba);
                progressed = true;
            }
            if sb.dead.is_none() && !sb.leaving && killed_b.as_mut().poll(cx).is_ready() {
                on_kill(&mut sb, &ba, &ab);
                progressed = true;
            }
            for (s, outgoing, incoming) in [(&mut sa, &ab, &ba), (&mut sb, &ba, &ab)] {
                if s.leaving && s.dead.is_none() && outgoing.done {
                    killed(s, incoming);
                    progressed = true;
                }
            }
            if (sa.leaving && sa.dead.is_none()) || (sb.leaving && sb.dead.is_none()) {
                // A leaving side keeps going while its bytes still reach
                // its peer (however slowly the peer reads), up to the
                // terminate deadline; FAREWELL_TIMEOUT without progress
                // (an idle session, a stalled peer) closes it.
                let moved = [&sa, &sb]
                    .iter()
                    .filter(|s| s.leaving)
                    .map(|s| s.side.sent.load(Ordering::Relaxed))
                    .sum::<u64>();
                let d = leave_deadline.get_or_insert_with(|| {
                    ProgressDeadline::new(FAREWELL_TIMEOUT, Some(terminate_timeout), moved)
                });
                if d.poll(cx, moved).is_ready() {
                    // Its last bytes did not come in time: close it now.
                    if sa.leaving && sa.dead.is_none() {
                        killed(&mut sa, &ba);
                    }
                    if sb.leaving && sb.dead.is_none() {
                        killed(&mut sb, &ab);
                    }
                    progressed = true;
                }
            }
            progressed |= stall(cx, &ab, &sa, &mut sb, &mut stall_ab, stall_timeout);
            progressed |= stall(cx, &ba, &sb, &mut sa, &mut stall_ba, stall_timeout);
            progressed |= settle(&mut sa, &mut sb, &mut ab);
            progressed |= settle(&mut sb, &mut sa, &mut ba);
            for s in [&mut sa, &mut sb] {
                if let (None, Some(inj)) = (s.dead, s.inject.as_mut()) {
                    match inj.poll(cx, &mut s.side.conn.stream) {
                        Poll::Ready(Ok(())) => {
                            s.inject = None;
                            progressed = true;
                        }
                        Poll::Ready(Err(_)) => {
                            s.inject = None;
                            s.dead = Some(Code::PeerLost);
                            progressed = true;
                        }
                        Poll::Pending => {}
                    }
                }
            }
            for s in [&mut sa, &mut sb] {
                if let Some(f) = s.farewell.as_mut()
                    && f.poll(cx, &mut s.side.conn.stream).is_ready()
                {
                    s.farewell = None;
                    progressed = true;
                }
            }
            if sa.farewell.is_some() || sb.farewell.is_some() {
                let d = farewell_deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(FAREWELL_TIMEOUT)));
                if d.as_mut().poll(cx).is_ready() {
                    sa.farewell = None;
                    sb.farewell = None;
                    progressed = true;
                }
            }
            if sa.farewell.is_none()
                && sb.farewell.is_none()
                && !draining(&ab, &sb)
                && !draining(&ba, &sa)
                && finished(&sa, &ab)
                && finished(&sb, &ba)
                && (sa.dead.is_some() || sb.dead.is_some() || (ab.done && ba.done))
            {
                return Poll::Ready(());
            }
            // TERMINATE is a half-close: the side that still owes one may
            // go on sending for as long as its bytes keep moving (the peer
            // reads them); the deadline counts from the last byte moved.
            let moved = sa.side.sent.load(Ordering::Relaxed) + sb.side.sent.load(Ordering::Relaxed);
            if (ab.done || ba.done) && deadline.is_none() {
                deadline = Some(ProgressDeadline::new(terminate_timeout, None, moved));
                progressed = true;
            }
            if let Some(d) = deadline.as_mut()
                && d.poll(cx, moved).is_ready()
            {
                // Whoever still owes a TERMINATE is closed, and so is a
                // side that has not taken a drained one in time, or the
                // TERMINATE injected into it before this deadline.
                let stuck = [sa.inject.is_some(), sb.inject.is_some()];
                if !ab.done && sa.dead.is_none() {
                    sa.dead = Some(Code::Timeout);
                }
                if !ba.done && sb.dead.is_none() {
                    sb.dead = Some(Code::Timeout);
                }
                if draining(&ab, &sb) {
                    sb.dead = Some(Code::Timeout);
                }
                if draining(&ba, &sa) {
                    sa.dead = Some(Code::Timeout);
                }
                settle(&mut sa, &mut sb, &mut ab);
                settle(&mut sb, &mut sa, &mut ba);
                for (s, stuck) in [(&mut sa, stuck[0]), (&mut sb, stuck[1])] {
                    if stuck && s.inject.is_some() {
                        s.inject = None;
                        s.dead = Some(Code::Timeout);
                    }
                }
                // A survivor just told TERMINATE(TIMEOUT) by `settle` gets
                // FAREWELL_TIMEOUT to take it; then it is closed as well.
                d.extend(FAREWELL_TIMEOUT);
                progressed = true;
            }
            if !progressed {
                return Poll::Pending;
            }
        }
    })
    .await;

    let end = |s: &SideState<'_, '_>| match s.dead {
        None => SideEnd::Clean,
        Some(_) if s.stalled => SideEnd::Stalled,
        Some(code) => SideEnd::Dead(code),
    };
    BridgeOutcome {
        a: end(&sa),
        b: end(&sb),
    }
}

/// How long a side closed by the relay may take to accept its farewell
/// TERMINATE before it is closed without it.
const FAREWELL_TIMEOUT: Duration = Duration::from_secs(2);

/// A deadline `idle` after the last progress of a byte counter, and never
/// later than `cap` after it was made: the terminate deadline (no cap) and
/// a leaving side's (capped by the terminate deadline) both give a side
/// time for as long as its bytes keep moving.
struct ProgressDeadline {
    sleep: Pin<Box<tokio::time::Sleep>>,
    idle: Duration,
    cap: Option<tokio::time::Instant>,
    seen: u64,
}

impl ProgressDeadline {
    fn new(idle: Duration, cap: Option<Duration>, moved: u64) -> Self {
        let now = tokio::time::Instant::now();
        let cap = cap.map(|c| now + c);
        Self {
            sleep: Box::pin(tokio::time::sleep_until(Self::after(now, idle, cap))),
            idle,
            cap,
            seen: moved,
        }
    }

    fn after(
        now: tokio::time::Instant,
        idle: Duration,
        cap: Option<tokio::time::Instant>,
    ) -> tokio::time::Instant {
        cap.map_or(now + idle, |cap| cap.min(now + idle))
    }

    /// Moves the deadline to `idle` from now if `moved` has changed since
    /// the last look, then polls it.
    fn poll(&mut self, cx: &mut Context<'_>, moved: u64) -> Poll<()> {
        if moved != self.seen {
            self.seen = moved;
            let at = Self::after(tokio::time::Instant::now(), self.idle, self.cap);
            self.sleep.as_mut().reset(at);
        }
        self.sleep.as_mut().poll(cx)
    }

    /// After it has fired: fires again `by` from now (or on progress, `idle`
    /// after it).
    fn extend(&mut self, by: Duration) {
        self.sleep.as_mut().reset(tokio::time::Instant::now() + by);
    }
}

/// The state of [`stall`]'s watch over one direction.
struct StallWatch {
    /// Fires `limit / 2` after the last write of ours, then every
    /// `limit / 2`.
    look: ProgressDeadline,
    /// Our progress counter at the last look, and since when the
    /// destination has shown no progress of either kind (set at the
    /// first look after a write of ours: `limit / 2` before it).
    moved: u64,
    since: Option<tokio::time::Instant>,
    /// The destination socket's `tcpi_bytes_acked` at the last look.
    acked: Option<u64>,
}

impl StallWatch {
    fn new(limit: Duration, moved: u64) -> Self {
        Self {
            look: ProgressDeadline::new(limit / 2, None, moved),
            moved,
            since: None,
            acked: None,
        }
    }
}

/// `side`'s kill token fired. A LOGOUT (sent on another connection, so
/// it can overtake this one's last bytes, by as long as a slow peer takes
/// to read them) lets the side finish what it sends up to its TERMINATE
/// while those bytes keep reaching the peer, within the terminate
/// deadline; [`FAREWELL_TIMEOUT`] without progress closes it. A kick or
/// a shutdown closes it now.
fn on_kill(side: &mut SideState<'_, '_>, outgoing: &Dir, incoming: &Dir) {
    if (side.side.kill_code)() == Code::LoggedOut && !outgoing.done {
        side.leaving = true;
    } else {
        killed(side, incoming);
    }
}

/// `side`'s kill token fired (kick, logout, shutdown): it is dead from
/// now on, and is told why with a TERMINATE of the kill's code if what the
/// relay writes to it (`incoming`) is at a frame boundary.
fn killed(side: &mut SideState<'_, '_>, incoming: &Dir) {
    let code = (side.side.kill_code)();
    side.dead = Some(code);
    side.inject = None;
    if incoming.in_data == 0 && incoming.fwd == 0 && !incoming.done {
        side.farewell = Some(Inject::farewell(code));
    }
}

/// Whether `side` needs nothing more from the bridge: it is dead, or it
/// has been told of its peer's end (if it had to be) and what it sends is
/// at a frame boundary, so its own task can take over and drop the rest
/// until RELEASE. With both sides alive the caller also waits for both
/// TERMINATEs.
fn finished(side: &SideState<'_, '_>, outgoing: &Dir) -> bool {
    side.dead.is_some()
        || (side.inject.is_none()
            && (outgoing.done || (outgoing.in_data == 0 && outgoing.fwd == 0)))
}

/// Polls one direction `src -> dst`. Returns whether anything changed.
fn step(
    cx: &mut Context<'_>,
    src: &mut SideState<'_, '_>,
    dst: &mut SideState<'_, '_>,
    dir: &mut Dir,
) -> bool {
    if dir.done {
        return false;
    }
    let dst_stream = if dst.dead.is_none() {
        Some(&mut dst.side.conn.stream)
    } else {
        None
    };
    match dir.poll(cx, src.side.conn, dst_stream, src.side.sent) {
        Poll::Pending => false,
        Poll::Ready(DirEnd::Terminated) => {
            dir.done = true;
            true
        }
        Poll::Ready(DirEnd::SourceDead(code)) => {
            src.dead = Some(code);
            true
        }
        Poll::Ready(DirEnd::DestDead) => {
            // From now on this direction drops what it reads.
            dst.dead = Some(Code::PeerLost);
            true
        }
    }
}

/// Watches direction `src -> dst` for a stalled destination: one that
/// has bytes waiting for it (or a flush) and takes none of them for
/// `limit`. Such a side has stopped reading; it is marked dead (its
/// stream is mid-frame, so it is closed without a word), and [`settle`]
/// then tells its peer `TERMINATE(PEER_LOST)` or closes it. Returns
/// whether it fired.
///
/// Taking bytes is seen two ways. The relay's own writes: plaintext its
/// stream accepted, and for TLS the ciphertext it wrote meanwhile (a
/// record trickling out to a slow reader is progress too). And, because
/// the kernel wakes a writer to a full socket only once a third of the
/// buffer has drained (which for a slow but steady reader can take longer
/// than `limit`), the peer's TCP acknowledgements: every `limit / 2`
/// without a write, the socket's `tcpi_bytes_acked` is read, and a rise
/// counts as progress. Neither costs a system call while bytes move.
fn stall(
    cx: &mut Context<'_>,
    dir: &Dir,
    src: &SideState<'_, '_>,
    dst: &mut SideState<'_, '_>,
    watch: &mut Option<StallWatch>,
    limit: Duration,
) -> bool {
    if dir.done || dst.dead.is_some() || (dir.fwd == 0 && !dir.dirty) {
        *watch = None;
        return false;
    }
    let moved = src
        .side
        .sent
        .load(Ordering::Relaxed)
        .wrapping_add(dst.side.conn.stream.wire_progress());
    let w = watch.get_or_insert_with(|| StallWatch::new(limit, moved));
    // Each look comes `limit / 2` after our last write (the deadline moves
    // with `moved`) or after the last look. Nothing here reads the clock
    // until a look: this runs on every poll of a busy bridge.
    loop {
        if w.look.poll(cx, moved).is_pending() {
            return false;
        }
        let now = tokio::time::Instant::now();
        if w.since.is_none() || moved != w.moved {
            w.moved = moved;
            w.since = Some(now.checked_sub(limit / 2).unwrap_or(now));
            w.acked = None;
        }
        let since = w.since.get_or_insert(now);
        let acked = crate::transport::bytes_acked(dst.side.conn.stream.tcp());
        if acked.is_some() && w.acked.is_some() && acked != w.acked {
            *since = now;
        }
        w.acked = acked;
        if now.duration_since(*since) >= limit {
            break;
        }
        w.look.extend(limit / 2);
    }
    *watch = None;
    tracing::warn!(
        stalled_peer = ?dst.side.conn.stream.tcp().peer_addr().ok(),
        waiting = dir.fwd,
        stall_ms = limit.as_millis() as u64,
        "A side took no bytes for 2.5 hold intervals; closing it and ending the session."
    );
    dst.dead = Some(Code::PeerLost);
    dst.stalled = true;
    dst.inject = None;
    true
}

/// Once `src` is dead, its direction ends and `dst` is told. The other
/// direction goes on reading `dst` and dropping the bytes (a dead
/// destination means discard) until `dst`'s own TERMINATE.
fn settle(src: &mut SideState<'_, '_>, dst: &mut SideState<'_, '_>, dir: &mut Dir) -> bool {
    let Some(code) = src.dead else {
        return false;
    };
    src.inject = None;
    if dir.done || draining(dir, dst) {
        return false;
    }
    dir.done = true;
    let mid_frame = dir.in_data > 0 || dir.fwd > 0;
    after_death(dst, mid_frame, code);
    true
}

/// Whether `dir` holds its source's TERMINATE and still forwards it (and
/// the data before it) to a live destination. The relay received those
/// bytes whole, so a source that is closed meanwhile (a LOGOUT right after
/// its session ended, a kick) does not take them from its peer.
fn draining(dir: &Dir, dst: &SideState<'_, '_>) -> bool {
    dir.terminating && !dir.done && dst.dead.is_none()
}

/// The peer of a dead side learns of it by an injected TERMINATE, unless
/// its stream was left inside a DATA frame, in which case it is closed.
fn after_death(survivor: &mut SideState<'_, '_>, mid_frame: bool, code: Code) {
    if survivor.dead.is_some() {
        return;
    }
    if mid_frame {
        survivor.dead = Some(Code::PeerLost);
    } else {
        let code = if code == Code::Normal {
            Code::PeerLost
        } else {
            code
        };
        survivor.inject = Some(Inject::new(code));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::data_header;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    /// A connected loopback pair: (the relay's end, the device's end).
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (c, s) = tokio::join!(TcpStream::connect(l.local_addr().unwrap()), l.accept());
        (s.unwrap().0, c.unwrap())
    }

    /// Bridges `a` and `b` with `a` already killed with `code` (as by a
    /// LOGOUT or a kick), the terminate deadline 30 s; then closes both
    /// connections, as the server does after the bridge.
    async fn bridge_killed_side(a: Connection, b: Connection, code: Code) -> BridgeOutcome {
        let (mut a, mut b) = (a, b);
        let (kill_a, kill_b) = (CancellationToken::new(), CancellationToken::new());
        kill_a.cancel();
        let (sent_a, sent_b) = (AtomicU64::new(0), AtomicU64::new(0));
        let kill_code = move || code;
        run(
            &mut Side {
                conn: &mut a,
                kill: &kill_a,
                kill_code: &kill_code,
                sent: &sent_a,
            },
            &mut Side {
                conn: &mut b,
                kill: &kill_b,
                kill_code: &kill_code,
                sent: &sent_b,
            },
            Duration::from_secs(30),
            Duration::from_secs(60),
        )
        .await
    }

    /// A caller whose DATA and TERMINATE the relay has read whole, and
    /// who is then closed by the relay (a LOGOUT right after its session,
    /// a kick), still has them delivered: its peer reads every byte and
    /// TERMINATE(NORMAL), not a bare close. The peer does not read at
    /// first, so the forward is still in progress when the kill is seen.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_side_closed_after_its_terminate_still_delivers_it() {
        // A LOGOUT lets the side finish; a kick closes it at once, but
        // what it already sent whole is still drained to the peer.
        for code in [Code::LoggedOut, Code::Kicked] {
            closed_after_terminate(code).await;
        }
    }

    async fn closed_after_terminate(code: Code) {
        const PAYLOAD: usize = 8 << 20;
        let (relay_a, _device_a) = pair().await;
        let (relay_b, mut device_b) = pair().await;
        socket2::SockRef::from(&device_b)
            .set_recv_buffer_size(64 * 1024)
            .unwrap();
        let mut a = Connection::new(Stream::Plain(relay_a), PAYLOAD);
        let payload: Vec<u8> = (0..PAYLOAD).map(|i| (i % 251) as u8).collect();
        a.rbuf.extend_from_slice(&data_header(PAYLOAD));
        a.rbuf.extend_from_slice(&payload);
        a.rbuf
            .extend_from_slice(&[FrameType::Terminate as u8, 0, 0, 0, 2, 0, 0]);
        let b = Connection::new(Stream::Plain(relay_b), PAYLOAD);
        let reader = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let mut got = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            while got.len() < HEADER_LEN + PAYLOAD + HEADER_LEN + 2 {
                let n = device_b.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            got
        });
        let outcome = bridge_killed_side(a, b, code).await;
        let got = tokio::time::timeout(Duration::from_secs(60), reader)
            .await
            .expect("the peer was neither served nor closed")
            .unwrap();
        assert_eq!(
            got.len(),
            HEADER_LEN + PAYLOAD + HEADER_LEN + 2,
            "{code}: the peer got a bare close"
        );
        assert_eq!(&got[..HEADER_LEN], &data_header(PAYLOAD));
        assert!(
            got[HEADER_LEN..HEADER_LEN + PAYLOAD] == payload[..],
            "payload changed"
        );
        assert_eq!(
            &got[HEADER_LEN + PAYLOAD..],
            &[FrameType::Terminate as u8, 0, 0, 0, 2, 0, 0],
            "TERMINATE(NORMAL) as the caller sent it"
        );
        assert_eq!(outcome.a, SideEnd::Dead(code));
        assert_eq!(outcome.b, SideEnd::Clean, "{code}: {outcome:?}");
    }

    /// A LOGOUT that overtakes a session's last bytes, while a slow peer
    /// takes longer than FAREWELL_TIMEOUT to read them (they are still in
    /// the side's socket, not in the relay), lets them and the TERMINATE
    /// through as long as they keep moving. A kick in the same position
    /// cuts them, and so does a LOGOUT when the peer stops reading.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_logout_lets_a_slow_peer_take_the_last_bytes() {
        use Code::{Kicked, LoggedOut};
        for (code, stall) in [(LoggedOut, false), (Kicked, false), (LoggedOut, true)] {
            logout_with_slow_peer(code, stall).await;
        }
    }

    async fn logout_with_slow_peer(code: Code, stall: bool) {
        const PAYLOAD: usize = 4 << 20;
        let full = HEADER_LEN + PAYLOAD + HEADER_LEN + 2;
        let (relay_a, mut device_a) = pair().await;
        let (relay_b, mut device_b) = pair().await;
        // Small socket buffers: most of the payload waits in the sender
        // until the peer reads it.
        socket2::SockRef::from(&device_a)
            .set_send_buffer_size(64 * 1024)
            .unwrap();
        socket2::SockRef::from(&relay_a)
            .set_recv_buffer_size(64 * 1024)
            .unwrap();
        socket2::SockRef::from(&relay_b)
            .set_send_buffer_size(64 * 1024)
            .unwrap();
        socket2::SockRef::from(&device_b)
            .set_recv_buffer_size(64 * 1024)
            .unwrap();
        let payload: Vec<u8> = (0..PAYLOAD).map(|i| (i % 251) as u8).collect();
        let mut wire = data_header(PAYLOAD).to_vec();
        wire.extend_from_slice(&payload);
        wire.extend_from_slice(&[FrameType::Terminate as u8, 0, 0, 0, 2, 0, 0]);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            // The relay may close this side before it takes it all.
            let _ = device_a.write_all(&wire).await;
            device_a
        });
        let a = Connection::new(Stream::Plain(relay_a), PAYLOAD);
        let b = Connection::new(Stream::Plain(relay_b), PAYLOAD);
        let reader = tokio::spawn(async move {
            // 32 KiB every 20 ms: 1.6 MB/s, about 2.6 s for the whole
            // payload, longer than FAREWELL_TIMEOUT. A stalled peer
            // stops for 3 s after its first read.
            let started = tokio::time::Instant::now();
            let mut got = Vec::new();
            let mut buf = vec![0u8; 32 * 1024];
            while got.len() < full {
                if stall && !got.is_empty() && started.elapsed() < Duration::from_secs(3) {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                }
                match device_b.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (got, started.elapsed())
        });
        let outcome = bridge_killed_side(a, b, code).await;
        let (got, took) = tokio::time::timeout(Duration::from_secs(60), reader)
            .await
            .expect("the peer was neither served nor closed")
            .unwrap();
        drop(writer.await.unwrap());
        assert_eq!(outcome.a, SideEnd::Dead(code));
        let case = format!("{code}, stalled peer: {stall}");
        if code == Code::LoggedOut && !stall {
            assert!(
                took > FAREWELL_TIMEOUT,
                "{case}: the peer was not slow ({took:?})"
            );
            assert_eq!(got.len(), full, "{case}: the peer lost the session's tail");
            assert!(got[HEADER_LEN..HEADER_LEN + PAYLOAD] == payload[..]);
            assert_eq!(
                &got[HEADER_LEN + PAYLOAD..],
                &[FrameType::Terminate as u8, 0, 0, 0, 2, 0, 0]
            );
            assert_eq!(outcome.b, SideEnd::Clean, "{case}: {outcome:?}");
        } else {
            assert!(
                got.len() < HEADER_LEN + PAYLOAD,
                "{case}: the session should have been cut, but the peer got {} bytes",
                got.len()
            );
        }
    }

    /// TERMINATE is a half-close: after A ends its half at once, B goes on
    /// sending for three times the terminate deadline, and all of it, then
    /// B's TERMINATE, reaches A. When B instead falls silent without a
    /// TERMINATE, it is closed one deadline after its last byte.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_deadline_after_a_terminate_counts_from_the_last_byte() {
        use tokio::io::AsyncWriteExt;
        const DEADLINE: Duration = Duration::from_millis(600);
        const TERMINATE: [u8; 7] = [FrameType::Terminate as u8, 0, 0, 0, 2, 0, 0];
        for ends in [true, false] {
            let (relay_a, mut device_a) = pair().await;
            let (relay_b, mut device_b) = pair().await;
            device_a.write_all(&TERMINATE).await.unwrap();
            let chunk: Vec<u8> = (0..4096).map(|i| (i % 249) as u8).collect();
            let mut frame = data_header(chunk.len()).to_vec();
            frame.extend_from_slice(&chunk);
            let sent_frames = 18; // one every 100 ms: 1.8 s, three deadlines
            let writer = tokio::spawn(async move {
                let mut last = tokio::time::Instant::now();
                for _ in 0..sent_frames {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    device_b.write_all(&frame).await.unwrap();
                    last = tokio::time::Instant::now();
                }
                if ends {
                    device_b.write_all(&TERMINATE).await.unwrap();
                }
                (device_b, last)
            });
            let reader = tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match device_a.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                got
            });
            let mut a = Connection::new(Stream::Plain(relay_a), 1 << 20);
            let mut b = Connection::new(Stream::Plain(relay_b), 1 << 20);
            let (kill_a, kill_b) = (CancellationToken::new(), CancellationToken::new());
            let (sent_a, sent_b) = (AtomicU64::new(0), AtomicU64::new(0));
            let never = || Code::Normal;
            let outcome = run(
                &mut Side {
                    conn: &mut a,
                    kill: &kill_a,
                    kill_code: &never,
                    sent: &sent_a,
                },
                &mut Side {
                    conn: &mut b,
                    kill: &kill_b,
                    kill_code: &never,
                    sent: &sent_b,
                },
                DEADLINE,
                Duration::from_secs(60),
            )
            .await;
            let ended = tokio::time::Instant::now();
            drop((a, b));
            let (_device_b, last) = writer.await.unwrap();
            let got = reader.await.unwrap();
            let data = sent_frames * (HEADER_LEN + chunk.len());
            assert!(
                got.len() >= data,
                "ends {ends}: A got {} of {data} bytes",
                got.len()
            );
            assert_eq!(
                sent_b.load(Ordering::Relaxed),
                data as u64 + u64::from(ends) * 7
            );
            if ends {
                assert_eq!(
                    outcome,
                    BridgeOutcome {
                        a: SideEnd::Clean,
                        b: SideEnd::Clean
                    }
                );
                assert_eq!(&got[data..], &TERMINATE, "B's own TERMINATE last");
            } else {
                assert_eq!(outcome.b, SideEnd::Dead(Code::Timeout), "{outcome:?}");
                assert!(
                    ended.duration_since(last) >= DEADLINE,
                    "B was closed {:?} after its last byte",
                    ended.duration_since(last)
                );
                // A is told why: TERMINATE(TIMEOUT).
                let timeout = Code::Timeout.to_u16().to_be_bytes();
                assert_eq!(
                    &got[data..],
                    &[
                        FrameType::Terminate as u8,
                        0,
                        0,
                        0,
                        2,
                        timeout[0],
                        timeout[1]
                    ]
                );
            }
        }
    }

    #[test]
    fn scan_forwards_data_and_stops_after_terminate() {
        let mut buf = Vec::new();
        buf.extend_from_slice(&data_header(3));
        buf.extend_from_slice(b"abc");
        buf.extend_from_slice(&[0x81, 0, 0, 0, 2, 0, 0]);
        buf.extend_from_slice(&[0x08, 0, 0, 0, 0]); // RELEASE, not forwarded
        let mut in_data = 0;
        let s = scan(&buf, 1024, &mut in_data, false).unwrap();
        assert_eq!(s.forward, 15);
        assert!(s.terminate);
    }

    #[test]
    fn scan_handles_split_payload_and_partial_header() {
        let mut in_data = 0;
        let mut buf = Vec::new();
        buf.extend_from_slice(&data_header(10));
        buf.extend_from_slice(b"01234");
        let s = scan(&buf, 1024, &mut in_data, false).unwrap();
        assert_eq!((s.forward, in_data), (10, 5));
        let rest = [b'5', b'6', b'7', b'8', b'9', 0x80, 0, 0];
        let s = scan(&rest, 1024, &mut in_data, false).unwrap();
        assert_eq!((s.forward, in_data), (5, 0), "partial header waits");
    }

    #[test]
    fn scan_drops_hold_only_at_front_and_rejects_control_frames() {
        let mut in_data = 0;
        let hold = [0x03, 0, 0, 0, 4, 0, 0, 0, 1];
        assert_eq!(scan(&hold, 1024, &mut in_data, false).unwrap().drop, 9);
        let mut buf = data_header(1).to_vec();
        buf.push(b'x');
        buf.extend_from_slice(&hold);
        assert_eq!(scan(&buf, 1024, &mut in_data, false).unwrap().forward, 6);
        let list = [0x04, 0, 0, 0, 0];
        assert!(scan(&list, 1024, &mut in_data, false).is_err());
        let big = data_header(5000);
        assert!(scan(&big, 1024, &mut in_data, false).is_err());
    }

    #[test]
    fn scan_drops_a_stale_answer_only_before_the_first_forward() {
        let mut in_data = 0;
        let reject = [0x07, 0, 0, 0, 10, 0, 0, 0, 0, 0, 0, 0, 5, 0, 9];
        let accept = [0x06, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 5];
        assert_eq!(scan(&reject, 1024, &mut in_data, true).unwrap().drop, 15);
        assert_eq!(scan(&accept, 1024, &mut in_data, true).unwrap().drop, 13);
        assert_eq!(
            scan(&accept[..6], 1024, &mut in_data, true).unwrap(),
            Scan::default(),
            "a partial answer waits"
        );
        assert!(scan(&reject, 1024, &mut in_data, false).is_err());
        assert!(scan(&accept, 1024, &mut in_data, false).is_err());
        let short = [0x06, 0, 0, 0, 2, 0, 0];
        assert!(scan(&short, 1024, &mut in_data, true).is_err());
    }
}
