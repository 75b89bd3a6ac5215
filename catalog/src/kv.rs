//! Consul's KV store as the index holds it: every key of `consul_kv` with
//! its value, flags and this agent's create/modify indexes, plus what
//! blocking queries on a prefix need to know when to wake.
//!
//! **Prefix stamps.** A query on prefix `P` (`?recurse`, `?keys`) depends on
//! every key starting with `P`. Stamping every string prefix of every
//! changed key would cost a stamp per byte; instead each *directory* (the
//! empty prefix, and every prefix of a key ending in `/`, up to
//! [`MAX_DEPTH`] levels) carries the index of the latest change under it,
//! and a query on `P` reads the stamp of `P`'s directory (`P` cut after its
//! last `/`). That directory holds every key starting with `P`, so the stamp
//! moves whenever the answer can change (it may also move when it did not:
//! the blocking layer compares answers before waking a client). Directories
//! are kept by a 64-bit hash of their text with the number of keys under
//! them: memory is a few words per directory whatever its length, hashing a
//! key is one pass over its bytes, and a collision only merges two
//! directories' stamps (a spurious recomputation, never a missed wake-up).
//! A directory whose last key goes away is dropped and its stamp folded into
//! the index's floor, as for services.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hasher;
use std::ops::Bound;
use std::sync::Arc;

/// Directory levels tracked per key; deeper prefixes share the stamp of
/// their ancestor at this depth.
pub const MAX_DEPTH: usize = 32;

/// One key of the KV store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEntry {
    pub key: Arc<str>,
    pub value: bytes::Bytes,
    /// Consul's opaque flags (the column's INTEGER read as unsigned).
    pub flags: u64,
    /// This agent's index when it first saw the key (since it last
    /// appeared).
    pub create_index: u64,
    /// This agent's index when the key's value or flags last changed here.
    pub modify_index: u64,
}

/// A row of `consul_kv` as read from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvRow {
    pub key: String,
    pub value: bytes::Bytes,
    pub flags: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Dir {
    keys: usize,
    stamp: u64,
}

/// The keys, and the directories' key counts and stamps (module doc).
#[derive(Debug, Clone, Default)]
pub(crate) struct Kv {
    entries: BTreeMap<Arc<str>, Arc<KvEntry>>,
    dirs: HashMap<u64, Dir>,
    /// Value bytes held (for metrics).
    bytes: usize,
}

/// The hashes of `key`'s directories: the empty prefix, then each prefix
/// ending in `/` up to [`MAX_DEPTH`] levels.
fn dir_hashes(key: &str) -> impl Iterator<Item = u64> + '_ {
    let mut h = fnv::FnvHasher::default();
    let root = h.finish();
    let levels = key
        .as_bytes()
        .split_inclusive(|b| *b == b'/')
        .filter(|seg| seg.last() == Some(&b'/'))
        .take(MAX_DEPTH)
        .map(move |seg| {
            h.write(seg);
            h.finish()
        });
    std::iter::once(root).chain(levels)
}

/// Consul's key rules (what `/v1/kv` refuses with a 400: a leading `/`,
/// leading or trailing whitespace, `../`, `.` or `..` segments, NUL);
/// `Err` is the 400's text.
pub fn validate_key(key: &str) -> Result<(), String> {
    if key.starts_with('/') {
        return Err("Invalid key: a key must not begin with a '/'".into());
    }
    if key.starts_with(char::is_whitespace) || key.ends_with(char::is_whitespace) {
        return Err("Invalid key: a key must not begin or end with whitespace".into());
    }
    if key.contains("../") || key.contains("..\\") {
        return Err("Invalid key: the key contains a path traversal sequence".into());
    }
    // `a/..`, `a/.` and `./b`: HTTP clients (and Go's router) resolve such
    // segments before sending, so the key would not be the one addressed
    // (`DELETE a/..?recurse` would arrive as a delete of everything).
    if key.split('/').any(|seg| seg == "." || seg == "..") {
        return Err("Invalid key: a key must not have a \".\" or \"..\" path segment".into());
    }
    if key.contains('\0') {
        return Err("Invalid key: the key contains a NUL character".into());
    }
    Ok(())
}

/// The hash of the directory holding every key that starts with `prefix`.
fn prefix_dir(prefix: &str) -> u64 {
    dir_hashes(prefix).last().unwrap_or_default()
}

impl Kv {
    pub(crate) fn get(&self, key: &str) -> Option<&Arc<KvEntry>> {
        self.entries.get(key)
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn value_bytes(&self) -> usize {
        self.bytes
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = &Arc<str>> {
        self.entries.keys()
    }

    /// Whether some key lies under the directory `hash` (a stamp for it is
    /// kept only then).
    pub(crate) fn has_dir(&self, hash: u64) -> bool {
        self.dirs.contains_key(&hash)
    }

    pub(crate) fn stamp_dir(&mut self, hash: u64, value: u64) {
        if let Some(d) = self.dirs.get_mut(&hash) {
            d.stamp = value;
        }
    }

    /// The stamp of the directory holding `prefix`'s keys, `None` when no
    /// key is under it.
    pub(crate) fn prefix_stamp(&self, prefix: &str) -> Option<u64> {
        self.dirs.get(&prefix_dir(prefix)).map(|d| d.stamp)
    }

    /// Sets a key (`create`/`modify`: the index values to give it when it
    /// is new / changed); returns the hashes of the directories the change
    /// touches, or nothing when the key already held exactly this value and
    /// these flags.
    pub(crate) fn upsert(&mut self, row: KvRow, pending: u64) -> Vec<u64> {
        let create = match self.entries.get(row.key.as_str()) {
            Some(old) if old.value == row.value && old.flags == row.flags => return Vec::new(),
            Some(old) => {
                self.bytes -= old.value.len();
                old.create_index
            }
            None => {
                for h in dir_hashes(&row.key) {
                    self.dirs.entry(h).or_default().keys += 1;
                }
                pending
            }
        };
        let touched: Vec<u64> = dir_hashes(&row.key).collect();
        let key: Arc<str> = Arc::from(row.key);
        self.bytes += row.value.len();
        self.entries.insert(
            key.clone(),
            Arc::new(KvEntry {
                key,
                value: row.value,
                flags: row.flags,
                create_index: create,
                modify_index: pending,
            }),
        );
        touched
    }

    /// Removes a key; returns the hashes of its directories (empty when it
    /// was not there). Directories left without keys are dropped.
    pub(crate) fn remove(&mut self, key: &str) -> Vec<u64> {
        let Some(old) = self.entries.remove(key) else {
            return Vec::new();
        };
        self.bytes -= old.value.len();
        let touched: Vec<u64> = dir_hashes(key).collect();
        for h in &touched {
            if let Some(d) = self.dirs.get_mut(h) {
                d.keys = d.keys.saturating_sub(1);
                if d.keys == 0 {
                    self.dirs.remove(h);
                }
            }
        }
        touched
    }

    /// Entries whose key starts with `prefix`, in key order.
    pub(crate) fn under<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = &'a Arc<KvEntry>> + 'a {
        self.entries
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(move |(k, _)| k.starts_with(prefix))
            .map(|(_, e)| e)
    }

    /// Consul's `?keys&separator=`: the keys starting with `prefix`, those
    /// with `separator` after the prefix rolled up to the folder ending at
    /// its first occurrence (each folder once). Folders are skipped over
    /// with one tree search each, so a folder of 100,000 keys costs one
    /// step, not 100,000.
    pub(crate) fn list_keys(&self, prefix: &str, separator: &str) -> Vec<Arc<str>> {
        let mut out: Vec<Arc<str>> = Vec::new();
        let mut from: Bound<String> = Bound::Included(prefix.to_string());
        loop {
            let bound = (from.as_ref().map(String::as_str), Bound::Unbounded);
            let mut next = None;
            for (k, _) in self.entries.range::<str, _>(bound) {
                if !k.starts_with(prefix) {
                    break;
                }
                let rest = &k[prefix.len()..];
                match (!separator.is_empty())
                    .then(|| rest.find(separator))
                    .flatten()
                {
                    Some(at) => {
                        let folder = &k[..prefix.len() + at + separator.len()];
                        out.push(Arc::from(folder));
                        next = Some(folder.to_string());
                        break;
                    }
                    None => out.push(k.clone()),
                }
            }
            match next {
                // Past every key starting with the folder.
                Some(folder) => match successor(&folder) {
                    Some(s) => from = Bound::Included(s),
                    None => break,
                },
                None => break,
            }
        }
        out
    }
}

/// The least string above every string starting with `prefix` (`None`:
/// there is none, `prefix` is empty or all `char::MAX`). UTF-8 byte order
/// is code point order, so incrementing the last code point works.
pub fn successor(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(c) = chars.pop() {
        let next = match c as u32 + 1 {
            0xD800 => Some('\u{E000}'),
            n => char::from_u32(n),
        };
        if let Some(n) = next {
            chars.push(n);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(k: &str) -> KvRow {
        KvRow {
            key: k.into(),
            value: bytes::Bytes::from_static(b"v"),
            flags: 0,
        }
    }

    #[test]
    fn keys_roll_up_into_folders_once_each() {
        let mut kv = Kv::default();
        for k in [
            "a/b/1", "a/b/2", "a/b!", "a/c", "a/b0", "a/", "b", "a/d/e/f", "a/b/",
        ] {
            kv.upsert(row(k), 1);
        }
        let list = |p: &str, s: &str| -> Vec<String> {
            kv.list_keys(p, s).iter().map(|k| k.to_string()).collect()
        };
        assert_eq!(
            list("a/", "/"),
            ["a/", "a/b!", "a/b/", "a/b0", "a/c", "a/d/"]
        );
        assert_eq!(list("", "/"), ["a/", "b"]);
        assert_eq!(list("a/b", "/"), ["a/b!", "a/b/", "a/b0"]);
        assert_eq!(
            list("a/", ""),
            [
                "a/", "a/b!", "a/b/", "a/b/1", "a/b/2", "a/b0", "a/c", "a/d/e/f"
            ]
        );
        assert!(list("zzz", "/").is_empty());
    }

    #[test]
    fn directories_count_their_keys_and_go_with_the_last() {
        let mut kv = Kv::default();
        kv.upsert(row("x/y/z"), 1);
        kv.upsert(row("x/q"), 2);
        assert!(kv.prefix_stamp("x/y/").is_some());
        assert!(kv.prefix_stamp("x/y/zz").is_some());
        kv.remove("x/y/z");
        assert!(kv.prefix_stamp("x/y/").is_none());
        assert!(kv.prefix_stamp("x/").is_some());
        kv.remove("x/q");
        assert!(kv.prefix_stamp("").is_none());
        assert_eq!(kv.len(), 0);
        assert_eq!(kv.value_bytes(), 0);
    }

    #[test]
    fn a_deep_key_tracks_at_most_max_depth_levels() {
        let deep = "d/".repeat(10_000);
        assert_eq!(dir_hashes(&deep).count(), MAX_DEPTH + 1);
        // A prefix deeper than the tracked levels reads its deepest
        // tracked ancestor.
        let mut kv = Kv::default();
        kv.upsert(row(&deep), 1);
        assert!(kv.prefix_stamp(&deep[..deep.len() - 4]).is_some());
    }

    #[test]
    fn successors_bound_every_string_with_the_prefix() {
        assert_eq!(successor("ab").as_deref(), Some("ac"));
        assert_eq!(successor("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(successor("\u{D7FF}").as_deref(), Some("\u{E000}"));
        assert_eq!(successor(""), None);
        assert_eq!(successor("\u{10FFFF}"), None);
        let s = successor("a/é").unwrap();
        for k in ["a/é", "a/é/x", "a/é\u{10FFFF}zz"] {
            assert!(k < s.as_str());
        }
    }
}
