//! The attack suite: brute force, spraying, spoofed client IPs, rate limits and forged tokens.
//! Each door the hardening closed has a test that tries to open it.

use base64::Engine as _;
use futures::future::join_all;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{dual_backend, helpers::*};

const BAD: &str = "WrongPass123";

async fn login_from(
    app: &TestApp,
    forwarded_for: &str,
    email: &str,
    password: &str,
) -> reqwest::Response {
    app.client
        .post(app.url("/auth/login"))
        .header("x-forwarded-for", forwarded_for)
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap()
}

/// A cheap limited request (no bcrypt, no database), so a burst fits well inside one refill.
async fn logout_from(app: &TestApp, forwarded_for: &str) -> StatusCode {
    app.client
        .post(app.url("/auth/logout"))
        .header("x-forwarded-for", forwarded_for)
        .json(&json!({"refresh_token": "not-a-token"}))
        .send()
        .await
        .unwrap()
        .status()
}

fn b64(value: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
}

/// Signs arbitrary claims and header with the app's secret (a forger who knows the secret
/// would not need to forge; these test everything except the signature).
fn sign(header: Header, claims: &Value) -> String {
    jsonwebtoken::encode(
        &header,
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// Claims as the service would issue them, at the app clock's time `now`, in session `sid`.
fn claims_at(now: i64, user_id: i64, kind: &str, sid: &Value) -> Value {
    json!({
        "sub": user_id.to_string(), "user_id": user_id, "type": kind, "iat": now, "exp": now + 900,
        "jti": uuid::Uuid::new_v4().to_string(), "iss": "auth-service", "sid": sid,
    })
}

async fn assert_refused(app: &TestApp, token: &str, why: &str) {
    let response = app.verify(token).await;
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{why}: {body}");
    assert_eq!(
        body,
        json!({"detail": "Invalid or expired token", "error_code": "INVALID_TOKEN"}),
        "{why}"
    );
}

dual_backend!(
    the_rate_limit_refuses_a_burst_but_never_verify_or_health,
    a_spoofed_forwarded_for_from_an_untrusted_peer_changes_nothing,
    behind_a_trusted_proxy_each_forwarded_client_has_its_own_bucket,
    two_hundred_parallel_guesses_from_many_ips_test_at_most_five_passwords,
    password_spraying_from_one_ip_is_stopped_at_the_per_ip_limit,
    forged_and_malformed_tokens_are_all_401_never_5xx,
    forged_tokens_take_no_room_in_what_verify_remembers,
    hostile_bodies_get_contract_4xx_and_the_service_stays_healthy,
);

async fn the_rate_limit_refuses_a_burst_but_never_verify_or_health(backend: Backend) {
    // Arrange
    let app = TestApp::spawn_with(
        backend,
        &[("RATE_LIMIT_PER_SECOND", "1"), ("RATE_LIMIT_BURST", "3")],
    )
    .await;
    // Act
    let statuses: Vec<StatusCode> = join_all((0..3).map(|_| logout_from(&app, "1.2.3.4"))).await;
    let limited = app.register("rl@example.com", PASSWORD).await;
    // Assert
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    assert_eq!(header(&limited, "retry-after").as_deref(), Some("1"));
    assert_eq!(header(&limited, "x-ratelimit-limit").as_deref(), Some("3"));
    assert_eq!(
        header(&limited, "x-ratelimit-remaining").as_deref(),
        Some("0")
    );
    assert!(header(&limited, "x-ratelimit-reset").is_some());
    let (status, body) = status_and_json(limited).await;
    assert_error(
        status,
        &body,
        StatusCode::TOO_MANY_REQUESTS,
        "Too many requests",
        "RATE_LIMITED",
    );
    for _ in 0..20 {
        assert_eq!(app.verify("x").await.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(app.get("/health").await.status(), StatusCode::OK);
    }
    assert_eq!(app.get("/metrics").await.status(), StatusCode::OK);
    assert_eq!(app.get("/openapi.json").await.status(), StatusCode::OK);
}

async fn a_spoofed_forwarded_for_from_an_untrusted_peer_changes_nothing(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        &[("RATE_LIMIT_PER_SECOND", "1"), ("RATE_LIMIT_BURST", "2")],
    )
    .await;
    for i in 0..2 {
        assert_eq!(
            logout_from(&app, &format!("203.0.113.{i}")).await,
            StatusCode::OK
        );
    }
    let response = login_from(&app, "198.51.100.7", "spoof@example.com", BAD).await;
    assert_eq!(
        response.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "the peer (127.0.0.1) is the key"
    );
}

async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_bucket(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        &[
            ("RATE_LIMIT_PER_SECOND", "1"),
            ("RATE_LIMIT_BURST", "2"),
            ("TRUSTED_PROXIES", "127.0.0.1, 10.0.0.0/8"),
        ],
    )
    .await;
    // The right-most entry that is not a trusted proxy is the client: 10.1.2.3 is our
    // (trusted) internal hop, the spoofed left-most entry is ignored.
    for spoof in ["1.1.1.1", "2.2.2.2"] {
        assert_eq!(
            logout_from(&app, &format!("{spoof}, 203.0.113.5, 10.1.2.3")).await,
            StatusCode::OK
        );
    }
    let response = login_from(&app, "9.9.9.9, 203.0.113.5", "p@example.com", BAD).await;
    assert_eq!(
        response.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "same client, same bucket"
    );
    let response = login_from(&app, "203.0.113.6", "p@example.com", BAD).await;
    assert_eq!(
        response.status(),
        StatusCode::UNAUTHORIZED,
        "another client, another bucket"
    );
}

async fn two_hundred_parallel_guesses_from_many_ips_test_at_most_five_passwords(backend: Backend) {
    // Arrange: a trusted proxy forwarding for 20 different clients.
    let app = TestApp::spawn_with(backend, &[("TRUSTED_PROXIES", "127.0.0.1")]).await;
    app.register("victim@example.com", PASSWORD).await;
    // Act
    let responses = join_all((0..200).map(|i| {
        let ip = format!("198.51.100.{}", i % 20);
        let app = &app;
        async move {
            login_from(app, &ip, "victim@example.com", BAD)
                .await
                .status()
        }
    }))
    .await;
    // Assert
    let unauthorized = responses
        .iter()
        .filter(|s| **s == StatusCode::UNAUTHORIZED)
        .count();
    let refused = responses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!((unauthorized, refused), (5, 195));
}

async fn password_spraying_from_one_ip_is_stopped_at_the_per_ip_limit(backend: Backend) {
    // Arrange: 100 accounts, one attacker IP behind a trusted proxy, a limit of 50.
    let app = TestApp::spawn_with(
        backend,
        &[
            ("TRUSTED_PROXIES", "127.0.0.1"),
            ("LOGIN_MAX_FAILURES_PER_IP", "50"),
        ],
    )
    .await;
    for i in 0..100 {
        app.store
            .insert_user(
                &format!("u{i}@example.com"),
                "$2b$04$notarealhashnotarealhashnotarealhashnotarealhashnotar",
                chrono::Utc::now(),
            )
            .await
            .unwrap();
    }
    app.register("real@example.com", PASSWORD).await;
    // Act: one guess per account.
    let mut statuses = Vec::new();
    for i in 0..100 {
        statuses.push(
            login_from(
                &app,
                "203.0.113.66",
                &format!("u{i}@example.com"),
                "Summer2024!",
            )
            .await
            .status(),
        );
    }
    // Assert
    assert!(
        statuses[..50]
            .iter()
            .all(|s| *s == StatusCode::UNAUTHORIZED),
        "{statuses:?}"
    );
    assert!(
        statuses[50..]
            .iter()
            .all(|s| *s == StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    let blocked = login_from(&app, "203.0.113.66", "real@example.com", PASSWORD).await;
    assert!(header(&blocked, "retry-after").is_some());
    let (status, body) = status_and_json(blocked).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        body["error_code"], "IP_TEMPORARILY_BLOCKED",
        "not the account lockout"
    );
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .starts_with("Too many failed logins from this address. Try again after "),
        "{body}"
    );
    let other = login_from(&app, "203.0.113.67", "real@example.com", PASSWORD).await;
    assert_eq!(
        other.status(),
        StatusCode::OK,
        "other clients are not affected"
    );
    // The block ends with the lockout.
    app.clock
        .advance(chrono::Duration::minutes(15) + chrono::Duration::seconds(1));
    assert_eq!(
        login_from(&app, "203.0.113.66", "real@example.com", PASSWORD)
            .await
            .status(),
        StatusCode::OK
    );
}

/// `verify_cache_entries` by cache, from `/metrics`.
async fn cache_entries(app: &TestApp) -> [f64; 3] {
    let text = app.get("/metrics").await.text().await.unwrap();
    ["tokens", "users", "sessions"].map(|cache| {
        let series = format!("verify_cache_entries{{cache=\"{cache}\"}}");
        crate::api_health::metric_value(&text, &series).unwrap_or_else(|| panic!("{series}"))
    })
}

async fn forged_tokens_take_no_room_in_what_verify_remembers(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (id, access, _) = app.user_with_tokens("roomy@example.com").await;
    assert_eq!(app.verify(&access).await.status(), StatusCode::OK);
    assert_eq!(cache_entries(&app).await, [1.0, 1.0, 1.0]);
    let now = {
        use auth_service::clock::Clock as _;
        app.clock.now().timestamp()
    };
    // Act: 300 tokens no one may use, in thirds: a bad signature; correctly signed (as only a
    // holder of the key could) for an unknown session of a real user, or of an unknown user;
    // expired.
    for i in 0..300_i64 {
        let unknown = json!(uuid::Uuid::new_v4().to_string());
        let token = match i % 3 {
            0 => {
                let t = sign(Header::default(), &claims_at(now, id, "access", &unknown));
                format!("{}AAAA", &t[..t.len() - 4])
            }
            1 => sign(
                Header::default(),
                &claims_at(
                    now,
                    if i % 2 == 0 { id } else { id + 1000 + i },
                    "access",
                    &unknown,
                ),
            ),
            _ => {
                let mut expired = claims_at(now - 3600, id, "access", &claims_of(&access)["sid"]);
                expired["exp"] = json!(now - 60);
                sign(Header::default(), &expired)
            }
        };
        assert_refused(&app, &token, "forged").await;
    }
    // Assert: nothing more is remembered, and the real token still answers from memory.
    assert_eq!(cache_entries(&app).await, [1.0, 1.0, 1.0]);
    assert_eq!(app.verify(&access).await.status(), StatusCode::OK);
}

async fn forged_and_malformed_tokens_are_all_401_never_5xx(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (id, access, refresh) = app.user_with_tokens("forge@example.com").await;
    let parts: Vec<&str> = access.split('.').collect();
    let now = {
        use auth_service::clock::Clock as _;
        app.clock.now().timestamp()
    };
    let sid = claims_of(&access)["sid"].clone();
    let claims = |user_id: i64, kind: &str| claims_at(now, user_id, kind, &sid);
    let mut cases: Vec<(String, &str)> = Vec::new();
    for alg in ["none", "None", "NONE", "HS512", "RS256", "ES256"] {
        let header = b64(&json!({"alg": alg, "typ": "JWT"}));
        cases.push((format!("{header}.{}.", parts[1]), "alg"));
        cases.push((
            format!("{header}.{}.{}", parts[1], parts[2]),
            "alg with the HS256 signature",
        ));
    }
    cases.push((
        sign(Header::new(Algorithm::HS512), &claims(id, "access")),
        "HS512 signed with the secret",
    ));
    let wrong_secret = jsonwebtoken::encode(
        &Header::default(),
        &claims(id, "access"),
        &EncodingKey::from_secret(b"another-secret-another-secret-00").unwrap(),
    )
    .unwrap();
    cases.push((wrong_secret, "wrong secret"));
    let mut edited = claims(id + 1, "access");
    edited["sub"] = json!((id + 1).to_string());
    cases.push((
        format!("{}.{}.{}", parts[0], b64(&edited), parts[2]),
        "payload edited, signature kept",
    ));
    cases.push((format!("{}.{}", parts[0], parts[1]), "truncated"));
    cases.push((format!("{access}.{}", parts[2]), "extra segment"));
    let mut expired = claims(id, "access");
    expired["exp"] = json!(now - 31);
    expired["iat"] = json!(now - 1000);
    cases.push((
        sign(Header::default(), &expired),
        "expired beyond the leeway",
    ));
    let mut future = claims(id, "access");
    future["nbf"] = json!(now + 300);
    cases.push((sign(Header::default(), &future), "nbf in the future"));
    let mut future_iat = claims(id, "access");
    future_iat["iat"] = json!(now + 300);
    cases.push((sign(Header::default(), &future_iat), "iat in the future"));
    for missing in ["exp", "iat", "jti", "sub", "type", "user_id"] {
        let mut c = claims(id, "access");
        c.as_object_mut().unwrap().remove(missing);
        cases.push((sign(Header::default(), &c), "a required claim is missing"));
    }
    let mut wrong_iss = claims(id, "access");
    wrong_iss["iss"] = json!("evil");
    cases.push((sign(Header::default(), &wrong_iss), "wrong iss"));
    cases.push((
        sign(Header::default(), &claims(id, "refresh")),
        "refresh type as access",
    ));
    cases.push((refresh.clone(), "a real refresh token"));
    cases.push((
        sign(Header::default(), &claims(id + 1000, "access")),
        "a user that does not exist",
    ));
    let kid = Header {
        kid: Some("../../../../etc/passwd".to_owned()),
        ..Header::default()
    };
    cases.push((sign(kid, &claims(id, "access")), "kid path injection"));
    let crit = Header {
        crit: Some(vec!["exp".to_owned()]),
        ..Header::default()
    };
    cases.push((sign(crit, &claims(id, "access")), "crit header"));
    let no_typ = Header {
        typ: None,
        ..Header::default()
    };
    cases.push((sign(no_typ, &claims(id, "access")), "no typ"));
    let mut no_sid = claims(id, "access");
    no_sid.as_object_mut().unwrap().remove("sid");
    cases.push((sign(Header::default(), &no_sid), "no session"));
    let unknown_sid = claims_at(now, id, "access", &json!(uuid::Uuid::new_v4().to_string()));
    cases.push((
        sign(Header::default(), &unknown_sid),
        "a session that never existed",
    ));
    cases.push(("a".repeat(8 * 1024 + 1), "oversize"));
    cases.push((
        format!("{access}{}", "A".repeat(9000)),
        "oversize with a valid prefix",
    ));
    for (token, why) in &cases {
        assert_refused(&app, token, why).await;
    }
    // The genuine token still works, and refresh refuses an access token.
    assert_eq!(app.verify(&access).await.status(), StatusCode::OK);
    assert_eq!(
        app.refresh(&access).await.status(),
        StatusCode::UNAUTHORIZED
    );
    // A deleted user's token.
    let deleted = sign(Header::default(), &claims(id, "access"));
    assert_eq!(app.verify(&deleted).await.status(), StatusCode::OK);
    assert!(app.store.delete_user(id, chrono::Utc::now()).await.unwrap());
    // Deleted behind the app's back (another process): refused within a second.
    verify_becomes(&app, &deleted, StatusCode::UNAUTHORIZED).await;
    assert_refused(&app, &deleted, "deleted user").await;
}

async fn hostile_bodies_get_contract_4xx_and_the_service_stays_healthy(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let bodies: Vec<Vec<u8>> = vec![
        br#"{"email":"a\u0000b@example.com","password":"SecurePass123"}"#.to_vec(),
        br#"{"email":"x@example.com","password":"Secure\u0000Pass123"}"#.to_vec(),
        br#"{"email":"' OR 1=1; --","password":"' OR '1'='1"}"#.to_vec(),
        br#"{"email":12345,"password":67890}"#.to_vec(),
        br#"{"email":null,"password":null}"#.to_vec(),
        br#"{"email":{"$gt":""},"password":{"$gt":""}}"#.to_vec(),
        b"{\"email\":\"\xc3\x28@example.com\",\"password\":\"SecurePass123\"}".to_vec(),
        br#"{"refresh_token": ["a"]}"#.to_vec(),
        b"\x00\x01\x02".to_vec(),
    ];
    for path in [
        "/auth/register",
        "/auth/login",
        "/auth/refresh",
        "/auth/logout",
    ] {
        for body in &bodies {
            let response = app
                .client
                .post(app.url(path))
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .unwrap();
            let status = response.status();
            let json: Value = response.json().await.unwrap();
            assert!(
                status.is_client_error()
                    || status == StatusCode::CREATED
                    || status == StatusCode::OK,
                "{path} {:?}: {status} {json}",
                String::from_utf8_lossy(body)
            );
            if status.is_client_error() {
                assert!(
                    json["detail"].is_string() && json["error_code"].is_string(),
                    "{json}"
                );
            }
        }
    }
    assert_eq!(app.get("/health").await.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trickling_its_headers_is_disconnected() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    // Arrange
    let app = TestApp::spawn_with(Backend::Sqlite, &[("HEADER_READ_TIMEOUT_SECONDS", "1")]).await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // Act: a request head that never ends (slowloris).
    stream
        .write_all(b"GET /health HTTP/1.1\r\nhost: x\r\nx-a: 1\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let read =
        tokio::time::timeout(std::time::Duration::from_secs(30), stream.read(&mut buf)).await;
    // Assert: the server closed the connection (EOF or reset) long before our 30 s bound.
    match read.expect("the server must not wait forever") {
        Ok(n) => assert!(
            n == 0 || buf.starts_with(b"HTTP/1.1 408"),
            "{:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(err) => assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset),
    }
    assert_eq!(app.get("/health").await.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_cap_a_new_connection_takes_a_silent_ones_slot_or_is_closed_never_waits() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    // Arrange: a cap of 2, both taken by connections that sent nothing.
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        &[
            ("MAX_CONNECTIONS", "2"),
            ("HEADER_READ_TIMEOUT_SECONDS", "60"),
        ],
    )
    .await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let mut first = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut second = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // Act + Assert: a new client is served at once, in the slot of a silent one.
    let served = tokio::time::timeout(
        std::time::Duration::from_secs(1),
        client.get(app.url("/health/live")).send(),
    )
    .await
    .expect("served at once, not after a wait")
    .unwrap();
    assert_eq!(served.status(), StatusCode::OK);
    let mut buffer = [0u8; 16];
    let closed =
        |read: Result<Result<usize, std::io::Error>, _>| matches!(read, Ok(Ok(0) | Err(_)));
    let wait = std::time::Duration::from_millis(300);
    let first_closed = closed(tokio::time::timeout(wait, first.read(&mut buffer)).await);
    let second_closed = closed(tokio::time::timeout(wait, second.read(&mut buffer)).await);
    assert!(
        first_closed || second_closed,
        "a silent connection gave its slot"
    );
    // With every slot busy (a request in flight, its body awaited), a new connection is
    // closed at once: nothing is shed under a request, and the loop does not wait.
    let mut busy = Vec::new();
    for _ in 0..2 {
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        stream
            .write_all(b"POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
            .await
            .unwrap();
        busy.push(stream);
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let mut refused = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let _ = refused
        .write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    assert!(
        closed(
            tokio::time::timeout(std::time::Duration::from_secs(1), refused.read(&mut buffer))
                .await
        ),
        "closed at accept"
    );
    for stream in &mut busy {
        assert!(
            !closed(tokio::time::timeout(wait, stream.read(&mut buffer)).await),
            "a busy connection is never shed"
        );
    }
}
