//! What a call of the sessions API can fail with.

use session_guard_protocol::api::{Problem, ProblemKind};

/// Most characters of an unexpected answer's body kept in the error.
const BODY_CHARS: usize = 512;

/// Why a call of the sessions API failed. Match on
/// `ApiError::Problem(p)` and `p.kind()` for the API's refusals (404, 401,
/// 403...); the other variants are about reaching it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The API refused the call with an RFC 9457 problem document; its
    /// `kind()` is stable, its `detail` says what was wrong.
    #[error("the sessions API answered {} ({}): {}", .0.status, .0.kind, .0.detail)]
    Problem(Problem),
    /// The call did not get an answer: no connection, a timeout, or a body
    /// that is not the type the route answers with. The error holds no URL
    /// (the query may hold the caller's own session id).
    #[error("the sessions API could not be reached or answered garbage: {0}")]
    Transport(#[source] reqwest::Error),
    /// An error status without a problem document (a proxy's page, say).
    #[error("the sessions API answered {status} without a problem document: {body}")]
    Unexpected {
        /// The HTTP status.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// The base URL given to [`ApiConfig`](super::ApiConfig) is not an
    /// http(s) URL that paths can be appended to.
    #[error("invalid sessions API URL: {0}")]
    InvalidUrl(String),
}

impl ApiError {
    /// The problem's stable kind, if the API refused the call.
    pub fn problem_kind(&self) -> Option<ProblemKind> {
        match self {
            ApiError::Problem(p) => Some(p.kind()),
            _ => None,
        }
    }

    /// A transport error, without its URL.
    pub(super) fn transport(error: reqwest::Error) -> ApiError {
        ApiError::Transport(error.without_url())
    }

    /// The error an error status with `body` stands for.
    pub(super) fn from_answer(status: u16, body: &[u8]) -> ApiError {
        match serde_json::from_slice::<Problem>(body) {
            Ok(problem) => ApiError::Problem(problem),
            Err(_) => ApiError::Unexpected {
                status,
                body: String::from_utf8_lossy(body)
                    .chars()
                    .take(BODY_CHARS)
                    .collect(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_document_is_typed_and_anything_else_is_unexpected() {
        let body = br#"{"type":"urn:session-guard:problem:forbidden-scope","title":"Missing scope","status":403,"detail":"the token lacks the scope limits:write"}"#;
        let error = ApiError::from_answer(403, body);
        assert_eq!(error.problem_kind(), Some(ProblemKind::ForbiddenScope));
        assert!(error.to_string().contains("limits:write"), "{error}");
        let error = ApiError::from_answer(502, b"<html>Bad gateway</html>");
        assert!(
            matches!(&error, ApiError::Unexpected { status: 502, body } if body.contains("Bad gateway")),
            "{error:?}"
        );
        assert_eq!(error.problem_kind(), None);
    }
}
