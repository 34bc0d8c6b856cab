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

/// A change the writer committed, to be mirrored in the directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CodeChange {
    Assigned { code: String, mentor_id: String },
    Retired { code: String },
}

/// Shared, cheap to clone. Keys are normalized (upper-case) codes.
#[derive(Clone, Debug, Default)]
pub struct CodeDirectory {
    mentors: Arc<RwLock<HashMap<Box<str>, Arc<str>>>>,
}

impl CodeDirectory {
    pub fn from_assignments(assignments: impl IntoIterator<Item = (String, String)>) -> Self {
        let mentors = assignments
            .into_iter()
            .map(|(code, mentor)| (code.into_boxed_str(), Arc::from(mentor)))
            .collect();
        Self {
            mentors: Arc::new(RwLock::new(mentors)),
        }
    }

    /// The mentor a normalized code belongs to now.
    pub fn mentor_for(&self, code: &str) -> Option<Arc<str>> {
        // A poisoned lock only means a writer panicked mid-update of a HashMap insert/remove,
        // which leaves the map itself consistent; keep serving.
        let mentors = self.mentors.read().unwrap_or_else(PoisonError::into_inner);
        mentors.get(code).cloned()
    }

    pub fn apply(&self, changes: &[CodeChange]) {
        if changes.is_empty() {
            return;
        }
        let mut mentors = self.mentors.write().unwrap_or_else(PoisonError::into_inner);
        for change in changes {
            match change {
                CodeChange::Assigned { code, mentor_id } => {
                    mentors.insert(code.as_str().into(), Arc::from(mentor_id.as_str()));
                }
                CodeChange::Retired { code } => {
                    mentors.remove(code.as_str());
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.mentors
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
        let directory = CodeDirectory::from_assignments([("JAN-1".to_owned(), "usr_1".to_owned())]);
        assert_eq!(directory.mentor_for("JAN-1").as_deref(), Some("usr_1"));
        directory.apply(&[
            CodeChange::Assigned {
                code: "JAN-1".into(),
                mentor_id: "usr_2".into(),
            },
            CodeChange::Assigned {
                code: "FEB-2".into(),
                mentor_id: "usr_3".into(),
            },
            CodeChange::Retired {
                code: "FEB-2".into(),
            },
        ]);
        assert_eq!(directory.mentor_for("JAN-1").as_deref(), Some("usr_2"));
        assert_eq!(directory.mentor_for("FEB-2"), None);
        assert_eq!(directory.len(), 1);
    }
}
