//! [`AuthError`]: every way an auth action can fail, in domain words. Its `Display` is the
//! contract's `detail`; the HTTP layer maps each variant to a status and an `error_code`.

use chrono::{DateTime, Utc};

use crate::{passwords::PasswordError, store::StoreError};

/// Every way an auth action can fail; `Display` is the contract's `detail`.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Registration of an email that exists.
    #[error("User already exists")]
    UserExists,
    /// An email that breaks the format rules.
    #[error("Invalid email format")]
    InvalidEmail,
    /// A password that breaks the policy; the reasons in contract order.
    #[error("Password validation failed: {}", .0.join(", "))]
    WeakPassword(Vec<&'static str>),
    /// An email-verification token that is unknown, expired, used or voided.
    #[error("Invalid or expired verification token")]
    InvalidVerificationToken,
    /// The right password for an address not verified, with `EMAIL_VERIFICATION=required`.
    #[error("Email not verified")]
    EmailNotVerified,
    /// A password-reset token that is unknown, expired, used or voided.
    #[error("Invalid or expired reset token")]
    InvalidResetToken,
    /// Unknown email or wrong password.
    #[error("Invalid email or password")]
    InvalidCredentials,
    /// Right password, disabled account.
    #[error("Account is disabled")]
    AccountDisabled,
    /// Locked out until `until`.
    #[error("Too many login attempts. Try again after {}", until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))]
    TooManyAttempts {
        /// When the lock ends.
        until: DateTime<Utc>,
        /// Seconds until then, for `Retry-After`.
        retry_after_secs: u64,
    },
    /// The client's address (network) failed too many logins: refused for every email.
    #[error("Too many failed logins from this address. Try again after {}", until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))]
    IpBlocked {
        /// When the block ends.
        until: DateTime<Utc>,
        /// Seconds until then, for `Retry-After`.
        retry_after_secs: u64,
    },
    /// No bearer token was presented.
    #[error("Authorization header missing")]
    MissingToken,
    /// An access token that does not verify, or whose user is gone or disabled.
    #[error("Invalid or expired token")]
    InvalidToken,
    /// A session id that is not a live session of the caller (unknown, ended, or another
    /// user's: one answer for all three).
    #[error("Session not found")]
    SessionNotFound,
    /// A second-factor code (TOTP or recovery) that is wrong, or was used already.
    #[error("Invalid code")]
    InvalidMfaCode,
    /// An `mfa_token` that is unknown, expired or used.
    #[error("Invalid or expired MFA token")]
    InvalidMfaToken,
    /// A factor id that is not the caller's (unknown, expired unconfirmed, removed, or
    /// another user's: one answer for all).
    #[error("Factor not found")]
    FactorNotFound,
    /// A sixth confirmed TOTP factor.
    #[error("Too many factors")]
    FactorLimit,
    /// Recovery codes (or a step-up) without a confirmed factor.
    #[error("No second factor enrolled")]
    MfaNotEnrolled,
    /// A sensitive action from an aal1 session of a user with a confirmed factor.
    #[error("A second factor is required for this action")]
    StepUpRequired,
    /// A passkey registration whose credential does not verify (wrong challenge, origin or RP
    /// ID, no user verification, registered already).
    #[error("Passkey verification failed")]
    InvalidPasskey,
    /// A passkey sign-in that does not verify (unknown credential, bad signature, wrong origin,
    /// replayed or unknown ceremony, a counter that did not move forward).
    #[error("Passkey sign-in failed")]
    PasskeySignInFailed,
    /// A passkey registration's ceremony that is unknown, expired, used or another user's.
    #[error("Invalid or expired ceremony")]
    InvalidCeremony,
    /// A passkey id that is not the caller's.
    #[error("Passkey not found")]
    PasskeyNotFound,
    /// Too many passkey sign-ins are started and unfinished: come back shortly.
    #[error("Service temporarily unavailable")]
    CeremoniesFull,
    /// A refresh token that does not verify, was revoked, or was reused.
    #[error("Invalid or expired refresh token")]
    InvalidRefreshToken,
    /// The database did not answer.
    #[error("Service temporarily unavailable")]
    Unavailable(#[source] StoreError),
    /// The revocation events have not been read for too long (database down): a token can
    /// no longer be vouched for.
    #[error("Service temporarily unavailable")]
    RevocationsStale,
    /// Too many requests already wait for a password hash: come back in a second.
    #[error("Service temporarily unavailable")]
    HashQueueFull,
    /// Anything unexpected; the cause is logged, never shown.
    #[error("Internal server error")]
    Internal(#[source] anyhow::Error),
}

impl From<StoreError> for AuthError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Unavailable(_) => Self::Unavailable(err),
            other => Self::Internal(other.into()),
        }
    }
}

impl From<PasswordError> for AuthError {
    fn from(err: PasswordError) -> Self {
        match err {
            PasswordError::Busy => Self::HashQueueFull,
            PasswordError::Failed(cause) => Self::Internal(cause),
        }
    }
}

impl From<anyhow::Error> for AuthError {
    fn from(err: anyhow::Error) -> Self {
        Self::Internal(err)
    }
}
