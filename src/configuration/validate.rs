//! Checks of values the types alone let through: numbers beyond what
//! PostgreSQL or RabbitMQ can hold, zeros, names and URLs the services
//! would refuse, and keys that must agree with each other.

use super::problem::Problem;
use super::settings::Settings;
use session_guard_amqp::url::redact_url;
use session_guard_protocol::notice::NoticeKind;

/// Largest value of a setting that ends up in a PostgreSQL `integer` column
/// (a session's `max_sessions`) or an AMQP signed 32-bit argument.
pub const MAX_INT4: u32 = i32::MAX as u32;

/// Largest duration, in seconds, a setting may hold: 100 years, far beyond
/// any use, and small enough that "now minus this" is still a timestamp.
pub const MAX_SECONDS: u64 = 100 * 365 * 24 * 3600;

impl Settings {
    /// Values out of range, key by key: `(key, what is wrong)`. Checked on
    /// each layer, so each is reported with where it came from.
    pub(super) fn field_problems(&self) -> Vec<(String, String)> {
        let mut problems = self.range_problems();
        problems.extend(self.minimum_problems());
        problems.extend(self.name_problems());
        problems.extend(self.url_problems());
        problems.extend(self.notice_problems());
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            problems.push(("log.level".to_owned(), format!("not a log filter: {e}")));
        }
        problems
    }

    /// Numbers above what PostgreSQL columns, RabbitMQ arguments or
    /// durations can hold.
    fn range_problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut at_most = |key: String, value: u64, max: u64, why: &str| {
            if value > max {
                problems.push((
                    key,
                    format!("{value} is out of range: at most {max} ({why})"),
                ));
            }
        };
        const INT4: &str = "it is stored as a PostgreSQL integer";
        const SECONDS: &str = "100 years";
        let max4 = u64::from(MAX_INT4);
        at_most(
            "amqp.max_redeliveries".into(),
            self.amqp.max_redeliveries.into(),
            max4,
            "RabbitMQ's x-delivery-limit is a signed 32-bit integer",
        );
        at_most(
            "amqp.quorum_initial_group_size".into(),
            self.amqp.quorum_initial_group_size.into(),
            max4,
            "RabbitMQ's x-quorum-initial-group-size is a signed 32-bit integer",
        );
        let limits = &self.limits;
        at_most(
            "limits.max_sessions".into(),
            limits.max_sessions.into(),
            max4,
            INT4,
        );
        at_most(
            "limits.max_sessions_global".into(),
            limits.max_sessions_global.into(),
            max4,
            INT4,
        );
        at_most(
            "limits.idle_timeout".into(),
            limits.idle_timeout,
            MAX_SECONDS,
            SECONDS,
        );
        at_most(
            "retention.tombstone_ttl".into(),
            self.retention.tombstone_ttl,
            MAX_SECONDS,
            SECONDS,
        );
        for (i, rule) in limits.rules.iter().enumerate() {
            let key = |field: &str| format!("limits.rules[{i}].{field}");
            if let Some(n) = rule.max_sessions {
                at_most(key("max_sessions"), n.into(), max4, INT4);
            }
            if let Some(n) = rule.max_sessions_global {
                at_most(key("max_sessions_global"), n.into(), max4, INT4);
            }
            if let Some(n) = rule.idle_timeout {
                at_most(key("idle_timeout"), n, MAX_SECONDS, SECONDS);
            }
        }
        problems
    }

    /// Values that must not be zero.
    fn minimum_problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut at_least_1 = |key: &str, value: u64, why: &str| {
            if value == 0 {
                problems.push((key.to_owned(), format!("must be at least 1{why}")));
            }
        };
        at_least_1("worker.batch_size", self.worker.batch_size as u64, "");
        at_least_1("worker.pipeline", self.worker.pipeline as u64, "");
        at_least_1(
            "amqp.quorum_initial_group_size",
            self.amqp.quorum_initial_group_size.into(),
            " (a quorum queue needs one replica)",
        );
        at_least_1(
            "amqp.prefetch",
            self.amqp.prefetch.into(),
            " (0 would mean unlimited)",
        );
        at_least_1(
            "api.request_timeout_ms",
            self.api.request_timeout_ms,
            " (every request would time out)",
        );
        at_least_1(
            "api.max_body_bytes",
            self.api.max_body_bytes as u64,
            " (every body would be refused)",
        );
        at_least_1(
            "api.max_connections",
            self.api.max_connections.into(),
            " (no request could reach the database)",
        );
        if self.retention.sweep_interval.is_zero() {
            problems.push((
                "retention.sweep_interval".to_owned(),
                "must be longer than 0".to_owned(),
            ));
        }
        problems
    }

    /// Notice kinds this version does not send, and lookbacks of no time or
    /// beyond any timestamp.
    fn notice_problems(&self) -> Vec<(String, String)> {
        let notices = &self.notices;
        let mut problems = Vec::new();
        for (i, kind) in notices.kinds.iter().enumerate() {
            if NoticeKind::parse(kind) == NoticeKind::Other {
                let known: Vec<&str> = NoticeKind::ALL.iter().map(|k| k.as_str()).collect();
                problems.push((
                    format!("notices.kinds[{i}]"),
                    format!("unknown kind {kind:?} (allowed: {})", known.join(", ")),
                ));
            }
        }
        if notices.lookback.is_zero() {
            problems.push((
                "notices.lookback".to_owned(),
                "must be longer than 0".to_owned(),
            ));
        } else if notices.lookback.as_secs() > MAX_SECONDS {
            problems.push((
                "notices.lookback".to_owned(),
                "is out of range: at most 100 years".to_owned(),
            ));
        }
        problems
    }

    /// Exchange and queue names RabbitMQ would refuse.
    fn name_problems(&self) -> Vec<(String, String)> {
        let amqp = &self.amqp;
        [
            ("amqp.events_exchange", &amqp.events_exchange),
            ("amqp.events_queue", &amqp.events_queue),
            ("amqp.revocations_exchange", &amqp.revocations_exchange),
            ("amqp.notices_exchange", &amqp.notices_exchange),
            ("amqp.dead_letter_exchange", &amqp.dead_letter_exchange),
            ("amqp.dead_letter_queue", &amqp.dead_letter_queue),
        ]
        .into_iter()
        .filter(|(_, name)| name.is_empty() || name.len() > 255)
        .map(|(key, _)| (key.to_owned(), "must be 1-255 bytes long".to_owned()))
        .collect()
    }

    /// URLs that do not parse, with their passwords masked in the reason.
    fn url_problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let url = &self.database.url;
        // One host or several (libpq's `h1:p1,h2:p2`, which sqlx does not parse).
        if let Err(e) = super::database_url::Hosts::parse(url) {
            problems.push((
                "database.url".to_owned(),
                format!("not a PostgreSQL URL: {e}").replace(url, &redact_url(url)),
            ));
        }
        // One URL or several; the message shows none of their passwords.
        if let Err(e) = session_guard_amqp::brokers::Brokers::parse(&self.amqp.url) {
            problems.push(("amqp.url".to_owned(), format!("not an AMQP URL: {e}")));
        }
        problems
    }

    /// Rejects combinations of keys that would misbehave at run time.
    pub(super) fn validate(&self) -> Result<(), Vec<Problem>> {
        if (self.database.max_connections as usize) < self.worker.pipeline + 2 {
            return Err(vec![Problem {
                origin: None,
                key: "database.max_connections".to_owned(),
                message: format!(
                    "{} is too small: it must be at least worker.pipeline + 2 ({}): one \
                     connection per batch in flight, one for the outbox relay, one for \
                     housekeeping",
                    self.database.max_connections,
                    self.worker.pipeline + 2
                ),
            }]);
        }
        Ok(())
    }
}
