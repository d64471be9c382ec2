//! The authentication rules: the only thing HTTP handlers call.
//!
//! [`AuthService`] owns the store, the token keys, the password hasher, the clock and the
//! policies. Its methods are named after the API actions and return [`AuthError`], whose
//! messages are the contract's `detail` strings. This module does not know about HTTP.

pub mod admin;
pub mod audit;
pub mod copy;
pub mod email;
pub mod lockout;
pub mod password_policy;
pub mod rotation;

use std::sync::Arc;

use chrono::{DateTime, Duration, DurationRound as _, Utc};
use secrecy::{ExposeSecret as _, SecretString};
use uuid::Uuid;

use self::{
    audit::{Caller, Event},
    email::Email,
    lockout::{AttemptDecision, AttemptStatus, LockoutPolicy},
    rotation::Reuse,
};
use crate::{
    clock::Clock,
    passwords::Passwords,
    store::{NewRefreshToken, RefreshTokenRow, Store, StoreError, UserRow},
    tokens::{TokenKeys, TokenKind},
};

/// Every way an auth action can fail; `Display` is the contract's `detail`.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Registration of an email that exists.
    #[error("User already exists")]
    UserExists,
    /// An email that breaks the format rules.
    #[error("Invalid email format")]
    InvalidEmail,
    /// A password that breaks the policy; the reasons in contract order.
    #[error("Password validation failed: {}", .0.join(", "))]
    WeakPassword(Vec<&'static str>),
    /// Unknown email or wrong password.
    #[error("Invalid email or password")]
    InvalidCredentials,
    /// Right password, disabled account.
    #[error("Account is disabled")]
    AccountDisabled,
    /// Locked out until `until`.
    #[error("Too many login attempts. Try again after {}", until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))]
    TooManyAttempts {
        /// When the lock ends.
        until: DateTime<Utc>,
        /// Seconds until then, for `Retry-After`.
        retry_after_secs: u64,
    },
    /// No bearer token was presented.
    #[error("Authorization header missing")]
    MissingToken,
    /// An access token that does not verify, or whose user is gone or disabled.
    #[error("Invalid or expired token")]
    InvalidToken,
    /// A refresh token that does not verify, was revoked, or was reused.
    #[error("Invalid or expired refresh token")]
    InvalidRefreshToken,
    /// The database did not answer.
    #[error("Service temporarily unavailable")]
    Unavailable(#[source] StoreError),
    /// Anything unexpected; the cause is logged, never shown.
    #[error("Internal server error")]
    Internal(#[source] anyhow::Error),
}

impl From<StoreError> for AuthError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Unavailable(_) => Self::Unavailable(err),
            other => Self::Internal(other.into()),
        }
    }
}

impl From<anyhow::Error> for AuthError {
    fn from(err: anyhow::Error) -> Self {
        Self::Internal(err)
    }
}

/// A freshly registered user.
#[derive(Debug, Clone)]
pub struct RegisteredUser {
    /// The new id.
    pub id: i64,
    /// The normalised email.
    pub email: String,
}

/// The owner of a valid access token.
#[derive(Debug, Clone)]
pub struct VerifiedUser {
    /// The user's id.
    pub id: i64,
    /// The user's normalised email.
    pub email: String,
}

/// What a login or refresh hands out.
#[derive(Clone)]
pub struct TokenPair {
    /// The access JWT.
    pub access_token: String,
    /// The refresh JWT.
    pub refresh_token: String,
    /// Access-token lifetime in seconds.
    pub expires_in: i64,
}

/// A login's result plus the attempt figures for the response headers (absent when the
/// request never reached the counter).
pub struct LoginOutcome {
    /// Tokens, or why not.
    pub result: Result<TokenPair, AuthError>,
    /// The `X-RateLimit-*` figures.
    pub status: Option<AttemptStatus>,
}

impl LoginOutcome {
    /// A failure, with the attempt figures when the counter was reached.
    fn error(err: impl Into<AuthError>, status: Option<AttemptStatus>) -> Self {
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
}

/// Settings of the service, taken from [`crate::config::Config`].
#[derive(Debug, Clone, Copy)]
pub struct AuthSettings {
    /// Access-token lifetime.
    pub access_ttl: Duration,
    /// Refresh-token lifetime.
    pub refresh_ttl: Duration,
    /// How long a rotated refresh token may be presented again.
    pub reuse_grace: Duration,
    /// The per-email login lockout.
    pub lockout: LockoutPolicy,
    /// The per-client-IP failure limit (password spraying), when on.
    pub ip_lockout: Option<LockoutPolicy>,
}

/// The authentication service; cheap to clone.
#[derive(Clone)]
pub struct AuthService(Arc<Inner>);

struct Inner {
    store: Arc<dyn Store>,
    keys: TokenKeys,
    passwords: Passwords,
    clock: Arc<dyn Clock>,
    settings: AuthSettings,
}

impl AuthService {
    /// Assembles the service.
    #[must_use]
    pub fn new(
        store: Arc<dyn Store>,
        keys: TokenKeys,
        passwords: Passwords,
        clock: Arc<dyn Clock>,
        settings: AuthSettings,
    ) -> Self {
        Self(Arc::new(Inner {
            store,
            keys,
            passwords,
            clock,
            settings,
        }))
    }

    /// Access-token lifetime in seconds (`expires_in`).
    #[must_use]
    pub fn expires_in(&self) -> i64 {
        self.0.settings.access_ttl.num_seconds()
    }

    /// The current time by the service's clock, to whole seconds (JWT time claims are seconds).
    fn now(&self) -> DateTime<Utc> {
        let now = self.0.clock.now();
        now.duration_trunc(Duration::seconds(1)).unwrap_or(now)
    }

    /// `POST /auth/register`: creates a user.
    ///
    /// # Errors
    /// `InvalidEmail`, `WeakPassword`, `UserExists`, `Unavailable`, `Internal`.
    #[tracing::instrument(skip_all, fields(user.id = tracing::field::Empty))]
    pub async fn register(
        &self,
        email: &str,
        password: SecretString,
        caller: &Caller,
    ) -> Result<RegisteredUser, AuthError> {
        let result = self.create_user(email, password).await;
        match &result {
            Ok(user) => {
                tracing::Span::current().record("user.id", user.id);
                audit::record(Event::Register, "success", Some(user.id), caller);
            }
            Err(AuthError::UserExists) => audit::record(Event::Register, "exists", None, caller),
            Err(AuthError::InvalidEmail | AuthError::WeakPassword(_)) => {
                audit::record(Event::Register, "invalid", None, caller);
            }
            Err(_) => audit::record(Event::Register, "error", None, caller),
        }
        result
    }

    /// Validates, hashes and inserts a user (registration and the admin command).
    async fn create_user(
        &self,
        email: &str,
        password: SecretString,
    ) -> Result<RegisteredUser, AuthError> {
        let email = Email::parse(email).ok_or(AuthError::InvalidEmail)?;
        let reasons = password_policy::violations(password.expose_secret());
        if !reasons.is_empty() {
            return Err(AuthError::WeakPassword(reasons));
        }
        let hash = self.0.passwords.hash(password).await?;
        match self
            .0
            .store
            .insert_user(email.as_str(), &hash, self.now())
            .await
        {
            Ok(user) => Ok(RegisteredUser {
                id: user.id,
                email: user.email,
            }),
            Err(StoreError::Duplicate) => Err(AuthError::UserExists),
            Err(other) => Err(other.into()),
        }
    }

    /// `POST /auth/login`: exchanges email and password for tokens.
    ///
    /// Order matters: the client IP's spraying guard, then the email's attempt is reserved in
    /// the database before anything is verified (so a parallel burst can never test more
    /// passwords than the limit allows), then exactly one bcrypt verification.
    #[tracing::instrument(skip_all, fields(user.id = tracing::field::Empty))]
    pub async fn login(
        &self,
        email: &str,
        password: SecretString,
        caller: &Caller,
    ) -> LoginOutcome {
        let Some(email) = Email::parse(email) else {
            audit::record(Event::Login, "invalid_request", None, caller);
            return LoginOutcome::error(AuthError::InvalidEmail, None);
        };
        let now = self.0.clock.now();
        let ip_guard = self
            .0
            .settings
            .ip_lockout
            .zip(caller.ip)
            .map(|(p, ip)| (p, format!("ip:{ip}")));
        if let Some((ip_policy, key)) = &ip_guard {
            match self.0.store.find_login_attempt(key).await {
                Err(err) => return LoginOutcome::error(err, None),
                Ok(row) => {
                    if let Some((until, status)) = row.and_then(|r| ip_policy.lock_of(&r, now)) {
                        audit::record(Event::Login, "ip_blocked", None, caller);
                        return LoginOutcome::locked(until, now, status);
                    }
                }
            }
        }
        let policy = self.0.settings.lockout;
        let reserved = self
            .0
            .store
            .reserve_login_attempt(email.as_str(), now, policy.limits())
            .await;
        let status = match reserved.map(|row| policy.decide(&row, now)) {
            Err(err) => return LoginOutcome::error(err, None),
            Ok(AttemptDecision::Locked { until, status }) => {
                audit::record(Event::Login, "locked", None, caller);
                return LoginOutcome::locked(until, now, status);
            }
            Ok(AttemptDecision::Allowed(status)) => status,
        };
        let user = match self.check_credentials(&email, &password).await {
            Ok(user) => user,
            Err(AuthError::InvalidCredentials) => {
                audit::record(Event::Login, "invalid_credentials", None, caller);
                if status.remaining == 0 {
                    audit::record(Event::Lockout, "locked", None, caller);
                }
                if let Some((ip_policy, key)) = &ip_guard
                    && let Err(err) = self.count_ip_failure(*ip_policy, key, now, caller).await
                {
                    return LoginOutcome::error(err, Some(status));
                }
                return LoginOutcome::error(AuthError::InvalidCredentials, Some(status));
            }
            Err(err) => return LoginOutcome::error(err, Some(status)),
        };
        tracing::Span::current().record("user.id", user.id);
        if let Err(err) = self.0.store.clear_login_attempts(email.as_str()).await {
            return LoginOutcome::error(err, Some(status));
        }
        let result = if user.is_active {
            self.upgrade_hash(&user, password).await;
            let issued = self.issue_pair(user.id, Uuid::new_v4(), None).await;
            if issued.is_ok() {
                audit::record(Event::Login, "success", Some(user.id), caller);
            }
            issued
        } else {
            audit::record(Event::Login, "disabled", Some(user.id), caller);
            Err(AuthError::AccountDisabled)
        };
        LoginOutcome {
            result,
            status: Some(policy.fresh()),
        }
    }

    /// Counts one failed login against the client IP (password spraying).
    async fn count_ip_failure(
        &self,
        ip_policy: LockoutPolicy,
        key: &str,
        now: DateTime<Utc>,
        caller: &Caller,
    ) -> Result<(), StoreError> {
        let row = self
            .0
            .store
            .reserve_login_attempt(key, now, ip_policy.limits())
            .await?;
        if row.attempts == i64::from(ip_policy.max_attempts) {
            audit::record(Event::Lockout, "ip_locked", None, caller);
        }
        Ok(())
    }

    /// Exactly one bcrypt verification, whether or not the email is known.
    async fn check_credentials(
        &self,
        email: &Email,
        password: &SecretString,
    ) -> Result<UserRow, AuthError> {
        let user = self.0.store.find_user_by_email(email.as_str()).await?;
        let hash = user.as_ref().map(|u| u.password_hash.as_str());
        let candidate = SecretString::from(password.expose_secret());
        if self.0.passwords.verify(candidate, hash).await? {
            user.ok_or(AuthError::InvalidCredentials)
        } else {
            Err(AuthError::InvalidCredentials)
        }
    }

    /// After a successful login: re-hash at `BCRYPT_ROUNDS` when the stored cost differs (one
    /// extra hash, only then). A failure here is logged, never fatal to the login.
    async fn upgrade_hash(&self, user: &UserRow, password: SecretString) {
        if !self.0.passwords.needs_rehash(&user.password_hash) {
            return;
        }
        let upgraded = match self.0.passwords.hash(password).await {
            Ok(hash) => {
                let store = &self.0.store;
                store
                    .update_password_hash(user.id, &user.password_hash, &hash, self.now())
                    .await
            }
            Err(err) => {
                tracing::warn!(error = %err, "password re-hash failed");
                return;
            }
        };
        match upgraded {
            Ok(true) => tracing::info!("password hash upgraded to the configured cost"),
            Ok(false) => {}
            Err(err) => tracing::warn!(error = %err, "storing the re-hashed password failed"),
        }
    }

    /// Signs a new access token and stores and signs a new refresh token.
    async fn issue_pair(
        &self,
        user_id: i64,
        family_id: Uuid,
        parent_jti: Option<Uuid>,
    ) -> Result<TokenPair, AuthError> {
        let now = self.now();
        let refresh = NewRefreshToken {
            jti: Uuid::new_v4(),
            user_id,
            family_id,
            parent_jti,
            issued_at: now,
            expires_at: now + self.0.settings.refresh_ttl,
        };
        self.0.store.insert_refresh_token(&refresh).await?;
        self.pair_for(&refresh.into())
    }

    /// A new access token plus the (re-)signed refresh token of `row`.
    fn pair_for(&self, row: &RefreshTokenRow) -> Result<TokenPair, AuthError> {
        let keys = &self.0.keys;
        let now = self.now();
        let access = keys.claims(
            TokenKind::Access,
            row.user_id,
            Uuid::new_v4(),
            now,
            now + self.0.settings.access_ttl,
        );
        let refresh = keys.claims(
            TokenKind::Refresh,
            row.user_id,
            row.jti,
            row.issued_at,
            row.expires_at,
        );
        Ok(TokenPair {
            access_token: keys.sign(&access)?,
            refresh_token: keys.sign(&refresh)?,
            expires_in: self.expires_in(),
        })
    }

    /// `POST /auth/refresh`: rotates a refresh token.
    ///
    /// # Errors
    /// `InvalidRefreshToken` (also after reuse, which revokes the family), `Unavailable`,
    /// `Internal`.
    #[tracing::instrument(skip_all, fields(user.id = tracing::field::Empty))]
    pub async fn refresh(&self, token: &str, caller: &Caller) -> Result<TokenPair, AuthError> {
        let (pair, outcome, user_id) = self.rotate(token).await?;
        let event = if outcome == "reuse_detected" {
            Event::ReuseDetected
        } else {
            Event::Refresh
        };
        audit::record(event, outcome, user_id, caller);
        pair.ok_or(AuthError::InvalidRefreshToken)
    }

    /// The rotation itself: the new pair (or none, for a 401) with the audit outcome.
    async fn rotate(
        &self,
        token: &str,
    ) -> Result<(Option<TokenPair>, &'static str, Option<i64>), AuthError> {
        const INVALID: &str = "invalid";
        let now = self.now();
        let Ok(claims) = self.0.keys.verify(token, TokenKind::Refresh, now) else {
            return Ok((None, INVALID, None));
        };
        tracing::Span::current().record("user.id", claims.user_id);
        let user_id = Some(claims.user_id);
        let store = &self.0.store;
        let row = store.find_refresh_token(claims.jti).await?;
        let Some(row) = row.filter(|r| r.user_id == claims.user_id) else {
            return Ok((None, INVALID, user_id));
        };
        if !store
            .find_user_by_id(row.user_id)
            .await?
            .is_some_and(|u| u.is_active)
        {
            return Ok((None, INVALID, user_id));
        }
        let child = NewRefreshToken {
            jti: Uuid::new_v4(),
            user_id: row.user_id,
            family_id: row.family_id,
            parent_jti: Some(row.jti),
            issued_at: now,
            expires_at: now + self.0.settings.refresh_ttl,
        };
        if store.rotate_refresh_token(row.jti, &child, now).await? {
            return Ok((Some(self.pair_for(&child.into())?), "success", user_id));
        }
        // Lost the compare-and-set: read the row as it is now and apply the grace rule.
        let current = store.find_refresh_token(row.jti).await?.unwrap_or(row);
        match rotation::on_reuse(&current, now, self.0.settings.reuse_grace) {
            Reuse::ReturnChild => match store.find_child_token(current.jti).await? {
                Some(child) if child.revoked_at.is_none() => {
                    Ok((Some(self.pair_for(&child)?), "grace_reuse", user_id))
                }
                _ => Ok((None, INVALID, user_id)),
            },
            Reuse::RevokeFamily => {
                let revoked = store.revoke_family_of(current.jti, now).await?;
                tracing::warn!(token.family = %current.family_id, revoked, "refresh token reuse detected; family revoked");
                Ok((None, "reuse_detected", user_id))
            }
            Reuse::Refuse => Ok((None, INVALID, user_id)),
        }
    }

    /// `POST /auth/logout`: revokes a refresh token and its family. Succeeds for any string;
    /// only a database failure is an error.
    ///
    /// # Errors
    /// `Unavailable`, `Internal`.
    #[tracing::instrument(skip_all)]
    pub async fn logout(&self, token: &str, caller: &Caller) -> Result<(), AuthError> {
        // Anything that does not verify (expired included) can no longer refresh: ignore it.
        if let Ok(claims) = self.0.keys.verify(token, TokenKind::Refresh, self.now()) {
            self.0
                .store
                .revoke_family_of(claims.jti, self.now())
                .await?;
            audit::record(Event::Logout, "success", Some(claims.user_id), caller);
        } else {
            audit::record(Event::Logout, "ignored", None, caller);
        }
        Ok(())
    }

    /// `POST /auth/logout-all`: revokes every refresh token of the user.
    ///
    /// # Errors
    /// `Unavailable`, `Internal`.
    #[tracing::instrument(skip_all, fields(user.id = user_id))]
    pub async fn logout_all(&self, user_id: i64, caller: &Caller) -> Result<(), AuthError> {
        self.0.store.revoke_user_tokens(user_id, self.now()).await?;
        audit::record(Event::LogoutAll, "success", Some(user_id), caller);
        Ok(())
    }

    /// `GET /auth/verify`: who an access token belongs to.
    ///
    /// # Errors
    /// `InvalidToken` (also for a deleted or disabled user), `Unavailable`, `Internal`.
    #[tracing::instrument(skip_all, fields(user.id = tracing::field::Empty))]
    pub async fn verify_access(&self, token: &str) -> Result<VerifiedUser, AuthError> {
        let result = self.check_access(token).await;
        match &result {
            Ok(_) => audit::verify_result("valid"),
            Err(AuthError::InvalidToken) => audit::verify_result("invalid"),
            Err(_) => audit::verify_result("error"),
        }
        result
    }

    async fn check_access(&self, token: &str) -> Result<VerifiedUser, AuthError> {
        let claims = self
            .0
            .keys
            .verify(token, TokenKind::Access, self.0.clock.now())
            .map_err(|_| AuthError::InvalidToken)?;
        tracing::Span::current().record("user.id", claims.user_id);
        match self.0.store.find_user_by_id(claims.user_id).await? {
            Some(user) if user.is_active => Ok(VerifiedUser {
                id: user.id,
                email: user.email,
            }),
            _ => Err(AuthError::InvalidToken),
        }
    }

    /// Publishes the database pool's size and idle connections as gauges.
    pub fn record_pool_metrics(&self) {
        let stats = self.0.store.pool_stats();
        metrics::gauge!("db_pool_connections").set(f64::from(stats.size));
        metrics::gauge!("db_pool_idle_connections").set(f64::from(stats.idle));
    }

    /// Whether the database answers (health checks).
    ///
    /// # Errors
    /// `Unavailable` or `Internal` when it does not.
    pub async fn ping(&self) -> Result<(), AuthError> {
        Ok(self.0.store.ping().await?)
    }
}
