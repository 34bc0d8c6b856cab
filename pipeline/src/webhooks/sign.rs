//! The `Referral-Signature` header: `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`
//! keyed with the endpoint's secret (the whole `whsec_...` text, as bytes).
//!
//! The time is inside the signed text so that a captured request cannot be replayed later
//! with a fresh `t`; receivers reject a `t` older than five minutes (README).

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header's value for `body` sent at `unix_seconds`.
pub fn signature_header(secret: &str, unix_seconds: i64, body: &[u8]) -> String {
    format!(
        "t={unix_seconds},v1={}",
        signature(secret, unix_seconds, body)
    )
}

fn signature(secret: &str, unix_seconds: i64, body: &[u8]) -> String {
    keyed(secret, unix_seconds, body)
        .map(|mac| hex::encode(mac.finalize().into_bytes()))
        .unwrap_or_default()
}

/// The HMAC of `"<t>.<body>"`, before it is finalized (HMAC takes a key of any length).
fn keyed(secret: &str, unix_seconds: i64, body: &[u8]) -> Option<Hmac<Sha256>> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).ok()?;
    mac.update(unix_seconds.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Some(mac)
}

/// A receiver's check, as the README describes it (for Rust receivers and the tests):
/// the `v1` of `header` is the signature of `body` at its `t`, and `t` is within
/// `tolerance_secs` of `now_secs`.
pub fn verify(secret: &str, header: &str, body: &[u8], now_secs: i64, tolerance_secs: i64) -> bool {
    let mut t = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", value)) => t = value.parse::<i64>().ok(),
            Some(("v1", value)) => signatures.push(value),
            _ => {}
        }
    }
    let Some(t) = t else {
        return false;
    };
    if (now_secs - t).abs() > tolerance_secs {
        return false;
    }
    let Some(mac) = keyed(secret, t, body) else {
        return false;
    };
    signatures.iter().any(|candidate| {
        hex::decode(candidate).is_ok_and(|bytes| mac.clone().verify_slice(&bytes).is_ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_an_independent_hmac() {
        // printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac whsec_test
        assert_eq!(
            signature_header("whsec_test", 1_700_000_000, br#"{"a":1}"#),
            "t=1700000000,v1=38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789"
        );
    }

    #[test]
    fn a_receiver_rejects_another_body_secret_or_an_old_time() {
        let body = br#"{"id":"evt_1"}"#;
        let header = signature_header("whsec_a", 1_000, body);
        assert!(verify("whsec_a", &header, body, 1_100, 300));
        assert!(!verify("whsec_b", &header, body, 1_100, 300));
        assert!(!verify(
            "whsec_a",
            &header,
            br#"{"id":"evt_2"}"#,
            1_100,
            300
        ));
        assert!(!verify("whsec_a", &header, body, 1_301, 300));
        assert!(!verify("whsec_a", "v1=00", body, 1_000, 300));
    }
}
