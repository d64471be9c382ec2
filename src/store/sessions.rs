//! Sessions and their refresh tokens.

use super::StoreError;
use crate::assurance::{Assurance, Methods};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// With rotation on, the most rotated refresh tokens a session keeps (those rotated within the
/// grace window, newest first): no person's client refreshes ten times within the grace
/// window, and the eleventh-newest coming back counts as reuse.
pub const ROTATED_TOKENS_KEPT: i64 = 10;

/// The longest `User-Agent` a session keeps, in characters.
pub const USER_AGENT_CHARS: usize = 256;

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
    /// The methods its sign-in used (a step-up adds one).
    #[sqlx(try_from = "String")]
    pub amr: Methods,
}

impl SessionRow {
    /// What its tokens say about its sign-in.
    #[must_use]
    pub fn assurance(&self) -> Assurance {
        Assurance {
            methods: self.amr,
            auth_time: self.created_at,
        }
    }
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
    /// The methods its sign-in used.
    pub methods: Methods,
}

/// What a new session's sign-in proved, checked again under the user's lock by
/// [`SessionStore::start_session`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignInProof<'a> {
    /// The password, verified against this hash: it must still be the user's.
    Password(&'a str),
    /// A password sign-in's challenge (the `mfa_token`'s SHA-256) followed by a second
    /// factor: the challenge is used up by the session, so it must still be unused and
    /// unexpired (a password writer deletes the user's challenges).
    Challenge(&'a [u8; 32]),
    /// A passkey's signature: its counter moves forward here, once, only from the value the
    /// sign-in was checked against.
    Passkey(&'a super::PasskeyUse<'a>),
}

/// Why [`Store::start_session`] stored nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionRefused {
    /// The challenge is used, expired, voided by a password change, or another user's.
    ChallengeUsed,
    /// The user no longer exists (deleted while the login checked the password).
    UserGone,
    /// The user is disabled.
    Disabled,
    /// The user's password hash is no longer the one the login checked: a reset, a change or
    /// an admin's set committed between the check and the session.
    PasswordChanged,
    /// The passkey was used by another sign-in meanwhile (its counter moved), or removed.
    PasskeyUsed,
}

/// How a rotation attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotateOutcome {
    /// The parent was marked rotated and the child stored; the session's sign-in.
    Rotated(Assurance),
    /// The parent was already rotated, revoked or expired: somebody else won.
    NotRotatable,
    /// The user is gone or disabled, or the session has ended: no child may exist.
    Refused,
}

/// The store's sessions chapter (see [`Store`](super::Store) for the rules every chapter keeps).
#[async_trait]
pub trait SessionStore: Send + Sync {
    /// Starts a session with its first refresh token, under the user's lock, and keeps the
    /// user's live sessions at `max_live`: beyond it the least recently used end as at logout
    /// (an event each). `proof` is checked again under the lock: the password hash the login
    /// verified must still be the user's, so a login whose check raced a reset, a change or
    /// an admin's set (which committed first) starts nothing; a challenge is used up here, once.
    /// The ids of the sessions it ended, or why nothing was stored.
    /// `Duplicate` when the session id or `jti` exists.
    async fn start_session(
        &self,
        session: &NewSession,
        first: &NewRefreshToken,
        proof: SignInProof<'_>,
        max_live: i64,
    ) -> Result<Result<Vec<Uuid>, SessionRefused>, StoreError>;

    /// Records a use (a refresh) of a live session at `at`, the `iat` of the access token about
    /// to be signed for it (see [`Store::revoke_user_sessions`] for why it comes first); the
    /// session's sign-in when it is live.
    async fn touch_session(
        &self,
        id: Uuid,
        at: DateTime<Utc>,
    ) -> Result<Option<Assurance>, StoreError>;

    /// The user's live sessions (not ended, not expired at `now`), newest first.
    async fn live_sessions(
        &self,
        user_id: i64,
        now: DateTime<Utc>,
    ) -> Result<Vec<SessionRow>, StoreError>;

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
}
