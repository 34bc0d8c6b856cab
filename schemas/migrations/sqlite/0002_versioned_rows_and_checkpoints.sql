-- The embedded store becomes a sink of the one planner (pipeline/src/plan): it stores the
-- versioned rows the planner decides, keeping the highest version of each, and the
-- consumer's checkpoint in the same transaction as the data it describes.

-- Every state of an attribution carries a version (1: the click; +1 per accepted command).
-- Existing rows: a confirmed one had one command applied, a deleted one one more.
ALTER TABLE attributions ADD COLUMN version INTEGER NOT NULL DEFAULT 1;
UPDATE attributions SET version = 1
    + (CASE WHEN status = 'confirmed' THEN 1 ELSE 0 END)
    + (CASE WHEN deleted_at IS NOT NULL THEN 1 ELSE 0 END);

-- A deleted attribution releases its member (released = 1, a higher version) instead of
-- removing the row: the planner decides, the store keeps what it is told.
ALTER TABLE attributed_members ADD COLUMN released INTEGER NOT NULL DEFAULT 0;
ALTER TABLE attributed_members ADD COLUMN version INTEGER NOT NULL DEFAULT 1;

-- A retired code stays as a row (retired = 1, a higher version).
ALTER TABLE referral_codes ADD COLUMN retired INTEGER NOT NULL DEFAULT 0;
ALTER TABLE referral_codes ADD COLUMN version INTEGER NOT NULL DEFAULT 1;
DROP INDEX referral_codes_by_mentor;
CREATE INDEX referral_codes_live_by_mentor ON referral_codes (mentor_id, code) WHERE retired = 0;

-- A decision records what it wrote and the log message it was decided for, so that a
-- replayed message re-writes its recorded effect instead of being decided again.
ALTER TABLE command_verdicts ADD COLUMN effect TEXT NOT NULL DEFAULT '{}';
ALTER TABLE command_verdicts ADD COLUMN source_topic TEXT NOT NULL DEFAULT '';
ALTER TABLE command_verdicts ADD COLUMN source_partition INTEGER NOT NULL DEFAULT 0;
ALTER TABLE command_verdicts ADD COLUMN source_offset INTEGER NOT NULL DEFAULT -1;

-- The consumer's checkpoint per log partition: the next offset to apply. Written in the
-- same transaction as the rows and totals of the events before it.
CREATE TABLE consumer_checkpoints (
    topic       TEXT    NOT NULL,
    partition   INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
) WITHOUT ROWID;
