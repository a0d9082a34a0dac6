//! Health: what the worker knows about its own state, and a small HTTP
//! server for it and for the Prometheus metrics.
//!
//! `GET /health/live` answers 200 while the process runs; `GET /health/ready`
//! answers 200 when the worker can do its job (PostgreSQL reachable, consuming
//! from RabbitMQ, not shutting down) and 503 with the reason otherwise;
//! `GET /metrics` serves the metrics in Prometheus' text format.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::metric;
use crate::refusal::{Refusal, Service};
use crate::shutdown::Shutdown;
use crate::telemetry;

/// The worker's view of its dependencies, updated as it works.
#[derive(Debug, Default)]
pub struct Health {
    /// The last database operation (or ping) succeeded.
    database: AtomicBool,
    /// The consumer is connected and consuming.
    broker: AtomicBool,
    /// A shutdown was requested.
    stopping: AtomicBool,
    /// Refusals (credentials, permissions) met by each task ("consumer",
    /// "relay"...) on its last attempt; a task clears its own on success.
    refusals: Mutex<BTreeMap<&'static str, Refusal>>,
}

impl Health {
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
        metrics::gauge!(metric::BROKER_UP.name).set(f64::from(u8::from(broker)));
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
        if !self.broker.load(Ordering::Relaxed) && !refused(Service::Broker) {
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

/// Serves health and metrics on `listen` until `shutdown`. A port that cannot
/// be bound is logged, not fatal: observability must not stop the worker.
pub async fn serve(listen: String, health: Arc<Health>, mut shutdown: Shutdown) {
    let listener = match TcpListener::bind(&listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(%listen, error = %e, "cannot serve health and metrics; going on without");
            return;
        }
    };
    tracing::info!(%listen, "serving /health/live, /health/ready and /metrics");
    loop {
        let (mut stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed");
                    continue;
                }
            },
            () = shutdown.wait() => return,
        };
        let health = health.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let n = match tokio::time::timeout(
                std::time::Duration::from_secs(5),
                stream.read(&mut buf),
            )
            .await
            {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let request = String::from_utf8_lossy(&buf[..n]);
            let target = request.split_whitespace().nth(1).unwrap_or("/");
            let path = target.split('?').next().unwrap_or(target);
            let (status, content_type, body) = respond(path, &health);
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// Status line, content type and body for a path.
fn respond(path: &str, health: &Health) -> (&'static str, &'static str, String) {
    match path {
        "/health/live" => ("200 OK", "text/plain", "live\n".into()),
        "/health/ready" => match health.ready() {
            Ok(()) => ("200 OK", "text/plain", "ready\n".into()),
            Err(why) => (
                "503 Service Unavailable",
                "text/plain",
                format!("not ready: {why}\n"),
            ),
        },
        "/metrics" => (
            "200 OK",
            "text/plain; version=0.0.4",
            telemetry::render_metrics().unwrap_or_default(),
        ),
        _ => ("404 Not Found", "text/plain", "not found\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_with_database_and_broker_and_not_stopping() {
        let h = Health::default();
        assert_eq!(
            h.ready().unwrap_err(),
            "database unavailable, not consuming from RabbitMQ"
        );
        h.set_database(true);
        h.set_broker(true);
        assert!(h.ready().is_ok());
        assert_eq!(respond("/health/ready", &h).0, "200 OK");
        h.set_database(false);
        let (status, _, body) = respond("/health/ready", &h);
        assert_eq!(status, "503 Service Unavailable");
        assert_eq!(body, "not ready: database unavailable\n");
        h.set_database(true);
        h.set_stopping();
        assert_eq!(h.ready().unwrap_err(), "shutting down");
        assert_eq!(respond("/health/live", &h).0, "200 OK");
        assert_eq!(respond("/nope", &h).0, "404 Not Found");
    }

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
            respond("/health/ready", &h).2,
            "not ready: PostgreSQL refused access: permission denied for table sessions \
             (SQLSTATE 42501), RabbitMQ refused the credentials: ACCESS_REFUSED - Login was \
             refused\n"
        );
        h.set_refusal("batches", None);
        h.set_database(true);
        h.set_refusal("consumer", None);
        h.set_broker(true);
        assert!(h.ready().is_err(), "the relay is still refused");
        h.set_refusal("relay", None);
        assert!(h.ready().is_ok());
    }
}
