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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use crate::health::{self, Liveness, SERF_CHECK_ID, Status};
use crate::model::{Check, Claim, Node, Service};

/// What SWIM says of a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    Alive,
    Suspect,
    Down,
}

/// A part of the catalog that answers depend on.
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
}

/// One service instance joined with its node and checks.
#[derive(Debug, Clone)]
pub struct Instance {
    pub service: Arc<Service>,
    /// `None` when no `consul_nodes` row names the node (yet).
    pub node: Option<Arc<Node>>,
    /// The node's checks (node-level ones, `serfHealth` included) and the
    /// service's own, in check-id order.
    pub checks: Vec<Arc<Check>>,
    pub status: Status,
    pub liveness: Liveness,
}

type Key = (String, String);

/// The in-memory catalog.
#[derive(Debug, Clone)]
pub struct Index {
    services: BTreeMap<Key, Arc<Service>>,
    by_name: BTreeMap<String, BTreeSet<Key>>,
    node_services: BTreeMap<String, BTreeSet<String>>,
    checks: BTreeMap<Key, Arc<Check>>,
    /// Checks by (node, service id; "" for node-level checks), then id.
    by_target: BTreeMap<Key, BTreeMap<String, Arc<Check>>>,
    nodes: BTreeMap<String, Arc<Node>>,
    claims: BTreeMap<Key, i64>,
    members: HashMap<String, (MemberState, Option<f64>)>,
    local_actor: String,
    settled: bool,
    /// Topics changed since the last [`Index::finish`].
    dirty: HashSet<Topic>,
    current: u64,
    /// Stamp of topics never changed since start.
    base: u64,
    stamps: HashMap<Topic, u64>,
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
            claims: BTreeMap::new(),
            members: HashMap::new(),
            local_actor: local_actor.to_string(),
            settled: false,
            dirty: HashSet::new(),
            current: start,
            base: start,
            stamps: HashMap::new(),
        }
    }

    /// The index value of the latest change.
    pub fn current(&self) -> u64 {
        self.current
    }

    /// Stamps every topic changed since the last call with the next index
    /// value; returns it, or `None` when nothing changed.
    pub fn finish(&mut self) -> Option<u64> {
        if self.dirty.is_empty() {
            return None;
        }
        self.current += 1;
        for t in self.dirty.drain() {
            self.stamps.insert(t, self.current);
        }
        Some(self.current)
    }

    /// Topics marked since the last [`Index::finish`].
    pub fn dirty(&self) -> impl Iterator<Item = &Topic> {
        self.dirty.iter()
    }

    /// The highest stamp over `topics` (never 0).
    pub fn topic_index<'a>(&self, topics: impl IntoIterator<Item = &'a Topic>) -> u64 {
        topics
            .into_iter()
            .map(|t| self.stamps.get(t).copied().unwrap_or(self.base))
            .max()
            .unwrap_or(self.current)
    }

    fn touch(&mut self, t: Topic) {
        self.dirty.insert(t);
    }

    /// Marks every service of `node` (their instances' health or node data
    /// changed).
    fn touch_node_services(&mut self, node: &str) {
        let names: Vec<String> = self
            .node_services
            .get(node)
            .into_iter()
            .flatten()
            .filter_map(|id| self.services.get(&(node.to_string(), id.clone())))
            .map(|s| s.name.clone())
            .collect();
        for n in names {
            self.touch(Topic::Service(n));
        }
    }

    // ---- rows in ----

    pub fn upsert_service(&mut self, s: Service) {
        let key = (s.node.clone(), s.id.clone());
        if self.services.get(&key).is_some_and(|old| **old == s) {
            return;
        }
        self.remove_service(&s.node, &s.id);
        self.touch(Topic::Service(s.name.clone()));
        self.touch(Topic::Node(s.node.clone()));
        self.touch(Topic::Services);
        self.touch(Topic::Checks);
        self.by_name
            .entry(s.name.clone())
            .or_default()
            .insert(key.clone());
        self.node_services
            .entry(s.node.clone())
            .or_default()
            .insert(s.id.clone());
        self.services.insert(key, Arc::new(s));
    }

    pub fn remove_service(&mut self, node: &str, id: &str) {
        let key = (node.to_string(), id.to_string());
        let Some(old) = self.services.remove(&key) else {
            return;
        };
        self.touch(Topic::Service(old.name.clone()));
        self.touch(Topic::Node(node.to_string()));
        self.touch(Topic::Services);
        self.touch(Topic::Checks);
        remove_from(&mut self.by_name, &old.name, &key);
        remove_from(&mut self.node_services, node, &id.to_string());
    }

    /// Marks what a check of `node` for `service_id` affects.
    fn touch_check(&mut self, node: &str, service_id: &str, service_name: &str) {
        self.touch(Topic::Node(node.to_string()));
        self.touch(Topic::Checks);
        if service_id.is_empty() {
            self.touch_node_services(node);
        } else {
            if let Some(s) = self
                .services
                .get(&(node.to_string(), service_id.to_string()))
            {
                let name = s.name.clone();
                self.touch(Topic::Service(name));
            }
            if !service_name.is_empty() {
                self.touch(Topic::Service(service_name.to_string()));
            }
        }
    }

    pub fn upsert_check(&mut self, c: Check) {
        let key = (c.node.clone(), c.id.clone());
        if self.checks.get(&key).is_some_and(|old| **old == c) {
            return;
        }
        self.remove_check(&c.node, &c.id);
        self.touch_check(&c.node, &c.service_id, &c.service_name);
        let c = Arc::new(c);
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
    }

    fn touch_whole_node(&mut self, node: &str) {
        self.touch(Topic::Node(node.to_string()));
        self.touch(Topic::Nodes);
        self.touch(Topic::Services);
        self.touch(Topic::Checks);
        self.touch_node_services(node);
    }

    pub fn upsert_node(&mut self, n: Node) {
        if self.nodes.get(&n.node).is_some_and(|old| **old == n) {
            return;
        }
        self.touch_whole_node(&n.node);
        self.nodes.insert(n.node.clone(), Arc::new(n));
    }

    pub fn remove_node(&mut self, node: &str) {
        if self.nodes.remove(node).is_some() {
            self.touch_whole_node(node);
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
            .map(|n| (n.clone(), self.liveness(n)))
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
        self.members = map;
        self.settled = settled;
        for (node, was) in before {
            if self.liveness(&node) != was {
                self.touch(Topic::Node(node.clone()));
                self.touch(Topic::Checks);
                self.touch_node_services(&node);
            }
        }
    }

    // ---- reads ----

    /// Whether `node`'s agent is reachable.
    pub fn liveness(&self, node: &str) -> Liveness {
        let Some(n) = self.nodes.get(node) else {
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
        let n = self.nodes.get(node)?;
        if n.actor_id == self.local_actor {
            return Some(0.0);
        }
        self.members.get(&n.actor_id).and_then(|(_, rtt)| *rtt)
    }

    /// Every service name with the union of its instances' tags.
    pub fn service_names(&self) -> BTreeMap<&str, BTreeSet<&str>> {
        self.by_name
            .iter()
            .filter(|(_, keys)| !keys.is_empty())
            .map(|(name, keys)| {
                let tags = keys
                    .iter()
                    .filter_map(|k| self.services.get(k))
                    .flat_map(|s| s.tags.iter().map(String::as_str))
                    .collect();
                (name.as_str(), tags)
            })
            .collect()
    }

    /// Every instance of service `name`, in (node, id) order.
    pub fn instances(&self, name: &str) -> Vec<Instance> {
        self.by_name
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(|k| self.services.get(k))
            .map(|s| self.instance(s))
            .collect()
    }

    /// Every instance on `node`, in id order.
    pub fn node_instances(&self, node: &str) -> Vec<Instance> {
        self.node_services
            .get(node)
            .into_iter()
            .flatten()
            .filter_map(|id| self.services.get(&(node.to_string(), id.clone())))
            .map(|s| self.instance(s))
            .collect()
    }

    /// Joins a service row with its node and checks.
    pub fn instance(&self, s: &Arc<Service>) -> Instance {
        let mut checks: Vec<Arc<Check>> = self.serf_check(&s.node).into_iter().collect();
        let mut own: Vec<&Arc<Check>> = self
            .targeted(&s.node, "")
            .chain(self.targeted(&s.node, &s.id))
            .collect();
        own.sort_by(|a, b| a.id.cmp(&b.id));
        checks.extend(own.into_iter().cloned());
        let status = health::aggregate(checks.iter().map(|c| (c.id.as_str(), c.status)));
        Instance {
            service: s.clone(),
            node: self.nodes.get(&s.node).cloned(),
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
    ) -> impl Iterator<Item = &'a Arc<Check>> + 'a {
        self.by_target
            .get(&(node.to_string(), service_id.to_string()))
            .into_iter()
            .flat_map(|m| m.values())
    }

    /// Every check row of `node`, by id.
    fn node_check_rows<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Arc<Check>> + 'a {
        self.checks
            .range((node.to_string(), String::new())..)
            .take_while(move |((n, _), _)| n == node)
            .map(|(_, c)| c)
    }

    /// Every check of `node`, its `serfHealth` first when the node has a row.
    pub fn node_checks(&self, node: &str) -> Vec<Arc<Check>> {
        let mut out: Vec<Arc<Check>> = self.serf_check(node).into_iter().collect();
        out.extend(self.node_check_rows(node).cloned());
        out
    }

    /// The synthetic membership check of a node with a row.
    fn serf_check(&self, node: &str) -> Option<Arc<Check>> {
        let n = self.nodes.get(node)?;
        let down = self.actor_liveness(&n.actor_id) == Liveness::Down;
        Some(Arc::new(Check {
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
        }))
    }

    /// Every check in the catalog (synthetic `serfHealth` ones included),
    /// by node then id.
    pub fn all_checks(&self) -> Vec<Arc<Check>> {
        let nodes: BTreeSet<&String> = self
            .nodes
            .keys()
            .chain(self.checks.keys().map(|(n, _)| n))
            .collect();
        nodes
            .into_iter()
            .flat_map(|n| self.node_checks(n))
            .collect()
    }

    /// The checks of service `name`'s instances (their own checks only, as
    /// Consul's `/v1/health/checks/:service`).
    pub fn service_checks(&self, name: &str) -> Vec<Arc<Check>> {
        self.by_name
            .get(name)
            .into_iter()
            .flatten()
            .flat_map(|(node, id)| self.targeted(node, id).cloned())
            .collect()
    }

    /// Every node row, by name.
    pub fn nodes(&self) -> impl Iterator<Item = &Arc<Node>> {
        self.nodes.values()
    }

    pub fn node(&self, name: &str) -> Option<&Arc<Node>> {
        self.nodes.get(name)
    }

    /// A service row by node and id.
    pub fn service(&self, node: &str, id: &str) -> Option<&Arc<Service>> {
        self.services.get(&(node.to_string(), id.to_string()))
    }

    /// Every service row, by (node, id).
    pub fn services(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.services.values()
    }

    /// Every check row (no synthetic ones), by (node, id).
    pub fn check_rows(&self) -> impl Iterator<Item = &Arc<Check>> {
        self.checks.values()
    }

    /// Claims of node name `node`: (actor id, started_at).
    pub fn claims(&self, node: &str) -> Vec<(String, i64)> {
        self.claims
            .range((node.to_string(), String::new())..)
            .take_while(|((n, _), _)| n == node)
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
}

fn remove_from<V: Ord>(map: &mut BTreeMap<String, BTreeSet<V>>, k: &str, v: &V) {
    if let Some(set) = map.get_mut(k) {
        set.remove(v);
        if set.is_empty() {
            map.remove(k);
        }
    }
}

impl Index {
    /// The membership view: (actor id, state, rtt ms).
    pub fn members(&self) -> Vec<(String, MemberState, Option<f64>)> {
        self.members
            .iter()
            .map(|(a, (s, r))| (a.clone(), *s, *r))
            .collect()
    }

    /// Whether membership has settled (see [`Index::set_members`]).
    pub fn settled(&self) -> bool {
        self.settled
    }
}
