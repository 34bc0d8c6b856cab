//! The deliverers' own consumer group: which endpoints a deliverer serves.
//!
//! `referral-aggregator deliver` joins its consumer group (`--webhook-group`,
//! `referral-webhooks`) on the attribution log. The group hands each running deliverer a
//! share of the log's partitions; a deliverer serves the endpoints whose id hashes onto its
//! partitions ([`owner`]). So any number of deliverers can run (up to the partition count
//! do work; more stand by), each endpoint is served by exactly one, and the endpoints of a
//! deliverer that dies move to the others once its session times out.
//!
//! The partitions are held, not read (paused): an endpoint's events come from the outbox
//! the single writer fills (see the module map), and its position is its cursor there. The
//! group's committed offset of a partition is the deliverers' position on the log: every
//! live endpoint has had every event below it ([`position`], from the stored cursors),
//! committed by the deliverer holding the partition, so Kafka's tooling shows the
//! deliverers' lag like any consumer group's.
//!
//! A revocation is held inside the rebalance callback (the broker's rebalance waits for
//! it) until the deliverer has stopped the tasks of the endpoints it gives up and stored
//! their cursors, so the next owner starts from where this one stopped and two deliverers
//! never send to one endpoint at once. The one exception is a deliverer cut off from the
//! broker but not from ClickHouse and the receivers, until librdkafka notices its session
//! is lost: both send, the receivers get some events twice (at least once; the event id
//! is the same), and each cursor stays at or behind what was delivered.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::Offset;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::topic_partition_list::TopicPartitionList;
use tokio::sync::watch;

use super::store::{Cursor, Progress, StoredEndpoint, partition_key};
use crate::kafka::{KafkaSettings, METADATA_TIMEOUT};

/// The longest a revocation waits for the deliverer to stop the endpoints it gives up:
/// longer than the deliverer's own grace for a task stuck in a call.
const RELEASE_WAIT: Duration = Duration::from_secs(15);
/// How often a partition count that could not be read is asked for again.
const COUNT_RETRY: Duration = Duration::from_secs(2);
/// How often the position is committed at most (as librdkafka's auto-commit; a new
/// assignment or a failed commit commits at once).
const COMMIT_EVERY: Duration = Duration::from_secs(5);

/// The partition of `partitions` an endpoint hashes onto (64-bit FNV-1a of its id): the
/// same on every deliverer and every version, so all agree on who serves it.
pub fn owner(endpoint_id: &str, partitions: u32) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in endpoint_id.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    u32::try_from(hash % u64::from(partitions.max(1))).unwrap_or(0)
}

/// The deliverers' position on the log, per partition of `stored_ends` (the store's
/// checkpoints): the lowest stored cursor of the endpoints that are to get events, at most
/// the stored end. Every such endpoint has had every event below it. An endpoint whose
/// start is not stored yet (no progress: its task has not run) or that is about to go back
/// (a replay not applied yet) may still get any event: 0. A disabled one gets nothing until
/// a replay, which counts as the latter.
pub fn position(stored_ends: &Cursor, endpoints: &[(StoredEndpoint, Option<Progress>)]) -> Cursor {
    let mut position = stored_ends.clone();
    for (endpoint, progress) in endpoints {
        let replay = endpoint.replay.map_or(0, |(_, at)| at);
        let cursor = match progress {
            Some(progress) if replay <= progress.replay_applied => {
                if progress.disabled_at.is_some() {
                    continue;
                }
                &progress.cursor
            }
            // Not started, or a replay pending: anything may still go out.
            _ => &Cursor::new(),
        };
        for (key, at) in &mut position {
            // No cursor there yet: the endpoint reads that partition from its start.
            let cursor = cursor.get(key).copied().unwrap_or(0);
            *at = (*at).min(cursor);
        }
    }
    position
}

/// Which endpoints a deliverer serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Share {
    /// Every endpoint: the embedded mode, or a deliverer without Kafka.
    All,
    /// The endpoints hashing onto `owned`, of the log's `count` partitions (none while a
    /// rebalance runs, or for a deliverer on standby).
    Partitions { owned: BTreeSet<u32>, count: u32 },
}

impl Share {
    /// No endpoint at all.
    pub fn nothing() -> Self {
        Self::Partitions {
            owned: BTreeSet::new(),
            count: 1,
        }
    }

    pub fn serves(&self, endpoint_id: &str) -> bool {
        match self {
            Self::All => true,
            Self::Partitions { owned, count } => owned.contains(&owner(endpoint_id, *count)),
        }
    }

    /// Partitions held, for the gauge (`None`: all).
    pub fn partitions(&self) -> Option<usize> {
        match self {
            Self::All => None,
            Self::Partitions { owned, .. } => Some(owned.len()),
        }
    }
}

/// A share and its number: a revocation waits until the deliverer has released every
/// endpoint outside share number `generation`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    pub generation: u64,
    pub share: Share,
}

/// The deliverer's side of the group: the current share, where it says which share's
/// endpoints alone it still runs, and the deliverers' [`position`] to commit.
pub struct Serving {
    pub share: watch::Receiver<Assignment>,
    pub released: watch::Sender<u64>,
    pub positions: watch::Sender<Cursor>,
}

impl Serving {
    /// Every endpoint, for good (the embedded mode).
    pub fn everything() -> Self {
        let (_, share) = watch::channel(Assignment {
            generation: 0,
            share: Share::All,
        });
        Self {
            share,
            released: watch::channel(0).0,
            positions: watch::channel(Cursor::new()).0,
        }
    }
}

/// The rdkafka context: turns rebalances into shares.
struct GroupContext {
    topic: String,
    share: watch::Sender<Assignment>,
    released: watch::Receiver<u64>,
    generation: AtomicU64,
    /// Partitions assigned whose share is not out yet (the partition count was not known).
    unshared: std::sync::Mutex<Option<BTreeSet<u32>>>,
    /// A commit failed: every held position is committed again.
    recommit: AtomicBool,
    /// For the readiness check.
    membership: Membership,
    /// When the partition count was last asked for, to space out the retries.
    counted_at: std::sync::Mutex<Option<Instant>>,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn commit_callback(&self, result: rdkafka::error::KafkaResult<()>, _: &TopicPartitionList) {
        if let Err(error) = result {
            tracing::debug!(%error, "webhook position commit failed; tried again");
            self.recommit.store(true, Ordering::SeqCst);
        }
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        // rdkafka unassigns after an error too: both give the whole share up.
        let kind = match rebalance {
            Rebalance::Assign(_) => return,
            Rebalance::Revoke(_) => "revoke",
            Rebalance::Error(error) => {
                tracing::warn!(%error, "webhook group rebalance error: giving the share up");
                "error"
            }
        };
        metrics::counter!("referral_webhook_rebalances_total", "kind" => kind).increment(1);
        tracing::info!(
            lost = consumer.assignment_lost(),
            "webhook partitions revoked: stopping their endpoints"
        );
        self.membership.set(MemberState::Out(Instant::now()));
        metrics::gauge!("referral_webhook_group_partitions").set(0.0);
        self.set_unshared(None);
        let generation = self.publish(Share::nothing());
        self.wait_released(generation);
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(partitions) = rebalance else {
            return;
        };
        // New partitions get their positions committed.
        self.recommit.store(true, Ordering::SeqCst);
        metrics::counter!("referral_webhook_rebalances_total", "kind" => "assign").increment(1);
        // Held, not read: the events come from the outbox.
        if let Err(error) = consumer.pause(partitions) {
            tracing::warn!(%error, "cannot pause the webhook group's partitions");
        }
        let owned = self.owned(partitions);
        self.share_when_counted(consumer, owned);
    }
}

impl GroupContext {
    /// Commits the positions of the held partitions that changed since the last commit, at
    /// most every [`COMMIT_EVERY`].
    fn commit_positions(
        &self,
        consumer: &BaseConsumer<Self>,
        positions: &Cursor,
        committed: &mut std::collections::HashMap<i32, i64>,
        last_commit: &mut Option<Instant>,
    ) {
        if self.recommit.swap(false, Ordering::SeqCst) {
            committed.clear();
        } else if last_commit.is_some_and(|at| at.elapsed() < COMMIT_EVERY) {
            return;
        }
        *last_commit = Some(Instant::now());
        let Ok(held) = consumer.assignment() else {
            return;
        };
        let mut offsets = TopicPartitionList::new();
        for element in held.elements() {
            let partition = element.partition();
            let key = partition_key(element.topic(), partition);
            let Some(next) = positions.get(&key).copied() else {
                continue;
            };
            if committed.get(&partition) == Some(&next) {
                continue;
            }
            if offsets
                .add_partition_offset(element.topic(), partition, Offset::Offset(next))
                .is_ok()
            {
                committed.insert(partition, next);
            }
        }
        if offsets.count() == 0 {
            return;
        }
        if let Err(error) = consumer.commit(&offsets, CommitMode::Async) {
            tracing::warn!(%error, "cannot commit the webhook position; tried again");
            self.recommit.store(true, Ordering::SeqCst);
        }
    }

    fn owned(&self, partitions: &TopicPartitionList) -> BTreeSet<u32> {
        partitions
            .elements()
            .iter()
            .filter(|element| element.topic() == self.topic)
            .filter_map(|element| u32::try_from(element.partition()).ok())
            .collect()
    }

    fn set_unshared(&self, owned: Option<BTreeSet<u32>>) {
        *self
            .unshared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = owned;
    }

    /// Publishes the share of `owned` once the log's partition count is known; until then
    /// nothing is served and the poll loop asks again.
    fn share_when_counted(&self, consumer: &BaseConsumer<Self>, owned: BTreeSet<u32>) {
        let count = partition_count(consumer, &self.topic);
        // After the fetch, which may take its whole timeout: retries are spaced from its end.
        *self
            .counted_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
        match count {
            Ok(count) => {
                tracing::info!(partitions = ?owned, of = count, "webhook partitions assigned");
                metrics::gauge!("referral_webhook_group_partitions").set(owned.len() as f64);
                self.membership.set(MemberState::In);
                self.set_unshared(None);
                self.publish(Share::Partitions { owned, count });
            }
            Err(error) => {
                tracing::warn!(%error, "cannot read the log's partition count; serving no endpoint until it is known");
                self.set_unshared(Some(owned));
            }
        }
    }

    fn publish(&self, share: Share) -> u64 {
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.share.send_replace(Assignment { generation, share });
        generation
    }

    /// Blocks (the consumer's thread: the rebalance waits) until the deliverer runs nothing
    /// outside share `generation`, it is gone, or [`RELEASE_WAIT`] passed.
    fn wait_released(&self, generation: u64) {
        let deadline = Instant::now() + RELEASE_WAIT;
        loop {
            if *self.released.borrow() >= generation {
                return;
            }
            if self.released.has_changed().is_err() {
                return;
            }
            if Instant::now() >= deadline {
                metrics::counter!("referral_webhook_release_timeouts_total").increment(1);
                tracing::warn!(
                    "the deliverer did not release its endpoints in time; the rebalance goes on"
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn partition_count(consumer: &BaseConsumer<GroupContext>, topic: &str) -> Result<u32, String> {
    let metadata = consumer
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
        .map_err(|error| error.to_string())?;
    let partitions = metadata
        .topics()
        .iter()
        .find(|found| found.name() == topic)
        .map_or(0, |found| found.partitions().len());
    match u32::try_from(partitions) {
        Ok(count) if count > 0 => Ok(count),
        _ => Err(format!("topic {topic} has no partitions")),
    }
}

/// Where a deliverer stands in its group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MemberState {
    /// No share yet.
    Joining,
    /// Its share is out (possibly empty: a standby).
    In,
    /// Revoked (a rebalance, or the session lost) at this time.
    Out(Instant),
}

/// Whether a deliverer is in its group, for `/readyz`: not until its first share is out,
/// and not once it has been out of the group for longer than a rebalance takes (every
/// deliverer goes through each rebalance at once: a drain must not find them all unready).
#[derive(Clone)]
pub struct Membership {
    state: Arc<std::sync::Mutex<MemberState>>,
    grace: Duration,
}

impl Membership {
    fn set(&self, state: MemberState) {
        let mut current = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Revoked before its first share: still joining.
        if !(matches!(state, MemberState::Out(_)) && *current == MemberState::Joining) {
            *current = state;
        }
    }

    pub fn readiness(&self) -> Result<(), String> {
        let state = *self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match state {
            MemberState::In => Ok(()),
            MemberState::Out(since) if since.elapsed() < self.grace => Ok(()),
            MemberState::Out(_) => Err("out of the webhook deliverers' group (the brokers unreachable, or a rebalance stuck)".into()),
            MemberState::Joining => Err("joining the webhook deliverers' group".into()),
        }
    }
}

/// A member of the deliverers' group, polled on its own thread.
pub struct DeliveryGroup {
    thread: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    membership: Membership,
}

impl DeliveryGroup {
    /// Joins `group_id` on the attribution log; the returned [`Serving`] is the deliverer's.
    pub fn join(
        settings: &KafkaSettings,
        group_id: &str,
        session_timeout: Duration,
    ) -> Result<(Self, Serving), KafkaError> {
        let session_ms = session_timeout.as_millis().max(1_000);
        let heartbeat_ms = (session_ms / 10).max(100);
        let (share, share_seen) = watch::channel(Assignment {
            generation: 0,
            share: Share::nothing(),
        });
        let (released, released_seen) = watch::channel(0);
        let (positions, positions_seen) = watch::channel(Cursor::new());
        let membership = Membership {
            state: Arc::new(std::sync::Mutex::new(MemberState::Joining)),
            grace: session_timeout + RELEASE_WAIT,
        };
        // Present (0) from the start: a deliverer that never gets a share shows as holding
        // nothing, which the alert on unserved partitions sees.
        metrics::gauge!("referral_webhook_group_partitions").set(0.0);
        let consumer: BaseConsumer<GroupContext> = settings
            .client_config()
            .set("client.id", &settings.client_id)
            .set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // Eager: every member gives up its whole share before any is handed out.
            .set("partition.assignment.strategy", "roundrobin")
            .set("session.timeout.ms", session_ms.to_string())
            .set("heartbeat.interval.ms", heartbeat_ms.to_string())
            // A revocation may wait for the deliverer; the rebalance waits this long.
            .set("max.poll.interval.ms", "300000")
            .create_with_context(GroupContext {
                topic: settings.topic.clone(),
                share,
                released: released_seen,
                generation: AtomicU64::new(0),
                unshared: std::sync::Mutex::new(None),
                recommit: AtomicBool::new(false),
                membership: membership.clone(),
                counted_at: std::sync::Mutex::new(None),
            })?;
        consumer.subscribe(&[settings.topic.as_str()])?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("webhook-group".into())
            .spawn({
                let stop = stop.clone();
                move || poll_group(&consumer, positions_seen, &stop)
            })
            .map_err(|error| KafkaError::ClientCreation(error.to_string()))?;
        tracing::info!(group = group_id, topic = %settings.topic, "joining the webhook deliverers' group");
        Ok((
            Self {
                thread: Some(thread),
                stop,
                membership,
            },
            Serving {
                share: share_seen,
                released,
                positions,
            },
        ))
    }

    /// Whether it is a member of the group, for `/readyz`.
    pub fn membership(&self) -> Membership {
        self.membership.clone()
    }

    /// Leaves the group (call once the deliverer has stopped: its endpoints go to others).
    pub fn leave(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for DeliveryGroup {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Serves the group protocol (rebalance callbacks run inside `poll`) and commits the
/// deliverers' position until `stop`.
fn poll_group(
    consumer: &BaseConsumer<GroupContext>,
    mut positions: watch::Receiver<Cursor>,
    stop: &AtomicBool,
) {
    let mut committed = std::collections::HashMap::new();
    let mut last_commit = None;
    while !stop.load(Ordering::SeqCst) {
        match consumer.poll(Duration::from_millis(200)) {
            // A record fetched before the pause took effect: not ours to read.
            Some(Ok(_)) | None => {}
            Some(Err(error)) => tracing::warn!(%error, "webhook group consumer error"),
        }
        let context = consumer.context();
        let retry_count = context
            .counted_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_none_or(|at| at.elapsed() >= COUNT_RETRY);
        let unshared = retry_count
            .then(|| {
                context
                    .unshared
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .take()
            })
            .flatten();
        if let Some(owned) = unshared {
            context.share_when_counted(consumer, owned);
        }
        let current = positions.borrow_and_update().clone();
        consumer
            .context()
            .commit_positions(consumer, &current, &mut committed, &mut last_commit);
    }
    consumer.unsubscribe();
    // Serve the revocation that unsubscribing triggers (the deliverer is gone: no wait).
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until && consumer.assignment().is_ok_and(|a| a.count() > 0) {
        let _ = consumer.poll(Duration::from_millis(50));
    }
    tracing::info!("left the webhook deliverers' group");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_endpoint_has_one_owner_and_owners_spread() {
        let ids: Vec<String> = (0..6_000).map(|n| format!("wh_{n:020x}")).collect();
        let mut per_partition = [0usize; 6];
        for id in &ids {
            let partition = owner(id, 6);
            assert!(partition < 6);
            per_partition[partition as usize] += 1;
            assert_eq!(owner(id, 6), partition, "the same on every call");
        }
        for count in per_partition {
            assert!((700..1_300).contains(&count), "{per_partition:?}");
        }
        assert_eq!(owner("wh_x", 0), 0, "no partitions: no division by zero");
    }

    #[test]
    fn the_hash_is_pinned_so_deliverers_of_different_versions_agree() {
        // 64-bit FNV-1a of "a" is 0xaf63dc4c8601ec8c (the published test vector).
        assert_eq!(
            owner("a", u32::MAX),
            (0xaf63_dc4c_8601_ec8c_u64 % u64::from(u32::MAX)) as u32
        );
    }

    fn endpoint(id: &str, progress: Option<Progress>) -> (StoredEndpoint, Option<Progress>) {
        (
            StoredEndpoint {
                id: id.to_owned(),
                url: "https://example.com/hooks".to_owned(),
                events: Vec::new(),
                secret: "whsec_x".to_owned(),
                created_at: 0,
                replay: None,
            },
            progress,
        )
    }

    fn cursor(entries: &[(&str, i64)]) -> Cursor {
        entries
            .iter()
            .map(|(key, at)| ((*key).to_owned(), *at))
            .collect()
    }

    #[test]
    fn the_position_is_the_slowest_enabled_endpoint_at_most_the_stored_end() {
        let ends = cursor(&[("log/0", 100), ("log/1", 50)]);
        assert_eq!(position(&ends, &[]), ends, "no endpoint: nothing owed");
        let slow = Progress {
            cursor: cursor(&[("log/0", 40), ("log/1", 50)]),
            ..Progress::default()
        };
        let fast = Progress {
            cursor: cursor(&[("log/0", 90), ("log/1", 50)]),
            ..Progress::default()
        };
        let disabled = Progress {
            cursor: cursor(&[("log/0", 1), ("log/1", 1)]),
            disabled_at: Some(5),
            ..Progress::default()
        };
        // A cursor past the stored end (a stored end read before the cursor moved).
        let ahead = Progress {
            cursor: cursor(&[("log/0", 100), ("log/1", 70)]),
            ..Progress::default()
        };
        let endpoints = [
            endpoint("wh_slow", Some(slow.clone())),
            endpoint("wh_fast", Some(fast)),
            endpoint("wh_disabled", Some(disabled.clone())),
            endpoint("wh_ahead", Some(ahead)),
        ];
        assert_eq!(
            position(&ends, &endpoints),
            cursor(&[("log/0", 40), ("log/1", 50)])
        );
        // An endpoint whose task has not stored where it starts, or with a replay not
        // applied yet (a disabled one included: the replay enables it): anything may go out.
        let nothing_passed = cursor(&[("log/0", 0), ("log/1", 0)]);
        assert_eq!(position(&ends, &[endpoint("wh_new", None)]), nothing_passed);
        let mut replayed = endpoint("wh_replayed", Some(disabled));
        replayed.0.replay = Some((0, 9));
        assert_eq!(position(&ends, &[replayed.clone()]), nothing_passed);
        // Once the replay is applied (stored with its new cursor), its cursor counts again.
        replayed.1 = Some(Progress {
            replay_applied: 9,
            ..slow
        });
        assert_eq!(
            position(&ends, &[replayed]),
            cursor(&[("log/0", 40), ("log/1", 50)])
        );
        // A partition an endpoint has no cursor in yet (it appeared after the endpoint
        // started): that endpoint reads it from its start, so nothing there is passed.
        let before_the_partition = Progress {
            cursor: cursor(&[("log/0", 100)]),
            ..Progress::default()
        };
        assert_eq!(
            position(&ends, &[endpoint("wh_old", Some(before_the_partition))]),
            cursor(&[("log/0", 100), ("log/1", 0)])
        );
    }

    #[test]
    fn shares_split_the_endpoints_between_deliverers() {
        let count = 4;
        let first = Share::Partitions {
            owned: [0, 2].into(),
            count,
        };
        let second = Share::Partitions {
            owned: [1, 3].into(),
            count,
        };
        for n in 0..500 {
            let id = format!("wh_{n}");
            assert!(first.serves(&id) ^ second.serves(&id), "{id}: one owner");
            assert!(Share::All.serves(&id));
            assert!(!Share::nothing().serves(&id));
        }
    }
}
