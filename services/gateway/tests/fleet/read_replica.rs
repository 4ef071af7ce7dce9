//! `DATABASE_READ_URL`: profile and signaling send their read-only queries
//! (the export, call history) to the read pool and every write to the
//! primary; profile's hot reads come from its read cache, which fills itself
//! from the primary only. The "replica" here is the test database reached
//! as a role that may only read, with read-only sessions.

use unilink_test_support::fleet as common;

use std::time::Duration;

use common::Fleet;
use serde_json::json;
use unilink_test_support::service::spawn;
use unilink_test_support::{eventually, settings};

/// One role for every run: created when missing, granted per test database
/// (the grants go with the database).
const READER: &str = "unilink_test_reader";

/// `url` with its user replaced by `user` (and no password).
fn as_user(url: &str, user: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a postgres:// URL");
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    format!("{scheme}://{user}@{host}")
}

#[tokio::test]
async fn reads_use_the_read_pool_and_writes_the_primary() {
    let fleet = Fleet::start().await;
    let plain = fleet.gateway(&[]).await;
    let (_, token) = fleet.user(&plain, "ada").await;
    let (bob_id, _) = fleet.user(&plain, "bob").await;

    let db = fleet.db.client().await;
    db.batch_execute(&format!(
        "DO $$ BEGIN CREATE ROLE {READER} LOGIN;
         EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;
         ALTER ROLE {READER} SET default_transaction_read_only = on;
         GRANT USAGE ON SCHEMA profile, signaling TO {READER};
         GRANT SELECT ON ALL TABLES IN SCHEMA profile, signaling TO {READER};"
    ))
    .await
    .unwrap();
    let read_url = as_user(fleet.db.url(), READER);
    let replica = [("DATABASE_READ_URL", read_url.as_str())];
    let profile = spawn::<unilink_profile::Profiles>(settings(&fleet.db, &fleet.prefix, &replica)).await;
    let signaling = fleet.signaling_replica(&replica).await;
    let (profile_url, signaling_url) = (profile.url(), signaling.url());
    let gw = fleet
        .gateway(&[
            ("PROFILE_GRPC_URL", profile_url.as_str()),
            ("SIGNALING_GRPC_URL", signaling_url.as_str()),
        ])
        .await;
    let token = token.as_str();

    // Reads work through the read pool.
    let (status, me) = gw.get_bearer("/users/me", token).await;
    assert_eq!(status, 200, "{me}");
    let (status, bob) = gw.get_bearer(&format!("/users/{bob_id}"), token).await;
    assert_eq!(status, 200, "{bob}");
    let (status, available) = gw.get_bearer("/calls/available", token).await;
    assert_eq!(status, 200, "{available}");
    let (status, history) = gw.get_bearer("/calls/history", token).await;
    assert_eq!(status, 200, "{history}");
    let (status, export) = gw.get_bearer("/users/me/export", token).await;
    assert_eq!(status, 200, "{export}");
    // …as the reader role, from both services.
    let name = fleet.db.url().rsplit('/').next().unwrap().to_owned();
    let sessions: Vec<String> = db
        .query(
            "SELECT DISTINCT application_name FROM pg_stat_activity WHERE datname = $1 AND usename = $2",
            &[&name, &READER],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        sessions.contains(&"profile".to_owned()) && sessions.contains(&"signaling".to_owned()),
        "{sessions:?}"
    );

    // Writes go to the primary: the reader could not have made this one.
    let (status, updated) = gw
        .send(
            gw.http
                .put(gw.url("/users/me"))
                .bearer_auth(token)
                .json(&json!({"bio": "written on the primary"})),
        )
        .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["bio"], "written on the primary");
    let as_reader = settings(&fleet.db, &fleet.prefix, &[("DATABASE_URL", read_url.as_str())]);
    let reader = unilink_db::connect(&as_reader.database, "profile", "probe").unwrap();
    let refused = reader
        .get()
        .await
        .unwrap()
        .execute("UPDATE profiles SET bio = 'x' WHERE username = 'ada'", &[])
        .await
        .unwrap_err();
    assert!(refused.code().is_some(), "{refused:?}");
    // Read back (here the "replica" is the primary itself, so at once).
    eventually("the new bio read back", Duration::from_secs(5), || async {
        let (_, me) = gw.get_bearer("/users/me", token).await;
        (me["bio"] == "written on the primary").then_some(())
    })
    .await;

    // Without the reader's right to read profiles, reads through the replica
    // fail while writes still succeed, and services without
    // DATABASE_READ_URL are unaffected: the reads really use the read pool.
    // The read cache never fills itself from the replica (it could lag
    // behind a write the cache already knows of): profiles still read.
    db.batch_execute(&format!("REVOKE SELECT ON profile.profiles FROM {READER}"))
        .await
        .unwrap();
    let (status, _) = gw.get_bearer("/users/me/export", token).await;
    assert_eq!(status, 500);
    let (status, me) = gw.get_bearer("/users/me", token).await;
    assert_eq!(status, 200, "{me}");
    let (status, bob) = gw.get_bearer(&format!("/users/{bob_id}"), token).await;
    assert_eq!(status, 200, "{bob}");
    let (status, updated) = gw
        .send(
            gw.http
                .put(gw.url("/users/me"))
                .bearer_auth(token)
                .json(&json!({"bio": "still writable"})),
        )
        .await;
    assert_eq!(status, 200, "{updated}");
    let (status, me) = plain.get_bearer("/users/me", token).await;
    assert_eq!((status, me["bio"].as_str()), (200, Some("still writable")), "{me}");
}
