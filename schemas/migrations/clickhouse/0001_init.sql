-- The production store (ClickHouse). Written only by referral-aggregator, the single writer.
-- Runs on ClickHouse 18.16 and on current releases: no LowCardinality, DateTime64, TTL or
-- skip indexes. Instants are Unix milliseconds (Int64), as in every store of this project.
-- Every statement is idempotent (IF NOT EXISTS): a migration cut short is simply run again.
-- Statements are separated by semicolons at the end of a line; none appears elsewhere.

-- The attribution and totals tables use small granules (1,024 rows; 256 for the two tables
-- that serve list pages), not 8,192: their reads are point look-ups and short ranges, and
-- `FINAL` reads at least one whole granule per part, so smaller granules read far fewer rows
-- for the same answer (measured by ./scripts/bench-reads.sh).

-- Current state of every attribution, one row per id after merges (the highest version
-- wins; read with FINAL). Serves GET by id and the writer's checks of commands.
-- Deleted attributions stay as tombstones (deleted_at set) so that a redelivered click can
-- never bring one back: its row has version 1, lower than the deletion's.
CREATE TABLE IF NOT EXISTS attributions (
    id            String,
    code          String,
    mentor_id     String,
    kind          String,
    status        String,
    new_member_id Nullable(String),
    ip_address    String,
    user_agent    Nullable(String),
    referrer_url  Nullable(String),
    occurred_at   Int64,
    confirmed_at  Nullable(Int64),
    created_at    Int64,
    deleted_at    Nullable(Int64),
    version       UInt64
) ENGINE = ReplacingMergeTree(version)
ORDER BY id
SETTINGS index_granularity = 1024;

-- The same rows sorted for a mentor's list (GET /mentor/:mentorId, newest first).
-- mentor_id and occurred_at never change for an attribution, so the sort key still
-- identifies it and newer versions replace older ones.
CREATE TABLE IF NOT EXISTS attributions_by_mentor (
    id            String,
    code          String,
    mentor_id     String,
    kind          String,
    status        String,
    new_member_id Nullable(String),
    ip_address    String,
    user_agent    Nullable(String),
    referrer_url  Nullable(String),
    occurred_at   Int64,
    confirmed_at  Nullable(Int64),
    created_at    Int64,
    deleted_at    Nullable(Int64),
    version       UInt64
) ENGINE = ReplacingMergeTree(version)
ORDER BY (mentor_id, occurred_at, id)
SETTINGS index_granularity = 256;

CREATE MATERIALIZED VIEW IF NOT EXISTS attributions_by_mentor_feed TO attributions_by_mentor
AS SELECT * FROM attributions;

-- The same rows sorted by time, for the global list and its filters (status, type, code,
-- from/to on occurred_at).
CREATE TABLE IF NOT EXISTS attributions_by_time (
    id            String,
    code          String,
    mentor_id     String,
    kind          String,
    status        String,
    new_member_id Nullable(String),
    ip_address    String,
    user_agent    Nullable(String),
    referrer_url  Nullable(String),
    occurred_at   Int64,
    confirmed_at  Nullable(Int64),
    created_at    Int64,
    deleted_at    Nullable(Int64),
    version       UInt64
) ENGINE = ReplacingMergeTree(version)
ORDER BY (occurred_at, id)
SETTINGS index_granularity = 256;

CREATE MATERIALIZED VIEW IF NOT EXISTS attributions_by_time_feed TO attributions_by_time
AS SELECT * FROM attributions;

-- Which attribution holds each member (a member is attributed at most once). A deleted
-- attribution releases its member (released = 1, a higher version).
CREATE TABLE IF NOT EXISTS attributed_members (
    new_member_id  String,
    attribution_id String,
    released       UInt8,
    version        UInt64
) ENGINE = ReplacingMergeTree(version)
ORDER BY new_member_id;

-- Live and retired referral codes, one row per code after merges.
CREATE TABLE IF NOT EXISTS referral_codes (
    code       String,
    mentor_id  String,
    created_at Int64,
    updated_at Int64,
    retired    UInt8,
    version    UInt64
) ENGINE = ReplacingMergeTree(version)
ORDER BY code;

-- The writer's decision for each command, recorded before its effects are written, so that
-- a command replayed after a crash is never decided twice. `verdict` is the JSON the API
-- answers from (schemas::messages::Verdict); `effect` is the JSON of what the decision
-- writes, re-applied as recorded when the same log message is replayed (same source). The
-- same command id arriving again in another message (a client retry) changes nothing.
CREATE TABLE IF NOT EXISTS command_verdicts (
    command_id       String,
    verdict          String,
    effect           String,
    decided_at       Int64,
    source_topic     String,
    source_partition Int32,
    source_offset    Int64
) ENGINE = ReplacingMergeTree
ORDER BY command_id;

-- Materialized totals: signed deltas from the single writer, summed by ClickHouse.
-- grain 'hour' and 'day' rows: clicks by occurred_at, conversions by confirmed_at, bucket =
-- hours or days since the Unix epoch. A period reads the hourly rows of its ragged ends and
-- the daily rows in between: a few rows for any period.
-- grain 'global_day' rows (mentor_id '') hold every mentor's totals per day: the count of
-- live attributions for an unfiltered list, from a few rows.
-- grain 'checkpoint' rows are the consumer's checkpoint, stored with the data it describes
-- (mentor_id = the topic, bucket = the partition, next_offset summing to the next offset to
-- apply). A batch's deltas and its checkpoint increment go in ONE insert, which ClickHouse
-- applies atomically (one block, one part: the table has no partition key), so totals and
-- checkpoint can never disagree.
CREATE TABLE IF NOT EXISTS mentor_totals (
    mentor_id   String,
    grain       Enum8('hour' = 1, 'day' = 2, 'checkpoint' = 3, 'global_day' = 4),
    bucket      Int64,
    clicks      Int64,
    conversions Int64,
    next_offset Int64
) ENGINE = SummingMergeTree((clicks, conversions, next_offset))
ORDER BY (grain, mentor_id, bucket)
SETTINGS index_granularity = 1024;
