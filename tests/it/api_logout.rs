//! `POST /auth/logout` and `POST /auth/logout-all`.

use reqwest::StatusCode;
use serde_json::json;

use crate::{dual_backend, helpers::*};

dual_backend!(
    logout_revokes_the_refresh_token,
    logout_answers_200_for_any_string,
    logout_all_revokes_every_session_of_the_user_only,
    logout_all_needs_a_valid_access_token,
);

async fn logout_revokes_the_refresh_token(backend: Backend) {
    // Arrange: two sessions of one user; the first refreshes until it is logged out.
    let app = TestApp::spawn(backend).await;
    let (_, access, refresh) = app.user_with_tokens("out@example.com").await;
    let (_, other) = app.tokens("out@example.com").await;
    assert_eq!(app.refresh(&refresh).await.status(), StatusCode::OK);
    // Act
    let (status, body) = status_and_json(app.logout(&refresh).await).await;
    // Assert: that session's tokens are dead, as the refresh error says; the other lives.
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"message": "Successfully logged out"}));
    assert_eq!(
        status_and_json(app.refresh(&refresh).await).await,
        (
            StatusCode::UNAUTHORIZED,
            json!({"detail": "Invalid or expired refresh token", "error_code": "INVALID_REFRESH_TOKEN"})
        )
    );
    assert_eq!(app.verify(&access).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(app.refresh(&other).await.status(), StatusCode::OK);
    // Idempotent.
    assert_eq!(app.logout(&refresh).await.status(), StatusCode::OK);
}

async fn logout_answers_200_for_any_string(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for token in ["", "garbage", "a.b.c"] {
        let (status, body) = status_and_json(app.logout(token).await).await;
        assert_eq!(
            (status, body),
            (
                StatusCode::OK,
                json!({"message": "Successfully logged out"})
            )
        );
    }
    let (status, body) = status_and_json(app.post_json("/auth/logout", &json!({})).await).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error_code"], "VALIDATION_ERROR");
    assert_eq!(body["errors"][0]["field"], "refresh_token");
}

async fn logout_all_revokes_every_session_of_the_user_only(backend: Backend) {
    // Arrange
    let app = TestApp::spawn(backend).await;
    let (_, access, phone) = app.user_with_tokens("all@example.com").await;
    let (_, laptop) = app.tokens("all@example.com").await;
    let (_, _, someone_else) = app.user_with_tokens("other@example.com").await;
    // Act
    let response = app.logout_all(&access).await;
    // Assert
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"message": "Successfully logged out from all devices"})
    );
    for token in [&phone, &laptop] {
        assert_eq!(app.refresh(token).await.status(), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(app.refresh(&someone_else).await.status(), StatusCode::OK);
}

async fn logout_all_needs_a_valid_access_token(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, _, refresh) = app.user_with_tokens("x@example.com").await;
    let (status, body) = status_and_json(
        app.client
            .post(app.url("/auth/logout-all"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_error(
        status,
        &body,
        StatusCode::UNAUTHORIZED,
        "Authorization header missing",
        "MISSING_TOKEN",
    );
    let response = app.logout_all(&refresh).await;
    let (status, body) = status_and_json(response).await;
    assert_error(
        status,
        &body,
        StatusCode::UNAUTHORIZED,
        "Invalid or expired token",
        "INVALID_TOKEN",
    );
}
