//! `read_pool`: the primary pool itself without `DATABASE_READ_URL`, a
//! separate pool of read-only sessions with it.

use std::time::Duration;

use unilink_db::{Migration, SqlState, connect, migrate, read_pool};
use unilink_test_support::{TestDatabase, settings, unique_prefix};

const ITEMS: &[Migration] = &[Migration {
    version: 1,
    name: "items",
    sql: "CREATE TABLE items (id bigserial PRIMARY KEY, name text NOT NULL);
          INSERT INTO items (name) VALUES ('seed');",
}];

#[tokio::test]
async fn without_a_replica_reads_share_the_primary_pool() {
    let db = TestDatabase::create().await;
    let s = settings(&db, &unique_prefix(), &[]);
    migrate(&s.database, "alpha", ITEMS).await.unwrap();
    let primary = connect(&s.database, "alpha", "test").unwrap();
    let read = read_pool(&s.database, &primary, "alpha", "test").unwrap();
    assert_eq!(primary.status().size, 0);
    let client = read.get().await.unwrap();
    // The connection was opened in the primary pool: it is the same pool.
    assert_eq!(primary.status().size, 1);
    // And it may write (it is the primary).
    client
        .execute("INSERT INTO items (name) VALUES ('x')", &[])
        .await
        .unwrap();
}

#[tokio::test]
async fn a_replica_pool_reads_its_own_server_and_never_writes() {
    let db = TestDatabase::create().await;
    let s = settings(&db, &unique_prefix(), &[("DATABASE_READ_URL", db.url())]);
    migrate(&s.database, "alpha", ITEMS).await.unwrap();
    let primary = connect(&s.database, "alpha", "test").unwrap();
    let read = read_pool(&s.database, &primary, "alpha", "replica-test").unwrap();
    let client = tokio::time::timeout(Duration::from_secs(5), read.get())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(primary.status().size, 0, "the replica pool is a pool of its own");
    let row = client.query_one("SELECT name FROM items", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "seed");
    // Even with a role that could write, the sessions are read-only.
    let err = client
        .execute("INSERT INTO items (name) VALUES ('x')", &[])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::READ_ONLY_SQL_TRANSACTION), "{err:?}");
    let app: String = client
        .query_one("SELECT current_setting('application_name')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(app, "replica-test");
}

#[tokio::test]
async fn a_bad_replica_url_names_its_variable() {
    let db = TestDatabase::create().await;
    let mut s = settings(&db, &unique_prefix(), &[]);
    s.database.read_url = Some(unilink_config::Secret::new("postgres://h:notaport/x".to_owned()));
    let primary = connect(&s.database, "alpha", "test").unwrap();
    let err = read_pool(&s.database, &primary, "alpha", "test")
        .unwrap_err()
        .to_string();
    assert!(err.contains("DATABASE_READ_URL"), "{err}");
}
