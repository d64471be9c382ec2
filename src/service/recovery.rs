//! Account recovery by mail: `POST /auth/password/forgot` and `/auth/password/reset`, email
//! verification and its resend. What they queue is sent by the outbox (`outbox.rs`).
//!
//! - **Forgot** answers at once, the same for every well-formed email: the lookup, the throttle
//!   and the queueing run after the answer, so neither its body nor its timing says whether the
//!   account exists. What it queues (token and mail) is written in one transaction.
//! - **Reset** consumes its token atomically and, in the same transaction, sets the password,
//!   ends every session, clears the lockout, marks the address verified and queues the
//!   "password changed" mail.

use std::sync::Arc;

use base64::Engine as _;
use chrono::Duration;
use secrecy::{ExposeSecret as _, SecretString};
use sha2::{Digest as _, Sha256};
use tracing::Instrument as _;

use super::{
    AuthError, AuthService,
    audit::{self, Caller, Event, Outcome},
    email::Email,
    password_policy,
};
use crate::{
    config::EmailVerification,
    store::{MailTemplate, NewMail, ResetRequest, StoreError, TokenMail},
};

/// Settings of account recovery, from `MAIL_*` and `PASSWORD_RESET_*`.
#[derive(Debug, Clone)]
pub struct MailSettings {
    /// `MAIL_PRODUCT_NAME`.
    pub product: String,
    /// `PASSWORD_RESET_URL`: the link is `<url>?token=<token>`.
    pub reset_url: String,
    /// `PASSWORD_RESET_TOKEN_MINUTES`.
    pub reset_minutes: u32,
    /// `MAIL_MAX_RETRY_HOURS`.
    pub max_retry: Duration,
    /// `EMAIL_VERIFICATION`.
    pub verification: EmailVerification,
    /// `EMAIL_VERIFY_URL`: the link is `<url>?token=<token>`.
    pub verify_url: String,
    /// `EMAIL_VERIFY_TOKEN_HOURS`.
    pub verify_hours: u32,
}

/// At most one verification mail per user within this.
const RESEND_MIN_INTERVAL: Duration = Duration::seconds(60);

/// Forgot requests being looked up and queued at once, at most (each holds a database
/// connection for a short write transaction).
pub const FORGOT_IN_FLIGHT: usize = 64;

/// At most one reset mail per email within this...
const RESET_MIN_INTERVAL: Duration = Duration::seconds(60);

/// ...and this many per hour.
const RESET_PER_HOUR: i64 = 5;

impl AuthService {
    /// `POST /auth/password/forgot`: checks the email's format, then answers; the reset (if the
    /// account exists, is active and is not throttled) is queued in the background.
    ///
    /// # Errors
    /// `InvalidEmail` only: the answer never depends on the account.
    pub fn forgot_password(&self, email: &str, caller: &Caller) -> Result<(), AuthError> {
        let email = Email::parse(email).ok_or(AuthError::InvalidEmail)?;
        self.in_background(
            Event::PasswordResetRequested,
            caller,
            |service, caller| async move {
                service.queue_password_reset(&email, &caller).await;
            },
        );
        Ok(())
    }

    /// `POST /auth/email/resend` without a Bearer token: checks the email's format, then
    /// answers as forgot does; another verification mail is queued in the background for an
    /// existing, active, unverified user (not within 60 s of the last one, and within the
    /// address's hourly share).
    ///
    /// # Errors
    /// `InvalidEmail` only: the answer never depends on the account.
    pub fn resend_verification_to(&self, email: &str, caller: &Caller) -> Result<(), AuthError> {
        let email = Email::parse(email).ok_or(AuthError::InvalidEmail)?;
        self.in_background(
            Event::EmailVerificationRequested,
            caller,
            |service, caller| async move {
                let found = service.0.store.find_user_by_email(email.as_str()).await;
                match found {
                    Ok(Some(user)) => {
                        if let Err(err) = service.resend_verification(user.id, &caller).await {
                            tracing::warn!(error = %err, "queueing a verification mail failed");
                        }
                    }
                    Ok(None) => audit::record(
                        Event::EmailVerificationRequested,
                        Outcome::Ignored,
                        None,
                        &caller,
                    ),
                    Err(err) => tracing::warn!(error = %err, "queueing a verification mail failed"),
                }
            },
        );
        Ok(())
    }

    /// Runs `work` after the answer, for the requests whose answer must not depend on the
    /// account (forgot, resend by email). The answer does not wait, so nothing pushes back on
    /// a flood: at most `FORGOT_IN_FLIGHT` of them run at once, and one beyond is dropped
    /// (counted, audited as `event` with outcome error; still 202: the answer must not say
    /// more under load than at rest). The work runs in the request's span, so its lines carry
    /// the request's id and client.
    fn in_background<F, Fut>(&self, event: Event, caller: &Caller, work: F)
    where
        F: FnOnce(Self, Caller) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let Ok(permit) = Arc::clone(&self.0.forgot_in_flight).try_acquire_owned() else {
            metrics::counter!("password_reset_dropped_total").increment(1);
            audit::record(event, Outcome::Error, None, caller);
            return;
        };
        let service = self.clone();
        let caller = caller.clone();
        tokio::spawn(
            async move {
                work(service, caller).await;
                drop(permit);
            }
            .instrument(tracing::Span::current()),
        );
    }

    /// Waits until no work of [`Self::in_background`] is running: what was accepted has been
    /// queued (or refused). Shutdown waits for it before it stops the outbox, so a forgot
    /// answered 202 just before SIGTERM is still queued; tests wait for it before they assert
    /// that nothing was queued.
    pub async fn background_settled(&self) {
        let all = u32::try_from(FORGOT_IN_FLIGHT).unwrap_or(u32::MAX);
        // Holding every permit means no work holds one; they are released at once.
        let _all = self.0.forgot_in_flight.acquire_many(all).await;
    }

    async fn queue_password_reset(&self, email: &Email, caller: &Caller) {
        let now = self.instant();
        let settings = &self.0.mail;
        let token = match self.token_mail(
            &settings.reset_url,
            MailTemplate::PasswordReset,
            Duration::minutes(settings.reset_minutes.into()),
        ) {
            Ok(token) => token,
            Err(err) => {
                tracing::error!(error = %err, "PASSWORD_RESET_URL cannot carry a token");
                return;
            }
        };
        let request = ResetRequest {
            email: email.as_str(),
            token,
            min_interval: RESET_MIN_INTERVAL,
            per_hour: RESET_PER_HOUR,
        };
        let outcome = match self.0.store.queue_password_reset(&request, now).await {
            Ok(true) => {
                self.mail_queued();
                Outcome::Success
            }
            Ok(false) => Outcome::Ignored,
            Err(err) => {
                // The user asks again; an outage is logged by the revocation follower.
                if matches!(err, StoreError::Unavailable(_)) {
                    tracing::debug!(error = %crate::error_chain::error_chain(&err), "a password reset could not be queued");
                } else {
                    tracing::warn!(error = %crate::error_chain::error_chain(&err), "a password reset could not be queued");
                }
                Outcome::Error
            }
        };
        audit::record(Event::PasswordResetRequested, outcome, None, caller);
    }

    /// `POST /auth/password/reset`: a new password for the user of a reset token.
    ///
    /// # Errors
    /// `WeakPassword` (the token is not spent then), `InvalidResetToken`, `HashQueueFull`,
    /// `Unavailable`, `Internal`.
    pub async fn reset_password(
        &self,
        token: &str,
        new_password: SecretString,
        caller: &Caller,
    ) -> Result<(), AuthError> {
        if let Err(weak) = password_policy::check(new_password.expose_secret()) {
            audit::record(Event::PasswordReset, Outcome::Invalid, None, caller);
            return Err(weak);
        }
        let Some(hash) = decode_token(token) else {
            audit::record(Event::PasswordReset, Outcome::Invalid, None, caller);
            return Err(AuthError::InvalidResetToken);
        };
        // A token that cannot be used is refused before the new password is hashed: junk
        // tokens cost a read, not a bcrypt hash each.
        let kind = MailTemplate::PasswordReset;
        if !self
            .0
            .store
            .token_is_usable(&hash, kind, self.instant())
            .await?
        {
            audit::record(Event::PasswordReset, Outcome::Invalid, None, caller);
            return Err(AuthError::InvalidResetToken);
        }
        let new_hash = self.0.passwords.hash(new_password).await?;
        let notification = NewMail {
            template: MailTemplate::PasswordChanged,
            link: None,
        };
        let reset = self
            .0
            .store
            .reset_password_by_token(&hash, &new_hash, &notification, self.instant())
            .await?;
        let Some(user_id) = reset else {
            audit::record(Event::PasswordReset, Outcome::Invalid, None, caller);
            return Err(AuthError::InvalidResetToken);
        };
        // Here at once; other replicas and the feed through the event.
        self.0.revocations.user_changed(user_id);
        self.outbox_queued();
        audit::record(
            Event::PasswordReset,
            Outcome::Success,
            Some(user_id),
            caller,
        );
        Ok(())
    }
}

impl AuthService {
    /// The verification token and mail for a registration or a resend, when verification is
    /// on (`EMAIL_VERIFICATION` other than `off`).
    pub(super) fn verification_mail(&self) -> Result<Option<TokenMail>, AuthError> {
        let settings = &self.0.mail;
        if settings.verification == EmailVerification::Off {
            return Ok(None);
        }
        self.token_mail(
            &settings.verify_url,
            MailTemplate::VerifyEmail,
            Duration::hours(settings.verify_hours.into()),
        )
        .map(Some)
        .map_err(|err| AuthError::Internal(err.into()))
    }

    /// A one-time token of `template`'s kind, valid for `ttl`, and its mail, to queue. No
    /// usable token is ever at rest: what is stored now is the hash of a token nobody holds
    /// (it holds the user's place: a newer one voids it, a password change voids it), and the
    /// outbox row carries no link; the worker issues the real token when it sends the message
    /// ([`issue_link`]). `base` is checked here, so a link that cannot be made never queues.
    fn token_mail(
        &self,
        base: &str,
        template: MailTemplate,
        ttl: Duration,
    ) -> Result<TokenMail, url::ParseError> {
        url::Url::parse(base)?;
        let (_, token_hash) = new_token();
        Ok(TokenMail {
            token_hash,
            expires_at: self.instant() + ttl,
            mail: NewMail {
                template,
                link: None,
            },
        })
    }

    /// Wakes this process's outbox worker's mail queue (a message was just queued).
    pub(super) fn mail_queued(&self) {
        self.0.mail_wakeup.send_replace(());
    }

    /// Wakes its webhook queues (events were just written); without `WEBHOOK_URLS` nothing
    /// listens and this costs a lock.
    pub(super) fn events_queued(&self) {
        self.0.webhook_wakeup.send_replace(());
    }

    /// Both: a change that queued a notification and wrote its event.
    pub(super) fn outbox_queued(&self) {
        self.mail_queued();
        self.events_queued();
    }

    /// `POST /auth/email/verify`: marks the address of the token's user verified.
    ///
    /// # Errors
    /// `InvalidVerificationToken`, `Unavailable`, `Internal`.
    pub async fn verify_email(&self, token: &str, caller: &Caller) -> Result<(), AuthError> {
        let verified = match decode_token(token) {
            Some(hash) => self.0.store.verify_email(&hash, self.instant()).await?,
            None => None,
        };
        let Some(user_id) = verified else {
            audit::record(Event::EmailVerify, Outcome::Invalid, None, caller);
            return Err(AuthError::InvalidVerificationToken);
        };
        self.events_queued();
        audit::record(Event::EmailVerify, Outcome::Success, Some(user_id), caller);
        Ok(())
    }

    /// `POST /auth/email/resend`: a new verification mail for the caller, unless the address
    /// is verified, one went out within a minute, or verification is off. Quiet either way.
    ///
    /// # Errors
    /// `Unavailable`, `Internal`.
    pub async fn resend_verification(
        &self,
        user_id: i64,
        caller: &Caller,
    ) -> Result<(), AuthError> {
        let Some(verification) = self.verification_mail()? else {
            return Ok(());
        };
        let queued = self
            .0
            .store
            .queue_email_verification(user_id, &verification, RESEND_MIN_INTERVAL, self.instant())
            .await?;
        if queued {
            self.mail_queued();
        }
        let outcome = if queued {
            Outcome::Success
        } else {
            Outcome::Ignored
        };
        audit::record(
            Event::EmailVerificationRequested,
            outcome,
            Some(user_id),
            caller,
        );
        Ok(())
    }
}

/// A fresh token (32 random bytes, base64url) and its stored form.
pub(super) fn new_token() -> (String, [u8; 32]) {
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let hash = token_hash(&token);
    (token, hash)
}

/// The stored form of a token: its SHA-256.
pub(super) fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A presented token's hash, if it has the shape of one (32 bytes, base64url).
fn decode_token(token: &str) -> Option<[u8; 32]> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim())
        .ok()?;
    (bytes.len() == 32).then(|| token_hash(token.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_32_bytes_and_only_their_hash_is_kept() {
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([7u8; 32]);
        assert_eq!(decode_token(&token), Some(token_hash(&token)));
        assert_ne!(token_hash(&token).to_vec(), token.as_bytes());
        for bad in ["", "abc", "!!!!", &token[..20]] {
            assert_eq!(decode_token(bad), None, "{bad}");
        }
    }
}
