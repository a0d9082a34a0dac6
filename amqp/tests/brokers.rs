//! The connect pass against the machine's broker
//! (`SESSION_GUARD__AMQP__URL`, default guest on 127.0.0.1:5672): a broker
//! that is down is skipped, and what every broker said is told, passwords
//! masked.

use std::time::{Duration, Instant};

use lapin::ConnectionProperties;
use session_guard_amqp::brokers::{Brokers, FailureCause};

fn live_url() -> String {
    std::env::var("SESSION_GUARD__AMQP__URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A URL on a local port nothing listens on (bound, then let go), with a
/// password that must never be shown.
fn dead_url() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("amqp://guest:dead-secret@127.0.0.1:{port}/%2f")
}

#[tokio::test]
async fn a_broker_that_is_down_is_skipped_and_the_live_one_is_tried_last_next_time() {
    let list = format!("{}, {}", dead_url(), live_url());
    let brokers = Brokers::parse(&list).unwrap().starting_at(0);
    let started = Instant::now();
    let connected = brokers
        .connect(ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // A refused port fails at once: no waiting for the time limit.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(connected.index, 1);
    assert!(
        !connected.shown_url.contains("guest:guest"),
        "{}",
        connected.shown_url
    );
    assert!(connected.connection.status().connected());
    connected
        .connection
        .close(200, "done".into())
        .await
        .unwrap();

    // Lost (closed here): the next pass tries the live broker last, so the
    // dead one first, and still ends on the live one.
    let again = brokers
        .connect(ConnectionProperties::default())
        .await
        .unwrap();
    assert_eq!(again.index, 1);
    again.connection.close(200, "done".into()).await.unwrap();

    // Whatever the start, a list with one live broker connects.
    for _ in 0..4 {
        let brokers = Brokers::parse(&list).unwrap();
        let connected = brokers
            .connect(ConnectionProperties::default())
            .await
            .unwrap();
        assert_eq!(connected.index, 1);
        connected
            .connection
            .close(200, "done".into())
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn when_every_broker_fails_each_is_named_without_its_password() {
    let (first, second) = (dead_url(), dead_url());
    let brokers = Brokers::parse(&format!("{first},{second}"))
        .unwrap()
        .starting_at(1);
    let Err(error) = brokers.connect(ConnectionProperties::default()).await else {
        panic!("connected to a port nothing listens on");
    };
    assert_eq!(error.failures.len(), 2);
    assert!(
        error
            .failures
            .iter()
            .all(|f| matches!(f.cause, FailureCause::Broker(_))),
        "{error:?}"
    );
    let shown = error.to_string();
    assert!(!shown.contains("dead-secret"), "{shown}");
    // Tried from the second, then the first.
    let second_shown = second.replace("dead-secret", "***");
    let first_shown = first.replace("dead-secret", "***");
    assert!(shown.starts_with(&format!("{second_shown}: ")), "{shown}");
    assert!(shown.contains(&format!("; {first_shown}: ")), "{shown}");
    assert!(error.cause().is_some());
}

#[tokio::test]
async fn a_refusal_is_the_cause_told_over_a_broker_out_of_reach() {
    let wrong = live_url().replacen("guest:guest", "guest:not-the-password", 1);
    let brokers = Brokers::parse(&format!("{},{wrong}", dead_url()))
        .unwrap()
        .starting_at(0);
    let error = brokers
        .connect(ConnectionProperties::default())
        .await
        .err()
        .unwrap();
    let cause = error.cause().unwrap().to_string();
    assert!(cause.contains("ACCESS_REFUSED"), "{cause}");
    assert!(!error.to_string().contains("not-the-password"), "{error}");
}
