//! The database statements, one module per table or concern. Nothing here
//! decides anything: `apply` decides what a batch or an operator changes,
//! and calls these to read and write it; the relay, the sweep and the
//! command line call them too.
//!
//! - [`connection`]: creating the database, the pool, migrations, schema checks;
//! - [`hosts`]: a URL listing several hosts, and finding the primary among them;
//! - [`follow`]: keeping a pool on the primary through failovers;
//! - `locks`: the per-user locks (`session_users`);
//! - [`sessions`]: the session log and its tombstones;
//! - `touch`: the lock-free write of rows of users not locked;
//! - [`claims`]: what apps claim for users (`user_attributes`);
//! - [`overrides`]: operators' limits (`user_overrides`);
//! - [`outbox`]: revoke messages waiting for the relay;
//! - [`retention`]: pruning the log into tombstones, expiring tombstones;
//! - [`tokens`], [`api_key`], [`listing`]: the sessions API's tokens, its
//!   handle key, and its pages of a user's sessions.

pub mod api_key;
pub mod claims;
pub mod connection;
pub mod follow;
pub mod hosts;
pub mod listing;
pub(crate) mod locks;
pub mod outbox;
pub mod overrides;
pub mod retention;
pub mod sessions;
pub mod tokens;
pub(crate) mod touch;

/// A `query_scalar` statement whose parameters are being bound: what the
/// column sets' `bind` take and return, to bind after one another.
pub(crate) type BoundScalar<'q, O> =
    sqlx::query::QueryScalar<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>;

pub use connection::{
    MIGRATOR, Planning, SchemaError, connect, connect_and_migrate, connect_and_migrate_reporting,
    connect_checked, connect_checked_planning, connect_planning, ensure_database,
};

/// Errors that say "try again later" rather than "these events are wrong".
///
/// Only errors about the data are permanent: SQLSTATE classes 22 (data
/// exception), 23 (integrity constraint), P0 (raised by a PL/pgSQL
/// function), 42 (syntax or undefined object: a bug, same every time; but not
/// 42501, a missing privilege an operator can grant), and decoding errors.
/// Everything else (connection loss, a database that refuses connections,
/// deadlocks, serialization failures, shutdowns, resource limits) is retried
/// with backoff for as long as it takes, and nothing is acked meanwhile.
pub fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => {
                let permanent = ["22", "23", "P0", "42"].iter().any(|c| code.starts_with(c));
                !permanent || code == "42501"
            }
            None => true,
        },
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::Encode(_)
        | sqlx::Error::TypeNotFound { .. }
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::RowNotFound
        | sqlx::Error::InvalidArgument(_) => false,
        _ => true,
    }
}
