//! Wake-ups by topic for held queries.
//!
//! A held blocking query waits on the topics its answer depends on, not on
//! every catalog change: with 100,000 queries held, one change to a
//! service wakes the queries on that service and no other task. Each
//! watched topic has one [`watch`] sender, shared by every query on it; a
//! change wakes the senders of the topics it marked (the index marks every
//! topic whose answer may have changed, conservatively). A topic removed
//! elsewhere moves the index of every topic without a stamp (the floor)
//! but changes none of their answers, so it wakes nobody else; a held
//! query that times out answers with its topics' current index.
//!
//! KV keys wake their exact key and every watched prefix of it, found in
//! one pass over the key's bytes (FNV-1a of each prefix, looked up as it
//! grows, up to the longest watched prefix). A batch whose keys are not
//! known (a full reload) wakes every KV watcher.
//!
//! The senders to wake are collected under the index lock and woken after
//! it is released. Senders nobody watches any longer are swept when the
//! entries have doubled since the last sweep (and at 1,024 entries at the
//! earliest), so entries are bounded by twice the largest number watched
//! at a sweep, and by the connections that can hold queries.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::watch;

use crate::index::Topic;

type Sender = Arc<watch::Sender<()>>;

/// Watched topics and their senders.
#[derive(Default)]
pub(crate) struct Wakers {
    /// Catalog topics (folded).
    topics: HashMap<Topic, Sender>,
    /// Exact KV keys.
    keys: HashMap<String, Sender>,
    /// KV prefixes by the FNV-1a hash of their bytes (collisions share a
    /// bucket and are told apart by comparing the prefix).
    prefixes: HashMap<u64, Vec<(String, Sender)>>,
    /// Bytes of the longest watched prefix: a key is hashed no further.
    longest_prefix: usize,
    /// Woken by every change (queries with no topics).
    any: Option<Sender>,
    /// Entries after the last sweep.
    swept: usize,
}

/// Fewest entries before the first sweep.
const SWEEP_FLOOR: usize = 1024;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(FNV_PRIME)
    })
}

fn new_sender() -> Sender {
    Arc::new(watch::channel(()).0)
}

impl Wakers {
    /// A receiver woken by changes to `topic` (already folded).
    pub(crate) fn receiver(&mut self, topic: Topic) -> watch::Receiver<()> {
        if self.len() >= 2 * self.swept.max(SWEEP_FLOOR) {
            self.sweep();
        }
        match topic {
            Topic::KvKey(k) => self.keys.entry(k).or_insert_with(new_sender).subscribe(),
            Topic::KvPrefix(p) => {
                self.longest_prefix = self.longest_prefix.max(p.len());
                let bucket = self.prefixes.entry(fnv(p.as_bytes())).or_default();
                if let Some((_, s)) = bucket.iter().find(|(q, _)| *q == p) {
                    return s.subscribe();
                }
                let s = new_sender();
                let rx = s.subscribe();
                bucket.push((p, s));
                rx
            }
            t => self.topics.entry(t).or_insert_with(new_sender).subscribe(),
        }
    }

    /// Drops the senders nobody watches any longer.
    fn sweep(&mut self) {
        self.topics.retain(|_, s| s.receiver_count() > 0);
        self.keys.retain(|_, s| s.receiver_count() > 0);
        self.prefixes.retain(|_, bucket| {
            bucket.retain(|(_, s)| s.receiver_count() > 0);
            !bucket.is_empty()
        });
        self.longest_prefix = self
            .prefixes
            .values()
            .flatten()
            .map(|(p, _)| p.len())
            .max()
            .unwrap_or(0);
        self.swept = self.len();
    }

    /// A receiver woken by every change.
    pub(crate) fn any(&mut self) -> watch::Receiver<()> {
        self.any.get_or_insert_with(new_sender).subscribe()
    }

    /// The senders to wake for a change to the catalog topics `dirty`
    /// (folded) and to the KV keys `kv_keys` (`None`: any key may have
    /// changed); sent after the index lock is released.
    pub(crate) fn collect(&self, dirty: &[Topic], kv_keys: Option<&[String]>) -> Vec<Sender> {
        let mut out: Vec<Sender> = dirty
            .iter()
            .filter_map(|t| self.topics.get(t).cloned())
            .collect();
        match kv_keys {
            Some(keys) => keys.iter().for_each(|k| self.collect_key(k, &mut out)),
            None => {
                out.extend(self.keys.values().cloned());
                out.extend(self.prefixes.values().flatten().map(|(_, s)| s.clone()));
            }
        }
        out.extend(self.any.iter().cloned());
        out
    }

    /// The senders of KV key `key`: its exact key and every watched prefix
    /// of it. One pass over the key's bytes (up to the longest watched
    /// prefix), hashing every prefix as it goes.
    fn collect_key(&self, key: &str, out: &mut Vec<Sender>) {
        out.extend(self.keys.get(key).cloned());
        if self.prefixes.is_empty() {
            return;
        }
        let bytes = key.as_bytes();
        let mut h = FNV_OFFSET;
        for end in 0..=bytes.len().min(self.longest_prefix) {
            if end > 0 {
                h = (h ^ u64::from(bytes[end - 1])).wrapping_mul(FNV_PRIME);
            }
            if let Some(bucket) = self.prefixes.get(&h) {
                let matching = bucket
                    .iter()
                    .filter(|(p, _)| bytes.starts_with(p.as_bytes()));
                out.extend(matching.map(|(_, s)| s.clone()));
            }
        }
    }

    /// Entries held, watched or not yet swept (for metrics and tests).
    pub(crate) fn len(&self) -> usize {
        self.topics.len()
            + self.keys.len()
            + self.prefixes.values().map(Vec::len).sum::<usize>()
            + usize::from(self.any.is_some())
    }
}

/// Wakes `senders` (after the index lock is released: a woken query reads
/// the index at once).
pub(crate) fn send(senders: Vec<Sender>) {
    for s in senders {
        s.send_replace(());
    }
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
                let r = futures::future::select_all(waits).await.0;
                // One change may fire several of them: answer once (the
                // caller reads the index after this returns).
                many.iter_mut().for_each(|r| {
                    r.borrow_and_update();
                });
                r
            }
        };
        r.map_err(|_| Closed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn woken(rx: &mut watch::Receiver<()>) -> bool {
        rx.has_changed().unwrap_or(false) && {
            rx.borrow_and_update();
            true
        }
    }

    #[test]
    fn keys_wake_their_exact_watchers_and_every_prefix_of_them() {
        let mut w = Wakers::default();
        // More prefixes than the key has bytes, multibyte and empty ones.
        let mut prefixes: Vec<String> = (0..200).map(|i| format!("zz/{i}/")).collect();
        prefixes.extend(["", "a", "a/é", "a/é/", "a/éx", "b"].map(String::from));
        let mut rxs: Vec<(String, watch::Receiver<()>)> = prefixes
            .iter()
            .map(|p| (p.clone(), w.receiver(Topic::KvPrefix(p.clone()))))
            .collect();
        let mut exact = w.receiver(Topic::KvKey("a/é/k".into()));
        let mut other = w.receiver(Topic::KvKey("a/é/k2".into()));
        send(w.collect(&[], Some(&["a/é/k".to_string()])));
        for (p, rx) in &mut rxs {
            assert_eq!(woken(rx), "a/é/k".starts_with(p.as_str()), "prefix {p:?}");
        }
        assert!(woken(&mut exact) && !woken(&mut other));
        // Unknown keys (a reload) wake every KV watcher, and no catalog one.
        let mut service = w.receiver(Topic::Service("web".into()));
        send(w.collect(&[], None));
        assert!(rxs.iter_mut().all(|(_, rx)| woken(rx)));
        assert!(woken(&mut other) && !woken(&mut service));
        send(w.collect(&[Topic::Service("web".into())], Some(&[])));
        assert!(woken(&mut service) && !woken(&mut other));
    }

    #[test]
    fn unwatched_senders_are_swept_and_watched_ones_kept() {
        let mut w = Wakers::default();
        let mut kept = w.receiver(Topic::KvPrefix("keep/".into()));
        for round in 0..10 {
            let held: Vec<_> = (0..3000)
                .map(|i| w.receiver(Topic::Service(format!("s{round}-{i}"))))
                .collect();
            assert!(w.len() <= 2 * 3001 + SWEEP_FLOOR, "{} entries", w.len());
            drop(held);
        }
        assert!(w.len() <= 2 * 3001 + SWEEP_FLOOR);
        send(w.collect(&[], Some(&["keep/x".to_string()])));
        assert!(woken(&mut kept), "a watched prefix survived the sweeps");
    }
}
