//! Default names on the broker, and how routing keys and an app's own
//! queues are named. The worker's settings start from these
//! (`config/default.toml`), and so do the clients'.

use crate::event::{AppName, EventKind};

/// Topic exchange apps publish their events to.
pub const EVENTS_EXCHANGE: &str = "session_guard.events";
/// Quorum queue the workers share, bound to [`EVENTS_EXCHANGE`] with `#`.
pub const EVENTS_QUEUE: &str = "session_guard.events";
/// Topic exchange the worker publishes revoke events to.
pub const REVOCATIONS_EXCHANGE: &str = "session_guard.revocations";
/// Topic exchange the worker publishes notices to (new device, new
/// network), with routing key `<type>.<app>`.
pub const NOTICES_EXCHANGE: &str = "session_guard.notices";
/// Fanout exchange the worker sends messages it cannot accept to.
pub const DEAD_LETTER_EXCHANGE: &str = "session_guard.dead";
/// Durable queue bound to [`DEAD_LETTER_EXCHANGE`].
pub const DEAD_LETTER_QUEUE: &str = "session_guard.dead";

/// Header the worker adds to a dead-lettered message: why it was refused.
pub const ERROR_HEADER: &str = "x-session-guard-error";
/// Header the worker adds to a dead-lettered message: the kind of refusal
/// ([`ErrorKind`](crate::dead_letter::ErrorKind): `invalid`, `forbidden`,
/// `clock_skew`, `failed`), for sorting and alerts.
pub const ERROR_KIND_HEADER: &str = "x-session-guard-error-kind";
/// Longest [`ERROR_HEADER`] value, in bytes: longer reasons are cut at a
/// character boundary.
pub const MAX_ERROR_HEADER_BYTES: usize = 1024;

/// `error` cut to at most [`MAX_ERROR_HEADER_BYTES`] on a character
/// boundary: the value of [`ERROR_HEADER`] for that reason.
pub fn error_header_value(error: &str) -> &str {
    if error.len() <= MAX_ERROR_HEADER_BYTES {
        return error;
    }
    let mut end = MAX_ERROR_HEADER_BYTES;
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    &error[..end]
}

/// The routing key of an event: `<type>.<app>`, e.g. `login.shop`.
pub fn event_routing_key(kind: EventKind, app: &AppName) -> String {
    format!("{}.{}", kind.as_str(), app.as_str())
}

/// The routing key of an app's revoke events: `revoke.<app>`. App names
/// hold only characters that are safe in a routing key.
pub fn revoke_routing_key(app: &str) -> String {
    format!("revoke.{app}")
}

/// The durable queue an app's instances share to receive its revokes once
/// per app: `<app>.revocations` (the name docs/SECURITY.md's permissions
/// expect).
pub fn revoke_queue(app: &AppName) -> String {
    format!("{}.revocations", app.as_str())
}

/// The routing key of an app's notices of kind `kind`: `<kind>.<app>`,
/// e.g. `new_device.shop`.
pub fn notice_routing_key(kind: &str, app: &str) -> String {
    format!("{kind}.{app}")
}

/// The durable queue an app's instances share to receive its notices once
/// per app: `<app>.notices`.
pub fn notice_queue(app: &AppName) -> String {
    format!("{}.notices", app.as_str())
}

/// Where an app's revokes go when its handler keeps failing on them:
/// `<app>.revocations.dead`.
pub fn revoke_dead_letter_queue(app: &AppName) -> String {
    format!("{}.revocations.dead", app.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_keys_and_queues() {
        let shop = AppName::parse("shop").unwrap();
        assert_eq!(event_routing_key(EventKind::Login, &shop), "login.shop");
        assert_eq!(
            event_routing_key(EventKind::LogoutOthers, &shop),
            "logout_others.shop"
        );
        assert_eq!(revoke_routing_key("shop"), "revoke.shop");
        assert_eq!(revoke_queue(&shop), "shop.revocations");
        assert_eq!(revoke_dead_letter_queue(&shop), "shop.revocations.dead");
        assert_eq!(notice_routing_key("new_device", "shop"), "new_device.shop");
        assert_eq!(notice_queue(&shop), "shop.notices");
        assert_eq!(error_header_value("abc"), "abc");
        let long = "é".repeat(MAX_ERROR_HEADER_BYTES);
        let cut = error_header_value(&long);
        assert_eq!(cut.len(), MAX_ERROR_HEADER_BYTES);
        assert!(cut.chars().all(|c| c == 'é'));
        let odd = format!("a{long}");
        assert_eq!(error_header_value(&odd).len(), MAX_ERROR_HEADER_BYTES - 1);
    }
}
