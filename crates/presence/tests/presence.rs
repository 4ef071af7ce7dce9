//! Presence against a real Redis, each test under its own key prefix.

use std::time::Duration;

use unilink_bus::Redis;
use unilink_config::{RedisSettings, Secret};
use unilink_domain::UserId;
use unilink_presence::PresenceRegistry;
use unilink_test_support::{redis_url, unique_prefix};

async fn registry(ttl: Duration) -> PresenceRegistry {
    let redis = Redis::connect(&RedisSettings::new(Secret::new(redis_url()), unique_prefix()))
        .await
        .unwrap();
    PresenceRegistry::new(redis, ttl)
}

#[tokio::test]
async fn a_user_is_online_while_any_device_is_connected() {
    let presence = registry(Duration::from_secs(30)).await;
    let ada = UserId::new();
    assert!(!presence.is_online(ada).await.unwrap());
    presence.connect(ada, "phone").await.unwrap();
    presence.connect(ada, "laptop").await.unwrap();
    assert!(presence.is_online(ada).await.unwrap());
    assert!(presence.disconnect(ada, "phone").await.unwrap(), "laptop still there");
    assert!(presence.is_online(ada).await.unwrap());
    assert!(!presence.disconnect(ada, "laptop").await.unwrap());
    assert!(!presence.is_online(ada).await.unwrap());
}

#[tokio::test]
async fn a_crashed_node_s_users_fall_offline_within_the_ttl() {
    let presence = registry(Duration::from_millis(600)).await;
    let (ada, bob) = (UserId::new(), UserId::new());
    presence.connect(ada, "c1").await.unwrap();
    presence.connect(bob, "c2").await.unwrap();
    // Bob's node keeps beating; Ada's node died without a word.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        presence.heartbeat(bob, "c2").await.unwrap();
    }
    assert_eq!(presence.online_among(&[ada, bob]).await.unwrap(), vec![false, true]);
}

#[tokio::test]
async fn logout_takes_every_device_offline() {
    let presence = registry(Duration::from_secs(30)).await;
    let ada = UserId::new();
    presence.connect(ada, "phone").await.unwrap();
    presence.connect(ada, "laptop").await.unwrap();
    presence.disconnect_all(ada).await.unwrap();
    assert!(!presence.is_online(ada).await.unwrap());
    assert_eq!(presence.online_among(&[ada]).await.unwrap(), vec![false]);
}

#[tokio::test]
async fn thousands_of_users_are_checked_without_a_round_trip_each() {
    let presence = registry(Duration::from_secs(30)).await;
    let users: Vec<UserId> = (0..2500).map(|_| UserId::new()).collect();
    for user in users.iter().step_by(2) {
        presence.connect(*user, "c").await.unwrap();
    }
    let online = presence.online_among(&users).await.unwrap();
    assert_eq!(online.len(), 2500);
    assert_eq!(online.iter().filter(|o| **o).count(), 1250);
    assert!(online.iter().step_by(2).all(|o| *o));
}
