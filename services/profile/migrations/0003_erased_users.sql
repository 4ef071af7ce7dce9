-- Accounts erased after `user.deleted`. Auth's events can come again (its
-- outbox replays the last 24 h when Redis lost the stream): a replayed
-- `user.registered` must not bring an erased profile back (its username may
-- belong to a new account by now), and a replayed `user.verified` or
-- `user.deactivated` has no profile left to change and must not wait for one.
-- Only the random user id is kept.
CREATE TABLE erased_users (
    user_id   uuid PRIMARY KEY,
    erased_at timestamptz NOT NULL DEFAULT now()
);
