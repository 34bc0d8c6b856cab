//! The code -> mentor directory the edge resolves clicks with.
//!
//! * Embedded: the consumer runs in the same process. The directory is loaded from the store
//!   at start and updated after each stored flush, before the commands' verdicts are handed
//!   over, so a code is honoured at the edge as soon as its PUT answered.
//! * Kafka: the directory follows the compacted codes topic ([`crate::kafka::codes`]).
//!
//! [`resolver`] is the edge's look-up: a bounded wait and negative caching on misses.

pub mod resolver;

pub use resolver::CodeResolver;

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

/// What the edge needs of a live code: whose clicks it records, and where its redirect
/// link sends a visitor. Cheap to clone (shared strings).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeTarget {
    pub mentor_id: Arc<str>,
    pub destination_url: Option<Arc<str>>,
}

impl CodeTarget {
    pub fn new(mentor_id: &str, destination_url: Option<&str>) -> Self {
        Self {
            mentor_id: Arc::from(mentor_id),
            destination_url: destination_url.map(Arc::from),
        }
    }
}

/// A change the writer committed, to be mirrored in the directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CodeChange {
    Assigned {
        code: String,
        mentor_id: String,
        destination_url: Option<String>,
    },
    Retired {
        code: String,
    },
}

/// Shared, cheap to clone. Keys are normalized (upper-case) codes.
#[derive(Clone, Debug, Default)]
pub struct CodeDirectory {
    targets: Arc<RwLock<HashMap<Box<str>, CodeTarget>>>,
}

impl CodeDirectory {
    /// From `(code, mentor, destination)` of every live code.
    pub fn from_assignments(
        assignments: impl IntoIterator<Item = (String, String, Option<String>)>,
    ) -> Self {
        let targets = assignments
            .into_iter()
            .map(|(code, mentor, destination)| {
                let target = CodeTarget::new(&mentor, destination.as_deref());
                (code.into_boxed_str(), target)
            })
            .collect();
        Self {
            targets: Arc::new(RwLock::new(targets)),
        }
    }

    /// What a normalized code stands for now.
    pub fn target_of(&self, code: &str) -> Option<CodeTarget> {
        // A poisoned lock only means a writer panicked mid-update of a HashMap insert/remove,
        // which leaves the map itself consistent; keep serving.
        let targets = self.targets.read().unwrap_or_else(PoisonError::into_inner);
        targets.get(code).cloned()
    }

    pub fn apply(&self, changes: &[CodeChange]) {
        if changes.is_empty() {
            return;
        }
        let mut targets = self.targets.write().unwrap_or_else(PoisonError::into_inner);
        for change in changes {
            match change {
                CodeChange::Assigned {
                    code,
                    mentor_id,
                    destination_url,
                } => {
                    let target = CodeTarget::new(mentor_id, destination_url.as_deref());
                    targets.insert(code.as_str().into(), target);
                }
                CodeChange::Retired { code } => {
                    targets.remove(code.as_str());
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.targets
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_assignments_and_retirements() {
        let directory =
            CodeDirectory::from_assignments([("JAN-1".to_owned(), "usr_1".to_owned(), None)]);
        let mentor = |code: &str| directory.target_of(code).map(|target| target.mentor_id);
        assert_eq!(mentor("JAN-1").as_deref(), Some("usr_1"));
        directory.apply(&[
            CodeChange::Assigned {
                code: "JAN-1".into(),
                mentor_id: "usr_2".into(),
                destination_url: Some("https://example.com/join".into()),
            },
            CodeChange::Assigned {
                code: "FEB-2".into(),
                mentor_id: "usr_3".into(),
                destination_url: None,
            },
            CodeChange::Retired {
                code: "FEB-2".into(),
            },
        ]);
        assert_eq!(
            directory.target_of("JAN-1"),
            Some(CodeTarget::new("usr_2", Some("https://example.com/join")))
        );
        assert_eq!(directory.target_of("FEB-2"), None);
        assert_eq!(directory.len(), 1);
    }
}
