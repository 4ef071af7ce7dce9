//! Keeps profiles in step with accounts: consumes auth's durable events, so
//! every account gets its profile even if this service was down when the
//! account was created (it catches up from the stream).
//!
//! Every handler is idempotent: creating an existing profile, verifying a
//! verified one, deactivating an inactive one or erasing an erased one
//! changes nothing. Auth's outbox replays its last 24 h of events when Redis
//! lost the stream, in their original order; an erased account's events then
//! come back after its erasure, so erased ids are remembered
//! (`erased_users`): its `user.registered` creates nothing and its
//! `user.verified`/`user.deactivated` are done, not retried for ever.

use tokio_util::sync::CancellationToken;
use unilink_bus::Redis;
use unilink_domain::UserId;
use unilink_events::consumer::{HandlerError, Subscription};
use unilink_events::payload::{
    USER_DEACTIVATED, USER_DELETED, USER_REGISTERED, USER_VERIFIED, UserDeleted, UserRef, UserRegistered, UserVerified,
};
use unilink_events::{Event, stream_of};

use crate::cache::Versions;
use crate::repo::ProfileRepository;

/// Consumer group of the profile service on `events:auth`.
pub const GROUP: &str = "profile";

pub async fn run(redis: Redis, profiles: ProfileRepository, stop: CancellationToken) {
    let versions = Versions::new(redis.clone());
    let subscription = Subscription {
        stream: stream_of("auth"),
        group: GROUP.to_owned(),
        consumer: unilink_runtime::consumer_name("profile"),
    };
    let handler = move |event: Event| {
        let (profiles, versions) = (profiles.clone(), versions.clone());
        async move { handle(&profiles, &versions, event).await }
    };
    unilink_events::consumer::run(redis, subscription, handler, stop).await;
}

fn user_id(raw: &str) -> Result<UserId, HandlerError> {
    UserId::parse(raw).map_err(|e| HandlerError::Reject(e.to_string()))
}

fn retry(e: impl std::fmt::Display) -> HandlerError {
    HandlerError::Retry(e.to_string())
}

/// An event about `user` found no profile: either `user.registered` is not in
/// yet (retried until it is), or the account was erased since — an event
/// replayed by auth's outbox after Redis lost the stream — and there is
/// nothing left to change.
async fn no_profile(profiles: &ProfileRepository, user: UserId) -> Result<(), HandlerError> {
    if profiles.is_erased(user).await.map_err(retry)? {
        tracing::debug!(user_id = %user, "event for an erased account; nothing to change");
        Ok(())
    } else {
        Err(HandlerError::Retry("profile not created yet".to_owned()))
    }
}

/// Each change is committed, then published to the read caches (a failure
/// to publish is retried with the event: the change is idempotent).
async fn handle(profiles: &ProfileRepository, versions: &Versions, event: Event) -> Result<(), HandlerError> {
    match event.event_type.as_str() {
        USER_REGISTERED => {
            let p: UserRegistered = event.payload_as().map_err(|e| HandlerError::Reject(e.to_string()))?;
            profiles
                .create(user_id(&p.user_id)?, &p.email, &p.username, &p.full_name)
                .await
                .map_err(retry)
        }
        USER_VERIFIED => {
            let p: UserVerified = event.payload_as().map_err(|e| HandlerError::Reject(e.to_string()))?;
            let user = user_id(&p.user_id)?;
            if profiles.set_verified(user).await.map_err(retry)? {
                versions.profile_changed(user).await.map_err(retry)
            } else {
                no_profile(profiles, user).await
            }
        }
        USER_DEACTIVATED => {
            let p: UserRef = event.payload_as().map_err(|e| HandlerError::Reject(e.to_string()))?;
            let user = user_id(&p.user_id)?;
            if profiles.set_inactive(user).await.map_err(retry)? {
                versions.profile_changed(user).await.map_err(retry)
            } else {
                no_profile(profiles, user).await
            }
        }
        USER_DELETED => {
            let p: UserDeleted = event.payload_as().map_err(|e| HandlerError::Reject(e.to_string()))?;
            let user = user_id(&p.user_id)?;
            let mut involved = profiles.erase(user).await.map_err(retry)?;
            versions.profile_changed(user).await.map_err(retry)?;
            involved.push(user);
            versions.blocks_changed(&involved).await.map_err(retry)
        }
        _ => Ok(()),
    }
}
