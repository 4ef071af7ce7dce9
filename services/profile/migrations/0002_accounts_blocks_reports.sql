-- Copies of auth's account facts that discovery needs (kept in sync by the
-- user.* events), so listing available users never calls auth.
ALTER TABLE profiles
    ADD COLUMN email       text NOT NULL DEFAULT '',
    ADD COLUMN is_verified boolean NOT NULL DEFAULT false,
    ADD COLUMN is_active   boolean NOT NULL DEFAULT true;

-- Blocks act both ways: look-ups by blocker and by blocked are both indexed.
CREATE TABLE blocks (
    blocker_id uuid NOT NULL,
    blocked_id uuid NOT NULL CHECK (blocked_id <> blocker_id),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (blocker_id, blocked_id)
);
CREATE INDEX blocks_blocked_idx ON blocks (blocked_id, blocker_id);

CREATE TABLE reports (
    id          uuid PRIMARY KEY,
    reporter_id uuid NOT NULL,
    reported_id uuid NOT NULL CHECK (reported_id <> reporter_id),
    reason      text NOT NULL CHECK (char_length(reason) BETWEEN 1 AND 100),
    description text CHECK (description IS NULL OR char_length(description) <= 2000),
    status      text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'resolved')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    resolved_at timestamptz,
    resolved_by uuid
);
-- At most one open report per reporter and reported user.
CREATE UNIQUE INDEX reports_open_pair_key ON reports (reporter_id, reported_id) WHERE status = 'open';
CREATE INDEX reports_status_created_idx ON reports (status, created_at DESC);
