//! PostgreSQL over TLS against real servers: a cluster of the test's own
//! with `ssl=on` and a certificate from a CA the test made, and one with
//! `ssl=off`. Each libpq `sslmode` does what it says; every failure names the
//! setting at fault.

use unilink_config::{DatabaseSettings, Settings};
use unilink_db::{DbError, Migration};
use unilink_test_support::stores::{PrivatePostgres, TestCa};

const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "probe",
    sql: "CREATE TABLE probe (id int)",
}];

fn database(url: &str) -> DatabaseSettings {
    Settings::from_vars([("DATABASE_URL", url)]).unwrap().database
}

/// Whether the pool's session is encrypted, as the server sees it.
async fn encrypted(settings: &DatabaseSettings) -> Result<bool, DbError> {
    unilink_db::migrate(settings, "tlsprobe", MIGRATIONS).await?;
    let pool = unilink_db::connect(settings, "tlsprobe", "tls-test")?;
    let client = pool.get().await?;
    let row = client
        .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
        .await?;
    Ok(row.get(0))
}

#[tokio::test]
async fn every_sslmode_does_what_libpq_says_against_real_servers() {
    let ca = TestCa::new();
    let server = ca.issue("server", &["DNS:localhost", "IP:127.0.0.1"]);
    let pg = PrivatePostgres::start(Some(&server)).await;
    let root = format!("sslrootcert={}", ca.cert().display());

    // verify-full by name and by IP: encrypted, and the pool, the migration
    // connection and a direct (LISTEN) connection all use it.
    for host in ["localhost", "127.0.0.1"] {
        let settings = database(&pg.url(host, &format!("sslmode=verify-full&{root}")));
        assert!(encrypted(&settings).await.unwrap(), "verify-full via {host}");
        let (client, connection) = unilink_db::connect_direct(&settings, "tls-listen").await.unwrap();
        let driver = tokio::spawn(connection);
        client.batch_execute("LISTEN tls_probe").await.unwrap();
        drop(client);
        let _ = driver.await;
    }
    // require, verify-ca and prefer all encrypt when the server offers TLS.
    for mode in ["require", "verify-ca", "prefer"] {
        let settings = database(&pg.url("127.0.0.1", &format!("sslmode={mode}&{root}")));
        assert!(encrypted(&settings).await.unwrap(), "sslmode={mode}");
    }
    // disable does not.
    let settings = database(&pg.url("127.0.0.1", "sslmode=disable"));
    assert!(!encrypted(&settings).await.unwrap());

    // A CA that did not sign the server's certificate: refused, named.
    let stranger = TestCa::new();
    let settings = database(&pg.url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", stranger.cert().display()),
    ));
    let err = encrypted(&settings).await.unwrap_err();
    assert!(matches!(err, DbError::Tls(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.starts_with("database TLS failed: DATABASE_URL (sslmode=verify-full):"),
        "{text}"
    );
    assert!(text.contains("UnknownIssuer"), "{text}");
    // verify-ca checks the chain too.
    let settings = database(&pg.url(
        "localhost",
        &format!("sslmode=verify-ca&sslrootcert={}", stranger.cert().display()),
    ));
    assert!(matches!(encrypted(&settings).await, Err(DbError::Tls(_))));
}

#[tokio::test]
async fn verify_full_checks_the_name_verify_ca_does_not() {
    let ca = TestCa::new();
    let elsewhere = ca.issue("elsewhere", &["DNS:db.elsewhere.example"]);
    let pg = PrivatePostgres::start(Some(&elsewhere)).await;
    let root = format!("sslrootcert={}", ca.cert().display());
    let settings = database(&pg.url("localhost", &format!("sslmode=verify-full&{root}")));
    let text = encrypted(&settings).await.unwrap_err().to_string();
    assert!(
        text.starts_with("database TLS failed: DATABASE_URL (sslmode=verify-full):"),
        "{text}"
    );
    assert!(text.contains("not valid for name \"localhost\""), "{text}");
    let settings = database(&pg.url("localhost", &format!("sslmode=verify-ca&{root}")));
    assert!(encrypted(&settings).await.unwrap());
}

#[tokio::test]
async fn require_against_a_server_without_tls_stops_with_a_clear_error() {
    let pg = PrivatePostgres::start(None).await;
    let settings = database(&pg.url("127.0.0.1", "sslmode=require"));
    let text = encrypted(&settings).await.unwrap_err().to_string();
    assert!(
        text.starts_with("database TLS failed: DATABASE_URL (sslmode=require):"),
        "{text}"
    );
    assert!(text.contains("does not support TLS"), "{text}");
    // prefer falls back to plaintext, as libpq does.
    let settings = database(&pg.url("127.0.0.1", "sslmode=prefer"));
    assert!(!encrypted(&settings).await.unwrap());
}

#[tokio::test]
async fn a_missing_ca_file_stops_start_up_before_any_connection() {
    let settings =
        database("postgres://postgres@127.0.0.1:1/postgres?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem");
    let err = unilink_db::connect(&settings, "tlsprobe", "tls-test").unwrap_err();
    assert!(
        err.to_string()
            .contains("DATABASE_URL: sslrootcert: cannot read the CA file /nonexistent/ca.pem"),
        "{err}"
    );
    // Production refuses plaintext to a database on the network.
    let err = Settings::from_vars([
        ("ENVIRONMENT", "production"),
        ("SMTP_SERVER", "smtp.example.org"),
        (
            "DATABASE_URL",
            "postgres://postgres@db.internal:5432/unilink?sslmode=disable",
        ),
    ])
    .unwrap_err();
    assert!(
        err.to_string().starts_with("DATABASE_URL is not safe for production"),
        "{err}"
    );
}
