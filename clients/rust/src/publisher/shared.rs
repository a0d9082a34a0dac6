//! [`Shared`]: what the publisher's handles and its background task share,
//! and the handing over of an event on the caller's side: coalesced,
//! checked, serialized, buffered, the task woken. Nothing here waits on the
//! network.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use session_guard_protocol::event::{AppName, EventBody, EventError, EventKind, SessionEvent};
use tokio::sync::{Notify, watch};

use super::buffer::{Buffer, Pushed};
use super::error::SendError;
use super::warning::DropWarning;
use crate::coalesce::{Coalescer, Verdict};

/// How far the background task has got, for flush and close.
#[derive(Debug, Clone, Copy)]
pub(super) struct Progress {
    /// Every event with a lower sequence number is confirmed or dropped.
    pub(super) resolved: u64,
    /// The task has not ended.
    pub(super) running: bool,
}

/// State shared by the handles and the background task.
pub(super) struct Shared {
    /// The app every event is for.
    pub(super) app: AppName,
    /// Events not yet taken by the task.
    pub(super) buffer: Mutex<Buffer>,
    /// Set by close, like the buffer's own flag: a request that would be
    /// coalesced never reaches the buffer, and must still get
    /// [`SendError::Closed`].
    pub(super) closed: AtomicBool,
    /// The sessions that published a request lately; `None` when
    /// coalescing is off (a zero [`PublisherConfig::request_interval`](crate::PublisherConfig::request_interval)).
    pub(super) coalescer: Option<Mutex<Coalescer>>,
    /// Wakes the task: new events it waits for, a flush, a close, the last
    /// handle gone.
    pub(super) wake: Notify,
    /// The task waits for new events: the next sender wakes it. Waking a
    /// parked task costs the sender a system call, so senders only do it
    /// when the task asked (not while it is busy, or waits for confirms
    /// with a full window).
    pub(super) wants_events: AtomicBool,
    /// Events confirmed by the broker.
    pub(super) published: AtomicU64,
    /// Publishes of events published before.
    pub(super) republished: AtomicU64,
    /// Events the task holds unconfirmed.
    pub(super) in_flight: AtomicUsize,
    /// Set by close once flushed: the task ends.
    pub(super) stop: AtomicBool,
    /// Every handle is gone: the task ends once it holds nothing.
    pub(super) handles_gone: AtomicBool,
    /// The task's progress, for flush and close.
    pub(super) progress: watch::Sender<Progress>,
    /// Rate limit of the warnings about dropped events.
    pub(super) drop_warning: DropWarning,
}

impl Shared {
    /// The state of a publisher of `app`'s events that buffers `capacity`
    /// at most, coalescing requests with `coalescer` if given.
    pub(super) fn new(app: AppName, capacity: usize, coalescer: Option<Coalescer>) -> Shared {
        let (progress, _) = watch::channel(Progress {
            resolved: 0,
            running: true,
        });
        Shared {
            app,
            buffer: Mutex::new(Buffer::new(capacity)),
            closed: AtomicBool::new(false),
            coalescer: coalescer.map(Mutex::new),
            wake: Notify::new(),
            wants_events: AtomicBool::new(false),
            published: AtomicU64::new(0),
            republished: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            handles_gone: AtomicBool::new(false),
            progress,
            drop_warning: DropWarning::new(),
        }
    }

    /// Hands an event over, as [`EventBuilder::send`](crate::EventBuilder::send)
    /// says: coalesced if a recent request of its session went out, checked
    /// with the worker's rules, buffered under the drop policy, and the task
    /// woken if it waits.
    pub(super) fn send(&self, body: EventBody) -> Result<(), SendError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(SendError::Closed);
        }
        let coalescer = self.coalescer.as_ref();
        // The cheap path first: a request its session made less than an
        // interval after its last published one costs a lookup, and is
        // neither checked nor serialized. An event of another app is left
        // to `prepare` to refuse.
        if body.kind == EventKind::Request
            && body.app == self.app.as_str()
            && let Some(coalescer) = coalescer
            && let Some(session) = body.session_id.as_deref()
            && lock(coalescer).check(session, body.occurred_at) == Verdict::Coalesce
        {
            return Ok(());
        }
        let json = match prepare(&self.app, &body) {
            Ok(json) => json,
            Err(e) => return Err(SendError::Invalid(e)),
        };
        // `prepare` refused every event of these kinds that names no session.
        if let Some(coalescer) = coalescer
            && let Some(session) = body.session_id.as_deref()
        {
            let mut coalescer = lock(coalescer);
            match body.kind {
                // Decided again, and recorded if it goes out, now that the
                // request is valid: another thread may have published one
                // of the same session since the check.
                EventKind::Request
                    if coalescer.admit(session, body.occurred_at) == Verdict::Coalesce =>
                {
                    return Ok(());
                }
                // The session ended: its id will not be used again.
                EventKind::Logout | EventKind::LogoutAll => coalescer.forget(session),
                // A request admitted above goes out; logins record nothing
                // (the session's first request goes at once), and the
                // session of a logout_others stays.
                _ => {}
            }
        }
        let kind = body.kind;
        let pushed = self.lock_buffer().push(kind, json);
        match pushed {
            Pushed::Queued => {
                self.event_added();
                Ok(())
            }
            Pushed::Evicted(counts) => {
                self.event_added();
                self.drop_warning.note(&self.app, counts);
                Ok(())
            }
            Pushed::Dropped(counts) => {
                self.drop_warning.note(&self.app, counts);
                Ok(())
            }
            Pushed::Full(counts) => {
                self.drop_warning.note(&self.app, counts);
                Err(SendError::BufferFull(Box::new(body)))
            }
            Pushed::Closed => Err(SendError::Closed),
        }
    }

    /// After an event was buffered: wakes the task if it waits for one.
    pub(super) fn event_added(&self) {
        // The task sets the flag before it checks the buffer under the
        // lock, and the sender pushed under the lock before reading it:
        // either the task sees the event or the sender sees the flag.
        if self.wants_events.swap(false, Ordering::AcqRel) {
            self.wake.notify_one();
        }
    }

    /// Before the task waits with room for events: `true` if one is
    /// already buffered (do not wait), else the next sender wakes it.
    pub(super) fn want_events(&self) -> bool {
        self.wants_events.store(true, Ordering::Release);
        if self.lock_buffer().len() > 0 {
            self.wants_events.store(false, Ordering::Relaxed);
            return true;
        }
        false
    }

    pub(super) fn lock_buffer(&self) -> MutexGuard<'_, Buffer> {
        lock(&self.buffer)
    }
}

/// Locks a mutex of the shared state. The buffer and the coalescer are
/// consistent after every statement that can panic (none should): a
/// poisoned lock is still usable.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Checks an event as the worker will (all but its clock) and returns the
/// message body: the exact bytes checked are the bytes published.
pub(super) fn prepare(app: &AppName, body: &EventBody) -> Result<Vec<u8>, EventError> {
    if body.app != app.as_str() {
        return Err(EventError::Invalid {
            field: "app",
            problem: format!(
                "this publisher sends events of app {:?}, not {:?}",
                app.as_str(),
                body.app
            ),
        });
    }
    let json = body.to_json();
    SessionEvent::decode(&json)?;
    Ok(json)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shop() -> AppName {
        AppName::parse("shop").unwrap()
    }

    #[test]
    fn a_claim_names_its_user_and_no_session() {
        let at = "2026-11-27T10:00:00Z".parse().unwrap();
        let claim = serde_json::json!({"roles": ["staff"]});
        let body = EventBody::claims(&shop(), "42", claim.as_object().unwrap().clone(), at);
        let json = prepare(&shop(), &body).unwrap();
        assert!(!String::from_utf8_lossy(&json).contains("session_id"));
        let event = SessionEvent::decode(&json).unwrap();
        assert_eq!(event.kind, EventKind::Attributes);
        assert_eq!(event.session_id, None);
        assert_eq!(event.user_id.unwrap().as_str(), "42");
        assert_eq!(event.attributes.unwrap()["roles"], claim["roles"]);
    }

    #[test]
    fn events_are_checked_with_the_workers_rules_before_buffering() {
        let at = "2026-11-27T10:00:00Z".parse().unwrap();
        let mut login = EventBody::new(EventKind::Login, &shop(), "s1", at);
        assert_eq!(
            prepare(&shop(), &login).unwrap_err().to_string(),
            "missing field user_id"
        );
        login.user_id = Some("42".into());
        let json = prepare(&shop(), &login).unwrap();
        let event = SessionEvent::decode(&json).unwrap();
        assert_eq!(event.session_id.unwrap().as_str(), "s1");
        login.session_id = Some(String::new());
        assert_eq!(
            prepare(&shop(), &login).unwrap_err().to_string(),
            "session_id: must be 1-256 characters, got 0"
        );
        let blog = EventBody::new(
            EventKind::Logout,
            &AppName::parse("blog").unwrap(),
            "s1",
            at,
        );
        assert_eq!(
            prepare(&shop(), &blog).unwrap_err().to_string(),
            "app: this publisher sends events of app \"shop\", not \"blog\""
        );
    }
}
