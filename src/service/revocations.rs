//! What `/auth/verify` must refuse besides a bad signature or expiry, served from memory.
//!
//! [`Revocations`] keeps two bounded caches (quick_cache): the status of users (active, email,
//! "tokens issued before T are dead") and of sessions (live or ended), each loaded from the
//! database on a miss. They are kept exact by invalidation, never by a time-to-live:
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
//! A change to a user (logout everywhere, disabled, deleted) ends all their sessions without
//! naming them. Rather than search the session cache for that user's entries, every entry
//! carries the generation it was loaded at and every user entry the generation it was loaded
//! at: a change forgets the user, the next check reloads them with a newer generation, and
//! their session entries older than that are read again. So a change costs the same whatever
//! the caches hold, and each cache is a plain bounded map.
//!
//! What each cache may hold is bounded in bytes, whatever the traffic: users by a weigher
//! ([`USER_BYTES`], an entry weighs [`USER_ENTRY_BYTES`] plus its email), sessions by count
//! ([`MAX_SESSIONS`] entries of [`SESSION_ENTRY_BYTES`] each). Only what the database knows is
//! remembered, and only when a token signed by our key names it.
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

/// What a user entry costs besides its email's bytes: the cache's slot and index, the shared
/// status and its email's allocation header (measured by a test below).
pub const USER_ENTRY_BYTES: u64 = 192;

/// The users' cache in bytes as weighed: about 100,000 users with addresses of 50 bytes.
pub const USER_BYTES: u64 = 24 * 1024 * 1024;

/// What a session entry costs: the cache's slot, its index and its share of the keys the
/// cache remembers after evicting them (fixed: no heap part; measured by a test below).
pub const SESSION_ENTRY_BYTES: u64 = 112;

/// Sessions remembered at most.
pub const MAX_SESSIONS: usize = 200_000;

/// Weighs a user entry: [`USER_ENTRY_BYTES`] plus the email.
#[derive(Debug, Clone, Copy)]
struct UserWeight;

impl quick_cache::Weighter<i64, Option<Arc<UserStatus>>> for UserWeight {
    fn weight(&self, _: &i64, status: &Option<Arc<UserStatus>>) -> u64 {
        let email = status.as_ref().map_or(0, |status| status.email.len());
        USER_ENTRY_BYTES + u64::try_from(email).unwrap_or(u64::MAX)
    }
}

/// What verification needs to know about a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserStatus {
    /// Whether the account may be used.
    pub active: bool,
    /// The stored email, returned by `/auth/verify`.
    pub email: Arc<str>,
    /// Tokens with `iat` (seconds) before this are dead.
    pub not_before: Option<i64>,
    /// The generation this was loaded at: session entries loaded before it are stale.
    sessions_from: u64,
}

impl UserStatus {
    fn new(user: &UserRow, generation: u64) -> Self {
        Self {
            active: user.is_active,
            email: Arc::from(user.email.as_str()),
            not_before: user.tokens_not_before.map(|t| t.timestamp()),
            sessions_from: generation,
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
    /// The generation this was loaded or recorded at.
    generation: u64,
}

fn users_cache() -> quick_cache::sync::Cache<i64, Option<Arc<UserStatus>>, UserWeight> {
    let typical = usize::try_from(USER_BYTES / (USER_ENTRY_BYTES + 50)).unwrap_or(usize::MAX);
    quick_cache::sync::Cache::with_weighter(typical, USER_BYTES, UserWeight)
}

fn sessions_cache() -> quick_cache::sync::Cache<Uuid, SessionStatus> {
    quick_cache::sync::Cache::new(MAX_SESSIONS)
}

/// The in-memory view of what is revoked; shared by every request of a process.
pub struct Revocations {
    store: Arc<dyn Store>,
    /// `None`: no such user.
    users: quick_cache::sync::Cache<i64, Option<Arc<UserStatus>>, UserWeight>,
    sessions: quick_cache::sync::Cache<Uuid, SessionStatus>,
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
            users: users_cache(),
            sessions: sessions_cache(),
            generation: AtomicU64::new(0),
            cursor: AtomicI64::new(0),
            synced_at_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            following: AtomicBool::new(false),
            applied: tokio::sync::watch::channel(0).0,
        }
    }

    /// Starts following the events table from its current end: the follower to run as a
    /// [`crate::background::Background`] task (it also stops when the view is dropped).
    ///
    /// # Errors
    /// `Unavailable` when the database does not answer.
    pub async fn follow(
        self: &Arc<Self>,
    ) -> Result<impl Future<Output = ()> + Send + 'static, StoreError> {
        let start = self.store.last_event_id().await?;
        self.cursor.store(start, Ordering::SeqCst);
        self.mark_synced();
        self.following.store(true, Ordering::SeqCst);
        let signal = self.store.event_signal();
        let view = Arc::downgrade(self);
        Ok(follow_loop(view, signal))
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
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.sessions.insert(
            session,
            SessionStatus {
                user_id,
                live: false,
                generation,
            },
        );
    }

    /// A user changed (logout-all, disabled, enabled, deleted): forget what is cached about
    /// them, so the next check reads the database, and their sessions with it (the reloaded
    /// user's generation is newer than every session entry of theirs).
    pub fn user_changed(&self, user_id: i64) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.users.remove(&user_id);
    }

    /// Users and sessions remembered now (for the `verify_cache_entries` gauge).
    #[must_use]
    pub fn entries(&self) -> (usize, usize) {
        (self.users.len(), self.sessions.len())
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
        let status = self.session(session, user.sessions_from).await?;
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
        let loaded = Some(Arc::new(UserStatus::new(&row, generation)));
        if self.generation.load(Ordering::SeqCst) == generation {
            self.users.insert(user_id, loaded.clone());
        }
        Ok(loaded)
    }

    /// The session's status: cached (when loaded no earlier than `fresh_from`, the generation
    /// its user was loaded at), or loaded and cached; as for users, a session the database does
    /// not know is answered "not live" without being remembered.
    async fn session(&self, session: Uuid, fresh_from: u64) -> Result<SessionStatus, StoreError> {
        if let Some(cached) = self.sessions.get(&session)
            && cached.generation >= fresh_from
        {
            return Ok(cached);
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let Some(row) = self.store.find_session(session).await? else {
            return Ok(SessionStatus {
                user_id: 0,
                live: false,
                generation,
            });
        };
        let loaded = SessionStatus {
            user_id: row.user_id,
            live: row.revoked_at.is_none(),
            generation,
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

/// The cache's own structures (slots, index, evicted keys' ghosts) per entry: what the
/// weighers' fixed parts must cover (the tests here and in the token cache's).
#[cfg(test)]
pub(crate) fn structure_bytes_per_entry<K, V, W, B, L>(
    cache: &quick_cache::sync::Cache<K, V, W, B, L>,
) -> usize
where
    K: Eq + std::hash::Hash,
    V: Clone,
    W: quick_cache::Weighter<K, V> + Clone,
    B: std::hash::BuildHasher + Clone,
    L: quick_cache::Lifecycle<K, V> + Clone,
{
    cache.memory_used().total() / cache.len().max(1)
}

#[cfg(test)]
mod tests {
    use quick_cache::Weighter as _;

    use super::*;

    #[test]
    fn a_full_session_cache_stays_within_its_stated_bytes() {
        let cache = sessions_cache();
        for n in 0..MAX_SESSIONS * 2 {
            let status = SessionStatus {
                user_id: i64::try_from(n).unwrap(),
                live: true,
                generation: 0,
            };
            cache.insert(Uuid::new_v4(), status);
        }
        assert!(cache.len() <= MAX_SESSIONS, "{} entries", cache.len());
        assert!(
            cache.len() >= MAX_SESSIONS * 9 / 10,
            "{} entries",
            cache.len()
        );
        let bytes = structure_bytes_per_entry(&cache);
        assert!(
            bytes <= usize::try_from(SESSION_ENTRY_BYTES).unwrap(),
            "{bytes} bytes per session entry"
        );
    }

    #[test]
    fn a_full_user_cache_stays_within_its_stated_bytes() {
        let cache = users_cache();
        let email_bytes = 254;
        let status = |email: &str| {
            Some(Arc::new(UserStatus {
                active: true,
                email: Arc::from(email),
                not_before: None,
                sessions_from: 0,
            }))
        };
        let email = "e".repeat(email_bytes);
        for id in 0..400_000 {
            cache.insert(id, status(&email));
        }
        let weighed = UserWeight.weight(&0, &status(&email));
        assert!(cache.weight() <= USER_BYTES);
        assert!(u64::try_from(cache.len()).unwrap() <= USER_BYTES / weighed);
        // What an entry holds: the cache's structures, the shared status and the email (each
        // allocation with its 16-byte header).
        let heap = size_of::<UserStatus>() + 16 + email_bytes + 16;
        let bytes = structure_bytes_per_entry(&cache) + heap;
        let weighed = usize::try_from(weighed).unwrap();
        assert!(
            bytes <= weighed,
            "{bytes} bytes per user entry, weighed as {weighed}"
        );
    }
}
