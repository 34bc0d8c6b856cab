-- A referral code's redirect target (`GET /r/{code}`); NULL: none.
-- No `IF NOT EXISTS`: ClickHouse 18.16 predates it. The runner skips an ADD COLUMN whose
-- column exists (system.columns), so the migration stays safe to run twice.
ALTER TABLE referral_codes ADD COLUMN destination_url Nullable(String) AFTER mentor_id;
