//! What operators do through the command line, and users through the
//! sessions API: revoke sessions, and see a user's effective limits. A revocation goes through the batch's own
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

/// What an operator (or the sessions API) revokes.
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
    /// Every active session of a user in some apps, but one: the sessions
    /// API's "sign out everywhere else".
    UserExcept {
        /// Whose sessions.
        user_id: UserId,
        /// Only sessions of these apps; `None`: every app.
        apps: Option<Vec<AppName>>,
        /// The session that stays, `(app, session_id)`.
        except: Option<(AppName, SessionId)>,
    },
}

/// Who revokes: what the log records and the revoke message says.
#[derive(Debug, Clone)]
pub struct Revoker {
    /// `admin` for operators, `user` for the sessions API.
    pub reason: EndReason,
    /// Recorded as `ended_by`: `operator:<name>`, `token:<name>`.
    pub ended_by: String,
}

/// Why an operator revocation did nothing.
#[derive(Debug, thiserror::Error)]
pub enum AdminRevokeError {
    /// The named session was never heard of. It does not hold the session
    /// id: an id is a credential (a Django session key is the cookie), and
    /// this error may be logged or reach the sessions API. The operator's
    /// command, which was given the id, says which one itself.
    #[error("no such session in app {app}")]
    UnknownSession {
        /// The app named.
        app: String,
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
    let revoker = Revoker {
        reason: EndReason::Admin,
        ended_by: format!("operator:{operator}"),
    };
    revoke(pool, enforcement, target, &revoker, note).await
}

/// Revokes `target` for `revoker` through the outbox, in one transaction
/// under the user's lock: the one path every revocation outside a batch
/// takes. Returns what was revoked; sessions already ended are left alone,
/// so nothing is sent twice.
pub async fn revoke(
    pool: &PgPool,
    enforcement: &Enforcement,
    target: &AdminTarget,
    revoker: &Revoker,
    note: Option<String>,
) -> Result<Vec<RevokeMessage>, AdminRevokeError> {
    let mut tx = pool.begin().await?;
    // The batch statements below take arrays whose sizes vary: planned for
    // each execution, as in the worker, whatever the pool's connections do
    // otherwise (the sessions API's cache plans).
    sqlx::query("SET LOCAL plan_cache_mode = force_custom_plan")
        .execute(&mut *tx)
        .await?;
    let Some((user, only)) = resolve(&mut tx, target).await? else {
        return Ok(Vec::new());
    };
    let locked = BTreeSet::from([user.as_str().to_owned()]);
    locks::lock_users(&mut tx, &locked).await?;
    let now = Utc::now();
    let mut state = State::with_capacity(4);
    let (apps, ids): (Vec<&str>, Vec<&str>) = only
        .map(|(app, session_id)| (app.as_str(), session_id.as_str()))
        .into_iter()
        .unzip();
    load::load(
        &mut tx,
        &mut state,
        (&apps, &ids),
        &[user.as_str()],
        true,
        None,
    )
    .await?;
    state.index_all();
    state.overrides = overrides::overrides_of_users(&mut tx, &[user.as_str()]).await?;
    let victims = targets(&state, &user, target, now)
        .into_iter()
        .map(|c| {
            // The limit in force in the session's app, recorded with it.
            let limits = decide::evaluate(&state, enforcement, &user, &c.app, now);
            let revocation = Revocation {
                reason: revoker.reason,
                ended_by: revoker.ended_by.clone(),
                note: note.clone(),
                max_sessions: limits.limits.max_sessions,
            };
            (c, revocation)
        })
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
        (&messages, &[]),
        &mut outcome,
    )
    .await?;
    // An operator's revocation ends stored sessions and creates no lock row
    // (`state.created` stays empty), so no new row can find its key taken.
    debug_assert!(matches!(written, write::Written::Done(_)));
    tx.commit().await?;
    Ok(messages)
}

/// The user a revocation is about and (for one session) the session;
/// `None` if there is nothing to revoke: a session already ended (or known
/// only from a logout without user), a user who never had a session. A
/// known user's row is locked here.
async fn resolve<'a>(
    conn: &mut PgConnection,
    target: &'a AdminTarget,
) -> Result<Option<(UserId, Option<(&'a AppName, &'a SessionId)>)>, AdminRevokeError> {
    let user_id = match target {
        AdminTarget::Session { app, session_id } => {
            let row = sessions::owner_and_end(conn, app.as_str(), session_id.as_str()).await?;
            return match row {
                None => Err(AdminRevokeError::UnknownSession {
                    app: app.to_string(),
                }),
                // Already ended (a logout-only row has no user): nothing to do.
                Some((None, _)) | Some((_, Some(_))) => Ok(None),
                Some((Some(user), None)) => {
                    Ok(Some((UserId::from_trusted(user), Some((app, session_id)))))
                }
            };
        }
        AdminTarget::User { user_id, .. } | AdminTarget::UserExcept { user_id, .. } => user_id,
    };
    // A user without a row has never had a session: nothing to revoke, and
    // `lock_users` would create the row.
    if !locks::lock_existing_user(conn, user_id.as_str()).await? {
        return Ok(None);
    }
    Ok(Some((user_id.clone(), None)))
}

/// The sessions to revoke, read under the user's lock: the one named if it
/// is still the user's and not ended (expired or not), or the user's live
/// sessions the target selects.
fn targets(
    state: &State,
    user: &UserId,
    target: &AdminTarget,
    now: DateTime<Utc>,
) -> Vec<Candidate> {
    match target {
        AdminTarget::Session { app, session_id } => {
            let key = (app.to_string(), session_id.to_string());
            state
                .slots
                .get(&key)
                .filter(|s| s.origin == Origin::Log)
                .filter(|s| {
                    s.record.user_id.as_ref() == Some(user) && s.record.end_reason.is_none()
                })
                .map(|s| Candidate::from(&s.record))
                .into_iter()
                .collect()
        }
        AdminTarget::User { app, .. } => state
            .live(user, now)
            .into_iter()
            .filter(|c| &c.app == app)
            .collect(),
        AdminTarget::UserExcept { apps, except, .. } => state
            .live(user, now)
            .into_iter()
            .filter(|c| apps.as_ref().is_none_or(|apps| apps.contains(&c.app)))
            .filter(|c| {
                except
                    .as_ref()
                    .is_none_or(|(app, id)| !(&c.app == app && &c.session_id == id))
            })
            .collect(),
    }
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
