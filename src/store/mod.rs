//! Persistence: the [`Store`] the service holds, in nine chapters, each a trait of its own
//! with its rows beside it; its SQL is written once (`sql/`, a file per chapter) and compiled
//! for SQLite and PostgreSQL, whose files hold only what differs.
//!
//! | chapter | trait | what it keeps |
//! |---|---|---|
//! | `users.rs` | [`UserStore`] | accounts, their addresses, the three password writers |
//! | `sessions.rs` | [`SessionStore`] | sessions and their refresh tokens |
//! | `lockout.rs` | [`LockoutStore`] | the login attempt counters |
//! | `events.rs` | [`EventStore`] | the revocation events a verifier follows |
//! | `tokens.rs` | [`TokenStore`] | one-time tokens: reset and verification links, the reset itself |
//! | `mfa.rs` | [`SecondFactorStore`] | TOTP factors, recovery codes, sign-in challenges |
//! | `passkeys.rs` | [`PasskeyStore`] | passkeys and their ceremonies |
//! | `outbox.rs` | [`OutboxStore`] | the outbox: mail, and webhook events per endpoint |
//! | `housekeeping.rs` | [`HousekeepingStore`] | health, schema, purges, `copy-data` |
//!
//! Every invariant the contract promises under concurrency is enforced here by the database
//! itself: a unique index for registrations, a single upsert per login attempt, and a
//! compare-and-set for refresh-token rotation. No method reads a row, decides in Rust, and
//! writes it back. This module knows nothing about HTTP or about the service's rules; SQL lives
//! only in this folder, one text per statement wherever the dialects agree.

/// The `template` names of [`MailTemplate::ALL`], quoted for an SQL `in (...)`: the outbox
/// claims only messages this build can render (a unit test keeps the two lists equal).
macro_rules! known_templates {
    () => {
        "'password_reset', 'password_changed', 'verify_email', 'mfa_enrolled', 'mfa_removed', \
         'recovery_code_used', 'recovery_codes_regenerated', 'passkey_added', 'passkey_removed'"
    };
}

/// The webhook rows for endpoint `$1` due at `$2` and not leased, oldest first, at most `$3`:
/// the candidates of a claim, which then skips those an earlier row of their user holds back
/// (each dialect's `due_webhooks` adds its locking).
macro_rules! due_webhooks {
    () => {
        r"select w.id, w.user_id from webhook_outbox w
          where w.endpoint = $1 and w.delivered_at is null and w.failed_at is null
            and w.next_attempt_at <= $2 and (w.leased_until is null or w.leased_until <= $2)
          order by w.id
          limit $3"
    };
}

mod events;
mod housekeeping;
mod lockout;
mod mfa;
mod outbox;
mod passkeys;
mod postgres;
mod sessions;
mod sqlite;
mod tokens;
mod users;

use std::{sync::Arc, time::Duration};

use crate::database_url::DatabaseUrl;

use events::RawEventRow;
use housekeeping::{APPLIED_MIGRATIONS, covers};

pub use events::{EventKind, EventRow, EventStore, not_before};
pub use housekeeping::{
    HousekeepingStore, ImportReport, ImportedRow, ImportedUser, PoolStats, Purge, Transfer,
};
pub use lockout::{AttemptLimits, AttemptRow, LockoutStore};
pub use mfa::{
    Confirmation, FactorConfirmation, FactorRow, NewFactor, RecoveryCodeRow, SecondFactorStore,
};
pub use outbox::{
    DeliveryOutcome, MAIL_PER_ADDRESS_PER_HOUR, MailOutcome, MailTemplate, NewMail, OutboxMail,
    OutboxStore, OutboxWebhook, Subscriptions, WebhookEvent,
};
pub use passkeys::{
    CeremonyKind, NewCeremony, NewPasskey, PasskeyRefused, PasskeyRow, PasskeyStore, PasskeyUse,
};
pub use postgres::PgStore;
pub use sessions::{
    NewRefreshToken, NewSession, ROTATED_TOKENS_KEPT, RefreshTokenRow, RotateOutcome,
    SessionRefused, SessionRow, SessionStore, SignInProof, USER_AGENT_CHARS,
};
pub use sqlite::{SqliteStore, read_original_users};
pub use tokens::{ResetRequest, TokenMail, TokenStore};
pub use users::{PasswordChange, UserRow, UserStore};

/// What can go wrong in the store, in terms the service can act on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique key was violated; each method documents which one.
    #[error("duplicate key")]
    Duplicate,
    /// The database did not answer (down, closed, pool acquire timed out).
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// An SQLite file that cannot be opened, and why (start-up and admin commands).
    #[error("{0}")]
    CannotOpen(String),
    /// Anything else: a bug or a broken schema.
    #[error("database query failed")]
    Other(#[source] sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::Database(db) if db.is_unique_violation() => Self::Duplicate,
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::BeginFailed => Self::Unavailable(err),
            sqlx::Error::Database(db) if is_unavailable_code(db.code().as_deref()) => {
                Self::Unavailable(err)
            }
            _ => Self::Other(err),
        }
    }
}

/// Database error codes that mean "not answering right now" rather than "bad query", so the
/// client gets 503 with `Retry-After` (never a 500, never a 401):
///
/// - PostgreSQL, connection-level: `08` connection exceptions, `28` authorization (a rotated
///   password), `3D000` no such database, `53` insufficient resources (too many clients),
///   `55000` not accepting connections (`ALLOW_CONNECTIONS false`), `57` operator
///   intervention (shutting down, cannot connect now, `57014` statement timeout);
/// - PostgreSQL, contention: `55P03` lock timeout, `25P03` idle-in-transaction timeout,
///   `40001` serialization failure, `40P01` deadlock;
/// - SQLite: `SQLITE_BUSY` and `SQLITE_LOCKED` (5 and 6, with their extended codes).
fn is_unavailable_code(code: Option<&str>) -> bool {
    const CLASSES: &[&str] = &["08", "28", "53", "57"];
    const CODES: &[&str] = &["3D000", "55000", "55P03", "25P03", "40001", "40P01"];
    match code {
        // A PostgreSQL SQLSTATE is five characters; SQLite's result codes are at most four
        // digits.
        Some(state) if state.len() == 5 => {
            CLASSES.iter().any(|class| state.starts_with(class)) || CODES.contains(&state)
        }
        Some(sqlite) => sqlite
            .parse::<i32>()
            .is_ok_and(|c| matches!(c & 0xff, 5 | 6)),
        None => false,
    }
}

#[cfg(test)]
mod classification_tests {
    use super::is_unavailable_code;

    #[test]
    fn connection_level_and_contention_codes_are_unavailable() {
        for code in [
            "08006", "08001", "28P01", "3D000", "53300", "55000", "57P01", "57P03", "57014",
            "55P03", "25P03", "40001", "40P01", "5", "6", "517", "262",
        ] {
            assert!(is_unavailable_code(Some(code)), "{code}");
        }
        for code in ["23505", "42P01", "22P02", "1", "19", "2067"] {
            assert!(!is_unavailable_code(Some(code)), "{code}");
        }
        assert!(!is_unavailable_code(None));
    }
}

/// Pool settings that both backends understand.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    /// Maximum open connections (PostgreSQL; SQLite files use it too).
    pub max_connections: u32,
    /// How long a request waits for a free connection before the 503.
    pub acquire_timeout: Duration,
    /// PostgreSQL `lock_timeout`: a statement waiting longer for a row lock (a stalled replica
    /// holding it) fails, its transaction rolls back, and the request answers 503.
    pub lock_timeout: Duration,
    /// PostgreSQL `statement_timeout` (and, one second longer,
    /// `idle_in_transaction_session_timeout`, which frees the locks of a frozen client).
    pub statement_timeout: Duration,
    /// Whether a missing SQLite file is created (the server, `migrate`) or an error (the other
    /// admin commands).
    pub create_if_missing: bool,
}

/// Everything the service needs from a database.
///
/// **The locking rule.** Every transaction that creates, rotates or ends a session of a user
/// first locks that user's row (`select ... for update` on PostgreSQL; SQLite's
/// `BEGIN IMMEDIATE` serialises every writer). A revocation therefore waits for a rotation of
/// the same user in flight and then sees its child, and a rotation that waited for a
/// revocation sees the ended session and creates nothing. Nothing else is locked before the
/// user row, so the rule cannot deadlock.
///
/// **The events rule.** Every change that can kill a live access token (`revoke_session`,
/// `revoke_user_sessions`, `set_user_active`, `delete_user`, `change_password_by_user`, the cap in
/// `start_session`, ...) appends, in the same transaction, the `revocation_events` rows a
/// verifier needs to refuse those tokens, and events become visible in `id` order. Ending many
/// sessions at once names only the sessions that may still hold a live access token that a
/// user-wide cut-off does not refuse (see [`SessionStore::revoke_user_sessions`]): each use of a
/// session (`last_used_at`) is recorded before its token is signed, with the token's `iat`.
///
/// **The webhooks rule.** Every change a webhook event names writes that event, for every
/// endpoint subscribed to it ([`Subscriptions`], given when the store is opened), in the
/// change's own transaction and before its revocation events: registration (`user.created`),
/// the first proof of the address by a link, a reset or an admin (`user.email_verified`), a
/// password change, reset or admin set (`user.password_changed`), a disable or enable that
/// changes the flag, a deletion (written before the row goes), every session ended by
/// logout-all, a reset, an admin set-password or mfa-reset (`user.sessions_ended`), the first
/// factor confirmed and the last removed, a passkey added or removed. Imports write none.
pub trait Store:
    UserStore
    + SessionStore
    + LockoutStore
    + EventStore
    + TokenStore
    + SecondFactorStore
    + PasskeyStore
    + OutboxStore
    + HousekeepingStore
    + 'static
{
}

impl<T> Store for T where
    T: UserStore
        + SessionStore
        + LockoutStore
        + EventStore
        + TokenStore
        + SecondFactorStore
        + PasskeyStore
        + OutboxStore
        + HousekeepingStore
        + 'static
{
}

/// Opens a pool for `url` (without retrying) and returns the matching store, writing webhook
/// events for `webhooks`.
///
/// # Errors
/// `Unavailable` when the database does not answer.
pub async fn connect(
    url: &DatabaseUrl,
    pool: PoolSettings,
    webhooks: Subscriptions,
) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match url {
        DatabaseUrl::Postgres(_) => {
            Arc::new(PgStore::connect(url, pool).await?.subscribe(webhooks))
        }
        DatabaseUrl::SqliteFile(_) | DatabaseUrl::SqliteMemory => {
            Arc::new(SqliteStore::connect(url, pool).await?.subscribe(webhooks))
        }
    })
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeSet, fs};

    #[test]
    fn both_backends_have_the_same_migration_files() {
        let names = |dir: &str| -> BTreeSet<String> {
            fs::read_dir(format!("{}/migrations/{dir}", env!("CARGO_MANIFEST_DIR")))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        };
        let sqlite = names("sqlite");
        assert!(!sqlite.is_empty());
        assert_eq!(sqlite, names("postgres"));
    }
}
