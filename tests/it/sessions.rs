//! Sessions end at logout: every way a session or a user's tokens can end makes the access
//! tokens concerned fail `/auth/verify` at once on the process that did it, and within a second
//! on another process sharing the database (and for admin commands). Verification is served
//! from memory; when the process cannot follow the database it answers 503.

use reqwest::StatusCode;
use serde_json::json;

use crate::{dual_backend, helpers::*};

dual_backend!(
    logout_ends_the_sessions_access_tokens_here_and_on_another_replica,
    reuse_detection_ends_the_session_everywhere,
    logout_all_ends_every_session_and_a_login_in_the_same_second_works,
    disable_and_delete_end_every_token_for_good,
    admin_commands_reach_a_running_server_within_a_second,
    a_process_that_cannot_follow_the_database_answers_503_not_200_or_401,
);

/// Two replicas on one database, with the given extra variables.
async fn replicas(backend: Backend, overrides: &[(&str, &str)]) -> (TestApp, TestApp) {
    let first = TestApp::spawn_with(backend, overrides).await;
    let second = TestApp::spawn_on(first.db.clone(), first.clock.clone(), overrides).await;
    (first, second)
}

async fn logout_ends_the_sessions_access_tokens_here_and_on_another_replica(backend: Backend) {
    // Arrange: one session verified (and so cached) on both replicas, another left alone.
    let (one, two) = replicas(backend, &[]).await;
    let (_, access, refresh) = one.user_with_tokens("bye@example.com").await;
    let (other_access, _) = one.tokens("bye@example.com").await;
    let renewed = json_of(one.refresh(&refresh).await).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    for app in [&one, &two] {
        for token in [&access, &renewed, &other_access] {
            assert_eq!(app.verify(token).await.status(), StatusCode::OK);
        }
    }
    // Act
    assert_eq!(one.logout(&refresh).await.status(), StatusCode::OK);
    // Assert: at once here, within a second there; the other session is untouched.
    for token in [&access, &renewed] {
        let (status, body) = status_and_json(one.verify(token).await).await;
        assert_error(
            status,
            &body,
            StatusCode::UNAUTHORIZED,
            "Invalid or expired token",
            "INVALID_TOKEN",
        );
        verify_becomes(&two, token, StatusCode::UNAUTHORIZED).await;
    }
    for app in [&one, &two] {
        assert_eq!(app.verify(&other_access).await.status(), StatusCode::OK);
    }
}

async fn reuse_detection_ends_the_session_everywhere(backend: Backend) {
    let overrides = [
        ("REFRESH_TOKEN_ROTATION", "on"),
        ("REFRESH_REUSE_GRACE_SECONDS", "0"),
    ];
    let (one, two) = replicas(backend, &overrides).await;
    let (_, first_access, first) = one.user_with_tokens("reuse@example.com").await;
    let rotated = json_of(one.refresh(&first).await).await;
    let child_access = rotated["access_token"].as_str().unwrap().to_owned();
    for token in [&first_access, &child_access] {
        assert_eq!(two.verify(token).await.status(), StatusCode::OK);
    }
    // The spent token comes back on the other replica: theft.
    assert_eq!(two.refresh(&first).await.status(), StatusCode::UNAUTHORIZED);
    for token in [&first_access, &child_access] {
        assert_eq!(
            two.verify(token).await.status(),
            StatusCode::UNAUTHORIZED,
            "at once on the replica that detected it"
        );
        verify_becomes(&one, token, StatusCode::UNAUTHORIZED).await;
    }
}

async fn logout_all_ends_every_session_and_a_login_in_the_same_second_works(backend: Backend) {
    // Arrange: the test clock does not move, so everything below happens in one second.
    let (one, two) = replicas(backend, &[]).await;
    let (_, a, _) = one.user_with_tokens("all@example.com").await;
    let (b, _) = two.tokens("all@example.com").await;
    let (_, _, bystander) = one.user_with_tokens("other@example.com").await;
    let bystander = json_of(one.refresh(&bystander).await).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    for token in [&a, &b, &bystander] {
        assert_eq!(two.verify(token).await.status(), StatusCode::OK);
    }
    // Act
    let response = one.logout_all(&a).await;
    assert_eq!(response.status(), StatusCode::OK);
    let (fresh, fresh_refresh) = one.tokens("all@example.com").await;
    // Assert
    for token in [&a, &b] {
        assert_eq!(one.verify(token).await.status(), StatusCode::UNAUTHORIZED);
        verify_becomes(&two, token, StatusCode::UNAUTHORIZED).await;
    }
    assert_eq!(
        claims_of(&fresh)["iat"],
        claims_of(&a)["iat"],
        "the same second"
    );
    for app in [&one, &two] {
        assert_eq!(app.verify(&fresh).await.status(), StatusCode::OK);
        assert_eq!(app.verify(&bystander).await.status(), StatusCode::OK);
    }
    assert_eq!(one.refresh(&fresh_refresh).await.status(), StatusCode::OK);
}

async fn disable_and_delete_end_every_token_for_good(backend: Backend) {
    let (one, two) = replicas(backend, &[]).await;
    let (id, access, refresh) = one.user_with_tokens("gone@example.com").await;
    assert_eq!(two.verify(&access).await.status(), StatusCode::OK);
    // Disable, then enable again: the old tokens stay dead, a new login works.
    let disabled = cli_async(&one.db, &["user", "disable", "gone@example.com"], "").await;
    assert!(disabled.status.success());
    for app in [&one, &two] {
        verify_becomes(app, &access, StatusCode::UNAUTHORIZED).await;
    }
    assert!(
        cli_async(&one.db, &["user", "enable", "gone@example.com"], "")
            .await
            .status
            .success()
    );
    one.clock.advance(chrono::Duration::seconds(5));
    for app in [&one, &two] {
        // Give the enable time to arrive, then check it revived nothing.
        let (fresh, _) = app.tokens("gone@example.com").await;
        verify_becomes(app, &fresh, StatusCode::OK).await;
        assert_eq!(app.verify(&access).await.status(), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        one.refresh(&refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );
    // Delete: every token of the user, on both replicas.
    let (survivor, _) = two.tokens("gone@example.com").await;
    assert_eq!(one.verify(&survivor).await.status(), StatusCode::OK);
    assert!(one.store.delete_user(id, chrono::Utc::now()).await.unwrap());
    for app in [&one, &two] {
        verify_becomes(app, &survivor, StatusCode::UNAUTHORIZED).await;
    }
}

async fn admin_commands_reach_a_running_server_within_a_second(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, access, _) = app.user_with_tokens("ops@example.com").await;
    assert_eq!(app.verify(&access).await.status(), StatusCode::OK);
    let out = cli_async(&app.db, &["user", "delete", "ops@example.com"], "").await;
    assert!(out.status.success(), "{out:?}");
    let took = verify_becomes(&app, &access, StatusCode::UNAUTHORIZED).await;
    assert!(took < PROPAGATION);
}

async fn a_process_that_cannot_follow_the_database_answers_503_not_200_or_401(backend: Backend) {
    // Arrange: a token verified (cached) while everything works.
    let app = TestApp::spawn(backend).await;
    let (_, access, _) = app.user_with_tokens("stale@example.com").await;
    assert_eq!(app.verify(&access).await.status(), StatusCode::OK);
    // Act: the events can no longer be read (as when the database is unreachable).
    set_events_readable(&app.db, false).await;
    // Assert: it keeps answering from memory for a moment, then 503, never 401.
    let started = std::time::Instant::now();
    let last = loop {
        let response = app.verify(&access).await;
        let status = response.status();
        assert_ne!(
            status,
            StatusCode::UNAUTHORIZED,
            "an outage is not a bad token"
        );
        if status == StatusCode::SERVICE_UNAVAILABLE {
            break response;
        }
        assert_eq!(status, StatusCode::OK);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "still vouching after {:?}",
            started.elapsed()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(header(&last, "retry-after").is_some());
    let (_, body) = status_and_json(last).await;
    assert_eq!(
        body,
        json!({"detail": "Service temporarily unavailable", "error_code": "SERVICE_UNAVAILABLE"})
    );
    assert_eq!(app.get("/health/live").await.status(), StatusCode::OK);
    // Once the events are readable again, so is the service, without a restart.
    set_events_readable(&app.db, true).await;
    let started = std::time::Instant::now();
    while app.verify(&access).await.status() != StatusCode::OK {
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Makes the events table unreadable (renamed away) or readable again, from outside the app.
async fn set_events_readable(db: &TestDb, readable: bool) {
    let (from, to) = if readable {
        ("revocation_events_hidden", "revocation_events")
    } else {
        ("revocation_events", "revocation_events_hidden")
    };
    db.execute(&format!("alter table {from} rename to {to}"))
        .await;
}
