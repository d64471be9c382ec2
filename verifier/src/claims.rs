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
    /// The assurance level of the sign-in (`aal1` or `aal2`), in access tokens; tokens issued
    /// before second factors existed lack it and read as `aal1` (see [`Claims::aal`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acr: Option<String>,
    /// The methods the sign-in used (RFC 8176 where one fits), in access tokens; a set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amr: Option<Vec<AuthMethod>>,
    /// When the sign-in that started the session happened (seconds since the epoch), in
    /// access tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<i64>,
}

impl Claims {
    /// The token's assurance level: `aal2` only when its `acr` says so.
    #[must_use]
    pub fn aal(&self) -> Aal {
        match self.acr.as_deref() {
            Some("aal2") => Aal::Aal2,
            _ => Aal::Aal1,
        }
    }

    /// The token's `amr`; a token from before second factors existed was a password sign-in.
    #[must_use]
    pub fn methods(&self) -> Vec<AuthMethod> {
        self.amr.clone().unwrap_or_else(|| vec![AuthMethod::Pwd])
    }
}

/// An authenticator assurance level (NIST SP 800-63B), the `acr` claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Aal {
    /// One factor: a password.
    Aal1,
    /// Two factors (a password and a code), or a passkey with user verification.
    Aal2,
}

impl Aal {
    /// The claim's text.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Aal1 => "aal1",
            Self::Aal2 => "aal2",
        }
    }
}

/// A sign-in method, an `amr` value (RFC 8176 where one fits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum AuthMethod {
    /// `pwd`: a password.
    Pwd,
    /// `otp`: a one-time code (TOTP).
    Otp,
    /// `rec`: a recovery code.
    Rec,
    /// `hwk`: a passkey (a proof of possession of a hardware-secured key).
    Hwk,
    /// A method this version does not know (a newer auth-service's): kept, never trusted.
    #[serde(other)]
    Other,
}

impl AuthMethod {
    /// Whether this is a second factor (or a passkey), which makes a sign-in `aal2`.
    #[must_use]
    pub fn is_strong(self) -> bool {
        matches!(self, Self::Otp | Self::Rec | Self::Hwk)
    }

    /// The claim's text.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pwd => "pwd",
            Self::Otp => "otp",
            Self::Rec => "rec",
            Self::Hwk => "hwk",
            Self::Other => "other",
        }
    }
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
    /// The sign-in's assurance level (`acr`; `aal1` for tokens without it).
    pub aal: Aal,
    /// The sign-in's methods (`amr`; `["pwd"]` for tokens without it).
    pub amr: Vec<AuthMethod>,
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
