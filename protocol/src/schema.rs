//! The contract as JSON Schemas (draft-07, which the AsyncAPI document and
//! most validators and code generators take), generated from the types of
//! this crate: the repository's `schema/*.schema.json` are these, written
//! out by [`to_text`]. Apps in other languages validate against those files
//! or generate their types from them.
//!
//! A test compares the files with what this module generates and fails when
//! they differ; `SG_UPDATE_SCHEMAS=1 cargo test -p session-guard-protocol
//! --test schemas` writes them anew.

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema};
use serde_json::Value;

use crate::dead_letter::DeadLetterHeaders;
use crate::event::EventBody;
use crate::notice::Notice;
use crate::revoke::RevokeMessage;

/// The command that regenerates the checked-in schemas.
pub const REGENERATE: &str =
    "SG_UPDATE_SCHEMAS=1 cargo test -p session-guard-protocol --test schemas";

/// File name of the schema of the events apps publish.
pub const EVENT_FILE: &str = "event.schema.json";
/// File name of the schema of the revoke events apps receive.
pub const REVOKE_FILE: &str = "revoke.schema.json";
/// File name of the schema of the notices apps receive.
pub const NOTICE_FILE: &str = "notice.schema.json";
/// File name of the schema of the headers of a dead-lettered message.
pub const DEAD_LETTER_HEADERS_FILE: &str = "dead-letter-headers.schema.json";

/// A session event as apps publish it ([`EventBody`]).
pub fn event() -> Schema {
    generate::<EventBody>()
}

/// A revoke event as apps receive it ([`RevokeMessage`]).
pub fn revoke() -> Schema {
    generate::<RevokeMessage>()
}

/// A notice as apps receive it ([`Notice`]).
pub fn notice() -> Schema {
    generate::<Notice>()
}

/// The headers the worker adds to a dead-lettered message
/// ([`DeadLetterHeaders`]).
pub fn dead_letter_headers() -> Schema {
    generate::<DeadLetterHeaders>()
}

/// Every schema with its file name, in a fixed order.
pub fn all() -> [(&'static str, Schema); 4] {
    [
        (EVENT_FILE, event()),
        (REVOKE_FILE, revoke()),
        (NOTICE_FILE, notice()),
        (DEAD_LETTER_HEADERS_FILE, dead_letter_headers()),
    ]
}

/// The text of a schema file: pretty JSON and a final newline.
pub fn to_text(schema: &Schema) -> String {
    let mut text = serde_json::to_string_pretty(schema).expect("a schema always serializes");
    text.push('\n');
    text
}

fn generate<T: JsonSchema>() -> Schema {
    let mut schema = SchemaSettings::draft07()
        .into_generator()
        .into_root_schema_for::<T>();
    schema.insert(
        "$comment".into(),
        format!(
            "Generated from the session-guard-protocol crate's types; do not edit. \
             Regenerate: {REGENERATE}"
        )
        .into(),
    );
    Schema::try_from(tidy(schema.to_value())).expect("still an object")
}

/// The same schema with every object's keys sorted, and doc comments' line
/// breaks within a paragraph turned into spaces. serde_json keeps insertion
/// order or sorts, depending on a feature another crate of the build may turn
/// on; sorted here, the files do not depend on which crates are built
/// together (schemars then puts its usual keywords first).
fn tidy(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map
                .into_iter()
                .map(|(key, value)| match value {
                    Value::String(text) if key == "description" => {
                        (key, Value::String(unwrap_lines(&text)))
                    }
                    other => (key, tidy(other)),
                })
                .collect();
            entries.sort_by(|(a, _), (b, _)| a.cmp(b));
            Value::Object(entries.into_iter().collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(tidy).collect()),
        other => other,
    }
}

/// Paragraphs stay apart; lines within one are joined.
fn unwrap_lines(text: &str) -> String {
    text.split("\n\n")
        .map(|paragraph| {
            paragraph
                .lines()
                .map(str::trim)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}
