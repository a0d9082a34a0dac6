//! `user_attributes`: what each app last claimed for a user (see
//! [`crate::domain::claims`]).

use sqlx::{PgConnection, PgPool};

use crate::domain::claims::Claim;

/// For each app a user has sessions or claims in (or just `app`), what the
/// app claims for the user (`None`: it never sent attributes).
pub async fn latest_attributes(
    pool: &PgPool,
    user: &str,
    app: Option<&str>,
) -> sqlx::Result<Vec<(String, Option<serde_json::Value>)>> {
    sqlx::query_as(
        "SELECT a.app, c.attributes FROM (
             SELECT app FROM sessions WHERE user_id = $1 AND ($2::text IS NULL OR app = $2)
             UNION
             SELECT app FROM user_attributes
             WHERE user_id = $1 AND ($2::text IS NULL OR app = $2)
         ) a
         LEFT JOIN user_attributes c ON c.user_id = $1 AND c.app = a.app
         ORDER BY a.app",
    )
    .bind(user)
    .bind(app)
    .fetch_all(pool)
    .await
}

/// Writes the claims of locked users that a batch changed: `(user_id, app,
/// claim)`, each key once.
pub(crate) async fn upsert_claims(
    conn: &mut PgConnection,
    mut claimed: Vec<(&str, &str, &Claim)>,
) -> sqlx::Result<()> {
    if claimed.is_empty() {
        return Ok(());
    }
    // Sorted, so that concurrent batches lock rows in the same order.
    claimed.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    let mut users = Vec::with_capacity(claimed.len());
    let mut apps = Vec::with_capacity(claimed.len());
    let mut attributes = Vec::with_capacity(claimed.len());
    let mut times = Vec::with_capacity(claimed.len());
    for (user, app, claim) in claimed {
        users.push(user);
        apps.push(app);
        attributes.push(serde_json::Value::Object(claim.attributes.clone()));
        times.push(claim.occurred_at);
    }
    // The user's lock keeps out every other writer but touches renewing
    // a claim, which never run while the lock is held (see `db::touch`);
    // still, a claim only ever moves forward in event time.
    sqlx::query(
        "INSERT INTO user_attributes AS u (user_id, app, attributes, occurred_at)
         SELECT * FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::timestamptz[])
         ON CONFLICT (user_id, app) DO UPDATE
         SET attributes = EXCLUDED.attributes, occurred_at = EXCLUDED.occurred_at
         WHERE u.occurred_at <= EXCLUDED.occurred_at",
    )
    .bind(&users)
    .bind(&apps)
    .bind(&attributes)
    .bind(&times)
    .execute(conn)
    .await?;
    Ok(())
}
