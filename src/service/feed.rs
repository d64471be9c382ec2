//! The revocation feed (`GET /auth/revocations`): what a local verifier must refuse besides
//! expiry, read from the events that every revocation appends.
//!
//! A cursor is the id of the last event a reader has applied. It is still good while no event
//! after it has been purged: purging deletes the oldest events first and never the newest, so
//! that holds exactly when the cursor is at least the oldest kept id minus one. Otherwise, and
//! without a cursor, the answer is a reset: the whole current set, from the oldest event kept
//! (events are kept for the access-token lifetime, so nothing a live token needs is missing).
//!
//! A reader that is up to date may wait for the next event: it waits on this process's
//! [`Revocations`](super::revocations::Revocations) follower (one listener per process, woken
//! by `NOTIFY` or its poll), holding no database connection meanwhile.

use std::time::Duration;

use auth_verifier::claims::{RevocationPage, RevokedSession, RevokedUser};
use secrecy::{ExposeSecret as _, SecretString};
use subtle::ConstantTimeEq as _;

use super::{AuthError, AuthService};
use crate::store::EventKind;

/// The longest a reader may be held.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// Events per answer at most; a reader continues from the cursor.
pub const PAGE: i64 = 1000;

/// Who may read the feed: the bearer tokens of `REVOCATION_FEED_TOKENS`.
#[derive(Clone, Default)]
pub struct FeedReaders(Vec<SecretString>);

impl FeedReaders {
    /// Readers holding one of `tokens`; none at all turns the feed off.
    #[must_use]
    pub fn new(tokens: Vec<SecretString>) -> Self {
        Self(tokens)
    }

    /// Whether the feed is on.
    #[must_use]
    pub fn enabled(&self) -> bool {
        !self.0.is_empty()
    }

    /// Whether `token` is one of them (compared in constant time).
    fn admits(&self, token: &str) -> bool {
        self.0.iter().fold(false, |found, known| {
            found | bool::from(known.expose_secret().as_bytes().ct_eq(token.as_bytes()))
        })
    }
}

impl AuthService {
    /// `GET /auth/revocations`: the revocations after `since`, or the whole current set.
    ///
    /// # Errors
    /// `InvalidToken` for a token that is not a feed reader's; `Unavailable` when the database
    /// does not answer.
    pub async fn revocation_feed(
        &self,
        reader_token: &str,
        since: Option<i64>,
        wait: Duration,
    ) -> Result<RevocationPage, AuthError> {
        if !self.0.feed_readers.admits(reader_token) {
            return Err(AuthError::InvalidToken);
        }
        let store = &self.0.store;
        let bounds = store.event_bounds().await?;
        let after = since.filter(|&cursor| match bounds {
            None => cursor == 0,
            Some((first, last)) => cursor >= first - 1 && cursor <= last,
        });
        if let Some(cursor) = after
            && bounds.is_none_or(|(_, last)| last <= cursor)
            && !wait.is_zero()
        {
            // Up to date: wait for this process's follower to apply a newer event.
            let mut applied = self.0.revocations.subscribe();
            let _ = tokio::time::timeout(
                wait.min(MAX_WAIT),
                applied.wait_for(|applied| *applied > cursor),
            )
            .await;
        }
        let start = after.unwrap_or(0);
        let events = store.events_since(start, PAGE).await?;
        let now = self.0.clock.now().timestamp();
        let token_life = (self.0.settings.access_ttl + self.0.settings.leeway).num_seconds();
        let mut page = RevocationPage {
            cursor: events
                .last()
                .map_or(
                    after.unwrap_or_else(|| bounds.map_or(0, |(_, last)| last)),
                    |e| e.id,
                )
                .to_string(),
            reset: after.is_none(),
            ..RevocationPage::default()
        };
        for event in &events {
            let at = event.created_at.timestamp();
            match (event.kind, event.session_id, event.not_before) {
                (EventKind::SessionRevoked, Some(sid), _) => {
                    let exp = at + token_life;
                    if exp >= now {
                        page.sessions.push(RevokedSession { sid, exp });
                    }
                }
                (EventKind::LoggedOutEverywhere | EventKind::UserDisabled, _, Some(cut)) => {
                    page.users.push(RevokedUser {
                        user_id: event.user_id,
                        not_before: cut.timestamp(),
                    });
                }
                // Every token of a deleted user, up to the second it was deleted in.
                (EventKind::UserDeleted, _, _) => page.users.push(RevokedUser {
                    user_id: event.user_id,
                    not_before: at + 1,
                }),
                _ => {}
            }
        }
        page.users
            .retain(|user| user.not_before.saturating_add(token_life) >= now);
        Ok(page)
    }

    /// Whether `REVOCATION_FEED_TOKENS` turned the feed on.
    #[must_use]
    pub fn feed_enabled(&self) -> bool {
        self.0.feed_readers.enabled()
    }

    /// The JSON of `/.well-known/jwks.json`.
    #[must_use]
    pub fn jwks_json(&self) -> &str {
        self.0.keys.jwks_json()
    }
}
