//! Requests from browsers: the ones that carry an `Origin` header.
//!
//! - A POST from an origin outside `CORS_ORIGINS` is refused with 403 `ORIGIN_NOT_ALLOWED`
//!   before anything else happens: a hostile page can POST without `Content-Type` (no
//!   preflight) and would otherwise register accounts or burn login attempts from its
//!   visitors' addresses.
//! - CORS (tower-http's `CorsLayer`) answers preflights and decorates the responses.
//!
//! Requests without `Origin` (servers, curl, the services calling `/auth/verify` on every
//! request they serve) go straight to the route: the CORS machinery costs a copy of its
//! configuration per request, about a fifth of what a verification costs, and decorates
//! nothing a non-browser reads. `Vary: Origin` is sent on every response regardless (see
//! [`super::router`]), so caches never mix the two kinds of answer.

use std::{
    convert::Infallible,
    future::Ready,
    sync::Arc,
    task::{Context, Poll},
};

use axum::{
    body::Body,
    http::{HeaderValue, Method, Request, Response, header},
    response::IntoResponse as _,
};
use futures_util::future::Either;
use tower::{Layer, Service};
use tower_http::cors::{Cors, CorsLayer};

use super::errors::ApiError;
use crate::config::CorsOrigins;

/// Wraps each route with [`Browser`].
#[derive(Clone)]
pub struct BrowserLayer {
    cors: Arc<CorsLayer>,
    origins: Arc<CorsOrigins>,
}

impl BrowserLayer {
    /// The layer for the configured origins and CORS rules.
    #[must_use]
    pub fn new(cors: CorsLayer, origins: CorsOrigins) -> Self {
        Self {
            cors: Arc::new(cors),
            origins: Arc::new(origins),
        }
    }
}

impl<S> Layer<S> for BrowserLayer {
    type Service = Browser<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Browser {
            inner,
            cors: Arc::clone(&self.cors),
            origins: Arc::clone(&self.origins),
        }
    }
}

/// See the module docs. Cloned for every request (axum clones a route's service per call), so
/// it holds only the route and two shared pointers; the CORS service is built for the requests
/// that need it.
#[derive(Clone)]
pub struct Browser<S> {
    inner: S,
    cors: Arc<CorsLayer>,
    origins: Arc<CorsOrigins>,
}

/// The refusal, or what CORS or the route answers.
type BrowserFuture<C, F> = Either<Either<C, Ready<Result<Response<Body>, Infallible>>>, F>;

impl<S> Service<Request<Body>> for Browser<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BrowserFuture<<Cors<S> as Service<Request<Body>>>::Future, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let Some(origin) = req.headers().get(header::ORIGIN) else {
            return Either::Right(self.inner.call(req));
        };
        if req.method() == Method::POST && !allowed(&self.origins, origin) {
            let refused = ApiError::OriginNotAllowed.into_response();
            return Either::Left(Either::Right(std::future::ready(Ok(refused))));
        }
        // `inner` was polled ready; the CORS service wraps that same, ready service.
        let ready = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, ready);
        Either::Left(Either::Left(self.cors.layer(ready).call(req)))
    }
}

fn allowed(origins: &CorsOrigins, origin: &HeaderValue) -> bool {
    match origins {
        CorsOrigins::Any => true,
        CorsOrigins::List(list) => origin.to_str().is_ok_and(|origin| {
            list.iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(origin))
        }),
    }
}
