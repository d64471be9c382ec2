//! Test harness: a fresh database per test (SQLite file or PostgreSQL database), the real app
//! on an ephemeral port over a real socket, an injected clock, and typed request helpers.

use std::{
    collections::HashMap,
    io::Write as _,
    process::Output,
    process::{Command, Stdio},
    sync::{Arc, Once},
    time::Duration,
    time::Instant,
};

use auth_service::{
    clock::TestClock,
    config::{Config, DatabaseUrl},
    store::{self, PoolSettings, Store},
};
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

/// The service binary cargo built for this test run.
pub const BIN: &str = env!("CARGO_BIN_EXE_auth-service");

/// The secret every test app signs with, so tokens survive a restart.
pub const SECRET: &str = "test-secret-0123456789abcdef-0123456789";
/// A password the policy accepts (the original README's example).
pub const PASSWORD: &str = "SecurePass123";

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs each named test, a plain `async fn name(backend: Backend)`, twice: as
/// `name::sqlite` and `name::postgres`. The PostgreSQL half never skips: with no server it
/// fails, naming `TEST_POSTGRES_URL`.
#[macro_export]
macro_rules! dual_backend {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::helpers::Backend::Sqlite).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name($crate::helpers::Backend::Postgres).await
                }
            }
        )*
    };
}

fn init_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            let off = auth_service::telemetry::traces::TraceConfig {
                export: None,
                user_id: false,
            };
            let _ = auth_service::telemetry::init(
                "info",
                auth_service::telemetry::LogFormat::Pretty,
                &off,
            );
        }
    });
}

/// The PostgreSQL server tests create their databases on.
pub fn postgres_admin_url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// `host:port` of the PostgreSQL server in `TEST_POSTGRES_URL`.
pub fn postgres_host_port() -> String {
    let url = url::Url::parse(&postgres_admin_url()).expect("TEST_POSTGRES_URL parses");
    format!(
        "{}:{}",
        url.host_str().unwrap_or("127.0.0.1"),
        url.port().unwrap_or(5432)
    )
}

/// A connection to the maintenance database of the test server.
pub async fn postgres_admin_connection() -> sqlx::PgConnection {
    connect_admin(&postgres_admin_url()).await
}

/// A throwaway database, removed on drop (unless `KEEP_TEST_DB=1`).
pub struct TestDb {
    pub url: DatabaseUrl,
    _dir: Option<tempfile::TempDir>,
    pg_name: Option<String>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> Arc<Self> {
        init_logs();
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = DatabaseUrl::SqliteFile(dir.path().join("auth.db"));
                Arc::new(Self {
                    url,
                    _dir: Some(dir),
                    pg_name: None,
                })
            }
            Backend::Postgres => {
                let admin = postgres_admin_url();
                let name = format!("auth_test_{}", uuid::Uuid::new_v4().simple());
                let mut conn = connect_admin(&admin).await;
                sqlx::query(sqlx::AssertSqlSafe(format!("create database {name}")))
                    .execute(&mut conn)
                    .await
                    .expect("create test database");
                let (base, _) = admin
                    .rsplit_once('/')
                    .expect("TEST_POSTGRES_URL has a database");
                let url = DatabaseUrl::parse(&format!("{base}/{name}")).expect("postgres url");
                Arc::new(Self {
                    url,
                    _dir: None,
                    pg_name: Some(name),
                })
            }
        }
    }

    /// `DATABASE_URL` for this database, as an operator would write it.
    pub fn url_string(&self) -> String {
        match &self.url {
            DatabaseUrl::SqliteFile(path) => format!("sqlite://{}", path.display()),
            DatabaseUrl::SqliteMemory => "sqlite::memory:".to_owned(),
            DatabaseUrl::Postgres(url) => secrecy::ExposeSecret::expose_secret(url).to_owned(),
        }
    }

    /// A separate store on the same database, for arranging and inspecting state.
    pub async fn store(&self) -> Arc<dyn Store> {
        let store = self.unmigrated_store().await;
        store.migrate().await.expect("migrate");
        store
    }

    /// A store on this database writing webhook events for `webhooks`.
    pub async fn subscribed_store(&self, webhooks: store::Subscriptions) -> Arc<dyn Store> {
        let store = self.connect_store(webhooks).await;
        store.migrate().await.expect("migrate");
        store
    }

    /// A store on this database as it is, without running the migrations.
    pub async fn unmigrated_store(&self) -> Arc<dyn Store> {
        self.connect_store(store::Subscriptions::default()).await
    }

    async fn connect_store(&self, webhooks: store::Subscriptions) -> Arc<dyn Store> {
        let settings = PoolSettings {
            max_connections: 2,
            acquire_timeout: Duration::from_secs(10),
            lock_timeout: Duration::from_secs(10),
            statement_timeout: Duration::from_secs(20),
            create_if_missing: true,
        };
        store::connect(&self.url, settings, webhooks)
            .await
            .expect("connect test store")
    }
}

impl TestDb {
    /// Runs one SQL statement on this database, outside any app (an operator at a console).
    pub async fn execute(&self, sql: &str) {
        use sqlx::Connection as _;
        match &self.url {
            DatabaseUrl::SqliteFile(path) => {
                let options = sqlx::sqlite::SqliteConnectOptions::new().filename(path);
                let mut conn = sqlx::SqliteConnection::connect_with(&options)
                    .await
                    .unwrap();
                sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                    .execute(&mut conn)
                    .await
                    .unwrap();
            }
            DatabaseUrl::Postgres(url) => {
                let mut conn = connect_admin(secrecy::ExposeSecret::expose_secret(url)).await;
                sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                    .execute(&mut conn)
                    .await
                    .unwrap();
            }
            DatabaseUrl::SqliteMemory => panic!("no outside access to an in-memory database"),
        }
    }

    /// The one `bigint` a query selects (a count), read outside any app.
    pub async fn count(&self, sql: &str) -> i64 {
        use sqlx::Connection as _;
        match &self.url {
            DatabaseUrl::SqliteFile(path) => {
                let options = sqlx::sqlite::SqliteConnectOptions::new().filename(path);
                let mut conn = sqlx::SqliteConnection::connect_with(&options)
                    .await
                    .unwrap();
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
                    .fetch_one(&mut conn)
                    .await
                    .unwrap()
            }
            DatabaseUrl::Postgres(url) => {
                let mut conn = connect_admin(secrecy::ExposeSecret::expose_secret(url)).await;
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
                    .fetch_one(&mut conn)
                    .await
                    .unwrap()
            }
            DatabaseUrl::SqliteMemory => panic!("no outside access to an in-memory database"),
        }
    }

    /// The `text` column a query selects, one per row, read outside any app.
    pub async fn texts(&self, sql: &str) -> Vec<String> {
        use sqlx::Connection as _;
        match &self.url {
            DatabaseUrl::SqliteFile(path) => {
                let options = sqlx::sqlite::SqliteConnectOptions::new().filename(path);
                let mut conn = sqlx::SqliteConnection::connect_with(&options)
                    .await
                    .unwrap();
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
                    .fetch_all(&mut conn)
                    .await
                    .unwrap()
            }
            DatabaseUrl::Postgres(url) => {
                let mut conn = connect_admin(secrecy::ExposeSecret::expose_secret(url)).await;
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
                    .fetch_all(&mut conn)
                    .await
                    .unwrap()
            }
            DatabaseUrl::SqliteMemory => panic!("no outside access to an in-memory database"),
        }
    }

    /// The name of this PostgreSQL test database.
    pub fn postgres_name(&self) -> String {
        self.pg_name.clone().expect("a PostgreSQL test database")
    }

    /// This PostgreSQL database stops accepting connections (what `ALLOW_CONNECTIONS false`,
    /// "too many clients" and a shutdown look like to a client) and every open one is closed.
    pub async fn refuse_connections(&self) {
        let name = self.postgres_name();
        let mut admin = postgres_admin_connection().await;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "alter database {name} allow_connections false"
        )))
        .execute(&mut admin)
        .await
        .unwrap();
        sqlx::query("select pg_terminate_backend(pid) from pg_stat_activity where datname = $1")
            .bind(&name)
            .execute(&mut admin)
            .await
            .unwrap();
    }

    /// This PostgreSQL database accepts connections again.
    pub async fn allow_connections(&self) {
        let name = self.postgres_name();
        let mut admin = postgres_admin_connection().await;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "alter database {name} allow_connections true"
        )))
        .execute(&mut admin)
        .await
        .unwrap();
    }

    /// The PostgreSQL URL of this database through another port (an outage proxy).
    pub fn postgres_url_via(&self, port: u16) -> DatabaseUrl {
        let name = self.pg_name.as_deref().expect("a PostgreSQL test database");
        let admin = postgres_admin_url();
        let (scheme_user, rest) = admin
            .split_once('@')
            .expect("user@host in TEST_POSTGRES_URL");
        let (_, _db) = rest.split_once('/').expect("host/db in TEST_POSTGRES_URL");
        DatabaseUrl::parse(&format!("{scheme_user}@127.0.0.1:{port}/{name}")).expect("url")
    }
}

/// A TCP forwarder in front of the database, which a test can cut to simulate an outage.
pub struct TcpProxy {
    pub port: u16,
    tasks: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
}

impl TcpProxy {
    pub async fn start(target: String) -> Self {
        Self::start_on(0, target).await
    }

    /// A proxy on a given local port (0 for any).
    pub async fn start_on(port: u16, target: String) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let tasks: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let registry = Arc::clone(&tasks);
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                let conn = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                registry.lock().expect("lock").push(conn);
            }
        });
        tasks.lock().expect("lock").push(accept);
        Self { port, tasks }
    }

    /// Closes the listener and every forwarded connection.
    pub fn cut(&self) {
        for task in self.tasks.lock().expect("lock").drain(..) {
            task.abort();
        }
    }
}

async fn connect_admin(url: &str) -> sqlx::PgConnection {
    use sqlx::Connection as _;
    match sqlx::PgConnection::connect(url).await {
        Ok(conn) => conn,
        Err(err) => panic!(
            "PostgreSQL tests need a server: cannot connect to {url} ({err}). Start it (see \
             README) or point TEST_POSTGRES_URL at one; these tests never skip."
        ),
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.pg_name.take() else {
            return;
        };
        if std::env::var_os("KEEP_TEST_DB").is_some() {
            eprintln!("keeping test database {name}");
            return;
        }
        // Drop is not async: drop the database from a short-lived runtime on its own thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let mut conn = connect_admin(&postgres_admin_url()).await;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "drop database if exists {name} with (force)"
                )))
                .execute(&mut conn)
                .await
                .ok()
            })
        })
        .join();
    }
}

/// The configuration every test app starts from; `overrides` replace or add variables.
pub fn test_config(db: &TestDb, overrides: &[(&str, &str)]) -> Config {
    let mut vars: HashMap<String, String> = HashMap::from([
        ("JWT_SECRET_KEY".into(), SECRET.into()),
        ("BCRYPT_ROUNDS".into(), "4".into()),
        ("RATE_LIMIT_PER_SECOND".into(), "0".into()),
        ("DATABASE_MAX_CONNECTIONS".into(), "5".into()),
        ("LOG_FORMAT".into(), "pretty".into()),
    ]);
    for (k, v) in overrides {
        vars.insert((*k).into(), (*v).into());
    }
    let mut config = Config::from_lookup(|n| vars.get(n).cloned()).expect("valid test config");
    config.database.url = db.url.clone();
    config
}

/// A running app.
pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub clock: TestClock,
    pub db: Arc<TestDb>,
    pub store: Arc<dyn Store>,
    /// The app's service, to wait for its background work ([`TestApp::settled`]).
    auth: auth_service::service::AuthService,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

impl TestApp {
    /// A fresh database and an app on it.
    pub async fn spawn(backend: Backend) -> Self {
        Self::spawn_with(backend, &[]).await
    }

    /// A fresh database and an app on it with extra variables.
    pub async fn spawn_with(backend: Backend, overrides: &[(&str, &str)]) -> Self {
        let db = TestDb::new(backend).await;
        Self::spawn_on(db, TestClock::new(), overrides).await
    }

    /// An app on an existing database (restarts, several replicas), with its own clock handle.
    pub async fn spawn_on(db: Arc<TestDb>, clock: TestClock, overrides: &[(&str, &str)]) -> Self {
        let config = test_config(&db, overrides);
        Self::spawn_config(db, clock, config).await
    }

    /// An app with a fully built configuration.
    pub async fn spawn_config(db: Arc<TestDb>, clock: TestClock, config: Config) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        Self::spawn_listening(db, clock, config, listener, base).await
    }

    /// An app with a fully built configuration on `127.0.0.1:port` (a port chosen before the
    /// configuration that names it, as `WEBAUTHN_ORIGINS` does).
    pub async fn spawn_config_on_port(
        db: Arc<TestDb>,
        clock: TestClock,
        config: Config,
        port: u16,
    ) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
        let base = format!("http://127.0.0.1:{port}");
        Self::spawn_listening(db, clock, config, listener, base).await
    }

    /// An app on a dual-stack listener (`[::]`, as `HOST=::` binds): IPv4 clients arrive as
    /// `::ffff:a.b.c.d`. `base` is its IPv4 loopback address.
    pub async fn spawn_dual_stack(backend: Backend, overrides: &[(&str, &str)]) -> Self {
        let db = TestDb::new(backend).await;
        let config = test_config(&db, overrides);
        let listener = TcpListener::bind("[::]:0").await.expect("bind [::]");
        let port = listener.local_addr().expect("addr").port();
        let base = format!("http://127.0.0.1:{port}");
        Self::spawn_listening(db, TestClock::new(), config, listener, base).await
    }

    async fn spawn_listening(
        db: Arc<TestDb>,
        clock: TestClock,
        config: Config,
        listener: TcpListener,
        base: String,
    ) -> Self {
        let (tx, rx) = oneshot::channel::<()>();
        let app_clock = Arc::new(clock.clone());
        // What `run_with_clock` does, keeping the service's handle for `settled`.
        let state = auth_service::state::AppState::build(config, app_clock)
            .await
            .expect("app starts");
        let auth = state.auth().clone();
        let handle = tokio::spawn(async move {
            auth_service::serve(state, listener, async {
                let _ = rx.await;
            })
            .await
            .expect("app runs");
        });
        // The listener is bound; this waits for start-up (migrations) without sleeping. The probe
        // keeps no connection open, so tests own every connection the app sees.
        let probe = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .expect("client");
        let live = probe
            .get(format!("{base}/health/live"))
            .send()
            .await
            .expect("app answers");
        let client = reqwest::Client::builder().build().expect("client");
        assert_eq!(live.status(), StatusCode::OK);
        let store = db.store().await;
        Self {
            base,
            client,
            clock,
            db,
            store,
            auth,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    /// Waits (at most 10 s) until the app has nothing left to do: the work a forgot or a
    /// resend left in the background has queued what it queues, and the outbox has sent
    /// everything (every message marked sent or failed). What a test then sees is final, with
    /// no sleep: a mail that did not arrive by now never will.
    pub async fn settled(&self) {
        self.auth.background_settled().await;
        poll_until("the outbox to empty", Duration::from_secs(10), || async {
            self.store.pending_mail().await.unwrap() == 0
        })
        .await;
    }

    /// Asks the app to shut down and waits until it has.
    pub async fn stop(mut self) -> Arc<TestDb> {
        self.begin_shutdown();
        self.wait_stopped().await;
        Arc::clone(&self.db)
    }

    /// Sends the shutdown signal without waiting.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Sends the shutdown signal and waits (at most 10 s) until `/health/ready` reports the
    /// drain, which the app flips asynchronously.
    pub async fn begin_draining(&mut self) {
        self.begin_shutdown();
        for _ in 0..200 {
            if self.get("/health/ready").await.status() == StatusCode::SERVICE_UNAVAILABLE {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the app never reported draining");
    }

    /// Waits for the server task to end.
    pub async fn wait_stopped(&mut self) {
        if let Some(handle) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(30), handle)
                .await
                .expect("app stops within 30 s")
                .expect("app task ends cleanly");
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request")
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request")
    }

    pub async fn get_bearer(&self, path: &str, token: &str) -> Response {
        self.client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request")
    }

    pub async fn register(&self, email: &str, password: &str) -> Response {
        self.post_json(
            "/auth/register",
            &json!({"email": email, "password": password}),
        )
        .await
    }

    pub async fn login(&self, email: &str, password: &str) -> Response {
        self.post_json(
            "/auth/login",
            &json!({"email": email, "password": password}),
        )
        .await
    }

    pub async fn refresh(&self, token: &str) -> Response {
        self.post_json("/auth/refresh", &json!({"refresh_token": token}))
            .await
    }

    pub async fn logout(&self, token: &str) -> Response {
        self.post_json("/auth/logout", &json!({"refresh_token": token}))
            .await
    }

    pub async fn verify(&self, token: &str) -> Response {
        self.get_bearer("/auth/verify", token).await
    }

    /// `POST /auth/logout-all` with `token` as the bearer.
    pub async fn logout_all(&self, token: &str) -> Response {
        self.client
            .post(self.url("/auth/logout-all"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    /// Registers `email` and logs in: (user id, access token, refresh token).
    pub async fn user_with_tokens(&self, email: &str) -> (i64, String, String) {
        let registered = self.register(email, PASSWORD).await;
        assert_eq!(registered.status(), StatusCode::CREATED);
        let id = json_of(registered).await["user_id"]
            .as_i64()
            .expect("user_id");
        let (access, refresh) = self.tokens(email).await;
        (id, access, refresh)
    }

    /// Logs in with [`PASSWORD`]: (access token, refresh token).
    pub async fn tokens(&self, email: &str) -> (String, String) {
        let response = self.login(email, PASSWORD).await;
        assert_eq!(response.status(), StatusCode::OK);
        let body = json_of(response).await;
        (
            body["access_token"].as_str().expect("access").to_owned(),
            body["refresh_token"].as_str().expect("refresh").to_owned(),
        )
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.begin_shutdown();
    }
}

/// The JSON body of a response.
pub async fn json_of(response: Response) -> Value {
    response.json().await.expect("JSON body")
}

/// Asserts status and the exact error body.
#[track_caller]
pub fn assert_error(
    status: StatusCode,
    body: &Value,
    expected: StatusCode,
    detail: &str,
    code: &str,
) {
    assert_eq!(status, expected, "body: {body}");
    // Field errors add `errors` (checked where they are tested); nothing else may.
    let mut body = body.clone();
    if ["VALIDATION_ERROR", "INVALID_EMAIL", "WEAK_PASSWORD"].contains(&code)
        && let Some(fields) = body.as_object_mut()
    {
        let errors = fields.remove("errors");
        assert!(
            errors
                .as_ref()
                .and_then(Value::as_array)
                .is_some_and(|e| !e.is_empty()),
            "{code} without errors: {body}"
        );
    }
    assert_eq!(body, json!({"detail": detail, "error_code": code}));
}

/// Status and JSON body in one go.
pub async fn status_and_json(response: Response) -> (StatusCode, Value) {
    let status = response.status();
    (status, json_of(response).await)
}

/// How soon every process must refuse a token after a change made elsewhere (another replica,
/// an admin command): the contract's "within 1 s".
pub const PROPAGATION: Duration = Duration::from_secs(1);

/// Polls `/auth/verify` with `token` until it answers `expected`, failing when that takes
/// longer than [`PROPAGATION`]; returns how long it took.
#[track_caller]
pub fn verify_becomes(
    app: &TestApp,
    token: &str,
    expected: StatusCode,
) -> impl Future<Output = Duration> {
    let caller = std::panic::Location::caller();
    async move {
        let started = Instant::now();
        loop {
            let status = app.verify(token).await.status();
            if status == expected {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < PROPAGATION,
                "{caller}: /auth/verify still answers {status}, not {expected}, after {:?}",
                started.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The (unverified) claims of a JWT.
pub fn claims_of(token: &str) -> Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url payload");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

/// A header as a string.
pub fn header(response: &Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().expect("ascii header").to_owned())
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The built binary running in a temp directory with exactly the given variables.
pub struct Binary {
    pub child: std::process::Child,
    pub port: String,
    pub dir: tempfile::TempDir,
    /// stdout and stderr so far, read as they come so a chatty server never blocks on a full
    /// pipe, and so a test can wait for a line instead of sleeping.
    output: [Arc<std::sync::Mutex<String>>; 2],
    readers: [std::thread::JoinHandle<()>; 2],
    /// The variables it was started with, to start it again.
    vars: Vec<(String, String)>,
}

/// Reads a pipe line by line to its end on a thread of its own, into `into`.
fn drain(
    pipe: impl std::io::Read + Send + 'static,
    into: Arc<std::sync::Mutex<String>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        let mut pipe = std::io::BufReader::new(pipe);
        let mut line = Vec::new();
        while pipe.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            into.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&line));
            line.clear();
        }
    })
}

impl Binary {
    pub fn spawn(vars: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let (child, port, output, readers) = Self::start(dir.path(), &vars);
        Self {
            child,
            port,
            dir,
            output,
            readers,
            vars,
        }
    }

    /// Starts the binary on a port free a moment ago (another process may take it before the
    /// binary binds it: [`Self::wait_ready`] then starts it again on another).
    #[expect(clippy::type_complexity, reason = "the parts of a Binary, once")]
    fn start(
        dir: &std::path::Path,
        vars: &[(String, String)],
    ) -> (
        std::process::Child,
        String,
        [Arc<std::sync::Mutex<String>>; 2],
        [std::thread::JoinHandle<()>; 2],
    ) {
        let port = free_port().to_string();
        // The log transport unless a test names another: required with PostgreSQL.
        let mut child = Command::new(BIN)
            .env_clear()
            .env("PORT", &port)
            .env("MAIL_URL", "log")
            .envs(vars.iter().map(|(k, v)| (k, v)))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let output: [Arc<std::sync::Mutex<String>>; 2] = Default::default();
        let readers = [
            drain(child.stdout.take().unwrap(), Arc::clone(&output[0])),
            drain(child.stderr.take().unwrap(), Arc::clone(&output[1])),
        ];
        (child, port, output, readers)
    }

    /// Waits (at most `within`) until stdout or stderr holds `needle`.
    pub async fn wait_for_output(&self, needle: &str, within: Duration) {
        poll_until(&format!("{needle:?} in the output"), within, || async {
            self.output
                .iter()
                .any(|out| out.lock().unwrap().contains(needle))
        })
        .await;
    }

    /// Polls with the `healthcheck` subcommand until ready (at most 60 s). When the binary
    /// exited because another process took its port meanwhile, starts it again on another;
    /// when it exited for any other reason, false at once.
    pub fn wait_ready(&mut self) -> bool {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            if let Ok(Some(_)) = self.child.try_wait() {
                let taken = self.output[1].lock().unwrap().contains("already in use");
                if !taken {
                    return false;
                }
                let (child, port, output, readers) = Self::start(self.dir.path(), &self.vars);
                self.child = child;
                self.port = port;
                self.output = output;
                self.readers = readers;
                continue;
            }
            let status = Command::new(BIN)
                .env_clear()
                .env("PORT", &self.port)
                .arg("healthcheck")
                .stderr(Stdio::null())
                .status()
                .unwrap();
            if status.success() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The text of its `GET /metrics` (the process's own: only this test's requests count).
    pub async fn metrics(&self) -> String {
        reqwest::get(self.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// SIGKILL: gone at once, nothing flushed or finished; what it wrote until then (stdout,
    /// stderr).
    pub fn kill(mut self) -> (String, String) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for reader in self.readers {
            reader.join().unwrap();
        }
        let [stdout, stderr] = self
            .output
            .map(|out| std::mem::take(&mut *out.lock().unwrap()));
        (stdout, stderr)
    }

    /// SIGTERM, then the exit code, stdout and stderr.
    pub fn terminate(mut self) -> (Option<i32>, String, String) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let status = self.child.wait().unwrap();
        for reader in self.readers {
            reader.join().unwrap();
        }
        let [stdout, stderr] = self
            .output
            .map(|out| std::mem::take(&mut *out.lock().unwrap()));
        (status.code(), stdout, stderr)
    }
}

/// Runs `auth-service ARGS` on the test database, feeding `stdin`.
pub fn cli(db: &TestDb, args: &[&str], stdin: &str) -> Output {
    cli_with(db, &[], args, stdin)
}

/// [`cli`] with more environment variables.
pub fn cli_with(db: &TestDb, vars: &[(&str, &str)], args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(BIN)
        .env_clear()
        .env("DATABASE_URL", db.url_string())
        .env("JWT_SECRET_KEY", SECRET)
        .env("BCRYPT_ROUNDS", "4")
        .envs(vars.iter().copied())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// [`cli`] from an async test.
pub async fn cli_async(db: &TestDb, args: &[&str], stdin: &str) -> Output {
    tokio::task::block_in_place(|| cli(db, args, stdin))
}

/// Polls `condition` every 10 ms until it holds; panics, naming `what`, after `within`.
pub async fn poll_until<F, Fut>(what: &str, within: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited {within:?} for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
