-- Reversals: a confirmed conversion can be reversed (a refund, a chargeback): its status
-- becomes 'reversed' and it keeps its member. The sorted copies are altered before
-- `attributions`: their feeds select `*`, so the targets must have the new columns before
-- the source does.
ALTER TABLE attributions_by_mentor ADD COLUMN reversed_at Nullable(Int64);
ALTER TABLE attributions_by_mentor ADD COLUMN reversal_reason Nullable(String);
ALTER TABLE attributions_by_time ADD COLUMN reversed_at Nullable(Int64);
ALTER TABLE attributions_by_time ADD COLUMN reversal_reason Nullable(String);
ALTER TABLE attributions_by_confirmation ADD COLUMN reversed_at Nullable(Int64);
ALTER TABLE attributions ADD COLUMN reversed_at Nullable(Int64);
ALTER TABLE attributions ADD COLUMN reversal_reason Nullable(String);

-- The copy sorted by confirmed_at must know reversals (a reversed conversion no longer
-- counts): its feed is made again with the column. The feed first, then the copy of what
-- was stored (as in migration 5): a row written while the feed was being made again
-- arrives by the copy, and one written after by both, as the same (id, version), which the
-- table replaces. The runner waits for the inserts running before the copy.
DROP TABLE IF EXISTS attributions_by_confirmation_feed;

CREATE MATERIALIZED VIEW IF NOT EXISTS attributions_by_confirmation_feed TO attributions_by_confirmation
AS SELECT id, mentor_id, assumeNotNull(confirmed_at) AS confirmed_at, deleted_at, reversed_at, version
FROM attributions WHERE kind = 'conversion';

INSERT INTO attributions_by_confirmation (id, mentor_id, confirmed_at, deleted_at, reversed_at, version)
SELECT id, mentor_id, assumeNotNull(confirmed_at) AS confirmed_at, deleted_at, reversed_at, version
FROM attributions WHERE kind = 'conversion';

-- Reversed conversions per mentor and hour (and day) of their confirmed_at, counted in
-- `clicks` as the duplicate and bot grains are: a reversal moves one from the 'hour' and
-- 'day' rows' conversions to these.
ALTER TABLE mentor_totals MODIFY COLUMN grain Enum8('hour' = 1, 'day' = 2, 'checkpoint' = 3, 'global_day' = 4, 'duplicate_hour' = 5, 'duplicate_day' = 6, 'bot_hour' = 7, 'bot_day' = 8, 'time_day' = 9, 'time_hour' = 10, 'time_week' = 11, 'reversal_hour' = 12, 'reversal_day' = 13);
