//! The authentication rules: the only thing HTTP handlers call.
//!
//! [`AuthService`] owns the store, the token keys, the password hasher, the clock and the
//! policies. Its methods are named after the API actions and return [`AuthError`], whose
//! messages are the contract's `detail` strings. This module does not know about HTTP.

mod account;
pub mod admin;
pub mod audit;
pub mod copy;
pub mod email;
mod errors;
pub mod feed;
pub mod lockout;
mod login;
pub mod mfa;
pub mod outbox;
pub mod passkeys;
pub mod password_policy;
pub mod purge;
pub mod recovery;
mod refresh;
pub mod rekey;
pub mod revocations;
pub mod rotation;
pub mod user_import;
pub mod webhooks;

pub use self::{
    account::{ActiveSession, Credentialed},
    errors::AuthError,
    login::LoginOutcome,
};

use std::sync::Arc;

use chrono::{DateTime, Duration, DurationRound as _, Utc};
use secrecy::{ExposeSecret as _, SecretString};
use uuid::Uuid;

use self::{
    audit::{Caller, Event, Outcome, VerifyCounters, VerifyResult},
    email::Email,
    lockout::LockoutPolicy,
    revocations::Revocations,
};
use crate::{
    assurance::{Aal, Assurance, Methods},
    clock::Clock,
    config::RotationMode,
    passwords::Passwords,
    store::{
        NewRefreshToken, NewSession, RefreshTokenRow, SessionRefused, SignInProof, Store,
        StoreError, UserRow,
    },
    tokens::{Claims, Subject, TokenKeys, TokenKind},
};

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
    /// The user's normalised email (shared with the cache, not copied per request).
    pub email: Arc<str>,
    /// Whether the address was verified when the token was issued (tokens from before email
    /// verification existed count as verified).
    pub email_verified: bool,
    /// The token's session (`sid`).
    pub session: Uuid,
    /// The level the token was issued at (`acr`; `aal1` for tokens without it).
    pub aal: Aal,
    /// The methods of its sign-in (`amr`; `["pwd"]` for tokens without it).
    pub amr: Methods,
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
    /// `REFRESH_TOKEN_ROTATION`.
    pub rotation: RotationMode,
    /// `IPV6_PREFIX_LENGTH`: IPv6 clients are counted per network of this length.
    pub ipv6_prefix_length: u8,
    /// `JWT_LEEWAY_SECONDS`: how long past `exp` a token still verifies.
    pub leeway: Duration,
    /// `MAX_SESSIONS_PER_USER`: live sessions per user.
    pub max_sessions: u32,
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
    /// What verification refuses, in memory, kept exact by the events table.
    revocations: Arc<Revocations>,
    /// `auth_verify_total`'s handles.
    verify_counters: VerifyCounters,
    /// Who may read the revocation feed.
    feed_readers: feed::FeedReaders,
    /// Access tokens whose signature and time-independent claims already checked out, by
    /// their exact text: a service presents the same token on every request of a session, and
    /// the signature and the JSON are the dearest part of a verification. Only tokens that
    /// verified are remembered (a forged one never matches a remembered text), the keys never
    /// change while the process runs, and the time claims and revocations are checked on
    /// every use. Bounded in bytes ([`VERIFIED_ACCESS_BYTES`]). quick_cache, as the
    /// revocation view: with many distinct tokens most calls insert, and its inserts cost a
    /// fraction of moka's (50,000 tokens in turn: 74k against 55k verifies/s).
    verified_access: quick_cache::sync::Cache<Arc<str>, Arc<Claims>, TokenWeight>,
    /// Account recovery's settings.
    mail: recovery::MailSettings,
    /// Wakes the outbox worker's mail queue when this process queued a message.
    mail_wakeup: tokio::sync::watch::Sender<()>,
    /// Wakes its webhook queues when this process wrote events.
    webhook_wakeup: tokio::sync::watch::Sender<()>,
    /// Forgot requests queued in the background at once (see `recovery::FORGOT_IN_FLIGHT`).
    forgot_in_flight: Arc<tokio::sync::Semaphore>,
    /// Seal the TOTP secrets at rest.
    data_keys: crate::data_keys::DataKeys,
    /// Runs the passkey ceremonies.
    passkeys: passkeys::RelyingParty,
}

/// What [`Inner::verified_access`] may hold, in bytes as [`TokenWeight`] weighs them: 10,000
/// to 14,000 tokens (a token with a short email weighs 0.8-1.1 KiB since tokens carry `acr`,
/// `amr` and `auth_time`; 11 MiB keeps the count the 10 MiB held before they did, about
/// 13,500 of the bench's tokens).
pub const VERIFIED_ACCESS_BYTES: u64 = 11 * 1024 * 1024;

/// The cache behind [`Inner::verified_access`], bounded by [`VERIFIED_ACCESS_BYTES`].
fn verified_access_cache() -> quick_cache::sync::Cache<Arc<str>, Arc<Claims>, TokenWeight> {
    quick_cache::sync::Cache::with_weighter(10_000, VERIFIED_ACCESS_BYTES, TokenWeight)
}

/// What a remembered token costs besides its text and its claims' strings: the cache's slot
/// and index (measured by a test below) and the two shared allocations' headers (`acr` and
/// `amr` are held inline, without allocations of their own).
const TOKEN_ENTRY_BYTES: u64 = 112 + 2 * 16;

/// Weighs a remembered token by what it holds on the heap: its text, its claims and their
/// strings, and the cache's own share ([`TOKEN_ENTRY_BYTES`]).
#[derive(Debug, Clone, Copy)]
struct TokenWeight;

impl quick_cache::Weighter<Arc<str>, Arc<Claims>> for TokenWeight {
    fn weight(&self, token: &Arc<str>, claims: &Arc<Claims>) -> u64 {
        let strings = [&claims.email, &claims.iss, &claims.aud]
            .into_iter()
            .flatten()
            .map(String::len)
            .sum::<usize>();
        let bytes = token.len() + size_of::<Claims>() + claims.sub.len() + strings;
        TOKEN_ENTRY_BYTES + u64::try_from(bytes).unwrap_or(u64::MAX)
    }
}

impl AuthService {
    /// Assembles the service.
    #[must_use]
    #[expect(
        clippy::too_many_arguments,
        reason = "each part is built by `state.rs` from its own configuration section"
    )]
    pub fn new(
        store: Arc<dyn Store>,
        keys: TokenKeys,
        passwords: Passwords,
        clock: Arc<dyn Clock>,
        settings: AuthSettings,
        feed_readers: feed::FeedReaders,
        mail: recovery::MailSettings,
        data_keys: crate::data_keys::DataKeys,
        passkeys: passkeys::RelyingParty,
    ) -> Self {
        let revocations = Arc::new(Revocations::new(Arc::clone(&store)));
        Self(Arc::new(Inner {
            store,
            keys,
            passwords,
            clock,
            settings,
            revocations,
            verify_counters: VerifyCounters::new(),
            feed_readers,
            verified_access: verified_access_cache(),
            mail,
            mail_wakeup: tokio::sync::watch::Sender::new(()),
            webhook_wakeup: tokio::sync::watch::Sender::new(()),
            forgot_in_flight: Arc::new(tokio::sync::Semaphore::new(recovery::FORGOT_IN_FLIGHT)),
            data_keys,
            passkeys,
        }))
    }

    /// The in-memory revocation view; the server starts following the events with it.
    #[must_use]
    pub fn revocations(&self) -> &Arc<Revocations> {
        &self.0.revocations
    }

    /// Access-token lifetime in seconds (`expires_in`).
    #[must_use]
    pub fn expires_in(&self) -> i64 {
        self.0.settings.access_ttl.num_seconds()
    }

    /// The current time by the service's clock to the microsecond, what both databases store:
    /// for times compared again later (rotation and its grace window, revocations).
    fn instant(&self) -> DateTime<Utc> {
        let now = self.0.clock.now();
        now.duration_trunc(Duration::microseconds(1)).unwrap_or(now)
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
                audit::record(Event::Register, Outcome::Success, Some(user.id), caller);
            }
            Err(AuthError::UserExists) => {
                audit::record(Event::Register, Outcome::Exists, None, caller);
            }
            Err(AuthError::InvalidEmail | AuthError::WeakPassword(_)) => {
                audit::record(Event::Register, Outcome::Invalid, None, caller);
            }
            Err(_) => audit::record(Event::Register, Outcome::Error, None, caller),
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
        password_policy::check(password.expose_secret())?;
        if self.0.passwords.is_saturated() {
            return Err(AuthError::HashQueueFull);
        }
        // An address that is taken answers 409 without spending a hash (the unique index
        // still decides between concurrent registrations).
        if self
            .0
            .store
            .find_user_by_email(email.as_str())
            .await?
            .is_some()
        {
            return Err(AuthError::UserExists);
        }
        let hash = self.0.passwords.hash(password).await?;
        let verification = self.verification_mail()?;
        let registered = self
            .0
            .store
            .register_user(
                email.as_str(),
                email.address(),
                &hash,
                self.now(),
                verification.as_ref(),
            )
            .await;
        if registered.is_ok() {
            if verification.is_some() {
                self.mail_queued();
            }
            self.events_queued();
        }
        match registered {
            Ok(user) => Ok(RegisteredUser {
                id: user.id,
                email: user.email,
            }),
            Err(StoreError::Duplicate) => Err(AuthError::UserExists),
            Err(other) => Err(other.into()),
        }
    }

    /// Starts a session for `user` from `caller`'s device, signed in with `methods`: stores it
    /// with its first refresh token (under the user's lock; the least recently used sessions
    /// beyond `MAX_SESSIONS_PER_USER` end) and signs the pair. `proof` is checked again under
    /// the lock: a password hash that is no longer the user's, or a user gone, is refused as a
    /// wrong password; a challenge used or voided meanwhile as `InvalidMfaToken`; a passkey
    /// whose counter moved meanwhile, or a passkey's user gone, as `PasskeySignInFailed`; a user
    /// disabled meanwhile as disabled.
    async fn start_session(
        &self,
        user: &UserRow,
        proof: SignInProof<'_>,
        methods: Methods,
        caller: &Caller,
    ) -> Result<TokenPair, AuthError> {
        let now = self.now();
        let session = NewSession {
            id: Uuid::new_v4(),
            user_id: user.id,
            created_at: now,
            expires_at: now + self.0.settings.refresh_ttl,
            user_agent: caller
                .user_agent
                .as_deref()
                .map(|agent| agent.chars().take(crate::store::USER_AGENT_CHARS).collect()),
            ip: caller.ip.map(|ip| ip.to_string()),
            methods,
        };
        let refresh = NewRefreshToken {
            jti: Uuid::new_v4(),
            user_id: user.id,
            family_id: session.id,
            parent_jti: None,
            issued_at: now,
            expires_at: session.expires_at,
        };
        let max_live = i64::from(self.0.settings.max_sessions);
        let evicted = match self
            .0
            .store
            .start_session(&session, &refresh, proof, max_live)
            .await?
        {
            Ok(evicted) => evicted,
            Err(SessionRefused::Disabled) => return Err(AuthError::AccountDisabled),
            Err(SessionRefused::ChallengeUsed) => return Err(AuthError::InvalidMfaToken),
            Err(SessionRefused::PasskeyUsed) => return Err(AuthError::PasskeySignInFailed),
            Err(SessionRefused::UserGone) if matches!(proof, SignInProof::Passkey(_)) => {
                tracing::info!("passkey sign-in refused: the account was deleted meanwhile");
                return Err(AuthError::PasskeySignInFailed);
            }
            Err(refused @ (SessionRefused::UserGone | SessionRefused::PasswordChanged)) => {
                tracing::info!(
                    reason = ?refused,
                    "login refused: the password changed or the account was deleted while it was checked"
                );
                return Err(AuthError::InvalidCredentials);
            }
        };
        for ended in evicted {
            self.0.revocations.session_ended(ended, user.id);
            audit::record(
                Event::SessionEvicted,
                Outcome::Success,
                Some(user.id),
                caller,
            );
        }
        let assurance = Assurance {
            methods,
            auth_time: now,
        };
        self.pair_for(&refresh.into(), user, now, assurance)
    }

    /// A new access token issued at `now` plus the (re-)signed refresh token of `row`, whose
    /// user is `user` and whose session's sign-in is `assurance`. `now` is the `last_used_at`
    /// the session recorded for this use (see [`Store::revoke_user_sessions`]), never a later
    /// reading of the clock.
    fn pair_for(
        &self,
        row: &RefreshTokenRow,
        user: &UserRow,
        now: DateTime<Utc>,
        assurance: Assurance,
    ) -> Result<TokenPair, AuthError> {
        let keys = &self.0.keys;
        let subject = Subject {
            user_id: row.user_id,
            email: &user.email,
            session: row.family_id,
            email_verified: user.email_verified_at.is_some(),
            assurance,
        };
        let access = keys.claims(
            TokenKind::Access,
            &subject,
            Uuid::new_v4(),
            now,
            now + self.0.settings.access_ttl,
        );
        let refresh = keys.claims(
            TokenKind::Refresh,
            &subject,
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

    /// `GET /auth/verify`: who an access token belongs to.
    ///
    /// # Errors
    /// `InvalidToken` (also for a deleted or disabled user), `Unavailable`, `Internal`.
    // DEBUG, like the request line: other services call this on every request they serve.
    #[tracing::instrument(level = "debug", skip_all, fields(user.id = tracing::field::Empty))]
    pub async fn verify_access(&self, token: &str) -> Result<VerifiedUser, AuthError> {
        let result = self.check_access(token).await;
        match &result {
            Ok(_) => self.0.verify_counters.record(VerifyResult::Valid),
            Err(AuthError::InvalidToken) => self.0.verify_counters.record(VerifyResult::Invalid),
            Err(_) => self.0.verify_counters.record(VerifyResult::Error),
        }
        result
    }

    async fn check_access(&self, token: &str) -> Result<VerifiedUser, AuthError> {
        let remembered = self.0.verified_access.get(token);
        let claims = match &remembered {
            Some(claims) => Arc::clone(claims),
            None => Arc::new(
                self.0
                    .keys
                    .decode(token, TokenKind::Access)
                    .map_err(|_| AuthError::InvalidToken)?,
            ),
        };
        self.0
            .keys
            .check_time(&claims, self.0.clock.now())
            .map_err(|_| AuthError::InvalidToken)?;
        let session = claims.sid.ok_or(AuthError::InvalidToken)?;
        tracing::Span::current().record("user.id", claims.user_id);
        let user = self
            .0
            .revocations
            .check(claims.user_id, session, claims.iat)
            .await?;
        // Remembered only once it verified in full, so a refused token takes no room.
        if remembered.is_none() {
            self.0
                .verified_access
                .insert(Arc::from(token), Arc::clone(&claims));
        }
        Ok(VerifiedUser {
            id: claims.user_id,
            email: Arc::clone(&user.email),
            email_verified: claims.email_verified.unwrap_or(true),
            session,
            aal: claims.aal(),
            amr: claims.methods(),
        })
    }

    /// Publishes the database pool's size and idle connections, and what verification
    /// remembers (`verify_cache_entries` by cache: verified tokens, users, sessions), as
    /// gauges.
    #[expect(
        clippy::cast_precision_loss,
        reason = "entry counts are far below 2^52"
    )]
    pub fn record_pool_metrics(&self) {
        let stats = self.0.store.pool_stats();
        metrics::gauge!("db_pool_connections").set(f64::from(stats.size));
        metrics::gauge!("db_pool_idle_connections").set(f64::from(stats.idle));
        let (users, sessions) = self.0.revocations.entries();
        let tokens = self.0.verified_access.len() as f64;
        metrics::gauge!("verify_cache_entries", "cache" => "tokens").set(tokens);
        metrics::gauge!("verify_cache_entries", "cache" => "users").set(users as f64);
        metrics::gauge!("verify_cache_entries", "cache" => "sessions").set(sessions as f64);
    }

    /// Whether the database answers (health checks).
    ///
    /// # Errors
    /// `Unavailable` or `Internal` when it does not.
    pub async fn ping(&self) -> Result<(), AuthError> {
        Ok(self.0.store.ping().await?)
    }
}

#[cfg(test)]
mod tests {
    use quick_cache::Weighter as _;

    use super::*;

    #[test]
    fn a_full_token_cache_stays_within_its_stated_bytes() {
        let cache = verified_access_cache();
        let email = format!("{}@example.com", "e".repeat(242));
        let entry = |n: i64| {
            let claims = Claims {
                sub: n.to_string(),
                user_id: n,
                kind: TokenKind::Access,
                iat: 0,
                exp: 900,
                jti: Uuid::new_v4(),
                sid: Some(Uuid::new_v4()),
                email: Some(email.clone()),
                email_verified: Some(true),
                nbf: None,
                iss: Some("auth-service".to_owned()),
                aud: None,
                acr: Some(Aal::Aal2),
                amr: Some(Methods::PASSWORD.with(crate::assurance::AuthMethod::Otp)),
                auth_time: Some(0),
            };
            (Arc::<str>::from(format!("{n:0>800}")), Arc::new(claims))
        };
        for n in 100_000..140_000 {
            let (token, claims) = entry(n);
            cache.insert(token, claims);
        }
        assert!(cache.weight() <= VERIFIED_ACCESS_BYTES);
        // What an entry holds: the cache's structures, the token's text and the claims (each
        // allocation with its 16-byte header), the claims' strings.
        let heap = 16 + 800 + 16 + size_of::<Claims>() + 6 + email.len() + "auth-service".len();
        let bytes = revocations::structure_bytes_per_entry(&cache) + heap;
        let (token, claims) = entry(100_000);
        let weighed = usize::try_from(TokenWeight.weight(&token, &claims)).unwrap();
        assert!(
            bytes <= weighed,
            "{bytes} bytes per token entry, weighed as {weighed}"
        );
    }
}
