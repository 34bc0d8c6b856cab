//! Store schemas, as ordered migrations. The aggregator (the only writer) applies them.
//!
//! Each migration runs once, in order; a store records the last one applied (SQLite:
//! `PRAGMA user_version`). A migration is never edited after it shipped: changes are new
//! migrations.

/// One schema change.
#[derive(Clone, Copy, Debug)]
pub struct Migration {
    /// 1-based, dense, in order.
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// The embedded store's schema (SQLite).
pub const SQLITE: &[Migration] = &[Migration {
    version: 1,
    name: "attributions, codes, members, totals, verdicts",
    sql: include_str!("../migrations/sqlite/0001_init.sql"),
}];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_dense_and_ordered() {
        for (index, migration) in SQLITE.iter().enumerate() {
            assert_eq!(migration.version as usize, index + 1, "{}", migration.name);
        }
    }
}
