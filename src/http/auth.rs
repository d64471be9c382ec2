//! Registration, login, refresh and logout: the routes and their DTOs. Each handler extracts, calls one [`AuthService`] method
//! and shapes the success; every failure is an [`ApiError`].

use axum::{
    Json,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::Response,
};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    errors::{ApiError, ErrorBody},
    extract::{AppJson, AuthUser, RequestCaller},
    mfa::{MfaRequiredBody, mfa_required},
    responses::{BodyErrors, MessageResponse, TokenResponse, attempt_headers, tokens},
};
use crate::{
    service::{AuthService, mfa::SignIn},
    state::AppState,
};

/// The account's own routes: registration, login, refresh and logout. Rate limited and cut by
/// the request timeout, as every body-reading route (see `http::api`).
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(login))
        .routes(routes!(refresh))
        .routes(routes!(logout))
        .routes(routes!(logout_all))
}

/// `POST /auth/register` body.
#[derive(Deserialize, ToSchema)]
pub struct RegisterRequest {
    /// Email address; trimmed and lower-cased.
    #[schema(example = "newuser@example.com")]
    pub email: String,
    /// At least 8 characters, with a lower-case letter, an upper-case letter and a digit; at
    /// most 72 bytes.
    #[schema(example = "SecurePass123", format = Password)]
    pub password: String,
}

/// `POST /auth/register` success.
#[derive(Serialize, ToSchema)]
pub struct RegisterResponse {
    /// The new user's id.
    #[schema(example = 123)]
    pub user_id: i64,
    /// The normalised email.
    #[schema(example = "newuser@example.com")]
    pub email: String,
    /// Always `User registered successfully`.
    #[schema(example = "User registered successfully")]
    pub message: String,
}

/// `POST /auth/login` body.
#[derive(Deserialize, ToSchema)]
pub struct LoginRequest {
    /// Email address.
    #[schema(example = "test@example.com")]
    pub email: String,
    /// The password (at least 8 characters, as the original's schema required).
    #[schema(value_type = String, example = "SecurePass123", format = Password, min_length = 8)]
    pub password: LoginPassword,
}

/// A login password: shorter than 8 characters is a 422 `VALIDATION_ERROR` on `password`
/// (the original's schema rule), refused while the body is read, so it is never counted as an
/// attempt.
#[derive(Deserialize)]
#[serde(try_from = "String")]
pub struct LoginPassword(pub String);

impl TryFrom<String> for LoginPassword {
    type Error = &'static str;

    fn try_from(password: String) -> Result<Self, Self::Error> {
        if password.chars().count() < 8 {
            return Err("Password must be at least 8 characters long");
        }
        Ok(Self(password))
    }
}

/// `POST /auth/refresh` and `POST /auth/logout` body.
#[derive(Deserialize, ToSchema)]
pub struct RefreshRequest {
    /// A refresh token from `/auth/login` or `/auth/refresh`.
    pub refresh_token: String,
}

/// `POST /auth/register`: create a user.
#[utoipa::path(post, path = "/auth/register", tag = "auth", summary = "Create a user", request_body = RegisterRequest,
    responses(
        (status = 201, description = "User created", body = RegisterResponse),
        (status = 409, description = "Email already registered (USER_EXISTS)", body = ErrorBody),
        BodyErrors,
    ))]
pub async fn register(
    State(auth): State<AuthService>,
    RequestCaller(caller): RequestCaller,
    AppJson(req): AppJson<RegisterRequest>,
) -> Result<(StatusCode, Json<RegisterResponse>), ApiError> {
    let user = auth
        .register(&req.email, SecretString::from(req.password), &caller)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(RegisterResponse {
            user_id: user.id,
            email: user.email,
            message: "User registered successfully".to_owned(),
        }),
    ))
}

/// `POST /auth/login`: exchange email and password for an access and a refresh token.
#[utoipa::path(post, path = "/auth/login", tag = "auth", summary = "Exchange email and password for tokens", request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in", body = TokenResponse, headers(
            ("X-RateLimit-Limit" = u32, description = "Failed attempts allowed per window"),
            ("X-RateLimit-Remaining" = u32, description = "Failed attempts left before the lockout"),
            ("X-RateLimit-Reset" = u64, description = "Seconds until the window or lockout ends"),
        )),
        (status = 401, description = "INVALID_CREDENTIALS or ACCOUNT_DISABLED; MFA_REQUIRED (the password was right and the user has a second factor: no tokens, an `mfa_token` for `POST /auth/mfa/verify`)", body = MfaRequiredBody),
        (status = 403, description = "EMAIL_NOT_VERIFIED (with EMAIL_VERIFICATION=required, after the password checked out)", body = ErrorBody),
        BodyErrors,
    ))]
pub async fn login(
    State(auth): State<AuthService>,
    RequestCaller(caller): RequestCaller,
    AppJson(req): AppJson<LoginRequest>,
) -> (HeaderMap, Result<Response, ApiError>) {
    let outcome = auth
        .login(&req.email, SecretString::from(req.password.0), &caller)
        .await;
    let answer = outcome.result.map(|signed_in| match signed_in {
        SignIn::Tokens(pair) => tokens(pair),
        SignIn::SecondFactor(challenge) => mfa_required(challenge),
    });
    (
        attempt_headers(outcome.status),
        answer.map_err(ApiError::from),
    )
}

/// `POST /auth/refresh`: exchange a refresh token for a new access token; with
/// `REFRESH_TOKEN_ROTATION=on`, also a new refresh token (the one sent stops working).
#[utoipa::path(post, path = "/auth/refresh", tag = "auth", summary = "Exchange a refresh token for a new access token", request_body = RefreshRequest,
    description = "Two modes, set by `REFRESH_TOKEN_ROTATION`. `off` (the default, as the original): the refresh token stays valid until it expires or is logged out, and the answer's `refresh_token` is the token that was sent. `on`: each refresh token works once; the answer carries a new one, and presenting a used token again after `REFRESH_REUSE_GRACE_SECONDS` revokes the whole session (theft detection).",
    responses(
        (status = 200, description = "A new access token; with rotation on, a new refresh token too", body = TokenResponse),
        (status = 401, description = "INVALID_REFRESH_TOKEN", body = ErrorBody),
        BodyErrors,
    ))]
pub async fn refresh(
    State(auth): State<AuthService>,
    RequestCaller(caller): RequestCaller,
    AppJson(req): AppJson<RefreshRequest>,
) -> Result<Response, ApiError> {
    Ok(tokens(auth.refresh(&req.refresh_token, &caller).await?))
}

/// `POST /auth/logout`: revoke a refresh token (and its family). Always 200.
#[utoipa::path(post, path = "/auth/logout", tag = "auth", summary = "Revoke a refresh token and its session", request_body = RefreshRequest,
    responses(
        (status = 200, description = "Logged out", body = MessageResponse),
        BodyErrors,
    ))]
pub async fn logout(
    State(auth): State<AuthService>,
    RequestCaller(caller): RequestCaller,
    AppJson(req): AppJson<RefreshRequest>,
) -> Result<Json<MessageResponse>, ApiError> {
    auth.logout(&req.refresh_token, &caller).await?;
    Ok(MessageResponse::json("Successfully logged out"))
}

/// `POST /auth/logout-all`: revoke every refresh token of the bearer's user.
#[utoipa::path(post, path = "/auth/logout-all", tag = "auth", summary = "Revoke every session of the bearer's user", security(("bearer" = [])),
    responses(
        (status = 200, description = "Logged out everywhere", body = MessageResponse),
        (status = 401, description = "MISSING_TOKEN or INVALID_TOKEN", body = ErrorBody),
        (status = 429, description = "RATE_LIMITED, with Retry-After", body = ErrorBody),
        (status = 503, description = "Database unavailable (SERVICE_UNAVAILABLE)", body = ErrorBody),
    ))]
pub async fn logout_all(
    State(auth): State<AuthService>,
    RequestCaller(caller): RequestCaller,
    AuthUser(user): AuthUser,
) -> Result<Json<MessageResponse>, ApiError> {
    auth.logout_all(user.id, &caller).await?;
    Ok(MessageResponse::json(
        "Successfully logged out from all devices",
    ))
}
