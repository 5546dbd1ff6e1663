//! The command-mail format of `COMMAND-MAIL.md`: building, signing,
//! parsing and verifying wake and cancel mails.
//!
//! Pure: no sockets, no files, no clock. The time is always an argument
//! (`now`, `date`), and the replay cache is a value the caller owns.
//! The only outside input is [`random_nonce`], which draws from the
//! operating system's random source, and the one outside effect is the
//! caller's: a durable [`NonceCache`] (`crate::nonces`) appends each
//! accepted nonce to its file.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use mail_parser::{MessageParser, PartType};
use ring::hmac;
use ring::signature::{self, KeyPair as _};

use crate::error::{CommandError, KeyError};
pub use crate::nonces::NonceCache;

/// The first signed line; it names the format and its version, and keeps
/// signatures over command mails apart from signatures over anything else.
pub const VERSION_LINE: &str = "faxgate-command: 1";
/// The longest lifetime (expiry minus `now`) a verifier accepts. Nonces
/// are remembered until expiry, so this bounds the replay cache's memory.
pub const MAX_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);
/// How far the verifier's clock may run ahead of the signer's: a command
/// is taken until `Expires` plus this (and its nonce remembered as long),
/// so an agent whose clock is a few minutes fast, or a mail a greylisting
/// server held back, still wakes the agent instead of being refused as
/// expired. Kerberos allows the same five minutes.
pub const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);
/// The most job ids one mail may name.
pub const MAX_JOBS: usize = 64;
/// The largest raw message read as a possible command mail. A real one
/// is well under 2 KiB; anything near this is something else.
pub const MAX_MESSAGE_SIZE: u64 = 64 * 1024;
/// The shortest HMAC secret accepted, in bytes.
pub const MIN_HMAC_SECRET: usize = 16;
/// Nonce length in bytes for [`random_nonce`] (128 bits).
pub const NONCE_BYTES: usize = 16;

const MAX_PROXY_LEN: usize = 512;
const MAX_PRINTER_LEN: usize = 255;
pub(crate) const MAX_NONCE_HEX: usize = 128;
const MAX_ADDRESS_LEN: usize = 254;
/// 9999-12-31T23:59:59Z + 1 s: the end of what RFC 3339 can write.
const END_OF_YEAR_9999: u64 = 253_402_300_800;

/// What the agent is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Connect to the proxy (the Infrastructure Printer) and fetch the jobs.
    Wake,
    /// The sender gave up waiting: drop the session with the proxy for
    /// these jobs (seed 000's "cancellation mail").
    Cancel,
}

impl Kind {
    /// The word used in the `Kind` line and the subject.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Wake => "wake",
            Self::Cancel => "cancel",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "wake" => Some(Self::Wake),
            "cancel" => Some(Self::Cancel),
            _ => None,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One wake or cancel command, as the relay's mailer sends it and the
/// agent's watcher receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// Wake or cancel.
    pub kind: Kind,
    /// The Infrastructure Printer URI the agent connects to.
    pub proxy_uri: String,
    /// The printer (server site) name, e.g. `expp1%abc.com`.
    pub printer: String,
    /// The jobs waiting at the proxy; may be empty.
    pub job_ids: Vec<u64>,
    /// After this instant the command must not be acted on. Only whole
    /// seconds are written; [`Command::new`] drops the fraction.
    pub expires: SystemTime,
    /// Lowercase hex, at least 128 bits; see [`random_nonce`].
    pub nonce: String,
}

impl Command {
    /// Makes a command, dropping the sub-second part of `expires` so that
    /// what is signed and what is parsed back compare equal.
    pub fn new(
        kind: Kind,
        proxy_uri: impl Into<String>,
        printer: impl Into<String>,
        job_ids: Vec<u64>,
        expires: SystemTime,
        nonce: impl Into<String>,
    ) -> Self {
        let expires = match expires.duration_since(UNIX_EPOCH) {
            Ok(d) => UNIX_EPOCH + Duration::from_secs(d.as_secs()),
            Err(_) => expires,
        };
        Self {
            kind,
            proxy_uri: proxy_uri.into(),
            printer: printer.into(),
            job_ids,
            expires,
            nonce: nonce.into(),
        }
    }

    /// The signed lines, in order, each without its line end.
    fn lines(&self) -> Result<[String; 7], CommandError> {
        check_proxy(&self.proxy_uri)?;
        check_printer(&self.printer)?;
        check_nonce(&self.nonce)?;
        Ok([
            VERSION_LINE.to_owned(),
            format!("Kind: {}", self.kind),
            format!("Proxy: {}", self.proxy_uri),
            format!("Printer: {}", self.printer),
            format!("Jobs: {}", format_jobs(&self.job_ids)?),
            format!("Expires: {}", format_expires(self.expires)?),
            format!("Nonce: {}", self.nonce),
        ])
    }

    /// The exact bytes the signature covers: the version line and the six
    /// field lines, each ended by LF. Fails if a field cannot be written.
    pub fn canonical_bytes(&self) -> Result<Vec<u8>, CommandError> {
        let mut out = Vec::with_capacity(256);
        for line in self.lines()? {
            out.extend_from_slice(line.as_bytes());
            out.push(b'\n');
        }
        Ok(out)
    }

    /// The mail body: the signed lines plus the `Signature` line, with
    /// CRLF line ends as RFC 5322 wants.
    pub fn body(&self, signer: &Signer) -> Result<String, CommandError> {
        let canonical = self.canonical_bytes()?;
        let mut body = String::with_capacity(canonical.len() + 128);
        for line in self.lines()? {
            body.push_str(&line);
            body.push_str("\r\n");
        }
        body.push_str("Signature: ");
        body.push_str(&signer.sign(&canonical));
        body.push_str("\r\n");
        Ok(body)
    }

    /// `faxgate command: wake expp1%abc.com`, for people reading the inbox.
    /// Not signed and not used by the verifier.
    pub fn subject(&self) -> String {
        format!("faxgate command: {} {}", self.kind, self.printer)
    }

    /// A complete RFC 5322 message (CRLF line ends, 7-bit ASCII) ready for
    /// SMTP. `Date` is `date`; `Message-ID` is derived from the nonce and
    /// the sender's domain, so resending the same command keeps its id.
    pub fn to_message(
        &self,
        signer: &Signer,
        from: &str,
        to: &str,
        date: SystemTime,
    ) -> Result<Vec<u8>, CommandError> {
        check_address("From", from)?;
        check_address("To", to)?;
        let body = self.body(signer)?;
        let domain = from.rsplit('@').next().unwrap_or(from);
        let headers = [
            ("From", from.to_owned()),
            ("To", to.to_owned()),
            ("Subject", self.subject()),
            ("Date", rfc5322_date(date)?),
            ("Message-ID", format!("<faxgate.{}@{domain}>", self.nonce)),
            ("MIME-Version", "1.0".to_owned()),
            ("Content-Type", "text/plain; charset=us-ascii".to_owned()),
            ("Content-Transfer-Encoding", "7bit".to_owned()),
            ("Auto-Submitted", "auto-generated".to_owned()),
        ];
        let mut out = String::with_capacity(body.len() + 512);
        for (name, value) in headers {
            out.push_str(name);
            out.push_str(": ");
            out.push_str(&value);
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        out.push_str(&body);
        Ok(out.into_bytes())
    }
}

/// A fresh nonce: [`NONCE_BYTES`] bytes from the operating system's
/// random source (through `rand`'s thread RNG, a CSPRNG seeded from it),
/// as lowercase hex.
pub fn random_nonce() -> String {
    hex::encode(rand::random::<[u8; NONCE_BYTES]>())
}

/// A signature scheme of the `Signature` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// HMAC-SHA256 with the printer's shared secret.
    HmacSha256,
    /// Ed25519 (RFC 8032); the agent holds only the public key.
    Ed25519,
}

impl Scheme {
    /// The scheme's tag in the `Signature` line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HmacSha256 => "hmac-sha256",
            Self::Ed25519 => "ed25519",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "hmac-sha256" => Some(Self::HmacSha256),
            "ed25519" => Some(Self::Ed25519),
            _ => None,
        }
    }

    fn signature_len(self) -> usize {
        match self {
            Self::HmacSha256 => 32,
            Self::Ed25519 => 64,
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Signs command mails: the relay's mailer holds one per printer.
pub struct Signer {
    key: SignerKey,
}

enum SignerKey {
    Hmac(hmac::Key),
    Ed25519(signature::Ed25519KeyPair),
}

impl Signer {
    /// HMAC-SHA256 with the printer's shared secret (its raw bytes; at
    /// least [`MIN_HMAC_SECRET`]).
    pub fn hmac(secret: &[u8]) -> Result<Self, KeyError> {
        Ok(Self {
            key: SignerKey::Hmac(hmac_key(secret)?),
        })
    }

    /// Ed25519 from a 32-byte RFC 8032 seed (the private key).
    pub fn ed25519_from_seed(seed: &[u8]) -> Result<Self, KeyError> {
        let pair = signature::Ed25519KeyPair::from_seed_unchecked(seed)
            .map_err(|_| KeyError::Ed25519 { what: "seed" })?;
        Ok(Self {
            key: SignerKey::Ed25519(pair),
        })
    }

    /// Ed25519 from a PKCS#8 v1 or v2 document (DER), as `openssl genpkey
    /// -algorithm ed25519 -outform DER` writes it.
    pub fn ed25519_from_pkcs8(der: &[u8]) -> Result<Self, KeyError> {
        let pair = signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map_err(|_| KeyError::Ed25519 { what: "PKCS#8 key" })?;
        Ok(Self {
            key: SignerKey::Ed25519(pair),
        })
    }

    /// The scheme this signer writes.
    pub fn scheme(&self) -> Scheme {
        match self.key {
            SignerKey::Hmac(_) => Scheme::HmacSha256,
            SignerKey::Ed25519(_) => Scheme::Ed25519,
        }
    }

    /// The verifier that accepts this signer's mails (for HMAC the same
    /// secret, for Ed25519 the public key).
    pub fn verifier(&self) -> Verifier {
        let key = match &self.key {
            SignerKey::Hmac(k) => VerifierKey::Hmac(k.clone()),
            SignerKey::Ed25519(pair) => {
                let mut public = [0u8; 32];
                public.copy_from_slice(pair.public_key().as_ref());
                VerifierKey::Ed25519(public)
            }
        };
        Verifier { key }
    }

    /// `scheme:base64` over `canonical`.
    fn sign(&self, canonical: &[u8]) -> String {
        let (scheme, bytes) = match &self.key {
            SignerKey::Hmac(k) => (
                Scheme::HmacSha256,
                hmac::sign(k, canonical).as_ref().to_vec(),
            ),
            SignerKey::Ed25519(pair) => (Scheme::Ed25519, pair.sign(canonical).as_ref().to_vec()),
        };
        format!("{scheme}:{}", BASE64.encode(bytes))
    }
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("scheme", &self.scheme())
            .field("key", &"MASKED")
            .finish()
    }
}

/// Checks command mails: the agent's watcher holds one for its printer.
#[derive(Clone)]
pub struct Verifier {
    key: VerifierKey,
}

#[derive(Clone)]
enum VerifierKey {
    Hmac(hmac::Key),
    Ed25519([u8; 32]),
}

impl Verifier {
    /// HMAC-SHA256 with the printer's shared secret.
    pub fn hmac(secret: &[u8]) -> Result<Self, KeyError> {
        Ok(Self {
            key: VerifierKey::Hmac(hmac_key(secret)?),
        })
    }

    /// Ed25519 with the relay's 32-byte public key.
    pub fn ed25519(public_key: &[u8]) -> Result<Self, KeyError> {
        let public: [u8; 32] = public_key.try_into().map_err(|_| KeyError::Ed25519 {
            what: "public key (must be 32 bytes)",
        })?;
        Ok(Self {
            key: VerifierKey::Ed25519(public),
        })
    }

    /// The scheme this verifier accepts; mails signed otherwise fail with
    /// [`CommandError::SchemeMismatch`].
    pub fn scheme(&self) -> Scheme {
        match self.key {
            VerifierKey::Hmac(_) => Scheme::HmacSha256,
            VerifierKey::Ed25519(_) => Scheme::Ed25519,
        }
    }

    /// Constant-time check of `sig` over `canonical` (ring compares HMAC
    /// tags in constant time; Ed25519 verification does not branch on
    /// secrets).
    fn verify(&self, canonical: &[u8], scheme: Scheme, sig: &[u8]) -> Result<(), CommandError> {
        if scheme != self.scheme() {
            return Err(CommandError::SchemeMismatch {
                expected: self.scheme().as_str(),
                found: scheme.as_str(),
            });
        }
        let ok = match &self.key {
            VerifierKey::Hmac(k) => hmac::verify(k, canonical, sig).is_ok(),
            VerifierKey::Ed25519(public) => {
                signature::UnparsedPublicKey::new(&signature::ED25519, public)
                    .verify(canonical, sig)
                    .is_ok()
            }
        };
        if ok {
            Ok(())
        } else {
            Err(CommandError::BadSignature)
        }
    }
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Verifier");
        d.field("scheme", &self.scheme());
        match &self.key {
            VerifierKey::Hmac(_) => d.field("key", &"MASKED"),
            VerifierKey::Ed25519(public) => d.field("public_key", &hex::encode(public)),
        };
        d.finish()
    }
}

fn hmac_key(secret: &[u8]) -> Result<hmac::Key, KeyError> {
    if secret.len() < MIN_HMAC_SECRET {
        return Err(KeyError::SecretTooShort {
            len: secret.len(),
            min: MIN_HMAC_SECRET,
        });
    }
    Ok(hmac::Key::new(hmac::HMAC_SHA256, secret))
}

/// Reads a raw RFC 5322 message, checks its signature with `verifier`,
/// that it names `printer`, that it has not expired at `now` (nor expires
/// more than [`MAX_LIFETIME`] later), and that its nonce is not in `seen`;
/// then records the nonce. Checks run in that order, so nothing of an
/// unauthenticated mail is trusted and only authentic nonces fill `seen`.
pub fn parse_and_verify(
    raw_message: &[u8],
    verifier: &Verifier,
    printer: &str,
    now: SystemTime,
    seen: &mut NonceCache,
) -> Result<Command, CommandError> {
    let size = raw_message.len() as u64;
    if size > MAX_MESSAGE_SIZE {
        return Err(CommandError::TooLarge {
            size,
            max: MAX_MESSAGE_SIZE,
        });
    }
    let text = command_text(raw_message)?;
    let parsed = parse_body(&text)?;
    let canonical = parsed.command.canonical_bytes()?;
    verifier.verify(&canonical, parsed.scheme, &parsed.signature)?;
    let command = parsed.command;
    if command.printer != printer {
        return Err(CommandError::WrongPrinter {
            expected: printer.to_owned(),
            found: command.printer,
        });
    }
    if command.expires + CLOCK_SKEW <= now {
        return Err(CommandError::Expired {
            expired_at: command.expires,
        });
    }
    if command.expires > now + MAX_LIFETIME + CLOCK_SKEW {
        return Err(CommandError::ExpiryTooFar {
            expires: command.expires,
            max_secs: MAX_LIFETIME.as_secs(),
        });
    }
    seen.remember(&command.nonce, command.expires + CLOCK_SKEW, now)?;
    Ok(command)
}

/// The decoded text of the first text/plain part holding a
/// `faxgate-command:` line.
fn command_text(raw: &[u8]) -> Result<String, CommandError> {
    let message = MessageParser::default()
        .parse(raw)
        .ok_or(CommandError::NotACommand)?;
    message
        .text_bodies()
        .filter_map(|part| match &part.body {
            PartType::Text(text) => Some(text),
            _ => None,
        })
        .find(|text| text.lines().any(|l| l.starts_with("faxgate-command:")))
        .map(|text| text.to_string())
        .ok_or(CommandError::NotACommand)
}

struct ParsedBody {
    command: Command,
    scheme: Scheme,
    signature: Vec<u8>,
}

/// Parses the body per COMMAND-MAIL.md: lines end at LF, a CR and then
/// spaces and tabs are stripped from each line's end, lines before the
/// version line and after the `Signature` line are ignored.
fn parse_body(text: &str) -> Result<ParsedBody, CommandError> {
    let mut lines = text.lines().map(|l| l.trim_end_matches([' ', '\t', '\r']));
    let version = lines
        .by_ref()
        .find_map(|l| l.strip_prefix("faxgate-command:"))
        .ok_or(CommandError::NotACommand)?;
    if version.trim_start_matches([' ', '\t']) != "1" {
        return Err(malformed(
            "faxgate-command",
            "unsupported version (expected 1)",
        ));
    }
    let mut field = |name: &'static str| -> Result<&str, CommandError> {
        let line = lines
            .next()
            .ok_or_else(|| malformed(name, "missing (the mail ends before it)"))?;
        line.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(": "))
            .ok_or_else(|| malformed(name, "expected here, as `Name: value`, in the fixed order"))
    };
    let kind = field("Kind")?;
    let kind = Kind::parse(kind).ok_or_else(|| malformed("Kind", "must be `wake` or `cancel`"))?;
    let proxy_uri = field("Proxy")?.to_owned();
    let printer = field("Printer")?.to_owned();
    let job_ids = parse_jobs(field("Jobs")?)?;
    let expires = parse_expires(field("Expires")?)?;
    let nonce = field("Nonce")?.to_owned();
    let (scheme, signature) = parse_signature(field("Signature")?)?;
    let command = Command {
        kind,
        proxy_uri,
        printer,
        job_ids,
        expires,
        nonce,
    };
    Ok(ParsedBody {
        command,
        scheme,
        signature,
    })
}

fn malformed(field: &'static str, reason: impl Into<String>) -> CommandError {
    CommandError::Malformed {
        field,
        reason: reason.into(),
    }
}

fn visible_ascii(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_graphic())
}

fn check_proxy(uri: &str) -> Result<(), CommandError> {
    if uri.is_empty() || uri.len() > MAX_PROXY_LEN || !visible_ascii(uri) {
        return Err(malformed(
            "Proxy",
            format!("must be 1 to {MAX_PROXY_LEN} visible ASCII characters"),
        ));
    }
    let scheme_ok = ["ipp://", "ipps://", "http://", "https://"]
        .iter()
        .any(|p| uri.len() > p.len() && uri.starts_with(p));
    if !scheme_ok {
        return Err(malformed(
            "Proxy",
            "must be an ipp, ipps, http or https URI",
        ));
    }
    Ok(())
}

fn check_printer(printer: &str) -> Result<(), CommandError> {
    if printer.is_empty() || printer.len() > MAX_PRINTER_LEN || !visible_ascii(printer) {
        return Err(malformed(
            "Printer",
            format!("must be 1 to {MAX_PRINTER_LEN} visible ASCII characters"),
        ));
    }
    Ok(())
}

fn check_nonce(nonce: &str) -> Result<(), CommandError> {
    let ok = (NONCE_BYTES * 2..=MAX_NONCE_HEX).contains(&nonce.len())
        && nonce.len().is_multiple_of(2)
        && nonce
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if ok {
        Ok(())
    } else {
        Err(malformed(
            "Nonce",
            format!(
                "must be {} to {MAX_NONCE_HEX} lowercase hex digits, an even number",
                NONCE_BYTES * 2
            ),
        ))
    }
}

fn format_jobs(ids: &[u64]) -> Result<String, CommandError> {
    if ids.len() > MAX_JOBS {
        return Err(malformed("Jobs", format!("at most {MAX_JOBS} job ids")));
    }
    if ids.contains(&0) {
        return Err(malformed("Jobs", "job ids start at 1"));
    }
    if ids.is_empty() {
        return Ok("-".to_owned());
    }
    Ok(ids.iter().map(u64::to_string).collect::<Vec<_>>().join(","))
}

fn parse_jobs(s: &str) -> Result<Vec<u64>, CommandError> {
    if s == "-" {
        return Ok(Vec::new());
    }
    let ids = s
        .split(',')
        .map(|id| {
            let canonical =
                !id.is_empty() && !id.starts_with('0') && id.bytes().all(|b| b.is_ascii_digit());
            if !canonical {
                return Err(malformed(
                    "Jobs",
                    "must be `-` or comma-separated decimal ids without spaces or leading zeros",
                ));
            }
            id.parse::<u64>()
                .map_err(|_| malformed("Jobs", "a job id does not fit in 64 bits"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if ids.len() > MAX_JOBS {
        return Err(malformed("Jobs", format!("at most {MAX_JOBS} job ids")));
    }
    Ok(ids)
}

fn unix_secs(t: SystemTime) -> Option<u64> {
    let secs = t.duration_since(UNIX_EPOCH).ok()?.as_secs();
    (secs < END_OF_YEAR_9999).then_some(secs)
}

fn format_expires(t: SystemTime) -> Result<String, CommandError> {
    let secs = unix_secs(t).ok_or_else(|| malformed("Expires", "must lie in 1970..=9999"))?;
    Ok(rfc3339(secs))
}

fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

fn parse_expires(s: &str) -> Result<SystemTime, CommandError> {
    let bad = || {
        malformed(
            "Expires",
            "must be RFC 3339 UTC to the second: YYYY-MM-DDTHH:MM:SSZ",
        )
    };
    // humantime also takes fractions and a space for `T`; only the one
    // form that formats back to itself is canonical.
    let t = humantime::parse_rfc3339(s).map_err(|_| bad())?;
    match unix_secs(t) {
        Some(secs) if rfc3339(secs) == s => Ok(t),
        _ => Err(bad()),
    }
}

fn parse_signature(s: &str) -> Result<(Scheme, Vec<u8>), CommandError> {
    let (tag, b64) = s
        .split_once(':')
        .ok_or_else(|| malformed("Signature", "must be `scheme:base64`"))?;
    let scheme = Scheme::parse(tag)
        .ok_or_else(|| malformed("Signature", "scheme must be `hmac-sha256` or `ed25519`"))?;
    let bytes = BASE64
        .decode(b64)
        .map_err(|_| malformed("Signature", "not padded base64 (RFC 4648 section 4)"))?;
    if bytes.len() != scheme.signature_len() {
        return Err(malformed(
            "Signature",
            format!("{scheme} signatures have {} bytes", scheme.signature_len()),
        ));
    }
    Ok((scheme, bytes))
}

fn check_address(field: &'static str, addr: &str) -> Result<(), CommandError> {
    let ok = addr.len() <= MAX_ADDRESS_LEN
        && visible_ascii(addr)
        && !addr.contains(['<', '>', ',', '"', '(', ')', ';'])
        && matches!(addr.split_once('@'), Some((local, domain))
            if !local.is_empty() && !domain.is_empty() && !domain.contains('@'));
    if ok {
        Ok(())
    } else {
        Err(malformed(field, "must be a plain address `local@domain`"))
    }
}

/// `Thu, 05 Nov 2026 10:00:00 +0000` (RFC 5322 section 3.3).
fn rfc5322_date(t: SystemTime) -> Result<String, CommandError> {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = unix_secs(t).ok_or_else(|| malformed("Date", "must lie in 1970..=9999"))?;
    // 1970-01-01 was a Thursday; the rest is read off the RFC 3339 form.
    let weekday = DAYS[((secs / 86_400) % 7) as usize];
    let iso = rfc3339(secs);
    let month: usize = iso[5..7].parse().unwrap_or(1);
    let month = MONTHS[month.clamp(1, 12) - 1];
    Ok(format!(
        "{weekday}, {} {month} {} {} +0000",
        &iso[8..10],
        &iso[0..4],
        &iso[11..19]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"correct horse battery staple";
    const PRINTER: &str = "expp1%abc.com";
    /// 2026-11-05T10:00:00Z.
    const T0: u64 = 1_793_872_800;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn command() -> Command {
        Command::new(
            Kind::Wake,
            "ipps://relay.example.net/ipp/print/expp1%abc.com",
            PRINTER,
            vec![17, 18],
            at(T0 + 600),
            "00112233445566778899aabbccddeeff",
        )
    }

    fn mail(cmd: &Command, signer: &Signer) -> Vec<u8> {
        cmd.to_message(signer, "relay@example.net", "expp1@abc.com", at(T0))
            .unwrap()
    }

    fn verify(raw: &[u8], verifier: &Verifier) -> Result<Command, CommandError> {
        parse_and_verify(raw, verifier, PRINTER, at(T0), &mut NonceCache::default())
    }

    /// Signature computed independently with Python's `hmac` module over
    /// the canonical lines below.
    const GOLDEN: &str = "From: relay@example.net\r\n\
To: expp1@abc.com\r\n\
Subject: faxgate command: wake expp1%abc.com\r\n\
Date: Thu, 05 Nov 2026 10:00:00 +0000\r\n\
Message-ID: <faxgate.00112233445566778899aabbccddeeff@example.net>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: text/plain; charset=us-ascii\r\n\
Content-Transfer-Encoding: 7bit\r\n\
Auto-Submitted: auto-generated\r\n\
\r\n\
faxgate-command: 1\r\n\
Kind: wake\r\n\
Proxy: ipps://relay.example.net/ipp/print/expp1%abc.com\r\n\
Printer: expp1%abc.com\r\n\
Jobs: 17,18\r\n\
Expires: 2026-11-05T10:10:00Z\r\n\
Nonce: 00112233445566778899aabbccddeeff\r\n\
Signature: hmac-sha256:dHiALtovm6qE8oLoAuxfwl4kF0QpO0SuIOxhJwjvLOA=\r\n";

    #[test]
    fn golden_message_bytes() {
        let signer = Signer::hmac(SECRET).unwrap();
        let got = String::from_utf8(mail(&command(), &signer)).unwrap();
        assert_eq!(got, GOLDEN);
        assert_eq!(
            command().canonical_bytes().unwrap(),
            b"faxgate-command: 1\nKind: wake\nProxy: ipps://relay.example.net/ipp/print/expp1%abc.com\n\
Printer: expp1%abc.com\nJobs: 17,18\nExpires: 2026-11-05T10:10:00Z\nNonce: 00112233445566778899aabbccddeeff\n"
        );
        assert_eq!(verify(GOLDEN.as_bytes(), &signer.verifier()), Ok(command()));
    }

    #[test]
    fn hmac_round_trip_and_lenient_line_ends() {
        let signer = Signer::hmac(SECRET).unwrap();
        let raw = String::from_utf8(mail(&command(), &signer)).unwrap();
        assert_eq!(verify(raw.as_bytes(), &signer.verifier()), Ok(command()));
        // LF instead of CRLF, trailing blanks, a preamble and a footer.
        let relaxed = raw
            .replace("\r\n", "\n")
            .replace("faxgate-command: 1\n", "Hello.\n\nfaxgate-command: 1 \t\n")
            .replace("Jobs: 17,18\n", "Jobs: 17,18   \n")
            + "-- \nSent by a mail gateway that appends footers.\n";
        assert_eq!(
            verify(relaxed.as_bytes(), &signer.verifier()),
            Ok(command())
        );
    }

    #[test]
    fn quoted_printable_body_verifies() {
        let signer = Signer::hmac(SECRET).unwrap();
        let raw = String::from_utf8(mail(&command(), &signer)).unwrap();
        let qp = raw
            .replace(
                "Content-Transfer-Encoding: 7bit",
                "Content-Transfer-Encoding: quoted-printable",
            )
            // A real encoder writes `=` as `=3D`; do that first.
            .replace("=\r\n", "=3D\r\n")
            .replace("Kind: wake", "Kind: w=61ke")
            .replace("expp1%abc.com\r\nJobs", "expp1%abc=\r\n.com\r\nJobs");
        assert_eq!(verify(qp.as_bytes(), &signer.verifier()), Ok(command()));
    }

    #[test]
    fn every_tampered_field_fails_the_signature() {
        let signer = Signer::hmac(SECRET).unwrap();
        let raw = String::from_utf8(mail(&command(), &signer)).unwrap();
        let tampers = [
            ("Kind: wake", "Kind: cancel"),
            (
                "Proxy: ipps://relay.example.net/",
                "Proxy: ipps://evil.example.net/",
            ),
            ("Printer: expp1%abc.com", "Printer: expp2%abc.com"),
            ("Jobs: 17,18", "Jobs: 17,19"),
            ("Jobs: 17,18", "Jobs: 17"),
            ("Jobs: 17,18", "Jobs: -"),
            (
                "Expires: 2026-11-05T10:10:00Z",
                "Expires: 2026-11-05T11:10:00Z",
            ),
            ("Nonce: 0011", "Nonce: 1011"),
        ];
        for (from, to) in tampers {
            let bad = raw.replacen(from, to, 1);
            assert_ne!(bad, raw, "{from} not found");
            assert_eq!(
                verify(bad.as_bytes(), &signer.verifier()),
                Err(CommandError::BadSignature),
                "{from} -> {to}"
            );
        }
        // Unsigned headers may change freely.
        let subject = raw.replace("Subject: faxgate command: wake", "Subject: Re: hello");
        assert_eq!(
            verify(subject.as_bytes(), &signer.verifier()),
            Ok(command())
        );
    }

    #[test]
    fn wrong_key_and_wrong_scheme() {
        let signer = Signer::hmac(SECRET).unwrap();
        let raw = mail(&command(), &signer);
        let other = Verifier::hmac(b"another secret of enough length").unwrap();
        assert_eq!(verify(&raw, &other), Err(CommandError::BadSignature));
        let ed = Signer::ed25519_from_seed(&[7u8; 32]).unwrap();
        assert_eq!(
            verify(&raw, &ed.verifier()),
            Err(CommandError::SchemeMismatch {
                expected: "ed25519",
                found: "hmac-sha256"
            })
        );
        assert_eq!(
            Signer::hmac(b"short").err(),
            Some(KeyError::SecretTooShort { len: 5, min: 16 })
        );
        assert!(Verifier::ed25519(&[1u8; 31]).is_err());
        assert!(format!("{signer:?}").contains("MASKED"));
        assert!(!format!("{:?}", signer.verifier()).contains("horse"));
    }

    #[test]
    fn ed25519_round_trip() {
        let seed = [0x42u8; 32];
        let signer = Signer::ed25519_from_seed(&seed).unwrap();
        assert_eq!(signer.scheme(), Scheme::Ed25519);
        let raw = mail(&command(), &signer);
        let text = String::from_utf8(raw.clone()).unwrap();
        // Signature and public key computed independently with
        // `openssl pkeyutl -sign -rawin` from the same seed.
        assert!(
            text.contains(
                "\r\nSignature: ed25519:0HFNwbNQBhqWK7SKQOE1+bKJA6oVZ+6j2ry95WqhwQAw0xkGhRfUZ3s6O0f9PryMeyKjJi3sdKcBdyacGJ3UBg==\r\n"
            ),
            "{text}"
        );
        // The agent holds only the public key.
        let public =
            hex::decode("2152f8d19b791d24453242e15f2eab6cb7cffa7b6a5ed30097960e069881db12")
                .unwrap();
        let verifier = Verifier::ed25519(&public).unwrap();
        assert!(format!("{verifier:?}").contains("2152f8d1"));
        // The same key as PKCS#8 (what `openssl genpkey` writes) signs alike.
        let mut der = hex::decode("302e020100300506032b657004220420").unwrap();
        der.extend_from_slice(&seed);
        let from_der = Signer::ed25519_from_pkcs8(&der).unwrap();
        assert_eq!(mail(&command(), &from_der), raw);
        assert_eq!(verify(&raw, &verifier), Ok(command()));
        let tampered = text.replace("Jobs: 17,18", "Jobs: 18");
        assert_eq!(
            verify(tampered.as_bytes(), &verifier),
            Err(CommandError::BadSignature)
        );
        let other = Signer::ed25519_from_seed(&[0x43u8; 32]).unwrap().verifier();
        assert_eq!(verify(&raw, &other), Err(CommandError::BadSignature));
    }

    #[test]
    fn expiry_and_lifetime() {
        let signer = Signer::hmac(SECRET).unwrap();
        let verifier = signer.verifier();
        let raw = mail(&command(), &signer);
        let mut seen = NonceCache::default();
        // Expires at T0 + 600; taken up to CLOCK_SKEW later (a verifier
        // whose clock runs fast), refused from then on.
        let skew = CLOCK_SKEW.as_secs();
        let at_expiry = parse_and_verify(&raw, &verifier, PRINTER, at(T0 + 600 + skew), &mut seen);
        assert_eq!(
            at_expiry,
            Err(CommandError::Expired {
                expired_at: at(T0 + 600)
            })
        );
        assert_eq!(
            at_expiry.unwrap_err().to_string(),
            "command mail expired at 2026-11-05T10:10:00Z"
        );
        assert!(
            parse_and_verify(&raw, &verifier, PRINTER, at(T0 + 600 + skew - 1), &mut seen).is_ok()
        );
        // Its nonce is kept as long: a replay in the skew is refused.
        assert!(matches!(
            parse_and_verify(&raw, &verifier, PRINTER, at(T0 + 600 + skew - 1), &mut seen),
            Err(CommandError::Replayed { .. })
        ));
        let mut far = command();
        far.expires = at(T0 + MAX_LIFETIME.as_secs() + skew + 1);
        let raw = mail(&far, &signer);
        assert!(matches!(
            verify(&raw, &verifier),
            Err(CommandError::ExpiryTooFar { .. })
        ));
    }

    #[test]
    fn replay_is_refused_until_expiry_then_forgotten() {
        let signer = Signer::hmac(SECRET).unwrap();
        let verifier = signer.verifier();
        let raw = mail(&command(), &signer);
        let mut seen = NonceCache::default();
        let first = parse_and_verify(&raw, &verifier, PRINTER, at(T0), &mut seen);
        assert_eq!(first, Ok(command()));
        let again = parse_and_verify(&raw, &verifier, PRINTER, at(T0 + 1), &mut seen);
        assert_eq!(
            again,
            Err(CommandError::Replayed {
                nonce: command().nonce
            })
        );
        // A forged copy does not reach the cache, and the cache does not
        // grow from it.
        let forged = String::from_utf8(raw.clone())
            .unwrap()
            .replace("Nonce: 0011", "Nonce: ffff");
        assert_eq!(
            parse_and_verify(forged.as_bytes(), &verifier, PRINTER, at(T0), &mut seen),
            Err(CommandError::BadSignature)
        );
        assert_eq!(seen.len(), 1);
        seen.forget(&command().nonce).unwrap();
        assert!(parse_and_verify(&raw, &verifier, PRINTER, at(T0 + 2), &mut seen).is_ok());
    }

    #[test]
    fn wrong_printer() {
        let signer = Signer::hmac(SECRET).unwrap();
        let raw = mail(&command(), &signer);
        let got = parse_and_verify(
            &raw,
            &signer.verifier(),
            "other%abc.com",
            at(T0),
            &mut NonceCache::default(),
        );
        assert_eq!(
            got,
            Err(CommandError::WrongPrinter {
                expected: "other%abc.com".into(),
                found: PRINTER.into()
            })
        );
    }

    #[test]
    fn cancel_and_empty_job_list() {
        let signer = Signer::hmac(SECRET).unwrap();
        let mut cmd = command();
        cmd.kind = Kind::Cancel;
        cmd.job_ids.clear();
        let raw = mail(&cmd, &signer);
        let text = String::from_utf8(raw.clone()).unwrap();
        assert!(text.contains("Subject: faxgate command: cancel expp1%abc.com\r\n"));
        assert!(text.contains("\r\nJobs: -\r\n"));
        assert_eq!(verify(&raw, &signer.verifier()), Ok(cmd));
    }

    #[test]
    fn malformed_inputs() {
        let signer = Signer::hmac(SECRET).unwrap();
        let verifier = signer.verifier();
        let raw = String::from_utf8(mail(&command(), &signer)).unwrap();
        let field_of = |text: &str| match verify(text.as_bytes(), &verifier) {
            Err(CommandError::Malformed { field, .. }) => field,
            other => panic!("expected Malformed, got {other:?}"),
        };
        let cases = [
            (
                "faxgate-command: 1",
                "faxgate-command: 2",
                "faxgate-command",
            ),
            ("Kind: wake", "Kind: sleep", "Kind"),
            ("Kind: wake", "kind: wake", "Kind"),
            ("Proxy: ipps://", "Proxy: ftp://", "Proxy"),
            ("Printer: expp1%abc.com\r\n", "", "Printer"),
            ("Jobs: 17,18", "Jobs: 17, 18", "Jobs"),
            ("Jobs: 17,18", "Jobs: 017", "Jobs"),
            ("Jobs: 17,18", "Jobs: 99999999999999999999", "Jobs"),
            ("Jobs: 17,18", "Jobs: ", "Jobs"),
            (
                "Expires: 2026-11-05T10:10:00Z",
                "Expires: 2026-11-05T10:10:00.5Z",
                "Expires",
            ),
            (
                "Expires: 2026-11-05T10:10:00Z",
                "Expires: 2026-11-05 10:10:00Z",
                "Expires",
            ),
            (
                "Expires: 2026-11-05T10:10:00Z",
                "Expires: tomorrow",
                "Expires",
            ),
            (
                "Nonce: 00112233445566778899aabbccddeeff",
                "Nonce: 0011",
                "Nonce",
            ),
            ("Nonce: 0011", "Nonce: 00AA", "Nonce"),
            (
                "Signature: hmac-sha256:",
                "Signature: hmac-sha1:",
                "Signature",
            ),
            (
                "Signature: hmac-sha256:",
                "Signature: hmac-sha256:!!",
                "Signature",
            ),
            (
                "Signature: hmac-sha256:",
                "Signature: hmac-sha256:AAAA",
                "Signature",
            ),
        ];
        for (from, to, field) in cases {
            let bad = raw.replacen(from, to, 1);
            assert_ne!(bad, raw, "{from} not found");
            assert_eq!(field_of(&bad), field, "{from} -> {to}");
        }
        let cut = &raw[..raw.find("Signature:").unwrap()];
        assert_eq!(field_of(cut), "Signature");
    }

    #[test]
    fn not_a_command() {
        let verifier = Signer::hmac(SECRET).unwrap().verifier();
        let ordinary = b"From: a@b.c\r\nTo: d@e.f\r\nSubject: lunch\r\n\r\nNoon?\r\n";
        assert_eq!(verify(ordinary, &verifier), Err(CommandError::NotACommand));
        assert_eq!(verify(b"", &verifier), Err(CommandError::NotACommand));
        let html = b"From: a@b.c\r\nContent-Type: text/html\r\n\r\n<p>faxgate-command: 1</p>\r\n";
        assert_eq!(verify(html, &verifier), Err(CommandError::NotACommand));
        let huge = vec![b'a'; MAX_MESSAGE_SIZE as usize + 1];
        assert!(matches!(
            verify(&huge, &verifier),
            Err(CommandError::TooLarge { .. })
        ));
    }

    #[test]
    fn unwritable_commands_are_refused() {
        let signer = Signer::hmac(SECRET).unwrap();
        let mut cmd = command();
        cmd.printer = "expp1\r\nBcc: x@y.z".into();
        assert!(matches!(
            cmd.to_message(&signer, "a@b.c", "d@e.f", at(T0)),
            Err(CommandError::Malformed {
                field: "Printer",
                ..
            })
        ));
        let cmd = command();
        for (from, to) in [("a@b.c\r\nBcc: x@y.z", "d@e.f"), ("a@b.c", "Name <d@e.f>")] {
            assert!(cmd.to_message(&signer, from, to, at(T0)).is_err());
        }
        let mut cmd = command();
        cmd.job_ids = vec![0];
        assert!(cmd.canonical_bytes().is_err());
        cmd.job_ids = (1..=65).collect();
        assert!(cmd.canonical_bytes().is_err());
    }

    #[test]
    fn dates_and_nonces() {
        assert_eq!(
            rfc5322_date(at(0)).unwrap(),
            "Thu, 01 Jan 1970 00:00:00 +0000"
        );
        assert_eq!(
            rfc5322_date(at(951_782_400)).unwrap(),
            "Tue, 29 Feb 2000 00:00:00 +0000"
        );
        assert!(rfc5322_date(at(END_OF_YEAR_9999)).is_err());
        let a = random_nonce();
        assert_eq!(a.len(), 32);
        assert!(check_nonce(&a).is_ok());
        assert_ne!(a, random_nonce());
        let cmd = Command::new(
            Kind::Wake,
            "ipp://x/y",
            "p",
            vec![],
            at(5) + Duration::from_millis(900),
            a,
        );
        assert_eq!(cmd.expires, at(5));
    }
}
