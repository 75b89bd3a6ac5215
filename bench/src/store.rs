//! Store benchmarks: the replicated store against plain SQLite with the same
//! schema, journal mode (WAL), synchronous level (NORMAL) and page cache.
//!
//! This machine's speed drifts by 2x between runs, so every figure is
//! measured in several rounds that alternate the replicated store and its
//! baseline; the report gives medians and the median of the per-round ratios.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use corro_store::{ActorId, Change, Changeset, SqlValue, Store, StoreOptions};
use rusqlite::Connection;

#[derive(clap::Args)]
pub(crate) struct StoreArgs {
    /// Single-row transactions per side and round.
    #[arg(long, default_value_t = 5_000)]
    single: usize,
    /// Rows in the bulk-insert transaction.
    #[arg(long, default_value_t = 100_000)]
    bulk: usize,
    /// Rows already in the table for the "apply into a large table" case.
    #[arg(long, default_value_t = 1_000_000)]
    large: usize,
    /// Rounds per measurement (alternating replicated and plain).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Skip the large-table apply case (slow to set up).
    #[arg(long)]
    skip_large: bool,
    /// Directory for the scratch databases (e.g. /dev/shm to take the
    /// disk's fsync latency out of the comparison).
    #[arg(long)]
    dir: Option<PathBuf>,
}

const SCHEMA: &str = "CREATE TABLE todos (id TEXT NOT NULL PRIMARY KEY, title TEXT NOT NULL DEFAULT '', completed_at INTEGER);";

pub(crate) struct Scratch {
    dir: tempfile::TempDir,
    n: std::cell::Cell<usize>,
}

impl Scratch {
    /// Scratch databases in `dir` (default: the system temp directory).
    pub(crate) fn new(dir: Option<&Path>) -> anyhow::Result<Scratch> {
        Ok(Scratch {
            dir: match dir {
                Some(d) => tempfile::tempdir_in(d)?,
                None => tempfile::tempdir()?,
            },
            n: Default::default(),
        })
    }

    pub(crate) fn path(&self, what: &str) -> PathBuf {
        self.n.set(self.n.get() + 1);
        self.dir.path().join(format!("{what}-{}.db", self.n.get()))
    }
}

pub(crate) fn plain(path: &Path) -> anyhow::Result<Connection> {
    let c = Connection::open(path)?;
    c.pragma_update(None, "journal_mode", "WAL")?;
    c.pragma_update(None, "synchronous", "NORMAL")?;
    // Same page cache as the store's writer, so only replication differs.
    c.pragma_update(None, "cache_size", -65536)?;
    c.execute_batch(SCHEMA)?;
    Ok(c)
}

pub(crate) fn store(path: &Path) -> anyhow::Result<Store> {
    let s = Store::open(path, StoreOptions::default())?;
    let schema = path.with_extension("sql");
    std::fs::write(&schema, SCHEMA)?;
    s.apply_schema_paths(&[schema])?;
    Ok(s)
}

/// Plain SQLite inserting `rows` in one transaction through a held statement:
/// the baseline of the bulk and apply measurements.
pub(crate) fn plain_bulk(p: &Connection, rows: &[(String, String)]) -> anyhow::Result<()> {
    p.execute_batch("BEGIN IMMEDIATE")?;
    {
        let mut stmt = p.prepare_cached("INSERT INTO todos (id, title) VALUES (?1, ?2)")?;
        for (id, title) in rows {
            stmt.execute((id, title))?;
        }
    }
    p.execute_batch("COMMIT")?;
    Ok(())
}

pub(crate) fn rows(range: std::ops::Range<usize>) -> Vec<(String, String)> {
    range
        .map(|i| {
            (
                format!("todo-{i:09}"),
                format!("Write some Corrosion docs, part {i}"),
            )
        })
        .collect()
}

pub(crate) fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn db_bytes(path: &Path) -> anyhow::Result<u64> {
    let c = Connection::open(path)?;
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    let pages: u64 = c.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let size: u64 = c.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    Ok(pages * size)
}

/// Runs `rounds` alternating (ours, baseline) pairs and prints the medians.
pub(crate) fn compare(
    name: &str,
    unit: &str,
    target: &str,
    rounds: usize,
    mut ours: impl FnMut() -> anyhow::Result<f64>,
    mut base: impl FnMut() -> anyhow::Result<f64>,
) -> anyhow::Result<()> {
    let (mut a, mut b, mut r) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let x = ours()?;
        let y = base()?;
        a.push(x);
        b.push(y);
        r.push(x / y);
    }
    let (lo, hi) = (
        r.iter().copied().fold(f64::INFINITY, f64::min),
        r.iter().copied().fold(0.0, f64::max),
    );
    println!(
        "{name:<40} {:>10.0} {unit:<10} plain {:>10.0} {unit:<10} ratio {:>5.2}x [{lo:.2}-{hi:.2}]  (target {target})",
        median(a),
        median(b),
        median(r)
    );
    Ok(())
}

pub(crate) fn run(args: StoreArgs) -> anyhow::Result<()> {
    let scratch = Scratch::new(args.dir.as_deref())?;
    println!(
        "corro-bench store: single={} bulk={} large={} rounds={} dir={} (medians over rounds)",
        args.single,
        args.bulk,
        args.large,
        args.rounds,
        scratch.dir.path().display()
    );
    let single = rows(0..args.single);
    let bulk = rows(0..args.bulk);

    // 1. Single-row write transactions.
    let (p1, p2) = (scratch.path("repl"), scratch.path("plain"));
    let (s, p) = (store(&p1)?, plain(&p2)?);
    let offset = std::cell::Cell::new(0);
    compare(
        "single-row write transactions",
        "txn/s",
        ">= 0.5x",
        args.rounds,
        || {
            let t = Instant::now();
            for (id, title) in &single {
                let id = format!("{id}-{}", offset.get());
                s.transact(|tx| {
                    tx.execute(
                        "INSERT INTO todos (id, title) VALUES (?1, ?2)",
                        &[id.into(), title.as_str().into()],
                    )
                })?;
            }
            Ok(rate(single.len(), t.elapsed()))
        },
        || {
            let t = Instant::now();
            for (id, title) in &single {
                let id = format!("{id}-{}", offset.get());
                p.execute_batch("BEGIN IMMEDIATE")?;
                p.prepare_cached("INSERT INTO todos (id, title) VALUES (?1, ?2)")?
                    .execute((id, title))?;
                p.execute_batch("COMMIT")?;
            }
            offset.set(offset.get() + 1);
            Ok(rate(single.len(), t.elapsed()))
        },
    )?;
    drop((s, p));

    // 2. Bulk insert in one transaction, each round into a fresh database.
    let last: std::cell::RefCell<Option<(PathBuf, PathBuf, Vec<Change>)>> = Default::default();
    let repl_paths = std::cell::RefCell::new(Vec::new());
    compare(
        "bulk insert, one transaction",
        "rows/s",
        ">= 0.33x",
        args.rounds,
        || {
            let path = scratch.path("bulk-repl");
            let s = store(&path)?;
            let t = Instant::now();
            let c = s.transact(|tx| {
                let mut stmt = tx.prepare("INSERT INTO todos (id, title) VALUES (?1, ?2)")?;
                for (id, title) in &bulk {
                    stmt.execute(&[id.as_str().into(), title.as_str().into()])?;
                }
                Ok(())
            })?;
            let r = rate(bulk.len(), t.elapsed());
            repl_paths.borrow_mut().push((path, c.changes()));
            Ok(r)
        },
        || {
            let path = scratch.path("bulk-plain");
            let p = plain(&path)?;
            let t = Instant::now();
            plain_bulk(&p, &bulk)?;
            let r = rate(bulk.len(), t.elapsed());
            if let Some((rp, changes)) = repl_paths.borrow_mut().pop() {
                *last.borrow_mut() = Some((rp, path, changes));
            }
            Ok(r)
        },
    )?;
    let (repl_db, plain_db, changes) = last
        .into_inner()
        .ok_or_else(|| anyhow::anyhow!("no rounds"))?;

    // 3. Size for the same rows.
    let (ours, base) = (db_bytes(&repl_db)? as f64, db_bytes(&plain_db)? as f64);
    println!(
        "{:<40} {ours:>10.0} {:<10} plain {base:>10.0} {:<10} ratio {:>5.2}x  (target <= 3x)",
        "database size (bulk rows)",
        "bytes",
        "bytes",
        ours / base
    );

    // 4. Remote apply of the bulk version, as ~8 KiB chunks in one call.
    let actor = ActorId::random();
    let last_seq = changes.last().map_or(0, |c| c.seq);
    let sets = corro_store::chunk_version(actor, 1, last_seq, 0, changes, corro_store::CHUNK_BYTES);
    let nchanges = last_seq as usize + 1;
    // Baseline of both apply measurements: plain SQLite inserting the rows
    // those changes describe, expressed per change (3 changes per row).
    let plain_apply = || {
        let p = plain(&scratch.path("apply-plain"))?;
        let t = Instant::now();
        plain_bulk(&p, &bulk)?;
        Ok(rate(nchanges, t.elapsed()))
    };
    compare(
        "remote apply into empty table",
        "changes/s",
        ">= 300K changes/s; plain = same rows inserted",
        args.rounds,
        || {
            let s = store(&scratch.path("apply"))?;
            let sets = sets.clone();
            let t = Instant::now();
            s.apply(sets)?;
            Ok(rate(nchanges, t.elapsed()))
        },
        &plain_apply,
    )?;

    if args.skip_large {
        return Ok(());
    }
    // 5. Into a table that already holds `large` rows (fed by 10K-row versions).
    let big_path = scratch.path("large");
    let big = store(&big_path)?;
    let filler = ActorId::random();
    let mut version = 0;
    let mut i = args.bulk;
    let t = Instant::now();
    while i < args.bulk + args.large {
        version += 1;
        let n = 10_000.min(args.bulk + args.large - i);
        big.apply(vec![synthetic_version(filler, version, i, n)])?;
        i += n;
    }
    let fill = rate(args.large * 3, t.elapsed());
    println!(
        "{:<40} {fill:>10.0} changes/s (10K-row versions, growing table)",
        format!("remote apply filling to {} rows", args.large)
    );
    drop(big);
    let round = std::cell::Cell::new(0);
    compare(
        &format!("remote apply into {}-row table", args.large),
        "changes/s",
        ">= 300K changes/s",
        args.rounds.min(3),
        || {
            // A fresh copy of the large database each round.
            round.set(round.get() + 1);
            let copy = big_path.with_extension(format!("r{}.db", round.get()));
            std::fs::copy(&big_path, &copy)?;
            let s = store(&copy)?;
            let sets = sets.clone();
            let t = Instant::now();
            s.apply(sets)?;
            Ok(rate(nchanges, t.elapsed()))
        },
        &plain_apply,
    )?;
    Ok(())
}

/// A complete version inserting `n` rows starting at `start`, as a peer would send it.
fn synthetic_version(actor: ActorId, version: u64, start: usize, n: usize) -> Changeset {
    let mut changes = Vec::with_capacity(n * 3);
    let mut seq = 0;
    for (id, title) in rows(start..start + n) {
        let pk: Arc<[u8]> = corro_store::encode_key(&[SqlValue::Text(id)]).into();
        for (column, value) in [
            (None, SqlValue::Null),
            (Some("title"), SqlValue::Text(title)),
            (Some("completed_at"), SqlValue::Null),
        ] {
            changes.push(Change {
                table: "todos".into(),
                pk: pk.clone(),
                column: column.map(Arc::from),
                value,
                col_version: u64::from(column.is_some()),
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

#[derive(clap::Args)]
pub(crate) struct OnceArgs {
    /// `plain`, `repl` (local bulk insert), `apply` (remote apply of the
    /// same rows), `single` or `single-plain` (one transaction per row).
    side: String,
    #[arg(long, default_value_t = 100_000)]
    rows: usize,
}

/// One bulk load on one side (see `Cmd::StoreOnce`).
pub(crate) fn once(args: OnceArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = rows(0..args.rows);
    match args.side.as_str() {
        "plain" => {
            let p = plain(&dir.path().join("p.db"))?;
            plain_bulk(&p, &data)?;
        }
        "repl" | "apply" => {
            let s = store(&dir.path().join("r.db"))?;
            let c = s.transact(|tx| {
                let mut stmt = tx.prepare("INSERT INTO todos (id, title) VALUES (?1, ?2)")?;
                for (id, title) in &data {
                    stmt.execute(&[id.as_str().into(), title.as_str().into()])?;
                }
                Ok(())
            })?;
            if args.side == "apply" {
                let sets = c.changesets(ActorId::random());
                let t = store(&dir.path().join("a.db"))?;
                t.apply(sets)?;
            }
        }
        "single" => {
            let s = store(&dir.path().join("r.db"))?;
            for (id, title) in &data {
                s.transact(|tx| {
                    tx.execute(
                        "INSERT INTO todos (id, title) VALUES (?1, ?2)",
                        &[id.as_str().into(), title.as_str().into()],
                    )
                })?;
            }
        }
        "single-plain" => {
            let p = plain(&dir.path().join("p.db"))?;
            for (id, title) in &data {
                p.execute_batch("BEGIN IMMEDIATE")?;
                p.prepare_cached("INSERT INTO todos (id, title) VALUES (?1, ?2)")?
                    .execute((id, title))?;
                p.execute_batch("COMMIT")?;
            }
        }
        other => anyhow::bail!("unknown side {other:?} (plain, repl, apply, single, single-plain)"),
    }
    Ok(())
}
