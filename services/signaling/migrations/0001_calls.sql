-- Calls and their state machine:
--   pending -> ongoing -> completed
--   pending -> rejected | missed | cancelled
-- History is kept: rows are never deleted.
CREATE TABLE calls (
    id               uuid PRIMARY KEY,
    initiator_id     uuid NOT NULL,
    receiver_id      uuid NOT NULL CHECK (receiver_id <> initiator_id),
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'ongoing', 'completed', 'rejected', 'missed', 'cancelled')),
    call_token       text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    ended_at         timestamptz,
    duration_seconds bigint CHECK (duration_seconds IS NULL OR duration_seconds >= 0)
);

-- History and "my active call" lookups by either participant, newest first.
CREATE INDEX calls_initiator_created_idx ON calls (initiator_id, created_at DESC);
CREATE INDEX calls_receiver_created_idx ON calls (receiver_id, created_at DESC);
-- Timers scan only calls that are still open.
CREATE INDEX calls_open_idx ON calls (status, created_at) WHERE status IN ('pending', 'ongoing');
