//! How a batch ended: what it did when it committed ([`BatchOutcome`]),
//! and why it did not when it did not ([`BatchError`]).

use std::collections::BTreeMap;

use crate::db;
use crate::refusal::Refusal;

/// What one batch did, for logs and metrics.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Sessions revoked (limits, idle timeout, logout_others, logout_all),
    /// by reason (`EndReason::as_str`); [`BatchOutcome::revoked`] adds them up.
    pub revoked_by: BTreeMap<&'static str, usize>,
    /// Sessions shadow mode would have revoked.
    pub shadow_revoked: usize,
    /// Revoke messages repeated for sessions an app kept using.
    pub repeated: usize,
    /// Rows moved out of the log by retention.
    pub pruned: u64,
    /// Users locked (those whose sessions the batch could add, end or revoke).
    pub locked_users: usize,
    /// Rows of users not locked, updated by the monotonic touch statement.
    pub touched: usize,
    /// Rows whose only change, a `last_seen_at` moved by less than the
    /// resolution, was not written.
    pub coalesced: usize,
    /// Passes run again with more users locked (at most
    /// [`MAX_PASSES`](super::MAX_PASSES) - 1).
    pub relocks: usize,
}

impl BatchOutcome {
    /// Whether the outbox received messages the relay should publish now.
    pub fn wrote_outbox(&self) -> bool {
        self.revoked() + self.repeated > 0
    }

    /// Sessions revoked, whatever the reason.
    pub fn revoked(&self) -> usize {
        self.revoked_by.values().sum()
    }
}

/// Why a batch was not committed.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// No connection or transaction could be had: never the events' fault.
    #[error("cannot start a transaction: {0}")]
    Connect(#[source] sqlx::Error),
    /// A statement (or the commit) failed.
    #[error(transparent)]
    Statement(#[from] sqlx::Error),
    /// Every pass found more users to lock, up to
    /// [`MAX_PASSES`](super::MAX_PASSES): heavy
    /// contention on the batch's users. Retrying later starts over.
    #[error("the batch still needed more user locks after {0} passes")]
    TooManyPasses(usize),
}

impl BatchError {
    /// Whether retrying the same events later can succeed: everything but
    /// errors that point at the events' own data.
    pub fn is_transient(&self) -> bool {
        match self {
            BatchError::Connect(_) | BatchError::TooManyPasses(_) => true,
            BatchError::Statement(e) => db::is_transient(e),
        }
    }
}

impl BatchError {
    /// The refusal behind the error, if PostgreSQL refused the worker's
    /// credentials or permissions (see [`crate::refusal`]).
    pub fn refusal(&self) -> Option<Refusal> {
        match self {
            BatchError::Connect(e) | BatchError::Statement(e) => Refusal::of_database(e),
            BatchError::TooManyPasses(_) => None,
        }
    }
}
