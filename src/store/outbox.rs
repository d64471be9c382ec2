//! The mail outbox: messages queued in the transaction of their cause, sent by the worker.

use super::StoreError;
use async_trait::async_trait;
use chrono::{DateTime, Utc};

/// Verification and reset mails together that one address can receive per hour, whatever
/// caused them (registrations of a deleted and re-created account included); beyond it the
/// requests answer as usual and queue nothing. Security notifications are not counted.
pub const MAIL_PER_ADDRESS_PER_HOUR: i64 = 10;

/// A message kind; its templates are `templates/mail/<name>.txt` and `.html`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailTemplate {
    /// The password reset link.
    PasswordReset,
    /// "Your password was changed" (after a reset).
    PasswordChanged,
    /// The email verification link.
    VerifyEmail,
    /// "A second factor was added to your account".
    MfaEnrolled,
    /// "A second factor was removed from your account".
    MfaRemoved,
    /// "A recovery code was used to sign in".
    RecoveryCodeUsed,
    /// "New recovery codes were made; the old ones no longer work".
    RecoveryCodesRegenerated,
    /// "A passkey was added to your account".
    PasskeyAdded,
    /// "A passkey was removed from your account".
    PasskeyRemoved,
}

impl MailTemplate {
    /// The `template` column, and the templates' file name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PasswordReset => "password_reset",
            Self::PasswordChanged => "password_changed",
            Self::VerifyEmail => "verify_email",
            Self::MfaEnrolled => "mfa_enrolled",
            Self::MfaRemoved => "mfa_removed",
            Self::RecoveryCodeUsed => "recovery_code_used",
            Self::RecoveryCodesRegenerated => "recovery_codes_regenerated",
            Self::PasskeyAdded => "passkey_added",
            Self::PasskeyRemoved => "passkey_removed",
        }
    }

    /// Every kind; the outbox claims only these (`known_templates!` in `store/mod.rs`
    /// lists the same names for the SQL).
    pub const ALL: [Self; 9] = [
        Self::PasswordReset,
        Self::PasswordChanged,
        Self::VerifyEmail,
        Self::MfaEnrolled,
        Self::MfaRemoved,
        Self::RecoveryCodeUsed,
        Self::RecoveryCodesRegenerated,
        Self::PasskeyAdded,
        Self::PasskeyRemoved,
    ];

    /// Whether the message carries a one-time link (the others are notifications).
    #[must_use]
    pub fn has_link(self) -> bool {
        matches!(self, Self::PasswordReset | Self::VerifyEmail)
    }

    /// The kind a stored `template` names.
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

/// A stored `template` this build does not know; never read: the claim selects only the
/// known ones, so a message queued by a newer replica waits for one that can send it.
#[derive(Debug, thiserror::Error)]
#[error("unknown mail template {0:?}")]
pub struct UnknownTemplate(String);

impl TryFrom<String> for MailTemplate {
    type Error = UnknownTemplate;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        Self::parse(&name).ok_or(UnknownTemplate(name))
    }
}

/// A message about to be queued for a user (the recipient is the user's email).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMail {
    /// What it says.
    pub template: MailTemplate,
    /// The link it carries (with its token), if any.
    pub link: Option<String>,
}

/// A queued message, as a worker claimed it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OutboxMail {
    /// The row.
    pub id: i64,
    /// Whose message it is (none for a row whose user is gone).
    pub user_id: Option<i64>,
    /// The address.
    pub recipient: String,
    /// What it says.
    #[sqlx(try_from = "String")]
    pub template: MailTemplate,
    /// The link, for a message queued before links were made at send time (none since: the
    /// worker issues the token as it sends).
    pub link: Option<String>,
    /// When it was queued.
    pub created_at: DateTime<Utc>,
    /// Attempts so far, this one included.
    pub attempts: i32,
    /// The left part of its `Message-ID`, the same on every attempt.
    pub message_id: String,
}

/// How an attempt to send ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailOutcome {
    /// Delivered to the server: done (the link is cleared).
    Sent,
    /// Not delivered: try again at this time.
    RetryAt(DateTime<Utc>),
    /// Not delivered, and retried long enough: given up.
    Failed,
}

/// The store's outbox chapter (see [`Store`](super::Store) for the rules every chapter keeps).
#[async_trait]
pub trait OutboxStore: Send + Sync {
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

    /// When the next message can be claimed (due and not leased), if one is queued: a read,
    /// so a worker sleeps until then instead of claiming on a timer.
    async fn next_mail_due(&self) -> Result<Option<DateTime<Utc>>, StoreError>;

    /// Messages neither sent nor failed.
    async fn pending_mail(&self) -> Result<i64, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::MailTemplate;

    #[test]
    fn the_claim_knows_every_template_and_no_other() {
        let quoted: Vec<String> = MailTemplate::ALL
            .iter()
            .map(|t| format!("'{}'", t.as_str()))
            .collect();
        assert_eq!(known_templates!(), quoted.join(", "));
    }
}
