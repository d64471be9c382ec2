//! Hostile clients: silent connections, made-up methods, look-alike accounts, forged client
//! addresses, hostile pages, oversized request ids, database passwords in logs.
//! Each test tries to open a door the hardening closed.

use std::time::{Duration, Instant};

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::json;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use crate::{dual_backend, helpers::*};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame: length 0, type 4, no flags, stream 0.
const H2_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

/// Reads until the server closes the connection (EOF or reset); how long that took.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buffer = [0u8; 4096];
    loop {
        let remaining = limit.checked_sub(started.elapsed())?;
        match tokio::time::timeout(remaining, stream.read(&mut buffer)).await {
            Ok(Ok(0) | Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
            Err(_) => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_half_open_connections_are_closed_at_the_header_deadline() {
    // Arrange: a short deadline, and hundreds of connections that never complete a head:
    // silent, part of the HTTP/2 preface, the whole preface and a SETTINGS frame.
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        &[
            ("HEADER_READ_TIMEOUT_SECONDS", "2"),
            ("MAX_CONNECTIONS", "400"),
            // All 300 come from one address, over the default per-peer cap of 256.
            ("MAX_CONNECTIONS_PER_IP", "400"),
        ],
    )
    .await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut sockets = Vec::new();
    for i in 0..300 {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        match i % 3 {
            0 => {}
            1 => stream.write_all(&H2_PREFACE[..10]).await.unwrap(),
            _ => {
                stream.write_all(H2_PREFACE).await.unwrap();
                stream.write_all(H2_SETTINGS).await.unwrap();
            }
        }
        sockets.push(stream);
    }
    // Act + Assert: every one of them is closed soon after the deadline...
    let closed = join_all(
        sockets
            .iter_mut()
            .map(|s| closed_within(s, Duration::from_secs(6))),
    )
    .await;
    let still_open = closed.iter().filter(|c| c.is_none()).count();
    assert_eq!(still_open, 0, "{still_open} of 300 connections still open");
    // ...and a new client (a probe) is served at once.
    let probe = reqwest::Client::new();
    let live = tokio::time::timeout(
        Duration::from_secs(2),
        probe.get(app.url("/health/live")).send(),
    )
    .await
    .expect("the probe is answered")
    .unwrap();
    assert_eq!(live.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_close_after_the_idle_timeout_in_http1_and_http2() {
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        &[
            ("HEADER_READ_TIMEOUT_SECONDS", "1"),
            ("IDLE_TIMEOUT_SECONDS", "3"),
        ],
    )
    .await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    // HTTP/1.1: one request, then silence.
    let mut h1 = TcpStream::connect(&addr).await.unwrap();
    h1.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut response = [0u8; 512];
    let n = h1.read(&mut response).await.unwrap();
    assert!(response[..n].starts_with(b"HTTP/1.1 200"));
    // HTTP/2 with prior knowledge: one request (HEADERS: GET http://x/health/live), then
    // silence.
    let mut h2 = TcpStream::connect(&addr).await.unwrap();
    h2.write_all(H2_PREFACE).await.unwrap();
    h2.write_all(H2_SETTINGS).await.unwrap();
    let block: Vec<u8> = [
        &[0x82, 0x86][..], // :method GET, :scheme http
        &[0x04, 12],       // :path, literal of 12 bytes
        b"/health/live",
        &[0x01, 1], // :authority, literal of 1 byte
        b"x",
    ]
    .concat();
    let length = u8::try_from(block.len()).unwrap();
    h2.write_all(&[0, 0, length, 1, 0x05, 0, 0, 0, 1])
        .await
        .unwrap(); // HEADERS, END_STREAM|END_HEADERS, stream 1
    h2.write_all(&block).await.unwrap();
    let started = Instant::now();
    // Both stay open past the header deadline (they are idle, not slow) and close after the
    // idle timeout.
    let (h1_closed, h2_closed) = tokio::join!(
        closed_within(&mut h1, Duration::from_secs(8)),
        closed_within(&mut h2, Duration::from_secs(8)),
    );
    for (name, closed) in [("HTTP/1.1", h1_closed), ("HTTP/2", h2_closed)] {
        let closed = closed.unwrap_or_else(|| panic!("{name} idle connection still open"));
        assert!(
            closed >= Duration::from_millis(2500),
            "{name} closed after {closed:?}, before the idle timeout"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(8));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_methods_neither_grow_the_metrics_nor_reach_the_logs() {
    let db = TestDb::new(Backend::Sqlite).await;
    let url = db.url_string();
    let mut binary = Binary::spawn(&[("DATABASE_URL", url.as_str()), ("JWT_SECRET_KEY", SECRET)]);
    assert!(tokio::task::block_in_place(|| binary.wait_ready()));
    let addr = format!("127.0.0.1:{}", binary.port);
    for i in 0..200 {
        let method = format!("MADEUP{}X{i}", "Q".repeat(1000));
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        stream
            .write_all(
                format!("{method} /auth/login HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .unwrap();
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink).await;
    }
    let metrics = binary.metrics().await;
    let (_, stdout, _) = tokio::task::block_in_place(|| binary.terminate());
    assert!(
        !metrics.contains("MADEUP"),
        "a made-up method became a label"
    );
    assert!(metrics.contains(r#"method="_OTHER""#), "{metrics}");
    assert!(
        metrics.len() < 100_000,
        "/metrics is {} bytes",
        metrics.len()
    );
    assert!(
        !stdout.contains("MADEUP"),
        "a made-up method reached the logs"
    );
}

dual_backend!(
    look_alike_addresses_are_one_account_with_one_lockout,
    forged_forwarding_entries_cannot_dodge_or_aim_the_per_ip_limits,
    a_hostile_page_cannot_post_from_its_visitors_browsers,
    request_ids_are_bounded_visible_ascii,
);

async fn look_alike_addresses_are_one_account_with_one_lockout(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    // One account per address as a person reads it.
    let groups: &[&[&str]] = &[
        &[
            "jos\u{e9}@example.com",
            "jose\u{301}@example.com",
            "JOS\u{c9}@EXAMPLE.COM",
        ],
        &[
            "\u{ff41}\u{ff4c}\u{ff49}\u{ff43}\u{ff45}@example.com",
            "alice@example.com",
        ],
        &[
            "\u{3a3}\u{391}\u{3a3}@example.com",
            "\u{3c3}\u{3b1}\u{3c2}@example.com",
        ],
        &[
            "bob@b\u{fc}cher.example",
            "bob@xn--bcher-kva.example",
            "BOB@B\u{dc}CHER.EXAMPLE",
        ],
    ];
    for group in groups {
        assert_eq!(
            app.register(group[0], PASSWORD).await.status(),
            StatusCode::CREATED
        );
        for other in &group[1..] {
            let (status, body) = status_and_json(app.register(other, PASSWORD).await).await;
            assert_error(
                status,
                &body,
                StatusCode::CONFLICT,
                "User already exists",
                "USER_EXISTS",
            );
            assert_eq!(
                app.login(other, PASSWORD).await.status(),
                StatusCode::OK,
                "{other}"
            );
        }
    }
    // Addresses nobody can read, or that are not addresses, are refused.
    for bad in [
        "zero\u{200b}width@example.com",
        "\u{feff}bom@example.com",
        "rtl\u{202e}moc.evil@example.com",
        "tag\u{e0041}@example.com",
        "user..name@example.com",
        "a@-.-",
        "<script>alert(1)</script>@x.co",
    ] {
        let (status, body) = status_and_json(app.register(bad, PASSWORD).await).await;
        assert_error(
            status,
            &body,
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid email format",
            "INVALID_EMAIL",
        );
    }
    // Every form counts against the same lockout.
    let forms = [
        "jos\u{e9}@example.com",
        "jose\u{301}@example.com",
        "JOS\u{c9}@example.com",
        "Jos\u{e9}@Example.com",
        "jose\u{301}@EXAMPLE.com",
    ];
    for form in forms {
        assert_eq!(
            app.login(form, "WrongPass123").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let (status, body) = status_and_json(app.login("jos\u{e9}@example.com", PASSWORD).await).await;
    assert_eq!(
        (status, &body["error_code"]),
        (StatusCode::TOO_MANY_REQUESTS, &json!("TOO_MANY_ATTEMPTS"))
    );
}

async fn forged_forwarding_entries_cannot_dodge_or_aim_the_per_ip_limits(backend: Backend) {
    // Arrange: behind a trusted proxy, three failed logins per client network.
    let app = TestApp::spawn_with(
        backend,
        &[
            ("TRUSTED_PROXIES", "127.0.0.1"),
            ("LOGIN_MAX_FAILURES_PER_IP", "3"),
        ],
    )
    .await;
    app.register("target@example.com", PASSWORD).await;
    let login = |forwarded: &'static str, email: &'static str| {
        app.client
            .post(app.url("/auth/login"))
            .header("x-forwarded-for", forwarded)
            .json(&json!({"email": email, "password": "WrongPass123"}))
            .send()
    };
    let status = |r: reqwest::Response| r.status();
    // IPv6: one /64 is one client, whatever the interface identifier.
    for (i, forwarded) in [
        "2001:db8:1:2::1",
        "2001:db8:1:2::2",
        "[2001:db8:1:2::3]:4433",
    ]
    .iter()
    .enumerate()
    {
        let email = ["a@example.com", "b@example.com", "c@example.com"][i];
        assert_eq!(
            status(login(forwarded, email).await.unwrap()),
            StatusCode::UNAUTHORIZED
        );
    }
    let blocked = login("2001:db8:1:2::ffff", "d@example.com").await.unwrap();
    assert_eq!(
        blocked.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "same /64, same budget"
    );
    assert_eq!(
        status(login("2001:db8:1:3::1", "d@example.com").await.unwrap()),
        StatusCode::UNAUTHORIZED
    );
    // IPv4 with a port, and IPv4-mapped IPv6, are the IPv4 address.
    for forwarded in ["198.51.100.5:40112", "::ffff:198.51.100.5", "198.51.100.5"] {
        assert_eq!(
            status(login(forwarded, "e@example.com").await.unwrap()),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        status(login("198.51.100.5", "f@example.com").await.unwrap()),
        StatusCode::TOO_MANY_REQUESTS
    );
    // An unparsable entry ends the walk at the proxy: the attacker's left-hand entry is never
    // believed, so it can neither pick a fresh budget nor spend someone else's.
    for _ in 0..3 {
        login("203.0.113.77, unknown", "g@example.com")
            .await
            .unwrap();
    }
    let victim = login("203.0.113.77", "h@example.com").await.unwrap();
    assert_eq!(
        victim.status(),
        StatusCode::UNAUTHORIZED,
        "203.0.113.77 was never charged"
    );
}

async fn a_hostile_page_cannot_post_from_its_visitors_browsers(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let post = |path: &'static str, origin: Option<&'static str>, body: &'static str| {
        let mut request = app.client.post(app.url(path)).body(body);
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request.send()
    };
    let credentials = r#"{"email":"page@example.com","password":"SecurePass123"}"#;
    // No Content-Type (no preflight), a foreign origin: refused before anything happens.
    for path in [
        "/auth/register",
        "/auth/login",
        "/auth/logout",
        "/auth/refresh",
    ] {
        let (status, body) = status_and_json(
            post(path, Some("https://evil.example"), credentials)
                .await
                .unwrap(),
        )
        .await;
        assert_error(
            status,
            &body,
            StatusCode::FORBIDDEN,
            "Origin not allowed",
            "ORIGIN_NOT_ALLOWED",
        );
    }
    let (status, _) = status_and_json(
        post("/auth/register", Some("null"), credentials)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        app.store
            .find_user_by_email("page@example.com")
            .await
            .unwrap()
            .is_none()
    );
    // The configured frontend, and clients without Origin, are served.
    let allowed = post("/auth/register", Some("http://localhost:3000"), credentials)
        .await
        .unwrap();
    assert_eq!(allowed.status(), StatusCode::CREATED);
    assert_eq!(
        header(&allowed, "access-control-allow-origin").as_deref(),
        Some("http://localhost:3000")
    );
    assert_eq!(
        post("/auth/login", None, credentials)
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    // The service's own origin as addressed (the /docs page) is always allowed, even outside
    // CORS_ORIGINS; a neighbour port or a look-alike host is not.
    let own = app.url("");
    let port: u16 = own.rsplit(':').next().unwrap().parse().unwrap();
    let response = app
        .client
        .post(app.url("/auth/login"))
        .header("origin", &own)
        .body(r#"{"email":"page@example.com","password":"WrongPass123"}"#)
        .send()
        .await
        .unwrap();
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{own}: {body}");
    assert_eq!(body["error_code"], "INVALID_CREDENTIALS");
    for (origin, host) in [
        (format!("http://127.0.0.1:{}", port + 1), None),
        (format!("http://127.0.0.1.evil.example:{port}"), None),
        // A page on evil.example that names our address in its own Origin cannot send our
        // Host: its browser sends evil.example's.
        (own.clone(), Some("evil.example")),
    ] {
        let mut request = app
            .client
            .post(app.url("/auth/login"))
            .header("origin", &origin)
            .body(credentials);
        if let Some(host) = host {
            request = request.header("host", host);
        }
        let (status, body) = status_and_json(request.send().await.unwrap()).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{origin} {host:?}: {body}");
    }
    // With CORS_ORIGINS=* every origin may post.
    let open = TestApp::spawn_with(backend, &[("CORS_ORIGINS", "*")]).await;
    let response = open
        .client
        .post(open.url("/auth/register"))
        .header("origin", "https://anything.example")
        .body(credentials)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
}

async fn request_ids_are_bounded_visible_ascii(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let echoed = |id: String| {
        let app = &app;
        async move {
            let response = app
                .client
                .get(app.url("/health/live"))
                .header("x-request-id", id)
                .send()
                .await
                .unwrap();
            header(&response, "x-request-id").unwrap()
        }
    };
    let fine = "a".repeat(128);
    assert_eq!(echoed(fine.clone()).await, fine);
    assert_eq!(echoed("req-42_ok.Z~".to_owned()).await, "req-42_ok.Z~");
    for bad in [
        "a".repeat(129),
        "x".repeat(300_000),
        "has space".to_owned(),
        "tab\there".to_owned(),
    ] {
        let got = echoed(bad.clone()).await;
        assert_ne!(got, bad);
        assert!(uuid::Uuid::parse_str(&got).is_ok(), "a fresh id: {got}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_password_never_reaches_the_logs() {
    // A password in the query string and one with an `@` in it; the server is unreachable,
    // so start-up logs and its error line are all there is.
    for url in [
        "postgres://app@127.0.0.1:1/auth?password=hunter2-in-query",
        "postgres://app:hunter2@with-at@127.0.0.1:1/auth",
    ] {
        let output = std::process::Command::new(BIN)
            .env_clear()
            .env("DATABASE_URL", url)
            .env("JWT_SECRET_KEY", SECRET)
            .env("DATABASE_CONNECT_TIMEOUT_SECONDS", "1")
            .env("MAIL_URL", "log")
            .output()
            .unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(output.status.code(), Some(2), "{all}");
        assert!(!all.contains("hunter2"), "{all}");
        assert!(all.contains("127.0.0.1:1"), "the host is named: {all}");
    }
}
