//! Change capture for local writes.
//!
//! The triggers installed on every replicated table call `corro_capture` with
//! an *old image* (the row as it was, before an update or delete) or a *new
//! image* (the row as it is after an insert or update). This module keeps,
//! per touched row, the first old image and the last new image of the current
//! transaction; at commit the store compares them with the row's clock to
//! decide what changed (see `write.rs`). Only the final state at commit
//! matters, so a row inserted and deleted in one transaction produces nothing.
//!
//! The writer connection runs with `recursive_triggers = ON` so that
//! `INSERT OR REPLACE` reports the row it replaces as a delete.

use rustc_hash::FxHashMap as HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use rusqlite::Connection;
use rusqlite::functions::FunctionFlags;

use crate::value::{SqlValue, encode_key, encode_key_refs};

/// Before/after images of one row within the current transaction.
#[derive(Debug, Default)]
pub(crate) struct RowImage {
    pub before: Option<Vec<SqlValue>>,
    pub after: Option<Vec<SqlValue>>,
}

/// A touched row: (table id, encoded key).
pub(crate) type RowKey = (u32, Arc<[u8]>);

/// Rows touched by the current local transaction, in the order they were first
/// touched (so seqs follow the statements, and clock writes follow the data
/// writes' locality).
#[derive(Debug, Default)]
pub(crate) struct CaptureBuffer {
    pub active: bool,
    index: HashMap<RowKey, usize>,
    rows: Vec<(RowKey, RowImage)>,
}

impl CaptureBuffer {
    /// Starts (or ends) capturing with an empty buffer.
    pub(crate) fn reset(&mut self, active: bool) {
        self.active = active;
        self.index.clear();
        self.rows.clear();
    }

    /// The touched rows, leaving the buffer empty.
    pub(crate) fn take(&mut self) -> Vec<(RowKey, RowImage)> {
        self.index.clear();
        std::mem::take(&mut self.rows)
    }

    fn record(&mut self, tbl: u32, key: Vec<u8>, op: i64, vals: Vec<SqlValue>) {
        let key: Arc<[u8]> = key.into();
        let next = self.rows.len();
        match self.index.entry((tbl, key.clone())) {
            std::collections::hash_map::Entry::Occupied(e) => {
                self.rows[*e.get()].1.after = if op == 0 { None } else { Some(vals) };
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(next);
                let img = if op == 0 {
                    RowImage {
                        before: Some(vals),
                        after: None,
                    }
                } else {
                    RowImage {
                        before: None,
                        after: Some(vals),
                    }
                };
                self.rows.push(((tbl, key), img));
            }
        }
    }
}

pub(crate) type SharedCapture = Arc<Mutex<CaptureBuffer>>;

fn user_err(msg: &str) -> rusqlite::Error {
    rusqlite::Error::UserFunctionError(msg.to_string().into())
}

/// Registers `corro_capture(table_id, op, npk, pk..., cols...)` on `conn`.
pub(crate) fn register(conn: &Connection, buffer: SharedCapture) -> rusqlite::Result<()> {
    conn.create_scalar_function("corro_capture", -1, FunctionFlags::SQLITE_UTF8, move |ctx| {
        if ctx.len() < 3 {
            return Err(user_err("corro_capture: too few arguments"));
        }
        let tbl = ctx.get::<i64>(0)? as u32;
        let op = ctx.get::<i64>(1)?;
        let npk = ctx.get::<i64>(2)? as usize;
        if ctx.len() < 3 + npk {
            return Err(user_err("corro_capture: too few arguments"));
        }
        let pk = (3..3 + npk).map(|i| ctx.get_raw(i));
        if pk.clone().any(|v| matches!(v, rusqlite::types::ValueRef::Real(_))) {
            return Err(user_err(
                "REAL primary key values are not supported (1 and 1.0 would name one row but replicate as two); use INTEGER or TEXT keys",
            ));
        }
        let key = match encode_key_refs(pk.clone()) {
            Some(k) => k,
            None => encode_key(&pk.map(SqlValue::from_ref).collect::<Vec<_>>()),
        };
        let vals: Vec<SqlValue> = (3 + npk..ctx.len())
            .map(|i| SqlValue::from_ref(ctx.get_raw(i)))
            .collect();
        let mut buf = buffer.lock();
        if !buf.active {
            return Err(user_err(
                "writes to replicated tables must go through the corrosion agent",
            ));
        }
        buf.record(tbl, key, op, vals);
        Ok(None::<i64>)
    })
}
