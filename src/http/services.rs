//! What other services call: `GET /auth/verify` (the hot path's twin, [`super::hot_path`])
//! and the revocation feed for local verifiers. Neither is rate limited nor cut by the request
//! timeout: verify answers from memory on every request a service serves, and the feed holds a
//! long poll up to a minute.

use std::time::Duration;

use auth_verifier::claims::RevocationPage;
use axum::{
    Json,
    extract::{FromRef as _, Request, State},
    http::{HeaderMap, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    errors::{ApiError, ErrorBody},
    extract::{AppQuery, bearer_token},
};
use crate::{
    service::{AuthService, feed},
    state::AppState,
};

/// Verify, and the feed when `feed_on` (`REVOCATION_FEED_TOKENS` names its readers: without
/// them the route does not exist, nor its documentation).
pub fn routes(feed_on: bool) -> OpenApiRouter<AppState> {
    let router = OpenApiRouter::new().routes(routes!(verify));
    if feed_on {
        router.routes(routes!(revocations))
    } else {
        router
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
    /// The level of the token's sign-in (`acr`): `aal2` after a second factor or a passkey
    /// (additive).
    pub aal: auth_verifier::claims::Aal,
    /// The methods of the token's sign-in (`amr`, a set: `pwd`, `otp`, `rec`, `hwk`) (additive).
    #[schema(example = json!(["pwd", "otp"]))]
    #[schema(value_type = Vec<auth_verifier::claims::AuthMethod>)]
    pub amr: auth_verifier::claims::AuthMethods,
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
        let spans = super::request_span(&state);
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
            aal: user.aal,
            amr: user.amr,
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
