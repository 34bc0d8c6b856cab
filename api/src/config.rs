//! `referral-api` flags. Every one has a `REFERRAL_*` environment variable.

use clap::Parser;
use referral_aggregator::config::PipelineArgs;
use referral_ingest::config::{EdgeArgs, ServerArgs};

use crate::auth::ApiTokens;

#[derive(Parser, Clone, Debug)]
#[command(
    name = "referral-api",
    version,
    about = "Referral attribution API (embedded pipeline by default)"
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
}

impl Config {
    /// Checks every setting clap cannot, so a bad deployment fails at start, not at the
    /// first request.
    pub fn validate(&self) -> anyhow::Result<ApiTokens> {
        self.pipeline.validate()?;
        self.pipeline.require_embedded("referral-api")?;
        self.edge.validate()?;
        self.server.settings()?;
        ApiTokens::parse(&self.api_tokens).map_err(|error| anyhow::anyhow!("--api-tokens: {error}"))
    }
}
