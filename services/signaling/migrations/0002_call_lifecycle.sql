-- Names shown in call history, copied from the profile service when the call
-- starts (usernames never change; they are blanked when an account is deleted).
ALTER TABLE calls
    ADD COLUMN initiator_username text NOT NULL DEFAULT '',
    ADD COLUMN receiver_username  text NOT NULL DEFAULT '',
    -- Who ended, rejected or cancelled the call; NULL when the system did.
    ADD COLUMN ended_by           uuid,
    -- Why the system ended it: ring_timeout, max_duration, abandoned, account_closed.
    ADD COLUMN end_reason         text;

-- One open (pending or ongoing) call per user, enforced by the database: each
-- participant of an open call holds a row here; a second call for either of
-- them fails on the primary key, whoever commits first wins.
CREATE TABLE busy_users (
    user_id uuid PRIMARY KEY,
    call_id uuid NOT NULL REFERENCES calls (id)
);
CREATE INDEX busy_users_call_idx ON busy_users (call_id);

-- History pages are ordered by (created_at, id).
DROP INDEX calls_initiator_created_idx;
DROP INDEX calls_receiver_created_idx;
CREATE INDEX calls_initiator_created_idx ON calls (initiator_id, created_at DESC, id DESC);
CREATE INDEX calls_receiver_created_idx ON calls (receiver_id, created_at DESC, id DESC);
-- The max-duration timer scans ongoing calls by start time.
CREATE INDEX calls_ongoing_started_idx ON calls (started_at) WHERE status = 'ongoing';
