//! bcrypt never holds the service hostage: past `PASSWORD_HASH_MAX_QUEUE` waiting requests a
//! login or registration gets 503 with `Retry-After` at once, the probes answer throughout a
//! login flood, and a registration of a taken email spends no hash.

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::json;

use crate::{dual_backend, helpers::*};

dual_backend!(
    a_login_flood_past_the_hash_queue_gets_503_at_once_and_probes_still_answer,
    a_registration_of_a_taken_email_spends_no_hash,
);

async fn a_login_flood_past_the_hash_queue_gets_503_at_once_and_probes_still_answer(
    backend: Backend,
) {
    // Arrange: real bcrypt cost, room for one waiting request.
    let app = TestApp::spawn_with(
        backend,
        &[("BCRYPT_ROUNDS", "12"), ("PASSWORD_HASH_MAX_QUEUE", "1")],
    )
    .await;
    let hash = bcrypt::hash(PASSWORD, 12).unwrap();
    for i in 0..12 {
        app.store
            .insert_user(&format!("flood{i}@example.com"), &hash, chrono::Utc::now())
            .await
            .unwrap();
    }
    // Act: twelve logins at once, and the liveness probe while they run.
    let emails: Vec<String> = (0..12).map(|i| format!("flood{i}@example.com")).collect();
    let logins = join_all(emails.iter().map(|email| app.login(email, PASSWORD)));
    let probes = async {
        let mut statuses = Vec::new();
        for _ in 0..5 {
            statuses.push(app.get("/health/live").await.status());
        }
        statuses
    };
    let (responses, probes) = tokio::join!(logins, probes);
    // Assert
    assert!(probes.iter().all(|s| *s == StatusCode::OK), "{probes:?}");
    let mut ok = 0;
    let mut refused = 0;
    for response in responses {
        match response.status() {
            StatusCode::OK => ok += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                refused += 1;
                assert_eq!(header(&response, "retry-after").as_deref(), Some("1"));
                let body = json_of(response).await;
                assert_eq!(
                    body,
                    json!({"detail": "Service temporarily unavailable", "error_code": "SERVICE_UNAVAILABLE"})
                );
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(ok >= 1, "some logins were served");
    assert!(
        refused >= 1,
        "12 logins on {} bcrypt threads with a queue of 1",
        std::thread::available_parallelism().map_or(2, std::num::NonZero::get)
    );
    // Registration goes through the same queue.
    let new: Vec<String> = emails.iter().map(|email| format!("new-{email}")).collect();
    let registrations = join_all(new.iter().map(|email| app.register(email, PASSWORD))).await;
    let statuses: Vec<StatusCode> = registrations
        .iter()
        .map(reqwest::Response::status)
        .collect();
    assert!(
        statuses.contains(&StatusCode::SERVICE_UNAVAILABLE),
        "{statuses:?}"
    );
    assert!(statuses.contains(&StatusCode::CREATED), "{statuses:?}");
}

async fn a_registration_of_a_taken_email_spends_no_hash(backend: Backend) {
    // The real binary: its metrics count this test's hashes only.
    let db = TestDb::new(backend).await;
    let url = db.url_string();
    let mut binary = Binary::spawn(&[
        ("DATABASE_URL", url.as_str()),
        ("JWT_SECRET_KEY", SECRET),
        ("BCRYPT_ROUNDS", "4"),
    ]);
    assert!(tokio::task::block_in_place(|| binary.wait_ready()));
    let client = reqwest::Client::new();
    let register = || {
        client
            .post(binary.url("/auth/register"))
            .json(&json!({"email": "taken@example.com", "password": PASSWORD}))
            .send()
    };
    assert_eq!(register().await.unwrap().status(), StatusCode::CREATED);
    for _ in 0..3 {
        assert_eq!(register().await.unwrap().status(), StatusCode::CONFLICT);
    }
    let metrics = binary.metrics().await;
    tokio::task::block_in_place(|| binary.terminate());
    let hashes = metrics
        .lines()
        .find_map(|l| l.strip_prefix("password_hash_wait_seconds_count "))
        .map(|v| v.trim().parse::<f64>().unwrap());
    assert_eq!(hashes, Some(1.0), "one hash for one account: {metrics}");
}
