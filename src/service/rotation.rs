//! Refresh-token rotation rules: what to do when a presented token had already been rotated.

use chrono::{DateTime, Duration, Utc};

use crate::store::RefreshTokenRow;

/// The verdict on a refresh token that lost (or never entered) the compare-and-set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// Rotated within the grace window: hand out the child already issued for it.
    ReturnChild,
    /// Rotated earlier than that: treat as theft and revoke the family.
    RevokeFamily,
    /// Revoked or expired: just refuse.
    Refuse,
}

/// Decides on a token whose rotation did not happen at `now`.
#[must_use]
pub fn on_reuse(row: &RefreshTokenRow, now: DateTime<Utc>, grace: Duration) -> Reuse {
    if row.revoked_at.is_some() || row.expires_at <= now {
        return Reuse::Refuse;
    }
    match row.rotated_at {
        Some(rotated) if grace > Duration::zero() && now - rotated <= grace => Reuse::ReturnChild,
        Some(_) => Reuse::RevokeFamily,
        None => Reuse::Refuse,
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    fn row(now: DateTime<Utc>) -> RefreshTokenRow {
        RefreshTokenRow {
            jti: Uuid::new_v4(),
            user_id: 1,
            family_id: Uuid::new_v4(),
            parent_jti: None,
            issued_at: now,
            expires_at: now + Duration::days(30),
            rotated_at: Some(now),
            revoked_at: None,
        }
    }

    #[test]
    fn grace_window_is_inclusive_and_zero_turns_it_off() {
        let now = Utc::now();
        let r = row(now);
        let grace = Duration::seconds(10);
        assert_eq!(
            on_reuse(&r, now + Duration::seconds(10), grace),
            Reuse::ReturnChild
        );
        assert_eq!(
            on_reuse(&r, now + Duration::seconds(11), grace),
            Reuse::RevokeFamily
        );
        assert_eq!(on_reuse(&r, now, Duration::zero()), Reuse::RevokeFamily);
    }

    #[test]
    fn revoked_or_expired_tokens_are_refused() {
        let now = Utc::now();
        let revoked = RefreshTokenRow {
            revoked_at: Some(now),
            ..row(now)
        };
        assert_eq!(
            on_reuse(&revoked, now, Duration::seconds(10)),
            Reuse::Refuse
        );
        let expired = RefreshTokenRow {
            expires_at: now,
            ..row(now)
        };
        assert_eq!(
            on_reuse(&expired, now, Duration::seconds(10)),
            Reuse::Refuse
        );
    }
}
