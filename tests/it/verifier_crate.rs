//! The `auth-verifier` crate's failure modes against a stand-in auth-service whose keys and
//! feed the test controls, and the `orders_service` example next to the real binary.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use auth_service::keys::{self, AsymmetricAlgorithm};
use auth_verifier::{Verifier, VerifierConfig, VerifyError};
use axum::{
    Json, Router,
    extract::{Query, State},
    http::StatusCode,
    routing::get,
};
use serde_json::{Value, json};

use crate::{
    helpers::*,
    local_verification::{FEED_TOKEN, KeyFiles, ready},
};

/// What the stand-in serves; the test changes it as it goes.
#[derive(Default)]
struct Fake {
    jwks: Mutex<Vec<Value>>,
    jwks_fetches: AtomicUsize,
    feed_down: AtomicBool,
    revoked_sessions: Mutex<Vec<Value>>,
}

#[derive(serde::Deserialize)]
struct FeedQuery {
    since: Option<String>,
    wait: Option<u64>,
}

async fn fake_jwks(State(fake): State<Arc<Fake>>) -> Json<Value> {
    fake.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    Json(json!({"keys": *fake.jwks.lock().unwrap()}))
}

async fn fake_feed(
    State(fake): State<Arc<Fake>>,
    Query(query): Query<FeedQuery>,
) -> Result<Json<Value>, StatusCode> {
    if fake.feed_down.load(Ordering::SeqCst) {
        return Err(StatusCode::SERVICE_UNAVAILABLE);
    }
    if query.since.is_some() {
        // A long-poll that nothing wakes: answer after at most half a second.
        let wait = Duration::from_secs(query.wait.unwrap_or(0)).min(Duration::from_millis(500));
        tokio::time::sleep(wait).await;
    }
    if fake.feed_down.load(Ordering::SeqCst) {
        return Err(StatusCode::SERVICE_UNAVAILABLE);
    }
    Ok(Json(json!({
        "cursor": "1",
        "reset": query.since.is_none(),
        "sessions": *fake.revoked_sessions.lock().unwrap(),
        "users": [],
    })))
}

/// The stand-in on a fresh port: its base URL and its state.
async fn stand_in() -> (String, Arc<Fake>) {
    let fake = Arc::new(Fake::default());
    let app = Router::new()
        .route("/.well-known/jwks.json", get(fake_jwks))
        .route("/auth/revocations", get(fake_feed))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, fake)
}

fn jwk_of(key: &KeyFiles) -> Value {
    serde_json::to_value(keys::load_public(&key.public).unwrap().jwk).unwrap()
}

/// An access token as auth-service issues it, signed by `key`.
fn access_token(key: &KeyFiles, sid: uuid::Uuid) -> String {
    let now = chrono::Utc::now().timestamp();
    key.sign(
        &key.header(),
        &json!({
            "sub": "7", "user_id": 7, "type": "access", "iat": now, "exp": now + 900,
            "jti": uuid::Uuid::new_v4(), "sid": sid, "email": "seven@example.com",
            "iss": "auth-service",
        }),
    )
}

fn config(base: &str) -> VerifierConfig {
    let mut config = VerifierConfig::new(base, FEED_TOKEN);
    config.feed_grace = Duration::from_secs(2);
    config.jwks_refetch_every = Duration::from_secs(1);
    config
}

/// A stand-in publishing one ES256 key and a verifier that has synced with it: the stand-in's
/// base URL and state, the key, and the verifier.
async fn synced_with_one_key() -> (String, Arc<Fake>, KeyFiles, Verifier) {
    let (base, fake) = stand_in().await;
    let key = KeyFiles::new(AsymmetricAlgorithm::Es256);
    fake.jwks.lock().unwrap().push(jwk_of(&key));
    let verifier = Verifier::start(config(&base));
    ready(&verifier).await;
    (base, fake, key, verifier)
}

/// Polls until `verify(token)` gives `expected`, failing after `within`.
async fn verify_becomes_within(
    verifier: &Verifier,
    token: &str,
    expected: Result<(), VerifyError>,
    within: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        let got = verifier.verify(token).await.map(|_| ());
        if got == expected {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "still {got:?}, not {expected:?}, after {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_until_the_first_sync_then_the_grace_then_unavailable_again() {
    // Arrange: keys are served, the feed is down from the start.
    let (base, fake) = stand_in().await;
    let key = KeyFiles::new(AsymmetricAlgorithm::Es256);
    fake.jwks.lock().unwrap().push(jwk_of(&key));
    fake.feed_down.store(true, Ordering::SeqCst);
    let token = access_token(&key, uuid::Uuid::new_v4());
    let verifier = Verifier::start(config(&base));
    // Assert: never a silent accept before the first feed page, also once it has the keys.
    poll_until(
        "the keys to be fetched",
        Duration::from_secs(10),
        || async { fake.jwks_fetches.load(Ordering::SeqCst) > 0 },
    )
    .await;
    assert_eq!(verifier.verify(&token).await, Err(VerifyError::Unavailable));
    assert!(!verifier.is_ready());
    // The feed comes up: the token verifies.
    fake.feed_down.store(false, Ordering::SeqCst);
    verify_becomes_within(&verifier, &token, Ok(()), Duration::from_secs(3)).await;
    // The feed is lost: tokens keep verifying for the grace, then 503, not 200 forever.
    fake.feed_down.store(true, Ordering::SeqCst);
    let lost = Instant::now();
    assert_eq!(verifier.verify(&token).await.map(|_| ()), Ok(()));
    verify_becomes_within(
        &verifier,
        &token,
        Err(VerifyError::Unavailable),
        Duration::from_secs(4),
    )
    .await;
    assert!(
        lost.elapsed() >= Duration::from_millis(1000),
        "the grace was honoured: {:?}",
        lost.elapsed()
    );
    // It recovers by itself when the feed is back.
    fake.feed_down.store(false, Ordering::SeqCst);
    verify_becomes_within(&verifier, &token, Ok(()), Duration::from_secs(3)).await;
    // A revoked session the feed lists is refused.
    let sid = uuid::Uuid::new_v4();
    let revoked = access_token(&key, sid);
    assert!(verifier.verify(&revoked).await.is_ok());
    fake.revoked_sessions
        .lock()
        .unwrap()
        .push(json!({"sid": sid, "exp": chrono::Utc::now().timestamp() + 900}));
    verify_becomes_within(
        &verifier,
        &revoked,
        Err(VerifyError::Invalid),
        Duration::from_secs(3),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_unreachable_at_start_means_unavailable() {
    // Arrange: a stand-in that publishes no key at all.
    let (base, fake) = stand_in().await;
    let key = KeyFiles::new(AsymmetricAlgorithm::Es256);
    let token = access_token(&key, uuid::Uuid::new_v4());
    let verifier = Verifier::start(config(&base));
    poll_until(
        "the keys to be asked for",
        Duration::from_secs(10),
        || async { fake.jwks_fetches.load(Ordering::SeqCst) > 0 },
    )
    .await;
    assert_eq!(verifier.verify(&token).await, Err(VerifyError::Unavailable));
    // The key appears: verified once the loop fetches it.
    fake.jwks.lock().unwrap().push(jwk_of(&key));
    verify_becomes_within(&verifier, &token, Ok(()), Duration::from_secs(5)).await;
    // And nothing answers at all (auth-service not started): 503.
    let nowhere = Verifier::start(config(&format!("http://127.0.0.1:{}", free_port())));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(nowhere.verify(&token).await, Err(VerifyError::Unavailable));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kids_refetch_the_keys_at_most_once_per_interval() {
    // Arrange: a synced verifier.
    let (base, fake, key, verifier) = synced_with_one_key().await;
    assert!(
        verifier
            .verify(&access_token(&key, uuid::Uuid::new_v4()))
            .await
            .is_ok()
    );
    // Wait out the refetch interval from the start-up fetch.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = fake.jwks_fetches.load(Ordering::SeqCst);
    // Act: a flood of tokens under a kid nobody publishes.
    let stranger = KeyFiles::new(AsymmetricAlgorithm::Es256);
    let forged = access_token(&stranger, uuid::Uuid::new_v4());
    for _ in 0..50 {
        assert_eq!(verifier.verify(&forged).await, Err(VerifyError::Invalid));
    }
    // Assert: one refetch for the whole flood.
    assert_eq!(fake.jwks_fetches.load(Ordering::SeqCst) - before, 1);
    // A key published after that (the next key of a rotation) is found by the next refetch.
    let next = KeyFiles::new(AsymmetricAlgorithm::EdDsa);
    fake.jwks.lock().unwrap().push(jwk_of(&next));
    let rotated = access_token(&next, uuid::Uuid::new_v4());
    verify_becomes_within(&verifier, &rotated, Ok(()), Duration::from_secs(3)).await;
    // Forged headers fail here as they do at /auth/verify.
    let mut with_jku = key.header();
    with_jku.jku = Some(format!("{base}/.well-known/jwks.json"));
    let claims = crate::helpers::claims_of(&rotated);
    assert_eq!(
        verifier.verify(&key.sign(&with_jku, &claims)).await,
        Err(VerifyError::Invalid)
    );
    let mut swapped = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    swapped.kid = Some(key.kid.clone());
    let hmac = jsonwebtoken::encode(
        &swapped,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(key.public_pem.as_bytes()).unwrap(),
    )
    .unwrap();
    assert_eq!(verifier.verify(&hmac).await, Err(VerifyError::Invalid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawn_keys_remembered_tokens_stop_verifying() {
    // Arrange: a token of key A that verified (and so is remembered).
    let (_, fake, old, verifier) = synced_with_one_key().await;
    let token = access_token(&old, uuid::Uuid::new_v4());
    assert!(verifier.verify(&token).await.is_ok());
    assert!(verifier.verify(&token).await.is_ok());
    // Act: A is withdrawn and B published; a token of B makes the verifier refetch.
    let next = KeyFiles::new(AsymmetricAlgorithm::Es256);
    *fake.jwks.lock().unwrap() = vec![jwk_of(&next)];
    let rotated = access_token(&next, uuid::Uuid::new_v4());
    verify_becomes_within(&verifier, &rotated, Ok(()), Duration::from_secs(3)).await;
    // Assert: A's token no longer verifies, remembered or not.
    assert_eq!(verifier.verify(&token).await, Err(VerifyError::Invalid));
}

/// The example's binary, built by `cargo test` next to the test binary.
fn example_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let debug = exe.parent().unwrap().parent().unwrap();
    let path = debug.join("examples").join("orders_service");
    assert!(
        path.exists(),
        "{} is missing: `cargo test` builds examples",
        path.display()
    );
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_service_refuses_a_logged_out_token_within_a_second() {
    // Arrange: the real auth-service (ES256, SQLite, a feed token) and the example beside it.
    let key = KeyFiles::new(AsymmetricAlgorithm::Es256);
    let mut auth = Binary::spawn(&[
        ("JWT_ALGORITHM", "ES256"),
        ("JWT_PRIVATE_KEY_FILE", key.private.to_str().unwrap()),
        ("REVOCATION_FEED_TOKENS", FEED_TOKEN),
        ("BCRYPT_ROUNDS", "4"),
        ("DATABASE_URL", "sqlite://./auth.db"),
    ]);
    assert!(
        tokio::task::block_in_place(|| auth.wait_ready()),
        "auth-service did not start"
    );
    let port = free_port();
    let mut example = std::process::Command::new(example_binary())
        .env_clear()
        .env("AUTH_URL", auth.url(""))
        .env("REVOCATION_FEED_TOKEN", FEED_TOKEN)
        .env("PORT", port.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let orders = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let client = reqwest::Client::new();
    let started = Instant::now();
    loop {
        let ready = client.get(orders("/health/ready")).send().await;
        if ready.is_ok_and(|r| r.status() == StatusCode::OK) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "example never ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Act: register, log in, call the example.
    let register = client
        .post(auth.url("/auth/register"))
        .json(&json!({"email": "shopper@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(register.status(), StatusCode::CREATED);
    let user_id = json_of(register).await["user_id"].as_i64().unwrap();
    let login = client
        .post(auth.url("/auth/login"))
        .json(&json!({"email": "shopper@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    let tokens = json_of(login).await;
    let access = tokens["access_token"].as_str().unwrap();
    let refresh = tokens["refresh_token"].as_str().unwrap();
    let call = || client.get(orders("/orders")).bearer_auth(access).send();
    let (status, body) = status_and_json(call().await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"user_id": user_id, "email": "shopper@example.com", "email_verified": false, "aal": "aal1", "amr": ["pwd"]})
    );
    // Without a token, the example answers as auth-service would.
    let (status, body) = status_and_json(client.get(orders("/orders")).send().await.unwrap()).await;
    assert_error(
        status,
        &body,
        StatusCode::UNAUTHORIZED,
        "Authorization header missing",
        "MISSING_TOKEN",
    );
    // Logout: the example refuses the token within a second.
    let logout = client
        .post(auth.url("/auth/logout"))
        .json(&json!({"refresh_token": refresh}))
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), StatusCode::OK);
    let logged_out = Instant::now();
    loop {
        let (status, body) = status_and_json(call().await.unwrap()).await;
        if status == StatusCode::UNAUTHORIZED {
            assert_eq!(body["error_code"], json!("INVALID_TOKEN"), "{body}");
            break;
        }
        assert!(
            logged_out.elapsed() < PROPAGATION,
            "the example still answers {status} {:?} after logout",
            logged_out.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = example.kill();
    let _ = example.wait();
    let (code, _, stderr) = auth.terminate();
    assert_eq!(code, Some(0), "{stderr}");
}
