//! Waiting for what the single writer stores: the verdicts of commands, and the landing of
//! clicks that commands name. Both are answered in batches, in both modes.
//!
//! * Embedded ([`BatchWaiter::in_process`]): the consumer that decided a command runs in
//!   this process and hands every verdict over once its flush is stored
//!   ([`BatchWaiter::deliver`]); nothing polls the store.
//! * Production ([`BatchWaiter::spawn`]): the aggregator writes elsewhere and a verdict (or
//!   a click) appears in ClickHouse when the flush that holds it is stored (hundreds of
//!   milliseconds). Polling the store once per waiting request costs a ClickHouse query per
//!   request per poll: measured by `referral-load`, 50 commands/s took ClickHouse from 0.08
//!   to 0.89 of a core and slowed every other read; again (2026-12-04) when each command
//!   polled `attributions FINAL` for its fresh click, nine times per command on average.
//!   One task looks up every waiting id at once, every `poll` interval, and hands each
//!   answer to its waiters: the store's work no longer grows with the requests in flight.
//!
//! Invariant: a waiter is answered at most once, and only with what a stored flush holds; a
//! waiter that gives up (its caller's timeout) is dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use referral_schemas::ApiError;
use referral_schemas::messages::Verdict;
use tokio::sync::{Notify, oneshot};

use crate::store::{AttributionReader, StoreError};

/// Most ids in one query (a bound on its size); a round queries all waiting ids.
const MAX_IDS_PER_LOOKUP: usize = 1_000;
/// Ids waited on before those whose waiter gave up are forgotten (in process nothing else
/// forgets them: a command that was never decided has no verdict to deliver).
const PRUNE_ABOVE: usize = 4_096;
/// Longest one look-up may take; a hung store must not stop every answer.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

type Waiter<T> = oneshot::Sender<Result<T, ApiError>>;

/// Commands waiting for their verdicts.
pub type VerdictWaiter = BatchWaiter<Verdict>;
/// Commands waiting for the click they name to be stored (production).
pub type LandingWaiter = BatchWaiter<()>;

/// How one round asks the store about every waiting id.
#[async_trait]
pub trait BatchLookup<T>: Send + Sync + 'static {
    /// The answered ones among `ids`.
    async fn look_up(&self, ids: &[String]) -> Result<Vec<(String, T)>, StoreError>;
    /// What is looked up, for logs and the metric label.
    fn what(&self) -> &'static str;
}

/// Verdicts of commands, once the flush that decided them is stored.
pub struct Verdicts(pub Arc<dyn AttributionReader>);

#[async_trait]
impl BatchLookup<Verdict> for Verdicts {
    async fn look_up(&self, ids: &[String]) -> Result<Vec<(String, Verdict)>, StoreError> {
        self.0.verdicts(ids).await
    }
    fn what(&self) -> &'static str {
        "verdicts"
    }
}

/// Attributions stored in any state (a deleted one has landed too).
pub struct Landings(pub Arc<dyn AttributionReader>);

#[async_trait]
impl BatchLookup<()> for Landings {
    async fn look_up(&self, ids: &[String]) -> Result<Vec<(String, ())>, StoreError> {
        let stored = self.0.stored_attribution_ids(ids).await?;
        Ok(stored.into_iter().map(|id| (id, ())).collect())
    }
    fn what(&self) -> &'static str {
        "landings"
    }
}

/// Requests waiting for an answer under an id, answered together.
pub struct BatchWaiter<T> {
    waiting: Mutex<HashMap<String, Vec<Waiter<T>>>>,
    /// Wakes the look-up task when the first request starts waiting.
    arrived: Notify,
    /// Set at shutdown: waiting requests are answered 503 and no new one waits.
    stopped: AtomicBool,
}

impl<T: Clone + Send + 'static> BatchWaiter<T> {
    /// Waiters for answers that this process delivers itself.
    pub fn in_process() -> Arc<Self> {
        Arc::new(Self {
            waiting: Mutex::new(HashMap::new()),
            arrived: Notify::new(),
            stopped: AtomicBool::new(false),
        })
    }

    /// Starts the look-up task; it ends when `stop` resolves.
    pub fn spawn(
        lookup: impl BatchLookup<T>,
        poll: Duration,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Arc<Self> {
        let waiter = Self::in_process();
        let task = waiter.clone();
        tokio::spawn(async move {
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    () = task.lookup_round(&lookup, poll) => {}
                    () = &mut stop => {
                        task.stop();
                        return;
                    }
                }
            }
        });
        waiter
    }

    /// Resolves with the id's answer once it is there (the caller bounds the wait).
    #[cfg(test)]
    pub async fn wait(&self, id: &str) -> Result<T, ApiError> {
        self.expect(id)?.await
    }

    /// Starts waiting for an id's answer before the request that causes it is published,
    /// so that an answer delivered at once is not missed; the returned future resolves
    /// with it.
    pub fn expect(
        &self,
        id: &str,
    ) -> Result<impl Future<Output = Result<T, ApiError>> + use<T>, ApiError> {
        let (sender, receiver) = oneshot::channel();
        {
            let mut waiting = self.lock();
            // Checked under the lock: `stop` sets the flag before it empties the map, so a
            // waiter is either refused here or answered there, never left behind.
            if self.stopped.load(Ordering::Acquire) {
                return Err(shutting_down());
            }
            if waiting.len() >= PRUNE_ABOVE {
                waiting.retain(|_, waiters| {
                    waiters.retain(|waiter| !waiter.is_closed());
                    !waiters.is_empty()
                });
            }
            waiting.entry(id.to_owned()).or_default().push(sender);
        }
        self.arrived.notify_one();
        Ok(async move { receiver.await.unwrap_or_else(|_| Err(shutting_down())) })
    }

    /// Hands each answer to the requests waiting for it.
    pub fn deliver(&self, answers: &[(String, T)]) {
        if answers.is_empty() {
            return;
        }
        let mut waiting = self.lock();
        if waiting.is_empty() {
            return;
        }
        for (id, answer) in answers {
            for waiter in waiting.remove(id).unwrap_or_default() {
                let _ = waiter.send(Ok(answer.clone()));
            }
        }
    }

    /// Answers every waiting request (503: its command may still be applied) and refuses
    /// new ones.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        let waiting = std::mem::take(&mut *self.lock());
        for waiter in waiting.into_values().flatten() {
            let _ = waiter.send(Err(shutting_down()));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Waiter<T>>>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One look-up of every waiting id (in queries of at most [`MAX_IDS_PER_LOOKUP`]),
    /// then a pause (or a wait for the first one).
    async fn lookup_round(&self, lookup: &dyn BatchLookup<T>, poll: Duration) {
        let ids: Vec<String> = {
            let mut waiting = self.lock();
            waiting.retain(|_, waiters| {
                waiters.retain(|waiter| !waiter.is_closed());
                !waiters.is_empty()
            });
            waiting.keys().cloned().collect()
        };
        if ids.is_empty() {
            self.arrived.notified().await;
            return;
        }
        metrics::histogram!("referral_store_lookup_ids", "what" => lookup.what())
            .record(ids.len() as f64);
        for chunk in ids.chunks(MAX_IDS_PER_LOOKUP) {
            self.lookup(lookup, chunk).await;
        }
        tokio::time::sleep(poll).await;
    }

    async fn lookup(&self, lookup: &dyn BatchLookup<T>, ids: &[String]) {
        let what = lookup.what();
        let found = match tokio::time::timeout(LOOKUP_TIMEOUT, lookup.look_up(ids)).await {
            Ok(found) => found,
            Err(_) => {
                tracing::warn!(ids = ids.len(), what, "store look-up timed out; retried");
                return;
            }
        };
        match found {
            Ok(found) => self.deliver(&found),
            // What is waited for is on the log and will be stored: look again as the store
            // comes back (each caller's timeout bounds its wait).
            Err(error) if error.is_unavailable() => {
                tracing::warn!(%error, what, "store unavailable; look-up retried");
            }
            Err(error) => {
                tracing::error!(%error, what, "cannot look up in the store");
                let mut waiting = self.lock();
                for id in ids {
                    for waiter in waiting.remove(id).unwrap_or_default() {
                        let _ = waiter.send(Err(ApiError::internal()));
                    }
                }
            }
        }
    }
}

fn shutting_down() -> ApiError {
    ApiError::overloaded("the API is shutting down; the command may still be applied")
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;

    use crate::store::{AttributionPage, CodePage, MentorTotals, StoreError};
    use referral_schemas::attribution::DeletionView;
    use referral_schemas::messages::Rejection;
    use referral_schemas::query::{AttributionFilter, HourRange, PageRequest};
    use referral_schemas::{Attribution, ReferralCode, Timestamp};

    use super::*;

    /// Decides a command after it was looked up `decide_after` times; counts look-ups.
    struct SlowWriter {
        lookups: AtomicUsize,
        decide_after: usize,
    }

    #[async_trait]
    impl AttributionReader for SlowWriter {
        async fn attribution(&self, _: &str) -> Result<Option<Attribution>, StoreError> {
            Ok(None)
        }
        async fn attributions(
            &self,
            _: &AttributionFilter,
            _: PageRequest,
        ) -> Result<AttributionPage, StoreError> {
            unreachable!("not used")
        }
        async fn attributions_after(
            &self,
            _: &AttributionFilter,
            _: u32,
        ) -> Result<AttributionPage, StoreError> {
            unreachable!("not used")
        }
        async fn top_mentors(
            &self,
            _: crate::store::TopWindow,
            _: referral_schemas::query::RankBy,
            _: u32,
        ) -> Result<Vec<(String, MentorTotals)>, StoreError> {
            unreachable!("not used")
        }
        async fn mentor_slots(
            &self,
            _: &str,
            _: &crate::store::span::SlotSpan,
        ) -> Result<Vec<crate::store::SlotCounts>, StoreError> {
            unreachable!("not used")
        }
        async fn mentor_totals(&self, _: &str, _: HourRange) -> Result<MentorTotals, StoreError> {
            unreachable!("not used")
        }
        async fn referral_code(&self, _: &str) -> Result<Option<ReferralCode>, StoreError> {
            Ok(None)
        }
        async fn referral_codes(
            &self,
            _: Option<&str>,
            _: PageRequest,
        ) -> Result<CodePage, StoreError> {
            unreachable!("not used")
        }
        async fn verdict(&self, _: &str) -> Result<Option<Verdict>, StoreError> {
            unreachable!("the waiter looks verdicts up in batches")
        }
        async fn stored_attribution_ids(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
            let round = self.lookups.fetch_add(1, Ordering::SeqCst) + 1;
            if round < self.decide_after {
                return Ok(Vec::new());
            }
            Ok(ids
                .iter()
                .filter(|id| !id.starts_with("never"))
                .cloned()
                .collect())
        }
        async fn verdicts(&self, ids: &[String]) -> Result<Vec<(String, Verdict)>, StoreError> {
            let round = self.lookups.fetch_add(1, Ordering::SeqCst) + 1;
            if round < self.decide_after {
                return Ok(Vec::new());
            }
            Ok(ids
                .iter()
                .filter(|id| !id.starts_with("never"))
                .map(|id| {
                    let verdict = if id.starts_with("rejected") {
                        Verdict::Rejected {
                            reason: Rejection::AttributionNotFound,
                        }
                    } else {
                        Verdict::Deleted {
                            deletion: DeletionView {
                                id: id.clone(),
                                deleted: true,
                                deleted_at: Timestamp::from_millis(0),
                            },
                        }
                    };
                    (id.clone(), verdict)
                })
                .collect())
        }
    }

    const POLL: Duration = Duration::from_millis(10);

    /// A store that decides (or lands) every id from its third look-up on.
    fn slow_reader() -> Arc<SlowWriter> {
        Arc::new(SlowWriter {
            lookups: AtomicUsize::new(0),
            decide_after: 3,
        })
    }

    /// A waiter's shutdown signal: the sender dropped or sent.
    async fn until(stopped: oneshot::Receiver<()>) {
        let _ = stopped.await;
    }

    #[tokio::test]
    async fn many_waiters_share_few_lookups_and_each_gets_its_own_verdict() {
        let reader = slow_reader();
        let (stop, stopped) = oneshot::channel::<()>();
        let waiter = VerdictWaiter::spawn(Verdicts(reader.clone()), POLL, until(stopped));
        let mut tasks = tokio::task::JoinSet::new();
        for index in 0..200 {
            let waiter = waiter.clone();
            tasks.spawn(async move {
                let id = if index % 2 == 0 {
                    format!("rejected-{index}")
                } else {
                    format!("deleted-{index}")
                };
                (id.clone(), waiter.wait(&id).await)
            });
        }
        while let Some(joined) = tasks.join_next().await {
            let (id, verdict) = joined.unwrap();
            match verdict.unwrap() {
                Verdict::Rejected { .. } => assert!(id.starts_with("rejected")),
                Verdict::Deleted { deletion } => assert_eq!(deletion.id, id),
                other => panic!("unexpected {other:?}"),
            }
        }
        let lookups = reader.lookups.load(Ordering::SeqCst);
        assert!(lookups < 20, "{lookups} look-ups for 200 commands");
        let _ = stop.send(());
    }

    #[tokio::test]
    async fn clicks_waited_for_together_land_in_few_lookups_and_a_missing_one_waits() {
        let reader = slow_reader();
        let (_stop, stopped) = oneshot::channel::<()>();
        let landings = LandingWaiter::spawn(Landings(reader.clone()), POLL, until(stopped));
        let mut tasks = tokio::task::JoinSet::new();
        for index in 0..100 {
            let landings = landings.clone();
            tasks.spawn(async move { landings.wait(&format!("attr_{index}")).await });
        }
        while let Some(joined) = tasks.join_next().await {
            joined.unwrap().unwrap();
        }
        let lookups = reader.lookups.load(Ordering::SeqCst);
        assert!(lookups < 15, "{lookups} look-ups for 100 clicks");
        let missing =
            tokio::time::timeout(Duration::from_millis(60), landings.wait("never-stored")).await;
        assert!(missing.is_err(), "a click that is not stored does not land");
    }

    #[tokio::test]
    async fn shutdown_answers_every_waiter_and_refuses_new_ones() {
        let reader = Arc::new(SlowWriter {
            lookups: AtomicUsize::new(0),
            decide_after: usize::MAX,
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let waiter = VerdictWaiter::spawn(Verdicts(reader), Duration::from_millis(5), async {
            let _ = stopped.await;
        });
        let pending = {
            let waiter = waiter.clone();
            tokio::spawn(async move { waiter.wait("deleted-7").await })
        };
        tokio::time::sleep(Duration::from_millis(30)).await;
        let _ = stop.send(());
        let answered = tokio::time::timeout(Duration::from_secs(2), pending)
            .await
            .expect("answered at shutdown")
            .unwrap();
        assert_eq!(answered.unwrap_err().status().as_u16(), 503);
        let late = waiter.wait("deleted-8").await;
        assert_eq!(late.unwrap_err().status().as_u16(), 503);
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_is_dropped_and_others_still_answered() {
        let reader = Arc::new(SlowWriter {
            lookups: AtomicUsize::new(0),
            decide_after: 1,
        });
        let (_stop, stopped) = oneshot::channel::<()>();
        let waiter = VerdictWaiter::spawn(Verdicts(reader), Duration::from_millis(5), async {
            let _ = stopped.await;
        });
        let gave_up =
            tokio::time::timeout(Duration::from_millis(50), waiter.wait("never-decided")).await;
        assert!(gave_up.is_err());
        let answered = tokio::time::timeout(Duration::from_secs(2), waiter.wait("deleted-1"))
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(answered, Verdict::Deleted { .. }));
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(
            waiter.lock().is_empty(),
            "the abandoned waiter is still looked up"
        );
    }
}
