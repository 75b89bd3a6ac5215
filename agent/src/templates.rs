//! Templates in the agent (`[[template]]`) and in `corrosion template`.
//!
//! Both run `corro_templates`; they differ in where the data comes from:
//! - [`LocalSource`]: the agent's own store and catalog. Change
//!   notifications come from the store's change feed (every commit, local
//!   or replicated, names its tables) and the catalog's change signal.
//! - [`HttpSource`]: a separate process asking the agent over its HTTP API
//!   (`/v1/queries`, `/v1/discovery`). It follows `/v1/updates/:table` for
//!   each table its templates read (one stream per table however many
//!   queries read it) and long-polls `/v1/discovery/index` once a template
//!   calls a discovery helper; caught-up state comes from `/v1/health`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use corro_client::{Client, Statement};
use corro_store::Store;
use corro_templates::{
    Deps, DiscoveryCall, Hub, Limits, Params, QueryLimits, Rows, Source, SourceError, Spec,
    TemplateSet,
};
use futures::StreamExt;
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::api::values as api_values;

/// KV keys and folders `corrosion template` follows with one blocking
/// query each; past this, one coarser watch covers the rest.
const MAX_KV_FOLLOWS: usize = 256;

/// How long the first render waits for the agent to catch up.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);

fn statement(sql: &str, params: &Params) -> Statement {
    match params {
        Params::None => Statement::Simple(sql.to_string()),
        Params::Positional(p) => Statement::WithParams(sql.to_string(), p.clone()),
        Params::Named(n) => {
            Statement::WithNamedParams(sql.to_string(), n.iter().cloned().collect())
        }
    }
}

/// The agent's store and catalog as a template source.
pub(crate) struct LocalSource {
    store: Store,
    discovery: crate::consul::Discovery,
}

impl Source for LocalSource {
    fn query(&self, sql: &str, params: &Params, limits: QueryLimits) -> Result<Rows, SourceError> {
        let err = |e: &dyn std::fmt::Display| SourceError(e.to_string());
        let conn = self.store.reader();
        // SQLite itself stops at the render's deadline (the pool clears it
        // when the connection goes back).
        let deadline = limits.deadline;
        conn.set_deadline(deadline);
        let late = |e: rusqlite::Error| {
            if std::time::Instant::now() > deadline {
                limits.too_slow()
            } else {
                err(&e)
            }
        };
        let mut stmt = conn.prepare_user(sql).map_err(|e| err(&e))?;
        api_values::bind(&mut stmt, &statement(sql, params)).map_err(|e| err(&e))?;
        let columns: Vec<String> = stmt.column_names().map(|c| c.to_string()).collect();
        let n = columns.len();
        let mut rows = stmt.raw_query();
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(late)? {
            if out.len() == limits.max_rows {
                return Err(limits.too_many_rows());
            }
            let mut cells = Vec::with_capacity(n);
            for i in 0..n {
                cells.push(api_values::from_ref(row.get_ref(i).map_err(|e| err(&e))?));
            }
            out.push(cells);
        }
        Ok(Rows::new(columns, out))
    }

    fn discovery(&self, call: &DiscoveryCall) -> Result<serde_json::Value, SourceError> {
        let index = self.discovery.catalog.read();
        Ok(corro_templates::discovery_answer(
            &index,
            &self.discovery.node.name,
            call,
        ))
    }
}

/// Starts the agent's `[[template]]` blocks (nothing when there are none).
pub(crate) fn start(
    store: &Store,
    discovery: &crate::consul::Discovery,
    caught_up: watch::Receiver<bool>,
    specs: Vec<Spec>,
    status: corro_templates::StatusBoard,
    stop: CancellationToken,
) {
    if specs.is_empty() {
        return;
    }
    let hub = Hub::new();
    {
        let hub = hub.clone();
        store.on_change(Arc::new(move |rows: &corro_store::RowsChanged| {
            let mut tables: Vec<&str> = rows.rows.iter().map(|r| &*r.table).collect();
            tables.sort_unstable();
            tables.dedup();
            hub.tables_changed(tables);
        }));
    }
    {
        // After the catalog shows them: a render woken here reads the new
        // values.
        let hub = hub.clone();
        discovery
            .catalog
            .on_kv_change(Arc::new(move |keys| hub.kv_changed(keys)));
    }
    {
        let hub = hub.clone();
        let mut rx = discovery.catalog.subscribe();
        let stop = stop.clone();
        crate::tasks::spawn(async move {
            loop {
                tokio::select! {
                    r = rx.changed() => if r.is_err() { break },
                    _ = stop.cancelled() => break,
                }
                hub.discovery_changed();
            }
        });
    }
    let set = TemplateSet {
        source: Arc::new(LocalSource {
            store: store.clone(),
            discovery: discovery.clone(),
        }),
        hub,
        hostname: crate::consul::hostname(),
        limits: Limits::default(),
        caught_up,
        catch_up_timeout: CATCH_UP_TIMEOUT,
        status,
    };
    crate::tasks::spawn(async move {
        let _ = set.run(specs, false, stop).await;
    });
}

/// The agent's HTTP API as a template source (`corrosion template`).
pub(crate) struct HttpSource {
    client: Client,
    runtime: tokio::runtime::Handle,
    hub: Hub,
    watched: Mutex<HashSet<String>>,
    /// KV keys and folders followed (`true`: a folder).
    kv_watched: Mutex<HashSet<(String, bool)>>,
    kv_overflow: AtomicBool,
    discovery_watched: AtomicBool,
    warned_any_table: AtomicBool,
}

impl HttpSource {
    fn block_on<F: Future>(&self, f: F) -> F::Output {
        // Called from the renderer's blocking thread, never from a runtime
        // worker.
        self.runtime.block_on(f)
    }

    /// Follows one table's update feed until the process ends: each change
    /// (and each (re)connection, which may have missed some) re-renders.
    fn follow_table(&self, table: String) {
        let (client, hub) = (self.client.clone(), self.hub.clone());
        self.runtime.spawn(async move {
            let mut backoff = Duration::from_millis(250);
            loop {
                match client.updates(&table).await {
                    Ok(stream) => {
                        backoff = Duration::from_millis(250);
                        hub.tables_changed([table.as_str()]);
                        futures::pin_mut!(stream);
                        while let Some(ev) = stream.next().await {
                            match ev {
                                Ok(_) => hub.tables_changed([table.as_str()]),
                                Err(e) => {
                                    tracing::debug!(target: corro_templates::LOG_TARGET, table = %table, error = %e, "update feed ended");
                                    break;
                                }
                            }
                        }
                    }
                    Err(corro_client::ClientError::Api { status, message })
                        if (400..500).contains(&status)
                            && !matches!(status, 401 | 403 | 408 | 429) =>
                    {
                        // A CTE or view name, not a replicated table.
                        tracing::debug!(target: corro_templates::LOG_TARGET, table = %table, %message, "not following");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(target: corro_templates::LOG_TARGET, table = %table, error = %e, "cannot follow the table's changes; retrying");
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        });
    }

    /// Follows one KV key or folder with a blocking KV query: each new
    /// index (and the first answer, which may cover a change made since
    /// the render read it) marks it changed.
    fn follow_kv(&self, key: String, folder: bool) {
        let (client, hub) = (self.client.clone(), self.hub.clone());
        self.runtime.spawn(async move {
            let query = if folder { "recurse" } else { "" };
            let mut index = 0;
            let mut backoff = Duration::from_millis(250);
            loop {
                match client.kv_index(&key, query, index, 300).await {
                    Ok(i) => {
                        backoff = Duration::from_millis(250);
                        if i != index {
                            index = i;
                            hub.kv_changed(Some(std::slice::from_ref(&key)));
                        }
                    }
                    Err(corro_client::ClientError::Api { status, message })
                        if (400..500).contains(&status)
                            && !matches!(status, 401 | 403 | 408 | 429) =>
                    {
                        // A key the agent refuses: render again so the
                        // render reports it.
                        tracing::warn!(target: corro_templates::LOG_TARGET, key = %key, %message, "not following the KV key");
                        hub.kv_changed(Some(std::slice::from_ref(&key)));
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(target: corro_templates::LOG_TARGET, key = %key, error = %e, "cannot follow the KV key; retrying");
                        index = 0;
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                        continue;
                    }
                }
            }
        });
    }

    /// Past [`MAX_KV_FOLLOWS`] keys: the catalog index instead (it moves on
    /// every KV change too), each move counting as "any key changed".
    fn follow_kv_coarsely(&self) {
        let hub = self.hub.clone();
        self.follow_catalog_index("KV changes", "kv", move || hub.kv_changed(None));
    }

    /// Long-polls the catalog index; every move re-renders.
    fn follow_discovery(&self) {
        let hub = self.hub.clone();
        self.follow_catalog_index("the discovery catalog", "catalog", move || {
            hub.discovery_changed()
        });
    }

    /// Long-polls the catalog index until the process ends, calling
    /// `moved` at each new value (`what`: for the retry warning).
    fn follow_catalog_index(
        &self,
        what: &'static str,
        kind: &'static str,
        moved: impl Fn() + Send + 'static,
    ) {
        let client = self.client.clone();
        self.runtime.spawn(async move {
            let mut index = 0;
            loop {
                match client.discovery_index(index, 300, kind).await {
                    Ok(i) => {
                        if i != index {
                            index = i;
                            moved();
                        }
                    }
                    Err(e) => {
                        tracing::warn!(target: corro_templates::LOG_TARGET, error = %e, "cannot follow {what}; retrying");
                        index = 0;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
    }
}

impl Source for HttpSource {
    fn query(&self, sql: &str, params: &Params, limits: QueryLimits) -> Result<Rows, SourceError> {
        use corro_client::types::QueryEvent;
        use futures::StreamExt;
        let err = |e: &dyn std::fmt::Display| SourceError(e.to_string());
        let left = limits
            .deadline
            .saturating_duration_since(std::time::Instant::now());
        let work = async {
            // The agent stops the statement at the same deadline.
            let events = self
                .client
                .query_events_within(&statement(sql, params), Some(left))
                .await
                .map_err(|e| err(&e))?;
            futures::pin_mut!(events);
            let (mut columns, mut rows) = (Vec::new(), Vec::new());
            while let Some(ev) = events.next().await {
                match ev.map_err(|e| err(&e))? {
                    QueryEvent::Columns(c) => columns = c,
                    QueryEvent::Row(_, cells) => {
                        if rows.len() == limits.max_rows {
                            // Dropping the stream closes the connection.
                            return Err(limits.too_many_rows());
                        }
                        rows.push(cells);
                    }
                    QueryEvent::EndOfQuery { .. } => return Ok(Rows::new(columns, rows)),
                    QueryEvent::Error(m) => return Err(SourceError(m)),
                    QueryEvent::Change(..) => {}
                }
            }
            Err(SourceError(
                "the agent closed the query stream early".into(),
            ))
        };
        self.block_on(async {
            tokio::time::timeout(left, work)
                .await
                .unwrap_or_else(|_| Err(limits.too_slow()))
        })
    }

    fn discovery(&self, call: &DiscoveryCall) -> Result<serde_json::Value, SourceError> {
        let body = serde_json::to_value(call).map_err(|e| SourceError(e.to_string()))?;
        self.block_on(self.client.discovery(&body))
            .map(|a| a.value)
            .map_err(|e| SourceError(e.to_string()))
    }

    fn watch(&self, deps: &Deps) {
        if deps.any_table && !self.warned_any_table.swap(true, Ordering::Relaxed) {
            tracing::warn!(target: corro_templates::LOG_TARGET, "a query's tables could not be told from its SQL; it re-renders only when other dependencies change");
        }
        let new: Vec<String> = {
            let mut watched = self.watched.lock();
            deps.tables
                .iter()
                .filter(|t| watched.insert((*t).clone()))
                .cloned()
                .collect()
        };
        for t in new {
            self.follow_table(t);
        }
        if deps.discovery && !self.discovery_watched.swap(true, Ordering::Relaxed) {
            self.follow_discovery();
        }
        let wanted = deps
            .kv_keys
            .iter()
            .map(|k| (k.clone(), false))
            .chain(deps.kv_prefixes.iter().map(|p| (p.clone(), true)));
        let new: Vec<(String, bool)> = {
            let mut watched = self.kv_watched.lock();
            let mut new = Vec::new();
            for w in wanted {
                if watched.contains(&w) {
                    continue;
                }
                if watched.len() >= MAX_KV_FOLLOWS {
                    if !self.kv_overflow.swap(true, Ordering::Relaxed) {
                        tracing::warn!(target: corro_templates::LOG_TARGET, limit = MAX_KV_FOLLOWS, "templates read more KV keys and folders than are followed one by one; the rest re-render on any catalog change");
                        self.follow_kv_coarsely();
                    }
                    break;
                }
                watched.insert(w.clone());
                new.push(w);
            }
            new
        };
        for (k, folder) in new {
            self.follow_kv(k, folder);
        }
    }
}

/// `corrosion template src:dst[:command] ... [--once]`.
pub(crate) async fn command(
    addr: SocketAddr,
    token: Option<String>,
    args: Vec<String>,
    once: bool,
) -> anyhow::Result<()> {
    if args.is_empty() {
        anyhow::bail!("no template given: corrosion template SOURCE:DESTINATION[:COMMAND] ...");
    }
    let specs = args
        .iter()
        .map(|a| Spec::parse_arg(a))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!(e))?;
    let client = Client::new(addr, token);
    let hub = Hub::new();
    let (caught_tx, caught_up) = watch::channel(false);
    {
        let client = client.clone();
        tokio::spawn(async move {
            loop {
                match client.health().await {
                    Ok(h) if h.caught_up => {
                        caught_tx.send_replace(true);
                        return;
                    }
                    // Rendering once against an agent that is down: fail
                    // now rather than after the catch-up timeout.
                    Err(_) if once => {
                        caught_tx.send_replace(true);
                        return;
                    }
                    _ => {}
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
    }
    let set = TemplateSet {
        source: Arc::new(HttpSource {
            client,
            runtime: tokio::runtime::Handle::current(),
            hub: hub.clone(),
            watched: Mutex::default(),
            discovery_watched: AtomicBool::new(false),
            kv_watched: Mutex::new(HashSet::new()),
            kv_overflow: AtomicBool::new(false),
            warned_any_table: AtomicBool::new(false),
        }),
        hub,
        hostname: crate::consul::hostname(),
        limits: Limits::default(),
        caught_up,
        catch_up_timeout: CATCH_UP_TIMEOUT,
        status: corro_templates::StatusBoard::default(),
    };
    let stop = CancellationToken::new();
    let stop_on_signal = stop.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
        stop_on_signal.cancel();
    });
    set.run(specs, once, stop).await?;
    Ok(())
}
