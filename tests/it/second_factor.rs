//! The second factor over real sockets, on both databases: enrolment and its confirmation,
//! sign-in with a code or a recovery code, step-up, the step-up rule, replay and guessing
//! limits (also under concurrency and across replicas), assurance in tokens and refreshes,
//! notification mails, `user mfa-reset`, and the secrets sealed at rest with `keys reencrypt`.
//! Codes are computed with totp-rs at the injected clock's time.

use std::time::Duration as StdDuration;

use auth_service::clock::Clock as _;
use chrono::{DateTime, Duration, Utc};
use futures::future::join_all;
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};

use crate::{
    dual_backend,
    helpers::*,
    local_verification::{FEED_TOKEN, KeyFiles, feed, ready, refuses, signing_with},
    smtp_sink::SmtpSink,
};

/// How long a queued mail may take to reach the sink.
const MAIL_WITHIN: StdDuration = StdDuration::from_secs(10);

/// A data key (base64 of 32 bytes), and another.
const KEY_ONE: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
const KEY_TWO: &str = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";

dual_backend!(
    enrolment_is_confirmed_by_a_right_code_and_ends_the_other_sessions,
    sign_in_asks_for_the_second_factor_then_a_code_or_a_recovery_code_completes_it,
    a_code_works_once_and_one_step_of_skew_is_accepted_but_not_two,
    concurrent_uses_of_one_code_or_recovery_code_let_one_win_on_any_replica,
    forty_parallel_wrong_codes_check_five_and_refuse_thirty_five,
    sensitive_actions_need_a_step_up_once_a_factor_is_confirmed,
    a_refresh_keeps_the_level_of_its_session,
    a_reset_by_mail_keeps_the_factor_and_mfa_reset_removes_it,
    factors_are_limited_listed_and_removed_with_their_recovery_codes,
    secrets_are_sealed_under_the_data_key_and_reencrypt_moves_them,
);

/// The TOTP code of `secret` (base32) at `at`.
pub fn code_at(secret: &str, at: DateTime<Utc>) -> String {
    let secret = totp_rs::Secret::try_from_base32(secret).unwrap();
    totp_rs::Builder::new()
        .with_secret(secret)
        .build()
        .unwrap()
        .generate(u64::try_from(at.timestamp()).unwrap())
        .to_string()
}

/// The code at the app's clock now.
pub fn code_now(app: &TestApp, secret: &str) -> String {
    code_at(secret, app.clock.now())
}

/// Moves the app's clock to the next 30-second step (so a new code is not a replay).
pub fn next_step(app: &TestApp) {
    app.clock.advance(Duration::seconds(30));
}

pub async fn post_bearer(app: &TestApp, path: &str, token: &str, body: &Value) -> Response {
    app.client
        .post(app.url(path))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap()
}

pub async fn delete_bearer(app: &TestApp, path: &str, token: &str, body: &Value) -> Response {
    app.client
        .delete(app.url(path))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap()
}

/// `POST /auth/mfa/totp`: (factor id, secret, the whole body).
pub async fn enrol(app: &TestApp, access: &str) -> (String, String, Value) {
    let (status, body) =
        status_and_json(post_bearer(app, "/auth/mfa/totp", access, &json!({})).await).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    (
        body["factor_id"].as_str().unwrap().to_owned(),
        body["secret"].as_str().unwrap().to_owned(),
        body,
    )
}

pub async fn confirm(app: &TestApp, access: &str, factor: &str, code: &str) -> (StatusCode, Value) {
    status_and_json(
        post_bearer(
            app,
            &format!("/auth/mfa/totp/{factor}/confirm"),
            access,
            &json!({ "code": code }),
        )
        .await,
    )
    .await
}

/// A user with a confirmed factor.
pub struct Enrolled {
    pub id: i64,
    pub email: String,
    pub factor: String,
    pub secret: String,
    /// The access token of the enrolling session from before its confirmation (aal1).
    pub aal1_access: String,
    /// The confirmation's tokens (aal2).
    pub access: String,
    pub recovery_codes: Vec<String>,
}

pub async fn enrolled(app: &TestApp, email: &str) -> Enrolled {
    let (id, aal1_access, _) = app.user_with_tokens(email).await;
    let (factor, secret, _) = enrol(app, &aal1_access).await;
    let (status, body) = confirm(app, &aal1_access, &factor, &code_now(app, &secret)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    next_step(app);
    Enrolled {
        id,
        email: email.to_owned(),
        factor,
        secret,
        aal1_access,
        access: body["access_token"].as_str().unwrap().to_owned(),
        recovery_codes: body["recovery_codes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_owned())
            .collect(),
    }
}

/// Logs in with the password; the `mfa_token` of the 401 `MFA_REQUIRED`.
async fn mfa_token(app: &TestApp, email: &str) -> String {
    let (status, body) = status_and_json(app.login(email, PASSWORD).await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error_code"], "MFA_REQUIRED", "{body}");
    body["mfa_token"].as_str().unwrap().to_owned()
}

async fn mfa_verify(app: &TestApp, body: &Value) -> (StatusCode, Value) {
    status_and_json(app.post_json("/auth/mfa/verify", body).await).await
}

#[track_caller]
fn assert_invalid_code(status: StatusCode, body: &Value) {
    assert_error(
        status,
        body,
        StatusCode::UNAUTHORIZED,
        "Invalid code",
        "INVALID_MFA_CODE",
    );
}

async fn enrolment_is_confirmed_by_a_right_code_and_ends_the_other_sessions(backend: Backend) {
    // Arrange: two sessions of one user, and a sink for the notification.
    let (app, sink) = SmtpSink::with_app(
        backend,
        &[
            ("MAIL_PRODUCT_NAME", "Shop & Co"),
            ("EMAIL_VERIFICATION", "off"),
            ("REVOCATION_FEED_TOKENS", FEED_TOKEN),
        ],
    )
    .await;
    let replica = TestApp::spawn_on(app.db.clone(), app.clock.clone(), &[]).await;
    let email = "two-step@example.com";
    let (_, access, refresh) = app.user_with_tokens(email).await;
    let (other_access, other_refresh) = app.tokens(email).await;
    for token in [&access, &other_access] {
        assert_eq!(replica.verify(token).await.status(), StatusCode::OK);
    }
    // Act: enrol.
    let (factor, secret, body) = enrol(&app, &access).await;
    // Assert: the secret (160 bits of base32) and the URI for the QR code.
    assert_eq!(secret.len(), 32, "{body}");
    assert_eq!(
        body["otpauth_uri"],
        format!(
            "otpauth://totp/Shop%20%26%20Co:two%2Dstep%40example%2Ecom?secret={secret}\
             &issuer=Shop%20%26%20Co&algorithm=SHA1&digits=6&period=30"
        )
    );
    // Unconfirmed, the factor changes nothing: the user still logs in with the password.
    assert_eq!(app.login(email, PASSWORD).await.status(), StatusCode::OK);
    // A wrong code, and an unknown, malformed or foreign factor.
    let wrong = if code_now(&app, &secret) == "000000" {
        "111111"
    } else {
        "000000"
    };
    let (status, body) = confirm(&app, &access, &factor, wrong).await;
    assert_invalid_code(status, &body);
    let (_, stranger, _) = app.user_with_tokens("stranger@example.com").await;
    for (token, id) in [
        (access.as_str(), uuid::Uuid::new_v4().to_string()),
        (access.as_str(), "not-a-uuid".to_owned()),
        (stranger.as_str(), factor.clone()),
    ] {
        let (status, body) = confirm(&app, token, &id, &code_now(&app, &secret)).await;
        assert_error(
            status,
            &body,
            StatusCode::NOT_FOUND,
            "Factor not found",
            "FACTOR_NOT_FOUND",
        );
    }
    // Act: the right code.
    let (status, body) = confirm(&app, &access, &factor, &code_now(&app, &secret)).await;
    // Assert: aal2 tokens for the same session, ten recovery codes.
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["message"], "Second factor enabled");
    assert_eq!(body["token_type"], "bearer");
    let codes = body["recovery_codes"].as_array().unwrap();
    assert_eq!(codes.len(), 10);
    let new_access = body["access_token"].as_str().unwrap();
    let claims = claims_of(new_access);
    assert_eq!(claims["acr"], "aal2");
    assert_eq!(claims["amr"], json!(["pwd", "otp"]));
    assert_eq!(claims["sid"], claims_of(&access)["sid"]);
    assert_eq!(claims["auth_time"], claims_of(&access)["auth_time"]);
    let (status, verified) = status_and_json(app.verify(new_access).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(verified["aal"], "aal2");
    assert_eq!(verified["amr"], json!(["pwd", "otp"]));
    // The enrolling session's older access token stays valid, at aal1.
    let (status, verified) = status_and_json(app.verify(&access).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (verified["aal"].clone(), verified["amr"].clone()),
        (json!("aal1"), json!(["pwd"]))
    );
    // Every other session ended at once; this one still refreshes, at aal2.
    assert_eq!(
        app.verify(&other_access).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.refresh(&other_refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );
    // Within a second on another replica, and in the feed, as at logout: that session alone.
    verify_becomes(&replica, &other_access, StatusCode::UNAUTHORIZED).await;
    assert_eq!(replica.verify(&access).await.status(), StatusCode::OK);
    let (status, page) = feed(&app, "").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(refuses(&page, &other_access), "{page}");
    assert!(
        !refuses(&page, &access) && !refuses(&page, new_access),
        "{page}"
    );
    let refreshed = json_of(app.refresh(&refresh).await).await;
    assert_eq!(
        claims_of(refreshed["access_token"].as_str().unwrap())["acr"],
        "aal2"
    );
    // The confirming code's step is used: the same code again is a replay.
    let (status, body) = confirm(&app, new_access, &factor, &code_now(&app, &secret)).await;
    assert_error(
        status,
        &body,
        StatusCode::NOT_FOUND,
        "Factor not found",
        "FACTOR_NOT_FOUND",
    );
    // The notification.
    with_subject(
        &sink,
        email,
        "A second factor was added to your Shop & Co account",
        1,
    )
    .await;
    // The factor is listed.
    let (status, list) =
        status_and_json(app.get_bearer("/auth/mfa/factors", new_access).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["recovery_codes_remaining"], 10);
    assert_eq!(list["factors"].as_array().unwrap().len(), 1);
    assert_eq!(list["factors"][0]["factor_id"], factor.as_str());
    assert_eq!(list["factors"][0]["type"], "totp");
}

async fn sign_in_asks_for_the_second_factor_then_a_code_or_a_recovery_code_completes_it(
    backend: Backend,
) {
    let (app, sink) = SmtpSink::with_app(backend, &[("EMAIL_VERIFICATION", "off")]).await;
    let user = enrolled(&app, "signin@example.com").await;
    // Act: the password.
    let response = app.login(&user.email, PASSWORD).await;
    assert_eq!(
        header(&response, "www-authenticate").as_deref(),
        Some("Bearer")
    );
    let (status, body) = status_and_json(response).await;
    // Assert: no tokens, a challenge and the factors.
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["detail"], "Second factor required");
    assert_eq!(body["error_code"], "MFA_REQUIRED");
    assert_eq!(
        body["factors"],
        json!([{"factor_id": user.factor, "type": "totp"}])
    );
    assert!(body.get("access_token").is_none());
    let token = body["mfa_token"].as_str().unwrap().to_owned();
    // A wrong code leaves the mfa_token usable.
    let (status, body) = mfa_verify(&app, &json!({"mfa_token": token, "code": "12345"})).await;
    assert_invalid_code(status, &body);
    let started = app.clock.now();
    let (status, body) = mfa_verify(
        &app,
        &json!({"mfa_token": token, "code": code_now(&app, &user.secret)}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let claims = claims_of(body["access_token"].as_str().unwrap());
    assert_eq!(claims["acr"], "aal2");
    assert_eq!(claims["amr"], json!(["pwd", "otp"]));
    assert_eq!(claims["auth_time"], started.timestamp());
    assert_ne!(
        claims["sid"],
        claims_of(&user.access)["sid"],
        "a new session"
    );
    // The mfa_token worked once.
    next_step(&app);
    let (status, body) = mfa_verify(
        &app,
        &json!({"mfa_token": token, "code": code_now(&app, &user.secret)}),
    )
    .await;
    assert_error(
        status,
        &body,
        StatusCode::UNAUTHORIZED,
        "Invalid or expired MFA token",
        "INVALID_MFA_TOKEN",
    );
    // An expired one too.
    let expiring = mfa_token(&app, &user.email).await;
    app.clock.advance(Duration::minutes(5));
    let (status, body) = mfa_verify(
        &app,
        &json!({"mfa_token": expiring, "code": code_now(&app, &user.secret)}),
    )
    .await;
    assert_eq!(body["error_code"], "INVALID_MFA_TOKEN", "{status} {body}");
    // A recovery code, once, in any case and with or without the dash.
    let first = &user.recovery_codes[0];
    let (status, body) = mfa_verify(
        &app,
        &json!({"mfa_token": mfa_token(&app, &user.email).await, "recovery_code": first}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let claims = claims_of(body["access_token"].as_str().unwrap());
    assert_eq!(
        (claims["acr"].clone(), claims["amr"].clone()),
        (json!("aal2"), json!(["pwd", "rec"]))
    );
    let again = mfa_token(&app, &user.email).await;
    let (status, body) =
        mfa_verify(&app, &json!({"mfa_token": again, "recovery_code": first})).await;
    assert_invalid_code(status, &body);
    let second = user.recovery_codes[1].replace('-', "").to_uppercase();
    let (status, body) =
        mfa_verify(&app, &json!({"mfa_token": again, "recovery_code": second})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let list = json_of(app.get_bearer("/auth/mfa/factors", &user.access).await).await;
    assert_eq!(list["recovery_codes_remaining"], 8);
    // Each use was mailed (after the enrolment's notice).
    with_subject(&sink, &user.email, "A recovery code was used", 2).await;
    // Both or neither of code and recovery_code, or no mfa_token: 422.
    for bad in [
        json!({"mfa_token": again, "code": "123456", "recovery_code": first}),
        json!({"mfa_token": again}),
        json!({"code": "123456"}),
        json!({"mfa_token": again, "code": 123_456}),
    ] {
        let (status, body) = mfa_verify(&app, &bad).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
        assert_eq!(body["error_code"], "VALIDATION_ERROR", "{bad}: {body}");
    }
}

async fn a_code_works_once_and_one_step_of_skew_is_accepted_but_not_two(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let user = enrolled(&app, "skew@example.com").await;
    // Clear of the confirming code's step, and the one after it.
    next_step(&app);
    let token = mfa_token(&app, &user.email).await;
    let now = app.clock.now();
    let attempt = |offset: i64| {
        let code = code_at(&user.secret, now + Duration::seconds(offset));
        let body = json!({"mfa_token": token, "code": code});
        let app = &app;
        async move { mfa_verify(app, &body).await }
    };
    // Two steps off either way: refused.
    for offset in [-60, 60] {
        let (status, body) = attempt(offset).await;
        assert_invalid_code(status, &body);
    }
    // One step behind: accepted (a new sign-in needs a new mfa_token each time).
    let (status, body) = attempt(-30).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = mfa_token(&app, &user.email).await;
    // The same code again: a replay.
    let (status, body) = mfa_verify(
        &app,
        &json!({"mfa_token": token, "code": code_at(&user.secret, now - Duration::seconds(30))}),
    )
    .await;
    assert_invalid_code(status, &body);
    // One step ahead: accepted; then the current step, now older than the newest used: refused.
    let (status, body) = mfa_verify(
        &app,
        &json!({"mfa_token": token, "code": code_at(&user.secret, now + Duration::seconds(30))}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = mfa_token(&app, &user.email).await;
    let (status, body) = mfa_verify(
        &app,
        &json!({"mfa_token": token, "code": code_at(&user.secret, now)}),
    )
    .await;
    assert_invalid_code(status, &body);
}

async fn concurrent_uses_of_one_code_or_recovery_code_let_one_win_on_any_replica(backend: Backend) {
    let one = TestApp::spawn_with(backend, &[("RATE_LIMIT_PER_SECOND", "0")]).await;
    let two = TestApp::spawn_on(
        one.db.clone(),
        one.clock.clone(),
        &[("RATE_LIMIT_PER_SECOND", "0")],
    )
    .await;
    let user = enrolled(&one, "race@example.com").await;
    // Four sign-ins race one code, on two replicas.
    let mut tokens = Vec::new();
    for _ in 0..4 {
        tokens.push(mfa_token(&one, &user.email).await);
    }
    let code = code_now(&one, &user.secret);
    let results = join_all(tokens.iter().enumerate().map(|(i, token)| {
        let app = if i % 2 == 0 { &one } else { &two };
        let body = json!({"mfa_token": token, "code": code});
        async move { mfa_verify(app, &body).await }
    }))
    .await;
    let won = results.iter().filter(|(s, _)| *s == StatusCode::OK).count();
    assert_eq!(won, 1, "{results:?}");
    for (status, body) in results.iter().filter(|(s, _)| *s != StatusCode::OK) {
        assert_invalid_code(*status, body);
    }
    // The used code, on the other replica, later: refused.
    let token = mfa_token(&two, &user.email).await;
    let (status, body) = mfa_verify(&two, &json!({"mfa_token": token, "code": code})).await;
    assert_invalid_code(status, &body);
    // A fresh window for the guess counter, then four sign-ins race one recovery code.
    one.clock.advance(Duration::minutes(16));
    let mut tokens = Vec::new();
    for _ in 0..4 {
        tokens.push(mfa_token(&one, &user.email).await);
    }
    let recovery = &user.recovery_codes[0];
    let results = join_all(tokens.iter().enumerate().map(|(i, token)| {
        let app = if i % 2 == 0 { &one } else { &two };
        let body = json!({"mfa_token": token, "recovery_code": recovery});
        async move { mfa_verify(app, &body).await }
    }))
    .await;
    let won = results.iter().filter(|(s, _)| *s == StatusCode::OK).count();
    assert_eq!(won, 1, "{results:?}");
}

async fn forty_parallel_wrong_codes_check_five_and_refuse_thirty_five(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[("RATE_LIMIT_PER_SECOND", "0")]).await;
    let user = enrolled(&app, "guess@example.com").await;
    let token = mfa_token(&app, &user.email).await;
    let right = code_now(&app, &user.secret);
    let wrong = if right == "000000" {
        "111111"
    } else {
        "000000"
    };
    // Act: forty wrong codes at once.
    let results = join_all((0..40).map(|_| {
        let response = app
            .client
            .post(app.url("/auth/mfa/verify"))
            .json(&json!({"mfa_token": token, "code": wrong}))
            .send();
        async move {
            let response = response.await.unwrap();
            let retry_after = header(&response, "retry-after");
            let (status, body) = status_and_json(response).await;
            (status, body, retry_after)
        }
    }))
    .await;
    // Assert: five checked, thirty-five refused unchecked.
    let checked = results
        .iter()
        .filter(|(s, b, _)| *s == StatusCode::UNAUTHORIZED && b["error_code"] == "INVALID_MFA_CODE")
        .count();
    let refused: Vec<_> = results
        .iter()
        .filter(|(s, _, _)| *s == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert_eq!((checked, refused.len()), (5, 35), "{results:?}");
    for (_, body, retry_after) in &refused {
        assert_eq!(body["error_code"], "TOO_MANY_ATTEMPTS");
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .starts_with("Too many login attempts. Try again after ")
        );
        assert!(retry_after.is_some());
    }
    // Locked: the right code is refused too, also as a step-up.
    let (status, body) = mfa_verify(&app, &json!({"mfa_token": token, "code": right})).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    let (status, _) = status_and_json(
        post_bearer(
            &app,
            "/auth/mfa/verify",
            &user.aal1_access,
            &json!({"code": right}),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    // After the lockout, a right code signs in (and clears the count).
    app.clock.advance(Duration::minutes(16));
    let token = mfa_token(&app, &user.email).await;
    let (status, body) = mfa_verify(
        &app,
        &json!({"mfa_token": token, "code": code_now(&app, &user.secret)}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn sensitive_actions_need_a_step_up_once_a_factor_is_confirmed(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let user = enrolled(&app, "stepup@example.com").await;
    let aal1 = &user.aal1_access;
    // At aal1, each listed action is refused before anything else.
    let refused: Vec<Response> = vec![
        post_bearer(
            &app,
            "/auth/password/change",
            aal1,
            &json!({"current_password": PASSWORD, "new_password": "NewSecurePass456"}),
        )
        .await,
        delete_bearer(&app, "/auth/me", aal1, &json!({"password": PASSWORD})).await,
        post_bearer(&app, "/auth/mfa/totp", aal1, &json!({})).await,
        delete_bearer(
            &app,
            &format!("/auth/mfa/factors/{}", user.factor),
            aal1,
            &json!({}),
        )
        .await,
        post_bearer(&app, "/auth/mfa/recovery-codes", aal1, &json!({})).await,
    ];
    for response in refused {
        let url = response.url().to_string();
        let (status, body) = status_and_json(response).await;
        assert_error(
            status,
            &body,
            StatusCode::FORBIDDEN,
            "A second factor is required for this action",
            "MFA_STEP_UP_REQUIRED",
        );
        assert!(!url.is_empty());
    }
    // Everything else works at aal1.
    assert_eq!(
        app.get_bearer("/auth/sessions", aal1).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        app.get_bearer("/auth/mfa/factors", aal1).await.status(),
        StatusCode::OK
    );
    // Act: step up the aal1 session with a code.
    let (status, body) = status_and_json(
        post_bearer(
            &app,
            "/auth/mfa/verify",
            aal1,
            &json!({"code": code_now(&app, &user.secret)}),
        )
        .await,
    )
    .await;
    // Assert: new tokens for the same session, at aal2.
    assert_eq!(status, StatusCode::OK, "{body}");
    let stepped = body["access_token"].as_str().unwrap().to_owned();
    let claims = claims_of(&stepped);
    assert_eq!(claims["sid"], claims_of(aal1)["sid"]);
    assert_eq!(claims["acr"], "aal2");
    // And every listed action passes at aal2.
    let (status, body) =
        status_and_json(post_bearer(&app, "/auth/mfa/recovery-codes", &stepped, &json!({})).await)
            .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["recovery_codes"].as_array().unwrap().len(), 10);
    let (_, second, _) = enrol(&app, &stepped).await;
    assert!(!second.is_empty());
    let response = post_bearer(
        &app,
        "/auth/password/change",
        &stepped,
        &json!({"current_password": PASSWORD, "new_password": "NewSecurePass456"}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let response = delete_bearer(
        &app,
        &format!("/auth/mfa/factors/{}", user.factor),
        &stepped,
        &json!({}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    // Without a factor, no step-up is asked for (nor possible).
    let (status, body) = status_and_json(
        post_bearer(&app, "/auth/mfa/verify", aal1, &json!({"code": "123456"})).await,
    )
    .await;
    assert_error(
        status,
        &body,
        StatusCode::CONFLICT,
        "No second factor enrolled",
        "MFA_NOT_ENROLLED",
    );
    let response = delete_bearer(
        &app,
        "/auth/me",
        aal1,
        &json!({"password": "NewSecurePass456"}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
}

async fn a_refresh_keeps_the_level_of_its_session(backend: Backend) {
    // EdDSA, so the verifier crate can follow the service too.
    let key = KeyFiles::new(auth_service::keys::AsymmetricAlgorithm::EdDsa);
    let mut vars = signing_with(&key, "");
    vars.push(("REFRESH_TOKEN_ROTATION", "on"));
    let app = TestApp::spawn_with(backend, &vars).await;
    let user = enrolled(&app, "refresh-level@example.com").await;
    let token = mfa_token(&app, &user.email).await;
    let (status, body) = mfa_verify(
        &app,
        &json!({"mfa_token": token, "code": code_now(&app, &user.secret)}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let first = claims_of(body["access_token"].as_str().unwrap());
    let mut refresh = body["refresh_token"].as_str().unwrap().to_owned();
    let verifier =
        auth_verifier::Verifier::start(auth_verifier::VerifierConfig::new(app.url(""), FEED_TOKEN));
    ready(&verifier).await;
    // What `/auth/verify` and a service verifying locally read from it (the verifier crate
    // checks the time claims on the real clock, so before the test clock moves).
    let access = body["access_token"].as_str().unwrap();
    let (_, verified) = status_and_json(app.verify(access).await).await;
    assert_eq!(
        (verified["aal"].clone(), verified["amr"].clone()),
        (json!("aal2"), json!(["pwd", "otp"]))
    );
    let local = verifier.verify(access).await.unwrap();
    assert_eq!(
        (local.aal, local.amr),
        (
            auth_verifier::Aal::Aal2,
            auth_verifier::AuthMethods::PASSWORD.with(auth_verifier::AuthMethod::Otp)
        )
    );
    for _ in 0..2 {
        app.clock.advance(Duration::minutes(20));
        let (status, body) = status_and_json(app.refresh(&refresh).await).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let claims = claims_of(body["access_token"].as_str().unwrap());
        assert_eq!(claims["acr"], "aal2");
        assert_eq!(claims["amr"], json!(["pwd", "otp"]));
        assert_eq!(claims["auth_time"], first["auth_time"]);
        assert_ne!(claims["iat"], first["iat"]);
        refresh = body["refresh_token"].as_str().unwrap().to_owned();
    }
    // A password-only session refreshes at aal1.
    let (_, plain) = {
        app.register("plain@example.com", PASSWORD).await;
        app.tokens("plain@example.com").await
    };
    let body = json_of(app.refresh(&plain).await).await;
    let claims = claims_of(body["access_token"].as_str().unwrap());
    assert_eq!(
        (claims["acr"].clone(), claims["amr"].clone()),
        (json!("aal1"), json!(["pwd"]))
    );
}

async fn a_reset_by_mail_keeps_the_factor_and_mfa_reset_removes_it(backend: Backend) {
    let (app, sink) = SmtpSink::with_app(backend, &[("EMAIL_VERIFICATION", "off")]).await;
    let user = enrolled(&app, "lost-phone@example.com").await;
    let pending = mfa_token(&app, &user.email).await;
    // A reset by mail.
    app.post_json("/auth/password/forgot", &json!({"email": user.email}))
        .await;
    let reset_mail = poll_reset_mail(&sink, &user.email).await;
    let response = app
        .post_json(
            "/auth/password/reset",
            &json!({"token": reset_mail, "new_password": "NewSecurePass456"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    // The challenge of the old password is void; the new password still asks for the factor.
    let (status, body) = mfa_verify(
        &app,
        &json!({"mfa_token": pending, "code": code_now(&app, &user.secret)}),
    )
    .await;
    assert_eq!(body["error_code"], "INVALID_MFA_TOKEN", "{status} {body}");
    let (status, body) = status_and_json(app.login(&user.email, "NewSecurePass456").await).await;
    assert_eq!(
        (status, body["error_code"].clone()),
        (StatusCode::UNAUTHORIZED, json!("MFA_REQUIRED"))
    );
    // Act: the operator removes the factor.
    let out = cli_async(&app.db, &["user", "mfa-reset", &user.email], "").await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("removed the second factor"));
    // Assert: every session ended (within a second here), the password alone signs in.
    let (new_access, _) = {
        let body = json_of(app.login(&user.email, "NewSecurePass456").await).await;
        assert!(body["access_token"].is_string(), "{body}");
        (body["access_token"].as_str().unwrap().to_owned(), ())
    };
    verify_becomes(&app, &user.access, StatusCode::UNAUTHORIZED).await;
    assert_eq!(claims_of(&new_access)["acr"], "aal1");
    let list = json_of(app.get_bearer("/auth/mfa/factors", &new_access).await).await;
    assert_eq!(list, json!({"factors": [], "recovery_codes_remaining": 0}));
    // An unknown user is an error with exit 1.
    let out = cli_async(&app.db, &["user", "mfa-reset", "nobody@example.com"], "").await;
    assert_eq!(out.status.code(), Some(1));
}

/// The token of the reset mail to `to`.
async fn poll_reset_mail(sink: &SmtpSink, to: &str) -> String {
    with_subject(sink, to, "Reset your", 1).await[0].link_token()
}

/// Waits for `n` mails to `to` whose subject contains `needle`; those.
pub async fn with_subject(
    sink: &SmtpSink,
    to: &str,
    needle: &str,
    n: usize,
) -> Vec<crate::smtp_sink::Received> {
    let matching = || {
        sink.for_address(to)
            .into_iter()
            .filter(|m| m.subject().contains(needle))
            .collect::<Vec<_>>()
    };
    poll_until(
        &format!("{n} mails {needle:?} to {to}"),
        MAIL_WITHIN,
        || {
            let found = matching().len() >= n;
            async move { found }
        },
    )
    .await;
    matching()
}

async fn factors_are_limited_listed_and_removed_with_their_recovery_codes(backend: Backend) {
    let (app, sink) = SmtpSink::with_app(backend, &[("EMAIL_VERIFICATION", "off")]).await;
    let user = enrolled(&app, "many@example.com").await;
    let mut access = user.access.clone();
    // Four more: no recovery codes with them, each confirmation keeps the session at aal2.
    for _ in 0..4 {
        let (factor, secret, _) = enrol(&app, &access).await;
        let (status, body) = confirm(&app, &access, &factor, &code_now(&app, &secret)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body.get("recovery_codes").is_none(), "{body}");
        access = body["access_token"].as_str().unwrap().to_owned();
    }
    // A sixth is refused at enrolment.
    let (status, body) =
        status_and_json(post_bearer(&app, "/auth/mfa/totp", &access, &json!({})).await).await;
    assert_error(
        status,
        &body,
        StatusCode::CONFLICT,
        "Too many factors",
        "FACTOR_LIMIT",
    );
    let list = json_of(app.get_bearer("/auth/mfa/factors", &access).await).await;
    let factors: Vec<String> = list["factors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["factor_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(factors.len(), 5);
    assert_eq!(factors[0], user.factor, "oldest first");
    assert_eq!(list["recovery_codes_remaining"], 10);
    // Removing each; the last one takes the recovery codes.
    for (i, factor) in factors.iter().enumerate() {
        let path = format!("/auth/mfa/factors/{factor}");
        let (status, body) =
            status_and_json(delete_bearer(&app, &path, &access, &json!({})).await).await;
        assert_eq!(
            (status, body),
            (StatusCode::OK, json!({"message": "Second factor removed"}))
        );
        let (status, body) =
            status_and_json(delete_bearer(&app, &path, &access, &json!({})).await).await;
        assert_error(
            status,
            &body,
            StatusCode::NOT_FOUND,
            "Factor not found",
            "FACTOR_NOT_FOUND",
        );
        let left = json_of(app.get_bearer("/auth/mfa/factors", &access).await).await;
        let codes = if i < 4 { 10 } else { 0 };
        assert_eq!(left["recovery_codes_remaining"], codes, "{left}");
    }
    let (status, body) =
        status_and_json(post_bearer(&app, "/auth/mfa/recovery-codes", &access, &json!({})).await)
            .await;
    assert_error(
        status,
        &body,
        StatusCode::CONFLICT,
        "No second factor enrolled",
        "MFA_NOT_ENROLLED",
    );
    assert_eq!(
        app.login(&user.email, PASSWORD).await.status(),
        StatusCode::OK
    );
    // Five enrolments and five removals were mailed.
    with_subject(&sink, &user.email, "A second factor was removed", 5).await;
}

async fn secrets_are_sealed_under_the_data_key_and_reencrypt_moves_them(backend: Backend) {
    // Arrange: a factor enrolled under the first key.
    let app = TestApp::spawn_with(backend, &[("DATA_ENCRYPTION_KEY", KEY_ONE)]).await;
    let user = enrolled(&app, "sealed@example.com").await;
    let secret = totp_rs::Secret::try_from_base32(&user.secret)
        .unwrap()
        .to_vec();
    let stored = app.store.confirmed_factors(user.id).await.unwrap();
    let first_key = stored[0].secret_key.clone().expect("sealed");
    assert!(
        !stored[0]
            .secret
            .windows(secret.len())
            .any(|w| w == secret.as_slice())
    );
    if let auth_service::database_url::DatabaseUrl::SqliteFile(path) = &app.db.url {
        app.settled().await;
        let path = path.display().to_string();
        for file in [path.clone(), format!("{path}-wal")] {
            let bytes = std::fs::read(&file).unwrap_or_default();
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_slice()),
                "{file}"
            );
            assert!(
                !bytes
                    .windows(user.secret.len())
                    .any(|w| w == user.secret.as_bytes())
            );
        }
    }
    let db = app.stop().await;
    // A new key with the old one kept as previous: codes still work.
    let app = TestApp::spawn_on(
        db.clone(),
        auth_service::clock::TestClock::new(),
        &[
            ("DATA_ENCRYPTION_KEY", KEY_TWO),
            ("DATA_ENCRYPTION_KEYS_PREVIOUS", KEY_ONE),
        ],
    )
    .await;
    next_step(&app);
    let token = mfa_token(&app, &user.email).await;
    let (status, body) = mfa_verify(
        &app,
        &json!({"mfa_token": token, "code": code_now(&app, &user.secret)}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Act: move every secret to the new key.
    let out = cli_with(
        &db,
        &[
            ("DATA_ENCRYPTION_KEY", KEY_TWO),
            ("DATA_ENCRYPTION_KEYS_PREVIOUS", KEY_ONE),
        ],
        &["keys", "reencrypt"],
        "",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("sealed 1 TOTP secrets"));
    let db = app.stop().await;
    // Assert: the old key is no longer needed.
    let app = TestApp::spawn_on(
        db.clone(),
        auth_service::clock::TestClock::new(),
        &[("DATA_ENCRYPTION_KEY", KEY_TWO)],
    )
    .await;
    let stored = app.store.confirmed_factors(user.id).await.unwrap();
    assert_ne!(stored[0].secret_key.as_deref(), Some(first_key.as_str()));
    app.clock.advance(Duration::minutes(2));
    let token = mfa_token(&app, &user.email).await;
    let (status, body) = mfa_verify(
        &app,
        &json!({"mfa_token": token, "code": code_now(&app, &user.secret)}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Without the key that sealed it, a code cannot be checked: a 500, never a sign-in.
    let db = app.stop().await;
    let app = TestApp::spawn_on(db, auth_service::clock::TestClock::new(), &[]).await;
    app.clock.advance(Duration::minutes(4));
    let token = mfa_token(&app, &user.email).await;
    let (status, body) = mfa_verify(
        &app,
        &json!({"mfa_token": token, "code": code_now(&app, &user.secret)}),
    )
    .await;
    assert_error(
        status,
        &body,
        StatusCode::INTERNAL_SERVER_ERROR,
        "Internal server error",
        "INTERNAL_ERROR",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_data_takes_the_second_factor_along() {
    // Arrange: on SQLite, a user with a factor (one recovery code used) and one without.
    let key = [("DATA_ENCRYPTION_KEY", KEY_ONE)];
    let source = TestApp::spawn_with(Backend::Sqlite, &key).await;
    let user = enrolled(&source, "copied@example.com").await;
    let token = mfa_token(&source, &user.email).await;
    let (status, _) = mfa_verify(
        &source,
        &json!({"mfa_token": token, "recovery_code": user.recovery_codes[0]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    source.user_with_tokens("plain@example.com").await;
    let postgres = TestDb::new(Backend::Postgres).await;
    // Act
    let (from, to) = (source.db.url_string(), postgres.url_string());
    let out = tokio::task::block_in_place(|| {
        cli_with(
            &source.db,
            &key,
            &["copy-data", "--from", &from, "--to", &to],
            "",
        )
    });
    // Assert: the factor came along, sealed as it was; the password alone is not enough.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("copied 2 users (0 skipped), ")
            && stdout.contains(" refresh tokens, 1 second factors and 0 passkeys from "),
        "{stdout}"
    );
    let target = TestApp::spawn_on(postgres, source.clock.clone(), &key).await;
    next_step(&target);
    assert_eq!(
        target.login("plain@example.com", PASSWORD).await.status(),
        StatusCode::OK
    );
    let token = mfa_token(&target, &user.email).await;
    // The used recovery code stays used; an unused one and a code both work.
    let (status, body) = mfa_verify(
        &target,
        &json!({"mfa_token": token, "recovery_code": user.recovery_codes[0]}),
    )
    .await;
    assert_invalid_code(status, &body);
    let (status, body) = mfa_verify(
        &target,
        &json!({"mfa_token": token, "recovery_code": user.recovery_codes[1]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = mfa_token(&target, &user.email).await;
    let (status, body) = mfa_verify(
        &target,
        &json!({"mfa_token": token, "code": code_now(&target, &user.secret)}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        claims_of(body["access_token"].as_str().unwrap())["acr"],
        "aal2"
    );
    let (status, list) = status_and_json(
        target
            .get_bearer("/auth/mfa/factors", body["access_token"].as_str().unwrap())
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["factors"][0]["factor_id"], user.factor.as_str());
    assert_eq!(list["recovery_codes_remaining"], 8);
}
