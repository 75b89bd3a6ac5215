//! What the store knows about its replicated tables and the actors it has met,
//! and the SQL it generates for them.
//!
//! Each replicated table gets a `<table>__corro_clock` shadow table (one row
//! per data row, keyed by the encoded primary key, never by rowid) and three
//! guard triggers stored in the database that refuse every insert, update and
//! delete: a write from a bare `sqlite3` shell fails instead of bypassing
//! change capture. The agent's capture connection switches stored triggers
//! off and captures through its own TEMP triggers and the update hook
//! (`capture.rs`).

use rustc_hash::FxHashMap as HashMap;
use std::sync::Arc;

use corro_schema::Table;

use crate::actor::ActorId;

/// Internal tables, created on open.
pub(crate) const INTERNAL_DDL: &str = "
CREATE TABLE IF NOT EXISTS __corro_meta (key TEXT NOT NULL PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS __corro_actors (
    idx INTEGER PRIMARY KEY,
    actor_id BLOB NOT NULL UNIQUE,
    head INTEGER NOT NULL DEFAULT 0,
    books BLOB NOT NULL DEFAULT x''
);
CREATE TABLE IF NOT EXISTS __corro_tables (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS __corro_versions (
    actor INTEGER NOT NULL,
    version INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    live INTEGER NOT NULL,
    rows BLOB,
    PRIMARY KEY (actor, version)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS __corro_version_rows (
    actor INTEGER NOT NULL,
    version INTEGER NOT NULL,
    part INTEGER NOT NULL,
    rows BLOB NOT NULL,
    PRIMARY KEY (actor, version, part)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS __corro_buffered (
    actor INTEGER NOT NULL,
    version INTEGER NOT NULL,
    first_seq INTEGER NOT NULL,
    end_seq INTEGER NOT NULL,
    changes BLOB NOT NULL,
    PRIMARY KEY (actor, version, first_seq, end_seq)
) WITHOUT ROWID;
";

/// The on-disk layout version, stored in `__corro_meta`.
/// 2: tagged clock blobs with a short form for uniform clocks.
pub(crate) const FORMAT_VERSION: i64 = 2;

pub(crate) fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// New rows whose clocks are inserted with one statement.
pub(crate) const CLOCK_BATCH: usize = 64;

/// One replicated table and its precomputed statements.
#[derive(Debug)]
pub(crate) struct TableMeta {
    pub id: u32,
    pub name: Arc<str>,
    pub pk: Vec<String>,
    /// Replicated non-key columns in table order.
    pub cols: Vec<Arc<str>>,
    /// Generated INSERT (index 1) and UPDATE (index 0) statements by column subset.
    sql_cache: parking_lot::Mutex<[HashMap<Vec<usize>, Arc<str>>; 2]>,
    col_idx: HashMap<String, usize>,
    pub q_name: String,
    pub sql_get_clock: String,
    pub sql_put_clock: String,
    pub sql_new_clock: String,
    /// Clocks of [`CLOCK_BATCH`] new rows at once.
    pub sql_new_clock_batch: String,
    pub sql_select_values: String,
    pub sql_delete_row: String,
    pub sql_all_clocks: String,
    /// A name that reaches the rowid (`None` for `WITHOUT ROWID` tables and
    /// tables whose columns shadow every alias): inserts into such tables are
    /// captured by the update hook.
    pub rowid: Option<&'static str>,
    /// `rowid, pk..., cols...` of the rows with rowids in `?1..=?2`.
    pub sql_select_inserted: Option<String>,
}

impl TableMeta {
    pub(crate) fn new(id: u32, table: &Table) -> Self {
        let pk: Vec<String> = table.pk_columns().iter().map(|c| c.name.clone()).collect();
        let cols: Vec<Arc<str>> = table
            .value_columns()
            .iter()
            .map(|c| Arc::from(c.name.as_str()))
            .collect();
        let col_idx = cols
            .iter()
            .enumerate()
            .map(|(i, c)| (c.to_ascii_lowercase(), i))
            .collect();
        let q_name = quote(&table.name);
        let q_clock = quote(&format!("{}__corro_clock", table.name));
        let pk_where = pk
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{} = ?{}", quote(c), i + 1))
            .collect::<Vec<_>>()
            .join(" AND ");
        let rowid = if table.without_rowid {
            None
        } else {
            ["rowid", "_rowid_", "oid"].into_iter().find(|alias| {
                !table
                    .columns
                    .iter()
                    .any(|c| c.name.eq_ignore_ascii_case(alias))
            })
        };
        let sql_select_inserted = rowid.map(|r| {
            let all: Vec<String> = pk
                .iter()
                .map(|c| quote(c))
                .chain(cols.iter().map(|c| quote(c)))
                .collect();
            format!(
                "SELECT {r}, {} FROM {q_name} WHERE {r} BETWEEN ?1 AND ?2 ORDER BY {r}",
                all.join(", ")
            )
        });
        let select_cols = if cols.is_empty() {
            "1".to_string()
        } else {
            cols.iter().map(|c| quote(c)).collect::<Vec<_>>().join(", ")
        };
        TableMeta {
            id,
            name: Arc::from(table.name.as_str()),
            sql_cache: Default::default(),
            sql_get_clock: format!("SELECT cl, clock FROM {q_clock} WHERE key = ?1"),
            sql_new_clock_batch: format!(
                "INSERT OR IGNORE INTO {q_clock} (key, cl, clock) VALUES {}",
                (0..CLOCK_BATCH)
                    .map(|i| format!("(?{}, 1, ?{})", 2 * i + 1, 2 * i + 2))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            sql_new_clock: format!(
                "INSERT OR IGNORE INTO {q_clock} (key, cl, clock) VALUES (?1, ?2, ?3)"
            ),
            sql_put_clock: format!(
                "INSERT OR REPLACE INTO {q_clock} (key, cl, clock) VALUES (?1, ?2, ?3)"
            ),
            sql_select_values: format!("SELECT {select_cols} FROM {q_name} WHERE {pk_where}"),
            sql_delete_row: format!("DELETE FROM {q_name} WHERE {pk_where}"),
            sql_all_clocks: format!("SELECT key, cl, clock FROM {q_clock}"),
            q_name,
            pk,
            cols,
            col_idx,
            rowid,
            sql_select_inserted,
        }
    }

    pub(crate) fn col(&self, name: &str) -> Option<usize> {
        if let Some(i) = self.cols.iter().position(|c| &**c == name) {
            return Some(i);
        }
        self.col_idx.get(&name.to_ascii_lowercase()).copied()
    }

    /// Cached `INSERT` (true) or `UPDATE` (false) statement text for `cols`.
    pub(crate) fn sql_write(&self, insert: bool, cols: &[usize]) -> Arc<str> {
        let mut cache = self.sql_cache.lock();
        let cache = &mut cache[usize::from(insert)];
        if let Some(s) = cache.get(cols) {
            return s.clone();
        }
        let sql: Arc<str> = if insert {
            self.sql_insert(cols).into()
        } else {
            self.sql_update(cols).into()
        };
        if cache.len() < 512 {
            cache.insert(cols.to_vec(), sql.clone());
        }
        sql
    }

    fn sql_insert(&self, cols: &[usize]) -> String {
        let names: Vec<String> = self
            .pk
            .iter()
            .map(|c| quote(c))
            .chain(cols.iter().map(|&i| quote(&self.cols[i])))
            .collect();
        let params: Vec<String> = (1..=names.len()).map(|i| format!("?{i}")).collect();
        format!(
            "INSERT INTO {} ({}) VALUES ({})",
            self.q_name,
            names.join(", "),
            params.join(", ")
        )
    }

    /// `UPDATE` of the given columns (params after the key's).
    fn sql_update(&self, cols: &[usize]) -> String {
        let npk = self.pk.len();
        let sets: Vec<String> = cols
            .iter()
            .enumerate()
            .map(|(n, &i)| format!("{} = ?{}", quote(&self.cols[i]), npk + n + 1))
            .collect();
        let pk_where: Vec<String> = self
            .pk
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{} = ?{}", quote(c), i + 1))
            .collect();
        format!(
            "UPDATE {} SET {} WHERE {}",
            self.q_name,
            sets.join(", "),
            pk_where.join(" AND ")
        )
    }

    /// Shadow table and guard triggers (recreated whenever columns change).
    pub(crate) fn replication_ddl(&self) -> String {
        let q_clock = quote(&format!("{}__corro_clock", self.name));
        let trig = |suffix: &str| quote(&format!("{}__corro_{suffix}", self.name));
        let q = &self.q_name;
        let message = format!(
            "{} is replicated by Corrosion: write to it through the agent",
            self.name
        )
        .replace('\'', "''");
        let mut ddl = format!(
            "CREATE TABLE IF NOT EXISTS {q_clock} (key BLOB NOT NULL PRIMARY KEY, cl INTEGER NOT NULL, clock BLOB NOT NULL) WITHOUT ROWID;\n"
        );
        for (suffix, op) in [("ins", "INSERT"), ("upd", "UPDATE"), ("del", "DELETE")] {
            let t = trig(suffix);
            ddl.push_str(&format!(
                "DROP TRIGGER IF EXISTS {t};\nCREATE TRIGGER {t} BEFORE {op} ON {q} BEGIN SELECT RAISE(ABORT, '{message}'); END;\n"
            ));
        }
        ddl
    }

    /// The capture connection's TEMP triggers: old and new images of updated
    /// and deleted rows, and new images of inserted rows where the update
    /// hook cannot see them (no rowid).
    pub(crate) fn capture_ddl(&self) -> String {
        let image = |prefix: &str| -> String {
            self.pk
                .iter()
                .map(|c| c.as_str())
                .chain(self.cols.iter().map(|c| &**c))
                .map(|c| format!("{prefix}.{}", quote(c)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (id, npk) = (self.id, self.pk.len());
        let trig = |suffix: &str| quote(&format!("{}__corro_cap_{suffix}", self.name));
        let (old, new) = (image("OLD"), image("NEW"));
        let old_rowid = self
            .rowid
            .map_or_else(|| "NULL".to_string(), |r| format!("OLD.{r}"));
        let q = format!("main.{}", self.q_name);
        let mut ddl = format!(
            "CREATE TEMP TRIGGER {} AFTER UPDATE ON {q} BEGIN SELECT corro_capture({id}, 0, {npk}, {old_rowid}, {old}); SELECT corro_capture({id}, 1, {npk}, NULL, {new}); END;
CREATE TEMP TRIGGER {} AFTER DELETE ON {q} BEGIN SELECT corro_capture({id}, 0, {npk}, {old_rowid}, {old}); END;\n",
            trig("upd"),
            trig("del")
        );
        if self.rowid.is_none() {
            ddl.push_str(&format!(
                "CREATE TEMP TRIGGER {} AFTER INSERT ON {q} BEGIN SELECT corro_capture({id}, 1, {npk}, NULL, {new}); END;\n",
                trig("ins")
            ));
        }
        ddl
    }
}

/// Replicated tables and known actors, shared by the writer and readers.
#[derive(Debug, Default, Clone)]
pub(crate) struct Catalog {
    pub tables: HashMap<u32, Arc<TableMeta>>,
    by_name: HashMap<String, u32>,
    pub actors: HashMap<u32, ActorId>,
    pub actor_idx: HashMap<ActorId, u32>,
}

impl Catalog {
    pub(crate) fn add_table(&mut self, meta: TableMeta) {
        self.by_name.insert(meta.name.to_string(), meta.id);
        self.by_name.insert(meta.name.to_ascii_lowercase(), meta.id);
        self.tables.insert(meta.id, Arc::new(meta));
    }

    pub(crate) fn table(&self, id: u32) -> Option<&Arc<TableMeta>> {
        self.tables.get(&id)
    }

    pub(crate) fn table_by_name(&self, name: &str) -> Option<&Arc<TableMeta>> {
        self.by_name
            .get(name)
            .or_else(|| self.by_name.get(&name.to_ascii_lowercase()))
            .and_then(|id| self.tables.get(id))
    }

    pub(crate) fn add_actor(&mut self, idx: u32, actor: ActorId) {
        self.actors.insert(idx, actor);
        self.actor_idx.insert(actor, idx);
    }

    /// Actor id of a local index (unknown indexes sort first; they cannot occur
    /// in a consistent database).
    pub(crate) fn actor(&self, idx: u32) -> ActorId {
        self.actors.get(&idx).copied().unwrap_or(ActorId([0; 16]))
    }
}
