//! Client query answers, kept until the data next changes.
//!
//! An answer (a client read's encoded result, keyed by the request that
//! asked for it) is kept with the data generation it was read at
//! ([`crate::Store::data_generation`]: odd while a writer holds the
//! database, a new even number after every hold that committed) and served
//! only while that generation is current. The reader takes the generation before its
//! read and the store keeps the answer only if the generation was even
//! then and has not moved since, so a kept answer is exactly what reading
//! again would give: no transaction committed in between. Any write ends
//! every kept answer; nothing has to find and evict them, stale entries are
//! simply never served and age out.
//!
//! Only answers of pure statements are kept ([`crate::ReadConn::is_pure_as_run`]:
//! no `random()`, no clock, no pragma). The cache is bounded in bytes (keys,
//! answers and a per-entry overhead; answers over an eighth of the budget
//! are not kept) and, once full, scan resistant: a new entry then enters a
//! small probationary part and is promoted only when asked for again, so a
//! client sending one-off queries cannot push out the answers others keep
//! asking for.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

/// Per-entry bookkeeping counted on top of key and answer bytes.
const ENTRY_OVERHEAD: u64 = 96;

#[derive(Clone)]
struct Weigh;

impl quick_cache::Weighter<Bytes, (u64, Bytes)> for Weigh {
    fn weight(&self, key: &Bytes, val: &(u64, Bytes)) -> u64 {
        key.len() as u64 + val.1.len() as u64 + ENTRY_OVERHEAD
    }
}

/// Collects the keys an insert pushed out (quick_cache also reports the
/// value an insert replaces under the same key, which is no eviction).
#[derive(Clone, Default)]
struct Pushed;

impl quick_cache::Lifecycle<Bytes, (u64, Bytes)> for Pushed {
    type RequestState = Vec<Bytes>;
    fn begin_request(&self) -> Self::RequestState {
        Vec::new()
    }
    fn on_evict(&self, pushed: &mut Vec<Bytes>, key: Bytes, _: (u64, Bytes)) {
        pushed.push(key);
    }
}

type Inner =
    quick_cache::sync::Cache<Bytes, (u64, Bytes), Weigh, quick_cache::DefaultHashBuilder, Pushed>;

/// Shards of the cache: a few, so two readers rarely wait on one lock,
/// and each shard (which refuses entries over 90 % of its part of the
/// budget) still takes the largest answer kept, an eighth of the budget.
const SHARDS: usize = 4;

/// What the answer cache holds and did (for metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AnswerStats {
    /// Answers held (current or stale).
    pub entries: u64,
    /// Bytes held: keys, answers and per-entry overhead.
    pub bytes: u64,
    /// The bound on `bytes`.
    pub max_bytes: u64,
    /// Look-ups answered from the cache, since start.
    pub hits: u64,
    /// Look-ups that found nothing current, since start.
    pub misses: u64,
    /// Answers pushed out to stay within the bound, since start.
    pub evictions: u64,
}

pub(crate) struct AnswerCache {
    inner: Inner,
    max_bytes: u64,
    max_answer: usize,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
}

impl AnswerCache {
    /// A cache of at most `max_bytes`; `None` for 0 (no caching).
    pub(crate) fn new(max_bytes: u64) -> Option<AnswerCache> {
        if max_bytes == 0 {
            return None;
        }
        let items = (max_bytes / 512).clamp(16, 1 << 20) as usize;
        let options = quick_cache::OptionsBuilder::new()
            .estimated_items_capacity(items)
            .weight_capacity(max_bytes)
            .hot_allocation(0.9)
            .shards(SHARDS)
            .build();
        let inner = match options {
            Ok(o) => Inner::with_options(o, Weigh, Default::default(), Pushed),
            Err(_) => Inner::with(items, max_bytes, Weigh, Default::default(), Pushed),
        };
        Some(AnswerCache {
            inner,
            max_bytes,
            max_answer: (max_bytes / 8) as usize,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        })
    }

    /// The answer kept for `key` at `generation`, if any.
    pub(crate) fn get(&self, key: &[u8], generation: u64) -> Option<Bytes> {
        match self.inner.get(key) {
            Some((g, answer)) if g == generation && generation.is_multiple_of(2) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some(answer)
            }
            _ => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Keeps `answer` for `key` as read at `generation` (the caller checked
    /// that it is even and still current).
    pub(crate) fn put(&self, key: Bytes, generation: u64, answer: Bytes) {
        if key.len() + answer.len() > self.max_answer {
            return;
        }
        let pushed = self
            .inner
            .insert_with_lifecycle(key.clone(), (generation, answer));
        let evicted = pushed.iter().filter(|k| **k != key).count();
        self.evictions.fetch_add(evicted as u64, Ordering::Relaxed);
    }

    pub(crate) fn stats(&self) -> AnswerStats {
        AnswerStats {
            entries: self.inner.len() as u64,
            bytes: self.inner.weight(),
            max_bytes: self.max_bytes,
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_served_only_at_the_generation_it_was_read_at() {
        let c = AnswerCache::new(1 << 20).expect("enabled");
        c.put(Bytes::from_static(b"q"), 4, Bytes::from_static(b"a"));
        assert_eq!(c.get(b"q", 4).as_deref(), Some(&b"a"[..]));
        assert_eq!(c.get(b"q", 5), None, "a writer holds the database");
        assert_eq!(c.get(b"q", 6), None, "a write came in between");
        assert_eq!(c.get(b"other", 4), None);
        let s = c.stats();
        assert_eq!((s.hits, s.misses, s.entries), (1, 3, 1));
    }

    #[test]
    fn the_cache_stays_within_its_bytes_and_skips_large_answers() {
        let max = 256 * 1024;
        let c = AnswerCache::new(max).expect("enabled");
        for i in 0..10_000u32 {
            c.put(
                Bytes::from(format!("query {i}")),
                2,
                Bytes::from(vec![b'x'; 200]),
            );
        }
        let s = c.stats();
        assert!(s.bytes <= max, "{} bytes held, bound {max}", s.bytes);
        assert!(s.evictions > 0);
        // Keeping a key again (a newer read) replaces it: no eviction.
        let small = AnswerCache::new(max).expect("enabled");
        for g in 0..100 {
            small.put(Bytes::from_static(b"q"), 2 * g, Bytes::from_static(b"a"));
        }
        assert_eq!(small.stats().evictions, 0);
        assert_eq!(small.stats().entries, 1);
        c.put(
            Bytes::from_static(b"big"),
            2,
            Bytes::from(vec![0; (max / 8) as usize]),
        );
        assert_eq!(c.get(b"big", 2), None, "over an eighth of the budget");
        assert!(AnswerCache::new(0).is_none(), "0 turns caching off");
    }
}
