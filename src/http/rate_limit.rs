//! Per-client-IP token bucket on the `/auth/*` routes but `/auth/verify` and the feed (`RATE_LIMIT_PER_SECOND`,
//! `RATE_LIMIT_BURST`), with tower_governor keyed by the same client IP as the logs and the
//! audit trail (so a spoofed `X-Forwarded-For` from an untrusted peer changes nothing).

use std::{sync::Arc, time::Duration};

use axum::{
    body::Body,
    http::{HeaderName, HeaderValue, Request, Response},
    response::IntoResponse as _,
};
use ipnet::IpNet;
use tower_governor::{
    GovernorError, GovernorLayer, governor::GovernorConfigBuilder, key_extractor::KeyExtractor,
};

use super::errors::ApiError;
use crate::{client_address::ClientAddresses, service::lockout::client_network, state::RateLimit};

/// Keys the bucket by the client's network: [`super::extract::client_ip`], an IPv6 address
/// widened to its `IPV6_PREFIX_LENGTH` network, as every per-IP limit counts.
#[derive(Debug, Clone)]
pub struct ClientIpKey {
    clients: ClientAddresses,
}

impl KeyExtractor for ClientIpKey {
    type Key = IpNet;

    fn extract<T>(&self, req: &Request<T>) -> Result<Self::Key, GovernorError> {
        let ip = super::extract::client_ip(req.headers(), req.extensions(), self.clients.trusted());
        Ok(client_network(ip, self.clients.v6_prefix()))
    }
}

/// How often idle buckets are forgotten, so memory follows active clients only.
const FORGET_IDLE_EVERY: Duration = Duration::from_secs(60);

/// The layer type: buckets keyed by client IP, no extra headers on allowed requests (login's
/// `X-RateLimit-*` describe the lockout).
pub type RateLimitLayer = GovernorLayer<ClientIpKey, governor::middleware::NoOpMiddleware, Body>;

/// The limiter layer, or `None` when either setting is 0.
pub fn layer(limit: RateLimit, clients: &ClientAddresses) -> Option<RateLimitLayer> {
    let RateLimit { per_second, burst } = limit;
    if per_second == 0 || burst == 0 {
        return None;
    }
    let governor = GovernorConfigBuilder::default()
        .key_extractor(ClientIpKey {
            clients: clients.clone(),
        })
        .period(Duration::from_secs(1) / per_second)
        .burst_size(burst)
        .finish()?;
    let limiter = Arc::downgrade(governor.limiter());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(FORGET_IDLE_EVERY);
        loop {
            tick.tick().await;
            match limiter.upgrade() {
                Some(limiter) => limiter.retain_recent(),
                None => break,
            }
        }
    });
    Some(GovernorLayer::new(governor).error_handler(move |err| refused(&err, burst)))
}

/// 429 `RATE_LIMITED` in the contract's shape with `Retry-After` and `X-RateLimit-*`.
fn refused(err: &GovernorError, burst: u32) -> Response<Body> {
    let wait = match err {
        GovernorError::TooManyRequests { wait_time, .. } => (*wait_time).max(1),
        _ => 1,
    };
    let mut response = ApiError::RateLimited {
        retry_after_secs: wait,
    }
    .into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        ("x-ratelimit-limit", u64::from(burst)),
        ("x-ratelimit-remaining", 0),
        ("x-ratelimit-reset", wait),
    ] {
        headers.insert(HeaderName::from_static(name), HeaderValue::from(value));
    }
    response
}
