//! One fax call over a Class 1 modem: the T.30 engine's actions carried
//! out with AT commands, and what the modem hears fed back to it.
//!
//! Class 1 is half duplex and the DTE says what it expects next, so the
//! driver decides after each burst whether to listen for V.21 frames
//! (`+FRH=3`) or for page data (`+FRM`): the answerer listens for a page
//! after it sent CFR, or MCF to an MPS; everything else is frames. A page
//! listened for that turns out to be frames (`+FCERROR`, the sender
//! repeating a command) is received as frames.
//!
//! With ECM a page goes as blocks of HDLC frames at high speed, framed
//! here ([`crate::hdlc`]): the answerer also listens for a block after
//! PPR and CTR, and after MCF or ERR to a PPS or EOR that says the page
//! goes on (NULL) or another follows (MPS). A block after CTC trains long
//! (at its new speed); every other page or block trains short.

use std::future::Future;
use std::time::Duration;

use faxgate_fax::t30::frame::{Modem, fcf};
use faxgate_fax::t30::{self, Action, Event, Outcome, Params, T30};
use faxgate_fax::{Bitmap, Resolution};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::ModemError;
use crate::class1::{Class1, Received, Training};
use crate::dle;
use crate::hdlc;

/// How long the modem may take to dial and hear the answerer.
pub const DIAL_WAIT: Duration = Duration::from_secs(90);

/// A page to send, in the form it was scanned or rendered.
#[derive(Clone, Debug)]
pub struct Page {
    /// The image.
    pub bitmap: Bitmap,
    /// Its resolution.
    pub resolution: Resolution,
}

/// Where a receiving call puts its pages.
///
/// [`receive`] hands each good page to [`Pages::page`] and answers MCF
/// only once the returned future has finished: a page is durable before
/// the sender is told it arrived. An error answers no MCF and ends the
/// call ([`CallError::Store`]).
pub trait Pages {
    /// Keeps page `index` (0-based) of the document. `remote_ident` is
    /// the sender's TSI, which T.30 gives before any page (if it gave
    /// one at all).
    fn page(
        &mut self,
        remote_ident: Option<&str>,
        index: u32,
        params: Params,
        page: Bitmap,
    ) -> impl Future<Output = Result<(), String>> + Send;
}

/// Where a sending call gets its pages, and whom it tells of each page
/// the receiver confirmed.
///
/// [`send`] asks for page `index` (0-based in this call) when T.30 needs
/// it, and calls [`Document::delivered`] once the receiver confirmed it
/// with MCF (or RTP): a page counts as sent only then.
pub trait Document {
    /// Page `index` (0-based in this call) as scanned or rendered.
    fn page(&mut self, index: u32) -> impl Future<Output = Result<Page, String>> + Send;
    /// The receiver confirmed page `index`.
    fn delivered(&mut self, index: u32) -> impl Future<Output = Result<(), String>> + Send;
}

/// Pages in memory, as `faxgate modem send` has them, counting those
/// the receiver confirmed.
#[derive(Debug)]
pub struct InMemory<'a> {
    /// The pages.
    pub pages: &'a [Page],
    /// How many of them the receiver confirmed (MCF), in order.
    pub delivered: u32,
}

impl<'a> InMemory<'a> {
    /// `pages`, none confirmed yet.
    pub fn new(pages: &'a [Page]) -> Self {
        InMemory {
            pages,
            delivered: 0,
        }
    }
}

impl Document for InMemory<'_> {
    async fn page(&mut self, index: u32) -> Result<Page, String> {
        self.pages
            .get(index as usize)
            .cloned()
            .ok_or_else(|| format!("no page {}", index + 1))
    }

    async fn delivered(&mut self, index: u32) -> Result<(), String> {
        self.delivered = self.delivered.max(index + 1);
        Ok(())
    }
}

/// The document of a receiving call: it has no pages to send.
struct Nothing;

impl Document for Nothing {
    async fn page(&mut self, index: u32) -> Result<Page, String> {
        Err(format!("the caller asked us for page {}", index + 1))
    }

    async fn delivered(&mut self, _index: u32) -> Result<(), String> {
        Ok(())
    }
}

/// The pages of a sending call: there should be none.
struct Refuse;

impl Pages for Refuse {
    async fn page(
        &mut self,
        _remote_ident: Option<&str>,
        _index: u32,
        _params: Params,
        _page: Bitmap,
    ) -> Result<(), String> {
        Err("a sending call received a page".into())
    }
}

/// Why a call could not be carried out (T.30 failures are in the
/// [`Outcome`] instead).
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The modem failed.
    #[error(transparent)]
    Modem(#[from] ModemError),
    /// The engine's configuration was refused.
    #[error("T.30 configuration: {0}")]
    Config(#[from] t30::T30Error),
    /// A page could not be coded for the line.
    #[error("page {page}: {source}")]
    Page {
        /// 1-based page number.
        page: u32,
        /// The codec's error.
        #[source]
        source: faxgate_fax::FaxError,
    },
    /// The sending side could not read a page or record it delivered.
    #[error("page {page}: {reason}")]
    Document {
        /// 1-based page number (in this call).
        page: u32,
        /// Why.
        reason: String,
    },
    /// The receiving side could not keep a page.
    #[error("page {page} could not be stored: {reason}")]
    Store {
        /// 1-based page number.
        page: u32,
        /// Why.
        reason: String,
    },
    /// The engine asked for something this driver cannot do.
    #[error("{0}")]
    Unsupported(&'static str),
}

/// Dials `number` and sends a document of `pages` pages, the first of
/// which has the form `first` (resolution, scan line width: what T.30
/// negotiates from), as the caller, taking each page from `doc` when it
/// is needed. `config` is the engine's caller configuration; its role
/// and training are set here, ECM and MMR are used as `config` allows
/// them, and its modems are limited to those the modem has
/// ([`limit_modems`]).
pub async fn send<S, D>(
    modem: &mut Class1<S>,
    number: &str,
    mut config: t30::Config,
    pages: u32,
    first: (Resolution, u32),
    doc: &mut D,
) -> Result<Outcome, CallError>
where
    S: AsyncRead + AsyncWrite,
    D: Document,
{
    if pages == 0 {
        return Err(CallError::Unsupported("no pages to send"));
    }
    config.role = t30::Role::Caller {
        pages,
        document_resolution: first.0,
        document_width: first.1,
    };
    limit_modems(&mut config.caps, &modem.modems())?;
    // Checked before the call is made, but started once it is answered:
    // T1 (35 s) is for the answerer's DIS, not for the rings.
    engine(config.clone())?;
    modem.dial(number, DIAL_WAIT).await?;
    let t30 = engine(config)?;
    tracing::info!(number, "Call answered; sending.");
    let result = drive(modem, t30, true, doc, &mut Refuse).await;
    modem.hangup().await.ok();
    result
}

/// Answers a ringing line and receives a fax, handing each good page to
/// `store` (whose future finishes once the page is durable: MCF waits
/// for it). `config` is set up as for [`send`]: the DIS offers only
/// modems this modem has.
pub async fn receive<S, P>(
    modem: &mut Class1<S>,
    mut config: t30::Config,
    store: &mut P,
) -> Result<Outcome, CallError>
where
    S: AsyncRead + AsyncWrite,
    P: Pages,
{
    config.role = t30::Role::Answerer;
    limit_modems(&mut config.caps, &modem.modems())?;
    engine(config.clone())?;
    modem.answer().await?;
    let t30 = engine(config)?;
    tracing::info!("Call answered; receiving.");
    let result = drive(modem, t30, false, &mut Nothing, store).await;
    modem.hangup().await.ok();
    result
}

/// Limits `caps.modems` to `usable` (what the modem can send and
/// receive, [`Class1::modems`]): all of `usable` if `caps` allowed every
/// modem, else the ones both allow, in T.30's fallback order. A modem
/// with none of T.30's modems, or none `caps` allows, cannot make the
/// call (an empty list would mean "all").
pub fn limit_modems(caps: &mut t30::Capabilities, usable: &[Modem]) -> Result<(), CallError> {
    if usable.is_empty() {
        return Err(CallError::Unsupported(
            "the modem lists no V.17, V.29 or V.27 ter modulation it can both send and \
             receive (AT+FTM=? and AT+FRM=?)",
        ));
    }
    let both: Vec<Modem> = usable
        .iter()
        .copied()
        .filter(|m| caps.allows_modem(*m))
        .collect();
    if both.is_empty() {
        return Err(CallError::Unsupported(
            "the modem has none of the T.30 modems the configuration allows",
        ));
    }
    caps.modems = both;
    Ok(())
}

fn engine(mut config: t30::Config) -> Result<T30, CallError> {
    config.training = true;
    Ok(T30::new(config, std::time::Instant::now())?)
}

/// What the line carried last, for choosing the next receive command.
struct Line {
    /// The modem is transmitting V.21 already (after `ATA`).
    tx_connected: bool,
    /// The modem is receiving V.21 already (after `ATD`).
    rx_connected: bool,
    /// The last burst was received, so a send waits for silence first.
    received_last: bool,
    /// FCF (X bit cleared) of the last frame we sent.
    last_sent: Option<u8>,
    /// FCF of the last post-page command received (answerer).
    last_ppm: Option<u8>,
    /// The last frame received was not its burst's last.
    in_burst: bool,
    /// The last thing sent was page data (a post-page command waits 75
    /// ms after it).
    after_image: bool,
    /// Pages go as ECM blocks (from the last [`Action::Negotiated`]).
    ecm: bool,
    /// FCF of the last frame received with a good FCS (caller: CTR means
    /// the next block trains long, at its new speed), if nothing has come
    /// since (a TCF received clears it).
    last_got: Option<u8>,
    /// Answerer: PPRs sent for the current block; after
    /// [`t30::PPRS_BEFORE_CTC`] of them the sender answers with CTC or
    /// EOR on V.21, not with a block.
    pprs: u32,
}

async fn drive<S, D, P>(
    modem: &mut Class1<S>,
    mut t30: T30,
    caller: bool,
    doc: &mut D,
    store: &mut P,
) -> Result<Outcome, CallError>
where
    S: AsyncRead + AsyncWrite,
    D: Document,
    P: Pages,
{
    // The sender's TSI, which comes before its first page.
    let mut remote_ident: Option<String> = None;
    let mut line = Line {
        tx_connected: !caller,
        rx_connected: caller,
        received_last: false,
        last_sent: None,
        last_ppm: None,
        in_burst: false,
        after_image: false,
        ecm: false,
        last_got: None,
        pprs: 0,
    };
    loop {
        let mut sent = false;
        while let Some(action) = t30.poll_action() {
            match action {
                Action::SendFrames(frames) => {
                    log_frames("T.30 out.", &frames);
                    let fcf = frames.last().and_then(|f| f.get(2)).map(|f| f & 0xFE);
                    if !caller && fcf == Some(fcf::FTT) && line.last_got == Some(fcf::DCS) {
                        // FTT without a check (a DCS at a modem we do not
                        // have): its TCF is on the line now, and +FRS
                        // could find its silence in the 75 ms before it.
                        // Let the TCF pass first.
                        tokio::time::sleep(TCF_PASSES).await;
                    }
                    match fcf {
                        Some(fcf::PPR) => line.pprs += 1,
                        Some(fcf::MCF | fcf::CTR | fcf::ERR) => line.pprs = 0,
                        _ => {}
                    }
                    if line.received_last && !line.tx_connected {
                        modem.wait_silence().await?;
                    } else if line.after_image {
                        // T.30's 75 ms between the page and its command
                        // (HylaFAX: +FTS=7).
                        modem.pause(7).await?;
                    }
                    line.after_image = false;
                    modem.send_frames(&frames, line.tx_connected).await?;
                    line.tx_connected = false;
                    line.rx_connected = false;
                    line.received_last = false;
                    line.last_sent = fcf;
                    sent = true;
                }
                Action::SendTraining { modem: m } => {
                    // TCF: 1.5 s of zeros at the DCS's modem.
                    let zeros = vec![0u8; tcf_len(m)];
                    modem.send_data(m, Training::Long, &zeros).await?;
                    line.received_last = false;
                    sent = true;
                }
                Action::ReceiveTraining { modem: m } => {
                    let ok = receive_training(modem, &t30, m).await?;
                    tracing::debug!(modem = ?m, ok, "Training check (TCF).");
                    line.received_last = true;
                    line.last_got = None;
                    t30.handle(Event::Training { ok }, std::time::Instant::now());
                }
                Action::SendImage(data) => {
                    modem
                        .send_data(t30.modem(), Training::Short, &dle::reverse_bits(&data))
                        .await?;
                    line.received_last = false;
                    line.after_image = true;
                    sent = true;
                }
                Action::SendEcmFrames(frames) => {
                    // After CTC the block goes at a new speed, so it
                    // trains long (T.30 Annex A; spandsp does the same).
                    let training = if line.last_got == Some(fcf::CTR) {
                        Training::Long
                    } else {
                        Training::Short
                    };
                    tracing::debug!(frames = frames.len(), ?training, "ECM block out.");
                    modem
                        .send_data(t30.modem(), training, &ecm_block(t30.modem(), &frames))
                        .await?;
                    line.last_got = None;
                    line.received_last = false;
                    line.after_image = true;
                    sent = true;
                }
                Action::NeedPage { index, params } => {
                    let page = doc
                        .page(index)
                        .await
                        .map_err(|reason| CallError::Document {
                            page: index + 1,
                            reason,
                        })?;
                    let fitted = t30::fit_page(&page.bitmap, page.resolution, &params);
                    let coded =
                        t30::encode_page(&fitted, &params).map_err(|source| CallError::Page {
                            page: index + 1,
                            source,
                        })?;
                    t30.handle(Event::Page(coded), std::time::Instant::now());
                }
                Action::PageReceived {
                    index,
                    params,
                    page,
                    bad_lines,
                    lines,
                } => {
                    tracing::info!(page = index + 1, lines, bad_lines, "Page received.");
                    store
                        .page(remote_ident.as_deref(), index, params, page)
                        .await
                        .map_err(|reason| CallError::Store {
                            page: index + 1,
                            reason,
                        })?;
                    t30.handle(Event::PageStored, std::time::Instant::now());
                }
                Action::Negotiated(p) => {
                    line.ecm = p.ecm;
                    tracing::info!(params = ?p, modem = ?t30.modem(), "Negotiated.")
                }
                Action::RemoteIdent(id) => {
                    tracing::info!(remote = %id, "Remote identity.");
                    remote_ident = Some(id);
                }
                Action::RemoteNonStandard(_) => {}
                Action::PageSent { index, .. } => {
                    tracing::info!(page = index + 1, "Page sent.");
                    doc.delivered(index)
                        .await
                        .map_err(|reason| CallError::Document {
                            page: index + 1,
                            reason,
                        })?;
                }
                Action::PageRetry { index, reason } => {
                    tracing::warn!(page = index + 1, %reason, "Page will be sent again.");
                }
                Action::PageDiscarded {
                    index, bad_lines, ..
                } => tracing::warn!(page = index + 1, bad_lines, "Page too damaged; RTN sent."),
                Action::Finished(outcome) => return Ok(outcome),
            }
        }
        if sent {
            t30.handle(Event::Sent, std::time::Instant::now());
            continue;
        }
        let deadline = deadline(&t30);
        if !caller && expects_page(&line) {
            let m = t30.modem();
            if line.ecm {
                let training = if line.last_sent == Some(fcf::CTR) {
                    Training::Long
                } else {
                    Training::Short
                };
                receive_block(modem, &mut t30, &mut line, m, training, deadline).await?;
                continue;
            }
            // A page starts within a second or two of our CFR or MCF; a
            // sender that missed it repeats its command on V.21, which a
            // modem that does not say +FCERROR would never hear under
            // +FRM: after T4 and a second, listen for frames instead.
            let carrier_by = deadline.min(tokio::time::Instant::now() + Duration::from_secs(4));
            let got = modem
                .receive_data(m, Training::Short, carrier_by, |d| {
                    t30.handle(
                        Event::ImageData(dle::reverse_bits(d)),
                        std::time::Instant::now(),
                    );
                })
                .await?;
            line.received_last = true;
            match got {
                Received::Got(()) => {
                    // The page is over; its post-page command comes as frames.
                    line.last_sent = None;
                    t30.handle(Event::ImageEnd, std::time::Instant::now());
                }
                Received::Frames => line.last_sent = None,
                Received::NoCarrier | Received::Timeout => {
                    if tokio::time::Instant::now() < deadline {
                        line.last_sent = None;
                    } else {
                        expire(&mut t30);
                    }
                }
            }
            continue;
        }
        // The next frame of a burst follows at once, whatever is left of
        // the engine's timer.
        let deadline = if line.in_burst {
            deadline.max(tokio::time::Instant::now() + Duration::from_secs(3))
        } else {
            deadline
        };
        match modem.receive_frame(deadline, line.rx_connected).await? {
            Received::Got(frame) => {
                line.rx_connected = false;
                line.received_last = true;
                line.in_burst = !frame.is_final();
                if let Some(f) = frame.bytes.get(2).map(|f| f & 0xFE)
                    && frame.fcs_ok
                {
                    line.last_got = Some(f);
                    if [fcf::MPS, fcf::PRI_MPS, fcf::EOP, fcf::EOM].contains(&f) {
                        line.last_ppm = Some(f);
                    } else if matches!(f, fcf::PPS | fcf::EOR) {
                        // ECM: the post-page command is the FIF's first
                        // octet (NULL within a page).
                        line.last_ppm = frame.bytes.get(3).map(|p| p & 0xFE);
                    }
                }
                log_frames("T.30 in.", std::slice::from_ref(&frame.bytes));
                t30.handle(
                    Event::Frame {
                        bytes: frame.bytes,
                        fcs_ok: frame.fcs_ok,
                    },
                    std::time::Instant::now(),
                );
            }
            Received::NoCarrier | Received::Frames | Received::Timeout => {
                line.rx_connected = false;
                line.in_burst = false;
                // Whatever the modem heard may still be on the line: wait
                // for silence before answering.
                line.received_last = true;
                expire(&mut t30);
            }
        }
    }
}

/// Answerer: whether page data comes next. Without ECM: after CFR, or
/// after MCF to MPS. With ECM (T.30 Annex A) a block also follows PPR
/// (the frames asked for again; but after the fourth PPR in a row the
/// sender says CTC or EOR) and CTR, and MCF or ERR to a PPS or EOR whose
/// post-page command is NULL (the page goes on) or MPS.
fn expects_page(line: &Line) -> bool {
    // The post-page command says the page (or the document) goes on.
    let goes_on = match line.last_ppm {
        Some(fcf::MPS | fcf::PRI_MPS) => true,
        Some(fcf::NULL) => line.ecm,
        _ => false,
    };
    match line.last_sent {
        Some(fcf::CFR) => true,
        Some(fcf::MCF) => goes_on,
        Some(fcf::ERR) => line.ecm && goes_on,
        Some(fcf::PPR) => line.ecm && !line.pprs.is_multiple_of(t30::PPRS_BEFORE_CTC),
        Some(fcf::CTR) => line.ecm,
        _ => false,
    }
}

/// One ECM block as the line carries it at `m`: HDLC flags for
/// [`ECM_PREAMBLE`] (the receiver's demodulator settles and its decoder
/// finds the flags), the frames with their FCS, and trailing flags so the
/// last RCP is clear of the carrier's end.
fn ecm_block(m: Modem, frames: &[Vec<u8>]) -> Vec<u8> {
    let mut e = hdlc::Encoder::new();
    e.flags(one_second(m) * ECM_PREAMBLE.as_millis() as usize / 1000);
    for f in frames {
        e.frame(f);
    }
    e.flags(ECM_TRAILING_FLAGS);
    e.finish()
}

/// How long an FTT waits after a DCS whose TCF we do not check: the
/// 75 ms before TCF and its 1.5 s (+10 %).
const TCF_PASSES: Duration = Duration::from_millis(1_750);

/// Flags before an ECM block's first frame, as time on the line.
const ECM_PREAMBLE: Duration = Duration::from_millis(200);
/// Flags after its last frame.
const ECM_TRAILING_FLAGS: usize = 8;

/// Answerer with ECM: receives one block at `m`, handing each frame the
/// HDLC decoder finds to the engine (which counts a bad FCS as missing
/// and answers the PPS that follows with MCF or PPR).
async fn receive_block<S>(
    modem: &mut Class1<S>,
    t30: &mut T30,
    line: &mut Line,
    m: Modem,
    training: Training,
    deadline: tokio::time::Instant,
) -> Result<(), ModemError>
where
    S: AsyncRead + AsyncWrite,
{
    let carrier_by = deadline.min(tokio::time::Instant::now() + Duration::from_secs(4));
    let mut decoder = hdlc::Decoder::new();
    let (mut good, mut bad) = (0u32, 0u32);
    let got = modem
        .receive_data(m, training, carrier_by, |d| {
            for f in decoder.push(d) {
                if f.fcs_ok {
                    good += 1;
                } else {
                    bad += 1;
                }
                t30.handle(
                    Event::EcmFrame {
                        bytes: f.bytes,
                        fcs_ok: f.fcs_ok,
                    },
                    std::time::Instant::now(),
                );
            }
        })
        .await?;
    line.received_last = true;
    line.last_sent = None;
    match got {
        Received::Got(()) => {
            tracing::debug!(good, bad, "ECM block in.");
            // T2 for the PPS runs from here, even if the RCPs were lost.
            t30.handle(Event::ImageEnd, std::time::Instant::now());
        }
        Received::Frames => {}
        Received::NoCarrier | Received::Timeout => {
            if tokio::time::Instant::now() >= deadline {
                expire(t30);
            }
        }
    }
    Ok(())
}

/// Receives TCF and judges it: good if it holds a run of zeros of at
/// least one second (of the 1.5 s sent), as spandsp's receiver does.
async fn receive_training<S>(modem: &mut Class1<S>, t30: &T30, m: Modem) -> Result<bool, ModemError>
where
    S: AsyncRead + AsyncWrite,
{
    let (mut run, mut best) = (0usize, 0usize);
    let got = modem
        .receive_data(m, Training::Long, deadline(t30), |d| {
            for &b in d {
                if b == 0 {
                    run += 1;
                    best = best.max(run);
                } else {
                    run = 0;
                }
            }
        })
        .await?;
    Ok(got == Received::Got(()) && best >= one_second(m))
}

/// Octets of TCF: 1.5 s at `m`'s bit rate.
fn tcf_len(m: Modem) -> usize {
    one_second(m) * 3 / 2
}

fn one_second(m: Modem) -> usize {
    m.bit_rate() as usize / 8
}

/// The engine's next timeout as a tokio deadline (a minute if it has
/// none, so that a silent line is looked at again).
fn deadline(t30: &T30) -> tokio::time::Instant {
    let now = std::time::Instant::now();
    let at = t30
        .poll_timeout()
        .unwrap_or(now + Duration::from_secs(60))
        .max(now);
    tokio::time::Instant::now() + (at - now)
}

/// Nothing came: if the engine's timer has run out, that is its
/// timeout; otherwise (data meanwhile re-armed it, or the modem gave up
/// early) the driver listens again.
fn expire(t30: &mut T30) {
    let now = std::time::Instant::now();
    if t30.poll_timeout().is_some_and(|t| t <= now) {
        t30.handle(Event::Timeout, now);
    }
}

fn log_frames(what: &'static str, frames: &[Vec<u8>]) {
    if tracing::enabled!(tracing::Level::DEBUG) {
        let names: Vec<String> = frames
            .iter()
            .map(|f| {
                t30::frame::Frame::parse(f)
                    .map(|fr| fr.describe())
                    .unwrap_or_else(|_| format!("{f:02x?}"))
            })
            .collect();
        tracing::debug!(frames = %names.join(" "), "{what}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(ecm: bool, last_sent: Option<u8>, last_ppm: Option<u8>) -> Line {
        Line {
            tx_connected: false,
            rx_connected: false,
            received_last: true,
            last_sent,
            last_ppm,
            in_burst: false,
            after_image: false,
            ecm,
            last_got: None,
            pprs: 1,
        }
    }

    #[test]
    fn the_answerer_listens_for_a_page_or_block_when_one_comes() {
        use fcf::*;
        let cases = [
            // (ECM, we sent, post-page command, a page or block next)
            (false, Some(CFR), None, true),
            (false, Some(MCF), Some(MPS), true),
            (false, Some(MCF), Some(PRI_MPS), true),
            (false, Some(MCF), Some(EOP), false),
            (false, Some(MCF), Some(EOM), false),
            (false, Some(RTN), Some(MPS), false),
            (false, Some(DIS), None, false),
            (true, Some(CFR), None, true),
            (true, Some(MCF), Some(NULL), true),
            (true, Some(MCF), Some(MPS), true),
            (true, Some(MCF), Some(EOP), false),
            (true, Some(PPR), Some(EOP), true),
            (true, Some(CTR), Some(NULL), true),
            (true, Some(ERR), Some(NULL), true),
            (true, Some(ERR), Some(EOP), false),
            (true, Some(RNR), Some(NULL), false),
            (false, Some(PPR), Some(NULL), false),
            (true, None, Some(MPS), false),
        ];
        for (ecm, sent, ppm, want) in cases {
            assert_eq!(
                expects_page(&line(ecm, sent, ppm)),
                want,
                "ecm {ecm}, sent {sent:02x?}, ppm {ppm:02x?}"
            );
        }
        // After the fourth PPR for a block comes CTC or EOR, not a block;
        // after the fifth (following CTR) a block again.
        for (pprs, want) in [(1, true), (3, true), (4, false), (5, true), (8, false)] {
            let l = Line {
                pprs,
                ..line(true, Some(PPR), Some(NULL))
            };
            assert_eq!(expects_page(&l), want, "{pprs} PPRs");
        }
    }

    #[test]
    fn an_ecm_block_has_200_ms_of_flags_then_its_frames() {
        let frames = vec![
            vec![0xFF, 0x03, 0x06, 0x00, 1, 2, 3],
            vec![0xFF, 0x03, 0x86],
        ];
        let block = ecm_block(Modem::V17_14400, &frames);
        assert!(block[..360].iter().all(|&b| b == hdlc::FLAG));
        assert_ne!(block[360], hdlc::FLAG);
        let got = hdlc::Decoder::new().push(&block);
        let back: Vec<Vec<u8>> = got.into_iter().map(|f| f.bytes).collect();
        assert_eq!(back, frames);
        // At 2400 bit/s, 60 flags.
        let slow = ecm_block(Modem::V27ter2400, &frames);
        assert!(slow[..60].iter().all(|&b| b == hdlc::FLAG));
        assert_ne!(slow[60], hdlc::FLAG);
    }

    #[test]
    fn tcf_is_one_and_a_half_seconds() {
        assert_eq!(tcf_len(Modem::V17_14400), 2700);
        assert_eq!(tcf_len(Modem::V27ter2400), 450);
    }

    /// The engine's modems are the modem's, narrowed by the config's own
    /// list when it has one; nothing in common is an error, never the
    /// empty "all" list.
    #[test]
    fn the_modems_are_limited_to_the_modems_the_modem_has() {
        use Modem::*;
        const V29: &[Modem] = &[V29_9600, V29_7200, V27ter4800, V27ter2400];
        /// The config's modems, the modem's, and the result (None: an error).
        type Case = (&'static [Modem], &'static [Modem], Option<&'static [Modem]>);
        let cases: &[Case] = &[
            (&[], V29, Some(V29)),
            (
                &[V17_14400, V29_7200, V27ter2400],
                V29,
                Some(&[V29_7200, V27ter2400]),
            ),
            (&[], &Modem::FALLBACK, Some(&Modem::FALLBACK)),
            (&[V17_14400], V29, None),
            (&[], &[], None),
        ];
        for (configured, usable, want) in cases {
            let mut caps = t30::Capabilities {
                modems: configured.to_vec(),
                ..t30::Capabilities::minimal()
            };
            let got = limit_modems(&mut caps, usable).map(|()| caps.modems);
            match want {
                Some(w) => assert_eq!(got.unwrap(), *w, "{configured:?} {usable:?}"),
                None => assert!(
                    matches!(got, Err(CallError::Unsupported(_))),
                    "{configured:?} {usable:?}: {got:?}"
                ),
            }
        }
    }
}
