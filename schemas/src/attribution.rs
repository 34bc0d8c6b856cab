//! The attribution record and the views of it that the public contract prints.

use serde::{Deserialize, Serialize};

use crate::Timestamp;
use crate::verdict::ClickVerdict;

/// What an attribution records: a click, or a click that became a recruitment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttributionKind {
    Click,
    Conversion,
}

/// Whether the platform confirmed the recruitment yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttributionStatus {
    Pending,
    Confirmed,
    /// A confirmed conversion undone later (a refund, a chargeback): it stays a conversion
    /// of its member but no longer counts in `total_conversions`.
    Reversed,
}

impl AttributionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Click => "click",
            Self::Conversion => "conversion",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "click" => Some(Self::Click),
            "conversion" => Some(Self::Conversion),
            _ => None,
        }
    }
}

impl AttributionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Confirmed => "confirmed",
            Self::Reversed => "reversed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "pending" => Some(Self::Pending),
            "confirmed" => Some(Self::Confirmed),
            "reversed" => Some(Self::Reversed),
            _ => None,
        }
    }
}

/// One attribution, as `GET /:id` and the click POST print it.
///
/// Invariant: `kind == Conversion` iff `status` is `Confirmed` or `Reversed` iff
/// `new_member_id` and `confirmed_at` are set; `status == Reversed` iff `reversed_at` and
/// `reversal_reason` are set. A confirmation turns the click into a conversion in place (it
/// does not create a second record), and a reversal marks that conversion undone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attribution {
    pub id: String,
    /// The referral code as stored (upper case).
    pub code: String,
    /// The mentor the code belonged to when the click arrived; a later reassignment of the
    /// code does not move existing attributions.
    pub mentor_id: String,
    #[serde(rename = "type")]
    pub kind: AttributionKind,
    pub status: AttributionStatus,
    pub new_member_id: Option<String>,
    pub ip_address: String,
    pub user_agent: Option<String>,
    pub referrer_url: Option<String>,
    /// When the click happened (client-supplied or the receive time).
    pub occurred_at: Timestamp,
    /// When the recruitment was confirmed; printed only once it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmed_at: Option<Timestamp>,
    /// When the edge received the click.
    pub created_at: Timestamp,
    /// What the click counts as (`counted`, `duplicate`, `bot`). Decided by the single
    /// writer once the log has the click: absent from the click's own 201 (which is the
    /// contract's record exactly), present in every read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<ClickVerdict>,
    /// For a `duplicate` only: the counted click it repeats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate_of: Option<String>,
    /// When the conversion was reversed; printed only once it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reversed_at: Option<Timestamp>,
    /// Why it was reversed (`refund`, `chargeback`, ...), as the platform said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reversal_reason: Option<String>,
}

/// The row of `GET /mentor/:mentorId`, exactly the fields the contract lists there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AttributionSummary<'a> {
    pub id: &'a str,
    pub code: &'a str,
    pub mentor_id: &'a str,
    #[serde(rename = "type")]
    pub kind: AttributionKind,
    pub status: AttributionStatus,
    pub new_member_id: Option<&'a str>,
    pub occurred_at: Timestamp,
    pub verdict: Option<ClickVerdict>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicate_of: Option<&'a str>,
}

/// The answer of `PUT /:id` (confirmRecruitment), exactly the fields the contract lists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConversionView<'a> {
    pub id: &'a str,
    pub code: &'a str,
    pub mentor_id: &'a str,
    #[serde(rename = "type")]
    pub kind: AttributionKind,
    pub status: AttributionStatus,
    pub new_member_id: Option<&'a str>,
    pub confirmed_at: Option<Timestamp>,
    pub created_at: Timestamp,
}

/// The answer of `DELETE /:id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletionView {
    pub id: String,
    pub deleted: bool,
    pub deleted_at: Timestamp,
}

impl Attribution {
    pub fn summary(&self) -> AttributionSummary<'_> {
        AttributionSummary {
            id: &self.id,
            code: &self.code,
            mentor_id: &self.mentor_id,
            kind: self.kind,
            status: self.status,
            new_member_id: self.new_member_id.as_deref(),
            occurred_at: self.occurred_at,
            verdict: self.verdict,
            duplicate_of: self.duplicate_of.as_deref(),
        }
    }

    pub fn conversion_view(&self) -> ConversionView<'_> {
        ConversionView {
            id: &self.id,
            code: &self.code,
            mentor_id: &self.mentor_id,
            kind: self.kind,
            status: self.status,
            new_member_id: self.new_member_id.as_deref(),
            confirmed_at: self.confirmed_at,
            created_at: self.created_at,
        }
    }
}

/// A referral code and the mentor it currently belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReferralCode {
    /// Upper case: codes are matched case-insensitively.
    pub code: String,
    pub mentor_id: String,
    /// Where `GET /r/{code}` redirects a visitor; null: the fallback (or a 404 page).
    #[serde(default)]
    pub destination_url: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// The answer of `DELETE /api/v1/referral-codes/{code}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeRetirement {
    pub code: String,
    pub deleted: bool,
    pub deleted_at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_the_contract_shape() {
        let attribution = Attribution {
            id: "attr_a1b2c3".into(),
            code: "JAN-VERV-8F3A".into(),
            mentor_id: "usr_4491".into(),
            kind: AttributionKind::Click,
            status: AttributionStatus::Pending,
            new_member_id: None,
            ip_address: "185.12.34.56".into(),
            user_agent: Some("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0)".into()),
            referrer_url: Some("https://instagram.com".into()),
            occurred_at: Timestamp::parse_rfc3339("2026-03-20T14:22:00Z").unwrap(),
            confirmed_at: None,
            created_at: Timestamp::parse_rfc3339("2026-03-20T14:22:01Z").unwrap(),
            verdict: Some(ClickVerdict::Duplicate),
            duplicate_of: Some("attr_f0e1d2".into()),
            reversed_at: None,
            reversal_reason: None,
        };
        let printed = serde_json::to_value(&attribution).unwrap();
        let expected = serde_json::json!({
            "id": "attr_a1b2c3",
            "code": "JAN-VERV-8F3A",
            "mentor_id": "usr_4491",
            "type": "click",
            "status": "pending",
            "new_member_id": null,
            "ip_address": "185.12.34.56",
            "user_agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0)",
            "referrer_url": "https://instagram.com",
            "occurred_at": "2026-03-20T14:22:00Z",
            "created_at": "2026-03-20T14:22:01Z",
            "verdict": "duplicate",
            "duplicate_of": "attr_f0e1d2"
        });
        assert_eq!(printed, expected);
    }
}
