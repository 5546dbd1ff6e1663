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
//! | a non-ECM page | indicator `v17-14400-long-training`, `data v17-14400 [t4-non-ecm-data]`..., `t4-non-ecm-sig-end` |
//! | ECM frames | indicator `v17-14400-long-training`, per frame `data v17-14400 [hdlc-data, hdlc-fcs-OK]`, the last with `-sig-end` |
//!
//! Over TCP no TCF is sent (T.38 clause 8 / T.30 over reliable transport).
//! HDLC octets travel bit-reversed relative to the in-memory T.30 frame
//! (the first bit on the line is the MSB of a T.38 octet; HDLC sends LSB
//! first), T.4 image data unchanged (MSB first, as our encoder writes it).
//!
//! faxgate's own information rides in the T.30 non-standard frames, with
//! faxgate's T.35 code ([`faxgate_fax::t30`] adds and strips it): the
//! caller's NSS carries a [`JobTag`] (job id, index of the first page in
//! this session, pages in the document), so a receiver recognises a
//! resumed job and a repeated page.

use std::time::Instant;

use anyhow::{Context as _, anyhow};
use faxgate_fax::Bitmap;
use faxgate_fax::t30::frame::Frame;
use faxgate_fax::t30::{Action, Event, Outcome, Params, T30};
use faxgate_fax::t38::{
    DataType, Field, FieldType, Ifp, Indicator, TpktDecoder, reverse_bits, tpkt_frame,
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

/// Image bytes go into IFP packets in chunks of this size.
const IMAGE_CHUNK: usize = 16 * 1024;

/// Runs a T.30 session over `stream` until it finishes. `cancel` asks
/// the engine to stop politely (DCN after the page in flight); `park`
/// stops at the next page boundary without DCN, so the peer keeps its
/// state for a resume.
pub async fn run<S, H>(
    stream: &mut S,
    mut t30: T30,
    caller: bool,
    hooks: &mut H,
    cancel: CancellationToken,
    park: CancellationToken,
) -> SessionEnd
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    H: Hooks + Send,
{
    match drive(stream, &mut t30, caller, hooks, &cancel, &park).await {
        Ok(end) => end,
        Err(e) => SessionEnd::Error(e),
    }
}

struct Peer {
    ident: Option<String>,
    nonstandard: Option<Vec<u8>>,
    told: bool,
}

async fn drive<S, H>(
    stream: &mut S,
    t30: &mut T30,
    caller: bool,
    hooks: &mut H,
    cancel: &CancellationToken,
    park: &CancellationToken,
) -> anyhow::Result<SessionEnd>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    H: Hooks + Send,
{
    let mut decoder = TpktDecoder::new();
    let mut rx = AsyncRx::default();
    let mut out = Vec::with_capacity(64 * 1024);
    let mut buf = vec![0u8; 64 * 1024];
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
    write_ifp(&mut out, &Ifp::Indicator(tone));
    loop {
        while let Some(action) = t30.poll_action() {
            let now = Instant::now();
            match action {
                Action::SendFrames(frames) => {
                    log_frames("T.30 out.", &frames);
                    write_ifp(&mut out, &Ifp::Indicator(Indicator::V21Preamble));
                    write_hdlc(&mut out, DataType::V21, &frames);
                }
                Action::SendEcmFrames(frames) => {
                    write_ifp(&mut out, &Ifp::Indicator(Indicator::V17_14400LongTraining));
                    write_hdlc(&mut out, DataType::V17_14400, &frames);
                }
                Action::SendImage(data) => {
                    page_boundary = false;
                    write_ifp(&mut out, &Ifp::Indicator(Indicator::V17_14400LongTraining));
                    write_image(&mut out, &data);
                }
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
                        stream.write_all(&out).await.ok();
                        stream.flush().await.ok();
                        return Ok(SessionEnd::Parked);
                    }
                    tell_peer(hooks, &mut peer).await?;
                    let data = hooks.need_page(index, params).await?;
                    t30.handle(Event::Page(data), now);
                }
                Action::PageSent { index } => {
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
                    tracing::debug!(page = index + 1, bad_lines, lines, "Page received.");
                    hooks.page_received(index, params, page).await?;
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
                    stream.write_all(&out).await.ok();
                    stream.flush().await.ok();
                    return Ok(SessionEnd::T30(outcome));
                }
            }
        }
        if !out.is_empty() {
            stream
                .write_all(&out)
                .await
                .context("while sending T.38 packets")?;
            stream.flush().await.context("while sending T.38 packets")?;
            out.clear();
        }
        if park.is_cancelled() && page_boundary {
            return Ok(SessionEnd::Parked);
        }
        let deadline = t30.poll_timeout();
        tokio::select! {
            n = stream.read(&mut buf) => {
                let now = Instant::now();
                let n = match n {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::info!(error = %e, "The session's stream failed.");
                        0
                    }
                };
                if n == 0 {
                    t30.handle(Event::Closed, now);
                    continue;
                }
                decoder.push(&buf[..n]);
                while let Some(packet) = decoder
                    .next_packet()
                    .map_err(|e| anyhow!("malformed TPKT from the peer: {e}"))?
                {
                    let ifp = Ifp::decode(&packet)
                        .map_err(|e| anyhow!("malformed T.38 IFP packet from the peer: {e}"))?;
                    tracing::trace!(?ifp, "T.38 in.");
                    for event in rx.events(ifp)? {
                        if let Event::Frame { bytes, .. } = &event {
                            log_frames("T.30 in.", std::slice::from_ref(bytes));
                        }
                        t30.handle(event, now);
                    }
                }
            }
            () = sleep_until(deadline) => t30.handle(Event::Timeout, Instant::now()),
            () = cancel.cancelled(), if !cancel_sent => {
                cancel_sent = true;
                t30.handle(Event::Cancel, Instant::now());
            }
            () = park.cancelled(), if page_boundary => return Ok(SessionEnd::Parked),
        }
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

fn write_ifp(out: &mut Vec<u8>, ifp: &Ifp) {
    tracing::trace!(?ifp, "T.38 out.");
    let bytes = ifp.to_bytes();
    // Only an empty packet or one over 65531 bytes cannot be framed; ours
    // carry at most IMAGE_CHUNK bytes of data.
    if let Err(e) = tpkt_frame(&bytes, out) {
        tracing::error!(error = %e, "Cannot frame a T.38 packet.");
    }
}

fn write_hdlc(out: &mut Vec<u8>, modulation: DataType, frames: &[Vec<u8>]) {
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

fn write_image(out: &mut Vec<u8>, data: &[u8]) {
    let chunks: Vec<&[u8]> = data.chunks(IMAGE_CHUNK).collect();
    for chunk in &chunks {
        write_ifp(
            out,
            &Ifp::Data {
                modulation: DataType::V17_14400,
                fields: vec![Field {
                    kind: FieldType::T4NonEcmData,
                    data: Some(chunk.to_vec()),
                }],
            },
        );
    }
    write_ifp(
        out,
        &Ifp::Data {
            modulation: DataType::V17_14400,
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
