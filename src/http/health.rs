//! `/health`, `/health/ready` and `/health/live`.

use std::time::Duration;

use axum::{Json, extract::State, http::StatusCode};
use chrono::{SecondsFormat, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::errors::ErrorCode;
use crate::state::AppState;

/// A database that has not answered within this is "disconnected".
const DB_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The probes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(ready))
        .routes(routes!(live))
}

/// Health and readiness report. The 503 forms also carry `detail` and `error_code`, so they
/// have the contract's error shape too.
#[derive(Serialize, ToSchema)]
pub struct HealthResponse {
    /// `healthy`/`unhealthy` (`/health`) or `ready`/`not_ready` (`/health/ready`).
    #[schema(example = "healthy")]
    pub status: &'static str,
    /// When the check ran (RFC 3339, UTC).
    pub timestamp: String,
    /// `connected` or `disconnected`.
    #[schema(example = "connected")]
    pub database: &'static str,
    /// On 503: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<&'static str>,
    /// On 503: `SERVICE_UNAVAILABLE`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<ErrorCode>,
}

/// Liveness report.
#[derive(Serialize, ToSchema)]
pub struct LiveResponse {
    /// Always `alive`.
    #[schema(example = "alive")]
    pub status: &'static str,
}

fn report(
    ok: bool,
    up: &'static str,
    down: &'static str,
    db: bool,
    detail: &'static str,
) -> (StatusCode, Json<HealthResponse>) {
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(HealthResponse {
            status: if ok { up } else { down },
            timestamp: Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true),
            database: if db { "connected" } else { "disconnected" },
            detail: (!ok).then_some(detail),
            error_code: (!ok).then_some(ErrorCode::ServiceUnavailable),
        }),
    )
}

async fn database_answers(state: &AppState) -> bool {
    matches!(
        tokio::time::timeout(DB_CHECK_TIMEOUT, state.auth().ping()).await,
        Ok(Ok(()))
    )
}

/// `GET /health`: the service and its database.
#[utoipa::path(get, path = "/health", tag = "health", summary = "Service and database health", responses(
    (status = 200, description = "Healthy", body = HealthResponse),
    (status = 503, description = "Database not answering within 2 s", body = HealthResponse),
))]
pub async fn health(State(state): State<AppState>) -> (StatusCode, Json<HealthResponse>) {
    let db = database_answers(&state).await;
    report(
        db,
        "healthy",
        "unhealthy",
        db,
        "Service temporarily unavailable",
    )
}

/// `GET /health/ready`: whether to send traffic here (migrated, database answering, not
/// shutting down).
#[utoipa::path(get, path = "/health/ready", tag = "health", summary = "Readiness probe", responses(
    (status = 200, description = "Ready", body = HealthResponse),
    (status = 503, description = "Not ready: database down or draining", body = HealthResponse),
))]
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<HealthResponse>) {
    let db = database_answers(&state).await;
    if state.is_draining() {
        return report(false, "ready", "not_ready", db, "Service is shutting down");
    }
    report(
        db,
        "ready",
        "not_ready",
        db,
        "Service temporarily unavailable",
    )
}

/// `GET /health/live`: the process runs. Never touches the database.
#[utoipa::path(get, path = "/health/live", tag = "health", summary = "Liveness probe", responses(
    (status = 200, description = "Alive", body = LiveResponse),
))]
pub async fn live() -> Json<LiveResponse> {
    Json(LiveResponse { status: "alive" })
}
