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

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;
use rusqlite::Connection;
use rusqlite::functions::FunctionFlags;

use crate::value::{SqlValue, encode_key};

/// Before/after images of one row within the current transaction.
#[derive(Debug, Default)]
pub(crate) struct RowImage {
    pub before: Option<Vec<SqlValue>>,
    pub after: Option<Vec<SqlValue>>,
}

/// Rows touched by the current local transaction, in (table id, key) order so
/// seq numbers are assigned deterministically.
#[derive(Debug, Default)]
pub(crate) struct CaptureBuffer {
    pub active: bool,
    pub rows: BTreeMap<(u32, Vec<u8>), RowImage>,
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
        let mut pk = Vec::with_capacity(npk);
        for i in 3..3 + npk {
            let v = SqlValue::from_ref(ctx.get_raw(i));
            if matches!(v, SqlValue::Real(_)) {
                return Err(user_err(
                    "REAL primary key values are not supported (1 and 1.0 would name one row but replicate as two); use INTEGER or TEXT keys",
                ));
            }
            pk.push(v);
        }
        let vals: Vec<SqlValue> = (3 + npk..ctx.len())
            .map(|i| SqlValue::from_ref(ctx.get_raw(i)))
            .collect();
        let key = encode_key(&pk);
        let mut buf = buffer.lock();
        if !buf.active {
            return Err(user_err(
                "writes to replicated tables must go through the corrosion agent",
            ));
        }
        let entry = buf.rows.entry((tbl, key));
        match entry {
            std::collections::btree_map::Entry::Vacant(e) => {
                let img = if op == 0 {
                    RowImage { before: Some(vals), after: None }
                } else {
                    RowImage { before: None, after: Some(vals) }
                };
                e.insert(img);
            }
            std::collections::btree_map::Entry::Occupied(mut e) => {
                e.get_mut().after = if op == 0 { None } else { Some(vals) };
            }
        }
        Ok(None::<i64>)
    })
}
