//! ITU-T T.38 IFP packets and their TCP framing: bytes in, values out.
//!
//! T.38 carries a fax call over IP as a stream of IFP (Internet Facsimile
//! Protocol) packets. *Indicator* packets say that a signal began on the
//! PSTN side (CNG, CED, a V.21 preamble, a modem training); *data* packets
//! carry what a modem demodulated: HDLC frames (T.30 control, ECM image
//! frames) or non-ECM image data. This module is the codec for one IFP
//! packet ([`Ifp::encode`], [`Ifp::decode`]) and for the TPKT framing of
//! RFC 1006 that T.38 uses over TCP ([`tpkt_frame`], [`TpktDecoder`],
//! [`IfpStream`]). Timing, rate management and UDPTL live elsewhere.
//!
//! # Wire format
//!
//! An IFP packet is the ASN.1 of T.38 Annex A in the ALIGNED variant of
//! PER (ITU-T X.691):
//!
//! ```text
//! IFPPacket ::= SEQUENCE { type-of-msg Type-of-msg, data-field Data-Field OPTIONAL }
//! Type-of-msg ::= CHOICE {
//!     t30-indicator ENUMERATED { no-signal, ... 16 root values, ..., v8-ansam, ... 7 more },
//!     t30-data      ENUMERATED { v21, ... 9 root values, ..., v8, ... 6 more } }
//! Data-Field ::= SEQUENCE OF SEQUENCE {
//!     field-type ENUMERATED { hdlc-data, ... 8 root values, ..., cm-message, ... 4 more },
//!     field-data OCTET STRING (SIZE (1..65535)) OPTIONAL }
//! ```
//!
//! Bit by bit, the first bit being the most significant bit of octet 0:
//!
//! ```text
//! 1 bit    data-field present (the SEQUENCE's OPTIONAL bitmap)
//! 1 bit    CHOICE index: 0 = t30-indicator, 1 = t30-data
//! 1 bit    ENUMERATED extension bit: 0 = root value, 1 = extension value
//!   root:      4 bits, the value (constrained whole number; 0..=15, 0..=8)
//!   extension: 0 and 6 bits of extension index (normally small number;
//!              1, pad, length octet, value octets from 64 on)
//! if data-field present:
//!   pad to an octet; item count (unconstrained length determinant):
//!   0nnnnnnn below 128, 10nnnnnn nnnnnnnn below 16384, else 11000mmm
//!   fragments of m * 16384 items, each followed by a further count
//!   per item:
//!     1 bit   field-data present
//!     1 bit   extension bit of field-type (2002 edition only)
//!     3 bits  field-type root value (or a normally small number)
//!     if field-data: pad to an octet, 16 bits length - 1 (constrained
//!                    whole number 1..=65535), then the octets
//! pad to an octet with zero bits
//! ```
//!
//! Items are not octet-aligned: an item without field-data takes 5 bits
//! (4 in the 1998 edition) and the next item follows at once. Padding is
//! written as zero and not checked on reading.
//!
//! # Bit order of the data octets
//!
//! In both kinds of data the first bit on the PSTN line is the **most
//! significant** bit of each T.38 octet, and octets follow line order.
//!
//! - `t4-non-ecm-data`: the T.4 bit stream (coded lines, EOLs, fill, RTC)
//!   packed MSB first, which is TIFF FillOrder 1, the order in which
//!   [`crate::Encoder`] writes and [`crate::Decoder`] reads: coded page
//!   bytes go into the field unchanged. Source: spandsp
//!   `src/t38_non_ecm_buffer.c`, `t38_non_ecm_buffer_get_bit()`, which
//!   turns received t4-non-ecm-data into line bits with
//!   `bit = (octet >> 7) & 1; octet <<= 1;`, and whose EOL search in
//!   `t38_non_ecm_buffer_inject()` reads the octets the same way.
//! - `hdlc-data`: the HDLC frame between the flags, with the transmitter's
//!   inserted zero bits removed and **without the FCS** (its check travels
//!   as `hdlc-fcs-OK` or `hdlc-fcs-BAD`, with or without `-sig-end`), each
//!   octet again with its first line bit in the MSB. HDLC sends octets
//!   least significant bit first, so these octets are the bit reversal of
//!   the usual in-memory form of a T.30 frame: the DIS header `FF 13 80`
//!   (address, control with the final bit, FCF) is `FF C8 01` in an IFP
//!   packet. Sources: Wireshark `epan/dissectors/packet-t30.c`, which
//!   dissects hdlc-data taken from T.38 with control values `0xC0`/`0xC8`,
//!   `T30_FC_DIS 0x01`, `T30_FC_DCS 0x41` and `reverse_byte()` on
//!   CSI/TSI digits; spandsp `src/t38_gateway.c`, `process_hdlc_data()`,
//!   which runs `bit_reverse()` on received hdlc-data before its
//!   LSB-first HDLC transmitter. [`reverse_bits`] converts.
//!
//! It follows from the same rule (and is not separately sourced) that in
//! an ECM image frame (FCD) carried as hdlc-data, the header octets
//! (address, control, FCF, frame number) are bit-reversed numbers, while
//! the T.4 data after them is, like non-ECM data, MSB first in T.38 form
//! and goes in unchanged from [`crate::Encoder`].
//!
//! The codec itself treats field-data as opaque octets; the order is the
//! business of whoever fills or drains them.
//!
//! # Interoperability
//!
//! - **Two ASN.1 editions.** T.38 (1998) has no extension marker in
//!   field-type, so its items are a bit shorter; peers that announce
//!   `T38FaxVersion:0` may use it (spandsp does for version 0, and
//!   Wireshark dissects with it by default). [`Asn1Edition`] chooses;
//!   [`Ifp::encode`] and [`Ifp::decode`] use the 2002 edition. A packet
//!   that is valid in both editions may mean different things in each
//!   (a 1998 `hdlc-fcs-OK` item reads as a 2002 `hdlc-fcs-OK-sig-end`),
//!   so the edition must be known or found out per peer; faxgate's
//!   session switches to 1998 at the first packet only 1998 reads.
//! - **Item alignment.** spandsp (`src/t38_core.c`, `t38_encode_data()`
//!   and `t38_core_rx_ifp_stream()`) starts every 2002-edition item on a
//!   new octet, where PER packs an item without field-data straight after
//!   the previous one. The two agree whenever only the last item lacks
//!   field-data (`hdlc-data` + `hdlc-fcs-OK`, `t4-non-ecm-data` +
//!   `t4-non-ecm-sig-end`, ...), which is how packets should be built.
//! - **Extension field types.** spandsp writes `cm-message` and later with
//!   one bit too many (the layout of the indicator, which has a 3-bit
//!   prefix, not 2): `cm-message` comes out the same, `jm-message`,
//!   `ci-message` and `v34rate` do not. This codec follows X.691.
//!
//! # TPKT
//!
//! Over TCP each IFP packet is preceded by the 4-octet TPKT header:
//! version 3, a reserved octet 0, and the frame length (header included)
//! as a 16-bit big-endian number, so a frame holds 1 to 65531 IFP octets.

mod per;
mod tpkt;

pub use tpkt::{
    IfpStream, TPKT_HEADER_LEN, TPKT_MAX_FRAME_LEN, TPKT_VERSION, TpktDecoder, tpkt_frame,
};

use per::{BitReader, BitWriter, Code};

/// The largest field-data T.38 allows: `OCTET STRING (SIZE (1..65535))`.
pub const MAX_FIELD_DATA: usize = 65535;

/// What was wrong with an IFP packet or a TPKT stream, with the field, the
/// byte offset and the value involved, so that a log line is enough to
/// find the fault in a capture.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum T38Error {
    /// The packet ends inside a field.
    #[error(
        "IFP packet truncated: {field} at byte {offset} needs {needed_bits} more bit(s) \
         than the {len} byte(s) given"
    )]
    Truncated {
        /// The ASN.1 field being read.
        field: String,
        /// Byte offset in the packet where the field starts (or continues).
        offset: usize,
        /// How many bits were missing.
        needed_bits: usize,
        /// The length of the packet.
        len: usize,
    },
    /// A root value that the ASN.1 does not define (only t30-data can have
    /// one: 4 bits hold 0..=15, the root list stops at 8).
    #[error(
        "IFP {field} at byte {offset}: value {value} is outside the root range 0..={max} \
         and not marked as an extension"
    )]
    ValueOutOfRange {
        /// The ENUMERATED.
        field: &'static str,
        /// Byte offset of the octet holding the value.
        offset: usize,
        /// The value found.
        value: u8,
        /// The largest root value.
        max: u8,
    },
    /// An extension index beyond 255: valid PER, but far past anything a
    /// T.38 edition defines, and not representable as `Unknown(u8)`.
    #[error("IFP {field} at byte {offset}: extension index {value} is beyond 255")]
    ExtensionTooLarge {
        /// The ENUMERATED.
        field: &'static str,
        /// Byte offset of the index.
        offset: usize,
        /// The index found (saturated at `u64::MAX`).
        value: u64,
    },
    /// A PER length determinant that is not one of the defined forms.
    #[error("IFP {field} at byte {offset}: invalid PER length determinant octet {value:#04x}")]
    BadLength {
        /// What the length counts.
        field: &'static str,
        /// Byte offset of the determinant.
        offset: usize,
        /// Its first octet.
        value: u8,
    },
    /// An indicator packet with the data-field presence bit set. The ASN.1
    /// allows it, T.38 gives it no meaning, and [`Ifp`] cannot hold it.
    #[error(
        "IFP indicator packet has the data-field presence bit set in byte 0 \
         (value {first_octet:#04x}); indicators carry no data"
    )]
    DataFieldWithIndicator {
        /// The first octet of the packet.
        first_octet: u8,
    },
    /// Octets after the end of the encoding.
    #[error(
        "IFP packet has {count} trailing byte(s) from byte {offset} on, \
         after the end of the PER encoding"
    )]
    TrailingBytes {
        /// Where the encoding ended.
        offset: usize,
        /// How many octets follow.
        count: usize,
    },
    /// A field whose data is `Some` but empty: PER cannot express it (the
    /// length is sent as length - 1).
    #[error(
        "IFP Data-Field item {index} ({kind:?}): field-data is present but empty; \
         T.38 allows 1..=65535 octets"
    )]
    EmptyFieldData {
        /// Index of the field in the packet.
        index: usize,
        /// Its type.
        kind: FieldType,
    },
    /// A field whose data exceeds the 65535 octets PER can express.
    #[error(
        "IFP Data-Field item {index} ({kind:?}): field-data of {len} octets exceeds \
         the T.38 maximum of 65535"
    )]
    FieldDataTooLong {
        /// Index of the field in the packet.
        index: usize,
        /// Its type.
        kind: FieldType,
        /// The data length.
        len: usize,
    },
    /// A field type that the chosen ASN.1 edition cannot encode (the 1998
    /// edition has no extension values for field-type).
    #[error(
        "IFP Data-Field item {index}: field type {kind:?} does not exist in the {edition:?} ASN.1"
    )]
    FieldTypeNotInEdition {
        /// Index of the field in the packet.
        index: usize,
        /// Its type.
        kind: FieldType,
        /// The edition asked for.
        edition: Asn1Edition,
    },
    /// An IFP packet that does not fit in one TPKT frame.
    #[error("IFP packet of {len} bytes does not fit a TPKT frame (1..={max} bytes)")]
    TpktPayloadSize {
        /// The packet length.
        len: usize,
        /// The most a frame holds.
        max: usize,
    },
    /// A TPKT header whose version octet is not 3.
    #[error("TPKT header at stream byte {offset}: version {value}, expected 3")]
    TpktVersion {
        /// Offset of the header in the TCP stream.
        offset: u64,
        /// The version octet.
        value: u8,
    },
    /// A TPKT header whose reserved octet is not 0.
    #[error("TPKT header at stream byte {offset}: reserved octet {value:#04x}, expected 0")]
    TpktReserved {
        /// Offset of the header in the TCP stream.
        offset: u64,
        /// The reserved octet.
        value: u8,
    },
    /// A TPKT length below 5 (an empty IFP packet) or above the decoder's
    /// maximum.
    #[error("TPKT header at stream byte {offset}: frame length {length} outside {min}..={max}")]
    TpktLength {
        /// Offset of the header in the TCP stream.
        offset: u64,
        /// The length field.
        length: u16,
        /// The smallest length accepted.
        min: usize,
        /// The largest length accepted.
        max: usize,
    },
    /// An IFP packet inside a well-formed TPKT frame failed to decode. The
    /// stream itself is still in step.
    #[error("IFP packet in the TPKT frame at stream byte {offset}: {source}")]
    InFrame {
        /// Offset of the frame's TPKT header in the TCP stream.
        offset: u64,
        /// What was wrong with the packet.
        source: Box<T38Error>,
    },
}

/// The edition of the T.38 ASN.1 an IFP packet follows. They differ only
/// in field-type: the 1998 edition has no extension marker there (4 bits
/// per Data-Field item before any data), the 2002 edition has one (5 bits)
/// and adds the V.34/V.8 field types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Asn1Edition {
    /// T.38 (1998), "pre-corrigendum": what `T38FaxVersion:0` peers may use.
    Y1998,
    /// T.38 (2002) and later.
    #[default]
    Y2002,
}

impl Asn1Edition {
    /// The edition to use with a peer that announced `T38FaxVersion` (SDP)
    /// or the H.245 equivalent: 1998 for version 0, 2002 from version 1 on
    /// (spandsp's `t38_version` rule).
    pub fn for_fax_version(version: u8) -> Asn1Edition {
        if version == 0 {
            Asn1Edition::Y1998
        } else {
            Asn1Edition::Y2002
        }
    }
}

/// A T.30 signal announced by an indicator packet: the far gateway heard
/// it begin (or, for [`Indicator::NoSignal`], heard silence).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Indicator {
    /// No signal: the line went quiet.
    NoSignal,
    /// CNG, the calling tone (1100 Hz).
    Cng,
    /// CED, the called station's answer tone (2100 Hz).
    Ced,
    /// The V.21 flag preamble before T.30 control frames.
    V21Preamble,
    /// V.27 ter training at 2400 bit/s.
    V27_2400Training,
    /// V.27 ter training at 4800 bit/s.
    V27_4800Training,
    /// V.29 training at 7200 bit/s.
    V29_7200Training,
    /// V.29 training at 9600 bit/s.
    V29_9600Training,
    /// V.17 short training at 7200 bit/s.
    V17_7200ShortTraining,
    /// V.17 long training at 7200 bit/s.
    V17_7200LongTraining,
    /// V.17 short training at 9600 bit/s.
    V17_9600ShortTraining,
    /// V.17 long training at 9600 bit/s.
    V17_9600LongTraining,
    /// V.17 short training at 12000 bit/s.
    V17_12000ShortTraining,
    /// V.17 long training at 12000 bit/s.
    V17_12000LongTraining,
    /// V.17 short training at 14400 bit/s.
    V17_14400ShortTraining,
    /// V.17 long training at 14400 bit/s.
    V17_14400LongTraining,
    /// V.8 ANSam (extension, 2002).
    V8Ansam,
    /// A V.8 signal: CM, JM, CI (extension, 2002).
    V8Signal,
    /// The V.34 control channel at 1200 bit/s (extension, 2002).
    V34CntlChannel1200,
    /// The V.34 primary channel (extension, 2002).
    V34PriChannel,
    /// A V.34 control channel retrain (extension, 2002).
    V34CcRetrain,
    /// V.33 training at 12000 bit/s (extension, 2002).
    V33_12000Training,
    /// V.33 training at 14400 bit/s (extension, 2002).
    V33_14400Training,
    /// An extension value this codec does not know, by its index among the
    /// extension additions (0 is V8Ansam, so known ones are 0..=6). A
    /// receiver ignores it; encoding writes the index as it is.
    Unknown(u8),
}

/// The modulation whose demodulated data a data packet carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DataType {
    /// V.21 channel 2, 300 bit/s: T.30 control.
    V21,
    /// V.27 ter at 2400 bit/s.
    V27_2400,
    /// V.27 ter at 4800 bit/s.
    V27_4800,
    /// V.29 at 7200 bit/s.
    V29_7200,
    /// V.29 at 9600 bit/s.
    V29_9600,
    /// V.17 at 7200 bit/s.
    V17_7200,
    /// V.17 at 9600 bit/s.
    V17_9600,
    /// V.17 at 12000 bit/s.
    V17_12000,
    /// V.17 at 14400 bit/s.
    V17_14400,
    /// V.8 (extension, 2002): CM/JM/CI messages.
    V8,
    /// V.34 primary channel rate (extension, 2002).
    V34PriRate,
    /// V.34 control channel at 1200 bit/s (extension, 2002).
    V34CC1200,
    /// V.34 primary channel (extension, 2002).
    V34PriCh,
    /// V.33 at 12000 bit/s (extension, 2002).
    V33_12000,
    /// V.33 at 14400 bit/s (extension, 2002).
    V33_14400,
    /// An extension value this codec does not know, by its index among the
    /// extension additions (0 is V8, so known ones are 0..=5).
    Unknown(u8),
}

/// What one Data-Field item carries or signals.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FieldType {
    /// HDLC frame octets (more may follow in later items or packets).
    HdlcData,
    /// The HDLC carrier ended (without a frame end).
    HdlcSigEnd,
    /// The HDLC frame ended and its FCS was good.
    HdlcFcsOk,
    /// The HDLC frame ended and its FCS was bad.
    HdlcFcsBad,
    /// FCS good, and the carrier ended.
    HdlcFcsOkSigEnd,
    /// FCS bad, and the carrier ended.
    HdlcFcsBadSigEnd,
    /// Non-ECM image data (or TCF).
    T4NonEcmData,
    /// The non-ECM carrier ended.
    T4NonEcmSigEnd,
    /// V.8 CM message (extension, 2002).
    CmMessage,
    /// V.8 JM message (extension, 2002).
    JmMessage,
    /// V.8 CI message (extension, 2002).
    CiMessage,
    /// V.34 rate (extension, 2002).
    V34Rate,
    /// An extension value this codec does not know, by its index among the
    /// extension additions (0 is CmMessage, so known ones are 0..=3).
    Unknown(u8),
}

/// The tables that give each enumeration its wire value: the position in
/// `ROOT` or `EXT` is the PER index.
trait WireEnum: Copy + PartialEq + Sized + 'static {
    const ROOT: &'static [Self];
    const EXT: &'static [Self];
    fn unknown_index(self) -> Option<u8>;
    fn unknown(index: u8) -> Self;

    fn code(self) -> Code {
        if let Some(i) = self.unknown_index() {
            return Code::Ext(i);
        }
        if let Some(i) = Self::ROOT.iter().position(|&v| v == self) {
            return Code::Root(i as u8);
        }
        let i = Self::EXT.iter().position(|&v| v == self).unwrap_or(0);
        Code::Ext(i as u8)
    }

    fn from_ext(index: u8) -> Self {
        Self::EXT
            .get(usize::from(index))
            .copied()
            .unwrap_or(Self::unknown(index))
    }
}

impl WireEnum for Indicator {
    const ROOT: &'static [Indicator] = &[
        Indicator::NoSignal,
        Indicator::Cng,
        Indicator::Ced,
        Indicator::V21Preamble,
        Indicator::V27_2400Training,
        Indicator::V27_4800Training,
        Indicator::V29_7200Training,
        Indicator::V29_9600Training,
        Indicator::V17_7200ShortTraining,
        Indicator::V17_7200LongTraining,
        Indicator::V17_9600ShortTraining,
        Indicator::V17_9600LongTraining,
        Indicator::V17_12000ShortTraining,
        Indicator::V17_12000LongTraining,
        Indicator::V17_14400ShortTraining,
        Indicator::V17_14400LongTraining,
    ];
    const EXT: &'static [Indicator] = &[
        Indicator::V8Ansam,
        Indicator::V8Signal,
        Indicator::V34CntlChannel1200,
        Indicator::V34PriChannel,
        Indicator::V34CcRetrain,
        Indicator::V33_12000Training,
        Indicator::V33_14400Training,
    ];
    fn unknown_index(self) -> Option<u8> {
        match self {
            Indicator::Unknown(i) => Some(i),
            _ => None,
        }
    }
    fn unknown(index: u8) -> Self {
        Indicator::Unknown(index)
    }
}

impl WireEnum for DataType {
    const ROOT: &'static [DataType] = &[
        DataType::V21,
        DataType::V27_2400,
        DataType::V27_4800,
        DataType::V29_7200,
        DataType::V29_9600,
        DataType::V17_7200,
        DataType::V17_9600,
        DataType::V17_12000,
        DataType::V17_14400,
    ];
    const EXT: &'static [DataType] = &[
        DataType::V8,
        DataType::V34PriRate,
        DataType::V34CC1200,
        DataType::V34PriCh,
        DataType::V33_12000,
        DataType::V33_14400,
    ];
    fn unknown_index(self) -> Option<u8> {
        match self {
            DataType::Unknown(i) => Some(i),
            _ => None,
        }
    }
    fn unknown(index: u8) -> Self {
        DataType::Unknown(index)
    }
}

impl WireEnum for FieldType {
    const ROOT: &'static [FieldType] = &[
        FieldType::HdlcData,
        FieldType::HdlcSigEnd,
        FieldType::HdlcFcsOk,
        FieldType::HdlcFcsBad,
        FieldType::HdlcFcsOkSigEnd,
        FieldType::HdlcFcsBadSigEnd,
        FieldType::T4NonEcmData,
        FieldType::T4NonEcmSigEnd,
    ];
    const EXT: &'static [FieldType] = &[
        FieldType::CmMessage,
        FieldType::JmMessage,
        FieldType::CiMessage,
        FieldType::V34Rate,
    ];
    fn unknown_index(self) -> Option<u8> {
        match self {
            FieldType::Unknown(i) => Some(i),
            _ => None,
        }
    }
    fn unknown(index: u8) -> Self {
        FieldType::Unknown(index)
    }
}

impl Indicator {
    /// Every indicator the 2002 ASN.1 defines, in wire order (root values
    /// 0..=15, then extension values 0..=6); handy for tests and tables.
    pub const KNOWN: [Indicator; 23] = [
        Indicator::NoSignal,
        Indicator::Cng,
        Indicator::Ced,
        Indicator::V21Preamble,
        Indicator::V27_2400Training,
        Indicator::V27_4800Training,
        Indicator::V29_7200Training,
        Indicator::V29_9600Training,
        Indicator::V17_7200ShortTraining,
        Indicator::V17_7200LongTraining,
        Indicator::V17_9600ShortTraining,
        Indicator::V17_9600LongTraining,
        Indicator::V17_12000ShortTraining,
        Indicator::V17_12000LongTraining,
        Indicator::V17_14400ShortTraining,
        Indicator::V17_14400LongTraining,
        Indicator::V8Ansam,
        Indicator::V8Signal,
        Indicator::V34CntlChannel1200,
        Indicator::V34PriChannel,
        Indicator::V34CcRetrain,
        Indicator::V33_12000Training,
        Indicator::V33_14400Training,
    ];

    /// The indicator a sender emits before data of `modulation`: the
    /// training (V.17 has a short and a long one, chosen by
    /// `long_training`; T.30 asks for long training before TCF and after
    /// CTC), the V.21 preamble, or the V.8/V.34 equivalents. `None` for
    /// [`DataType::V34PriRate`] and unknown types, which have none.
    pub fn training_for(modulation: DataType, long_training: bool) -> Option<Indicator> {
        let v17 = |short, long| Some(if long_training { long } else { short });
        match modulation {
            DataType::V21 => Some(Indicator::V21Preamble),
            DataType::V27_2400 => Some(Indicator::V27_2400Training),
            DataType::V27_4800 => Some(Indicator::V27_4800Training),
            DataType::V29_7200 => Some(Indicator::V29_7200Training),
            DataType::V29_9600 => Some(Indicator::V29_9600Training),
            DataType::V17_7200 => v17(
                Indicator::V17_7200ShortTraining,
                Indicator::V17_7200LongTraining,
            ),
            DataType::V17_9600 => v17(
                Indicator::V17_9600ShortTraining,
                Indicator::V17_9600LongTraining,
            ),
            DataType::V17_12000 => v17(
                Indicator::V17_12000ShortTraining,
                Indicator::V17_12000LongTraining,
            ),
            DataType::V17_14400 => v17(
                Indicator::V17_14400ShortTraining,
                Indicator::V17_14400LongTraining,
            ),
            DataType::V8 => Some(Indicator::V8Signal),
            DataType::V34CC1200 => Some(Indicator::V34CntlChannel1200),
            DataType::V34PriCh => Some(Indicator::V34PriChannel),
            DataType::V33_12000 => Some(Indicator::V33_12000Training),
            DataType::V33_14400 => Some(Indicator::V33_14400Training),
            DataType::V34PriRate | DataType::Unknown(_) => None,
        }
    }
}

impl DataType {
    /// Every data type the 2002 ASN.1 defines, in wire order (root values
    /// 0..=8, then extension values 0..=5).
    pub const KNOWN: [DataType; 15] = [
        DataType::V21,
        DataType::V27_2400,
        DataType::V27_4800,
        DataType::V29_7200,
        DataType::V29_9600,
        DataType::V17_7200,
        DataType::V17_9600,
        DataType::V17_12000,
        DataType::V17_14400,
        DataType::V8,
        DataType::V34PriRate,
        DataType::V34CC1200,
        DataType::V34PriCh,
        DataType::V33_12000,
        DataType::V33_14400,
    ];

    /// The modulation whose data follows `indicator`, so a receiver can
    /// start the right modem: the inverse of [`Indicator::training_for`].
    /// `None` for tones (CNG, CED, ANSam), no-signal, and unknown values.
    pub fn for_indicator(indicator: Indicator) -> Option<DataType> {
        Some(match indicator {
            Indicator::V21Preamble => DataType::V21,
            Indicator::V27_2400Training => DataType::V27_2400,
            Indicator::V27_4800Training => DataType::V27_4800,
            Indicator::V29_7200Training => DataType::V29_7200,
            Indicator::V29_9600Training => DataType::V29_9600,
            Indicator::V17_7200ShortTraining | Indicator::V17_7200LongTraining => {
                DataType::V17_7200
            }
            Indicator::V17_9600ShortTraining | Indicator::V17_9600LongTraining => {
                DataType::V17_9600
            }
            Indicator::V17_12000ShortTraining | Indicator::V17_12000LongTraining => {
                DataType::V17_12000
            }
            Indicator::V17_14400ShortTraining | Indicator::V17_14400LongTraining => {
                DataType::V17_14400
            }
            Indicator::V8Signal => DataType::V8,
            Indicator::V34CntlChannel1200 | Indicator::V34CcRetrain => DataType::V34CC1200,
            Indicator::V34PriChannel => DataType::V34PriCh,
            Indicator::V33_12000Training => DataType::V33_12000,
            Indicator::V33_14400Training => DataType::V33_14400,
            Indicator::NoSignal
            | Indicator::Cng
            | Indicator::Ced
            | Indicator::V8Ansam
            | Indicator::Unknown(_) => return None,
        })
    }

    /// The line rate in bit/s, which a gateway needs to pace data it
    /// modulates and to size packets. `None` where the rate is not fixed
    /// by the type (the V.34 primary channel runs at a negotiated rate)
    /// or the type is unknown.
    pub fn bit_rate(self) -> Option<u32> {
        match self {
            DataType::V21 | DataType::V8 => Some(300),
            DataType::V34CC1200 => Some(1200),
            DataType::V27_2400 => Some(2400),
            DataType::V27_4800 => Some(4800),
            DataType::V29_7200 | DataType::V17_7200 => Some(7200),
            DataType::V29_9600 | DataType::V17_9600 => Some(9600),
            DataType::V17_12000 | DataType::V33_12000 => Some(12000),
            DataType::V17_14400 | DataType::V33_14400 => Some(14400),
            DataType::V34PriRate | DataType::V34PriCh | DataType::Unknown(_) => None,
        }
    }
}

impl FieldType {
    /// Every field type the 2002 ASN.1 defines, in wire order (root values
    /// 0..=7, then extension values 0..=3).
    pub const KNOWN: [FieldType; 12] = [
        FieldType::HdlcData,
        FieldType::HdlcSigEnd,
        FieldType::HdlcFcsOk,
        FieldType::HdlcFcsBad,
        FieldType::HdlcFcsOkSigEnd,
        FieldType::HdlcFcsBadSigEnd,
        FieldType::T4NonEcmData,
        FieldType::T4NonEcmSigEnd,
        FieldType::CmMessage,
        FieldType::JmMessage,
        FieldType::CiMessage,
        FieldType::V34Rate,
    ];
}

/// One Data-Field item: a field type and, optionally, 1 to 65535 octets.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Field {
    /// What the item carries or signals.
    pub kind: FieldType,
    /// The field-data, if present. See the module docs for the bit order.
    pub data: Option<Vec<u8>>,
}

impl Field {
    /// An item that carries octets (hdlc-data, t4-non-ecm-data, ...).
    pub fn with_data(kind: FieldType, data: impl Into<Vec<u8>>) -> Field {
        Field {
            kind,
            data: Some(data.into()),
        }
    }

    /// An item that only signals (hdlc-fcs-OK, t4-non-ecm-sig-end, ...).
    pub fn without_data(kind: FieldType) -> Field {
        Field { kind, data: None }
    }
}

/// One IFP packet: an indicator, or data of one modulation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Ifp {
    /// A signal began (T.30 indicator).
    Indicator(Indicator),
    /// Demodulated data. An empty `fields` is written without a data-field
    /// (ASN.1 allows it; spandsp accepts it), and both that and a
    /// data-field of zero items decode to an empty `fields`.
    Data {
        /// The modulation the data came from or goes to.
        modulation: DataType,
        /// The items, in order.
        fields: Vec<Field>,
    },
}

impl Ifp {
    /// Appends the 2002-edition encoding to `out`.
    ///
    /// This cannot fail. Two things PER cannot express are written in the
    /// nearest form: a field whose data is `Some` but empty is written
    /// without field-data, and data beyond 65535 octets is split over
    /// consecutive items of the same type (which is what a receiver makes
    /// of hdlc-data and t4-non-ecm-data anyway). Use [`Ifp::encode_as`] to
    /// have such packets refused instead.
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.write(out, Asn1Edition::Y2002);
    }

    /// The 2002-edition encoding as a new vector; see [`Ifp::encode`].
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// Appends the encoding in the given edition to `out`, after checking
    /// that the packet can be encoded exactly: every field-data holds 1 to
    /// 65535 octets and, for the 1998 edition, every field type is a root
    /// value. On error nothing is appended.
    pub fn encode_as(&self, edition: Asn1Edition, out: &mut Vec<u8>) -> Result<(), T38Error> {
        if let Ifp::Data { fields, .. } = self {
            for (index, f) in fields.iter().enumerate() {
                if edition == Asn1Edition::Y1998 && !matches!(f.kind.code(), Code::Root(_)) {
                    return Err(T38Error::FieldTypeNotInEdition {
                        index,
                        kind: f.kind,
                        edition,
                    });
                }
                match &f.data {
                    Some(d) if d.is_empty() => {
                        return Err(T38Error::EmptyFieldData {
                            index,
                            kind: f.kind,
                        });
                    }
                    Some(d) if d.len() > MAX_FIELD_DATA => {
                        return Err(T38Error::FieldDataTooLong {
                            index,
                            kind: f.kind,
                            len: d.len(),
                        });
                    }
                    _ => {}
                }
            }
        }
        self.write(out, edition);
        Ok(())
    }

    /// Decodes one 2002-edition IFP packet, which must fill `bytes`
    /// exactly (UDPTL and TPKT both delimit packets).
    ///
    /// Unknown extension values decode to the `Unknown` variants, so a
    /// receiver can skip what it does not know; everything else that is
    /// not a valid packet is an error naming the field and byte offset.
    pub fn decode(bytes: &[u8]) -> Result<Ifp, T38Error> {
        Ifp::decode_as(bytes, Asn1Edition::Y2002)
    }

    /// Decodes one IFP packet in the given edition; see [`Ifp::decode`].
    pub fn decode_as(bytes: &[u8], edition: Asn1Edition) -> Result<Ifp, T38Error> {
        let mut r = BitReader::new(bytes);
        let data_present = r
            .read(1)
            .map_err(|e| e.at("IFPPacket data-field presence bit"))?;
        let choice = r.read(1).map_err(|e| e.at("Type-of-msg choice bit"))?;
        let ifp = if choice == 0 {
            if data_present != 0 {
                return Err(T38Error::DataFieldWithIndicator {
                    first_octet: bytes.first().copied().unwrap_or(0),
                });
            }
            let indicator = match r.read_enum(4, "t30-indicator")? {
                // 4 bits hold exactly the 16 root indicators.
                Code::Root(v) => Indicator::ROOT
                    .get(usize::from(v))
                    .copied()
                    .unwrap_or(Indicator::NoSignal),
                Code::Ext(v) => Indicator::from_ext(v),
            };
            Ifp::Indicator(indicator)
        } else {
            let modulation = match r.read_enum(4, "t30-data")? {
                Code::Root(v) => match DataType::ROOT.get(usize::from(v)) {
                    Some(&m) => m,
                    None => {
                        return Err(T38Error::ValueOutOfRange {
                            field: "t30-data",
                            offset: 0,
                            value: v,
                            max: (DataType::ROOT.len() - 1) as u8,
                        });
                    }
                },
                Code::Ext(v) => DataType::from_ext(v),
            };
            let fields = if data_present != 0 {
                read_fields(&mut r, edition)?
            } else {
                Vec::new()
            };
            Ifp::Data { modulation, fields }
        };
        r.align();
        let end = r.byte_pos();
        if end < bytes.len() {
            return Err(T38Error::TrailingBytes {
                offset: end,
                count: bytes.len() - end,
            });
        }
        Ok(ifp)
    }

    fn write(&self, out: &mut Vec<u8>, edition: Asn1Edition) {
        let mut w = BitWriter::new(out);
        match self {
            Ifp::Indicator(i) => {
                w.put(0, 1); // no data-field
                w.put(0, 1); // t30-indicator
                w.put_enum(i.code(), 4);
            }
            Ifp::Data { modulation, fields } => {
                let items = wire_items(fields);
                w.put(u32::from(!items.is_empty()), 1);
                w.put(1, 1); // t30-data
                w.put_enum(modulation.code(), 4);
                if !items.is_empty() {
                    write_items(&mut w, &items, edition);
                }
            }
        }
        w.align();
    }
}

/// Fields as they go on the wire: empty data dropped, long data split.
fn wire_items(fields: &[Field]) -> Vec<(FieldType, Option<&[u8]>)> {
    let mut items = Vec::with_capacity(fields.len());
    for f in fields {
        match f.data.as_deref() {
            Some(d) if !d.is_empty() => {
                items.extend(d.chunks(MAX_FIELD_DATA).map(|c| (f.kind, Some(c))));
            }
            _ => items.push((f.kind, None)),
        }
    }
    items
}

/// The SEQUENCE OF: an unconstrained length determinant (fragmented in
/// blocks of 16K items when needed), then the items.
fn write_items(w: &mut BitWriter<'_>, items: &[(FieldType, Option<&[u8]>)], edition: Asn1Edition) {
    const K16: usize = 16384;
    let mut rest = items;
    loop {
        w.align();
        let n = rest.len();
        let (chunk, more) = if n < 128 {
            w.put(n as u32, 8);
            (n, false)
        } else if n < K16 {
            w.put(0x8000 | n as u32, 16);
            (n, false)
        } else {
            let m = (n / K16).min(4);
            w.put(0xC0 | m as u32, 8);
            (m * K16, true)
        };
        let (now, later) = rest.split_at(chunk);
        for &(kind, data) in now {
            w.put(u32::from(data.is_some()), 1);
            match edition {
                Asn1Edition::Y2002 => w.put_enum(kind.code(), 3),
                // encode_as has refused extension types; encode never
                // asks for 1998. Write the root index (3 bits) only.
                Asn1Edition::Y1998 => match kind.code() {
                    Code::Root(v) | Code::Ext(v) => w.put(u32::from(v) & 7, 3),
                },
            }
            if let Some(d) = data {
                w.align();
                // 1 <= d.len() <= 65535 by construction in wire_items.
                w.put((d.len() - 1) as u32, 16);
                w.put_octets(d);
            }
        }
        rest = later;
        if !more {
            break;
        }
    }
}

fn read_fields(r: &mut BitReader<'_>, edition: Asn1Edition) -> Result<Vec<Field>, T38Error> {
    let mut fields = Vec::new();
    loop {
        r.align();
        let offset = r.byte_pos();
        let b0 = r.read(8).map_err(|e| e.at("Data-Field item count"))?;
        let (count, more) = match b0 {
            0x00..=0x7F => (b0 as usize, false),
            0x80..=0xBF => {
                let b1 = r.read(8).map_err(|e| e.at("Data-Field item count"))?;
                ((((b0 & 0x3F) << 8) | b1) as usize, false)
            }
            0xC1..=0xC4 => ((b0 & 0x07) as usize * 16384, true),
            _ => {
                return Err(T38Error::BadLength {
                    field: "Data-Field item count",
                    offset,
                    value: b0 as u8,
                });
            }
        };
        // Every item takes at least 4 bits, so a lying count cannot make
        // us reserve more than the input could hold.
        fields.reserve(count.min(r.remaining_bits() / 4));
        for _ in 0..count {
            let index = fields.len();
            fields.push(read_field(r, edition, index)?);
        }
        if !more {
            break;
        }
    }
    Ok(fields)
}

fn read_field(
    r: &mut BitReader<'_>,
    edition: Asn1Edition,
    index: usize,
) -> Result<Field, T38Error> {
    let present = r
        .read(1)
        .map_err(|e| e.at(format!("Data-Field item {index} field-data presence bit")))?;
    let kind = match edition {
        Asn1Edition::Y2002 => match r
            .read_enum(3, "field-type")
            .map_err(|e| in_item(e, index))?
        {
            Code::Root(v) => FieldType::ROOT
                .get(usize::from(v))
                .copied()
                .unwrap_or(FieldType::HdlcData),
            Code::Ext(v) => FieldType::from_ext(v),
        },
        Asn1Edition::Y1998 => {
            let v = r
                .read(3)
                .map_err(|e| e.at(format!("Data-Field item {index} field-type")))?;
            FieldType::ROOT
                .get(v as usize)
                .copied()
                .unwrap_or(FieldType::HdlcData)
        }
    };
    let data = if present != 0 {
        r.align();
        let len = r.read(16).map_err(|e| {
            e.at(format!(
                "Data-Field item {index} ({kind:?}) field-data length"
            ))
        })? as usize
            + 1;
        let d = r.octets(len).map_err(|e| {
            e.at(format!(
                "Data-Field item {index} ({kind:?}) field-data of {len} octets"
            ))
        })?;
        Some(d.to_vec())
    } else {
        None
    };
    Ok(Field { kind, data })
}

/// Names the Data-Field item in a truncation error from a shared reader.
fn in_item(e: T38Error, index: usize) -> T38Error {
    match e {
        T38Error::Truncated {
            field,
            offset,
            needed_bits,
            len,
        } => T38Error::Truncated {
            field: format!("Data-Field item {index} {field}"),
            offset,
            needed_bits,
            len,
        },
        other => other,
    }
}

/// Reverses the bit order within each octet, converting HDLC octets
/// between the T.38 form (first line bit in the MSB) and the LSB-first
/// form T.30 frames are usually handled in: `FF 13 80` <-> `FF C8 01`.
pub fn reverse_bits(bytes: &mut [u8]) {
    for b in bytes {
        *b = b.reverse_bits();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_tables_match_known_lists() {
        // KNOWN lists are ROOT followed by EXT, so wire indexes line up.
        let ind: Vec<Indicator> = Indicator::ROOT
            .iter()
            .chain(Indicator::EXT)
            .copied()
            .collect();
        assert_eq!(ind, Indicator::KNOWN);
        let dt: Vec<DataType> = DataType::ROOT
            .iter()
            .chain(DataType::EXT)
            .copied()
            .collect();
        assert_eq!(dt, DataType::KNOWN);
        let ft: Vec<FieldType> = FieldType::ROOT
            .iter()
            .chain(FieldType::EXT)
            .copied()
            .collect();
        assert_eq!(ft, FieldType::KNOWN);
        assert_eq!(Indicator::ROOT.len(), 16);
        assert_eq!(DataType::ROOT.len(), 9);
        assert_eq!(FieldType::ROOT.len(), 8);
    }

    #[test]
    fn codes() {
        assert_eq!(Indicator::Cng.code(), Code::Root(1));
        assert_eq!(Indicator::V8Ansam.code(), Code::Ext(0));
        assert_eq!(Indicator::Unknown(9).code(), Code::Ext(9));
        assert_eq!(DataType::V33_14400.code(), Code::Ext(5));
        assert_eq!(FieldType::V34Rate.code(), Code::Ext(3));
        assert_eq!(FieldType::from_ext(4), FieldType::Unknown(4));
        assert_eq!(FieldType::from_ext(1), FieldType::JmMessage);
    }

    #[test]
    fn training_and_modulation_are_inverse() {
        for m in DataType::KNOWN {
            for long in [false, true] {
                if let Some(i) = Indicator::training_for(m, long) {
                    assert_eq!(DataType::for_indicator(i), Some(m), "{m:?} {long}");
                }
            }
        }
        assert_eq!(
            Indicator::training_for(DataType::V17_14400, true),
            Some(Indicator::V17_14400LongTraining)
        );
        assert_eq!(DataType::for_indicator(Indicator::Ced), None);
        assert_eq!(DataType::V17_14400.bit_rate(), Some(14400));
        assert_eq!(DataType::V21.bit_rate(), Some(300));
        assert_eq!(DataType::V34PriCh.bit_rate(), None);
    }

    #[test]
    fn reverse_bits_turns_dis_header_around() {
        let mut h = [0xFF, 0x13, 0x80];
        reverse_bits(&mut h);
        assert_eq!(h, [0xFF, 0xC8, 0x01]);
    }

    #[test]
    fn edition_for_fax_version() {
        assert_eq!(Asn1Edition::for_fax_version(0), Asn1Edition::Y1998);
        assert_eq!(Asn1Edition::for_fax_version(3), Asn1Edition::Y2002);
    }
}
