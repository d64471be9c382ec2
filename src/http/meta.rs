//! `/`, `/openapi.json`, `/docs`, `/metrics` and `/.well-known/jwks.json`.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Path, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Serialize;
use utoipa::{
    Modify, OpenApi, ToSchema,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{errors, errors::ApiError};
use crate::{service::AuthService, state::AppState};

/// What the OpenAPI document says besides its paths (each area's router brings its own, see
/// `http::document`).
#[derive(OpenApi)]
#[openapi(
    info(title = "auth-service", description = "JWT authentication service (Rust port of the Project Zero App auth service)."),
    components(schemas(errors::ErrorBody, errors::ErrorCode, errors::FieldError)),
    modifiers(&BearerAuth),
    tags(
        (name = "auth", description = "Registration, login and tokens"),
        (name = "account", description = "The signed-in user's password, sessions (devices) and account"),
        (name = "mfa", description = "The second factor: authenticator apps (TOTP), recovery codes, sign-in with a code and step-up"),
        (name = "passkeys", description = "Passkeys (WebAuthn): registration, the list, removal, and sign-in without a password at aal2"),
        (name = "health", description = "Probes"),
        (name = "meta", description = "Service information and metrics"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// `/metrics` alone, for its own listener (`METRICS_ADDR`).
pub fn metrics_router() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

/// The documented meta routes; `/metrics` too unless it has a listener of its own.
pub fn routes(metrics_here: bool) -> OpenApiRouter<AppState> {
    let router = OpenApiRouter::new()
        .routes(routes!(service_info))
        .routes(routes!(jwks));
    if metrics_here {
        router.routes(routes!(metrics))
    } else {
        router
    }
}

/// The document itself and Swagger UI, which show `doc`.
pub fn docs_router(doc: utoipa::openapi::OpenApi) -> Router<AppState> {
    let doc = Arc::new(doc);
    let swagger = Arc::new(utoipa_swagger_ui::Config::new(["/openapi.json"]));
    Router::new()
        .route("/openapi.json", get(move || async move { Json(doc) }))
        .route("/docs", get(docs_index))
        .route("/docs/", get(docs_index))
        .route(
            "/docs/{*file}",
            get(move |Path(file): Path<String>| docs_file(file, Arc::clone(&swagger))),
        )
}

/// What the embedded Swagger UI needs and nothing more: its own scripts and styles (its
/// stylesheet sets inline styles too), data: images (its icons), the OpenAPI document from this
/// origin; never framed, no forms, no plugins.
const DOCS_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data:; connect-src 'self'; font-src 'self'; base-uri 'self'; \
     form-action 'none'; frame-ancestors 'none'";

/// `GET /docs`: Swagger UI's page, answered here with 200 (the original's clients do not
/// follow a redirect). Its assets are relative, so a `<base>` points them at `/docs/`.
async fn docs_index() -> Response {
    // index.html is static; only swagger-initializer.js carries the configuration.
    let config = Arc::new(utoipa_swagger_ui::Config::default());
    match utoipa_swagger_ui::serve("index.html", config) {
        Ok(Some(file)) => {
            let page = String::from_utf8_lossy(&file.bytes).replacen(
                "<head>",
                r#"<head><base href="/docs/">"#,
                1,
            );
            (
                [
                    (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                    (header::CONTENT_SECURITY_POLICY, DOCS_CSP),
                ],
                page,
            )
                .into_response()
        }
        _ => ApiError::NotFound.into_response(),
    }
}

/// `GET /docs/{file}`: Swagger UI's assets, embedded in the binary (no CDN).
async fn docs_file(file: String, config: Arc<utoipa_swagger_ui::Config<'static>>) -> Response {
    match utoipa_swagger_ui::serve(&file, config) {
        Ok(Some(file)) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, file.content_type),
                (header::CONTENT_SECURITY_POLICY, DOCS_CSP.to_owned()),
            ],
            file.bytes.into_owned(),
        )
            .into_response(),
        _ => ApiError::NotFound.into_response(),
    }
}

/// `GET /` body.
#[derive(Serialize, ToSchema)]
pub struct ServiceInfo {
    /// Always `auth-service`.
    pub service: &'static str,
    /// The crate version.
    pub version: &'static str,
    /// Always `running`.
    pub status: &'static str,
    /// Where the docs are.
    pub docs: &'static str,
}

/// `GET /`: service information.
#[utoipa::path(get, path = "/", tag = "meta", summary = "Service information", responses((status = 200, body = ServiceInfo)))]
pub async fn service_info() -> Json<ServiceInfo> {
    Json(ServiceInfo {
        service: "auth-service",
        version: env!("CARGO_PKG_VERSION"),
        status: "running",
        docs: "/docs",
    })
}

/// `GET /metrics`: Prometheus text exposition. Filter it at the ingress.
#[utoipa::path(get, path = "/metrics", tag = "meta", summary = "Prometheus metrics",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    state.auth().record_pool_metrics();
    state.metrics().run_upkeep();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics().render(),
    )
}

/// JSON Web Key Set (RFC 7517).
#[derive(Serialize, ToSchema)]
pub struct Jwks {
    /// Public keys (`kty`, `kid`, `alg`, `use: "sig"` and the key's public parameters): the
    /// signing key with RS256, ES256 or EdDSA, and every key of `JWT_PUBLIC_KEY_FILES`. Empty
    /// with HS256 and no public key files: the shared secret is never published.
    pub keys: Vec<serde_json::Value>,
}

/// `GET /.well-known/jwks.json`: the public keys that may have signed a live token.
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "meta", summary = "Public signing keys",
    responses((status = 200, body = Jwks, headers(("Cache-Control" = String, description = "public, max-age=300")))))]
pub async fn jwks(State(auth): State<AuthService>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        auth.jwks_json().to_owned(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `error_code` the service can emit (the `ErrorCode` enumeration of the OpenAPI
    /// document, derived from the Rust enum) has a row in docs/API.md.
    #[test]
    fn every_error_code_is_documented_in_docs_api_md() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let codes = doc["components"]["schemas"]["ErrorCode"]["enum"]
            .as_array()
            .unwrap();
        assert!(codes.len() >= 19, "{codes:?}");
        let api_md =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/API.md")).unwrap();
        for code in codes {
            let row = format!("| `{}` |", code.as_str().unwrap());
            assert!(api_md.contains(&row), "docs/API.md has no row for {code}");
        }
    }

    /// The document lists the routes this process serves, and only those.
    #[test]
    fn optional_routes_are_documented_only_when_on() {
        let paths = |metrics_here, feed_on| -> Vec<String> {
            super::super::document(metrics_here, feed_on)
                .paths
                .paths
                .keys()
                .cloned()
                .collect()
        };
        let has = |paths: &[String], path: &str| paths.iter().any(|p| p == path);
        let defaults = paths(true, false);
        assert!(has(&defaults, "/metrics") && has(&defaults, "/auth/login"));
        assert!(!has(&defaults, "/auth/revocations"), "{defaults:?}");
        assert!(has(&paths(true, true), "/auth/revocations"));
        assert!(!has(&paths(false, false), "/metrics"));
    }

    /// The summaries Swagger UI shows beside each path do not repeat the path.
    #[test]
    fn operation_summaries_do_not_repeat_their_path() {
        let doc = serde_json::to_value(super::super::document(true, true)).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        assert!(paths.len() >= 21, "{} paths", paths.len());
        for (path, item) in paths {
            for (method, operation) in item.as_object().unwrap() {
                let summary = operation["summary"].as_str().unwrap_or_default();
                assert!(!summary.is_empty(), "{method} {path} has a summary");
                assert!(
                    !summary.contains(path.as_str()),
                    "{method} {path}: {summary}"
                );
            }
        }
    }
}
