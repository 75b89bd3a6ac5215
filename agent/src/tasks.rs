//! The agent's long-lived tasks: one process-wide [`TaskTracker`], so
//! shutdown cancels everything with one [`CancellationToken`] (created in
//! `run.rs` and handed to every subsystem) and then waits, bounded, for the
//! tracked tasks to finish instead of dropping them mid-work.
//!
//! Tracked: servers and accept loops, the cluster's loops and sync rounds,
//! the catalog and bridge, template runners, subscriptions' dispatcher,
//! DNS workers, the watchdog and metrics sampler. Not tracked: SWIM's timer
//! tasks (they only sleep and then queue an input for a loop that has
//! already stopped).

use std::future::Future;
use std::sync::LazyLock;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

static TASKS: LazyLock<TaskTracker> = LazyLock::new(TaskTracker::new);

/// Spawns a tracked task.
pub(crate) fn spawn<F>(fut: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    TASKS.spawn(fut)
}

/// After the token was cancelled: waits up to `limit` for every tracked task
/// to end; how many were still running when the wait gave up.
pub(crate) async fn wait(limit: Duration) -> usize {
    TASKS.close();
    match tokio::time::timeout(limit, TASKS.wait()).await {
        Ok(()) => 0,
        Err(_) => TASKS.len(),
    }
}
