//! The embedded store: SQLite in WAL mode under `--data-dir`.
//!
//! * [`writer`]: the consumer's [`crate::store::StoreWriter`]: one connection, one
//!   transaction per flush holding the flush's rows, totals and checkpoint.
//! * [`reader`]: [`crate::store::AttributionReader`] for the API, on a small pool of
//!   read-only connections. WAL lets readers see the last committed flush while the writer
//!   commits the next one.

pub mod reader;
pub mod writer;

use std::path::{Path, PathBuf};
use std::time::Duration;

use referral_schemas::migrations;
use referral_schemas::verdict::ClickVerdict;
use referral_schemas::{Attribution, AttributionKind, AttributionStatus, ReferralCode, Timestamp};
use rusqlite::{Connection, Row};

pub use self::reader::SqliteReader;
pub use self::writer::SqliteWriter;
use super::StoreError;
use crate::config::SqliteSynchronous;

/// File name of the database inside the data directory.
pub const DATABASE_FILE: &str = "referral.db";
/// How long a connection waits on a lock before failing (only the writer takes write locks;
/// readers wait only during checkpoints).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// The writer's page cache, in KiB (negative for SQLite: a size, not a page count).
const WRITER_CACHE_KIB: i64 = -64 * 1024;

const ATTRIBUTION_COLUMNS: &str = "id, code, mentor_id, kind, status, new_member_id, ip_address, \
     user_agent, referrer_url, occurred_at, confirmed_at, created_at, verdict, duplicate_of, \
     reversed_at, reversal_reason";

/// Opens (creating if needed) the store under `data_dir` and applies pending migrations.
/// The caller holds the data directory's writer lock ([`crate::embedded::DataDirLock`]).
pub fn open(
    data_dir: &Path,
    synchronous: SqliteSynchronous,
) -> Result<(SqliteWriter, SqliteReader), StoreError> {
    std::fs::create_dir_all(data_dir)
        .map_err(|error| StoreError::Open(format!("{}: {error}", data_dir.display())))?;
    let path: PathBuf = data_dir.join(DATABASE_FILE);
    let mut connection = Connection::open(&path)?;
    connection.busy_timeout(BUSY_TIMEOUT)?;
    connection.pragma_update(None, "journal_mode", "WAL")?;
    let commits_durable = synchronous == SqliteSynchronous::Full;
    let synchronous = match synchronous {
        SqliteSynchronous::Full => "FULL",
        SqliteSynchronous::Normal => "NORMAL",
    };
    connection.pragma_update(None, "synchronous", synchronous)?;
    connection.pragma_update(None, "foreign_keys", "ON")?;
    // Keep the hot b-tree pages (index tails, totals) in memory between commits.
    connection.pragma_update(None, "cache_size", WRITER_CACHE_KIB)?;
    migrate(&mut connection)?;
    Ok((
        SqliteWriter::new(connection, commits_durable),
        SqliteReader::new(path),
    ))
}

/// Applies the migrations newer than `PRAGMA user_version`, each in its own transaction.
pub fn migrate(connection: &mut Connection) -> Result<u32, StoreError> {
    let applied: u32 = connection.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let latest = migrations::SQLITE
        .last()
        .map_or(0, |migration| migration.version);
    if applied > latest {
        return Err(StoreError::Open(format!(
            "the store is at schema version {applied}, newer than this build's {latest}"
        )));
    }
    for migration in migrations::SQLITE.iter().filter(|m| m.version > applied) {
        let transaction = connection.transaction()?;
        transaction.execute_batch(migration.sql)?;
        transaction.pragma_update(None, "user_version", migration.version)?;
        transaction.commit()?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "applied migration"
        );
    }
    Ok(latest)
}

fn corrupt(column: usize, what: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        column,
        rusqlite::types::Type::Text,
        format!("unknown {what}").into(),
    )
}

/// An attribution from a row of [`ATTRIBUTION_COLUMNS`].
fn attribution_from_row(row: &Row<'_>) -> rusqlite::Result<Attribution> {
    let kind: String = row.get(3)?;
    let status: String = row.get(4)?;
    let verdict: String = row.get(12)?;
    Ok(Attribution {
        id: row.get(0)?,
        code: row.get(1)?,
        mentor_id: row.get(2)?,
        kind: AttributionKind::parse(&kind).ok_or_else(|| corrupt(3, "kind"))?,
        status: AttributionStatus::parse(&status).ok_or_else(|| corrupt(4, "status"))?,
        new_member_id: row.get(5)?,
        ip_address: row.get(6)?,
        user_agent: row.get(7)?,
        referrer_url: row.get(8)?,
        occurred_at: Timestamp::from_millis(row.get(9)?),
        confirmed_at: row.get::<_, Option<i64>>(10)?.map(Timestamp::from_millis),
        created_at: Timestamp::from_millis(row.get(11)?),
        verdict: Some(ClickVerdict::parse(&verdict).ok_or_else(|| corrupt(12, "verdict"))?),
        duplicate_of: row.get(13)?,
        reversed_at: row.get::<_, Option<i64>>(14)?.map(Timestamp::from_millis),
        reversal_reason: row.get(15)?,
    })
}

/// A code from `code, mentor_id, created_at, updated_at`.
fn code_from_row(row: &Row<'_>) -> rusqlite::Result<ReferralCode> {
    Ok(ReferralCode {
        code: row.get(0)?,
        mentor_id: row.get(1)?,
        created_at: Timestamp::from_millis(row.get(2)?),
        updated_at: Timestamp::from_millis(row.get(3)?),
        destination_url: row.get(4)?,
    })
}

#[cfg(test)]
mod tests;
