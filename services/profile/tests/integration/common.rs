//! A profile service (one replica or several, sharing PostgreSQL and Redis)
//! whose profiles come into being the way they do in production: auth's
//! events appended to `events:auth` as its outbox relay does, consumed by
//! the profile worker.

use std::time::Duration;

use tonic::transport::Channel;
use unilink_bus::Redis;
use unilink_domain::UserId;
use unilink_events::payload::{USER_DEACTIVATED, USER_DELETED, USER_REGISTERED, USER_VERIFIED};
use unilink_events::{Event, stream_of};
use unilink_presence::PresenceRegistry;
use unilink_profile::Profiles;
use unilink_proto::profile::profile_service_client::ProfileServiceClient;
use unilink_proto::profile::{
    BlockRequest, CallEligibilityReply, CallEligibilityRequest, GetProfileRequest, ListAvailableRequest, Profile,
    UpdateProfileRequest, ViewProfileRequest,
};
use unilink_test_support::service::{RunningService, spawn};
use unilink_test_support::{TestDatabase, eventually, settings, unique_prefix};

pub const WAIT: Duration = Duration::from_secs(10);

pub struct Harness {
    services: Vec<RunningService>,
    pub redis: Redis,
    clients: Vec<ProfileServiceClient<Channel>>,
    // Declared last, so dropped after the services.
    pub db: TestDatabase,
}

impl Harness {
    pub async fn start() -> Harness {
        Harness::replicas(1).await
    }

    /// `n` replicas of the service on one database and one Redis prefix.
    pub async fn replicas(n: usize) -> Harness {
        let db = TestDatabase::create().await;
        let settings = settings(&db, &unique_prefix(), &[]);
        let redis = Redis::connect(&settings.redis).await.expect("connect to Redis");
        let mut services = Vec::new();
        let mut clients = Vec::new();
        for _ in 0..n {
            let service = spawn::<Profiles>(settings.clone()).await;
            clients.push(ProfileServiceClient::connect(service.url()).await.unwrap());
            services.push(service);
        }
        Harness {
            services,
            redis,
            clients,
            db,
        }
    }

    pub async fn stop(mut self) {
        for service in self.services.drain(..) {
            service.stop().await.unwrap();
        }
        self.redis.close().await;
    }

    /// A client of replica `n`.
    pub fn on(&self, n: usize) -> ProfileServiceClient<Channel> {
        self.clients[n].clone()
    }

    /// Appends an auth event to `events:auth` as auth's outbox relay does.
    pub async fn emit(&self, event_type: &str, payload: String) {
        let payload = serde_json::from_str(&payload).expect("a JSON payload");
        unilink_events::outbox::append(&self.redis, &stream_of("auth"), &Event::new(event_type, payload))
            .await
            .expect("append to events:auth");
    }

    pub async fn profile(&self, user: &str) -> Option<Profile> {
        self.profile_on(0, user).await
    }

    pub async fn profile_on(&self, n: usize, user: &str) -> Option<Profile> {
        self.on(n)
            .get_profile(GetProfileRequest {
                user_id: user.to_owned(),
            })
            .await
            .ok()
            .map(tonic::Response::into_inner)
    }

    /// Waits until the worker has brought `user`'s profile to a state `check` accepts.
    pub async fn until(&self, what: &str, user: &str, check: impl Fn(&Profile) -> bool) {
        eventually(what, WAIT, || async { self.profile(user).await.filter(|p| check(p)) }).await;
    }

    /// A registered account named `username` (verified when asked); its id.
    pub async fn account(&self, username: &str, verified: bool) -> String {
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

    pub async fn deactivate(&self, user: &str) {
        self.emit(USER_DEACTIVATED, format!(r#"{{"user_id":"{user}"}}"#)).await;
        self.until("the profile to be deactivated", user, |p| !p.is_active)
            .await;
    }

    pub async fn delete(&self, user: &str) {
        self.emit(USER_DELETED, format!(r#"{{"user_id":"{user}","email":"x@uni.test"}}"#))
            .await;
        eventually("the profile to be erased", WAIT, || async {
            self.profile(user).await.is_none().then_some(())
        })
        .await;
    }

    /// How many `events:auth` entries the profile worker has not acknowledged.
    pub async fn unacknowledged(&self) -> u64 {
        self.redis
            .unacknowledged(&stream_of("auth"), "profile")
            .await
            .expect("XPENDING")
    }

    pub async fn block(&self, user: &str, target: &str) {
        self.block_on(0, user, target).await;
    }

    pub async fn block_on(&self, n: usize, user: &str, target: &str) {
        self.on(n).block(pair(user, target)).await.expect("block");
    }

    pub async fn unblock_on(&self, n: usize, user: &str, target: &str) {
        self.on(n).unblock(pair(user, target)).await.expect("unblock");
    }

    pub async fn eligibility(&self, caller: &str, receiver: &str) -> Result<CallEligibilityReply, tonic::Status> {
        self.eligibility_on(0, caller, receiver).await
    }

    pub async fn eligibility_on(
        &self,
        n: usize,
        caller: &str,
        receiver: &str,
    ) -> Result<CallEligibilityReply, tonic::Status> {
        self.on(n)
            .call_eligibility(CallEligibilityRequest {
                caller_id: caller.to_owned(),
                receiver_id: receiver.to_owned(),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn set_bio_on(&self, n: usize, user: &str, bio: &str) -> Profile {
        self.on(n)
            .update_profile(UpdateProfileRequest {
                user_id: user.to_owned(),
                bio: Some(bio.to_owned()),
                ..Default::default()
            })
            .await
            .expect("update")
            .into_inner()
    }

    pub async fn view_on(&self, n: usize, viewer: &str, user: &str) -> Result<Profile, tonic::Status> {
        self.on(n)
            .view_profile(ViewProfileRequest {
                viewer_id: viewer.to_owned(),
                user_id: user.to_owned(),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// Usernames `user` may call, as replica `n` lists them.
    pub async fn available_on(&self, n: usize, user: &str) -> Vec<String> {
        self.on(n)
            .list_available(ListAvailableRequest {
                user_id: user.to_owned(),
                limit: 50,
            })
            .await
            .expect("list available")
            .into_inner()
            .users
            .into_iter()
            .map(|p| p.username)
            .collect()
    }

    /// Verified accounts with these usernames; their ids, in order.
    pub async fn accounts<const N: usize>(&self, names: [&str; N]) -> [String; N] {
        let mut ids = Vec::with_capacity(N);
        for name in names {
            ids.push(self.account(name, true).await);
        }
        ids.try_into().expect("one id per name")
    }

    /// [`Harness::accounts`], each marked online.
    pub async fn online_accounts<const N: usize>(&self, names: [&str; N]) -> [String; N] {
        let ids = self.accounts(names).await;
        for id in &ids {
            self.online(id).await;
        }
        ids
    }

    /// Marks `user` online, as a presence socket does.
    pub async fn online(&self, user: &str) {
        let presence = PresenceRegistry::new(self.redis.clone(), unilink_presence::DEFAULT_TTL);
        presence
            .connect(UserId::parse(user).unwrap(), "test-socket")
            .await
            .expect("mark online");
    }
}

fn pair(user: &str, target: &str) -> BlockRequest {
    BlockRequest {
        user_id: user.to_owned(),
        target_id: target.to_owned(),
    }
}
