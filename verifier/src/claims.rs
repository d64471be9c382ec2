//! The token's JSON shape, shared by auth-service (which issues it) and every verifier.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Tokens longer than this are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Which of the two tokens a JWT is (the `type` claim).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    /// Short-lived, presented to `/auth/verify` and other services.
    Access,
    /// Long-lived, exchanged at `/auth/refresh`; also a database row.
    Refresh,
}

/// The claims of both token kinds. `iat`, `exp`, `jti`, `sub` and `type` are not optional, so a
/// token missing any of them fails to decode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// User id as a string (RFC 7519).
    pub sub: String,
    /// The same id as a number, for clients of the original.
    pub user_id: i64,
    /// `access` or `refresh`.
    #[serde(rename = "type")]
    pub kind: TokenKind,
    /// Issued at (seconds since the epoch).
    pub iat: i64,
    /// Expires at (seconds since the epoch).
    pub exp: i64,
    /// Unique token id; for refresh tokens, the database key.
    pub jti: Uuid,
    /// The session: the refresh-token family a login starts, shared by every token of it.
    /// Optional only so that refresh tokens issued before sessions existed still decode (their
    /// row knows the family); access tokens without it are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<Uuid>,
    /// The user's email, in access tokens only (services that verify locally need it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Whether the address is verified, in access tokens only; tokens issued before email
    /// verification existed lack it and count as verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_verified: Option<bool>,
    /// Not before, when a token carries one (auth-service's do not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// `JWT_ISSUER`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// `JWT_AUDIENCE`, when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

/// Who a verified access token belongs to: what `/auth/verify` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifiedUser {
    /// The user's id.
    pub user_id: i64,
    /// The user's email.
    pub email: String,
    /// Whether the user proved the address is theirs (the `email_verified` claim).
    pub email_verified: bool,
}

/// One session revoked, as the revocation feed lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RevokedSession {
    /// The session (`sid`).
    pub sid: Uuid,
    /// When the entry may be forgotten: no access token of the session lives past it.
    pub exp: i64,
}

/// One user whose older tokens are dead, as the revocation feed lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RevokedUser {
    /// The user's id.
    pub user_id: i64,
    /// Tokens of the user with `iat` before this are dead.
    pub not_before: i64,
}

/// An answer of `GET /auth/revocations`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RevocationPage {
    /// Where to continue (`since`) next time.
    pub cursor: String,
    /// True when this is the whole current set (no `since`, or one older than what is kept):
    /// replace what you hold with it.
    pub reset: bool,
    /// Sessions revoked.
    pub sessions: Vec<RevokedSession>,
    /// Users disabled, deleted or logged out everywhere.
    pub users: Vec<RevokedUser>,
}
