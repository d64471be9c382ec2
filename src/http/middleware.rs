//! Middleware: route templates for logs and metrics, request metrics, request spans, and the
//! safety net that gives every bare framework error the contract's JSON body.

use std::{sync::Arc, time::Instant};

use axum::{
    extract::{MatchedPath, Request},
    http::{Response, StatusCode, header},
    middleware::Next,
    response::IntoResponse,
};
use ipnet::IpNet;
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

/// Counts requests and observes their latency by method, route template and status.
pub async fn track_metrics(req: Request, next: Next) -> axum::response::Response {
    let started = Instant::now();
    let method = req.method().to_string();
    let route = route_of(&req).to_owned();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    let elapsed = started.elapsed().as_secs_f64();
    metrics::counter!("http_requests_total", "method" => method, "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("http_request_duration_seconds", "route" => route).record(elapsed);
    response
}

/// Replaces the empty body of an error produced outside our handlers (unknown route or
/// method, timeout, body limit) with the contract's JSON body, keeping its headers (`Allow`).
pub async fn json_errors(req: Request, next: Next) -> axum::response::Response {
    let response = next.run(req).await;
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
    pub trusted_proxies: Arc<[IpNet]>,
}

impl<B> MakeSpan<B> for RequestSpan {
    fn make_span(&mut self, req: &axum::http::Request<B>) -> Span {
        let request_id = req
            .extensions()
            .get::<RequestId>()
            .and_then(|id| id.header_value().to_str().ok())
            .unwrap_or_default();
        let client =
            super::extract::client_ip(req.headers(), req.extensions(), &self.trusted_proxies);
        let route = route_of(req);
        let quiet = route.starts_with("/health") || route == "/metrics";
        macro_rules! request_span {
            ($level:expr) => {
                tracing::span!(
                    $level,
                    "request",
                    http.method = %req.method(),
                    http.route = route,
                    http.status = Empty,
                    duration_ms = Empty,
                    request_id = %request_id,
                    client.ip = %client,
                )
            };
        }
        if quiet {
            request_span!(Level::DEBUG)
        } else {
            request_span!(Level::INFO)
        }
    }
}

/// Records status and latency on the span and logs one line per request (probes and metrics
/// scrapes at DEBUG so they do not drown the log).
pub fn on_response<B>(response: &Response<B>, latency: std::time::Duration, span: &Span) {
    let status = response.status().as_u16();
    let duration_ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
    span.record("http.status", status);
    span.record("duration_ms", duration_ms);
    // Probes and scrapes get a DEBUG span (see `make_span`); the line has the span's level.
    let quiet = match span.metadata() {
        Some(meta) => *meta.level() == Level::DEBUG,
        None => return,
    };
    if quiet {
        tracing::event!(
            Level::DEBUG,
            http.status = status,
            duration_ms,
            "request completed"
        );
    } else {
        tracing::event!(
            Level::INFO,
            http.status = status,
            duration_ms,
            "request completed"
        );
    }
}
