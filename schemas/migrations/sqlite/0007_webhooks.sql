-- Webhooks (issue 16).
--
-- webhook_events: the outbox. The single writer stores a decision's event in the same
-- transaction as the decision (and re-writes it when a recorded decision is replayed), so
-- the events are exactly as complete as the data. Ordered by the log position of the
-- command that caused it; the deliverer reads it from each endpoint's cursor.
CREATE TABLE webhook_events (
    source_topic     TEXT    NOT NULL,
    source_partition INTEGER NOT NULL,
    source_offset    INTEGER NOT NULL,
    event_id         TEXT    NOT NULL,
    event_type       TEXT    NOT NULL,
    attribution_id   TEXT    NOT NULL,
    data             TEXT    NOT NULL,
    created_at       INTEGER NOT NULL,
    PRIMARY KEY (source_topic, source_partition, source_offset)
) WITHOUT ROWID;
CREATE INDEX webhook_events_by_time ON webhook_events (created_at);

-- Registered endpoints: written by the API only (creation, deletion, replay requests).
CREATE TABLE webhook_endpoints (
    id                  TEXT    PRIMARY KEY,
    url                 TEXT    NOT NULL,
    events              TEXT    NOT NULL, -- event types, comma-separated
    secret              TEXT    NOT NULL,
    created_at          INTEGER NOT NULL,
    deleted_at          INTEGER,
    replay_since        INTEGER,
    replay_requested_at INTEGER
) WITHOUT ROWID;

-- Each endpoint's delivery state: written by the deliverer only. `cursor` is JSON
-- {"<topic>/<partition>": next offset}; events created before `floor` are skipped;
-- `replay_applied` is the replay_requested_at it last applied; `retry_since` and
-- `attempts` belong to the event `retry_event` while it fails (its retries survive a
-- restart).
CREATE TABLE webhook_progress (
    endpoint_id    TEXT    PRIMARY KEY,
    cursor         TEXT    NOT NULL,
    floor          INTEGER NOT NULL,
    failing_since  INTEGER,
    disabled_at    INTEGER,
    replay_applied INTEGER NOT NULL,
    retry_since    INTEGER,
    attempts       INTEGER NOT NULL,
    retry_event    TEXT,
    updated_at     INTEGER NOT NULL
) WITHOUT ROWID;

-- Every delivery attempt: written by the deliverer, listed by GET .../deliveries.
CREATE TABLE webhook_deliveries (
    endpoint_id  TEXT    NOT NULL,
    attempted_at INTEGER NOT NULL,
    event_id     TEXT    NOT NULL,
    event_type   TEXT    NOT NULL,
    attempt      INTEGER NOT NULL,
    status_code  INTEGER,
    error        TEXT,
    outcome      TEXT    NOT NULL
);
CREATE INDEX webhook_deliveries_by_endpoint ON webhook_deliveries (endpoint_id, attempted_at);
