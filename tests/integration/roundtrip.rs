//! Whatever the decoder accepts, the store accepts: generated events, hostile
//! strings, odd times and nested attributes included, go through the real
//! database, and every one the decoder accepted commits and reads back as it
//! was decoded.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use chrono::{DateTime, FixedOffset, SecondsFormat, Utc};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Map, Value, json};
use session_guard::apply::{self, Enforcement};
use session_guard::domain::event::SessionEvent;

use crate::helpers::TestDatabase;

/// Generated batches; each is one transaction on a shared database.
const CASES: u32 = 300;
/// A leaf that is replaced, after serialization, by a raw number from
/// [`RAW_NUMBERS`] (text no `serde_json::Value` would produce).
const RAW_MARK: &str = "@raw-number@";
/// Numbers as an app might write them, beyond what f64/i64/u64 print as.
const RAW_NUMBERS: &[&str] = &[
    "1e400",
    "-1e400",
    "1e-400",
    "123456789012345678901234567890",
    "-0",
    "0.1e1",
    "1E+2",
    "2.2250738585072014e-308",
];

/// Strings an app should not send, and some it may.
fn text() -> BoxedStrategy<String> {
    prop_oneof![
        10 => "[a-z0-9]{1,12}",
        // Any Unicode scalar value: control characters, NUL, astral planes.
        3 => "(?s).{0,24}",
        1 => "[\\x00-\\x1f\\x7f\\x{80}-\\x{9f}]{1,4}",
        1 => ("[a-z]{0,4}", "[a-z]{0,4}").prop_map(|(a, b)| format!("{a}\u{0}{b}")),
        1 => (1usize..=300, prop::sample::select(vec!["x", "é", "🦀"]))
            .prop_map(|(n, c)| c.repeat(n)),
        1 => prop::sample::select(vec![
            "\u{feff}bom", "\u{202e}evil", "\u{fffd}", "\\", "\"", "\u{2028}",
            "'; DROP TABLE sessions; --", "%s%n", "\u{1b}[31mred",
        ])
        .prop_map(String::from),
    ]
    .boxed()
}

/// An id as apps send them (any printable text), or now and then a hostile one.
fn id() -> BoxedStrategy<String> {
    prop_oneof![4 => "\\PC{1,40}", 1 => text()].boxed()
}

/// An RFC 3339 offset: `Z`, or `+HH:MM` / `-HH:MM` up to 23:59.
fn offset() -> BoxedStrategy<String> {
    prop_oneof![
        2 => Just("Z".to_owned()),
        3 => (any::<bool>(), 0u32..=23, 0u32..=59).prop_map(|(east, h, m)| {
            format!("{}{h:02}:{m:02}", if east { '+' } else { '-' })
        }),
    ]
    .boxed()
}

/// Times around now, anywhere in years 0-9999 (and invalid dates), the
/// extremes, leap seconds, and garbage.
fn time() -> BoxedStrategy<String> {
    prop_oneof![
        8 => (-86_400i64..86_400, 0u32..1_000_000_000, -86_340i32..=86_340).prop_map(
            |(secs, nanos, east)| {
                let t = Utc::now() + chrono::Duration::seconds(secs)
                    + chrono::Duration::nanoseconds(i64::from(nanos));
                t.with_timezone(&FixedOffset::east_opt(east).unwrap())
                    .to_rfc3339_opts(SecondsFormat::AutoSi, false)
            }
        ),
        3 => (
            (0u32..=9999, 1u32..=12, 1u32..=31),
            (0u32..=23, 0u32..=59, 0u32..=60),
            prop::option::of("[0-9]{1,12}"),
            offset(),
        )
            .prop_map(|((y, mo, d), (h, mi, s), frac, off)| {
                let frac = frac.map(|f| format!(".{f}")).unwrap_or_default();
                format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{frac}{off}")
            }),
        2 => prop::sample::select(vec![
            "0001-01-01T00:00:00Z",
            "0001-01-01T00:00:00+23:59",
            "0001-01-01T00:00:00-23:59",
            "0000-12-31T23:59:59Z",
            "9999-12-31T23:59:59.999999999Z",
            "9999-12-31T23:59:00-23:59",
            "9999-12-31T23:59:00+23:59",
            "2016-12-31T23:59:60.999999Z",
            "1969-12-31T23:59:59.9999995Z",
            "2000-01-01T00:00:00Z",
            "1900-02-29T00:00:00Z",
        ])
        .prop_map(String::from),
        1 => text(),
    ]
    .boxed()
}

fn ip() -> BoxedStrategy<Option<String>> {
    prop_oneof![
        3 => Just(None),
        3 => any::<Ipv4Addr>().prop_map(|a| Some(a.to_string())),
        3 => any::<Ipv6Addr>().prop_map(|a| Some(a.to_string())),
        1 => prop::sample::select(vec!["::ffff:192.0.2.1", "::", "0.0.0.0", "fe80::1%eth0"])
            .prop_map(|s| Some(s.to_owned())),
        1 => text().prop_map(Some),
    ]
    .boxed()
}

fn json_value() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop::sample::select(vec![f64::MAX, f64::MIN_POSITIVE, 5e-324, -0.0, 1e300, 0.1])
            .prop_map(Value::from),
        Just(Value::String(RAW_MARK.to_owned())),
        text().prop_map(Value::String),
    ];
    // Depth 3 below the attributes object: now and then one level too deep.
    leaf.prop_recursive(3, 16, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::btree_map(text(), inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
    .boxed()
}

fn attributes() -> BoxedStrategy<Option<Value>> {
    prop_oneof![
        2 => Just(None),
        3 => (
            prop::collection::btree_map(text(), json_value(), 0..4),
            prop::option::of(prop::collection::vec(text(), 0..4)),
            prop::option::of(any::<bool>()),
        )
            .prop_map(|(map, roles, superuser)| {
                let mut map: Map<String, Value> = map.into_iter().collect();
                if let Some(roles) = roles {
                    map.insert("roles".into(), json!(roles));
                }
                if let Some(superuser) = superuser {
                    map.insert("superuser".into(), json!(superuser));
                }
                Some(Value::Object(map))
            }),
    ]
    .boxed()
}

/// One event as an app would publish it, before the test makes its session
/// and user names unique: (JSON, raw number for `RAW_MARK`, user index).
#[derive(Debug, Clone)]
struct Generated {
    event: Value,
    raw_number: &'static str,
    user: usize,
}

fn event() -> BoxedStrategy<Generated> {
    let kind = prop::sample::select(vec![
        "login",
        "request",
        "logout",
        "logout_others",
        "logout_all",
    ]);
    let app = prop_oneof![
        9 => prop::sample::select(vec!["shop", "blog"]).prop_map(String::from),
        1 => text(),
    ];
    (
        (kind, app, id(), prop::option::weighted(0.95, 0usize..2)),
        (time(), prop::option::of(time())),
        (ip(), prop::option::of(text()), prop::option::of(text())),
        attributes(),
        prop::sample::select(RAW_NUMBERS.to_vec()),
    )
        .prop_map(
            |(
                (kind, app, session, user),
                (occurred_at, expires_at),
                (ip, user_agent, event_id),
                attributes,
                raw_number,
            )| {
                let mut event = json!({
                    "type": kind, "app": app, "session_id": session,
                    "occurred_at": occurred_at,
                });
                let fields = [
                    ("expires_at", expires_at.map(Value::String)),
                    ("ip", ip.map(Value::String)),
                    ("user_agent", user_agent.map(Value::String)),
                    ("event_id", event_id.map(Value::String)),
                    ("attributes", attributes),
                ];
                for (key, value) in fields {
                    if let Some(value) = value {
                        event[key] = value;
                    }
                }
                Generated {
                    event,
                    raw_number,
                    user: user.unwrap_or(usize::MAX),
                }
            },
        )
        .boxed()
}

/// JSON equality with numbers compared by value, as rules compare them:
/// jsonb keeps a number's value, not its spelling (`1E+2` reads back as
/// `100`, `-0` as `0`).
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

/// A session row as stored.
type Stored = (
    Option<String>,
    DateTime<Utc>,
    DateTime<Utc>,
    Option<IpAddr>,
    Option<String>,
    Option<DateTime<Utc>>,
    Option<Value>,
);

#[test]
fn every_event_the_decoder_accepts_commits_and_reads_back() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(TestDatabase::new());
    let enforcement = Enforcement::from_settings(&db.settings, &[]).unwrap();
    let case = Cell::new(0u64);
    let accepted = Cell::new(0usize);
    // How often each refusal came up (by the field it names), to show the
    // generator reaches both sides of the decoder.
    let refusals: RefCell<BTreeMap<String, usize>> = RefCell::default();

    let batch = (
        prop::collection::vec(event(), 1..8),
        prop::collection::vec(id(), 2),
    );
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        max_shrink_iters: 500,
        ..Config::default()
    });
    let result = runner.run(&batch, |(generated, users)| {
        case.set(case.get() + 1);
        let c = case.get();
        let mut events = Vec::new();
        let mut bodies = Vec::new();
        for (i, g) in generated.iter().enumerate() {
            let mut json = g.event.clone();
            // Unique per case and event (each event its own session, so what
            // the row holds is what that event said), hostile part kept.
            json["session_id"] = format!("{c}.{i}.{}", json["session_id"].as_str().unwrap()).into();
            if let Some(user) = users.get(g.user) {
                json["user_id"] = format!("{c}.{user}").into();
            }
            let body = json
                .to_string()
                .replacen(&format!("\"{RAW_MARK}\""), g.raw_number, 1);
            match SessionEvent::decode(body.as_bytes()) {
                Ok(event) => {
                    events.push(event);
                    bodies.push(body);
                }
                Err(e) => {
                    let text = e.to_string();
                    let field = match text.split(':').next().unwrap_or_default() {
                        json if json.starts_with("invalid JSON") => "invalid JSON",
                        field => field.split(['[', '.']).next().unwrap_or_default(),
                    };
                    *refusals.borrow_mut().entry(field.to_owned()).or_default() += 1;
                }
            }
        }
        accepted.set(accepted.get() + events.len());
        if events.is_empty() {
            return Ok(());
        }
        rt.block_on(async {
            apply::process_batch(&db.pool, &enforcement, &events, Utc::now())
                .await
                .map_err(|e| TestCaseError::fail(format!("the store refused {bodies:#?}: {e}")))?;
            for (event, body) in events.iter().zip(&bodies) {
                let row: Option<Stored> = sqlx::query_as(
                    "SELECT user_id, login_at, last_seen_at, ip, user_agent, expires_at,
                            attributes
                     FROM sessions WHERE app = $1 AND session_id = $2",
                )
                .bind(event.app.as_str())
                .bind(event.session_id.as_ref().map(|s| s.as_str()))
                .fetch_optional(&db.pool)
                .await
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let Some((user, login_at, last_seen_at, ip, user_agent, expires_at, attrs)) = row
                else {
                    return Err(TestCaseError::fail(format!("no row for {body}")));
                };
                prop_assert_eq!(user.as_deref(), event.user_id.as_ref().map(|u| u.as_str()));
                prop_assert_eq!(login_at, event.occurred_at, "{}", body);
                prop_assert_eq!(last_seen_at, event.occurred_at, "{}", body);
                prop_assert_eq!(ip, event.ip);
                prop_assert_eq!(&user_agent, &event.user_agent);
                prop_assert_eq!(expires_at, event.expires_at, "{}", body);
                // What the app sent, as the decoder read it: the row keeps
                // the latest non-empty attributes.
                let sent: Value = serde_json::from_str(body).unwrap();
                if let Some(Value::Object(map)) = sent.get("attributes")
                    && !map.is_empty()
                {
                    let stored = attrs.unwrap_or(Value::Null);
                    prop_assert!(
                        same_json(&stored, &Value::Object(map.clone())),
                        "attributes of {} read back as {}",
                        body,
                        stored
                    );
                }
            }
            Ok(())
        })
    });
    rt.block_on(db.pool.close());
    drop(db);
    if let Err(e) = result {
        panic!("{e}");
    }
    let refusals = refusals.into_inner();
    eprintln!(
        "{} events accepted in {} batches; refused by field: {refusals:?}",
        accepted.get(),
        case.get()
    );
    assert!(accepted.get() >= CASES as usize, "too few events accepted");
    for field in ["attributes", "occurred_at", "session_id", "user_agent"] {
        assert!(
            refusals.get(field).is_some_and(|n| *n > 0),
            "no event was refused for {field}: the generator misses that side"
        );
    }
}
