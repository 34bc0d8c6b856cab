//! `referral-api` flags. Every one has a `REFERRAL_*` environment variable.

use clap::Parser;
use referral_kit::config::{EdgeArgs, ServerArgs};
use referral_pipeline::config::PipelineArgs;

use crate::auth::ApiTokens;

#[derive(Parser, Clone, Debug)]
#[command(
    name = "referral-api",
    version,
    about = "Referral attribution API (embedded pipeline by default; Kafka + ClickHouse in production)"
)]
pub struct Config {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub edge: EdgeArgs,
    #[command(flatten)]
    pub pipeline: PipelineArgs,

    /// Bearer tokens and their scopes: TOKEN=read[+write][+admin],... Unset: open API.
    #[arg(
        long,
        env = "REFERRAL_API_TOKENS",
        hide_env_values = true,
        default_value = ""
    )]
    pub api_tokens: String,

    /// How long a read of, or a command on, an attribution created moments ago waits for the
    /// store to hold it (embedded: for the consumer to catch up with the log; production: for
    /// the aggregator, judged by the id's creation time).
    #[arg(long, env = "REFERRAL_READ_AFTER_WRITE_WAIT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub read_after_write_wait: std::time::Duration,
}

impl Config {
    /// Checks every setting clap cannot, so a bad deployment fails at start, not at the
    /// first request.
    pub fn validate(&self) -> anyhow::Result<ApiTokens> {
        self.pipeline.validate()?;
        anyhow::ensure!(
            self.pipeline.kafka_brokers.is_some() == self.pipeline.clickhouse_url.is_some(),
            "production mode needs both --kafka-brokers and --clickhouse-url (the embedded \
             mode needs neither)"
        );
        if self.pipeline.kafka_brokers.is_some() {
            anyhow::ensure!(
                self.edge.ack_timeout <= self.pipeline.kafka_message_timeout,
                "--ack-timeout must not exceed --kafka-message-timeout"
            );
        }
        self.edge.validate()?;
        self.server.settings()?;
        ApiTokens::parse(&self.api_tokens).map_err(|error| anyhow::anyhow!("--api-tokens: {error}"))
    }
}
