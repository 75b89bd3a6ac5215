//! Store benchmarks: the replicated store against plain SQLite with the same
//! schema, journal mode (WAL) and synchronous level (NORMAL).

use std::path::Path;
use std::time::{Duration, Instant};

use corro_store::{Changeset, SqlValue, Store, StoreOptions};
use rusqlite::Connection;

#[derive(clap::Args)]
pub(crate) struct StoreArgs {
    /// Single-row transactions per side.
    #[arg(long, default_value_t = 20_000)]
    single: usize,
    /// Rows in the bulk-insert transaction.
    #[arg(long, default_value_t = 200_000)]
    bulk: usize,
    /// Rows already in the table for the "apply into a large table" case.
    #[arg(long, default_value_t = 1_000_000)]
    large: usize,
    /// Stop after the bulk-insert measurement (for profiling).
    #[arg(long)]
    bulk_only: bool,
}

const SCHEMA: &str = "CREATE TABLE todos (id TEXT NOT NULL PRIMARY KEY, title TEXT NOT NULL DEFAULT '', completed_at INTEGER);";

fn plain(path: &Path) -> anyhow::Result<Connection> {
    let c = Connection::open(path)?;
    c.pragma_update(None, "journal_mode", "WAL")?;
    c.pragma_update(None, "synchronous", "NORMAL")?;
    c.execute_batch(SCHEMA)?;
    Ok(c)
}

fn store(path: &Path, dir: &Path) -> anyhow::Result<Store> {
    let s = Store::open(path, StoreOptions::default())?;
    let schema = dir.join("schema.sql");
    std::fs::write(&schema, SCHEMA)?;
    s.apply_schema_paths(&[schema])?;
    Ok(s)
}

fn id(i: usize) -> String {
    format!("todo-{i:09}")
}

fn title(i: usize) -> String {
    format!("Write some Corrosion docs, part {i}")
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn db_bytes(path: &Path) -> anyhow::Result<u64> {
    let c = Connection::open(path)?;
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    let pages: u64 = c.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let size: u64 = c.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    Ok(pages * size)
}

fn line(name: &str, ours: f64, base: f64, unit: &str, target: &str) {
    println!(
        "{name:<44} {ours:>12.0} {unit:<9} plain {base:>12.0} {unit:<9} ratio {:>5.2}x  (target {target})",
        ours / base
    );
}

pub(crate) fn run(args: StoreArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    println!(
        "corro-bench store: single={} bulk={} large={}",
        args.single, args.bulk, args.large
    );

    // 1. Single-row write transactions.
    let p = plain(&d.join("plain1.db"))?;
    let t = Instant::now();
    for i in 0..args.single {
        p.execute_batch("BEGIN IMMEDIATE")?;
        p.prepare_cached("INSERT INTO todos (id, title) VALUES (?1, ?2)")?
            .execute((id(i), title(i)))?;
        p.execute_batch("COMMIT")?;
    }
    let plain_single = rate(args.single, t.elapsed());
    let s = store(&d.join("repl1.db"), d)?;
    let t = Instant::now();
    for i in 0..args.single {
        s.transact(|tx| {
            tx.execute(
                "INSERT INTO todos (id, title) VALUES (?1, ?2)",
                &[id(i).into(), title(i).into()],
            )
        })?;
    }
    let repl_single = rate(args.single, t.elapsed());
    line(
        "single-row write transactions",
        repl_single,
        plain_single,
        "txn/s",
        ">= 0.5x",
    );

    // 2. Bulk insert in one transaction.
    let p = plain(&d.join("plain2.db"))?;
    let t = Instant::now();
    p.execute_batch("BEGIN IMMEDIATE")?;
    {
        let mut stmt = p.prepare_cached("INSERT INTO todos (id, title) VALUES (?1, ?2)")?;
        for i in 0..args.bulk {
            stmt.execute((id(i), title(i)))?;
        }
    }
    p.execute_batch("COMMIT")?;
    let plain_bulk = rate(args.bulk, t.elapsed());
    drop(p);
    let s = store(&d.join("repl2.db"), d)?;
    let t = Instant::now();
    let committed = s.transact(|tx| {
        for i in 0..args.bulk {
            tx.execute(
                "INSERT INTO todos (id, title) VALUES (?1, ?2)",
                &[id(i).into(), title(i).into()],
            )?;
        }
        Ok(())
    })?;
    let repl_bulk = rate(args.bulk, t.elapsed());
    line(
        "bulk insert, one transaction",
        repl_bulk,
        plain_bulk,
        "rows/s",
        ">= 0.33x",
    );
    if args.bulk_only {
        return Ok(());
    }

    // 4. Size for the same rows.
    let plain_size = db_bytes(&d.join("plain2.db"))? as f64;
    drop(s);
    let repl_size = db_bytes(&d.join("repl2.db"))? as f64;
    line(
        "database size (bulk rows)",
        repl_size,
        plain_size,
        "bytes",
        "<= 3x",
    );

    // 3. Remote apply: the bulk version as ~8 KiB chunks, into an empty store.
    let source_actor = corro_store::ActorId::random();
    let sets = committed.changesets(source_actor);
    let nchanges = committed.changes.len();
    let target = store(&d.join("repl3.db"), d)?;
    let t = Instant::now();
    target.apply(sets)?;
    let apply_empty = rate(nchanges, t.elapsed());
    // Baseline: plain SQLite inserting the same rows (what the changes amount to).
    line(
        "remote apply into empty table",
        apply_empty,
        plain_bulk * 3.0,
        "changes/s",
        ">= 300K changes/s; plain = bulk rows/s x 3 changes per row",
    );

    // 3b. Into a table that already holds `large` rows (fed by remote versions of 10K rows).
    let big = store(&d.join("repl4.db"), d)?;
    let filler = corro_store::ActorId::random();
    let mut version = 0;
    let mut i = args.bulk;
    while i < args.bulk + args.large {
        version += 1;
        let n = 10_000.min(args.bulk + args.large - i);
        big.apply(vec![synthetic_version(filler, version, i, n)])?;
        i += n;
    }
    let sets = committed.changesets(source_actor);
    let t = Instant::now();
    big.apply(sets)?;
    let apply_large = rate(nchanges, t.elapsed());
    line(
        &format!("remote apply into {}-row table", args.large),
        apply_large,
        plain_bulk * 3.0,
        "changes/s",
        ">= 300K changes/s",
    );
    Ok(())
}

/// A complete version inserting `n` rows starting at `start`, as a peer would send it.
fn synthetic_version(
    actor: corro_store::ActorId,
    version: u64,
    start: usize,
    n: usize,
) -> Changeset {
    let mut changes = Vec::with_capacity(n * 3);
    let mut seq = 0;
    for i in start..start + n {
        let pk = corro_store::encode_key(&[SqlValue::Text(id(i))]);
        for (column, value) in [
            (None, SqlValue::Null),
            (Some("title"), SqlValue::Text(title(i))),
            (Some("completed_at"), SqlValue::Null),
        ] {
            changes.push(corro_store::Change {
                table: "todos".into(),
                pk: pk.clone(),
                column: column.map(std::sync::Arc::from),
                value,
                col_version: if column.is_some() { 1 } else { 0 },
                cl: 1,
                seq,
            });
            seq += 1;
        }
    }
    Changeset::Version {
        actor,
        version,
        seqs: 0..=seq - 1,
        last_seq: seq - 1,
        ts: 0,
        changes,
    }
}
