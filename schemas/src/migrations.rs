//! Store schemas, as ordered migrations. The single writer's store opens them.
//!
//! Each migration runs once, in order; a store records the ones applied (SQLite:
//! `PRAGMA user_version`; ClickHouse: the `schema_migrations` table). A migration is never
//! edited after it shipped: changes are new migrations.

/// One schema change.
#[derive(Clone, Copy, Debug)]
pub struct Migration {
    /// 1-based, dense, in order.
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
    /// The oldest server (major, minor) that can run it. Older servers skip it without
    /// recording it, so it is applied as soon as the server is upgraded.
    pub min_server: Option<(u32, u32)>,
}

/// The embedded store's schema (SQLite).
pub const SQLITE: &[Migration] = &[
    Migration {
        version: 1,
        name: "attributions, codes, members, totals, verdicts",
        sql: include_str!("../migrations/sqlite/0001_init.sql"),
        min_server: None,
    },
    Migration {
        version: 2,
        name: "versioned rows and the consumer's checkpoints",
        sql: include_str!("../migrations/sqlite/0002_versioned_rows_and_checkpoints.sql"),
        min_server: None,
    },
    Migration {
        version: 3,
        name: "referral code destinations",
        sql: include_str!("../migrations/sqlite/0003_code_destinations.sql"),
        min_server: None,
    },
    Migration {
        version: 4,
        name: "click verdicts",
        sql: include_str!("../migrations/sqlite/0004_click_verdicts.sql"),
        min_server: None,
    },
    Migration {
        version: 5,
        name: "dashboard reads: conversions and daily totals by time",
        sql: include_str!("../migrations/sqlite/0005_dashboard_reads.sql"),
        min_server: None,
    },
    Migration {
        version: 6,
        name: "conversion reversals",
        sql: include_str!("../migrations/sqlite/0006_reversals.sql"),
        min_server: None,
    },
    Migration {
        version: 7,
        name: "webhooks: events, endpoints, progress, deliveries",
        sql: include_str!("../migrations/sqlite/0007_webhooks.sql"),
        min_server: None,
    },
];

/// The production store's schema (ClickHouse, 18.16 and later).
pub const CLICKHOUSE: &[Migration] = &[
    Migration {
        version: 1,
        name: "attributions, members, codes, verdicts, totals with checkpoints",
        sql: include_str!("../migrations/clickhouse/0001_init.sql"),
        min_server: None,
    },
    Migration {
        version: 2,
        name: "insert deduplication window on totals",
        sql: include_str!("../migrations/clickhouse/0002_insert_deduplication.sql"),
        // insert_deduplication_token arrived in 22.2; the window alone would deduplicate
        // by content, which is wrong for deltas, so both come together.
        min_server: Some((22, 2)),
    },
    Migration {
        version: 3,
        name: "referral code destinations",
        sql: include_str!("../migrations/clickhouse/0003_code_destinations.sql"),
        min_server: None,
    },
    Migration {
        version: 4,
        name: "click verdicts",
        sql: include_str!("../migrations/clickhouse/0004_click_verdicts.sql"),
        min_server: None,
    },
    Migration {
        version: 5,
        name: "dashboard reads: conversions and daily totals by time",
        sql: include_str!("../migrations/clickhouse/0005_dashboard_reads.sql"),
        min_server: None,
    },
    Migration {
        version: 6,
        name: "leaderboards by week",
        sql: include_str!("../migrations/clickhouse/0006_leaderboard_weeks.sql"),
        min_server: None,
    },
    Migration {
        version: 7,
        name: "conversion reversals",
        sql: include_str!("../migrations/clickhouse/0007_reversals.sql"),
        min_server: None,
    },
    Migration {
        version: 8,
        name: "webhooks: events, endpoints, progress, deliveries",
        sql: include_str!("../migrations/clickhouse/0008_webhooks.sql"),
        min_server: None,
    },
];

/// `(table, column)` when `statement` is a single-action `ALTER TABLE <table> ADD COLUMN
/// <column> ...` without `IF NOT EXISTS` (which ClickHouse 18.16 lacks): the runner skips it
/// when the column exists, so that such a migration is idempotent too. Backquotes are
/// removed; a database-qualified table or several actions in one statement are not
/// recognised (the test below keeps migrations to the recognised shape).
pub fn added_column(statement: &str) -> Option<(&str, &str)> {
    let words: Vec<&str> = statement.split_whitespace().collect();
    let actions = words
        .iter()
        .filter(|word| {
            ["ADD", "DROP", "MODIFY", "CLEAR", "COMMENT", "RENAME"]
                .iter()
                .any(|action| word.eq_ignore_ascii_case(action))
        })
        .count();
    match words.as_slice() {
        [alter, table_kw, table, add, column_kw, column, ..]
            if actions == 1
                && alter.eq_ignore_ascii_case("ALTER")
                && table_kw.eq_ignore_ascii_case("TABLE")
                && add.eq_ignore_ascii_case("ADD")
                && column_kw.eq_ignore_ascii_case("COLUMN")
                && !column.eq_ignore_ascii_case("IF")
                && !table.contains('.') =>
        {
            Some((table.trim_matches('`'), column.trim_matches('`')))
        }
        _ => None,
    }
}

/// The statements of a ClickHouse migration, which runs one statement per request.
/// Statements end with `;` at the end of a line; `--` comment lines are dropped.
pub fn statements(sql: &str) -> Vec<String> {
    let mut statements = Vec::new();
    let mut current = String::new();
    for line in sql.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("--") || trimmed.is_empty() {
            continue;
        }
        current.push_str(line);
        current.push('\n');
        if trimmed.ends_with(';') {
            let statement = current.trim().trim_end_matches(';').trim().to_owned();
            if !statement.is_empty() {
                statements.push(statement);
            }
            current.clear();
        }
    }
    let rest = current.trim();
    if !rest.is_empty() {
        statements.push(rest.to_owned());
    }
    statements
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_dense_and_ordered() {
        for list in [SQLITE, CLICKHOUSE] {
            for (index, migration) in list.iter().enumerate() {
                assert_eq!(migration.version as usize, index + 1, "{}", migration.name);
            }
        }
    }

    /// Whether `statement` is an `INSERT INTO t SELECT` whose `t` some ClickHouse migration
    /// creates as a ReplacingMergeTree.
    fn copies_into_replacing_table(statement: &str) -> bool {
        let Some(rest) = statement.trim_start().strip_prefix("INSERT INTO ") else {
            return false;
        };
        let table = rest.split_whitespace().next().unwrap_or_default();
        let create = format!("CREATE TABLE IF NOT EXISTS {table} ");
        rest.contains("SELECT")
            && CLICKHOUSE.iter().any(|migration| {
                statements(migration.sql).iter().any(|created| {
                    created.contains(&create) && created.contains("ReplacingMergeTree")
                })
            })
    }

    #[test]
    fn clickhouse_migrations_split_into_idempotent_statements() {
        let first = statements(CLICKHOUSE[0].sql);
        assert_eq!(first.len(), 9, "{first:#?}");
        for statement in &first {
            assert!(!statement.contains(';'), "{statement}");
            assert!(statement.contains("IF NOT EXISTS"), "{statement}");
        }
        for migration in &CLICKHOUSE[1..] {
            for statement in statements(migration.sql) {
                assert!(
                    statement.contains("IF NOT EXISTS")
                        || added_column(&statement).is_some()
                        || statement.contains("MODIFY SETTING")
                        // Declares a column's whole type: the same again changes nothing.
                        || statement.contains("MODIFY COLUMN")
                        // A copy into a table that replaces rows of the same key: the same
                        // rows again are replaced.
                        || copies_into_replacing_table(&statement)
                        // A feed made again just after (migration 7): gone already, or
                        // dropped again and made again.
                        || statement.starts_with("DROP TABLE IF EXISTS"),
                    "{statement}"
                );
            }
        }
        assert_eq!(
            added_column("ALTER TABLE referral_codes ADD COLUMN destination_url Nullable(String)"),
            Some(("referral_codes", "destination_url"))
        );
        assert_eq!(
            added_column("ALTER TABLE t ADD COLUMN IF NOT EXISTS c String"),
            None
        );
        assert_eq!(
            added_column("ALTER TABLE `t` ADD COLUMN `c` String"),
            Some(("t", "c"))
        );
        // Shapes whose skip would be wrong, or that name another database: not recognised.
        for other in [
            "ALTER TABLE t ADD COLUMN a String, ADD COLUMN b String",
            "ALTER TABLE t ADD COLUMN a String, DROP COLUMN d",
            "ALTER TABLE db.t ADD COLUMN a String",
        ] {
            assert_eq!(added_column(other), None, "{other}");
        }
        assert_eq!(added_column("ALTER TABLE t MODIFY SETTING x = 1"), None);
        // Copies: only into a table that replaces the same rows.
        assert!(copies_into_replacing_table(
            "INSERT INTO attributions_by_confirmation SELECT 1"
        ));
        assert!(!copies_into_replacing_table(
            "INSERT INTO mentor_totals SELECT 1"
        ));
        assert!(!copies_into_replacing_table(
            "INSERT INTO attributions_by_confirmation VALUES (1)"
        ));
        assert_eq!(
            statements("-- c\nSELECT 1;\n\nSELECT\n  2;\nSELECT 3"),
            vec!["SELECT 1", "SELECT\n  2", "SELECT 3"]
        );
    }
}
