//! What requests carry, checked: JSON bodies (unknown fields refused, an
//! empty body read as the type's default), user ids and app names by the
//! event decoder's own rules.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

use super::problem::ApiError;
use crate::domain::event::{AppName, UserId};

/// A JSON body; empty means "nothing given" (`T::default()`).
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Default,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<JsonBody<T>, ApiError> {
        let bytes = Bytes::from_request(request, state).await.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::InvalidInput(format!("cannot read the body: {e}"))
            }
        })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(JsonBody(T::default()));
        }
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::InvalidInput(format!("body: {e}")))
    }
}

/// A user id from the path, as the event decoder checks it.
pub fn user(user_id: &str) -> Result<UserId, ApiError> {
    UserId::parse(user_id).map_err(|e| ApiError::InvalidInput(format!("user_id: {e}")))
}

/// An app name from a parameter or body, as the event decoder checks it.
pub fn app(app: &str) -> Result<AppName, ApiError> {
    AppName::parse(app).map_err(|e| ApiError::InvalidInput(format!("app: {e}")))
}
