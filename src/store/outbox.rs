//! The outbox: mail and webhook events, queued in the transaction of their cause and sent by
//! the worker.

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

/// An account change other services learn of (API.md, "Webhooks (Standard Webhooks)").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WebhookEvent {
    /// A registration (or an admin's `user create`).
    Created,
    /// The address was proved (a verification link, a reset, an admin), the first time.
    EmailVerified,
    /// A new password: the user's change, a reset, an admin's `user set-password`.
    PasswordChanged,
    /// Disabled (it was enabled).
    Disabled,
    /// Enabled (it was disabled).
    Enabled,
    /// The account was deleted (by its user or an admin).
    Deleted,
    /// Every session ended: logout-all, a reset, an admin's `user set-password`.
    SessionsEnded,
    /// A first second factor was confirmed.
    MfaEnabled,
    /// The last second factor was removed (by its user or an admin's `user mfa-reset`).
    MfaDisabled,
    /// A passkey was added.
    PasskeyAdded,
    /// A passkey was removed.
    PasskeyRemoved,
}

impl WebhookEvent {
    /// Every event, in the contract's order.
    pub const ALL: [Self; 11] = [
        Self::Created,
        Self::EmailVerified,
        Self::PasswordChanged,
        Self::Disabled,
        Self::Enabled,
        Self::Deleted,
        Self::SessionsEnded,
        Self::MfaEnabled,
        Self::MfaDisabled,
        Self::PasskeyAdded,
        Self::PasskeyRemoved,
    ];

    /// The body's `type`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "user.created",
            Self::EmailVerified => "user.email_verified",
            Self::PasswordChanged => "user.password_changed",
            Self::Disabled => "user.disabled",
            Self::Enabled => "user.enabled",
            Self::Deleted => "user.deleted",
            Self::SessionsEnded => "user.sessions_ended",
            Self::MfaEnabled => "user.mfa_enabled",
            Self::MfaDisabled => "user.mfa_disabled",
            Self::PasskeyAdded => "user.passkey_added",
            Self::PasskeyRemoved => "user.passkey_removed",
        }
    }

    /// The event a `type` names.
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == name)
    }
}

/// Who receives which events (`WEBHOOK_URLS`, `WEBHOOK_EVENTS`), given to the store when it is
/// opened: every change that causes a subscribed event writes one outbox row per endpoint in
/// its own transaction. Empty (the default): no rows, nothing written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscriptions {
    /// The endpoints, as configured.
    pub endpoints: Vec<String>,
    /// The events they receive.
    pub events: Vec<WebhookEvent>,
}

impl Subscriptions {
    /// Whether `event` is sent anywhere.
    #[must_use]
    pub fn wants(&self, event: WebhookEvent) -> bool {
        !self.endpoints.is_empty() && self.events.contains(&event)
    }
}

/// A webhook event for one endpoint, as a worker claimed it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OutboxWebhook {
    /// The row.
    pub id: i64,
    /// Where it goes.
    pub endpoint: String,
    /// The `webhook-id`, the same on every attempt (and for every endpoint of one event).
    pub message_id: String,
    /// The body's `type` (as the replica that wrote it named it).
    pub event_type: String,
    /// Whose account changed.
    pub user_id: i64,
    /// The address at the time of the change (empty once the row is finished).
    pub email: String,
    /// When the change happened: the body's `timestamp`.
    pub created_at: DateTime<Utc>,
    /// Attempts so far, this one included.
    pub attempts: i32,
}

/// How an attempt to deliver a webhook ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// A 2xx: done (the address is cleared).
    Delivered,
    /// Not delivered: try again at this time.
    RetryAt(DateTime<Utc>),
    /// Not delivered, and retried long enough: given up (the address is cleared).
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

    /// Claims the next webhook row for `endpoint` due at `now` (not delivered, not failed, not
    /// leased by a live lease), leasing it until `lease_until` and counting the attempt; oldest
    /// first, and never ahead of an earlier row of the same user and endpoint that has not had
    /// its first attempt or is in it (so a user's events are first attempted in order). On
    /// PostgreSQL rows claimed by another replica are skipped (`FOR UPDATE SKIP LOCKED`).
    async fn claim_webhook(
        &self,
        endpoint: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Option<OutboxWebhook>, StoreError>;

    /// Records how delivering row `id` ended, at `now`.
    async fn finish_webhook(
        &self,
        id: i64,
        outcome: DeliveryOutcome,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// When the next row for `endpoint` falls due (due and not leased), if one is queued: a
    /// read, so the worker sleeps until then.
    async fn next_webhook_due(&self, endpoint: &str) -> Result<Option<DateTime<Utc>>, StoreError>;

    /// Webhook rows neither delivered nor failed.
    async fn pending_webhooks(&self) -> Result<i64, StoreError>;
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
