//! `/`, the probes, docs, OpenAPI, metrics, JWKS and the cross-cutting headers.

use reqwest::StatusCode;
use serde_json::json;

use crate::{dual_backend, helpers::*};

dual_backend! {
    async fn root_describes_the_service(backend: Backend) {
        let app = TestApp::spawn(backend).await;
        let (status, body) = status_and_json(app.get("/").await).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, json!({"service": "auth-service", "version": env!("CARGO_PKG_VERSION"), "status": "running", "docs": "/docs"}));
    }

    async fn health_ready_and_live_report_ok(backend: Backend) {
        let app = TestApp::spawn(backend).await;
        let (status, body) = status_and_json(app.get("/health").await).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["status"], "healthy");
        assert_eq!(body["database"], "connected");
        let ts = body["timestamp"].as_str().unwrap();
        assert!(ts.ends_with('Z') && chrono::DateTime::parse_from_rfc3339(ts).is_ok(), "{ts}");
        assert_eq!(body.as_object().unwrap().len(), 3);
        let (status, body) = status_and_json(app.get("/health/ready").await).await;
        assert_eq!((status, &body["status"]), (StatusCode::OK, &json!("ready")));
        let (status, body) = status_and_json(app.get("/health/live").await).await;
        assert_eq!((status, body), (StatusCode::OK, json!({"status": "alive"})));
    }

    async fn docs_and_openapi_are_served_from_the_binary(backend: Backend) {
        let app = TestApp::spawn(backend).await;
        let docs = app.client.get(app.url("/docs/")).send().await.unwrap();
        assert_eq!(docs.status(), StatusCode::OK);
        assert!(docs.text().await.unwrap().contains("swagger"), "Swagger UI page");
        let redirect = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
            .get(app.url("/docs")).send().await.unwrap();
        assert!(redirect.status().is_redirection() || redirect.status() == StatusCode::OK);
        let (status, doc) = status_and_json(app.get("/openapi.json").await).await;
        assert_eq!(status, StatusCode::OK);
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        for path in ["/", "/health", "/health/ready", "/health/live", "/metrics", "/.well-known/jwks.json",
                     "/auth/register", "/auth/login", "/auth/refresh", "/auth/logout", "/auth/logout-all", "/auth/verify"] {
            assert!(doc["paths"].get(path).is_some(), "{path} documented");
        }
        assert!(doc["components"]["schemas"].get("ErrorBody").is_some());
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
        assert!(header(&response, "content-type").unwrap().starts_with("text/plain"));
        let text = response.text().await.unwrap();
        assert!(text.contains(r#"http_requests_total{method="POST",route="/auth/login",status="401"}"#), "{text}");
        assert!(text.contains("http_request_duration_seconds_bucket"), "{text}");
        assert!(!text.contains("nobody@example.com"));
        for gauge in ["db_pool_connections", "db_pool_idle_connections", "password_hash_in_flight", "password_hash_wait_seconds"] {
            assert!(text.contains(gauge), "{gauge} in {text}");
        }
    }

    async fn auth_counters_move_after_real_requests(backend: Backend) {
        // The recorder is process-wide and tests run in parallel: compare before and after,
        // expecting at least this test's own increments.
        let app = TestApp::spawn(backend).await;
        let counters = [
            r#"auth_registrations_total{result="success"}"#,
            r#"auth_registrations_total{result="exists"}"#,
            r#"auth_logins_total{result="success"}"#,
            r#"auth_logins_total{result="invalid_credentials"}"#,
            r#"auth_logins_total{result="locked"}"#,
            r#"auth_lockouts_total"#,
            r#"auth_refresh_total{result="success"}"#,
            r#"auth_refresh_total{result="grace_reuse"}"#,
            r#"auth_refresh_total{result="reuse_detected"}"#,
            r#"auth_refresh_total{result="invalid"}"#,
            r#"auth_verify_total{result="valid"}"#,
            r#"auth_verify_total{result="invalid"}"#,
        ];
        let before = metric_values(&app, &counters).await;
        let (_, access, refresh) = app.user_with_tokens("m@example.com").await;
        app.register("m@example.com", PASSWORD).await;
        app.verify(&access).await;
        app.verify("garbage").await;
        let child = json_of(app.refresh(&refresh).await).await["refresh_token"].as_str().unwrap().to_owned();
        app.refresh(&refresh).await; // within grace
        app.clock.advance(chrono::Duration::seconds(11));
        app.refresh(&refresh).await; // reuse
        app.refresh("garbage").await;
        let _ = child;
        for _ in 0..6 { app.login("m@example.com", "WrongPass123").await; }
        let after = metric_values(&app, &counters).await;
        for (name, (b, a)) in counters.iter().zip(before.iter().zip(&after)) {
            assert!(a >= &(b + 1.0), "{name}: {b} -> {a}");
        }
    }

    async fn request_ids_are_echoed_or_generated_and_nosniff_is_sent(backend: Backend) {
        let app = TestApp::spawn(backend).await;
        let response = app.client.get(app.url("/health/live")).header("x-request-id", "abc-123").send().await.unwrap();
        assert_eq!(header(&response, "x-request-id").as_deref(), Some("abc-123"));
        assert_eq!(header(&response, "x-content-type-options").as_deref(), Some("nosniff"));
        let generated = header(&app.get("/nope").await, "x-request-id").unwrap();
        assert_eq!(generated.len(), 36, "a UUID: {generated}");
    }

    async fn cors_allows_the_configured_origins_only(backend: Backend) {
        let app = TestApp::spawn(backend).await;
        let preflight = |origin: &'static str| app.client.request(reqwest::Method::OPTIONS, app.url("/auth/login"))
            .header("origin", origin).header("access-control-request-method", "POST").send();
        let allowed = preflight("http://localhost:3000").await.unwrap();
        assert_eq!(header(&allowed, "access-control-allow-origin").as_deref(), Some("http://localhost:3000"));
        assert_eq!(header(&allowed, "access-control-allow-credentials").as_deref(), Some("true"));
        let denied = preflight("https://evil.example").await.unwrap();
        assert_eq!(header(&denied, "access-control-allow-origin"), None);
    }
}

/// Current values of the named series on `/metrics` (0 when absent).
async fn metric_values(app: &TestApp, names: &[&str]) -> Vec<f64> {
    let text = app.get("/metrics").await.text().await.unwrap();
    names
        .iter()
        .map(|name| {
            text.lines()
                .find_map(|line| {
                    line.strip_prefix(name)
                        .and_then(|rest| rest.strip_prefix(' '))
                })
                .map_or(0.0, |v| v.trim().parse().unwrap())
        })
        .collect()
}
