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
    /// The `status-message` (at most 255 octets).
    pub message: String,
}

impl Refusal {
    /// A refusal with this status and message.
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
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
