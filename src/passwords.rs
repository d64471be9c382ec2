//! bcrypt hashing and verification (and the verification of hashes imported from another
//! system, see [`crate::password_formats`]), on a pool of their own below the async workers.
//!
//! Every hash and verification runs on a dedicated pool of one thread per core whose threads
//! run at the lowest scheduling priority (nice 19, set through `thread-priority`): while logins
//! saturate bcrypt, the async workers that answer `/auth/verify` and the probes still get the
//! CPU first. The wait is bounded: when more than `PASSWORD_HASH_MAX_QUEUE` requests already
//! wait for a hash, the next one is refused at once ([`PasswordError::Busy`], a 503 with
//! `Retry-After`) rather than answered with a 408 much later. A job whose request went away
//! before its turn is skipped.
//!
//! Passwords over 72 bytes are refused, never truncated. (bcrypt's own `non_truncating_*`
//! functions also refuse exactly 72 bytes, counting the NUL terminator; the contract allows 72,
//! which bcrypt reads in full, so the limit is checked here and the plain functions do the
//! work.) A dummy hash of the configured cost stands in for unknown users, so their 401 costs
//! exactly one real verification too; a user whose stored hash has a lower cost (made before
//! `BCRYPT_ROUNDS` went up) is padded, without holding a thread, to what a verification at the
//! configured cost takes, so the two cannot be told apart by timing.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use secrecy::{ExposeSecret as _, SecretString};

/// bcrypt reads at most 72 bytes; longer passwords are refused, never truncated.
pub const MAX_PASSWORD_BYTES: usize = 72;

/// Why a hash or verification did not happen.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// More than `PASSWORD_HASH_MAX_QUEUE` requests already wait for a hash.
    #[error("too many requests wait for a password hash")]
    Busy,
    /// bcrypt failed or the pool is gone.
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// Hashing and verification with the configured cost; cheap to clone.
#[derive(Clone)]
pub struct Passwords(Arc<Inner>);

struct Inner {
    cost: u32,
    /// A well-formed hash at `cost` that no password matches (see [`dummy_hash`]).
    dummy_hash: Arc<str>,
    pool: rayon::ThreadPool,
    /// Jobs submitted and not started yet.
    queued: AtomicUsize,
    max_queue: usize,
    /// A moving average of how long one verification at `cost` takes, in nanoseconds (0 until
    /// one has run).
    expected_nanos: AtomicU64,
}

impl Passwords {
    /// Prepares the hasher: a pool of one low-priority thread per core, and the dummy hash
    /// (made without hashing at `cost`, so start-up stays fast).
    ///
    /// # Errors
    /// When bcrypt refuses the cost or the pool's threads cannot start.
    pub fn new(cost: u32, max_queue: usize) -> anyhow::Result<Self> {
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(cores)
            .thread_name(|i| format!("bcrypt-{i}"))
            .start_handler(|_| {
                if let Err(err) = thread_priority::set_current_thread_priority(
                    thread_priority::ThreadPriority::Min,
                ) {
                    tracing::warn!(error = ?err, "cannot lower the priority of a bcrypt thread");
                }
            })
            .build()?;
        Ok(Self(Arc::new(Inner {
            cost,
            dummy_hash: dummy_hash(cost)?.into(),
            pool,
            queued: AtomicUsize::new(0),
            max_queue,
            expected_nanos: AtomicU64::new(0),
        })))
    }

    /// Hashes `password` at the configured cost.
    ///
    /// # Errors
    /// `Busy` when the queue is full; `Failed` when the password is over 72 bytes (the policy
    /// refuses those first) or bcrypt fails.
    pub async fn hash(&self, password: SecretString) -> Result<String, PasswordError> {
        let cost = self.0.cost;
        let (hash, _) = self
            .run(move || {
                let password = password.expose_secret();
                anyhow::ensure!(
                    password.len() <= MAX_PASSWORD_BYTES,
                    "password over 72 bytes"
                );
                Ok(bcrypt::hash(password, cost)?)
            })
            .await?;
        Ok(hash)
    }

    /// Verifies `password` against `hash`, or against the dummy hash when there is no user, in
    /// which case the answer is always `false`. A mismatch is `Ok(false)`, never an error.
    ///
    /// # Errors
    /// `Busy` when the queue is full; `Failed` when the pool is gone.
    pub async fn verify(
        &self,
        password: SecretString,
        hash: Option<&str>,
    ) -> Result<bool, PasswordError> {
        let known = hash.is_some();
        let hash: Arc<str> = hash.map_or_else(|| Arc::clone(&self.0.dummy_hash), Arc::from);
        let stored_cost = crate::password_formats::bcrypt_cost(&hash);
        let (matched, took) = self
            .run(move || {
                // Over-long passwords and malformed hashes are simply not a match; the length
                // check is the same for known and unknown emails, so it reveals no account.
                // A hash imported from another system is verified in its own format.
                let password = password.expose_secret();
                Ok(password.len() <= MAX_PASSWORD_BYTES
                    && crate::password_formats::verify(password, &hash))
            })
            .await?;
        match stored_cost {
            Some(cost) if cost == self.0.cost => self.observe(took),
            Some(cost) if cost < self.0.cost => self.pad(took, self.0.cost - cost).await,
            _ => {}
        }
        Ok(known && matched)
    }

    /// Whether the queue is full now: a request that would need a hash can be refused before
    /// it does any other work (a lockout attempt reserved for nothing, a database round trip).
    #[must_use]
    pub fn is_saturated(&self) -> bool {
        self.0.queued.load(Ordering::SeqCst) >= self.0.max_queue
    }

    /// Whether `hash` was made with another cost than the configured one, or is not bcrypt at
    /// all (imported from another system).
    #[must_use]
    pub fn needs_rehash(&self, hash: &str) -> bool {
        crate::password_formats::bcrypt_cost(hash) != Some(self.0.cost)
    }

    /// Folds one verification at the configured cost into the moving average.
    fn observe(&self, took: Duration) {
        let took = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let previous = self.0.expected_nanos.load(Ordering::Relaxed);
        let next = if previous == 0 {
            took
        } else {
            previous - previous / 8 + took / 8
        };
        self.0.expected_nanos.store(next, Ordering::Relaxed);
    }

    /// Sleeps (holding no thread) until a verification that took `took` at `rounds_below` the
    /// configured cost has lasted as long as one at the configured cost: the measured average
    /// when there is one, otherwise `took` scaled by bcrypt's doubling per round.
    async fn pad(&self, took: Duration, rounds_below: u32) {
        let measured = self.0.expected_nanos.load(Ordering::Relaxed);
        let expected = if measured > 0 {
            Duration::from_nanos(measured)
        } else {
            took.saturating_mul(1 << rounds_below.min(16))
        };
        tokio::time::sleep(expected.saturating_sub(took)).await;
    }

    /// Runs `job` on the bcrypt pool inside the caller's span; returns its result and how long
    /// the work itself took (the wait in the queue excluded).
    async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> Result<(T, Duration), PasswordError> {
        let inner = &self.0;
        if inner.queued.fetch_add(1, Ordering::SeqCst) >= inner.max_queue {
            inner.queued.fetch_sub(1, Ordering::SeqCst);
            metrics::counter!("password_hash_refused_total").increment(1);
            return Err(PasswordError::Busy);
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let span = tracing::Span::current();
        // For traces: the wait for a thread, then the work (in the caller's span), apart.
        let queued =
            tracing::info_span!(target: crate::telemetry::traces::SPANS, "password_hash.queue");
        let shared = Arc::clone(&self.0);
        let submitted = Instant::now();
        inner.pool.spawn(move || {
            drop(queued);
            shared.queued.fetch_sub(1, Ordering::SeqCst);
            metrics::histogram!("password_hash_wait_seconds")
                .record(submitted.elapsed().as_secs_f64());
            if tx.is_closed() {
                // The request gave up (timeout, client gone): nobody needs this hash.
                return;
            }
            let _in_flight = InFlight::start();
            let started = Instant::now();
            let result = span.in_scope(|| {
                tracing::info_span!(target: crate::telemetry::traces::SPANS, "password_hash")
                    .in_scope(job)
            });
            let _ = tx.send(result.map(|value| (value, started.elapsed())));
        });
        rx.await
            .map_err(|_| PasswordError::Failed(anyhow::anyhow!("the bcrypt pool is gone")))?
            .map_err(PasswordError::Failed)
    }
}

/// A hash no password matches, at `cost`, made without spending `cost`: a real hash of a
/// random password at the cheapest cost, relabelled. Verifying against it runs bcrypt at
/// `cost` in full (the cost is read from the hash) and then fails the comparison.
fn dummy_hash(cost: u32) -> anyhow::Result<String> {
    let cheap = bcrypt::hash(uuid::Uuid::new_v4().to_string(), 4)?;
    let rest = cheap
        .strip_prefix("$2b$04$")
        .ok_or_else(|| anyhow::anyhow!("unexpected bcrypt hash format"))?;
    Ok(format!("$2b${cost:02}${rest}"))
}

/// `password_hash_in_flight`: bcrypt calls running now.
struct InFlight;

impl InFlight {
    fn start() -> Self {
        metrics::gauge!("password_hash_in_flight").increment(1.0);
        Self
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!("password_hash_in_flight").decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_then_verify_and_the_dummy_never_matches() {
        let passwords = Passwords::new(4, 64).unwrap();
        let hash = passwords
            .hash(SecretString::from("SecurePass123"))
            .await
            .unwrap();
        assert!(hash.starts_with("$2b$04$"));
        assert!(
            passwords
                .verify(SecretString::from("SecurePass123"), Some(&hash))
                .await
                .unwrap()
        );
        assert!(
            !passwords
                .verify(SecretString::from("WrongPass123"), Some(&hash))
                .await
                .unwrap()
        );
        assert!(
            !passwords
                .verify(SecretString::from("SecurePass123"), None)
                .await
                .unwrap()
        );
        assert!(
            !passwords
                .verify(SecretString::from("x"), Some("not a hash"))
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn over_long_passwords_are_refused_not_truncated() {
        let passwords = Passwords::new(4, 64).unwrap();
        assert!(
            passwords
                .hash(SecretString::from("a".repeat(73)))
                .await
                .is_err()
        );
        let hash = passwords
            .hash(SecretString::from("a".repeat(72)))
            .await
            .unwrap();
        let longer = format!("{}b", "a".repeat(72));
        assert!(
            !passwords
                .verify(SecretString::from(longer), Some(&hash))
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn the_dummy_hash_costs_the_configured_rounds_and_never_matches() {
        let passwords = Passwords::new(6, 64).unwrap();
        assert!(passwords.0.dummy_hash.starts_with("$2b$06$"));
        assert_eq!(passwords.0.dummy_hash.len(), 60);
        for guess in ["SecurePass123", ""] {
            assert!(
                !passwords
                    .verify(SecretString::from(guess), None)
                    .await
                    .unwrap()
            );
        }
    }

    #[tokio::test]
    async fn past_the_queue_bound_requests_are_refused_at_once() {
        let passwords = Passwords::new(4, 0).unwrap();
        assert!(matches!(
            passwords.hash(SecretString::from("SecurePass123")).await,
            Err(PasswordError::Busy)
        ));
    }

    #[tokio::test]
    async fn needs_rehash_reads_the_cost() {
        let passwords = Passwords::new(4, 64).unwrap();
        assert!(!passwords.needs_rehash("$2b$04$abcdefghijklmnopqrstuv"));
        assert!(passwords.needs_rehash("$2b$12$abcdefghijklmnopqrstuv"));
    }
}
