//! `POST /auth/refresh` in both `REFRESH_TOKEN_ROTATION` modes: `off` (the original's
//! reusable refresh token, the default) and `on` (rotation, reuse detection, the grace window).

use chrono::Duration;
use futures::future::join_all;
use reqwest::StatusCode;

use crate::{dual_backend, helpers::*};

const ROTATION_ON: &[(&str, &str)] = &[("REFRESH_TOKEN_ROTATION", "on")];

async fn assert_invalid_refresh(response: reqwest::Response) {
    assert_eq!(
        header(&response, "www-authenticate").as_deref(),
        Some("Bearer")
    );
    let (status, body) = status_and_json(response).await;
    assert_error(
        status,
        &body,
        StatusCode::UNAUTHORIZED,
        "Invalid or expired refresh token",
        "INVALID_REFRESH_TOKEN",
    );
}

async fn rotate(app: &TestApp, token: &str) -> (String, String) {
    let response = app.refresh(token).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(&response, "cache-control").as_deref(),
        Some("no-store")
    );
    let body = json_of(response).await;
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["expires_in"], 900);
    (
        body["access_token"].as_str().unwrap().to_owned(),
        body["refresh_token"].as_str().unwrap().to_owned(),
    )
}

dual_backend!(
    the_grace_window_is_measured_to_the_sub_second,
    by_default_a_refresh_token_is_reused_and_returned_unchanged,
    without_rotation_logout_and_disable_still_end_the_refresh_token,
    refresh_rotates_to_a_new_working_pair,
    reuse_within_the_grace_window_returns_the_same_child,
    reuse_after_the_grace_window_revokes_the_whole_family,
    a_pruned_ancestor_presented_again_is_reuse,
    storage_per_session_stays_constant_over_many_rotations,
    grace_zero_turns_the_grace_off,
    concurrent_refreshes_of_one_token_yield_one_child,
    access_tokens_garbage_and_expired_tokens_are_refused,
    a_disabled_users_refresh_token_is_refused,
);

async fn refresh_rotates_to_a_new_working_pair(backend: Backend) {
    let app = TestApp::spawn_with(backend, ROTATION_ON).await;
    let (_, _, first) = app.user_with_tokens("r@example.com").await;
    let (access, second) = rotate(&app, &first).await;
    assert_ne!(second, first);
    assert_eq!(app.verify(&access).await.status(), StatusCode::OK);
    let (_, third) = rotate(&app, &second).await;
    assert_ne!(third, second);
}

async fn reuse_within_the_grace_window_returns_the_same_child(backend: Backend) {
    let app = TestApp::spawn_with(backend, ROTATION_ON).await;
    let (_, _, parent) = app.user_with_tokens("tabs@example.com").await;
    let (_, child) = rotate(&app, &parent).await;
    app.clock.advance(Duration::seconds(10));
    let (access, again) = rotate(&app, &parent).await;
    assert_eq!(again, child, "the already-issued child, byte for byte");
    assert_eq!(app.verify(&access).await.status(), StatusCode::OK);
    rotate(&app, &child).await;
}

async fn reuse_after_the_grace_window_revokes_the_whole_family(backend: Backend) {
    // Arrange
    let app = TestApp::spawn_with(backend, ROTATION_ON).await;
    let (_, _, parent) = app.user_with_tokens("theft@example.com").await;
    let (_, child) = rotate(&app, &parent).await;
    // Act
    app.clock.advance(Duration::seconds(11));
    let reuse = app.refresh(&parent).await;
    // Assert
    assert_invalid_refresh(reuse).await;
    assert_invalid_refresh(app.refresh(&child).await).await;
    // Another login is another family and still works.
    let (_, other) = app.tokens("theft@example.com").await;
    rotate(&app, &other).await;
}

/// Tokens rotated before the grace window lose their rows; one of them coming back is still
/// reuse, and ends the session, as when its row was kept.
async fn a_pruned_ancestor_presented_again_is_reuse(backend: Backend) {
    let app = TestApp::spawn_with(backend, ROTATION_ON).await;
    let (_, _, t0) = app.user_with_tokens("pruned@example.com").await;
    let sid = claims_of(&t0)["sid"].as_str().unwrap().to_owned();
    let (_, t1) = rotate(&app, &t0).await;
    app.clock.advance(Duration::seconds(11));
    let (access, t2) = rotate(&app, &t1).await;
    app.clock.advance(Duration::seconds(11));
    let (_, t3) = rotate(&app, &t2).await;
    // T0 was rotated before the last grace window began: its row is gone.
    let jti =
        |token: &str| uuid::Uuid::parse_str(claims_of(token)["jti"].as_str().unwrap()).unwrap();
    assert!(
        app.store
            .find_refresh_token(jti(&t0))
            .await
            .unwrap()
            .is_none()
    );
    // Act: the stolen T0 comes back.
    assert_invalid_refresh(app.refresh(&t0).await).await;
    // Assert: the session ended, every token of it with it.
    let session = app
        .store
        .find_session(uuid::Uuid::parse_str(&sid).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(session.revoked_at.is_some(), "reuse ends the session");
    assert_invalid_refresh(app.refresh(&t3).await).await;
    verify_becomes(&app, &access, StatusCode::UNAUTHORIZED).await;
}

/// Many refreshes of one session leave a constant number of rows: the current token, its
/// parent and what was rotated within the grace window.
async fn storage_per_session_stays_constant_over_many_rotations(backend: Backend) {
    let app = TestApp::spawn_with(backend, ROTATION_ON).await;
    let (_, _, mut token) = app.user_with_tokens("many@example.com").await;
    let family = claims_of(&token)["sid"].as_str().unwrap().to_owned();
    for _ in 0..40 {
        app.clock.advance(Duration::seconds(3));
        token = rotate(&app, &token).await.1;
    }
    let rows = app
        .store
        .export_refresh_tokens(chrono::Utc::now())
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.family_id.to_string() == family)
        .count();
    // One rotation every 3 s, a 10 s grace window: rotated at -9, -6, -3, 0 s, and the current.
    assert!(rows <= 5, "{rows} rows after 40 rotations");
    rotate(&app, &token).await;
}

async fn grace_zero_turns_the_grace_off(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        &[
            ("REFRESH_TOKEN_ROTATION", "on"),
            ("REFRESH_REUSE_GRACE_SECONDS", "0"),
        ],
    )
    .await;
    let (_, _, parent) = app.user_with_tokens("nograce@example.com").await;
    let (_, child) = rotate(&app, &parent).await;
    assert_invalid_refresh(app.refresh(&parent).await).await;
    assert_invalid_refresh(app.refresh(&child).await).await;
}

async fn concurrent_refreshes_of_one_token_yield_one_child(backend: Backend) {
    // Arrange
    let app = TestApp::spawn_with(backend, ROTATION_ON).await;
    let (id, _, parent) = app.user_with_tokens("race@example.com").await;
    // Act
    let responses = join_all((0..10).map(|_| app.refresh(&parent))).await;
    // Assert
    let mut children = Vec::new();
    for response in responses {
        assert_eq!(response.status(), StatusCode::OK);
        children.push(
            json_of(response).await["refresh_token"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    children.dedup();
    assert_eq!(children.len(), 1, "every racer got the same child");
    let _ = id;
    rotate(&app, &children[0]).await;
}

async fn access_tokens_garbage_and_expired_tokens_are_refused(backend: Backend) {
    let app = TestApp::spawn_with(backend, ROTATION_ON).await;
    let (_, access, refresh) = app.user_with_tokens("bad@example.com").await;
    for token in [access.as_str(), "garbage", ""] {
        assert_invalid_refresh(app.refresh(token).await).await;
    }
    app.clock
        .advance(Duration::days(30) + Duration::seconds(31));
    assert_invalid_refresh(app.refresh(&refresh).await).await;
}

async fn a_disabled_users_refresh_token_is_refused(backend: Backend) {
    let app = TestApp::spawn_with(backend, ROTATION_ON).await;
    let (id, _, refresh) = app.user_with_tokens("gone@example.com").await;
    app.store
        .set_user_active(id, false, chrono::Utc::now())
        .await
        .unwrap();
    assert_invalid_refresh(app.refresh(&refresh).await).await;
}

async fn by_default_a_refresh_token_is_reused_and_returned_unchanged(backend: Backend) {
    // Arrange: the default mode, as the original's clients expect (they keep the login's
    // refresh token and present it again and again).
    let app = TestApp::spawn(backend).await;
    let (id, _, refresh) = app.user_with_tokens("reuse@example.com").await;
    // Act
    let first = rotate(&app, &refresh).await;
    let second = rotate(&app, &refresh).await;
    let third = rotate(&app, &refresh).await;
    // Assert
    for (access, returned) in [&first, &second, &third] {
        assert_eq!(returned, &refresh, "the refresh token that was sent");
        let (status, body) = status_and_json(app.verify(access).await).await;
        assert_eq!(
            (status, &body["user_id"]),
            (StatusCode::OK, &serde_json::json!(id))
        );
    }
    // Still one row: nothing was rotated.
    let family = app
        .store
        .export_refresh_tokens(chrono::Utc::now())
        .await
        .unwrap();
    assert_eq!(family.len(), 1);
    assert!(family[0].rotated_at.is_none() && family[0].revoked_at.is_none());
}

async fn without_rotation_logout_and_disable_still_end_the_refresh_token(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, logged_out) = app.user_with_tokens("off@example.com").await;
    let (_, other_session) = app.tokens("off@example.com").await;
    rotate(&app, &logged_out).await;
    assert_eq!(app.logout(&logged_out).await.status(), StatusCode::OK);
    assert_invalid_refresh(app.refresh(&logged_out).await).await;
    rotate(&app, &other_session).await;
    let (id, _, disabled) = app.user_with_tokens("off-disabled@example.com").await;
    app.store
        .set_user_active(id, false, chrono::Utc::now())
        .await
        .unwrap();
    assert_invalid_refresh(app.refresh(&disabled).await).await;
    app.clock
        .advance(Duration::days(30) + Duration::seconds(31));
    assert_invalid_refresh(app.refresh(&other_session).await).await;
}

async fn the_grace_window_is_measured_to_the_sub_second(backend: Backend) {
    // Arrange: a 2 s grace, a rotation late in a second (at .9).
    let app = TestApp::spawn_with(
        backend,
        &[
            ("REFRESH_TOKEN_ROTATION", "on"),
            ("REFRESH_REUSE_GRACE_SECONDS", "2"),
        ],
    )
    .await;
    let (_, _, parent) = app.user_with_tokens("subsecond@example.com").await;
    app.clock.advance(Duration::milliseconds(900));
    let (_, child) = rotate(&app, &parent).await;
    // Act + Assert: 1.9 s later it is the same child; 2.05 s later it is theft, although in
    // whole seconds (.9 -> 2.95) only 2 s have passed.
    app.clock.advance(Duration::milliseconds(1900));
    let (_, again) = rotate(&app, &parent).await;
    assert_eq!(again, child);
    app.clock.advance(Duration::milliseconds(150));
    assert_invalid_refresh(app.refresh(&parent).await).await;
    assert_invalid_refresh(app.refresh(&child).await).await;
}
