//! The tower layer and the axum extractor.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use axum::{
    body::Body,
    extract::FromRequestParts,
    http::{HeaderValue, Request, Response, StatusCode, header, request::Parts},
};
use tower::{Layer, Service};

use crate::{VerifiedUser, Verifier, VerifyError};

/// Requires a valid access token on every request of the wrapped service: answers 401 or 503
/// in auth-service's error shape otherwise, and puts the [`VerifiedUser`] in the request's
/// extensions for the handler ([`Authenticated`]).
#[derive(Clone)]
pub struct RequireAuthLayer {
    verifier: Verifier,
}

impl RequireAuthLayer {
    /// The layer for `verifier`.
    #[must_use]
    pub fn new(verifier: Verifier) -> Self {
        Self { verifier }
    }
}

impl<S> Layer<S> for RequireAuthLayer {
    type Service = RequireAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireAuth {
            inner,
            verifier: self.verifier.clone(),
        }
    }
}

/// The service [`RequireAuthLayer`] makes.
#[derive(Clone)]
pub struct RequireAuth<S> {
    inner: S,
    verifier: Verifier,
}

impl<S, B> Service<Request<B>> for RequireAuth<S>
where
    S: Service<Request<B>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // The inner service was polled ready; keep that one, leave a clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let verifier = self.verifier.clone();
        Box::pin(async move {
            let verified = match bearer(req.headers()) {
                Some(token) => verifier.verify(token).await,
                None => Err(VerifyError::Missing),
            };
            match verified {
                Ok(user) => {
                    req.extensions_mut().insert(user);
                    inner.call(req).await
                }
                Err(err) => Ok(refusal(err)),
            }
        })
    }
}

/// The bearer token of the `Authorization` header (scheme in any case).
fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// auth-service's answer for the same failure: status, body, challenge, `Retry-After`.
fn refusal(err: VerifyError) -> Response<Body> {
    let (status, code, challenge) = match err {
        VerifyError::Missing => (StatusCode::UNAUTHORIZED, "MISSING_TOKEN", Some("Bearer")),
        VerifyError::Invalid => (
            StatusCode::UNAUTHORIZED,
            "INVALID_TOKEN",
            Some(r#"Bearer error="invalid_token""#),
        ),
        VerifyError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "SERVICE_UNAVAILABLE", None),
    };
    let body = serde_json::json!({"detail": err.to_string(), "error_code": code}).to_string();
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(challenge) = challenge {
        headers.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
    }
    if status == StatusCode::SERVICE_UNAVAILABLE {
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// The user [`RequireAuthLayer`] verified, for a handler: `Authenticated(user): Authenticated`.
/// Without the layer in front, the request is refused with 401.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated(pub VerifiedUser);

impl<S: Send + Sync> FromRequestParts<S> for Authenticated {
    type Rejection = Response<Body>;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<VerifiedUser>()
            .cloned()
            .map(Self)
            .ok_or_else(|| refusal(VerifyError::Missing))
    }
}
