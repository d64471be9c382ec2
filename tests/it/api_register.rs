//! `POST /auth/register`.

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::json;

use crate::{dual_backend, helpers::*};

dual_backend!(
    register_returns_201_with_the_normalised_email,
    registering_an_existing_email_in_any_case_is_409,
    invalid_emails_are_422_invalid_email,
    weak_passwords_list_every_reason_in_order,
    common_passwords_are_refused_but_the_documented_example_is_not,
    a_73_byte_password_is_refused_and_72_accepted,
    concurrent_registrations_of_one_email_create_exactly_one_user,
);

async fn register_returns_201_with_the_normalised_email(backend: Backend) {
    // Arrange
    let app = TestApp::spawn(backend).await;
    // Act
    let response = app.register("  NewUser@Example.COM ", PASSWORD).await;
    // Assert
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, StatusCode::CREATED);
    let id = body["user_id"].as_i64().expect("numeric user_id");
    assert!(id > 0);
    assert_eq!(
        body,
        json!({"user_id": id, "email": "newuser@example.com", "message": "User registered successfully"})
    );
    let stored = app
        .store
        .find_user_by_email("newuser@example.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.id, id);
    assert!(
        stored.password_hash.starts_with("$2b$04$"),
        "bcrypt at BCRYPT_ROUNDS"
    );
    assert!(!body.to_string().contains("$2b$"));
}

async fn registering_an_existing_email_in_any_case_is_409(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    assert_eq!(
        app.register("a@example.com", PASSWORD).await.status(),
        StatusCode::CREATED
    );
    for email in ["a@example.com", "A@EXAMPLE.com", " a@example.com"] {
        let (status, body) = status_and_json(app.register(email, PASSWORD).await).await;
        assert_error(
            status,
            &body,
            StatusCode::CONFLICT,
            "User already exists",
            "USER_EXISTS",
        );
    }
}

async fn invalid_emails_are_422_invalid_email(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let too_long = format!("{}@example.com", "a".repeat(243));
    for email in [
        "plain",
        "@example.com",
        "a@b@example.com",
        "a@example",
        "a@example..com",
        "",
        too_long.as_str(),
    ] {
        let (status, body) = status_and_json(app.register(email, PASSWORD).await).await;
        assert_error(
            status,
            &body,
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid email format",
            "INVALID_EMAIL",
        );
    }
}

async fn weak_passwords_list_every_reason_in_order(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let cases = [
        (
            "shrt",
            "Password validation failed: Password must be at least 8 characters long, Password must contain at least one uppercase letter, Password must contain at least one number",
        ),
        (
            "alllowercase1",
            "Password validation failed: Password must contain at least one uppercase letter",
        ),
        (
            "ALLUPPERCASE1",
            "Password validation failed: Password must contain at least one lowercase letter",
        ),
        (
            "NoDigitsHere",
            "Password validation failed: Password must contain at least one number",
        ),
    ];
    for (password, detail) in cases {
        let (status, body) =
            status_and_json(app.register("weak@example.com", password).await).await;
        assert_error(
            status,
            &body,
            StatusCode::UNPROCESSABLE_ENTITY,
            detail,
            "WEAK_PASSWORD",
        );
    }
    assert!(
        app.store
            .find_user_by_email("weak@example.com")
            .await
            .unwrap()
            .is_none()
    );
}

async fn common_passwords_are_refused_but_the_documented_example_is_not(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for password in ["Password123", "Qwerty123", "PASSWORD1"] {
        let (status, body) =
            status_and_json(app.register("common@example.com", password).await).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{password}");
        assert_eq!(body["error_code"], "WEAK_PASSWORD");
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .ends_with("Password is too common"),
            "{body}"
        );
    }
    assert_eq!(
        app.register("common@example.com", "SecurePass123")
            .await
            .status(),
        StatusCode::CREATED
    );
}

async fn a_73_byte_password_is_refused_and_72_accepted(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let long = format!("Aa1{}", "x".repeat(70));
    let (status, body) = status_and_json(app.register("long@example.com", &long).await).await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "Password validation failed: Password is too long (maximum 72 bytes)",
        "WEAK_PASSWORD",
    );
    let exact = format!("Aa1{}", "x".repeat(69));
    assert_eq!(
        app.register("long@example.com", &exact).await.status(),
        StatusCode::CREATED
    );
    // Not truncated: the 73-byte variant of a 72-byte password does not log in.
    assert_eq!(
        app.login("long@example.com", &exact).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        app.login("long@example.com", &format!("{exact}y"))
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
}

async fn concurrent_registrations_of_one_email_create_exactly_one_user(backend: Backend) {
    // Arrange
    let app = TestApp::spawn(backend).await;
    // Act
    let responses = join_all((0..20).map(|i| {
        let email = if i % 2 == 0 {
            "race@example.com"
        } else {
            "RACE@example.com"
        };
        app.register(email, PASSWORD)
    }))
    .await;
    // Assert
    let statuses: Vec<StatusCode> = responses.iter().map(reqwest::Response::status).collect();
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CONFLICT)
            .count(),
        19,
        "{statuses:?}"
    );
}
