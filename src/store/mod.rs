//! Persistence: one [`Store`] trait, its SQL written once (`sql.rs`) and expanded for SQLite and
//! PostgreSQL, whose files hold only what differs.
//!
//! Every invariant the contract promises under concurrency is enforced here by the database
//! itself: a unique index for registrations, a single upsert per login attempt, and a
//! compare-and-set for refresh-token rotation. No method reads a row, decides in Rust, and
//! writes it back. This module knows nothing about HTTP or about the service's rules; SQL lives
//! only in this folder, one text per statement wherever the dialects agree.

#[macro_use]
mod sql;

mod mail;
mod postgres;
mod sqlite;

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::database_url::DatabaseUrl;

pub use mail::{MailOutcome, MailTemplate, NewMail, OutboxMail, ResetRequest, TokenMail};
pub use postgres::PgStore;
pub use sqlite::{SqliteStore, read_original_users};

/// With rotation on, the most rotated refresh tokens a session keeps (those rotated within the
/// grace window, newest first): no person's client refreshes ten times within the grace
/// window, and the eleventh-newest coming back counts as reuse.
pub const ROTATED_TOKENS_KEPT: i64 = 10;

/// The longest `User-Agent` a session keeps, in characters.
pub const USER_AGENT_CHARS: usize = 256;

/// What can go wrong in the store, in terms the service can act on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique key was violated; each method documents which one.
    #[error("duplicate key")]
    Duplicate,
    /// The database did not answer (down, closed, pool acquire timed out).
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// An SQLite file that cannot be opened, and why (start-up and admin commands).
    #[error("{0}")]
    CannotOpen(String),
    /// Anything else: a bug or a broken schema.
    #[error("database query failed")]
    Other(#[source] sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::Database(db) if db.is_unique_violation() => Self::Duplicate,
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::BeginFailed => Self::Unavailable(err),
            sqlx::Error::Database(db) if is_unavailable_code(db.code().as_deref()) => {
                Self::Unavailable(err)
            }
            _ => Self::Other(err),
        }
    }
}

/// Database error codes that mean "not answering right now" rather than "bad query", so the
/// client gets 503 with `Retry-After` (never a 500, never a 401):
///
/// - PostgreSQL, connection-level: `08` connection exceptions, `28` authorization (a rotated
///   password), `3D000` no such database, `53` insufficient resources (too many clients),
///   `55000` not accepting connections (`ALLOW_CONNECTIONS false`), `57` operator
///   intervention (shutting down, cannot connect now, `57014` statement timeout);
/// - PostgreSQL, contention: `55P03` lock timeout, `25P03` idle-in-transaction timeout,
///   `40001` serialization failure, `40P01` deadlock;
/// - SQLite: `SQLITE_BUSY` and `SQLITE_LOCKED` (5 and 6, with their extended codes).
fn is_unavailable_code(code: Option<&str>) -> bool {
    const CLASSES: &[&str] = &["08", "28", "53", "57"];
    const CODES: &[&str] = &["3D000", "55000", "55P03", "25P03", "40001", "40P01"];
    match code {
        // A PostgreSQL SQLSTATE is five characters; SQLite's result codes are at most four
        // digits.
        Some(state) if state.len() == 5 => {
            CLASSES.iter().any(|class| state.starts_with(class)) || CODES.contains(&state)
        }
        Some(sqlite) => sqlite
            .parse::<i32>()
            .is_ok_and(|c| matches!(c & 0xff, 5 | 6)),
        None => false,
    }
}

#[cfg(test)]
mod classification_tests {
    use super::is_unavailable_code;

    #[test]
    fn connection_level_and_contention_codes_are_unavailable() {
        for code in [
            "08006", "08001", "28P01", "3D000", "53300", "55000", "57P01", "57P03", "57014",
            "55P03", "25P03", "40001", "40P01", "5", "6", "517", "262",
        ] {
            assert!(is_unavailable_code(Some(code)), "{code}");
        }
        for code in ["23505", "42P01", "22P02", "1", "19", "2067"] {
            assert!(!is_unavailable_code(Some(code)), "{code}");
        }
        assert!(!is_unavailable_code(None));
    }
}

/// A user as stored. Never serialised to clients.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UserRow {
    /// The numeric id the contract returns as `user_id`.
    pub id: i64,
    /// Normalised (trimmed, lower case) email.
    pub email: String,
    /// bcrypt hash.
    pub password_hash: String,
    /// False when an operator disabled the account.
    pub is_active: bool,
    /// When the account was created.
    pub created_at: DateTime<Utc>,
    /// When the account last changed.
    pub updated_at: DateTime<Utc>,
    /// Tokens issued (`iat`) before this are dead: set by logout-all and by disabling.
    pub tokens_not_before: Option<DateTime<Utc>>,
    /// When the user proved the address is theirs (a verification link, a reset, an admin).
    pub email_verified_at: Option<DateTime<Utc>>,
}

/// A refresh token as stored; the JWT is re-signed from these fields when needed.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RefreshTokenRow {
    /// The token's `jti` claim.
    pub jti: Uuid,
    /// Whose token it is.
    pub user_id: i64,
    /// Every token descended from one login shares the family id.
    pub family_id: Uuid,
    /// The token this one replaced, if any.
    pub parent_jti: Option<Uuid>,
    /// The `iat` claim (whole seconds).
    pub issued_at: DateTime<Utc>,
    /// The `exp` claim (whole seconds).
    pub expires_at: DateTime<Utc>,
    /// When it was exchanged for its child.
    pub rotated_at: Option<DateTime<Utc>>,
    /// When it was revoked (logout, logout-all, reuse detected).
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A refresh token about to be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRefreshToken {
    /// The token's `jti` claim.
    pub jti: Uuid,
    /// Whose token it is.
    pub user_id: i64,
    /// The family: a fresh id at login, the parent's on rotation.
    pub family_id: Uuid,
    /// The token it replaces, on rotation.
    pub parent_jti: Option<Uuid>,
    /// The `iat` claim (whole seconds).
    pub issued_at: DateTime<Utc>,
    /// The `exp` claim (whole seconds).
    pub expires_at: DateTime<Utc>,
}

impl From<NewRefreshToken> for RefreshTokenRow {
    fn from(token: NewRefreshToken) -> Self {
        Self {
            jti: token.jti,
            user_id: token.user_id,
            family_id: token.family_id,
            parent_jti: token.parent_jti,
            issued_at: token.issued_at,
            expires_at: token.expires_at,
            rotated_at: None,
            revoked_at: None,
        }
    }
}

/// The rules of the login counter, handed to the store by the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptLimits {
    /// Attempts allowed per window; the one that reaches it locks the key.
    pub max_attempts: i64,
    /// Counting window.
    pub window: chrono::Duration,
    /// Lock duration.
    pub lockout: chrono::Duration,
}

/// The counter after one attempt was reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct AttemptRow {
    /// Attempts in this window, this one included; `max_attempts + 1` means refused.
    pub attempts: i64,
    /// When the current window began.
    pub window_start: DateTime<Utc>,
    /// Until when the key is locked, once the limit was reached.
    pub locked_until: Option<DateTime<Utc>>,
}

/// What an import wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportReport {
    /// Users inserted.
    pub users: u64,
    /// Users skipped (merge only: id or email already there).
    pub skipped_users: u64,
    /// Refresh tokens inserted.
    pub tokens: u64,
}

/// Connection counts of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Open connections.
    pub size: u32,
    /// Of which idle.
    pub idle: u32,
}

/// Pool settings that both backends understand.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    /// Maximum open connections (PostgreSQL; SQLite files use it too).
    pub max_connections: u32,
    /// How long a request waits for a free connection before the 503.
    pub acquire_timeout: Duration,
    /// PostgreSQL `lock_timeout`: a statement waiting longer for a row lock (a stalled replica
    /// holding it) fails, its transaction rolls back, and the request answers 503.
    pub lock_timeout: Duration,
    /// PostgreSQL `statement_timeout` (and, one second longer,
    /// `idle_in_transaction_session_timeout`, which frees the locks of a frozen client).
    pub statement_timeout: Duration,
    /// Whether a missing SQLite file is created (the server, `migrate`) or an error (the other
    /// admin commands).
    pub create_if_missing: bool,
}

/// A session as stored: what one login starts.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SessionRow {
    /// The `sid` claim; also the `family_id` of its refresh tokens.
    pub id: Uuid,
    /// Whose session it is.
    pub user_id: i64,
    /// The login.
    pub created_at: DateTime<Utc>,
    /// When its newest refresh token expires.
    pub expires_at: DateTime<Utc>,
    /// When it ended (logout, reuse detected, logout-all, disable).
    pub revoked_at: Option<DateTime<Utc>>,
    /// Its last login or refresh (`None` for sessions from before it was recorded).
    pub last_used_at: Option<DateTime<Utc>>,
    /// The `User-Agent` of the login, cut to [`USER_AGENT_CHARS`] characters.
    pub user_agent: Option<String>,
    /// The client IP of the login, as the per-IP rules see it.
    pub ip: Option<String>,
}

/// A session about to be stored, with its first refresh token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSession {
    /// The new `sid`.
    pub id: Uuid,
    /// Whose session it is.
    pub user_id: i64,
    /// The login (whole seconds).
    pub created_at: DateTime<Utc>,
    /// When its first refresh token expires.
    pub expires_at: DateTime<Utc>,
    /// The `User-Agent` of the login, already cut to [`USER_AGENT_CHARS`] characters.
    pub user_agent: Option<String>,
    /// The client IP of the login, as the per-IP rules see it.
    pub ip: Option<String>,
}

/// Why [`Store::start_session`] stored nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionRefused {
    /// The user no longer exists (deleted while the login checked the password).
    UserGone,
    /// The user is disabled.
    Disabled,
    /// The user's password hash is no longer the one the login checked: a reset, a change or
    /// an admin's set committed between the check and the session.
    PasswordChanged,
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
struct RawEventRow {
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

/// A password change by its user, for [`Store::change_password`].
#[derive(Debug, Clone)]
pub struct PasswordChange<'a> {
    /// Whose password.
    pub user_id: i64,
    /// The session that made the change: it stays live.
    pub keep: Uuid,
    /// The hash the password was checked against.
    pub old_hash: &'a str,
    /// The new hash.
    pub new_hash: &'a str,
    /// "Your password was changed".
    pub notification: &'a NewMail,
    /// Sessions used since this may hold a live access token: each gets its own event (the
    /// others end in the database only, where nothing can use them any more).
    pub live_tokens_since: DateTime<Utc>,
}

/// How a rotation attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotateOutcome {
    /// The parent was marked rotated and the child stored.
    Rotated,
    /// The parent was already rotated, revoked or expired: somebody else won.
    NotRotatable,
    /// The user is gone or disabled, or the session has ended: no child may exist.
    Refused,
}

/// `tokens_not_before` for a change at `now`: whole seconds, like `iat`. A token issued in the
/// same second before the change keeps `iat == not_before` and is refused through its ended
/// session instead; a login in the same second after the change verifies.
#[must_use]
pub fn not_before(now: DateTime<Utc>) -> DateTime<Utc> {
    use chrono::DurationRound as _;
    now.duration_trunc(chrono::Duration::seconds(1))
        .unwrap_or(now)
}

/// One batch of rows that nothing needs any more, for [`Store::purge_batch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purge {
    /// Login counters whose window started before `window_start_before` and whose lock (if
    /// any) ended before `now`.
    LoginAttempts {
        /// Counting windows that started before this are over.
        window_start_before: DateTime<Utc>,
        /// Locks that ended before this are over.
        now: DateTime<Utc>,
    },
    /// Refresh tokens that expired before this (their children, if any, are unlinked first,
    /// never deleted with them).
    RefreshTokens(DateTime<Utc>),
    /// Sessions whose last refresh token expired before this.
    Sessions(DateTime<Utc>),
    /// Revocation events older than this, except the newest (it marks where the feed's
    /// cursors are still good).
    Events(DateTime<Utc>),
    /// Messages sent or failed before this.
    Mail(DateTime<Utc>),
    /// One-time tokens that expired before this.
    UserTokens(DateTime<Utc>),
    /// The per-address mail counts ([`MAIL_PER_ADDRESS_PER_HOUR`]) older than this.
    MailSends(DateTime<Utc>),
}

impl Purge {
    /// The table it empties, for logs and the `rows_purged_total` metric.
    #[must_use]
    pub fn table(self) -> &'static str {
        match self {
            Self::LoginAttempts { .. } => "login_attempts",
            Self::RefreshTokens(_) => "refresh_tokens",
            Self::Sessions(_) => "sessions",
            Self::Events(_) => "revocation_events",
            Self::Mail(_) => "mail_outbox",
            Self::UserTokens(_) => "user_tokens",
            Self::MailSends(_) => "mail_sends",
        }
    }
}

/// Verification and reset mails together that one address can receive per hour, whatever
/// caused them (registrations of a deleted and re-created account included); beyond it the
/// requests answer as usual and queue nothing. Security notifications are not counted.
pub const MAIL_PER_ADDRESS_PER_HOUR: i64 = 10;

/// Everything the service needs from a database.
///
/// **The locking rule.** Every transaction that creates, rotates or ends a session of a user
/// first locks that user's row (`select ... for update` on PostgreSQL; SQLite's
/// `BEGIN IMMEDIATE` serialises every writer). A revocation therefore waits for a rotation of
/// the same user in flight and then sees its child, and a rotation that waited for a
/// revocation sees the ended session and creates nothing. Nothing else is locked before the
/// user row, so the rule cannot deadlock.
///
/// **The events rule.** Every change that can kill a live access token (`revoke_session`,
/// `revoke_user_sessions`, `set_user_active`, `delete_user`, `change_password`, the cap in
/// `start_session`, ...) appends, in the same transaction, the `revocation_events` rows a
/// verifier needs to refuse those tokens, and events become visible in `id` order. Ending many
/// sessions at once names only the sessions that may still hold a live access token that a
/// user-wide cut-off does not refuse (see [`Store::revoke_user_sessions`]): each use of a
/// session (`last_used_at`) is recorded before its token is signed, with the token's `iat`.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Answers when the database does.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Open and idle connections of the pool, for `/metrics`.
    fn pool_stats(&self) -> PoolStats;

    /// Applies the embedded migrations of this backend.
    async fn migrate(&self) -> Result<(), StoreError>;

    /// Whether every embedded migration has been applied (for `MIGRATE_ON_START=false`).
    async fn schema_is_current(&self) -> Result<bool, StoreError>;

    /// Inserts a user. `Duplicate` when the (normalised) email is taken.
    async fn insert_user(
        &self,
        email: &str,
        password_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<UserRow, StoreError>;

    /// The user with this normalised email.
    async fn find_user_by_email(&self, email: &str) -> Result<Option<UserRow>, StoreError>;

    /// The user with this id.
    async fn find_user_by_id(&self, id: i64) -> Result<Option<UserRow>, StoreError>;

    /// Enables or disables a user; returns whether the user exists. Disabling sets
    /// `tokens_not_before` and ends every session; both directions append an event.
    async fn set_user_active(
        &self,
        id: i64,
        active: bool,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Deletes a user and, by cascade, their sessions and refresh tokens, appending a
    /// `UserDeleted` event; returns whether the user existed.
    async fn delete_user(&self, id: i64, now: DateTime<Utc>) -> Result<bool, StoreError>;

    /// Reserves one login attempt for `key` in a single atomic statement and returns the
    /// counter as it stands afterwards: a reset window or an expired lock starts again at 1,
    /// the attempt that reaches `max_attempts` sets the lock, and while locked the count stays
    /// at `max_attempts + 1`.
    async fn reserve_login_attempt(
        &self,
        key: &str,
        now: DateTime<Utc>,
        limits: AttemptLimits,
    ) -> Result<AttemptRow, StoreError>;

    /// The counter of `key`, if any.
    async fn find_login_attempt(&self, key: &str) -> Result<Option<AttemptRow>, StoreError>;

    /// Forgets the counter of `key` (after a successful login, or `user unlock`).
    async fn clear_login_attempts(&self, key: &str) -> Result<(), StoreError>;

    /// Replaces the password hash if it is still `old_hash` (a compare-and-set, so a concurrent
    /// change is never overwritten); returns whether it did.
    async fn update_password_hash(
        &self,
        id: i64,
        old_hash: &str,
        new_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Starts a session with its first refresh token, under the user's lock, and keeps the
    /// user's live sessions at `max_live`: beyond it the least recently used end as at logout
    /// (an event each). `checked_hash` is the password hash the login verified the password
    /// against: the session starts only if it is still the user's under the lock, so a login
    /// whose check raced a reset, a change or an admin's set (which committed first) starts
    /// nothing. The ids of the sessions it ended, or why nothing was stored.
    /// `Duplicate` when the session id or `jti` exists.
    async fn start_session(
        &self,
        session: &NewSession,
        first: &NewRefreshToken,
        checked_hash: &str,
        max_live: i64,
    ) -> Result<Result<Vec<Uuid>, SessionRefused>, StoreError>;

    /// Records a use (a refresh) of a live session at `at`, the `iat` of the access token about
    /// to be signed for it (see [`Store::revoke_user_sessions`] for why it comes first);
    /// whether the session is live.
    async fn touch_session(&self, id: Uuid, at: DateTime<Utc>) -> Result<bool, StoreError>;

    /// The user's live sessions (not ended, not expired at `now`), newest first.
    async fn live_sessions(
        &self,
        user_id: i64,
        now: DateTime<Utc>,
    ) -> Result<Vec<SessionRow>, StoreError>;

    /// A password change by the user of session `keep`, in one transaction under the user's
    /// lock: a compare-and-set from `old_hash` (a concurrent change is never overwritten), every
    /// other session ends as at logout (`keep` stays live), the user's outstanding reset links
    /// are void and the notification is queued. Whether it changed (false when the user is
    /// gone or the hash moved meanwhile).
    async fn change_password(
        &self,
        change: &PasswordChange<'_>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// The session with this id.
    async fn find_session(&self, id: Uuid) -> Result<Option<SessionRow>, StoreError>;

    /// The refresh token with this `jti`.
    async fn find_refresh_token(&self, jti: Uuid) -> Result<Option<RefreshTokenRow>, StoreError>;

    /// The token issued when `parent` was rotated.
    async fn find_child_token(&self, parent: Uuid) -> Result<Option<RefreshTokenRow>, StoreError>;

    /// Rotation under the user's lock: refuses when the user is gone or disabled or the
    /// session (`child.family_id`) has ended; otherwise a compare-and-set marks `parent`
    /// rotated at `now` (only if neither rotated nor revoked nor expired), stores `child`, and
    /// deletes the session's tokens rotated before `prune_rotated_before` (the grace window's
    /// start) or older than its newest [`ROTATED_TOKENS_KEPT`] rotated ones, in one
    /// transaction. So a session holds at most `ROTATED_TOKENS_KEPT + 1` rows however often it
    /// refreshes; a pruned token that comes back is recognised by its session's live row and
    /// its own missing one.
    async fn rotate_refresh_token(
        &self,
        parent: Uuid,
        child: &NewRefreshToken,
        now: DateTime<Utc>,
        prune_rotated_before: DateTime<Utc>,
    ) -> Result<RotateOutcome, StoreError>;

    /// Ends a session and revokes its refresh tokens, under the user's lock; returns whether
    /// it was live until now (only then is an event appended).
    async fn revoke_session(&self, id: Uuid, now: DateTime<Utc>) -> Result<bool, StoreError>;

    /// Logout-all: sets `tokens_not_before`, ends every session of the user and voids the
    /// user's outstanding reset links, under the user's lock; returns how many sessions were
    /// live. Every writer that ends all sessions (reset, admin set, disable) does the same.
    ///
    /// Its cost does not grow with the number of sessions: one statement ends them all, one
    /// revokes their refresh tokens, and the events are the user-wide one (tokens issued
    /// before the cut-off second are dead) plus one per session used in the cut-off second
    /// itself (a token of it may carry `iat` equal to the cut-off; `last_used_at` is written
    /// before every token is signed, with its `iat`, so no other session can hold one).
    async fn revoke_user_sessions(
        &self,
        user_id: i64,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError>;

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

    /// Replaces a user's email if it is still `old` (compare-and-set); returns whether it did.
    /// `Duplicate` when `new` belongs to another user.
    async fn update_user_email(&self, id: i64, old: &str, new: &str) -> Result<bool, StoreError>;

    /// Whether the data migration `name` has been recorded as done.
    async fn data_migration_done(&self, name: &str) -> Result<bool, StoreError>;

    /// Records the data migration `name` as done at `now` (idempotent).
    async fn record_data_migration(&self, name: &str, now: DateTime<Utc>)
    -> Result<(), StoreError>;

    /// Deletes at most `limit` rows of one kind that nothing needs any more, in one short
    /// transaction; returns how many. Callers repeat until fewer than `limit` come back.
    async fn purge_batch(&self, purge: Purge, limit: i64) -> Result<u64, StoreError>;

    /// Queues a password reset, in one transaction under the user's lock, when the user exists
    /// and is active and fewer than `per_hour` reset mails were queued in the hour before `now`,
    /// none within `min_interval`: deletes the user's older reset tokens (a newer one voids
    /// them), stores the token's hash and queues the mail. Whether it was queued.
    async fn queue_password_reset(
        &self,
        request: &ResetRequest<'_>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Issues the token a queued message carries, as the message is sent: under the user's
    /// lock, the user's unused token of `kind` (the one its queueing stored) takes
    /// `token_hash` and expires at `expires_at`. False, and nothing changed, when there is
    /// none (used, voided by a newer one or a password change, or the user is gone or
    /// disabled): the message must not go.
    async fn reissue_token(
        &self,
        user_id: i64,
        kind: MailTemplate,
        token_hash: &[u8; 32],
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Whether a one-time token of `kind` with this hash exists, unused and unexpired at
    /// `now`: a read, so a request that cannot succeed is refused before it costs a password
    /// hash (the use itself, [`Store::reset_password`], decides again atomically).
    async fn token_is_usable(
        &self,
        token_hash: &[u8; 32],
        kind: MailTemplate,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Uses a reset token, in one transaction: consumes it (once: an atomic update, so two
    /// concurrent uses cannot both succeed) if it is unused and unexpired at `now` and its user
    /// is active; stores `new_hash`; ends every session of the user as logout-all does; clears
    /// the email's lockout counter; marks the email verified; queues `notification`. The
    /// user's id, or `None` when the token cannot be used (nothing changes then).
    async fn reset_password(
        &self,
        token_hash: &[u8; 32],
        new_hash: &str,
        notification: &NewMail,
        now: DateTime<Utc>,
    ) -> Result<Option<i64>, StoreError>;

    /// Claims up to `limit` messages due at `now` (not sent, not failed, not leased by a live
    /// lease), leasing them until `lease_until` and counting the attempt; password resets
    /// first, then oldest first. On PostgreSQL rows claimed by another replica are skipped
    /// (`FOR UPDATE SKIP LOCKED`).
    async fn claim_mail(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<OutboxMail>, StoreError>;

    /// Records how sending message `id` ended, at `now`.
    async fn finish_mail(
        &self,
        id: i64,
        outcome: MailOutcome,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Messages neither sent nor failed.
    async fn pending_mail(&self) -> Result<i64, StoreError>;

    /// A registration: [`Store::insert_user`] with `mail_to`, the address mail goes to (as the
    /// user typed it; `email` is the comparison key), and in the same transaction the
    /// verification token and its mail, if any (`verification.mail`'s template is the token's
    /// kind), within the address's hourly share ([`MAIL_PER_ADDRESS_PER_HOUR`]).
    async fn register_user(
        &self,
        email: &str,
        mail_to: &str,
        password_hash: &str,
        now: DateTime<Utc>,
        verification: Option<&TokenMail>,
    ) -> Result<UserRow, StoreError>;

    /// Queues a new verification mail for a user whose address is not verified, unless one
    /// was queued within `min_interval`: older verification tokens are deleted, in one
    /// transaction. Whether one was queued.
    async fn queue_email_verification(
        &self,
        user_id: i64,
        verification: &TokenMail,
        min_interval: chrono::Duration,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Sets a user's password hash and, in the same transaction under the user's lock, ends
    /// every session as logout-all does (the admin's `user set-password`). False when there is
    /// no such user.
    async fn set_password(
        &self,
        user_id: i64,
        new_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Marks a user's address verified (kept if it already was). False when there is no such
    /// user.
    async fn mark_email_verified(
        &self,
        user_id: i64,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Uses a verification token: consumes it once (atomically) if unused and unexpired at
    /// `now`, and marks its user's address verified. The user's id, or `None`.
    async fn verify_email(
        &self,
        token_hash: &[u8; 32],
        now: DateTime<Utc>,
    ) -> Result<Option<i64>, StoreError>;

    /// Every user, by id (for `copy-data`).
    async fn export_users(&self) -> Result<Vec<UserRow>, StoreError>;

    /// Every refresh token not expired at `now`, oldest first (for `copy-data`).
    async fn export_refresh_tokens(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Vec<RefreshTokenRow>, StoreError>;

    /// Imports users (ids kept) and refresh tokens in one transaction, with a session for each
    /// token family (ended when all its tokens are revoked). Refuses (returns `None`) when the
    /// target already has users, unless `merge`, in which case users whose id or email exists
    /// are skipped along with their tokens. Leaves the id sequence past the largest id, so the
    /// next registration does not collide.
    async fn import(
        &self,
        users: &[UserRow],
        tokens: &[RefreshTokenRow],
        merge: bool,
    ) -> Result<Option<ImportReport>, StoreError>;
}

/// Whether the applied versions cover every embedded migration; a missing migrations table
/// means nothing was applied.
fn covers(
    applied: Result<Vec<i64>, sqlx::Error>,
    migrator: &sqlx::migrate::Migrator,
) -> Result<bool, StoreError> {
    let applied = match applied {
        Ok(applied) => applied,
        Err(sqlx::Error::Database(db))
            if db.code().as_deref() == Some("42P01") || db.message().contains("no such table") =>
        {
            return Ok(false);
        }
        Err(err) => return Err(err.into()),
    };
    Ok(migrator
        .iter()
        .all(|migration| applied.contains(&migration.version)))
}

/// The versions the migrations table records as applied.
const APPLIED_MIGRATIONS: &str = "select version from _sqlx_migrations where success";

/// Opens a pool for `url` (without retrying) and returns the matching store.
///
/// # Errors
/// `Unavailable` when the database does not answer.
pub async fn connect(url: &DatabaseUrl, pool: PoolSettings) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match url {
        DatabaseUrl::Postgres(_) => Arc::new(PgStore::connect(url, pool).await?),
        DatabaseUrl::SqliteFile(_) | DatabaseUrl::SqliteMemory => {
            Arc::new(SqliteStore::connect(url, pool).await?)
        }
    })
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeSet, fs};

    #[test]
    fn both_backends_have_the_same_migration_files() {
        let names = |dir: &str| -> BTreeSet<String> {
            fs::read_dir(format!("{}/migrations/{dir}", env!("CARGO_MANIFEST_DIR")))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        };
        let sqlite = names("sqlite");
        assert!(!sqlite.is_empty());
        assert_eq!(sqlite, names("postgres"));
    }
}
