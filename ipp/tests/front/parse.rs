//! Property tests of `message::parse`, the pure request parser the fuzz
//! target (`ipp/fuzz`) drives: it never panics, a refusal is always an
//! IPP status with a message, and a valid request round-trips with the
//! exact document offset. CI runs these; the fuzzer goes deeper.

use faxgate_ipp::codes::{op, status};
use faxgate_ipp::message::{self, Attrs as _};
use ipp::model::DelimiterTag;
use ipp::prelude::*;
use proptest::prelude::*;

/// A valid Print-Job with job template attributes, and its IPP length.
fn valid_request() -> (Vec<u8>, usize) {
    let mut req = message::request(op::PRINT_JOB, "ipp://h:631/ipp/print/osaka", "alice", 42);
    let ops = DelimiterTag::OperationAttributes;
    let job = DelimiterTag::JobAttributes;
    let a = |req: &mut IppRequestResponse, tag, name: &str, v| {
        req.attributes_mut().add(tag, message::attribute(name, v));
    };
    a(&mut req, ops, "job-name", message::name("report"));
    a(
        &mut req,
        ops,
        "document-format",
        message::mime("application/pdf"),
    );
    a(&mut req, job, "copies", IppValue::Integer(2));
    a(
        &mut req,
        job,
        "sides",
        message::keyword("two-sided-long-edge"),
    );
    a(
        &mut req,
        job,
        "page-ranges",
        IppValue::RangeOfInteger { min: 1, max: 3 },
    );
    a(
        &mut req,
        job,
        "finishings",
        IppValue::Array(vec![IppValue::Enum(3), IppValue::Enum(4)]),
    );
    let mut bytes = req.to_bytes().to_vec();
    let head = bytes.len();
    bytes.extend_from_slice(b"%PDF-1.7\n1 0 obj <<>> endobj\n%%EOF\n");
    (bytes, head)
}

/// The refusal rules: a known status and a message naming the problem.
fn check_refusal(r: &message::Refusal) {
    assert!(
        matches!(
            r.status,
            status::BAD_REQUEST | status::VERSION_NOT_SUPPORTED | status::CHARSET_NOT_SUPPORTED
        ),
        "unexpected status {r}"
    );
    assert!(!r.message.is_empty());
}

/// Runs parse and checks what holds for any input.
fn parse_any(bytes: &[u8]) -> Option<usize> {
    match message::parse(bytes) {
        Ok((req, offset)) => {
            assert!(offset <= bytes.len());
            assert!(offset >= 9, "header plus end tag at least");
            assert_eq!(
                bytes[offset - 1],
                0x03,
                "the IPP part ends with the end tag"
            );
            assert!(req.header().request_id > 0);
            message::check_request(&req).expect("parse ran the checks");
            Some(offset)
        }
        Err(r) => {
            check_refusal(&r);
            None
        }
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Set(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, v)| Mutation::Insert(i, v)),
        (any::<usize>(), 1usize..8).prop_map(|(i, n)| Mutation::Delete(i, n)),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    let at = |i: usize, len: usize| i % len;
    match m {
        Mutation::Flip(i, b) => {
            let i = at(*i, bytes.len());
            bytes[i] ^= b;
        }
        Mutation::Set(i, b) => {
            let i = at(*i, bytes.len());
            bytes[i] = *b;
        }
        Mutation::Insert(i, v) => {
            let i = at(*i, bytes.len() + 1);
            bytes.splice(i..i, v.iter().copied());
        }
        Mutation::Delete(i, n) => {
            let i = at(*i, bytes.len());
            let end = (i + n).min(bytes.len());
            bytes.drain(i..end);
        }
        Mutation::Truncate(i) => {
            let i = at(*i, bytes.len() + 1);
            bytes.truncate(i);
        }
    }
}

/// What the fuzzer found: a textWithLanguage value whose language length
/// (0x1e1e) runs past the value made the `ipp` crate panic.
#[test]
fn the_fuzzers_with_language_crash_is_a_bad_request() {
    use base64::Engine as _;
    let crash = base64::engine::general_purpose::STANDARD
        .decode(
            "GwAAAAAAAAABNQAIbWVkACcAHAAAHh4eHh4eHh4eHh4eHh4eAAC7u7u7u7u7u7u7u7u7u7u7u7u7u7u7u7u7u7u7u7u7u7u7u7u7u7u7u7u7u7u7u7u7u7u7RA==",
        )
        .unwrap();
    let err = message::parse(&crash).expect_err("a bad value");
    assert_eq!(err.status, status::BAD_REQUEST, "{err}");
}

/// A valid operation group without the end tag.
fn valid_head() -> Vec<u8> {
    let mut bytes = message::request(op::GET_JOBS, "ipp://h/ipp/print/osaka", "alice", 7)
        .to_bytes()
        .to_vec();
    assert_eq!(bytes.pop(), Some(0x03));
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        parse_any(&bytes);
    }

    #[test]
    fn random_attributes_after_a_valid_header_never_panic(
        version in prop_oneof![Just([1u8, 1]), Just([2u8, 0]), any::<[u8; 2]>()],
        id in any::<i32>(),
        tail in proptest::collection::vec(any::<u8>(), 0..600),
    ) {
        let mut bytes = vec![version[0], version[1], 0x00, 0x02];
        bytes.extend(id.to_be_bytes());
        bytes.extend(tail);
        parse_any(&bytes);
    }

    #[test]
    fn with_language_values_of_any_shape_never_panic(
        tag in prop_oneof![Just(0x35u8), Just(0x36u8)],
        value in proptest::collection::vec(any::<u8>(), 0..40),
    ) {
        let mut bytes = valid_head();
        bytes.extend([tag, 0, 1, b't']);
        bytes.extend((value.len() as u16).to_be_bytes());
        bytes.extend(&value);
        bytes.push(0x03);
        parse_any(&bytes);
    }

    #[test]
    fn mutated_valid_requests_never_panic(
        mutations in proptest::collection::vec(mutation(), 1..6),
    ) {
        let (mut bytes, _) = valid_request();
        for m in &mutations {
            apply(&mut bytes, m);
        }
        parse_any(&bytes);
    }

    #[test]
    fn a_request_cut_inside_its_attributes_is_a_bad_request(cut in 0usize..1000) {
        let (bytes, head) = valid_request();
        let cut = cut % head;
        let err = message::parse(&bytes[..cut]).expect_err("a cut request");
        prop_assert_eq!(err.status, status::BAD_REQUEST, "{}", err);
    }

    #[test]
    fn document_bytes_never_change_the_attributes(
        doc in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let (mut bytes, head) = valid_request();
        bytes.truncate(head);
        bytes.extend_from_slice(&doc);
        let (req, offset) = message::parse(&bytes).expect("valid");
        prop_assert_eq!(offset, head);
        prop_assert_eq!(&bytes[offset..], &doc[..]);
        prop_assert_eq!(req.header().request_id, 42);
        prop_assert_eq!(
            message::attr(&req, DelimiterTag::JobAttributes, "copies"),
            Some(&IppValue::Integer(2))
        );
    }

    #[test]
    fn built_requests_round_trip(
        user in "[a-z][a-z0-9]{0,20}",
        id in 1i32..=i32::MAX,
        op_code in 0x0002u16..0x0050,
        keywords in proptest::collection::vec("[a-z][a-z0-9-]{0,30}", 1..5),
        numbers in proptest::collection::vec(any::<i32>(), 1..5),
    ) {
        let mut req = message::request(op_code, "ipp://h/ipp/print/osaka", &user, id);
        req.attributes_mut().add(
            DelimiterTag::JobAttributes,
            message::attribute("x-keywords", message::keywords(&keywords)),
        );
        req.attributes_mut().add(
            DelimiterTag::JobAttributes,
            message::attribute(
                "x-numbers",
                message::one_or_many(numbers.iter().map(|n| IppValue::Integer(*n)).collect()),
            ),
        );
        let bytes = req.to_bytes().to_vec();
        let (back, offset) = message::parse(&bytes).expect("a built request parses");
        prop_assert_eq!(offset, bytes.len());
        prop_assert_eq!(back.header().request_id, id);
        prop_assert_eq!(back.header().operation_or_status as u16, op_code);
        prop_assert_eq!(
            message::op_attr(&back, "requesting-user-name").and_then(message::as_str),
            Some(user.as_str())
        );
        prop_assert_eq!(
            message::strings(message::attr(&back, DelimiterTag::JobAttributes, "x-keywords")),
            keywords
        );
        prop_assert_eq!(
            message::ints(message::attr(&back, DelimiterTag::JobAttributes, "x-numbers")),
            numbers
        );
    }
}
