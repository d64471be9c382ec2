//! Account recovery by mail: `POST /auth/password/forgot` and `/auth/password/reset`, and the
//! worker that drains the outbox.
//!
//! - **Forgot** answers at once, the same for every well-formed email: the lookup, the throttle
//!   and the queueing run after the answer, so neither its body nor its timing says whether the
//!   account exists. What it queues (token and mail) is written in one transaction.
//! - **Reset** consumes its token atomically and, in the same transaction, sets the password,
//!   ends every session, clears the lockout, marks the address verified and queues the
//!   "password changed" mail.
//! - **The worker** (one per process) claims due messages with a lease, sends them, marks them
//!   sent; a failure is retried with exponential backoff and jitter until
//!   `MAIL_MAX_RETRY_HOURS`, then the message fails with an ERROR line that names neither the
//!   address nor the link. Several replicas share the outbox: each message is sent once; one
//!   killed mid-send leaves its lease to run out, and another sends the message then.

use std::{
    sync::{Arc, Weak},
    time::Duration as StdDuration,
};

use base64::Engine as _;
use chrono::Duration;
use secrecy::{ExposeSecret as _, SecretString};
use sha2::{Digest as _, Sha256};
use tracing::Instrument as _;

use super::{
    AuthError, AuthService, Inner,
    audit::{self, Caller, Event, Outcome},
    email::Email,
    password_policy,
};
use crate::{
    config::EmailVerification,
    mail::{self, Mailer, SendError},
    store::{MailOutcome, MailTemplate, NewMail, OutboxMail, ResetRequest, StoreError, TokenMail},
};

/// How long a claimed message is reserved for the worker that claimed it. Each message is
/// claimed on its own, just before it is sent, and its send is cut at [`SEND_WITHIN`]: the
/// lease always covers the work it guards, so a live worker always finishes first, and a dead
/// one's message waits no longer.
const LEASE: Duration = Duration::seconds(30);

/// The longest one send may take (connection, every SMTP command, the data), well inside
/// [`LEASE`]; a send cut here is retried.
const SEND_WITHIN: StdDuration = StdDuration::from_secs(25);

/// How often the worker looks for due messages when nothing woke it.
const POLL: StdDuration = StdDuration::from_secs(1);

/// Messages one process sends at once (lettre's pool keeps up to this many SMTP connections).
const LANES: usize = 4;

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
            .reset_password(&hash, &new_hash, &notification, self.instant())
            .await?;
        let Some(user_id) = reset else {
            audit::record(Event::PasswordReset, Outcome::Invalid, None, caller);
            return Err(AuthError::InvalidResetToken);
        };
        // Here at once; other replicas and the feed through the event.
        self.0.revocations.user_changed(user_id);
        self.mail_queued();
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

    /// Wakes this process's outbox worker (a message was just queued).
    pub(super) fn mail_queued(&self) {
        self.0.mail_wakeup.notify_one();
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
fn new_token() -> (String, [u8; 32]) {
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let hash = token_hash(&token);
    (token, hash)
}

/// The stored form of a token: its SHA-256.
fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A presented token's hash, if it has the shape of one (32 bytes, base64url).
fn decode_token(token: &str) -> Option<[u8; 32]> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim())
        .ok()?;
    (bytes.len() == 32).then(|| token_hash(token.trim()))
}

/// Runs the outbox worker until the service is gone.
pub fn spawn_worker(auth: &AuthService, mailer: Arc<Mailer>) -> tokio::task::JoinHandle<()> {
    let service: Weak<Inner> = Arc::downgrade(&auth.0);
    tokio::spawn(async move {
        loop {
            let Some(inner) = service.upgrade() else {
                return;
            };
            drain(&inner, &mailer).await;
            let wake = Arc::clone(&inner.mail_wakeup);
            drop(inner);
            tokio::select! {
                () = tokio::time::sleep(POLL) => {}
                () = wake.notified() => {}
            }
        }
    })
}

/// Sends every message due now, [`LANES`] at a time: each lane claims one message (password
/// resets first), sends it, and claims the next, until none is due. One claim comes first, so
/// an idle outbox costs one claim per poll, not one per lane.
async fn drain(inner: &Inner, mailer: &Mailer) {
    if let Some(first) = claim_one(inner).await {
        let lanes = std::iter::once(Some(first))
            .chain(std::iter::repeat_with(|| None).take(LANES - 1))
            .map(|first| lane(inner, mailer, first));
        futures_util::future::join_all(lanes).await;
    }
    if let Ok(pending) = inner.store.pending_mail().await {
        #[expect(clippy::cast_precision_loss, reason = "a count of messages")]
        metrics::gauge!("mail_outbox_pending").set(pending as f64);
    }
}

/// One lane of [`drain`], starting with `first` if it has one.
async fn lane(inner: &Inner, mailer: &Mailer, mut first: Option<OutboxMail>) {
    while let Some(mail) = match first.take() {
        Some(mail) => Some(mail),
        None => claim_one(inner).await,
    } {
        attempt(inner, mailer, mail).await;
    }
}

/// The next due message, claimed with a lease that covers one send; `None` when none is due
/// or the outbox cannot be read.
async fn claim_one(inner: &Inner) -> Option<OutboxMail> {
    let now = inner.clock.now();
    match inner.store.claim_mail(now, now + LEASE, 1).await {
        Ok(mut claimed) => claimed.pop(),
        // An outage is logged once when it starts and once when it ends, by the revocation
        // follower; the worker only retries.
        Err(err @ StoreError::Unavailable(_)) => {
            tracing::debug!(
                error = %crate::error_chain::error_chain(&err),
                "the mail outbox cannot be read; retrying"
            );
            None
        }
        Err(err) => {
            tracing::warn!(
                error = %crate::error_chain::error_chain(&err),
                "the mail outbox cannot be read; retrying"
            );
            None
        }
    }
}

/// The link of a message, made as it is sent.
enum Issued {
    /// The link to put in the message (none for a notification).
    Link(String),
    /// The token it was to carry was voided since it was queued: the message must not go.
    Void,
}

/// The link of `mail`, with a token issued now: a fresh token's hash replaces the one its
/// queueing stored (if that is still unused: a newer token, a password change or the user's
/// deletion voids it), under the user's lock, and the token itself exists only in this
/// message. A message queued before links were issued at send time carries its link.
async fn issue_link(
    inner: &Inner,
    mail: &OutboxMail,
    template: MailTemplate,
) -> Result<Issued, StoreError> {
    let settings = &inner.mail;
    let (base, ttl) = match template {
        MailTemplate::PasswordReset => (
            &settings.reset_url,
            Duration::minutes(settings.reset_minutes.into()),
        ),
        MailTemplate::VerifyEmail => (
            &settings.verify_url,
            Duration::hours(settings.verify_hours.into()),
        ),
        MailTemplate::PasswordChanged => return Ok(Issued::Link(String::new())),
    };
    if let Some(link) = &mail.link {
        return Ok(Issued::Link(link.clone()));
    }
    let Some(user_id) = mail.user_id else {
        return Ok(Issued::Void);
    };
    let (token, token_hash) = new_token();
    let now = inner.clock.now();
    let issued = inner
        .store
        .reissue_token(user_id, template, &token_hash, now + ttl, now)
        .await?;
    if !issued {
        return Ok(Issued::Void);
    }
    // The base was checked when the message was queued.
    Ok(url::Url::parse_with_params(base, [("token", &token)])
        .map_or(Issued::Void, |link| Issued::Link(link.to_string())))
}

/// One attempt at one claimed message.
async fn attempt(inner: &Inner, mailer: &Mailer, mail: OutboxMail) {
    let settings = &inner.mail;
    let id = mail.id;
    let outcome = match MailTemplate::parse(&mail.template) {
        None => Err(SendError::Build(format!(
            "unknown template {}",
            mail.template
        ))),
        Some(template) => {
            let link = match issue_link(inner, &mail, template).await {
                Ok(Issued::Link(link)) => link,
                Ok(Issued::Void) => {
                    // The user reset, changed or had the password set, logged out everywhere,
                    // was disabled or deleted since: the link must not go out.
                    tracing::info!(
                        mail.id = id,
                        mail.template = %mail.template,
                        "a queued link was voided before it was sent; dropped"
                    );
                    finish(inner, id, MailOutcome::Failed).await;
                    return;
                }
                Err(err) => {
                    // The database: the lease runs out and the message is tried again.
                    tracing::warn!(
                        mail.id = id,
                        error = %crate::error_chain::error_chain(&err),
                        "a link could not be issued; retrying"
                    );
                    return;
                }
            };
            let ctx = mail::Context {
                product: &settings.product,
                link: &link,
                minutes: settings.reset_minutes,
                hours: settings.verify_hours,
            };
            match mail::render(template, ctx) {
                Ok(rendered) => {
                    let send = mailer.send(&mail.recipient, &mail.message_id, &rendered);
                    tokio::time::timeout(SEND_WITHIN, send)
                        .await
                        .unwrap_or(Err(SendError::TimedOut))
                }
                Err(err) => Err(SendError::Build(err.to_string())),
            }
        }
    };
    let now = inner.clock.now();
    let ended = match outcome {
        Ok(()) => {
            metrics::counter!("mail_sent_total").increment(1);
            MailOutcome::Sent
        }
        Err(err) => {
            let next = now + backoff(mail.attempts);
            let permanent = matches!(&err, SendError::Build(_))
                || matches!(&err, SendError::Smtp(smtp) if smtp.is_permanent());
            if permanent || next > mail.created_at + settings.max_retry {
                metrics::counter!("mail_failed_total").increment(1);
                // Never the address or the link: the template and the cause's kind only.
                tracing::error!(
                    mail.id = id,
                    mail.template = %mail.template,
                    attempts = mail.attempts,
                    cause = cause(&err),
                    "a mail could not be delivered; giving up"
                );
                MailOutcome::Failed
            } else {
                tracing::warn!(
                    mail.id = id,
                    mail.template = %mail.template,
                    attempts = mail.attempts,
                    cause = cause(&err),
                    retry_at = %next,
                    "a mail was not delivered; retrying"
                );
                MailOutcome::RetryAt(next)
            }
        }
    };
    finish(inner, id, ended).await;
}

/// Records how an attempt ended.
async fn finish(inner: &Inner, id: i64, outcome: MailOutcome) {
    let now = inner.clock.now();
    if let Err(err) = inner.store.finish_mail(id, outcome, now).await {
        // The lease runs out and the message is tried again (a sent one may then go twice:
        // the one case where at-least-once shows).
        tracing::warn!(
            mail.id = id,
            error = %crate::error_chain::error_chain(&err),
            "a mail's outcome could not be recorded"
        );
    }
}

/// What went wrong, in words that hold no address: the SMTP status code, or the kind.
fn cause(err: &SendError) -> String {
    match err {
        SendError::Build(_) => "the message could not be built".to_owned(),
        SendError::Smtp(smtp) => match smtp.status() {
            Some(code) => format!("SMTP {code}"),
            None if smtp.is_timeout() => "SMTP timeout".to_owned(),
            None => "SMTP connection failed".to_owned(),
        },
        SendError::TimedOut => "the SMTP exchange took too long".to_owned(),
    }
}

/// 30 s after the first failure, doubling up to an hour, with ±20% jitter (so replicas that
/// failed together do not retry together).
fn backoff(attempts: i32) -> Duration {
    let exponent = u32::try_from(attempts.saturating_sub(1).clamp(0, 7)).unwrap_or(0);
    let base = (30_i64 << exponent).min(3600);
    let jitter = 0.8 + 0.4 * rand::random::<f64>();
    #[expect(clippy::cast_possible_truncation, reason = "at most 4320 seconds")]
    Duration::milliseconds((base as f64 * 1000.0 * jitter) as i64)
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

    #[test]
    fn backoff_doubles_to_an_hour_with_jitter() {
        for (attempts, base) in [(1, 30), (2, 60), (3, 120), (8, 3600), (30, 3600)] {
            let delay = backoff(attempts).num_milliseconds();
            assert!(
                (base * 800..=base * 1200).contains(&delay),
                "{attempts}: {delay}"
            );
        }
    }
}
