//! The agent process: opens the store, applies the schema, serves the HTTP
//! API and the admin socket, and handles signals.
//!
//! SIGHUP re-applies the schema files (a rejected change is logged and the
//! old schema stays) and the service definition files (a refused file keeps
//! its services' last good state). SIGTERM/SIGINT stop accepting requests, let in-flight
//! ones finish (a write either commits or is rolled back, never half-done),
//! then close the database. An exclusive lock on `<db>.lock` keeps a second
//! agent, or `corrosion restore`, away from a database in use.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use anyhow::Context;
use corro_store::{Store, StoreOptions};
use tokio::signal::unix::{SignalKind, signal};

use crate::admin::{self, AdminHandler};
use crate::api::{self, ApiState, Limits};
use crate::config::{Config, Source};
use crate::logging::LogHandle;

/// Holds the database lock for the agent's lifetime.
pub(crate) struct DbLock {
    _file: std::fs::File,
}

/// Takes the agent lock next to the database, or says who holds it.
pub(crate) fn lock_db(db: &std::path::Path) -> anyhow::Result<DbLock> {
    if let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let path = lock_path(db);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(DbLock { _file: file }),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "{} is in use by a running agent (lock {} is held)",
            db.display(),
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}

fn lock_path(db: &std::path::Path) -> std::path::PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(".lock");
    p.into()
}

/// Applies the configured schema files; returns what changed.
pub(crate) fn apply_schema(store: &Store, config: &Config) -> anyhow::Result<SchemaSummary> {
    let paths: Vec<&std::path::PathBuf> = config
        .db
        .schema_paths
        .iter()
        .filter(|p| p.exists())
        .collect();
    for missing in config.db.schema_paths.iter().filter(|p| !p.exists()) {
        tracing::warn!(path = %missing.display(), "schema path does not exist; skipping");
    }
    let started = Instant::now();
    let diff = store.apply_schema_paths(&paths)?;
    for t in &diff.new_tables {
        tracing::info!("creating table '{}'", t.name);
    }
    for (t, c) in &diff.new_columns {
        tracing::info!("adding column '{}' to table '{t}'", c.name);
    }
    tracing::info!("Applied schema in {}s", started.elapsed().as_secs_f64());
    Ok(SchemaSummary::from(&diff))
}

/// What a schema change did, for the admin socket's answer.
#[derive(Debug, serde::Serialize)]
pub(crate) struct SchemaSummary {
    pub new_tables: Vec<String>,
    pub new_columns: Vec<String>,
    pub created_indexes: Vec<String>,
    pub dropped_indexes: Vec<String>,
    pub kept_tables: Vec<String>,
}

impl From<&corro_store::SchemaDiff> for SchemaSummary {
    fn from(d: &corro_store::SchemaDiff) -> Self {
        SchemaSummary {
            new_tables: d.new_tables.iter().map(|t| t.name.clone()).collect(),
            new_columns: d
                .new_columns
                .iter()
                .map(|(t, c)| format!("{t}.{}", c.name))
                .collect(),
            created_indexes: d.create_indexes.iter().map(|i| i.name.clone()).collect(),
            dropped_indexes: d.drop_indexes.clone(),
            kept_tables: d.kept_tables.clone(),
        }
    }
}

struct Handler {
    store: Store,
    config: Config,
    log: LogHandle,
    /// Set once the cluster is up (the admin socket starts first).
    cluster: std::sync::OnceLock<crate::cluster::Cluster>,
    /// Set once the catalog is loaded.
    discovery: std::sync::OnceLock<crate::consul::Discovery>,
    /// Set once the native registry runs.
    registry: std::sync::OnceLock<corro_registry::Registry>,
}

impl Handler {
    /// Re-reads the service definition files and brings the registry to
    /// them; `Err` lists the refused files (the others are applied).
    async fn reload_services(&self) -> Result<serde_json::Value, String> {
        let Some(reg) = self.registry.get() else {
            return Ok(serde_json::Value::Null);
        };
        let paths = self.config.services.paths.clone();
        let loaded = tokio::task::spawn_blocking(move || corro_registry::files::load(&paths))
            .await
            .map_err(|e| e.to_string())?;
        let r = corro_registry::files::reconcile(reg, loaded).await;
        if !r.refused.is_empty() {
            return Err(format!(
                "service definitions refused (their services keep their last good state): {}",
                r.refused.join("; ")
            ));
        }
        Ok(serde_json::json!({
            "registered": r.registered,
            "deregistered": r.deregistered,
            "unchanged": r.unchanged,
        }))
    }
}

impl AdminHandler for Handler {
    fn reload(&self) -> Result<serde_json::Value, String> {
        tracing::info!("admin: re-applying schema files and service definitions");
        let schema = apply_schema(&self.store, &self.config)
            .map(|d| serde_json::to_value(d).unwrap_or_default())
            .map_err(|e| format!("schema not applied, the previous one stays in force: {e:#}"));
        // New discovery tables (or rows the catalog could not read before).
        if let Some(d) = self.discovery.get()
            && let Err(e) = d.catalog.reload()
        {
            tracing::warn!(error = %e, "catalog reload after the schema change failed");
        }
        // Called on a blocking thread (the admin socket and SIGHUP both
        // spawn_blocking it): wait for the async reconciliation here.
        let services = tokio::runtime::Handle::current().block_on(self.reload_services());
        match (schema, services) {
            (Ok(schema), Ok(services)) => {
                Ok(serde_json::json!({"schema": schema, "services": services}))
            }
            (Err(e), Ok(_)) | (Ok(_), Err(e)) => Err(e),
            (Err(a), Err(b)) => Err(format!("{a}; {b}")),
        }
    }

    fn books(&self) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        for (actor, b) in self.store.books() {
            out.insert(
                actor.to_string(),
                serde_json::json!({
                    "head": b.head,
                    "needed": b.needed().iter().map(|r| [*r.start(), *r.end()]).collect::<Vec<_>>(),
                    "partials": b.partials.len(),
                }),
            );
        }
        serde_json::Value::Object(out)
    }

    fn verify(&self) -> Result<serde_json::Value, String> {
        let check: Vec<String> = {
            let conn = self.store.reader();
            let mut st = conn
                .prepare("PRAGMA integrity_check")
                .map_err(|e| e.to_string())?;
            st.query_map([], |r| r.get::<_, String>(0))
                .map_err(|e| e.to_string())?
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?
        };
        if check != ["ok"] {
            return Err(format!("SQLite integrity check: {}", check.join("; ")));
        }
        self.store
            .verify()
            .map_err(|e| format!("bookkeeping: {e}"))?;
        Ok(serde_json::json!({"integrity_check": "ok", "bookkeeping": "ok"}))
    }

    fn set_log_level(&self, level: &str) -> Result<(), String> {
        self.log.set(level)?;
        tracing::info!(filter = %level, "log filter changed");
        Ok(())
    }

    fn reset_log_level(&self) -> Result<String, String> {
        let l = self.log.reset()?;
        tracing::info!(filter = %l, "log filter reset");
        Ok(l)
    }

    fn rejoin(&self) -> Result<usize, String> {
        self.cluster
            .get()
            .map(|c| c.rejoin())
            .ok_or_else(|| "the cluster is not running yet".to_string())
    }

    fn members(&self) -> serde_json::Value {
        let members = self.cluster.get().map(|c| c.members()).unwrap_or_default();
        serde_json::to_value(members).unwrap_or_default()
    }
}

/// Raises the soft limit on open files to the hard one: every API and
/// DNS connection is a descriptor, and the usual soft default (1,024) is
/// below `api.max_conns`. Under systemd the unit sets both.
fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut l = getrlimit(Resource::Nofile);
    if let Some(hard) = l.maximum
        && l.current.is_some_and(|c| c < hard)
    {
        l.current = Some(hard);
        match setrlimit(Resource::Nofile, l) {
            Ok(()) => tracing::debug!(limit = hard, "raised the open-files limit"),
            Err(e) => tracing::warn!(error = %e, "could not raise the open-files limit"),
        }
    }
}

/// While the disk holding the database is full (the store refuses
/// writes), checks every second whether space is back; then asks for a
/// sync round at once so the changes refused meanwhile arrive.
fn watch_disk_space(store: Store, cluster: crate::cluster::Cluster, stop: CancellationToken) {
    crate::tasks::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            if store.disk_full().is_none() {
                metrics::gauge!("corro_store_disk_full").set(0.0);
                continue;
            }
            metrics::gauge!("corro_store_disk_full").set(1.0);
            let s = store.clone();
            if tokio::task::spawn_blocking(move || s.recheck_space())
                .await
                .unwrap_or(false)
            {
                metrics::gauge!("corro_store_disk_full").set(0.0);
                cluster.sync_now();
            }
        }
    });
}

/// `max_conns`, lowered (with a warning) to leave 1,024 descriptors of the
/// open-files limit for the database, DNS, peers and templates.
fn within_fd_limit(max_conns: usize) -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    match limit {
        Some(l) if (l as usize).saturating_sub(1024) < max_conns => {
            let capped = (l as usize).saturating_sub(1024).max(64);
            tracing::warn!(
                max_conns,
                open_files_limit = l,
                capped,
                "api.max_conns is above what the open-files limit allows; using {capped}"
            );
            capped
        }
        _ => max_conns,
    }
}

/// Runs the agent until SIGTERM/SIGINT.
pub(crate) async fn agent(config: Config, source: Source, log: LogHandle) -> anyhow::Result<()> {
    // Handlers first: a SIGHUP or SIGTERM that arrives while the agent is
    // still starting is handled once it runs instead of killing it.
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tracing::info!("Starting Corrosion Agent v{}", env!("CARGO_PKG_VERSION"));
    match &source {
        Source::File(p) => tracing::info!(config = %p.display(), "loaded config"),
        Source::Embedded => {
            tracing::info!(
                "no config file at {}; using the embedded default (data in ./corrosion-data)",
                crate::config::DEFAULT_CONFIG_PATH
            );
            for p in &config.db.schema_paths {
                std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
            }
            // Discovery works out of the box: the shipped Consul tables go
            // into the default schema directory on first start.
            if let Some(dir) = config.db.schema_paths.first() {
                let file = dir.join("consul.sql");
                if !file.exists() {
                    std::fs::write(&file, crate::consul::SHIPPED_SCHEMA)
                        .with_context(|| format!("writing {}", file.display()))?;
                    tracing::info!(path = %file.display(), "wrote the shipped discovery schema");
                }
            }
        }
    }
    raise_fd_limit();
    let _lock = lock_db(&config.db.path)?;
    let db = config.db.path.clone();
    let opts = StoreOptions {
        answer_cache_bytes: config.api.cache_max_bytes,
        ..StoreOptions::default()
    };
    let store = tokio::task::spawn_blocking(move || Store::open(&db, opts))
        .await?
        .with_context(|| format!("opening {}", config.db.path.display()))?;
    tracing::info!("Actor ID: {}", store.actor_id());
    {
        let (s, c) = (store.clone(), config.clone());
        tokio::task::spawn_blocking(move || apply_schema(&s, &c)).await??;
    }

    // One token stops everything (see `tasks`).
    let stop = CancellationToken::new();
    let handler = Arc::new(Handler {
        store: store.clone(),
        config: config.clone(),
        log,
        cluster: std::sync::OnceLock::new(),
        discovery: std::sync::OnceLock::new(),
        registry: std::sync::OnceLock::new(),
    });
    let admin_task = admin::serve(config.admin.path.clone(), handler.clone(), stop.clone()).await?;

    if let Some(p) = &config.telemetry.prometheus {
        crate::telemetry::serve(p.addr, stop.clone()).await?;
    }
    let cluster =
        crate::cluster::Cluster::start(store.clone(), &config.gossip, stop.clone()).await?;
    let _ = handler.cluster.set(cluster.clone());
    if config.telemetry.prometheus.is_some() {
        crate::telemetry::sample(store.clone(), cluster.clone(), stop.clone());
    }
    let subs = corro_subs::Subscriptions::start(
        store.clone(),
        corro_subs::SubConfig {
            dir: config.subscriptions_dir(),
            max_log_changes: config.subscriptions.log_max_changes,
            max_log_age: Duration::from_secs(config.subscriptions.log_max_age_secs),
            max_log_bytes: config.subscriptions.log_max_bytes,
            idle_expiry: Duration::from_secs(config.subscriptions.idle_expiry_secs),
            listener_buffer: config.subscriptions.listener_buffer.max(1),
        },
        stop.clone(),
    )
    .context("starting subscriptions")?;
    {
        // Tracked: shutdown waits for the dispatcher and reaper.
        let subs = subs.clone();
        crate::tasks::spawn(async move { subs.stopped().await });
    }
    let discovery =
        crate::consul::Discovery::start(store.clone(), cluster.clone(), &config, stop.clone())
            .await
            .context("starting the discovery catalog")?;
    let _ = handler.discovery.set(discovery.clone());
    let template_board = corro_templates::StatusBoard::default();
    crate::templates::start(
        &store,
        &discovery,
        cluster.caught_up(),
        config.template.iter().map(|t| t.spec()).collect(),
        template_board.clone(),
        stop.clone(),
    );
    if let Some(dns) = &config.dns {
        let settings = corro_dns::DnsSettings {
            domain: dns.domain.to_ascii_lowercase(),
            datacenter: discovery.node.datacenter.clone(),
            node_name: discovery.node.name.clone(),
            only_passing: dns.only_passing,
            service_ttl: dns
                .service_ttl
                .iter()
                .map(|(k, v)| (k.clone(), v.secs()))
                .collect(),
            node_ttl: dns.node_ttl.secs(),
            udp_answer_limit: dns.udp_answer_limit,
            a_record_limit: dns.a_record_limit,
            enable_truncate: dns.enable_truncate,
            soa: corro_dns::SoaSettings {
                refresh: dns.soa.refresh,
                retry: dns.soa.retry,
                expire: dns.soa.expire,
                min_ttl: dns.soa.min_ttl,
            },
            cache_max_bytes: dns.cache_max_bytes,
        };
        let responder = corro_dns::Responder::new(discovery.catalog.clone(), settings);
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        let open = members_known(cluster.clone(), discovery.clone(), dns.start_wait);
        let bound = corro_dns::serve_after(responder, dns.addr, workers, stop.clone(), open)
            .await
            .with_context(|| format!("binding DNS on {}", dns.addr))?;
        tracing::info!(
            "Starting DNS server on udp/{} and tcp/{}",
            bound.udp,
            bound.tcp
        );
        crate::tasks::spawn(async move { bound.stopped().await });
    }
    let registry = {
        let mut cfg = corro_registry::RegistryConfig::new(
            discovery.node.name.clone(),
            discovery.node.datacenter.clone(),
        );
        cfg.enable_script_checks = config.services.enable_script_checks;
        cfg.enable_local_script_checks = config.services.enable_local_script_checks;
        cfg.check_update_interval = config.services.check_update_interval;
        cfg.max_concurrent_probes = config.services.max_concurrent_probes.max(1);
        cfg.max_services = config.services.max_services;
        cfg.max_checks = config.services.max_checks;
        corro_registry::Registry::start(store.clone(), discovery.catalog.clone(), cfg, stop.clone())
            .context("starting the native service registry")?
    };
    let _ = handler.registry.set(registry.clone());
    if !config.services.paths.is_empty()
        && let Err(e) = handler.reload_services().await
    {
        tracing::error!("{e}");
    }
    let token: Option<Arc<str>> = config.api.authz.bearer_token.as_deref().map(Arc::from);
    let consul = corro_consul_api::ConsulState::new(corro_consul_api::Shared {
        catalog: discovery.catalog.clone(),
        node: Arc::new(corro_consul_api::NodeInfo {
            name: discovery.node.name.clone(),
            datacenter: discovery.node.datacenter.clone(),
            address: discovery.node.address,
            meta: discovery.node.meta.clone(),
        }),
        token: token.clone(),
        answers: corro_consul_api::AnswerCache::new(config.consul.cache_max_bytes),
        stop: stop.clone(),
        membership: Some(Arc::new(cluster.clone())),
        registry: Some(registry),
        kv: Some(corro_consul_api::KvWriter::new(
            store.clone(),
            Some(cluster.writes_open_watch()),
        )),
    });
    let state = ApiState::new(api::ApiShared {
        store: store.clone(),
        limits: Limits {
            max_body_bytes: config.api.max_body_bytes,
            max_statements: config.api.max_statements,
            max_changes: config.api.max_changes,
            query_timeout: Duration::from_secs_f64(config.api.query_timeout_secs),
            body_timeout: Duration::from_secs(config.api.header_timeout_secs),
        },
        token,
        healthy: Arc::new(AtomicBool::new(true)),
        cluster: Some(cluster.clone()),
        subs: Some(subs),
        discovery: Some(discovery.clone()),
        consul: Some(consul.clone()),
        stop: stop.clone(),
    });
    let serve_limits = api::server::Connections::new(api::server::ServeLimits {
        max_conns_per_client: config.api.max_conns_per_client,
        max_conns: within_fd_limit(config.api.max_conns),
        header_timeout: Duration::from_secs(config.api.header_timeout_secs),
    });
    let ui = if config.ui.enabled {
        crate::ui::router(&state, template_board.clone(), &config.ui)
    } else {
        None
    };
    let consul_task = match config.consul.http_addr {
        Some(addr) => {
            let listener = api::server::bind(addr)
                .with_context(|| format!("binding the Consul HTTP API on {addr}"))?;
            tracing::info!(
                "Starting Consul-compatible API server on tcp/{}",
                listener.local_addr()?
            );
            Some(crate::tasks::spawn(api::server::serve(
                listener,
                api::consul_router(consul.clone(), ui.clone().map(|r| (r, state.clone()))),
                serve_limits.clone(),
                stop.clone(),
            )))
        }
        None => None,
    };
    let listener = api::server::bind(config.api.addr)
        .with_context(|| format!("binding the API on {}", config.api.addr))?;
    tracing::info!(
        "Starting public API server on tcp/{}",
        listener.local_addr()?
    );
    crate::service::ready("serving");
    crate::service::spawn_watchdog(store.clone(), stop.clone());
    watch_disk_space(store.clone(), cluster.clone(), stop.clone());
    let api_task = crate::tasks::spawn(api::server::serve(
        listener,
        api::router(state, ui),
        serve_limits,
        stop.clone(),
    ));

    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: re-applying schema files and service definitions");
                let h = handler.clone();
                match tokio::task::spawn_blocking(move || h.reload()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::error!("{e}"),
                    Err(e) => tracing::error!("schema reload task failed: {e}"),
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("shutting down: finishing in-flight requests");
    crate::service::stopping();
    stop.cancel();
    if let Err(e) = api_task.await {
        tracing::warn!(error = %e, "API server task failed");
    }
    if let Some(t) = consul_task {
        let _ = t.await;
    }
    let _ = admin_task.await;
    cluster.stopped(Duration::from_secs(5)).await;
    let left = crate::tasks::wait(Duration::from_secs(5)).await;
    if left > 0 {
        tracing::warn!(
            tasks = left,
            "tasks still running after 5 s; stopping anyway"
        );
    }
    drop(handler);
    drop(store);
    tracing::info!("stopped");
    Ok(())
}

/// Resolves when DNS may answer after a start (`[dns] start_wait`): once
/// the catalog has taken in membership as settled (a settled peer's member
/// view, down members included, arrived with a sync round), at once when
/// this node knows no peer (no `bootstrap`, no remembered member: nobody
/// to ask), or after `wait`. Until then a restarted agent holds every
/// member it remembered as alive, and counts members it never heard of as
/// alive, so it would name a host that died while it was down, and
/// resolvers downstream would keep that answer for its TTL; questions wait
/// in the sockets' queues instead (typically one sync round: well under a
/// second on a LAN).
async fn members_known(
    cluster: crate::cluster::Cluster,
    discovery: crate::consul::Discovery,
    wait: Duration,
) {
    let started = Instant::now();
    if wait.is_zero() || !cluster.sync_health().has_peers {
        return;
    }
    let mut known = discovery.settled_in_catalog();
    let by_view = cluster.view_applied();
    match tokio::time::timeout(wait, known.wait_for(|k| *k)).await {
        Ok(Ok(_)) if *by_view.borrow() => tracing::info!(
            waited_ms = started.elapsed().as_millis() as u64,
            "dns: answering: membership is settled in the catalog (a settled peer's member view)"
        ),
        _ => tracing::warn!(
            ?wait,
            "dns: answering from the local copy: no settled peer's member view within start_wait (hosts that died while this agent was down may be named until one arrives or this agent's own probes find them down)"
        ),
    }
}
