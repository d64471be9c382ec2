//! The per-email lockout: turns the counter the store returns into a decision and the
//! `X-RateLimit-*` figures. The counting itself is one atomic statement in the store.

use std::{borrow::Cow, net::IpAddr};

use chrono::{DateTime, Duration, Utc};
use ipnet::{IpNet, Ipv6Net};

use super::email::Email;
use crate::store::{AttemptLimits, AttemptRow};

/// `LOGIN_MAX_ATTEMPTS` failures within `LOGIN_WINDOW_MINUTES` lock for `LOCKOUT_MINUTES`.
#[derive(Debug, Clone, Copy)]
pub struct LockoutPolicy {
    /// Attempts allowed per window.
    pub max_attempts: u32,
    /// The counting window.
    pub window: Duration,
    /// How long a lock lasts.
    pub lockout: Duration,
}

/// What a client is told about its remaining attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptStatus {
    /// `X-RateLimit-Limit`: the max attempts.
    pub limit: u32,
    /// `X-RateLimit-Remaining`: failed attempts left before the lockout.
    pub remaining: u32,
    /// `X-RateLimit-Reset`: seconds until the window or the lockout ends.
    pub reset_after_secs: u64,
}

/// The verdict on one reserved attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptDecision {
    /// Check the password; `status` assumes this attempt fails.
    Allowed(AttemptStatus),
    /// Refuse without checking anything.
    Locked {
        /// When the lock ends.
        until: DateTime<Utc>,
        /// Figures for the headers.
        status: AttemptStatus,
    },
}

impl LockoutPolicy {
    /// The limits in the form the store's upsert takes.
    #[must_use]
    pub fn limits(&self) -> AttemptLimits {
        AttemptLimits {
            max_attempts: i64::from(self.max_attempts),
            window: self.window,
            lockout: self.lockout,
        }
    }

    /// The figures after a successful login, which clears the counter.
    #[must_use]
    pub fn fresh(&self) -> AttemptStatus {
        AttemptStatus {
            limit: self.max_attempts,
            remaining: self.max_attempts,
            reset_after_secs: 0,
        }
    }

    /// Decides on the attempt the store just reserved.
    #[must_use]
    pub fn decide(&self, row: &AttemptRow, now: DateTime<Utc>) -> AttemptDecision {
        let max = i64::from(self.max_attempts);
        let ends = row.locked_until.unwrap_or(row.window_start + self.window);
        let status = AttemptStatus {
            limit: self.max_attempts,
            remaining: u32::try_from((max - row.attempts).max(0)).unwrap_or(0),
            reset_after_secs: seconds_until(ends, now),
        };
        match row.locked_until {
            Some(until) if row.attempts > max => AttemptDecision::Locked { until, status },
            _ => AttemptDecision::Allowed(status),
        }
    }
}

impl LockoutPolicy {
    /// For a counter read without reserving (the per-IP guard): the lock end and figures when
    /// the limit was reached and the lock still holds.
    #[must_use]
    pub fn lock_of(
        &self,
        row: &AttemptRow,
        now: DateTime<Utc>,
    ) -> Option<(DateTime<Utc>, AttemptStatus)> {
        let until = row.locked_until.filter(|until| *until > now)?;
        (row.attempts >= i64::from(self.max_attempts)).then(|| {
            let status = AttemptStatus {
                limit: self.max_attempts,
                remaining: 0,
                reset_after_secs: seconds_until(until, now),
            };
            (until, status)
        })
    }
}

/// The network a client address is counted under by every per-IP limit: the address itself
/// for IPv4, its `/v6_prefix` network for IPv6 (one subscriber usually holds a whole /64, so
/// counting single IPv6 addresses would hand out 2^64 fresh budgets).
#[must_use]
pub fn client_network(ip: IpAddr, v6_prefix: u8) -> IpNet {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpNet::from(IpAddr::V4(v4)),
        IpAddr::V6(v6) => Ipv6Net::new(v6, v6_prefix.min(128)).map_or_else(
            |_| IpNet::from(IpAddr::V6(v6)),
            |net| IpNet::V6(net.trunc()),
        ),
    }
}

/// Whose failures a login counter counts: the account, or the client's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockoutKey<'a> {
    /// The per-account lockout, by the normalised email.
    Email(&'a Email),
    /// The per-IP limit: an IPv4 address or an IPv6 network (see [`client_network`]); also
    /// what `auth-service ip` reads.
    Client(IpNet),
    /// The second factor's wrong codes, per user.
    SecondFactor(i64),
}

impl LockoutKey<'_> {
    /// The `login_attempts.key` this counter is stored under: the email itself (as the rows
    /// have always been keyed), `ip:` and the address or network, or `mfa:` and the user id,
    /// which no email can be (an email has an `@`).
    #[must_use]
    pub fn stored(&self) -> Cow<'_, str> {
        match self {
            Self::Email(email) => Cow::Borrowed(email.as_str()),
            Self::Client(IpNet::V4(net)) => Cow::Owned(format!("ip:{}", net.addr())),
            Self::Client(IpNet::V6(net)) => Cow::Owned(format!("ip:{net}")),
            Self::SecondFactor(user_id) => Cow::Owned(format!("mfa:{user_id}")),
        }
    }
}

/// Whole seconds from `now` to `then`, rounded up, at least 1 while `then` is ahead.
#[must_use]
pub fn seconds_until(then: DateTime<Utc>, now: DateTime<Utc>) -> u64 {
    let millis = (then - now).num_milliseconds();
    if millis <= 0 {
        0
    } else {
        u64::try_from((millis + 999) / 1000).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> LockoutPolicy {
        LockoutPolicy {
            max_attempts: 5,
            window: Duration::minutes(15),
            lockout: Duration::minutes(15),
        }
    }

    #[test]
    fn the_fifth_attempt_is_allowed_and_the_sixth_locked() {
        let now = Utc::now();
        let until = now + Duration::minutes(15);
        let fifth = AttemptRow {
            attempts: 5,
            window_start: now,
            locked_until: Some(until),
        };
        assert_eq!(
            policy().decide(&fifth, now),
            AttemptDecision::Allowed(AttemptStatus {
                limit: 5,
                remaining: 0,
                reset_after_secs: 900
            })
        );
        let sixth = AttemptRow {
            attempts: 6,
            ..fifth
        };
        assert!(
            matches!(policy().decide(&sixth, now), AttemptDecision::Locked { until: u, .. } if u == until)
        );
    }

    #[test]
    fn remaining_counts_down_and_reset_is_the_window_end() {
        let now = Utc::now();
        let row = AttemptRow {
            attempts: 2,
            window_start: now - Duration::minutes(5),
            locked_until: None,
        };
        assert_eq!(
            policy().decide(&row, now),
            AttemptDecision::Allowed(AttemptStatus {
                limit: 5,
                remaining: 3,
                reset_after_secs: 600
            })
        );
    }

    #[test]
    fn ipv6_clients_count_per_network_and_mapped_ipv4_as_ipv4() {
        let key = |ip: &str, prefix| {
            LockoutKey::Client(client_network(ip.parse().unwrap(), prefix))
                .stored()
                .into_owned()
        };
        assert_eq!(key("2001:db8:1:2:aaaa::1", 64), "ip:2001:db8:1:2::/64");
        assert_eq!(key("2001:db8:1:2:ffff::9", 64), "ip:2001:db8:1:2::/64");
        assert_eq!(key("2001:db8:1:3::1", 64), "ip:2001:db8:1:3::/64");
        assert_eq!(key("2001:db8:1:2::1", 128), "ip:2001:db8:1:2::1/128");
        assert_eq!(key("::ffff:1.2.3.4", 64), "ip:1.2.3.4");
        assert_eq!(key("1.2.3.4", 64), "ip:1.2.3.4");
    }

    #[test]
    fn seconds_until_rounds_up() {
        let now = Utc::now();
        assert_eq!(seconds_until(now + Duration::milliseconds(1), now), 1);
        assert_eq!(seconds_until(now - Duration::seconds(3), now), 0);
    }
}
