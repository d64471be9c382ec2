//! Response shapes that more than one area answers with: the plain confirmation, the errors
//! every JSON-body route documents, the lockout's `X-RateLimit-*` headers.

use axum::{
    Json,
    http::{HeaderMap, HeaderName, HeaderValue},
};
use serde::Serialize;
use utoipa::ToSchema;

use super::errors::ErrorBody;
use crate::service::lockout::AttemptStatus;

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

/// `X-RateLimit-*` headers of a login response.
pub fn attempt_headers(status: Option<AttemptStatus>) -> HeaderMap {
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
