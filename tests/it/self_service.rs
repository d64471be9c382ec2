//! Self-service over real sockets: changing the password, the sessions (devices) list, ending
//! one session, the per-user session cap, deleting one's own account, and logout-all over
//! thousands of sessions.

use std::time::Duration as StdDuration;

use auth_service::clock::Clock as _;
use chrono::Duration;
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};

use crate::{
    dual_backend,
    helpers::*,
    local_verification::{FEED_TOKEN, feed},
    smtp_sink::SmtpSink,
};

const NEW_PASSWORD: &str = "NewSecurePass456";

/// How long a queued mail may take to reach the sink.
const MAIL_WITHIN: StdDuration = StdDuration::from_secs(10);

dual_backend!(
    a_password_change_ends_the_other_sessions_and_keeps_this_one,
    a_password_change_refuses_wrong_weak_same_and_locked,
    sessions_list_each_device_newest_first,
    ending_one_session_kills_its_tokens_and_nothing_else,
    unknown_ended_foreign_and_malformed_sids_get_one_identical_404,
    a_login_beyond_the_cap_ends_the_least_recently_used_session,
    deleting_oneself_takes_the_password_and_frees_the_email,
    logout_all_ends_thousands_of_sessions_with_constant_events,
);

/// Logs in with a `User-Agent`; the access and refresh tokens.
async fn login_from(app: &TestApp, email: &str, agent: &str) -> (String, String) {
    let response = app
        .client
        .post(app.url("/auth/login"))
        .header("user-agent", agent)
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = json_of(response).await;
    (
        body["access_token"].as_str().unwrap().to_owned(),
        body["refresh_token"].as_str().unwrap().to_owned(),
    )
}

async fn change(app: &TestApp, access: &str, current: &str, new: &str) -> Response {
    app.client
        .post(app.url("/auth/password/change"))
        .bearer_auth(access)
        .json(&json!({"current_password": current, "new_password": new}))
        .send()
        .await
        .unwrap()
}

async fn sessions(app: &TestApp, access: &str) -> Vec<Value> {
    let (status, body) = status_and_json(app.get_bearer("/auth/sessions", access).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["sessions"].as_array().unwrap().clone()
}

async fn end(app: &TestApp, access: &str, sid: &str) -> Response {
    app.client
        .delete(app.url(&format!("/auth/sessions/{sid}")))
        .bearer_auth(access)
        .send()
        .await
        .unwrap()
}

async fn delete_me(app: &TestApp, access: &str, password: &str) -> Response {
    app.client
        .delete(app.url("/auth/me"))
        .bearer_auth(access)
        .json(&json!({"password": password}))
        .send()
        .await
        .unwrap()
}

fn sid_of(token: &str) -> String {
    claims_of(token)["sid"].as_str().unwrap().to_owned()
}

fn remaining(response: &Response) -> Option<String> {
    header(response, "x-ratelimit-remaining")
}

async fn a_password_change_ends_the_other_sessions_and_keeps_this_one(backend: Backend) {
    // Arrange: two devices, both verified (and so cached) on two replicas.
    let sink = SmtpSink::start().await;
    let vars = sink.vars();
    let mut overrides: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    overrides.extend([
        ("EMAIL_VERIFICATION", "off"),
        ("MAIL_PRODUCT_NAME", "Shop"),
        ("REVOCATION_FEED_TOKENS", FEED_TOKEN),
    ]);
    let app = TestApp::spawn_with(backend, &overrides).await;
    let replica = TestApp::spawn_on(app.db.clone(), app.clock.clone(), &overrides).await;
    let email = "changer@example.com";
    let (_, this_access, this_refresh) = app.user_with_tokens(email).await;
    let (other_access, other_refresh) = app.tokens(email).await;
    for server in [&app, &replica] {
        for token in [&this_access, &other_access] {
            assert_eq!(server.verify(token).await.status(), StatusCode::OK);
        }
    }
    // Act
    let response = change(&app, &this_access, PASSWORD, NEW_PASSWORD).await;
    assert_eq!(remaining(&response).as_deref(), Some("5"));
    let (status, body) = status_and_json(response).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"message": "Password changed"}))
    );
    // Assert: the other session is dead here at once, there within a second, and in the feed;
    // this one lives on, access and refresh.
    let (status, body) = status_and_json(app.verify(&other_access).await).await;
    assert_error(
        status,
        &body,
        StatusCode::UNAUTHORIZED,
        "Invalid or expired token",
        "INVALID_TOKEN",
    );
    verify_becomes(&replica, &other_access, StatusCode::UNAUTHORIZED).await;
    assert_eq!(
        app.refresh(&other_refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );
    for server in [&app, &replica] {
        assert_eq!(server.verify(&this_access).await.status(), StatusCode::OK);
    }
    assert_eq!(app.refresh(&this_refresh).await.status(), StatusCode::OK);
    let (status, page) = feed(&replica, "").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let revoked: Vec<&str> = page["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["sid"].as_str().unwrap())
        .collect();
    assert_eq!(revoked, [sid_of(&other_access)], "{page}");
    assert_eq!(page["users"], json!([]), "no user-wide cut-off: {page}");
    // The new password is the password; a mail says so.
    assert_eq!(
        app.login(email, PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.login(email, NEW_PASSWORD).await.status(),
        StatusCode::OK
    );
    let mail = sink.wait_for(email, 1, MAIL_WITHIN).await.remove(0);
    assert_eq!(mail.subject(), "Your Shop password was changed");
    assert!(!mail.text().contains(NEW_PASSWORD));
}

async fn a_password_change_refuses_wrong_weak_same_and_locked(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let email = "careful@example.com";
    let (_, access, _) = app.user_with_tokens(email).await;
    // A weak or unchanged new password: 422, and no attempt counted.
    let response = change(&app, &access, PASSWORD, "zqxwvk").await;
    assert_eq!(remaining(&response), None, "the counter was not reached");
    let (status, body) = status_and_json(response).await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "Password validation failed: Password must be at least 8 characters long, \
         Password must contain at least one uppercase letter, Password must contain at least \
         one number",
        "WEAK_PASSWORD",
    );
    let (status, body) = status_and_json(change(&app, &access, PASSWORD, PASSWORD).await).await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "Password validation failed: must differ from the current password",
        "WEAK_PASSWORD",
    );
    // A wrong current password counts as a failed login does, with the same headers.
    for left in (0..5).rev() {
        let response = change(&app, &access, "WrongPass999", NEW_PASSWORD).await;
        assert_eq!(remaining(&response), Some(left.to_string()));
        assert_eq!(
            header(&response, "www-authenticate").as_deref(),
            Some("Bearer")
        );
        let (status, body) = status_and_json(response).await;
        assert_error(
            status,
            &body,
            StatusCode::UNAUTHORIZED,
            "Invalid email or password",
            "INVALID_CREDENTIALS",
        );
    }
    // Locked: even the right password is not checked, here and at login.
    for response in [
        change(&app, &access, PASSWORD, NEW_PASSWORD).await,
        app.login(email, PASSWORD).await,
    ] {
        assert!(header(&response, "retry-after").is_some());
        assert_eq!(remaining(&response).as_deref(), Some("0"));
        let (status, body) = status_and_json(response).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
        assert_eq!(body["error_code"], "TOO_MANY_ATTEMPTS");
    }
    // Nothing changed meanwhile.
    assert_eq!(app.verify(&access).await.status(), StatusCode::OK);
    app.clock.advance(Duration::minutes(16));
    assert_eq!(app.login(email, PASSWORD).await.status(), StatusCode::OK);
}

async fn sessions_list_each_device_newest_first(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let email = "devices@example.com";
    assert_eq!(
        app.register(email, PASSWORD).await.status(),
        StatusCode::CREATED
    );
    let long_agent = format!("Laptop/2.0 {}", "x".repeat(300));
    let (phone, phone_refresh) = login_from(&app, email, "Phone/1.0").await;
    app.clock.advance(Duration::seconds(5));
    let (laptop, _) = login_from(&app, email, &long_agent).await;
    let ended = app.tokens(email).await.1;
    assert_eq!(app.logout(&ended).await.status(), StatusCode::OK);
    app.clock.advance(Duration::seconds(5));
    // A refresh is a use of the phone's session.
    assert_eq!(app.refresh(&phone_refresh).await.status(), StatusCode::OK);
    let listed = sessions(&app, &laptop).await;
    let started = app.clock.now();
    let at = |offset: i64| {
        (started - Duration::seconds(offset)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    };
    assert_eq!(
        listed,
        [
            json!({
                "sid": sid_of(&laptop),
                "created_at": at(5),
                "last_used_at": at(5),
                "user_agent": long_agent.chars().take(256).collect::<String>(),
                "ip": "127.0.0.1",
                "current": true,
            }),
            json!({
                "sid": sid_of(&phone),
                "created_at": at(10),
                "last_used_at": at(0),
                "user_agent": "Phone/1.0",
                "ip": "127.0.0.1",
                "current": false,
            }),
        ],
        "the logged-out session is not listed"
    );
    // The same list from the phone marks the phone.
    let from_phone = sessions(&app, &phone).await;
    assert_eq!(from_phone[1]["current"], true);
    assert_eq!(from_phone[0]["current"], false);
    // Without a token: 401.
    let (status, body) = status_and_json(app.get("/auth/sessions").await).await;
    assert_error(
        status,
        &body,
        StatusCode::UNAUTHORIZED,
        "Authorization header missing",
        "MISSING_TOKEN",
    );
}

async fn ending_one_session_kills_its_tokens_and_nothing_else(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let replica = TestApp::spawn_on(app.db.clone(), app.clock.clone(), &[]).await;
    let email = "ender@example.com";
    let (_, keep_access, keep_refresh) = app.user_with_tokens(email).await;
    let (lost_access, lost_refresh) = app.tokens(email).await;
    assert_eq!(replica.verify(&lost_access).await.status(), StatusCode::OK);
    let (status, body) =
        status_and_json(end(&app, &keep_access, &sid_of(&lost_access)).await).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"message": "Session ended"}))
    );
    assert_eq!(
        app.verify(&lost_access).await.status(),
        StatusCode::UNAUTHORIZED
    );
    verify_becomes(&replica, &lost_access, StatusCode::UNAUTHORIZED).await;
    assert_eq!(
        app.refresh(&lost_refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(app.verify(&keep_access).await.status(), StatusCode::OK);
    assert_eq!(app.refresh(&keep_refresh).await.status(), StatusCode::OK);
    let listed = sessions(&app, &keep_access).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["sid"], sid_of(&keep_access));
}

async fn unknown_ended_foreign_and_malformed_sids_get_one_identical_404(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, mine, _) = app.user_with_tokens("me@example.com").await;
    let (ended_access, ended_refresh) = app.tokens("me@example.com").await;
    assert_eq!(app.logout(&ended_refresh).await.status(), StatusCode::OK);
    let (_, theirs, _) = app.user_with_tokens("them@example.com").await;
    let mut answers = Vec::new();
    for sid in [
        uuid::Uuid::new_v4().to_string(),
        sid_of(&ended_access),
        sid_of(&theirs),
        "not-a-session".to_owned(),
    ] {
        let response = end(&app, &mine, &sid).await;
        let status = response.status();
        let content_type = header(&response, "content-type");
        let bytes = response.bytes().await.unwrap();
        answers.push((status, content_type, bytes));
    }
    assert_eq!(answers[0].0, StatusCode::NOT_FOUND);
    let body: Value = serde_json::from_slice(&answers[0].2).unwrap();
    assert_eq!(
        body,
        json!({"detail": "Session not found", "error_code": "SESSION_NOT_FOUND"})
    );
    for answer in &answers[1..] {
        assert_eq!(answer, &answers[0], "every refusal is byte-identical");
    }
    // The other user's session was not touched.
    assert_eq!(app.verify(&theirs).await.status(), StatusCode::OK);
}

async fn a_login_beyond_the_cap_ends_the_least_recently_used_session(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let email = "collector@example.com";
    assert_eq!(
        app.register(email, PASSWORD).await.status(),
        StatusCode::CREATED
    );
    // 100 logins, one second apart; then the oldest is refreshed, so the second-oldest is the
    // least recently used.
    let mut logins = Vec::new();
    for _ in 0..100 {
        logins.push(app.tokens(email).await);
        app.clock.advance(Duration::seconds(1));
    }
    assert_eq!(app.refresh(&logins[0].1).await.status(), StatusCode::OK);
    app.clock.advance(Duration::seconds(1));
    assert_eq!(sessions(&app, &logins[0].0).await.len(), 100);
    // Act: the 101st.
    let (newest, _) = app.tokens(email).await;
    // Assert
    let (lru_access, lru_refresh) = &logins[1];
    assert_eq!(
        app.verify(lru_access).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.refresh(lru_refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );
    for (access, _) in [&logins[0], &logins[2], &logins[99]] {
        assert_eq!(app.verify(access).await.status(), StatusCode::OK);
    }
    let listed = sessions(&app, &newest).await;
    assert_eq!(listed.len(), 100);
    assert!(
        listed
            .iter()
            .all(|s| s["sid"].as_str() != Some(&sid_of(lru_access)))
    );
}

async fn deleting_oneself_takes_the_password_and_frees_the_email(backend: Backend) {
    // Mail that cannot be delivered stays queued: nothing listens on this port.
    let dead_smtp = format!("smtp://127.0.0.1:{}?tls=off", free_port());
    let overrides = [
        ("MAIL_URL", dead_smtp.as_str()),
        ("MAIL_FROM", "Shop <no-reply@shop.example.com>"),
    ];
    let app = TestApp::spawn_with(backend, &overrides).await;
    let replica = TestApp::spawn_on(app.db.clone(), app.clock.clone(), &overrides).await;
    let email = "leaver@example.com";
    let (_, access, refresh) = app.user_with_tokens(email).await;
    let (other_access, _) = app.tokens(email).await;
    assert_eq!(replica.verify(&other_access).await.status(), StatusCode::OK);
    // The registration's verification mail is queued and undeliverable.
    assert_eq!(app.store.pending_mail().await.unwrap(), 1);
    // A wrong password: 401, counted, nothing deleted.
    let response = delete_me(&app, &access, "WrongPass999").await;
    assert_eq!(remaining(&response).as_deref(), Some("4"));
    let (status, body) = status_and_json(response).await;
    assert_error(
        status,
        &body,
        StatusCode::UNAUTHORIZED,
        "Invalid email or password",
        "INVALID_CREDENTIALS",
    );
    assert_eq!(app.verify(&access).await.status(), StatusCode::OK);
    // Act
    let (status, body) = status_and_json(delete_me(&app, &access, PASSWORD).await).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"message": "Account deleted"}))
    );
    // Assert: every token dead here at once and there within a second, mail dropped, the
    // address free, the counter gone.
    for token in [&access, &other_access] {
        assert_eq!(app.verify(token).await.status(), StatusCode::UNAUTHORIZED);
        verify_becomes(&replica, token, StatusCode::UNAUTHORIZED).await;
    }
    assert_eq!(
        app.refresh(&refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(app.store.pending_mail().await.unwrap(), 0);
    assert_eq!(
        app.register(email, PASSWORD).await.status(),
        StatusCode::CREATED
    );
    let response = app.login(email, PASSWORD).await;
    assert_eq!(remaining(&response).as_deref(), Some("5"));
    assert_eq!(response.status(), StatusCode::OK);
}

async fn logout_all_ends_thousands_of_sessions_with_constant_events(backend: Backend) {
    const SEEDED: usize = 10_000;
    let app = TestApp::spawn(backend).await;
    let (big, access, _) = app.user_with_tokens("hoarder@example.com").await;
    let (_, bystander_access, bystander_refresh) =
        app.user_with_tokens("bystander@example.com").await;
    // Sessions seeded in the database directly, last used an hour ago (beyond the cap, as a
    // database from before it could hold), each with its refresh token.
    let hour_ago = (app.clock.now() - Duration::hours(1)).to_rfc3339();
    let month = (app.clock.now() + Duration::days(30)).to_rfc3339();
    let seed = match backend {
        Backend::Postgres => format!(
            "with s as (select gen_random_uuid() as id from generate_series(1, {SEEDED})),
             i as (insert into sessions (id, user_id, created_at, expires_at, last_used_at)
                   select id, {big}, '{hour_ago}', '{month}', '{hour_ago}' from s)
             insert into refresh_tokens (jti, user_id, family_id, issued_at, expires_at)
             select gen_random_uuid(), {big}, id, '{hour_ago}', '{month}' from s"
        ),
        Backend::Sqlite => format!(
            "with recursive n(k) as (select 1 union all select k + 1 from n where k < {SEEDED})
             insert into sessions (id, user_id, created_at, expires_at, last_used_at)
             select randomblob(16), {big}, '{hour_ago}', '{month}', '{hour_ago}' from n"
        ),
    };
    app.db.execute(&seed).await;
    if backend == Backend::Sqlite {
        app.db
            .execute(&format!(
                "insert into refresh_tokens (jti, user_id, family_id, issued_at, expires_at)
                 select randomblob(16), user_id, id, created_at, expires_at from sessions
                 where user_id = {big} and last_used_at = '{hour_ago}'"
            ))
            .await;
    }
    let before = app.store.last_event_id().await.unwrap();
    // Act: logout-all, and meanwhile another user's logout.
    let (all, other) = tokio::join!(app.logout_all(&access), app.logout(&bystander_refresh));
    // Assert
    assert_eq!(all.status(), StatusCode::OK);
    assert_eq!(other.status(), StatusCode::OK);
    assert_eq!(app.verify(&access).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.verify(&bystander_access).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let live = sessions_of(&app, big).await;
    assert_eq!(live, 0, "every seeded session ended");
    // One user-wide event, one for the login of this second, one for the bystander's logout:
    // not one per session.
    let events = app.store.events_since(before, 100_000).await.unwrap();
    assert_eq!(events.len(), 3, "{events:?}");
}

/// Live sessions of `user_id`, counted in the database.
async fn sessions_of(app: &TestApp, user_id: i64) -> i64 {
    let now = app.clock.now();
    i64::try_from(app.store.live_sessions(user_id, now).await.unwrap().len()).unwrap()
}
