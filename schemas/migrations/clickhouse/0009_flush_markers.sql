-- Replicated tables (--clickhouse-cluster) drop an inserted block whose content equals an
-- earlier one's: right for a retried flush, wrong for two flushes that happen to write the
-- same totals (one click each for one mentor-hour, the checkpoint moved by one). On a
-- cluster each commit insert therefore carries one 'flush' row naming its offset ranges
-- (the flush's token), with every count zero: distinct flushes differ, a retry of one is
-- identical, and the SummingMergeTree drops the row at its first merge. Readers never read
-- this grain.
ALTER TABLE mentor_totals MODIFY COLUMN grain Enum8('hour' = 1, 'day' = 2, 'checkpoint' = 3, 'global_day' = 4, 'duplicate_hour' = 5, 'duplicate_day' = 6, 'bot_hour' = 7, 'bot_day' = 8, 'time_day' = 9, 'time_hour' = 10, 'time_week' = 11, 'reversal_hour' = 12, 'reversal_day' = 13, 'flush' = 14);
