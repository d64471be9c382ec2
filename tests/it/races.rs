//! No revocation lost to a race, and no stalled replica able to stall the others.
//!
//! - A revocation (logout, logout-all, reuse detection, admin disable) that lands while a
//!   rotation of the same session is in flight ends the child the rotation creates: the
//!   rotation is stalled deterministically between marking its parent and committing (a second
//!   PostgreSQL session holds the lock of the session row the rotation updates last), the
//!   revocation is sent to a second process, then the lock is released. On SQLite the stall is
//!   a second connection holding the write lock.
//! - A bounded sweep races refresh and logout of one token on two processes many times.
//! - A lock held by a stalled peer costs a 503 within `DATABASE_LOCK_TIMEOUT_SECONDS`, and the
//!   request that got it leaves nothing behind.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use crate::{dual_backend, helpers::*};

/// Rotation on, no grace (a second presentation is theft at once), and a lock timeout long
/// enough for the deterministic stalls below.
const ROTATION: &[(&str, &str)] = &[
    ("REFRESH_TOKEN_ROTATION", "on"),
    ("REFRESH_REUSE_GRACE_SECONDS", "0"),
    ("DATABASE_LOCK_TIMEOUT_SECONDS", "10"),
    ("DATABASE_STATEMENT_TIMEOUT_SECONDS", "15"),
];

dual_backend!(
    a_logout_racing_a_rotation_ends_the_new_child,
    a_logout_all_racing_a_rotation_ends_the_new_child,
    a_reuse_detection_racing_a_rotation_ends_the_new_child,
    an_admin_disable_racing_a_rotation_ends_the_new_child,
    refresh_and_logout_raced_on_two_processes_leave_no_live_child,
);

/// Which revocation races the rotation.
#[derive(Clone, Copy)]
enum Revocation {
    Logout,
    LogoutAll,
    Reuse,
    AdminDisable,
}

async fn a_logout_racing_a_rotation_ends_the_new_child(backend: Backend) {
    race_rotation_with(backend, Revocation::Logout).await;
}

async fn a_logout_all_racing_a_rotation_ends_the_new_child(backend: Backend) {
    race_rotation_with(backend, Revocation::LogoutAll).await;
}

async fn a_reuse_detection_racing_a_rotation_ends_the_new_child(backend: Backend) {
    race_rotation_with(backend, Revocation::Reuse).await;
}

async fn an_admin_disable_racing_a_rotation_ends_the_new_child(backend: Backend) {
    race_rotation_with(backend, Revocation::AdminDisable).await;
}

/// A connection outside the apps that holds a lock until dropped or released.
enum Stall {
    Postgres(sqlx::PgConnection),
    Sqlite(sqlx::SqliteConnection),
}

impl Stall {
    /// PostgreSQL: lock the session's row (the last row a rotation touches, after marking its
    /// parent and inserting its child). SQLite: take the database's write lock.
    async fn hold(db: &TestDb, session: &str) -> Self {
        use sqlx::Connection as _;
        match &db.url {
            auth_service::config::DatabaseUrl::Postgres(url) => {
                let mut conn =
                    sqlx::PgConnection::connect(secrecy::ExposeSecret::expose_secret(url))
                        .await
                        .unwrap();
                sqlx::query("begin").execute(&mut conn).await.unwrap();
                sqlx::query("select 1 from sessions where id = $1::uuid for update")
                    .bind(session)
                    .execute(&mut conn)
                    .await
                    .unwrap();
                Self::Postgres(conn)
            }
            auth_service::config::DatabaseUrl::SqliteFile(path) => {
                let options = sqlx::sqlite::SqliteConnectOptions::new().filename(path);
                let mut conn = sqlx::SqliteConnection::connect_with(&options)
                    .await
                    .unwrap();
                sqlx::query("begin immediate")
                    .execute(&mut conn)
                    .await
                    .unwrap();
                Self::Sqlite(conn)
            }
            auth_service::config::DatabaseUrl::SqliteMemory => unreachable!(),
        }
    }

    async fn release(self) {
        match self {
            Self::Postgres(mut conn) => {
                sqlx::query("rollback").execute(&mut conn).await.unwrap();
            }
            Self::Sqlite(mut conn) => {
                sqlx::query("rollback").execute(&mut conn).await.unwrap();
            }
        }
    }
}

/// Waits until `n` backends of this PostgreSQL database wait for a lock (the stalled
/// requests have reached their stall point). SQLite has no such view: a short pause lets the
/// requests reach SQLite's busy handler.
async fn wait_for_lock_waiters(db: &TestDb, n: i64) {
    let auth_service::config::DatabaseUrl::Postgres(_) = &db.url else {
        tokio::time::sleep(Duration::from_millis(300)).await;
        return;
    };
    let name = db.postgres_name();
    let mut admin = postgres_admin_connection().await;
    let started = Instant::now();
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity where datname = $1 and wait_event_type = 'Lock'",
        )
        .bind(&name)
        .fetch_one(&mut admin)
        .await
        .unwrap();
        if waiting >= n {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "only {waiting} of {n} requests reached their lock"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn race_rotation_with(backend: Backend, revocation: Revocation) {
    // Arrange: two processes on one database, a session, its refresh token T0.
    let rotating = TestApp::spawn_with(backend, ROTATION).await;
    let revoking = TestApp::spawn_on(rotating.db.clone(), rotating.clock.clone(), ROTATION).await;
    let (_, access, t0) = rotating.user_with_tokens("race@example.com").await;
    let sid = claims_of(&t0)["sid"].as_str().unwrap().to_owned();
    let stall = Stall::hold(&rotating.db, &sid).await;
    // Act: the rotation stalls mid-transaction, then the revocation arrives elsewhere.
    let refresh = tokio::spawn({
        let client = rotating.client.clone();
        let url = rotating.url("/auth/refresh");
        let body = json!({"refresh_token": t0});
        async move { client.post(url).json(&body).send().await.unwrap() }
    });
    wait_for_lock_waiters(&rotating.db, 1).await;
    let revoke = tokio::spawn({
        let client = revoking.client.clone();
        let (t0, access, db) = (t0.clone(), access.clone(), rotating.db.clone());
        let base = revoking.base.clone();
        async move {
            match revocation {
                Revocation::Logout => client
                    .post(format!("{base}/auth/logout"))
                    .json(&json!({"refresh_token": t0}))
                    .send()
                    .await
                    .unwrap()
                    .status(),
                Revocation::LogoutAll => client
                    .post(format!("{base}/auth/logout-all"))
                    .bearer_auth(access)
                    .send()
                    .await
                    .unwrap()
                    .status(),
                Revocation::Reuse => client
                    .post(format!("{base}/auth/refresh"))
                    .json(&json!({"refresh_token": t0}))
                    .send()
                    .await
                    .unwrap()
                    .status(),
                Revocation::AdminDisable => {
                    let out = cli_async(&db, &["user", "disable", "race@example.com"], "").await;
                    assert!(out.status.success(), "{out:?}");
                    StatusCode::OK
                }
            }
        }
    });
    wait_for_lock_waiters(&rotating.db, 2).await;
    stall.release().await;
    let refreshed = refresh.await.unwrap();
    let revoked = revoke.await.unwrap();
    // Assert: whichever order the database chose, no child of the session lives on.
    match revocation {
        // Both present T0, and SQLite's busy handler may let either in first: one rotation
        // wins, the other is reuse, which ends the session (checked below for either winner).
        Revocation::Reuse => {
            let statuses = [refreshed.status(), revoked];
            assert!(
                statuses.contains(&StatusCode::OK) && statuses.contains(&StatusCode::UNAUTHORIZED),
                "{statuses:?}"
            );
        }
        _ => assert_eq!(revoked, StatusCode::OK),
    }
    if refreshed.status() == StatusCode::OK {
        let body = json_of(refreshed).await;
        let t1 = body["refresh_token"].as_str().unwrap();
        let a1 = body["access_token"].as_str().unwrap();
        for app in [&rotating, &revoking] {
            assert_eq!(
                app.refresh(t1).await.status(),
                StatusCode::UNAUTHORIZED,
                "the child of a revoked session refreshed"
            );
            verify_becomes(app, a1, StatusCode::UNAUTHORIZED).await;
        }
    } else {
        assert_eq!(refreshed.status(), StatusCode::UNAUTHORIZED);
    }
    assert_no_live_token(&rotating, &sid).await;
    for app in [&rotating, &revoking] {
        verify_becomes(app, &access, StatusCode::UNAUTHORIZED).await;
    }
}

/// Every refresh token of the session is revoked, and so is the session.
async fn assert_no_live_token(app: &TestApp, sid: &str) {
    let sid = uuid::Uuid::parse_str(sid).unwrap();
    let session = app.store.find_session(sid).await.unwrap().unwrap();
    assert!(session.revoked_at.is_some(), "the session ended");
    let live: Vec<_> = app
        .store
        .export_refresh_tokens(chrono::Utc::now())
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.family_id == sid && t.revoked_at.is_none())
        .collect();
    assert!(live.is_empty(), "live tokens of an ended session: {live:?}");
}

async fn refresh_and_logout_raced_on_two_processes_leave_no_live_child(backend: Backend) {
    let one = TestApp::spawn_with(backend, ROTATION).await;
    let two = TestApp::spawn_on(one.db.clone(), one.clock.clone(), ROTATION).await;
    one.register("sweep@example.com", PASSWORD).await;
    let mut children = 0;
    for _ in 0..25 {
        let (_, t0) = one.tokens("sweep@example.com").await;
        let sid = claims_of(&t0)["sid"].as_str().unwrap().to_owned();
        let (refreshed, logged_out) = tokio::join!(one.refresh(&t0), two.logout(&t0));
        assert_eq!(logged_out.status(), StatusCode::OK);
        if refreshed.status() == StatusCode::OK {
            children += 1;
            let t1 = json_of(refreshed).await["refresh_token"]
                .as_str()
                .unwrap()
                .to_owned();
            assert_eq!(one.refresh(&t1).await.status(), StatusCode::UNAUTHORIZED);
        }
        assert_no_live_token(&one, &sid).await;
    }
    eprintln!("sweep: {children} of 25 refreshes won the race");
}

dual_backend!(a_stalled_lock_holder_costs_a_503_and_the_request_leaves_nothing_behind);

async fn a_stalled_lock_holder_costs_a_503_and_the_request_leaves_nothing_behind(backend: Backend) {
    // Arrange: a peer (here a console session) holds the user's lock and does not let go.
    let app = TestApp::spawn_with(
        backend,
        &[
            ("DATABASE_LOCK_TIMEOUT_SECONDS", "1"),
            ("DATABASE_STATEMENT_TIMEOUT_SECONDS", "2"),
        ],
    )
    .await;
    let (id, access, refresh) = app.user_with_tokens("stuck@example.com").await;
    let stall = hold_user_lock(&app.db, id).await;
    // Act
    let started = Instant::now();
    let (logout, logout_all) = tokio::join!(
        app.logout(&refresh),
        app.client
            .post(app.url("/auth/logout-all"))
            .bearer_auth(&access)
            .send(),
    );
    let elapsed = started.elapsed();
    // Assert: 503 with Retry-After, long before the 30 s request timeout.
    for response in [logout, logout_all.unwrap()] {
        assert!(header(&response, "retry-after").is_some());
        let (status, body) = status_and_json(response).await;
        assert_error(
            status,
            &body,
            StatusCode::SERVICE_UNAVAILABLE,
            "Service temporarily unavailable",
            "SERVICE_UNAVAILABLE",
        );
    }
    // The lock timeout (PostgreSQL, 1 s) or SQLite's busy timeout (5 s), not the request's.
    assert!(elapsed < Duration::from_secs(15), "took {elapsed:?}");
    stall.release().await;
    // Nothing the refused requests asked for happened, even after the lock was released.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sid = uuid::Uuid::parse_str(claims_of(&refresh)["sid"].as_str().unwrap()).unwrap();
    let session = app.store.find_session(sid).await.unwrap().unwrap();
    assert_eq!(session.revoked_at, None);
    let user = app.store.find_user_by_id(id).await.unwrap().unwrap();
    assert_eq!(user.tokens_not_before, None);
    assert_eq!(app.verify(&access).await.status(), StatusCode::OK);
    assert_eq!(app.refresh(&refresh).await.status(), StatusCode::OK);
}

/// PostgreSQL: a console session holding `select ... for update` on the user's row. SQLite:
/// a connection holding the write lock.
async fn hold_user_lock(db: &TestDb, user_id: i64) -> Stall {
    use sqlx::Connection as _;
    match &db.url {
        auth_service::config::DatabaseUrl::Postgres(url) => {
            let mut conn = sqlx::PgConnection::connect(secrecy::ExposeSecret::expose_secret(url))
                .await
                .unwrap();
            sqlx::query("begin").execute(&mut conn).await.unwrap();
            sqlx::query("select 1 from users where id = $1 for update")
                .bind(user_id)
                .execute(&mut conn)
                .await
                .unwrap();
            Stall::Postgres(conn)
        }
        _ => Stall::hold(db, "").await,
    }
}
