//! [`Buffer`]: the events handed over and not yet taken by the background
//! task, oldest first, and the drop policy for when it is full.

use std::collections::VecDeque;

use session_guard_protocol::event::EventKind;

/// The events waiting to be taken by the background task, oldest first,
/// with the drop policy for when it is full. Pure: no I/O, no time.
pub(super) struct Buffer {
    /// Events in the order they were handed over; an evicted request leaves
    /// an empty slot until it reaches the front.
    slots: VecDeque<Slot>,
    /// Sequence numbers of the buffered requests, oldest first: the
    /// eviction order.
    requests: VecDeque<u64>,
    /// Events in `slots` that are not evicted.
    live: usize,
    /// Most live events.
    capacity: usize,
    /// The sequence number the next event gets.
    pub(super) next_seq: u64,
    /// Set by close: nothing more is taken.
    pub(super) closed: bool,
    /// Requests dropped, new or evicted.
    pub(super) dropped_requests: u64,
    /// Logins and logouts handed back because the buffer was full.
    pub(super) refused_full: u64,
}

/// A place in the buffer.
struct Slot {
    /// The event's sequence number: its place in the order of handing over.
    seq: u64,
    /// `None` once evicted.
    entry: Option<Entry>,
}

/// An event handed over: what the background task publishes.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Entry {
    /// Its place in the order of handing over.
    pub(super) seq: u64,
    /// What happened: the routing key's first part.
    pub(super) kind: EventKind,
    /// The message body.
    pub(super) body: Vec<u8>,
}

/// The drop counters after a push that dropped or refused something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct DropCounts {
    /// Requests dropped so far.
    pub(super) dropped_requests: u64,
    /// Logins and logouts refused so far.
    pub(super) refused_full: u64,
    /// The buffer's capacity.
    pub(super) capacity: usize,
}

/// What became of an event pushed into the buffer.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Pushed {
    /// Buffered.
    Queued,
    /// Buffered in place of the oldest buffered request.
    Evicted(DropCounts),
    /// A request, dropped: the buffer is full.
    Dropped(DropCounts),
    /// A login or logout refused: the buffer is full of them.
    Full(DropCounts),
    /// The publisher is closed.
    Closed,
}

impl Buffer {
    pub(super) fn new(capacity: usize) -> Buffer {
        Buffer {
            slots: VecDeque::new(),
            requests: VecDeque::new(),
            live: 0,
            capacity,
            next_seq: 0,
            closed: false,
            dropped_requests: 0,
            refused_full: 0,
        }
    }

    /// Events buffered.
    pub(super) fn len(&self) -> usize {
        self.live
    }

    fn counts(&self) -> DropCounts {
        DropCounts {
            dropped_requests: self.dropped_requests,
            refused_full: self.refused_full,
            capacity: self.capacity,
        }
    }

    /// Adds an event, applying the drop policy when full.
    pub(super) fn push(&mut self, kind: EventKind, body: Vec<u8>) -> Pushed {
        if self.closed {
            return Pushed::Closed;
        }
        let mut evicted = false;
        if self.live >= self.capacity {
            if kind == EventKind::Request {
                self.dropped_requests += 1;
                return Pushed::Dropped(self.counts());
            }
            let Some(oldest) = self.requests.pop_front() else {
                self.refused_full += 1;
                return Pushed::Full(self.counts());
            };
            // Slots are in sequence order: binary search finds it.
            if let Ok(i) = self.slots.binary_search_by_key(&oldest, |s| s.seq) {
                self.slots[i].entry = None;
            }
            self.live -= 1;
            self.dropped_requests += 1;
            self.trim_front();
            evicted = true;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        if kind == EventKind::Request {
            self.requests.push_back(seq);
        }
        self.slots.push_back(Slot {
            seq,
            entry: Some(Entry { seq, kind, body }),
        });
        self.live += 1;
        if evicted {
            Pushed::Evicted(self.counts())
        } else {
            Pushed::Queued
        }
    }

    /// Moves the oldest buffered events, at most `max`, to `taken`, in
    /// order.
    pub(super) fn take_into(&mut self, max: usize, taken: &mut Vec<Entry>) {
        let start = taken.len();
        while taken.len() - start < max {
            match self.slots.pop_front() {
                Some(Slot {
                    entry: Some(entry), ..
                }) => taken.push(entry),
                Some(_) => {}
                None => break,
            }
        }
        if let Some(last) = taken.last() {
            // Requests up to the last one taken have all left.
            while self.requests.front().is_some_and(|seq| *seq <= last.seq) {
                self.requests.pop_front();
            }
        }
        self.live -= taken.len() - start;
        self.trim_front();
    }

    /// Drops the evicted slots at the front.
    fn trim_front(&mut self) {
        while self.slots.front().is_some_and(|s| s.entry.is_none()) {
            self.slots.pop_front();
        }
    }

    /// The sequence number of the oldest buffered event, or of the next one
    /// if none is: every event before it has left the buffer.
    pub(super) fn first_seq(&self) -> u64 {
        self.slots.front().map_or(self.next_seq, |s| s.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(kind: EventKind, n: u32) -> Vec<u8> {
        format!("{}-{n}", kind.as_str()).into_bytes()
    }

    fn push(b: &mut Buffer, kind: EventKind, n: u32) -> Pushed {
        b.push(kind, body(kind, n))
    }

    fn take(b: &mut Buffer, max: usize) -> Vec<Entry> {
        let mut taken = Vec::new();
        b.take_into(max, &mut taken);
        taken
    }

    fn drain(b: &mut Buffer) -> Vec<String> {
        take(b, usize::MAX)
            .into_iter()
            .map(|e| String::from_utf8(e.body).unwrap())
            .collect()
    }

    #[test]
    fn a_full_buffer_drops_new_requests_and_keeps_what_it_holds() {
        let mut b = Buffer::new(3);
        assert_eq!(push(&mut b, EventKind::Login, 1), Pushed::Queued);
        assert_eq!(push(&mut b, EventKind::Request, 1), Pushed::Queued);
        assert_eq!(push(&mut b, EventKind::Request, 2), Pushed::Queued);
        assert_eq!(
            push(&mut b, EventKind::Request, 3),
            Pushed::Dropped(DropCounts {
                dropped_requests: 1,
                refused_full: 0,
                capacity: 3
            })
        );
        assert_eq!(b.len(), 3);
        assert_eq!(drain(&mut b), ["login-1", "request-1", "request-2"]);
    }

    #[test]
    fn a_login_or_logout_evicts_the_oldest_request_and_the_order_stays() {
        let mut b = Buffer::new(4);
        push(&mut b, EventKind::Request, 1);
        push(&mut b, EventKind::Login, 1);
        push(&mut b, EventKind::Request, 2);
        push(&mut b, EventKind::Request, 3);
        assert!(matches!(
            push(&mut b, EventKind::Logout, 1),
            Pushed::Evicted(DropCounts {
                dropped_requests: 1,
                ..
            })
        ));
        assert!(matches!(
            push(&mut b, EventKind::LogoutOthers, 1),
            Pushed::Evicted(DropCounts {
                dropped_requests: 2,
                ..
            })
        ));
        assert_eq!(b.len(), 4);
        assert_eq!(b.dropped_requests, 2);
        assert_eq!(
            drain(&mut b),
            ["login-1", "request-3", "logout-1", "logout_others-1"]
        );
        assert_eq!(b.len(), 0);
    }

    #[test]
    fn with_no_request_left_a_login_is_refused_and_counted() {
        let mut b = Buffer::new(2);
        push(&mut b, EventKind::Login, 1);
        push(&mut b, EventKind::Request, 1);
        assert!(matches!(
            push(&mut b, EventKind::LogoutAll, 1),
            Pushed::Evicted(_)
        ));
        assert_eq!(
            push(&mut b, EventKind::Login, 2),
            Pushed::Full(DropCounts {
                dropped_requests: 1,
                refused_full: 1,
                capacity: 2
            })
        );
        // A request is still dropped, not refused.
        assert!(matches!(
            push(&mut b, EventKind::Request, 2),
            Pushed::Dropped(_)
        ));
        assert_eq!((b.dropped_requests, b.refused_full), (2, 1));
        assert_eq!(drain(&mut b), ["login-1", "logout_all-1"]);
        // Room again once the task took them.
        assert_eq!(push(&mut b, EventKind::Login, 3), Pushed::Queued);
    }

    #[test]
    fn taking_requests_keeps_the_eviction_order_right() {
        let mut b = Buffer::new(3);
        push(&mut b, EventKind::Request, 1);
        push(&mut b, EventKind::Request, 2);
        push(&mut b, EventKind::Login, 1);
        assert_eq!(
            take(&mut b, 1).pop().map(|e| e.body),
            Some(b"request-1".to_vec()),
            "the task takes the oldest"
        );
        push(&mut b, EventKind::Request, 3);
        // Full: the oldest request still buffered is request-2.
        assert!(matches!(
            push(&mut b, EventKind::Login, 2),
            Pushed::Evicted(_)
        ));
        assert_eq!(drain(&mut b), ["login-1", "request-3", "login-2"]);
    }

    #[test]
    fn sequence_numbers_follow_the_handing_over_and_evictions_leave_bounded_gaps() {
        let mut b = Buffer::new(100);
        for n in 0..100 {
            push(&mut b, EventKind::Request, n);
        }
        assert_eq!(b.first_seq(), 0);
        // Every request evicted, one by one, by logins.
        for n in 0..100 {
            assert!(matches!(
                push(&mut b, EventKind::Login, n),
                Pushed::Evicted(_)
            ));
            assert!(b.slots.len() <= 2 * b.capacity);
        }
        // The evicted requests have left the front.
        assert_eq!(b.first_seq(), 100);
        assert_eq!(b.slots.len(), 100);
        let first = take(&mut b, 1).pop().unwrap();
        assert_eq!((first.seq, first.kind), (100, EventKind::Login));
        assert_eq!(b.first_seq(), 101);
        let next: Vec<u64> = take(&mut b, 3).iter().map(|e| e.seq).collect();
        assert_eq!(next, [101, 102, 103]);
        drain(&mut b);
        assert_eq!(b.first_seq(), b.next_seq);
        assert_eq!(b.next_seq, 200);
    }

    #[test]
    fn a_closed_buffer_takes_nothing() {
        let mut b = Buffer::new(2);
        b.closed = true;
        assert_eq!(push(&mut b, EventKind::Login, 1), Pushed::Closed);
        assert_eq!(b.len(), 0);
    }
}
