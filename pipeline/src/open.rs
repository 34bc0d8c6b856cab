//! Opening the pipeline: the one place where configuration picks the backends.
//!
//! | configuration | log | store | consumer |
//! |---|---|---|---|
//! | neither Kafka nor ClickHouse | the embedded file log | SQLite | in this process |
//! | Kafka (edge), Kafka + ClickHouse (API) | Kafka | ClickHouse (reads) | `referral-aggregator run` |
//! | Kafka + ClickHouse (aggregator) | Kafka (consumed) | ClickHouse (written) | this process |
//!
//! [`Pipeline::open`] serves the processes that take requests (the edge, the API);
//! [`Aggregator::start`] the consumer group member. Both decide through [`Backends::choose`].

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rdkafka::producer::{FutureProducer, Producer};
use referral_schemas::Attribution;
use referral_schemas::id::attribution_created_at;
use tokio::sync::watch;

use crate::codes::{CodeDirectory, CodeResolver};
use crate::config::{ConsumerArgs, PipelineArgs, WebhookArgs};
use crate::consumer::announce::KafkaAnnouncer;
use crate::consumer::fault::FaultPoint;
use crate::consumer::kafka::KafkaSource;
use crate::consumer::worker::{Worker, WorkerSettings};
use crate::consumer::{Consumer, ConsumerStatus};
use crate::embedded::Embedded;
use crate::kafka::producer::{self, KafkaLog};
use crate::kafka::{KafkaSettings, codes as kafka_codes};
use crate::log::EventLog;
use crate::store::clickhouse::reader::ClickHouseReader;
use crate::store::clickhouse::sink::ClickHouseSink;
use crate::store::clickhouse::{ClickHouseSettings, migrate};
use crate::store::{AttributionReader, StoreError};
use crate::verdicts::{LandingWaiter, Landings, VerdictWaiter, Verdicts};
use crate::webhooks::WebhookStore;
use crate::webhooks::clickhouse::ClickHouseWebhooks;
use crate::webhooks::deliver;
use crate::webhooks::group::Serving;
use crate::webhooks::sqlite::SqliteWebhooks;

/// How often the production API looks up the verdicts it waits for (one query for all): a
/// small share of the aggregator's flush time, which dominates a command's latency.
const VERDICT_POLL: Duration = Duration::from_millis(25);
/// How often the production API asks whether the fresh clicks it waits for are stored (one
/// query for all, without merging row versions).
const LANDING_POLL: Duration = Duration::from_millis(25);
/// How long one ClickHouse read may take in the API.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Which backends the configuration picks.
pub enum Backends {
    /// No Kafka, no ClickHouse: everything in this process, under `--data-dir`.
    Embedded,
    Kafka {
        kafka: Box<KafkaSettings>,
        clickhouse: Option<ClickHouseSettings>,
    },
}

impl Backends {
    /// The one decision. `client_id` names this process to the brokers.
    pub fn choose(args: &PipelineArgs, client_id: &str) -> anyhow::Result<Self> {
        match args.kafka_settings(client_id) {
            Some(kafka) => Ok(Self::Kafka {
                kafka: Box::new(kafka),
                clickhouse: args.clickhouse_settings(READ_TIMEOUT),
            }),
            None => {
                anyhow::ensure!(
                    args.clickhouse_url.is_none(),
                    "--clickhouse-url needs --kafka-brokers: ClickHouse is written by \
                     referral-aggregator from Kafka (unset both for the embedded mode)"
                );
                Ok(Self::Embedded)
            }
        }
    }
}

/// What a request-serving process needs of the pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The click edge: publishes clicks, resolves codes.
    Edge,
    /// The API: also reads, and waits for the verdicts of the commands it publishes.
    Api,
}

/// How a read of something just written waits for the store.
#[derive(Clone)]
enum Freshness {
    /// Embedded: until the consumer applied everything the log held when the read began.
    Applied(Arc<crate::log::file::FileLog>),
    /// Production: the id's creation time says whether to look again (the aggregator
    /// stores a click within a batch wait); the looks are batched across requests.
    Polled(Arc<LandingWaiter>),
}

/// Says, while it lives, that a client waits for the embedded store (so its consumer does
/// not defer); nothing in production, where the aggregator runs elsewhere.
pub struct StoreAwaited {
    _embedded: Option<crate::log::file::Awaiting>,
}

/// Reads for the API, with the waits a client that just wrote expects.
#[derive(Clone)]
pub struct Reads {
    pub reader: Arc<dyn AttributionReader>,
    pub verdicts: Arc<VerdictWaiter>,
    freshness: Freshness,
}

impl Reads {
    /// For the time a command waits for its verdict: the consumer must not defer it.
    pub fn awaiting_store(&self) -> StoreAwaited {
        StoreAwaited {
            _embedded: match &self.freshness {
                Freshness::Applied(log) => Some(log.awaiting()),
                Freshness::Polled(_) => None,
            },
        }
    }

    /// Before a command on attribution `id` is published: lets a click acknowledged moments
    /// ago be stored first where the log does not order the two. Production: clicks and
    /// commands travel on different partitions, so this waits as a read does. Embedded:
    /// one log holds both, the click before the command, so nothing waits.
    pub async fn let_click_land(&self, id: &str, wait: Duration) -> Result<(), StoreError> {
        match &self.freshness {
            Freshness::Applied(_) => Ok(()),
            Freshness::Polled(landings) => {
                // Usually stored long ago (conversions follow clicks): one cheap look.
                if !wait.is_zero() && !self.is_stored(id).await? {
                    self.landed(landings, id, wait).await?;
                }
                Ok(())
            }
        }
    }

    /// A live attribution, waiting at most `wait` when it may not be stored yet: embedded,
    /// until the store caught up with the log; production, while the id (which carries its
    /// creation time) is younger than `wait`.
    pub async fn fresh_attribution(
        &self,
        id: &str,
        wait: Duration,
    ) -> Result<Option<Attribution>, StoreError> {
        let found = self.reader.attribution(id).await?;
        if found.is_some() || wait.is_zero() {
            return Ok(found);
        }
        match &self.freshness {
            Freshness::Applied(log) => {
                if log.caught_up(wait).await {
                    self.reader.attribution(id).await
                } else {
                    Ok(None)
                }
            }
            Freshness::Polled(landings) => {
                if self.landed(landings, id, wait).await? {
                    self.reader.attribution(id).await
                } else {
                    Ok(None)
                }
            }
        }
    }

    /// Production: waits while `id` is younger than `wait` for it to be stored, asking
    /// together with every other waiting request; whether it was.
    async fn landed(
        &self,
        landings: &LandingWaiter,
        id: &str,
        wait: Duration,
    ) -> Result<bool, StoreError> {
        let wait_ms = i64::try_from(wait.as_millis()).unwrap_or(i64::MAX);
        let now = referral_schemas::Timestamp::now().as_millis();
        let Some(deadline) = attribution_created_at(id)
            .and_then(|made| fresh_wait_deadline(made.as_millis(), now, wait_ms))
        else {
            return Ok(false);
        };
        let stored = || async { self.is_stored(id).await };
        if deadline <= now {
            return stored().await;
        }
        let left = Duration::from_millis(u64::try_from(deadline - now).unwrap_or(0));
        let Ok(landing) = landings.expect(id) else {
            return stored().await; // shutting down
        };
        match tokio::time::timeout(left, landing).await {
            Ok(Ok(())) => Ok(true),
            // A last look: the click may have landed since the last round.
            Err(_) => stored().await,
            // The batched look-up failed for good (not a passing outage): this request
            // looks on its own until its deadline, so the store's error reaches the client
            // rather than a wrong "not stored".
            Ok(Err(_)) => loop {
                if stored().await? {
                    return Ok(true);
                }
                if referral_schemas::Timestamp::now().as_millis() >= deadline {
                    return Ok(false);
                }
                tokio::time::sleep(LANDING_POLL).await;
            },
        }
    }

    /// Whether attribution `id` is stored in any state (one cheap look).
    async fn is_stored(&self, id: &str) -> Result<bool, StoreError> {
        Ok(!self
            .reader
            .stored_attribution_ids(&[id.to_owned()])
            .await?
            .is_empty())
    }
}

/// Until when (ms) a read of an attribution created at `created_ms` may wait for the
/// aggregator to store it: `wait_ms` after its creation, and never more than `wait_ms` from
/// `now_ms`. `None` for an id from further in the future than that: no edge made it, and an
/// id a client chose must not buy an endless poll of the store.
fn fresh_wait_deadline(created_ms: i64, now_ms: i64, wait_ms: i64) -> Option<i64> {
    let latest = now_ms.saturating_add(wait_ms);
    (created_ms <= latest).then(|| created_ms.saturating_add(wait_ms).min(latest))
}

/// What stands behind a request-serving process, stopped in its own way.
enum Running {
    Embedded(Embedded),
    Kafka(Arc<KafkaLog>),
}

/// The pipeline as the edge and the API use it.
pub struct Pipeline {
    /// Where clicks and commands go.
    pub log: Arc<dyn EventLog>,
    /// Code -> mentor for clicks.
    pub codes: Arc<CodeResolver>,
    /// Reads and verdicts (the API role).
    pub reads: Option<Reads>,
    /// Taken at shutdown.
    running: std::sync::Mutex<Option<Running>>,
    /// The embedded log, when that is the log: for `caught_up` and readiness.
    embedded_log: Option<Arc<crate::log::file::FileLog>>,
    /// The embedded consumer's status, to fail readiness if it stopped.
    consumer: Option<Arc<ConsumerStatus>>,
    /// Stops the background tasks (readiness probe, codes follower, verdict look-ups, the
    /// embedded deliverer).
    stop: watch::Sender<bool>,
    /// Where webhooks are kept: the data directory's store, or ClickHouse.
    webhook_backend: WebhookBackend,
    /// The embedded deliverer, awaited at shutdown.
    deliverer: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Where this process's webhooks are kept.
enum WebhookBackend {
    Embedded(std::path::PathBuf),
    ClickHouse(ClickHouseSettings),
    None,
}

impl Pipeline {
    /// Opens the pipeline `args` configure, for `role`. Must run inside a tokio runtime.
    pub async fn open(args: &PipelineArgs, role: Role, client_id: &str) -> anyhow::Result<Self> {
        let (stop, stopped) = watch::channel(false);
        let stopped = move || {
            let mut stopped = stopped.clone();
            async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            }
        };
        match Backends::choose(args, client_id)? {
            Backends::Embedded => {
                let embedded = Embedded::open(args).context("cannot open the embedded pipeline")?;
                let reads = (role == Role::Api).then(|| Reads {
                    reader: Arc::new(embedded.reader.clone()),
                    verdicts: embedded.verdicts.clone(),
                    freshness: Freshness::Applied(embedded.log.clone()),
                });
                Ok(Self {
                    log: embedded.log.clone(),
                    codes: Arc::new(CodeResolver::exact(embedded.directory.clone())),
                    reads,
                    embedded_log: Some(embedded.log.clone()),
                    consumer: Some(embedded.consumer_status()),
                    running: std::sync::Mutex::new(Some(Running::Embedded(embedded))),
                    stop,
                    webhook_backend: WebhookBackend::Embedded(args.data_dir.clone()),
                    deliverer: std::sync::Mutex::new(None),
                })
            }
            Backends::Kafka { kafka, clickhouse } => {
                let clickhouse = match (role, clickhouse) {
                    (Role::Api, None) => anyhow::bail!(
                        "production mode needs both --kafka-brokers and --clickhouse-url \
                         (the embedded mode needs neither)"
                    ),
                    (_, clickhouse) => clickhouse,
                };
                let log = Arc::new(KafkaLog::connect(&kafka).await.with_context(|| {
                    format!("cannot reach topic {} on {}", kafka.topic, kafka.brokers)
                })?);
                log.spawn_readiness_probe(stopped());
                let directory = CodeDirectory::default();
                let sync = kafka_codes::follow(&kafka, directory.clone(), stopped())
                    .await
                    .with_context(|| format!("cannot follow topic {}", kafka.codes_topic))?;
                let webhook_backend = match (role, &clickhouse) {
                    (Role::Api, Some(clickhouse)) => WebhookBackend::ClickHouse(clickhouse.clone()),
                    _ => WebhookBackend::None,
                };
                let reads = match (role, clickhouse) {
                    (Role::Api, Some(clickhouse)) => {
                        let reader: Arc<dyn AttributionReader> =
                            Arc::new(ClickHouseReader::new(&clickhouse));
                        let verdicts =
                            VerdictWaiter::spawn(Verdicts(reader.clone()), VERDICT_POLL, stopped());
                        let landings =
                            LandingWaiter::spawn(Landings(reader.clone()), LANDING_POLL, stopped());
                        tracing::info!(clickhouse = %clickhouse.url, "reading ClickHouse");
                        Some(Reads {
                            reader,
                            verdicts,
                            freshness: Freshness::Polled(landings),
                        })
                    }
                    _ => None,
                };
                tracing::info!(brokers = %kafka.brokers, topic = %kafka.topic, "publishing to Kafka");
                Ok(Self {
                    log: log.clone(),
                    codes: Arc::new(CodeResolver::following(directory, sync)),
                    reads,
                    embedded_log: None,
                    consumer: None,
                    running: std::sync::Mutex::new(Some(Running::Kafka(log))),
                    stop,
                    webhook_backend,
                    deliverer: std::sync::Mutex::new(None),
                })
            }
        }
    }

    /// The webhook store (the API's role). In the embedded mode, also starts the deliverer
    /// in this process (production runs `referral-aggregator deliver`).
    pub fn webhooks(&self, args: &WebhookArgs) -> anyhow::Result<Arc<dyn WebhookStore>> {
        match &self.webhook_backend {
            WebhookBackend::Embedded(data_dir) => {
                let store: Arc<dyn WebhookStore> = Arc::new(SqliteWebhooks::open(data_dir)?);
                let deliverer = tokio::spawn({
                    let store = store.clone();
                    let settings = args.settings()?;
                    let stop = self.stop.subscribe();
                    async move {
                        if let Err(error) =
                            deliver::run(store, settings, Serving::everything(), stop).await
                        {
                            tracing::error!(%error, "the webhook deliverer stopped");
                        }
                    }
                });
                *self
                    .deliverer
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(deliverer);
                Ok(store)
            }
            WebhookBackend::ClickHouse(clickhouse) => {
                args.settings()?;
                Ok(Arc::new(ClickHouseWebhooks::new(clickhouse)))
            }
            WebhookBackend::None => anyhow::bail!("webhooks need the API's role"),
        }
    }

    /// Whether new events are accepted now, and if not, why.
    pub fn readiness(&self) -> Result<(), String> {
        self.log.readiness()?;
        if !self.codes.is_loaded() {
            return Err("the code directory has not caught up with the codes topic yet".into());
        }
        if let Some(status) = &self.consumer {
            status.health()?;
        }
        Ok(())
    }

    /// Embedded: waits, at most `limit`, until the store applied everything the log held
    /// when called. Production: the aggregator runs elsewhere; true at once.
    pub async fn caught_up(&self, limit: Duration) -> bool {
        match &self.embedded_log {
            Some(log) => log.caught_up(limit).await,
            None => true,
        }
    }

    /// After the server drained: embedded, writes what is queued and lets the store catch
    /// up; Kafka, delivers what is queued. Then stops the background tasks. Only the first
    /// call does anything.
    pub async fn shutdown(&self, drain: Duration) {
        let running = self
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        match running {
            Some(Running::Embedded(embedded)) => embedded.shutdown(drain).await,
            Some(Running::Kafka(log)) => log.flush(drain).await,
            None => return,
        }
        // Also ends the verdict look-ups, which answer their waiters as they stop, and the
        // embedded deliverer, which stores its cursors.
        self.stop.send_replace(true);
        let deliverer = self
            .deliverer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(deliverer) = deliverer {
            let _ = tokio::time::timeout(drain, deliverer).await;
        }
    }
}

/// `referral-aggregator run`: the consumer group member that applies Kafka to ClickHouse.
pub struct Aggregator {
    /// Taken at shutdown.
    consumer: std::sync::Mutex<Option<Consumer>>,
    status: Arc<ConsumerStatus>,
    producer: FutureProducer,
}

impl Aggregator {
    /// Applies migrations (unless `--no-migrate`), connects to ClickHouse and joins the
    /// consumer group. Must run inside a multi-threaded tokio runtime.
    pub async fn start(
        args: &PipelineArgs,
        consumer_args: &ConsumerArgs,
        fault: FaultPoint,
    ) -> anyhow::Result<Self> {
        let (kafka, clickhouse) = match Backends::choose(args, "referral-aggregator")? {
            Backends::Kafka {
                kafka,
                clickhouse: Some(_),
            } => {
                let clickhouse = args
                    .clickhouse_settings(consumer_args.clickhouse_insert_timeout)
                    .context("referral-aggregator run needs --clickhouse-url")?;
                (kafka, clickhouse)
            }
            Backends::Kafka {
                clickhouse: None, ..
            } => anyhow::bail!("referral-aggregator run needs --clickhouse-url"),
            Backends::Embedded => anyhow::bail!(
                "referral-aggregator run needs --kafka-brokers and --clickhouse-url; with \
                 neither, the embedded pipeline runs inside referral-api (cargo run --release \
                 --bin referral-api)"
            ),
        };
        if !consumer_args.no_migrate {
            let report = migrate::migrate(&clickhouse).await?;
            tracing::info!(applied = ?report.applied, deferred = ?report.deferred, "migrations checked");
        }
        migrate::refuse_newer_schema(&clickhouse).await?;
        let sink = ClickHouseSink::connect(&clickhouse)
            .await?
            .with_attribution_split(consumer_args.clickhouse_insert_split_rows);
        let producer: FutureProducer = producer::producer_config(&kafka)
            .create()
            .context("cannot create the Kafka producer")?;
        let announcer = KafkaAnnouncer {
            producer: producer.clone(),
            codes_topic: kafka.codes_topic.clone(),
            dead_letter_topic: consumer_args.kafka_dead_letter_topic.clone(),
            produce_timeout: kafka.message_timeout,
        };
        let worker = Arc::new(std::sync::Mutex::new(Worker::new(
            Box::new(sink),
            Box::new(announcer),
            tokio::runtime::Handle::current(),
            WorkerSettings {
                batch_max_rows: consumer_args.batch_max_rows,
                batch_max_bytes: consumer_args.batch_max_bytes,
                batch_max_wait: consumer_args.batch_max_wait,
                // A command never waits longer than any message.
                command_max_wait: consumer_args
                    .command_max_wait
                    .min(consumer_args.batch_max_wait),
                seek_gaps: true,
                window_ms: args.attribution_window_ms(),
                dedup_window_ms: args.dedup_window_ms(),
                // The next batch is read and decoded while ClickHouse inserts the last.
                overlap_flushes: true,
            },
            fault,
        )));
        let source = KafkaSource::subscribe(&kafka, consumer_args, worker.clone())
            .context("cannot join the consumer group")?;
        let consumer = Consumer::start(
            "referral-consumer",
            source,
            worker,
            consumer_args.drain_timeout,
            // Ready once joined and ClickHouse answered the thread's ping.
            false,
        )
        .context("cannot start the consumer")?;
        tracing::info!(topic = %kafka.topic, group = %consumer_args.kafka_group_id, "aggregator running");
        Ok(Self {
            status: consumer.status(),
            consumer: std::sync::Mutex::new(Some(consumer)),
            producer,
        })
    }

    pub fn status(&self) -> Arc<ConsumerStatus> {
        self.status.clone()
    }

    /// Ready: joined, and the last flush (or ping) reached ClickHouse.
    pub fn readiness(&self) -> Result<(), String> {
        self.status.health().map_err(String::from)
    }

    fn consumer(&self) -> std::sync::MutexGuard<'_, Option<Consumer>> {
        self.consumer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether the consumer thread ended on its own (it only should when asked to stop).
    pub fn ended(&self) -> bool {
        self.consumer().as_ref().is_none_or(Consumer::ended)
    }

    /// Flushes what is pending, leaves the group, flushes the producer. Only the first call
    /// does anything.
    pub async fn shutdown(&self) {
        let Some(consumer) = self.consumer().take() else {
            return;
        };
        consumer.stop().await;
        let producer = self.producer.clone();
        let flushed =
            tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(10))).await;
        if !matches!(flushed, Ok(Ok(()))) {
            tracing::warn!("producer flush incomplete at shutdown");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fresh_wait_deadline;

    #[test]
    fn a_fresh_read_waits_at_most_the_wait_from_now_and_never_for_future_ids() {
        let (now, wait) = (1_000_000, 2_000);
        // Created a moment ago: until `wait` after its creation.
        assert_eq!(fresh_wait_deadline(now - 500, now, wait), Some(now + 1_500));
        // Long ago: the deadline has passed, no wait.
        assert!(fresh_wait_deadline(now - 10_000, now, wait).is_some_and(|at| at <= now));
        // A little ahead (clock skew between edges): bounded by now + wait.
        assert_eq!(
            fresh_wait_deadline(now + 1_000, now, wait),
            Some(now + wait)
        );
        // Far in the future (an id a client made up): no wait at all.
        assert_eq!(fresh_wait_deadline(now + 10_000, now, wait), None);
        assert_eq!(fresh_wait_deadline(i64::MAX, now, wait), None);
    }
}
