//! Bearer tokens with scopes, from `--api-tokens`.
//!
//! Format: `TOKEN=SCOPE[+SCOPE],...`, e.g. `dash-7f3k9q2m4x8v1c6b=read,backend-...=read+write`,
//! or with the token's SHA-256 instead of the token, `sha256:<64 hex>=read+write`, so that a
//! configuration or a Secret need not hold a usable token (`printf %s "$TOKEN" | sha256sum`).
//! `read` allows GETs, `write` allows confirming and deleting attributions, `admin` allows
//! everything including referral-code changes. With no tokens configured every endpoint is
//! open (the contract's "Public") and start-up logs a warning. The click POST is always
//! public: tracking pixels carry no secrets.
//!
//! Every token is kept as its digest and a presented token is hashed and compared with each
//! one in constant time: timing tells nothing about any token, not even its length. A token
//! is named in logs (the audit line of each write) by the first 12 hex digits of its digest,
//! never by the token.

use http::HeaderMap;
use referral_schemas::{ApiError, ErrorKind};
use sha2::{Digest, Sha256};

/// Shortest accepted token: anything shorter is guessable.
pub const MIN_TOKEN_LEN: usize = 16;
/// Hex digits of a digest that name its token in logs.
const NAME_HEX_DIGITS: usize = 12;

/// What a request needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Read,
    Write,
    Admin,
}

#[derive(Clone, Debug)]
struct Grant {
    /// SHA-256 of the token.
    digest: [u8; 32],
    read: bool,
    write: bool,
    admin: bool,
}

impl Grant {
    fn allows(&self, scope: Scope) -> bool {
        self.admin
            || match scope {
                Scope::Read => self.read,
                Scope::Write => self.write,
                Scope::Admin => false,
            }
    }
}

/// The configured tokens.
#[derive(Clone, Debug, Default)]
pub struct ApiTokens {
    grants: Vec<Grant>,
}

impl ApiTokens {
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut grants = Vec::new();
        for entry in spec
            .split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
        {
            // The last `=`: a token may hold `=` (base64), a scope list never does.
            let (token, scopes) = entry.rsplit_once('=').ok_or_else(|| {
                "each entry must be TOKEN=SCOPE[+SCOPE] or sha256:<hex>=SCOPE[+SCOPE]".to_owned()
            })?;
            let digest = match token.strip_prefix("sha256:") {
                Some(hex_digest) => {
                    let mut digest = [0u8; 32];
                    hex::decode_to_slice(hex_digest, &mut digest).map_err(|_| {
                        "a sha256: entry must hold the token's SHA-256 as 64 hex digits".to_owned()
                    })?;
                    digest
                }
                None => {
                    if token.len() < MIN_TOKEN_LEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
                        return Err(format!(
                            "tokens must be at least {MIN_TOKEN_LEN} visible ASCII characters"
                        ));
                    }
                    digest_of(token)
                }
            };
            let mut grant = Grant {
                digest,
                read: false,
                write: false,
                admin: false,
            };
            for scope in scopes.split('+') {
                match scope.trim() {
                    "read" => grant.read = true,
                    "write" => grant.write = true,
                    "admin" => grant.admin = true,
                    other => return Err(format!("unknown scope {other:?} (read, write, admin)")),
                }
            }
            // Which entry's scopes would count is not obvious; refuse rather than guess.
            if grants
                .iter()
                .any(|known: &Grant| known.digest == grant.digest)
            {
                return Err("a token is listed twice".to_owned());
            }
            grants.push(grant);
        }
        Ok(Self { grants })
    }

    /// Whether no tokens are configured (every endpoint open).
    pub fn is_open(&self) -> bool {
        self.grants.is_empty()
    }

    /// 401 without a known token, 403 when the token lacks `scope`; else who called.
    pub fn authorize(&self, headers: &HeaderMap, scope: Scope) -> Result<Caller, ApiError> {
        if self.is_open() {
            return Ok(Caller { token: None });
        }
        let presented = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().split_once(' '))
            // The scheme is case-insensitive (RFC 9110 11.1).
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .ok_or_else(|| {
                auth_failure("missing");
                ApiError::new(
                    ErrorKind::Unauthorized,
                    "send Authorization: Bearer <token>",
                )
                .on_field("authorization")
            })?;
        // Compare against every token, in constant time each, so timing reveals nothing.
        let presented = digest_of(presented);
        let mut matched = None;
        for grant in &self.grants {
            if constant_time_eq(&grant.digest, &presented) {
                matched = Some(grant);
            }
        }
        let grant = matched.ok_or_else(|| {
            auth_failure("unknown_token");
            ApiError::new(ErrorKind::Unauthorized, "unknown bearer token").on_field("authorization")
        })?;
        if grant.allows(scope) {
            Ok(Caller {
                token: Some(hex::encode(grant.digest)[..NAME_HEX_DIGITS].to_owned()),
            })
        } else {
            auth_failure("missing_scope");
            Err(ApiError::new(
                ErrorKind::Forbidden,
                format!("this token lacks the {} scope", scope_name(scope)),
            )
            .on_field("authorization"))
        }
    }
}

/// Refused credentials, by reason: a rise is someone guessing tokens or a client
/// misconfigured after a rotation.
fn auth_failure(reason: &'static str) {
    metrics::counter!("referral_auth_failures_total", "reason" => reason).increment(1);
}

/// Who made an authorized request: for the audit line of each write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The token's name (the first hex digits of its SHA-256), or `None` when the API is
    /// open.
    token: Option<String>,
}

impl Caller {
    /// How logs name the caller: `sha256:<first 12 hex digits>`, or `anonymous`.
    pub fn name(&self) -> String {
        match &self.token {
            Some(prefix) => format!("sha256:{prefix}"),
            None => "anonymous".to_owned(),
        }
    }
}

fn digest_of(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn scope_name(scope: Scope) -> &'static str {
    match scope {
        Scope::Read => "read",
        Scope::Write => "write",
        Scope::Admin => "admin",
    }
}

fn constant_time_eq(expected: &[u8; 32], presented: &[u8; 32]) -> bool {
    expected
        .iter()
        .zip(presented)
        .fold(0u8, |difference, (a, b)| difference | (a ^ b))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        headers
    }

    #[test]
    fn scopes_are_enforced() {
        let tokens = ApiTokens::parse("reader-0123456789abcdef=read, writer-0123456789abcdef=read+write,admin-0123456789abcdef=admin").unwrap();
        let status = |token: &str, scope| {
            tokens
                .authorize(&bearer(token), scope)
                .map(drop)
                .map_err(|e| e.status().as_u16())
        };
        assert_eq!(status("reader-0123456789abcdef", Scope::Read), Ok(()));
        assert_eq!(status("reader-0123456789abcdef", Scope::Write), Err(403));
        assert_eq!(status("writer-0123456789abcdef", Scope::Write), Ok(()));
        assert_eq!(status("writer-0123456789abcdef", Scope::Admin), Err(403));
        assert_eq!(status("admin-0123456789abcdef", Scope::Admin), Ok(()));
        assert_eq!(status("nobody-0123456789abcdef", Scope::Read), Err(401));
        // The scheme is case-insensitive; another scheme is not a bearer token.
        let mut headers = HeaderMap::new();
        let header = "BEARER reader-0123456789abcdef".parse().unwrap();
        headers.insert(http::header::AUTHORIZATION, header);
        assert!(tokens.authorize(&headers, Scope::Read).is_ok());
        let header = "Basic reader-0123456789abcdef".parse().unwrap();
        headers.insert(http::header::AUTHORIZATION, header);
        assert!(tokens.authorize(&headers, Scope::Read).is_err());
        assert_eq!(
            tokens
                .authorize(&HeaderMap::new(), Scope::Read)
                .map_err(|e| e.status().as_u16()),
            Err(401)
        );
    }

    #[test]
    fn a_digest_grants_what_its_token_would_and_names_it_in_logs() {
        let token = "backend-0123456789abcdef";
        let digest = hex::encode(Sha256::digest(token.as_bytes()));
        let tokens = ApiTokens::parse(&format!("sha256:{digest}=read+write")).unwrap();
        let caller = tokens.authorize(&bearer(token), Scope::Write).unwrap();
        assert_eq!(caller.name(), format!("sha256:{}", &digest[..12]));
        assert!(!caller.name().contains(token));
        // The digest itself is not a token.
        assert_eq!(
            tokens
                .authorize(&bearer(&digest), Scope::Read)
                .map_err(|e| e.status().as_u16()),
            Err(401)
        );
        assert_eq!(
            tokens
                .authorize(&bearer(token), Scope::Admin)
                .map_err(|e| e.status().as_u16()),
            Err(403)
        );
        assert_eq!(
            ApiTokens::default()
                .authorize(&HeaderMap::new(), Scope::Admin)
                .unwrap()
                .name(),
            "anonymous"
        );
    }

    #[test]
    fn refuses_weak_or_malformed_specs() {
        assert!(ApiTokens::parse("sha256:abc=read").is_err());
        assert!(ApiTokens::parse(&format!("sha256:{}=read", "g".repeat(64))).is_err());
        assert!(ApiTokens::parse("short=read").is_err());
        assert!(ApiTokens::parse("reader-0123456789abcdef").is_err());
        assert!(ApiTokens::parse("reader-0123456789abcdef=root").is_err());
        assert!(ApiTokens::parse("").unwrap().is_open());
        let twice = "reader-0123456789abcdef=read,reader-0123456789abcdef=admin";
        assert!(ApiTokens::parse(twice).is_err());
    }
}
