//! Fault injection for the crash tests: `REFERRAL_FAULT_INJECTION=<point>:<n>` makes the
//! n-th flush fail at `<point>`. Tests only: start-up logs a warning when it is set.
//!
//! * `crash-before-checkpoint`: SIGKILL after the state inserts, before the totals insert;
//! * `crash-after-checkpoint`: SIGKILL after the totals insert, before the Kafka commit;
//! * `lose-totals-ack`: the totals insert succeeds but the flush reports a failure, as an
//!   insert that timed out on the client after the server applied it.
//!
//! A real server cannot be made to fail at exactly these points, hence the injection.

/// The environment variable that enables a fault.
pub const FAULT_ENV: &str = "REFERRAL_FAULT_INJECTION";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FaultPoint {
    #[default]
    None,
    CrashBeforeCheckpoint(u64),
    CrashAfterCheckpoint(u64),
    LoseTotalsAck(u64),
}

impl FaultPoint {
    pub fn from_env() -> Self {
        std::env::var(FAULT_ENV)
            .ok()
            .and_then(|value| Self::parse(&value))
            .unwrap_or_default()
    }

    pub fn parse(text: &str) -> Option<Self> {
        let (point, count) = text.split_once(':')?;
        let count = count.parse().ok()?;
        match point {
            "crash-before-checkpoint" => Some(Self::CrashBeforeCheckpoint(count)),
            "crash-after-checkpoint" => Some(Self::CrashAfterCheckpoint(count)),
            "lose-totals-ack" => Some(Self::LoseTotalsAck(count)),
            _ => None,
        }
    }

    pub fn crash_before_checkpoint(self, flush: u64) -> bool {
        self == Self::CrashBeforeCheckpoint(flush)
    }

    pub fn crash_after_checkpoint(self, flush: u64) -> bool {
        self == Self::CrashAfterCheckpoint(flush)
    }

    pub fn lose_totals_ack(self, flush: u64) -> bool {
        self == Self::LoseTotalsAck(flush)
    }
}

/// Dies as `kill -9` would: no destructors, no flush, no goodbye to the group.
pub fn kill_self(point: &str) -> ! {
    eprintln!("fault injection: SIGKILL {point}");
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &std::process::id().to_string()])
        .status();
    std::process::abort()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse() {
        assert_eq!(
            FaultPoint::parse("crash-after-checkpoint:3"),
            Some(FaultPoint::CrashAfterCheckpoint(3))
        );
        assert_eq!(FaultPoint::parse("crash-after-checkpoint"), None);
        assert_eq!(FaultPoint::parse("other:1"), None);
        assert!(FaultPoint::LoseTotalsAck(2).lose_totals_ack(2));
        assert!(!FaultPoint::None.crash_before_checkpoint(1));
    }
}
