//! Pure helpers over the `ipp` crate's [`IppRequestResponse`]: the request
//! checks of RFC 8011 section 4.1, typed attribute getters, and request and
//! response builders. No I/O.

use ipp::model::{DelimiterTag, StatusCode};
use ipp::prelude::*;
use ipp::value::{IppKeyword, IppMimeMediaType, IppName, IppShortString, IppString, IppTextValue};

use crate::codes::status;

/// The versions the front speaks (`ipp-versions-supported`).
pub const VERSIONS: [&str; 2] = ["1.1", "2.0"];

/// A parsed request without its payload. Unlike the `ipp` crate's
/// `IppRequestResponse` (whose payload reader is not `Sync`), it can be
/// borrowed across an `.await`.
#[derive(Debug, Clone)]
pub struct Parsed {
    /// Version, operation and request id.
    pub header: IppHeader,
    /// The attribute groups.
    pub attributes: IppAttributes,
}

/// Read access to a message's header and attributes.
pub trait Attrs {
    /// The header.
    fn header(&self) -> &IppHeader;
    /// The attribute groups.
    fn attributes(&self) -> &IppAttributes;
}

impl Attrs for IppRequestResponse {
    fn header(&self) -> &IppHeader {
        IppRequestResponse::header(self)
    }
    fn attributes(&self) -> &IppAttributes {
        IppRequestResponse::attributes(self)
    }
}

impl Attrs for Parsed {
    fn header(&self) -> &IppHeader {
        &self.header
    }
    fn attributes(&self) -> &IppAttributes {
        &self.attributes
    }
}

/// Why a request was refused before its operation ran: the status code to
/// answer with and a message naming what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The IPP status code.
    pub status: u16,
    /// Attributes to return in the unsupported-attributes group, as
    /// `(name, requested value)`.
    pub unsupported: Vec<(String, IppValue)>,
    /// The `status-message` (at most 255 octets).
    pub message: String,
}

impl Refusal {
    /// A refusal with this status and message.
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            unsupported: Vec::new(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "0x{:04x}: {}", self.status, self.message)
    }
}

/// Checks every request must pass (RFC 8011 sections 4.1.1, 4.1.4, 4.1.8):
/// a version we speak, a non-zero request-id, and an operation group that
/// starts with `attributes-charset` (utf-8 or us-ascii) followed by
/// `attributes-natural-language`.
pub fn check_request(req: &impl Attrs) -> Result<(), Refusal> {
    let version = req.header().version.0;
    if !matches!(version >> 8, 1 | 2) {
        return Err(Refusal::new(
            status::VERSION_NOT_SUPPORTED,
            format!(
                "IPP version {}.{} is not supported (1.x and 2.x are)",
                version >> 8,
                version & 0xff
            ),
        ));
    }
    if req.header().request_id <= 0 {
        return Err(Refusal::new(
            status::BAD_REQUEST,
            "request-id must be between 1 and 2^31-1",
        ));
    }
    let groups = req.attributes().groups();
    let Some(first) = groups.first() else {
        return Err(Refusal::new(
            status::BAD_REQUEST,
            "missing operation attributes group",
        ));
    };
    if first.tag() != DelimiterTag::OperationAttributes {
        return Err(Refusal::new(
            status::BAD_REQUEST,
            "the first attribute group must be the operation attributes",
        ));
    }
    let attrs = first.attributes();
    match attrs.first() {
        Some(a) if a.name().as_str() == "attributes-charset" => match a.value() {
            IppValue::Charset(c)
                if c.as_str().eq_ignore_ascii_case("utf-8")
                    || c.as_str().eq_ignore_ascii_case("us-ascii") => {}
            IppValue::Charset(c) => {
                return Err(Refusal::new(
                    status::CHARSET_NOT_SUPPORTED,
                    format!(
                        "attributes-charset {} is not supported (utf-8 is)",
                        c.as_str()
                    ),
                ));
            }
            _ => {
                return Err(Refusal::new(
                    status::BAD_REQUEST,
                    "attributes-charset must have the charset syntax",
                ));
            }
        },
        _ => {
            return Err(Refusal::new(
                status::BAD_REQUEST,
                "attributes-charset must be the first operation attribute",
            ));
        }
    }
    match attrs.get(1) {
        Some(a) if a.name().as_str() == "attributes-natural-language" => {
            if !matches!(a.value(), IppValue::NaturalLanguage(_)) {
                return Err(Refusal::new(
                    status::BAD_REQUEST,
                    "attributes-natural-language must have the naturalLanguage syntax",
                ));
            }
        }
        _ => {
            return Err(Refusal::new(
                status::BAD_REQUEST,
                "attributes-natural-language must be the second operation attribute",
            ));
        }
    }
    // Each attribute at most once per group (RFC 8011 section 4.1.3).
    for group in groups {
        let mut seen = std::collections::HashSet::new();
        for a in group.attributes() {
            if !seen.insert(a.name().as_str()) {
                return Err(Refusal::new(
                    status::BAD_REQUEST,
                    format!("attribute {} appears twice in one group", a.name().as_str()),
                ));
            }
        }
    }
    Ok(())
}

/// Parses a whole request held in memory (the fuzz target and tests use
/// it; the front streams its requests through the `ipp` crate's async
/// twin of this parser): the header and attribute groups with the `ipp`
/// crate's sync parser, then [`check_request`]. Returns
/// the request and the offset of the first document byte, which is the
/// length of the IPP part.
///
/// Every failure to parse is a `client-error-bad-request` whose message
/// names what was wrong; the checks keep their own status codes (e.g.
/// `server-error-version-not-supported`). The bytes are copied once,
/// because the parser needs an owned reader.
pub fn parse(bytes: &[u8]) -> Result<(Parsed, usize), Refusal> {
    if bytes.len() < 8 {
        return Err(Refusal::new(
            status::BAD_REQUEST,
            format!(
                "truncated IPP header: {} of 8 octets (version, operation, request-id)",
                bytes.len()
            ),
        ));
    }
    check_before_parse(bytes)?;
    let reader = ipp::reader::IppReader::new(std::io::Cursor::new(bytes.to_vec()));
    let (header, attributes, rest) = ipp::parser::IppParser::new(reader)
        .parse_parts()
        .map_err(|e| Refusal::new(status::BAD_REQUEST, parse_error_message(&e)))?;
    // The cursor never moves past the end of `bytes`.
    let offset = usize::try_from(rest.into_inner().position())
        .unwrap_or(bytes.len())
        .min(bytes.len());
    let parsed = Parsed { header, attributes };
    check_request(&parsed)?;
    Ok((parsed, offset))
}

/// How deeply collections may nest in a request or response. The deepest
/// standard attributes nest three deep (`media-size` in `media-col` in a
/// `job-presets-supported` preset); 16 leaves room for vendors'.
pub const MAX_COLLECTION_DEPTH: usize = 16;

/// The `ipp` crate (8.0.0, `value.rs` `get_len_string`) panics on a
/// textWithLanguage or nameWithLanguage value whose inner language or
/// text length runs past the value: it slices without a bounds check. So
/// [`parse`] walks the attribute framing first and refuses such values.
/// It also clones and drops a collection recursively, and spends time
/// quadratic in the nesting depth, so a request of a few hundred KB with
/// collections nested thousands deep would overflow a worker's stack and
/// abort the process; such requests are refused before parsing too.
/// Any other framing problem is left to the parser, which reports it.
pub(crate) fn check_before_parse(bytes: &[u8]) -> Result<(), Refusal> {
    let u16_at = |at: usize| {
        bytes
            .get(at..at.checked_add(2)?)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    };
    let mut at = 8;
    let mut depth = 0usize;
    loop {
        let Some(&tag) = bytes.get(at) else {
            return Ok(());
        };
        at += 1;
        match tag {
            0x03 => return Ok(()),
            0x01..=0x0a => {}
            0x10..=0x4a => {
                // begCollection / endCollection (RFC 8010 section 3.1.6).
                if tag == 0x34 {
                    depth += 1;
                    if depth > MAX_COLLECTION_DEPTH {
                        return Err(Refusal::new(
                            status::BAD_REQUEST,
                            format!(
                                "malformed IPP message: collections nested more than \
                                 {MAX_COLLECTION_DEPTH} deep"
                            ),
                        ));
                    }
                } else if tag == 0x37 {
                    depth = depth.saturating_sub(1);
                }
                let Some(name_len) = u16_at(at) else {
                    return Ok(());
                };
                at += 2 + name_len;
                let Some(value_len) = u16_at(at) else {
                    return Ok(());
                };
                at += 2;
                let Some(value) = bytes.get(at..at + value_len) else {
                    return Ok(());
                };
                at += value_len;
                if matches!(tag, 0x35 | 0x36) && !with_language_fits(value) {
                    return Err(Refusal::new(
                        status::BAD_REQUEST,
                        format!(
                            "malformed IPP message: a {} value's language or text length runs \
                             past the value",
                            if tag == 0x35 {
                                "textWithLanguage"
                            } else {
                                "nameWithLanguage"
                            }
                        ),
                    ));
                }
            }
            _ => return Ok(()),
        }
    }
}

/// Whether the two length-prefixed strings of a textWithLanguage or
/// nameWithLanguage value stay inside it (RFC 8010 section 3.9). A value
/// too short for a length field is fine here: the parser refuses it.
fn with_language_fits(value: &[u8]) -> bool {
    let mut rest = value;
    for _ in 0..2 {
        let [hi, lo, tail @ ..] = rest else {
            return true;
        };
        let len = usize::from(u16::from_be_bytes([*hi, *lo]));
        let Some(after) = tail.get(len..) else {
            return false;
        };
        rest = after;
    }
    true
}

/// What a parse error means for the sender, as a `status-message`.
fn parse_error_message(e: &ipp::parser::IppParseError) -> String {
    use ipp::parser::IppParseError as E;
    match e {
        E::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            "malformed IPP request: the data ends inside the attributes (a length runs past \
             the end, or the end-of-attributes tag is missing)"
                .to_owned()
        }
        E::InvalidTag(tag) => format!("malformed IPP request: unknown tag 0x{tag:02x}"),
        E::InvalidStringLength { len, max } => format!(
            "malformed IPP request: a {len}-octet value is longer than its syntax allows ({max})"
        ),
        E::InvalidValueLength(_) => {
            "malformed IPP request: a value is shorter than its syntax needs".to_owned()
        }
        E::InvalidCollection => {
            "malformed IPP request: a collection delimiter carries a value".to_owned()
        }
        other => format!("malformed IPP request: {other}"),
    }
}

/// The value of an attribute in the first group with this tag.
pub fn attr<'a>(msg: &'a impl Attrs, tag: DelimiterTag, name: &str) -> Option<&'a IppValue> {
    msg.attributes()
        .groups_of(tag)
        .next()
        .and_then(|g| g.get(name))
        .map(IppAttribute::value)
}

/// The value of an operation attribute.
pub fn op_attr<'a>(msg: &'a impl Attrs, name: &str) -> Option<&'a IppValue> {
    attr(msg, DelimiterTag::OperationAttributes, name)
}

/// The values of an attribute, one or many.
pub fn values(v: &IppValue) -> Vec<&IppValue> {
    match v {
        IppValue::Array(items) => items.iter().collect(),
        one => vec![one],
    }
}

/// A string-like value (text, name, keyword, uri, mime type, charset,
/// language), without its language.
pub fn as_str(v: &IppValue) -> Option<&str> {
    Some(match v {
        IppValue::TextWithoutLanguage(s) => s.as_ref(),
        IppValue::NameWithoutLanguage(s) => s.as_str(),
        IppValue::TextWithLanguage { text, .. } => text.as_ref(),
        IppValue::NameWithLanguage { name, .. } => name.as_str(),
        IppValue::Keyword(s) | IppValue::MemberAttrName(s) => s.as_str(),
        IppValue::Uri(s) | IppValue::UriScheme(s) => s.as_str(),
        IppValue::MimeMediaType(s) => s.as_str(),
        IppValue::Charset(s) => s.as_str(),
        IppValue::NaturalLanguage(s) => s.as_str(),
        _ => return None,
    })
}

/// An integer or enum value.
pub fn as_int(v: &IppValue) -> Option<i32> {
    match v {
        IppValue::Integer(i) | IppValue::Enum(i) => Some(*i),
        _ => None,
    }
}

/// A boolean value.
pub fn as_bool(v: &IppValue) -> Option<bool> {
    match v {
        IppValue::Boolean(b) => Some(*b),
        _ => None,
    }
}

/// All string values of an attribute (for 1setOf keyword and the like).
pub fn strings(v: Option<&IppValue>) -> Vec<String> {
    v.map(|v| {
        values(v)
            .into_iter()
            .filter_map(as_str)
            .map(str::to_owned)
            .collect()
    })
    .unwrap_or_default()
}

/// All integer values of an attribute.
pub fn ints(v: Option<&IppValue>) -> Vec<i32> {
    v.map(|v| values(v).into_iter().filter_map(as_int).collect())
        .unwrap_or_default()
}

/// An attribute with this name (names are ASCII keywords, at most 255
/// octets).
pub fn attribute(name: &str, value: IppValue) -> IppAttribute {
    IppAttribute::new(IppName::new_truncated(truncate(name, 255)), value)
}

/// A keyword value (keywords longer than 255 octets are cut).
pub fn keyword(s: &str) -> IppValue {
    IppValue::Keyword(IppKeyword::new_truncated(truncate(s, 255)))
}

/// A 1setOf keyword value (one value stays a single value).
pub fn keywords<S: AsRef<str>>(list: &[S]) -> IppValue {
    one_or_many(list.iter().map(|s| keyword(s.as_ref())).collect())
}

/// A text value (cut at 1023 octets).
pub fn text(s: &str) -> IppValue {
    IppValue::TextWithoutLanguage(text_value(s))
}

fn text_value(s: &str) -> IppTextValue {
    let cut = truncate(s, 1023);
    IppTextValue::new(cut)
        .unwrap_or_else(|_| IppTextValue::Short(IppShortString::new_truncated(String::new())))
}

/// A name value (cut at 255 octets).
pub fn name(s: &str) -> IppValue {
    IppValue::NameWithoutLanguage(IppName::new_truncated(truncate(s, 255)))
}

/// A uri value.
pub fn uri(s: &str) -> IppValue {
    IppValue::Uri(IppString::new_truncated(truncate(s, 1023)))
}

/// A mimeMediaType value.
pub fn mime(s: &str) -> IppValue {
    IppValue::MimeMediaType(IppMimeMediaType::new_truncated(truncate(s, 255)))
}

/// One value, or a 1setOf for several (the `ipp` crate's encoding).
pub fn one_or_many(mut list: Vec<IppValue>) -> IppValue {
    if list.len() == 1 {
        list.remove(0)
    } else if list.is_empty() {
        IppValue::NoValue
    } else {
        IppValue::Array(list)
    }
}

/// A response with this status, echoing the request's version and id, with
/// the charset and language attributes and an optional `status-message`.
pub fn response(
    version: IppVersion,
    request_id: i32,
    status_code: u16,
    message: Option<&str>,
) -> IppRequestResponse {
    // `new_response` returns Ok unconditionally (ipp 8: it only adds the
    // two constant charset and language attributes).
    #[allow(clippy::expect_used)]
    let mut resp = IppRequestResponse::new_response(version, StatusCode::SuccessfulOk, request_id)
        .expect("new_response is infallible");
    resp.header_mut().operation_or_status = status_code as i16;
    if let Some(m) = message {
        resp.attributes_mut().add(
            DelimiterTag::OperationAttributes,
            attribute("status-message", text(&truncate(m, 255))),
        );
    }
    resp
}

/// A request for operation `op` on `printer_uri` as `user`, version 2.0,
/// with the charset, language, printer-uri and requesting-user-name
/// operation attributes.
pub fn request(op: u16, printer_uri: &str, user: &str, request_id: i32) -> IppRequestResponse {
    let mut req = response(IppVersion::v2_0(), request_id, 0, None);
    req.header_mut().operation_or_status = op as i16;
    let ops = DelimiterTag::OperationAttributes;
    req.attributes_mut()
        .add(ops, attribute("printer-uri", uri(printer_uri)));
    req.attributes_mut()
        .add(ops, attribute("requesting-user-name", name(user)));
    req
}

/// Cut a string at a character boundary to at most `max` octets.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> IppRequestResponse {
        ipp::parser::IppParser::new(ipp::reader::IppReader::new(std::io::Cursor::new(
            bytes.to_vec(),
        )))
        .parse()
        .unwrap()
    }

    #[test]
    fn a_built_request_passes_the_checks_and_round_trips() {
        let req = request(
            crate::codes::op::GET_JOBS,
            "ipp://h/ipp/print/a",
            "alice",
            7,
        );
        let bytes = req.to_bytes();
        let back = parse(&bytes);
        assert_eq!(
            back.header().operation_or_status as u16,
            crate::codes::op::GET_JOBS
        );
        assert_eq!(back.header().request_id, 7);
        check_request(&back).unwrap();
        assert_eq!(
            op_attr(&back, "requesting-user-name").and_then(as_str),
            Some("alice")
        );
    }

    #[test]
    fn version_zero_and_request_id_zero_and_missing_charset_are_refused() {
        let mut req = request(crate::codes::op::GET_JOBS, "ipp://h/p", "u", 1);
        req.header_mut().version = IppVersion(0);
        assert_eq!(
            check_request(&req).unwrap_err().status,
            status::VERSION_NOT_SUPPORTED
        );

        let req = request(crate::codes::op::GET_JOBS, "ipp://h/p", "u", 0);
        assert_eq!(check_request(&req).unwrap_err().status, status::BAD_REQUEST);

        // Header, operation group with only printer-uri, end.
        let mut raw = vec![0x02, 0x00, 0x00, 0x0b, 0, 0, 0, 1, 0x01];
        raw.extend([0x45, 0, 11]);
        raw.extend(b"printer-uri");
        raw.extend([0, 8]);
        raw.extend(b"ipp://h/");
        raw.push(0x03);
        let err = check_request(&parse(&raw)).unwrap_err();
        assert_eq!(err.status, status::BAD_REQUEST);
        assert!(err.message.contains("attributes-charset"), "{err}");
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 5), "abc");
    }
}

#[cfg(test)]
mod parse_tests {
    use super::*;
    use crate::codes::op;

    /// A valid Print-Job: header, operation group, end tag, document.
    fn print_job(doc: &[u8]) -> (Vec<u8>, usize) {
        let mut bytes = request(op::PRINT_JOB, "ipp://h/ipp/print/a", "alice", 9)
            .to_bytes()
            .to_vec();
        let head = bytes.len();
        bytes.extend_from_slice(doc);
        (bytes, head)
    }

    /// The header and the operation group up to the language value, with
    /// the given version and request-id.
    fn head(version: [u8; 2], request_id: i32) -> Vec<u8> {
        let mut raw = vec![version[0], version[1], 0x00, 0x0b];
        raw.extend(request_id.to_be_bytes());
        raw.push(0x01);
        raw.extend([0x47, 0, 18]);
        raw.extend(b"attributes-charset");
        raw.extend([0, 5]);
        raw.extend(b"utf-8");
        raw.extend([0x48, 0, 27]);
        raw.extend(b"attributes-natural-language");
        raw.extend([0, 2]);
        raw.extend(b"en");
        raw
    }

    #[test]
    fn a_valid_request_parses_and_the_document_offset_is_exact() {
        let (bytes, head_len) = print_job(b"%PDF-1.7 body");
        let (req, offset) = parse(&bytes).unwrap();
        assert_eq!(offset, head_len);
        assert_eq!(&bytes[offset..], b"%PDF-1.7 body");
        assert_eq!(req.header().request_id, 9);
        assert_eq!(req.header().operation_or_status as u16, op::PRINT_JOB);
        assert_eq!(
            op_attr(&req, "requesting-user-name").and_then(as_str),
            Some("alice")
        );
        let (_, offset) = parse(&print_job(b"").0).unwrap();
        assert_eq!(offset, head_len);
    }

    #[test]
    fn with_language_values_parse_when_their_lengths_fit() {
        let mut raw = head([2, 0], 5);
        // textWithLanguage: language "en", text "hi".
        raw.extend([0x35, 0, 1, b't', 0, 8, 0, 2, b'e', b'n', 0, 2, b'h', b'i']);
        raw.push(0x03);
        let (req, offset) = parse(&raw).unwrap();
        assert_eq!(offset, raw.len());
        assert_eq!(op_attr(&req, "t").and_then(as_str), Some("hi"));
        assert!(with_language_fits(&[]));
        assert!(with_language_fits(&[0, 0, 0, 0]));
        assert!(!with_language_fits(&[0, 1]));
        assert!(!with_language_fits(&[0, 0, 0, 3, b'a']));
    }

    #[test]
    fn malformed_requests_are_bad_requests_naming_the_problem() {
        let good = head([2, 0], 1);
        let with = |tail: &[u8]| {
            let mut v = good.clone();
            v.extend_from_slice(tail);
            v
        };
        // (case, bytes, status, words the message must contain)
        let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
            ("empty", vec![], status::BAD_REQUEST, "header"),
            (
                "short header",
                vec![2, 0, 0, 0x0b, 0],
                status::BAD_REQUEST,
                "header",
            ),
            (
                "no end tag",
                good.clone(),
                status::BAD_REQUEST,
                "ends inside",
            ),
            (
                "cut mid value",
                with(&[
                    0x45, 0, 11, b'p', b'r', b'i', b'n', b't', b'e', b'r', b'-', b'u', b'r', b'i',
                    0, 20, b'i', b'p',
                ]),
                status::BAD_REQUEST,
                "ends inside",
            ),
            (
                "length 0xffff with few bytes",
                with(&[0x45, 0, 1, b'x', 0xff, 0xff, b'a', b'b', 0x03]),
                status::BAD_REQUEST,
                "ends inside",
            ),
            (
                "value tag 0x7f",
                with(&[0x7f, 0, 1, b'x', 0, 0, 0x03]),
                status::BAD_REQUEST,
                "0x7f",
            ),
            ("tag 0xff", with(&[0xff, 0x03]), status::BAD_REQUEST, "0xff"),
            ("tag 0x0b", with(&[0x0b, 0x03]), status::BAD_REQUEST, "0x0b"),
            (
                "integer of 2 octets",
                with(&[0x21, 0, 1, b'n', 0, 2, 0, 1, 0x03]),
                status::BAD_REQUEST,
                "shorter",
            ),
            (
                "keyword of 300 octets",
                {
                    let mut t = vec![0x44, 0, 1, b'k', 0x01, 0x2c];
                    t.extend([b'a'; 300]);
                    t.push(0x03);
                    with(&t)
                },
                status::BAD_REQUEST,
                "longer",
            ),
            (
                "textWithLanguage with a language length past the value",
                with(&[0x35, 0, 1, b't', 0, 4, 0x1e, 0x1e, b'e', b'n', 0x03]),
                status::BAD_REQUEST,
                "textWithLanguage",
            ),
            (
                "nameWithLanguage with a name length past the value",
                with(&[0x36, 0, 1, b'n', 0, 7, 0, 2, b'e', b'n', 0, 9, b'x', 0x03]),
                status::BAD_REQUEST,
                "nameWithLanguage",
            ),
            (
                "version 0.0",
                {
                    let mut v = head([0, 0], 3);
                    v.push(0x03);
                    v
                },
                status::VERSION_NOT_SUPPORTED,
                "version",
            ),
            (
                "request-id 0",
                {
                    let mut v = head([1, 1], 0);
                    v.push(0x03);
                    v
                },
                status::BAD_REQUEST,
                "request-id",
            ),
            (
                "no charset",
                vec![2, 0, 0, 0x0b, 0, 0, 0, 1, 0x01, 0x03],
                status::BAD_REQUEST,
                "attributes-charset",
            ),
        ];
        for (case, bytes, code, words) in cases {
            let err = parse(&bytes).expect_err(case);
            assert_eq!(err.status, code, "{case}: {err}");
            assert!(err.message.contains(words), "{case}: {err}");
        }
    }
}
