//! `POST /auth/login`, the lockout included.

use chrono::Duration;
use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::json;

use crate::{dual_backend, helpers::*};

const BAD: &str = "WrongPass123";

async fn wrong(app: &TestApp, email: &str) -> StatusCode {
    app.login(email, BAD).await.status()
}

dual_backend!(
    login_returns_tokens_and_no_store_headers,
    expires_in_follows_access_token_expire_minutes,
    wrong_password_and_unknown_email_get_the_same_401,
    short_or_missing_password_is_422_and_not_counted,
    five_failures_lock_the_account_even_for_the_right_password,
    the_lock_ends_after_lockout_minutes,
    failures_outside_the_window_are_forgotten,
    a_successful_login_resets_the_counter,
    unknown_emails_are_locked_out_the_same_way,
    forty_parallel_guesses_get_exactly_five_password_checks,
    a_disabled_account_is_401_only_with_the_right_password,
    a_login_upgrades_a_hash_made_with_another_cost,
    a_malformed_email_at_login_is_422,
);

async fn login_returns_tokens_and_no_store_headers(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.register("test@example.com", PASSWORD).await;
    let response = app.login("TEST@example.com", PASSWORD).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(&response, "cache-control").as_deref(),
        Some("no-store")
    );
    assert_eq!(header(&response, "pragma").as_deref(), Some("no-cache"));
    assert_eq!(header(&response, "x-ratelimit-limit").as_deref(), Some("5"));
    assert_eq!(
        header(&response, "x-ratelimit-remaining").as_deref(),
        Some("5")
    );
    let body = json_of(response).await;
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["expires_in"], 900);
    for field in ["access_token", "refresh_token"] {
        assert_eq!(
            body[field].as_str().unwrap().split('.').count(),
            3,
            "{field} is a JWT"
        );
    }
    assert_eq!(body.as_object().unwrap().len(), 4);
    // Claims: the access token names its user's email (services that verify locally need
    // it) and both tokens carry the session; the refresh token carries no email.
    let access = claims_of(body["access_token"].as_str().unwrap());
    let refresh = claims_of(body["refresh_token"].as_str().unwrap());
    assert_eq!(access["email"], "test@example.com");
    assert_eq!(access["type"], "access");
    assert_eq!(access["sub"], access["user_id"].to_string());
    assert!(
        access["sid"]
            .as_str()
            .is_some_and(|sid| uuid::Uuid::parse_str(sid).is_ok())
    );
    assert_eq!(refresh["sid"], access["sid"]);
    assert_eq!(refresh.get("email"), None);
    for claim in ["iat", "exp", "jti", "iss"] {
        assert!(access.get(claim).is_some(), "{claim}");
    }
}

async fn expires_in_follows_access_token_expire_minutes(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[("ACCESS_TOKEN_EXPIRE_MINUTES", "60")]).await;
    app.register("t@example.com", PASSWORD).await;
    assert_eq!(
        json_of(app.login("t@example.com", PASSWORD).await).await["expires_in"],
        3600
    );
}

async fn wrong_password_and_unknown_email_get_the_same_401(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.register("known@example.com", PASSWORD).await;
    for email in ["known@example.com", "nobody@example.com"] {
        let response = app.login(email, BAD).await;
        assert_eq!(
            header(&response, "www-authenticate").as_deref(),
            Some("Bearer")
        );
        assert_eq!(
            header(&response, "x-ratelimit-remaining").as_deref(),
            Some("4")
        );
        assert_eq!(header(&response, "x-ratelimit-limit").as_deref(), Some("5"));
        let reset: u64 = header(&response, "x-ratelimit-reset")
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            (899..=900).contains(&reset),
            "seconds to the window's end: {reset}"
        );
        let (status, body) = status_and_json(response).await;
        assert_error(
            status,
            &body,
            StatusCode::UNAUTHORIZED,
            "Invalid email or password",
            "INVALID_CREDENTIALS",
        );
    }
}

async fn short_or_missing_password_is_422_and_not_counted(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.register("v@example.com", PASSWORD).await;
    for _ in 0..6 {
        let (status, body) = status_and_json(app.login("v@example.com", "short").await).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(body["error_code"], "VALIDATION_ERROR");
        assert_eq!(body["errors"][0]["field"], "password");
    }
    let (status, body) = status_and_json(
        app.post_json("/auth/login", &json!({"email": "v@example.com"}))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        body["errors"],
        json!([{"field": "password", "message": "required"}])
    );
    assert_eq!(
        app.login("v@example.com", PASSWORD).await.status(),
        StatusCode::OK
    );
}

async fn five_failures_lock_the_account_even_for_the_right_password(backend: Backend) {
    // Arrange
    let app = TestApp::spawn(backend).await;
    app.register("lock@example.com", PASSWORD).await;
    // Act
    let mut remaining = Vec::new();
    for _ in 0..5 {
        let response = app.login("lock@example.com", BAD).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        remaining.push(header(&response, "x-ratelimit-remaining").unwrap());
    }
    let locked = app.login("lock@example.com", PASSWORD).await;
    // Assert
    assert_eq!(remaining, ["4", "3", "2", "1", "0"]);
    assert_eq!(locked.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: i64 = header(&locked, "retry-after").unwrap().parse().unwrap();
    assert!((899..=900).contains(&retry), "{retry}");
    assert_eq!(
        header(&locked, "x-ratelimit-remaining").as_deref(),
        Some("0")
    );
    let reset: i64 = header(&locked, "x-ratelimit-reset")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        reset, retry,
        "X-RateLimit-Reset is the lockout's end while locked"
    );
    let until = (app.clock_now_truncated() + Duration::minutes(15))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let body = json_of(locked).await;
    assert_eq!(body["error_code"], "TOO_MANY_ATTEMPTS");
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("Too many login attempts. Try again after "),
        "{detail}"
    );
    let shown = chrono::DateTime::parse_from_rfc3339(detail.rsplit(' ').next().unwrap()).unwrap();
    let expected = chrono::DateTime::parse_from_rfc3339(&until).unwrap();
    assert!(
        (shown - expected).num_seconds().abs() <= 1,
        "{detail} vs {until}"
    );
}

async fn the_lock_ends_after_lockout_minutes(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.register("later@example.com", PASSWORD).await;
    for _ in 0..5 {
        assert_eq!(
            wrong(&app, "later@example.com").await,
            StatusCode::UNAUTHORIZED
        );
    }
    app.clock.advance(Duration::minutes(14));
    assert_eq!(
        app.login("later@example.com", PASSWORD).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    app.clock
        .advance(Duration::minutes(1) + Duration::seconds(1));
    assert_eq!(
        app.login("later@example.com", PASSWORD).await.status(),
        StatusCode::OK
    );
}

async fn failures_outside_the_window_are_forgotten(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.register("w@example.com", PASSWORD).await;
    for _ in 0..4 {
        wrong(&app, "w@example.com").await;
    }
    app.clock
        .advance(Duration::minutes(15) + Duration::seconds(1));
    let response = app.login("w@example.com", BAD).await;
    assert_eq!(
        header(&response, "x-ratelimit-remaining").as_deref(),
        Some("4")
    );
    for _ in 0..3 {
        assert_eq!(wrong(&app, "w@example.com").await, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        app.login("w@example.com", PASSWORD).await.status(),
        StatusCode::OK
    );
}

async fn a_successful_login_resets_the_counter(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.register("reset@example.com", PASSWORD).await;
    for _ in 0..4 {
        wrong(&app, "reset@example.com").await;
    }
    assert_eq!(
        app.login("reset@example.com", PASSWORD).await.status(),
        StatusCode::OK
    );
    for _ in 0..5 {
        assert_eq!(
            wrong(&app, "reset@example.com").await,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        wrong(&app, "reset@example.com").await,
        StatusCode::TOO_MANY_REQUESTS
    );
}

async fn unknown_emails_are_locked_out_the_same_way(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for _ in 0..5 {
        assert_eq!(
            wrong(&app, "ghost@example.com").await,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        wrong(&app, "ghost@example.com").await,
        StatusCode::TOO_MANY_REQUESTS
    );
}

async fn forty_parallel_guesses_get_exactly_five_password_checks(backend: Backend) {
    // Arrange
    let app = TestApp::spawn(backend).await;
    app.register("burst@example.com", PASSWORD).await;
    // Act
    let statuses: Vec<StatusCode> =
        join_all((0..40).map(|_| wrong(&app, "burst@example.com"))).await;
    // Assert
    let unauthorized = statuses
        .iter()
        .filter(|s| **s == StatusCode::UNAUTHORIZED)
        .count();
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!((unauthorized, refused), (5, 35), "{statuses:?}");
    // Even the right password is refused now.
    assert_eq!(
        app.login("burst@example.com", PASSWORD).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

async fn a_disabled_account_is_401_only_with_the_right_password(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (id, _, _) = app.user_with_tokens("off@example.com").await;
    assert!(
        app.store
            .set_user_active(id, false, chrono::Utc::now())
            .await
            .unwrap()
    );
    let (status, body) = status_and_json(app.login("off@example.com", PASSWORD).await).await;
    assert_error(
        status,
        &body,
        StatusCode::UNAUTHORIZED,
        "Account is disabled",
        "ACCOUNT_DISABLED",
    );
    let (status, body) = status_and_json(app.login("off@example.com", BAD).await).await;
    assert_error(
        status,
        &body,
        StatusCode::UNAUTHORIZED,
        "Invalid email or password",
        "INVALID_CREDENTIALS",
    );
}

async fn a_login_upgrades_a_hash_made_with_another_cost(backend: Backend) {
    // Arrange: a user hashed at cost 4, then the service restarted at cost 5.
    let app = TestApp::spawn(backend).await;
    let (id, _, _) = app.user_with_tokens("cost@example.com").await;
    let old = app
        .store
        .find_user_by_id(id)
        .await
        .unwrap()
        .unwrap()
        .password_hash;
    assert!(old.starts_with("$2b$04$"));
    let (db, clock) = (app.db.clone(), app.clock.clone());
    app.stop().await;
    let app = TestApp::spawn_on(db, clock, &[("BCRYPT_ROUNDS", "5")]).await;
    // Act
    assert_eq!(
        app.login("cost@example.com", "WrongPass123").await.status(),
        StatusCode::UNAUTHORIZED
    );
    let unchanged = app
        .store
        .find_user_by_id(id)
        .await
        .unwrap()
        .unwrap()
        .password_hash;
    assert_eq!(unchanged, old, "a failed login changes nothing");
    assert_eq!(
        app.login("cost@example.com", PASSWORD).await.status(),
        StatusCode::OK
    );
    // Assert
    let new = app
        .store
        .find_user_by_id(id)
        .await
        .unwrap()
        .unwrap()
        .password_hash;
    assert!(new.starts_with("$2b$05$"), "{new}");
    assert_eq!(
        app.login("cost@example.com", PASSWORD).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        app.store
            .find_user_by_id(id)
            .await
            .unwrap()
            .unwrap()
            .password_hash,
        new,
        "no re-hash at the right cost"
    );
}

async fn a_malformed_email_at_login_is_422(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (status, body) = status_and_json(app.login("not-an-email", PASSWORD).await).await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "Invalid email format",
        "INVALID_EMAIL",
    );
}

impl TestApp {
    /// The app clock's time to whole seconds.
    pub fn clock_now_truncated(&self) -> chrono::DateTime<chrono::Utc> {
        use auth_service::clock::Clock as _;
        use chrono::DurationRound as _;
        self.clock
            .now()
            .duration_trunc(Duration::seconds(1))
            .unwrap()
    }
}
