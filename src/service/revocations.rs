//! What `/auth/verify` must refuse besides a bad signature or expiry, served from memory.
//!
//! [`Revocations`] keeps two bounded caches (moka): the status of users (active, email, "tokens
//! issued before T are dead") and of sessions (live or ended), each loaded from the database on
//! a miss. They are kept exact by invalidation, never by a time-to-live:
//!
//! - a change made by this process is applied at once, after its commit;
//! - a change made by another process (another replica, an admin command) is an event in the
//!   `revocation_events` table, which [`Revocations::follow`] reads in commit order: woken by
//!   PostgreSQL `NOTIFY` at once, and polling every [`POLL_EVERY`] anyway (all SQLite needs, and
//!   what covers a lost listener connection).
//!
//! A load races a change when it reads the database before the change commits and caches the
//! answer after the change was applied; every applied change bumps a generation counter, and a
//! load whose generation moved meanwhile answers without caching.
//!
//! When the events cannot be read for longer than [`STALE_AFTER`] (the database is down),
//! nothing cached is vouched for any more: checks answer `Unavailable` (503), never a 200 for a
//! token that may have been revoked meanwhile, never a 401 for an outage.
//!
//! This module does not know about HTTP.

use std::{
    sync::{
        Arc, Weak,
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use uuid::Uuid;

use super::AuthError;
use crate::store::{EventKind, EventRow, Store, StoreError, UserRow};

/// How often events are read when no notification arrives.
pub const POLL_EVERY: Duration = Duration::from_millis(250);

/// How long the events may go unread before cached answers are no longer trusted.
pub const STALE_AFTER: Duration = Duration::from_secs(3);

/// Events read per query.
const PAGE: i64 = 500;

/// Users remembered at most (a user entry is about 100 bytes).
const MAX_USERS: u64 = 100_000;

/// Sessions remembered at most.
const MAX_SESSIONS: u64 = 200_000;

/// What verification needs to know about a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserStatus {
    /// Whether the account may be used.
    pub active: bool,
    /// The stored email, returned by `/auth/verify`.
    pub email: Arc<str>,
    /// Tokens with `iat` (seconds) before this are dead.
    pub not_before: Option<i64>,
}

impl From<&UserRow> for UserStatus {
    fn from(user: &UserRow) -> Self {
        Self {
            active: user.is_active,
            email: Arc::from(user.email.as_str()),
            not_before: user.tokens_not_before.map(|t| t.timestamp()),
        }
    }
}

/// A session as far as verification cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SessionStatus {
    /// Whose session it is (user-wide events end all of them).
    user_id: i64,
    /// False once ended (or when no such session exists).
    live: bool,
}

/// The in-memory view of what is revoked; shared by every request of a process.
pub struct Revocations {
    store: Arc<dyn Store>,
    /// `None`: no such user.
    users: moka::sync::Cache<i64, Option<Arc<UserStatus>>>,
    sessions: moka::sync::Cache<Uuid, SessionStatus>,
    /// Bumped by every applied change; see the module docs.
    generation: AtomicU64,
    /// The last event applied.
    cursor: AtomicI64,
    /// When the events were last read successfully, in milliseconds since `epoch`.
    synced_at_ms: AtomicU64,
    epoch: Instant,
    /// Whether a follower runs; without one (admin commands) nothing is ever vouched for.
    following: AtomicBool,
    /// The cursor after each poll, for long-polling readers of the feed.
    applied: tokio::sync::watch::Sender<i64>,
}

impl Revocations {
    /// An empty view over `store`; call [`Self::follow`] before relying on it.
    #[must_use]
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            users: moka::sync::Cache::builder().max_capacity(MAX_USERS).build(),
            sessions: moka::sync::Cache::builder()
                .max_capacity(MAX_SESSIONS)
                .support_invalidation_closures()
                .build(),
            generation: AtomicU64::new(0),
            cursor: AtomicI64::new(0),
            synced_at_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            following: AtomicBool::new(false),
            applied: tokio::sync::watch::channel(0).0,
        }
    }

    /// Starts following the events table from its current end, in a background task that
    /// stops when the view is dropped.
    ///
    /// # Errors
    /// `Unavailable` when the database does not answer.
    pub async fn follow(self: &Arc<Self>) -> Result<(), StoreError> {
        let start = self.store.last_event_id().await?;
        self.cursor.store(start, Ordering::SeqCst);
        self.mark_synced();
        self.following.store(true, Ordering::SeqCst);
        let signal = self.store.event_signal();
        let view = Arc::downgrade(self);
        tokio::spawn(follow_loop(view, signal));
        Ok(())
    }

    /// A receiver of the applied cursor, for readers that wait for the next change.
    #[must_use]
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<i64> {
        self.applied.subscribe()
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn mark_synced(&self) {
        self.synced_at_ms.store(self.now_ms(), Ordering::SeqCst);
    }

    /// Whether cached answers can be trusted now.
    fn is_current(&self) -> bool {
        let behind = self
            .now_ms()
            .saturating_sub(self.synced_at_ms.load(Ordering::SeqCst));
        self.following.load(Ordering::Relaxed) && u128::from(behind) <= STALE_AFTER.as_millis()
    }

    /// Reads and applies every event after the cursor.
    async fn poll(&self) -> Result<(), StoreError> {
        loop {
            let after = self.cursor.load(Ordering::SeqCst);
            let events = self.store.events_since(after, PAGE).await?;
            let Some(last) = events.last().map(|e| e.id) else {
                break;
            };
            for event in &events {
                self.apply(event);
            }
            self.cursor.store(last, Ordering::SeqCst);
            if i64::try_from(events.len()).unwrap_or(i64::MAX) < PAGE {
                break;
            }
        }
        self.mark_synced();
        self.applied
            .send_replace(self.cursor.load(Ordering::SeqCst));
        Ok(())
    }

    /// Applies one event (another process's, or this process's own, again: idempotent).
    fn apply(&self, event: &EventRow) {
        match (event.kind, event.session_id) {
            (EventKind::SessionRevoked, Some(session)) => {
                self.session_ended(session, event.user_id);
            }
            (EventKind::UserDeleted, _) => self.user_deleted(event.user_id),
            _ => self.user_changed(event.user_id),
        }
    }

    /// A user was deleted (after the commit): their tokens are refused from memory at once,
    /// as long as the cache keeps the entry (a user the database does not know is otherwise
    /// not remembered, see [`Self::user`]).
    pub fn user_deleted(&self, user_id: i64) {
        self.user_changed(user_id);
        self.users.insert(user_id, None);
    }

    /// This process ended a session (after the commit): refuse its tokens at once.
    pub fn session_ended(&self, session: Uuid, user_id: i64) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.sessions.insert(
            session,
            SessionStatus {
                user_id,
                live: false,
            },
        );
    }

    /// A user changed (logout-all, disabled, enabled, deleted): forget what is cached about
    /// them and their sessions, so the next check reads the database.
    pub fn user_changed(&self, user_id: i64) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.users.invalidate(&user_id);
        if self
            .sessions
            .invalidate_entries_if(move |_, status| status.user_id == user_id)
            .is_err()
        {
            // Only possible without invalidation closures, which the builder enables.
            self.sessions.invalidate_all();
        }
    }

    /// Users and sessions remembered now (for the `verify_cache_entries` gauge; moka counts
    /// after its pending maintenance, which this runs).
    #[must_use]
    pub fn entries(&self) -> (u64, u64) {
        self.users.run_pending_tasks();
        self.sessions.run_pending_tasks();
        (self.users.entry_count(), self.sessions.entry_count())
    }

    /// The verdict on an access token that verified cryptographically: the user's status when
    /// the token is still good, `InvalidToken` when its user or session is gone, disabled or
    /// ended, or when it was issued before the user's `not_before`.
    ///
    /// # Errors
    /// `InvalidToken`; `Unavailable` or `RevocationsStale` when the answer cannot be vouched
    /// for.
    pub async fn check(
        &self,
        user_id: i64,
        session: Uuid,
        issued_at: i64,
    ) -> Result<Arc<UserStatus>, AuthError> {
        if !self.is_current() {
            return Err(AuthError::RevocationsStale);
        }
        let user = self.user(user_id).await?.ok_or(AuthError::InvalidToken)?;
        if !user.active || user.not_before.is_some_and(|nb| issued_at < nb) {
            return Err(AuthError::InvalidToken);
        }
        let status = self.session(session).await?;
        if !status.live || status.user_id != user_id {
            return Err(AuthError::InvalidToken);
        }
        Ok(user)
    }

    /// The user's status: cached, or loaded and cached. An id the database does not know is
    /// not remembered (only a holder of the signing key can present one, or a token of a user
    /// deleted before this process followed the events: the `UserDeleted` event itself
    /// remembers those), so no token can fill the cache with ids that do not exist.
    async fn user(&self, user_id: i64) -> Result<Option<Arc<UserStatus>>, StoreError> {
        if let Some(cached) = self.users.get(&user_id) {
            return Ok(cached);
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let Some(row) = self.store.find_user_by_id(user_id).await? else {
            return Ok(None);
        };
        let loaded = Some(Arc::new(UserStatus::from(&row)));
        if self.generation.load(Ordering::SeqCst) == generation {
            self.users.insert(user_id, loaded.clone());
        }
        Ok(loaded)
    }

    /// The session's status: cached, or loaded and cached; as for users, a session the
    /// database does not know is answered "not live" without being remembered.
    async fn session(&self, session: Uuid) -> Result<SessionStatus, StoreError> {
        if let Some(cached) = self.sessions.get(&session) {
            return Ok(cached);
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let Some(row) = self.store.find_session(session).await? else {
            return Ok(SessionStatus {
                user_id: 0,
                live: false,
            });
        };
        let loaded = SessionStatus {
            user_id: row.user_id,
            live: row.revoked_at.is_none(),
        };
        if self.generation.load(Ordering::SeqCst) == generation {
            self.sessions.insert(session, loaded);
        }
        Ok(loaded)
    }
}

/// Reads events whenever woken (a `NOTIFY`) and every [`POLL_EVERY`], until the view is gone.
/// An outage is logged once when it starts and once when it ends.
async fn follow_loop(view: Weak<Revocations>, signal: Option<Arc<tokio::sync::Notify>>) {
    let mut failing_since: Option<Instant> = None;
    loop {
        let woken = async {
            match &signal {
                Some(signal) => signal.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = woken => {}
            () = tokio::time::sleep(POLL_EVERY) => {}
        }
        let Some(view) = view.upgrade() else {
            return;
        };
        match view.poll().await {
            Ok(()) => {
                if let Some(since) = failing_since.take() {
                    tracing::info!(
                        outage_ms = u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX),
                        "revocation events readable again; verification trusted again"
                    );
                }
            }
            Err(err) => {
                if failing_since.is_none() {
                    failing_since = Some(Instant::now());
                    tracing::warn!(
                        error = %crate::error_chain::error_chain(&err),
                        "cannot read revocation events; /auth/verify answers 503 once they are {} s behind",
                        STALE_AFTER.as_secs()
                    );
                }
            }
        }
    }
}
