//! [`DropWarning`]: the rate-limited warning about events a full buffer
//! dropped or refused.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use session_guard_protocol::event::AppName;

use super::buffer::DropCounts;

/// Least time between two warnings about dropped or refused events: a full
/// buffer drops events on every send, and one line per event would flood
/// the app's log.
const DROP_WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// Warns about dropped and refused events at most once per
/// [`DROP_WARNING_INTERVAL`], from whichever sender drops one when it is
/// due: a lock-free check on the caller's path.
pub(super) struct DropWarning {
    /// When the publisher started: the clock's origin.
    origin: Instant,
    /// Milliseconds after `origin` before which no warning is due.
    next_ms: AtomicU64,
}

impl DropWarning {
    pub(super) fn new() -> DropWarning {
        DropWarning {
            origin: Instant::now(),
            next_ms: AtomicU64::new(0),
        }
    }

    pub(super) fn note(&self, app: &AppName, counts: DropCounts) {
        let now = self.origin.elapsed().as_millis() as u64;
        let next = self.next_ms.load(Ordering::Relaxed);
        if now < next {
            return;
        }
        let after = now + DROP_WARNING_INTERVAL.as_millis() as u64;
        if self
            .next_ms
            .compare_exchange(next, after, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        tracing::warn!(
            app = app.as_str(),
            dropped_requests = counts.dropped_requests,
            refused_full = counts.refused_full,
            capacity = counts.capacity,
            "session-guard publisher: buffer full (the broker is away or slower than the app): \
             {} request events dropped and {} logins/logouts refused so far",
            counts.dropped_requests,
            counts.refused_full,
        );
    }
}
