//! Asymmetric signing keys: PEM files in, JWKs with RFC 7638 `kid`s out, and new keys made.
//!
//! The service signs with one private key (`JWT_PRIVATE_KEY_FILE`) and publishes its public
//! half together with every key of `JWT_PUBLIC_KEY_FILES` (the next key before it signs, the
//! previous one until its last token expires). Parsing, thumbprints and JWKs are jsonwebtoken's;
//! generating keys is the RustCrypto crates' it builds on. This module reads files and nothing
//! else: no HTTP, no database.

use std::{path::Path, sync::Arc};

use jsonwebtoken::{
    Algorithm, DecodingKey, EncodingKey,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse, ThumbprintHash},
};

/// The asymmetric algorithms the service signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsymmetricAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256, keys of at least [`MIN_RSA_BITS`].
    Rs256,
    /// ECDSA on P-256 with SHA-256.
    Es256,
    /// Ed25519.
    EdDsa,
}

/// The JWT signing algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtAlgorithm {
    /// HMAC with SHA-256 and the shared `JWT_SECRET_KEY` (the default).
    Hs256,
    /// RS256, ES256 or EdDSA with `JWT_PRIVATE_KEY_FILE`; other services can verify with the
    /// published public keys.
    Asymmetric(AsymmetricAlgorithm),
}

/// The smallest RSA modulus accepted.
pub const MIN_RSA_BITS: usize = 2048;

impl AsymmetricAlgorithm {
    /// The JOSE name (`RS256`, `ES256`, `EdDSA`).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Es256 => "ES256",
            Self::EdDsa => "EdDSA",
        }
    }

    /// Parses a JOSE name, exactly as spelled.
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "RS256" => Some(Self::Rs256),
            "ES256" => Some(Self::Es256),
            "EdDSA" => Some(Self::EdDsa),
            _ => None,
        }
    }

    /// jsonwebtoken's algorithm.
    #[must_use]
    pub fn algorithm(self) -> Algorithm {
        match self {
            Self::Rs256 => Algorithm::RS256,
            Self::Es256 => Algorithm::ES256,
            Self::EdDsa => Algorithm::EdDSA,
        }
    }

    /// What a key file of this algorithm must be, for error messages.
    fn describe(self) -> &'static str {
        match self {
            Self::Rs256 => "an RSA key of at least 2048 bits",
            Self::Es256 => "a P-256 EC key",
            Self::EdDsa => "an Ed25519 key",
        }
    }
}

/// A key that verifies: its `kid`, the one algorithm it may be used with, and its public JWK.
#[derive(Clone)]
pub struct PublicKey {
    /// RFC 7638 thumbprint (SHA-256, base64url).
    pub kid: String,
    /// The algorithm pinned to the key.
    pub algorithm: AsymmetricAlgorithm,
    /// For jsonwebtoken.
    pub decoding: DecodingKey,
    /// What `/.well-known/jwks.json` publishes: public parameters only.
    pub jwk: Jwk,
}

/// The key that signs, with its public half.
#[derive(Clone)]
pub struct SigningKey {
    /// The public half (published, and used to verify).
    pub public: PublicKey,
    /// For jsonwebtoken.
    pub encoding: EncodingKey,
}

/// The signing key and every published key, as loaded at start-up.
#[derive(Clone, Default)]
pub struct KeySet {
    /// `JWT_PRIVATE_KEY_FILE`, with an asymmetric `JWT_ALGORITHM`.
    pub signing: Option<Arc<SigningKey>>,
    /// The signing key's public half first, then `JWT_PUBLIC_KEY_FILES`; no `kid` twice.
    pub published: Arc<[PublicKey]>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<(&str, &str)> = self
            .published
            .iter()
            .map(|k| (k.kid.as_str(), k.algorithm.name()))
            .collect();
        f.debug_struct("KeySet")
            .field(
                "signing",
                &self.signing.as_ref().map(|k| k.public.kid.as_str()),
            )
            .field("published", &kids)
            .finish()
    }
}

impl KeySet {
    /// Loads the signing key (when `signing` names an algorithm and a file) and the public key
    /// files.
    ///
    /// # Errors
    /// `(variable, reason)` for the first file that cannot be used.
    pub fn load(
        signing: Option<(AsymmetricAlgorithm, &Path)>,
        public_files: &[std::path::PathBuf],
    ) -> Result<Self, (&'static str, String)> {
        let signing = signing
            .map(|(algorithm, path)| load_private(path, algorithm))
            .transpose()
            .map_err(|reason| ("JWT_PRIVATE_KEY_FILE", reason))?;
        let mut published: Vec<PublicKey> = signing.iter().map(|k| k.public.clone()).collect();
        for path in public_files {
            let key = load_public(path).map_err(|reason| ("JWT_PUBLIC_KEY_FILES", reason))?;
            if !published.iter().any(|k| k.kid == key.kid) {
                published.push(key);
            }
        }
        Ok(Self {
            signing: signing.map(Arc::new),
            published: published.into(),
        })
    }

    /// The published key with this `kid`.
    #[must_use]
    pub fn find(&self, kid: &str) -> Option<&PublicKey> {
        self.published.iter().find(|k| k.kid == kid)
    }

    /// The JWK set `/.well-known/jwks.json` serves.
    #[must_use]
    pub fn jwks(&self) -> JwkSet {
        JwkSet {
            keys: self.published.iter().map(|k| k.jwk.clone()).collect(),
        }
    }
}

/// Reads a private key of `algorithm` from a PKCS#8 PEM file.
///
/// # Errors
/// A sentence naming the file and what is wrong with it (never its contents).
pub fn load_private(path: &Path, algorithm: AsymmetricAlgorithm) -> Result<SigningKey, String> {
    let pem = read(path)?;
    let not_a_key = || {
        format!(
            "{} is not a PEM private key of {} (JWT_ALGORITHM={})",
            path.display(),
            algorithm.describe(),
            algorithm.name()
        )
    };
    let encoding = encoding_key(algorithm, &pem).map_err(|_| not_a_key())?;
    let jwk = Jwk::from_encoding_key(&encoding, algorithm.algorithm()).map_err(|_| not_a_key())?;
    let public = public_key(jwk, algorithm)
        .map_err(|why| why.map_or_else(not_a_key, |why| format!("{}: {why}", path.display())))?;
    Ok(SigningKey { public, encoding })
}

/// Reads a public key (SPKI PEM, `BEGIN PUBLIC KEY`) of any of the three algorithms; a private
/// key file is accepted too, and only its public half is used.
///
/// # Errors
/// A sentence naming the file and what is wrong with it.
pub fn load_public(path: &Path) -> Result<PublicKey, String> {
    let pem = read(path)?;
    let candidates = [
        AsymmetricAlgorithm::Es256,
        AsymmetricAlgorithm::EdDsa,
        AsymmetricAlgorithm::Rs256,
    ];
    let mut refusal = None;
    for algorithm in candidates {
        let decoding = match algorithm {
            AsymmetricAlgorithm::Rs256 => DecodingKey::from_rsa_pem(&pem),
            AsymmetricAlgorithm::Es256 => DecodingKey::from_ec_pem(&pem),
            AsymmetricAlgorithm::EdDsa => DecodingKey::from_ed_pem(&pem),
        };
        let jwk = match decoding {
            Ok(key) => Jwk::from_decoding_key(&key, Some(algorithm.algorithm())),
            Err(_) => continue,
        };
        match jwk
            .map_err(|_| None)
            .and_then(|jwk| public_key(jwk, algorithm))
        {
            Ok(key) => return Ok(key),
            Err(Some(why)) => refusal = Some(format!("{}: {why}", path.display())),
            Err(None) => {}
        }
    }
    if let Some(refusal) = refusal {
        return Err(refusal);
    }
    // A private key in the list: publish its public half.
    candidates
        .into_iter()
        .find_map(|algorithm| load_private(path, algorithm).ok())
        .map(|key| key.public)
        .ok_or_else(|| {
            format!(
                "{} is not a PEM public key of RS256 (RSA, at least 2048 bits), ES256 (P-256) \
                 or EdDSA (Ed25519)",
                path.display()
            )
        })
}

/// Completes a public JWK: checks the key fits the algorithm, sets `kid`, `use` and `alg`.
/// `Err(None)`: not a key of this algorithm; `Err(Some(why))`: one, but unusable.
fn public_key(mut jwk: Jwk, algorithm: AsymmetricAlgorithm) -> Result<PublicKey, Option<String>> {
    match (&jwk.algorithm, algorithm) {
        (AlgorithmParameters::RSA(rsa), AsymmetricAlgorithm::Rs256) => {
            let bits = rsa_modulus_bits(&rsa.n).ok_or(None)?;
            if bits < MIN_RSA_BITS {
                return Err(Some(format!(
                    "an RSA key of {bits} bits; at least {MIN_RSA_BITS} are required"
                )));
            }
        }
        (AlgorithmParameters::EllipticCurve(ec), AsymmetricAlgorithm::Es256) => {
            if ec.curve != EllipticCurve::P256 {
                return Err(Some(format!(
                    "an EC key on {:?}; ES256 needs P-256",
                    ec.curve
                )));
            }
        }
        (AlgorithmParameters::OctetKeyPair(okp), AsymmetricAlgorithm::EdDsa) => {
            if okp.curve != EllipticCurve::Ed25519 {
                return Err(None);
            }
        }
        _ => return Err(None),
    }
    let kid = jwk.thumbprint(ThumbprintHash::SHA256).map_err(|_| None)?;
    jwk.common.key_id = Some(kid.clone());
    jwk.common.public_key_use = Some(PublicKeyUse::Signature);
    jwk.common.key_algorithm = Some(algorithm.algorithm().into());
    let decoding = DecodingKey::from_jwk(&jwk).map_err(|_| None)?;
    Ok(PublicKey {
        kid,
        algorithm,
        decoding,
        jwk,
    })
}

/// The size of an RSA modulus given as base64url (JWK `n`).
fn rsa_modulus_bits(n: &str) -> Option<usize> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(n)
        .ok()?;
    let first = bytes.iter().position(|b| *b != 0)?;
    let leading = usize::try_from(bytes[first].leading_zeros()).ok()?;
    Some((bytes.len() - first) * 8 - leading)
}

fn encoding_key(
    algorithm: AsymmetricAlgorithm,
    pem: &[u8],
) -> jsonwebtoken::errors::Result<EncodingKey> {
    match algorithm {
        AsymmetricAlgorithm::Rs256 => EncodingKey::from_rsa_pem(pem),
        AsymmetricAlgorithm::Es256 => EncodingKey::from_ec_pem(pem),
        AsymmetricAlgorithm::EdDsa => EncodingKey::from_ed_pem(pem),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|err| format!("cannot read {}: {err}", path.display()))
}

/// A key made by [`generate`]: both PEMs and the `kid`.
pub struct GeneratedKey {
    /// PKCS#8 PEM of the private key (write it with mode 0600).
    pub private_pem: secrecy::SecretString,
    /// SPKI PEM of the public key, for `JWT_PUBLIC_KEY_FILES`.
    pub public_pem: String,
    /// Its RFC 7638 thumbprint.
    pub kid: String,
}

/// Makes a new key for `algorithm` (RSA: 3072 bits).
///
/// # Errors
/// Only if the crypto crates fail to encode what they generated.
pub fn generate(algorithm: AsymmetricAlgorithm) -> anyhow::Result<GeneratedKey> {
    use pkcs8::{EncodePrivateKey as _, EncodePublicKey as _, LineEnding};
    use secrecy::ExposeSecret as _;

    let line_ending = LineEnding::LF;
    let mut rng = rand::rng();
    let (private_pem, public_pem) = match algorithm {
        AsymmetricAlgorithm::Rs256 => {
            let key = rsa::PrivateKey::new(&mut rng, 3072)?;
            (
                key.to_pkcs8_pem(line_ending)?.to_string(),
                key.to_public_key().to_public_key_pem(line_ending)?,
            )
        }
        AsymmetricAlgorithm::Es256 => {
            let key =
                <p256::SecretKey as p256::elliptic_curve::Generate>::generate_from_rng(&mut rng);
            (
                key.to_pkcs8_pem(line_ending)?.to_string(),
                key.public_key().to_public_key_pem(line_ending)?,
            )
        }
        AsymmetricAlgorithm::EdDsa => {
            let key = ed25519_dalek::SigningKey::generate(&mut rng);
            // PKCS#8 v1 (the seed alone), the form jsonwebtoken and OpenSSL read.
            let seed = ed25519_dalek::pkcs8::KeypairBytes {
                secret_key: key.to_bytes(),
                public_key: None,
            };
            (
                seed.to_pkcs8_pem(line_ending)?.to_string(),
                key.verifying_key().to_public_key_pem(line_ending)?,
            )
        }
    };
    let private_pem = secrecy::SecretString::from(private_pem);
    let encoding = encoding_key(algorithm, private_pem.expose_secret().as_bytes())?;
    let jwk = Jwk::from_encoding_key(&encoding, algorithm.algorithm())?;
    let kid = public_key(jwk, algorithm)
        .map_err(|_| anyhow::anyhow!("the generated key does not load"))?
        .kid;
    Ok(GeneratedKey {
        private_pem,
        public_pem,
        kid,
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use pkcs8::{EncodePrivateKey as _, LineEnding};
    use secrecy::ExposeSecret as _;

    use super::*;

    fn write(dir: &tempfile::TempDir, name: &str, contents: &str) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    /// RFC 7638 computed here, independently of jsonwebtoken: SHA-256 over the required
    /// members in lexicographic order, without whitespace.
    fn thumbprint(jwk: &serde_json::Value) -> String {
        use base64::Engine as _;
        use sha2::Digest as _;
        let members: &[&str] = match jwk["kty"].as_str().unwrap() {
            "RSA" => &["e", "kty", "n"],
            "EC" => &["crv", "kty", "x", "y"],
            _ => &["crv", "kty", "x"],
        };
        let canonical = members
            .iter()
            .map(|m| format!("\"{m}\":{}", jwk[*m]))
            .collect::<Vec<_>>()
            .join(",");
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(sha2::Sha256::digest(format!("{{{canonical}}}")))
    }

    #[test]
    fn generated_keys_load_with_their_thumbprint_as_kid_and_publish_no_private_part() {
        let dir = tempfile::tempdir().unwrap();
        for algorithm in [
            AsymmetricAlgorithm::Es256,
            AsymmetricAlgorithm::EdDsa,
            AsymmetricAlgorithm::Rs256,
        ] {
            let generated = generate(algorithm).unwrap();
            let name = algorithm.name();
            let private = write(
                &dir,
                &format!("{name}.pem"),
                generated.private_pem.expose_secret(),
            );
            let public = write(&dir, &format!("{name}.pub.pem"), &generated.public_pem);
            let signing = load_private(&private, algorithm).unwrap();
            let published = load_public(&public).unwrap();
            assert_eq!(signing.public.kid, generated.kid);
            assert_eq!(published.kid, generated.kid, "{name}: same key, same kid");
            assert_eq!(
                published.algorithm, algorithm,
                "{name}: detected from the file"
            );
            let jwk = serde_json::to_value(&signing.public.jwk).unwrap();
            assert_eq!(jwk["kid"], generated.kid.as_str());
            assert_eq!(jwk["alg"], name);
            assert_eq!(jwk["use"], "sig");
            assert_eq!(thumbprint(&jwk), generated.kid, "{name}: RFC 7638");
            for private_member in ["d", "p", "q", "dp", "dq", "qi", "k", "oth"] {
                assert!(
                    jwk.get(private_member).is_none(),
                    "{name}: {private_member}"
                );
            }
            // A private key listed as a public one publishes its public half only.
            assert_eq!(load_public(&private).unwrap().kid, generated.kid);
        }
    }

    #[test]
    fn unusable_key_files_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let ed = generate(AsymmetricAlgorithm::EdDsa).unwrap();
        let ed_file = write(&dir, "ed.pem", ed.private_pem.expose_secret());
        let err = load_private(&ed_file, AsymmetricAlgorithm::Es256)
            .err()
            .unwrap();
        assert!(
            err.contains("is not a PEM private key of a P-256 EC key"),
            "{err}"
        );
        // RSA under 2048 bits.
        let small = rsa::PrivateKey::new(&mut rand::rng(), 1024).unwrap();
        let small_file = write(
            &dir,
            "small.pem",
            &small.to_pkcs8_pem(LineEnding::LF).unwrap(),
        );
        let err = load_private(&small_file, AsymmetricAlgorithm::Rs256)
            .err()
            .unwrap();
        assert!(err.contains("1024 bits; at least 2048"), "{err}");
        // P-384 is not ES256.
        let p384 = <p384::SecretKey as p384::elliptic_curve::Generate>::generate_from_rng(
            &mut rand::rng(),
        );
        let p384_file = write(
            &dir,
            "p384.pem",
            &p384.to_pkcs8_pem(LineEnding::LF).unwrap(),
        );
        let err = load_private(&p384_file, AsymmetricAlgorithm::Es256)
            .err()
            .unwrap();
        assert!(
            err.contains("is not a PEM private key of a P-256 EC key"),
            "{err}"
        );
        let garbage = write(&dir, "garbage.pem", "not a key");
        assert!(load_public(&garbage).is_err());
        let err = load_private(&dir.path().join("missing.pem"), AsymmetricAlgorithm::EdDsa)
            .err()
            .unwrap();
        assert!(err.starts_with("cannot read "), "{err}");
    }

    #[test]
    fn a_key_set_publishes_each_key_once_signing_key_first() {
        let dir = tempfile::tempdir().unwrap();
        let next = generate(AsymmetricAlgorithm::EdDsa).unwrap();
        let signing = generate(AsymmetricAlgorithm::Es256).unwrap();
        let next_file = write(&dir, "next.pub.pem", &next.public_pem);
        let signing_file = write(&dir, "signing.pem", signing.private_pem.expose_secret());
        let set = KeySet::load(
            Some((AsymmetricAlgorithm::Es256, &signing_file)),
            &[next_file.clone(), signing_file.clone(), next_file],
        )
        .unwrap();
        let kids: Vec<&str> = set.published.iter().map(|k| k.kid.as_str()).collect();
        assert_eq!(kids, [signing.kid.as_str(), next.kid.as_str()]);
        assert!(set.find(&next.kid).is_some());
        assert!(set.find("unknown").is_none());
        let shown = format!("{set:?}");
        assert!(!shown.contains("PRIVATE"), "{shown}");
        let err = KeySet::load(None, &[dir.path().join("nope.pem")])
            .err()
            .unwrap();
        assert_eq!(err.0, "JWT_PUBLIC_KEY_FILES");
    }
}
