//! The event schema and the worker's decoder agree: an app that validates
//! its events against `schema/event.schema.json` refuses what the worker
//! would dead-letter, and never what it would accept, wherever a JSON
//! Schema can express the rule. The few places it cannot are listed (and
//! checked) in `what_the_schema_cannot_say`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use session_guard_protocol::event::{EventBody, EventKind, SessionEvent};
use session_guard_protocol::schema;

static EVENT: LazyLock<jsonschema::Validator> = LazyLock::new(|| {
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema::event().to_value())
        .expect("the event schema compiles")
});

fn decoder_accepts(event: &Value) -> Result<(), String> {
    SessionEvent::decode(event.to_string().as_bytes())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn schema_accepts(event: &Value) -> bool {
    EVENT.is_valid(event)
}

fn login() -> Value {
    json!({
        "type": "login", "app": "shop", "session_id": "s1", "user_id": "42",
        "occurred_at": "2026-11-27T10:15:00.123Z", "ip": "203.0.113.7",
        "user_agent": "Firefox/140.0", "expires_at": "2026-12-11T10:15:00Z",
        "event_id": "e-1", "attributes": {"roles": ["staff"], "superuser": false}
    })
}

fn with(key: &str, value: Value) -> Value {
    let mut event = login();
    event[key] = value;
    event
}

fn without(key: &str) -> Value {
    let mut event = login();
    event.as_object_mut().unwrap().remove(key);
    event
}

fn attributes(value: Value) -> Value {
    with("attributes", value)
}

#[test]
fn what_the_decoder_refuses_the_schema_refuses_where_it_can_say_it() {
    let many_keys: Map<String, Value> = (0..65).map(|i| (format!("k{i}"), json!(i))).collect();
    let cases = [
        (json!([1, 2]), "event must be a JSON object"),
        (without("type"), "missing field type"),
        (
            with("type", json!("logon")),
            "type: unknown event type \"logon\"",
        ),
        (with("type", Value::Null), "missing field type"),
        (without("app"), "missing field app"),
        (with("app", json!("bad app")), "app: invalid character ' '"),
        (
            with("app", json!("")),
            "app: must be 1-64 characters, got 0",
        ),
        (
            with("app", json!("a".repeat(65))),
            "app: must be 1-64 characters, got 65",
        ),
        (
            with("session_id", json!("")),
            "session_id: must be 1-256 characters",
        ),
        (
            with("session_id", json!("é".repeat(257))),
            "session_id: must be 1-256 characters",
        ),
        (
            with("session_id", json!("a\u{1b}b")),
            "session_id: must not contain control",
        ),
        (
            with("session_id", json!(7)),
            "session_id: expected a string, got a number",
        ),
        (without("user_id"), "missing field user_id"),
        (with("user_id", Value::Null), "missing field user_id"),
        (
            with("user_id", json!("a\u{85}")),
            "user_id: must not contain control",
        ),
        (
            with("user_id", json!(42)),
            "user_id: expected a string, got a number",
        ),
        (without("occurred_at"), "missing field occurred_at"),
        (
            with("occurred_at", json!("yesterday")),
            "occurred_at: invalid RFC 3339 time",
        ),
        (
            with("occurred_at", json!("2026-13-01T00:00:00Z")),
            "occurred_at: invalid RFC 3339",
        ),
        (
            with("occurred_at", json!("2026-11-27T10:15Z")),
            "occurred_at: invalid RFC 3339",
        ),
        (
            with("occurred_at", json!(1764238500)),
            "occurred_at: expected a string",
        ),
        (
            with("expires_at", json!("soon")),
            "expires_at: invalid RFC 3339 time",
        ),
        (
            with("event_id", json!("")),
            "event_id: must be 1-256 characters, got 0",
        ),
        (
            with("event_id", json!("x".repeat(257))),
            "event_id: must be 1-256 characters",
        ),
        (
            with("event_id", json!("a\u{0}")),
            "event_id: must not contain NUL (U+0000)",
        ),
        (with("ip", json!("300.1.1.1")), "ip: invalid IP address"),
        (with("ip", json!("fe80::1%eth0")), "ip: invalid IP address"),
        (
            with("ip", json!(3232235777u32)),
            "ip: expected a string, got a number",
        ),
        (
            with("user_agent", json!("x".repeat(513))),
            "user_agent: longer than 512",
        ),
        (
            with("user_agent", json!("agent\u{0}")),
            "user_agent: must not contain NUL",
        ),
        (
            attributes(json!("admin")),
            "attributes: expected a JSON object, got a string",
        ),
        (
            attributes(json!([])),
            "attributes: expected a JSON object, got an array",
        ),
        (
            attributes(Value::Object(many_keys)),
            "attributes: more than 64 keys (65)",
        ),
        (
            attributes(json!({"a": {"b": {"c": {"d": 1}}}})),
            "attributes: nested deeper than 4",
        ),
        (
            attributes(json!({"a": [[[1]]]})),
            "attributes: nested deeper than 4 levels",
        ),
        (
            attributes(json!({"a": [[[[]]]]})),
            "attributes: nested deeper than 4 levels",
        ),
        (
            attributes(json!({"a": {"b": {"c": {"d": {}}}}})),
            "attributes: nested deeper than 4 levels",
        ),
        (
            attributes(json!({"plan": {"na\u{0}me": 1}})),
            "attributes.plan[\"na\\u0000me\"]: key",
        ),
        (
            attributes(json!({"plan": ["x\u{0}"]})),
            "attributes.plan[0]: must not contain NUL",
        ),
        (
            attributes(json!({"superuser": 1})),
            "attributes.superuser: expected a boolean",
        ),
        (
            attributes(json!({"roles": "admin"})),
            "attributes.roles: expected an array of strings",
        ),
        (
            attributes(json!({"roles": [1]})),
            "attributes.roles: expected strings, got a number",
        ),
        (
            attributes(json!({"roles": [""]})),
            "attributes.roles: each role must be 1-128",
        ),
        (
            attributes(json!({"roles": ["r".repeat(129)]})),
            "attributes.roles: each role must be",
        ),
        (
            attributes(json!({"roles": vec!["r"; 65]})),
            "attributes.roles: more than 64 roles (65)",
        ),
    ];
    for (event, refusal) in cases {
        let error = decoder_accepts(&event).expect_err(refusal);
        assert!(
            error.starts_with(refusal),
            "expected {refusal:?}, got {error:?}"
        );
        assert!(
            !schema_accepts(&event),
            "the schema accepts what {refusal:?} refuses: {event}"
        );
    }
}

#[test]
fn what_the_decoder_accepts_the_schema_accepts() {
    let mut logout = login();
    let o = logout.as_object_mut().unwrap();
    o.insert("type".into(), json!("logout"));
    o.remove("user_id");
    let cases = [
        login(),
        logout.clone(),
        {
            let mut e = logout;
            e["user_id"] = Value::Null;
            e
        },
        with("ip", Value::Null),
        with("ip", json!("::ffff:192.0.2.1")),
        with("event_id", Value::Null),
        with("expires_at", Value::Null),
        with("occurred_at", json!("2026-11-27t10:15:00.123456789-05:30")),
        with("occurred_at", json!("2016-12-31T23:59:60.5Z")),
        with("session_id", json!("é".repeat(256))),
        with("user_agent", json!("")),
        with("user_agent", json!("tab\tand ESC\u{1b} are text")),
        with("unknown_field", json!({"from": "a later version"})),
        attributes(Value::Null),
        attributes(json!({})),
        attributes(json!({"roles": null, "superuser": null})),
        attributes(json!({"a": {"b": {"c": 1}}, "k\u{7}": [[1, "tab\t"]]})),
        attributes(json!({"": [[[]]], "o": {"p": {"q": {}}}, "m": [{}, []]})),
        attributes(Value::Object(
            (0..64).map(|i| (format!("k{i}"), json!(i))).collect(),
        )),
    ];
    for event in cases {
        assert_eq!(decoder_accepts(&event), Ok(()), "{event}");
        assert!(
            schema_accepts(&event),
            "the schema refuses a valid event: {event}"
        );
    }
}

/// The rules a JSON Schema cannot state, each shown once: if a validator
/// or the decoder changes here, this test says so, and the schema's
/// description and docs/PROTOCOL.md need a look.
#[test]
fn what_the_schema_cannot_say() {
    // The worker refuses; the schema (whose description states the rule)
    // accepts.
    let mut big = login();
    big["padding"] = json!("x".repeat(64 * 1024));
    let refused_by_the_worker_only = [
        (big, "message too large"),
        (
            attributes(json!({"blob": "x".repeat(5000)})),
            "attributes: larger than 4096 bytes",
        ),
        (
            with("occurred_at", json!("9999-12-31T23:59:00-23:59")),
            "occurred_at: \"9999-12-31T23:59:00-23:59\" is outside years 0001-9999",
        ),
        (
            with("occurred_at", json!("0000-06-01T00:00:00Z")),
            "occurred_at: \"0000-06-01T00:00:00Z\" is outside years 0001-9999",
        ),
    ];
    for (event, refusal) in refused_by_the_worker_only {
        let error = decoder_accepts(&event).unwrap_err();
        assert!(error.starts_with(refusal), "{error}");
        assert!(schema_accepts(&event), "{refusal}");
    }
    // RFC 3339 proper (what the schema's date-time format checks) is
    // stricter than the decoder on two spellings no app should send.
    for time in ["2026-11-27 10:15:00Z", "2026-11-27T10:15:60Z"] {
        let event = with("occurred_at", json!(time));
        assert_eq!(decoder_accepts(&event), Ok(()), "{time}");
        assert!(!schema_accepts(&event), "{time}");
    }
}

// ---- property: the decoder and the schema agree on generated events ----

/// A field's value, or `None` to leave the field out.
type Field = Option<Value>;

fn optional(value: impl Strategy<Value = Value>) -> impl Strategy<Value = Field> {
    prop_oneof![
        2 => Just(None),
        1 => Just(Some(Value::Null)),
        8 => value.prop_map(Some),
    ]
}

fn kind() -> impl Strategy<Value = Value> {
    prop_oneof![
        40 => prop::sample::select(EventKind::ALL.to_vec()).prop_map(|k| json!(k.as_str())),
        1 => prop::sample::select(vec![json!("logon"), json!(""), json!(1), json!("LOGIN")]),
    ]
}

fn app() -> impl Strategy<Value = Value> {
    prop_oneof![
        40 => "[A-Za-z0-9_.-]{1,64}".prop_map(Value::from),
        1 => "[A-Za-z0-9_.-]{65,70}".prop_map(Value::from),
        1 => "[a-z]{0,3}[ /é*#\\x00][a-z]{0,3}".prop_map(Value::from),
        1 => Just(json!("")),
        1 => Just(json!(["shop"])),
    ]
}

/// `session_id` and `user_id`: 1-256 characters, no control characters.
fn id() -> impl Strategy<Value = Value> {
    prop_oneof![
        40 => "[^\\p{Cc}]{1,12}".prop_map(Value::from),
        2 => (256usize..=257).prop_map(|n| Value::from("é".repeat(n))),
        1 => "[a-z]{0,3}[\\x00-\\x1f\\x7f-\\x9f][a-z]{0,3}".prop_map(Value::from),
        1 => Just(json!("")),
        1 => any::<i32>().prop_map(Value::from),
    ]
}

/// RFC 3339 times, in the spellings apps send, within years 0002-9998 (so
/// an offset cannot carry them outside 0001-9999, which the schema cannot
/// check), and some that are not times at all.
fn time() -> impl Strategy<Value = Value> {
    let valid = (
        2i32..=9998,
        1u32..=12,
        1u32..=28,
        0u32..24,
        0u32..60,
        0u32..60,
        prop::option::of("[0-9]{1,9}"),
        prop_oneof![
            Just("Z".to_owned()),
            Just("z".to_owned()),
            (prop::bool::ANY, 0u32..24, 0u32..60)
                .prop_map(|(east, h, m)| format!("{}{h:02}:{m:02}", if east { '+' } else { '-' })),
        ],
        prop::bool::ANY,
    )
        .prop_map(|(y, mo, d, h, mi, s, frac, offset, lower_t)| {
            let frac = frac.map(|f| format!(".{f}")).unwrap_or_default();
            let t = if lower_t { 't' } else { 'T' };
            Value::from(format!(
                "{y:04}-{mo:02}-{d:02}{t}{h:02}:{mi:02}:{s:02}{frac}{offset}"
            ))
        });
    prop_oneof![
        40 => valid,
        1 => prop::sample::select(vec![
            json!("yesterday"),
            json!("2026-02-30T10:00:00Z"),
            json!("2026-11-27T25:00:00Z"),
            json!("2026-11-27T10:15:00"),
            json!("2026-11-27"),
            json!(""),
            json!(1764238500),
        ]),
    ]
}

fn event_id() -> impl Strategy<Value = Value> {
    prop_oneof![
        30 => "[^\\x00]{1,12}".prop_map(Value::from),
        2 => (256usize..=257).prop_map(|n| Value::from("x".repeat(n))),
        1 => Just(json!("")),
        1 => Just(json!("a\u{0}b")),
    ]
}

fn ip() -> impl Strategy<Value = Value> {
    prop_oneof![
        15 => any::<u32>().prop_map(|n| Value::from(IpAddr::from(Ipv4Addr::from(n)).to_string())),
        15 => any::<u128>().prop_map(|n| Value::from(IpAddr::from(Ipv6Addr::from(n)).to_string())),
        1 => prop::sample::select(vec![
            json!("300.1.1.1"),
            json!("01.2.3.4"),
            json!("1.2.3"),
            json!("fe80::1%eth0"),
            json!("[::1]"),
            json!("localhost"),
            json!(""),
        ]),
    ]
}

fn user_agent() -> impl Strategy<Value = Value> {
    prop_oneof![
        30 => "[^\\x00]{0,20}".prop_map(Value::from),
        2 => (511usize..=513).prop_map(|n| Value::from("é".repeat(n))),
        1 => Just(json!("agent\u{0}")),
        1 => Just(json!(true)),
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        prop_oneof![
            20 => "[a-z\\x07\\t]{0,4}",
            1 => "[a-z]{0,2}\\x00",
        ]
        .prop_map(Value::from),
    ]
}

fn nested() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 16, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// An attribute key: any text but NUL, now and then with one.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        20 => "[a-z.\\x07 ]{0,3}",
        1 => "[a-z]?\\x00",
    ]
}

fn roles() -> impl Strategy<Value = Value> {
    prop_oneof![
        20 => prop::collection::vec("[a-z]{1,8}", 0..4).prop_map(|r| json!(r)),
        2 => (63usize..=65).prop_map(|n| json!(vec!["r"; n])),
        1 => prop::sample::select(vec![
            json!([""]),
            json!(["r".repeat(128)]),
            json!(["r".repeat(129)]),
            json!(["staff", 1]),
            json!("staff"),
            json!(["st\u{0}aff"]),
        ]),
    ]
}

/// Attributes of every shape, bounded in size: the 4096-byte limit is one
/// the schema cannot state.
fn attributes_value() -> impl Strategy<Value = Value> {
    let object = (
        prop::collection::btree_map(key(), nested(), 0..4),
        optional(roles()),
        optional(prop_oneof![
            10 => any::<bool>().prop_map(Value::from),
            1 => Just(json!("yes")),
        ]),
    )
        .prop_map(|(map, roles, superuser)| {
            let mut map: Map<String, Value> = map.into_iter().collect();
            if let Some(r) = roles {
                map.insert("roles".into(), r);
            }
            if let Some(s) = superuser {
                map.insert("superuser".into(), s);
            }
            Value::Object(map)
        });
    prop_oneof![
        30 => object,
        2 => (63usize..=65).prop_map(|n| {
            Value::Object((0..n).map(|i| (format!("k{i}"), json!(i))).collect())
        }),
        1 => prop::sample::select(vec![json!("admin"), json!([]), json!(3)]),
    ]
    .prop_filter("within the byte limit", |v| v.to_string().len() < 4000)
}

#[derive(Debug, Clone)]
struct Fields {
    kind: Field,
    app: Field,
    session_id: Field,
    user_id: Field,
    occurred_at: Field,
    event_id: Field,
    ip: Field,
    user_agent: Field,
    expires_at: Field,
    attributes: Field,
    extra: Field,
}

fn required(value: impl Strategy<Value = Value>) -> impl Strategy<Value = Field> {
    prop_oneof![
        60 => value.prop_map(Some),
        1 => Just(None),
        1 => Just(Some(Value::Null)),
    ]
}

/// Present in most events: only `logout` may leave it out.
fn user_id() -> impl Strategy<Value = Field> {
    prop_oneof![
        40 => id().prop_map(Some),
        3 => Just(None),
        2 => Just(Some(Value::Null)),
    ]
}

fn fields() -> impl Strategy<Value = Fields> {
    (
        (required(kind()), required(app()), required(id())),
        (user_id(), required(time()), optional(event_id())),
        (optional(ip()), optional(user_agent()), optional(time())),
        (optional(attributes_value()), optional(nested())),
    )
        .prop_map(
            |(
                (kind, app, session_id),
                (user_id, occurred_at, event_id),
                (ip, user_agent, expires_at),
                (attributes, extra),
            )| Fields {
                kind,
                app,
                session_id,
                user_id,
                occurred_at,
                event_id,
                ip,
                user_agent,
                expires_at,
                attributes,
                extra,
            },
        )
}

impl Fields {
    fn to_json(&self) -> Value {
        let mut object = Map::new();
        for (key, field) in [
            ("type", &self.kind),
            ("app", &self.app),
            ("session_id", &self.session_id),
            ("user_id", &self.user_id),
            ("occurred_at", &self.occurred_at),
            ("event_id", &self.event_id),
            ("ip", &self.ip),
            ("user_agent", &self.user_agent),
            ("expires_at", &self.expires_at),
            ("attributes", &self.attributes),
            ("from_a_later_version", &self.extra),
        ] {
            if let Some(value) = field {
                object.insert(key.into(), value.clone());
            }
        }
        Value::Object(object)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Valid or not, a generated event gets the same answer from both.
    #[test]
    fn the_schema_and_the_decoder_agree(fields in fields()) {
        let event = fields.to_json();
        let decoded = decoder_accepts(&event);
        prop_assert_eq!(
            decoded.is_ok(),
            schema_accepts(&event),
            "decoder says {:?} for {}",
            decoded,
            event
        );
    }

    /// What `EventBody` serializes, when the decoder takes it, the schema
    /// takes too.
    #[test]
    fn event_bodies_the_worker_accepts_validate(fields in fields()) {
        let Ok(body) = serde_json::from_value::<EventBody>(fields.to_json()) else {
            return Ok(());
        };
        let json: Value = serde_json::from_slice(&body.to_json()).unwrap();
        if body.validate().is_ok() {
            prop_assert!(schema_accepts(&json), "{}", json);
        }
    }
}
