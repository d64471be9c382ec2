//! One-time tokens: password resets and email verification.

use super::{MailTemplate, NewMail, StoreError};
use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};

/// A password reset to queue for the active user with `email`, unless the throttle says no.
#[derive(Debug, Clone)]
pub struct ResetRequest<'a> {
    /// The normalised email.
    pub email: &'a str,
    /// The token and the mail with its link.
    pub token: TokenMail,
    /// No reset mail if one was queued for this user within this.
    pub min_interval: Duration,
    /// No reset mail if this many were queued for this user within the last hour.
    pub per_hour: i64,
}

/// A one-time token and the mail that carries it (password reset, email verification).
#[derive(Debug, Clone)]
pub struct TokenMail {
    /// SHA-256 of the token.
    pub token_hash: [u8; 32],
    /// When the token stops working.
    pub expires_at: DateTime<Utc>,
    /// The message with the link; its template is also the token's kind.
    pub mail: NewMail,
}

/// The store's tokens chapter (see [`Store`](super::Store) for the rules every chapter keeps).
#[async_trait]
pub trait TokenStore: Send + Sync {
    /// Queues a password reset, in one transaction under the user's lock, when the user exists
    /// and is active and fewer than `per_hour` reset mails were queued in the hour before `now`,
    /// none within `min_interval`: deletes the user's older reset tokens (a newer one voids
    /// them), stores the token's hash and queues the mail. Whether it was queued.
    async fn queue_password_reset(
        &self,
        request: &ResetRequest<'_>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

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
    /// hash (the use itself, [`Store::reset_password_by_token`], decides again atomically).
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
    async fn reset_password_by_token(
        &self,
        token_hash: &[u8; 32],
        new_hash: &str,
        notification: &NewMail,
        now: DateTime<Utc>,
    ) -> Result<Option<i64>, StoreError>;

    /// Uses a verification token: consumes it once (atomically) if unused and unexpired at
    /// `now`, and marks its user's address verified. The user's id, or `None`.
    async fn verify_email(
        &self,
        token_hash: &[u8; 32],
        now: DateTime<Utc>,
    ) -> Result<Option<i64>, StoreError>;
}
