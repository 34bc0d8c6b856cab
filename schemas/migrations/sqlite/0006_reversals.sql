-- Reversals: a confirmed conversion can be reversed (a refund, a chargeback). Its status
-- becomes 'reversed', which the status CHECK of migration 1 refuses, and SQLite cannot
-- change a CHECK in place: the table is rebuilt (SQLite's documented way: a new table, the
-- rows copied, the old one dropped, the new one renamed, the indexes made again), in this
-- migration's one transaction.
CREATE TABLE attributions_reversible (
    id               TEXT    NOT NULL PRIMARY KEY,
    code             TEXT    NOT NULL,
    mentor_id        TEXT    NOT NULL,
    kind             TEXT    NOT NULL CHECK (kind IN ('click', 'conversion')),
    status           TEXT    NOT NULL CHECK (status IN ('pending', 'confirmed', 'reversed')),
    new_member_id    TEXT,
    ip_address       TEXT    NOT NULL,
    user_agent       TEXT,
    referrer_url     TEXT,
    occurred_at      INTEGER NOT NULL,
    confirmed_at     INTEGER,
    created_at       INTEGER NOT NULL,
    deleted_at       INTEGER,
    version          INTEGER NOT NULL DEFAULT 1,
    verdict          TEXT    NOT NULL DEFAULT 'counted'
        CHECK (verdict IN ('counted', 'duplicate', 'bot')),
    duplicate_of     TEXT,
    source_topic     TEXT    NOT NULL DEFAULT '',
    source_partition INTEGER NOT NULL DEFAULT -1,
    source_offset    INTEGER NOT NULL DEFAULT -1,
    reversed_at      INTEGER,
    reversal_reason  TEXT
) WITHOUT ROWID;

INSERT INTO attributions_reversible (id, code, mentor_id, kind, status, new_member_id,
    ip_address, user_agent, referrer_url, occurred_at, confirmed_at, created_at, deleted_at,
    version, verdict, duplicate_of, source_topic, source_partition, source_offset)
SELECT id, code, mentor_id, kind, status, new_member_id, ip_address, user_agent,
    referrer_url, occurred_at, confirmed_at, created_at, deleted_at, version, verdict,
    duplicate_of, source_topic, source_partition, source_offset
FROM attributions;

DROP TABLE attributions;
ALTER TABLE attributions_reversible RENAME TO attributions;

CREATE INDEX attributions_live_by_time   ON attributions (occurred_at DESC, id DESC) WHERE deleted_at IS NULL;
CREATE INDEX attributions_live_by_mentor ON attributions (mentor_id, occurred_at DESC, id DESC) WHERE deleted_at IS NULL;
CREATE INDEX attributions_live_by_code   ON attributions (code, occurred_at DESC, id DESC) WHERE deleted_at IS NULL;
CREATE INDEX attributions_counted_by_source ON attributions (source_topic, source_partition, created_at)
    WHERE verdict = 'counted';
CREATE INDEX attributions_live_by_verdict ON attributions (verdict, occurred_at DESC, id DESC)
    WHERE deleted_at IS NULL;
-- Conversions that count (confirmed, live, not reversed), by mentor and by confirmation.
CREATE INDEX attributions_live_conversions_by_mentor ON attributions (mentor_id, confirmed_at)
    WHERE confirmed_at IS NOT NULL AND deleted_at IS NULL AND reversed_at IS NULL;
CREATE INDEX attributions_live_by_confirmation ON attributions (confirmed_at)
    WHERE confirmed_at IS NOT NULL AND deleted_at IS NULL AND reversed_at IS NULL;
-- Reversed ones, by mentor and confirmation (few: what exact-period totals read).
CREATE INDEX attributions_live_reversals_by_mentor ON attributions (mentor_id, confirmed_at)
    WHERE reversed_at IS NOT NULL AND deleted_at IS NULL;

-- Reversed conversions per mentor and hour (and day) of their confirmed_at: a reversal
-- moves one from `conversions` to `reversals` in the bucket it was counted in.
ALTER TABLE mentor_hourly_totals ADD COLUMN reversals INTEGER NOT NULL DEFAULT 0;
ALTER TABLE mentor_daily_totals ADD COLUMN reversals INTEGER NOT NULL DEFAULT 0;
