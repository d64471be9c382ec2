//! Account recovery by mail: `POST /auth/password/forgot`, `/auth/password/reset`,
//! `/auth/email/verify` and `/auth/email/resend`.

use axum::{
    Json,
    extract::{FromRef as _, FromRequest as _, FromRequestParts as _, Request, State},
    http::{StatusCode, header},
};
use secrecy::SecretString;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    errors::{ApiError, ErrorBody},
    extract::{AppJson, AuthUser, RequestCaller},
    responses::{BodyErrors, MessageResponse},
};
use crate::{service::AuthService, state::AppState};

/// The recovery routes: forgot, reset, verify and resend.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(forgot))
        .routes(routes!(reset))
        .routes(routes!(verify_email))
        .routes(routes!(resend_verification))
}

/// `POST /auth/password/forgot` body.
#[derive(Deserialize, ToSchema)]
pub struct ForgotRequest {
    /// The account's email.
    #[schema(example = "test@example.com")]
    pub email: String,
}

/// `POST /auth/password/reset` body.
#[derive(Deserialize, ToSchema)]
pub struct ResetRequest {
    /// The `token` of the link in the reset mail.
    pub token: String,
    /// The new password, under the registration policy.
    #[schema(example = "NewSecurePass456", format = Password)]
    pub new_password: String,
}

/// The answer to every well-formed forgot request.
pub const FORGOT_MESSAGE: &str =
    "If an account exists for this email, a password reset link has been sent";

/// `POST /auth/password/forgot`: mail a reset link, if the account exists.
#[utoipa::path(post, path = "/auth/password/forgot", tag = "auth", summary = "Mail a password reset link",
    description = "Always 202 with the same body for a well-formed email, known or not, active or disabled, \
        in the same time: the mail is queued in the background, for an existing active user only, at most \
        one per email per 60 s and 5 per hour.",
    request_body = ForgotRequest,
    responses(
        (status = 202, description = "Accepted (whether or not the account exists)", body = MessageResponse),
        BodyErrors,
    ))]
pub async fn forgot(
    State(auth): State<AuthService>,
    RequestCaller(caller): RequestCaller,
    AppJson(req): AppJson<ForgotRequest>,
) -> Result<(StatusCode, Json<MessageResponse>), ApiError> {
    auth.forgot_password(&req.email, &caller)?;
    Ok((StatusCode::ACCEPTED, MessageResponse::json(FORGOT_MESSAGE)))
}

/// `POST /auth/password/reset`: set a new password with the token of a reset mail.
#[utoipa::path(post, path = "/auth/password/reset", tag = "auth", summary = "Set a new password with a reset token",
    description = "Every session of the user ends (access tokens at once), the lockout is cleared, the email \
        counts as verified, and a \"password changed\" mail is queued.",
    request_body = ResetRequest,
    responses(
        (status = 200, description = "Password has been reset", body = MessageResponse),
        (status = 400, description = "INVALID_RESET_TOKEN: unknown, expired, used or voided", body = ErrorBody),
        BodyErrors,
    ))]
pub async fn reset(
    State(auth): State<AuthService>,
    RequestCaller(caller): RequestCaller,
    AppJson(req): AppJson<ResetRequest>,
) -> Result<Json<MessageResponse>, ApiError> {
    auth.reset_password(&req.token, SecretString::from(req.new_password), &caller)
        .await?;
    Ok(MessageResponse::json("Password has been reset"))
}

/// `POST /auth/email/verify` body.
#[derive(Deserialize, ToSchema)]
pub struct VerifyEmailRequest {
    /// The `token` of the link in the verification mail.
    pub token: String,
}

/// `POST /auth/email/verify`: confirm the address with the token of a verification mail.
#[utoipa::path(post, path = "/auth/email/verify", tag = "auth", summary = "Confirm an email address",
    description = "Access tokens issued afterwards (at the next login or refresh) carry `email_verified: true`.",
    request_body = VerifyEmailRequest,
    responses(
        (status = 200, description = "Email verified", body = MessageResponse),
        (status = 400, description = "INVALID_VERIFICATION_TOKEN: unknown, expired, used or voided", body = ErrorBody),
        BodyErrors,
    ))]
pub async fn verify_email(
    State(auth): State<AuthService>,
    RequestCaller(caller): RequestCaller,
    AppJson(req): AppJson<VerifyEmailRequest>,
) -> Result<Json<MessageResponse>, ApiError> {
    auth.verify_email(&req.token, &caller).await?;
    Ok(MessageResponse::json("Email verified"))
}

/// `POST /auth/email/resend` body, without a Bearer token.
#[derive(Deserialize, ToSchema)]
pub struct ResendRequest {
    /// The address to verify.
    #[schema(example = "test@example.com")]
    pub email: String,
}

/// `POST /auth/email/resend`: another verification mail, for the caller (Bearer) or for an
/// address (body, no Bearer).
#[utoipa::path(post, path = "/auth/email/resend", tag = "auth", summary = "Send the verification mail again",
    description = "With `Authorization: Bearer <access>`: for the caller (a body, if sent, must still be \
        well-formed; it is not used). Without it: `{\"email\": ...}`, answered as forgot is (always 202 for \
        a well-formed email, in the same time; the mail is queued in the background only for an existing, \
        active, unverified user): the way back for a user whom EMAIL_VERIFICATION=required keeps from \
        logging in. Either way nothing is queued when the address is verified, a verification mail went \
        out within the last 60 s, the address had its 10 mails this hour, or EMAIL_VERIFICATION is off.",
    request_body(content = Option<ResendRequest>, description = "Without a Bearer token: the address"),
    security((), ("bearer" = [])),
    responses(
        (status = 202, description = "Accepted", body = MessageResponse),
        (status = 401, description = "MISSING_TOKEN or INVALID_TOKEN (a Bearer token was sent)", body = ErrorBody),
        BodyErrors,
    ))]
pub async fn resend_verification(
    State(state): State<AppState>,
    RequestCaller(caller): RequestCaller,
    request: Request,
) -> Result<(StatusCode, Json<MessageResponse>), ApiError> {
    let auth = AuthService::from_ref(&state);
    let (mut parts, body) = request.into_parts();
    // A token that was sent must be valid: a bad one is never taken for "no token".
    if parts.headers.contains_key(header::AUTHORIZATION) {
        let AuthUser(user) = AuthUser::from_request_parts(&mut parts, &state).await?;
        // A body sent with a token is not needed, but it must still be a well-formed one:
        // bad input never passes unnoticed.
        let has_body = parts.headers.contains_key(header::TRANSFER_ENCODING)
            || parts
                .headers
                .get(header::CONTENT_LENGTH)
                .is_some_and(|length| length.as_bytes() != b"0");
        if has_body {
            let request = Request::from_parts(parts, body);
            AppJson::<ResendRequest>::from_request(request, &state).await?;
        }
        auth.resend_verification(user.id, &caller).await?;
    } else {
        let request = Request::from_parts(parts, body);
        let AppJson(req) = AppJson::<ResendRequest>::from_request(request, &state).await?;
        auth.resend_verification_to(&req.email, &caller)?;
    }
    Ok((
        StatusCode::ACCEPTED,
        MessageResponse::json("Verification email sent"),
    ))
}
