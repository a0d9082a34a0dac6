//! Who calls: the bearer token, checked on every request (through the
//! [`TokenCache`](super::token_cache::TokenCache), which every change to a
//! token empties at once on every server), its scopes and the apps whose
//! sessions it may see.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;

use super::problem::ApiError;
use super::state::ApiState;
use super::token::{self, EVERY_APP, Scope};
use crate::domain::event::AppName;

/// The token a request came with, once checked.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's name: recorded as `token:<name>` in `ended_by`.
    pub name: String,
    /// The apps it may see; `None`: every app.
    apps: Option<Vec<String>>,
    /// What it may do.
    scopes: Vec<Scope>,
}

impl Caller {
    /// Refuses (403) a token without `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.scopes.contains(&scope) {
            Ok(())
        } else {
            Err(ApiError::ForbiddenScope(scope))
        }
    }

    /// Whether sessions of `app` exist for this token.
    pub fn sees(&self, app: &AppName) -> bool {
        self.apps
            .as_ref()
            .is_none_or(|apps| apps.iter().any(|a| a == app.as_str()))
    }

    /// Whether it sees every app (and so the all-apps limits).
    pub fn sees_every_app(&self) -> bool {
        self.apps.is_none()
    }

    /// The apps to read, of those asked for (`None`: every app); an empty
    /// list when none of them is visible.
    pub fn visible(&self, asked: Option<Vec<AppName>>) -> Option<Vec<String>> {
        match (asked, &self.apps) {
            (None, None) => None,
            (None, Some(mine)) => Some(mine.clone()),
            (Some(asked), _) => Some(
                asked
                    .into_iter()
                    .filter(|a| self.sees(a))
                    .map(|a| a.as_str().to_owned())
                    .collect(),
            ),
        }
    }

    /// The `ended_by` of what this token ends or sets.
    pub fn ended_by(&self) -> String {
        format!("token:{}", self.name)
    }
}

impl FromRequestParts<Arc<ApiState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<ApiState>,
    ) -> Result<Caller, ApiError> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            // The scheme's name is case-insensitive (RFC 9110, 11.1).
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|t| token::well_formed(t))
            .ok_or(ApiError::Unauthorized)?;
        let row = state
            .tokens
            .find_live(&state.pool, &token::hash(token))
            .await?
            .ok_or(ApiError::Unauthorized)?;
        Ok(Caller {
            name: row.name,
            apps: (!row.apps.iter().any(|a| a == EVERY_APP)).then_some(row.apps),
            scopes: row.scopes.iter().filter_map(|s| Scope::parse(s)).collect(),
        })
    }
}
