-- Every recorded click keeps its verdict: 'counted', 'duplicate' (a repeat visit inside the
-- dedup window; duplicate_of names the counted click) or 'bot'. Clicks recorded before
-- this migration were all counted. source_topic, source_partition and source_offset are the
-- click's log position: the writer rebuilds a partition's dedup window from the counted clicks below
-- its checkpoint (-1: recorded before verdicts existed, never needed again).
-- The sorted copies are altered before `attributions`: their feeds select `*`, so the
-- targets must have the new columns before the source does.
ALTER TABLE attributions_by_mentor ADD COLUMN verdict String DEFAULT 'counted';
ALTER TABLE attributions_by_mentor ADD COLUMN duplicate_of Nullable(String);
ALTER TABLE attributions_by_mentor ADD COLUMN source_topic String DEFAULT '';
ALTER TABLE attributions_by_mentor ADD COLUMN source_partition Int32 DEFAULT -1;
ALTER TABLE attributions_by_mentor ADD COLUMN source_offset Int64 DEFAULT -1;
ALTER TABLE attributions_by_time ADD COLUMN verdict String DEFAULT 'counted';
ALTER TABLE attributions_by_time ADD COLUMN duplicate_of Nullable(String);
ALTER TABLE attributions_by_time ADD COLUMN source_topic String DEFAULT '';
ALTER TABLE attributions_by_time ADD COLUMN source_partition Int32 DEFAULT -1;
ALTER TABLE attributions_by_time ADD COLUMN source_offset Int64 DEFAULT -1;
ALTER TABLE attributions ADD COLUMN verdict String DEFAULT 'counted';
ALTER TABLE attributions ADD COLUMN duplicate_of Nullable(String);
ALTER TABLE attributions ADD COLUMN source_topic String DEFAULT '';
ALTER TABLE attributions ADD COLUMN source_partition Int32 DEFAULT -1;
ALTER TABLE attributions ADD COLUMN source_offset Int64 DEFAULT -1;

-- Totals by verdict: 'hour' and 'day' rows keep counting the clicks mentors are paid on
-- (counted ones), the new grains count the filtered ones, per hour and per day. An Enum8
-- that only gains values is changed in metadata alone (18.16 included).
ALTER TABLE mentor_totals MODIFY COLUMN grain Enum8('hour' = 1, 'day' = 2, 'checkpoint' = 3, 'global_day' = 4, 'duplicate_hour' = 5, 'duplicate_day' = 6, 'bot_hour' = 7, 'bot_day' = 8);
