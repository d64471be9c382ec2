//! Users brought from another system sign in with the password hash that system made: argon2,
//! scrypt and PBKDF2 (PHC strings), Django's PBKDF2, phpass (WordPress, phpBB) and bcrypt under
//! each prefix. Over real sockets on both databases: the right password signs in and the hash
//! becomes ours (bcrypt at `BCRYPT_ROUNDS`), a wrong one is refused and counts toward the
//! lockout, and a hash with costly parameters is never run. The hashes were made by someone
//! else's code (argon2-cffi, passlib, Python's hashlib), not by the crates that verify them.

use chrono::Utc;
use reqwest::StatusCode;

use crate::{dual_backend, helpers::*};

dual_backend!(
    each_format_signs_in_once_then_the_hash_is_ours,
    wrong_passwords_against_an_imported_hash_count_toward_the_lockout,
    a_hash_with_costly_parameters_never_signs_in_and_is_kept,
);

/// The password every vector was made for.
const IMPORTED_PASSWORD: &str = "Imported-Pass-123";

/// (format, hash) for `IMPORTED_PASSWORD`.
const VECTORS: [(&str, &str); 8] = [
    (
        "argon2id",
        "$argon2id$v=19$m=19456,t=2,p=1$rFMgd7i5EvW0QEjRdeq/Fw$TaOkx8zceq7FNapIgKs5x2gS6EbU5tOlcds2CMeNyN0",
    ),
    (
        "argon2i",
        "$argon2i$v=19$m=8192,t=2,p=1$z4uLFXtq84WSjHFAWQjCdA$J6BFkvL/qsJKjb+3Lpm2aBZHeemNNiiGklIJzG9gplM",
    ),
    ("wordpress", "$P$6maPPE8TkQ5VY.lVM2wfxDbKNGdRu41"),
    ("phpbb", "$H$6Ilfdm/Z5bJswkYdnT5iiqLF00.XmY/"),
    (
        "django",
        "pbkdf2_sha256$10000$UDjDB2JGS0eY$6oEtxscgUtsjZE4UKRWM594+GTl0aKrZBy4HuB12/Q0=",
    ),
    (
        "scrypt",
        "$scrypt$ln=10,r=8,p=1$c2FsdHNhbHRzYWx0MTIzNA$PDALpEiyzT7uqFe4EtSQKeNbGFHk6htxeFLI2QR8DXg",
    ),
    (
        "pbkdf2-sha256",
        "$pbkdf2-sha256$i=10000,l=32$c2FsdHNhbHRzYWx0MTIzNA$ZLTLxgUNxsWUD2lfzXEY6ajpTD1slUvvIGb7InpwBnQ",
    ),
    (
        "pbkdf2-sha512",
        "$pbkdf2-sha512$i=10000,l=64$c2FsdHNhbHRzYWx0MTIzNA$wMvROBpF8WR/4DD+MGUYceeYVB8ZcrEnmM6lmZxZD6aD4ecdl5n+FswPABspzQZiq/i+lGN5rLPO2SbQ2GhtsA",
    ),
];

/// A user stored with `hash`, as an import leaves it.
async fn imported(app: &TestApp, email: &str, hash: &str) -> i64 {
    app.store
        .insert_user(email, hash, Utc::now())
        .await
        .unwrap()
        .id
}

async fn stored_hash(app: &TestApp, id: i64) -> String {
    app.store
        .find_user_by_id(id)
        .await
        .unwrap()
        .unwrap()
        .password_hash
}

async fn each_format_signs_in_once_then_the_hash_is_ours(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[("EMAIL_VERIFICATION", "off")]).await;
    // bcrypt from PHP ($2y$) and older libraries ($2a$), at another cost than ours.
    let bcrypt = bcrypt::hash(IMPORTED_PASSWORD, 5).unwrap();
    let php = format!("$2y${}", &bcrypt[4..]);
    let old = format!("$2a${}", &bcrypt[4..]);
    let all = VECTORS
        .iter()
        .map(|(name, hash)| ((*name).to_owned(), (*hash).to_owned()))
        .chain([("bcrypt-2y".to_owned(), php), ("bcrypt-2a".to_owned(), old)]);
    for (name, hash) in all {
        let email = format!("{name}@example.com");
        let id = imported(&app, &email, &hash).await;
        // Act + Assert: a wrong password is refused and changes nothing.
        let (status, body) = status_and_json(app.login(&email, "Imported-Pass-124").await).await;
        assert_error(
            status,
            &body,
            StatusCode::UNAUTHORIZED,
            "Invalid email or password",
            "INVALID_CREDENTIALS",
        );
        assert_eq!(stored_hash(&app, id).await, hash, "{name}");
        // The right one signs in, and the stored hash is now bcrypt at BCRYPT_ROUNDS (4).
        let (status, body) = status_and_json(app.login(&email, IMPORTED_PASSWORD).await).await;
        assert_eq!(status, StatusCode::OK, "{name}: {body}");
        let ours = stored_hash(&app, id).await;
        assert!(ours.starts_with("$2b$04$"), "{name}: rehashed");
        assert!(bcrypt::verify(IMPORTED_PASSWORD, &ours).unwrap(), "{name}");
        // The next login uses ours.
        assert_eq!(
            app.login(&email, IMPORTED_PASSWORD).await.status(),
            StatusCode::OK,
            "{name}"
        );
        assert_eq!(stored_hash(&app, id).await, ours, "{name}: rehashed once");
    }
}

async fn wrong_passwords_against_an_imported_hash_count_toward_the_lockout(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[("EMAIL_VERIFICATION", "off")]).await;
    let email = "locked@example.com";
    imported(&app, email, VECTORS[0].1).await;
    for _ in 0..5 {
        assert_eq!(
            app.login(email, "Imported-Pass-124").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let (status, body) = status_and_json(app.login(email, IMPORTED_PASSWORD).await).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error_code"], "TOO_MANY_ATTEMPTS");
}

async fn a_hash_with_costly_parameters_never_signs_in_and_is_kept(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[("EMAIL_VERIFICATION", "off")]).await;
    // Argon2 asking for 4 GiB, PBKDF2 for 10^9 iterations, scrypt for N = 2^30, phpass for
    // 2^61 rounds: with the right password, each would stall a hashing thread for good.
    for (name, hash) in [
        (
            "argon2",
            "$argon2id$v=19$m=4194304,t=2,p=1$rFMgd7i5EvW0QEjRdeq/Fw$TaOkx8zceq7FNapIgKs5x2gS6EbU5tOlcds2CMeNyN0",
        ),
        (
            "pbkdf2",
            "$pbkdf2-sha256$i=1000000000,l=32$c2FsdHNhbHRzYWx0MTIzNA$ZLTLxgUNxsWUD2lfzXEY6ajpTD1slUvvIGb7InpwBnQ",
        ),
        (
            "scrypt",
            "$scrypt$ln=30,r=8,p=1$c2FsdHNhbHRzYWx0MTIzNA$PDALpEiyzT7uqFe4EtSQKeNbGFHk6htxeFLI2QR8DXg",
        ),
        ("phpass", "$P$zmaPPE8TkQ5VY.lVM2wfxDbKNGdRu41"),
    ] {
        let email = format!("costly-{name}@example.com");
        let id = imported(&app, &email, hash).await;
        let (status, body) = status_and_json(app.login(&email, IMPORTED_PASSWORD).await).await;
        assert_error(
            status,
            &body,
            StatusCode::UNAUTHORIZED,
            "Invalid email or password",
            "INVALID_CREDENTIALS",
        );
        assert_eq!(stored_hash(&app, id).await, hash, "{name}");
    }
    // The service still answers at once: no hashing thread is stuck.
    let (_, access, _) = app.user_with_tokens("after@example.com").await;
    assert_eq!(app.verify(&access).await.status(), StatusCode::OK);
}
