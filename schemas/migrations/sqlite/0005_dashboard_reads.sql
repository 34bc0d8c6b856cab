-- Time series and exact-period totals read a mentor's conversions in a few hours (the ones
-- a bucket boundary cuts) by `confirmed_at`; leaderboards read every mentor's totals over
-- a range of days and hours.
CREATE INDEX attributions_live_conversions_by_mentor ON attributions (mentor_id, confirmed_at)
    WHERE confirmed_at IS NOT NULL AND deleted_at IS NULL;
CREATE INDEX attributions_live_by_confirmation ON attributions (confirmed_at)
    WHERE confirmed_at IS NOT NULL AND deleted_at IS NULL;
CREATE INDEX mentor_daily_totals_by_day ON mentor_daily_totals (day);
CREATE INDEX mentor_hourly_totals_by_hour ON mentor_hourly_totals (hour);
