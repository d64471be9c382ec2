//! An orders service that verifies auth-service's access tokens locally with `auth-verifier`.
//!
//! ```text
//! AUTH_URL=http://127.0.0.1:8001 REVOCATION_FEED_TOKEN=... PORT=8002 \
//!     cargo run --release --example orders_service
//! ```
//!
//! - `GET /orders`: behind [`RequireAuthLayer`]; answers the verified `{user_id, email}`.
//! - `GET /orders-unprotected`: the same handler shape without the layer (the benchmark's
//!   ceiling).
//! - `GET /health/ready`: 200 once the verifier has its keys and the revocation feed, 503 before.

use std::net::{Ipv4Addr, SocketAddr};

use auth_verifier::{Authenticated, RequireAuthLayer, VerifiedUser, Verifier, VerifierConfig};
use axum::{Json, Router, extract::State, http::StatusCode, routing::get};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let auth_url = std::env::var("AUTH_URL").unwrap_or_else(|_| "http://127.0.0.1:8001".into());
    let feed_token = std::env::var("REVOCATION_FEED_TOKEN").map_err(
        |_| "REVOCATION_FEED_TOKEN must be one of auth-service's REVOCATION_FEED_TOKENS",
    )?;
    let port: u16 = std::env::var("PORT")
        .unwrap_or_else(|_| "8002".into())
        .parse()
        .map_err(|_| "PORT must be a port number")?;

    let verifier = Verifier::start(VerifierConfig::new(auth_url, feed_token));
    let app = Router::new()
        .route("/orders", get(orders))
        .route_layer(RequireAuthLayer::new(verifier.clone()))
        .route("/orders-unprotected", get(orders_unprotected))
        .route("/health/ready", get(ready))
        .with_state(verifier);

    let listener =
        tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))).await?;
    tracing::info!(port, "orders_service listening");
    axum::serve(listener, app).await?;
    Ok(())
}

/// The caller, as auth-service's `/auth/verify` would have answered.
async fn orders(Authenticated(user): Authenticated) -> Json<VerifiedUser> {
    Json(user)
}

async fn orders_unprotected() -> Json<VerifiedUser> {
    Json(VerifiedUser {
        user_id: 0,
        email: "anonymous@example.com".to_owned(),
        email_verified: false,
        aal: auth_verifier::Aal::Aal1,
        amr: auth_verifier::AuthMethods::default(),
    })
}

async fn ready(State(verifier): State<Verifier>) -> StatusCode {
    if verifier.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}
