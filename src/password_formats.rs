//! The password-hash formats a user may arrive with from another system (API.md, "Bringing users
//! from another system"): bcrypt (ours), argon2, scrypt and PBKDF2 in PHC string form, Django's
//! `pbkdf2_sha256$`, and phpass (`$P$`, `$H$`). A leaf: [`crate::passwords`] verifies through
//! it on the password-hashing pool, and an import checks each hash with [`classify`] first.
//!
//! Every format but bcrypt is verified with a maintained crate (RustCrypto's `argon2`, `scrypt`,
//! `pbkdf2`; `phpass` for WordPress). What this module adds is the refusal of costly
//! parameters: a hash whose one verification would cost more than bcrypt at cost 14 is never
//! run, at import or at login, so a file cannot plant a hash that stalls the login path.

use password_hash::{PasswordVerifier as _, phc::PasswordHash};
use subtle::ConstantTimeEq as _;

/// The most memory an argon2 hash may ask for, in KiB (256 MiB).
pub const MAX_ARGON2_KIB: u32 = 256 * 1024;
/// The most passes an argon2 hash may ask for.
pub const MAX_ARGON2_PASSES: u32 = 10;
/// The most lanes an argon2 hash may ask for.
pub const MAX_ARGON2_LANES: u32 = 16;
/// The largest scrypt `ln` (N = 2^ln).
pub const MAX_SCRYPT_LOG_N: u8 = 20;
/// scrypt's memory is 128 · N · r bytes: at most 1 GiB.
pub const MAX_SCRYPT_BYTES: u64 = 1 << 30;
/// The largest scrypt `p`.
pub const MAX_SCRYPT_P: u32 = 4;
/// The most PBKDF2 iterations (PHC or Django).
pub const MAX_PBKDF2_ROUNDS: u32 = 2_000_000;
/// The most phpass rounds, as a power of two (WordPress uses 2^8 to 2^13).
pub const MAX_PHPASS_LOG2: usize = 20;
/// The bcrypt cost that sets the budget (a hash over it is refused at import).
pub const MAX_BCRYPT_COST: u32 = 14;

/// A format this service can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `$2a$`, `$2b$`, `$2y$`: the service's own.
    Bcrypt,
    /// `$argon2id$`, `$argon2i$`, `$argon2d$` (PHC).
    Argon2,
    /// `$scrypt$` (PHC).
    Scrypt,
    /// `$pbkdf2-sha256$`, `$pbkdf2-sha512$` (PHC).
    Pbkdf2,
    /// Django's `pbkdf2_sha256$<iterations>$<salt>$<base64>`.
    Django,
    /// phpass's portable hashes, `$P$` (WordPress) and `$H$` (phpBB).
    Phpass,
}

impl Format {
    /// Its name in reports.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Bcrypt => "bcrypt",
            Self::Argon2 => "argon2",
            Self::Scrypt => "scrypt",
            Self::Pbkdf2 => "pbkdf2",
            Self::Django => "django-pbkdf2",
            Self::Phpass => "phpass",
        }
    }
}

/// Why a hash is not taken (never containing the hash itself).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No format this service knows.
    #[error("unrecognised hash format")]
    Unrecognised,
    /// A known format, but not well formed.
    #[error("malformed {0} hash")]
    Malformed(&'static str),
    /// Well formed, but one verification would cost more than bcrypt at cost 14.
    #[error("{0}")]
    TooCostly(String),
}

/// Whether `hash` is a bcrypt hash (`$2a$`, `$2b$`, `$2y$`), the service's own format.
#[must_use]
pub fn is_bcrypt(hash: &str) -> bool {
    ["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p))
}

/// The format of `hash`, once its parameters are within the budget.
///
/// # Errors
/// A [`Refusal`] saying why the hash cannot be used.
pub fn classify(hash: &str) -> Result<Format, Refusal> {
    if !hash.is_ascii() {
        return Err(Refusal::Unrecognised);
    }
    if is_bcrypt(hash) {
        let cost = bcrypt_cost(hash).ok_or(Refusal::Malformed("bcrypt"))?;
        hash.parse::<bcrypt::HashParts>()
            .map_err(|_| Refusal::Malformed("bcrypt"))?;
        if cost > MAX_BCRYPT_COST {
            return Err(Refusal::TooCostly(format!(
                "bcrypt cost {cost} is over {MAX_BCRYPT_COST}"
            )));
        }
        return Ok(Format::Bcrypt);
    }
    if hash.starts_with("pbkdf2_sha256$") {
        return django(hash).map(|_| Format::Django);
    }
    if hash.starts_with("$P$") || hash.starts_with("$H$") {
        return phpass(hash).map(|_| Format::Phpass);
    }
    if hash.starts_with('$') {
        return phc(hash).map(|(format, _)| format);
    }
    Err(Refusal::Unrecognised)
}

/// Whether `password` matches `hash`, in whatever format it is. A hash that [`classify`]
/// refuses never matches (it is not run). bcrypt hashes are verified at any cost (the
/// service's own may be over 14 with `BCRYPT_ROUNDS`).
#[must_use]
pub fn verify(password: &str, hash: &str) -> bool {
    if is_bcrypt(hash) {
        return bcrypt::verify(password, hash).unwrap_or(false);
    }
    if !hash.is_ascii() {
        return false;
    }
    if hash.starts_with("pbkdf2_sha256$") {
        return django(hash).is_ok_and(|parts| parts.matches(password));
    }
    if hash.starts_with("$P$") || hash.starts_with("$H$") {
        return phpass(hash).is_ok_and(|portable| {
            phpass::PhPass::try_from(portable.as_str())
                .is_ok_and(|parsed| parsed.verify(password).is_ok())
        });
    }
    let Ok((format, parsed)) = phc(hash) else {
        return false;
    };
    let password = password.as_bytes();
    match format {
        Format::Argon2 => argon2::Argon2::default()
            .verify_password(password, &parsed)
            .is_ok(),
        Format::Scrypt => scrypt::Scrypt::default()
            .verify_password(password, &parsed)
            .is_ok(),
        Format::Pbkdf2 => pbkdf2::Pbkdf2::default()
            .verify_password(password, &parsed)
            .is_ok(),
        Format::Bcrypt | Format::Django | Format::Phpass => false,
    }
}

/// The cost of a bcrypt hash (`$2b$12$...`); `None` for any other format.
#[must_use]
pub fn bcrypt_cost(hash: &str) -> Option<u32> {
    if !is_bcrypt(hash) {
        return None;
    }
    hash.split('$').nth(2).and_then(|c| c.parse().ok())
}

/// A PHC string of a format we verify, its parameters within the budget.
fn phc(hash: &str) -> Result<(Format, PasswordHash), Refusal> {
    let parsed = PasswordHash::new(hash).map_err(|_| Refusal::Unrecognised)?;
    let algorithm = parsed.algorithm.as_str();
    let format = match algorithm {
        "argon2id" | "argon2i" | "argon2d" => Format::Argon2,
        "scrypt" => Format::Scrypt,
        "pbkdf2-sha256" | "pbkdf2-sha512" => Format::Pbkdf2,
        _ => return Err(Refusal::Unrecognised),
    };
    let malformed = || Refusal::Malformed(format.name());
    if parsed.salt.is_none() || parsed.hash.is_none() {
        return Err(malformed());
    }
    match format {
        Format::Argon2 => {
            let params = argon2::Params::try_from(&parsed).map_err(|_| malformed())?;
            if params.m_cost() > MAX_ARGON2_KIB {
                return Err(Refusal::TooCostly(format!(
                    "argon2 memory {} KiB is over {MAX_ARGON2_KIB} KiB",
                    params.m_cost()
                )));
            }
            if params.t_cost() > MAX_ARGON2_PASSES || params.p_cost() > MAX_ARGON2_LANES {
                return Err(Refusal::TooCostly(format!(
                    "argon2 t={} p={} is over t={MAX_ARGON2_PASSES} p={MAX_ARGON2_LANES}",
                    params.t_cost(),
                    params.p_cost()
                )));
            }
        }
        Format::Scrypt => {
            let params = scrypt::Params::try_from(&parsed).map_err(|_| malformed())?;
            // The shift only once `ln` is known to be small.
            let too_big = params.log_n() > MAX_SCRYPT_LOG_N
                || 128 * (1u64 << params.log_n()) * u64::from(params.r()) > MAX_SCRYPT_BYTES;
            if too_big || params.p() > MAX_SCRYPT_P {
                return Err(Refusal::TooCostly(format!(
                    "scrypt ln={} r={} p={} is over ln={MAX_SCRYPT_LOG_N}, 1 GiB, p={MAX_SCRYPT_P}",
                    params.log_n(),
                    params.r(),
                    params.p()
                )));
            }
        }
        Format::Pbkdf2 => {
            let params = pbkdf2::Params::try_from(&parsed).map_err(|_| malformed())?;
            if params.rounds() > MAX_PBKDF2_ROUNDS {
                return Err(Refusal::TooCostly(format!(
                    "pbkdf2 {} iterations is over {MAX_PBKDF2_ROUNDS}",
                    params.rounds()
                )));
            }
        }
        Format::Bcrypt | Format::Django | Format::Phpass => {}
    }
    Ok((format, parsed))
}

/// Django's `pbkdf2_sha256$<iterations>$<salt>$<base64 of 32 bytes>`.
struct Django<'a> {
    iterations: u32,
    salt: &'a str,
    expected: [u8; 32],
}

impl Django<'_> {
    fn matches(&self, password: &str) -> bool {
        let mut derived = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<sha2::Sha256>(
            password.as_bytes(),
            self.salt.as_bytes(),
            self.iterations,
            &mut derived,
        );
        derived.ct_eq(&self.expected).into()
    }
}

fn django(hash: &str) -> Result<Django<'_>, Refusal> {
    use base64::Engine as _;
    let malformed = || Refusal::Malformed("django-pbkdf2");
    let mut parts = hash.split('$');
    let (Some("pbkdf2_sha256"), Some(iterations), Some(salt), Some(encoded), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(malformed());
    };
    let iterations: u32 = iterations.parse().map_err(|_| malformed())?;
    if iterations == 0 || salt.is_empty() {
        return Err(malformed());
    }
    if iterations > MAX_PBKDF2_ROUNDS {
        return Err(Refusal::TooCostly(format!(
            "pbkdf2 {iterations} iterations is over {MAX_PBKDF2_ROUNDS}"
        )));
    }
    let expected = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .ok_or_else(malformed)?;
    Ok(Django {
        iterations,
        salt,
        expected,
    })
}

/// phpass's itoa64 alphabet: the fourth character's place in it is log2 of the rounds.
const ITOA64: &str = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A portable phpass hash (`$P$` or phpBB's identical `$H$`) as `$P$` text, checked before the `phpass` crate
/// sees it: that crate slices the text by byte offsets (so it must be 34 ASCII characters) and
/// runs 2^n MD5 rounds for any n up to 63, so the rounds are bounded here.
fn phpass(hash: &str) -> Result<String, Refusal> {
    let malformed = || Refusal::Malformed("phpass");
    if hash.len() != 34
        || !hash
            .bytes()
            .all(|b| b == b'$' || ITOA64.as_bytes().contains(&b))
    {
        return Err(malformed());
    }
    let log2 = ITOA64
        .find(char::from(hash.as_bytes()[3]))
        .ok_or_else(malformed)?;
    if log2 < 7 {
        return Err(malformed());
    }
    if log2 > MAX_PHPASS_LOG2 {
        return Err(Refusal::TooCostly(format!(
            "phpass 2^{log2} rounds is over 2^{MAX_PHPASS_LOG2}"
        )));
    }
    let portable = format!("$P${}", &hash[3..]);
    phpass::PhPass::try_from(portable.as_str()).map_err(|_| malformed())?;
    Ok(portable)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWORD: &str = "Imported-Pass-123";

    /// Made by someone else's code: argon2-cffi, passlib (phpass, Django), Python's hashlib
    /// (scrypt, PBKDF2, put in PHC form), all for `PASSWORD`.
    const VECTORS: [(&str, Format); 9] = [
        (
            "$argon2id$v=19$m=19456,t=2,p=1$rFMgd7i5EvW0QEjRdeq/Fw$TaOkx8zceq7FNapIgKs5x2gS6EbU5tOlcds2CMeNyN0",
            Format::Argon2,
        ),
        (
            "$argon2i$v=19$m=8192,t=2,p=1$z4uLFXtq84WSjHFAWQjCdA$J6BFkvL/qsJKjb+3Lpm2aBZHeemNNiiGklIJzG9gplM",
            Format::Argon2,
        ),
        ("$P$6maPPE8TkQ5VY.lVM2wfxDbKNGdRu41", Format::Phpass),
        ("$H$6Ilfdm/Z5bJswkYdnT5iiqLF00.XmY/", Format::Phpass),
        (
            "pbkdf2_sha256$10000$UDjDB2JGS0eY$6oEtxscgUtsjZE4UKRWM594+GTl0aKrZBy4HuB12/Q0=",
            Format::Django,
        ),
        (
            "$scrypt$ln=10,r=8,p=1$c2FsdHNhbHRzYWx0MTIzNA$PDALpEiyzT7uqFe4EtSQKeNbGFHk6htxeFLI2QR8DXg",
            Format::Scrypt,
        ),
        (
            "$pbkdf2-sha256$i=10000,l=32$c2FsdHNhbHRzYWx0MTIzNA$ZLTLxgUNxsWUD2lfzXEY6ajpTD1slUvvIGb7InpwBnQ",
            Format::Pbkdf2,
        ),
        (
            "$pbkdf2-sha512$i=10000,l=64$c2FsdHNhbHRzYWx0MTIzNA$wMvROBpF8WR/4DD+MGUYceeYVB8ZcrEnmM6lmZxZD6aD4ecdl5n+FswPABspzQZiq/i+lGN5rLPO2SbQ2GhtsA",
            Format::Pbkdf2,
        ),
        // phpass's own test suite (test.php): "test12345".
        ("$P$9IQRaTwmfeRo7ud9Fh4E2PdI0S3r.L0", Format::Phpass),
    ];

    #[test]
    fn hashes_made_elsewhere_verify_with_the_right_password_only() {
        for (hash, format) in VECTORS {
            assert_eq!(classify(hash), Ok(format), "{hash}");
            let right = if hash.starts_with("$P$9IQ") {
                "test12345"
            } else {
                PASSWORD
            };
            assert!(verify(right, hash), "{hash}");
            assert!(!verify("Imported-Pass-124", hash), "{hash}");
        }
        // bcrypt under each of its prefixes.
        let ours = bcrypt::hash(PASSWORD, 4).unwrap();
        for prefix in ["$2a$", "$2b$", "$2y$"] {
            let hash = format!("{prefix}{}", &ours[4..]);
            assert_eq!(classify(&hash), Ok(Format::Bcrypt));
            assert!(verify(PASSWORD, &hash) && !verify("nope", &hash), "{hash}");
        }
    }

    #[test]
    fn costly_parameters_are_refused_and_never_run() {
        let costly = [
            "$argon2id$v=19$m=4194304,t=2,p=1$rFMgd7i5EvW0QEjRdeq/Fw$TaOkx8zceq7FNapIgKs5x2gS6EbU5tOlcds2CMeNyN0",
            "$argon2id$v=19$m=19456,t=1000,p=1$rFMgd7i5EvW0QEjRdeq/Fw$TaOkx8zceq7FNapIgKs5x2gS6EbU5tOlcds2CMeNyN0",
            "$scrypt$ln=30,r=8,p=1$c2FsdHNhbHRzYWx0MTIzNA$PDALpEiyzT7uqFe4EtSQKeNbGFHk6htxeFLI2QR8DXg",
            "$scrypt$ln=20,r=64,p=1$c2FsdHNhbHRzYWx0MTIzNA$PDALpEiyzT7uqFe4EtSQKeNbGFHk6htxeFLI2QR8DXg",
            "$pbkdf2-sha256$i=1000000000,l=32$c2FsdHNhbHRzYWx0MTIzNA$ZLTLxgUNxsWUD2lfzXEY6ajpTD1slUvvIGb7InpwBnQ",
            "pbkdf2_sha256$1000000000$UDjDB2JGS0eY$6oEtxscgUtsjZE4UKRWM594+GTl0aKrZBy4HuB12/Q0=",
            "$P$zmaPPE8TkQ5VY.lVM2wfxDbKNGdRu41",
        ]
        .map(str::to_owned);
        // A real bcrypt hash relabelled at cost 15.
        let bcrypt_15 = format!("$2b$15${}", &bcrypt::hash(PASSWORD, 4).unwrap()[7..]);
        let started = std::time::Instant::now();
        for hash in costly.iter().chain([&bcrypt_15]) {
            let refusal = classify(hash).unwrap_err();
            assert!(
                matches!(refusal, Refusal::TooCostly(_)),
                "{hash}: {refusal:?}"
            );
            assert!(
                !refusal.to_string().contains(&hash[hash.len() - 8..]),
                "never the hash"
            );
            if !hash.starts_with("$2b$") {
                assert!(!verify(PASSWORD, hash), "{hash}");
            }
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "none of them ran"
        );
    }

    #[test]
    fn unknown_and_malformed_hashes_are_told_apart() {
        for hash in [
            "",
            "plain",
            "md5:abc",
            "$1$salt$hash",
            "$argon2x$v=19$m=8,t=1,p=1$c2FsdA$aGFzaA",
            "pbkdf2_sha1$1$a$b",
            "ünïcode",
        ] {
            assert_eq!(classify(hash), Err(Refusal::Unrecognised), "{hash}");
            assert!(!verify(PASSWORD, hash));
        }
        for (hash, format) in [
            ("$2b$12$short", "bcrypt"),
            ("pbkdf2_sha256$abc$salt$aGFzaA==", "django-pbkdf2"),
            ("pbkdf2_sha256$1000$salt$notbase64!", "django-pbkdf2"),
            ("$P$6maPPE8TkQ5VY", "phpass"),
            ("$P$6maPPE8TkQ5VY.lVM2wfxDbKNGdRu4é", "phpass"),
            (
                "$argon2id$v=19$m=19456,t=2,p=1$rFMgd7i5EvW0QEjRdeq/Fw",
                "argon2",
            ),
        ] {
            let got = classify(hash);
            assert!(
                got == Err(Refusal::Malformed(format)) || got == Err(Refusal::Unrecognised),
                "{hash}: {got:?}"
            );
            assert!(!verify(PASSWORD, hash));
        }
    }
}
