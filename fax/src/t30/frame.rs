//! T.30 HDLC control frames: FCF values, parsing and building of frames,
//! and the information fields (FIF) the engine uses: DIS/DTC/DCS bits,
//! CSI/TSI identities, NSF/NSS, PPS, PPR and the T.4 Annex A ECM frames.
//!
//! Octet values follow T.30 as spandsp's `t30.c` holds them: bit 1 of a
//! field is the least significant bit of its first octet (HDLC sends each
//! octet LSB first), so DIS bit N is `fif[(N - 1) / 8] & (1 << ((N - 1) % 8))`.
//! The FCF values are those of spandsp `src/spandsp/t30_fcf.h` with the X
//! bit (0x01) clear. T.38 carries HDLC octets bit-reversed (spandsp
//! `t38_gateway.c` runs `bit_reverse` over `T38_FIELD_HDLC_DATA`), which is
//! the session layer's business, not this module's.
//!
//! Parsers never panic and accept anything of the right shape, because
//! they face bytes from the network (and fuzzers).

use super::{Capabilities, Params};
use crate::Resolution;

/// The HDLC address octet of every T.30 frame (T.30 5.3.4).
pub const ADDRESS: u8 = 0xFF;
/// HDLC control octet of a frame that is followed by more frames in the
/// same burst (T.30 5.3.5: "not final").
pub const CONTROL_NON_FINAL: u8 = 0x03;
/// HDLC control octet of the last frame of a burst (the final frame bit).
pub const CONTROL_FINAL: u8 = 0x13;
/// The X bit of an FCF (T.30 5.3.6.1): 1 in frames sent by the station
/// that received a valid DIS, 0 in those of the other station.
pub const X_BIT: u8 = 0x01;

/// FCF octets with the X bit clear (values from spandsp `t30_fcf.h`).
///
/// OR in [`X_BIT`] for frames sent by the station that received DIS. The
/// initial identification group (DIS/CSI/NSF and DTC/CIG/NSC) and the T.4
/// ECM frames (FCD/RCP) have no X bit: their low bit is fixed.
pub mod fcf {
    /// Digital identification signal: the called station's capabilities.
    pub const DIS: u8 = 0x80;
    /// Called subscriber identification.
    pub const CSI: u8 = 0x40;
    /// Non-standard facilities (sent with DIS).
    pub const NSF: u8 = 0x20;
    /// Digital transmit command (polling; not supported here).
    pub const DTC: u8 = 0x81;
    /// Calling subscriber identification (polling).
    pub const CIG: u8 = 0x41;
    /// Non-standard facilities command (polling).
    pub const NSC: u8 = 0x21;
    /// Password (polling or sending).
    pub const PWD: u8 = 0xC0;
    /// Digital command signal: the sender's choice of parameters.
    pub const DCS: u8 = 0x82;
    /// Transmitting subscriber identification.
    pub const TSI: u8 = 0x42;
    /// Non-standard facilities set-up (sent with DCS).
    pub const NSS: u8 = 0x22;
    /// Subaddress.
    pub const SUB: u8 = 0xC2;
    /// Sender identification.
    pub const SID: u8 = 0xA2;
    /// Transmitting subscriber internet address.
    pub const TSA: u8 = 0x62;
    /// Internet routing address.
    pub const IRA: u8 = 0xE2;
    /// Continue to correct (ECM).
    pub const CTC: u8 = 0x12;
    /// Confirmation to receive.
    pub const CFR: u8 = 0x84;
    /// Failure to train.
    pub const FTT: u8 = 0x44;
    /// Response to continue to correct.
    pub const CTR: u8 = 0xC4;
    /// End of message: another document follows, back to phase B.
    pub const EOM: u8 = 0x8E;
    /// Multipage signal: another page with the same parameters follows.
    pub const MPS: u8 = 0x4E;
    /// End of procedure: that was the last page.
    pub const EOP: u8 = 0x2E;
    /// Procedure interrupt EOM.
    pub const PRI_EOM: u8 = 0x9E;
    /// Procedure interrupt MPS.
    pub const PRI_MPS: u8 = 0x5E;
    /// Procedure interrupt EOP.
    pub const PRI_EOP: u8 = 0x3E;
    /// Partial page signal (ECM).
    pub const PPS: u8 = 0xBE;
    /// End of retransmission (ECM).
    pub const EOR: u8 = 0xCE;
    /// Receiver ready? (ECM, after RNR).
    pub const RR: u8 = 0x6E;
    /// Message confirmation: the page (or partial page) is good.
    pub const MCF: u8 = 0x8C;
    /// Retrain positive: page good, retrain before the next one.
    pub const RTP: u8 = 0xCC;
    /// Retrain negative: page bad, retrain and send it again.
    pub const RTN: u8 = 0x4C;
    /// Procedure interrupt positive.
    pub const PIP: u8 = 0xAC;
    /// Procedure interrupt negative.
    pub const PIN: u8 = 0x2C;
    /// Partial page request: these ECM frames are missing.
    pub const PPR: u8 = 0xBC;
    /// Receive not ready (ECM).
    pub const RNR: u8 = 0xEC;
    /// Response to end of retransmission.
    pub const ERR: u8 = 0x1C;
    /// Disconnect.
    pub const DCN: u8 = 0xFA;
    /// Command repeat: the last frame was not understood, say it again.
    pub const CRP: u8 = 0x1A;
    /// Field not valid.
    pub const FNV: u8 = 0xCA;
    /// The "nothing" post-page value in PPS (a block that is not a page end).
    pub const NULL: u8 = 0x00;
    /// T.4 Annex A facsimile coded data frame.
    pub const FCD: u8 = 0x06;
    /// T.4 Annex A return to control for partial page.
    pub const RCP: u8 = 0x86;
}

/// A frame's FCF, decoded with T.30's X-bit rules, so that callers match
/// on meaning rather than on octets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fcf {
    /// Digital identification signal.
    Dis,
    /// Called subscriber identification.
    Csi,
    /// Non-standard facilities.
    Nsf,
    /// Digital transmit command (polling).
    Dtc,
    /// Calling subscriber identification (polling).
    Cig,
    /// Non-standard facilities command (polling).
    Nsc,
    /// Password.
    Pwd,
    /// Digital command signal.
    Dcs,
    /// Transmitting subscriber identification.
    Tsi,
    /// Non-standard facilities set-up.
    Nss,
    /// Subaddress.
    Sub,
    /// Sender identification.
    Sid,
    /// Transmitting subscriber internet address.
    Tsa,
    /// Internet routing address.
    Ira,
    /// Continue to correct.
    Ctc,
    /// Confirmation to receive.
    Cfr,
    /// Failure to train.
    Ftt,
    /// Response to continue to correct.
    Ctr,
    /// End of message.
    Eom,
    /// Multipage signal.
    Mps,
    /// End of procedure.
    Eop,
    /// Procedure interrupt EOM.
    PriEom,
    /// Procedure interrupt MPS.
    PriMps,
    /// Procedure interrupt EOP.
    PriEop,
    /// Partial page signal.
    Pps,
    /// End of retransmission.
    Eor,
    /// Receiver ready?
    Rr,
    /// Message confirmation.
    Mcf,
    /// Retrain positive.
    Rtp,
    /// Retrain negative.
    Rtn,
    /// Procedure interrupt positive.
    Pip,
    /// Procedure interrupt negative.
    Pin,
    /// Partial page request.
    Ppr,
    /// Receive not ready.
    Rnr,
    /// Response to end of retransmission.
    Err,
    /// Disconnect.
    Dcn,
    /// Command repeat.
    Crp,
    /// Field not valid.
    Fnv,
    /// NULL (the PPS value of a block that does not end a page).
    Null,
    /// Facsimile coded data (T.4 Annex A).
    Fcd,
    /// Return to control for partial page (T.4 Annex A).
    Rcp,
    /// Any other octet, kept for error messages.
    Unknown(u8),
}

impl Fcf {
    /// Decodes an FCF octet. The initial identification group and the ECM
    /// frames are matched exactly (their low bit is part of the code:
    /// DIS 0x80 versus DTC 0x81); every other FCF is matched with the X bit
    /// masked off, as spandsp's receiver does (`msg[2] & 0xFE`), so frames
    /// from either station are accepted.
    pub fn from_byte(b: u8) -> Fcf {
        match b {
            fcf::DIS => return Fcf::Dis,
            fcf::CSI => return Fcf::Csi,
            fcf::NSF => return Fcf::Nsf,
            fcf::DTC => return Fcf::Dtc,
            fcf::CIG => return Fcf::Cig,
            fcf::NSC => return Fcf::Nsc,
            fcf::FCD => return Fcf::Fcd,
            fcf::RCP => return Fcf::Rcp,
            _ => {}
        }
        match b & !X_BIT {
            fcf::PWD => Fcf::Pwd,
            fcf::DCS => Fcf::Dcs,
            fcf::TSI => Fcf::Tsi,
            fcf::NSS => Fcf::Nss,
            fcf::SUB => Fcf::Sub,
            fcf::SID => Fcf::Sid,
            fcf::TSA => Fcf::Tsa,
            fcf::IRA => Fcf::Ira,
            fcf::CTC => Fcf::Ctc,
            fcf::CFR => Fcf::Cfr,
            fcf::FTT => Fcf::Ftt,
            fcf::CTR => Fcf::Ctr,
            fcf::EOM => Fcf::Eom,
            fcf::MPS => Fcf::Mps,
            fcf::EOP => Fcf::Eop,
            fcf::PRI_EOM => Fcf::PriEom,
            fcf::PRI_MPS => Fcf::PriMps,
            fcf::PRI_EOP => Fcf::PriEop,
            fcf::PPS => Fcf::Pps,
            fcf::EOR => Fcf::Eor,
            fcf::RR => Fcf::Rr,
            fcf::MCF => Fcf::Mcf,
            fcf::RTP => Fcf::Rtp,
            fcf::RTN => Fcf::Rtn,
            fcf::PIP => Fcf::Pip,
            fcf::PIN => Fcf::Pin,
            fcf::PPR => Fcf::Ppr,
            fcf::RNR => Fcf::Rnr,
            fcf::ERR => Fcf::Err,
            fcf::DCN => Fcf::Dcn,
            fcf::CRP => Fcf::Crp,
            fcf::FNV => Fcf::Fnv,
            fcf::NULL => Fcf::Null,
            _ => Fcf::Unknown(b),
        }
    }

    /// The T.30 mnemonic, for logs and failure messages.
    pub fn name(self) -> &'static str {
        match self {
            Fcf::Dis => "DIS",
            Fcf::Csi => "CSI",
            Fcf::Nsf => "NSF",
            Fcf::Dtc => "DTC",
            Fcf::Cig => "CIG",
            Fcf::Nsc => "NSC",
            Fcf::Pwd => "PWD",
            Fcf::Dcs => "DCS",
            Fcf::Tsi => "TSI",
            Fcf::Nss => "NSS",
            Fcf::Sub => "SUB",
            Fcf::Sid => "SID",
            Fcf::Tsa => "TSA",
            Fcf::Ira => "IRA",
            Fcf::Ctc => "CTC",
            Fcf::Cfr => "CFR",
            Fcf::Ftt => "FTT",
            Fcf::Ctr => "CTR",
            Fcf::Eom => "EOM",
            Fcf::Mps => "MPS",
            Fcf::Eop => "EOP",
            Fcf::PriEom => "PRI-EOM",
            Fcf::PriMps => "PRI-MPS",
            Fcf::PriEop => "PRI-EOP",
            Fcf::Pps => "PPS",
            Fcf::Eor => "EOR",
            Fcf::Rr => "RR",
            Fcf::Mcf => "MCF",
            Fcf::Rtp => "RTP",
            Fcf::Rtn => "RTN",
            Fcf::Pip => "PIP",
            Fcf::Pin => "PIN",
            Fcf::Ppr => "PPR",
            Fcf::Rnr => "RNR",
            Fcf::Err => "ERR",
            Fcf::Dcn => "DCN",
            Fcf::Crp => "CRP",
            Fcf::Fnv => "FNV",
            Fcf::Null => "NULL",
            Fcf::Fcd => "FCD",
            Fcf::Rcp => "RCP",
            Fcf::Unknown(_) => "unknown FCF",
        }
    }
}

/// Why bytes are not a usable T.30 frame or field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Fewer than the three octets every frame has.
    #[error("frame of {len} bytes is too short (address, control and FCF need 3)")]
    TooShort {
        /// Bytes received.
        len: usize,
    },
    /// The address octet is not 0xFF.
    #[error("bad HDLC address 0x{0:02X} (T.30 uses 0xFF)")]
    BadAddress(u8),
    /// The control octet is neither 0x03 nor 0x13.
    #[error("bad HDLC control 0x{0:02X} (T.30 uses 0x03 or 0x13)")]
    BadControl(u8),
    /// An information field that does not fit its frame type.
    #[error("bad {field}: {reason}")]
    BadField {
        /// Which field (DIS, DCS, PPS, ...).
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

fn bad_field(field: &'static str, reason: impl Into<String>) -> FrameError {
    FrameError::BadField {
        field,
        reason: reason.into(),
    }
}

/// One parsed HDLC frame, borrowing the FIF from the received bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The control octet was 0x13: this frame ends its burst.
    pub final_frame: bool,
    /// The FCF octet as received (X bit included).
    pub fcf_byte: u8,
    /// The decoded FCF.
    pub fcf: Fcf,
    /// The facsimile information field (everything after the FCF).
    pub fif: &'a [u8],
}

impl<'a> Frame<'a> {
    /// Parses address, control and FCF; the FIF is not interpreted here.
    pub fn parse(bytes: &'a [u8]) -> Result<Frame<'a>, FrameError> {
        let [address, control, fcf_byte, fif @ ..] = bytes else {
            return Err(FrameError::TooShort { len: bytes.len() });
        };
        if *address != ADDRESS {
            return Err(FrameError::BadAddress(*address));
        }
        let final_frame = match *control {
            CONTROL_FINAL => true,
            CONTROL_NON_FINAL => false,
            other => return Err(FrameError::BadControl(other)),
        };
        Ok(Frame {
            final_frame,
            fcf_byte: *fcf_byte,
            fcf: Fcf::from_byte(*fcf_byte),
            fif,
        })
    }

    /// "DCS (FCF 0x83)": how failure messages name a frame.
    pub fn describe(&self) -> String {
        format!("{} (FCF 0x{:02X})", self.fcf.name(), self.fcf_byte)
    }
}

/// Builds one frame: address, control (final or not), FCF, FIF.
pub fn build(fcf_byte: u8, fif: &[u8], final_frame: bool) -> Vec<u8> {
    let mut f = Vec::with_capacity(3 + fif.len());
    f.push(ADDRESS);
    f.push(if final_frame {
        CONTROL_FINAL
    } else {
        CONTROL_NON_FINAL
    });
    f.push(fcf_byte);
    f.extend_from_slice(fif);
    f
}

/// Marks the last frame of a burst final and the others not final, as
/// T.30 5.3.5 requires of a V.21 burst.
pub fn seal_burst(frames: &mut [Vec<u8>]) {
    let n = frames.len();
    for (i, f) in frames.iter_mut().enumerate() {
        if let Some(c) = f.get_mut(1) {
            *c = if i + 1 == n {
                CONTROL_FINAL
            } else {
                CONTROL_NON_FINAL
            };
        }
    }
}

// ---------------------------------------------------------------------------
// DIS / DTC / DCS bits (T.30 Table 2; numbers from spandsp
// `src/spandsp/private/t30_dis_dtc_dcs_bits.h`).

/// DIS/DTC bit 10: ready to receive a fax document; in DCS: "receive".
pub const BIT_READY_TO_RECEIVE: u32 = 10;
/// Modem type field, bits 11-14 (spandsp `T30_DIS_BIT_MODEM_TYPE_1..4`).
pub const BIT_MODEM_1: u32 = 11;
/// Modem type bit 12.
pub const BIT_MODEM_2: u32 = 12;
/// Modem type bit 13.
pub const BIT_MODEM_3: u32 = 13;
/// Modem type bit 14.
pub const BIT_MODEM_4: u32 = 14;
/// R8 x 7.7 lines/mm (fine) / 200 x 200 (spandsp `T30_DIS_BIT_200_200_CAPABLE`).
pub const BIT_FINE: u32 = 15;
/// Two-dimensional coding (MR) (spandsp `T30_DIS_BIT_2D_CAPABLE`).
pub const BIT_2D: u32 = 16;
/// Recording width field, bits 17-18.
pub const BIT_WIDTH_1: u32 = 17;
/// Recording width bit 18.
pub const BIT_WIDTH_2: u32 = 18;
/// Recording length: A4 and B4 (bit 19).
pub const BIT_LENGTH_B4: u32 = 19;
/// Recording length: unlimited (bit 20).
pub const BIT_LENGTH_UNLIMITED: u32 = 20;
/// Minimum scan line time field, bits 21-23 (all three set: 0 ms).
pub const BIT_MIN_SCAN_1: u32 = 21;
/// ECM (spandsp `T30_DIS_BIT_ECM_CAPABLE`).
pub const BIT_ECM: u32 = 27;
/// In DCS: 64-octet ECM frames (0 = 256 octets).
pub const BIT_ECM_64_OCTETS: u32 = 28;
/// T.6 coding (MMR); valid only with ECM (spandsp `T30_DIS_BIT_T6_CAPABLE`).
pub const BIT_T6: u32 = 31;
/// R8 x 15.4 lines/mm (superfine) / 200 x 400.
pub const BIT_SUPERFINE: u32 = 41;
/// 300 x 300 pels/25.4 mm.
pub const BIT_300_300: u32 = 42;
/// R16 x 15.4 lines/mm and/or 400 x 400 pels/25.4 mm.
pub const BIT_400_400: u32 = 43;
/// DIS: inch-based resolution preferred; DCS: inch-based resolution.
pub const BIT_INCH: u32 = 44;
/// DIS: metric-based resolution preferred.
pub const BIT_METRIC: u32 = 45;
/// DIS: the minimum scan line time at superfine (and 400 dpi) is half the
/// fine one (spandsp `T30_DIS_BIT_MIN_SCAN_TIME_HALVES`).
pub const BIT_MIN_SCAN_HALVES: u32 = 46;

/// The DIS modem fields (bits 11-14, bit 11 the least significant) a
/// T.30 sender can use, best first: V.17, V.29 and V.27 ter (bits 11, 12
/// and 14, as spandsp offers them); V.29 and V.27 ter; V.29 alone; V.27
/// ter; V.27 ter's 2 400 fall-back mode. Over T.38 on TCP the modem is
/// notional, but real receivers check the field.
const DIS_MODEM_FIELDS: [u8; 5] = [0b1011, 0b0011, 0b0001, 0b0010, 0b0000];
/// A high-speed modem and bit rate a DCS can select (T.30 Table 2 bits
/// 11-14). Over T.38 on TCP the modem is notional, but a gateway to a real
/// line trains it, and the session layer names it in the T.38 data type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Modem {
    /// V.17 at 14 400 bit/s.
    V17_14400,
    /// V.17 at 12 000 bit/s.
    V17_12000,
    /// V.17 at 9 600 bit/s.
    V17_9600,
    /// V.29 at 9 600 bit/s.
    V29_9600,
    /// V.17 at 7 200 bit/s.
    V17_7200,
    /// V.29 at 7 200 bit/s.
    V29_7200,
    /// V.27 ter at 4 800 bit/s.
    V27ter4800,
    /// V.27 ter at 2 400 bit/s.
    V27ter2400,
}

/// Which modem family a [`Modem`] belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    V17,
    V29,
    V27ter,
}

impl Modem {
    /// spandsp's `fallback_sequence`: fastest first, the order a sender
    /// steps down in after FTT.
    pub const FALLBACK: [Modem; 8] = [
        Modem::V17_14400,
        Modem::V17_12000,
        Modem::V17_9600,
        Modem::V29_9600,
        Modem::V17_7200,
        Modem::V29_7200,
        Modem::V27ter4800,
        Modem::V27ter2400,
    ];

    /// The bit rate.
    pub fn bit_rate(self) -> u32 {
        match self {
            Modem::V17_14400 => 14_400,
            Modem::V17_12000 => 12_000,
            Modem::V17_9600 | Modem::V29_9600 => 9_600,
            Modem::V17_7200 | Modem::V29_7200 => 7_200,
            Modem::V27ter4800 => 4_800,
            Modem::V27ter2400 => 2_400,
        }
    }

    fn family(self) -> Family {
        match self {
            Modem::V17_14400 | Modem::V17_12000 | Modem::V17_9600 | Modem::V17_7200 => Family::V17,
            Modem::V29_9600 | Modem::V29_7200 => Family::V29,
            Modem::V27ter4800 | Modem::V27ter2400 => Family::V27ter,
        }
    }

    /// The DCS bits (of 11-14) that select it: spandsp's `dcs_code`
    /// (DISBIT3..6 of octet 2 are bits 11..14).
    fn dcs_bits(self) -> &'static [u32] {
        match self {
            Modem::V17_14400 => &[BIT_MODEM_4],
            Modem::V17_12000 => &[BIT_MODEM_4, BIT_MODEM_2],
            Modem::V17_9600 => &[BIT_MODEM_4, BIT_MODEM_1],
            Modem::V29_9600 => &[BIT_MODEM_1],
            Modem::V17_7200 => &[BIT_MODEM_4, BIT_MODEM_2, BIT_MODEM_1],
            Modem::V29_7200 => &[BIT_MODEM_2, BIT_MODEM_1],
            Modem::V27ter4800 => &[BIT_MODEM_2],
            Modem::V27ter2400 => &[],
        }
    }

    /// The modem a DCS selects, if its bits 11-14 are one of the codes.
    pub fn from_dcs(fif: &[u8]) -> Option<Modem> {
        let field = modem_field(fif);
        Modem::FALLBACK.into_iter().find(|m| {
            m.dcs_bits()
                .iter()
                .fold(0, |a, &b| a | 1 << (b - BIT_MODEM_1))
                == field
        })
    }

    /// What a DIS (or DTC) lets a sender use, in the order to try them
    /// (spandsp `process_rx_dis_dtc`): V.17, V.29 and V.27 ter (bits 11,
    /// 12, 14) start at V.17 14 400; V.29 and V.27 ter (11, 12) at V.29
    /// 9 600; V.29 alone (11) has V.29 only; V.27 ter (12) starts at
    /// 4 800; no bit at all is V.27 ter's 2 400 fall-back mode. Any other
    /// field offers nothing a T.30 sender can use: `None`.
    pub fn permitted_by_dis(fif: &[u8]) -> Option<Vec<Modem>> {
        Modem::permitted_by_field(modem_field(fif))
    }

    /// [`Modem::permitted_by_dis`] for the field of bits 11-14 as a number
    /// (bit 11 the least significant).
    fn permitted_by_field(field: u8) -> Option<Vec<Modem>> {
        let (families, start): (&[Family], Modem) = match field {
            0b1011 => (
                &[Family::V17, Family::V29, Family::V27ter],
                Modem::V17_14400,
            ),
            0b0011 => (&[Family::V29, Family::V27ter], Modem::V29_9600),
            0b0001 => (&[Family::V29], Modem::V29_9600),
            0b0010 => (&[Family::V27ter], Modem::V27ter4800),
            0b0000 => (&[Family::V27ter], Modem::V27ter2400),
            _ => return None,
        };
        let from = Modem::FALLBACK.iter().position(|m| *m == start)?;
        Some(
            Modem::FALLBACK[from..]
                .iter()
                .copied()
                .filter(|m| families.contains(&m.family()))
                .collect(),
        )
    }
}

/// Bits 11-14 as a number, bit 11 the least significant.
fn modem_field(fif: &[u8]) -> u8 {
    (BIT_MODEM_1..=BIT_MODEM_4)
        .enumerate()
        .fold(0, |a, (i, b)| a | u8::from(bit(fif, b)) << i)
}

/// The minimum scan line time a DCS declares (bits 21-23), which the
/// sender's coding must then respect with fill bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MinScan {
    /// 0 ms: no fill.
    Ms0,
    /// 5 ms.
    Ms5,
    /// 10 ms.
    Ms10,
    /// 20 ms.
    Ms20,
    /// 40 ms.
    Ms40,
}

impl MinScan {
    /// Milliseconds.
    pub fn millis(self) -> u32 {
        match self {
            MinScan::Ms0 => 0,
            MinScan::Ms5 => 5,
            MinScan::Ms10 => 10,
            MinScan::Ms20 => 20,
            MinScan::Ms40 => 40,
        }
    }

    /// The DCS code of bits 21-23 (bit 21 the least significant), as
    /// spandsp's `T30_MIN_SCAN_*`.
    fn dcs_code(self) -> u8 {
        match self {
            MinScan::Ms20 => 0,
            MinScan::Ms5 => 1,
            MinScan::Ms10 => 2,
            MinScan::Ms40 => 4,
            MinScan::Ms0 => 7,
        }
    }

    /// The minimum bits per coded line (EOL included) at `modem`'s rate.
    pub fn line_bits(self, modem: Modem) -> u32 {
        modem.bit_rate() * self.millis() / 1000
    }

    /// What a sender must declare (and respect) for a page at
    /// `resolution` to a receiver whose DIS is `fif` (spandsp
    /// `set_min_scan_time_code`). ECM and T.6 pages need none.
    pub fn for_dis(fif: &[u8], resolution: Resolution, ecm: bool) -> MinScan {
        use MinScan::*;
        if ecm {
            return Ms0;
        }
        // The DIS field (bits 21-23) by resolution row: standard, fine,
        // and superfine when the DIS halves the fine time (bit 46).
        const TRANSLATE: [[MinScan; 8]; 3] = [
            [Ms20, Ms5, Ms10, Ms20, Ms40, Ms40, Ms10, Ms0],
            [Ms20, Ms5, Ms10, Ms10, Ms40, Ms20, Ms5, Ms0],
            [Ms10, Ms5, Ms5, Ms5, Ms20, Ms10, Ms5, Ms0],
        ];
        let field = (BIT_MIN_SCAN_1..BIT_MIN_SCAN_1 + 3)
            .enumerate()
            .fold(0usize, |a, (i, b)| a | usize::from(bit(fif, b)) << i);
        let row = match resolution {
            Resolution::Fine => 1,
            Resolution::SuperFine | Resolution::R400 if bit(fif, BIT_MIN_SCAN_HALVES) => 2,
            Resolution::SuperFine | Resolution::R400 => 1,
            Resolution::Standard | Resolution::R300 => 0,
        };
        TRANSLATE[row][field]
    }
}

/// The shortest DIS/DTC/DCS FIF T.30 allows (bits 1-24).
pub const MIN_DIS_LEN: usize = 3;

/// Whether bit `n` (1-based, T.30 numbering) is set; absent octets are 0.
pub fn bit(fif: &[u8], n: u32) -> bool {
    let Some(i) = n.checked_sub(1) else {
        return false;
    };
    fif.get((i / 8) as usize)
        .is_some_and(|o| o & (1 << (i % 8)) != 0)
}

/// Sets bit `n` (1-based), growing the field as needed.
pub fn set_bit(fif: &mut Vec<u8>, n: u32) {
    let Some(i) = n.checked_sub(1) else {
        return;
    };
    let idx = (i / 8) as usize;
    if fif.len() <= idx {
        fif.resize(idx + 1, 0);
    }
    fif[idx] |= 1 << (i % 8);
}

/// Trims a DIS/DCS field to the octets that carry set bits (at least
/// three) and sets the extend bits (24, 32, 40, ...) on every octet but
/// the last, as spandsp's `prune_dis_dtc` / `prune_dcs` do.
fn finish_fif(mut fif: Vec<u8>) -> Vec<u8> {
    fif.resize(fif.len().max(MIN_DIS_LEN), 0);
    for o in fif.iter_mut().skip(2) {
        *o &= 0x7F;
    }
    let mut len = fif.len();
    while len > MIN_DIS_LEN && fif[len - 1] == 0 {
        len -= 1;
    }
    fif.truncate(len);
    for o in fif.iter_mut().take(len - 1).skip(2) {
        *o |= 0x80;
    }
    fif
}

/// The recording lengths of DIS bits 19-20, which DCS must not exceed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PageLength {
    /// A4 (297 mm) only: both bits clear.
    A4,
    /// A4 and B4 (364 mm): bit 19.
    B4,
    /// Unlimited: bit 20.
    Unlimited,
}

/// The page length a DIS offers (bits 19/20; the invalid "both" is read
/// as B4, the safe choice).
pub fn dis_page_length(fif: &[u8]) -> PageLength {
    match (bit(fif, BIT_LENGTH_B4), bit(fif, BIT_LENGTH_UNLIMITED)) {
        (false, true) => PageLength::Unlimited,
        (true, _) => PageLength::B4,
        (false, false) => PageLength::A4,
    }
}

/// Whether a DIS says the station can receive (bit 10). A DIS without it
/// comes from a station that only has documents to be polled.
pub fn dis_ready_to_receive(fif: &[u8]) -> bool {
    bit(fif, BIT_READY_TO_RECEIVE)
}

/// The scan line widths, in pixels, of the three T.4 paper widths (A4,
/// B4, A3) at a resolution (T.4 Table 1): 1728/2048/2432 at 8 pels/mm,
/// 2592/3072/3648 at 300 dpi, 3456/4096/4864 at 400 dpi.
pub fn line_widths(resolution: Resolution) -> [u32; 3] {
    match resolution {
        Resolution::R300 => [2592, 3072, 3648],
        Resolution::R400 => [3456, 4096, 4864],
        Resolution::Standard | Resolution::Fine | Resolution::SuperFine => {
            [crate::width::A4, crate::width::B4, crate::width::A3]
        }
    }
}

/// The paper width class (0 = A4, 1 = B4, 2 = A3) of a scan line of
/// `width` pixels at `resolution`, if it is a T.4 width.
pub fn width_class(width: u32, resolution: Resolution) -> Option<usize> {
    line_widths(resolution).iter().position(|&w| w == width)
}

impl Capabilities {
    /// The DIS FIF that offers these capabilities, as the answerer sends
    /// it: ready to receive, the modems of [`Capabilities::modems`] (V.27
    /// ter/V.29/V.17 when it is empty), unlimited length, 0 ms minimum
    /// scan line time, no 64-octet ECM preference.
    ///
    /// The modem field is the best one (of [`DIS_MODEM_FIELDS`]) that lets
    /// a sender use only allowed modems: V.29 and V.27 ter without V.17,
    /// for example. If no field fits (a list without V.27 ter 2 400 and
    /// without both V.29 rates, say), it is the one that allows at least
    /// one listed modem and the fewest unlisted ones (the best of those
    /// on a tie).
    ///
    /// DIS cannot say "A3 but not B4" (bits 17-18 offer A4, A4+B4 or
    /// A4+B4+A3), so such a set is offered as A4 only; and T.6 is offered
    /// only together with ECM, as T.30 requires (spandsp does the same).
    /// Bits 44/45 (inch/metric preferred) are set only when a resolution
    /// beyond standard is offered, since T.30 uses them only with bits 15
    /// and 41-43.
    pub fn to_dis_fif(&self) -> Vec<u8> {
        let mut fif = Vec::new();
        set_bit(&mut fif, BIT_READY_TO_RECEIVE);
        let field = self.dis_modem_field();
        for (i, b) in (BIT_MODEM_1..=BIT_MODEM_4).enumerate() {
            if field & 1 << i != 0 {
                set_bit(&mut fif, b);
            }
        }
        let res = |r| self.resolutions.contains(&r);
        if res(Resolution::Fine) {
            set_bit(&mut fif, BIT_FINE);
        }
        if self.mr {
            set_bit(&mut fif, BIT_2D);
        }
        match (self.has_width_class(1), self.has_width_class(2)) {
            (true, true) => set_bit(&mut fif, BIT_WIDTH_2),
            (true, false) => set_bit(&mut fif, BIT_WIDTH_1),
            (false, _) => {}
        }
        set_bit(&mut fif, BIT_LENGTH_UNLIMITED);
        for b in BIT_MIN_SCAN_1..BIT_MIN_SCAN_1 + 3 {
            set_bit(&mut fif, b);
        }
        if self.ecm {
            set_bit(&mut fif, BIT_ECM);
            if self.mmr {
                set_bit(&mut fif, BIT_T6);
            }
        }
        if res(Resolution::SuperFine) {
            set_bit(&mut fif, BIT_SUPERFINE);
        }
        if res(Resolution::R300) {
            set_bit(&mut fif, BIT_300_300);
        }
        if res(Resolution::R400) {
            set_bit(&mut fif, BIT_400_400);
        }
        if res(Resolution::R300) || res(Resolution::R400) {
            set_bit(&mut fif, BIT_INCH);
        }
        if res(Resolution::Fine)
            || res(Resolution::SuperFine)
            || res(Resolution::R300)
            || res(Resolution::R400)
        {
            set_bit(&mut fif, BIT_METRIC);
        }
        finish_fif(fif)
    }

    /// The DIS modem field (bits 11-14 as a number, bit 11 the least
    /// significant) for [`Capabilities::modems`]; see
    /// [`Capabilities::to_dis_fif`].
    fn dis_modem_field(&self) -> u8 {
        DIS_MODEM_FIELDS
            .into_iter()
            .enumerate()
            .filter_map(|(rank, field)| {
                let permitted = Modem::permitted_by_field(field).unwrap_or_default();
                let (ok, not): (Vec<Modem>, Vec<Modem>) =
                    permitted.into_iter().partition(|m| self.allows_modem(*m));
                (!ok.is_empty()).then_some((not.len(), rank, field))
            })
            .min()
            .map_or(DIS_MODEM_FIELDS[0], |(_, _, field)| field)
    }

    /// Reads the capabilities a received DIS (or DTC) offers. Only a field
    /// shorter than T.30's minimum of three octets is an error; absent
    /// octets read as zero, as in spandsp's `analyze_rx_dis_dtc`. MMR is
    /// taken as offered only together with ECM.
    /// [`Capabilities::modems`] is left empty: the modem field is read by
    /// [`Modem::permitted_by_dis`], which can also say that it offers
    /// nothing usable.
    pub fn from_dis_fif(fif: &[u8]) -> Result<Capabilities, FrameError> {
        if fif.len() < MIN_DIS_LEN {
            return Err(bad_field(
                "DIS",
                format!("{} octets; T.30 needs at least {MIN_DIS_LEN}", fif.len()),
            ));
        }
        let mut resolutions = vec![Resolution::Standard];
        for (b, r) in [
            (BIT_FINE, Resolution::Fine),
            (BIT_SUPERFINE, Resolution::SuperFine),
            (BIT_300_300, Resolution::R300),
            (BIT_400_400, Resolution::R400),
        ] {
            if bit(fif, b) {
                resolutions.push(r);
            }
        }
        let classes = match (bit(fif, BIT_WIDTH_1), bit(fif, BIT_WIDTH_2)) {
            (true, false) => 2,
            (false, true) => 3,
            // (1,1) is invalid in T.30 Table 2: assume the minimum.
            _ => 1,
        };
        let widths = line_widths(Resolution::Standard)[..classes].to_vec();
        let ecm = bit(fif, BIT_ECM);
        Ok(Capabilities {
            resolutions,
            widths,
            mr: bit(fif, BIT_2D),
            mmr: ecm && bit(fif, BIT_T6),
            ecm,
            modems: Vec::new(),
        })
    }
}

impl Params {
    /// The DCS FIF for these parameters, with unlimited page length. See
    /// [`Params::to_dcs_fif_with_length`].
    pub fn to_dcs_fif(&self) -> Vec<u8> {
        self.to_dcs_fif_with_length(PageLength::Unlimited)
    }

    /// The DCS FIF for these parameters with V.17 14 400 and a 0 ms
    /// minimum scan line time. See [`Params::to_dcs_fif_with`].
    pub fn to_dcs_fif_with_length(&self, length: PageLength) -> Vec<u8> {
        self.to_dcs_fif_with(length, Modem::V17_14400, MinScan::Ms0)
    }

    /// The DCS FIF for these parameters: receive, `modem`, `min_scan`,
    /// 256-octet ECM frames, and `length` (the longest the receiver's DIS
    /// offered, see [`dis_page_length`]). Resolution bits follow
    /// spandsp's `build_dcs`: fine = bit 15, superfine = bit 41, 300x300 =
    /// bit 42 + inch bit 44, 400x400 = bit 43 + bit 44. A width that is
    /// not a T.4 scan line encodes as A4.
    pub fn to_dcs_fif_with(&self, length: PageLength, modem: Modem, min_scan: MinScan) -> Vec<u8> {
        let mut fif = Vec::new();
        set_bit(&mut fif, BIT_READY_TO_RECEIVE);
        for &b in modem.dcs_bits() {
            set_bit(&mut fif, b);
        }
        match self.resolution {
            Resolution::Standard => {}
            Resolution::Fine => set_bit(&mut fif, BIT_FINE),
            Resolution::SuperFine => set_bit(&mut fif, BIT_SUPERFINE),
            Resolution::R300 => {
                set_bit(&mut fif, BIT_300_300);
                set_bit(&mut fif, BIT_INCH);
            }
            Resolution::R400 => {
                set_bit(&mut fif, BIT_400_400);
                set_bit(&mut fif, BIT_INCH);
            }
        }
        match self.coding {
            crate::Coding::Mh => {}
            crate::Coding::Mr { .. } => set_bit(&mut fif, BIT_2D),
            crate::Coding::Mmr => set_bit(&mut fif, BIT_T6),
        }
        match width_class(self.width, self.resolution) {
            Some(1) => set_bit(&mut fif, BIT_WIDTH_1),
            Some(2) => set_bit(&mut fif, BIT_WIDTH_2),
            _ => {}
        }
        match length {
            PageLength::A4 => {}
            PageLength::B4 => set_bit(&mut fif, BIT_LENGTH_B4),
            PageLength::Unlimited => set_bit(&mut fif, BIT_LENGTH_UNLIMITED),
        }
        let code = min_scan.dcs_code();
        for (i, b) in (BIT_MIN_SCAN_1..BIT_MIN_SCAN_1 + 3).enumerate() {
            if code & (1 << i) != 0 {
                set_bit(&mut fif, b);
            }
        }
        if self.ecm {
            set_bit(&mut fif, BIT_ECM);
        }
        finish_fif(fif)
    }

    /// Reads the parameters a received DCS commands. Errors for a field
    /// shorter than three octets, for more than one resolution bit, for
    /// the invalid width code (bits 17 and 18 both set) and for T.6
    /// without ECM (T.30 Table 2 note: bit 31 is valid only with ECM).
    /// MR's K is T.4's recommendation for the resolution.
    pub fn from_dcs_fif(fif: &[u8]) -> Result<Params, FrameError> {
        if fif.len() < MIN_DIS_LEN {
            return Err(bad_field(
                "DCS",
                format!("{} octets; T.30 needs at least {MIN_DIS_LEN}", fif.len()),
            ));
        }
        let set: Vec<Resolution> = [
            (BIT_FINE, Resolution::Fine),
            (BIT_SUPERFINE, Resolution::SuperFine),
            (BIT_300_300, Resolution::R300),
            (BIT_400_400, Resolution::R400),
        ]
        .into_iter()
        .filter(|(b, _)| bit(fif, *b))
        .map(|(_, r)| r)
        .collect();
        let resolution = match set.as_slice() {
            [] => Resolution::Standard,
            [r] => *r,
            more => {
                return Err(bad_field(
                    "DCS",
                    format!("more than one resolution selected: {more:?}"),
                ));
            }
        };
        let class = match (bit(fif, BIT_WIDTH_1), bit(fif, BIT_WIDTH_2)) {
            (false, false) => 0,
            (true, false) => 1,
            (false, true) => 2,
            (true, true) => {
                return Err(bad_field(
                    "DCS",
                    "recording width bits 17 and 18 both set (invalid)",
                ));
            }
        };
        let ecm = bit(fif, BIT_ECM);
        let coding = if bit(fif, BIT_T6) {
            if !ecm {
                return Err(bad_field("DCS", "T.6 (MMR) coding without ECM"));
            }
            crate::Coding::Mmr
        } else if bit(fif, BIT_2D) {
            crate::Coding::Mr {
                k: resolution.mr_k(),
            }
        } else {
            crate::Coding::Mh
        };
        Ok(Params {
            resolution,
            width: line_widths(resolution)[class],
            coding,
            ecm,
        })
    }
}

// ---------------------------------------------------------------------------
// Identities (CSI, TSI): T.30 5.3.6.2.4 and 5.3.6.2.6.

/// The length of a CSI/TSI/CIG field.
pub const IDENT_LEN: usize = 20;

/// Checks a local identity: at most 20 characters, each a digit, a space
/// or '+' (T.30 5.3.6.2.4 and Table 3).
pub fn validate_ident(ident: &str) -> Result<(), String> {
    if ident.len() > IDENT_LEN {
        return Err(format!(
            "{} characters; T.30 allows at most {IDENT_LEN}",
            ident.chars().count()
        ));
    }
    if let Some(c) = ident
        .chars()
        .find(|c| !(c.is_ascii_digit() || *c == ' ' || *c == '+'))
    {
        return Err(format!(
            "character {c:?} is not allowed (only digits, space and '+')"
        ));
    }
    Ok(())
}

/// The 20-octet CSI/TSI field: T.30 sends the last character first, so the
/// string is reversed and padded with spaces (spandsp
/// `send_20digit_msg_frame`). The ident must already be valid.
pub fn ident_fif(ident: &str) -> Vec<u8> {
    let mut fif: Vec<u8> = ident.bytes().rev().take(IDENT_LEN).collect();
    fif.resize(IDENT_LEN, b' ');
    fif
}

/// Reads a received CSI/TSI field: un-reversed, trimmed, and with anything
/// but printable ASCII dropped (a remote may send anything).
pub fn parse_ident(fif: &[u8]) -> String {
    let s: String = fif
        .iter()
        .rev()
        .filter(|b| (0x20..0x7F).contains(*b))
        .map(|&b| char::from(b))
        .collect();
    s.trim().to_string()
}

// ---------------------------------------------------------------------------
// NSF / NSS (T.30 5.3.6.2.2; T.35 country and provider codes).

/// The T.35 prefix of faxgate's own NSF/NSS: country code 0xB5 and the
/// provider code 0x00 0x46 ('F' for faxgate). The payload that follows is
/// ours; non-standard frames with any other prefix come from other
/// vendors and are ignored.
pub const NON_STANDARD_PREFIX: [u8; 3] = [0xB5, 0x00, 0x46];

/// The largest non-standard payload we send: V.21 frames are slow and
/// spandsp caps NSF at 100 octets; 200 leaves room and stays well inside
/// one T.38 HDLC packet.
pub const MAX_NON_STANDARD: usize = 200;

/// The NSF/NSS field carrying `payload` behind our T.35 prefix.
pub fn non_standard_fif(payload: &[u8]) -> Vec<u8> {
    let mut fif = NON_STANDARD_PREFIX.to_vec();
    fif.extend_from_slice(payload);
    fif
}

/// The payload of a received NSF/NSS if it carries our T.35 prefix.
pub fn parse_non_standard(fif: &[u8]) -> Option<&[u8]> {
    fif.strip_prefix(&NON_STANDARD_PREFIX[..])
}

// ---------------------------------------------------------------------------
// ECM: PPS, PPR (T.30 Annex A) and FCD/RCP (T.4 Annex A).

/// A partial page signal's field: the post-page command (or NULL), the
/// page and block counters, and the number of frames in the block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pps {
    /// The post-page FCF octet (MPS/EOP/EOM with the X bit) or 0 (NULL)
    /// for a block that does not end the page.
    pub ppm: u8,
    /// Page counter (mod 256).
    pub page: u8,
    /// Block counter within the page (mod 256).
    pub block: u8,
    /// Frames in the block, 1..=256 (sent as count - 1).
    pub frames: u16,
}

impl Pps {
    /// The 4-octet field, as spandsp's `send_pps_frame` lays it out.
    pub fn to_fif(&self) -> Vec<u8> {
        let count = self.frames.clamp(1, 256) - 1;
        vec![self.ppm, self.page, self.block, count as u8]
    }

    /// Reads a PPS field (at least 4 octets).
    pub fn parse(fif: &[u8]) -> Result<Pps, FrameError> {
        let [ppm, page, block, count, ..] = fif else {
            return Err(bad_field(
                "PPS",
                format!("{} octets; PPS needs 4", fif.len()),
            ));
        };
        Ok(Pps {
            ppm: *ppm,
            page: *page,
            block: *block,
            frames: u16::from(*count) + 1,
        })
    }
}

/// The CTC field (T.30 Annex A): two octets shaped as DCS bits 1-16,
/// of which only the modem (bits 11-14) is set: the speed the sender
/// goes on correcting at (spandsp sends `0, dcs_code`).
pub fn ctc_fif(modem: Modem) -> Vec<u8> {
    let mut fif = vec![0u8; 2];
    for &b in modem.dcs_bits() {
        set_bit(&mut fif, b);
    }
    fif
}

/// The modem a CTC field names; `None` for a field too short to hold
/// bits 11-14 or a code that is no modem.
pub fn parse_ctc(fif: &[u8]) -> Option<Modem> {
    if fif.len() < 2 {
        return None;
    }
    Modem::from_dcs(fif)
}

/// The 32-octet PPR field asking again for the frames marked `true`:
/// frame `n` is bit `n % 8` of octet `n / 8` (spandsp `process_rx_pps`).
pub fn ppr_fif(missing: impl IntoIterator<Item = usize>) -> Vec<u8> {
    let mut map = vec![0u8; 32];
    for n in missing {
        if n < 256 {
            map[n / 8] |= 1 << (n % 8);
        }
    }
    map
}

/// The frame numbers a PPR field asks for.
pub fn parse_ppr(fif: &[u8]) -> Result<Vec<usize>, FrameError> {
    if fif.len() < 32 {
        return Err(bad_field(
            "PPR",
            format!("{} octets; the frame map needs 32", fif.len()),
        ));
    }
    Ok((0..256)
        .filter(|n| fif[n / 8] & (1 << (n % 8)) != 0)
        .collect())
}

/// One FCD frame: not final, FCF 0x06 (no X bit), frame number, data
/// (spandsp `get_partial_ecm_page`).
pub fn fcd_frame(number: u8, data: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(4 + data.len());
    f.extend_from_slice(&[ADDRESS, CONTROL_NON_FINAL, fcf::FCD, number]);
    f.extend_from_slice(data);
    f
}

/// The RCP frame that ends an ECM burst: not final, no X bit (spandsp
/// `send_next_ecm_frame`: "It doesn't seem to have the DIS received bit
/// set, either").
pub fn rcp_frame() -> Vec<u8> {
    vec![ADDRESS, CONTROL_NON_FINAL, fcf::RCP]
}

/// What a high-speed ECM frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EcmFrame<'a> {
    /// Facsimile coded data: frame number and payload.
    Fcd {
        /// Frame number within the block.
        number: u8,
        /// The data octets.
        data: &'a [u8],
    },
    /// Return to control for partial page.
    Rcp,
}

/// Parses a high-speed ECM frame (FCD or RCP).
pub fn parse_ecm_frame(bytes: &[u8]) -> Result<EcmFrame<'_>, FrameError> {
    let f = Frame::parse(bytes)?;
    match f.fcf {
        Fcf::Fcd => match f.fif {
            // T.4 Annex A frames carry 256 (or 64) octets; only the last
            // of a page may be shorter, never empty. An empty one would
            // let a peer complete block after block without sending any
            // image data, each MCF restarting the answerer's loop counts.
            [number, data @ ..] if !data.is_empty() && data.len() <= 256 => Ok(EcmFrame::Fcd {
                number: *number,
                data,
            }),
            [] => Err(bad_field("FCD", "no frame number")),
            [_] => Err(bad_field("FCD", "no data octets")),
            _ => Err(bad_field(
                "FCD",
                format!("{} data octets; at most 256", f.fif.len() - 1),
            )),
        },
        Fcf::Rcp => Ok(EcmFrame::Rcp),
        _ => Err(bad_field(
            "ECM frame",
            format!("{} is neither FCD nor RCP", f.describe()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Coding;

    #[test]
    fn fcf_decoding_follows_x_bit_rules() {
        let cases: &[(u8, Fcf)] = &[
            (0x80, Fcf::Dis),
            (0x81, Fcf::Dtc),
            (0x40, Fcf::Csi),
            (0x41, Fcf::Cig),
            (0x20, Fcf::Nsf),
            (0x21, Fcf::Nsc),
            (0x82, Fcf::Dcs),
            (0x83, Fcf::Dcs),
            (0x42, Fcf::Tsi),
            (0x43, Fcf::Tsi),
            (0x84, Fcf::Cfr),
            (0x85, Fcf::Cfr),
            (0x4E, Fcf::Mps),
            (0x4F, Fcf::Mps),
            (0x2F, Fcf::Eop),
            (0x8C, Fcf::Mcf),
            (0x4C, Fcf::Rtn),
            (0xFA, Fcf::Dcn),
            (0xFB, Fcf::Dcn),
            (0xBF, Fcf::Pps),
            (0xBC, Fcf::Ppr),
            (0x06, Fcf::Fcd),
            (0x07, Fcf::Unknown(0x07)),
            (0x86, Fcf::Rcp),
            (0x56, Fcf::Unknown(0x56)),
        ];
        for &(b, want) in cases {
            assert_eq!(Fcf::from_byte(b), want, "FCF 0x{b:02X}");
        }
    }

    #[test]
    fn frame_parse_rejects_bad_headers() {
        assert_eq!(
            Frame::parse(&[0xFF, 0x13]),
            Err(FrameError::TooShort { len: 2 })
        );
        assert_eq!(
            Frame::parse(&[0xFE, 0x13, 0x80]),
            Err(FrameError::BadAddress(0xFE))
        );
        assert_eq!(
            Frame::parse(&[0xFF, 0x12, 0x80]),
            Err(FrameError::BadControl(0x12))
        );
        let f = Frame::parse(&[0xFF, 0x03, 0x83, 1, 2]).unwrap();
        assert_eq!(f.fcf, Fcf::Dcs);
        assert!(!f.final_frame);
        assert_eq!(f.fif, &[1, 2]);
    }

    /// Golden DIS fields, bit by bit from spandsp
    /// `src/spandsp/private/t30_dis_dtc_dcs_bits.h` (bit N is octet
    /// (N-1)/8, mask 1 << ((N-1)%8), as in spandsp's `set_ctrl_bit`).
    #[test]
    fn dis_golden_bytes() {
        let cases: &[(&str, Capabilities, &[u8])] = &[
            (
                // Octet 1 (bits 9-16): 10 ready to receive (0x02), 11 V.29
                // (0x04), 12 V.27ter (0x08), 14 V.17 (0x20) = 0x2E.
                // Octet 2 (bits 17-24): 20 unlimited length (0x08), 21-23
                // 0 ms scan time (0x70) = 0x78; no extension.
                "minimal",
                Capabilities::minimal(),
                &[0x00, 0x2E, 0x78],
            ),
            (
                // Octet 1: 0x2E + 15 fine (0x40) + 16 2-D (0x80) = 0xEE.
                // Octet 2: 0x78 + 18 A3 width (0x02) + extend 24 (0x80) = 0xFA.
                // Octet 3 (25-32): 27 ECM (0x04), 31 T.6 (0x40), extend = 0xC4.
                // Octet 4 (33-40): extend only = 0x80.
                // Octet 5 (41-48): 41 superfine, 42 300x300, 43 400x400,
                // 44 inch, 45 metric = 0x1F.
                "all",
                Capabilities::all(),
                &[0x00, 0xEE, 0xFA, 0xC4, 0x80, 0x1F],
            ),
            (
                // MH+MR, fine, B4: octet 1 0xEE, octet 2 0x78 + 17 (0x01)
                // + extend = 0xF9, octets 3-4 extend only, octet 5 metric
                // (45 = 0x10).
                "mr-fine-b4",
                Capabilities {
                    resolutions: vec![Resolution::Standard, Resolution::Fine],
                    widths: vec![1728, 2048],
                    mr: true,
                    mmr: false,
                    ecm: false,
                    modems: Vec::new(),
                },
                &[0x00, 0xEE, 0xF9, 0x80, 0x80, 0x10],
            ),
            (
                // MMR without ECM is not offered (T.30): only ECM's bit 27.
                "mmr-needs-ecm",
                Capabilities {
                    resolutions: vec![],
                    widths: vec![],
                    mr: false,
                    mmr: true,
                    ecm: false,
                    modems: Vec::new(),
                },
                &[0x00, 0x2E, 0x78],
            ),
        ];
        for (name, caps, want) in cases {
            assert_eq!(caps.to_dis_fif(), *want, "{name}");
        }
    }

    #[test]
    fn dis_round_trip_normalises() {
        let all = Capabilities::all();
        assert_eq!(Capabilities::from_dis_fif(&all.to_dis_fif()).unwrap(), all);
        let min = Capabilities::minimal();
        assert_eq!(Capabilities::from_dis_fif(&min.to_dis_fif()).unwrap(), min);
        // A3 without B4 cannot be said in DIS: offered as A4 only.
        let odd = Capabilities {
            widths: vec![1728, 2432],
            ..Capabilities::minimal()
        };
        assert_eq!(
            Capabilities::from_dis_fif(&odd.to_dis_fif())
                .unwrap()
                .widths,
            vec![1728]
        );
        assert!(Capabilities::from_dis_fif(&[0x00, 0x2E]).is_err());
    }

    /// Golden DCS fields (same bit source as `dis_golden_bytes`).
    #[test]
    fn dcs_golden_bytes() {
        let cases: &[(&str, Params, &[u8])] = &[
            (
                // Octet 1: 10 receive (0x02) + 14 V.17 14400 (0x20) + 15
                // fine (0x40) = 0x62. Octet 2: 0x78.
                "fine-mh-a4",
                Params {
                    resolution: Resolution::Fine,
                    width: 1728,
                    coding: Coding::Mh,
                    ecm: false,
                },
                &[0x00, 0x62, 0x78],
            ),
            (
                // Octet 1: 0x22 + 16 2-D (0x80) = 0xA2. Octet 2: 0x78.
                "standard-mr",
                Params {
                    resolution: Resolution::Standard,
                    width: 1728,
                    coding: Coding::Mr { k: 2 },
                    ecm: false,
                },
                &[0x00, 0xA2, 0x78],
            ),
            (
                // Octet 2: 0x78 + 17 B4 (0x01) + extend = 0xF9. Octet 3:
                // 27 ECM + 31 T.6 + extend = 0xC4 (bit 28 clear: 256-octet
                // frames). Octet 4: extend. Octet 5: 42 300x300 (0x02) +
                // 44 inch (0x08) = 0x0A.
                "r300-mmr-ecm-b4",
                Params {
                    resolution: Resolution::R300,
                    width: 3072,
                    coding: Coding::Mmr,
                    ecm: true,
                },
                &[0x00, 0x22, 0xF9, 0xC4, 0x80, 0x0A],
            ),
        ];
        for (name, p, want) in cases {
            assert_eq!(p.to_dcs_fif(), *want, "{name}");
            assert_eq!(Params::from_dcs_fif(want).unwrap(), *p, "{name}");
        }
        assert_eq!(
            Params {
                resolution: Resolution::Standard,
                width: 1728,
                coding: Coding::Mh,
                ecm: false
            }
            .to_dcs_fif_with_length(PageLength::A4),
            vec![0x00, 0x22, 0x70]
        );
    }

    #[test]
    fn dcs_parse_errors() {
        let cases: &[(&str, &[u8])] = &[
            ("short", &[0x00, 0x22]),
            ("two resolutions", &[0x00, 0x62, 0xF8, 0x80, 0x80, 0x01]),
            ("width 11", &[0x00, 0x22, 0x7B]),
            ("t6 without ecm", &[0x00, 0x22, 0xF8, 0x40]),
        ];
        for (name, fif) in cases {
            assert!(Params::from_dcs_fif(fif).is_err(), "{name}");
        }
    }

    #[test]
    fn ident_is_reversed_and_padded() {
        let fif = ident_fif("+49 30 1234");
        assert_eq!(fif.len(), 20);
        assert_eq!(&fif[..11], b"4321 03 94+");
        assert!(fif[11..].iter().all(|&b| b == b' '));
        assert_eq!(parse_ident(&fif), "+49 30 1234");
        assert_eq!(parse_ident(b"\x0121  "), "12");
        assert!(validate_ident("+1 555 0100").is_ok());
        assert!(validate_ident("").is_ok());
        assert!(validate_ident("123456789012345678901").is_err());
        assert!(validate_ident("12a").is_err());
    }

    #[test]
    fn non_standard_prefix() {
        let fif = non_standard_fif(b"hello");
        assert_eq!(&fif[..3], &[0xB5, 0x00, 0x46]);
        assert_eq!(parse_non_standard(&fif), Some(&b"hello"[..]));
        assert_eq!(parse_non_standard(&[0xB5, 0x00, 0x47, 1]), None);
    }

    #[test]
    fn pps_and_ppr_fields() {
        let pps = Pps {
            ppm: fcf::EOP | X_BIT,
            page: 2,
            block: 1,
            frames: 256,
        };
        assert_eq!(pps.to_fif(), vec![0x2F, 2, 1, 255]);
        assert_eq!(Pps::parse(&pps.to_fif()).unwrap(), pps);
        assert!(Pps::parse(&[0, 1, 2]).is_err());
        let map = ppr_fif([0, 9, 255]);
        assert_eq!(map[0], 0x01);
        assert_eq!(map[1], 0x02);
        assert_eq!(map[31], 0x80);
        assert_eq!(parse_ppr(&map).unwrap(), vec![0, 9, 255]);
        assert!(parse_ppr(&map[..31]).is_err());
    }

    #[test]
    fn ecm_frames() {
        let f = fcd_frame(7, &[1, 2, 3]);
        assert_eq!(f, vec![0xFF, 0x03, 0x06, 7, 1, 2, 3]);
        assert_eq!(
            parse_ecm_frame(&f).unwrap(),
            EcmFrame::Fcd {
                number: 7,
                data: &[1, 2, 3]
            }
        );
        assert_eq!(parse_ecm_frame(&rcp_frame()).unwrap(), EcmFrame::Rcp);
        assert!(parse_ecm_frame(&[0xFF, 0x03, 0x06]).is_err());
        let empty = parse_ecm_frame(&fcd_frame(0, &[])).unwrap_err();
        assert!(empty.to_string().contains("no data octets"), "{empty}");
        assert!(parse_ecm_frame(&[0xFF, 0x13, 0x8C]).is_err());
    }

    #[test]
    fn bits_and_burst() {
        let mut fif = Vec::new();
        set_bit(&mut fif, 1);
        set_bit(&mut fif, 45);
        assert_eq!(fif, vec![0x01, 0, 0, 0, 0, 0x10]);
        assert!(bit(&fif, 45) && bit(&fif, 1) && !bit(&fif, 2) && !bit(&fif, 200));
        assert!(!bit(&fif, 0));
        let mut burst = vec![build(0x42, &[], true), build(0x82, &[], false)];
        seal_burst(&mut burst);
        assert_eq!(burst[0][1], CONTROL_NON_FINAL);
        assert_eq!(burst[1][1], CONTROL_FINAL);
    }

    /// A DIS/DCS field with only `bits` set.
    fn with_bits(bits: &[u32]) -> Vec<u8> {
        let mut fif = vec![0; MIN_DIS_LEN];
        for &b in bits {
            set_bit(&mut fif, b);
        }
        fif
    }

    /// The modems a DIS permits follow spandsp's `process_rx_dis_dtc`, and
    /// each modem's DCS code is spandsp's `fallback_sequence` one.
    #[test]
    fn modems_from_dis_and_dcs_codes() {
        use Modem::*;
        let cases: &[(&[u32], Option<&[Modem]>)] = &[
            (
                &[11, 12, 14],
                Some(&[
                    V17_14400, V17_12000, V17_9600, V29_9600, V17_7200, V29_7200, V27ter4800,
                    V27ter2400,
                ]),
            ),
            (
                &[11, 12],
                Some(&[V29_9600, V29_7200, V27ter4800, V27ter2400]),
            ),
            (&[11], Some(&[V29_9600, V29_7200])),
            (&[12], Some(&[V27ter4800, V27ter2400])),
            (&[], Some(&[V27ter2400])),
            (&[13], None),
            (&[14], None),
            (&[11, 12, 13, 14], None),
        ];
        for (bits, want) in cases {
            let got = Modem::permitted_by_dis(&with_bits(bits));
            assert_eq!(got.as_deref(), *want, "DIS bits {bits:?}");
        }
        // DCS octet 2 (bits 9-16): spandsp's dcs_code values.
        let codes: &[(Modem, u8)] = &[
            (V17_14400, 0x20),
            (V17_12000, 0x28),
            (V17_9600, 0x24),
            (V29_9600, 0x04),
            (V17_7200, 0x2C),
            (V29_7200, 0x0C),
            (V27ter4800, 0x08),
            (V27ter2400, 0x00),
        ];
        let p = Params {
            resolution: Resolution::Standard,
            width: 1728,
            coding: crate::Coding::Mh,
            ecm: false,
        };
        for &(m, octet) in codes {
            let fif = p.to_dcs_fif_with(PageLength::A4, m, MinScan::Ms0);
            assert_eq!(fif[1] & 0x3C, octet, "{m:?}");
            assert_eq!(Modem::from_dcs(&fif), Some(m));
            assert_eq!(Params::from_dcs_fif(&fif).unwrap(), p);
            // CTC carries the same code in its second octet.
            assert_eq!(ctc_fif(m), vec![0, octet], "{m:?}");
            assert_eq!(parse_ctc(&ctc_fif(m)), Some(m));
        }
        assert_eq!(parse_ctc(&[0]), None, "too short for bits 11-14");
        assert_eq!(V29_7200.bit_rate(), 7200);
    }

    /// The DIS modem field for a list of allowed modems: the best field
    /// that claims nothing outside the list, else one with a listed modem
    /// and the fewest unlisted ones.
    #[test]
    fn dis_modem_field_follows_the_allowed_modems() {
        use Modem::*;
        let cases: &[(&[Modem], u8)] = &[
            (&[], 0b1011),
            (&Modem::FALLBACK, 0b1011),
            (&[V29_9600, V29_7200, V27ter4800, V27ter2400], 0b0011),
            (&[V27ter2400, V27ter4800, V29_7200, V29_9600], 0b0011),
            (&[V29_9600, V29_7200], 0b0001),
            (&[V29_9600, V29_7200, V27ter4800], 0b0001),
            (
                &[V17_14400, V17_12000, V17_9600, V17_7200, V29_9600, V29_7200],
                0b0001,
            ),
            (&[V27ter4800, V27ter2400], 0b0010),
            (&[V27ter2400], 0b0000),
            // Nothing fits exactly: a listed modem and the fewest others.
            (&[V29_9600], 0b0001),
            (&[V17_14400], 0b1011),
            (&[V27ter4800], 0b0010),
            (&[V17_14400, V29_9600], 0b0001),
        ];
        for (modems, want) in cases {
            let caps = Capabilities {
                modems: modems.to_vec(),
                ..Capabilities::minimal()
            };
            let fif = caps.to_dis_fif();
            assert_eq!(modem_field(&fif), *want, "{modems:?}");
            assert!(Modem::permitted_by_dis(&fif).is_some(), "{modems:?}");
        }
    }

    /// The minimum scan line time a sender declares for a DIS (spandsp
    /// `set_min_scan_time_code`), and its DCS code in bits 21-23.
    #[test]
    fn min_scan_line_time() {
        use MinScan::*;
        use Resolution::*;
        // (DIS bits 21-23 set, bit 46, resolution, ecm, want)
        let cases: &[(&[u32], bool, Resolution, bool, MinScan)] = &[
            (&[], false, Standard, false, Ms20),
            (&[], false, Fine, false, Ms20),
            (&[], true, SuperFine, false, Ms10),
            (&[21], false, Standard, false, Ms5),
            (&[22], false, Standard, false, Ms10),
            (&[21, 22], false, Standard, false, Ms20),
            (&[21, 22], false, Fine, false, Ms10),
            (&[23], false, Standard, false, Ms40),
            (&[21, 23], false, Fine, false, Ms20),
            (&[22, 23], false, Standard, false, Ms10),
            (&[22, 23], true, R400, false, Ms5),
            (&[21, 22, 23], false, Standard, false, Ms0),
            (&[], false, Standard, true, Ms0),
        ];
        for &(bits, halves, res, ecm, want) in cases {
            let mut fif = with_bits(bits);
            if halves {
                set_bit(&mut fif, BIT_MIN_SCAN_HALVES);
            }
            assert_eq!(
                MinScan::for_dis(&fif, res, ecm),
                want,
                "{bits:?} halves {halves} {res:?} ecm {ecm}"
            );
        }
        // DCS bits 21-23 (octet 3, bits 4-6): 20 ms = 0, 5 = 1, 10 = 2,
        // 40 = 4, 0 ms = 7.
        let p = Params {
            resolution: Resolution::Standard,
            width: 1728,
            coding: crate::Coding::Mh,
            ecm: false,
        };
        for (m, code) in [(Ms20, 0), (Ms5, 1), (Ms10, 2), (Ms40, 4), (Ms0, 7)] {
            let fif = p.to_dcs_fif_with(PageLength::A4, Modem::V17_14400, m);
            assert_eq!((fif[2] >> 4) & 7, code, "{m:?}");
        }
        assert_eq!(Ms20.line_bits(Modem::V17_14400), 288);
        assert_eq!(Ms10.line_bits(Modem::V27ter2400), 24);
    }
}
