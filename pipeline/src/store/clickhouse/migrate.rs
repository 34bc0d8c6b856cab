//! Applies [`referral_schemas::migrations::CLICKHOUSE`] in order, recording each one in
//! `schema_migrations`.
//!
//! Safe to run concurrently (the Helm job and an aggregator starting at the same time):
//! every statement is idempotent, so the worst case is a migration run twice and recorded
//! twice. A migration the server is too old for is skipped and not recorded, so it is
//! applied once the server is upgraded.

use referral_schemas::migrations::{CLICKHOUSE, added_column, on_cluster, statements};

use super::{ClickHouseSettings, ServerVersion, server_version};
use crate::store::StoreError;

/// What a run did.
#[derive(Debug, Default)]
pub struct MigrationReport {
    pub server: Option<ServerVersion>,
    pub applied: Vec<u32>,
    /// Waiting for a newer server.
    pub deferred: Vec<u32>,
}

/// Refuses a store whose schema is newer than this build knows: a writer of an older
/// release would write rows without the newer columns (their defaults standing in for
/// what the newer rules decide) and totals by the older rules. An unmigrated store passes.
pub async fn refuse_newer_schema(settings: &ClickHouseSettings) -> Result<(), StoreError> {
    let known = CLICKHOUSE.last().map_or(0, |migration| migration.version);
    let client = settings.client();
    let recorded: Result<u32, _> = client
        .query("SELECT toUInt32(max(version)) FROM schema_migrations")
        .fetch_one()
        .await;
    match recorded {
        Ok(newest) if newest > known => Err(StoreError::Open(format!(
            "the ClickHouse schema is at migration {newest}, newer than this build knows \
             ({known}): a newer release migrated it; run that release (roll writers forward, \
             never back)"
        ))),
        Ok(_) => Ok(()),
        // No schema_migrations table (60) or database (81) yet: nothing newer is there.
        Err(clickhouse::error::Error::BadResponse(message))
            if message.contains("Code: 60") || message.contains("Code: 81") =>
        {
            Ok(())
        }
        Err(error) => Err(error.into()),
    }
}

/// Creates the database if needed and applies pending migrations.
pub async fn migrate(settings: &ClickHouseSettings) -> Result<MigrationReport, StoreError> {
    let server = settings.server_client();
    let version = server_version(&server).await?;
    let database = quoted_identifier(&settings.database)?;
    let cluster = match &settings.cluster {
        Some(cluster) => Some(quoted_identifier(cluster)?.trim_matches('`').to_owned()),
        None => None,
    };
    // The migrations are written for one server; on a cluster each DDL statement is run
    // on every replica with Replicated engines (`on_cluster`).
    let for_store = |statement: &str| match &cluster {
        Some(cluster) => on_cluster(statement, cluster, &settings.database),
        None => statement.to_owned(),
    };
    let create_database = match &cluster {
        Some(cluster) => format!("CREATE DATABASE IF NOT EXISTS {database} ON CLUSTER `{cluster}`"),
        None => format!("CREATE DATABASE IF NOT EXISTS {database}"),
    };
    // Asked locally first: on a cluster each DDL statement waits for every replica, so an
    // aggregator starting while one is down must not issue any when nothing is pending.
    let database_exists: u64 = server
        .query("SELECT count() FROM system.databases WHERE name = ?")
        .bind(&settings.database)
        .fetch_one()
        .await?;
    if database_exists == 0 {
        server.query(&create_database).execute().await?;
    }
    let client = settings.client();
    let ledger_exists: u64 = client
        .query(
            "SELECT count() FROM system.tables \
             WHERE database = currentDatabase() AND name = 'schema_migrations'",
        )
        .fetch_one()
        .await?;
    if ledger_exists == 0 {
        client
            .query(&for_store(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version UInt32, name String, \
                 applied_at DateTime) ENGINE = MergeTree ORDER BY version",
            ))
            .execute()
            .await?;
    }
    let done: Vec<u32> = client
        .query("SELECT DISTINCT version FROM schema_migrations")
        .fetch_all()
        .await?;
    let mut report = MigrationReport::default();
    for migration in CLICKHOUSE {
        if done.contains(&migration.version) {
            continue;
        }
        if let Some(needed) = migration.min_server
            && !version.at_least(needed)
        {
            tracing::info!(
                version = migration.version,
                name = migration.name,
                server = %version.text,
                "migration deferred: the server is too old for it"
            );
            report.deferred.push(migration.version);
            continue;
        }
        for statement in statements(migration.sql) {
            if starts_with_word(&statement, "INSERT") {
                await_running_inserts(&client).await?;
            }
            let added = added_column(&statement);
            if let Some((table, column)) = added
                && column_exists(&client, table, column).await?
            {
                continue;
            }
            if let Err(error) = client.query(&for_store(&statement)).execute().await {
                // Another runner added the column between the check and this ALTER; on a
                // cluster, another replica had it already (the check asked this one only:
                // code 44, the column exists).
                let exists_elsewhere = cluster.is_some()
                    && added.is_some()
                    && matches!(&error, clickhouse::error::Error::BadResponse(message) if message.contains("Code: 44"));
                match added {
                    _ if exists_elsewhere => {}
                    Some((table, column)) if column_exists(&client, table, column).await? => {}
                    _ => return Err(error.into()),
                }
            }
        }
        client
            .query("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, now())")
            .bind(migration.version)
            .bind(migration.name)
            .execute()
            .await?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "applied migration"
        );
        report.applied.push(migration.version);
    }
    report.server = Some(version);
    Ok(report)
}

fn starts_with_word(statement: &str, word: &str) -> bool {
    statement
        .split_whitespace()
        .next()
        .is_some_and(|first| first.eq_ignore_ascii_case(word))
}

/// How long a migration's copy waits for the inserts that were running before it.
const INSERTS_SETTLE_LIMIT: std::time::Duration = std::time::Duration::from_secs(600);

/// Waits until every INSERT running on the server now has finished. A migration that
/// creates a materialized view and then copies what its source already holds runs this
/// before the copy: ClickHouse fixes an insert's views when the insert starts, so a
/// writer's insert that began before the view existed reaches neither the view nor (if
/// its rows land after the copy's read) the copy. Inserts that start later go through
/// the view.
async fn await_running_inserts(client: &clickhouse::Client) -> Result<(), StoreError> {
    let running = |client: &clickhouse::Client| {
        client
            .query(
                "SELECT query_id FROM system.processes \
                 WHERE lower(substring(query, 1, 6)) = 'insert'",
            )
            .fetch_all::<String>()
    };
    let before: std::collections::HashSet<String> = running(client).await?.into_iter().collect();
    let started = std::time::Instant::now();
    loop {
        let still: Vec<String> = running(client).await?;
        if !still.iter().any(|id| before.contains(id)) {
            return Ok(());
        }
        if started.elapsed() > INSERTS_SETTLE_LIMIT {
            return Err(StoreError::Open(format!(
                "inserts still running after {INSERTS_SETTLE_LIMIT:?}; migrate again"
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn column_exists(
    client: &clickhouse::Client,
    table: &str,
    column: &str,
) -> Result<bool, StoreError> {
    let present: u64 = client
        .query(
            "SELECT count() FROM system.columns \
             WHERE database = currentDatabase() AND table = ? AND name = ?",
        )
        .bind(table)
        .bind(column)
        .fetch_one()
        .await?;
    Ok(present > 0)
}

/// A database name as an identifier: only `[A-Za-z0-9_]`, so it needs no escaping.
pub fn quoted_identifier(name: &str) -> Result<String, StoreError> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if valid {
        Ok(format!("`{name}`"))
    } else {
        Err(StoreError::Open(format!(
            "database name {name:?} must be 1..64 of [A-Za-z0-9_]"
        )))
    }
}
