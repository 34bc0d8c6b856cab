//! Creates the topics and publishes referral codes to the compacted codes topic, as the
//! single writer does after applying code commands. For benchmarks and local trials.
//!
//! `cargo run -p referral-ingest --example seed_codes -- BROKERS EVENTS_TOPIC CODES_TOPIC PARTITIONS CODE=MENTOR...`

use std::time::Duration;

use rdkafka::producer::FutureProducer;
use referral_pipeline::kafka::{KafkaSettings, admin, codes, producer};
use referral_schemas::{ReferralCode, Timestamp};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: seed_codes BROKERS EVENTS_TOPIC CODES_TOPIC PARTITIONS CODE=MENTOR...";
    let brokers = args.next().ok_or_else(|| anyhow::anyhow!(usage))?;
    let topic = args.next().ok_or_else(|| anyhow::anyhow!(usage))?;
    let codes_topic = args.next().ok_or_else(|| anyhow::anyhow!(usage))?;
    let partitions: i32 = args.next().ok_or_else(|| anyhow::anyhow!(usage))?.parse()?;
    let settings = KafkaSettings {
        brokers,
        topic,
        codes_topic,
        message_timeout: Duration::from_secs(10),
        linger: Duration::from_millis(5),
        queue_max_messages: 10_000,
        client_id: "referral-seed-codes".into(),
        security: Default::default(),
    };
    admin::ensure_topics(&settings, partitions, 1).await?;
    let producer: FutureProducer = producer::producer_config(&settings).create()?;
    for assignment in args {
        let (code, mentor) = assignment
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!(usage))?;
        let now = Timestamp::now();
        let record = ReferralCode {
            code: code.to_ascii_uppercase(),
            mentor_id: mentor.into(),
            destination_url: None,
            created_at: now,
            updated_at: now,
        };
        codes::publish_assignment(&producer, &settings.codes_topic, &record).await?;
        println!("{} -> {}", record.code, record.mentor_id);
    }
    Ok(())
}
