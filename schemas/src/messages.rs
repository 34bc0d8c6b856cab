//! The versioned messages that travel on the attribution log, and the verdicts the single
//! writer records for commands.
//!
//! Every change of state is one of these events. The edge publishes [`ClickEvent`]s; the API
//! publishes commands. The aggregator applies them in log order and is the only writer of
//! state, so two requests can never both "win". The JSON form is documented as a JSON Schema
//! in `schemas/log-messages.schema.json`; a test keeps the two in step.

use serde::{Deserialize, Serialize};

use crate::Timestamp;
use crate::attribution::{Attribution, CodeRetirement, DeletionView, ReferralCode};

/// The version of the message schema this build writes. Readers reject other versions
/// (the aggregator dead-letters them) instead of guessing at their meaning.
pub const SCHEMA_VERSION: u16 = 1;

/// The Kafka key of every confirmation and deletion (see [`LogEvent::partition_key`]).
pub const ATTRIBUTION_COMMANDS_KEY: &str = "attribution-commands";

/// One message on the log: a version and one event.
///
/// Decoded by a hand-written visitor (below) rather than derived: a derived `flatten`
/// buffers every field before dispatching on `kind`, which cost the aggregator a quarter of
/// its CPU. Writers put `kind` before `payload`, so the payload decodes straight into its
/// type; a payload that comes first is still accepted, through a buffer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LogMessage {
    /// Always [`SCHEMA_VERSION`] when written by this build.
    pub schema_version: u16,
    #[serde(flatten)]
    pub event: LogEvent,
}

/// What happened, or what is asked of the single writer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "payload", rename_all = "snake_case")]
pub enum LogEvent {
    Click(ClickEvent),
    ConfirmConversion(ConfirmConversion),
    DeleteAttribution(DeleteAttribution),
    AssignCode(AssignCode),
    RetireCode(RetireCode),
    ReverseConversion(ReverseConversion),
}

/// A validated click, resolved to its mentor at the edge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClickEvent {
    pub attribution_id: String,
    pub code: String,
    pub mentor_id: String,
    pub ip_address: String,
    pub user_agent: Option<String>,
    pub referrer_url: Option<String>,
    pub occurred_at: Timestamp,
    pub received_at: Timestamp,
}

/// Confirm that the click `attribution_id` became the recruitment of `new_member_id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfirmConversion {
    pub command_id: String,
    pub attribution_id: String,
    pub code: String,
    pub new_member_id: String,
    pub confirmed_at: Timestamp,
    pub issued_at: Timestamp,
}

/// Undo a confirmed conversion (a refund, a chargeback): it stops counting in the totals.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReverseConversion {
    pub command_id: String,
    pub attribution_id: String,
    pub reason: String,
    pub reversed_at: Timestamp,
    pub issued_at: Timestamp,
}

/// Remove an attribution; totals stop counting it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteAttribution {
    pub command_id: String,
    pub attribution_id: String,
    pub issued_at: Timestamp,
}

/// Create a referral code, or move it to another mentor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssignCode {
    pub command_id: String,
    pub code: String,
    pub mentor_id: String,
    /// The redirect link's target; absent in records written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_url: Option<String>,
    pub issued_at: Timestamp,
}

/// Stop accepting clicks for a referral code.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetireCode {
    pub command_id: String,
    pub code: String,
    pub issued_at: Timestamp,
}

impl LogEvent {
    /// The command id, for events the API waits on.
    pub fn command_id(&self) -> Option<&str> {
        match self {
            Self::Click(_) => None,
            Self::ConfirmConversion(command) => Some(&command.command_id),
            Self::DeleteAttribution(command) => Some(&command.command_id),
            Self::AssignCode(command) => Some(&command.command_id),
            Self::RetireCode(command) => Some(&command.command_id),
            Self::ReverseConversion(command) => Some(&command.command_id),
        }
    }

    /// The Kafka message key: events with the same key stay in order on one partition,
    /// applied in order by the one consumer that owns it.
    ///
    /// * Clicks go by mentor: a mentor's clicks stay in order and spread over partitions.
    /// * Confirmations and deletions all share [`ATTRIBUTION_COMMANDS_KEY`]: they check two
    ///   uniqueness rules at once (one member per attribution, one attribution per member),
    ///   and only one partition, hence one writer, can decide both exactly. Commands are
    ///   rare next to clicks (a recruitment per many clicks), so one partition carries them.
    /// * Code commands go by code: they only concern their own code.
    pub fn partition_key(&self) -> &str {
        match self {
            Self::Click(click) => &click.mentor_id,
            Self::ConfirmConversion(_)
            | Self::DeleteAttribution(_)
            | Self::ReverseConversion(_) => ATTRIBUTION_COMMANDS_KEY,
            Self::AssignCode(command) => &command.code,
            Self::RetireCode(command) => &command.code,
        }
    }

    /// A short, fixed name for metrics labels and message headers.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Self::Click(_) => "click",
            Self::ConfirmConversion(_) => "confirm_conversion",
            Self::DeleteAttribution(_) => "delete_attribution",
            Self::AssignCode(_) => "assign_code",
            Self::RetireCode(_) => "retire_code",
            Self::ReverseConversion(_) => "reverse_conversion",
        }
    }
}

/// The event kinds, as `kind` names them.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum EventKind {
    Click,
    ConfirmConversion,
    DeleteAttribution,
    AssignCode,
    RetireCode,
    ReverseConversion,
}

impl EventKind {
    fn decode<'de, A: serde::de::MapAccess<'de>>(self, map: &mut A) -> Result<LogEvent, A::Error> {
        Ok(match self {
            Self::Click => LogEvent::Click(map.next_value()?),
            Self::ConfirmConversion => LogEvent::ConfirmConversion(map.next_value()?),
            Self::DeleteAttribution => LogEvent::DeleteAttribution(map.next_value()?),
            Self::AssignCode => LogEvent::AssignCode(map.next_value()?),
            Self::RetireCode => LogEvent::RetireCode(map.next_value()?),
            Self::ReverseConversion => LogEvent::ReverseConversion(map.next_value()?),
        })
    }

    fn decode_buffered(self, payload: serde_json::Value) -> Result<LogEvent, serde_json::Error> {
        Ok(match self {
            Self::Click => LogEvent::Click(serde_json::from_value(payload)?),
            Self::ConfirmConversion => {
                LogEvent::ConfirmConversion(serde_json::from_value(payload)?)
            }
            Self::DeleteAttribution => {
                LogEvent::DeleteAttribution(serde_json::from_value(payload)?)
            }
            Self::AssignCode => LogEvent::AssignCode(serde_json::from_value(payload)?),
            Self::RetireCode => LogEvent::RetireCode(serde_json::from_value(payload)?),
            Self::ReverseConversion => {
                LogEvent::ReverseConversion(serde_json::from_value(payload)?)
            }
        })
    }
}

impl<'de> Deserialize<'de> for LogMessage {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::{Error, IgnoredAny, MapAccess, Visitor};

        struct MessageVisitor;

        impl<'de> Visitor<'de> for MessageVisitor {
            type Value = LogMessage;

            fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                formatter.write_str("a log message {schema_version, kind, payload}")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<LogMessage, A::Error> {
                let mut schema_version: Option<u16> = None;
                let mut kind: Option<EventKind> = None;
                let mut event: Option<LogEvent> = None;
                let mut buffered: Option<serde_json::Value> = None;
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    match key.as_ref() {
                        "schema_version" if schema_version.is_none() => {
                            schema_version = Some(map.next_value()?);
                        }
                        "kind" if kind.is_none() => kind = Some(map.next_value()?),
                        "payload" if event.is_none() && buffered.is_none() => match kind {
                            Some(kind) => event = Some(kind.decode(&mut map)?),
                            None => buffered = Some(map.next_value()?),
                        },
                        "schema_version" | "kind" | "payload" => {
                            return Err(A::Error::custom(format!("duplicate field `{key}`")));
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                let schema_version =
                    schema_version.ok_or_else(|| A::Error::missing_field("schema_version"))?;
                let kind = kind.ok_or_else(|| A::Error::missing_field("kind"))?;
                let event = match (event, buffered) {
                    (Some(event), _) => event,
                    (None, Some(payload)) => {
                        kind.decode_buffered(payload).map_err(A::Error::custom)?
                    }
                    (None, None) => return Err(A::Error::missing_field("payload")),
                };
                Ok(LogMessage {
                    schema_version,
                    event,
                })
            }
        }

        deserializer.deserialize_map(MessageVisitor)
    }
}

impl LogMessage {
    pub fn new(event: LogEvent) -> Self {
        Self {
            schema_version: SCHEMA_VERSION,
            event,
        }
    }

    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        // Sized for a click (~300 bytes): one allocation instead of a few regrowths.
        let mut json = Vec::with_capacity(512);
        serde_json::to_writer(&mut json, self)?;
        Ok(json)
    }

    /// Decodes one message, refusing versions this build does not understand.
    pub fn from_json(bytes: &[u8]) -> Result<Self, MessageDecodeError> {
        let message: Self = serde_json::from_slice(bytes).map_err(|error| {
            // A newer writer's message fails to parse here: name its version, not the field.
            #[derive(Deserialize)]
            struct Versioned {
                schema_version: u16,
            }
            match serde_json::from_slice::<Versioned>(bytes) {
                Ok(versioned) if versioned.schema_version != SCHEMA_VERSION => {
                    MessageDecodeError::UnsupportedVersion(versioned.schema_version)
                }
                _ => MessageDecodeError::Malformed(error),
            }
        })?;
        if message.schema_version != SCHEMA_VERSION {
            return Err(MessageDecodeError::UnsupportedVersion(
                message.schema_version,
            ));
        }
        Ok(message)
    }
}

/// Why a message from the log cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum MessageDecodeError {
    #[error("malformed message: {0}")]
    Malformed(serde_json::Error),
    #[error("unsupported schema_version {0}")]
    UnsupportedVersion(u16),
}

/// Why the single writer refused a command. Each maps to one HTTP answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rejection {
    AttributionNotFound,
    CodeMismatch,
    AlreadyConfirmed,
    ConfirmedBeforeClick,
    AttributionExpired,
    MemberAlreadyAttributed,
    CodeNotFound,
    /// The click's verdict is `bot`: no person visited, so no recruitment can follow it.
    NotAVisitor,
    /// A reversal of an attribution that is not a confirmed conversion.
    NotConfirmed,
    /// A reversal of a conversion already reversed for another reason.
    AlreadyReversed,
    /// A reversal dated before the conversion's confirmation.
    ReversedBeforeConfirmation,
}

impl Rejection {
    /// The reason's fixed name (as serialized): metric labels stay low-cardinality.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AttributionNotFound => "attribution_not_found",
            Self::CodeMismatch => "code_mismatch",
            Self::AlreadyConfirmed => "already_confirmed",
            Self::ConfirmedBeforeClick => "confirmed_before_click",
            Self::AttributionExpired => "attribution_expired",
            Self::MemberAlreadyAttributed => "member_already_attributed",
            Self::CodeNotFound => "code_not_found",
            Self::NotAVisitor => "not_a_visitor",
            Self::NotConfirmed => "not_confirmed",
            Self::AlreadyReversed => "already_reversed",
            Self::ReversedBeforeConfirmation => "reversed_before_confirmation",
        }
    }
}

/// What the single writer decided about one command, recorded under its command id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Verdict {
    /// The attribution is confirmed; `replayed` when this command repeated an earlier
    /// identical confirmation (an idempotent retry), which changed nothing.
    Confirmed {
        attribution: Attribution,
        replayed: bool,
    },
    Deleted {
        deletion: DeletionView,
    },
    /// The conversion is reversed; `replayed` when this command repeated an earlier
    /// reversal for the same reason, which changed nothing.
    Reversed {
        attribution: Attribution,
        replayed: bool,
    },
    CodeAssigned {
        code: ReferralCode,
        /// False when the code existed and was reassigned (or left as it was).
        created: bool,
    },
    CodeRetired {
        retirement: CodeRetirement,
    },
    Rejected {
        reason: Rejection,
    },
}

/// The JSON Schema of [`LogMessage`], for consumers in other languages.
pub const JSON_SCHEMA: &str = include_str!("../log-messages.schema.json");

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    /// Checks `value` against the subset of JSON Schema the document uses: type, const,
    /// enum, required, properties, additionalProperties: false, oneOf, local $ref,
    /// minLength/maxLength and format date-time. Returns the first violation.
    fn check(schema: &Value, root: &Value, value: &Value, at: &str) -> Result<(), String> {
        if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
            let name = reference.trim_start_matches("#/$defs/");
            return check(&root["$defs"][name], root, value, at);
        }
        if let Some(expected) = schema.get("const")
            && value != expected
        {
            return Err(format!("{at}: expected {expected}"));
        }
        if let Some(options) = schema.get("enum").and_then(Value::as_array)
            && !options.contains(value)
        {
            return Err(format!("{at}: not one of {options:?}"));
        }
        if let Some(types) = schema.get("type") {
            let types: Vec<&str> = match types {
                Value::String(one) => vec![one.as_str()],
                Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
                _ => vec![],
            };
            let actual = match value {
                Value::Null => "null",
                Value::Bool(_) => "boolean",
                Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
                Value::Number(_) => "number",
                Value::String(_) => "string",
                Value::Array(_) => "array",
                Value::Object(_) => "object",
            };
            if !types.contains(&actual) {
                return Err(format!("{at}: {actual} is not {types:?}"));
            }
        }
        if let Value::String(text) = value {
            let length = text.chars().count() as u64;
            if schema
                .get("minLength")
                .and_then(Value::as_u64)
                .is_some_and(|min| length < min)
                || schema
                    .get("maxLength")
                    .and_then(Value::as_u64)
                    .is_some_and(|max| length > max)
            {
                return Err(format!("{at}: length {length} out of bounds"));
            }
            if schema.get("format").and_then(Value::as_str) == Some("date-time")
                && Timestamp::parse_rfc3339(text).is_err()
            {
                return Err(format!("{at}: not date-time"));
            }
        }
        if let Value::Object(fields) = value {
            for required in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let name = required.as_str().unwrap_or_default();
                if !fields.contains_key(name) {
                    return Err(format!("{at}: missing {name}"));
                }
            }
            let properties = schema.get("properties").and_then(Value::as_object);
            for (name, field) in fields {
                match properties.and_then(|properties| properties.get(name)) {
                    Some(property) => check(property, root, field, &format!("{at}.{name}"))?,
                    None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                        return Err(format!("{at}: unexpected {name}"));
                    }
                    None => {}
                }
            }
        }
        if let Some(branches) = schema.get("oneOf").and_then(Value::as_array) {
            let matching = branches
                .iter()
                .filter(|branch| check(branch, root, value, at).is_ok())
                .count();
            if matching != 1 {
                return Err(format!("{at}: matches {matching} oneOf branches"));
            }
        }
        Ok(())
    }

    fn validate(value: &Value) -> Result<(), String> {
        let schema: Value = serde_json::from_str(JSON_SCHEMA).map_err(|error| error.to_string())?;
        check(&schema, &schema, value, "$")
    }

    fn at() -> Timestamp {
        Timestamp::parse_rfc3339("2026-03-20T14:22:00.123Z").unwrap()
    }

    fn every_kind() -> Vec<LogEvent> {
        vec![
            LogEvent::Click(ClickEvent {
                attribution_id: "attr_01JQ3V8W6Y7Z8A9B0C1D2E3F4G".into(),
                code: "JAN-VERV-8F3A".into(),
                mentor_id: "usr_4491".into(),
                ip_address: "2001:db8::1".into(),
                user_agent: None,
                referrer_url: Some("https://instagram.com".into()),
                occurred_at: at(),
                received_at: at(),
            }),
            LogEvent::ConfirmConversion(ConfirmConversion {
                command_id: "cmd_01JQ3V8W6Y7Z8A9B0C1D2E3F4G".into(),
                attribution_id: "attr_01JQ3V8W6Y7Z8A9B0C1D2E3F4G".into(),
                code: "JAN-VERV-8F3A".into(),
                new_member_id: "usr_5892".into(),
                confirmed_at: at(),
                issued_at: at(),
            }),
            LogEvent::DeleteAttribution(DeleteAttribution {
                command_id: "cmd_01JQ3V8W6Y7Z8A9B0C1D2E3F4G".into(),
                attribution_id: "attr_01JQ3V8W6Y7Z8A9B0C1D2E3F4G".into(),
                issued_at: at(),
            }),
            LogEvent::AssignCode(AssignCode {
                command_id: "cmd_01JQ3V8W6Y7Z8A9B0C1D2E3F4G".into(),
                code: "JAN-VERV-8F3A".into(),
                mentor_id: "usr_4491".into(),
                destination_url: None,
                issued_at: at(),
            }),
            LogEvent::RetireCode(RetireCode {
                command_id: "cmd_01JQ3V8W6Y7Z8A9B0C1D2E3F4G".into(),
                code: "JAN-VERV-8F3A".into(),
                issued_at: at(),
            }),
            LogEvent::ReverseConversion(ReverseConversion {
                command_id: "cmd_01JQ3V8W6Y7Z8A9B0C1D2E3F4G".into(),
                attribution_id: "attr_01JQ3V8W6Y7Z8A9B0C1D2E3F4G".into(),
                reason: "refund".into(),
                reversed_at: at(),
                issued_at: at(),
            }),
        ]
    }

    #[test]
    fn every_message_this_build_writes_matches_the_json_schema() {
        for event in every_kind() {
            let message = LogMessage::new(event);
            let json: Value = serde_json::from_slice(&message.to_json().unwrap()).unwrap();
            assert_eq!(validate(&json), Ok(()), "{json}");
            assert_eq!(
                LogMessage::from_json(&message.to_json().unwrap()).unwrap(),
                message
            );
        }
    }

    #[test]
    fn the_schema_refuses_what_readers_refuse() {
        let click = serde_json::to_value(LogMessage::new(every_kind().remove(0))).unwrap();
        let mut extra = click.clone();
        extra["payload"]["mentor_name"] = json!("Jan");
        let mut missing = click.clone();
        missing["payload"]
            .as_object_mut()
            .unwrap()
            .remove("occurred_at");
        let mut wrong_kind = click.clone();
        wrong_kind["kind"] = json!("retire_code");
        let mut future_version = click.clone();
        future_version["schema_version"] = json!(2);
        for broken in [extra, missing, wrong_kind, future_version] {
            assert!(validate(&broken).is_err(), "schema accepted {broken}");
            assert!(
                LogMessage::from_json(broken.to_string().as_bytes()).is_err(),
                "reader accepted {broken}"
            );
        }
    }

    #[test]
    fn fields_decode_in_any_order_and_duplicates_are_refused() {
        for event in every_kind() {
            let message = LogMessage::new(event);
            let json = serde_json::to_value(&message).unwrap();
            let payload_first = format!(
                r#"{{"payload":{},"schema_version":1,"kind":{}}}"#,
                json["payload"], json["kind"]
            );
            assert_eq!(
                LogMessage::from_json(payload_first.as_bytes()).unwrap(),
                message
            );
        }
        let duplicate = r#"{"schema_version":1,"kind":"click","kind":"click","payload":{}}"#;
        assert!(LogMessage::from_json(duplicate.as_bytes()).is_err());
        let no_payload = r#"{"schema_version":1,"kind":"click"}"#;
        assert!(LogMessage::from_json(no_payload.as_bytes()).is_err());
    }

    #[test]
    fn rejection_names_are_their_serialized_form() {
        for reason in [
            Rejection::AttributionNotFound,
            Rejection::CodeMismatch,
            Rejection::AlreadyConfirmed,
            Rejection::ConfirmedBeforeClick,
            Rejection::AttributionExpired,
            Rejection::MemberAlreadyAttributed,
            Rejection::CodeNotFound,
            Rejection::NotAVisitor,
            Rejection::NotConfirmed,
            Rejection::AlreadyReversed,
            Rejection::ReversedBeforeConfirmation,
        ] {
            assert_eq!(
                serde_json::to_value(reason).unwrap(),
                json!(reason.as_str())
            );
        }
    }
}
