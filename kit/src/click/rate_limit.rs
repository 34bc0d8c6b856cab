//! Click rate limits (GCRA, via governor): per client IP, per referral code, and global.
//!
//! Per IP stops one client flooding (keyed by network: an IPv4 address, or the /64 of an
//! IPv6 address, since one IPv6 host normally holds a whole /64 and can pick a new source
//! address per request); per code stops a leaked code being hammered from many
//! addresses; the global limit protects the log behind this edge. Each is a quota per second
//! with a burst; 0 turns a limit off. Limits are per edge process: with N replicas the
//! fleet-wide limit is N times the flag (the Helm chart documents this).
//!
//! The keyed state (one entry per IP or code seen) is kept bounded by a housekeeping task
//! that forgets keys whose limit has fully replenished and shrinks the maps.

use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use crate::shutdown::Shutdown;

type KeyedLimiter<K> =
    RateLimiter<K, DashMapStateStore<K>, DefaultClock, StateInformationMiddleware>;
type GlobalLimiter = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

/// How often forgotten keys are dropped from the keyed limiters.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(10);

/// The IPv6 prefix length one client is limited by: a host is normally given a whole /64.
const IPV6_CLIENT_PREFIX: u32 = 64;

/// The per-IP limiter's key for `ip`: its network. IPv4 (also IPv4-mapped IPv6, made IPv4
/// first) is one address, /32; IPv6 is masked to its /64.
pub fn client_network(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let mask = u128::MAX << (128 - IPV6_CLIENT_PREFIX);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

/// A quota: `per_second` sustained, `burst` at once. `per_second == 0` means no limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateQuota {
    pub per_second: u32,
    pub burst: u32,
}

impl RateQuota {
    /// No limit.
    pub const OFF: Self = Self {
        per_second: 0,
        burst: 0,
    };

    fn quota(self) -> Option<Quota> {
        let rate = NonZeroU32::new(self.per_second)?;
        let burst = NonZeroU32::new(self.burst.max(1)).unwrap_or(rate);
        Some(Quota::per_second(rate).allow_burst(burst))
    }
}

/// Which limit refused a click (the `limiter` metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limiter {
    ClientIp,
    Code,
    Global,
}

impl Limiter {
    pub fn label(self) -> &'static str {
        match self {
            Self::ClientIp => "client_ip",
            Self::Code => "code",
            Self::Global => "global",
        }
    }
}

/// What the client may still send: `X-RateLimit-Limit` (the burst) and `-Remaining`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allowance {
    pub limit: u32,
    pub remaining: u32,
}

/// A refusal: who refused, and when to come back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limited {
    pub limiter: Limiter,
    pub limit: u32,
    pub retry_after: Duration,
}

/// The three limits of the click edge.
pub struct ClickLimits {
    per_ip: Option<KeyedLimiter<IpAddr>>,
    per_code: Option<KeyedLimiter<String>>,
    global: Option<GlobalLimiter>,
    clock: DefaultClock,
}

impl ClickLimits {
    pub fn new(per_ip: RateQuota, per_code: RateQuota, global: RateQuota) -> Self {
        let clock = DefaultClock::default();
        Self {
            per_ip: per_ip.quota().map(|quota| {
                RateLimiter::dashmap_with_clock(quota, clock.clone()).with_middleware()
            }),
            per_code: per_code.quota().map(|quota| {
                RateLimiter::dashmap_with_clock(quota, clock.clone()).with_middleware()
            }),
            global: global.quota().map(|quota| {
                RateLimiter::direct_with_clock(quota, clock.clone()).with_middleware()
            }),
            clock,
        }
    }

    /// No limits at all.
    pub fn unlimited() -> Self {
        Self::new(RateQuota::OFF, RateQuota::OFF, RateQuota::OFF)
    }

    /// Checks the client's address (its network, see [`client_network`]); `None` when that
    /// limit is off.
    pub fn check_client(&self, ip: IpAddr) -> Result<Option<Allowance>, Limited> {
        let Some(limiter) = &self.per_ip else {
            return Ok(None);
        };
        match limiter.check_key(&client_network(ip)) {
            Ok(snapshot) => Ok(Some(Allowance {
                limit: snapshot.quota().burst_size().get(),
                remaining: snapshot.remaining_burst_capacity(),
            })),
            Err(not_until) => Err(self.refused(Limiter::ClientIp, not_until)),
        }
    }

    /// Checks the code (normalized) and then the global limit.
    pub fn check_code_and_global(&self, code: &str) -> Result<(), Limited> {
        if let Some(limiter) = &self.per_code {
            // Keyed by an owned String: governor clones the key only when it is new.
            limiter
                .check_key(&code.to_owned())
                .map_err(|not_until| self.refused(Limiter::Code, not_until))?;
        }
        if let Some(limiter) = &self.global {
            limiter
                .check()
                .map_err(|not_until| self.refused(Limiter::Global, not_until))?;
        }
        Ok(())
    }

    fn refused(
        &self,
        limiter: Limiter,
        not_until: governor::NotUntil<<DefaultClock as Clock>::Instant>,
    ) -> Limited {
        metrics::counter!("referral_clicks_rate_limited_total", "limiter" => limiter.label())
            .increment(1);
        Limited {
            limiter,
            limit: not_until.quota().burst_size().get(),
            retry_after: not_until.wait_time_from(self.clock.now()),
        }
    }

    /// Keys currently tracked (client networks, codes).
    pub fn tracked_keys(&self) -> (usize, usize) {
        (
            self.per_ip.as_ref().map_or(0, |limiter| limiter.len()),
            self.per_code.as_ref().map_or(0, |limiter| limiter.len()),
        )
    }

    /// Forgets keys whose limit fully replenished, and returns memory to the allocator.
    pub fn forget_idle_keys(&self) {
        if let Some(limiter) = &self.per_ip {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        if let Some(limiter) = &self.per_code {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        let (ips, codes) = self.tracked_keys();
        metrics::gauge!("referral_rate_limit_keys", "limiter" => "client_ip").set(ips as f64);
        metrics::gauge!("referral_rate_limit_keys", "limiter" => "code").set(codes as f64);
    }

    /// Runs [`Self::forget_idle_keys`] periodically until shutdown.
    pub fn spawn_housekeeping(self: &Arc<Self>, mut shutdown: Shutdown) {
        let limits = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HOUSEKEEPING_INTERVAL);
            loop {
                tokio::select! {
                    _ = tick.tick() => limits.forget_idle_keys(),
                    () = shutdown.wait() => return,
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_flooding_ip_does_not_limit_another() {
        let limits = ClickLimits::new(
            RateQuota {
                per_second: 1,
                burst: 3,
            },
            RateQuota::OFF,
            RateQuota::OFF,
        );
        let flooder: IpAddr = "198.51.100.1".parse().unwrap();
        let other: IpAddr = "198.51.100.2".parse().unwrap();
        let remaining: Vec<u32> = (0..3)
            .map(|_| limits.check_client(flooder).unwrap().unwrap().remaining)
            .collect();
        assert_eq!(remaining, [2, 1, 0]);
        let refused = limits.check_client(flooder).unwrap_err();
        assert_eq!(refused.limiter, Limiter::ClientIp);
        assert_eq!(refused.limit, 3);
        assert!(
            refused.retry_after > Duration::ZERO && refused.retry_after <= Duration::from_secs(1)
        );
        assert!(limits.check_client(other).is_ok());
    }

    #[test]
    fn an_ipv6_client_is_limited_by_its_64() {
        let limits = ClickLimits::new(
            RateQuota {
                per_second: 1,
                burst: 2,
            },
            RateQuota::OFF,
            RateQuota::OFF,
        );
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        // Two addresses of 2001:db8:1:2::/64 share one bucket.
        assert_eq!(
            limits
                .check_client(ip("2001:db8:1:2::1"))
                .unwrap()
                .unwrap()
                .remaining,
            1
        );
        assert_eq!(
            limits
                .check_client(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"))
                .unwrap()
                .unwrap()
                .remaining,
            0
        );
        assert_eq!(
            limits
                .check_client(ip("2001:db8:1:2::3"))
                .unwrap_err()
                .limiter,
            Limiter::ClientIp
        );
        // The neighbouring /64 is another client.
        assert_eq!(
            limits
                .check_client(ip("2001:db8:1:3::1"))
                .unwrap()
                .unwrap()
                .remaining,
            1
        );
        assert_eq!(limits.tracked_keys().0, 2);
    }

    #[test]
    fn ipv4_clients_stay_single_addresses() {
        assert_eq!(
            client_network(IpAddr::from([198, 51, 100, 7])),
            IpAddr::from([198, 51, 100, 7])
        );
        let mapped: IpAddr = "::ffff:198.51.100.7".parse().unwrap();
        assert_eq!(
            client_network(mapped),
            IpAddr::from([198, 51, 100, 7]),
            "IPv4-mapped is IPv4, not the /64 every mapped address shares"
        );
        let limits = ClickLimits::new(
            RateQuota {
                per_second: 1,
                burst: 1,
            },
            RateQuota::OFF,
            RateQuota::OFF,
        );
        assert!(limits.check_client(mapped).is_ok());
        assert!(
            limits
                .check_client(IpAddr::from([198, 51, 100, 7]))
                .is_err(),
            "one bucket for both spellings"
        );
        assert!(limits.check_client(IpAddr::from([198, 51, 100, 8])).is_ok());
        assert!(
            limits
                .check_client("::ffff:198.51.100.9".parse().unwrap())
                .is_ok()
        );
    }

    #[test]
    fn code_and_global_limits_apply() {
        let limits = ClickLimits::new(
            RateQuota::OFF,
            RateQuota {
                per_second: 1,
                burst: 1,
            },
            RateQuota {
                per_second: 1,
                burst: 2,
            },
        );
        assert!(limits.check_code_and_global("JAN-1").is_ok());
        assert_eq!(
            limits.check_code_and_global("JAN-1").unwrap_err().limiter,
            Limiter::Code
        );
        assert!(limits.check_code_and_global("FEB-2").is_ok());
        assert_eq!(
            limits.check_code_and_global("MAR-3").unwrap_err().limiter,
            Limiter::Global
        );
    }

    #[test]
    fn idle_keys_are_forgotten() {
        let limits = ClickLimits::new(
            RateQuota {
                per_second: 1000,
                burst: 1,
            },
            RateQuota::OFF,
            RateQuota::OFF,
        );
        for last in 0..200u8 {
            let _ = limits.check_client(IpAddr::from([10, 0, 0, last]));
        }
        assert_eq!(limits.tracked_keys().0, 200);
        std::thread::sleep(Duration::from_millis(20));
        limits.forget_idle_keys();
        assert_eq!(
            limits.tracked_keys().0,
            0,
            "replenished keys must be dropped"
        );
    }

    #[test]
    fn zero_turns_a_limit_off() {
        let limits = ClickLimits::unlimited();
        for _ in 0..10_000 {
            assert_eq!(limits.check_client(IpAddr::from([10, 0, 0, 1])), Ok(None));
            assert!(limits.check_code_and_global("JAN-1").is_ok());
        }
    }
}
