-- Dashboards read by time across mentors (leaderboards) and a mentor's conversions in a
-- few hours (the ones a bucket boundary cuts, e.g. every local midnight of Asia/Kolkata).

-- A copy of the confirmed attributions sorted by confirmed_at. `confirmed_at` never changes
-- once set (a deletion keeps it), so every version of a row keeps its place in the order.
CREATE TABLE IF NOT EXISTS attributions_by_confirmation (
    id           String,
    mentor_id    String,
    confirmed_at Int64,
    deleted_at   Nullable(Int64),
    version      UInt64
) ENGINE = ReplacingMergeTree(version)
ORDER BY (confirmed_at, id)
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

-- Columns named: a later migration adds columns to the copy (7: reversed_at), and this
-- runs again over a store that has them.
INSERT INTO attributions_by_confirmation (id, mentor_id, confirmed_at, deleted_at, version)
SELECT id, mentor_id, assumeNotNull(confirmed_at) AS confirmed_at, deleted_at, version
FROM attributions WHERE kind = 'conversion';

-- Totals by time first: 'time_day' and 'time_hour' rows carry the 'day' and 'hour' rows'
-- counted clicks and conversions under the key "<day in 8 digits>:<mentor>" or "<hour in
-- 10 digits>:<mentor>", so that the table's sort key (grain, mentor_id, bucket) orders
-- them by time and a leaderboard reads only its days and hours. Writers of this release
-- add them to the same commit-point insert as the 'day' and 'hour' rows.
ALTER TABLE mentor_totals MODIFY COLUMN grain Enum8('hour' = 1, 'day' = 2, 'checkpoint' = 3, 'global_day' = 4, 'duplicate_hour' = 5, 'duplicate_day' = 6, 'bot_hour' = 7, 'bot_day' = 8, 'time_day' = 9, 'time_hour' = 10);

-- What older writers stored without those rows: per grain ('day' or 'hour'), bucket and
-- mentor, the sums minus the by-time sums, read in one snapshot (differences of zero are
-- not stored). Filled when a writer of this release connects (no older writer runs then:
-- the aggregators roll with Recreate); every fill stores the same differences (writers of
-- this release add to both alike), which the table replaces. The row of grain 'filled'
-- marks it filled.
CREATE TABLE IF NOT EXISTS mentor_totals_backfill (
    grain       String,
    bucket      Int64,
    mentor_id   String,
    clicks      Int64,
    conversions Int64,
    version     UInt64
) ENGINE = ReplacingMergeTree(version)
ORDER BY (grain, bucket, mentor_id);
