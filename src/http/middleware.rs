//! Middleware: route templates for logs and metrics, request metrics, request spans, and the
//! safety net that gives every bare framework error the contract's JSON body.

use std::{
    collections::HashMap,
    sync::{Arc, PoisonError, RwLock},
    time::Instant,
};

use crate::client_address::ClientAddresses;
use axum::{
    extract::{MatchedPath, Request, State},
    http::{HeaderValue, Method, Response, StatusCode, header},
    middleware::Next,
    response::IntoResponse,
};
use tower_http::{request_id::RequestId, trace::MakeSpan};
use tracing::{Level, Span, field::Empty};

use super::errors::ApiError;

/// Label for requests that matched no route.
const UNMATCHED: &str = "unmatched";

/// The route template of a request (`/auth/login`), or `unmatched`: never the raw path, so
/// logs and metrics labels stay bounded. `Router::layer` runs after routing, so the template
/// is known here, for every response of the route (timeouts included).
fn route_of<B>(req: &axum::http::Request<B>) -> &str {
    req.extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED, MatchedPath::as_str)
}

/// The `method` label and log field: the standard methods by name, anything else `_OTHER`
/// (the OpenTelemetry convention), so a made-up method can neither grow `/metrics` nor reach
/// the logs.
#[must_use]
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "_OTHER",
    }
}

/// Request metrics with their handles kept: `http_requests_total` by method, route template
/// and status, `http_request_duration_seconds` by route. Every label has a bounded set of
/// values (route templates, [`method_label`], the statuses the service answers), and looking a
/// handle up costs a read lock and a hash of the route instead of building the labels anew.
#[derive(Default)]
pub struct HttpMetrics {
    routes: RwLock<HashMap<Arc<str>, Arc<RouteMetrics>>>,
}

/// The metric handles of one route.
pub struct RouteMetrics {
    route: Arc<str>,
    duration: metrics::Histogram,
    requests: RwLock<HashMap<(&'static str, u16), metrics::Counter>>,
}

impl HttpMetrics {
    /// The handles of `route` (a route template), registered on first use.
    pub fn route(&self, route: &str) -> Arc<RouteMetrics> {
        if let Some(found) = read(&self.routes).get(route) {
            return Arc::clone(found);
        }
        let route: Arc<str> = Arc::from(route);
        let created = Arc::new(RouteMetrics {
            route: Arc::clone(&route),
            duration: metrics::histogram!("http_request_duration_seconds", "route" => route.to_string()),
            requests: RwLock::default(),
        });
        Arc::clone(write(&self.routes).entry(route).or_insert(created))
    }
}

impl RouteMetrics {
    /// Counts one response and observes its latency.
    pub fn record(&self, method: &'static str, status: u16, took: std::time::Duration) {
        self.duration.record(took.as_secs_f64());
        if let Some(counter) = read(&self.requests).get(&(method, status)) {
            counter.increment(1);
            return;
        }
        let counter = metrics::counter!(
            "http_requests_total",
            "method" => method,
            "route" => self.route.to_string(),
            "status" => status.to_string(),
        );
        counter.increment(1);
        write(&self.requests).insert((method, status), counter);
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

/// Counts the request and observes its latency (under its route, timeouts included), and
/// gives a bare framework error the contract's JSON body: one layer for both.
pub async fn observe(
    State(metrics): State<Arc<HttpMetrics>>,
    req: Request,
    next: Next,
) -> axum::response::Response {
    let started = Instant::now();
    let method = method_label(req.method());
    let route = metrics.route(route_of(&req));
    let response = json_errors(next.run(req).await);
    route.record(method, response.status().as_u16(), started.elapsed());
    response
}

/// Replaces the empty body of an error produced outside our handlers (unknown method,
/// timeout) with the contract's JSON body, keeping its headers (`Allow`).
fn json_errors(response: axum::response::Response) -> axum::response::Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let error = match status {
        StatusCode::NOT_FOUND => ApiError::NotFound,
        StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed,
        StatusCode::REQUEST_TIMEOUT => ApiError::Timeout,
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType,
        StatusCode::SERVICE_UNAVAILABLE => ApiError::Unavailable,
        s if s.is_client_error() => ApiError::InvalidJson,
        _ => ApiError::Auth(crate::service::AuthError::Internal(anyhow::anyhow!(
            "framework error {status} without a body"
        ))),
    };
    let (mut parts, _) = response.into_parts();
    let replacement = error.into_response();
    let (new_parts, body) = replacement.into_parts();
    parts.status = new_parts.status;
    for (name, value) in &new_parts.headers {
        parts.headers.insert(name, value.clone());
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    axum::response::Response::from_parts(parts, body)
}

/// Builds the per-request span: method, route template, status, latency, request id, client.
#[derive(Clone)]
pub struct RequestSpan {
    /// Needed to name the real client behind a trusted proxy.
    pub clients: ClientAddresses,
    /// Traces are exported: a request's span continues its caller's trace.
    pub traces: bool,
}

/// What a request span reads of a request (its body aside).
#[derive(Clone, Copy)]
pub struct RequestHead<'a> {
    /// The method.
    pub method: &'a Method,
    /// The headers.
    pub headers: &'a axum::http::HeaderMap,
    /// The extensions (the socket peer).
    pub extensions: &'a axum::http::Extensions,
}

impl<'a> From<&'a axum::http::request::Parts> for RequestHead<'a> {
    fn from(parts: &'a axum::http::request::Parts) -> Self {
        Self {
            method: &parts.method,
            headers: &parts.headers,
            extensions: &parts.extensions,
        }
    }
}

/// A request span's level: [`Level::INFO`], or [`Level::DEBUG`] for the quiet routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanLevel {
    /// The route's own: DEBUG for probes, scrapes and `/auth/verify`, INFO for the rest.
    Route,
    /// INFO whatever the route: the span an ERROR line of a quiet route is logged in.
    Info,
}

impl RequestSpan {
    /// The span of a request to `route` whose id is `request_id`.
    ///
    /// Probes, scrapes and `/auth/verify` (which other services call on every request they
    /// serve, tens of thousands a second) get DEBUG spans and request lines: at INFO they
    /// would cost more than the verification itself (a span's fields are formatted when it is
    /// made). Their failures are still logged, in a span made then at INFO ([`SpanLevel::Info`],
    /// see [`super::services::verify_answer`]), so an ERROR line carries the request's id, route
    /// and client on every route; and counted in the metrics.
    pub fn span<B>(
        &self,
        req: &axum::http::Request<B>,
        route: &str,
        request_id: Option<&HeaderValue>,
        level: SpanLevel,
    ) -> Span {
        let span = self.span_of(
            RequestHead {
                method: req.method(),
                headers: req.headers(),
                extensions: req.extensions(),
            },
            route,
            request_id,
            level,
        );
        if self.traces {
            crate::telemetry::traces::continue_trace(
                &span,
                req.headers(),
                method_label(req.method()),
                route,
            );
        }
        span
    }

    /// [`Self::span`] from the parts of a request it reads.
    pub fn span_of(
        &self,
        req: RequestHead<'_>,
        route: &str,
        request_id: Option<&HeaderValue>,
        level: SpanLevel,
    ) -> Span {
        macro_rules! request_span {
            ($target:expr, $level:expr) => {
                // The field values are only computed when the span is enabled.
                tracing::span!(
                    target: $target,
                    $level,
                    "request",
                    http.request.method = method_label(req.method),
                    http.route = route,
                    http.response.status_code = Empty,
                    duration_ms = Empty,
                    trace_id = Empty,
                    otel.name = Empty,
                    otel.kind = Empty,
                    otel.status_code = Empty,
                    request_id = request_id
                        .and_then(|id| id.to_str().ok())
                        .unwrap_or_default(),
                    client.ip = %super::extract::client_ip(
                        req.headers,
                        req.extensions,
                        self.clients.trusted(),
                    ),
                )
            };
        }
        let probe = route.starts_with("/health") || route == "/metrics";
        match level {
            // Probes and scrapes under a target of their own, which traces leave out.
            SpanLevel::Route if probe => {
                request_span!(crate::telemetry::traces::PROBES, Level::DEBUG)
            }
            SpanLevel::Route if route == super::hot_path::VERIFY => {
                request_span!(module_path!(), Level::DEBUG)
            }
            SpanLevel::Route | SpanLevel::Info => request_span!(module_path!(), Level::INFO),
        }
    }
}

impl<B> MakeSpan<B> for RequestSpan {
    fn make_span(&mut self, req: &axum::http::Request<B>) -> Span {
        let request_id = req
            .extensions()
            .get::<RequestId>()
            .map(RequestId::header_value);
        self.span(req, route_of(req), request_id, SpanLevel::Route)
    }
}

/// Records status and latency on the span and logs one line per request (probes, scrapes and
/// verify at DEBUG, as their spans, so they do not drown the log).
pub fn on_response<B>(response: &Response<B>, latency: std::time::Duration, span: &Span) {
    let status = response.status().as_u16();
    let duration_ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
    span.record("http.response.status_code", status);
    span.record("duration_ms", duration_ms);
    if response.status().is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    let quiet = match span.metadata() {
        Some(meta) => *meta.level() == Level::DEBUG,
        None => return,
    };
    if quiet {
        tracing::event!(
            Level::DEBUG,
            http.response.status_code = status,
            duration_ms,
            "request completed"
        );
    } else {
        tracing::event!(
            Level::INFO,
            http.response.status_code = status,
            duration_ms,
            "request completed"
        );
    }
}

/// The longest client request id kept (API.md: 1 to 128 visible ASCII characters).
const MAX_REQUEST_ID: usize = 128;

/// Drops a client's `X-Request-Id` that is empty, longer than 128 characters or not visible
/// ASCII, so a fresh one is generated instead: a client cannot write arbitrary text into every
/// log line and audit event of its request.
pub fn drop_unusable_request_id<B>(mut req: axum::http::Request<B>) -> axum::http::Request<B> {
    let usable = |value: &HeaderValue| {
        let bytes = value.as_bytes();
        !bytes.is_empty() && bytes.len() <= MAX_REQUEST_ID && bytes.iter().all(u8::is_ascii_graphic)
    };
    let headers = req.headers_mut();
    let ids = headers.get_all(REQUEST_ID);
    let mut values = ids.iter();
    let keep = match (values.next(), values.next()) {
        (Some(value), None) => usable(value),
        (None, _) => true,
        (Some(_), Some(_)) => false,
    };
    if !keep {
        headers.remove(REQUEST_ID);
    }
    req
}

/// `x-request-id`.
pub const REQUEST_ID: &str = "x-request-id";
