//! What SQLite itself charges for the store's design, measured with plain
//! SQLite only (no Corrosion code), next to the plain baseline:
//!
//! - a bulk insert into a table with an `AFTER INSERT` trigger that calls an
//!   empty function: any trigger makes SQLite open a statement journal for
//!   every `INSERT`, which is why inserts into rowid tables are captured with
//!   the update hook instead (`store/src/capture.rs`);
//! - single-row transactions that write the four pages a replicated commit
//!   writes (data row, key index, clock row, version-index row) with plain
//!   SQL: the ceiling of the single-row ratio for this layout.

use std::time::Instant;

use rusqlite::Connection;
use rusqlite::functions::FunctionFlags;

use crate::store::{Scratch, compare, plain, plain_bulk, rate, rows};

#[derive(clap::Args)]
pub(crate) struct LimitsArgs {
    /// Rows in the bulk insert.
    #[arg(long, default_value_t = 300_000)]
    bulk: usize,
    /// Single-row transactions per side and round.
    #[arg(long, default_value_t = 5_000)]
    single: usize,
    /// Rounds per measurement (alternating).
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// Directory for the scratch databases.
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

/// Tables shaped like the store's clock table and version index.
const SHADOWS: &str = "
CREATE TABLE clock (key BLOB NOT NULL PRIMARY KEY, cl INTEGER NOT NULL, clock BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE versions (actor INTEGER NOT NULL, version INTEGER NOT NULL, last_seq INTEGER NOT NULL, ts INTEGER NOT NULL, live INTEGER NOT NULL, rows BLOB, PRIMARY KEY (actor, version)) WITHOUT ROWID;";

fn single(c: &Connection, rows: &[(String, String)], four_pages: bool) -> anyhow::Result<f64> {
    let t = Instant::now();
    for (i, (id, title)) in rows.iter().enumerate() {
        c.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        c.prepare_cached("INSERT INTO todos (id, title) VALUES (?1, ?2)")?
            .execute((id, title))?;
        if four_pages {
            c.prepare_cached("INSERT INTO clock (key, cl, clock) VALUES (?1, 1, ?2)")?
                .execute((id.as_bytes(), [1u8; 12]))?;
            c.prepare_cached(
                "INSERT INTO versions (actor, version, last_seq, ts, live, rows) VALUES (1, ?1, 3, 0, 1, ?2)",
            )?
            .execute((i as i64 + 1, id.as_bytes()))?;
        }
        c.prepare_cached("COMMIT")?.execute([])?;
    }
    Ok(rate(rows.len(), t.elapsed()))
}

pub(crate) fn run(args: LimitsArgs) -> anyhow::Result<()> {
    let scratch = Scratch::new(args.dir.as_deref())?;
    println!(
        "corro-bench store-limits: plain SQLite only; bulk={} single={} rounds={} (medians over rounds)",
        args.bulk, args.single, args.rounds
    );
    let bulk = rows(0..args.bulk);
    compare(
        "bulk insert, no-op AFTER INSERT trigger",
        "rows/s",
        "how much a trigger costs",
        args.rounds,
        || {
            let c = plain(&scratch.path("trigger"))?;
            c.create_scalar_function("noop", -1, FunctionFlags::SQLITE_UTF8, |_| Ok(None::<i64>))?;
            c.execute_batch(
                "CREATE TRIGGER t AFTER INSERT ON todos BEGIN SELECT noop(NEW.id, NEW.title, NEW.completed_at); END;",
            )?;
            let t = Instant::now();
            plain_bulk(&c, &bulk)?;
            Ok(rate(bulk.len(), t.elapsed()))
        },
        || {
            let c = plain(&scratch.path("bulk"))?;
            let t = Instant::now();
            plain_bulk(&c, &bulk)?;
            Ok(rate(bulk.len(), t.elapsed()))
        },
    )?;
    let few = rows(0..args.single);
    compare(
        "single-row txns writing four pages",
        "txn/s",
        "the layout's ceiling for the store",
        args.rounds,
        || {
            let c = plain(&scratch.path("four"))?;
            c.execute_batch(SHADOWS)?;
            single(&c, &few, true)
        },
        || single(&plain(&scratch.path("two"))?, &few, false),
    )
}
