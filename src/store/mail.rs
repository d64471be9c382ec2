//! What the store keeps for account recovery: the mail outbox and one-time tokens.

use chrono::{DateTime, Duration, Utc};

/// A message kind; its templates are `templates/mail/<name>.txt` and `.html`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailTemplate {
    /// The password reset link.
    PasswordReset,
    /// "Your password was changed" (after a reset).
    PasswordChanged,
    /// The email verification link.
    VerifyEmail,
}

impl MailTemplate {
    /// The `template` column, and the templates' file name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PasswordReset => "password_reset",
            Self::PasswordChanged => "password_changed",
            Self::VerifyEmail => "verify_email",
        }
    }

    /// The kind a stored `template` names.
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        [
            Self::PasswordReset,
            Self::PasswordChanged,
            Self::VerifyEmail,
        ]
        .into_iter()
        .find(|t| t.as_str() == name)
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
    /// A [`MailTemplate`] name.
    pub template: String,
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
