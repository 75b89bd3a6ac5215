//! Wake-ups by topic for held queries.
//!
//! A held blocking query waits on the topics its answer depends on, not on
//! every catalog change: with 100,000 queries held, one change to a
//! service wakes the queries on that service and no other task. Each
//! watched topic has one [`watch`] sender, shared by every query on it;
//! a change wakes the senders of its topics. Changes that move the floor
//! of unstamped topics (a topic removed: its service or node is gone) wake
//! every watcher of that kind, since any unstamped topic's index moved.
//!
//! KV keys wake their exact key and every watched prefix of it; a prefix
//! is matched by scanning the watched prefixes or by probing the key's own
//! prefixes, whichever is fewer steps.
//!
//! Senders nobody watches any longer are swept when the map has doubled
//! since the last sweep, so the map holds at most twice the watched topics.

use std::collections::HashMap;

use tokio::sync::watch;

use crate::index::Topic;

/// Watched topics and their senders.
#[derive(Default)]
pub(crate) struct Wakers {
    /// Catalog topics and exact KV keys.
    topics: HashMap<Topic, watch::Sender<()>>,
    /// KV prefixes (by the prefix).
    prefixes: HashMap<String, watch::Sender<()>>,
    /// Woken by every change (queries with no topics).
    any: Option<watch::Sender<()>>,
    /// Entries after the last sweep.
    swept: usize,
}

/// Fewest entries before the first sweep.
const SWEEP_FLOOR: usize = 1024;

impl Wakers {
    /// A receiver woken by changes to `topic` (already folded).
    pub(crate) fn receiver(&mut self, topic: Topic) -> watch::Receiver<()> {
        let entries = self.topics.len() + self.prefixes.len();
        if entries >= 2 * self.swept.max(SWEEP_FLOOR) {
            self.topics.retain(|_, s| s.receiver_count() > 0);
            self.prefixes.retain(|_, s| s.receiver_count() > 0);
            self.swept = self.topics.len() + self.prefixes.len();
        }
        let sender = match topic {
            Topic::KvPrefix(p) => self.prefixes.entry(p),
            t => return subscribe(self.topics.entry(t)),
        };
        subscribe(sender)
    }

    /// A receiver woken by every change.
    pub(crate) fn any(&mut self) -> watch::Receiver<()> {
        self.any
            .get_or_insert_with(|| watch::channel(()).0)
            .subscribe()
    }

    /// Wakes the watchers of every change.
    pub(crate) fn wake_any(&self) {
        if let Some(s) = &self.any {
            s.send_replace(());
        }
    }

    /// Wakes the watchers of `topic` (folded).
    pub(crate) fn wake(&self, topic: &Topic) {
        if let Some(s) = self.topics.get(topic) {
            s.send_replace(());
        }
    }

    /// Wakes the watchers of KV key `key`: its exact key and every watched
    /// prefix of it.
    pub(crate) fn wake_key(&self, key: &str) {
        if let Some(s) = self.topics.get(&Topic::KvKey(key.to_string())) {
            s.send_replace(());
        }
        if self.prefixes.is_empty() {
            return;
        }
        if self.prefixes.len() <= key.len() {
            for (p, s) in &self.prefixes {
                if key.starts_with(p.as_str()) {
                    s.send_replace(());
                }
            }
        } else {
            let ends = key.char_indices().map(|(i, _)| i).chain([key.len()]);
            for end in ends {
                if let Some(s) = self.prefixes.get(&key[..end]) {
                    s.send_replace(());
                }
            }
        }
    }

    /// Wakes every watcher of catalog topics (`kv` false) or of KV keys
    /// and prefixes (`kv` true).
    pub(crate) fn wake_all(&self, kv: bool) {
        for (t, s) in &self.topics {
            if t.is_kv() == kv {
                s.send_replace(());
            }
        }
        if kv {
            for s in self.prefixes.values() {
                s.send_replace(());
            }
        }
    }

    /// Watched entries (for metrics and tests).
    pub(crate) fn len(&self) -> usize {
        self.topics.len() + self.prefixes.len() + usize::from(self.any.is_some())
    }
}

fn subscribe<K>(
    e: std::collections::hash_map::Entry<'_, K, watch::Sender<()>>,
) -> watch::Receiver<()> {
    e.or_insert_with(|| watch::channel(()).0).subscribe()
}

/// What a held query waits on (see [`crate::Catalog::watch`]).
pub struct TopicWatch {
    receivers: Vec<watch::Receiver<()>>,
}

/// The catalog is gone (the agent is stopping).
#[derive(Debug, thiserror::Error)]
#[error("the catalog was dropped")]
pub struct Closed;

impl TopicWatch {
    pub(crate) fn new(receivers: Vec<watch::Receiver<()>>) -> TopicWatch {
        TopicWatch { receivers }
    }

    /// Waits until one of the watched topics may have changed since this
    /// watch was made or last returned. A change that lands between two
    /// calls is not lost.
    pub async fn changed(&mut self) -> Result<(), Closed> {
        let r = match self.receivers.as_mut_slice() {
            [] => return std::future::pending().await,
            [one] => one.changed().await,
            many => {
                let waits = many.iter_mut().map(|r| Box::pin(r.changed()));
                futures::future::select_all(waits).await.0
            }
        };
        r.map_err(|_| Closed)
    }
}
