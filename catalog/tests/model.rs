//! The discovery index against SQL: after random churn through the real
//! store (capture, commit, change feed), every instance's health and every
//! service's tags read from the index equal what a SQL query over the same
//! tables plus the membership view says.

#![allow(clippy::unwrap_used, reason = "tests")]

use corro_catalog::{Catalog, Liveness, MemberState, Status, Topic};
use corro_store::{SqlValue, Store, StoreOptions};
use proptest::prelude::*;

fn schema_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/schema/consul.sql")
}

fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("state.db"), StoreOptions::default()).unwrap();
    store.apply_schema_paths(&[schema_path()]).unwrap();
    (dir, store)
}

#[derive(Debug, Clone)]
enum Op {
    Service {
        node: u8,
        id: u8,
        name: u8,
        tags: Vec<u8>,
    },
    DropService {
        node: u8,
        id: u8,
    },
    Check {
        node: u8,
        id: u8,
        service: Option<u8>,
        status: u8,
        maint: bool,
    },
    DropCheck {
        node: u8,
        id: u8,
    },
    Node {
        node: u8,
        actor: u8,
    },
    DropNode {
        node: u8,
    },
    Members {
        states: Vec<u8>,
        settled: bool,
    },
}

/// Service names, two of them other spellings of one: lookups match them
/// in any case, listings keep each spelling.
const NAMES: [&str; 5] = ["web", "db", "api", "Web", "DB"];
const STATUSES: [&str; 5] = ["passing", "warning", "critical", "bogus", " PASSING "];
/// Index 0 is this agent (its real actor id is used).
const ACTORS: [&str; 4] = ["", "a1", "a2", "a3"];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..4u8, 0..4u8, 0..5u8, proptest::collection::vec(0..4u8, 0..3))
            .prop_map(|(node, id, name, tags)| Op::Service { node, id, name, tags }),
        1 => (0..4u8, 0..4u8).prop_map(|(node, id)| Op::DropService { node, id }),
        4 => (0..4u8, 0..4u8, proptest::option::of(0..4u8), 0..5u8, proptest::bool::weighted(0.1))
            .prop_map(|(node, id, service, status, maint)| Op::Check { node, id, service, status, maint }),
        1 => (0..4u8, 0..4u8).prop_map(|(node, id)| Op::DropCheck { node, id }),
        2 => (0..4u8, 0..5u8).prop_map(|(node, actor)| Op::Node { node, actor }),
        1 => (0..4u8).prop_map(|node| Op::DropNode { node }),
        1 => (proptest::collection::vec(0..4u8, 3), any::<bool>())
            .prop_map(|(states, settled)| Op::Members { states, settled }),
    ]
}

fn text(s: impl Into<String>) -> SqlValue {
    SqlValue::Text(s.into())
}

fn check_id(id: u8, service: Option<u8>, maint: bool) -> String {
    match (maint, service) {
        (true, None) => "_node_maintenance".into(),
        (true, Some(s)) => format!("_service_maintenance:s{s}"),
        (false, _) => format!("c{id}"),
    }
}

/// Applies one op; returns the membership view when it changed.
type Members = Vec<(String, MemberState, Option<f64>)>;

fn apply(store: &Store, op: &Op) -> Option<(Members, bool)> {
    let write = |sql: &str, params: Vec<SqlValue>| {
        store.transact(|tx| tx.execute(sql, &params)).unwrap();
    };
    match op {
        Op::Service { node, id, name, tags } => {
            let tags: Vec<String> = tags.iter().map(|t| format!("t{t}")).collect();
            write(
                "INSERT INTO consul_services (node, id, name, tags, port) VALUES (?, ?, ?, ?, 80)
                 ON CONFLICT (node, id) DO UPDATE SET name = excluded.name, tags = excluded.tags",
                vec![
                    text(format!("n{node}")),
                    text(format!("s{id}")),
                    text(NAMES[*name as usize]),
                    text(serde_json::to_string(&tags).unwrap()),
                ],
            );
        }
        Op::DropService { node, id } => write(
            "DELETE FROM consul_services WHERE node = ? AND id = ?",
            vec![text(format!("n{node}")), text(format!("s{id}"))],
        ),
        Op::Check { node, id, service, status, maint } => write(
            "INSERT INTO consul_checks (node, id, service_id, status) VALUES (?, ?, ?, ?)
             ON CONFLICT (node, id) DO UPDATE SET service_id = excluded.service_id, status = excluded.status",
            vec![
                text(format!("n{node}")),
                text(check_id(*id, *service, *maint)),
                text(service.map(|s| format!("s{s}")).unwrap_or_default()),
                text(STATUSES[*status as usize]),
            ],
        ),
        Op::DropCheck { node, id } => write(
            "DELETE FROM consul_checks WHERE node = ? AND id = ?",
            vec![text(format!("n{node}")), text(format!("c{id}"))],
        ),
        Op::Node { node, actor } => write(
            "INSERT OR REPLACE INTO consul_nodes (node, actor_id) VALUES (?, ?)",
            vec![
                text(format!("n{node}")),
                text(match *actor {
                    0 => store.actor_id().to_string(),
                    a => ACTORS.get(a as usize).copied().unwrap_or("").to_string(),
                }),
            ],
        ),
        Op::DropNode { node } => write(
            "DELETE FROM consul_nodes WHERE node = ?",
            vec![text(format!("n{node}"))],
        ),
        Op::Members { states, settled } => {
            let members = states
                .iter()
                .enumerate()
                .filter_map(|(i, s)| {
                    let state = match s {
                        0 => MemberState::Alive,
                        1 => MemberState::Suspect,
                        2 => MemberState::Down,
                        _ => return None,
                    };
                    Some((ACTORS[i + 1].to_string(), state, None))
                })
                .collect();
            return Some((members, *settled));
        }
    }
    None
}

fn rank(s: Status) -> i64 {
    match s {
        Status::Passing => 0,
        Status::Warning => 1,
        Status::Critical => 2,
        Status::Maintenance => 3,
    }
}

/// (node, id, status rank) of every instance of `name`, by SQL.
fn sql_instances(
    store: &Store,
    name: &str,
    members: &[(String, MemberState, Option<f64>)],
    settled: bool,
    local: &str,
) -> Vec<(String, String, i64)> {
    let mut values = String::from("SELECT NULL AS actor, NULL AS state WHERE 0");
    for (a, s, _) in members {
        let s = match s {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Down => "down",
        };
        values.push_str(&format!(" UNION ALL SELECT '{a}', '{s}'"));
    }
    let sql = format!(
        "WITH members AS ({values}),
         down(node) AS (
           SELECT n.node FROM consul_nodes n
           WHERE n.actor_id <> '' AND n.actor_id <> ?2 AND (
             (SELECT state FROM members WHERE actor = n.actor_id) = 'down'
             OR ((SELECT state FROM members WHERE actor = n.actor_id) IS NULL AND ?3)))
         SELECT s.node, s.id, max(
           coalesce((SELECT max(CASE
               WHEN (c.id = '_node_maintenance' OR substr(c.id, 1, 21) = '_service_maintenance:')
                    AND lower(trim(c.status)) <> 'passing' THEN 3
               WHEN lower(trim(c.status)) = 'passing' THEN 0
               WHEN lower(trim(c.status)) = 'warning' THEN 1
               ELSE 2 END)
             FROM consul_checks c WHERE c.node = s.node AND (c.service_id = '' OR c.service_id = s.id)), 0),
           CASE WHEN s.node IN (SELECT node FROM down) THEN 2 ELSE 0 END)
         FROM consul_services s WHERE lower(s.name) = lower(?1) ORDER BY s.node, s.id"
    );
    let conn = store.reader();
    let mut st = conn.prepare(&sql).unwrap();
    st.query_map(rusqlite::params![name, local, settled], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

fn sql_tags(store: &Store, name: &str) -> Option<Vec<String>> {
    let conn = store.reader();
    let n: i64 = conn
        .query_row(
            "SELECT count(*) FROM consul_services WHERE name = ?",
            [name],
            |r| r.get(0),
        )
        .unwrap();
    if n == 0 {
        return None;
    }
    let mut st = conn
        .prepare("SELECT DISTINCT j.value FROM consul_services s, json_each(s.tags) j WHERE s.name = ? ORDER BY 1")
        .unwrap();
    Some(
        st.query_map([name], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect(),
    )
}

fn compare(
    store: &Store,
    catalog: &Catalog,
    members: &[(String, MemberState, Option<f64>)],
    settled: bool,
) {
    let index = catalog.read();
    let local = index.local_actor().to_string();
    for name in NAMES {
        let from_index: Vec<(String, String, i64)> = index
            .instances(name)
            .iter()
            .map(|i| (i.service.node.clone(), i.service.id.clone(), rank(i.status)))
            .collect();
        let from_sql = sql_instances(store, name, members, settled, &local);
        assert_eq!(from_index, from_sql, "instances of {name}");
        let tags = index
            .service_names()
            .get(name)
            .map(|t| t.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(tags, sql_tags(store, name), "tags of {name}");
    }
}

/// Each service's full answer (instances with nodes, checks, health) and
/// its topic index.
/// Every catalog topic the ops can move, with held queries' spellings.
fn watched_topics() -> Vec<Topic> {
    let mut topics: Vec<Topic> = NAMES
        .iter()
        .map(|n| Topic::Service(n.to_string()))
        .collect();
    topics.extend((0..4).map(|n| Topic::Node(format!("n{n}"))));
    topics.extend((0..4).map(|n| Topic::Node(format!("N{n}"))));
    topics.extend([Topic::Services, Topic::Nodes, Topic::Checks, Topic::Claims]);
    topics
}

/// One watch per topic, with the topic's index when it was made and the
/// index of unstamped topics then.
type Watches = Vec<(Topic, u64, u64, corro_catalog::TopicWatch)>;

fn watch_all(catalog: &Catalog) -> Watches {
    watched_topics()
        .into_iter()
        .map(|t| {
            let w = catalog.watch(std::slice::from_ref(&t));
            let index = catalog.read();
            (t.clone(), index.topic_index([&t]), index.floors().0, w)
        })
        .collect()
}

fn woken(w: &mut corro_catalog::TopicWatch) -> bool {
    use futures::FutureExt;
    matches!(w.changed().now_or_never(), Some(Ok(())))
}

fn answers(catalog: &Catalog) -> Vec<(String, (u64, String))> {
    let index = catalog.read();
    NAMES
        .iter()
        .map(|name| {
            let topic = Topic::Service(name.to_string());
            (
                name.to_string(),
                (
                    index.topic_index(&[topic]),
                    format!("{:?}", index.instances(name)),
                ),
            )
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn the_index_equals_sql_after_random_churn(ops in proptest::collection::vec(op(), 1..60)) {
        let (_dir, store) = open();
        let catalog = Catalog::open(&store, None).unwrap();
        let mut members = Vec::new();
        let mut settled = false;
        let mut seen = answers(&catalog);
        let mut watches = watch_all(&catalog);
        for (i, op) in ops.iter().enumerate() {
            if let Some((m, s)) = apply(&store, op) {
                members = m;
                settled = s;
                catalog.set_membership(members.clone(), settled).unwrap();
            }
            // Process now and then, so batches of several commits are
            // re-read together too.
            if i % 3 == 0 {
                catalog.process_pending().unwrap();
                compare(&store, &catalog, &members, settled);
                // Whatever answer changed, its topic's index moved (what
                // blocking queries and cached answers rely on).
                let now = answers(&catalog);
                for ((name, (was_idx, was)), (_, (idx, is))) in seen.iter().zip(&now) {
                    prop_assert!(was == is || idx > was_idx, "{name} changed without its index moving");
                }
                seen = now;
                // A held query is woken exactly when its topic changed: it
                // moved to a stamp of its own, or from one (removed). A
                // topic that only followed the floor of unstamped topics
                // (something else was removed) stays asleep; its answer is
                // the same. Membership changes included.
                for (t, was, floor, w) in &mut watches {
                    let (idx, floor_now) = {
                        let index = catalog.read();
                        (index.topic_index([&*t]), index.floors().0)
                    };
                    let changed = idx > *was && (idx != floor_now || *was != *floor);
                    let woke = woken(w);
                    prop_assert!(!changed || woke, "{t:?} moved {was} -> {idx} without waking its watchers");
                    prop_assert!(!woke || idx > *was, "{t:?} woken without moving ({was})");
                }
                watches = watch_all(&catalog);
            }
        }
        catalog.process_pending().unwrap();
        compare(&store, &catalog, &members, settled);
        // A catalog loaded from scratch agrees with the one kept current.
        let fresh = Catalog::open(&store, None).unwrap();
        fresh.set_membership(members.clone(), settled).unwrap();
        compare(&store, &fresh, &members, settled);
    }
}

#[test]
fn membership_down_makes_a_node_critical_and_back() {
    let (_dir, store) = open();
    let catalog = Catalog::open(&store, None).unwrap();
    apply(&store, &Op::Node { node: 1, actor: 1 });
    apply(
        &store,
        &Op::Service {
            node: 1,
            id: 1,
            name: 0,
            tags: vec![],
        },
    );
    catalog.process_pending().unwrap();
    let status = |c: &Catalog| c.read().instances("web")[0].status;
    assert_eq!(
        status(&catalog),
        Status::Passing,
        "unknown actor before membership settles"
    );
    let before = catalog.read().topic_index(&[Topic::Service("web".into())]);
    catalog
        .set_membership(vec![("a1".into(), MemberState::Suspect, None)], true)
        .unwrap();
    assert_eq!(
        status(&catalog),
        Status::Passing,
        "suspect is not critical yet"
    );
    catalog
        .set_membership(vec![("a1".into(), MemberState::Down, None)], true)
        .unwrap();
    assert_eq!(status(&catalog), Status::Critical);
    assert_eq!(catalog.read().liveness("n1"), Liveness::Down);
    let checks = catalog.read().instances("web")[0].checks.clone();
    assert_eq!(checks[0].id, "serfHealth");
    assert_eq!(checks[0].status, Status::Critical);
    let after = catalog.read().topic_index(&[Topic::Service("web".into())]);
    assert!(after > before);
    catalog.set_membership(vec![], true).unwrap();
    assert_eq!(
        status(&catalog),
        Status::Critical,
        "unknown to a settled view: down"
    );
    catalog
        .set_membership(vec![("a1".into(), MemberState::Alive, None)], true)
        .unwrap();
    assert_eq!(status(&catalog), Status::Passing, "back");
}

#[test]
fn a_change_to_one_service_does_not_move_another_services_index() {
    let (_dir, store) = open();
    let catalog = Catalog::open(&store, None).unwrap();
    apply(
        &store,
        &Op::Service {
            node: 1,
            id: 1,
            name: 0,
            tags: vec![],
        },
    );
    apply(
        &store,
        &Op::Service {
            node: 2,
            id: 1,
            name: 1,
            tags: vec![],
        },
    );
    catalog.process_pending().unwrap();
    let idx = |t: Topic| catalog.read().topic_index(&[t]);
    let (web, db) = (
        idx(Topic::Service("web".into())),
        idx(Topic::Service("db".into())),
    );
    apply(
        &store,
        &Op::Check {
            node: 1,
            id: 0,
            service: Some(1),
            status: 2,
            maint: false,
        },
    );
    catalog.process_pending().unwrap();
    assert!(idx(Topic::Service("web".into())) > web);
    assert_eq!(idx(Topic::Service("db".into())), db);
    // A node-level check on node 2 moves db (every service of node 2).
    apply(
        &store,
        &Op::Check {
            node: 2,
            id: 0,
            service: None,
            status: 1,
            maint: false,
        },
    );
    catalog.process_pending().unwrap();
    assert!(idx(Topic::Service("db".into())) > db);
    // Re-writing identical content changes nothing.
    let now = catalog.read().current();
    apply(
        &store,
        &Op::Check {
            node: 2,
            id: 0,
            service: None,
            status: 1,
            maint: false,
        },
    );
    catalog.process_pending().unwrap();
    assert_eq!(catalog.read().current(), now);
}

#[test]
fn the_index_never_goes_back_across_restarts() {
    let (dir, store) = open();
    let path = dir.path().join("consul-index");
    let first = Catalog::open(&store, Some(&path)).unwrap();
    apply(
        &store,
        &Op::Service {
            node: 1,
            id: 1,
            name: 0,
            tags: vec![],
        },
    );
    first.process_pending().unwrap();
    let seen = first.read().topic_index(&[Topic::Service("web".into())]);
    drop(first);
    let again = Catalog::open(&store, Some(&path)).unwrap();
    let now = again.read().topic_index(&[Topic::Service("web".into())]);
    assert!(now > seen, "{now} > {seen}");
    assert!(again.read().topic_index(&[Topic::Nodes]) > 0);
}

#[test]
fn the_index_never_goes_backwards_while_reloads_race_membership_changes() {
    let (_dir, store) = open();
    let catalog = Catalog::open(&store, None).unwrap();
    apply(&store, &Op::Node { node: 1, actor: 1 });
    catalog.process_pending().unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                catalog.reload().unwrap();
            }
        });
        s.spawn(|| {
            let mut down = false;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                down = !down;
                let state = if down {
                    MemberState::Down
                } else {
                    MemberState::Alive
                };
                catalog
                    .set_membership(vec![("a1".into(), state, None)], true)
                    .unwrap();
            }
        });
        let mut last = 0;
        for _ in 0..20_000 {
            let now = catalog.read().current();
            assert!(now >= last, "index went back from {last} to {now}");
            last = now;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
}

#[test]
fn watchers_are_woken_even_when_the_counter_file_cannot_be_written() {
    let (dir, store) = open();
    let counter_dir = dir.path().join("counter");
    std::fs::create_dir(&counter_dir).unwrap();
    let catalog = Catalog::open(&store, Some(&counter_dir.join("index"))).unwrap();
    apply(&store, &Op::Node { node: 1, actor: 1 });
    catalog.process_pending().unwrap();
    // The counter's directory goes away: its next reservation (past the
    // block reserved at open) fails.
    std::fs::remove_dir_all(&counter_dir).unwrap();
    let reserved = 1 + 10_000;
    let mut rx = catalog.subscribe();
    let mut down = false;
    while catalog.read().current() < reserved {
        down = !down;
        let state = if down {
            MemberState::Down
        } else {
            MemberState::Alive
        };
        catalog
            .set_membership(vec![("a1".into(), state, None)], true)
            .unwrap();
    }
    rx.borrow_and_update();
    let flip = if down {
        MemberState::Alive
    } else {
        MemberState::Down
    };
    catalog
        .set_membership(vec![("a1".into(), flip, None)], true)
        .unwrap();
    assert!(catalog.read().current() > reserved);
    assert!(rx.has_changed().unwrap(), "watchers were not woken");
    assert!(!counter_dir.exists());
}

#[test]
fn held_queries_wake_only_for_their_own_topics() {
    let (_dir, store) = open();
    let catalog = Catalog::open(&store, None).unwrap();
    let service = |node: u8, id: u8, name: u8| Op::Service {
        node,
        id,
        name,
        tags: vec![],
    };
    apply(&store, &service(1, 1, 0));
    apply(&store, &service(2, 1, 1));
    catalog.process_pending().unwrap();
    let kv = |key: &str| {
        store
            .transact(|tx| {
                tx.execute(
                    "INSERT INTO consul_kv (key, value) VALUES (?, x'01') ON CONFLICT (key) DO UPDATE SET value = value || x'01'",
                    &[text(key)],
                )
            })
            .unwrap();
        catalog.process_pending().unwrap();
    };
    kv("app/a/x");
    kv("other/y");
    let mut web = catalog.watch(&[Topic::Service("WEB".into())]);
    let mut db = catalog.watch(&[Topic::Service("db".into())]);
    let mut key = catalog.watch(&[Topic::KvKey("app/a/x".into())]);
    let mut prefix = catalog.watch(&[Topic::KvPrefix("app/".into())]);
    let mut both = catalog.watch(&[Topic::Service("db".into()), Topic::KvKey("other/y".into())]);
    let mut any = catalog.watch(&[]);
    // A change to web wakes web (in another spelling) and the catch-all.
    apply(&store, &service(1, 2, 0));
    catalog.process_pending().unwrap();
    assert!(woken(&mut web) && woken(&mut any));
    assert!(!woken(&mut db) && !woken(&mut key) && !woken(&mut prefix) && !woken(&mut both));
    // A KV key under the prefix wakes the prefix, not the other key.
    kv("app/b");
    assert!(woken(&mut prefix) && woken(&mut any));
    assert!(!woken(&mut key) && !woken(&mut web) && !woken(&mut db) && !woken(&mut both));
    // The exact key wakes its watcher and the prefix.
    kv("app/a/x");
    assert!(woken(&mut key) && woken(&mut prefix));
    assert!(!woken(&mut both));
    // A watch on two topics wakes for either.
    kv("other/y");
    assert!(woken(&mut both) && !woken(&mut key) && !woken(&mut prefix));
    apply(
        &store,
        &Op::Check {
            node: 2,
            id: 0,
            service: Some(1),
            status: 2,
            maint: false,
        },
    );
    catalog.process_pending().unwrap();
    assert!(woken(&mut both) && woken(&mut db) && !woken(&mut web));
    // A service that goes away wakes its own watchers only (the floor of
    // unstamped topics moves; no other answer changes).
    apply(&store, &Op::DropService { node: 1, id: 2 });
    apply(&store, &Op::DropService { node: 1, id: 1 });
    catalog.process_pending().unwrap();
    assert!(woken(&mut web) && !woken(&mut db));
    // A KV key deleted wakes its key and prefixes only.
    store
        .transact(|tx| tx.execute("DELETE FROM consul_kv WHERE key = ?", &[text("other/y")]))
        .unwrap();
    catalog.process_pending().unwrap();
    assert!(woken(&mut both) && !woken(&mut key) && !woken(&mut prefix));
    // A watch made before a change is woken by it even if it waits later.
    let mut late = catalog.watch(&[Topic::Service("db".into())]);
    apply(&store, &service(2, 3, 1));
    catalog.process_pending().unwrap();
    assert!(woken(&mut late));
    assert!(!woken(&mut late), "woken twice for one change");
}
