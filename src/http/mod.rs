//! The HTTP layer: routes, extractors, middleware. Handlers call [`crate::service`] only; no
//! SQL, bcrypt or JWT code lives here.

pub mod account;
pub mod auth;
pub mod browser;
pub mod errors;
pub mod extract;
pub mod health;
pub mod hot_path;
pub mod meta;
pub mod mfa;
pub mod middleware;
pub mod pages;
pub mod passkeys;
pub mod rate_limit;
pub mod recovery;
pub mod responses;
pub mod services;

use std::sync::Arc;

use axum::http::StatusCode;
use axum::{
    Router,
    extract::DefaultBodyLimit,
    http::{HeaderName, HeaderValue, Method, header},
};
use tower::{ServiceBuilder, util::MapRequestLayer};
use tower_http::{
    cors::{AllowHeaders, AllowOrigin, Any, CorsLayer},
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    set_header::SetResponseHeaderLayer,
    timeout::TimeoutLayer,
    trace::TraceLayer,
};
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;

use self::errors::ApiError;
use crate::{
    config::CorsOrigins,
    state::{AppState, HttpSettings},
};

/// Request bodies over this get 413 (the largest legitimate body is well under 1 KiB).
pub const BODY_LIMIT_BYTES: usize = 64 * 1024;

/// Headers every response carries, set over whatever a handler put: no page of ours may be
/// framed (clickjacking), leak its URL to another site, or be sniffed as another type.
pub const COMMON_HEADERS: [(HeaderName, &str); 3] = [
    (header::REFERRER_POLICY, "no-referrer"),
    (header::X_FRAME_OPTIONS, "DENY"),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
];

/// The application the server runs: the `/auth/verify` hot path ([`hot_path`]) in front of
/// the [`router`].
pub fn app(state: AppState) -> hot_path::App {
    let metrics = Arc::new(middleware::HttpMetrics::default());
    let span = request_span(&state);
    let router = router(state.clone(), Arc::clone(&metrics));
    hot_path::App::new(router, state.auth().clone(), &metrics, span)
}

fn request_span(state: &AppState) -> middleware::RequestSpan {
    middleware::RequestSpan {
        clients: state.http().clients.clone(),
        traces: state.http().traces,
    }
}

/// The whole application router with its layers; `metrics` is shared with the hot path.
fn router(state: AppState, metrics: Arc<middleware::HttpMetrics>) -> Router {
    let settings = state.http();
    let request_id = HeaderName::from_static("x-request-id");
    let span = request_span(&state);

    // One `Router::layer` call with the whole stack: axum boxes a route's service once per
    // `layer` call and clones every box on every request, so ten separate calls cost ten
    // allocations per request on the hot path. `ServiceBuilder` lists layers outermost first:
    // a bad request id is dropped, the id is set, then the span opens around everything else,
    // so every log line of a request carries its id and client.
    let layers = ServiceBuilder::new()
        .layer(MapRequestLayer::new(middleware::drop_unusable_request_id))
        .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(span)
                .on_request(())
                .on_response(middleware::on_response)
                .on_failure(()),
        )
        .layer(PropagateRequestIdLayer::new(request_id))
        .layer(common_header(0))
        .layer(common_header(1))
        .layer(common_header(2))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::VARY,
            HeaderValue::from_static("origin"),
        ))
        .layer(browser::BrowserLayer::new(
            cors(&settings.cors),
            settings.cors.clone(),
        ))
        .layer(axum::middleware::from_fn_with_state(
            metrics,
            middleware::observe,
        ))
        .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES));
    let (api, doc) = areas(settings.metrics_here, settings.feed_on, |body_routes| {
        limited(body_routes, settings)
    })
    .split_for_parts();
    Router::new()
        .merge(api)
        .merge(meta::docs_router(versioned(doc)))
        .merge(pages::router())
        .fallback(|| async { ApiError::NotFound })
        .with_state(state.clone())
        .layer(layers)
}

/// Every documented route, by the area that owns it, with its OpenAPI path: `/metrics` only
/// when it is on the main port, `/auth/revocations` only when `REVOCATION_FEED_TOKENS` turns
/// the feed on. `limits` wraps the routes that read a body and hash passwords.
fn areas(
    metrics_here: bool,
    feed_on: bool,
    limits: impl FnOnce(OpenApiRouter<AppState>) -> OpenApiRouter<AppState>,
) -> OpenApiRouter<AppState> {
    let body_routes = OpenApiRouter::new()
        .merge(auth::routes())
        .merge(recovery::routes())
        .merge(account::routes())
        .merge(mfa::routes())
        .merge(passkeys::routes());
    OpenApiRouter::with_openapi(meta::ApiDoc::openapi())
        .merge(meta::routes(metrics_here))
        .merge(health::routes())
        .merge(limits(body_routes))
        .merge(services::routes(feed_on))
}

/// The per-IP limiter and the whole-request timeout (408) over the routes that read a body
/// and hash passwords. `/auth/verify` (what other services call on every request they serve,
/// answered from memory) and the feed's long poll are outside both.
fn limited(routes: OpenApiRouter<AppState>, settings: &HttpSettings) -> OpenApiRouter<AppState> {
    let routes = match rate_limit::layer(settings.rate_limit, &settings.clients) {
        Some(layer) => routes.route_layer(layer),
        None => routes,
    };
    routes.route_layer(TimeoutLayer::with_status_code(
        StatusCode::REQUEST_TIMEOUT,
        settings.request_timeout,
    ))
}

/// The OpenAPI document of what this process serves (see `areas`).
#[must_use]
pub fn document(metrics_here: bool, feed_on: bool) -> utoipa::openapi::OpenApi {
    versioned(areas(metrics_here, feed_on, |routes| routes).into_openapi())
}

fn versioned(mut doc: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc
}

/// The layer that sets `COMMON_HEADERS[index]`.
fn common_header(index: usize) -> SetResponseHeaderLayer<HeaderValue> {
    let (name, value) = &COMMON_HEADERS[index];
    SetResponseHeaderLayer::overriding(name.clone(), HeaderValue::from_static(value))
}

/// The router of the separate metrics listener (`METRICS_ADDR`): `/metrics` and JSON 404s.
pub fn metrics_router(state: AppState) -> Router {
    meta::metrics_router()
        .fallback(|| async { ApiError::NotFound })
        .with_state(state)
}

fn cors(origins: &CorsOrigins) -> CorsLayer {
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::OPTIONS])
        // Any request header, as the original allowed (a browser sending `X-Correlation-ID`
        // must pass its preflight). Mirrored rather than `*`, which browsers ignore on
        // credentialed requests.
        .allow_headers(AllowHeaders::mirror_request())
        .expose_headers([
            HeaderName::from_static("x-request-id"),
            HeaderName::from_static("x-ratelimit-limit"),
            HeaderName::from_static("x-ratelimit-remaining"),
            HeaderName::from_static("x-ratelimit-reset"),
            header::RETRY_AFTER,
        ]);
    match origins {
        CorsOrigins::Any => layer.allow_origin(Any),
        CorsOrigins::List(list) => layer
            .allow_origin(AllowOrigin::list(
                list.iter().filter_map(|o| o.parse().ok()),
            ))
            .allow_credentials(true),
    }
}
