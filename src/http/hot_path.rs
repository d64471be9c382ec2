//! `GET /auth/verify` ahead of the router: what every other service calls on every request it
//! serves, with only the layers it needs.
//!
//! [`App`] is the service the server runs: a `GET /auth/verify` without an `Origin` header
//! (a service, not a browser) is answered here; everything else, browsers' verify calls
//! included, goes to the [`Router`] with its full stack. The answer is the same either way:
//! the same function ([`super::services::verify_answer`]: token, service call, response, error,
//! an ERROR line in a span with the request's id, route and client), run inside the same
//! request span, the contract's headers ([`super::COMMON_HEADERS`], `X-Request-Id` echoed or generated,
//! `Vary: Origin`), the same `http_requests_total` and `http_request_duration_seconds`
//! series and, at DEBUG, the same request line. What it leaves out is what a verify from a
//! service does not use: routing, the per-layer boxing and cloning of the router's stack, the
//! CORS machinery, and the body limit (a GET's body is never read).

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use axum::{
    Router,
    body::Body,
    extract::Request,
    http::{HeaderValue, Method, header},
    response::Response,
};
use tower::Service;
use tower_http::request_id::{MakeRequestId as _, MakeRequestUuid, RequestId};
use tracing::Instrument as _;

use super::{
    COMMON_HEADERS,
    middleware::{self, HttpMetrics, REQUEST_ID, RouteMetrics, SpanLevel},
};
use crate::service::AuthService;

/// The route this module answers.
pub const VERIFY: &str = "/auth/verify";

/// The application: the verify hot path, then the router.
#[derive(Clone)]
pub struct App {
    router: Router,
    hot: Arc<Hot>,
}

struct Hot {
    auth: AuthService,
    route: Arc<RouteMetrics>,
    span: middleware::RequestSpan,
}

impl App {
    /// `router` behind the verify hot path; `metrics` is the router's own, so both count in
    /// the same series.
    pub(super) fn new(
        router: Router,
        auth: AuthService,
        metrics: &HttpMetrics,
        span: middleware::RequestSpan,
    ) -> Self {
        Self {
            router,
            hot: Arc::new(Hot {
                auth,
                route: metrics.route(VERIFY),
                span,
            }),
        }
    }
}

/// Whether `req` is a service's verify: `GET /auth/verify`, no `Origin`.
fn is_hot(req: &Request) -> bool {
    req.method() == Method::GET
        && req.uri().path() == VERIFY
        && !req.headers().contains_key(header::ORIGIN)
}

type HotFuture = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl Service<Request> for App {
    type Response = Response;
    type Error = Infallible;
    type Future =
        futures_util::future::Either<HotFuture, <Router as Service<Request<Body>>>::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Service::<Request<Body>>::poll_ready(&mut self.router, cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        if is_hot(&req) {
            let hot = Arc::clone(&self.hot);
            futures_util::future::Either::Left(Box::pin(async move { Ok(hot.verify(req).await) }))
        } else {
            futures_util::future::Either::Right(self.router.call(req))
        }
    }
}

impl Hot {
    async fn verify(&self, req: Request) -> Response {
        let started = Instant::now();
        let req = middleware::drop_unusable_request_id(req);
        // The client's usable id, or a fresh one made as the router's `SetRequestIdLayer`
        // makes them (`MakeRequestUuid` always makes one).
        let request_id = match req.headers().get(REQUEST_ID) {
            Some(id) => Some(id.clone()),
            None => MakeRequestUuid
                .make_request_id(&req)
                .map(RequestId::into_header_value),
        };
        let span = self
            .span
            .span(&req, VERIFY, request_id.as_ref(), SpanLevel::Route);
        // The body (a GET's, never read) stays behind: the answer holds only the head.
        let (parts, _) = req.into_parts();
        let error_span = || {
            self.span.span_of(
                (&parts).into(),
                VERIFY,
                request_id.as_ref(),
                SpanLevel::Info,
            )
        };
        let mut response = super::services::verify_answer(&self.auth, &parts.headers, error_span)
            .instrument(span.clone())
            .await;
        let headers = response.headers_mut();
        if let Some(id) = request_id {
            headers.insert(REQUEST_ID, id);
        }
        for (name, value) in COMMON_HEADERS {
            headers.insert(name, HeaderValue::from_static(value));
        }
        headers
            .entry(header::VARY)
            .or_insert(HeaderValue::from_static("origin"));
        let took = started.elapsed();
        self.route.record("GET", response.status().as_u16(), took);
        middleware::on_response(&response, took, &span);
        response
    }
}
