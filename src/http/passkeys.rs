//! Passkeys: `POST /auth/passkeys/register/start`, `POST /auth/passkeys/register/finish`,
//! `GET /auth/passkeys`, `DELETE /auth/passkeys/{passkey_id}`, and the discoverable sign-in,
//! `POST /auth/passkeys/login/start` and `POST /auth/passkeys/login/finish`.

use axum::{
    Json,
    extract::{Path, State, rejection::PathRejection},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::{
    errors::{ApiError, ErrorBody, FieldError},
    extract::{AppJson, AuthUser, RequestCaller},
    responses::{BodyErrors, MessageResponse, NO_STORE, TokenResponse, tokens},
};
use crate::{
    service::{
        AuthError, AuthService,
        passkeys::{Ceremony, PasskeyView},
    },
    state::AppState,
};

/// Characters a passkey's label may have.
pub const NAME_CHARS: usize = 64;

/// The passkey routes (Bearer, except the sign-in).
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register_start))
        .routes(routes!(register_finish))
        .routes(routes!(list))
        .routes(routes!(remove))
        .routes(routes!(login_start))
        .routes(routes!(login_finish))
}

/// A started ceremony.
#[derive(Serialize, ToSchema)]
pub struct CeremonyResponse {
    /// For the finish: valid 5 minutes, once.
    pub ceremony_id: Uuid,
    /// `{"publicKey": {...}}`: the WebAuthn Level 3 JSON form (binary fields base64url), for
    /// `PublicKeyCredential.parseCreationOptionsFromJSON` / `parseRequestOptionsFromJSON`.
    #[schema(value_type = Object)]
    pub options: serde_json::Value,
}

impl From<Ceremony> for CeremonyResponse {
    fn from(ceremony: Ceremony) -> Self {
        Self {
            ceremony_id: ceremony.ceremony_id,
            options: ceremony.options,
        }
    }
}

/// `POST /auth/passkeys/register/finish` body.
#[derive(Deserialize, ToSchema)]
pub struct RegisterFinishRequest {
    /// From the start.
    pub ceremony_id: String,
    /// What `navigator.credentials.create()` gave, as its `toJSON()`.
    #[schema(value_type = Object)]
    pub credential: serde_json::Map<String, serde_json::Value>,
    /// A label for the list (up to 64 characters; default `Passkey`).
    #[schema(example = "MacBook Touch ID")]
    pub name: Option<String>,
}

/// `POST /auth/passkeys/login/finish` body.
#[derive(Deserialize, ToSchema)]
pub struct LoginFinishRequest {
    /// From the start.
    pub ceremony_id: String,
    /// What `navigator.credentials.get()` gave, as its `toJSON()`.
    #[schema(value_type = Object)]
    pub credential: serde_json::Map<String, serde_json::Value>,
}

/// A passkey of the user.
#[derive(Serialize, ToSchema)]
pub struct PasskeyResponse {
    /// Its id.
    pub passkey_id: Uuid,
    /// Its label.
    pub name: String,
    /// Its registration (RFC 3339).
    pub created_at: DateTime<Utc>,
}

/// One passkey in the list.
#[derive(Serialize, ToSchema)]
pub struct PasskeyListItem {
    /// Its id.
    pub passkey_id: Uuid,
    /// Its label.
    pub name: String,
    /// Its registration (RFC 3339).
    pub created_at: DateTime<Utc>,
    /// The last sign-in with it (RFC 3339); null until the first.
    pub last_used_at: Option<DateTime<Utc>>,
}

/// `GET /auth/passkeys` success.
#[derive(Serialize, ToSchema)]
pub struct PasskeysResponse {
    /// The user's passkeys, oldest first.
    pub passkeys: Vec<PasskeyListItem>,
}

impl From<PasskeyView> for PasskeyListItem {
    fn from(p: PasskeyView) -> Self {
        Self {
            passkey_id: p.passkey_id,
            name: p.name,
            created_at: p.created_at,
            last_used_at: p.last_used_at,
        }
    }
}

/// The start of a ceremony: never cached.
fn started(ceremony: Ceremony) -> Response {
    (NO_STORE, Json(CeremonyResponse::from(ceremony))).into_response()
}

/// `POST /auth/passkeys/register/start`: options for a new passkey.
#[utoipa::path(post, path = "/auth/passkeys/register/start", tag = "passkeys", summary = "Start registering a passkey",
    description = "Options for `navigator.credentials.create()`: a discoverable credential with user \
        verification required, the user's passkeys excluded. No body. Once the user has a confirmed second \
        factor, this needs an aal2 session.",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The ceremony and its options", body = CeremonyResponse),
        (status = 401, description = "MISSING_TOKEN or INVALID_TOKEN", body = ErrorBody),
        (status = 403, description = "MFA_STEP_UP_REQUIRED", body = ErrorBody),
        BodyErrors,
    ))]
pub async fn register_start(
    State(auth): State<AuthService>,
    AuthUser(user): AuthUser,
) -> Result<Response, ApiError> {
    Ok(started(auth.start_passkey_registration(&user).await?))
}

/// `POST /auth/passkeys/register/finish`: store the new passkey.
#[utoipa::path(post, path = "/auth/passkeys/register/finish", tag = "passkeys", summary = "Finish registering a passkey",
    description = "Verifies the credential against the ceremony (used up either way) and stores the \
        passkey; a notification mail is queued.",
    security(("bearer" = [])),
    request_body = RegisterFinishRequest,
    responses(
        (status = 201, description = "Passkey registered", body = PasskeyResponse),
        (status = 400, description = "INVALID_CEREMONY (unknown, expired, used or another user's); \
            INVALID_PASSKEY (wrong challenge, origin or RP ID, no user verification, registered already)", body = ErrorBody),
        (status = 401, description = "MISSING_TOKEN or INVALID_TOKEN", body = ErrorBody),
        (status = 403, description = "MFA_STEP_UP_REQUIRED", body = ErrorBody),
        BodyErrors,
    ))]
pub async fn register_finish(
    State(auth): State<AuthService>,
    RequestCaller(caller): RequestCaller,
    AuthUser(user): AuthUser,
    AppJson(req): AppJson<RegisterFinishRequest>,
) -> Result<Response, ApiError> {
    if req
        .name
        .as_deref()
        .is_some_and(|name| name.trim().chars().count() > NAME_CHARS)
    {
        return Err(ApiError::Validation(vec![FieldError::new(
            "name",
            format!("at most {NAME_CHARS} characters"),
        )]));
    }
    let passkey = auth
        .finish_passkey_registration(
            &user,
            &req.ceremony_id,
            serde_json::Value::Object(req.credential),
            req.name.as_deref(),
            &caller,
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(PasskeyResponse {
            passkey_id: passkey.passkey_id,
            name: passkey.name,
            created_at: passkey.created_at,
        }),
    )
        .into_response())
}

/// `GET /auth/passkeys`: the user's passkeys.
#[utoipa::path(get, path = "/auth/passkeys", tag = "passkeys", summary = "List the passkeys",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The user's passkeys, oldest first", body = PasskeysResponse),
        (status = 401, description = "MISSING_TOKEN or INVALID_TOKEN", body = ErrorBody),
        (status = 429, description = "RATE_LIMITED (per-IP token bucket); with Retry-After", body = ErrorBody),
        (status = 503, description = "SERVICE_UNAVAILABLE: the database does not answer; with Retry-After", body = ErrorBody),
    ))]
pub async fn list(
    State(auth): State<AuthService>,
    AuthUser(user): AuthUser,
) -> Result<Json<PasskeysResponse>, ApiError> {
    let passkeys = auth.list_passkeys(&user).await?;
    Ok(Json(PasskeysResponse {
        passkeys: passkeys.into_iter().map(Into::into).collect(),
    }))
}

/// `DELETE /auth/passkeys/{passkey_id}`: remove a passkey.
#[utoipa::path(delete, path = "/auth/passkeys/{passkey_id}", tag = "passkeys", summary = "Remove a passkey",
    description = "Once the user has a confirmed second factor, this needs an aal2 session. A notification \
        mail is queued.",
    security(("bearer" = [])),
    params(("passkey_id" = String, Path, description = "From `GET /auth/passkeys`")),
    responses(
        (status = 200, description = "Passkey removed", body = MessageResponse),
        (status = 401, description = "MISSING_TOKEN or INVALID_TOKEN", body = ErrorBody),
        (status = 403, description = "MFA_STEP_UP_REQUIRED", body = ErrorBody),
        (status = 404, description = "PASSKEY_NOT_FOUND: unknown or another user's", body = ErrorBody),
        (status = 429, description = "RATE_LIMITED (per-IP token bucket); with Retry-After", body = ErrorBody),
        (status = 503, description = "SERVICE_UNAVAILABLE: the database does not answer; with Retry-After", body = ErrorBody),
    ))]
pub async fn remove(
    State(auth): State<AuthService>,
    RequestCaller(caller): RequestCaller,
    AuthUser(user): AuthUser,
    segment: Result<Path<String>, PathRejection>,
) -> Result<Json<MessageResponse>, ApiError> {
    // A path segment that does not even decode is no passkey of this user either.
    let Ok(Path(passkey_id)) = segment else {
        return Err(AuthError::PasskeyNotFound.into());
    };
    auth.remove_passkey(&user, &passkey_id, &caller).await?;
    Ok(MessageResponse::json("Passkey removed"))
}

/// `POST /auth/passkeys/login/start`: options for a sign-in with any passkey.
#[utoipa::path(post, path = "/auth/passkeys/login/start", tag = "passkeys", summary = "Start a passkey sign-in",
    description = "No email and no `allowCredentials`: the authenticator offers the passkeys it holds for \
        this site (nothing to enumerate). User verification required. The body is ignored (send `{}`). \
        Falls under the per-IP bucket; unfinished ceremonies expire after 5 minutes.",
    security(()),
    responses(
        (status = 200, description = "The ceremony and its options", body = CeremonyResponse),
        (status = 429, description = "RATE_LIMITED (per-IP token bucket); with Retry-After", body = ErrorBody),
        (status = 503, description = "SERVICE_UNAVAILABLE: the database does not answer, or too many sign-ins \
            are unfinished; with Retry-After", body = ErrorBody),
    ))]
pub async fn login_start(State(auth): State<AuthService>) -> Result<Response, ApiError> {
    Ok(started(auth.start_passkey_sign_in().await?))
}

/// `POST /auth/passkeys/login/finish`: sign in.
#[utoipa::path(post, path = "/auth/passkeys/login/finish", tag = "passkeys", summary = "Sign in with a passkey",
    description = "A new session at aal2: `acr` `aal2`, `amr` `[\"hwk\"]`. The ceremony is used up either way. \
        A disabled user, or an unverified address under `EMAIL_VERIFICATION=required`, answers as login does.",
    security(()),
    request_body = LoginFinishRequest,
    responses(
        (status = 200, description = "Signed in", body = TokenResponse),
        (status = 401, description = "INVALID_PASSKEY (unknown credential, bad signature, wrong origin, \
            replayed or unknown ceremony, a signature counter that did not increase); ACCOUNT_DISABLED", body = ErrorBody),
        (status = 403, description = "EMAIL_NOT_VERIFIED", body = ErrorBody),
        BodyErrors,
    ))]
pub async fn login_finish(
    State(auth): State<AuthService>,
    RequestCaller(caller): RequestCaller,
    AppJson(req): AppJson<LoginFinishRequest>,
) -> Result<Response, ApiError> {
    let pair = auth
        .finish_passkey_sign_in(
            &req.ceremony_id,
            serde_json::Value::Object(req.credential),
            &caller,
        )
        .await?;
    Ok(tokens(pair))
}
