//! The domain: typed values parsed at the edge and the pure rules of
//! session-guard. Nothing in here does I/O.

pub mod claims;
pub mod decision;
pub mod event;
pub mod limits;
pub mod revoke;
pub mod session;
