//! Account recovery by mail, over real sockets: the app sends to an SMTP sink, and the tests
//! take the links from the received messages, as a user would.

use std::time::Duration as StdDuration;

use chrono::Duration;
use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::Connection as _;

use auth_service::clock::Clock as _;

use crate::{dual_backend, helpers::*, smtp_sink::SmtpSink};

/// How long a queued mail may take to reach the sink (the worker is woken at once).
const MAIL_WITHIN: StdDuration = StdDuration::from_secs(10);

const NEW_PASSWORD: &str = "NewSecurePass456";

dual_backend!(
    shutdown_lets_the_mail_being_sent_finish,
    forgot_mail_reset_login_is_the_whole_loop,
    known_unknown_and_disabled_emails_get_the_same_answer,
    reset_mails_are_throttled_per_email_silently,
    expired_used_and_voided_tokens_are_refused,
    concurrent_resets_with_one_token_succeed_once,
    a_weak_new_password_is_refused_and_spends_nothing,
    a_mail_queued_while_smtp_is_down_arrives_once_it_is_back,
    registration_mails_a_link_that_verifies_the_address,
    a_process_killed_mid_send_leaves_the_mail_to_the_next_one,
    a_reset_clears_the_lockout,
    a_login_checked_before_a_reset_commits_starts_no_session,
    no_usable_token_is_ever_at_rest_in_the_database,
    a_reset_mail_goes_ahead_of_queued_verification_mails,
    two_replicas_over_a_slow_relay_send_each_mail_once,
    every_mail_has_a_message_id_kept_across_retries_and_says_it_is_automatic,
    mail_goes_to_the_domain_the_user_typed_never_a_case_folded_one,
    resend_by_email_is_the_way_back_for_a_user_required_verification_keeps_out,
    an_address_gets_ten_verification_and_reset_mails_an_hour_whatever_the_cause,
    junk_reset_tokens_cost_no_password_hash,
    a_password_change_logout_all_admin_set_or_disable_voids_older_reset_links,
    a_reset_racing_a_new_forgot_never_fails_the_request,
    required_verification_refuses_the_login_only_after_the_password,
    with_verification_off_nothing_is_mailed,
    resend_is_quiet_throttled_and_voids_the_older_link,
);

async fn app_with_sink(backend: Backend, extra: &[(&str, &str)]) -> (TestApp, SmtpSink) {
    // No verification mail at registration unless a test asks for it: the reset tests count
    // reset mails.
    let mut overrides = vec![("EMAIL_VERIFICATION", "off"), ("MAIL_PRODUCT_NAME", "Shop")];
    overrides.extend_from_slice(extra);
    SmtpSink::with_app(backend, &overrides).await
}

async fn forgot(app: &TestApp, email: &str) -> reqwest::Response {
    app.post_json("/auth/password/forgot", &json!({ "email": email }))
        .await
}

async fn reset(app: &TestApp, token: &str, password: &str) -> (StatusCode, Value) {
    status_and_json(
        app.post_json(
            "/auth/password/reset",
            &json!({"token": token, "new_password": password}),
        )
        .await,
    )
    .await
}

async fn forgot_mail_reset_login_is_the_whole_loop(backend: Backend) {
    let (app, sink) = app_with_sink(backend, &[]).await;
    let email = "forgetful@example.com";
    let (_, access, refresh) = app.user_with_tokens(email).await;
    let replica = TestApp::spawn_on(app.db.clone(), app.clock.clone(), &[]).await;
    assert_eq!(replica.verify(&access).await.status(), StatusCode::OK);
    // Act: forgot, then the link of the mail.
    let (status, body) = status_and_json(forgot(&app, email).await).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(
        body,
        json!({"message": "If an account exists for this email, a password reset link has been sent"})
    );
    let mail = sink.wait_for(email, 1, MAIL_WITHIN).await.remove(0);
    assert_eq!(mail.subject(), "Reset your Shop password");
    let text = mail.text();
    assert_eq!(
        text.matches("Shop").count(),
        1,
        "the product named once: {text}"
    );
    assert!(
        // The hosted page at PUBLIC_URL's default, the service's own address.
        text.contains("http://localhost:8001/account/reset-password?token="),
        "{text}"
    );
    assert!(
        mail.html()
            .contains("href=\"http://localhost:8001/account/reset-password?token=")
    );
    assert!(!text.contains(PASSWORD), "no password in a mail");
    let token = mail.link_token();
    let (status, body) = reset(&app, &token, NEW_PASSWORD).await;
    assert_eq!(
        (status, body),
        (
            StatusCode::OK,
            json!({"message": "Password has been reset"})
        )
    );
    // Assert: the new password works, the old one does not, every session ended.
    assert_eq!(
        app.login(email, PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let (status, body) = status_and_json(app.login(email, NEW_PASSWORD).await).await;
    assert_eq!(status, StatusCode::OK);
    let fresh = body["access_token"].as_str().unwrap();
    assert_eq!(
        claims_of(fresh)["email_verified"],
        true,
        "a reset proves the address"
    );
    verify_becomes(&app, &access, StatusCode::UNAUTHORIZED).await;
    // Another replica refuses it within the contract's second, through the event.
    verify_becomes(&replica, &access, StatusCode::UNAUTHORIZED).await;
    assert_eq!(
        app.refresh(&refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );
    // The notification follows; the token works once.
    let mails = sink.wait_for(email, 2, MAIL_WITHIN).await;
    assert_eq!(mails[1].subject(), "Your Shop password was changed");
    assert!(!mails[1].text().contains(&token));
    let (status, body) = reset(&app, &token, "AnotherPass789").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body,
        json!({"detail": "Invalid or expired reset token", "error_code": "INVALID_RESET_TOKEN"})
    );
    // Sent mail keeps no link: the outbox forgets the token once delivered.
    assert_eq!(app.store.pending_mail().await.unwrap(), 0);
}

async fn known_unknown_and_disabled_emails_get_the_same_answer(backend: Backend) {
    let (app, sink) = app_with_sink(backend, &[]).await;
    app.register("known@example.com", PASSWORD).await;
    app.register("disabled@example.com", PASSWORD).await;
    let out = cli_async(&app.db, &["user", "disable", "disabled@example.com"], "").await;
    assert!(out.status.success(), "{out:?}");
    let mut answers = Vec::new();
    for email in [
        "known@example.com",
        "unknown@example.com",
        "disabled@example.com",
    ] {
        let response = forgot(&app, email).await;
        let mut headers: Vec<(String, String)> = response
            .headers()
            .iter()
            .filter(|(name, _)| !["date", "x-request-id"].contains(&name.as_str()))
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        headers.sort();
        let status = response.status();
        let body = response.bytes().await.unwrap();
        answers.push((status, headers, body));
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");
    // Only the known, active user gets a mail.
    sink.wait_for("known@example.com", 1, MAIL_WITHIN).await;
    app.settled().await;
    let to: Vec<Vec<String>> = sink.received().into_iter().map(|m| m.to).collect();
    assert_eq!(to, [vec!["known@example.com".to_owned()]]);
    // A malformed email is 422 INVALID_EMAIL, as at registration.
    let (status, body) = status_and_json(forgot(&app, "not-an-email").await).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error_code"], "INVALID_EMAIL");
}

async fn reset_mails_are_throttled_per_email_silently(backend: Backend) {
    let (app, sink) = app_with_sink(backend, &[]).await;
    let email = "impatient@example.com";
    app.register(email, PASSWORD).await;
    // Three requests at once: one mail, three 202s.
    for _ in 0..3 {
        assert_eq!(forgot(&app, email).await.status(), StatusCode::ACCEPTED);
    }
    sink.wait_for(email, 1, MAIL_WITHIN).await;
    // One a minute at most, five an hour at most.
    for expected in 2..=5 {
        app.clock.advance(Duration::seconds(61));
        assert_eq!(forgot(&app, email).await.status(), StatusCode::ACCEPTED);
        sink.wait_for(email, expected, MAIL_WITHIN).await;
    }
    app.clock.advance(Duration::seconds(61));
    assert_eq!(forgot(&app, email).await.status(), StatusCode::ACCEPTED);
    app.settled().await;
    assert_eq!(
        sink.for_address(email).len(),
        5,
        "the sixth in an hour is dropped"
    );
    // An hour after the first, there is room again.
    app.clock.advance(Duration::minutes(60));
    assert_eq!(forgot(&app, email).await.status(), StatusCode::ACCEPTED);
    sink.wait_for(email, 6, MAIL_WITHIN).await;
}

async fn expired_used_and_voided_tokens_are_refused(backend: Backend) {
    let (app, sink) = app_with_sink(backend, &[]).await;
    let email = "tokens@example.com";
    app.register(email, PASSWORD).await;
    forgot(&app, email).await;
    let first = sink.wait_for(email, 1, MAIL_WITHIN).await[0].link_token();
    // A newer token voids the older one.
    app.clock.advance(Duration::seconds(61));
    forgot(&app, email).await;
    let second = sink.wait_for(email, 2, MAIL_WITHIN).await[1].link_token();
    assert_ne!(first, second);
    assert_eq!(
        reset(&app, &first, NEW_PASSWORD).await.0,
        StatusCode::BAD_REQUEST
    );
    // Past PASSWORD_RESET_TOKEN_MINUTES (30) the newer one has expired too.
    app.clock.advance(Duration::minutes(31));
    assert_eq!(
        reset(&app, &second, NEW_PASSWORD).await.0,
        StatusCode::BAD_REQUEST
    );
    // Garbage and a made-up token of the right shape.
    for token in ["", "garbage", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"] {
        assert_eq!(
            reset(&app, token, NEW_PASSWORD).await.0,
            StatusCode::BAD_REQUEST,
            "{token}"
        );
    }
    assert_eq!(
        app.login(email, PASSWORD).await.status(),
        StatusCode::OK,
        "unchanged"
    );
}

async fn concurrent_resets_with_one_token_succeed_once(backend: Backend) {
    let (app, sink) = app_with_sink(backend, &[]).await;
    let email = "race@example.com";
    app.register(email, PASSWORD).await;
    forgot(&app, email).await;
    let token = sink.wait_for(email, 1, MAIL_WITHIN).await[0].link_token();
    let passwords: Vec<String> = (0..8).map(|i| format!("RacePass{i}xyz")).collect();
    let statuses = join_all(passwords.iter().map(|p| reset(&app, &token, p))).await;
    let winners: Vec<usize> = statuses
        .iter()
        .enumerate()
        .filter(|(_, (s, _))| *s == StatusCode::OK)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(winners.len(), 1, "{statuses:?}");
    assert!(
        statuses
            .iter()
            .all(|(s, _)| *s == StatusCode::OK || *s == StatusCode::BAD_REQUEST)
    );
    let won = &passwords[winners[0]];
    assert_eq!(app.login(email, won).await.status(), StatusCode::OK);
}

async fn a_weak_new_password_is_refused_and_spends_nothing(backend: Backend) {
    let (app, sink) = app_with_sink(backend, &[]).await;
    let email = "weak@example.com";
    app.register(email, PASSWORD).await;
    forgot(&app, email).await;
    let token = sink.wait_for(email, 1, MAIL_WITHIN).await[0].link_token();
    let (status, body) = reset(&app, &token, "short").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error_code"], "WEAK_PASSWORD");
    assert_eq!(reset(&app, &token, NEW_PASSWORD).await.0, StatusCode::OK);
}

async fn a_mail_queued_while_smtp_is_down_arrives_once_it_is_back(backend: Backend) {
    // The server the app is pointed at does not listen yet.
    let port = free_port();
    let url = format!("smtp://127.0.0.1:{port}?tls=off");
    let app = TestApp::spawn_with(
        backend,
        &[
            ("MAIL_URL", &url),
            ("MAIL_FROM", "no-reply@shop.example.com"),
            ("EMAIL_VERIFICATION", "off"),
        ],
    )
    .await;
    let email = "patient@example.com";
    app.register(email, PASSWORD).await;
    assert_eq!(forgot(&app, email).await.status(), StatusCode::ACCEPTED);
    // The first attempt fails (connection refused) and is retried after its backoff (30 s
    // +-20% on the app's clock): the message is due again later than now.
    let now = app.clock.now();
    poll_until("the retry to be scheduled", MAIL_WITHIN, || async {
        app.store
            .next_mail_due()
            .await
            .unwrap()
            .is_some_and(|due| due > now + Duration::seconds(20))
    })
    .await;
    assert_eq!(app.store.pending_mail().await.unwrap(), 1, "still queued");
    let sink = SmtpSink::start_on(port).await;
    app.clock.advance(Duration::seconds(40));
    sink.wait_for(email, 1, MAIL_WITHIN).await;
    app.settled().await;
    assert_eq!(sink.for_address(email).len(), 1, "once");
}

/// The SMTP password in `MAIL_URL` never reaches a log line: not at start-up (the
/// configuration is logged), not when sending fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mail_password_never_reaches_the_logs() {
    let mut binary = Binary::spawn(&[
        ("MAIL_URL", "smtp://mailer:hunter2-mail@127.0.0.1:1?tls=off"),
        ("MAIL_FROM", "no-reply@shop.example.com"),
        ("JWT_SECRET_KEY", SECRET),
        ("BCRYPT_ROUNDS", "4"),
        ("LOG_LEVEL", "debug"),
        ("EMAIL_VERIFICATION", "off"),
    ]);
    assert!(tokio::task::block_in_place(|| binary.wait_ready()));
    let client = reqwest::Client::new();
    let credentials = json!({"email": "logs@example.com", "password": PASSWORD});
    client
        .post(binary.url("/auth/register"))
        .json(&credentials)
        .send()
        .await
        .unwrap();
    let response = client
        .post(binary.url("/auth/password/forgot"))
        .json(&json!({"email": "logs@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    // The worker tries (connection refused) and logs the retry.
    binary
        .wait_for_output("a mail was not delivered; retrying", MAIL_WITHIN)
        .await;
    let (_, stdout, stderr) = binary.terminate();
    let logs = format!("{stdout}{stderr}");
    assert!(
        logs.contains("a mail was not delivered; retrying"),
        "{logs}"
    );
    assert!(!logs.contains("hunter2-mail"), "{logs}");
    assert!(
        !logs.contains("logs@example.com"),
        "no address in the logs: {logs}"
    );
}

/// Two replicas on one database, each with its worker: every message goes once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_send_each_mail_once() {
    let sink = SmtpSink::start().await;
    let vars = sink.vars();
    let mut overrides: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    overrides.push(("EMAIL_VERIFICATION", "off"));
    let first = TestApp::spawn_with(Backend::Postgres, &overrides).await;
    let second = TestApp::spawn_on(first.db.clone(), first.clock.clone(), &overrides).await;
    let emails: Vec<String> = (0..12).map(|i| format!("replica{i}@example.com")).collect();
    for (i, email) in emails.iter().enumerate() {
        let app = if i % 2 == 0 { &first } else { &second };
        app.register(email, PASSWORD).await;
        assert_eq!(forgot(app, email).await.status(), StatusCode::ACCEPTED);
    }
    for email in &emails {
        sink.wait_for(email, 1, MAIL_WITHIN).await;
    }
    // Both workers keep polling; nothing goes twice: once every message is recorded sent,
    // no worker claims one again.
    first.settled().await;
    second.settled().await;
    for email in &emails {
        assert_eq!(sink.for_address(email).len(), 1, "{email}");
    }
    assert_eq!(sink.received().len(), emails.len());
}

async fn verified_claim(app: &TestApp, email: &str, password: &str) -> (Value, Value) {
    let (status, body) = status_and_json(app.login(email, password).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let access = body["access_token"].as_str().unwrap().to_owned();
    let (_, verified) = status_and_json(app.verify(&access).await).await;
    (
        claims_of(&access)["email_verified"].clone(),
        verified["email_verified"].clone(),
    )
}

async fn verify(app: &TestApp, token: &str) -> (StatusCode, Value) {
    status_and_json(
        app.post_json("/auth/email/verify", &json!({ "token": token }))
            .await,
    )
    .await
}

async fn resend(app: &TestApp, access: &str) -> StatusCode {
    app.client
        .post(app.url("/auth/email/resend"))
        .bearer_auth(access)
        .send()
        .await
        .unwrap()
        .status()
}

async fn registration_mails_a_link_that_verifies_the_address(backend: Backend) {
    let (app, sink) = app_with_sink(backend, &[("EMAIL_VERIFICATION", "optional")]).await;
    let email = "new@example.com";
    app.register(email, PASSWORD).await;
    let mail = sink.wait_for(email, 1, MAIL_WITHIN).await.remove(0);
    assert_eq!(mail.subject(), "Confirm your email address for Shop");
    assert!(
        mail.text()
            .contains("http://localhost:8001/account/verify-email?token=")
    );
    // Unverified: tokens and /auth/verify say so (optional: the login works).
    assert_eq!(
        verified_claim(&app, email, PASSWORD).await,
        (json!(false), json!(false))
    );
    let (status, body) = verify(&app, &mail.link_token()).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"message": "Email verified"}))
    );
    assert_eq!(
        verified_claim(&app, email, PASSWORD).await,
        (json!(true), json!(true))
    );
    // Once only.
    let (status, body) = verify(&app, &mail.link_token()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body,
        json!({"detail": "Invalid or expired verification token", "error_code": "INVALID_VERIFICATION_TOKEN"})
    );
    assert_eq!(verify(&app, "garbage").await.0, StatusCode::BAD_REQUEST);
}

async fn required_verification_refuses_the_login_only_after_the_password(backend: Backend) {
    let (app, sink) = app_with_sink(backend, &[("EMAIL_VERIFICATION", "required")]).await;
    let email = "strict@example.com";
    app.register(email, PASSWORD).await;
    let token = sink.wait_for(email, 1, MAIL_WITHIN).await[0].link_token();
    // A wrong password says nothing about verification.
    let (status, body) = status_and_json(app.login(email, "WrongPass123").await).await;
    assert_eq!(
        (status, &body["error_code"]),
        (StatusCode::UNAUTHORIZED, &json!("INVALID_CREDENTIALS"))
    );
    let (status, body) = status_and_json(app.login(email, PASSWORD).await).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body,
        json!({"detail": "Email not verified", "error_code": "EMAIL_NOT_VERIFIED"})
    );
    assert_eq!(verify(&app, &token).await.0, StatusCode::OK);
    assert_eq!(
        verified_claim(&app, email, PASSWORD).await,
        (json!(true), json!(true))
    );
}

async fn with_verification_off_nothing_is_mailed(backend: Backend) {
    let (app, sink) = app_with_sink(backend, &[("EMAIL_VERIFICATION", "off")]).await;
    let (_, access, _) = app.user_with_tokens("quiet@example.com").await;
    assert_eq!(resend(&app, &access).await, StatusCode::ACCEPTED);
    app.settled().await;
    assert!(sink.received().is_empty());
    assert_eq!(app.store.pending_mail().await.unwrap(), 0);
}

async fn resend_is_quiet_throttled_and_voids_the_older_link(backend: Backend) {
    let (app, sink) = app_with_sink(backend, &[("EMAIL_VERIFICATION", "optional")]).await;
    let email = "again@example.com";
    let (_, access, _) = app.user_with_tokens(email).await;
    let first = sink.wait_for(email, 1, MAIL_WITHIN).await[0].link_token();
    // Within 60 s of the last one: 202, nothing queued.
    assert_eq!(resend(&app, &access).await, StatusCode::ACCEPTED);
    app.settled().await;
    assert_eq!(sink.for_address(email).len(), 1);
    app.clock.advance(Duration::seconds(61));
    assert_eq!(resend(&app, &access).await, StatusCode::ACCEPTED);
    let second = sink.wait_for(email, 2, MAIL_WITHIN).await[1].link_token();
    assert_eq!(
        verify(&app, &first).await.0,
        StatusCode::BAD_REQUEST,
        "voided"
    );
    assert_eq!(verify(&app, &second).await.0, StatusCode::OK);
    // Verified: nothing more, still 202.
    app.clock.advance(Duration::seconds(61));
    assert_eq!(resend(&app, &access).await, StatusCode::ACCEPTED);
    app.settled().await;
    assert_eq!(sink.for_address(email).len(), 2);
    // Without a token the address is the body (see
    // `resend_by_email_is_the_way_back_for_a_user_required_verification_keeps_out`): none is
    // a 422.
    let response = app
        .client
        .post(app.url("/auth/email/resend"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

/// SIGKILL between claiming a message and sending it: the row stays leased, and the next
/// process sends it once the lease (30 s) has run out. The first SMTP server accepts the
/// connection and never answers, so the kill lands mid-send.
async fn a_process_killed_mid_send_leaves_the_mail_to_the_next_one(backend: Backend) {
    let db = TestDb::new(backend).await;
    let stalling = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stalling_url = format!(
        "smtp://127.0.0.1:{}?tls=off",
        stalling.local_addr().unwrap().port()
    );
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((socket, _)) = stalling.accept().await {
            sockets.push(socket);
        }
    });
    let database = db.url_string();
    let vars = |mail_url: &str| {
        vec![
            ("DATABASE_URL", database.clone()),
            ("JWT_SECRET_KEY", SECRET.to_owned()),
            ("BCRYPT_ROUNDS", "4".to_owned()),
            ("EMAIL_VERIFICATION", "off".to_owned()),
            ("MAIL_URL", mail_url.to_owned()),
            ("MAIL_FROM", "no-reply@shop.example.com".to_owned()),
        ]
    };
    let first_vars = vars(&stalling_url);
    let first_refs: Vec<(&str, &str)> = first_vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut first = Binary::spawn(&first_refs);
    assert!(tokio::task::block_in_place(|| first.wait_ready()));
    let client = reqwest::Client::new();
    let email = "crash@example.com";
    client
        .post(first.url("/auth/register"))
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    let response = client
        .post(first.url("/auth/password/forgot"))
        .json(&json!({ "email": email }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    // The worker has claimed the message (its lease runs) and waits for the server's
    // greeting: kill it.
    let store = db.store().await;
    poll_until("the worker to claim the mail", MAIL_WITHIN, || async {
        let due = store.next_mail_due().await.unwrap();
        due.is_some_and(|due| due > chrono::Utc::now())
    })
    .await;
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    assert_eq!(store.pending_mail().await.unwrap(), 1, "nothing lost");
    // The next process, with a working server, sends it after the lease.
    let sink = SmtpSink::start().await;
    let sink_url = format!("smtp://127.0.0.1:{}?tls=off", sink.port);
    let second_vars = vars(&sink_url);
    let second_refs: Vec<(&str, &str)> =
        second_vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut second = Binary::spawn(&second_refs);
    assert!(tokio::task::block_in_place(|| second.wait_ready()));
    sink.wait_for(email, 1, StdDuration::from_secs(45)).await;
    poll_until("the mail to be recorded sent", MAIL_WITHIN, || async {
        store.pending_mail().await.unwrap() == 0
    })
    .await;
    assert_eq!(sink.for_address(email).len(), 1, "once");
    tokio::task::block_in_place(|| second.terminate());
    held.abort();
}

/// `MAIL_URL=log` (the default) sends nothing and logs each message at INFO on target `mail`,
/// link included, after a start-up warning: what a developer reads instead of a mailbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_transport_logs_each_message_with_its_link() {
    let mut binary = Binary::spawn(&[
        ("JWT_SECRET_KEY", SECRET),
        ("BCRYPT_ROUNDS", "4"),
        ("EMAIL_VERIFICATION", "optional"),
    ]);
    assert!(tokio::task::block_in_place(|| binary.wait_ready()));
    let response = reqwest::Client::new()
        .post(binary.url("/auth/register"))
        .json(&json!({"email": "dev@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    binary
        .wait_for_output("\"target\":\"mail\"", MAIL_WITHIN)
        .await;
    let port = binary.port.clone();
    let (_, stdout, _) = tokio::task::block_in_place(|| binary.terminate());
    let lines: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        lines.iter().any(|l| l["level"] == "WARN"
            && l["message"]
                .as_str()
                .unwrap_or_default()
                .contains("MAIL_URL is log")),
        "{stdout}"
    );
    let mail = lines
        .iter()
        .find(|l| l["target"] == "mail")
        .unwrap_or_else(|| panic!("no mail line: {stdout}"));
    assert_eq!(mail["level"], "INFO");
    assert_eq!(mail["to"], "dev@example.com");
    assert!(
        mail["body"].as_str().unwrap().contains(&format!(
            "http://localhost:{port}/account/verify-email?token="
        )),
        "{mail}"
    );
}

async fn a_reset_clears_the_lockout(backend: Backend) {
    let (app, sink) = app_with_sink(backend, &[]).await;
    let email = "locked@example.com";
    app.register(email, PASSWORD).await;
    for _ in 0..5 {
        app.login(email, "WrongPass123").await;
    }
    assert_eq!(
        app.login(email, PASSWORD).await.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "locked"
    );
    forgot(&app, email).await;
    let token = sink.wait_for(email, 1, MAIL_WITHIN).await[0].link_token();
    assert_eq!(reset(&app, &token, NEW_PASSWORD).await.0, StatusCode::OK);
    assert_eq!(
        app.login(email, NEW_PASSWORD).await.status(),
        StatusCode::OK,
        "the reset cleared the lockout"
    );
}

/// A server that refuses the recipient for good (550): the message fails at once, counted in
/// `mail_failed_total`, with one ERROR line that names neither the address nor the link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_refusal_fails_the_message_with_an_error_line_and_no_address() {
    let sink = SmtpSink::start_rejecting().await;
    let url = format!("smtp://127.0.0.1:{}?tls=off", sink.port);
    let mut binary = Binary::spawn(&[
        ("MAIL_URL", &url),
        ("MAIL_FROM", "no-reply@shop.example.com"),
        ("JWT_SECRET_KEY", SECRET),
        ("BCRYPT_ROUNDS", "4"),
        ("EMAIL_VERIFICATION", "optional"),
    ]);
    assert!(tokio::task::block_in_place(|| binary.wait_ready()));
    let client = reqwest::Client::new();
    let response = client
        .post(binary.url("/auth/register"))
        .json(&json!({"email": "bounce@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let metrics = async || binary.metrics().await;
    let mut failed = false;
    for _ in 0..50 {
        let text = metrics().await;
        if text
            .lines()
            .any(|l| l.starts_with("mail_failed_total") && l.ends_with(" 1"))
        {
            failed = true;
            break;
        }
        tokio::time::sleep(StdDuration::from_millis(100)).await;
    }
    assert!(failed, "mail_failed_total: {}", metrics().await);
    assert!(
        metrics()
            .await
            .lines()
            .any(|l| l == "mail_outbox_pending 0")
    );
    let (_, stdout, stderr) = tokio::task::block_in_place(|| binary.terminate());
    let logs = format!("{stdout}{stderr}");
    let errors: Vec<&str> = logs.lines().filter(|l| l.contains("\"ERROR\"")).collect();
    assert_eq!(errors.len(), 1, "{logs}");
    assert!(
        errors[0].contains("giving up") && errors[0].contains("SMTP 550"),
        "{}",
        errors[0]
    );
    assert!(!logs.contains("bounce@example.com"), "{logs}");
    assert!(!logs.contains("token="), "{logs}");
}

/// Forgot answers at once, so nothing pushes back on a flood: while the database is stuck,
/// at most 64 requests wait in the background and the rest are dropped (still 202, counted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgot_flood_is_bounded_while_the_database_is_stuck() {
    let (app, _sink) = app_with_sink(Backend::Sqlite, &[]).await;
    app.register("flood@example.com", PASSWORD).await;
    let dropped = async || {
        let text = app.get("/metrics").await.text().await.unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("password_reset_dropped_total "))
            .map_or(0.0, |v| v.parse::<f64>().unwrap())
    };
    let before = dropped().await;
    // Another connection holds SQLite's write lock: every queued request waits for it.
    let mut holder = sqlx::SqliteConnection::connect(&app.db.url_string())
        .await
        .unwrap();
    sqlx::query("begin immediate")
        .execute(&mut holder)
        .await
        .unwrap();
    let answers = join_all((0..100).map(|_| forgot(&app, "flood@example.com"))).await;
    assert!(answers.iter().all(|r| r.status() == StatusCode::ACCEPTED));
    let after = dropped().await;
    sqlx::query("rollback").execute(&mut holder).await.unwrap();
    assert!(after - before >= 36.0, "dropped {}", after - before);
}

/// A reset and a forgot of the same user at once take the user's lock in the same order: the
/// reset either wins (200) or finds its token voided (400), never an error.
async fn a_reset_racing_a_new_forgot_never_fails_the_request(backend: Backend) {
    let (app, sink) = app_with_sink(backend, &[]).await;
    let email = "racer@example.com";
    app.register(email, PASSWORD).await;
    for round in 0..5 {
        let mailed = sink.for_address(email).len();
        forgot(&app, email).await;
        let token = sink
            .wait_for(email, mailed + 1, MAIL_WITHIN)
            .await
            .last()
            .unwrap()
            .link_token();
        // Past the throttle, so the racing forgot voids the older tokens for real.
        app.clock.advance(Duration::minutes(61));
        let password = format!("RoundPass{round}xyz");
        let (reset, _) = tokio::join!(reset(&app, &token, &password), forgot(&app, email));
        assert!(
            [StatusCode::OK, StatusCode::BAD_REQUEST].contains(&reset.0),
            "round {round}: {reset:?}"
        );
        // Every mail of the round lands before the next one counts: the racing forgot's, and
        // the "password changed" one when the reset won.
        let notified = usize::from(reset.0 == StatusCode::OK);
        sink.wait_for(email, mailed + 2 + notified, MAIL_WITHIN)
            .await;
        app.clock.advance(Duration::minutes(61));
    }
}

/// A bcrypt hash of `password` whose check takes at least a quarter of a second in this build:
/// the window in which a login sits between its check and its session.
fn slow_hash(password: &str) -> String {
    for cost in 8..=16 {
        let hash = bcrypt::hash(password, cost).unwrap();
        let started = std::time::Instant::now();
        assert!(bcrypt::verify(password, &hash).unwrap());
        if started.elapsed() >= StdDuration::from_millis(250) || cost == 16 {
            return hash;
        }
    }
    unreachable!()
}

async fn a_login_checked_before_a_reset_commits_starts_no_session(backend: Backend) {
    // Arrange: the owner asked for a reset; the attacker knows the old password. The user's
    // hash is slow to check, so the attacker's login stays between its check and its session
    // while the owner's reset commits.
    let (app, sink) = app_with_sink(backend, &[]).await;
    let email = "raced@example.com";
    let (id, _, _) = app.user_with_tokens(email).await;
    assert_eq!(forgot(&app, email).await.status(), StatusCode::ACCEPTED);
    let token = sink
        .wait_for(email, 1, MAIL_WITHIN)
        .await
        .remove(0)
        .link_token();
    let slow = tokio::task::spawn_blocking(|| slow_hash(PASSWORD))
        .await
        .unwrap();
    app.db
        .execute(&format!(
            "update users set password_hash = '{slow}' where id = {id}"
        ))
        .await;
    // Act: the login starts; once its attempt is reserved (its check has begun: the attempt
    // is reserved before the password is read and hashed), the reset commits.
    let login = tokio::spawn({
        let (client, url) = (app.client.clone(), app.url("/auth/login"));
        async move {
            let response = client
                .post(url)
                .json(&json!({"email": "raced@example.com", "password": PASSWORD}))
                .send()
                .await
                .unwrap();
            (std::time::Instant::now(), status_and_json(response).await)
        }
    });
    let started = std::time::Instant::now();
    while app.store.find_login_attempt(email).await.unwrap().is_none() {
        assert!(
            started.elapsed() < StdDuration::from_secs(10),
            "the login never reserved its attempt"
        );
        tokio::task::yield_now().await;
    }
    let (status, _) = reset(&app, &token, NEW_PASSWORD).await;
    let reset_done = std::time::Instant::now();
    assert_eq!(status, StatusCode::OK);
    let (login_done, (status, body)) = login.await.unwrap();
    // Assert: the login answered after the reset, and as a wrong password: no session.
    assert!(login_done > reset_done, "the race did not happen");
    assert_error(
        status,
        &body,
        StatusCode::UNAUTHORIZED,
        "Invalid email or password",
        "INVALID_CREDENTIALS",
    );
    let live = app
        .store
        .live_sessions(id, chrono::Utc::now())
        .await
        .unwrap();
    assert!(live.is_empty(), "sessions after the reset: {live:?}");
    assert_eq!(
        app.login(email, NEW_PASSWORD).await.status(),
        StatusCode::OK
    );
}

async fn a_password_change_logout_all_admin_set_or_disable_voids_older_reset_links(
    backend: Backend,
) {
    let (app, sink) = app_with_sink(backend, &[]).await;
    let actions = ["change", "logout-all", "set-password", "disable-enable"];
    for (i, action) in actions.into_iter().enumerate() {
        // Arrange: a reset link is out (mailed, not yet used).
        let email = format!("void{i}@example.com");
        let (_, access, _) = app.user_with_tokens(&email).await;
        assert_eq!(forgot(&app, &email).await.status(), StatusCode::ACCEPTED);
        let token = sink
            .wait_for(&email, 1, MAIL_WITHIN)
            .await
            .remove(0)
            .link_token();
        // Act: the owner secures the account another way.
        match action {
            "change" => {
                let changed = app
                    .client
                    .post(app.url("/auth/password/change"))
                    .bearer_auth(&access)
                    .json(&json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(changed.status(), StatusCode::OK);
            }
            "logout-all" => {
                assert_eq!(app.logout_all(&access).await.status(), StatusCode::OK);
            }
            "disable-enable" => {
                for command in ["disable", "enable"] {
                    let done = cli_async(&app.db, &["user", command, &email], "").await;
                    assert!(done.status.success(), "{done:?}");
                }
            }
            _ => {
                let set = cli_async(
                    &app.db,
                    &["user", "set-password", &email, "--password-stdin"],
                    "NewSecurePass456\n",
                )
                .await;
                assert!(set.status.success(), "{set:?}");
            }
        }
        // Assert: the older link no longer sets a password.
        let (status, body) = reset(&app, &token, "AnotherPass789").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{action}: {body}");
        assert_eq!(body["error_code"], "INVALID_RESET_TOKEN", "{action}");
        assert_eq!(
            app.login(&email, "AnotherPass789").await.status(),
            StatusCode::UNAUTHORIZED,
            "{action}"
        );
    }
}

async fn junk_reset_tokens_cost_no_password_hash(backend: Backend) {
    // Arrange: the binary (its own metrics), with a strong new password ready to be hashed.
    let db = TestDb::new(backend).await;
    let url = db.url_string();
    let mut server = Binary::spawn(&[
        ("DATABASE_URL", url.as_str()),
        ("JWT_SECRET_KEY", SECRET),
        ("RATE_LIMIT_PER_SECOND", "0"),
    ]);
    assert!(server.wait_ready());
    let client = reqwest::Client::new();
    let hashes = || async {
        let text = server.metrics().await;
        crate::api_health::metric_value(&text, "password_hash_wait_seconds_count").unwrap_or(0.0)
    };
    let before = hashes().await;
    // Act: well-formed tokens that were never issued.
    for i in 0..10u8 {
        let junk =
            base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, [i; 32]);
        let response = client
            .post(server.url("/auth/password/reset"))
            .json(&json!({"token": junk, "new_password": NEW_PASSWORD}))
            .send()
            .await
            .unwrap();
        let (status, body) = status_and_json(response).await;
        assert_eq!(
            (status, &body["error_code"]),
            (StatusCode::BAD_REQUEST, &json!("INVALID_RESET_TOKEN"))
        );
    }
    // Assert: not one bcrypt hash was run for them.
    assert_eq!(hashes().await, before);
    server.terminate();
}

/// `POST /auth/email/resend` without a Bearer token.
async fn resend_to(app: &TestApp, email: &str) -> (StatusCode, Value) {
    status_and_json(
        app.post_json("/auth/email/resend", &json!({ "email": email }))
            .await,
    )
    .await
}

/// Waits (at most [`MAIL_WITHIN`]) until the outbox has nothing left to send.
async fn outbox_drained(app: &TestApp) {
    let started = std::time::Instant::now();
    while app.store.pending_mail().await.unwrap() > 0 {
        assert!(started.elapsed() < MAIL_WITHIN, "the outbox never drained");
        tokio::time::sleep(StdDuration::from_millis(20)).await;
    }
}

async fn resend_by_email_is_the_way_back_for_a_user_required_verification_keeps_out(
    backend: Backend,
) {
    // Arrange: required verification, and the first mail lost.
    let (app, sink) = app_with_sink(backend, &[("EMAIL_VERIFICATION", "required")]).await;
    let email = "lost@example.com";
    app.register(email, PASSWORD).await;
    sink.wait_for(email, 1, MAIL_WITHIN).await;
    assert_eq!(
        app.login(email, PASSWORD).await.status(),
        StatusCode::FORBIDDEN
    );
    // Act: an unknown address first, then the user's own, past the 60 s spacing.
    app.clock.advance(chrono::Duration::seconds(61));
    let unknown = resend_to(&app, "nobody@example.com").await;
    let known = resend_to(&app, email).await;
    // Assert: the same answer for both, as forgot gives; a new link for the user only.
    let accepted = (
        StatusCode::ACCEPTED,
        json!({"message": "Verification email sent"}),
    );
    assert_eq!(unknown, accepted);
    assert_eq!(known, accepted);
    let mails = sink.wait_for(email, 2, MAIL_WITHIN).await;
    assert_eq!(verify(&app, &mails[1].link_token()).await.0, StatusCode::OK);
    assert_eq!(app.login(email, PASSWORD).await.status(), StatusCode::OK);
    assert!(sink.for_address("nobody@example.com").is_empty());
    // Throttled as the Bearer form is, and refused like forgot when malformed; a Bearer
    // token that was sent must be valid.
    assert_eq!(resend_to(&app, email).await, accepted);
    let (status, body) = resend_to(&app, "not-an-email").await;
    assert_eq!(
        (status, &body["error_code"]),
        (StatusCode::UNPROCESSABLE_ENTITY, &json!("INVALID_EMAIL"))
    );
    assert_eq!(resend(&app, "not-a-token").await, StatusCode::UNAUTHORIZED);
    // With a valid token a body is not needed, but a malformed one is still refused.
    let (access, _) = app.tokens(email).await;
    let malformed = app
        .client
        .post(app.url("/auth/email/resend"))
        .bearer_auth(&access)
        .json(&json!({"email": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), StatusCode::UNPROCESSABLE_ENTITY);
    outbox_drained(&app).await;
    assert_eq!(sink.for_address(email).len(), 2, "verified: nothing more");
}

async fn an_address_gets_ten_verification_and_reset_mails_an_hour_whatever_the_cause(
    backend: Backend,
) {
    // Arrange + Act: the mail bomb: register, log in, delete the account, again and again,
    // with the victim's address.
    let (app, sink) = app_with_sink(backend, &[("EMAIL_VERIFICATION", "optional")]).await;
    let victim = "victim@example.com";
    for round in 0..12 {
        assert_eq!(
            app.register(victim, PASSWORD).await.status(),
            StatusCode::CREATED
        );
        // As the attacker's loop does at this pace, each mail leaves before its account goes
        // (a queued one goes with a deleted account).
        if round < 10 {
            sink.wait_for(victim, round + 1, MAIL_WITHIN).await;
        }
        let (access, _) = app.tokens(victim).await;
        let deleted = app
            .client
            .delete(app.url("/auth/me"))
            .bearer_auth(&access)
            .json(&json!({ "password": PASSWORD }))
            .send()
            .await
            .unwrap();
        assert_eq!(deleted.status(), StatusCode::OK);
    }
    // A last account, and a forgot for it: still the same answers, no more mail.
    let (_, access, _) = app.user_with_tokens(victim).await;
    assert_eq!(forgot(&app, victim).await.status(), StatusCode::ACCEPTED);
    outbox_drained(&app).await;
    // Assert: ten in the hour, across accounts and causes.
    assert_eq!(sink.for_address(victim).len(), 10);
    // A security notification is never dropped by the cap.
    let changed = app
        .client
        .post(app.url("/auth/password/change"))
        .bearer_auth(&access)
        .json(&json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), StatusCode::OK);
    let mails = sink.wait_for(victim, 11, MAIL_WITHIN).await;
    assert!(
        mails[10].subject().contains("password was changed"),
        "{}",
        mails[10].subject()
    );
    // An hour later the address has its share again.
    app.clock.advance(chrono::Duration::minutes(61));
    assert_eq!(forgot(&app, victim).await.status(), StatusCode::ACCEPTED);
    let mails = sink.wait_for(victim, 12, MAIL_WITHIN).await;
    assert!(
        mails[11].subject().contains("Reset"),
        "{}",
        mails[11].subject()
    );
}

async fn mail_goes_to_the_domain_the_user_typed_never_a_case_folded_one(backend: Backend) {
    // `faß.de` and `fass.de` are two domains with two owners: full case folding of the whole
    // address used to send this user's mail (and so their reset links) to the other one.
    let (app, sink) = app_with_sink(backend, &[("EMAIL_VERIFICATION", "optional")]).await;
    let (status, body) =
        status_and_json(app.register("Anna.Gross@Fa\u{df}.de", PASSWORD).await).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        body["email"], "anna.gross@fa\u{df}.de",
        "the comparison key"
    );
    // The other domain is another account.
    assert_eq!(
        app.register("anna.gross@fass.de", PASSWORD).await.status(),
        StatusCode::CREATED
    );
    assert_eq!(
        forgot(&app, "ANNA.GROSS@FA\u{df}.DE").await.status(),
        StatusCode::ACCEPTED
    );
    // Both mails (verification, reset) went to the address as typed, at the IDNA domain (its
    // ASCII form, which every relay takes).
    let started = std::time::Instant::now();
    let typed = |to: &str| to == "Anna.Gross@xn--fa-hia.de";
    loop {
        let ours = sink
            .received()
            .into_iter()
            .filter(|m| m.to.iter().any(|to| typed(to)))
            .count();
        if ours == 2 {
            break;
        }
        assert!(
            started.elapsed() < MAIL_WITHIN,
            "{:?} pending {}",
            sink.received()
                .into_iter()
                .map(|m| m.to)
                .collect::<Vec<_>>(),
            app.store.pending_mail().await.unwrap()
        );
        tokio::time::sleep(StdDuration::from_millis(20)).await;
    }
    outbox_drained(&app).await;
    let to_fass: Vec<_> = sink
        .received()
        .into_iter()
        .flat_map(|m| m.to)
        .filter(|to| to.contains("fass.de"))
        .collect();
    assert_eq!(
        to_fass,
        ["anna.gross@fass.de"],
        "only fass.de's own registration"
    );
}

async fn every_mail_has_a_message_id_kept_across_retries_and_says_it_is_automatic(
    backend: Backend,
) {
    // Arrange: the relay answers the first attempt "try again later".
    let (app, sink) = app_with_sink(backend, &[]).await;
    let email = "ids@example.com";
    app.user_with_tokens(email).await;
    sink.defer_next();
    // Act: a reset mail, deferred once, then retried after its backoff.
    assert_eq!(forgot(&app, email).await.status(), StatusCode::ACCEPTED);
    let started = std::time::Instant::now();
    while sink.deferred().is_empty() {
        assert!(started.elapsed() < MAIL_WITHIN, "never attempted");
        tokio::time::sleep(StdDuration::from_millis(20)).await;
    }
    app.clock.advance(Duration::minutes(2));
    let sent = sink.wait_for(email, 1, MAIL_WITHIN).await.remove(0);
    // Assert: one Message-ID, the same on both attempts, at MAIL_FROM's domain.
    let first = sink.deferred()[0]
        .header("Message-ID")
        .expect("a Message-ID");
    let id = sent.header("Message-ID").expect("a Message-ID");
    assert_eq!(id, first, "kept across the retry");
    assert!(
        id.starts_with('<') && id.ends_with("@shop.example.com>") && id.len() > 30,
        "{id}"
    );
    assert_eq!(
        sent.header("Auto-Submitted").as_deref(),
        Some("auto-generated")
    );
    // Another message has another id.
    let (access, _) = app.tokens(email).await;
    let changed = app
        .client
        .post(app.url("/auth/password/change"))
        .bearer_auth(&access)
        .json(&json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), StatusCode::OK);
    let notification = sink.wait_for(email, 2, MAIL_WITHIN).await.remove(1);
    assert_ne!(notification.header("Message-ID"), Some(id));
}

async fn a_reset_mail_goes_ahead_of_queued_verification_mails(backend: Backend) {
    // Arrange: a slow relay (half a second a message) and twenty registrations' mails queued.
    let sink = SmtpSink::start_slow(StdDuration::from_millis(500)).await;
    let vars = sink.vars();
    let mut overrides: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    overrides.push(("EMAIL_VERIFICATION", "optional"));
    let app = TestApp::spawn_with(backend, &overrides).await;
    for i in 0..20 {
        app.register(&format!("new{i}@example.com"), PASSWORD).await;
    }
    // Act: someone locked out asks for a reset.
    assert_eq!(
        forgot(&app, "new0@example.com").await.status(),
        StatusCode::ACCEPTED
    );
    // Assert: the reset is among the next messages out, not behind the twenty.
    let mails = sink.wait_for("new0@example.com", 2, MAIL_WITHIN * 2).await;
    let position = sink
        .received()
        .iter()
        .position(|m| m.subject().starts_with("Reset"))
        .unwrap();
    assert!(position < 10, "the reset went out {position}th of 21");
    assert!(mails.iter().any(|m| m.subject().starts_with("Reset")));
}

async fn two_replicas_over_a_slow_relay_send_each_mail_once(backend: Backend) {
    // Two processes (real clocks: the lease is real time here) share a relay that takes
    // four seconds a message. A lease shorter than the work it guards let the second replica
    // take messages the first had claimed and was still getting to: 14 sent for 12 queued.
    let db = TestDb::new(backend).await;
    let sink = SmtpSink::start_slow(StdDuration::from_secs(4)).await;
    let url = db.url_string();
    let mail_url = format!("smtp://127.0.0.1:{}?tls=off", sink.port);
    let vars = [
        ("DATABASE_URL", url.as_str()),
        ("JWT_SECRET_KEY", SECRET),
        ("BCRYPT_ROUNDS", "4"),
        ("RATE_LIMIT_PER_SECOND", "0"),
        ("EMAIL_VERIFICATION", "optional"),
        ("MAIL_URL", mail_url.as_str()),
        ("MAIL_FROM", "Shop <no-reply@shop.example.com>"),
    ];
    let mut one = Binary::spawn(&vars);
    assert!(tokio::task::block_in_place(|| one.wait_ready()));
    let mut two = Binary::spawn(&vars);
    assert!(tokio::task::block_in_place(|| two.wait_ready()));
    let client = reqwest::Client::new();
    for i in 0..12 {
        let replica = if i % 2 == 0 { &one } else { &two };
        let registered = client
            .post(replica.url("/auth/register"))
            .json(&json!({"email": format!("slow{i}@example.com"), "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(registered.status(), StatusCode::CREATED);
    }
    // Every mail arrives...
    let started = std::time::Instant::now();
    while sink.received().len() < 12 {
        assert!(
            started.elapsed() < StdDuration::from_secs(60),
            "{} of 12 arrived",
            sink.received().len()
        );
        tokio::time::sleep(StdDuration::from_millis(100)).await;
    }
    // ...once: the outbox is done (nothing pending, nothing leased), and no recipient twice.
    let store = db.store().await;
    while store.pending_mail().await.unwrap() > 0 {
        assert!(
            started.elapsed() < StdDuration::from_secs(90),
            "still pending"
        );
        tokio::time::sleep(StdDuration::from_millis(100)).await;
    }
    let mut recipients: Vec<String> = sink.received().into_iter().flat_map(|m| m.to).collect();
    recipients.sort();
    let before = recipients.len();
    recipients.dedup();
    assert_eq!((before, recipients.len()), (12, 12), "each mail once");
    tokio::task::block_in_place(|| {
        one.terminate();
        two.terminate();
    });
}

/// Every `link` of the outbox, as an operator's query would read it.
async fn outbox_links(db: &TestDb) -> Vec<Option<String>> {
    match &db.url {
        auth_service::config::DatabaseUrl::Postgres(url) => {
            let mut conn = sqlx::PgConnection::connect(secrecy::ExposeSecret::expose_secret(url))
                .await
                .unwrap();
            sqlx::query_scalar("select link from mail_outbox")
                .fetch_all(&mut conn)
                .await
                .unwrap()
        }
        _ => {
            let mut conn = sqlx::SqliteConnection::connect(&db.url_string())
                .await
                .unwrap();
            sqlx::query_scalar("select link from mail_outbox")
                .fetch_all(&mut conn)
                .await
                .unwrap()
        }
    }
}

async fn no_usable_token_is_ever_at_rest_in_the_database(backend: Backend) {
    // Arrange: the relay is down, so the reset mail waits in the outbox.
    let port = free_port();
    let url = format!("smtp://127.0.0.1:{port}?tls=off");
    let app = TestApp::spawn_with(
        backend,
        &[
            ("MAIL_URL", &url),
            ("MAIL_FROM", "no-reply@shop.example.com"),
            ("EMAIL_VERIFICATION", "off"),
        ],
    )
    .await;
    let email = "atrest@example.com";
    app.register(email, PASSWORD).await;
    assert_eq!(forgot(&app, email).await.status(), StatusCode::ACCEPTED);
    let started = std::time::Instant::now();
    while app.store.pending_mail().await.unwrap() == 0 {
        assert!(started.elapsed() < MAIL_WITHIN, "never queued");
        tokio::time::sleep(StdDuration::from_millis(20)).await;
    }
    // Assert (while it waits): the queued message holds no link, so a copy of the database
    // cannot reset the password.
    assert_eq!(outbox_links(&app.db).await, [None::<String>]);
    // Act: the relay comes back; the link is made as the message leaves.
    let sink = SmtpSink::start_on(port).await;
    app.clock.advance(Duration::seconds(40));
    let token = sink
        .wait_for(email, 1, MAIL_WITHIN)
        .await
        .remove(0)
        .link_token();
    outbox_drained(&app).await;
    // Assert: the token is nowhere in the database, not even in the file's free pages and
    // write-ahead log (SQLite), and it works.
    if let auth_service::config::DatabaseUrl::SqliteFile(path) = &app.db.url {
        for suffix in ["", "-wal", "-shm"] {
            let file = format!("{}{suffix}", path.display());
            if let Ok(bytes) = std::fs::read(&file) {
                assert!(
                    !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
                    "the token is in {file}"
                );
            }
        }
    }
    assert!(outbox_links(&app.db).await.iter().all(Option::is_none));
    let (status, _) = reset(&app, &token, NEW_PASSWORD).await;
    assert_eq!(status, StatusCode::OK);
}

async fn shutdown_lets_the_mail_being_sent_finish(backend: Backend) {
    // Arrange: a relay that takes two seconds a message, and a registration whose verification
    // mail is on its way.
    let sink = SmtpSink::start_slow(StdDuration::from_secs(2)).await;
    let vars = sink.vars();
    let mut overrides: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    overrides.push(("EMAIL_VERIFICATION", "optional"));
    let mut app = TestApp::spawn_with(backend, &overrides).await;
    app.register("leaving@example.com", PASSWORD).await;
    // The worker has claimed it (its lease is running) when the next due time is in the future.
    let store = app.db.store().await;
    poll_until("the worker to claim the mail", MAIL_WITHIN, || async {
        let due = store.next_mail_due().await.unwrap();
        due.is_some_and(|due| due > app.clock.now())
    })
    .await;
    // Act: the shutdown signal, while the relay holds the message.
    app.begin_shutdown();
    app.wait_stopped().await;
    // Assert: the background tasks were stopped, not cut: the mail went and is recorded sent.
    assert_eq!(sink.for_address("leaving@example.com").len(), 1);
    assert_eq!(store.pending_mail().await.unwrap(), 0);
}
