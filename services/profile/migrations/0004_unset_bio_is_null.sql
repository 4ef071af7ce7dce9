-- The original API returned `bio` (and `profile_picture`) as null when the
-- user had not set one, and its web client shows "null" and "" differently.
-- An unset bio is now NULL; an update to "" unsets it again.
ALTER TABLE profiles ALTER COLUMN bio DROP NOT NULL, ALTER COLUMN bio DROP DEFAULT;
UPDATE profiles SET bio = NULL WHERE bio = '';
UPDATE profiles SET profile_picture = NULL WHERE profile_picture = '';
