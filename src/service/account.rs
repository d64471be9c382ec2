//! Self-service for a signed-in user: changing the password, their sessions (devices), and
//! deleting their own account. Every action that asks for the password again checks it under
//! the login lockout, so a stolen access token cannot guess faster than login can.
//!
//! This module does not know about HTTP.

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret as _, SecretString};
use uuid::Uuid;

use super::{
    AuthError, AuthService, LoginOutcome, VerifiedUser,
    audit::{self, Caller, Event, Outcome},
    email::Email,
    lockout::LockoutKey,
    password_policy,
};
use crate::store::{MailTemplate, NewMail, PasswordChange, UserRow};

/// The reason a new password equal to the current one is refused (`WEAK_PASSWORD`).
pub const SAME_PASSWORD: &str = "must differ from the current password";

/// One live session of the user, as `GET /auth/sessions` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveSession {
    /// The session (`sid`).
    pub sid: Uuid,
    /// The login that started it.
    pub created_at: DateTime<Utc>,
    /// Its last login or refresh (the login, for sessions from before this was recorded).
    pub last_used_at: DateTime<Utc>,
    /// The login's `User-Agent`, at most 256 characters.
    pub user_agent: Option<String>,
    /// The login's client IP.
    pub ip: Option<String>,
    /// Whether it is the session of the token that asked.
    pub current: bool,
}

/// What an action that asks for the password again gives when it succeeds: nothing.
pub type Credentialed = LoginOutcome<()>;

impl AuthService {
    /// `GET /auth/sessions`: the user's live sessions, newest first.
    ///
    /// # Errors
    /// `Unavailable`, `Internal`.
    pub async fn list_sessions(
        &self,
        user: &VerifiedUser,
    ) -> Result<Vec<ActiveSession>, AuthError> {
        let rows = self.0.store.live_sessions(user.id, self.now()).await?;
        Ok(rows
            .into_iter()
            .map(|row| ActiveSession {
                sid: row.id,
                created_at: row.created_at,
                last_used_at: row.last_used_at.unwrap_or(row.created_at),
                user_agent: row.user_agent,
                ip: row.ip,
                current: row.id == user.session,
            })
            .collect())
    }

    /// `DELETE /auth/sessions/{sid}`: ends one of the user's live sessions as logout does.
    ///
    /// # Errors
    /// `SessionNotFound` for an unknown, ended or expired session and for another user's (one
    /// answer for all), `Unavailable`, `Internal`.
    pub async fn end_own_session(
        &self,
        user: &VerifiedUser,
        sid: &str,
        caller: &Caller,
    ) -> Result<(), AuthError> {
        let sid = Uuid::try_parse(sid).map_err(|_| AuthError::SessionNotFound)?;
        let now = self.instant();
        let owned =
            self.0.store.find_session(sid).await?.is_some_and(|s| {
                s.user_id == user.id && s.revoked_at.is_none() && s.expires_at > now
            });
        if !owned || !self.0.store.revoke_session(sid, now).await? {
            return Err(AuthError::SessionNotFound);
        }
        self.0.revocations.session_ended(sid, user.id);
        audit::record(Event::SessionEnded, Outcome::Success, Some(user.id), caller);
        Ok(())
    }

    /// `POST /auth/password/change`: a new password for the user, given the current one. Every
    /// other session ends as at logout; the caller's stays live; a notification is queued.
    pub async fn change_password(
        &self,
        user: &VerifiedUser,
        current: SecretString,
        new: SecretString,
        caller: &Caller,
    ) -> Credentialed {
        // Neither check needs the current password to be right, so neither counts an attempt.
        let mut weak = password_policy::check(new.expose_secret()).err();
        if new.expose_secret() == current.expose_secret() {
            weak = Some(match weak {
                Some(AuthError::WeakPassword(mut reasons)) => {
                    reasons.push(SAME_PASSWORD);
                    AuthError::WeakPassword(reasons)
                }
                _ => AuthError::WeakPassword(vec![SAME_PASSWORD]),
            });
        }
        if let Err(err) = self.require_step_up(user).await {
            return LoginOutcome::error(err, None);
        }
        if let Some(weak) = weak {
            audit::record(
                Event::PasswordChanged,
                Outcome::Invalid,
                Some(user.id),
                caller,
            );
            return LoginOutcome::error(weak, None);
        }
        let attempt = self
            .password_again(user, &current, Event::PasswordChanged, caller)
            .await;
        let row = match attempt.result {
            Ok(row) => row,
            Err(err) => return LoginOutcome::error(err, attempt.status),
        };
        let result = self.store_new_password(user, &row, new).await;
        match &result {
            Ok(()) => {
                audit::record(
                    Event::PasswordChanged,
                    Outcome::Success,
                    Some(user.id),
                    caller,
                );
            }
            Err(_) => audit::record(
                Event::PasswordChanged,
                Outcome::Error,
                Some(user.id),
                caller,
            ),
        }
        LoginOutcome {
            result,
            status: attempt.status,
        }
    }

    /// Hashes and stores the new password (from the hash it was checked against) and ends the
    /// user's other sessions.
    async fn store_new_password(
        &self,
        user: &VerifiedUser,
        row: &UserRow,
        new: SecretString,
    ) -> Result<(), AuthError> {
        let new_hash = self.0.passwords.hash(new).await?;
        let now = self.instant();
        let notification = NewMail {
            template: MailTemplate::PasswordChanged,
            link: None,
        };
        let change = PasswordChange {
            user_id: user.id,
            keep: user.session,
            old_hash: &row.password_hash,
            new_hash: &new_hash,
            notification: &notification,
            live_tokens_since: self.live_tokens_since(now),
        };
        if !self.0.store.change_password_by_user(&change, now).await? {
            // Changed or deleted meanwhile: the password checked is no longer the current one.
            return Err(AuthError::InvalidCredentials);
        }
        // Here at once (the caller's own session reloads as live); other replicas and the feed
        // through the events.
        self.0.revocations.user_changed(user.id);
        self.outbox_queued();
        Ok(())
    }

    /// `DELETE /auth/me`: deletes the user's account, given the password, as the admin's
    /// `user delete` does: every token dead at once and in the feed, queued mails dropped, the
    /// email free to register again.
    pub async fn delete_account(
        &self,
        user: &VerifiedUser,
        password: SecretString,
        caller: &Caller,
    ) -> Credentialed {
        if let Err(err) = self.require_step_up(user).await {
            return LoginOutcome::error(err, None);
        }
        let attempt = self
            .password_again(user, &password, Event::AccountDeleted, caller)
            .await;
        let row = match attempt.result {
            Ok(row) => row,
            Err(err) => return LoginOutcome::error(err, attempt.status),
        };
        let result = match self.delete_user_now(&row).await {
            Ok(true) => Ok(()),
            // Deleted meanwhile (an operator, another request).
            Ok(false) => Err(AuthError::InvalidToken),
            Err(err) => Err(err),
        };
        let outcome = if result.is_ok() {
            Outcome::Success
        } else {
            Outcome::Error
        };
        // No email in the trail: the account is gone, and so must be its address.
        audit::record(Event::AccountDeleted, outcome, Some(user.id), caller);
        LoginOutcome {
            result,
            status: attempt.status,
        }
    }

    /// Deletes `user` (cascading to sessions, tokens and queued mail), then forgets them here
    /// at once and clears their lockout counter; whether the user still existed.
    pub(super) async fn delete_user_now(&self, user: &UserRow) -> Result<bool, AuthError> {
        let store = &self.0.store;
        if !store.delete_user(user.id, self.instant()).await? {
            return Ok(false);
        }
        self.0.revocations.user_deleted(user.id);
        self.events_queued();
        let email = Email::stored(user.email.clone());
        store
            .clear_login_attempts(&LockoutKey::Email(&email).stored())
            .await?;
        Ok(true)
    }

    /// The password of the token's user, checked again under the login lockout (a wrong one
    /// counts as a failed login; 429 while locked). The user's row when it is right.
    async fn password_again(
        &self,
        user: &VerifiedUser,
        password: &SecretString,
        event: Event,
        caller: &Caller,
    ) -> LoginOutcome<UserRow> {
        let row = match self.0.store.find_user_by_id(user.id).await {
            Ok(Some(row)) => row,
            // Deleted since the token was verified.
            Ok(None) => return LoginOutcome::error(AuthError::InvalidToken, None),
            Err(err) => return LoginOutcome::error(err, None),
        };
        let email = Email::stored(row.email);
        let attempt = self.attempt_password(&email, password, event, caller).await;
        match attempt.result {
            // The same address is the same account; a disabled one has no valid token.
            Ok(row) if row.id == user.id && row.is_active => LoginOutcome {
                result: Ok(row),
                status: attempt.status,
            },
            Ok(_) => LoginOutcome::error(AuthError::InvalidToken, attempt.status),
            Err(err) => LoginOutcome::error(err, attempt.status),
        }
    }
}
