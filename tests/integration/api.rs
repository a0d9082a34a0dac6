//! The sessions API against a real worker, PostgreSQL and RabbitMQ: listing
//! with pages, filters and `current`; revokes through the outbox (reason
//! `user`), never twice; limits as the CLI sees them; every bad input
//! answered with its problem+json and changing nothing; tokens made, listed
//! and revoked with the CLI; and no answer ever holding a session id.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use session_guard::domain::handle::HandleKey;

use crate::helpers::*;

/// One test's way to the API: its address, and every body it got back (to
/// check that none holds a raw session id).
pub(crate) struct Api {
    pub(crate) base: String,
    client: reqwest::Client,
    bodies: Vec<String>,
}

/// An answer: status, content type, `WWW-Authenticate`, body as JSON (null
/// when empty).
struct Answer {
    status: u16,
    content_type: String,
    www_authenticate: Option<String>,
    /// The `Allow` header (a 405's).
    allow: Option<String>,
    json: Value,
}

impl Answer {
    /// Checks that this is the problem+json of `slug` with `status`.
    fn problem(&self, status: u16, slug: &str) {
        assert_eq!(self.status, status, "{}", self.json);
        assert_eq!(
            self.content_type, "application/problem+json",
            "{}",
            self.json
        );
        assert_eq!(
            self.json["type"],
            format!("urn:session-guard:problem:{slug}"),
            "{}",
            self.json
        );
        assert_eq!(self.json["status"], status);
    }
}

impl Api {
    fn new(listen: &str) -> Api {
        Api {
            base: format!("http://{listen}"),
            client: reqwest::Client::new(),
            bodies: Vec::new(),
        }
    }

    async fn call(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<String>,
    ) -> Answer {
        self.call_with(method, path, token, body, &[]).await
    }

    /// [`Api::call`] with these request headers too.
    async fn call_with(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<String>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        let response = request.send().await.expect("the API answers");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        let content_type = header("content-type").unwrap_or_default();
        let www_authenticate = header("www-authenticate");
        let allow = header("allow");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        self.bodies.push(text.clone());
        Answer {
            status,
            content_type,
            www_authenticate,
            allow,
            json: if text.is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
            },
        }
    }

    async fn get(&mut self, path: &str, token: &str) -> Answer {
        self.call("GET", path, Some(token), None).await
    }

    /// A GET with the caller's own session (and app) in their headers.
    async fn get_as(&mut self, path: &str, token: &str, session: &str, app: &str) -> Answer {
        let headers = [
            ("Session-Guard-Current-Session", session),
            ("Session-Guard-Current-App", app),
        ];
        self.call_with("GET", path, Some(token), None, &headers)
            .await
    }

    async fn post(&mut self, path: &str, token: &str, body: Value) -> Answer {
        self.call("POST", path, Some(token), Some(body.to_string()))
            .await
    }

    /// `GET path` until it is refused (401), for at most [`TOKEN_CHANGE_HEARD`]:
    /// a token's change reaches every server's cache by a notification, in
    /// milliseconds, not within the request that made it.
    async fn get_until_refused(&mut self, path: &str, token: &str) -> Answer {
        let since = std::time::Instant::now();
        loop {
            let answer = self.get(path, token).await;
            if answer.status == 401 || since.elapsed() > TOKEN_CHANGE_HEARD {
                return answer;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Fails if any answer so far holds one of `secrets`.
    fn assert_never_shown(&self, secrets: &[&str]) {
        for body in &self.bodies {
            for secret in secrets {
                assert!(!body.contains(secret), "{secret} in an answer: {body}");
            }
        }
    }
}

/// How soon every API server must have heard of a change to a token: far
/// below the cache's [`ENTRY_TTL`](session_guard::api::token_cache::ENTRY_TTL),
/// so a test passes only if the notification emptied the cache.
const TOKEN_CHANGE_HEARD: Duration = Duration::from_secs(2);

/// A test with an in-process worker that also serves the API, and no limit
/// on sessions (so logins end nothing).
pub(crate) async fn spawn_api() -> (TestApp, Api) {
    let listen = format!("127.0.0.1:{}", free_port());
    let app = spawn_app_with(|s| {
        s.api.listen = listen.clone();
        s.api.max_body_bytes = 1024;
        s.limits.max_sessions = 0;
    })
    .await;
    let mut api = Api::new(&listen);
    app.wait_for("the API to answer", || {
        let url = format!("{}/v1/openapi.json", api.base);
        async move { reqwest::get(url).await.is_ok() }
    })
    .await;
    api.bodies.clear();
    (app, api)
}

/// `session-guard tokens create NAME --apps APPS --scopes SCOPES`: the token.
pub(crate) async fn create_token(app: &TestApp, name: &str, apps: &str, scopes: &str) -> String {
    let out = app
        .command(&["tokens", "create", name, "--apps", apps, "--scopes", scopes])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A user agent of Chrome on Windows, and one of Safari on an iPhone.
pub(crate) const DESKTOP: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like \
                       Gecko) Chrome/120.0.0.0 Safari/537.36";
pub(crate) const PHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 \
                     (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1";

/// A login with a user agent of its own.
pub(crate) fn login_from(app: &str, session: &str, user: &str, secs: i64, ua: &str) -> Value {
    let mut event = login(app, session, user, t(secs));
    event["user_agent"] = json!(ua);
    event
}

fn handles(list: &Value) -> Vec<String> {
    list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["handle"].as_str().unwrap().to_owned())
        .collect()
}

fn apps_of(list: &Value) -> Vec<String> {
    list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["app"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn lists_pages_marks_current_and_revokes_through_the_outbox_once() {
    let (mut app, mut api) = spawn_api().await;
    let all = create_token(&app, "console", "*", "sessions:read,sessions:revoke").await;
    let shop = create_token(&app, "shop-app", "shop", "sessions:read,sessions:revoke").await;
    let secret = |n: &str| format!("cookie-secret-{n}");
    let (a, b, c, d) = (secret("a"), secret("b"), secret("c"), secret("d"));
    app.publish(&login_from("shop", &a, "u1", 1, DESKTOP)).await;
    app.publish(&login_from("shop", &b, "u1", 2, PHONE)).await;
    app.publish(&login_from("shop", &c, "u1", 3, DESKTOP)).await;
    app.publish(&login_from("blog", &d, "u1", 4, PHONE)).await;
    app.publish(&login_from("shop", "other-user", "u2", 5, DESKTOP))
        .await;
    app.settle().await;

    // Newest first, two to a page, across apps for the every-app token.
    let page1 = api.get("/v1/users/u1/sessions?limit=2", &all).await;
    assert_eq!(page1.status, 200, "{}", page1.json);
    assert_eq!(apps_of(&page1.json), ["blog", "shop"]);
    let first = &page1.json["sessions"][0];
    assert_eq!(first["state"], "active");
    assert_eq!(first["device"]["kind"], "phone");
    assert_eq!(first["user_agent"], PHONE);
    assert_eq!(first["ip"], "192.0.2.10");
    assert_eq!(first["current"], false);
    let cursor = page1.json["next_cursor"].as_str().unwrap().to_owned();
    let page2 = api
        .get(
            &format!("/v1/users/u1/sessions?limit=2&cursor={cursor}"),
            &all,
        )
        .await;
    assert_eq!(apps_of(&page2.json), ["shop", "shop"]);
    assert_eq!(page2.json["next_cursor"], Value::Null);
    assert_eq!(page2.json["sessions"][1]["device"]["browser"], "Chrome");
    // A cursor is bound to its listing: the user, and the apps read (the
    // token's, the `app` filter). Another user's listing, another token's
    // or another filter refuses it.
    for (path, token) in [
        (
            format!("/v1/users/u2/sessions?limit=2&cursor={cursor}"),
            &all,
        ),
        (
            format!("/v1/users/u1/sessions?limit=2&cursor={cursor}"),
            &shop,
        ),
        (
            format!("/v1/users/u1/sessions?limit=2&app=shop&cursor={cursor}"),
            &all,
        ),
    ] {
        let refused = api.get(&path, token).await;
        refused.problem(400, "invalid-input");
        assert_eq!(refused.json["detail"], "cursor is not one this API gave");
    }
    let everything: Vec<String> = handles(&page1.json)
        .into_iter()
        .chain(handles(&page2.json))
        .collect();
    let [h_d, h_c, h_b, h_a] = <[String; 4]>::try_from(everything).unwrap();

    // The shop's token sees the shop's sessions only; blog's are not there.
    let shop_list = api.get("/v1/users/u1/sessions", &shop).await;
    assert_eq!(
        handles(&shop_list.json),
        [h_c.clone(), h_b.clone(), h_a.clone()]
    );
    let blog_only = api.get("/v1/users/u1/sessions?app=blog", &shop).await;
    assert_eq!(blog_only.json["sessions"], json!([]));
    let filtered = api.get("/v1/users/u1/sessions?app=blog", &all).await;
    assert_eq!(handles(&filtered.json), std::slice::from_ref(&h_d));

    // The caller's own session is marked: named in a header, never in
    // the query (a query string ends up in access logs).
    let current = |list: &Value| -> Vec<bool> {
        list["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["current"].as_bool().unwrap())
            .collect()
    };
    let mine = api.get_as("/v1/users/u1/sessions", &shop, &b, "shop").await;
    assert_eq!(mine.status, 200, "{}", mine.json);
    assert_eq!(current(&mine.json), [false, true, false]);
    let elsewhere = api.get_as("/v1/users/u1/sessions", &shop, &b, "blog").await;
    assert_eq!(current(&elsewhere.json), [false, false, false]);
    for query in [
        format!("current_session={b}"),
        format!("current_session={b}&current_app=shop"),
    ] {
        let refused = api
            .get(&format!("/v1/users/u1/sessions?{query}"), &shop)
            .await;
        refused.problem(400, "invalid-input");
        let detail = refused.json["detail"].as_str().unwrap();
        assert!(
            detail.contains("Session-Guard-Current-Session header"),
            "{detail}"
        );
    }

    // Revoking one: the app's queue gets a revoke with reason `user`.
    let done = api
        .post(
            &format!("/v1/sessions/{h_b}/revoke"),
            &shop,
            json!({"note": "lost phone"}),
        )
        .await;
    assert_eq!(done.status, 200, "{}", done.json);
    assert_eq!(done.json["revoked"], json!([h_b]));
    assert_eq!(done.json["session"]["state"], "ended");
    assert_eq!(done.json["session"]["end_reason"], "user");
    assert_eq!(done.json["session"]["ended_by"], "token:shop-app");
    let revoke = app
        .next_revoke(Duration::from_secs(10))
        .await
        .expect("a revoke");
    assert_eq!(revoke.body.reason, "user");
    assert_eq!(revoke.body.session_id, b);
    assert_eq!(revoke.body.app, "shop");
    assert_eq!(revoke.body.note.as_deref(), Some("lost phone"));
    assert_eq!(revoke.routing_key, "revoke.shop");
    let (reason, by): (String, String) = sqlx::query_as(
        "SELECT end_reason, ended_by FROM sessions WHERE app = 'shop' AND session_id = $1",
    )
    .bind(&b)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!((reason.as_str(), by.as_str()), ("user", "token:shop-app"));

    // Again: 200 with how it ended, and nothing sent twice.
    let again = api
        .post(&format!("/v1/sessions/{h_b}/revoke"), &shop, json!({}))
        .await;
    assert_eq!(again.status, 200);
    assert_eq!(again.json["revoked"], json!([]));
    assert_eq!(again.json["session"]["end_reason"], "user");
    app.settle().await;
    assert!(
        app.drain_revokes(Duration::from_millis(500))
            .await
            .is_empty()
    );

    let ended = api.get("/v1/users/u1/sessions?state=ended", &all).await;
    assert_eq!(handles(&ended.json), std::slice::from_ref(&h_b));
    let every = api.get("/v1/users/u1/sessions?state=all", &all).await;
    assert_eq!(handles(&every.json).len(), 4);

    // Everywhere else: all but `except`, in every app the token sees.
    let rest = api
        .post(
            "/v1/users/u1/revoke",
            &all,
            json!({"except": h_c, "note": "signed out elsewhere"}),
        )
        .await;
    assert_eq!(rest.status, 200, "{}", rest.json);
    let mut revoked: Vec<String> = rest.json["revoked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap().to_owned())
        .collect();
    revoked.sort();
    let mut expected = vec![h_a.clone(), h_d.clone()];
    expected.sort();
    assert_eq!(revoked, expected);
    let sent = app.expect_revokes(2).await;
    assert!(sent.iter().all(|r| r.body.reason == "user"));
    let active = api.get("/v1/users/u1/sessions", &all).await;
    assert_eq!(handles(&active.json), std::slice::from_ref(&h_c));
    assert_eq!(
        app.active("u2", "shop").await.len(),
        1,
        "another user's stay"
    );

    api.assert_never_shown(&[&a, &b, &c, &d, "other-user"]);
}

#[tokio::test]
async fn bad_input_gets_its_problem_and_changes_nothing() {
    let (mut app, mut api) = spawn_api().await;
    let shop = create_token(&app, "shop", "shop", "sessions:read,sessions:revoke").await;
    let blog = create_token(&app, "blog", "blog", "sessions:read,sessions:revoke").await;
    let reader = create_token(&app, "reader", "*", "sessions:read").await;
    let gone = create_token(&app, "gone", "*", "sessions:read").await;
    let sid = "cookie-secret-shop-1";
    app.publish(&login_from("shop", sid, "u1", 1, DESKTOP))
        .await;
    app.settle().await;
    let list = api.get("/v1/users/u1/sessions", &shop).await;
    let handle = handles(&list.json).remove(0);
    let revoke = format!("/v1/sessions/{handle}/revoke");

    // No token, a malformed one, an unknown one, a revoked one: 401.
    let none = api.call("GET", "/v1/users/u1/sessions", None, None).await;
    none.problem(401, "unauthorized");
    assert_eq!(none.www_authenticate.as_deref(), Some("Bearer"));
    let lower = api
        .client
        .get(format!("{}/v1/users/u1/sessions", api.base))
        .header("authorization", format!("bearer {shop}"))
        .send()
        .await
        .unwrap();
    assert_eq!(lower.status(), 200, "the scheme's name is case-insensitive");
    api.get("/v1/users/u1/sessions", "sgt_short")
        .await
        .problem(401, "unauthorized");
    let unknown = session_guard::api::token::generate();
    api.get("/v1/users/u1/sessions", &unknown)
        .await
        .problem(401, "unauthorized");
    assert_eq!(api.get("/v1/users/u1/sessions", &gone).await.status, 200);
    let out = app
        .command(&["tokens", "revoke", "gone"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    api.get_until_refused("/v1/users/u1/sessions", &gone)
        .await
        .problem(401, "unauthorized");

    // A missing scope: 403.
    api.post(&revoke, &reader, json!({}))
        .await
        .problem(403, "forbidden-scope");
    api.get("/v1/users/u1/limits?app=shop", &shop)
        .await
        .problem(403, "forbidden-scope");

    // Another app's session does not exist for a token: 404, never 403.
    api.post(&revoke, &blog, json!({}))
        .await
        .problem(404, "not-found");
    let blog_view = api.get("/v1/users/u1/sessions", &blog).await;
    assert_eq!(blog_view.json["sessions"], json!([]));
    let except_foreign = api
        .post("/v1/users/u1/revoke", &blog, json!({"except": handle}))
        .await;
    except_foreign.problem(404, "not-found");

    // Tampered, foreign and made-up handles: 404.
    let mut tampered = handle.clone().into_bytes();
    let at = tampered.len() - 3;
    tampered[at] = if tampered[at] == b'x' { b'y' } else { b'x' };
    let tampered = String::from_utf8(tampered).unwrap();
    let foreign = HandleKey::from_bytes(&session_guard::db::api_key::fresh_key())
        .unwrap()
        .seal("shop", sid);
    for h in [tampered.as_str(), foreign.as_str(), "sgh_nothing", sid] {
        api.post(&format!("/v1/sessions/{h}/revoke"), &shop, json!({}))
            .await
            .problem(404, "not-found");
    }
    // A genuine handle of a session the log never had (the revoke path's
    // "unknown session"): 404, and neither the answer nor anything logged
    // holds its id.
    let key: Vec<u8> =
        sqlx::query_scalar("SELECT key FROM api_keys WHERE purpose = 'session_handle'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let never_seen = "cookie-secret-never-seen";
    let unknown = HandleKey::from_bytes(&key)
        .unwrap()
        .seal("shop", never_seen);
    let answer = api
        .post(&format!("/v1/sessions/{unknown}/revoke"), &shop, json!({}))
        .await;
    answer.problem(404, "not-found");
    assert_eq!(answer.json["detail"], "no such resource");

    // Unknown fields, bad user ids and apps, bad parameters, bad cursors: 400.
    api.post(&revoke, &shop, json!({"note": "x", "reason": "y"}))
        .await
        .problem(400, "invalid-input");
    api.post(&revoke, &shop, json!(["not", "an", "object"]))
        .await
        .problem(400, "invalid-input");
    api.post("/v1/users/u1/revoke", &shop, json!({"apps": ["bad app"]}))
        .await
        .problem(400, "invalid-input");
    // At most 64 apps, in the query or the body; a note of at most 500
    // characters (the operator's `--reason` has the same cap).
    let apps = |n: usize| (0..n).map(|i| format!("a{i}")).collect::<Vec<_>>();
    let query: Vec<String> = apps(65).iter().map(|a| format!("app={a}")).collect();
    let many = api
        .get(&format!("/v1/users/u1/sessions?{}", query.join("&")), &shop)
        .await;
    many.problem(400, "invalid-input");
    assert!(many.json["detail"].as_str().unwrap().contains("at most 64"));
    let query: Vec<String> = apps(64).iter().map(|a| format!("app={a}")).collect();
    let enough = api
        .get(&format!("/v1/users/u1/sessions?{}", query.join("&")), &shop)
        .await;
    assert_eq!(enough.status, 200, "{}", enough.json);
    api.post("/v1/users/u1/revoke", &shop, json!({"apps": apps(65)}))
        .await
        .problem(400, "invalid-input");
    let long_note = "n".repeat(501);
    for (path, body) in [
        (revoke.as_str(), json!({"note": long_note})),
        ("/v1/users/u1/revoke", json!({"note": long_note})),
    ] {
        let refused = api.post(path, &shop, body).await;
        refused.problem(400, "invalid-input");
        assert!(
            refused.json["detail"]
                .as_str()
                .unwrap()
                .contains("at most 500 characters"),
            "{}",
            refused.json
        );
    }
    // 500 is taken (`apps` of the shop's token's: none of it to end here).
    let taken = api
        .post(
            "/v1/users/u1/revoke",
            &shop,
            json!({"apps": ["blog"], "note": "n".repeat(500)}),
        )
        .await;
    assert_eq!(taken.status, 200, "{}", taken.json);
    assert_eq!(taken.json["revoked"], json!([]));
    let long_user = "u".repeat(300);
    for path in [
        format!("/v1/users/{long_user}/sessions"),
        "/v1/users/bad%01user/sessions".to_owned(),
        "/v1/users/u1/sessions?app=no%20spaces".to_owned(),
        "/v1/users/u1/sessions?limit=1000".to_owned(),
        "/v1/users/u1/sessions?state=sleeping".to_owned(),
        "/v1/users/u1/sessions?cursor=forged".to_owned(),
        "/v1/users/u1/sessions?session_id=x".to_owned(),
    ] {
        api.get(&path, &shop).await.problem(400, "invalid-input");
    }

    // A body over api.max_body_bytes: 413, unread.
    let big = json!({"note": "n".repeat(4096)});
    api.post(&revoke, &shop, big)
        .await
        .problem(413, "payload-too-large");

    // No such route, or method: problem+json too.
    api.get("/v1/nothing", &shop)
        .await
        .problem(404, "not-found");
    let delete = api.call("DELETE", &revoke, Some(&shop), None).await;
    delete.problem(405, "method-not-allowed");
    assert_eq!(delete.allow.as_deref(), Some("POST"));

    // None of it ended anything or sent anything.
    app.settle().await;
    assert!(
        app.drain_revokes(Duration::from_millis(500))
            .await
            .is_empty()
    );
    assert_eq!(app.active("u1", "shop").await, [sid]);
    api.assert_never_shown(&[sid, never_seen]);
}

#[tokio::test]
async fn limits_through_the_api_agree_with_the_cli() {
    let (mut app, mut api) = spawn_api().await;
    let admin = create_token(&app, "admin", "*", "limits:read,limits:write").await;
    let shop = create_token(&app, "shop", "shop", "limits:read,limits:write").await;
    app.publish(&login_from("shop", "s1", "u1", 1, DESKTOP))
        .await;
    app.settle().await;

    let put = api
        .call(
            "PUT",
            "/v1/users/u1/limits?app=shop",
            Some(&shop),
            Some(json!({"max_sessions": 4, "policy": "evict_idle"}).to_string()),
        )
        .await;
    assert_eq!(put.status, 204, "{}", put.json);
    let view = api.get("/v1/users/u1/limits?app=shop", &shop).await;
    assert_eq!(view.status, 200, "{}", view.json);
    assert_eq!(view.json["limits"]["max_sessions"], 4);
    assert_eq!(view.json["limits"]["policy"], "evict_idle");
    let out = app
        .command(&["limits", "get", "--user", "u1", "--app", "shop", "--json"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let cli: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(view.json, cli[0], "the API and `limits get --json` agree");
    let by: String =
        sqlx::query_scalar("SELECT updated_by FROM user_overrides WHERE user_id = 'u1'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(by, "token:shop");

    // The all-apps override and other apps are out of the shop's reach.
    for path in ["/v1/users/u1/limits", "/v1/users/u1/limits?app=blog"] {
        let body = Some(json!({"max_sessions": 1}).to_string());
        api.call("PUT", path, Some(&shop), body)
            .await
            .problem(404, "not-found");
    }
    api.call(
        "PUT",
        "/v1/users/u1/limits?app=shop",
        Some(&shop),
        Some(json!({"max_sessions": 4, "extra": 1}).to_string()),
    )
    .await
    .problem(400, "invalid-input");
    api.call(
        "PUT",
        "/v1/users/u1/limits?app=shop",
        Some(&shop),
        Some("{}".into()),
    )
    .await
    .problem(400, "invalid-input");
    // The cross-app cap and the log limit reach other apps' sessions and
    // rows: not for a token of one app, even on its own app's override.
    for field in ["max_sessions_global", "log_limit"] {
        api.call(
            "PUT",
            "/v1/users/u1/limits?app=shop",
            Some(&shop),
            Some(json!({ field: 0 }).to_string()),
        )
        .await
        .problem(400, "invalid-input");
    }
    let view = api.get("/v1/users/u1/limits?app=shop", &shop).await;
    assert_eq!(view.json["limits"]["max_sessions"], 4, "nothing changed");
    let all_apps = api
        .call(
            "PUT",
            "/v1/users/u1/limits",
            Some(&admin),
            Some(json!({"max_sessions_global": 7}).to_string()),
        )
        .await;
    assert_eq!(all_apps.status, 204);

    let gone = api
        .call("DELETE", "/v1/users/u1/limits?app=shop", Some(&shop), None)
        .await;
    assert_eq!(gone.status, 204);
    api.call("DELETE", "/v1/users/u1/limits?app=shop", Some(&shop), None)
        .await
        .problem(404, "not-found");
    let after = api.get("/v1/users/u1/limits?app=shop", &shop).await;
    assert_eq!(after.json["limits"]["max_sessions_global"], 7);
    assert_eq!(after.json["set_by"]["max_sessions"], "config");
}

/// Turns the trigger that notifies token changes off (`false`) or on.
async fn notify_changes(app: &TestApp, on: bool) {
    let verb = if on { "ENABLE" } else { "DISABLE" };
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER TABLE api_tokens {verb} TRIGGER api_tokens_changed"
    )))
    .execute(&app.pool)
    .await
    .unwrap();
}

/// A token the server answers from its cache while the database says it is
/// revoked: made and used with the trigger on, then revoked with it off.
/// Tried again until the server's cache is on (it turns on at the first
/// heartbeat it hears); leaves the trigger off.
async fn revoked_but_cached(app: &TestApp, api: &mut Api, name: &str) -> String {
    let since = std::time::Instant::now();
    for attempt in 0.. {
        notify_changes(app, true).await;
        let token = create_token(app, &format!("{name}-{attempt}"), "*", "sessions:read").await;
        assert_eq!(api.get("/v1/users/u1/sessions", &token).await.status, 200);
        notify_changes(app, false).await;
        sqlx::query("UPDATE api_tokens SET revoked_at = now() WHERE name = $1")
            .bind(format!("{name}-{attempt}"))
            .execute(&app.pool)
            .await
            .unwrap();
        if api.get("/v1/users/u1/sessions", &token).await.status == 200 {
            return token;
        }
        assert!(
            since.elapsed() < Duration::from_secs(15),
            "the server never answered a token from its cache"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    unreachable!()
}

#[tokio::test]
async fn a_cached_token_is_forgotten_at_every_change_to_the_tokens() {
    let (app, mut api) = spawn_api().await;
    let path = "/v1/users/u1/sessions";

    // Revoked behind the notification's back (the trigger off), a token is
    // still taken from the cache, until the server hears of a change.
    let token = revoked_but_cached(&app, &mut api, "cached").await;
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(session_guard::db::tokens::CHANGED_CHANNEL)
        .execute(&app.pool)
        .await
        .unwrap();
    api.get_until_refused(path, &token)
        .await
        .problem(401, "unauthorized");

    // With the trigger, a revoke by the CLI or by hand in SQL is heard.
    notify_changes(&app, true).await;
    let by_cli = create_token(&app, "by-cli", "*", "sessions:read").await;
    let by_hand = create_token(&app, "by-hand", "*", "sessions:read").await;
    assert_eq!(api.get(path, &by_cli).await.status, 200);
    assert_eq!(api.get(path, &by_hand).await.status, 200);
    let out = app
        .command(&["tokens", "revoke", "by-cli"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    api.get_until_refused(path, &by_cli)
        .await
        .problem(401, "unauthorized");
    sqlx::query("DELETE FROM api_tokens WHERE name = 'by-hand'")
        .execute(&app.pool)
        .await
        .unwrap();
    api.get_until_refused(path, &by_hand)
        .await
        .problem(401, "unauthorized");

    // A lost listening connection empties the cache and turns it off (a
    // change may go unheard meanwhile); the server listens again and its
    // cache comes back on.
    let lost = revoked_but_cached(&app, &mut api, "lost").await;
    let ended: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = current_database() AND query LIKE 'LISTEN%') t",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(ended, 1, "one listening connection");
    api.get_until_refused(path, &lost)
        .await
        .problem(401, "unauthorized");
    revoked_but_cached(&app, &mut api, "back").await;
}

#[tokio::test]
async fn tokens_are_shown_once_listed_without_secrets_and_revoked_at_once_by_the_api_command() {
    let mut app = spawn_app_without_worker(|s| s.limits.max_sessions = 0).await;
    let token = create_token(&app, "portal", "shop,blog", "sessions:read").await;
    assert!(token.starts_with("sgt_"));
    // A second token of the same name is refused.
    let out = app
        .command(&[
            "tokens",
            "create",
            "portal",
            "--apps",
            "shop",
            "--scopes",
            "sessions:read",
        ])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let out = app
        .command(&[
            "tokens",
            "create",
            "x",
            "--apps",
            "shop",
            "--scopes",
            "sessions:delete",
        ])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown scope"));

    let list = app.command(&["tokens", "list"]).output().await.unwrap();
    let text = String::from_utf8(list.stdout).unwrap();
    assert!(
        text.contains("portal") && text.contains("shop,blog"),
        "{text}"
    );
    assert!(text.contains("sessions:read"), "{text}");
    assert!(
        !text.contains(&token) && !text.contains(&token[4..12]),
        "{text}"
    );
    let stored: Vec<u8> = sqlx::query_scalar("SELECT token_sha256 FROM api_tokens")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, session_guard::api::token::hash(&token));

    // `session-guard api` migrates nothing: a missing database stays missing.
    let mut nowhere = app.settings.clone();
    nowhere.api.listen = format!("127.0.0.1:{}", free_port());
    let missing = format!(
        "sg_test_missing_{}",
        &token[4..14].to_lowercase().replace('-', "_")
    );
    nowhere.database.url =
        session_guard::configuration::with_database(&nowhere.database.url, &missing);
    let out = app.command_with(&nowhere, &["api"]).output().await.unwrap();
    assert!(!out.status.success());
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(
        error.contains("run `session-guard migrate` first"),
        "{error}"
    );

    // `session-guard api` serves the API alone.
    let listen = format!("127.0.0.1:{}", free_port());
    let health = format!("127.0.0.1:{}", free_port());
    let mut settings = app.settings.clone();
    settings.api.listen = listen.clone();
    settings.http.listen = health.clone();
    let child = app
        .command_with(&settings, &["api"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    app.adopt_process(child);
    let mut api = Api::new(&listen);
    app.wait_for("the api command to answer", || {
        let url = format!("{}/v1/openapi.json", api.base);
        async move { reqwest::get(url).await.is_ok() }
    })
    .await;
    let ok = api.get("/v1/users/u1/sessions", &token).await;
    assert_eq!(ok.status, 200, "{}", ok.json);

    let out = app
        .command(&["tokens", "revoke", "portal"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    api.get_until_refused("/v1/users/u1/sessions", &token)
        .await
        .problem(401, "unauthorized");
    let list = app.command(&["tokens", "list"]).output().await.unwrap();
    let text = String::from_utf8(list.stdout).unwrap();
    let row = text.lines().find(|l| l.starts_with("portal")).unwrap();
    assert!(!row.trim_end().ends_with('-'), "revoked shows when: {row}");
    let again = app
        .command(&["tokens", "revoke", "portal"])
        .output()
        .await
        .unwrap();
    assert!(!again.status.success());

    // Its health and metrics: ready without RabbitMQ, requests counted by
    // route pattern and status, never by path.
    let (status, body) = http_get(&health, "/health/ready").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    let (_, metrics) = http_get(&health, "/metrics").await.unwrap();
    let route = "route=\"/v1/users/{user_id}/sessions\"";
    for status in ["200", "401"] {
        let series = format!("session_guard_api_requests_total{{{route},status=\"{status}\"}} 1");
        assert!(metrics.contains(&series), "{series} missing:\n{metrics}");
    }
    assert!(metrics.contains(&format!(
        "session_guard_api_request_duration_seconds_count{{{route}}} 2"
    )));
    assert!(!metrics.contains("/v1/users/u1"), "{metrics}");
    assert!(
        !metrics.contains("session_guard_broker_up"),
        "an API server does not consume: no broker gauge to alert on"
    );
}

#[test]
fn the_checked_in_openapi_document_is_the_generated_one() {
    let generated = session_guard::api::openapi_document();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json");
    if std::env::var_os("SG_UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "docs/openapi.json differs from what the code generates; rerun with \
         SG_UPDATE_OPENAPI=1 cargo test --test integration api::"
    );
    let doc: Value = serde_json::from_str(&generated).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in [
        "/v1/users/{user_id}/sessions",
        "/v1/sessions/{handle}/revoke",
        "/v1/users/{user_id}/revoke",
        "/v1/users/{user_id}/limits",
        "/v1/openapi.json",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path}");
    }
    // Every schema a path or a schema refers to is in the document.
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for (at, _) in generated.match_indices("#/components/schemas/") {
        let name: String = generated[at + 21..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        assert!(
            schemas.contains_key(&name),
            "{name} is referred to, not defined"
        );
    }
}
