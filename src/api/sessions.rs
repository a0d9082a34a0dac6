//! `GET /v1/users/{user_id}/sessions`, `POST /v1/sessions/{handle}/revoke`
//! and `POST /v1/users/{user_id}/revoke`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use chrono::Utc;
use session_guard_protocol::api::{
    RevokeSession, RevokeUser, Revoked, Session, SessionList, SessionState as ApiState_,
};

use super::auth::Caller;
use super::input::{self, JsonBody};
use super::problem::{ApiError, Refusals};
use super::state::ApiState;
use super::token::Scope;
use super::{cursor, device};
use crate::apply::{self, AdminRevokeError, AdminTarget, Revoker};
use crate::db::listing::{self, PageQuery};
use crate::db::sessions::LoggedSession;
use crate::domain::event::AppName;
use crate::domain::revoke::RevokeMessage;
use crate::domain::session::{EndReason, SessionState, shown_end};

/// Sessions per page unless `limit` says otherwise.
const DEFAULT_LIMIT: u32 = 20;
/// Most sessions per page.
const MAX_LIMIT: u32 = 100;

// The `state` parameter as the OpenAPI document shows it; `list_query`
// reads it by hand, with the other parameters.
/// Which sessions to list.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)] // Only described, never built: the query is read by hand.
enum StateFilter {
    Active,
    Ended,
    All,
}

/// The query of a listing, checked. No `Debug`, on purpose: it holds
/// `current_session`, the caller's raw session id (the cookie itself), so
/// it cannot be logged by mistake.
#[derive(Default)]
struct ListQuery {
    apps: Option<Vec<AppName>>,
    state: Option<bool>,
    limit: u32,
    cursor: Option<String>,
    current_session: Option<String>,
    current_app: Option<AppName>,
}

/// Reads the query string by hand: `app` may repeat, and a parameter this
/// route does not take is refused, as unknown body fields are.
fn list_query(raw: Option<&str>) -> Result<ListQuery, ApiError> {
    let mut q = ListQuery {
        state: Some(true),
        limit: DEFAULT_LIMIT,
        ..ListQuery::default()
    };
    for (key, value) in url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        match key.as_ref() {
            "app" => q.apps.get_or_insert_default().push(input::app(&value)?),
            "state" => {
                q.state = match value.as_ref() {
                    "active" => Some(true),
                    "ended" => Some(false),
                    "all" => None,
                    _ => return Err(invalid("state must be active, ended or all")),
                }
            }
            "limit" => {
                q.limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| invalid(&format!("limit must be 1 to {MAX_LIMIT}")))?
            }
            "cursor" => q.cursor = Some(value.into_owned()),
            "current_session" => q.current_session = Some(value.into_owned()),
            "current_app" => q.current_app = Some(input::app(&value)?),
            other => {
                return Err(invalid(&format!(
                    "unknown parameter {:?} (known: app, state, limit, cursor, current_session, \
                     current_app)",
                    other.chars().take(40).collect::<String>()
                )));
            }
        }
    }
    Ok(q)
}

fn invalid(detail: &str) -> ApiError {
    ApiError::InvalidInput(detail.to_owned())
}

/// A session of the log as the API shows it: with its handle, never its id.
fn to_api(state: &ApiState, s: LoggedSession, current: bool) -> Session {
    let (domain_state, ended_at, end_reason) =
        shown_end(s.end_reason, s.ended_at, s.expires_at, Utc::now());
    Session {
        handle: state.handles.seal(&s.app, &s.session_id),
        app: s.app,
        state: if domain_state == SessionState::Active {
            ApiState_::Active
        } else {
            ApiState_::Ended
        },
        login_at: s.login_at,
        last_seen_at: s.last_seen_at,
        ended_at,
        end_reason,
        ended_by: s.ended_by,
        ip: s.ip.map(|ip| ip.to_string()),
        device: device::device(s.user_agent.as_deref()),
        user_agent: s.user_agent,
        current,
    }
}

/// A user's sessions in the apps the token sees, newest login first.
#[utoipa::path(
    get,
    path = "/v1/users/{user_id}/sessions",
    tag = "sessions",
    params(
        ("user_id" = String, Path, description = "The user, as apps send it in events."),
        ("app" = Option<Vec<String>>, Query, description = "Only these apps (repeatable); apps the token may not see are left out.", explode = true),
        ("state" = inline(Option<StateFilter>), Query, description = "Which sessions: `active` (the default), `ended` or `all`."),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "Sessions per page, 1 to 100 (default 20)."),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page."),
        ("current_session" = Option<String>, Query, description = "The caller's own session id: that session is marked `current`. Never logged, never returned."),
        ("current_app" = Option<String>, Query, description = "The app of `current_session`, when session ids may repeat across apps."),
    ),
    responses(
        (status = 200, description = "A page of sessions.", body = SessionList),
        Refusals,
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Path(user_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<SessionList>, ApiError> {
    caller.require(Scope::SessionsRead)?;
    let user = input::user(&user_id)?;
    let q = list_query(raw.as_deref())?;
    let after = q
        .cursor
        .as_deref()
        .map(|c| {
            cursor::decode(&state.handles, c)
                .ok_or_else(|| invalid("cursor is not one this API gave"))
        })
        .transpose()?;
    let apps = caller.visible(q.apps);
    if apps.as_ref().is_some_and(Vec::is_empty) {
        return Ok(Json(SessionList {
            sessions: Vec::new(),
            next_cursor: None,
        }));
    }
    let rows = listing::page(
        &state.pool,
        &PageQuery {
            user: user.as_str(),
            apps: apps.as_deref(),
            active: q.state,
            after: after
                .as_ref()
                .map(|a| (a.login_at, a.app.as_str(), a.session_id.as_str())),
            limit: i64::from(q.limit) + 1,
            now: Utc::now(),
        },
    )
    .await?;
    let more = rows.len() > q.limit as usize;
    let sessions: Vec<Session> = rows
        .into_iter()
        .take(q.limit as usize)
        .map(|s| {
            let current = q.current_session.as_deref() == Some(s.session_id.as_str())
                && q.current_app.as_ref().is_none_or(|a| a.as_str() == s.app);
            to_api(&state, s, current)
        })
        .collect();
    let next_cursor = more
        .then(|| sessions.last())
        .flatten()
        .map(|last| cursor::encode(last.login_at, &last.handle));
    Ok(Json(SessionList {
        sessions,
        next_cursor,
    }))
}

/// Ends one session (reason `user`); the app receives the revoke on its
/// listener. A session that had ended already is left as it was: the
/// answer says how it ended, and nothing is sent.
#[utoipa::path(
    post,
    path = "/v1/sessions/{handle}/revoke",
    tag = "sessions",
    params(("handle" = String, Path, description = "The session's handle, from a listing.")),
    request_body(content = Option<RevokeSession>, description = "Optional; may be empty."),
    responses(
        (status = 200, description = "What the call did, and the session now.", body = Revoked),
        Refusals,
    ),
    security(("bearer" = []))
)]
pub async fn revoke_one(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Path(handle): Path<String>,
    JsonBody(body): JsonBody<RevokeSession>,
) -> Result<Json<Revoked>, ApiError> {
    caller.require(Scope::SessionsRevoke)?;
    let (app, session_id) = state.handles.open(&handle).ok_or(ApiError::NotFound)?;
    if !caller.sees(&app) {
        return Err(ApiError::NotFound);
    }
    let target = AdminTarget::Session {
        app: app.clone(),
        session_id: session_id.clone(),
    };
    let messages = revoke(&state, &caller, &target, body.note).await?;
    let now = listing::one(&state.pool, app.as_str(), session_id.as_str())
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(Revoked {
        revoked: handles_of(&state, &messages),
        session: Some(to_api(&state, now, false)),
    }))
}

/// Ends a user's active sessions in the apps the token sees (or those of
/// `apps` among them), but `except` ("sign out everywhere else").
#[utoipa::path(
    post,
    path = "/v1/users/{user_id}/revoke",
    tag = "sessions",
    params(("user_id" = String, Path, description = "The user.")),
    request_body(content = Option<RevokeUser>, description = "Optional; may be empty: every session the token sees."),
    responses(
        (status = 200, description = "The handles of the sessions ended.", body = Revoked),
        Refusals,
    ),
    security(("bearer" = []))
)]
pub async fn revoke_user(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Path(user_id): Path<String>,
    JsonBody(body): JsonBody<RevokeUser>,
) -> Result<Json<Revoked>, ApiError> {
    caller.require(Scope::SessionsRevoke)?;
    let user_id = input::user(&user_id)?;
    let asked = body
        .apps
        .map(|apps| {
            apps.iter()
                .map(|a| input::app(a))
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;
    let except = body
        .except
        .map(|handle| {
            state
                .handles
                .open(&handle)
                .filter(|(app, _)| caller.sees(app))
                .ok_or(ApiError::NotFound)
        })
        .transpose()?;
    let apps = caller.visible(asked);
    if apps.as_ref().is_some_and(Vec::is_empty) {
        return Ok(Json(Revoked {
            revoked: Vec::new(),
            session: None,
        }));
    }
    let target = AdminTarget::UserExcept {
        user_id,
        apps: apps.map(|apps| apps.into_iter().map(AppName::from_trusted).collect()),
        except,
    };
    let messages = revoke(&state, &caller, &target, body.note).await?;
    Ok(Json(Revoked {
        revoked: handles_of(&state, &messages),
        session: None,
    }))
}

/// The handles of the sessions `messages` revoke (never their ids).
fn handles_of(state: &ApiState, messages: &[RevokeMessage]) -> Vec<String> {
    messages
        .iter()
        .map(|m| state.handles.seal(&m.app, &m.session_id))
        .collect()
}

/// Through the worker's one revoke path, as `user`, recorded as the token.
async fn revoke(
    state: &ApiState,
    caller: &Caller,
    target: &AdminTarget,
    note: Option<String>,
) -> Result<Vec<RevokeMessage>, ApiError> {
    let revoker = Revoker {
        reason: EndReason::User,
        ended_by: caller.ended_by(),
    };
    match apply::revoke(&state.pool, &state.enforcement, target, &revoker, note).await {
        Ok(messages) => {
            state.relay_wake();
            Ok(messages)
        }
        Err(AdminRevokeError::UnknownSession { .. }) => Err(ApiError::NotFound),
        Err(AdminRevokeError::Database(e)) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_takes_repeated_apps_and_refuses_the_unknown() {
        let q = list_query(Some(
            "app=shop&app=blog&state=all&limit=5&current_session=x%20y",
        ))
        .unwrap();
        let apps: Vec<&str> = q
            .apps
            .as_ref()
            .unwrap()
            .iter()
            .map(AppName::as_str)
            .collect();
        assert_eq!(apps, ["shop", "blog"]);
        assert_eq!((q.state, q.limit), (None, 5));
        assert_eq!(q.current_session.as_deref(), Some("x y"));
        let d = list_query(None).unwrap();
        assert_eq!((d.state, d.limit, d.apps.is_none()), (Some(true), 20, true));
        for bad in [
            "limit=0",
            "limit=101",
            "state=gone",
            "app=a%20b",
            "sort=asc",
        ] {
            assert!(list_query(Some(bad)).is_err(), "{bad}");
        }
    }
}
