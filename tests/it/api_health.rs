//! `/`, the probes, docs, OpenAPI, metrics, JWKS and the cross-cutting headers.

use reqwest::StatusCode;
use serde_json::json;

use crate::{dual_backend, helpers::*};

dual_backend!(
    root_describes_the_service,
    health_ready_and_live_report_ok,
    docs_and_openapi_are_served_from_the_binary,
    jwks_is_empty_for_hs256,
    metrics_count_requests_by_route_template,
    auth_counters_count_exactly_what_happened,
    request_ids_are_echoed_or_generated_and_nosniff_is_sent,
    cors_allows_the_configured_origins_only,
);

async fn root_describes_the_service(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (status, body) = status_and_json(app.get("/").await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"service": "auth-service", "version": env!("CARGO_PKG_VERSION"), "status": "running", "docs": "/docs"})
    );
}

async fn health_ready_and_live_report_ok(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (status, body) = status_and_json(app.get("/health").await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["database"], "connected");
    let ts = body["timestamp"].as_str().unwrap();
    assert!(
        ts.ends_with('Z') && chrono::DateTime::parse_from_rfc3339(ts).is_ok(),
        "{ts}"
    );
    assert_eq!(body.as_object().unwrap().len(), 3);
    let (status, body) = status_and_json(app.get("/health/ready").await).await;
    assert_eq!((status, &body["status"]), (StatusCode::OK, &json!("ready")));
    let (status, body) = status_and_json(app.get("/health/live").await).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "alive"})));
}

async fn docs_and_openapi_are_served_from_the_binary(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    // `/docs` itself answers 200 (the original's docs script does not follow redirects), and
    // the page's relative assets resolve under /docs/.
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for path in ["/docs", "/docs/"] {
        let page = no_redirects.get(app.url(path)).send().await.unwrap();
        assert_eq!(page.status(), StatusCode::OK, "{path}");
        assert!(
            header(&page, "content-type")
                .unwrap()
                .starts_with("text/html")
        );
        let csp = header(&page, "content-security-policy").unwrap();
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(directive), "{csp}");
        }
        let html = page.text().await.unwrap();
        assert!(html.contains(r#"<base href="/docs/">"#), "{html}");
        assert!(html.contains("swagger-ui-bundle.js"), "{html}");
    }
    for asset in [
        "/docs/swagger-ui-bundle.js",
        "/docs/swagger-ui.css",
        "/docs/swagger-initializer.js",
    ] {
        let response = no_redirects.get(app.url(asset)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{asset}");
        if asset.ends_with("initializer.js") {
            assert!(response.text().await.unwrap().contains("/openapi.json"));
        }
    }
    let (status, body) = status_and_json(app.get("/docs/nope.js").await).await;
    assert_error(
        status,
        &body,
        StatusCode::NOT_FOUND,
        "Not Found",
        "NOT_FOUND",
    );
    let (status, doc) = status_and_json(app.get("/openapi.json").await).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    for path in [
        "/",
        "/health",
        "/health/ready",
        "/health/live",
        "/metrics",
        "/.well-known/jwks.json",
        "/auth/register",
        "/auth/login",
        "/auth/refresh",
        "/auth/logout",
        "/auth/logout-all",
        "/auth/verify",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} documented");
    }
    assert!(doc["components"]["schemas"].get("ErrorBody").is_some());
    // The revocation feed is off at the defaults: neither served nor listed in /docs.
    assert!(doc["paths"].get("/auth/revocations").is_none(), "feed off");
    let feed = TestApp::spawn_on(
        app.db.clone(),
        app.clock.clone(),
        &[("REVOCATION_FEED_TOKENS", "a-feed-token-of-enough-length")],
    )
    .await;
    let (_, doc) = status_and_json(feed.get("/openapi.json").await).await;
    assert!(doc["paths"].get("/auth/revocations").is_some(), "feed on");
}

async fn jwks_is_empty_for_hs256(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (status, body) = status_and_json(app.get("/.well-known/jwks.json").await).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"keys": []})));
}

async fn metrics_count_requests_by_route_template(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.login("nobody@example.com", PASSWORD).await;
    let response = app.get("/metrics").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        header(&response, "content-type")
            .unwrap()
            .starts_with("text/plain")
    );
    let text = response.text().await.unwrap();
    assert!(
        text.contains(r#"http_requests_total{method="POST",route="/auth/login",status="401"}"#),
        "{text}"
    );
    assert!(
        text.contains("http_request_duration_seconds_bucket"),
        "{text}"
    );
    assert!(!text.contains("nobody@example.com"));
    for gauge in [
        "db_pool_connections",
        "db_pool_idle_connections",
        "password_hash_in_flight",
        "password_hash_wait_seconds",
    ] {
        assert!(text.contains(gauge), "{gauge} in {text}");
    }
}

async fn auth_counters_count_exactly_what_happened(backend: Backend) {
    // Arrange: the real binary, so its Prometheus recorder sees this test's requests and
    // nothing else (the in-process apps of other tests share one global recorder).
    let db = TestDb::new(backend).await;
    let url = db.url_string();
    let mut binary = Binary::spawn(&[
        ("DATABASE_URL", url.as_str()),
        ("JWT_SECRET_KEY", SECRET),
        ("BCRYPT_ROUNDS", "4"),
        ("REFRESH_TOKEN_ROTATION", "on"),
        ("REFRESH_REUSE_GRACE_SECONDS", "1"),
    ]);
    assert!(tokio::task::block_in_place(|| binary.wait_ready()));
    let client = reqwest::Client::new();
    let post =
        |path: &str, body: serde_json::Value| client.post(binary.url(path)).json(&body).send();
    let credentials = json!({"email": "m@example.com", "password": PASSWORD});
    // Act
    post("/auth/register", credentials.clone()).await.unwrap();
    post("/auth/register", credentials.clone()).await.unwrap();
    let tokens = post("/auth/login", credentials.clone()).await.unwrap();
    let tokens: serde_json::Value = tokens.json().await.unwrap();
    let (access, refresh) = (&tokens["access_token"], &tokens["refresh_token"]);
    let verify = |token: String| {
        client
            .get(binary.url("/auth/verify"))
            .bearer_auth(token)
            .send()
    };
    verify(access.as_str().unwrap().to_owned()).await.unwrap();
    verify("garbage".to_owned()).await.unwrap();
    post("/auth/refresh", json!({"refresh_token": refresh}))
        .await
        .unwrap();
    post("/auth/refresh", json!({"refresh_token": refresh}))
        .await
        .unwrap(); // within grace
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    post("/auth/refresh", json!({"refresh_token": refresh}))
        .await
        .unwrap(); // reuse
    post("/auth/refresh", json!({"refresh_token": "garbage"}))
        .await
        .unwrap();
    for _ in 0..6 {
        let wrong = json!({"email": "m@example.com", "password": "WrongPass123"});
        post("/auth/login", wrong).await.unwrap();
    }
    let text = binary.metrics().await;
    tokio::task::block_in_place(|| binary.terminate());
    // Assert: every series is explained.
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = line.split_whitespace().nth(2).unwrap();
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "no # HELP for {name}"
        );
    }
    let expected = [
        (r#"auth_registrations_total{result="success"}"#, 1.0),
        (r#"auth_registrations_total{result="exists"}"#, 1.0),
        (r#"auth_logins_total{result="success"}"#, 1.0),
        (r#"auth_logins_total{result="invalid_credentials"}"#, 5.0),
        (r#"auth_logins_total{result="locked"}"#, 1.0),
        ("auth_lockouts_total", 1.0),
        (r#"auth_refresh_total{result="success"}"#, 1.0),
        (r#"auth_refresh_total{result="grace_reuse"}"#, 1.0),
        (r#"auth_refresh_total{result="reuse_detected"}"#, 1.0),
        (r#"auth_refresh_total{result="invalid"}"#, 1.0),
        (r#"auth_verify_total{result="valid"}"#, 1.0),
        (r#"auth_verify_total{result="invalid"}"#, 1.0),
    ];
    for (name, value) in expected {
        assert_eq!(metric_value(&text, name), Some(value), "{name} in {text}");
    }
}

async fn request_ids_are_echoed_or_generated_and_nosniff_is_sent(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let response = app
        .client
        .get(app.url("/health/live"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&response, "x-request-id").as_deref(),
        Some("abc-123")
    );
    assert_eq!(
        header(&response, "x-content-type-options").as_deref(),
        Some("nosniff")
    );
    // Every response: never framed, never leaking its URL.
    for path in ["/health/live", "/nope", "/docs", "/auth/verify"] {
        let response = app.get(path).await;
        assert_eq!(
            header(&response, "x-frame-options").as_deref(),
            Some("DENY"),
            "{path}"
        );
        assert_eq!(
            header(&response, "referrer-policy").as_deref(),
            Some("no-referrer"),
            "{path}"
        );
    }
    let generated = header(&app.get("/nope").await, "x-request-id").unwrap();
    assert_eq!(generated.len(), 36, "a UUID: {generated}");
}

async fn cors_allows_the_configured_origins_only(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let preflight = |origin: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/auth/login"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .send()
    };
    let allowed = preflight("http://localhost:3000").await.unwrap();
    assert_eq!(
        header(&allowed, "access-control-allow-origin").as_deref(),
        Some("http://localhost:3000")
    );
    assert_eq!(
        header(&allowed, "access-control-allow-credentials").as_deref(),
        Some("true")
    );
    let denied = preflight("https://evil.example").await.unwrap();
    assert_eq!(header(&denied, "access-control-allow-origin"), None);
    // Any request header passes the preflight, as the original allowed.
    let custom = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/auth/verify"))
        .header("origin", "http://localhost:3000")
        .header("access-control-request-method", "GET")
        .header(
            "access-control-request-headers",
            "authorization, x-correlation-id, x-tenant",
        )
        .send()
        .await
        .unwrap();
    assert!(custom.status().is_success());
    let allowed_headers = header(&custom, "access-control-allow-headers").unwrap();
    for name in ["authorization", "x-correlation-id", "x-tenant"] {
        assert!(
            allowed_headers.contains(name),
            "{name} in {allowed_headers}"
        );
    }
}

/// The value of one series in a Prometheus text exposition.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .map(|v| v.trim().parse().unwrap())
    })
}
