//! Whole-service behaviour: the README walk-through, restarts, replicas, graceful shutdown.

use std::time::Duration;

use auth_service::clock::TestClock;
use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::{dual_backend, helpers::*};

dual_backend!(
    the_readme_walkthrough_works_end_to_end,
    a_restart_keeps_users_revocations_lockouts_and_access_tokens,
    two_replicas_share_lockout_logout_and_uniqueness,
    shutdown_flips_readiness_and_lets_in_flight_requests_finish,
);

async fn the_readme_walkthrough_works_end_to_end(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    // 1. health
    assert_eq!(json_of(app.get("/health").await).await["status"], "healthy");
    // 2. register
    let (status, body) =
        status_and_json(app.register("test@example.com", "SecurePass123").await).await;
    assert_eq!(status, StatusCode::CREATED);
    let id = body["user_id"].clone();
    // 3. login
    let tokens = json_of(app.login("test@example.com", "SecurePass123").await).await;
    let access = tokens["access_token"].as_str().unwrap();
    let refresh = tokens["refresh_token"].as_str().unwrap();
    // 4. verify
    let (status, body) = status_and_json(app.verify(access).await).await;
    assert_eq!(
        (status, body),
        (
            StatusCode::OK,
            json!({"valid": true, "user_id": id, "email": "test@example.com", "email_verified": false, "aal": "aal1", "amr": ["pwd"]})
        )
    );
    // 5. refresh: a new pair, and the rotated refresh token replaces the old one
    let rotated = json_of(app.refresh(refresh).await).await;
    let new_refresh = rotated["refresh_token"].as_str().unwrap();
    assert_eq!(
        app.verify(rotated["access_token"].as_str().unwrap())
            .await
            .status(),
        StatusCode::OK
    );
    // 6. logout with the current refresh token
    assert_eq!(app.logout(new_refresh).await.status(), StatusCode::OK);
    assert_eq!(
        app.refresh(new_refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

async fn a_restart_keeps_users_revocations_lockouts_and_access_tokens(backend: Backend) {
    // Arrange
    let clock = TestClock::new();
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn_on(db.clone(), clock.clone(), &[]).await;
    let (id, logged_out_access, revoked) = app.user_with_tokens("keep@example.com").await;
    let (access, _) = app.tokens("keep@example.com").await;
    app.logout(&revoked).await;
    app.register("locked@example.com", PASSWORD).await;
    for _ in 0..5 {
        app.login("locked@example.com", "WrongPass123").await;
    }
    // Act
    let db = app.stop().await;
    let app = TestApp::spawn_on(db, clock, &[]).await;
    // Assert
    let (status, body) = status_and_json(app.verify(&access).await).await;
    assert_eq!(
        (status, body["user_id"].as_i64()),
        (StatusCode::OK, Some(id))
    );
    assert_eq!(
        app.verify(&logged_out_access).await.status(),
        StatusCode::UNAUTHORIZED,
        "the logged-out session stays ended"
    );
    assert_eq!(
        app.refresh(&revoked).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.login("locked@example.com", PASSWORD).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        app.login("keep@example.com", PASSWORD).await.status(),
        StatusCode::OK
    );
}

async fn two_replicas_share_lockout_logout_and_uniqueness(backend: Backend) {
    // Arrange
    let clock = TestClock::new();
    let db = TestDb::new(backend).await;
    let a = TestApp::spawn_on(db.clone(), clock.clone(), &[]).await;
    let b = TestApp::spawn_on(db, clock, &[]).await;
    // Registration uniqueness across replicas.
    let statuses: Vec<StatusCode> = join_all((0..10).map(|i| {
        let app = if i % 2 == 0 { &a } else { &b };
        async move { app.register("shared@example.com", PASSWORD).await.status() }
    }))
    .await;
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count(),
        1,
        "{statuses:?}"
    );
    // Lockout counted across replicas.
    for i in 0..5 {
        let app = if i % 2 == 0 { &a } else { &b };
        assert_eq!(
            app.login("shared@example.com", "WrongPass123")
                .await
                .status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        a.login("shared@example.com", PASSWORD).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        b.login("shared@example.com", PASSWORD).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // Logout on one replica holds on the other.
    let (_, _, refresh) = a.user_with_tokens("other@example.com").await;
    assert_eq!(a.logout(&refresh).await.status(), StatusCode::OK);
    assert_eq!(b.refresh(&refresh).await.status(), StatusCode::UNAUTHORIZED);
    // The grace window holds across replicas too: a tab on each.
    let (_, _, parent) = b.user_with_tokens("tabs@example.com").await;
    let child_a = json_of(a.refresh(&parent).await).await["refresh_token"].clone();
    let child_b = json_of(b.refresh(&parent).await).await["refresh_token"].clone();
    assert_eq!(child_a, child_b);
}

async fn shutdown_flips_readiness_and_lets_in_flight_requests_finish(backend: Backend) {
    // Arrange: an app that keeps accepting for 2 s after the signal, and a request whose
    // body is only half sent.
    let mut app = TestApp::spawn_with(backend, &[("SHUTDOWN_DRAIN_SECONDS", "2")]).await;
    let body = json!({"email": "inflight@example.com", "password": PASSWORD}).to_string();
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /auth/register HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body.as_bytes()[..10]).await.unwrap();
    // Act
    app.begin_draining().await;
    // Assert: draining is visible, and the half-sent request still completes.
    let (status, ready) = status_and_json(app.get("/health/ready").await).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready["status"], "not_ready");
    assert_eq!(ready["error_code"], "SERVICE_UNAVAILABLE");
    assert_eq!(app.get("/health/live").await.status(), StatusCode::OK);
    stream.write_all(&body.as_bytes()[10..]).await.unwrap();
    let mut response = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut response))
        .await
        .unwrap()
        .unwrap();
    let response = String::from_utf8_lossy(&response[..n]);
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");
    drop(stream);
    app.wait_stopped().await;
    assert!(
        app.client
            .get(app.url("/health/live"))
            .send()
            .await
            .is_err(),
        "listener closed"
    );
}
