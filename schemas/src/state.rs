//! The attribution state machine as pure functions, shared by every store.
//!
//! A store loads the current state, calls one of these, and persists what it returns: the
//! new state and the per-mentor [`TotalsDelta`]s. Keeping the rules free of I/O is what lets
//! the embedded SQLite store and the ClickHouse store behave the same, and lets the rules be
//! tested exhaustively without either.
//!
//! Totals invariant: for every mentor and hour, `clicks` is the number of live (not deleted)
//! `counted` attributions whose `occurred_at` falls in that hour (`duplicates` and `bots` the
//! same for the other verdicts), and `conversions` the number of live confirmed attributions
//! whose `confirmed_at` falls in it, and `reversals` the number of live reversed ones whose
//! `confirmed_at` falls in it (a reversal restates the hour its conversion was counted in).
//! Every function here returns the deltas that keep that invariant.

use crate::attribution::{
    Attribution, AttributionKind, AttributionStatus, CodeRetirement, DeletionView, ReferralCode,
};
use crate::messages::{
    AssignCode, ClickEvent, ConfirmConversion, DeleteAttribution, Rejection, RetireCode,
    ReverseConversion,
};
use crate::verdict::ClickVerdict;

/// A signed change to one mentor's totals in one hour bucket.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TotalsDelta {
    pub mentor_id: String,
    /// Hours since the Unix epoch ([`Timestamp::hour_bucket`]).
    pub hour: i64,
    /// `counted` clicks: what mentors are paid on.
    pub clicks: i64,
    pub duplicates: i64,
    pub bots: i64,
    pub conversions: i64,
    /// Reversed conversions, by their `confirmed_at`.
    pub reversals: i64,
}

impl TotalsDelta {
    /// `sign` clicks of `verdict` (a click without a verdict, recorded before verdicts
    /// existed, counted) for the attribution's mentor in the hour of its `occurred_at`.
    pub fn click(attribution: &Attribution, sign: i64) -> Self {
        let mut delta = Self {
            mentor_id: attribution.mentor_id.clone(),
            hour: attribution.occurred_at.hour_bucket(),
            ..Self::default()
        };
        match attribution.verdict.unwrap_or(ClickVerdict::Counted) {
            ClickVerdict::Counted => delta.clicks = sign,
            ClickVerdict::Duplicate => delta.duplicates = sign,
            ClickVerdict::Bot => delta.bots = sign,
        }
        delta
    }
}

/// The attribution a click creates, before the writer's verdict: what the click's 201
/// answers.
pub fn new_attribution(click: &ClickEvent) -> Attribution {
    Attribution {
        id: click.attribution_id.clone(),
        code: click.code.clone(),
        mentor_id: click.mentor_id.clone(),
        kind: AttributionKind::Click,
        status: AttributionStatus::Pending,
        new_member_id: None,
        ip_address: click.ip_address.clone(),
        user_agent: click.user_agent.clone(),
        referrer_url: click.referrer_url.clone(),
        occurred_at: click.occurred_at,
        confirmed_at: None,
        created_at: click.received_at,
        verdict: None,
        duplicate_of: None,
        reversed_at: None,
        reversal_reason: None,
    }
}

/// A new attribution with the writer's verdict, and the click it adds to its mentor's
/// totals.
pub fn record_click(
    click: &ClickEvent,
    verdict: ClickVerdict,
    duplicate_of: Option<String>,
) -> (Attribution, TotalsDelta) {
    let mut attribution = new_attribution(click);
    attribution.verdict = Some(verdict);
    attribution.duplicate_of = duplicate_of;
    let delta = TotalsDelta::click(&attribution, 1);
    (attribution, delta)
}

/// The result of an accepted confirmation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Confirmation {
    /// The attribution became a conversion: persist it, claim the member, apply the delta.
    Applied {
        attribution: Attribution,
        delta: TotalsDelta,
    },
    /// The same confirmation was already applied: answer with the stored record, change nothing.
    Replayed { attribution: Attribution },
}

/// Confirms a recruitment.
///
/// * `current`: the live attribution (`None` when unknown or deleted).
/// * `member_holder`: the id of the live attribution the member is already attributed to.
/// * `window_ms`: the longest allowed time from click to confirmation.
///
/// Checks, in order: exists; same code; not a bot's click (a duplicate is a real visitor
/// and can be confirmed); an identical earlier confirmation (replay) or a different one
/// (conflict); confirmation not before the click; inside the window; the member
/// not attributed elsewhere.
pub fn confirm(
    current: Option<&Attribution>,
    member_holder: Option<&str>,
    command: &ConfirmConversion,
    window_ms: i64,
) -> Result<Confirmation, Rejection> {
    let current = current.ok_or(Rejection::AttributionNotFound)?;
    if current.code != command.code {
        return Err(Rejection::CodeMismatch);
    }
    if current.verdict == Some(ClickVerdict::Bot) {
        return Err(Rejection::NotAVisitor);
    }
    // A reversed conversion stays its member's: the same confirmation again replays it.
    if current.kind == AttributionKind::Conversion {
        return if current.new_member_id.as_deref() == Some(command.new_member_id.as_str()) {
            Ok(Confirmation::Replayed {
                attribution: current.clone(),
            })
        } else {
            Err(Rejection::AlreadyConfirmed)
        };
    }
    if command.confirmed_at < current.occurred_at {
        return Err(Rejection::ConfirmedBeforeClick);
    }
    let elapsed = command.confirmed_at.as_millis() - current.occurred_at.as_millis();
    if elapsed > window_ms {
        return Err(Rejection::AttributionExpired);
    }
    if member_holder.is_some_and(|holder| holder != current.id) {
        return Err(Rejection::MemberAlreadyAttributed);
    }
    let mut attribution = current.clone();
    attribution.kind = AttributionKind::Conversion;
    attribution.status = AttributionStatus::Confirmed;
    attribution.new_member_id = Some(command.new_member_id.clone());
    attribution.confirmed_at = Some(command.confirmed_at);
    let delta = TotalsDelta {
        mentor_id: attribution.mentor_id.clone(),
        hour: command.confirmed_at.hour_bucket(),
        conversions: 1,
        ..TotalsDelta::default()
    };
    Ok(Confirmation::Applied { attribution, delta })
}

/// The result of an accepted deletion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deletion {
    pub view: DeletionView,
    /// The member whose attribution this was: free to be attributed again.
    pub released_member: Option<String>,
    /// One click (of its verdict) removed, and one conversion when the attribution was confirmed.
    pub deltas: Vec<TotalsDelta>,
}

/// Deletes a live attribution.
pub fn delete(
    current: Option<&Attribution>,
    command: &DeleteAttribution,
) -> Result<Deletion, Rejection> {
    let current = current.ok_or(Rejection::AttributionNotFound)?;
    let mut deltas = vec![TotalsDelta::click(current, -1)];
    if let Some(confirmed_at) = current.confirmed_at {
        let reversed = current.status == AttributionStatus::Reversed;
        deltas.push(TotalsDelta {
            mentor_id: current.mentor_id.clone(),
            hour: confirmed_at.hour_bucket(),
            conversions: if reversed { 0 } else { -1 },
            reversals: if reversed { -1 } else { 0 },
            ..TotalsDelta::default()
        });
    }
    Ok(Deletion {
        view: DeletionView {
            id: current.id.clone(),
            deleted: true,
            deleted_at: command.issued_at,
        },
        released_member: current.new_member_id.clone(),
        deltas,
    })
}

/// The result of an accepted reversal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reversal {
    /// The conversion is reversed: persist it, apply the delta (one conversion less and one
    /// reversal more, in the hour of its `confirmed_at`).
    Applied {
        attribution: Attribution,
        delta: TotalsDelta,
    },
    /// Already reversed for the same reason: answer with the stored record, change nothing.
    Replayed { attribution: Attribution },
}

/// Reverses a confirmed conversion.
///
/// Checks, in order: exists (live); a conversion; already reversed (for the same reason:
/// replay, whatever `reversed_at` the retry carries; another reason: conflict); not dated
/// before its confirmation. The member stays attributed: the recruitment happened, it is
/// only no longer paid for.
pub fn reverse(
    current: Option<&Attribution>,
    command: &ReverseConversion,
) -> Result<Reversal, Rejection> {
    let current = current.ok_or(Rejection::AttributionNotFound)?;
    let confirmed_at = match (current.kind, current.confirmed_at) {
        (AttributionKind::Conversion, Some(confirmed_at)) => confirmed_at,
        _ => return Err(Rejection::NotConfirmed),
    };
    if current.status == AttributionStatus::Reversed {
        return if current.reversal_reason.as_deref() == Some(command.reason.as_str()) {
            Ok(Reversal::Replayed {
                attribution: current.clone(),
            })
        } else {
            Err(Rejection::AlreadyReversed)
        };
    }
    if command.reversed_at < confirmed_at {
        return Err(Rejection::ReversedBeforeConfirmation);
    }
    let mut attribution = current.clone();
    attribution.status = AttributionStatus::Reversed;
    attribution.reversed_at = Some(command.reversed_at);
    attribution.reversal_reason = Some(command.reason.clone());
    let delta = TotalsDelta {
        mentor_id: attribution.mentor_id.clone(),
        hour: confirmed_at.hour_bucket(),
        conversions: -1,
        reversals: 1,
        ..TotalsDelta::default()
    };
    Ok(Reversal::Applied { attribution, delta })
}

/// Assigns a code: `(code, created)`. A retired code assigned again counts as created.
pub fn assign_code(current: Option<&ReferralCode>, command: &AssignCode) -> (ReferralCode, bool) {
    match current {
        Some(existing) => {
            let mut code = existing.clone();
            if code.mentor_id != command.mentor_id
                || code.destination_url != command.destination_url
            {
                code.mentor_id = command.mentor_id.clone();
                code.destination_url = command.destination_url.clone();
                code.updated_at = command.issued_at;
            }
            (code, false)
        }
        None => (
            ReferralCode {
                code: command.code.clone(),
                mentor_id: command.mentor_id.clone(),
                destination_url: command.destination_url.clone(),
                created_at: command.issued_at,
                updated_at: command.issued_at,
            },
            true,
        ),
    }
}

/// Retires a live code: later clicks for it are refused with `unknown_code`.
pub fn retire_code(
    current: Option<&ReferralCode>,
    command: &RetireCode,
) -> Result<CodeRetirement, Rejection> {
    let current = current.ok_or(Rejection::CodeNotFound)?;
    Ok(CodeRetirement {
        code: current.code.clone(),
        deleted: true,
        deleted_at: command.issued_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Timestamp;
    use crate::timestamp::DAY_MS;

    fn at(text: &str) -> Timestamp {
        Timestamp::parse_rfc3339(text).unwrap()
    }

    fn click() -> ClickEvent {
        ClickEvent {
            attribution_id: "attr_1".into(),
            code: "JAN-VERV-8F3A".into(),
            mentor_id: "usr_4491".into(),
            ip_address: "185.12.34.56".into(),
            user_agent: None,
            referrer_url: None,
            occurred_at: at("2026-03-20T14:22:00Z"),
            received_at: at("2026-03-20T14:22:01Z"),
        }
    }

    fn confirmation(member: &str, confirmed_at: &str) -> ConfirmConversion {
        ConfirmConversion {
            command_id: "cmd_1".into(),
            attribution_id: "attr_1".into(),
            code: "JAN-VERV-8F3A".into(),
            new_member_id: member.into(),
            confirmed_at: at(confirmed_at),
            issued_at: at(confirmed_at),
        }
    }

    const WINDOW: i64 = 90 * DAY_MS;

    #[test]
    fn a_click_adds_one_click_in_its_hour() {
        let (attribution, delta) = record_click(&click(), ClickVerdict::Counted, None);
        assert_eq!(attribution.status, AttributionStatus::Pending);
        assert_eq!(delta.clicks, 1);
        assert_eq!(delta.conversions, 0);
        assert_eq!(delta.hour, at("2026-03-20T14:00:00Z").hour_bucket());
    }

    #[test]
    fn confirming_turns_the_click_into_a_conversion_counted_at_confirmation() {
        let (pending, _) = record_click(&click(), ClickVerdict::Counted, None);
        let command = confirmation("usr_5892", "2026-03-25T10:00:00Z");
        let Ok(Confirmation::Applied { attribution, delta }) =
            confirm(Some(&pending), None, &command, WINDOW)
        else {
            panic!("expected an applied confirmation");
        };
        assert_eq!(attribution.kind, AttributionKind::Conversion);
        assert_eq!(attribution.new_member_id.as_deref(), Some("usr_5892"));
        assert_eq!((delta.clicks, delta.conversions), (0, 1));
        assert_eq!(delta.hour, at("2026-03-25T10:00:00Z").hour_bucket());

        // The same confirmation again is a replay; another member is a conflict.
        assert!(matches!(
            confirm(Some(&attribution), Some("attr_1"), &command, WINDOW),
            Ok(Confirmation::Replayed { .. })
        ));
        let other = confirmation("usr_7777", "2026-03-25T10:00:00Z");
        assert_eq!(
            confirm(Some(&attribution), None, &other, WINDOW),
            Err(Rejection::AlreadyConfirmed)
        );
    }

    #[test]
    fn confirmation_rules_reject_in_order() {
        let (pending, _) = record_click(&click(), ClickVerdict::Counted, None);
        let ok = confirmation("usr_5892", "2026-03-25T10:00:00Z");
        assert_eq!(
            confirm(None, None, &ok, WINDOW),
            Err(Rejection::AttributionNotFound)
        );
        let mut wrong_code = ok.clone();
        wrong_code.code = "OTHER".into();
        assert_eq!(
            confirm(Some(&pending), None, &wrong_code, WINDOW),
            Err(Rejection::CodeMismatch)
        );
        let early = confirmation("usr_5892", "2026-03-20T14:21:59Z");
        assert_eq!(
            confirm(Some(&pending), None, &early, WINDOW),
            Err(Rejection::ConfirmedBeforeClick)
        );
        let late = confirmation("usr_5892", "2026-06-18T14:22:01Z");
        assert_eq!(
            confirm(Some(&pending), None, &late, WINDOW),
            Err(Rejection::AttributionExpired)
        );
        let edge = confirmation("usr_5892", "2026-06-18T14:22:00Z");
        assert!(
            confirm(Some(&pending), None, &edge, WINDOW).is_ok(),
            "the window is inclusive"
        );
        assert_eq!(
            confirm(Some(&pending), Some("attr_other"), &ok, WINDOW),
            Err(Rejection::MemberAlreadyAttributed)
        );
    }

    #[test]
    fn deleting_a_conversion_removes_its_click_and_its_conversion() {
        let (pending, _) = record_click(&click(), ClickVerdict::Counted, None);
        let Ok(Confirmation::Applied { attribution, .. }) = confirm(
            Some(&pending),
            None,
            &confirmation("usr_5892", "2026-03-25T10:00:00Z"),
            WINDOW,
        ) else {
            panic!("expected an applied confirmation");
        };
        let command = DeleteAttribution {
            command_id: "cmd_2".into(),
            attribution_id: "attr_1".into(),
            issued_at: at("2026-03-26T12:00:00Z"),
        };
        let deletion = delete(Some(&attribution), &command).unwrap();
        assert_eq!(deletion.released_member.as_deref(), Some("usr_5892"));
        let clicks: i64 = deletion.deltas.iter().map(|d| d.clicks).sum();
        let conversions: i64 = deletion.deltas.iter().map(|d| d.conversions).sum();
        assert_eq!((clicks, conversions), (-1, -1));
        assert_eq!(delete(None, &command), Err(Rejection::AttributionNotFound));
    }

    #[test]
    fn a_bot_click_cannot_be_confirmed_and_a_duplicate_can() {
        let ok = confirmation("usr_5892", "2026-03-25T10:00:00Z");
        let (bot, delta) = record_click(&click(), ClickVerdict::Bot, None);
        assert_eq!((delta.clicks, delta.duplicates, delta.bots), (0, 0, 1));
        assert_eq!(
            confirm(Some(&bot), None, &ok, WINDOW),
            Err(Rejection::NotAVisitor)
        );
        let (repeat, delta) =
            record_click(&click(), ClickVerdict::Duplicate, Some("attr_0".into()));
        assert_eq!((delta.clicks, delta.duplicates, delta.bots), (0, 1, 0));
        assert_eq!(repeat.duplicate_of.as_deref(), Some("attr_0"));
        let Ok(Confirmation::Applied { attribution, delta }) =
            confirm(Some(&repeat), None, &ok, WINDOW)
        else {
            panic!("a duplicate is a real visitor");
        };
        assert_eq!(delta.conversions, 1);
        // Deleting it removes a duplicate, not a counted click.
        let command = DeleteAttribution {
            command_id: "cmd_2".into(),
            attribution_id: "attr_1".into(),
            issued_at: at("2026-03-26T12:00:00Z"),
        };
        let deletion = delete(Some(&attribution), &command).unwrap();
        let sums = deletion.deltas.iter().fold((0, 0, 0, 0), |sums, d| {
            (
                sums.0 + d.clicks,
                sums.1 + d.duplicates,
                sums.2 + d.bots,
                sums.3 + d.conversions,
            )
        });
        assert_eq!(sums, (0, -1, 0, -1));
    }

    fn reversal(reason: &str, reversed_at: &str) -> ReverseConversion {
        ReverseConversion {
            command_id: "cmd_r".into(),
            attribution_id: "attr_1".into(),
            reason: reason.into(),
            reversed_at: at(reversed_at),
            issued_at: at(reversed_at),
        }
    }

    #[test]
    fn a_reversal_moves_the_conversion_to_reversals_in_its_confirmation_hour() {
        let (pending, _) = record_click(&click(), ClickVerdict::Counted, None);
        let refund = reversal("refund", "2026-04-02T09:00:00Z");
        assert_eq!(reverse(None, &refund), Err(Rejection::AttributionNotFound));
        assert_eq!(
            reverse(Some(&pending), &refund),
            Err(Rejection::NotConfirmed)
        );
        let Ok(Confirmation::Applied {
            attribution: confirmed,
            ..
        }) = confirm(
            Some(&pending),
            None,
            &confirmation("usr_5892", "2026-03-25T10:30:00Z"),
            WINDOW,
        )
        else {
            panic!("expected an applied confirmation");
        };
        assert_eq!(
            reverse(
                Some(&confirmed),
                &reversal("refund", "2026-03-25T10:29:59Z")
            ),
            Err(Rejection::ReversedBeforeConfirmation)
        );
        let Ok(Reversal::Applied { attribution, delta }) = reverse(Some(&confirmed), &refund)
        else {
            panic!("expected an applied reversal");
        };
        assert_eq!(attribution.status, AttributionStatus::Reversed);
        assert_eq!(attribution.kind, AttributionKind::Conversion);
        assert_eq!(attribution.new_member_id.as_deref(), Some("usr_5892"));
        assert_eq!(attribution.reversed_at, Some(at("2026-04-02T09:00:00Z")));
        assert_eq!(attribution.reversal_reason.as_deref(), Some("refund"));
        assert_eq!(
            (delta.clicks, delta.conversions, delta.reversals),
            (0, -1, 1)
        );
        assert_eq!(delta.hour, at("2026-03-25T10:00:00Z").hour_bucket());

        // The same reason again (another instant, as a retry without one) replays; another
        // reason conflicts; the confirmation again replays; another member conflicts.
        let retry = reversal("refund", "2026-04-03T00:00:00Z");
        assert_eq!(
            reverse(Some(&attribution), &retry),
            Ok(Reversal::Replayed {
                attribution: attribution.clone()
            })
        );
        assert_eq!(
            reverse(
                Some(&attribution),
                &reversal("chargeback", "2026-04-03T00:00:00Z")
            ),
            Err(Rejection::AlreadyReversed)
        );
        assert!(matches!(
            confirm(
                Some(&attribution),
                Some("attr_1"),
                &confirmation("usr_5892", "2026-03-25T10:30:00Z"),
                WINDOW
            ),
            Ok(Confirmation::Replayed { .. })
        ));
        assert_eq!(
            confirm(
                Some(&attribution),
                None,
                &confirmation("usr_7777", "2026-03-25T10:30:00Z"),
                WINDOW
            ),
            Err(Rejection::AlreadyConfirmed)
        );

        // Deleting it removes its click and its reversal, not a conversion.
        let deletion = delete(
            Some(&attribution),
            &DeleteAttribution {
                command_id: "cmd_d".into(),
                attribution_id: "attr_1".into(),
                issued_at: at("2026-04-04T00:00:00Z"),
            },
        )
        .unwrap();
        let sums = deletion.deltas.iter().fold((0, 0, 0), |sums, d| {
            (
                sums.0 + d.clicks,
                sums.1 + d.conversions,
                sums.2 + d.reversals,
            )
        });
        assert_eq!(sums, (-1, 0, -1));
        assert_eq!(deletion.released_member.as_deref(), Some("usr_5892"));
    }

    #[test]
    fn codes_are_created_then_reassigned() {
        let assign = |mentor: &str, destination: Option<&str>, day: &str| AssignCode {
            command_id: "cmd_3".into(),
            code: "JAN-VERV-8F3A".into(),
            mentor_id: mentor.into(),
            destination_url: destination.map(str::to_owned),
            issued_at: at(&format!("2026-03-{day}T00:00:00Z")),
        };
        let (created, is_new) = assign_code(None, &assign("usr_1", None, "20"));
        assert!(is_new);
        let (moved, is_new) = assign_code(Some(&created), &assign("usr_2", None, "21"));
        assert!(!is_new);
        assert_eq!(moved.mentor_id, "usr_2");
        assert_eq!(moved.created_at, created.created_at);
        assert_eq!(moved.updated_at, at("2026-03-21T00:00:00Z"));
        // A new destination is a change; the same settings again are not.
        let link = Some("https://example.com/join");
        let (pointed, _) = assign_code(Some(&moved), &assign("usr_2", link, "22"));
        assert_eq!(pointed.destination_url.as_deref(), link);
        assert_eq!(pointed.updated_at, at("2026-03-22T00:00:00Z"));
        let (same, _) = assign_code(Some(&pointed), &assign("usr_2", link, "23"));
        assert_eq!(same, pointed);
    }
}
