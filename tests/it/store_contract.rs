//! Every `Store` method, on both backends, including its concurrency guarantee.

use std::sync::Arc;

use auth_service::store::{AttemptLimits, NewRefreshToken, Store, StoreError};
use chrono::{Duration, DurationRound as _, Utc};
use futures::future::join_all;
use uuid::Uuid;

use crate::{dual_backend, helpers::*};

async fn store(backend: Backend) -> (Arc<TestDb>, Arc<dyn Store>) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    (db, store)
}

fn limits() -> AttemptLimits {
    AttemptLimits {
        max_attempts: 5,
        window: Duration::minutes(15),
        lockout: Duration::minutes(15),
    }
}

fn token(user_id: i64, family: Uuid, parent: Option<Uuid>) -> NewRefreshToken {
    let now = Utc::now().duration_trunc(Duration::seconds(1)).unwrap();
    NewRefreshToken {
        jti: Uuid::new_v4(),
        user_id,
        family_id: family,
        parent_jti: parent,
        issued_at: now,
        expires_at: now + Duration::days(30),
    }
}

dual_backend!(
    users_insert_find_and_duplicate,
    login_attempts_count_lock_and_reset,
    fifty_parallel_reservations_are_counted_exactly,
    rotation_is_a_compare_and_set,
    revoking_by_user_touches_only_that_user,
);

async fn users_insert_find_and_duplicate(backend: Backend) {
    let (_db, store) = store(backend).await;
    let now = Utc::now();
    let user = store
        .insert_user("a@example.com", "$2b$04$hash", now)
        .await
        .unwrap();
    assert!(user.is_active);
    assert!(matches!(
        store.insert_user("a@example.com", "x", now).await,
        Err(StoreError::Duplicate)
    ));
    assert_eq!(
        store
            .find_user_by_email("a@example.com")
            .await
            .unwrap()
            .unwrap()
            .id,
        user.id
    );
    assert_eq!(
        store.find_user_by_id(user.id).await.unwrap().unwrap().email,
        "a@example.com"
    );
    assert!(
        store
            .find_user_by_email("b@example.com")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .find_user_by_id(user.id + 100)
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.set_user_active(user.id, false, now).await.unwrap());
    assert!(
        !store
            .find_user_by_id(user.id)
            .await
            .unwrap()
            .unwrap()
            .is_active
    );
    assert!(
        !store
            .set_user_active(user.id + 100, false, now)
            .await
            .unwrap()
    );
}

async fn login_attempts_count_lock_and_reset(backend: Backend) {
    let (_db, store) = store(backend).await;
    let start = Utc::now().duration_trunc(Duration::seconds(1)).unwrap();
    let mut seen = Vec::new();
    for _ in 0..7 {
        let row = store
            .reserve_login_attempt("k", start, limits())
            .await
            .unwrap();
        seen.push((row.attempts, row.locked_until.is_some()));
    }
    assert_eq!(
        seen,
        [
            (1, false),
            (2, false),
            (3, false),
            (4, false),
            (5, true),
            (6, true),
            (6, true)
        ]
    );
    // Lock over: a fresh window.
    let later = start + Duration::minutes(15) + Duration::seconds(1);
    let row = store
        .reserve_login_attempt("k", later, limits())
        .await
        .unwrap();
    assert_eq!(
        (row.attempts, row.locked_until, row.window_start),
        (1, None, later)
    );
    // Window over without a lock: a fresh window too.
    store
        .reserve_login_attempt("k", later, limits())
        .await
        .unwrap();
    let row = store
        .reserve_login_attempt("k", later + Duration::minutes(16), limits())
        .await
        .unwrap();
    assert_eq!(row.attempts, 1);
    store.clear_login_attempts("k").await.unwrap();
    assert_eq!(
        store
            .reserve_login_attempt("k", later, limits())
            .await
            .unwrap()
            .attempts,
        1
    );
}

async fn fifty_parallel_reservations_are_counted_exactly(backend: Backend) {
    let (_db, store) = store(backend).await;
    let now = Utc::now();
    let rows = join_all((0..50).map(|_| store.reserve_login_attempt("burst", now, limits()))).await;
    let mut attempts: Vec<i64> = rows.into_iter().map(|r| r.unwrap().attempts).collect();
    attempts.sort_unstable();
    let mut expected: Vec<i64> = (1..=5).collect();
    expected.extend(std::iter::repeat_n(6, 45));
    assert_eq!(attempts, expected);
}

async fn rotation_is_a_compare_and_set(backend: Backend) {
    let (_db, store) = store(backend).await;
    let user = store
        .insert_user("r@example.com", "h", Utc::now())
        .await
        .unwrap();
    let family = Uuid::new_v4();
    let parent = token(user.id, family, None);
    store.insert_refresh_token(&parent).await.unwrap();
    assert!(matches!(
        store.insert_refresh_token(&parent).await,
        Err(StoreError::Duplicate)
    ));
    let now = Utc::now();
    let children: Vec<NewRefreshToken> = (0..10)
        .map(|_| token(user.id, family, Some(parent.jti)))
        .collect();
    let won = join_all(
        children
            .iter()
            .map(|c| store.rotate_refresh_token(parent.jti, c, now)),
    )
    .await;
    let winners: Vec<&NewRefreshToken> = won
        .iter()
        .zip(&children)
        .filter(|(w, _)| *w.as_ref().unwrap())
        .map(|(_, c)| c)
        .collect();
    assert_eq!(winners.len(), 1, "exactly one child");
    let stored_child = store.find_child_token(parent.jti).await.unwrap().unwrap();
    assert_eq!(stored_child.jti, winners[0].jti);
    assert_eq!(stored_child.issued_at, winners[0].issued_at);
    let stored_parent = store.find_refresh_token(parent.jti).await.unwrap().unwrap();
    assert!(stored_parent.rotated_at.is_some());
    // Revoked or expired tokens cannot be rotated.
    assert_eq!(store.revoke_family_of(parent.jti, now).await.unwrap(), 2);
    let grandchild = token(user.id, family, Some(stored_child.jti));
    assert!(
        !store
            .rotate_refresh_token(stored_child.jti, &grandchild, now)
            .await
            .unwrap()
    );
    let lone = token(user.id, Uuid::new_v4(), None);
    store.insert_refresh_token(&lone).await.unwrap();
    let next = token(user.id, lone.family_id, Some(lone.jti));
    assert!(
        !store
            .rotate_refresh_token(lone.jti, &next, lone.expires_at)
            .await
            .unwrap()
    );
}

async fn revoking_by_user_touches_only_that_user(backend: Backend) {
    let (_db, store) = store(backend).await;
    let now = Utc::now();
    let a = store.insert_user("a@example.com", "h", now).await.unwrap();
    let b = store.insert_user("b@example.com", "h", now).await.unwrap();
    for user in [a.id, a.id, b.id] {
        store
            .insert_refresh_token(&token(user, Uuid::new_v4(), None))
            .await
            .unwrap();
    }
    assert_eq!(store.revoke_user_tokens(a.id, now).await.unwrap(), 2);
    assert_eq!(store.revoke_user_tokens(a.id, now).await.unwrap(), 0);
    assert_eq!(store.revoke_user_tokens(b.id, now).await.unwrap(), 1);
    assert_eq!(
        store.revoke_family_of(Uuid::new_v4(), now).await.unwrap(),
        0
    );
    store.ping().await.unwrap();
}
