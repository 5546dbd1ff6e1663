//! One fax session on a byte stream: the sans-io T.30 engine driven over
//! T.38 IFP packets in TPKT framing (T.38 over TCP), with timers from
//! tokio. The stream is a bridged relay session, but anything that is
//! `AsyncRead + AsyncWrite` works (tests use a duplex pipe).
//!
//! The mapping between T.30 actions and T.38 packets:
//!
//! | T.30 | T.38 (IFP in TPKT) |
//! |---|---|
//! | control frames (V.21) | indicator `v21-preamble`, then per frame `data v21 [hdlc-data, hdlc-fcs-OK]`, the last with `hdlc-fcs-OK-sig-end` |
//! | a non-ECM page | the DCS modem's long training indicator (e.g. `v17-14400-long-training`), `data v17-14400 [t4-non-ecm-data]`..., `t4-non-ecm-sig-end` |
//! | ECM frames | the same indicator, per frame `data v17-14400 [hdlc-data, hdlc-fcs-OK]`, the last with `-sig-end` |
//!
//! The high-speed data type is the modem the DCS selected
//! ([`T30::modem`]: V.17 14 400 unless the receiver's DIS permits less or
//! FTT stepped down), so that a gateway to a real line trains that modem.
//!
//! Over TCP no TCF is sent (T.38 clause 8 / T.30 over reliable transport).
//! HDLC octets travel bit-reversed relative to the in-memory T.30 frame
//! (the first bit on the line is the MSB of a T.38 octet; HDLC sends LSB
//! first), T.4 image data unchanged (MSB first, as our encoder writes it).
//!
//! # T.38 editions
//!
//! T.38 has two ASN.1 editions that differ in one bit per data item
//! ([`Asn1Edition`]): a `T38FaxVersion:0` peer (a gateway, or spandsp set
//! to version 0) may speak the 1998 one, where `t4-non-ecm-data`,
//! `t4-non-ecm-sig-end` and the `-sig-end` FCS items are misread, or
//! refused, by a 2002 decoder. Over the relay there is no SDP or H.245 to
//! announce the version, so the session finds it out from the packets: it
//! starts in 2002 (what faxgate peers speak) and, at the first packet
//! from the peer that is not a valid 2002 packet but is a valid 1998 one,
//! reads and writes 1998 for the rest of the session. That comes soon:
//! the last frame of every V.21 burst ends in `hdlc-fcs-OK-sig-end`,
//! which a 1998 peer writes in a form no 2002 decoder accepts, so a
//! 1998 answerer shows itself with its first DIS and a 1998 caller with
//! its first DCS. Before that, what a 1998 peer gets from us still works
//! (checked by a test against a 1998-only session): read as 1998, our
//! final frame's `hdlc-fcs-OK-sig-end` is `hdlc-fcs-OK`, so the DIS
//! arrives; only the frames before it in the burst (NSF, CSI) are lost,
//! their `hdlc-fcs-OK` being `hdlc-sig-end` in 1998. The switch is made
//! once and never back, so a peer's later garbage cannot flip it. Packets
//! that both editions read but differently (a 1998 `hdlc-fcs-OK` is a
//! 2002 `hdlc-fcs-OK-sig-end`, a 1998 `hdlc-fcs-BAD` a 2002
//! `t4-non-ecm-data` without data) can only come before the switch, in
//! the peer's first burst, where the first is harmless and the second
//! (a damaged frame from a gateway's line) merges into the next frame.
//!
//! faxgate's own information rides in the T.30 non-standard frames, with
//! faxgate's T.35 code ([`faxgate_fax::t30`] adds and strips it): the
//! caller's NSS carries a [`JobTag`] (job id, index of the first page in
//! this session, pages in the document), so a receiver recognises a
//! resumed job and a repeated page.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use faxgate_fax::Bitmap;
use faxgate_fax::t30::frame::{Frame, Modem};
use faxgate_fax::t30::{Action, Event, Outcome, Params, T30};
use faxgate_fax::t38::{
    Asn1Edition, DataType, Field, FieldType, Ifp, Indicator, TpktDecoder, reverse_bits, tpkt_frame,
};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

/// What a sender tells the receiver about its job, in the NSS frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobTag {
    /// The sender's job id (16 hex digits).
    pub job_id: String,
    /// The document index of the first page this session sends.
    pub first_page: u32,
    /// Pages in the whole document.
    pub total_pages: u32,
}

const TAG_MAGIC: &[u8; 4] = b"FGJ1";

impl JobTag {
    /// The NSS payload: `FGJ1`, the 16-byte ASCII job id, then the first
    /// page and the page count as big-endian u32.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(28);
        v.extend_from_slice(TAG_MAGIC);
        v.extend_from_slice(self.job_id.as_bytes());
        v.extend_from_slice(&self.first_page.to_be_bytes());
        v.extend_from_slice(&self.total_pages.to_be_bytes());
        v
    }

    /// Parses an NSS payload; `None` if it is not faxgate's.
    pub fn parse(b: &[u8]) -> Option<JobTag> {
        if b.len() != 28 || &b[..4] != TAG_MAGIC {
            return None;
        }
        let id = std::str::from_utf8(&b[4..20]).ok()?;
        if !id.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        let first = u32::from_be_bytes(b[20..24].try_into().ok()?);
        let total = u32::from_be_bytes(b[24..28].try_into().ok()?);
        (first < total).then(|| JobTag {
            job_id: id.to_owned(),
            first_page: first,
            total_pages: total,
        })
    }
}

/// What the session asks of its owner. The sender answers `need_page`
/// and hears `page_sent`; the receiver hears `nonstandard` and
/// `page_received`. Each is awaited before the engine goes on, so a page
/// is durable before MCF leaves, and recorded as delivered only after MCF.
/// While `page_received` runs the session keeps reading the peer, so that
/// a command repeated meanwhile is answered as T.30 wants (RNR, or nothing
/// without ECM) and not with a second MCF after the store.
pub trait Hooks {
    /// The coded page `index` (0-based within this session) for `params`.
    fn need_page(
        &mut self,
        index: u32,
        params: Params,
    ) -> impl Future<Output = anyhow::Result<Vec<u8>>> + Send;
    /// MCF arrived for page `index` of this session.
    fn page_sent(&mut self, index: u32) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// The peer's NSF/NSS payload and identity, before any page.
    fn peer(
        &mut self,
        ident: Option<String>,
        nonstandard: Option<Vec<u8>>,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// A good page arrived; return once it is durable.
    fn page_received(
        &mut self,
        index: u32,
        params: Params,
        page: Bitmap,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// The parameters both sides agreed.
    fn negotiated(&mut self, params: Params);
}

/// How a session ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// T.30 finished, well or not; the outcome says which.
    T30(Outcome),
    /// We stopped it: shutdown parked the session at a page boundary.
    Parked,
    /// Something outside T.30 went wrong: garbage T.38, a local store
    /// error, the stream failed.
    Error(anyhow::Error),
}

/// Non-ECM image bytes go into IFP packets in chunks of at most this
/// size, so that no IFP packet holds more than about 310 octets (ECM
/// frames already go one per packet, at most 260 octets of HDLC).
///
/// T.38 over TCP has no datagram limit, but a receiver keeps at least
/// one whole IFP packet, and gateways announce small buffers for that
/// (`T38FaxMaxBuffer`: defaults of 200 to 1024 octets are common, and
/// some accept no more than 3000). spandsp sends at most 300 octets per
/// IFP packet over TCP (`MAX_OCTETS_PER_UNPACED_CHUNK` in
/// `t38_terminal.c`), which is what gateways are tested against; the cost
/// here, a few hundred packet headers per page, is lost in the noise of
/// the page's fsync (BENCHMARKS.md, fax).
const IMAGE_CHUNK: usize = 300;

/// The longest one session may last, whatever the peer does. The engine
/// ends the loops a peer can drive with commands (repeats, RTN, PPR, CTC);
/// this is the backstop for the rest, such as page data trickled just
/// faster than T2. Four hours is some 240 pages at 14 400 bit/s; a
/// longer document goes on in the next session, which resumes at the
/// first page without MCF.
const MAX_SESSION: Duration = Duration::from_secs(4 * 3600);

/// Runs a T.30 session over `stream` until it finishes. `cancel` asks
/// the engine to stop politely (DCN after the page in flight); `park`
/// stops at the next page boundary without DCN, so the peer keeps its
/// state for a resume. A session lasts at most [`MAX_SESSION`].
pub async fn run<S, H>(
    stream: &mut S,
    t30: T30,
    caller: bool,
    hooks: &mut H,
    cancel: CancellationToken,
    park: CancellationToken,
) -> SessionEnd
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    H: Hooks + Send,
{
    run_within(stream, t30, caller, hooks, cancel, park, MAX_SESSION).await
}

/// [`run`], with `limit` in place of [`MAX_SESSION`]: past it the session
/// ends with [`SessionEnd::Error`] and no DCN, as a lost line would, so
/// that a sender resumes and a receiver keeps the document open for it.
async fn run_within<S, H>(
    stream: &mut S,
    mut t30: T30,
    caller: bool,
    hooks: &mut H,
    cancel: CancellationToken,
    park: CancellationToken,
    limit: Duration,
) -> SessionEnd
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    H: Hooks + Send,
{
    let input = Input::default();
    match drive(
        stream, &mut t30, caller, hooks, &cancel, &park, limit, input,
    )
    .await
    {
        Ok(end) => end,
        Err(e) => SessionEnd::Error(e),
    }
}

struct Peer {
    ident: Option<String>,
    nonstandard: Option<Vec<u8>>,
    told: bool,
}

#[allow(clippy::too_many_arguments)]
async fn drive<S, H>(
    stream: &mut S,
    t30: &mut T30,
    caller: bool,
    hooks: &mut H,
    cancel: &CancellationToken,
    park: &CancellationToken,
    limit: Duration,
    mut input: Input,
) -> anyhow::Result<SessionEnd>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    H: Hooks + Send,
{
    let ends = tokio::time::Instant::now() + limit;
    let mut out = Vec::with_capacity(64 * 1024);
    // Actions the engine queued while a page was being stored, other than
    // frames (which went out at once), in order.
    let mut backlog: VecDeque<Action> = VecDeque::new();
    let mut cancel_sent = false;
    let mut peer = Peer {
        ident: None,
        nonstandard: None,
        told: false,
    };
    let mut page_boundary = true;
    // The answerer opens with CED, the caller with CNG (T.38 indicators).
    let tone = if caller {
        Indicator::Cng
    } else {
        Indicator::Ced
    };
    write_ifp(&mut out, input.edition, &Ifp::Indicator(tone));
    loop {
        while let Some(action) = backlog.pop_front().or_else(|| t30.poll_action()) {
            // The edition may change once, when the peer shows it speaks
            // 1998 (see `Input::decode`).
            let ed = input.edition;
            match action {
                Action::SendFrames(frames) => {
                    log_frames("T.30 out.", &frames);
                    write_ifp(&mut out, ed, &Ifp::Indicator(Indicator::V21Preamble));
                    write_hdlc(&mut out, ed, DataType::V21, &frames);
                }
                Action::SendEcmFrames(frames) => {
                    let modulation = data_type(t30.modem());
                    write_training(&mut out, ed, modulation);
                    write_hdlc(&mut out, ed, modulation, &frames);
                }
                Action::SendImage(data) => {
                    page_boundary = false;
                    let modulation = data_type(t30.modem());
                    write_training(&mut out, ed, modulation);
                    write_image(&mut out, ed, modulation, &data);
                }
                // The training check (TCF) after DCS is for a line that
                // carries it. T.38 over TCP does not: the configs this
                // session runs never set `training`, so the engine never
                // asks for either.
                Action::SendTraining { .. } | Action::ReceiveTraining { .. } => {}
                Action::Negotiated(p) => hooks.negotiated(p),
                Action::RemoteIdent(s) => peer.ident = Some(s),
                Action::RemoteNonStandard(b) => peer.nonstandard = Some(b),
                Action::NeedPage { index, params } => {
                    // A page boundary: the previous page has its MCF (or
                    // none was sent yet) and nothing of this one is out.
                    // The engine queues PageSent and NeedPage together and
                    // SendImage as soon as it has the page, so without ECM
                    // the check after this loop never sees
                    // `page_boundary`: park here, before asking for the page.
                    if park.is_cancelled() {
                        write_out(stream, &out, ends).await.ok();
                        return Ok(SessionEnd::Parked);
                    }
                    tell_peer(hooks, &mut peer).await?;
                    let data = hooks.need_page(index, params).await?;
                    // Coding the page took time: the engine's timers run
                    // from now, not from when it asked.
                    t30.handle(Event::Page(data), Instant::now());
                }
                Action::PageSent { index, uncorrected } => {
                    if uncorrected {
                        tracing::warn!(
                            page = index + 1,
                            "Page delivered with uncorrected errors: the receiver took a block \
                             with frames missing (ECM EOR/ERR)."
                        );
                    }
                    hooks.page_sent(index).await?;
                    page_boundary = true;
                }
                Action::PageRetry { index, reason } => {
                    tracing::info!(page = index + 1, %reason, "Page will be sent again.");
                    page_boundary = true;
                }
                Action::PageReceived {
                    index,
                    params,
                    page,
                    bad_lines,
                    lines,
                } => {
                    tell_peer(hooks, &mut peer).await?;
                    if bad_lines > 0 {
                        tracing::warn!(
                            page = index + 1,
                            bad_lines,
                            lines,
                            "Page received with lines that did not decode."
                        );
                    } else {
                        tracing::debug!(page = index + 1, lines, "Page received.");
                    }
                    // What is queued so far (nothing, as the engine waits
                    // for this page) goes out before the store starts.
                    send(stream, t30, &mut out, ends).await?;
                    let store = hooks.page_received(index, params, page);
                    store_page(stream, t30, &mut input, &mut out, &mut backlog, store, ends)
                        .await?;
                    t30.handle(Event::PageStored, Instant::now());
                }
                Action::PageDiscarded {
                    index,
                    bad_lines,
                    lines,
                } => {
                    tracing::warn!(
                        page = index + 1,
                        bad_lines,
                        lines,
                        "Page too damaged; RTN sent."
                    );
                }
                Action::Finished(outcome) => {
                    tell_peer(hooks, &mut peer).await.ok();
                    write_out(stream, &out, ends).await.ok();
                    return Ok(SessionEnd::T30(outcome));
                }
            }
        }
        send(stream, t30, &mut out, ends).await?;
        if park.is_cancelled() && page_boundary {
            return Ok(SessionEnd::Parked);
        }
        let deadline = t30.poll_timeout();
        tokio::select! {
            n = stream.read(&mut input.buf), if !input.eof => input.feed(n, t30)?,
            () = sleep_until(deadline) => t30.handle(Event::Timeout, Instant::now()),
            () = cancel.cancelled(), if !cancel_sent => {
                cancel_sent = true;
                t30.handle(Event::Cancel, Instant::now());
            }
            () = park.cancelled(), if page_boundary => return Ok(SessionEnd::Parked),
            () = tokio::time::sleep_until(ends) => {
                return Err(anyhow!(
                    "the session reached its time limit ({}) without ending; hung up",
                    humantime::format_duration(limit)
                ));
            }
        }
    }
}

/// Writes and flushes what the actions queued, then tells the engine, so
/// that a command's T4 starts once its burst (a whole page, maybe) is out.
async fn send<S>(
    stream: &mut S,
    t30: &mut T30,
    out: &mut Vec<u8>,
    ends: tokio::time::Instant,
) -> anyhow::Result<()>
where
    S: AsyncWrite + Unpin,
{
    if out.is_empty() {
        return Ok(());
    }
    write_out(stream, out, ends)
        .await
        .context("while sending T.38 packets")?;
    out.clear();
    t30.handle(Event::Sent, Instant::now());
    Ok(())
}

/// How long a write may make no progress: the peer reads nothing (a T.38
/// gateway to a telephone line reads at the line's rate, a few hundred
/// bytes a second, never nothing for this long).
const WRITE_STALL: Duration = Duration::from_secs(60);

/// Writes and flushes `buf`, failing when the peer takes no byte for
/// [`WRITE_STALL`] or the session's end (`ends`) passes: T.30's timers
/// only run once a burst is out, so a peer that stops reading would
/// otherwise hold the session (and its job) for ever.
async fn write_out<S>(stream: &mut S, buf: &[u8], ends: tokio::time::Instant) -> std::io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    let by = || (tokio::time::Instant::now() + WRITE_STALL).min(ends);
    let stalled = || {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "the peer took nothing for {} (or the session reached its time limit)",
                humantime::format_duration(WRITE_STALL)
            ),
        )
    };
    let mut pos = 0;
    while pos < buf.len() {
        match tokio::time::timeout_at(by(), stream.write(&buf[pos..])).await {
            Ok(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(Ok(n)) => pos += n,
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(stalled()),
        }
    }
    tokio::time::timeout_at(by(), stream.flush())
        .await
        .map_err(|_| stalled())?
}

/// Awaits `store` (the owner making a received page durable) while the
/// peer goes on talking. A sender whose T4 runs out meanwhile repeats its
/// post-page command (or PPS, RR, CRP); the engine, still storing, ignores
/// it (non-ECM) or answers RNR (ECM), and that RNR goes out at once. Read
/// only after the store, the repeat would get a second MCF, which the
/// sender would take as the confirmation of its next page.
///
/// Other actions wait in `backlog` until the page is stored, and so do
/// errors: a store that was started is always awaited to its end.
async fn store_page<S, F>(
    stream: &mut S,
    t30: &mut T30,
    input: &mut Input,
    out: &mut Vec<u8>,
    backlog: &mut VecDeque<Action>,
    store: F,
    ends: tokio::time::Instant,
) -> anyhow::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: Future<Output = anyhow::Result<()>>,
{
    let mut store = std::pin::pin!(store);
    let mut failed: Option<anyhow::Error> = None;
    loop {
        let listening = failed.is_none() && !input.eof && !t30.is_finished();
        let deadline = t30.poll_timeout();
        tokio::select! {
            r = &mut store => {
                r?;
                return failed.map_or(Ok(()), Err);
            }
            n = stream.read(&mut input.buf), if listening => {
                if let Err(e) = input.feed(n, t30) {
                    failed = Some(e);
                }
            }
            () = sleep_until(deadline), if failed.is_none() => {
                t30.handle(Event::Timeout, Instant::now());
            }
        }
        while let Some(action) = t30.poll_action() {
            match action {
                Action::SendFrames(frames) => {
                    log_frames("T.30 out.", &frames);
                    let ed = input.edition;
                    write_ifp(out, ed, &Ifp::Indicator(Indicator::V21Preamble));
                    write_hdlc(out, ed, DataType::V21, &frames);
                }
                other => backlog.push_back(other),
            }
        }
        if failed.is_none()
            && let Err(e) = send(stream, t30, out, ends).await
        {
            failed = Some(e);
        }
    }
}

/// The receiving side of the stream: bytes through TPKT and IFP into T.30
/// events.
struct Input {
    decoder: TpktDecoder,
    rx: AsyncRx,
    buf: Vec<u8>,
    /// The stream ended (or failed); the engine has had [`Event::Closed`].
    eof: bool,
    /// The ASN.1 edition the peer's packets are read in, and ours written.
    edition: Asn1Edition,
    /// Whether a peer packet may still switch `edition` to 1998.
    detecting: bool,
}

impl Default for Input {
    /// 2002, switching to 1998 if the peer turns out to speak it.
    fn default() -> Self {
        Input {
            decoder: TpktDecoder::new(),
            rx: AsyncRx::default(),
            buf: vec![0u8; 64 * 1024],
            eof: false,
            edition: Asn1Edition::Y2002,
            detecting: true,
        }
    }
}

impl Input {
    /// Decodes one IFP packet from the peer. A packet that is no 2002
    /// packet but a valid 1998 one, before any such choice was made,
    /// shows a `T38FaxVersion:0` peer: the session reads and writes the
    /// 1998 edition from then on (module docs, "T.38 editions").
    fn decode(&mut self, packet: &[u8]) -> anyhow::Result<Ifp> {
        let err = match Ifp::decode_as(packet, self.edition) {
            Ok(ifp) => return Ok(ifp),
            Err(e) => e,
        };
        if self.detecting
            && let Ok(ifp) = Ifp::decode_as(packet, Asn1Edition::Y1998)
        {
            tracing::info!(
                "The peer speaks the 1998 ASN.1 of T.38 (T38FaxVersion 0); switching to it."
            );
            self.edition = Asn1Edition::Y1998;
            self.detecting = false;
            return Ok(ifp);
        }
        Err(anyhow!(
            "malformed T.38 IFP packet from the peer ({:?} ASN.1): {err}",
            self.edition
        ))
    }

    /// Hands the result of one read of `self.buf` to the engine: the events
    /// of the packets it completes, or [`Event::Closed`] at the end of the
    /// stream. Errors for bytes that are not T.38 over TPKT.
    fn feed(&mut self, read: std::io::Result<usize>, t30: &mut T30) -> anyhow::Result<()> {
        let now = Instant::now();
        let n = match read {
            Ok(n) => n,
            Err(e) => {
                tracing::info!(error = %e, "The session's stream failed.");
                0
            }
        };
        if n == 0 {
            self.eof = true;
            t30.handle(Event::Closed, now);
            return Ok(());
        }
        self.decoder.push(&self.buf[..n]);
        while let Some(packet) = self
            .decoder
            .next_packet()
            .map_err(|e| anyhow!("malformed TPKT from the peer: {e}"))?
        {
            let ifp = self.decode(&packet)?;
            tracing::trace!(?ifp, "T.38 in.");
            for event in self.rx.events(ifp)? {
                if let Event::Frame { bytes, .. } = &event {
                    log_frames("T.30 in.", std::slice::from_ref(bytes));
                }
                t30.handle(event, now);
            }
        }
        Ok(())
    }
}

/// Logs control frames by name (DIS, DCS, MCF, DCN...) at debug level.
fn log_frames(what: &'static str, frames: &[Vec<u8>]) {
    if tracing::enabled!(tracing::Level::DEBUG) {
        let names: Vec<String> = frames
            .iter()
            .map(|f| match Frame::parse(f) {
                Ok(f) => f.fcf.name().to_owned(),
                Err(e) => format!("unparsable ({e})"),
            })
            .collect();
        tracing::debug!(frames = %names.join(" "), "{what}");
    }
}

async fn tell_peer<H: Hooks + Send>(hooks: &mut H, peer: &mut Peer) -> anyhow::Result<()> {
    if !peer.told {
        peer.told = true;
        hooks
            .peer(peer.ident.take(), peer.nonstandard.take())
            .await?;
    }
    Ok(())
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}

fn write_ifp(out: &mut Vec<u8>, edition: Asn1Edition, ifp: &Ifp) {
    tracing::trace!(?ifp, "T.38 out.");
    let mut bytes = Vec::new();
    // Ours are root values with 1 to IMAGE_CHUNK octets of data, which
    // both editions encode.
    if let Err(e) = ifp.encode_as(edition, &mut bytes) {
        tracing::error!(error = %e, "Cannot encode a T.38 packet.");
        return;
    }
    // Only an empty packet or one over 65531 bytes cannot be framed; ours
    // carry at most IMAGE_CHUNK (or one HDLC frame's) octets of data.
    if let Err(e) = tpkt_frame(&bytes, out) {
        tracing::error!(error = %e, "Cannot frame a T.38 packet.");
    }
}

fn write_hdlc(out: &mut Vec<u8>, edition: Asn1Edition, modulation: DataType, frames: &[Vec<u8>]) {
    for (i, frame) in frames.iter().enumerate() {
        // HDLC sends each octet LSB first; T.38 carries the first bit on
        // the line in the MSB, so the in-memory T.30 frame is reversed.
        let mut wire = frame.clone();
        reverse_bits(&mut wire);
        let end = if i + 1 == frames.len() {
            FieldType::HdlcFcsOkSigEnd
        } else {
            FieldType::HdlcFcsOk
        };
        write_ifp(
            out,
            edition,
            &Ifp::Data {
                modulation,
                fields: vec![
                    Field {
                        kind: FieldType::HdlcData,
                        data: Some(wire),
                    },
                    Field {
                        kind: end,
                        data: None,
                    },
                ],
            },
        );
    }
}

/// The T.38 data type of a T.30 high-speed modem.
fn data_type(modem: Modem) -> DataType {
    match modem {
        Modem::V17_14400 => DataType::V17_14400,
        Modem::V17_12000 => DataType::V17_12000,
        Modem::V17_9600 => DataType::V17_9600,
        Modem::V29_9600 => DataType::V29_9600,
        Modem::V17_7200 => DataType::V17_7200,
        Modem::V29_7200 => DataType::V29_7200,
        Modem::V27ter4800 => DataType::V27_4800,
        Modem::V27ter2400 => DataType::V27_2400,
    }
}

/// The indicator that starts a high-speed burst: `modulation`'s long
/// training (T.30 asks for it after DCS; over TCP it costs nothing).
fn write_training(out: &mut Vec<u8>, edition: Asn1Edition, modulation: DataType) {
    if let Some(ind) = Indicator::training_for(modulation, true) {
        write_ifp(out, edition, &Ifp::Indicator(ind));
    }
}

fn write_image(out: &mut Vec<u8>, edition: Asn1Edition, modulation: DataType, data: &[u8]) {
    let chunks: Vec<&[u8]> = data.chunks(IMAGE_CHUNK).collect();
    for chunk in &chunks {
        write_ifp(
            out,
            edition,
            &Ifp::Data {
                modulation,
                fields: vec![Field {
                    kind: FieldType::T4NonEcmData,
                    data: Some(chunk.to_vec()),
                }],
            },
        );
    }
    write_ifp(
        out,
        edition,
        &Ifp::Data {
            modulation,
            fields: vec![Field {
                kind: FieldType::T4NonEcmSigEnd,
                data: None,
            }],
        },
    );
}

/// The most HDLC octets one frame may collect before its FCS field: a
/// bound on memory against a peer that never ends a frame. T.30 control
/// frames are at most a few hundred octets (a DIS/DCS with every extension,
/// an NSF, a 32-octet PPR map) and an ECM frame is 256 data octets plus a
/// 4-octet header (T.4 Annex A; 64-octet frames are smaller still), so
/// 4 KiB leaves a wide margin.
const MAX_HDLC_FRAME: usize = 4 * 1024;

/// Turns incoming IFP packets into T.30 events: HDLC octets collect until
/// an FCS field closes the frame.
#[derive(Default)]
struct AsyncRx {
    frame: Vec<u8>,
}

impl AsyncRx {
    /// The events in one packet; an error if an HDLC frame grows past
    /// [`MAX_HDLC_FRAME`] octets without an FCS field to end it.
    fn events(&mut self, ifp: Ifp) -> anyhow::Result<Vec<Event>> {
        let Ifp::Data { modulation, fields } = ifp else {
            return Ok(Vec::new());
        };
        let control = modulation == DataType::V21;
        let mut events = Vec::new();
        for f in fields {
            match f.kind {
                FieldType::HdlcData => {
                    if let Some(d) = f.data {
                        self.push(&d)?;
                    }
                }
                FieldType::HdlcFcsOk
                | FieldType::HdlcFcsBad
                | FieldType::HdlcFcsOkSigEnd
                | FieldType::HdlcFcsBadSigEnd => {
                    if let Some(d) = f.data {
                        self.push(&d)?;
                    }
                    let fcs_ok =
                        matches!(f.kind, FieldType::HdlcFcsOk | FieldType::HdlcFcsOkSigEnd);
                    let mut bytes = std::mem::take(&mut self.frame);
                    reverse_bits(&mut bytes);
                    if !bytes.is_empty() {
                        events.push(if control {
                            Event::Frame { bytes, fcs_ok }
                        } else {
                            Event::EcmFrame { bytes, fcs_ok }
                        });
                    }
                }
                FieldType::HdlcSigEnd => self.frame.clear(),
                FieldType::T4NonEcmData => {
                    if let Some(d) = f.data {
                        events.push(Event::ImageData(d));
                    }
                }
                FieldType::T4NonEcmSigEnd => {
                    if let Some(d) = f.data {
                        events.push(Event::ImageData(d));
                    }
                    events.push(Event::ImageEnd);
                }
                _ => {}
            }
        }
        Ok(events)
    }

    /// Adds HDLC octets to the frame being collected, up to
    /// [`MAX_HDLC_FRAME`].
    fn push(&mut self, data: &[u8]) -> anyhow::Result<()> {
        if self.frame.len() + data.len() > MAX_HDLC_FRAME {
            let had = self.frame.len();
            self.frame = Vec::new();
            return Err(anyhow!(
                "HDLC frame from the peer exceeded {MAX_HDLC_FRAME} octets without an FCS \
                 ({had} octets collected, {} more in this T.38 packet)",
                data.len()
            ));
        }
        self.frame.extend_from_slice(data);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use faxgate_fax::t30::frame::{self, Fcf, Pps, fcf};
    use faxgate_fax::t30::{self as t30, Capabilities, Config, Role, Timers};
    use faxgate_fax::{Coding, Resolution};
    use tokio::io::DuplexStream;
    use tokio::sync::oneshot;

    /// How long a test waits for anything from the session under test.
    const PATIENCE: Duration = Duration::from_secs(10);

    /// The edition the scripted peers speak.
    const ED: Asn1Edition = Asn1Edition::Y2002;

    /// The session's owner, scripted: pages to send, and a store that can
    /// be held until the test releases it.
    #[derive(Default)]
    struct TestHooks {
        pages: Vec<Vec<u8>>,
        sent: Vec<u32>,
        received: Vec<u32>,
        store_started: Option<oneshot::Sender<()>>,
        store_release: Option<oneshot::Receiver<()>>,
    }

    impl Hooks for TestHooks {
        async fn need_page(&mut self, index: u32, _params: Params) -> anyhow::Result<Vec<u8>> {
            self.pages
                .get(index as usize)
                .cloned()
                .ok_or_else(|| anyhow!("no page {index}"))
        }

        async fn page_sent(&mut self, index: u32) -> anyhow::Result<()> {
            self.sent.push(index);
            Ok(())
        }

        async fn peer(
            &mut self,
            _ident: Option<String>,
            _nonstandard: Option<Vec<u8>>,
        ) -> anyhow::Result<()> {
            Ok(())
        }

        async fn page_received(
            &mut self,
            index: u32,
            _params: Params,
            _page: Bitmap,
        ) -> anyhow::Result<()> {
            if let Some(tx) = self.store_started.take() {
                let _ = tx.send(());
            }
            if let Some(rx) = self.store_release.take() {
                rx.await.context("the test dropped the store release")?;
            }
            self.received.push(index);
            Ok(())
        }

        fn negotiated(&mut self, _params: Params) {}
    }

    fn config(role: Role, caps: Capabilities, t4: Duration) -> Config {
        Config {
            role,
            ident: String::new(),
            caps,
            timers: Timers {
                t4,
                ..Timers::default()
            },
            non_standard: None,
            max_bad_percent: 5,
            max_consecutive_bad: 8,
            training: false,
        }
    }

    /// Runs a session on one end of a duplex pipe; the task hands back how
    /// it ended and the hooks, and drops its end (the peer sees EOF).
    fn spawn_session(
        io: DuplexStream,
        t30: T30,
        caller: bool,
        hooks: TestHooks,
    ) -> tokio::task::JoinHandle<(SessionEnd, TestHooks)> {
        tokio::spawn(async move {
            let mut io = io;
            let mut hooks = hooks;
            let end = run(
                &mut io,
                t30,
                caller,
                &mut hooks,
                CancellationToken::new(),
                CancellationToken::new(),
            )
            .await;
            (end, hooks)
        })
    }

    /// The other fax, played by hand over T.38: writes bursts, reads the
    /// session's packets back as T.30 events, in chunks of `chunk` octets
    /// with `pause` after each read (a slow link).
    struct FakePeer {
        io: DuplexStream,
        decoder: TpktDecoder,
        rx: AsyncRx,
        events: VecDeque<Event>,
        /// Every packet read, in order.
        ifps: Vec<Ifp>,
        chunk: usize,
        pause: Duration,
    }

    impl FakePeer {
        fn new(io: DuplexStream) -> Self {
            FakePeer {
                io,
                decoder: TpktDecoder::new(),
                rx: AsyncRx::default(),
                events: VecDeque::new(),
                ifps: Vec::new(),
                chunk: 64 * 1024,
                pause: Duration::ZERO,
            }
        }

        async fn frames(&mut self, frames: &[Vec<u8>]) {
            let mut out = Vec::new();
            write_ifp(&mut out, ED, &Ifp::Indicator(Indicator::V21Preamble));
            write_hdlc(&mut out, ED, DataType::V21, frames);
            self.io.write_all(&out).await.unwrap();
        }

        async fn command(&mut self, fcf_value: u8) {
            self.frames(&[frame::build(fcf_value, &[], true)]).await;
        }

        async fn image(&mut self, data: &[u8]) {
            let mut out = Vec::new();
            write_ifp(
                &mut out,
                ED,
                &Ifp::Indicator(Indicator::V17_14400LongTraining),
            );
            write_image(&mut out, ED, DataType::V17_14400, data);
            self.io.write_all(&out).await.unwrap();
        }

        async fn ecm(&mut self, frames: &[Vec<u8>]) {
            let mut out = Vec::new();
            write_ifp(
                &mut out,
                ED,
                &Ifp::Indicator(Indicator::V17_14400LongTraining),
            );
            write_hdlc(&mut out, ED, DataType::V17_14400, frames);
            self.io.write_all(&out).await.unwrap();
        }

        /// The next event, None at EOF or after `wait` without one.
        async fn event_within(&mut self, wait: Duration) -> Option<Event> {
            let mut buf = vec![0u8; self.chunk];
            loop {
                if let Some(e) = self.events.pop_front() {
                    return Some(e);
                }
                let n = match tokio::time::timeout(wait, self.io.read(&mut buf)).await {
                    Ok(r) => r.unwrap(),
                    Err(_) => return None,
                };
                if n == 0 {
                    return None;
                }
                self.decoder.push(&buf[..n]);
                while let Some(p) = self.decoder.next_packet().unwrap() {
                    let ifp = Ifp::decode(&p).unwrap();
                    self.ifps.push(ifp.clone());
                    self.events.extend(self.rx.events(ifp).unwrap());
                }
                if !self.pause.is_zero() {
                    tokio::time::sleep(self.pause).await;
                }
            }
        }

        /// The FCF (X bit masked) of the next control frame within `wait`,
        /// skipping image data; None at EOF or on time-out.
        async fn fcf_within(&mut self, wait: Duration) -> Option<Fcf> {
            loop {
                if let Event::Frame { bytes, .. } = self.event_within(wait).await? {
                    return Some(frame::Frame::parse(&bytes).unwrap().fcf);
                }
            }
        }

        /// Reads control frames until `want` (panics at EOF or time-out).
        async fn expect(&mut self, want: Fcf) {
            loop {
                match self.fcf_within(PATIENCE).await {
                    Some(f) if f == want => return,
                    Some(_) => {}
                    None => panic!("no {want:?} from the session"),
                }
            }
        }

        /// Every control frame until the session closes its end.
        async fn rest(&mut self) -> Vec<Fcf> {
            let mut all = Vec::new();
            while let Some(f) = self.fcf_within(PATIENCE).await {
                all.push(f);
            }
            all
        }
    }

    fn std_params(ecm: bool) -> Params {
        Params {
            resolution: Resolution::Standard,
            width: 1728,
            coding: Coding::Mh,
            ecm,
        }
    }

    /// An ECM burst for a coded page: FCD frames of 256 octets, in HDLC bit
    /// order, then RCP three times.
    fn ecm_burst(coded: &[u8]) -> Vec<Vec<u8>> {
        let mut burst: Vec<Vec<u8>> = coded
            .chunks(256)
            .enumerate()
            .map(|(i, c)| {
                let mut d: Vec<u8> = c.iter().map(|b| b.reverse_bits()).collect();
                d.resize(256, 0);
                frame::fcd_frame(i as u8, &d)
            })
            .collect();
        burst.extend((0..3).map(|_| frame::rcp_frame()));
        burst
    }

    /// A sender whose T4 runs out while we store its page repeats MPS (or
    /// PPS-MPS). The session reads it during the store, so the engine
    /// ignores it (non-ECM) or says RNR (ECM): the page gets exactly one
    /// MCF. Read only after the store, the repeat got a second MCF, which
    /// the sender took as the confirmation of its next page.
    #[tokio::test]
    async fn a_command_repeated_while_a_page_is_stored_gets_one_mcf() {
        for ecm in [false, true] {
            let caps = if ecm {
                Capabilities::all()
            } else {
                Capabilities::minimal()
            };
            let cfg = config(Role::Answerer, caps, Duration::from_secs(3));
            let t30 = T30::new(cfg, Instant::now()).unwrap();
            let (ours, theirs) = tokio::io::duplex(64 * 1024);
            let (started_tx, started_rx) = oneshot::channel();
            let (release_tx, release_rx) = oneshot::channel();
            let hooks = TestHooks {
                store_started: Some(started_tx),
                store_release: Some(release_rx),
                ..TestHooks::default()
            };
            let task = spawn_session(ours, t30, false, hooks);
            let mut peer = FakePeer::new(theirs);
            peer.expect(Fcf::Dis).await;
            let p = std_params(ecm);
            peer.frames(&[frame::build(fcf::DCS | 1, &p.to_dcs_fif(), true)])
                .await;
            peer.expect(Fcf::Cfr).await;
            let coded = t30::encode_page(&Bitmap::new(1728, 40), &p).unwrap();
            let command = if ecm {
                let burst = ecm_burst(&coded);
                let pps = Pps {
                    ppm: fcf::MPS | 1,
                    page: 0,
                    block: 0,
                    frames: (burst.len() - 3) as u16,
                };
                peer.ecm(&burst).await;
                frame::build(fcf::PPS | 1, &pps.to_fif(), true)
            } else {
                peer.image(&coded).await;
                frame::build(fcf::MPS | 1, &[], true)
            };
            peer.frames(std::slice::from_ref(&command)).await;
            tokio::time::timeout(PATIENCE, started_rx)
                .await
                .unwrap()
                .unwrap();
            // T4 ran out at the sender: the same command again.
            peer.frames(std::slice::from_ref(&command)).await;
            if ecm {
                assert_eq!(peer.fcf_within(PATIENCE).await, Some(Fcf::Rnr), "ecm");
            } else {
                // Nothing to see: give the session time to read it.
                assert_eq!(peer.fcf_within(Duration::from_millis(200)).await, None);
            }
            release_tx.send(()).unwrap();
            if ecm {
                // After RNR the sender asks with RR until the answer is
                // no longer RNR (an RR may still catch the store).
                let mut answer = Some(Fcf::Rnr);
                for _ in 0..20 {
                    peer.command(fcf::RR | 1).await;
                    answer = peer.fcf_within(PATIENCE).await;
                    if answer != Some(Fcf::Rnr) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                assert_eq!(answer, Some(Fcf::Mcf), "ecm");
            } else {
                assert_eq!(peer.fcf_within(PATIENCE).await, Some(Fcf::Mcf));
            }
            peer.command(fcf::DCN | 1).await;
            let rest = peer.rest().await;
            assert!(
                !rest.contains(&Fcf::Mcf),
                "ecm {ecm}: a second MCF: {rest:?}"
            );
            let (end, hooks) = task.await.unwrap();
            assert_eq!(hooks.received, vec![0], "ecm {ecm}");
            match end {
                SessionEnd::T30(o) => {
                    assert_eq!((o.result, o.pages), (Ok(()), 1), "ecm {ecm}");
                }
                other => panic!("ecm {ecm}: {other:?}"),
            }
        }
    }

    /// A peer that trickles page data just faster than T2, so that the
    /// page never ends and no engine cap applies, is cut off at the
    /// session's time limit (with no DCN, like a lost line).
    #[tokio::test]
    async fn a_session_ends_at_its_time_limit() {
        let cfg = config(
            Role::Answerer,
            Capabilities::minimal(),
            Duration::from_secs(3),
        );
        let t30 = T30::new(cfg, Instant::now()).unwrap();
        let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
        let limit = Duration::from_millis(600);
        let task = tokio::spawn(async move {
            let mut io = ours;
            let mut hooks = TestHooks::default();
            run_within(
                &mut io,
                t30,
                false,
                &mut hooks,
                CancellationToken::new(),
                CancellationToken::new(),
                limit,
            )
            .await
        });
        let started = Instant::now();
        let mut peer = FakePeer::new(theirs);
        peer.expect(Fcf::Dis).await;
        let p = std_params(false);
        peer.frames(&[frame::build(fcf::DCS | 1, &p.to_dcs_fif(), true)])
            .await;
        peer.expect(Fcf::Cfr).await;
        theirs = peer.io;
        let trickle = async {
            loop {
                let mut out = Vec::new();
                write_ifp(
                    &mut out,
                    ED,
                    &Ifp::Data {
                        modulation: DataType::V17_14400,
                        fields: vec![Field {
                            kind: FieldType::T4NonEcmData,
                            data: Some(vec![0; 10]),
                        }],
                    },
                );
                if theirs.write_all(&out).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        let end = tokio::select! {
            end = task => end.unwrap(),
            () = trickle => panic!("the session closed its end but did not return"),
            () = tokio::time::sleep(PATIENCE) => panic!("the session went on past its limit"),
        };
        let took = started.elapsed();
        match end {
            SessionEnd::Error(e) => {
                let msg = format!("{e:#}");
                assert!(msg.contains("time limit") && msg.contains("600ms"), "{msg}");
            }
            other => panic!("{other:?}"),
        }
        assert!(took >= limit && took < limit * 4, "took {took:?}");
    }

    /// The page goes with the T.38 data type (and training indicator) of
    /// the modem the DCS selected: V.29 9600 for a DIS without V.17.
    #[tokio::test]
    async fn image_data_goes_with_the_dcs_modem() {
        let role = Role::Caller {
            pages: 1,
            document_resolution: Resolution::Standard,
            document_width: 1728,
        };
        let cfg = config(role, Capabilities::minimal(), Duration::from_secs(3));
        let t30 = T30::new(cfg, Instant::now()).unwrap();
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let page = t30::encode_page(&Bitmap::new(1728, 20), &std_params(false)).unwrap();
        let hooks = TestHooks {
            pages: vec![page],
            ..TestHooks::default()
        };
        let task = spawn_session(ours, t30, true, hooks);
        let mut peer = FakePeer::new(theirs);
        let mut dis = Capabilities::minimal().to_dis_fif();
        // Clear bit 14 (V.17): V.29 and V.27 ter remain.
        dis[1] &= !0x20;
        peer.frames(&[frame::build(fcf::DIS, &dis, true)]).await;
        peer.expect(Fcf::Dcs).await;
        peer.command(fcf::CFR).await;
        peer.expect(Fcf::Eop).await;
        peer.command(fcf::MCF).await;
        assert_eq!(peer.rest().await, vec![Fcf::Dcn]);
        assert!(matches!(task.await.unwrap().0, SessionEnd::T30(_)));
        let image: Vec<&Ifp> = peer
            .ifps
            .iter()
            .filter(|i| {
                !matches!(
                    i,
                    Ifp::Data {
                        modulation: DataType::V21,
                        ..
                    }
                )
            })
            .filter(|i| !matches!(i, Ifp::Indicator(Indicator::V21Preamble | Indicator::Cng)))
            .collect();
        assert!(image.len() >= 3, "{image:?}");
        assert_eq!(*image[0], Ifp::Indicator(Indicator::V29_9600Training));
        for i in &image[1..] {
            assert!(
                matches!(
                    i,
                    Ifp::Data {
                        modulation: DataType::V29_9600,
                        ..
                    }
                ),
                "{i:?}"
            );
        }
    }

    /// A caller session with one page of `page_bytes` (T4 = `t4`) on a
    /// 1 KiB pipe, past DIS, DCS and CFR: its page is about to go out.
    async fn caller_after_cfr(
        t4: Duration,
        page_bytes: usize,
    ) -> (tokio::task::JoinHandle<(SessionEnd, TestHooks)>, FakePeer) {
        let role = Role::Caller {
            pages: 1,
            document_resolution: Resolution::Standard,
            document_width: 1728,
        };
        let t30 = T30::new(config(role, Capabilities::minimal(), t4), Instant::now()).unwrap();
        let (ours, theirs) = tokio::io::duplex(1024);
        let hooks = TestHooks {
            pages: vec![vec![0x55; page_bytes]],
            ..TestHooks::default()
        };
        let task = spawn_session(ours, t30, true, hooks);
        let mut peer = FakePeer::new(theirs);
        peer.frames(&[frame::build(
            fcf::DIS,
            &Capabilities::minimal().to_dis_fif(),
            true,
        )])
        .await;
        peer.expect(Fcf::Dcs).await;
        peer.command(fcf::CFR).await;
        (task, peer)
    }

    /// A page that takes longer than T4 to leave (a slow link) is not
    /// followed by a repeat of its post-page command as soon as it is out:
    /// T4 starts when the burst has been written, not when it was queued.
    #[tokio::test]
    async fn t4_runs_from_when_a_slow_page_has_left() {
        let t4 = Duration::from_millis(300);
        // 48 KiB read 1 KiB per 15 ms: about 0.7 s on the wire.
        let (task, mut peer) = caller_after_cfr(t4, 48 * 1024).await;
        peer.chunk = 1024;
        peer.pause = Duration::from_millis(15);
        let started = Instant::now();
        peer.expect(Fcf::Eop).await;
        assert!(
            started.elapsed() > t4,
            "the page took {:?}, no longer than T4",
            started.elapsed()
        );
        peer.chunk = 64 * 1024;
        peer.pause = Duration::ZERO;
        // Well within T4 of the page's end, there must be no repeat.
        let again = peer.fcf_within(t4 / 2).await;
        assert_eq!(again, None, "EOP was repeated as soon as the page was out");
        peer.command(fcf::MCF).await;
        assert_eq!(peer.rest().await, vec![Fcf::Dcn]);
        let (end, hooks) = task.await.unwrap();
        assert_eq!(hooks.sent, vec![0]);
        match end {
            SessionEnd::T30(o) => assert_eq!((o.result, o.pages), (Ok(()), 1)),
            other => panic!("{other:?}"),
        }
    }

    /// A peer that stops reading while a page goes out (it stays
    /// connected, so no error comes from the socket): the write gives up
    /// after WRITE_STALL without progress, and the session ends with an
    /// error saying so instead of holding its job for ever. (Paused
    /// clock: the minute passes at once.)
    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stops_reading_mid_page_ends_the_session() {
        let (task, peer) = caller_after_cfr(Duration::from_secs(3), 256 * 1024).await;
        // From here the peer reads nothing, and keeps its end open.
        let started = tokio::time::Instant::now();
        let (end, hooks) = tokio::time::timeout(Duration::from_secs(3600), task)
            .await
            .expect("the session hung on a peer that stopped reading")
            .unwrap();
        assert!(started.elapsed() >= WRITE_STALL, "{:?}", started.elapsed());
        assert!(hooks.sent.is_empty(), "no page counted as sent");
        match end {
            SessionEnd::Error(e) => {
                let msg = format!("{e:#}");
                assert!(msg.contains("took nothing for 1m"), "{msg}");
            }
            other => panic!("{other:?}"),
        }
        drop(peer);
    }

    /// A session that speaks only the 1998 ASN.1 of T.38, as a
    /// `T38FaxVersion:0` gateway does: it reads our packets in 1998 too.
    fn spawn_v0_session(
        io: DuplexStream,
        t30: T30,
        caller: bool,
        hooks: TestHooks,
    ) -> tokio::task::JoinHandle<(SessionEnd, TestHooks)> {
        tokio::spawn(async move {
            let (mut io, mut hooks, mut t30) = (io, hooks, t30);
            let input = Input {
                edition: Asn1Edition::Y1998,
                detecting: false,
                ..Input::default()
            };
            let (cancel, park) = (CancellationToken::new(), CancellationToken::new());
            let end = drive(
                &mut io,
                &mut t30,
                caller,
                &mut hooks,
                &cancel,
                &park,
                MAX_SESSION,
                input,
            )
            .await
            .unwrap_or_else(SessionEnd::Error);
            (end, hooks)
        })
    }

    /// A whole document, with and without ECM, each way, between our
    /// session and a 1998-only peer. The peer's first HDLC burst ends in
    /// `hdlc-fcs-OK-sig-end`, which is no 2002 packet: from there on we
    /// read and write 1998 (with the 2002 ASN.1 alone, that packet, and
    /// all of the peer's image data, failed to decode).
    #[tokio::test]
    async fn a_t38_version_0_peer_gets_a_whole_document_both_ways() {
        for ecm in [false, true] {
            for we_call in [true, false] {
                let caps = Capabilities {
                    resolutions: vec![Resolution::Standard],
                    widths: vec![1728],
                    mr: false,
                    mmr: false,
                    ecm,
                    modems: Vec::new(),
                };
                let p = std_params(ecm);
                let mut img = Bitmap::new(1728, 60);
                for y in 0..60 {
                    img.set_pixel(y * 7, y, true);
                }
                let page = t30::encode_page(&img, &p).unwrap();
                let caller_cfg = Config {
                    ident: "+1 555 0100".into(),
                    ..config(
                        Role::Caller {
                            pages: 2,
                            document_resolution: Resolution::Standard,
                            document_width: 1728,
                        },
                        caps.clone(),
                        Duration::from_secs(3),
                    )
                };
                let answerer_cfg = Config {
                    ident: "+1 555 0200".into(),
                    ..config(Role::Answerer, caps, Duration::from_secs(3))
                };
                let caller = T30::new(caller_cfg, Instant::now()).unwrap();
                let answerer = T30::new(answerer_cfg, Instant::now()).unwrap();
                let sender = TestHooks {
                    pages: vec![page.clone(), page],
                    ..TestHooks::default()
                };
                let (a, b) = tokio::io::duplex(64 * 1024);
                let (caller_task, answerer_task) = if we_call {
                    (
                        spawn_session(a, caller, true, sender),
                        spawn_v0_session(b, answerer, false, TestHooks::default()),
                    )
                } else {
                    (
                        spawn_v0_session(a, caller, true, sender),
                        spawn_session(b, answerer, false, TestHooks::default()),
                    )
                };
                let what = format!("ecm {ecm}, we call {we_call}");
                let (c_end, c_hooks) = tokio::time::timeout(PATIENCE, caller_task)
                    .await
                    .unwrap()
                    .unwrap();
                let (a_end, a_hooks) = tokio::time::timeout(PATIENCE, answerer_task)
                    .await
                    .unwrap()
                    .unwrap();
                for (side, end) in [("caller", c_end), ("answerer", a_end)] {
                    match end {
                        SessionEnd::T30(o) => {
                            assert_eq!((o.result, o.pages), (Ok(()), 2), "{what}: {side}");
                        }
                        other => panic!("{what}: {side}: {other:?}"),
                    }
                }
                assert_eq!(c_hooks.sent, vec![0, 1], "{what}");
                assert_eq!(a_hooks.received, vec![0, 1], "{what}");
            }
        }
    }

    /// The switch to 1998 happens once, on a packet that only 1998 reads;
    /// a session fixed to one edition (or already switched) refuses it.
    #[test]
    fn input_switches_to_1998_on_a_1998_only_packet() {
        let ifp = Ifp::Data {
            modulation: DataType::V21,
            fields: vec![
                Field::with_data(FieldType::HdlcData, vec![0xFF, 0xC8, 0x01]),
                Field::without_data(FieldType::HdlcFcsOkSigEnd),
            ],
        };
        let mut v0 = Vec::new();
        ifp.encode_as(Asn1Edition::Y1998, &mut v0).unwrap();
        assert!(Ifp::decode(&v0).is_err(), "not a 2002 packet");
        let mut input = Input::default();
        // A packet both editions read leaves the choice open.
        let mut both = Vec::new();
        write_ifp(&mut both, ED, &Ifp::Indicator(Indicator::Ced));
        let mut tpkt = TpktDecoder::new();
        tpkt.push(&both);
        let ced = tpkt.next_packet().unwrap().unwrap();
        assert_eq!(input.decode(&ced).unwrap(), Ifp::Indicator(Indicator::Ced));
        assert_eq!((input.edition, input.detecting), (Asn1Edition::Y2002, true));
        assert_eq!(input.decode(&v0).unwrap(), ifp);
        assert_eq!(
            (input.edition, input.detecting),
            (Asn1Edition::Y1998, false)
        );
        assert_eq!(input.decode(&v0).unwrap(), ifp);
        // Garbage is an error in either edition.
        assert!(input.decode(&[0xFF, 0xFF, 0xFF]).is_err());
        let mut fixed = Input {
            detecting: false,
            ..Input::default()
        };
        let msg = format!("{:#}", fixed.decode(&v0).unwrap_err());
        assert!(msg.contains("malformed") && msg.contains("Y2002"), "{msg}");
    }

    /// A non-ECM page leaves in IFP packets of at most 300 octets of data
    /// (spandsp's size over TCP; a TPKT frame of a dozen octets more), in
    /// order.
    #[tokio::test]
    async fn a_page_goes_in_packets_of_at_most_300_octets() {
        const MAX: usize = 300;
        let role = Role::Caller {
            pages: 1,
            document_resolution: Resolution::Standard,
            document_width: 1728,
        };
        let cfg = config(role, Capabilities::minimal(), Duration::from_secs(3));
        let t30 = T30::new(cfg, Instant::now()).unwrap();
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let page: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        let hooks = TestHooks {
            pages: vec![page.clone()],
            ..TestHooks::default()
        };
        let task = spawn_session(ours, t30, true, hooks);
        let mut peer = FakePeer::new(theirs);
        let dis = Capabilities::minimal().to_dis_fif();
        peer.frames(&[frame::build(fcf::DIS, &dis, true)]).await;
        peer.expect(Fcf::Dcs).await;
        peer.command(fcf::CFR).await;
        peer.expect(Fcf::Eop).await;
        peer.command(fcf::MCF).await;
        assert_eq!(peer.rest().await, vec![Fcf::Dcn]);
        assert!(matches!(task.await.unwrap().0, SessionEnd::T30(_)));
        let chunks: Vec<&[u8]> = peer
            .ifps
            .iter()
            .filter_map(|i| match i {
                Ifp::Data { fields, .. } => Some(fields),
                _ => None,
            })
            .flatten()
            .filter(|f| f.kind == FieldType::T4NonEcmData)
            .filter_map(|f| f.data.as_deref())
            .collect();
        assert!(chunks.iter().all(|c| c.len() <= MAX), "{}", chunks[0].len());
        assert_eq!(chunks.len(), page.len().div_ceil(MAX));
        assert_eq!(chunks.concat(), page, "in order, nothing lost");
        // On the wire: each TPKT frame of image data is MAX plus the TPKT
        // and IFP headers at most.
        let mut out = Vec::new();
        write_image(&mut out, ED, DataType::V17_14400, &page);
        let mut tpkt = TpktDecoder::new();
        tpkt.push(&out);
        let mut frames = 0;
        while let Some(p) = tpkt.next_packet().unwrap() {
            assert!(p.len() + 4 <= MAX + 12, "{} octets", p.len() + 4);
            frames += 1;
        }
        assert_eq!(frames, chunks.len() + 1, "and t4-non-ecm-sig-end");
    }

    #[test]
    fn job_tags_round_trip_and_reject_others() {
        let t = JobTag {
            job_id: "0123456789abcdef".into(),
            first_page: 3,
            total_pages: 10,
        };
        assert_eq!(JobTag::parse(&t.to_bytes()), Some(t.clone()));
        let mut bad = t.to_bytes();
        bad[0] = b'X';
        assert_eq!(JobTag::parse(&bad), None);
        assert_eq!(JobTag::parse(&t.to_bytes()[..27]), None);
        let past_end = JobTag {
            first_page: 10,
            ..t
        };
        assert_eq!(JobTag::parse(&past_end.to_bytes()), None);
    }

    fn hdlc(kind: FieldType, data: Option<Vec<u8>>) -> Ifp {
        Ifp::Data {
            modulation: DataType::V17_14400,
            fields: vec![Field { kind, data }],
        }
    }

    /// HDLC data that never gets its FCS field is refused at
    /// MAX_HDLC_FRAME octets instead of piling up.
    #[test]
    fn async_rx_refuses_an_endless_hdlc_frame() {
        let mut rx = AsyncRx::default();
        let mut packets = 0;
        let err = loop {
            packets += 1;
            assert!(packets <= 10_000, "an endless HDLC frame was never refused");
            match rx.events(hdlc(FieldType::HdlcData, Some(vec![0x5A; 100]))) {
                Ok(events) => assert!(events.is_empty()),
                Err(e) => break e,
            }
            assert!(rx.frame.len() <= MAX_HDLC_FRAME);
        };
        assert_eq!(packets, MAX_HDLC_FRAME / 100 + 1);
        let msg = format!("{err:#}");
        assert!(
            msg.contains("HDLC frame") && msg.contains(&MAX_HDLC_FRAME.to_string()),
            "{msg}"
        );
        assert!(rx.frame.is_empty(), "the refused frame is dropped");
    }

    /// A full ECM frame (4-octet header, 256 data octets) in pieces, then
    /// its FCS field, is still one event.
    #[test]
    fn async_rx_keeps_a_full_ecm_frame() {
        let mut rx = AsyncRx::default();
        for _ in 0..4 {
            let events = rx
                .events(hdlc(FieldType::HdlcData, Some(vec![0xA5; 65])))
                .unwrap();
            assert!(events.is_empty());
        }
        let events = rx.events(hdlc(FieldType::HdlcFcsOk, None)).unwrap();
        assert!(
            matches!(&events[..], [Event::EcmFrame { bytes, fcs_ok: true }] if bytes.len() == 260),
            "{events:?}"
        );
    }
}
