//! `GET /v1/users/{user_id}/sessions`, `POST /v1/sessions/{handle}/revoke`
//! and `POST /v1/users/{user_id}/revoke`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use chrono::Utc;
use session_guard_protocol::api::{
    CURRENT_APP_HEADER, CURRENT_SESSION_HEADER, MAX_APPS, RevokeSession, RevokeUser, Revoked,
    Session, SessionList, SessionState as ApiState_,
};
use session_guard_protocol::revoke::check_note;

use super::auth::Caller;
use super::cursor;
use super::input::{self, JsonBody};
use super::problem::{ApiError, Refusals};
use super::state::ApiState;
use super::token::Scope;
use crate::apply::{self, AdminRevokeError, AdminTarget, Revoker};
use crate::db::listing::{self, PageQuery};
use crate::db::sessions::LoggedSession;
use crate::domain::device;
use crate::domain::event::{AppName, SessionId};
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

/// The query of a listing, checked.
#[derive(Debug, Default)]
struct ListQuery {
    apps: Option<Vec<AppName>>,
    state: Option<bool>,
    limit: u32,
    cursor: Option<String>,
}

/// The caller's own session, from the request headers. No `Debug`, on
/// purpose: it holds the caller's raw session id (the cookie itself), so
/// it cannot be logged by mistake.
#[derive(Default)]
struct Current {
    session: Option<String>,
    app: Option<AppName>,
}

impl Current {
    /// Whether `app`'s session `session_id` is the caller's own.
    fn is(&self, app: &str, session_id: &str) -> bool {
        self.session.as_deref() == Some(session_id)
            && self.app.as_ref().is_none_or(|a| a.as_str() == app)
    }
}

/// Reads `Session-Guard-Current-Session` (percent-encoded UTF-8) and
/// `Session-Guard-Current-App`. An error never holds the header's value.
fn current(headers: &HeaderMap) -> Result<Current, ApiError> {
    let text = |name: &str| -> Result<Option<String>, ApiError> {
        let mut values = headers.get_all(name).iter();
        let Some(value) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(invalid(&format!("{name} may be given once")));
        }
        let decoded = value
            .to_str()
            .ok()
            .and_then(|v| percent_encoding::percent_decode_str(v).decode_utf8().ok())
            .ok_or_else(|| invalid(&format!("{name} must be percent-encoded UTF-8")))?;
        Ok(Some(decoded.into_owned()))
    };
    let session = text(CURRENT_SESSION_HEADER)?;
    let app = text(CURRENT_APP_HEADER)?
        .map(|a| AppName::parse(&a).map_err(|e| invalid(&format!("{CURRENT_APP_HEADER}: {e}"))))
        .transpose()?;
    Ok(Current { session, app })
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
            "app" => {
                let apps = q.apps.get_or_insert_default();
                if apps.len() == MAX_APPS {
                    return Err(invalid(&format!("at most {MAX_APPS} app parameters")));
                }
                apps.push(input::app(&value)?)
            }
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
            // Moved to headers: a session id in a query string ends up in
            // access logs, proxies and traces. The value is never echoed.
            "current_session" => {
                return Err(invalid(&format!(
                    "current_session is not taken in the query: send the caller's session id \
                     in the {CURRENT_SESSION_HEADER} header"
                )));
            }
            "current_app" => {
                return Err(invalid(&format!(
                    "current_app is not taken in the query: send it in the {CURRENT_APP_HEADER} \
                     header"
                )));
            }
            other => {
                return Err(invalid(&format!(
                    "unknown parameter {:?} (known: app, state, limit, cursor)",
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
        ("app" = Option<Vec<String>>, Query, max_items = 64, description = "Only these apps (repeatable, at most 64); apps the token may not see are left out.", explode = true),
        ("state" = inline(Option<StateFilter>), Query, description = "Which sessions: `active` (the default), `ended` or `all`."),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "Sessions per page, 1 to 100 (default 20)."),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page of the same listing: the same user, and the same apps (the same token and `app` filter); another listing's is refused."),
        ("Session-Guard-Current-Session" = Option<String>, Header, nullable = false, description = "The caller's own session id, percent-encoded UTF-8 (a Django session key is sent as is): that session is marked `current`. A header, never a query parameter (`current_session` in the query is refused): query strings end up in access logs. Never logged, never returned."),
        ("Session-Guard-Current-App" = Option<String>, Header, nullable = false, description = "The app of `Session-Guard-Current-Session`, when session ids may repeat across apps."),
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
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Json<SessionList>, ApiError> {
    caller.require(Scope::SessionsRead)?;
    let user = input::user(&user_id)?;
    let q = list_query(raw.as_deref())?;
    let mine = current(&headers)?;
    let apps = caller.visible(q.apps);
    let this_listing = cursor::Listing {
        user: user.as_str(),
        apps: apps.as_deref(),
    };
    let after = q
        .cursor
        .as_deref()
        .map(|c| {
            cursor::decode(&state.handles, &this_listing, c)
                .ok_or_else(|| invalid("cursor is not one this API gave"))
        })
        .transpose()?;
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
    let mut rows = rows;
    let more = rows.len() > q.limit as usize;
    rows.truncate(q.limit as usize);
    let next_cursor = more.then(|| rows.last()).flatten().map(|last| {
        let after = cursor::After {
            login_at: last.login_at,
            app: AppName::from_trusted(last.app.clone()),
            session_id: SessionId::from_trusted(last.session_id.clone()),
        };
        cursor::encode(&state.handles, &this_listing, &after)
    });
    let sessions: Vec<Session> = rows
        .into_iter()
        .map(|s| {
            let current = mine.is(&s.app, &s.session_id);
            to_api(&state, s, current)
        })
        .collect();
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
    note_ok(body.note.as_deref())?;
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
    note_ok(body.note.as_deref())?;
    if body.apps.as_ref().is_some_and(|apps| apps.len() > MAX_APPS) {
        return Err(invalid(&format!("apps: at most {MAX_APPS}")));
    }
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

/// Refuses a `note` over `MAX_NOTE_CHARS` (the operator's `--reason` has
/// the same cap).
fn note_ok(note: Option<&str>) -> Result<(), ApiError> {
    note.map_or(Ok(()), check_note).map_err(|e| invalid(&e))
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
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn the_query_takes_repeated_apps_and_refuses_the_unknown() {
        let q = list_query(Some("app=shop&app=blog&state=all&limit=5")).unwrap();
        let apps: Vec<&str> = q
            .apps
            .as_ref()
            .unwrap()
            .iter()
            .map(AppName::as_str)
            .collect();
        assert_eq!(apps, ["shop", "blog"]);
        assert_eq!((q.state, q.limit), (None, 5));
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

    #[test]
    fn at_most_64_apps_are_taken() {
        let apps = |n: usize| (0..n).map(|i| format!("app=a{i}")).collect::<Vec<_>>();
        let q = list_query(Some(&apps(MAX_APPS).join("&"))).unwrap();
        assert_eq!(q.apps.unwrap().len(), MAX_APPS);
        let Err(ApiError::InvalidInput(detail)) = list_query(Some(&apps(MAX_APPS + 1).join("&")))
        else {
            panic!("65 apps taken");
        };
        assert!(detail.contains("at most 64"), "{detail}");
    }

    #[test]
    fn the_callers_session_in_the_query_is_refused_without_echoing_it() {
        for query in [
            "current_session=cookie-secret-1",
            "state=all&current_session=cookie-secret-1&current_app=shop",
            "current_app=shop",
        ] {
            let Err(ApiError::InvalidInput(detail)) = list_query(Some(query)) else {
                panic!("{query} taken");
            };
            assert!(detail.contains("Session-Guard-Current-"), "{detail}");
            assert!(!detail.contains("cookie-secret"), "{detail}");
        }
    }

    #[test]
    fn the_callers_session_comes_percent_decoded_from_its_header() {
        let mut headers = HeaderMap::new();
        let none = current(&headers).unwrap();
        assert!(none.session.is_none() && none.app.is_none());
        headers.insert(
            CURRENT_SESSION_HEADER,
            HeaderValue::from_static("abc%20d%C3%A9f%25"),
        );
        headers.insert(CURRENT_APP_HEADER, HeaderValue::from_static("shop"));
        let mine = current(&headers).unwrap();
        assert_eq!(mine.session.as_deref(), Some("abc d\u{e9}f%"));
        assert!(mine.is("shop", "abc d\u{e9}f%"));
        assert!(!mine.is("blog", "abc d\u{e9}f%"));
        assert!(!mine.is("shop", "abc"));

        // Not UTF-8 once decoded, twice, a bad app: refused, never echoed.
        let mut bad = HeaderMap::new();
        bad.insert(
            CURRENT_SESSION_HEADER,
            HeaderValue::from_static("cookie-secret%FF"),
        );
        let mut twice = HeaderMap::new();
        twice.append(
            CURRENT_SESSION_HEADER,
            HeaderValue::from_static("cookie-secret"),
        );
        twice.append(
            CURRENT_SESSION_HEADER,
            HeaderValue::from_static("cookie-secret"),
        );
        let mut bad_app = HeaderMap::new();
        bad_app.insert(CURRENT_APP_HEADER, HeaderValue::from_static("no%20spaces"));
        for headers in [bad, twice, bad_app] {
            let Err(ApiError::InvalidInput(detail)) = current(&headers) else {
                panic!("taken");
            };
            assert!(!detail.contains("cookie-secret"), "{detail}");
        }
    }

    #[test]
    fn a_note_is_capped_at_500_characters() {
        assert!(note_ok(None).is_ok());
        assert!(note_ok(Some(&"\u{e9}".repeat(500))).is_ok());
        assert!(note_ok(Some(&"n".repeat(501))).is_err());
    }
}
