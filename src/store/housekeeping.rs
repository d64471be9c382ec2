//! Housekeeping: health, schema, purges and `copy-data`.

use super::{FactorRow, PasskeyRow, RecoveryCodeRow, RefreshTokenRow, StoreError, UserRow};
use async_trait::async_trait;
use chrono::{DateTime, Utc};

/// Connection counts of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Open connections.
    pub size: u32,
    /// Of which idle.
    pub idle: u32,
}

/// What an import writes: users with their ids, and what belongs to them.
#[derive(Debug, Clone, Default)]
pub struct Transfer {
    /// The users.
    pub users: Vec<UserRow>,
    /// Their refresh tokens, each parent before its children.
    pub tokens: Vec<RefreshTokenRow>,
    /// Their confirmed second factors (secrets sealed as they are: the target needs the same
    /// data keys).
    pub factors: Vec<FactorRow>,
    /// Their unused recovery codes (hashes).
    pub recovery_codes: Vec<RecoveryCodeRow>,
    /// Their passkeys (public keys and counters: nothing sealed).
    pub passkeys: Vec<PasskeyRow>,
}

/// A user read from another system's export, about to be inserted (`user import`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedUser {
    /// The normalised email.
    pub email: String,
    /// The other system's hash, checked (its format known, its parameters within budget).
    pub password_hash: String,
    /// False for a disabled account.
    pub is_active: bool,
    /// When the account was made (the file's, or now).
    pub created_at: DateTime<Utc>,
    /// Set when the file says the address is verified.
    pub email_verified_at: Option<DateTime<Utc>>,
}

/// Where one email of an import batch ended up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedRow {
    /// The email.
    pub email: String,
    /// The id of the user holding it now.
    pub id: i64,
    /// Whether this batch inserted it (else it was there).
    pub inserted: bool,
}

/// What an import wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportReport {
    /// Users inserted.
    pub users: u64,
    /// Users skipped (merge only: id or email already there).
    pub skipped_users: u64,
    /// Refresh tokens inserted.
    pub tokens: u64,
    /// Second factors inserted.
    pub factors: u64,
    /// Passkeys inserted.
    pub passkeys: u64,
}

/// One batch of rows that nothing needs any more, for [`Store::purge_batch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purge {
    /// Login counters whose window started before `window_start_before` and whose lock (if
    /// any) ended before `now`.
    LoginAttempts {
        /// Counting windows that started before this are over.
        window_start_before: DateTime<Utc>,
        /// Locks that ended before this are over.
        now: DateTime<Utc>,
    },
    /// Refresh tokens that expired before this (their children, if any, are unlinked first,
    /// never deleted with them).
    RefreshTokens(DateTime<Utc>),
    /// Sessions whose last refresh token expired before this.
    Sessions(DateTime<Utc>),
    /// Revocation events older than this, except the newest (it marks where the feed's
    /// cursors are still good).
    Events(DateTime<Utc>),
    /// Messages sent or failed before this.
    Mail(DateTime<Utc>),
    /// One-time tokens that expired before this.
    UserTokens(DateTime<Utc>),
    /// The per-address mail counts ([`MAIL_PER_ADDRESS_PER_HOUR`]) older than this.
    MailSends(DateTime<Utc>),
    /// Second-factor challenges that expired before this.
    MfaChallenges(DateTime<Utc>),
    /// Factors created before this and never confirmed.
    UnconfirmedFactors(DateTime<Utc>),
    /// Passkey ceremonies that expired before this.
    PasskeyCeremonies(DateTime<Utc>),
    /// Webhook rows delivered or failed before `finished_before`, and rows written before
    /// `abandoned_before` that never finished (their endpoint left `WEBHOOK_URLS`).
    Webhooks {
        /// Finished rows older than this go.
        finished_before: DateTime<Utc>,
        /// Unfinished rows older than this go.
        abandoned_before: DateTime<Utc>,
    },
}

impl Purge {
    /// The table it empties, for logs and the `rows_purged_total` metric.
    #[must_use]
    pub fn table(self) -> &'static str {
        match self {
            Self::LoginAttempts { .. } => "login_attempts",
            Self::RefreshTokens(_) => "refresh_tokens",
            Self::Sessions(_) => "sessions",
            Self::Events(_) => "revocation_events",
            Self::Mail(_) => "mail_outbox",
            Self::UserTokens(_) => "user_tokens",
            Self::MailSends(_) => "mail_sends",
            Self::MfaChallenges(_) => "mfa_challenges",
            Self::UnconfirmedFactors(_) => "mfa_factors",
            Self::PasskeyCeremonies(_) => "passkey_ceremonies",
            Self::Webhooks { .. } => "webhook_outbox",
        }
    }
}

/// Whether the applied versions cover every embedded migration; a missing migrations table
/// means nothing was applied.
pub(super) fn covers(
    applied: Result<Vec<i64>, sqlx::Error>,
    migrator: &sqlx::migrate::Migrator,
) -> Result<bool, StoreError> {
    let applied = match applied {
        Ok(applied) => applied,
        Err(sqlx::Error::Database(db))
            if db.code().as_deref() == Some("42P01") || db.message().contains("no such table") =>
        {
            return Ok(false);
        }
        Err(err) => return Err(err.into()),
    };
    Ok(migrator
        .iter()
        .all(|migration| applied.contains(&migration.version)))
}

/// The versions the migrations table records as applied.
pub(super) const APPLIED_MIGRATIONS: &str = "select version from _sqlx_migrations where success";

/// The store's housekeeping chapter (see [`Store`](super::Store) for the rules every chapter keeps).
#[async_trait]
pub trait HousekeepingStore: Send + Sync {
    /// Answers when the database does.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Open and idle connections of the pool, for `/metrics`.
    fn pool_stats(&self) -> PoolStats;

    /// Applies the embedded migrations of this backend.
    async fn migrate(&self) -> Result<(), StoreError>;

    /// Whether every embedded migration has been applied (for `MIGRATE_ON_START=false`).
    async fn schema_is_current(&self) -> Result<bool, StoreError>;

    /// Whether the data migration `name` has been recorded as done.
    async fn data_migration_done(&self, name: &str) -> Result<bool, StoreError>;

    /// Records the data migration `name` as done at `now` (idempotent).
    async fn record_data_migration(&self, name: &str, now: DateTime<Utc>)
    -> Result<(), StoreError>;

    /// Deletes at most `limit` rows of one kind that nothing needs any more, in one short
    /// transaction; returns how many. Callers repeat until fewer than `limit` come back.
    async fn purge_batch(&self, purge: Purge, limit: i64) -> Result<u64, StoreError>;

    /// Every user, by id (for `copy-data`).
    async fn export_users(&self) -> Result<Vec<UserRow>, StoreError>;

    /// Every refresh token not expired at `now`, oldest first (for `copy-data`).
    async fn export_refresh_tokens(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Vec<RefreshTokenRow>, StoreError>;

    /// Inserts one batch of `user import` in one transaction, skipping users whose email
    /// exists (ids are new); for each email of the batch, the id holding it and whether this
    /// batch inserted it. With `dry_run` the transaction is rolled back: the answer is the
    /// same, nothing is written.
    async fn insert_imported_users(
        &self,
        users: &[ImportedUser],
        updated_at: DateTime<Utc>,
        dry_run: bool,
    ) -> Result<Vec<ImportedRow>, StoreError>;

    /// Every confirmed second factor, and every unused recovery code (for `copy-data`).
    async fn export_second_factors(
        &self,
    ) -> Result<(Vec<FactorRow>, Vec<RecoveryCodeRow>), StoreError>;

    /// Every passkey (for `copy-data`).
    async fn export_passkeys(&self) -> Result<Vec<PasskeyRow>, StoreError>;

    /// Imports users (ids kept), their refresh tokens, second factors, recovery codes and
    /// passkeys in one
    /// transaction, with a session for each token family (ended when all its tokens are
    /// revoked; a password sign-in, aal1, whatever it was). Refuses (returns `None`) when the
    /// target already has users, unless `merge`, in which case users whose id or email exists
    /// are skipped along with everything of theirs. Leaves the id sequence past the largest
    /// id, so the next registration does not collide.
    async fn import(
        &self,
        transfer: &Transfer,
        merge: bool,
    ) -> Result<Option<ImportReport>, StoreError>;
}
