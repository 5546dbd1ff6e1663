//! T.30: the fax procedure, as a sans-io state machine.
//!
//! [`T30`] runs one call as the sending station ([`Role::Caller`]) or the
//! receiving one ([`Role::Answerer`]). It takes [`Event`]s (frames and
//! image data from the peer, the local user's pages, timeouts) with the
//! current time as a value, and queues [`Action`]s (frames and image data
//! to send, pages to store, the final [`Outcome`]). It never reads a
//! clock, a socket or a file; the session layer owns those and maps the
//! actions onto T.38 packets.
//!
//! The transport is T.38 over TCP by default: reliable, so there is no
//! training check (TCF) and the answerer confirms DCS with CFR at once;
//! the T.30 timers (T1, T2, T4, T5) and command repetition still run,
//! because the far end may be a gateway to a real line. On a line that
//! carries TCF, as a modem line does, [`Config::training`] turns the check
//! on: the caller sends TCF after every DCS ([`Action::SendTraining`]),
//! and the answerer has it checked ([`Action::ReceiveTraining`]) and
//! answers CFR or FTT by the result ([`Event::Training`]).
//!
//! # Layout
//!
//! - [`frame`]: FCF values, HDLC frame parsing and building, and the
//!   DIS/DCS, CSI/TSI, NSF/NSS, PPS/PPR and FCD/RCP fields.
//! - `engine`: the [`T30`] state machine.
//! - `ecm`: T.4 Annex A partial pages (blocks of up to 256 frames of 256
//!   octets) for both directions.
//! - Here: the configuration and event/action types, [`negotiate`] (what a
//!   sender picks from a DIS), [`encode_page`] (the coding a page must
//!   have) and [`fit_page`] (resampling a page to the negotiated
//!   resolution and width).
//!
//! # Bytes
//!
//! HDLC frames (control and ECM) hold T.30 octet values: the first bit on
//! the line is the least significant bit of each octet, as in spandsp.
//! ECM FCD payloads therefore hold the coded page with its first bit in
//! the LSB of each octet. Non-ECM image data ([`Action::SendImage`],
//! [`Event::ImageData`], [`Event::Page`]) holds the coded page as the
//! crate's [`Encoder`](crate::Encoder) writes it: first bit in the MSB.
//!
//! # Choices and limits
//!
//! - The answerer sends MCF only after [`Event::PageStored`]. In ECM a
//!   repeated PPS (or RR, or CRP) meanwhile gets RNR; without ECM, where
//!   T.30 has no RNR, a repeated post-page command (or CRP) is left
//!   unanswered until the page is stored, so storage must take less than
//!   `retries` x T4. The driver must keep feeding the peer's frames while
//!   the page is stored: read only afterwards, a repeat would get a second
//!   MCF that the sender credits to its next page.
//! - T4 runs from [`Event::Sent`] (the burst is written), not from when a
//!   command was queued, so a long page on a slow link keeps its full T4.
//!   With training, the TCF after DCS belongs to that burst: the driver
//!   reports `Sent` once both are out, so T4 for CFR runs from the end of
//!   TCF.
//! - With training, the answerer judges nothing itself: the driver
//!   receives TCF at the DCS's modem and says whether it passed. No
//!   result within T2 counts as a failed check. Each failure is answered
//!   FTT and the answerer waits for DCS again (the caller steps down a
//!   modem, or tries the same one again); at most
//!   `Modem::FALLBACK.len() + retries` FTTs per page (one for each speed
//!   a sender can step down through, and `retries` more), then DCN
//!   ([`Failure::NoProgress`]). A DCS repeated after CFR (the caller
//!   missed it) comes with TCF again and is checked again.
//! - DCS selects the fastest modem that both the DIS and our
//!   [`Capabilities::modems`] permit ([`frame::Modem`], spandsp's fallback
//!   sequence; none in common is [`Failure::Incompatible`]) and steps
//!   down one of those at each FTT. The answerer's DIS offers only modem
//!   families its [`Capabilities::modems`] cover. DCS declares the
//!   minimum scan line time the DIS asks for
//!   ([`frame::MinScan`]; 0 ms with ECM or MMR), and a non-ECM page is
//!   coded again with that many bits per line (rate x time) before it
//!   goes. RTN and RTP retrain one modem slower (spandsp
//!   `step_fallback_entry`); at the slowest modem a page RTN rejected goes
//!   again at that speed, within the RTN limit (spandsp gives up there).
//!   In ECM they count only after the PPS that ends the page: to PPS-NULL
//!   T.30 Annex A has MCF, PPR and RNR, so RTP, RTN or PIN there ends the
//!   call ([`Failure::UnexpectedFrame`], as spandsp hangs up) rather than
//!   report a page sent whose later blocks never went.
//! - An ECM receiver never answers RTN (not an ECM response): a page
//!   whose frames all arrived is confirmed with its bad-line count, and
//!   one that does not decode at all, or is cut short (an undecodable line
//!   in coding without EOLs, or past [`crate::MAX_PAGE_LINES`]), ends the
//!   call ([`Failure::BadPageData`]) rather than confirm a truncated page.
//! - The answerer caps the loops a peer can drive with commands alone,
//!   each of which would restart T2 for ever: `retries` RTNs per page,
//!   `4 x (retries + 1)` PPRs and `retries` CTCs per ECM block, and
//!   `4 x retries` answers given again (RR, CRP, a repeated command or
//!   DCS) without new page data. Past a cap it sends DCN
//!   ([`Failure::PageRejected`], [`Failure::NoProgress`]).
//! - ECM frames are sent with 256 octets; received frames of any size
//!   from 1 to 256 are accepted (an FCD frame without data is malformed,
//!   so it is asked for again with PPR: a block cannot be empty). After 4 PPRs for one block the sender sends
//!   CTC, one modem slower, if those PPRs confirmed any frame, and EOR if
//!   not (T.30 Annex A, spandsp `process_rx_ppr`); at most `retries` CTCs
//!   per block (the answerer's cap), and at the slowest modem CTC keeps
//!   that speed (spandsp sends EOR there). ERR to EOR moves on to the next
//!   block or page, which counts as delivered with uncorrected errors
//!   ([`Action::PageSent`]'s `uncorrected`, [`Outcome::uncorrected_pages`]):
//!   T.30 has the sender go on after ERR, and the receiver has already
//!   kept the page, so a resend in a later call would duplicate it
//!   (spandsp hangs up after ERR instead, marked as a TODO there). As a
//!   receiver, CTC is answered with CTR, and EOR with ERR: the block is
//!   kept as it is (missing frames become bad lines) and the page goes on
//!   (EOR with a post-page command ends it; ERR then waits for the store).
//! - Not supported: polling (DTC/CIG/NSC are unexpected frames),
//!   passwords and subaddresses (PWD/SUB/SID are ignored), EOM on the
//!   sending side (the answerer handles it), colour and JBIG modes.

mod ecm;
mod engine;
pub mod frame;

use std::time::Duration;

pub use engine::{PPRS_BEFORE_CTC, T30};

use crate::{Bitmap, Coding, EncoderOptions, FaxError, Resolution};

/// What a station supports (the answerer's DIS) or may use (the caller).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Resolutions; [`Resolution::Standard`] is always implied.
    pub resolutions: Vec<Resolution>,
    /// Paper widths as 8 pels/mm scan line lengths (1728, 2048, 2432);
    /// 1728 (A4) is always implied. At 300 and 400 dpi the same paper
    /// widths have longer lines (see [`frame::line_widths`]).
    pub widths: Vec<u32>,
    /// T.4 two-dimensional coding (MR); MH is always implied.
    pub mr: bool,
    /// T.6 coding (MMR); usable only with ECM, as T.30 requires.
    pub mmr: bool,
    /// Error correction mode (T.30 Annex A).
    pub ecm: bool,
    /// The high-speed modems this station can use; empty means all of
    /// [`frame::Modem::FALLBACK`]. The answerer's DIS offers only modem
    /// families these cover (see [`Capabilities::to_dis_fif`]), and the
    /// caller's DCS and its step-downs use only modems both these and the
    /// remote's DIS allow. A DIS read by [`Capabilities::from_dis_fif`]
    /// leaves it empty: [`frame::Modem::permitted_by_dis`] reads the
    /// modem field.
    pub modems: Vec<frame::Modem>,
}

impl Capabilities {
    /// Everything this crate can code: all resolutions and widths, MH, MR,
    /// MMR and ECM.
    pub fn all() -> Self {
        Capabilities {
            resolutions: Resolution::ALL.to_vec(),
            widths: frame::line_widths(Resolution::Standard).to_vec(),
            mr: true,
            mmr: true,
            ecm: true,
            modems: Vec::new(),
        }
    }

    /// The T.30 minimum every fax has: MH, standard resolution, A4, no ECM.
    pub fn minimal() -> Self {
        Capabilities {
            resolutions: vec![Resolution::Standard],
            widths: vec![crate::width::A4],
            mr: false,
            mmr: false,
            ecm: false,
            modems: Vec::new(),
        }
    }

    /// Whether this station can use `modem` (every modem when
    /// [`Capabilities::modems`] is empty).
    pub fn allows_modem(&self, modem: frame::Modem) -> bool {
        self.modems.is_empty() || self.modems.contains(&modem)
    }

    /// Whether `r` is supported (standard always is).
    pub fn supports_resolution(&self, r: Resolution) -> bool {
        r == Resolution::Standard || self.resolutions.contains(&r)
    }

    /// Whether paper width class `class` (0 = A4, 1 = B4, 2 = A3) is
    /// supported (A4 always is).
    pub fn has_width_class(&self, class: usize) -> bool {
        class == 0
            || frame::line_widths(Resolution::Standard)
                .get(class)
                .is_some_and(|w| self.widths.contains(w))
    }

    /// Checks a received DCS against these (offered) capabilities; the
    /// error names the field that was not offered.
    fn check_dcs(&self, p: &Params) -> Result<(), String> {
        if !self.supports_resolution(p.resolution) {
            let (x, y) = p.resolution.dpi();
            return Err(format!("resolution {:?} ({x}x{y} dpi)", p.resolution));
        }
        match frame::width_class(p.width, p.resolution) {
            Some(c) if self.has_width_class(c) => {}
            _ => return Err(format!("scan line width {} pixels", p.width)),
        }
        match p.coding {
            Coding::Mh => {}
            Coding::Mr { .. } if self.mr => {}
            Coding::Mr { .. } => return Err("MR (T.4 two-dimensional) coding".into()),
            Coding::Mmr if self.mmr => {}
            Coding::Mmr => return Err("MMR (T.6) coding".into()),
        }
        if p.ecm && !self.ecm {
            return Err("error correction mode (ECM)".into());
        }
        Ok(())
    }
}

/// What DCS chose for the document: the form every page is coded in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Params {
    /// The resolution.
    pub resolution: Resolution,
    /// The scan line length in pixels at `resolution` (1728/2048/2432 at
    /// 8 pels/mm, 2592/3072/3648 at 300 dpi, 3456/4096/4864 at 400 dpi).
    pub width: u32,
    /// The coding (MR with T.4's K for the resolution).
    pub coding: Coding,
    /// Whether pages go as ECM frames.
    pub ecm: bool,
}

/// The T.30 timers and the repeat count, configurable so that tests and
/// odd links can shorten or stretch them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timers {
    /// T1: how long to wait for the other station to identify itself
    /// (caller: for DIS; answerer: for the first command). 35 s.
    pub t1: Duration,
    /// T2: how long to wait for a command or page data. 6 s.
    pub t2: Duration,
    /// T4: how long to wait for a response before repeating the command
    /// (the answerer also repeats DIS at this interval). 3 s.
    pub t4: Duration,
    /// T5: how long an ECM receiver may stay not ready (RNR). 60 s.
    pub t5: Duration,
    /// How many times a command is sent before giving up (T.30: 3). Also
    /// the RTN limit per page and the CTC limit per ECM block (each CTC
    /// after 4 PPRs).
    pub retries: u32,
}

impl Default for Timers {
    /// The values of T.30 5.4.3.
    fn default() -> Self {
        Timers {
            t1: Duration::from_secs(35),
            t2: Duration::from_secs(6),
            t4: Duration::from_secs(3),
            t5: Duration::from_secs(60),
            retries: 3,
        }
    }
}

/// Which side of the call this station is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Sends a document of `pages` pages whose native form is `document`
    /// (resolution, scan line width in pixels at that resolution). Pages
    /// are asked for one at a time with [`Action::NeedPage`].
    Caller {
        /// Number of pages (at least 1).
        pages: u32,
        /// The resolution the pages were scanned or rendered at.
        document_resolution: Resolution,
        /// The pages' width in pixels (a T.4 scan line at that resolution).
        document_width: u32,
    },
    /// Receives whatever the caller sends.
    Answerer,
}

/// Everything a [`T30`] needs to run one call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Caller or answerer.
    pub role: Role,
    /// Our TSI (caller) or CSI (answerer): up to 20 characters of digits,
    /// space and '+'. Empty sends no identity frame.
    pub ident: String,
    /// What we support (answerer's DIS) or may use (caller).
    pub caps: Capabilities,
    /// Timers and repeat count.
    pub timers: Timers,
    /// An opaque payload sent as NSF with DIS (answerer) or NSS with DCS
    /// (caller), behind faxgate's T.35 prefix; at most
    /// [`frame::MAX_NON_STANDARD`] octets.
    pub non_standard: Option<Vec<u8>>,
    /// RTN policy: the largest share of bad lines, in percent, of a page
    /// that is still confirmed (see [`crate::PageSummary::acceptable`]).
    /// Non-ECM only: ECM has no RTN, and its pages arrive as sent.
    pub max_bad_percent: u32,
    /// RTN policy: the longest run of bad lines a confirmed page may have.
    pub max_consecutive_bad: u64,
    /// The line carries the training check (TCF), as a modem line does:
    /// the caller sends TCF after each DCS ([`Action::SendTraining`]) and
    /// the answerer has it checked before it answers CFR or FTT
    /// ([`Action::ReceiveTraining`], [`Event::Training`]). False for T.38
    /// over TCP, where the answerer confirms DCS with CFR at once.
    pub training: bool,
}

/// A [`Config`] that cannot work.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum T30Error {
    /// The local identity breaks T.30's rules.
    #[error("invalid station identity {ident:?}: {reason}")]
    InvalidIdent {
        /// The identity given.
        ident: String,
        /// What is wrong.
        reason: String,
    },
    /// Any other inconsistent setting.
    #[error("invalid T.30 configuration: {reason}")]
    InvalidConfig {
        /// Which setting, and why.
        reason: String,
    },
}

/// Something that happened, fed to [`T30::handle`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// One V.21 HDLC control frame from the peer: address 0xFF, control
    /// 0x03/0x13, FCF, FIF (no flags, no FCS). `fcs_ok: false` frames are
    /// ignored, as a modem would; the sender repeats.
    Frame {
        /// The frame.
        bytes: Vec<u8>,
        /// Whether its FCS was good.
        fcs_ok: bool,
    },
    /// Non-ECM T.4 page data from the peer, in order, in any chunking.
    ImageData(Vec<u8>),
    /// The end of a high-speed burst: a non-ECM page, or an ECM block
    /// (whose PPS then has T2 to come, even if its RCPs were lost).
    ImageEnd,
    /// One high-speed HDLC frame (ECM FCD or RCP) from the peer.
    EcmFrame {
        /// The frame.
        bytes: Vec<u8>,
        /// Whether its FCS was good; bad frames count as missing.
        fcs_ok: bool,
    },
    /// Caller: the coded page asked for by [`Action::NeedPage`], made
    /// with [`encode_page`].
    Page(Vec<u8>),
    /// Answerer: the page announced by [`Action::PageReceived`] is
    /// durable, so MCF may confirm it.
    PageStored,
    /// Answerer, with [`Config::training`]: the result of the training
    /// check asked for by the latest [`Action::ReceiveTraining`]. `ok` is
    /// answered with CFR and starts the page; a failure is answered with
    /// FTT, and the caller sends DCS and TCF again, usually one modem
    /// slower. A result nothing asked for (any more) is ignored.
    Training {
        /// Whether TCF arrived well enough to receive a page at its modem.
        ok: bool,
    },
    /// Everything the actions drained so far asked to send has been
    /// written and flushed. A command's T4 runs from here rather than from
    /// when the burst was queued, so that a large page on a slow link does
    /// not use up the wait for its response (a driver that never sends
    /// this gets T4 from the queueing time). With training, send it only
    /// once the [`Action::SendTraining`] after a DCS is out too, so that
    /// T4 for CFR runs from the end of TCF.
    Sent,
    /// The local user cancelled: finish politely with DCN.
    Cancel,
    /// [`T30::poll_timeout`] has passed.
    Timeout,
    /// The transport is gone.
    Closed,
}

/// Something the session layer must do, drained with [`T30::poll_action`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// One V.21 burst: complete HDLC frames (address, control, FCF, FIF),
    /// the last one with control 0x13.
    SendFrames(Vec<Vec<u8>>),
    /// One non-ECM high-speed burst: the whole coded page.
    SendImage(Vec<u8>),
    /// One ECM high-speed burst of HDLC frames (FCD..., RCP, RCP, RCP).
    SendEcmFrames(Vec<Vec<u8>>),
    /// Caller, with [`Config::training`]: send the training check (TCF)
    /// right after the [`Action::SendFrames`] burst before it, which ends
    /// with DCS: 1.5 s (T.30: ±10 %) of zeros at `modem`, so that the
    /// answerer can judge the line at that speed. It follows every DCS,
    /// also a repeated one. Report [`Event::Sent`] once both are out: T4
    /// for CFR runs from there.
    SendTraining {
        /// The modem the DCS selected.
        modem: frame::Modem,
    },
    /// Answerer, with [`Config::training`]: a DCS was accepted; receive
    /// the caller's TCF at `modem`, judge it, and report
    /// [`Event::Training`]. The criterion is the driver's (spandsp wants
    /// a long enough run of zeros). CFR or FTT waits for the result; none
    /// within T2 counts as a failure.
    ReceiveTraining {
        /// The modem the DCS selected.
        modem: frame::Modem,
    },
    /// Informational: the parameters, once DCS is sent (caller) or
    /// accepted (answerer), and again if a later DCS changes them.
    Negotiated(Params),
    /// The peer's CSI (caller) or TSI (answerer), trimmed.
    RemoteIdent(String),
    /// The payload of the peer's NSF/NSS, if it carries faxgate's prefix.
    RemoteNonStandard(Vec<u8>),
    /// Caller: code page `index` (0-based) for `params` (see
    /// [`fit_page`] and [`encode_page`]) and hand it over as
    /// [`Event::Page`].
    NeedPage {
        /// Zero-based page index.
        index: u32,
        /// The form the page must have.
        params: Params,
    },
    /// Caller: MCF (or RTP, or ERR after EOR) received: page `index` is
    /// delivered.
    PageSent {
        /// Zero-based page index.
        index: u32,
        /// ECM: the sender gave up correcting a block of it (EOR, T.30
        /// Annex A) and the receiver took it with frames missing (ERR).
        /// The receiver has the page, with some lines lost.
        uncorrected: bool,
    },
    /// Caller: the receiver rejected the page (RTN); it will be sent again.
    PageRetry {
        /// Zero-based page index.
        index: u32,
        /// Why, for the job log.
        reason: String,
    },
    /// Answerer: a good page. Store it and reply [`Event::PageStored`];
    /// MCF waits for that.
    PageReceived {
        /// Zero-based page index.
        index: u32,
        /// The parameters it was sent with.
        params: Params,
        /// The decoded page.
        page: Bitmap,
        /// Lines that did not decode (replaced by the previous line).
        bad_lines: u64,
        /// Lines in the page.
        lines: u64,
    },
    /// Answerer: the page was too damaged; RTN was sent and the sender
    /// will send it again. Never in ECM, which has no RTN.
    PageDiscarded {
        /// Zero-based page index.
        index: u32,
        /// Lines that did not decode.
        bad_lines: u64,
        /// Lines in the page.
        lines: u64,
    },
    /// The last action: nothing more happens.
    Finished(Outcome),
}

/// How a call ended: what the job record shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Ok, or why the call failed.
    pub result: Result<(), Failure>,
    /// Pages delivered (caller) or stored (answerer).
    pub pages: u32,
    /// Zero-based indices of the pages among `pages` that went with
    /// uncorrected errors: a block of them ended with EOR/ERR (ECM, T.30
    /// Annex A) instead of MCF. The call still counts as a success, as the
    /// receiver confirmed the page, but the job record should say so.
    pub uncorrected_pages: Vec<u32>,
    /// The peer's identity, if it sent one.
    pub remote_ident: Option<String>,
    /// Answerer: the sender disconnected before EOP, so the stored pages
    /// are a partial document.
    pub remote_ended_early: bool,
}

/// Why a call failed. `Display` gives the one-line reason for the user.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// The other station never identified itself (no DIS, or no command).
    #[error("T1 expired: the remote fax never started the T.30 procedure")]
    T1Expired,
    /// A command or page data did not come.
    #[error("T2 expired while waiting for {waiting_for}")]
    T2Expired {
        /// What was expected.
        waiting_for: String,
    },
    /// A command was repeated without a response.
    #[error("T4 expired: no response to {command} after {tries} tries")]
    T4Expired {
        /// The command (DCS, MPS, EOP, PPS-NULL, RR, ...).
        command: String,
        /// How often it was sent.
        tries: u32,
    },
    /// The ECM receiver stayed not ready too long.
    #[error("T5 expired: the receiver stayed busy (RNR) too long")]
    T5Expired,
    /// The remote cannot receive what we have.
    #[error("incompatible remote fax: {0}")]
    Incompatible(String),
    /// A frame that cannot be parsed.
    #[error("invalid frame from the remote: {0}")]
    InvalidFrame(String),
    /// A frame that makes no sense now, or an unknown FCF.
    #[error("unexpected frame from the remote: {0}")]
    UnexpectedFrame(String),
    /// The sender's DCS chose something our DIS did not offer.
    #[error("the sender asked for something not offered in our DIS: {0}")]
    DcsNotOffered(String),
    /// The remote sent DCN where the procedure does not allow it.
    #[error("the remote fax hung up (DCN) before the document was complete")]
    RemoteDisconnected,
    /// The local user cancelled.
    #[error("cancelled by the local user")]
    Cancelled,
    /// The transport closed under the call.
    #[error("the connection to the remote fax was lost")]
    TransportClosed,
    /// Answerer: an ECM page arrived intact (every frame passed its FCS)
    /// but not one scan line of it decodes. ECM has no RTN, and the same
    /// data sent again would fail again, so the call ends.
    #[error("page {} arrived intact (ECM) but does not decode: {reason}", .index + 1)]
    BadPageData {
        /// Zero-based page index.
        index: u32,
        /// What the decoder said.
        reason: String,
    },
    /// Answerer: the remote went round in a loop (the same command, RR or
    /// CRP again and again, or a block it never completes) past the caps
    /// that keep a hostile peer from holding the call open.
    #[error("the remote fax made no progress: {0}")]
    NoProgress(String),
    /// A page was refused too often (RTN).
    #[error("page {} was rejected by the receiver after {tries} tries", .index + 1)]
    PageRejected {
        /// Zero-based page index.
        index: u32,
        /// How often it was sent.
        tries: u32,
    },
}

impl Failure {
    /// Whether a sender may try the document again in a new call, resuming
    /// at the first page without MCF: every failure but a cancel and an
    /// incompatible receiver (which a new call would meet again).
    /// [`Failure::DcsNotOffered`] is the answerer's and never retried.
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            Failure::Cancelled | Failure::Incompatible(_) | Failure::DcsNotOffered(_)
        )
    }
}

/// The coding [`T30`] expects for a page: `params`' coding with T.4 line
/// framing (EOLs and RTC for MH/MR, EOFB for MMR) and no fill. The page
/// must already be `params.width` wide (see [`fit_page`]).
pub fn encode_page(page: &Bitmap, params: &Params) -> Result<Vec<u8>, FaxError> {
    if page.width() != params.width {
        return Err(FaxError::Geometry {
            reason: format!(
                "page is {} pixels wide but the negotiated scan line is {} \
                 (use t30::fit_page)",
                page.width(),
                params.width
            ),
        });
    }
    page.encode(EncoderOptions::wire(params.coding, params.width))
}

/// The best resolution both stations support that is not finer than the
/// document in either direction: the document's own if the receiver has
/// it, standard at worst (which every fax has and which no document is
/// coarser than).
pub fn choose_resolution(
    local: &Capabilities,
    remote: &Capabilities,
    document: Resolution,
) -> Resolution {
    let both = |r| local.supports_resolution(r) && remote.supports_resolution(r);
    if both(document) {
        return document;
    }
    let (dx, dy) = document.dpi();
    Resolution::ALL
        .into_iter()
        .filter(|&r| both(r))
        .filter(|r| {
            let (x, y) = r.dpi();
            x <= dx && y <= dy
        })
        .max_by_key(|r| {
            let (x, y) = r.dpi();
            (x * y, y)
        })
        .unwrap_or(Resolution::Standard)
}

/// What a caller sends: the best both stations support. Coding MMR > MR >
/// MH, MMR only with ECM on both sides (T.30); ECM if both have it; the
/// resolution from [`choose_resolution`]; the document's paper width if
/// both support it, else the largest both support below it (A4 always).
/// Fails only for a document width that is not a T.4 scan line at its
/// resolution.
pub fn negotiate(
    local: &Capabilities,
    remote: &Capabilities,
    doc_res: Resolution,
    doc_width: u32,
) -> Result<Params, Failure> {
    let ecm = local.ecm && remote.ecm;
    let coding = if ecm && local.mmr && remote.mmr {
        Coding::Mmr
    } else if local.mr && remote.mr {
        Coding::Mr { k: 0 }
    } else {
        Coding::Mh
    };
    let resolution = choose_resolution(local, remote, doc_res);
    let coding = match coding {
        Coding::Mr { .. } => Coding::Mr {
            k: resolution.mr_k(),
        },
        c => c,
    };
    let Some(doc_class) = frame::width_class(doc_width, doc_res) else {
        return Err(Failure::Incompatible(format!(
            "the document is {doc_width} pixels wide, which is not a T.4 scan line at {doc_res:?} \
             (expected one of {:?})",
            frame::line_widths(doc_res)
        )));
    };
    let class = (0..=doc_class)
        .rev()
        .find(|&c| local.has_width_class(c) && remote.has_width_class(c))
        .unwrap_or(0);
    Ok(Params {
        resolution,
        width: frame::line_widths(resolution)[class],
        coding,
        ecm,
    })
}

/// Resamples a page of resolution `from` to `params`' resolution and scan
/// line width (nearest neighbour), so that a document can go to a
/// receiver that lacks its resolution or paper width: a finer page loses
/// lines, a wider page is reduced to the narrower paper with its aspect
/// kept. A page that already fits is returned unchanged.
pub fn fit_page(page: &Bitmap, from: Resolution, params: &Params) -> Bitmap {
    if from == params.resolution && page.width() == params.width {
        return page.clone();
    }
    let (fx, fy) = from.dpi();
    let (tx, ty) = params.resolution.dpi();
    // Paper widths in 8 pels/mm terms, so that 2592 at 300 dpi and 1728 at
    // 204 dpi count as the same A4 paper.
    let paper = |w: u32, r: Resolution, dpi_x: u32| -> u64 {
        match frame::width_class(w, r) {
            Some(c) => u64::from(frame::line_widths(Resolution::Standard)[c]),
            None => (u64::from(w) * 204 / u64::from(dpi_x)).max(1),
        }
    };
    let src_paper = paper(page.width(), from, fx);
    let dst_paper = paper(params.width, params.resolution, tx);
    let src_h = u64::from(page.height());
    // Rows scale with the vertical resolution and with the paper reduction.
    let den = u64::from(fy) * src_paper;
    let height = (src_h * u64::from(ty) * dst_paper + den / 2) / den;
    let height = u32::try_from(height).unwrap_or(u32::MAX);
    if page.height() == 0 || page.width() == 0 {
        return Bitmap::new(params.width, height);
    }
    let mut out = Bitmap::with_width(params.width);
    let src_w = u64::from(page.width());
    let dst_w = u64::from(params.width);
    // Source column of each target column: the whole scan line maps onto
    // the whole scan line when the paper changes; otherwise by resolution.
    let xmap: Vec<Option<usize>> = (0..dst_w)
        .map(|x| {
            let sx = if src_paper == dst_paper {
                (2 * x + 1) * u64::from(fx) / (2 * u64::from(tx))
            } else {
                (2 * x + 1) * src_w / (2 * dst_w)
            };
            (sx < src_w).then_some(sx as usize)
        })
        .collect();
    let mut row = vec![0u8; out.stride()];
    for y in 0..u64::from(height) {
        let sy = ((2 * y + 1) * src_h / (2 * u64::from(height))).min(src_h - 1);
        let src = page.row(sy as u32);
        row.fill(0);
        for (x, sx) in xmap.iter().enumerate() {
            if let Some(sx) = sx
                && src[sx / 8] & (0x80 >> (sx % 8)) != 0
            {
                row[x / 8] |= 0x80 >> (x % 8);
            }
        }
        out.push_row(&row);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(res: &[Resolution], widths: &[u32], mr: bool, mmr: bool, ecm: bool) -> Capabilities {
        Capabilities {
            resolutions: res.to_vec(),
            widths: widths.to_vec(),
            mr,
            mmr,
            ecm,
            modems: Vec::new(),
        }
    }

    #[test]
    fn resolution_choice() {
        use Resolution::*;
        let all = Capabilities::all();
        let cases: &[(&[Resolution], Resolution, Resolution)] = &[
            (&[Standard], Fine, Standard),
            (&[Fine], Fine, Fine),
            (&[Fine, SuperFine], R400, SuperFine),
            (&[Fine, R300], R400, R300),
            (&[SuperFine], R300, Standard),
            (&[SuperFine, R400], R300, Standard),
            (&[R300, R400], Fine, Standard),
            (&[R400], R400, R400),
        ];
        for (remote, doc, want) in cases {
            // The remote supports only `remote` (plus standard).
            let remote = caps(remote, &[], false, false, false);
            let got = choose_resolution(&all, &remote, *doc);
            assert_eq!(got, *want, "remote {:?} doc {doc:?}", remote.resolutions);
        }
    }

    #[test]
    fn negotiation_table() {
        use Resolution::*;
        let all = Capabilities::all();
        let min = Capabilities::minimal();
        let cases: &[(&str, &Capabilities, Capabilities, Resolution, u32, Params)] = &[
            (
                "all-all",
                &all,
                all.clone(),
                Fine,
                2432,
                Params {
                    resolution: Fine,
                    width: 2432,
                    coding: Coding::Mmr,
                    ecm: true,
                },
            ),
            (
                "min remote",
                &all,
                min.clone(),
                Fine,
                2432,
                Params {
                    resolution: Standard,
                    width: 1728,
                    coding: Coding::Mh,
                    ecm: false,
                },
            ),
            (
                "mmr needs ecm both sides",
                &all,
                caps(&[Fine], &[2048], true, true, false),
                R300,
                3648,
                Params {
                    resolution: Fine,
                    width: 2048,
                    coding: Coding::Mr { k: 4 },
                    ecm: false,
                },
            ),
            (
                "local limits",
                &min,
                all.clone(),
                Fine,
                1728,
                Params {
                    resolution: Standard,
                    width: 1728,
                    coding: Coding::Mh,
                    ecm: false,
                },
            ),
            (
                "ecm without mmr",
                &caps(&[], &[], true, false, true),
                all.clone(),
                Standard,
                1728,
                Params {
                    resolution: Standard,
                    width: 1728,
                    coding: Coding::Mr { k: 2 },
                    ecm: true,
                },
            ),
            (
                "r400 a3 to r300",
                &all,
                caps(&[R300], &[2048, 2432], false, false, false),
                R400,
                4864,
                Params {
                    resolution: R300,
                    width: 3648,
                    coding: Coding::Mh,
                    ecm: false,
                },
            ),
        ];
        for (name, local, remote, res, w, want) in cases {
            assert_eq!(negotiate(local, remote, *res, *w).unwrap(), *want, "{name}");
        }
        assert!(matches!(
            negotiate(&all, &all, Fine, 1000),
            Err(Failure::Incompatible(_))
        ));
    }

    #[test]
    fn fit_page_resamples() {
        let mut page = Bitmap::new(1728, 10);
        for y in 0..10 {
            page.set_pixel(y * 3, y, true);
        }
        let same = Params {
            resolution: Resolution::Fine,
            width: 1728,
            coding: Coding::Mh,
            ecm: false,
        };
        assert_eq!(fit_page(&page, Resolution::Fine, &same), page);
        let std = Params {
            resolution: Resolution::Standard,
            ..same
        };
        let half = fit_page(&page, Resolution::Fine, &std);
        assert_eq!((half.width(), half.height()), (1728, 5));
        // Row y of the standard page is row 2y+1 of the fine page.
        for y in 0..5 {
            assert!(half.pixel((2 * y + 1) * 3, y), "row {y}");
        }
        let a3 = Bitmap::new(2432, 100);
        let a4 = fit_page(&a3, Resolution::Fine, &same);
        assert_eq!((a4.width(), a4.height()), (1728, 71));
        let r300 = fit_page(&Bitmap::new(2592, 300), Resolution::R300, &same);
        assert_eq!((r300.width(), r300.height()), (1728, 196));
    }

    #[test]
    fn encode_page_checks_width() {
        let p = Params {
            resolution: Resolution::Standard,
            width: 1728,
            coding: Coding::Mh,
            ecm: false,
        };
        assert!(encode_page(&Bitmap::new(2048, 1), &p).is_err());
        assert!(!encode_page(&Bitmap::new(1728, 1), &p).unwrap().is_empty());
    }

    #[test]
    fn failure_messages_are_one_line() {
        let all = [
            Failure::T1Expired,
            Failure::T2Expired {
                waiting_for: "page 1".into(),
            },
            Failure::T4Expired {
                command: "DCS".into(),
                tries: 3,
            },
            Failure::T5Expired,
            Failure::Incompatible("x".into()),
            Failure::InvalidFrame("x".into()),
            Failure::UnexpectedFrame("x".into()),
            Failure::DcsNotOffered("x".into()),
            Failure::RemoteDisconnected,
            Failure::Cancelled,
            Failure::TransportClosed,
            Failure::PageRejected { index: 0, tries: 3 },
            Failure::BadPageData {
                index: 0,
                reason: "x".into(),
            },
            Failure::NoProgress("x".into()),
        ];
        for f in all {
            let s = f.to_string();
            assert!(!s.is_empty() && !s.contains('\n'), "{s}");
        }
        assert_eq!(
            Failure::PageRejected { index: 1, tries: 3 }.to_string(),
            "page 2 was rejected by the receiver after 3 tries"
        );
    }
}
