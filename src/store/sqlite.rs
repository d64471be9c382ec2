//! The SQLite store: SQLite dialect SQL only (`?N` placeholders, TEXT timestamps).
//!
//! Writers are serialised by SQLite itself; the pool waits on `busy_timeout` instead of failing,
//! and the one multi-statement write (rotation) opens with `BEGIN IMMEDIATE` so it queues for
//! the write lock up front rather than failing when it upgrades from a read.

use std::{str::FromStr as _, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{
    SqlitePool,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};
use uuid::Uuid;

use super::{
    AttemptLimits, AttemptRow, ImportReport, NewRefreshToken, PoolSettings, PoolStats,
    RefreshTokenRow, Store, StoreError, UserRow,
};
use crate::config::DatabaseUrl;

/// How long a writer waits for SQLite's write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// [`Store`] on an SQLite file (or a private in-memory database).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating when missing) the database `url` names.
    ///
    /// # Errors
    /// `Unavailable` when the file cannot be opened.
    pub async fn connect(url: &DatabaseUrl, settings: PoolSettings) -> Result<Self, StoreError> {
        let (options, pool) = match url {
            DatabaseUrl::SqliteFile(path) => (
                SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal),
                SqlitePoolOptions::new().max_connections(settings.max_connections),
            ),
            // Every connection to `:memory:` is its own empty database: keep exactly one,
            // forever.
            _ => (
                SqliteConnectOptions::from_str("sqlite::memory:").map_err(StoreError::Other)?,
                SqlitePoolOptions::new()
                    .max_connections(1)
                    .min_connections(1)
                    .idle_timeout(None)
                    .max_lifetime(None),
            ),
        };
        let options = options.busy_timeout(BUSY_TIMEOUT).foreign_keys(true);
        let pool = pool
            .acquire_timeout(settings.acquire_timeout)
            .connect_with(options)
            .await
            .map_err(StoreError::Unavailable)?;
        Ok(Self { pool })
    }
}

/// Reads the accounts of the original (Python) service's SQLite database, read-only: its
/// `users` table has `id`, `email`, `password_hash`, `is_active` and `created_at` (SQLAlchemy's
/// `YYYY-MM-DD HH:MM:SS[.ffffff]`, UTC). Its lockout columns are not carried over.
///
/// # Errors
/// `Unavailable` when the file cannot be opened; `Other` when it has no such table, or a
/// timestamp that does not parse.
pub async fn read_original_users(path: &std::path::Path) -> Result<Vec<UserRow>, StoreError> {
    use sqlx::{Connection as _, Row as _};
    let options = SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .create_if_missing(false);
    let mut conn = sqlx::SqliteConnection::connect_with(&options)
        .await
        .map_err(StoreError::Unavailable)?;
    let rows = sqlx::query(
        "select id, email, password_hash, is_active, cast(created_at as text) as created_at
         from users order by id",
    )
    .fetch_all(&mut conn)
    .await?;
    rows.iter()
        .map(|row| {
            let created: String = row.try_get("created_at")?;
            let created_at = parse_original_time(&created).ok_or_else(|| {
                StoreError::Other(sqlx::Error::Decode(
                    format!("created_at {created:?} is not a timestamp").into(),
                ))
            })?;
            Ok(UserRow {
                id: row.try_get("id")?,
                email: row.try_get("email")?,
                password_hash: row.try_get("password_hash")?,
                is_active: row.try_get("is_active")?,
                created_at,
                updated_at: created_at,
            })
        })
        .collect()
}

/// SQLAlchemy's SQLite timestamps (naive, UTC), or RFC 3339.
fn parse_original_time(raw: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            chrono::NaiveDateTime::parse_from_str(raw, "%Y-%m-%d %H:%M:%S%.f")
                .ok()
                .map(|t| t.and_utc())
        })
}

#[async_trait]
impl Store for SqliteStore {
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
        sqlx::migrate!("migrations/sqlite")
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Other(e.into()))
    }

    async fn insert_user(
        &self,
        email: &str,
        password_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<UserRow, StoreError> {
        Ok(sqlx::query_as(concat!(
            r"insert into users (email, password_hash, is_active, created_at, updated_at)
              values (?1, ?2, true, ?3, ?3)
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
            " from users where email = ?1"
        ))
        .bind(email)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn find_user_by_id(&self, id: i64) -> Result<Option<UserRow>, StoreError> {
        Ok(sqlx::query_as(concat!(
            "select ",
            user_columns!(),
            " from users where id = ?1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn set_user_active(
        &self,
        id: i64,
        active: bool,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        Ok(
            sqlx::query("update users set is_active = ?2, updated_at = ?3 where id = ?1")
                .bind(id)
                .bind(active)
                .bind(now)
                .execute(&self.pool)
                .await?
                .rows_affected()
                == 1,
        )
    }

    async fn reserve_login_attempt(
        &self,
        key: &str,
        now: DateTime<Utc>,
        limits: AttemptLimits,
    ) -> Result<AttemptRow, StoreError> {
        // ?1 key, ?2 now, ?3 window cut-off, ?4 lock end if this attempt locks, ?5 max.
        Ok(sqlx::query_as(
            r"insert into login_attempts (key, attempts, window_start, locked_until)
              values (?1, 1, ?2, case when 1 >= ?5 then ?4 else null end)
              on conflict (key) do update set
                attempts = case
                  when login_attempts.locked_until > ?2
                    then min(login_attempts.attempts + 1, ?5 + 1)
                  when login_attempts.locked_until is not null
                    or login_attempts.window_start <= ?3 then 1
                  else login_attempts.attempts + 1
                end,
                window_start = case
                  when login_attempts.locked_until > ?2 then login_attempts.window_start
                  when login_attempts.locked_until is not null
                    or login_attempts.window_start <= ?3 then ?2
                  else login_attempts.window_start
                end,
                locked_until = case
                  when login_attempts.locked_until > ?2 then login_attempts.locked_until
                  when login_attempts.locked_until is not null
                    or login_attempts.window_start <= ?3
                    then case when 1 >= ?5 then ?4 else null end
                  when login_attempts.attempts + 1 >= ?5 then ?4
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
            "select attempts, window_start, locked_until from login_attempts where key = ?1",
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
            "update users set password_hash = ?3, updated_at = ?4 where id = ?1 and password_hash = ?2",
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

    async fn delete_user(&self, id: i64) -> Result<bool, StoreError> {
        Ok(sqlx::query("delete from users where id = ?1")
            .bind(id)
            .execute(&self.pool)
            .await?
            .rows_affected()
            == 1)
    }

    async fn clear_login_attempts(&self, key: &str) -> Result<(), StoreError> {
        sqlx::query("delete from login_attempts where key = ?1")
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn insert_refresh_token(&self, token: &NewRefreshToken) -> Result<(), StoreError> {
        insert_token(&self.pool, token).await?;
        Ok(())
    }

    async fn find_refresh_token(&self, jti: Uuid) -> Result<Option<RefreshTokenRow>, StoreError> {
        Ok(sqlx::query_as(concat!(
            "select ",
            token_columns!(),
            " from refresh_tokens where jti = ?1"
        ))
        .bind(jti)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn find_child_token(&self, parent: Uuid) -> Result<Option<RefreshTokenRow>, StoreError> {
        Ok(sqlx::query_as(concat!(
            "select ",
            token_columns!(),
            " from refresh_tokens where parent_jti = ?1"
        ))
        .bind(parent)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn rotate_refresh_token(
        &self,
        parent: Uuid,
        child: &NewRefreshToken,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let claimed = sqlx::query(
            r"update refresh_tokens set rotated_at = ?2
              where jti = ?1 and rotated_at is null and revoked_at is null and expires_at > ?2",
        )
        .bind(parent)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if claimed != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        let child = NewRefreshToken {
            parent_jti: Some(parent),
            ..child.clone()
        };
        insert_token(&mut *tx, &child).await?;
        tx.commit().await?;
        Ok(true)
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
            " from refresh_tokens where expires_at > ?1 order by issued_at"
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
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
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
                r"insert into users (id, email, password_hash, is_active, created_at, updated_at)
                  values (?1, ?2, ?3, ?4, ?5, ?6)
                  on conflict do nothing
                  returning id",
            )
            .bind(user.id)
            .bind(&user.email)
            .bind(&user.password_hash)
            .bind(user.is_active)
            .bind(user.created_at)
            .bind(user.updated_at)
            .fetch_optional(&mut *tx)
            .await?;
            inserted.extend(id);
        }
        let mut copied_tokens = 0;
        for token in tokens.iter().filter(|t| inserted.contains(&t.user_id)) {
            copied_tokens += sqlx::query(
                r"insert into refresh_tokens
                    (jti, user_id, family_id, parent_jti, issued_at, expires_at, rotated_at, revoked_at)
                  values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
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
        // AUTOINCREMENT keeps sqlite_sequence past explicitly inserted ids by itself.
        tx.commit().await?;
        let users_inserted = u64::try_from(inserted.len()).unwrap_or(u64::MAX);
        Ok(Some(ImportReport {
            users: users_inserted,
            skipped_users: u64::try_from(users.len()).unwrap_or(u64::MAX) - users_inserted,
            tokens: copied_tokens,
        }))
    }

    async fn revoke_family_of(&self, jti: Uuid, now: DateTime<Utc>) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            r"update refresh_tokens set revoked_at = ?2
              where revoked_at is null
                and family_id = (select family_id from refresh_tokens where jti = ?1)",
        )
        .bind(jti)
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    async fn revoke_user_tokens(
        &self,
        user_id: i64,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "update refresh_tokens set revoked_at = ?2 where user_id = ?1 and revoked_at is null",
        )
        .bind(user_id)
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }
}

/// The one refresh-token insert, on the pool or inside the rotation transaction.
async fn insert_token<'e>(
    executor: impl sqlx::SqliteExecutor<'e>,
    token: &NewRefreshToken,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        r"insert into refresh_tokens (jti, user_id, family_id, parent_jti, issued_at, expires_at)
          values (?1, ?2, ?3, ?4, ?5, ?6)",
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
