//! Time as a dependency.
//!
//! The service never reads the wall clock itself: every rule that depends on time (token expiry,
//! lockout windows, the refresh-token grace window) asks a [`Clock`]. Production uses
//! [`SystemClock`]; tests use [`TestClock`] and move time forward without sleeping. This is the
//! only module allowed to call `Utc::now()`.

use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Duration, Utc};

/// A source of the current time.
pub trait Clock: Send + Sync + 'static {
    /// The current instant, in UTC.
    fn now(&self) -> DateTime<Utc>;
}

/// The real wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that only moves when told to; clones share the same time.
///
/// Used by the tests to cross expiry, lockout and grace boundaries without sleeping.
#[derive(Debug, Clone)]
pub struct TestClock(Arc<Mutex<DateTime<Utc>>>);

impl TestClock {
    /// A clock frozen at the real current time, on a whole second (so a test can place an
    /// event at a known fraction of a second).
    #[must_use]
    pub fn new() -> Self {
        use chrono::DurationRound as _;
        let now = Utc::now();
        Self::at(now.duration_trunc(Duration::seconds(1)).unwrap_or(now))
    }

    /// A clock frozen at `instant`.
    #[must_use]
    pub fn at(instant: DateTime<Utc>) -> Self {
        Self(Arc::new(Mutex::new(instant)))
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut now = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        *now += by;
    }
}

impl Default for TestClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TestClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_clock_moves_only_when_advanced_and_clones_share_time() {
        let clock = TestClock::new();
        let other = clock.clone();
        let start = clock.now();
        assert_eq!(clock.now(), start);
        other.advance(Duration::seconds(90));
        assert_eq!(clock.now(), start + Duration::seconds(90));
    }
}
