//! Flags of the HTTP server and of the click edge.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

use crate::client_ip::TrustedProxies;
use crate::server::ServerSettings;

/// How long a client may take to send its request headers: slow-header (slowloris) clients
/// are cut off after this.
pub const DEFAULT_HEADER_READ_TIMEOUT: &str = "10s";
/// Open connections at most; further clients wait in the kernel's accept backlog.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
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

    /// Longest time to receive a request's headers.
    #[arg(long, env = "REFERRAL_HEADER_READ_TIMEOUT", default_value = DEFAULT_HEADER_READ_TIMEOUT, value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,

    /// Open connections at most.
    #[arg(long, env = "REFERRAL_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,

    /// Longest wait for in-flight requests at shutdown.
    #[arg(long, env = "REFERRAL_DRAIN_TIMEOUT", default_value = DEFAULT_DRAIN_TIMEOUT, value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
}

/// The click edge.
#[derive(Args, Clone, Debug)]
pub struct EdgeArgs {
    /// Proxies (IPs or CIDRs, comma-separated) whose X-Forwarded-For is trusted.
    #[arg(long, env = "REFERRAL_TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: String,

    /// Longest wait for the log's acknowledgement before answering 503.
    #[arg(long, env = "REFERRAL_ACK_TIMEOUT", default_value = DEFAULT_ACK_TIMEOUT, value_parser = humantime::parse_duration)]
    pub ack_timeout: Duration,
}

impl ServerArgs {
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
        self.trusted_proxies().map(|_| ())
    }
}
