//! `/auth/*` handlers and their DTOs. Each handler extracts, calls one [`AuthService`] method
//! and shapes the success; every failure is an [`ApiError`].

use std::{sync::Arc, time::Duration};

use auth_verifier::claims::RevocationPage;
use axum::{
    Json, Router,
    extract::{FromRef as _, Request, State},
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{delete, get, post},
};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use tower_http::timeout::TimeoutLayer;
use utoipa::ToSchema;

use super::{
    errors::{ApiError, ErrorBody},
    extract::{AppJson, AppQuery, AuthUser, RequestCaller, bearer_token},
};
use crate::{
    config::Config,
    service::{AuthService, TokenPair, feed, lockout::AttemptStatus},
    state::AppState,
};

/// The `/auth` routes. The per-IP limiter covers every route but `/auth/verify` (what other
/// services call on every request they serve) and the revocation feed.
pub fn router(config: &Config) -> Router<AppState> {
    let limited = Router::new()
        .route("/auth/register", post(register))
        .route("/auth/login", post(login))
        .route("/auth/refresh", post(refresh))
        .route("/auth/logout", post(logout))
        .route("/auth/logout-all", post(logout_all))
        .route("/auth/password/forgot", post(super::recovery::forgot))
        .route("/auth/password/reset", post(super::recovery::reset))
        .route("/auth/email/verify", post(super::recovery::verify_email))
        .route(
            "/auth/email/resend",
            post(super::recovery::resend_verification),
        )
        .route(
            "/auth/password/change",
            post(super::account::change_password),
        )
        .route("/auth/sessions", get(super::account::list_sessions))
        .route("/auth/sessions/{sid}", delete(super::account::end_session))
        .route("/auth/me", delete(super::account::delete_me));
    let limited = match super::rate_limit::layer(config) {
        Some(layer) => limited.route_layer(layer),
        None => limited,
    };
    // The whole-request timeout (408) guards the routes that read a body and hash passwords;
    // `/auth/verify` reads no body and answers from memory, so a timer per call buys nothing.
    let router = limited
        .route_layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            config.server.request_timeout,
        ))
        .route(super::hot_path::VERIFY, get(verify));
    // The feed exists only for the readers `REVOCATION_FEED_TOKENS` names; a long poll is
    // held up to a minute, so it is outside the request timeout too.
    if config.tokens.feed_tokens.is_empty() {
        router
    } else {
        router.route("/auth/revocations", get(revocations))
    }
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

/// Tokens handed out by login and refresh.
#[derive(Serialize, ToSchema)]
pub struct TokenResponse {
    /// Access JWT for `Authorization: Bearer`.
    pub access_token: String,
    /// Refresh JWT: with `REFRESH_TOKEN_ROTATION=off` (the default) the one that was sent;
    /// with `on`, a new one (the old one stops working).
    pub refresh_token: String,
    /// Always `bearer`.
    #[schema(example = "bearer")]
    pub token_type: String,
    /// Access-token lifetime in seconds.
    #[schema(example = 900)]
    pub expires_in: i64,
}

impl From<TokenPair> for TokenResponse {
    fn from(pair: TokenPair) -> Self {
        Self {
            access_token: pair.access_token,
            refresh_token: pair.refresh_token,
            token_type: "bearer".to_owned(),
            expires_in: pair.expires_in,
        }
    }
}

/// A plain confirmation.
#[derive(Serialize, ToSchema)]
pub struct MessageResponse {
    /// What happened.
    pub message: String,
}

impl MessageResponse {
    /// The JSON body `{"message": message}`.
    pub fn json(message: &str) -> Json<Self> {
        Json(Self {
            message: message.to_owned(),
        })
    }
}

/// `GET /auth/verify` success.
#[derive(Serialize, ToSchema)]
pub struct VerifyResponse {
    /// Always true.
    pub valid: bool,
    /// The token owner's id.
    #[schema(example = 123)]
    pub user_id: i64,
    /// The token owner's email.
    #[schema(example = "test@example.com")]
    #[schema(value_type = String)]
    pub email: std::sync::Arc<str>,
    /// Whether the address was verified when the token was issued (additive: the original's
    /// clients see the same fields plus this one).
    pub email_verified: bool,
}

/// The errors every JSON-body endpoint can answer, documented once.
#[derive(utoipa::IntoResponses)]
pub enum BodyErrors {
    /// The request took too long.
    #[response(status = 408, description = "REQUEST_TIMEOUT")]
    Timeout(ErrorBody),
    /// Body over 64 KiB.
    #[response(status = 413, description = "PAYLOAD_TOO_LARGE: body over 64 KiB")]
    TooLarge(ErrorBody),
    /// Body and field problems.
    #[response(
        status = 422,
        description = "INVALID_JSON (not JSON), UNSUPPORTED_MEDIA_TYPE (another content type), VALIDATION_ERROR (missing or mistyped field), INVALID_EMAIL, WEAK_PASSWORD"
    )]
    Validation(ErrorBody),
    /// Rate limits.
    #[response(
        status = 429,
        description = "RATE_LIMITED (per-IP token bucket) or, on login, TOO_MANY_ATTEMPTS (lockout); with Retry-After"
    )]
    TooMany(ErrorBody),
    /// The database does not answer.
    #[response(
        status = 503,
        description = "SERVICE_UNAVAILABLE: the database does not answer; with Retry-After"
    )]
    Unavailable(ErrorBody),
}

/// A token response: never cached (RFC 6749 section 5.1).
fn tokens(pair: TokenPair) -> Response {
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::PRAGMA, "no-cache"),
        ],
        Json(TokenResponse::from(pair)),
    )
        .into_response()
}

/// `X-RateLimit-*` headers of a login response.
pub(super) fn attempt_headers(status: Option<AttemptStatus>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(s) = status {
        for (name, value) in [
            ("x-ratelimit-limit", u64::from(s.limit)),
            ("x-ratelimit-remaining", u64::from(s.remaining)),
            ("x-ratelimit-reset", s.reset_after_secs),
        ] {
            headers.insert(HeaderName::from_static(name), HeaderValue::from(value));
        }
    }
    headers
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
        (status = 401, description = "INVALID_CREDENTIALS or ACCOUNT_DISABLED", body = ErrorBody),
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
    (
        attempt_headers(outcome.status),
        outcome.result.map(tokens).map_err(ApiError::from),
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

/// `GET /auth/verify`: who an access token belongs to.
#[utoipa::path(get, path = "/auth/verify", tag = "auth", summary = "Who an access token belongs to", security(("bearer" = [])),
    responses(
        (status = 200, description = "Valid token", body = VerifyResponse),
        (status = 401, description = "MISSING_TOKEN or INVALID_TOKEN", body = ErrorBody),
        (status = 503, description = "Database unavailable (SERVICE_UNAVAILABLE)", body = ErrorBody),
    ))]
pub async fn verify(State(state): State<AppState>, request: Request) -> Response {
    let auth = AuthService::from_ref(&state);
    // The body (a GET's, never read) stays behind: the answer holds only the head.
    let (parts, _) = request.into_parts();
    verify_answer(&auth, &parts.headers, || {
        let spans = super::middleware::RequestSpan {
            trusted_proxies: Arc::from(state.config().limits.trusted_proxies.clone()),
        };
        let request_id = parts
            .extensions
            .get::<tower_http::request_id::RequestId>()
            .map(tower_http::request_id::RequestId::header_value);
        spans.span_of(
            (&parts).into(),
            super::hot_path::VERIFY,
            request_id,
            super::middleware::SpanLevel::Info,
        )
    })
    .await
}

/// The answer to `GET /auth/verify`, whichever door the request came through (this route, or
/// the hot path ahead of the router, [`super::hot_path`]): the bearer token from `headers`,
/// the service's verdict, and the response, the error's included. Verify's request span is
/// DEBUG (it would cost more than the verification at INFO): an error that is logged (a 500)
/// is answered inside `error_span`, an INFO span with the request's id, route and client,
/// made only then.
pub async fn verify_answer(
    auth: &AuthService,
    headers: &HeaderMap,
    error_span: impl FnOnce() -> tracing::Span,
) -> Response {
    let verdict = match bearer_token(headers) {
        Ok(token) => auth.verify_access(token).await.map_err(ApiError::from),
        Err(err) => Err(err),
    };
    match verdict {
        Ok(user) => Json(VerifyResponse {
            valid: true,
            user_id: user.id,
            email: user.email,
            email_verified: user.email_verified,
        })
        .into_response(),
        Err(err @ ApiError::Auth(crate::service::AuthError::Internal(_))) => {
            error_span().in_scope(|| err.into_response())
        }
        Err(err) => err.into_response(),
    }
}

/// `GET /auth/revocations` query: both optional.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FeedQuery {
    /// The `cursor` of the previous answer; without it (or when it is too old) the answer is
    /// the whole current set with `reset: true`.
    #[param(value_type = Option<i64>, minimum = 0)]
    pub since: Option<FeedCursor>,
    /// Seconds to hold the request when nothing is newer than `since` (0 to 60, default 0).
    #[param(value_type = Option<u64>, maximum = 60)]
    pub wait: Option<FeedWait>,
}

/// A `since` cursor: a non-negative integer from a previous answer.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(try_from = "String")]
pub struct FeedCursor(i64);

impl TryFrom<String> for FeedCursor {
    type Error = &'static str;

    fn try_from(raw: String) -> Result<Self, Self::Error> {
        raw.parse::<i64>()
            .ok()
            .filter(|cursor| *cursor >= 0)
            .map(Self)
            .ok_or("must be a cursor from a previous answer")
    }
}

/// A `wait`: whole seconds, at most [`feed::MAX_WAIT`].
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(try_from = "String")]
pub struct FeedWait(Duration);

impl TryFrom<String> for FeedWait {
    type Error = &'static str;

    fn try_from(raw: String) -> Result<Self, Self::Error> {
        raw.parse::<u64>()
            .ok()
            .filter(|seconds| *seconds <= feed::MAX_WAIT.as_secs())
            .map(|seconds| Self(Duration::from_secs(seconds)))
            .ok_or("must be a whole number of seconds, 0 to 60")
    }
}

/// `GET /auth/revocations`: what local verifiers must refuse besides expiry.
///
/// Served, and listed in this document, only when `REVOCATION_FEED_TOKENS` is set.
#[utoipa::path(get, path = "/auth/revocations", tag = "auth", summary = "Revocation feed for local verifiers",
    security(("bearer" = [])), params(FeedQuery),
    responses(
        (status = 200, description = "Revocations after `since`, or the whole current set (`reset: true`)", body = RevocationPage),
        (status = 401, description = "No feed token, or not one of REVOCATION_FEED_TOKENS (MISSING_TOKEN or INVALID_TOKEN)", body = ErrorBody),
        (status = 422, description = "A bad `since` or `wait` (VALIDATION_ERROR)", body = ErrorBody),
        (status = 503, description = "Database unavailable (SERVICE_UNAVAILABLE)", body = ErrorBody),
    ))]
pub async fn revocations(
    State(auth): State<AuthService>,
    headers: HeaderMap,
    AppQuery(query): AppQuery<FeedQuery>,
) -> Result<Response, ApiError> {
    let reader = bearer_token(&headers)?;
    let since = query.since.map(|FeedCursor(cursor)| cursor);
    let wait = query.wait.map_or(Duration::ZERO, |FeedWait(wait)| wait);
    let page = auth.revocation_feed(reader, since, wait).await?;
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(page)).into_response())
}
