//! What reaches the operator's terminal: text from apps (user agents, ids,
//! attributes) is escaped so that it cannot move the cursor, rewrite the
//! screen, set the window title or reorder what is shown; and logs use
//! colours only on a terminal that wants them.

use std::borrow::Cow;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::IsTerminal as _;

/// Whether `c` must not reach a terminal raw: C0 controls (ESC, BEL, CR, LF,
/// TAB...), DEL and C1 controls (U+0080-U+009F, which some terminals obey
/// like ESC sequences), the line and paragraph separators, and the
/// bidirectional marks, embeddings, overrides and isolates (they reorder
/// the rest of the line as displayed).
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}'
                | '\u{200E}'
                | '\u{200F}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2066}'..='\u{2069}'
        )
}

/// `s` made safe to print on a terminal: TAB, LF and CR as `\t`, `\n`,
/// `\r`; other C0 controls and DEL as `\xHH` (ESC is `\x1b`); C1 controls,
/// separators and bidi controls as `\u{HHHH}` (U+202E is `\u{202e}`).
/// Everything else, backslashes and non-ASCII letters included, is kept.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if is_unsafe(c) && c.is_ascii() => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c if is_unsafe(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// JSON text (as serde_json writes it) made safe for a terminal without
/// changing its value: serde_json already writes C0 controls inside strings
/// as `\u00XX`, but not DEL, C1 or bidi controls; those become `\uXXXX`
/// escapes, which parse back to the same characters. They can only occur
/// inside strings, so the replacement never touches the JSON's structure.
pub fn escape_json(json: &str) -> Cow<'_, str> {
    let raw = |c: char| is_unsafe(c) && u32::from(c) >= 0x7f;
    if !json.chars().any(raw) {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if raw(c) {
            // Every such character is in the Basic Multilingual Plane: one
            // \uXXXX escape, no surrogate pair.
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Whether logs written to stderr may use ANSI colours: only when stderr is
/// a terminal, and `NO_COLOR` (<https://no-color.org>) is unset or empty.
pub fn stderr_colours() -> bool {
    colours(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR"),
    )
}

fn colours(is_terminal: bool, no_color: Option<OsString>) -> bool {
    is_terminal && no_color.is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_escaped_and_text_is_kept() {
        assert_eq!(
            escape("evil\u{1b}[2J\u{1b}]0;pwned\u{7}agent\r\n\tx\u{7f}"),
            "evil\\x1b[2J\\x1b]0;pwned\\x07agent\\r\\n\\tx\\x7f"
        );
        assert_eq!(escape("a\u{9b}31mb\u{85}"), "a\\u{9b}31mb\\u{85}");
        assert_eq!(
            escape("user\u{202e}gnp.exe\u{2066}x\u{2069}\u{200f}\u{2028}"),
            "user\\u{202e}gnp.exe\\u{2066}x\\u{2069}\\u{200f}\\u{2028}"
        );
        assert_eq!(escape("\u{0}"), "\\x00");
        // Nothing to escape: borrowed, unchanged, non-ASCII and backslashes too.
        let plain = "Mozilla/5.0 (X11; Linux) — Ünïcode \\ 日本 😀";
        assert!(matches!(escape(plain), Cow::Borrowed(s) if s == plain));
    }

    #[test]
    fn escaped_text_holds_no_unsafe_character() {
        let every: String = (0u32..=0x3000).filter_map(char::from_u32).collect();
        let out = escape(&every);
        assert!(!out.chars().any(is_unsafe), "{out}");
        // Printable characters pass through in order.
        let kept: String = every.chars().filter(|&c| !is_unsafe(c)).collect();
        assert_eq!(
            out.chars().filter(|c| !c.is_ascii()).collect::<String>(),
            kept.chars().filter(|c| !c.is_ascii()).collect::<String>()
        );
    }

    #[test]
    fn json_escaping_keeps_the_value() {
        let value = serde_json::json!({
            "user_agent": "a\u{1b}[31m\u{7}\r\n\u{7f}\u{9b}1m\u{202e}x\u{2069}é",
            "n": 1,
        });
        let text = serde_json::to_string_pretty(&value).unwrap();
        let safe = escape_json(&text);
        assert!(!safe.chars().any(|c| is_unsafe(c) && c != '\n'), "{safe}");
        assert!(
            safe.contains("\\u202e") && safe.contains("\\u009b"),
            "{safe}"
        );
        let back: serde_json::Value = serde_json::from_str(&safe).unwrap();
        assert_eq!(back, value);
        let plain = serde_json::to_string_pretty(&serde_json::json!({"a": "é"})).unwrap();
        assert!(matches!(escape_json(&plain), Cow::Borrowed(_)));
    }

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        assert!(colours(true, None));
        assert!(colours(true, Some(OsString::new())));
        assert!(!colours(true, Some(OsString::from("1"))));
        assert!(!colours(false, None));
    }
}
