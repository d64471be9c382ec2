//! The error half of the HTTP contract, in one place.
//!
//! [`ApiError`] is the only error type that becomes a response. Its `IntoResponse` owns the
//! status, the `error_code`, the `detail` and the headers of every failure, service errors and
//! framework errors alike; the table test at the bottom pins each of them to API.md.

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use utoipa::ToSchema;

use crate::{error_chain::error_chain, service::AuthError};

/// The machine-readable `error_code` of every error body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// 409 on registration of an existing email.
    UserExists,
    /// 422: malformed email.
    InvalidEmail,
    /// 400: a password-reset token that is unknown, expired, used or voided.
    InvalidResetToken,
    /// 400: an email-verification token that is unknown, expired, used or voided.
    InvalidVerificationToken,
    /// 403: the right password for an unverified address (`EMAIL_VERIFICATION=required`).
    EmailNotVerified,
    /// 422: password policy.
    WeakPassword,
    /// 422: missing or wrongly typed field, or a field rule.
    ValidationError,
    /// 422: the body is not JSON.
    InvalidJson,
    /// 401: unknown email or wrong password.
    InvalidCredentials,
    /// 401: right password, disabled account.
    AccountDisabled,
    /// 429: per-email lockout.
    TooManyAttempts,
    /// 429: per-client-IP rate limit.
    RateLimited,
    /// 429: the client's address failed too many logins.
    IpTemporarilyBlocked,
    /// 401: no bearer token.
    MissingToken,
    /// 401: bad access token.
    InvalidToken,
    /// 401: bad refresh token.
    InvalidRefreshToken,
    /// 403: a POST from a browser origin outside `CORS_ORIGINS`.
    OriginNotAllowed,
    /// 404: not a live session of the caller (unknown, ended, or another user's).
    SessionNotFound,
    /// 401 on login: the password was right; the second factor is next (`mfa_token`).
    MfaRequired,
    /// 401: a wrong or used second-factor code.
    InvalidMfaCode,
    /// 401: an unknown, expired or used `mfa_token`.
    InvalidMfaToken,
    /// 404: not a factor of the caller.
    FactorNotFound,
    /// 409: a sixth TOTP factor.
    FactorLimit,
    /// 409: recovery codes without a second factor.
    MfaNotEnrolled,
    /// 403: a sensitive action needs an aal2 session.
    MfaStepUpRequired,
    /// 400 on a passkey registration, 401 on a passkey sign-in: the credential did not verify.
    InvalidPasskey,
    /// 400: a passkey registration's ceremony that is unknown, expired, used or another user's.
    InvalidCeremony,
    /// 404: not a passkey of the caller.
    PasskeyNotFound,
    /// 404: no such route.
    NotFound,
    /// 405: route exists, method does not.
    MethodNotAllowed,
    /// 413: body over the limit.
    PayloadTooLarge,
    /// 431: request headers over the server's limits (size or count).
    HeadersTooLarge,
    /// 400: a request the HTTP parser refused (malformed request line or header).
    BadRequest,
    /// 422: a body that is not JSON by its content type.
    UnsupportedMediaType,
    /// 408: the request took too long.
    RequestTimeout,
    /// 503: the database does not answer.
    ServiceUnavailable,
    /// 500: a bug; details only in the log.
    InternalError,
}

/// One field-level validation problem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    /// The field's name (dotted path for nested fields).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    /// A problem with `field`, in words for people.
    #[must_use]
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The body of every error response.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Human-readable message (the original's `detail`).
    #[schema(example = "Invalid email or password")]
    pub detail: String,
    /// Machine-readable code.
    pub error_code: ErrorCode,
    /// Field-level problems: on `VALIDATION_ERROR`, `INVALID_EMAIL` and `WEAK_PASSWORD`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

/// Seconds a client should wait before retrying while the database is down.
pub const UNAVAILABLE_RETRY_AFTER_SECS: u64 = 5;

/// Seconds a client should wait when the password-hash queue is full (a hash takes ~0.25 s).
pub const HASH_QUEUE_RETRY_AFTER_SECS: u64 = 1;

/// Every failure a request can end in.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A service error.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The body is not JSON.
    #[error("Invalid JSON in request body")]
    InvalidJson,
    /// Missing, wrongly typed or invalid fields.
    #[error("Request validation failed")]
    Validation(Vec<FieldError>),
    /// A POST whose `Origin` is outside `CORS_ORIGINS`.
    #[error("Origin not allowed")]
    OriginNotAllowed,
    /// No such route.
    #[error("Not Found")]
    NotFound,
    /// No such method on this route.
    #[error("Method Not Allowed")]
    MethodNotAllowed,
    /// Body over the limit.
    #[error("Request body too large")]
    PayloadTooLarge,
    /// Headers over the HTTP parser's limits (answered by the server itself).
    #[error("Request header fields too large")]
    HeadersTooLarge,
    /// A request the HTTP parser refused (answered by the server itself).
    #[error("Malformed request")]
    BadRequest,
    /// Content type other than JSON.
    #[error("Unsupported media type: send application/json")]
    UnsupportedMediaType,
    /// Per-client-IP rate limit.
    #[error("Too many requests")]
    RateLimited {
        /// Seconds until a token is available.
        retry_after_secs: u64,
    },
    /// The request did not complete in time.
    #[error("Request timeout")]
    Timeout,
    /// The database (or another dependency) does not answer.
    #[error("Service temporarily unavailable")]
    Unavailable,
    /// An `Authorization` header with another scheme (`Token abc`, `Basic ...`): the contract's
    /// `MISSING_TOKEN`, whose `errors` say that the scheme must be Bearer.
    #[error("Authorization header missing")]
    NotBearer,
}

impl ApiError {
    /// The HTTP status.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Auth(err) => match err {
                AuthError::UserExists => StatusCode::CONFLICT,
                AuthError::InvalidResetToken
                | AuthError::InvalidVerificationToken
                | AuthError::InvalidPasskey
                | AuthError::InvalidCeremony => StatusCode::BAD_REQUEST,
                AuthError::EmailNotVerified | AuthError::StepUpRequired => StatusCode::FORBIDDEN,
                AuthError::SessionNotFound
                | AuthError::FactorNotFound
                | AuthError::PasskeyNotFound => StatusCode::NOT_FOUND,
                AuthError::FactorLimit | AuthError::MfaNotEnrolled => StatusCode::CONFLICT,
                AuthError::InvalidEmail | AuthError::WeakPassword(_) => {
                    StatusCode::UNPROCESSABLE_ENTITY
                }
                AuthError::InvalidCredentials
                | AuthError::AccountDisabled
                | AuthError::MissingToken
                | AuthError::InvalidToken
                | AuthError::InvalidRefreshToken
                | AuthError::InvalidMfaCode
                | AuthError::InvalidMfaToken
                | AuthError::PasskeySignInFailed => StatusCode::UNAUTHORIZED,
                AuthError::TooManyAttempts { .. } | AuthError::IpBlocked { .. } => {
                    StatusCode::TOO_MANY_REQUESTS
                }
                AuthError::Unavailable(_)
                | AuthError::RevocationsStale
                | AuthError::HashQueueFull
                | AuthError::CeremoniesFull => StatusCode::SERVICE_UNAVAILABLE,
                AuthError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
            // 422 for bodies, as the original (FastAPI) answered and its clients expect.
            Self::InvalidJson | Self::Validation(_) | Self::UnsupportedMediaType => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Self::OriginNotAllowed => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Timeout => StatusCode::REQUEST_TIMEOUT,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::NotBearer => StatusCode::UNAUTHORIZED,
        }
    }

    /// The `error_code`.
    #[must_use]
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Auth(err) => match err {
                AuthError::UserExists => ErrorCode::UserExists,
                AuthError::InvalidEmail => ErrorCode::InvalidEmail,
                AuthError::InvalidResetToken => ErrorCode::InvalidResetToken,
                AuthError::InvalidVerificationToken => ErrorCode::InvalidVerificationToken,
                AuthError::EmailNotVerified => ErrorCode::EmailNotVerified,
                AuthError::SessionNotFound => ErrorCode::SessionNotFound,
                AuthError::WeakPassword(_) => ErrorCode::WeakPassword,
                AuthError::InvalidCredentials => ErrorCode::InvalidCredentials,
                AuthError::AccountDisabled => ErrorCode::AccountDisabled,
                AuthError::TooManyAttempts { .. } => ErrorCode::TooManyAttempts,
                AuthError::IpBlocked { .. } => ErrorCode::IpTemporarilyBlocked,
                AuthError::MissingToken => ErrorCode::MissingToken,
                AuthError::InvalidToken => ErrorCode::InvalidToken,
                AuthError::InvalidRefreshToken => ErrorCode::InvalidRefreshToken,
                AuthError::InvalidMfaCode => ErrorCode::InvalidMfaCode,
                AuthError::InvalidMfaToken => ErrorCode::InvalidMfaToken,
                AuthError::FactorNotFound => ErrorCode::FactorNotFound,
                AuthError::FactorLimit => ErrorCode::FactorLimit,
                AuthError::MfaNotEnrolled => ErrorCode::MfaNotEnrolled,
                AuthError::StepUpRequired => ErrorCode::MfaStepUpRequired,
                AuthError::InvalidPasskey | AuthError::PasskeySignInFailed => {
                    ErrorCode::InvalidPasskey
                }
                AuthError::InvalidCeremony => ErrorCode::InvalidCeremony,
                AuthError::PasskeyNotFound => ErrorCode::PasskeyNotFound,
                AuthError::Unavailable(_)
                | AuthError::RevocationsStale
                | AuthError::HashQueueFull
                | AuthError::CeremoniesFull => ErrorCode::ServiceUnavailable,
                AuthError::Internal(_) => ErrorCode::InternalError,
            },
            Self::InvalidJson => ErrorCode::InvalidJson,
            Self::Validation(_) => ErrorCode::ValidationError,
            Self::OriginNotAllowed => ErrorCode::OriginNotAllowed,
            Self::NotFound => ErrorCode::NotFound,
            Self::MethodNotAllowed => ErrorCode::MethodNotAllowed,
            Self::PayloadTooLarge => ErrorCode::PayloadTooLarge,
            Self::HeadersTooLarge => ErrorCode::HeadersTooLarge,
            Self::BadRequest => ErrorCode::BadRequest,
            Self::UnsupportedMediaType => ErrorCode::UnsupportedMediaType,
            Self::RateLimited { .. } => ErrorCode::RateLimited,
            Self::Timeout => ErrorCode::RequestTimeout,
            Self::Unavailable => ErrorCode::ServiceUnavailable,
            Self::NotBearer => ErrorCode::MissingToken,
        }
    }

    /// The `WWW-Authenticate` challenge of 401s (RFC 6750), when there is one.
    fn challenge(&self) -> Option<&'static str> {
        match self {
            Self::Auth(AuthError::InvalidToken) => Some(r#"Bearer error="invalid_token""#),
            Self::Auth(
                AuthError::InvalidCredentials
                | AuthError::AccountDisabled
                | AuthError::MissingToken
                | AuthError::InvalidRefreshToken
                | AuthError::InvalidMfaCode
                | AuthError::InvalidMfaToken
                | AuthError::PasskeySignInFailed,
            )
            | Self::NotBearer => Some("Bearer"),
            _ => None,
        }
    }

    /// Seconds for `Retry-After`, when the client should come back later.
    fn retry_after(&self) -> Option<u64> {
        match self {
            Self::Auth(
                AuthError::TooManyAttempts {
                    retry_after_secs, ..
                }
                | AuthError::IpBlocked {
                    retry_after_secs, ..
                },
            )
            | Self::RateLimited { retry_after_secs } => Some(*retry_after_secs),
            Self::Auth(AuthError::HashQueueFull) => Some(HASH_QUEUE_RETRY_AFTER_SECS),
            Self::Auth(
                AuthError::Unavailable(_) | AuthError::RevocationsStale | AuthError::CeremoniesFull,
            )
            | Self::Unavailable => Some(UNAVAILABLE_RETRY_AFTER_SECS),
            _ => None,
        }
    }

    /// The JSON body.
    #[must_use]
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            detail: self.to_string(),
            error_code: self.code(),
            // One shape for every field error: the code and `detail` the contract fixes,
            // and the fields in `errors`.
            errors: match self {
                Self::Validation(errors) => errors.clone(),
                Self::Auth(AuthError::WeakPassword(reasons)) => reasons
                    .iter()
                    .map(|reason| FieldError::new("password", *reason))
                    .collect(),
                Self::Auth(AuthError::InvalidEmail) => {
                    vec![FieldError::new(
                        "email",
                        AuthError::InvalidEmail.to_string(),
                    )]
                }
                Self::NotBearer => vec![FieldError::new(
                    "Authorization",
                    "the scheme must be Bearer (Authorization: Bearer <token>)",
                )],
                _ => Vec::new(),
            },
        }
    }
}

/// The whole HTTP/1.1 response, bytes on the wire, for an error the HTTP parser answers on its
/// own (hyper writes a bare status with no body): `status` as the contract's JSON body, with
/// [`super::COMMON_HEADERS`], closing the connection. `None` for a status that is not such an
/// error.
#[must_use]
pub fn parser_error_response(status: u16) -> Option<Vec<u8>> {
    let error = match status {
        431 => ApiError::HeadersTooLarge,
        400..=499 => ApiError::BadRequest,
        _ => return None,
    };
    let status = error.status();
    let body = serde_json::to_vec(&error.body()).ok()?;
    let mut head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or_default(),
        body.len()
    );
    for (name, value) in &super::COMMON_HEADERS {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(&body);
    Some(bytes)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            Self::Auth(AuthError::Internal(cause)) => {
                tracing::error!(error = %error_chain(cause.as_ref()), "internal error");
            }
            // An outage is logged once when it starts and once when it ends, by the
            // revocation follower; each request it fails is only worth a DEBUG line.
            Self::Auth(AuthError::Unavailable(cause)) => {
                tracing::debug!(error = %error_chain(cause), "database unavailable");
            }
            _ => {}
        }
        let mut response = (self.status(), Json(self.body())).into_response();
        let headers = response.headers_mut();
        if let Some(challenge) = self.challenge() {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        if let Some(secs) = self.retry_after() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone as _, Utc};

    use super::*;
    use crate::store::StoreError;

    /// error, status, `error_code`, `detail`, `WWW-Authenticate`, `Retry-After`.
    type Row = (
        ApiError,
        u16,
        &'static str,
        &'static str,
        Option<&'static str>,
        Option<&'static str>,
    );

    /// The contract table: every error, its status, code, detail and headers, as in API.md.
    #[test]
    fn every_error_matches_the_contract() {
        let until = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        let bearer = Some("Bearer");
        let cases: Vec<Row> = vec![
            (
                AuthError::UserExists.into(),
                409,
                "USER_EXISTS",
                "User already exists",
                None,
                None,
            ),
            (
                AuthError::InvalidEmail.into(),
                422,
                "INVALID_EMAIL",
                "Invalid email format",
                None,
                None,
            ),
            (
                AuthError::WeakPassword(vec![
                    "Password must be at least 8 characters long",
                    "Password must contain at least one number",
                ])
                .into(),
                422,
                "WEAK_PASSWORD",
                "Password validation failed: Password must be at least 8 characters long, Password must contain at least one number",
                None,
                None,
            ),
            (
                AuthError::InvalidCredentials.into(),
                401,
                "INVALID_CREDENTIALS",
                "Invalid email or password",
                bearer,
                None,
            ),
            (
                AuthError::AccountDisabled.into(),
                401,
                "ACCOUNT_DISABLED",
                "Account is disabled",
                bearer,
                None,
            ),
            (
                AuthError::TooManyAttempts {
                    until,
                    retry_after_secs: 42,
                }
                .into(),
                429,
                "TOO_MANY_ATTEMPTS",
                "Too many login attempts. Try again after 2026-01-02T03:04:05Z",
                None,
                Some("42"),
            ),
            (
                AuthError::IpBlocked {
                    until,
                    retry_after_secs: 7,
                }
                .into(),
                429,
                "IP_TEMPORARILY_BLOCKED",
                "Too many failed logins from this address. Try again after 2026-01-02T03:04:05Z",
                None,
                Some("7"),
            ),
            (
                AuthError::MissingToken.into(),
                401,
                "MISSING_TOKEN",
                "Authorization header missing",
                bearer,
                None,
            ),
            (
                ApiError::NotBearer,
                401,
                "MISSING_TOKEN",
                "Authorization header missing",
                bearer,
                None,
            ),
            (
                AuthError::InvalidToken.into(),
                401,
                "INVALID_TOKEN",
                "Invalid or expired token",
                Some(r#"Bearer error="invalid_token""#),
                None,
            ),
            (
                AuthError::SessionNotFound.into(),
                404,
                "SESSION_NOT_FOUND",
                "Session not found",
                None,
                None,
            ),
            (
                AuthError::InvalidMfaCode.into(),
                401,
                "INVALID_MFA_CODE",
                "Invalid code",
                bearer,
                None,
            ),
            (
                AuthError::InvalidMfaToken.into(),
                401,
                "INVALID_MFA_TOKEN",
                "Invalid or expired MFA token",
                bearer,
                None,
            ),
            (
                AuthError::StepUpRequired.into(),
                403,
                "MFA_STEP_UP_REQUIRED",
                "A second factor is required for this action",
                None,
                None,
            ),
            (
                AuthError::FactorNotFound.into(),
                404,
                "FACTOR_NOT_FOUND",
                "Factor not found",
                None,
                None,
            ),
            (
                AuthError::FactorLimit.into(),
                409,
                "FACTOR_LIMIT",
                "Too many factors",
                None,
                None,
            ),
            (
                AuthError::MfaNotEnrolled.into(),
                409,
                "MFA_NOT_ENROLLED",
                "No second factor enrolled",
                None,
                None,
            ),
            (
                AuthError::InvalidRefreshToken.into(),
                401,
                "INVALID_REFRESH_TOKEN",
                "Invalid or expired refresh token",
                bearer,
                None,
            ),
            (
                AuthError::Unavailable(StoreError::Unavailable(sqlx::Error::PoolTimedOut)).into(),
                503,
                "SERVICE_UNAVAILABLE",
                "Service temporarily unavailable",
                None,
                Some("5"),
            ),
            (
                AuthError::HashQueueFull.into(),
                503,
                "SERVICE_UNAVAILABLE",
                "Service temporarily unavailable",
                None,
                Some("1"),
            ),
            (
                AuthError::RevocationsStale.into(),
                503,
                "SERVICE_UNAVAILABLE",
                "Service temporarily unavailable",
                None,
                Some("5"),
            ),
            (
                AuthError::Internal(anyhow::anyhow!("select * from secrets")).into(),
                500,
                "INTERNAL_ERROR",
                "Internal server error",
                None,
                None,
            ),
            (
                ApiError::InvalidJson,
                422,
                "INVALID_JSON",
                "Invalid JSON in request body",
                None,
                None,
            ),
            (
                ApiError::Validation(vec![]),
                422,
                "VALIDATION_ERROR",
                "Request validation failed",
                None,
                None,
            ),
            (
                ApiError::OriginNotAllowed,
                403,
                "ORIGIN_NOT_ALLOWED",
                "Origin not allowed",
                None,
                None,
            ),
            (
                ApiError::NotFound,
                404,
                "NOT_FOUND",
                "Not Found",
                None,
                None,
            ),
            (
                ApiError::MethodNotAllowed,
                405,
                "METHOD_NOT_ALLOWED",
                "Method Not Allowed",
                None,
                None,
            ),
            (
                ApiError::PayloadTooLarge,
                413,
                "PAYLOAD_TOO_LARGE",
                "Request body too large",
                None,
                None,
            ),
            (
                ApiError::UnsupportedMediaType,
                422,
                "UNSUPPORTED_MEDIA_TYPE",
                "Unsupported media type: send application/json",
                None,
                None,
            ),
            (
                ApiError::RateLimited {
                    retry_after_secs: 3,
                },
                429,
                "RATE_LIMITED",
                "Too many requests",
                None,
                Some("3"),
            ),
            (
                ApiError::Timeout,
                408,
                "REQUEST_TIMEOUT",
                "Request timeout",
                None,
                None,
            ),
            (
                ApiError::Unavailable,
                503,
                "SERVICE_UNAVAILABLE",
                "Service temporarily unavailable",
                None,
                Some("5"),
            ),
        ];
        for (err, status, code, detail, challenge, retry_after) in cases {
            let mut body = serde_json::to_value(err.body()).unwrap();
            // Field errors add their `errors` list (tested over HTTP in tests/it/api_errors.rs).
            let errors = body.as_object_mut().unwrap().remove("errors");
            assert_eq!(
                errors.is_some(),
                matches!(
                    err,
                    ApiError::Validation(_)
                        | ApiError::NotBearer
                        | ApiError::Auth(AuthError::InvalidEmail | AuthError::WeakPassword(_))
                ) && !matches!(&err, ApiError::Validation(e) if e.is_empty()),
                "{err:?}"
            );
            assert_eq!(
                body,
                serde_json::json!({"detail": detail, "error_code": code}),
                "{err:?}"
            );
            let response = err.into_response();
            assert_eq!(response.status().as_u16(), status, "{code}");
            let header = |name| {
                response
                    .headers()
                    .get(name)
                    .map(|v| v.to_str().unwrap().to_owned())
            };
            assert_eq!(
                header(header::WWW_AUTHENTICATE).as_deref(),
                challenge,
                "{code}"
            );
            assert_eq!(
                header(header::RETRY_AFTER).as_deref(),
                retry_after,
                "{code}"
            );
        }
    }

    #[test]
    fn validation_errors_list_their_fields() {
        let err = ApiError::Validation(vec![FieldError {
            field: "password".into(),
            message: "must be at least 8 characters".into(),
        }]);
        assert_eq!(
            serde_json::to_value(err.body()).unwrap(),
            serde_json::json!({
                "detail": "Request validation failed",
                "error_code": "VALIDATION_ERROR",
                "errors": [{"field": "password", "message": "must be at least 8 characters"}],
            })
        );
    }
}
