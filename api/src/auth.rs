//! Bearer tokens with scopes, from `--api-tokens`.
//!
//! Format: `TOKEN=SCOPE[+SCOPE],...`, e.g. `dash-7f3k9q2m4x8v1c6b=read,backend-...=read+write`.
//! `read` allows GETs, `write` allows confirming and deleting attributions, `admin` allows
//! everything including referral-code changes. With no tokens configured every endpoint is
//! open (the contract's "Public") and start-up logs a warning. The click POST is always
//! public: tracking pixels carry no secrets.

use http::HeaderMap;
use referral_schemas::{ApiError, ErrorKind};

/// Shortest accepted token: anything shorter is guessable.
pub const MIN_TOKEN_LEN: usize = 16;

/// What a request needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Read,
    Write,
    Admin,
}

#[derive(Clone, Debug)]
struct Grant {
    token: Vec<u8>,
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
            let (token, scopes) = entry
                .split_once('=')
                .ok_or_else(|| "each entry must be TOKEN=SCOPE[+SCOPE]".to_owned())?;
            if token.len() < MIN_TOKEN_LEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(format!(
                    "tokens must be at least {MIN_TOKEN_LEN} visible ASCII characters"
                ));
            }
            let mut grant = Grant {
                token: token.as_bytes().to_vec(),
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
            grants.push(grant);
        }
        Ok(Self { grants })
    }

    /// Whether no tokens are configured (every endpoint open).
    pub fn is_open(&self) -> bool {
        self.grants.is_empty()
    }

    /// 401 without a known token, 403 when the token lacks `scope`.
    pub fn authorize(&self, headers: &HeaderMap, scope: Scope) -> Result<(), ApiError> {
        if self.is_open() {
            return Ok(());
        }
        let presented = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| {
                value
                    .strip_prefix("Bearer ")
                    .or_else(|| value.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(|| {
                ApiError::new(
                    ErrorKind::Unauthorized,
                    "send Authorization: Bearer <token>",
                )
                .on_field("authorization")
            })?;
        // Compare against every token, in constant time each, so timing reveals nothing.
        let mut matched = None;
        for grant in &self.grants {
            if constant_time_eq(grant.token.as_slice(), presented.as_bytes()) {
                matched = Some(grant);
            }
        }
        let grant = matched.ok_or_else(|| {
            ApiError::new(ErrorKind::Unauthorized, "unknown bearer token").on_field("authorization")
        })?;
        if grant.allows(scope) {
            Ok(())
        } else {
            Err(ApiError::new(
                ErrorKind::Forbidden,
                format!("this token lacks the {} scope", scope_name(scope)),
            )
            .on_field("authorization"))
        }
    }
}

fn scope_name(scope: Scope) -> &'static str {
    match scope {
        Scope::Read => "read",
        Scope::Write => "write",
        Scope::Admin => "admin",
    }
}

fn constant_time_eq(expected: &[u8], presented: &[u8]) -> bool {
    if expected.len() != presented.len() {
        return false;
    }
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
                .map_err(|e| e.status().as_u16())
        };
        assert_eq!(status("reader-0123456789abcdef", Scope::Read), Ok(()));
        assert_eq!(status("reader-0123456789abcdef", Scope::Write), Err(403));
        assert_eq!(status("writer-0123456789abcdef", Scope::Write), Ok(()));
        assert_eq!(status("writer-0123456789abcdef", Scope::Admin), Err(403));
        assert_eq!(status("admin-0123456789abcdef", Scope::Admin), Ok(()));
        assert_eq!(status("nobody-0123456789abcdef", Scope::Read), Err(401));
        assert_eq!(
            tokens
                .authorize(&HeaderMap::new(), Scope::Read)
                .map_err(|e| e.status().as_u16()),
            Err(401)
        );
    }

    #[test]
    fn refuses_weak_or_malformed_specs() {
        assert!(ApiTokens::parse("short=read").is_err());
        assert!(ApiTokens::parse("reader-0123456789abcdef").is_err());
        assert!(ApiTokens::parse("reader-0123456789abcdef=root").is_err());
        assert!(ApiTokens::parse("").unwrap().is_open());
    }
}
