//! T.38 IFP and TPKT: golden packets worked out by hand from the PER
//! rules, malformed input, and property round trips.
//!
//! Every golden byte string below was derived bit by bit from the T.38
//! (2002) ASN.1 (T.38 Annex A; the copy read was Wireshark's
//! `epan/dissectors/asn1/t38/T38_2002.asn`) and X.691 ALIGNED PER, and
//! cross-checked against spandsp `src/t38_core.c` (FreeSWITCH copy):
//! `t38_encode_indicator()` writes a root indicator as `indicator << 1`
//! and an extension one as `0x2000 | (index << 6)` in two octets;
//! `t38_encode_data()` writes `data_field_present | 0x40 | (data_type <<
//! 1)`, then the item count octet, then per item
//! `(field_data_present << 7) | (field_type << 3)` (2002) or
//! `(field_data_present << 7) | (field_type << 4)` (1998), then
//! `length - 1` in 16 bits and the octets. Where spandsp departs from
//! X.691 the test says so.
//!
//! Bit pictures read left to right from the most significant bit of each
//! octet; `|` separates octets; `p` is a zero padding bit.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use faxgate_fax::t38::{
    Asn1Edition, DataType, Field, FieldType, Ifp, IfpStream, Indicator, T38Error, TpktDecoder,
    reverse_bits, tpkt_frame,
};
use proptest::prelude::*;

/// Encode must give exactly `bytes`, and decoding `bytes` must give back
/// the packet.
#[track_caller]
fn golden(ifp: &Ifp, bytes: &[u8]) {
    assert_eq!(ifp.to_bytes(), bytes, "encoding of {ifp:?}");
    let mut strict = Vec::new();
    ifp.encode_as(Asn1Edition::Y2002, &mut strict).unwrap();
    assert_eq!(strict, bytes, "encode_as(Y2002) of {ifp:?}");
    assert_eq!(
        Ifp::decode(bytes).unwrap(),
        *ifp,
        "decoding of {bytes:02X?}"
    );
}

/// The same in the 1998 edition.
#[track_caller]
fn golden_1998(ifp: &Ifp, bytes: &[u8]) {
    let mut out = Vec::new();
    ifp.encode_as(Asn1Edition::Y1998, &mut out).unwrap();
    assert_eq!(out, bytes, "1998 encoding of {ifp:?}");
    assert_eq!(
        Ifp::decode_as(bytes, Asn1Edition::Y1998).unwrap(),
        *ifp,
        "1998 decoding of {bytes:02X?}"
    );
}

fn data(modulation: DataType, fields: Vec<Field>) -> Ifp {
    Ifp::Data { modulation, fields }
}

// ---------------------------------------------------------------------
// Indicators
// ---------------------------------------------------------------------

#[test]
fn golden_indicator_cng() {
    // 0     data-field absent (IFPPacket OPTIONAL bitmap)
    // 0     Type-of-msg CHOICE index 0 = t30-indicator
    // 0     extension bit: root value
    // 0001  cng = 1, constrained whole number 0..15 in 4 bits
    // p     pad to the octet
    // = 0000 0010 = 0x02. spandsp: 1 << 1 = 0x02.
    golden(&Ifp::Indicator(Indicator::Cng), &[0x02]);
}

#[test]
fn golden_indicator_ced() {
    // 0 0 0 0010 p = 0000 0100 = 0x04 (ced = 2). spandsp: 2 << 1.
    golden(&Ifp::Indicator(Indicator::Ced), &[0x04]);
}

#[test]
fn golden_indicator_v21_preamble() {
    // 0 0 0 0011 p = 0000 0110 = 0x06 (v21-preamble = 3). spandsp: 3 << 1.
    golden(&Ifp::Indicator(Indicator::V21Preamble), &[0x06]);
}

#[test]
fn golden_indicator_v17_14400_long_training() {
    // 0 0 0 1111 p = 0001 1110 = 0x1E (v17-14400-long-training = 15, the
    // last root value). spandsp: 15 << 1 = 0x1E.
    golden(&Ifp::Indicator(Indicator::V17_14400LongTraining), &[0x1E]);
}

#[test]
fn golden_indicator_v8_ansam_extension() {
    // 0       data-field absent
    // 0       t30-indicator
    // 1       extension bit: value is an extension addition
    // 0       normally small number, "small" form (index <= 63)
    // 000000  extension index 0 = v8-ansam (6 bits)
    // p...    pad
    // = 0010 0000 | 00pp pppp = 0x20 0x00.
    // spandsp: 0x2000 | (0 << 6) = 0x2000.
    golden(&Ifp::Indicator(Indicator::V8Ansam), &[0x20, 0x00]);
}

#[test]
fn golden_indicator_v33_14400_extension() {
    // 0 0 1 0 then index 6 = 000110 across the octet boundary:
    // 0010 0001 | 10pp pppp = 0x21 0x80.
    // spandsp: 0x2000 | (6 << 6) = 0x2180.
    golden(&Ifp::Indicator(Indicator::V33_14400Training), &[0x21, 0x80]);
}

#[test]
fn every_known_indicator_matches_spandsp_layout() {
    // Root values: index << 1; extension values: 0x2000 | (i << 6).
    for (n, ind) in Indicator::KNOWN.into_iter().enumerate() {
        let expect = if n < 16 {
            vec![(n as u8) << 1]
        } else {
            let v = 0x2000u16 | (((n - 16) as u16) << 6);
            v.to_be_bytes().to_vec()
        };
        golden(&Ifp::Indicator(ind), &expect);
    }
}

// ---------------------------------------------------------------------
// Data packets
// ---------------------------------------------------------------------

#[test]
fn golden_v21_hdlc_data_dis_header() {
    // Octet 0:
    //   1     data-field present
    //   1     Type-of-msg CHOICE index 1 = t30-data
    //   0     extension bit: root
    //   0000  v21 = 0
    //   p     pad: the SEQUENCE OF length determinant is octet-aligned
    //   = 1100 0000 = 0xC0. spandsp: 0x80 | 0x40 | (0 << 1) = 0xC0.
    // Octet 1: item count 1, one-octet form 0nnnnnnn = 0x01.
    // Octet 2, item 0:
    //   1     field-data present
    //   0     field-type extension bit: root
    //   000   hdlc-data = 0
    //   ppp   pad: the length of OCTET STRING (SIZE(1..65535)) is a
    //         constrained whole number with range 65535 > 255, so a
    //         two-octet aligned field
    //   = 1000 0000 = 0x80. spandsp: (1 << 7) | (0 << 3) = 0x80.
    // Octets 3-4: length - 1 = 2 -> 0x00 0x02.
    // Octets 5-7: the data.
    // The three octets are the brief's "DIS header" FF 13 80, which is
    // the LSB-first (HDLC in-memory) form; the codec does not care, but
    // on a real T.38 wire a DIS header is FF C8 01 (see the next test
    // and the module docs).
    golden(
        &data(
            DataType::V21,
            vec![Field::with_data(FieldType::HdlcData, [0xFF, 0x13, 0x80])],
        ),
        &[0xC0, 0x01, 0x80, 0x00, 0x02, 0xFF, 0x13, 0x80],
    );
}

#[test]
fn golden_v21_hdlc_fcs_ok_sig_end_without_data() {
    // Octet 0: 1 1 0 0000 p = 0xC0 (data-field present, t30-data, v21).
    // Octet 1: count 1 = 0x01.
    // Octet 2:
    //   0     field-data absent
    //   0     root
    //   100   hdlc-fcs-OK-sig-end = 4
    //   ppp   end of the packet: pad
    //   = 0010 0000 = 0x20. spandsp: (0 << 7) | (4 << 3) = 0x20.
    golden(
        &data(
            DataType::V21,
            vec![Field::without_data(FieldType::HdlcFcsOkSigEnd)],
        ),
        &[0xC0, 0x01, 0x20],
    );
}

#[test]
fn golden_v21_two_fields_hdlc_data_and_fcs_ok() {
    // Octet 0: 0xC0 as above. Octet 1: count 2 = 0x02.
    // Octet 2: item 0: 1 0 000 ppp = 0x80 (hdlc-data with data).
    // Octets 3-4: length - 1 = 2. Octets 5-7: FF C8 01, a DIS header
    // as it appears on the T.38 wire (bit-reversed FF 13 80).
    // Octet 8: item 1 starts octet-aligned only because item 0's data
    //   ended on a boundary: 0 0 010 ppp = 0001 0000 = 0x10
    //   (hdlc-fcs-OK = 2, no data). spandsp: 2 << 3 = 0x10.
    let dis = [0xFF, 0xC8, 0x01];
    let mut lsb_first = dis;
    reverse_bits(&mut lsb_first);
    assert_eq!(lsb_first, [0xFF, 0x13, 0x80]);
    golden(
        &data(
            DataType::V21,
            vec![
                Field::with_data(FieldType::HdlcData, dis),
                Field::without_data(FieldType::HdlcFcsOk),
            ],
        ),
        &[0xC0, 0x02, 0x80, 0x00, 0x02, 0xFF, 0xC8, 0x01, 0x10],
    );
}

#[test]
fn golden_v17_14400_t4_non_ecm_300_bytes_and_sig_end() {
    // Octet 0: 1 1 0 1000 p = 1101 0000 = 0xD0 (v17-14400 = 8).
    //   spandsp: 0x80 | 0x40 | (8 << 1) = 0xD0.
    // Octet 1: count 2 = 0x02.
    // Octet 2: item 0: 1 0 110 ppp = 1011 0000 = 0xB0
    //   (t4-non-ecm-data = 6, with data). spandsp: 0x80 | (6 << 3).
    // Octets 3-4: length - 1 = 299 = 0x012B, big-endian (the 16-bit
    //   field matters: 300 > 255).
    // Octets 5-304: the 300 data octets.
    // Octet 305: item 1: 0 0 111 ppp = 0011 1000 = 0x38
    //   (t4-non-ecm-sig-end = 7). spandsp: 7 << 3 = 0x38.
    let image: Vec<u8> = (0..300u32).map(|i| (i * 7 + 1) as u8).collect();
    let mut expect = vec![0xD0, 0x02, 0xB0, 0x01, 0x2B];
    expect.extend_from_slice(&image);
    expect.push(0x38);
    assert_eq!(expect.len(), 306);
    golden(
        &data(
            DataType::V17_14400,
            vec![
                Field::with_data(FieldType::T4NonEcmData, image),
                Field::without_data(FieldType::T4NonEcmSigEnd),
            ],
        ),
        &expect,
    );
}

#[test]
fn golden_extension_data_and_field_types() {
    // v34-pri-rate (data extension index 1) with one v34rate item (field
    // extension index 3) holding "144" (14400 bit/s, spandsp's
    // t38_v34rate_to_bps reads 3 digits * 100).
    // Octet 0: 1 1 1 0 0000 -> data-field present, t30-data, extension,
    //   small form, index bits 5..2 = 0000 = 1110 0000 = 0xE0.
    // Octet 1: index bits 1..0 = 01, then pad to the count = 0100 0000
    //   = 0x40. (spandsp: 0x80 | 0x60 | (1 >> 2), (1 << 6) -> E0 40.)
    // Octet 2: count 1.
    // Octet 3: 1 (data) 1 (extension) 0 (small form) 00001 (index 3 =
    //   000011, bits 5..1) = 1100 0001 = 0xC1.
    // Octet 4: index bit 0 = 1, pad for the length = 1000 0000 = 0x80.
    // Octets 5-6: length - 1 = 2. Octets 7-9: "144".
    // spandsp departs from X.691 here: it writes the field-type as
    // 0x80 | 0x40 | (3 >> 2), (3 << 6) = C0 C0, one bit out of place
    // (see the module docs).
    golden(
        &data(
            DataType::V34PriRate,
            vec![Field::with_data(FieldType::V34Rate, *b"144")],
        ),
        &[0xE0, 0x40, 0x01, 0xC1, 0x80, 0x00, 0x02, 0x31, 0x34, 0x34],
    );
}

#[test]
fn golden_two_items_without_data_share_an_octet() {
    // Octet 0: 0xC0, octet 1: count 2.
    // Octet 2: item 0: 0 0 010 (hdlc-fcs-OK), item 1 follows at once:
    //   0 0 0 then octet 3: 01 (hdlc-sig-end = 1) pppppp
    //   = 0001 0000 | 0100 0000 = 0x10 0x40.
    // PER does not align items. spandsp would write 0x10 0x08, starting
    // item 1 on a new octet; see the module docs.
    golden(
        &data(
            DataType::V21,
            vec![
                Field::without_data(FieldType::HdlcFcsOk),
                Field::without_data(FieldType::HdlcSigEnd),
            ],
        ),
        &[0xC0, 0x02, 0x10, 0x40],
    );
}

#[test]
fn golden_item_without_data_then_item_with_data() {
    // Octet 2: item 0: 0 0 010 (hdlc-fcs-OK); item 1: 1 0 0 | 00 of
    //   hdlc-data (000) spills into octet 3, then pad to the length:
    //   0001 0100 | 00pp pppp = 0x14 0x00.
    // Octets 4-5: length - 1 = 0. Octet 6: the data octet.
    golden(
        &data(
            DataType::V21,
            vec![
                Field::without_data(FieldType::HdlcFcsOk),
                Field::with_data(FieldType::HdlcData, [0xAA]),
            ],
        ),
        &[0xC0, 0x02, 0x14, 0x00, 0x00, 0x00, 0xAA],
    );
}

#[test]
fn golden_data_without_data_field() {
    // 0 (no data-field) 1 (t30-data) 0 0000 (v21) pp = 0100 0000 = 0x40.
    golden(&data(DataType::V21, vec![]), &[0x40]);
    // A data-field with zero items decodes to the same value.
    assert_eq!(
        Ifp::decode(&[0xC0, 0x00]).unwrap(),
        data(DataType::V21, vec![])
    );
}

#[test]
fn golden_1998_edition() {
    // The 1998 ASN.1 has no extension bit in field-type: an item is
    // presence bit + 3 bits. spandsp (t38_version 0):
    // (present << 7) | (type << 4), and a data-less item leaves the low
    // nibble to the next item ("other_half").
    // Octet 2: 1 000 pppp = 0x80; octets 3-4 length - 1; 5-7 data;
    // octet 8: 0 010 pppp = 0x20.
    let ifp = data(
        DataType::V21,
        vec![
            Field::with_data(FieldType::HdlcData, [0xFF, 0xC8, 0x01]),
            Field::without_data(FieldType::HdlcFcsOk),
        ],
    );
    golden_1998(
        &ifp,
        &[0xC0, 0x02, 0x80, 0x00, 0x02, 0xFF, 0xC8, 0x01, 0x20],
    );
    // Two data-less items in one octet: 0 010 | 0 001 = 0x21.
    golden_1998(
        &data(
            DataType::V21,
            vec![
                Field::without_data(FieldType::HdlcFcsOk),
                Field::without_data(FieldType::HdlcSigEnd),
            ],
        ),
        &[0xC0, 0x02, 0x21],
    );
    // Indicators are the same in both editions.
    golden_1998(&Ifp::Indicator(Indicator::Cng), &[0x02]);
    // The 1998 edition cannot carry the V.34 field types.
    let v34 = data(
        DataType::V34PriRate,
        vec![Field::with_data(FieldType::V34Rate, *b"144")],
    );
    let mut out = Vec::new();
    assert_eq!(
        v34.encode_as(Asn1Edition::Y1998, &mut out),
        Err(T38Error::FieldTypeNotInEdition {
            index: 0,
            kind: FieldType::V34Rate,
            edition: Asn1Edition::Y1998,
        })
    );
    assert!(out.is_empty());
}

#[test]
fn golden_tpkt_framed() {
    // RFC 1006: version 3, reserved 0, length of the whole frame
    // (4 header octets + IFP) big-endian.
    // CNG: 03 00 00 05 | 02.
    let mut out = Vec::new();
    tpkt_frame(&Ifp::Indicator(Indicator::Cng).to_bytes(), &mut out).unwrap();
    assert_eq!(out, [0x03, 0x00, 0x00, 0x05, 0x02]);
    // The DIS-header data packet (8 octets): 03 00 00 0C | C0 01 80 00 02 FF 13 80.
    let ifp = data(
        DataType::V21,
        vec![Field::with_data(FieldType::HdlcData, [0xFF, 0x13, 0x80])],
    );
    out.clear();
    tpkt_frame(&ifp.to_bytes(), &mut out).unwrap();
    let framed = [
        0x03, 0x00, 0x00, 0x0C, 0xC0, 0x01, 0x80, 0x00, 0x02, 0xFF, 0x13, 0x80,
    ];
    assert_eq!(out, framed);
    let mut stream = IfpStream::new(Asn1Edition::Y2002);
    stream.push(&framed);
    assert_eq!(stream.next_ifp().unwrap(), Some(ifp));
    assert_eq!(stream.next_ifp().unwrap(), None);
}

// ---------------------------------------------------------------------
// Unknown extension values: accepted, so a receiver can ignore them
// ---------------------------------------------------------------------

#[test]
fn unknown_extensions_decode_and_reencode() {
    // Indicator extension index 7 (one past v33-14400-training):
    // 0 0 1 0 0001 | 11pp pppp = 0x21 0xC0.
    golden(&Ifp::Indicator(Indicator::Unknown(7)), &[0x21, 0xC0]);
    // Data-type extension index 6, no data-field:
    // 0 1 1 0 0001 | 10pp pppp = 0x61 0x80.
    golden(&data(DataType::Unknown(6), vec![]), &[0x61, 0x80]);
    // Field-type extension index 4 = 000100 in v21 data:
    // C0 01 | 0 1 0 00010 | 0ppp pppp = C0 01 42 00.
    golden(
        &data(
            DataType::V21,
            vec![Field::without_data(FieldType::Unknown(4))],
        ),
        &[0xC0, 0x01, 0x42, 0x00],
    );
    // Index 200 takes the long form of the normally small number:
    // 0 0 1 1 pppp | length 1 | 200 = 0x30 0x01 0xC8.
    golden(
        &Ifp::Indicator(Indicator::Unknown(200)),
        &[0x30, 0x01, 0xC8],
    );
}

#[test]
fn padding_bits_are_not_checked() {
    // 0x1F: v17-14400-long-training with its pad bit set.
    assert_eq!(
        Ifp::decode(&[0x1F]).unwrap(),
        Ifp::Indicator(Indicator::V17_14400LongTraining)
    );
}

// ---------------------------------------------------------------------
// Malformed packets
// ---------------------------------------------------------------------

#[track_caller]
fn truncated(bytes: &[u8], field: &str, offset: usize, needed_bits: usize) {
    assert_eq!(
        Ifp::decode(bytes),
        Err(T38Error::Truncated {
            field: field.to_string(),
            offset,
            needed_bits,
            len: bytes.len(),
        }),
        "decoding {bytes:02X?}"
    );
}

#[test]
fn error_truncated() {
    truncated(&[], "IFPPacket data-field presence bit", 0, 1);
    // Extension indicator cut after 4 of its 7 index bits.
    truncated(&[0x20], "t30-indicator extension index", 0, 2);
    // Data packet with no count octet.
    truncated(&[0xC0], "Data-Field item count", 1, 8);
    // Two-octet count cut short.
    truncated(&[0xC0, 0x81], "Data-Field item count", 2, 8);
    // Count 1, no item.
    truncated(
        &[0xC0, 0x01],
        "Data-Field item 0 field-data presence bit",
        2,
        1,
    );
    // Field-data length cut in half.
    truncated(
        &[0xC0, 0x01, 0x80, 0x00],
        "Data-Field item 0 (HdlcData) field-data length",
        3,
        8,
    );
    // Field-data one octet short.
    truncated(
        &[0xC0, 0x01, 0x80, 0x00, 0x02, 0xFF, 0x13],
        "Data-Field item 0 (HdlcData) field-data of 3 octets",
        5,
        8,
    );
    // Count 127 with one octet of items: item 1's field-type runs out
    // after 1 of its 3 bits.
    truncated(&[0xC0, 0x7F, 0x20], "Data-Field item 1 field-type", 2, 2);
    // Count 127, item 0 ends on an octet boundary, item 1 is missing.
    truncated(
        &[0xC0, 0x7F, 0x80, 0x00, 0x00, 0xAA],
        "Data-Field item 1 field-data presence bit",
        6,
        1,
    );
}

#[test]
fn error_root_value_out_of_range() {
    // 1 1 0 1001 p: t30-data root value 9, but the root stops at 8
    // (v17-14400); 9..15 are not extensions, they are invalid.
    for v in 9u8..=15 {
        let byte = 0xC0 | (v << 1);
        assert_eq!(
            Ifp::decode(&[byte, 0x00]),
            Err(T38Error::ValueOutOfRange {
                field: "t30-data",
                offset: 0,
                value: v,
                max: 8,
            })
        );
    }
}

#[test]
fn error_trailing_garbage() {
    assert_eq!(
        Ifp::decode(&[0x02, 0x00]),
        Err(T38Error::TrailingBytes {
            offset: 1,
            count: 1
        })
    );
    assert_eq!(
        Ifp::decode(&[0xC0, 0x01, 0x20, 0xDE, 0xAD]),
        Err(T38Error::TrailingBytes {
            offset: 3,
            count: 2
        })
    );
}

#[test]
fn error_indicator_with_data_field() {
    // 1 0 ...: data-field present on an indicator.
    assert_eq!(
        Ifp::decode(&[0x82, 0x01, 0x20]),
        Err(T38Error::DataFieldWithIndicator { first_octet: 0x82 })
    );
}

#[test]
fn error_bad_length_determinant() {
    // 11000000 (zero fragments) and 11000101 (five) are not defined;
    // neither is anything from 111xxxxx.
    for b in [0xC0u8, 0xC5, 0xE0, 0xFF] {
        assert_eq!(
            Ifp::decode(&[0xC0, b]),
            Err(T38Error::BadLength {
                field: "Data-Field item count",
                offset: 1,
                value: b,
            })
        );
    }
    // Long-form extension index with a zero length.
    assert_eq!(
        Ifp::decode(&[0x30, 0x00]),
        Err(T38Error::BadLength {
            field: "t30-indicator",
            offset: 1,
            value: 0,
        })
    );
}

#[test]
fn error_extension_index_too_large() {
    // 0 0 1 1 pppp | length 2 | 0x0100 = index 256.
    assert_eq!(
        Ifp::decode(&[0x30, 0x02, 0x01, 0x00]),
        Err(T38Error::ExtensionTooLarge {
            field: "t30-indicator",
            offset: 1,
            value: 256,
        })
    );
}

#[test]
fn zero_length_field_data_cannot_be_expressed() {
    // PER sends the length as length - 1, so 00 00 means one octet: a
    // present but empty field-data has no encoding, and nothing on the
    // wire can decode to one.
    assert_eq!(
        Ifp::decode(&[0xC0, 0x01, 0x80, 0x00, 0x00, 0xAA]).unwrap(),
        data(
            DataType::V21,
            vec![Field::with_data(FieldType::HdlcData, [0xAA])]
        )
    );
    // encode_as refuses it...
    let empty = data(
        DataType::V21,
        vec![
            Field::without_data(FieldType::HdlcFcsOk),
            Field::with_data(FieldType::HdlcData, []),
        ],
    );
    let mut out = Vec::new();
    assert_eq!(
        empty.encode_as(Asn1Edition::Y2002, &mut out),
        Err(T38Error::EmptyFieldData {
            index: 1,
            kind: FieldType::HdlcData,
        })
    );
    assert!(out.is_empty());
    // ...and encode writes the item without field-data.
    assert_eq!(empty.to_bytes(), [0xC0, 0x02, 0x10, 0x00]);
}

#[test]
fn over_long_field_data() {
    let big = data(
        DataType::V17_14400,
        vec![Field::with_data(FieldType::T4NonEcmData, vec![0x55; 65536])],
    );
    let mut out = Vec::new();
    assert_eq!(
        big.encode_as(Asn1Edition::Y2002, &mut out),
        Err(T38Error::FieldDataTooLong {
            index: 0,
            kind: FieldType::T4NonEcmData,
            len: 65536,
        })
    );
    // encode splits it over two items of the same type.
    let back = Ifp::decode(&big.to_bytes()).unwrap();
    assert_eq!(
        back,
        data(
            DataType::V17_14400,
            vec![
                Field::with_data(FieldType::T4NonEcmData, vec![0x55; 65535]),
                Field::with_data(FieldType::T4NonEcmData, vec![0x55]),
            ],
        )
    );
}

#[test]
fn item_counts_in_every_length_form() {
    let sig = Field::without_data(FieldType::HdlcFcsOk);
    // 200 items: two-octet count 10000000 11001000 = 0x80 0xC8.
    let p = data(DataType::V21, vec![sig.clone(); 200]);
    let bytes = p.to_bytes();
    assert_eq!(&bytes[..3], &[0xC0, 0x80, 0xC8]);
    assert_eq!(Ifp::decode(&bytes).unwrap(), p);
    // Exactly 16384 items: one fragment 11000001, 16384 * 5 bits = 10240
    // octets of items, then a final count of 0.
    let p = data(DataType::V21, vec![sig.clone(); 16384]);
    let bytes = p.to_bytes();
    assert_eq!(bytes[1], 0xC1);
    assert_eq!(bytes.len(), 2 + 10240 + 1);
    assert_eq!(bytes[bytes.len() - 1], 0x00);
    assert_eq!(Ifp::decode(&bytes).unwrap(), p);
    // 20000 = 16384 + 3616: fragment, then 10001110 00100000 (3616).
    let p = data(DataType::V21, vec![sig; 20000]);
    let bytes = p.to_bytes();
    assert_eq!(bytes[1], 0xC1);
    assert_eq!(&bytes[2 + 10240..2 + 10242], &[0x8E, 0x20]);
    assert_eq!(Ifp::decode(&bytes).unwrap(), p);
}

// ---------------------------------------------------------------------
// TPKT stream
// ---------------------------------------------------------------------

#[test]
fn tpkt_byte_by_byte() {
    let mut stream = Vec::new();
    tpkt_frame(&[0x02], &mut stream).unwrap();
    tpkt_frame(&[0xC0, 0x01, 0x20], &mut stream).unwrap();
    let mut d = TpktDecoder::new();
    let mut got = Vec::new();
    for &b in &stream {
        d.push(&[b]);
        while let Some(p) = d.next_packet().unwrap() {
            got.push(p);
        }
    }
    assert_eq!(got, vec![vec![0x02], vec![0xC0, 0x01, 0x20]]);
}

#[test]
fn tpkt_bad_headers() {
    let cases: [(&[u8], T38Error); 4] = [
        (
            &[0x04, 0x00, 0x00, 0x05, 0x02],
            T38Error::TpktVersion {
                offset: 5,
                value: 4,
            },
        ),
        (
            &[0x03, 0x01, 0x00, 0x05, 0x02],
            T38Error::TpktReserved {
                offset: 5,
                value: 1,
            },
        ),
        (
            &[0x03, 0x00, 0x00, 0x04],
            T38Error::TpktLength {
                offset: 5,
                length: 4,
                min: 5,
                max: 65535,
            },
        ),
        (
            &[0x03, 0x00, 0x00, 0x00],
            T38Error::TpktLength {
                offset: 5,
                length: 0,
                min: 5,
                max: 65535,
            },
        ),
    ];
    for (bad, err) in cases {
        let mut d = TpktDecoder::new();
        // A good frame first, so the offset is that of the second header.
        d.push(&[0x03, 0x00, 0x00, 0x05, 0x02]);
        d.push(bad);
        assert_eq!(d.next_packet().unwrap(), Some(vec![0x02]));
        assert_eq!(d.next_packet(), Err(err.clone()));
        // Sticky: the stream is out of step for good.
        d.push(&[0x03, 0x00, 0x00, 0x05, 0x02]);
        assert_eq!(d.next_packet(), Err(err));
        assert_eq!(d.buffered(), 0);
    }
}

#[test]
fn tpkt_maximum_checked_from_the_header() {
    let mut d = TpktDecoder::with_max_frame_len(100);
    // Only the header of a 200-octet frame: refused before its body.
    d.push(&[0x03, 0x00, 0x00, 0xC8]);
    assert_eq!(
        d.next_packet(),
        Err(T38Error::TpktLength {
            offset: 0,
            length: 200,
            min: 5,
            max: 100,
        })
    );
    // 100 is allowed.
    let mut d = TpktDecoder::with_max_frame_len(100);
    let mut f = Vec::new();
    tpkt_frame(&[0x06; 96], &mut f).unwrap();
    d.push(&f);
    assert_eq!(d.next_packet().unwrap(), Some(vec![0x06; 96]));
}

#[test]
fn ifp_stream_skips_a_bad_packet_in_a_good_frame() {
    let mut bytes = Vec::new();
    tpkt_frame(&[0x02], &mut bytes).unwrap();
    tpkt_frame(&[0xD2], &mut bytes).unwrap(); // t30-data root value 9
    tpkt_frame(&[0x04], &mut bytes).unwrap();
    let mut s = IfpStream::new(Asn1Edition::Y2002);
    s.push(&bytes);
    assert_eq!(s.next_ifp().unwrap(), Some(Ifp::Indicator(Indicator::Cng)));
    assert_eq!(
        s.next_ifp(),
        Err(T38Error::InFrame {
            offset: 5,
            source: Box::new(T38Error::ValueOutOfRange {
                field: "t30-data",
                offset: 0,
                value: 9,
                max: 8,
            }),
        })
    );
    assert_eq!(s.next_ifp().unwrap(), Some(Ifp::Indicator(Indicator::Ced)));
    assert_eq!(s.next_ifp().unwrap(), None);
    let msg = T38Error::InFrame {
        offset: 5,
        source: Box::new(T38Error::DataFieldWithIndicator { first_octet: 0x82 }),
    }
    .to_string();
    assert!(msg.contains("stream byte 5"), "{msg}");
}

// ---------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------

fn arb_indicator() -> impl Strategy<Value = Indicator> {
    prop_oneof![
        prop::sample::select(Indicator::KNOWN.to_vec()),
        (7u8..=255).prop_map(Indicator::Unknown),
    ]
}

fn arb_data_type() -> impl Strategy<Value = DataType> {
    prop_oneof![
        prop::sample::select(DataType::KNOWN.to_vec()),
        (6u8..=255).prop_map(DataType::Unknown),
    ]
}

fn arb_field_type(edition: Asn1Edition) -> BoxedStrategy<FieldType> {
    match edition {
        Asn1Edition::Y2002 => prop_oneof![
            prop::sample::select(FieldType::KNOWN.to_vec()),
            (4u8..=255).prop_map(FieldType::Unknown),
        ]
        .boxed(),
        Asn1Edition::Y1998 => prop::sample::select(FieldType::KNOWN[..8].to_vec()).boxed(),
    }
}

fn arb_field(edition: Asn1Edition) -> impl Strategy<Value = Field> {
    (
        arb_field_type(edition),
        prop::option::of(prop::collection::vec(any::<u8>(), 1..300)),
    )
        .prop_map(|(kind, data)| Field { kind, data })
}

fn arb_ifp(edition: Asn1Edition) -> impl Strategy<Value = Ifp> {
    prop_oneof![
        arb_indicator().prop_map(Ifp::Indicator),
        (
            arb_data_type(),
            prop::collection::vec(arb_field(edition), 0..6)
        )
            .prop_map(|(modulation, fields)| Ifp::Data { modulation, fields }),
    ]
}

proptest! {
    #[test]
    fn roundtrip_2002(ifp in arb_ifp(Asn1Edition::Y2002)) {
        let bytes = ifp.to_bytes();
        prop_assert_eq!(Ifp::decode(&bytes).unwrap(), ifp.clone());
        let mut strict = Vec::new();
        ifp.encode_as(Asn1Edition::Y2002, &mut strict).unwrap();
        prop_assert_eq!(strict, bytes);
    }

    #[test]
    fn roundtrip_1998(ifp in arb_ifp(Asn1Edition::Y1998)) {
        let mut bytes = Vec::new();
        ifp.encode_as(Asn1Edition::Y1998, &mut bytes).unwrap();
        prop_assert_eq!(Ifp::decode_as(&bytes, Asn1Edition::Y1998).unwrap(), ifp);
    }

    #[test]
    fn roundtrip_through_tpkt_in_any_pieces(
        packets in prop::collection::vec(arb_ifp(Asn1Edition::Y2002), 1..8),
        cut in 1usize..40,
    ) {
        let mut stream = Vec::new();
        for p in &packets {
            tpkt_frame(&p.to_bytes(), &mut stream).unwrap();
        }
        let mut s = IfpStream::new(Asn1Edition::Y2002);
        let mut got = Vec::new();
        for chunk in stream.chunks(cut) {
            s.push(chunk);
            while let Some(p) = s.next_ifp().unwrap() {
                got.push(p);
            }
        }
        prop_assert_eq!(got, packets);
        prop_assert_eq!(s.decoder().buffered(), 0);
    }

    #[test]
    fn decode_never_panics_and_accepted_input_reencodes(
        bytes in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        for edition in [Asn1Edition::Y2002, Asn1Edition::Y1998] {
            if let Ok(ifp) = Ifp::decode_as(&bytes, edition) {
                let mut again = Vec::new();
                ifp.encode_as(edition, &mut again).unwrap();
                prop_assert_eq!(Ifp::decode_as(&again, edition).unwrap(), ifp);
            }
        }
        let mut d = TpktDecoder::new();
        d.push(&bytes);
        while let Ok(Some(_)) = d.next_packet() {}
    }
}
