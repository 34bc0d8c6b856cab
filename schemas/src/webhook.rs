//! Webhooks: what a platform registers, the events it is sent, and how they are signed.
//!
//! An event is decided by the single writer with the command it reports (a confirmation,
//! a reversal, a deletion), so its id and body never change: every attempt, and every
//! replay, sends the same bytes but for the signature's time.

use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::timestamp::Timestamp;
use crate::validation::{JsonObject, validate_http_url};

/// Prefix of a webhook endpoint id.
pub const ENDPOINT_PREFIX: &str = "wh_";
/// Prefix of an event id; the rest is the ULID of the command that caused it.
pub const EVENT_PREFIX: &str = "evt_";
/// Prefix of an endpoint's signing secret.
pub const SECRET_PREFIX: &str = "whsec_";
/// The header that carries `t=<unix seconds>,v1=<hex HMAC-SHA256>`.
pub const SIGNATURE_HEADER: &str = "Referral-Signature";
/// How old a signature's `t` a receiver should still accept (the README's recipe).
pub const SIGNATURE_TOLERANCE_SECS: i64 = 300;

/// What a webhook can be sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum EventType {
    #[serde(rename = "conversion.confirmed")]
    ConversionConfirmed,
    #[serde(rename = "conversion.reversed")]
    ConversionReversed,
    #[serde(rename = "attribution.deleted")]
    AttributionDeleted,
}

impl EventType {
    pub const ALL: [Self; 3] = [
        Self::ConversionConfirmed,
        Self::ConversionReversed,
        Self::AttributionDeleted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ConversionConfirmed => "conversion.confirmed",
            Self::ConversionReversed => "conversion.reversed",
            Self::AttributionDeleted => "attribution.deleted",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == text)
    }
}

/// The event id of the command `command_id` (`cmd_<ULID>` -> `evt_<ULID>`).
pub fn event_id(command_id: &str) -> String {
    let ulid = command_id
        .strip_prefix(crate::id::COMMAND_PREFIX)
        .unwrap_or(command_id);
    format!("{EVENT_PREFIX}{ulid}")
}

/// The body of `POST /api/v1/webhooks`, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookRequest {
    pub url: String,
    /// Distinct, in a stable order.
    pub events: Vec<EventType>,
}

impl WebhookRequest {
    pub const FIELDS: &'static [&'static str] = &["url", "events"];

    /// Checks the body's shape and the URL's syntax; where the URL may point (https, no
    /// private address) is the deliverer's policy, checked by the caller.
    pub fn parse(body: &mut [u8]) -> Result<Self, ApiError> {
        let object = JsonObject::parse(body, Self::FIELDS)?;
        let url = object.required_str("url")?;
        validate_http_url("url", url)?;
        if url.contains('@') || url.contains('#') {
            return Err(ApiError::invalid(
                "url",
                "must not carry credentials (user@) or a fragment (#)",
            ));
        }
        let names = object.required_str_array("events")?;
        if names.is_empty() {
            return Err(ApiError::invalid(
                "events",
                "must name at least one of: conversion.confirmed, conversion.reversed, attribution.deleted",
            ));
        }
        let mut events = Vec::with_capacity(names.len());
        for name in names {
            let kind = EventType::parse(name).ok_or_else(|| {
                ApiError::invalid(
                    "events",
                    "unknown event; one of: conversion.confirmed, conversion.reversed, attribution.deleted",
                )
            })?;
            if events.contains(&kind) {
                return Err(ApiError::invalid("events", "names an event twice"));
            }
            events.push(kind);
        }
        events.sort_unstable();
        Ok(Self {
            url: url.to_owned(),
            events,
        })
    }
}

/// The body of `POST /api/v1/webhooks/{id}/replay`, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayRequest {
    pub since: Timestamp,
}

impl ReplayRequest {
    pub const FIELDS: &'static [&'static str] = &["since"];

    pub fn parse(body: &mut [u8], now: Timestamp) -> Result<Self, ApiError> {
        let object = JsonObject::parse(body, Self::FIELDS)?;
        let since =
            crate::validation::parse_instant("since", object.required_str("since")?, now, 0)?;
        Ok(Self { since })
    }
}

/// A registered endpoint as the API prints it. `secret` only in the answer to its creation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookEndpoint {
    pub id: String,
    pub url: String,
    pub events: Vec<EventType>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    pub created_at: Timestamp,
    pub enabled: bool,
    /// When the deliverer disabled it (failing for `--webhook-disable-after` in a row).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled_at: Option<Timestamp>,
}

/// An event as it is POSTed: `data` is the attribution as `GET` returns it (for a deletion,
/// as it was when deleted), already serialized.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookEvent {
    pub id: String,
    pub kind: EventType,
    pub created_at: Timestamp,
    /// JSON text of the attribution.
    pub data: String,
}

impl WebhookEvent {
    /// The exact bytes POSTed (and signed).
    pub fn body(&self) -> String {
        // Ids and types are plain ASCII of our own making; `data` is JSON already.
        format!(
            "{{\"id\":\"{}\",\"type\":\"{}\",\"created_at\":\"{}\",\"data\":{}}}",
            self.id,
            self.kind.as_str(),
            self.created_at,
            self.data
        )
    }
}

/// How one delivery attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryOutcome {
    /// A 2xx: the event is done for this endpoint.
    Delivered,
    /// Anything else; another attempt follows.
    Retrying,
    /// The last attempt: retried for `--webhook-retry-for`, or the endpoint was disabled.
    Failed,
}

impl DeliveryOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Retrying => "retrying",
            Self::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Delivered, Self::Retrying, Self::Failed]
            .into_iter()
            .find(|outcome| outcome.as_str() == text)
    }
}

/// One attempt to deliver one event to one endpoint, as `GET .../deliveries` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryAttempt {
    pub event_id: String,
    #[serde(rename = "type")]
    pub kind: EventType,
    pub attempt: u32,
    /// The receiver's HTTP status, when it answered.
    pub status_code: Option<u16>,
    /// Why there was no 2xx without a status (a timeout, a refused connection, a blocked
    /// address).
    pub error: Option<String>,
    pub outcome: DeliveryOutcome,
    pub attempted_at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<WebhookRequest, ApiError> {
        WebhookRequest::parse(&mut json.as_bytes().to_vec())
    }

    #[test]
    fn a_registration_names_known_events_once_and_a_plain_url() {
        let ok = parse(r#"{"url":"https://hooks.example.com/r","events":["conversion.reversed","conversion.confirmed"]}"#)
            .unwrap();
        assert_eq!(
            ok.events,
            vec![
                EventType::ConversionConfirmed,
                EventType::ConversionReversed
            ]
        );
        for (json, field) in [
            (r#"{"events":["conversion.confirmed"]}"#, "url"),
            (
                r#"{"url":"ftp://x.example","events":["conversion.confirmed"]}"#,
                "url",
            ),
            (
                r#"{"url":"https://u:p@x.example/","events":["conversion.confirmed"]}"#,
                "url",
            ),
            (
                r#"{"url":"https://x.example/#f","events":["conversion.confirmed"]}"#,
                "url",
            ),
            (r#"{"url":"https://x.example/","events":[]}"#, "events"),
            (
                r#"{"url":"https://x.example/","events":"conversion.confirmed"}"#,
                "events",
            ),
            (
                r#"{"url":"https://x.example/","events":["click.recorded"]}"#,
                "events",
            ),
            (r#"{"url":"https://x.example/","events":[1]}"#, "events"),
            (
                r#"{"url":"https://x.example/","events":["conversion.confirmed","conversion.confirmed"]}"#,
                "events",
            ),
        ] {
            let error = parse(json).unwrap_err();
            assert_eq!(error.field.as_deref(), Some(field), "{json}");
        }
    }

    #[test]
    fn an_events_body_is_its_id_type_time_and_data_in_that_order() {
        let event = WebhookEvent {
            id: event_id("cmd_01JQ3V8W6Y7Z8A9B0C1D2E3F4G"),
            kind: EventType::ConversionReversed,
            created_at: Timestamp::parse_rfc3339("2026-03-20T14:22:00Z").unwrap(),
            data: r#"{"id":"attr_1"}"#.into(),
        };
        assert_eq!(
            event.body(),
            r#"{"id":"evt_01JQ3V8W6Y7Z8A9B0C1D2E3F4G","type":"conversion.reversed","created_at":"2026-03-20T14:22:00Z","data":{"id":"attr_1"}}"#
        );
        let parsed: serde_json::Value = serde_json::from_str(&event.body()).unwrap();
        assert_eq!(parsed["data"]["id"], "attr_1");
    }
}
