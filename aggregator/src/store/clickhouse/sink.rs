//! The aggregator's reads and inserts against ClickHouse.
//!
//! Reads use `FINAL` so that ReplacingMergeTree rows are seen at their latest version even
//! before a merge. Inserts are one request per table per flush, written in [`Plan`] order.

use std::collections::HashMap;
use std::time::Instant;

use clickhouse::{Client, RowOwned, RowRead, RowWrite};

use super::plan::{Known, Plan, References};
use super::rows::{AttributionRow, CodeRow, DecisionRow, MemberRow};
use super::{ClickHouseSettings, ServerVersion, placeholders, server_version};
use crate::store::StoreError;

/// Reads and writes of one aggregator. Caches checkpoints of the partitions it owns.
pub struct ClickHouseSink {
    client: Client,
    settings: ClickHouseSettings,
    server: ServerVersion,
    /// (topic, partition) -> next offset to apply, as stored.
    checkpoints: HashMap<(String, i32), i64>,
}

impl ClickHouseSink {
    /// Connects and probes the server version.
    pub async fn connect(settings: &ClickHouseSettings) -> Result<Self, StoreError> {
        let client = settings.client();
        let server = server_version(&client).await?;
        tracing::info!(server = %server.text, insert_tokens = server.has_insert_tokens(), "clickhouse connected");
        Ok(Self {
            client,
            settings: settings.clone(),
            server,
            checkpoints: HashMap::new(),
        })
    }

    pub fn server(&self) -> &ServerVersion {
        &self.server
    }

    /// Whether the server answers.
    pub async fn ping(&self) -> bool {
        self.client
            .query("SELECT 1")
            .fetch_one::<u8>()
            .await
            .is_ok()
    }

    /// The stored checkpoints of `partitions` of `topic` (0 when none is stored).
    pub async fn checkpoints(
        &mut self,
        partitions: &[(String, i32)],
    ) -> Result<HashMap<(String, i32), i64>, StoreError> {
        let missing: Vec<&(String, i32)> = partitions
            .iter()
            .filter(|key| !self.checkpoints.contains_key(*key))
            .collect();
        for (topic, partition) in missing {
            let next: i64 = super::queries::checkpoint(topic, *partition)
                .to_clickhouse(&self.client)
                .fetch_one()
                .await?;
            self.checkpoints.insert((topic.clone(), *partition), next);
        }
        Ok(partitions
            .iter()
            .filter_map(|key| self.checkpoints.get(key).map(|next| (key.clone(), *next)))
            .collect())
    }

    /// Forgets cached checkpoints: after a failed flush (its insert may have landed) and
    /// when a partition is revoked (another consumer may move it).
    pub fn forget_checkpoints<'a>(
        &mut self,
        partitions: impl IntoIterator<Item = &'a (String, i32)>,
    ) {
        for key in partitions {
            self.checkpoints.remove(key);
        }
    }

    /// Loads the stored state the events of a flush refer to.
    pub async fn load(&self, references: &References) -> Result<Known, StoreError> {
        let decisions: Vec<DecisionRow> = self
            .select_in("command_verdicts", "command_id", &references.command_ids)
            .await?;
        let attributions: Vec<AttributionRow> = self
            .select_in("attributions", "id", &references.attribution_ids)
            .await?;
        let members: Vec<MemberRow> = self
            .select_in(
                "attributed_members",
                "new_member_id",
                &references.member_ids,
            )
            .await?;
        let codes: Vec<CodeRow> = self
            .select_in("referral_codes", "code", &references.codes)
            .await?;
        Ok(Known {
            decisions: decisions
                .into_iter()
                .map(|row| (row.command_id.clone(), row))
                .collect(),
            attributions: attributions
                .into_iter()
                .map(|row| (row.id.clone(), row))
                .collect(),
            members: members
                .into_iter()
                .map(|row| (row.new_member_id.clone(), row))
                .collect(),
            codes: codes
                .into_iter()
                .map(|row| (row.code.clone(), row))
                .collect(),
        })
    }

    async fn select_in<T>(
        &self,
        table: &str,
        key: &str,
        values: &std::collections::HashSet<String>,
    ) -> Result<Vec<T>, StoreError>
    where
        T: RowOwned + RowRead,
    {
        if values.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT ?fields FROM {table} FINAL WHERE {key} IN {}",
            placeholders(values.len())
        );
        let mut query = self.client.query(&sql);
        for value in values {
            query = query.bind(value.as_str());
        }
        Ok(query.fetch_all().await?)
    }

    /// Writes everything but the totals: decisions first, then state rows.
    pub async fn write_state(&self, plan: &Plan) -> Result<(), StoreError> {
        self.insert("command_verdicts", &plan.decisions, None)
            .await?;
        self.insert("attributions", &plan.attributions, None)
            .await?;
        self.insert("attributed_members", &plan.members, None)
            .await?;
        self.insert("referral_codes", &plan.codes, None).await?;
        Ok(())
    }

    /// Writes the totals and checkpoint rows in one insert: the flush's commit point.
    /// `token` names the batch (same batch, same token) for servers that deduplicate.
    pub async fn write_totals(&mut self, plan: &Plan, token: &str) -> Result<(), StoreError> {
        let token = self.server.has_insert_tokens().then_some(token);
        self.insert("mentor_totals", &plan.totals, token).await
    }

    /// Records the checkpoints a successful flush stored.
    pub fn checkpoints_stored(&mut self, stored: impl IntoIterator<Item = ((String, i32), i64)>) {
        self.checkpoints.extend(stored);
    }

    async fn insert<T>(
        &self,
        table: &str,
        rows: &[T],
        token: Option<&str>,
    ) -> Result<(), StoreError>
    where
        T: RowOwned + RowWrite,
    {
        if rows.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let mut insert = self.client.insert::<T>(table).await?.with_timeouts(
            Some(self.settings.insert_timeout),
            Some(self.settings.insert_timeout),
        );
        if let Some(token) = token {
            insert = insert.with_setting("insert_deduplication_token", token);
        }
        for row in rows {
            insert.write(row).await?;
        }
        insert.end().await?;
        metrics::histogram!("referral_clickhouse_insert_duration_seconds", "table" => table.to_owned())
            .record(started.elapsed().as_secs_f64());
        metrics::histogram!("referral_clickhouse_insert_rows", "table" => table.to_owned())
            .record(rows.len() as f64);
        Ok(())
    }
}
