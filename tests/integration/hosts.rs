//! A `database.url` listing several hosts (libpq's form, which sqlx does not
//! parse; `db::hosts`): the worker's pool skips a host that does not answer
//! and lands on the next that does.

use session_guard::configuration::{DatabaseSettings, with_database};

use crate::failover::Formation;

/// The configured URL's host list (`127.0.0.1:5432` by default) replaced by
/// `hosts`.
fn url_with_hosts(hosts: &str) -> String {
    let settings = session_guard::Settings::load(None).unwrap();
    let url = with_database(&settings.database.url, "postgres");
    let start = url.find("://").unwrap() + 3;
    let end = start + url[start..].find('/').unwrap();
    let host_start = url[start..end]
        .rfind('@')
        .map_or(start, |at| start + at + 1);
    format!("{}{hosts}{}", &url[..host_start], &url[end..])
}

/// A local port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A closed port listed first: the pool connects to the server listed second.
#[tokio::test]
async fn a_host_that_does_not_answer_is_skipped() {
    let settings = session_guard::Settings::load(None).unwrap();
    let server = session_guard::db::hosts::Hosts::parse(&settings.database.url).unwrap();
    let server_port = server.options[0].get_port();
    let closed = closed_port();
    let url = url_with_hosts(&format!(
        "127.0.0.1:{closed},{}:{server_port}",
        server.options[0].get_host()
    ));
    let database = DatabaseSettings {
        url,
        max_connections: 2,
    };
    let pool = session_guard::db::connect(&database).await.unwrap();
    let (port, standby): (i32, bool) =
        sqlx::query_as("SELECT inet_server_port(), pg_is_in_recovery()")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(port, i32::from(server_port));
    assert!(!standby);
    pool.close().await;
}

/// No host answers: the error names each, and why.
#[tokio::test]
async fn no_host_answering_names_each() {
    let (a, b) = (closed_port(), closed_port());
    let database = DatabaseSettings {
        url: url_with_hosts(&format!("127.0.0.1:{a},127.0.0.1:{b}")),
        max_connections: 2,
    };
    let err = session_guard::db::connect(&database).await.unwrap_err();
    let err = format!("{err:#}");
    assert!(
        err.contains("no writable (primary) PostgreSQL server"),
        "{err}"
    );
    assert!(err.contains(&format!("127.0.0.1:{a}: ")), "{err}");
    assert!(err.contains(&format!("127.0.0.1:{b}: ")), "{err}");
}

/// Against a pg_auto_failover formation (`scripts/pg-failover`, needs
/// pg_autoctl; about 30 s): the URL lists the standby first, without
/// `target_session_attrs` (a list means read-write), and the pool lands on
/// the primary.
#[tokio::test]
async fn the_standby_listed_first_is_skipped() {
    let formation = Formation::start(false).await;
    let (primary, standby) = (formation.primary, formation.standby());
    let database = DatabaseSettings {
        url: format!("postgres://postgres@127.0.0.1:{standby},127.0.0.1:{primary}/postgres"),
        max_connections: 2,
    };
    let pool = session_guard::db::connect(&database).await.unwrap();
    let (port, in_recovery): (i32, bool) =
        sqlx::query_as("SELECT inet_server_port(), pg_is_in_recovery()")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((port, in_recovery), (i32::from(primary), false));
    pool.close().await;
}

/// Against a formation: a planned failover (`pg_autoctl perform failover`)
/// and the same pool, untouched, writes on the new primary within seconds
/// (`db::follow`); no connection it hands out is to the demoted server.
#[tokio::test]
async fn the_pool_follows_the_primary_through_a_failover() {
    let mut formation = Formation::start(true).await;
    let before = i32::from(formation.primary);
    let database = DatabaseSettings {
        url: formation.url.clone(),
        max_connections: 3,
    };
    let pool = session_guard::db::connect(&database).await.unwrap();
    sqlx::query("CREATE TABLE writes (at timestamptz NOT NULL DEFAULT now(), port int)")
        .execute(&pool)
        .await
        .unwrap();
    let write = || async {
        sqlx::query_scalar::<_, i32>(
            "INSERT INTO writes (port) VALUES (inet_server_port()) RETURNING port",
        )
        .fetch_one(&pool)
        .await
    };
    assert_eq!(write().await.unwrap(), before);

    formation.fail_over("failover").await;
    let after = i32::from(formation.primary);
    assert_ne!(after, before);

    let started = std::time::Instant::now();
    let port = loop {
        match write().await {
            Ok(port) => break port,
            Err(e) => {
                assert!(
                    started.elapsed() < std::time::Duration::from_secs(30),
                    "no write on the new primary after 30 s: {e}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(port, after, "the write landed on the new primary");
    eprintln!(
        "writes again {:?} after the failover finished",
        started.elapsed()
    );
    pool.close().await;
}
