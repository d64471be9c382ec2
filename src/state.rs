//! Application state: everything a request may need, built once from [`Config`].

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use axum::extract::FromRef;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::{
    clock::Clock,
    config::{Config, DatabaseConfig, DatabaseUrl, TokenConfig},
    passwords::Passwords,
    service::{
        AuthService, AuthSettings, lockout::LockoutPolicy, outbox::Outbox, recovery::MailSettings,
    },
    store::{self, PoolSettings, Store, StoreError},
    telemetry,
    tokens::{TokenKeys, TokenSettings},
};

/// The token settings of the `tokens` section, for [`TokenKeys::new`].
#[must_use]
pub fn token_settings(tokens: &TokenConfig) -> TokenSettings {
    TokenSettings {
        secret: tokens.secret.clone(),
        // With an asymmetric algorithm, HS256 only behind the migration switch, and never
        // with a generated secret (it signed nothing another process could check).
        accept_hs256: tokens.accept_hs256 && !tokens.secret_generated,
        algorithm: tokens.algorithm,
        keys: tokens.keys.clone(),
        issuer: tokens.issuer.clone(),
        audience: tokens.audience.clone(),
        leeway_seconds: tokens.leeway_seconds,
    }
}

/// How long a request waits for a pooled connection before answering 503.
///
/// PostgreSQL: one second, so an unreachable or refusing server is a 503 well before the 5 s
/// after which callers of `/auth/verify` commonly give up. SQLite: the file is local and
/// writers queue for its one write lock, so waiting longer is waiting for work, not an outage.
#[must_use]
pub fn acquire_timeout(url: &DatabaseUrl) -> Duration {
    if url.is_postgres() {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(5)
    }
}

/// Pool settings for `url` (the configured database, or another one for `copy-data`);
/// `create` says whether a missing SQLite file may be created.
#[must_use]
pub fn pool_settings(
    database: &DatabaseConfig,
    url: &DatabaseUrl,
    max_connections: u32,
    create: bool,
) -> PoolSettings {
    PoolSettings {
        max_connections,
        acquire_timeout: acquire_timeout(url),
        lock_timeout: database.lock_timeout,
        statement_timeout: database.statement_timeout,
        create_if_missing: create,
    }
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The database `DATABASE_URL` names could not be opened or did not answer within
    /// `DATABASE_CONNECT_TIMEOUT_SECONDS`. `main` exits with code 2.
    #[error("invalid DATABASE_URL")]
    Unreachable(#[source] StoreError),
    /// The database answered, but migrating it or reading it at start-up failed (nothing to do
    /// with the URL). `main` exits with code 2.
    #[error("the database failed at start-up")]
    Database(#[source] StoreError),
    /// `MIGRATE_ON_START=false` and the schema is not current. `main` exits with code 2.
    #[error(
        "the database schema is not current and MIGRATE_ON_START is false: run `auth-service migrate` first"
    )]
    SchemaNotCurrent,
    /// Anything else.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Shared state; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

struct AppInner {
    /// The validated configuration (secrets inside stay wrapped).
    config: Config,
    /// The only thing handlers call.
    auth: AuthService,
    /// The outbox worker, over `MAIL_URL`'s transport; started by `serve`.
    outbox: Arc<Outbox>,
    /// Renders `/metrics`.
    metrics: PrometheusHandle,
    /// Set on SIGTERM: `/health/ready` answers 503 from then on.
    draining: AtomicBool,
}

/// What the state is built for: it decides whether a missing SQLite file may be created and
/// whether migrations run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The server: creates a missing SQLite file; migrates when `MIGRATE_ON_START`.
    Serve,
    /// `auth-service migrate`: creates a missing SQLite file and always migrates.
    Migrate,
    /// Other admin commands: never create a database (a command run from the wrong directory
    /// must not act on a fresh empty file); migrate when `MIGRATE_ON_START`.
    Admin,
}

impl AppState {
    /// Connects (retrying), migrates, and assembles the service, for the server.
    ///
    /// # Errors
    /// As [`Self::build_for`].
    pub async fn build(config: Config, clock: Arc<dyn Clock>) -> Result<Self, StartupError> {
        Self::build_for(config, clock, Purpose::Serve).await
    }

    /// Connects (retrying), migrates or checks the schema, and assembles the service.
    ///
    /// # Errors
    /// `Database` when the database cannot be reached or migrated; `SchemaNotCurrent` when
    /// `MIGRATE_ON_START=false` and migrations are pending.
    pub async fn build_for(
        config: Config,
        clock: Arc<dyn Clock>,
        purpose: Purpose,
    ) -> Result<Self, StartupError> {
        // First, so every metric handle created below is bound to the Prometheus recorder.
        let metrics = telemetry::metrics_handle();
        let store = connect_with_retry(&config, purpose != Purpose::Admin).await?;
        if config.database.migrate_on_start || purpose == Purpose::Migrate {
            store.migrate().await.map_err(StartupError::Database)?;
            crate::service::rekey::rekey_emails(&*store, clock.now())
                .await
                .map_err(StartupError::Database)?;
        } else if !store
            .schema_is_current()
            .await
            .map_err(StartupError::Database)?
        {
            return Err(StartupError::SchemaNotCurrent);
        }
        let keys = TokenKeys::new(token_settings(&config.tokens))?;
        let passwords = Passwords::new(
            config.passwords.bcrypt_rounds,
            config.passwords.hash_max_queue,
        )?;
        let settings = AuthSettings {
            access_ttl: chrono::Duration::minutes(config.tokens.access_expire_minutes.into()),
            refresh_ttl: chrono::Duration::days(config.tokens.refresh_expire_days.into()),
            reuse_grace: chrono::Duration::seconds(config.tokens.reuse_grace_seconds.into()),
            lockout: LockoutPolicy {
                max_attempts: config.limits.login_max_attempts,
                window: chrono::Duration::minutes(config.limits.login_window_minutes.into()),
                lockout: chrono::Duration::minutes(config.limits.lockout_minutes.into()),
            },
            ip_lockout: (config.limits.login_max_failures_per_ip > 0).then(|| LockoutPolicy {
                max_attempts: config.limits.login_max_failures_per_ip,
                window: chrono::Duration::minutes(config.limits.login_window_minutes.into()),
                lockout: chrono::Duration::minutes(config.limits.lockout_minutes.into()),
            }),
            rotation: config.tokens.rotation,
            ipv6_prefix_length: config.limits.ipv6_prefix_length,
            max_sessions: config.limits.max_sessions_per_user,
            leeway: chrono::Duration::seconds(
                i64::try_from(config.tokens.leeway_seconds).unwrap_or(i64::MAX),
            ),
        };
        let feed_readers =
            crate::service::feed::FeedReaders::new(config.tokens.feed_tokens.clone());
        let mail = MailSettings {
            product: config.mail.product_name.clone(),
            reset_url: config.mail.password_reset_url.clone(),
            reset_minutes: config.mail.password_reset_token_minutes,
            max_retry: chrono::Duration::hours(config.mail.max_retry_hours.into()),
            verification: config.mail.email_verification,
            verify_url: config.mail.email_verify_url.clone(),
            verify_hours: config.mail.email_verify_token_hours,
        };
        let outbox = Arc::new(Outbox::new(&config.mail)?);
        let auth = AuthService::new(store, keys, passwords, clock, settings, feed_readers, mail);
        Ok(Self(Arc::new(AppInner {
            config,
            auth,
            outbox,
            metrics,
            draining: AtomicBool::new(false),
        })))
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.0.config
    }

    /// The outbox worker (not running until started).
    #[must_use]
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.0.outbox
    }

    /// The auth service.
    #[must_use]
    pub fn auth(&self) -> &AuthService {
        &self.0.auth
    }

    /// The Prometheus handle.
    #[must_use]
    pub fn metrics(&self) -> &PrometheusHandle {
        &self.0.metrics
    }

    /// Whether shutdown has begun.
    #[must_use]
    pub fn is_draining(&self) -> bool {
        self.0.draining.load(Ordering::SeqCst)
    }

    /// Resolves when `shutdown` does, after flipping readiness to 503 and holding the listener
    /// open for `SHUTDOWN_DRAIN_SECONDS` so load balancers notice first.
    pub async fn drain_on(self, shutdown: impl Future<Output = ()>) {
        shutdown.await;
        self.0.draining.store(true, Ordering::SeqCst);
        tracing::info!(
            drain_seconds = self.0.config.server.shutdown_drain.as_secs(),
            "shutting down: draining"
        );
        tokio::time::sleep(self.0.config.server.shutdown_drain).await;
    }
}

impl FromRef<AppState> for AuthService {
    fn from_ref(state: &AppState) -> Self {
        state.0.auth.clone()
    }
}

/// Connects to the database, retrying a PostgreSQL server that is not up yet with backoff for
/// up to `DATABASE_CONNECT_TIMEOUT_SECONDS`, so a pod that starts first does not crash-loop.
async fn connect_with_retry(config: &Config, create: bool) -> Result<Arc<dyn Store>, StartupError> {
    let settings = pool_settings(
        &config.database,
        &config.database.url,
        config.database.max_connections,
        create,
    );
    let started = Instant::now();
    let mut backoff = Duration::from_millis(100);
    loop {
        match store::connect(&config.database.url, settings).await {
            Ok(store) => return Ok(store),
            Err(StoreError::Unavailable(err))
                if config.database.url.is_postgres()
                    && started.elapsed() + backoff < config.database.connect_timeout =>
            {
                tracing::warn!(error = %err, retry_in_ms = backoff.as_millis(), "database not reachable yet");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(err) => return Err(StartupError::Unreachable(err)),
        }
    }
}
