//! Subscriptions over a real store: every event type, joins, rows moving in
//! and out of a WHERE, deletes, resume from a change id during concurrent
//! writes (no gap, no duplicate), restart, lag cut-off, log retention,
//! invalid queries and the per-table update feed.

#![allow(clippy::unwrap_used, clippy::print_stdout, reason = "test code")]

use std::path::Path;
use std::time::Duration;

use corro_client::Value;
use corro_store::{SqlValue, Store, StoreOptions};
use corro_subs::manager::Params;
use corro_subs::{Event, Listener, SubConfig, Subscriptions};

const SCHEMA: &str = "
CREATE TABLE todos (id TEXT NOT NULL PRIMARY KEY, title TEXT NOT NULL DEFAULT '', done INTEGER NOT NULL DEFAULT 0);
CREATE TABLE tags (todo TEXT NOT NULL, tag TEXT NOT NULL, PRIMARY KEY (todo, tag));
";

fn store(dir: &Path) -> Store {
    store_with(dir, StoreOptions::default())
}

fn store_with(dir: &Path, opts: StoreOptions) -> Store {
    let s = Store::open(dir.join("state.db"), opts).unwrap();
    let schema = dir.join("schema.sql");
    std::fs::write(&schema, SCHEMA).unwrap();
    s.apply_schema_paths(&[schema]).unwrap();
    s
}

fn config(dir: &Path) -> SubConfig {
    SubConfig {
        dir: dir.join("subs"),
        max_log_changes: 100_000,
        max_log_age: Duration::from_secs(86_400),
        max_log_bytes: 64 << 20,
        idle_expiry: Duration::from_secs(600),
        listener_buffer: 10_000,
    }
}

fn exec(s: &Store, sql: &str, params: &[SqlValue]) {
    s.transact(|tx| tx.execute(sql, params)).unwrap();
}

async fn next(l: &mut Listener) -> Event {
    tokio::time::timeout(Duration::from_secs(10), l.next())
        .await
        .expect("an event within 10 s")
        .expect("the stream is open")
}

fn line(e: &Event) -> String {
    e.to_line()
}

/// Reads the initial part (columns, rows, eoq) as lines.
async fn initial(l: &mut Listener) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        let e = next(l).await;
        out.push(line(&e));
        if matches!(e, Event::Eoq { .. }) {
            return out;
        }
    }
}

fn strip_time(lines: Vec<String>) -> Vec<String> {
    lines
        .into_iter()
        .map(|l| {
            if l.starts_with("{\"eoq\"") {
                let id = l.rsplit("\"change_id\":").next().unwrap().to_string();
                format!("eoq {}", id.trim_end_matches('}'))
            } else {
                l
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_type_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    exec(
        &s,
        "INSERT INTO todos (id, title) VALUES ('a', 'first'), ('b', 'second')",
        &[],
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let subs = Subscriptions::start(s.clone(), config(dir.path()), stop).unwrap();
    let mut l = subs
        .subscribe(
            "SELECT id, title FROM todos WHERE done = 0",
            Params::None,
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        strip_time(initial(&mut l).await),
        vec![
            r#"{"columns":["id","title"]}"#,
            r#"{"row":[1,["a","first"]]}"#,
            r#"{"row":[2,["b","second"]]}"#,
            "eoq 0",
        ]
    );
    exec(
        &s,
        "INSERT INTO todos (id, title) VALUES ('c', 'third')",
        &[],
    );
    assert_eq!(
        line(&next(&mut l).await),
        r#"{"change":["insert",3,["c","third"],1]}"#
    );
    exec(&s, "UPDATE todos SET title = 'FIRST' WHERE id = 'a'", &[]);
    assert_eq!(
        line(&next(&mut l).await),
        r#"{"change":["update",1,["a","FIRST"],2]}"#
    );
    // Out of the WHERE: a delete carrying the last cells; back in: a new row id.
    exec(&s, "UPDATE todos SET done = 1 WHERE id = 'b'", &[]);
    assert_eq!(
        line(&next(&mut l).await),
        r#"{"change":["delete",2,["b","second"],3]}"#
    );
    exec(&s, "UPDATE todos SET done = 0 WHERE id = 'b'", &[]);
    assert_eq!(
        line(&next(&mut l).await),
        r#"{"change":["insert",4,["b","second"],4]}"#
    );
    exec(&s, "DELETE FROM todos WHERE id = 'c'", &[]);
    assert_eq!(
        line(&next(&mut l).await),
        r#"{"change":["delete",3,["c","third"],5]}"#
    );
    // A write that does not touch the result emits nothing: the next event
    // is the one after it.
    exec(&s, "UPDATE todos SET done = 1 WHERE id = 'c'", &[]);
    exec(&s, "UPDATE todos SET done = 5 WHERE id = 'b'", &[]);
    assert_eq!(
        line(&next(&mut l).await),
        r#"{"change":["delete",4,["b","second"],6]}"#
    );

    // The same SQL (modulo spacing and keyword case) is the same
    // subscription; a second client gets the current rows.
    let mut l2 = subs
        .subscribe(
            "select id,  title from todos where done = 0",
            Params::None,
            None,
        )
        .await
        .unwrap();
    assert_eq!(l2.id, l.id);
    assert_eq!(
        strip_time(initial(&mut l2).await),
        vec![
            r#"{"columns":["id","title"]}"#,
            r#"{"row":[1,["a","FIRST"]]}"#,
            "eoq 6",
        ]
    );
    // Different parameters: a different subscription.
    let l3 = subs
        .subscribe(
            "SELECT id, title FROM todos WHERE done = ?",
            Params::Positional(vec![Value::Integer(1)]),
            None,
        )
        .await
        .unwrap();
    assert_ne!(l3.id, l.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_follow_changes_on_either_side() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    exec(
        &s,
        "INSERT INTO todos (id, title) VALUES ('a', 'first')",
        &[],
    );
    exec(&s, "INSERT INTO tags (todo, tag) VALUES ('a', 'red')", &[]);
    let stop = tokio_util::sync::CancellationToken::new();
    let subs = Subscriptions::start(s.clone(), config(dir.path()), stop).unwrap();
    let mut l = subs
        .subscribe(
            "SELECT t.title, g.tag FROM todos t JOIN tags g ON g.todo = t.id",
            Params::None,
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        strip_time(initial(&mut l).await),
        vec![
            r#"{"columns":["title","tag"]}"#,
            r#"{"row":[1,["first","red"]]}"#,
            "eoq 0"
        ]
    );
    exec(&s, "INSERT INTO tags (todo, tag) VALUES ('a', 'blue')", &[]);
    assert_eq!(
        line(&next(&mut l).await),
        r#"{"change":["insert",2,["first","blue"],1]}"#
    );
    // A change on the other table updates every joined row.
    exec(&s, "UPDATE todos SET title = 'renamed' WHERE id = 'a'", &[]);
    assert_eq!(
        two(&mut l).await,
        [
            "update 1 [\"renamed\",\"red\"]",
            "update 2 [\"renamed\",\"blue\"]"
        ]
    );
    exec(&s, "DELETE FROM todos WHERE id = 'a'", &[]);
    assert_eq!(
        two(&mut l).await,
        [
            "delete 1 [\"renamed\",\"red\"]",
            "delete 2 [\"renamed\",\"blue\"]"
        ]
    );
}

/// The next two changes (ids must follow on), as "kind rowid cells" sorted
/// by row id: one batch has no order among its rows.
async fn two(l: &mut Listener) -> Vec<String> {
    let mut got = Vec::new();
    let before = l.last_change();
    for _ in 0..2 {
        match next(l).await {
            Event::Change(c) => got.push(c),
            other => panic!("{other:?}"),
        }
    }
    let mut ids: Vec<u64> = got.iter().map(|c| c.id).collect();
    ids.sort();
    assert_eq!(ids, vec![before + 1, before + 2]);
    got.sort_by_key(|c| c.rowid);
    got.iter()
        .map(|c| format!("{} {} {}", c.kind.as_str(), c.rowid, c.cells))
        .collect()
}

/// Resume with `from` while another task keeps writing: the union of what
/// the first listener got and what the resumed one got is every change id
/// exactly once, contiguous.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_from_a_change_id_during_writes_has_no_gap_and_no_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let stop = tokio_util::sync::CancellationToken::new();
    let subs = Subscriptions::start(s.clone(), config(dir.path()), stop).unwrap();
    let mut l = subs
        .subscribe("SELECT id FROM todos", Params::None, None)
        .await
        .unwrap();
    initial(&mut l).await;
    let writer = {
        let s = s.clone();
        tokio::task::spawn_blocking(move || {
            for i in 0..400 {
                exec(
                    &s,
                    "INSERT INTO todos (id) VALUES (?)",
                    &[SqlValue::Text(format!("r{i:04}"))],
                );
            }
        })
    };
    // Take some changes, then drop the listener mid-stream.
    let mut ids = Vec::new();
    for _ in 0..50 {
        if let Event::Change(c) = next(&mut l).await {
            ids.push(c.id);
        }
    }
    let id = l.id;
    let last = l.last_change();
    drop(l);
    let mut l = subs.attach(id, Some(last)).await.unwrap();
    let mut rows = 0;
    while rows < 400 {
        match next(&mut l).await {
            Event::Change(c) => {
                ids.push(c.id);
                rows = ids.len();
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    writer.await.unwrap();
    let want: Vec<u64> = (1..=400).collect();
    assert_eq!(ids, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_and_their_logs_survive_a_restart_and_catch_up() {
    let dir = tempfile::tempdir().unwrap();
    let id;
    {
        let s = store(dir.path());
        let stop = tokio_util::sync::CancellationToken::new();
        let subs = Subscriptions::start(s.clone(), config(dir.path()), stop).unwrap();
        let mut l = subs
            .subscribe("SELECT id, title FROM todos", Params::None, None)
            .await
            .unwrap();
        initial(&mut l).await;
        exec(&s, "INSERT INTO todos (id) VALUES ('x')", &[]);
        next(&mut l).await;
        id = l.id;
    }
    // Written while no subscription manager runs: found at start.
    let s = store(dir.path());
    exec(
        &s,
        "INSERT INTO todos (id, title) VALUES ('y', 'offline')",
        &[],
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let subs = Subscriptions::start(s.clone(), config(dir.path()), stop).unwrap();
    let mut l = subs.attach(id, Some(0)).await.unwrap();
    assert_eq!(
        line(&next(&mut l).await),
        r#"{"change":["insert",1,["x",""],1]}"#
    );
    assert_eq!(
        line(&next(&mut l).await),
        r#"{"change":["insert",2,["y","offline"],2]}"#
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_listener_is_cut_off_with_an_error_event() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let stop = tokio_util::sync::CancellationToken::new();
    let mut cfg = config(dir.path());
    cfg.listener_buffer = 16;
    let subs = Subscriptions::start(s.clone(), cfg, stop).unwrap();
    let mut l = subs
        .subscribe("SELECT id FROM todos", Params::None, None)
        .await
        .unwrap();
    initial(&mut l).await;
    for i in 0..200 {
        exec(
            &s,
            "INSERT INTO todos (id) VALUES (?)",
            &[SqlValue::Text(format!("r{i}"))],
        );
    }
    // Give the worker time to publish everything while we do not read.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut saw_error = None;
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_secs(5), l.next()).await {
        if let Event::Error(msg) = e {
            saw_error = Some(msg);
        }
    }
    let msg = saw_error.expect("an error event");
    assert!(msg.contains("behind"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_before_the_retained_log_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let stop = tokio_util::sync::CancellationToken::new();
    let mut cfg = config(dir.path());
    cfg.max_log_changes = 5;
    cfg.max_log_age = Duration::from_millis(0);
    cfg.idle_expiry = Duration::from_millis(400);
    let subs = Subscriptions::start(s.clone(), cfg, stop).unwrap();
    let mut l = subs
        .subscribe("SELECT id FROM todos", Params::None, None)
        .await
        .unwrap();
    initial(&mut l).await;
    for i in 0..20 {
        exec(
            &s,
            "INSERT INTO todos (id) VALUES (?)",
            &[SqlValue::Text(format!("r{i}"))],
        );
    }
    for _ in 0..20 {
        next(&mut l).await;
    }
    // The reaper prunes the log to the newest 5.
    let id = l.id;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match subs.attach(id, Some(3)).await {
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains("no longer retained"), "{msg}");
                break;
            }
            Ok(_) => {
                assert!(std::time::Instant::now() < deadline, "log never pruned");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let mut recent = subs.attach(id, Some(15)).await.unwrap();
    match next(&mut recent).await {
        Event::Change(c) => assert_eq!(c.id, 16),
        other => panic!("{other:?}"),
    }
    // Ahead of the log: refused too.
    let e = subs.attach(id, Some(99)).await.err().unwrap().to_string();
    assert!(e.contains("ahead"), "{e}");
    // No listeners for the idle time: removed with its file.
    drop((l, recent));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !subs.list().is_empty() {
        assert!(std::time::Instant::now() < deadline, "never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let e = subs.attach(id, None).await.err().unwrap().to_string();
    assert!(e.contains("no subscription"), "{e}");
    assert_eq!(
        std::fs::read_dir(dir.path().join("subs")).unwrap().count(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_queries_are_refused_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let stop = tokio_util::sync::CancellationToken::new();
    let subs = Subscriptions::start(s.clone(), config(dir.path()), stop).unwrap();
    for (sql, want) in [
        ("DELETE FROM todos", "SELECT"),
        ("SELECT * FROM missing", "unknown table"),
        ("SELECT nope FROM todos", "no such column"),
        ("SELECT count(*) FROM todos", "aggregate"),
        ("SELECT id FROM todos; SELECT 1", "exactly one"),
    ] {
        let e = subs
            .subscribe(sql, Params::None, None)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains(want), "{sql}: {e}");
    }
    assert!(subs.list().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_update_feed_reports_every_row_change_of_its_table() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let stop = tokio_util::sync::CancellationToken::new();
    let subs = Subscriptions::start(s.clone(), config(dir.path()), stop).unwrap();
    let mut feed = subs.updates("tags").unwrap();
    exec(&s, "INSERT INTO todos (id) VALUES ('ignored')", &[]);
    exec(&s, "INSERT INTO tags (todo, tag) VALUES ('a', 'red')", &[]);
    exec(&s, "DELETE FROM tags WHERE todo = 'a'", &[]);
    let mut got = Vec::new();
    for _ in 0..2 {
        let n = tokio::time::timeout(Duration::from_secs(10), feed.recv())
            .await
            .unwrap()
            .unwrap();
        got.push(serde_json::json!({"notify": [n.0, n.1]}).to_string());
    }
    assert_eq!(
        got,
        vec![
            r#"{"notify":["update",["a","red"]]}"#,
            r#"{"notify":["delete",["a","red"]]}"#
        ]
    );
    assert!(subs.updates("missing").is_err());
}

/// A subscription created while rows are being written ends up with every
/// row: initial rows plus changes cover everything committed. The writer
/// starts before the subscription and goes on until after its first answer,
/// whatever the machine's speed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_created_during_writes_misses_nothing() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let stop = tokio_util::sync::CancellationToken::new();
    let subs = Subscriptions::start(s.clone(), config(dir.path()), stop).unwrap();
    let written = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicBool::new(false));
    let writer = {
        let (s, written, answered) = (s.clone(), written.clone(), answered.clone());
        tokio::task::spawn_blocking(move || {
            // Write until the subscription has answered, then 200 more rows.
            let mut after = 0;
            let mut i = 0;
            while after < 200 {
                exec(
                    &s,
                    "INSERT INTO todos (id) VALUES (?)",
                    &[SqlValue::Text(format!("r{i:06}"))],
                );
                i += 1;
                written.store(i, Ordering::SeqCst);
                if answered.load(Ordering::SeqCst) {
                    after += 1;
                }
            }
            i
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while written.load(Ordering::SeqCst) < 20 {
        assert!(tokio::time::Instant::now() < deadline, "the writer started");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut l = subs
        .subscribe("SELECT id FROM todos", Params::None, None)
        .await
        .unwrap();
    let mut have = std::collections::BTreeSet::new();
    loop {
        match next(&mut l).await {
            Event::Row { cells, .. } => {
                have.insert(cells);
            }
            Event::Eoq { .. } => break,
            _ => {}
        }
    }
    answered.store(true, Ordering::SeqCst);
    let initial = have.len();
    let total = writer.await.unwrap();
    assert!(
        initial >= 20 && initial < total,
        "{initial} of {total} rows in the first answer: the subscription was made during the writes"
    );
    while have.len() < total {
        let e = match tokio::time::timeout(Duration::from_secs(10), l.next()).await {
            Ok(e) => e.expect("the stream is open"),
            Err(_) => {
                let missing: Vec<String> = (0..total)
                    .map(|i| format!("[\"r{i:06}\"]"))
                    .filter(|k| !have.contains(k))
                    .collect();
                panic!(
                    "no event within 10 s: {initial} rows in the first answer, last change {}, never seen: {missing:?}",
                    l.last_change()
                );
            }
        };
        match e {
            Event::Change(c) => {
                assert_eq!(c.kind.as_str(), "insert");
                assert!(have.insert(c.cells.clone()), "duplicate {}", c.cells);
            }
            other => panic!("{other:?}"),
        }
    }
    println!("{initial} of {total} rows in the first answer, the rest as changes");
}

/// Named parameters (with or without their `:`) bind, and the key filter's
/// parameters do not shift them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_parameters_bind_alongside_the_key_filter() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    exec(
        &s,
        "INSERT INTO todos (id, title, done) VALUES ('a', 'x', 1), ('b', 'y', 0)",
        &[],
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let subs = Subscriptions::start(s.clone(), config(dir.path()), stop).unwrap();
    let mut l = subs
        .subscribe(
            "SELECT id FROM todos WHERE done = :done AND title <> :skip",
            Params::Named(vec![
                ("done".into(), Value::Integer(0)),
                (":skip".into(), Value::Text("zzz".into())),
            ]),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        strip_time(initial(&mut l).await),
        vec![r#"{"columns":["id"]}"#, r#"{"row":[1,["b"]]}"#, "eoq 0"]
    );
    exec(&s, "UPDATE todos SET done = 0 WHERE id = 'a'", &[]);
    assert_eq!(
        line(&next(&mut l).await),
        r#"{"change":["insert",2,["a"],1]}"#
    );
    exec(&s, "UPDATE todos SET title = 'zzz' WHERE id = 'b'", &[]);
    assert_eq!(
        line(&next(&mut l).await),
        r#"{"change":["delete",1,["b"],2]}"#
    );
}

/// A view of `SELECT id FROM t`, for tests of the view file alone.
fn one_column() -> corro_subs::matview::Definition {
    corro_subs::matview::Definition {
        sql: "SELECT id FROM t".into(),
        params: "[]".into(),
        columns: vec!["id".into()],
    }
}

/// The change log is capped in bytes whatever the count and age rules keep:
/// the oldest changes go first, and the log ends at or under the cap.
#[test]
fn the_change_log_is_capped_in_bytes() {
    use corro_subs::diff::Fresh;
    use corro_subs::matview::{CHANGE_OVERHEAD, Matview};
    let dir = tempfile::tempdir().unwrap();
    let mut view = Matview::create(&dir.path().join("v.sqlite"), &one_column()).unwrap();
    let row = |i: usize| Fresh {
        key: vec![i as u8],
        source_keys: vec![vec![i as u8]],
        cells: format!("[\"row {i:03} {}\"]", "x".repeat(60)),
    };
    let mut rows = Vec::new();
    for i in 0..50 {
        rows.push(row(i));
        view.resync(rows.clone()).unwrap(); // one insert logged per call
    }
    assert_eq!(view.last_change(), 50);
    let per_change = row(0).cells.len() as u64 + CHANGE_OVERHEAD as u64;
    assert_eq!(view.log_bytes().unwrap(), 50 * per_change);
    // Count and age alone keep everything (nothing is old enough)...
    assert_eq!(view.prune(0, 3_600_000, u64::MAX).unwrap(), 0);
    // ...but a cap of 10.5 changes keeps the newest 10.
    let cap = 10 * per_change + per_change / 2;
    assert_eq!(view.prune(1_000_000, 3_600_000, cap).unwrap(), 40);
    assert_eq!(view.oldest_change().unwrap(), 41);
    assert_eq!(view.log_bytes().unwrap(), 10 * per_change);
    let kept = view.changes_between(0, 50).unwrap();
    assert_eq!(kept.first().map(|c| c.id), Some(41));
    assert_eq!(kept.len(), 10);
    // Exactly at the cap: nothing more goes.
    assert_eq!(
        view.prune(1_000_000, 3_600_000, 10 * per_change).unwrap(),
        0
    );
    // Pruned to nothing, the log's last id survives a reopen: the next
    // change is 51, not 1 (a client resuming from 50 must not miss it).
    assert_eq!(view.prune(1_000_000, 3_600_000, 0).unwrap(), 10);
    drop(view);
    let (mut view, _) = Matview::open(&dir.path().join("v.sqlite")).unwrap();
    assert_eq!(view.last_change(), 50);
    rows.push(row(50));
    view.resync(rows).unwrap();
    assert_eq!(view.last_change(), 51);
    assert_eq!(view.changes_between(50, 51).unwrap().len(), 1);
}

/// Reopened with changes still in its log, a view continues from the
/// log's largest id.
#[test]
fn a_reopened_view_continues_its_change_ids() {
    use corro_subs::diff::Fresh;
    use corro_subs::matview::Matview;
    let dir = tempfile::tempdir().unwrap();
    let mut view = Matview::create(&dir.path().join("v.sqlite"), &one_column()).unwrap();
    let mut rows = Vec::new();
    for i in 0..5u8 {
        rows.push(Fresh {
            key: vec![i],
            source_keys: vec![vec![i]],
            cells: format!("[{i}]"),
        });
        view.resync(rows.clone()).unwrap();
    }
    drop(view);
    let (view, _) = Matview::open(&dir.path().join("v.sqlite")).unwrap();
    assert_eq!(view.last_change(), 5);
}

/// One-table subscriptions are matched against a change together; only
/// those whose condition the row meets now, or whose result held it, re-read
/// it, and each still sees exactly its own inserts, updates and deletes
/// (aliases, keys moving between results, rows moving out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_reach_exactly_the_subscriptions_they_affect() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    for i in 0..30 {
        exec(
            &s,
            "INSERT INTO todos (id, title, done) VALUES (?, ?, ?)",
            &[
                format!("r{i}").into(),
                format!("t{i}").into(),
                (i % 10).into(),
            ],
        );
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let subs = Subscriptions::start(s.clone(), config(dir.path()), stop).unwrap();
    let mut ls = Vec::new();
    for k in 0..10 {
        let sql = if k % 2 == 0 {
            format!("SELECT id, title FROM todos WHERE done = {k}")
        } else {
            format!("SELECT x.id, x.title FROM todos AS x WHERE x.done = {k}")
        };
        let mut l = subs.subscribe(&sql, Params::None, None).await.unwrap();
        assert_eq!(initial(&mut l).await.len(), 5, "{sql}");
        ls.push(l);
    }
    // r1 moves from done = 1 to done = 2: a delete in 1, an insert in 2.
    exec(&s, "UPDATE todos SET done = 2 WHERE id = 'r1'", &[]);
    // r3 changes title, stays in 3: an update there only.
    exec(&s, "UPDATE todos SET title = 'T3' WHERE id = 'r3'", &[]);
    // r5 leaves every subscription (done = 99); r7 is deleted.
    exec(&s, "UPDATE todos SET done = 99 WHERE id = 'r5'", &[]);
    exec(&s, "DELETE FROM todos WHERE id = 'r7'", &[]);
    // A row no subscription reads, then one entering 0.
    exec(
        &s,
        "INSERT INTO todos (id, title, done) VALUES ('n', 'none', 50)",
        &[],
    );
    exec(
        &s,
        "INSERT INTO todos (id, title, done) VALUES ('z', 'zero', 0)",
        &[],
    );
    let kind = |l: &str| l.split('"').nth(3).unwrap_or_default().to_string();
    let mut got: Vec<Vec<String>> = Vec::new();
    for (k, l) in ls.iter_mut().enumerate() {
        let want = match k {
            0 | 2 | 3 => 1,
            1 | 5 | 7 => 1,
            _ => 0,
        };
        let mut lines = Vec::new();
        for _ in 0..want {
            lines.push(line(&next(l).await));
        }
        got.push(lines);
    }
    assert_eq!(kind(&got[0][0]), "insert");
    assert!(got[0][0].contains("zero"), "{:?}", got[0]);
    assert_eq!(kind(&got[1][0]), "delete");
    assert!(got[1][0].contains("\"r1\""), "{:?}", got[1]);
    assert_eq!(kind(&got[2][0]), "insert");
    assert!(got[2][0].contains("\"r1\""), "{:?}", got[2]);
    assert_eq!(kind(&got[3][0]), "update");
    assert!(got[3][0].contains("T3"), "{:?}", got[3]);
    assert_eq!(kind(&got[5][0]), "delete");
    assert!(got[5][0].contains("\"r5\""), "{:?}", got[5]);
    assert_eq!(kind(&got[7][0]), "delete");
    assert!(got[7][0].contains("\"r7\""), "{:?}", got[7]);
    // Nothing else arrives anywhere: a marker write into 4 comes first.
    let before = subs.skipped();
    exec(&s, "UPDATE todos SET title = 'marker' WHERE id = 'r4'", &[]);
    for (k, l) in ls.iter_mut().enumerate() {
        if k == 4 {
            assert!(line(&next(l).await).contains("marker"));
        }
    }
    for (k, l) in ls.iter_mut().enumerate() {
        if k != 4 {
            let extra = tokio::time::timeout(Duration::from_millis(300), l.next()).await;
            assert!(
                extra.is_err(),
                "subscription {k} got an extra event: {:?}",
                extra.ok().flatten().map(|e| line(&e))
            );
        }
    }
    // The marker's round re-read in subscription 4 only.
    assert_eq!(subs.skipped() - before, 9);
    assert!(before > 0);
}

/// With a single read connection in the store's pool, restored
/// subscriptions catching up, a creation and the dispatcher's rounds all
/// run during writes without waiting on each other for ever (a read
/// connection is always taken before a subscription's view), and every
/// subscription ends with every row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_read_connection_serves_every_subscription_path() {
    let dir = tempfile::tempdir().unwrap();
    let one_reader = |dir: &Path| {
        store_with(
            dir,
            StoreOptions {
                readers: 1,
                ..StoreOptions::default()
            },
        )
    };
    let ids: Vec<_> = {
        let s = one_reader(dir.path());
        let stop = tokio_util::sync::CancellationToken::new();
        let subs = Subscriptions::start(s.clone(), config(dir.path()), stop.clone()).unwrap();
        let mut ids = Vec::new();
        for sql in [
            "SELECT id, title FROM todos",
            "SELECT id FROM todos WHERE done = 0",
        ] {
            let mut l = subs.subscribe(sql, Params::None, None).await.unwrap();
            initial(&mut l).await;
            ids.push(l.id);
        }
        stop.cancel();
        subs.stopped().await;
        ids
    };
    let s = one_reader(dir.path());
    for i in 0..50 {
        exec(
            &s,
            "INSERT INTO todos (id, title, done) VALUES (?, 't', 0)",
            &[format!("a{i}").into()],
        );
    }
    let stop = tokio_util::sync::CancellationToken::new();
    // Restored subscriptions re-run their queries while writes go on.
    let subs = Subscriptions::start(s.clone(), config(dir.path()), stop.clone()).unwrap();
    let writer = {
        let s = s.clone();
        std::thread::spawn(move || {
            for i in 0..200 {
                exec(
                    &s,
                    "INSERT INTO todos (id, title, done) VALUES (?, 't', 0)",
                    &[format!("b{i}").into()],
                );
            }
        })
    };
    let mut created = tokio::time::timeout(
        Duration::from_secs(30),
        subs.subscribe(
            "SELECT id FROM todos WHERE done = 0 AND title = 't'",
            Params::None,
            None,
        ),
    )
    .await
    .expect("creation stalled")
    .unwrap();
    initial(&mut created).await;
    writer.join().unwrap();
    let want: usize = 250;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    for id in ids.into_iter().chain([created.id]) {
        loop {
            let mut l = tokio::time::timeout(Duration::from_secs(30), subs.attach(id, None))
                .await
                .expect("attach stalled")
                .unwrap();
            let rows = initial(&mut l)
                .await
                .iter()
                .filter(|e| e.starts_with("{\"row\""))
                .count();
            if rows == want {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "subscription {id} holds {rows} of {want} rows"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    stop.cancel();
}
