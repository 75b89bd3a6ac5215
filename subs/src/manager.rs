//! The subscription registry the agent runs.
//!
//! - The store's change feed ([`Store::on_change`]) drops the (table, key)
//!   pairs of every commit into a pending set; a dispatcher task takes
//!   everything pending at once (so bursts coalesce) and, on one blocking
//!   thread, has each subscription reading those tables re-read only the
//!   result rows built from the changed keys (the filtered statement of
//!   [`SubQuery`]), diff them against its materialized view, log the changes
//!   and publish them.
//! - A listener subscribes to the live channel *before* reading the view or
//!   the log under the view's lock, then skips live changes it already got:
//!   no change is lost or repeated between the initial rows (or a replay from
//!   `from`) and the live stream.
//! - A listener that falls more than `listener_buffer` changes behind gets an
//!   error event and is disconnected; memory stays bounded.
//! - Subscriptions live in `<dir>/<id>.sqlite` and are reloaded at start;
//!   each re-runs its query and logs the difference, so nothing committed
//!   while the agent was down (or between a commit and its notification
//!   before a crash) is missed. Subscriptions without listeners for
//!   `idle_expiry` are removed with their files.
//! - `updates(table)` serves `POST /v1/updates/:table`: for each changed row
//!   of the table, in commit order, `update` when the row exists after the
//!   commit, else `delete`, with its primary-key values.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use corro_client::Value;
use corro_store::{ReadConn, RowsChanged, SqlValue, Store, decode_key, encode_key};
use parking_lot::Mutex;
use tokio::sync::{Notify, broadcast};
use uuid::Uuid;

use crate::SubError;
use crate::diff::Fresh;
use crate::matview::{Definition, LoggedChange, Matview};
use crate::query::{RowFilter, SubQuery};
use crate::values::{from_ref, to_sql, to_value};

/// Keys per filtered re-read (each key binds its pk columns).
const KEYS_PER_READ: usize = 500;

/// Settings (`[subscriptions]` in the agent's config).
#[derive(Debug, Clone)]
pub struct SubConfig {
    /// Where subscription files live.
    pub dir: PathBuf,
    /// The log keeps at least this many changes...
    pub max_log_changes: u64,
    /// ...and every change younger than this, but never more than this
    /// many bytes (the oldest changes go first).
    pub max_log_age: Duration,
    pub max_log_bytes: u64,
    /// A subscription with no listener for this long is removed.
    pub idle_expiry: Duration,
    /// Changes a listener may fall behind before it is cut off.
    pub listener_buffer: usize,
}

/// Parameters of a subscription's query.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Params {
    #[default]
    None,
    Positional(Vec<Value>),
    Named(Vec<(String, Value)>),
}

impl Params {
    fn to_json(&self) -> String {
        match self {
            Params::None => "[]".into(),
            Params::Positional(p) => serde_json::to_string(p).unwrap_or_default(),
            Params::Named(n) => serde_json::to_string(
                &n.iter()
                    .cloned()
                    .collect::<std::collections::BTreeMap<_, _>>(),
            )
            .unwrap_or_default(),
        }
    }

    fn from_json(s: &str) -> Result<Params, SubError> {
        let v: serde_json::Value =
            serde_json::from_str(s).map_err(|e| SubError::Corrupt(e.to_string()))?;
        Ok(match v {
            serde_json::Value::Array(a) if a.is_empty() => Params::None,
            serde_json::Value::Object(o) => Params::Named(
                o.into_iter()
                    .map(|(k, v)| Ok((k, Value::try_from(v).map_err(SubError::Corrupt)?)))
                    .collect::<Result<_, SubError>>()?,
            ),
            other => Params::Positional(
                serde_json::from_value(other).map_err(|e| SubError::Corrupt(e.to_string()))?,
            ),
        })
    }
}

/// One event for a listener, in the order the API sends them.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Columns(Arc<Vec<String>>),
    Row { rowid: i64, cells: String },
    Eoq { time: f64, change_id: u64 },
    Change(Arc<LoggedChange>),
    Error(String),
}

impl Event {
    /// The NDJSON line (without the newline). Cells are stored as JSON and
    /// written as they are.
    pub fn to_line(&self) -> String {
        match self {
            Event::Columns(c) => {
                format!(
                    "{{\"columns\":{}}}",
                    serde_json::to_string(&**c).unwrap_or_default()
                )
            }
            Event::Row { rowid, cells } => format!("{{\"row\":[{rowid},{cells}]}}"),
            Event::Eoq { time, change_id } => {
                format!("{{\"eoq\":{{\"time\":{time},\"change_id\":{change_id}}}}}")
            }
            Event::Change(c) => format!(
                "{{\"change\":[\"{}\",{},{},{}]}}",
                c.kind.as_str(),
                c.rowid,
                c.cells,
                c.id
            ),
            Event::Error(e) => serde_json::json!({ "error": e }).to_string(),
        }
    }
}

struct Sub {
    id: Uuid,
    identity: String,
    query: SubQuery,
    params: Params,
    columns: Arc<Vec<String>>,
    view: Mutex<Matview>,
    live: broadcast::Sender<Arc<LoggedChange>>,
    listeners: AtomicUsize,
    idle_since: Mutex<Option<Instant>>,
    closed: AtomicBool,
    /// Filtered statements by (source, number of keys).
    filtered: Mutex<HashMap<(usize, usize), Arc<str>>>,
    /// A one-table subscription's row condition: a change is matched
    /// against it (with the other subscriptions' on the same table, in one
    /// statement) before the subscription re-reads anything.
    filter: Option<RowFilter>,
}

impl Sub {
    fn filtered_sql(&self, src: usize, n: usize) -> Result<Arc<str>, SubError> {
        if let Some(sql) = self.filtered.lock().get(&(src, n)) {
            return Ok(sql.clone());
        }
        let sql: Arc<str> = self.query.filtered_sql(src, n)?.into();
        let mut cache = self.filtered.lock();
        if cache.len() > 64 {
            cache.clear();
        }
        cache.insert((src, n), sql.clone());
        Ok(sql)
    }
}

/// One update-feed notification: `update` or `delete`, and the row's
/// primary-key values.
pub type UpdateEvent = Arc<(&'static str, Vec<Value>)>;

/// Changed primary keys by table (lower-case name).
type KeysByTable = HashMap<String, HashSet<Arc<[u8]>>>;

/// Update-feed listeners of one table.
type UpdateSender = broadcast::Sender<UpdateEvent>;

struct Inner {
    store: Store,
    cfg: SubConfig,
    subs: parking_lot::RwLock<HashMap<Uuid, Arc<Sub>>>,
    by_identity: Mutex<HashMap<String, Uuid>>,
    /// Creation of one subscription at a time (same SQL → same id).
    creating: tokio::sync::Mutex<()>,
    /// Keys changed while a new subscription runs its first query: per
    /// table (lower case), collected by the dispatcher until it registers.
    capture: Mutex<Option<KeysByTable>>,
    pending: Mutex<KeysByTable>,
    wake: Notify,
    updates: Mutex<HashMap<String, UpdateSender>>,
    /// The dispatcher and the reaper (see [`Subscriptions::stopped`]).
    tasks: tokio_util::task::TaskTracker,
    /// Re-reads the row conditions made unnecessary ([`prefilter`]).
    skipped: std::sync::atomic::AtomicU64,
    /// [`prefilter`]'s statements by (subscriptions tested, in order;
    /// number of keys): the same subscriptions on the same table build the
    /// same text every round. Bounded by [`MATCH_SQL_CACHE_BYTES`].
    match_sql: Mutex<MatchSqlCache>,
}

/// [`Inner::match_sql`]'s statements, and their bytes.
#[derive(Default)]
struct MatchSqlCache {
    by_subs: HashMap<(Vec<Uuid>, usize), Arc<str>>,
    bytes: usize,
}

/// Bytes of statement text (and keys) [`Inner::match_sql`] keeps at most;
/// past it the cache starts over.
const MATCH_SQL_CACHE_BYTES: usize = 1 << 20;

impl Inner {
    /// The statement testing the conditions of subscriptions `ids` on `n`
    /// keys: cached, or built by `build`.
    fn match_sql(&self, ids: Vec<Uuid>, n: usize, build: impl FnOnce() -> String) -> Arc<str> {
        let key = (ids, n);
        if let Some(sql) = self.match_sql.lock().by_subs.get(&key) {
            return sql.clone();
        }
        let sql: Arc<str> = build().into();
        let cost = sql.len() + key.0.len() * size_of::<Uuid>();
        let mut cache = self.match_sql.lock();
        if cache.bytes + cost > MATCH_SQL_CACHE_BYTES {
            cache.by_subs.clear();
            cache.bytes = 0;
        }
        if cost <= MATCH_SQL_CACHE_BYTES && cache.by_subs.insert(key, sql.clone()).is_none() {
            cache.bytes += cost;
        }
        sql
    }
}

/// The registry (cheap to clone).
#[derive(Clone)]
pub struct Subscriptions {
    inner: Arc<Inner>,
}

/// A listener's stream of events.
pub struct Listener {
    pub id: Uuid,
    backlog: VecDeque<Event>,
    live: broadcast::Receiver<Arc<LoggedChange>>,
    /// Last change id delivered (live changes at or below it are skipped).
    after: u64,
    sub: Arc<Sub>,
    done: bool,
}

impl Listener {
    /// The next event; `None` once the stream ended (after an error event).
    pub async fn next(&mut self) -> Option<Event> {
        if let Some(e) = self.backlog.pop_front() {
            return Some(e);
        }
        if self.done {
            return None;
        }
        loop {
            match self.live.recv().await {
                Ok(c) if c.id <= self.after => continue,
                Ok(c) => {
                    self.after = c.id;
                    return Some(Event::Change(c));
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    self.done = true;
                    metrics::counter!("corro_subs_listeners_cut_total").increment(1);
                    return Some(Event::Error(format!(
                        "this client fell {n} changes behind and was disconnected; resubscribe with from={}",
                        self.after
                    )));
                }
                Err(broadcast::error::RecvError::Closed) => {
                    self.done = true;
                    return Some(Event::Error("the subscription was removed".into()));
                }
            }
        }
    }

    /// Last change id delivered so far.
    pub fn last_change(&self) -> u64 {
        self.after
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if self.sub.listeners.fetch_sub(1, Ordering::Relaxed) == 1 {
            *self.sub.idle_since.lock() = Some(Instant::now());
        }
    }
}

fn sub_path(dir: &std::path::Path, id: &Uuid) -> PathBuf {
    dir.join(format!("{id}.sqlite"))
}

impl Subscriptions {
    /// Opens the registry: loads the subscriptions in `cfg.dir` (each
    /// re-runs its query in the background and logs what changed while the
    /// agent was down) and starts following the store's change feed.
    pub fn start(
        store: Store,
        cfg: SubConfig,
        shutdown: CancellationToken,
    ) -> Result<Subscriptions, SubError> {
        std::fs::create_dir_all(&cfg.dir).map_err(|source| SubError::Io {
            path: cfg.dir.clone(),
            source,
        })?;
        let inner = Arc::new(Inner {
            store: store.clone(),
            cfg,
            subs: Default::default(),
            by_identity: Default::default(),
            creating: Default::default(),
            capture: Default::default(),
            pending: Default::default(),
            wake: Notify::new(),
            updates: Default::default(),
            tasks: Default::default(),
            skipped: Default::default(),
            match_sql: Default::default(),
        });
        let feed = Arc::downgrade(&inner);
        store.on_change(Arc::new(move |rows: &RowsChanged| {
            if let Some(inner) = feed.upgrade() {
                // Nothing to route while no subscription exists or is being
                // created (a catch-up of millions of rows pays nothing).
                // The capture is read first: a creation registers its
                // subscription before it ends the capture, so reading the
                // two the other way round could see neither (a change
                // committed after the first run's snapshot, lost).
                let capturing = inner.capture.lock().is_some();
                let routed = capturing || !inner.subs.read().is_empty();
                let mut p = inner.pending.lock();
                for r in rows.rows.iter().filter(|_| routed) {
                    p.entry(r.table.to_ascii_lowercase())
                        .or_default()
                        .insert(r.pk.clone());
                }
                drop(p);
                inner.wake.notify_one();
                // Update feeds: sent from here, in commit order.
                let feeds = inner.updates.lock();
                if !feeds.is_empty() {
                    for r in &rows.rows {
                        if let Some(tx) = feeds.get(&r.table.to_ascii_lowercase())
                            && tx.receiver_count() > 0
                            && let Ok(values) = decode_key(&r.pk)
                        {
                            let kind = if r.deleted { "delete" } else { "update" };
                            let _ =
                                tx.send(Arc::new((kind, values.iter().map(to_value).collect())));
                        }
                    }
                }
            }
        }));
        let subs = Subscriptions { inner };
        subs.load_existing()?;
        let tasks = &subs.inner.tasks;
        tasks.spawn(dispatch(subs.inner.clone(), shutdown.clone()));
        tasks.spawn(reap(subs.inner.clone(), shutdown));
        tasks.close();
        Ok(subs)
    }

    /// Subscription refreshes skipped so far because no changed row meets
    /// the subscription's row condition and none was in its result.
    pub fn skipped(&self) -> u64 {
        self.inner.skipped.load(Ordering::Relaxed)
    }

    /// Resolves once the background tasks have ended (after the shutdown
    /// token was cancelled).
    pub async fn stopped(&self) {
        self.inner.tasks.wait().await;
    }

    fn load_existing(&self) -> Result<(), SubError> {
        let dir = self.inner.cfg.dir.clone();
        let entries = std::fs::read_dir(&dir).map_err(|source| SubError::Io {
            path: dir.clone(),
            source,
        })?;
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".sqlite"))
                .and_then(|n| Uuid::parse_str(n).ok())
            else {
                continue;
            };
            let loaded = (|| -> Result<Arc<Sub>, SubError> {
                let (mut view, def) = Matview::open(&path)?;
                let query = SubQuery::parse(&def.sql, |t| self.inner.store.table_pk(t))?;
                if query.row_filter().is_some() {
                    view.track_keys()?;
                }
                let params = Params::from_json(&def.params)?;
                Ok(self.register(id, query, params, def.columns, view))
            })();
            match loaded {
                Ok(sub) => {
                    tracing::info!(id = %id, sql = %sub.query.normalized, last_change = sub.view.lock().last_change(), "subscription restored");
                    let inner = self.inner.clone();
                    tokio::spawn(async move {
                        let s = sub.clone();
                        let result = tokio::task::spawn_blocking(move || resync(&inner, &s)).await;
                        match result {
                            Ok(Ok(n)) if n > 0 => {
                                tracing::info!(id = %sub.id, changes = n, "subscription caught up after restart")
                            }
                            Ok(Err(e)) => {
                                tracing::warn!(id = %sub.id, error = %e, "subscription could not re-run its query")
                            }
                            _ => {}
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring a subscription file that cannot be loaded");
                }
            }
        }
        Ok(())
    }

    fn register(
        &self,
        id: Uuid,
        query: SubQuery,
        params: Params,
        columns: Vec<String>,
        view: Matview,
    ) -> Arc<Sub> {
        let identity = format!("{}\u{0}{}", query.normalized, params.to_json());
        let (live, _) = broadcast::channel(self.inner.cfg.listener_buffer.max(1));
        // A condition that cannot be tested on its own (a result alias in
        // WHERE, say) is not prefiltered: it would fail every group it is in.
        let filter = query.row_filter().filter(|f| {
            let sql = f.match_sql(&[f.condition.as_str()], 1);
            let ok = self.inner.store.reader().prepare_user(&sql).is_ok();
            if !ok {
                tracing::debug!(id = %id, sql = %query.normalized, "subscription condition not testable alone; every change of its table is re-read");
            }
            ok
        });
        let sub = Arc::new(Sub {
            id,
            identity: identity.clone(),
            query,
            params,
            columns: Arc::new(columns),
            view: Mutex::new(view),
            live,
            listeners: AtomicUsize::new(0),
            idle_since: Mutex::new(Some(Instant::now())),
            closed: AtomicBool::new(false),
            filtered: Mutex::new(HashMap::new()),
            filter,
        });
        self.inner.subs.write().insert(id, sub.clone());
        self.inner.by_identity.lock().insert(identity, id);
        metrics::gauge!("corro_subs_active").set(self.inner.subs.read().len() as f64);
        sub
    }

    /// Finds or creates the subscription for `sql` with `params` and attaches
    /// a listener (from the start, or replaying after change `from`).
    pub async fn subscribe(
        &self,
        sql: &str,
        params: Params,
        from: Option<u64>,
    ) -> Result<Listener, SubError> {
        let query = SubQuery::parse(sql, |t| self.inner.store.table_pk(t))?;
        let identity = format!("{}\u{0}{}", query.normalized, params.to_json());
        let _creating = self.inner.creating.lock().await;
        let existing = self.inner.by_identity.lock().get(&identity).copied();
        if let Some(id) = existing {
            drop(_creating);
            return self.attach(id, from).await;
        }
        let id = Uuid::new_v4();
        let path = sub_path(&self.inner.cfg.dir, &id);
        let inner = self.inner.clone();
        let q = query.clone();
        let p = params.clone();
        // Collect the keys changed from now on: anything committed after
        // the first run's snapshot is re-read once the subscription is
        // registered (creations are serialized by `creating`).
        *self.inner.capture.lock() = Some(HashMap::new());
        let first = tokio::task::spawn_blocking(move || -> Result<_, SubError> {
            let (columns, rows) = run_full(&inner.store, &q, &p)?;
            let def = Definition {
                sql: q.normalized.clone(),
                params: p.to_json(),
                columns: columns.clone(),
            };
            let mut view = Matview::create(&path, &def)?;
            if q.row_filter().is_some() {
                // Empty now; `fill` tracks the first result's keys.
                view.track_keys()?;
            }
            view.fill(rows)?;
            Ok((view, columns))
        })
        .await;
        let (view, columns) = match first {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                *self.inner.capture.lock() = None;
                return Err(e);
            }
            Err(e) => {
                *self.inner.capture.lock() = None;
                return Err(SubError::Corrupt(e.to_string()));
            }
        };
        let sub = self.register(id, query, params, columns, view);
        let captured = self.inner.capture.lock().take().unwrap_or_default();
        let changed: Vec<Changed> = sub
            .query
            .sources
            .iter()
            .map(|src| {
                captured
                    .get(&src.table.to_ascii_lowercase())
                    .map(|keys| Arc::new(keys.clone()))
                    .unwrap_or_default()
            })
            .collect();
        if changed.iter().any(|c| !c.is_empty()) {
            let inner = self.inner.clone();
            let s = sub.clone();
            tokio::task::spawn_blocking(move || refresh(&s, &changed, &inner.store.reader()))
                .await
                .map_err(|e| SubError::Corrupt(e.to_string()))??;
        }
        tracing::info!(id = %id, sql = %sub.query.normalized, "subscription created");
        drop(_creating);
        self.attach(id, from).await
    }

    /// Attaches a listener to subscription `id`.
    pub async fn attach(&self, id: Uuid, from: Option<u64>) -> Result<Listener, SubError> {
        let sub = self
            .inner
            .subs
            .read()
            .get(&id)
            .cloned()
            .ok_or_else(|| SubError::NotFound(id.to_string()))?;
        sub.listeners.fetch_add(1, Ordering::Relaxed);
        *sub.idle_since.lock() = None;
        let live = sub.live.subscribe();
        let s = sub.clone();
        let read = tokio::task::spawn_blocking(move || -> Result<_, SubError> {
            let started = Instant::now();
            let view = s.view.lock();
            let last = view.last_change();
            let mut backlog = VecDeque::new();
            match from {
                None => {
                    backlog.push_back(Event::Columns(s.columns.clone()));
                    for (rowid, cells) in view.rows()? {
                        backlog.push_back(Event::Row { rowid, cells });
                    }
                    backlog.push_back(Event::Eoq {
                        time: started.elapsed().as_secs_f64(),
                        change_id: last,
                    });
                }
                Some(f) => {
                    if f > last {
                        return Err(SubError::FromAhead { from: f, last });
                    }
                    let oldest = view.oldest_change()?;
                    if f + 1 < oldest {
                        return Err(SubError::FromTooOld {
                            from: f,
                            oldest: oldest - 1,
                        });
                    }
                    for c in view.changes_between(f, last)? {
                        backlog.push_back(Event::Change(Arc::new(c)));
                    }
                }
            }
            Ok((backlog, last))
        })
        .await;
        let listener_sub = sub.clone();
        let make = |backlog, after| Listener {
            id,
            backlog,
            live,
            after,
            sub: listener_sub,
            done: false,
        };
        match read {
            Ok(Ok((backlog, last))) => Ok(make(backlog, last)),
            Ok(Err(e)) => {
                // Dropping a listener restores the count and idle clock.
                drop(make(VecDeque::new(), 0));
                Err(e)
            }
            Err(e) => {
                drop(make(VecDeque::new(), 0));
                Err(SubError::Corrupt(e.to_string()))
            }
        }
    }

    /// Subscription ids and their SQL.
    pub fn list(&self) -> Vec<(Uuid, String)> {
        self.inner
            .subs
            .read()
            .values()
            .map(|s| (s.id, s.query.normalized.clone()))
            .collect()
    }

    /// A feed of `(kind, primary key values)` for every changed row of
    /// `table` (`update` when it exists after the commit, else `delete`);
    /// a receiver that falls `listener_buffer` rows behind sees `Lagged`.
    pub fn updates(&self, table: &str) -> Result<broadcast::Receiver<UpdateEvent>, SubError> {
        if self.inner.store.table_pk(table).is_none() {
            return Err(SubError::UnknownTable(table.to_string()));
        }
        let mut u = self.inner.updates.lock();
        let tx = u
            .entry(table.to_ascii_lowercase())
            .or_insert_with(|| broadcast::channel(self.inner.cfg.listener_buffer.max(1)).0);
        Ok(tx.subscribe())
    }
}

/// Runs the full query: (user column names, rows).
fn run_full(
    store: &Store,
    q: &SubQuery,
    params: &Params,
) -> Result<(Vec<String>, Vec<Fresh>), SubError> {
    read(&store.reader(), q, params, &q.full_sql(), &[])
}

/// Prepares `sql` as a client statement on `conn`, binds the user's
/// parameters then `extra` (numbered after them), and reads result rows.
fn read(
    conn: &ReadConn<'_>,
    q: &SubQuery,
    params: &Params,
    sql: &str,
    extra: &[SqlValue],
) -> Result<(Vec<String>, Vec<Fresh>), SubError> {
    let mut stmt = conn.prepare_user(sql)?;
    stmt.clear_bindings();
    match params {
        Params::None => {}
        Params::Positional(p) => {
            for (i, v) in p.iter().enumerate() {
                stmt.raw_bind_parameter(i + 1, to_sql(v))?;
            }
        }
        Params::Named(n) => {
            for (name, v) in n {
                let name = if name.starts_with([':', '@', '$']) {
                    name.clone()
                } else {
                    format!(":{name}")
                };
                let idx = stmt
                    .parameter_index(&name)?
                    .ok_or_else(|| rusqlite::Error::InvalidParameterName(name.clone()))?;
                stmt.raw_bind_parameter(idx, to_sql(v))?;
            }
        }
    }
    for (i, v) in extra.iter().enumerate() {
        stmt.raw_bind_parameter(q.positional + i + 1, v)?;
    }
    let names: Vec<String> = stmt
        .column_names()
        .skip(q.key_cols)
        .map(|s| s.to_string())
        .collect();
    let ncols = stmt.column_count();
    let mut rows = stmt.raw_query();
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let mut keys = Vec::with_capacity(q.key_cols);
        for i in 0..q.key_cols {
            keys.push(SqlValue::from_ref(r.get_ref(i)?));
        }
        let source_keys = q
            .sources
            .iter()
            .map(|s| encode_key(&keys[s.key_offset..s.key_offset + s.pk.len()]))
            .collect();
        let mut cells = Vec::with_capacity(ncols - q.key_cols);
        for i in q.key_cols..ncols {
            cells.push(from_ref(r.get_ref(i)?));
        }
        out.push(Fresh {
            key: encode_key(&keys),
            source_keys,
            cells: serde_json::to_string(&cells).unwrap_or_default(),
        });
    }
    Ok((names, out))
}

/// Re-runs the whole query and logs the difference; how many changes.
///
/// Lock order, here and everywhere: a read connection first, then a
/// view. Nothing holds a view while waiting for a read connection.
fn resync(inner: &Inner, sub: &Sub) -> Result<usize, SubError> {
    let conn = inner.store.reader();
    let mut view = sub.view.lock();
    let (_, rows) = read(&conn, &sub.query, &sub.params, &sub.query.full_sql(), &[])?;
    drop(conn);
    let changes = view.resync(rows)?;
    drop(view);
    let n = changes.len();
    publish(sub, changes);
    Ok(n)
}

fn publish(sub: &Sub, changes: Vec<LoggedChange>) {
    metrics::counter!("corro_subs_changes_total").increment(changes.len() as u64);
    for c in changes {
        // No receiver is fine: the change is in the log.
        let _ = sub.live.send(Arc::new(c));
    }
}

/// Re-reads (on `conn`) the rows built from `changed` keys and logs the
/// difference.
fn refresh(sub: &Sub, changed: &[Changed], conn: &ReadConn<'_>) -> Result<(), SubError> {
    let started = Instant::now();
    // Read and update under the view's lock: two refreshes of one
    // subscription (a creation's captured keys and a dispatcher round) must
    // not apply an older read after a newer one.
    let mut view = sub.view.lock();
    let mut fresh = Vec::new();
    for (src, keys) in changed.iter().enumerate() {
        let keys: Vec<&Arc<[u8]>> = keys.iter().collect();
        for chunk in keys.chunks(KEYS_PER_READ) {
            let mut values = Vec::new();
            for k in chunk {
                values.extend(
                    decode_key(k).map_err(|e| SubError::Corrupt(format!("changed key: {e}")))?,
                );
            }
            let sql = sub.filtered_sql(src, chunk.len())?;
            let (_, rows) = read(conn, &sub.query, &sub.params, &sql, &values)?;
            fresh.extend(rows);
        }
    }
    let changed: Vec<Vec<Vec<u8>>> = changed
        .iter()
        .map(|set| set.iter().map(|k| k.to_vec()).collect())
        .collect();
    let changes = view.update(&changed, fresh)?;
    drop(view);
    metrics::histogram!("corro_subs_refresh_seconds").record(started.elapsed().as_secs_f64());
    publish(sub, changes);
    Ok(())
}

/// Which of `work`'s subscriptions a round's changes can affect: all of
/// them, except one-table subscriptions for which no changed row meets the
/// row condition now and none was in the result before (their keys are
/// tracked). The conditions of all such subscriptions on one table are
/// tested together, one statement per chunk of keys, instead of each
/// subscription re-reading every changed key.
fn prefilter(inner: &Inner, work: &[Work], conn: &ReadConn<'_>) -> Vec<bool> {
    let mut affected = vec![true; work.len()];
    // (table, reference) -> indexes into `work`.
    let mut groups: HashMap<(String, String), Vec<usize>> = HashMap::new();
    for (i, (sub, _)) in work.iter().enumerate() {
        if let Some(f) = &sub.filter {
            groups
                .entry((f.table.to_ascii_lowercase(), f.reference.clone()))
                .or_default()
                .push(i);
        }
    }
    for members in groups.into_values() {
        let Some(filter) = members.first().and_then(|&i| work[i].0.filter.clone()) else {
            continue;
        };
        let keys: Vec<&Arc<[u8]>> = work[members[0]].1[0].iter().collect();
        let mut met = vec![false; members.len()];
        let tested = (|| -> Result<(), SubError> {
            for (c, conds) in members.chunks(MATCH_CONDITIONS).enumerate() {
                let texts: Vec<&str> = conds
                    .iter()
                    .map(|&i| {
                        work[i]
                            .0
                            .filter
                            .as_ref()
                            .map_or("1", |f| f.condition.as_str())
                    })
                    .collect();
                for chunk in keys.chunks(KEYS_PER_READ) {
                    let mut values = Vec::new();
                    for k in chunk {
                        values.extend(
                            decode_key(k)
                                .map_err(|e| SubError::Corrupt(format!("changed key: {e}")))?,
                        );
                    }
                    let ids: Vec<Uuid> = conds.iter().map(|&i| work[i].0.id).collect();
                    let sql =
                        inner.match_sql(ids, chunk.len(), || filter.match_sql(&texts, chunk.len()));
                    let mut stmt = conn.prepare_user(&sql)?;
                    for (n, v) in values.iter().enumerate() {
                        stmt.raw_bind_parameter(n + 1, v)?;
                    }
                    let width = filter.pk.len();
                    let mut rows = stmt.raw_query();
                    while let Some(r) = rows.next()? {
                        for j in 0..texts.len() {
                            if r.get::<_, bool>(width + j)? {
                                met[c * MATCH_CONDITIONS + j] = true;
                            }
                        }
                    }
                }
            }
            Ok(())
        })();
        if let Err(e) = tested {
            tracing::debug!(error = %e, table = %filter.table, "subscription conditions could not be tested together; re-reading in each");
            continue;
        }
        for (n, &i) in members.iter().enumerate() {
            if met[n] {
                continue;
            }
            let held = work[i].0.view.lock().may_hold(keys.iter().map(|k| &k[..]));
            affected[i] = held;
        }
    }
    affected
}

/// One table's changed keys in a round, shared by the subscriptions
/// reading it.
type Changed = Arc<HashSet<Arc<[u8]>>>;

/// A subscription and its changed keys per source, for one round.
type Work = (Arc<Sub>, Vec<Changed>);

/// Row conditions tested in one statement at most.
const MATCH_CONDITIONS: usize = 200;

/// Routes changed keys to the subscriptions that read their tables and
/// refreshes them, all on one blocking thread per round: while a round runs,
/// new changes pile up in the pending set and are taken together by the
/// next one (bursts coalesce; no thread hop per subscription).
async fn dispatch(inner: Arc<Inner>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = inner.wake.notified() => {}
        }
        let pending = std::mem::take(&mut *inner.pending.lock());
        if pending.is_empty() {
            continue;
        }
        if let Some(capture) = inner.capture.lock().as_mut() {
            for (table, keys) in &pending {
                capture
                    .entry(table.clone())
                    .or_default()
                    .extend(keys.iter().cloned());
            }
        }
        // One shared set per table: every subscription reading it gets the
        // same copy (not a clone of the set each).
        let pending: HashMap<String, Changed> = pending
            .into_iter()
            .map(|(table, keys)| (table, Arc::new(keys)))
            .collect();
        let subs: Vec<Arc<Sub>> = inner.subs.read().values().cloned().collect();
        let mut work = Vec::new();
        for sub in subs {
            let changed: Vec<Changed> = sub
                .query
                .sources
                .iter()
                .map(|src| {
                    pending
                        .get(&src.table.to_ascii_lowercase())
                        .cloned()
                        .unwrap_or_default()
                })
                .collect();
            if changed.iter().any(|c| !c.is_empty()) {
                work.push((sub, changed));
            }
        }
        if work.is_empty() {
            continue;
        }
        let i = inner.clone();
        let round = tokio::task::spawn_blocking(move || {
            // One connection for the round: the rows the condition test
            // read are still in its page cache when the affected
            // subscriptions re-read them, unless something was committed
            // in between (a reader's cache is dropped whenever a commit
            // happened since its last read). No shared snapshot: each
            // refresh reads the latest state under its view's lock, so a
            // refresh never applies an older read after a newer one.
            let conn = i.store.reader();
            let affected = prefilter(&i, &work, &conn);
            // Skips are counted for the whole round before any refresh
            // delivers, so a listener that sees this round's event also
            // sees its skips counted.
            let skipped = work
                .iter()
                .zip(&affected)
                .filter(|((sub, _), a)| !**a && !sub.closed.load(Ordering::Relaxed))
                .count() as u64;
            i.skipped.fetch_add(skipped, Ordering::Relaxed);
            metrics::counter!("corro_subs_skipped_total").increment(skipped);
            let mut failed = Vec::new();
            for ((sub, changed), affected) in work.into_iter().zip(affected) {
                if !affected || sub.closed.load(Ordering::Relaxed) {
                    continue;
                }
                if let Err(e) = refresh(&sub, &changed, &conn) {
                    tracing::warn!(id = %sub.id, error = %e, "subscription refresh failed; re-running it in full");
                    failed.push(sub);
                }
            }
            // Re-run after giving the round's connection back: a re-run
            // takes a connection of its own (with one reader, it would
            // otherwise wait for ever on the round's).
            drop(conn);
            for sub in failed {
                if let Err(e) = resync(&i, &sub) {
                    tracing::error!(id = %sub.id, error = %e, "subscription re-run failed");
                }
            }
        });
        if let Err(e) = round.await {
            tracing::error!(error = %e, "subscription refresh round panicked");
        }
    }
}

/// Removes idle subscriptions and prunes change logs, every few seconds.
async fn reap(inner: Arc<Inner>, shutdown: CancellationToken) {
    let every =
        (inner.cfg.idle_expiry / 4).clamp(Duration::from_millis(100), Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let subs: Vec<Arc<Sub>> = inner.subs.read().values().cloned().collect();
        for sub in subs {
            let idle = sub
                .idle_since
                .lock()
                .is_some_and(|t| t.elapsed() >= inner.cfg.idle_expiry);
            if idle && sub.listeners.load(Ordering::Relaxed) == 0 {
                inner.subs.write().remove(&sub.id);
                inner.by_identity.lock().remove(&sub.identity);
                sub.closed.store(true, Ordering::Relaxed);
                let path = sub.view.lock().path().to_path_buf();
                for p in [
                    path.clone(),
                    path.with_extension("sqlite-wal"),
                    path.with_extension("sqlite-shm"),
                ] {
                    let _ = std::fs::remove_file(p);
                }
                tracing::info!(id = %sub.id, "removed an idle subscription");
                metrics::gauge!("corro_subs_active").set(inner.subs.read().len() as f64);
                continue;
            }
            let (count, age, bytes) = (
                inner.cfg.max_log_changes,
                inner.cfg.max_log_age.as_millis() as u64,
                inner.cfg.max_log_bytes,
            );
            let s = sub.clone();
            let _ =
                tokio::task::spawn_blocking(move || s.view.lock().prune(count, age, bytes)).await;
        }
    }
}
