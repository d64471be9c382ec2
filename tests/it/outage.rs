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
    let proxy = TcpProxy::start("127.0.0.1:5432".to_owned()).await;
    let mut config = test_config(&db, &[]);
    config.database_url = db.postgres_url_via(proxy.port);
    let app = TestApp::spawn_config(db, TestClock::new(), config).await;
    let (_, access, refresh) = app.user_with_tokens("outage@example.com").await;
    // Act
    proxy.cut();
    // Assert
    let unavailable =
        json!({"detail": "Service temporarily unavailable", "error_code": "SERVICE_UNAVAILABLE"});
    // In parallel: each waits out the pool's acquire timeout before its 503.
    let (verify, login, register, refreshed, logout) = tokio::join!(
        app.verify(&access),
        app.login("outage@example.com", PASSWORD),
        app.register("new@example.com", PASSWORD),
        app.refresh(&refresh),
        app.logout(&refresh),
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
async fn start_up_waits_for_a_database_that_comes_up_late() {
    // Arrange: a port where nothing listens yet.
    let db = TestDb::new(Backend::Postgres).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = test_config(&db, &[("DATABASE_CONNECT_TIMEOUT_SECONDS", "30")]);
    config.database_url = db.postgres_url_via(port);
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
    let proxy = TcpProxy::start_on(port, "127.0.0.1:5432".to_owned()).await;
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
