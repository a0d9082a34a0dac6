//! Browser, OS and kind of device from a user agent, by woothee's rule set
//! (never a parser of our own).

use session_guard_protocol::api::{Device, DeviceKind};

/// What woothee says for a value it does not know.
const UNKNOWN: &str = woothee::woothee::VALUE_UNKNOWN;

/// The device a user agent describes; every field unknown without one.
pub fn device(user_agent: Option<&str>) -> Device {
    let Some(parsed) = user_agent.and_then(|ua| woothee::parser::Parser::new().parse(ua)) else {
        return Device {
            browser: None,
            os: None,
            kind: DeviceKind::Unknown,
        };
    };
    let known = |s: &str| (s != UNKNOWN && !s.is_empty()).then(|| s.to_owned());
    // woothee has no tablet category: an iPad is a "smartphone" whose OS
    // is "iPad".
    let kind = match parsed.category {
        _ if parsed.os == "iPad" => DeviceKind::Tablet,
        "pc" => DeviceKind::Desktop,
        "smartphone" | "mobilephone" => DeviceKind::Phone,
        "crawler" => DeviceKind::Bot,
        _ => DeviceKind::Unknown,
    };
    Device {
        browser: known(parsed.name),
        os: known(parsed.os),
        kind,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_user_agents_give_browser_os_and_kind() {
        let cases = [
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) \
                 Chrome/120.0.0.0 Safari/537.36",
                DeviceKind::Desktop,
            ),
            (
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 \
                 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
                DeviceKind::Phone,
            ),
            (
                "Mozilla/5.0 (iPad; CPU OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like \
                 Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
                DeviceKind::Tablet,
            ),
            (
                "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
                DeviceKind::Bot,
            ),
        ];
        for (ua, kind) in cases {
            assert_eq!(device(Some(ua)).kind, kind, "{ua}");
        }
        let chrome = device(Some(cases[0].0));
        assert_eq!(chrome.browser.as_deref(), Some("Chrome"));
        assert_eq!(chrome.os.as_deref(), Some("Windows 10"));
        let none = device(None);
        assert_eq!(
            (none.browser, none.os, none.kind),
            (None, None, DeviceKind::Unknown)
        );
        assert_eq!(device(Some("curl-ish thing")).kind, DeviceKind::Unknown);
    }
}
