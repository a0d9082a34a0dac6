//! The sessions API's client (feature `api`): list a user's sessions in
//! every app the token may see, end one or all but one, read and set a
//! user's limits, over the worker's HTTP API (`/v1/...`).
//!
//! The bodies are the protocol crate's [`session_guard_protocol::api`]
//! types, the ones the worker writes; errors are [`ApiError`], whose
//! `Problem` variant carries the API's problem document.
//!
//! ```no_run
//! # async fn demo() -> Result<(), session_guard_client::api::ApiError> {
//! use session_guard_client::api::{ApiConfig, ListOptions, SessionsApi};
//!
//! let api = SessionsApi::new(ApiConfig::new("http://127.0.0.1:9465", "sgt_...")?)?;
//! let page = api.list_sessions("42", &ListOptions::default()).await?;
//! for session in &page.sessions {
//!     println!("{} {} {:?}", session.app, session.handle, session.device.browser);
//! }
//! # Ok(()) }
//! ```

mod error;

use std::fmt;
use std::time::Duration;

use futures::{Stream, TryStreamExt, stream};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::header::HeaderValue;
use reqwest::{Method, RequestBuilder, Response, Url};

pub use self::error::ApiError;
use session_guard_protocol::api::{
    CURRENT_APP_HEADER, CURRENT_SESSION_HEADER, RevokeSession, RevokeUser,
};
pub use session_guard_protocol::api::{
    LimitsOverride, LimitsView, Problem, ProblemKind, Revoked, Session, SessionList,
};

/// How long a call may take, answer included, unless
/// [`ApiConfig::timeout`] says otherwise: the API answers in milliseconds,
/// and a page that calls it should not hang on a stuck worker.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting may take, unless [`ApiConfig::connect_timeout`] says
/// otherwise: a worker that is down fails fast.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// An API token (`sgt_...`). Its `Debug` shows the prefix only: a token is
/// a credential, and configs end up in logs.
#[derive(Clone)]
pub struct ApiToken(String);

impl ApiToken {
    /// Wraps a token as `session-guard tokens create` printed it.
    pub fn new(token: impl Into<String>) -> ApiToken {
        ApiToken(token.into())
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix = if self.0.starts_with("sgt_") {
            "sgt_"
        } else {
            ""
        };
        write!(f, "ApiToken({prefix}***)")
    }
}

/// Where the API is, the token, and the timeouts.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// The API's base URL (`http://127.0.0.1:9465`, or one with a path
    /// prefix behind a proxy); `/v1/...` is appended.
    base_url: Url,
    /// Sent as `Authorization: Bearer`, marked sensitive.
    token: ApiToken,
    /// The whole call's limit.
    timeout: Duration,
    /// The connect's limit.
    connect_timeout: Duration,
}

impl ApiConfig {
    /// The API at `base_url`, called with `token`, with the default timeouts.
    pub fn new(base_url: &str, token: impl Into<String>) -> Result<ApiConfig, ApiError> {
        let base_url =
            Url::parse(base_url).map_err(|e| ApiError::InvalidUrl(format!("{base_url:?}: {e}")))?;
        if !matches!(base_url.scheme(), "http" | "https") || base_url.cannot_be_a_base() {
            return Err(ApiError::InvalidUrl(format!(
                "{base_url}: not an http(s) base URL"
            )));
        }
        Ok(ApiConfig {
            base_url,
            token: ApiToken::new(token),
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        })
    }

    /// How long a whole call may take (default [`DEFAULT_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> ApiConfig {
        self.timeout = timeout;
        self
    }

    /// How long connecting may take (default [`DEFAULT_CONNECT_TIMEOUT`]).
    pub fn connect_timeout(mut self, timeout: Duration) -> ApiConfig {
        self.connect_timeout = timeout;
        self
    }
}

/// Which sessions a listing shows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StateFilter {
    /// Active ones (the API's default).
    #[default]
    Active,
    /// Ended ones.
    Ended,
    /// Both.
    All,
}

impl StateFilter {
    fn as_str(self) -> &'static str {
        match self {
            StateFilter::Active => "active",
            StateFilter::Ended => "ended",
            StateFilter::All => "all",
        }
    }
}

/// The parameters of [`SessionsApi::list_sessions`]; the defaults are the
/// API's (active sessions of every app the token sees, 20 a page).
#[derive(Clone, Default)]
pub struct ListOptions {
    /// Only these apps (empty: every app the token may see).
    pub apps: Vec<String>,
    /// Active, ended or all.
    pub state: StateFilter,
    /// Sessions per page, 1 to 100 (`None`: the API's 20).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// The caller's own session id: that session comes back `current`.
    /// A secret (it is the user's cookie): sent in the
    /// `Session-Guard-Current-Session` header, never in the URL (which
    /// access logs and proxies keep), and `Debug` never shows it.
    pub current_session: Option<String>,
    /// The app of `current_session`, when ids may repeat across apps.
    pub current_app: Option<String>,
}

impl fmt::Debug for ListOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListOptions")
            .field("apps", &self.apps)
            .field("state", &self.state)
            .field("limit", &self.limit)
            .field("cursor", &self.cursor)
            .field(
                "current_session",
                &self.current_session.as_ref().map(|_| "***"),
            )
            .field("current_app", &self.current_app)
            .finish()
    }
}

/// The sessions API's client. Cheap to clone (one connection pool);
/// keep one per process.
#[derive(Debug, Clone)]
pub struct SessionsApi {
    http: reqwest::Client,
    base_url: Url,
    token: ApiToken,
}

impl SessionsApi {
    /// A client of the API `config` names. Connects lazily, on the first call.
    pub fn new(config: ApiConfig) -> Result<SessionsApi, ApiError> {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.connect_timeout)
            .build()
            .map_err(ApiError::transport)?;
        Ok(SessionsApi {
            http,
            base_url: config.base_url,
            token: config.token,
        })
    }

    /// One page of `user`'s sessions, newest login first
    /// (`GET /v1/users/{user_id}/sessions`). Pass its `next_cursor` as
    /// `options.cursor` for the next page; or use [`SessionsApi::sessions`].
    pub async fn list_sessions(
        &self,
        user: &str,
        options: &ListOptions,
    ) -> Result<SessionList, ApiError> {
        let mut url = self.url(&["users", user, "sessions"]);
        {
            let mut q = url.query_pairs_mut();
            for app in &options.apps {
                q.append_pair("app", app);
            }
            q.append_pair("state", options.state.as_str());
            if let Some(limit) = options.limit {
                q.append_pair("limit", &limit.to_string());
            }
            if let Some(cursor) = &options.cursor {
                q.append_pair("cursor", cursor);
            }
        }
        let mut request = self.http.get(url);
        if let Some(session) = &options.current_session {
            request = request.header(CURRENT_SESSION_HEADER, secret_header(session));
        }
        if let Some(app) = &options.current_app {
            request = request.header(CURRENT_APP_HEADER, header_text(app));
        }
        let response = self.call(request).await?;
        response.json().await.map_err(ApiError::transport)
    }

    /// Every session of `user` that `options` selects, page after page
    /// from `options.cursor` on (each page one call, made as the stream is
    /// read).
    pub fn sessions<'a>(
        &'a self,
        user: &'a str,
        options: ListOptions,
    ) -> impl Stream<Item = Result<Session, ApiError>> + 'a {
        stream::try_unfold(Some(options), move |next| async move {
            let Some(mut options) = next else {
                return Ok(None);
            };
            let page = self.list_sessions(user, &options).await?;
            let next = page.next_cursor.map(|cursor| {
                options.cursor = Some(cursor);
                options
            });
            Ok(Some((
                stream::iter(page.sessions.into_iter().map(Ok)),
                next,
            )))
        })
        .try_flatten()
    }

    /// [`SessionsApi::sessions`], collected.
    pub async fn all_sessions(
        &self,
        user: &str,
        options: ListOptions,
    ) -> Result<Vec<Session>, ApiError> {
        self.sessions(user, options).try_collect().await
    }

    /// Ends the session `handle` names (`POST /v1/sessions/{handle}/revoke`);
    /// its app receives a revoke with reason `user`. A session that had
    /// ended already is left as it was: `revoked` is empty and `session`
    /// says how it ended.
    pub async fn revoke_session(
        &self,
        handle: &str,
        note: Option<&str>,
    ) -> Result<Revoked, ApiError> {
        let body = RevokeSession {
            note: note.map(str::to_owned),
        };
        let url = self.url(&["sessions", handle, "revoke"]);
        let response = self.call(self.http.post(url).json(&body)).await?;
        response.json().await.map_err(ApiError::transport)
    }

    /// Ends `user`'s active sessions in the apps the token sees (or in
    /// `apps` among them), all but `except` ("sign out everywhere else")
    /// (`POST /v1/users/{user_id}/revoke`).
    pub async fn revoke_user_sessions(
        &self,
        user: &str,
        except: Option<&str>,
        apps: Option<&[&str]>,
        note: Option<&str>,
    ) -> Result<Revoked, ApiError> {
        let body = RevokeUser {
            except: except.map(str::to_owned),
            apps: apps.map(|apps| apps.iter().map(|&a| a.to_owned()).collect()),
            note: note.map(str::to_owned),
        };
        let url = self.url(&["users", user, "revoke"]);
        let response = self.call(self.http.post(url).json(&body)).await?;
        response.json().await.map_err(ApiError::transport)
    }

    /// `user`'s limits in `app` and who set each
    /// (`GET /v1/users/{user_id}/limits`).
    pub async fn limits(&self, user: &str, app: &str) -> Result<LimitsView, ApiError> {
        let url = self.limits_url(user, Some(app));
        let response = self.call(self.http.get(url)).await?;
        response.json().await.map_err(ApiError::transport)
    }

    /// Stores an operator override for `user` in `app` (`None`: every app,
    /// for a token of every app); fields left `None` stay as they were
    /// (`PUT /v1/users/{user_id}/limits`). Applies from the user's next event.
    pub async fn set_limits(
        &self,
        user: &str,
        app: Option<&str>,
        limits: &LimitsOverride,
    ) -> Result<(), ApiError> {
        let url = self.limits_url(user, app);
        self.call(self.http.put(url).json(limits)).await?;
        Ok(())
    }

    /// Deletes the override of `user` in `app` (`None`: the every-app one)
    /// (`DELETE /v1/users/{user_id}/limits`); a `not-found` problem when
    /// there was none.
    pub async fn clear_limits(&self, user: &str, app: Option<&str>) -> Result<(), ApiError> {
        let url = self.limits_url(user, app);
        self.call(self.http.request(Method::DELETE, url)).await?;
        Ok(())
    }

    /// The base URL with `/v1` and `segments` appended, each one
    /// percent-encoded (a user id may hold a `/`).
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base_url.clone();
        url.path_segments_mut()
            .expect("ApiConfig::new checked that it is a base")
            .pop_if_empty()
            .push("v1")
            .extend(segments);
        url
    }

    fn limits_url(&self, user: &str, app: Option<&str>) -> Url {
        let mut url = self.url(&["users", user, "limits"]);
        if let Some(app) = app {
            url.query_pairs_mut().append_pair("app", app);
        }
        url
    }

    /// Sends `request` with the token; an error status as [`ApiError`].
    async fn call(&self, request: RequestBuilder) -> Result<Response, ApiError> {
        let response = request
            .bearer_auth(&self.token.0)
            .send()
            .await
            .map_err(ApiError::transport)?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.bytes().await.map_err(ApiError::transport)?;
        Err(ApiError::from_answer(status.as_u16(), &body))
    }
}

/// `text` percent-encoded (UTF-8; every byte but ASCII letters and
/// digits), as the API reads its `Session-Guard-Current-*` headers: a
/// session id may hold any character but controls, a header value not.
fn header_text(text: &str) -> String {
    utf8_percent_encode(text, NON_ALPHANUMERIC).to_string()
}

/// [`header_text`] as a header value marked sensitive, so that no `Debug`
/// of the request (reqwest's, a middleware's) shows it.
fn secret_header(text: &str) -> HeaderValue {
    let mut value = HeaderValue::from_str(&header_text(text))
        .expect("percent-encoded text is a valid header value");
    value.set_sensitive(true);
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_token_or_the_callers_session() {
        let config = ApiConfig::new("http://127.0.0.1:9465", "sgt_topsecretvalue").unwrap();
        let api = SessionsApi::new(config.clone()).unwrap();
        let options = ListOptions {
            current_session: Some("cookie-value".into()),
            ..ListOptions::default()
        };
        for text in [
            format!("{config:?}"),
            format!("{api:?}"),
            format!("{options:?}"),
        ] {
            assert!(!text.contains("topsecretvalue"), "{text}");
            assert!(!text.contains("cookie-value"), "{text}");
        }
    }

    #[test]
    fn the_callers_session_goes_in_a_sensitive_percent_encoded_header() {
        assert_eq!(header_text("0a9Zk2"), "0a9Zk2", "a Django key as is");
        assert_eq!(header_text("a b/\u{e9}%"), "a%20b%2F%C3%A9%25");
        let value = secret_header("cookie-value");
        assert!(value.is_sensitive());
        assert!(!format!("{value:?}").contains("cookie-value"));
    }

    #[test]
    fn paths_are_appended_to_the_base_and_segments_encoded() {
        for base in ["http://h:1", "http://h:1/", "http://h:1/sg/"] {
            let api = SessionsApi::new(ApiConfig::new(base, "t").unwrap()).unwrap();
            let url = api.url(&["users", "a/b c", "sessions"]);
            let prefix = if base.ends_with("/sg/") { "/sg" } else { "" };
            assert_eq!(url.path(), format!("{prefix}/v1/users/a%2Fb%20c/sessions"));
        }
        assert!(matches!(
            ApiConfig::new("mailto:x@y", "t"),
            Err(ApiError::InvalidUrl(_))
        ));
    }
}
