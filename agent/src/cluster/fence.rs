//! The write fence: a node restarting with a history of its own (and peers
//! to ask) numbers local writes only after its first sync round has
//! answered, or after [`FENCE_TIMEOUT`] (see the module doc of `cluster`).

use super::*;

/// How long local writes wait at start-up for a first sync round before
/// they are accepted anyway (no peer answering).
pub(super) const FENCE_TIMEOUT: Duration = Duration::from_secs(10);

impl Inner {
    /// Opens the write fence (once); `why` goes to the log.
    pub(super) fn open_writes(&self, why: &str) {
        let opened = self
            .writes_open
            .send_if_modified(|open| !std::mem::replace(open, true));
        if opened {
            metrics::gauge!("corro_cluster_writes_fenced").set(0.0);
            tracing::info!(head = self.store.head(), "{why}; accepting local writes");
        }
    }
}

/// Opens the fence after [`FENCE_TIMEOUT`] if no sync round did.
pub(super) fn spawn_fence_timeout(inner: &Arc<Inner>) {
    let fence = inner.clone();
    tokio::spawn(async move {
        tokio::time::sleep(FENCE_TIMEOUT).await;
        if !*fence.writes_open.borrow() {
            tracing::warn!(
                "no peer answered a sync round in {FENCE_TIMEOUT:?}; writes lost from this node's WAL by an OS crash, if any, may have their version numbers reused"
            );
        }
        fence.open_writes("write fence timed out");
    });
}
