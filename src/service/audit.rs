//! The audit trail and the auth counters.
//!
//! One structured event per security-relevant action on the tracing target `audit`, with the
//! event name, outcome, user id, client IP and request id, and never an email, password, hash
//! or token. The same call bumps the matching Prometheus counter, so the log and `/metrics`
//! cannot drift apart.

use std::net::IpAddr;

/// Who is acting: the HTTP client (IP and request id) or an operator at the command line.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// The client's address (after trusted-proxy resolution); `None` for admin commands.
    pub ip: Option<IpAddr>,
    /// The request id (`x-request-id`); `None` for admin commands.
    pub request_id: Option<String>,
    /// The `User-Agent` header, for the session a login starts (never logged).
    pub user_agent: Option<String>,
}

impl Caller {
    /// An operator running an admin command.
    #[must_use]
    pub fn cli() -> Self {
        Self {
            ip: None,
            request_id: None,
            user_agent: None,
        }
    }
}

/// The audited actions, with the event names documented in the README.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// `register`
    Register,
    /// `login`
    Login,
    /// `lockout`: the failure that locked an email.
    Lockout,
    /// `refresh`
    Refresh,
    /// `refresh_reuse_detected`: a rotated refresh token came back; its family was revoked.
    ReuseDetected,
    /// `logout`
    Logout,
    /// `logout_all`
    LogoutAll,
    /// `password_reset_requested`: a forgot-password request (outcome `success` when a mail
    /// was queued, `ignored` when not: unknown or disabled user, or throttled).
    PasswordResetRequested,
    /// `password_reset`
    PasswordReset,
    /// `email_verify`: a verification link used.
    EmailVerify,
    /// `email_verification_requested`: a verification mail asked for again.
    EmailVerificationRequested,
    /// `password_changed`: the user changed the password (`POST /auth/password/change`).
    PasswordChanged,
    /// `session_ended`: the user ended one of their sessions (`DELETE /auth/sessions/{sid}`).
    SessionEnded,
    /// `session_evicted`: a login beyond `MAX_SESSIONS_PER_USER` ended the least recently
    /// used session.
    SessionEvicted,
    /// `account_deleted`: the user deleted their own account (`DELETE /auth/me`).
    AccountDeleted,
    /// `mfa_enrolled`: a TOTP factor confirmed.
    MfaEnrolled,
    /// `mfa_removed`: a factor removed (by the user, or all of them by `user mfa-reset`).
    MfaRemoved,
    /// `mfa_challenge_failed`: a wrong or replayed second-factor code, or one refused while
    /// the second factor is locked.
    MfaChallengeFailed,
    /// `mfa_step_up`: a live session raised to aal2.
    MfaStepUp,
    /// `recovery_code_used`
    RecoveryCodeUsed,
    /// `recovery_codes_regenerated`
    RecoveryCodesRegenerated,
    /// `passkey_added`: a passkey registered.
    PasskeyAdded,
    /// `passkey_removed`
    PasskeyRemoved,
    /// `passkey_login`: a sign-in with a passkey (or one refused).
    PasskeyLogin,
    /// `admin_user_create`, `admin_user_disable`, ... (admin commands).
    Admin(&'static str),
}

impl Event {
    /// The `event` field.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Register => "register",
            Self::Login => "login",
            Self::Lockout => "lockout",
            Self::Refresh => "refresh",
            Self::ReuseDetected => "refresh_reuse_detected",
            Self::Logout => "logout",
            Self::LogoutAll => "logout_all",
            Self::PasswordResetRequested => "password_reset_requested",
            Self::PasswordReset => "password_reset",
            Self::EmailVerify => "email_verify",
            Self::EmailVerificationRequested => "email_verification_requested",
            Self::PasswordChanged => "password_changed",
            Self::SessionEnded => "session_ended",
            Self::SessionEvicted => "session_evicted",
            Self::AccountDeleted => "account_deleted",
            Self::MfaEnrolled => "mfa_enrolled",
            Self::MfaRemoved => "mfa_removed",
            Self::MfaChallengeFailed => "mfa_challenge_failed",
            Self::MfaStepUp => "mfa_step_up",
            Self::RecoveryCodeUsed => "recovery_code_used",
            Self::RecoveryCodesRegenerated => "recovery_codes_regenerated",
            Self::PasskeyAdded => "passkey_added",
            Self::PasskeyRemoved => "passkey_removed",
            Self::PasskeyLogin => "passkey_login",
            Self::Admin(name) => name,
        }
    }

    /// The Prometheus counter the event feeds, if any.
    fn counter(self) -> Option<&'static str> {
        match self {
            Self::Register => Some("auth_registrations_total"),
            Self::Login => Some("auth_logins_total"),
            Self::Refresh | Self::ReuseDetected => Some("auth_refresh_total"),
            _ => None,
        }
    }
}

/// How an audited action ended: the `outcome` field and the counters' `result` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// `success`
    Success,
    /// `exists`: registration of a taken email.
    Exists,
    /// `invalid`: a request the rules refused (bad email or password, unusable token).
    Invalid,
    /// `error`: the database or another dependency failed.
    Error,
    /// `invalid_request`: a login whose email cannot be an address.
    InvalidRequest,
    /// `invalid_credentials`
    InvalidCredentials,
    /// `locked`: refused by (or, for `lockout`, causing) the per-email lockout.
    Locked,
    /// `ip_blocked`: refused by the per-IP failure limit.
    IpBlocked,
    /// `ip_locked`: the failure that blocked a client IP.
    IpLocked,
    /// `disabled`
    Disabled,
    /// `unverified`: the right password for an address not yet verified, with
    /// `EMAIL_VERIFICATION=required`.
    Unverified,
    /// `grace_reuse`: a rotated refresh token presented again within the grace window.
    GraceReuse,
    /// `reuse_detected`: a rotated refresh token presented after the grace window.
    ReuseDetected,
    /// `ignored`: a logout with a string that is not a valid refresh token.
    Ignored,
    /// `mfa_required`: the right password of a user with a second factor; no tokens yet.
    MfaRequired,
}

impl Outcome {
    /// The label value.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Exists => "exists",
            Self::Invalid => "invalid",
            Self::Error => "error",
            Self::InvalidRequest => "invalid_request",
            Self::InvalidCredentials => "invalid_credentials",
            Self::Locked => "locked",
            Self::IpBlocked => "ip_blocked",
            Self::IpLocked => "ip_locked",
            Self::Disabled => "disabled",
            Self::Unverified => "unverified",
            Self::GraceReuse => "grace_reuse",
            Self::ReuseDetected => "reuse_detected",
            Self::Ignored => "ignored",
            Self::MfaRequired => "mfa_required",
        }
    }
}

/// Records one audited action: a log event on target `audit`, and its counter.
pub fn record(event: Event, outcome: Outcome, user_id: Option<i64>, caller: &Caller) {
    let outcome = outcome.as_str();
    if let Some(counter) = event.counter() {
        metrics::counter!(counter, "result" => outcome).increment(1);
    }
    if event == Event::Lockout {
        metrics::counter!("auth_lockouts_total").increment(1);
    }
    let ip = caller.ip.map(|ip| ip.to_string());
    tracing::info!(
        target: "audit",
        event = event.name(),
        outcome,
        user.id = user_id,
        client.ip = ip.as_deref(),
        request_id = caller.request_id.as_deref(),
        "audit"
    );
}

/// `auth_verify_total` by result (not audited: services call verify on every request), with
/// the handles kept so a verification never builds labels.
pub struct VerifyCounters {
    valid: metrics::Counter,
    invalid: metrics::Counter,
    error: metrics::Counter,
}

impl VerifyCounters {
    /// Registers the three series.
    #[must_use]
    pub fn new() -> Self {
        Self {
            valid: metrics::counter!("auth_verify_total", "result" => "valid"),
            invalid: metrics::counter!("auth_verify_total", "result" => "invalid"),
            error: metrics::counter!("auth_verify_total", "result" => "error"),
        }
    }

    /// Counts one result.
    pub fn record(&self, result: VerifyResult) {
        match result {
            VerifyResult::Valid => &self.valid,
            VerifyResult::Invalid => &self.invalid,
            VerifyResult::Error => &self.error,
        }
        .increment(1);
    }
}

impl Default for VerifyCounters {
    fn default() -> Self {
        Self::new()
    }
}

/// The `result` label of `auth_verify_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyResult {
    /// `valid`
    Valid,
    /// `invalid`
    Invalid,
    /// `error` (503 or 500)
    Error,
}
