//! systemd's notify protocol (`Type=notify` units), without libsystemd.
//!
//! `READY=1` once every listener is up (peer API, DNS, Consul and public
//! API), `STOPPING=1` when shutdown starts, and, when the unit sets
//! `WatchdogSec=`, `WATCHDOG=1` at half that interval for as long as the
//! agent's runtime runs and its store answers a read. Outside systemd
//! (`NOTIFY_SOCKET` unset) every call does nothing.

use std::time::Duration;
use tokio_util::sync::CancellationToken;

use corro_store::Store;
use sd_notify::NotifyState;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "could not notify systemd");
    }
}

/// The agent is serving.
pub(crate) fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Shutdown has started.
pub(crate) fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("shutting down")]);
}

/// Pings systemd's watchdog while the store answers (when the unit has
/// `WatchdogSec=`): a hung store or runtime stops the pings and systemd
/// restarts the agent.
pub(crate) fn spawn_watchdog(store: Store, stop: CancellationToken) {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let every = (interval / 2).max(Duration::from_millis(10));
    tracing::info!(interval = ?interval, "systemd watchdog enabled");
    crate::tasks::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let s = store.clone();
            let alive = tokio::task::spawn_blocking(move || {
                s.reader()
                    .query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
                    .is_ok()
            })
            .await
            .unwrap_or(false);
            if alive {
                send(&[NotifyState::Watchdog]);
            } else {
                tracing::error!("the store does not answer; not pinging the systemd watchdog");
            }
        }
    });
}
