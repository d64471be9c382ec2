//! The users: accounts, their addresses and who writes their password.

use super::{NewMail, StoreError, TokenMail};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

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

/// The store's users chapter (see [`Store`](super::Store) for the rules every chapter keeps).
#[async_trait]
pub trait UserStore: Send + Sync {
    /// Inserts a user. `Duplicate` when the (normalised) email is taken.
    async fn insert_user(
        &self,
        email: &str,
        password_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<UserRow, StoreError>;

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

    /// Replaces a user's email if it is still `old` (compare-and-set); returns whether it did.
    /// `Duplicate` when `new` belongs to another user.
    async fn update_user_email(&self, id: i64, old: &str, new: &str) -> Result<bool, StoreError>;

    /// Marks a user's address verified (kept if it already was). False when there is no such
    /// user.
    async fn mark_email_verified(
        &self,
        user_id: i64,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Replaces the password hash if it is still `old_hash` (a compare-and-set, so a concurrent
    /// change is never overwritten); returns whether it did.
    async fn rehash_password(
        &self,
        id: i64,
        old_hash: &str,
        new_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// A password change by the user of session `keep`, in one transaction under the user's
    /// lock: a compare-and-set from `old_hash` (a concurrent change is never overwritten), every
    /// other session ends as at logout (`keep` stays live), the user's outstanding reset links
    /// are void and the notification is queued. Whether it changed (false when the user is
    /// gone or the hash moved meanwhile).
    async fn change_password_by_user(
        &self,
        change: &PasswordChange<'_>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Sets a user's password hash and, in the same transaction under the user's lock, ends
    /// every session as logout-all does (the admin's `user set-password`). False when there is
    /// no such user.
    async fn set_password_by_admin(
        &self,
        user_id: i64,
        new_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
}
