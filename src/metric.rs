//! Every metric session-guard exports, defined once: its name, type, labels
//! and help text. Call sites, the recorder's set-up (descriptions, histogram
//! buckets, series created at zero), the benchmark and the tests use these
//! constants; a test checks that each one is in [`ALL`], described and
//! rendered, and that no other file spells a metric name.

/// What a metric is, for Prometheus.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// A Prometheus histogram with these bucket upper bounds. Histograms
    /// aggregate across workers (`histogram_quantile` over summed buckets);
    /// the summaries the exporter renders by default do not.
    Histogram(&'static [f64]),
}

impl Kind {
    /// The name Prometheus' `# TYPE` line gives it.
    pub fn prometheus_type(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram(_) => "histogram",
        }
    }
}

/// One exported metric.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    /// The Prometheus name.
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: Kind,
    /// The names of the labels its series carry (none: a single series).
    pub labels: &'static [&'static str],
    /// The `# HELP` text.
    pub help: &'static str,
    /// Label sets created at zero when the recorder is installed, so that
    /// rates and alerts see them before their first increment.
    pub initial: &'static [&'static [(&'static str, &'static str)]],
}

impl Metric {
    /// A metric with no labels.
    const fn plain(name: &'static str, kind: Kind, help: &'static str) -> Metric {
        Metric {
            name,
            kind,
            labels: &[],
            help,
            initial: &[],
        }
    }

    /// Adds `n` to this counter's single series.
    pub fn add(&self, n: u64) {
        debug_assert_eq!(self.kind, Kind::Counter, "{} is not a counter", self.name);
        metrics::counter!(self.name).increment(n);
    }

    /// Adds `n` to this counter's series where `label` is `value`.
    pub fn add_to(&self, label: &'static str, value: &'static str, n: u64) {
        debug_assert_eq!(self.kind, Kind::Counter, "{} is not a counter", self.name);
        debug_assert!(
            self.labels.contains(&label),
            "{} has no label {label}",
            self.name
        );
        metrics::counter!(self.name, label => value).increment(n);
    }
}

/// From an event's `occurred_at` to the commit of its batch: ms when the
/// worker keeps up, minutes when a backlog drains.
const EVENT_LAG_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0,
];
/// One batch transaction: sub-millisecond for a few requests, seconds for a
/// full batch waiting on locks.
const BATCH_DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// From a revoke's write to the outbox to the broker's confirm: tens of ms,
/// up to the length of a broker outage.
const REVOKE_DELIVERY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
];
/// Users locked by one batch: 0 for a batch of plain requests, up to the
/// batch size.
const LOCKED_USERS_BUCKETS: &[f64] = &[
    0.0, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0,
];

/// The `reason` series the revoke counters start at zero: the protocol's
/// `RevokeReason::ALL`, in its order (a test checks), so a reason added
/// there cannot be missed here. `user` (the sessions API) and `admin`
/// (operators' revokes) come last.
const REVOKE_REASONS: &[&[(&str, &str)]] = &[
    &[("reason", "session_limit")],
    &[("reason", "session_limit_denied")],
    &[("reason", "idle_timeout")],
    &[("reason", "logout_others")],
    &[("reason", "logout_all")],
    &[("reason", "user")],
    &[("reason", "admin")],
];
/// The reasons a batch revokes for: all but `user` and `admin`, which only
/// the sessions API and operators give (a test checks that they are last).
const BATCH_REVOKE_REASONS: &[&[(&str, &str)]] =
    REVOKE_REASONS.split_at(REVOKE_REASONS.len() - 2).0;

/// Valid events in batches that committed and were acked.
pub const EVENTS_PROCESSED: Metric = Metric::plain(
    "session_guard_events_processed_total",
    Kind::Counter,
    "Valid events in batches that committed and were acked.",
);

/// Every event, by type and outcome.
pub const EVENTS: Metric = Metric {
    name: "session_guard_events_total",
    kind: Kind::Counter,
    labels: &["type", "outcome"],
    help: "Events by type and outcome: applied, requeued (the database refused it, it comes back), \
           or the dead-letter kind (invalid, forbidden, clock_skew, failed). type is unknown when the message \
           did not decode.",
    initial: &[
        &[("type", "login"), ("outcome", "applied")],
        &[("type", "request"), ("outcome", "applied")],
        &[("type", "logout"), ("outcome", "applied")],
        &[("type", "logout_others"), ("outcome", "applied")],
        &[("type", "logout_all"), ("outcome", "applied")],
        &[("type", "attributes"), ("outcome", "applied")],
    ],
};

/// Messages dead-lettered, by kind.
pub const EVENTS_DEAD_LETTERED: Metric = Metric {
    name: "session_guard_events_dead_lettered_total",
    kind: Kind::Counter,
    labels: &["kind"],
    help: "Messages sent to the dead-letter queue, by kind.",
    initial: &[
        &[("kind", "invalid")],
        &[("kind", "forbidden")],
        &[("kind", "clock_skew")],
        &[("kind", "failed")],
    ],
};

/// Sessions the worker revoked, by reason.
pub const SESSIONS_REVOKED: Metric = Metric {
    name: "session_guard_sessions_revoked_total",
    kind: Kind::Counter,
    labels: &["reason"],
    help: "Sessions revoked by the worker's batches, by reason.",
    initial: BATCH_REVOKE_REASONS,
};

/// Repeat revokes.
pub const REVOKES_REPEATED: Metric = Metric::plain(
    "session_guard_revokes_repeated_total",
    Kind::Counter,
    "Repeat revokes for sessions apps kept using.",
);

/// Shadow-mode revocations.
pub const SHADOW_REVOCATIONS: Metric = Metric::plain(
    "session_guard_shadow_revocations_total",
    Kind::Counter,
    "Sessions shadow mode would have revoked.",
);

/// Revoke messages the broker confirmed, by reason.
pub const REVOKES_PUBLISHED: Metric = Metric {
    name: "session_guard_revokes_published_total",
    kind: Kind::Counter,
    labels: &["reason"],
    help: "Revoke messages confirmed by the broker, by reason (repeats and operator revokes included).",
    initial: REVOKE_REASONS,
};

/// Revokes no queue was bound for.
pub const REVOKES_UNROUTABLE: Metric = Metric::plain(
    "session_guard_revokes_unroutable_total",
    Kind::Counter,
    "Revokes no app queue was bound for.",
);

/// Notices confirmed by the broker, by kind.
pub const NOTICES_PUBLISHED: Metric = Metric {
    name: "session_guard_notices_published_total",
    kind: Kind::Counter,
    labels: &["kind"],
    help: "Notices (new device, new network) confirmed by the broker, by kind.",
    initial: &[&[("kind", "new_device")], &[("kind", "new_network")]],
};

/// Notices no queue was bound for.
pub const NOTICES_UNROUTABLE: Metric = Metric::plain(
    "session_guard_notices_unroutable_total",
    Kind::Counter,
    "Notices no app queue was bound for (the app does not listen for notices).",
);

/// Batches retried after a transient error.
pub const DATABASE_RETRIES: Metric = Metric::plain(
    "session_guard_database_retries_total",
    Kind::Counter,
    "Batches retried after a transient database error.",
);

/// Rows written by the lock-free touch update.
pub const ROWS_TOUCHED: Metric = Metric::plain(
    "session_guard_rows_touched_total",
    Kind::Counter,
    "Session rows of users a batch did not lock, written by the lock-free touch update.",
);

/// Rows not written: only last_seen_at moved, by less than the resolution.
pub const LAST_SEEN_WRITES_SKIPPED: Metric = Metric::plain(
    "session_guard_last_seen_writes_skipped_total",
    Kind::Counter,
    "Rows not written because only last_seen_at moved, by less than worker.last_seen_resolution_ms.",
);

/// Batches run again with more users locked.
pub const BATCH_RELOCKS: Metric = Metric::plain(
    "session_guard_batch_relocks_total",
    Kind::Counter,
    "Batches run again with more users locked.",
);

/// Users locked per batch.
pub const BATCH_LOCKED_USERS: Metric = Metric::plain(
    "session_guard_batch_locked_users",
    Kind::Histogram(LOCKED_USERS_BUCKETS),
    "Users locked per committed batch.",
);

/// Event time to commit.
pub const EVENT_LAG: Metric = Metric::plain(
    "session_guard_event_lag_seconds",
    Kind::Histogram(EVENT_LAG_BUCKETS),
    "Seconds from an event's occurred_at (the app's clock) to the commit of its batch (the \
     worker's clock); 0 for events dated ahead.",
);

/// Batch transaction time.
pub const BATCH_DURATION: Metric = Metric::plain(
    "session_guard_batch_duration_seconds",
    Kind::Histogram(BATCH_DURATION_BUCKETS),
    "Seconds from the start of a batch's transaction to its commit, waits for user locks and \
     reruns with more users locked included (not the backoff of retries).",
);

/// Outbox write to broker confirm.
pub const REVOKE_DELIVERY: Metric = Metric::plain(
    "session_guard_revoke_delivery_seconds",
    Kind::Histogram(REVOKE_DELIVERY_BUCKETS),
    "Seconds from a revoke's insert into the outbox (just before its transaction commits) to its \
     deletion once the broker confirmed it, on the database's clock.",
);

/// Rows moved out of the log by retention.
pub const SESSIONS_PRUNED: Metric = Metric {
    name: "session_guard_sessions_pruned_total",
    kind: Kind::Counter,
    labels: &["by"],
    help: "Session rows moved from the log to the tombstones by retention: by log_limit (after a \
           batch) or max_age (the housekeeping sweep).",
    initial: &[&[("by", "log_limit")], &[("by", "max_age")]],
};

/// Rows waiting in the outbox.
pub const OUTBOX_BACKLOG: Metric = Metric::plain(
    "session_guard_outbox_backlog",
    Kind::Gauge,
    "Revokes in the outbox not yet confirmed by the broker (all workers'), as housekeeping last \
     counted them.",
);

/// Age of the oldest outbox row.
pub const OUTBOX_OLDEST_AGE: Metric = Metric::plain(
    "session_guard_outbox_oldest_age_seconds",
    Kind::Gauge,
    "Age of the oldest revoke in the outbox, in seconds (0 when empty), as housekeeping last saw it.",
);

/// Messages waiting in session-guard's queues.
pub const QUEUE_MESSAGES: Metric = Metric {
    name: "session_guard_queue_messages",
    kind: Kind::Gauge,
    labels: &["queue"],
    help: "Messages ready in session-guard's queues (queue=events: not yet delivered to a worker; \
           queue=dead_letter: waiting for an operator), as this worker's consumer last counted them; \
           every worker reports the same queues.",
    // By role, not by the configured name: dashboards and alerts work
    // whatever the queues are called, and the label never grows.
    initial: &[&[("queue", "events")], &[("queue", "dead_letter")]],
};

/// Database readiness.
pub const DATABASE_UP: Metric = Metric::plain(
    "session_guard_database_up",
    Kind::Gauge,
    "1 while PostgreSQL answers.",
);

/// Broker readiness.
pub const BROKER_UP: Metric = Metric::plain(
    "session_guard_broker_up",
    Kind::Gauge,
    "1 while consuming from RabbitMQ.",
);

/// The sessions API's answers: milliseconds from the database.
const API_DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The sessions API's routes, as the `route` label spells them: the series
/// created at zero (a test in `api::router` checks this is its route list).
const API_ROUTE_SERIES: &[&[(&str, &str)]] = &[
    &[("route", "/v1/users/{user_id}/sessions")],
    &[("route", "/v1/sessions/{handle}/revoke")],
    &[("route", "/v1/users/{user_id}/revoke")],
    &[("route", "/v1/users/{user_id}/limits")],
    &[("route", "/v1/openapi.json")],
];
/// The same routes with status 200, for the request counter.
const API_ROUTE_OK_SERIES: &[&[(&str, &str)]] = &[
    &[("route", "/v1/users/{user_id}/sessions"), ("status", "200")],
    &[("route", "/v1/sessions/{handle}/revoke"), ("status", "200")],
    &[("route", "/v1/users/{user_id}/revoke"), ("status", "200")],
    &[("route", "/v1/users/{user_id}/limits"), ("status", "200")],
    &[("route", "/v1/openapi.json"), ("status", "200")],
];

/// The `route` label values of the sessions API's metrics.
pub fn api_routes() -> impl Iterator<Item = &'static str> {
    API_ROUTE_SERIES.iter().map(|set| set[0].1)
}

/// Requests to the sessions API.
pub const API_REQUESTS: Metric = Metric {
    name: "session_guard_api_requests_total",
    kind: Kind::Counter,
    labels: &["route", "status"],
    help: "Requests the sessions API answered, by route (the route's pattern, such as \
           /v1/users/{user_id}/sessions, or \"unmatched\"; never the path itself) and HTTP status.",
    initial: API_ROUTE_OK_SERIES,
};

/// Latency of the sessions API.
pub const API_REQUEST_DURATION: Metric = Metric {
    name: "session_guard_api_request_duration_seconds",
    kind: Kind::Histogram(API_DURATION_BUCKETS),
    labels: &["route"],
    help: "Seconds from a request's arrival at the sessions API to its answer, by route (the \
           route's pattern, or \"unmatched\").",
    initial: API_ROUTE_SERIES,
};

/// Every metric above: what the recorder describes and creates at start.
pub const ALL: &[Metric] = &[
    EVENTS_PROCESSED,
    EVENTS,
    EVENTS_DEAD_LETTERED,
    SESSIONS_REVOKED,
    REVOKES_REPEATED,
    SHADOW_REVOCATIONS,
    REVOKES_PUBLISHED,
    REVOKES_UNROUTABLE,
    NOTICES_PUBLISHED,
    NOTICES_UNROUTABLE,
    DATABASE_RETRIES,
    ROWS_TOUCHED,
    LAST_SEEN_WRITES_SKIPPED,
    BATCH_RELOCKS,
    BATCH_LOCKED_USERS,
    EVENT_LAG,
    BATCH_DURATION,
    REVOKE_DELIVERY,
    SESSIONS_PRUNED,
    OUTBOX_BACKLOG,
    OUTBOX_OLDEST_AGE,
    QUEUE_MESSAGES,
    DATABASE_UP,
    BROKER_UP,
    API_REQUESTS,
    API_REQUEST_DURATION,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_constant_is_listed_once() {
        let source = include_str!("metric.rs");
        let declared = source.matches(concat!(": Metric ", "=")).count();
        assert_eq!(declared, ALL.len(), "a metric constant is missing from ALL");
        let mut names: Vec<&str> = ALL.iter().map(|m| m.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len(), "two constants share a name");
    }

    #[test]
    fn dead_letters_start_at_zero_for_every_kind_of_the_contract() {
        let kinds = initial_values(&EVENTS_DEAD_LETTERED);
        let contract = crate::domain::dead_letter::ErrorKind::ALL.map(|k| k.as_str());
        assert_eq!(kinds, contract);
    }

    /// The values of the one label of each of `metric`'s initial series.
    fn initial_values(metric: &Metric) -> Vec<&'static str> {
        metric.initial.iter().map(|set| set[0].1).collect()
    }

    #[test]
    fn revokes_start_at_zero_for_every_reason_of_the_contract() {
        use crate::domain::revoke::RevokeReason;
        let contract = RevokeReason::ALL.map(RevokeReason::as_str);
        assert_eq!(initial_values(&REVOKES_PUBLISHED), contract);
        // A batch revokes for every reason but a user's (API) and an operator's.
        let batches: Vec<&str> = RevokeReason::ALL
            .into_iter()
            .filter(|r| !matches!(r, RevokeReason::User | RevokeReason::Admin))
            .map(RevokeReason::as_str)
            .collect();
        assert_eq!(initial_values(&SESSIONS_REVOKED), batches);
    }

    #[test]
    fn applied_events_start_at_zero_for_every_kind_of_the_contract() {
        use crate::domain::event::EventKind;
        assert_eq!(
            initial_values(&EVENTS),
            EventKind::ALL.map(EventKind::as_str)
        );
        assert!(
            EVENTS
                .initial
                .iter()
                .all(|set| set[1] == ("outcome", "applied"))
        );
    }

    #[test]
    fn initial_series_use_declared_labels_and_names_follow_conventions() {
        for m in ALL {
            assert!(m.name.starts_with("session_guard_"), "{}", m.name);
            assert_eq!(
                m.name.ends_with("_total"),
                m.kind == Kind::Counter,
                "{}: counters, and only they, end in _total",
                m.name
            );
            for set in m.initial {
                let keys: Vec<&str> = set.iter().map(|(k, _)| *k).collect();
                assert_eq!(keys, m.labels, "{}", m.name);
            }
            if let Kind::Histogram(buckets) = m.kind {
                assert!(buckets.windows(2).all(|w| w[0] < w[1]), "{}", m.name);
            }
        }
    }

    #[test]
    fn no_other_source_file_spells_a_metric_name() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut offenders = Vec::new();
        let mut stack = vec![dir];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "rs")
                    && path.file_name().is_some_and(|n| n != "metric.rs")
                {
                    let text = std::fs::read_to_string(&path).unwrap();
                    if text.contains(concat!("\"session_guard", "_")) {
                        offenders.push(path.display().to_string());
                    }
                }
            }
        }
        assert!(
            offenders.is_empty(),
            "metric names spelt outside metric.rs: {offenders:?}"
        );
    }
}
