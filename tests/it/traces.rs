//! Traces over OTLP from the built binary, on both databases, to a collector on a port of its
//! own that decodes every export (`otlp_receiver.rs`): a login carrying a W3C `traceparent` is
//! the caller's child with its hash and database calls inside; verify through the hot path and
//! through the router alike; an unsampled caller is not exported; `enduser.id` only when
//! configured; no personal data in any attribute; probes not traced; the outbox sends as
//! traces of their own;
//! gRPC and HTTP/JSON; a flush at shutdown; a dead or silent collector that changes no answer.

use std::time::Duration;

use reqwest::{Client, StatusCode};
use serde_json::json;

use crate::{
    dual_backend,
    helpers::*,
    otlp_receiver::{Collector, Received},
    webhook_receiver::{Receiver, new_secret},
};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

dual_backend!(
    a_login_carrying_a_traceparent_is_the_callers_child_with_its_hash_and_database_calls,
    verify_is_traced_alike_through_the_hot_path_and_the_router,
    outbox_sends_begin_traces_of_their_own,
    grpc_and_http_json_reach_the_collector_gzipped_with_its_headers_and_resource,
    shutdown_flushes_the_spans_still_queued,
    a_dead_or_silent_collector_changes_no_answer_and_drops_are_counted,
);

/// How long spans may take to arrive (exported every 100 ms here).
const SOON: Duration = Duration::from_secs(20);

/// The attributes a span may carry: what the service exports, and nothing else.
const ALLOWED: &[&str] = &[
    "http.request.method",
    "http.route",
    "http.response.status_code",
    "request_id",
    "db.system",
    "db.operation.name",
    "mail.template",
    "webhook.type",
];

/// The binary exporting to `collector`, with `more` variables; ready.
fn traced(db: &TestDb, collector: &str, more: &[(&str, &str)]) -> Binary {
    let database = db.url_string();
    let mut vars = vec![
        ("DATABASE_URL", database.as_str()),
        ("BCRYPT_ROUNDS", "4"),
        ("JWT_SECRET_KEY", SECRET),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    vars.extend_from_slice(more);
    let mut binary = Binary::spawn(&vars);
    if !binary.wait_ready() {
        let (_, out, err) = binary.terminate();
        panic!("not ready: {out} {err}");
    }
    binary
}

/// A `traceparent` of a fresh trace: (header, trace id, the caller's span id).
fn caller(sampled: bool) -> (String, String, String) {
    let trace: String = (0..16)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    let span: String = (0..8)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    let flags = if sampled { "01" } else { "00" };
    (format!("00-{trace}-{span}-{flags}"), trace, span)
}

/// `span`'s ancestors in `spans`, nearest first.
fn ancestors<'a>(span: &Received, spans: &'a [Received]) -> Vec<&'a Received> {
    let mut chain = Vec::new();
    let mut parent = span.parent_span_id.clone();
    while let Some(up) = spans.iter().find(|s| s.span_id == parent) {
        chain.push(up);
        parent.clone_from(&up.parent_span_id);
    }
    chain
}

fn named<'a>(spans: &'a [Received], name: &str) -> &'a Received {
    spans
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no span {name} in {spans:#?}"))
}

/// No attribute outside [`ALLOWED`] (plus `allowed_too`), and no value that holds any of
/// `secrets` or the client's address.
fn assert_no_personal_data(spans: &[Received], allowed_too: &[&str], secrets: &[&str]) {
    for span in spans {
        for (key, value) in &span.attributes {
            assert!(
                ALLOWED.contains(&key.as_str()) || allowed_too.contains(&key.as_str()),
                "{key}={value} on {span:?}"
            );
            for secret in secrets.iter().chain(&["127.0.0.1", "$2b$"]) {
                assert!(!value.contains(secret), "{key}={value} on {span:?}");
            }
        }
    }
}

fn db_system(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgresql",
    }
}

async fn register(client: &Client, binary: &Binary, email: &str) {
    let response = client
        .post(binary.url("/auth/register"))
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
}

async fn login(client: &Client, binary: &Binary, email: &str, traceparent: &str) -> String {
    let response = client
        .post(binary.url("/auth/login"))
        .header("traceparent", traceparent)
        .header("tracestate", "shop=checkout")
        .header("x-request-id", "trace-login-1")
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    json_of(response).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// `GET /auth/verify` without a token, in the caller's trace: a 401.
async fn verify_without_a_token(client: &Client, binary: &Binary, traceparent: &str) {
    let refused = client
        .get(binary.url("/auth/verify"))
        .header("traceparent", traceparent)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
}

async fn a_login_carrying_a_traceparent_is_the_callers_child_with_its_hash_and_database_calls(
    backend: Backend,
) {
    // Arrange
    let db = TestDb::new(backend).await;
    let collector = Collector::http().await;
    let binary = traced(&db, &collector.endpoint, &[]);
    let client = Client::new();
    let email = "traced.login@example.com";
    register(&client, &binary, email).await;
    let (traceparent, trace_id, parent) = caller(true);
    // Act
    let access = login(&client, &binary, email, &traceparent).await;
    // Assert: the server span is the caller's child, in the caller's trace and state.
    let spans = collector
        .trace(
            &trace_id,
            &["POST /auth/login", "password_hash.queue", "password_hash"],
            SOON,
        )
        .await;
    let server = named(&spans, "POST /auth/login");
    assert_eq!(server.parent_span_id, parent);
    assert_eq!(server.kind, SpanKind::Server);
    assert_eq!(server.trace_state, "shop=checkout");
    assert_eq!(server.attr("http.request.method"), Some("POST"));
    assert_eq!(server.attr("http.route"), Some("/auth/login"));
    assert_eq!(server.attr("http.response.status_code"), Some("200"));
    assert_eq!(server.attr("request_id"), Some("trace-login-1"));
    assert!(!server.error);
    assert_eq!(server.resource["service.name"], "auth-service");
    // The hash, waiting and working, and the database calls, inside it.
    for name in ["password_hash.queue", "password_hash"] {
        let span = named(&spans, name);
        assert!(
            ancestors(span, &spans)
                .iter()
                .any(|a| a.span_id == server.span_id),
            "{name} is not inside the request: {spans:#?}"
        );
    }
    let calls: Vec<&Received> = spans
        .iter()
        .filter(|s| s.attr("db.system").is_some())
        .collect();
    assert!(
        calls.iter().any(|s| s.name == "find_user_by_email"),
        "{spans:#?}"
    );
    for call in &calls {
        assert_eq!(call.attr("db.system"), Some(db_system(backend)));
        assert_eq!(call.attr("db.operation.name"), Some(call.name.as_str()));
        assert_eq!(call.kind, SpanKind::Client);
        assert!(
            ancestors(call, &spans)
                .iter()
                .any(|a| a.span_id == server.span_id)
        );
    }
    // No personal data anywhere, the registration's spans included; no `enduser.id` unless
    // configured.
    let everything = collector.spans();
    assert_no_personal_data(&everything, &[], &[email, PASSWORD, &access]);
    // The readiness probes the test waited with are not traced.
    assert!(
        everything.iter().all(|s| !s
            .attr("http.route")
            .unwrap_or_default()
            .starts_with("/health")),
        "{everything:#?}"
    );
    // The log line of the request names the trace.
    let (code, stdout, _) = tokio::task::block_in_place(|| binary.terminate());
    assert_eq!(code, Some(0));
    let completed = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["span"]["request_id"] == "trace-login-1" && l["message"] == "request completed")
        .expect("the login's request line");
    assert_eq!(completed["span"]["trace_id"], trace_id.as_str());
}

async fn verify_is_traced_alike_through_the_hot_path_and_the_router(backend: Backend) {
    // Arrange
    let db = TestDb::new(backend).await;
    let collector = Collector::http().await;
    let binary = traced(&db, &collector.endpoint, &[("TRACE_USER_ID", "true")]);
    let client = Client::new();
    let email = "traced.verify@example.com";
    register(&client, &binary, email).await;
    let access = login(&client, &binary, email, &caller(false).0).await;
    let verify = |traceparent: String, origin: Option<&'static str>| {
        let mut request = client
            .get(binary.url("/auth/verify"))
            .bearer_auth(&access)
            .header("traceparent", traceparent);
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            json_of(response).await["user_id"].as_i64().unwrap()
        }
    };
    // Act: a caller that does not sample first, then a service (the hot path, no Origin) and
    // a browser (the router, with an allowed Origin).
    let (unsampled, unsampled_trace, _) = caller(false);
    verify(unsampled, None).await;
    let (hot, hot_trace, hot_parent) = caller(true);
    let user_id = verify(hot, None).await;
    let (routed, routed_trace, routed_parent) = caller(true);
    verify(routed, Some("http://localhost:3000")).await;
    // A malformed `traceparent` is no error: the request starts a trace of its own.
    let malformed = format!("00-{}-{}-01", "0".repeat(32), "1".repeat(16));
    verify(malformed, None).await;
    verify("not a traceparent".to_owned(), None).await;
    // Assert
    let hot_spans = collector
        .trace(&hot_trace, &["GET /auth/verify", "verify_access"], SOON)
        .await;
    let routed_spans = collector
        .trace(&routed_trace, &["GET /auth/verify", "verify_access"], SOON)
        .await;
    let hot_server = named(&hot_spans, "GET /auth/verify");
    let routed_server = named(&routed_spans, "GET /auth/verify");
    assert_eq!(hot_server.parent_span_id, hot_parent);
    assert_eq!(routed_server.parent_span_id, routed_parent);
    for server in [hot_server, routed_server] {
        assert_eq!(server.kind, SpanKind::Server);
        assert_eq!(server.attr("http.request.method"), Some("GET"));
        assert_eq!(server.attr("http.route"), Some("/auth/verify"));
        assert_eq!(server.attr("http.response.status_code"), Some("200"));
    }
    let keys = |s: &Received| s.attributes.keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(hot_server), keys(routed_server));
    // `TRACE_USER_ID=true`: the user's id, as `enduser.id`, on the verification's span.
    for spans in [&hot_spans, &routed_spans] {
        let verified = named(spans, "verify_access");
        assert_eq!(
            verified.attr("enduser.id"),
            Some(user_id.to_string().as_str())
        );
    }
    // The malformed ones: two new traces, their server spans roots.
    let roots = collector
        .wait_until("two root verify spans", SOON, |spans| {
            spans
                .iter()
                .filter(|s| s.name == "GET /auth/verify" && s.parent_span_id.is_empty())
                .count()
                == 2
        })
        .await;
    assert!(roots.iter().all(|s| s.trace_id != "0".repeat(32)));
    // The caller that did not sample: nothing of its trace was exported.
    assert!(
        collector
            .spans()
            .iter()
            .all(|s| s.trace_id != unsampled_trace)
    );
    assert_no_personal_data(&collector.spans(), &["enduser.id"], &[email, &access]);
}

async fn outbox_sends_begin_traces_of_their_own(backend: Backend) {
    // Arrange
    let db = TestDb::new(backend).await;
    let collector = Collector::http().await;
    let secret = new_secret();
    let hooks = Receiver::start(&[&secret]).await;
    let binary = traced(
        &db,
        &collector.endpoint,
        &[
            ("WEBHOOK_URLS", hooks.url.as_str()),
            ("WEBHOOK_SECRET", secret.as_str()),
        ],
    );
    let client = Client::new();
    let email = "traced.outbox@example.com";
    // Act: a registration (`user.created`, and its verification mail), then a reset mail.
    register(&client, &binary, email).await;
    hooks.wait_for(1, SOON).await;
    let forgot = client
        .post(binary.url("/auth/password/forgot"))
        .json(&json!({"email": email}))
        .send()
        .await
        .unwrap();
    assert_eq!(forgot.status(), StatusCode::ACCEPTED);
    // Assert: each send is the root of its own trace, its database calls inside.
    let spans = collector
        .wait_until("both sends", SOON, |spans| {
            spans.iter().any(|s| s.name == "webhook send")
                && spans
                    .iter()
                    .any(|s| s.attr("mail.template") == Some("password_reset"))
        })
        .await;
    let webhook = named(&spans, "webhook send");
    assert_eq!(webhook.parent_span_id, "");
    assert_eq!(webhook.kind, SpanKind::Client);
    assert_eq!(webhook.attr("webhook.type"), Some("user.created"));
    assert_eq!(webhook.attr("http.response.status_code"), Some("200"));
    let mail = spans
        .iter()
        .find(|s| s.attr("mail.template") == Some("password_reset"))
        .unwrap();
    assert_eq!(mail.name, "mail send");
    assert_eq!(mail.parent_span_id, "");
    let spans = collector
        .wait_until("the sends' recorded outcomes", SOON, |spans| {
            spans
                .iter()
                .any(|s| s.name == "finish_webhook" && s.trace_id == webhook.trace_id)
                && spans
                    .iter()
                    .any(|s| s.name == "finish_mail" && s.trace_id == mail.trace_id)
        })
        .await;
    for name in ["finish_webhook", "finish_mail"] {
        let call = named(&spans, name);
        assert!(
            ancestors(call, &spans)
                .iter()
                .any(|a| a.parent_span_id.is_empty())
        );
    }
    // The background's own database calls (the outbox claims, the revocation follower) make
    // no trace of their own.
    for span in &spans {
        if span.parent_span_id.is_empty() {
            assert!(
                span.attr("db.system").is_none(),
                "a database call as a trace of its own: {span:?}"
            );
        }
    }
    assert_no_personal_data(&spans, &[], &[email]);
}

async fn grpc_and_http_json_reach_the_collector_gzipped_with_its_headers_and_resource(
    backend: Backend,
) {
    for protocol in ["grpc", "http/json"] {
        // Arrange
        let db = TestDb::new(backend).await;
        let collector = if protocol == "grpc" {
            Collector::grpc().await
        } else {
            Collector::http().await
        };
        let binary = traced(
            &db,
            &collector.endpoint,
            &[
                ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
                ("OTEL_EXPORTER_OTLP_HEADERS", "x-collector-key=k-123"),
                ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
                ("OTEL_SERVICE_NAME", "shop-auth"),
                (
                    "OTEL_RESOURCE_ATTRIBUTES",
                    "deployment.environment.name=test",
                ),
            ],
        );
        let client = Client::new();
        let (traceparent, trace_id, parent) = caller(true);
        // Act
        verify_without_a_token(&client, &binary, &traceparent).await;
        // Assert
        let spans = collector
            .trace(&trace_id, &["GET /auth/verify"], SOON)
            .await;
        let server = named(&spans, "GET /auth/verify");
        assert_eq!(server.attr("http.response.status_code"), Some("401"));
        assert_eq!(server.parent_span_id, parent, "{protocol}");
        assert_eq!(server.resource["service.name"], "shop-auth", "{protocol}");
        assert_eq!(
            server.resource["deployment.environment.name"], "test",
            "{protocol}"
        );
        let export = &collector.exports()[0];
        assert_eq!(export.headers["x-collector-key"], "k-123", "{protocol}");
        let expected = if protocol == "grpc" {
            "application/grpc"
        } else {
            "application/json"
        };
        assert_eq!(export.content_type, expected);
        let encoding = if protocol == "grpc" {
            "grpc-encoding"
        } else {
            "content-encoding"
        };
        assert_eq!(export.headers[encoding], "gzip", "{protocol}");
        let (code, _, _) = tokio::task::block_in_place(|| binary.terminate());
        assert_eq!(code, Some(0));
    }
}

async fn shutdown_flushes_the_spans_still_queued(backend: Backend) {
    // Arrange: a batch is due only after ten minutes.
    let db = TestDb::new(backend).await;
    let collector = Collector::http().await;
    let binary = traced(
        &db,
        &collector.endpoint,
        &[("OTEL_BSP_SCHEDULE_DELAY", "600000")],
    );
    let client = Client::new();
    let (traceparent, trace_id, _) = caller(true);
    verify_without_a_token(&client, &binary, &traceparent).await;
    assert!(collector.spans().is_empty());
    // Act
    let (code, _, _) = tokio::task::block_in_place(|| binary.terminate());
    // Assert
    assert_eq!(code, Some(0));
    collector
        .trace(&trace_id, &["GET /auth/verify"], Duration::from_secs(1))
        .await;
}

async fn a_dead_or_silent_collector_changes_no_answer_and_drops_are_counted(backend: Backend) {
    // A port nothing listens on, then one that accepts and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("http://{}", silent.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            open.push(stream);
        }
    });
    let dead_url = format!("http://127.0.0.1:{}", free_port());
    for (collector, result) in [
        (dead_url.as_str(), "failed"),
        (silent_url.as_str(), "dropped"),
    ] {
        // Arrange: a queue of 8 spans, exports given 1 s.
        let db = TestDb::new(backend).await;
        let binary = traced(
            &db,
            collector,
            &[
                ("OTEL_BSP_MAX_QUEUE_SIZE", "8"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "1000"),
            ],
        );
        let client = Client::new();
        let email = "traced.dead@example.com";
        register(&client, &binary, email).await;
        let access = login(&client, &binary, email, &caller(true).0).await;
        // Act: every answer is what it would be without traces.
        for _ in 0..40 {
            let response = client
                .get(binary.url("/auth/verify"))
                .bearer_auth(&access)
                .header("traceparent", caller(true).0)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
        }
        // Assert: the lost spans are counted, and the process stops as it should.
        let counted = format!("trace_spans_total{{result=\"{result}\"}}");
        poll_until(&counted, SOON, || async {
            binary.metrics().await.lines().any(|line| {
                line.starts_with(&counted)
                    && line
                        .rsplit(' ')
                        .next()
                        .and_then(|n| n.parse::<f64>().ok())
                        .is_some_and(|n| n > 0.0)
            })
        })
        .await;
        let (code, _, stderr) = tokio::task::block_in_place(|| binary.terminate());
        assert_eq!(code, Some(0), "{stderr}");
    }
    held.abort();
}
