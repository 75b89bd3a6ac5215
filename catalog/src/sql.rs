//! Reading discovery rows from the store (used at load and after each
//! commit the change feed reports; never per request).

use corro_store::SqlValue;
use rusqlite::{Connection, OptionalExtension, Row};

use crate::health::Status;
use crate::index::{Index, Rows};
use crate::kv::KvRow;
use crate::model::{self, Check, Claim, Node, Service};

/// The tables the catalog reads, lower-case.
pub const TABLES: [&str; 5] = [
    "consul_services",
    "consul_checks",
    "consul_nodes",
    "consul_node_claims",
    "consul_kv",
];

const SERVICE_COLS: &str =
    "node, id, name, tags, meta, port, address, weights, tagged_addresses, updated_at, source";
const CHECK_COLS: &str =
    "node, id, service_id, service_name, name, status, output, notes, type, updated_at, source";
const NODE_COLS: &str = "node, actor_id, address, datacenter, meta, updated_at";
const CLAIM_COLS: &str = "node, actor_id, started_at";
const KV_COLS: &str = "key, value, flags";

/// A column as text whatever its storage class (NULL: empty).
fn text(row: &Row<'_>, i: usize) -> rusqlite::Result<String> {
    use rusqlite::types::ValueRef;
    Ok(match row.get_ref(i)? {
        ValueRef::Null => String::new(),
        ValueRef::Integer(n) => n.to_string(),
        ValueRef::Real(f) => f.to_string(),
        ValueRef::Text(t) | ValueRef::Blob(t) => String::from_utf8_lossy(t).into_owned(),
    })
}

fn int(row: &Row<'_>, i: usize) -> rusqlite::Result<i64> {
    use rusqlite::types::ValueRef;
    Ok(match row.get_ref(i)? {
        ValueRef::Integer(n) => n,
        ValueRef::Real(f) => f as i64,
        ValueRef::Text(t) => std::str::from_utf8(t)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0),
        _ => 0,
    })
}

fn opt_text(row: &Row<'_>, i: usize) -> rusqlite::Result<Option<String>> {
    Ok(match row.get_ref(i)? {
        rusqlite::types::ValueRef::Null => None,
        _ => Some(text(row, i)?),
    })
}

fn service(row: &Row<'_>) -> rusqlite::Result<Service> {
    Ok(Service {
        node: text(row, 0)?,
        id: text(row, 1)?,
        name: text(row, 2)?,
        tags: model::parse_tags(&text(row, 3)?),
        meta: model::parse_meta(&text(row, 4)?),
        port: int(row, 5)?,
        address: text(row, 6)?,
        weights: model::parse_weights(&text(row, 7)?),
        tagged_addresses: model::parse_tagged_addresses(&text(row, 8)?),
        updated_at: int(row, 9)?,
        source: opt_text(row, 10)?,
    })
}

fn check(row: &Row<'_>) -> rusqlite::Result<Check> {
    Ok(Check {
        node: text(row, 0)?,
        id: text(row, 1)?,
        service_id: text(row, 2)?,
        service_name: text(row, 3)?,
        name: text(row, 4)?,
        status: Status::parse(&text(row, 5)?),
        output: text(row, 6)?,
        notes: text(row, 7)?,
        kind: text(row, 8)?,
        updated_at: int(row, 9)?,
        source: opt_text(row, 10)?,
    })
}

fn node(row: &Row<'_>) -> rusqlite::Result<Node> {
    Ok(Node {
        node: text(row, 0)?,
        actor_id: text(row, 1)?,
        address: text(row, 2)?,
        datacenter: text(row, 3)?,
        meta: model::parse_meta(&text(row, 4)?),
        updated_at: int(row, 5)?,
    })
}

/// A KV row: the value's bytes whatever its storage class (a value written
/// by hand as TEXT or a number reads as its text), the flags unsigned.
fn kv(row: &Row<'_>) -> rusqlite::Result<KvRow> {
    use rusqlite::types::ValueRef;
    let value = match row.get_ref(1)? {
        ValueRef::Null => bytes::Bytes::new(),
        ValueRef::Text(t) | ValueRef::Blob(t) => bytes::Bytes::copy_from_slice(t),
        _ => bytes::Bytes::from(text(row, 1)?),
    };
    Ok(KvRow {
        key: text(row, 0)?,
        value,
        flags: int(row, 2)? as u64,
    })
}

fn claim(row: &Row<'_>) -> rusqlite::Result<Claim> {
    Ok(Claim {
        node: text(row, 0)?,
        actor_id: text(row, 1)?,
        started_at: int(row, 2)?,
    })
}

/// Whether `table` exists in the database.
fn has_table(conn: &Connection, table: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = ?1 COLLATE NOCASE",
        [table],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
}

/// Reads every row of the discovery tables that exist.
pub(crate) fn read_all(conn: &Connection) -> rusqlite::Result<Rows> {
    let mut rows = Rows::default();
    if has_table(conn, "consul_nodes")? {
        let mut st = conn.prepare(&format!("SELECT {NODE_COLS} FROM consul_nodes"))?;
        rows.nodes = st.query_map([], node)?.collect::<Result<_, _>>()?;
    }
    if has_table(conn, "consul_services")? {
        let mut st = conn.prepare(&format!("SELECT {SERVICE_COLS} FROM consul_services"))?;
        rows.services = st.query_map([], service)?.collect::<Result<_, _>>()?;
    }
    if has_table(conn, "consul_checks")? {
        let mut st = conn.prepare(&format!("SELECT {CHECK_COLS} FROM consul_checks"))?;
        rows.checks = st.query_map([], check)?.collect::<Result<_, _>>()?;
    }
    if has_table(conn, "consul_node_claims")? {
        let mut st = conn.prepare(&format!("SELECT {CLAIM_COLS} FROM consul_node_claims"))?;
        rows.claims = st.query_map([], claim)?.collect::<Result<_, _>>()?;
    }
    if has_table(conn, "consul_kv")? {
        let mut st = conn.prepare(&format!("SELECT {KV_COLS} FROM consul_kv"))?;
        rows.kv = st.query_map([], kv)?.collect::<Result<_, _>>()?;
    }
    Ok(rows)
}

fn key_text(v: &SqlValue) -> String {
    match v {
        SqlValue::Null => String::new(),
        SqlValue::Integer(n) => n.to_string(),
        SqlValue::Real(f) => f.to_string(),
        SqlValue::Text(t) => t.clone(),
        SqlValue::Blob(b) => String::from_utf8_lossy(b).into_owned(),
    }
}

fn bind(v: &SqlValue) -> rusqlite::types::Value {
    match v {
        SqlValue::Null => rusqlite::types::Value::Null,
        SqlValue::Integer(n) => rusqlite::types::Value::Integer(*n),
        SqlValue::Real(f) => rusqlite::types::Value::Real(*f),
        SqlValue::Text(t) => rusqlite::types::Value::Text(t.clone()),
        SqlValue::Blob(b) => rusqlite::types::Value::Blob(b.clone()),
    }
}

/// What a table holds now for one key a commit touched.
pub(crate) enum Fresh {
    Service(Service),
    NoService(String, String),
    Check(Check),
    NoCheck(String, String),
    Node(Node),
    NoNode(String),
    Claim(Claim),
    NoClaim(String, String),
    Kv(KvRow),
    NoKv(String),
    Other,
}

impl Fresh {
    /// The KV key this row is about, if it is a KV row.
    pub(crate) fn kv_key(&self) -> Option<String> {
        match self {
            Fresh::Kv(r) => Some(r.key.clone()),
            Fresh::NoKv(k) => Some(k.clone()),
            _ => None,
        }
    }
}

/// Re-reads one row a commit touched (`table` lower-case, `pk` its decoded
/// key); [`apply`] puts the result into the index.
pub(crate) fn read_row(conn: &Connection, table: &str, pk: &[SqlValue]) -> rusqlite::Result<Fresh> {
    Ok(match (table, pk) {
        ("consul_services", [n, i]) => {
            let sql =
                format!("SELECT {SERVICE_COLS} FROM consul_services WHERE node = ?1 AND id = ?2");
            match conn
                .prepare_cached(&sql)?
                .query_row([bind(n), bind(i)], service)
                .optional()?
            {
                Some(s) => Fresh::Service(s),
                None => Fresh::NoService(key_text(n), key_text(i)),
            }
        }
        ("consul_checks", [n, i]) => {
            let sql = format!("SELECT {CHECK_COLS} FROM consul_checks WHERE node = ?1 AND id = ?2");
            match conn
                .prepare_cached(&sql)?
                .query_row([bind(n), bind(i)], check)
                .optional()?
            {
                Some(c) => Fresh::Check(c),
                None => Fresh::NoCheck(key_text(n), key_text(i)),
            }
        }
        ("consul_nodes", [n]) => {
            let sql = format!("SELECT {NODE_COLS} FROM consul_nodes WHERE node = ?1");
            match conn
                .prepare_cached(&sql)?
                .query_row([bind(n)], node)
                .optional()?
            {
                Some(row) => Fresh::Node(row),
                None => Fresh::NoNode(key_text(n)),
            }
        }
        ("consul_node_claims", [n, a]) => {
            let sql = format!(
                "SELECT {CLAIM_COLS} FROM consul_node_claims WHERE node = ?1 AND actor_id = ?2"
            );
            match conn
                .prepare_cached(&sql)?
                .query_row([bind(n), bind(a)], claim)
                .optional()?
            {
                Some(c) => Fresh::Claim(c),
                None => Fresh::NoClaim(key_text(n), key_text(a)),
            }
        }
        ("consul_kv", [k]) => {
            let sql = format!("SELECT {KV_COLS} FROM consul_kv WHERE key = ?1");
            match conn
                .prepare_cached(&sql)?
                .query_row([bind(k)], kv)
                .optional()?
            {
                Some(r) => Fresh::Kv(r),
                None => Fresh::NoKv(key_text(k)),
            }
        }
        _ => Fresh::Other,
    })
}

/// Puts a re-read row into the index.
pub(crate) fn apply(index: &mut Index, fresh: Fresh) {
    match fresh {
        Fresh::Service(s) => index.upsert_service(s),
        Fresh::NoService(n, i) => index.remove_service(&n, &i),
        Fresh::Check(c) => index.upsert_check(c),
        Fresh::NoCheck(n, i) => index.remove_check(&n, &i),
        Fresh::Node(n) => index.upsert_node(n),
        Fresh::NoNode(n) => index.remove_node(&n),
        Fresh::Claim(c) => index.upsert_claim(c),
        Fresh::NoClaim(n, a) => index.remove_claim(&n, &a),
        Fresh::Kv(r) => index.upsert_kv(r),
        Fresh::NoKv(k) => index.remove_kv(&k),
        Fresh::Other => {}
    }
}
