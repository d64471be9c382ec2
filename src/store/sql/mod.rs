//! The store's SQL and method bodies, written once for both dialects, a file per chapter.
//!
//! This folder is compiled twice: `sqlite.rs` and `postgres.rs` each mount it
//! (`#[path = "sql/mod.rs"] mod sql;`) after naming their pool type `Db` and their store type
//! `Dialect`, so each chapter's `impl ...Store for Dialect` is ordinary Rust (formatted,
//! navigable, type-checked against each driver) and expands to the same monomorphic code a
//! hand-written store per driver would be. Every statement is one text that SQLite and
//! PostgreSQL both accept (`$N` placeholders, `returning`, `on conflict`, `case` instead of
//! `max(a, b)` / `greatest(a, b)`); what truly differs is a hook the dialect file defines on its
//! store type, each named for what it does:
//!
//! | hook | SQLite | PostgreSQL |
//! |---|---|---|
//! | `begin_write(&self)` | `BEGIN IMMEDIATE` (the one write lock, taken up front) | `BEGIN` (row locks follow) |
//! | `lock_user(tx, id)` | a plain read: the write lock is already held | `select ... for update` |
//! | `due_mail(tx, now, limit)` | a plain read under the write lock | `for update skip locked` |
//! | `order_events(tx)` | nothing: one writer commits events in id order | a transaction-scoped advisory lock |
//! | `announce_event(tx, id)` | nothing: other processes poll | `pg_notify`, delivered at commit |
//! | `after_import(tx)` | nothing: `AUTOINCREMENT` follows explicit ids | move the identity sequence |
//! | `MIGRATOR`, `connect`, `notifications()` | its migrations, file options | its migrations, pool options, `LISTEN` |
//!
//! Every chapter method is a span (`#[tracing::instrument]`, named after the method, with
//! `db.system`): the database calls of a request's trace. Its arguments are never recorded.
//!
//! Why not a generic over `sqlx::Database`: a generic body needs, per method, an
//! `Encode + Type` bound for every bound type, a `Decode` bound for every column, `FromRow`
//! bounds for every row and a higher-ranked `Executor` bound on the connection, which together
//! are longer than the bodies and must be repeated on every helper. Mounting the same files
//! under two type aliases gives the monomorphic code without those bounds and without a macro.

/// The `users` columns every `UserRow` query selects.
macro_rules! user_columns {
    () => {
        "id, email, password_hash, is_active, created_at, updated_at, tokens_not_before, \
         email_verified_at"
    };
}

/// The `sessions` columns every `SessionRow` query selects.
macro_rules! session_columns {
    () => {
        "id, user_id, created_at, expires_at, revoked_at, last_used_at, user_agent, ip, amr"
    };
}

/// The `revocation_events` columns every event query selects.
macro_rules! event_columns {
    () => {
        "id, created_at, kind, user_id, session_id, not_before"
    };
}

/// The `refresh_tokens` columns every `RefreshTokenRow` query selects.
macro_rules! token_columns {
    () => {
        "jti, user_id, family_id, parent_jti, issued_at, expires_at, rotated_at, revoked_at"
    };
}

/// The `mfa_factors` columns every `FactorRow` query selects.
macro_rules! factor_columns {
    () => {
        "id, user_id, secret, secret_key, created_at, confirmed_at, last_used_at, last_step"
    };
}

/// The `passkeys` columns every `PasskeyRow` query selects.
macro_rules! passkey_columns {
    () => {
        "id, user_id, user_handle, credential_id, credential, sign_count, name, created_at, \
         last_used_at"
    };
}

mod events;
mod housekeeping;
mod lockout;
mod mfa;
mod outbox;
mod passkeys;
mod sessions;
mod tokens;
mod users;

use super::{DB_SYSTEM, Db, Dialect};

/// A session for every refresh-token family that has none (imports), ended when every token
/// of it is revoked.
const SESSIONS_FROM_TOKENS: &str = r"
    insert into sessions (id, user_id, created_at, expires_at, revoked_at)
    select family_id, min(user_id), min(issued_at), max(expires_at),
           case when count(*) = count(revoked_at) then max(revoked_at) end
    from refresh_tokens
    group by family_id
    on conflict (id) do nothing";
