//! The worker's HTTP endpoint (`http.listen`): health for orchestrators and
//! metrics for Prometheus.
//!
//! `GET /health/live` answers 200 while the process runs; `GET /health/ready`
//! answers 200 when the worker can do its job (PostgreSQL reachable, consuming
//! from RabbitMQ, not shutting down) and 503 with the reason otherwise;
//! `GET /metrics` serves the metrics in Prometheus' text format. Any other
//! path is 404, another method on these paths 405. Every response closes its
//! connection: probes and scrapers open one per request, and a connection
//! left open would hold up the graceful shutdown.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::map_response;
use axum::response::Response;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::health::Health;
use crate::shutdown::CancellationToken;
use crate::telemetry;

/// The content type of the plain-text answers.
const TEXT: &str = "text/plain";
/// The content type of Prometheus' text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4";

/// Status, content type and body of an answer.
type Reply = (StatusCode, [(header::HeaderName, &'static str); 1], String);

/// Serves health and metrics on `listen` until `shutdown`. A port that cannot
/// be bound is logged, not fatal: observability must not stop the worker.
pub(crate) async fn serve(listen: String, health: Arc<Health>, shutdown: CancellationToken) {
    let listener = match TcpListener::bind(&listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(%listen, error = %e, "cannot serve health and metrics; going on without");
            return;
        }
    };
    tracing::info!(%listen, "serving /health/live, /health/ready and /metrics");
    if let Err(e) = axum::serve(listener, router(health))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        tracing::warn!(%listen, error = %e, "the health and metrics endpoint stopped");
    }
}

/// The endpoint's routes.
fn router(health: Arc<Health>) -> Router {
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(map_response(close_connection))
        .with_state(health)
}

async fn live() -> Reply {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, TEXT)],
        "live\n".into(),
    )
}

async fn ready(State(health): State<Arc<Health>>) -> Reply {
    readiness(&health)
}

/// `/health/ready`'s answer for the worker's current state.
fn readiness(health: &Health) -> Reply {
    match health.ready() {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, TEXT)],
            "ready\n".into(),
        ),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, TEXT)],
            format!("not ready: {why}\n"),
        ),
    }
}

async fn metrics() -> Reply {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
        telemetry::render_metrics().unwrap_or_default(),
    )
}

async fn not_found() -> Reply {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, TEXT)],
        "not found\n".into(),
    )
}

async fn close_connection(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::IntoFuture as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Sends `request` to `addr` and reads the whole response, which must
    /// end with the connection.
    async fn exchange(addr: std::net::SocketAddr, request: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            stream.read_to_string(&mut response),
        )
        .await
        .expect("the server closes the connection")
        .unwrap();
        response
    }

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
        assert_eq!(readiness(&h).0, StatusCode::OK);
        h.set_database(false);
        let (status, _, body) = readiness(&h);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "not ready: database unavailable\n");
        h.set_database(true);
        h.set_stopping();
        assert_eq!(h.ready().unwrap_err(), "shutting down");
    }

    #[tokio::test]
    async fn answers_each_path_then_closes_and_stops_on_shutdown() {
        let health = Arc::new(Health::default());
        health.set_database(true);
        health.set_broker(true);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(
            axum::serve(listener, router(health.clone()))
                .with_graceful_shutdown(shutdown.clone().cancelled_owned())
                .into_future(),
        );
        let get = |path: &str| format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n");

        let live = exchange(addr, &get("/health/live")).await;
        assert!(live.starts_with("HTTP/1.1 200 OK\r\n"), "{live}");
        assert!(live.contains("content-type: text/plain\r\n"), "{live}");
        assert!(live.contains("connection: close\r\n"), "{live}");
        assert!(live.ends_with("\r\n\r\nlive\n"), "{live}");

        let ready = exchange(addr, &get("/health/ready?verbose=1")).await;
        assert!(ready.starts_with("HTTP/1.1 200 OK\r\n"), "{ready}");
        assert!(ready.ends_with("\r\n\r\nready\n"), "{ready}");
        health.set_stopping();
        let stopping = exchange(addr, &get("/health/ready")).await;
        assert!(
            stopping.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{stopping}"
        );
        assert!(
            stopping.ends_with("\r\n\r\nnot ready: shutting down\n"),
            "{stopping}"
        );

        let metrics = exchange(addr, &get("/metrics")).await;
        assert!(metrics.starts_with("HTTP/1.1 200 OK\r\n"), "{metrics}");
        assert!(
            metrics.contains("content-type: text/plain; version=0.0.4\r\n"),
            "{metrics}"
        );

        let nope = exchange(addr, &get("/nope")).await;
        assert!(nope.starts_with("HTTP/1.1 404 Not Found\r\n"), "{nope}");
        assert!(nope.ends_with("\r\n\r\nnot found\n"), "{nope}");
        let post = exchange(
            addr,
            "POST /health/live HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n",
        )
        .await;
        assert!(
            post.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{post}"
        );
        assert!(post.contains("connection: close\r\n"), "{post}");

        shutdown.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(5), server)
            .await
            .expect("the server stops on shutdown")
            .unwrap()
            .unwrap();
    }
}
