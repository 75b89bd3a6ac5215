//! What each running template last did, for the web UI's Templates page:
//! a small board the runner updates after every render attempt, with a
//! generation counter readers can wait on.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tokio::sync::watch;

/// One template's state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TemplateStatus {
    pub source: String,
    pub destination: String,
    /// Unix time (ms) of the last successful render, if any.
    pub last_render_ms: Option<u64>,
    /// Unix time (ms) of the last render attempt, if any.
    pub last_attempt_ms: Option<u64>,
    /// Why the last attempt failed (`None` after a success).
    pub last_error: Option<String>,
    /// The KV key the last attempt waits for (`key()` on a missing key).
    pub waiting_for: Option<String>,
    /// Successful renders since start.
    pub renders: u64,
}

/// The templates of one agent (cheap to clone).
#[derive(Clone)]
pub struct StatusBoard {
    inner: Arc<Mutex<Vec<TemplateStatus>>>,
    generation: Arc<watch::Sender<u64>>,
}

impl Default for StatusBoard {
    fn default() -> Self {
        StatusBoard {
            inner: Arc::default(),
            generation: Arc::new(watch::channel(0).0),
        }
    }
}

/// How a render attempt ended.
pub(crate) enum Outcome<'a> {
    Rendered,
    Failed(&'a str),
    Waiting(&'a str),
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl StatusBoard {
    /// Every template, in the order they were started.
    pub fn list(&self) -> Vec<TemplateStatus> {
        self.inner.lock().clone()
    }

    /// A receiver that changes after every update.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Adds a template; returns its slot.
    pub(crate) fn add(&self, source: String, destination: String) -> usize {
        let mut v = self.inner.lock();
        v.push(TemplateStatus {
            source,
            destination,
            ..TemplateStatus::default()
        });
        let slot = v.len() - 1;
        drop(v);
        self.bump();
        slot
    }

    pub(crate) fn record(&self, slot: usize, outcome: Outcome<'_>) {
        let now = now_ms();
        {
            let mut v = self.inner.lock();
            let Some(s) = v.get_mut(slot) else {
                return;
            };
            s.last_attempt_ms = Some(now);
            match outcome {
                Outcome::Rendered => {
                    s.last_render_ms = Some(now);
                    s.last_error = None;
                    s.waiting_for = None;
                    s.renders += 1;
                }
                Outcome::Failed(e) => {
                    s.last_error = Some(e.to_string());
                    s.waiting_for = None;
                }
                Outcome::Waiting(k) => {
                    s.last_error = None;
                    s.waiting_for = Some(k.to_string());
                }
            }
        }
        self.bump();
    }

    fn bump(&self) {
        self.generation.send_modify(|g| *g += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_the_last_outcome_and_bumps_the_generation() {
        let b = StatusBoard::default();
        let rx = b.subscribe();
        let s = b.add("a.rhai".into(), "a.txt".into());
        b.record(s, Outcome::Failed("boom"));
        assert_eq!(b.list()[0].last_error.as_deref(), Some("boom"));
        b.record(s, Outcome::Rendered);
        let t = &b.list()[0];
        assert_eq!((t.renders, t.last_error.clone()), (1, None));
        assert!(t.last_render_ms.is_some());
        b.record(s, Outcome::Waiting("app/max"));
        assert_eq!(b.list()[0].waiting_for.as_deref(), Some("app/max"));
        assert_eq!(b.list()[0].renders, 1);
        assert_eq!(*rx.borrow(), 4);
        b.record(99, Outcome::Rendered);
    }
}
