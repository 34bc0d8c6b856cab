//! The versioned messages that travel on the attribution log, and the verdicts the single
//! writer records for commands.
//!
//! Every change of state is one of these events. The edge publishes [`ClickEvent`]s; the API
//! publishes commands. The aggregator applies them in log order and is the only writer of
//! state, so two requests can never both "win". The JSON form is documented as a JSON Schema
//! in `schemas/log-messages.schema.json`; a test keeps the two in step.

use serde::{Deserialize, Serialize};

use crate::attribution::{Attribution, CodeRetirement, DeletionView, ReferralCode};
use crate::Timestamp;

/// The version of the message schema this build writes. Readers reject other versions
/// (the aggregator dead-letters them) instead of guessing at their meaning.
pub const SCHEMA_VERSION: u16 = 1;

/// One message on the log: a version and one event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
        }
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
        serde_json::to_vec(self)
    }

    /// Decodes one message, refusing versions this build does not understand.
    pub fn from_json(bytes: &[u8]) -> Result<Self, MessageDecodeError> {
        let message: Self = serde_json::from_slice(bytes).map_err(MessageDecodeError::Malformed)?;
        if message.schema_version != SCHEMA_VERSION {
            return Err(MessageDecodeError::UnsupportedVersion(message.schema_version));
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
