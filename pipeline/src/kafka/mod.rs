//! Kafka: the attribution log in production, and the compacted topic of referral codes.
//!
//! * [`producer`]: [`producer::KafkaLog`], the [`crate::log::EventLog`] on a real broker.
//! * [`codes`]: the `referral-codes` compacted topic (key = code, value = the code record,
//!   a tombstone when retired) and the follower that mirrors it into a
//!   [`crate::codes::CodeDirectory`] at the edge.
//! * [`admin`]: creating the topics (tests, `referral-aggregator migrate`).
//!
//! The consumer side of the log is [`crate::consumer::kafka`].

pub mod admin;
pub mod codes;
pub mod producer;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use rdkafka::ClientConfig;

/// Header carrying the event kind, so consumers can route without parsing the body.
pub const KIND_HEADER: &str = "kind";
/// Header carrying the message schema version.
pub const SCHEMA_VERSION_HEADER: &str = "schema_version";

/// How long start-up checks and metadata probes wait for a broker.
pub const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

/// Settings of every Kafka client of this project.
#[derive(Clone, Debug)]
pub struct KafkaSettings {
    pub brokers: String,
    /// The attribution log.
    pub topic: String,
    /// The compacted topic of referral codes.
    pub codes_topic: String,
    /// librdkafka's `message.timeout.ms`: how long it retries a message before failing it.
    pub message_timeout: Duration,
    /// librdkafka's `linger.ms`: how long it gathers a batch.
    pub linger: Duration,
    /// librdkafka's `queue.buffering.max.messages`: the bounded local queue.
    pub queue_max_messages: usize,
    /// `client.id`, for the broker's logs and quotas.
    pub client_id: String,
    /// Encryption and authentication towards the brokers.
    pub security: KafkaSecurity,
}

impl KafkaSettings {
    /// A client configuration with the brokers and the security settings, the start of
    /// every producer, consumer and admin client of this project.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        self.security.apply(&mut config);
        config
    }
}

/// librdkafka's `security.protocol`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SecurityProtocol {
    /// No encryption, no authentication (an in-cluster broker on a private network).
    #[default]
    Plaintext,
    /// TLS, the broker authenticated by its certificate.
    Ssl,
    /// SASL authentication without encryption.
    SaslPlaintext,
    /// SASL authentication over TLS (Confluent Cloud, MSK with SCRAM, Strimzi SCRAM).
    SaslSsl,
}

impl SecurityProtocol {
    fn name(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }

    pub fn uses_sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }

    pub fn uses_tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }
}

/// SASL mechanisms librdkafka implements itself (GSSAPI/Kerberos and OAUTHBEARER are not
/// offered: they need more than a user name and a password).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SaslMechanism {
    #[value(name = "PLAIN")]
    Plain,
    #[value(name = "SCRAM-SHA-256")]
    ScramSha256,
    #[value(name = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    fn name(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// A SASL user; the password never appears in `Debug` output (logs, panics).
#[derive(Clone, PartialEq, Eq)]
pub struct SaslCredentials {
    pub mechanism: SaslMechanism,
    pub username: String,
    pub password: String,
}

impl fmt::Debug for SaslCredentials {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("SaslCredentials")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// How every client of this project talks to the brokers. Validated at start-up
/// (`PipelineArgs::validate`): SASL protocols have credentials, the others none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KafkaSecurity {
    pub protocol: SecurityProtocol,
    pub sasl: Option<SaslCredentials>,
    /// PEM bundle of the CAs that signed the brokers' certificates; `None`: the system's.
    pub ssl_ca_location: Option<PathBuf>,
}

impl KafkaSecurity {
    pub fn apply(&self, config: &mut ClientConfig) {
        config.set("security.protocol", self.protocol.name());
        if let Some(sasl) = &self.sasl {
            config
                .set("sasl.mechanism", sasl.mechanism.name())
                .set("sasl.username", &sasl.username)
                .set("sasl.password", &sasl.password);
        }
        if let Some(ca) = &self.ssl_ca_location {
            config.set("ssl.ca.location", ca.display().to_string());
        }
    }
}
