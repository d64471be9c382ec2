//! Framework errors in the contract's shape: bad JSON, content types, limits, 404, 405.

use reqwest::StatusCode;
use serde_json::json;

use crate::{dual_backend, helpers::*};

async fn post_raw(
    app: &TestApp,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, serde_json::Value) {
    let mut request = app.client.post(app.url(path)).body(body);
    if let Some(ct) = content_type {
        request = request.header("content-type", ct);
    }
    let response = request.send().await.unwrap();
    assert_eq!(
        header(&response, "content-type").as_deref(),
        Some("application/json")
    );
    status_and_json(response).await
}

dual_backend!(
    a_body_that_is_not_json_is_422_invalid_json,
    missing_or_mistyped_fields_are_422_validation_error,
    every_field_error_lists_its_fields,
    another_authorization_scheme_says_it_must_be_bearer,
    content_type_rules,
    a_body_over_64_kib_is_413,
    unknown_routes_and_methods_get_json_404_and_405,
    sql_fragments_are_just_data,
    a_request_slower_than_the_timeout_gets_a_json_408,
    heads_the_http_parser_refuses_get_the_json_body_on_both_doors,
);

async fn a_body_that_is_not_json_is_422_invalid_json(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for body in [
        &b"{not json"[..],
        b"",
        b"{\"email\": \"a@b.co\", \"password\": \"\xff\xfe\"}",
        b"{\"email\":\"a@b.co\",\"password\":\"SecurePass123\"} trailing",
    ] {
        let (status, body) = post_raw(
            &app,
            "/auth/register",
            Some("application/json"),
            body.to_vec(),
        )
        .await;
        assert_error(
            status,
            &body,
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid JSON in request body",
            "INVALID_JSON",
        );
    }
    // 100,000-deep nesting is 200 KB: over the body limit, so 413 before any parsing. The
    // server answers as soon as the limit is crossed; the client, still writing, may see the
    // answer or a closed connection. Either way nothing past 64 KiB is read or parsed.
    // On a client of its own: the server closes that connection after answering early, and a
    // pooled client could hand the closed connection to the next request (a broken pipe).
    let deepest = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let sent = reqwest::Client::new()
        .post(app.url("/auth/login"))
        .header("content-type", "application/json")
        .body(deepest)
        .send()
        .await;
    match sent {
        Ok(response) => {
            let (status, body) = status_and_json(response).await;
            assert_error(
                status,
                &body,
                StatusCode::PAYLOAD_TOO_LARGE,
                "Request body too large",
                "PAYLOAD_TOO_LARGE",
            );
        }
        Err(err) => assert!(err.is_request(), "{err}"),
    }
    // 30,000-deep nesting (under the body limit): refused in the contract's shape, no crash.
    for deep in [
        format!("{}{}", "[".repeat(30_000), "]".repeat(30_000)),
        format!(
            "{{\"email\":{}{}}}",
            "{\"a\":".repeat(10_000),
            "}".repeat(10_000)
        ),
        format!("{{\"extra\":{}{}}}", "[".repeat(30_000), "]".repeat(30_000)),
    ] {
        let (status, body) = post_raw(
            &app,
            "/auth/login",
            Some("application/json"),
            deep.into_bytes(),
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(
            body["error_code"] == "INVALID_JSON" || body["error_code"] == "VALIDATION_ERROR",
            "{body}"
        );
    }
    assert_eq!(app.get("/health/live").await.status(), StatusCode::OK);
}

async fn missing_or_mistyped_fields_are_422_validation_error(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let required = |field: &str| json!({"field": field, "message": "required"});
    let string = |field: &str| json!({"field": field, "message": "must be a string"});
    let cases = [
        // Every missing or mistyped field is listed, in words for people.
        (json!({}), json!([required("email"), required("password")])),
        (json!({"password": PASSWORD}), json!([required("email")])),
        (
            json!({"email": 5, "password": PASSWORD}),
            json!([string("email")]),
        ),
        (
            json!({"email": 5, "password": ["x"]}),
            json!([string("email"), string("password")]),
        ),
        (
            json!({"email": null}),
            json!([string("email"), required("password")]),
        ),
        (
            json!(["a@example.com", PASSWORD]),
            json!([{"field": "body", "message": "must be a JSON object"}]),
        ),
        (
            json!("text"),
            json!([{"field": "body", "message": "must be a JSON object"}]),
        ),
    ];
    for (path, (payload, errors)) in ["/auth/register", "/auth/login"]
        .into_iter()
        .flat_map(|path| cases.iter().map(move |case| (path, case)))
    {
        let (status, body) = post_raw(
            &app,
            path,
            Some("application/json"),
            payload.to_string().into_bytes(),
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{path} {payload}");
        assert_eq!(
            body,
            json!({
                "detail": "Request validation failed",
                "error_code": "VALIDATION_ERROR",
                "errors": errors,
            }),
            "{path} {payload}"
        );
    }
    // A name given twice is refused (which one would count?), naming it.
    let dup = br#"{"email":"a@example.com","email":"b@example.com","password":"SecurePass123"}"#;
    let (status, body) = post_raw(
        &app,
        "/auth/register",
        Some("application/json"),
        dup.to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        body["errors"],
        json!([{"field": "email", "message": "given more than once"}])
    );
    // Unknown extra fields are ignored.
    let extra = json!({"email": "extra@example.com", "password": PASSWORD, "name": 5});
    let (status, _) = post_raw(
        &app,
        "/auth/register",
        Some("application/json"),
        extra.to_string().into_bytes(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
}

/// Field errors have one shape everywhere: the contract's code and `detail`, and `errors`
/// naming the field, at register (`WEAK_PASSWORD`, `INVALID_EMAIL`) as at login
/// (`VALIDATION_ERROR`).
async fn every_field_error_lists_its_fields(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (status, body) = status_and_json(app.register("weak@example.com", "short").await).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error_code"], "WEAK_PASSWORD");
    let detail = body["detail"].as_str().unwrap();
    let reasons: Vec<&str> = detail
        .strip_prefix("Password validation failed: ")
        .unwrap()
        .split(", ")
        .collect();
    assert!(reasons.len() >= 2, "{body}");
    let listed: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert_eq!(e["field"], "password", "{body}");
            e["message"].as_str().unwrap()
        })
        .collect();
    assert_eq!(listed, reasons, "{body}");

    let (status, body) = status_and_json(app.register("not-an-email", PASSWORD).await).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        body,
        json!({
            "detail": "Invalid email format",
            "error_code": "INVALID_EMAIL",
            "errors": [{"field": "email", "message": "Invalid email format"}],
        })
    );

    let (status, body) = status_and_json(app.login("weak@example.com", "short").await).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error_code"], "VALIDATION_ERROR");
    assert_eq!(body["errors"][0]["field"], "password");
}

/// `Authorization: Token abc` keeps the contract's `MISSING_TOKEN` and `detail`, and says why.
async fn another_authorization_scheme_says_it_must_be_bearer(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for value in ["Token abc", "Basic dXNlcjpwYXNz", "abc"] {
        let response = app
            .client
            .get(app.url("/auth/verify"))
            .header("authorization", value)
            .send()
            .await
            .unwrap();
        assert_eq!(
            header(&response, "www-authenticate").as_deref(),
            Some("Bearer")
        );
        let (status, body) = status_and_json(response).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{value}");
        assert_eq!(
            body,
            json!({
                "detail": "Authorization header missing",
                "error_code": "MISSING_TOKEN",
                "errors": [{
                    "field": "Authorization",
                    "message": "the scheme must be Bearer (Authorization: Bearer <token>)",
                }],
            }),
            "{value}"
        );
    }
}

async fn content_type_rules(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let payload = json!({"email": "ct@example.com", "password": PASSWORD})
        .to_string()
        .into_bytes();
    // Another media type is 422, as the original (FastAPI) answered, for every body route.
    for (path, content_type) in [
        ("/auth/register", "text/plain"),
        ("/auth/login", "application/x-www-form-urlencoded"),
        ("/auth/logout", "multipart/form-data; boundary=x"),
    ] {
        let (status, body) = post_raw(&app, path, Some(content_type), payload.clone()).await;
        assert_error(
            status,
            &body,
            StatusCode::UNPROCESSABLE_ENTITY,
            "Unsupported media type: send application/json",
            "UNSUPPORTED_MEDIA_TYPE",
        );
    }
    // A UTF-8 byte order mark before the JSON is skipped.
    let with_bom = [
        &b"\xEF\xBB\xBF"[..],
        br#"{"email":"bom@example.com","password":"SecurePass123"}"#,
    ]
    .concat();
    let (status, body) = post_raw(&app, "/auth/register", Some("application/json"), with_bom).await;
    assert_eq!(
        (status, &body["email"]),
        (StatusCode::CREATED, &json!("bom@example.com"))
    );
    // No content type at all is read as JSON, as the original did; extra fields are ignored.
    let (status, _) = post_raw(&app, "/auth/register", None, payload).await;
    assert_eq!(status, StatusCode::CREATED);
    let extra = json!({"email": "ct2@example.com", "password": PASSWORD, "role": "admin"})
        .to_string()
        .into_bytes();
    let (status, _) = post_raw(
        &app,
        "/auth/register",
        Some("application/json; charset=utf-8"),
        extra,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
}

async fn a_body_over_64_kib_is_413(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let big = json!({"email": "big@example.com", "password": "x".repeat(70 * 1024)})
        .to_string()
        .into_bytes();
    let (status, body) = post_raw(&app, "/auth/register", Some("application/json"), big).await;
    assert_error(
        status,
        &body,
        StatusCode::PAYLOAD_TOO_LARGE,
        "Request body too large",
        "PAYLOAD_TOO_LARGE",
    );
    // 10 MB: the server answers 413 as soon as the limit is crossed; the client may see the
    // answer or, still writing, a closed connection. Either way nothing is read past 64 KiB.
    let huge = vec![b' '; 10 * 1024 * 1024];
    match app
        .client
        .post(app.url("/auth/login"))
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
    {
        Ok(response) => assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE),
        Err(err) => assert!(err.is_request(), "{err}"),
    }
    assert_eq!(app.get("/health").await.status(), StatusCode::OK);
}

async fn unknown_routes_and_methods_get_json_404_and_405(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let response = app.get("/nope").await;
    assert_eq!(
        header(&response, "content-type").as_deref(),
        Some("application/json")
    );
    let (status, body) = status_and_json(response).await;
    assert_error(
        status,
        &body,
        StatusCode::NOT_FOUND,
        "Not Found",
        "NOT_FOUND",
    );
    let response = app
        .client
        .delete(app.url("/auth/login"))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&response, "allow").as_deref(), Some("POST"));
    let (status, body) = status_and_json(response).await;
    assert_error(
        status,
        &body,
        StatusCode::METHOD_NOT_ALLOWED,
        "Method Not Allowed",
        "METHOD_NOT_ALLOWED",
    );
    let (status, body) = status_and_json(app.get("/auth/login").await).await;
    assert_error(
        status,
        &body,
        StatusCode::METHOD_NOT_ALLOWED,
        "Method Not Allowed",
        "METHOD_NOT_ALLOWED",
    );
}

async fn sql_fragments_are_just_data(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    // Quotes, dashes, slashes and stars are legal in a dot-atom: stored and matched as data.
    let email = "x'--drop/**/table/**/users'--@example.com";
    let (status, body) = status_and_json(app.register(email, PASSWORD).await).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, _) = status_and_json(app.login(email, PASSWORD).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        app.login("'or'1'='1'--@example.com", PASSWORD)
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    // Parentheses and semicolons are not, so this one never reaches SQL.
    let (status, body) = status_and_json(
        app.register("x');drop table users;--@example.com", PASSWORD)
            .await,
    )
    .await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "Invalid email format",
        "INVALID_EMAIL",
    );
    assert_eq!(app.get("/health").await.status(), StatusCode::OK);
}

async fn a_request_slower_than_the_timeout_gets_a_json_408(backend: Backend) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let app = TestApp::spawn_with(
        backend,
        &[
            ("REQUEST_TIMEOUT_SECONDS", "3"),
            ("DATABASE_LOCK_TIMEOUT_SECONDS", "1"),
            ("DATABASE_STATEMENT_TIMEOUT_SECONDS", "2"),
        ],
    )
    .await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // Headers promise 100 bytes; the body then trickles in one byte a second.
    let head = format!(
        "POST /auth/login HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let trickle = tokio::spawn(async move {
        for byte in b"\"email\": \"slow@example.com\"".iter().cycle().take(60) {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            if writer.write_all(&[*byte]).await.is_err() {
                break;
            }
        }
    });
    let mut response = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        reader.read_to_end(&mut response),
    )
    .await
    .unwrap()
    .unwrap();
    trickle.abort();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(
        response.ends_with(r#"{"detail":"Request timeout","error_code":"REQUEST_TIMEOUT"}"#),
        "{response}"
    );
    assert_eq!(app.get("/health").await.status(), StatusCode::OK);
    // Counted under its route, not as "unmatched".
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(r#"http_requests_total{method="POST",route="/auth/login",status="408"}"#),
        "{metrics}"
    );
}

/// Sends `head` raw and reads the whole answer (the server closes after it).
async fn raw_exchange(app: &TestApp, head: &[u8]) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // The server may answer and close before it has read everything: a failed write is fine.
    let _ = stream.write_all(head).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut response),
    )
    .await
    .expect("answered");
    String::from_utf8_lossy(&response).into_owned()
}

async fn heads_the_http_parser_refuses_get_the_json_body_on_both_doors(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let too_large =
        r#"{"detail":"Request header fields too large","error_code":"HEADERS_TOO_LARGE"}"#;
    // Both doors of /auth/verify (a service's and a browser's), and a POST route.
    for (path, extra) in [
        ("GET /auth/verify", ""),
        ("GET /auth/verify", "Origin: http://localhost:3000\r\n"),
        ("POST /auth/login", "Content-Length: 0\r\n"),
    ] {
        // More header lines than the parser takes...
        let mut many = format!("{path} HTTP/1.1\r\nHost: x\r\n{extra}");
        for i in 0..120 {
            many.push_str(&format!("X-Filler-{i}: {i}\r\n"));
        }
        many.push_str("\r\n");
        // ...and more header bytes than it buffers.
        let big = format!(
            "{path} HTTP/1.1\r\nHost: x\r\n{extra}X-Big: {}\r\n\r\n",
            "a".repeat(700 * 1024)
        );
        for head in [many, big] {
            let response = raw_exchange(&app, head.as_bytes()).await;
            let lower = response.to_ascii_lowercase();
            assert!(
                response.starts_with("HTTP/1.1 431"),
                "{path}: {response:.200}"
            );
            assert!(
                lower.contains("content-type: application/json"),
                "{response:.300}"
            );
            assert!(
                lower.contains("x-content-type-options: nosniff"),
                "{response:.300}"
            );
            assert!(response.ends_with(too_large), "{path}: {response:.300}");
        }
    }
    // A request line the parser cannot read: 400 with the contract's body.
    let response = raw_exchange(&app, b"GARBAGE\x01 / HTTP/1.1\r\n\r\n").await;
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert!(
        response.ends_with(r#"{"detail":"Malformed request","error_code":"BAD_REQUEST"}"#),
        "{response}"
    );
    // The server goes on serving.
    assert_eq!(app.get("/health").await.status(), StatusCode::OK);
}
