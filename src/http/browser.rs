//! Requests from browsers: the ones that carry an `Origin` header.
//!
//! - A POST or DELETE from an origin outside `CORS_ORIGINS`, other than the service's own
//!   (same-origin: the `/docs` page), is refused with 403 `ORIGIN_NOT_ALLOWED` before anything
//!   else happens: a hostile page can POST without `Content-Type` (no preflight) and would
//!   otherwise register accounts or burn login attempts from its visitors' addresses. A
//!   DELETE always needs a preflight, which CORS refuses anyway; refusing it here too keeps
//!   one rule for every state-changing method.
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
    http::{HeaderValue, Method, Request, Response, header, uri::Authority},
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
        if (req.method() == Method::POST || req.method() == Method::DELETE)
            && !allowed(&self.origins, origin)
            && !same_origin(&req, origin)
        {
            let refused = ApiError::OriginNotAllowed.into_response();
            return Either::Left(Either::Right(std::future::ready(Ok(refused))));
        }
        // `inner` was polled ready; the CORS service wraps that same, ready service.
        let ready = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, ready);
        Either::Left(Either::Left(self.cors.layer(ready).call(req)))
    }
}

/// Whether `origin` is the service's own origin as this request addressed it: the same host and
/// port as `Host` (or HTTP/2's `:authority`), over `http` or `https` (TLS ends in front of the
/// service; the page was served by whatever the browser addressed). A default port is the same
/// whether written or not. A cross-site page cannot make its `Origin` match the `Host` its own
/// browser sends, so "Try it out" on `/docs` works at the defaults and nothing else does.
fn same_origin(req: &Request<Body>, origin: &HeaderValue) -> bool {
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let Some(host) = req
        .headers()
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .or_else(|| req.uri().authority().map(Authority::as_str))
    else {
        return false;
    };
    let Some((scheme, origin_host)) = origin.split_once("://") else {
        return false;
    };
    let default_port = if scheme.eq_ignore_ascii_case("http") {
        ":80"
    } else if scheme.eq_ignore_ascii_case("https") {
        ":443"
    } else {
        return false;
    };
    let without_default = |authority: &'_ str| -> String {
        authority
            .strip_suffix(default_port)
            .unwrap_or(authority)
            .to_ascii_lowercase()
    };
    !origin_host.is_empty() && without_default(origin_host) == without_default(host)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn same(origin: &str, host: &str) -> bool {
        let req = Request::post("/auth/login")
            .header(header::HOST, host)
            .body(Body::empty())
            .unwrap();
        same_origin(&req, &HeaderValue::from_str(origin).unwrap())
    }

    #[test]
    fn only_the_services_own_origin_is_same_origin() {
        for (origin, host) in [
            ("http://127.0.0.1:8001", "127.0.0.1:8001"),
            ("http://LOCALHOST:8001", "localhost:8001"),
            ("https://auth.example.com", "auth.example.com"),
            ("https://auth.example.com", "auth.example.com:443"),
            ("http://auth.example.com:80", "auth.example.com"),
            ("http://[::1]:8001", "[::1]:8001"),
        ] {
            assert!(same(origin, host), "{origin} {host}");
        }
        for (origin, host) in [
            ("http://evil.example", "127.0.0.1:8001"),
            ("http://127.0.0.1:8002", "127.0.0.1:8001"),
            ("http://127.0.0.1", "127.0.0.1:8001"),
            ("https://auth.example.com", "auth.example.com:80"),
            ("http://auth.example.com.evil.example", "auth.example.com"),
            ("null", "127.0.0.1:8001"),
            ("ftp://127.0.0.1:8001", "127.0.0.1:8001"),
            ("http://", ""),
        ] {
            assert!(!same(origin, host), "{origin} {host}");
        }
    }
}
