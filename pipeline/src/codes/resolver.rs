//! Resolving a click's code to its mentor at the edge.
//!
//! The [`CodeDirectory`] holds every live code. In embedded mode the consumer updates it
//! before a code change is answered, so a miss is final. With Kafka, the directory follows
//! the compacted codes topic; a change made a moment ago may not have arrived yet, so a miss
//! waits (bounded) until the directory is known to be complete as of the miss: the follower
//! reaches the end of the topic again, or a freshness probe (the topic's end offsets, one
//! broker request shared by every miss of the moment, at most 40 a second) finds nothing left
//! to apply. The answer is then remembered for a short while (negative caching): a storm of
//! unknown codes costs a few milliseconds per code per second, and never a look-up against a
//! store.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::{CodeDirectory, CodeTarget};
use crate::kafka::codes::CodeSync;

/// Longest a miss waits for the follower's fresh view.
pub const MISS_WAIT: Duration = Duration::from_millis(500);
/// How long a confirmed miss is remembered. With [`MISS_WAIT`] and the follower's fetch
/// wait, a new code is honoured within about 2 s, inside the 5 s promise.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(1);
/// Remembered misses at most; past this the memory is dropped wholesale.
const NEGATIVE_CAPACITY: usize = 100_000;

/// Code -> mentor, with a bounded wait and negative caching on misses.
pub struct CodeResolver {
    directory: CodeDirectory,
    /// Present when the directory follows a topic (Kafka mode).
    sync: Option<CodeSync>,
    /// Codes recently found unknown, and when.
    misses: Mutex<HashMap<String, Instant>>,
}

impl CodeResolver {
    /// A directory the writer keeps exact (embedded mode): misses are final.
    pub fn exact(directory: CodeDirectory) -> Self {
        Self {
            directory,
            sync: None,
            misses: Mutex::new(HashMap::new()),
        }
    }

    /// A directory following the codes topic.
    pub fn following(directory: CodeDirectory, sync: CodeSync) -> Self {
        Self {
            directory,
            sync: Some(sync),
            misses: Mutex::new(HashMap::new()),
        }
    }

    /// Waits, at most `limit`, until the directory maps `code` to `target` (`None`: until
    /// the code is gone). The API calls it after a code command so that its own clicks and
    /// redirects honour the change before the command is answered. True when they do.
    pub async fn wait_for(&self, code: &str, target: Option<&CodeTarget>, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.directory.target_of(code).as_ref() == target {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the directory is complete enough to serve (the follower caught up once).
    pub fn is_loaded(&self) -> bool {
        self.sync.as_ref().is_none_or(CodeSync::is_loaded)
    }

    /// What a normalized code stands for, if it is live.
    pub async fn resolve(&self, code: &str) -> Option<CodeTarget> {
        if let Some(target) = self.directory.target_of(code) {
            return Some(target);
        }
        let sync = self.sync.as_ref()?;
        if self.recently_missed(code) {
            metrics::counter!("referral_code_misses_total", "resolution" => "negative_cache")
                .increment(1);
            return None;
        }
        sync.wait_for_fresh_view(MISS_WAIT).await;
        if let Some(target) = self.directory.target_of(code) {
            metrics::counter!("referral_code_misses_total", "resolution" => "found_after_wait")
                .increment(1);
            return Some(target);
        }
        metrics::counter!("referral_code_misses_total", "resolution" => "unknown").increment(1);
        self.remember_miss(code);
        None
    }

    fn recently_missed(&self, code: &str) -> bool {
        let misses = self.misses.lock().unwrap_or_else(PoisonError::into_inner);
        misses
            .get(code)
            .is_some_and(|at| at.elapsed() < NEGATIVE_TTL)
    }

    fn remember_miss(&self, code: &str) {
        let mut misses = self.misses.lock().unwrap_or_else(PoisonError::into_inner);
        if misses.len() >= NEGATIVE_CAPACITY {
            misses.retain(|_, at| at.elapsed() < NEGATIVE_TTL);
            if misses.len() >= NEGATIVE_CAPACITY {
                misses.clear();
            }
        }
        misses.insert(code.to_owned(), Instant::now());
    }
}
