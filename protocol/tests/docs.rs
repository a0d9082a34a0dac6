//! The documents apps read agree with the contract: every JSON example in
//! docs/PROTOCOL.md and README.md validates against the schema of its kind
//! (and the worker's decoder agrees), examples the docs show as refused are
//! refused with the text the docs give, and docs/asyncapi.yaml holds
//! together: it parses, every `$ref` leads somewhere, every message has a
//! payload, and its names are the protocol's.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;
use session_guard_protocol::dead_letter::ErrorKind;
use session_guard_protocol::event::{AppName, EventKind, SessionEvent};
use session_guard_protocol::names;
use session_guard_protocol::notice::{Notice, NoticeKind};
use session_guard_protocol::revoke::{RevokeMessage, RevokeReason};
use session_guard_protocol::schema;

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(relative: &str) -> String {
    let path = repository().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A checked-in schema file, compiled.
fn validator(file: &str) -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(&read(&format!("schema/{file}"))).unwrap();
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap_or_else(|e| panic!("schema/{file}: {e}"))
}

fn errors(validator: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    validator
        .iter_errors(instance)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect()
}

/// One JSON value from a ```json block of a Markdown file.
struct Example {
    /// `file:line` of the block.
    at: String,
    value: Value,
    /// The refusal an `<!-- refused: TEXT -->` comment right before the
    /// block announces: the decoder's exact error text.
    refused: Option<String>,
}

/// Every value in every ```json block of `file`.
fn json_examples(file: &str) -> Vec<Example> {
    let text = read(file);
    let lines: Vec<&str> = text.lines().collect();
    let mut examples = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim() != "```json" {
            i += 1;
            continue;
        }
        let start = i;
        let refused = lines[..start]
            .iter()
            .rev()
            .find(|l| !l.trim().is_empty())
            .and_then(|l| l.trim().strip_prefix("<!-- refused: "))
            .and_then(|l| l.strip_suffix(" -->"))
            .map(str::to_owned);
        let end = start
            + lines[start..]
                .iter()
                .skip(1)
                .position(|l| l.trim() == "```")
                .unwrap_or_else(|| panic!("{file}:{}: unclosed block", start + 1))
            + 1;
        let block = lines[start + 1..end].join("\n");
        for value in serde_json::Deserializer::from_str(&block).into_iter::<Value>() {
            let value = value.unwrap_or_else(|e| panic!("{file}:{}: {e}", start + 1));
            examples.push(Example {
                at: format!("{file}:{}", start + 1),
                value,
                refused: refused.clone(),
            });
        }
        i = end + 1;
    }
    examples
}

/// What an example is, by its content.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Clone, Copy)]
enum Kind {
    Event,
    Revoke,
    Notice,
    DeadLetterHeaders,
}

fn kind_of(value: &Value) -> Kind {
    if value["type"] == "revoke" {
        Kind::Revoke
    } else if value["type"]
        .as_str()
        .is_some_and(|t| NoticeKind::parse(t) != NoticeKind::Other)
    {
        Kind::Notice
    } else if value.get(names::ERROR_KIND_HEADER).is_some()
        || value.get(names::ERROR_HEADER).is_some()
    {
        Kind::DeadLetterHeaders
    } else {
        Kind::Event
    }
}

/// Checks the examples of `file`; returns how many of each kind it has.
fn check_examples(file: &str) -> Vec<(Kind, bool)> {
    let events = validator(schema::EVENT_FILE);
    let revokes = validator(schema::REVOKE_FILE);
    let notices = validator(schema::NOTICE_FILE);
    let headers = validator(schema::DEAD_LETTER_HEADERS_FILE);
    let mut seen = Vec::new();
    for Example { at, value, refused } in json_examples(file) {
        let kind = kind_of(&value);
        let problems = match kind {
            Kind::Event => errors(&events, &value),
            Kind::Revoke => errors(&revokes, &value),
            Kind::Notice => errors(&notices, &value),
            Kind::DeadLetterHeaders => errors(&headers, &value),
        };
        match &refused {
            None => {
                assert!(
                    problems.is_empty(),
                    "{at}: {kind:?} example refused: {problems:#?}"
                );
                match kind {
                    Kind::Event => {
                        if let Err(e) = SessionEvent::decode(value.to_string().as_bytes()) {
                            panic!("{at}: the worker refuses this example: {e}");
                        }
                    }
                    Kind::Revoke => {
                        let revoke: RevokeMessage = serde_json::from_value(value.clone())
                            .unwrap_or_else(|e| panic!("{at}: {e}"));
                        assert_ne!(revoke.reason(), RevokeReason::Other, "{at}");
                    }
                    Kind::Notice => {
                        let notice: Notice = serde_json::from_value(value.clone())
                            .unwrap_or_else(|e| panic!("{at}: {e}"));
                        assert_ne!(notice.kind(), NoticeKind::Other, "{at}");
                    }
                    Kind::DeadLetterHeaders => {
                        let kind = value[names::ERROR_KIND_HEADER].as_str().unwrap();
                        assert!(ErrorKind::parse(kind).is_some(), "{at}: {kind}");
                    }
                }
            }
            Some(text) => {
                assert!(
                    !problems.is_empty(),
                    "{at}: the schema accepts an example shown as refused"
                );
                if kind == Kind::Event {
                    let error = SessionEvent::decode(value.to_string().as_bytes())
                        .expect_err(&at)
                        .to_string();
                    assert_eq!(&error, text, "{at}: the docs give another refusal");
                }
            }
        }
        seen.push((kind, refused.is_some()));
    }
    seen
}

#[test]
fn every_example_in_protocol_md_matches_its_schema() {
    let seen = check_examples("docs/PROTOCOL.md");
    let count = |k: Kind, refused: bool| seen.iter().filter(|s| **s == (k, refused)).count();
    assert!(count(Kind::Event, false) >= 4, "{seen:?}");
    assert!(count(Kind::Event, true) >= 2, "{seen:?}");
    assert!(count(Kind::Revoke, false) >= 1, "{seen:?}");
    assert!(count(Kind::Notice, false) >= 1, "{seen:?}");
    assert!(count(Kind::DeadLetterHeaders, false) >= 1, "{seen:?}");
}

#[test]
fn every_example_in_the_readme_matches_its_schema() {
    let seen = check_examples("README.md");
    let kinds: BTreeSet<Kind> = seen.iter().map(|(k, _)| *k).collect();
    assert!(
        kinds.contains(&Kind::Event) && kinds.contains(&Kind::Revoke),
        "{seen:?}"
    );
}

#[test]
fn the_refused_marker_is_the_comment_before_a_block() {
    // The marker is read as the test expects: the comment right before a
    // block, blank lines allowed in between.
    let dir = std::env::temp_dir().join(format!("sg-docs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let doc = "x\n<!-- refused: missing field user_id -->\n\n```json\n{\"a\": 1}\n```\n\n```json\n{\"b\": 2} {\"c\": 3}\n```\n";
    std::fs::write(dir.join("doc.md"), doc).unwrap();
    let relative = dir.join("doc.md");
    let examples = json_examples(relative.to_str().unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
    let marks: Vec<Option<&str>> = examples.iter().map(|e| e.refused.as_deref()).collect();
    assert_eq!(marks, [Some("missing field user_id"), None, None]);
}

// ---- docs/asyncapi.yaml ----

fn asyncapi() -> Value {
    serde_yaml_ng::from_str(&read("docs/asyncapi.yaml")).expect("docs/asyncapi.yaml is YAML")
}

/// Resolves a JSON pointer (`/a/b`, with `~1` and `~0` escapes).
fn resolve<'a>(doc: &'a Value, pointer: &str) -> Option<&'a Value> {
    if pointer.is_empty() {
        return Some(doc);
    }
    doc.pointer(pointer)
}

/// Every `$ref` under `value`, with where it is.
fn refs(value: &Value, at: &str, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                if key == "$ref" {
                    out.push((
                        at.to_owned(),
                        v.as_str().expect("$ref is a string").to_owned(),
                    ));
                } else {
                    refs(v, &format!("{at}/{key}"), out);
                }
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                refs(v, &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// The JSON a `$ref` leads to: in the document, or in a file beside it.
fn target(doc: &Value, reference: &str) -> Value {
    let (file, pointer) = reference.split_once('#').unwrap_or((reference, ""));
    if file.is_empty() {
        return resolve(doc, pointer)
            .unwrap_or_else(|| panic!("{reference} leads nowhere"))
            .clone();
    }
    let path = repository().join("docs").join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{reference}: {}: {e}", path.display()));
    let json: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{reference}: {e}"));
    resolve(&json, pointer)
        .unwrap_or_else(|| panic!("{reference} leads nowhere"))
        .clone()
}

#[test]
fn the_asyncapi_document_parses_and_every_ref_resolves() {
    let doc = asyncapi();
    assert_eq!(doc["asyncapi"], "3.0.0");
    let mut all = Vec::new();
    refs(&doc, "", &mut all);
    assert!(all.len() > 20, "{all:?}");
    let mut files = BTreeSet::new();
    for (at, reference) in &all {
        target(&doc, reference);
        if let Some(file) = reference.split('#').next().filter(|f| !f.is_empty()) {
            files.insert(file.to_owned());
            assert!(
                file.starts_with("../schema/"),
                "{at}: {reference} is not one of the generated schemas"
            );
        }
    }
    let generated: BTreeSet<String> = schema::all()
        .iter()
        .map(|(name, _)| format!("../schema/{name}"))
        .collect();
    assert_eq!(
        files, generated,
        "every schema file is used, and only those"
    );
}

#[test]
fn every_message_has_a_payload_and_its_examples_validate() {
    let doc = asyncapi();
    let messages = doc["components"]["messages"].as_object().unwrap();
    assert_eq!(
        messages.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        BTreeSet::from(["deadLetter", "notice", "revoke", "sessionEvent"])
    );
    for (name, message) in messages {
        let payload = message
            .get("payload")
            .unwrap_or_else(|| panic!("message {name} has no payload"));
        assert_eq!(
            payload["schemaFormat"], "application/schema+json;version=draft-07",
            "{name}: the schemas are draft-07"
        );
        let content_type = message
            .get("contentType")
            .or(doc.get("defaultContentType"))
            .unwrap();
        assert_eq!(content_type, "application/json", "{name}");
        let compile = |part: &Value| {
            let schema = match part["schema"].get("$ref") {
                Some(r) => target(&doc, r.as_str().unwrap()),
                None => part["schema"].clone(),
            };
            jsonschema::options()
                .should_validate_formats(true)
                .build(&schema)
                .unwrap_or_else(|e| panic!("{name}: {e}"))
        };
        let payload_schema = compile(payload);
        let headers_schema = message.get("headers").map(compile);
        let examples = message["examples"]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: no examples"));
        for example in examples {
            let problems = errors(&payload_schema, &example["payload"]);
            assert!(
                problems.is_empty(),
                "{name} {}: {problems:#?}",
                example["name"]
            );
            if let Some(headers) = &headers_schema {
                let problems = errors(headers, &example["headers"]);
                assert!(
                    problems.is_empty(),
                    "{name} {}: {problems:#?}",
                    example["name"]
                );
            }
        }
    }
}

#[test]
fn operations_use_their_channels_messages_and_addresses_their_parameters() {
    let doc = asyncapi();
    let channels = doc["channels"].as_object().unwrap();
    for (name, channel) in channels {
        let address = channel["address"].as_str().unwrap();
        let in_address: BTreeSet<String> = address
            .split('{')
            .skip(1)
            .map(|s| s.split('}').next().unwrap().to_owned())
            .collect();
        let declared: BTreeSet<String> = channel
            .get("parameters")
            .and_then(Value::as_object)
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default();
        assert_eq!(in_address, declared, "channel {name}: {address}");
        assert!(
            channel["messages"]
                .as_object()
                .is_some_and(|m| !m.is_empty()),
            "{name}"
        );
    }
    let operations = doc["operations"].as_object().unwrap();
    let mut actions = BTreeSet::new();
    for (name, operation) in operations {
        let channel = operation["channel"]["$ref"].as_str().unwrap();
        let channel_name = channel.strip_prefix("#/channels/").unwrap();
        assert!(channels.contains_key(channel_name), "{name}: {channel}");
        let own = format!("{channel}/messages/");
        for message in operation["messages"].as_array().unwrap() {
            let reference = message["$ref"].as_str().unwrap();
            assert!(
                reference.starts_with(&own),
                "{name}: {reference} is not a message of {channel}"
            );
        }
        actions.insert((
            operation["action"].as_str().unwrap().to_owned(),
            channel_name.to_owned(),
        ));
    }
    for expected in [
        ("send", "events"),
        ("receive", "eventsQueue"),
        ("send", "revocations"),
        ("receive", "appRevocations"),
        ("send", "deadLetters"),
    ] {
        assert!(
            actions.contains(&(expected.0.to_owned(), expected.1.to_owned())),
            "no operation {expected:?}"
        );
    }
}

#[test]
fn the_asyncapi_names_are_the_protocols() {
    let doc = asyncapi();
    let amqp = |channel: &str| doc["channels"][channel]["bindings"]["amqp"].clone();
    assert_eq!(amqp("events")["exchange"]["name"], names::EVENTS_EXCHANGE);
    assert_eq!(amqp("events")["exchange"]["type"], "topic");
    assert_eq!(amqp("eventsQueue")["queue"]["name"], names::EVENTS_QUEUE);
    assert_eq!(
        amqp("revocations")["exchange"]["name"],
        names::REVOCATIONS_EXCHANGE
    );
    assert_eq!(amqp("revocations")["exchange"]["type"], "topic");
    assert_eq!(
        amqp("deadLetters")["exchange"]["name"],
        names::DEAD_LETTER_EXCHANGE
    );
    assert_eq!(amqp("deadLetters")["exchange"]["type"], "fanout");
    assert_eq!(
        amqp("deadLetterQueue")["queue"]["name"],
        names::DEAD_LETTER_QUEUE
    );
    for channel in ["eventsQueue", "appRevocations", "deadLetterQueue"] {
        assert_eq!(
            amqp(channel)["x-queue-arguments"]["x-queue-type"],
            "quorum",
            "{channel}"
        );
        assert_eq!(amqp(channel)["queue"]["durable"], true, "{channel}");
    }
    for channel in ["events", "revocations", "deadLetters"] {
        assert_eq!(amqp(channel)["exchange"]["durable"], true, "{channel}");
    }

    let shop = AppName::parse("shop").unwrap();
    let with_shop = |channel: &str| {
        doc["channels"][channel]["address"]
            .as_str()
            .unwrap()
            .replace("{app}", "shop")
    };
    assert_eq!(with_shop("revocations"), names::revoke_routing_key("shop"));
    assert_eq!(with_shop("appRevocations"), names::revoke_queue(&shop));
    assert_eq!(
        doc["channels"]["events"]["address"]
            .as_str()
            .unwrap()
            .replace("{type}", "login")
            .replace("{app}", "shop"),
        names::event_routing_key(EventKind::Login, &shop)
    );
    let types: Vec<&str> = doc["components"]["parameters"]["type"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(types, EventKind::ALL.map(EventKind::as_str));

    // Every AMQP property the revoke message promises is the relay's.
    let revoke = &doc["components"]["messages"]["revoke"];
    assert_eq!(revoke["bindings"]["amqp"]["messageType"], "revoke");
    assert_eq!(
        revoke["x-amqp-properties"]["message_id"],
        "$message.payload#/event_id"
    );
    let publish = &doc["operations"]["publishRevoke"]["bindings"]["amqp"];
    assert_eq!(publish["deliveryMode"], 2);
    assert_eq!(publish["mandatory"], true);
    assert_eq!(
        doc["operations"]["publishSessionEvent"]["bindings"]["amqp"]["deliveryMode"],
        2
    );
}
