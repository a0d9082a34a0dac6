//! `GET`, `PUT` and `DELETE /v1/users/{user_id}/limits`: what `limits get`,
//! `limits set` and `limits clear` do, for one app the token sees (the
//! all-apps override: only a token of every app).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use serde_json::{Map, Value};
use session_guard_protocol::api::{LimitSources, LimitValues, LimitsOverride, LimitsView};

use super::auth::Caller;
use super::input::{self, JsonBody};
use super::problem::{ApiError, Refusals};
use super::state::ApiState;
use super::token::Scope;
use crate::apply;
use crate::configuration::MAX_INT4;
use crate::db;
use crate::domain::event::AppName;
use crate::domain::limits::{EvictionPolicy, UserOverride};

/// The `app` parameter, the only one these routes take; `None` = the
/// all-apps override, which only a token of every app may touch.
fn app_param(caller: &Caller, raw: Option<&str>) -> Result<Option<AppName>, ApiError> {
    let mut app = None;
    for (key, value) in url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        match key.as_ref() {
            "app" if app.is_none() => app = Some(input::app(&value)?),
            "app" => return Err(ApiError::InvalidInput("app: give it once".into())),
            _ => {
                return Err(ApiError::InvalidInput(
                    "unknown parameter (known: app)".into(),
                ));
            }
        }
    }
    match &app {
        Some(app) if !caller.sees(app) => Err(ApiError::NotFound),
        None if !caller.sees_every_app() => Err(ApiError::NotFound),
        _ => Ok(app),
    }
}

/// A user's effective limits in one app, and who set each.
#[utoipa::path(
    get,
    path = "/v1/users/{user_id}/limits",
    tag = "limits",
    params(
        ("user_id" = String, Path, description = "The user."),
        ("app" = String, Query, description = "The app to evaluate for."),
    ),
    responses(
        (status = 200, description = "The limits, as `session-guard limits get --json` shows them.", body = LimitsView),
        Refusals,
    ),
    security(("bearer" = []))
)]
pub async fn get(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Path(user_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<LimitsView>, ApiError> {
    caller.require(Scope::LimitsRead)?;
    let user = input::user(&user_id)?;
    let app = app_param(&caller, raw.as_deref())?
        .ok_or_else(|| ApiError::InvalidInput("app is required".into()))?;
    let claimed =
        db::claims::latest_attributes(&state.pool, user.as_str(), Some(app.as_str())).await?;
    let attributes = match claimed.into_iter().next() {
        Some((_, Some(Value::Object(map)))) => map,
        _ => Map::new(),
    };
    let effective =
        apply::effective_limits(&state.pool, &state.enforcement, &user, &app, &attributes).await?;
    let (l, by) = (effective.limits, effective.set_by);
    Ok(Json(LimitsView {
        user_id: user.as_str().to_owned(),
        app: app.as_str().to_owned(),
        attributes,
        limits: LimitValues {
            max_sessions: l.max_sessions,
            max_sessions_global: l.max_sessions_global,
            policy: l.policy.as_str().to_owned(),
            idle_timeout: l.idle_timeout,
            log_limit: l.log_limit,
        },
        set_by: LimitSources {
            max_sessions: by.max_sessions,
            max_sessions_global: by.max_sessions_global,
            policy: by.policy,
            idle_timeout: by.idle_timeout,
            log_limit: by.log_limit,
        },
        enforce: state.enforcement.enforce,
        hooks: state
            .enforcement
            .hooks
            .names()
            .into_iter()
            .map(str::to_owned)
            .collect(),
    }))
}

/// Stores an operator override for the user (as `limits set`); values left
/// out stay as they were. Applies from the user's next event.
#[utoipa::path(
    put,
    path = "/v1/users/{user_id}/limits",
    tag = "limits",
    params(
        ("user_id" = String, Path, description = "The user."),
        ("app" = Option<String>, Query, description = "Only for this app; without it, for every app (a token of every app only)."),
    ),
    request_body = LimitsOverride,
    responses(
        (status = 204, description = "Stored; recorded as set by `token:<name>`."),
        Refusals,
    ),
    security(("bearer" = []))
)]
pub async fn put(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Path(user_id): Path<String>,
    RawQuery(raw): RawQuery,
    JsonBody(body): JsonBody<LimitsOverride>,
) -> Result<StatusCode, ApiError> {
    caller.require(Scope::LimitsWrite)?;
    let user = input::user(&user_id)?;
    let app = app_param(&caller, raw.as_deref())?;
    let stored = stored_override(app.as_ref(), body)?;
    // The cross-app cap and the log limit act on the user's sessions and
    // log rows in every app, whichever app's override holds them: a token
    // that does not see every app may not set them, or it could end
    // sessions and prune rows of apps it cannot see.
    if !caller.sees_every_app()
        && (stored.max_sessions_global.is_some() || stored.log_limit.is_some())
    {
        return Err(ApiError::InvalidInput(
            "max_sessions_global and log_limit act on the user's sessions in every app: \
             only a token of every app ('*') may set them"
                .into(),
        ));
    }
    db::overrides::set_override(
        &state.pool,
        user.as_str(),
        app.as_ref().map(AppName::as_str),
        &stored,
        &caller.ended_by(),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The override a body asks for, checked as `limits set` checks its flags.
fn stored_override(app: Option<&AppName>, body: LimitsOverride) -> Result<UserOverride, ApiError> {
    let int4 = |key: &str, value: Option<u32>| match value {
        Some(n) if n > MAX_INT4 => Err(ApiError::InvalidInput(format!(
            "{key}: {n} is out of range (at most {MAX_INT4})"
        ))),
        _ => Ok(value),
    };
    let policy = body
        .policy
        .map(|p| {
            p.parse::<EvictionPolicy>()
                .map_err(|e| ApiError::InvalidInput(format!("policy: {e}")))
        })
        .transpose()?;
    let idle_timeout = match body.idle_timeout {
        Some(n) if n > i64::MAX as u64 => {
            return Err(ApiError::InvalidInput("idle_timeout: out of range".into()));
        }
        other => other,
    };
    let o = UserOverride {
        app: app.map(|a| a.as_str().to_owned()),
        max_sessions: int4("max_sessions", body.max_sessions)?,
        max_sessions_global: int4("max_sessions_global", body.max_sessions_global)?,
        policy,
        idle_timeout,
        log_limit: int4("log_limit", body.log_limit)?,
    };
    let nothing = UserOverride {
        app: o.app.clone(),
        ..UserOverride::default()
    };
    if o == nothing {
        return Err(ApiError::InvalidInput(
            "nothing to set: give max_sessions, max_sessions_global, policy, idle_timeout or \
             log_limit"
                .into(),
        ));
    }
    Ok(o)
}

/// Deletes the override stored for the user in the app (as `limits clear`).
#[utoipa::path(
    delete,
    path = "/v1/users/{user_id}/limits",
    tag = "limits",
    params(
        ("user_id" = String, Path, description = "The user."),
        ("app" = Option<String>, Query, description = "The app's override; without it, the all-apps one (a token of every app only)."),
    ),
    responses(
        (status = 204, description = "Deleted."),
        Refusals,
    ),
    security(("bearer" = []))
)]
pub async fn delete(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Path(user_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<StatusCode, ApiError> {
    caller.require(Scope::LimitsWrite)?;
    let user = input::user(&user_id)?;
    let app = app_param(&caller, raw.as_deref())?;
    let removed = db::overrides::clear_override(
        &state.pool,
        user.as_str(),
        app.as_ref().map(AppName::as_str),
    )
    .await?;
    if removed {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound)
    }
}
