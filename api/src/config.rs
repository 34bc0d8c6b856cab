//! `referral-api` flags. Every one has a `REFERRAL_*` environment variable.

use clap::Parser;
use referral_kit::config::{EdgeArgs, ServerArgs};
use referral_pipeline::config::{PipelineArgs, WebhookArgs};

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
    #[command(flatten)]
    pub webhooks: WebhookArgs,

    /// Bearer tokens and their scopes: TOKEN=read[+write][+admin],... or
    /// sha256:<hex of the token's SHA-256>=scopes. Required with Kafka + ClickHouse, and on
    /// any address but loopback, unless --allow-anonymous; unset in the embedded mode on
    /// 127.0.0.1: an open API for local use.
    #[arg(
        long,
        env = "REFERRAL_API_TOKENS",
        hide_env_values = true,
        default_value = ""
    )]
    pub api_tokens: String,

    /// With no --api-tokens, start anyway with every endpoint open to anyone who can reach
    /// it (otherwise the API refuses to start in production or on a non-loopback address).
    #[arg(long, env = "REFERRAL_ALLOW_ANONYMOUS")]
    pub allow_anonymous: bool,

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
        let tokens = ApiTokens::parse(&self.api_tokens)
            .map_err(|error| anyhow::anyhow!("--api-tokens: {error}"))?;
        let exposed = self.is_production() || !self.server.listen.ip().is_loopback();
        anyhow::ensure!(
            !(tokens.is_open() && exposed && !self.allow_anonymous),
            "no API tokens: with Kafka + ClickHouse configured, or listening on {} (not \
             loopback), referral-api does not start with every endpoint open. Set --api-tokens (REFERRAL_API_TOKENS) to \
             TOKEN=read[+write][+admin],... (tokens of 16+ visible characters), or \
             sha256:<hex of the token's SHA-256>=scopes so the setting holds no usable token \
             (printf %s \"$TOKEN\" | sha256sum); or pass --allow-anonymous \
             (REFERRAL_ALLOW_ANONYMOUS=true) to run open on purpose",
            self.server.listen
        );
        Ok(tokens)
    }

    /// Kafka + ClickHouse rather than the embedded log and store.
    pub fn is_production(&self) -> bool {
        self.pipeline.kafka_brokers.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRODUCTION: [&str; 5] = [
        "referral-api",
        "--kafka-brokers",
        "127.0.0.1:9092",
        "--clickhouse-url",
        "http://127.0.0.1:8123",
    ];

    fn validate(extra: &[&str]) -> anyhow::Result<ApiTokens> {
        let args = PRODUCTION.iter().chain(extra).copied();
        Config::try_parse_from(args)?.validate()
    }

    #[test]
    fn production_without_tokens_refuses_to_start_and_says_how_to_set_them() {
        let error = validate(&[])
            .expect_err("an open production API")
            .to_string();
        assert!(error.contains("--api-tokens"), "{error}");
        assert!(error.contains("REFERRAL_API_TOKENS"), "{error}");
        assert!(error.contains("--allow-anonymous"), "{error}");
    }

    #[test]
    fn production_starts_with_tokens_or_when_anonymous_is_asked_for() {
        let tokens = validate(&["--api-tokens", "reader-0123456789abcdef=read"]);
        assert!(!tokens.expect("tokens given").is_open());
        assert!(
            validate(&["--allow-anonymous"])
                .expect("asked for")
                .is_open()
        );
    }

    #[test]
    fn the_embedded_mode_stays_open_for_local_use() {
        let config = Config::try_parse_from(["referral-api"]).expect("no flags");
        assert!(config.validate().expect("embedded default").is_open());
        let ipv6 = Config::try_parse_from(["referral-api", "--listen", "[::1]:8080"]);
        assert!(ipv6.expect("loopback").validate().expect("local").is_open());
    }

    #[test]
    fn an_embedded_api_on_a_public_address_needs_tokens_or_allow_anonymous() {
        let public = ["referral-api", "--listen", "0.0.0.0:8080"];
        let error = Config::try_parse_from(public)
            .expect("flags")
            .validate()
            .expect_err("an open API on every interface");
        assert!(error.to_string().contains("0.0.0.0:8080"), "{error}");
        let open = public.iter().chain(&["--allow-anonymous"]).copied();
        assert!(
            Config::try_parse_from(open)
                .expect("flags")
                .validate()
                .is_ok()
        );
    }
}
