//! `POST /auth/login`: the per-IP spraying guard, the per-email lockout (reserved before any
//! password is checked), exactly one bcrypt verification, and the re-hash at a new cost.

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use secrecy::{ExposeSecret as _, SecretString};

use super::{
    AuthError, AuthService, TokenPair,
    audit::{self, Caller, Event, Outcome},
    email::Email,
    lockout::{self, AttemptDecision, AttemptStatus, LockoutKey, LockoutPolicy},
    mfa::SignIn,
};
use crate::{
    config::EmailVerification,
    store::{StoreError, UserRow},
};

/// The result of an action that checks a password under the lockout (a login: tokens; a
/// password change or an account deletion: nothing) plus the attempt figures for the
/// `X-RateLimit-*` response headers (absent when the request never reached the counter).
pub struct LoginOutcome<T = TokenPair> {
    /// What the action gives, or why not.
    pub result: Result<T, AuthError>,
    /// The `X-RateLimit-*` figures.
    pub status: Option<AttemptStatus>,
}

impl<T> LoginOutcome<T> {
    /// A failure, with the attempt figures when the counter was reached.
    pub(super) fn error(err: impl Into<AuthError>, status: Option<AttemptStatus>) -> Self {
        Self {
            result: Err(err.into()),
            status,
        }
    }

    /// Refused while locked until `until`: 429 with `Retry-After`, nothing verified.
    fn locked(until: DateTime<Utc>, now: DateTime<Utc>, status: AttemptStatus) -> Self {
        let retry_after_secs = lockout::seconds_until(until, now).max(1);
        Self {
            result: Err(AuthError::TooManyAttempts {
                until,
                retry_after_secs,
            }),
            status: Some(status),
        }
    }

    /// Refused because the client's address is blocked until `until`, for every email.
    fn ip_blocked(until: DateTime<Utc>, now: DateTime<Utc>, status: AttemptStatus) -> Self {
        let retry_after_secs = lockout::seconds_until(until, now).max(1);
        Self {
            result: Err(AuthError::IpBlocked {
                until,
                retry_after_secs,
            }),
            status: Some(status),
        }
    }
}

impl AuthService {
    /// `POST /auth/login`: exchanges email and password for tokens, or, for a user with a
    /// second factor, for the challenge of the second step.
    #[tracing::instrument(skip_all, fields(user.id = tracing::field::Empty))]
    pub async fn login(
        &self,
        email: &str,
        password: SecretString,
        caller: &Caller,
    ) -> LoginOutcome<SignIn> {
        let Some(email) = Email::parse(email) else {
            audit::record(Event::Login, Outcome::InvalidRequest, None, caller);
            return LoginOutcome::error(AuthError::InvalidEmail, None);
        };
        let attempt = self
            .attempt_password(&email, &password, Event::Login, caller)
            .await;
        let user = match attempt.result {
            Ok(user) => user,
            Err(err) => return LoginOutcome::error(err, attempt.status),
        };
        let unverified = self.0.mail.verification == EmailVerification::Required
            && user.email_verified_at.is_none();
        let result = if !user.is_active {
            audit::record(Event::Login, Outcome::Disabled, Some(user.id), caller);
            Err(AuthError::AccountDisabled)
        } else if unverified {
            // Only after the password checked out: it tells nothing to someone without it.
            audit::record(Event::Login, Outcome::Unverified, Some(user.id), caller);
            Err(AuthError::EmailNotVerified)
        } else {
            let checked_hash = self.upgrade_hash(&user, password).await;
            let issued = self.sign_in(&user, &checked_hash, caller).await;
            match &issued {
                Ok(SignIn::Tokens(_)) => {
                    audit::record(Event::Login, Outcome::Success, Some(user.id), caller);
                }
                Ok(SignIn::SecondFactor(_)) => {
                    audit::record(Event::Login, Outcome::MfaRequired, Some(user.id), caller);
                }
                Err(AuthError::InvalidCredentials) => audit::record(
                    Event::Login,
                    Outcome::InvalidCredentials,
                    Some(user.id),
                    caller,
                ),
                Err(_) => {}
            }
            issued
        };
        LoginOutcome {
            result,
            status: attempt.status,
        }
    }

    /// One password attempt for `email` under the login rules, by login and by every action
    /// that asks for the password again (change, delete): the client IP's spraying guard, then
    /// the email's attempt is reserved in the database before anything is verified (so a
    /// parallel burst can never test more passwords than the limit allows), then exactly one
    /// bcrypt verification; a failure counts against the email and the client IP, a success
    /// clears the email's counter. `event` names the action in the audit trail. The user
    /// (active or not) when the password is right.
    pub(super) async fn attempt_password(
        &self,
        email: &Email,
        password: &SecretString,
        event: Event,
        caller: &Caller,
    ) -> LoginOutcome<UserRow> {
        if self.0.passwords.is_saturated() {
            return LoginOutcome::error(AuthError::HashQueueFull, None);
        }
        let now = self.0.clock.now();
        let ip_guard = self.0.settings.ip_lockout.zip(caller.ip).map(|(p, ip)| {
            let network = lockout::client_network(ip, self.0.settings.ipv6_prefix_length);
            (p, network)
        });
        if let Some((ip_policy, network)) = &ip_guard {
            let key = LockoutKey::Client(*network);
            match self.0.store.find_login_attempt(&key.stored()).await {
                Err(err) => return LoginOutcome::error(err, None),
                Ok(row) => {
                    if let Some((until, status)) = row.and_then(|r| ip_policy.lock_of(&r, now)) {
                        audit::record(event, Outcome::IpBlocked, None, caller);
                        tracing::info!(
                            client.network = %network,
                            "password refused unchecked: the client's address is blocked after too many failures"
                        );
                        return LoginOutcome::ip_blocked(until, now, status);
                    }
                }
            }
        }
        let policy = self.0.settings.lockout;
        let reserved = self
            .0
            .store
            .reserve_login_attempt(&LockoutKey::Email(email).stored(), now, policy.limits())
            .await;
        let status = match reserved.map(|row| policy.decide(&row, now)) {
            Err(err) => return LoginOutcome::error(err, None),
            Ok(AttemptDecision::Locked { until, status }) => {
                audit::record(event, Outcome::Locked, None, caller);
                return LoginOutcome::locked(until, now, status);
            }
            Ok(AttemptDecision::Allowed(status)) => status,
        };
        let user = match self.check_credentials(email, password).await {
            Ok(Ok(user)) => user,
            Ok(Err(known)) => {
                // The user id (never the email) when the address matched an account: an
                // operator can tell a wrong password from an unknown address.
                if let Some(id) = known {
                    tracing::Span::current().record("user.id", id);
                }
                audit::record(event, Outcome::InvalidCredentials, known, caller);
                if status.remaining == 0 {
                    audit::record(Event::Lockout, Outcome::Locked, known, caller);
                }
                if let Some((ip_policy, network)) = &ip_guard
                    && let Err(err) = self
                        .count_ip_failure(*ip_policy, *network, now, caller)
                        .await
                {
                    return LoginOutcome::error(err, Some(status));
                }
                return LoginOutcome::error(AuthError::InvalidCredentials, Some(status));
            }
            Err(err) => return LoginOutcome::error(err, Some(status)),
        };
        tracing::Span::current().record("user.id", user.id);
        if let Err(err) = self
            .0
            .store
            .clear_login_attempts(&LockoutKey::Email(email).stored())
            .await
        {
            return LoginOutcome::error(err, Some(status));
        }
        LoginOutcome {
            result: Ok(user),
            status: Some(policy.fresh()),
        }
    }

    /// Counts one failed login against the client IP (password spraying).
    async fn count_ip_failure(
        &self,
        ip_policy: LockoutPolicy,
        network: IpNet,
        now: DateTime<Utc>,
        caller: &Caller,
    ) -> Result<(), StoreError> {
        let row = self
            .0
            .store
            .reserve_login_attempt(
                &LockoutKey::Client(network).stored(),
                now,
                ip_policy.limits(),
            )
            .await?;
        if row.attempts == i64::from(ip_policy.max_attempts) {
            audit::record(Event::Lockout, Outcome::IpLocked, None, caller);
        }
        Ok(())
    }

    /// Exactly one bcrypt verification, whether or not the email is known: the user, or, for
    /// wrong credentials, the id of the account the email matched (if any).
    async fn check_credentials(
        &self,
        email: &Email,
        password: &SecretString,
    ) -> Result<Result<UserRow, Option<i64>>, AuthError> {
        let user = self.0.store.find_user_by_email(email.as_str()).await?;
        let hash = user.as_ref().map(|u| u.password_hash.as_str());
        let candidate = SecretString::from(password.expose_secret());
        if self.0.passwords.verify(candidate, hash).await? {
            Ok(user.ok_or(None))
        } else {
            Ok(Err(user.map(|u| u.id)))
        }
    }

    /// After a successful login: re-hash at `BCRYPT_ROUNDS` when the stored cost differs (one
    /// extra hash, only then). A failure here is logged, never fatal to the login. The hash
    /// the checked password now has in the database, as far as this login knows: the new one
    /// when it was stored, else the one it was checked against (the session's start compares
    /// it with the user's hash under the lock).
    async fn upgrade_hash(&self, user: &UserRow, password: SecretString) -> String {
        if !self.0.passwords.needs_rehash(&user.password_hash) {
            return user.password_hash.clone();
        }
        let (hash, upgraded) = match self.0.passwords.hash(password).await {
            Ok(hash) => {
                let store = &self.0.store;
                let upgraded = store
                    .rehash_password(user.id, &user.password_hash, &hash, self.now())
                    .await;
                (hash, upgraded)
            }
            Err(err) => {
                tracing::warn!(error = %err, "password re-hash failed");
                return user.password_hash.clone();
            }
        };
        match upgraded {
            Ok(true) => {
                tracing::info!("password hash upgraded to the configured cost");
                return hash;
            }
            Ok(false) => {}
            Err(err) => tracing::warn!(error = %err, "storing the re-hashed password failed"),
        }
        user.password_hash.clone()
    }
}
