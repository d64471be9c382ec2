//! The process's background tasks, started in one place ([`crate::serve`]) and stopped together:
//! the revocation follower, the purge, the outbox worker, the metrics upkeep, the metrics
//! listener and the `JWT_ACCEPT_HS256` reminder. Shutdown cancels them all and waits for each
//! to end, so none is cut in the middle of a step that must finish (the outbox finishes the
//! message it is sending, then stops). The per-IP limiter's sweep of idle buckets is the
//! limiter's own: it ends when the limiter (the router) is dropped.

use std::future::Future;

use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument as _;

/// The running background tasks.
#[derive(Debug, Default)]
pub struct Background {
    tasks: TaskTracker,
    stop: CancellationToken,
}

impl Background {
    /// No task yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `task` until it ends or shutdown, whichever comes first; at shutdown it is
    /// dropped at its next await (for tasks whose every step may be cut: timers, followers).
    pub fn spawn(&self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        let stop = self.stop.clone();
        self.tasks.spawn(
            async move {
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = task => {}
                }
            }
            .instrument(tracing::info_span!("background", task = name)),
        );
    }

    /// Runs the task `start` makes from the shutdown signal, which it watches itself: for a
    /// task with a step that must finish once begun.
    pub fn spawn_with<F>(&self, name: &'static str, start: impl FnOnce(CancellationToken) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(
            start(self.stop.clone()).instrument(tracing::info_span!("background", task = name)),
        );
    }

    /// Signals shutdown to every task and waits until each has ended.
    pub async fn stop(self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}
