//! Invariant checks between data, clocks, the version index and bookkeeping.
//!
//! Used by tests after crashes and by operators (through the agent) to confirm
//! that a database is consistent: a data row exists exactly when its clock's
//! causal length is odd, the version index lists exactly the origins the
//! clocks reference, and no clock references a version the bookkeeping does
//! not hold.

use std::collections::BTreeSet;

use rusqlite::OptionalExtension;

use crate::bookkeeping::ActorBooks;
use crate::clock::RowClock;
use crate::error::StoreError;
use crate::store::{Store, load_books};
use crate::value::decode_key;
use crate::versions::version_rows;

impl Store {
    /// Checks every invariant; the error names the first one broken.
    pub fn verify(&self) -> Result<(), StoreError> {
        let conn = self.reader();
        let tx = conn.unchecked_transaction()?;
        let bad = |m: String| Err(StoreError::Integrity(m));
        let catalog = self.inner.catalog.read().clone();
        let books = load_books(&tx, self.inner.self_idx)?;
        let mut referenced: BTreeSet<(u32, u64, u32, Vec<u8>)> = BTreeSet::new();
        for meta in catalog.tables.values() {
            let mut stmt = tx.prepare(&meta.sql_all_clocks)?;
            let clocks: Vec<(Vec<u8>, u64, Vec<u8>)> = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let mut alive = 0u64;
            for (key, cl, blob) in clocks {
                let clock = RowClock::decode(&blob)?;
                let pk = decode_key(&key)?;
                let mut q = tx.prepare_cached(&meta.sql_select_values)?;
                for (i, v) in pk.iter().enumerate() {
                    q.raw_bind_parameter(i + 1, v)?;
                }
                let exists = q.raw_query().next()?.is_some();
                if exists != (cl % 2 == 1) {
                    return bad(format!(
                        "{}: row {pk:?} exists={exists} but cl={cl}",
                        meta.name
                    ));
                }
                alive += u64::from(exists);
                for (a, v) in clock.origins() {
                    let held = books.get(&a).is_some_and(|b: &ActorBooks| b.holds(v));
                    if !held {
                        return bad(format!(
                            "{}: row {pk:?} references version {v} of actor #{a} which is not held",
                            meta.name
                        ));
                    }
                    referenced.insert((a, v, meta.id, key.clone()));
                }
            }
            let rows: u64 =
                tx.query_row(&format!("SELECT count(*) FROM {}", meta.q_name), [], |r| {
                    r.get(0)
                })?;
            if rows != alive {
                return bad(format!(
                    "{}: {rows} rows but {alive} live clocks",
                    meta.name
                ));
            }
        }
        // Every referenced version lists the row, and its live count is exact.
        let mut live: std::collections::BTreeMap<(u32, u64), i64> = Default::default();
        for (a, v, _, _) in &referenced {
            *live.entry((*a, *v)).or_default() += 1;
        }
        let mut stmt = tx.prepare("SELECT actor, version, live FROM __corro_versions")?;
        let entries: Vec<(u32, u64, i64)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (a, v, n) in entries {
            let want = live.remove(&(a, v)).unwrap_or(0);
            if n != want {
                return bad(format!(
                    "version {v} of actor #{a}: index says {n} live rows, clocks say {want}"
                ));
            }
            if want > 0 {
                let rows: BTreeSet<(u32, Vec<u8>)> = version_rows(&tx, a, v)?
                    .into_iter()
                    .map(|(t, k)| (t, k.to_vec()))
                    .collect();
                for (ra, rv, t, k) in referenced.range((a, v, 0, Vec::new())..) {
                    if (*ra, *rv) != (a, v) {
                        break;
                    }
                    if !rows.contains(&(*t, k.clone())) {
                        return bad(format!(
                            "version {v} of actor #{a} does not list a row that references it"
                        ));
                    }
                }
            }
        }
        // A cleared version keeps its small row and nothing of its row list.
        let stale: Option<(u32, u64)> = tx
            .query_row(
                "SELECT actor, version FROM __corro_versions v WHERE live <= 0
                   AND (rows IS NOT NULL OR EXISTS (SELECT 1 FROM __corro_version_rows p
                        WHERE p.actor = v.actor AND p.version = v.version)) LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        if let Some((a, v)) = stale {
            return bad(format!(
                "version {v} of actor #{a} is cleared but still lists rows"
            ));
        }
        if let Some(((a, v), n)) = live.into_iter().next() {
            return bad(format!(
                "{n} rows reference version {v} of actor #{a} which has no index entry"
            ));
        }
        let mem = self.inner.books.read().clone();
        if mem != books {
            return bad("in-memory bookkeeping differs from the persisted one".into());
        }
        Ok(())
    }
}
