//! bcrypt hashing and verification, off the async workers.
//!
//! Every call runs on tokio's blocking pool inside the caller's span, behind a semaphore sized to
//! the cores so a login flood queues here instead of starving the blocking pool. Passwords over
//! 72 bytes are refused, never truncated. (bcrypt's own `non_truncating_*` functions also refuse
//! exactly 72 bytes, counting the NUL terminator; the contract allows 72, which bcrypt reads in
//! full, so the limit is checked here and the plain functions do the work.) A dummy hash of the configured cost stands in for
//! unknown users, so their 401 costs exactly one real verification too.

use std::sync::Arc;

use secrecy::{ExposeSecret as _, SecretString};
use tokio::sync::Semaphore;
use tracing::Instrument as _;

/// bcrypt reads at most 72 bytes; longer passwords are refused, never truncated.
pub const MAX_PASSWORD_BYTES: usize = 72;

/// Hashing and verification with the configured cost.
#[derive(Clone)]
pub struct Passwords {
    cost: u32,
    /// A hash of a random password at `cost`, verified against when the email is unknown.
    dummy_hash: Arc<str>,
    permits: Arc<Semaphore>,
}

impl Passwords {
    /// Prepares the hasher: computes the dummy hash once (one bcrypt at `cost`).
    ///
    /// # Errors
    /// When bcrypt refuses the cost or the blocking pool is gone.
    pub async fn new(cost: u32) -> anyhow::Result<Self> {
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        let permits = Arc::new(Semaphore::new(cores));
        let random = uuid::Uuid::new_v4().to_string();
        let dummy = tokio::task::spawn_blocking(move || bcrypt::hash(random, cost)).await??;
        Ok(Self {
            cost,
            dummy_hash: dummy.into(),
            permits,
        })
    }

    /// Hashes `password` at the configured cost.
    ///
    /// # Errors
    /// When the password is over 72 bytes (the policy refuses those first) or bcrypt fails.
    pub async fn hash(&self, password: SecretString) -> anyhow::Result<String> {
        let cost = self.cost;
        self.run(move || {
            let password = password.expose_secret();
            anyhow::ensure!(
                password.len() <= MAX_PASSWORD_BYTES,
                "password over 72 bytes"
            );
            Ok(bcrypt::hash(password, cost)?)
        })
        .await
    }

    /// Verifies `password` against `hash`, or against the dummy hash when there is no user, in
    /// which case the answer is always `false`. A mismatch is `Ok(false)`, never an error.
    ///
    /// # Errors
    /// Only when the blocking pool fails.
    pub async fn verify(&self, password: SecretString, hash: Option<&str>) -> anyhow::Result<bool> {
        let known = hash.is_some();
        let hash: Arc<str> = hash.map_or_else(|| Arc::clone(&self.dummy_hash), Arc::from);
        let matched = self
            .run(move || {
                // Over-long passwords and malformed hashes are simply not a match; the length
                // check is the same for known and unknown emails, so it reveals no account.
                let password = password.expose_secret();
                Ok(password.len() <= MAX_PASSWORD_BYTES
                    && bcrypt::verify(password, &hash).unwrap_or(false))
            })
            .await?;
        Ok(known && matched)
    }

    /// Whether `hash` was made with another cost than the configured one.
    #[must_use]
    pub fn needs_rehash(&self, hash: &str) -> bool {
        hash.split('$').nth(2).and_then(|c| c.parse::<u32>().ok()) != Some(self.cost)
    }

    async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let waiting = std::time::Instant::now();
        let permit = Arc::clone(&self.permits).acquire_owned().await?;
        metrics::histogram!("password_hash_wait_seconds").record(waiting.elapsed().as_secs_f64());
        let span = tracing::Span::current();
        // The permit and the in-flight gauge live inside the blocking job: if the request is
        // dropped (timeout, client gone), the hash still runs to its end and keeps its slot.
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let _in_flight = InFlight::start();
            span.in_scope(job)
        })
        .in_current_span()
        .await?
    }
}

/// `password_hash_in_flight`: bcrypt calls running now (decremented even if cancelled).
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
        let passwords = Passwords::new(4).await.unwrap();
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
        let passwords = Passwords::new(4).await.unwrap();
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
    async fn needs_rehash_reads_the_cost() {
        let passwords = Passwords::new(4).await.unwrap();
        assert!(!passwords.needs_rehash("$2b$04$abcdefghijklmnopqrstuv"));
        assert!(passwords.needs_rehash("$2b$12$abcdefghijklmnopqrstuv"));
    }
}
