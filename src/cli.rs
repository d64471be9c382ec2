//! The `auth-service` command line: the server and the operator's commands.
//!
//! Every command reads the same configuration as the server (environment, then `./.env`).
//! Output rules: the result on stdout, one line per error on stderr naming its root cause,
//! exit codes 0 (done), 1 (the operation failed), 2 (bad usage or configuration), and for
//! `user import` 3 (some lines were refused for a fault of their own). Commands
//! that act on `DATABASE_URL` say which database they used (never a password), and only the
//! server and `migrate` may create a missing SQLite file.

use std::{
    io::{BufRead as _, IsTerminal as _},
    net::{IpAddr, SocketAddr},
    path::Path,
    process::ExitCode,
    sync::Arc,
    time::Duration,
};

use clap::{Parser, Subcommand};

use crate::{
    clock::{Clock as _, SystemClock},
    config::{Config, DatabaseUrl, JwtAlgorithm},
    error_chain::error_chain,
    keys::{self, AsymmetricAlgorithm},
    service::copy,
    state::{AppState, Purpose, StartupError},
    store, telemetry,
};

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
    /// Apply the database migrations to DATABASE_URL (creating an SQLite file) and exit.
    Migrate,
    /// Exit 0 when the local server answers GET /health/ready with 200 within 3 s, 1 otherwise.
    Healthcheck {
        /// Base URL of the server (default http://127.0.0.1:$PORT).
        #[arg(long)]
        url: Option<String>,
    },
    /// Copy users, live refresh tokens, second factors and passkeys from one database to another
    /// (SQLite or PostgreSQL, either way), in one transaction on the target.
    CopyData {
        /// Source DATABASE_URL (must exist and have users).
        #[arg(long)]
        from: String,
        /// Target DATABASE_URL (migrated first).
        #[arg(long)]
        to: String,
        /// Add to a target that already has users (skipping ids or emails it has).
        #[arg(long)]
        merge: bool,
        /// Copy even when the source has no users.
        #[arg(long)]
        allow_empty: bool,
    },
    /// Import the accounts of the original (Python) service's SQLite database into
    /// DATABASE_URL. Passwords keep working; users log in again.
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
    /// Inspect or lift the per-client-IP login block in DATABASE_URL.
    Ip {
        #[command(subcommand)]
        action: IpAction,
    },
    /// Signing keys for RS256, ES256 and EdDSA; re-sealing secrets after a data key change.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
}

#[derive(Subcommand)]
enum KeysAction {
    /// Write a new private key (PKCS#8 PEM, mode 0600) and its public key next to it, and
    /// print its kid. Needs no configuration and never overwrites a file.
    Generate {
        /// RS256 (RSA 3072), ES256 (P-256) or EdDSA (Ed25519).
        #[arg(long, value_parser = ["RS256", "ES256", "EdDSA"])]
        alg: String,
        /// The private key's file (default: <kid>.pem); the public key goes to the same name
        /// with .pub.pem.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// Seal every stored TOTP secret under the current DATA_ENCRYPTION_KEY, opening each with
    /// the key that sealed it (DATA_ENCRYPTION_KEYS_PREVIOUS); without a key set, store them in
    /// the clear. Run after a key change, then drop the old key from the previous list.
    Reencrypt,
}

#[derive(Subcommand)]
enum UserAction {
    /// Create a user (same policy as /auth/register); the password is prompted for without
    /// echo at a terminal, or read as one line from standard input.
    Create { email: String },
    /// Disable a user: logins answer ACCOUNT_DISABLED; every token issued before stops
    /// working, for good.
    Disable { email: String },
    /// Enable a disabled user (tokens issued before the disable stay dead).
    Enable { email: String },
    /// Clear a user's login lockout.
    Unlock { email: String },
    /// Set a user's password (same policy as /auth/register); every session of the user
    /// ends. The password is prompted for without echo at a terminal, or read as one line from
    /// standard input (always, with --password-stdin).
    SetPassword {
        email: String,
        /// Read the password as one line from standard input, even at a terminal.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Mark a user's email address verified.
    VerifyEmail { email: String },
    /// Remove a user's second factors and recovery codes and end every session (for the user
    /// who lost both the phone and the codes): the next login asks for the password only.
    MfaReset { email: String },
    /// Delete a user, their sessions and refresh tokens.
    Delete { email: String },
    /// Import users from another system: JSON Lines, one {"email", "password_hash",
    /// "email_verified", "created_at", "disabled"} per line, hashes in bcrypt, argon2, scrypt,
    /// PBKDF2 (PHC), Django or phpass form (rehashed to bcrypt at each user's first login).
    /// Skipped lines are reported with their number and reason. Exit 0 when every line was
    /// imported or its email existed, 3 when a line was refused, 2 for an unreadable file.
    Import {
        /// The file, or `-` for standard input.
        file: String,
        /// Check the file against the database and write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Show id, active flag, creation time and lockout (never the hash).
    Show { email: String },
    /// List accounts whose stored emails are one address under the email rules (left apart
    /// when the emails were re-keyed), and accounts whose email the rules refuse.
    Collisions,
}

#[derive(Subcommand)]
enum IpAction {
    /// Show the failed-login counter of the address (IPv6: its IPV6_PREFIX_LENGTH network).
    Show { ip: IpAddr },
    /// Lift the block of the address (IPv6: its network) on every replica.
    Unlock { ip: IpAddr },
}

/// Parses the command line, loads `./.env` and the configuration, and runs the command.
#[must_use]
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Making a key needs no configuration: it is what a missing key file asks for.
    if let Some(Command::Keys {
        action: KeysAction::Generate { alg, out },
    }) = &cli.command
    {
        return generate_key(alg, out.as_deref());
    }
    if let Err(message) = load_dotenv(Path::new(".env")) {
        eprintln!("auth-service: {message}");
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
            Command::Ip { action } => ip(config, action).await,
            Command::CopyData {
                from,
                to,
                merge,
                allow_empty,
            } => copy_data(&config, &from, &to, merge, allow_empty).await,
            Command::ImportOriginal { from, merge } => import_original(config, &from, merge).await,
            Command::Purge => purge(config).await,
            Command::Keys {
                action: KeysAction::Reencrypt,
            } => reencrypt(config).await,
            // Handled above, before the configuration is read.
            Command::Keys {
                action: KeysAction::Generate { .. },
            } => ExitCode::from(2),
        }
    })
}

/// `keys generate`: writes the key pair and prints the kid and what to do with the files.
fn generate_key(alg: &str, out: Option<&Path>) -> ExitCode {
    use secrecy::ExposeSecret as _;

    let Some(algorithm) = AsymmetricAlgorithm::parse(alg) else {
        eprintln!("auth-service: unknown algorithm {alg:?}; expected RS256, ES256 or EdDSA");
        return ExitCode::from(2);
    };
    let key = match keys::generate(algorithm) {
        Ok(key) => key,
        Err(err) => {
            eprintln!(
                "auth-service: cannot generate a key: {}",
                error_chain(err.as_ref())
            );
            return ExitCode::from(1);
        }
    };
    let private = out.map_or_else(|| format!("{}.pem", key.kid).into(), Path::to_path_buf);
    let public = private.with_extension("pub.pem");
    for (path, contents, mode) in [
        (&private, key.private_pem.expose_secret(), 0o600),
        (&public, key.public_pem.as_str(), 0o644),
    ] {
        if let Err(err) = write_new(path, contents, mode) {
            eprintln!("auth-service: cannot write {}: {err}", path.display());
            return ExitCode::from(1);
        }
    }
    println!("kid: {}", key.kid);
    println!(
        "private key: {} (mode 0600): JWT_ALGORITHM={alg} and JWT_PRIVATE_KEY_FILE set to it make it sign",
        private.display()
    );
    println!(
        "public key: {}: list it in JWT_PUBLIC_KEY_FILES to publish it before it signs",
        public.display()
    );
    ExitCode::SUCCESS
}

/// Creates `path` with `mode`, refusing to replace an existing file.
fn write_new(path: &Path, contents: &str, mode: u32) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;

    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

/// Loads `./.env` when it exists, never a file from a parent directory. A line that does not
/// parse is named by its number only: its text may hold a secret.
fn load_dotenv(path: &Path) -> Result<(), String> {
    match dotenvy::from_path(path) {
        Ok(()) => Ok(()),
        Err(err) if err.not_found() => Ok(()),
        Err(dotenvy::Error::LineParse(line, _)) => {
            let number = std::fs::read_to_string(path)
                .ok()
                .and_then(|text| text.lines().position(|l| l.trim_end() == line.trim_end()))
                .map_or_else(|| "a line".to_owned(), |i| format!("line {}", i + 1));
            Err(format!(
                "invalid .env: {number} of {} cannot be parsed",
                path.display()
            ))
        }
        Err(dotenvy::Error::Io(err)) => Err(format!("cannot read {}: {err}", path.display())),
        Err(_) => Err(format!("invalid .env: {} cannot be parsed", path.display())),
    }
}

/// The one line of a start-up failure, and its exit code.
fn startup_failure(err: &StartupError) -> ExitCode {
    match err {
        StartupError::Unreachable(_)
        | StartupError::Database(_)
        | StartupError::SchemaNotCurrent => {
            eprintln!("auth-service: {}", error_chain(err));
            ExitCode::from(2)
        }
        StartupError::Other(cause) => {
            eprintln!("auth-service: {}", error_chain(cause.as_ref()));
            ExitCode::from(1)
        }
    }
}

async fn serve(config: Config) -> ExitCode {
    if let Err(err) = config.check_for_serving() {
        eprintln!("auth-service: {err}");
        return ExitCode::from(2);
    }
    let traces = match telemetry::init(&config.log.level, config.log.format, &config.traces) {
        Ok(traces) => traces,
        Err(err) => {
            eprintln!("auth-service: {err}");
            return ExitCode::from(2);
        }
    };
    if config.tokens.secret_generated && config.tokens.algorithm == JwtAlgorithm::Hs256 {
        tracing::warn!(
            "JWT_SECRET_KEY is not set: using a random secret for this process only; tokens will \
             not survive a restart. Generate one with: openssl rand -base64 48"
        );
    }
    if config.data_keys.current.is_none() {
        tracing::warn!(
            "DATA_ENCRYPTION_KEY is not set: second-factor (TOTP) secrets are stored in the clear. \
             Generate one with: openssl rand -base64 32"
        );
    }
    tracing::info!(config = ?config, "starting auth-service");
    let addr = SocketAddr::new(config.server.host, config.server.port);
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(err) => {
            let why = match err.kind() {
                std::io::ErrorKind::AddrInUse => {
                    format!("port {} already in use", config.server.port)
                }
                std::io::ErrorKind::PermissionDenied => {
                    format!("no permission to listen on port {}", config.server.port)
                }
                std::io::ErrorKind::AddrNotAvailable => {
                    format!("no interface has {}", config.server.host)
                }
                _ => err.to_string(),
            };
            eprintln!("auth-service: cannot listen on {addr}: {why}");
            return ExitCode::from(2);
        }
    };
    let served = crate::run(config, listener, shutdown_signal()).await;
    if let Some(traces) = traces {
        traces.shutdown().await;
    }
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => startup_failure(&err),
    }
}

/// Builds the state for an admin command (logs on stderr).
async fn admin_state(config: Config, purpose: Purpose) -> Result<AppState, ExitCode> {
    telemetry::init_cli(config.log.format);
    AppState::build_for(config, Arc::new(SystemClock), purpose)
        .await
        .map_err(|err| startup_failure(&err))
}

/// Prints a command's result, or its error with the database it concerned.
fn finish<E: std::error::Error + 'static>(result: Result<String, E>, database: &str) -> ExitCode {
    match result {
        Ok(message) => {
            println!("{message}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("auth-service: {} (in {database})", error_chain(&err));
            ExitCode::from(1)
        }
    }
}

async fn reencrypt(config: Config) -> ExitCode {
    let database = config.database.url.describe();
    let sealing = config.data_keys.current.is_some();
    let state = match admin_state(config, Purpose::Admin).await {
        Ok(state) => state,
        Err(code) => return code,
    };
    let result = state.auth().admin_reencrypt().await.map(|moved| {
        if sealing {
            format!("sealed {moved} TOTP secrets under the current DATA_ENCRYPTION_KEY in {database}")
        } else {
            format!(
                "DATA_ENCRYPTION_KEY is not set: stored {moved} TOTP secrets in the clear in {database}"
            )
        }
    });
    finish(result, &database)
}

async fn migrate(config: Config) -> ExitCode {
    let database = config.database.url.describe();
    match admin_state(config, Purpose::Migrate).await {
        Ok(_) => {
            println!("migrations applied to {database}");
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// The password for `user create` and `user set-password`: prompted without echo at a
/// terminal (unless `from_stdin`), else one line of standard input.
fn read_password(from_stdin: bool) -> std::io::Result<String> {
    if !from_stdin && std::io::stdin().is_terminal() {
        return rpassword::prompt_password("Password: ");
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

async fn user(config: Config, action: UserAction) -> ExitCode {
    let database = config.database.url.describe();
    let password = match &action {
        UserAction::Create { .. } | UserAction::SetPassword { .. } => match read_password(matches!(
            action,
            UserAction::SetPassword {
                password_stdin: true,
                ..
            }
        )) {
            Ok(password) => Some(password),
            Err(err) => {
                eprintln!("auth-service: cannot read the password: {err}");
                return ExitCode::from(2);
            }
        },
        _ => None,
    };
    let state = match admin_state(config, Purpose::Admin).await {
        Ok(state) => state,
        Err(code) => return code,
    };
    let auth = state.auth();
    let result = match action {
        UserAction::Import { file, dry_run } => {
            return import_users(&state, &file, dry_run, &database).await;
        }
        UserAction::Create { email } => auth
            .admin_create_user(&email, password.unwrap_or_default().into())
            .await
            .map(|u| format!("created user {} ({}) in {database}", u.id, u.email)),
        UserAction::Disable { email } => auth
            .admin_set_active(&email, false)
            .await
            .map(|id| format!("disabled user {id} in {database}")),
        UserAction::Enable { email } => auth
            .admin_set_active(&email, true)
            .await
            .map(|id| format!("enabled user {id} in {database}")),
        UserAction::SetPassword { email, .. } => auth
            .admin_set_password(&email, password.unwrap_or_default().into())
            .await
            .map(|id| format!("set the password of user {id} in {database}; every session ended")),
        UserAction::VerifyEmail { email } => auth
            .admin_verify_email(&email)
            .await
            .map(|id| format!("verified the email of user {id} in {database}")),
        UserAction::MfaReset { email } => {
            auth.admin_mfa_reset(&email).await.map(|(id, had)| {
                if had {
                    format!(
                        "removed the second factor of user {id} in {database}; every session ended"
                    )
                } else {
                    format!("user {id} had no second factor in {database}; every session ended")
                }
            })
        }
        UserAction::Unlock { email } => auth
            .admin_unlock(&email)
            .await
            .map(|id| format!("unlocked user {id} in {database}")),
        UserAction::Delete { email } => auth
            .admin_delete(&email)
            .await
            .map(|id| format!("deleted user {id} from {database}")),
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
                lines.push("no collisions".to_owned());
            }
            lines.push(format!("(in {database})"));
            lines.join("\n")
        }),
        UserAction::Show { email } => auth.admin_show(&email).await.map(|u| {
            let locked = u.locked_until.map_or_else(
                || "-".to_owned(),
                |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            );
            format!(
                "id: {}\nemail: {}\nactive: {}\ncreated: {}\nlocked_until: {locked}\ndatabase: {database}",
                u.id,
                u.email,
                u.active,
                u.created_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            )
        }),
    };
    finish(result, &database)
}

async fn ip(config: Config, action: IpAction) -> ExitCode {
    let database = config.database.url.describe();
    let state = match admin_state(config, Purpose::Admin).await {
        Ok(state) => state,
        Err(code) => return code,
    };
    let auth = state.auth();
    let result = match action {
        IpAction::Show { ip } => auth.admin_ip_show(ip).await.map(|(network, row)| {
            let now = SystemClock.now();
            let (failures, locked) = row.map_or((0, None), |r| {
                (r.attempts, r.locked_until.filter(|until| *until > now))
            });
            let locked = locked.map_or_else(
                || "-".to_owned(),
                |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            );
            format!(
                "network: {network}\nfailures: {failures}\nblocked_until: {locked}\ndatabase: {database}"
            )
        }),
        IpAction::Unlock { ip } => auth
            .admin_ip_unlock(ip)
            .await
            .map(|network| format!("unblocked {network} in {database}")),
    };
    finish(result, &database)
}

async fn copy_data(
    config: &Config,
    from: &str,
    to: &str,
    merge: bool,
    allow_empty: bool,
) -> ExitCode {
    telemetry::init_cli(config.log.format);
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
    // The source must exist: a mistyped path is an error, not an empty database.
    let Some(source) = open_copy_store(config, "--from", &from_url, false).await else {
        return ExitCode::from(2);
    };
    let Some(target) = open_copy_store(config, "--to", &to_url, true).await else {
        return ExitCode::from(2);
    };
    let (source, target) = (&*source, &*target);
    let now = SystemClock.now();
    match copy::copy_data(source, target, merge, allow_empty, now).await {
        Ok(report) => {
            println!(
                "copied {} users ({} skipped), {} refresh tokens, {} second factors and {} passkeys from {} to {}",
                report.users,
                report.skipped_users,
                report.tokens,
                report.factors,
                report.passkeys,
                from_url.describe(),
                to_url.describe()
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("auth-service: {}", error_chain(&err));
            ExitCode::from(1)
        }
    }
}

/// Connects and migrates one side of `copy-data`; prints why not (naming `flag`) and returns
/// `None` when that fails.
async fn open_copy_store(
    config: &Config,
    flag: &str,
    url: &DatabaseUrl,
    create: bool,
) -> Option<Arc<dyn store::Store>> {
    let settings = crate::state::pool_settings(&config.database, url, 2, create);
    let connected = match store::connect(url, settings, store::Subscriptions::default()).await {
        Ok(s) => s.migrate().await.map(|()| s),
        Err(err) => Err(err),
    };
    match connected {
        Ok(s) => Some(s),
        Err(err) => {
            eprintln!(
                "auth-service: {flag} {}: {}",
                url.describe(),
                error_chain(&err)
            );
            None
        }
    }
}

/// `user import FILE|-`: progress on stderr at a terminal, each skipped line on stderr, the
/// summary on stdout.
async fn import_users(state: &AppState, file: &str, dry_run: bool, database: &str) -> ExitCode {
    let (reader, size): (Box<dyn std::io::BufRead>, Option<u64>) = if file == "-" {
        (Box::new(std::io::stdin().lock()), None)
    } else {
        match std::fs::File::open(file) {
            Ok(opened) => {
                let size = opened.metadata().ok().map(|m| m.len());
                (Box::new(std::io::BufReader::new(opened)), size)
            }
            Err(err) => {
                eprintln!("auth-service: cannot read {file}: {err}");
                return ExitCode::from(2);
            }
        }
    };
    // Drawn on stderr only when it is a terminal (indicatif hides it otherwise).
    let (progress, template) = match size {
        Some(size) => (
            indicatif::ProgressBar::new(size),
            "{spinner} {bytes}/{total_bytes} read [{elapsed}]",
        ),
        None => (
            indicatif::ProgressBar::new_spinner(),
            "{spinner} {bytes} read [{elapsed}]",
        ),
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        progress.set_style(style);
    }
    let result = state
        .auth()
        .import_users(
            reader,
            dry_run,
            |line, why| progress.suspend(|| eprintln!("line {line}: skipped: {why}")),
            |read| progress.set_position(read),
        )
        .await;
    progress.finish_and_clear();
    match result {
        Ok(summary) => {
            let verb = if dry_run { "would import" } else { "imported" };
            let skipped: Vec<String> = summary
                .skipped
                .iter()
                .map(|(why, count)| format!("{count} {why}"))
                .collect();
            let skipped = if skipped.is_empty() {
                "none".to_owned()
            } else {
                skipped.join(", ")
            };
            println!(
                "{verb} {} of {} users into {database}; skipped: {skipped}",
                summary.imported, summary.lines
            );
            if summary.faults > 0 {
                ExitCode::from(3)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(err) => {
            eprintln!("auth-service: {} (in {database})", error_chain(&err));
            ExitCode::from(1)
        }
    }
}

async fn import_original(config: Config, from: &str, merge: bool) -> ExitCode {
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
    let database = config.database.url.describe();
    // The target may be new: importing is how it gets its first accounts.
    let state = match admin_state(config, Purpose::Migrate).await {
        Ok(state) => state,
        Err(code) => return code,
    };
    let result = state
        .auth()
        .import_original(users, merge)
        .await
        .map(|report| {
            format!(
                "imported {} users ({} skipped) from {} into {database}",
                report.users,
                report.skipped_users,
                path.display()
            )
        });
    finish(result, &database)
}

async fn purge(config: Config) -> ExitCode {
    let database = config.database.url.describe();
    let state = match admin_state(config, Purpose::Admin).await {
        Ok(state) => state,
        Err(code) => return code,
    };
    let result = state.auth().purge().await.map(|report| {
        format!(
            "purged {} login counters, {} refresh tokens, {} sessions, {} revocation events, \
             {} mails, {} one-time tokens, {} mail counts, {} webhook events from {database}",
            report.login_attempts,
            report.refresh_tokens,
            report.sessions,
            report.events,
            report.mail,
            report.user_tokens,
            report.mail_sends,
            report.webhooks
        )
    });
    finish(result, &database)
}

async fn healthcheck(config: &Config, url: Option<String>) -> ExitCode {
    let base = url.unwrap_or_else(|| format!("http://127.0.0.1:{}", config.server.port));
    let target = format!("{}/health/ready", base.trim_end_matches('/'));
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
    {
        Ok(client) => client,
        Err(err) => {
            eprintln!("auth-service: healthcheck: {}", error_chain(&err));
            return ExitCode::from(1);
        }
    };
    match client.get(&target).send().await {
        Ok(response) if response.status().is_success() => ExitCode::SUCCESS,
        Ok(response) => {
            let status = response.status();
            let why = response
                .bytes()
                .await
                .ok()
                .and_then(|body| serde_json::from_slice::<serde_json::Value>(&body).ok())
                .and_then(|body| body["detail"].as_str().map(str::to_owned))
                .unwrap_or_default();
            eprintln!("auth-service: healthcheck: {target} answered {status} {why}");
            ExitCode::from(1)
        }
        Err(err) => {
            let why = if err.is_timeout() {
                "no answer within 3 s".to_owned()
            } else {
                error_chain(&err)
            };
            eprintln!("auth-service: healthcheck: {target}: {why}");
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
