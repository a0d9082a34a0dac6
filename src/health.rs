//! Health: what the worker knows about its own state, updated by its tasks
//! as they work, and read by readiness (`/health/ready` on the worker's HTTP
//! endpoint) and by embedding programs.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::metric;
use crate::refusal::{Refusal, Service};

/// The worker's view of its dependencies, updated as it works.
#[derive(Debug, Default)]
pub struct Health {
    /// The last database operation (or ping) succeeded.
    database: AtomicBool,
    /// The consumer is connected and consuming.
    broker: AtomicBool,
    /// A shutdown was requested.
    stopping: AtomicBool,
    /// Serves only the sessions API (`session-guard api`): never consumes,
    /// so readiness does not wait for RabbitMQ.
    api_only: bool,
    /// Refusals (credentials, permissions) met by each task ("consumer",
    /// "relay"...) on its last attempt; a task clears its own on success.
    refusals: Mutex<BTreeMap<&'static str, Refusal>>,
}

impl Health {
    /// The health of a process that serves only the sessions API.
    pub fn api_only() -> Health {
        Health {
            api_only: true,
            ..Health::default()
        }
    }

    pub fn set_database(&self, up: bool) {
        let was = self.database.swap(up, Ordering::Relaxed);
        if was != up {
            metrics::gauge!(metric::DATABASE_UP.name).set(f64::from(u8::from(up)));
        }
    }

    pub fn set_broker(&self, up: bool) {
        let was = self.broker.swap(up, Ordering::Relaxed);
        if was != up {
            metrics::gauge!(metric::BROKER_UP.name).set(f64::from(u8::from(up)));
        }
    }

    /// Publishes the gauges with their current values (at start, so they
    /// exist before the first change).
    pub fn publish_gauges(&self) {
        let db = self.database.load(Ordering::Relaxed);
        let broker = self.broker.load(Ordering::Relaxed);
        metrics::gauge!(metric::DATABASE_UP.name).set(f64::from(u8::from(db)));
        if !self.api_only {
            metrics::gauge!(metric::BROKER_UP.name).set(f64::from(u8::from(broker)));
        }
    }

    /// Records what refused `task`'s last attempt, or (`None`) that it got
    /// through.
    pub fn set_refusal(&self, task: &'static str, refusal: Option<Refusal>) {
        let mut refusals = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        match refusal {
            Some(r) => refusals.insert(task, r),
            None => refusals.remove(task),
        };
    }

    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// `Ok` when ready; otherwise why not.
    pub fn ready(&self) -> Result<(), String> {
        let refusals: Vec<Refusal> = {
            let by_task = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
            let mut unique: Vec<Refusal> = Vec::new();
            for r in by_task.values() {
                if !unique.contains(r) {
                    unique.push(r.clone());
                }
            }
            unique
        };
        let refused = |service| refusals.iter().any(|r| r.service == service);
        let mut problems = Vec::new();
        if self.stopping.load(Ordering::Relaxed) {
            problems.push("shutting down".to_owned());
        }
        // A refusal says more than "unavailable": it replaces it.
        if !self.database.load(Ordering::Relaxed) && !refused(Service::Database) {
            problems.push("database unavailable".to_owned());
        }
        if !self.api_only && !self.broker.load(Ordering::Relaxed) && !refused(Service::Broker) {
            problems.push("not consuming from RabbitMQ".to_owned());
        }
        problems.extend(refusals.iter().map(Refusal::to_string));
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_says_which_service_refused_until_the_task_gets_through() {
        use crate::refusal::Refused;
        let h = Health::default();
        h.set_database(true);
        h.set_broker(true);
        let broker = Refusal {
            service: Service::Broker,
            refused: Refused::Credentials,
            reason: "ACCESS_REFUSED - Login was refused".into(),
        };
        h.set_broker(false);
        h.set_refusal("consumer", Some(broker.clone()));
        // The relay meets the same refusal: said once.
        h.set_refusal("relay", Some(broker));
        assert_eq!(
            h.ready().unwrap_err(),
            "RabbitMQ refused the credentials: ACCESS_REFUSED - Login was refused"
        );
        h.set_database(false);
        h.set_refusal(
            "batches",
            Some(Refusal {
                service: Service::Database,
                refused: Refused::Access,
                reason: "permission denied for table sessions (SQLSTATE 42501)".into(),
            }),
        );
        assert_eq!(
            h.ready().unwrap_err(),
            "PostgreSQL refused access: permission denied for table sessions \
             (SQLSTATE 42501), RabbitMQ refused the credentials: ACCESS_REFUSED - Login was \
             refused"
        );
        h.set_refusal("batches", None);
        h.set_database(true);
        h.set_refusal("consumer", None);
        h.set_broker(true);
        assert!(h.ready().is_err(), "the relay is still refused");
        h.set_refusal("relay", None);
        assert!(h.ready().is_ok());
    }

    #[test]
    fn an_api_only_process_is_ready_with_its_database_alone() {
        let h = Health::api_only();
        assert_eq!(h.ready().unwrap_err(), "database unavailable");
        h.set_database(true);
        assert!(h.ready().is_ok());
        h.set_stopping();
        assert_eq!(h.ready().unwrap_err(), "shutting down");
    }
}
