//! Group commit: concurrent callers' transactions committed in one SQLite
//! transaction keep their own versions and results, a failing one fails
//! alone (even one that makes SQLite roll back everything), and what they
//! wrote replicates exactly as if each had committed alone.

#![allow(clippy::unwrap_used, clippy::print_stdout, reason = "test code")]

use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use corro_store::{Committed, Store, StoreError, StoreOptions};

const TODOS: &str = "CREATE TABLE todos (id BLOB NOT NULL PRIMARY KEY, title TEXT NOT NULL DEFAULT '', completed_at INTEGER);";

fn open(dir: &Path, name: &str) -> Store {
    let s = Store::open(dir.join(name), StoreOptions::default()).unwrap();
    let schema = dir.join(format!("{name}.sql"));
    std::fs::write(&schema, TODOS).unwrap();
    s.apply_schema_paths(&[schema]).unwrap();
    s
}

fn titles(s: &Store) -> Vec<(String, String)> {
    let r = s.reader();
    let mut stmt = r
        .prepare("SELECT id, title FROM todos ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

fn insert_grouped(
    s: &Store,
    sql: &'static str,
    id: String,
) -> Result<Committed<usize>, StoreError> {
    s.transact_grouped(move |tx| tx.execute(sql, &[id.clone().into(), "t".into()]))
}

fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Holds the writer (an ungrouped transaction that waits) until the
/// returned sender is used, so grouped transactions queue up behind it.
fn hold_writer(s: &Store) -> (mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    let (held_tx, held_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let s = s.clone();
    let t = std::thread::spawn(move || {
        s.transact(|_| {
            held_tx.send(()).unwrap();
            release_rx.recv().unwrap();
            Ok(())
        })
        .unwrap();
    });
    held_rx.recv().unwrap();
    (release_tx, t)
}

#[test]
fn queued_transactions_commit_as_one_group_with_their_own_versions() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(dir.path(), "a.db");
    let b = open(dir.path(), "b.db");
    let (release, holder) = hold_writer(&a);
    let callers: Vec<_> = (0..8)
        .map(|i| {
            let a = a.clone();
            std::thread::spawn(move || {
                insert_grouped(
                    &a,
                    "INSERT INTO todos (id, title) VALUES (?, ?)",
                    format!("r{i}"),
                )
            })
        })
        .collect();
    wait_for("8 queued transactions", || a.group_stats().waiting == 8);
    release.send(()).unwrap();
    holder.join().unwrap();
    let mut versions: Vec<u64> = callers
        .into_iter()
        .map(|c| {
            let c = c.join().unwrap().unwrap();
            assert_eq!(c.value, 1, "each caller gets its own result");
            c.version.unwrap()
        })
        .collect();
    versions.sort();
    assert_eq!(
        versions,
        (1..=8).collect::<Vec<_>>(),
        "consecutive, one each"
    );
    let g = a.group_stats();
    assert_eq!(
        (g.groups, g.transactions),
        (1, 8),
        "one commit for all 8: {g:?}"
    );
    // Under concurrent load, every transaction lands exactly once.
    let workers: Vec<_> = (0..8)
        .map(|t| {
            let a = a.clone();
            std::thread::spawn(move || {
                (0..50)
                    .map(|i| {
                        insert_grouped(
                            &a,
                            "INSERT INTO todos (id, title) VALUES (?, ?)",
                            format!("w{t}-{i}"),
                        )
                        .unwrap()
                        .version
                        .unwrap()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all: Vec<u64> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    all.sort();
    assert_eq!(all, (9..=408).collect::<Vec<_>>());
    assert_eq!(a.head(), 408);
    assert_eq!(titles(&a).len(), 408);
    // Another node applying every version ends identical.
    b.apply(a.changes_for(a.actor_id(), 1..=408).unwrap())
        .unwrap();
    assert_eq!(titles(&b), titles(&a));
    assert_eq!(b.books(), a.books());
    a.verify().unwrap();
    b.verify().unwrap();
}

#[test]
fn a_failing_transaction_fails_alone_even_when_sqlite_rolls_back_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(dir.path(), "a.db");
    a.transact(|tx| tx.execute("INSERT INTO todos (id, title) VALUES ('dup', 'first')", &[]))
        .unwrap();
    let (release, holder) = hold_writer(&a);
    let spawn = |sql: &'static str, id: &str| {
        let (a, id) = (a.clone(), id.to_string());
        std::thread::spawn(move || insert_grouped(&a, sql, id))
    };
    let plain = "INSERT INTO todos (id, title) VALUES (?, ?)";
    let good1 = spawn(plain, "g1");
    wait_for("1 queued", || a.group_stats().waiting == 1);
    // A constraint error: SQLite undoes the statement only.
    let dup = spawn(plain, "dup");
    wait_for("2 queued", || a.group_stats().waiting == 2);
    let good2 = spawn(plain, "g2");
    wait_for("3 queued", || a.group_stats().waiting == 3);
    // OR ROLLBACK: SQLite rolls back the whole (shared) transaction.
    let killer = spawn(
        "INSERT OR ROLLBACK INTO todos (id, title) VALUES (?, ?)",
        "dup",
    );
    wait_for("4 queued", || a.group_stats().waiting == 4);
    let panicky = {
        let a = a.clone();
        std::thread::spawn(move || {
            a.transact_grouped(|tx| {
                tx.execute("INSERT INTO todos (id, title) VALUES ('p', 'x')", &[])?;
                if std::hint::black_box(true) {
                    panic!("a caller's code panics mid-transaction");
                }
                Ok(())
            })
        })
    };
    wait_for("5 queued", || a.group_stats().waiting == 5);
    let good3 = spawn(plain, "g3");
    wait_for("6 queued", || a.group_stats().waiting == 6);
    release.send(()).unwrap();
    holder.join().unwrap();
    let v1 = good1.join().unwrap().unwrap().version.unwrap();
    let v2 = good2.join().unwrap().unwrap().version.unwrap();
    let v3 = good3.join().unwrap().unwrap().version.unwrap();
    assert_eq!((v1, v2, v3), (2, 3, 4), "in arrival order, no gaps");
    let e = dup.join().unwrap().unwrap_err();
    assert!(e.to_string().contains("UNIQUE"), "{e}");
    let e = killer.join().unwrap().unwrap_err();
    assert!(e.to_string().contains("UNIQUE"), "{e}");
    match panicky.join() {
        Err(_) => {} // it led the group: its own panic comes back to it
        Ok(r) => assert!(r.is_err(), "a panicking transaction cannot commit"),
    }
    assert_eq!(
        titles(&a),
        [("dup", "first"), ("g1", "t"), ("g2", "t"), ("g3", "t")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
    );
    let g = a.group_stats();
    assert_eq!(g.reruns, 1, "{g:?}");
    assert_eq!(a.head(), 4);
    a.verify().unwrap();
    // The store still takes writes, grouped or not.
    insert_grouped(&a, plain, "after".into()).unwrap();
    a.transact(|tx| tx.execute("INSERT INTO todos (id, title) VALUES ('after2', 'x')", &[]))
        .unwrap();
    assert_eq!(a.head(), 6);
    a.verify().unwrap();
}

#[test]
fn hostile_rollbacks_cost_each_neighbour_at_most_one_extra_run() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let a = open(dir.path(), "a.db");
    a.transact(|tx| tx.execute("INSERT INTO todos (id, title) VALUES ('dup', 'first')", &[]))
        .unwrap();
    let (release, holder) = hold_writer(&a);
    let mut callers = Vec::new();
    let mut runs = Vec::new();
    for i in 0..12 {
        let hostile = i % 3 == 2;
        let count = Arc::new(AtomicUsize::new(0));
        runs.push((hostile, count.clone()));
        let a2 = a.clone();
        callers.push(std::thread::spawn(move || {
            a2.transact_grouped(move |tx| {
                count.fetch_add(1, Ordering::Relaxed);
                if hostile {
                    tx.execute(
                        "INSERT OR ROLLBACK INTO todos (id, title) VALUES ('dup', 'x')",
                        &[],
                    )
                } else {
                    tx.execute(
                        "INSERT INTO todos (id, title) VALUES (?, 'ok')",
                        &[format!("g{i}").into()],
                    )
                }
            })
        }));
        let queued = i + 1;
        wait_for("queued", || a.group_stats().waiting == queued);
    }
    release.send(()).unwrap();
    holder.join().unwrap();
    let mut versions = Vec::new();
    for (c, (hostile, count)) in callers.into_iter().zip(&runs) {
        let r = c.join().unwrap();
        assert_eq!(r.is_err(), *hostile);
        if let Ok(c) = r {
            versions.push(c.version.unwrap());
        }
        assert!(
            count.load(Ordering::Relaxed) <= 2,
            "a transaction ran more than twice"
        );
    }
    assert_eq!(versions, (2..=9).collect::<Vec<_>>());
    assert_eq!(a.group_stats().reruns, 4);
    assert_eq!(titles(&a).len(), 9);
    a.verify().unwrap();
}

#[test]
fn a_panicking_commit_listener_does_not_stall_later_writes() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let a = open(dir.path(), "a.db");
    let armed = Arc::new(AtomicBool::new(true));
    let trip = armed.clone();
    a.on_local_commit(Arc::new(move |_| {
        if trip.swap(false, Ordering::Relaxed) {
            panic!("a listener fails once");
        }
    }));
    let first = std::thread::spawn({
        let a = a.clone();
        move || {
            insert_grouped(
                &a,
                "INSERT INTO todos (id, title) VALUES (?, ?)",
                "p".into(),
            )
        }
    })
    .join();
    // Its own caller sees the panic (as with `transact`) or an error.
    assert!(first.is_err() || first.unwrap().is_err());
    assert!(!armed.load(Ordering::Relaxed));
    // Later grouped writes are led and answered as usual.
    let c = insert_grouped(
        &a,
        "INSERT INTO todos (id, title) VALUES (?, ?)",
        "q".into(),
    )
    .unwrap();
    assert!(c.version.is_some());
}

/// Queues an insert through `submit_grouped`; the outcome arrives on the
/// returned channel. A lead handed to this caller runs on a new thread, as
/// an async caller would run it on a blocking one.
fn submit(
    s: &Store,
    sql: &'static str,
    id: String,
) -> mpsc::Receiver<Result<Committed<usize>, StoreError>> {
    let (tx, rx) = mpsc::channel();
    let lead = s
        .submit_grouped(
            move |t| t.execute(sql, &[id.clone().into(), "t".into()]),
            move |r| {
                let _ = tx.send(r);
            },
        )
        .unwrap();
    if let Some(lead) = lead {
        std::thread::spawn(move || lead.run());
    }
    rx
}

#[test]
fn submitted_transactions_are_answered_by_callback_and_share_groups_with_waiting_callers() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(dir.path(), "a.db");
    let b = open(dir.path(), "b.db");
    const INSERT: &str = "INSERT INTO todos (id, title) VALUES (?, ?)";
    // Queued behind a held writer: one group, consecutive versions, and a
    // failing one fails alone.
    let (release, holder) = hold_writer(&a);
    let mut pending: Vec<_> = (0..6)
        .map(|i| submit(&a, INSERT, format!("s{i}")))
        .collect();
    pending.insert(3, submit(&a, INSERT, "s0".into())); // duplicate key
    wait_for("7 queued transactions", || a.group_stats().waiting == 7);
    release.send(()).unwrap();
    holder.join().unwrap();
    let outcomes: Vec<_> = pending
        .into_iter()
        .map(|rx| rx.recv_timeout(Duration::from_secs(20)).unwrap())
        .collect();
    assert!(
        matches!(&outcomes[3], Err(e) if e.to_string().contains("UNIQUE")),
        "{:?}",
        outcomes[3].as_ref().err()
    );
    let versions: Vec<u64> = outcomes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3)
        .map(|(_, o)| o.as_ref().unwrap().version.unwrap())
        .collect();
    assert_eq!(versions, (1..=6).collect::<Vec<_>>(), "in queue order");
    assert_eq!(a.group_stats().groups, 1, "{:?}", a.group_stats());
    // Callback callers and a caller waiting on its thread, queued together:
    // one group, versions in queue order.
    let (release, holder) = hold_writer(&a);
    let mut pending = vec![
        submit(&a, INSERT, "x1".into()),
        submit(&a, INSERT, "x2".into()),
    ];
    wait_for("2 queued", || a.group_stats().waiting == 2);
    let waiting = {
        let a = a.clone();
        std::thread::spawn(move || insert_grouped(&a, INSERT, "x3".into()))
    };
    wait_for("3 queued", || a.group_stats().waiting == 3);
    pending.push(submit(&a, INSERT, "x4".into()));
    wait_for("4 queued", || a.group_stats().waiting == 4);
    let groups = a.group_stats().groups;
    release.send(()).unwrap();
    holder.join().unwrap();
    let got: Vec<u64> = pending
        .into_iter()
        .map(|rx| {
            rx.recv_timeout(Duration::from_secs(20))
                .unwrap()
                .unwrap()
                .version
                .unwrap()
        })
        .collect();
    let mine = waiting.join().unwrap().unwrap().version.unwrap();
    assert_eq!((got, mine), (vec![7, 8, 10], 9));
    assert_eq!(a.group_stats().groups, groups + 1, "one group for all four");
    // Callback callers and waiting callers mixed under load: every
    // transaction lands exactly once, and the queue always drains.
    let workers: Vec<_> = (0..8)
        .map(|t| {
            let a = a.clone();
            std::thread::spawn(move || {
                (0..40)
                    .map(|i| {
                        let id = format!("m{t}-{i}");
                        let c = if t % 2 == 0 {
                            submit(&a, INSERT, id)
                                .recv_timeout(Duration::from_secs(20))
                                .unwrap()
                        } else {
                            insert_grouped(&a, INSERT, id)
                        };
                        c.unwrap().version.unwrap()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all: Vec<u64> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    all.sort();
    assert_eq!(all, (11..=330).collect::<Vec<_>>());
    assert_eq!(a.group_stats().waiting, 0);
    // A lead dropped unrun still runs the queue.
    wait_for("the last leader to finish", || !a.group_stats().leading);
    let (tx, rx) = mpsc::channel();
    let lead = a
        .submit_grouped(
            |t| t.execute(INSERT, &["dropped".into(), "t".into()]),
            move |r| {
                let _ = tx.send(r);
            },
        )
        .unwrap();
    assert!(lead.is_some(), "nobody else was leading");
    drop(lead);
    assert_eq!(rx.try_recv().unwrap().unwrap().version, Some(331));
    b.apply(a.changes_for(a.actor_id(), 1..=a.head()).unwrap())
        .unwrap();
    assert_eq!(titles(&b), titles(&a));
    a.verify().unwrap();
    b.verify().unwrap();
}

/// A job whose transaction blocks until told to go on, so the group it is
/// in stays running; returns (started, go on).
fn blocking_job() -> (
    mpsc::Receiver<()>,
    mpsc::Sender<()>,
    impl FnMut(&mut corro_store::WriteTx<'_>) -> Result<usize, StoreError> + Send + 'static,
) {
    let (started_tx, started_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let go_rx = std::sync::Mutex::new(go_rx);
    let job = move |t: &mut corro_store::WriteTx<'_>| {
        let _ = started_tx.send(());
        let _ = go_rx.lock().unwrap().recv();
        t.execute(
            "INSERT INTO todos (id, title) VALUES ('blocker', 't') ON CONFLICT (id) DO UPDATE SET title = title || '+'",
            &[],
        )
    };
    (started_rx, go_tx, job)
}

#[test]
fn the_lead_passes_between_callback_leaders_and_waiting_callers() {
    const INSERT: &str = "INSERT INTO todos (id, title) VALUES (?, ?)";
    let dir = tempfile::tempdir().unwrap();
    let a = open(dir.path(), "a.db");
    // 1. A callback leader's group is running; a caller that waits on its
    //    thread queues behind it, then a callback job: after the group the
    //    waiting caller's thread leads, and takes the callback job along.
    let (started, go, job) = blocking_job();
    let (tx, first) = mpsc::channel();
    let lead = a
        .submit_grouped(job, move |r| {
            let _ = tx.send(r);
        })
        .unwrap()
        .expect("nobody was leading");
    let leader = std::thread::spawn(move || lead.run());
    started.recv().unwrap();
    let waiting = {
        let a = a.clone();
        std::thread::spawn(move || insert_grouped(&a, INSERT, "w".into()))
    };
    wait_for("the waiting caller queued", || a.group_stats().waiting == 1);
    let after = submit(&a, INSERT, "c".into());
    wait_for("both queued", || a.group_stats().waiting == 2);
    let groups = a.group_stats().groups;
    go.send(()).unwrap();
    leader.join().unwrap();
    assert_eq!(first.recv().unwrap().unwrap().version, Some(1));
    assert_eq!(waiting.join().unwrap().unwrap().version, Some(2));
    assert_eq!(
        after
            .recv_timeout(Duration::from_secs(20))
            .unwrap()
            .unwrap()
            .version,
        Some(3)
    );
    // The blocked group, then the waiting caller's with the callback job.
    assert_eq!(a.group_stats().groups, groups + 1, "{:?}", a.group_stats());
    // 2. A caller's thread leads and a callback job queues behind its
    //    group: the caller returns with its own outcome after one group and
    //    a fresh leader runs the callback job.
    let (started, go, job) = blocking_job();
    let (done_tx, done_rx) = mpsc::channel();
    {
        let a = a.clone();
        std::thread::spawn(move || done_tx.send(a.transact_grouped(job)));
    }
    started.recv().unwrap();
    let (started2, go2, job2) = blocking_job();
    let (tx, behind) = mpsc::channel();
    let lead = a
        .submit_grouped(job2, move |r| {
            let _ = tx.send(r);
        })
        .unwrap();
    assert!(lead.is_none(), "the caller's thread leads");
    wait_for("queued behind", || a.group_stats().waiting == 1);
    go.send(()).unwrap();
    // The callback job's group runs (and blocks) on another thread while
    // the caller has its answer.
    started2.recv().unwrap();
    let own = done_rx.recv_timeout(Duration::from_secs(20)).unwrap();
    assert_eq!(own.unwrap().version, Some(4));
    go2.send(()).unwrap();
    assert_eq!(
        behind
            .recv_timeout(Duration::from_secs(20))
            .unwrap()
            .unwrap()
            .version,
        Some(5)
    );
    // 3. A callback that panics is the only one hurt: its neighbours in
    //    the group are answered, versions stay consecutive, later writes
    //    go on.
    let (release, holder) = hold_writer(&a);
    let before = submit(&a, INSERT, "e1".into());
    let lead = a
        .submit_grouped(
            |t| t.execute(INSERT, &["e2".into(), "t".into()]),
            |_| panic!("a caller's callback fails"),
        )
        .unwrap();
    assert!(lead.is_none(), "a leader is queued already");
    let next = submit(&a, INSERT, "e3".into());
    wait_for("3 queued", || a.group_stats().waiting == 3);
    release.send(()).unwrap();
    holder.join().unwrap();
    let v = |rx: mpsc::Receiver<Result<Committed<usize>, StoreError>>| {
        rx.recv_timeout(Duration::from_secs(20))
            .unwrap()
            .unwrap()
            .version
            .unwrap()
    };
    // (The hold wrote nothing: no version.) The panicking caller's
    // transaction was written as version 7.
    assert_eq!((v(before), v(next)), (6, 8));
    assert_eq!(v(submit(&a, INSERT, "e4".into())), 9);
    assert_eq!(a.head(), 9);
    assert_eq!(titles(&a).len(), 7);
    a.verify().unwrap();
}
