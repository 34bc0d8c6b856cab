//! How hard the embedded consumer works, decided from the lag, the machine and its readers.
//!
//! In the embedded mode the consumer shares the process, and the machine, with the edge. A
//! click is acknowledged once it is durable in the log, so during a burst the edge comes
//! first, and the store catches up when the burst is over:
//!
//! * while the rest of the machine keeps the CPUs busy (from [`CONTENDED`] until it falls
//!   under [`UNCONTENDED`]) and the lag is below the high-water mark, the consumer
//!   **defers**: it does not apply at all. Measured on this
//!   project's 2-core machines (docs/BENCHMARKS.md), a consumer that applied even at the
//!   lowest CPU priority (`SCHED_IDLE`) slowed the edge well beyond the CPU time it took:
//!   its SQLite work competes for caches and memory, not only for cores;
//! * otherwise it applies in the **background** (`SCHED_IDLE`: only on a CPU that would
//!   otherwise be idle);
//! * once the lag passes the high-water mark (half of `--max-apply-lag`), or while a client
//!   waits for the store (a read of a click acknowledged moments ago, a command's verdict),
//!   it applies at **normal** priority, in the first case until the lag is back under the
//!   low-water mark (a quarter): the bound is not reached by a consumer that can keep up,
//!   and nobody waits on a deferred store;
//! * and once the store has not moved for `--max-apply-delay` while events wait, it applies
//!   one batch at normal priority: "busy" counts the whole machine, so a busy neighbour (a
//!   build, another service) would otherwise keep dashboards stale for as long as it runs,
//!   and `SCHED_IDLE` alone gets next to no CPU beside it.
//!
//! [`decide`] is the rule, without I/O; [`Pacer`] feeds it the lag, the CPU use of the rest
//! of the machine (from `/proc/stat`, minus the consumer's own) and whether anyone waits,
//! and sets the consumer thread's scheduling policy.

use std::time::{Duration, Instant};

/// The rest of the machine uses at least this share of all CPUs: applying now would take
/// from the edge, so a consumer that applies starts deferring.
pub const CONTENDED: f64 = 0.7;
/// A deferring consumer goes back to work once the rest of the machine uses less than this
/// share: the gap keeps it from flapping with the edge's load.
pub const UNCONTENDED: f64 = 0.5;
/// How often the CPU use is sampled (`/proc/stat` counts in 10 ms ticks: on 2 CPUs a
/// window of 200 ms holds 40 of them).
const SAMPLE_EVERY: Duration = Duration::from_millis(200);

/// What the consumer does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pace {
    /// Apply nothing for now.
    Defer,
    /// Apply, at this priority.
    Apply(Priority),
}

/// The consumer thread's CPU priority.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    /// Runs only when a CPU would otherwise be idle (`SCHED_IDLE`).
    Background,
    /// Competes with the request workers on equal terms.
    Normal,
}

/// The lags at which the consumer starts and stops working at normal priority.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Marks {
    pub high: u64,
    pub low: u64,
}

impl Marks {
    /// For a log whose lag is bounded at `max_apply_lag`.
    pub fn for_bound(max_apply_lag: u64) -> Self {
        let high = (max_apply_lag / 2).max(1);
        Self {
            high,
            low: high / 2,
        }
    }
}

/// Whether the lag calls for normal priority: past the high-water mark, and until back
/// under the low-water mark once there (`behind` says where it was).
fn is_behind(lag: u64, marks: Marks, behind: bool) -> bool {
    if behind {
        lag > marks.low
    } else {
        lag >= marks.high
    }
}

/// Where the consumer stood at its last decision: the hysteresis of both rules.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct State {
    /// Working at normal priority for its lag.
    pub behind: bool,
    /// Deferring for a busy machine.
    pub deferring: bool,
}

/// What calls for the consumer besides its lag.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Calls {
    /// A client waits for the store.
    pub waiting: bool,
    /// The store has not moved for the longest delay allowed while events wait.
    pub stale: bool,
}

/// The rule. `others_busy` is the share of all CPUs the rest of the machine used lately.
pub fn decide(lag: u64, marks: Marks, state: State, others_busy: f64, calls: Calls) -> Pace {
    let contended = if state.deferring {
        others_busy >= UNCONTENDED
    } else {
        others_busy >= CONTENDED
    };
    if is_behind(lag, marks, state.behind) || calls.waiting || calls.stale {
        Pace::Apply(Priority::Normal)
    } else if contended {
        Pace::Defer
    } else {
        Pace::Apply(Priority::Background)
    }
}

/// Feeds [`decide`] and applies its priority to the calling (consumer) thread.
pub struct Pacer {
    marks: Marks,
    /// Longest the store may stand still while events wait.
    max_delay: Duration,
    /// The store's checkpoint at the last look, and since when it stands there with events
    /// waiting behind it.
    progress: Option<(u64, Instant)>,
    state: State,
    priority: Option<Priority>,
    cpu: CpuSampler,
    /// Whether a thread may go back from `SCHED_IDLE` to normal: an unprivileged process
    /// (no `CAP_SYS_NICE`, `RLIMIT_NICE` 0, as in most containers) may not, and a consumer
    /// stuck in the background would starve; it then works at normal priority (and still
    /// defers under contention).
    background_allowed: bool,
}

impl Pacer {
    pub fn new(max_apply_lag: u64, max_delay: Duration) -> Self {
        let background_allowed = can_leave_background();
        if !background_allowed {
            tracing::info!(
                "the consumer cannot return from SCHED_IDLE here (no CAP_SYS_NICE): it applies at normal priority"
            );
        }
        Self {
            marks: Marks::for_bound(max_apply_lag),
            max_delay,
            progress: None,
            state: State::default(),
            priority: None,
            cpu: CpuSampler::default(),
            background_allowed,
        }
    }

    /// The pace at `lag` with the store at `applied`, with `waiting` clients; sets the
    /// thread's priority to match.
    pub fn pace(&mut self, lag: u64, applied: u64, waiting: bool) -> Pace {
        let now = Instant::now();
        let since = match self.progress {
            Some((at, since)) if at == applied && lag > 0 => since,
            _ => now,
        };
        self.progress = Some((applied, since));
        let stale = now.duration_since(since) >= self.max_delay;
        let others_busy = self.cpu.others_busy();
        let pace = decide(
            lag,
            self.marks,
            self.state,
            others_busy,
            Calls { waiting, stale },
        );
        self.state = State {
            behind: is_behind(lag, self.marks, self.state.behind),
            deferring: pace == Pace::Defer,
        };
        if let Pace::Apply(mut priority) = pace {
            if !self.background_allowed {
                priority = Priority::Normal;
            }
            if self.priority != Some(priority) && set_current_thread(priority) {
                self.priority = Some(priority);
            }
        }
        metrics::gauge!("referral_consumer_deferred").set(f64::from(u8::from(pace == Pace::Defer)));
        pace
    }
}

/// The share of all CPUs used by everything but the calling thread, over the last sample
/// window.
#[derive(Default)]
struct CpuSampler {
    last: Option<(Instant, CpuTicks, u64)>,
    others_busy: f64,
}

/// Busy and total ticks of all CPUs, from the first line of `/proc/stat`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTicks {
    pub busy: u64,
    pub total: u64,
}

/// Parses the aggregate `cpu` line of `/proc/stat` (user nice system idle iowait irq
/// softirq steal ...): idle and iowait are not busy.
pub fn parse_proc_stat(text: &str) -> Option<CpuTicks> {
    let line = text.lines().next()?;
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let values: Vec<u64> = fields
        .take(8)
        .map(|field| field.parse().ok())
        .collect::<Option<_>>()?;
    if values.len() < 5 {
        return None;
    }
    let total: u64 = values.iter().sum();
    let idle = values[3] + values[4];
    Some(CpuTicks {
        busy: total - idle,
        total,
    })
}

impl CpuSampler {
    fn others_busy(&mut self) -> f64 {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|(at, _, _)| now.duration_since(at) < SAMPLE_EVERY)
        {
            return self.others_busy;
        }
        let Some(ticks) = std::fs::read_to_string("/proc/stat")
            .ok()
            .as_deref()
            .and_then(parse_proc_stat)
        else {
            // No procfs: never defer on a signal that cannot be read.
            return 0.0;
        };
        let own = own_cpu_ticks();
        if let Some((_, before, own_before)) = self.last {
            let total = ticks.total.saturating_sub(before.total);
            let busy = ticks
                .busy
                .saturating_sub(before.busy)
                .saturating_sub(own.saturating_sub(own_before));
            if total > 0 {
                self.others_busy = busy as f64 / total as f64;
            }
        }
        self.last = Some((now, ticks, own));
        self.others_busy
    }
}

/// The calling thread's CPU time, in `/proc/stat` ticks.
fn own_cpu_ticks() -> u64 {
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a plain syscall writing into a valid timespec.
    let result = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut time) };
    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .unwrap_or(100)
        .max(1);
    if result != 0 {
        return 0;
    }
    let nanos = u64::try_from(time.tv_sec).unwrap_or(0) * 1_000_000_000
        + u64::try_from(time.tv_nsec).unwrap_or(0);
    nanos / (1_000_000_000 / ticks_per_second).max(1)
}

/// Whether a thread of this process may go to `SCHED_IDLE` and back: tried on a thread of
/// its own, which then ends.
fn can_leave_background() -> bool {
    std::thread::Builder::new()
        .name("referral-pace-probe".into())
        .spawn(|| set_policy(libc::SCHED_IDLE) && set_policy(libc::SCHED_OTHER))
        .ok()
        .and_then(|probe| probe.join().ok())
        .unwrap_or(false)
}

fn set_policy(policy: libc::c_int) -> bool {
    let parameters = libc::sched_param { sched_priority: 0 };
    // SAFETY: a plain syscall on the calling thread (pid 0) with a valid parameter struct.
    unsafe { libc::sched_setscheduler(0, policy, &parameters) == 0 }
}

/// Applies `priority` to the calling thread (on Linux a thread has its own scheduling
/// policy); true when it did. A failure only costs the preference, so it is logged.
fn set_current_thread(priority: Priority) -> bool {
    let policy = match priority {
        Priority::Background => libc::SCHED_IDLE,
        Priority::Normal => libc::SCHED_OTHER,
    };
    let set = set_policy(policy);
    if !set {
        tracing::warn!(error = %std::io::Error::last_os_error(), ?priority, "cannot set the consumer's CPU priority");
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    const MARKS: Marks = Marks {
        high: 500,
        low: 250,
    };

    const IDLE: State = State {
        behind: false,
        deferring: false,
    };
    const NONE: Calls = Calls {
        waiting: false,
        stale: false,
    };
    const WAITING: Calls = Calls {
        waiting: true,
        stale: false,
    };

    #[test]
    fn a_store_left_standing_too_long_applies_at_once_however_busy_the_machine() {
        let deferring = State {
            deferring: true,
            ..IDLE
        };
        let stale = Calls {
            waiting: false,
            stale: true,
        };
        assert_eq!(
            decide(10, MARKS, deferring, 0.99, stale),
            Pace::Apply(Priority::Normal)
        );
    }

    #[test]
    fn the_pacer_calls_a_store_stale_only_while_it_stands_still_with_events_waiting() {
        let mut pacer = Pacer::new(1_000_000, Duration::from_millis(100));
        // Nothing waits: never stale, however long.
        pacer.pace(0, 5, false);
        std::thread::sleep(Duration::from_millis(150));
        assert_ne!(pacer.pace(0, 5, false), Pace::Apply(Priority::Normal));
        // Events wait and the store moves: not stale.
        pacer.pace(10, 5, false);
        std::thread::sleep(Duration::from_millis(150));
        assert_ne!(pacer.pace(10, 8, false), Pace::Apply(Priority::Normal));
        // Events wait and the store stands still past the delay: stale, so applied now.
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(pacer.pace(10, 8, false), Pace::Apply(Priority::Normal));
    }

    #[test]
    fn it_defers_only_while_the_machine_is_busy_the_lag_short_and_nobody_waits() {
        assert_eq!(
            decide(10, MARKS, IDLE, 0.95, NONE),
            Pace::Defer,
            "a burst: the edge first"
        );
        assert_eq!(
            decide(10, MARKS, IDLE, 0.30, NONE),
            Pace::Apply(Priority::Background),
            "a quiet machine: apply on idle CPUs"
        );
        assert_eq!(
            decide(10, MARKS, IDLE, 0.95, WAITING),
            Pace::Apply(Priority::Normal),
            "a client waits: apply now"
        );
        assert_eq!(
            decide(500, MARKS, IDLE, 0.95, NONE),
            Pace::Apply(Priority::Normal),
            "past the high-water mark: apply before the bound turns clicks away"
        );
    }

    #[test]
    fn a_deferring_consumer_waits_for_the_machine_to_calm_down() {
        let deferring = State {
            deferring: true,
            ..IDLE
        };
        assert_eq!(
            decide(10, MARKS, IDLE, 0.6, NONE),
            Pace::Apply(Priority::Background)
        );
        assert_eq!(
            decide(10, MARKS, deferring, 0.6, NONE),
            Pace::Defer,
            "no flapping"
        );
        assert_eq!(
            decide(10, MARKS, deferring, 0.4, NONE),
            Pace::Apply(Priority::Background)
        );
    }

    #[test]
    fn past_the_high_water_mark_it_works_until_the_low_water_mark() {
        let behind = State {
            behind: true,
            ..IDLE
        };
        assert_eq!(
            decide(300, MARKS, behind, 0.95, NONE),
            Pace::Apply(Priority::Normal)
        );
        assert_eq!(decide(250, MARKS, behind, 0.95, NONE), Pace::Defer);
        assert_eq!(decide(499, MARKS, IDLE, 0.95, NONE), Pace::Defer);
        assert_eq!(
            Marks::for_bound(1_000_000),
            Marks {
                high: 500_000,
                low: 250_000
            }
        );
    }

    #[test]
    fn proc_stat_is_read_as_busy_and_total_ticks() {
        let text = "cpu  100 5 50 800 20 3 2 0 0 0\ncpu0 50 2 25 400 10 1 1 0 0 0\n";
        assert_eq!(
            parse_proc_stat(text),
            Some(CpuTicks {
                busy: 160,
                total: 980
            })
        );
        assert_eq!(parse_proc_stat("intr 1 2 3"), None);
        assert_eq!(parse_proc_stat(""), None);
    }

    #[test]
    fn the_pacer_works_whenever_the_lag_or_a_client_calls_for_it() {
        let mut pacer = Pacer::new(1_000, Duration::from_secs(60));
        // Whatever this machine does, a lag past the high-water mark is applied, and so is
        // a lag someone waits for.
        assert_eq!(pacer.pace(600, 0, false), Pace::Apply(Priority::Normal));
        assert_eq!(pacer.pace(0, 600, true), Pace::Apply(Priority::Normal));
        let ticks = std::fs::read_to_string("/proc/stat")
            .ok()
            .as_deref()
            .and_then(parse_proc_stat);
        assert!(ticks.is_some_and(|ticks| ticks.total > ticks.busy));
    }
}
