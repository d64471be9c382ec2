//! `/auth/verify` has two doors: a service's request (no `Origin`) is answered by the hot path
//! ahead of the router, a browser's by the router. Both call the one verify function; these
//! tests send the same request through each and compare everything a caller or an operator
//! sees: status, body, headers (CORS aside), the metrics, and the logged ERROR line of a 500
//! with the request's id.
//!
//! They run the built binary, so its metrics and logs are its own (the test process shares one
//! metrics recorder and one log subscriber among all its apps).

use std::collections::BTreeMap;

use reqwest::StatusCode;
use serde_json::Value;

use crate::{api_health::metric_value, dual_backend, helpers::*};

/// An origin the default `CORS_ORIGINS` allows: the router's door.
const BROWSER: &str = "http://localhost:3000";

/// What one door answered.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    body: Value,
    /// Every header but the ones that differ by nature: the date, the request id (checked
    /// apart), CORS's and `Vary`'s (the browser's door adds its CORS names).
    headers: BTreeMap<String, String>,
    request_id: String,
    /// How much `http_requests_total`, its latency histogram's count and
    /// `auth_verify_total` grew for this one request.
    metrics: [f64; 3],
}

struct Doors {
    server: Binary,
    client: reqwest::Client,
}

impl Doors {
    fn start(db: &TestDb) -> Self {
        let url = db.url_string();
        let mut server = Binary::spawn(&[
            ("DATABASE_URL", url.as_str()),
            ("JWT_SECRET_KEY", SECRET),
            ("BCRYPT_ROUNDS", "4"),
            ("LOG_FORMAT", "json"),
            ("LOG_LEVEL", "info"),
            ("RATE_LIMIT_PER_SECOND", "0"),
        ]);
        assert!(server.wait_ready(), "the binary never became ready");
        Self {
            server,
            client: reqwest::Client::new(),
        }
    }

    async fn metrics(&self, status: StatusCode, result: &str) -> [f64; 3] {
        let text = self.server.metrics().await;
        let series = [
            format!(
                r#"http_requests_total{{method="GET",route="/auth/verify",status="{}"}}"#,
                status.as_u16()
            ),
            r#"http_request_duration_seconds_count{route="/auth/verify"}"#.to_owned(),
            format!(r#"auth_verify_total{{result="{result}"}}"#),
        ];
        series.map(|s| metric_value(&text, &s).unwrap_or(0.0))
    }

    /// `GET /auth/verify` with `authorization`, through the hot path (`origin` None) or the
    /// router (`origin` Some); `result` is the `auth_verify_total` label it should count under
    /// and `status` the status whose series is read.
    async fn ask(
        &self,
        authorization: &str,
        origin: Option<&str>,
        status: StatusCode,
        result: &str,
    ) -> Answer {
        let before = self.metrics(status, result).await;
        let mut request = self
            .client
            .get(self.server.url("/auth/verify"))
            .header("authorization", authorization);
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        let response = request.send().await.unwrap();
        let after = self.metrics(status, result).await;
        let request_id = header(&response, "x-request-id").expect("x-request-id");
        let headers = response
            .headers()
            .iter()
            .filter(|(name, _)| {
                let name = name.as_str();
                !(name == "date"
                    || name == "x-request-id"
                    || name == "vary"
                    || name.starts_with("access-control-"))
            })
            .map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_owned()))
            .collect();
        let (status, body) = status_and_json(response).await;
        Answer {
            status,
            body,
            headers,
            request_id,
            metrics: [0, 1, 2].map(|i| after[i] - before[i]),
        }
    }

    /// The same request through both doors: (hot path, router).
    async fn both(
        &self,
        authorization: &str,
        status: StatusCode,
        result: &str,
    ) -> (Answer, Answer) {
        let hot = self.ask(authorization, None, status, result).await;
        let routed = self.ask(authorization, Some(BROWSER), status, result).await;
        (hot, routed)
    }

    async fn tokens(&self, email: &str) -> String {
        let body = serde_json::json!({"email": email, "password": PASSWORD});
        let registered = self
            .client
            .post(self.server.url("/auth/register"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(registered.status(), StatusCode::CREATED);
        let login = self
            .client
            .post(self.server.url("/auth/login"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(login.status(), StatusCode::OK);
        json_of(login).await["access_token"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

#[track_caller]
fn assert_same(case: &str, (hot, routed): &(Answer, Answer), status: StatusCode) {
    assert_eq!(hot.status, status, "{case}: hot path {hot:?}");
    assert_eq!(routed.status, status, "{case}: router {routed:?}");
    assert_eq!(hot.body, routed.body, "{case}: bodies");
    assert_eq!(hot.headers, routed.headers, "{case}: headers");
    assert_eq!(hot.metrics, [1.0; 3], "{case}: hot path's metrics");
    assert_eq!(routed.metrics, [1.0; 3], "{case}: router's metrics");
    assert_ne!(hot.request_id, routed.request_id, "{case}: fresh ids");
}

/// The JSON log lines on `stdout` at `level` whose request span has `request_id`.
fn lines_of_request(stdout: &str, level: &str, request_id: &str) -> Vec<Value> {
    stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["level"] == level && line["span"]["request_id"] == request_id)
        .collect()
}

dual_backend!(both_doors_of_verify_answer_count_and_log_alike);

async fn both_doors_of_verify_answer_count_and_log_alike(backend: Backend) {
    // Arrange: the binary on a fresh database, two users (one to keep, one to break).
    let db = TestDb::new(backend).await;
    let doors = Doors::start(&db);
    let kept = doors.tokens("kept@example.com").await;
    let broken = doors.tokens("broken@example.com").await;

    // 200: a valid token.
    let ok = doors
        .both(&format!("Bearer {kept}"), StatusCode::OK, "valid")
        .await;
    assert_same("200", &ok, StatusCode::OK);
    assert_eq!(ok.0.body["email"], "kept@example.com");

    // 401: a token that is not one.
    let invalid = doors
        .both("Bearer not-a-token", StatusCode::UNAUTHORIZED, "invalid")
        .await;
    assert_same("401 invalid", &invalid, StatusCode::UNAUTHORIZED);
    assert_eq!(invalid.0.body["error_code"], "INVALID_TOKEN");

    // 500: the sessions table is gone (a broken schema), and the second user's session was
    // never read, so verify must ask the database.
    db.execute("alter table sessions rename to sessions_gone")
        .await;
    let internal = doors
        .both(
            &format!("Bearer {broken}"),
            StatusCode::INTERNAL_SERVER_ERROR,
            "error",
        )
        .await;
    assert_same("500", &internal, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(internal.0.body["error_code"], "INTERNAL_ERROR");

    // 503 (PostgreSQL): the database refuses connections and every open one is closed.
    let unavailable = if backend == Backend::Postgres {
        db.execute("alter table sessions_gone rename to sessions")
            .await;
        db.refuse_connections().await;
        let third = doors
            .both(
                &format!("Bearer {broken}"),
                StatusCode::SERVICE_UNAVAILABLE,
                "error",
            )
            .await;
        assert_same("503", &third, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(third.0.body["error_code"], "SERVICE_UNAVAILABLE");
        db.allow_connections().await;
        Some(third)
    } else {
        None
    };

    // The logs: each door's 500 has its ERROR line inside the request's span, with the id
    // the caller got back, the route and the client.
    let (_, stdout, _) = doors.server.terminate();
    for answer in [&internal.0, &internal.1] {
        let errors = lines_of_request(&stdout, "ERROR", &answer.request_id);
        assert_eq!(errors.len(), 1, "one ERROR line for {}", answer.request_id);
        let span = &errors[0]["span"];
        assert_eq!(span["http.route"], "/auth/verify", "{span}");
        assert_eq!(span["client.ip"], "127.0.0.1", "{span}");
    }
    // A 503 is a DEBUG line per request (the outage is logged once by the follower), and a
    // 200 or 401 logs nothing at INFO: neither door logs more than the other.
    for answer in [&ok.0, &ok.1, &invalid.0, &invalid.1]
        .into_iter()
        .chain(unavailable.iter().flat_map(|(hot, routed)| [hot, routed]))
    {
        assert!(
            lines_of_request(&stdout, "INFO", &answer.request_id).is_empty()
                && lines_of_request(&stdout, "ERROR", &answer.request_id).is_empty(),
            "{} logged at INFO or ERROR",
            answer.request_id
        );
    }
}
