//! Changes and changesets: the unit the store produces for local writes, serves
//! to peers and applies from them.
//!
//! A [`Change`] is one cell write or one row-life event (a "sentinel": insert,
//! delete or re-insert, carrying the new causal length). A local write
//! transaction produces one version of its actor; its changes are numbered by
//! `seq` from 0. A [`Changeset`] carries some or all of one version's changes
//! and states the seq range it covers, so completeness is counted by ranges
//! rather than by the number of changes (changes overwritten later are simply
//! absent from a range served out of current state). [`Changeset::Cleared`]
//! says a range of versions has nothing left to send.

use std::ops::RangeInclusive;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::actor::ActorId;
use crate::value::SqlValue;

/// Target encoded size of one chunk of a large version.
pub const CHUNK_BYTES: usize = 8 * 1024;

/// One change to one row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub table: Arc<str>,
    /// Encoded primary key (see [`crate::encode_key`]).
    pub pk: Arc<[u8]>,
    /// The column written, or `None` for a row-life sentinel.
    pub column: Option<Arc<str>>,
    /// The value written (`Null` for sentinels).
    pub value: SqlValue,
    pub col_version: u64,
    /// Causal length of the row after this change: odd alive, even deleted.
    pub cl: u64,
    pub seq: u64,
}

impl Change {
    pub fn is_sentinel(&self) -> bool {
        self.column.is_none()
    }

    /// Rough encoded size, used for chunking.
    pub fn encoded_len(&self) -> usize {
        self.table.len()
            + self.pk.len()
            + self.column.as_ref().map_or(0, |c| c.len())
            + self.value.encoded_len()
            + 24
    }
}

/// Some or all of one version's changes, or a range of cleared versions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Changeset {
    Version {
        actor: ActorId,
        version: u64,
        /// The seqs this piece covers (all of them that still exist are included).
        seqs: RangeInclusive<u64>,
        /// The version's last seq: the version is complete once 0..=last_seq is held.
        last_seq: u64,
        /// Commit time at the origin, milliseconds since the epoch (informational).
        ts: u64,
        changes: Vec<Change>,
    },
    /// These versions of `actor` exist but all their changes were overwritten.
    Cleared {
        actor: ActorId,
        versions: RangeInclusive<u64>,
    },
}

impl Changeset {
    pub fn actor(&self) -> ActorId {
        match self {
            Changeset::Version { actor, .. } | Changeset::Cleared { actor, .. } => *actor,
        }
    }

    /// True when this piece alone covers its whole version.
    pub fn is_complete(&self) -> bool {
        match self {
            Changeset::Version { seqs, last_seq, .. } => {
                *seqs.start() == 0 && seqs.end() == last_seq
            }
            Changeset::Cleared { .. } => true,
        }
    }

    pub fn changes(&self) -> &[Change] {
        match self {
            Changeset::Version { changes, .. } => changes,
            Changeset::Cleared { .. } => &[],
        }
    }
}

/// Cuts one version's changes (sorted by seq, covering `0..=last_seq`) into
/// pieces of about [`CHUNK_BYTES`] each. The pieces' seq ranges partition
/// `0..=last_seq` with no gaps.
pub fn chunk_version(
    actor: ActorId,
    version: u64,
    last_seq: u64,
    ts: u64,
    changes: impl IntoIterator<Item = Change>,
    max_bytes: usize,
) -> Vec<Changeset> {
    let mut out = Vec::new();
    let mut start = 0u64;
    let mut cur: Vec<Change> = Vec::new();
    let mut size = 0usize;
    let mut changes = changes.into_iter().peekable();
    while let Some(ch) = changes.next() {
        size += ch.encoded_len();
        let seq = ch.seq;
        cur.push(ch);
        let last = changes.peek().is_none();
        if size >= max_bytes && !last {
            out.push(Changeset::Version {
                actor,
                version,
                seqs: start..=seq,
                last_seq,
                ts,
                changes: std::mem::take(&mut cur),
            });
            start = seq + 1;
            size = 0;
        }
    }
    out.push(Changeset::Version {
        actor,
        version,
        seqs: start..=last_seq,
        last_seq,
        ts,
        changes: cur,
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(seq: u64, len: usize) -> Change {
        Change {
            table: "t".into(),
            pk: vec![1].into(),
            column: Some("c".into()),
            value: SqlValue::Blob(vec![0; len]),
            col_version: 1,
            cl: 1,
            seq,
        }
    }

    #[test]
    fn chunks_partition_the_seq_range() {
        let changes: Vec<Change> = (0..100).map(|s| change(s, 500)).collect();
        let pieces = chunk_version(ActorId([1; 16]), 3, 99, 0, changes, CHUNK_BYTES);
        assert!(
            pieces.len() > 4,
            "expected several chunks, got {}",
            pieces.len()
        );
        let mut next = 0;
        for p in &pieces {
            let Changeset::Version { seqs, changes, .. } = p else {
                panic!()
            };
            assert_eq!(*seqs.start(), next);
            assert!(changes.iter().all(|c| seqs.contains(&c.seq)));
            let bytes: usize = changes.iter().map(Change::encoded_len).sum();
            assert!(bytes <= CHUNK_BYTES + 600, "chunk of {bytes} bytes");
            next = seqs.end() + 1;
        }
        assert_eq!(next, 100);
    }

    #[test]
    fn a_version_with_gaps_still_covers_its_whole_range() {
        // seqs 1 and 2 were overwritten: the single piece still covers 0..=3.
        let pieces = chunk_version(
            ActorId([1; 16]),
            1,
            3,
            0,
            vec![change(0, 1), change(3, 1)],
            CHUNK_BYTES,
        );
        assert_eq!(pieces.len(), 1);
        assert!(pieces[0].is_complete());
    }
}
