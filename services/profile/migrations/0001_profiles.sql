-- Public profiles, keyed by the user id minted by auth. The username is a
-- copy of auth's (kept in sync by events), unique case-insensitively.
CREATE TABLE profiles (
    user_id         uuid PRIMARY KEY,
    username        text NOT NULL,
    full_name       text NOT NULL,
    bio             text NOT NULL DEFAULT '' CHECK (char_length(bio) <= 500),
    profile_picture text CHECK (profile_picture IS NULL OR char_length(profile_picture) <= 2048),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX profiles_username_key ON profiles (lower(username));
