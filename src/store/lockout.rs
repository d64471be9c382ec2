//! The login lockout counters.

use super::StoreError;
use async_trait::async_trait;
use chrono::{DateTime, Utc};

/// The rules of the login counter, handed to the store by the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptLimits {
    /// Attempts allowed per window; the one that reaches it locks the key.
    pub max_attempts: i64,
    /// Counting window.
    pub window: chrono::Duration,
    /// Lock duration.
    pub lockout: chrono::Duration,
}

/// The counter after one attempt was reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct AttemptRow {
    /// Attempts in this window, this one included; `max_attempts + 1` means refused.
    pub attempts: i64,
    /// When the current window began.
    pub window_start: DateTime<Utc>,
    /// Until when the key is locked, once the limit was reached.
    pub locked_until: Option<DateTime<Utc>>,
}

/// The store's lockout chapter (see [`Store`](super::Store) for the rules every chapter keeps).
#[async_trait]
pub trait LockoutStore: Send + Sync {
    /// Reserves one login attempt for `key` in a single atomic statement and returns the
    /// counter as it stands afterwards: a reset window or an expired lock starts again at 1,
    /// the attempt that reaches `max_attempts` sets the lock, and while locked the count stays
    /// at `max_attempts + 1`.
    async fn reserve_login_attempt(
        &self,
        key: &str,
        now: DateTime<Utc>,
        limits: AttemptLimits,
    ) -> Result<AttemptRow, StoreError>;

    /// The counter of `key`, if any.
    async fn find_login_attempt(&self, key: &str) -> Result<Option<AttemptRow>, StoreError>;

    /// Forgets the counter of `key` (after a successful login, or `user unlock`).
    async fn clear_login_attempts(&self, key: &str) -> Result<(), StoreError>;
}
