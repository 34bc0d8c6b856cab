//! Commands: publish on the log, then wait for the single writer's verdict.
//!
//! The API never changes state itself. It publishes the command and reads the verdict the
//! writer recorded under the command id, so concurrent commands are decided one at a time,
//! in log order, against the true current state.

use std::time::Duration;

use referral_aggregator::store::AttributionReader;
use referral_ingest::edge::publish_error;
use referral_schemas::messages::{LogEvent, Rejection, Verdict};
use referral_schemas::{ApiError, ErrorKind};

use crate::app::AppState;

/// First pause between verdict look-ups; doubles up to [`MAX_POLL_PAUSE`]. In embedded mode
/// the verdict is there at the first look, since publish resolves after the commit.
const FIRST_POLL_PAUSE: Duration = Duration::from_millis(5);
const MAX_POLL_PAUSE: Duration = Duration::from_millis(200);

/// Publishes `command` and returns its verdict, or 503 when none came within the timeout.
pub async fn submit(state: &AppState, command: LogEvent) -> Result<Verdict, ApiError> {
    let Some(command_id) = command.command_id().map(str::to_owned) else {
        tracing::error!(
            kind = command.kind_name(),
            "submit called with an event that is not a command"
        );
        return Err(ApiError::internal());
    };
    let kind = command.kind_name();
    let decided = tokio::time::timeout(state.command_timeout, async {
        state.log.publish(command).await.map_err(publish_error)?;
        match &state.verdicts {
            Some(verdicts) => verdicts.wait(&command_id).await,
            None => await_verdict(state.reader.as_ref(), &command_id).await,
        }
    })
    .await;
    let verdict = decided.unwrap_or_else(|_| {
        tracing::warn!(%command_id, "no verdict within the command timeout");
        Err(ApiError::overloaded(
            "the command was not decided in time; retry",
        ))
    })?;
    let outcome = match &verdict {
        Verdict::Rejected { reason } => reason.as_str(),
        _ => "applied",
    };
    metrics::counter!("referral_commands_total", "command" => kind, "outcome" => outcome)
        .increment(1);
    Ok(verdict)
}

async fn await_verdict(
    reader: &dyn AttributionReader,
    command_id: &str,
) -> Result<Verdict, ApiError> {
    let mut pause = FIRST_POLL_PAUSE;
    loop {
        match reader.verdict(command_id).await {
            Ok(Some(verdict)) => return Ok(verdict),
            Ok(None) => {}
            // The command is on the log and will be decided: keep looking until the command
            // timeout (then 503), as the store comes back.
            Err(error) if error.is_unavailable() => {
                tracing::warn!(%error, %command_id, "store unavailable; verdict look-up retried");
            }
            Err(error) => {
                tracing::error!(%error, %command_id, "cannot read a verdict");
                return Err(ApiError::internal());
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_POLL_PAUSE);
    }
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
    }
}
