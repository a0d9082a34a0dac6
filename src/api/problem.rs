//! Errors as RFC 9457 `application/problem+json`, each with a stable `type`
//! (`urn:session-guard:problem:<slug>`) that clients can match on. The
//! slugs are the protocol crate's `ProblemKind`, which clients read them as.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use session_guard_protocol::api::{PROBLEM_TYPE_PREFIX, Problem, ProblemKind};

use super::token::Scope;

/// The content type of every error.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Why a request was not served. Each variant is one `type`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No such thing, or not for this token: a token cannot tell the two
    /// apart, so it cannot probe for sessions of apps it may not see.
    #[error("no such resource")]
    NotFound,
    /// No token, an unknown or revoked one.
    #[error("a valid bearer token is required")]
    Unauthorized,
    /// The token lacks the scope the route needs.
    #[error("the token lacks the scope {0}")]
    ForbiddenScope(Scope),
    /// A parameter or the body is not what the route takes.
    #[error("{0}")]
    InvalidInput(String),
    /// The body is larger than `api.max_body_bytes`.
    #[error("the request body is too large")]
    PayloadTooLarge,
    /// The database did not answer in time, or at all.
    #[error("the session log is unavailable; try again")]
    Unavailable,
    /// A method this route does not have.
    #[error("method not allowed on this route")]
    MethodNotAllowed,
}

impl ApiError {
    /// The stable kind (its `type`), the title and the status.
    fn kind(&self) -> (ProblemKind, &'static str, StatusCode) {
        match self {
            ApiError::NotFound => (ProblemKind::NotFound, "Not found", StatusCode::NOT_FOUND),
            ApiError::Unauthorized => (
                ProblemKind::Unauthorized,
                "Unauthorized",
                StatusCode::UNAUTHORIZED,
            ),
            ApiError::ForbiddenScope(_) => (
                ProblemKind::ForbiddenScope,
                "Missing scope",
                StatusCode::FORBIDDEN,
            ),
            ApiError::InvalidInput(_) => (
                ProblemKind::InvalidInput,
                "Invalid input",
                StatusCode::BAD_REQUEST,
            ),
            ApiError::PayloadTooLarge => (
                ProblemKind::PayloadTooLarge,
                "Payload too large",
                StatusCode::PAYLOAD_TOO_LARGE,
            ),
            ApiError::Unavailable => (
                ProblemKind::Unavailable,
                "Unavailable",
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            ApiError::MethodNotAllowed => (
                ProblemKind::MethodNotAllowed,
                "Method not allowed",
                StatusCode::METHOD_NOT_ALLOWED,
            ),
        }
    }

    /// The problem document of this error.
    pub fn problem(&self) -> Problem {
        let (kind, title, status) = self.kind();
        let slug = kind.slug().expect("the worker's kinds each have a slug");
        Problem {
            kind: format!("{PROBLEM_TYPE_PREFIX}{slug}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: self.to_string(),
        }
    }

    /// The error a response of the layers below the handlers (a 404 of no
    /// route, a 405, the body limit's 413, the timeout's 503, an
    /// extractor's 400) stands for; `None` for a success.
    pub fn from_status(status: StatusCode, detail: String) -> Option<ApiError> {
        Some(match status {
            StatusCode::NOT_FOUND => ApiError::NotFound,
            StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed,
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::REQUEST_TIMEOUT => ApiError::Unavailable,
            StatusCode::UNAUTHORIZED => ApiError::Unauthorized,
            s if s.is_client_error() => ApiError::InvalidInput(detail),
            s if s.is_server_error() => ApiError::Unavailable,
            _ => return None,
        })
    }
}

/// The errors of every route that needs a token, as the OpenAPI document
/// lists them (one place, rather than a copy per route). Never built.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum Refusals {
    /// 400.
    #[response(
        status = 400,
        description = "An unknown parameter or body field, or a user id, app, cursor or value \
                       the API does not take (`invalid-input`).",
        content_type = "application/problem+json"
    )]
    InvalidInput(Problem),
    /// 401.
    #[response(
        status = 401,
        description = "No token, or an unknown or revoked one (`unauthorized`; with \
                       `WWW-Authenticate: Bearer`).",
        content_type = "application/problem+json"
    )]
    Unauthorized(Problem),
    /// 403.
    #[response(
        status = 403,
        description = "The token lacks the route's scope (`forbidden-scope`).",
        content_type = "application/problem+json"
    )]
    ForbiddenScope(Problem),
    /// 404.
    #[response(
        status = 404,
        description = "No such session, handle or override for this token: also one of an \
                       app outside the token's apps (`not-found`).",
        content_type = "application/problem+json"
    )]
    NotFound(Problem),
    /// 413.
    #[response(
        status = 413,
        description = "A body over `api.max_body_bytes` (`payload-too-large`).",
        content_type = "application/problem+json"
    )]
    PayloadTooLarge(Problem),
    /// 503.
    #[response(
        status = 503,
        description = "The database did not answer, or not within `api.request_timeout_ms` \
                       (`unavailable`).",
        content_type = "application/problem+json"
    )]
    Unavailable(Problem),
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> ApiError {
        tracing::warn!(%error, "sessions API: a database call failed");
        ApiError::Unavailable
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = self.problem();
        let body = serde_json::to_vec(&problem).expect("a problem serializes");
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = self.kind().2;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if matches!(self, ApiError::Unauthorized) {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_has_its_stable_type_and_status() {
        let cases = [
            (ApiError::NotFound, "not-found", 404),
            (ApiError::Unauthorized, "unauthorized", 401),
            (
                ApiError::ForbiddenScope(Scope::LimitsWrite),
                "forbidden-scope",
                403,
            ),
            (ApiError::InvalidInput("x".into()), "invalid-input", 400),
            (ApiError::PayloadTooLarge, "payload-too-large", 413),
            (ApiError::Unavailable, "unavailable", 503),
        ];
        for (error, slug, status) in cases {
            let p = error.problem();
            assert_eq!(p.kind, format!("urn:session-guard:problem:{slug}"));
            assert_eq!(p.status, status);
            // Clients read the same type back as its kind.
            assert_ne!(p.kind(), ProblemKind::Other, "{slug}");
        }
        let response = ApiError::Unauthorized.into_response();
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
    }
}
