//! `GET /auth/verify` and `POST /auth/logout-all`'s bearer handling.

use base64::Engine as _;
use chrono::Duration;
use reqwest::StatusCode;
use serde_json::json;

use crate::{dual_backend, helpers::*};

/// Asserts a 401 INVALID_TOKEN with the RFC 6750 challenge.
async fn assert_invalid_token(response: reqwest::Response) {
    assert_eq!(
        header(&response, "www-authenticate").as_deref(),
        Some(r#"Bearer error="invalid_token""#)
    );
    let (status, body) = status_and_json(response).await;
    assert_error(
        status,
        &body,
        StatusCode::UNAUTHORIZED,
        "Invalid or expired token",
        "INVALID_TOKEN",
    );
}

fn b64(value: &serde_json::Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
}

dual_backend!(
    a_valid_access_token_names_its_user,
    a_missing_header_or_another_scheme_is_missing_token,
    garbage_forged_and_refresh_tokens_are_invalid_token,
    expiry_is_enforced_with_the_leeway,
    a_disabled_users_token_stops_verifying,
    a_token_from_another_issuer_or_audience_is_refused,
);

async fn a_valid_access_token_names_its_user(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (id, access, _) = app.user_with_tokens("Test@Example.com").await;
    let (status, body) = status_and_json(app.verify(&access).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        // Registered with EMAIL_VERIFICATION=optional (the default) and not yet verified.
        json!({"valid": true, "user_id": id, "email": "test@example.com", "email_verified": false, "aal": "aal1", "amr": ["pwd"]})
    );
    // The scheme is case-insensitive.
    let response = app
        .client
        .get(app.url("/auth/verify"))
        .header("authorization", format!("bearer {access}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

async fn a_missing_header_or_another_scheme_is_missing_token(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let requests = [
        None,
        Some(""),
        // Another scheme (`Basic ...`) adds why: api_errors::another_authorization_scheme_...
        Some("Bearer"),
        Some("Bearer   "),
    ];
    for value in requests {
        let mut request = app.client.get(app.url("/auth/verify"));
        if let Some(v) = value {
            request = request.header("authorization", v);
        }
        let response = request.send().await.unwrap();
        assert_eq!(
            header(&response, "www-authenticate").as_deref(),
            Some("Bearer"),
            "{value:?}"
        );
        let (status, body) = status_and_json(response).await;
        assert_error(
            status,
            &body,
            StatusCode::UNAUTHORIZED,
            "Authorization header missing",
            "MISSING_TOKEN",
        );
    }
}

async fn garbage_forged_and_refresh_tokens_are_invalid_token(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, access, refresh) = app.user_with_tokens("v@example.com").await;
    let parts: Vec<&str> = access.split('.').collect();
    let alg_none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        parts[1]
    );
    let hs512 = format!(
        "{}.{}.{}",
        b64(&json!({"alg": "HS512", "typ": "JWT"})),
        parts[1],
        parts[2]
    );
    let mut payload: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts[1])
            .unwrap(),
    )
    .unwrap();
    payload["user_id"] = json!(999);
    payload["sub"] = json!("999");
    let edited = format!("{}.{}.{}", parts[0], b64(&payload), parts[2]);
    for token in [
        "garbage".to_owned(),
        "a.b.c".to_owned(),
        alg_none,
        hs512,
        edited,
        refresh,
        format!("{access}.extra"),
        access[..access.len() - 2].to_owned(),
        "x".repeat(9000),
    ] {
        assert_invalid_token(app.verify(&token).await).await;
    }
}

async fn expiry_is_enforced_with_the_leeway(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, access, _) = app.user_with_tokens("exp@example.com").await;
    app.clock
        .advance(Duration::minutes(15) + Duration::seconds(29));
    assert_eq!(app.verify(&access).await.status(), StatusCode::OK);
    app.clock.advance(Duration::seconds(3));
    assert_invalid_token(app.verify(&access).await).await;
}

async fn a_disabled_users_token_stops_verifying(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (id, access, _) = app.user_with_tokens("d@example.com").await;
    app.store
        .set_user_active(id, false, chrono::Utc::now())
        .await
        .unwrap();
    assert_invalid_token(app.verify(&access).await).await;
}

async fn a_token_from_another_issuer_or_audience_is_refused(backend: Backend) {
    let db = TestDb::new(backend).await;
    let clock = auth_service::clock::TestClock::new();
    let other =
        TestApp::spawn_on(db.clone(), clock.clone(), &[("JWT_ISSUER", "someone-else")]).await;
    let (_, foreign, _) = other.user_with_tokens("iss@example.com").await;
    let app = TestApp::spawn_on(db, clock, &[("JWT_AUDIENCE", "shop")]).await;
    assert_invalid_token(app.verify(&foreign).await).await;
    let (access, _) = app.tokens("iss@example.com").await;
    assert_eq!(app.verify(&access).await.status(), StatusCode::OK);
}
