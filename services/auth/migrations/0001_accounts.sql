-- Accounts: the owner of user ids. Emails and usernames are unique
-- case-insensitively; the indexes also serve login and lookup by either.
CREATE TABLE accounts (
    id            uuid PRIMARY KEY,
    email         text NOT NULL,
    username      text NOT NULL,
    full_name     text NOT NULL,
    password_hash text NOT NULL,
    is_verified   boolean NOT NULL DEFAULT false,
    is_active     boolean NOT NULL DEFAULT true,
    role          text NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'admin')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX accounts_email_key ON accounts (lower(email));
CREATE UNIQUE INDEX accounts_username_key ON accounts (lower(username));
