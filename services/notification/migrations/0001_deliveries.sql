-- The delivered-event ledger: one row per event the service has taken on.
-- The primary key makes delivery idempotent: a redelivered event finds its
-- row and is not sent twice.
CREATE TABLE deliveries (
    event_id     uuid PRIMARY KEY,
    event_type   text NOT NULL,
    channel      text NOT NULL CHECK (channel IN ('email', 'push')),
    status       text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts     integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error   text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    delivered_at timestamptz
);

-- Retry scans look only at undelivered events, oldest first.
CREATE INDEX deliveries_pending_idx ON deliveries (created_at) WHERE status <> 'delivered';
