//! auth-service: a JWT authentication service, a Rust port of the Project Zero App
//! authentication service, on SQLite or PostgreSQL.
//!
//! # Layout
//!
//! A request flows one way: `http` -> `service` -> `store`.
//!
//! - [`cli`]: the command line (the server and the operator's commands).
//! - [`config`]: every environment variable, parsed and validated before anything binds.
//! - [`state`]: [`state::AppState`], built once from the configuration, and the typed settings
//!   it hands each part (the one reader of [`config::Config`] besides the commands).
//! - [`http`]: the areas' routes with their OpenAPI paths, extractors and middleware, and
//!   [`http::errors::ApiError`], the one error that becomes a response; handlers call the
//!   service only.
//! - [`service`]: the auth rules (registration, login lockout, rotation); no HTTP.
//! - [`store`]: [`store::Store`], eight chapter traits written once for SQLite and PostgreSQL;
//!   all SQL.
//! - [`tokens`], [`passwords`]: JWTs and bcrypt.
//! - [`server`]: the accept loop (header read timeout, connection cap, graceful shutdown).
//! - [`background`]: the background tasks, started and stopped together.
//! - [`clock`]: injected time, so tests cross expiry and lockout without sleeping.
//! - [`telemetry`]: logs and the Prometheus recorder.
//! - [`mail_transport`]: the messages and the SMTP or log transport.
//! - [`client_address`]: who the client is (trusted proxies, IPv6 prefix).
//! - [`error_chain`], [`database_url`], [`keys`], [`assurance`], [`data_keys`]: leaves every
//!   layer may use.

pub mod assurance;
pub mod background;
pub mod cli;
pub mod client_address;
pub mod clock;
pub mod config;
pub mod data_keys;
pub mod database_url;
pub mod error_chain;
pub mod http;
pub mod keys;
pub mod mail_transport;
pub mod outbound;
pub mod password_formats;
pub mod passwords;
pub mod server;
pub mod service;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod tokens;

use std::sync::Arc;

use tokio::net::TcpListener;

use crate::{
    background::Background,
    clock::{Clock, SystemClock},
    config::Config,
    state::{AppState, StartupError},
};

/// Runs the service on an already bound listener until `shutdown` resolves and in-flight
/// requests have finished. This is what `main` and every test call.
///
/// # Errors
/// [`StartupError::Unreachable`] when the database cannot be reached, `Database` when it cannot
/// be migrated or read; `Other` when serving fails.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartupError> {
    run_with_clock(config, Arc::new(SystemClock), listener, shutdown).await
}

/// [`run`] with an injected clock (tests).
///
/// # Errors
/// As [`run`].
pub async fn run_with_clock(
    config: Config,
    clock: Arc<dyn Clock>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartupError> {
    let state = AppState::build(config, clock).await?;
    serve(state, listener, shutdown).await
}

/// `JWT_ACCEPT_HS256=on` with an asymmetric algorithm is a migration fallback, easy to leave on
/// by mistake: a WARN at start and once an hour while it is (a [`Background`] task).
async fn hs256_reminder() {
    {
        let mut hourly = tokio::time::interval(std::time::Duration::from_secs(3600));
        loop {
            hourly.tick().await;
            tracing::warn!(
                "JWT_ACCEPT_HS256 is on: HS256 tokens signed with JWT_SECRET_KEY still \
                 verify; turn it off once the HS256 tokens issued before the switch to \
                 an asymmetric JWT_ALGORITHM have expired"
            );
        }
    }
}

/// Serves a built state on `listener` with graceful shutdown: the background tasks start
/// here and stop here, after the last connection has finished.
///
/// # Errors
/// When the listener fails.
pub async fn serve(
    state: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartupError> {
    let background = Background::new();
    let follower = state
        .auth()
        .revocations()
        .follow()
        .await
        .map_err(StartupError::Database)?;
    background.spawn("revocations", follower);
    background.spawn("purge", service::purge::run(state.auth()));
    if state.process().hs256_reminder {
        background.spawn("hs256-reminder", hs256_reminder());
    }
    state.outbox().start(state.auth(), &background);
    background.spawn(
        "metrics-upkeep",
        telemetry::metrics_upkeep(state.metrics().clone()),
    );
    if let Some(addr) = state.process().metrics_addr {
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            StartupError::Other(anyhow::anyhow!("cannot listen on METRICS_ADDR {addr}: {e}"))
        })?;
        tracing::info!(%addr, "serving /metrics on its own listener");
        let app = http::metrics_router(state.clone());
        background.spawn("metrics-listener", async move {
            if let Err(err) = axum::serve(listener, app).await {
                tracing::warn!(error = %err, "the metrics listener stopped");
            }
        });
    }
    let app = http::app(state.clone());
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "listening");
    }
    let served = server::serve(state.clone(), app, listener, shutdown).await;
    // Work accepted before the listener closed (a forgot's queueing) ends before the outbox
    // and the other background tasks stop.
    state.auth().background_settled().await;
    background.stop().await;
    served.map_err(|e| StartupError::Other(e.into()))?;
    tracing::info!("shut down cleanly");
    Ok(())
}
