//! Extractors that speak the contract: [`AppJson`] (our rejections), [`AuthUser`] (bearer
//! access token) and [`RequestCaller`] (client IP and request id for the audit trail).

use std::net::{IpAddr, SocketAddr};

use axum::{
    body::Bytes,
    extract::{ConnectInfo, FromRef, FromRequest, FromRequestParts, Request},
    http::{Extensions, HeaderMap, StatusCode, header, request::Parts},
};
use ipnet::IpNet;
use serde::de::DeserializeOwned;

use super::errors::{ApiError, FieldError};
use crate::{
    service::{AuthError, AuthService, VerifiedUser, audit::Caller},
    state::AppState,
};

/// A JSON body, deserialised, whose every failure is a contract error with the original's
/// (FastAPI's) statuses: 422 `UNSUPPORTED_MEDIA_TYPE` for another content type (none at all is
/// read as JSON, as the original did), 413 over the body limit, 422 `INVALID_JSON` for what is
/// not JSON, 422 `VALIDATION_ERROR` for missing, mistyped or invalid fields (field rules live
/// in the DTO's own `Deserialize`). A leading UTF-8 byte order mark is skipped.
#[derive(Debug, Clone, Copy, Default)]
pub struct AppJson<T>(pub T);

impl<S, T> FromRequest<S> for AppJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers().get(header::CONTENT_TYPE)) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::InvalidJson
            }
        })?;
        let body = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
        Ok(Self(parse_json::<T>(body)?))
    }
}

fn is_json(content_type: Option<&axum::http::HeaderValue>) -> bool {
    let Some(value) = content_type else {
        return true;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Deserialises `bytes` as `T`: syntax errors are `InvalidJson`, shape errors `Validation`
/// naming the field.
fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // Every request body is an object; serde would otherwise accept `[email, password]`.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
            Ok(_) => Err(ApiError::Validation(vec![FieldError {
                field: "body".to_owned(),
                message: "expected a JSON object".to_owned(),
            }])),
            Err(_) => Err(ApiError::InvalidJson),
        };
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if inner.classify() != serde_json::error::Category::Data {
            return ApiError::InvalidJson;
        }
        let message = inner.to_string();
        // serde reports a missing field at the parent's path, naming it in the message.
        let field = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next())
            .map(str::to_owned)
            .or_else(|| (path != ".").then_some(path))
            .unwrap_or_else(|| "body".to_owned());
        let message = message
            .split(" at line ")
            .next()
            .unwrap_or_default()
            .to_owned();
        ApiError::Validation(vec![FieldError { field, message }])
    })?;
    de.end().map_err(|_| ApiError::InvalidJson)?;
    Ok(value)
}

/// The bearer token of the `Authorization` header (scheme case-insensitive), borrowed from
/// the request.
///
/// Absent, empty, another scheme, or nothing after `Bearer`: `MissingToken`, as the original.
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, ApiError> {
    let missing = || ApiError::Auth(AuthError::MissingToken);
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .ok_or_else(missing)?;
    let (scheme, token) = value.split_once(' ').ok_or_else(missing)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(missing());
    }
    Ok(token)
}

/// The user behind a valid access token.
#[derive(Debug, Clone)]
pub struct AuthUser(pub VerifiedUser);

impl<S> FromRequestParts<S> for AuthUser
where
    S: Send + Sync,
    AuthService: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let token = bearer_token(&parts.headers)?;
        let auth = AuthService::from_ref(state);
        Ok(Self(auth.verify_access(token).await?))
    }
}

/// The caller for the audit trail: client IP and request id.
#[derive(Debug, Clone)]
pub struct RequestCaller(pub Caller);

impl FromRequestParts<AppState> for RequestCaller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let request_id = parts
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let ip = client_ip(
            &parts.headers,
            &parts.extensions,
            &state.config().limits.trusted_proxies,
        );
        Ok(Self(Caller {
            ip: Some(ip),
            request_id,
        }))
    }
}

/// The client's address (API.md, "Client IP"): the socket peer, unless the peer is a trusted
/// proxy; then `X-Forwarded-For` is read from the right, skipping trusted proxies, and the first
/// entry that is not trusted is the client.
///
/// - An entry with a port (`198.51.100.5:40112`, `[2001:db8::5]:443`) counts as its address.
/// - An entry that cannot be parsed (`unknown`, garbage) ends the walk: the last trusted hop
///   (the entry to its right, or the peer) is the client, never an address further left, which
///   whoever sent the request could have written.
/// - When every entry is a trusted proxy, the left-most is the client.
/// - IPv4-mapped IPv6 (`::ffff:1.2.3.4`) is the IPv4 address.
///
/// `0.0.0.0` when the connection info is missing (router-only tests).
#[must_use]
pub fn client_ip(headers: &HeaderMap, extensions: &Extensions, trusted: &[IpNet]) -> IpAddr {
    let peer = extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |ConnectInfo(addr)| {
            addr.ip().to_canonical()
        });
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let headers: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.to_str().unwrap_or(""))
        .collect();
    let mut last_trusted = peer;
    for entry in headers.iter().rev().flat_map(|v| v.rsplit(',')) {
        let Some(ip) = parse_forwarded(entry.trim()) else {
            return last_trusted;
        };
        if !is_trusted(&ip) {
            return ip;
        }
        last_trusted = ip;
    }
    last_trusted
}

/// One `X-Forwarded-For` entry: an address, with or without a port, canonical.
fn parse_forwarded(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|addr| addr.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip_of(peer: &str, forwarded: &[&str], trusted: &[&str]) -> String {
        let mut headers = HeaderMap::new();
        for value in forwarded {
            headers.append("x-forwarded-for", value.parse().unwrap());
        }
        let mut extensions = Extensions::new();
        extensions.insert(ConnectInfo::<SocketAddr>(peer.parse().unwrap()));
        let trusted: Vec<IpNet> = trusted.iter().map(|t| t.parse().unwrap()).collect();
        client_ip(&headers, &extensions, &trusted).to_string()
    }

    #[test]
    fn the_client_ip_follows_the_contracts_rules() {
        let proxy = ["10.0.0.0/8"];
        let cases: &[(&str, &[&str], &[&str], &str)] = &[
            // An untrusted peer: its header is ignored.
            ("203.0.113.9:5000", &["1.2.3.4"], &proxy, "203.0.113.9"),
            // The right-most untrusted entry.
            (
                "10.0.0.1:5000",
                &["1.1.1.1, 203.0.113.5, 10.1.2.3"],
                &proxy,
                "203.0.113.5",
            ),
            // Ports count as their address.
            (
                "10.0.0.1:5000",
                &["6.6.6.6, 198.51.100.5:40112"],
                &proxy,
                "198.51.100.5",
            ),
            (
                "10.0.0.1:5000",
                &["6.6.6.6, [2001:db8::5]:443"],
                &proxy,
                "2001:db8::5",
            ),
            // An unparsable entry ends the walk at the last trusted hop.
            ("10.0.0.1:5000", &["6.6.6.6, unknown"], &proxy, "10.0.0.1"),
            (
                "10.0.0.1:5000",
                &["6.6.6.6, garbage, 10.9.9.9"],
                &proxy,
                "10.9.9.9",
            ),
            // Several headers are one list, in order.
            (
                "10.0.0.1:5000",
                &["6.6.6.6", "203.0.113.7"],
                &proxy,
                "203.0.113.7",
            ),
            // IPv4-mapped IPv6 is the IPv4 address, in the header and as the peer.
            ("10.0.0.1:5000", &["::ffff:192.0.2.1"], &proxy, "192.0.2.1"),
            ("[::ffff:203.0.113.9]:5000", &[], &proxy, "203.0.113.9"),
            // Only trusted hops: the left-most.
            ("10.0.0.1:5000", &["10.2.2.2, 10.3.3.3"], &proxy, "10.2.2.2"),
            ("10.0.0.1:5000", &[], &proxy, "10.0.0.1"),
        ];
        for (peer, forwarded, trusted, expected) in cases {
            assert_eq!(
                &ip_of(peer, forwarded, trusted),
                expected,
                "{peer} {forwarded:?}"
            );
        }
    }
}
