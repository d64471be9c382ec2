//! Self-service for a signed-in user: `POST /auth/password/change`, `GET /auth/sessions`,
//! `DELETE /auth/sessions/{sid}` and `DELETE /auth/me`.

use axum::{
    Json,
    extract::{Path, State, rejection::PathRejection},
    http::HeaderMap,
};
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::{
    errors::{ApiError, ErrorBody},
    extract::{AppJson, AuthUser, RequestCaller},
    responses::{BodyErrors, MessageResponse, attempt_headers},
};
use crate::{
    service::{ActiveSession, AuthService, Credentialed},
    state::AppState,
};

/// The signed-in user's own routes (Bearer): password change, sessions, account deletion.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(change_password))
        .routes(routes!(list_sessions))
        .routes(routes!(end_session))
        .routes(routes!(delete_me))
}

/// `POST /auth/password/change` body.
#[derive(Deserialize, ToSchema)]
pub struct ChangePasswordRequest {
    /// The password in use now.
    #[schema(example = "SecurePass123", format = Password)]
    pub current_password: String,
    /// The new password: the registration policy, and different from the current one.
    #[schema(example = "NewSecurePass456", format = Password)]
    pub new_password: String,
}

/// `DELETE /auth/me` body.
#[derive(Deserialize, ToSchema)]
pub struct DeleteAccountRequest {
    /// The account's password.
    #[schema(example = "SecurePass123", format = Password)]
    pub password: String,
}

/// One live session (a signed-in device).
#[derive(Serialize, ToSchema)]
pub struct SessionView {
    /// The session id (the `sid` claim of its tokens).
    pub sid: Uuid,
    /// The login that started it (RFC 3339).
    pub created_at: DateTime<Utc>,
    /// Its last login or refresh (RFC 3339).
    pub last_used_at: DateTime<Utc>,
    /// The `User-Agent` of the login, at most 256 characters; null when none was sent.
    #[schema(example = "Mozilla/5.0 (X11; Linux x86_64)")]
    pub user_agent: Option<String>,
    /// The client IP of the login, as the per-IP limits see it.
    #[schema(example = "203.0.113.7")]
    pub ip: Option<String>,
    /// Whether this is the session of the access token that asked.
    pub current: bool,
}

impl From<ActiveSession> for SessionView {
    fn from(session: ActiveSession) -> Self {
        Self {
            sid: session.sid,
            created_at: session.created_at,
            last_used_at: session.last_used_at,
            user_agent: session.user_agent,
            ip: session.ip,
            current: session.current,
        }
    }
}

/// `GET /auth/sessions` success.
#[derive(Serialize, ToSchema)]
pub struct SessionsResponse {
    /// The user's live sessions, newest first.
    pub sessions: Vec<SessionView>,
}

/// The answer of an action that checked the password again: its message with the lockout's
/// `X-RateLimit-*` headers, or the error with them.
fn credentialed(
    outcome: Credentialed,
    message: &str,
) -> (HeaderMap, Result<Json<MessageResponse>, ApiError>) {
    (
        attempt_headers(outcome.status),
        outcome
            .result
            .map(|()| MessageResponse::json(message))
            .map_err(ApiError::from),
    )
}

/// `POST /auth/password/change`: change the password, given the current one.
#[utoipa::path(post, path = "/auth/password/change", tag = "account", summary = "Change the password",
    description = "A wrong `current_password` counts toward the account's login lockout (429 \
        `TOO_MANY_ATTEMPTS` while locked, with the same `X-RateLimit-*` headers as login). The new password \
        follows the registration policy and must differ from the current one (422 `WEAK_PASSWORD`). Every \
        other session of the user ends as at logout; the calling session stays valid. A \"password \
        changed\" mail is queued.",
    security(("bearer" = [])),
    request_body = ChangePasswordRequest,
    responses(
        (status = 200, description = "Password changed", body = MessageResponse),
        (status = 401, description = "MISSING_TOKEN or INVALID_TOKEN (the bearer token); INVALID_CREDENTIALS (the current password)", body = ErrorBody),
        BodyErrors,
    ))]
pub async fn change_password(
    State(auth): State<AuthService>,
    RequestCaller(caller): RequestCaller,
    AuthUser(user): AuthUser,
    AppJson(req): AppJson<ChangePasswordRequest>,
) -> (HeaderMap, Result<Json<MessageResponse>, ApiError>) {
    let outcome = auth
        .change_password(
            &user,
            SecretString::from(req.current_password),
            SecretString::from(req.new_password),
            &caller,
        )
        .await;
    credentialed(outcome, "Password changed")
}

/// `GET /auth/sessions`: the caller's signed-in devices.
#[utoipa::path(get, path = "/auth/sessions", tag = "account", summary = "List the user's sessions (devices)",
    description = "Live sessions, newest first; `current` marks the session of the token that asked.",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The user's live sessions", body = SessionsResponse),
        (status = 401, description = "MISSING_TOKEN or INVALID_TOKEN", body = ErrorBody),
        (status = 429, description = "RATE_LIMITED (per-IP token bucket); with Retry-After", body = ErrorBody),
        (status = 503, description = "SERVICE_UNAVAILABLE: the database does not answer; with Retry-After", body = ErrorBody),
    ))]
pub async fn list_sessions(
    State(auth): State<AuthService>,
    AuthUser(user): AuthUser,
) -> Result<Json<SessionsResponse>, ApiError> {
    let sessions = auth.list_sessions(&user).await?;
    Ok(Json(SessionsResponse {
        sessions: sessions.into_iter().map(SessionView::from).collect(),
    }))
}

/// `DELETE /auth/sessions/{sid}`: sign one device out.
#[utoipa::path(delete, path = "/auth/sessions/{sid}", tag = "account", summary = "End one session (sign a device out)",
    description = "The session ends as at logout: its refresh token stops refreshing and its access tokens stop \
        verifying at once. An unknown, ended or foreign `sid` gets the same 404.",
    security(("bearer" = [])),
    params(("sid" = String, Path, description = "A `sid` from `GET /auth/sessions`")),
    responses(
        (status = 200, description = "Session ended", body = MessageResponse),
        (status = 401, description = "MISSING_TOKEN or INVALID_TOKEN", body = ErrorBody),
        (status = 404, description = "SESSION_NOT_FOUND: not a live session of this user", body = ErrorBody),
        (status = 429, description = "RATE_LIMITED (per-IP token bucket); with Retry-After", body = ErrorBody),
        (status = 503, description = "SERVICE_UNAVAILABLE: the database does not answer; with Retry-After", body = ErrorBody),
    ))]
pub async fn end_session(
    State(auth): State<AuthService>,
    RequestCaller(caller): RequestCaller,
    AuthUser(user): AuthUser,
    sid: Result<Path<String>, PathRejection>,
) -> Result<Json<MessageResponse>, ApiError> {
    // A segment that does not even decode is no session of this user either.
    let Ok(Path(sid)) = sid else {
        return Err(crate::service::AuthError::SessionNotFound.into());
    };
    auth.end_own_session(&user, &sid, &caller).await?;
    Ok(MessageResponse::json("Session ended"))
}

/// `DELETE /auth/me`: delete the caller's own account.
#[utoipa::path(delete, path = "/auth/me", tag = "account", summary = "Delete the own account",
    description = "Given the password, the user and everything of theirs is deleted: every token stops \
        working at once, queued mail is dropped, and the email can register again. A wrong password counts \
        toward the login lockout (429 `TOO_MANY_ATTEMPTS` while locked).",
    security(("bearer" = [])),
    request_body = DeleteAccountRequest,
    responses(
        (status = 200, description = "Account deleted", body = MessageResponse),
        (status = 401, description = "MISSING_TOKEN or INVALID_TOKEN (the bearer token); INVALID_CREDENTIALS (the password)", body = ErrorBody),
        BodyErrors,
    ))]
pub async fn delete_me(
    State(auth): State<AuthService>,
    RequestCaller(caller): RequestCaller,
    AuthUser(user): AuthUser,
    AppJson(req): AppJson<DeleteAccountRequest>,
) -> (HeaderMap, Result<Json<MessageResponse>, ApiError>) {
    let outcome = auth
        .delete_account(&user, SecretString::from(req.password), &caller)
        .await;
    credentialed(outcome, "Account deleted")
}
