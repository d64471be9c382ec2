//! Operating the service: socket URLs (Cloud SQL), migrations without DDL rights, refusing a
//! configuration that fails silently, admin commands that cannot hit the wrong database, and
//! errors that name their root cause.

use std::process::{Command, Stdio};

use reqwest::StatusCode;

use crate::{dual_backend, helpers::*};

/// Runs the binary in `dir` with exactly `vars` and `args`.
fn run_in(dir: &std::path::Path, vars: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .env_clear()
        .envs(vars.iter().copied())
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_sql_style_unix_socket_urls_connect() {
    // The form Cloud Run's Cloud SQL connection gives (user info, empty host, the socket in
    // `host=`), tried against the local server's socket directory.
    let socket = std::env::var("TEST_POSTGRES_SOCKET_DIR")
        .unwrap_or_else(|_| "/var/run/postgresql".to_owned());
    let db = TestDb::new(Backend::Postgres).await;
    let name = db.postgres_name();
    for url in [
        format!("postgres://postgres:unused@/{name}?host={socket}"),
        format!("postgresql:///{name}?host={socket}&user=postgres"),
    ] {
        let mut config = test_config(&db, &[]);
        config.database.url = auth_service::config::DatabaseUrl::parse(&url).unwrap();
        assert!(config.database.url.describe().contains(&socket), "{url}");
        let app =
            TestApp::spawn_config(db.clone(), auth_service::clock::TestClock::new(), config).await;
        let email = format!("socket{}@example.com", url.len());
        app.register(&email, PASSWORD).await;
        assert_eq!(
            app.login(&email, PASSWORD).await.status(),
            StatusCode::OK,
            "{url}"
        );
    }
}

dual_backend!(
    with_migrate_on_start_false_a_stale_schema_exits_2_and_says_what_to_do,
    ip_show_and_unlock_lift_a_per_ip_block,
);

async fn with_migrate_on_start_false_a_stale_schema_exits_2_and_says_what_to_do(backend: Backend) {
    // Arrange: an empty database (SQLite: an existing empty file).
    let db = TestDb::new(backend).await;
    if let auth_service::config::DatabaseUrl::SqliteFile(path) = &db.url {
        std::fs::write(path, b"").unwrap();
    }
    let url = db.url_string();
    let dir = tempfile::tempdir().unwrap();
    let vars = [
        ("DATABASE_URL", url.as_str()),
        ("JWT_SECRET_KEY", SECRET),
        ("MIGRATE_ON_START", "false"),
        ("PORT", "0"),
        ("MAIL_URL", "log"),
    ];
    // Act + Assert: no DDL, one line saying what to run.
    let refused = run_in(dir.path(), &vars, &["serve"]);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert_eq!(
        stderr(&refused).trim(),
        "auth-service: the database schema is not current and MIGRATE_ON_START is false: run `auth-service migrate` first"
    );
    // After `migrate`, the same configuration serves.
    let migrated = run_in(dir.path(), &vars, &["migrate"]);
    assert!(migrated.status.success(), "{}", stderr(&migrated));
    let mut serving = Binary::spawn(&[
        ("DATABASE_URL", url.as_str()),
        ("JWT_SECRET_KEY", SECRET),
        ("MIGRATE_ON_START", "false"),
    ]);
    assert!(tokio::task::block_in_place(|| serving.wait_ready()));
    tokio::task::block_in_place(|| serving.terminate());
}

async fn ip_show_and_unlock_lift_a_per_ip_block(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        &[
            ("TRUSTED_PROXIES", "127.0.0.1"),
            ("LOGIN_MAX_FAILURES_PER_IP", "2"),
        ],
    )
    .await;
    app.register("ops@example.com", PASSWORD).await;
    let login = |password: &'static str| {
        app.client
            .post(app.url("/auth/login"))
            .header("x-forwarded-for", "2001:db8:7:7::1")
            .json(&serde_json::json!({"email": "ops@example.com", "password": password}))
            .send()
    };
    for _ in 0..2 {
        login("WrongPass123").await.unwrap();
    }
    let blocked = login(PASSWORD).await.unwrap();
    assert_eq!(blocked.status(), StatusCode::TOO_MANY_REQUESTS);
    // `ip show` names the network the address is counted under, and the block.
    let shown = cli_async(&app.db, &["ip", "show", "2001:db8:7:7::abcd"], "").await;
    let shown_text = String::from_utf8_lossy(&shown.stdout).into_owned();
    assert!(shown.status.success(), "{}", stderr(&shown));
    assert!(
        shown_text.contains("network: 2001:db8:7:7::/64"),
        "{shown_text}"
    );
    assert!(shown_text.contains("failures: 2"), "{shown_text}");
    assert!(shown_text.contains("blocked_until: 20"), "{shown_text}");
    assert!(shown_text.contains(&app.db.url.describe()), "{shown_text}");
    // `ip unlock` lifts it for every replica.
    let unlocked = cli_async(&app.db, &["ip", "unlock", "2001:db8:7:7::1"], "").await;
    assert!(unlocked.status.success(), "{}", stderr(&unlocked));
    assert_eq!(login(PASSWORD).await.unwrap().status(), StatusCode::OK);
}

#[test]
fn serving_postgres_without_a_secret_exits_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_in(
        dir.path(),
        &[(
            "DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/postgres",
        )],
        &["serve"],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.starts_with("auth-service: invalid JWT_SECRET_KEY: required with PostgreSQL"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1);
}

#[test]
fn dotenv_is_read_from_the_working_directory_only_and_never_echoed() {
    // A .env in the parent directory is not read: its PORT would be refused.
    let parent = tempfile::tempdir().unwrap();
    std::fs::write(parent.path().join(".env"), "PORT=not-a-port\n").unwrap();
    let child = parent.path().join("work");
    std::fs::create_dir(&child).unwrap();
    let out = run_in(&child, &[], &["healthcheck", "--url", "http://127.0.0.1:1"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the parent .env was read: {}",
        stderr(&out)
    );
    // A malformed line is named by its number, its text (maybe a secret) never shown.
    std::fs::write(
        child.join(".env"),
        "LOG_LEVEL=info\n# a comment\nJWT_SECRET_KEY hunter2-very-secret-value\n",
    )
    .unwrap();
    let out = run_in(&child, &[], &["serve"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("line 3 of .env"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn admin_commands_never_create_a_database_and_name_the_one_they_used() {
    // Run from a directory without the SQLite file: an error naming it, and no new file.
    let dir = tempfile::tempdir().unwrap();
    let vars = [("JWT_SECRET_KEY", SECRET)];
    for args in [
        &["user", "show", "a@example.com"][..],
        &["user", "disable", "a@example.com"],
        &["purge"],
        &["ip", "show", "1.2.3.4"],
    ] {
        let out = run_in(dir.path(), &vars, args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("cannot open the sqlite file ./auth_service.db: the file does not exist"),
            "{err}"
        );
        assert!(
            !dir.path().join("auth_service.db").exists(),
            "{args:?} created a database"
        );
    }
    // copy-data from a mistyped path: refused, nothing created.
    let target = format!("sqlite://{}/target.db", dir.path().display());
    let out = run_in(
        dir.path(),
        &vars,
        &["copy-data", "--from", "sqlite://./typo.db", "--to", &target],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("typo.db: the file does not exist"),
        "{}",
        stderr(&out)
    );
    assert!(!dir.path().join("typo.db").exists());
    // copy-data from an existing but empty database: refused unless --allow-empty.
    assert!(run_in(dir.path(), &vars, &["migrate"]).status.success());
    let source = "sqlite://./auth_service.db";
    let out = run_in(
        dir.path(),
        &vars,
        &["copy-data", "--from", source, "--to", &target],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out).trim(),
        "auth-service: the source database has no users; pass --allow-empty to copy anyway"
    );
    let out = run_in(
        dir.path(),
        &vars,
        &[
            "copy-data",
            "--from",
            source,
            "--to",
            &target,
            "--allow-empty",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // Success names the database too.
    let out = run_in(dir.path(), &vars, &["user", "show", "a@example.com"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out).trim(),
        "auth-service: user not found (in sqlite file ./auth_service.db)"
    );
}

#[test]
fn user_create_at_a_terminal_prompts_without_echo() {
    // `script` gives the command a terminal; the password is typed into it.
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/tty.db", dir.path().display());
    assert!(
        run_in(dir.path(), &[("DATABASE_URL", &url)], &["migrate"])
            .status
            .success()
    );
    let mut child = Command::new("script")
        .args([
            "-qec",
            &format!("{BIN} user create tty@example.com"),
            "/dev/null",
        ])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &url)
        .env("BCRYPT_ROUNDS", "4")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        let stdin = child.stdin.as_mut().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(500));
        stdin.write_all(b"TypedSecret123\r").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(screen.contains("Password: "), "a prompt: {screen:?}");
    assert!(
        !screen.contains("TypedSecret123"),
        "the password was echoed: {screen:?}"
    );
    assert!(
        screen.contains("created user 1 (tty@example.com)"),
        "{screen:?}"
    );
}

#[test]
fn start_up_errors_name_their_root_cause() {
    let dir = tempfile::tempdir().unwrap();
    // A SQLite file in a directory that does not exist.
    let out = run_in(
        dir.path(),
        &[
            ("DATABASE_URL", "sqlite:////no/such/dir/auth.db"),
            ("PORT", "0"),
        ],
        &["serve"],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("cannot open the sqlite file /no/such/dir/auth.db: the directory /no/such/dir does not exist"), "{err}");
    // A port another process holds.
    let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let url = format!("sqlite://{}/a.db", dir.path().display());
    let out = run_in(
        dir.path(),
        &[("DATABASE_URL", &url), ("PORT", &port)],
        &["serve"],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("port {port} already in use")),
        "{err}"
    );
    assert!(!err.contains("invalid PORT"), "{err}");
    // The healthcheck says why.
    let out = run_in(
        dir.path(),
        &[],
        &["healthcheck", "--url", "http://127.0.0.1:1"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("Connection refused"),
        "{}",
        stderr(&out)
    );
}
