-- Every recorded click keeps its verdict: 'counted', 'duplicate' (a repeat visit inside the
-- dedup window; duplicate_of names the counted click) or 'bot'. Clicks recorded before
-- this migration were all counted. source_topic, source_partition and source_offset are the
-- click's log position: the writer rebuilds the dedup window from the counted clicks below its
-- checkpoint (-1: recorded before verdicts existed).
ALTER TABLE attributions ADD COLUMN verdict TEXT NOT NULL DEFAULT 'counted'
    CHECK (verdict IN ('counted', 'duplicate', 'bot'));
ALTER TABLE attributions ADD COLUMN duplicate_of TEXT;
ALTER TABLE attributions ADD COLUMN source_topic TEXT NOT NULL DEFAULT '';
ALTER TABLE attributions ADD COLUMN source_partition INTEGER NOT NULL DEFAULT -1;
ALTER TABLE attributions ADD COLUMN source_offset INTEGER NOT NULL DEFAULT -1;

-- The window's rebuild reads the counted clicks of a partition received since an instant.
CREATE INDEX attributions_counted_by_source ON attributions (source_topic, source_partition, created_at)
    WHERE verdict = 'counted';
-- `verdict=` on the lists.
CREATE INDEX attributions_live_by_verdict ON attributions (verdict, occurred_at DESC, id DESC)
    WHERE deleted_at IS NULL;

-- Totals by verdict: `clicks` keeps counting the clicks mentors are paid on (counted ones).
ALTER TABLE mentor_hourly_totals ADD COLUMN duplicates INTEGER NOT NULL DEFAULT 0;
ALTER TABLE mentor_hourly_totals ADD COLUMN bots INTEGER NOT NULL DEFAULT 0;
ALTER TABLE mentor_daily_totals ADD COLUMN duplicates INTEGER NOT NULL DEFAULT 0;
ALTER TABLE mentor_daily_totals ADD COLUMN bots INTEGER NOT NULL DEFAULT 0;
