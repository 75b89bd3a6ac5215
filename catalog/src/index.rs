//! The discovery index: plain state with no IO and no locks.
//!
//! Rows go in through the `upsert_*`/`remove_*` methods and membership
//! through [`Index::set_members`]; every change marks the [`Topic`]s whose
//! answers it can alter. [`Index::finish`] then stamps those topics with the
//! next index value. A reader asks [`Index::topic_index`] for the highest
//! stamp over the topics its answer depends on: that is the answer's
//! `X-Consul-Index`, and a blocked query waits until it moves.
//!
//! Marking is conservative (a topic may be marked without its answer
//! changing, never the reverse): blocking queries compare the answer itself
//! before returning early, so over-marking costs a recomputation, never a
//! spurious wake-up for the client.
//!
//! **Names.** Service, node and tag names match case-insensitively, as in
//! Consul: lookups fold the name they are given ([`fold`]) and the secondary
//! indexes are keyed by folded names, while rows keep their registered
//! spelling (answers show it). Rows themselves stay keyed as SQL keys them
//! (exact `(node, id)`), so two spellings of one node are one node to
//! readers but remain two keys to the bridge and the store.
//!
//! **Entry indexes.** Each row carries the index value at which it was
//! created and last changed ([`Entry`]); rewriting a row with identical
//! content changes neither. The synthetic `serfHealth` check of a node moves
//! its `ModifyIndex` when the node's liveness changes.
//!
//! **Bounded stamps.** Stamps are kept only for topics whose subject exists
//! (a service name with instances, a node name something refers to). When
//! the last row of a subject goes, its stamp is dropped and folded into one
//! floor value that every unknown topic reports, so an index never goes
//! backwards and the stamp table does not grow with names that came and
//! went.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use crate::health::{self, Liveness, SERF_CHECK_ID, Status};
use crate::kv::{Kv, KvEntry, KvRow};
use crate::model::{Check, Claim, Node, Service};

/// What SWIM says of a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    Alive,
    Suspect,
    Down,
}

/// What one [`Index::finish`] stamped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Moved {
    /// Catalog topics (services, nodes, checks, members, claims).
    pub catalog: bool,
    /// KV keys or directories.
    pub kv: bool,
}

/// A part of the catalog that answers depend on. Names in `Service` and
/// `Node` are folded ([`Topic::service`], [`Topic::node`]); an unfolded
/// name is folded on lookup.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Topic {
    /// Instances of one service name (their rows, checks, nodes, health).
    Service(String),
    /// One node: its row, services, checks and liveness.
    Node(String),
    /// The set of service names and their tags.
    Services,
    /// The set of nodes and their rows.
    Nodes,
    /// Any check anywhere (state listings).
    Checks,
    /// Node-name claims (bridge safety).
    Claims,
    /// One KV key (exact, case-sensitive).
    KvKey(String),
    /// Every KV key starting with this prefix (case-sensitive).
    KvPrefix(String),
}

impl Topic {
    /// True for KV keys and prefixes (woken by KV changes only).
    pub fn is_kv(&self) -> bool {
        matches!(self, Topic::KvKey(_) | Topic::KvPrefix(_))
    }

    /// The topic of service `name` (any spelling).
    pub fn service(name: &str) -> Topic {
        Topic::Service(fold(name).into_owned())
    }

    /// The topic of node `name` (any spelling).
    pub fn node(name: &str) -> Topic {
        Topic::Node(fold(name).into_owned())
    }

    /// This topic with its name folded (borrowed when it already is).
    pub(crate) fn folded(&self) -> Cow<'_, Topic> {
        match self {
            Topic::Service(n) if !is_folded(n) => Cow::Owned(Topic::service(n)),
            Topic::Node(n) if !is_folded(n) => Cow::Owned(Topic::node(n)),
            other => Cow::Borrowed(other),
        }
    }
}

/// A name as the case-insensitive indexes key it (Unicode lower case, as
/// Consul's `strings.ToLower`); borrowed when it has no upper case.
pub fn fold(name: &str) -> Cow<'_, str> {
    if is_folded(name) {
        Cow::Borrowed(name)
    } else {
        Cow::Owned(name.to_lowercase())
    }
}

fn is_folded(name: &str) -> bool {
    if name.is_ascii() {
        !name.bytes().any(|b| b.is_ascii_uppercase())
    } else {
        name.chars().all(|c| !c.is_uppercase())
    }
}

/// Whether two names are the same name to Consul (case-insensitive).
pub fn same_name(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b) || (!(a.is_ascii() && b.is_ascii()) && fold(a) == fold(b))
}

/// A row with the catalog index values of its creation and last change.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry<T> {
    pub row: T,
    pub create_index: u64,
    pub modify_index: u64,
}

impl<T> std::ops::Deref for Entry<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.row
    }
}

impl<T> Entry<T> {
    /// A row outside any index (index values 0), for callers that build
    /// entries by hand (samples, tests).
    pub fn detached(row: T) -> Entry<T> {
        Entry {
            row,
            create_index: 0,
            modify_index: 0,
        }
    }
}

/// One service instance joined with its node and checks.
#[derive(Debug, Clone)]
pub struct Instance {
    pub service: Arc<Entry<Service>>,
    /// `None` when no `consul_nodes` row names the node (yet).
    pub node: Option<Arc<Entry<Node>>>,
    /// The node's checks (node-level ones, `serfHealth` included) and the
    /// service's own, in check-id order.
    pub checks: Vec<Arc<Entry<Check>>>,
    pub status: Status,
    pub liveness: Liveness,
}

type Key = (String, String);

/// The in-memory catalog.
#[derive(Debug, Clone)]
pub struct Index {
    /// Service rows by exact (node, id).
    services: BTreeMap<Key, Arc<Entry<Service>>>,
    /// Folded service name -> its rows' keys.
    by_name: BTreeMap<String, BTreeSet<Key>>,
    /// Exact node name -> ids of its services.
    node_services: BTreeMap<String, BTreeSet<String>>,
    /// Check rows by exact (node, id).
    checks: BTreeMap<Key, Arc<Entry<Check>>>,
    /// Checks by (node, service id; "" for node-level checks), then id.
    by_target: BTreeMap<Key, BTreeMap<String, Arc<Entry<Check>>>>,
    /// Node rows by exact name.
    nodes: BTreeMap<String, Arc<Entry<Node>>>,
    /// Folded node name -> exact spellings in use, each with the number of
    /// rows (node, service, check) naming it.
    spellings: BTreeMap<String, BTreeMap<String, usize>>,
    /// When each node's liveness last changed (its `serfHealth` check's
    /// modify index).
    liveness_changed: HashMap<String, u64>,
    claims: BTreeMap<Key, i64>,
    members: HashMap<String, (MemberState, Option<f64>)>,
    /// Bumped whenever a member's state (not its RTT) changes.
    member_gen: u64,
    local_actor: String,
    settled: bool,
    /// Topics changed since the last [`Index::finish`].
    dirty: HashSet<Topic>,
    current: u64,
    /// Stamp of topics never changed since start.
    base: u64,
    /// Highest stamp dropped with a catalog subject that went away.
    gone: u64,
    /// The same for KV keys and directories (kept apart so a KV delete
    /// does not move every catalog query's index, nor the reverse).
    kv_gone: u64,
    /// What the last [`Index::finish`] stamped.
    moved: Moved,
    stamps: HashMap<Topic, u64>,
    /// The KV store (its keys carry their own modify index; prefixes are
    /// stamped per directory, see [`crate::kv`]).
    kv: Kv,
    /// Directories (hashes) changed since the last [`Index::finish`].
    kv_dirty: HashSet<u64>,
    /// A key or directory went away since the last [`Index::finish`].
    kv_removed: bool,
}

impl Index {
    /// An empty index for the agent whose actor id is `local_actor`
    /// (always alive to itself), starting at index value `start` (>= 1).
    pub fn new(local_actor: &str, start: u64) -> Index {
        let start = start.max(1);
        Index {
            services: BTreeMap::new(),
            by_name: BTreeMap::new(),
            node_services: BTreeMap::new(),
            checks: BTreeMap::new(),
            by_target: BTreeMap::new(),
            nodes: BTreeMap::new(),
            spellings: BTreeMap::new(),
            liveness_changed: HashMap::new(),
            claims: BTreeMap::new(),
            members: HashMap::new(),
            member_gen: 0,
            local_actor: local_actor.to_string(),
            settled: false,
            dirty: HashSet::new(),
            current: start,
            base: start,
            gone: 0,
            kv_gone: 0,
            moved: Moved::default(),
            stamps: HashMap::new(),
            kv: Kv::default(),
            kv_dirty: HashSet::new(),
            kv_removed: false,
        }
    }

    /// The index value of the latest change.
    pub fn current(&self) -> u64 {
        self.current
    }

    /// The value the changes made now will be stamped with.
    fn pending(&self) -> u64 {
        self.current + 1
    }

    /// Stamps every topic changed since the last call with the next index
    /// value; returns it, or `None` when nothing changed. Stamps of
    /// subjects that no longer exist are dropped (see the module doc).
    pub fn finish(&mut self) -> Option<u64> {
        if self.dirty.is_empty() && self.kv_dirty.is_empty() {
            return None;
        }
        self.current += 1;
        self.moved = Moved {
            catalog: !self.dirty.is_empty(),
            kv: !self.kv_dirty.is_empty(),
        };
        for h in std::mem::take(&mut self.kv_dirty) {
            if self.kv.has_dir(h) {
                self.kv.stamp_dir(h, self.current);
            } else {
                self.kv_removed = true;
            }
        }
        if std::mem::take(&mut self.kv_removed) {
            self.kv_gone = self.current;
        }
        for t in std::mem::take(&mut self.dirty) {
            let exists = match &t {
                Topic::Service(n) => self.by_name.contains_key(n),
                Topic::Node(n) => self.spellings.contains_key(n),
                _ => true,
            };
            if exists {
                self.stamps.insert(t, self.current);
            } else {
                self.stamps.remove(&t);
                self.gone = self.current;
            }
        }
        Some(self.current)
    }

    /// What the last [`Index::finish`] that returned a value stamped:
    /// catalog topics, KV keys, or both.
    pub fn moved(&self) -> Moved {
        self.moved
    }

    /// Topics marked since the last [`Index::finish`].
    pub fn dirty(&self) -> impl Iterator<Item = &Topic> {
        self.dirty.iter()
    }

    /// The index of unstamped catalog topics and of unstamped KV keys: a
    /// watcher of any topic without a stamp must be woken when these move.
    pub fn floors(&self) -> (u64, u64) {
        (self.base.max(self.gone), self.base.max(self.kv_gone))
    }

    /// Number of topics holding their own stamp (for metrics and tests).
    pub fn stamped_topics(&self) -> usize {
        self.stamps.len()
    }

    /// The highest stamp over `topics` (never 0).
    pub fn topic_index<'a>(&self, topics: impl IntoIterator<Item = &'a Topic>) -> u64 {
        let floor = self.base.max(self.gone);
        let kv_floor = self.base.max(self.kv_gone);
        topics
            .into_iter()
            .map(|t| match t {
                Topic::KvKey(k) => self.kv.get(k).map_or(kv_floor, |e| e.modify_index),
                Topic::KvPrefix(p) => self.kv.prefix_stamp(p).unwrap_or(kv_floor),
                t => self.stamps.get(&*t.folded()).copied().unwrap_or(floor),
            })
            .max()
            .unwrap_or(self.current)
    }

    fn touch(&mut self, t: Topic) {
        self.dirty.insert(t);
    }

    /// Marks every service of `node` (their instances' health or node data
    /// changed).
    fn touch_node_services(&mut self, node: &str) {
        let names: Vec<Topic> = self
            .spellings_of(node)
            .flat_map(|spelling| {
                self.node_services
                    .get(spelling)
                    .into_iter()
                    .flatten()
                    .filter_map(|id| self.services.get(&(spelling.clone(), id.clone())))
            })
            .map(|s| Topic::service(&s.name))
            .collect();
        for t in names {
            self.touch(t);
        }
    }

    fn add_spelling(&mut self, node: &str) {
        *self
            .spellings
            .entry(fold(node).into_owned())
            .or_default()
            .entry(node.to_string())
            .or_default() += 1;
    }

    fn drop_spelling(&mut self, node: &str) {
        let folded = fold(node);
        let Some(m) = self.spellings.get_mut(folded.as_ref()) else {
            return;
        };
        if let Some(n) = m.get_mut(node) {
            *n -= 1;
            if *n == 0 {
                m.remove(node);
            }
        }
        if m.is_empty() {
            self.spellings.remove(folded.as_ref());
        }
    }

    /// Exact node names that are spellings of `node`.
    fn spellings_of<'a>(&'a self, node: &str) -> impl Iterator<Item = &'a String> + 'a {
        self.spellings
            .get(fold(node).as_ref())
            .into_iter()
            .flat_map(|m| m.keys())
    }

    // ---- rows in ----

    /// Sets a KV key (a row of `consul_kv`); the same value and flags again
    /// change nothing (no index moves).
    pub fn upsert_kv(&mut self, row: KvRow) {
        let pending = self.pending();
        let touched = self.kv.upsert(row, pending);
        self.kv_dirty.extend(touched);
    }

    /// Removes a KV key (its row is gone).
    pub fn remove_kv(&mut self, key: &str) {
        let touched = self.kv.remove(key);
        if !touched.is_empty() {
            self.kv_removed = true;
        }
        self.kv_dirty.extend(touched);
    }

    pub fn upsert_service(&mut self, s: Service) {
        let key = (s.node.clone(), s.id.clone());
        let create = match self.services.get(&key) {
            Some(old) if old.row == s => return,
            Some(old) if same_but_time(&old.row, &s, |r| &mut r.updated_at) => {
                // Only `updated_at` (no answer shows it): no index moves.
                let e = Entry {
                    row: s,
                    create_index: old.create_index,
                    modify_index: old.modify_index,
                };
                self.services.insert(key, Arc::new(e));
                return;
            }
            Some(old) => old.create_index,
            None => self.pending(),
        };
        self.remove_service(&s.node, &s.id);
        self.touch(Topic::service(&s.name));
        self.touch(Topic::node(&s.node));
        self.touch(Topic::Services);
        self.touch(Topic::Checks);
        self.by_name
            .entry(fold(&s.name).into_owned())
            .or_default()
            .insert(key.clone());
        self.node_services
            .entry(s.node.clone())
            .or_default()
            .insert(s.id.clone());
        self.add_spelling(&s.node);
        let modify = self.pending();
        self.services.insert(
            key,
            Arc::new(Entry {
                row: s,
                create_index: create,
                modify_index: modify,
            }),
        );
    }

    pub fn remove_service(&mut self, node: &str, id: &str) {
        let key = (node.to_string(), id.to_string());
        let Some(old) = self.services.remove(&key) else {
            return;
        };
        self.touch(Topic::service(&old.name));
        self.touch(Topic::node(node));
        self.touch(Topic::Services);
        self.touch(Topic::Checks);
        remove_from(&mut self.by_name, &fold(&old.name), &key);
        remove_from(&mut self.node_services, node, &id.to_string());
        self.drop_spelling(node);
    }

    /// Marks what a check of `node` for `service_id` affects.
    fn touch_check(&mut self, node: &str, service_id: &str, service_name: &str) {
        self.touch(Topic::node(node));
        self.touch(Topic::Checks);
        if service_id.is_empty() {
            self.touch_node_services(node);
        } else {
            if let Some(s) = self
                .services
                .get(&(node.to_string(), service_id.to_string()))
            {
                let t = Topic::service(&s.name);
                self.touch(t);
            }
            if !service_name.is_empty() {
                self.touch(Topic::service(service_name));
            }
        }
    }

    pub fn upsert_check(&mut self, c: Check) {
        let key = (c.node.clone(), c.id.clone());
        let create = match self.checks.get(&key) {
            Some(old) if old.row == c => return,
            Some(old) if same_but_time(&old.row, &c, |r| &mut r.updated_at) => {
                let e = Arc::new(Entry {
                    row: c,
                    create_index: old.create_index,
                    modify_index: old.modify_index,
                });
                if let Some(m) = self
                    .by_target
                    .get_mut(&(e.node.clone(), e.service_id.clone()))
                {
                    m.insert(e.id.clone(), e.clone());
                }
                self.checks.insert(key, e);
                return;
            }
            Some(old) => old.create_index,
            None => self.pending(),
        };
        self.remove_check(&c.node, &c.id);
        self.touch_check(&c.node, &c.service_id, &c.service_name);
        self.add_spelling(&c.node);
        let modify = self.pending();
        let c = Arc::new(Entry {
            row: c,
            create_index: create,
            modify_index: modify,
        });
        self.by_target
            .entry((c.node.clone(), c.service_id.clone()))
            .or_default()
            .insert(c.id.clone(), c.clone());
        self.checks.insert(key, c);
    }

    pub fn remove_check(&mut self, node: &str, id: &str) {
        let key = (node.to_string(), id.to_string());
        let Some(old) = self.checks.remove(&key) else {
            return;
        };
        self.touch_check(node, &old.service_id, &old.service_name);
        let target = (node.to_string(), old.service_id.clone());
        if let Some(m) = self.by_target.get_mut(&target) {
            m.remove(id);
            if m.is_empty() {
                self.by_target.remove(&target);
            }
        }
        self.drop_spelling(node);
    }

    fn touch_whole_node(&mut self, node: &str) {
        self.touch(Topic::node(node));
        self.touch(Topic::Nodes);
        self.touch(Topic::Services);
        self.touch(Topic::Checks);
        self.touch_node_services(node);
    }

    pub fn upsert_node(&mut self, n: Node) {
        let create = match self.nodes.get(&n.node) {
            Some(old) if old.row == n => return,
            Some(old) if same_but_time(&old.row, &n, |r| &mut r.updated_at) => {
                // A heartbeat (the agent rewrites its row now and then):
                // nothing a reader sees changed, so nothing moves or wakes.
                let e = Entry {
                    row: n,
                    create_index: old.create_index,
                    modify_index: old.modify_index,
                };
                self.nodes.insert(e.node.clone(), Arc::new(e));
                return;
            }
            Some(old) => old.create_index,
            None => {
                self.add_spelling(&n.node);
                self.pending()
            }
        };
        self.touch_whole_node(&n.node);
        let modify = self.pending();
        self.nodes.insert(
            n.node.clone(),
            Arc::new(Entry {
                row: n,
                create_index: create,
                modify_index: modify,
            }),
        );
    }

    pub fn remove_node(&mut self, node: &str) {
        if self.nodes.remove(node).is_some() {
            self.liveness_changed.remove(node);
            self.touch_whole_node(node);
            self.drop_spelling(node);
        }
    }

    pub fn upsert_claim(&mut self, c: Claim) {
        let key = (c.node, c.actor_id);
        if self.claims.get(&key) != Some(&c.started_at) {
            self.claims.insert(key, c.started_at);
            self.touch(Topic::Claims);
        }
    }

    pub fn remove_claim(&mut self, node: &str, actor_id: &str) {
        if self
            .claims
            .remove(&(node.to_string(), actor_id.to_string()))
            .is_some()
        {
            self.touch(Topic::Claims);
        }
    }

    /// Replaces the membership view: (actor id, state, round-trip time in
    /// ms). `settled`: membership has had time to learn every live member,
    /// so an actor it does not know is down (before that, unknown actors
    /// count as alive: a freshly started agent must not report the whole
    /// cluster critical).
    pub fn set_members(
        &mut self,
        members: impl IntoIterator<Item = (String, MemberState, Option<f64>)>,
        settled: bool,
    ) {
        let before: Vec<(String, Liveness)> = self
            .nodes
            .keys()
            .map(|n| (n.clone(), self.exact_liveness(n)))
            .collect();
        // One actor can appear twice (a restarted agent's old incarnation
        // is down while the new one is alive): the liveliest entry counts.
        let rank = |s: MemberState| match s {
            MemberState::Alive => 2,
            MemberState::Suspect => 1,
            MemberState::Down => 0,
        };
        let mut map: HashMap<String, (MemberState, Option<f64>)> = HashMap::new();
        for (a, s, rtt) in members {
            match map.get(&a) {
                Some((old, _)) if rank(*old) >= rank(s) => {}
                _ => {
                    map.insert(a, (s, rtt));
                }
            }
        }
        let states_changed = map.len() != self.members.len()
            || map
                .iter()
                .any(|(a, (s, _))| self.members.get(a).is_none_or(|(old, _)| old != s));
        if states_changed {
            self.member_gen += 1;
        }
        self.members = map;
        self.settled = settled;
        let pending = self.pending();
        for (node, was) in before {
            if self.exact_liveness(&node) != was {
                self.liveness_changed.insert(node.clone(), pending);
                self.touch(Topic::node(&node));
                self.touch(Topic::Checks);
                self.touch_node_services(&node);
            }
        }
    }

    /// Replaces every row with `rows` (a full reload), changing only what
    /// differs: unchanged rows keep their entry indexes and mark nothing.
    pub fn replace_rows(&mut self, rows: Rows) {
        let keep_services: HashSet<Key> = rows
            .services
            .iter()
            .map(|s| (s.node.clone(), s.id.clone()))
            .collect();
        let gone: Vec<Key> = self
            .services
            .keys()
            .filter(|k| !keep_services.contains(*k))
            .cloned()
            .collect();
        for (n, i) in gone {
            self.remove_service(&n, &i);
        }
        let keep_checks: HashSet<Key> = rows
            .checks
            .iter()
            .map(|c| (c.node.clone(), c.id.clone()))
            .collect();
        let gone: Vec<Key> = self
            .checks
            .keys()
            .filter(|k| !keep_checks.contains(*k))
            .cloned()
            .collect();
        for (n, i) in gone {
            self.remove_check(&n, &i);
        }
        let keep_nodes: HashSet<&str> = rows.nodes.iter().map(|n| n.node.as_str()).collect();
        let gone: Vec<String> = self
            .nodes
            .keys()
            .filter(|k| !keep_nodes.contains(k.as_str()))
            .cloned()
            .collect();
        for n in gone {
            self.remove_node(&n);
        }
        let keep_claims: HashSet<Key> = rows
            .claims
            .iter()
            .map(|c| (c.node.clone(), c.actor_id.clone()))
            .collect();
        let gone: Vec<Key> = self
            .claims
            .keys()
            .filter(|k| !keep_claims.contains(*k))
            .cloned()
            .collect();
        for (n, a) in gone {
            self.remove_claim(&n, &a);
        }
        for n in rows.nodes {
            self.upsert_node(n);
        }
        for s in rows.services {
            self.upsert_service(s);
        }
        for c in rows.checks {
            self.upsert_check(c);
        }
        for c in rows.claims {
            self.upsert_claim(c);
        }
        let keep_kv: HashSet<&str> = rows.kv.iter().map(|r| r.key.as_str()).collect();
        let gone: Vec<Arc<str>> = self
            .kv
            .keys()
            .filter(|k| !keep_kv.contains(&***k))
            .cloned()
            .collect();
        drop(keep_kv);
        for k in gone {
            self.remove_kv(&k);
        }
        for r in rows.kv {
            self.upsert_kv(r);
        }
    }

    // ---- KV reads ----

    /// One KV key.
    pub fn kv_get(&self, key: &str) -> Option<&Arc<KvEntry>> {
        self.kv.get(key)
    }

    /// Every KV entry whose key starts with `prefix`, in key order.
    pub fn kv_under<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a Arc<KvEntry>> + 'a {
        self.kv.under(prefix)
    }

    /// Consul's `?keys&separator=` listing (see [`crate::kv`]).
    pub fn kv_keys(&self, prefix: &str, separator: &str) -> Vec<Arc<str>> {
        self.kv.list_keys(prefix, separator)
    }

    /// Number of KV keys and the bytes of their values.
    pub fn kv_size(&self) -> (usize, usize) {
        (self.kv.len(), self.kv.value_bytes())
    }

    // ---- reads ----

    /// The node row for `node`: its exact spelling first, else any other.
    fn node_row(&self, node: &str) -> Option<&Arc<Entry<Node>>> {
        self.nodes
            .get(node)
            .or_else(|| self.spellings_of(node).find_map(|s| self.nodes.get(s)))
    }

    fn exact_liveness(&self, node: &str) -> Liveness {
        match self.nodes.get(node) {
            Some(n) => self.actor_liveness(&n.actor_id),
            None => Liveness::Unknown,
        }
    }

    /// Whether `node`'s agent is reachable.
    pub fn liveness(&self, node: &str) -> Liveness {
        let Some(n) = self.node_row(node) else {
            return Liveness::Unknown;
        };
        self.actor_liveness(&n.actor_id)
    }

    /// Liveness of an agent by actor id (`Unknown` for an empty id).
    pub fn actor_liveness(&self, actor: &str) -> Liveness {
        if actor.is_empty() {
            return Liveness::Unknown;
        }
        if actor == self.local_actor {
            return Liveness::Alive;
        }
        match self.members.get(actor) {
            Some((MemberState::Alive | MemberState::Suspect, _)) => Liveness::Alive,
            Some((MemberState::Down, _)) => Liveness::Down,
            None if self.settled => Liveness::Down,
            None => Liveness::Alive,
        }
    }

    /// Round-trip time to `node`'s agent in ms (0 for this agent; `None`
    /// when unknown).
    pub fn rtt(&self, node: &str) -> Option<f64> {
        let n = self.node_row(node)?;
        if n.actor_id == self.local_actor {
            return Some(0.0);
        }
        self.members.get(&n.actor_id).and_then(|(_, rtt)| *rtt)
    }

    /// Every service name (as registered; two spellings of one name are
    /// listed apart, as Consul lists them) with the union of its instances'
    /// tags.
    pub fn service_names(&self) -> BTreeMap<&str, BTreeSet<&str>> {
        let mut out: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for s in self.services.values() {
            out.entry(s.name.as_str())
                .or_default()
                .extend(s.tags.iter().map(String::as_str));
        }
        out
    }

    /// Every instance of service `name` (any spelling), in (node, id) order.
    pub fn instances(&self, name: &str) -> Vec<Instance> {
        self.by_name
            .get(fold(name).as_ref())
            .into_iter()
            .flatten()
            .filter_map(|k| self.services.get(k))
            .map(|s| self.instance(s))
            .collect()
    }

    /// How many instances service `name` has (any spelling).
    pub fn instance_count(&self, name: &str) -> usize {
        self.by_name.get(fold(name).as_ref()).map_or(0, |k| k.len())
    }

    /// Every instance on `node` (any spelling), in (node, id) order.
    pub fn node_instances(&self, node: &str) -> Vec<Instance> {
        let mut out = Vec::new();
        for spelling in self.spellings_of(node) {
            out.extend(
                self.node_services
                    .get(spelling)
                    .into_iter()
                    .flatten()
                    .filter_map(|id| self.services.get(&(spelling.clone(), id.clone())))
                    .map(|s| self.instance(s)),
            );
        }
        out
    }

    /// Joins a service row with its node and checks.
    pub fn instance(&self, s: &Arc<Entry<Service>>) -> Instance {
        let mut checks: Vec<Arc<Entry<Check>>> = self.serf_check(&s.node).into_iter().collect();
        let mut own: Vec<&Arc<Entry<Check>>> = self
            .targeted(&s.node, "")
            .chain(self.targeted(&s.node, &s.id))
            .collect();
        own.sort_by(|a, b| a.id.cmp(&b.id));
        checks.extend(own.into_iter().cloned());
        let status = health::aggregate(checks.iter().map(|c| (c.id.as_str(), c.status)));
        Instance {
            service: s.clone(),
            node: self.node_row(&s.node).cloned(),
            checks,
            status,
            liveness: self.liveness(&s.node),
        }
    }

    /// The checks of `node` for `service_id` ("" for node-level ones).
    fn targeted<'a>(
        &'a self,
        node: &str,
        service_id: &str,
    ) -> impl Iterator<Item = &'a Arc<Entry<Check>>> + 'a {
        self.by_target
            .get(&(node.to_string(), service_id.to_string()))
            .into_iter()
            .flat_map(|m| m.values())
    }

    /// Every check row of exactly `node`, by id.
    fn node_check_rows<'a>(
        &'a self,
        node: &'a str,
    ) -> impl Iterator<Item = &'a Arc<Entry<Check>>> + 'a {
        self.checks
            .range((node.to_string(), String::new())..)
            .take_while(move |((n, _), _)| n == node)
            .map(|(_, c)| c)
    }

    /// Every check of `node` (any spelling), its `serfHealth` first when the
    /// node has a row.
    pub fn node_checks(&self, node: &str) -> Vec<Arc<Entry<Check>>> {
        let mut out = Vec::new();
        for spelling in self.spellings_of(node) {
            out.extend(self.serf_check(spelling));
            out.extend(self.node_check_rows(spelling).cloned());
        }
        out
    }

    /// The synthetic membership check of a node with a row.
    fn serf_check(&self, node: &str) -> Option<Arc<Entry<Check>>> {
        let n = self.node_row(node)?;
        let down = self.actor_liveness(&n.actor_id) == Liveness::Down;
        let changed = self.liveness_changed.get(&n.node).copied().unwrap_or(0);
        Some(Arc::new(Entry {
            row: Check {
                node: node.to_string(),
                id: SERF_CHECK_ID.to_string(),
                service_id: String::new(),
                service_name: String::new(),
                name: "Serf Health Status".to_string(),
                status: if down {
                    Status::Critical
                } else {
                    Status::Passing
                },
                output: if down {
                    "Agent not live or unreachable".to_string()
                } else {
                    "Agent alive and reachable".to_string()
                },
                notes: String::new(),
                kind: String::new(),
                updated_at: n.updated_at,
                source: None,
            },
            create_index: n.create_index,
            modify_index: n.modify_index.max(changed),
        }))
    }

    /// Every check in the catalog (synthetic `serfHealth` ones included),
    /// by node then id.
    pub fn all_checks(&self) -> Vec<Arc<Entry<Check>>> {
        let nodes: BTreeSet<&String> = self
            .nodes
            .keys()
            .chain(self.checks.keys().map(|(n, _)| n))
            .collect();
        let mut out = Vec::new();
        for n in nodes {
            out.extend(self.serf_check_exact(n));
            out.extend(self.node_check_rows(n).cloned());
        }
        out
    }

    /// The `serfHealth` check of exactly `node` (none without its own row).
    fn serf_check_exact(&self, node: &str) -> Option<Arc<Entry<Check>>> {
        self.nodes.get(node)?;
        self.serf_check(node)
    }

    /// The checks of service `name`'s instances (their own checks only, as
    /// Consul's `/v1/health/checks/:service`).
    pub fn service_checks(&self, name: &str) -> Vec<Arc<Entry<Check>>> {
        self.by_name
            .get(fold(name).as_ref())
            .into_iter()
            .flatten()
            .flat_map(|(node, id)| self.targeted(node, id).cloned())
            .collect()
    }

    /// Every node row, by name.
    pub fn nodes(&self) -> impl Iterator<Item = &Arc<Entry<Node>>> {
        self.nodes.values()
    }

    /// The row of node `name` (any spelling).
    pub fn node(&self, name: &str) -> Option<&Arc<Entry<Node>>> {
        self.node_row(name)
    }

    /// A service row by exact node and id.
    pub fn service(&self, node: &str, id: &str) -> Option<&Arc<Entry<Service>>> {
        self.services.get(&(node.to_string(), id.to_string()))
    }

    /// Every service row, by (node, id).
    pub fn services(&self) -> impl Iterator<Item = &Arc<Entry<Service>>> {
        self.services.values()
    }

    /// Service rows of exactly `node` (its registered spelling), by id.
    pub fn exact_node_services<'a>(
        &'a self,
        node: &'a str,
    ) -> impl Iterator<Item = &'a Arc<Entry<Service>>> + 'a {
        self.services
            .range((node.to_string(), String::new())..)
            .take_while(move |((n, _), _)| n == node)
            .map(|(_, s)| s)
    }

    /// Check rows of exactly `node` (its registered spelling), by id.
    pub fn exact_node_checks<'a>(
        &'a self,
        node: &'a str,
    ) -> impl Iterator<Item = &'a Arc<Entry<Check>>> + 'a {
        self.node_check_rows(node)
    }

    /// Every check row (no synthetic ones), by (node, id).
    pub fn check_rows(&self) -> impl Iterator<Item = &Arc<Entry<Check>>> {
        self.checks.values()
    }

    /// Claims of node name `node` in any spelling (two hosts whose names
    /// differ only in case are one node to every reader): (actor id,
    /// started_at).
    pub fn claims(&self, node: &str) -> Vec<(String, i64)> {
        self.claims
            .iter()
            .filter(|((n, _), _)| same_name(n, node))
            .map(|((_, a), t)| (a.clone(), *t))
            .collect()
    }

    /// Every claim row.
    pub fn all_claims(&self) -> Vec<Claim> {
        self.claims
            .iter()
            .map(|((n, a), t)| Claim {
                node: n.clone(),
                actor_id: a.clone(),
                started_at: *t,
            })
            .collect()
    }

    /// This agent's actor id.
    pub fn local_actor(&self) -> &str {
        &self.local_actor
    }

    /// Actor ids of every live agent (this one included), sorted.
    pub fn live_actors(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .members
            .iter()
            .filter(|(_, (s, _))| *s != MemberState::Down)
            .map(|(a, _)| a.clone())
            .chain(std::iter::once(self.local_actor.clone()))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// The membership view: (actor id, state, rtt ms).
    pub fn members(&self) -> Vec<(String, MemberState, Option<f64>)> {
        self.members
            .iter()
            .map(|(a, (s, r))| (a.clone(), *s, *r))
            .collect()
    }

    /// A counter that moves whenever a member's SWIM state (alive, suspect,
    /// down) changes or a member comes or goes; RTT changes do not move it.
    pub fn member_generation(&self) -> u64 {
        self.member_gen
    }

    /// Whether membership has settled (see [`Index::set_members`]).
    pub fn settled(&self) -> bool {
        self.settled
    }
}

/// Every row of the discovery tables, as a full reload reads them.
#[derive(Debug, Default)]
pub struct Rows {
    pub services: Vec<Service>,
    pub checks: Vec<Check>,
    pub nodes: Vec<Node>,
    pub claims: Vec<Claim>,
    pub kv: Vec<KvRow>,
}

/// Whether `a` and `b` differ at most in the field `time` reaches
/// (`updated_at`, which no answer shows: it only ages rows for reaping).
fn same_but_time<T: Clone + PartialEq>(a: &T, b: &T, time: impl Fn(&mut T) -> &mut i64) -> bool {
    let mut a = a.clone();
    *time(&mut a) = *time(&mut b.clone());
    a == *b
}

fn remove_from<V: Ord>(map: &mut BTreeMap<String, BTreeSet<V>>, k: &str, v: &V) {
    if let Some(set) = map.get_mut(k) {
        set.remove(v);
        if set.is_empty() {
            map.remove(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(node: &str, id: &str, name: &str, tags: &[&str]) -> Service {
        Service {
            node: node.into(),
            id: id.into(),
            name: name.into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            meta: Default::default(),
            port: 80,
            address: String::new(),
            weights: Default::default(),
            tagged_addresses: Default::default(),
            updated_at: 0,
            source: None,
        }
    }

    fn node(name: &str, actor: &str) -> Node {
        Node {
            node: name.into(),
            actor_id: actor.into(),
            address: "10.0.0.1".into(),
            datacenter: "dc1".into(),
            meta: Default::default(),
            updated_at: 0,
        }
    }

    #[test]
    fn names_match_in_any_case_and_keep_their_spelling() {
        let mut ix = Index::new("me", 1);
        ix.upsert_node(node("Node-A", "a"));
        ix.upsert_service(svc("Node-A", "w1", "Web", &["Primary"]));
        ix.finish();
        for spelling in ["web", "WEB", "Web", "wEb"] {
            let list = ix.instances(spelling);
            assert_eq!(list.len(), 1, "{spelling}");
            assert_eq!(list[0].service.name, "Web");
            assert_eq!(list[0].node.as_ref().unwrap().node, "Node-A");
        }
        assert_eq!(ix.node_instances("node-a").len(), 1);
        assert_eq!(ix.node("NODE-A").unwrap().node, "Node-A");
        assert_eq!(ix.node_checks("node-a")[0].id, SERF_CHECK_ID);
        assert_eq!(ix.service_names().keys().collect::<Vec<_>>(), vec![&"Web"]);
        assert_eq!(
            ix.topic_index(&[Topic::Service("WEB".into())]),
            ix.topic_index(&[Topic::service("web")])
        );
        assert!(same_name("Web", "wEB") && same_name("Ünï", "üNÏ") && !same_name("a", "b"));
    }

    #[test]
    fn entries_keep_their_create_index_and_move_modify_only_on_change() {
        let mut ix = Index::new("me", 1);
        ix.upsert_service(svc("n", "w1", "web", &[]));
        let first = ix.finish().unwrap();
        let e = ix.service("n", "w1").unwrap().clone();
        assert_eq!((e.create_index, e.modify_index), (first, first));
        // Same content: no change, no index movement.
        ix.upsert_service(svc("n", "w1", "web", &[]));
        assert_eq!(ix.finish(), None);
        // Another service changes: this one's indexes stay.
        ix.upsert_service(svc("n", "d1", "db", &[]));
        ix.finish();
        let e = ix.service("n", "w1").unwrap().clone();
        assert_eq!((e.create_index, e.modify_index), (first, first));
        // Its own change moves ModifyIndex only.
        ix.upsert_service(svc("n", "w1", "web", &["v2"]));
        let third = ix.finish().unwrap();
        let e = ix.service("n", "w1").unwrap().clone();
        assert_eq!((e.create_index, e.modify_index), (first, third));
    }

    #[test]
    fn a_heartbeat_that_only_moves_updated_at_moves_no_index() {
        let mut ix = Index::new("me", 1);
        ix.upsert_node(node("n", "a"));
        ix.upsert_service(svc("n", "w1", "web", &[]));
        let at = ix.finish().unwrap();
        let mut beat = node("n", "a");
        beat.updated_at = 99;
        ix.upsert_node(beat);
        let mut s = svc("n", "w1", "web", &[]);
        s.updated_at = 99;
        ix.upsert_service(s);
        assert_eq!(ix.finish(), None, "nothing a reader sees changed");
        assert_eq!(ix.node("n").unwrap().updated_at, 99, "the row is current");
        assert_eq!(ix.node("n").unwrap().modify_index, at);
        assert_eq!(ix.instances("web")[0].service.updated_at, 99);
    }

    #[test]
    fn serf_health_moves_its_modify_index_with_liveness() {
        let mut ix = Index::new("me", 1);
        ix.upsert_node(node("n", "a"));
        let created = ix.finish().unwrap();
        ix.set_members([("a".to_string(), MemberState::Alive, None)], true);
        assert_eq!(ix.finish(), None, "alive before and after");
        ix.set_members([("a".to_string(), MemberState::Down, None)], true);
        let down = ix.finish().unwrap();
        let serf = &ix.node_checks("n")[0];
        assert_eq!(serf.status, Status::Critical);
        assert_eq!((serf.create_index, serf.modify_index), (created, down));
    }

    #[test]
    fn stamps_of_names_that_went_away_are_dropped_and_indexes_never_go_back() {
        let mut ix = Index::new("me", 1);
        let mut last = 0;
        for i in 0..1000 {
            let name = format!("svc-{i}");
            ix.upsert_service(svc("n", &name, &name, &[]));
            ix.finish();
            let at = ix.topic_index(&[Topic::service(&name)]);
            assert!(at > last);
            ix.remove_service("n", &name);
            ix.finish();
            let after = ix.topic_index(&[Topic::service(&name)]);
            assert!(after >= at, "index went back for {name}");
            last = after;
        }
        // Only the fixed topics remain stamped.
        assert!(ix.stamped_topics() <= 6, "{}", ix.stamped_topics());
        assert!(ix.topic_index(&[Topic::service("never-seen")]) >= last);
    }

    fn kv(k: &str, v: &str, flags: u64) -> KvRow {
        KvRow {
            key: k.into(),
            value: bytes::Bytes::copy_from_slice(v.as_bytes()),
            flags,
        }
    }

    #[test]
    fn kv_indexes_move_only_for_what_changed_and_never_go_back() {
        let mut ix = Index::new("me", 10);
        let key = |k: &str| Topic::KvKey(k.into());
        let pre = |p: &str| Topic::KvPrefix(p.into());
        ix.upsert_kv(kv("app/a", "1", 0));
        ix.upsert_kv(kv("other/x", "1", 0));
        let i1 = ix.finish().unwrap();
        assert_eq!(ix.kv_get("app/a").unwrap().modify_index, i1);
        assert_eq!(ix.topic_index([&key("app/a")]), i1);
        // The same value and flags again: nothing moves.
        ix.upsert_kv(kv("app/a", "1", 0));
        assert_eq!(ix.finish(), None);
        // A change elsewhere moves neither the key nor the app/ prefix.
        ix.upsert_kv(kv("other/x", "2", 0));
        let i2 = ix.finish().unwrap();
        assert_eq!(ix.topic_index([&key("app/a")]), i1);
        assert_eq!(ix.topic_index([&pre("app/")]), i1);
        assert_eq!(ix.topic_index([&pre("other/")]), i2);
        // New flags are a change; CreateIndex stays.
        ix.upsert_kv(kv("app/a", "1", 7));
        let i3 = ix.finish().unwrap();
        let e = ix.kv_get("app/a").unwrap();
        assert_eq!((e.create_index, e.modify_index, e.flags), (i1, i3, 7));
        assert_eq!(ix.topic_index([&pre("app/a")]), i3);
        assert_eq!(ix.topic_index([&pre("ap")]), i3);
        // A delete moves the key's and the prefix's index up, not back.
        ix.remove_kv("app/a");
        let i4 = ix.finish().unwrap();
        assert!(ix.kv_get("app/a").is_none());
        assert_eq!(ix.topic_index([&key("app/a")]), i4);
        assert_eq!(ix.topic_index([&pre("app/")]), i4);
        // Recreated: a new CreateIndex, above the delete.
        ix.upsert_kv(kv("app/a", "1", 0));
        let i5 = ix.finish().unwrap();
        assert_eq!(ix.kv_get("app/a").unwrap().create_index, i5);
        assert_eq!(ix.topic_index([&key("app/a")]), i5);
        // A full reload without the key removes it; with the same rows it
        // changes nothing.
        let rows = || Rows {
            kv: vec![kv("other/x", "2", 0)],
            ..Rows::default()
        };
        ix.replace_rows(rows());
        let i6 = ix.finish().unwrap();
        assert!(ix.kv_get("app/a").is_none());
        assert!(ix.topic_index([&key("app/a")]) >= i6);
        ix.replace_rows(rows());
        assert_eq!(ix.finish(), None);
        assert_eq!(ix.kv_size(), (1, 1));
    }

    #[test]
    fn member_generation_moves_on_states_not_on_rtt() {
        let mut ix = Index::new("me", 1);
        ix.set_members([("b".to_string(), MemberState::Alive, Some(1.0))], true);
        let g = ix.member_generation();
        ix.set_members([("b".to_string(), MemberState::Alive, Some(2.5))], true);
        assert_eq!(ix.member_generation(), g, "an RTT change");
        ix.set_members([("b".to_string(), MemberState::Suspect, Some(2.5))], true);
        assert_eq!(ix.member_generation(), g + 1, "alive -> suspect");
        ix.set_members(Vec::new(), true);
        assert_eq!(ix.member_generation(), g + 2, "a member gone");
    }

    #[test]
    fn kv_changes_and_catalog_changes_keep_apart() {
        let mut ix = Index::new("me", 1);
        ix.upsert_service(svc("n", "w1", "web", &[]));
        let c1 = ix.finish().unwrap();
        assert_eq!(
            ix.moved(),
            Moved {
                catalog: true,
                kv: false
            }
        );
        ix.upsert_kv(kv("app/a", "1", 0));
        ix.finish().unwrap();
        assert_eq!(
            ix.moved(),
            Moved {
                catalog: false,
                kv: true
            }
        );
        // A KV delete folds nothing into the catalog's floor.
        ix.remove_kv("app/a");
        let k = ix.finish().unwrap();
        for t in [
            Topic::Services,
            Topic::service("web"),
            Topic::service("gone"),
        ] {
            assert!(ix.topic_index([&t]) <= c1, "{t:?}");
        }
        assert_eq!(ix.topic_index([&Topic::KvKey("app/a".into())]), k);
        // And a service going away folds nothing into the KV floor.
        ix.upsert_kv(kv("b", "1", 0));
        let kb = ix.finish().unwrap();
        ix.remove_service("n", "w1");
        ix.finish().unwrap();
        assert_eq!(ix.topic_index([&Topic::KvKey("missing".into())]), k);
        assert_eq!(ix.topic_index([&Topic::KvKey("b".into())]), kb);
    }

    #[test]
    fn a_full_reload_of_unchanged_rows_changes_nothing() {
        let mut ix = Index::new("me", 1);
        ix.upsert_node(node("n", "a"));
        ix.upsert_service(svc("n", "w1", "web", &[]));
        let at = ix.finish().unwrap();
        ix.replace_rows(Rows {
            services: vec![svc("n", "w1", "web", &[])],
            nodes: vec![node("n", "a")],
            ..Rows::default()
        });
        assert_eq!(ix.finish(), None);
        assert_eq!(ix.service("n", "w1").unwrap().create_index, at);
        ix.replace_rows(Rows::default());
        assert!(ix.finish().is_some());
        assert!(ix.instances("web").is_empty());
        assert!(ix.node("n").is_none());
    }
}
