//! Local verification of auth-service access tokens, for other Rust services.
//!
//! A [`Verifier`] checks a token without calling auth-service per request, and still refuses a
//! logged-out session within about a second:
//!
//! - it fetches and caches auth-service's public keys (`/.well-known/jwks.json`), refetching on
//!   an unknown `kid` at most once per [`VerifierConfig::jwks_refetch_every`], and every five
//!   minutes anyway;
//! - it verifies with the algorithm pinned to the key's (a token naming another algorithm, an
//!   unknown `kid`, or a `jku`, `x5u` or `jwk` header is refused), checks `iss`, `aud`, `exp`
//!   with a leeway, and that it is an access token with a session;
//! - it follows the revocation feed (`/auth/revocations`, long-polling) in the background and
//!   refuses tokens of revoked sessions and of users logged out everywhere, disabled or
//!   deleted.
//!
//! Failure modes are explicit: until the first keys and the first feed page have arrived,
//! every verification is [`VerifyError::Unavailable`] (a 503, never a silent accept); if the
//! feed is lost later, tokens keep verifying for [`VerifierConfig::feed_grace`] (30 s) and
//! then become unavailable, so a revoked session is never accepted for long.
//!
//! [`RequireAuthLayer`] is a tower layer that answers 401/503 in auth-service's error shape and
//! hands the [`VerifiedUser`] to the handler, which takes it with the [`Authenticated`] axum
//! extractor. This crate knows nothing of auth-service's database or server.

pub mod claims;
mod layer;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError, RwLock, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use jsonwebtoken::{Algorithm, DecodingKey, Validation, jwk::JwkSet};
use uuid::Uuid;

pub use self::{
    claims::{Aal, AuthMethod, AuthMethods, Claims, RevocationPage, TokenKind, VerifiedUser},
    layer::{Authenticated, RequireAuth, RequireAuthLayer},
};

/// How a [`Verifier`] reaches auth-service and how strict it is.
#[derive(Clone)]
pub struct VerifierConfig {
    /// auth-service's base URL, e.g. `http://auth-service:8001`.
    pub auth_url: String,
    /// One of auth-service's `REVOCATION_FEED_TOKENS`.
    pub feed_token: String,
    /// The `iss` tokens must carry (auth-service's `JWT_ISSUER`, default `auth-service`).
    pub issuer: String,
    /// The `aud` tokens must carry, when auth-service sets `JWT_AUDIENCE`.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `iat` (auth-service's default: 30 s).
    pub leeway: Duration,
    /// How long tokens keep verifying after the feed was last read (default 30 s).
    pub feed_grace: Duration,
    /// The longest an access token lives (auth-service's `ACCESS_TOKEN_EXPIRE_MINUTES`, plus
    /// the leeway): how long a user-wide cut-off is remembered (default 24 h).
    pub max_token_lifetime: Duration,
    /// The least time between two JWKS fetches caused by unknown `kid`s (default 5 s).
    pub jwks_refetch_every: Duration,
}

impl VerifierConfig {
    /// A configuration with the defaults above.
    #[must_use]
    pub fn new(auth_url: impl Into<String>, feed_token: impl Into<String>) -> Self {
        Self {
            auth_url: auth_url.into().trim_end_matches('/').to_owned(),
            feed_token: feed_token.into(),
            issuer: "auth-service".to_owned(),
            audience: None,
            leeway: Duration::from_secs(30),
            feed_grace: Duration::from_secs(30),
            max_token_lifetime: Duration::from_secs(24 * 3600),
            jwks_refetch_every: Duration::from_secs(5),
        }
    }
}

impl std::fmt::Debug for VerifierConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifierConfig")
            .field("auth_url", &self.auth_url)
            .field("feed_token", &"[redacted]")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

/// Why a token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// No bearer token: 401 `MISSING_TOKEN`.
    #[error("Authorization header missing")]
    Missing,
    /// A token that does not verify or was revoked: 401 `INVALID_TOKEN`.
    #[error("Invalid or expired token")]
    Invalid,
    /// The verifier cannot vouch for any token right now (keys or feed not synced, or the feed
    /// lost for longer than the grace): 503 `SERVICE_UNAVAILABLE`.
    #[error("Service temporarily unavailable")]
    Unavailable,
}

/// Verifies access tokens locally; cheap to clone, shared by every request.
#[derive(Clone)]
pub struct Verifier(Arc<Inner>);

struct Inner {
    config: VerifierConfig,
    http: reqwest::Client,
    /// `kid` -> the key and the one algorithm it may be used with.
    keys: RwLock<HashMap<String, (DecodingKey, Algorithm)>>,
    last_jwks_fetch: Mutex<Option<Instant>>,
    /// Revoked sessions -> when they may be forgotten (unix seconds).
    sessions: RwLock<HashMap<Uuid, i64>>,
    /// Users -> `not_before` (unix seconds).
    users: RwLock<HashMap<i64, i64>>,
    /// When the feed last answered; `None` until it first did.
    feed_ok_at: Mutex<Option<Instant>>,
    /// Tokens whose signature and claims already checked out -> the key generation they were
    /// checked under and their claims, so a token presented again skips the signature (expiry
    /// and revocation are checked on every use). quick_cache rather than moka: with many
    /// distinct tokens most calls insert, and its inserts cost a fraction of moka's.
    verified: quick_cache::sync::Cache<Arc<str>, (u64, Arc<Claims>)>,
    /// Bumped whenever the published keys change: a remembered check of another generation
    /// counts for nothing, even one that finished after the change.
    key_generation: AtomicU64,
    /// Every time the verifier reads: expiry, the feed's grace, the JWKS refetch limit.
    clock: Clock,
}

/// Time as the verifier sees it: the system's, moved forward by hand in unit tests (the
/// offset stays zero otherwise).
#[derive(Debug, Default)]
struct Clock {
    offset: Mutex<Duration>,
}

impl Clock {
    /// Now, for measuring intervals.
    fn instant(&self) -> Instant {
        Instant::now() + *lock(&self.offset)
    }

    /// Now, in seconds since the epoch, for token claims.
    fn unix(&self) -> i64 {
        (SystemTime::now() + *lock(&self.offset))
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
    }

    /// How long ago `at` was.
    fn since(&self, at: Instant) -> Duration {
        self.instant().saturating_duration_since(at)
    }

    #[cfg(test)]
    fn advance(&self, by: Duration) {
        *lock(&self.offset) += by;
    }
}

/// Signature checks remembered at most (a few MiB).
const VERIFIED_CACHE_ENTRIES: usize = 10_000;

impl Verifier {
    /// Creates the verifier and starts syncing in the background (a tokio runtime must be
    /// running). It answers [`VerifyError::Unavailable`] until the first sync.
    #[must_use]
    pub fn start(config: VerifierConfig) -> Self {
        let verifier = Self::unsynced(config);
        tokio::spawn(sync_loop(Arc::downgrade(&verifier.0)));
        verifier
    }

    /// The verifier before anything was fetched, with no background task.
    fn unsynced(config: VerifierConfig) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .build()
            .unwrap_or_default();
        Self(Arc::new(Inner {
            config,
            http,
            keys: RwLock::default(),
            last_jwks_fetch: Mutex::default(),
            sessions: RwLock::default(),
            users: RwLock::default(),
            feed_ok_at: Mutex::default(),
            verified: quick_cache::sync::Cache::new(VERIFIED_CACHE_ENTRIES),
            key_generation: AtomicU64::new(0),
            clock: Clock::default(),
        }))
    }

    /// Whether keys and the revocation feed are current enough to vouch for tokens.
    #[must_use]
    pub fn is_ready(&self) -> bool {
        let fed = lock(&self.0.feed_ok_at)
            .is_some_and(|at| self.0.clock.since(at) <= self.0.config.feed_grace);
        fed && !read(&self.0.keys).is_empty()
    }

    /// Verifies an access token.
    ///
    /// # Errors
    /// [`VerifyError::Invalid`] for a token that does not verify or was revoked;
    /// [`VerifyError::Unavailable`] when the verifier cannot vouch for tokens right now.
    pub async fn verify(&self, token: &str) -> Result<VerifiedUser, VerifyError> {
        if !self.is_ready() {
            return Err(VerifyError::Unavailable);
        }
        if token.len() > claims::MAX_TOKEN_BYTES {
            return Err(VerifyError::Invalid);
        }
        let generation = self.0.key_generation.load(Ordering::Acquire);
        let claims = match self.0.verified.get(token) {
            Some((checked_under, claims)) if checked_under == generation => claims,
            _ => {
                let claims = Arc::new(self.check_signature(token).await?);
                self.0
                    .verified
                    .insert(Arc::from(token), (generation, Arc::clone(&claims)));
                claims
            }
        };
        let config = &self.0.config;
        let leeway = i64::try_from(config.leeway.as_secs()).unwrap_or(i64::MAX);
        if claims.exp.saturating_add(leeway) < self.0.clock.unix() {
            return Err(VerifyError::Invalid);
        }
        let session = claims.sid.ok_or(VerifyError::Invalid)?;
        if read(&self.0.sessions).contains_key(&session)
            || read(&self.0.users)
                .get(&claims.user_id)
                .is_some_and(|not_before| claims.iat < *not_before)
        {
            return Err(VerifyError::Invalid);
        }
        Ok(VerifiedUser {
            user_id: claims.user_id,
            email: claims.email.clone().ok_or(VerifyError::Invalid)?,
            email_verified: claims.email_verified.unwrap_or(true),
            aal: claims.aal(),
            amr: claims.methods(),
        })
    }

    /// The signature, header and claims checks: the expensive part, done once per token.
    async fn check_signature(&self, token: &str) -> Result<Claims, VerifyError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| VerifyError::Invalid)?;
        if header.jku.is_some()
            || header.x5u.is_some()
            || header.jwk.is_some()
            || header.crit.is_some()
            || header.typ.as_deref() != Some("JWT")
        {
            return Err(VerifyError::Invalid);
        }
        let kid = header.kid.ok_or(VerifyError::Invalid)?;
        let (key, algorithm) = self.key(&kid).await.ok_or(VerifyError::Invalid)?;
        if header.alg != algorithm {
            return Err(VerifyError::Invalid);
        }
        let config = &self.0.config;
        let mut validation = Validation::new(algorithm);
        validation.leeway = config.leeway.as_secs();
        validation.set_issuer(&[&config.issuer]);
        match &config.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        // `exp` must be there, but is checked on every use against the verifier's clock (a
        // remembered token expires too), not here against the system's.
        validation.validate_exp = false;
        let claims = jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .map_err(|_| VerifyError::Invalid)?
            .claims;
        let leeway = i64::try_from(config.leeway.as_secs()).unwrap_or(i64::MAX);
        if claims.kind != TokenKind::Access
            || claims.sub != claims.user_id.to_string()
            || claims.iat > self.0.clock.unix().saturating_add(leeway)
        {
            return Err(VerifyError::Invalid);
        }
        Ok(claims)
    }

    /// The key for `kid`, refetching the JWKS (at most once per `jwks_refetch_every`) when it
    /// is unknown.
    async fn key(&self, kid: &str) -> Option<(DecodingKey, Algorithm)> {
        if let Some(found) = read(&self.0.keys).get(kid) {
            return Some(found.clone());
        }
        let due = lock(&self.0.last_jwks_fetch)
            .is_none_or(|at| self.0.clock.since(at) >= self.0.config.jwks_refetch_every);
        if due {
            let _ = fetch_jwks(&self.0).await;
        }
        read(&self.0.keys).get(kid).cloned()
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

fn lock<T>(lock: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    lock.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Fetches the JWKS and replaces the cached keys with it.
async fn fetch_jwks(inner: &Inner) -> Result<(), reqwest::Error> {
    *lock(&inner.last_jwks_fetch) = Some(inner.clock.instant());
    let url = format!("{}/.well-known/jwks.json", inner.config.auth_url);
    let set: JwkSet = serde_json::from_slice(
        &inner
            .http
            .get(url)
            .timeout(Duration::from_secs(5))
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?,
    )
    .unwrap_or_default();
    let keys: HashMap<String, (DecodingKey, Algorithm)> = set
        .keys
        .iter()
        .filter_map(|jwk| {
            let kid = jwk.common.key_id.clone()?;
            let algorithm = Algorithm::try_from(jwk.common.key_algorithm?).ok()?;
            let key = DecodingKey::from_jwk(jwk).ok()?;
            Some((kid, (key, algorithm)))
        })
        .collect();
    if !keys.is_empty() {
        let mut current = write(&inner.keys);
        let changed =
            current.len() != keys.len() || keys.keys().any(|kid| !current.contains_key(kid));
        *current = keys;
        drop(current);
        if changed {
            // A withdrawn key's tokens must not verify from memory.
            inner.key_generation.fetch_add(1, Ordering::AcqRel);
            inner.verified.clear();
        }
    }
    Ok(())
}

/// Reads one page of the revocation feed, holding the request for up to `wait`.
async fn fetch_feed(
    inner: &Inner,
    since: Option<&str>,
    wait: Duration,
) -> Result<RevocationPage, reqwest::Error> {
    let mut url = format!(
        "{}/auth/revocations?wait={}",
        inner.config.auth_url,
        wait.as_secs()
    );
    if let Some(since) = since {
        url.push_str("&since=");
        url.push_str(since);
    }
    inner
        .http
        .get(url)
        .bearer_auth(&inner.config.feed_token)
        .timeout(wait + Duration::from_secs(10))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await
}

/// Applies a feed page: a reset replaces everything, anything else adds to it; entries past
/// their time are forgotten.
fn apply(inner: &Inner, page: &RevocationPage) {
    let now = inner.clock.unix();
    let forget_users_before =
        now - i64::try_from(inner.config.max_token_lifetime.as_secs()).unwrap_or(i64::MAX);
    let mut sessions = write(&inner.sessions);
    let mut users = write(&inner.users);
    if page.reset {
        sessions.clear();
        users.clear();
    }
    for session in &page.sessions {
        sessions.insert(session.sid, session.exp);
    }
    for user in &page.users {
        let entry = users.entry(user.user_id).or_insert(user.not_before);
        *entry = (*entry).max(user.not_before);
    }
    sessions.retain(|_, exp| *exp >= now);
    users.retain(|_, not_before| *not_before >= forget_users_before);
}

/// Keeps keys and revocations current until the verifier is dropped.
async fn sync_loop(verifier: Weak<Inner>) {
    let mut cursor: Option<String> = None;
    let mut last_keys = Instant::now();
    loop {
        let Some(inner) = verifier.upgrade() else {
            return;
        };
        let keys_due =
            read(&inner.keys).is_empty() || last_keys.elapsed() >= Duration::from_secs(300);
        if keys_due && fetch_jwks(&inner).await.is_ok() {
            last_keys = Instant::now();
        }
        // Long-poll, short enough that a healthy feed always answers within the grace.
        let wait = if lock(&inner.feed_ok_at).is_some() {
            (inner.config.feed_grace / 2).min(Duration::from_secs(25))
        } else {
            Duration::ZERO
        };
        match fetch_feed(&inner, cursor.as_deref(), wait).await {
            Ok(page) => {
                apply(&inner, &page);
                cursor = Some(page.cursor.clone());
                *lock(&inner.feed_ok_at) = Some(inner.clock.instant());
            }
            Err(err) => {
                tracing::debug!(error = %err, "revocation feed not reachable; retrying");
                drop(inner);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header, encode};

    use super::*;
    use crate::claims::{RevokedSession, RevokedUser};

    const SECRET: &[u8] = b"unit-test-secret-unit-test-secret!";
    const KID: &str = "k1";

    /// A verifier that holds one HS256 key under [`KID`] and has just read the feed; its
    /// auth-service URL refuses connections, so a JWKS refetch fails at once.
    fn synced() -> Verifier {
        let verifier = Verifier::unsynced(VerifierConfig::new("http://127.0.0.1:9", "feed"));
        write(&verifier.0.keys).insert(
            KID.to_owned(),
            (DecodingKey::from_secret(SECRET).unwrap(), Algorithm::HS256),
        );
        *lock(&verifier.0.feed_ok_at) = Some(verifier.0.clock.instant());
        verifier
    }

    fn claims(verifier: &Verifier) -> Claims {
        let now = verifier.0.clock.unix();
        Claims {
            sub: "7".to_owned(),
            user_id: 7,
            kind: TokenKind::Access,
            iat: now,
            exp: now + 900,
            jti: Uuid::new_v4(),
            sid: Some(Uuid::new_v4()),
            email: Some("u@example.com".to_owned()),
            email_verified: Some(false),
            nbf: None,
            iss: Some("auth-service".to_owned()),
            aud: None,
            acr: None,
            amr: None,
            auth_time: None,
        }
    }

    fn sign(claims: &Claims, algorithm: Algorithm, kid: &str) -> String {
        let mut header = Header::new(algorithm);
        header.kid = Some(kid.to_owned());
        encode(&header, claims, &EncodingKey::from_secret(SECRET).unwrap()).unwrap()
    }

    #[tokio::test]
    async fn a_good_token_verifies_and_claims_that_do_not_fit_are_refused() {
        let verifier = synced();
        let good = claims(&verifier);
        assert_eq!(
            verifier.verify(&sign(&good, Algorithm::HS256, KID)).await,
            Ok(VerifiedUser {
                user_id: 7,
                email: "u@example.com".to_owned(),
                email_verified: false,
                aal: Aal::Aal1,
                amr: AuthMethods::PASSWORD,
            })
        );
        // A second factor's sign-in says so; a method this version does not know is kept as
        // `Other` and refuses nothing.
        let stepped_up = Claims {
            acr: Some(Aal::Aal2),
            amr: Some(AuthMethods::PASSWORD.with(AuthMethod::Otp)),
            auth_time: Some(good.iat),
            ..good.clone()
        };
        let user = verifier
            .verify(&sign(&stepped_up, Algorithm::HS256, KID))
            .await
            .unwrap();
        assert_eq!(
            (user.aal, user.amr),
            (
                Aal::Aal2,
                AuthMethods::of(&[AuthMethod::Otp, AuthMethod::Pwd])
            )
        );
        let newer: Claims = serde_json::from_value(serde_json::json!({
            "sub": "7", "user_id": 7, "type": "access", "iat": 1, "exp": 2,
            "jti": Uuid::nil(), "amr": ["pwd", "swk"], "acr": "aal3"
        }))
        .unwrap();
        assert_eq!(
            newer.methods().iter().collect::<Vec<_>>(),
            [AuthMethod::Pwd, AuthMethod::Other]
        );
        assert_eq!(newer.aal(), Aal::Aal1);
        // Tokens from before email verification existed carry no claim: verified.
        let older = Claims {
            email_verified: None,
            ..good.clone()
        };
        assert_eq!(
            verifier
                .verify(&sign(&older, Algorithm::HS256, KID))
                .await
                .map(|user| user.email_verified),
            Ok(true)
        );
        let refused = [
            Claims {
                kind: TokenKind::Refresh,
                ..good.clone()
            },
            Claims {
                sid: None,
                ..good.clone()
            },
            Claims {
                iss: Some("someone-else".to_owned()),
                ..good.clone()
            },
            Claims {
                sub: "8".to_owned(),
                ..good.clone()
            },
            Claims {
                email: None,
                ..good.clone()
            },
            Claims {
                iat: good.iat + 3600,
                ..good.clone()
            },
        ];
        for bad in refused {
            assert_eq!(
                verifier.verify(&sign(&bad, Algorithm::HS256, KID)).await,
                Err(VerifyError::Invalid),
                "{bad:?}"
            );
        }
    }

    #[tokio::test]
    async fn the_algorithm_is_pinned_to_the_key() {
        let verifier = synced();
        let token = sign(&claims(&verifier), Algorithm::HS384, KID);
        assert_eq!(verifier.verify(&token).await, Err(VerifyError::Invalid));
    }

    #[tokio::test]
    async fn a_remembered_token_still_expires_on_the_clock() {
        let verifier = synced();
        let token = sign(&claims(&verifier), Algorithm::HS256, KID);
        assert!(verifier.verify(&token).await.is_ok());
        // The feed keeps answering meanwhile.
        let fed = || *lock(&verifier.0.feed_ok_at) = Some(verifier.0.clock.instant());
        verifier.0.clock.advance(Duration::from_secs(900 + 20));
        fed();
        assert!(verifier.verify(&token).await.is_ok(), "within the leeway");
        verifier.0.clock.advance(Duration::from_secs(11));
        fed();
        assert_eq!(verifier.verify(&token).await, Err(VerifyError::Invalid));
    }

    #[tokio::test]
    async fn an_unknown_kid_refetches_the_keys_at_most_once_per_interval() {
        let verifier = synced();
        let token = sign(&claims(&verifier), Algorithm::HS256, "unknown");
        let last_fetch = || *lock(&verifier.0.last_jwks_fetch);
        assert_eq!(last_fetch(), None);
        // Act: the first unknown kid fetches (and fails: nothing listens there).
        assert_eq!(verifier.verify(&token).await, Err(VerifyError::Invalid));
        let first = last_fetch().unwrap();
        // Within the interval, no second fetch however many tokens arrive.
        verifier.0.clock.advance(Duration::from_secs(4));
        for _ in 0..10 {
            assert_eq!(verifier.verify(&token).await, Err(VerifyError::Invalid));
        }
        assert_eq!(last_fetch(), Some(first));
        // After it, one more.
        verifier.0.clock.advance(Duration::from_secs(1));
        assert_eq!(verifier.verify(&token).await, Err(VerifyError::Invalid));
        assert!(last_fetch().unwrap() >= first + Duration::from_secs(5));
    }

    #[tokio::test]
    async fn tokens_stop_verifying_once_the_feed_is_lost_for_longer_than_the_grace() {
        let verifier = synced();
        let token = sign(&claims(&verifier), Algorithm::HS256, KID);
        verifier.0.clock.advance(Duration::from_secs(29));
        assert!(verifier.verify(&token).await.is_ok(), "within the grace");
        verifier.0.clock.advance(Duration::from_secs(2));
        assert_eq!(verifier.verify(&token).await, Err(VerifyError::Unavailable));
        assert!(!verifier.is_ready());
    }

    #[tokio::test]
    async fn feed_entries_refuse_revoked_sessions_and_older_tokens_of_a_user() {
        let verifier = synced();
        let live = claims(&verifier);
        let revoked = claims(&verifier);
        let older = Claims {
            user_id: 9,
            sub: "9".to_owned(),
            ..claims(&verifier)
        };
        let now = verifier.0.clock.unix();
        apply(
            &verifier.0,
            &RevocationPage {
                cursor: "1".to_owned(),
                reset: false,
                sessions: vec![RevokedSession {
                    sid: revoked.sid.unwrap(),
                    exp: now + 900,
                }],
                users: vec![RevokedUser {
                    user_id: 9,
                    not_before: now + 1,
                }],
            },
        );
        let verify = |c: &Claims| {
            let token = sign(c, Algorithm::HS256, KID);
            let verifier = verifier.clone();
            async move { verifier.verify(&token).await }
        };
        assert!(verify(&live).await.is_ok());
        assert_eq!(verify(&revoked).await, Err(VerifyError::Invalid));
        assert_eq!(verify(&older).await, Err(VerifyError::Invalid));
        // A reset page replaces the set: the session is no longer listed.
        apply(
            &verifier.0,
            &RevocationPage {
                cursor: "2".to_owned(),
                reset: true,
                ..RevocationPage::default()
            },
        );
        assert!(verify(&revoked).await.is_ok());
    }

    #[tokio::test]
    async fn nothing_verifies_before_the_first_sync() {
        let verifier = Verifier::unsynced(VerifierConfig::new("http://127.0.0.1:9", "feed"));
        assert_eq!(
            verifier.verify("x.y.z").await,
            Err(VerifyError::Unavailable)
        );
        assert!(!verifier.is_ready());
    }
}
