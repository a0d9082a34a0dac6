//! The per-user locks: a user's row in `session_users`, held until commit.
//! Every writer that can add, end or revoke a user's sessions, or change
//! what an app claims for the user, holds that user's lock; rows of users
//! not locked are only ever touched (see `apply::touch`).

use std::collections::BTreeSet;

use sqlx::PgConnection;

/// Takes the transaction-scoped locks of `users`: their rows in
/// `session_users` (created if missing), locked in `user_id` order so that
/// two batches never wait on each other in a cycle. One statement whatever
/// the number of users.
///
/// Returns the users whose rows it created. Every writer that adds, ends
/// or revokes a user's sessions holds (so first creates) that row, so a row
/// created here means no such writer ever committed for the user, and none
/// can before this transaction ends: what a read before the lock found of
/// the user still holds, but for lock-free touches (activity only), and the
/// batch need not read the user again.
pub(crate) async fn lock_users(
    conn: &mut PgConnection,
    users: &BTreeSet<String>,
) -> sqlx::Result<BTreeSet<String>> {
    if users.is_empty() {
        return Ok(BTreeSet::new());
    }
    let users: Vec<&str> = users.iter().map(String::as_str).collect();
    // One statement creates the missing rows and locks the others, in user
    // order: ON CONFLICT DO UPDATE locks every conflicting row even when its
    // WHERE lets none be updated (so nothing is written for them), and
    // RETURNING gives only the rows inserted.
    let created: Vec<String> = sqlx::query_scalar(
        "INSERT INTO session_users AS s (user_id)
         SELECT u FROM unnest($1::text[]) AS u ORDER BY u COLLATE \"C\"
         ON CONFLICT (user_id) DO UPDATE SET user_id = EXCLUDED.user_id WHERE false
         RETURNING user_id",
    )
    .bind(&users)
    .fetch_all(conn)
    .await?;
    Ok(created.into_iter().collect())
}

/// Locks `users` if none of them is locked by another transaction, without
/// waiting (so in any order without risk of deadlock). Returns whether all
/// of them are now locked; a user without a `session_users` row counts as
/// not locked (only [`lock_users`] creates rows).
pub(crate) async fn try_lock_users(
    conn: &mut PgConnection,
    users: &BTreeSet<String>,
) -> sqlx::Result<bool> {
    let wanted: Vec<&str> = users.iter().map(String::as_str).collect();
    let got: Vec<String> = sqlx::query_scalar(
        "SELECT user_id FROM session_users WHERE user_id = ANY($1)
         ORDER BY user_id FOR UPDATE SKIP LOCKED",
    )
    .bind(&wanted)
    .fetch_all(conn)
    .await?;
    Ok(got.len() == wanted.len())
}

/// Locks `user`'s row if the user has one, waiting for it; returns whether
/// there was one. Unlike [`lock_users`] it creates no row: a user without
/// one never had a session.
pub(crate) async fn lock_existing_user(conn: &mut PgConnection, user: &str) -> sqlx::Result<bool> {
    let known: Option<String> =
        sqlx::query_scalar("SELECT user_id FROM session_users WHERE user_id = $1 FOR UPDATE")
            .bind(user)
            .fetch_optional(conn)
            .await?;
    Ok(known.is_some())
}
