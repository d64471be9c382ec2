//! The `auth-service` binary: configuration, logging, then [`auth_service::run`].

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use auth_service::{
    clock::SystemClock, config::Config, state::StartupError, telemetry::error_chain,
};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "auth-service", version, about = "JWT authentication service")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP server (the default).
    Serve,
    /// Apply the database migrations to DATABASE_URL and exit.
    Migrate,
    /// Exit 0 when the local server answers GET /health/ready with 200 within 3 s, 1 otherwise.
    Healthcheck {
        /// Base URL of the server (default http://127.0.0.1:$PORT).
        #[arg(long)]
        url: Option<String>,
    },
    /// Copy users and live refresh tokens from one database to another (SQLite or PostgreSQL,
    /// either way), in one transaction on the target.
    CopyData {
        /// Source DATABASE_URL.
        #[arg(long)]
        from: String,
        /// Target DATABASE_URL (migrated first).
        #[arg(long)]
        to: String,
        /// Add to a target that already has users (skipping ids or emails it has).
        #[arg(long)]
        merge: bool,
    },
    /// Import the accounts of the original (Python) service's SQLite database into
    /// DATABASE_URL (migrated first). Passwords keep working; users log in again.
    ImportOriginal {
        /// The original's DATABASE_URL, e.g. sqlite:///./auth_service.db.
        #[arg(long)]
        from: String,
        /// Add to a target that already has users (skipping ids or emails it has).
        #[arg(long)]
        merge: bool,
    },
    /// Delete what nothing needs any more (expired login counters, refresh tokens, sessions,
    /// old revocation events) from DATABASE_URL, in short batches; running servers do this
    /// every 10 minutes by themselves.
    Purge,
    /// Manage users in DATABASE_URL.
    User {
        #[command(subcommand)]
        action: UserAction,
    },
}

#[derive(Subcommand)]
enum UserAction {
    /// Create a user; the password is read from standard input (same policy as /auth/register).
    Create { email: String },
    /// Disable a user: logins answer ACCOUNT_DISABLED, tokens stop working.
    Disable { email: String },
    /// Enable a disabled user.
    Enable { email: String },
    /// Clear a user's login lockout.
    Unlock { email: String },
    /// Delete a user and their refresh tokens.
    Delete { email: String },
    /// Show id, active flag, creation time and lockout (never the hash).
    Show { email: String },
    /// List accounts whose stored emails are one address under the email rules (left apart
    /// when the emails were re-keyed), and accounts whose email the rules refuse.
    Collisions,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A missing .env is fine; a malformed one is a configuration error.
    if let Err(err) = dotenvy::dotenv()
        && !err.not_found()
    {
        eprintln!("auth-service: invalid .env: {err}");
        return ExitCode::from(2);
    }
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("auth-service: {err}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("auth-service: cannot start the runtime: {err}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        match cli.command.unwrap_or(Command::Serve) {
            Command::Serve => serve(config).await,
            Command::Migrate => migrate(config).await,
            Command::Healthcheck { url } => healthcheck(&config, url).await,
            Command::User { action } => user(config, action).await,
            Command::CopyData { from, to, merge } => copy_data(&config, &from, &to, merge).await,
            Command::ImportOriginal { from, merge } => import_original(config, &from, merge).await,
            Command::Purge => purge(config).await,
        }
    })
}

async fn serve(config: Config) -> ExitCode {
    auth_service::telemetry::init(&config);
    if config.jwt_secret_generated {
        tracing::warn!(
            "JWT_SECRET_KEY is not set: using a random secret for this process only; tokens will \
             not survive a restart or verify on other replicas. Generate one with: openssl rand -base64 48"
        );
    }
    tracing::info!(config = ?config, "starting auth-service");
    let addr = SocketAddr::new(config.host, config.port);
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("auth-service: invalid PORT: cannot listen on {addr}: {err}");
            return ExitCode::from(2);
        }
    };
    match auth_service::run(config, listener, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err @ StartupError::Database(_)) => {
            eprintln!("auth-service: {err}");
            ExitCode::from(2)
        }
        Err(err) => {
            eprintln!("auth-service: {err:#}");
            ExitCode::from(1)
        }
    }
}

async fn migrate(config: Config) -> ExitCode {
    match auth_service::state::AppState::build(config, std::sync::Arc::new(SystemClock)).await {
        Ok(_) => {
            println!("migrations applied");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("auth-service: {err}");
            ExitCode::from(2)
        }
    }
}

async fn user(config: Config, action: UserAction) -> ExitCode {
    auth_service::telemetry::init_cli(&config);
    let state = match auth_service::state::AppState::build(config, std::sync::Arc::new(SystemClock))
        .await
    {
        Ok(state) => state,
        Err(err) => {
            eprintln!("auth-service: {err}");
            return ExitCode::from(2);
        }
    };
    let auth = state.auth();
    let result = match action {
        UserAction::Create { email } => {
            let mut password = String::new();
            if let Err(err) = std::io::stdin().read_line(&mut password) {
                eprintln!("auth-service: cannot read the password from stdin: {err}");
                return ExitCode::from(2);
            }
            let password = password.trim_end_matches(['\r', '\n']).to_owned();
            auth.admin_create_user(&email, password.into())
                .await
                .map(|u| format!("created user {} ({})", u.id, u.email))
        }
        UserAction::Disable { email } => auth
            .admin_set_active(&email, false)
            .await
            .map(|id| format!("disabled user {id}")),
        UserAction::Enable { email } => auth
            .admin_set_active(&email, true)
            .await
            .map(|id| format!("enabled user {id}")),
        UserAction::Unlock { email } => auth
            .admin_unlock(&email)
            .await
            .map(|id| format!("unlocked user {id}")),
        UserAction::Delete { email } => auth
            .admin_delete(&email)
            .await
            .map(|id| format!("deleted user {id}")),
        UserAction::Collisions => auth.admin_email_review().await.map(|review| {
            let mut lines: Vec<String> = review
                .collisions
                .iter()
                .map(|c| {
                    let users: Vec<String> = c
                        .users
                        .iter()
                        .map(|(id, email)| format!("user {id} {email:?}"))
                        .collect();
                    format!("collision {:?}: {}", c.key, users.join(", "))
                })
                .collect();
            lines.extend(
                review
                    .refused
                    .iter()
                    .map(|(id, email)| format!("refused: user {id} {email:?}")),
            );
            if lines.is_empty() {
                "no collisions".to_owned()
            } else {
                lines.join("\n")
            }
        }),
        UserAction::Show { email } => auth.admin_show(&email).await.map(|u| {
            let locked = u.locked_until.map_or_else(
                || "-".to_owned(),
                |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            );
            format!(
                "id: {}\nemail: {}\nactive: {}\ncreated: {}\nlocked_until: {locked}",
                u.id,
                u.email,
                u.active,
                u.created_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            )
        }),
    };
    match result {
        Ok(message) => {
            println!("{message}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("auth-service: {}", error_chain(&err));
            ExitCode::from(1)
        }
    }
}

async fn copy_data(config: &Config, from: &str, to: &str, merge: bool) -> ExitCode {
    use auth_service::{clock::Clock as _, config::DatabaseUrl, store};
    auth_service::telemetry::init_cli(config);
    let (from_url, to_url) = match (DatabaseUrl::parse(from), DatabaseUrl::parse(to)) {
        (Ok(f), Ok(t)) => (f, t),
        (Err(err), _) => {
            eprintln!("auth-service: --from: {}", err.0);
            return ExitCode::from(2);
        }
        (_, Err(err)) => {
            eprintln!("auth-service: --to: {}", err.0);
            return ExitCode::from(2);
        }
    };
    let mut stores = Vec::new();
    for (flag, url) in [("--from", &from_url), ("--to", &to_url)] {
        let settings = auth_service::state::pool_settings(config, url, 2);
        let connected = match store::connect(url, settings).await {
            Ok(s) => s.migrate().await.map(|()| s),
            Err(err) => Err(err),
        };
        match connected {
            Ok(s) => stores.push(s),
            Err(err) => {
                eprintln!("auth-service: {flag} {url:?}: {}", error_chain(&err));
                return ExitCode::from(2);
            }
        }
    }
    let now = SystemClock.now();
    match auth_service::service::copy::copy_data(&*stores[0], &*stores[1], merge, now).await {
        Ok(report) => {
            println!(
                "copied {} users ({} skipped) and {} refresh tokens from {from_url:?} to {to_url:?}",
                report.users, report.skipped_users, report.tokens
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("auth-service: {}", error_chain(&err));
            ExitCode::from(1)
        }
    }
}

async fn import_original(config: Config, from: &str, merge: bool) -> ExitCode {
    use auth_service::{config::DatabaseUrl, store};
    auth_service::telemetry::init_cli(&config);
    let path = match DatabaseUrl::parse(from) {
        Ok(DatabaseUrl::SqliteFile(path)) => path,
        Ok(_) => {
            eprintln!("auth-service: --from: the original kept its users in an SQLite file");
            return ExitCode::from(2);
        }
        Err(err) => {
            eprintln!("auth-service: --from: {}", err.0);
            return ExitCode::from(2);
        }
    };
    let users = match store::read_original_users(&path).await {
        Ok(users) => users,
        Err(err) => {
            eprintln!(
                "auth-service: --from {}: {}",
                path.display(),
                error_chain(&err)
            );
            return ExitCode::from(1);
        }
    };
    let target = config.database_url.describe();
    let state = match auth_service::state::AppState::build(config, std::sync::Arc::new(SystemClock))
        .await
    {
        Ok(state) => state,
        Err(err) => {
            eprintln!("auth-service: {err}");
            return ExitCode::from(2);
        }
    };
    match state.auth().import_original(users, merge).await {
        Ok(report) => {
            println!(
                "imported {} users ({} skipped) from {} into {target}",
                report.users,
                report.skipped_users,
                path.display()
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("auth-service: {}", error_chain(&err));
            ExitCode::from(1)
        }
    }
}

async fn purge(config: Config) -> ExitCode {
    auth_service::telemetry::init_cli(&config);
    let state = match auth_service::state::AppState::build(config, std::sync::Arc::new(SystemClock))
        .await
    {
        Ok(state) => state,
        Err(err) => {
            eprintln!("auth-service: {err}");
            return ExitCode::from(2);
        }
    };
    match state.auth().purge().await {
        Ok(report) => {
            println!(
                "purged {} login counters, {} refresh tokens, {} sessions, {} revocation events",
                report.login_attempts, report.refresh_tokens, report.sessions, report.events
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("auth-service: {}", error_chain(&err));
            ExitCode::from(1)
        }
    }
}

async fn healthcheck(config: &Config, url: Option<String>) -> ExitCode {
    let base = url.unwrap_or_else(|| format!("http://127.0.0.1:{}", config.port));
    let target = format!("{}/health/ready", base.trim_end_matches('/'));
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
    {
        Ok(client) => client,
        Err(err) => {
            eprintln!("auth-service: healthcheck: {err}");
            return ExitCode::from(1);
        }
    };
    match client.get(&target).send().await {
        Ok(response) if response.status().is_success() => ExitCode::SUCCESS,
        Ok(response) => {
            eprintln!(
                "auth-service: healthcheck: {target} answered {}",
                response.status()
            );
            ExitCode::from(1)
        }
        Err(err) => {
            eprintln!("auth-service: healthcheck: {target}: {err}");
            ExitCode::from(1)
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
