//! The revocation events: what a verifier needs to refuse a token that is no longer good.

use std::sync::Arc;

use super::StoreError;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// `tokens_not_before` for a change at `now`: whole seconds, like `iat`. A token issued in the
/// same second before the change keeps `iat == not_before` and is refused through its ended
/// session instead; a login in the same second after the change verifies.
#[must_use]
pub fn not_before(now: DateTime<Utc>) -> DateTime<Utc> {
    use chrono::DurationRound as _;
    now.duration_trunc(chrono::Duration::seconds(1))
        .unwrap_or(now)
}

/// What kind of change a revocation event records (the `kind` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// `session_revoked`: one session ended (logout, reuse detection).
    SessionRevoked,
    /// `logged_out_everywhere`: every session of the user ended; `not_before` set.
    LoggedOutEverywhere,
    /// `user_disabled`: every session ended; `not_before` set.
    UserDisabled,
    /// `user_enabled`: the user may log in again (old tokens stay dead).
    UserEnabled,
    /// `user_deleted`: the user and every session are gone.
    UserDeleted,
}

impl EventKind {
    /// The stored name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SessionRevoked => "session_revoked",
            Self::LoggedOutEverywhere => "logged_out_everywhere",
            Self::UserDisabled => "user_disabled",
            Self::UserEnabled => "user_enabled",
            Self::UserDeleted => "user_deleted",
        }
    }

    fn parse(raw: &str) -> Option<Self> {
        [
            Self::SessionRevoked,
            Self::LoggedOutEverywhere,
            Self::UserDisabled,
            Self::UserEnabled,
            Self::UserDeleted,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == raw)
    }
}

/// One row of `revocation_events`: a change that can kill tokens, in commit order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    /// Position in the feed; events commit in this order.
    pub id: i64,
    /// When it happened.
    pub created_at: DateTime<Utc>,
    /// What happened.
    pub kind: EventKind,
    /// Whose tokens it concerns.
    pub user_id: i64,
    /// The session that ended (`SessionRevoked`).
    pub session_id: Option<Uuid>,
    /// Tokens of the user issued before this are dead (`LoggedOutEverywhere`, `UserDisabled`).
    pub not_before: Option<DateTime<Utc>>,
}

/// The columns of `revocation_events` as read, before the kind is checked.
#[derive(sqlx::FromRow)]
pub(super) struct RawEventRow {
    id: i64,
    created_at: DateTime<Utc>,
    kind: String,
    user_id: i64,
    session_id: Option<Uuid>,
    not_before: Option<DateTime<Utc>>,
}

impl TryFrom<RawEventRow> for EventRow {
    type Error = StoreError;

    fn try_from(raw: RawEventRow) -> Result<Self, StoreError> {
        let kind = EventKind::parse(&raw.kind).ok_or_else(|| {
            StoreError::Other(sqlx::Error::Decode(
                format!("unknown revocation event kind {:?}", raw.kind).into(),
            ))
        })?;
        Ok(Self {
            id: raw.id,
            created_at: raw.created_at,
            kind,
            user_id: raw.user_id,
            session_id: raw.session_id,
            not_before: raw.not_before,
        })
    }
}

/// The store's events chapter (see [`Store`](super::Store) for the rules every chapter keeps).
#[async_trait]
pub trait EventStore: Send + Sync {
    /// Up to `limit` events after `after`, in order.
    async fn events_since(&self, after: i64, limit: i64) -> Result<Vec<EventRow>, StoreError>;

    /// The ids of the oldest and newest events kept, when there are any. Purging never deletes
    /// the newest, so a cursor below the oldest kept id minus one has missed events.
    async fn event_bounds(&self) -> Result<Option<(i64, i64)>, StoreError>;

    /// The id of the newest event (0 when there is none).
    async fn last_event_id(&self) -> Result<i64, StoreError>;

    /// Wakes its waiters as soon as another process (or this one) appends an event, when the
    /// database can say so (PostgreSQL `LISTEN`); `None` means polling is all there is.
    fn event_signal(&self) -> Option<Arc<tokio::sync::Notify>>;
}
