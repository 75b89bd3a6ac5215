//! The registry: this agent's registrations ([`Local`]), the check runner
//! that keeps their state, the host-local table that keeps them across
//! restarts, and the replicated rows (`source = 'native'`) other agents see.
//!
//! Replication economy (Consul's anti-entropy, issue "Consul removable" §4):
//! a status change is written at once; an output-only change is kept here
//! (this agent's API shows it) and written when a status changes or after
//! `check_update_interval/2 + rand(check_update_interval)`. Rows are
//! compared with the catalog before writing: 1,000 steady checks write
//! nothing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use corro_catalog::Catalog;
use corro_checks::runner::Start;
use corro_checks::{
    AliasSource, CheckDefinition, CheckError, Kind, Runner, RunnerConfig, Status, Update,
};
use corro_store::{SqlValue, Store};
use parking_lot::Mutex;
use rand::Rng;
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::local::{
    CheckRow, DEFAULT_NODE_MAINT_REASON, DEFAULT_SERVICE_MAINT_REASON, Local, LocalCheck,
    LocalService, Origin, maintenance_id,
};
use crate::persist::{self, RowKind, Write};
use crate::service::ServiceDefinition;

/// The `source` of rows written here.
pub const SOURCE: &str = "native";

/// Registry settings (the agent's `[services]` section and node identity).
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    pub node: String,
    pub datacenter: String,
    /// Script checks from the API and files (Consul's `enable_script_checks`).
    pub enable_script_checks: bool,
    /// Script checks from definition files only (`enable_local_script_checks`).
    pub enable_local_script_checks: bool,
    /// How long an output-only change may wait before it is replicated.
    pub check_update_interval: Duration,
    pub max_concurrent_probes: usize,
    /// Most services and checks this agent holds (registrations beyond
    /// are refused).
    pub max_services: usize,
    pub max_checks: usize,
}

impl RegistryConfig {
    pub fn new(node: String, datacenter: String) -> RegistryConfig {
        RegistryConfig {
            node,
            datacenter,
            enable_script_checks: false,
            enable_local_script_checks: false,
            check_update_interval: Duration::from_secs(300),
            max_concurrent_probes: 512,
            max_services: 10_000,
            max_checks: 50_000,
        }
    }
}

/// A refused request: the status code Consul would answer and its text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// 400
    #[error("{0}")]
    BadRequest(String),
    /// 404
    #[error("{0}")]
    NotFound(String),
    /// 500 (Consul's plain errors: a non-TTL check's TTL update, script
    /// checks disabled, storage failures)
    #[error("{0}")]
    Failed(String),
    /// 507, as the agent's other writes: the disk is full, nothing changed
    #[error("{0}")]
    DiskFull(String),
}

fn unknown_service(id: &str) -> RegistryError {
    RegistryError::NotFound(format!(
        "Unknown service ID {id:?}. Ensure that the service ID is passed, not the service name."
    ))
}

fn unknown_check(id: &str) -> RegistryError {
    // Older Consul answered "does not have associated TTL" for unknown
    // checks, and SDKs (spring-cloud-consul) match that phrase to
    // re-register: both texts are kept.
    RegistryError::NotFound(format!(
        "Unknown check ID {id:?}. Ensure that the check ID is passed, not the check name. (CheckID {id:?} does not have associated TTL)"
    ))
}

/// Check IDs Consul keeps for maintenance checks (a user's check with one
/// would be confused with the maintenance row).
fn reserved_check_id(id: &str) -> bool {
    id == crate::local::NODE_MAINT_ID || id.starts_with(crate::local::SERVICE_MAINT_PREFIX)
}

fn check_error(e: CheckError) -> RegistryError {
    RegistryError::BadRequest(match e {
        CheckError::Decode(m) => format!("Request decode failed: {m}"),
        CheckError::Invalid(m) => format!("Invalid check: {m}"),
        CheckError::BadStatus | CheckError::Missing(_) => e.to_string(),
    })
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Services and checks whose replicated rows may differ from what is
/// wanted; `full`: compare everything.
#[derive(Default)]
struct Dirty {
    full: bool,
    services: HashSet<String>,
    checks: HashSet<String>,
}

impl Inner {
    fn mark_service(&self, local: &Local, id: &str) {
        let mut d = self.dirty.lock();
        d.services.insert(id.to_string());
        // Its checks carry its name; its maintenance check goes with it.
        for (cid, c) in &local.checks {
            if c.def.service_id == id {
                d.checks.insert(cid.clone());
            }
        }
        d.checks.insert(maintenance_id(id));
    }

    fn mark_check(&self, id: &str) {
        self.dirty.lock().checks.insert(id.to_string());
    }
}

struct Inner {
    cfg: RegistryConfig,
    store: Store,
    catalog: Catalog,
    runner: Runner,
    local: Mutex<Local>,
    /// Serializes changes with their saves (a later change's save never
    /// lands before an earlier one's).
    changing: tokio::sync::Mutex<()>,
    /// Check states to save with the next batch.
    dirty_states: Mutex<HashSet<String>>,
    /// What changed since the last catalog sync.
    dirty: Mutex<Dirty>,
    /// Wakes the catalog sync.
    sync: Notify,
    /// The last [`corro_checks::runner::Start::epoch`] given out.
    epochs: std::sync::atomic::AtomicU64,
    /// Bumped on every service change (hash-based blocking reads wait on it).
    generation: watch::Sender<u64>,
}

/// Handle to the registry (cheap to clone).
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

/// Alias checks read health here: local state for this node, the catalog
/// for others.
struct Alias(Mutex<Weak<Inner>>);

impl AliasSource for Alias {
    fn service_checks(
        &self,
        node: &str,
        service_id: &str,
        exclude: &str,
    ) -> Option<Vec<(String, Status, String)>> {
        let inner = self.0.lock().upgrade()?;
        if corro_catalog::same_name(node, &inner.cfg.node) {
            let local = inner.local.lock();
            local.services.get(service_id)?;
            let mut out = Vec::new();
            for (id, c) in &local.checks {
                if id != exclude && (c.def.service_id == service_id || c.def.service_id.is_empty())
                {
                    out.push((c.def.name.clone(), c.status, c.output.clone()));
                }
            }
            for (target, reason) in &local.maintenance {
                if target.is_empty() || target == service_id {
                    out.push((
                        "Maintenance Mode".to_string(),
                        Status::Critical,
                        reason.clone(),
                    ));
                }
            }
            return Some(out);
        }
        let index = inner.catalog.read();
        index
            .node_instances(node)
            .iter()
            .find(|i| i.service.id == service_id)?;
        let out = index
            .node_checks(node)
            .iter()
            .filter(|c| c.id != exclude && (c.service_id == service_id || c.service_id.is_empty()))
            .map(|c| {
                (
                    c.name.clone(),
                    Status::parse(c.status.as_str()).unwrap_or(Status::Critical),
                    c.output.clone(),
                )
            })
            .collect();
        Some(out)
    }
}

impl Registry {
    /// Loads saved registrations, starts their checks and the tasks that
    /// keep the replicated rows in step. Blocks briefly (one read).
    pub fn start(
        store: Store,
        catalog: Catalog,
        cfg: RegistryConfig,
        stop: CancellationToken,
    ) -> Result<Registry, RegistryError> {
        let alias = Arc::new(Alias(Mutex::new(Weak::new())));
        let prober = Arc::new(corro_checks::net::NetProber::new(
            cfg.node.clone(),
            Some(alias.clone()),
        ));
        let (runner, updates, done) = Runner::start_on_thread(
            prober,
            RunnerConfig {
                max_concurrent: cfg.max_concurrent_probes,
            },
            stop.clone(),
        )
        .map_err(|e| RegistryError::Failed(format!("could not start the check runner: {e}")))?;
        let inner = Arc::new(Inner {
            cfg,
            store,
            catalog,
            runner,
            local: Mutex::new(Local::default()),
            changing: tokio::sync::Mutex::new(()),
            dirty_states: Mutex::new(HashSet::new()),
            dirty: Mutex::new(Dirty {
                full: true,
                ..Dirty::default()
            }),
            sync: Notify::new(),
            epochs: std::sync::atomic::AtomicU64::new(0),
            generation: watch::channel(0).0,
        });
        *alias.0.lock() = Arc::downgrade(&inner);
        tokio::spawn(async move {
            if done.await.is_err() {
                tracing::error!(
                    "the check runner panicked: no check runs until the agent restarts"
                );
            }
        });
        let reg = Registry { inner };
        reg.restore()?;
        tokio::spawn(consume(reg.inner.clone(), updates, stop.clone()));
        tokio::spawn(sync_loop(reg.inner.clone(), stop.clone()));
        tokio::spawn(tick_loop(reg.inner.clone(), stop));
        reg.inner.sync.notify_one();
        Ok(reg)
    }

    pub fn node(&self) -> &str {
        &self.inner.cfg.node
    }

    pub fn datacenter(&self) -> &str {
        &self.inner.cfg.datacenter
    }

    fn restore(&self) -> Result<(), RegistryError> {
        let rows =
            persist::load(&self.inner.store).map_err(|e| RegistryError::Failed(e.to_string()))?;
        let mut states: HashMap<String, Value> = HashMap::new();
        let mut local = Local::default();
        let mut saved_checks = Vec::new();
        let mut saved_node = None;
        for (kind, id, body) in rows {
            match kind {
                RowKind::Service => {
                    let raw = &body["body"];
                    let origin = origin_of(&body);
                    match ServiceDefinition::decode(raw) {
                        Ok(mut def) => {
                            // Its checks come back from their own rows.
                            def.checks = Vec::new();
                            def.check_bodies = Vec::new();
                            let raw = raw.to_string().into_boxed_str();
                            local
                                .services
                                .insert(def.id.clone(), LocalService { def, raw, origin });
                        }
                        Err(e) => {
                            tracing::warn!(service = %id, error = %e, "skipping a saved service that no longer decodes")
                        }
                    }
                }
                RowKind::Check => saved_checks.push((id, body)),
                RowKind::CheckState => {
                    states.insert(id, body);
                }
                RowKind::Maintenance => {
                    let reason = body["reason"].as_str().unwrap_or_default().to_string();
                    local.maintenance.insert(id, reason);
                }
                RowKind::Meta => {
                    if id == "node" {
                        saved_node = body["name"].as_str().map(str::to_string);
                    }
                }
            }
        }
        let now = now_ms();
        for (id, saved) in saved_checks {
            let origin = origin_of(&saved);
            let def = match decode_saved_check(&saved) {
                Some(d) => d,
                None => {
                    tracing::warn!(check = %id, "skipping a saved check that no longer decodes");
                    continue;
                }
            };
            if !def.service_id.is_empty() && !local.services.contains_key(&def.service_id) {
                continue;
            }
            // The config may have changed since: a script check the config
            // no longer allows does not run again.
            if def.kind.runs_programs() && !self.script_allowed(&origin) {
                tracing::warn!(check = %id, "not restoring a script check: script checks are disabled in [services]");
                continue;
            }
            let st = states.get(&def.id);
            let status = st
                .and_then(|s| s["status"].as_str())
                .and_then(Status::parse)
                .or(def.initial_status)
                .unwrap_or(Status::Critical);
            let output = st
                .and_then(|s| s["output"].as_str())
                .unwrap_or_default()
                .to_string();
            let ttl_expires = st.and_then(|s| s["ttl_expires_at_ms"].as_i64());
            let ttl_left = ttl_expires.map(|t| Duration::from_millis((t - now).max(0) as u64));
            let def = Arc::new(def);
            self.inner.runner.add(
                def.clone(),
                Start {
                    status,
                    output: output.clone(),
                    ttl_left,
                    epoch: 0,
                },
            );
            local.checks.insert(
                def.id.clone(),
                LocalCheck {
                    def,
                    origin,
                    status,
                    published_output: output.clone(),
                    output,
                    output_due: None,
                    critical_since: (status == Status::Critical).then(Instant::now),
                    ttl_expires_at_ms: ttl_expires,
                    seq: 0,
                    epoch: 0,
                },
            );
        }
        tracing::info!(
            services = local.services.len(),
            checks = local.checks.len(),
            "native registrations restored"
        );
        *self.inner.local.lock() = local;
        if let Some(old) = saved_node.filter(|n| *n != self.inner.cfg.node) {
            self.forget_node(&old);
        }
        if let Err(e) = persist::save(
            &self.inner.store,
            &[(
                (RowKind::Meta, "node".into()),
                Some(json!({"name": self.inner.cfg.node})),
            )],
        ) {
            tracing::warn!(error = %e, "could not save the node name");
        }
        Ok(())
    }

    /// The node was renamed: its native rows under the old name go, if
    /// that name is still this agent's in the catalog (a name another host
    /// took since keeps its rows).
    fn forget_node(&self, old: &str) {
        let ours = {
            let index = self.inner.catalog.read();
            index.node(old).is_none_or(|n| {
                n.actor_id.is_empty() || n.actor_id == self.inner.store.actor_id().to_string()
            })
        };
        if !ours {
            tracing::warn!(
                old,
                "the node was renamed and another host now uses the old name; leaving its rows"
            );
            return;
        }
        let r = self.inner.store.transact(|tx| {
            tx.execute(
                "DELETE FROM consul_services WHERE node = ?1 AND source = 'native'",
                &[text(old)],
            )?;
            tx.execute(
                "DELETE FROM consul_checks WHERE node = ?1 AND source = 'native'",
                &[text(old)],
            )?;
            Ok(())
        });
        match r {
            Ok(_) => {
                tracing::info!(old, new = %self.inner.cfg.node, "node renamed: its native rows under the old name removed")
            }
            Err(e) => {
                tracing::warn!(old, error = %e, "could not remove native rows of the old node name")
            }
        }
    }

    async fn save(&self, writes: Vec<Write>) -> Result<(), RegistryError> {
        let store = self.inner.store.clone();
        tokio::task::spawn_blocking(move || persist::save(&store, &writes))
            .await
            .map_err(|e| RegistryError::Failed(e.to_string()))?
            .map_err(|e| {
                let text = format!("could not save the registration, nothing changed: {e}");
                if e.is_disk_full() {
                    RegistryError::DiskFull(text)
                } else {
                    RegistryError::Failed(text)
                }
            })
    }

    fn changed(&self) {
        {
            let local = self.inner.local.lock();
            metrics::gauge!("corro_registry_services").set(local.services.len() as f64);
            metrics::gauge!("corro_registry_checks").set(local.checks.len() as f64);
        }
        self.inner.generation.send_modify(|g| *g += 1);
        self.inner.sync.notify_one();
    }

    fn script_allowed(&self, origin: &Origin) -> bool {
        self.inner.cfg.enable_script_checks
            || (matches!(origin, Origin::File(_)) && self.inner.cfg.enable_local_script_checks)
    }

    fn vet_scripts<'a>(
        &self,
        checks: impl IntoIterator<Item = &'a CheckDefinition>,
        origin: &Origin,
    ) -> Result<(), RegistryError> {
        for c in checks {
            if reserved_check_id(&c.id) {
                return Err(RegistryError::BadRequest(format!(
                    "Invalid check: the ID {:?} is reserved for maintenance checks",
                    c.id
                )));
            }
            if c.kind.runs_programs() && !self.script_allowed(origin) {
                return Err(RegistryError::Failed(match origin {
                    Origin::Api => "Scripts are disabled on this agent from remote calls; to enable, configure 'enable_script_checks' to true".into(),
                    Origin::File(_) => "Scripts are disabled on this agent; to enable, configure 'enable_script_checks' or 'enable_local_script_checks' to true".into(),
                }));
            }
            if let Kind::Docker { .. } = c.kind {
                return Err(RegistryError::BadRequest(
                    "Invalid check: Docker checks are not supported by this agent (it runs no Docker exec)".into(),
                ));
            }
        }
        Ok(())
    }

    /// `PUT /v1/agent/service/register`: adds or replaces a service and its
    /// checks. A re-registration keeps the state of checks it keeps;
    /// `replace_existing_checks` removes the service's checks the body no
    /// longer lists (without it they stay, as Consul).
    pub async fn register_service(
        &self,
        raw: Value,
        replace_existing_checks: bool,
        origin: Origin,
    ) -> Result<(), RegistryError> {
        let def = ServiceDefinition::decode(&raw).map_err(|e| RegistryError::BadRequest(e.0))?;
        self.vet_scripts(&def.checks, &origin)?;
        let _one = self.inner.changing.lock().await;
        // Planned, saved, then applied: a save that fails leaves the agent
        // as it was (nothing live that a restart would lose).
        let mut writes: Vec<Write> = Vec::new();
        let drop: Vec<String> = {
            let local = self.inner.local.lock();
            if !local.services.contains_key(&def.id)
                && local.services.len() >= self.inner.cfg.max_services
            {
                return Err(RegistryError::BadRequest(format!(
                    "Validation failed: this agent holds {} services, its limit ([services] max_services)",
                    local.services.len()
                )));
            }
            let new_checks = def
                .checks
                .iter()
                .filter(|c| !local.checks.contains_key(&c.id))
                .count();
            if local.checks.len() + new_checks > self.inner.cfg.max_checks {
                return Err(RegistryError::BadRequest(format!(
                    "Validation failed: this agent holds {} checks, its limit is {} ([services] max_checks)",
                    local.checks.len(),
                    self.inner.cfg.max_checks
                )));
            }
            let listed: HashSet<&str> = def.checks.iter().map(|c| c.id.as_str()).collect();
            let drop: Vec<String> = if replace_existing_checks {
                local
                    .checks
                    .iter()
                    .filter(|(id, c)| c.def.service_id == def.id && !listed.contains(id.as_str()))
                    .map(|(id, _)| id.clone())
                    .collect()
            } else {
                Vec::new()
            };
            for id in &drop {
                writes.push(((RowKind::CheckState, id.clone()), None));
                writes.push(((RowKind::Check, id.clone()), None));
            }
            for (c, body) in def.checks.iter().zip(&def.check_bodies) {
                check_writes(&local, c, body, &origin, &mut writes);
            }
            writes.push((
                (RowKind::Service, def.id.clone()),
                Some(json!({"body": raw, "file": file_of(&origin)})),
            ));
            drop
        };
        self.save(writes).await?;
        {
            let mut local = self.inner.local.lock();
            for id in drop {
                local.checks.remove(&id);
                self.inner.runner.remove(&id);
                self.inner.mark_check(&id);
            }
            let mut def = def;
            let checks = std::mem::take(&mut def.checks);
            def.check_bodies = Vec::new();
            for c in checks {
                apply_check(&self.inner, &mut local, c, &origin);
            }
            // Kept once: the checks live in `local.checks`, the body as sent.
            let id = def.id.clone();
            let raw = raw.to_string().into_boxed_str();
            local
                .services
                .insert(id.clone(), LocalService { def, raw, origin });
            self.inner.mark_service(&local, &id);
        }
        self.changed();
        Ok(())
    }

    /// `PUT /v1/agent/service/deregister/:id`: the service and its checks.
    pub async fn deregister_service(&self, id: &str) -> Result<(), RegistryError> {
        self.deregister_service_if(id, |_| true).await
    }

    /// Deregisters `id` if `still` holds under the change lock (the reaper
    /// decides outside it; a re-registration or recovery since wins).
    async fn deregister_service_if(
        &self,
        id: &str,
        still: impl Fn(&Local) -> bool,
    ) -> Result<(), RegistryError> {
        let _one = self.inner.changing.lock().await;
        let mut writes: Vec<Write> = Vec::new();
        let drop: Vec<String> = {
            let local = self.inner.local.lock();
            if !local.services.contains_key(id) {
                return Err(unknown_service(id));
            }
            if !still(&local) {
                return Err(RegistryError::Failed("no longer due".into()));
            }
            writes.push(((RowKind::Service, id.to_string()), None));
            let drop: Vec<String> = local
                .checks
                .iter()
                .filter(|(_, c)| c.def.service_id == id)
                .map(|(cid, _)| cid.clone())
                .collect();
            for cid in &drop {
                writes.push(((RowKind::CheckState, cid.clone()), None));
                writes.push(((RowKind::Check, cid.clone()), None));
            }
            if local.maintenance.contains_key(id) {
                writes.push(((RowKind::Maintenance, id.to_string()), None));
            }
            drop
        };
        self.save(writes).await?;
        {
            let mut local = self.inner.local.lock();
            self.inner.mark_service(&local, id);
            local.services.remove(id);
            for cid in drop {
                local.checks.remove(&cid);
                self.inner.runner.remove(&cid);
            }
            local.maintenance.remove(id);
        }
        self.changed();
        Ok(())
    }

    /// `PUT /v1/agent/check/register`.
    pub async fn register_check(&self, raw: Value, origin: Origin) -> Result<(), RegistryError> {
        let obj = raw.as_object().ok_or_else(|| {
            RegistryError::BadRequest("Request decode failed: expected a JSON object".into())
        })?;
        // Consul checks the name before the check's own validation.
        let named = corro_checks::fields::Fields::new(obj)
            .string_or_empty(&["name"])
            .map_err(|e| RegistryError::BadRequest(format!("Request decode failed: {e}")))?;
        if named.is_empty() {
            return Err(RegistryError::BadRequest("Missing check name".into()));
        }
        let mut def = CheckDefinition::decode(obj)
            .map_err(|e| match e {
                // check/register's own wording (service bodies use the other).
                CheckError::BadStatus => RegistryError::BadRequest("Bad check status".into()),
                e => check_error(e),
            })?
            .ok_or_else(|| {
                check_error(CheckError::Invalid("TTL must be > 0 for TTL checks".into()))
            })?;
        if def.id.is_empty() {
            def.id = def.name.clone();
        }
        self.vet_scripts([&def], &origin)?;
        let _one = self.inner.changing.lock().await;
        let mut writes = Vec::new();
        {
            let local = self.inner.local.lock();
            if !def.service_id.is_empty() && !local.services.contains_key(&def.service_id) {
                return Err(RegistryError::NotFound(format!(
                    "ServiceID {:?} does not exist",
                    def.service_id
                )));
            }
            if !local.checks.contains_key(&def.id)
                && local.checks.len() >= self.inner.cfg.max_checks
            {
                return Err(RegistryError::BadRequest(format!(
                    "Validation failed: this agent holds {} checks, its limit ([services] max_checks)",
                    local.checks.len()
                )));
            }
            check_writes(&local, &def, &raw, &origin, &mut writes);
        }
        self.save(writes).await?;
        apply_check(&self.inner, &mut self.inner.local.lock(), def, &origin);
        self.changed();
        Ok(())
    }

    /// `PUT /v1/agent/check/deregister/:id`.
    pub async fn deregister_check(&self, id: &str) -> Result<(), RegistryError> {
        let _one = self.inner.changing.lock().await;
        if !self.inner.local.lock().checks.contains_key(id) {
            return Err(RegistryError::NotFound(format!(
                "Unknown check ID {id:?}. Ensure that the check ID is passed, not the check name."
            )));
        }
        self.save(vec![
            ((RowKind::CheckState, id.to_string()), None),
            ((RowKind::Check, id.to_string()), None),
        ])
        .await?;
        self.inner.local.lock().checks.remove(id);
        self.inner.mark_check(id);
        self.inner.runner.remove(id);
        self.changed();
        Ok(())
    }

    /// `PUT /v1/agent/check/{pass,warn,fail}/:id` and `…/update/:id`.
    pub async fn update_ttl(
        &self,
        id: &str,
        status: Status,
        note: String,
    ) -> Result<(), RegistryError> {
        let ttl = {
            let local = self.inner.local.lock();
            let c = local.checks.get(id).ok_or_else(|| unknown_check(id))?;
            match c.def.kind {
                Kind::Ttl { ttl } => ttl,
                _ => {
                    return Err(RegistryError::Failed(format!(
                        "CheckID {id:?} does not have associated TTL"
                    )));
                }
            }
        };
        let Some(update) = self.inner.runner.ttl_update(id, status, note).await else {
            return Err(unknown_check(id));
        };
        // Shown before answering, as Consul (the same update also reaches
        // `consume`, which then drops it as already applied).
        let mut local = self.inner.local.lock();
        let urgent = update.is_some_and(|u| apply_update(&self.inner, &mut local, u));
        if let Some(c) = local.checks.get_mut(id) {
            c.ttl_expires_at_ms = Some(now_ms() + ttl.as_millis() as i64);
        }
        drop(local);
        self.inner.dirty_states.lock().insert(id.to_string());
        if urgent {
            self.inner.sync.notify_one();
        }
        Ok(())
    }

    /// `PUT /v1/agent/service/maintenance/:id` (`service` given) and
    /// `PUT /v1/agent/maintenance` (the node).
    pub async fn maintenance(
        &self,
        service: Option<&str>,
        enable: bool,
        reason: &str,
    ) -> Result<(), RegistryError> {
        let _one = self.inner.changing.lock().await;
        let key = service.unwrap_or_default().to_string();
        if let Some(s) = service
            && !self.inner.local.lock().services.contains_key(s)
        {
            return Err(unknown_service(s));
        }
        let reason = if !enable {
            None
        } else if !reason.is_empty() {
            Some(reason.to_string())
        } else if service.is_some() {
            Some(DEFAULT_SERVICE_MAINT_REASON.to_string())
        } else {
            Some(DEFAULT_NODE_MAINT_REASON.to_string())
        };
        self.save(vec![(
            (RowKind::Maintenance, key.clone()),
            reason.as_ref().map(|r| json!({"reason": r})),
        )])
        .await?;
        {
            let mut local = self.inner.local.lock();
            match reason {
                Some(r) => local.maintenance.insert(key, r),
                None => local.maintenance.remove(&key),
            };
        }
        self.inner
            .mark_check(&maintenance_id(service.unwrap_or_default()));
        self.changed();
        Ok(())
    }

    /// `/v1/agent/services`: ID → `AgentService`.
    pub fn services_json(&self) -> BTreeMap<String, Value> {
        let local = self.inner.local.lock();
        local
            .services
            .iter()
            .map(|(id, s)| (id.clone(), s.def.agent_json(&self.inner.cfg.datacenter)))
            .collect()
    }

    /// `/v1/agent/service/:id`: the service with its `ContentHash`.
    pub fn service_json(&self, id: &str) -> Option<(Value, String)> {
        let local = self.inner.local.lock();
        let s = local.services.get(id)?;
        let mut v = s.def.agent_json(&self.inner.cfg.datacenter);
        let hash = content_hash(&v);
        v.as_object_mut()
            .expect("an object")
            .insert("ContentHash".into(), json!(hash));
        Some((v, hash))
    }

    /// A receiver that sees every later service change: subscribe before
    /// reading what to compare, then await `changed()` (no change between
    /// the read and the wait is missed).
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.inner.generation.subscribe()
    }

    /// `/v1/agent/checks`: ID → `HealthCheck` (with this agent's latest
    /// output, which may be newer than the replicated one).
    pub fn checks_json(&self) -> BTreeMap<String, Value> {
        self.inner.local.lock().checks_json(&self.inner.cfg.node)
    }

    /// `/v1/agent/health/service/id/:id`: `(aggregated status, entry)`.
    pub fn health_by_id(&self, id: &str) -> Option<(String, Value)> {
        let local = self.inner.local.lock();
        let s = local.services.get(id)?;
        let (status, checks) = local.service_health(&self.inner.cfg.node, id);
        Some((
            status.clone(),
            json!({
                "AggregatedStatus": status,
                "Service": s.def.agent_json(&self.inner.cfg.datacenter),
                "Checks": checks,
            }),
        ))
    }

    /// `/v1/agent/health/service/name/:name`: every local instance of the
    /// service (name compared case-insensitively, as Consul's catalog).
    pub fn health_by_name(&self, name: &str) -> Vec<(String, Value)> {
        let ids: Vec<String> = {
            let local = self.inner.local.lock();
            local
                .services
                .values()
                .filter(|s| corro_catalog::same_name(&s.def.name, name))
                .map(|s| s.def.id.clone())
                .collect()
        };
        ids.iter().filter_map(|id| self.health_by_id(id)).collect()
    }

    /// Services registered from definition files, by file.
    pub fn file_services(&self) -> BTreeMap<String, Vec<String>> {
        let local = self.inner.local.lock();
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for s in local.services.values() {
            if let Origin::File(f) = &s.origin {
                out.entry(f.clone()).or_default().push(s.def.id.clone());
            }
        }
        out
    }

    /// The raw body and origin of a service (definition-file reloads compare
    /// with it).
    pub fn service_source(&self, id: &str) -> Option<(Value, Origin)> {
        let local = self.inner.local.lock();
        local.services.get(id).map(|s| {
            let raw = serde_json::from_str(&s.raw).unwrap_or(Value::Null);
            (raw, s.origin.clone())
        })
    }
}

/// The saved rows for adding or replacing a check: its definition as its
/// own row (a check deregistered on its own stays gone after a restart,
/// even when its service's body listed it) and, unless the same definition
/// keeps running, its starting state.
fn check_writes(
    local: &Local,
    def: &CheckDefinition,
    body: &Value,
    origin: &Origin,
    writes: &mut Vec<Write>,
) {
    writes.push((
        (RowKind::Check, def.id.clone()),
        Some(json!({"body": body, "id": def.id, "name": def.name,
            "service_id": def.service_id, "file": file_of(origin)})),
    ));
    if local.checks.get(&def.id).is_some_and(|c| *c.def == *def) {
        return;
    }
    let (status, output) = start_state(local, def);
    writes.push((
        (RowKind::CheckState, def.id.clone()),
        Some(json!({"status": status.as_str(), "output": output,
            "ttl_expires_at_ms": ttl_expiry(def)})),
    ));
}

/// A new check starts as its `Status` says (critical unless given); a
/// changed one from its current status and output.
fn start_state(local: &Local, def: &CheckDefinition) -> (Status, String) {
    match local.checks.get(&def.id) {
        Some(old) => (old.status, old.output.clone()),
        None => (
            def.initial_status.unwrap_or(Status::Critical),
            String::new(),
        ),
    }
}

fn ttl_expiry(def: &CheckDefinition) -> Option<i64> {
    match def.kind {
        Kind::Ttl { ttl } => {
            Some(now_ms() + ttl.min(corro_checks::definition::MAX_PERIOD).as_millis() as i64)
        }
        _ => None,
    }
}

/// Adds or replaces a check in `local` and the runner, once its rows
/// ([`check_writes`]) are saved. A re-registration with the same
/// definition keeps the running check.
fn apply_check(inner: &Inner, local: &mut Local, def: CheckDefinition, origin: &Origin) {
    inner.mark_check(&def.id);
    if let Some(existing) = local.checks.get_mut(&def.id)
        && *existing.def == def
    {
        existing.origin = origin.clone();
        return;
    }
    let (status, output) = start_state(local, &def);
    let epoch = inner
        .epochs
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        + 1;
    if local.checks.contains_key(&def.id) {
        // A replaced check's saved state may predate an update taken in
        // while it was being saved.
        inner.dirty_states.lock().insert(def.id.clone());
    }
    let def = Arc::new(def);
    let published = local
        .checks
        .get(&def.id)
        .map_or_else(String::new, |c| c.published_output.clone());
    inner.runner.add(
        def.clone(),
        Start {
            status,
            output: output.clone(),
            ttl_left: None,
            epoch,
        },
    );
    let ttl_expires = ttl_expiry(&def);
    local.checks.insert(
        def.id.clone(),
        LocalCheck {
            def,
            origin: origin.clone(),
            status,
            output,
            published_output: published,
            output_due: None,
            critical_since: (status == Status::Critical).then(Instant::now),
            ttl_expires_at_ms: ttl_expires,
            seq: 0,
            epoch,
        },
    );
}

/// A saved check's definition, with the ID, name and service Consul filled.
fn decode_saved_check(saved: &Value) -> Option<CheckDefinition> {
    let mut def = CheckDefinition::decode(saved["body"].as_object()?).ok()??;
    def.id = saved["id"].as_str()?.to_string();
    def.name = saved["name"].as_str().unwrap_or(&def.name).to_string();
    def.service_id = saved["service_id"].as_str().unwrap_or_default().to_string();
    Some(def)
}

fn origin_of(saved: &Value) -> Origin {
    match saved["file"].as_str() {
        Some(f) => Origin::File(f.to_string()),
        None => Origin::Api,
    }
}

fn file_of(origin: &Origin) -> Value {
    match origin {
        Origin::File(f) => json!(f),
        Origin::Api => Value::Null,
    }
}

/// Hex of a stable 64-bit hash of the service's JSON (clients only compare
/// it with what this agent sent before).
fn content_hash(v: &Value) -> String {
    // FNV-1a over the canonical (sorted-key) JSON text.
    let text = v.to_string();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Applies the runner's updates: status changes are published at once,
/// output-only changes when due.
async fn consume(
    inner: Arc<Inner>,
    mut rx: tokio::sync::mpsc::Receiver<Update>,
    stop: CancellationToken,
) {
    loop {
        let u = tokio::select! {
            _ = stop.cancelled() => return,
            u = rx.recv() => match u { Some(u) => u, None => return },
        };
        let mut urgent = false;
        let mut drained = true;
        {
            let mut local = inner.local.lock();
            let mut batch = vec![u];
            while let Ok(more) = rx.try_recv() {
                batch.push(more);
                if batch.len() >= 1024 {
                    drained = false;
                    break;
                }
            }
            for u in batch {
                urgent |= apply_update(&inner, &mut local, u);
            }
        }
        if urgent {
            inner.sync.notify_one();
        } else if drained {
            // Only outputs moved: let more results gather before waking
            // again (one wake per result cost two context switches, at
            // thousands of probes a second). A status change arriving
            // meanwhile waits at most this long.
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(COALESCE) => {}
            }
        }
    }
}

/// How long output-only results gather before they are taken in.
const COALESCE: Duration = Duration::from_millis(50);

/// Takes in one of the runner's updates (unless a newer one already was);
/// `true` when the status changed (to replicate at once).
fn apply_update(inner: &Inner, local: &mut Local, u: Update) -> bool {
    let Some(c) = local.checks.get_mut(&u.id) else {
        return false;
    };
    if u.epoch != c.epoch || u.seq <= c.seq {
        return false;
    }
    c.seq = u.seq;
    let mut urgent = false;
    if c.status != u.status {
        c.critical_since = (u.status == Status::Critical).then(Instant::now);
        c.status = u.status;
        c.published_output = u.output.clone();
        c.output_due = None;
        urgent = true;
        inner.mark_check(&u.id);
        // Saved for restarts (TTL updates mark their own).
        inner.dirty_states.lock().insert(u.id.clone());
    } else if c.output_due.is_none() && u.output != c.published_output {
        let d = inner.cfg.check_update_interval;
        let jitter = rand::rng().random_range(Duration::ZERO..d.max(Duration::from_millis(1)));
        c.output_due = Some(Instant::now() + d / 2 + jitter);
    }
    if let Kind::Ttl { .. } = c.def.kind
        && u.status == Status::Critical
        && u.output.starts_with("TTL expired")
    {
        c.ttl_expires_at_ms = Some(now_ms());
    }
    c.output = u.output;
    urgent
}

/// Writes the replicated rows whenever something urgent changed, and every
/// minute regardless (repairs rows edited or lost elsewhere).
async fn sync_loop(inner: Arc<Inner>, stop: CancellationToken) {
    let mut failing = false;
    // A full compare every minute whatever else wakes the loop (a check
    // flapping every second must not postpone it forever).
    let mut full = tokio::time::interval(Duration::from_secs(60));
    full.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = inner.sync.notified() => {}
            _ = full.tick() => {
                inner.dirty.lock().full = true;
            }
        }
        let i = inner.clone();
        let r = tokio::task::spawn_blocking(move || sync_once(&i)).await;
        match r {
            Ok(Ok(_)) => {
                if failing {
                    tracing::info!("native registrations written again");
                }
                failing = false;
            }
            Ok(Err(e)) => {
                if !failing {
                    tracing::warn!(error = %e, "could not write native registrations; retrying");
                }
                failing = true;
                tokio::time::sleep(Duration::from_secs(1)).await;
                inner.sync.notify_one();
            }
            Err(e) => tracing::error!(error = %e, "native registration sync panicked"),
        }
    }
}

/// Every second: publishes due outputs, saves changed check states, and
/// deregisters services critical past `DeregisterCriticalServiceAfter`.
async fn tick_loop(inner: Arc<Inner>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                save_states(&inner);
                return;
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let now = Instant::now();
        let mut due = false;
        let mut reap = Vec::new();
        {
            let mut local = inner.local.lock();
            for (id, c) in local.checks.iter_mut() {
                if c.output_due.is_some_and(|t| t <= now) {
                    c.output_due = None;
                    c.published_output = c.output.clone();
                    inner.mark_check(id);
                    due = true;
                }
                if let (Some(after), Some(since)) =
                    (c.def.deregister_critical_after, c.critical_since)
                {
                    let after = after.max(corro_checks::definition::MIN_DEREGISTER_AFTER);
                    if !c.def.service_id.is_empty() && now.duration_since(since) >= after {
                        reap.push((c.def.service_id.clone(), c.def.id.clone()));
                    }
                }
            }
        }
        if due {
            inner.sync.notify_one();
        }
        {
            // Under the change lock: a deregistration cannot delete a
            // check's rows while its state is being written back.
            let _one = inner.changing.lock().await;
            let i = inner.clone();
            let _ = tokio::task::spawn_blocking(move || save_states(&i)).await;
        }
        let reg = Registry {
            inner: inner.clone(),
        };
        for (service, check) in reap {
            let still_due = |local: &Local| {
                local.checks.get(&check).is_some_and(|c| {
                    let after = c
                        .def
                        .deregister_critical_after
                        .map(|a| a.max(corro_checks::definition::MIN_DEREGISTER_AFTER));
                    c.def.service_id == service
                        && matches!((after, c.critical_since), (Some(a), Some(s)) if s.elapsed() >= a)
                })
            };
            if reg.deregister_service_if(&service, still_due).await.is_ok() {
                tracing::info!(%service, %check, "deregistered: critical for longer than DeregisterCriticalServiceAfter");
                metrics::counter!("corro_registry_reaped_total").increment(1);
            }
        }
    }
}

fn save_states(inner: &Inner) {
    let ids: Vec<String> = inner.dirty_states.lock().drain().collect();
    if ids.is_empty() {
        return;
    }
    let writes: Vec<Write> = {
        let local = inner.local.lock();
        ids.iter()
            .filter_map(|id| {
                let c = local.checks.get(id)?;
                Some((
                    (RowKind::CheckState, id.clone()),
                    Some(json!({"status": c.status.as_str(), "output": c.output,
                        "ttl_expires_at_ms": c.ttl_expires_at_ms})),
                ))
            })
            .collect()
    };
    if let Err(e) = persist::save(&inner.store, &writes) {
        tracing::warn!(error = %e, "could not save check states; retrying");
        inner.dirty_states.lock().extend(ids);
    }
}

const UPSERT_SERVICE: &str = "INSERT INTO consul_services (node, id, name, tags, meta, port, address, weights, tagged_addresses, updated_at, source) \
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'native') \
ON CONFLICT (node, id) DO UPDATE SET name = excluded.name, tags = excluded.tags, meta = excluded.meta, port = excluded.port, \
address = excluded.address, weights = excluded.weights, tagged_addresses = excluded.tagged_addresses, updated_at = excluded.updated_at, \
source = 'native'";
const DELETE_SERVICE: &str =
    "DELETE FROM consul_services WHERE node = ?1 AND id = ?2 AND source = 'native'";
const UPSERT_CHECK: &str = "INSERT INTO consul_checks (node, id, service_id, service_name, name, status, output, notes, type, updated_at, source) \
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'native') \
ON CONFLICT (node, id) DO UPDATE SET service_id = excluded.service_id, service_name = excluded.service_name, name = excluded.name, \
status = excluded.status, output = excluded.output, notes = excluded.notes, type = excluded.type, updated_at = excluded.updated_at, \
source = 'native'";
const DELETE_CHECK: &str =
    "DELETE FROM consul_checks WHERE node = ?1 AND id = ?2 AND source = 'native'";

fn text(s: &str) -> SqlValue {
    SqlValue::Text(s.to_string())
}

fn json_text<T: serde::Serialize>(v: &T) -> SqlValue {
    SqlValue::Text(serde_json::to_string(v).unwrap_or_default())
}

/// IDs compared per pass: a full compare copies at most this many wanted
/// rows at a time (20,000 checks copied at once showed in the agent's
/// peak memory).
const SYNC_CHUNK: usize = 1024;

/// One comparison of wanted rows with the catalog's, and one transaction
/// with the differences. Returns the statements written.
fn sync_once(inner: &Inner) -> Result<usize, RegistryError> {
    let mut scope = std::mem::take(&mut *inner.dirty.lock());
    let full = scope.full;
    let r = sync_scope(inner, &mut scope);
    if r.is_err() {
        // Compared again on the next attempt.
        let mut d = inner.dirty.lock();
        d.full |= full;
        d.services.extend(scope.services);
        d.checks.extend(scope.checks);
    }
    r
}

/// Compares the wanted rows in `scope` (everything when `scope.full`) with
/// the catalog's, a chunk of IDs at a time, and writes the differences in
/// one transaction (a service appears with its checks).
fn sync_scope(inner: &Inner, scope: &mut Dirty) -> Result<usize, RegistryError> {
    let failed = |e: &dyn std::fmt::Display| RegistryError::Failed(e.to_string());
    if !scope.full && scope.services.is_empty() && scope.checks.is_empty() {
        return Ok(0);
    }
    // The catalog must have seen our last write before we compare with it.
    inner.catalog.process_pending().map_err(|e| failed(&e))?;
    let node = &inner.cfg.node;
    if scope.full {
        // Every ID either side knows.
        {
            let local = inner.local.lock();
            scope.services.extend(local.services.keys().cloned());
            scope.checks.extend(local.checks.keys().cloned());
            for target in local.maintenance.keys() {
                scope.checks.insert(maintenance_id(target));
            }
        }
        let index = inner.catalog.read();
        let native = |s: &Option<String>| s.as_deref() == Some(SOURCE);
        scope.services.extend(
            index
                .exact_node_services(node)
                .filter(|s| native(&s.source))
                .map(|s| s.id.clone()),
        );
        scope.checks.extend(
            index
                .exact_node_checks(node)
                .filter(|c| native(&c.source))
                .map(|c| c.id.clone()),
        );
    }
    let now = SqlValue::Integer(now_ms());
    let mut statements: Vec<(&str, Vec<SqlValue>)> = Vec::new();
    let services: Vec<&String> = scope.services.iter().collect();
    for part in services.chunks(SYNC_CHUNK) {
        compare_services(inner, part, &now, &mut statements);
    }
    let checks: Vec<&String> = scope.checks.iter().collect();
    for part in checks.chunks(SYNC_CHUNK) {
        compare_checks(inner, part, &now, &mut statements);
    }
    tracing::debug!(
        full = scope.full,
        services = scope.services.len(),
        checks = scope.checks.len(),
        statements = statements.len(),
        "native registration sync"
    );
    if statements.is_empty() {
        return Ok(0);
    }
    let n = statements.len();
    let r = inner.store.transact(|tx| {
        for (sql, params) in &statements {
            tx.execute(sql, params)?;
        }
        Ok(())
    });
    r.map_err(|e| failed(&e))?;
    metrics::counter!("corro_registry_rows_written_total").increment(n as u64);
    if let Err(e) = inner.catalog.process_pending() {
        // Written; the next compare sees it.
        tracing::warn!(error = %e, "the catalog could not take in native rows yet");
    }
    Ok(n)
}

/// Statements that bring the services `ids` to what this agent wants.
fn compare_services(
    inner: &Inner,
    ids: &[&String],
    now: &SqlValue,
    statements: &mut Vec<(&'static str, Vec<SqlValue>)>,
) {
    let node = &inner.cfg.node;
    let wanted: Vec<(&String, Option<ServiceDefinition>)> = {
        let local = inner.local.lock();
        ids.iter()
            .map(|id| (*id, local.services.get(*id).map(|s| s.def.clone())))
            .collect()
    };
    let index = inner.catalog.read();
    let part: HashSet<&str> = ids.iter().map(|s| s.as_str()).collect();
    let have: HashMap<&str, &corro_catalog::model::Service> = index
        .exact_node_services(node)
        .filter(|s| part.contains(s.id.as_str()))
        .map(|s| (s.id.as_str(), &***s))
        .collect();
    for (id, want) in wanted {
        let have = have.get(id.as_str()).copied();
        let native = have.is_some_and(|s| s.source.as_deref() == Some(SOURCE));
        match want {
            Some(d) => {
                let same = native
                    && have.is_some_and(|s| {
                        s.name == d.name
                            && s.tags == d.tags
                            && s.meta == d.meta
                            && s.port == d.port
                            && s.address == d.address
                            && s.weights == d.weights
                            && s.tagged_addresses == d.tagged_addresses
                    });
                if !same {
                    statements.push((
                        UPSERT_SERVICE,
                        vec![
                            text(node),
                            text(id),
                            text(&d.name),
                            json_text(&d.tags),
                            json_text(&d.meta),
                            SqlValue::Integer(d.port),
                            text(&d.address),
                            json_text(&d.weights),
                            json_text(&d.tagged_addresses),
                            now.clone(),
                        ],
                    ));
                }
            }
            None if native => statements.push((DELETE_SERVICE, vec![text(node), text(id)])),
            None => {}
        }
    }
}

/// Statements that bring the checks `ids` to what this agent wants.
fn compare_checks(
    inner: &Inner,
    ids: &[&String],
    now: &SqlValue,
    statements: &mut Vec<(&'static str, Vec<SqlValue>)>,
) {
    let node = &inner.cfg.node;
    let wanted: Vec<(&String, Option<CheckRow>)> = {
        let local = inner.local.lock();
        ids.iter().map(|id| (*id, local.check_row(id))).collect()
    };
    let index = inner.catalog.read();
    let part: HashSet<&str> = ids.iter().map(|s| s.as_str()).collect();
    let have: HashMap<&str, &corro_catalog::model::Check> = index
        .exact_node_checks(node)
        .filter(|c| part.contains(c.id.as_str()))
        .map(|c| (c.id.as_str(), &***c))
        .collect();
    for (id, want) in wanted {
        let have = have.get(id.as_str()).copied();
        let native = have.is_some_and(|c| c.source.as_deref() == Some(SOURCE));
        match want {
            Some(w) => {
                let same = native
                    && have.is_some_and(|c| {
                        c.service_id == w.service_id
                            && c.service_name == w.service_name
                            && c.name == w.name
                            && c.status.as_str() == w.status
                            && c.output == w.output
                            && c.notes == w.notes
                            && c.kind == w.kind
                    });
                if !same {
                    statements.push((
                        UPSERT_CHECK,
                        vec![
                            text(node),
                            text(id),
                            text(&w.service_id),
                            text(&w.service_name),
                            text(&w.name),
                            text(&w.status),
                            text(&w.output),
                            text(&w.notes),
                            text(&w.kind),
                            now.clone(),
                        ],
                    ));
                }
            }
            None if native => statements.push((DELETE_CHECK, vec![text(node), text(id)])),
            None => {}
        }
    }
}
