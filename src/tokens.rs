//! JWTs: issuing and verifying access and refresh tokens.
//!
//! With HS256 (the default) tokens carry no `kid` and are checked with the shared secret. With
//! RS256, ES256 or EdDSA every token carries the signing key's `kid`; verification selects the
//! published key by `kid` and pins the algorithm to that key's. Either way a token is refused
//! when its header names another algorithm (`none` and the RS256 -> HS256 confusion included),
//! is not `typ: JWT`, or carries `crit`, `jku`, `x5u` or `jwk`. An HS256 token (no `kid`) is
//! still accepted after a switch to an asymmetric algorithm while `JWT_SECRET_KEY` is set, so
//! the switch logs nobody out. Time claims are checked against the injected clock
//! (jsonwebtoken's own checks read the wall clock, so they are off). This module knows nothing
//! about HTTP or the database.

pub use auth_verifier::claims::{Claims, MAX_TOKEN_BYTES, TokenKind};
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret as _, SecretString};
use uuid::Uuid;

use crate::{
    assurance::Assurance,
    keys::{AsymmetricAlgorithm, JwtAlgorithm, KeySet},
};

/// Whom a token is for, and in which session.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// The user's id.
    pub user_id: i64,
    /// The user's normalised email (access tokens carry it).
    pub email: &'a str,
    /// The session (refresh-token family).
    pub session: Uuid,
    /// Whether the address is verified (access tokens carry it).
    pub email_verified: bool,
    /// How the session was signed in (access tokens carry `acr`, `amr` and `auth_time`).
    pub assurance: Assurance,
}

/// Why a token was refused; all of them are the same 401 to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Malformed, wrong algorithm or header, bad signature, missing claim.
    #[error("malformed or badly signed token")]
    Invalid,
    /// Past `exp` plus the leeway.
    #[error("token expired")]
    Expired,
    /// `nbf` or `iat` in the future beyond the leeway.
    #[error("token not yet valid")]
    NotYetValid,
    /// Wrong `iss` or `aud`.
    #[error("wrong issuer or audience")]
    WrongParty,
    /// An access token where a refresh token belongs, or the reverse.
    #[error("wrong token type")]
    WrongKind,
}

/// What [`TokenKeys`] is built from: the token settings of the configuration, handed over by
/// `state.rs` (this module reads no configuration itself).
#[derive(Clone)]
pub struct TokenSettings {
    /// `JWT_SECRET_KEY`: signs with HS256; with an asymmetric algorithm it verifies HS256
    /// tokens only when `accept_hs256`.
    pub secret: SecretString,
    /// With an asymmetric algorithm, whether HS256 tokens signed with `secret` still verify.
    pub accept_hs256: bool,
    /// `JWT_ALGORITHM`.
    pub algorithm: JwtAlgorithm,
    /// The signing key and every published key.
    pub keys: KeySet,
    /// `JWT_ISSUER`.
    pub issuer: String,
    /// `JWT_AUDIENCE`.
    pub audience: Option<String>,
    /// `JWT_LEEWAY_SECONDS`.
    pub leeway_seconds: u64,
}

/// Signing and verification keys plus the rules, built once from [`TokenSettings`].
#[derive(Clone)]
pub struct TokenKeys {
    /// The header every issued token carries (`alg`, `typ`, and `kid` for asymmetric keys).
    header: Header,
    encoding: EncodingKey,
    /// The HS256 secret, when one verifies (always with HS256; with an asymmetric algorithm,
    /// while `JWT_SECRET_KEY` is still set).
    hmac: Option<DecodingKey>,
    /// The encoded header of the HS256 tokens this service signs (`{"typ":"JWT","alg":"HS256"}`
    /// as jsonwebtoken writes it), when `hmac` is set: a token whose first segment is byte for
    /// byte this one needs no header parsed (see [`Self::decode`]).
    own_hs256_header: Option<String>,
    /// Every key a token may name by `kid`.
    published: KeySet,
    /// The published keys as served at `/.well-known/jwks.json`.
    jwks: String,
    hs256: Validation,
    asymmetric: [Validation; 3],
    issuer: String,
    audience: Option<String>,
    leeway: i64,
}

/// The rules jsonwebtoken applies for `algorithm`: the signature and that one algorithm only.
fn validation(algorithm: Algorithm) -> Validation {
    let mut validation = Validation::new(algorithm);
    // Time, issuer and audience are checked in `verify` against the injected clock.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    validation
}

fn index(algorithm: AsymmetricAlgorithm) -> usize {
    match algorithm {
        AsymmetricAlgorithm::Rs256 => 0,
        AsymmetricAlgorithm::Es256 => 1,
        AsymmetricAlgorithm::EdDsa => 2,
    }
}

impl TokenKeys {
    /// Builds the keys for the configured algorithm.
    ///
    /// # Errors
    /// When the key material is unusable (never for a validated configuration).
    pub fn new(settings: TokenSettings) -> anyhow::Result<Self> {
        let secret = settings.secret.expose_secret().as_bytes();
        let keys = &settings.keys;
        let (header, encoding, hmac) = match (settings.algorithm, &keys.signing) {
            (JwtAlgorithm::Hs256, _) => (
                Header::new(Algorithm::HS256),
                EncodingKey::from_secret(secret)?,
                Some(DecodingKey::from_secret(secret)?),
            ),
            (JwtAlgorithm::Asymmetric(_), Some(signing)) => {
                let mut header = Header::new(signing.public.algorithm.algorithm());
                header.kid = Some(signing.public.kid.clone());
                let hmac = settings
                    .accept_hs256
                    .then(|| DecodingKey::from_secret(secret))
                    .transpose()?;
                (header, signing.encoding.clone(), hmac)
            }
            (JwtAlgorithm::Asymmetric(algorithm), None) => {
                anyhow::bail!("JWT_ALGORITHM={} without a signing key", algorithm.name())
            }
        };
        let own_hs256_header = match &hmac {
            Some(_) => {
                let probe = EncodingKey::from_secret(b"header-probe")?;
                let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &(), &probe)?;
                token.split('.').next().map(str::to_owned)
            }
            None => None,
        };
        Ok(Self {
            header,
            encoding,
            hmac,
            own_hs256_header,
            jwks: serde_json::to_string(&keys.jwks())?,
            published: keys.clone(),
            hs256: validation(Algorithm::HS256),
            asymmetric: [
                validation(Algorithm::RS256),
                validation(Algorithm::ES256),
                validation(Algorithm::EdDSA),
            ],
            issuer: settings.issuer,
            audience: settings.audience,
            leeway: i64::try_from(settings.leeway_seconds).unwrap_or(i64::MAX),
        })
    }

    /// The JSON of `/.well-known/jwks.json`: the public keys only (`{"keys": []}` with HS256
    /// and no `JWT_PUBLIC_KEY_FILES`).
    #[must_use]
    pub fn jwks_json(&self) -> &str {
        &self.jwks
    }

    /// Builds the claims of a token: an access token carries the email and the sign-in's
    /// assurance, a refresh token neither (its session row keeps the assurance).
    #[must_use]
    pub fn claims(
        &self,
        kind: TokenKind,
        subject: &Subject<'_>,
        jti: Uuid,
        issued_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Claims {
        let access = kind == TokenKind::Access;
        Claims {
            sub: subject.user_id.to_string(),
            user_id: subject.user_id,
            kind,
            iat: issued_at.timestamp(),
            exp: expires_at.timestamp(),
            jti,
            sid: Some(subject.session),
            email: (kind == TokenKind::Access).then(|| subject.email.to_owned()),
            email_verified: (kind == TokenKind::Access).then_some(subject.email_verified),
            nbf: None,
            iss: Some(self.issuer.clone()),
            aud: self.audience.clone(),
            acr: access.then(|| subject.assurance.methods.aal()),
            amr: access.then_some(subject.assurance.methods),
            auth_time: access.then(|| subject.assurance.auth_time.timestamp()),
        }
    }

    /// Signs `claims`. Signing the same claims twice gives the same token.
    ///
    /// # Errors
    /// Only if the crypto backend fails.
    pub fn sign(&self, claims: &Claims) -> anyhow::Result<String> {
        Ok(jsonwebtoken::encode(&self.header, claims, &self.encoding)?)
    }

    /// Verifies a token of the expected kind at `now`: [`Self::decode`], then
    /// [`Self::check_time`].
    ///
    /// # Errors
    /// A [`TokenError`] saying why it was refused.
    pub fn verify(
        &self,
        token: &str,
        expected: TokenKind,
        now: DateTime<Utc>,
    ) -> Result<Claims, TokenError> {
        let claims = self.decode(token, expected)?;
        self.check_time(&claims, now)?;
        Ok(claims)
    }

    /// Everything about a token that does not depend on the time: size, header, signature,
    /// issuer, audience, subject and kind. The same token gives the same answer for as long as
    /// these keys live, so the answer may be remembered; [`Self::check_time`] may not.
    ///
    /// # Errors
    /// A [`TokenError`] saying why it was refused.
    pub fn decode(&self, token: &str, expected: TokenKind) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Invalid);
        }
        let claims = match self.decode_own_hs256(token) {
            Some(decoded) => decoded?,
            None => self.decode_any(token)?,
        };
        if claims.sub != claims.user_id.to_string() {
            return Err(TokenError::Invalid);
        }
        if claims.iss.as_deref() != Some(self.issuer.as_str()) {
            return Err(TokenError::WrongParty);
        }
        if let Some(audience) = &self.audience
            && claims.aud.as_deref() != Some(audience.as_str())
        {
            return Err(TokenError::WrongParty);
        }
        if claims.kind != expected {
            return Err(TokenError::WrongKind);
        }
        Ok(claims)
    }

    /// The hot path for the tokens this service signs with HS256 (every token `/auth/verify`
    /// sees with the default algorithm): when the header segment is byte for byte the one we
    /// write, that header needs no parse, and jsonwebtoken checks the signature
    /// (`crypto::verify`, constant time) before the claims are parsed, once. `None` for any
    /// other header, which [`Self::decode_any`] reads in full.
    fn decode_own_hs256(&self, token: &str) -> Option<Result<Claims, TokenError>> {
        use base64::Engine as _;

        let (header, _) = token.split_once('.')?;
        if Some(header) != self.own_hs256_header.as_deref() {
            return None;
        }
        let hmac = self.hmac.as_ref()?;
        let (message, signature) = token.rsplit_once('.')?;
        let (_, payload) = message.split_once('.')?;
        Some(
            match jsonwebtoken::crypto::verify(
                signature,
                message.as_bytes(),
                hmac,
                Algorithm::HS256,
            ) {
                Ok(true) => base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(payload)
                    .ok()
                    .and_then(|json| serde_json::from_slice::<Claims>(&json).ok())
                    .ok_or(TokenError::Invalid),
                Ok(false) | Err(_) => Err(TokenError::Invalid),
            },
        )
    }

    /// Any header: jsonwebtoken parses it, pins the algorithm (and for asymmetric keys the
    /// key by `kid`), checks the signature and parses the claims.
    fn decode_any(&self, token: &str) -> Result<Claims, TokenError> {
        let data = if self.published.published.is_empty() {
            // HS256 only: one parse; the header is checked afterwards.
            let hmac = self.hmac.as_ref().ok_or(TokenError::Invalid)?;
            jsonwebtoken::decode::<Claims>(token, hmac, &self.hs256)
                .map_err(|_| TokenError::Invalid)?
        } else {
            let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid)?;
            let (key, validation) = match &header.kid {
                None => (self.hmac.as_ref().ok_or(TokenError::Invalid)?, &self.hs256),
                Some(kid) => {
                    let key = self.published.find(kid).ok_or(TokenError::Invalid)?;
                    if header.alg != key.algorithm.algorithm() {
                        return Err(TokenError::Invalid);
                    }
                    (&key.decoding, &self.asymmetric[index(key.algorithm)])
                }
            };
            jsonwebtoken::decode::<Claims>(token, key, validation)
                .map_err(|_| TokenError::Invalid)?
        };
        let header = data.header;
        if header.typ.as_deref() != Some("JWT")
            || header.crit.is_some()
            || header.jku.is_some()
            || header.x5u.is_some()
            || header.jwk.is_some()
            || header.kid.is_some() != (header.alg != Algorithm::HS256)
        {
            return Err(TokenError::Invalid);
        }
        Ok(data.claims)
    }

    /// Whether decoded claims are current at `now` (`exp`, and `nbf` or `iat`, with the
    /// leeway).
    ///
    /// # Errors
    /// [`TokenError::Expired`] or [`TokenError::NotYetValid`].
    pub fn check_time(&self, claims: &Claims, now: DateTime<Utc>) -> Result<(), TokenError> {
        let now = now.timestamp();
        if now > claims.exp.saturating_add(self.leeway) {
            return Err(TokenError::Expired);
        }
        let not_before = claims.nbf.map_or(claims.iat, |nbf| nbf.max(claims.iat));
        if not_before > now.saturating_add(self.leeway) {
            return Err(TokenError::NotYetValid);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use base64::Engine as _;
    use chrono::Duration;

    use super::*;

    const SECRET: &str = "Zr4uQ8wN1cE6tY3hK9pB2mV7xS5aL0gD";

    fn subject(user_id: i64) -> Subject<'static> {
        Subject {
            user_id,
            email: "someone@example.com",
            session: Uuid::nil(),
            email_verified: true,
            assurance: crate::assurance::Assurance {
                methods: crate::assurance::Methods::PASSWORD,
                auth_time: DateTime::UNIX_EPOCH,
            },
        }
    }

    fn keys(extra: &[(&str, &str)]) -> TokenKeys {
        let mut vars: HashMap<&str, &str> = extra.iter().copied().collect();
        vars.insert("JWT_SECRET_KEY", SECRET);
        let config =
            crate::config::Config::from_lookup(|n| vars.get(n).map(|v| (*v).to_owned())).unwrap();
        TokenKeys::new(crate::state::token_settings(&config.tokens)).unwrap()
    }

    fn token(keys: &TokenKeys, kind: TokenKind, now: DateTime<Utc>) -> String {
        let claims = keys.claims(
            kind,
            &subject(42),
            Uuid::new_v4(),
            now,
            now + Duration::minutes(15),
        );
        keys.sign(&claims).unwrap()
    }

    #[test]
    fn a_valid_token_round_trips() {
        let keys = keys(&[]);
        let now = Utc::now();
        let claims = keys.claims(
            TokenKind::Access,
            &subject(7),
            Uuid::new_v4(),
            now,
            now + Duration::minutes(1),
        );
        let token = keys.sign(&claims).unwrap();
        assert_eq!(keys.verify(&token, TokenKind::Access, now).unwrap(), claims);
        assert_eq!(
            keys.sign(&claims).unwrap(),
            token,
            "signing is deterministic"
        );
        assert_eq!(claims.email.as_deref(), Some("someone@example.com"));
        assert_eq!(claims.sid, Some(Uuid::nil()));
        let refresh = keys.claims(TokenKind::Refresh, &subject(7), Uuid::new_v4(), now, now);
        assert_eq!(refresh.email, None, "refresh tokens carry no email");
    }

    #[test]
    fn expiry_honours_the_leeway() {
        let keys = keys(&[]);
        let now = Utc::now();
        let t = token(&keys, TokenKind::Access, now);
        let at = |s| now + Duration::minutes(15) + Duration::seconds(s);
        assert!(keys.verify(&t, TokenKind::Access, at(30)).is_ok());
        assert_eq!(
            keys.verify(&t, TokenKind::Access, at(31)),
            Err(TokenError::Expired)
        );
        assert_eq!(
            keys.verify(&t, TokenKind::Access, now - Duration::seconds(31)),
            Err(TokenError::NotYetValid)
        );
    }

    #[test]
    fn kinds_are_not_interchangeable() {
        let keys = keys(&[]);
        let now = Utc::now();
        let refresh = token(&keys, TokenKind::Refresh, now);
        assert_eq!(
            keys.verify(&refresh, TokenKind::Access, now),
            Err(TokenError::WrongKind)
        );
        let access = token(&keys, TokenKind::Access, now);
        assert_eq!(
            keys.verify(&access, TokenKind::Refresh, now),
            Err(TokenError::WrongKind)
        );
    }

    #[test]
    fn issuer_and_audience_are_enforced() {
        let now = Utc::now();
        let other = keys(&[("JWT_ISSUER", "someone-else")]);
        let t = token(&other, TokenKind::Access, now);
        assert_eq!(
            keys(&[]).verify(&t, TokenKind::Access, now),
            Err(TokenError::WrongParty)
        );
        let with_aud = keys(&[("JWT_AUDIENCE", "shop")]);
        let t = token(&keys(&[]), TokenKind::Access, now);
        assert_eq!(
            with_aud.verify(&t, TokenKind::Access, now),
            Err(TokenError::WrongParty)
        );
        let t = token(&with_aud, TokenKind::Access, now);
        assert!(with_aud.verify(&t, TokenKind::Access, now).is_ok());
    }

    #[test]
    fn alg_none_and_any_one_byte_change_are_refused() {
        let keys = keys(&[]);
        let now = Utc::now();
        let t = token(&keys, TokenKind::Access, now);
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let payload = t.split('.').nth(1).unwrap();
        for alg in ["none", "None", "NONE", "HS512"] {
            let header = b64.encode(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#));
            let forged = format!("{header}.{payload}.");
            assert_eq!(
                keys.verify(&forged, TokenKind::Access, now),
                Err(TokenError::Invalid)
            );
        }
        for i in 0..t.len() {
            let mut bytes = t.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let changed = String::from_utf8(bytes).unwrap();
            if changed != t {
                assert!(
                    keys.verify(&changed, TokenKind::Access, now).is_err(),
                    "byte {i}"
                );
            }
        }
        assert_eq!(
            keys.verify(&"a".repeat(MAX_TOKEN_BYTES + 1), TokenKind::Access, now),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn our_header_skips_the_header_parse_and_any_other_gets_the_full_one_with_the_same_rules() {
        use base64::Engine as _;
        let keys = keys(&[]);
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let now = Utc::now();
        let claims = keys.claims(
            TokenKind::Access,
            &subject(9),
            Uuid::new_v4(),
            now,
            now + Duration::minutes(1),
        );
        let token = keys.sign(&claims).unwrap();
        let (header, rest) = token.split_once('.').unwrap();
        assert_eq!(Some(header), keys.own_hs256_header.as_deref());
        assert!(keys.decode_own_hs256(&token).is_some(), "the hot path");
        let payload = rest.split_once('.').unwrap().0;
        let key = EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
        let signed = |header: &str, payload: &str| {
            let message = format!("{header}.{payload}");
            let signature =
                jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256).unwrap();
            format!("{message}.{signature}")
        };
        // The same claims under an equivalent header: the full parse, the same answer.
        let reordered = b64.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
        let other = signed(&reordered, payload);
        assert!(keys.decode_own_hs256(&other).is_none());
        assert_eq!(keys.verify(&other, TokenKind::Access, now).unwrap(), claims);
        // A header the full parse refuses (no `typ`), and our header over a payload that is
        // not claims, both correctly signed: refused.
        let untyped = b64.encode(r#"{"alg":"HS256"}"#);
        assert_eq!(
            keys.verify(&signed(&untyped, payload), TokenKind::Access, now),
            Err(TokenError::Invalid)
        );
        for junk in [b64.encode("not json"), b64.encode("{}"), "%%%".to_owned()] {
            assert_eq!(
                keys.verify(&signed(header, &junk), TokenKind::Access, now),
                Err(TokenError::Invalid),
                "{junk}"
            );
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        #[test]
        fn any_string_is_refused_without_panicking(token in "\\PC{0,400}") {
            let keys = keys(&[]);
            proptest::prop_assert!(keys.verify(&token, TokenKind::Access, Utc::now()).is_err());
        }

        #[test]
        fn a_valid_token_round_trips_and_any_one_byte_change_is_refused(
            user_id in 1i64..i64::MAX,
            ttl in 1i64..100_000,
            position in proptest::prelude::any::<proptest::sample::Index>(),
            replacement in proptest::prelude::any::<u8>(),
        ) {
            let keys = keys(&[]);
            let now = Utc::now();
            let claims = keys.claims(TokenKind::Refresh, &subject(user_id), Uuid::new_v4(), now, now + Duration::seconds(ttl));
            let token = keys.sign(&claims).unwrap();
            proptest::prop_assert_eq!(keys.verify(&token, TokenKind::Refresh, now).unwrap(), claims);
            let mut bytes = token.clone().into_bytes();
            let i = position.index(bytes.len());
            proptest::prop_assume!(bytes[i] != replacement);
            bytes[i] = replacement;
            let changed = String::from_utf8_lossy(&bytes).into_owned();
            proptest::prop_assert!(keys.verify(&changed, TokenKind::Refresh, now).is_err(), "accepted a changed byte at {}", i);
        }
    }
}
