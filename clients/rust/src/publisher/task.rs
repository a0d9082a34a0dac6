//! [`Task`]: the background task. It takes events from the buffer in order,
//! keeps up to `max_in_flight` of them unconfirmed at once, and holds every
//! one of them until its ack. A connection loss, a nack or an unroutable
//! return ends the connection; after a jittered pause the task connects
//! again and publishes the unconfirmed events again, oldest first, before
//! anything newer.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::FutureExt as _;
use futures::stream::StreamExt as _;
use lapin::Confirmation;
use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use session_guard_amqp::backoff::Backoff;
use session_guard_protocol::event::EventKind;

use super::buffer::Entry;
use super::config::PublisherConfig;
use super::link::{Link, Tagged, Target, close_in_background};
use super::shared::Shared;
use crate::connection::CLOSE_TIMEOUT;

/// Most events the task takes from the buffer per lock, so senders never
/// wait long behind it.
const TAKE_BATCH: usize = 64;

/// An event the task took from the buffer and the broker has not confirmed.
struct Unconfirmed {
    /// What happened: picks the routing key.
    kind: EventKind,
    /// The message body.
    body: Vec<u8>,
    /// Times it was published.
    attempts: u32,
}

/// Why the task gave a connection up.
#[derive(Debug)]
enum Fault {
    /// The connection or channel failed (or the broker closed it).
    Broker(lapin::Error),
    /// The broker refused a message.
    Nack,
    /// No queue is bound for the routing key: the message was returned.
    Unroutable {
        /// The exchange it was published to.
        exchange: ShortString,
        /// Its routing key.
        routing_key: ShortString,
    },
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Broker(e) => write!(f, "connection lost: {e}"),
            Fault::Nack => f.write_str("the broker refused an event (nack)"),
            Fault::Unroutable {
                exchange,
                routing_key,
            } => write!(
                f,
                "the broker returned an event: no queue is bound to exchange {exchange} for \
                 routing key {routing_key} (is it session-guard's events exchange, and has \
                 session-guard declared its queue?)"
            ),
        }
    }
}

/// The background task: takes events from the buffer, publishes them, keeps
/// them until confirmed, reconnects.
pub(super) struct Task {
    /// State shared with the handles.
    shared: Arc<Shared>,
    /// Where to publish.
    target: Target,
    /// Most events held unconfirmed.
    max_in_flight: usize,
    /// Events taken from the buffer and not confirmed, by sequence number.
    unconfirmed: BTreeMap<u64, Unconfirmed>,
    /// Those of `unconfirmed` to publish (again) on the current connection,
    /// oldest first.
    unsent: BTreeSet<u64>,
    /// Pauses between connection attempts.
    backoff: Backoff,
    /// Events just taken from the buffer (kept for its allocation).
    taken: Vec<Entry>,
    /// After a reconnect, until every event held then is confirmed: the
    /// newest of them (`None` if there were none). The backoff starts over
    /// only then, so a broker that accepts connections but refuses or
    /// cannot route an event is not retried at full speed.
    recovering: Option<Option<u64>>,
}

/// Marks the task as ended when it returns, panics or is dropped with its
/// runtime, so flush and close do not wait for it forever.
struct RunningGuard(Arc<Shared>);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.progress.send_modify(|p| p.running = false);
    }
}

impl Task {
    pub(super) fn new(shared: Arc<Shared>, target: Target, config: &PublisherConfig) -> Task {
        Task {
            shared,
            target,
            max_in_flight: config.max_in_flight,
            unconfirmed: BTreeMap::new(),
            unsent: BTreeSet::new(),
            backoff: Backoff::new(config.max_backoff),
            taken: Vec::with_capacity(TAKE_BATCH),
            recovering: Some(None),
        }
    }

    pub(super) async fn run(mut self, link: Link) {
        let _running = RunningGuard(self.shared.clone());
        let mut link = Some(link);
        loop {
            if let Some(current) = link.as_mut() {
                match self.pump(current).await {
                    Ok(()) => {
                        if let Some(done) = link.take() {
                            // Close returns once the connection is closed.
                            let _ = tokio::time::timeout(
                                CLOSE_TIMEOUT,
                                done.connection
                                    .close(200, "session-guard publisher closed".into()),
                            )
                            .await;
                        }
                        self.report_progress();
                        return;
                    }
                    Err(fault) => {
                        if let Some(lost) = link.take() {
                            close_in_background(lost.connection, Some(lost.channel));
                        }
                        self.requeue();
                        tracing::warn!(
                            app = self.shared.app.as_str(),
                            unconfirmed = self.unconfirmed.len(),
                            "session-guard publisher: {fault}; reconnecting; the {} unconfirmed \
                             events it holds go first on the next connection",
                            self.unconfirmed.len()
                        );
                        if !self.pause().await {
                            return;
                        }
                    }
                }
                continue;
            }
            if self.finished() {
                return;
            }
            if self.unconfirmed.is_empty() && !self.shared.want_events() {
                // Nothing to publish: connect when there is.
                self.report_progress();
                self.shared.wake.notified().await;
                continue;
            }
            match Link::open(&self.target).await {
                Ok(opened) => {
                    tracing::info!(
                        app = self.shared.app.as_str(),
                        "session-guard publisher: connected to {}",
                        opened.shown_url
                    );
                    self.recovering = Some(self.unconfirmed.keys().next_back().copied());
                    link = Some(opened);
                }
                Err(e) => {
                    tracing::warn!(
                        app = self.shared.app.as_str(),
                        "session-guard publisher: cannot connect to {}: {e}; {} events held",
                        self.target.brokers.shown(),
                        self.unconfirmed.len() + self.shared.lock_buffer().len()
                    );
                    if !self.pause().await {
                        return;
                    }
                }
            }
        }
    }

    /// Close was called and everything is flushed, or every handle is gone
    /// and nothing is left to publish.
    fn finished(&self) -> bool {
        if self.shared.stop.load(Ordering::Acquire) {
            return true;
        }
        self.shared.handles_gone.load(Ordering::Acquire)
            && self.unconfirmed.is_empty()
            && self.shared.lock_buffer().len() == 0
    }

    /// Publishes until the task is finished (`Ok`) or the connection fails.
    async fn pump(&mut self, link: &mut Link) -> Result<(), Fault> {
        loop {
            // Confirms that are in: no waiting.
            while let Some(Some((seq, result))) = link.confirms.next().now_or_never() {
                self.confirmed(seq, result)?;
            }
            if self.unsent.is_empty() && self.unconfirmed.len() < self.max_in_flight {
                self.take();
            }
            if let Some(seq) = self.unsent.pop_first() {
                self.publish(link, seq).await?;
                continue;
            }
            self.report_progress();
            if self.finished() {
                return Ok(());
            }
            if self.unconfirmed.len() < self.max_in_flight && self.shared.want_events() {
                continue;
            }
            tokio::select! {
                Some((seq, result)) = link.confirms.next(), if !link.confirms.is_empty() => {
                    self.confirmed(seq, result)?;
                }
                () = self.shared.wake.notified() => {}
            }
        }
    }

    /// Moves events from the buffer to `unconfirmed`, as many as the window
    /// allows, a batch per lock.
    fn take(&mut self) {
        let room = self.max_in_flight.saturating_sub(self.unconfirmed.len());
        if room == 0 {
            return;
        }
        // The maps are filled after the lock is released, and the vector is
        // reused: senders wait for the moves out of the buffer only.
        let mut taken = std::mem::take(&mut self.taken);
        self.shared
            .lock_buffer()
            .take_into(room.min(TAKE_BATCH), &mut taken);
        for entry in taken.drain(..) {
            self.unsent.insert(entry.seq);
            self.unconfirmed.insert(
                entry.seq,
                Unconfirmed {
                    kind: entry.kind,
                    body: entry.body,
                    attempts: 0,
                },
            );
        }
        self.taken = taken;
        self.shared
            .in_flight
            .store(self.unconfirmed.len(), Ordering::Relaxed);
    }

    async fn publish(&mut self, link: &mut Link, seq: u64) -> Result<(), Fault> {
        let Some(event) = self.unconfirmed.get_mut(&seq) else {
            return Ok(());
        };
        let confirm = link
            .channel
            .basic_publish(
                self.target.exchange.clone(),
                self.target.routing_key(event.kind).clone(),
                BasicPublishOptions {
                    // Unroutable events come back instead of vanishing.
                    mandatory: true,
                    immediate: false,
                },
                &event.body,
                self.target.properties.clone(),
            )
            .await
            .map_err(Fault::Broker)?;
        if event.attempts > 0 {
            self.shared.republished.fetch_add(1, Ordering::Relaxed);
        }
        event.attempts += 1;
        link.confirms.push(Tagged { seq, confirm });
        Ok(())
    }

    /// Handles the broker's answer about one event.
    fn confirmed(&mut self, seq: u64, result: lapin::Result<Confirmation>) -> Result<(), Fault> {
        match result {
            Ok(Confirmation::Ack(None)) | Ok(Confirmation::NotRequested) => {
                if self.unconfirmed.remove(&seq).is_some() {
                    self.shared.published.fetch_add(1, Ordering::Relaxed);
                    self.shared
                        .in_flight
                        .store(self.unconfirmed.len(), Ordering::Relaxed);
                }
                if let Some(newest) = self.recovering {
                    let held =
                        newest.is_some_and(|n| self.unconfirmed.range(..=n).next().is_some());
                    if !held {
                        self.recovering = None;
                        self.backoff.reset();
                    }
                }
                if self.shared.progress.receiver_count() > 0 {
                    self.report_progress();
                }
                Ok(())
            }
            Ok(Confirmation::Ack(Some(returned))) => Err(Fault::Unroutable {
                exchange: returned.delivery.exchange.clone(),
                routing_key: returned.delivery.routing_key.clone(),
            }),
            Ok(Confirmation::Nack(_)) => Err(Fault::Nack),
            Err(e) => Err(Fault::Broker(e)),
        }
    }

    /// After a fault: everything unconfirmed is published again on the next
    /// connection, oldest first.
    fn requeue(&mut self) {
        self.unsent = self.unconfirmed.keys().copied().collect();
    }

    /// Sleeps before the next connection attempt, still answering flushes
    /// and handles going away. `false` if the task should end.
    async fn pause(&mut self) -> bool {
        let deadline = tokio::time::Instant::now() + self.backoff.next_delay();
        loop {
            self.report_progress();
            if self.shared.stop.load(Ordering::Acquire) {
                return false;
            }
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => return true,
                () = self.shared.wake.notified() => {}
            }
        }
    }

    /// Tells flush and close how far the task has got.
    fn report_progress(&self) {
        let buffered = self.shared.lock_buffer().first_seq();
        let resolved = self
            .unconfirmed
            .keys()
            .next()
            .map_or(buffered, |first| (*first).min(buffered));
        self.shared.progress.send_if_modified(|p| {
            let changed = p.resolved != resolved;
            p.resolved = resolved;
            changed
        });
    }
}
