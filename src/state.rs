//! Application state: everything a request may need, built once from [`Config`], and the
//! typed settings of each part (HTTP, the accept loop, the process): this module is where the
//! configuration is read; the parts read their settings from the state.

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
    client_address::ClientAddresses,
    clock::Clock,
    config::{Config, CorsOrigins, DatabaseConfig, DatabaseUrl, JwtAlgorithm, TokenConfig},
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
    /// The HTTP layer's settings.
    http: HttpSettings,
    /// The accept loop's settings.
    server: ServerSettings,
    /// What `serve` starts besides the server.
    process: ProcessSettings,
    /// The only thing handlers call.
    auth: AuthService,
    /// The outbox worker, over `MAIL_URL`'s transport; started by `serve`.
    outbox: Arc<Outbox>,
    /// Renders `/metrics`.
    metrics: PrometheusHandle,
    /// Set on SIGTERM: `/health/ready` answers 503 from then on.
    draining: AtomicBool,
}

/// What the HTTP layer is configured with.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// `CORS_ORIGINS`.
    pub cors: CorsOrigins,
    /// `REQUEST_TIMEOUT_SECONDS`: the whole-request timeout of body-reading routes.
    pub request_timeout: std::time::Duration,
    /// `/metrics` is served here (no `METRICS_ADDR`).
    pub metrics_here: bool,
    /// `REVOCATION_FEED_TOKENS` names readers: the feed route exists.
    pub feed_on: bool,
    /// The per-IP limiter.
    pub rate_limit: RateLimit,
    /// Who the client is.
    pub clients: ClientAddresses,
    /// `MAIL_PRODUCT_NAME`: the name the hosted pages carry.
    pub product: String,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` is set: request spans continue their callers' traces.
    pub traces: bool,
}

/// `RATE_LIMIT_PER_SECOND` and `RATE_LIMIT_BURST`.
#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    /// Tokens added per second.
    pub per_second: u32,
    /// The bucket's size.
    pub burst: u32,
}

/// What the accept loop is configured with.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// `HEADER_READ_TIMEOUT_SECONDS`.
    pub header_read_timeout: Duration,
    /// `IDLE_TIMEOUT_SECONDS`.
    pub idle_timeout: Duration,
    /// `MAX_CONNECTIONS`.
    pub max_connections: usize,
    /// `MAX_CONNECTIONS_PER_IP`.
    pub max_connections_per_ip: usize,
    /// Who the peer is (trusted proxies are exempt from the per-peer cap).
    pub clients: ClientAddresses,
}

/// What `serve` starts besides the server, and how it stops.
#[derive(Debug, Clone)]
pub struct ProcessSettings {
    /// `METRICS_ADDR`: `/metrics` on a listener of its own.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// The hourly WARN while `JWT_ACCEPT_HS256` keeps the migration fallback on.
    pub hs256_reminder: bool,
    /// `SHUTDOWN_DRAIN_SECONDS`.
    pub shutdown_drain: Duration,
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
        let outbox = Arc::new(Outbox::new(&config.mail, &config.webhooks)?);
        let auth = AuthService::new(
            store,
            keys,
            passwords,
            clock,
            settings,
            feed_readers,
            mail,
            config.data_keys.keys(),
            crate::service::passkeys::RelyingParty::new(&config.passkeys)
                .map_err(|err| StartupError::Other(anyhow::anyhow!(err)))?,
        );
        let clients = ClientAddresses::new(
            config.limits.trusted_proxies.clone(),
            config.limits.ipv6_prefix_length,
        );
        let http = HttpSettings {
            cors: config.server.cors_origins.clone(),
            request_timeout: config.server.request_timeout,
            metrics_here: config.server.metrics_addr.is_none(),
            feed_on: !config.tokens.feed_tokens.is_empty(),
            rate_limit: RateLimit {
                per_second: config.limits.rate_limit_per_second,
                burst: config.limits.rate_limit_burst,
            },
            clients: clients.clone(),
            product: config.mail.product_name.clone(),
            traces: config.traces.export.is_some(),
        };
        let server = ServerSettings {
            header_read_timeout: config.server.header_read_timeout,
            idle_timeout: config.server.idle_timeout,
            max_connections: config.server.max_connections,
            max_connections_per_ip: config.server.max_connections_per_ip,
            clients,
        };
        let process = ProcessSettings {
            metrics_addr: config.server.metrics_addr,
            hs256_reminder: config.tokens.accept_hs256
                && !config.tokens.secret_generated
                && matches!(config.tokens.algorithm, JwtAlgorithm::Asymmetric(_)),
            shutdown_drain: config.server.shutdown_drain,
        };
        Ok(Self(Arc::new(AppInner {
            http,
            server,
            process,
            auth,
            outbox,
            metrics,
            draining: AtomicBool::new(false),
        })))
    }

    /// The HTTP layer's settings.
    #[must_use]
    pub fn http(&self) -> &HttpSettings {
        &self.0.http
    }

    /// The accept loop's settings.
    #[must_use]
    pub fn server(&self) -> &ServerSettings {
        &self.0.server
    }

    /// What `serve` starts besides the server.
    #[must_use]
    pub fn process(&self) -> &ProcessSettings {
        &self.0.process
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
            drain_seconds = self.0.process.shutdown_drain.as_secs(),
            "shutting down: draining"
        );
        tokio::time::sleep(self.0.process.shutdown_drain).await;
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
        match store::connect(
            &config.database.url,
            settings,
            config.webhooks.subscriptions(),
        )
        .await
        {
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// The modules that may read [`Config`](crate::config::Config) as a whole: where it is
    /// parsed, where it is turned into each part's settings, and the commands that start them.
    const READERS: [&str; 5] = ["config.rs", "state.rs", "cli.rs", "lib.rs", "main.rs"];

    /// Every `use` statement of `source`, on one line each.
    fn use_statements(source: &str) -> Vec<String> {
        let mut statements = Vec::new();
        let mut current: Option<String> = None;
        for line in source.lines().map(str::trim) {
            if current.is_none() && (line.starts_with("use ") || line.starts_with("pub use ")) {
                current = Some(String::new());
            }
            if let Some(statement) = current.as_mut() {
                statement.push_str(line);
                statement.push(' ');
                if line.ends_with(';') {
                    statements.extend(current.take());
                }
            }
        }
        statements
    }

    fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// Every other part gets typed settings from the state, never the whole configuration:
    /// no `use` line outside [`READERS`] names `Config`.
    #[test]
    fn only_the_state_and_the_commands_read_the_configuration() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        assert!(files.len() > 40, "{} files", files.len());
        for file in files {
            let relative = file
                .strip_prefix(&src)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if READERS.contains(&relative.as_str()) {
                continue;
            }
            let source = std::fs::read_to_string(&file).unwrap();
            for statement in use_statements(&source) {
                let names_config = statement
                    .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .any(|word| word == "Config");
                assert!(
                    !(names_config && statement.contains("config")),
                    "{relative} reads the whole configuration: {statement}"
                );
            }
        }
    }
}
