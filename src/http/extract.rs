//! Extractors that speak the contract: [`AppJson`] and [`AppQuery`] (our rejections), [`AuthUser`] (bearer
//! access token) and [`RequestCaller`] (client IP and request id for the audit trail).

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
};

use axum::{
    body::Bytes,
    extract::{
        ConnectInfo, FromRef, FromRequest, FromRequestParts, Request,
        rejection::{BytesRejection, FailedToBufferBody},
    },
    http::{Extensions, HeaderMap, header, request::Parts},
};
use ipnet::IpNet;
use serde::{
    Deserialize, Deserializer,
    de::{DeserializeOwned, IgnoredAny, MapAccess, Visitor},
};
use serde_json::{Map, Value};
use utoipa::{
    ToSchema,
    openapi::{RefOr, Schema, schema::SchemaType, schema::Type},
};

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
    T: DeserializeOwned + ToSchema,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers().get(header::CONTENT_TYPE)) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|rejection| match rejection {
                BytesRejection::FailedToBufferBody(FailedToBufferBody::LengthLimitError(_)) => {
                    ApiError::PayloadTooLarge
                }
                _ => ApiError::InvalidJson,
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

/// Deserialises `bytes` as `T`: syntax errors are `InvalidJson`; when it fails, shape errors
/// are one `Validation` listing every repeated, missing or mistyped field (read from `T`'s
/// OpenAPI schema, so the document and the check cannot disagree), else the field rule of
/// `T`'s own `Deserialize` that refused it.
fn parse_json<T: DeserializeOwned + ToSchema>(bytes: &[u8]) -> Result<T, ApiError> {
    // Every request body is an object; serde would otherwise accept `[email, password]`.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return match serde_json::from_slice::<IgnoredAny>(bytes) {
            Ok(_) => Err(ApiError::Validation(vec![FieldError::new(
                "body",
                "must be a JSON object",
            )])),
            Err(_) => Err(ApiError::InvalidJson),
        };
    }
    let body: ObjectBody = serde_json::from_slice(bytes).map_err(|_| ApiError::InvalidJson)?;
    // Only a body that fails pays for the schema walk (it builds `T`'s OpenAPI schema).
    let shape = || shape_errors(&T::schema(), &body.fields);
    if !body.repeated.is_empty() {
        let mut errors: Vec<FieldError> = body
            .repeated
            .iter()
            .map(|name| FieldError::new(name.clone(), "given more than once"))
            .collect();
        errors.extend(shape());
        return Err(ApiError::Validation(errors));
    }
    serde_path_to_error::deserialize(&body.fields).map_err(|err| {
        let shape = shape();
        if !shape.is_empty() {
            return ApiError::Validation(shape);
        }
        let path = err.path().to_string();
        let field = if path == "." { "body".to_owned() } else { path };
        // The shape is right, so the DTO's own rule refused a value (`LoginPassword`'s, for
        // one); deserialised from a `Value`, its message carries no position.
        ApiError::Validation(vec![FieldError::new(field, err.into_inner().to_string())])
    })
}

/// A JSON object read whole, with the names given more than once (which `fields` alone, last
/// one winning, would hide).
struct ObjectBody {
    fields: Map<String, Value>,
    repeated: Vec<String>,
}

impl<'de> Deserialize<'de> for ObjectBody {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields;

        impl<'de> Visitor<'de> for Fields {
            type Value = ObjectBody;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ObjectBody, A::Error> {
                let mut body = ObjectBody {
                    fields: Map::new(),
                    repeated: Vec::new(),
                };
                while let Some((name, value)) = map.next_entry::<String, Value>()? {
                    if let Some(_earlier) = body.fields.insert(name.clone(), value)
                        && !body.repeated.contains(&name)
                    {
                        body.repeated.push(name);
                    }
                }
                Ok(body)
            }
        }

        deserializer.deserialize_map(Fields)
    }
}

/// Every property of `schema` that `fields` lacks (`required`) or holds with another JSON type
/// (`must be a string`), in the schema's order.
fn shape_errors(schema: &RefOr<Schema>, fields: &Map<String, Value>) -> Vec<FieldError> {
    let RefOr::T(Schema::Object(object)) = schema else {
        return Vec::new();
    };
    let mut errors = Vec::new();
    for (name, property) in &object.properties {
        match fields.get(name) {
            None if object.required.contains(name) => {
                errors.push(FieldError::new(name.clone(), "required"));
            }
            None => {}
            Some(value) => {
                let RefOr::T(Schema::Object(property)) = property else {
                    continue;
                };
                if let Some(expected) = mistyped(&property.schema_type, value) {
                    errors.push(FieldError::new(name.clone(), expected));
                }
            }
        }
    }
    errors
}

/// What a value of the wrong JSON type should have been, in words; `None` when it fits.
fn mistyped(schema_type: &SchemaType, value: &Value) -> Option<&'static str> {
    let fits = |ty: &Type| match ty {
        Type::String => value.is_string(),
        Type::Integer => value.is_i64() || value.is_u64(),
        Type::Number => value.is_number(),
        Type::Boolean => value.is_boolean(),
        Type::Array => value.is_array(),
        Type::Object => value.is_object(),
        Type::Null => value.is_null(),
    };
    let expected = match schema_type {
        SchemaType::Type(ty) => ty,
        SchemaType::Array(types) => {
            if types.iter().any(fits) {
                return None;
            }
            types.iter().find(|ty| **ty != Type::Null)?
        }
        SchemaType::AnyValue => return None,
    };
    if fits(expected) {
        return None;
    }
    Some(match expected {
        Type::String => "must be a string",
        Type::Integer => "must be an integer",
        Type::Number => "must be a number",
        Type::Boolean => "must be true or false",
        Type::Array => "must be a list",
        Type::Object => "must be an object",
        Type::Null => "must be null",
    })
}

/// A query string, deserialised; a bad parameter is a 422 `VALIDATION_ERROR` naming it, in the
/// parameter type's own words. Unknown parameters are ignored.
#[derive(Debug, Clone, Copy, Default)]
pub struct AppQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for AppQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        let params =
            serde_urlencoded::Deserializer::new(url::form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(params)
            .map(Self)
            .map_err(|err| {
                let path = err.path().to_string();
                let field = if path == "." {
                    "query".to_owned()
                } else {
                    path
                };
                ApiError::Validation(vec![FieldError::new(field, err.into_inner().to_string())])
            })
    }
}

/// The bearer token of the `Authorization` header (scheme case-insensitive), borrowed from
/// the request.
///
/// Absent, empty, or nothing after `Bearer`: `MissingToken`, as the original; another scheme
/// (`Token abc`) is `NotBearer`, the same code and `detail` with the reason in `errors`.
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, ApiError> {
    let missing = || ApiError::Auth(AuthError::MissingToken);
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .ok_or_else(missing)?;
    if value.is_empty() {
        return Err(missing());
    }
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ApiError::NotBearer);
    }
    let token = token.trim();
    if token.is_empty() {
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
            state.http().clients.trusted(),
        );
        let user_agent = parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok(Self(Caller {
            ip: Some(ip),
            request_id,
            user_agent,
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
