//! Local verification: asymmetric keys with `kid`, the JWKS and key rotation, the revocation
//! feed, `keys generate`, and the `auth-verifier` crate against the real service.

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
    time::{Duration, Instant},
};

use auth_service::keys::{self, AsymmetricAlgorithm};
use auth_verifier::{VerifiedUser, Verifier, VerifierConfig, VerifyError};
use base64::Engine as _;
use jsonwebtoken::{EncodingKey, Header};
use reqwest::StatusCode;
use secrecy::ExposeSecret as _;
use serde_json::{Value, json};

use crate::{dual_backend, helpers::*};

dual_backend!(
    every_algorithm_signs_verifies_and_refreshes_with_its_kid,
    forged_headers_and_algorithm_swaps_are_refused,
    rotation_step_by_step_keeps_live_tokens_of_both_keys,
    hs256_tokens_after_a_switch_verify_only_behind_jwt_accept_hs256,
    the_feed_lists_logout_reuse_logout_all_and_disable,
    a_waiting_feed_reader_returns_within_a_second_of_a_change,
    an_expired_or_foreign_cursor_resets_to_the_whole_current_set,
    the_feed_needs_a_reader_token_and_is_absent_without_one,
    the_verifier_crate_refuses_ended_sessions_within_a_second,
);

pub const FEED_TOKEN: &str = "feed-reader-token-0123456789";

/// A key pair on disk: the private PEM (0600), its public PEM and `kid`.
pub struct KeyFiles {
    _dir: tempfile::TempDir,
    pub private: PathBuf,
    pub public: PathBuf,
    pub private_pem: String,
    pub public_pem: String,
    pub kid: String,
    pub algorithm: AsymmetricAlgorithm,
}

impl KeyFiles {
    /// A fresh key (RSA is made once per test run: 3072-bit generation is slow).
    pub fn new(algorithm: AsymmetricAlgorithm) -> Self {
        static RSA: OnceLock<(String, String, String)> = OnceLock::new();
        let fresh = || {
            let key = keys::generate(algorithm).unwrap();
            (
                key.private_pem.expose_secret().to_owned(),
                key.public_pem,
                key.kid,
            )
        };
        let (private_pem, public_pem, kid) = match algorithm {
            AsymmetricAlgorithm::Rs256 => RSA.get_or_init(fresh).clone(),
            _ => fresh(),
        };
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("signing.pem");
        let public = dir.path().join("signing.pub.pem");
        std::fs::write(&private, &private_pem).unwrap();
        std::fs::write(&public, &public_pem).unwrap();
        Self {
            _dir: dir,
            private,
            public,
            private_pem,
            public_pem,
            kid,
            algorithm,
        }
    }

    pub fn encoding_key(&self) -> EncodingKey {
        let pem = self.private_pem.as_bytes();
        match self.algorithm {
            AsymmetricAlgorithm::Rs256 => EncodingKey::from_rsa_pem(pem),
            AsymmetricAlgorithm::Es256 => EncodingKey::from_ec_pem(pem),
            AsymmetricAlgorithm::EdDsa => EncodingKey::from_ed_pem(pem),
        }
        .unwrap()
    }

    /// The header this key's tokens carry.
    pub fn header(&self) -> Header {
        let mut header = Header::new(self.algorithm.algorithm());
        header.kid = Some(self.kid.clone());
        header
    }

    /// `claims` signed by this key under `header`.
    pub fn sign(&self, header: &Header, claims: &Value) -> String {
        jsonwebtoken::encode(header, claims, &self.encoding_key()).unwrap()
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The variables that make an app sign with `key`, publish `public`, with no HMAC secret.
pub fn signing_with<'a>(key: &'a KeyFiles, public: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("JWT_ALGORITHM", key.algorithm.name()),
        ("JWT_PRIVATE_KEY_FILE", path_str(&key.private)),
        ("JWT_PUBLIC_KEY_FILES", public),
        ("JWT_SECRET_KEY", ""),
        ("REVOCATION_FEED_TOKENS", FEED_TOKEN),
    ]
}

async fn jwks(app: &TestApp) -> (Option<String>, Value) {
    let response = app.get("/.well-known/jwks.json").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(&response, "content-type").as_deref(),
        Some("application/json")
    );
    (header(&response, "cache-control"), json_of(response).await)
}

/// The decoded JOSE header of a token.
fn header_of(token: &str) -> Value {
    let part = token.split('.').next().unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[track_caller]
fn assert_invalid_token(status: StatusCode, body: &Value) {
    assert_error(
        status,
        body,
        StatusCode::UNAUTHORIZED,
        "Invalid or expired token",
        "INVALID_TOKEN",
    );
}

async fn every_algorithm_signs_verifies_and_refreshes_with_its_kid(backend: Backend) {
    let db = TestDb::new(backend).await;
    let clock = auth_service::clock::TestClock::new();
    for algorithm in [
        AsymmetricAlgorithm::Rs256,
        AsymmetricAlgorithm::Es256,
        AsymmetricAlgorithm::EdDsa,
    ] {
        // Arrange
        let key = KeyFiles::new(algorithm);
        let app = TestApp::spawn_on(db.clone(), clock.clone(), &signing_with(&key, "")).await;
        let email = format!("{}@example.com", algorithm.name().to_lowercase());
        // Act
        let (user_id, access, refresh) = app.user_with_tokens(&email).await;
        // Assert: both tokens name the key and its algorithm; the access token verifies.
        for token in [&access, &refresh] {
            assert_eq!(
                header_of(token),
                json!({"alg": algorithm.name(), "typ": "JWT", "kid": key.kid}),
            );
        }
        assert_eq!(claims_of(&access)["email"], json!(email));
        let (status, body) = status_and_json(app.verify(&access).await).await;
        assert_eq!(status, StatusCode::OK, "{algorithm:?}: {body}");
        assert_eq!(
            body,
            json!({"valid": true, "user_id": user_id, "email": email, "email_verified": false, "aal": "aal1", "amr": ["pwd"]})
        );
        let (status, body) = status_and_json(app.refresh(&refresh).await).await;
        assert_eq!(status, StatusCode::OK, "{algorithm:?}: {body}");
        let renewed = body["access_token"].as_str().unwrap();
        assert_eq!(header_of(renewed)["kid"], json!(key.kid));
        assert_eq!(app.verify(renewed).await.status(), StatusCode::OK);
        // The JWKS: the one public key, cacheable, nothing private in it.
        let (cache, set) = jwks(&app).await;
        assert_eq!(cache.as_deref(), Some("public, max-age=300"));
        let published = set["keys"].as_array().unwrap();
        assert_eq!(published.len(), 1, "{set}");
        let jwk = published[0].as_object().unwrap();
        assert_eq!(jwk["kid"], json!(key.kid));
        assert_eq!(jwk["alg"], json!(algorithm.name()));
        assert_eq!(jwk["use"], json!("sig"));
        for private in ["d", "p", "q", "dp", "dq", "qi", "oth", "k"] {
            assert!(!jwk.contains_key(private), "{private} published: {set}");
        }
        let expected_members: &[&str] = match algorithm {
            AsymmetricAlgorithm::Rs256 => &["kty", "kid", "alg", "use", "n", "e"],
            AsymmetricAlgorithm::Es256 => &["kty", "kid", "alg", "use", "crv", "x", "y"],
            AsymmetricAlgorithm::EdDsa => &["kty", "kid", "alg", "use", "crv", "x"],
        };
        let mut members: Vec<&str> = jwk.keys().map(String::as_str).collect();
        members.sort_unstable();
        let mut expected = expected_members.to_vec();
        expected.sort_unstable();
        assert_eq!(members, expected, "{set}");
        app.stop().await;
    }
    // HS256 (the default) publishes nothing.
    let app = TestApp::spawn_on(db, clock, &[]).await;
    let (cache, set) = jwks(&app).await;
    assert_eq!(cache.as_deref(), Some("public, max-age=300"));
    assert_eq!(set, json!({"keys": []}));
}

async fn forged_headers_and_algorithm_swaps_are_refused(backend: Backend) {
    // Arrange: an RS256 service and a token it issued.
    let key = KeyFiles::new(AsymmetricAlgorithm::Rs256);
    let app = TestApp::spawn_with(backend, &signing_with(&key, "")).await;
    let (_, access, _) = app.user_with_tokens("forge@example.com").await;
    let claims = claims_of(&access);
    // The control: the same claims re-signed by the real key under the real header verify,
    // so every refusal below is the header's doing.
    let control = key.sign(&key.header(), &claims);
    assert_eq!(app.verify(&control).await.status(), StatusCode::OK);

    let hmac_with_public_key = |kid: Option<&str>| {
        let mut header = Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(
            &header,
            &claims,
            &EncodingKey::from_secret(key.public_pem.as_bytes()).unwrap(),
        )
        .unwrap()
    };
    let with = |edit: &dyn Fn(&mut Header)| {
        let mut header = key.header();
        edit(&mut header);
        key.sign(&header, &claims)
    };
    let (_, set) = jwks(&app).await;
    let own_jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(set["keys"][0].clone()).unwrap();
    let other_rsa_kid = {
        // Another key's token under its own (unpublished) kid.
        let other = KeyFiles::new(AsymmetricAlgorithm::Es256);
        other.sign(&other.header(), &claims)
    };
    let swapped = {
        // An ES256 token that claims the RS256 key's kid.
        let other = KeyFiles::new(AsymmetricAlgorithm::Es256);
        let mut header = other.header();
        header.kid = Some(key.kid.clone());
        other.sign(&header, &claims)
    };
    let unsigned = {
        let encode = |v: &Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
        };
        format!(
            "{}.{}.",
            encode(&json!({"alg": "none", "typ": "JWT", "kid": key.kid})),
            encode(&claims)
        )
    };
    let forged = [
        (
            "RS256 -> HS256 with the public key",
            hmac_with_public_key(Some(&key.kid)),
        ),
        (
            "HS256 with the public key, no kid",
            hmac_with_public_key(None),
        ),
        ("unknown kid", other_rsa_kid),
        ("ES256 under the RS256 kid", swapped),
        ("alg none", unsigned),
        ("no kid", with(&|h| h.kid = None)),
        (
            "jku",
            with(&|h| h.jku = Some("https://evil.example/jwks.json".into())),
        ),
        (
            "x5u",
            with(&|h| h.x5u = Some("https://evil.example/cert.pem".into())),
        ),
        ("jwk", with(&|h| h.jwk = Some(own_jwk.clone()))),
        ("typ not JWT", with(&|h| h.typ = Some("at+jwt".into()))),
    ];
    // Act + Assert
    for (what, token) in forged {
        let (status, body) = status_and_json(app.verify(&token).await).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what} was accepted");
        assert_invalid_token(status, &body);
    }
    assert_eq!(app.verify(&access).await.status(), StatusCode::OK);
}

/// After a switch from HS256 to an asymmetric algorithm, with `JWT_SECRET_KEY` still set, the
/// HS256 tokens issued before verify only while `JWT_ACCEPT_HS256=on`, which warns.
async fn hs256_tokens_after_a_switch_verify_only_behind_jwt_accept_hs256(backend: Backend) {
    let db = TestDb::new(backend).await;
    let clock = auth_service::clock::TestClock::new();
    // Before the switch: HS256 with the test secret.
    let before = TestApp::spawn_on(db.clone(), clock.clone(), &[]).await;
    let (_, hs256_access, _) = before.user_with_tokens("switch@example.com").await;
    before.stop().await;
    let key = KeyFiles::new(AsymmetricAlgorithm::Es256);
    let mut vars: Vec<(&str, &str)> = signing_with(&key, "")
        .into_iter()
        .filter(|(name, _)| *name != "JWT_SECRET_KEY")
        .collect();
    // After it, the secret still set: HS256 tokens are refused by default...
    let strict = TestApp::spawn_on(db.clone(), clock.clone(), &vars).await;
    let (status, body) = status_and_json(strict.verify(&hs256_access).await).await;
    assert_invalid_token(status, &body);
    let (es256_access, _) = strict.tokens("switch@example.com").await;
    assert_eq!(strict.verify(&es256_access).await.status(), StatusCode::OK);
    strict.stop().await;
    // ...and accepted behind the migration switch.
    vars.push(("JWT_ACCEPT_HS256", "on"));
    let migrating = TestApp::spawn_on(db.clone(), clock.clone(), &vars).await;
    assert_eq!(
        migrating.verify(&hs256_access).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        migrating.verify(&es256_access).await.status(),
        StatusCode::OK
    );
}

#[test]
fn jwt_accept_hs256_warns_at_start_and_needs_the_secret() {
    let key = KeyFiles::new(AsymmetricAlgorithm::Es256);
    let base = [
        ("JWT_ALGORITHM", "ES256"),
        ("JWT_PRIVATE_KEY_FILE", path_str(&key.private)),
        ("JWT_ACCEPT_HS256", "on"),
    ];
    let with_secret: Vec<(&str, &str)> = base
        .iter()
        .copied()
        .chain([("JWT_SECRET_KEY", SECRET)])
        .collect();
    let mut binary = Binary::spawn(&with_secret);
    assert!(binary.wait_ready(), "serves");
    let (_, stdout, stderr) = binary.terminate();
    let logs = format!("{stdout}{stderr}");
    assert!(
        logs.lines()
            .any(|l| l.contains("WARN") && l.contains("JWT_ACCEPT_HS256 is on")),
        "{logs}"
    );
    // Off (the default): no such line.
    let off: Vec<(&str, &str)> = with_secret
        .iter()
        .copied()
        .filter(|(name, _)| *name != "JWT_ACCEPT_HS256")
        .collect();
    let mut binary = Binary::spawn(&off);
    assert!(binary.wait_ready(), "serves");
    let (_, stdout, stderr) = binary.terminate();
    assert!(!format!("{stdout}{stderr}").contains("JWT_ACCEPT_HS256"));
    // On without a secret: exit 2 naming the variable.
    let out = std::process::Command::new(BIN)
        .env_clear()
        .envs(base.iter().copied())
        .env("PORT", "0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with("auth-service: invalid JWT_ACCEPT_HS256: "),
        "{stderr}"
    );
}

async fn rotation_step_by_step_keeps_live_tokens_of_both_keys(backend: Backend) {
    let db = TestDb::new(backend).await;
    let clock = auth_service::clock::TestClock::new();
    let old = KeyFiles::new(AsymmetricAlgorithm::Es256);
    let next = KeyFiles::new(AsymmetricAlgorithm::Es256);
    let kids = |set: &Value| -> Vec<String> {
        let mut kids: Vec<String> = set["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect();
        kids.sort_unstable();
        kids
    };
    let mut both = vec![old.kid.clone(), next.kid.clone()];
    both.sort_unstable();

    // Step 0: the old key signs.
    let step0 = TestApp::spawn_on(db.clone(), clock.clone(), &signing_with(&old, "")).await;
    let (_, old_access, old_refresh) = step0.user_with_tokens("rotate@example.com").await;
    assert_eq!(header_of(&old_access)["kid"], json!(old.kid));
    assert_eq!(kids(&jwks(&step0).await.1), std::slice::from_ref(&old.kid));
    step0.stop().await;

    // Step 1: publish the next key; the old one still signs. Old tokens keep working.
    let step1 = TestApp::spawn_on(
        db.clone(),
        clock.clone(),
        &signing_with(&old, path_str(&next.public)),
    )
    .await;
    assert_eq!(kids(&jwks(&step1).await.1), both);
    assert_eq!(step1.verify(&old_access).await.status(), StatusCode::OK);
    let (step1_access, _) = step1.tokens("rotate@example.com").await;
    assert_eq!(header_of(&step1_access)["kid"], json!(old.kid));

    // Step 2: the next key signs; the old public key stays published. Tokens of both verify,
    // here and on a replica still at step 1 (it already publishes the next key).
    let step2 = TestApp::spawn_on(
        db.clone(),
        clock.clone(),
        &signing_with(&next, path_str(&old.public)),
    )
    .await;
    assert_eq!(kids(&jwks(&step2).await.1), both);
    let (new_access, new_refresh) = step2.tokens("rotate@example.com").await;
    assert_eq!(header_of(&new_access)["kid"], json!(next.kid));
    for app in [&step1, &step2] {
        for token in [&old_access, &step1_access, &new_access] {
            assert_eq!(app.verify(token).await.status(), StatusCode::OK);
        }
    }
    // An old refresh token renews into a token of the next key.
    let renewed = json_of(step2.refresh(&old_refresh).await).await;
    let renewed_access = renewed["access_token"].as_str().unwrap().to_owned();
    assert_eq!(header_of(&renewed_access)["kid"], json!(next.kid));
    assert_eq!(step1.verify(&renewed_access).await.status(), StatusCode::OK);
    step1.stop().await;
    step2.stop().await;

    // Step 3: the old key's last token has expired; it is withdrawn. Its tokens are refused,
    // the next key's keep working.
    let step3 = TestApp::spawn_on(db, clock, &signing_with(&next, "")).await;
    assert_eq!(kids(&jwks(&step3).await.1), std::slice::from_ref(&next.kid));
    for token in [&old_access, &step1_access] {
        let (status, body) = status_and_json(step3.verify(token).await).await;
        assert_invalid_token(status, &body);
    }
    for token in [&new_access, &renewed_access] {
        assert_eq!(step3.verify(token).await.status(), StatusCode::OK);
    }
    assert_eq!(step3.refresh(&new_refresh).await.status(), StatusCode::OK);
}

/// `GET /auth/revocations?QUERY` with the reader token.
pub async fn feed(app: &TestApp, query: &str) -> (StatusCode, Value) {
    let response = app
        .client
        .get(app.url(&format!("/auth/revocations?{query}")))
        .bearer_auth(FEED_TOKEN)
        .send()
        .await
        .unwrap();
    if response.status() == StatusCode::OK {
        assert_eq!(
            header(&response, "cache-control").as_deref(),
            Some("no-store")
        );
    }
    status_and_json(response).await
}

/// The feed's current cursor (a reset read).
async fn cursor_now(app: &TestApp) -> String {
    let (status, page) = feed(app, "").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["reset"], json!(true));
    page["cursor"].as_str().unwrap().to_owned()
}

fn sids(page: &Value) -> Vec<String> {
    page["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["sid"].as_str().unwrap().to_owned())
        .collect()
}

fn users(page: &Value) -> Vec<i64> {
    page["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["user_id"].as_i64().unwrap())
        .collect()
}

fn sid_of(token: &str) -> String {
    claims_of(token)["sid"].as_str().unwrap().to_owned()
}

/// Everything since `cursor`, following pages; returns the last page's cursor too.
async fn changes_since(app: &TestApp, cursor: &str) -> (Value, String) {
    let (status, page) = feed(app, &format!("since={cursor}")).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["reset"], json!(false), "{page}");
    let next = page["cursor"].as_str().unwrap().to_owned();
    (page, next)
}

async fn the_feed_lists_logout_reuse_logout_all_and_disable(backend: Backend) {
    // Arrange: HS256 (the feed does not depend on the algorithm), rotation on for reuse.
    let app = TestApp::spawn_with(
        backend,
        &[
            ("REVOCATION_FEED_TOKENS", FEED_TOKEN),
            ("REFRESH_TOKEN_ROTATION", "on"),
            ("REFRESH_REUSE_GRACE_SECONDS", "0"),
        ],
    )
    .await;
    let (_, bystander, _) = app.user_with_tokens("bystander@example.com").await;
    let mut cursor = cursor_now(&app).await;

    // A logout.
    let (_, logout_access, logout_refresh) = app.user_with_tokens("logout@example.com").await;
    assert_eq!(app.logout(&logout_refresh).await.status(), StatusCode::OK);
    let (page, next) = changes_since(&app, &cursor).await;
    assert_eq!(sids(&page), [sid_of(&logout_access)], "{page}");
    assert!(users(&page).is_empty(), "{page}");
    let exp = page["sessions"][0]["exp"].as_i64().unwrap();
    assert!(
        exp >= claims_of(&logout_access)["exp"].as_i64().unwrap(),
        "{page}"
    );
    cursor = next;

    // A reuse detection.
    let (_, reuse_access, first) = app.user_with_tokens("reuse@example.com").await;
    assert_eq!(app.refresh(&first).await.status(), StatusCode::OK);
    assert_eq!(app.refresh(&first).await.status(), StatusCode::UNAUTHORIZED);
    let (page, next) = changes_since(&app, &cursor).await;
    assert_eq!(sids(&page), [sid_of(&reuse_access)], "{page}");
    cursor = next;

    // A logout-all: the user's cut-off, and the sessions used in its second (both were: the
    // test clock stands still), whose tokens carry the cut-off second as `iat`.
    let (all_id, all_access, _) = app.user_with_tokens("all@example.com").await;
    let (second_access, _) = app.tokens("all@example.com").await;
    let response = app.logout_all(&all_access).await;
    assert_eq!(response.status(), StatusCode::OK);
    let (page, next) = changes_since(&app, &cursor).await;
    let mut ended = sids(&page);
    ended.sort_unstable();
    let mut expected = vec![sid_of(&all_access), sid_of(&second_access)];
    expected.sort_unstable();
    assert_eq!(ended, expected, "{page}");
    assert_eq!(users(&page), [all_id], "{page}");
    assert!(
        refuses(&page, &all_access) && refuses(&page, &second_access),
        "{page}"
    );
    cursor = next;

    // An admin disable, from the command line against the same database (on the real clock,
    // which may be a second past the test's: then the cut-off alone refuses the token).
    let (disabled_id, disabled_access, _) = app.user_with_tokens("disabled@example.com").await;
    let out = cli_async(&app.db, &["user", "disable", "disabled@example.com"], "").await;
    assert!(out.status.success(), "{out:?}");
    let (page, next) = changes_since(&app, &cursor).await;
    assert!(
        sids(&page)
            .iter()
            .all(|sid| *sid == sid_of(&disabled_access)),
        "{page}"
    );
    assert_eq!(users(&page), [disabled_id], "{page}");
    assert!(refuses(&page, &disabled_access), "{page}");

    // Nothing more since, and the bystander was never listed.
    let (page, _) = changes_since(&app, &next).await;
    assert!(sids(&page).is_empty() && users(&page).is_empty(), "{page}");
    let (_, all) = feed(&app, "").await;
    assert!(!refuses(&all, &bystander), "{all}");
    for token in [
        &logout_access,
        &reuse_access,
        &all_access,
        &second_access,
        &disabled_access,
    ] {
        assert!(refuses(&all, token), "every revocation in the reset: {all}");
    }
}

/// Whether a local verifier holding `page` refuses `token`: its session is listed, or its
/// user's cut-off is after its `iat`.
pub fn refuses(page: &Value, token: &str) -> bool {
    let claims = claims_of(token);
    let iat = claims["iat"].as_i64().unwrap();
    sids(page).contains(&sid_of(token))
        || page["users"].as_array().unwrap().iter().any(|user| {
            user["user_id"] == claims["user_id"] && user["not_before"].as_i64().unwrap() > iat
        })
}

async fn a_waiting_feed_reader_returns_within_a_second_of_a_change(backend: Backend) {
    // Arrange: a second replica makes the change, so the wake-up crosses processes.
    let app = TestApp::spawn_with(backend, &[("REVOCATION_FEED_TOKENS", FEED_TOKEN)]).await;
    let other = TestApp::spawn_on(
        app.db.clone(),
        app.clock.clone(),
        &[("REVOCATION_FEED_TOKENS", FEED_TOKEN)],
    )
    .await;
    let (_, access, refresh) = app.user_with_tokens("wait@example.com").await;
    let cursor = cursor_now(&app).await;
    // Nothing changes: the wait runs out with an empty page and the same cursor.
    let started = Instant::now();
    let (status, page) = feed(&app, &format!("since={cursor}&wait=1")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(900), "{page}");
    assert_eq!(
        page,
        json!({"cursor": cursor, "reset": false, "sessions": [], "users": []})
    );
    // Act: a reader waits; 300 ms later the other replica logs the session out.
    let waiting = tokio::spawn({
        let client = app.client.clone();
        let url = app.url(&format!("/auth/revocations?since={cursor}&wait=30"));
        async move {
            let response = client
                .get(url)
                .bearer_auth(FEED_TOKEN)
                .send()
                .await
                .unwrap();
            (Instant::now(), json_of(response).await)
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the reader waits for a change");
    assert_eq!(other.logout(&refresh).await.status(), StatusCode::OK);
    let logged_out = Instant::now();
    // Assert
    let (answered, page) = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the waiting reader is answered")
        .unwrap();
    assert!(
        answered.duration_since(logged_out) < PROPAGATION,
        "answered {:?} after the logout",
        answered.duration_since(logged_out)
    );
    assert_eq!(sids(&page), [sid_of(&access)], "{page}");
}

async fn an_expired_or_foreign_cursor_resets_to_the_whole_current_set(backend: Backend) {
    use auth_service::state::AppState;
    let overrides = [("REVOCATION_FEED_TOKENS", FEED_TOKEN)];
    let app = TestApp::spawn_with(backend, &overrides).await;
    // Arrange: a reader's cursor, then a logout it has not read...
    let stale = cursor_now(&app).await;
    let (_, gone_access, gone) = app.user_with_tokens("gone@example.com").await;
    app.logout(&gone).await;
    let (_, _, gone_too) = app.user_with_tokens("gone2@example.com").await;
    app.logout(&gone_too).await;
    // ...that events older than the access-token lifetime are purged past...
    app.clock.advance(chrono::Duration::minutes(20));
    let state = AppState::build(
        test_config(&app.db, &overrides),
        std::sync::Arc::new(app.clock.clone()),
    )
    .await
    .unwrap();
    let report = state.auth().purge().await.unwrap();
    assert_eq!(report.events, 1, "the newest event stays: {report:?}");
    // ...and a logout after that.
    let (_, live_access, live) = app.user_with_tokens("live@example.com").await;
    app.logout(&live).await;
    // Act + Assert: the stale cursor is a reset with the whole current set: the recent
    // logout, not the one whose tokens have expired.
    let (status, page) = feed(&app, &format!("since={stale}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["reset"], json!(true), "{page}");
    assert_eq!(sids(&page), [sid_of(&live_access)], "{page}");
    assert!(!sids(&page).contains(&sid_of(&gone_access)));
    let current = page["cursor"].as_str().unwrap().to_owned();
    // The cursor it gave continues normally.
    let (page, _) = changes_since(&app, &current).await;
    assert!(sids(&page).is_empty(), "{page}");
    // A cursor from the future (another deployment's, a restored database) resets too.
    let ahead = current.parse::<i64>().unwrap() + 1000;
    let (_, page) = feed(&app, &format!("since={ahead}")).await;
    assert_eq!(page["reset"], json!(true), "{page}");
    assert_eq!(sids(&page), [sid_of(&live_access)], "{page}");
}

async fn the_feed_needs_a_reader_token_and_is_absent_without_one(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        &[(
            "REVOCATION_FEED_TOKENS",
            "another-reader-token-xyz, feed-reader-token-0123456789",
        )],
    )
    .await;
    let url = app.url("/auth/revocations");
    // Missing, wrong, and a prefix of a right one: 401.
    let missing = app.client.get(&url).send().await.unwrap();
    let (status, body) = status_and_json(missing).await;
    assert_error(
        status,
        &body,
        StatusCode::UNAUTHORIZED,
        "Authorization header missing",
        "MISSING_TOKEN",
    );
    for wrong in [
        "feed-reader-token-012345678",
        "wrong-token-that-is-long-enough",
        FEED_TOKEN.to_uppercase().as_str(),
    ] {
        let response = app
            .client
            .get(&url)
            .bearer_auth(wrong)
            .send()
            .await
            .unwrap();
        let (status, body) = status_and_json(response).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{wrong}: {body}");
        assert_eq!(body["error_code"], json!("INVALID_TOKEN"), "{body}");
    }
    // A user's access token is not a reader token.
    let (_, access, _) = app.user_with_tokens("reader@example.com").await;
    let response = app
        .client
        .get(&url)
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    // Both configured tokens read.
    assert_eq!(feed(&app, "").await.0, StatusCode::OK);
    let response = app
        .client
        .get(&url)
        .bearer_auth("another-reader-token-xyz")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // Bad parameters: 422 naming the field.
    let cursor = "must be a cursor from a previous answer";
    let seconds = "must be a whole number of seconds, 0 to 60";
    for (query, field, message) in [
        ("since=abc", "since", cursor),
        ("since=-5", "since", cursor),
        ("wait=61", "wait", seconds),
        ("wait=-1", "wait", seconds),
        ("wait=soon&other=1", "wait", seconds),
    ] {
        let (status, body) = feed(&app, query).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}: {body}");
        assert_eq!(body["error_code"], json!("VALIDATION_ERROR"), "{body}");
        assert_eq!(
            body["errors"],
            json!([{"field": field, "message": message}]),
            "{query}: {body}"
        );
    }
    // Without REVOCATION_FEED_TOKENS the route does not exist.
    let off = TestApp::spawn_on(app.db.clone(), app.clock.clone(), &[]).await;
    let response = off
        .client
        .get(off.url("/auth/revocations"))
        .bearer_auth(FEED_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

/// Waits until `verifier` is ready (the first sync), at most 10 s.
pub async fn ready(verifier: &Verifier) {
    let started = Instant::now();
    while !verifier.is_ready() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "verifier never synced"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `verifier` until `token` is refused as invalid, within [`PROPAGATION`].
async fn verifier_refuses(verifier: &Verifier, token: &str) {
    let started = Instant::now();
    loop {
        match verifier.verify(token).await {
            Err(VerifyError::Invalid) => return,
            other => assert!(
                started.elapsed() < PROPAGATION,
                "still {other:?} after {:?}",
                started.elapsed()
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn the_verifier_crate_refuses_ended_sessions_within_a_second(backend: Backend) {
    // Arrange: an EdDSA service and a verifier following it.
    let key = KeyFiles::new(AsymmetricAlgorithm::EdDsa);
    let app = TestApp::spawn_with(backend, &signing_with(&key, "")).await;
    let (id, access, refresh) = app.user_with_tokens("local@example.com").await;
    let (all_id, all_access, _) = app.user_with_tokens("everywhere@example.com").await;
    let (_, disabled_access, _) = app.user_with_tokens("disabled@example.com").await;
    let (_, kept_access, _) = app.user_with_tokens("kept@example.com").await;
    let verifier = Verifier::start(VerifierConfig::new(app.url(""), FEED_TOKEN));
    ready(&verifier).await;
    assert_eq!(
        verifier.verify(&access).await,
        Ok(VerifiedUser {
            user_id: id,
            email: "local@example.com".into(),
            // Registered with EMAIL_VERIFICATION=optional (the default), not yet verified.
            email_verified: false,
            // A password sign-in.
            aal: auth_verifier::Aal::Aal1,
            amr: auth_verifier::AuthMethods::PASSWORD,
        })
    );
    assert_eq!(verifier.verify(&all_access).await.unwrap().user_id, all_id);
    assert!(verifier.verify(&disabled_access).await.is_ok());
    // A refresh token is not an access token, and a token from nowhere is refused.
    assert_eq!(verifier.verify(&refresh).await, Err(VerifyError::Invalid));
    assert_eq!(
        verifier.verify("not.a.jwt").await,
        Err(VerifyError::Invalid)
    );
    // Act + Assert: logout, logout-all, admin disable each refused within a second.
    assert_eq!(app.logout(&refresh).await.status(), StatusCode::OK);
    verifier_refuses(&verifier, &access).await;
    let response = app.logout_all(&all_access).await;
    assert_eq!(response.status(), StatusCode::OK);
    verifier_refuses(&verifier, &all_access).await;
    let out = cli_async(&app.db, &["user", "disable", "disabled@example.com"], "").await;
    assert!(out.status.success(), "{out:?}");
    verifier_refuses(&verifier, &disabled_access).await;
    // A login in the same second after logout-all verifies; the untouched user still does.
    let (fresh, _) = app.tokens("everywhere@example.com").await;
    assert!(verifier.verify(&fresh).await.is_ok());
    assert!(verifier.verify(&kept_access).await.is_ok());
}

/// `auth-service keys generate`: the private PEM is 0600 and never overwritten, the public
/// PEM sits next to it, and the printed `kid` is the one the JWKS publishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_generate_writes_a_private_pem_and_prints_its_kid() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    for alg in ["RS256", "ES256", "EdDSA"] {
        let out_path = dir.path().join(format!("{alg}.pem"));
        let run = || {
            std::process::Command::new(BIN)
                .env_clear()
                .args(["keys", "generate", "--alg", alg, "--out"])
                .arg(&out_path)
                .output()
                .unwrap()
        };
        // Act: no configuration at all is needed.
        let out = run();
        assert!(out.status.success(), "{alg}: {out:?}");
        let stdout = String::from_utf8(out.stdout).unwrap();
        let kid = stdout
            .lines()
            .find_map(|l| l.strip_prefix("kid: "))
            .unwrap_or_else(|| panic!("no kid line: {stdout}"))
            .to_owned();
        assert!(!stdout.contains("PRIVATE KEY"), "{stdout}");
        // Assert: modes, and the service publishes that kid.
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let public = dir.path().join(format!("{alg}.pub.pem"));
        assert_eq!(mode(&out_path), 0o600, "{alg}");
        assert_eq!(mode(&public), 0o644, "{alg}");
        let private = std::fs::read_to_string(&out_path).unwrap();
        assert!(private.starts_with("-----BEGIN PRIVATE KEY-----"), "{alg}");
        let db = TestDb::new(Backend::Sqlite).await;
        let path = out_path.to_str().unwrap().to_owned();
        let app = TestApp::spawn_on(
            db,
            auth_service::clock::TestClock::new(),
            &[
                ("JWT_ALGORITHM", alg),
                ("JWT_PRIVATE_KEY_FILE", &path),
                ("JWT_SECRET_KEY", ""),
            ],
        )
        .await;
        let (_, set) = jwks(&app).await;
        assert_eq!(set["keys"][0]["kid"], json!(kid), "{alg}");
        let (_, access, _) = app.user_with_tokens("keys@example.com").await;
        assert_eq!(header_of(&access)["kid"], json!(kid));
        app.stop().await;
        // A second run never overwrites the key.
        let again = run();
        assert!(!again.status.success(), "{alg}: overwrote");
        assert!(
            String::from_utf8_lossy(&again.stderr).contains("exists"),
            "{again:?}"
        );
        assert_eq!(std::fs::read_to_string(&out_path).unwrap(), private);
    }
    // A bad algorithm is a usage error naming it.
    let bad = std::process::Command::new(BIN)
        .env_clear()
        .args(["keys", "generate", "--alg", "HS256", "--out"])
        .arg(dir.path().join("x.pem"))
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    assert!(!dir.path().join("x.pem").exists());
}
