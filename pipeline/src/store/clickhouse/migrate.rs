//! Applies [`referral_schemas::migrations::CLICKHOUSE`] in order, recording each one in
//! `schema_migrations`.
//!
//! Safe to run concurrently (the Helm job and an aggregator starting at the same time):
//! every statement is idempotent, so the worst case is a migration run twice and recorded
//! twice. A migration the server is too old for is skipped and not recorded, so it is
//! applied once the server is upgraded.

use referral_schemas::migrations::{CLICKHOUSE, added_column, statements};

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

/// Creates the database if needed and applies pending migrations.
pub async fn migrate(settings: &ClickHouseSettings) -> Result<MigrationReport, StoreError> {
    let server = settings.server_client();
    let version = server_version(&server).await?;
    server
        .query(&format!(
            "CREATE DATABASE IF NOT EXISTS {}",
            quoted_identifier(&settings.database)?
        ))
        .execute()
        .await?;
    let client = settings.client();
    client
        .query(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version UInt32, name String, \
             applied_at DateTime) ENGINE = MergeTree ORDER BY version",
        )
        .execute()
        .await?;
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
            let added = added_column(&statement);
            if let Some((table, column)) = added
                && column_exists(&client, table, column).await?
            {
                continue;
            }
            if let Err(error) = client.query(&statement).execute().await {
                // Another runner added the column between the check and this ALTER.
                match added {
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
