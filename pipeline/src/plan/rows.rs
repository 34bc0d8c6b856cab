//! The versioned rows every store keeps, as the planner decides them.
//!
//! A store writes these as they are: ClickHouse inserts them (RowBinary, so the fields are
//! in table column order), SQLite upserts them keeping the highest version. The same structs
//! are the JSON of a recorded decision's effect, so a replayed command writes exactly the
//! rows its first decision wrote, in either store.

use clickhouse::Row;
use referral_schemas::verdict::ClickVerdict;
use referral_schemas::{Attribution, AttributionKind, AttributionStatus, ReferralCode, Timestamp};
use serde::{Deserialize, Serialize};

use crate::store::StoreError;

/// One state of an attribution. `version` orders the states of one attribution: 1 for the
/// click, +1 for each accepted command; a store keeps the highest.
#[derive(Clone, Debug, PartialEq, Eq, Row, Serialize, Deserialize)]
pub struct AttributionRow {
    pub id: String,
    pub code: String,
    pub mentor_id: String,
    pub kind: String,
    pub status: String,
    pub new_member_id: Option<String>,
    pub ip_address: String,
    pub user_agent: Option<String>,
    pub referrer_url: Option<String>,
    pub occurred_at: i64,
    pub confirmed_at: Option<i64>,
    pub created_at: i64,
    pub deleted_at: Option<i64>,
    pub version: u64,
    /// The click's verdict (`counted`, `duplicate`, `bot`); never changes. The defaults
    /// read effects recorded before verdicts existed (their clicks all counted).
    #[serde(default = "counted")]
    pub verdict: String,
    #[serde(default)]
    pub duplicate_of: Option<String>,
    /// The log position of the click: the dedup window of a partition is rebuilt from the
    /// counted clicks below its checkpoint (`""`/`-1`: recorded before verdicts existed).
    #[serde(default)]
    pub source_topic: String,
    #[serde(default = "unknown_position")]
    pub source_partition: i32,
    #[serde(default = "unknown_position_i64")]
    pub source_offset: i64,
    /// Set once a conversion is reversed (`status` 'reversed'); absent in effects recorded
    /// before reversals existed.
    #[serde(default)]
    pub reversed_at: Option<i64>,
    #[serde(default)]
    pub reversal_reason: Option<String>,
}

fn counted() -> String {
    ClickVerdict::Counted.as_str().to_owned()
}

fn unknown_position() -> i32 {
    -1
}

fn unknown_position_i64() -> i64 {
    -1
}

/// The version of an attribution's first state, written by its click.
pub const CLICK_VERSION: u64 = 1;

/// Where a click was read from: its topic, partition and offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClickSource<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

impl AttributionRow {
    /// The first state of a click read at `source`.
    pub fn click(attribution: &Attribution, source: ClickSource<'_>) -> Self {
        let mut row = Self::live(attribution, CLICK_VERSION);
        row.source_topic = source.topic.to_owned();
        row.source_partition = source.partition;
        row.source_offset = source.offset;
        row
    }

    /// A later live state of this row's attribution (its click's position kept).
    pub fn next_state(&self, attribution: &Attribution) -> Self {
        let mut row = Self::live(attribution, self.version + 1);
        row.source_topic = self.source_topic.clone();
        row.source_partition = self.source_partition;
        row.source_offset = self.source_offset;
        row
    }

    fn live(attribution: &Attribution, version: u64) -> Self {
        Self {
            id: attribution.id.clone(),
            code: attribution.code.clone(),
            mentor_id: attribution.mentor_id.clone(),
            kind: attribution.kind.as_str().to_owned(),
            status: attribution.status.as_str().to_owned(),
            new_member_id: attribution.new_member_id.clone(),
            ip_address: attribution.ip_address.clone(),
            user_agent: attribution.user_agent.clone(),
            referrer_url: attribution.referrer_url.clone(),
            occurred_at: attribution.occurred_at.as_millis(),
            confirmed_at: attribution.confirmed_at.map(Timestamp::as_millis),
            created_at: attribution.created_at.as_millis(),
            deleted_at: None,
            version,
            verdict: attribution
                .verdict
                .unwrap_or(ClickVerdict::Counted)
                .as_str()
                .to_owned(),
            duplicate_of: attribution.duplicate_of.clone(),
            source_topic: String::new(),
            source_partition: -1,
            source_offset: -1,
            reversed_at: attribution.reversed_at.map(Timestamp::as_millis),
            reversal_reason: attribution.reversal_reason.clone(),
        }
    }

    /// The record, or an error naming the bad column.
    pub fn to_attribution(&self) -> Result<Attribution, StoreError> {
        let kind = AttributionKind::parse(&self.kind)
            .ok_or_else(|| StoreError::Corrupt(format!("{}: kind {:?}", self.id, self.kind)))?;
        let status = AttributionStatus::parse(&self.status)
            .ok_or_else(|| StoreError::Corrupt(format!("{}: status {:?}", self.id, self.status)))?;
        let verdict = ClickVerdict::parse(&self.verdict).ok_or_else(|| {
            StoreError::Corrupt(format!("{}: verdict {:?}", self.id, self.verdict))
        })?;
        Ok(Attribution {
            id: self.id.clone(),
            code: self.code.clone(),
            mentor_id: self.mentor_id.clone(),
            kind,
            status,
            new_member_id: self.new_member_id.clone(),
            ip_address: self.ip_address.clone(),
            user_agent: self.user_agent.clone(),
            referrer_url: self.referrer_url.clone(),
            occurred_at: Timestamp::from_millis(self.occurred_at),
            confirmed_at: self.confirmed_at.map(Timestamp::from_millis),
            created_at: Timestamp::from_millis(self.created_at),
            verdict: Some(verdict),
            duplicate_of: self.duplicate_of.clone(),
            reversed_at: self.reversed_at.map(Timestamp::from_millis),
            reversal_reason: self.reversal_reason.clone(),
        })
    }

    pub fn is_live(&self) -> bool {
        self.deleted_at.is_none()
    }
}

/// Which attribution holds a member (`released` once its attribution was deleted).
#[derive(Clone, Debug, PartialEq, Eq, Row, Serialize, Deserialize)]
pub struct MemberRow {
    pub new_member_id: String,
    pub attribution_id: String,
    pub released: u8,
    pub version: u64,
}

impl MemberRow {
    /// The attribution holding the member, if it still does.
    pub fn holder(&self) -> Option<&str> {
        (self.released == 0).then_some(self.attribution_id.as_str())
    }
}

/// One state of a referral code (`retired` once it was retired).
#[derive(Clone, Debug, PartialEq, Eq, Row, Serialize, Deserialize)]
pub struct CodeRow {
    pub code: String,
    pub mentor_id: String,
    pub destination_url: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub retired: u8,
    pub version: u64,
}

impl CodeRow {
    pub fn live_code(&self) -> Option<ReferralCode> {
        (self.retired == 0).then(|| ReferralCode {
            code: self.code.clone(),
            mentor_id: self.mentor_id.clone(),
            destination_url: self.destination_url.clone(),
            created_at: Timestamp::from_millis(self.created_at),
            updated_at: Timestamp::from_millis(self.updated_at),
        })
    }
}

/// The writer's decision for one command, recorded before its effects.
#[derive(Clone, Debug, PartialEq, Eq, Row, Serialize, Deserialize)]
pub struct DecisionRow {
    pub command_id: String,
    /// JSON of `referral_schemas::messages::Verdict`.
    pub verdict: String,
    /// JSON of `plan::Effect`.
    pub effect: String,
    pub decided_at: i64,
    /// The log message it was decided for.
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
}

/// A webhook event a decision caused: the outbox the deliverer reads, stored in the same
/// flush as the decision and replayed with its effect, so the events are exactly as
/// complete as the data. Ordered by the log position of its command.
#[derive(Clone, Debug, PartialEq, Eq, Row, Serialize, Deserialize)]
pub struct EventRow {
    pub event_id: String,
    /// `referral_schemas::webhook::EventType` as text.
    pub event_type: String,
    pub attribution_id: String,
    /// JSON of the attribution as `GET` returns it (for a deletion: as it was).
    pub data: String,
    pub created_at: i64,
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
}

impl EventRow {
    /// The event a new (not replayed) verdict causes, if any. `tombstone` is the deleted
    /// attribution's last state, for a deletion.
    pub fn of_verdict(
        command_id: &str,
        verdict: &referral_schemas::messages::Verdict,
        tombstone: Option<&AttributionRow>,
        decided_at: Timestamp,
    ) -> Option<Self> {
        use referral_schemas::messages::Verdict;
        use referral_schemas::webhook::{EventType, event_id};
        let (kind, attribution) = match verdict {
            Verdict::Confirmed {
                attribution,
                replayed: false,
            } => (EventType::ConversionConfirmed, attribution.clone()),
            Verdict::Reversed {
                attribution,
                replayed: false,
            } => (EventType::ConversionReversed, attribution.clone()),
            Verdict::Deleted { .. } => (
                EventType::AttributionDeleted,
                tombstone?.to_attribution().ok()?,
            ),
            _ => return None,
        };
        Some(Self {
            event_id: event_id(command_id),
            event_type: kind.as_str().to_owned(),
            attribution_id: attribution.id.clone(),
            // Serializing a plain struct cannot fail.
            data: serde_json::to_string(&attribution).ok()?,
            created_at: decided_at.as_millis(),
            source_topic: String::new(),
            source_partition: 0,
            source_offset: -1,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::plan::Effect;

    /// A confirmation's effect as recorded before verdicts existed: it must still replay.
    #[test]
    fn effects_recorded_before_verdicts_still_parse() {
        let recorded = r#"{"attribution":{"id":"attr_1","code":"JAN-1","mentor_id":"m1",
            "kind":"conversion","status":"confirmed","new_member_id":"new_1",
            "ip_address":"203.0.113.7","user_agent":null,"referrer_url":null,
            "occurred_at":1000,"confirmed_at":2000,"created_at":1000,"deleted_at":null,
            "version":2},
            "member":{"new_member_id":"new_1","attribution_id":"attr_1","released":0,"version":1},
            "code":null,
            "deltas":[{"mentor_id":"m1","hour":0,"clicks":0,"conversions":1}]}"#;
        let effect: Effect = serde_json::from_str(recorded).unwrap();
        let row = effect.attribution.unwrap();
        assert_eq!(row.verdict, "counted");
        assert_eq!((row.source_partition, row.source_offset), (-1, -1));
        assert_eq!(effect.deltas[0].conversions, 1);
        assert_eq!(effect.deltas[0].duplicates, 0);
    }
}
