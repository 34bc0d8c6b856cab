//! The deliverer: POSTs each endpoint's events in log order, at least once.
//!
//! One supervisor follows the registered endpoints (every `poll`) and runs one task per
//! enabled endpoint; a deleted endpoint's task is stopped, a replay restarts it from the
//! replay's `since`. An endpoint's task reads the outbox from its cursor and sends each
//! event it subscribed to until a 2xx, retrying anything else (a status, a timeout, a
//! refused connection, a blocked address) with exponential backoff and jitter. The cursor
//! moves past an event once it is done (delivered, or given up after `retry_for`) and is
//! stored at most every [`SAVE_EVERY`] and when the task stops: a SIGKILL re-sends what
//! the stored cursor had not passed, never skips. An endpoint failing for `disable_after`
//! in a row is disabled (its GET says so) until a replay enables it again.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use referral_schemas::Timestamp;
use referral_schemas::webhook::{
    DeliveryAttempt, DeliveryOutcome, EventType, SIGNATURE_HEADER, WebhookEvent,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::group::{self, Assignment, Serving, Share};
use super::store::{Cursor, Progress, StoredEndpoint, WebhookStore, partition_key};
use super::{ATTEMPT_RETENTION_MS, guard, sign};
use crate::plan::rows::EventRow;

/// Events read from the outbox at once, per partition.
const EVENTS_PER_READ: u32 = 200;
/// Longest time a delivered cursor stays unsaved (what a SIGKILL re-sends at most) while the
/// attempt log takes writes; the cursor waits for the attempts it covers.
pub const SAVE_EVERY: Duration = Duration::from_secs(1);
/// Longest wait between two attempts of one event.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(3_600);
/// How often attempts are written (one write for all of them).
const RECORD_EVERY: Duration = Duration::from_millis(500);
/// How often old attempts are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3_600);
/// How long stopping waits for tasks to store their cursors.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The deliverer's settings (flags `--webhook-*`).
#[derive(Clone, Debug)]
pub struct DelivererSettings {
    /// One attempt's limit, connection included.
    pub timeout: Duration,
    /// How long an event is retried before the attempt log says `failed`.
    pub retry_for: Duration,
    /// An endpoint failing this long in a row is disabled.
    pub disable_after: Duration,
    /// The first retry waits between half this and this; each next one twice as long.
    pub retry_base: Duration,
    /// Lifts the SSRF rules (plain http, private addresses).
    pub allow_private: bool,
    /// How often endpoints and new events are looked for.
    pub poll: Duration,
}

/// How long to wait before attempt `attempt + 1`, after attempt `attempt` (1-based)
/// failed: `base * 2^(attempt-1)`, at most [`MAX_RETRY_DELAY`], scaled by a jitter in
/// [0.5, 1] (`unit` in [0, 1)) so that endpoints that fail together do not retry together.
pub fn retry_delay(attempt: u32, base: Duration, unit: f64) -> Duration {
    let doubled = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let capped = doubled.min(MAX_RETRY_DELAY);
    capped.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
}

/// What ends one event's deliveries.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// Delivered, or given up after `retry_for`: the cursor moves on.
    Done,
    /// The endpoint failed for `disable_after` in a row.
    Disabled,
    /// The task is asked to stop: the event is not done.
    Stopped,
}

struct Shared {
    store: Arc<dyn WebhookStore>,
    client: reqwest::Client,
    settings: DelivererSettings,
    attempts: mpsc::UnboundedSender<ToRecorder>,
    /// Per partition, the stored end of the log, read once per poll for every endpoint:
    /// an endpoint reads the outbox only when it moved past its cursor.
    checkpoints: watch::Receiver<Cursor>,
}

/// A running endpoint task and what it was started for.
struct Running {
    task: JoinHandle<()>,
    /// The replay request it was started after (0: none).
    replay: i64,
    /// The creation time of the event it is working on (0: idle), for the lag gauge.
    pending_since: Arc<AtomicI64>,
    /// Asks it to store its cursor and end (a replay, a deletion, the deliverer stopping).
    stop: watch::Sender<bool>,
    /// When it was asked: past [`STOP_GRACE`] a task stuck in a call is aborted (its
    /// unsaved events are sent again: at least once).
    stop_sent: Option<Instant>,
}

impl Running {
    /// Asks the task to end; aborts it once it has not for [`STOP_GRACE`].
    fn ask_to_stop(&mut self) {
        self.stop.send_replace(true);
        let asked = *self.stop_sent.get_or_insert_with(Instant::now);
        if asked.elapsed() >= STOP_GRACE {
            self.task.abort();
        }
    }
}

/// Runs the deliverer until `stop` turns true; then lets each endpoint store its cursor.
///
/// It serves the endpoints of `serving`'s share (all of them in the embedded mode; those the
/// deliverers' group gives it in production) and, once it runs nothing outside a new
/// share, says so on `serving.released` (a revocation waits for that). Every poll it
/// publishes the deliverers' position on the log (from the stored cursors) for the group
/// to commit.
pub async fn run(
    store: Arc<dyn WebhookStore>,
    settings: DelivererSettings,
    serving: Serving,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let Serving {
        share: mut assignments,
        released,
        positions,
    } = serving;
    let client = http_client(&settings)?;
    let (attempts, recorded) = mpsc::unbounded_channel();
    let recorder = tokio::spawn(record_attempts(store.clone(), recorded));
    let (checkpoints, checkpoints_seen) = watch::channel(Cursor::new());
    let shared = Arc::new(Shared {
        store: store.clone(),
        client,
        settings: settings.clone(),
        attempts,
        checkpoints: checkpoints_seen,
    });
    tracing::info!(
        retry_for = ?settings.retry_for,
        disable_after = ?settings.disable_after,
        allow_private = settings.allow_private,
        "webhook deliverer running"
    );
    let mut running: HashMap<String, Running> = HashMap::new();
    let mut last_prune: Option<Instant> = None;
    let mut have_checkpoints = false;
    let mut stop_signal = stop.clone();
    loop {
        if *stop_signal.borrow() {
            break;
        }
        // First, and before any store call: endpoints outside the newest share stop, and
        // once none runs the share is released (a rebalance waits for that; the next owner
        // starts from their stored cursors). While some still run, the store is left alone.
        let assignment = assignments.borrow_and_update().clone();
        let releasing = !release(&mut running, &assignment.share);
        if !releasing {
            released.send_if_modified(|done| {
                let moved = *done < assignment.generation;
                *done = (*done).max(assignment.generation);
                moved
            });
            // A new share cuts a store call short: back to the top to release it.
            let read = tokio::select! {
                read = store.checkpoints() => read,
                () = share_changed(&mut assignments) => continue,
                () = stopped(&mut stop_signal) => break,
            };
            match read {
                Ok(stored) => {
                    checkpoints.send_if_modified(|known| {
                        let moved = *known != stored;
                        *known = stored;
                        moved
                    });
                    have_checkpoints = true;
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot read the log's stored ends; retrying");
                }
            }
        }
        // Endpoint tasks start from the log's stored ends: not before they are known (a
        // new endpoint would otherwise scan the whole outbox).
        if !releasing && have_checkpoints {
            let endpoints = tokio::select! {
                endpoints = store.endpoints() => endpoints,
                () = share_changed(&mut assignments) => continue,
                () = stopped(&mut stop_signal) => break,
            };
            match endpoints {
                Ok(endpoints) => {
                    // The deliverers' position on the log, for the group to commit.
                    let position = group::position(&checkpoints.borrow(), &endpoints);
                    positions.send_if_modified(|known| {
                        let moved = *known != position;
                        *known = position;
                        moved
                    });
                    let served = endpoints
                        .into_iter()
                        .filter(|(endpoint, _)| assignment.share.serves(&endpoint.id))
                        .collect();
                    supervise(&shared, &mut running, served);
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot read the webhook endpoints; retrying");
                }
            }
        }
        metrics::gauge!("referral_webhook_served_endpoints").set(running.len() as f64);
        let now = Timestamp::now().as_millis();
        let lag_ms = running
            .values()
            .map(|running| running.pending_since.load(Ordering::Relaxed))
            .filter(|since| *since > 0)
            .map(|since| now - since)
            .max()
            .unwrap_or(0);
        metrics::gauge!("referral_webhook_lag_seconds").set(lag_ms as f64 / 1_000.0);
        if !releasing && last_prune.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
            last_prune = Some(Instant::now());
            let pruned = tokio::select! {
                pruned = store.prune_attempts(now - ATTEMPT_RETENTION_MS) => pruned,
                () = share_changed(&mut assignments) => continue,
                () = stopped(&mut stop_signal) => break,
            };
            if let Err(error) = pruned {
                tracing::warn!(%error, "cannot prune old delivery attempts");
            }
        }
        // Stopping tasks are watched closely: a rebalance waits for them.
        let wait = if releasing {
            settings.poll.min(Duration::from_millis(50))
        } else {
            settings.poll
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = share_changed(&mut assignments) => {}
            () = stopped(&mut stop_signal) => break,
        }
    }
    for endpoint in running.values() {
        endpoint.stop.send_replace(true);
    }
    let deadline = tokio::time::Instant::now() + STOP_GRACE;
    for (_, endpoint) in running.drain() {
        let abort = endpoint.task.abort_handle();
        if tokio::time::timeout_at(deadline, endpoint.task)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
    // Nothing runs any more: no revocation waits for this deliverer.
    released.send_replace(u64::MAX);
    drop(shared);
    let _ = recorder.await;
    tracing::info!("webhook deliverer stopped");
    Ok(())
}

/// Resolves when the share changes; never once no one can change it (the embedded mode).
async fn share_changed(assignments: &mut watch::Receiver<Assignment>) {
    if assignments.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Asks the tasks of endpoints outside `share` to stop; true once none of them runs.
fn release(running: &mut HashMap<String, Running>, share: &Share) -> bool {
    running.retain(|id, endpoint| {
        if share.serves(id) {
            return true;
        }
        endpoint.ask_to_stop();
        !endpoint.task.is_finished()
    });
    running.keys().all(|id| share.serves(id))
}

/// Resolves once the deliverer is asked to stop, or once no one can ask any more (the
/// sender is gone): either way nothing should go on.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

fn http_client(settings: &DelivererSettings) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .timeout(settings.timeout)
        .connect_timeout(settings.timeout)
        // A redirect could lead anywhere, a private address included.
        .redirect(reqwest::redirect::Policy::none())
        // A proxy from the environment would resolve the host itself, past the SSRF check.
        .no_proxy()
        .user_agent(concat!("referral-webhooks/", env!("CARGO_PKG_VERSION")));
    if !settings.allow_private {
        builder = builder.dns_resolver(Arc::new(guard::PublicOnlyResolver));
    }
    Ok(builder.build()?)
}

/// Starts, restarts (after a replay request) and stops endpoint tasks to match `endpoints`.
/// A task asked to stop is replaced only once it has ended (its cursor stored), so two
/// tasks never send to one endpoint; a new task reads the endpoint's state afresh.
fn supervise(
    shared: &Arc<Shared>,
    running: &mut HashMap<String, Running>,
    endpoints: Vec<(StoredEndpoint, Option<Progress>)>,
) {
    let mut disabled = 0u32;
    let mut live = std::collections::HashSet::new();
    for (endpoint, progress) in endpoints {
        live.insert(endpoint.id.clone());
        let replay = endpoint.replay.map_or(0, |(_, at)| at);
        let replay_pending = replay > progress.as_ref().map_or(0, |p| p.replay_applied);
        let is_disabled = progress.is_some_and(|p| p.disabled_at.is_some()) && !replay_pending;
        if is_disabled {
            disabled += 1;
        }
        if let Some(current) = running.get_mut(&endpoint.id) {
            if current.replay != replay {
                current.ask_to_stop();
            }
            if !current.task.is_finished() {
                continue;
            }
            running.remove(&endpoint.id);
        }
        if is_disabled {
            continue;
        }
        let pending_since = Arc::new(AtomicI64::new(0));
        let (stop, stop_seen) = watch::channel(false);
        let task = tokio::spawn(serve_endpoint(
            shared.clone(),
            endpoint.id.clone(),
            pending_since.clone(),
            stop_seen,
        ));
        running.insert(
            endpoint.id,
            Running {
                task,
                replay,
                pending_since,
                stop,
                stop_sent: None,
            },
        );
    }
    running.retain(|id, endpoint| {
        if live.contains(id) {
            return true;
        }
        endpoint.ask_to_stop();
        !endpoint.task.is_finished()
    });
    metrics::gauge!("referral_webhook_disabled_endpoints").set(f64::from(disabled));
}

/// One endpoint's deliveries, from its stored progress on, until `stop` or disabling.
async fn serve_endpoint(
    shared: Arc<Shared>,
    endpoint_id: String,
    pending_since: Arc<AtomicI64>,
    mut stop: watch::Receiver<bool>,
) {
    // Read afresh: the list the supervisor started from may predate this endpoint's last
    // stored state (a task that just disabled it, a deletion).
    let Some(Some((endpoint, stored))) =
        retry_store(&shared, &mut stop, || shared.store.endpoint(&endpoint_id)).await
    else {
        return;
    };
    let Some(mut progress) = start_progress(&shared, &endpoint, stored, &mut stop).await else {
        return;
    };
    if progress.disabled_at.is_some() {
        return;
    }
    let mut saver = Saver::new(&progress);
    let mut checkpoints = shared.checkpoints.clone();
    loop {
        if *stop.borrow() {
            break;
        }
        let until = checkpoints.borrow_and_update().clone();
        let events = match shared
            .store
            .events_after(&progress.cursor, &until, EVENTS_PER_READ)
            .await
        {
            Ok(events) => events,
            Err(error) => {
                tracing::warn!(%error, endpoint = %endpoint.id, "cannot read webhook events; retrying");
                tokio::select! {
                    () = tokio::time::sleep(shared.settings.poll) => continue,
                    () = stopped(&mut stop) => break,
                }
            }
        };
        let idle = events.is_empty();
        let mut read: HashMap<String, u32> = HashMap::new();
        for event in events {
            let key = partition_key(&event.source_topic, event.source_partition);
            *read.entry(key.clone()).or_default() += 1;
            let wanted = event.created_at >= progress.floor
                && EventType::parse(&event.event_type)
                    .is_some_and(|kind| endpoint.events.contains(&kind));
            if wanted {
                pending_since.store(event.created_at, Ordering::Relaxed);
                match deliver(&shared, &endpoint, &event, &mut progress, &mut stop).await {
                    Ended::Done => {}
                    Ended::Stopped => {
                        saver.save(&shared, &endpoint.id, &progress, true).await;
                        return;
                    }
                    Ended::Disabled => {
                        tracing::warn!(endpoint = %endpoint.id, url = %endpoint.url, "webhook endpoint disabled: failing for too long");
                        // Retried: until it is stored, the endpoint would be started again.
                        // Its attempts go first (bounded: the disabling is stored anyway).
                        attempts_recorded(&shared).await;
                        retry_store(&shared, &mut stop, || {
                            shared.store.save_progress(&endpoint.id, &progress)
                        })
                        .await;
                        return;
                    }
                }
            }
            progress.cursor.insert(key, event.source_offset + 1);
            saver.save(&shared, &endpoint.id, &progress, false).await;
        }
        // A partition read whole (fewer events than asked for): nothing else below its
        // stored end, so the cursor goes there and the partition is not read again until
        // the end moves.
        for (key, next) in &until {
            if read.get(key).copied().unwrap_or(0) < EVENTS_PER_READ {
                let at = progress.cursor.entry(key.clone()).or_insert(0);
                *at = (*at).max(*next);
            }
        }
        if !idle {
            saver.save(&shared, &endpoint.id, &progress, false).await;
            continue;
        }
        pending_since.store(0, Ordering::Relaxed);
        saver.save(&shared, &endpoint.id, &progress, true).await;
        tokio::select! {
            changed = checkpoints.changed() => if changed.is_err() { break },
            () = stopped(&mut stop) => break,
        }
    }
    saver.save(&shared, &endpoint.id, &progress, true).await;
}

/// The endpoint's progress to start from: stored, or from its creation; a pending replay
/// applied (cursor back to its `since`, enabled again).
async fn start_progress(
    shared: &Shared,
    endpoint: &StoredEndpoint,
    stored: Option<Progress>,
    stop: &mut watch::Receiver<bool>,
) -> Option<Progress> {
    let until = shared.checkpoints.borrow().clone();
    let mut progress = match stored {
        Some(progress) => progress,
        None => Progress {
            cursor: retry_store(shared, stop, || {
                shared.store.cursor_from(endpoint.created_at, &until)
            })
            .await?,
            floor: endpoint.created_at,
            ..Progress::default()
        },
    };
    if let Some((since, at)) = endpoint.replay
        && at > progress.replay_applied
    {
        progress = Progress {
            cursor: retry_store(shared, stop, || shared.store.cursor_from(since, &until)).await?,
            floor: since,
            replay_applied: at,
            ..Progress::default()
        };
        tracing::info!(endpoint = %endpoint.id, since, "webhook replay started");
    }
    retry_store(shared, stop, || {
        shared.store.save_progress(&endpoint.id, &progress)
    })
    .await?;
    Some(progress)
}

/// Retries a store call until it succeeds or `stop` (`None`).
async fn retry_store<T, F, Fut>(
    shared: &Shared,
    stop: &mut watch::Receiver<bool>,
    mut call: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, crate::store::StoreError>>,
{
    loop {
        match call().await {
            Ok(value) => return Some(value),
            Err(error) => tracing::warn!(%error, "webhook store call failed; retrying"),
        }
        if *stop.borrow() {
            return None;
        }
        tokio::select! {
            () = tokio::time::sleep(shared.settings.poll.max(Duration::from_millis(200))) => {}
            () = stopped(stop) => return None,
        }
    }
}

/// The last progress stored for an endpoint, and when: saves only what changed, at most
/// every [`SAVE_EVERY`] unless forced.
struct Saver {
    saved: Progress,
    at: Instant,
}

impl Saver {
    fn new(progress: &Progress) -> Self {
        Self {
            saved: progress.clone(),
            at: Instant::now(),
        }
    }

    async fn save(&mut self, shared: &Shared, endpoint_id: &str, progress: &Progress, force: bool) {
        if *progress == self.saved || (!force && self.at.elapsed() < SAVE_EVERY) {
            return;
        }
        // The attempts the cursor covers are written first: a cursor stored ahead of them
        // and a SIGKILL would leave delivered events out of the attempt log for good (they
        // are not sent again).
        if !attempts_recorded(shared).await {
            tracing::warn!(endpoint = %endpoint_id, "delivery attempts not written yet; the cursor waits");
            // Tried again a period from now, not at every event meanwhile.
            self.at = Instant::now();
            return;
        }
        match shared.store.save_progress(endpoint_id, progress).await {
            Ok(()) => {
                self.saved = progress.clone();
                self.at = Instant::now();
            }
            Err(error) => {
                tracing::warn!(%error, endpoint = %endpoint_id, "cannot store a webhook cursor; will retry");
            }
        }
    }
}

/// Sends `event` until a 2xx, `retry_for`, `disable_after` or `stop`. The event's first
/// attempt and its attempt count live in `progress`, stored at every failure, so a restart
/// resumes its retries (period, numbering, backoff) where they were.
async fn deliver(
    shared: &Shared,
    endpoint: &StoredEndpoint,
    event: &EventRow,
    progress: &mut Progress,
    stop: &mut watch::Receiver<bool>,
) -> Ended {
    let Some(kind) = EventType::parse(&event.event_type) else {
        return Ended::Done;
    };
    let body = WebhookEvent {
        id: event.event_id.clone(),
        kind,
        created_at: Timestamp::from_millis(event.created_at),
        data: event.data.clone(),
    }
    .body();
    if progress.retry_event.as_deref() != Some(event.event_id.as_str()) {
        // Stored retries belong to another event (the endpoint's events changed order
        // after a restart, or a replay): this one starts its own.
        progress.retry_event = Some(event.event_id.clone());
        progress.retry_since = None;
        progress.attempts = 0;
    }
    loop {
        let retry_since = *progress
            .retry_since
            .get_or_insert_with(|| Timestamp::now().as_millis());
        let attempt = progress.attempts + 1;
        let sent = tokio::select! {
            sent = post(shared, endpoint, &body) => sent,
            () = stopped(stop) => return Ended::Stopped,
        };
        let now = Timestamp::now();
        progress.attempts = attempt;
        let (status_code, error) = match sent {
            Ok(status) => (Some(status), None),
            Err(error) => (None, Some(error)),
        };
        let delivered = status_code.is_some_and(|status| (200..300).contains(&status));
        let outcome = if delivered {
            progress.failing_since = None;
            DeliveryOutcome::Delivered
        } else {
            let failing_since = *progress.failing_since.get_or_insert(now.as_millis());
            if now.as_millis().saturating_sub(failing_since)
                >= millis(shared.settings.disable_after)
            {
                progress.disabled_at = Some(now.as_millis());
                DeliveryOutcome::Failed
            } else if now.as_millis().saturating_sub(retry_since)
                >= millis(shared.settings.retry_for)
            {
                DeliveryOutcome::Failed
            } else {
                DeliveryOutcome::Retrying
            }
        };
        metrics::counter!("referral_webhook_deliveries_total", "outcome" => outcome.as_str())
            .increment(1);
        let _ = shared.attempts.send(ToRecorder::Attempt(
            endpoint.id.clone(),
            DeliveryAttempt {
                event_id: event.event_id.clone(),
                kind,
                attempt,
                status_code,
                error,
                outcome,
                attempted_at: now,
            },
        ));
        match outcome {
            DeliveryOutcome::Delivered => {
                metrics::histogram!("referral_webhook_delivery_delay_seconds")
                    .record((now.as_millis() - event.created_at).max(0) as f64 / 1_000.0);
                progress.clear_retries();
                return Ended::Done;
            }
            // Disabled: the event keeps its stored retries (a replay starts afresh).
            DeliveryOutcome::Failed if progress.disabled_at.is_some() => return Ended::Disabled,
            DeliveryOutcome::Failed => {
                progress.clear_retries();
                return Ended::Done;
            }
            DeliveryOutcome::Retrying => {}
        }
        // The progress carries the cursor past events just delivered: their attempts first.
        if !attempts_recorded(shared).await {
            tracing::warn!(endpoint = %endpoint.id, "delivery attempts not written yet; the retries are stored at the next failure");
        } else if let Err(error) = shared.store.save_progress(&endpoint.id, progress).await {
            tracing::warn!(%error, endpoint = %endpoint.id, "cannot store a webhook's retries; will retry");
        }
        let delay = retry_delay(attempt, shared.settings.retry_base, rand::random::<f64>());
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stopped(stop) => return Ended::Stopped,
        }
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// One POST: the receiver's status, or why there was none.
async fn post(shared: &Shared, endpoint: &StoredEndpoint, body: &str) -> Result<u16, String> {
    let url = url::Url::parse(&endpoint.url).map_err(|_| "the URL does not parse".to_owned())?;
    if !shared.settings.allow_private {
        guard::check_scheme(&url, false)?;
        if !guard::literal_host_allowed(&url) {
            return Err("the address is loopback, private, link-local or metadata".into());
        }
    }
    let signature = sign::signature_header(
        &endpoint.secret,
        Timestamp::now().as_millis().div_euclid(1_000),
        body.as_bytes(),
    );
    let response = shared
        .client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, signature)
        .body(body.to_owned())
        .send()
        .await
        .map_err(describe)?;
    Ok(response.status().as_u16())
}

/// A transport failure in a few words (no URL: the attempt log names the endpoint).
fn describe(error: reqwest::Error) -> String {
    use std::error::Error;
    let kind = if error.is_timeout() {
        "timeout"
    } else if error.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    let mut cause = error.source();
    let mut deepest = None;
    while let Some(inner) = cause {
        deepest = Some(inner.to_string());
        cause = inner.source();
    }
    match deepest {
        Some(cause) => format!("{kind}: {cause}"),
        None => kind.to_owned(),
    }
}

/// What the attempt recorder is sent.
enum ToRecorder {
    /// An attempt of the endpoint with this id.
    Attempt(String, DeliveryAttempt),
    /// Answered once every attempt sent before it is written.
    Flush(oneshot::Sender<()>),
}

/// Longest a cursor's save waits for the attempts before it to be written.
const FLUSH_WAIT: Duration = Duration::from_secs(5);

/// Whether every attempt sent so far has been written (waits at most [`FLUSH_WAIT`]).
async fn attempts_recorded(shared: &Shared) -> bool {
    let (flushed, written) = oneshot::channel();
    if shared.attempts.send(ToRecorder::Flush(flushed)).is_err() {
        tracing::error!("the delivery attempt recorder is gone; cursors are not stored");
        return false;
    }
    matches!(tokio::time::timeout(FLUSH_WAIT, written).await, Ok(Ok(())))
}

/// Writes attempts in batches until every sender is gone; answers a flush once what came
/// before it is written.
async fn record_attempts(
    store: Arc<dyn WebhookStore>,
    mut recorded: mpsc::UnboundedReceiver<ToRecorder>,
) {
    let mut batch = Vec::new();
    let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();
    let take = |message: ToRecorder,
                batch: &mut Vec<(String, DeliveryAttempt)>,
                flushes: &mut Vec<oneshot::Sender<()>>| match message {
        ToRecorder::Attempt(endpoint, attempt) => batch.push((endpoint, attempt)),
        ToRecorder::Flush(flushed) => flushes.push(flushed),
    };
    loop {
        let open = tokio::select! {
            message = recorded.recv() => match message {
                Some(message) => { take(message, &mut batch, &mut flushes); true }
                None => false,
            },
            () = tokio::time::sleep(RECORD_EVERY), if !batch.is_empty() => true,
        };
        while let Ok(message) = recorded.try_recv() {
            take(message, &mut batch, &mut flushes);
        }
        if !batch.is_empty() {
            match store.record_attempts(&batch).await {
                Ok(()) => batch.clear(),
                Err(error) => {
                    tracing::warn!(%error, attempts = batch.len(), "cannot record delivery attempts; retrying");
                    if batch.len() > 100_000 {
                        batch.clear();
                    }
                }
            }
        }
        if batch.is_empty() {
            // Everything sent before these flushes is written (a flush waiting behind a
            // failed write waits for the retry, or gives up after its own bound).
            for flushed in flushes.drain(..) {
                let _ = flushed.send(());
            }
        }
        if !open {
            return;
        }
        if !batch.is_empty() {
            tokio::time::sleep(RECORD_EVERY).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_flush_is_answered_only_once_the_attempts_before_it_are_written() {
        let dir = tempfile::tempdir().unwrap();
        crate::store::sqlite::open(dir.path(), crate::config::SqliteSynchronous::Normal).unwrap();
        let store: Arc<dyn WebhookStore> =
            Arc::new(super::super::sqlite::SqliteWebhooks::open(dir.path()).unwrap());
        let (to_recorder, recorded) = mpsc::unbounded_channel();
        let recorder = tokio::spawn(record_attempts(store.clone(), recorded));
        for attempt in 1..=3 {
            to_recorder
                .send(ToRecorder::Attempt(
                    "wh_1".to_owned(),
                    DeliveryAttempt {
                        event_id: format!("evt_{attempt}"),
                        kind: EventType::ConversionConfirmed,
                        attempt,
                        status_code: Some(500),
                        error: None,
                        outcome: DeliveryOutcome::Retrying,
                        attempted_at: Timestamp::from_millis(1_000 + i64::from(attempt)),
                    },
                ))
                .unwrap();
        }
        let (flushed, written) = oneshot::channel();
        to_recorder.send(ToRecorder::Flush(flushed)).unwrap();
        tokio::time::timeout(Duration::from_secs(10), written)
            .await
            .expect("the flush is answered")
            .unwrap();
        // No wait: the flush's answer means the three are in the store now.
        let stored = store.deliveries("wh_1", 10).await.unwrap();
        assert_eq!(stored.len(), 3, "{stored:?}");
        drop(to_recorder);
        recorder.await.unwrap();
    }

    #[test]
    fn the_first_retry_comes_within_five_seconds_and_later_ones_back_off_to_an_hour() {
        let base = Duration::from_secs(2);
        assert_eq!(retry_delay(1, base, 0.0), Duration::from_secs(1));
        assert_eq!(retry_delay(1, base, 1.0), Duration::from_secs(2));
        assert!(retry_delay(1, base, 0.999) < Duration::from_secs(5));
        assert_eq!(retry_delay(2, base, 1.0), Duration::from_secs(4));
        assert_eq!(retry_delay(5, base, 1.0), Duration::from_secs(32));
        assert_eq!(retry_delay(40, base, 1.0), MAX_RETRY_DELAY);
        assert_eq!(retry_delay(40, base, 0.0), MAX_RETRY_DELAY / 2);
    }
}
