//! The sessions API's routes and the layers around them: the body limit,
//! the timeout, the request log (method, route pattern, status, latency;
//! never the path, query or headers, which hold user ids, the token and
//! the caller's session id), the metrics, and every error as problem+json.
//! The headers that hold secrets are marked sensitive first, so that no
//! layer's `Debug` of them shows their value.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::timeout::TimeoutLayer;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::ApiDoc;
use super::problem::{ApiError, PROBLEM_JSON};
use super::state::ApiState;
use super::{limits, sessions};
use crate::configuration::ApiSettings;
use crate::metric;
use crate::shutdown::CancellationToken;

/// The route label of a request no route matched.
const UNMATCHED: &str = "unmatched";
/// Most bytes of an error's plain-text body kept as the problem's detail.
const DETAIL_BYTES: usize = 512;

/// The documented routes (the OpenAPI document is generated from these).
pub(super) fn routes() -> OpenApiRouter<Arc<ApiState>> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(sessions::list))
        .routes(routes!(sessions::revoke_one))
        .routes(routes!(sessions::revoke_user))
        .routes(routes!(limits::get, limits::put, limits::delete))
        .routes(routes!(openapi_json))
}

/// The OpenAPI document, as `GET /v1/openapi.json` serves it and
/// `docs/openapi.json` holds it (pretty, with a final newline).
pub fn openapi_document() -> String {
    let mut text = routes()
        .into_openapi()
        .to_pretty_json()
        .expect("the document serializes");
    text.push('\n');
    text
}

/// This document, as JSON (no token needed).
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "meta",
    responses((status = 200, description = "The OpenAPI 3.1 document.", content_type = "application/json", body = Object))
)]
async fn openapi_json() -> Response {
    static DOCUMENT: std::sync::LazyLock<String> = std::sync::LazyLock::new(openapi_document);
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.as_str(),
    )
        .into_response()
}

/// The request headers that hold secrets: the bearer token, and the
/// caller's own session id (`Session-Guard-Current-Session`).
pub fn sensitive_headers() -> [HeaderName; 2] {
    [
        header::AUTHORIZATION,
        HeaderName::from_static("session-guard-current-session"),
    ]
}

/// The whole service: routes, layers, state.
pub fn router(state: Arc<ApiState>, settings: &ApiSettings) -> Router {
    let (router, _) = routes().split_for_parts();
    router
        .fallback(|| async { ApiError::NotFound })
        .layer(RequestBodyLimitLayer::new(settings.max_body_bytes))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            settings.request_timeout(),
        ))
        .layer(middleware::from_fn(observe))
        .layer(SetSensitiveRequestHeadersLayer::new(sensitive_headers()))
        .with_state(state)
}

/// Serves the API on `settings.listen` until `shutdown`.
pub async fn serve(
    state: Arc<ApiState>,
    settings: ApiSettings,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    tracing::info!(
        listen = %settings.listen,
        "serving the sessions API: /v1/users/{{user_id}}/sessions, /v1/sessions/{{handle}}/revoke, \
         /v1/users/{{user_id}}/revoke, /v1/users/{{user_id}}/limits, /v1/openapi.json"
    );
    axum::serve(listener, router(state, &settings))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// Counts and logs each request by its route pattern, and turns every
/// error the layers below the handlers answered in plain text (no route,
/// wrong method, body too large, timeout, a parameter the extractors
/// refused) into problem+json.
async fn observe(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED.to_owned(), |p| p.as_str().to_owned());
    let response = as_problem(next.run(request).await).await;
    let status = response.status();
    let elapsed = started.elapsed();
    metrics::counter!(
        metric::API_REQUESTS.name,
        "route" => route.clone(),
        "status" => status.as_str().to_owned()
    )
    .increment(1);
    metrics::histogram!(metric::API_REQUEST_DURATION.name, "route" => route.clone())
        .record(elapsed.as_secs_f64());
    tracing::debug!(
        %method,
        route,
        status = status.as_u16(),
        latency_ms = elapsed.as_secs_f64() * 1000.0,
        "sessions API request"
    );
    response
}

/// `response` as problem+json if it is an error that is not one already.
async fn as_problem(response: Response) -> Response {
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v == HeaderValue::from_static(PROBLEM_JSON));
    if is_problem || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    // A 405 says which methods the route has.
    let allow = response.headers().get(header::ALLOW).cloned();
    let body = to_bytes(response.into_body(), DETAIL_BYTES * 8)
        .await
        .unwrap_or_default();
    let detail: String = String::from_utf8_lossy(&body)
        .chars()
        .take(DETAIL_BYTES)
        .collect();
    match ApiError::from_status(status, detail) {
        Some(error) => {
            let mut problem = error.into_response();
            if let Some(allow) = allow {
                problem.headers_mut().insert(header::ALLOW, allow);
            }
            problem
        }
        None => Response::builder()
            .status(status)
            .body(Body::empty())
            .expect("a status and an empty body"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_headers_are_the_ones_marked_sensitive() {
        let names = sensitive_headers();
        assert_eq!(
            names[1].as_str(),
            session_guard_protocol::api::CURRENT_SESSION_HEADER.to_ascii_lowercase()
        );
        let mut value = HeaderValue::from_static("cookie-secret");
        value.set_sensitive(true);
        assert!(!format!("{value:?}").contains("cookie-secret"));
    }

    #[test]
    fn the_documented_caps_are_the_enforced_ones() {
        use session_guard_protocol::api::MAX_APPS;
        use session_guard_protocol::revoke::MAX_NOTE_CHARS;
        let doc: serde_json::Value = serde_json::from_str(&openapi_document()).unwrap();
        let schemas = &doc["components"]["schemas"];
        for body in ["RevokeSession", "RevokeUser"] {
            assert_eq!(
                schemas[body]["properties"]["note"]["maxLength"], MAX_NOTE_CHARS,
                "{body}"
            );
        }
        assert_eq!(
            schemas["RevokeUser"]["properties"]["apps"]["maxItems"],
            MAX_APPS
        );
        let params = doc["paths"]["/v1/users/{user_id}/sessions"]["get"]["parameters"]
            .as_array()
            .unwrap();
        let app = params.iter().find(|p| p["name"] == "app").unwrap();
        assert_eq!(app["schema"]["maxItems"], MAX_APPS, "{app}");
        let headers: Vec<&str> = params
            .iter()
            .filter(|p| p["in"] == "header")
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            headers,
            ["Session-Guard-Current-Session", "Session-Guard-Current-App"]
        );
        assert!(
            !params
                .iter()
                .any(|p| p["in"] == "query" && p["name"].as_str().unwrap().starts_with("current_")),
            "{params:?}"
        );
    }

    #[test]
    fn the_metric_route_labels_are_the_routes() {
        let openapi = routes().into_openapi();
        let mut paths: Vec<&str> = openapi.paths.paths.keys().map(String::as_str).collect();
        let mut labels: Vec<&str> = metric::api_routes().collect();
        paths.sort_unstable();
        labels.sort_unstable();
        assert_eq!(paths, labels);
    }
}
