//! Refusals: PostgreSQL or RabbitMQ answering "no" to the worker's
//! credentials or permissions, as opposed to being out of reach or failing.
//!
//! At start-up a refusal ends `run` with a one-line reason: retrying cannot
//! fix a wrong password, and would only hide it. Once the worker runs, a
//! refusal is retried (credentials may be rotating), logged as an error that
//! says it is a refusal, and reported by readiness.

use std::fmt;

use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};

use session_guard_amqp::brokers::ConnectError;
use session_guard_amqp::url::redact_url;

use crate::configuration::Settings;

/// The service that refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// PostgreSQL.
    Database,
    /// RabbitMQ.
    Broker,
}

/// What the service refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The user name or password (RabbitMQ's "Login was refused", SQLSTATE class 28).
    Credentials,
    /// Access to something the user may not use: a vhost, an exchange, a
    /// database (RabbitMQ's ACCESS_REFUSED or NOT_ALLOWED, SQLSTATE 42501).
    Access,
}

/// A refusal, with the service's own words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Refusal {
    /// Who refused.
    pub service: Service,
    /// What was refused.
    pub refused: Refused,
    /// The service's message (and SQLSTATE for PostgreSQL).
    pub reason: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let service = match self.service {
            Service::Database => "PostgreSQL",
            Service::Broker => "RabbitMQ",
        };
        let what = match self.refused {
            Refused::Credentials => "the credentials",
            Refused::Access => "access",
        };
        write!(f, "{service} refused {what}: {}", self.reason)
    }
}

/// SQLSTATEs that are PostgreSQL refusing the role: class 28 (invalid
/// authorization: wrong password, unknown role, pg_hba.conf) and 42501
/// (insufficient privilege, e.g. no CONNECT on the database).
fn database_refusal(code: &str, message: &str) -> Option<Refusal> {
    let refused = if code.starts_with("28") {
        Refused::Credentials
    } else if code == "42501" {
        Refused::Access
    } else {
        return None;
    };
    Some(Refusal {
        service: Service::Database,
        refused,
        reason: format!("{message} (SQLSTATE {code})"),
    })
}

impl Refusal {
    /// The refusal a lapin error reports, if it is one: ACCESS_REFUSED
    /// (a failed login, or an exchange or queue the user may not use) or
    /// NOT_ALLOWED (a vhost the user may not open, or that does not exist).
    pub fn of_broker(error: &lapin::Error) -> Option<Refusal> {
        match error.kind() {
            lapin::ErrorKind::ProtocolError(amqp) => {
                let reason = amqp.get_message().to_string();
                let refused = match amqp.kind() {
                    AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)
                        if reason.contains("Login was refused") =>
                    {
                        Refused::Credentials
                    }
                    AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)
                    | AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED) => Refused::Access,
                    _ => return None,
                };
                Some(Refusal {
                    service: Service::Broker,
                    refused,
                    reason,
                })
            }
            lapin::ErrorKind::AuthProviderError(reason) => Some(Refusal {
                service: Service::Broker,
                refused: Refused::Credentials,
                reason: reason.clone(),
            }),
            _ => None,
        }
    }

    /// The refusal an sqlx error reports, if it is one.
    pub fn of_database(error: &sqlx::Error) -> Option<Refusal> {
        let db = error.as_database_error()?;
        database_refusal(db.code()?.as_ref(), db.message())
    }

    /// The first refusal in an error's chain of causes. Errors of the
    /// worker's own (a batch's, for one) are found through theirs: the
    /// sqlx error they carry or, when they wrap it transparently (so that
    /// the chain skips it), the database error sqlx keeps in it.
    pub fn find(error: &anyhow::Error) -> Option<Refusal> {
        error.chain().find_map(|cause| {
            if let Some(e) = cause.downcast_ref::<lapin::Error>() {
                Refusal::of_broker(e)
            } else if let Some(e) = cause.downcast_ref::<ConnectError>() {
                // Every broker of amqp.url failed; a refusal among them
                // (the others out of reach) is what it comes to.
                e.cause().and_then(Refusal::of_broker)
            } else if let Some(e) = cause.downcast_ref::<sqlx::Error>() {
                Refusal::of_database(e)
            } else if let Some(db) = cause.downcast_ref::<Box<dyn sqlx::error::DatabaseError>>() {
                database_refusal(db.code()?.as_ref(), db.message())
            } else if let Some(e) = cause.downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                database_refusal(e.code(), e.message())
            } else {
                cause.downcast_ref::<Refusal>().cloned()
            }
        })
    }

    /// The refusal with the setting it concerns, for the one line `run`
    /// and `check-config` end with: "RabbitMQ refused the credentials of
    /// amqp.url (amqp://guest:***@host:5672/%2f): ACCESS_REFUSED - ...".
    pub fn explain(&self, settings: &Settings) -> String {
        let (service, key, url) = match self.service {
            Service::Database => ("PostgreSQL", "database.url", &settings.database.url),
            Service::Broker => ("RabbitMQ", "amqp.url", &settings.amqp.url),
        };
        let what = match self.refused {
            Refused::Credentials => "the credentials of",
            Refused::Access => "access for",
        };
        format!(
            "{service} refused {what} {key} ({}): {}",
            redact_url(url),
            self.reason
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::protocol::AMQPError;
    use std::time::Duration;

    fn broker_error(kind: AMQPErrorKind, message: &str) -> lapin::Error {
        lapin::ErrorKind::ProtocolError(AMQPError::new(kind, message.into())).into()
    }

    #[test]
    fn broker_refusals_are_told_from_other_errors() {
        let login = broker_error(
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED),
            "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN.",
        );
        let refusal = Refusal::of_broker(&login).unwrap();
        assert_eq!(refusal.refused, Refused::Credentials);
        assert_eq!(
            refusal.to_string(),
            "RabbitMQ refused the credentials: ACCESS_REFUSED - Login was refused using \
             authentication mechanism PLAIN."
        );
        let vhost = broker_error(
            AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED),
            "NOT_ALLOWED - vhost nope not found",
        );
        assert_eq!(Refusal::of_broker(&vhost).unwrap().refused, Refused::Access);
        // Wrapped in context, as the worker's errors are.
        let wrapped = anyhow::Error::new(vhost).context("cannot connect to RabbitMQ");
        let settings = Settings::load_from(None, Vec::new()).unwrap();
        assert_eq!(
            Refusal::find(&wrapped).unwrap().explain(&settings),
            "RabbitMQ refused access for amqp.url (amqp://guest:***@127.0.0.1:5672/%2f): \
             NOT_ALLOWED - vhost nope not found"
        );

        let precondition = broker_error(
            AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED),
            "PRECONDITION_FAILED - inequivalent arg",
        );
        assert_eq!(Refusal::of_broker(&precondition), None);
        let io: lapin::Error = std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into();
        assert_eq!(Refusal::of_broker(&io), None);
        assert_eq!(Refusal::find(&anyhow::anyhow!("something else")), None);
    }

    #[test]
    fn a_refusal_among_the_brokers_of_a_list_is_found() {
        use session_guard_amqp::brokers::{Failure, FailureCause};
        let failure = |url: &str, cause| Failure {
            shown_url: url.to_owned(),
            cause,
        };
        let io = || {
            FailureCause::Broker(std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into())
        };
        let login = broker_error(
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED),
            "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN.",
        );
        let pass = ConnectError {
            failures: vec![
                failure("amqp://u:***@mq1", io()),
                failure("amqp://u:***@mq2", FailureCause::Broker(login)),
                failure(
                    "amqp://u:***@mq3",
                    FailureCause::TimedOut(Duration::from_secs(10)),
                ),
            ],
        };
        let shown = pass.to_string();
        assert_eq!(
            shown,
            "amqp://u:***@mq1: IO error: connection refused; amqp://u:***@mq2: protocol error: \
             AMQP soft error: ACCESS-REFUSED: ACCESS_REFUSED - Login was refused using \
             authentication mechanism PLAIN.; amqp://u:***@mq3: no answer within 10 s"
        );
        let wrapped = anyhow::Error::new(pass).context("cannot connect to any of the 3 brokers");
        assert_eq!(
            Refusal::find(&wrapped).map(|r| r.refused),
            Some(Refused::Credentials)
        );
        // Out of reach everywhere: not a refusal.
        let away = ConnectError {
            failures: vec![failure("amqp://mq1", io()), failure("amqp://mq2", io())],
        };
        assert_eq!(Refusal::find(&anyhow::Error::new(away)), None);
    }

    #[test]
    fn database_refusals_are_class_28_and_42501() {
        let r = database_refusal("28P01", "password authentication failed for user \"x\"").unwrap();
        assert_eq!(r.refused, Refused::Credentials);
        assert_eq!(
            r.to_string(),
            "PostgreSQL refused the credentials: password authentication failed for user \"x\" \
             (SQLSTATE 28P01)"
        );
        assert_eq!(
            database_refusal("42501", "permission denied for database x")
                .unwrap()
                .refused,
            Refused::Access
        );
        assert_eq!(database_refusal("57P01", "terminating connection"), None);
        assert_eq!(
            database_refusal("3D000", "database \"x\" does not exist"),
            None
        );
    }
}
