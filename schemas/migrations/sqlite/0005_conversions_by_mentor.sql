-- Time series and exact-period totals read a mentor's conversions in a few hours (the ones
-- a bucket boundary cuts) by `confirmed_at`.
CREATE INDEX attributions_live_conversions_by_mentor ON attributions (mentor_id, confirmed_at)
    WHERE confirmed_at IS NOT NULL AND deleted_at IS NULL;
