//! The relay wire protocol, shared by server and client. Pure: bytes in,
//! frames out, and back. `relay/PROTOCOL.md` is the normative text; this
//! module is its implementation.
//!
//! Every connection starts with the 5-byte [`PREAMBLE`] from the client.
//! Then both sides exchange frames: a 1-byte type, a 4-byte big-endian
//! payload length, and the payload. Strings are a 2-byte length and UTF-8.
//!
//! Inside a bridged session only [`Frame::Data`] and [`Frame::Terminate`]
//! (and HOLD, which the relay swallows) travel. The relay reads the 5-byte
//! header of each frame and forwards the header and payload unchanged, so
//! it finds TERMINATE without ever looking inside application bytes.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use faxgate_config::Secret;
use std::fmt;

/// Sent by the client as the first bytes of every connection.
pub const PREAMBLE: [u8; 5] = *b"FGRL\x01";
/// The protocol version carried in the last byte of [`PREAMBLE`].
pub const VERSION: u8 = 1;
/// Bytes in a frame header: type (1) and payload length (4).
pub const HEADER_LEN: usize = 5;
/// Largest payload of any frame other than DATA.
pub const MAX_CONTROL_PAYLOAD: usize = 64 * 1024;
/// Largest DATA payload this implementation ever sends.
pub const MAX_DATA_PAYLOAD: usize = 1 << 20;
/// Length of a resume token.
pub const TOKEN_LEN: usize = 32;
/// Longest user ID, in bytes.
pub const MAX_USER_LEN: usize = 64;

/// Frame type codes. Client-to-relay requests are 0x01..0x3f, relay
/// replies and notices 0x40..0x7f, session frames (both ways) 0x80..
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameType {
    Login = 0x01,
    Resume = 0x02,
    Hold = 0x03,
    List = 0x04,
    Connect = 0x05,
    Accept = 0x06,
    Reject = 0x07,
    Release = 0x08,
    Logout = 0x09,
    LoginOk = 0x41,
    HoldAck = 0x42,
    ListResult = 0x43,
    ConnectOk = 0x44,
    ConnectNotify = 0x45,
    NotifyCancel = 0x46,
    Bye = 0x47,
    Err = 0x4f,
    Data = 0x80,
    Terminate = 0x81,
}

impl FrameType {
    /// Maps a type byte to a known type.
    pub fn from_u8(b: u8) -> Option<Self> {
        use FrameType::*;
        Some(match b {
            0x01 => Login,
            0x02 => Resume,
            0x03 => Hold,
            0x04 => List,
            0x05 => Connect,
            0x06 => Accept,
            0x07 => Reject,
            0x08 => Release,
            0x09 => Logout,
            0x41 => LoginOk,
            0x42 => HoldAck,
            0x43 => ListResult,
            0x44 => ConnectOk,
            0x45 => ConnectNotify,
            0x46 => NotifyCancel,
            0x47 => Bye,
            0x4f => Err,
            0x80 => Data,
            0x81 => Terminate,
            _ => return None,
        })
    }
}

/// Reason codes carried by ERR, REJECT, TERMINATE and BYE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    /// Normal end (TERMINATE, BYE after LOGOUT).
    Normal,
    /// The bytes were not a valid frame.
    BadFrame,
    /// The preamble named a version this relay does not speak.
    UnsupportedVersion,
    /// A frame was longer than allowed.
    FrameTooLarge,
    /// Wrong password, unknown user, disabled user or bad token: one code,
    /// so a client cannot tell which.
    AuthFailed,
    /// Too many failed logins from this address or for this user.
    RateLimited,
    /// The user already holds the most connections allowed.
    TooManyConnections,
    /// Too many connections are in the handshake.
    TooManyPending,
    /// CONNECT: the target is not logged in.
    NotLoggedIn,
    /// CONNECT: the target has no vacant connection.
    Busy,
    /// CONNECT: the ACL does not allow it.
    Forbidden,
    /// A deadline passed (CONNECT answer, handshake, TERMINATE answer).
    Timeout,
    /// CONNECT: the target rejected the demand.
    Rejected,
    /// The handshake did not complete in time.
    HandshakeTimeout,
    /// The frame is valid but not allowed in the connection's state.
    UnexpectedFrame,
    /// The relay is shutting down.
    Shutdown,
    /// The peer's connection was lost during a session.
    PeerLost,
    /// An admin kicked the user.
    Kicked,
    /// The user logged out (from any connection).
    LoggedOut,
    /// The connection was silent for too long.
    IdleTimeout,
    /// The relay failed internally; the client may retry.
    Internal,
    /// A code this implementation does not know.
    Other(u16),
}

impl Code {
    /// The wire value.
    pub fn to_u16(self) -> u16 {
        use Code::*;
        match self {
            Normal => 0,
            BadFrame => 1,
            UnsupportedVersion => 2,
            FrameTooLarge => 3,
            AuthFailed => 4,
            RateLimited => 5,
            TooManyConnections => 6,
            TooManyPending => 7,
            NotLoggedIn => 8,
            Busy => 9,
            Forbidden => 10,
            Timeout => 11,
            Rejected => 12,
            HandshakeTimeout => 13,
            UnexpectedFrame => 14,
            Shutdown => 15,
            PeerLost => 16,
            Kicked => 17,
            LoggedOut => 18,
            IdleTimeout => 19,
            Internal => 20,
            Other(v) => v,
        }
    }

    /// Maps a wire value; unknown values are kept as [`Code::Other`].
    pub fn from_u16(v: u16) -> Self {
        use Code::*;
        match v {
            0 => Normal,
            1 => BadFrame,
            2 => UnsupportedVersion,
            3 => FrameTooLarge,
            4 => AuthFailed,
            5 => RateLimited,
            6 => TooManyConnections,
            7 => TooManyPending,
            8 => NotLoggedIn,
            9 => Busy,
            10 => Forbidden,
            11 => Timeout,
            12 => Rejected,
            13 => HandshakeTimeout,
            14 => UnexpectedFrame,
            15 => Shutdown,
            16 => PeerLost,
            17 => Kicked,
            18 => LoggedOut,
            19 => IdleTimeout,
            20 => Internal,
            v => Other(v),
        }
    }

    /// The name used in PROTOCOL.md and in logs.
    pub fn name(self) -> &'static str {
        use Code::*;
        match self {
            Normal => "NORMAL",
            BadFrame => "BAD_FRAME",
            UnsupportedVersion => "UNSUPPORTED_VERSION",
            FrameTooLarge => "FRAME_TOO_LARGE",
            AuthFailed => "AUTH_FAILED",
            RateLimited => "RATE_LIMITED",
            TooManyConnections => "TOO_MANY_CONNECTIONS",
            TooManyPending => "TOO_MANY_PENDING",
            NotLoggedIn => "NOT_LOGGED_IN",
            Busy => "BUSY",
            Forbidden => "FORBIDDEN",
            Timeout => "TIMEOUT",
            Rejected => "REJECTED",
            HandshakeTimeout => "HANDSHAKE_TIMEOUT",
            UnexpectedFrame => "UNEXPECTED_FRAME",
            Shutdown => "SHUTDOWN",
            PeerLost => "PEER_LOST",
            Kicked => "KICKED",
            LoggedOut => "LOGGED_OUT",
            IdleTimeout => "IDLE_TIMEOUT",
            Internal => "INTERNAL",
            Other(_) => "OTHER",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Code::Other(v) => write!(f, "OTHER({v})"),
            c => f.write_str(c.name()),
        }
    }
}

/// One logged-in user as LIST reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PresenceEntry {
    /// The user ID.
    pub user: String,
    /// Connections that could take a CONNECT-NOTIFY now.
    pub vacant: u16,
    /// All connections of the user.
    pub connections: u16,
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Log in with a password (first connection of a device).
    Login {
        user: String,
        password: Secret<String>,
        /// Free text naming the device software, for the relay's logs.
        client: String,
    },
    /// Log in a spare connection with the token from LOGIN-OK.
    Resume {
        user: String,
        token: Secret<[u8; TOKEN_LEN]>,
    },
    /// Login accepted.
    LoginOk {
        conn_id: u64,
        hold_interval_ms: u32,
        max_connections: u16,
        /// Present after LOGIN, absent after RESUME.
        token: Option<Secret<[u8; TOKEN_LEN]>>,
    },
    /// A request failed; `code` says why.
    Err { code: Code, message: String },
    /// Keep-alive, sent by the device every hold interval.
    Hold { seq: u32 },
    /// The relay's answer to HOLD, echoing `seq`.
    HoldAck { seq: u32 },
    /// Ask for the logged-in users this user may see.
    List,
    /// Answer to LIST.
    ListResult { users: Vec<PresenceEntry> },
    /// Ask to be bridged to `target`'s vacant connection.
    Connect { target: String },
    /// The session is bridged; sent to both sides.
    ConnectOk { session_id: u64, peer: String },
    /// `from` asks for a session on this connection.
    ConnectNotify { session_id: u64, from: String },
    /// The relay withdrew a CONNECT-NOTIFY (it timed out or the caller left).
    NotifyCancel { session_id: u64 },
    /// The target takes the session.
    Accept { session_id: u64 },
    /// The target refuses the session.
    Reject { session_id: u64, code: Code },
    /// Application bytes inside a session, forwarded unchanged.
    Data(Bytes),
    /// This side sends no more DATA in the session.
    Terminate { code: Code },
    /// After the session, this connection is vacant again.
    Release,
    /// Close all of this user's connections.
    Logout,
    /// The relay closes this connection, saying why.
    Bye { code: Code, message: String },
}

impl Frame {
    /// The type byte of this frame.
    pub fn frame_type(&self) -> FrameType {
        match self {
            Frame::Login { .. } => FrameType::Login,
            Frame::Resume { .. } => FrameType::Resume,
            Frame::LoginOk { .. } => FrameType::LoginOk,
            Frame::Err { .. } => FrameType::Err,
            Frame::Hold { .. } => FrameType::Hold,
            Frame::HoldAck { .. } => FrameType::HoldAck,
            Frame::List => FrameType::List,
            Frame::ListResult { .. } => FrameType::ListResult,
            Frame::Connect { .. } => FrameType::Connect,
            Frame::ConnectOk { .. } => FrameType::ConnectOk,
            Frame::ConnectNotify { .. } => FrameType::ConnectNotify,
            Frame::NotifyCancel { .. } => FrameType::NotifyCancel,
            Frame::Accept { .. } => FrameType::Accept,
            Frame::Reject { .. } => FrameType::Reject,
            Frame::Data(_) => FrameType::Data,
            Frame::Terminate { .. } => FrameType::Terminate,
            Frame::Release => FrameType::Release,
            Frame::Logout => FrameType::Logout,
            Frame::Bye { .. } => FrameType::Bye,
        }
    }
}

/// Why bytes could not be decoded as a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The connection did not start with [`PREAMBLE`].
    #[error("bad preamble: expected \"FGRL\" and a version byte")]
    BadPreamble,
    /// The preamble named another version.
    #[error("unsupported protocol version {0} (this side speaks {VERSION})")]
    UnsupportedVersion(u8),
    /// The type byte is not one of [`FrameType`].
    #[error("unknown frame type 0x{0:02x}")]
    UnknownType(u8),
    /// The length field exceeds the limit for this frame type.
    #[error("{kind:?} frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        kind: FrameType,
        len: usize,
        max: usize,
    },
    /// The payload does not match the frame type's layout.
    #[error("malformed {kind:?} frame: {what}")]
    Malformed { kind: FrameType, what: &'static str },
}

impl FrameError {
    /// The ERR code to answer with.
    pub fn code(&self) -> Code {
        match self {
            FrameError::UnsupportedVersion(_) => Code::UnsupportedVersion,
            FrameError::TooLarge { .. } => Code::FrameTooLarge,
            _ => Code::BadFrame,
        }
    }
}

/// Checks the connection preamble. `Ok(None)`: need more bytes.
pub fn check_preamble(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    let n = buf.len().min(4);
    if buf[..n] != PREAMBLE[..n] {
        return Err(FrameError::BadPreamble);
    }
    if buf.len() < PREAMBLE.len() {
        return Ok(None);
    }
    if buf[4] != VERSION {
        return Err(FrameError::UnsupportedVersion(buf[4]));
    }
    Ok(Some(PREAMBLE.len()))
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The frame's type.
    pub kind: FrameType,
    /// Payload length in bytes.
    pub len: usize,
}

/// Reads a header and checks its length against the limits.
/// `Ok(None)`: fewer than [`HEADER_LEN`] bytes are buffered.
pub fn parse_header(buf: &[u8], max_data: usize) -> Result<Option<Header>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let kind = FrameType::from_u8(buf[0]).ok_or(FrameError::UnknownType(buf[0]))?;
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    let max = if kind == FrameType::Data {
        max_data
    } else {
        MAX_CONTROL_PAYLOAD
    };
    if len > max {
        return Err(FrameError::TooLarge { kind, len, max });
    }
    Ok(Some(Header { kind, len }))
}

/// Decodes one frame from the front of `buf`. Returns the frame and the
/// bytes it used, `Ok(None)` when the frame is not complete yet, or an
/// error when the bytes can never become a valid frame.
pub fn parse_frame(buf: &[u8], max_data: usize) -> Result<Option<(Frame, usize)>, FrameError> {
    let Some(header) = parse_header(buf, max_data)? else {
        return Ok(None);
    };
    let total = HEADER_LEN + header.len;
    if buf.len() < total {
        return Ok(None);
    }
    let frame = decode_payload(header.kind, &buf[HEADER_LEN..total])?;
    Ok(Some((frame, total)))
}

fn decode_payload(kind: FrameType, payload: &[u8]) -> Result<Frame, FrameError> {
    let mut r = Reader { kind, buf: payload };
    let frame = match kind {
        FrameType::Login => Frame::Login {
            user: r.user()?,
            password: Secret::new(r.string("password")?),
            client: r.string("client")?,
        },
        FrameType::Resume => Frame::Resume {
            user: r.user()?,
            token: Secret::new(r.token()?),
        },
        FrameType::LoginOk => {
            let conn_id = r.u64("conn_id")?;
            let hold_interval_ms = r.u32("hold_interval_ms")?;
            let max_connections = r.u16("max_connections")?;
            let token = match r.u8("has_token")? {
                0 => None,
                1 => Some(Secret::new(r.token()?)),
                _ => return Err(r.bad("has_token is not 0 or 1")),
            };
            Frame::LoginOk {
                conn_id,
                hold_interval_ms,
                max_connections,
                token,
            }
        }
        FrameType::Err => Frame::Err {
            code: Code::from_u16(r.u16("code")?),
            message: r.string("message")?,
        },
        FrameType::Hold => Frame::Hold { seq: r.u32("seq")? },
        FrameType::HoldAck => Frame::HoldAck { seq: r.u32("seq")? },
        FrameType::List => Frame::List,
        FrameType::ListResult => {
            let n = r.u16("count")?;
            let mut users = Vec::with_capacity(usize::from(n).min(1024));
            for _ in 0..n {
                users.push(PresenceEntry {
                    user: r.user()?,
                    vacant: r.u16("vacant")?,
                    connections: r.u16("connections")?,
                });
            }
            Frame::ListResult { users }
        }
        FrameType::Connect => Frame::Connect { target: r.user()? },
        FrameType::ConnectOk => Frame::ConnectOk {
            session_id: r.u64("session_id")?,
            peer: r.user()?,
        },
        FrameType::ConnectNotify => Frame::ConnectNotify {
            session_id: r.u64("session_id")?,
            from: r.user()?,
        },
        FrameType::NotifyCancel => Frame::NotifyCancel {
            session_id: r.u64("session_id")?,
        },
        FrameType::Accept => Frame::Accept {
            session_id: r.u64("session_id")?,
        },
        FrameType::Reject => Frame::Reject {
            session_id: r.u64("session_id")?,
            code: Code::from_u16(r.u16("code")?),
        },
        FrameType::Data => Frame::Data(Bytes::copy_from_slice(payload)),
        FrameType::Terminate => Frame::Terminate {
            code: Code::from_u16(r.u16("code")?),
        },
        FrameType::Release => Frame::Release,
        FrameType::Logout => Frame::Logout,
        FrameType::Bye => Frame::Bye {
            code: Code::from_u16(r.u16("code")?),
            message: r.string("message")?,
        },
    };
    if kind != FrameType::Data && !r.buf.is_empty() {
        return Err(r.bad("trailing bytes after the last field"));
    }
    Ok(frame)
}

struct Reader<'a> {
    kind: FrameType,
    buf: &'a [u8],
}

impl Reader<'_> {
    fn bad(&self, what: &'static str) -> FrameError {
        FrameError::Malformed {
            kind: self.kind,
            what,
        }
    }
    fn need(&self, n: usize, what: &'static str) -> Result<(), FrameError> {
        if self.buf.remaining() < n {
            Err(self.bad(what))
        } else {
            Ok(())
        }
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, FrameError> {
        self.need(1, what)?;
        Ok(self.buf.get_u8())
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, FrameError> {
        self.need(2, what)?;
        Ok(self.buf.get_u16())
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, FrameError> {
        self.need(4, what)?;
        Ok(self.buf.get_u32())
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, FrameError> {
        self.need(8, what)?;
        Ok(self.buf.get_u64())
    }
    fn string(&mut self, what: &'static str) -> Result<String, FrameError> {
        let len = usize::from(self.u16(what)?);
        self.need(len, what)?;
        let s =
            std::str::from_utf8(&self.buf[..len]).map_err(|_| self.bad("string is not UTF-8"))?;
        let s = s.to_owned();
        self.buf.advance(len);
        Ok(s)
    }
    fn user(&mut self) -> Result<String, FrameError> {
        let user = self.string("user ID")?;
        if !valid_user_id(&user) {
            return Err(self.bad(
                "user ID must be 1..=64 bytes of letters, digits, '.', '_', '-', '@' or '%'",
            ));
        }
        Ok(user)
    }
    fn token(&mut self) -> Result<[u8; TOKEN_LEN], FrameError> {
        self.need(TOKEN_LEN, "token")?;
        let mut t = [0u8; TOKEN_LEN];
        self.buf.copy_to_slice(&mut t);
        Ok(t)
    }
}

/// Whether `s` is an acceptable user ID: 1..=64 bytes of ASCII letters,
/// digits and `._-@%` (so `account%domain` and mail-style IDs work).
pub fn valid_user_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_USER_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-@%".contains(&b))
}

/// Appends the encoding of `frame` to `out`.
pub fn encode_frame(frame: &Frame, out: &mut BytesMut) {
    let start = out.len();
    out.put_u8(frame.frame_type() as u8);
    out.put_u32(0); // patched below
    match frame {
        Frame::Login {
            user,
            password,
            client,
        } => {
            put_str(out, user);
            put_str(out, password.expose());
            put_str(out, client);
        }
        Frame::Resume { user, token } => {
            put_str(out, user);
            out.put_slice(token.expose());
        }
        Frame::LoginOk {
            conn_id,
            hold_interval_ms,
            max_connections,
            token,
        } => {
            out.put_u64(*conn_id);
            out.put_u32(*hold_interval_ms);
            out.put_u16(*max_connections);
            match token {
                Some(t) => {
                    out.put_u8(1);
                    out.put_slice(t.expose());
                }
                None => out.put_u8(0),
            }
        }
        Frame::Err { code, message } | Frame::Bye { code, message } => {
            out.put_u16(code.to_u16());
            put_str(out, message);
        }
        Frame::Hold { seq } | Frame::HoldAck { seq } => out.put_u32(*seq),
        Frame::List | Frame::Release | Frame::Logout => {}
        Frame::ListResult { users } => {
            // As many entries as fit in one control frame; the rest are
            // left out (PROTOCOL.md). Every user ID is at most
            // MAX_USER_LEN, so that is at least 936 entries.
            let mut size = 2;
            let n = users
                .iter()
                .take(usize::from(u16::MAX))
                .take_while(|u| {
                    size += 2 + u.user.len() + 4;
                    size <= MAX_CONTROL_PAYLOAD
                })
                .count();
            out.put_u16(n as u16);
            for u in &users[..n] {
                put_str(out, &u.user);
                out.put_u16(u.vacant);
                out.put_u16(u.connections);
            }
        }
        Frame::Connect { target } => put_str(out, target),
        Frame::ConnectOk { session_id, peer } => {
            out.put_u64(*session_id);
            put_str(out, peer);
        }
        Frame::ConnectNotify { session_id, from } => {
            out.put_u64(*session_id);
            put_str(out, from);
        }
        Frame::NotifyCancel { session_id } | Frame::Accept { session_id } => {
            out.put_u64(*session_id)
        }
        Frame::Reject { session_id, code } => {
            out.put_u64(*session_id);
            out.put_u16(code.to_u16());
        }
        Frame::Data(data) => out.put_slice(data),
        Frame::Terminate { code } => out.put_u16(code.to_u16()),
    }
    let len = (out.len() - start - HEADER_LEN) as u32;
    out[start + 1..start + HEADER_LEN].copy_from_slice(&len.to_be_bytes());
}

/// Writes a DATA header for a payload of `len` bytes.
pub fn data_header(len: usize) -> [u8; HEADER_LEN] {
    let l = (len as u32).to_be_bytes();
    [FrameType::Data as u8, l[0], l[1], l[2], l[3]]
}

fn put_str(out: &mut BytesMut, s: &str) {
    // Strings longer than u16::MAX are cut at a char boundary; only free
    // text (messages) can be that long, and the cut keeps the frame valid.
    let mut end = s.len().min(usize::from(u16::MAX));
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.put_u16(end as u16);
    out.put_slice(&s.as_bytes()[..end]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(frame: Frame) {
        let mut buf = BytesMut::new();
        encode_frame(&frame, &mut buf);
        // Every strict prefix is incomplete, never an error.
        for cut in 0..buf.len() {
            assert_eq!(
                parse_frame(&buf[..cut], MAX_DATA_PAYLOAD),
                Ok(None),
                "{frame:?} cut at {cut}"
            );
        }
        let (back, used) = parse_frame(&buf, MAX_DATA_PAYLOAD).unwrap().unwrap();
        assert_eq!(used, buf.len());
        assert_eq!(back, frame);
    }

    #[test]
    fn every_frame_roundtrips() {
        let token = Secret::new([7u8; TOKEN_LEN]);
        for f in [
            Frame::Login {
                user: "tokyo".into(),
                password: Secret::new("pw".into()),
                client: "faxgate/0.1".into(),
            },
            Frame::Resume {
                user: "acct%example.com".into(),
                token: token.clone(),
            },
            Frame::LoginOk {
                conn_id: 9,
                hold_interval_ms: 30_000,
                max_connections: 8,
                token: Some(token),
            },
            Frame::LoginOk {
                conn_id: 10,
                hold_interval_ms: 1,
                max_connections: 1,
                token: None,
            },
            Frame::Err {
                code: Code::Busy,
                message: "osaka has no vacant connection".into(),
            },
            Frame::Hold { seq: 3 },
            Frame::HoldAck { seq: 3 },
            Frame::List,
            Frame::ListResult {
                users: vec![PresenceEntry {
                    user: "osaka".into(),
                    vacant: 1,
                    connections: 2,
                }],
            },
            Frame::Connect {
                target: "osaka".into(),
            },
            Frame::ConnectOk {
                session_id: 1,
                peer: "osaka".into(),
            },
            Frame::ConnectNotify {
                session_id: 1,
                from: "tokyo".into(),
            },
            Frame::NotifyCancel { session_id: 1 },
            Frame::Accept { session_id: 1 },
            Frame::Reject {
                session_id: 1,
                code: Code::Rejected,
            },
            Frame::Data(Bytes::from_static(b"\x00\x01fax")),
            Frame::Data(Bytes::new()),
            Frame::Terminate { code: Code::Normal },
            Frame::Release,
            Frame::Logout,
            Frame::Bye {
                code: Code::Kicked,
                message: "kicked by admin".into(),
            },
        ] {
            roundtrip(f);
        }
    }

    #[test]
    fn golden_bytes_of_hold_and_terminate() {
        let mut buf = BytesMut::new();
        encode_frame(&Frame::Hold { seq: 0x0102_0304 }, &mut buf);
        assert_eq!(&buf[..], b"\x03\x00\x00\x00\x04\x01\x02\x03\x04");
        buf.clear();
        encode_frame(&Frame::Terminate { code: Code::Normal }, &mut buf);
        assert_eq!(&buf[..], b"\x81\x00\x00\x00\x02\x00\x00");
        assert_eq!(data_header(258), [0x80, 0, 0, 1, 2]);
    }

    #[test]
    fn preamble_checks() {
        assert_eq!(check_preamble(b"FG"), Ok(None));
        assert_eq!(check_preamble(b"FGRL\x01rest"), Ok(Some(5)));
        assert_eq!(check_preamble(b"GET /"), Err(FrameError::BadPreamble));
        assert_eq!(
            check_preamble(b"FGRL\x02"),
            Err(FrameError::UnsupportedVersion(2))
        );
    }

    #[test]
    fn a_list_result_too_long_for_one_frame_keeps_what_fits() {
        let users: Vec<PresenceEntry> = (0..1000)
            .map(|i| PresenceEntry {
                user: format!("{i:04}{}", "x".repeat(MAX_USER_LEN - 4)),
                vacant: 1,
                connections: 2,
            })
            .collect();
        let mut out = BytesMut::new();
        encode_frame(
            &Frame::ListResult {
                users: users.clone(),
            },
            &mut out,
        );
        let (frame, used) = parse_frame(&out, 1 << 20)
            .expect("the frame stays within the control payload limit")
            .unwrap();
        assert_eq!(used, out.len());
        let Frame::ListResult { users: got } = frame else {
            panic!("expected LIST-RESULT, got {frame:?}");
        };
        // (65536 - 2) / (2 + 64 + 4) entries fit.
        assert_eq!(got.len(), 936);
        assert_eq!(got[..], users[..936]);
    }

    #[test]
    fn oversized_and_unknown_frames_are_errors() {
        let big = [0x04, 0, 1, 0, 1]; // LIST with a 65537-byte payload
        assert!(matches!(
            parse_frame(&big, MAX_DATA_PAYLOAD),
            Err(FrameError::TooLarge { .. })
        ));
        let data = [0x80, 0, 0x20, 0, 0]; // 2 MiB DATA
        assert!(matches!(
            parse_frame(&data, MAX_DATA_PAYLOAD),
            Err(FrameError::TooLarge { .. })
        ));
        assert_eq!(
            parse_frame(&[0x33, 0, 0, 0, 0], 1024),
            Err(FrameError::UnknownType(0x33))
        );
    }

    #[test]
    fn bad_user_ids_and_trailing_bytes_are_malformed() {
        let mut buf = BytesMut::new();
        encode_frame(
            &Frame::Connect {
                target: "a b".into(),
            },
            &mut buf,
        );
        assert!(matches!(
            parse_frame(&buf, 1024),
            Err(FrameError::Malformed { .. })
        ));
        let trailing = [0x04, 0, 0, 0, 1, 0xff];
        assert!(matches!(
            parse_frame(&trailing, 1024),
            Err(FrameError::Malformed { .. })
        ));
    }

    proptest::proptest! {
        #[test]
        fn parser_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = parse_frame(&bytes, 4096);
            let _ = check_preamble(&bytes);
        }

        #[test]
        fn codes_roundtrip(v in 0u16..) {
            proptest::prop_assert_eq!(Code::from_u16(v).to_u16(), v);
        }
    }
}
