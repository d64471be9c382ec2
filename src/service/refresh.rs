//! `POST /auth/refresh`, `/auth/logout` and `/auth/logout-all`: what a refresh token may still
//! do, in either `REFRESH_TOKEN_ROTATION` mode.
//!
//! - `off` (the original's behaviour): a refresh token is reusable until it expires or is
//!   revoked; the answer carries the same refresh token and a new access token.
//! - `on`: each refresh token works once; the rules for one presented again are in
//!   [`super::rotation`].

use uuid::Uuid;

use super::{
    AuthError, AuthService, TokenPair,
    audit::{self, Caller, Event, Outcome},
    rotation::{self, Reuse},
};
use crate::{
    config::RotationMode,
    store::{NewRefreshToken, RefreshTokenRow, RotateOutcome, UserRow},
    tokens::TokenKind,
};

/// How one refresh ended.
#[derive(Clone)]
enum Refreshed {
    /// A new pair: `Rotated` (a child was created) or `Renewed` (rotation off: same refresh
    /// token, new access token).
    Issued(TokenPair),
    /// Within the grace window: the child already issued for this token, again.
    GraceReuse(TokenPair),
    /// A rotated token came back after the grace window: its family was revoked.
    ReuseDetected,
    /// Anything else that cannot refresh (bad signature, expired, revoked, disabled user).
    Invalid,
}

impl AuthService {
    /// `POST /auth/refresh`: a new access token (and, with rotation on, a new refresh token).
    ///
    /// # Errors
    /// `InvalidRefreshToken` (also after reuse, which revokes the family), `Unavailable`,
    /// `Internal`.
    #[tracing::instrument(skip_all, fields(user.id = tracing::field::Empty))]
    pub async fn refresh(&self, token: &str, caller: &Caller) -> Result<TokenPair, AuthError> {
        let now = self.now();
        let Ok(claims) = self.0.keys.verify(token, TokenKind::Refresh, now) else {
            audit::record(Event::Refresh, Outcome::Invalid, None, caller);
            return Err(AuthError::InvalidRefreshToken);
        };
        tracing::Span::current().record("user.id", claims.user_id);
        let user_id = Some(claims.user_id);
        let refreshed = match self.0.settings.rotation {
            RotationMode::Off => self.renew(token, claims.jti, claims.user_id).await,
            RotationMode::On => self.rotate(claims.jti, claims.sid, claims.user_id).await,
        };
        let refreshed = match refreshed {
            Ok(refreshed) => refreshed,
            Err(err) => {
                audit::record(Event::Refresh, Outcome::Error, user_id, caller);
                return Err(err);
            }
        };
        match refreshed {
            Refreshed::Issued(pair) => {
                audit::record(Event::Refresh, Outcome::Success, user_id, caller);
                Ok(pair)
            }
            Refreshed::GraceReuse(pair) => {
                audit::record(Event::Refresh, Outcome::GraceReuse, user_id, caller);
                Ok(pair)
            }
            Refreshed::ReuseDetected => {
                audit::record(
                    Event::ReuseDetected,
                    Outcome::ReuseDetected,
                    user_id,
                    caller,
                );
                Err(AuthError::InvalidRefreshToken)
            }
            Refreshed::Invalid => {
                audit::record(Event::Refresh, Outcome::Invalid, user_id, caller);
                Err(AuthError::InvalidRefreshToken)
            }
        }
    }

    /// The stored row of a refresh token and its user, if it belongs to `user_id` and that
    /// user is active.
    async fn live_row(
        &self,
        jti: Uuid,
        user_id: i64,
    ) -> Result<Option<(RefreshTokenRow, UserRow)>, AuthError> {
        let store = &self.0.store;
        let Some(row) = store
            .find_refresh_token(jti)
            .await?
            .filter(|r| r.user_id == user_id)
        else {
            return Ok(None);
        };
        let user = store
            .find_user_by_id(row.user_id)
            .await?
            .filter(|u| u.is_active);
        Ok(user.map(|u| (row, u)))
    }

    /// Rotation off: the same refresh token, valid while neither it nor its session has
    /// ended and it has not expired.
    async fn renew(&self, token: &str, jti: Uuid, user_id: i64) -> Result<Refreshed, AuthError> {
        let now = self.now();
        let Some((row, user)) = self.live_row(jti, user_id).await? else {
            return Ok(Refreshed::Invalid);
        };
        if row.revoked_at.is_some() || row.rotated_at.is_some() || row.expires_at <= now {
            return Ok(Refreshed::Invalid);
        }
        // Records the use while checking the session is live, before the token is signed
        // with that same time as its `iat` (see `Store::revoke_user_sessions`).
        let Some(assurance) = self.0.store.touch_session(row.family_id, now).await? else {
            return Ok(Refreshed::Invalid);
        };
        let mut pair = self.pair_for(&row, &user, now, assurance)?;
        pair.refresh_token = token.to_owned();
        Ok(Refreshed::Issued(pair))
    }

    /// Rotation on: under the user's lock, a compare-and-set creates the one child; a loser
    /// applies the grace rule, measured to the sub-second. Tokens rotated before the grace
    /// window are deleted as the child is stored (constant storage per session), so a
    /// signed token of a live session whose row is gone is one of them, presented again:
    /// reuse, as if its row were there.
    async fn rotate(
        &self,
        jti: Uuid,
        sid: Option<Uuid>,
        user_id: i64,
    ) -> Result<Refreshed, AuthError> {
        let issued_at = self.now();
        let now = self.instant();
        let store = &self.0.store;
        let Some((row, user)) = self.live_row(jti, user_id).await? else {
            return self.pruned_token_again(jti, sid, user_id).await;
        };
        let child = NewRefreshToken {
            jti: Uuid::new_v4(),
            user_id: row.user_id,
            family_id: row.family_id,
            parent_jti: Some(row.jti),
            issued_at,
            expires_at: issued_at + self.0.settings.refresh_ttl,
        };
        let prune_rotated_before = now - self.0.settings.reuse_grace;
        match store
            .rotate_refresh_token(row.jti, &child, now, prune_rotated_before)
            .await?
        {
            RotateOutcome::Rotated(assurance) => {
                return Ok(Refreshed::Issued(self.pair_for(
                    &child.into(),
                    &user,
                    issued_at,
                    assurance,
                )?));
            }
            RotateOutcome::Refused => return Ok(Refreshed::Invalid),
            RotateOutcome::NotRotatable => {}
        }
        // Lost the compare-and-set: read the row as it is now and apply the grace rule.
        let current = store.find_refresh_token(row.jti).await?.unwrap_or(row);
        match rotation::on_reuse(&current, now, self.0.settings.reuse_grace) {
            Reuse::ReturnChild => match store.find_child_token(current.jti).await? {
                Some(child) if child.revoked_at.is_none() => {
                    match store.touch_session(child.family_id, issued_at).await? {
                        Some(assurance) => Ok(Refreshed::GraceReuse(
                            self.pair_for(&child, &user, issued_at, assurance)?,
                        )),
                        None => Ok(Refreshed::Invalid),
                    }
                }
                _ => Ok(Refreshed::Invalid),
            },
            Reuse::RevokeFamily => {
                self.end_session(current.family_id, current.user_id).await?;
                tracing::warn!(token.family = %current.family_id, "refresh token reuse detected; session ended");
                Ok(Refreshed::ReuseDetected)
            }
            Reuse::Refuse => Ok(Refreshed::Invalid),
        }
    }

    /// A refresh token that verified but has no row: if its session is live and its user's,
    /// the row was pruned after a rotation older than the grace window, and this is reuse.
    async fn pruned_token_again(
        &self,
        jti: Uuid,
        sid: Option<Uuid>,
        user_id: i64,
    ) -> Result<Refreshed, AuthError> {
        let store = &self.0.store;
        let Some(sid) = sid else {
            return Ok(Refreshed::Invalid);
        };
        if store.find_refresh_token(jti).await?.is_some() {
            // The row exists: another user's, or its user is disabled.
            return Ok(Refreshed::Invalid);
        }
        let session = store.find_session(sid).await?;
        if !session.is_some_and(|s| s.revoked_at.is_none() && s.user_id == user_id) {
            return Ok(Refreshed::Invalid);
        }
        self.end_session(sid, user_id).await?;
        tracing::warn!(token.family = %sid, "refresh token reuse detected; session ended");
        Ok(Refreshed::ReuseDetected)
    }

    /// Ends a session in the database, then in this process's view at once.
    async fn end_session(&self, session: Uuid, user_id: i64) -> Result<(), AuthError> {
        if self.0.store.revoke_session(session, self.instant()).await? {
            self.0.revocations.session_ended(session, user_id);
        }
        Ok(())
    }

    /// `POST /auth/logout`: ends the session of a refresh token (its refresh tokens stop
    /// refreshing, its access tokens stop verifying). Succeeds for any string; only a database
    /// failure is an error.
    ///
    /// # Errors
    /// `Unavailable`, `Internal`.
    #[tracing::instrument(skip_all)]
    pub async fn logout(&self, token: &str, caller: &Caller) -> Result<(), AuthError> {
        // Anything that does not verify (expired included) can no longer refresh: ignore it.
        if let Ok(claims) = self.0.keys.verify(token, TokenKind::Refresh, self.now()) {
            // Refresh tokens from before sessions existed carry no `sid`: their row knows it.
            let session = match claims.sid {
                Some(sid) => Some(sid),
                None => self
                    .0
                    .store
                    .find_refresh_token(claims.jti)
                    .await?
                    .map(|row| row.family_id),
            };
            if let Some(session) = session {
                self.end_session(session, claims.user_id).await?;
            }
            audit::record(
                Event::Logout,
                Outcome::Success,
                Some(claims.user_id),
                caller,
            );
        } else {
            audit::record(Event::Logout, Outcome::Ignored, None, caller);
        }
        Ok(())
    }

    /// `POST /auth/logout-all`: ends every session of the user; access tokens issued before
    /// it stop verifying, a login right after it (even in the same second) works.
    ///
    /// # Errors
    /// `Unavailable`, `Internal`.
    #[tracing::instrument(skip_all, fields(user.id = user_id))]
    pub async fn logout_all(&self, user_id: i64, caller: &Caller) -> Result<(), AuthError> {
        self.0
            .store
            .revoke_user_sessions(user_id, self.instant())
            .await?;
        self.0.revocations.user_changed(user_id);
        self.events_queued();
        audit::record(Event::LogoutAll, Outcome::Success, Some(user_id), caller);
        Ok(())
    }
}
