//! Discovery inside the agent: the catalog ([`corro_catalog::Catalog`])
//! kept current from the store and from SWIM, this agent's own node row,
//! node-name claims, reaping of long-dead nodes, and the Consul bridge.
//!
//! - **Membership → catalog**: every member state change (and a tick each
//!   second, for round-trip times) hands the member list to the catalog.
//!   The view counts as settled once a peer's whole member view was
//!   applied (the first sync round after joining brings it), or
//!   [`SETTLE`] after start: from then on, an actor SWIM does not know is
//!   down.
//! - **Node identity**: once local writes are open (see the cluster's write
//!   fence), the agent upserts its `consul_nodes` row (node, actor id,
//!   address, datacenter, meta) and its claim on the node name, and
//!   refreshes `updated_at` every [`heartbeat`] so reaping can tell a long
//!   dead node from a quiet one.
//! - **Claims**: two live agents claiming one node name would delete each
//!   other's rows through their bridges. Both log it as an error; the one
//!   that started later (claim `started_at`, then actor id) does not run its
//!   bridge while the conflict lasts.
//! - **Reaping**: rows of a node that has been down for longer than
//!   `[consul] reap_after` are deleted by one live agent: the one with the
//!   smallest actor id among the live ones (every agent computes the same
//!   choice from the same membership). A node that comes back re-publishes
//!   its own rows.

pub(crate) mod bridge;
pub(crate) mod sync_command;

/// Consul's duration syntax (the config's durations and `?wait=`).
pub(crate) use corro_consul_api::duration;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use corro_catalog::{Catalog, Liveness, MemberState};
use corro_store::{SqlValue, Store};

use crate::cluster::Cluster;
use crate::config::Config;

/// The shipped discovery schema (`packaging/schema/consul.sql`).
pub(crate) const SHIPPED_SCHEMA: &str = include_str!("../../../packaging/schema/consul.sql");

/// How long after start membership counts as settled.
pub(crate) const SETTLE: Duration = Duration::from_secs(5);
/// How often the node row, claims and reaping are looked at.
const MAINTAIN_EVERY: Duration = Duration::from_secs(10);

/// This agent's node in the catalog.
#[derive(Debug, Clone)]
pub(crate) struct NodeIdentity {
    pub name: String,
    pub datacenter: String,
    pub address: IpAddr,
    pub meta: std::collections::BTreeMap<String, String>,
}

/// The running discovery side of the agent (cheap to clone).
#[derive(Clone)]
pub(crate) struct Discovery {
    pub catalog: Catalog,
    pub node: Arc<NodeIdentity>,
    /// Milliseconds since the epoch when this agent started (its claim).
    pub started_at: i64,
    /// False while another live agent that started earlier claims our node
    /// name: the bridge must not run.
    pub bridge_allowed: Arc<AtomicBool>,
    started: Instant,
    /// Whether a peer's whole member view has been applied (see
    /// [`Discovery::settled`]).
    view_applied: tokio::sync::watch::Receiver<bool>,
    /// Whether the catalog has taken in membership as settled (see
    /// [`Discovery::settled_in_catalog`]).
    settled_in_catalog: Arc<tokio::sync::watch::Sender<bool>>,
}

/// The host's name, for the default node name.
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| "localhost".into())
}

/// The node identity the config describes.
pub(crate) fn identity(config: &Config, advertised: std::net::SocketAddr) -> NodeIdentity {
    let c = &config.consul;
    let address = c.address.unwrap_or_else(|| {
        let ip = advertised.ip();
        if ip.is_unspecified() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            ip
        }
    });
    NodeIdentity {
        name: c.node_name.clone().unwrap_or_else(hostname),
        datacenter: c.datacenter.clone().unwrap_or_else(|| "dc1".into()),
        address,
        meta: c.node_meta.clone(),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// How often this agent refreshes its node row's `updated_at`.
fn heartbeat(reap_after: Duration) -> Duration {
    (reap_after / 4).clamp(Duration::from_secs(1), Duration::from_secs(3600))
}

impl Discovery {
    /// Loads the catalog and starts the tasks of the module doc (and the
    /// bridge when `[consul.client]` is set).
    pub(crate) async fn start(
        store: Store,
        cluster: Cluster,
        config: &Config,
        stop: CancellationToken,
    ) -> anyhow::Result<Discovery> {
        let counter = config
            .db
            .path
            .parent()
            .map(|d| d.join("consul-index"))
            .unwrap_or_else(|| "consul-index".into());
        let s = store.clone();
        let catalog =
            tokio::task::spawn_blocking(move || Catalog::open(&s, Some(&counter))).await??;
        let node = Arc::new(identity(config, cluster.advertised()));
        tracing::info!(node = %node.name, datacenter = %node.datacenter, address = %node.address, "discovery: this agent is Consul node {:?}", node.name);
        let d = Discovery {
            catalog: catalog.clone(),
            node,
            started_at: now_ms(),
            bridge_allowed: Arc::new(AtomicBool::new(true)),
            started: Instant::now(),
            view_applied: cluster.view_applied(),
            settled_in_catalog: Arc::new(tokio::sync::watch::channel(false).0),
        };
        crate::tasks::spawn(catalog.run(stop.clone()));
        crate::tasks::spawn(follow_membership(d.clone(), cluster.clone(), stop.clone()));
        crate::tasks::spawn(maintain(
            d.clone(),
            store.clone(),
            cluster.clone(),
            config.consul.reap_after,
            stop.clone(),
        ));
        if let Some(client) = &config.consul.client {
            let bridge = bridge::InProcess::new(store, d.clone(), cluster);
            let settings = bridge::settings(client, config.consul.sync_output)?;
            let name = d.node.name.clone();
            // Before membership settles, a claim by an agent that is gone
            // looks live: a newer agent is then held until the view
            // settles, never the other way round.
            crate::tasks::spawn(async move {
                corro_consul_bridge::run(settings, &name, bridge, stop).await;
            });
        }
        Ok(d)
    }

    /// Whether membership knows every live member: a peer's whole view
    /// was applied (the first sync round after joining brings it), or
    /// [`SETTLE`] has passed since start (a peer of an earlier build does
    /// not send its view; a node alone has nobody to ask).
    pub(crate) fn settled(&self) -> bool {
        *self.view_applied.borrow() || self.started.elapsed() >= SETTLE
    }

    /// Becomes true once the catalog has taken in membership as settled
    /// ([`Discovery::settled`]): from then on a member that no view holds
    /// counts as down, and one a peer's view says is down is down here, so
    /// a host that died while this agent was down is no longer named. DNS
    /// waits for it after a start (`[dns] start_wait`).
    pub(crate) fn settled_in_catalog(&self) -> tokio::sync::watch::Receiver<bool> {
        self.settled_in_catalog.subscribe()
    }
}

/// Members as compared between updates: (actor, state, rtt in whole ms).
type MemberKey = Vec<(String, MemberState, Option<u64>)>;

/// Hands membership to the catalog on every change (and each second, for
/// round-trip times and settling).
async fn follow_membership(d: Discovery, cluster: Cluster, stop: CancellationToken) {
    let mut changes = cluster.member_changes();
    let mut view = cluster.view_applied();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last: Option<(MemberKey, bool)> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = changes.changed() => {}
            Ok(()) = view.changed() => {}
            _ = tick.tick() => {}
        }
        let generation = *changes.borrow_and_update();
        let members: Vec<(String, MemberState, Option<f64>)> = cluster
            .members()
            .into_iter()
            .map(|m| {
                let state = match m.state.as_str() {
                    "alive" => MemberState::Alive,
                    "suspect" => MemberState::Suspect,
                    _ => MemberState::Down,
                };
                (m.actor_id, state, m.rtt_ms)
            })
            .collect();
        let settled = d.settled();
        // Round-trip times move constantly; they only change `?near=`
        // order, so a change in them alone bumps nothing below 1 ms.
        let key: MemberKey = members
            .iter()
            .map(|(a, s, r)| (a.clone(), *s, r.map(|r| r as u64)))
            .collect();
        if last.as_ref() != Some(&(key.clone(), settled)) {
            last = Some((key, settled));
            match d.catalog.set_membership(members, settled) {
                Ok(_) if settled => {
                    d.settled_in_catalog
                        .send_if_modified(|s| !std::mem::replace(s, true));
                }
                Ok(_) => {}
                Err(e) => {
                    // Taken again on the next change or tick.
                    last = None;
                    tracing::warn!(error = %e, "catalog: membership update failed");
                }
            }
        }
        cluster.member_changes_taken(generation);
    }
}

/// A write of this agent's own discovery rows, after the write fence.
async fn write(
    store: &Store,
    cluster: &Cluster,
    statements: Vec<(String, Vec<SqlValue>)>,
) -> anyhow::Result<()> {
    cluster.writes_open().await;
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        store.transact(|tx| {
            for (sql, params) in &statements {
                tx.execute(sql, params)?;
            }
            Ok(())
        })
    })
    .await??;
    Ok(())
}

fn text(s: impl Into<String>) -> SqlValue {
    SqlValue::Text(s.into())
}

/// Keeps the node row and claim current, watches for name conflicts, reaps
/// long-dead nodes.
async fn maintain(
    d: Discovery,
    store: Store,
    cluster: Cluster,
    reap_after: Duration,
    stop: CancellationToken,
) {
    let beat = heartbeat(reap_after);
    let mut missing_logged = false;
    let mut conflict_logged: Option<String> = None;
    let mut changes = d.catalog.subscribe();
    let mut tick = tokio::time::interval(MAINTAIN_EVERY.min(beat));
    loop {
        // Catalog changes re-check the node row and claims at once;
        // reaping (a walk over every node) waits for the tick.
        let ticked = tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => true,
            _ = changes.changed() => false,
        };
        // 1. Our node row and claim.
        let mut statements = Vec::new();
        {
            let index = d.catalog.read();
            let me = index.local_actor().to_string();
            let meta = serde_json::to_string(&d.node.meta).unwrap_or_else(|_| "{}".into());
            let current = index.node(&d.node.name);
            let stale = current.is_none_or(|n| {
                n.actor_id != me
                    || n.address != d.node.address.to_string()
                    || n.datacenter != d.node.datacenter
                    || n.meta != d.node.meta
                    || now_ms() - n.updated_at >= beat.as_millis() as i64
            });
            // Another live agent's row under our name: the conflict below
            // decides; the agent that started first keeps writing the row.
            if stale && d.bridge_allowed.load(Ordering::Relaxed) {
                statements.push((
                    "INSERT INTO consul_nodes (node, actor_id, address, datacenter, meta, updated_at) VALUES (?, ?, ?, ?, ?, ?)
                     ON CONFLICT (node) DO UPDATE SET actor_id = excluded.actor_id, address = excluded.address,
                       datacenter = excluded.datacenter, meta = excluded.meta, updated_at = excluded.updated_at"
                        .to_string(),
                    vec![
                        text(d.node.name.clone()),
                        text(me.clone()),
                        text(d.node.address.to_string()),
                        text(d.node.datacenter.clone()),
                        text(meta),
                        SqlValue::Integer(now_ms()),
                    ],
                ));
            }
            if !index
                .claims(&d.node.name)
                .iter()
                .any(|(a, t)| *a == me && *t == d.started_at)
            {
                statements.push((
                    "INSERT OR REPLACE INTO consul_node_claims (node, actor_id, started_at) VALUES (?, ?, ?)".to_string(),
                    vec![text(d.node.name.clone()), text(me.clone()), SqlValue::Integer(d.started_at)],
                ));
            }
            // 2. Reaping, by the live agent with the smallest actor id.
            if ticked && d.settled() && index.live_actors().first() == Some(&me) {
                let cutoff = now_ms() - reap_after.as_millis() as i64;
                for n in index.nodes() {
                    if n.node != d.node.name
                        && index.liveness(&n.node) == Liveness::Down
                        && n.updated_at < cutoff
                    {
                        tracing::info!(node = %n.node, actor_id = %n.actor_id, "reaping the rows of a node down for longer than reap_after");
                        for t in ["consul_services", "consul_checks", "consul_nodes"] {
                            statements.push((
                                format!("DELETE FROM {t} WHERE node = ?"),
                                vec![text(n.node.clone())],
                            ));
                        }
                    }
                }
                for c in index.all_claims() {
                    if c.actor_id != me
                        && index.actor_liveness(&c.actor_id) == Liveness::Down
                        && c.started_at < cutoff
                    {
                        statements.push((
                            "DELETE FROM consul_node_claims WHERE node = ? AND actor_id = ?".into(),
                            vec![text(c.node.clone()), text(c.actor_id.clone())],
                        ));
                    }
                }
            }
            // 3. Name conflicts.
            let conflict = index
                .claims(&d.node.name)
                .into_iter()
                .filter(|(a, _)| *a != me && index.actor_liveness(a) == Liveness::Alive)
                .max_by_key(|(a, t)| (*t, a.clone()));
            match conflict {
                Some((other, their_start)) => {
                    let we_are_newer = (d.started_at, me.as_str()) > (their_start, other.as_str());
                    d.bridge_allowed.store(!we_are_newer, Ordering::Relaxed);
                    metrics::gauge!("corro_consul_node_name_conflict").set(1.0);
                    if conflict_logged.as_deref() != Some(other.as_str()) {
                        if we_are_newer {
                            tracing::error!(node = %d.node.name, other_actor = %other, "another live agent, started earlier, claims this node name: two hosts share a hostname? This agent does NOT run its Consul bridge until the conflict ends; set [consul] node_name to a unique name");
                        } else {
                            tracing::error!(node = %d.node.name, other_actor = %other, "another live agent, started later, claims this node name: two hosts share a hostname? The other agent's bridge is held; set [consul] node_name to a unique name");
                        }
                        conflict_logged = Some(other);
                    }
                }
                None => {
                    if conflict_logged.take().is_some() {
                        tracing::info!(node = %d.node.name, "node name conflict over");
                    }
                    metrics::gauge!("corro_consul_node_name_conflict").set(0.0);
                    d.bridge_allowed.store(true, Ordering::Relaxed);
                }
            }
        }
        if statements.is_empty() {
            continue;
        }
        match write(&store, &cluster, statements).await {
            Ok(()) => missing_logged = false,
            Err(e) => {
                let msg = format!("{e:#}");
                if !missing_logged {
                    if msg.contains("no such table") {
                        tracing::warn!(
                            "the discovery tables are not in the schema (add packaging/schema/consul.sql to db.schema_paths); this agent's node is not in the catalog"
                        );
                    } else {
                        tracing::warn!(error = %msg, "cannot write this agent's node row; retrying");
                    }
                    missing_logged = true;
                }
            }
        }
    }
}
