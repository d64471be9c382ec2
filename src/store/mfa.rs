//! The second factor: TOTP factors, recovery codes, and the challenges between a password and a
//! code.

use super::{NewMail, RefreshTokenRow, StoreError};
use crate::assurance::{Assurance, Methods};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// A TOTP factor as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct FactorRow {
    /// The `factor_id`.
    pub id: Uuid,
    /// Whose factor it is.
    pub user_id: i64,
    /// The TOTP key, sealed under `secret_key` (in the clear when that is `None`).
    pub secret: Vec<u8>,
    /// The id of the data key that sealed `secret`.
    pub secret_key: Option<String>,
    /// The enrolment.
    pub created_at: DateTime<Utc>,
    /// Its confirmation; unconfirmed factors verify nothing and expire.
    pub confirmed_at: Option<DateTime<Utc>>,
    /// The last code accepted.
    pub last_used_at: Option<DateTime<Utc>>,
    /// The newest time step accepted: a code of it or an older step is refused.
    pub last_step: Option<i64>,
}

/// A recovery code as stored (for `copy-data`).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RecoveryCodeRow {
    /// Whose code it is.
    pub user_id: i64,
    /// Its hash (the code itself is never stored).
    pub code_hash: Vec<u8>,
    /// When its set was made.
    pub created_at: DateTime<Utc>,
    /// Its use, if used.
    pub used_at: Option<DateTime<Utc>>,
}

/// A factor about to be stored, unconfirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewFactor<'a> {
    /// The new `factor_id`.
    pub id: Uuid,
    /// Whose factor it is.
    pub user_id: i64,
    /// The sealed TOTP key.
    pub secret: &'a [u8],
    /// The data key that sealed it, if any.
    pub secret_key: Option<&'a str>,
    /// Now.
    pub created_at: DateTime<Utc>,
}

/// A confirmation with a right code, for [`SecondFactorStore::confirm_factor`].
#[derive(Debug, Clone)]
pub struct FactorConfirmation<'a> {
    /// The factor being confirmed.
    pub factor_id: Uuid,
    /// Its user, the caller.
    pub user_id: i64,
    /// The time step of the code that confirmed it (counts as used).
    pub step: i64,
    /// Factors created before this have expired unconfirmed.
    pub created_after: DateTime<Utc>,
    /// The caller's session: it stays, at the level `methods` reaches.
    pub session: Uuid,
    /// The caller's session's methods from now on.
    pub methods: Methods,
    /// Hashes of a new set of recovery codes, stored only when this is the user's first
    /// confirmed factor.
    pub recovery_codes: &'a [[u8; 32]],
    /// The "second factor added" notification.
    pub notification: &'a NewMail,
    /// The user's other sessions used at or after this may hold a live access token: each
    /// gets an event.
    pub live_tokens_since: DateTime<Utc>,
}

/// How [`SecondFactorStore::confirm_factor`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confirmation {
    /// Confirmed: the caller's session's current refresh token and sign-in, and whether the
    /// recovery codes were stored (the first factor).
    Confirmed {
        /// The session's current refresh token, to sign again.
        token: RefreshTokenRow,
        /// The session's sign-in, raised.
        assurance: Assurance,
        /// Whether this was the first factor, so the recovery codes were stored.
        codes_stored: bool,
    },
    /// The factor is gone, confirmed, expired or another user's.
    FactorGone,
    /// The code's time step was used already.
    StepUsed,
    /// The caller's session ended meanwhile.
    SessionGone,
}

/// The store's second-factor chapter (see [`Store`](super::Store) for the rules every chapter
/// keeps).
#[async_trait]
pub trait SecondFactorStore: Send + Sync {
    /// Stores an unconfirmed factor, under the user's lock, replacing the user's unconfirmed
    /// ones; false (and nothing stored) when the user has `max_confirmed` confirmed factors.
    async fn add_totp_factor(
        &self,
        factor: &NewFactor<'_>,
        max_confirmed: i64,
    ) -> Result<bool, StoreError>;

    /// The factor with this id.
    async fn find_factor(&self, id: Uuid) -> Result<Option<FactorRow>, StoreError>;

    /// The user's confirmed factors, oldest first.
    async fn confirmed_factors(&self, user_id: i64) -> Result<Vec<FactorRow>, StoreError>;

    /// Accepts a code of time step `step` for a confirmed factor, once: a guarded update that
    /// moves the factor's newest accepted step forward. False when that step (or a newer one)
    /// was accepted already, on any replica, or the factor is gone.
    async fn use_time_step(
        &self,
        factor_id: Uuid,
        step: i64,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Confirms a factor with a right code, in one transaction under the user's lock: the
    /// factor must be the user's, unconfirmed and unexpired, and the code's step unused;
    /// stores the recovery codes when this is the first confirmed factor; raises the caller's
    /// session to `methods`; ends every other session of the user as at logout; queues the
    /// notification.
    async fn confirm_factor(
        &self,
        confirmation: &FactorConfirmation<'_>,
        now: DateTime<Utc>,
    ) -> Result<Confirmation, StoreError>;

    /// A step-up: under the user's lock, the user's live session `session` takes `methods`
    /// (added to its own) and records a use at `now`; its current refresh token and its
    /// sign-in, or `None` when it is not a live session of the user.
    async fn step_up_session(
        &self,
        session: Uuid,
        user_id: i64,
        methods: Methods,
        now: DateTime<Utc>,
    ) -> Result<Option<(RefreshTokenRow, Assurance)>, StoreError>;

    /// Removes a confirmed factor of the user, under the user's lock; the last one takes the
    /// recovery codes with it. Queues the notification. Whether it was there.
    async fn remove_factor(
        &self,
        factor_id: Uuid,
        user_id: i64,
        notification: &NewMail,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Replaces the user's recovery codes with these hashes, under the user's lock; false (and
    /// nothing changed) when the user has no confirmed factor.
    async fn replace_recovery_codes(
        &self,
        user_id: i64,
        code_hashes: &[[u8; 32]],
        notification: &NewMail,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Uses one of the user's recovery codes, once (a guarded update: of two concurrent uses
    /// one wins), and queues the notification with it. Whether it was usable.
    async fn use_recovery_code(
        &self,
        user_id: i64,
        code_hash: &[u8; 32],
        notification: &NewMail,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// How many of the user's recovery codes are unused.
    async fn recovery_codes_left(&self, user_id: i64) -> Result<i64, StoreError>;

    /// Stores a sign-in challenge (the `mfa_token`'s hash) for the user, only while
    /// `checked_hash` (the hash the password was verified against) is still the user's: a
    /// password writer that committed meanwhile deleted the user's challenges, and this one must
    /// not outlive it either. Whether it was stored.
    async fn add_challenge(
        &self,
        token_hash: &[u8; 32],
        user_id: i64,
        checked_hash: &str,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// The user of an unused challenge unexpired at `now` (a read: the session that ends the
    /// challenge uses it up, see [`SessionStore::start_session`](super::SessionStore::start_session)).
    async fn challenge_user(
        &self,
        token_hash: &[u8; 32],
        now: DateTime<Utc>,
    ) -> Result<Option<i64>, StoreError>;

    /// `user mfa-reset`: removes the user's factors, recovery codes and challenges and ends
    /// every session as logout-all does, under the user's lock. Whether the user had a factor.
    async fn reset_second_factor(
        &self,
        user_id: i64,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Up to `limit` factors whose secret is not sealed under `current_key` (`None`: in the
    /// clear), for `keys reencrypt`.
    async fn factors_to_reseal(
        &self,
        current_key: Option<&str>,
        limit: i64,
    ) -> Result<Vec<FactorRow>, StoreError>;

    /// Replaces a factor's sealed secret, if it is still `old_secret`; whether it was.
    async fn reseal_factor(
        &self,
        id: Uuid,
        old_secret: &[u8],
        new_secret: &[u8],
        new_key: Option<&str>,
    ) -> Result<bool, StoreError>;
}
