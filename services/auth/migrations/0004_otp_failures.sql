-- Wrong login codes are counted per account, across codes: asking for a new
-- code does not reset the count. Every fifth wrong code locks the account's
-- codes (and new logins) for a delay that doubles each time, up to a cap; the
-- owner's code still works once the delay is over. A correct code clears it.
CREATE TABLE otp_failures (
    user_id      uuid PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    failures     integer NOT NULL DEFAULT 0 CHECK (failures >= 0),
    locked_until timestamptz
);
