//! The built binary: configuration errors exit 2 with one line; defaults serve; SIGTERM exits 0.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

const BIN: &str = env!("CARGO_BIN_EXE_auth-service");

/// Runs the binary with exactly `vars` (plus PATH) in a fresh directory and waits for it.
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
        ("JWT_ALGORITHM", "HS1024"),
        ("DATABASE_URL", "mysql://localhost/db"),
        ("LOGIN_MAX_ATTEMPTS", "many"),
        ("CORS_ORIGINS", "not an origin"),
        ("TRUSTED_PROXIES", "300.1.1.1"),
        ("LOG_FORMAT", "xml"),
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
fn an_unreachable_database_exits_2_naming_database_url() {
    // Nothing listens on port 1; retries stop after DATABASE_CONNECT_TIMEOUT_SECONDS.
    let output = run_with(&[
        ("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none"),
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
    assert!(!stderr.contains("panicked"), "{stderr}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn with_no_configuration_it_serves_sqlite_and_exits_0_on_sigterm() {
    // Arrange: only PORT, so parallel test runs do not fight over 8001.
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().to_string();
    let mut child = Command::new(BIN)
        .env_clear()
        .env("PORT", &port)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Act: the healthcheck subcommand polls readiness (no sleeps beyond its own retry pace).
    let started = Instant::now();
    let mut healthy = false;
    while started.elapsed() < Duration::from_secs(60) {
        let status = Command::new(BIN)
            .env_clear()
            .env("PORT", &port)
            .args(["healthcheck"])
            .stderr(Stdio::null())
            .status()
            .unwrap();
        if status.success() {
            healthy = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    // Assert
    assert!(healthy, "healthcheck never succeeded");
    assert_eq!(status.code(), Some(0));
    assert!(
        dir.path().join("auth_service.db").exists(),
        "SQLite file created in the working directory"
    );
    let mut stderr = String::new();
    use std::io::Read as _;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
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
