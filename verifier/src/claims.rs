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
    /// The assurance level of the sign-in, in access tokens; tokens issued before second
    /// factors existed lack it and read as `aal1` (see [`Claims::aal`]). Any value but `aal2`
    /// (a newer issuer's level this version does not know) reads as `aal1`: never trusted higher.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_acr"
    )]
    pub acr: Option<Aal>,
    /// The methods the sign-in used (RFC 8176 where one fits), in access tokens; a set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amr: Option<AuthMethods>,
    /// When the sign-in that started the session happened (seconds since the epoch), in
    /// access tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<i64>,
}

impl Claims {
    /// The token's assurance level: `aal2` only when its `acr` says so.
    #[must_use]
    pub fn aal(&self) -> Aal {
        self.acr.unwrap_or(Aal::Aal1)
    }

    /// The token's `amr`; a token from before second factors existed was a password sign-in.
    #[must_use]
    pub fn methods(&self) -> AuthMethods {
        self.amr.unwrap_or(AuthMethods::PASSWORD)
    }
}

/// Reads `acr` without allocating: `aal2`, or `aal1` for any other text.
fn lenient_acr<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Aal>, D::Error> {
    struct Level;

    impl serde::de::Visitor<'_> for Level {
        type Value = Aal;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an assurance level")
        }

        fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Aal, E> {
            Ok(if value == "aal2" {
                Aal::Aal2
            } else {
                Aal::Aal1
            })
        }
    }

    deserializer.deserialize_str(Level).map(Some)
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

/// Every method a set can hold, in the order a set lists them.
const METHODS: [AuthMethod; 5] = [
    AuthMethod::Pwd,
    AuthMethod::Otp,
    AuthMethod::Rec,
    AuthMethod::Hwk,
    AuthMethod::Other,
];

/// The methods of a sign-in, as a set (the `amr` claim: its order means nothing, a method
/// counts once). A copy, never an allocation: it is read on every verification. Serialised as
/// an array of names; read from one, with names this version does not know as
/// [`AuthMethod::Other`]. Written as text it is the names separated by spaces (`"pwd otp"`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct AuthMethods(u8);

impl AuthMethods {
    /// A password alone: every sign-in before second factors existed.
    pub const PASSWORD: Self = Self(1);

    fn bit(method: AuthMethod) -> u8 {
        1 << (method as u8)
    }

    /// The set of `methods`.
    #[must_use]
    pub fn of(methods: &[AuthMethod]) -> Self {
        methods.iter().fold(Self::default(), |set, m| set.with(*m))
    }

    /// This set and `method`.
    #[must_use]
    pub fn with(self, method: AuthMethod) -> Self {
        Self(self.0 | Self::bit(method))
    }

    /// Both sets together.
    #[must_use]
    pub fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// Whether `method` is in the set.
    #[must_use]
    pub fn contains(self, method: AuthMethod) -> bool {
        self.0 & Self::bit(method) != 0
    }

    /// Whether the set is empty.
    #[must_use]
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The methods, in a fixed order.
    pub fn iter(self) -> impl Iterator<Item = AuthMethod> {
        METHODS.into_iter().filter(move |m| self.contains(*m))
    }

    /// The level these methods reach: `aal2` with a second factor or a passkey.
    #[must_use]
    pub fn aal(self) -> Aal {
        if self.iter().any(AuthMethod::is_strong) {
            Aal::Aal2
        } else {
            Aal::Aal1
        }
    }
}

impl std::fmt::Debug for AuthMethods {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl std::fmt::Display for AuthMethods {
    /// The names separated by spaces.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, method) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(method.as_str())?;
        }
        Ok(())
    }
}

/// Text that is not a non-empty list of known method names separated by spaces.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown sign-in methods {0:?}")]
pub struct UnknownMethods(pub String);

impl std::str::FromStr for AuthMethods {
    type Err = UnknownMethods;

    /// The names separated by spaces, each a known one (not `other`), at least one.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut set = Self::default();
        for name in text.split_whitespace() {
            let method = METHODS
                .into_iter()
                .find(|m| *m != AuthMethod::Other && m.as_str() == name)
                .ok_or_else(|| UnknownMethods(text.to_owned()))?;
            set = set.with(method);
        }
        if set.is_empty() {
            return Err(UnknownMethods(text.to_owned()));
        }
        Ok(set)
    }
}

impl TryFrom<String> for AuthMethods {
    type Error = UnknownMethods;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl Serialize for AuthMethods {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for AuthMethods {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Set;

        impl<'de> serde::de::Visitor<'de> for Set {
            type Value = AuthMethods;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an array of sign-in methods")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<AuthMethods, A::Error> {
                let mut set = AuthMethods::default();
                while let Some(method) = seq.next_element::<AuthMethod>()? {
                    set = set.with(method);
                }
                Ok(set)
            }
        }

        deserializer.deserialize_seq(Set)
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
    pub amr: AuthMethods,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_a_set_written_as_an_array_and_read_leniently() {
        let set = AuthMethods::PASSWORD.with(AuthMethod::Otp);
        assert_eq!(serde_json::to_string(&set).unwrap(), r#"["pwd","otp"]"#);
        let read: AuthMethods = serde_json::from_str(r#"["otp","pwd","otp"]"#).unwrap();
        assert_eq!(read, set, "order and repeats mean nothing");
        let newer: AuthMethods = serde_json::from_str(r#"["pwd","swk"]"#).unwrap();
        assert_eq!(newer, AuthMethods::PASSWORD.with(AuthMethod::Other));
        assert_eq!(newer.aal(), Aal::Aal1, "an unknown method raises nothing");
        assert!(serde_json::from_str::<AuthMethods>(r#""pwd""#).is_err());
        assert_eq!(set.to_string(), "pwd otp");
        assert_eq!("otp pwd".parse::<AuthMethods>(), Ok(set));
        assert!("".parse::<AuthMethods>().is_err());
        assert!("pwd other".parse::<AuthMethods>().is_err());
    }

    #[test]
    fn acr_reads_aal2_only_when_it_says_so() {
        let acr = |json: &str| {
            serde_json::from_str::<Claims>(&format!(
                r#"{{"sub":"1","user_id":1,"type":"access","iat":1,"exp":2,
                   "jti":"00000000-0000-0000-0000-000000000000"{json}}}"#
            ))
            .unwrap()
            .aal()
        };
        assert_eq!(acr(r#","acr":"aal2""#), Aal::Aal2);
        assert_eq!(acr(r#","acr":"aal1""#), Aal::Aal1);
        assert_eq!(acr(r#","acr":"aal3""#), Aal::Aal1);
        assert_eq!(acr(""), Aal::Aal1);
        let claims = Claims {
            acr: Some(Aal::Aal2),
            ..serde_json::from_str(
                r#"{"sub":"1","user_id":1,"type":"access","iat":1,"exp":2,
                   "jti":"00000000-0000-0000-0000-000000000000"}"#,
            )
            .unwrap()
        };
        assert!(
            serde_json::to_string(&claims)
                .unwrap()
                .contains(r#""acr":"aal2""#)
        );
    }
}
