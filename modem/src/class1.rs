//! Fax Class 1 (ITU-T T.31, EIA-578): the AT commands that make a data
//! modem a fax modem, as async primitives over a serial stream.
//!
//! Class 1 leaves T.30 to the DTE: the modem only modulates. `+FTH=3` /
//! `+FRH=3` send and receive V.21 HDLC frames (the modem adds and checks
//! flags and FCS), `+FTM=<mod>` / `+FRM=<mod>` send and receive
//! high-speed data (TCF and page data), `+FTS` / `+FRS` make and wait for
//! silence. Data in both directions is DLE-framed ([`crate::dle`]).
//!
//! Behaviour seen from spandsp's T.31 (the modem inside iaxmodem, which
//! the tests run): after `ATD` the modem answers `CONNECT` when it hears
//! the answerer's V.21 flags and is then receiving HDLC, as after
//! `+FRH=3`; after `ATA` it sends CED and is transmitting HDLC, as after
//! `+FTH=3`. Received frames carry their two FCS octets before DLE ETX,
//! then `OK` (FCS good) or `ERROR`. A `CONNECT` may be repeated before a
//! frame's data. While it transmits high-speed data the modem paces the
//! DTE with XOFF/XON in the response stream.

use std::time::Duration;

use faxgate_fax::t30::frame::Modem;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::time::Instant;

use crate::ModemError;
use crate::dle::{self, Unstuffer, XOFF, XON};

/// The longest HDLC frame accepted from the modem (T.30 frames are at
/// most 3 + 253 octets, plus FCS; ECM frames 260).
const MAX_FRAME: usize = 300;

/// The longest gap in high-speed data a modem may leave while it has a
/// carrier (it reports the carrier's end with DLE ETX and NO CARRIER).
pub const DATA_STALL: Duration = Duration::from_secs(10);

/// How long an HDLC frame may take once it has started: the longest
/// accepted ([`MAX_FRAME`] and its FCS) at V.21's 300 bit/s, with a bit
/// stuffed after every five ones (at most a fifth more) and the closing
/// flags, is 9.7 s. (HylaFAX allows 5 s, which cuts a frame over about
/// 180 octets, a long NSF among them.)
const FRAME_TIME: Duration = Duration::from_secs(10);

/// How long an ordinary command may take to be answered.
const COMMAND_WAIT: Duration = Duration::from_secs(5);

/// A modem's final result code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// `OK`.
    Ok,
    /// `CONNECT`: data follows (or may be sent).
    Connect,
    /// `RING` (unsolicited).
    Ring,
    /// `NO CARRIER`.
    NoCarrier,
    /// `ERROR`.
    Error,
    /// `NO DIALTONE`.
    NoDialtone,
    /// `BUSY`.
    Busy,
    /// `NO ANSWER`.
    NoAnswer,
    /// `+FCERROR`: `+FRM` heard a different carrier (V.21 instead of the
    /// high-speed one).
    FcError,
}

impl Response {
    fn parse(line: &str) -> Option<Response> {
        Some(match line {
            "OK" => Response::Ok,
            "CONNECT" => Response::Connect,
            "RING" => Response::Ring,
            "NO CARRIER" => Response::NoCarrier,
            "ERROR" => Response::Error,
            "NO DIALTONE" | "NO DIAL TONE" => Response::NoDialtone,
            "BUSY" => Response::Busy,
            "NO ANSWER" => Response::NoAnswer,
            "+FCERROR" | "+FRH:3" => Response::FcError,
            _ => return None,
        })
    }
}

/// What a receive command got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Received<T> {
    /// The frame or the data.
    Got(T),
    /// No carrier came (or the wrong one, for `+FRM`): try again or give up.
    NoCarrier,
    /// `+FRM` heard V.21 instead: the peer sent frames; receive those.
    Frames,
    /// The deadline passed first; the modem was told to stop listening.
    Timeout,
}

/// One HDLC frame from `+FRH=3`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RxFrame {
    /// Address, control, FCF and FIF (the FCS removed).
    pub bytes: Vec<u8>,
    /// Whether the modem found the FCS good.
    pub fcs_ok: bool,
}

impl RxFrame {
    /// Whether this is the last frame of its burst (control field 0x13).
    pub fn is_final(&self) -> bool {
        self.bytes.get(1).is_some_and(|c| c & 0x10 != 0)
    }
}

/// How a V.17 high-speed signal starts (T.31 Table 4: the V.17 codes
/// come in pairs, long then short training; V.29 and V.27 ter have one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Training {
    /// Long training: TCF, which trains the receiver from scratch.
    Long,
    /// Short training: page data after a TCF at the same modem (T.30
    /// section 5.3.2), as receivers such as efax listen for it.
    Short,
}

/// The Class 1 modulation code (`+FTM`/`+FRM`) for a T.30 modem and
/// V.17 training.
pub fn modulation_code(modem: Modem, training: Training) -> u16 {
    let long = modulation(modem);
    match (modem, training) {
        (
            Modem::V17_14400 | Modem::V17_12000 | Modem::V17_9600 | Modem::V17_7200,
            Training::Short,
        ) => long + 1,
        _ => long,
    }
}

/// The Class 1 modulation code (`+FTM`/`+FRM`) for a T.30 modem, with
/// long training for V.17.
pub fn modulation(modem: Modem) -> u16 {
    match modem {
        Modem::V27ter2400 => 24,
        Modem::V27ter4800 => 48,
        Modem::V29_7200 => 72,
        Modem::V17_7200 => 73,
        Modem::V29_9600 => 96,
        Modem::V17_9600 => 97,
        Modem::V17_12000 => 121,
        Modem::V17_14400 => 145,
    }
}

/// The T.30 modems a Class 1 modem can use, fastest first, given the
/// modulations its `+FTM=?` (`tx`) and `+FRM=?` (`rx`) listed: those
/// whose codes appear in both lists. V.17 needs its long-training code
/// (TCF) and its short-training code (page data, see [`Training`]);
/// V.29 and V.27 ter have one code each (T.31 Table 4).
pub fn usable_modems(tx: &[u16], rx: &[u16]) -> Vec<Modem> {
    Modem::FALLBACK
        .into_iter()
        .filter(|&m| {
            [Training::Long, Training::Short]
                .into_iter()
                .map(|t| modulation_code(m, t))
                .all(|code| tx.contains(&code) && rx.contains(&code))
        })
        .collect()
}

/// Parses a `+FTM=?` / `+FRM=?` answer: numbers separated by commas
/// (ranges such as `24-48` are not used by fax modems and are skipped).
fn parse_modulations(info: &[String]) -> Vec<u16> {
    info.iter()
        .flat_map(|l| l.split(','))
        .filter_map(|v| v.trim().parse().ok())
        .collect()
}

/// A fax modem in Class 1 on a serial stream.
pub struct Class1<S> {
    rx: ReadHalf<S>,
    tx: WriteHalf<S>,
    /// Bytes read and not yet used.
    buf: Vec<u8>,
    /// The `+FTM` modulations the modem listed at [`Class1::init`].
    modulations: Vec<u16>,
    /// The `+FRM` modulations the modem listed at [`Class1::init`].
    rx_modulations: Vec<u16>,
    /// The modem's last flow control character was XOFF.
    paused: bool,
    /// Turns the line's XON/XOFF output flow control on and off (a real
    /// serial port), so that the driver's transmit buffer stops at XOFF
    /// too, not only the writes not yet made.
    flow: Option<crate::port::FlowSwitch>,
}

impl Class1<crate::port::SerialPort> {
    /// Wraps a serial port; its XON/XOFF output flow control is on while
    /// page data goes out (and off otherwise: received data holds those
    /// octets).
    pub fn on_port(port: crate::port::SerialPort) -> Result<Self, ModemError> {
        let flow = port.flow_switch()?;
        let mut m = Class1::new(port);
        m.flow = Some(flow);
        Ok(m)
    }
}

impl<S> std::fmt::Debug for Class1<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Class1")
            .field("buffered", &self.buf.len())
            .field("modulations", &self.modulations)
            .field("rx_modulations", &self.rx_modulations)
            .finish_non_exhaustive()
    }
}

impl<S: AsyncRead + AsyncWrite> Class1<S> {
    /// Wraps `io`; call [`Class1::init`] next.
    pub fn new(io: S) -> Class1<S> {
        let (rx, tx) = tokio::io::split(io);
        Class1 {
            rx,
            tx,
            buf: Vec::with_capacity(4096),
            modulations: Vec::new(),
            rx_modulations: Vec::new(),
            paused: false,
            flow: None,
        }
    }

    /// The modulations `+FTM=?` listed.
    pub fn modulations(&self) -> &[u16] {
        &self.modulations
    }

    /// The modulations `+FRM=?` listed (those of `+FTM=?` if the modem
    /// would not say).
    pub fn rx_modulations(&self) -> &[u16] {
        &self.rx_modulations
    }

    /// The T.30 modems this modem can both send and receive, fastest
    /// first ([`usable_modems`] of the lists [`Class1::init`] read); empty
    /// before `init`.
    pub fn modems(&self) -> Vec<Modem> {
        usable_modems(&self.modulations, &self.rx_modulations)
    }

    /// Puts the modem in fax Class 1: no echo, verbose result codes, then
    /// `+FCLASS=1`, and reads the modulations it can send (`+FTM=?`) and
    /// receive (`+FRM=?`; if that gets no list, the send list is taken
    /// for both). `setup` are
    /// extra commands sent first (without `AT`), for a modem that needs
    /// them.
    pub async fn init(&mut self, setup: &[String]) -> Result<(), ModemError> {
        // Anything a previous user left (a RING, a half line) is noise.
        self.buf.clear();
        // A modem left in a data mode or with a half-typed command answers
        // the first AT late or with ERROR: ask until it says OK.
        let mut ready = false;
        for _ in 0..3 {
            if let Ok((_, Response::Ok)) = self.command("", Duration::from_secs(2)).await {
                ready = true;
                break;
            }
            self.buf.clear();
        }
        if !ready {
            return Err(ModemError::Timeout {
                command: "AT (is a modem on this port?)".into(),
                waited: Duration::from_secs(6),
            });
        }
        self.expect("E0V1Q0", COMMAND_WAIT, Response::Ok, "OK")
            .await?;
        // On hook, and no auto-answer: calls are answered with ATA.
        self.expect("H0", COMMAND_WAIT, Response::Ok, "OK").await?;
        self.expect("S0=0", COMMAND_WAIT, Response::Ok, "OK")
            .await?;
        for cmd in setup {
            self.expect(cmd, COMMAND_WAIT, Response::Ok, "OK").await?;
        }
        match self.command("+FCLASS=1", COMMAND_WAIT).await? {
            (_, Response::Ok) => {}
            (_, other) => {
                return Err(ModemError::NoClass1 {
                    reason: format!("AT+FCLASS=1 answered {other:?}"),
                });
            }
        }
        let (info, resp) = self.command("+FTM=?", COMMAND_WAIT).await?;
        self.modulations = parse_modulations(&info);
        if resp != Response::Ok || self.modulations.is_empty() {
            return Err(ModemError::NoClass1 {
                reason: format!("AT+FTM=? listed no modulations ({info:?}, {resp:?})"),
            });
        }
        let (info, resp) = self.command("+FRM=?", COMMAND_WAIT).await?;
        self.rx_modulations = parse_modulations(&info);
        if resp != Response::Ok || self.rx_modulations.is_empty() {
            tracing::warn!(
                ?info,
                ?resp,
                "AT+FRM=? listed no modulations; assuming those of AT+FTM=?."
            );
            self.rx_modulations = self.modulations.clone();
        }
        tracing::debug!(
            modulations = ?self.modulations,
            rx_modulations = ?self.rx_modulations,
            modems = ?self.modems(),
            "Modem in fax Class 1."
        );
        Ok(())
    }

    /// Dials `number` (tone); `Ok` once the modem hears the answerer's
    /// V.21 and is receiving its first HDLC frame.
    pub async fn dial(&mut self, number: &str, wait: Duration) -> Result<(), ModemError> {
        if !valid_dial_string(number) {
            return Err(ModemError::DialFailed {
                number: number.to_owned(),
                result: "not a dial string (digits, letters, + * # , W @ ! only)".into(),
            });
        }
        match self.command(&format!("DT{number}"), wait).await? {
            (_, Response::Connect) => Ok(()),
            (_, other) => Err(ModemError::DialFailed {
                number: number.to_owned(),
                result: format!("{other:?}"),
            }),
        }
    }

    /// Waits for the next `RING` (cancel by dropping the future).
    pub async fn wait_for_ring(&mut self) -> Result<(), ModemError> {
        loop {
            let far = Instant::now() + Duration::from_secs(24 * 3600);
            if let Some(line) = self.line(far, "waiting for RING").await?
                && line == "RING"
            {
                return Ok(());
            }
        }
    }

    /// Answers (`ATA`); `Ok` once the modem has sent CED and is
    /// transmitting V.21 HDLC: send the first frames without `+FTH`.
    pub async fn answer(&mut self) -> Result<(), ModemError> {
        self.expect("A", Duration::from_secs(60), Response::Connect, "CONNECT")
            .await
    }

    /// Hangs up (`ATH0`), first stopping whatever the modem was doing (a
    /// receive waiting for a carrier takes a character as its abort, and
    /// would swallow the `A` of `ATH0`). Errors are the caller's to
    /// ignore or report.
    pub async fn hangup(&mut self) -> Result<(), ModemError> {
        self.abort("the call before hanging up").await.ok();
        self.buf.clear();
        self.expect("H0", COMMAND_WAIT, Response::Ok, "OK").await
    }

    /// Sends one burst of HDLC frames (address, control, FCF, FIF; the
    /// modem adds flags and FCS). `connected`: the modem is already
    /// transmitting V.21 (just after `ATA`); otherwise `+FTH=3` first.
    pub async fn send_frames(
        &mut self,
        frames: &[Vec<u8>],
        connected: bool,
    ) -> Result<(), ModemError> {
        if !connected {
            self.expect("+FTH=3", COMMAND_WAIT, Response::Connect, "CONNECT")
                .await?;
        }
        for (i, frame) in frames.iter().enumerate() {
            let last = i + 1 == frames.len();
            let mut out = Vec::with_capacity(frame.len() + 4);
            dle::stuff(frame, &mut out);
            dle::end(&mut out);
            self.write(&out, "sending an HDLC frame").await?;
            // A frame takes (n + flags) x 8 / 300 s on V.21, after a 1 s
            // preamble for the first.
            let wait = Duration::from_millis(3000 + frame.len() as u64 * 30);
            let (want, name) = if last {
                (Response::Ok, "OK")
            } else {
                (Response::Connect, "CONNECT")
            };
            let got = self.final_response(wait, "+FTH=3 frame").await?;
            if got != want {
                return Err(ModemError::Unexpected {
                    command: "an HDLC frame (+FTH=3)".into(),
                    response: format!("{got:?}"),
                    expected: name,
                });
            }
        }
        Ok(())
    }

    /// Receives one HDLC frame by `deadline`. `connected`: the modem is
    /// already receiving V.21 (just after `ATD`); otherwise `+FRH=3` first.
    pub async fn receive_frame(
        &mut self,
        deadline: Instant,
        connected: bool,
    ) -> Result<Received<RxFrame>, ModemError> {
        if !connected {
            self.write(b"AT+FRH=3\r", "asking for a frame").await?;
        }
        // After ATD's CONNECT the frame follows without another CONNECT.
        if !connected {
            loop {
                match self.wait_connect(deadline, "+FRH=3").await? {
                    Some(Response::Connect) => break,
                    Some(Response::NoCarrier | Response::FcError) => {
                        // Not at once again: a modem that answers at once
                        // would be asked in a tight loop.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        return Ok(Received::NoCarrier);
                    }
                    Some(Response::Error) => {
                        return Err(ModemError::Unexpected {
                            command: "AT+FRH=3".into(),
                            response: "ERROR".into(),
                            expected: "CONNECT (the line may have hung up)",
                        });
                    }
                    Some(_) => {}
                    None => return self.abort("+FRH=3").await.map(|()| Received::Timeout),
                }
            }
        }
        let mut data = Vec::new();
        match self.data(deadline, &mut data, MAX_FRAME).await? {
            DataEnd::Done => {}
            DataEnd::Line => return Ok(Received::NoCarrier),
            DataEnd::Timeout => return self.abort("+FRH=3").await.map(|()| Received::Timeout),
        }
        let result = self
            .final_response(COMMAND_WAIT, "+FRH=3 frame end")
            .await?;
        // The modem delivers the frame's two FCS octets too.
        data.truncate(data.len().saturating_sub(2));
        let fcs_ok = result == Response::Ok && data_len_ok(&data);
        Ok(Received::Got(RxFrame {
            bytes: data,
            fcs_ok,
        }))
    }

    /// Waits until the line has been silent for 70 ms (`+FRS=7`): the
    /// T.30 gap before answering what was just received.
    pub async fn wait_silence(&mut self) -> Result<(), ModemError> {
        self.expect("+FRS=7", COMMAND_WAIT, Response::Ok, "OK")
            .await
    }

    /// Keeps the line silent for `tens` x 10 ms (`+FTS`).
    pub async fn pause(&mut self, tens: u8) -> Result<(), ModemError> {
        self.expect(&format!("+FTS={tens}"), COMMAND_WAIT, Response::Ok, "OK")
            .await
    }

    /// Sends high-speed data at `modem` after 80 ms of silence (`+FTS=8`,
    /// the T.30 gap between V.21 and a high-speed signal): TCF, or a page.
    /// `data` is in line order (LSB first).
    pub async fn send_data(
        &mut self,
        modem: Modem,
        training: Training,
        data: &[u8],
    ) -> Result<(), ModemError> {
        self.expect("+FTS=8", COMMAND_WAIT, Response::Ok, "OK")
            .await?;
        let code = modulation_code(modem, training);
        self.expect(
            &format!("+FTM={code}"),
            COMMAND_WAIT,
            Response::Connect,
            "CONNECT",
        )
        .await?;
        let mut out = Vec::with_capacity(data.len() + data.len() / 64 + 2);
        dle::stuff(data, &mut out);
        dle::end(&mut out);
        if let Some(flow) = &self.flow {
            flow.set(true)?;
        }
        let written = self.write_paced(&out).await;
        if let Some(flow) = &self.flow {
            flow.set(false)?;
        }
        written?;
        // The modem answers OK once the last bit has left: the data's
        // time on the line, with training and margin.
        let secs = data.len() as u64 * 8 / u64::from(modem.bit_rate()) + 30;
        let got = self
            .final_response(Duration::from_secs(secs), "+FTM data")
            .await?;
        if got != Response::Ok {
            return Err(ModemError::Unexpected {
                command: format!("data after AT+FTM={code}"),
                response: format!("{got:?}"),
                expected: "OK",
            });
        }
        Ok(())
    }

    /// Receives high-speed data at `modem`: the carrier must come by
    /// `deadline`; then each piece (in line order) goes to `sink` as it
    /// comes, until the carrier drops. A modem that delivers nothing for
    /// [`DATA_STALL`] meanwhile is an error.
    pub async fn receive_data(
        &mut self,
        modem: Modem,
        training: Training,
        deadline: Instant,
        mut sink: impl FnMut(&[u8]),
    ) -> Result<Received<()>, ModemError> {
        let code = modulation_code(modem, training);
        self.write(format!("AT+FRM={code}\r").as_bytes(), "asking for data")
            .await?;
        loop {
            match self.wait_connect(deadline, "+FRM").await? {
                Some(Response::Connect) => break,
                Some(Response::FcError) => return Ok(Received::Frames),
                Some(Response::NoCarrier) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    return Ok(Received::NoCarrier);
                }
                Some(Response::Error) => {
                    return Err(ModemError::Unexpected {
                        command: format!("AT+FRM={code}"),
                        response: "ERROR".into(),
                        expected: "CONNECT (the modem may lack this modulation, or the line hung up)",
                    });
                }
                Some(_) => {}
                None => return self.abort("+FRM").await.map(|()| Received::Timeout),
            }
        }
        let mut u = Unstuffer::new();
        let mut out = Vec::with_capacity(8192);
        loop {
            if self.buf.is_empty()
                && !self
                    .fill(Instant::now() + DATA_STALL, "receiving data")
                    .await?
            {
                // Once it has a carrier, a modem cannot be stopped by a
                // character (spandsp ignores it): this one is stuck.
                return Err(ModemError::Timeout {
                    command: format!("data after AT+FRM={code}"),
                    waited: DATA_STALL,
                });
            }
            let used = u.feed(&self.buf, &mut out);
            self.buf.drain(..used);
            if !out.is_empty() {
                sink(&out);
                out.clear();
            }
            if u.ended() {
                break;
            }
        }
        // NO CARRIER (the usual end) or OK.
        self.final_response(COMMAND_WAIT, "+FRM data end").await?;
        Ok(Received::Got(()))
    }

    /// Sends `AT<cmd>` and returns the information lines and the final
    /// result code, within `wait`.
    pub async fn command(
        &mut self,
        cmd: &str,
        wait: Duration,
    ) -> Result<(Vec<String>, Response), ModemError> {
        tracing::trace!(cmd, "Modem command.");
        self.write(format!("AT{cmd}\r").as_bytes(), &format!("sending AT{cmd}"))
            .await?;
        let deadline = Instant::now() + wait;
        let mut info = Vec::new();
        loop {
            let Some(line) = self.line(deadline, &format!("AT{cmd}")).await? else {
                return Err(ModemError::Timeout {
                    command: format!("AT{cmd}"),
                    waited: wait,
                });
            };
            match Response::parse(&line) {
                // A call coming in as we speak is not our command's answer.
                Some(Response::Ring) => {}
                Some(r) => return Ok((info, r)),
                None => info.push(line),
            }
        }
    }

    async fn expect(
        &mut self,
        cmd: &str,
        wait: Duration,
        want: Response,
        name: &'static str,
    ) -> Result<(), ModemError> {
        let (_, got) = self.command(cmd, wait).await?;
        if got == want {
            Ok(())
        } else {
            Err(ModemError::Unexpected {
                command: format!("AT{cmd}"),
                response: format!("{got:?}"),
                expected: name,
            })
        }
    }

    /// The next final result code within `wait`, skipping other lines.
    async fn final_response(&mut self, wait: Duration, what: &str) -> Result<Response, ModemError> {
        let deadline = Instant::now() + wait;
        loop {
            let Some(line) = self.line(deadline, what).await? else {
                return Err(ModemError::Timeout {
                    command: what.to_owned(),
                    waited: wait,
                });
            };
            if let Some(r) = Response::parse(&line) {
                return Ok(r);
            }
        }
    }

    /// After a receive command: the next result code before data, or
    /// `None` at the deadline.
    async fn wait_connect(
        &mut self,
        deadline: Instant,
        what: &str,
    ) -> Result<Option<Response>, ModemError> {
        loop {
            let Some(line) = self.line(deadline, what).await? else {
                return Ok(None);
            };
            if let Some(r) = Response::parse(&line) {
                return Ok(Some(r));
            }
        }
    }

    /// Reads one HDLC frame's DLE-framed data up to DLE ETX into `out`
    /// (at most `limit` octets). Lines before the frame's data (which
    /// starts with the 0xFF address) are result codes: a repeated
    /// `CONNECT` is skipped, another one ends the read.
    async fn data(
        &mut self,
        deadline: Instant,
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Result<DataEnd, ModemError> {
        loop {
            match self.buf.first() {
                None => {}
                Some(0xff) => break,
                Some(_) => {
                    if let Some((len, used)) = find_line(&self.buf) {
                        let raw: Vec<u8> = self.buf.drain(..used).collect();
                        let text = String::from_utf8_lossy(&raw[..len]).trim().to_owned();
                        match Response::parse(&text) {
                            None | Some(Response::Connect) => {}
                            Some(_) => return Ok(DataEnd::Line),
                        }
                        continue;
                    }
                }
            }
            if !self.fill(deadline, "receiving a frame").await? {
                return Ok(DataEnd::Timeout);
            }
        }
        // The deadline (T2, T4) is for the frame to start; once it has,
        // it may take its time at 300 bit/s.
        let deadline = deadline.max(Instant::now() + FRAME_TIME);
        let mut u = Unstuffer::new();
        loop {
            let used = u.feed(&self.buf, out);
            self.buf.drain(..used);
            if out.len() > limit {
                return Err(ModemError::FrameTooLong { limit });
            }
            if u.ended() {
                return Ok(DataEnd::Done);
            }
            if !self.fill(deadline, "receiving a frame").await? {
                return Ok(DataEnd::Timeout);
            }
        }
    }

    /// Stops a receive command that is still waiting: any character
    /// aborts it (T.31 section 8.3.4; spandsp also ends a receive under
    /// way with DLE ETX and OK). Any final result code ends the abort
    /// (the command may have ended by itself, with +FCERROR say); a modem
    /// that says nothing is asked `AT` until it answers OK (some send no
    /// OK after an abort). Only a modem that answers nothing at all is an
    /// error.
    async fn abort(&mut self, what: &str) -> Result<(), ModemError> {
        // DLE ETX first: a transmit command (+FTM, +FTH) cut off mid-data
        // (a cancel, a shutdown, a stalled write) takes everything but
        // DLE ETX as more data, `AT` and `ATH0` too, and the line would
        // stay off-hook. Twice, as the cut may have split a stuffed DLE
        // pair, whose second DLE the first one would then complete. In
        // command mode or a receive the bytes are just characters (a
        // receive takes any as its abort; an idle modem says ERROR).
        let end = [dle::DLE, dle::ETX, dle::DLE, dle::ETX, b'\r'];
        self.write(&end, "aborting a command").await?;
        let deadline = Instant::now() + Duration::from_secs(2);
        while let Some(line) = self.line(deadline, what).await? {
            if Response::parse(&line).is_some() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.buf.clear();
        for _ in 0..3 {
            if let Ok((_, Response::Ok)) = self.command("", Duration::from_secs(2)).await {
                return Ok(());
            }
        }
        Err(ModemError::Timeout {
            command: format!("aborting {what} (and AT after it)"),
            waited: Duration::from_secs(8),
        })
    }

    /// The next non-empty text line (CR/LF stripped, echoed `AT` lines and
    /// XON/XOFF dropped), or `None` at the deadline.
    async fn line(&mut self, deadline: Instant, what: &str) -> Result<Option<String>, ModemError> {
        loop {
            // A CR last in the buffer may have its LF still coming: wait
            // for it a moment, so that it is not taken for data that
            // follows a CONNECT.
            if self.buf.last() == Some(&b'\r')
                && find_line(&self.buf[..self.buf.len() - 1]).is_none()
            {
                let soon = (Instant::now() + Duration::from_millis(50)).min(deadline);
                self.fill(soon, what).await?;
            }
            while let Some((len, used)) = find_line(&self.buf) {
                let raw: Vec<u8> = self.buf.drain(..used).collect();
                // XON/XOFF may come between lines; never inside data,
                // which is not read here.
                for &b in &raw[..len] {
                    match b {
                        XOFF => self.paused = true,
                        XON => self.paused = false,
                        _ => {}
                    }
                }
                let raw: Vec<u8> = raw[..len]
                    .iter()
                    .copied()
                    .filter(|&b| b != XON && b != XOFF)
                    .collect();
                let text = String::from_utf8_lossy(&raw).trim().to_owned();
                if text.is_empty() || text.starts_with("AT") || text.starts_with("at") {
                    continue;
                }
                tracing::trace!(line = %text, "Modem said.");
                return Ok(Some(text));
            }
            if !self.fill(deadline, what).await? {
                return Ok(None);
            }
        }
    }

    /// Reads more into the buffer; `false` at the deadline.
    async fn fill(&mut self, deadline: Instant, what: &str) -> Result<bool, ModemError> {
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout_at(deadline, self.rx.read(&mut chunk)).await {
            Err(_) => Ok(false),
            Ok(Ok(0)) => Err(ModemError::Closed {
                what: what.to_owned(),
            }),
            Ok(Ok(n)) => {
                if self.buf.len() + n > MAX_LINE_BUFFER {
                    // No modem says this much without a line end: wrong
                    // speed, or a device that is no modem.
                    return Err(ModemError::Unexpected {
                        command: what.to_owned(),
                        response: format!("{} bytes without a line end", self.buf.len() + n),
                        expected: "a result code line",
                    });
                }
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(true)
            }
            Ok(Err(e)) => Err(ModemError::io(what, e)),
        }
    }

    async fn write(&mut self, bytes: &[u8], what: &str) -> Result<(), ModemError> {
        let deadline = Instant::now() + COMMAND_WAIT;
        match tokio::time::timeout_at(deadline, self.tx.write_all(bytes)).await {
            Ok(r) => r.map_err(|e| ModemError::io(what, e)),
            Err(_) => Err(ModemError::Timeout {
                command: what.to_owned(),
                waited: COMMAND_WAIT,
            }),
        }
    }

    /// Writes high-speed data, pausing at XOFF until XON (the modem's
    /// software flow control); other bytes the modem sends meanwhile are
    /// kept for the result code.
    async fn write_paced(&mut self, bytes: &[u8]) -> Result<(), ModemError> {
        let mut off = 0;
        // An XOFF may have come with the CONNECT: in its line, or after
        // it, still in the buffer.
        let mut paused = self.paused;
        self.buf.retain(|&b| match b {
            XOFF => {
                paused = true;
                false
            }
            XON => {
                paused = false;
                false
            }
            _ => true,
        });
        let mut chunk = [0u8; 256];
        // A modem that holds XOFF this long is stuck.
        let stall = Duration::from_secs(30);
        while off < bytes.len() {
            // A result code while data goes out (ERROR, NO CARRIER: the
            // line dropped; it may have come with the CONNECT) ends the
            // write. Result codes come as CR LF code CR LF: the blank
            // lines before them are skipped.
            if let Some(r) = first_result(&self.buf) {
                return Err(ModemError::Unexpected {
                    command: "page data (+FTM)".into(),
                    response: format!("{r:?}"),
                    expected: "to take all the data",
                });
            }
            let end = (off + 1024).min(bytes.len());
            tokio::select! {
                biased;
                r = self.rx.read(&mut chunk) => {
                    let n = r.map_err(|e| ModemError::io("sending data", e))?;
                    if n == 0 {
                        return Err(ModemError::Closed { what: "sending data".into() });
                    }
                    for &b in &chunk[..n] {
                        match b {
                            XOFF => paused = true,
                            XON => paused = false,
                            other => self.buf.push(other),
                        }
                    }
                }
                w = self.tx.write(&bytes[off..end]), if !paused => {
                    off += w.map_err(|e| ModemError::io("sending data", e))?;
                }
                () = tokio::time::sleep(stall) => {
                    return Err(ModemError::Timeout {
                        command: "data (the modem held XOFF or took nothing)".into(),
                        waited: stall,
                    });
                }
            }
        }
        self.paused = paused;
        self.tx
            .flush()
            .await
            .map_err(|e| ModemError::io("sending data", e))
    }
}

/// How reading a frame's data ended.
enum DataEnd {
    /// DLE ETX.
    Done,
    /// A result code came instead of data (NO CARRIER, ERROR).
    Line,
    /// The deadline passed.
    Timeout,
}

/// Whether `number` may go after `ATDT`: 1 to 64 of digits, letters (a
/// keypad's, or the modem's dial modifiers), `+ * # , - ( ) W @ !` and
/// spaces. Nothing that could end the command (CR, `;`) or start another.
pub fn valid_dial_string(number: &str) -> bool {
    (1..=64).contains(&number.len())
        && number
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+*#,-() W@!".contains(c))
}

/// A frame must at least have address, control and FCF.
fn data_len_ok(data: &[u8]) -> bool {
    data.len() >= 3
}

/// The first line in `buf`: (text length, bytes to consume with its one
/// terminator, CR LF, CR or LF). Nothing past the terminator is taken:
/// data may follow a CONNECT line directly.
/// The first result code among the complete lines in `buf` (blank lines
/// skipped), if the first non-blank line is one.
fn first_result(buf: &[u8]) -> Option<Response> {
    let mut rest = buf;
    while let Some((len, used)) = find_line(rest) {
        let text = String::from_utf8_lossy(&rest[..len]);
        let text = text.trim();
        if !text.is_empty() {
            return Response::parse(text);
        }
        rest = &rest[used..];
    }
    None
}

/// The most the reader keeps while it looks for a line (a result code
/// is a few bytes; an HDLC frame from +FRH is read elsewhere).
const MAX_LINE_BUFFER: usize = 64 * 1024;

fn find_line(buf: &[u8]) -> Option<(usize, usize)> {
    let end = buf.iter().position(|&b| b == b'\r' || b == b'\n')?;
    let used = if buf[end] == b'\r' && buf.get(end + 1) == Some(&b'\n') {
        end + 2
    } else {
        end + 1
    };
    Some((end, used))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_codes_parse() {
        assert_eq!(Response::parse("OK"), Some(Response::Ok));
        assert_eq!(Response::parse("+FCERROR"), Some(Response::FcError));
        assert_eq!(Response::parse("NO DIALTONE"), Some(Response::NoDialtone));
        assert_eq!(Response::parse("24,48,72"), None);
    }

    #[test]
    fn modulation_codes_follow_t31_table_4() {
        assert_eq!(modulation(Modem::V17_14400), 145);
        assert_eq!(modulation(Modem::V29_9600), 96);
        assert_eq!(modulation(Modem::V27ter2400), 24);
        assert_eq!(modulation_code(Modem::V17_14400, Training::Short), 146);
        assert_eq!(modulation_code(Modem::V17_7200, Training::Short), 74);
        assert_eq!(modulation_code(Modem::V29_9600, Training::Short), 96);
    }

    /// T.31 Table 4 codes to T.30 modems: V.17 needs its long and short
    /// codes, in both the send and the receive list.
    #[test]
    fn usable_modems_follow_both_lists() {
        use Modem::*;
        const FULL: &[u16] = &[24, 48, 72, 73, 74, 96, 97, 98, 121, 122, 145, 146];
        /// Name, `+FTM=?` list, `+FRM=?` list, the modems.
        type Case = (
            &'static str,
            &'static [u16],
            &'static [u16],
            &'static [Modem],
        );
        let cases: &[Case] = &[
            ("full", FULL, FULL, &Modem::FALLBACK),
            (
                "v29 only",
                &[24, 48, 72, 96],
                &[24, 48, 72, 96],
                &[V29_9600, V29_7200, V27ter4800, V27ter2400],
            ),
            (
                "v17 sent, not received",
                FULL,
                &[24, 48, 72, 96],
                &[V29_9600, V29_7200, V27ter4800, V27ter2400],
            ),
            (
                "v17 long training only",
                &[24, 48, 72, 73, 96, 97, 121, 145],
                FULL,
                &[V29_9600, V29_7200, V27ter4800, V27ter2400],
            ),
            (
                "v17 14400 missing",
                &[24, 48, 72, 73, 74, 96, 97, 98, 121, 122],
                FULL,
                &[
                    V17_12000, V17_9600, V29_9600, V17_7200, V29_7200, V27ter4800, V27ter2400,
                ],
            ),
            ("v27ter only", &[24, 48], FULL, &[V27ter4800, V27ter2400]),
            ("none", &[3], &[3], &[]),
            ("empty", &[], FULL, &[]),
        ];
        for (name, tx, rx, want) in cases {
            assert_eq!(usable_modems(tx, rx), *want, "{name}");
        }
        assert_eq!(
            parse_modulations(&["24,48,72, 96".into(), "145".into()]),
            [24, 48, 72, 96, 145]
        );
    }

    /// `init` reads both lists; a modem that will not list its receive
    /// modulations is taken to receive what it sends.
    #[tokio::test]
    async fn init_reads_ftm_and_frm() {
        let script = |frm: &'static [u8]| {
            vec![
                (&b"AT\r"[..], &b"\r\nOK\r\n"[..]),
                (b"ATE0V1Q0\r", b"\r\nOK\r\n"),
                (b"ATH0\r", b"\r\nOK\r\n"),
                (b"ATS0=0\r", b"\r\nOK\r\n"),
                (b"AT+FCLASS=1\r", b"\r\nOK\r\n"),
                (b"AT+FTM=?\r", b"\r\n24,48,72,73,74,96,97,98\r\n\r\nOK\r\n"),
                (b"AT+FRM=?\r", frm),
            ]
        };
        let mut m = scripted(script(b"\r\n24,48,72,96\r\n\r\nOK\r\n")).await;
        m.init(&[]).await.unwrap();
        assert_eq!(m.rx_modulations(), [24, 48, 72, 96]);
        use Modem::*;
        assert_eq!(m.modems(), [V29_9600, V29_7200, V27ter4800, V27ter2400]);
        let mut m = scripted(script(b"\r\nERROR\r\n")).await;
        m.init(&[]).await.unwrap();
        assert_eq!(m.rx_modulations(), m.modulations());
        assert_eq!(
            m.modems(),
            [
                V17_9600, V29_9600, V17_7200, V29_7200, V27ter4800, V27ter2400
            ]
        );
    }

    #[test]
    fn lines_end_at_cr_or_lf() {
        assert_eq!(find_line(b"OK\r\nrest"), Some((2, 4)));
        assert_eq!(find_line(b"\r\nOK"), Some((0, 2)));
        assert_eq!(find_line(b"CONNECT\r\n\n\r"), Some((7, 9)));
        assert_eq!(find_line(b"OK"), None);
    }

    /// A scripted modem on an in-memory pipe: what the DTE writes is
    /// checked against what the script expects, and the script's answers
    /// go back. (The real modem, spandsp's T.31 in iaxmodem, is driven by
    /// the integration tests; this checks framing details it cannot
    /// force, such as a repeated CONNECT and XOFF in the middle of data.)
    async fn scripted(
        script: Vec<(&'static [u8], &'static [u8])>,
    ) -> Class1<tokio::io::DuplexStream> {
        let (dte, mut dce) = tokio::io::duplex(1 << 16);
        tokio::spawn(async move {
            let mut got = Vec::new();
            for (expect, answer) in script {
                while !got.ends_with(expect) {
                    let mut b = [0u8; 1024];
                    let n = dce.read(&mut b).await.unwrap();
                    assert!(n > 0, "DTE closed before sending {expect:?}");
                    got.extend_from_slice(&b[..n]);
                }
                got.clear();
                dce.write_all(answer).await.unwrap();
            }
            // Keep the pipe open until the DTE is done.
            let mut b = [0u8; 64];
            while dce.read(&mut b).await.unwrap_or(0) > 0 {}
        });
        Class1::new(dte)
    }

    /// A long frame (250 octets with its FCS, as a vendor's NSF may be)
    /// takes about 7 s at V.21's 300 bit/s, and once it has started it is
    /// received whole, though the deadline for it to start is sooner.
    #[tokio::test(start_paused = true)]
    async fn a_long_frame_at_300_bit_per_second_is_received_whole() {
        let (dte, mut dce) = tokio::io::duplex(1 << 16);
        let mut frame = vec![0xff, 0x13, 0x20];
        frame.extend((0..245u32).map(|i| 0x20 + (i % 0xc0) as u8));
        frame.extend([0xaa, 0xbb]);
        let sent = frame.clone();
        tokio::spawn(async move {
            let mut b = [0u8; 64];
            let mut got = Vec::new();
            while !got.ends_with(b"AT+FRH=3\r") {
                let n = dce.read(&mut b).await.unwrap();
                assert!(n > 0);
                got.extend_from_slice(&b[..n]);
            }
            dce.write_all(b"\r\nCONNECT\r\n").await.unwrap();
            for chunk in sent.chunks(25) {
                dce.write_all(chunk).await.unwrap();
                // 25 octets at 300 bit/s.
                tokio::time::sleep(Duration::from_millis(667)).await;
            }
            dce.write_all(b"\x10\x03\r\nOK\r\n").await.unwrap();
            while dce.read(&mut b).await.unwrap_or(0) > 0 {}
        });
        let mut m = Class1::new(dte);
        let started = Instant::now();
        let got = m
            .receive_frame(Instant::now() + Duration::from_secs(3), false)
            .await
            .unwrap();
        assert!(
            started.elapsed() > Duration::from_secs(6),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(
            got,
            Received::Got(RxFrame {
                bytes: frame[..frame.len() - 2].to_vec(),
                fcs_ok: true
            })
        );
    }

    #[tokio::test]
    async fn a_frame_after_repeated_connects_loses_its_fcs_and_keeps_its_dles() {
        let mut m = scripted(vec![(
            b"AT+FRH=3\r",
            b"\r\nCONNECT\r\n\r\nCONNECT\r\n\xff\x13\x80\x10\x10\x01\xaa\xbb\x10\x03\r\nOK\r\n",
        )])
        .await;
        let got = m
            .receive_frame(Instant::now() + Duration::from_secs(5), false)
            .await
            .unwrap();
        assert_eq!(
            got,
            Received::Got(RxFrame {
                bytes: vec![0xff, 0x13, 0x80, 0x10, 0x01],
                fcs_ok: true
            })
        );
    }

    #[tokio::test]
    async fn a_bad_fcs_is_reported_not_hidden() {
        let mut m = scripted(vec![(
            b"AT+FRH=3\r",
            b"\r\nCONNECT\r\n\xff\x13\x84\xaa\xbb\x10\x03\r\nERROR\r\n",
        )])
        .await;
        let got = m
            .receive_frame(Instant::now() + Duration::from_secs(5), false)
            .await
            .unwrap();
        assert_eq!(
            got,
            Received::Got(RxFrame {
                bytes: vec![0xff, 0x13, 0x84],
                fcs_ok: false
            })
        );
    }

    #[tokio::test]
    async fn a_receive_past_its_deadline_is_aborted() {
        let mut m = scripted(vec![(b"AT+FRH=3\r", b""), (b"\r", b"\r\nOK\r\n")]).await;
        let got = m
            .receive_frame(Instant::now() + Duration::from_millis(200), false)
            .await
            .unwrap();
        assert_eq!(got, Received::Timeout);
    }

    #[tokio::test]
    async fn frm_hearing_v21_says_so() {
        let mut m = scripted(vec![(b"AT+FRM=145\r", b"\r\n+FCERROR\r\n")]).await;
        let got = m
            .receive_data(
                Modem::V17_14400,
                Training::Long,
                Instant::now() + Duration::from_secs(5),
                |_| {},
            )
            .await
            .unwrap();
        assert_eq!(got, Received::Frames);
    }

    #[tokio::test]
    async fn sent_data_is_stuffed_and_ends_with_dle_etx() {
        let mut m = scripted(vec![
            (b"AT+FTS=8\r", b"\r\nOK\r\n"),
            (b"AT+FTM=96\r", b"\r\nCONNECT\r\n"),
            (b"\x01\x02\x10\x10\x10\x03", b"\x11\r\nOK\r\n"),
        ])
        .await;
        m.send_data(Modem::V29_9600, Training::Short, &[1, 2, 0x10])
            .await
            .unwrap();
    }

    /// A send cut off mid-data (here while the modem holds XOFF): the
    /// hang-up ends the data mode with DLE ETX first, so the modem hears
    /// `ATH0` as a command, not as more page data.
    #[tokio::test]
    async fn a_hangup_after_a_cut_off_send_ends_the_data_first() {
        let mut m = scripted(vec![
            (b"AT+FTS=8\r", b"\r\nOK\r\n"),
            (b"AT+FTM=96\r", b"\r\nCONNECT\r\n\x13"),
            (b"\x10\x03\x10\x03\r", b"\r\nOK\r\n"),
            (b"ATH0\r", b"\r\nOK\r\n"),
        ])
        .await;
        let cut = tokio::time::timeout(
            Duration::from_millis(300),
            m.send_data(Modem::V29_9600, Training::Short, &[0x55; 4096]),
        )
        .await;
        assert!(cut.is_err(), "the send was not cut off: {cut:?}");
        m.hangup().await.unwrap();
    }

    /// NO CARRIER while page data goes out (the far end hung up) ends the
    /// send at once, though the code comes after a blank line.
    #[tokio::test]
    async fn no_carrier_during_a_send_ends_it() {
        let (dte, mut dce) = tokio::io::duplex(1 << 12);
        // The modem: OK, CONNECT, then at once NO CARRIER; it counts the
        // data that still comes after that.
        let modem = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut b = [0u8; 4096];
            for (expect, answer) in [
                (&b"AT+FTS=8\r"[..], &b"\r\nOK\r\n"[..]),
                (b"AT+FTM=96\r", b"\r\nCONNECT\r\n\r\nNO CARRIER\r\n"),
            ] {
                while !got.ends_with(expect) {
                    let n = dce.read(&mut b).await.unwrap();
                    got.extend_from_slice(&b[..n]);
                }
                got.clear();
                dce.write_all(answer).await.unwrap();
            }
            let mut after = 0;
            while let Ok(n) = dce.read(&mut b).await {
                if n == 0 {
                    break;
                }
                after += n;
            }
            after
        });
        let mut m = Class1::new(dte);
        let e = m
            .send_data(Modem::V29_9600, Training::Short, &vec![0x55; 1 << 20])
            .await
            .unwrap_err();
        assert!(e.to_string().contains("NoCarrier"), "{e}");
        drop(m);
        let after = modem.await.unwrap();
        assert!(after < 64 * 1024, "{after} bytes of data after NO CARRIER");
    }

    #[test]
    fn the_first_result_code_is_found_past_blank_lines() {
        assert_eq!(
            first_result(b"\r\nNO CARRIER\r\n"),
            Some(Response::NoCarrier)
        );
        assert_eq!(first_result(b"\r\nERROR\r"), Some(Response::Error));
        assert_eq!(first_result(b"\r\n24,48\r\nOK\r\n"), None);
        assert_eq!(first_result(b"\r\nNO CAR"), None);
    }

    #[tokio::test]
    async fn dialing_reports_busy() {
        let mut m = scripted(vec![(b"ATDT123\r", b"\r\nBUSY\r\n")]).await;
        let e = m.dial("123", Duration::from_secs(5)).await.unwrap_err();
        assert!(e.to_string().contains("Busy"), "{e}");
        let e = m.dial("12;3", Duration::from_secs(5)).await.unwrap_err();
        assert!(e.to_string().contains("not a dial string"), "{e}");
    }
}
