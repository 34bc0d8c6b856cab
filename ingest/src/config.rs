//! `referral-ingest` flags. Every one has a `REFERRAL_*` environment variable.

use clap::Parser;
use referral_kit::click::EdgeSettings;
use referral_kit::config::{EdgeArgs, ServerArgs};
use referral_kit::server::ServerSettings;
use referral_pipeline::config::PipelineArgs;

#[derive(Parser, Clone, Debug)]
#[command(name = "referral-ingest", version, about = "The click edge")]
pub struct Config {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub edge: EdgeArgs,
    #[command(flatten)]
    pub pipeline: PipelineArgs,
}

/// The settings, validated.
pub struct Settings {
    pub server: ServerSettings,
    pub edge: EdgeSettings,
}

impl Config {
    /// Checks every setting clap cannot, so a bad deployment fails at start.
    pub fn validate(&self) -> anyhow::Result<Settings> {
        self.pipeline.validate()?;
        if self.pipeline.kafka_brokers.is_some() {
            anyhow::ensure!(
                self.edge.ack_timeout <= self.pipeline.kafka_message_timeout,
                "--ack-timeout must not exceed --kafka-message-timeout"
            );
        }
        Ok(Settings {
            server: self
                .server
                .settings()?
                .exempting(self.edge.trusted_proxies()?),
            edge: self.edge.settings()?,
        })
    }
}
