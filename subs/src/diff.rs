//! Old result rows vs new result rows, as change operations.
//!
//! Rows are identified by their key (the encoded primary keys of the rows
//! they were built from) and compared by their cells (JSON text). Pure: the
//! materialized view feeds it the rows it holds for the changed keys and the
//! rows the filtered query returned for the same keys.

use std::collections::HashMap;

/// A result row the view holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Held {
    pub rowid: i64,
    pub key: Vec<u8>,
    pub cells: String,
}

/// A result row just read.
#[derive(Debug, Clone, PartialEq)]
pub struct Fresh {
    pub key: Vec<u8>,
    /// The encoded primary key of each source row, in source order.
    pub source_keys: Vec<Vec<u8>>,
    pub cells: String,
}

/// What to do to the view (and announce).
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Insert(Fresh),
    Update {
        rowid: i64,
        cells: String,
    },
    /// Carries the last cells, as the delete event does.
    Delete {
        rowid: i64,
        cells: String,
    },
}

/// Turns `held` (every held row for the changed keys) and `fresh` (every
/// current row for the same keys) into operations: updates and inserts in
/// `fresh` order, then deletes in `held` order. Unchanged rows yield nothing.
pub fn diff(held: Vec<Held>, fresh: Vec<Fresh>) -> Vec<Op> {
    let mut by_key: HashMap<Vec<u8>, Held> =
        held.iter().cloned().map(|h| (h.key.clone(), h)).collect();
    let mut ops = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for f in fresh {
        if !seen.insert(f.key.clone()) {
            continue; // the same row reached through two changed sources
        }
        match by_key.remove(&f.key) {
            Some(h) if h.cells == f.cells => {}
            Some(h) => ops.push(Op::Update {
                rowid: h.rowid,
                cells: f.cells,
            }),
            None => ops.push(Op::Insert(f)),
        }
    }
    for h in held {
        if let Some(h) = by_key.remove(&h.key) {
            ops.push(Op::Delete {
                rowid: h.rowid,
                cells: h.cells,
            });
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(rowid: i64, key: &str, cells: &str) -> Held {
        Held {
            rowid,
            key: key.as_bytes().to_vec(),
            cells: cells.into(),
        }
    }

    fn fresh(key: &str, cells: &str) -> Fresh {
        Fresh {
            key: key.as_bytes().to_vec(),
            source_keys: vec![key.as_bytes().to_vec()],
            cells: cells.into(),
        }
    }

    #[test]
    fn inserts_updates_deletes_and_nothing_for_unchanged_rows() {
        let ops = diff(
            vec![
                held(1, "a", "[1]"),
                held(2, "b", "[2]"),
                held(3, "c", "[3]"),
            ],
            vec![
                fresh("a", "[1]"),
                fresh("b", "[20]"),
                fresh("d", "[4]"),
                fresh("d", "[4]"),
            ],
        );
        assert_eq!(
            ops,
            vec![
                Op::Update {
                    rowid: 2,
                    cells: "[20]".into()
                },
                Op::Insert(fresh("d", "[4]")),
                Op::Delete {
                    rowid: 3,
                    cells: "[3]".into()
                },
            ]
        );
        assert!(diff(vec![], vec![]).is_empty());
    }
}
