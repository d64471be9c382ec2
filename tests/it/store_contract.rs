//! Every method of every `Store` chapter, on both backends, including its concurrency
//! guarantee (`every_store_method_is_called_here` keeps this true: it reads the chapters'
//! traits and fails on a method no test here calls):
//!
//! | chapter | methods | tests |
//! |---|---|---|
//! | `UserStore` | `insert_user`, `find_user_by_email`, `find_user_by_id`, `set_user_active` | `users_insert_find_and_duplicate` |
//! | | `register_user`, `mark_email_verified` | `registration_queues_verification_and_its_token_verifies_once` |
//! | | `delete_user` | `disabling_and_deleting_end_sessions_and_append_events` |
//! | | `update_user_email` | `email_update_is_a_compare_and_set` |
//! | | `rehash_password` (the login's cost upgrade) | `password_hash_update_is_a_compare_and_set` |
//! | | `change_password_by_user` | `sessions_record_their_use_and_end_all_but_one`, `ending_every_session_from_before_devices_writes_one_event` |
//! | | `set_password_by_admin` | `reset_tokens_and_the_mail_outbox` |
//! | `SessionStore` | `start_session`, `find_session`, `find_refresh_token` | `sessions_start_only_for_active_users` |
//! | | `start_session` (the cap), `touch_session`, `live_sessions` | `sessions_record_their_use_and_end_all_but_one`, `sessions_from_before_devices_get_nulls` |
//! | | `rotate_refresh_token`, `find_child_token` | `rotation_is_a_compare_and_set`, `rotation_keeps_storage_per_session_constant` |
//! | | `revoke_session`, `revoke_user_sessions` | `revocations_end_sessions_once_and_append_events` |
//! | `LockoutStore` | `reserve_login_attempt`, `find_login_attempt`, `clear_login_attempts` | `login_attempts_count_lock_and_reset`, `fifty_parallel_reservations_are_counted_exactly` |
//! | `EventStore` | `events_since`, `last_event_id`, `event_bounds`, `event_signal` | `events_are_read_in_order_and_signalled` |
//! | `TokenStore` | `queue_password_reset`, `reissue_token`, `token_is_usable`, `reset_password_by_token` | `reset_tokens_and_the_mail_outbox` |
//! | | `queue_email_verification`, `verify_email` | `registration_queues_verification_and_its_token_verifies_once` |
//! | `OutboxStore` | `claim_mail`, `finish_mail`, `next_mail_due`, `pending_mail` | `reset_tokens_and_the_mail_outbox`, `concurrent_claims_never_share_a_message` |
//! | | `claim_webhook`, `finish_webhook`, `next_webhook_due`, `pending_webhooks`, `purge_batch` (webhooks) | `webhook_events_are_written_with_their_change_and_claimed_in_order` |
//! | `SecondFactorStore` | `add_totp_factor`, `find_factor`, `confirm_factor`, `confirmed_factors`, `use_time_step`, `step_up_session`, `remove_factor`, `factors_to_reseal`, `reseal_factor` | `second_factors_confirm_once_and_accept_each_step_once` |
//! | | `replace_recovery_codes`, `use_recovery_code`, `recovery_codes_left`, `add_challenge`, `challenge_user`, `reset_second_factor`, `start_session` (a challenge) | `recovery_codes_and_challenges_are_used_once` |
//! | `PasskeyStore` | `add_ceremony`, `take_ceremony`, `add_passkey`, `user_passkeys`, `find_passkey_by_credential`, `remove_passkey`, `start_session` (a passkey) | `passkeys_and_their_ceremonies_are_used_once` |
//! | `HousekeepingStore` | `ping`, `pool_stats`, `migrate`, `schema_is_current` | `housekeeping_methods_answer` |
//! | | `data_migration_done`, `record_data_migration` | `data_migrations_are_recorded_once` |
//! | | `purge_batch` | `purge_batches_delete_only_what_nothing_needs`, and through the service `purging_deletes_only_what_nothing_needs` |
//! | | `export_users`, `export_refresh_tokens`, `export_second_factors`, `export_passkeys`, `import` | `export_and_import_round_trip` |
//! | | `insert_imported_users` | `imported_users_are_inserted_once_and_a_dry_run_writes_nothing` |

use std::sync::Arc;

use auth_service::assurance::{AuthMethod, Methods};
use auth_service::store::{
    AttemptLimits, CeremonyKind, Confirmation, EventKind, FactorConfirmation, MailOutcome,
    MailTemplate, NewCeremony, NewFactor, NewMail, NewPasskey, NewRefreshToken, NewSession,
    PasskeyRefused, PasskeyUse, PasswordChange, Purge, ResetRequest, RotateOutcome, SessionRefused,
    SignInProof, Store, StoreError, TokenMail, Transfer,
};
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
    webhook_events_are_written_with_their_change_and_claimed_in_order,
    registration_queues_verification_and_its_token_verifies_once,
    purging_deletes_only_what_nothing_needs,
    housekeeping_methods_answer,
    disabling_and_deleting_end_sessions_and_append_events,
    password_hash_update_is_a_compare_and_set,
    sessions_start_only_for_active_users,
    sessions_record_their_use_and_end_all_but_one,
    sessions_from_before_devices_get_nulls,
    ending_every_session_from_before_devices_writes_one_event,
    revocations_end_sessions_once_and_append_events,
    events_are_read_in_order_and_signalled,
    export_and_import_round_trip,
    imported_users_are_inserted_once_and_a_dry_run_writes_nothing,
    users_insert_find_and_duplicate,
    login_attempts_count_lock_and_reset,
    fifty_parallel_reservations_are_counted_exactly,
    rotation_is_a_compare_and_set,
    rotation_keeps_storage_per_session_constant,
    reset_tokens_and_the_mail_outbox,
    users_from_before_verification_count_as_verified,
    concurrent_claims_never_share_a_message,
    email_update_is_a_compare_and_set,
    data_migrations_are_recorded_once,
    second_factors_confirm_once_and_accept_each_step_once,
    recovery_codes_and_challenges_are_used_once,
    passkeys_and_their_ceremonies_are_used_once,
    purge_batches_delete_only_what_nothing_needs,
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
        assert_eq!(store.find_login_attempt("k").await.unwrap(), Some(row));
    }
    assert_eq!(store.find_login_attempt("other").await.unwrap(), None);
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
    assert_eq!(store.find_login_attempt("k").await.unwrap(), None);
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

/// A live session with its first refresh token for `user_id`.
async fn session(store: &Arc<dyn Store>, user_id: i64) -> NewRefreshToken {
    let first = token(user_id, Uuid::new_v4(), None);
    let session = NewSession {
        id: first.family_id,
        user_id,
        created_at: first.issued_at,
        expires_at: first.expires_at,
        user_agent: Some("agent/1".to_owned()),
        ip: Some("192.0.2.1".to_owned()),
        methods: Methods::PASSWORD,
    };
    let hash = store
        .find_user_by_id(user_id)
        .await
        .unwrap()
        .unwrap()
        .password_hash;
    assert_eq!(
        store
            .start_session(&session, &first, SignInProof::Password(&hash), 100)
            .await
            .unwrap(),
        Ok(vec![])
    );
    first
}

async fn housekeeping_methods_answer(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.unmigrated_store().await;
    store.ping().await.unwrap();
    assert!(
        !store.schema_is_current().await.unwrap(),
        "nothing applied yet"
    );
    store.migrate().await.unwrap();
    assert!(store.schema_is_current().await.unwrap());
    store.migrate().await.unwrap();
    assert!(
        store.schema_is_current().await.unwrap(),
        "migrating twice is a no-op"
    );
    let stats = store.pool_stats();
    assert!(stats.size >= 1 && stats.idle <= stats.size, "{stats:?}");
}

async fn password_hash_update_is_a_compare_and_set(backend: Backend) {
    let (_db, store) = store(backend).await;
    let now = Utc::now();
    let user = store
        .insert_user("p@example.com", "old", now)
        .await
        .unwrap();
    assert!(
        store
            .rehash_password(user.id, "old", "new", now)
            .await
            .unwrap()
    );
    assert!(
        !store
            .rehash_password(user.id, "old", "newer", now)
            .await
            .unwrap()
    );
    let stored = store.find_user_by_id(user.id).await.unwrap().unwrap();
    assert_eq!(stored.password_hash, "new");
}

async fn sessions_start_only_for_active_users(backend: Backend) {
    let (_db, store) = store(backend).await;
    let now = Utc::now();
    let user = store.insert_user("s@example.com", "h", now).await.unwrap();
    let first = session(&store, user.id).await;
    let row = store.find_session(first.family_id).await.unwrap().unwrap();
    assert_eq!(
        (row.user_id, row.revoked_at, row.expires_at),
        (user.id, None, first.expires_at)
    );
    let stored = store.find_refresh_token(first.jti).await.unwrap().unwrap();
    assert_eq!(
        (stored.family_id, stored.parent_jti),
        (first.family_id, None)
    );
    assert!(store.find_session(Uuid::new_v4()).await.unwrap().is_none());
    // The same session id again is a duplicate.
    let again = NewSession {
        id: first.family_id,
        user_id: user.id,
        created_at: now,
        expires_at: now,
        user_agent: None,
        ip: None,
        methods: Methods::PASSWORD,
    };
    assert!(matches!(
        store
            .start_session(
                &again,
                &token(user.id, first.family_id, None),
                SignInProof::Password("h"),
                100,
            )
            .await,
        Err(StoreError::Duplicate)
    ));
    // Disabled or missing users, and a login whose checked hash is no longer the user's, get
    // no session.
    store.set_user_active(user.id, false, now).await.unwrap();
    let refused = token(user.id, Uuid::new_v4(), None);
    let new = NewSession {
        id: refused.family_id,
        user_id: user.id,
        created_at: now,
        expires_at: now,
        user_agent: None,
        ip: None,
        methods: Methods::PASSWORD,
    };
    assert_eq!(
        store
            .start_session(&new, &refused, SignInProof::Password("h"), 100)
            .await
            .unwrap(),
        Err(SessionRefused::Disabled)
    );
    assert!(
        store
            .find_session(refused.family_id)
            .await
            .unwrap()
            .is_none()
    );
    let ghost = token(user.id + 100, Uuid::new_v4(), None);
    let new = NewSession {
        id: ghost.family_id,
        user_id: user.id + 100,
        created_at: now,
        expires_at: now,
        user_agent: None,
        ip: None,
        methods: Methods::PASSWORD,
    };
    assert_eq!(
        store
            .start_session(&new, &ghost, SignInProof::Password("h"), 100)
            .await
            .unwrap(),
        Err(SessionRefused::UserGone)
    );
    store.set_user_active(user.id, true, now).await.unwrap();
    let stale = token(user.id, Uuid::new_v4(), None);
    let new = NewSession {
        id: stale.family_id,
        user_id: user.id,
        created_at: now,
        expires_at: now,
        user_agent: None,
        ip: None,
        methods: Methods::PASSWORD,
    };
    assert_eq!(
        store
            .start_session(
                &new,
                &stale,
                SignInProof::Password("checked-before-a-reset"),
                100
            )
            .await
            .unwrap(),
        Err(SessionRefused::PasswordChanged)
    );
    assert!(store.find_session(stale.family_id).await.unwrap().is_none());
    assert!(store.find_refresh_token(stale.jti).await.unwrap().is_none());
}

async fn sessions_record_their_use_and_end_all_but_one(backend: Backend) {
    let (_db, store) = store(backend).await;
    let t0 = Utc::now().duration_trunc(Duration::seconds(1)).unwrap() - Duration::hours(2);
    let user = store.insert_user("u@example.com", "old", t0).await.unwrap();
    let start = |at: chrono::DateTime<Utc>, agent: &str, cap: i64| {
        let store = Arc::clone(&store);
        let agent = agent.to_owned();
        async move {
            let first = NewRefreshToken {
                issued_at: at,
                ..token(user.id, Uuid::new_v4(), None)
            };
            let session = NewSession {
                id: first.family_id,
                user_id: user.id,
                created_at: at,
                expires_at: first.expires_at,
                user_agent: Some(agent),
                ip: Some("2001:db8::1".to_owned()),
                methods: Methods::PASSWORD,
            };
            let hash = store
                .find_user_by_id(user.id)
                .await
                .unwrap()
                .unwrap()
                .password_hash;
            let evicted = store
                .start_session(&session, &first, SignInProof::Password(&hash), cap)
                .await
                .unwrap();
            (first.family_id, evicted.unwrap())
        }
    };
    let (old, _) = start(t0, "old", 3).await;
    let (middle, _) = start(t0 + Duration::minutes(1), "middle", 3).await;
    let (new, evicted) = start(t0 + Duration::minutes(2), "new", 3).await;
    assert!(evicted.is_empty());
    // A use moves `last_used_at` forward, never back, and only on a live session.
    assert!(
        store
            .touch_session(old, t0 + Duration::minutes(3))
            .await
            .unwrap()
            .is_some()
    );
    assert!(store.touch_session(old, t0).await.unwrap().is_some());
    let live = store
        .live_sessions(user.id, t0 + Duration::minutes(4))
        .await
        .unwrap();
    let listed: Vec<_> = live
        .iter()
        .map(|s| (s.id, s.user_agent.as_deref(), s.last_used_at))
        .collect();
    assert_eq!(
        listed,
        [
            (new, Some("new"), Some(t0 + Duration::minutes(2))),
            (middle, Some("middle"), Some(t0 + Duration::minutes(1))),
            (old, Some("old"), Some(t0 + Duration::minutes(3))),
        ],
        "newest first"
    );
    assert_eq!(live[0].ip.as_deref(), Some("2001:db8::1"));
    // The cap: the fourth ends the least recently used (`middle`, not the oldest login).
    let (fourth, evicted) = start(t0 + Duration::minutes(5), "fourth", 3).await;
    assert_eq!(evicted, [middle]);
    assert!(
        store
            .touch_session(middle, t0 + Duration::minutes(6))
            .await
            .unwrap()
            .is_none()
    );
    // A password change keeps one session and ends the others; a stale hash changes nothing.
    let mail = NewMail {
        template: MailTemplate::PasswordChanged,
        link: None,
    };
    let change = PasswordChange {
        user_id: user.id,
        keep: fourth,
        old_hash: "stale",
        new_hash: "new",
        notification: &mail,
        live_tokens_since: t0 + Duration::minutes(3),
    };
    let now = t0 + Duration::minutes(7);
    assert!(!store.change_password_by_user(&change, now).await.unwrap());
    let before = store.last_event_id().await.unwrap();
    let change = PasswordChange {
        old_hash: "old",
        ..change
    };
    assert!(store.change_password_by_user(&change, now).await.unwrap());
    let live: Vec<_> = store
        .live_sessions(user.id, now)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(live, [fourth]);
    assert_eq!(
        store
            .find_user_by_id(user.id)
            .await
            .unwrap()
            .unwrap()
            .password_hash,
        "new"
    );
    assert_eq!(store.pending_mail().await.unwrap(), 1);
    // Events: only the ended sessions used since `live_tokens_since` (`old`, at minute 3);
    // `new` (minute 2) holds no token that still verifies.
    let named: Vec<_> = store
        .events_since(before, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.kind, e.session_id))
        .collect();
    assert_eq!(named, [(EventKind::SessionRevoked, Some(old))]);
}

async fn rotation_is_a_compare_and_set(backend: Backend) {
    let (_db, store) = store(backend).await;
    let user = store
        .insert_user("r@example.com", "h", Utc::now())
        .await
        .unwrap();
    let parent = session(&store, user.id).await;
    let family = parent.family_id;
    let now = Utc::now();
    let children: Vec<NewRefreshToken> = (0..10)
        .map(|_| token(user.id, family, Some(parent.jti)))
        .collect();
    let outcomes = join_all(
        children
            .iter()
            .map(|c| store.rotate_refresh_token(parent.jti, c, now, now)),
    )
    .await;
    let winners: Vec<&NewRefreshToken> = outcomes
        .iter()
        .zip(&children)
        .filter(|(o, _)| matches!(o.as_ref().unwrap(), RotateOutcome::Rotated(_)))
        .map(|(_, c)| c)
        .collect();
    assert_eq!(winners.len(), 1, "exactly one child");
    assert!(outcomes.iter().all(|o| matches!(
        o,
        Ok(RotateOutcome::Rotated(_) | RotateOutcome::NotRotatable)
    )));
    let stored_child = store.find_child_token(parent.jti).await.unwrap().unwrap();
    assert_eq!(stored_child.jti, winners[0].jti);
    assert_eq!(stored_child.issued_at, winners[0].issued_at);
    let stored_parent = store.find_refresh_token(parent.jti).await.unwrap().unwrap();
    let rotated_at = stored_parent.rotated_at.unwrap();
    assert!(
        (rotated_at - now).num_microseconds().unwrap().abs() <= 1,
        "sub-second precision kept: {rotated_at} for {now}"
    );
    assert!(
        store
            .find_child_token(stored_child.jti)
            .await
            .unwrap()
            .is_none()
    );
    // An expired token cannot be rotated.
    let next = token(user.id, family, Some(stored_child.jti));
    assert_eq!(
        store
            .rotate_refresh_token(stored_child.jti, &next, stored_child.expires_at, now)
            .await
            .unwrap(),
        RotateOutcome::NotRotatable
    );
    // An ended session makes no children, whatever its tokens say.
    assert!(store.revoke_session(family, now).await.unwrap());
    assert_eq!(
        store
            .rotate_refresh_token(stored_child.jti, &next, now, now)
            .await
            .unwrap(),
        RotateOutcome::Refused
    );
    // Nor does a disabled user.
    let other = session(&store, user.id).await;
    store.set_user_active(user.id, false, now).await.unwrap();
    let child = token(user.id, other.family_id, Some(other.jti));
    assert_eq!(
        store
            .rotate_refresh_token(other.jti, &child, now, now)
            .await
            .unwrap(),
        RotateOutcome::Refused
    );
}

/// However often a session rotates, it keeps its current token and what was rotated since
/// `prune_rotated_before` (the grace window), at most `ROTATED_TOKENS_KEPT` of those:
/// constant storage per session.
async fn rotation_keeps_storage_per_session_constant(backend: Backend) {
    let (_db, store) = store(backend).await;
    let user = store
        .insert_user("bounded@example.com", "h", Utc::now())
        .await
        .unwrap();
    let first = session(&store, user.id).await;
    let family = first.family_id;
    let other_session = session(&store, user.id).await;
    let start = Utc::now();
    let mut current = first.jti;
    let mut jtis = vec![current];
    for i in 0..60 {
        // One rotation a second; the grace window is the last 10 s.
        let now = start + chrono::Duration::seconds(i);
        let child = token(user.id, family, Some(current));
        let outcome = store
            .rotate_refresh_token(current, &child, now, now - chrono::Duration::seconds(10))
            .await
            .unwrap();
        assert!(
            matches!(outcome, RotateOutcome::Rotated(_)),
            "rotation {i}: {outcome:?}"
        );
        current = child.jti;
        jtis.push(current);
    }
    let live = store
        .export_refresh_tokens(start)
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.family_id == family)
        .count();
    // Rotated within the last 10 s: 49..=59, eleven; of those the newest ten (50..=59), and
    // the current one.
    assert_eq!(live, 11, "rows of the session after 60 rotations");
    for (index, jti) in jtis.iter().enumerate() {
        let kept = store.find_refresh_token(*jti).await.unwrap().is_some();
        assert_eq!(kept, index >= 50, "token {index}");
    }
    // The kept rows still chain to their children, and the grace rule can find them.
    let child = store.find_child_token(jtis[58]).await.unwrap().unwrap();
    assert_eq!(child.jti, jtis[59]);
    // Other sessions are untouched.
    assert!(
        store
            .find_refresh_token(other_session.jti)
            .await
            .unwrap()
            .is_some()
    );
}

fn reset_request(email: &str, hash: [u8; 32]) -> ResetRequest<'_> {
    ResetRequest {
        email,
        token: TokenMail {
            token_hash: hash,
            expires_at: Utc::now() + Duration::minutes(30),
            mail: NewMail {
                template: MailTemplate::PasswordReset,
                link: Some("http://localhost:3000/reset-password?token=t".to_owned()),
            },
        },
        min_interval: Duration::seconds(60),
        per_hour: 5,
    }
}

async fn reset_tokens_and_the_mail_outbox(backend: Backend) {
    let (_db, store) = store(backend).await;
    let now = Utc::now()
        .duration_trunc(Duration::microseconds(1))
        .unwrap();
    let user = store
        .insert_user("mail@example.com", "h", now)
        .await
        .unwrap();
    // A live session, which the reset must end.
    session(&store, user.id).await;
    // Queued once; the throttle and an unknown email queue nothing.
    assert!(
        store
            .queue_password_reset(&reset_request("mail@example.com", [1; 32]), now)
            .await
            .unwrap()
    );
    assert!(
        !store
            .queue_password_reset(&reset_request("mail@example.com", [2; 32]), now)
            .await
            .unwrap()
    );
    assert!(
        !store
            .queue_password_reset(&reset_request("nobody@example.com", [3; 32]), now)
            .await
            .unwrap()
    );
    assert_eq!(store.pending_mail().await.unwrap(), 1);
    assert_eq!(
        store.next_mail_due().await.unwrap(),
        Some(now),
        "due when queued"
    );
    // Claimed with a lease; not again while it runs; again once it ran out.
    let claimed = store
        .claim_mail(now, now + Duration::seconds(60), 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let mail = &claimed[0];
    assert_eq!(
        (
            mail.recipient.as_str(),
            mail.template.as_str(),
            mail.attempts
        ),
        ("mail@example.com", "password_reset", 1)
    );
    assert!(mail.link.as_deref().unwrap().contains("token="));
    assert_eq!(
        store.next_mail_due().await.unwrap(),
        Some(now + Duration::seconds(60)),
        "a leased message is due when its lease runs out"
    );
    assert!(
        store
            .claim_mail(now + Duration::seconds(30), now + Duration::seconds(90), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let again = store
        .claim_mail(
            now + Duration::seconds(61),
            now + Duration::seconds(121),
            10,
        )
        .await
        .unwrap();
    assert_eq!(
        (again.len(), again[0].attempts),
        (1, 2),
        "a dead worker's lease runs out"
    );
    // A retry waits for its time.
    store
        .finish_mail(
            mail.id,
            MailOutcome::RetryAt(now + Duration::seconds(200)),
            now,
        )
        .await
        .unwrap();
    assert_eq!(
        store.next_mail_due().await.unwrap(),
        Some(now + Duration::seconds(200)),
        "a retry is due at its time"
    );
    assert!(
        store
            .claim_mail(
                now + Duration::seconds(150),
                now + Duration::seconds(210),
                10
            )
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .claim_mail(
                now + Duration::seconds(201),
                now + Duration::seconds(261),
                10
            )
            .await
            .unwrap()
            .len(),
        1
    );
    store
        .finish_mail(mail.id, MailOutcome::Sent, now)
        .await
        .unwrap();
    assert_eq!(store.pending_mail().await.unwrap(), 0);
    assert_eq!(store.next_mail_due().await.unwrap(), None, "nothing queued");
    assert!(
        store
            .claim_mail(now + Duration::days(1), now + Duration::days(2), 10)
            .await
            .unwrap()
            .is_empty()
    );
    // The reset: once, and it ends the sessions and queues the notification.
    let notification = NewMail {
        template: MailTemplate::PasswordChanged,
        link: None,
    };
    let reset = MailTemplate::PasswordReset;
    assert!(store.token_is_usable(&[1; 32], reset, now).await.unwrap());
    assert!(!store.token_is_usable(&[9; 32], reset, now).await.unwrap());
    assert!(
        !store
            .token_is_usable(&[1; 32], MailTemplate::VerifyEmail, now)
            .await
            .unwrap(),
        "another kind"
    );
    // As the message is sent, the queued token's place takes the issued one's hash.
    assert!(
        store
            .reissue_token(user.id, reset, &[7; 32], now + Duration::minutes(30), now)
            .await
            .unwrap()
    );
    assert!(!store.token_is_usable(&[1; 32], reset, now).await.unwrap());
    assert!(store.token_is_usable(&[7; 32], reset, now).await.unwrap());
    assert!(
        store
            .reissue_token(user.id, reset, &[1; 32], now + Duration::minutes(30), now)
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .reset_password_by_token(&[9; 32], "new", &notification, now)
            .await
            .unwrap(),
        None,
        "unknown token"
    );
    assert_eq!(
        store
            .reset_password_by_token(&[1; 32], "new-hash", &notification, now)
            .await
            .unwrap(),
        Some(user.id)
    );
    assert_eq!(
        store
            .reset_password_by_token(&[1; 32], "again", &notification, now)
            .await
            .unwrap(),
        None,
        "used"
    );
    assert!(!store.token_is_usable(&[1; 32], reset, now).await.unwrap());
    let stored = store.find_user_by_id(user.id).await.unwrap().unwrap();
    assert_eq!(stored.password_hash, "new-hash");
    assert!(
        store
            .export_refresh_tokens(now)
            .await
            .unwrap()
            .iter()
            .all(|t| t.user_id != user.id || t.revoked_at.is_some()),
        "every session ended"
    );
    assert_eq!(store.pending_mail().await.unwrap(), 1, "the notification");
    let failed = store
        .claim_mail(now, now + Duration::seconds(60), 10)
        .await
        .unwrap();
    store
        .finish_mail(failed[0].id, MailOutcome::Failed, now)
        .await
        .unwrap();
    assert_eq!(store.pending_mail().await.unwrap(), 0);
    // An expired token cannot be used.
    let later = now + Duration::hours(2);
    assert!(
        store
            .queue_password_reset(&reset_request("mail@example.com", [4; 32]), later)
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .reset_password_by_token(&[4; 32], "x", &notification, later + Duration::hours(1))
            .await
            .unwrap(),
        None
    );
    // The admin's set-password ends every session; verify-email marks the address.
    session(&store, user.id).await;
    assert!(
        store
            .set_password_by_admin(user.id, "admin-hash", later)
            .await
            .unwrap()
    );
    assert!(
        !store
            .set_password_by_admin(user.id + 1000, "x", later)
            .await
            .unwrap()
    );
    let stored = store.find_user_by_id(user.id).await.unwrap().unwrap();
    assert_eq!(stored.password_hash, "admin-hash");
    assert!(
        store
            .export_refresh_tokens(now)
            .await
            .unwrap()
            .iter()
            .all(|t| t.user_id != user.id || t.revoked_at.is_some())
    );
    let other = store
        .insert_user("plain@example.com", "h", now)
        .await
        .unwrap();
    assert!(store.mark_email_verified(other.id, now).await.unwrap());
    assert!(
        !store
            .mark_email_verified(other.id + 1000, now)
            .await
            .unwrap()
    );
    let other = store.find_user_by_id(other.id).await.unwrap().unwrap();
    assert!(other.email_verified_at.is_some());
    // The admin's set voided the user's outstanding reset link (a queued message can no
    // longer issue one); another user's stays.
    assert!(!store.token_is_usable(&[4; 32], reset, now).await.unwrap());
    assert!(
        !store
            .reissue_token(user.id, reset, &[6; 32], later, later)
            .await
            .unwrap()
    );
    assert!(
        store
            .queue_password_reset(&reset_request("plain@example.com", [5; 32]), now)
            .await
            .unwrap()
    );
    // Purges: sent and failed mail, expired tokens.
    let future = now + Duration::days(10);
    assert_eq!(
        store.purge_batch(Purge::Mail(future), 100).await.unwrap(),
        2
    );
    assert!(
        store
            .purge_batch(Purge::UserTokens(future), 100)
            .await
            .unwrap()
            >= 1
    );
}

/// The upgrade that records devices (0007) leaves existing sessions' use, user agent and IP
/// null; they are still listed, and a refresh records its use.
async fn sessions_from_before_devices_get_nulls(backend: Backend) {
    let db = TestDb::new(backend).await;
    let created = "2026-11-02T03:04:05Z";
    let expires = "2099-01-01T00:00:00Z";
    let session = Uuid::new_v4();
    match &db.url {
        auth_service::config::DatabaseUrl::Postgres(_) => {
            let pool = sqlx::PgPool::connect(&db.url_string()).await.unwrap();
            let mut before = sqlx::migrate!("migrations/postgres");
            before.migrations = before.migrations[..6].to_vec().into();
            before.run(&pool).await.unwrap();
            sqlx::query(
                "insert into users (id, email, password_hash, is_active, created_at, updated_at) \
                 values (1, 'old@example.com', 'h', true, $1::timestamptz, $1::timestamptz)",
            )
            .bind(created)
            .execute(&pool)
            .await
            .unwrap();
            sqlx::query(
                "insert into sessions (id, user_id, created_at, expires_at) \
                 values ($1, 1, $2::timestamptz, $3::timestamptz)",
            )
            .bind(session)
            .bind(created)
            .bind(expires)
            .execute(&pool)
            .await
            .unwrap();
            pool.close().await;
        }
        _ => {
            let pool = sqlx::SqlitePool::connect(&format!("{}?mode=rwc", db.url_string()))
                .await
                .unwrap();
            let mut before = sqlx::migrate!("migrations/sqlite");
            before.migrations = before.migrations[..6].to_vec().into();
            before.run(&pool).await.unwrap();
            let at = |text: &str| chrono::DateTime::parse_from_rfc3339(text).unwrap().to_utc();
            sqlx::query(
                "insert into users (id, email, password_hash, is_active, created_at, updated_at) \
                 values (1, 'old@example.com', 'h', true, $1, $1)",
            )
            .bind(at(created))
            .execute(&pool)
            .await
            .unwrap();
            sqlx::query(
                "insert into sessions (id, user_id, created_at, expires_at) values ($1, 1, $2, $3)",
            )
            .bind(session)
            .bind(at(created))
            .bind(at(expires))
            .execute(&pool)
            .await
            .unwrap();
            pool.close().await;
        }
    }
    let store = db.unmigrated_store().await;
    store.migrate().await.unwrap();
    let row = store.find_session(session).await.unwrap().unwrap();
    assert_eq!(
        (row.last_used_at, row.user_agent, row.ip),
        (None, None, None)
    );
    let now = Utc::now().duration_trunc(Duration::seconds(1)).unwrap();
    let live = store.live_sessions(1, now).await.unwrap();
    assert_eq!(live.len(), 1);
    assert!(store.touch_session(session, now).await.unwrap().is_some());
    let row = store.find_session(session).await.unwrap().unwrap();
    assert_eq!(row.last_used_at, Some(now));
}

/// Logout-all and a disable cost one event whatever the sessions: also for sessions from before
/// `last_used_at` existed (every session of an upgraded installation), which the user-wide
/// cut-off covers. A password change (no cut-off: the caller's session lives on) still names
/// them, as they may hold a live token.
async fn ending_every_session_from_before_devices_writes_one_event(backend: Backend) {
    let (db, store) = store(backend).await;
    let now = Utc::now().duration_trunc(Duration::seconds(1)).unwrap();
    let mut users = Vec::new();
    for name in ["all", "disabled", "changed"] {
        let user = store
            .insert_user(&format!("{name}@example.com"), "h", now)
            .await
            .unwrap();
        for _ in 0..40 {
            session(&store, user.id).await;
        }
        users.push(user.id);
    }
    // As an installation upgraded to migration 0007 has them: never recorded as used.
    db.execute("update sessions set last_used_at = null").await;
    let events_for = |user: i64, after: i64| {
        let store = Arc::clone(&store);
        async move {
            store
                .events_since(after, 1000)
                .await
                .unwrap()
                .into_iter()
                .filter(|e| e.user_id == user)
                .map(|e| e.kind)
                .collect::<Vec<_>>()
        }
    };
    let before = store.last_event_id().await.unwrap();
    assert_eq!(store.revoke_user_sessions(users[0], now).await.unwrap(), 40);
    assert!(store.set_user_active(users[1], false, now).await.unwrap());
    assert_eq!(
        events_for(users[0], before).await,
        [EventKind::LoggedOutEverywhere]
    );
    assert_eq!(
        events_for(users[1], before).await,
        [EventKind::UserDisabled]
    );
    assert!(store.live_sessions(users[0], now).await.unwrap().is_empty());
    assert!(store.live_sessions(users[1], now).await.unwrap().is_empty());
    let keep = store.live_sessions(users[2], now).await.unwrap()[0].id;
    let changed = store
        .change_password_by_user(
            &PasswordChange {
                user_id: users[2],
                old_hash: "h",
                new_hash: "new",
                keep,
                live_tokens_since: now - Duration::minutes(15),
                notification: &NewMail {
                    template: MailTemplate::PasswordChanged,
                    link: None,
                },
            },
            now,
        )
        .await
        .unwrap();
    assert!(changed);
    assert_eq!(events_for(users[2], before).await.len(), 39);
}

/// The upgrade that adds email verification marks every existing user verified; users made
/// after it start unverified.
async fn users_from_before_verification_count_as_verified(backend: Backend) {
    let db = TestDb::new(backend).await;
    // The schema as it was before the recovery migration (0006), with one user in it.
    let created = "2026-01-02T03:04:05Z";
    match &db.url {
        auth_service::config::DatabaseUrl::Postgres(_) => {
            let pool = sqlx::PgPool::connect(&db.url_string()).await.unwrap();
            let mut before = sqlx::migrate!("migrations/postgres");
            before.migrations = before.migrations[..5].to_vec().into();
            before.run(&pool).await.unwrap();
            sqlx::query(
                "insert into users (email, password_hash, is_active, created_at, updated_at) \
                 values ('old@example.com', 'h', true, $1::timestamptz, $1::timestamptz)",
            )
            .bind(created)
            .execute(&pool)
            .await
            .unwrap();
            pool.close().await;
        }
        _ => {
            let pool = sqlx::SqlitePool::connect(&format!("{}?mode=rwc", db.url_string()))
                .await
                .unwrap();
            let mut before = sqlx::migrate!("migrations/sqlite");
            before.migrations = before.migrations[..5].to_vec().into();
            before.run(&pool).await.unwrap();
            sqlx::query(
                "insert into users (email, password_hash, is_active, created_at, updated_at) \
                 values ('old@example.com', 'h', true, $1, $1)",
            )
            .bind(created)
            .execute(&pool)
            .await
            .unwrap();
            pool.close().await;
        }
    }
    let store = db.unmigrated_store().await;
    store.migrate().await.unwrap();
    let old = store
        .find_user_by_email("old@example.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        old.email_verified_at.map(|at| at.to_rfc3339()),
        Some(old.created_at.to_rfc3339()),
        "verified as of its creation"
    );
    let new = store
        .insert_user("new@example.com", "h", Utc::now())
        .await
        .unwrap();
    assert_eq!(new.email_verified_at, None);
}

/// Several workers (replicas) claiming at once never get the same message.
async fn concurrent_claims_never_share_a_message(backend: Backend) {
    let (_db, store) = store(backend).await;
    let now = Utc::now();
    for i in 0..12 {
        let email = format!("m{i}@example.com");
        store.insert_user(&email, "h", now).await.unwrap();
        assert!(
            store
                .queue_password_reset(&reset_request(&email, [i; 32]), now)
                .await
                .unwrap()
        );
    }
    let claims =
        join_all((0..4).map(|_| store.claim_mail(now, now + Duration::seconds(60), 5))).await;
    let mut ids: Vec<i64> = claims
        .into_iter()
        .flat_map(|c| c.unwrap())
        .map(|m| m.id)
        .collect();
    let claimed = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), claimed, "a message claimed twice");
    assert_eq!(claimed, 12);
}

async fn revocations_end_sessions_once_and_append_events(backend: Backend) {
    let (_db, store) = store(backend).await;
    let now = Utc::now();
    let a = store.insert_user("a@example.com", "h", now).await.unwrap();
    let b = store.insert_user("b@example.com", "h", now).await.unwrap();
    let a1 = session(&store, a.id).await;
    let a2 = session(&store, a.id).await;
    let b1 = session(&store, b.id).await;
    let start = store.last_event_id().await.unwrap();
    // One session: once.
    assert!(store.revoke_session(a1.family_id, now).await.unwrap());
    assert!(!store.revoke_session(a1.family_id, now).await.unwrap());
    assert!(!store.revoke_session(Uuid::new_v4(), now).await.unwrap());
    assert!(
        store
            .find_refresh_token(a1.jti)
            .await
            .unwrap()
            .unwrap()
            .revoked_at
            .is_some()
    );
    // Every session of a user, and only that user's.
    assert_eq!(store.revoke_user_sessions(a.id, now).await.unwrap(), 1);
    assert!(
        store
            .find_session(a2.family_id)
            .await
            .unwrap()
            .unwrap()
            .revoked_at
            .is_some()
    );
    assert!(
        store
            .find_session(b1.family_id)
            .await
            .unwrap()
            .unwrap()
            .revoked_at
            .is_none()
    );
    let stored = store.find_user_by_id(a.id).await.unwrap().unwrap();
    assert_eq!(
        stored.tokens_not_before,
        Some(now.duration_trunc(Duration::seconds(1)).unwrap())
    );
    assert_eq!(
        store.revoke_user_sessions(a.id + 100, now).await.unwrap(),
        0
    );
    // The events, in order: one per change that killed something.
    let events = store.events_since(start, 100).await.unwrap();
    let kinds: Vec<(EventKind, i64, Option<Uuid>)> = events
        .iter()
        .map(|e| (e.kind, e.user_id, e.session_id))
        .collect();
    assert_eq!(
        kinds,
        [
            (EventKind::SessionRevoked, a.id, Some(a1.family_id)),
            // Logout-all names each session it ended that was used in the cut-off second
            // (a2 just logged in), so a local verifier refuses a same-second token of it
            // (the cut-off alone is per second).
            (EventKind::SessionRevoked, a.id, Some(a2.family_id)),
            (EventKind::LoggedOutEverywhere, a.id, None),
        ]
    );
    assert_eq!(events[2].not_before, stored.tokens_not_before);
}

async fn disabling_and_deleting_end_sessions_and_append_events(backend: Backend) {
    let (_db, store) = store(backend).await;
    let now = Utc::now();
    let user = store.insert_user("d@example.com", "h", now).await.unwrap();
    let first = session(&store, user.id).await;
    let start = store.last_event_id().await.unwrap();
    assert!(store.set_user_active(user.id, false, now).await.unwrap());
    assert!(
        store
            .find_session(first.family_id)
            .await
            .unwrap()
            .unwrap()
            .revoked_at
            .is_some()
    );
    assert!(store.set_user_active(user.id, true, now).await.unwrap());
    let stored = store.find_user_by_id(user.id).await.unwrap().unwrap();
    assert!(
        stored.is_active && stored.tokens_not_before.is_some(),
        "enabling keeps the cut-off"
    );
    assert!(store.delete_user(user.id, now).await.unwrap());
    assert!(!store.delete_user(user.id, now).await.unwrap());
    assert!(!store.set_user_active(user.id, true, now).await.unwrap());
    assert!(
        store.find_session(first.family_id).await.unwrap().is_none(),
        "cascade"
    );
    assert!(
        store.find_refresh_token(first.jti).await.unwrap().is_none(),
        "cascade"
    );
    let kinds: Vec<EventKind> = store
        .events_since(start, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            EventKind::SessionRevoked,
            EventKind::UserDisabled,
            EventKind::UserEnabled,
            EventKind::UserDeleted
        ]
    );
}

async fn events_are_read_in_order_and_signalled(backend: Backend) {
    let (_db, store) = store(backend).await;
    let now = Utc::now();
    assert_eq!(store.last_event_id().await.unwrap(), 0);
    assert_eq!(store.event_bounds().await.unwrap(), None);
    let user = store.insert_user("e@example.com", "h", now).await.unwrap();
    let sessions: Vec<NewRefreshToken> = join_all((0..6).map(|_| session(&store, user.id))).await;
    let signal = store.event_signal();
    assert_eq!(
        signal.is_some(),
        backend == Backend::Postgres,
        "LISTEN on PostgreSQL only"
    );
    // Concurrent revocations: every event arrives once, ids strictly increasing.
    let ended = join_all(
        sessions
            .iter()
            .map(|s| store.revoke_session(s.family_id, now)),
    )
    .await;
    assert!(ended.into_iter().all(|e| e.unwrap()));
    let all = store.events_since(0, 100).await.unwrap();
    assert_eq!(all.len(), 6);
    assert!(all.windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!(store.last_event_id().await.unwrap(), all[5].id);
    assert_eq!(
        store.event_bounds().await.unwrap(),
        Some((all[0].id, all[5].id))
    );
    // Paging.
    let page = store.events_since(all[1].id, 2).await.unwrap();
    assert_eq!(
        page.iter().map(|e| e.id).collect::<Vec<_>>(),
        [all[2].id, all[3].id]
    );
    // A commit wakes the signal's waiters (PostgreSQL NOTIFY).
    if let Some(signal) = signal {
        // The listener connects in the background; keep changing until a wake-up arrives.
        let woken = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            loop {
                let notified = signal.notified();
                let extra = session(&store, user.id).await;
                store.revoke_session(extra.family_id, now).await.unwrap();
                if tokio::time::timeout(std::time::Duration::from_millis(500), notified)
                    .await
                    .is_ok()
                {
                    break;
                }
            }
        })
        .await;
        assert!(woken.is_ok(), "no NOTIFY arrived");
    }
}

async fn export_and_import_round_trip(backend: Backend) {
    let (_db, store) = store(backend).await;
    let now = Utc::now().duration_trunc(Duration::seconds(1)).unwrap();
    let user = store.insert_user("x@example.com", "h", now).await.unwrap();
    let live = session(&store, user.id).await;
    let ended = session(&store, user.id).await;
    store.revoke_session(ended.family_id, now).await.unwrap();
    // A confirmed factor with two recovery codes, one used, and an unconfirmed factor.
    let mail = NewMail {
        template: MailTemplate::MfaEnrolled,
        link: None,
    };
    let factor = |id| NewFactor {
        id,
        user_id: user.id,
        secret: b"sealed",
        secret_key: Some("k1"),
        created_at: now,
    };
    let confirmed = Uuid::new_v4();
    assert!(store.add_totp_factor(&factor(confirmed), 5).await.unwrap());
    let codes = [[7u8; 32], [8u8; 32]];
    let confirming = confirmation(confirmed, user.id, live.family_id, 100, &codes, &mail);
    assert!(matches!(
        store.confirm_factor(&confirming, now).await.unwrap(),
        Confirmation::Confirmed { .. }
    ));
    assert!(
        store
            .use_recovery_code(user.id, &codes[0], &mail, now)
            .await
            .unwrap()
    );
    let unconfirmed = Uuid::new_v4();
    assert!(
        store
            .add_totp_factor(&factor(unconfirmed), 5)
            .await
            .unwrap()
    );
    let passkey_mail = NewMail {
        template: MailTemplate::PasskeyAdded,
        link: None,
    };
    let passkey = NewPasskey {
        id: Uuid::new_v4(),
        user_id: user.id,
        user_handle: Uuid::new_v4(),
        credential_id: b"copied-cred",
        credential: r#"{"cred": 1}"#,
        name: "Laptop",
        notification: &passkey_mail,
        created_at: now,
    };
    assert_eq!(store.add_passkey(&passkey).await.unwrap(), Ok(()));
    let users = store.export_users().await.unwrap();
    let tokens = store.export_refresh_tokens(now).await.unwrap();
    assert_eq!((users.len(), tokens.len()), (1, 2));
    let passkeys = store.export_passkeys().await.unwrap();
    assert_eq!(passkeys, store.user_passkeys(user.id).await.unwrap());
    let (factors, recovery_codes) = store.export_second_factors().await.unwrap();
    assert_eq!(
        factors.iter().map(|f| f.id).collect::<Vec<_>>(),
        [confirmed],
        "confirmed factors only"
    );
    assert_eq!(recovery_codes.len(), 1, "unused codes only");
    assert!(
        store
            // The later of the two (they may be made a second apart).
            .export_refresh_tokens(live.expires_at.max(ended.expires_at))
            .await
            .unwrap()
            .is_empty()
    );
    let transfer = Transfer {
        users,
        tokens,
        factors,
        recovery_codes,
        passkeys,
    };
    let other_db = TestDb::new(backend).await;
    let target = other_db.store().await;
    let report = target.import(&transfer, false).await.unwrap().unwrap();
    assert_eq!(
        (
            report.users,
            report.skipped_users,
            report.tokens,
            report.factors,
            report.passkeys
        ),
        (1, 0, 2, 1, 1)
    );
    assert_eq!(
        target.user_passkeys(user.id).await.unwrap(),
        store.user_passkeys(user.id).await.unwrap(),
        "the passkey as it was"
    );
    assert!(
        target.import(&transfer, false).await.unwrap().is_none(),
        "not empty"
    );
    let merged = target.import(&transfer, true).await.unwrap().unwrap();
    assert_eq!(
        (
            merged.users,
            merged.skipped_users,
            merged.factors,
            merged.passkeys
        ),
        (0, 1, 0, 0)
    );
    // The factor as it was (sealed, its step), and the unused code alone still works.
    let copied = target.confirmed_factors(user.id).await.unwrap();
    assert_eq!(
        copied,
        store.confirmed_factors(user.id).await.unwrap(),
        "{copied:?}"
    );
    assert!(!target.use_time_step(confirmed, 100, now).await.unwrap());
    assert_eq!(target.recovery_codes_left(user.id).await.unwrap(), 1);
    assert!(
        !target
            .use_recovery_code(user.id, &codes[0], &mail, now)
            .await
            .unwrap()
    );
    assert!(
        target
            .use_recovery_code(user.id, &codes[1], &mail, now)
            .await
            .unwrap()
    );
    // Sessions come along, ended where their tokens were all revoked.
    let live_row = target.find_session(live.family_id).await.unwrap().unwrap();
    assert_eq!(live_row.revoked_at, None);
    let ended_row = target.find_session(ended.family_id).await.unwrap().unwrap();
    assert!(ended_row.revoked_at.is_some());
    assert_eq!(
        target
            .find_user_by_id(user.id)
            .await
            .unwrap()
            .unwrap()
            .email,
        "x@example.com"
    );
}

async fn imported_users_are_inserted_once_and_a_dry_run_writes_nothing(backend: Backend) {
    use auth_service::store::ImportedUser;
    let (_db, store) = store(backend).await;
    let now = Utc::now().duration_trunc(Duration::seconds(1)).unwrap();
    store
        .insert_user("taken@example.com", "h", now)
        .await
        .unwrap();
    let user = |email: &str, active: bool| ImportedUser {
        email: email.to_owned(),
        password_hash: "$P$6maPPE8TkQ5VY.lVM2wfxDbKNGdRu41".to_owned(),
        is_active: active,
        created_at: now - Duration::days(400),
        email_verified_at: active.then_some(now - Duration::days(400)),
    };
    let batch = [
        user("new@example.com", true),
        user("taken@example.com", true),
        user("off@example.com", false),
    ];
    let taken = store
        .find_user_by_email("taken@example.com")
        .await
        .unwrap()
        .unwrap()
        .id;
    let outcome = |mut rows: Vec<auth_service::store::ImportedRow>| {
        rows.sort_by(|a, b| a.email.cmp(&b.email));
        rows.into_iter()
            .map(|row| (row.email, row.inserted, row.id))
            .collect::<Vec<_>>()
    };
    // A dry run answers as a real one would and writes nothing.
    let would = outcome(
        store
            .insert_imported_users(&batch, now, true)
            .await
            .unwrap(),
    );
    let inserted: Vec<_> = would.iter().map(|(e, i, _)| (e.clone(), *i)).collect();
    assert_eq!(
        inserted,
        [
            ("new@example.com".to_owned(), true),
            ("off@example.com".to_owned(), true),
            ("taken@example.com".to_owned(), false)
        ]
    );
    assert_eq!(would[2].2, taken, "the id holding an existing email");
    assert!(
        store
            .find_user_by_email("new@example.com")
            .await
            .unwrap()
            .is_none()
    );
    // The real run: the existing email is left alone, the rest inserted as given, with new
    // ids above the existing one.
    let done = outcome(
        store
            .insert_imported_users(&batch, now, false)
            .await
            .unwrap(),
    );
    assert_eq!(
        done.iter()
            .map(|(e, i, _)| (e.clone(), *i))
            .collect::<Vec<_>>(),
        inserted
    );
    assert!(done[0].2 > taken && done[1].2 > taken);
    let new = store
        .find_user_by_email("new@example.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            new.password_hash.as_str(),
            new.is_active,
            new.created_at,
            new.updated_at,
            new.email_verified_at
        ),
        (
            "$P$6maPPE8TkQ5VY.lVM2wfxDbKNGdRu41",
            true,
            now - Duration::days(400),
            now,
            Some(now - Duration::days(400))
        )
    );
    let off = store
        .find_user_by_email("off@example.com")
        .await
        .unwrap()
        .unwrap();
    assert!(!off.is_active && off.email_verified_at.is_none());
    assert_eq!(
        store
            .find_user_by_email("taken@example.com")
            .await
            .unwrap()
            .unwrap()
            .password_hash,
        "h"
    );
    // Again: nothing new, each email with the id now holding it.
    let again = outcome(
        store
            .insert_imported_users(&batch, now, false)
            .await
            .unwrap(),
    );
    assert_eq!(
        again,
        done.iter()
            .map(|(e, _, id)| (e.clone(), false, *id))
            .collect::<Vec<_>>()
    );
    assert!(
        store
            .insert_imported_users(&[], now, false)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn purging_deletes_only_what_nothing_needs(backend: Backend) {
    use auth_service::state::AppState;
    // Arrange: rotation on, one chain whose first token expires while its child lives.
    let app = TestApp::spawn_with(backend, &[("REFRESH_TOKEN_ROTATION", "on")]).await;
    let (_, _, first) = app.user_with_tokens("chain@example.com").await;
    app.login("chain@example.com", "WrongPass123").await;
    app.login("nobody@example.com", "WrongPass123").await;
    let (_, ended) = app.tokens("chain@example.com").await;
    app.logout(&ended).await;
    let (_, also_ended) = app.tokens("chain@example.com").await;
    app.logout(&also_ended).await;
    app.clock.advance(Duration::days(29));
    let child = json_of(app.refresh(&first).await).await["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    app.clock.advance(Duration::days(2));
    // Act
    let config = test_config(&app.db, &[("REFRESH_TOKEN_ROTATION", "on")]);
    let state = AppState::build(config, Arc::new(app.clock.clone()))
        .await
        .unwrap();
    let report = state.auth().purge().await.unwrap();
    // Assert: the expired parent and the logged-out sessions' tokens, those sessions, the
    // counters whose window is over and the older month-old event are gone; the newest
    // event stays, as the revocation feed's cursor boundary...
    assert_eq!(report.refresh_tokens, 3, "{report:?}");
    assert_eq!(
        report.login_attempts, 2,
        "nobody@ and the client IP's: {report:?}"
    );
    assert_eq!(report.events, 1, "{report:?}");
    assert_eq!(report.sessions, 2, "{report:?}");
    // ...and nothing anyone needs: the live child refreshes and the user logs in.
    assert_eq!(app.refresh(&child).await.status(), reqwest::StatusCode::OK);
    assert_eq!(
        app.login("chain@example.com", PASSWORD).await.status(),
        reqwest::StatusCode::OK
    );
    // A second run finds nothing.
    assert_eq!(
        state.auth().purge().await.unwrap(),
        auth_service::service::purge::PurgeReport::default()
    );
}

async fn email_update_is_a_compare_and_set(backend: Backend) {
    let (_db, store) = store(backend).await;
    let now = Utc::now();
    let a = store.insert_user("a@example.com", "h", now).await.unwrap();
    store.insert_user("b@example.com", "h", now).await.unwrap();
    // Act / Assert: only from the email it still has; never onto another user's.
    assert!(
        !store
            .update_user_email(a.id, "stale@example.com", "c@example.com")
            .await
            .unwrap()
    );
    assert!(matches!(
        store
            .update_user_email(a.id, "a@example.com", "b@example.com")
            .await,
        Err(StoreError::Duplicate)
    ));
    assert!(
        store
            .update_user_email(a.id, "a@example.com", "c@example.com")
            .await
            .unwrap()
    );
    assert_eq!(
        store.find_user_by_id(a.id).await.unwrap().unwrap().email,
        "c@example.com"
    );
    assert!(
        store
            .find_user_by_email("a@example.com")
            .await
            .unwrap()
            .is_none()
    );
}

async fn data_migrations_are_recorded_once(backend: Backend) {
    let (_db, store) = store(backend).await;
    let now = Utc::now();
    assert!(!store.data_migration_done("rekey-test").await.unwrap());
    store
        .record_data_migration("rekey-test", now)
        .await
        .unwrap();
    store
        .record_data_migration("rekey-test", now)
        .await
        .unwrap();
    assert!(store.data_migration_done("rekey-test").await.unwrap());
    assert!(!store.data_migration_done("another").await.unwrap());
}

async fn purge_batches_delete_only_what_nothing_needs(backend: Backend) {
    // Arrange: three finished login counters and a live lock; a rotated chain whose parent
    // expires before its child; an old event and a newer one.
    let (_db, store) = store(backend).await;
    let now = Utc::now().duration_trunc(Duration::seconds(1)).unwrap();
    let old = now - Duration::hours(1);
    for key in ["a", "b", "c"] {
        store
            .reserve_login_attempt(key, old, limits())
            .await
            .unwrap();
    }
    // Its window is over too, but a lock longer than the window still holds.
    let long_lock = AttemptLimits {
        lockout: Duration::hours(2),
        ..limits()
    };
    for _ in 0..5 {
        store
            .reserve_login_attempt("locked", old, long_lock)
            .await
            .unwrap();
    }
    let user = store.insert_user("p@example.com", "h", now).await.unwrap();
    let parent = session(&store, user.id).await;
    let child = NewRefreshToken {
        expires_at: now + Duration::days(60),
        ..token(user.id, parent.family_id, Some(parent.jti))
    };
    assert!(matches!(
        store
            .rotate_refresh_token(parent.jti, &child, now, now)
            .await
            .unwrap(),
        RotateOutcome::Rotated(_)
    ));
    let other = session(&store, user.id).await;
    store.revoke_session(other.family_id, old).await.unwrap();
    store.revoke_session(parent.family_id, now).await.unwrap();
    let attempts = || Purge::LoginAttempts {
        window_start_before: now - Duration::minutes(15),
        now,
    };
    // Act / Assert: batches of at most `limit`, until none is left; the live lock stays.
    assert_eq!(store.purge_batch(attempts(), 2).await.unwrap(), 2);
    assert_eq!(store.purge_batch(attempts(), 2).await.unwrap(), 1);
    assert_eq!(store.purge_batch(attempts(), 2).await.unwrap(), 0);
    assert!(store.find_login_attempt("locked").await.unwrap().is_some());
    // The expired parent goes; its child stays, unlinked.
    let tokens = Purge::RefreshTokens(now + Duration::days(31));
    assert_eq!(
        store.purge_batch(tokens, 10).await.unwrap(),
        2,
        "parent and other"
    );
    assert!(
        store
            .find_refresh_token(parent.jti)
            .await
            .unwrap()
            .is_none()
    );
    let kept = store.find_refresh_token(child.jti).await.unwrap().unwrap();
    assert_eq!(kept.parent_jti, None);
    // A session goes once its newest token has expired.
    assert_eq!(
        store
            .purge_batch(Purge::Sessions(now + Duration::days(31)), 10)
            .await
            .unwrap(),
        1
    );
    assert!(store.find_session(other.family_id).await.unwrap().is_none());
    assert!(
        store
            .find_session(parent.family_id)
            .await
            .unwrap()
            .is_some()
    );
    // Events older than the cut-off go, except the newest of all.
    let events = Purge::Events(now + Duration::seconds(1));
    assert_eq!(store.purge_batch(events, 10).await.unwrap(), 1);
    let newest = store.last_event_id().await.unwrap();
    assert_eq!(store.event_bounds().await.unwrap(), Some((newest, newest)));
}

fn verification(hash: [u8; 32], now: chrono::DateTime<Utc>) -> TokenMail {
    TokenMail {
        token_hash: hash,
        expires_at: now + Duration::hours(24),
        mail: NewMail {
            template: MailTemplate::VerifyEmail,
            link: None,
        },
    }
}

async fn registration_queues_verification_and_its_token_verifies_once(backend: Backend) {
    let (_db, store) = store(backend).await;
    let now = Utc::now()
        .duration_trunc(Duration::microseconds(1))
        .unwrap();
    // The comparison key and the address mail goes to are kept apart; the token and its mail
    // are written with the user.
    let user = store
        .register_user(
            "anna@fass.de",
            "Anna@faß.de",
            "h",
            now,
            Some(&verification([1; 32], now)),
        )
        .await
        .unwrap();
    assert_eq!(
        (user.email.as_str(), user.email_verified_at),
        ("anna@fass.de", None)
    );
    let claimed = store
        .claim_mail(now, now + Duration::seconds(30), 10)
        .await
        .unwrap();
    assert_eq!(
        claimed
            .iter()
            .map(|m| (m.recipient.as_str(), m.template))
            .collect::<Vec<_>>(),
        [("Anna@faß.de", MailTemplate::VerifyEmail)]
    );
    assert!(matches!(
        store
            .register_user("anna@fass.de", "anna@fass.de", "h", now, None)
            .await,
        Err(StoreError::Duplicate)
    ));
    // A resend within the interval queues nothing; after it, a new token voids the old one.
    let interval = Duration::seconds(60);
    assert!(
        !store
            .queue_email_verification(user.id, &verification([2; 32], now), interval, now)
            .await
            .unwrap()
    );
    let later = now + Duration::seconds(61);
    assert!(
        store
            .queue_email_verification(user.id, &verification([2; 32], later), interval, later)
            .await
            .unwrap()
    );
    assert_eq!(store.verify_email(&[1; 32], later).await.unwrap(), None);
    assert_eq!(
        store
            .verify_email(&[2; 32], later + Duration::hours(25))
            .await
            .unwrap(),
        None,
        "expired"
    );
    assert_eq!(
        store.verify_email(&[2; 32], later).await.unwrap(),
        Some(user.id)
    );
    assert_eq!(
        store.verify_email(&[2; 32], later).await.unwrap(),
        None,
        "once"
    );
    let verified = store.find_user_by_id(user.id).await.unwrap().unwrap();
    assert_eq!(verified.email_verified_at, Some(later));
    // A verified address is not mailed again, and marking it again keeps the first time.
    assert!(
        !store
            .queue_email_verification(
                user.id,
                &verification([3; 32], later),
                interval,
                later + interval * 2
            )
            .await
            .unwrap()
    );
    assert!(
        store
            .mark_email_verified(user.id, later + Duration::hours(1))
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .find_user_by_id(user.id)
            .await
            .unwrap()
            .unwrap()
            .email_verified_at,
        Some(later)
    );
    assert!(
        !store
            .mark_email_verified(user.id + 1000, later)
            .await
            .unwrap()
    );
}

/// The chapters' traits, as their source says; each method must be called by a test above.
#[test]
fn every_store_method_is_called_here() {
    let chapters = [
        ("UserStore", include_str!("../../src/store/users.rs")),
        ("SessionStore", include_str!("../../src/store/sessions.rs")),
        ("LockoutStore", include_str!("../../src/store/lockout.rs")),
        ("EventStore", include_str!("../../src/store/events.rs")),
        ("TokenStore", include_str!("../../src/store/tokens.rs")),
        ("OutboxStore", include_str!("../../src/store/outbox.rs")),
        ("SecondFactorStore", include_str!("../../src/store/mfa.rs")),
        (
            "HousekeepingStore",
            include_str!("../../src/store/housekeeping.rs"),
        ),
    ];
    let here = include_str!("store_contract.rs");
    let mut methods = 0;
    for (name, source) in chapters {
        let body = source
            .split_once(&format!("pub trait {name}"))
            .unwrap_or_else(|| panic!("{name} not found"))
            .1;
        let body = &body[..body.find("\n}\n").expect("the trait's end")];
        for line in body.lines() {
            let Some(rest) = line
                .strip_prefix("    async fn ")
                .or_else(|| line.strip_prefix("    fn "))
            else {
                continue;
            };
            let method = &rest[..rest.find('(').expect("a method")];
            methods += 1;
            assert!(
                here.contains(&format!(".{method}(")),
                "{name}::{method} is called by no store contract test"
            );
        }
    }
    assert!(methods >= 62, "only {methods} methods found");
}

/// A confirmation of `factor` for `user` from `session` with a code of `step`.
fn confirmation<'a>(
    factor: Uuid,
    user: i64,
    session: Uuid,
    step: i64,
    codes: &'a [[u8; 32]],
    mail: &'a NewMail,
) -> FactorConfirmation<'a> {
    let now = Utc::now();
    FactorConfirmation {
        factor_id: factor,
        user_id: user,
        step,
        created_after: now - Duration::minutes(10),
        session,
        methods: Methods::PASSWORD.with(AuthMethod::Otp),
        recovery_codes: codes,
        notification: mail,
        live_tokens_since: now - Duration::minutes(20),
    }
}

async fn second_factors_confirm_once_and_accept_each_step_once(backend: Backend) {
    let (_db, store) = store(backend).await;
    let now = Utc::now().duration_trunc(Duration::seconds(1)).unwrap();
    let user = store.insert_user("f@example.com", "h", now).await.unwrap();
    let other = store.insert_user("o@example.com", "h", now).await.unwrap();
    let mine = session(&store, user.id).await;
    let elsewhere = session(&store, user.id).await;
    let mail = NewMail {
        template: MailTemplate::MfaEnrolled,
        link: None,
    };
    let new_factor = |created_at| NewFactor {
        id: Uuid::new_v4(),
        user_id: user.id,
        secret: b"sealed",
        secret_key: Some("k1"),
        created_at,
    };
    // An unconfirmed factor replaces the older unconfirmed one.
    let first = new_factor(now);
    assert!(store.add_totp_factor(&first, 5).await.unwrap());
    let factor = new_factor(now);
    assert!(store.add_totp_factor(&factor, 5).await.unwrap());
    assert!(store.find_factor(first.id).await.unwrap().is_none());
    let row = store.find_factor(factor.id).await.unwrap().unwrap();
    assert_eq!(
        (
            row.user_id,
            row.secret.as_slice(),
            row.secret_key.as_deref(),
            row.confirmed_at
        ),
        (user.id, &b"sealed"[..], Some("k1"), None)
    );
    assert!(store.confirmed_factors(user.id).await.unwrap().is_empty());
    // Another user's, or an expired one, is gone.
    let codes = [[7u8; 32], [8u8; 32]];
    let foreign = confirmation(factor.id, other.id, mine.family_id, 100, &codes, &mail);
    assert_eq!(
        store.confirm_factor(&foreign, now).await.unwrap(),
        Confirmation::FactorGone
    );
    let late = FactorConfirmation {
        created_after: now + Duration::seconds(1),
        ..confirmation(factor.id, user.id, mine.family_id, 100, &codes, &mail)
    };
    assert_eq!(
        store.confirm_factor(&late, now).await.unwrap(),
        Confirmation::FactorGone
    );
    // Confirmed: the session raised, the others ended, the codes stored.
    let right = confirmation(factor.id, user.id, mine.family_id, 100, &codes, &mail);
    let Confirmation::Confirmed {
        token,
        assurance,
        codes_stored,
    } = store.confirm_factor(&right, now).await.unwrap()
    else {
        panic!("not confirmed");
    };
    assert!(codes_stored);
    assert_eq!((token.jti, token.family_id), (mine.jti, mine.family_id));
    assert_eq!(assurance.methods, Methods::PASSWORD.with(AuthMethod::Otp));
    let raised = store.find_session(mine.family_id).await.unwrap().unwrap();
    assert_eq!(raised.amr, assurance.methods);
    let ended = store
        .find_session(elsewhere.family_id)
        .await
        .unwrap()
        .unwrap();
    assert!(ended.revoked_at.is_some());
    assert_eq!(store.recovery_codes_left(user.id).await.unwrap(), 2);
    assert_eq!(
        store.confirm_factor(&right, now).await.unwrap(),
        Confirmation::FactorGone,
        "confirmed once"
    );
    // The confirming step was used; each later step once, even in parallel.
    assert!(!store.use_time_step(factor.id, 100, now).await.unwrap());
    assert!(!store.use_time_step(factor.id, 99, now).await.unwrap());
    let tries = join_all((0..10).map(|_| store.use_time_step(factor.id, 101, now))).await;
    assert_eq!(
        tries.into_iter().filter(|r| *r.as_ref().unwrap()).count(),
        1
    );
    let listed = store.confirmed_factors(user.id).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].last_step, Some(101));
    // A step-up raises a live session of the user only.
    let (stepped, level) = store
        .step_up_session(
            mine.family_id,
            user.id,
            Methods::PASSWORD.with(AuthMethod::Rec),
            now,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stepped.jti, mine.jti);
    assert_eq!(level.methods.iter().count(), 3, "pwd, otp and rec");
    assert!(
        store
            .step_up_session(elsewhere.family_id, user.id, Methods::PASSWORD, now)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .step_up_session(mine.family_id, other.id, Methods::PASSWORD, now)
            .await
            .unwrap()
            .is_none()
    );
    // At most `max_confirmed` confirmed factors.
    assert!(!store.add_totp_factor(&new_factor(now), 1).await.unwrap());
    // Re-sealing: what is not under the current key, compare-and-set.
    let stale = store.factors_to_reseal(Some("k2"), 10).await.unwrap();
    assert_eq!(stale.len(), 1);
    assert!(
        store
            .factors_to_reseal(Some("k1"), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        !store
            .reseal_factor(factor.id, b"other", b"new", Some("k2"))
            .await
            .unwrap()
    );
    assert!(
        store
            .reseal_factor(factor.id, b"sealed", b"new", Some("k2"))
            .await
            .unwrap()
    );
    assert!(
        store
            .factors_to_reseal(Some("k2"), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.factors_to_reseal(None, 10).await.unwrap().len(), 1);
    // Removing the last factor takes the recovery codes.
    let removed = NewMail {
        template: MailTemplate::MfaRemoved,
        link: None,
    };
    assert!(
        !store
            .remove_factor(factor.id, other.id, &removed, now)
            .await
            .unwrap()
    );
    assert!(
        store
            .remove_factor(factor.id, user.id, &removed, now)
            .await
            .unwrap()
    );
    assert!(
        !store
            .remove_factor(factor.id, user.id, &removed, now)
            .await
            .unwrap()
    );
    assert_eq!(store.recovery_codes_left(user.id).await.unwrap(), 0);
}

async fn recovery_codes_and_challenges_are_used_once(backend: Backend) {
    let (_db, store) = store(backend).await;
    let now = Utc::now().duration_trunc(Duration::seconds(1)).unwrap();
    let user = store
        .insert_user("r@example.com", "hash-1", now)
        .await
        .unwrap();
    let mine = session(&store, user.id).await;
    let mail = NewMail {
        template: MailTemplate::RecoveryCodesRegenerated,
        link: None,
    };
    // No factor, no codes.
    assert!(
        !store
            .replace_recovery_codes(user.id, &[[1u8; 32]], &mail, now)
            .await
            .unwrap()
    );
    let factor = NewFactor {
        id: Uuid::new_v4(),
        user_id: user.id,
        secret: b"clear",
        secret_key: None,
        created_at: now,
    };
    assert!(store.add_totp_factor(&factor, 5).await.unwrap());
    let confirm = confirmation(factor.id, user.id, mine.family_id, 1, &[], &mail);
    assert!(matches!(
        store.confirm_factor(&confirm, now).await.unwrap(),
        Confirmation::Confirmed { .. }
    ));
    assert!(
        store
            .replace_recovery_codes(user.id, &[[1u8; 32], [2u8; 32]], &mail, now)
            .await
            .unwrap()
    );
    assert_eq!(store.recovery_codes_left(user.id).await.unwrap(), 2);
    // One code, ten parallel uses: one wins.
    let used = NewMail {
        template: MailTemplate::RecoveryCodeUsed,
        link: None,
    };
    let tries =
        join_all((0..10).map(|_| store.use_recovery_code(user.id, &[1u8; 32], &used, now))).await;
    assert_eq!(
        tries.into_iter().filter(|r| *r.as_ref().unwrap()).count(),
        1
    );
    assert!(
        !store
            .use_recovery_code(user.id, &[9u8; 32], &used, now)
            .await
            .unwrap()
    );
    assert_eq!(store.recovery_codes_left(user.id).await.unwrap(), 1);
    // A challenge is stored only while the checked hash is the user's.
    let later = now + Duration::minutes(5);
    assert!(
        !store
            .add_challenge(&[5u8; 32], user.id, "stale-hash", later, now)
            .await
            .unwrap()
    );
    assert!(
        store
            .add_challenge(&[6u8; 32], user.id, "hash-1", later, now)
            .await
            .unwrap()
    );
    assert_eq!(
        store.challenge_user(&[6u8; 32], now).await.unwrap(),
        Some(user.id)
    );
    assert_eq!(
        store.challenge_user(&[6u8; 32], later).await.unwrap(),
        None,
        "expired"
    );
    assert_eq!(store.challenge_user(&[5u8; 32], now).await.unwrap(), None);
    // The session it starts uses it up, once.
    let start = |first: NewRefreshToken| {
        let store = Arc::clone(&store);
        async move {
            let new = NewSession {
                id: first.family_id,
                user_id: user.id,
                created_at: first.issued_at,
                expires_at: first.expires_at,
                user_agent: None,
                ip: None,
                methods: Methods::PASSWORD.with(AuthMethod::Otp),
            };
            store
                .start_session(&new, &first, SignInProof::Challenge(&[6u8; 32]), 100)
                .await
                .unwrap()
        }
    };
    let results = join_all((0..5).map(|_| start(token(user.id, Uuid::new_v4(), None)))).await;
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    assert!(
        results
            .iter()
            .all(|r| r.is_ok() || *r == Err(SessionRefused::ChallengeUsed))
    );
    assert_eq!(store.challenge_user(&[6u8; 32], now).await.unwrap(), None);
    // mfa-reset: factors, codes and challenges gone, every session ended.
    assert!(
        store
            .add_challenge(&[7u8; 32], user.id, "hash-1", later, now)
            .await
            .unwrap()
    );
    assert!(store.reset_second_factor(user.id, now).await.unwrap());
    assert!(store.confirmed_factors(user.id).await.unwrap().is_empty());
    assert_eq!(store.recovery_codes_left(user.id).await.unwrap(), 0);
    assert_eq!(store.challenge_user(&[7u8; 32], now).await.unwrap(), None);
    assert!(store.live_sessions(user.id, now).await.unwrap().is_empty());
    assert!(!store.reset_second_factor(user.id, now).await.unwrap());
}

async fn passkeys_and_their_ceremonies_are_used_once(backend: Backend) {
    let (_db, store) = store(backend).await;
    let now = Utc::now().duration_trunc(Duration::seconds(1)).unwrap();
    let user = store.insert_user("p@example.com", "h", now).await.unwrap();
    let other = store.insert_user("q@example.com", "h", now).await.unwrap();
    let ceremony = |kind, user_id, state| NewCeremony {
        id: Uuid::new_v4(),
        kind,
        user_id,
        state,
        created_at: now,
        expires_at: now + Duration::minutes(5),
    };
    // A registration ceremony: its user's only, once; a newer one replaces it.
    let first = ceremony(CeremonyKind::Register, Some(user.id), "one");
    assert!(store.add_ceremony(&first, 3).await.unwrap());
    let take = |id, kind, user_id: Option<i64>, at| {
        let store = Arc::clone(&store);
        async move { store.take_ceremony(id, kind, user_id, at).await.unwrap() }
    };
    assert_eq!(
        take(first.id, CeremonyKind::Register, Some(other.id), now).await,
        None
    );
    assert_eq!(take(first.id, CeremonyKind::Login, None, now).await, None);
    let second = ceremony(CeremonyKind::Register, Some(user.id), "two");
    assert!(store.add_ceremony(&second, 3).await.unwrap());
    assert_eq!(
        take(first.id, CeremonyKind::Register, Some(user.id), now).await,
        None
    );
    let tries =
        join_all((0..5).map(|_| take(second.id, CeremonyKind::Register, Some(user.id), now))).await;
    assert_eq!(tries.iter().flatten().collect::<Vec<_>>(), vec!["two"]);
    // Sign-in ceremonies: bounded while unexpired; expired ones are not taken, and a start
    // clears them.
    let sign_ins: Vec<_> = (0..3)
        .map(|_| ceremony(CeremonyKind::Login, None, "s"))
        .collect();
    for c in &sign_ins {
        assert!(store.add_ceremony(c, 3).await.unwrap());
    }
    let full = ceremony(CeremonyKind::Login, None, "s");
    assert!(!store.add_ceremony(&full, 3).await.unwrap(), "full");
    let expired_at = now + Duration::minutes(5);
    assert_eq!(
        take(sign_ins[0].id, CeremonyKind::Login, None, expired_at).await,
        None
    );
    let later = NewCeremony {
        created_at: expired_at,
        expires_at: expired_at + Duration::minutes(5),
        ..ceremony(CeremonyKind::Login, None, "later")
    };
    assert!(
        store.add_ceremony(&later, 1).await.unwrap(),
        "the expired made room"
    );
    assert_eq!(
        take(later.id, CeremonyKind::Login, None, expired_at)
            .await
            .as_deref(),
        Some("later")
    );
    // A passkey: stored once across users, found by its credential id, listed, removed.
    let mail = NewMail {
        template: MailTemplate::PasskeyAdded,
        link: None,
    };
    let passkey = NewPasskey {
        id: Uuid::new_v4(),
        user_id: user.id,
        user_handle: Uuid::new_v4(),
        credential_id: b"cred-1",
        credential: "{}",
        name: "Laptop",
        notification: &mail,
        created_at: now,
    };
    assert_eq!(store.add_passkey(&passkey).await.unwrap(), Ok(()));
    let stolen = NewPasskey {
        id: Uuid::new_v4(),
        user_id: other.id,
        ..passkey.clone()
    };
    assert_eq!(
        store.add_passkey(&stolen).await.unwrap(),
        Err(PasskeyRefused::Registered)
    );
    let gone = NewPasskey {
        id: Uuid::new_v4(),
        user_id: 999_999,
        credential_id: b"cred-2",
        ..passkey.clone()
    };
    assert_eq!(
        store.add_passkey(&gone).await.unwrap(),
        Err(PasskeyRefused::UserGone)
    );
    let row = store
        .find_passkey_by_credential(b"cred-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (row.id, row.user_id, row.sign_count),
        (passkey.id, user.id, 0)
    );
    assert_eq!(row.last_used_at, None);
    assert_eq!(store.user_passkeys(user.id).await.unwrap(), vec![row]);
    assert!(store.user_passkeys(other.id).await.unwrap().is_empty());
    // Five sign-ins checked against counter 0 race: one session starts, the counter moves.
    let start = |first: NewRefreshToken, count: i64| {
        let store = Arc::clone(&store);
        async move {
            let new = NewSession {
                id: first.family_id,
                user_id: user.id,
                created_at: first.issued_at,
                expires_at: first.expires_at,
                user_agent: None,
                ip: None,
                methods: Methods::of(&[AuthMethod::Hwk]),
            };
            let used = PasskeyUse {
                id: passkey.id,
                seen_count: 0,
                new_count: count,
                credential: r#"{"moved": true}"#,
            };
            store
                .start_session(&new, &first, SignInProof::Passkey(&used), 100)
                .await
                .unwrap()
        }
    };
    let results = join_all((1..=5).map(|n| start(token(user.id, Uuid::new_v4(), None), n))).await;
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    assert!(
        results
            .iter()
            .all(|r| r.is_ok() || *r == Err(SessionRefused::PasskeyUsed))
    );
    let row = store
        .find_passkey_by_credential(b"cred-1")
        .await
        .unwrap()
        .unwrap();
    assert!(row.sign_count >= 1);
    assert_eq!(row.credential, r#"{"moved": true}"#);
    assert!(row.last_used_at.is_some());
    // Removal: the user's only, once.
    let removed = NewMail {
        template: MailTemplate::PasskeyRemoved,
        link: None,
    };
    assert!(
        !store
            .remove_passkey(passkey.id, other.id, &removed, now)
            .await
            .unwrap()
    );
    assert!(
        store
            .remove_passkey(passkey.id, user.id, &removed, now)
            .await
            .unwrap()
    );
    assert!(
        !store
            .remove_passkey(passkey.id, user.id, &removed, now)
            .await
            .unwrap()
    );
    assert_eq!(
        store.find_passkey_by_credential(b"cred-1").await.unwrap(),
        None
    );
}

async fn webhook_events_are_written_with_their_change_and_claimed_in_order(backend: Backend) {
    use auth_service::store::{DeliveryOutcome, Subscriptions, WebhookEvent};
    let db = TestDb::new(backend).await;
    let (a, b) = ("http://a.example/hooks", "http://b.example/hooks");
    let store = db
        .subscribed_store(Subscriptions {
            endpoints: vec![a.into(), b.into()],
            events: WebhookEvent::ALL.to_vec(),
        })
        .await;
    let now = Utc::now().duration_trunc(Duration::seconds(1)).unwrap();
    let lease = now + Duration::seconds(30);
    // An unsubscribed store writes nothing; one subscribed writes one row per endpoint.
    db.store()
        .await
        .register_user("quiet@example.com", "quiet@example.com", "h", now, None)
        .await
        .unwrap();
    assert_eq!(store.pending_webhooks().await.unwrap(), 0);
    let anna = store
        .register_user("anna@example.com", "anna@example.com", "h", now, None)
        .await
        .unwrap();
    store.revoke_user_sessions(anna.id, now).await.unwrap();
    let bert = store
        .register_user("bert@example.com", "bert@example.com", "h", now, None)
        .await
        .unwrap();
    assert_eq!(store.pending_webhooks().await.unwrap(), 6);
    assert_eq!(store.next_webhook_due(a).await.unwrap(), Some(now));
    assert_eq!(
        store
            .next_webhook_due("http://other.example/")
            .await
            .unwrap(),
        None
    );
    // Anna's first event, then Bert's: Anna's second waits for her first's first attempt.
    let first = store.claim_webhook(a, now, lease).await.unwrap().unwrap();
    assert_eq!(
        (
            first.event_type.as_str(),
            first.user_id,
            first.email.as_str(),
            first.attempts
        ),
        ("user.created", anna.id, "anna@example.com", 1)
    );
    assert!(first.message_id.starts_with("msg_"));
    let second = store.claim_webhook(a, now, lease).await.unwrap().unwrap();
    assert_eq!(
        (second.event_type.as_str(), second.user_id),
        ("user.created", bert.id)
    );
    assert!(store.claim_webhook(a, now, lease).await.unwrap().is_none());
    // The other endpoint has its own rows, the event's id shared.
    let other = store.claim_webhook(b, now, lease).await.unwrap().unwrap();
    assert_eq!(other.message_id, first.message_id);
    assert_eq!(other.endpoint, b);
    // A failed first attempt does not hold back the next event.
    store
        .finish_webhook(
            first.id,
            DeliveryOutcome::RetryAt(now + Duration::minutes(5)),
            now,
        )
        .await
        .unwrap();
    let third = store.claim_webhook(a, now, lease).await.unwrap().unwrap();
    assert_eq!(
        (third.event_type.as_str(), third.user_id),
        ("user.sessions_ended", anna.id)
    );
    assert_eq!(
        store.next_webhook_due(a).await.unwrap(),
        Some(lease),
        "the earliest of a lease and a retry"
    );
    // Due again at its time, the attempt counted; a lease that ran out is claimable.
    assert!(
        store
            .claim_webhook(a, now + Duration::seconds(20), lease)
            .await
            .unwrap()
            .is_none()
    );
    let later = now + Duration::minutes(6);
    let mut again = Vec::new();
    while let Some(row) = store
        .claim_webhook(a, later, later + Duration::seconds(30))
        .await
        .unwrap()
    {
        again.push((row.id, row.attempts));
    }
    again.sort_unstable();
    let mut expected = [(first.id, 2), (second.id, 2), (third.id, 2)];
    expected.sort_unstable();
    assert_eq!(again, expected);
    store
        .finish_webhook(first.id, DeliveryOutcome::Delivered, later)
        .await
        .unwrap();
    store
        .finish_webhook(second.id, DeliveryOutcome::Failed, later)
        .await
        .unwrap();
    assert_eq!(
        db.count("select count(*) from webhook_outbox where email is null")
            .await,
        2,
        "a finished row forgets the address"
    );
    assert_eq!(store.pending_webhooks().await.unwrap(), 4);
    // user.deleted outlives its user; a filtered store writes only its events.
    let filtered = db
        .subscribed_store(Subscriptions {
            endpoints: vec![a.into()],
            events: vec![WebhookEvent::Deleted],
        })
        .await;
    filtered.revoke_user_sessions(bert.id, now).await.unwrap();
    assert!(filtered.delete_user(bert.id, now).await.unwrap());
    assert_eq!(store.pending_webhooks().await.unwrap(), 5);
    assert_eq!(
        db.count("select count(*) from webhook_outbox where event_type = 'user.deleted'")
            .await,
        1
    );
    // Disabling twice is one event; enabling an enabled user none.
    store.set_user_active(anna.id, false, now).await.unwrap();
    store.set_user_active(anna.id, false, now).await.unwrap();
    store.set_user_active(anna.id, true, now).await.unwrap();
    store.set_user_active(anna.id, true, now).await.unwrap();
    assert_eq!(
        db.count(
            "select count(*) from webhook_outbox \
             where event_type in ('user.disabled', 'user.enabled')"
        )
        .await,
        4
    );
    // The purge: finished rows after their retention, unfinished ones once abandoned.
    let purge = |finished, abandoned| Purge::Webhooks {
        finished_before: finished,
        abandoned_before: abandoned,
    };
    assert_eq!(store.purge_batch(purge(later, now), 100).await.unwrap(), 0);
    let after = later + Duration::seconds(1);
    assert_eq!(store.purge_batch(purge(after, now), 100).await.unwrap(), 2);
    assert_eq!(
        store.purge_batch(purge(after, after), 100).await.unwrap(),
        9
    );
    assert_eq!(store.pending_webhooks().await.unwrap(), 0);
}
