-- Servers that have it (ClickHouse 22.2 and later): remember recent insert tokens of the
-- totals table, so that a retried insert of the same batch (same token) is dropped by the
-- server too. The checkpoint already makes retries safe; this is a second guard.
-- Never applied on older servers (the runner checks `min_server`), and applied as soon as
-- the server is upgraded.
ALTER TABLE mentor_totals MODIFY SETTING non_replicated_deduplication_window = 1000;
