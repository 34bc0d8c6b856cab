-- A referral code's redirect target (`GET /r/{code}`); NULL: none.
ALTER TABLE referral_codes ADD COLUMN destination_url TEXT;
