//! Migrations against a real PostgreSQL: idempotent, serialised per schema,
//! independent across schemas, and refusing edited history.

use unilink_db::{DbError, Migration, MigrationReport, connect, migrate, ping};
use unilink_test_support::{TestDatabase, settings, unique_prefix};

const ALPHA: &[Migration] = &[
    Migration {
        version: 1,
        name: "items",
        sql: "CREATE TABLE items (id bigserial PRIMARY KEY, name text NOT NULL UNIQUE);",
    },
    Migration {
        version: 2,
        name: "items_created_at",
        sql: "ALTER TABLE items ADD COLUMN created_at timestamptz NOT NULL DEFAULT now();
              CREATE INDEX items_created_at_idx ON items (created_at);",
    },
];

const BETA: &[Migration] = &[Migration {
    version: 1,
    name: "items",
    // Same table name as ALPHA: only the schema keeps them apart.
    sql: "CREATE TABLE items (id uuid PRIMARY KEY);",
}];

#[tokio::test]
async fn migrations_apply_once_and_twice_is_a_no_op() {
    let db = TestDatabase::create().await;
    let s = settings(&db, &unique_prefix(), &[]);
    let first = migrate(&s.database, "alpha", ALPHA).await.unwrap();
    assert_eq!(
        first,
        MigrationReport {
            applied: vec![1, 2],
            version: 2
        }
    );
    let second = migrate(&s.database, "alpha", ALPHA).await.unwrap();
    assert_eq!(
        second,
        MigrationReport {
            applied: vec![],
            version: 2
        }
    );

    // The pool's connections see the schema's tables unqualified.
    let pool = connect(&s.database, "alpha", "test").unwrap();
    ping(&pool, std::time::Duration::from_secs(2)).await.unwrap();
    let client = pool.get().await.unwrap();
    client
        .execute("INSERT INTO items (name) VALUES ('a')", &[])
        .await
        .unwrap();
    let n: i64 = client
        .query_one("SELECT count(*) FROM alpha.items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}

#[tokio::test]
async fn new_migrations_apply_on_top_of_old_ones() {
    let db = TestDatabase::create().await;
    let s = settings(&db, &unique_prefix(), &[]);
    let report = migrate(&s.database, "alpha", &ALPHA[..1]).await.unwrap();
    assert_eq!(report.applied, vec![1]);
    let report = migrate(&s.database, "alpha", ALPHA).await.unwrap();
    assert_eq!(report.applied, vec![2]);
}

#[tokio::test]
async fn replicas_of_one_service_migrating_at_once_apply_each_migration_once() {
    let db = TestDatabase::create().await;
    let s = settings(&db, &unique_prefix(), &[]);
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let database = s.database.clone();
            tokio::spawn(async move { migrate(&database, "alpha", ALPHA).await })
        })
        .collect();
    let mut applied = Vec::new();
    for run in runs {
        applied.extend(run.await.unwrap().unwrap().applied);
    }
    applied.sort();
    assert_eq!(applied, vec![1, 2], "each migration applied by exactly one replica");
}

#[tokio::test]
async fn two_services_migrating_at_once_do_not_collide() {
    let db = TestDatabase::create().await;
    let s = settings(&db, &unique_prefix(), &[]);
    let (a, b) = tokio::join!(migrate(&s.database, "alpha", ALPHA), migrate(&s.database, "beta", BETA));
    assert_eq!(a.unwrap().version, 2);
    assert_eq!(b.unwrap().version, 1);
    let client = db.client().await;
    let tables: i64 = client
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'items' AND table_schema IN ('alpha', 'beta')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 2);
}

#[tokio::test]
async fn an_edited_migration_is_refused() {
    let db = TestDatabase::create().await;
    let s = settings(&db, &unique_prefix(), &[]);
    migrate(&s.database, "alpha", ALPHA).await.unwrap();
    let edited = [
        ALPHA[0],
        Migration {
            sql: "ALTER TABLE items ADD COLUMN something_else int;",
            ..ALPHA[1]
        },
    ];
    let err = migrate(&s.database, "alpha", &edited).await.unwrap_err();
    assert!(matches!(err, DbError::ChecksumMismatch { version: 2, .. }), "{err}");
    let err = migrate(&s.database, "alpha", &ALPHA[..1]).await.unwrap_err();
    assert!(
        matches!(
            err,
            DbError::SchemaTooNew {
                applied: 2,
                known: 1,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn a_failing_migration_leaves_nothing_half_applied() {
    let db = TestDatabase::create().await;
    let s = settings(&db, &unique_prefix(), &[]);
    let broken = [
        ALPHA[0],
        Migration {
            version: 2,
            name: "broken",
            sql: "CREATE TABLE half (id int); SELECT no_such_function();",
        },
    ];
    let err = migrate(&s.database, "alpha", &broken).await.unwrap_err();
    assert!(matches!(err, DbError::Migration { version: 2, .. }), "{err}");
    let client = db.client().await;
    let half: i64 = client
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'half'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(half, 0, "the failed migration's table was rolled back");
    // The good migration stays applied and the fixed list completes.
    assert_eq!(migrate(&s.database, "alpha", ALPHA).await.unwrap().applied, vec![2]);
}

#[tokio::test]
async fn ping_fails_fast_when_the_database_is_unreachable() {
    let db = TestDatabase::create().await;
    let port = unilink_test_support::closed_port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/x");
    let s = settings(&db, &unique_prefix(), &[("DATABASE_URL", &url)]);
    let pool = connect(&s.database, "alpha", "test").unwrap();
    let started = std::time::Instant::now();
    let err = ping(&pool, std::time::Duration::from_secs(1)).await.unwrap_err();
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    assert_eq!(
        unilink_errors::HasErrorCode::code(&err),
        unilink_errors::ErrorCode::Unavailable
    );
}
