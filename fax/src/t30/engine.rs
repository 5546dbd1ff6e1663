//! The T.30 state machine for one call, on either side.
//!
//! The phases follow T.30 (and spandsp's `t30.c`): B (NSF/CSI/DIS, then
//! NSS/TSI/DCS, TCF on a line that carries it, and CFR or FTT), C (page
//! data, or ECM blocks), D (MPS/EOP/EOM or PPS, answered by MCF/RTP/RTN
//! or PPR/RNR) and E (DCN). Every wait has a timer, every command is
//! repeated on T4 up to `retries` times, and the receiver answers a
//! repeated command with its last response instead of acting on it twice
//! (as T.30's flow diagrams and spandsp do), so a lost response never
//! duplicates a page.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::ecm::{EcmRx, EcmTx};
use super::frame::{self, EcmFrame, Fcf, Frame, FrameError, MinScan, Modem, PageLength, Pps, fcf};
use super::{
    Action, Capabilities, Config, Event, Failure, Outcome, Params, Role, T30Error, negotiate,
};
use crate::{Bitmap, Coding, DecoderOptions, EncoderOptions, PageEndReason, Resolution};

/// The most coded data one page may hold before the receiver gives up:
/// a bound on memory against a peer that never ends its page. A 400 dpi
/// A3 page coded as badly as MH can be is far below this.
const MAX_PAGE_BYTES: usize = 64 << 20;

/// PPRs a T.30 sender sends for one block before it must send CTC or EOR
/// (T.30 Annex A; spandsp `PPR_LIMIT_BEFORE_CTC_OR_EOR`).
pub const PPRS_BEFORE_CTC: u32 = 4;

/// A post-page message; the PRI variants are treated as the plain ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ppm {
    Mps,
    Eop,
    Eom,
}

impl Ppm {
    fn from_fcf(f: Fcf) -> Option<Ppm> {
        match f {
            Fcf::Mps | Fcf::PriMps => Some(Ppm::Mps),
            Fcf::Eop | Fcf::PriEop => Some(Ppm::Eop),
            Fcf::Eom | Fcf::PriEom => Some(Ppm::Eom),
            _ => None,
        }
    }

    fn fcf(self) -> u8 {
        match self {
            Ppm::Mps => fcf::MPS,
            Ppm::Eop => fcf::EOP,
            Ppm::Eom => fcf::EOM,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Ppm::Mps => "MPS",
            Ppm::Eop => "EOP",
            Ppm::Eom => "EOM",
        }
    }
}

/// What the one-shot timer is for (T1 and T5 run beside it).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Timer {
    /// T2: waiting for a command or page data; the text says for what.
    T2(String),
    /// T4: waiting for a response (answerer in phase B: repeat DIS).
    T4,
    /// Caller after RNR: time to ask again with RR.
    RrPause,
    /// Answerer with training: waiting (T2) for [`Event::Training`]; on
    /// expiry the check failed.
    Tcf,
}

/// What the answerer sent last while it waits for DCS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WaitDcs {
    /// DIS (the start, or after EOM): repeated on T4.
    Dis,
    /// RTN (a bad page): a repeated post-page command gets it again.
    Rtn,
    /// FTT (the training check failed): the caller sends DCS and TCF
    /// again.
    Ftt,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Answerer: DIS, RTN or FTT sent (which one is the field); waiting
    /// for DCS.
    AnsWaitDcs(WaitDcs),
    /// Answerer with training: DCS accepted and ReceiveTraining queued;
    /// waiting for Event::Training.
    AnsWaitTraining,
    /// Answerer: CFR or MCF sent; receiving a page.
    AnsPage,
    /// Answerer: PageReceived emitted; waiting for PageStored.
    /// `confirm` is the response owed once it is stored: MCF, or ERR when
    /// the page ended with EOR.
    AnsStoring { ppm: Ppm, confirm: u8 },
    /// Answerer: MCF to EOP sent; waiting for DCN.
    AnsWaitDcn,
    /// Caller: waiting for DIS.
    CallWaitDis,
    /// Caller: DCS sent; waiting for CFR.
    CallWaitCfr,
    /// Caller: NeedPage emitted; waiting for Event::Page.
    CallNeedPage,
    /// Caller: a post-page command, PPS or RR sent; waiting for the answer.
    CallWaitResp,
    /// Finished was queued.
    Done,
}

/// What the caller does once CFR confirms a DCS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AfterCfr {
    NextPage,
    ResendPage,
}

/// The ECM command the caller is waiting on a response to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EcmCmd {
    /// PPS (or RR after it): MCF, PPR or RNR.
    Pps,
    /// CTC: CTR.
    Ctc,
    /// EOR (or RR after it): ERR or RNR.
    Eor,
}

/// How the remote went away while the answerer was storing a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Gone {
    Dcn,
    Closed,
}

/// One T.30 call, sans I/O.
///
/// Create it with [`T30::new`], then drain [`T30::poll_action`] after
/// `new` and after every [`T30::handle`]; call `handle(Event::Timeout,
/// now)` once [`T30::poll_timeout`] has passed. [`Action::Finished`] is
/// the last action; after it every event is ignored.
#[derive(Debug)]
pub struct T30 {
    cfg: Config,
    /// Answerer: our capabilities as our DIS expresses them, the yardstick
    /// for the caller's DCS.
    offered: Capabilities,
    actions: VecDeque<Action>,
    state: State,
    timer: Option<(Instant, Timer)>,
    /// The T4 running was armed when its burst was queued; [`Event::Sent`]
    /// restarts it from when the burst was really out.
    t4_unsent: bool,
    t1: Option<Instant>,
    t5: Option<Instant>,
    /// We received a valid DIS, so our FCFs carry the X bit.
    dis_received: bool,
    params: Option<Params>,
    /// The parameters last reported with Action::Negotiated.
    announced: Option<Params>,
    remote_ident: Option<String>,
    remote_ns: Option<Vec<u8>>,
    /// CSI/TSI and NSF/NSS seen in the current burst.
    pending_ident: Option<String>,
    pending_ns: Option<Vec<u8>>,
    /// Pages delivered (caller) or stored (answerer).
    pages: u32,
    /// Of those, the ones an EOR left with uncorrected errors.
    uncorrected: Vec<u32>,
    /// EOR was sent (caller) or received (answerer) for the current page.
    page_uncorrected: bool,
    /// The page being sent or received (0-based).
    page_index: u32,
    remote_ended_early: bool,
    finished: bool,

    // Caller.
    total_pages: u32,
    doc_res: Resolution,
    doc_width: u32,
    length: PageLength,
    /// The modems both the DIS and our [`Capabilities::modems`] permit,
    /// fastest first; `modem_step` indexes the one in use (FTT steps
    /// down).
    modems: Vec<Modem>,
    modem_step: usize,
    /// The minimum scan line time DCS declares (from the DIS).
    min_scan: MinScan,
    /// The modem of the last DCS sent (caller) or received (answerer).
    modem: Modem,
    /// The current page, kept for a resend after RTN.
    page_data: Vec<u8>,
    ppm: Ppm,
    rtn_count: u32,
    ecm_tx: Option<EcmTx>,
    ecm_cmd: EcmCmd,
    after_cfr: AfterCfr,
    cancel: bool,
    /// A retryable failure ends the call without DCN (see
    /// [`T30::set_resumable`]).
    resumable: bool,
    /// The last command burst, repeated on T4 and CRP.
    command: Vec<Vec<u8>>,
    /// With training: the modem of the TCF that follows `command` (a
    /// DCS) each time it goes.
    command_tcf: Option<Modem>,
    command_name: String,
    tries: u32,

    // Answerer.
    rx_data: Vec<u8>,
    /// Page data arrived since our last response (so a PPM is new).
    rx_fresh: bool,
    ecm_rx: EcmRx,
    last_response: Vec<Vec<u8>>,
    last_response_fcf: Option<Fcf>,
    /// A command is waiting for our response (sent once the page is stored).
    owe_response: bool,
    gone: Option<Gone>,
    /// The last confirmed post-page message (EOM/EOP end a document).
    last_ppm: Option<Ppm>,
    /// RTNs sent for the current page.
    rtns: u32,
    /// FTTs sent for the current page (training only).
    ftts: u32,
    /// PPRs and CTCs for the current ECM block.
    pprs: u32,
    ctcs: u32,
    /// Responses repeated (or commands answered again) since the last
    /// progress: new non-ECM page data, a block or a page confirmed.
    repeats: u32,
}

/// A non-ECM page coded again with at least `min_line_bits` bits per line
/// (zero fill before each EOL), for a receiver whose DIS asks for a minimum
/// scan line time. Pages come from [`super::encode_page`], which adds no
/// fill; data that does not decode as `params` goes as it is.
fn with_min_line_bits(data: &[u8], params: &Params, min_line_bits: u32) -> Vec<u8> {
    if min_line_bits == 0 || params.coding == Coding::Mmr {
        return data.to_vec();
    }
    let Ok((page, _)) = Bitmap::decode(data, DecoderOptions::wire(params.coding, params.width))
    else {
        return data.to_vec();
    };
    let mut opts = EncoderOptions::wire(params.coding, params.width);
    opts.min_line_bits = min_line_bits;
    page.encode(opts).unwrap_or_else(|_| data.to_vec())
}

fn validate(cfg: &Config) -> Result<(), T30Error> {
    let bad = |reason: String| Err(T30Error::InvalidConfig { reason });
    if let Err(reason) = frame::validate_ident(&cfg.ident) {
        return Err(T30Error::InvalidIdent {
            ident: cfg.ident.clone(),
            reason,
        });
    }
    if let Some(ns) = &cfg.non_standard
        && ns.len() > frame::MAX_NON_STANDARD
    {
        return bad(format!(
            "non_standard payload is {} octets; at most {} fit in one NSF/NSS frame",
            ns.len(),
            frame::MAX_NON_STANDARD
        ));
    }
    if cfg.max_bad_percent > 100 {
        return bad(format!(
            "max_bad_percent is {}; it is a percentage",
            cfg.max_bad_percent
        ));
    }
    if cfg.timers.retries == 0 {
        return bad("timers.retries must be at least 1".into());
    }
    let r8 = frame::line_widths(Resolution::Standard);
    if let Some(w) = cfg.caps.widths.iter().find(|w| !r8.contains(w)) {
        return bad(format!(
            "capability width {w} is not one of {r8:?} (widths are given at 8 pels/mm)"
        ));
    }
    if let Role::Caller {
        pages,
        document_resolution,
        document_width,
    } = cfg.role
    {
        if pages == 0 {
            return bad("a caller needs at least one page".into());
        }
        if frame::width_class(document_width, document_resolution).is_none() {
            return bad(format!(
                "document width {document_width} is not a T.4 scan line at {document_resolution:?} \
                 (one of {:?})",
                frame::line_widths(document_resolution)
            ));
        }
    }
    Ok(())
}

impl T30 {
    /// Starts a call. An answerer queues its first NSF/CSI/DIS burst at
    /// once; a caller waits for DIS. Fails for a configuration T.30 cannot
    /// carry (bad identity, oversized NSF payload, zero pages, ...).
    pub fn new(config: Config, now: Instant) -> Result<T30, T30Error> {
        validate(&config)?;
        let offered = Capabilities::from_dis_fif(&config.caps.to_dis_fif())
            .unwrap_or_else(|_| Capabilities::minimal());
        let (total_pages, doc_res, doc_width, caller) = match config.role {
            Role::Caller {
                pages,
                document_resolution,
                document_width,
            } => (pages, document_resolution, document_width, true),
            Role::Answerer => (0, Resolution::Standard, crate::width::A4, false),
        };
        let t1 = now.checked_add(config.timers.t1);
        let mut t = T30 {
            cfg: config,
            offered,
            actions: VecDeque::new(),
            state: State::CallWaitDis,
            timer: None,
            t4_unsent: false,
            t1,
            t5: None,
            dis_received: false,
            params: None,
            announced: None,
            remote_ident: None,
            remote_ns: None,
            pending_ident: None,
            pending_ns: None,
            pages: 0,
            uncorrected: Vec::new(),
            page_uncorrected: false,
            page_index: 0,
            remote_ended_early: false,
            finished: false,
            total_pages,
            doc_res,
            doc_width,
            length: PageLength::A4,
            modems: Vec::new(),
            modem_step: 0,
            min_scan: MinScan::Ms0,
            modem: Modem::V17_14400,
            page_data: Vec::new(),
            ppm: Ppm::Eop,
            rtn_count: 0,
            ecm_tx: None,
            ecm_cmd: EcmCmd::Pps,
            after_cfr: AfterCfr::NextPage,
            cancel: false,
            resumable: false,
            command: Vec::new(),
            command_tcf: None,
            command_name: String::new(),
            tries: 0,
            rx_data: Vec::new(),
            rx_fresh: false,
            ecm_rx: EcmRx::new(),
            last_response: Vec::new(),
            last_response_fcf: None,
            owe_response: false,
            gone: None,
            last_ppm: None,
            rtns: 0,
            ftts: 0,
            pprs: 0,
            ctcs: 0,
            repeats: 0,
        };
        if !caller {
            t.state = State::AnsWaitDcs(WaitDcs::Dis);
            t.send_dis(now);
        }
        Ok(t)
    }

    /// Feeds one event. `now` is the current time, used for the timers.
    pub fn handle(&mut self, event: Event, now: Instant) {
        if self.finished {
            return;
        }
        match event {
            Event::Frame { bytes, fcs_ok } => {
                if fcs_ok {
                    self.on_frame(&bytes, now);
                }
            }
            Event::ImageData(data) => self.on_image_data(&data, now),
            Event::ImageEnd => self.on_image_end(now),
            Event::EcmFrame { bytes, fcs_ok } => {
                if fcs_ok {
                    self.on_ecm_frame(&bytes, now);
                } else if self.state == State::AnsPage {
                    // A damaged frame is still the block coming in.
                    self.rearm_t2(now);
                }
            }
            Event::Page(data) => self.on_page(data, now),
            Event::PageStored => self.on_page_stored(now),
            Event::Training { ok } => self.on_training(ok, now),
            Event::Sent => self.on_sent(now),
            Event::Cancel => self.on_cancel(),
            Event::Timeout => self.on_timeout(now),
            Event::Closed => self.on_closed(),
        }
    }

    /// The next deadline, if any: call `handle(Event::Timeout, now)` when
    /// it has passed. None once finished.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.finished {
            return None;
        }
        [self.t1, self.t5, self.timer.as_ref().map(|(at, _)| *at)]
            .into_iter()
            .flatten()
            .min()
    }

    /// The next action to carry out, in order.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Whether [`Action::Finished`] has been queued (drain the actions
    /// to get it).
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The modem the last DCS selected (sent as caller, received as
    /// answerer); V.17 14 400 before any. The session names it in the T.38
    /// data type of image data, so that a gateway to a real line trains
    /// the modem the DCS announced.
    pub fn modem(&self) -> Modem {
        self.modem
    }

    /// Caller: whether the sender resumes the document in a later call if
    /// this one fails (faxgate's outbox does, at the first page without
    /// MCF). Off by default.
    ///
    /// When on, a failure the sender retries ([`Failure::is_retryable`]:
    /// T4 or T5 expired, a rejected page, a frame that makes no sense)
    /// ends the call without DCN, as a park or a lost line does. DCN
    /// tells the receiver that the sender ended the document on purpose
    /// (T.30 phase E): faxgate's receiver then closes the document as
    /// partial and prints it, and the pages the resume brings had no
    /// document left to go to. Without DCN it keeps the document open
    /// (interrupted) for the resume. A cancel (also one pending while a
    /// page is on its way) and a failure that is not retried still end
    /// with DCN, as T.30 asks of a caller that gives up; a sender turns
    /// this off for its last attempt, so that the receiver keeps what it
    /// has as a partial document.
    pub fn set_resumable(&mut self, resumable: bool) {
        self.resumable = resumable;
    }

    // -----------------------------------------------------------------
    // Plumbing.

    fn is_caller(&self) -> bool {
        matches!(self.cfg.role, Role::Caller { .. })
    }

    /// The X bit for our FCFs (T.30 5.3.6.1).
    fn x(&self) -> u8 {
        if self.dis_received { frame::X_BIT } else { 0 }
    }

    fn simple(&self, fcf_value: u8) -> Vec<u8> {
        frame::build(fcf_value | self.x(), &[], true)
    }

    fn set_timer(&mut self, now: Instant, after: Duration, kind: Timer) {
        self.timer = now.checked_add(after).map(|at| (at, kind));
    }

    fn set_t2(&mut self, now: Instant, waiting_for: String) {
        self.set_timer(now, self.cfg.timers.t2, Timer::T2(waiting_for));
    }

    /// Restarts T2 with its current meaning (a command or data arrived).
    /// Any other timer (the answerer's DIS repeat) is left running.
    fn rearm_t2(&mut self, now: Instant) {
        if let Some((_, Timer::T2(what))) = &self.timer {
            let what = what.clone();
            self.set_t2(now, what);
        }
    }

    fn send_frames(&mut self, mut frames: Vec<Vec<u8>>) {
        frame::seal_burst(&mut frames);
        self.actions.push_back(Action::SendFrames(frames));
    }

    /// Sends a response and remembers it for repeats.
    fn respond(&mut self, fcf_value: u8, fif: &[u8]) {
        let f = vec![frame::build(fcf_value | self.x(), fif, true)];
        self.last_response = f.clone();
        self.last_response_fcf = Some(Fcf::from_byte(fcf_value));
        self.owe_response = false;
        self.send_frames(f);
    }

    /// T.30: a repeated command gets the last response again, up to
    /// [`T30::max_repeats`] times without progress.
    fn resend_last_response(&mut self, now: Instant) {
        if !self.count_repeat("repeated commands (RR, CRP or the same command again)") {
            return;
        }
        if !self.last_response.is_empty() {
            let f = self.last_response.clone();
            self.owe_response = false;
            self.send_frames(f);
        }
        self.rearm_t2(now);
    }

    /// Starts T4 for a burst just queued. It runs from `now` until the
    /// session reports the burst written ([`Event::Sent`]), which starts it
    /// again: the wait for a response must not include the time a long
    /// page took to leave over a slow link.
    fn start_t4(&mut self, now: Instant) {
        self.set_timer(now, self.cfg.timers.t4, Timer::T4);
        self.t4_unsent = true;
    }

    fn on_sent(&mut self, now: Instant) {
        if std::mem::take(&mut self.t4_unsent) && matches!(self.timer, Some((_, Timer::T4))) {
            self.set_timer(now, self.cfg.timers.t4, Timer::T4);
        }
    }

    /// Sends a command and starts T4 for its response.
    fn command(&mut self, frames: Vec<Vec<u8>>, name: String, now: Instant) {
        self.command_with_tcf(frames, name, None, now);
    }

    /// As [`T30::command`], followed by TCF at `tcf` (a DCS with
    /// training), here and at every repeat.
    fn command_with_tcf(
        &mut self,
        mut frames: Vec<Vec<u8>>,
        name: String,
        tcf: Option<Modem>,
        now: Instant,
    ) {
        frame::seal_burst(&mut frames);
        self.command = frames;
        self.command_tcf = tcf;
        self.command_name = name;
        self.tries = 1;
        self.push_command();
        self.start_t4(now);
    }

    /// Queues the last command's burst, and its TCF if it has one.
    fn push_command(&mut self) {
        self.actions
            .push_back(Action::SendFrames(self.command.clone()));
        if let Some(modem) = self.command_tcf {
            self.actions.push_back(Action::SendTraining { modem });
        }
    }

    /// Repeats the last command if tries are left; false when exhausted.
    fn repeat_command(&mut self, now: Instant) -> bool {
        if self.tries >= self.cfg.timers.retries || self.command.is_empty() {
            return false;
        }
        self.tries += 1;
        self.push_command();
        self.start_t4(now);
        true
    }

    /// Repeats the last command, or ends the call with T4Expired when the
    /// tries are used up.
    fn repeat_or_give_up(&mut self, now: Instant) {
        if !self.repeat_command(now) {
            let failure = Failure::T4Expired {
                command: self.command_name.clone(),
                tries: self.tries,
            };
            self.fail(failure);
        }
    }

    fn finish(&mut self, result: Result<(), Failure>, send_dcn: bool) {
        if self.finished {
            return;
        }
        if send_dcn {
            let f = vec![self.simple(fcf::DCN)];
            self.send_frames(f);
        }
        self.timer = None;
        self.t1 = None;
        self.t5 = None;
        self.state = State::Done;
        self.finished = true;
        self.actions.push_back(Action::Finished(Outcome {
            result,
            pages: self.pages,
            uncorrected_pages: self.uncorrected.clone(),
            remote_ident: self.remote_ident.clone(),
            remote_ended_early: self.remote_ended_early,
        }));
    }

    /// Ends the call with a failure and DCN (T.30 phase E), except for a
    /// resumable caller's retryable failure (see [`T30::set_resumable`]),
    /// which ends without DCN so that the receiver waits for the resume.
    fn fail(&mut self, failure: Failure) {
        let resume = self.is_caller() && self.resumable && !self.cancel && failure.is_retryable();
        self.finish(Err(failure), !resume);
    }

    fn doing(&self) -> &'static str {
        match self.state {
            State::AnsWaitDcs(WaitDcs::Dis) => "waiting for DCS",
            State::AnsWaitDcs(WaitDcs::Rtn) => "waiting for DCS after RTN",
            State::AnsWaitDcs(WaitDcs::Ftt) => "waiting for DCS after FTT",
            State::AnsWaitTraining => "waiting for the training check (TCF)",
            State::AnsPage => "receiving a page",
            State::AnsStoring { .. } => "storing a page",
            State::AnsWaitDcn => "waiting for DCN after EOP",
            State::CallWaitDis => "waiting for DIS",
            State::CallWaitCfr => "waiting for CFR",
            State::CallNeedPage => "preparing a page",
            State::CallWaitResp => "waiting for a post-page response",
            State::Done => "finished",
        }
    }

    fn unexpected(&mut self, f: &Frame<'_>) {
        let what = match f.fcf {
            Fcf::Unknown(b) => format!("unknown FCF 0x{b:02X}"),
            _ => f.describe(),
        };
        let msg = format!("{what} while {}", self.doing());
        self.fail(Failure::UnexpectedFrame(msg));
    }

    fn invalid(&mut self, f: &Frame<'_>, e: FrameError) {
        self.fail(Failure::InvalidFrame(format!("{}: {e}", f.describe())));
    }

    /// Reports the identity and non-standard payload of the last burst,
    /// each only when new.
    fn take_remote_info(&mut self) {
        if let Some(id) = self.pending_ident.take()
            && !id.is_empty()
            && self.remote_ident.as_deref() != Some(id.as_str())
        {
            self.remote_ident = Some(id.clone());
            self.actions.push_back(Action::RemoteIdent(id));
        }
        if let Some(ns) = self.pending_ns.take()
            && self.remote_ns.as_ref() != Some(&ns)
        {
            self.remote_ns = Some(ns.clone());
            self.actions.push_back(Action::RemoteNonStandard(ns));
        }
    }

    fn announce(&mut self, params: Params) {
        if self.announced != Some(params) {
            self.announced = Some(params);
            self.actions.push_back(Action::Negotiated(params));
        }
    }

    fn on_frame(&mut self, bytes: &[u8], now: Instant) {
        let f = match Frame::parse(bytes) {
            Ok(f) => f,
            Err(e) => {
                let fcf_note = bytes
                    .get(2)
                    .map(|b| format!(" (FCF 0x{b:02X})"))
                    .unwrap_or_default();
                self.fail(Failure::InvalidFrame(format!("{e}{fcf_note}")));
                return;
            }
        };
        if self.is_caller() {
            self.caller_frame(&f, now);
        } else {
            self.answerer_frame(&f, now);
        }
    }

    fn on_timeout(&mut self, now: Instant) {
        if self.t1.is_some_and(|t| now >= t) {
            // Nobody is there to hear a DCN.
            self.finish(Err(Failure::T1Expired), false);
            return;
        }
        if self.t5.is_some_and(|t| now >= t) {
            self.fail(Failure::T5Expired);
            return;
        }
        if self.timer.as_ref().is_none_or(|(at, _)| now < *at) {
            return;
        }
        let Some((_, kind)) = self.timer.take() else {
            return;
        };
        match (self.state, kind) {
            (State::AnsWaitDcs(WaitDcs::Dis), Timer::T4) => self.send_dis(now),
            // The document is complete; a missing DCN is no failure.
            (State::AnsWaitDcn, Timer::T2(_)) => self.finish(Ok(()), true),
            (State::AnsWaitTraining, Timer::Tcf) => self.on_training(false, now),
            (_, Timer::T2(waiting_for)) => self.fail(Failure::T2Expired { waiting_for }),
            (State::CallWaitCfr | State::CallWaitResp, Timer::T4) => self.repeat_or_give_up(now),
            (State::CallWaitResp, Timer::RrPause) => {
                let rr = vec![self.simple(fcf::RR)];
                self.command(rr, "RR".into(), now);
            }
            _ => {}
        }
    }

    fn on_cancel(&mut self) {
        match self.state {
            // A page is on its way: wait for its response, so that the
            // receiver keeps whole pages only.
            State::CallWaitResp => self.cancel = true,
            State::AnsWaitDcn => self.finish(Ok(()), true),
            _ => self.fail(Failure::Cancelled),
        }
    }

    fn on_closed(&mut self) {
        match self.state {
            State::AnsWaitDcn => self.finish(Ok(()), false),
            State::AnsStoring { .. } => self.gone = Some(Gone::Closed),
            _ => {
                if !self.is_caller() && self.pages > 0 {
                    self.remote_ended_early = true;
                }
                self.finish(Err(Failure::TransportClosed), false);
            }
        }
    }

    // -----------------------------------------------------------------
    // Answerer.

    fn send_dis(&mut self, now: Instant) {
        let mut frames = Vec::new();
        if let Some(ns) = &self.cfg.non_standard {
            frames.push(frame::build(fcf::NSF, &frame::non_standard_fif(ns), false));
        }
        if !self.cfg.ident.is_empty() {
            frames.push(frame::build(
                fcf::CSI,
                &frame::ident_fif(&self.cfg.ident),
                false,
            ));
        }
        frames.push(frame::build(fcf::DIS, &self.cfg.caps.to_dis_fif(), true));
        self.send_frames(frames);
        self.start_t4(now);
    }

    fn answerer_frame(&mut self, f: &Frame<'_>, now: Instant) {
        match f.fcf {
            Fcf::Tsi => self.pending_ident = Some(frame::parse_ident(f.fif)),
            Fcf::Nss => self.pending_ns = frame::parse_non_standard(f.fif).map(<[u8]>::to_vec),
            // Optional phase B frames we have no use for.
            Fcf::Sub | Fcf::Sid | Fcf::Pwd | Fcf::Tsa | Fcf::Ira => {}
            Fcf::Dcs => self.ans_dcs(f, now),
            Fcf::Mps | Fcf::Eop | Fcf::Eom | Fcf::PriMps | Fcf::PriEop | Fcf::PriEom => {
                self.ans_ppm(f, now);
            }
            Fcf::Pps => self.ans_pps(f, now),
            Fcf::Rr => self.ans_rr(f, now),
            Fcf::Ctc => self.ans_ctc(f, now),
            Fcf::Eor => self.ans_eor(f, now),
            Fcf::Crp => self.ans_crp(now),
            Fcf::Dcn => self.ans_dcn(),
            _ => self.unexpected(f),
        }
    }

    fn ans_dcs(&mut self, f: &Frame<'_>, now: Instant) {
        if !matches!(
            self.state,
            State::AnsWaitDcs(_) | State::AnsPage | State::AnsWaitTraining
        ) {
            self.unexpected(f);
            return;
        }
        let params = match Params::from_dcs_fif(f.fif) {
            Ok(p) => p,
            Err(e) => return self.invalid(f, e),
        };
        if let Err(what) = self.offered.check_dcs(&params) {
            let msg = format!("{what} in {}", f.describe());
            self.fail(Failure::DcsNotOffered(msg));
            return;
        }
        // DCS again before the page: our CFR was lost (or a loop). With
        // training, DCS again before the check's result: the caller's T4
        // ran out while the check was on (or a loop).
        if matches!(self.state, State::AnsPage | State::AnsWaitTraining)
            && !self.count_repeat("DCS")
        {
            return;
        }
        self.t1 = None;
        self.announce(params);
        self.take_remote_info();
        self.params = Some(params);
        self.modem = Modem::from_dcs(f.fif).unwrap_or(Modem::V17_14400);
        self.pprs = 0;
        self.ctcs = 0;
        self.page_uncorrected = false;
        self.rx_data.clear();
        self.rx_fresh = false;
        self.ecm_rx.reset();
        if self.cfg.training && !self.cfg.caps.allows_modem(self.modem) {
            // A modem we did not offer (a caller that ignored our DIS):
            // we cannot receive its TCF, so the check fails, and FTT
            // sends the caller down to a modem we have (T.30 has no other
            // answer to a DCS whose modem cannot be used).
            self.state = State::AnsWaitTraining;
            self.on_training(false, now);
        } else if self.cfg.training {
            // TCF follows every DCS: CFR or FTT waits for its check.
            self.actions
                .push_back(Action::ReceiveTraining { modem: self.modem });
            self.state = State::AnsWaitTraining;
            self.set_timer(now, self.cfg.timers.t2, Timer::Tcf);
        } else {
            self.confirm_dcs(now);
        }
    }

    /// CFR: the page may come.
    fn confirm_dcs(&mut self, now: Instant) {
        self.respond(fcf::CFR, &[]);
        self.state = State::AnsPage;
        let what = format!("page {} after CFR", self.page_index + 1);
        self.set_t2(now, what);
    }

    /// Answerer: how many training checks may fail (each answered FTT)
    /// for one page. A sender steps down a modem at each FTT, or tries
    /// the same one again: one for each speed of [`Modem::FALLBACK`] and
    /// `retries` more cover that; past it a peer is going round in a loop.
    fn max_ftts(&self) -> u32 {
        (Modem::FALLBACK.len() as u32).saturating_add(self.cfg.timers.retries)
    }

    /// The training check's result (or T2 without one: a failure). CFR
    /// starts the page; FTT sends the caller back to DCS, at most
    /// [`T30::max_ftts`] times per page.
    fn on_training(&mut self, ok: bool, now: Instant) {
        if self.state != State::AnsWaitTraining {
            // Late (a repeated DCS asked again), or never asked for.
            return;
        }
        if ok {
            self.confirm_dcs(now);
            return;
        }
        let limit = self.max_ftts();
        if self.ftts >= limit {
            self.fail(Failure::NoProgress(format!(
                "the training check (TCF) failed more than {limit} times before page {}",
                self.page_index + 1
            )));
            return;
        }
        self.ftts += 1;
        self.respond(fcf::FTT, &[]);
        self.state = State::AnsWaitDcs(WaitDcs::Ftt);
        self.set_t2(now, "DCS after FTT".into());
    }

    fn on_image_data(&mut self, data: &[u8], now: Instant) {
        if self.state != State::AnsPage || self.params.is_none_or(|p| p.ecm) {
            return;
        }
        if self.rx_data.len() + data.len() > MAX_PAGE_BYTES {
            self.page_too_large();
            return;
        }
        self.rx_data.extend_from_slice(data);
        self.rx_fresh = true;
        if !data.is_empty() {
            self.progress();
        }
        self.rearm_t2(now);
    }

    /// Ends the call on a page past [`MAX_PAGE_BYTES`] (ECM or not).
    fn page_too_large(&mut self) {
        self.fail(Failure::InvalidFrame(format!(
            "page {} exceeded {MAX_PAGE_BYTES} bytes of image data",
            self.page_index + 1
        )));
    }

    /// The end of a page's (or, with ECM, a block's) carrier: T2 for the
    /// command that follows. With ECM the RCPs say the same, but all three
    /// may be lost, and the PPS still comes.
    fn on_image_end(&mut self, now: Instant) {
        let Some(params) = self.params.filter(|_| self.state == State::AnsPage) else {
            return;
        };
        let what = if params.ecm {
            format!("PPS after page {} data", self.page_index + 1)
        } else {
            self.rx_fresh = true;
            format!("the post-page command after page {}", self.page_index + 1)
        };
        self.set_t2(now, what);
    }

    fn on_ecm_frame(&mut self, bytes: &[u8], now: Instant) {
        if self.state != State::AnsPage || !self.params.is_some_and(|p| p.ecm) {
            return;
        }
        match frame::parse_ecm_frame(bytes) {
            Ok(EcmFrame::Fcd { number, data }) => {
                self.ecm_rx.store(number, data);
                self.rearm_t2(now);
            }
            Ok(EcmFrame::Rcp) => {
                let what = format!("PPS after page {} data", self.page_index + 1);
                self.set_t2(now, what);
            }
            // A broken frame is a missing frame: PPR will ask for it.
            Err(_) => {}
        }
    }

    fn ans_ppm(&mut self, f: &Frame<'_>, now: Instant) {
        let Some(ppm) = Ppm::from_fcf(f.fcf) else {
            return;
        };
        match self.state {
            State::AnsPage => {
                let Some(params) = self.params.filter(|p| !p.ecm) else {
                    // In ECM a page ends with PPS, not a bare PPM.
                    self.unexpected(f);
                    return;
                };
                if !self.rx_fresh && self.last_response_fcf == Some(Fcf::Mcf) {
                    // No new page since our MCF: the sender missed it.
                    self.resend_last_response(now);
                    return;
                }
                let data = std::mem::take(&mut self.rx_data);
                self.rx_fresh = false;
                self.end_of_page(ppm, data, params, fcf::MCF, now);
            }
            // Our RTN, or our MCF to EOP or EOM, was lost: say it again
            // (spandsp process_state_iii_q_mcf). After EOM the DIS repeat
            // keeps running.
            State::AnsWaitDcs(WaitDcs::Rtn) => self.resend_last_response(now),
            State::AnsWaitDcn if ppm == Ppm::Eop => self.resend_last_response(now),
            State::AnsWaitDcs(WaitDcs::Dis) if ppm == Ppm::Eom && self.after_eom() => {
                self.resend_last_response(now);
            }
            // MCF waits for PageStored; non-ECM has no RNR to say so.
            State::AnsStoring { .. } => {}
            _ => self.unexpected(f),
        }
    }

    /// A whole page is in: decode it and decide between MCF and RTN.
    ///
    /// In ECM there is no RTN (T.30 Annex A: the response to PPS is MCF,
    /// PPR or RNR; spandsp's sender hangs up on RTN). The frames passed
    /// their FCS, so the data is what the sender coded and sending it again
    /// cannot help: a page with any lines is confirmed with its bad-line
    /// count, and one that yields none ends the call with
    /// [`Failure::BadPageData`]. So does a page cut short, whose lines
    /// after the cut are lost ([`PageEndReason::Undecodable`] or
    /// [`PageEndReason::TooLong`], which the decoder says are never
    /// acceptable for MCF): confirming it would tell the sender that a
    /// truncated page was delivered.
    ///
    /// `confirm` is the response for a good page once it is stored (MCF,
    /// or ERR after EOR).
    fn end_of_page(&mut self, ppm: Ppm, data: Vec<u8>, params: Params, confirm: u8, now: Instant) {
        let index = self.page_index;
        let decoded = Bitmap::decode(&data, DecoderOptions::wire(params.coding, params.width));
        let truncated = |s: &crate::PageSummary| {
            matches!(s.end, PageEndReason::Undecodable | PageEndReason::TooLong)
        };
        let accept = |s: &crate::PageSummary| {
            s.lines > 0
                && if params.ecm {
                    !truncated(s)
                } else {
                    s.acceptable(self.cfg.max_bad_percent, self.cfg.max_consecutive_bad)
                }
        };
        match decoded {
            Ok((page, s)) if accept(&s) => {
                self.actions.push_back(Action::PageReceived {
                    index,
                    params,
                    page,
                    bad_lines: s.bad_lines,
                    lines: s.lines,
                });
                self.owe_response = true;
                self.state = State::AnsStoring { ppm, confirm };
                self.timer = None;
            }
            other if params.ecm => {
                let reason = match other {
                    Ok((_, s)) if s.end == PageEndReason::TooLong => format!(
                        "it passes {} lines; the rest was not decoded",
                        crate::MAX_PAGE_LINES
                    ),
                    Ok((_, s)) if s.end == PageEndReason::Undecodable => format!(
                        "decoding stops at line {}, and the coding has no EOL \
                         to resynchronise at: the rest of the page is lost",
                        s.lines
                    ),
                    Ok(_) => "no scan line decodes".to_string(),
                    Err(e) => e.to_string(),
                };
                self.fail(Failure::BadPageData { index, reason });
            }
            other => {
                let (bad_lines, lines) = match other {
                    Ok((_, s)) => (s.bad_lines, s.lines),
                    Err(_) => (0, 0),
                };
                self.actions.push_back(Action::PageDiscarded {
                    index,
                    bad_lines,
                    lines,
                });
                // A sender gives up after `retries` RTNs for one page; one
                // that does not would loop DCS, bad page, RTN for ever.
                if self.rtns >= self.cfg.timers.retries {
                    let tries = self.rtns + 1;
                    self.fail(Failure::PageRejected { index, tries });
                    return;
                }
                self.rtns += 1;
                self.respond(fcf::RTN, &[]);
                self.state = State::AnsWaitDcs(WaitDcs::Rtn);
                self.set_t2(now, "DCS after RTN".into());
            }
        }
    }

    fn on_page_stored(&mut self, now: Instant) {
        let State::AnsStoring { ppm, confirm } = self.state else {
            return;
        };
        if std::mem::take(&mut self.page_uncorrected) {
            self.uncorrected.push(self.page_index);
        }
        self.pages += 1;
        self.page_index += 1;
        self.rtns = 0;
        self.ftts = 0;
        self.progress();
        if let Some(gone) = self.gone {
            let complete = ppm == Ppm::Eop;
            self.remote_ended_early = !complete;
            let result = match gone {
                Gone::Dcn => Ok(()),
                Gone::Closed if complete => Ok(()),
                Gone::Closed => Err(Failure::TransportClosed),
            };
            self.finish(result, false);
            return;
        }
        if self.owe_response {
            self.respond(confirm, &[]);
        } else {
            // We said RNR; the next RR (or repeated PPS) gets this MCF.
            self.last_response = vec![self.simple(confirm)];
            self.last_response_fcf = Some(Fcf::from_byte(confirm));
        }
        self.last_ppm = Some(ppm);
        self.rx_fresh = false;
        match ppm {
            Ppm::Mps => {
                self.state = State::AnsPage;
                let what = format!("page {}", self.page_index + 1);
                self.set_t2(now, what);
            }
            Ppm::Eop => {
                self.state = State::AnsWaitDcn;
                self.set_t2(now, "DCN after EOP".into());
            }
            Ppm::Eom => {
                // Back to phase B for the next document.
                self.state = State::AnsWaitDcs(WaitDcs::Dis);
                self.t1 = now.checked_add(self.cfg.timers.t1);
                self.send_dis(now);
            }
        }
    }

    fn ans_pps(&mut self, f: &Frame<'_>, now: Instant) {
        match self.state {
            State::AnsPage => {}
            // Still storing the page this PPS ended: ask the sender to wait.
            State::AnsStoring { .. } => return self.send_rnr(),
            State::AnsWaitDcn => return self.resend_last_response(now),
            // PPS-EOM again after our MCF: checked below.
            State::AnsWaitDcs(WaitDcs::Dis) if self.after_eom() => {}
            _ => return self.unexpected(f),
        }
        let Some(params) = self.params.filter(|p| p.ecm) else {
            self.unexpected(f);
            return;
        };
        let pps = match Pps::parse(f.fif) {
            Ok(p) => p,
            Err(e) => return self.invalid(f, e),
        };
        // The post-page octet carries the sender's X bit (PPS-NULL may come
        // as 0x01): decode it as an FCF, as spandsp does (`& 0xFE`).
        let ppm = match Fcf::from_byte(pps.ppm) {
            Fcf::Null => None,
            other => match Ppm::from_fcf(other) {
                Some(p) => Some(p),
                None => {
                    let msg = format!(
                        "{}: post-page FCF 0x{:02X} is not NULL, MPS, EOP or EOM",
                        f.describe(),
                        pps.ppm
                    );
                    self.fail(Failure::InvalidFrame(msg));
                    return;
                }
            },
        };
        if self.state != State::AnsPage {
            // After EOM: only that PPS-EOM, repeated, makes sense.
            if ppm == Some(Ppm::Eom) && self.ecm_rx.last_confirmed == Some((pps.page, pps.block)) {
                self.resend_last_response(now);
            } else {
                self.unexpected(f);
            }
            return;
        }
        // The counters (mod 256) must name the block being received, or be
        // a repeat of the PPS we confirmed last (our MCF was lost; T.30
        // Annex A, spandsp `process_rx_pps`). Frames for any other block
        // must not go into this one.
        let expected = ((self.page_index % 256) as u8, self.ecm_rx.block);
        if (pps.page, pps.block) != expected {
            if self.ecm_rx.last_confirmed == Some((pps.page, pps.block)) {
                if !self.count_repeat("repeats of the last confirmed PPS") {
                    return;
                }
                // Whatever arrived since belongs to no block we expect.
                self.ecm_rx.drop_block();
                self.respond(fcf::MCF, &[]);
                self.rearm_t2(now);
            } else {
                let msg = format!(
                    "{} for page {} block {} while page {} block {} was expected",
                    f.describe(),
                    u32::from(pps.page) + 1,
                    pps.block,
                    u32::from(expected.0) + 1,
                    expected.1
                );
                self.fail(Failure::UnexpectedFrame(msg));
            }
            return;
        }
        let missing = self.ecm_rx.missing(pps.frames);
        if !missing.is_empty() {
            // T.30 lets a sender correct a block with PPRS_BEFORE_CTC PPRs
            // per CTC, and we answer `retries` CTCs per block.
            let limit = PPRS_BEFORE_CTC * (self.cfg.timers.retries + 1);
            if self.pprs >= limit {
                self.fail(Failure::NoProgress(format!(
                    "page {} block {} still misses {} frames after {limit} PPRs",
                    self.page_index + 1,
                    pps.block,
                    missing.len()
                )));
                return;
            }
            self.pprs += 1;
            self.respond(fcf::PPR, &frame::ppr_fif(missing));
            let what = format!("the frames PPR asked for (page {})", self.page_index + 1);
            self.set_t2(now, what);
            return;
        }
        if !self.ecm_rx.commit_block(MAX_PAGE_BYTES) {
            self.page_too_large();
            return;
        }
        self.pprs = 0;
        self.ctcs = 0;
        self.progress();
        self.ecm_rx.last_confirmed = Some((pps.page, pps.block));
        match ppm {
            None => {
                self.respond(fcf::MCF, &[]);
                let what = format!("the next block of page {}", self.page_index + 1);
                self.set_t2(now, what);
            }
            Some(ppm) => {
                let data = self.ecm_rx.take_page();
                self.end_of_page(ppm, data, params, fcf::MCF, now);
            }
        }
    }

    /// Answerer back in phase B after confirming EOM, before any DCS: a
    /// repeat of EOM (or PPS-EOM, or RR) means our MCF was lost.
    fn after_eom(&self) -> bool {
        self.state == State::AnsWaitDcs(WaitDcs::Dis)
            && self.last_ppm == Some(Ppm::Eom)
            && matches!(self.last_response_fcf, Some(Fcf::Mcf | Fcf::Err))
    }

    /// Answerer: how often a peer may make us answer again without
    /// progress. A T.30 sender repeats a command `retries` times and may
    /// add CRPs and RRs; a peer past four times that is going round in a
    /// loop (RR, CRP, a command or DCS again and again), which would keep
    /// the call open for ever since every answer restarts T2.
    fn max_repeats(&self) -> u32 {
        self.cfg.timers.retries.saturating_mul(4)
    }

    /// Counts one answer given again; false, having ended the call with
    /// [`Failure::NoProgress`], past [`T30::max_repeats`].
    fn count_repeat(&mut self, what: &str) -> bool {
        self.repeats += 1;
        if self.repeats > self.max_repeats() {
            let limit = self.max_repeats();
            self.fail(Failure::NoProgress(format!(
                "more than {limit} {what} on page {} without new data",
                self.page_index + 1
            )));
            return false;
        }
        true
    }

    /// Progress on the receiving side: the loop counters start again.
    fn progress(&mut self) {
        self.repeats = 0;
    }

    fn send_rnr(&mut self) {
        let f = vec![self.simple(fcf::RNR)];
        self.owe_response = false;
        self.send_frames(f);
    }

    fn ans_rr(&mut self, f: &Frame<'_>, now: Instant) {
        match self.state {
            State::AnsStoring { .. } => self.send_rnr(),
            State::AnsPage | State::AnsWaitDcn | State::AnsWaitDcs(_)
                if self.last_response_fcf.is_some() =>
            {
                self.resend_last_response(now);
            }
            _ => self.unexpected(f),
        }
    }

    fn ans_ctc(&mut self, f: &Frame<'_>, now: Instant) {
        if self.state == State::AnsPage && self.params.is_some_and(|p| p.ecm) {
            if self.ctcs >= self.cfg.timers.retries {
                let msg = format!(
                    "CTC more than {} times for page {} block {}",
                    self.cfg.timers.retries,
                    self.page_index + 1,
                    self.ecm_rx.block
                );
                self.fail(Failure::NoProgress(msg));
                return;
            }
            self.ctcs += 1;
            // Continue to correct: the sender goes on resending the block,
            // at the speed the CTC names.
            if let Some(m) = frame::parse_ctc(f.fif) {
                self.modem = m;
            }
            self.respond(fcf::CTR, &[]);
            self.rearm_t2(now);
        } else {
            self.unexpected(f);
        }
    }

    /// EOR (end of retransmission, T.30 Annex A): the sender gives up
    /// correcting the block. The block is taken as it is (missing frames
    /// leave gaps the decoder counts as bad lines) and answered with ERR;
    /// EOR with a post-page command also ends the page, and its ERR waits
    /// for the store as MCF would. A repeat (our ERR lost) gets ERR again.
    fn ans_eor(&mut self, f: &Frame<'_>, now: Instant) {
        match self.state {
            State::AnsPage => {}
            State::AnsStoring { .. } => return self.send_rnr(),
            State::AnsWaitDcn => return self.resend_last_response(now),
            State::AnsWaitDcs(WaitDcs::Dis) if self.after_eom() => {
                return self.resend_last_response(now);
            }
            _ => return self.unexpected(f),
        }
        let Some(params) = self.params.filter(|p| p.ecm) else {
            return self.unexpected(f);
        };
        let Some(&octet) = f.fif.first() else {
            let msg = format!("{}: no post-page field", f.describe());
            return self.fail(Failure::InvalidFrame(msg));
        };
        let ppm = match Fcf::from_byte(octet) {
            Fcf::Null => None,
            other => match Ppm::from_fcf(other) {
                Some(p) => Some(p),
                None => {
                    let msg = format!(
                        "{}: post-page FCF 0x{octet:02X} is not NULL, MPS, EOP or EOM",
                        f.describe()
                    );
                    return self.fail(Failure::InvalidFrame(msg));
                }
            },
        };
        if self.last_response_fcf == Some(Fcf::Err) && self.ecm_rx.is_empty() {
            // Nothing since our ERR: the sender missed it.
            return self.resend_last_response(now);
        }
        let confirmed = ((self.page_index % 256) as u8, self.ecm_rx.block);
        if !self.ecm_rx.commit_block(MAX_PAGE_BYTES) {
            return self.page_too_large();
        }
        self.ecm_rx.last_confirmed = Some(confirmed);
        self.pprs = 0;
        self.ctcs = 0;
        self.page_uncorrected = true;
        self.progress();
        match ppm {
            None => {
                self.respond(fcf::ERR, &[]);
                let what = format!("the next block of page {}", self.page_index + 1);
                self.set_t2(now, what);
            }
            Some(ppm) => {
                let data = self.ecm_rx.take_page();
                self.end_of_page(ppm, data, params, fcf::ERR, now);
            }
        }
    }

    /// CRP: the sender did not understand our last frames. While a page
    /// is being stored that response is still to come (the last one sent
    /// belongs to the previous page): ECM says RNR, non-ECM stays silent.
    fn ans_crp(&mut self, now: Instant) {
        match self.state {
            State::AnsStoring { .. } if self.params.is_some_and(|p| p.ecm) => self.send_rnr(),
            State::AnsStoring { .. } => {}
            // Our response to the DCS (CFR or FTT) is still to come.
            State::AnsWaitTraining => {}
            // Phase B: what we sent last is DIS (a response to EOM came
            // before it), and a DIS repeat restarts its T4.
            State::AnsWaitDcs(WaitDcs::Dis) => self.send_dis(now),
            _ => self.resend_last_response(now),
        }
    }

    fn ans_dcn(&mut self) {
        match self.state {
            State::AnsWaitDcn => self.finish(Ok(()), false),
            State::AnsStoring { .. } => self.gone = Some(Gone::Dcn),
            // After EOM + MCF the document was complete.
            State::AnsWaitDcs(WaitDcs::Dis) if self.last_ppm == Some(Ppm::Eom) => {
                self.finish(Ok(()), false);
            }
            _ => {
                self.remote_ended_early = true;
                let result = if self.pages > 0 {
                    Ok(())
                } else {
                    Err(Failure::RemoteDisconnected)
                };
                self.finish(result, false);
            }
        }
    }

    // -----------------------------------------------------------------
    // Caller.

    fn caller_frame(&mut self, f: &Frame<'_>, now: Instant) {
        match f.fcf {
            Fcf::Nsf if self.state == State::CallWaitDis => {
                self.pending_ns = frame::parse_non_standard(f.fif).map(<[u8]>::to_vec);
            }
            Fcf::Csi if self.state == State::CallWaitDis => {
                self.pending_ident = Some(frame::parse_ident(f.fif));
            }
            Fcf::Dis if self.state == State::CallWaitDis => self.call_dis(f, now),
            // A DIS repeat that crossed our DCS, or a CFR we already acted
            // on: T4 and the receiver's repeat rule cover any loss.
            Fcf::Nsf | Fcf::Csi | Fcf::Dis => {}
            Fcf::Cfr if self.state == State::CallWaitCfr => self.call_cfr(now),
            Fcf::Cfr => {}
            Fcf::Ftt if self.state == State::CallWaitCfr => self.call_ftt(now),
            Fcf::Mcf
            | Fcf::Pip
            | Fcf::Rtp
            | Fcf::Rtn
            | Fcf::Pin
            | Fcf::Ppr
            | Fcf::Rnr
            | Fcf::Ctr
            | Fcf::Err => {
                match self.state {
                    State::CallWaitResp => self.call_response(f, now),
                    // Nothing is outstanding (a page is being prepared), or
                    // the DCS after RTP/RTN is: a late duplicate of the
                    // response we acted on. Never credit it to anything.
                    State::CallNeedPage | State::CallWaitCfr => {}
                    _ => self.unexpected(f),
                }
            }
            Fcf::Crp if matches!(self.state, State::CallWaitCfr | State::CallWaitResp) => {
                self.repeat_or_give_up(now);
            }
            Fcf::Crp => {}
            Fcf::Dcn => self.finish(Err(Failure::RemoteDisconnected), false),
            _ => self.unexpected(f),
        }
    }

    fn call_dis(&mut self, f: &Frame<'_>, now: Instant) {
        let remote = match Capabilities::from_dis_fif(f.fif) {
            Ok(c) => c,
            Err(e) => return self.invalid(f, e),
        };
        self.dis_received = true;
        self.t1 = None;
        self.take_remote_info();
        if !frame::dis_ready_to_receive(f.fif) {
            self.fail(Failure::Incompatible(
                "the remote fax is not ready to receive (DIS bit 10 is clear)".into(),
            ));
            return;
        }
        let params = match negotiate(&self.cfg.caps, &remote, self.doc_res, self.doc_width) {
            Ok(p) => p,
            Err(e) => return self.fail(e),
        };
        let Some(modems) = Modem::permitted_by_dis(f.fif) else {
            let bits: Vec<u8> = (frame::BIT_MODEM_1..=frame::BIT_MODEM_4)
                .map(|b| u8::from(frame::bit(f.fif, b)))
                .collect();
            self.fail(Failure::Incompatible(format!(
                "the remote fax offers no modem a T.30 sender can use (DIS bits 11-14 are {bits:?})"
            )));
            return;
        };
        let ours = &self.cfg.caps;
        let usable: Vec<Modem> = modems
            .iter()
            .copied()
            .filter(|m| ours.allows_modem(*m))
            .collect();
        if usable.is_empty() {
            let names = |ms: &[Modem]| {
                ms.iter()
                    .map(|m| format!("{m:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            self.fail(Failure::Incompatible(format!(
                "no modem in common: the remote fax offers {} and this station can use {}",
                names(&modems),
                names(&ours.modems)
            )));
            return;
        }
        self.modems = usable;
        self.modem_step = 0;
        let no_fill = params.ecm || params.coding == Coding::Mmr;
        self.min_scan = MinScan::for_dis(f.fif, params.resolution, no_fill);
        self.params = Some(params);
        self.length = frame::dis_page_length(f.fif);
        self.after_cfr = AfterCfr::NextPage;
        self.send_dcs(now);
        self.announce(params);
    }

    fn send_dcs(&mut self, now: Instant) {
        let Some(params) = self.params else {
            return;
        };
        let x = self.x();
        let mut frames = Vec::new();
        if let Some(ns) = &self.cfg.non_standard {
            frames.push(frame::build(
                fcf::NSS | x,
                &frame::non_standard_fif(ns),
                false,
            ));
        }
        if !self.cfg.ident.is_empty() {
            frames.push(frame::build(
                fcf::TSI | x,
                &frame::ident_fif(&self.cfg.ident),
                false,
            ));
        }
        self.modem = self
            .modems
            .get(self.modem_step)
            .copied()
            .unwrap_or(Modem::V17_14400);
        frames.push(frame::build(
            fcf::DCS | x,
            &params.to_dcs_fif_with(self.length, self.modem, self.min_scan),
            true,
        ));
        let tcf = self.cfg.training.then_some(self.modem);
        self.command_with_tcf(frames, "DCS".into(), tcf, now);
        self.state = State::CallWaitCfr;
    }

    /// FTT: the receiver could not train; DCS again at the next slower
    /// modem the DIS permits (spandsp `step_fallback_entry`), and fail
    /// once there is none.
    fn call_ftt(&mut self, now: Instant) {
        if self.modem_step + 1 >= self.modems.len() {
            let msg = format!(
                "training failed (FTT) at every speed the remote offers, down to {} bit/s",
                self.modem.bit_rate()
            );
            self.fail(Failure::Incompatible(msg));
            return;
        }
        self.modem_step += 1;
        self.send_dcs(now);
    }

    fn call_cfr(&mut self, now: Instant) {
        self.timer = None;
        match self.after_cfr {
            AfterCfr::NextPage => self.need_page(),
            AfterCfr::ResendPage => self.send_page(now),
        }
    }

    fn need_page(&mut self) {
        let Some(params) = self.params else {
            return;
        };
        self.timer = None;
        self.state = State::CallNeedPage;
        self.actions.push_back(Action::NeedPage {
            index: self.page_index,
            params,
        });
    }

    fn on_page(&mut self, data: Vec<u8>, now: Instant) {
        if self.state != State::CallNeedPage {
            return;
        }
        self.page_data = data;
        self.rtn_count = 0;
        self.page_uncorrected = false;
        self.send_page(now);
    }

    fn send_page(&mut self, now: Instant) {
        let Some(params) = self.params else {
            return;
        };
        self.ppm = if self.page_index + 1 >= self.total_pages {
            Ppm::Eop
        } else {
            Ppm::Mps
        };
        if params.ecm {
            self.ecm_tx = Some(EcmTx::new(&self.page_data));
            self.send_ecm_block(None, now);
        } else {
            let min_line_bits = self.min_scan.line_bits(self.modem);
            let data = with_min_line_bits(&self.page_data, &params, min_line_bits);
            self.actions.push_back(Action::SendImage(data));
            let ppm = vec![self.simple(self.ppm.fcf())];
            self.command(ppm, self.ppm.name().into(), now);
            self.state = State::CallWaitResp;
        }
    }

    /// Sends the current ECM block (all frames, or those a PPR named),
    /// then PPS.
    fn send_ecm_block(&mut self, only: Option<&[usize]>, now: Instant) {
        let x = self.x();
        let Some(tx) = &self.ecm_tx else {
            return;
        };
        let burst = tx.burst(only);
        let last = tx.is_last_block();
        let pps = Pps {
            ppm: if last { self.ppm.fcf() | x } else { fcf::NULL },
            page: self.page_index as u8,
            block: tx.block() as u8,
            frames: tx.frame_count() as u16,
        };
        let name = if last {
            format!("PPS-{}", self.ppm.name())
        } else {
            "PPS-NULL".to_string()
        };
        self.actions.push_back(Action::SendEcmFrames(burst));
        let f = vec![frame::build(fcf::PPS | x, &pps.to_fif(), true)];
        self.command(f, name, now);
        self.ecm_cmd = EcmCmd::Pps;
        self.state = State::CallWaitResp;
    }

    fn call_response(&mut self, f: &Frame<'_>, now: Instant) {
        let ecm = self.params.is_some_and(|p| p.ecm);
        let cmd = self.ecm_cmd;
        match f.fcf {
            // MCF to EOR is not T.30's answer (ERR is), but it accepts the
            // block all the same.
            Fcf::Mcf | Fcf::Pip if cmd != EcmCmd::Ctc => self.block_accepted(now),
            Fcf::Err if ecm && cmd == EcmCmd::Eor => self.block_accepted(now),
            Fcf::Ctr if ecm && cmd == EcmCmd::Ctc => {
                // T.30 Annex A: go on correcting (at the CTC's speed):
                // the frames the last PPR asked for, then PPS again.
                let asked = self
                    .ecm_tx
                    .as_ref()
                    .map(|t| t.asked.clone())
                    .unwrap_or_default();
                self.send_ecm_block(Some(&asked), now);
            }
            // RTP, RTN and PIN answer a post-page command: after PPS-NULL
            // (blocks of the page still to come) T.30 Annex A has only MCF,
            // PPR and RNR, and spandsp (`process_state_iv_pps_null`) hangs
            // up on anything else. Taking RTP as the end of the page would
            // report it sent without its later blocks.
            Fcf::Rtp | Fcf::Rtn | Fcf::Pin if cmd == EcmCmd::Pps && !self.page_ending() => {
                let block = self.ecm_tx.as_ref().map_or(0, EcmTx::block);
                let msg = format!(
                    "{} in answer to PPS-NULL (page {} block {}): a post-page response \
                     while blocks of the page are still to come",
                    f.describe(),
                    self.page_index + 1,
                    block
                );
                self.fail(Failure::UnexpectedFrame(msg));
            }
            Fcf::Rtp if cmd == EcmCmd::Pps => {
                self.t5 = None;
                self.page_sent(true, now);
            }
            Fcf::Rtn | Fcf::Pin if cmd == EcmCmd::Pps => self.page_rtn(now),
            Fcf::Ppr if ecm && cmd == EcmCmd::Pps => self.page_ppr(f, now),
            Fcf::Rnr if ecm && cmd != EcmCmd::Ctc => self.page_rnr(now),
            _ => self.unexpected(f),
        }
    }

    /// Whether the last PPS (or the non-ECM post-page command) ended the
    /// page: not a PPS-NULL with blocks of the page still to send.
    fn page_ending(&self) -> bool {
        self.ecm_tx.as_ref().is_none_or(EcmTx::is_last_block)
    }

    /// MCF (or ERR after EOR): the block is done; the next block, or the
    /// page is delivered. After EOR it is delivered with the errors left.
    fn block_accepted(&mut self, now: Instant) {
        self.t5 = None;
        if self.ecm_cmd == EcmCmd::Eor {
            self.page_uncorrected = true;
        }
        let ecm = self.params.is_some_and(|p| p.ecm);
        let more_blocks = self.ecm_tx.as_ref().is_some_and(|t| !t.is_last_block());
        if ecm && more_blocks {
            if self.cancel {
                // The page is incomplete; the receiver drops it.
                self.fail(Failure::Cancelled);
                return;
            }
            if let Some(tx) = self.ecm_tx.as_mut() {
                tx.next_block();
            }
            self.send_ecm_block(None, now);
        } else {
            self.page_sent(false, now);
        }
    }

    fn page_sent(&mut self, retrain: bool, now: Instant) {
        let index = self.page_index;
        let uncorrected = std::mem::take(&mut self.page_uncorrected);
        if uncorrected {
            self.uncorrected.push(index);
        }
        self.actions
            .push_back(Action::PageSent { index, uncorrected });
        self.pages += 1;
        self.page_index += 1;
        self.rtn_count = 0;
        self.ecm_tx = None;
        self.timer = None;
        if self.page_index >= self.total_pages {
            self.finish(Ok(()), true);
        } else if self.cancel {
            self.fail(Failure::Cancelled);
        } else if retrain {
            // RTP: the page is kept, but the receiver asks for retraining;
            // spandsp retrains one modem slower.
            self.step_down();
            self.after_cfr = AfterCfr::NextPage;
            self.send_dcs(now);
        } else {
            self.need_page();
        }
    }

    /// The next slower modem the DIS permits, for the next DCS or CTC;
    /// false (staying at the slowest) when there is none.
    fn step_down(&mut self) -> bool {
        if self.modem_step + 1 < self.modems.len() {
            self.modem_step += 1;
            true
        } else {
            false
        }
    }

    fn page_rtn(&mut self, now: Instant) {
        self.t5 = None;
        self.rtn_count += 1;
        let index = self.page_index;
        let retries = self.cfg.timers.retries;
        if self.cancel {
            self.fail(Failure::Cancelled);
        } else if self.rtn_count >= retries {
            let tries = self.rtn_count;
            self.fail(Failure::PageRejected { index, tries });
        } else {
            // Retrain one modem slower, as spandsp does
            // (`step_fallback_entry` on RTN). At the slowest modem the page
            // goes again at that speed: spandsp gives up there, but the
            // RTN limit bounds us anyway, and over T.38 the speed is
            // seldom what damaged the page.
            self.step_down();
            let rate = self
                .modems
                .get(self.modem_step)
                .map_or(self.modem.bit_rate(), |m| m.bit_rate());
            let reason = format!(
                "the receiver rejected page {} (RTN); sending it again at {rate} bit/s \
                 (try {} of {retries})",
                index + 1,
                self.rtn_count + 1
            );
            self.actions.push_back(Action::PageRetry { index, reason });
            self.after_cfr = AfterCfr::ResendPage;
            self.send_dcs(now);
        }
    }

    /// PPR: send the frames it names again. After [`PPRS_BEFORE_CTC`]
    /// PPRs for the block, T.30 Annex A (and spandsp `process_rx_ppr`)
    /// has the sender choose: CTC (continue to correct, one modem slower)
    /// if the last PPRs confirmed any frame, or EOR (end of
    /// retransmission: the block goes with its errors) if they did not.
    /// At most `retries` CTCs per block, matching the answerer's cap.
    fn page_ppr(&mut self, f: &Frame<'_>, now: Instant) {
        let asked = match frame::parse_ppr(f.fif) {
            Ok(v) => v,
            Err(e) => return self.invalid(f, e),
        };
        self.t5 = None;
        if self.cancel {
            self.fail(Failure::Cancelled);
            return;
        }
        let retries = self.cfg.timers.retries;
        let Some(tx) = self.ecm_tx.as_mut() else {
            return;
        };
        let only = tx.take_ppr(&asked);
        tx.ppr_count += 1;
        if tx.ppr_count < PPRS_BEFORE_CTC {
            self.send_ecm_block(Some(&only), now);
            return;
        }
        tx.ppr_count = 0;
        let correcting = tx.progress > 0 && tx.ctc_count < retries;
        if correcting {
            tx.progress = 0;
            tx.ctc_count += 1;
            let ctcs = tx.ctc_count;
            self.step_down();
            self.modem = self
                .modems
                .get(self.modem_step)
                .copied()
                .unwrap_or(self.modem);
            let f = vec![frame::build(
                fcf::CTC | self.x(),
                &frame::ctc_fif(self.modem),
                true,
            )];
            self.command(f, format!("CTC ({ctcs} for this block)"), now);
            self.ecm_cmd = EcmCmd::Ctc;
        } else {
            let last = tx.is_last_block();
            let (octet, name) = if last {
                (
                    self.ppm.fcf() | self.x(),
                    format!("EOR-{}", self.ppm.name()),
                )
            } else {
                (fcf::NULL, "EOR-NULL".to_string())
            };
            let f = vec![frame::build(fcf::EOR | self.x(), &[octet], true)];
            self.command(f, name, now);
            self.ecm_cmd = EcmCmd::Eor;
        }
        self.state = State::CallWaitResp;
    }

    fn page_rnr(&mut self, now: Instant) {
        if self.cancel {
            self.fail(Failure::Cancelled);
            return;
        }
        if self.t5.is_none() {
            self.t5 = now.checked_add(self.cfg.timers.t5);
        }
        // Over TCP an immediate RR would bounce straight back as RNR: wait
        // a third of T4 (at most a second), about a modem's turnaround.
        let pause = (self.cfg.timers.t4 / 3).min(Duration::from_secs(1));
        self.set_timer(now, pause, Timer::RrPause);
    }
}
