//! The stream side of the service: the consumer loops on `events:auth`
//! (emails) and `events:signaling` (pushes), as this service's consumer
//! group. Each hands every event to its core ([`EmailDelivery::handle`],
//! [`PushDelivery::handle`]) and acknowledges it when that returns `Ok`.

use tokio_util::sync::CancellationToken;
use unilink_bus::Redis;
use unilink_events::Event;
use unilink_events::consumer::{HandlerError, Subscription};
use unilink_runtime::BackendService;

use crate::push::PushDelivery;
use crate::service::EmailDelivery;

pub use crate::service::DEAD_LETTERS;

/// The consumer group of this service on every stream it reads.
pub const GROUP: &str = "notification";
/// The producer whose stream carries the email events.
pub const AUTH_PRODUCER: &str = "auth";
/// The producer whose stream carries the call events.
pub const SIGNALING_PRODUCER: &str = "signaling";

/// The email consumer loop; it ends soon after `stop` is cancelled.
pub fn emails(core: EmailDelivery, redis: Redis, stop: CancellationToken) -> impl Future<Output = ()> + Send + 'static {
    consume(AUTH_PRODUCER, redis, stop, move |event| {
        let core = core.clone();
        async move { core.handle(event).await }
    })
}

/// The push consumer loop; it ends soon after `stop` is cancelled.
pub fn pushes(core: PushDelivery, redis: Redis, stop: CancellationToken) -> impl Future<Output = ()> + Send + 'static {
    consume(SIGNALING_PRODUCER, redis, stop, move |event| {
        let core = core.clone();
        async move { core.handle(event).await }
    })
}

/// Runs `handler` over the events of `producer`'s stream as this service's
/// consumer group, until `stop` is cancelled (both notification consumers).
fn consume<H, Fut>(
    producer: &str,
    redis: Redis,
    stop: CancellationToken,
    handler: H,
) -> impl Future<Output = ()> + Send + 'static
where
    H: Fn(Event) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    let subscription = Subscription {
        stream: unilink_events::stream_of(producer),
        group: GROUP.to_owned(),
        consumer: unilink_runtime::consumer_name(<crate::Notification as BackendService>::NAME),
    };
    unilink_events::consumer::run(redis, subscription, handler, stop)
}
