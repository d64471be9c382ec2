//! The benchmark ceiling: a bare axum server on auth-service's stack.
//!
//! - `GET /verify`: one HS256 check of the bearer token and a small JSON answer, no database,
//!   no middleware: the least work a `/auth/verify` can do.
//! - `bench-baseline bcrypt COST`: seconds one bcrypt hash at COST takes on one core (median of
//!   five), from which the login ceiling is cores / that.
//!
//! It prints a token it accepts on the first line of stdout and listens on `PORT`.

use std::sync::Arc;

use axum::{
    Json, Router,
    http::{HeaderMap, StatusCode},
    routing::get,
};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

const SECRET: &[u8] = b"bench-baseline-secret-0123456789abcdef0123456789";

#[derive(Serialize, Deserialize)]
struct Claims {
    sub: String,
    user_id: i64,
    exp: u64,
}

fn bcrypt_seconds(cost: u32) -> f64 {
    let mut runs: Vec<f64> = (0..5)
        .map(|_| {
            let started = std::time::Instant::now();
            let _ = bcrypt::hash("SecurePass123", cost);
            started.elapsed().as_secs_f64()
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    runs[2]
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("bcrypt") {
        let cost = args.get(2).and_then(|c| c.parse().ok()).unwrap_or(12);
        println!("{}", bcrypt_seconds(cost));
        return;
    }
    let (Ok(encoding), Ok(decoding)) = (
        EncodingKey::from_secret(SECRET),
        DecodingKey::from_secret(SECRET),
    ) else {
        eprintln!("bench-baseline: unusable key");
        return;
    };
    let claims = Claims {
        sub: "1".to_owned(),
        user_id: 1,
        exp: 4_000_000_000,
    };
    match jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &encoding) {
        Ok(token) => println!("{token}"),
        Err(err) => {
            eprintln!("bench-baseline: {err}");
            return;
        }
    }
    let key = Arc::new(decoding);
    let validation = Arc::new(Validation::new(Algorithm::HS256));
    let app = Router::new().route(
        "/verify",
        get(move |headers: HeaderMap| {
            let (key, validation) = (Arc::clone(&key), Arc::clone(&validation));
            async move {
                let token = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .unwrap_or_default();
                match jsonwebtoken::decode::<Claims>(token, &key, &validation) {
                    Ok(data) => Ok(Json(serde_json::json!({
                        "valid": true,
                        "user_id": data.claims.user_id,
                        "email": "bench@example.com",
                    }))),
                    Err(_) => Err(StatusCode::UNAUTHORIZED),
                }
            }
        }),
    );
    let port = std::env::var("PORT").unwrap_or_else(|_| "9001".to_owned());
    let listener = match tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("bench-baseline: cannot listen on {port}: {err}");
            return;
        }
    };
    if let Err(err) = axum::serve(listener, app).await {
        eprintln!("bench-baseline: {err}");
    }
}
