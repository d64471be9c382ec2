//! Passkeys over real sockets, on both databases, with webauthn-authenticator-rs's software
//! passkey as the authenticator: registration, the list, a discoverable sign-in at aal2,
//! removal, notification mails; every refusal the contract lists (wrong origin, wrong RP ID, a
//! replayed or another user's ceremony, an unknown credential, no user verification, a tampered
//! signature, a counter that went backwards, a deleted or disabled user, an unverified address);
//! the step-up rule; a ceremony started on one replica and finished on another; the per-IP
//! bucket and purge over unauthenticated starts; and the audit trail of the built binary.
//!
//! The software passkey answers options, not a browser's discovery: for a sign-in the test
//! plays the browser, naming the credential the user picked (`allowCredentials`) and passing on
//! the user handle the authenticator keeps, as a platform authenticator returns it.

use auth_service::{
    clock::{Clock as _, TestClock},
    store::Purge,
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::Duration;
use reqwest::StatusCode;
use serde_json::{Value, json};
use webauthn_authenticator_rs::{WebauthnAuthenticator as _, softpasskey::SoftPasskey};
use webauthn_rs_proto::{CreationChallengeResponse, RequestChallengeResponse};

use crate::{
    dual_backend,
    helpers::*,
    second_factor::{code_at, delete_bearer, next_step, post_bearer, with_subject},
    smtp_sink::SmtpSink,
};

dual_backend!(
    a_passkey_is_registered_listed_signs_in_at_aal2_and_is_removed,
    registrations_that_do_not_verify_are_refused,
    sign_ins_that_do_not_verify_are_refused,
    a_deleted_disabled_or_unverified_user_cannot_sign_in_with_a_passkey,
    registering_and_removing_a_passkey_follow_the_step_up_rule,
    a_ceremony_started_on_one_replica_finishes_on_another,
    unauthenticated_starts_fall_under_the_bucket_and_expire,
);

/// The origin of the shop's pages (a default of `WEBAUTHN_ORIGINS`).
const ORIGIN: &str = "http://localhost:3000";

/// A software passkey and what the browser knows of the credential it made.
pub struct Device {
    authenticator: SoftPasskey,
    /// base64url of the credential id.
    credential_id: String,
    /// base64url of the user handle the authenticator keeps.
    user_handle: String,
}

impl Device {
    /// What the browser keeps of `credential`, made by `authenticator` for creation `options`.
    fn made(authenticator: SoftPasskey, credential: &Value, options: &Value) -> Self {
        Self {
            authenticator,
            credential_id: credential["rawId"].as_str().unwrap().to_owned(),
            user_handle: options["publicKey"]["user"]["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        }
    }
}

/// A new software passkey that performs user verification.
fn soft_passkey() -> SoftPasskey {
    SoftPasskey::new(true)
}

/// `POST` with a Bearer token and no body.
async fn post_empty(app: &TestApp, path: &str, token: &str) -> (StatusCode, Value) {
    status_and_json(post_bearer(app, path, token, &json!({})).await).await
}

/// `POST /auth/passkeys/register/start`: (ceremony id, options).
async fn register_start(app: &TestApp, access: &str) -> (String, Value) {
    let (status, body) = post_empty(app, "/auth/passkeys/register/start", access).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    (
        body["ceremony_id"].as_str().unwrap().to_owned(),
        body["options"].clone(),
    )
}

/// The authenticator's answer to creation `options` from `origin`, as the browser's JSON. The
/// software passkey keeps no credentials of its own (it refuses `requireResidentKey`), so the
/// test, playing the browser, drops that requirement; the first test checks that the service
/// asks for it, and discovery is played at sign-in (see [`assert_with`]).
fn create(authenticator: &mut SoftPasskey, origin: &str, options: &Value) -> Value {
    let mut options = options.clone();
    if let Some(selection) = options["publicKey"]["authenticatorSelection"].as_object_mut() {
        selection.insert("requireResidentKey".into(), json!(false));
        selection.insert("residentKey".into(), json!("discouraged"));
    }
    let options: CreationChallengeResponse = serde_json::from_value(options).unwrap();
    let credential = authenticator
        .do_registration(url::Url::parse(origin).unwrap(), options)
        .expect("the software passkey answers");
    serde_json::to_value(credential).unwrap()
}

async fn register_finish(
    app: &TestApp,
    access: &str,
    ceremony: &str,
    credential: &Value,
) -> (StatusCode, Value) {
    status_and_json(
        post_bearer(
            app,
            "/auth/passkeys/register/finish",
            access,
            &json!({"ceremony_id": ceremony, "credential": credential, "name": "Test key"}),
        )
        .await,
    )
    .await
}

/// Registers a new software passkey for the holder of `access`.
pub async fn registered(app: &TestApp, access: &str) -> Device {
    let mut authenticator = soft_passkey();
    let (ceremony, options) = register_start(app, access).await;
    let credential = create(&mut authenticator, ORIGIN, &options);
    let (status, body) = register_finish(app, access, &ceremony, &credential).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    Device::made(authenticator, &credential, &options)
}

/// `POST /auth/passkeys/login/start`: (ceremony id, options).
async fn login_start(app: &TestApp) -> (String, Value) {
    let (status, body) = status_and_json(
        app.post_json("/auth/passkeys/login/start", &json!({}))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    (
        body["ceremony_id"].as_str().unwrap().to_owned(),
        body["options"].clone(),
    )
}

/// The device's assertion for request `options` from `origin`: the browser names the credential
/// the user picked and passes on the user handle.
fn assert_with(device: &mut Device, origin: &str, options: &Value) -> Value {
    let mut options = options.clone();
    options["publicKey"]["allowCredentials"] =
        json!([{"type": "public-key", "id": device.credential_id}]);
    let options: RequestChallengeResponse = serde_json::from_value(options).unwrap();
    let assertion = device
        .authenticator
        .do_authentication(url::Url::parse(origin).unwrap(), options)
        .expect("the software passkey answers");
    let mut assertion = serde_json::to_value(assertion).unwrap();
    assertion["response"]["userHandle"] = json!(device.user_handle);
    assertion
}

async fn login_finish(app: &TestApp, ceremony: &str, credential: &Value) -> (StatusCode, Value) {
    status_and_json(
        app.post_json(
            "/auth/passkeys/login/finish",
            &json!({"ceremony_id": ceremony, "credential": credential}),
        )
        .await,
    )
    .await
}

/// A whole sign-in with `device`.
async fn sign_in(app: &TestApp, device: &mut Device) -> (StatusCode, Value) {
    let (ceremony, options) = login_start(app).await;
    let assertion = assert_with(device, ORIGIN, &options);
    login_finish(app, &ceremony, &assertion).await
}

#[track_caller]
fn assert_sign_in_failed(status: StatusCode, body: &Value) {
    assert_error(
        status,
        body,
        StatusCode::UNAUTHORIZED,
        "Passkey sign-in failed",
        "INVALID_PASSKEY",
    );
}

#[track_caller]
fn assert_registration_failed(status: StatusCode, body: &Value) {
    assert_error(
        status,
        body,
        StatusCode::BAD_REQUEST,
        "Passkey verification failed",
        "INVALID_PASSKEY",
    );
}

#[track_caller]
fn assert_invalid_ceremony(status: StatusCode, body: &Value) {
    assert_error(
        status,
        body,
        StatusCode::BAD_REQUEST,
        "Invalid or expired ceremony",
        "INVALID_CEREMONY",
    );
}

/// `GET /auth/passkeys`: the list.
async fn passkeys(app: &TestApp, access: &str) -> Vec<Value> {
    let (status, body) = status_and_json(app.get_bearer("/auth/passkeys", access).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["passkeys"].as_array().unwrap().clone()
}

/// Flips one bit of a base64url field of `credential`'s response.
fn tampered(credential: &Value, field: &str) -> Value {
    let mut credential = credential.clone();
    let mut bytes = URL_SAFE_NO_PAD
        .decode(credential["response"][field].as_str().unwrap())
        .unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    credential["response"][field] = json!(URL_SAFE_NO_PAD.encode(bytes));
    credential
}

async fn a_passkey_is_registered_listed_signs_in_at_aal2_and_is_removed(backend: Backend) {
    // Arrange: a user signed in with the password, and a sink for the notifications.
    let (app, sink) = SmtpSink::with_app(
        backend,
        &[("EMAIL_VERIFICATION", "off"), ("MAIL_PRODUCT_NAME", "Shop")],
    )
    .await;
    let email = "passkey@example.com";
    let (user_id, access, _) = app.user_with_tokens(email).await;

    // Act: start a registration.
    let (ceremony, options) = register_start(&app, &access).await;
    // Assert: a discoverable credential with user verification, for this RP, nothing excluded.
    let public_key = &options["publicKey"];
    assert_eq!(public_key["rp"]["id"], "localhost", "{options}");
    assert_eq!(public_key["rp"]["name"], "Shop", "{options}");
    assert_eq!(public_key["user"]["name"], email, "{options}");
    let selection = &public_key["authenticatorSelection"];
    assert_eq!(selection["userVerification"], "required", "{options}");
    assert_eq!(selection["residentKey"], "required", "{options}");
    assert_eq!(selection["requireResidentKey"], true, "{options}");
    assert!(
        public_key["excludeCredentials"]
            .as_array()
            .is_none_or(Vec::is_empty),
        "{options}"
    );
    // The user handle is random, not the user's id or email.
    let handle = URL_SAFE_NO_PAD
        .decode(public_key["user"]["id"].as_str().unwrap())
        .unwrap();
    assert_eq!(handle.len(), 16);
    assert_ne!(handle, user_id.to_be_bytes().to_vec());

    // Act: the authenticator answers; finish.
    let mut authenticator = soft_passkey();
    let credential = create(&mut authenticator, ORIGIN, &options);
    let (status, body) = register_finish(&app, &access, &ceremony, &credential).await;
    // Assert: 201 with the passkey; it is listed, unused; a notification went out.
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["name"], "Test key");
    let passkey_id = body["passkey_id"].as_str().unwrap().to_owned();
    assert!(body["created_at"].as_str().is_some(), "{body}");
    let list = passkeys(&app, &access).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["passkey_id"], passkey_id.as_str());
    assert_eq!(list[0]["last_used_at"], Value::Null);
    let added = with_subject(&sink, email, "A passkey was added", 1).await;
    assert!(added[0].text().contains("Shop"), "{}", added[0].text());
    let mut device = Device::made(authenticator, &credential, &options);

    // A second registration excludes the first passkey and keeps the user handle.
    let (_, options) = register_start(&app, &access).await;
    assert_eq!(
        options["publicKey"]["excludeCredentials"][0]["id"],
        device.credential_id.as_str(),
        "{options}"
    );
    assert_eq!(
        options["publicKey"]["user"]["id"],
        device.user_handle.as_str()
    );

    // Act: a discoverable sign-in.
    let (ceremony, options) = login_start(&app).await;
    // Assert: no email asked, no credentials named, user verification required.
    assert_eq!(options["publicKey"]["userVerification"], "required");
    assert!(
        options["publicKey"]
            .get("allowCredentials")
            .is_none_or(|a| a.as_array().is_some_and(Vec::is_empty))
    );
    assert!(options.get("mediation").is_none(), "{options}");
    let assertion = assert_with(&mut device, ORIGIN, &options);
    let (status, body) = login_finish(&app, &ceremony, &assertion).await;
    // Assert: a new session at aal2 signed in with a passkey, the login answer's shape.
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "bearer");
    let passkey_access = body["access_token"].as_str().unwrap().to_owned();
    let claims = claims_of(&passkey_access);
    assert_eq!(claims["acr"], "aal2", "{claims}");
    assert_eq!(claims["amr"], json!(["hwk"]), "{claims}");
    assert_eq!(claims["sub"], user_id.to_string());
    assert_ne!(claims["sid"], claims_of(&access)["sid"]);
    let (status, verified) = status_and_json(app.verify(&passkey_access).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(verified["aal"], "aal2", "{verified}");
    assert_eq!(verified["amr"], json!(["hwk"]), "{verified}");
    // A refresh keeps the level.
    let (status, refreshed) =
        status_and_json(app.refresh(body["refresh_token"].as_str().unwrap()).await).await;
    assert_eq!(status, StatusCode::OK, "{refreshed}");
    assert_eq!(
        claims_of(refreshed["access_token"].as_str().unwrap())["acr"],
        "aal2"
    );
    // The list shows the use; a second sign-in works too (the counter moved forward).
    assert!(passkeys(&app, &access).await[0]["last_used_at"].is_string());
    let (status, body) = sign_in(&app, &mut device).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Act: remove it (unknown, malformed and another user's ids first).
    let (_, other_access, _) = app.user_with_tokens("other@example.com").await;
    for (token, id) in [
        (&access, uuid::Uuid::new_v4().to_string()),
        (&access, "not-a-uuid".to_owned()),
        (&other_access, passkey_id.clone()),
    ] {
        let (status, body) = status_and_json(
            delete_bearer(&app, &format!("/auth/passkeys/{id}"), token, &json!({})).await,
        )
        .await;
        assert_error(
            status,
            &body,
            StatusCode::NOT_FOUND,
            "Passkey not found",
            "PASSKEY_NOT_FOUND",
        );
    }
    let (status, body) = status_and_json(
        delete_bearer(
            &app,
            &format!("/auth/passkeys/{passkey_id}"),
            &access,
            &json!({}),
        )
        .await,
    )
    .await;
    // Assert: gone from the list, a notification, and it signs in no more.
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"message": "Passkey removed"}));
    assert!(passkeys(&app, &access).await.is_empty());
    with_subject(&sink, email, "A passkey was removed", 1).await;
    let (status, body) = sign_in(&app, &mut device).await;
    assert_sign_in_failed(status, &body);
    // Passwords are untouched throughout.
    assert_eq!(app.login(email, PASSWORD).await.status(), StatusCode::OK);
}

async fn registrations_that_do_not_verify_are_refused(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        &[(
            "WEBAUTHN_ORIGINS",
            "http://localhost:3000,https://other.localhost:3000",
        )],
    )
    .await;
    let (_, access, _) = app.user_with_tokens("refused@example.com").await;
    let (_, other_access, _) = app.user_with_tokens("someone@example.com").await;
    let attempt = |origin: &'static str, edit: fn(&mut Value), authenticator: SoftPasskey| {
        let app = &app;
        let access = access.clone();
        async move {
            let mut authenticator = authenticator;
            let (ceremony, mut options) = register_start(app, &access).await;
            edit(&mut options);
            let credential = create(&mut authenticator, origin, &options);
            register_finish(app, &access, &ceremony, &credential).await
        }
    };
    // A page of another origin.
    let (status, body) = attempt("http://localhost:4000", |_| {}, soft_passkey()).await;
    assert_registration_failed(status, &body);
    // Another RP ID (from an allowed origin on it): the authenticator scopes the key to it.
    let (status, body) = attempt(
        "https://other.localhost:3000",
        |o| o["publicKey"]["rp"]["id"] = json!("other.localhost"),
        soft_passkey(),
    )
    .await;
    assert_registration_failed(status, &body);
    // No user verification: the client asked for none, the authenticator did none.
    let (status, body) = attempt(
        ORIGIN,
        |o| {
            o["publicKey"]["authenticatorSelection"]["userVerification"] = json!("discouraged");
        },
        soft_passkey(),
    )
    .await;
    assert_registration_failed(status, &body);
    // Another challenge.
    let (status, body) = attempt(
        ORIGIN,
        |o| o["publicKey"]["challenge"] = json!(URL_SAFE_NO_PAD.encode([7u8; 32])),
        soft_passkey(),
    )
    .await;
    assert_registration_failed(status, &body);
    // A tampered attestation.
    let mut authenticator = soft_passkey();
    let (ceremony, options) = register_start(&app, &access).await;
    let credential = create(&mut authenticator, ORIGIN, &options);
    let (status, body) = register_finish(
        &app,
        &access,
        &ceremony,
        &tampered(&credential, "clientDataJSON"),
    )
    .await;
    assert_registration_failed(status, &body);
    // The ceremony was used up by that attempt: the genuine credential comes too late.
    let (status, body) = register_finish(&app, &access, &ceremony, &credential).await;
    assert_invalid_ceremony(status, &body);

    // Another user's ceremony is refused and stays usable by its owner.
    let (ceremony, options) = register_start(&app, &access).await;
    let credential = create(&mut authenticator, ORIGIN, &options);
    let (status, body) = register_finish(&app, &other_access, &ceremony, &credential).await;
    assert_invalid_ceremony(status, &body);
    let (status, body) = register_finish(&app, &access, &ceremony, &credential).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // Replayed: the same finish again.
    let (status, body) = register_finish(&app, &access, &ceremony, &credential).await;
    assert_invalid_ceremony(status, &body);
    // Unknown, malformed, expired.
    for id in [uuid::Uuid::new_v4().to_string(), "nope".to_owned()] {
        let (status, body) = register_finish(&app, &access, &id, &credential).await;
        assert_invalid_ceremony(status, &body);
    }
    let (ceremony, options) = register_start(&app, &access).await;
    let credential = create(&mut soft_passkey(), ORIGIN, &options);
    app.clock
        .advance(Duration::minutes(5) + Duration::seconds(1));
    let (status, body) = register_finish(&app, &access, &ceremony, &credential).await;
    assert_invalid_ceremony(status, &body);
    // A credential that is not one, and a body without one.
    let (ceremony, _) = register_start(&app, &access).await;
    let (status, body) =
        register_finish(&app, &access, &ceremony, &json!({"id": "x", "type": 3})).await;
    assert_registration_failed(status, &body);
    let (status, body) = status_and_json(
        post_bearer(
            &app,
            "/auth/passkeys/register/finish",
            &access,
            &json!({"ceremony_id": ceremony}),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error_code"], "VALIDATION_ERROR");
    // A label over 64 characters.
    let (status, body) = status_and_json(
        post_bearer(
            &app,
            "/auth/passkeys/register/finish",
            &access,
            &json!({"ceremony_id": ceremony, "credential": {}, "name": "x".repeat(65)}),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    // No token.
    let (status, body) = status_and_json(
        app.post_json("/auth/passkeys/register/start", &json!({}))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error_code"], "MISSING_TOKEN");
    // Only the one genuine registration was stored.
    assert_eq!(passkeys(&app, &access).await.len(), 1);
}

async fn sign_ins_that_do_not_verify_are_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, access, _) = app.user_with_tokens("careful@example.com").await;
    let mut device = registered(&app, &access).await;

    // A page of another origin.
    let (ceremony, options) = login_start(&app).await;
    let assertion = assert_with(&mut device, "http://localhost:4000", &options);
    let (status, body) = login_finish(&app, &ceremony, &assertion).await;
    assert_sign_in_failed(status, &body);
    // No user verification.
    let (ceremony, mut options) = login_start(&app).await;
    options["publicKey"]["userVerification"] = json!("discouraged");
    let assertion = assert_with(&mut device, ORIGIN, &options);
    let (status, body) = login_finish(&app, &ceremony, &assertion).await;
    assert_sign_in_failed(status, &body);
    // A tampered signature, and tampered authenticator data.
    for field in ["signature", "authenticatorData"] {
        let (ceremony, options) = login_start(&app).await;
        let assertion = tampered(&assert_with(&mut device, ORIGIN, &options), field);
        let (status, body) = login_finish(&app, &ceremony, &assertion).await;
        assert_sign_in_failed(status, &body);
    }
    // Another user handle than the passkey's.
    let (ceremony, options) = login_start(&app).await;
    let mut assertion = assert_with(&mut device, ORIGIN, &options);
    assertion["response"]["userHandle"] = json!(URL_SAFE_NO_PAD.encode([9u8; 16]));
    let (status, body) = login_finish(&app, &ceremony, &assertion).await;
    assert_sign_in_failed(status, &body);
    // A credential the service never stored (registration started, never finished).
    let (_, options) = register_start(&app, &access).await;
    let mut stranger = soft_passkey();
    let credential = create(&mut stranger, ORIGIN, &options);
    let mut stranger = Device::made(stranger, &credential, &options);
    let (status, body) = sign_in(&app, &mut stranger).await;
    assert_sign_in_failed(status, &body);
    // A genuine sign-in works, once per ceremony: replayed, the same finish is refused.
    let (ceremony, options) = login_start(&app).await;
    let assertion = assert_with(&mut device, ORIGIN, &options);
    let (status, body) = login_finish(&app, &ceremony, &assertion).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = login_finish(&app, &ceremony, &assertion).await;
    assert_sign_in_failed(status, &body);
    // An unknown, malformed or expired ceremony.
    for id in [uuid::Uuid::new_v4().to_string(), "nope".to_owned()] {
        let (status, body) = login_finish(&app, &id, &assertion).await;
        assert_sign_in_failed(status, &body);
    }
    let (ceremony, options) = login_start(&app).await;
    let assertion = assert_with(&mut device, ORIGIN, &options);
    app.clock
        .advance(Duration::minutes(5) + Duration::seconds(1));
    let (status, body) = login_finish(&app, &ceremony, &assertion).await;
    assert_sign_in_failed(status, &body);
    // Not an assertion at all; no credential.
    let (ceremony, _) = login_start(&app).await;
    let (status, body) = login_finish(&app, &ceremony, &json!({"id": 1})).await;
    assert_sign_in_failed(status, &body);
    let (status, body) = status_and_json(
        app.post_json(
            "/auth/passkeys/login/finish",
            &json!({"ceremony_id": ceremony}),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    // A counter that went backwards: the service saw a higher one (a clone signed meanwhile).
    let (status, _) = sign_in(&app, &mut device).await;
    assert_eq!(status, StatusCode::OK);
    let row = app
        .store
        .find_passkey_by_credential(&URL_SAFE_NO_PAD.decode(&device.credential_id).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(
        row.sign_count >= 1,
        "the software passkey counts its signatures"
    );
    let mut raised: Value = serde_json::from_str(&row.credential).unwrap();
    raised["cred"]["counter"] = json!(1000);
    app.db
        .execute(&format!(
            "update passkeys set sign_count = 1000, credential = '{}'",
            raised.to_string().replace('\'', "''")
        ))
        .await;
    let (status, body) = sign_in(&app, &mut device).await;
    assert_sign_in_failed(status, &body);
}

async fn a_deleted_disabled_or_unverified_user_cannot_sign_in_with_a_passkey(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[("EMAIL_VERIFICATION", "off")]).await;
    // Disabled: as login answers.
    let email = "disabled@example.com";
    let (_, access, _) = app.user_with_tokens(email).await;
    let mut device = registered(&app, &access).await;
    let db = app.db.clone();
    let out = cli(&db, &["user", "disable", email], "");
    assert!(out.status.success(), "{out:?}");
    let (status, body) = sign_in(&app, &mut device).await;
    assert_error(
        status,
        &body,
        StatusCode::UNAUTHORIZED,
        "Account is disabled",
        "ACCOUNT_DISABLED",
    );
    // Deleted: the passkey went with the user.
    let email = "deleted@example.com";
    let (_, access, _) = app.user_with_tokens(email).await;
    let mut device = registered(&app, &access).await;
    let (status, body) = status_and_json(
        delete_bearer(&app, "/auth/me", &access, &json!({"password": PASSWORD})).await,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = sign_in(&app, &mut device).await;
    assert_sign_in_failed(status, &body);
    let db = app.stop().await;

    // Unverified under EMAIL_VERIFICATION=required: as login answers.
    let app = TestApp::spawn_on(db, TestClock::new(), &[("EMAIL_VERIFICATION", "required")]).await;
    let email = "unverified@example.com";
    let registered_user = app.register(email, PASSWORD).await;
    assert_eq!(registered_user.status(), StatusCode::CREATED);
    app.db
        .execute(&format!(
            "update users set email_verified_at = created_at where email = '{email}'"
        ))
        .await;
    let (access, _) = app.tokens(email).await;
    let mut device = registered(&app, &access).await;
    app.db
        .execute(&format!(
            "update users set email_verified_at = null where email = '{email}'"
        ))
        .await;
    let (status, body) = sign_in(&app, &mut device).await;
    assert_error(
        status,
        &body,
        StatusCode::FORBIDDEN,
        "Email not verified",
        "EMAIL_NOT_VERIFIED",
    );
}

async fn registering_and_removing_a_passkey_follow_the_step_up_rule(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[("EMAIL_VERIFICATION", "off")]).await;
    // A user with a passkey, then a second factor.
    let (_, first_access, _) = app.user_with_tokens("stepup@example.com").await;
    let mut device = registered(&app, &first_access).await;
    let user = enrol_totp(&app, "stepup@example.com").await;
    let passkey_id = passkeys(&app, &user.access).await[0]["passkey_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // An aal1 session (password alone, from before the confirmation) may do neither.
    let step_up = |status: StatusCode, body: &Value| {
        assert_error(
            status,
            body,
            StatusCode::FORBIDDEN,
            "A second factor is required for this action",
            "MFA_STEP_UP_REQUIRED",
        );
    };
    let (status, body) = post_empty(&app, "/auth/passkeys/register/start", &user.aal1_access).await;
    step_up(status, &body);
    let (ceremony, options) = register_start(&app, &user.access).await;
    let credential = create(&mut soft_passkey(), ORIGIN, &options);
    let (status, body) = register_finish(&app, &user.aal1_access, &ceremony, &credential).await;
    step_up(status, &body);
    let path = format!("/auth/passkeys/{passkey_id}");
    let (status, body) =
        status_and_json(delete_bearer(&app, &path, &user.aal1_access, &json!({})).await).await;
    step_up(status, &body);
    // The list needs no step-up.
    assert_eq!(passkeys(&app, &user.aal1_access).await.len(), 1);
    // aal2 sessions may: the confirmation's, and a passkey's own.
    let (status, body) = register_finish(&app, &user.access, &ceremony, &credential).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = sign_in(&app, &mut device).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let passkey_access = body["access_token"].as_str().unwrap();
    let (status, body) =
        status_and_json(delete_bearer(&app, &path, passkey_access, &json!({})).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // A passkey sign-in skips the TOTP step: it is the stronger factor itself.
    assert_eq!(
        claims_of(passkey_access)["amr"],
        json!(["hwk"]),
        "one step, no code"
    );
}

/// An existing user's sessions around a TOTP enrolment.
struct SteppedUp {
    /// The enrolling session's access token from before its confirmation (aal1).
    aal1_access: String,
    /// The confirmation's access token (aal2).
    access: String,
}

/// Signs `email` in with the password and confirms a TOTP factor from that session.
async fn enrol_totp(app: &TestApp, email: &str) -> SteppedUp {
    let (aal1_access, _) = app.tokens(email).await;
    let (status, body) = post_empty(app, "/auth/mfa/totp", &aal1_access).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let factor = body["factor_id"].as_str().unwrap();
    let code = code_at(body["secret"].as_str().unwrap(), app.clock.now());
    let (status, confirmed) = status_and_json(
        post_bearer(
            app,
            &format!("/auth/mfa/totp/{factor}/confirm"),
            &aal1_access,
            &json!({"code": code}),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{confirmed}");
    next_step(app);
    SteppedUp {
        aal1_access,
        access: confirmed["access_token"].as_str().unwrap().to_owned(),
    }
}

async fn a_ceremony_started_on_one_replica_finishes_on_another(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let replica = TestApp::spawn_on(app.db.clone(), app.clock.clone(), &[]).await;
    let (_, access, _) = app.user_with_tokens("replicas@example.com").await;
    // Registration: start here, finish there.
    let mut authenticator = soft_passkey();
    let (ceremony, options) = register_start(&app, &access).await;
    let credential = create(&mut authenticator, ORIGIN, &options);
    let (status, body) = register_finish(&replica, &access, &ceremony, &credential).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let mut device = Device::made(authenticator, &credential, &options);
    // Sign-in: start there, finish here; the replay on the first replica is refused.
    let (ceremony, options) = login_start(&replica).await;
    let assertion = assert_with(&mut device, ORIGIN, &options);
    let (status, body) = login_finish(&app, &ceremony, &assertion).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = login_finish(&replica, &ceremony, &assertion).await;
    assert_sign_in_failed(status, &body);
}

async fn unauthenticated_starts_fall_under_the_bucket_and_expire(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        &[("RATE_LIMIT_PER_SECOND", "1"), ("RATE_LIMIT_BURST", "5")],
    )
    .await;
    // The per-IP bucket: a burst of starts, then 429.
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(
            app.post_json("/auth/passkeys/login/start", &json!({}))
                .await
                .status(),
        );
    }
    assert!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    let started = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    assert!((1..=6).contains(&started), "{statuses:?}");
    assert_eq!(ceremonies(&app).await, i64::try_from(started).unwrap());
    // Expired ceremonies are purged.
    app.clock.advance(Duration::minutes(6));
    let now = app.clock.now();
    app.store
        .purge_batch(Purge::PasskeyCeremonies(now), 1000)
        .await
        .unwrap();
    assert_eq!(ceremonies(&app).await, 0);
}

/// Rows in `passkey_ceremonies`.
async fn ceremonies(app: &TestApp) -> i64 {
    app.db
        .count("select count(*) from passkey_ceremonies")
        .await
}

/// POSTs `body` to the binary, with `bearer` when given; the JSON answer.
async fn post_to(binary: &Binary, path: &str, bearer: Option<&str>, body: &Value) -> Value {
    let mut request = reqwest::Client::new().post(binary.url(path)).json(body);
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap().json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_records_passkey_events_without_secrets() {
    // Arrange: the built binary, logging JSON; a user signed in with the password.
    // A real mail transport (nobody listening): `MAIL_URL=log` logs each mail's address by design.
    let mut binary = Binary::spawn(&[
        ("JWT_SECRET_KEY", SECRET),
        ("BCRYPT_ROUNDS", "4"),
        ("MAIL_URL", "smtp://127.0.0.1:1?tls=off"),
        ("MAIL_FROM", "no-reply@shop.example.com"),
    ]);
    assert!(tokio::task::block_in_place(|| binary.wait_ready()));
    let email = "audited@example.com";
    post_to(
        &binary,
        "/auth/register",
        None,
        &json!({"email": email, "password": PASSWORD}),
    )
    .await;
    let tokens = post_to(
        &binary,
        "/auth/login",
        None,
        &json!({"email": email, "password": PASSWORD}),
    )
    .await;
    let access = tokens["access_token"].as_str().unwrap();
    // Act: add a passkey, sign in with it, fail a sign-in, remove it.
    let started = post_to(
        &binary,
        "/auth/passkeys/register/start",
        Some(access),
        &json!({}),
    )
    .await;
    let mut authenticator = soft_passkey();
    let credential = create(&mut authenticator, ORIGIN, &started["options"]);
    let added = post_to(
        &binary,
        "/auth/passkeys/register/finish",
        Some(access),
        &json!({"ceremony_id": started["ceremony_id"], "credential": credential}),
    )
    .await;
    let mut device = Device::made(authenticator, &credential, &started["options"]);
    for tamper in [false, true] {
        let started = post_to(&binary, "/auth/passkeys/login/start", None, &json!({})).await;
        let mut assertion = assert_with(&mut device, ORIGIN, &started["options"]);
        if tamper {
            assertion = tampered(&assertion, "signature");
        }
        post_to(
            &binary,
            "/auth/passkeys/login/finish",
            None,
            &json!({"ceremony_id": started["ceremony_id"], "credential": assertion}),
        )
        .await;
    }
    let removed = reqwest::Client::new()
        .delete(binary.url(&format!(
            "/auth/passkeys/{}",
            added["passkey_id"].as_str().unwrap()
        )))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status(), StatusCode::OK);
    let (code, stdout, _) = tokio::task::block_in_place(|| binary.terminate());
    // Assert: one event per action, with the user; no email, credential or token in the log.
    assert_eq!(code, Some(0));
    let events: Vec<(String, String, bool)> = stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("every line is JSON"))
        .filter(|l| l["target"] == "audit" && l["event"].as_str().unwrap().starts_with("passkey"))
        .map(|l| {
            (
                l["event"].as_str().unwrap().to_owned(),
                l["outcome"].as_str().unwrap().to_owned(),
                l["user.id"].is_i64(),
            )
        })
        .collect();
    let expected = [
        ("passkey_added", "success"),
        ("passkey_login", "success"),
        ("passkey_login", "invalid"),
        ("passkey_removed", "success"),
    ]
    .map(|(e, o)| (e.to_owned(), o.to_owned(), true));
    assert_eq!(events, expected);
    for secret in [
        email,
        access,
        device.credential_id.as_str(),
        device.user_handle.as_str(),
    ] {
        assert!(!stdout.contains(secret), "the log contains {secret}");
    }
}
