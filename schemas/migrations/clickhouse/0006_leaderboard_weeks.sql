-- Leaderboards read whole ISO weeks: 'time_week' rows carry the 'day' rows' counted clicks
-- and conversions summed per week, under the key "<the week's Monday in 8 digits>:<mentor>"
-- (days since the epoch), so a 30-day leaderboard reads about four weeks' rows and a few
-- ragged days' instead of 30 days'. Writers of this release add them to the same
-- commit-point insert as the 'day' rows; what older writers stored without them is
-- backfilled as 'week' rows of mentor_totals_backfill when a writer of this release
-- connects (the marker 'filled_week').
ALTER TABLE mentor_totals MODIFY COLUMN grain Enum8('hour' = 1, 'day' = 2, 'checkpoint' = 3, 'global_day' = 4, 'duplicate_hour' = 5, 'duplicate_day' = 6, 'bot_hour' = 7, 'bot_day' = 8, 'time_day' = 9, 'time_hour' = 10, 'time_week' = 11);
