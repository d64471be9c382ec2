//! What only SQLite does: open the file, start a write transaction, order events; the method
//! bodies are in `sql/`, shared with PostgreSQL.
//!
//! Writers are serialised by SQLite itself; the pool waits on `busy_timeout` instead of failing,
//! and every write transaction opens with `BEGIN IMMEDIATE` so it queues for the write lock up
//! front rather than failing when it upgrades from a read.

use std::{str::FromStr as _, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use sqlx::{
    Sqlite, SqlitePool, Transaction,
    migrate::Migrator,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

use super::{PoolSettings, StoreError, Subscriptions, UserRow};
use crate::database_url::DatabaseUrl;

/// How long a writer waits for SQLite's write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// [`Store`] on an SQLite file (or a private in-memory database).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// Who receives webhook events (none unless [`Self::subscribe`] said).
    webhooks: Arc<Subscriptions>,
}

impl SqliteStore {
    /// The embedded SQLite migrations.
    const MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");

    /// A write transaction: `BEGIN IMMEDIATE` takes the write lock up front, so writers queue
    /// on `busy_timeout` instead of failing when a read upgrades.
    async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        self.pool.begin_with("BEGIN IMMEDIATE").await
    }

    /// The locking rule's first step: whether the user is active (`None`: no such user). The
    /// transaction itself is the lock: `BEGIN IMMEDIATE` holds SQLite's one write lock.
    async fn lock_user(
        tx: &mut Transaction<'_, Sqlite>,
        user_id: i64,
    ) -> Result<Option<bool>, sqlx::Error> {
        sqlx::query_scalar("select is_active from users where id = $1")
            .bind(user_id)
            .fetch_optional(&mut **tx)
            .await
    }

    /// The ids of up to `limit` messages due at `now`, password resets first (a user waits for
    /// one), then oldest first. The transaction holds
    /// the one write lock: no other worker claims meanwhile.
    async fn due_mail(
        tx: &mut Transaction<'_, Sqlite>,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<i64>, sqlx::Error> {
        sqlx::query_scalar(concat!(
            r"select id from mail_outbox
              where sent_at is null and failed_at is null and next_attempt_at <= $1
                and (leased_until is null or leased_until <= $1)
                and template in (",
            known_templates!(),
            r")
              order by case template when 'password_reset' then 0 else 1 end, id
              limit $2",
        ))
        .bind(now)
        .bind(limit)
        .fetch_all(&mut **tx)
        .await
    }

    /// Up to `limit` webhook rows for `endpoint` due at `now` (id, user), oldest first; the
    /// transaction holds the one write lock.
    async fn due_webhooks(
        tx: &mut Transaction<'_, Sqlite>,
        endpoint: &str,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<(i64, i64)>, sqlx::Error> {
        sqlx::query_as(due_webhooks!())
            .bind(endpoint)
            .bind(now)
            .bind(limit)
            .fetch_all(&mut **tx)
            .await
    }

    /// Webhook events go to `subscriptions` from now on.
    #[must_use]
    pub fn subscribe(mut self, subscriptions: Subscriptions) -> Self {
        self.webhooks = Arc::new(subscriptions);
        self
    }

    /// Events need no ordering of their own: the single writer commits them in id order.
    #[expect(
        clippy::unused_async,
        reason = "the hook is awaited like its PostgreSQL twin"
    )]
    async fn order_events(_tx: &mut Transaction<'_, Sqlite>) -> Result<(), sqlx::Error> {
        Ok(())
    }

    /// Nothing to announce: a file has no notifications, other processes poll.
    #[expect(
        clippy::unused_async,
        reason = "the hook is awaited like its PostgreSQL twin"
    )]
    async fn announce_event(
        _tx: &mut Transaction<'_, Sqlite>,
        _id: i64,
    ) -> Result<(), sqlx::Error> {
        Ok(())
    }

    /// Nothing after an import: `AUTOINCREMENT` keeps `sqlite_sequence` past explicit ids.
    #[expect(
        clippy::unused_async,
        reason = "the hook is awaited like its PostgreSQL twin"
    )]
    async fn after_import(_tx: &mut Transaction<'_, Sqlite>) -> Result<(), sqlx::Error> {
        Ok(())
    }

    /// A file has no notifications: other processes' events are found by polling.
    #[expect(clippy::unused_self, reason = "the PostgreSQL twin reads its listener")]
    fn notifications(&self) -> Option<Arc<tokio::sync::Notify>> {
        None
    }

    /// Opens (creating when missing) the database `url` names.
    ///
    /// # Errors
    /// `Unavailable` when the file cannot be opened.
    pub async fn connect(url: &DatabaseUrl, settings: PoolSettings) -> Result<Self, StoreError> {
        let (options, pool) = match url {
            DatabaseUrl::SqliteFile(path) => (
                SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(settings.create_if_missing)
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
            .map_err(|err| match url {
                DatabaseUrl::SqliteFile(path) => {
                    StoreError::CannotOpen(why_not_open(path, settings.create_if_missing, &err))
                }
                _ => StoreError::Unavailable(err),
            })?;
        Ok(Self {
            pool,
            webhooks: Arc::default(),
        })
    }
}

/// Why an SQLite file could not be opened, in words an operator can act on (SQLite itself only
/// says "unable to open database file", without the file).
fn why_not_open(path: &std::path::Path, create: bool, err: &sqlx::Error) -> String {
    let shown = path.display();
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| std::path::Path::new("."));
    let reason = if !create && !path.exists() {
        "the file does not exist (check the working directory and DATABASE_URL; \
         `auth-service migrate` creates it)"
            .to_owned()
    } else if !parent.is_dir() {
        format!("the directory {} does not exist", parent.display())
    } else {
        // Ask the file system the question SQLite asked, to get its answer (read-only file
        // system, permission denied...).
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(path)
        {
            Err(io) => io.to_string(),
            Ok(_) => crate::error_chain::error_chain(err),
        }
    };
    format!("cannot open the sqlite file {shown}: {reason}")
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
                tokens_not_before: None,
                // Users from before email verification count as verified.
                email_verified_at: Some(created_at),
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

/// The pool type the shared SQL (`sql/`) is compiled against here.
type Db = Sqlite;
/// The store type the shared SQL implements the chapters for here.
type Dialect = SqliteStore;
/// `db.system` of its spans (the semantic conventions' name).
const DB_SYSTEM: &str = "sqlite";

#[expect(
    clippy::duplicate_mod,
    reason = "the shared SQL is compiled once per dialect, by design (see sql/mod.rs)"
)]
#[path = "sql/mod.rs"]
mod sql;
