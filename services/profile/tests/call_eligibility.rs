//! `CallEligibility`: the facts signaling decides a call on. Profiles come
//! into being the way they do in production — auth's events appended to
//! `events:auth` as its outbox relay does, consumed by the profile worker —
//! and blocks through the service's own `Block` RPC.

use std::collections::HashMap;
use std::time::Duration;

use tonic::transport::Channel;
use unilink_bus::{Redis, StreamConsumer};
use unilink_domain::EventId;
use unilink_events::payload::{USER_DEACTIVATED, USER_DELETED, USER_REGISTERED, USER_VERIFIED};
use unilink_events::{Event, stream_of};
use unilink_profile::Profiles;
use unilink_proto::profile::profile_service_client::ProfileServiceClient;
use unilink_proto::profile::{BlockRequest, CallEligibilityReply, CallEligibilityRequest, GetProfileRequest, Profile};
use unilink_test_support::service::{RunningService, spawn};
use unilink_test_support::{TestDatabase, eventually, settings, unique_prefix};

const WAIT: Duration = Duration::from_secs(10);

struct Harness {
    service: Option<RunningService>,
    redis: Redis,
    client: ProfileServiceClient<Channel>,
    // Declared last, so dropped after the service.
    _db: TestDatabase,
}

impl Harness {
    async fn start() -> Harness {
        let db = TestDatabase::create().await;
        let settings = settings(&db, &unique_prefix(), &[]);
        let redis = Redis::connect(&settings.redis).await.expect("connect to Redis");
        let service = spawn::<Profiles>(settings).await;
        let client = ProfileServiceClient::connect(service.url()).await.unwrap();
        Harness {
            service: Some(service),
            redis,
            client,
            _db: db,
        }
    }

    async fn stop(mut self) {
        if let Some(service) = self.service.take() {
            service.stop().await.unwrap();
        }
        self.redis.close().await;
    }

    /// Appends an auth event to `events:auth` as auth's outbox relay does.
    async fn emit(&self, event_type: &str, payload: String) {
        let fields = HashMap::from([
            ("id".to_owned(), EventId::new().to_string()),
            ("type".to_owned(), event_type.to_owned()),
            ("occurred_at".to_owned(), chrono::Utc::now().to_rfc3339()),
            ("payload".to_owned(), payload),
        ]);
        let event = Event::from_fields(&fields).expect("a well-formed event");
        let fields = event.to_fields();
        let pairs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.redis
            .append(&stream_of("auth"), &pairs, 100_000)
            .await
            .expect("append to events:auth");
    }

    async fn profile(&self, user: &str) -> Option<Profile> {
        self.client
            .clone()
            .get_profile(GetProfileRequest {
                user_id: user.to_owned(),
            })
            .await
            .ok()
            .map(tonic::Response::into_inner)
    }

    /// Waits until the worker has brought `user`'s profile to a state `check` accepts.
    async fn until(&self, what: &str, user: &str, check: impl Fn(&Profile) -> bool) {
        eventually(what, WAIT, || async { self.profile(user).await.filter(|p| check(p)) }).await;
    }

    /// A registered account named `username` (verified when asked); its id.
    async fn account(&self, username: &str, verified: bool) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        self.emit(
            USER_REGISTERED,
            format!(
                r#"{{"user_id":"{id}","email":"{username}@uni.test","username":"{username}","full_name":"{username}"}}"#
            ),
        )
        .await;
        if verified {
            self.emit(USER_VERIFIED, format!(r#"{{"user_id":"{id}"}}"#)).await;
        }
        self.until("the profile to exist", &id, |p| p.is_verified == verified)
            .await;
        id
    }

    async fn deactivate(&self, user: &str) {
        self.emit(USER_DEACTIVATED, format!(r#"{{"user_id":"{user}"}}"#)).await;
        self.until("the profile to be deactivated", user, |p| !p.is_active)
            .await;
    }

    async fn delete(&self, user: &str) {
        self.emit(USER_DELETED, format!(r#"{{"user_id":"{user}","email":"x@uni.test"}}"#))
            .await;
        eventually("the profile to be erased", WAIT, || async {
            self.profile(user).await.is_none().then_some(())
        })
        .await;
    }

    /// How many `events:auth` entries the profile worker has not acknowledged.
    async fn unacknowledged(&self) -> u64 {
        let probe = StreamConsumer::join(&self.redis, &stream_of("auth"), "profile", "test-probe")
            .await
            .expect("join the group");
        let count = probe.pending_count().await.expect("XPENDING");
        probe.close().await;
        count
    }

    async fn block(&self, user: &str, target: &str) {
        self.client
            .clone()
            .block(BlockRequest {
                user_id: user.to_owned(),
                target_id: target.to_owned(),
            })
            .await
            .expect("block");
    }

    async fn eligibility(&self, caller: &str, receiver: &str) -> Result<CallEligibilityReply, tonic::Status> {
        self.client
            .clone()
            .call_eligibility(CallEligibilityRequest {
                caller_id: caller.to_owned(),
                receiver_id: receiver.to_owned(),
            })
            .await
            .map(tonic::Response::into_inner)
    }
}

#[tokio::test]
async fn a_verified_active_receiver_is_available_with_both_usernames() {
    let h = Harness::start().await;
    let ana = h.account("ana_k", true).await;
    let ben = h.account("ben_o", true).await;

    let reply = h.eligibility(&ana, &ben).await.unwrap();
    assert_eq!(
        reply,
        CallEligibilityReply {
            receiver_available: true,
            blocked: false,
            caller_username: "ana_k".to_owned(),
            receiver_username: "ben_o".to_owned(),
        }
    );

    // A caller without a profile (yet) is not an error: an empty username.
    let stranger = uuid::Uuid::new_v4().to_string();
    let reply = h.eligibility(&stranger, &ben).await.unwrap();
    assert_eq!(reply.caller_username, "");
    assert_eq!(reply.receiver_username, "ben_o");
    assert!(reply.receiver_available);
    assert!(!reply.blocked);
    h.stop().await;
}

#[tokio::test]
async fn an_unknown_or_deleted_receiver_is_not_found_and_bad_ids_are_invalid() {
    let h = Harness::start().await;
    let ana = h.account("ana_k", true).await;

    let unknown = h
        .eligibility(&ana, &uuid::Uuid::new_v4().to_string())
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    let ben = h.account("ben_o", true).await;
    h.delete(&ben).await;
    let deleted = h.eligibility(&ana, &ben).await.unwrap_err();
    assert_eq!(deleted.code(), tonic::Code::NotFound);

    for (caller, receiver) in [(ana.as_str(), "not-a-uuid"), ("", ana.as_str())] {
        let invalid = h.eligibility(caller, receiver).await.unwrap_err();
        assert_eq!(
            invalid.code(),
            tonic::Code::InvalidArgument,
            "{caller:?} -> {receiver:?}"
        );
    }
    h.stop().await;
}

#[tokio::test]
async fn a_block_in_either_direction_is_reported() {
    let h = Harness::start().await;
    let ana = h.account("ana_k", true).await;
    let ben = h.account("ben_o", true).await;
    let cai = h.account("cai_l", true).await;

    // Ana blocked Ben: blocked whoever calls whom.
    h.block(&ana, &ben).await;
    assert!(
        h.eligibility(&ana, &ben).await.unwrap().blocked,
        "caller blocked the receiver"
    );
    assert!(
        h.eligibility(&ben, &ana).await.unwrap().blocked,
        "receiver blocked the caller"
    );

    // The block concerns those two only.
    assert!(!h.eligibility(&cai, &ben).await.unwrap().blocked);
    assert!(!h.eligibility(&ana, &cai).await.unwrap().blocked);

    // Facts, not a verdict: the usernames and availability still come back.
    let reply = h.eligibility(&ben, &ana).await.unwrap();
    assert_eq!(reply.caller_username, "ben_o");
    assert_eq!(reply.receiver_username, "ana_k");
    assert!(reply.receiver_available);
    h.stop().await;
}

#[tokio::test]
async fn an_unverified_or_deactivated_receiver_is_not_available() {
    let h = Harness::start().await;
    let ana = h.account("ana_k", true).await;
    let unverified = h.account("ben_o", false).await;
    let deactivated = h.account("cai_l", true).await;
    h.deactivate(&deactivated).await;

    let reply = h.eligibility(&ana, &unverified).await.unwrap();
    assert!(!reply.receiver_available, "unverified");
    assert_eq!(reply.receiver_username, "ben_o");

    let reply = h.eligibility(&ana, &deactivated).await.unwrap();
    assert!(!reply.receiver_available, "deactivated");
    assert_eq!(reply.receiver_username, "cai_l");
    assert!(!reply.blocked);

    // Availability is about the receiver only: an unverified caller may ask.
    assert!(h.eligibility(&unverified, &ana).await.unwrap().receiver_available);
    h.stop().await;
}

#[tokio::test]
async fn a_replay_of_a_deleted_accounts_events_brings_nothing_back() {
    let h = Harness::start().await;
    let gone = h.account("dee_p", true).await;
    h.deactivate(&gone).await;
    h.delete(&gone).await;
    // Its username is free again, and taken by a new account.
    let heir = h.account("dee_p", true).await;

    // Auth's outbox replays its events (Redis lost the stream): the account's
    // registration, verification, deactivation and deletion, in that order…
    let registered =
        format!(r#"{{"user_id":"{gone}","email":"dee_p@uni.test","username":"dee_p","full_name":"dee_p"}}"#);
    h.emit(USER_REGISTERED, registered).await;
    h.emit(USER_VERIFIED, format!(r#"{{"user_id":"{gone}"}}"#)).await;
    h.emit(USER_DEACTIVATED, format!(r#"{{"user_id":"{gone}"}}"#)).await;
    h.emit(USER_DELETED, format!(r#"{{"user_id":"{gone}","email":"x@uni.test"}}"#))
        .await;
    // …or only the later ones, the registration being past the outbox's retention.
    h.emit(USER_VERIFIED, format!(r#"{{"user_id":"{gone}"}}"#)).await;
    h.emit(USER_DEACTIVATED, format!(r#"{{"user_id":"{gone}"}}"#)).await;
    // A later account shows that the worker is past all of them.
    h.account("eve_q", true).await;

    assert!(h.profile(&gone).await.is_none(), "the erased profile stays erased");
    let profile = h.profile(&heir).await.expect("the new account's profile");
    assert_eq!(profile.username, "dee_p");
    // Every replayed event was done with, none left to retry for ever.
    eventually("every entry to be acknowledged", WAIT, || async {
        (h.unacknowledged().await == 0).then_some(())
    })
    .await;
    h.stop().await;
}
