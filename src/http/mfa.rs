//! The second factor: `POST /auth/mfa/totp`, `POST /auth/mfa/totp/{factor_id}/confirm`,
//! `GET /auth/mfa/factors`, `DELETE /auth/mfa/factors/{factor_id}`,
//! `POST /auth/mfa/recovery-codes` and `POST /auth/mfa/verify` (the second step of a sign-in,
//! or a step-up), and the 401 `MFA_REQUIRED` that login answers with.

use axum::{
    Json,
    extract::{Path, State, rejection::PathRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::{
    errors::{ApiError, ErrorBody, ErrorCode, FieldError},
    extract::{AppJson, AuthUser, RequestCaller, bearer_token},
    responses::{BodyErrors, MessageResponse, NO_STORE, TokenResponse, tokens},
};
use crate::{
    service::{
        AuthService,
        mfa::{FactorList, FactorProof, MfaChallenge},
    },
    state::AppState,
};

/// The second factor's routes (Bearer, except the second step of a sign-in).
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(enrol_totp))
        .routes(routes!(confirm_totp))
        .routes(routes!(list_factors))
        .routes(routes!(remove_factor))
        .routes(routes!(recovery_codes))
        .routes(routes!(verify))
}

/// A factor's kind.
#[derive(Serialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum FactorType {
    /// An authenticator app (RFC 6238).
    Totp,
}

/// A factor the user can answer with.
#[derive(Serialize, ToSchema)]
pub struct FactorRef {
    /// The factor's id.
    pub factor_id: Uuid,
    /// Always `totp`.
    #[serde(rename = "type")]
    pub kind: FactorType,
}

/// Login's 401 when the password was right and the user has a second factor: no tokens yet.
#[derive(Serialize, ToSchema)]
pub struct MfaRequiredBody {
    /// `Second factor required` (`Invalid email or password` and the other 401s carry only
    /// `detail` and `error_code`).
    #[schema(example = "Second factor required")]
    pub detail: String,
    /// `MFA_REQUIRED`.
    pub error_code: ErrorCode,
    /// For `POST /auth/mfa/verify`: valid 5 minutes, once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mfa_token: Option<String>,
    /// The user's confirmed factors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub factors: Option<Vec<FactorRef>>,
}

/// The 401 `MFA_REQUIRED` answer to a login, never cached.
pub fn mfa_required(challenge: MfaChallenge) -> Response {
    let body = MfaRequiredBody {
        detail: "Second factor required".to_owned(),
        error_code: ErrorCode::MfaRequired,
        mfa_token: Some(challenge.mfa_token),
        factors: Some(
            challenge
                .factors
                .into_iter()
                .map(|factor_id| FactorRef {
                    factor_id,
                    kind: FactorType::Totp,
                })
                .collect(),
        ),
    };
    let mut response = (StatusCode::UNAUTHORIZED, Json(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `POST /auth/mfa/totp` success: what the authenticator app needs.
#[derive(Serialize, ToSchema)]
pub struct EnrolResponse {
    /// The new factor, unconfirmed until `POST /auth/mfa/totp/{factor_id}/confirm`.
    pub factor_id: Uuid,
    /// The secret in base32, for typing into the app.
    #[schema(example = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP")]
    pub secret: String,
    /// The same as a URI, for a QR code.
    #[schema(
        example = "otpauth://totp/auth%2Dservice:user%40example%2Ecom?secret=JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP&issuer=auth%2Dservice&algorithm=SHA1&digits=6&period=30"
    )]
    pub otpauth_uri: String,
}

/// `POST /auth/mfa/totp/{factor_id}/confirm` body.
#[derive(Deserialize, ToSchema)]
pub struct ConfirmRequest {
    /// The 6-digit code the app shows now.
    #[schema(example = "123456")]
    pub code: String,
}

/// `POST /auth/mfa/totp/{factor_id}/confirm` success: the message, new tokens for the calling
/// session at aal2 (the login answer's fields), and the recovery codes with the first factor.
#[derive(Serialize, ToSchema)]
pub struct ConfirmResponse {
    /// `Second factor enabled`.
    #[schema(example = "Second factor enabled")]
    pub message: String,
    /// A new access token for the calling session, at aal2, and the session's refresh token.
    #[serde(flatten)]
    pub tokens: TokenResponse,
    /// Ten single-use recovery codes, shown this once: only with the user's first factor.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = json!(["7hq2k-x9m4d", "0w3nf-r8c5t"]))]
    pub recovery_codes: Option<Vec<String>>,
}

/// One confirmed factor.
#[derive(Serialize, ToSchema)]
pub struct FactorView {
    /// The factor's id.
    pub factor_id: Uuid,
    /// Always `totp`.
    #[serde(rename = "type")]
    pub kind: FactorType,
    /// Its enrolment (RFC 3339).
    pub created_at: DateTime<Utc>,
    /// The last code it accepted (RFC 3339).
    pub last_used_at: Option<DateTime<Utc>>,
}

/// `GET /auth/mfa/factors` success.
#[derive(Serialize, ToSchema)]
pub struct FactorsResponse {
    /// The confirmed factors, oldest first.
    pub factors: Vec<FactorView>,
    /// Unused recovery codes.
    pub recovery_codes_remaining: i64,
}

impl From<FactorList> for FactorsResponse {
    fn from(list: FactorList) -> Self {
        Self {
            factors: list
                .factors
                .into_iter()
                .map(|f| FactorView {
                    factor_id: f.factor_id,
                    kind: FactorType::Totp,
                    created_at: f.created_at,
                    last_used_at: f.last_used_at,
                })
                .collect(),
            recovery_codes_remaining: list.recovery_codes_remaining,
        }
    }
}

/// `POST /auth/mfa/recovery-codes` success.
#[derive(Serialize, ToSchema)]
pub struct RecoveryCodesResponse {
    /// Ten single-use codes, shown this once; every earlier code stops working.
    #[schema(example = json!(["7hq2k-x9m4d", "0w3nf-r8c5t"]))]
    pub recovery_codes: Vec<String>,
}

/// `POST /auth/mfa/verify` body: `mfa_token` (the second step of a sign-in; omitted for a
/// step-up with a Bearer token) and exactly one of `code` and `recovery_code`.
#[derive(Deserialize, ToSchema)]
pub struct MfaVerifyRequest {
    /// From login's 401 `MFA_REQUIRED`.
    pub mfa_token: Option<String>,
    /// The 6-digit code the app shows now.
    #[schema(example = "123456")]
    pub code: Option<String>,
    /// One of the recovery codes (any case, with or without the dash).
    #[schema(example = "7hq2k-x9m4d")]
    pub recovery_code: Option<String>,
}

impl MfaVerifyRequest {
    /// The factor presented: exactly one of the two.
    fn proof(self) -> Result<(Option<String>, FactorProof), ApiError> {
        match (self.code, self.recovery_code) {
            (Some(code), None) => Ok((self.mfa_token, FactorProof::Code(code))),
            (None, Some(code)) => Ok((self.mfa_token, FactorProof::RecoveryCode(code))),
            _ => Err(ApiError::Validation(vec![FieldError::new(
                "code",
                "send exactly one of code and recovery_code",
            )])),
        }
    }
}

/// A path segment that does not even decode is no factor of this user either.
fn factor_id(segment: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    segment
        .map(|Path(id)| id)
        .map_err(|_| crate::service::AuthError::FactorNotFound.into())
}

/// `POST /auth/mfa/totp`: start enrolling an authenticator app.
#[utoipa::path(post, path = "/auth/mfa/totp", tag = "mfa", summary = "Enrol an authenticator app (TOTP)",
    description = "A new factor, unconfirmed until its confirmation (within 10 minutes; a newer unconfirmed \
        one replaces it). Show `otpauth_uri` as a QR code, or `secret` for typing. At most 5 confirmed \
        factors. Once the user has a confirmed factor, this needs an aal2 session.",
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Factor created, unconfirmed", body = EnrolResponse),
        (status = 401, description = "MISSING_TOKEN or INVALID_TOKEN", body = ErrorBody),
        (status = 403, description = "MFA_STEP_UP_REQUIRED: the user has a factor and this session is aal1", body = ErrorBody),
        (status = 409, description = "FACTOR_LIMIT: five confirmed factors already", body = ErrorBody),
        BodyErrors,
    ))]
pub async fn enrol_totp(
    State(auth): State<AuthService>,
    AuthUser(user): AuthUser,
) -> Result<
    (
        StatusCode,
        [(header::HeaderName, &'static str); 1],
        Json<EnrolResponse>,
    ),
    ApiError,
> {
    let enrolment = auth.enrol_totp(&user).await?;
    Ok((
        StatusCode::CREATED,
        [(header::CACHE_CONTROL, "no-store")],
        Json(EnrolResponse {
            factor_id: enrolment.factor_id,
            secret: enrolment.secret,
            otpauth_uri: enrolment.otpauth_uri,
        }),
    ))
}

/// `POST /auth/mfa/totp/{factor_id}/confirm`: confirm with the app's current code.
#[utoipa::path(post, path = "/auth/mfa/totp/{factor_id}/confirm", tag = "mfa", summary = "Confirm an authenticator app",
    description = "The calling session becomes aal2 (the new tokens say so), every other session of the user \
        ends as at logout, and a notification mail is queued. `recovery_codes` comes with the user's first \
        factor only: show them once. A wrong code counts toward the second factor's lockout.",
    security(("bearer" = [])),
    params(("factor_id" = String, Path, description = "From `POST /auth/mfa/totp`")),
    request_body = ConfirmRequest,
    responses(
        (status = 200, description = "Second factor enabled", body = ConfirmResponse),
        (status = 401, description = "MISSING_TOKEN or INVALID_TOKEN; INVALID_MFA_CODE", body = ErrorBody),
        (status = 403, description = "MFA_STEP_UP_REQUIRED", body = ErrorBody),
        (status = 404, description = "FACTOR_NOT_FOUND: unknown, expired, confirmed or another user's", body = ErrorBody),
        BodyErrors,
    ))]
pub async fn confirm_totp(
    State(auth): State<AuthService>,
    RequestCaller(caller): RequestCaller,
    AuthUser(user): AuthUser,
    segment: Result<Path<String>, PathRejection>,
    AppJson(req): AppJson<ConfirmRequest>,
) -> Result<Response, ApiError> {
    let factor_id = factor_id(segment)?;
    let confirmed = auth
        .confirm_totp(&user, &factor_id, &req.code, &caller)
        .await?;
    Ok((
        NO_STORE,
        Json(ConfirmResponse {
            message: "Second factor enabled".to_owned(),
            tokens: confirmed.tokens.into(),
            recovery_codes: confirmed.recovery_codes,
        }),
    )
        .into_response())
}

/// `GET /auth/mfa/factors`: the confirmed factors.
#[utoipa::path(get, path = "/auth/mfa/factors", tag = "mfa", summary = "List the second factors",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The confirmed factors and the recovery codes left", body = FactorsResponse),
        (status = 401, description = "MISSING_TOKEN or INVALID_TOKEN", body = ErrorBody),
        (status = 429, description = "RATE_LIMITED (per-IP token bucket); with Retry-After", body = ErrorBody),
        (status = 503, description = "SERVICE_UNAVAILABLE: the database does not answer; with Retry-After", body = ErrorBody),
    ))]
pub async fn list_factors(
    State(auth): State<AuthService>,
    AuthUser(user): AuthUser,
) -> Result<Json<FactorsResponse>, ApiError> {
    Ok(Json(auth.list_factors(&user).await?.into()))
}

/// `DELETE /auth/mfa/factors/{factor_id}`: remove a factor.
#[utoipa::path(delete, path = "/auth/mfa/factors/{factor_id}", tag = "mfa", summary = "Remove a second factor",
    description = "Needs an aal2 session. Removing the last factor also deletes the recovery codes. A \
        notification mail is queued.",
    security(("bearer" = [])),
    params(("factor_id" = String, Path, description = "From `GET /auth/mfa/factors`")),
    responses(
        (status = 200, description = "Second factor removed", body = MessageResponse),
        (status = 401, description = "MISSING_TOKEN or INVALID_TOKEN", body = ErrorBody),
        (status = 403, description = "MFA_STEP_UP_REQUIRED", body = ErrorBody),
        (status = 404, description = "FACTOR_NOT_FOUND", body = ErrorBody),
        (status = 429, description = "RATE_LIMITED (per-IP token bucket); with Retry-After", body = ErrorBody),
        (status = 503, description = "SERVICE_UNAVAILABLE: the database does not answer; with Retry-After", body = ErrorBody),
    ))]
pub async fn remove_factor(
    State(auth): State<AuthService>,
    RequestCaller(caller): RequestCaller,
    AuthUser(user): AuthUser,
    segment: Result<Path<String>, PathRejection>,
) -> Result<Json<MessageResponse>, ApiError> {
    let factor_id = factor_id(segment)?;
    auth.remove_factor(&user, &factor_id, &caller).await?;
    Ok(MessageResponse::json("Second factor removed"))
}

/// `POST /auth/mfa/recovery-codes`: a new set of recovery codes.
#[utoipa::path(post, path = "/auth/mfa/recovery-codes", tag = "mfa", summary = "New recovery codes",
    description = "Needs an aal2 session. Ten new single-use codes replace every earlier one; a notification \
        mail is queued.",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The new codes, shown this once", body = RecoveryCodesResponse),
        (status = 401, description = "MISSING_TOKEN or INVALID_TOKEN", body = ErrorBody),
        (status = 403, description = "MFA_STEP_UP_REQUIRED", body = ErrorBody),
        (status = 409, description = "MFA_NOT_ENROLLED: no confirmed factor", body = ErrorBody),
        BodyErrors,
    ))]
pub async fn recovery_codes(
    State(auth): State<AuthService>,
    RequestCaller(caller): RequestCaller,
    AuthUser(user): AuthUser,
) -> Result<Response, ApiError> {
    let codes = auth.regenerate_recovery_codes(&user, &caller).await?;
    Ok((
        [(header::CACHE_CONTROL, "no-store")],
        Json(RecoveryCodesResponse {
            recovery_codes: codes,
        }),
    )
        .into_response())
}

/// `POST /auth/mfa/verify`: the second step of a sign-in, or a step-up.
#[utoipa::path(post, path = "/auth/mfa/verify", tag = "mfa", summary = "Sign in with the second factor, or step up",
    description = "Without `Authorization`: `{\"mfa_token\", \"code\"}` or `{\"mfa_token\", \"recovery_code\"}` \
        completes a sign-in that answered 401 `MFA_REQUIRED`: a new session at aal2 (`amr` `pwd`+`otp` or \
        `pwd`+`rec`). A wrong code leaves the `mfa_token` usable until it expires. With `Authorization: \
        Bearer <access>`: `{\"code\"}` or `{\"recovery_code\"}` raises the caller's session to aal2 (same \
        `sid`, new tokens). A code works once; 5 wrong codes per user within `LOGIN_WINDOW_MINUTES` lock the \
        second factor for `LOCKOUT_MINUTES` (429 `TOO_MANY_ATTEMPTS`).",
    security((), ("bearer" = [])),
    request_body = MfaVerifyRequest,
    responses(
        (status = 200, description = "Signed in (or stepped up) at aal2", body = TokenResponse),
        (status = 401, description = "INVALID_MFA_CODE; INVALID_MFA_TOKEN; MISSING_TOKEN or INVALID_TOKEN (a step-up's bearer token)", body = ErrorBody),
        (status = 409, description = "MFA_NOT_ENROLLED: a step-up without a confirmed factor", body = ErrorBody),
        BodyErrors,
    ))]
pub async fn verify(
    State(auth): State<AuthService>,
    RequestCaller(caller): RequestCaller,
    headers: HeaderMap,
    AppJson(req): AppJson<MfaVerifyRequest>,
) -> Result<Response, ApiError> {
    let (mfa_token, proof) = req.proof()?;
    let pair = if headers.contains_key(header::AUTHORIZATION) {
        let user = auth.verify_access(bearer_token(&headers)?).await?;
        auth.step_up(&user, &proof, &caller).await?
    } else {
        let Some(mfa_token) = mfa_token else {
            return Err(ApiError::Validation(vec![FieldError::new(
                "mfa_token",
                "required without an Authorization header",
            )]));
        };
        auth.complete_sign_in(&mfa_token, &proof, &caller).await?
    };
    Ok(tokens(pair))
}
