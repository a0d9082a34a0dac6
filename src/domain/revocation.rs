//! Revoking a session: how a revocation changes the session's record and
//! the revoke message apps receive. One path for every revocation, whether
//! a batch's check decided it (limits, idle timeout, logout of others) or an
//! operator did.

use chrono::{DateTime, Utc};

use super::event::UserId;
use super::revoke::RevokeMessage;
use super::session::{EndReason, SessionRecord};

/// Why and by whom sessions are being revoked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// Recorded in `sessions.end_reason` and sent as the message's reason.
    pub reason: EndReason,
    /// The rule, hook or operator responsible, recorded in `sessions.ended_by`.
    pub ended_by: String,
    /// An operator's explanation, recorded and sent with the message.
    pub note: Option<String>,
    /// The limit in force, recorded and sent with the message.
    pub max_sessions: u32,
}

/// Ends `record` (a session of `user`) as `revocation` says, at `now`, and
/// returns the revoke message for its app; `None`, changing nothing, if the
/// session already ended.
pub fn revoke(
    record: &mut SessionRecord,
    user: &UserId,
    revocation: &Revocation,
    now: DateTime<Utc>,
) -> Option<RevokeMessage> {
    if record.end_reason.is_some() {
        return None;
    }
    record.ended_at = Some(now);
    record.end_reason = Some(revocation.reason);
    record.max_sessions = Some(revocation.max_sessions);
    record.last_revoke_at = Some(now);
    Some(
        RevokeMessage::new(
            &record.app,
            record.session_id.as_str(),
            user.as_str(),
            revocation.reason.into(),
            now,
            revocation.max_sessions,
            false,
        )
        .with_note(revocation.note.clone()),
    )
}

/// The revoke message sent again for a revoked session its app kept using
/// (see `Applied::repeat_revoke`), with the note recorded at the revocation;
/// `default_max` stands in for a limit the record lacks. `None` for a record
/// that is not a revoked session of a known user.
pub fn repeated(
    record: &SessionRecord,
    note: Option<String>,
    default_max: u32,
) -> Option<RevokeMessage> {
    let (Some(user_id), Some(reason), Some(revoked_at)) =
        (&record.user_id, record.end_reason, record.ended_at)
    else {
        return None;
    };
    Some(
        RevokeMessage::new(
            &record.app,
            record.session_id.as_str(),
            user_id.as_str(),
            reason.into(),
            revoked_at,
            record.max_sessions.unwrap_or(default_max),
            true,
        )
        .with_note(note),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event::{AppName, SessionId};

    fn live(at: DateTime<Utc>) -> SessionRecord {
        SessionRecord {
            app: AppName::from_trusted("shop".to_owned()),
            session_id: SessionId::from_trusted("s1".to_owned()),
            user_id: Some(UserId::from_trusted("ann".to_owned())),
            login_at: at,
            login_seen: true,
            last_seen_at: at,
            ip: None,
            user_agent: None,
            expires_at: None,
            ended_at: None,
            end_reason: None,
            max_sessions: None,
            last_revoke_at: None,
            attributes: None,
        }
    }

    fn by_operator() -> Revocation {
        Revocation {
            reason: EndReason::Admin,
            ended_by: "operator:root".to_owned(),
            note: Some("stolen laptop".to_owned()),
            max_sessions: 3,
        }
    }

    #[test]
    fn a_revocation_ends_the_record_and_builds_its_message() {
        let now = Utc::now();
        let mut record = live(now - chrono::Duration::minutes(5));
        let user = UserId::from_trusted("ann".to_owned());
        let message = revoke(&mut record, &user, &by_operator(), now).unwrap();
        assert_eq!(record.end_reason, Some(EndReason::Admin));
        assert_eq!(record.ended_at, Some(now));
        assert_eq!(record.last_revoke_at, Some(now));
        assert_eq!(record.max_sessions, Some(3));
        assert_eq!(message.session_id, "s1");
        assert_eq!(message.user_id, "ann");
        assert_eq!(message.max_sessions, 3);
        assert_eq!(message.note.as_deref(), Some("stolen laptop"));
        assert!(!message.repeat);

        // Ended already: nothing changes, nothing is sent.
        let before = record.clone();
        assert!(revoke(&mut record, &user, &by_operator(), now).is_none());
        assert_eq!(record, before);
    }

    #[test]
    fn a_repeated_message_carries_the_original_revocation() {
        let now = Utc::now();
        let mut record = live(now);
        assert!(repeated(&record, None, 1).is_none());
        let user = UserId::from_trusted("ann".to_owned());
        let first = revoke(&mut record, &user, &by_operator(), now).unwrap();
        let again = repeated(&record, Some("n".to_owned()), 9).unwrap();
        assert!(again.repeat);
        assert_eq!(again.max_sessions, 3);
        assert_eq!(again.revoked_at, first.revoked_at);
        assert_eq!(again.note.as_deref(), Some("n"));
    }
}
