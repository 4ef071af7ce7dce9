//! Follows accounts: consumes auth's `user.deactivated` and `user.deleted`.
//! A closed account's open calls end at once, its presence sockets are
//! closed, and (deletion) its name is blanked in everyone's history.

use tokio_util::sync::CancellationToken;
use unilink_bus::Redis;
use unilink_domain::UserId;
use unilink_events::consumer::{HandlerError, Subscription};
use unilink_events::payload::{USER_DEACTIVATED, USER_DELETED, UserRef, push_channel};
use unilink_events::{Event, stream_of};
use unilink_protocol::{CLOSE_POLICY, Control};

use crate::service::CallService;

/// Consumer group of the signaling service on `events:auth`.
pub const GROUP: &str = "signaling";

pub async fn run(redis: Redis, core: CallService, stop: CancellationToken) {
    let subscription = Subscription {
        stream: stream_of("auth"),
        group: GROUP.to_owned(),
        consumer: unilink_runtime::consumer_name("signaling"),
    };
    let publisher = redis.clone();
    let handler = move |event: Event| {
        let core = core.clone();
        let redis = publisher.clone();
        async move { handle(&core, &redis, event).await }
    };
    unilink_events::consumer::run(redis, subscription, handler, stop).await;
}

fn retry(e: impl std::fmt::Display) -> HandlerError {
    HandlerError::Retry(e.to_string())
}

async fn handle(core: &CallService, redis: &Redis, event: Event) -> Result<(), HandlerError> {
    let deleted = match event.event_type.as_str() {
        USER_DEACTIVATED => false,
        USER_DELETED => true,
        _ => return Ok(()),
    };
    // `user.deleted` carries more fields; both have `user_id`.
    let user: UserRef = event.payload_as().map_err(|e| HandlerError::Reject(e.to_string()))?;
    let user = UserId::parse(&user.user_id).map_err(|e| HandlerError::Reject(e.to_string()))?;
    core.close_calls_of(user).await.map_err(retry)?;
    redis
        .publish(
            &push_channel(&user.to_string()),
            &Control::close(CLOSE_POLICY, "account closed", None).to_text(),
        )
        .await
        .map_err(retry)?;
    if deleted {
        core.calls.forget_user(user).await.map_err(retry)?;
    }
    Ok(())
}
