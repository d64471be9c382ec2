//! The PostgreSQL store: PostgreSQL dialect SQL only (`$N` placeholders, TIMESTAMPTZ, UUID).
//!
//! Concurrency rests on row locks under READ COMMITTED: every session change first locks the
//! user's row (see [`Store`]'s locking rule), a second `update ... where rotated_at is null`
//! finds nothing to update, and the upsert on `login_attempts` serialises attempts on one key.
//! Every connection carries `lock_timeout`, `statement_timeout` and
//! `idle_in_transaction_session_timeout`, so a stalled peer holding a lock costs a 503, never a
//! hung request, and a request that gave up leaves nothing behind.

use std::{
    str::FromStr as _,
    sync::{Arc, OnceLock},
};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret as _;
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tokio::sync::Notify;
use uuid::Uuid;

use super::{
    AttemptLimits, AttemptRow, EventKind, EventRow, ImportReport, NewRefreshToken, NewSession,
    PoolSettings, PoolStats, Purge, RawEventRow, RefreshTokenRow, RotateOutcome, SessionRow, Store,
    StoreError, UserRow, not_before,
};
use crate::config::DatabaseUrl;

/// [`Store`] on a PostgreSQL database shared by every replica.
#[derive(Debug)]
pub struct PgStore {
    pool: PgPool,
    /// Woken on every `NOTIFY auth_revocations`.
    signal: Arc<Notify>,
    /// The `LISTEN` task, started by the first [`Store::event_signal`] (admin commands never
    /// start it).
    listener: OnceLock<ListenerTask>,
}

impl PgStore {
    /// Connects to the database `url` names.
    ///
    /// # Errors
    /// `Other` for a malformed URL, `Unavailable` when the server does not answer.
    pub async fn connect(url: &DatabaseUrl, settings: PoolSettings) -> Result<Self, StoreError> {
        let DatabaseUrl::Postgres(url) = url else {
            return Err(StoreError::Other(sqlx::Error::Configuration(
                "not a postgres URL".into(),
            )));
        };
        let millis = |d: std::time::Duration| d.as_millis().to_string();
        let options = PgConnectOptions::from_str(url.expose_secret())
            .map_err(StoreError::Other)?
            .options([
                ("lock_timeout", millis(settings.lock_timeout)),
                ("statement_timeout", millis(settings.statement_timeout)),
                (
                    "idle_in_transaction_session_timeout",
                    millis(settings.statement_timeout + std::time::Duration::from_secs(1)),
                ),
            ]);
        // One direct connection first: the pool retries a refused connection until its
        // acquire timeout and then says only "timed out"; this says why.
        {
            use sqlx::{ConnectOptions as _, Connection as _};
            let probe = options.connect().await.map_err(StoreError::Unavailable)?;
            let _ = probe.close().await;
        }
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.acquire_timeout)
            .connect_with(options)
            .await
            .map_err(StoreError::Unavailable)?;
        Ok(Self {
            pool,
            signal: Arc::new(Notify::new()),
            listener: OnceLock::new(),
        })
    }
}

#[async_trait]
impl Store for PgStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("select 1").execute(&self.pool).await?;
        Ok(())
    }

    fn pool_stats(&self) -> PoolStats {
        PoolStats {
            size: self.pool.size(),
            idle: u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX),
        }
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("migrations/postgres")
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Other(e.into()))
    }

    async fn schema_is_current(&self) -> Result<bool, StoreError> {
        let applied = sqlx::query_scalar(super::APPLIED_MIGRATIONS)
            .fetch_all(&self.pool)
            .await;
        super::covers(applied, &sqlx::migrate!("migrations/postgres"))
    }

    async fn insert_user(
        &self,
        email: &str,
        password_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<UserRow, StoreError> {
        Ok(sqlx::query_as(concat!(
            r"insert into users (email, password_hash, is_active, created_at, updated_at)
              values ($1, $2, true, $3, $3)
              returning ",
            user_columns!()
        ))
        .bind(email)
        .bind(password_hash)
        .bind(now)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn find_user_by_email(&self, email: &str) -> Result<Option<UserRow>, StoreError> {
        Ok(sqlx::query_as(concat!(
            "select ",
            user_columns!(),
            " from users where email = $1"
        ))
        .bind(email)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn find_user_by_id(&self, id: i64) -> Result<Option<UserRow>, StoreError> {
        Ok(sqlx::query_as(concat!(
            "select ",
            user_columns!(),
            " from users where id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn reserve_login_attempt(
        &self,
        key: &str,
        now: DateTime<Utc>,
        limits: AttemptLimits,
    ) -> Result<AttemptRow, StoreError> {
        // $1 key, $2 now, $3 window cut-off, $4 lock end if this attempt locks, $5 max.
        Ok(sqlx::query_as(
            r"insert into login_attempts as la (key, attempts, window_start, locked_until)
              values ($1, 1, $2, case when 1 >= $5 then $4 else null end)
              on conflict (key) do update set
                attempts = case
                  when la.locked_until > $2 then least(la.attempts + 1, $5 + 1)
                  when la.locked_until is not null or la.window_start <= $3 then 1
                  else la.attempts + 1
                end,
                window_start = case
                  when la.locked_until > $2 then la.window_start
                  when la.locked_until is not null or la.window_start <= $3 then $2
                  else la.window_start
                end,
                locked_until = case
                  when la.locked_until > $2 then la.locked_until
                  when la.locked_until is not null or la.window_start <= $3
                    then case when 1 >= $5 then $4 else null end
                  when la.attempts + 1 >= $5 then $4
                  else null
                end
              returning attempts, window_start, locked_until",
        )
        .bind(key)
        .bind(now)
        .bind(now - limits.window)
        .bind(now + limits.lockout)
        .bind(limits.max_attempts)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn find_login_attempt(&self, key: &str) -> Result<Option<AttemptRow>, StoreError> {
        Ok(sqlx::query_as(
            "select attempts, window_start, locked_until from login_attempts where key = $1",
        )
        .bind(key)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn update_password_hash(
        &self,
        id: i64,
        old_hash: &str,
        new_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        Ok(sqlx::query(
            "update users set password_hash = $3, updated_at = $4 where id = $1 and password_hash = $2",
        )
        .bind(id)
        .bind(old_hash)
        .bind(new_hash)
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1)
    }

    async fn clear_login_attempts(&self, key: &str) -> Result<(), StoreError> {
        sqlx::query("delete from login_attempts where key = $1")
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn find_refresh_token(&self, jti: Uuid) -> Result<Option<RefreshTokenRow>, StoreError> {
        Ok(sqlx::query_as(concat!(
            "select ",
            token_columns!(),
            " from refresh_tokens where jti = $1"
        ))
        .bind(jti)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn find_child_token(&self, parent: Uuid) -> Result<Option<RefreshTokenRow>, StoreError> {
        Ok(sqlx::query_as(concat!(
            "select ",
            token_columns!(),
            " from refresh_tokens where parent_jti = $1"
        ))
        .bind(parent)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn set_user_active(
        &self,
        id: i64,
        active: bool,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        if lock_user(&mut tx, id).await?.is_none() {
            return Ok(false);
        }
        if active {
            sqlx::query("update users set is_active = true, updated_at = $2 where id = $1")
                .bind(id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            append_event(&mut tx, EventKind::UserEnabled, id, None, None, now).await?;
        } else {
            let cutoff = not_before(now);
            sqlx::query(
                r"update users set is_active = false, updated_at = $2,
                    tokens_not_before = greatest(coalesce(tokens_not_before, $3), $3)
                  where id = $1",
            )
            .bind(id)
            .bind(now)
            .bind(cutoff)
            .execute(&mut *tx)
            .await?;
            end_user_sessions(&mut tx, id, now).await?;
            append_event(
                &mut tx,
                EventKind::UserDisabled,
                id,
                None,
                Some(cutoff),
                now,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn delete_user(&self, id: i64, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        if lock_user(&mut tx, id).await?.is_none() {
            return Ok(false);
        }
        append_event(&mut tx, EventKind::UserDeleted, id, None, None, now).await?;
        sqlx::query("delete from users where id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn start_session(
        &self,
        session: &NewSession,
        first: &NewRefreshToken,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        if lock_user(&mut tx, session.user_id).await? != Some(true) {
            return Ok(false);
        }
        sqlx::query(
            r"insert into sessions (id, user_id, created_at, expires_at)
              values ($1, $2, $3, $4)",
        )
        .bind(session.id)
        .bind(session.user_id)
        .bind(session.created_at)
        .bind(session.expires_at)
        .execute(&mut *tx)
        .await?;
        insert_token(&mut *tx, first).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn find_session(&self, id: Uuid) -> Result<Option<SessionRow>, StoreError> {
        Ok(sqlx::query_as(concat!(
            "select ",
            session_columns!(),
            " from sessions where id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn rotate_refresh_token(
        &self,
        parent: Uuid,
        child: &NewRefreshToken,
        now: DateTime<Utc>,
    ) -> Result<RotateOutcome, StoreError> {
        let mut tx = self.pool.begin().await?;
        if lock_user(&mut tx, child.user_id).await? != Some(true) {
            return Ok(RotateOutcome::Refused);
        }
        let session_live: Option<bool> =
            sqlx::query_scalar("select revoked_at is null from sessions where id = $1")
                .bind(child.family_id)
                .fetch_optional(&mut *tx)
                .await?;
        if session_live != Some(true) {
            return Ok(RotateOutcome::Refused);
        }
        let claimed = sqlx::query(
            r"update refresh_tokens set rotated_at = $2
              where jti = $1 and rotated_at is null and revoked_at is null and expires_at > $2",
        )
        .bind(parent)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if claimed != 1 {
            return Ok(RotateOutcome::NotRotatable);
        }
        let child = NewRefreshToken {
            parent_jti: Some(parent),
            ..child.clone()
        };
        insert_token(&mut *tx, &child).await?;
        sqlx::query("update sessions set expires_at = greatest(expires_at, $2) where id = $1")
            .bind(child.family_id)
            .bind(child.expires_at)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(RotateOutcome::Rotated)
    }

    async fn revoke_session(&self, id: Uuid, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let owner: Option<i64> = sqlx::query_scalar("select user_id from sessions where id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        let Some(user_id) = owner else {
            return Ok(false);
        };
        let mut tx = self.pool.begin().await?;
        if lock_user(&mut tx, user_id).await?.is_none() {
            return Ok(false);
        }
        let ended =
            sqlx::query("update sessions set revoked_at = $2 where id = $1 and revoked_at is null")
                .bind(id)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        // A fresh statement after the lock: it sees a child that a rotation committed while
        // this transaction waited.
        sqlx::query(
            "update refresh_tokens set revoked_at = $2 where family_id = $1 and revoked_at is null",
        )
        .bind(id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if ended == 1 {
            append_event(
                &mut tx,
                EventKind::SessionRevoked,
                user_id,
                Some(id),
                None,
                now,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(ended == 1)
    }

    async fn revoke_user_sessions(
        &self,
        user_id: i64,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        if lock_user(&mut tx, user_id).await?.is_none() {
            return Ok(0);
        }
        let cutoff = not_before(now);
        sqlx::query(
            r"update users set tokens_not_before = greatest(coalesce(tokens_not_before, $2), $2)
              where id = $1",
        )
        .bind(user_id)
        .bind(cutoff)
        .execute(&mut *tx)
        .await?;
        let ended = end_user_sessions(&mut tx, user_id, now).await?;
        append_event(
            &mut tx,
            EventKind::LoggedOutEverywhere,
            user_id,
            None,
            Some(cutoff),
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(ended)
    }

    async fn events_since(&self, after: i64, limit: i64) -> Result<Vec<EventRow>, StoreError> {
        let rows: Vec<RawEventRow> = sqlx::query_as(concat!(
            "select ",
            event_columns!(),
            " from revocation_events where id > $1 order by id limit $2"
        ))
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(EventRow::try_from).collect()
    }

    async fn event_bounds(&self) -> Result<Option<(i64, i64)>, StoreError> {
        let (first, last): (Option<i64>, Option<i64>) =
            sqlx::query_as("select min(id)::bigint, max(id)::bigint from revocation_events")
                .fetch_one(&self.pool)
                .await?;
        Ok(first.zip(last))
    }

    async fn last_event_id(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("select coalesce(max(id), 0)::bigint from revocation_events")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    fn event_signal(&self) -> Option<Arc<Notify>> {
        self.listener.get_or_init(|| {
            ListenerTask(tokio::spawn(follow_notifications(
                self.pool.clone(),
                Arc::clone(&self.signal),
            )))
        });
        Some(Arc::clone(&self.signal))
    }

    async fn update_user_email(&self, id: i64, old: &str, new: &str) -> Result<bool, StoreError> {
        Ok(
            sqlx::query("update users set email = $3 where id = $1 and email = $2")
                .bind(id)
                .bind(old)
                .bind(new)
                .execute(&self.pool)
                .await?
                .rows_affected()
                == 1,
        )
    }

    async fn data_migration_done(&self, name: &str) -> Result<bool, StoreError> {
        Ok(
            sqlx::query_scalar::<_, i64>("select count(*) from data_migrations where name = $1")
                .bind(name)
                .fetch_one(&self.pool)
                .await?
                > 0,
        )
    }

    async fn record_data_migration(
        &self,
        name: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "insert into data_migrations (name, applied_at) values ($1, $2) on conflict do nothing",
        )
        .bind(name)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn purge_batch(&self, purge: Purge, limit: i64) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let deleted = match purge {
            Purge::LoginAttempts {
                window_start_before,
                now,
            } => sqlx::query(
                r"delete from login_attempts where key in (
                    select key from login_attempts
                    where window_start < $1 and (locked_until is null or locked_until < $2)
                    limit $3)",
            )
            .bind(window_start_before)
            .bind(now)
            .bind(limit)
            .execute(&mut *tx)
            .await?
            .rows_affected(),
            Purge::RefreshTokens(before) => {
                let expired: Vec<Uuid> = sqlx::query_scalar(
                    "select jti from refresh_tokens where expires_at < $1 limit $2",
                )
                .bind(before)
                .bind(limit)
                .fetch_all(&mut *tx)
                .await?;
                let mut deleted = 0;
                for jti in expired {
                    // Unlink a child first: the foreign key would otherwise delete it too.
                    sqlx::query(
                        "update refresh_tokens set parent_jti = null where parent_jti = $1",
                    )
                    .bind(jti)
                    .execute(&mut *tx)
                    .await?;
                    deleted += sqlx::query("delete from refresh_tokens where jti = $1")
                        .bind(jti)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                }
                deleted
            }
            Purge::Sessions(before) => sqlx::query(
                r"delete from sessions where id in (
                    select id from sessions where expires_at < $1 limit $2)",
            )
            .bind(before)
            .bind(limit)
            .execute(&mut *tx)
            .await?
            .rows_affected(),
            Purge::Events(before) => sqlx::query(
                r"delete from revocation_events where id in (
                    select id from revocation_events where created_at < $1
                      and id < (select max(id) from revocation_events)
                    limit $2)",
            )
            .bind(before)
            .bind(limit)
            .execute(&mut *tx)
            .await?
            .rows_affected(),
        };
        tx.commit().await?;
        Ok(deleted)
    }

    async fn export_users(&self) -> Result<Vec<UserRow>, StoreError> {
        Ok(sqlx::query_as(concat!(
            "select ",
            user_columns!(),
            " from users order by id"
        ))
        .fetch_all(&self.pool)
        .await?)
    }

    async fn export_refresh_tokens(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Vec<RefreshTokenRow>, StoreError> {
        Ok(sqlx::query_as(concat!(
            "select ",
            token_columns!(),
            " from refresh_tokens where expires_at > $1 order by issued_at"
        ))
        .bind(now)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn import(
        &self,
        users: &[UserRow],
        tokens: &[RefreshTokenRow],
        merge: bool,
    ) -> Result<Option<ImportReport>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let existing: i64 = sqlx::query_scalar("select count(*) from users")
            .fetch_one(&mut *tx)
            .await?;
        if existing > 0 && !merge {
            tx.rollback().await?;
            return Ok(None);
        }
        let mut inserted = std::collections::HashSet::new();
        for user in users {
            let id: Option<i64> = sqlx::query_scalar(
                r"insert into users
                    (id, email, password_hash, is_active, created_at, updated_at, tokens_not_before)
                  values ($1, $2, $3, $4, $5, $6, $7)
                  on conflict do nothing
                  returning id",
            )
            .bind(user.id)
            .bind(&user.email)
            .bind(&user.password_hash)
            .bind(user.is_active)
            .bind(user.created_at)
            .bind(user.updated_at)
            .bind(user.tokens_not_before)
            .fetch_optional(&mut *tx)
            .await?;
            inserted.extend(id);
        }
        let mut copied_tokens = 0;
        for token in tokens.iter().filter(|t| inserted.contains(&t.user_id)) {
            copied_tokens += sqlx::query(
                r"insert into refresh_tokens
                    (jti, user_id, family_id, parent_jti, issued_at, expires_at, rotated_at, revoked_at)
                  values ($1, $2, $3, $4, $5, $6, $7, $8)
                  on conflict do nothing",
            )
            .bind(token.jti)
            .bind(token.user_id)
            .bind(token.family_id)
            .bind(token.parent_jti)
            .bind(token.issued_at)
            .bind(token.expires_at)
            .bind(token.rotated_at)
            .bind(token.revoked_at)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        sqlx::query(SESSIONS_FROM_TOKENS).execute(&mut *tx).await?;
        // Explicit ids do not move the identity sequence: move it past the largest id.
        sqlx::query(
            r"select setval(pg_get_serial_sequence('users', 'id'),
                            greatest((select max(id) from users), 1))",
        )
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        let users_inserted = u64::try_from(inserted.len()).unwrap_or(u64::MAX);
        Ok(Some(ImportReport {
            users: users_inserted,
            skipped_users: u64::try_from(users.len()).unwrap_or(u64::MAX) - users_inserted,
            tokens: copied_tokens,
        }))
    }
}

/// The one refresh-token insert, on the pool or inside the rotation transaction.
async fn insert_token<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    token: &NewRefreshToken,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        r"insert into refresh_tokens (jti, user_id, family_id, parent_jti, issued_at, expires_at)
          values ($1, $2, $3, $4, $5, $6)",
    )
    .bind(token.jti)
    .bind(token.user_id)
    .bind(token.family_id)
    .bind(token.parent_jti)
    .bind(token.issued_at)
    .bind(token.expires_at)
    .execute(executor)
    .await?;
    Ok(())
}

/// A session for every refresh-token family that has none (imports), ended when every token
/// of it is revoked.
const SESSIONS_FROM_TOKENS: &str = r"
    insert into sessions (id, user_id, created_at, expires_at, revoked_at)
    select family_id, min(user_id), min(issued_at), max(expires_at),
           case when count(*) = count(revoked_at) then max(revoked_at) end
    from refresh_tokens
    group by family_id
    on conflict (id) do nothing";

/// The `NOTIFY` channel an event's commit signals on.
const EVENTS_CHANNEL: &str = "auth_revocations";

/// The advisory lock that orders event commits (an arbitrary constant, "auth" in ASCII).
const EVENTS_LOCK: i64 = 0x6175_7468;

/// The locking rule's first step: locks the user's row for the rest of the transaction and
/// says whether the user is active (`None`: no such user).
async fn lock_user(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    user_id: i64,
) -> Result<Option<bool>, sqlx::Error> {
    sqlx::query_scalar("select is_active from users where id = $1 for update")
        .bind(user_id)
        .fetch_optional(&mut **tx)
        .await
}

/// Ends every live session of a user and revokes their refresh tokens; returns how many
/// sessions were live. Runs under the user's lock.
async fn end_user_sessions(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    user_id: i64,
    now: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    let ended: Vec<Uuid> = sqlx::query_scalar(
        "update sessions set revoked_at = $2 where user_id = $1 and revoked_at is null returning id",
    )
    .bind(user_id)
    .bind(now)
    .fetch_all(&mut **tx)
    .await?;
    sqlx::query(
        "update refresh_tokens set revoked_at = $2 where user_id = $1 and revoked_at is null",
    )
    .bind(user_id)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    // One event per session as well as the user-wide one: a token issued in the same second
    // before the change has `iat == not_before`, and local verifiers refuse it by its session.
    for session in &ended {
        append_event(
            tx,
            EventKind::SessionRevoked,
            user_id,
            Some(*session),
            None,
            now,
        )
        .await?;
    }
    Ok(u64::try_from(ended.len()).unwrap_or(u64::MAX))
}

/// Appends an event as the transaction's last step. The transaction-scoped advisory lock makes
/// event-writing transactions take their ids and commit one after the other, so a reader that
/// sees event N has seen every event before it (an id sequence alone can commit out of order).
/// The `NOTIFY` is delivered at commit.
async fn append_event(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    kind: EventKind,
    user_id: i64,
    session_id: Option<Uuid>,
    not_before: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query("select pg_advisory_xact_lock($1)")
        .bind(EVENTS_LOCK)
        .execute(&mut **tx)
        .await?;
    let id: i64 = sqlx::query_scalar(
        r"insert into revocation_events (created_at, kind, user_id, session_id, not_before)
          values ($1, $2, $3, $4, $5)
          returning id",
    )
    .bind(now)
    .bind(kind.as_str())
    .bind(user_id)
    .bind(session_id)
    .bind(not_before)
    .fetch_one(&mut **tx)
    .await?;
    sqlx::query("select pg_notify($1, $2)")
        .bind(EVENTS_CHANNEL)
        .bind(id.to_string())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Aborts the `LISTEN` task when the store goes away.
#[derive(Debug)]
struct ListenerTask(tokio::task::JoinHandle<()>);

impl Drop for ListenerTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Holds one `LISTEN` connection (outside the pool) and wakes `signal`'s waiters on every
/// notification, and after every reconnection (notifications sent meanwhile are lost; the
/// waiters' own poll reads what they missed).
async fn follow_notifications(pool: PgPool, signal: Arc<Notify>) {
    loop {
        let mut listener = match sqlx::postgres::PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(err) => {
                tracing::debug!(error = %err, "revocation listener cannot connect; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(err) = listener.listen(EVENTS_CHANNEL).await {
            tracing::debug!(error = %err, "LISTEN failed; retrying");
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            continue;
        }
        signal.notify_waiters();
        loop {
            match listener.try_recv().await {
                Ok(Some(_)) => signal.notify_waiters(),
                // The connection was lost; `try_recv` reconnects on the next call.
                Ok(None) => signal.notify_waiters(),
                Err(err) => {
                    tracing::debug!(error = %err, "revocation listener lost its connection");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    break;
                }
            }
        }
    }
}
