//! A database that stops answering: 503 `SERVICE_UNAVAILABLE` with `Retry-After`, never a 401,
//! 409 or 500, and `/health` says so. PostgreSQL only: the outage is a cut TCP proxy in front of
//! the server (an SQLite file cannot go away under an open connection in the same way).

use auth_service::clock::TestClock;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_503_everywhere_it_matters() {
    // Arrange: the app reaches PostgreSQL through a proxy we can cut.
    let db = TestDb::new(Backend::Postgres).await;
    let proxy = TcpProxy::start(postgres_host_port()).await;
    let mut config = test_config(&db, &[]);
    config.database.url = db.postgres_url_via(proxy.port);
    let app = TestApp::spawn_config(db, TestClock::new(), config).await;
    let (_, access, refresh) = app.user_with_tokens("outage@example.com").await;
    // Act
    proxy.cut();
    // Assert
    let unavailable =
        json!({"detail": "Service temporarily unavailable", "error_code": "SERVICE_UNAVAILABLE"});
    // In parallel: each waits out the pool's acquire timeout (1 s) before its 503, well before
    // the 5 s after which callers of /auth/verify give up.
    let started = std::time::Instant::now();
    let (verify, login, register, refreshed, logout) = tokio::join!(
        app.verify(&access),
        app.login("outage@example.com", PASSWORD),
        app.register("new@example.com", PASSWORD),
        app.refresh(&refresh),
        app.logout(&refresh),
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed < std::time::Duration::from_secs(4),
        "503s took {elapsed:?}"
    );
    for response in [verify, login, register, refreshed, logout] {
        assert_eq!(header(&response, "retry-after").as_deref(), Some("5"));
        let (status, body) = status_and_json(response).await;
        assert_eq!(
            (status, body),
            (StatusCode::SERVICE_UNAVAILABLE, unavailable.clone())
        );
    }
    let (health, ready) = tokio::join!(app.get("/health"), app.get("/health/ready"));
    let (status, body) = status_and_json(health).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        (&body["status"], &body["database"]),
        (&json!("unhealthy"), &json!("disconnected"))
    );
    let (status, body) = status_and_json(ready).await;
    assert_eq!(
        (status, &body["status"]),
        (StatusCode::SERVICE_UNAVAILABLE, &json!("not_ready"))
    );
    assert_eq!(app.get("/health/live").await.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_refusing_connections_is_503_not_500() {
    // Arrange: a working app, then its database stops accepting connections (what
    // `ALLOW_CONNECTIONS false`, "too many clients" and a shutdown look like to a client) and
    // every open connection is closed.
    let app = TestApp::spawn(Backend::Postgres).await;
    let (_, access, refresh) = app.user_with_tokens("refused@example.com").await;
    app.db.refuse_connections().await;
    // Act
    let (login, refreshed, logout, logout_all) = tokio::join!(
        app.login("refused@example.com", PASSWORD),
        app.refresh(&refresh),
        app.logout(&refresh),
        app.client
            .post(app.url("/auth/logout-all"))
            .bearer_auth(&access)
            .send(),
    );
    // Assert
    let unavailable =
        json!({"detail": "Service temporarily unavailable", "error_code": "SERVICE_UNAVAILABLE"});
    for response in [login, refreshed, logout, logout_all.unwrap()] {
        assert!(header(&response, "retry-after").is_some());
        let (status, body) = status_and_json(response).await;
        assert_eq!(
            (status, body),
            (StatusCode::SERVICE_UNAVAILABLE, unavailable.clone())
        );
    }
    // The database comes back: so does the service, without a restart.
    app.db.allow_connections().await;
    assert_eq!(
        app.login("refused@example.com", PASSWORD).await.status(),
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_waits_for_a_database_that_comes_up_late() {
    // Arrange: a port where nothing listens yet.
    let db = TestDb::new(Backend::Postgres).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = test_config(&db, &[("DATABASE_CONNECT_TIMEOUT_SECONDS", "30")]);
    config.database.url = db.postgres_url_via(port);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(auth_service::run(config, listener, async {
        let _ = rx.await;
    }));
    // Act: the database appears a second later (the app is retrying meanwhile).
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert!(
        !server.is_finished(),
        "the app must not give up on a late database"
    );
    let proxy = TcpProxy::start_on(port, postgres_host_port()).await;
    // Assert: it comes up and serves.
    let health: serde_json::Value = reqwest::get(format!("{base}/health"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["database"], "connected");
    tx.send(()).unwrap();
    server.await.unwrap().unwrap();
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_is_logged_once_when_it_starts_and_once_when_it_ends() {
    // Arrange: the binary reaches PostgreSQL through a proxy we can cut and restore.
    let db = TestDb::new(Backend::Postgres).await;
    let proxy = TcpProxy::start(postgres_host_port()).await;
    let url = db.postgres_url_via(proxy.port);
    let url = secrecy::ExposeSecret::expose_secret(match &url {
        auth_service::config::DatabaseUrl::Postgres(url) => url,
        _ => unreachable!(),
    })
    .to_owned();
    let mut binary = Binary::spawn(&[
        ("DATABASE_URL", url.as_str()),
        ("JWT_SECRET_KEY", SECRET),
        ("BCRYPT_ROUNDS", "4"),
        // A real transport (nothing is mailed here): MAIL_URL=log's start-up warning is not
        // the outage's.
        ("MAIL_URL", "smtp://127.0.0.1:1?tls=off"),
        ("MAIL_FROM", "no-reply@shop.example.com"),
        // A data key: its absence's start-up warning is not the outage's either.
        (
            "DATA_ENCRYPTION_KEY",
            "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=",
        ),
    ]);
    assert!(tokio::task::block_in_place(|| binary.wait_ready()));
    let client = reqwest::Client::new();
    for _ in 0..5 {
        client.get(binary.url("/health")).send().await.unwrap();
    }
    // Act: the database goes away for a few seconds (requests keep coming), then returns.
    proxy.cut();
    for _ in 0..8 {
        client.get(binary.url("/health")).send().await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    let restored = TcpProxy::start_on(proxy.port, postgres_host_port()).await;
    let started = std::time::Instant::now();
    loop {
        let status = client
            .get(binary.url("/health"))
            .send()
            .await
            .unwrap()
            .status();
        if status == StatusCode::OK {
            break;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    binary
        .wait_for_output("readable again", std::time::Duration::from_secs(10))
        .await;
    let (_, stdout, _) = tokio::task::block_in_place(|| binary.terminate());
    drop(restored);
    // Assert
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let count = |level: &str, text: &str| {
        lines
            .iter()
            .filter(|l| {
                l["level"] == level && l["message"].as_str().is_some_and(|m| m.contains(text))
            })
            .count()
    };
    assert_eq!(
        count("WARN", "cannot read revocation events"),
        1,
        "{stdout}"
    );
    assert_eq!(count("INFO", "readable again"), 1, "{stdout}");
    let noisy: Vec<_> = lines
        .iter()
        .filter(|l| l["level"] == "WARN" || l["level"] == "ERROR")
        .collect();
    assert_eq!(
        noisy.len(),
        1,
        "one warning for the whole outage: {noisy:#?}"
    );
}
