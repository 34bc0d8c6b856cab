//! Flags of the HTTP server and of the click edge.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use crate::click::client_ip::TrustedProxies;
use crate::click::edge::EdgeSettings;
use crate::click::rate_limit::{ClickLimits, RateQuota};
use crate::server::ServerSettings;

/// How long a connection may go without a request in progress: slow-header (slowloris)
/// clients and idle kept-alive connections are cut off after this.
pub const DEFAULT_HEADER_READ_TIMEOUT: &str = "10s";
/// Open connections at most; further clients wait in the kernel's accept backlog.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// One client's share of the connections: far above what browsers open (6 per host), even
/// behind a shared NAT; far below --max-connections, so one client cannot take them all.
pub const DEFAULT_MAX_CONNECTIONS_PER_CLIENT: usize = 256;
/// How long shutdown waits for in-flight requests.
pub const DEFAULT_DRAIN_TIMEOUT: &str = "30s";
/// Longest wait for the log's acknowledgement of a click or command before 503. Below the
/// usual 30 s proxy timeouts, so clients see our answer, not the proxy's.
pub const DEFAULT_ACK_TIMEOUT: &str = "10s";

/// The HTTP server.
#[derive(Args, Clone, Debug)]
pub struct ServerArgs {
    /// Address to listen on.
    #[arg(long, env = "REFERRAL_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Longest a connection may go without a request in progress: a client sending its
    /// headers slowly, or an idle kept-alive connection, is closed (at most a quarter later).
    #[arg(long, env = "REFERRAL_HEADER_READ_TIMEOUT", default_value = DEFAULT_HEADER_READ_TIMEOUT, value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,

    /// Open connections at most.
    #[arg(long, env = "REFERRAL_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,

    /// Open connections of one client (an IPv4 address, an IPv6 /64) at most; further ones
    /// are closed at once. --trusted-proxies are exempt (they carry many clients). 0: off.
    #[arg(long, env = "REFERRAL_MAX_CONNECTIONS_PER_CLIENT", default_value_t = DEFAULT_MAX_CONNECTIONS_PER_CLIENT)]
    pub max_connections_per_client: usize,

    /// Longest wait for in-flight requests at shutdown.
    #[arg(long, env = "REFERRAL_DRAIN_TIMEOUT", default_value = DEFAULT_DRAIN_TIMEOUT, value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,

    /// Threads that serve requests (default: the CPUs this process may use, its cgroup
    /// quota included). The Kafka client runs threads of its own besides: where the edge
    /// shares its cores with other work, fewer workers switch less (docs/BENCHMARKS.md).
    #[arg(long, env = "REFERRAL_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: Option<u16>,
}

/// Clicks handled at once at most: bounds memory and the log's queue under a burst; past
/// it the edge answers 503 at once rather than queueing without bound.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 8_192;
/// Per-client-IP quota. Generous because many people share an address (offices, mobile
/// carriers' NAT); a single pixel never needs more than a few per second.
pub const DEFAULT_RATE_PER_IP: u32 = 50;
pub const DEFAULT_BURST_PER_IP: u32 = 100;
/// Per-code quota: a viral code legitimately gets many clicks; this stops a leaked code
/// being replayed by a botnet from dominating the log.
pub const DEFAULT_RATE_PER_CODE: u32 = 1_000;
pub const DEFAULT_BURST_PER_CODE: u32 = 2_000;
/// Global quota per edge process, sized to what one process sustains; 0 turns it off.
pub const DEFAULT_RATE_GLOBAL: u32 = 50_000;
pub const DEFAULT_BURST_GLOBAL: u32 = 10_000;

/// The click edge.
#[derive(Args, Clone, Debug)]
pub struct EdgeArgs {
    /// Clicks handled at once at most (then 503).
    #[arg(long, env = "REFERRAL_MAX_IN_FLIGHT", default_value_t = DEFAULT_MAX_IN_FLIGHT)]
    pub max_in_flight: usize,

    /// Clicks per second per client IP (0: no limit).
    #[arg(long, env = "REFERRAL_RATE_LIMIT_PER_IP", default_value_t = DEFAULT_RATE_PER_IP)]
    pub rate_limit_per_ip: u32,

    /// Burst per client IP.
    #[arg(long, env = "REFERRAL_RATE_LIMIT_PER_IP_BURST", default_value_t = DEFAULT_BURST_PER_IP)]
    pub rate_limit_per_ip_burst: u32,

    /// Clicks per second per referral code (0: no limit).
    #[arg(long, env = "REFERRAL_RATE_LIMIT_PER_CODE", default_value_t = DEFAULT_RATE_PER_CODE)]
    pub rate_limit_per_code: u32,

    /// Burst per referral code.
    #[arg(long, env = "REFERRAL_RATE_LIMIT_PER_CODE_BURST", default_value_t = DEFAULT_BURST_PER_CODE)]
    pub rate_limit_per_code_burst: u32,

    /// Clicks per second for this process (0: no limit).
    #[arg(long, env = "REFERRAL_RATE_LIMIT_GLOBAL", default_value_t = DEFAULT_RATE_GLOBAL)]
    pub rate_limit_global: u32,

    /// Global burst.
    #[arg(long, env = "REFERRAL_RATE_LIMIT_GLOBAL_BURST", default_value_t = DEFAULT_BURST_GLOBAL)]
    pub rate_limit_global_burst: u32,

    /// Proxies (IPs or CIDRs, comma-separated) whose X-Forwarded-For is trusted: every hop
    /// in front of the service (load balancer and ingress). The client is the nearest
    /// X-Forwarded-For entry that is not one of them.
    #[arg(long, env = "REFERRAL_TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: String,

    /// Where the redirect link (`GET /r/{code}`) sends a visitor whose code is unknown,
    /// retired or has no destination (an absolute http(s) URL). Unset: a 404 page.
    #[arg(long, env = "REFERRAL_FALLBACK_URL")]
    pub fallback_url: Option<String>,

    /// Longest wait for the log's acknowledgement before answering 503.
    #[arg(long, env = "REFERRAL_ACK_TIMEOUT", default_value = DEFAULT_ACK_TIMEOUT, value_parser = humantime::parse_duration)]
    pub ack_timeout: Duration,
}

impl ServerArgs {
    /// The runtime that serves this process's requests.
    pub fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        if let Some(threads) = self.worker_threads {
            builder.worker_threads(usize::from(threads));
        }
        builder.enable_all().build()
    }

    pub fn settings(&self) -> anyhow::Result<ServerSettings> {
        anyhow::ensure!(
            self.max_connections >= 1,
            "--max-connections must be at least 1"
        );
        anyhow::ensure!(
            !self.header_read_timeout.is_zero(),
            "--header-read-timeout must be above zero"
        );
        Ok(ServerSettings {
            header_read_timeout: self.header_read_timeout,
            max_connections: self.max_connections,
            max_connections_per_client: self.max_connections_per_client,
            exempt: TrustedProxies::default(),
            drain_timeout: self.drain_timeout,
        })
    }
}

impl EdgeArgs {
    pub fn trusted_proxies(&self) -> anyhow::Result<TrustedProxies> {
        TrustedProxies::parse(&self.trusted_proxies)
            .map_err(|error| anyhow::anyhow!("--trusted-proxies: {error}"))
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.ack_timeout.is_zero(),
            "--ack-timeout must be above zero"
        );
        anyhow::ensure!(
            self.max_in_flight >= 1,
            "--max-in-flight must be at least 1"
        );
        if let Some(url) = &self.fallback_url {
            referral_schemas::validation::validate_http_url("--fallback-url", url)
                .map_err(|error| anyhow::anyhow!("--fallback-url {}", error.message))?;
        }
        self.trusted_proxies().map(|_| ())
    }

    /// The edge's settings, validated.
    pub fn settings(&self) -> anyhow::Result<EdgeSettings> {
        self.validate()?;
        Ok(EdgeSettings {
            proxies: self.trusted_proxies()?,
            ack_timeout: self.ack_timeout,
            max_in_flight: self.max_in_flight,
            fallback_url: self.fallback_url.as_deref().map(Arc::from),
        })
    }

    /// The three rate limits.
    pub fn limits(&self) -> ClickLimits {
        let quota = |per_second, burst| RateQuota { per_second, burst };
        ClickLimits::new(
            quota(self.rate_limit_per_ip, self.rate_limit_per_ip_burst),
            quota(self.rate_limit_per_code, self.rate_limit_per_code_burst),
            quota(self.rate_limit_global, self.rate_limit_global_burst),
        )
    }
}
