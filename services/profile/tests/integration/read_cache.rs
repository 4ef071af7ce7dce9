//! The read cache (`cache.rs`): two replicas share PostgreSQL and Redis, each
//! with its own cache. Every change made through one replica — or by the
//! event worker — is seen by the other's next read, with no wait: the reads
//! below are not retried.

use crate::common;

use common::Harness;
use tonic::Code;

#[tokio::test]
async fn a_write_on_one_replica_is_read_at_once_on_the_other() {
    let h = Harness::replicas(2).await;
    let [ana, ben] = h.online_accounts(["ana_k", "ben_o"]).await;

    for round in 0..10 {
        let (writer, reader) = (round % 2, 1 - round % 2);
        // Warm the reader's cache with what is there now.
        assert!(h.profile_on(reader, &ana).await.is_some());
        assert!(h.view_on(reader, &ben, &ana).await.is_ok());
        assert!(h.available_on(reader, &ben).await.contains(&"ana_k".to_owned()));

        let bio = format!("bio number {round}");
        assert_eq!(
            h.set_bio_on(writer, &ana, &bio).await.bio.as_deref(),
            Some(bio.as_str())
        );
        let me = h.profile_on(reader, &ana).await.expect("ana's profile");
        assert_eq!(
            me.bio.as_deref(),
            Some(bio.as_str()),
            "GetProfile on replica {reader}, round {round}"
        );
        assert!(me.is_online);
        let seen = h.view_on(reader, &ben, &ana).await.expect("ana as ben sees her");
        assert_eq!(
            seen.bio.as_deref(),
            Some(bio.as_str()),
            "ViewProfile on replica {reader}, round {round}"
        );
    }
    h.stop().await;
}

#[tokio::test]
async fn blocks_and_unblocks_reach_every_replica_at_once() {
    let h = Harness::replicas(2).await;
    let [ana, ben, cai] = h.online_accounts(["ana_k", "ben_o", "cai_l"]).await;
    let names = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();

    for _ in 0..3 {
        // Replica 1 warm: everyone sees everyone.
        assert_eq!(h.available_on(1, &ana).await.len(), 2);
        assert_eq!(h.available_on(1, &ben).await.len(), 2);
        assert!(h.view_on(1, &ben, &ana).await.is_ok());
        assert!(!h.eligibility_on(1, &ben, &ana).await.unwrap().blocked);

        // Ana blocks Ben on replica 0; replica 1 knows at once, both ways.
        h.block_on(0, &ana, &ben).await;
        let mut ana_sees = h.available_on(1, &ana).await;
        ana_sees.sort();
        assert_eq!(ana_sees, names(&["cai_l"]));
        assert_eq!(h.available_on(1, &ben).await, names(&["cai_l"]));
        assert_eq!(h.available_on(1, &cai).await.len(), 2, "cai is not involved");
        let refused = h.view_on(1, &ben, &ana).await.unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "ana blocked ben: {refused:?}");
        assert!(h.view_on(1, &ana, &ben).await.is_ok(), "ben did not block ana");
        assert!(h.eligibility_on(1, &ben, &ana).await.unwrap().blocked);
        assert!(h.eligibility_on(1, &ana, &ben).await.unwrap().blocked);

        // And the unblock, the same way.
        h.unblock_on(0, &ana, &ben).await;
        assert_eq!(h.available_on(1, &ben).await.len(), 2);
        assert!(h.view_on(1, &ben, &ana).await.is_ok());
        assert!(!h.eligibility_on(1, &ana, &ben).await.unwrap().blocked);
    }
    h.stop().await;
}

#[tokio::test]
async fn deactivation_and_erasure_by_events_reach_warm_caches() {
    let h = Harness::replicas(2).await;
    let [ana, ben, cai] = h.online_accounts(["ana_k", "ben_o", "cai_l"]).await;
    h.block_on(0, &cai, &ana).await;
    // Both replicas warm.
    for n in 0..2 {
        assert!(h.view_on(n, &ana, &ben).await.is_ok());
        assert!(h.available_on(n, &ana).await.contains(&"ben_o".to_owned()));
        assert!(h.eligibility_on(n, &ana, &ben).await.unwrap().receiver_available);
        assert!(h.eligibility_on(n, &ana, &cai).await.unwrap().blocked);
    }

    // Deactivated by an event the worker of either replica may handle:
    // waits until replica 0 shows it, then replica 1 must at once.
    h.deactivate(&ben).await;
    assert_eq!(h.view_on(1, &ana, &ben).await.unwrap_err().code(), Code::NotFound);
    assert!(!h.available_on(1, &ana).await.contains(&"ben_o".to_owned()));
    assert!(!h.eligibility_on(1, &ana, &ben).await.unwrap().receiver_available);

    // Erased: gone everywhere, and the blocks it made with it.
    h.delete(&cai).await;
    for n in 0..2 {
        assert!(h.profile_on(n, &cai).await.is_none());
        assert_eq!(
            h.eligibility_on(n, &ana, &cai).await.unwrap_err().code(),
            Code::NotFound
        );
        assert_eq!(h.view_on(n, &ana, &cai).await.unwrap_err().code(), Code::NotFound);
    }
    h.stop().await;
}

#[tokio::test]
async fn tokens_lost_by_redis_are_set_again_and_writes_still_show() {
    let h = Harness::replicas(2).await;
    let ana = h.account("ana_k", true).await;
    assert!(h.profile_on(1, &ana).await.is_some());
    for round in 0..3 {
        // Redis restarted empty: the token hashes are gone.
        h.redis
            .delete(&["profile:versions".to_owned(), "blocks:versions".to_owned()])
            .await
            .unwrap();
        let bio = format!("after loss {round}");
        h.set_bio_on(0, &ana, &bio).await;
        assert_eq!(h.profile_on(1, &ana).await.unwrap().bio.as_deref(), Some(bio.as_str()));
        // A read that finds no token at all gets the database's row, too.
        h.redis.delete(&["profile:versions".to_owned()]).await.unwrap();
        assert_eq!(h.profile_on(1, &ana).await.unwrap().bio.as_deref(), Some(bio.as_str()));
    }
    h.stop().await;
}

#[tokio::test]
async fn discovery_widens_past_thousands_of_filtered_users() {
    let h = Harness::start().await;
    let [ana, zoe] = h.accounts(["ana_k", "zoe_z"]).await;
    // Zoe came online first; then 3,000 unverified accounts after her.
    h.online(&zoe).await;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let db = h.db.client().await;
    let ids: Vec<uuid::Uuid> = (0..3000).map(|_| uuid::Uuid::new_v4()).collect();
    db.execute(
        "INSERT INTO profile.profiles (user_id, email, username, full_name)
         SELECT id, 'u' || n || '@uni.test', 'u' || n, 'U' FROM unnest($1::uuid[]) WITH ORDINALITY AS t(id, n)",
        &[&ids],
    )
    .await
    .unwrap();
    for id in &ids {
        h.online(&id.to_string()).await;
    }
    // More than one script's worth of members (1,000) is looked at, and the
    // only callable user is found behind them.
    assert_eq!(h.available_on(0, &ana).await, vec!["zoe_z".to_owned()]);
    h.stop().await;
}
