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
fn bearer_token(headers: &HeaderMap) -> Result<&str, ApiError> {
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
            &state.config().trusted_proxies,
        );
        Ok(Self(Caller {
            ip: Some(ip),
            request_id,
        }))
    }
}

/// The client's address: the socket peer, unless the peer is a trusted proxy, in which case the
/// right-most `X-Forwarded-For` entry that is not itself a trusted proxy. `0.0.0.0` when the
/// connection info is missing (router-only tests).
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
    let forwarded: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|entry| entry.trim().parse::<IpAddr>().ok())
        .collect();
    forwarded
        .into_iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .unwrap_or(peer)
}
