//! Growth without bound, ended: rows nothing needs any more are deleted in the background
//! (every [`PURGE_EVERY`]) and by `auth-service purge`, in batches of [`BATCH`] rows, each its
//! own short transaction, so no lock is held for long. Every replica may run it; they only
//! share the work.
//!
//! - login counters whose window is over and whose lock (if any) has ended;
//! - refresh tokens past their expiry (and the leeway);
//! - sessions whose last refresh token expired longer ago than an access token lives;
//! - revocation events older than an access token lives (the feed keeps that long);
//! - mail sent or failed more than [`MAIL_RETENTION`] ago, expired one-time tokens, and the
//!   per-address mail counts of more than an hour ago;
//! - expired second-factor challenges (`mfa_token`s) and factors never confirmed in time;
//! - expired passkey ceremonies;
//! - webhook events delivered or failed more than [`MAIL_RETENTION`] ago, and those of an
//!   endpoint no longer configured.

use std::sync::{Arc, Weak};

use chrono::{DateTime, Utc};

use super::{AuthError, AuthService, Inner};
use crate::store::Purge;

/// How often each process purges.
pub const PURGE_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// Rows per transaction.
pub const BATCH: i64 = 1000;

/// How many rows of each kind were deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgeReport {
    /// Login counters (per email and per IP).
    pub login_attempts: u64,
    /// Refresh tokens.
    pub refresh_tokens: u64,
    /// Sessions.
    pub sessions: u64,
    /// Revocation events.
    pub events: u64,
    /// Sent and failed mail.
    pub mail: u64,
    /// Expired one-time tokens.
    pub user_tokens: u64,
    /// Per-address mail counts older than an hour.
    pub mail_sends: u64,
    /// Expired second-factor challenges.
    pub mfa_challenges: u64,
    /// Factors not confirmed in time.
    pub unconfirmed_factors: u64,
    /// Expired passkey ceremonies.
    pub passkey_ceremonies: u64,
    /// Delivered, failed and abandoned webhook events.
    pub webhooks: u64,
}

/// How long sent and failed messages (and webhook events) stay in the outbox (to answer "did the mail go?"); their
/// links hold no usable token (see `service::outbox::issue_link`).
pub const MAIL_RETENTION: chrono::Duration = chrono::Duration::days(7);

impl AuthService {
    /// Deletes everything that nothing needs any more, batch after batch.
    ///
    /// # Errors
    /// `Unavailable` or `Internal` when the database fails (what was deleted stays deleted).
    pub async fn purge(&self) -> Result<PurgeReport, AuthError> {
        purge(&self.0, self.instant()).await
    }
}

async fn purge(inner: &Inner, now: DateTime<Utc>) -> Result<PurgeReport, AuthError> {
    let settings = &inner.settings;
    let token_life = settings.access_ttl + settings.leeway;
    let windows = [Some(settings.lockout), settings.ip_lockout]
        .into_iter()
        .flatten()
        .map(|policy| policy.window)
        .max()
        .unwrap_or_default();
    let mut report = PurgeReport::default();
    for (purge, count) in [
        (
            Purge::LoginAttempts {
                window_start_before: now - windows,
                now,
            },
            &mut report.login_attempts,
        ),
        (
            Purge::RefreshTokens(now - settings.leeway),
            &mut report.refresh_tokens,
        ),
        (Purge::Sessions(now - token_life), &mut report.sessions),
        (Purge::Events(now - token_life), &mut report.events),
        (Purge::Mail(now - MAIL_RETENTION), &mut report.mail),
        (Purge::UserTokens(now), &mut report.user_tokens),
        (
            Purge::MailSends(now - chrono::Duration::hours(1)),
            &mut report.mail_sends,
        ),
        (Purge::MfaChallenges(now), &mut report.mfa_challenges),
        (
            Purge::UnconfirmedFactors(now - super::mfa::UNCONFIRMED_LIFETIME),
            &mut report.unconfirmed_factors,
        ),
        (
            Purge::PasskeyCeremonies(now),
            &mut report.passkey_ceremonies,
        ),
        (
            Purge::Webhooks {
                finished_before: now - MAIL_RETENTION,
                // Past the longest WEBHOOK_MAX_RETRY_HOURS, a row that never finished belongs
                // to an endpoint no longer configured.
                abandoned_before: now - MAIL_RETENTION - chrono::Duration::days(30),
            },
            &mut report.webhooks,
        ),
    ] {
        loop {
            let deleted = inner.store.purge_batch(purge, BATCH).await?;
            *count += deleted;
            metrics::counter!("rows_purged_total", "table" => purge.table()).increment(deleted);
            if deleted < u64::try_from(BATCH).unwrap_or(u64::MAX) {
                break;
            }
        }
    }
    Ok(report)
}

/// Purges every [`PURGE_EVERY`], starting a minute after start-up, until the service is gone
/// (a [`crate::background::Background`] task).
pub fn run(auth: &AuthService) -> impl Future<Output = ()> + Send + 'static {
    let service: Weak<Inner> = Arc::downgrade(&auth.0);
    async move {
        tokio::time::sleep(std::time::Duration::from_secs(60)).await;
        let mut every = tokio::time::interval(PURGE_EVERY);
        loop {
            every.tick().await;
            let Some(inner) = service.upgrade() else {
                return;
            };
            let now = inner.clock.now();
            match purge(&inner, now).await {
                Ok(report) => tracing::debug!(?report, "purged"),
                // An operator must see a purge that keeps failing: the tables then grow.
                Err(err) => tracing::warn!(
                    error = %crate::error_chain::error_chain(&err),
                    "purge failed; retrying at the next run"
                ),
            }
        }
    }
}
