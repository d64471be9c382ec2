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
}

impl Caller {
    /// An operator running an admin command.
    #[must_use]
    pub fn cli() -> Self {
        Self {
            ip: None,
            request_id: None,
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

/// Records one audited action: a log event on target `audit`, and its counter.
pub fn record(event: Event, outcome: &'static str, user_id: Option<i64>, caller: &Caller) {
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

/// Counts a `/auth/verify` result (not audited: services call it on every request).
pub fn verify_result(result: &'static str) {
    metrics::counter!("auth_verify_total", "result" => result).increment(1);
}
