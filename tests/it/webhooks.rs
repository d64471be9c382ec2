//! Webhooks over real sockets, on both databases, delivered to a receiver on a port of its own
//! that verifies every delivery with the `standardwebhooks` crate: every event type with its
//! body (through the API, the admin commands, the second factor and a software passkey); a
//! filtered list; a failure retried under the same `webhook-id` and an event given up; a 410
//! that stops its endpoint until restart; a receiver that hangs; a user's events first
//! attempted in order; two replicas delivering each event once; a rotated secret; and a
//! SIGKILL of the built binary with events pending while the receiver is down.

use std::{collections::HashSet, time::Duration};

use chrono::Duration as ChronoDuration;
use reqwest::StatusCode;
use serde_json::json;

use crate::{
    dual_backend,
    helpers::*,
    passkeys::registered,
    second_factor::{code_now, confirm, delete_bearer, enrol},
    webhook_receiver::{Delivery, Receiver, Reply, new_secret},
};

dual_backend!(
    every_event_is_delivered_signed_with_its_body,
    a_filtered_list_sends_only_its_events,
    a_failed_delivery_is_retried_with_the_same_id_until_it_is_given_up,
    a_410_stops_deliveries_to_that_endpoint_until_restart,
    a_receiver_that_hangs_is_cut_off_and_holds_back_no_other_endpoint,
    a_redirect_is_not_followed,
    a_users_events_are_first_attempted_in_the_order_they_happened,
    two_replicas_deliver_each_event_once,
    a_rotated_secret_signs_with_both,
    events_pending_at_a_sigkill_arrive_once_after_the_restart,
);

/// How long a delivery may take to show up (the worker looks at least every second).
const SOON: Duration = Duration::from_secs(20);

/// The webhook variables for `urls` signed with `secret`.
fn hooks<'a>(urls: &'a str, secret: &'a str) -> [(&'static str, &'a str); 2] {
    [("WEBHOOK_URLS", urls), ("WEBHOOK_SECRET", secret)]
}

/// Runs an admin command with the webhook variables (admin changes send events too).
async fn admin(app: &TestApp, vars: &[(&str, &str)], args: &[&str]) {
    let output = tokio::task::block_in_place(|| cli_with(&app.db, vars, args, ""));
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The types of `deliveries`, in arrival order.
fn types(deliveries: &[Delivery]) -> Vec<&str> {
    deliveries.iter().map(Delivery::event).collect()
}

/// The outbox's `webhook-id`s of `user_id`'s rows, in the order they were written.
async fn written_ids(app: &TestApp, user_id: i64) -> Vec<String> {
    app.db
        .texts(&format!(
            "select message_id from webhook_outbox where user_id = {user_id} order by id"
        ))
        .await
}

/// Waits (at most [`SOON`]) until `sql` counts `expected` rows, naming `what` if it never does.
async fn rows_become(app: &TestApp, what: &str, sql: &str, expected: i64) {
    poll_until(what, SOON, || async { app.db.count(sql).await == expected }).await;
}

#[track_caller]
fn assert_signed(delivery: &Delivery) {
    assert_eq!(delivery.verified, [true], "{delivery:?}");
    assert_eq!(delivery.signatures.len(), 1, "{delivery:?}");
    assert!(delivery.signatures[0].starts_with("v1,"), "{delivery:?}");
    assert!(delivery.id.starts_with("msg_"), "{delivery:?}");
    assert_eq!(delivery.content_type, "application/json");
}

async fn every_event_is_delivered_signed_with_its_body(backend: Backend) {
    let secret = new_secret();
    let receiver = Receiver::start(&[&secret]).await;
    let vars = hooks(&receiver.url, &secret);
    let app = TestApp::spawn_with(backend, &vars).await;
    // The admin commands run on the system clock: the app's runs a minute ahead, so their
    // events are due at once for its worker and its tokens are newer than their disable.
    app.clock.advance(ChronoDuration::minutes(1));
    let email = "events@example.com";
    // user.created, then user.mfa_enabled (as `enrolled` does, without moving the clock on
    // a time step: a jump past the outbox lease while a delivery is in flight would hand it
    // to another lane, as a replica that died mid-delivery would).
    let (user_id, aal1_access, _) = app.user_with_tokens(email).await;
    let (factor, totp_secret, _) = enrol(&app, &aal1_access).await;
    let (status, body) = confirm(&app, &aal1_access, &factor, &code_now(&app, &totp_secret)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let access = body["access_token"].as_str().unwrap().to_owned();
    // user.email_verified, by an admin (another process, the same outbox).
    admin(&app, &vars, &["user", "verify-email", email]).await;
    // user.passkey_added and user.passkey_removed.
    registered(&app, &access).await;
    let list = json_of(app.get_bearer("/auth/passkeys", &access).await).await;
    let passkey = list["passkeys"][0]["passkey_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let removed = delete_bearer(
        &app,
        &format!("/auth/passkeys/{passkey}"),
        &access,
        &json!({}),
    )
    .await;
    assert_eq!(removed.status(), StatusCode::OK);
    // user.mfa_disabled: the last factor removed.
    let removed = delete_bearer(
        &app,
        &format!("/auth/mfa/factors/{factor}"),
        &access,
        &json!({}),
    )
    .await;
    assert_eq!(removed.status(), StatusCode::OK);
    // user.password_changed.
    let new_password = "An0ther-Passw0rd!x";
    let changed = app
        .client
        .post(app.url("/auth/password/change"))
        .bearer_auth(&access)
        .json(&json!({"current_password": PASSWORD, "new_password": new_password}))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), StatusCode::OK);
    // user.sessions_ended.
    assert_eq!(app.logout_all(&access).await.status(), StatusCode::OK);
    // user.disabled, user.enabled, by an admin; disabling an enabled user twice sends one.
    admin(&app, &vars, &["user", "disable", email]).await;
    admin(&app, &vars, &["user", "disable", email]).await;
    admin(&app, &vars, &["user", "enable", email]).await;
    // user.deleted, by the user.
    let login = json_of(app.login(email, new_password).await).await;
    let last = login["access_token"].as_str().unwrap();
    let deleted = delete_bearer(&app, "/auth/me", last, &json!({"password": new_password})).await;
    assert_eq!(deleted.status(), StatusCode::OK);

    let expected = [
        "user.created",
        "user.mfa_enabled",
        "user.email_verified",
        "user.passkey_added",
        "user.passkey_removed",
        "user.mfa_disabled",
        "user.password_changed",
        "user.sessions_ended",
        "user.disabled",
        "user.enabled",
        "user.deleted",
    ];
    let deliveries = receiver.wait_for(expected.len(), SOON).await;
    let rows = app
        .db
        .texts("select message_id || ' ' || event_type || ' ' || attempts from webhook_outbox order by id")
        .await;
    assert_eq!(types(&deliveries), expected, "{rows:#?}");
    let mut ids = HashSet::new();
    for delivery in &deliveries {
        assert_signed(delivery);
        assert!(ids.insert(delivery.id.clone()), "one id per event");
        let body = delivery.body.as_object().unwrap();
        assert_eq!(
            body.keys().collect::<Vec<_>>(),
            ["data", "timestamp", "type"],
            "{body:?}"
        );
        assert_eq!(
            delivery.body["data"],
            json!({"user_id": user_id, "email": email})
        );
        let at = delivery.body["timestamp"].as_str().unwrap();
        chrono::DateTime::parse_from_rfc3339(at).expect("an RFC 3339 timestamp");
        let text = delivery.body.to_string();
        for secret in [PASSWORD, new_password, "$2b$", &access, &totp_secret] {
            assert!(!text.contains(secret), "{text}");
        }
    }
    // Nothing more comes (a second disable of a disabled user is no change).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(receiver.deliveries().len(), expected.len());
    // Delivered rows forget the address.
    rows_become(
        &app,
        "every row delivered",
        "select count(*) from webhook_outbox where delivered_at is null or email is not null",
        0,
    )
    .await;
}

async fn a_filtered_list_sends_only_its_events(backend: Backend) {
    let secret = new_secret();
    let receiver = Receiver::start(&[&secret]).await;
    let [urls, key] = hooks(&receiver.url, &secret);
    let app = TestApp::spawn_with(
        backend,
        &[
            urls,
            key,
            ("WEBHOOK_EVENTS", "user.deleted, user.sessions_ended"),
        ],
    )
    .await;
    let (_, access, _) = app.user_with_tokens("filtered@example.com").await;
    assert_eq!(app.logout_all(&access).await.status(), StatusCode::OK);
    let (access, _) = app.tokens("filtered@example.com").await;
    let deleted = delete_bearer(&app, "/auth/me", &access, &json!({"password": PASSWORD})).await;
    assert_eq!(deleted.status(), StatusCode::OK);
    let deliveries = receiver.wait_for(2, SOON).await;
    assert_eq!(types(&deliveries), ["user.sessions_ended", "user.deleted"]);
    // Nothing was written for the others (no row for user.created).
    assert_eq!(app.db.count("select count(*) from webhook_outbox").await, 2);
}

async fn a_failed_delivery_is_retried_with_the_same_id_until_it_is_given_up(backend: Backend) {
    let secret = new_secret();
    let receiver = Receiver::start(&[&secret]).await;
    let [urls, key] = hooks(&receiver.url, &secret);
    let app = TestApp::spawn_with(backend, &[urls, key, ("WEBHOOK_MAX_RETRY_HOURS", "1")]).await;
    receiver.script([Reply::Status(500)]);
    app.user_with_tokens("retried@example.com").await;
    let first = receiver.wait_for(1, SOON).await;
    assert_eq!(first[0].event(), "user.created");
    // The next attempt is due about 5 s later (4 to 6 with the jitter), not before.
    rows_become(
        &app,
        "the attempt recorded",
        "select count(*) from webhook_outbox where attempts = 1 and leased_until is null",
        1,
    )
    .await;
    app.clock.advance(ChronoDuration::seconds(3));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        receiver.deliveries().len(),
        1,
        "not retried before it is due"
    );
    app.clock.advance(ChronoDuration::seconds(4));
    let both = receiver.wait_for(2, SOON).await;
    assert_eq!(both[1].id, both[0].id, "the same webhook-id on a retry");
    assert_eq!(both[1].body, both[0].body);
    assert_signed(&both[0]);
    assert_signed(&both[1]);
    rows_become(
        &app,
        "delivered",
        "select count(*) from webhook_outbox where delivered_at is not null",
        1,
    )
    .await;

    // Given up once the next attempt would fall past WEBHOOK_MAX_RETRY_HOURS: attempts at
    // about 0 s, 5 s, 5 min and 35 min; the next (2 h 35 min) is past the hour.
    receiver.otherwise(Reply::Status(500));
    app.user_with_tokens("given-up@example.com").await;
    for (attempts, advance) in [(3, 7), (4, 6 * 60), (5, 36 * 60)] {
        receiver.wait_for(attempts, SOON).await;
        rows_become(
            &app,
            "the attempt recorded",
            "select count(*) from webhook_outbox where leased_until is not null",
            0,
        )
        .await;
        app.clock.advance(ChronoDuration::seconds(advance));
    }
    let all = receiver.wait_for(6, SOON).await;
    let given_up = &all[2..];
    assert!(given_up.iter().all(|d| d.id == given_up[0].id));
    rows_become(
        &app,
        "failed",
        "select count(*) from webhook_outbox \
                 where failed_at is not null and email is null and attempts = 4",
        1,
    )
    .await;
    app.clock.advance(ChronoDuration::hours(12));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(receiver.deliveries().len(), 6, "no attempt after giving up");
}

async fn a_410_stops_deliveries_to_that_endpoint_until_restart(backend: Backend) {
    let secret = new_secret();
    let gone = Receiver::start(&[&secret]).await;
    let live = Receiver::start(&[&secret]).await;
    gone.script([Reply::Status(410)]);
    let urls = format!("{},{}", gone.url, live.url);
    let vars = hooks(&urls, &secret);
    let app = TestApp::spawn_with(backend, &vars).await;
    app.user_with_tokens("first@example.com").await;
    gone.wait_for(1, SOON).await;
    live.wait_for(1, SOON).await;
    app.user_with_tokens("second@example.com").await;
    live.wait_for(2, SOON).await;
    app.clock.advance(ChronoDuration::minutes(10));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(gone.deliveries().len(), 1, "{:#?}", gone.deliveries());
    // Both events wait for it, undelivered.
    let waiting = format!(
        "select count(*) from webhook_outbox where endpoint = '{}' and delivered_at is null \
         and failed_at is null",
        gone.url
    );
    assert_eq!(app.db.count(&waiting).await, 2);
    // A restart delivers them.
    let (db, clock) = (app.db.clone(), app.clock.clone());
    drop(app.stop().await);
    let app = TestApp::spawn_on(db, clock, &vars).await;
    let deliveries = gone.wait_for(3, SOON).await;
    let mut after: Vec<&str> = deliveries[1..]
        .iter()
        .map(|d| d.body["data"]["email"].as_str().unwrap())
        .collect();
    after.sort_unstable();
    assert_eq!(after, ["first@example.com", "second@example.com"]);
    assert!(
        deliveries[1..].iter().any(|d| d.id == deliveries[0].id),
        "the 410'd event again"
    );
    rows_become(&app, "delivered", &waiting, 0).await;
}

async fn a_receiver_that_hangs_is_cut_off_and_holds_back_no_other_endpoint(backend: Backend) {
    let secret = new_secret();
    let hanging = Receiver::start(&[&secret]).await;
    let live = Receiver::start(&[&secret]).await;
    hanging.script([Reply::Hang]);
    let urls = format!("{},{}", hanging.url, live.url);
    let app = TestApp::spawn_with(backend, &hooks(&urls, &secret)).await;
    app.user_with_tokens("hang@example.com").await;
    hanging.wait_for(1, SOON).await;
    // The other endpoint gets this event and the next while the first hangs.
    app.user_with_tokens("meanwhile@example.com").await;
    live.wait_for(2, SOON).await;
    let in_flight = format!(
        "select count(*) from webhook_outbox where endpoint = '{}' and leased_until is not null",
        hanging.url
    );
    assert_eq!(app.db.count(&in_flight).await, 1, "still hanging");
    // Cut off (10 s) and scheduled again, never delivered by the hang.
    rows_become(&app, "the hanging attempt cut off", &in_flight, 0).await;
    app.clock.advance(ChronoDuration::seconds(7));
    let deliveries = hanging.wait_for(3, SOON).await;
    let first_event = &deliveries[0].id;
    assert!(deliveries[1..].iter().any(|d| &d.id == first_event));
    rows_become(
        &app,
        "delivered",
        "select count(*) from webhook_outbox where delivered_at is null",
        0,
    )
    .await;
}

async fn a_redirect_is_not_followed(backend: Backend) {
    let secret = new_secret();
    let moved = Receiver::start(&[&secret]).await;
    let elsewhere = Receiver::start(&[&secret]).await;
    moved.script([Reply::Redirect(elsewhere.url.clone())]);
    let app = TestApp::spawn_with(backend, &hooks(&moved.url, &secret)).await;
    app.user_with_tokens("redirected@example.com").await;
    moved.wait_for(1, SOON).await;
    rows_become(
        &app,
        "the attempt recorded",
        "select count(*) from webhook_outbox where attempts = 1 and leased_until is null",
        1,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        elsewhere.deliveries().is_empty(),
        "the redirect was followed"
    );
    // Not delivered: retried at its own endpoint.
    assert_eq!(
        app.db
            .count("select count(*) from webhook_outbox where delivered_at is null")
            .await,
        1
    );
    app.clock.advance(ChronoDuration::seconds(7));
    let both = moved.wait_for(2, SOON).await;
    assert_eq!(both[1].id, both[0].id);
    assert!(elsewhere.deliveries().is_empty());
}

async fn a_users_events_are_first_attempted_in_the_order_they_happened(backend: Backend) {
    let secret = new_secret();
    let receiver = Receiver::start(&[&secret]).await;
    // Each answer takes a while: without the ordering, four lanes would post a user's events
    // at once and they would arrive in any order.
    receiver.otherwise(Reply::Slow(200, Duration::from_millis(150)));
    receiver.script([Reply::Status(500)]);
    let app = TestApp::spawn_with(backend, &hooks(&receiver.url, &secret)).await;
    let (user, mut access, _) = app.user_with_tokens("ordered@example.com").await;
    for _ in 0..8 {
        assert_eq!(app.logout_all(&access).await.status(), StatusCode::OK);
        (access, _) = app.tokens("ordered@example.com").await;
    }
    let (other, _, _) = app.user_with_tokens("other@example.com").await;
    let written = written_ids(&app, user).await;
    assert_eq!(written.len(), 9);
    // Every first attempt, the failed one's retry after them (it holds back none).
    let arrived = receiver.wait_for(10, Duration::from_secs(30)).await;
    let of_user: Vec<&str> = arrived
        .iter()
        .filter(|d| d.body["data"]["user_id"] == user)
        .map(|d| d.id.as_str())
        .collect();
    assert_eq!(
        of_user[..9],
        written.iter().map(String::as_str).collect::<Vec<_>>()[..]
    );
    assert!(matches!(arrived[0].reply, Reply::Status(500)));
    assert!(arrived.iter().any(|d| d.body["data"]["user_id"] == other));
    app.clock.advance(ChronoDuration::seconds(7));
    let all = receiver.wait_for(11, SOON).await;
    assert_eq!(all[10].id, written[0], "the failed event retried last");
}

async fn two_replicas_deliver_each_event_once(backend: Backend) {
    let secret = new_secret();
    let receiver = Receiver::start(&[&secret]).await;
    let vars = hooks(&receiver.url, &secret);
    let db = TestDb::new(backend).await;
    let one = TestApp::spawn_on(db.clone(), auth_service::clock::TestClock::new(), &vars).await;
    let two = TestApp::spawn_on(db, auth_service::clock::TestClock::new(), &vars).await;
    for n in 0..30 {
        let app = if n % 2 == 0 { &one } else { &two };
        let response = app
            .register(&format!("replica{n}@example.com"), PASSWORD)
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    receiver.wait_for(30, SOON).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let deliveries = receiver.deliveries();
    assert_eq!(deliveries.len(), 30, "each event once");
    let ids: HashSet<&str> = deliveries.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids.len(), 30);
    deliveries.iter().for_each(assert_signed);
}

async fn a_rotated_secret_signs_with_both(backend: Backend) {
    let (new, old) = (new_secret(), new_secret());
    let receiver = Receiver::start(&[&new, &old]).await;
    let [urls, key] = hooks(&receiver.url, &new);
    let app = TestApp::spawn_with(backend, &[urls, key, ("WEBHOOK_SECRET_PREVIOUS", &old)]).await;
    app.user_with_tokens("rotated@example.com").await;
    let delivery = &receiver.wait_for(1, SOON).await[0];
    assert_eq!(delivery.signatures.len(), 2, "{delivery:?}");
    assert!(delivery.signatures.iter().all(|s| s.starts_with("v1,")));
    // A receiver on either secret accepts it.
    assert_eq!(delivery.verified, [true, true]);
}

async fn events_pending_at_a_sigkill_arrive_once_after_the_restart(backend: Backend) {
    let db = TestDb::new(backend).await;
    let secret = new_secret();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/hooks");
    let database = db.url_string();
    let vars = [
        ("DATABASE_URL", database.as_str()),
        ("BCRYPT_ROUNDS", "4"),
        ("JWT_SECRET_KEY", SECRET),
        ("WEBHOOK_URLS", url.as_str()),
        ("WEBHOOK_SECRET", secret.as_str()),
        // A transport that fails (nothing listens on port 1), so no mail line carries an
        // address and the log can be searched for one.
        ("MAIL_URL", "smtp://127.0.0.1:1?tls=off"),
        ("MAIL_FROM", "auth <auth@example.com>"),
    ];
    // The receiver is down: every attempt fails and is retried.
    let mut binary = Binary::spawn(&vars);
    if !binary.wait_ready() {
        let (_, out, err) = binary.terminate();
        panic!("not ready: {out} {err}");
    }
    let client = reqwest::Client::new();
    for n in 0..3 {
        let response = client
            .post(binary.url("/auth/register"))
            .json(&json!({"email": format!("killed{n}@example.com"), "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    poll_until("three failed attempts", SOON, || async {
        db.count("select count(*) from webhook_outbox where attempts >= 1 and leased_until is null")
            .await
            == 3
    })
    .await;
    let metrics = binary.metrics().await;
    assert!(
        metrics.contains("webhook_deliveries_total{result=\"retry\"}"),
        "{metrics}"
    );
    poll_until("the pending gauge", SOON, || async {
        binary.metrics().await.contains("webhook_outbox_pending 3")
    })
    .await;
    let (log, _) = binary.kill();
    // Each failed attempt is a WARN line with the event's type and id, never the address or
    // the endpoint's path.
    let retries: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("a webhook was not delivered; retrying"))
        .collect();
    assert!(retries.len() >= 3, "{log}");
    assert!(
        retries
            .iter()
            .all(|line| line.contains("\"webhook.type\":\"user.created\"")
                && line.contains("\"webhook.id\":\"msg_"))
    );
    assert!(
        !log.contains("@example.com\""),
        "an address in the log: {log}"
    );
    assert!(
        !log.contains("/hooks"),
        "the endpoint's path in the log: {log}"
    );
    let receiver = Receiver::start_on(port, &[&secret]).await;
    let mut binary = Binary::spawn(&vars);
    assert!(binary.wait_ready());
    let deliveries = receiver.wait_for(3, SOON).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let deliveries_after = receiver.deliveries();
    assert_eq!(deliveries_after.len(), 3, "none twice: {deliveries:?}");
    let emails: HashSet<&str> = deliveries_after
        .iter()
        .map(|d| d.body["data"]["email"].as_str().unwrap())
        .collect();
    assert_eq!(emails.len(), 3);
    deliveries_after.iter().for_each(assert_signed);
    poll_until("the delivered count", SOON, || async {
        let metrics = binary.metrics().await;
        metrics.contains("webhook_deliveries_total{result=\"delivered\"} 3")
            && metrics.contains("webhook_outbox_pending 0")
    })
    .await;
    let (code, _, _) = binary.terminate();
    assert_eq!(code, Some(0));
}

/// The events the contract lists, each in the crate's one place (a test that the list the
/// configuration accepts is the contract's).
#[test]
fn the_event_names_are_the_contracts() {
    let names: Vec<&str> = auth_service::store::WebhookEvent::ALL
        .iter()
        .map(|e| e.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "user.created",
            "user.email_verified",
            "user.password_changed",
            "user.disabled",
            "user.enabled",
            "user.deleted",
            "user.sessions_ended",
            "user.mfa_enabled",
            "user.mfa_disabled",
            "user.passkey_added",
            "user.passkey_removed",
        ]
    );
}
