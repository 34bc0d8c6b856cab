-- The embedded store. One writer (the aggregator's writer thread), many readers (WAL).
-- Instants are Unix milliseconds (INTEGER), as in every store of this project.

-- Current state of every attribution. Deleted ones stay as tombstones (deleted_at set) so
-- that a redelivered click or command for them is recognised and not applied again.
CREATE TABLE attributions (
    id            TEXT    NOT NULL PRIMARY KEY,
    code          TEXT    NOT NULL,
    mentor_id     TEXT    NOT NULL,
    kind          TEXT    NOT NULL CHECK (kind IN ('click', 'conversion')),
    status        TEXT    NOT NULL CHECK (status IN ('pending', 'confirmed')),
    new_member_id TEXT,
    ip_address    TEXT    NOT NULL,
    user_agent    TEXT,
    referrer_url  TEXT,
    occurred_at   INTEGER NOT NULL,
    confirmed_at  INTEGER,
    created_at    INTEGER NOT NULL,
    deleted_at    INTEGER
) WITHOUT ROWID;

-- Lists are newest first; each index serves one filter and is limited to live rows.
CREATE INDEX attributions_live_by_time   ON attributions (occurred_at DESC, id DESC) WHERE deleted_at IS NULL;
CREATE INDEX attributions_live_by_mentor ON attributions (mentor_id, occurred_at DESC, id DESC) WHERE deleted_at IS NULL;
CREATE INDEX attributions_live_by_code   ON attributions (code, occurred_at DESC, id DESC) WHERE deleted_at IS NULL;

-- Live referral codes. A retired code's row is removed: later clicks for it are unknown.
CREATE TABLE referral_codes (
    code       TEXT    NOT NULL PRIMARY KEY,
    mentor_id  TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX referral_codes_by_mentor ON referral_codes (mentor_id, code);

-- Each member is attributed at most once across all live attributions.
CREATE TABLE attributed_members (
    new_member_id  TEXT NOT NULL PRIMARY KEY,
    attribution_id TEXT NOT NULL
);

-- Materialized totals, maintained by the writer with signed deltas in the same transaction
-- as the state they describe. Hourly rows serve the ragged ends of a period, daily rows
-- the whole days in between.
CREATE TABLE mentor_hourly_totals (
    mentor_id   TEXT    NOT NULL,
    hour        INTEGER NOT NULL,
    clicks      INTEGER NOT NULL,
    conversions INTEGER NOT NULL,
    PRIMARY KEY (mentor_id, hour)
) WITHOUT ROWID;

CREATE TABLE mentor_daily_totals (
    mentor_id   TEXT    NOT NULL,
    day         INTEGER NOT NULL,
    clicks      INTEGER NOT NULL,
    conversions INTEGER NOT NULL,
    PRIMARY KEY (mentor_id, day)
) WITHOUT ROWID;

-- What the writer decided for each command (JSON of schemas::messages::Verdict), read by
-- the API that issued it. Pruned after a retention period.
CREATE TABLE command_verdicts (
    command_id TEXT    NOT NULL PRIMARY KEY,
    verdict    TEXT    NOT NULL,
    decided_at INTEGER NOT NULL
);
CREATE INDEX command_verdicts_by_age ON command_verdicts (decided_at);
