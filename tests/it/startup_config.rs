//! The built binary: configuration errors exit 2 with one line; defaults serve; SIGTERM exits 0.

use std::process::{Command, Stdio};

use crate::helpers::{BIN, Binary, free_port};

/// Runs the binary with exactly `vars` in a fresh directory and waits for it.
fn run_with(vars: &[(&str, &str)]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(BIN);
    command
        .env_clear()
        .current_dir(dir.path())
        .stdin(Stdio::null());
    for (k, v) in vars {
        command.env(k, v);
    }
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn every_bad_variable_exits_2_with_one_line_naming_it() {
    let cases = [
        ("PORT", "80a"),
        ("BCRYPT_ROUNDS", "3"),
        ("JWT_SECRET_KEY", "too-short"),
        (
            "JWT_SECRET_KEY",
            "your-secret-key-here-change-in-production",
        ),
        ("JWT_SECRET", "changemechangemechangemechangeme"),
        ("JWT_ALGORITHM", "HS1024"),
        ("DATABASE_URL", "mysql://localhost/db"),
        ("LOGIN_MAX_ATTEMPTS", "many"),
        ("CORS_ORIGINS", "not an origin"),
        ("TRUSTED_PROXIES", "300.1.1.1"),
        ("TRUSTED_PROXIES", "0.0.0.0/0"),
        ("TRUSTED_PROXIES", "::/0"),
        ("LOG_FORMAT", "xml"),
        ("LOG_LEVEL", "verbose"),
        ("WEBAUTHN_RP_ID", "127.0.0.1"),
        ("WEBAUTHN_ORIGINS", "https://evil.example"),
        ("WEBAUTHN_ORIGINS", "http://localhost:3000/account"),
        ("WEBAUTHN_ORIGINS", "ftp://localhost"),
    ];
    for (var, value) in cases {
        let output = run_with(&[(var, value)]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{var}={value}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{var}: one line, got {stderr:?}");
        assert!(
            stderr.starts_with(&format!("auth-service: invalid {var}: ")),
            "{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn bad_trace_variables_exit_2_with_one_line_naming_them() {
    let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318");
    let ratio = ("OTEL_TRACES_SAMPLER", "traceidratio");
    let cases: [(&str, Vec<(&str, &str)>); 10] = [
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")],
        ),
        (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            vec![("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "ftp://collector")],
        ),
        (
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            vec![endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "thrift")],
        ),
        (
            "OTEL_EXPORTER_OTLP_TIMEOUT",
            vec![endpoint, ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s")],
        ),
        (
            "OTEL_TRACES_SAMPLER",
            vec![endpoint, ("OTEL_TRACES_SAMPLER", "sometimes")],
        ),
        (
            "OTEL_TRACES_SAMPLER_ARG",
            vec![endpoint, ratio, ("OTEL_TRACES_SAMPLER_ARG", "2")],
        ),
        (
            "OTEL_TRACES_EXPORTER",
            vec![endpoint, ("OTEL_TRACES_EXPORTER", "zipkin")],
        ),
        (
            "OTEL_BSP_MAX_QUEUE_SIZE",
            vec![endpoint, ("OTEL_BSP_MAX_QUEUE_SIZE", "0")],
        ),
        ("TRACE_USER_ID", vec![("TRACE_USER_ID", "maybe")]),
        (
            "OTEL_EXPORTER_OTLP_COMPRESSION",
            vec![endpoint, ("OTEL_EXPORTER_OTLP_COMPRESSION", "brotli")],
        ),
    ];
    for (var, vars) in cases {
        let output = run_with(&vars);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{vars:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{var}: one line, got {stderr:?}");
        assert!(
            stderr.starts_with(&format!("auth-service: invalid {var}: ")),
            "{stderr}"
        );
    }
}

#[test]
fn an_rp_id_no_default_origin_is_on_exits_2_asking_for_the_origins() {
    let output = run_with(&[("WEBAUTHN_RP_ID", "shop.example.com")]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with("auth-service: invalid WEBAUTHN_ORIGINS: "),
        "{stderr}"
    );
}

#[test]
fn smtp_without_mail_from_exits_2_saying_so() {
    let output = run_with(&[
        ("MAIL_URL", "smtp://user:hunter2-mail@mail.example.com"),
        ("PORT", "0"),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with("auth-service: invalid MAIL_FROM: required with an smtp:// or smtps://"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(!stderr.contains("hunter2-mail"), "{stderr}");
    // A bad MAIL_URL names it and never repeats the password either.
    let output = run_with(&[(
        "MAIL_URL",
        "smtp://user:hunter2-mail@mail.example.com?tls=maybe",
    )]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with("auth-service: invalid MAIL_URL: "),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2-mail"), "{stderr}");
}

#[test]
fn a_guessable_secret_is_refused_without_being_echoed() {
    for secret in [
        "a".repeat(32),
        "changeme".repeat(4),
        "0123456789abcdef".repeat(2),
        "your-secret-key-here-change-in-production".to_owned(),
    ] {
        let output = run_with(&[("JWT_SECRET_KEY", &secret), ("PORT", "0")]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{secret}: {stderr}");
        assert!(
            stderr.starts_with("auth-service: invalid JWT_SECRET_KEY: guessable: "),
            "{stderr}"
        );
        assert!(!stderr.contains(&secret), "the secret echoed: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
}

/// Secrets made as the README, `.env.example` and the deploy files say (`openssl rand -base64
/// 48`, `openssl rand -hex 32`) always pass: fresh ones from openssl itself, many times.
#[test]
fn secrets_from_openssl_rand_always_pass() {
    for _ in 0..100 {
        for args in [["rand", "-base64", "48"], ["rand", "-hex", "32"]] {
            let out = Command::new("openssl")
                .args(args)
                .output()
                .expect("openssl");
            let secret = String::from_utf8(out.stdout).unwrap().trim().to_owned();
            assert!(secret.len() >= 64, "{secret}");
            let config = auth_service::config::Config::from_lookup(|name| {
                (name == "JWT_SECRET_KEY").then(|| secret.clone())
            });
            assert!(config.is_ok(), "openssl {args:?} refused: {config:?}");
        }
    }
}

/// Every webhook misconfiguration the contract names exits 2 with one line naming the
/// variable, and never repeats a secret.
#[test]
fn webhook_misconfigurations_exit_2_naming_the_variable() {
    use base64::{Engine as _, engine::general_purpose::STANDARD};
    let secret_of = |bytes: &[u8]| format!("whsec_{}", STANDARD.encode(bytes));
    let good = secret_of(&[
        7, 1, 99, 200, 13, 42, 250, 3, 77, 18, 161, 9, 240, 33, 5, 88, 144, 61, 2, 190, 71, 123, 6,
        222,
    ]);
    let url = "https://crm.example.com/hooks";
    let cases: Vec<(Vec<(&str, String)>, &str)> = vec![
        (vec![("WEBHOOK_URLS", url.into())], "WEBHOOK_SECRET"),
        (
            vec![
                ("WEBHOOK_URLS", "ftp://crm.example.com/".into()),
                ("WEBHOOK_SECRET", good.clone()),
            ],
            "WEBHOOK_URLS",
        ),
        (
            vec![
                ("WEBHOOK_URLS", "crm.example.com/hooks".into()),
                ("WEBHOOK_SECRET", good.clone()),
            ],
            "WEBHOOK_URLS",
        ),
        (
            vec![
                (
                    "WEBHOOK_URLS",
                    "https://user:hunter2-hook@crm.example.com/".into(),
                ),
                ("WEBHOOK_SECRET", good.clone()),
            ],
            "WEBHOOK_URLS",
        ),
        (
            vec![
                ("WEBHOOK_URLS", url.into()),
                ("WEBHOOK_SECRET", "hunter2-hook-secret".into()),
            ],
            "WEBHOOK_SECRET",
        ),
        (
            vec![
                ("WEBHOOK_URLS", url.into()),
                ("WEBHOOK_SECRET", "whsec_!!not-base64!!".into()),
            ],
            "WEBHOOK_SECRET",
        ),
        (
            vec![
                ("WEBHOOK_URLS", url.into()),
                ("WEBHOOK_SECRET", secret_of(&[9; 16])),
            ],
            "WEBHOOK_SECRET",
        ),
        (
            vec![
                ("WEBHOOK_URLS", url.into()),
                ("WEBHOOK_SECRET", secret_of(&[9; 65])),
            ],
            "WEBHOOK_SECRET",
        ),
        (
            vec![
                ("WEBHOOK_URLS", url.into()),
                ("WEBHOOK_SECRET", secret_of(b"passwordpasswordpassword")),
            ],
            "WEBHOOK_SECRET",
        ),
        (
            vec![
                ("WEBHOOK_URLS", url.into()),
                ("WEBHOOK_SECRET", secret_of(b"correct horse battery staple")),
            ],
            "WEBHOOK_SECRET",
        ),
        (
            vec![
                ("WEBHOOK_URLS", url.into()),
                ("WEBHOOK_SECRET", secret_of(b"qwertyuiopasdfghjklzxcvbnm")),
            ],
            "WEBHOOK_SECRET",
        ),
        (
            vec![
                ("WEBHOOK_URLS", url.into()),
                ("WEBHOOK_SECRET", secret_of(b"shop-webhook-secret-2026!")),
            ],
            "WEBHOOK_SECRET",
        ),
        (
            vec![
                ("WEBHOOK_URLS", url.into()),
                ("WEBHOOK_SECRET", good.clone()),
                (
                    "WEBHOOK_SECRET_PREVIOUS",
                    secret_of(b"changemechangemechangeme"),
                ),
            ],
            "WEBHOOK_SECRET_PREVIOUS",
        ),
        (
            vec![
                ("WEBHOOK_URLS", url.into()),
                ("WEBHOOK_SECRET", good.clone()),
                ("WEBHOOK_EVENTS", "user.created,user.logged_in".into()),
            ],
            "WEBHOOK_EVENTS",
        ),
        (
            vec![
                ("WEBHOOK_URLS", url.into()),
                ("WEBHOOK_SECRET", good.clone()),
                ("WEBHOOK_MAX_RETRY_HOURS", "0".into()),
            ],
            "WEBHOOK_MAX_RETRY_HOURS",
        ),
    ];
    for (vars, var) in cases {
        let mut all: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        all.push(("PORT", "0"));
        let output = run_with(&all);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{vars:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{vars:?}: {stderr}");
        assert!(
            stderr.starts_with(&format!("auth-service: invalid {var}: ")),
            "{vars:?}: {stderr}"
        );
        for (name, value) in &vars {
            if name.contains("SECRET") {
                let encoded = value.trim_start_matches("whsec_");
                assert!(!stderr.contains(encoded), "a secret echoed: {stderr}");
            }
        }
        assert!(!stderr.contains("hunter2"), "{stderr}");
    }
}

/// Secrets made as the README says (`whsec_` and `openssl rand -base64 32`), of every allowed
/// size, pass; so does a configuration without webhooks.
#[test]
fn random_webhook_secrets_always_pass() {
    use base64::{Engine as _, engine::general_purpose::STANDARD};
    for n in 0..300 {
        let bytes: Vec<u8> = (0..24 + n % 41).map(|_| rand::random::<u8>()).collect();
        let secret = format!("whsec_{}", STANDARD.encode(&bytes));
        let config = auth_service::config::Config::from_lookup(|name| match name {
            "WEBHOOK_URLS" => Some("https://a.example/hooks, http://b.example:8080/in".into()),
            "WEBHOOK_SECRET" => Some(secret.clone()),
            _ => None,
        });
        let config = config.unwrap_or_else(|err| panic!("{} bytes refused: {err}", bytes.len()));
        assert_eq!(config.webhooks.endpoints.len(), 2);
        assert_eq!(config.webhooks.events.len(), 11);
        assert_eq!(config.webhooks.max_retry_hours, 24);
    }
    let none = auth_service::config::Config::from_lookup(|_| None).unwrap();
    assert!(none.webhooks.endpoints.is_empty());
}

#[test]
fn an_unreachable_database_exits_2_naming_database_url() {
    // Nothing listens on port 1; retries stop after DATABASE_CONNECT_TIMEOUT_SECONDS.
    let output = run_with(&[
        ("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none"),
        ("JWT_SECRET_KEY", crate::helpers::SECRET),
        ("MAIL_URL", "log"),
        ("DATABASE_CONNECT_TIMEOUT_SECONDS", "1"),
        ("PORT", "0"),
        ("LOG_LEVEL", "error"),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("auth-service: invalid DATABASE_URL"),
        "{stderr}"
    );
    // The root cause, not "pool timed out".
    assert!(stderr.contains("Connection refused"), "{stderr}");
    assert!(!stderr.contains("timed out"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_wrong_postgres_database_name_is_one_line_with_the_cause_once() {
    let name = "no_such_database_for_auth_service";
    let output = run_with(&[
        (
            "DATABASE_URL",
            &format!("postgres://postgres@127.0.0.1:5432/{name}"),
        ),
        ("JWT_SECRET_KEY", crate::helpers::SECRET),
        ("MAIL_URL", "log"),
        ("DATABASE_CONNECT_TIMEOUT_SECONDS", "0"),
        ("PORT", "0"),
        ("LOG_LEVEL", "error"),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(
        stderr.trim_end(),
        format!(
            "auth-service: invalid DATABASE_URL: database unavailable: database \"{name}\" does \
             not exist"
        )
    );
}

#[test]
fn with_no_configuration_it_serves_sqlite_and_exits_0_on_sigterm() {
    // Arrange: only PORT, so parallel test runs do not fight over 8001.
    let mut binary = Binary::spawn(&[]);
    // Act
    let healthy = binary.wait_ready();
    let db_created = binary.dir.path().join("auth_service.db").exists();
    let (code, stdout, stderr) = binary.terminate();
    // Assert
    assert!(healthy, "healthcheck never succeeded: {stderr}");
    assert_eq!(code, Some(0), "{stderr}");
    assert!(db_created, "SQLite file created in the working directory");
    assert!(
        stdout.contains("JWT_SECRET_KEY is not set"),
        "loud warning about the random secret"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_json_spans_without_emails_passwords_or_tokens() {
    // Arrange
    let mut binary = Binary::spawn(&[
        ("JWT_SECRET_KEY", crate::helpers::SECRET),
        ("BCRYPT_ROUNDS", "4"),
        // MAIL_URL=log (the default) logs each mail, address and link included, by design
        // (development only, with a start-up warning; tests/it/recovery.rs checks it): here a
        // real transport, so the request logs alone are read.
        ("MAIL_URL", "smtp://127.0.0.1:1?tls=off"),
        ("MAIL_FROM", "no-reply@shop.example.com"),
    ]);
    assert!(tokio::task::block_in_place(|| binary.wait_ready()));
    let client = reqwest::Client::new();
    let email = "private.person@example.com";
    let password = "SecretPass123";
    // Act
    client
        .post(binary.url("/auth/register"))
        .json(&serde_json::json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap();
    let tokens: serde_json::Value = client
        .post(binary.url("/auth/login"))
        .header("x-request-id", "req-login-1")
        .json(&serde_json::json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let refresh = tokens["refresh_token"].as_str().unwrap().to_owned();
    client
        .get(binary.url("/auth/verify"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    client
        .post(binary.url("/auth/refresh"))
        .json(&serde_json::json!({"refresh_token": refresh}))
        .send()
        .await
        .unwrap();
    client
        .post(binary.url("/auth/login"))
        .json(&serde_json::json!({"email": email, "password": "WrongPass123"}))
        .send()
        .await
        .unwrap();
    client
        .post(binary.url("/auth/login"))
        .json(&serde_json::json!({"email": "nobody@example.com", "password": "WrongPass123"}))
        .send()
        .await
        .unwrap();
    // Self-service: a password change, then the account deleted with the new password.
    let new_password = "ChangedPass456";
    let changed = client
        .post(binary.url("/auth/password/change"))
        .bearer_auth(&access)
        .json(&serde_json::json!({"current_password": password, "new_password": new_password}))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), reqwest::StatusCode::OK);
    let deleted = client
        .delete(binary.url("/auth/me"))
        .bearer_auth(&access)
        .json(&serde_json::json!({"password": new_password}))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), reqwest::StatusCode::OK);
    let (code, stdout, _) = tokio::task::block_in_place(|| binary.terminate());
    // Assert
    assert_eq!(code, Some(0));
    let hash_prefix = "$2b$";
    for secret in [
        email,
        password,
        new_password,
        "WrongPass123",
        access.as_str(),
        refresh.as_str(),
        hash_prefix,
        crate::helpers::SECRET,
    ] {
        assert!(
            !stdout.contains(secret),
            "the log contains a secret: {secret}"
        );
    }
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line is JSON"))
        .collect();
    let login = lines
        .iter()
        .find(|l| l["span"]["request_id"] == "req-login-1" && l["message"] == "request completed")
        .expect("a completion line for the login request");
    assert_eq!(login["span"]["http.request.method"], "POST");
    assert_eq!(login["span"]["http.route"], "/auth/login");
    assert_eq!(login["span"]["http.response.status_code"], 200);
    // Traces are off: no trace id, no span name for them.
    assert!(login["span"].get("trace_id").is_none());
    assert!(login["span"].get("otel.name").is_none());
    assert!(login["span"]["duration_ms"].is_u64());
    assert_eq!(login["span"]["client.ip"], "127.0.0.1");
    // The audit trail: one event per action on target `audit`.
    let audit: Vec<(String, String)> = lines
        .iter()
        .filter(|l| l["target"] == "audit")
        .map(|l| {
            (
                l["event"].as_str().unwrap().to_owned(),
                l["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = [
        ("register", "success"),
        ("login", "success"),
        ("refresh", "success"),
        ("login", "invalid_credentials"),
        ("login", "invalid_credentials"),
        ("password_changed", "success"),
        ("account_deleted", "success"),
    ]
    .iter()
    .map(|(e, o)| ((*e).to_owned(), (*o).to_owned()))
    .collect();
    assert_eq!(audit, expected);
    let login_audit = lines
        .iter()
        .find(|l| l["target"] == "audit" && l["event"] == "login")
        .unwrap();
    assert_eq!(login_audit["request_id"], "req-login-1");
    assert_eq!(login_audit["client.ip"], "127.0.0.1");
    assert!(login_audit["user.id"].is_i64(), "{login_audit}");
    // A wrong password names the account (by id, never the email); an unknown address does not.
    let failures: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["target"] == "audit" && l["outcome"] == "invalid_credentials")
        .collect();
    assert_eq!(
        failures[0]["user.id"], login_audit["user.id"],
        "{:?}",
        failures[0]
    );
    assert!(failures[1]["user.id"].is_null(), "{:?}", failures[1]);
    // The deletion names the account by id only (the email is nowhere in the log, above).
    let deletion = lines
        .iter()
        .find(|l| l["target"] == "audit" && l["event"] == "account_deleted")
        .unwrap();
    assert_eq!(deletion["user.id"], login_audit["user.id"], "{deletion}");
}

#[test]
fn healthcheck_fails_when_nothing_listens() {
    let port = free_port().to_string();
    let status = Command::new(BIN)
        .env_clear()
        .env("PORT", &port)
        .arg("healthcheck")
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_passes_on_a_ready_server_and_fails_on_a_draining_one() {
    let mut app = crate::helpers::TestApp::spawn_with(
        crate::helpers::Backend::Sqlite,
        &[("SHUTDOWN_DRAIN_SECONDS", "3")],
    )
    .await;
    let check = |base: String| {
        tokio::task::block_in_place(move || {
            Command::new(BIN)
                .env_clear()
                .args(["healthcheck", "--url", &base])
                .stderr(Stdio::null())
                .status()
                .unwrap()
                .code()
        })
    };
    assert_eq!(check(app.base.clone()), Some(0));
    app.begin_draining().await;
    assert_eq!(check(app.base.clone()), Some(1), "draining is not ready");
    app.wait_stopped().await;
    assert_eq!(check(app.base.clone()), Some(1), "nothing listens");
}

#[test]
fn serving_postgres_without_mail_url_exits_2_unless_log_is_asked_for() {
    // Production must not log reset links by default: an unset MAIL_URL is refused with a
    // PostgreSQL DATABASE_URL before anything connects; `log` asked for is accepted (the
    // server then tries its database, here a port nothing listens on).
    let url = "postgres://postgres@127.0.0.1:1/auth";
    let secret = crate::helpers::SECRET;
    let vars = [
        ("DATABASE_URL", url),
        ("JWT_SECRET_KEY", secret),
        ("DATABASE_CONNECT_TIMEOUT_SECONDS", "1"),
    ];
    let refused = run_with(&vars);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
    assert!(
        stderr
            .starts_with("auth-service: invalid MAIL_URL: required with a PostgreSQL DATABASE_URL"),
        "{stderr}"
    );
    assert!(stderr.contains("MAIL_URL=log"), "{stderr}");
    let mut with_log = vars.to_vec();
    with_log.push(("MAIL_URL", "log"));
    let accepted = run_with(&with_log);
    let stderr = String::from_utf8_lossy(&accepted.stderr);
    let stdout = String::from_utf8_lossy(&accepted.stdout);
    assert!(
        !stderr.contains("MAIL_URL") && !stdout.contains("invalid MAIL_URL"),
        "{stderr} {stdout}"
    );
    assert!(
        stdout.contains("database") || stderr.contains("database"),
        "it went on to the database: {stderr} {stdout}"
    );
}
