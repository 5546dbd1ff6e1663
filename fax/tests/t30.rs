//! T.30 engine tests: two `T30`s back to back on a fake clock, with fault
//! injection between them, plus single-engine tests for bad input.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::Cell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

use faxgate_fax::t30::{
    self, Action, Capabilities, Config, Event, Failure, Outcome, Params, Role, T30, Timers, frame,
};
use faxgate_fax::{Bitmap, Coding, Resolution};

// ---------------------------------------------------------------------------
// Pages and configs.

/// A page with content on most lines: a border and a few runs per line.
fn page(width: u32, height: u32, seed: u32) -> Bitmap {
    let mut b = Bitmap::new(width, height);
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    for y in 0..height {
        for _ in 0..(y % 7) {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let start = x % width;
            let len = (x >> 20) % 40 + 1;
            for px in start..(start + len).min(width) {
                b.set_pixel(px, y, true);
            }
        }
        b.set_pixel(0, y, true);
        b.set_pixel(width - 1, y, true);
    }
    b
}

/// Dense noise: codes to many ECM frames (several blocks).
fn noise_page(width: u32, height: u32, seed: u64) -> Bitmap {
    let stride = width.div_ceil(8) as usize;
    let mut x = seed | 1;
    let data: Vec<u8> = (0..stride * height as usize)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    Bitmap::from_packed(width, height, data).unwrap()
}

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

fn caller_config(pages: u32, res: Resolution, width: u32, caps: Capabilities) -> Config {
    Config {
        role: Role::Caller {
            pages,
            document_resolution: res,
            document_width: width,
        },
        ident: "+49 30 555 0101".into(),
        caps,
        timers: Timers::default(),
        non_standard: Some(b"caller-hello".to_vec()),
        max_bad_percent: 5,
        max_consecutive_bad: 8,
        training: false,
    }
}

fn answerer_config(caps: Capabilities) -> Config {
    Config {
        role: Role::Answerer,
        ident: "+33 1 555 0202".into(),
        caps,
        timers: Timers::default(),
        non_standard: Some(b"answerer-hello".to_vec()),
        max_bad_percent: 5,
        max_consecutive_bad: 8,
        training: false,
    }
}

// ---------------------------------------------------------------------------
// The back-to-back harness.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Caller,
    Answerer,
}

impl Side {
    fn other(self) -> Side {
        match self {
            Side::Caller => Side::Answerer,
            Side::Answerer => Side::Caller,
        }
    }
    fn idx(self) -> usize {
        self as usize
    }
}

type Fault = Box<dyn FnMut(Side, &mut Event) -> bool>;
/// A predicate on the failure a bad-input case must produce.
type Check = Box<dyn Fn(&Failure) -> bool>;
type Hook = Box<dyn FnMut(Side, &Action) -> Vec<(Side, Event)>>;

struct Harness {
    start: Instant,
    now: Instant,
    engines: [T30; 2],
    doc: Vec<Bitmap>,
    doc_res: Resolution,
    queue: VecDeque<(Side, Event)>,
    timed: Vec<(Instant, Side, Event)>,
    /// How long "storage" takes before PageStored.
    store_delay: Duration,
    /// Whether NeedPage is answered.
    answer_need_page: bool,
    /// Decides the fate of each event on the wire (from the sender's
    /// side): false drops it; it may also be changed.
    fault: Fault,
    /// Extra events to inject after an action.
    hook: Hook,
    log: Vec<(Duration, Side, Action)>,
    /// V.21 frames sent, by sender.
    wire: Vec<(Duration, Side, Vec<u8>)>,
    received: Vec<(u32, Params, Bitmap)>,
    outcomes: [Option<Outcome>; 2],
}

impl Harness {
    fn new(caller: Config, answerer: Config, doc: Vec<Bitmap>, doc_res: Resolution) -> Self {
        let start = Instant::now();
        Harness {
            start,
            now: start,
            engines: [
                T30::new(caller, start).unwrap(),
                T30::new(answerer, start).unwrap(),
            ],
            doc,
            doc_res,
            queue: VecDeque::new(),
            timed: Vec::new(),
            store_delay: Duration::ZERO,
            answer_need_page: true,
            fault: Box::new(|_, _| true),
            hook: Box::new(|_, _| Vec::new()),
            log: Vec::new(),
            wire: Vec::new(),
            received: Vec::new(),
            outcomes: [None, None],
        }
    }

    /// The usual pair: a `pages`-page document of `page()`s.
    fn pair(
        pages: u32,
        res: Resolution,
        width: u32,
        ccaps: Capabilities,
        acaps: Capabilities,
    ) -> Self {
        let doc = (0..pages)
            .map(|i| page(width, 60 + 13 * i, i + 1))
            .collect();
        Harness::new(
            caller_config(pages, res, width, ccaps),
            answerer_config(acaps),
            doc,
            res,
        )
    }

    fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    fn send(&mut self, from: Side, mut ev: Event) {
        if (self.fault)(from, &mut ev) {
            self.queue.push_back((from.other(), ev));
        }
    }

    fn route(&mut self, from: Side, action: Action) {
        let t = self.elapsed();
        self.log.push((t, from, action.clone()));
        let injected = (self.hook)(from, &action);
        match action {
            Action::SendFrames(frames) => {
                for f in frames {
                    self.wire.push((t, from, f.clone()));
                    self.send(
                        from,
                        Event::Frame {
                            bytes: f,
                            fcs_ok: true,
                        },
                    );
                }
            }
            Action::SendImage(data) => {
                for c in data.chunks(1000) {
                    self.send(from, Event::ImageData(c.to_vec()));
                }
                self.send(from, Event::ImageEnd);
            }
            Action::SendEcmFrames(frames) => {
                for f in frames {
                    self.send(
                        from,
                        Event::EcmFrame {
                            bytes: f,
                            fcs_ok: true,
                        },
                    );
                }
            }
            Action::NeedPage { index, params } if self.answer_need_page => {
                let fitted = t30::fit_page(&self.doc[index as usize], self.doc_res, &params);
                let data = t30::encode_page(&fitted, &params).unwrap();
                self.queue.push_back((from, Event::Page(data)));
            }
            Action::PageReceived {
                index,
                params,
                page,
                ..
            } => {
                self.received.push((index, params, page));
                let at = self.now + self.store_delay;
                self.timed.push((at, from, Event::PageStored));
            }
            Action::Finished(o) => self.outcomes[from.idx()] = Some(o),
            _ => {}
        }
        self.queue.extend(injected);
    }

    fn step(&mut self) -> bool {
        let mut progress = false;
        for side in [Side::Caller, Side::Answerer] {
            while let Some(a) = self.engines[side.idx()].poll_action() {
                progress = true;
                self.route(side, a);
            }
        }
        let now = self.now;
        if let Some(i) = self.timed.iter().position(|(at, _, _)| *at <= now) {
            let (_, to, ev) = self.timed.remove(i);
            self.engines[to.idx()].handle(ev, now);
            return true;
        }
        if let Some((to, ev)) = self.queue.pop_front() {
            self.engines[to.idx()].handle(ev, now);
            progress = true;
        }
        progress
    }

    fn run(&mut self) -> &mut Self {
        for _ in 0..1_000_000 {
            if self.step() {
                continue;
            }
            if self.outcomes.iter().all(Option::is_some) {
                return self;
            }
            let next = [
                self.engines[0].poll_timeout(),
                self.engines[1].poll_timeout(),
                self.timed.iter().map(|(at, _, _)| *at).min(),
            ]
            .into_iter()
            .flatten()
            .min();
            let Some(next) = next else {
                return self;
            };
            self.now = self.now.max(next);
            let now = self.now;
            for e in &mut self.engines {
                if e.poll_timeout().is_some_and(|t| t <= now) {
                    e.handle(Event::Timeout, now);
                }
            }
        }
        panic!("the session did not end");
    }

    fn outcome(&self, side: Side) -> &Outcome {
        self.outcomes[side.idx()]
            .as_ref()
            .unwrap_or_else(|| panic!("{side:?} did not finish; log: {:#?}", self.summary()))
    }

    /// Action names for failure messages.
    fn summary(&self) -> Vec<String> {
        self.log
            .iter()
            .map(|(t, s, a)| {
                let a = match a {
                    Action::SendFrames(f) => format!(
                        "SendFrames({})",
                        f.iter()
                            .map(|f| frame::Frame::parse(f)
                                .map(|f| f.describe())
                                .unwrap_or_default())
                            .collect::<Vec<_>>()
                            .join(" ")
                    ),
                    Action::SendImage(d) => format!("SendImage({} bytes)", d.len()),
                    Action::SendEcmFrames(f) => format!("SendEcmFrames({} frames)", f.len()),
                    Action::PageReceived { index, .. } => format!("PageReceived({index})"),
                    other => format!("{other:?}"),
                };
                format!("{:>6.1}s {s:?}: {a}", t.as_secs_f64())
            })
            .collect()
    }

    fn actions(&self, side: Side) -> impl Iterator<Item = &Action> {
        self.log
            .iter()
            .filter(move |(_, s, _)| *s == side)
            .map(|(_, _, a)| a)
    }

    /// FCFs (X bit masked) of the frames `side` sent, in order.
    fn sent_fcfs(&self, side: Side) -> Vec<frame::Fcf> {
        self.wire
            .iter()
            .filter(|(_, s, _)| *s == side)
            .map(|(_, _, f)| frame::Frame::parse(f).unwrap().fcf)
            .collect()
    }

    fn count_sent(&self, side: Side, fcf: frame::Fcf) -> usize {
        self.sent_fcfs(side).iter().filter(|f| **f == fcf).count()
    }

    fn negotiated(&self, side: Side) -> Vec<Params> {
        self.actions(side)
            .filter_map(|a| match a {
                Action::Negotiated(p) => Some(*p),
                _ => None,
            })
            .collect()
    }

    /// Every page arrived once, in order, equal to the document page fitted
    /// to the parameters it was sent with.
    fn assert_pages_identical(&self) {
        let indices: Vec<u32> = self.received.iter().map(|(i, _, _)| *i).collect();
        let want: Vec<u32> = (0..self.doc.len() as u32).collect();
        assert_eq!(indices, want, "pages received: {:#?}", self.summary());
        for (i, params, got) in &self.received {
            let expect = t30::fit_page(&self.doc[*i as usize], self.doc_res, params);
            assert_eq!(got.width(), expect.width(), "page {i} width");
            assert_eq!(got.height(), expect.height(), "page {i} height");
            assert!(got == &expect, "page {i} differs");
        }
    }
}

fn assert_ok(o: &Outcome, pages: u32) {
    assert_eq!(o.result, Ok(()), "{o:?}");
    assert_eq!(o.pages, pages, "{o:?}");
}

// ---------------------------------------------------------------------------
// Whole sessions.

#[test]
fn sessions_deliver_pages_pixel_identical() {
    use Resolution::*;
    let cases: &[(
        &str,
        Capabilities,
        Capabilities,
        Resolution,
        u32,
        Coding,
        bool,
    )] = &[
        (
            "all",
            Capabilities::all(),
            Capabilities::all(),
            Fine,
            1728,
            Coding::Mmr,
            true,
        ),
        (
            "minimal",
            Capabilities::minimal(),
            Capabilities::minimal(),
            Standard,
            1728,
            Coding::Mh,
            false,
        ),
        (
            "mr",
            caps(&[Fine], &[2048], true, false, false),
            caps(&[Fine], &[2048], true, false, false),
            Fine,
            2048,
            Coding::Mr { k: 4 },
            false,
        ),
        (
            "ecm mh",
            caps(&[SuperFine], &[], false, false, true),
            caps(&[SuperFine], &[], false, false, true),
            SuperFine,
            1728,
            Coding::Mh,
            true,
        ),
        (
            "ecm mr r400 a3",
            caps(&[R400], &[2048, 2432], true, false, true),
            Capabilities::all(),
            R400,
            4864,
            Coding::Mr { k: 4 },
            true,
        ),
    ];
    for (name, ccaps, acaps, res, width, coding, ecm) in cases {
        let mut h = Harness::pair(3, *res, *width, ccaps.clone(), acaps.clone());
        h.run();
        assert_ok(h.outcome(Side::Caller), 3);
        assert_ok(h.outcome(Side::Answerer), 3);
        assert!(!h.outcome(Side::Answerer).remote_ended_early, "{name}");
        h.assert_pages_identical();
        let want = Params {
            resolution: *res,
            width: *width,
            coding: *coding,
            ecm: *ecm,
        };
        assert_eq!(h.negotiated(Side::Caller), vec![want], "{name}");
        assert_eq!(h.negotiated(Side::Answerer), vec![want], "{name}");
        assert_eq!(
            h.outcome(Side::Caller).remote_ident.as_deref(),
            Some("+33 1 555 0202"),
            "{name}"
        );
        assert_eq!(
            h.outcome(Side::Answerer).remote_ident.as_deref(),
            Some("+49 30 555 0101"),
            "{name}"
        );
        assert!(
            h.actions(Side::Caller)
                .any(|a| *a == Action::RemoteNonStandard(b"answerer-hello".to_vec())),
            "{name}"
        );
        assert!(
            h.actions(Side::Answerer)
                .any(|a| *a == Action::RemoteNonStandard(b"caller-hello".to_vec())),
            "{name}"
        );
        let sent: Vec<u32> = h
            .actions(Side::Caller)
            .filter_map(|a| match a {
                Action::PageSent { index, .. } => Some(*index),
                _ => None,
            })
            .collect();
        assert_eq!(sent, vec![0, 1, 2], "{name}");
        // The whole exchange is immediate: no timer ever fired.
        assert_eq!(h.elapsed(), Duration::ZERO, "{name}: {:#?}", h.summary());
    }
}

/// The X bit (T.30 5.3.6.1): frames from the station that received DIS
/// (the caller) have it set, the answerer's frames do not; DIS, CSI and
/// NSF never do. Checked on the octets, against spandsp's FCF values.
#[test]
fn wire_octets_follow_the_x_bit_rule() {
    for ecm in [false, true] {
        let c = if ecm {
            Capabilities::all()
        } else {
            Capabilities::minimal()
        };
        let mut h = Harness::pair(2, Resolution::Standard, 1728, c.clone(), c);
        h.run();
        let fcfs = |side| -> Vec<u8> {
            h.wire
                .iter()
                .filter(|(_, s, _)| *s == side)
                .map(|(_, _, f)| f[2])
                .collect()
        };
        let (caller, answerer) = (fcfs(Side::Caller), fcfs(Side::Answerer));
        // NSF, CSI, DIS, CFR, MCF, MCF.
        let answerer_want: Vec<u8> = vec![0x20, 0x40, 0x80, 0x84, 0x8C, 0x8C];
        // NSS, TSI, DCS, then MPS/EOP (or PPS twice), then DCN.
        let caller_want: Vec<u8> = if ecm {
            vec![0x23, 0x43, 0x83, 0xBF, 0xBF, 0xFB]
        } else {
            vec![0x23, 0x43, 0x83, 0x4F, 0x2F, 0xFB]
        };
        assert_eq!(answerer, answerer_want, "answerer, ecm {ecm}");
        assert_eq!(caller, caller_want, "caller, ecm {ecm}");
        // Control octets: only the last frame of each burst is final.
        let dis_burst = &h.wire[..3];
        assert_eq!(
            dis_burst.iter().map(|(_, _, f)| f[1]).collect::<Vec<_>>(),
            vec![0x03, 0x03, 0x13]
        );
        if ecm {
            // PPS-MPS then PPS-EOP, both with X set in the post-page octet.
            let pps: Vec<&Vec<u8>> = h
                .wire
                .iter()
                .filter(|(_, s, f)| *s == Side::Caller && f[2] == 0xBF)
                .map(|(_, _, f)| f)
                .collect();
            assert_eq!(pps[0][3..5], [0x4F, 0]);
            assert_eq!(pps[1][3..5], [0x2F, 1]);
        }
    }
}

// ---------------------------------------------------------------------------
// Negotiation matrix.

#[test]
fn negotiation_matrix_completes_with_the_right_params() {
    use Resolution::*;
    // (name, mr, mmr, ecm)
    let codings: &[(&str, bool, bool, bool)] = &[
        ("mh", false, false, false),
        ("mh+mr", true, false, false),
        ("mh+mr+mmr+ecm", true, true, true),
    ];
    let res_sets: &[&[Resolution]] = &[&[Standard], &[Standard, Fine], &Resolution::ALL];
    let width_sets: &[&[u32]] = &[&[1728], &[1728, 2048, 2432]];
    let mut sets = Vec::new();
    for &(cn, mr, mmr, ecm) in codings {
        for rs in res_sets {
            for ws in width_sets {
                sets.push((cn, caps(rs, ws, mr, mmr, ecm)));
            }
        }
    }
    // (document resolution, width, paper class)
    let docs: &[(Resolution, u32, usize)] = &[(Fine, 2048, 1), (R400, 4864, 2)];
    let mut sessions = 0;
    for (cn, cc) in &sets {
        for (an, ac) in &sets {
            for &(doc_res, doc_width, doc_class) in docs {
                let both = |r: Resolution| {
                    r == Standard || (cc.resolutions.contains(&r) && ac.resolutions.contains(&r))
                };
                // The sets are nested, so the finest common resolution not
                // finer than the document is the answer.
                let resolution = if both(doc_res) {
                    doc_res
                } else if doc_res == R400 && both(R300) {
                    R300
                } else if doc_res == R400 && both(SuperFine) {
                    SuperFine
                } else if both(Fine) {
                    Fine
                } else {
                    Standard
                };
                let wide = cc.widths.len() == 3 && ac.widths.len() == 3;
                let class = if wide { doc_class } else { 0 };
                let width = match resolution {
                    R300 => [2592, 3072, 3648][class],
                    R400 => [3456, 4096, 4864][class],
                    _ => [1728, 2048, 2432][class],
                };
                let ecm = cc.ecm && ac.ecm;
                let coding = if ecm && cc.mmr && ac.mmr {
                    Coding::Mmr
                } else if cc.mr && ac.mr {
                    Coding::Mr {
                        k: if resolution == Standard { 2 } else { 4 },
                    }
                } else {
                    Coding::Mh
                };
                let want = Params {
                    resolution,
                    width,
                    coding,
                    ecm,
                };
                let name = format!("caller {cn} {cc:?} / answerer {an} {ac:?} / doc {doc_res:?}");
                let doc = vec![page(doc_width, 40, 7)];
                let mut h = Harness::new(
                    caller_config(1, doc_res, doc_width, cc.clone()),
                    answerer_config(ac.clone()),
                    doc,
                    doc_res,
                );
                h.run();
                assert_eq!(h.negotiated(Side::Caller), vec![want], "{name}");
                assert_eq!(h.negotiated(Side::Answerer), vec![want], "{name}");
                assert_ok(h.outcome(Side::Caller), 1);
                assert_ok(h.outcome(Side::Answerer), 1);
                h.assert_pages_identical();
                sessions += 1;
            }
        }
    }
    assert_eq!(sessions, 18 * 18 * 2);
}

#[test]
fn minimal_answerer_gets_a_standard_mh_a4_page() {
    let mut h = Harness::pair(
        1,
        Resolution::SuperFine,
        2432,
        Capabilities::all(),
        Capabilities::minimal(),
    );
    h.run();
    let want = Params {
        resolution: Resolution::Standard,
        width: 1728,
        coding: Coding::Mh,
        ecm: false,
    };
    assert_eq!(h.negotiated(Side::Answerer), vec![want]);
    assert_ok(h.outcome(Side::Answerer), 1);
    let (_, _, got) = &h.received[0];
    // A3 at 391 lpi reduced to A4 at 98 lpi: a quarter of the lines, times
    // the 1728/2432 paper reduction.
    let src = &h.doc[0];
    let expect_h = (src.height() as f64 * 98.0 / 391.0 * 1728.0 / 2432.0).round() as u32;
    assert!(
        got.height().abs_diff(expect_h) <= 1,
        "{} vs {expect_h}",
        got.height()
    );
    h.assert_pages_identical();
}

// ---------------------------------------------------------------------------
// RTN and repeated commands.

fn corrupt(data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        if i % 8 == 3 {
            *b ^= 0x5A;
        }
    }
}

#[test]
fn rtn_makes_the_caller_resend_and_the_page_arrives_once() {
    for coding_caps in [Capabilities::minimal(), caps(&[], &[], true, false, false)] {
        let mut h = Harness::pair(
            2,
            Resolution::Standard,
            1728,
            coding_caps.clone(),
            coding_caps,
        );
        let ends = Rc::new(Cell::new(0));
        let e = ends.clone();
        // Damage the first transmission of page 0 only.
        h.fault = Box::new(move |from, ev| {
            if from == Side::Caller {
                match ev {
                    Event::ImageData(d) if e.get() == 0 => corrupt(d),
                    Event::ImageEnd => e.set(e.get() + 1),
                    _ => {}
                }
            }
            true
        });
        h.run();
        assert_ok(h.outcome(Side::Caller), 2);
        assert_ok(h.outcome(Side::Answerer), 2);
        h.assert_pages_identical();
        let discarded: Vec<&Action> = h
            .actions(Side::Answerer)
            .filter(|a| matches!(a, Action::PageDiscarded { .. }))
            .collect();
        assert_eq!(discarded.len(), 1, "{:#?}", h.summary());
        assert!(
            matches!(discarded[0], Action::PageDiscarded { index: 0, bad_lines, lines } if *bad_lines * 20 > *lines)
        );
        let retries: Vec<&Action> = h
            .actions(Side::Caller)
            .filter(|a| matches!(a, Action::PageRetry { index: 0, .. }))
            .collect();
        assert_eq!(retries.len(), 1);
        assert_eq!(h.count_sent(Side::Answerer, frame::Fcf::Rtn), 1);
        // Retrain: DCS went twice, and the page data three times in all.
        assert_eq!(h.count_sent(Side::Caller, frame::Fcf::Dcs), 2);
        assert_eq!(ends.get(), 3);
    }
}

/// RTN and RTP retrain one modem slower (spandsp `step_fallback_entry`);
/// a page RTN rejected at the slowest modem goes again at that speed
/// until the RTN limit.
#[test]
fn rtn_and_rtp_retrain_one_modem_slower() {
    let dcs_modem = |actions: &[Action]| {
        let f = last_frames(actions);
        let dcs = f.last().unwrap();
        assert_eq!(frame::Frame::parse(dcs).unwrap().fcf, frame::Fcf::Dcs);
        frame::Modem::from_dcs(&dcs[3..]).unwrap()
    };
    let step = |m: frame::Modem| frame::Modem::FALLBACK.iter().position(|x| *x == m);
    let (mut c, now, _) = caller_with_page_out(3, Capabilities::minimal());
    let m0 = c.modem();
    c.handle(simple(frame::fcf::RTN), now);
    let actions = drain(&mut c);
    let m1 = dcs_modem(&actions);
    assert_eq!(step(m1), step(m0).map(|i| i + 1), "{m0:?} -> {m1:?}");
    assert_eq!(c.modem(), m1);
    let reason = actions
        .iter()
        .find_map(|a| match a {
            Action::PageRetry { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .unwrap();
    assert!(reason.contains(&m1.bit_rate().to_string()), "{reason}");
    // CFR: page 0 again, now RTP: delivered, and the DCS for page 1 is
    // another step slower.
    c.handle(simple(frame::fcf::CFR), now);
    drain(&mut c);
    c.handle(simple(frame::fcf::RTP), now);
    let actions = drain(&mut c);
    assert!(actions.contains(&Action::PageSent {
        index: 0,
        uncorrected: false
    }));
    let m2 = dcs_modem(&actions);
    assert_eq!(step(m2), step(m1).map(|i| i + 1), "{m1:?} -> {m2:?}");

    // V.27 ter only (DIS bit 12): 4800, then 2400, which stays.
    let mut dis = Capabilities::minimal().to_dis_fif();
    for b in frame::BIT_MODEM_1..=frame::BIT_MODEM_4 {
        dis[(b as usize - 1) / 8] &= !(1 << ((b - 1) % 8));
    }
    frame::set_bit(&mut dis, frame::BIT_MODEM_2);
    let mut c = T30::new(
        caller_config(1, Resolution::Standard, 1728, Capabilities::minimal()),
        now,
    )
    .unwrap();
    c.handle(frame_ev(frame::build(frame::fcf::DIS, &dis, true)), now);
    assert_eq!(dcs_modem(&drain(&mut c)), frame::Modem::V27ter4800);
    c.handle(simple(frame::fcf::CFR), now);
    let params = drain(&mut c)
        .into_iter()
        .find_map(|a| match a {
            Action::NeedPage { params, .. } => Some(params),
            _ => None,
        })
        .unwrap();
    c.handle(
        Event::Page(t30::encode_page(&page(1728, 30, 1), &params).unwrap()),
        now,
    );
    drain(&mut c);
    for _ in 0..2 {
        c.handle(simple(frame::fcf::RTN), now);
        assert_eq!(dcs_modem(&drain(&mut c)), frame::Modem::V27ter2400);
        c.handle(simple(frame::fcf::CFR), now);
        drain(&mut c);
    }
    c.handle(simple(frame::fcf::RTN), now);
    let o = outcome_of(&drain(&mut c));
    assert_eq!(o.result, Err(Failure::PageRejected { index: 0, tries: 3 }));
}

#[test]
fn rtn_limit_rejects_the_page() {
    let mut h = Harness::pair(
        1,
        Resolution::Standard,
        1728,
        Capabilities::minimal(),
        Capabilities::minimal(),
    );
    h.fault = Box::new(|from, ev| {
        if let (Side::Caller, Event::ImageData(d)) = (from, ev) {
            corrupt(d);
        }
        true
    });
    h.run();
    let c = h.outcome(Side::Caller);
    assert_eq!(
        c.result,
        Err(Failure::PageRejected { index: 0, tries: 3 }),
        "{:#?}",
        h.summary()
    );
    assert_eq!(c.pages, 0);
    assert_eq!(h.count_sent(Side::Answerer, frame::Fcf::Rtn), 3);
    assert_eq!(h.sent_fcfs(Side::Caller).last(), Some(&frame::Fcf::Dcn));
    let a = h.outcome(Side::Answerer);
    assert_eq!(a.result, Err(Failure::RemoteDisconnected));
    assert!(a.remote_ended_early);
    assert!(h.received.is_empty());
}

/// The receiver's MCF is lost: the caller repeats the post-page command
/// after T4 and the receiver repeats MCF without taking the page twice.
#[test]
fn lost_mcf_repeats_the_command_not_the_page() {
    for (lose, ecm) in [
        (0, false), // MCF to MPS
        (1, false), // MCF to EOP
        (0, true),  // MCF to PPS-MPS
        (1, true),  // MCF to PPS-EOP
    ] {
        let c = if ecm {
            Capabilities::all()
        } else {
            Capabilities::minimal()
        };
        let mut h = Harness::pair(2, Resolution::Standard, 1728, c.clone(), c);
        let mcfs = Rc::new(Cell::new(0));
        let m = mcfs.clone();
        h.fault = Box::new(move |from, ev| {
            if let (Side::Answerer, Event::Frame { bytes, .. }) = (from, &*ev)
                && frame::Frame::parse(bytes).unwrap().fcf == frame::Fcf::Mcf
            {
                m.set(m.get() + 1);
                return m.get() != lose + 1;
            }
            true
        });
        h.run();
        let name = format!("lose MCF #{lose}, ecm {ecm}: {:#?}", h.summary());
        assert_ok(h.outcome(Side::Caller), 2);
        assert_ok(h.outcome(Side::Answerer), 2);
        h.assert_pages_identical();
        assert_eq!(h.received.len(), 2, "{name}");
        let cmd = match (lose, ecm) {
            (0, false) => frame::Fcf::Mps,
            (1, false) => frame::Fcf::Eop,
            _ => frame::Fcf::Pps,
        };
        // The command whose MCF was lost went twice (ECM: three PPS in all).
        let want = if ecm { 3 } else { 2 };
        assert_eq!(h.count_sent(Side::Caller, cmd), want, "{name}");
        assert_eq!(h.count_sent(Side::Answerer, frame::Fcf::Mcf), 3, "{name}");
        // The repeat came after one T4.
        assert_eq!(h.elapsed(), Timers::default().t4, "{name}");
    }
}

/// A repeated DCS (its CFR lost) is answered again; a frame with a bad
/// FCS is ignored and the sender's repeat gets through.
#[test]
fn lost_cfr_and_bad_fcs_frames_are_recovered_by_repeats() {
    let mut h = Harness::pair(
        1,
        Resolution::Fine,
        1728,
        Capabilities::all(),
        Capabilities::all(),
    );
    let seen = Rc::new(Cell::new(0));
    let s = seen.clone();
    h.fault = Box::new(move |from, ev| {
        if let Event::Frame { bytes, fcs_ok } = ev {
            let fcf = frame::Frame::parse(bytes).unwrap().fcf;
            if from == Side::Caller && fcf == frame::Fcf::Dcs {
                s.set(s.get() + 1);
                // First DCS arrives damaged; the second one's CFR is lost.
                if s.get() == 1 {
                    *fcs_ok = false;
                }
            }
            if from == Side::Answerer && fcf == frame::Fcf::Cfr && s.get() == 2 {
                return false;
            }
        }
        true
    });
    h.run();
    assert_ok(h.outcome(Side::Caller), 1);
    assert_ok(h.outcome(Side::Answerer), 1);
    h.assert_pages_identical();
    assert_eq!(h.count_sent(Side::Caller, frame::Fcf::Dcs), 3);
    assert_eq!(h.count_sent(Side::Answerer, frame::Fcf::Cfr), 2);
    assert_eq!(h.elapsed(), Timers::default().t4 * 2);
}

// ---------------------------------------------------------------------------
// Timers.

fn drive_alone(
    t: &mut T30,
    start: Instant,
    limit: Duration,
) -> (Vec<(Duration, Action)>, Duration) {
    let mut now = start;
    let mut out = Vec::new();
    loop {
        while let Some(a) = t.poll_action() {
            out.push((now - start, a));
        }
        if t.is_finished() {
            return (out, now - start);
        }
        let next = t.poll_timeout().expect("a timer while not finished");
        assert!(next - start <= limit, "ran past {limit:?}");
        now = next;
        t.handle(Event::Timeout, now);
    }
}

fn finished(actions: &[(Duration, Action)]) -> &Outcome {
    match actions.last() {
        Some((_, Action::Finished(o))) => o,
        other => panic!("last action is not Finished: {other:?}"),
    }
}

#[test]
fn t1_answerer_repeats_dis_then_gives_up() {
    let start = Instant::now();
    let mut a = T30::new(answerer_config(Capabilities::all()), start).unwrap();
    let (actions, at) = drive_alone(&mut a, start, Duration::from_secs(40));
    assert_eq!(at, Duration::from_secs(35));
    assert_eq!(finished(&actions).result, Err(Failure::T1Expired));
    let dis_times: Vec<u64> = actions
        .iter()
        .filter(|(_, a)| matches!(a, Action::SendFrames(f) if f.last().unwrap()[2] == 0x80))
        .map(|(t, _)| t.as_secs())
        .collect();
    // At 0 s and every T4 (3 s) until T1 (35 s).
    assert_eq!(dis_times, (0..=33).step_by(3).collect::<Vec<u64>>());
}

#[test]
fn t1_caller_never_hears_dis() {
    let start = Instant::now();
    let cfg = caller_config(1, Resolution::Fine, 1728, Capabilities::all());
    let mut c = T30::new(cfg, start).unwrap();
    let (actions, at) = drive_alone(&mut c, start, Duration::from_secs(40));
    assert_eq!(at, Duration::from_secs(35));
    assert_eq!(actions.len(), 1, "nothing but Finished: {actions:?}");
    assert_eq!(finished(&actions).result, Err(Failure::T1Expired));
}

#[test]
fn t1_both_sides_when_the_answerer_is_deaf() {
    let mut h = Harness::pair(
        1,
        Resolution::Fine,
        1728,
        Capabilities::all(),
        Capabilities::all(),
    );
    // Nothing from the answerer reaches the caller.
    h.fault = Box::new(|from, _| from == Side::Caller);
    h.run();
    assert_eq!(h.outcome(Side::Caller).result, Err(Failure::T1Expired));
    assert_eq!(h.outcome(Side::Answerer).result, Err(Failure::T1Expired));
    assert_eq!(h.elapsed(), Duration::from_secs(35));
}

#[test]
fn t2_answerer_waits_for_a_page_that_never_comes() {
    let mut h = Harness::pair(
        1,
        Resolution::Fine,
        1728,
        Capabilities::all(),
        Capabilities::all(),
    );
    h.answer_need_page = false;
    h.run();
    let a = h.outcome(Side::Answerer);
    match &a.result {
        Err(Failure::T2Expired { waiting_for }) => {
            assert!(waiting_for.contains("page 1"), "{waiting_for}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(h.elapsed(), Timers::default().t2);
    assert_eq!(h.sent_fcfs(Side::Answerer).last(), Some(&frame::Fcf::Dcn));
    assert_eq!(
        h.outcome(Side::Caller).result,
        Err(Failure::RemoteDisconnected)
    );
}

#[test]
fn t4_retries_are_counted() {
    // (what to lose, expected command, expected time)
    let cases: &[(frame::Fcf, &str, bool)] = &[
        (frame::Fcf::Cfr, "DCS", false),
        (frame::Fcf::Mcf, "EOP", false),
        (frame::Fcf::Mcf, "PPS-EOP", true),
    ];
    for &(lose, command, ecm) in cases {
        let c = if ecm {
            Capabilities::all()
        } else {
            Capabilities::minimal()
        };
        let mut h = Harness::pair(1, Resolution::Standard, 1728, c.clone(), c);
        h.fault = Box::new(move |from, ev| match (from, &*ev) {
            (Side::Answerer, Event::Frame { bytes, .. }) => {
                frame::Frame::parse(bytes).unwrap().fcf != lose
            }
            _ => true,
        });
        h.run();
        let name = format!("{command}: {:#?}", h.summary());
        assert_eq!(
            h.outcome(Side::Caller).result,
            Err(Failure::T4Expired {
                command: command.into(),
                tries: 3
            }),
            "{name}"
        );
        assert_eq!(h.elapsed(), Timers::default().t4 * 3, "{name}");
        assert_eq!(h.sent_fcfs(Side::Caller).last(), Some(&frame::Fcf::Dcn));
        let a = h.outcome(Side::Answerer);
        if lose == frame::Fcf::Cfr {
            assert_eq!(a.result, Err(Failure::RemoteDisconnected), "{name}");
        } else {
            // The page was stored; the sender gave up on the confirmation.
            assert_eq!(a.result, Ok(()), "{name}");
            assert_eq!(a.pages, 1, "{name}");
        }
    }
}

#[test]
fn t4_with_short_timers_and_more_retries() {
    let timers = Timers {
        t1: Duration::from_millis(500),
        t2: Duration::from_millis(200),
        t4: Duration::from_millis(100),
        t5: Duration::from_secs(1),
        retries: 5,
    };
    let mut h = Harness::pair(
        1,
        Resolution::Standard,
        1728,
        Capabilities::minimal(),
        Capabilities::minimal(),
    );
    let mut cc = caller_config(1, Resolution::Standard, 1728, Capabilities::minimal());
    cc.timers = timers;
    let mut ac = answerer_config(Capabilities::minimal());
    ac.timers = timers;
    h.engines = [
        T30::new(cc, h.start).unwrap(),
        T30::new(ac, h.start).unwrap(),
    ];
    h.fault = Box::new(|from, ev| match (from, &*ev) {
        (Side::Answerer, Event::Frame { bytes, .. }) => {
            frame::Frame::parse(bytes).unwrap().fcf != frame::Fcf::Cfr
        }
        _ => true,
    });
    h.run();
    assert_eq!(
        h.outcome(Side::Caller).result,
        Err(Failure::T4Expired {
            command: "DCS".into(),
            tries: 5
        })
    );
    assert_eq!(h.elapsed(), Duration::from_millis(500));
    assert_eq!(h.count_sent(Side::Caller, frame::Fcf::Dcs), 5);
}

/// ECM receiver slower than T4: the repeated PPS gets RNR, the caller
/// polls with RR until the page is stored, then gets MCF.
#[test]
fn rnr_while_storing_then_mcf() {
    let mut h = Harness::pair(
        2,
        Resolution::Fine,
        1728,
        Capabilities::all(),
        Capabilities::all(),
    );
    h.store_delay = Duration::from_secs(5);
    h.run();
    assert_ok(h.outcome(Side::Caller), 2);
    assert_ok(h.outcome(Side::Answerer), 2);
    h.assert_pages_identical();
    assert!(
        h.count_sent(Side::Answerer, frame::Fcf::Rnr) >= 2,
        "{:#?}",
        h.summary()
    );
    assert!(h.count_sent(Side::Caller, frame::Fcf::Rr) >= 2);
    assert_eq!(h.received.len(), 2);
}

#[test]
fn t5_expires_when_the_receiver_stays_busy() {
    let mut h = Harness::pair(
        1,
        Resolution::Fine,
        1728,
        Capabilities::all(),
        Capabilities::all(),
    );
    h.store_delay = Duration::from_secs(300);
    h.run();
    assert_eq!(
        h.outcome(Side::Caller).result,
        Err(Failure::T5Expired),
        "{:#?}",
        h.summary()
    );
    // First RNR answers the PPS repeated after T4; T5 runs from there.
    let t = Timers::default();
    assert_eq!(h.outcome(Side::Caller).pages, 0);
    assert!(h.count_sent(Side::Caller, frame::Fcf::Rr) > 10);
    // The answerer had the whole page (EOP) and stores it after the DCN.
    let a = h.outcome(Side::Answerer);
    assert_eq!(
        (a.result.clone(), a.pages, a.remote_ended_early),
        (Ok(()), 1, false)
    );
    let caller_end = h
        .log
        .iter()
        .find(|(_, s, a)| *s == Side::Caller && matches!(a, Action::Finished(_)))
        .map(|(t, _, _)| *t)
        .unwrap();
    assert_eq!(caller_end, t.t4 + t.t5);
}

/// The receiver stores a page for longer than the caller waits (ECM: RNR
/// past T5; without ECM, where there is no RNR: past 3 x T4). A caller
/// that resumes the document in a later call hangs up without DCN, so the
/// receiver ends interrupted (an error: faxgate keeps the document open
/// for the resume) rather than Ok with `remote_ended_early` (a partial
/// document, printed and closed, which the resumed pages never reach).
#[test]
fn resumable_caller_hangs_up_without_dcn_so_a_slow_answerer_ends_interrupted() {
    for (ecm, failure) in [
        (true, Failure::T5Expired),
        (
            false,
            Failure::T4Expired {
                command: "MPS".into(),
                tries: 3,
            },
        ),
    ] {
        let c = if ecm {
            Capabilities::all()
        } else {
            Capabilities::minimal()
        };
        let mut h = Harness::pair(2, Resolution::Standard, 1728, c.clone(), c);
        h.engines[Side::Caller.idx()].set_resumable(true);
        h.store_delay = Duration::from_secs(300);
        // The session layer closes the stream once the caller has finished.
        h.hook = Box::new(|from, a| match (from, a) {
            (Side::Caller, Action::Finished(_)) => vec![(Side::Answerer, Event::Closed)],
            _ => Vec::new(),
        });
        h.run();
        let name = format!("ecm {ecm}: {:#?}", h.summary());
        let co = h.outcome(Side::Caller);
        assert_eq!((co.result.clone(), co.pages), (Err(failure), 0), "{name}");
        assert!(
            !h.sent_fcfs(Side::Caller).contains(&frame::Fcf::Dcn),
            "{name}"
        );
        let a = h.outcome(Side::Answerer);
        assert_eq!(
            (a.result.clone(), a.pages),
            (Err(Failure::TransportClosed), 1),
            "{name}"
        );
        assert_eq!(h.received.len(), 1, "{name}");
    }
}

/// DCN stays where the caller will not resume: when it is not resumable
/// (a sender's last attempt, another T.30 terminal) and when the user
/// cancelled while the page was on its way, even if the call then fails
/// on a timer. The receiver ends Ok with the stored page as a partial
/// document.
#[test]
fn resumable_caller_keeps_dcn_for_a_pending_cancel_and_when_not_resumable() {
    for (ecm, resumable, cancel, failure) in [
        (true, false, false, Failure::T5Expired),
        (
            false,
            true,
            true,
            Failure::T4Expired {
                command: "MPS".into(),
                tries: 3,
            },
        ),
    ] {
        let c = if ecm {
            Capabilities::all()
        } else {
            Capabilities::minimal()
        };
        let mut h = Harness::pair(2, Resolution::Standard, 1728, c.clone(), c);
        h.engines[Side::Caller.idx()].set_resumable(resumable);
        h.store_delay = Duration::from_secs(300);
        h.hook = Box::new(move |from, a| match (from, a) {
            (Side::Caller, Action::SendImage(_)) if cancel => vec![(Side::Caller, Event::Cancel)],
            _ => Vec::new(),
        });
        h.run();
        let name = format!("ecm {ecm}, resumable {resumable}: {:#?}", h.summary());
        let co = h.outcome(Side::Caller);
        assert_eq!((co.result.clone(), co.pages), (Err(failure), 0), "{name}");
        assert_eq!(
            h.sent_fcfs(Side::Caller).last(),
            Some(&frame::Fcf::Dcn),
            "{name}"
        );
        let a = h.outcome(Side::Answerer);
        assert_eq!(
            (a.result.clone(), a.pages, a.remote_ended_early),
            (Ok(()), 1, true),
            "{name}"
        );
    }
}

// ---------------------------------------------------------------------------
// Bad input, one engine at a time.

fn drain(t: &mut T30) -> Vec<Action> {
    std::iter::from_fn(|| t.poll_action()).collect()
}

fn last_frames(actions: &[Action]) -> Vec<Vec<u8>> {
    actions
        .iter()
        .rev()
        .find_map(|a| match a {
            Action::SendFrames(f) => Some(f.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

fn outcome_of(actions: &[Action]) -> Outcome {
    match actions.last() {
        Some(Action::Finished(o)) => o.clone(),
        other => panic!("not finished: {other:?}"),
    }
}

fn frame_ev(bytes: Vec<u8>) -> Event {
    Event::Frame {
        bytes,
        fcs_ok: true,
    }
}

fn dcs_frame(p: &Params) -> Vec<u8> {
    frame::build(frame::fcf::DCS | 1, &p.to_dcs_fif(), true)
}

#[test]
fn answerer_rejects_bad_commands_with_dcn() {
    let std_mh = Params {
        resolution: Resolution::Standard,
        width: 1728,
        coding: Coding::Mh,
        ecm: false,
    };
    let cases: Vec<(&str, Capabilities, Vec<u8>, Check)> = vec![
        (
            "unknown FCF",
            Capabilities::all(),
            vec![0xFF, 0x13, 0x56],
            Box::new(|f| matches!(f, Failure::UnexpectedFrame(s) if s.contains("0x56"))),
        ),
        (
            "DTC (polling)",
            Capabilities::all(),
            frame::build(frame::fcf::DTC, &[0, 0x2E, 0x78], true),
            Box::new(
                |f| matches!(f, Failure::UnexpectedFrame(s) if s.contains("DTC") && s.contains("0x81")),
            ),
        ),
        (
            "bad address",
            Capabilities::all(),
            vec![0x00, 0x13, 0x83, 0, 0, 0],
            Box::new(
                |f| matches!(f, Failure::InvalidFrame(s) if s.contains("0x83") && s.contains("address")),
            ),
        ),
        (
            "truncated DCS",
            Capabilities::all(),
            vec![0xFF, 0x13, 0x83, 0x00, 0x22],
            Box::new(
                |f| matches!(f, Failure::InvalidFrame(s) if s.contains("DCS") && s.contains("0x83")),
            ),
        ),
        (
            "DCS resolution not offered",
            Capabilities::minimal(),
            dcs_frame(&Params {
                resolution: Resolution::Fine,
                ..std_mh
            }),
            Box::new(|f| matches!(f, Failure::DcsNotOffered(s) if s.contains("resolution Fine"))),
        ),
        (
            "DCS width not offered",
            caps(&[Resolution::Fine], &[2048], true, false, false),
            dcs_frame(&Params {
                width: 2432,
                ..std_mh
            }),
            Box::new(|f| matches!(f, Failure::DcsNotOffered(s) if s.contains("2432"))),
        ),
        (
            "DCS MR not offered",
            Capabilities::minimal(),
            dcs_frame(&Params {
                coding: Coding::Mr { k: 2 },
                ..std_mh
            }),
            Box::new(|f| matches!(f, Failure::DcsNotOffered(s) if s.contains("MR"))),
        ),
        (
            "DCS MMR not offered",
            caps(&[], &[], true, false, true),
            dcs_frame(&Params {
                coding: Coding::Mmr,
                ecm: true,
                ..std_mh
            }),
            Box::new(|f| matches!(f, Failure::DcsNotOffered(s) if s.contains("MMR"))),
        ),
        (
            "DCS ECM not offered",
            caps(&[], &[], true, false, false),
            dcs_frame(&Params {
                ecm: true,
                ..std_mh
            }),
            Box::new(|f| matches!(f, Failure::DcsNotOffered(s) if s.contains("ECM"))),
        ),
        (
            // MMR is offered only with ECM, whatever the caps say.
            "DCS MMR when ECM is off",
            caps(&[], &[], true, true, false),
            dcs_frame(&Params {
                coding: Coding::Mmr,
                ecm: true,
                ..std_mh
            }),
            Box::new(|f| matches!(f, Failure::DcsNotOffered(_))),
        ),
        (
            "page command before DCS",
            Capabilities::all(),
            frame::build(frame::fcf::MPS | 1, &[], true),
            Box::new(
                |f| matches!(f, Failure::UnexpectedFrame(s) if s.contains("MPS") && s.contains("0x4F")),
            ),
        ),
    ];
    for (name, c, bytes, check) in cases {
        let now = Instant::now();
        let mut a = T30::new(answerer_config(c), now).unwrap();
        drain(&mut a);
        a.handle(frame_ev(bytes), now);
        let actions = drain(&mut a);
        let o = outcome_of(&actions);
        let failure = o.result.clone().unwrap_err();
        assert!(check(&failure), "{name}: {failure}");
        // DCN from the answerer: X bit clear.
        assert_eq!(
            last_frames(&actions),
            vec![vec![0xFF, 0x13, 0xFA]],
            "{name}"
        );
        assert!(a.is_finished());
        // Nothing happens after Finished.
        a.handle(Event::Timeout, now + Duration::from_secs(100));
        assert!(a.poll_action().is_none());
        assert!(a.poll_timeout().is_none());
    }
}

#[test]
fn answerer_ignores_frames_with_bad_fcs() {
    let now = Instant::now();
    let mut a = T30::new(answerer_config(Capabilities::all()), now).unwrap();
    drain(&mut a);
    a.handle(
        Event::Frame {
            bytes: vec![0xFF, 0x13, 0x56],
            fcs_ok: false,
        },
        now,
    );
    assert!(drain(&mut a).is_empty());
    assert!(!a.is_finished());
}

#[test]
fn caller_rejects_bad_dis() {
    let cases: Vec<(&str, Vec<Vec<u8>>, Check, u8)> = vec![
        (
            "truncated DIS",
            vec![vec![0xFF, 0x13, 0x80, 0x00, 0x2E]],
            Box::new(
                |f| matches!(f, Failure::InvalidFrame(s) if s.contains("DIS") && s.contains("0x80")),
            ),
            0xFA,
        ),
        (
            "not ready to receive",
            vec![frame::build(frame::fcf::DIS, &[0x00, 0x2C, 0x78], true)],
            Box::new(|f| matches!(f, Failure::Incompatible(s) if s.contains("bit 10"))),
            0xFB,
        ),
        (
            "unknown FCF",
            vec![vec![0xFF, 0x13, 0x0F]],
            Box::new(|f| matches!(f, Failure::UnexpectedFrame(s) if s.contains("0x0F"))),
            0xFA,
        ),
        (
            "MCF before anything",
            vec![vec![0xFF, 0x13, 0x8C]],
            Box::new(|f| matches!(f, Failure::UnexpectedFrame(s) if s.contains("MCF"))),
            0xFA,
        ),
    ];
    for (name, frames, check, dcn) in cases {
        let now = Instant::now();
        let mut c = T30::new(
            caller_config(1, Resolution::Fine, 1728, Capabilities::all()),
            now,
        )
        .unwrap();
        for f in frames {
            c.handle(frame_ev(f), now);
        }
        let actions = drain(&mut c);
        let o = outcome_of(&actions);
        assert!(
            check(o.result.as_ref().unwrap_err()),
            "{name}: {:?}",
            o.result
        );
        // DCN; X set once a valid DIS was received.
        assert_eq!(last_frames(&actions), vec![vec![0xFF, 0x13, dcn]], "{name}");
    }
}

#[test]
fn config_is_validated() {
    let now = Instant::now();
    let good = caller_config(1, Resolution::Fine, 1728, Capabilities::all());
    assert!(T30::new(good.clone(), now).is_ok());
    let bad: Vec<(&str, Config)> = vec![
        (
            "ident too long",
            Config {
                ident: "1".repeat(21),
                ..good.clone()
            },
        ),
        (
            "ident letters",
            Config {
                ident: "ACME".into(),
                ..good.clone()
            },
        ),
        (
            "nsf too long",
            Config {
                non_standard: Some(vec![0; 201]),
                ..good.clone()
            },
        ),
        (
            "percent",
            Config {
                max_bad_percent: 101,
                ..good.clone()
            },
        ),
        (
            "no retries",
            Config {
                timers: Timers {
                    retries: 0,
                    ..Timers::default()
                },
                ..good.clone()
            },
        ),
        (
            "zero pages",
            caller_config(0, Resolution::Fine, 1728, Capabilities::all()),
        ),
        (
            "odd width",
            caller_config(1, Resolution::R300, 1728, Capabilities::all()),
        ),
        (
            "caps width",
            Config {
                caps: caps(&[], &[2592], false, false, false),
                ..good.clone()
            },
        ),
    ];
    for (name, cfg) in bad {
        let err = T30::new(cfg, now).unwrap_err();
        assert!(!err.to_string().is_empty(), "{name}");
    }
    assert!(matches!(
        T30::new(
            Config {
                ident: "x".into(),
                ..good
            },
            now
        ),
        Err(t30::T30Error::InvalidIdent { .. })
    ));
}

// ---------------------------------------------------------------------------
// Cancel and transport loss.

#[test]
fn cancel_mid_document_keeps_whole_pages() {
    for ecm in [false, true] {
        let c = if ecm {
            Capabilities::all()
        } else {
            Capabilities::minimal()
        };
        let mut h = Harness::pair(3, Resolution::Standard, 1728, c.clone(), c);
        // The user cancels while page 2 (index 1) is on its way.
        let needed = Rc::new(Cell::new(0u32));
        let n = needed.clone();
        h.hook = Box::new(move |from, a| match (from, a) {
            (Side::Caller, Action::NeedPage { index, .. }) => {
                n.set(*index);
                Vec::new()
            }
            (Side::Caller, Action::SendImage(_) | Action::SendEcmFrames(_)) if n.get() == 1 => {
                vec![(Side::Caller, Event::Cancel)]
            }
            _ => Vec::new(),
        });
        h.run();
        let name = format!("ecm {ecm}: {:#?}", h.summary());
        let c = h.outcome(Side::Caller);
        assert_eq!(c.result, Err(Failure::Cancelled), "{name}");
        assert_eq!(c.pages, 2, "{name}");
        let a = h.outcome(Side::Answerer);
        assert_eq!(a.result, Ok(()), "{name}");
        assert!(a.remote_ended_early, "{name}");
        assert_eq!(a.pages, 2, "{name}");
        assert_eq!(h.received.len(), 2);
        assert_eq!(h.sent_fcfs(Side::Caller).last(), Some(&frame::Fcf::Dcn));
    }
}

#[test]
fn cancel_before_any_page() {
    let mut h = Harness::pair(
        2,
        Resolution::Standard,
        1728,
        Capabilities::all(),
        Capabilities::all(),
    );
    h.hook = Box::new(|from, a| match (from, a) {
        (Side::Caller, Action::Negotiated(_)) => vec![(Side::Caller, Event::Cancel)],
        _ => Vec::new(),
    });
    h.run();
    assert_eq!(h.outcome(Side::Caller).result, Err(Failure::Cancelled));
    assert_eq!(h.outcome(Side::Caller).pages, 0);
    let a = h.outcome(Side::Answerer);
    assert_eq!(a.result, Err(Failure::RemoteDisconnected));
    assert_eq!(a.pages, 0);
}

#[test]
fn closed_transport() {
    // Close both sides after the first page is stored.
    let mut h = Harness::pair(
        3,
        Resolution::Standard,
        1728,
        Capabilities::minimal(),
        Capabilities::minimal(),
    );
    h.hook = Box::new(|from, a| match (from, a) {
        (Side::Caller, Action::PageSent { index: 0, .. }) => {
            vec![
                (Side::Caller, Event::Closed),
                (Side::Answerer, Event::Closed),
            ]
        }
        _ => Vec::new(),
    });
    h.run();
    let c = h.outcome(Side::Caller);
    assert_eq!(
        (c.result.clone(), c.pages),
        (Err(Failure::TransportClosed), 1)
    );
    let a = h.outcome(Side::Answerer);
    assert_eq!(
        (a.result.clone(), a.pages),
        (Err(Failure::TransportClosed), 1)
    );
    assert!(a.remote_ended_early);
}

// ---------------------------------------------------------------------------
// ECM.

/// Frames lost or damaged in the first burst of each block come back
/// through PPR; the page is pixel-identical and crosses several blocks.
#[test]
fn ecm_ppr_resends_only_the_missing_frames() {
    let c = caps(&[Resolution::Fine], &[], true, true, true);
    let doc = vec![noise_page(1728, 400, 99), page(1728, 120, 5)];
    let mut h = Harness::new(
        caller_config(2, Resolution::Fine, 1728, c.clone()),
        answerer_config(c),
        doc,
        Resolution::Fine,
    );
    let rcps = Rc::new(Cell::new(0u32));
    let r = rcps.clone();
    h.fault = Box::new(move |from, ev| {
        if from != Side::Caller {
            return true;
        }
        if let Event::EcmFrame { bytes, fcs_ok } = ev {
            match frame::parse_ecm_frame(bytes) {
                Ok(frame::EcmFrame::Rcp) => r.set(r.get() + 1),
                Ok(frame::EcmFrame::Fcd { number, .. }) => {
                    // Bursts 0 (block 0), 2 (block 1) ... are first sends.
                    let burst = r.get() / 3;
                    if burst.is_multiple_of(2) {
                        if number % 5 == 2 {
                            *fcs_ok = false;
                        }
                        if number == 7 {
                            return false;
                        }
                    }
                }
                Err(e) => panic!("{e}"),
            }
        }
        true
    });
    h.run();
    assert_ok(h.outcome(Side::Caller), 2);
    assert_ok(h.outcome(Side::Answerer), 2);
    h.assert_pages_identical();
    let bursts: Vec<usize> = h
        .actions(Side::Caller)
        .filter_map(|a| match a {
            Action::SendEcmFrames(f) => Some(f.len() - 3),
            _ => None,
        })
        .collect();
    // Page 0 spans several blocks; every block is followed by a resend of
    // exactly its damaged frames: n%5==2 plus frame 7.
    let missing = |n: usize| (0..n).filter(|i| i % 5 == 2 || *i == 7).count();
    assert!(bursts.len() >= 6, "{bursts:?}");
    for pair in bursts.chunks(2) {
        assert_eq!(pair[1], missing(pair[0]), "{bursts:?}");
    }
    assert!(bursts[0] == 256, "the first block is full: {bursts:?}");
    assert_eq!(
        h.count_sent(Side::Answerer, frame::Fcf::Ppr),
        bursts.len() / 2
    );
    // The PPR map names the right frames.
    let ppr = h
        .wire
        .iter()
        .find(|(_, s, f)| *s == Side::Answerer && f[2] == frame::fcf::PPR)
        .map(|(_, _, f)| f.clone())
        .unwrap();
    let asked = frame::parse_ppr(&ppr[3..]).unwrap();
    assert_eq!(
        asked,
        (0..256)
            .filter(|i| i % 5 == 2 || *i == 7)
            .collect::<Vec<_>>()
    );
}

/// T.30 Annex A: a block whose frame 3 never arrives intact. The first
/// PPR confirms every other frame (progress), so after 4 PPRs the caller
/// sends CTC one modem slower; the 4 PPRs after CTR confirm nothing, so it
/// sends EOR-EOP, and the answerer's ERR completes the page, which both
/// sides record as having uncorrected errors.
#[test]
fn ecm_ppr_gives_way_to_ctc_then_eor_and_err_completes_the_page() {
    // MH, so that the lines after the missing frame decode again.
    let c = caps(&[Resolution::Fine], &[], false, false, true);
    let mut h = Harness::new(
        caller_config(1, Resolution::Fine, 1728, c.clone()),
        answerer_config(c),
        vec![noise_page(1728, 40, 11)],
        Resolution::Fine,
    );
    h.fault = Box::new(|from, ev| {
        if let (Side::Caller, Event::EcmFrame { bytes, fcs_ok }) = (from, ev)
            && bytes[2] == frame::fcf::FCD
            && bytes[3] == 3
        {
            *fcs_ok = false;
        }
        true
    });
    h.run();
    let log = h.summary();
    let caller = h.outcome(Side::Caller);
    assert_eq!((&caller.result, caller.pages), (&Ok(()), 1), "{log:#?}");
    assert_eq!(caller.uncorrected_pages, vec![0]);
    let answerer = h.outcome(Side::Answerer);
    assert_eq!((&answerer.result, answerer.pages), (&Ok(()), 1), "{log:#?}");
    assert_eq!(answerer.uncorrected_pages, vec![0]);
    assert!(
        h.actions(Side::Caller).any(|a| *a
            == Action::PageSent {
                index: 0,
                uncorrected: true
            }),
        "{log:#?}"
    );
    let fcfs: Vec<frame::Fcf> = h
        .sent_fcfs(Side::Caller)
        .into_iter()
        .filter(|f| matches!(f, frame::Fcf::Pps | frame::Fcf::Ctc | frame::Fcf::Eor))
        .collect();
    use frame::Fcf::{Ctc, Eor, Pps};
    assert_eq!(
        fcfs,
        [Pps, Pps, Pps, Pps, Ctc, Pps, Pps, Pps, Pps, Eor],
        "{log:#?}"
    );
    assert_eq!(h.count_sent(Side::Answerer, frame::Fcf::Ppr), 8);
    assert_eq!(h.count_sent(Side::Answerer, frame::Fcf::Ctr), 1);
    assert_eq!(h.count_sent(Side::Answerer, frame::Fcf::Err), 1);
    // CTC steps down one modem, and the answerer follows.
    let first = h.actions(Side::Caller).find_map(|a| match a {
        Action::SendFrames(f) => f
            .iter()
            .find(|f| frame::Frame::parse(f).unwrap().fcf == frame::Fcf::Dcs)
            .and_then(|f| frame::Modem::from_dcs(&f[3..])),
        _ => None,
    });
    let ctc = h
        .wire
        .iter()
        .find(|(_, s, f)| *s == Side::Caller && f[2] & 0xFE == frame::fcf::CTC)
        .map(|(_, _, f)| f.clone())
        .unwrap();
    let stepped = frame::parse_ctc(&ctc[3..]);
    let fallback = frame::Modem::FALLBACK;
    let at = |m| fallback.iter().position(|x| Some(*x) == m);
    assert_eq!(
        at(stepped),
        at(first).map(|i| i + 1),
        "{first:?} -> {stepped:?}"
    );
    assert_eq!(Some(h.engines[0].modem()), stepped);
    assert_eq!(Some(h.engines[1].modem()), stepped);
    // The EOR carries the page's post-page command.
    let eor = h
        .wire
        .iter()
        .find(|(_, s, f)| *s == Side::Caller && f[2] & 0xFE == frame::fcf::EOR)
        .map(|(_, _, f)| f.clone())
        .unwrap();
    assert_eq!(eor[3] & 0xFE, frame::fcf::EOP);
    // The page arrived with the lost frame's lines marked bad.
    let bad: u64 = h
        .actions(Side::Answerer)
        .filter_map(|a| match a {
            Action::PageReceived { bad_lines, .. } => Some(*bad_lines),
            _ => None,
        })
        .sum();
    assert!(bad > 0, "{log:#?}");
}

/// A frame that never arrives in a one-frame block: no PPR confirms
/// anything, so there is no CTC; EOR after 4 PPRs, and the page that is
/// left (nothing) cannot be decoded, so the answerer hangs up.
#[test]
fn ecm_ppr_without_progress_goes_straight_to_eor() {
    let mut h = Harness::pair(
        1,
        Resolution::Fine,
        1728,
        Capabilities::all(),
        Capabilities::all(),
    );
    h.fault = Box::new(|from, ev| {
        if let (Side::Caller, Event::EcmFrame { bytes, fcs_ok }) = (from, ev)
            && bytes[2] == frame::fcf::FCD
        {
            *fcs_ok = false;
        }
        true
    });
    h.run();
    assert_eq!(h.count_sent(Side::Answerer, frame::Fcf::Ppr), 4);
    assert_eq!(h.count_sent(Side::Caller, frame::Fcf::Ctc), 0);
    assert_eq!(h.count_sent(Side::Caller, frame::Fcf::Eor), 1);
    assert!(
        matches!(
            h.outcome(Side::Answerer).result,
            Err(Failure::BadPageData { index: 0, .. })
        ),
        "{:#?}",
        h.summary()
    );
    assert_eq!(
        h.outcome(Side::Caller).result,
        Err(Failure::RemoteDisconnected)
    );
}

/// The caller against a scripted answerer: CTC only with progress, at
/// most `retries` CTCs per block (then EOR even with progress), CTR
/// resends exactly what the last PPR asked for, and an RNR to EOR is
/// polled with RR until ERR.
#[test]
fn caller_ctc_is_capped_and_eor_waits_through_rnr() {
    let c = caps(&[], &[], false, false, true);
    let now = Instant::now();
    let mut t = T30::new(caller_config(1, Resolution::Standard, 1728, c.clone()), now).unwrap();
    t.handle(
        frame_ev(frame::build(frame::fcf::DIS, &c.to_dis_fif(), true)),
        now,
    );
    t.handle(simple(frame::fcf::CFR), now);
    let params = drain(&mut t)
        .into_iter()
        .find_map(|a| match a {
            Action::NeedPage { params, .. } => Some(params),
            _ => None,
        })
        .unwrap();
    let data = t30::encode_page(&noise_page(1728, 40, 5), &params).unwrap();
    let frames = data.len().div_ceil(256);
    assert!(frames > 20, "{frames} frames");
    t.handle(Event::Page(data), now);
    drain(&mut t);
    let ppr = |asked: &[usize]| {
        frame_ev(frame::build(
            frame::fcf::PPR,
            &frame::ppr_fif(asked.iter().copied()),
            true,
        ))
    };
    let burst_len = |actions: &[Action]| {
        actions.iter().find_map(|a| match a {
            Action::SendEcmFrames(f) => Some(f.len() - 3),
            _ => None,
        })
    };
    let mut modems = vec![t.modem()];
    // Each round of 4 PPRs lets one more frame through: progress.
    for round in 0..3 {
        for n in 0..4 {
            let asked: Vec<usize> = (round..10).collect();
            t.handle(ppr(&asked), now);
            let actions = drain(&mut t);
            if n < 3 {
                assert_eq!(burst_len(&actions), Some(asked.len()), "round {round}");
                continue;
            }
            assert_eq!(fcfs_of(&actions), [frame::Fcf::Ctc], "round {round}");
            let ctc = last_frames(&actions).pop().unwrap();
            assert_eq!(frame::parse_ctc(&ctc[3..]), Some(t.modem()));
            modems.push(t.modem());
            // CTR: the frames the last PPR named, then PPS.
            t.handle(simple(frame::fcf::CTR), now);
            let actions = drain(&mut t);
            assert_eq!(burst_len(&actions), Some(asked.len()));
            assert_eq!(fcfs_of(&actions), [frame::Fcf::Pps]);
        }
    }
    let fallback = frame::Modem::FALLBACK;
    let steps: Vec<usize> = modems
        .iter()
        .map(|m| fallback.iter().position(|x| x == m).unwrap())
        .collect();
    assert_eq!(steps, [0, 1, 2, 3], "one step per CTC: {modems:?}");
    // Three CTCs (retries) used up: the fourth round ends in EOR although
    // it made progress.
    for n in 0..4 {
        t.handle(ppr(&(3 + n..10).collect::<Vec<_>>()), now);
    }
    let actions = drain(&mut t);
    assert_eq!(fcfs_of(&actions).last(), Some(&frame::Fcf::Eor));
    let eor = last_frames(&actions).pop().unwrap();
    assert_eq!(eor[3] & 0xFE, frame::fcf::EOP);
    // RNR: RR after a pause, then ERR delivers the page.
    t.handle(simple(frame::fcf::RNR), now);
    assert!(drain(&mut t).is_empty());
    let later = t.poll_timeout().unwrap();
    t.handle(Event::Timeout, later);
    assert_eq!(fcfs_of(&drain(&mut t)), [frame::Fcf::Rr]);
    t.handle(simple(frame::fcf::ERR), later);
    let actions = drain(&mut t);
    assert!(
        actions.contains(&Action::PageSent {
            index: 0,
            uncorrected: true
        }),
        "{actions:?}"
    );
    let o = outcome_of(&actions);
    assert_eq!(
        (o.result, o.pages, o.uncorrected_pages),
        (Ok(()), 1, vec![0])
    );
}

/// CTR or ERR that answers nothing we sent is a protocol error.
#[test]
fn caller_rejects_ctr_and_err_out_of_turn() {
    for fcf_value in [frame::fcf::CTR, frame::fcf::ERR] {
        let (mut c, now, _) = caller_with_page_out(1, Capabilities::all());
        c.handle(simple(fcf_value), now);
        let o = outcome_of(&drain(&mut c));
        assert!(
            matches!(o.result, Err(Failure::UnexpectedFrame(_))),
            "0x{fcf_value:02X}: {o:?}"
        );
    }
}

/// A sender that never ends its ECM page (full block after full block,
/// each PPS-NULL answered MCF, which re-arms T2) cannot grow the page
/// past the answerer's page limit: the call fails instead.
#[test]
fn ecm_page_that_never_ends_fails_at_the_page_limit() {
    // The engine's MAX_PAGE_BYTES, as the non-ECM path also applies it.
    const LIMIT: usize = 64 << 20;
    const BLOCK: usize = 256 * 256;
    let now = Instant::now();
    let mut a = T30::new(answerer_config(Capabilities::all()), now).unwrap();
    drain(&mut a);
    let ecm_mh = Params {
        resolution: Resolution::Standard,
        width: 1728,
        coding: Coding::Mh,
        ecm: true,
    };
    a.handle(frame_ev(dcs_frame(&ecm_mh)), now);
    let cfr = last_frames(&drain(&mut a));
    assert!(
        cfr.iter().any(|f| f[2] & 0xFE == frame::fcf::CFR),
        "{cfr:02X?}"
    );
    let mut burst: Vec<Vec<u8>> = (0..=255u8)
        .map(|n| frame::fcd_frame(n, &[0x55; 256]))
        .collect();
    burst.push(frame::rcp_frame());
    let mut ended = None;
    // One block more than the limit holds.
    for block in 0..=LIMIT / BLOCK {
        for f in &burst {
            a.handle(
                Event::EcmFrame {
                    bytes: f.clone(),
                    fcs_ok: true,
                },
                now,
            );
        }
        let pps = frame::Pps {
            ppm: frame::fcf::NULL,
            page: 0,
            block: block as u8,
            frames: 256,
        };
        a.handle(
            frame_ev(frame::build(frame::fcf::PPS | 1, &pps.to_fif(), true)),
            now,
        );
        let actions = drain(&mut a);
        if a.is_finished() {
            ended = Some((block, outcome_of(&actions), last_frames(&actions)));
            break;
        }
        let resp = last_frames(&actions);
        assert!(
            resp.len() == 1 && resp[0][2] & 0xFE == frame::fcf::MCF,
            "block {block}: {resp:02X?}"
        );
    }
    let (block, outcome, frames) =
        ended.expect("the answerer kept growing the page past the limit");
    assert_eq!(block, LIMIT / BLOCK, "every block within the limit is kept");
    let failure = outcome.result.unwrap_err();
    assert!(
        matches!(&failure, Failure::InvalidFrame(_))
            && failure
                .to_string()
                .contains(&format!("page 1 exceeded {LIMIT} bytes")),
        "{failure}"
    );
    assert_eq!(outcome.pages, 0);
    assert_eq!(frames, vec![vec![0xFF, 0x13, 0xFA]], "DCN");
    assert!(a.poll_timeout().is_none());
}

// ---------------------------------------------------------------------------
// EOM (another document follows) on the receiving side, scripted by hand.

#[test]
fn answerer_returns_to_phase_b_after_eom() {
    let now = Instant::now();
    let mut a = T30::new(answerer_config(Capabilities::minimal()), now).unwrap();
    drain(&mut a);
    let p = Params {
        resolution: Resolution::Standard,
        width: 1728,
        coding: Coding::Mh,
        ecm: false,
    };
    let img = page(1728, 30, 3);
    let data = t30::encode_page(&img, &p).unwrap();
    a.handle(frame_ev(dcs_frame(&p)), now);
    a.handle(Event::ImageData(data), now);
    a.handle(Event::ImageEnd, now);
    a.handle(frame_ev(frame::build(frame::fcf::EOM | 1, &[], true)), now);
    let actions = drain(&mut a);
    assert!(
        actions
            .iter()
            .any(|x| matches!(x, Action::PageReceived { index: 0, page, .. } if *page == img))
    );
    a.handle(Event::PageStored, now);
    let actions = drain(&mut a);
    // MCF, then a fresh NSF/CSI/DIS burst for the next document.
    let bursts: Vec<Vec<u8>> = actions
        .iter()
        .filter_map(|x| match x {
            Action::SendFrames(f) => Some(f.iter().map(|f| f[2]).collect()),
            _ => None,
        })
        .collect();
    assert_eq!(bursts, vec![vec![0x8C], vec![0x20, 0x40, 0x80]]);
    // T1 runs again: with no second DCS the call ends there, but the first
    // document was complete.
    a.handle(frame_ev(vec![0xFF, 0x13, 0xFB]), now);
    let o = outcome_of(&drain(&mut a));
    assert_eq!(
        (o.result, o.pages, o.remote_ended_early),
        (Ok(()), 1, false)
    );
}

// ---------------------------------------------------------------------------
// Robustness: arbitrary input never panics and the action stream stays
// well formed (for the session layer and the fuzzers built on it).

mod arbitrary_input {
    use super::*;
    use proptest::prelude::*;

    const FCFS: &[u8] = &[
        0x80, 0x40, 0x20, 0x81, 0x82, 0x83, 0x42, 0x43, 0x22, 0x23, 0x84, 0x85, 0x44, 0x4E, 0x4F,
        0x2E, 0x2F, 0x8E, 0x8F, 0x5E, 0x3F, 0xBE, 0xBF, 0x6E, 0x6F, 0x8C, 0x8D, 0xCC, 0x4C, 0x4D,
        0xAC, 0x2C, 0xBC, 0xBD, 0xEC, 0xED, 0xFA, 0xFB, 0x1A, 0x12, 0xCE, 0x00, 0x06, 0x86, 0x56,
    ];

    fn event() -> impl Strategy<Value = Event> {
        let frame = (
            prop::sample::select(FCFS),
            any::<bool>(),
            prop::collection::vec(any::<u8>(), 0..40),
            any::<bool>(),
        )
            .prop_map(|(fcf, fin, fif, fcs_ok)| Event::Frame {
                bytes: frame::build(fcf, &fif, fin),
                fcs_ok,
            });
        let raw = (prop::collection::vec(any::<u8>(), 0..8), any::<bool>())
            .prop_map(|(bytes, fcs_ok)| Event::Frame { bytes, fcs_ok });
        let fcd = (
            any::<u8>(),
            prop::collection::vec(any::<u8>(), 0..300),
            any::<bool>(),
        )
            .prop_map(|(n, d, fcs_ok)| Event::EcmFrame {
                bytes: frame::fcd_frame(n, &d),
                fcs_ok,
            });
        prop_oneof![
            6 => frame,
            1 => raw,
            2 => fcd,
            1 => Just(Event::EcmFrame { bytes: frame::rcp_frame(), fcs_ok: true }),
            2 => prop::collection::vec(any::<u8>(), 0..200).prop_map(Event::ImageData),
            1 => Just(Event::ImageEnd),
            1 => prop::collection::vec(any::<u8>(), 0..200).prop_map(Event::Page),
            1 => Just(Event::PageStored),
            1 => any::<bool>().prop_map(|ok| Event::Training { ok }),
            1 => Just(Event::Timeout),
            1 => Just(Event::Cancel),
        ]
    }

    fn check_stream(actions: &[Action], finished_before: bool) {
        if finished_before {
            assert!(actions.is_empty(), "actions after Finished: {actions:?}");
        }
        let finals = actions
            .iter()
            .filter(|a| matches!(a, Action::Finished(_)))
            .count();
        assert!(finals <= 1);
        if finals == 1 {
            assert!(matches!(actions.last(), Some(Action::Finished(_))));
        }
        // TCF goes only right after a burst ending in DCS.
        dcs_and_tcf(actions);
        for a in actions {
            if let Action::SendFrames(frames) = a {
                assert!(!frames.is_empty());
                for (i, f) in frames.iter().enumerate() {
                    let p = frame::Frame::parse(f).unwrap();
                    assert_eq!(p.final_frame, i + 1 == frames.len(), "{frames:?}");
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn engines_survive_arbitrary_events(
            caller in any::<bool>(),
            prime in any::<bool>(),
            ecm in any::<bool>(),
            training in any::<bool>(),
            events in prop::collection::vec((event(), 0u64..4000), 0..60),
        ) {
            let start = Instant::now();
            let c = if ecm { Capabilities::all() } else { Capabilities::minimal() };
            let cfg = if caller {
                caller_config(2, Resolution::Standard, 1728, c.clone())
            } else {
                answerer_config(c.clone())
            };
            let cfg = Config { training, ..cfg };
            let mut t = T30::new(cfg, start).unwrap();
            let mut now = start;
            let mut finished = false;
            let first = drain(&mut t);
            check_stream(&first, false);
            // Optionally get past phase B so that random input reaches
            // the later states.
            if prime {
                let f = if caller {
                    frame::build(frame::fcf::DIS, &c.to_dis_fif(), true)
                } else {
                    let p = Params {
                        resolution: Resolution::Standard,
                        width: 1728,
                        coding: Coding::Mh,
                        ecm,
                    };
                    dcs_frame(&p)
                };
                t.handle(frame_ev(f), now);
                if caller {
                    t.handle(frame_ev(vec![0xFF, 0x13, 0x84]), now);
                }
                let a = drain(&mut t);
                check_stream(&a, false);
                finished = a.iter().any(|x| matches!(x, Action::Finished(_)));
            }
            for (ev, dt) in events {
                now += Duration::from_millis(dt);
                t.handle(ev, now);
                let a = drain(&mut t);
                check_stream(&a, finished);
                finished |= a.iter().any(|x| matches!(x, Action::Finished(_)));
                prop_assert_eq!(finished, t.is_finished());
                if finished {
                    prop_assert!(t.poll_timeout().is_none());
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Repeats and late responses around a page being stored or sent.

fn simple(fcf_value: u8) -> Event {
    frame_ev(frame::build(fcf_value, &[], true))
}

/// FCFs (X bit masked) of every frame the actions send.
fn fcfs_of(actions: &[Action]) -> Vec<frame::Fcf> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::SendFrames(f) => Some(f),
            _ => None,
        })
        .flatten()
        .map(|f| frame::Frame::parse(f).unwrap().fcf)
        .collect()
}

/// Feeds one ECM block holding `data` (one coded page of at most 256
/// frames, MSB first) as FCD frames in HDLC bit order, then RCP.
fn feed_ecm_block(a: &mut T30, data: &[u8], now: Instant) {
    feed_ecm_block_skipping(a, data, None, now);
}

/// As [`feed_ecm_block`], leaving out frame `skip` (a frame lost on the
/// way).
fn feed_ecm_block_skipping(a: &mut T30, data: &[u8], skip: Option<usize>, now: Instant) {
    for (i, chunk) in data.chunks(256).enumerate() {
        if Some(i) == skip {
            continue;
        }
        let d: Vec<u8> = chunk.iter().map(|b| b.reverse_bits()).collect();
        a.handle(
            Event::EcmFrame {
                bytes: frame::fcd_frame(i as u8, &d),
                fcs_ok: true,
            },
            now,
        );
    }
    a.handle(
        Event::EcmFrame {
            bytes: frame::rcp_frame(),
            fcs_ok: true,
        },
        now,
    );
}

/// The PPS (from the caller, X bit set) for a block holding `data`.
fn pps_ev(ppm: u8, page: u8, block: u8, data: &[u8]) -> Event {
    let pps = frame::Pps {
        ppm,
        page,
        block,
        frames: data.len().div_ceil(256).max(1) as u16,
    };
    frame_ev(frame::build(frame::fcf::PPS | 1, &pps.to_fif(), true))
}

/// An answerer past DCS (CFR drained) for `params`.
fn answerer_after_dcs(caps: Capabilities, params: &Params) -> (T30, Instant) {
    let now = Instant::now();
    let mut a = T30::new(answerer_config(caps), now).unwrap();
    a.handle(frame_ev(dcs_frame(params)), now);
    drain(&mut a);
    (a, now)
}

const ECM_MH: Params = Params {
    resolution: Resolution::Standard,
    width: 1728,
    coding: Coding::Mh,
    ecm: true,
};

/// ECM has no RTN (spandsp's sender hangs up on it, ours would resend the
/// same error-free data): a page with damaged lines is confirmed with its
/// bad-line count, and one that yields no line at all ends the call with
/// DCN and BadPageData.
#[test]
fn ecm_receiver_never_answers_rtn() {
    // Damaged coding: MH resynchronises at each EOL, so lines decode.
    let mut damaged = t30::encode_page(&page(1728, 60, 4), &ECM_MH).unwrap();
    corrupt(&mut damaged);
    let (mut a, now) = answerer_after_dcs(Capabilities::all(), &ECM_MH);
    feed_ecm_block(&mut a, &damaged, now);
    a.handle(pps_ev(frame::fcf::EOP | 1, 0, 0, &damaged), now);
    let actions = drain(&mut a);
    assert!(!fcfs_of(&actions).contains(&frame::Fcf::Rtn), "{actions:?}");
    let bad = actions.iter().find_map(|x| match x {
        Action::PageReceived {
            index: 0,
            bad_lines,
            lines,
            ..
        } => Some((*bad_lines, *lines)),
        _ => None,
    });
    let (bad_lines, lines) = bad.unwrap_or_else(|| panic!("no PageReceived: {actions:?}"));
    assert!(
        bad_lines * 100 > lines * 5,
        "not beyond the RTN policy: {bad_lines}/{lines}"
    );
    a.handle(Event::PageStored, now);
    assert_eq!(fcfs_of(&drain(&mut a)), vec![frame::Fcf::Mcf]);

    // Nothing decodes: no RTN, DCN with a reason.
    let garbage = vec![0u8; 600];
    let (mut a, now) = answerer_after_dcs(Capabilities::all(), &ECM_MH);
    feed_ecm_block(&mut a, &garbage, now);
    a.handle(pps_ev(frame::fcf::EOP | 1, 0, 0, &garbage), now);
    let actions = drain(&mut a);
    assert_eq!(fcfs_of(&actions), vec![frame::Fcf::Dcn], "{actions:?}");
    let o = outcome_of(&actions);
    assert!(
        matches!(&o.result, Err(Failure::BadPageData { index: 0, .. })),
        "{o:?}"
    );
    assert!(
        !actions
            .iter()
            .any(|x| matches!(x, Action::PageDiscarded { .. }))
    );
}

const ECM_MMR: Params = Params {
    resolution: Resolution::Standard,
    width: 1728,
    coding: Coding::Mmr,
    ecm: true,
};

/// A page cut short in ECM (MMR has no EOL to resynchronise at) is not
/// confirmed: MCF would tell the sender that a truncated page was
/// delivered, and the frames passed their FCS, so sending them again
/// cannot help. The call ends with BadPageData naming the cause.
#[test]
fn ecm_receiver_does_not_confirm_a_truncated_page() {
    let cases: [(&str, Vec<u8>, &str); 2] = [
        // 80,008 V0 lines: past the 80,000-line limit (TooLong).
        ("too long", vec![0xFF; 10_001], "passes 80000 lines"),
        // One V0 line, then seven zeros and a one: no MMR code (and too
        // few zeros for EOFB), so line 2 is Undecodable. (Zeros alone to
        // the end of the data are not: they end it, EndOfData.)
        (
            "undecodable",
            vec![0x80, 0x80, 0, 0],
            "decoding stops at line 2,",
        ),
    ];
    for (name, data, cause) in cases {
        let (mut a, now) = answerer_after_dcs(Capabilities::all(), &ECM_MMR);
        feed_ecm_block(&mut a, &data, now);
        a.handle(pps_ev(frame::fcf::EOP | 1, 0, 0, &data), now);
        let actions = drain(&mut a);
        assert!(
            !actions
                .iter()
                .any(|x| matches!(x, Action::PageReceived { .. })),
            "{name}: {actions:?}"
        );
        assert_eq!(fcfs_of(&actions), vec![frame::Fcf::Dcn], "{name}");
        let o = outcome_of(&actions);
        match &o.result {
            Err(f @ Failure::BadPageData { index: 0, reason }) => {
                assert!(reason.contains(cause), "{name}: {f}");
            }
            other => panic!("{name}: {other:?}"),
        }
        assert_eq!(o.pages, 0, "{name}");
    }
}

/// An FCD frame without data is malformed: a peer that completes block
/// after block (PPS-NULL) with one empty frame each adds no image data,
/// and must not hold the call open on MCFs that restart every loop count.
#[test]
fn ecm_empty_frames_do_not_keep_the_answerer_looping() {
    let (mut a, now) = answerer_after_dcs(Capabilities::all(), &ECM_MH);
    let mut mcfs = 0;
    let mut rounds = 0;
    let mut last = Vec::new();
    for round in 0..10_000u32 {
        rounds = round + 1;
        for bytes in [frame::fcd_frame(0, &[]), frame::rcp_frame()] {
            a.handle(
                Event::EcmFrame {
                    bytes,
                    fcs_ok: true,
                },
                now,
            );
        }
        // Block counter of the next block, as if each MCF took one.
        a.handle(pps_ev(frame::fcf::NULL, 0, mcfs as u8, &[]), now);
        last = drain(&mut a);
        mcfs += fcfs_of(&last)
            .iter()
            .filter(|&&f| f == frame::Fcf::Mcf)
            .count();
        if a.is_finished() {
            break;
        }
    }
    assert!(a.is_finished(), "still going after {rounds} rounds");
    assert_eq!(mcfs, 0, "an empty block was confirmed");
    assert!(rounds < 100, "{rounds} rounds");
    let o = outcome_of(&last);
    assert!(matches!(&o.result, Err(Failure::NoProgress(_))), "{o:?}");
}

/// RTP answers a post-page command; after PPS-NULL (blocks of the page
/// still to come) T.30 Annex A allows MCF, PPR or RNR only. The page must
/// not be reported sent without its later blocks: the call ends instead
/// (as spandsp does). RTP to the page's last PPS still ends the page.
#[test]
fn caller_rtp_to_pps_null_does_not_report_the_page_sent() {
    let now = Instant::now();
    let caps = Capabilities::all();
    let start = |pages| {
        let (mut c, params) = caller_at_page_0(pages, caps.clone(), now);
        assert!(params.ecm, "{params:?}");
        // Two blocks: 256 full frames, then 44 more.
        c.handle(Event::Page(vec![0x55; 300 * 256]), now);
        let sent = drain(&mut c);
        assert!(sent.iter().any(|x| matches!(x, Action::SendEcmFrames(_))));
        c
    };
    let page_sent =
        |actions: &[Action]| actions.iter().any(|x| matches!(x, Action::PageSent { .. }));

    let mut c = start(2);
    c.handle(simple(frame::fcf::RTP), now);
    let actions = drain(&mut c);
    assert!(!page_sent(&actions), "{actions:?}");
    assert!(c.is_finished(), "{actions:?}");
    let o = outcome_of(&actions);
    assert_eq!(o.pages, 0);
    assert!(
        matches!(&o.result, Err(Failure::UnexpectedFrame(m)) if m.contains("PPS-NULL")),
        "{o:?}"
    );

    // MCF to PPS-NULL sends block 1; RTP to its PPS-MPS ends the page.
    let mut c = start(2);
    c.handle(simple(frame::fcf::MCF), now);
    let actions = drain(&mut c);
    assert!(!page_sent(&actions), "{actions:?}");
    assert!(
        actions
            .iter()
            .any(|x| matches!(x, Action::SendEcmFrames(_)))
    );
    c.handle(simple(frame::fcf::RTP), now);
    let actions = drain(&mut c);
    assert!(page_sent(&actions), "{actions:?}");
    assert_eq!(fcfs_of(&actions).last(), Some(&frame::Fcf::Dcs));
}

/// The params of the NeedPage for page 0 among `actions`; panics if the
/// page was not asked for.
fn need_page_0(actions: Vec<Action>) -> Params {
    actions
        .into_iter()
        .find_map(|a| match a {
            Action::NeedPage { index: 0, params } => Some(params),
            _ => None,
        })
        .expect("NeedPage")
}

/// A caller past DIS and CFR that asked for page 0: returns it and the
/// page's params.
fn caller_at_page_0(pages: u32, caps: Capabilities, now: Instant) -> (T30, Params) {
    let mut c = T30::new(
        caller_config(pages, Resolution::Standard, 1728, caps.clone()),
        now,
    )
    .unwrap();
    c.handle(
        frame_ev(frame::build(frame::fcf::DIS, &caps.to_dis_fif(), true)),
        now,
    );
    c.handle(simple(frame::fcf::CFR), now);
    let params = need_page_0(drain(&mut c));
    (c, params)
}

/// A caller past DIS and CFR with page 0 sent: returns it, the time, and
/// the actions of sending the page.
fn caller_with_page_out(pages: u32, caps: Capabilities) -> (T30, Instant, Vec<Action>) {
    let now = Instant::now();
    let (mut c, params) = caller_at_page_0(pages, caps, now);
    let data = t30::encode_page(&page(1728, 30, 1), &params).unwrap();
    c.handle(Event::Page(data), now);
    let actions = drain(&mut c);
    (c, now, actions)
}

/// After RTP the caller sends DCS again; a late copy of the RTP (or an
/// MCF, or an RTN) that arrives before CFR is a stale duplicate and must
/// neither end the call nor count for anything.
#[test]
fn caller_ignores_a_stale_response_while_waiting_for_cfr() {
    let (mut c, now, _) = caller_with_page_out(2, Capabilities::minimal());
    c.handle(simple(frame::fcf::RTP), now);
    let actions = drain(&mut c);
    assert!(
        actions.contains(&Action::PageSent {
            index: 0,
            uncorrected: false
        }),
        "{actions:?}"
    );
    assert_eq!(fcfs_of(&actions).last(), Some(&frame::Fcf::Dcs));
    for stale in [frame::fcf::RTP, frame::fcf::MCF, frame::fcf::RTN] {
        c.handle(simple(stale), now);
        let actions = drain(&mut c);
        assert!(actions.is_empty(), "0x{stale:02X}: {actions:?}");
        assert!(!c.is_finished());
    }
    c.handle(simple(frame::fcf::CFR), now);
    let actions = drain(&mut c);
    assert!(
        matches!(actions[..], [Action::NeedPage { index: 1, .. }]),
        "{actions:?}"
    );
}

/// T4 runs from the moment the session reports the burst written
/// (Event::Sent), not from when the page was queued: a page that takes
/// longer than T4 to leave is not followed by an immediate repeat.
#[test]
fn t4_restarts_when_the_burst_is_reported_sent() {
    let t4 = Timers::default().t4;
    for caps in [Capabilities::minimal(), Capabilities::all()] {
        let (mut c, now, _) = caller_with_page_out(1, caps.clone());
        assert_eq!(c.poll_timeout(), Some(now + t4), "queued: {caps:?}");
        let out = now + Duration::from_secs(20);
        c.handle(Event::Sent, out);
        assert_eq!(c.poll_timeout(), Some(out + t4), "sent: {caps:?}");
        // The old deadline has no effect any more.
        c.handle(Event::Timeout, now + t4);
        assert!(drain(&mut c).is_empty());
        // A second report (nothing new was queued) changes nothing.
        c.handle(Event::Sent, out + Duration::from_secs(1));
        assert_eq!(c.poll_timeout(), Some(out + t4));
        c.handle(Event::Timeout, out + t4);
        let repeat = fcfs_of(&drain(&mut c));
        let want = if caps.ecm {
            frame::Fcf::Pps
        } else {
            frame::Fcf::Eop
        };
        assert_eq!(repeat, vec![want]);
    }
}

/// An answerer that has the page but not yet PageStored: a CRP (repeat
/// your response) must not repeat the previous response (CFR, or the
/// last page's MCF, which the sender would credit to this page). ECM
/// says RNR; non-ECM stays silent until MCF.
#[test]
fn crp_while_storing_does_not_repeat_an_old_response() {
    for ecm in [false, true] {
        let now = Instant::now();
        let caps = if ecm {
            Capabilities::all()
        } else {
            Capabilities::minimal()
        };
        let mut a = T30::new(answerer_config(caps), now).unwrap();
        drain(&mut a);
        let p = Params {
            resolution: Resolution::Standard,
            width: 1728,
            coding: Coding::Mh,
            ecm,
        };
        a.handle(frame_ev(dcs_frame(&p)), now);
        let data = t30::encode_page(&page(1728, 30, 3), &p).unwrap();
        if ecm {
            feed_ecm_block(&mut a, &data, now);
            a.handle(pps_ev(frame::fcf::MPS | 1, 0, 0, &data), now);
        } else {
            a.handle(Event::ImageData(data), now);
            a.handle(Event::ImageEnd, now);
            a.handle(simple(frame::fcf::MPS | 1), now);
        }
        let actions = drain(&mut a);
        assert!(
            actions
                .iter()
                .any(|x| matches!(x, Action::PageReceived { index: 0, .. })),
            "ecm {ecm}: {actions:?}"
        );
        a.handle(simple(frame::fcf::CRP | 1), now);
        let sent = fcfs_of(&drain(&mut a));
        let want = if ecm { vec![frame::Fcf::Rnr] } else { vec![] };
        assert_eq!(sent, want, "ecm {ecm}");
        a.handle(Event::PageStored, now);
        let sent = fcfs_of(&drain(&mut a));
        // Non-ECM: MCF at once; ECM: MCF waits for RR after the RNR.
        let want = if ecm { vec![] } else { vec![frame::Fcf::Mcf] };
        assert_eq!(sent, want, "ecm {ecm}");
    }
}

/// PPS counters (T.30 Annex A): a PPS must name the block being received.
/// The PPS confirmed last, repeated (our MCF was lost), gets MCF again and
/// nothing it brings is committed twice; any other page/block ends the
/// call with DCN, its frames never put into the current block. The
/// post-page octet is read with the X bit masked (PPS-NULL as 0x01).
#[test]
fn ecm_pps_counters_are_checked() {
    let img = page(1728, 60, 4);
    let coded = t30::encode_page(&img, &ECM_MH).unwrap();
    let (first, second) = coded.split_at(512);
    let null_x = frame::fcf::NULL | 1;

    // Block 0 with PPS-NULL as 0x01, repeated twice (once with its frames
    // again), then block 1 with PPS-EOP: the page is the original.
    let (mut a, now) = answerer_after_dcs(Capabilities::all(), &ECM_MH);
    feed_ecm_block(&mut a, first, now);
    a.handle(pps_ev(null_x, 0, 0, first), now);
    assert_eq!(fcfs_of(&drain(&mut a)), vec![frame::Fcf::Mcf]);
    a.handle(pps_ev(null_x, 0, 0, first), now);
    assert_eq!(
        fcfs_of(&drain(&mut a)),
        vec![frame::Fcf::Mcf],
        "bare repeat"
    );
    feed_ecm_block(&mut a, first, now);
    a.handle(pps_ev(null_x, 0, 0, first), now);
    assert_eq!(
        fcfs_of(&drain(&mut a)),
        vec![frame::Fcf::Mcf],
        "with frames"
    );
    feed_ecm_block(&mut a, second, now);
    a.handle(pps_ev(frame::fcf::EOP | 1, 0, 1, second), now);
    let actions = drain(&mut a);
    let got = actions.iter().find_map(|x| match x {
        Action::PageReceived { index: 0, page, .. } => Some(page.clone()),
        _ => None,
    });
    assert!(got == Some(img.clone()), "the page differs: {actions:?}");

    // Other counters: DCN, nothing committed.
    for (name, page_no, block) in [
        ("a later block", 0u8, 5u8),
        ("another page", 3, 1),
        ("the block before the last confirmed", 0, 255),
    ] {
        let (mut a, now) = answerer_after_dcs(Capabilities::all(), &ECM_MH);
        feed_ecm_block(&mut a, first, now);
        a.handle(pps_ev(frame::fcf::NULL, 0, 0, first), now);
        assert_eq!(fcfs_of(&drain(&mut a)), vec![frame::Fcf::Mcf], "{name}");
        feed_ecm_block(&mut a, second, now);
        a.handle(pps_ev(frame::fcf::EOP | 1, page_no, block, second), now);
        let actions = drain(&mut a);
        assert_eq!(
            fcfs_of(&actions),
            vec![frame::Fcf::Dcn],
            "{name}: {actions:?}"
        );
        let o = outcome_of(&actions);
        assert!(
            matches!(&o.result, Err(Failure::UnexpectedFrame(s))
                if s.contains("PPS") && s.contains("page 1 block 1 was expected")),
            "{name}: {o:?}"
        );
        assert!(
            !actions
                .iter()
                .any(|x| matches!(x, Action::PageReceived { .. })),
            "{name}"
        );
    }
}

/// CRP while the answerer waits for DCS asks for DIS again: the DIS burst
/// goes out and its repeat timer (T4) restarts. Neither a CRP nor an RR
/// there may stop the DIS repeats (they used to take the T4 timer away,
/// leaving the answerer silent until T1).
#[test]
fn crp_in_phase_b_repeats_dis_and_keeps_its_timer() {
    let t4 = Timers::default().t4;
    let start = Instant::now();
    let mut a = T30::new(answerer_config(Capabilities::all()), start).unwrap();
    drain(&mut a);
    let now = start + Duration::from_secs(1);
    a.handle(simple(frame::fcf::CRP | 1), now);
    let sent = fcfs_of(&drain(&mut a));
    assert_eq!(
        sent,
        vec![frame::Fcf::Nsf, frame::Fcf::Csi, frame::Fcf::Dis],
        "CRP"
    );
    assert_eq!(a.poll_timeout(), Some(now + t4));
    // The DIS repeat still runs on T4 after that.
    a.handle(Event::Timeout, now + t4);
    assert_eq!(fcfs_of(&drain(&mut a)).last(), Some(&frame::Fcf::Dis));
    assert_eq!(a.poll_timeout(), Some(now + t4 * 2));
}

/// EOM confirmed, back in phase B: a repeat of EOM (or PPS-EOM, or RR)
/// before any DCS means our MCF was lost, and gets MCF again instead of
/// DCN; the DIS repeat keeps its timer. The next document then follows.
#[test]
fn repeated_eom_after_a_lost_mcf_gets_mcf_again() {
    let t4 = Timers::default().t4;
    for ecm in [false, true] {
        let p = Params { ecm, ..ECM_MH };
        let caps = Capabilities::all();
        let (mut a, start) = answerer_after_dcs(caps, &p);
        let data = t30::encode_page(&page(1728, 30, 3), &p).unwrap();
        let eom = if ecm {
            feed_ecm_block(&mut a, &data, start);
            pps_ev(frame::fcf::EOM | 1, 0, 0, &data)
        } else {
            a.handle(Event::ImageData(data.clone()), start);
            a.handle(Event::ImageEnd, start);
            simple(frame::fcf::EOM | 1)
        };
        a.handle(eom.clone(), start);
        drain(&mut a);
        a.handle(Event::PageStored, start);
        let sent = fcfs_of(&drain(&mut a));
        assert_eq!(sent.first(), Some(&frame::Fcf::Mcf), "ecm {ecm}");
        assert_eq!(sent.last(), Some(&frame::Fcf::Dis), "ecm {ecm}");
        let dis_repeat = start + t4;
        assert_eq!(a.poll_timeout(), Some(dis_repeat));
        // The MCF was lost: EOM again, then RR (an ECM sender after RNR).
        let later = start + Duration::from_secs(1);
        for (name, ev) in [("EOM", eom.clone()), ("RR", simple(frame::fcf::RR | 1))] {
            a.handle(ev, later);
            let actions = drain(&mut a);
            assert_eq!(
                fcfs_of(&actions),
                vec![frame::Fcf::Mcf],
                "ecm {ecm}, {name}: {actions:?}"
            );
            assert!(!a.is_finished());
            assert_eq!(a.poll_timeout(), Some(dis_repeat), "ecm {ecm}, {name}");
        }
        // The next document: DCS, a page, EOP.
        a.handle(frame_ev(dcs_frame(&p)), later);
        assert_eq!(fcfs_of(&drain(&mut a)), vec![frame::Fcf::Cfr]);
        if ecm {
            feed_ecm_block(&mut a, &data, later);
            a.handle(pps_ev(frame::fcf::EOP | 1, 1, 0, &data), later);
        } else {
            a.handle(Event::ImageData(data.clone()), later);
            a.handle(Event::ImageEnd, later);
            a.handle(simple(frame::fcf::EOP | 1), later);
        }
        assert!(
            drain(&mut a)
                .iter()
                .any(|x| matches!(x, Action::PageReceived { index: 1, .. })),
            "ecm {ecm}"
        );
        a.handle(Event::PageStored, later);
        a.handle(simple(frame::fcf::DCN | 1), later);
        let o = outcome_of(&drain(&mut a));
        assert_eq!((o.result, o.pages), (Ok(()), 2), "ecm {ecm}");
    }
}

// ---------------------------------------------------------------------------
// A hostile sender cannot keep the answerer in a loop.

/// 50 rounds of DCS, a page that does not decode, EOP: the answerer says
/// RTN `retries` times (as many as a sender may try a page) and ends the
/// call with DCN at the next bad copy, instead of looping for ever.
#[test]
fn rtn_loop_ends_at_the_cap() {
    let p = Params {
        ecm: false,
        ..ECM_MH
    };
    let now = Instant::now();
    let mut a = T30::new(answerer_config(Capabilities::minimal()), now).unwrap();
    drain(&mut a);
    let mut rtns = 0;
    let mut rounds = 0;
    for _ in 0..50 {
        rounds += 1;
        a.handle(frame_ev(dcs_frame(&p)), now);
        a.handle(Event::ImageData(vec![0x00; 300]), now);
        a.handle(Event::ImageEnd, now);
        a.handle(simple(frame::fcf::EOP | 1), now);
        let actions = drain(&mut a);
        rtns += fcfs_of(&actions)
            .iter()
            .filter(|f| **f == frame::Fcf::Rtn)
            .count();
        if a.is_finished() {
            assert_eq!(fcfs_of(&actions).last(), Some(&frame::Fcf::Dcn));
            let o = outcome_of(&actions);
            assert_eq!(
                o.result,
                Err(Failure::PageRejected { index: 0, tries: 4 }),
                "{o:?}"
            );
            break;
        }
    }
    assert!(a.is_finished(), "still receiving after {rounds} rounds");
    assert_eq!((rounds, rtns), (4, 3));
}

/// Loops a peer can drive with commands alone (each answer restarting T2)
/// end with DCN and NoProgress once past their caps: RR and CRP after a
/// page, the same EOP after MCF, DCS again and again, PPS for frames that
/// never come (PPR), CTC.
#[test]
fn command_loops_end_at_their_caps() {
    type Prime = Box<dyn Fn(&mut T30, Instant)>;
    let non_ecm = Params {
        ecm: false,
        ..ECM_MH
    };
    let img = t30::encode_page(&page(1728, 30, 3), &non_ecm).unwrap();
    // A page confirmed with MCF (MPS, or EOP: then waiting for DCN).
    let confirmed = |ppm: u8| -> Prime {
        let img = img.clone();
        Box::new(move |a, now| {
            a.handle(Event::ImageData(img.clone()), now);
            a.handle(Event::ImageEnd, now);
            a.handle(simple(ppm | 1), now);
            a.handle(Event::PageStored, now);
        })
    };
    let nothing: fn() -> Prime = || Box::new(|_, _| {});
    let two_frames = frame::Pps {
        ppm: frame::fcf::EOP | 1,
        page: 0,
        block: 0,
        frames: 2,
    };
    let pps_no_frames = frame_ev(frame::build(
        frame::fcf::PPS | 1,
        &two_frames.to_fif(),
        true,
    ));
    // (name, ecm, prime, the event repeated, answers before the cap)
    let cases: Vec<(&str, bool, Prime, Event, usize)> = vec![
        (
            "RR",
            false,
            confirmed(frame::fcf::MPS),
            simple(frame::fcf::RR | 1),
            12,
        ),
        (
            "CRP",
            false,
            confirmed(frame::fcf::MPS),
            simple(frame::fcf::CRP | 1),
            12,
        ),
        (
            "EOP after MCF",
            false,
            confirmed(frame::fcf::EOP),
            simple(frame::fcf::EOP | 1),
            12,
        ),
        ("DCS", false, nothing(), frame_ev(dcs_frame(&non_ecm)), 12),
        ("PPR", true, nothing(), pps_no_frames, 16),
        ("CTC", true, nothing(), simple(frame::fcf::CTC | 1), 3),
    ];
    for (name, ecm, prime, ev, cap) in cases {
        let p = Params { ecm, ..ECM_MH };
        let (mut a, now) = answerer_after_dcs(Capabilities::all(), &p);
        prime(&mut a, now);
        drain(&mut a);
        let mut answered = 0;
        for _ in 0..50 {
            a.handle(ev.clone(), now);
            let actions = drain(&mut a);
            if a.is_finished() {
                assert_eq!(fcfs_of(&actions).last(), Some(&frame::Fcf::Dcn), "{name}");
                let o = outcome_of(&actions);
                assert!(
                    matches!(&o.result, Err(Failure::NoProgress(_))),
                    "{name}: {o:?}"
                );
                break;
            }
            assert!(!fcfs_of(&actions).is_empty(), "{name}: no answer");
            answered += 1;
        }
        assert!(a.is_finished(), "{name}: still going after 50");
        assert_eq!(answered, cap, "{name}");
    }
}

/// EOR (the sender gives up correcting a block) is answered with ERR and
/// the block is taken as it is: EOR-NULL mid-page, then the rest of the
/// page; EOR-EOP ends the page, whose ERR waits for the store. A repeated
/// EOR (our ERR lost) gets ERR again.
#[test]
fn eor_is_answered_with_err_and_the_block_kept() {
    let img = page(1728, 200, 4);
    let coded = t30::encode_page(&img, &ECM_MH).unwrap();
    assert!(coded.len() > 4 * 256, "{} octets", coded.len());
    let (block0, block1) = coded.split_at(3 * 256);
    let eor = |ppm: u8| frame_ev(frame::build(frame::fcf::EOR | 1, &[ppm], true));

    // EOR-NULL for block 0 (frame 1 never came), then block 1 with EOP.
    let (mut a, now) = answerer_after_dcs(Capabilities::all(), &ECM_MH);
    feed_ecm_block_skipping(&mut a, block0, Some(1), now);
    a.handle(pps_ev(frame::fcf::NULL, 0, 0, block0), now);
    assert_eq!(fcfs_of(&drain(&mut a)), vec![frame::Fcf::Ppr]);
    a.handle(eor(frame::fcf::NULL | 1), now);
    assert_eq!(fcfs_of(&drain(&mut a)), vec![frame::Fcf::Err]);
    a.handle(eor(frame::fcf::NULL | 1), now);
    assert_eq!(fcfs_of(&drain(&mut a)), vec![frame::Fcf::Err], "repeat");
    feed_ecm_block(&mut a, block1, now);
    a.handle(pps_ev(frame::fcf::EOP | 1, 0, 1, block1), now);
    let actions = drain(&mut a);
    let lines = actions.iter().find_map(|x| match x {
        Action::PageReceived {
            index: 0, lines, ..
        } => Some(*lines),
        _ => None,
    });
    assert!(lines.is_some_and(|l| l > 0), "{actions:?}");
    a.handle(Event::PageStored, now);
    assert_eq!(fcfs_of(&drain(&mut a)), vec![frame::Fcf::Mcf]);

    // EOR-EOP ends the page: ERR once it is stored, and again on a repeat.
    let (mut a, now) = answerer_after_dcs(Capabilities::all(), &ECM_MH);
    feed_ecm_block_skipping(&mut a, &coded, Some(1), now);
    a.handle(pps_ev(frame::fcf::EOP | 1, 0, 0, &coded), now);
    assert_eq!(fcfs_of(&drain(&mut a)), vec![frame::Fcf::Ppr]);
    a.handle(eor(frame::fcf::EOP | 1), now);
    let actions = drain(&mut a);
    assert!(fcfs_of(&actions).is_empty(), "{actions:?}");
    assert!(
        actions
            .iter()
            .any(|x| matches!(x, Action::PageReceived { index: 0, .. })),
        "{actions:?}"
    );
    a.handle(Event::PageStored, now);
    assert_eq!(fcfs_of(&drain(&mut a)), vec![frame::Fcf::Err]);
    a.handle(eor(frame::fcf::EOP | 1), now);
    assert_eq!(fcfs_of(&drain(&mut a)), vec![frame::Fcf::Err], "repeat");
    a.handle(simple(frame::fcf::DCN | 1), now);
    let o = outcome_of(&drain(&mut a));
    assert_eq!(
        (o.result, o.pages, o.remote_ended_early),
        (Ok(()), 1, false)
    );
}

// ---------------------------------------------------------------------------
// DCS modem and minimum scan line time.

/// A DIS that offers V.29 and V.27 ter only and asks for a 20 ms minimum
/// scan line time: DCS selects V.29 9600 and declares 20 ms, the page goes
/// with fill to at least 9600 x 20 ms = 192 bits per line, and every FTT
/// steps down (V.29 7200, V.27 ter 4800, 2400) until there is nothing
/// slower, when the call fails as incompatible.
#[test]
fn dcs_follows_the_dis_modems_and_scan_time_and_steps_down_on_ftt() {
    let clear = |fif: &mut Vec<u8>, n: u32| fif[(n as usize - 1) / 8] &= !(1 << ((n - 1) % 8));
    let mut dis = Capabilities::minimal().to_dis_fif();
    clear(&mut dis, frame::BIT_MODEM_4);
    for b in 21..=23 {
        clear(&mut dis, b);
    }
    let now = Instant::now();
    let mut c = T30::new(
        caller_config(1, Resolution::Standard, 1728, Capabilities::minimal()),
        now,
    )
    .unwrap();
    c.handle(frame_ev(frame::build(frame::fcf::DIS, &dis, true)), now);
    let dcs_of = |actions: &[Action]| -> Vec<u8> {
        let f = last_frames(actions);
        let dcs = f.last().unwrap();
        assert_eq!(frame::Frame::parse(dcs).unwrap().fcf, frame::Fcf::Dcs);
        dcs[3..].to_vec()
    };
    let dcs = dcs_of(&drain(&mut c));
    assert_eq!(frame::Modem::from_dcs(&dcs), Some(frame::Modem::V29_9600));
    assert_eq!(c.modem(), frame::Modem::V29_9600);
    // Bits 21-23 clear: 20 ms.
    assert_eq!((dcs[2] >> 4) & 7, 0, "{dcs:02X?}");

    // The page after CFR has the fill.
    c.handle(simple(frame::fcf::CFR), now);
    let params = drain(&mut c)
        .into_iter()
        .find_map(|a| match a {
            Action::NeedPage { params, .. } => Some(params),
            _ => None,
        })
        .unwrap();
    let img = page(1728, 80, 2);
    let plain = t30::encode_page(&img, &params).unwrap();
    c.handle(Event::Page(plain.clone()), now);
    let sent = drain(&mut c)
        .into_iter()
        .find_map(|a| match a {
            Action::SendImage(d) => Some(d),
            _ => None,
        })
        .unwrap();
    assert!(
        sent.len() * 8 >= 80 * 192,
        "{} octets for 80 lines of at least 192 bits (unpadded: {})",
        sent.len(),
        plain.len()
    );
    let (back, _) = faxgate_fax::Bitmap::decode(
        &sent,
        faxgate_fax::DecoderOptions::wire(params.coding, params.width),
    )
    .unwrap();
    assert!(back == img, "the padded page decodes to the page");

    // FTT steps down through what the DIS permits, then gives up.
    let (mut c, now) = {
        let now = Instant::now();
        let mut c = T30::new(
            caller_config(1, Resolution::Standard, 1728, Capabilities::minimal()),
            now,
        )
        .unwrap();
        c.handle(frame_ev(frame::build(frame::fcf::DIS, &dis, true)), now);
        drain(&mut c);
        (c, now)
    };
    for want in [
        frame::Modem::V29_7200,
        frame::Modem::V27ter4800,
        frame::Modem::V27ter2400,
    ] {
        c.handle(simple(frame::fcf::FTT), now);
        let dcs = dcs_of(&drain(&mut c));
        assert_eq!(frame::Modem::from_dcs(&dcs), Some(want));
        assert_eq!(c.modem(), want);
    }
    c.handle(simple(frame::fcf::FTT), now);
    let o = outcome_of(&drain(&mut c));
    assert!(
        matches!(&o.result, Err(Failure::Incompatible(s)) if s.contains("2400")),
        "{o:?}"
    );
}

// ---------------------------------------------------------------------------
// The training check (TCF) on a line that carries it (a modem line).

fn with_training(cfg: Config) -> Config {
    Config {
        training: true,
        ..cfg
    }
}

/// The modem of the DCS that ends `a`, if `a` is a burst ending in DCS.
fn dcs_modem_of(a: &Action) -> Option<frame::Modem> {
    let Action::SendFrames(f) = a else {
        return None;
    };
    let last = frame::Frame::parse(f.last()?).ok()?;
    if last.fcf != frame::Fcf::Dcs {
        return None;
    }
    frame::Modem::from_dcs(last.fif)
}

/// Each DCS burst in `actions` with its modem and that of the
/// SendTraining right after it (None without one). Panics on a
/// SendTraining anywhere else.
fn dcs_and_tcf<'a>(
    actions: impl IntoIterator<Item = &'a Action>,
) -> Vec<(frame::Modem, Option<frame::Modem>)> {
    let actions: Vec<&Action> = actions.into_iter().collect();
    let mut out = Vec::new();
    for (i, a) in actions.iter().enumerate() {
        if let Action::SendTraining { .. } = a {
            let after_dcs = i > 0 && dcs_modem_of(actions[i - 1]).is_some();
            assert!(after_dcs, "SendTraining at {i} does not follow a DCS");
        } else if let Some(m) = dcs_modem_of(a) {
            let tcf = match actions.get(i + 1) {
                Some(Action::SendTraining { modem }) => Some(*modem),
                _ => None,
            };
            out.push((m, tcf));
        }
    }
    out
}

/// The modems of the answerer's ReceiveTraining actions.
fn tcf_checks<'a>(actions: impl IntoIterator<Item = &'a Action>) -> Vec<frame::Modem> {
    actions
        .into_iter()
        .filter_map(|a| match a {
            Action::ReceiveTraining { modem } => Some(*modem),
            _ => None,
        })
        .collect()
}

fn training_ev(ok: bool) -> Event {
    Event::Training { ok }
}

/// With training, TCF at the DCS's modem follows every DCS the caller
/// sends: the first, a repeat on T4 or CRP, the one after FTT (one modem
/// slower), and the retrains after RTN and RTP. T4 for CFR runs from the
/// Sent that follows the TCF.
#[test]
fn caller_with_training_sends_tcf_after_every_dcs() {
    use frame::Modem::*;
    let t4 = Timers::default().t4;
    let mut now = Instant::now();
    let caps = Capabilities::minimal();
    let cfg = with_training(caller_config(2, Resolution::Standard, 1728, caps.clone()));
    let mut c = T30::new(cfg, now).unwrap();
    c.handle(
        frame_ev(frame::build(frame::fcf::DIS, &caps.to_dis_fif(), true)),
        now,
    );
    assert_eq!(dcs_and_tcf(&drain(&mut c)), [(V17_14400, Some(V17_14400))]);
    // The TCF takes 1.5 s; T4 starts again once it is out.
    now += Duration::from_millis(1500);
    c.handle(Event::Sent, now);
    assert_eq!(c.poll_timeout(), Some(now + t4));

    // No CFR: DCS and TCF again on T4, and on CRP.
    now += t4;
    c.handle(Event::Timeout, now);
    assert_eq!(dcs_and_tcf(&drain(&mut c)), [(V17_14400, Some(V17_14400))]);
    c.handle(simple(frame::fcf::CRP), now);
    assert_eq!(dcs_and_tcf(&drain(&mut c)), [(V17_14400, Some(V17_14400))]);

    // FTT: one modem slower, with TCF at that modem.
    c.handle(simple(frame::fcf::FTT), now);
    assert_eq!(dcs_and_tcf(&drain(&mut c)), [(V17_12000, Some(V17_12000))]);
    assert_eq!(c.modem(), V17_12000);

    // CFR, page 0, RTN: the retrain DCS has its TCF too.
    c.handle(simple(frame::fcf::CFR), now);
    let params = need_page_0(drain(&mut c));
    let data = t30::encode_page(&page(1728, 30, 1), &params).unwrap();
    c.handle(Event::Page(data), now);
    assert_eq!(dcs_and_tcf(&drain(&mut c)), []);
    c.handle(simple(frame::fcf::RTN), now);
    assert_eq!(dcs_and_tcf(&drain(&mut c)), [(V17_9600, Some(V17_9600))]);

    // CFR, page 0 again, RTP: delivered, and the retrain for page 1 too.
    c.handle(simple(frame::fcf::CFR), now);
    assert_eq!(dcs_and_tcf(&drain(&mut c)), []);
    c.handle(simple(frame::fcf::RTP), now);
    let actions = drain(&mut c);
    assert!(actions.contains(&Action::PageSent {
        index: 0,
        uncorrected: false
    }));
    assert_eq!(dcs_and_tcf(&actions), [(V29_9600, Some(V29_9600))]);
}

/// With training, the answerer has the TCF after each DCS checked before
/// it answers: FTT for a failed check (and it waits for DCS again), CFR
/// for a good one. A DCS repeated after CFR is checked again; a result
/// nobody asked for is ignored.
#[test]
fn answerer_with_training_answers_cfr_or_ftt_by_the_check() {
    use frame::Modem::*;
    let now = Instant::now();
    let mut a = T30::new(with_training(answerer_config(Capabilities::all())), now).unwrap();
    drain(&mut a);
    let p = MH_STANDARD;
    let dcs_at = |m: frame::Modem| dcs_at(&p, m);

    // DCS: the parameters, and a check at its modem; no answer yet.
    a.handle(dcs_at(V17_14400), now);
    let actions = drain(&mut a);
    assert!(actions.contains(&Action::Negotiated(p)), "{actions:?}");
    assert_eq!(tcf_checks(&actions), [V17_14400]);
    assert_eq!(fcfs_of(&actions), []);
    assert_eq!(a.modem(), V17_14400);

    // A failed check: FTT, and nothing else.
    a.handle(training_ev(false), now);
    let actions = drain(&mut a);
    assert_eq!(fcfs_of(&actions), [frame::Fcf::Ftt]);
    assert_eq!(actions.len(), 1, "{actions:?}");

    // The caller steps down: checked again at the new modem, then CFR.
    a.handle(dcs_at(V17_12000), now);
    let actions = drain(&mut a);
    assert_eq!(tcf_checks(&actions), [V17_12000]);
    assert_eq!(fcfs_of(&actions), []);
    a.handle(training_ev(true), now);
    assert_eq!(fcfs_of(&drain(&mut a)), [frame::Fcf::Cfr]);
    // A result now answers nothing.
    a.handle(training_ev(false), now);
    assert_eq!(drain(&mut a), []);

    // Our CFR was lost: the DCS again comes with TCF again.
    a.handle(dcs_at(V17_12000), now);
    let actions = drain(&mut a);
    assert_eq!(tcf_checks(&actions), [V17_12000]);
    assert_eq!(fcfs_of(&actions), []);
    a.handle(training_ev(true), now);
    assert_eq!(fcfs_of(&drain(&mut a)), [frame::Fcf::Cfr]);

    // The page follows as without training.
    let img = page(1728, 40, 3);
    a.handle(Event::ImageData(t30::encode_page(&img, &p).unwrap()), now);
    a.handle(Event::ImageEnd, now);
    a.handle(simple(frame::fcf::EOP | 1), now);
    let got = drain(&mut a)
        .into_iter()
        .find_map(|x| match x {
            Action::PageReceived { index: 0, page, .. } => Some(page),
            _ => None,
        })
        .expect("PageReceived");
    assert!(got == img);
    a.handle(Event::PageStored, now);
    assert_eq!(fcfs_of(&drain(&mut a)), [frame::Fcf::Mcf]);
}

/// No result within T2 is a failed check (FTT); the DCS after FTT has
/// its own T2.
#[test]
fn answerer_training_without_a_result_is_a_failed_check() {
    let t2 = Timers::default().t2;
    let start = Instant::now();
    let mut a = T30::new(with_training(answerer_config(Capabilities::all())), start).unwrap();
    drain(&mut a);
    a.handle(frame_ev(dcs_frame(&ECM_MH)), start);
    assert_eq!(tcf_checks(&drain(&mut a)), [frame::Modem::V17_14400]);
    assert_eq!(a.poll_timeout(), Some(start + t2));
    a.handle(Event::Timeout, start + t2);
    assert_eq!(fcfs_of(&drain(&mut a)), [frame::Fcf::Ftt]);
    assert_eq!(a.poll_timeout(), Some(start + t2 * 2));
    a.handle(Event::Timeout, start + t2 * 2);
    let actions = drain(&mut a);
    assert_eq!(fcfs_of(&actions), [frame::Fcf::Dcn]);
    assert!(
        matches!(
            &outcome_of(&actions).result,
            Err(Failure::T2Expired { waiting_for }) if waiting_for == "DCS after FTT"
        ),
        "{actions:?}"
    );
}

/// A caller that never trains, or that repeats DCS without waiting for
/// the check, cannot hold the answerer: FTT at most once per speed a
/// sender can step down through plus `retries` times per page, and DCS
/// repeated within the repeat cap; then DCN.
#[test]
fn answerer_training_loops_are_capped() {
    let retries = Timers::default().retries;
    let cap = frame::Modem::FALLBACK.len() + retries as usize;
    let now = Instant::now();
    let mut a = T30::new(with_training(answerer_config(Capabilities::all())), now).unwrap();
    let mut sent = fcfs_of(&drain(&mut a));
    for _ in 0..=cap {
        a.handle(frame_ev(dcs_frame(&ECM_MH)), now);
        a.handle(training_ev(false), now);
        sent.extend(fcfs_of(&drain(&mut a)));
    }
    let ftts = sent.iter().filter(|f| **f == frame::Fcf::Ftt).count();
    assert_eq!(ftts, cap, "{sent:?}");
    assert_eq!(sent.last(), Some(&frame::Fcf::Dcn), "{sent:?}");
    assert!(a.is_finished());

    // DCS again and again while the check is on: the repeat cap.
    let mut a = T30::new(with_training(answerer_config(Capabilities::all())), now).unwrap();
    drain(&mut a);
    let mut checks = 0;
    let mut last = Vec::new();
    for _ in 0..100 {
        a.handle(frame_ev(dcs_frame(&ECM_MH)), now);
        last = drain(&mut a);
        checks += tcf_checks(&last).len();
        if a.is_finished() {
            break;
        }
    }
    assert_eq!(checks, 1 + 4 * retries as usize);
    assert_eq!(fcfs_of(&last), [frame::Fcf::Dcn]);
    assert!(matches!(
        outcome_of(&last).result,
        Err(Failure::NoProgress(_))
    ));
}

/// Both sides with training over a line that trains only at 9600 bit/s
/// and below: the caller steps down at each FTT with TCF at every DCS,
/// the answerer checks each at the DCS's modem, and the page arrives.
#[test]
fn training_on_both_sides_steps_down_until_the_line_trains() {
    use frame::Modem::*;
    let caps = Capabilities::minimal();
    let doc = vec![page(1728, 60, 1), page(1728, 70, 2)];
    let mut h = Harness::new(
        with_training(caller_config(2, Resolution::Standard, 1728, caps.clone())),
        with_training(answerer_config(caps)),
        doc,
        Resolution::Standard,
    );
    h.hook = Box::new(|from, action| match (from, action) {
        (Side::Answerer, Action::ReceiveTraining { modem }) => {
            vec![(Side::Answerer, training_ev(modem.bit_rate() <= 9600))]
        }
        _ => Vec::new(),
    });
    h.run();
    assert_ok(h.outcome(Side::Caller), 2);
    assert_ok(h.outcome(Side::Answerer), 2);
    h.assert_pages_identical();
    let trained = [V17_14400, V17_12000, V17_9600];
    let sent: Vec<_> = trained.iter().map(|m| (*m, Some(*m))).collect();
    assert_eq!(dcs_and_tcf(h.actions(Side::Caller)), sent);
    assert_eq!(tcf_checks(h.actions(Side::Answerer)), trained);
    assert_eq!(tcf_checks(h.actions(Side::Caller)), []);
    assert_eq!(dcs_and_tcf(h.actions(Side::Answerer)), []);
    assert_eq!(h.count_sent(Side::Answerer, frame::Fcf::Ftt), 2);
    assert_eq!(h.count_sent(Side::Answerer, frame::Fcf::Cfr), 1);
}

/// Without training (T.38 over TCP) neither side ever asks for TCF, even
/// in a call with a repeated DCS (its CFR lost) and a retrain after RTN.
#[test]
fn without_training_no_tcf_is_sent_or_checked() {
    let mut h = Harness::pair(
        2,
        Resolution::Standard,
        1728,
        Capabilities::minimal(),
        Capabilities::minimal(),
    );
    let cfrs = Rc::new(Cell::new(0));
    let pages = Rc::new(Cell::new(0));
    let (c, p) = (cfrs.clone(), pages.clone());
    h.fault = Box::new(move |from, ev| match (from, ev) {
        (Side::Answerer, Event::Frame { bytes, .. })
            if frame::Frame::parse(bytes).unwrap().fcf == frame::Fcf::Cfr =>
        {
            c.set(c.get() + 1);
            c.get() != 1
        }
        (Side::Caller, Event::ImageData(d)) => {
            if p.get() == 0 {
                corrupt(d);
            }
            true
        }
        (Side::Caller, Event::ImageEnd) => {
            p.set(p.get() + 1);
            true
        }
        _ => true,
    });
    h.run();
    assert_ok(h.outcome(Side::Caller), 2);
    assert_ok(h.outcome(Side::Answerer), 2);
    h.assert_pages_identical();
    assert_eq!(h.count_sent(Side::Caller, frame::Fcf::Dcs), 3);
    assert_eq!(h.count_sent(Side::Answerer, frame::Fcf::Rtn), 1);
    let tcf: Vec<&Action> = h
        .log
        .iter()
        .map(|(_, _, a)| a)
        .filter(|a| {
            matches!(
                a,
                Action::SendTraining { .. } | Action::ReceiveTraining { .. }
            )
        })
        .collect();
    assert_eq!(tcf, Vec::<&Action>::new(), "{:#?}", h.summary());
}

// ---------------------------------------------------------------------------
// The local modem's limits (`Capabilities::modems`).

/// `Capabilities::minimal()` limited to `modems`.
fn with_modems(modems: &[frame::Modem]) -> Capabilities {
    Capabilities {
        modems: modems.to_vec(),
        ..Capabilities::minimal()
    }
}

/// The DIS FIF of the first DIS in `actions`.
fn dis_of<'a>(actions: impl IntoIterator<Item = &'a Action>) -> Vec<u8> {
    actions
        .into_iter()
        .filter_map(|a| match a {
            Action::SendFrames(f) => Some(f),
            _ => None,
        })
        .flatten()
        .find_map(|f| {
            let f = frame::Frame::parse(f).unwrap();
            (f.fcf == frame::Fcf::Dis).then(|| f.fif.to_vec())
        })
        .expect("a DIS")
}

/// A caller whose modem has V.29 and V.27 ter only answers a DIS that
/// offers V.17 with DCS at V.29 9600, not V.17 14400.
#[test]
fn caller_limited_to_v29_and_v27ter_sends_dcs_at_v29_to_a_v17_dis() {
    use frame::Modem::*;
    let dis = Capabilities::minimal().to_dis_fif();
    assert_eq!(frame::Modem::permitted_by_dis(&dis).unwrap()[0], V17_14400);
    let now = Instant::now();
    let caps = with_modems(&[V29_9600, V29_7200, V27ter4800, V27ter2400]);
    let mut c = T30::new(
        with_training(caller_config(1, Resolution::Standard, 1728, caps)),
        now,
    )
    .unwrap();
    c.handle(frame_ev(frame::build(frame::fcf::DIS, &dis, true)), now);
    assert_eq!(dcs_and_tcf(&drain(&mut c)), [(V29_9600, Some(V29_9600))]);
    assert_eq!(c.modem(), V29_9600);
}

/// Standard resolution, A4, MH, no ECM: the plainest page parameters.
const MH_STANDARD: Params = Params {
    resolution: Resolution::Standard,
    width: 1728,
    coding: Coding::Mh,
    ecm: false,
};

/// A caller's DCS for `p` at modem `m` (A4, no minimum scan time).
fn dcs_at(p: &Params, m: frame::Modem) -> Event {
    let fif = p.to_dcs_fif_with(frame::PageLength::A4, m, frame::MinScan::Ms0);
    frame_ev(frame::build(frame::fcf::DCS | 1, &fif, true))
}

/// An ECM answerer keeps waiting while a block comes in, even if every
/// frame of it is damaged (each bad frame is line activity, as good ones
/// are), and waits T2 for the PPS from the end of the block's carrier
/// (`ImageEnd`), even if all three RCPs were lost: then PPR asks for the
/// frames, where a timeout would have ended the call.
#[test]
fn ecm_answerer_waits_for_pps_after_a_damaged_block() {
    let now = Instant::now();
    let t2 = Timers::default().t2;
    let mut a = T30::new(answerer_config(Capabilities::all()), now).unwrap();
    drain(&mut a);
    let p = Params {
        ecm: true,
        ..MH_STANDARD
    };
    a.handle(dcs_at(&p, frame::Modem::V17_14400), now);
    assert_eq!(fcfs_of(&drain(&mut a)), [frame::Fcf::Cfr]);
    let mut at = now;
    for _ in 0..4 {
        at += t2 / 2;
        a.handle(
            Event::EcmFrame {
                bytes: vec![0xFF, 0x03, 0x06, 0x00, 0x12],
                fcs_ok: false,
            },
            at,
        );
        assert_eq!(
            a.poll_timeout(),
            Some(at + t2),
            "T2 runs from the bad frame"
        );
    }
    at += t2 / 2;
    a.handle(Event::ImageEnd, at);
    assert_eq!(
        a.poll_timeout(),
        Some(at + t2),
        "T2 runs from the block's end"
    );
    assert!(!a.is_finished());
    let pps = frame::build(frame::fcf::PPS | 1, &[frame::fcf::EOP | 1, 0, 0, 0], true);
    a.handle(frame_ev(pps), at + t2 / 2);
    assert_eq!(fcfs_of(&drain(&mut a)), [frame::Fcf::Ppr]);
}

/// A caller that ignores our DIS and picks a modem we do not have gets
/// FTT without a training check (we could not receive its TCF), and a
/// check once it steps down to one we have.
#[test]
fn answerer_answers_ftt_to_a_dcs_at_a_modem_it_does_not_have() {
    use frame::Modem::*;
    let now = Instant::now();
    let mut a = T30::new(
        with_training(answerer_config(with_modems(&[V29_9600, V29_7200]))),
        now,
    )
    .unwrap();
    drain(&mut a);
    let p = MH_STANDARD;
    let dcs_at = |m: frame::Modem| dcs_at(&p, m);
    for m in [V17_14400, V27ter4800] {
        a.handle(dcs_at(m), now);
        let actions = drain(&mut a);
        assert_eq!(tcf_checks(&actions), [], "{m:?}: {actions:?}");
        assert_eq!(fcfs_of(&actions), [frame::Fcf::Ftt], "{m:?}: {actions:?}");
    }
    a.handle(dcs_at(V29_9600), now);
    let actions = drain(&mut a);
    assert_eq!(tcf_checks(&actions), [V29_9600]);
    assert_eq!(fcfs_of(&actions), []);
    a.handle(training_ev(true), now);
    assert_eq!(fcfs_of(&drain(&mut a)), [frame::Fcf::Cfr]);

    // The FTTs count: a caller that keeps to a modem we lack is given up
    // on, as after failed checks.
    let mut a = T30::new(
        with_training(answerer_config(with_modems(&[V29_9600]))),
        now,
    )
    .unwrap();
    drain(&mut a);
    let mut ftts = 0;
    for _ in 0..20 {
        a.handle(dcs_at(V17_14400), now);
        let actions = drain(&mut a);
        ftts += fcfs_of(&actions)
            .iter()
            .filter(|f| **f == frame::Fcf::Ftt)
            .count();
        if a.is_finished() {
            break;
        }
    }
    assert!(a.is_finished(), "still going after {ftts} FTTs");
    assert!((1..20).contains(&ftts), "{ftts} FTTs");
}

/// An answerer whose modem lacks V.17 offers no V.17 in its DIS (bit 14
/// clear): V.29 alone (bit 11) for a V.29-only modem, V.29 and V.27 ter
/// (bits 11 and 12) for one with both; and a caller that could use
/// anything then trains at V.29 9600 and delivers the page.
#[test]
fn answerer_limited_to_v29_sends_a_dis_without_v17() {
    use frame::Modem::*;
    let cases: &[(&[frame::Modem], [bool; 4])] = &[
        (&[V29_9600, V29_7200], [true, false, false, false]),
        (
            &[V29_9600, V29_7200, V27ter4800, V27ter2400],
            [true, true, false, false],
        ),
    ];
    for (modems, bits) in cases {
        let now = Instant::now();
        let mut a = T30::new(answerer_config(with_modems(modems)), now).unwrap();
        let dis = dis_of(&drain(&mut a));
        let got: Vec<bool> = (frame::BIT_MODEM_1..=frame::BIT_MODEM_4)
            .map(|b| frame::bit(&dis, b))
            .collect();
        assert_eq!(got, bits, "{modems:?}: DIS {dis:02X?}");
        assert_eq!(
            frame::Modem::permitted_by_dis(&dis).as_deref(),
            Some(*modems),
            "{modems:?}"
        );
    }

    let mut h = Harness::new(
        with_training(caller_config(
            1,
            Resolution::Standard,
            1728,
            Capabilities::minimal(),
        )),
        with_training(answerer_config(with_modems(&[V29_9600, V29_7200]))),
        vec![page(1728, 60, 1)],
        Resolution::Standard,
    );
    h.hook = Box::new(|from, action| match (from, action) {
        (Side::Answerer, Action::ReceiveTraining { .. }) => {
            vec![(Side::Answerer, training_ev(true))]
        }
        _ => Vec::new(),
    });
    h.run();
    assert_ok(h.outcome(Side::Caller), 1);
    assert_ok(h.outcome(Side::Answerer), 1);
    h.assert_pages_identical();
    assert_eq!(
        dcs_and_tcf(h.actions(Side::Caller)),
        [(V29_9600, Some(V29_9600))]
    );
    assert_eq!(tcf_checks(h.actions(Side::Answerer)), [V29_9600]);
}

/// FTT steps down only through modems both the DIS and the caller's list
/// allow (the list's order does not matter), and past the slowest of
/// them the call fails as incompatible.
#[test]
fn ftt_step_down_stays_within_the_allowed_modems() {
    use frame::Modem::*;
    let now = Instant::now();
    let caps = with_modems(&[V27ter2400, V29_9600, V17_12000]);
    let mut c = T30::new(
        with_training(caller_config(1, Resolution::Standard, 1728, caps)),
        now,
    )
    .unwrap();
    let dis = Capabilities::minimal().to_dis_fif();
    c.handle(frame_ev(frame::build(frame::fcf::DIS, &dis, true)), now);
    let mut sent = dcs_and_tcf(&drain(&mut c));
    for _ in 0..2 {
        c.handle(simple(frame::fcf::FTT), now);
        sent.extend(dcs_and_tcf(&drain(&mut c)));
    }
    assert_eq!(
        sent,
        [
            (V17_12000, Some(V17_12000)),
            (V29_9600, Some(V29_9600)),
            (V27ter2400, Some(V27ter2400)),
        ]
    );
    c.handle(simple(frame::fcf::FTT), now);
    let o = outcome_of(&drain(&mut c));
    assert!(
        matches!(&o.result, Err(Failure::Incompatible(s)) if s.contains("2400")),
        "{o:?}"
    );
}

/// A caller whose modems the answerer's DIS does not offer (V.17 only
/// against a V.29/V.27 ter answerer) ends the call before any DCS, as
/// incompatible, and the answerer sees the call end too.
#[test]
fn no_modem_in_common_ends_the_call_with_a_failure() {
    use frame::Modem::*;
    let mut h = Harness::pair(
        1,
        Resolution::Standard,
        1728,
        with_modems(&[V17_14400, V17_12000]),
        with_modems(&[V29_9600, V29_7200, V27ter4800, V27ter2400]),
    );
    h.run();
    let o = h.outcome(Side::Caller);
    assert!(
        matches!(&o.result, Err(Failure::Incompatible(s)) if s.contains("no modem in common")),
        "{o:?}"
    );
    assert!(!o.result.as_ref().unwrap_err().is_retryable());
    assert!(h.outcome(Side::Answerer).result.is_err());
    assert_eq!(h.count_sent(Side::Caller, frame::Fcf::Dcs), 0);
    assert!(h.received.is_empty());
}
