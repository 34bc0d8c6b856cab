//! Every input rule, in one place. The edge and the API call these; nothing else decides
//! whether a field is acceptable.
//!
//! Bodies are parsed with simd-json into a borrowed document, then each field is read by
//! hand, so that every error names its field (serde's messages do not, reliably) and
//! unknown fields are refused by name.

use std::net::IpAddr;

use http::HeaderValue;
use simd_json::{BorrowedValue, StaticNode};

use crate::Timestamp;
use crate::error::{ApiError, ErrorKind};

/// Largest accepted request body. Clicks are a few hundred bytes; this leaves room for long
/// user agents and referrers while bounding what one request can make us parse.
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// Longest accepted `user_agent`, in bytes.
pub const MAX_USER_AGENT_BYTES: usize = 1024;
/// Longest accepted URL (`referrer_url`, `destination_url`), in bytes.
pub const MAX_URL_BYTES: usize = 2048;
/// How far in the future a client may date a click: tolerance for skewed client clocks.
pub const MAX_FUTURE_SKEW_MS: i64 = 5 * 60 * 1000;
/// Shortest and longest referral code.
pub const CODE_LEN: std::ops::RangeInclusive<usize> = 3..=64;
/// Longest mentor or member id (ids of the platform, opaque to us).
pub const MAX_PARTY_ID_LEN: usize = 64;

/// Refuses bodies not declared as JSON (`application/json`, or `application/*+json`).
pub fn require_json_content_type(content_type: Option<&HeaderValue>) -> Result<(), ApiError> {
    let unsupported = || {
        ApiError::new(
            ErrorKind::UnsupportedMediaType,
            "the body must be JSON, sent with Content-Type: application/json",
        )
    };
    let value = content_type.ok_or_else(unsupported)?;
    let text = value.to_str().map_err(|_| unsupported())?;
    let essence = text
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let is_json = essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"));
    if is_json { Ok(()) } else { Err(unsupported()) }
}

/// Normalizes a referral code: 3..64 of `[A-Za-z0-9_-]`, matched case-insensitively and
/// stored in upper case, so `jan-verv-8f3a` and `JAN-VERV-8F3A` are one code (people type
/// codes by hand; two codes that differ only by case would be a support nightmare).
pub fn normalize_code(field: &str, raw: &str) -> Result<String, ApiError> {
    let valid_chars = raw
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !CODE_LEN.contains(&raw.len()) || !valid_chars {
        return Err(ApiError::invalid(
            field,
            "must be 3 to 64 characters of A-Z, a-z, 0-9, '-' and '_'",
        ));
    }
    Ok(raw.to_ascii_uppercase())
}

/// Checks a mentor or member id: 1..64 of `[A-Za-z0-9_.:@-]`, case-sensitive.
pub fn validate_party_id(field: &str, raw: &str) -> Result<(), ApiError> {
    let valid_chars = raw
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'@'));
    if raw.is_empty() || raw.len() > MAX_PARTY_ID_LEN || !valid_chars {
        return Err(ApiError::invalid(
            field,
            "must be 1 to 64 characters of A-Z, a-z, 0-9, '-', '_', '.', ':' and '@'",
        ));
    }
    Ok(())
}

/// Parses an IPv4 or IPv6 address into its canonical text form.
pub fn normalize_ip(field: &str, raw: &str) -> Result<String, ApiError> {
    raw.parse::<IpAddr>()
        .map(|ip| ip.to_string())
        .map_err(|_| ApiError::invalid(field, "must be an IPv4 or IPv6 address"))
}

/// Bidirectional embeddings, overrides and isolates, and line/paragraph separators: text
/// that would show other than it is stored.
fn disguising(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{2028}' | '\u{2029}')
}

/// Checks a user agent: at most 1,024 bytes, no control characters, no bidirectional
/// overrides or line separators (no real user agent has them; in a dashboard or a log they
/// can make text read as something else).
pub fn validate_user_agent(field: &str, raw: &str) -> Result<(), ApiError> {
    if raw.len() > MAX_USER_AGENT_BYTES {
        return Err(ApiError::invalid(field, "must be at most 1024 bytes"));
    }
    if raw.chars().any(|c| c.is_control() || disguising(c)) {
        return Err(ApiError::invalid(
            field,
            "must not contain control characters, bidirectional overrides or line separators",
        ));
    }
    Ok(())
}

/// Checks a URL field (a referrer, a code's destination): an absolute http(s) URL with a
/// host, at most 2,048 bytes.
pub fn validate_http_url(field: &str, raw: &str) -> Result<(), ApiError> {
    if raw.len() > MAX_URL_BYTES {
        return Err(ApiError::invalid(field, "must be at most 2048 bytes"));
    }
    let not_http = || ApiError::invalid(field, "must be an absolute http:// or https:// URL");
    let uri: http::Uri = raw.parse().map_err(|_| not_http())?;
    let http_scheme = matches!(uri.scheme_str(), Some("http" | "https"));
    let authority = uri.authority().map_or("", |authority| authority.as_str());
    if http_scheme && valid_host_and_port(authority) {
        Ok(())
    } else {
        Err(not_http())
    }
}

/// An authority's host is a name (or IPv4 address) or an IPv6 address in brackets, and its
/// port, if any, is digits: `http::Uri` alone takes `[]`, `[junk]` or `host:port` (a stored
/// URL that breaks the next parser that reads it, and the redirect link's `Location`).
fn valid_host_and_port(authority: &str) -> bool {
    let host_port = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host_port)| host_port);
    let (host_ok, port) = match host_port.strip_prefix('[') {
        Some(bracketed) => match bracketed.split_once(']') {
            Some((address, rest)) => (address.parse::<std::net::Ipv6Addr>().is_ok(), rest),
            None => return false,
        },
        None => {
            let (host, port) = match host_port.split_once(':') {
                Some((host, _)) => (host, &host_port[host.len()..]),
                None => (host_port, ""),
            };
            let name_char = |c: char| c.is_ascii_alphanumeric() || "!$&'()*+,-.;=_~".contains(c);
            (!host.is_empty() && host.chars().all(name_char), port)
        }
    };
    let port_ok = port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|digits| digits.bytes().all(|b| b.is_ascii_digit()));
    host_ok && port_ok
}

/// Parses an RFC 3339 instant that may be at most `max_future_ms` after `now`.
pub fn parse_instant(
    field: &str,
    raw: &str,
    now: Timestamp,
    max_future_ms: i64,
) -> Result<Timestamp, ApiError> {
    let instant = Timestamp::parse_rfc3339(raw)
        .map_err(|error| ApiError::invalid(field, error.to_string()))?;
    // Nothing happened before the Unix epoch here, and ClickHouse's DateTime cannot hold it.
    if instant.as_millis() < 0 {
        return Err(ApiError::invalid(
            field,
            "must not be before 1970-01-01T00:00:00Z",
        ));
    }
    if instant > now.saturating_add_millis(max_future_ms) {
        let message = if max_future_ms == 0 {
            "must not be in the future".to_owned()
        } else {
            format!(
                "must be at most {} seconds in the future",
                max_future_ms / 1000
            )
        };
        return Err(ApiError::invalid(field, message));
    }
    Ok(instant)
}

/// Deepest nesting a body may have. Every accepted body is a flat object (depth 1); a little
/// room lets a wrongly typed field get its precise 422, while a hostile 16 KiB of brackets
/// is refused before the parser, whose value builder recurses per level, can overflow the
/// stack.
pub const MAX_JSON_DEPTH: usize = 16;

/// Longest key quoted back in a duplicate-key error.
const MAX_QUOTED_KEY_BYTES: usize = 64;
/// Keys per object compared for duplicates by the raw scan.
const MAX_TRACKED_KEYS: usize = 64;

/// What one pass over a body's bytes finds before it is parsed.
#[derive(Debug, PartialEq, Eq)]
struct Structure {
    /// It nests deeper than the limit (the scan stops there).
    too_deep: bool,
    /// The first key written twice in one object (at any depth), as written.
    duplicate: Option<String>,
}

/// Scans `body` once, ignoring brackets and commas in strings: its depth against `limit`,
/// and keys written twice in one object. A parser keeps one of two equal keys (simd-json
/// the first, most others the last), so a body with both means different things to
/// different readers: it is refused rather than guessed.
fn scan(body: &[u8], limit: usize) -> Structure {
    // The raw key ranges of the objects open now, and per open level: whether it is an
    // object, and where its keys start in `keys`.
    let mut keys: Vec<(usize, usize)> = Vec::new();
    let mut open: Vec<(bool, usize)> = Vec::new();
    let mut expect_key = false;
    let mut at = 0;
    while at < body.len() {
        match body[at] {
            b'"' => {
                let start = at + 1;
                let mut end = start;
                while end < body.len() && body[end] != b'"' {
                    end += if body[end] == b'\\' { 2 } else { 1 };
                }
                let end = end.min(body.len());
                if expect_key && let Some(&(true, first)) = open.last() {
                    let key = &body[start..end];
                    if keys[first..]
                        .iter()
                        .any(|&(from, to)| &body[from..to] == key)
                    {
                        let quoted = &key[..key.len().min(MAX_QUOTED_KEY_BYTES)];
                        return Structure {
                            too_deep: false,
                            duplicate: Some(String::from_utf8_lossy(quoted).into_owned()),
                        };
                    }
                    // Past a few dozen keys the body is refused anyway (an unknown field);
                    // tracking them all would make a hostile body quadratic.
                    if keys.len() - first < MAX_TRACKED_KEYS {
                        keys.push((start, end));
                    }
                }
                expect_key = false;
                at = end;
            }
            byte @ (b'{' | b'[') => {
                if open.len() >= limit {
                    return Structure {
                        too_deep: true,
                        duplicate: None,
                    };
                }
                let object = byte == b'{';
                open.push((object, keys.len()));
                expect_key = object;
            }
            b'}' | b']' => {
                if let Some((_, first)) = open.pop() {
                    keys.truncate(first);
                }
                expect_key = false;
            }
            b',' => expect_key = matches!(open.last(), Some((true, _))),
            _ => {}
        }
        at += 1;
    }
    Structure {
        too_deep: false,
        duplicate: None,
    }
}

/// Bodies up to this size are parsed with the thread's reused buffers; a larger one (none
/// reaches here today: every route reads at most this much) would get buffers of its
/// own, so no thread keeps a large buffer for good.
const REUSED_BUFFERS_UP_TO: usize = MAX_BODY_BYTES;

thread_local! {
    /// simd-json's scratch buffers, kept between parses: a click's body is tiny, and four
    /// allocations and frees per parse were most of its parsing cost.
    static PARSE_BUFFERS: std::cell::RefCell<simd_json::Buffers> =
        std::cell::RefCell::new(simd_json::Buffers::new(MAX_BODY_BYTES.min(1024)));
}

/// Parses `body` in place; the value borrows only `body`, never the buffers.
fn parse_borrowed(body: &mut [u8]) -> simd_json::Result<BorrowedValue<'_>> {
    if body.len() > REUSED_BUFFERS_UP_TO {
        return simd_json::to_borrowed_value(body);
    }
    PARSE_BUFFERS.with(|buffers| match buffers.try_borrow_mut() {
        Ok(mut buffers) => simd_json::value::borrowed::to_value_with_buffers(body, &mut buffers),
        // Not reentrant in practice; parse with fresh buffers rather than fail.
        Err(_) => simd_json::to_borrowed_value(body),
    })
}

/// A JSON body parsed into a borrowed object, with only the allowed fields.
pub struct JsonObject<'body> {
    fields: Box<simd_json::borrowed::Object<'body>>,
}

impl<'body> JsonObject<'body> {
    /// Parses `body` (simd-json parses in place, hence `&mut`) and refuses unknown fields.
    pub fn parse(body: &'body mut [u8], allowed: &[&str]) -> Result<Self, ApiError> {
        if body.is_empty() {
            return Err(ApiError::new(
                ErrorKind::MalformedJson,
                "the body is empty; expected a JSON object",
            ));
        }
        let structure = scan(body, MAX_JSON_DEPTH);
        if structure.too_deep {
            return Err(ApiError::new(
                ErrorKind::MalformedJson,
                format!("the body nests deeper than {MAX_JSON_DEPTH} levels"),
            ));
        }
        if let Some(key) = &structure.duplicate {
            return Err(ApiError::new(
                ErrorKind::MalformedJson,
                format!("the key \"{key}\" appears more than once in one object"),
            )
            .on_field(key));
        }
        let value = parse_borrowed(body)
            .map_err(|_| ApiError::new(ErrorKind::MalformedJson, "the body is not valid JSON"))?;
        let BorrowedValue::Object(fields) = value else {
            return Err(ApiError::new(
                ErrorKind::MalformedJson,
                "the body must be a JSON object",
            ));
        };
        // Report unknown fields in a stable order, whatever the hash map's order.
        let mut unknown: Vec<&str> = fields
            .keys()
            .map(|key| key.as_ref())
            .filter(|key| !allowed.contains(key))
            .collect();
        unknown.sort_unstable();
        if let Some(first) = unknown.first() {
            return Err(ApiError::new(
                ErrorKind::UnknownField,
                format!("unknown field; allowed fields are: {}", allowed.join(", ")),
            )
            .on_field(first));
        }
        // Equal keys written differently ("code", "\u0063ode") pass the raw scan; simd-json
        // keeps both entries. Every key is allowed now, so among the first
        // `allowed.len() + 1` two are equal if any are: a bounded, quadratic look.
        let checked = fields.len().min(allowed.len() + 1);
        for (index, (key, _)) in fields.iter().enumerate().take(checked) {
            if fields.iter().take(index).any(|(earlier, _)| earlier == key) {
                return Err(ApiError::new(
                    ErrorKind::MalformedJson,
                    format!("the key \"{key}\" appears more than once in the object"),
                )
                .on_field(key.as_ref()));
            }
        }
        Ok(Self { fields })
    }

    /// A string field that may be absent or null.
    pub fn optional_str(&self, field: &str) -> Result<Option<&str>, ApiError> {
        match self.fields.get(field) {
            None | Some(BorrowedValue::Static(StaticNode::Null)) => Ok(None),
            Some(BorrowedValue::String(text)) => Ok(Some(text.as_ref())),
            Some(_) => Err(ApiError::invalid(field, "must be a string")),
        }
    }

    /// An array of strings that must be present and non-null.
    pub fn required_str_array(&self, field: &str) -> Result<Vec<&str>, ApiError> {
        let not_strings = || ApiError::invalid(field, "must be an array of strings");
        match self.fields.get(field) {
            None | Some(BorrowedValue::Static(StaticNode::Null)) => {
                Err(ApiError::invalid(field, "is required"))
            }
            Some(BorrowedValue::Array(values)) => values
                .iter()
                .map(|value| match value {
                    BorrowedValue::String(text) => Ok(text.as_ref()),
                    _ => Err(not_strings()),
                })
                .collect(),
            Some(_) => Err(not_strings()),
        }
    }

    /// A string field that must be present and non-null.
    pub fn required_str(&self, field: &str) -> Result<&str, ApiError> {
        self.optional_str(field)?
            .ok_or_else(|| ApiError::invalid(field, "is required"))
    }
}

/// The click POST body (recordReferralClick), validated. Absent optional fields are filled
/// in by the edge from the connection and headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClickRequest {
    pub code: String,
    pub ip_address: Option<String>,
    pub user_agent: Option<String>,
    pub referrer_url: Option<String>,
    pub occurred_at: Option<Timestamp>,
}

impl ClickRequest {
    pub const FIELDS: &'static [&'static str] = &[
        "code",
        "ip_address",
        "user_agent",
        "referrer_url",
        "occurred_at",
    ];

    pub fn parse(body: &mut [u8], now: Timestamp) -> Result<Self, ApiError> {
        let object = JsonObject::parse(body, Self::FIELDS)?;
        let code = normalize_code("code", object.required_str("code")?)?;
        let ip_address = object
            .optional_str("ip_address")?
            .map(|ip| normalize_ip("ip_address", ip))
            .transpose()?;
        let user_agent = object.optional_str("user_agent")?;
        if let Some(user_agent) = user_agent {
            validate_user_agent("user_agent", user_agent)?;
        }
        // Browsers report "no referrer" as an empty string; store that as null.
        let referrer_url = object
            .optional_str("referrer_url")?
            .filter(|url| !url.is_empty());
        if let Some(url) = referrer_url {
            validate_http_url("referrer_url", url)?;
        }
        let occurred_at = object
            .optional_str("occurred_at")?
            .map(|raw| parse_instant("occurred_at", raw, now, MAX_FUTURE_SKEW_MS))
            .transpose()?;
        Ok(Self {
            code,
            ip_address,
            user_agent: user_agent.map(str::to_owned),
            referrer_url: referrer_url.map(str::to_owned),
            occurred_at,
        })
    }
}

/// The PUT body (confirmRecruitment), validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfirmRequest {
    pub code: String,
    pub new_member_id: String,
    /// `None` means "now".
    pub confirmed_at: Option<Timestamp>,
}

impl ConfirmRequest {
    pub const FIELDS: &'static [&'static str] = &["code", "new_member_id", "confirmed_at"];

    pub fn parse(body: &mut [u8], now: Timestamp) -> Result<Self, ApiError> {
        let object = JsonObject::parse(body, Self::FIELDS)?;
        let code = normalize_code("code", object.required_str("code")?)?;
        let new_member_id = object.required_str("new_member_id")?;
        validate_party_id("new_member_id", new_member_id)?;
        let confirmed_at = object
            .optional_str("confirmed_at")?
            .map(|raw| parse_instant("confirmed_at", raw, now, 0))
            .transpose()?;
        Ok(Self {
            code,
            new_member_id: new_member_id.to_owned(),
            confirmed_at,
        })
    }
}

/// Longest reversal reason, in characters.
pub const MAX_REVERSAL_REASON_CHARS: usize = 200;

/// The body of `POST /{id}/reversal`, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReversalRequest {
    /// Why (`refund`, `chargeback`, ...): 1 to 200 characters, no control characters.
    pub reason: String,
    /// `None` means "now".
    pub reversed_at: Option<Timestamp>,
}

impl ReversalRequest {
    pub const FIELDS: &'static [&'static str] = &["reason", "reversed_at"];

    pub fn parse(body: &mut [u8], now: Timestamp) -> Result<Self, ApiError> {
        let object = JsonObject::parse(body, Self::FIELDS)?;
        let reason = object.required_str("reason")?;
        let length = reason.chars().count();
        // A byte-order mark is white space to JSON Schema's `\s` (the document's rule),
        // though not to Unicode: a reason of nothing else is refused too.
        let blank = reason.chars().all(|c| c.is_whitespace() || c == '\u{FEFF}');
        if blank || length > MAX_REVERSAL_REASON_CHARS {
            return Err(ApiError::invalid(
                "reason",
                "must be 1 to 200 characters, not only spaces",
            ));
        }
        if reason.chars().any(|c| c.is_control() || disguising(c)) {
            return Err(ApiError::invalid(
                "reason",
                "must not contain control characters, bidirectional overrides or line separators",
            ));
        }
        let reversed_at = object
            .optional_str("reversed_at")?
            .map(|raw| parse_instant("reversed_at", raw, now, 0))
            .transpose()?;
        Ok(Self {
            reason: reason.to_owned(),
            reversed_at,
        })
    }
}

/// The body of `PUT /api/v1/referral-codes/{code}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeAssignmentRequest {
    pub mentor_id: String,
    /// Where the code's redirect link (`GET /r/{code}`) sends a visitor. A PUT replaces the
    /// code's settings: absent or null clears it.
    pub destination_url: Option<String>,
}

impl CodeAssignmentRequest {
    pub const FIELDS: &'static [&'static str] = &["mentor_id", "destination_url"];

    pub fn parse(body: &mut [u8]) -> Result<Self, ApiError> {
        let object = JsonObject::parse(body, Self::FIELDS)?;
        let mentor_id = object.required_str("mentor_id")?;
        validate_party_id("mentor_id", mentor_id)?;
        let destination_url = object.optional_str("destination_url")?;
        if let Some(url) = destination_url {
            validate_http_url("destination_url", url)?;
        }
        Ok(Self {
            mentor_id: mentor_id.to_owned(),
            destination_url: destination_url.map(str::to_owned),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        Timestamp::parse_rfc3339("2026-03-20T14:22:00Z").unwrap()
    }

    fn click(json: &str) -> Result<ClickRequest, ApiError> {
        ClickRequest::parse(&mut json.as_bytes().to_vec(), now())
    }

    fn field_of(result: Result<ClickRequest, ApiError>) -> (ErrorKind, Option<String>) {
        let error = result.expect_err("expected a rejection");
        (error.kind, error.field)
    }

    #[test]
    fn parses_the_contract_example() {
        let parsed = click(
            r#"{"code":"jan-verv-8f3a","ip_address":"185.12.34.56","user_agent":"Mozilla/5.0 (iPhone; CPU iPhone OS 17_0)","referrer_url":"https://instagram.com","occurred_at":"2026-03-20T14:22:00Z"}"#,
        )
        .unwrap();
        assert_eq!(parsed.code, "JAN-VERV-8F3A");
        assert_eq!(parsed.ip_address.as_deref(), Some("185.12.34.56"));
        assert_eq!(parsed.occurred_at, Some(now()));
    }

    #[test]
    fn a_key_written_twice_is_malformed_json_naming_it_at_any_depth() {
        assert_eq!(
            field_of(click(r#"{"code":"A-1","code":"B-1"}"#)),
            (ErrorKind::MalformedJson, Some("code".into()))
        );
        // Nested (the field's type is wrong too, but the body is ambiguous first).
        assert_eq!(
            field_of(click(r#"{"code":{"a":1,"b":[{"x":1},{"x":2}],"a":2}}"#)),
            (ErrorKind::MalformedJson, Some("a".into()))
        );
        // The same key spelled with an escape.
        assert_eq!(
            field_of(click(r#"{"code":"A-1","\u0063ode":"B-1"}"#)),
            (ErrorKind::MalformedJson, Some("code".into()))
        );
        // Equal keys in sibling objects, keys inside strings, and values equal to keys are
        // not duplicates.
        assert_eq!(
            scan(
                br#"{"a":{"x":1},"b":{"x":2},"c":"\"a\":","d":"a"}"#,
                MAX_JSON_DEPTH
            ),
            Structure {
                too_deep: false,
                duplicate: None,
            }
        );
        assert!(scan(&[b'['; 17], MAX_JSON_DEPTH).too_deep);
        assert!(!scan(&[b'['; 16], MAX_JSON_DEPTH).too_deep);
    }

    #[test]
    fn names_the_field_of_every_rejection() {
        let invalid = |json: &str, field: &str| {
            assert_eq!(
                field_of(click(json)),
                (ErrorKind::InvalidField, Some(field.into())),
                "{json}"
            );
        };
        invalid(r#"{}"#, "code");
        invalid(r#"{"code":null}"#, "code");
        invalid(r#"{"code":42}"#, "code");
        invalid(r#"{"code":"AB"}"#, "code");
        invalid(r#"{"code":"JAN VERV"}"#, "code");
        invalid(&format!(r#"{{"code":"{}"}}"#, "A".repeat(65)), "code");
        invalid(r#"{"code":"JAN-1","ip_address":"999.1.1.1"}"#, "ip_address");
        invalid(r#"{"code":"JAN-1","ip_address":"localhost"}"#, "ip_address");
        invalid(
            &format!(r#"{{"code":"JAN-1","user_agent":"{}"}}"#, "u".repeat(1025)),
            "user_agent",
        );
        // A right-to-left override ("a<RLO>gnp.exe" reads as "aexe.png") and a line separator.
        invalid(
            r#"{"code":"JAN-1","user_agent":"a\u202egnp.exe"}"#,
            "user_agent",
        );
        invalid(r#"{"code":"JAN-1","user_agent":"a\u2028b"}"#, "user_agent");
        invalid(
            r#"{"code":"JAN-1","referrer_url":"ftp://example.com"}"#,
            "referrer_url",
        );
        invalid(
            r#"{"code":"JAN-1","referrer_url":"instagram.com"}"#,
            "referrer_url",
        );
        // A host that is no name or address, or a port that is no number.
        for url in [
            "http://[]",
            "http://[not-an-ip]/x",
            "http://[::1]junk",
            "http://example.com:port/",
            "http://:80/",
        ] {
            invalid(
                &format!(r#"{{"code":"JAN-1","referrer_url":"{url}"}}"#),
                "referrer_url",
            );
        }
        invalid(
            &format!(
                r#"{{"code":"JAN-1","referrer_url":"https://e.com/{}"}}"#,
                "p".repeat(2048)
            ),
            "referrer_url",
        );
        invalid(
            r#"{"code":"JAN-1","occurred_at":"20 March 2026"}"#,
            "occurred_at",
        );
        invalid(
            r#"{"code":"JAN-1","occurred_at":"2026-03-20T14:27:01Z"}"#,
            "occurred_at",
        );
        invalid(
            r#"{"code":"JAN-1","occurred_at":"0000-01-01T00:00:00Z"}"#,
            "occurred_at",
        );
        invalid(
            r#"{"code":"JAN-1","occurred_at":"1969-12-31T23:59:59.999Z"}"#,
            "occurred_at",
        );
        assert_eq!(
            field_of(click(r#"{"code":"JAN-1","mentor_id":"usr_1"}"#)),
            (ErrorKind::UnknownField, Some("mentor_id".into()))
        );
    }

    #[test]
    fn accepts_the_edges_of_each_rule() {
        assert!(click(r#"{"code":"JAN-1","occurred_at":"2026-03-20T14:27:00Z"}"#).is_ok());
        assert!(click(r#"{"code":"JAN-1","occurred_at":"1999-01-01T00:00:00Z"}"#).is_ok());
        assert!(click(r#"{"code":"JAN-1","occurred_at":"1970-01-01T00:00:00Z"}"#).is_ok());
        assert!(click(r#"{"code":"JAN-1","ip_address":"2001:db8::1"}"#).is_ok());
        for url in [
            "https://instagram.com",
            "HTTP://user:pw@example.com:8080/p?q=1#f",
            "http://[2001:db8::1]:443/x",
            "http://192.0.2.7/",
            "http://example.com:/",
        ] {
            let body = format!(r#"{{"code":"JAN-1","referrer_url":"{url}"}}"#);
            assert!(click(&body).is_ok(), "{url}");
        }
        let parsed = click(r#"{"code":"JAN-1","referrer_url":"","user_agent":null}"#).unwrap();
        assert_eq!((parsed.referrer_url, parsed.user_agent), (None, None));
        assert!(click(&format!(r#"{{"code":"{}"}}"#, "a".repeat(64))).is_ok());
    }

    #[test]
    fn malformed_bodies_are_400() {
        for body in [
            "",
            "{",
            "[1,2]",
            "\"code\"",
            "null",
            "{\"code\":\"JAN-1\"} trailing",
        ] {
            assert_eq!(
                field_of(click(body)).0,
                ErrorKind::MalformedJson,
                "{body:?}"
            );
        }
    }

    #[test]
    fn content_type_must_be_json() {
        let check = |value: Option<&str>| {
            require_json_content_type(
                value
                    .map(HeaderValue::from_str)
                    .transpose()
                    .unwrap()
                    .as_ref(),
            )
        };
        assert!(check(Some("application/json")).is_ok());
        assert!(check(Some("Application/JSON; charset=utf-8")).is_ok());
        assert!(check(Some("application/vnd.referral+json")).is_ok());
        assert!(check(Some("text/plain")).is_err());
        assert!(check(None).is_err());
    }

    #[test]
    fn confirmations_may_not_be_dated_in_the_future() {
        let parse = |json: &str| ConfirmRequest::parse(&mut json.as_bytes().to_vec(), now());
        assert!(parse(r#"{"code":"JAN-1","new_member_id":"usr_5892","confirmed_at":"2026-03-20T14:22:00Z"}"#).is_ok());
        let error = parse(
            r#"{"code":"JAN-1","new_member_id":"usr_5892","confirmed_at":"2026-03-20T14:22:01Z"}"#,
        )
        .unwrap_err();
        assert_eq!(error.field.as_deref(), Some("confirmed_at"));
        let error = parse(r#"{"code":"JAN-1"}"#).unwrap_err();
        assert_eq!(error.field.as_deref(), Some("new_member_id"));
    }
}

#[cfg(test)]
mod hostile_tests {
    use super::*;

    #[test]
    fn reused_parse_buffers_leave_no_trace_between_bodies() {
        // A long body with escapes, then short ones, then one past the reuse bound: each
        // reads as its own text (the thread's buffers keep only scratch space).
        let long_agent = format!("Mozilla/5.0 \\u00e9{}", "x".repeat(400));
        let bodies = [
            format!(r#"{{"code":"jan-verv-8f3a","user_agent":"{long_agent}"}}"#),
            r#"{"code":"AB-1"}"#.to_owned(),
            r#"{"code":"C\u0044-2","user_agent":"a\"b"}"#.to_owned(),
            format!(
                r#"{{"code":"EF-3","referrer_url":"https://example.com/{}"}}"#,
                "p".repeat(MAX_BODY_BYTES)
            ),
            r#"{"code":"GH-4"}"#.to_owned(),
        ];
        let mut seen = Vec::new();
        for body in bodies {
            let mut bytes = body.into_bytes();
            match ClickRequest::parse(&mut bytes, Timestamp::now()) {
                Ok(click) => seen.push((click.code, click.user_agent)),
                Err(error) => seen.push((format!("{:?}", error.kind), None)),
            }
        }
        assert_eq!(seen[0].0, "JAN-VERV-8F3A");
        assert!(
            seen[0]
                .1
                .as_deref()
                .is_some_and(|agent| agent.starts_with("Mozilla/5.0 \u{e9}xx")),
            "{:?}",
            seen[0].1
        );
        assert_eq!(seen[1], ("AB-1".to_owned(), None));
        assert_eq!(seen[2], ("CD-2".to_owned(), Some("a\"b".to_owned())));
        // Past the size the edge accepts, still parsed (with buffers of its own), then
        // refused on its URL's length, not misread.
        assert_ne!(seen[3].0, "EF-3");
        assert!(!seen[3].0.contains("MalformedJson"), "{:?}", seen[3]);
        assert_eq!(seen[4], ("GH-4".to_owned(), None));
    }

    #[test]
    fn deeply_nested_bodies_are_refused_without_overflowing_the_stack() {
        // 16 KiB of nesting: the most a body can carry under the size limit.
        let depth = MAX_BODY_BYTES / 2;
        let body = format!(r#"{{"code":{}{}}}"#, "[".repeat(depth), "]".repeat(depth));
        let error = ClickRequest::parse(&mut body.into_bytes(), Timestamp::now()).unwrap_err();
        assert_eq!(error.kind, ErrorKind::MalformedJson, "{error:?}");
        // Brackets inside strings are text, not nesting.
        let text = format!(
            r#"{{"code":"JAN-1","user_agent":"{}\"{}"}}"#,
            "[".repeat(100),
            "{".repeat(100)
        );
        assert!(ClickRequest::parse(&mut text.into_bytes(), Timestamp::now()).is_ok());
        // A shallow wrong type still gets its field-level 422.
        let shallow =
            ClickRequest::parse(&mut br#"{"code":[["JAN-1"]]}"#.to_vec(), Timestamp::now())
                .unwrap_err();
        assert_eq!(shallow.field.as_deref(), Some("code"));
    }
}
