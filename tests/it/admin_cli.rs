//! `auth-service user ...` and `migrate`, run as the built binary against both backends, with
//! their effects checked through the API.

use std::process::{Command, Output};

use reqwest::StatusCode;

use crate::{dual_backend, helpers::*};

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Asserts exit code 1 and exactly one stderr line, which is `expected`.
#[track_caller]
fn assert_failed(o: &Output, expected: &str) {
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().collect::<Vec<_>>(), [expected]);
}

/// Asserts exit code 0, showing stderr otherwise.
#[track_caller]
fn assert_succeeded(o: &Output) {
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

dual_backend!(
    existing_emails_are_rekeyed_and_collisions_listed_not_merged,
    import_original_brings_the_originals_accounts_over,
    user_create_follows_the_registration_rules,
    disable_stops_login_refresh_and_verify_and_enable_restores_login,
    unlock_clears_the_lockout_and_show_reports_it,
    delete_removes_the_user_and_every_token,
    migrate_prepares_an_empty_database,
    set_password_follows_the_policy_and_ends_every_session,
    verify_email_marks_the_address_verified,
);

async fn user_create_follows_the_registration_rules(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let db = &app.db;
    let created = cli_async(
        db,
        &["user", "create", " Admin@Example.com"],
        "SecurePass123\n",
    )
    .await;
    assert_succeeded(&created);
    assert!(
        stdout(&created).starts_with("created user "),
        "{}",
        stdout(&created)
    );
    assert!(stdout(&created).contains("(admin@example.com)"));
    assert_eq!(
        app.login("admin@example.com", PASSWORD).await.status(),
        StatusCode::OK
    );
    let again = cli_async(
        db,
        &["user", "create", "admin@example.com"],
        "SecurePass123\n",
    )
    .await;
    let within = format!(" (in {})", db.url.describe());
    assert_failed(
        &again,
        &format!("auth-service: User already exists{within}"),
    );
    let weak = cli_async(db, &["user", "create", "weak@example.com"], "weak\n").await;
    assert_failed(
        &weak,
        &format!(
            "auth-service: Password validation failed: Password must be at least 8 characters long, Password must contain at least one uppercase letter, Password must contain at least one number{within}"
        ),
    );
    let bad = cli_async(db, &["user", "create", "not-an-email"], "SecurePass123\n").await;
    assert_failed(&bad, &format!("auth-service: Invalid email format{within}"));
}

async fn disable_stops_login_refresh_and_verify_and_enable_restores_login(backend: Backend) {
    // Arrange
    let app = TestApp::spawn(backend).await;
    let (_, access, refresh) = app.user_with_tokens("d@example.com").await;
    // Act
    let out = cli_async(&app.db, &["user", "disable", "D@example.com"], "").await;
    // Assert
    assert_succeeded(&out);
    let (status, body) = status_and_json(app.login("d@example.com", PASSWORD).await).await;
    assert_error(
        status,
        &body,
        StatusCode::UNAUTHORIZED,
        "Account is disabled",
        "ACCOUNT_DISABLED",
    );
    assert_eq!(app.verify(&access).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.refresh(&refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("admin_user_disable") && !stderr.contains("d@example.com"),
        "{stderr}"
    );
    assert_succeeded(&cli_async(&app.db, &["user", "enable", "d@example.com"], "").await);
    let (_, new_refresh) = app.tokens("d@example.com").await;
    assert_eq!(app.refresh(&new_refresh).await.status(), StatusCode::OK);
    // The refresh tokens revoked by the disable stay revoked.
    assert_eq!(
        app.refresh(&refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

async fn unlock_clears_the_lockout_and_show_reports_it(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.register("l@example.com", PASSWORD).await;
    for _ in 0..5 {
        app.login("l@example.com", "WrongPass123").await;
    }
    assert_eq!(
        app.login("l@example.com", PASSWORD).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    let shown = stdout(&cli_async(&app.db, &["user", "show", "l@example.com"], "").await);
    let lines: Vec<&str> = shown.lines().collect();
    assert!(lines[0].starts_with("id: "), "{shown}");
    assert_eq!(lines[1..3], ["email: l@example.com", "active: true"]);
    assert!(lines[3].starts_with("created: 20"), "{shown}");
    assert!(lines[4].starts_with("locked_until: 20"), "{shown}");
    assert!(!shown.contains("$2b$"), "never the hash");
    assert_succeeded(&cli_async(&app.db, &["user", "unlock", "l@example.com"], "").await);
    assert_eq!(
        app.login("l@example.com", PASSWORD).await.status(),
        StatusCode::OK
    );
    let shown = stdout(&cli_async(&app.db, &["user", "show", "l@example.com"], "").await);
    assert!(shown.contains("\nlocked_until: -\n"), "{shown}");
    assert!(
        shown.ends_with(&format!("database: {}\n", app.db.url.describe())),
        "{shown}"
    );
}

async fn delete_removes_the_user_and_every_token(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, access, refresh) = app.user_with_tokens("del@example.com").await;
    assert_succeeded(&cli_async(&app.db, &["user", "delete", "del@example.com"], "").await);
    assert_eq!(app.verify(&access).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.refresh(&refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let (status, body) = status_and_json(app.login("del@example.com", PASSWORD).await).await;
    assert_error(
        status,
        &body,
        StatusCode::UNAUTHORIZED,
        "Invalid email or password",
        "INVALID_CREDENTIALS",
    );
    for action in ["show", "delete", "disable", "enable", "unlock"] {
        assert_failed(
            &cli_async(&app.db, &["user", action, "del@example.com"], "").await,
            &format!(
                "auth-service: user not found (in {})",
                app.db.url.describe()
            ),
        );
    }
    // The email can be registered again.
    assert_eq!(
        app.register("del@example.com", PASSWORD).await.status(),
        StatusCode::CREATED
    );
}

async fn migrate_prepares_an_empty_database(backend: Backend) {
    let db = TestDb::new(backend).await;
    let out = cli_async(&db, &["migrate"], "").await;
    assert_succeeded(&out);
    assert_eq!(
        stdout(&out),
        format!("migrations applied to {}\n", db.url.describe())
    );
    let store = db.store().await;
    assert!(
        store
            .find_user_by_email("x@example.com")
            .await
            .unwrap()
            .is_none()
    );
}

#[test]
fn bad_usage_exits_2() {
    for args in [
        &["user"][..],
        &["user", "create"],
        &["user", "frobnicate", "a@b.co"],
        &["nonsense"],
    ] {
        let out = Command::new(BIN).env_clear().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}

fn copy(from: &TestDb, to: &TestDb, merge: bool) -> Output {
    let (from_url, to_url) = (from.url_string(), to.url_string());
    let mut args = vec!["copy-data", "--from", &from_url, "--to", &to_url];
    if merge {
        args.push("--merge");
    }
    cli(from, &args, "")
}

async fn copy_async(from: &TestDb, to: &TestDb, merge: bool) -> Output {
    tokio::task::block_in_place(|| copy(from, to, merge))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_data_moves_users_and_tokens_sqlite_to_postgres_and_back() {
    // Arrange: users on SQLite, one with a rotated refresh token (parent and child are both
    // copied, so reuse detection keeps working), one disabled.
    let on = [("REFRESH_TOKEN_ROTATION", "on")];
    let source = TestApp::spawn_with(Backend::Sqlite, &on).await;
    let (alice, _, first) = source.user_with_tokens("alice@example.com").await;
    let rotated = json_of(source.refresh(&first).await).await["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (bob, _, _) = source.user_with_tokens("bob@example.com").await;
    assert_succeeded(&cli_async(&source.db, &["user", "disable", "bob@example.com"], "").await);
    let postgres = TestDb::new(Backend::Postgres).await;

    // Act
    let out = copy_async(&source.db, &postgres, false).await;

    // Assert
    assert_succeeded(&out);
    assert!(
        stdout(&out).starts_with(
            "copied 2 users (0 skipped), 3 refresh tokens, 0 second factors and 0 passkeys"
        ),
        "{}",
        stdout(&out)
    );
    assert!(!stdout(&out).contains("password"));
    let target = TestApp::spawn_on(postgres.clone(), source.clock.clone(), &on).await;
    let (status, body) = status_and_json(target.login("alice@example.com", PASSWORD).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        status_and_json(target.verify(body["access_token"].as_str().unwrap()).await)
            .await
            .1["user_id"],
        alice
    );
    assert_eq!(
        target.refresh(&rotated).await.status(),
        StatusCode::OK,
        "live refresh tokens work"
    );
    let (status, body) = status_and_json(target.login("bob@example.com", PASSWORD).await).await;
    assert_eq!(
        (status, &body["error_code"]),
        (
            StatusCode::UNAUTHORIZED,
            &serde_json::json!("ACCOUNT_DISABLED")
        )
    );
    let (status, body) =
        status_and_json(target.register("carol@example.com", PASSWORD).await).await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "the sequence was moved past the copied ids: {body}"
    );
    assert!(body["user_id"].as_i64().unwrap() > bob);

    // A non-empty target is refused, unless merging.
    assert_failed(
        &copy_async(&source.db, &postgres, false).await,
        "auth-service: the target database already has users; pass --merge to add to them",
    );
    let merged = copy_async(&source.db, &postgres, true).await;
    assert_succeeded(&merged);
    assert!(
        stdout(&merged).starts_with("copied 0 users (2 skipped)"),
        "{}",
        stdout(&merged)
    );

    // And back, to a fresh SQLite file.
    let back = TestDb::new(Backend::Sqlite).await;
    let out = copy_async(&postgres, &back, false).await;
    assert_succeeded(&out);
    assert!(
        stdout(&out).starts_with("copied 3 users"),
        "{}",
        stdout(&out)
    );
    let returned = TestApp::spawn_on(back, source.clock.clone(), &[]).await;
    assert_eq!(
        returned.login("carol@example.com", PASSWORD).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        returned.login("alice@example.com", PASSWORD).await.status(),
        StatusCode::OK
    );
    let (status, body) =
        status_and_json(returned.register("dave@example.com", PASSWORD).await).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(body["user_id"].as_i64().unwrap() > bob + 1);
}

/// An SQLite file with the original (Python) service's schema and three of its accounts.
async fn original_database(dir: &std::path::Path) -> std::path::PathBuf {
    use sqlx::Connection as _;
    let path = dir.join("original.db");
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true);
    let mut conn = sqlx::SqliteConnection::connect_with(&options)
        .await
        .unwrap();
    // SQLAlchemy's DDL for the original's `User` model.
    sqlx::query(
        "CREATE TABLE users (id INTEGER NOT NULL, email VARCHAR NOT NULL, \
         password_hash VARCHAR NOT NULL, is_active BOOLEAN NOT NULL, created_at DATETIME NOT NULL, \
         failed_login_attempts INTEGER NOT NULL, locked_until DATETIME, PRIMARY KEY (id))",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let hash = bcrypt::hash(PASSWORD, 4).unwrap();
    for (id, email, active, created) in [
        (1, "Alice@Example.com", true, "2025-06-01 10:00:00.123456"),
        (2, "bob@example.com", false, "2025-06-02 11:00:00"),
        (5, "not-an-email", true, "2025-06-03 12:00:00"),
    ] {
        sqlx::query("insert into users values (?, ?, ?, ?, ?, 0, null)")
            .bind(id)
            .bind(email)
            .bind(&hash)
            .bind(active)
            .bind(created)
            .execute(&mut conn)
            .await
            .unwrap();
    }
    path
}

async fn import_original_brings_the_originals_accounts_over(backend: Backend) {
    // Arrange
    let db = TestDb::new(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let original = original_database(dir.path()).await;
    let from = format!("sqlite:///{}", original.display());
    // Act
    let out = cli_async(&db, &["import-original", "--from", &from], "").await;
    // Assert
    assert_succeeded(&out);
    assert!(
        stdout(&out).starts_with("imported 2 users (1 skipped) from "),
        "{}",
        stdout(&out)
    );
    let app = TestApp::spawn_on(db, auth_service::clock::TestClock::new(), &[]).await;
    let (status, body) = status_and_json(app.login("alice@example.com", PASSWORD).await).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the original's bcrypt hash verifies: {body}"
    );
    let (status, body) =
        status_and_json(app.verify(body["access_token"].as_str().unwrap()).await).await;
    assert_eq!(
        (status, &body["user_id"]),
        (StatusCode::OK, &serde_json::json!(1))
    );
    let (_, body) = status_and_json(app.login("bob@example.com", PASSWORD).await).await;
    assert_eq!(body["error_code"], "ACCOUNT_DISABLED");
    let (status, body) = status_and_json(app.register("carol@example.com", PASSWORD).await).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(body["user_id"].as_i64().unwrap() > 2, "{body}");
    // A second import into a database with users is refused.
    assert_failed(
        &cli_async(&app.db, &["import-original", "--from", &from], "").await,
        &format!(
            "auth-service: the target database already has users; pass --merge to add to them (in {})",
            app.db.url.describe()
        ),
    );
}

async fn existing_emails_are_rekeyed_and_collisions_listed_not_merged(backend: Backend) {
    // Arrange: accounts stored before the email rules, as the old service wrote them.
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let hash = bcrypt::hash(PASSWORD, 4).unwrap();
    let now = chrono::Utc::now();
    let nfc = store
        .insert_user("jos\u{e9}@x.com", &hash, now)
        .await
        .unwrap();
    let nfd = store
        .insert_user("jose\u{301}@x.com", &hash, now)
        .await
        .unwrap();
    let wide = store
        .insert_user("\u{ff21}\u{ff2c}\u{ff29}\u{ff23}\u{ff25}@x.com", &hash, now)
        .await
        .unwrap();
    let refused = store
        .insert_user("user..name@example.com", &hash, now)
        .await
        .unwrap();
    // Act: the service starts (and re-keys).
    let app = TestApp::spawn_on(db.clone(), auth_service::clock::TestClock::new(), &[]).await;
    // Assert: the unique one is re-keyed and logs in under every form.
    let stored = store.find_user_by_id(wide.id).await.unwrap().unwrap();
    assert_eq!(stored.email, "alice@x.com");
    for form in ["alice@x.com", "ALICE@X.COM", "\u{ff41}lice@x.com"] {
        assert_eq!(
            app.login(form, PASSWORD).await.status(),
            StatusCode::OK,
            "{form}"
        );
    }
    // The colliding ones are left exactly as they were, and listed.
    for (user, email) in [(&nfc, "jos\u{e9}@x.com"), (&nfd, "jose\u{301}@x.com")] {
        assert_eq!(
            store.find_user_by_id(user.id).await.unwrap().unwrap().email,
            email
        );
    }
    let out = cli_async(&db, &["user", "collisions"], "").await;
    assert_succeeded(&out);
    let listed = stdout(&out);
    // Debug-quoted, so an operator sees what differs (here a combining accent).
    let expected = format!(
        "collision {:?}: user {} {:?}, user {} {:?}",
        "jos\u{e9}@x.com", nfc.id, "jos\u{e9}@x.com", nfd.id, "jose\u{301}@x.com"
    );
    assert!(listed.contains(&expected), "{listed}");
    assert!(listed.contains("\\u{301}"), "{listed}");
    assert!(
        listed.contains(&format!(
            "refused: user {} \"user..name@example.com\"",
            refused.id
        )),
        "{listed}"
    );
    // A restart does not redo it, and the service serves.
    let db = app.stop().await;
    let again = TestApp::spawn_on(db, auth_service::clock::TestClock::new(), &[]).await;
    assert_eq!(again.get("/health/ready").await.status(), StatusCode::OK);
}

async fn set_password_follows_the_policy_and_ends_every_session(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    // A second process on the database: it must refuse the old tokens within a second.
    let replica = TestApp::spawn_on(app.db.clone(), app.clock.clone(), &[]).await;
    let (_, access, refresh) = app.user_with_tokens("forgot@example.com").await;
    let weak = cli_async(
        &app.db,
        &[
            "user",
            "set-password",
            "forgot@example.com",
            "--password-stdin",
        ],
        "short\n",
    )
    .await;
    assert_eq!(weak.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&weak.stderr).contains("Password validation failed"));
    assert_eq!(
        app.verify(&access).await.status(),
        StatusCode::OK,
        "nothing changed"
    );
    let set = cli_async(
        &app.db,
        &[
            "user",
            "set-password",
            "Forgot@Example.com",
            "--password-stdin",
        ],
        "NewSecurePass456\n",
    )
    .await;
    assert_succeeded(&set);
    assert!(
        stdout(&set).contains("every session ended"),
        "{}",
        stdout(&set)
    );
    assert_eq!(
        app.login("forgot@example.com", PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.login("forgot@example.com", "NewSecurePass456")
            .await
            .status(),
        StatusCode::OK
    );
    verify_becomes(&app, &access, StatusCode::UNAUTHORIZED).await;
    verify_becomes(&replica, &access, StatusCode::UNAUTHORIZED).await;
    assert_eq!(
        app.refresh(&refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_failed(
        &cli_async(
            &app.db,
            &[
                "user",
                "set-password",
                "nobody@example.com",
                "--password-stdin",
            ],
            "NewSecurePass456\n",
        )
        .await,
        &format!(
            "auth-service: user not found (in {})",
            app.db.url.describe()
        ),
    );
}

async fn verify_email_marks_the_address_verified(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[("EMAIL_VERIFICATION", "required")]).await;
    app.register("unverified@example.com", PASSWORD).await;
    assert_eq!(
        app.login("unverified@example.com", PASSWORD).await.status(),
        StatusCode::FORBIDDEN
    );
    let out = cli_async(
        &app.db,
        &["user", "verify-email", "unverified@example.com"],
        "",
    )
    .await;
    assert_succeeded(&out);
    let (status, body) = status_and_json(app.login("unverified@example.com", PASSWORD).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        claims_of(body["access_token"].as_str().unwrap())["email_verified"],
        true
    );
}
