//! Commands: publish on the log, then wait for the single writer's verdict.
//!
//! The API never changes state itself. It publishes the command and waits for the verdict
//! the single writer decided under the command id (handed over in process in the embedded
//! mode, looked up in ClickHouse in production), so concurrent commands are decided one at
//! a time, in log order, against the true current state. A verdict is answered only once
//! the flush that decided it is stored, so reads right after the answer include it.

use referral_kit::error::publish_error;
use referral_schemas::messages::{LogEvent, Rejection, Verdict};
use referral_schemas::{ApiError, ErrorKind};

use crate::auth::Caller;
use crate::state::AppState;

/// The attribution or code a command is about.
fn subject_of(command: &LogEvent) -> &str {
    match command {
        LogEvent::Click(click) => &click.attribution_id,
        LogEvent::ConfirmConversion(confirm) => &confirm.attribution_id,
        LogEvent::DeleteAttribution(delete) => &delete.attribution_id,
        LogEvent::ReverseConversion(reverse) => &reverse.attribution_id,
        LogEvent::AssignCode(assign) => &assign.code,
        LogEvent::RetireCode(retire) => &retire.code,
    }
}

/// Publishes `command` for `caller` and returns its verdict, or 503 when none came within
/// the timeout. Every write goes through here, so here is its audit line: who, what, on
/// which attribution or code, and how it ended.
pub async fn submit(
    state: &AppState,
    caller: &Caller,
    command: LogEvent,
) -> Result<Verdict, ApiError> {
    let Some(command_id) = command.command_id().map(str::to_owned) else {
        tracing::error!(
            kind = command.kind_name(),
            "submit called with an event that is not a command"
        );
        return Err(ApiError::internal());
    };
    let kind = command.kind_name();
    let subject = subject_of(&command).to_owned();
    let decided = tokio::time::timeout(state.command_timeout, async {
        // Waiting starts before the command is published: its verdict may come at once.
        let verdict = state.reads.verdicts.expect(&command_id)?;
        let _awaited = state.reads.awaiting_store();
        state
            .pipeline
            .log
            .publish(command)
            .await
            .map_err(publish_error)?;
        verdict.await
    })
    .await;
    let verdict = decided.unwrap_or_else(|_| {
        tracing::warn!(%command_id, "no verdict within the command timeout");
        Err(ApiError::overloaded(
            "the command was not decided in time; retry",
        ))
    });
    let outcome = match &verdict {
        Ok(Verdict::Rejected { reason }) => reason.as_str(),
        Ok(_) => "applied",
        Err(error) => error.kind.code(),
    };
    tracing::info!(
        target: "referral::audit",
        token = %caller.name(),
        command = kind,
        %command_id,
        %subject,
        outcome,
        "write"
    );
    let verdict = verdict?;
    metrics::counter!("referral_commands_total", "command" => kind, "outcome" => outcome)
        .increment(1);
    Ok(verdict)
}

/// The client's answer to a rejected command.
pub fn rejection_error(reason: Rejection) -> ApiError {
    match reason {
        Rejection::AttributionNotFound => {
            ApiError::new(ErrorKind::AttributionNotFound, "no such attribution").on_field("id")
        }
        Rejection::CodeMismatch => ApiError::new(
            ErrorKind::CodeMismatch,
            "the code is not the attribution's code",
        )
        .on_field("code"),
        Rejection::AlreadyConfirmed => ApiError::new(
            ErrorKind::AlreadyConfirmed,
            "the attribution is already confirmed with another member",
        )
        .on_field("new_member_id"),
        Rejection::ConfirmedBeforeClick => {
            ApiError::invalid("confirmed_at", "must not be before the click's occurred_at")
        }
        Rejection::AttributionExpired => ApiError::new(
            ErrorKind::AttributionExpired,
            "the confirmation comes after the attribution window closed",
        )
        .on_field("confirmed_at"),
        Rejection::MemberAlreadyAttributed => ApiError::new(
            ErrorKind::MemberAlreadyAttributed,
            "this member is already attributed to another click",
        )
        .on_field("new_member_id"),
        Rejection::CodeNotFound => {
            ApiError::new(ErrorKind::CodeNotFound, "no such referral code").on_field("code")
        }
        Rejection::NotAVisitor => ApiError::new(
            ErrorKind::NotAVisitor,
            "the click's verdict is bot (a crawler, link preview or headless browser): no \
             person visited, so it cannot be confirmed",
        )
        .on_field("id"),
        Rejection::NotConfirmed => ApiError::new(
            ErrorKind::NotConfirmed,
            "only a confirmed conversion can be reversed",
        )
        .on_field("id"),
        Rejection::AlreadyReversed => ApiError::new(
            ErrorKind::AlreadyReversed,
            "the conversion is already reversed for another reason",
        )
        .on_field("reason"),
        Rejection::ReversedBeforeConfirmation => ApiError::invalid(
            "reversed_at",
            "must not be before the conversion's confirmed_at",
        ),
    }
}
