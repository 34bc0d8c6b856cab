-- Webhooks (issue 16). Same tables as SQLite's migration 7; see there for each one's
-- writer. Runs on 18.16: no TTL (retention is by the deliverer's pruning, see README).

-- The outbox, in the decision's flush. A retried flush writes the same rows: readers take
-- one row per log position (LIMIT 1 BY).
CREATE TABLE IF NOT EXISTS webhook_events (
    event_id         String,
    event_type       String,
    attribution_id   String,
    data             String,
    created_at       Int64,
    source_topic     String,
    source_partition Int32,
    source_offset    Int64
) ENGINE = ReplacingMergeTree
ORDER BY (source_topic, source_partition, source_offset);

-- Each change is a new version of the row (the API's read-modify-write).
CREATE TABLE IF NOT EXISTS webhook_endpoints (
    id                  String,
    url                 String,
    events              String,
    secret              String,
    created_at          Int64,
    deleted_at          Nullable(Int64),
    replay_since        Nullable(Int64),
    replay_requested_at Nullable(Int64),
    version             UInt64
) ENGINE = ReplacingMergeTree(version)
ORDER BY id;

CREATE TABLE IF NOT EXISTS webhook_progress (
    endpoint_id    String,
    cursor         String,
    floor          Int64,
    failing_since  Nullable(Int64),
    disabled_at    Nullable(Int64),
    replay_applied Int64,
    retry_since    Nullable(Int64),
    attempts       UInt32,
    retry_event    Nullable(String),
    version        UInt64
) ENGINE = ReplacingMergeTree(version)
ORDER BY endpoint_id;

CREATE TABLE IF NOT EXISTS webhook_deliveries (
    endpoint_id  String,
    attempted_at Int64,
    event_id     String,
    event_type   String,
    attempt      UInt32,
    status_code  Nullable(UInt16),
    error        Nullable(String),
    outcome      String
) ENGINE = MergeTree
ORDER BY (endpoint_id, attempted_at);
