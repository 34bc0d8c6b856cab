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
    Migration {
        version: 9,
        name: "flush markers for replicated totals",
        sql: include_str!("../migrations/clickhouse/0009_flush_markers.sql"),
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

/// `statement` for a replicated cluster: its DDL runs `ON CLUSTER cluster` (on every
/// replica, through ZooKeeper's DDL queue), and a `*MergeTree` engine becomes its
/// `Replicated*` kin, kept in ZooKeeper under `/clickhouse/tables/{shard}/<database>/<table>`
/// with the server's `{replica}` macro. Inserts stay as they are: replication carries them.
/// The migrations are written for one server; this is the one place that knows clusters.
pub fn on_cluster(statement: &str, cluster: &str, database: &str) -> String {
    let words: Vec<&str> = statement.split_whitespace().collect();
    let upper = |index: usize| words.get(index).map(|word| word.to_ascii_uppercase());
    let if_exists = |at: usize| {
        matches!(upper(at).as_deref(), Some("IF"))
            && matches!(upper(at + 1).as_deref(), Some("NOT" | "EXISTS"))
    };
    // Where the object's name stands among the words.
    let name_at = match (
        upper(0).as_deref(),
        upper(1).as_deref(),
        upper(2).as_deref(),
    ) {
        (Some("CREATE"), Some("TABLE"), _) => Some(if if_exists(2) { 5 } else { 2 }),
        (Some("CREATE"), Some("MATERIALIZED"), Some("VIEW")) => {
            Some(if if_exists(3) { 6 } else { 3 })
        }
        (Some("ALTER"), Some("TABLE"), _) => Some(2),
        (Some("DROP"), Some("TABLE"), _) => Some(if if_exists(2) { 4 } else { 2 }),
        _ => None,
    };
    let Some(name) = name_at.and_then(|at| words.get(at)) else {
        return statement.to_owned();
    };
    let name = name.trim_end_matches('(');
    // The name's first occurrence after the statement's keywords is the name itself.
    let keywords_end = words
        .iter()
        .take(name_at.unwrap_or(0))
        .map(|word| statement.find(word).map_or(0, |at| at + word.len()))
        .max()
        .unwrap_or(0);
    let Some(name_start) = statement[keywords_end..]
        .find(name)
        .map(|at| at + keywords_end)
    else {
        return statement.to_owned();
    };
    let name_end = name_start + name.len();
    // Other replicas run the statement in their default database: every table it names is
    // qualified with the store's.
    let qualify = |table: &str| {
        if table.contains('.') {
            table.to_owned()
        } else {
            format!("{database}.{table}")
        }
    };
    let mut rest = statement[name_end..].to_owned();
    if words
        .get(1)
        .is_some_and(|word| word.eq_ignore_ascii_case("MATERIALIZED"))
    {
        for keyword in [" TO ", "FROM "] {
            if let Some(at) = rest.find(keyword) {
                let table_start = at + keyword.len();
                let table_len = rest[table_start..]
                    .find(|c: char| c.is_whitespace() || c == ';')
                    .unwrap_or(rest.len() - table_start);
                let table = rest[table_start..table_start + table_len].to_owned();
                rest.replace_range(table_start..table_start + table_len, &qualify(&table));
            }
        }
    }
    let mut clustered = format!(
        "{}{} ON CLUSTER `{cluster}`{rest}",
        &statement[..name_start],
        qualify(name)
    );
    if let Some(engine_at) = clustered.find("ENGINE = ") {
        let engine_start = engine_at + "ENGINE = ".len();
        let engine_len = clustered[engine_start..]
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(clustered.len() - engine_start);
        let engine = clustered[engine_start..engine_start + engine_len].to_owned();
        if engine.ends_with("MergeTree") && !engine.starts_with("Replicated") {
            let after = engine_start + engine_len;
            let (args, end) = if clustered[after..].starts_with('(') {
                let mut depth = 0usize;
                let mut close = after;
                for (offset, c) in clustered[after..].char_indices() {
                    match c {
                        '(' => depth += 1,
                        ')' => {
                            depth -= 1;
                            if depth == 0 {
                                close = after + offset;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                (clustered[after + 1..close].to_owned(), close + 1)
            } else {
                (String::new(), after)
            };
            let table = name.rsplit('.').next().unwrap_or(name).trim_matches('`');
            let separator = if args.is_empty() { "" } else { ", " };
            let replicated = format!(
                "Replicated{engine}('/clickhouse/tables/{{shard}}/{database}/{table}', '{{replica}}'{separator}{args})"
            );
            clustered.replace_range(engine_start..end, &replicated);
        }
    }
    clustered
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_a_cluster_ddl_runs_on_every_replica_and_tables_are_replicated() {
        let create = "CREATE TABLE IF NOT EXISTS mentor_totals (\n    mentor_id String\n) ENGINE = SummingMergeTree((clicks, conversions, next_offset))\nORDER BY (mentor_id)";
        assert_eq!(
            on_cluster(create, "main", "referral"),
            "CREATE TABLE IF NOT EXISTS referral.mentor_totals ON CLUSTER `main` (\n    mentor_id String\n) ENGINE = ReplicatedSummingMergeTree('/clickhouse/tables/{shard}/referral/mentor_totals', '{replica}', (clicks, conversions, next_offset))\nORDER BY (mentor_id)"
        );
        assert_eq!(
            on_cluster(
                "CREATE TABLE IF NOT EXISTS t (v UInt64) ENGINE = ReplacingMergeTree\nORDER BY v",
                "c",
                "d"
            ),
            "CREATE TABLE IF NOT EXISTS d.t ON CLUSTER `c` (v UInt64) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/d/t', '{replica}')\nORDER BY v"
        );
        assert_eq!(
            on_cluster("ALTER TABLE attributions ADD COLUMN x String", "c", "d"),
            "ALTER TABLE d.attributions ON CLUSTER `c` ADD COLUMN x String"
        );
        assert_eq!(
            on_cluster("DROP TABLE IF EXISTS feed", "c", "d"),
            "DROP TABLE IF EXISTS d.feed ON CLUSTER `c`"
        );
        assert_eq!(
            on_cluster(
                "CREATE MATERIALIZED VIEW IF NOT EXISTS feed TO target\nAS SELECT * FROM t",
                "c",
                "d"
            ),
            "CREATE MATERIALIZED VIEW IF NOT EXISTS d.feed ON CLUSTER `c` TO d.target\nAS SELECT * FROM d.t"
        );
        let insert = "INSERT INTO t (a) SELECT a FROM s";
        assert_eq!(on_cluster(insert, "c", "d"), insert);
        // Every shipped DDL statement runs on the cluster; every table is replicated.
        for migration in CLICKHOUSE {
            for statement in statements(migration.sql) {
                let clustered = on_cluster(&statement, "c", "d");
                if statement.starts_with("INSERT") {
                    assert_eq!(clustered, statement);
                    continue;
                }
                assert!(clustered.contains(" ON CLUSTER `c`"), "{statement}");
                if statement.contains("ENGINE = ") {
                    assert!(clustered.contains("ENGINE = Replicated"), "{clustered}");
                }
            }
        }
    }

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
