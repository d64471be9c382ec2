//! Response shapes that more than one area answers with: the plain confirmation, tokens, the errors
//! every JSON-body route documents, the lockout's `X-RateLimit-*` headers.

use axum::{
    Json,
    http::{HeaderMap, HeaderName, HeaderValue, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use utoipa::ToSchema;

use super::errors::ErrorBody;
use crate::service::{TokenPair, lockout::AttemptStatus};

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

/// The headers of every answer that carries tokens: never cached (RFC 6749 section 5.1).
pub const NO_STORE: [(header::HeaderName, &str); 2] = [
    (header::CACHE_CONTROL, "no-store"),
    (header::PRAGMA, "no-cache"),
];

/// A token response, with [`NO_STORE`].
pub fn tokens(pair: TokenPair) -> Response {
    (NO_STORE, Json(TokenResponse::from(pair))).into_response()
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
