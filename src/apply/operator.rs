//! What operators do through the command line: revoke sessions, and see a
//! user's effective limits. A revocation goes through the batch's own
//! steps (load under the user's lock, `decide::revoke`, write, outbox),
//! so its log rows and revoke messages are built the one way.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use super::enforcement::Enforcement;
use super::load::{self, Origin, State};
use super::outcome::BatchOutcome;
use super::{decide, write};
use crate::db::{locks, overrides, sessions};
use crate::domain::decision::Candidate;
use crate::domain::event::{AppName, SessionId, UserId};
use crate::domain::limits::{EffectiveLimits, HookContext};
use crate::domain::revocation::Revocation;
use crate::domain::revoke::RevokeMessage;
use crate::domain::session::EndReason;

/// What an operator revokes.
#[derive(Debug, Clone)]
pub enum AdminTarget {
    /// One session.
    Session {
        /// The session's app.
        app: AppName,
        /// The app's session id.
        session_id: SessionId,
    },
    /// Every active session of a user in an app.
    User {
        /// The app whose sessions end.
        app: AppName,
        /// Whose sessions.
        user_id: UserId,
    },
}

/// Why an operator revocation did nothing.
#[derive(Debug, thiserror::Error)]
pub enum AdminRevokeError {
    /// The named session was never heard of.
    #[error("no session {session_id} in app {app}")]
    UnknownSession {
        /// The app named.
        app: String,
        /// The session id named.
        session_id: String,
    },
    /// A statement (or the commit) failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Revokes through the outbox, as a worker would (reason `admin`): the
/// workers' relays publish the revoke events. Returns what was revoked;
/// sessions already ended are left alone.
pub async fn admin_revoke(
    pool: &PgPool,
    enforcement: &Enforcement,
    target: &AdminTarget,
    operator: &str,
    note: Option<String>,
) -> Result<Vec<RevokeMessage>, AdminRevokeError> {
    let mut tx = pool.begin().await?;
    let Some((app, user, only)) = resolve(&mut tx, target).await? else {
        return Ok(Vec::new());
    };
    let locked = BTreeSet::from([user.as_str().to_owned()]);
    locks::lock_users(&mut tx, &locked).await?;
    let now = Utc::now();
    let mut state = State::with_capacity(4);
    let (apps, ids): (Vec<&str>, Vec<&str>) = only
        .map(|session_id| (app.as_str(), session_id.as_str()))
        .into_iter()
        .unzip();
    load::load(&mut tx, &mut state, &apps, &ids, &[user.as_str()], true).await?;
    state.index_all();
    state.overrides = overrides::overrides_of_users(&mut tx, &[user.as_str()]).await?;
    // The limit in force, recorded with the revocation.
    let limits = decide::evaluate(&state, enforcement, &user, app, now);
    let revocation = Revocation {
        reason: EndReason::Admin,
        ended_by: format!("operator:{operator}"),
        note,
        max_sessions: limits.limits.max_sessions,
    };
    let victims = targets(&state, &user, app, only, now)
        .into_iter()
        .map(|c| (c, revocation.clone()))
        .collect();
    let mut outcome = BatchOutcome::default();
    let messages = decide::revoke(&mut state, &user, victims, now, &mut outcome);
    let resolution = enforcement.last_seen_resolution;
    let written = write::write(
        &mut tx,
        &state,
        &locked,
        (resolution, now),
        (&[], &[]),
        &messages,
        &mut outcome,
    )
    .await?;
    // An operator's revocation ends stored sessions and creates no lock row
    // (`state.created` stays empty), so no new row can find its key taken.
    debug_assert!(matches!(written, write::Written::Done(_)));
    tx.commit().await?;
    Ok(messages)
}

/// The app, user and (for one session) session an operator's revocation
/// is about; `None` if there is nothing to revoke: a session already ended
/// (or known only from a logout without user), a user who never had a
/// session. A known user's row is locked here.
async fn resolve<'a>(
    conn: &mut PgConnection,
    target: &'a AdminTarget,
) -> Result<Option<(&'a AppName, UserId, Option<&'a SessionId>)>, AdminRevokeError> {
    match target {
        AdminTarget::Session { app, session_id } => {
            let row = sessions::owner_and_end(conn, app.as_str(), session_id.as_str()).await?;
            match row {
                None => Err(AdminRevokeError::UnknownSession {
                    app: app.to_string(),
                    session_id: session_id.to_string(),
                }),
                // Already ended (a logout-only row has no user): nothing to do.
                Some((None, _)) | Some((_, Some(_))) => Ok(None),
                Some((Some(user), None)) => {
                    Ok(Some((app, UserId::from_trusted(user), Some(session_id))))
                }
            }
        }
        AdminTarget::User { app, user_id } => {
            // A user without a row has never had a session: nothing to
            // revoke, and `lock_users` would create the row.
            if !locks::lock_existing_user(conn, user_id.as_str()).await? {
                return Ok(None);
            }
            Ok(Some((app, user_id.clone(), None)))
        }
    }
}

/// The sessions to revoke, read under the user's lock: the one named if it
/// is still the user's and not ended (expired or not), or every live
/// session of the user in `app`.
fn targets(
    state: &State,
    user: &UserId,
    app: &AppName,
    only: Option<&SessionId>,
    now: DateTime<Utc>,
) -> Vec<Candidate> {
    let Some(session_id) = only else {
        return state
            .live(user, now)
            .into_iter()
            .filter(|c| &c.app == app)
            .collect();
    };
    let key = (app.to_string(), session_id.to_string());
    state
        .slots
        .get(&key)
        .filter(|s| s.origin == Origin::Log)
        .filter(|s| s.record.user_id.as_ref() == Some(user) && s.record.end_reason.is_none())
        .map(|s| Candidate::from(&s.record))
        .into_iter()
        .collect()
}

/// The effective limits of `user` in `app` with the given attributes, as
/// the worker would compute them at the user's next event.
pub async fn effective_limits(
    pool: &PgPool,
    enforcement: &Enforcement,
    user: &UserId,
    app: &AppName,
    attributes: &serde_json::Map<String, serde_json::Value>,
) -> sqlx::Result<EffectiveLimits> {
    let mut conn = pool.acquire().await?;
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    let overrides = overrides::overrides_of_user(&mut tx, user.as_str()).await?;
    let sessions = sessions::active_sessions(&mut tx, user, Utc::now()).await?;
    tx.rollback().await?;
    let summaries = decide::summaries(&sessions);
    Ok(enforcement.hooks.evaluate(&HookContext {
        app,
        user_id: user,
        attributes,
        sessions: &summaries,
        overrides: &overrides,
    }))
}
