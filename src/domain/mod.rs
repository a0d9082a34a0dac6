//! The domain: typed values parsed at the edge and the pure rules of
//! session-guard. Nothing in here does I/O.

pub mod claims;
pub mod decision;
pub mod device;
pub mod handle;
pub mod limits;
pub mod notice;
pub mod revocation;
pub mod session;

/// The wire contract, from the protocol crate (its one definition).
pub use session_guard_protocol::{dead_letter, event, revoke};
