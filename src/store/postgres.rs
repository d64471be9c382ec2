//! What only PostgreSQL does: connect with per-connection timeouts, lock a user's row, order
//! and announce events (advisory lock + `NOTIFY`), `LISTEN`, move the identity sequence after
//! an import; the method bodies are in `sql/`, shared with SQLite.
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

use secrecy::ExposeSecret as _;
use sqlx::{
    PgPool, Postgres, Transaction,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tokio::sync::Notify;

use super::{PoolSettings, StoreError, Subscriptions};
use crate::database_url::DatabaseUrl;

/// [`Store`] on a PostgreSQL database shared by every replica.
#[derive(Debug)]
pub struct PgStore {
    pool: PgPool,
    /// Who receives webhook events (none unless [`Self::subscribe`] said).
    webhooks: Arc<Subscriptions>,
    /// Woken on every `NOTIFY auth_revocations`.
    signal: Arc<Notify>,
    /// The `LISTEN` task, started by the first [`Store::event_signal`] (admin commands never
    /// start it).
    listener: OnceLock<ListenerTask>,
}

impl PgStore {
    /// The embedded PostgreSQL migrations.
    const MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres");

    /// A write transaction; the row locks that order it follow (`lock_user`).
    async fn begin_write(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        self.pool.begin().await
    }

    /// The locking rule's first step: locks the user's row for the rest of the transaction and
    /// says whether the user is active (`None`: no such user).
    async fn lock_user(
        tx: &mut Transaction<'_, Postgres>,
        user_id: i64,
    ) -> Result<Option<bool>, sqlx::Error> {
        sqlx::query_scalar("select is_active from users where id = $1 for update")
            .bind(user_id)
            .fetch_optional(&mut **tx)
            .await
    }

    /// The ids of up to `limit` messages due at `now`, password resets first (a user waits for
    /// one), then oldest first, locked for this
    /// transaction; rows another replica is claiming are skipped, not waited for.
    async fn due_mail(
        tx: &mut Transaction<'_, Postgres>,
        now: chrono::DateTime<chrono::Utc>,
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
              limit $2
              for update skip locked",
        ))
        .bind(now)
        .bind(limit)
        .fetch_all(&mut **tx)
        .await
    }

    /// Up to `limit` webhook rows for `endpoint` due at `now` (id, user), oldest first,
    /// locked; rows another replica holds are skipped.
    async fn due_webhooks(
        tx: &mut Transaction<'_, Postgres>,
        endpoint: &str,
        now: chrono::DateTime<chrono::Utc>,
        limit: i64,
    ) -> Result<Vec<(i64, i64)>, sqlx::Error> {
        sqlx::query_as(concat!(due_webhooks!(), " for update of w skip locked"))
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

    /// The transaction-scoped advisory lock that makes event-writing transactions take their
    /// ids and commit one after the other, so a reader that sees event N has seen every event
    /// before it (an identity sequence alone can commit out of order).
    async fn order_events(tx: &mut Transaction<'_, Postgres>) -> Result<(), sqlx::Error> {
        sqlx::query("select pg_advisory_xact_lock($1)")
            .bind(EVENTS_LOCK)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Wakes every replica's follower; the `NOTIFY` is delivered at commit.
    async fn announce_event(
        tx: &mut Transaction<'_, Postgres>,
        id: i64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("select pg_notify($1, $2)")
            .bind(EVENTS_CHANNEL)
            .bind(id.to_string())
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Explicit ids do not move the identity sequence: move it past the largest id, so the
    /// next registration does not collide.
    async fn after_import(tx: &mut Transaction<'_, Postgres>) -> Result<(), sqlx::Error> {
        sqlx::query(
            r"select setval(pg_get_serial_sequence('users', 'id'),
                            greatest((select max(id) from users), 1))",
        )
        .fetch_one(&mut **tx)
        .await?;
        Ok(())
    }

    /// Starts the `LISTEN` task on first use (admin commands never start it).
    fn notifications(&self) -> Option<Arc<Notify>> {
        self.listener.get_or_init(|| {
            ListenerTask(tokio::spawn(follow_notifications(
                self.pool.clone(),
                Arc::clone(&self.signal),
            )))
        });
        Some(Arc::clone(&self.signal))
    }

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
            webhooks: Arc::default(),
            signal: Arc::new(Notify::new()),
            listener: OnceLock::new(),
        })
    }
}

/// The pool type the shared SQL (`sql/`) is compiled against here.
type Db = Postgres;
/// The store type the shared SQL implements the chapters for here.
type Dialect = PgStore;
/// `db.system` of its spans (the semantic conventions' name).
const DB_SYSTEM: &str = "postgresql";

#[expect(
    clippy::duplicate_mod,
    reason = "the shared SQL is compiled once per dialect, by design (see sql/mod.rs)"
)]
#[path = "sql/mod.rs"]
mod sql;

/// The `NOTIFY` channel an event's commit signals on.
const EVENTS_CHANNEL: &str = "auth_revocations";

/// The advisory lock that orders event commits (an arbitrary constant, "auth" in ASCII).
const EVENTS_LOCK: i64 = 0x6175_7468;

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
