-- A copy of the confirmed attributions sorted by (mentor, confirmed_at), for time series
-- and exact-period totals: they read a mentor's conversions in a few hours (the ones a
-- bucket boundary cuts, e.g. every local midnight of Asia/Kolkata) instead of scanning
-- the mentor's whole history. `confirmed_at` never changes once set (a deletion keeps
-- it), so every version of a row keeps its place in the sort order.
CREATE TABLE IF NOT EXISTS attributions_by_confirmation (
    id           String,
    mentor_id    String,
    confirmed_at Int64,
    deleted_at   Nullable(Int64),
    version      UInt64
) ENGINE = ReplacingMergeTree(version)
ORDER BY (mentor_id, confirmed_at, id)
SETTINGS index_granularity = 256;

-- Rows are picked by `kind` (a confirmation makes an attribution a conversion and sets
-- `confirmed_at`; nothing undoes either): a `confirmed_at IS NOT NULL` here would name the
-- alias, never null, and pick every row.
-- The feed first, then the copy of what was stored before it: a row written in between
-- arrives twice, as the same (id, version), which the table replaces. ClickHouse fixes an
-- insert's views when it starts, so the runner waits for the inserts running before the
-- copy (it does before every INSERT of a migration). So the migration may run while
-- writers of an older release are still applying the log.
CREATE MATERIALIZED VIEW IF NOT EXISTS attributions_by_confirmation_feed TO attributions_by_confirmation
AS SELECT id, mentor_id, assumeNotNull(confirmed_at) AS confirmed_at, deleted_at, version
FROM attributions WHERE kind = 'conversion';

INSERT INTO attributions_by_confirmation
SELECT id, mentor_id, assumeNotNull(confirmed_at) AS confirmed_at, deleted_at, version
FROM attributions WHERE kind = 'conversion';
