//! JSON shapes of the agent's HTTP API.
//!
//! SQL values travel as plain JSON: `null`, numbers (integers stay integers),
//! strings, and blobs as arrays of byte values. Statements are accepted as a
//! string, `[sql, [params]]`, `[sql, {":name": value}]` or
//! `{"query": sql, "params": [...], "named_params": {...}}`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One SQL value as the API carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "serde_json::Value", into = "serde_json::Value")]
pub enum Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl TryFrom<serde_json::Value> for Value {
    type Error = String;

    fn try_from(v: serde_json::Value) -> Result<Self, Self::Error> {
        use serde_json::Value as J;
        Ok(match v {
            J::Null => Value::Null,
            J::Bool(b) => Value::Integer(i64::from(b)),
            J::Number(n) => match n.as_i64() {
                Some(i) => Value::Integer(i),
                None => Value::Real(
                    n.as_f64()
                        .ok_or_else(|| format!("number {n} is out of range"))?,
                ),
            },
            J::String(s) => Value::Text(s),
            J::Array(items) => Value::Blob(
                items
                    .into_iter()
                    .map(|i| {
                        i.as_u64()
                            .and_then(|b| u8::try_from(b).ok())
                            .ok_or_else(|| "a blob is an array of byte values (0-255)".to_string())
                    })
                    .collect::<Result<_, _>>()?,
            ),
            J::Object(_) => return Err("an SQL value cannot be an object".into()),
        })
    }
}

impl From<Value> for serde_json::Value {
    fn from(v: Value) -> Self {
        match v {
            Value::Null => serde_json::Value::Null,
            Value::Integer(i) => i.into(),
            // NaN and infinities have no JSON form; SQLite stores NaN as NULL.
            Value::Real(f) => {
                serde_json::Number::from_f64(f).map_or(serde_json::Value::Null, Into::into)
            }
            Value::Text(s) => s.into(),
            Value::Blob(b) => b.into_iter().map(serde_json::Value::from).collect(),
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Text(s.to_string())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Text(s)
    }
}
impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Integer(i)
    }
}
impl From<f64> for Value {
    fn from(f: f64) -> Self {
        Value::Real(f)
    }
}

impl std::fmt::Display for Value {
    /// How the CLI prints a cell: NULL as nothing, blobs as text when UTF-8.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Null => Ok(()),
            Value::Integer(i) => write!(f, "{i}"),
            Value::Real(r) => write!(f, "{r}"),
            Value::Text(s) => f.write_str(s),
            Value::Blob(b) => match std::str::from_utf8(b) {
                Ok(s) => f.write_str(s),
                Err(_) => b.iter().try_for_each(|x| write!(f, "{x:02x}")),
            },
        }
    }
}

/// One SQL statement with its parameters: `"SQL"`, `["SQL", [params]]`,
/// `["SQL", {named params}]` or `{"query", "params"?, "named_params"?}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Statement {
    Simple(String),
    WithParams(String, Vec<Value>),
    WithNamedParams(String, BTreeMap<String, Value>),
    Verbose {
        query: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        params: Option<Vec<Value>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        named_params: Option<BTreeMap<String, Value>>,
    },
}

/// The verbose form's fields.
#[derive(Deserialize)]
struct VerboseStatement {
    query: String,
    #[serde(default)]
    params: Option<Vec<Value>>,
    #[serde(default)]
    named_params: Option<BTreeMap<String, Value>>,
}

/// A statement's parameters: a list or a map.
enum Params {
    List(Vec<Value>),
    Named(BTreeMap<String, Value>),
}

impl<'de> Deserialize<'de> for Params {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Params;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of parameters or an object of named parameters")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, a: A) -> Result<Params, A::Error> {
                Vec::deserialize(serde::de::value::SeqAccessDeserializer::new(a)).map(Params::List)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, a: A) -> Result<Params, A::Error> {
                BTreeMap::deserialize(serde::de::value::MapAccessDeserializer::new(a))
                    .map(Params::Named)
            }
        }
        d.deserialize_any(V)
    }
}

/// Reads each form directly (no buffering and retrying per form, which
/// cost an error value per request on the read path).
impl<'de> Deserialize<'de> for Statement {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Statement;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "a statement: \"SQL\", [\"SQL\", [params]], [\"SQL\", {named params}] or {\"query\": ...}",
                )
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Statement, E> {
                Ok(Statement::Simple(s.to_string()))
            }
            fn visit_string<E: serde::de::Error>(self, s: String) -> Result<Statement, E> {
                Ok(Statement::Simple(s))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Statement, A::Error> {
                use serde::de::Error;
                let sql: String = a
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(0, &self))?;
                let params: Option<Params> = a.next_element()?;
                if a.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    return Err(A::Error::invalid_length(3, &self));
                }
                Ok(match params {
                    None => Statement::Simple(sql),
                    Some(Params::List(p)) => Statement::WithParams(sql, p),
                    Some(Params::Named(p)) => Statement::WithNamedParams(sql, p),
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, a: A) -> Result<Statement, A::Error> {
                let v =
                    VerboseStatement::deserialize(serde::de::value::MapAccessDeserializer::new(a))?;
                Ok(Statement::Verbose {
                    query: v.query,
                    params: v.params,
                    named_params: v.named_params,
                })
            }
        }
        d.deserialize_any(V)
    }
}

impl Statement {
    pub fn sql(&self) -> &str {
        match self {
            Statement::Simple(s)
            | Statement::WithParams(s, _)
            | Statement::WithNamedParams(s, _) => s,
            Statement::Verbose { query, .. } => query,
        }
    }
}

impl From<&str> for Statement {
    fn from(s: &str) -> Self {
        Statement::Simple(s.to_string())
    }
}

/// Response of `POST /v1/transactions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecResponse {
    pub results: Vec<ExecResult>,
    /// Seconds spent running the whole transaction.
    pub time: f64,
    /// The version this transaction created (absent when nothing changed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// This node's actor id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor_id: Option<String>,
}

/// One statement's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecResult {
    pub rows_affected: usize,
    /// Seconds spent on this statement.
    pub time: f64,
}

/// One line of the NDJSON answer to `POST /v1/queries`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueryEvent {
    Columns(Vec<String>),
    /// (row id within this result, cells)
    Row(u64, Vec<Value>),
    #[serde(rename = "eoq")]
    EndOfQuery {
        time: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        change_id: Option<u64>,
    },
    /// A subscription's change: (kind, row id, cells, change id).
    Change(ChangeKind, u64, Vec<Value>, u64),
    Error(String),
}

/// What happened to a subscription's result row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Insert,
    Update,
    Delete,
}

/// One line of `POST /v1/updates/:table`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyEvent {
    /// (`update` or `delete`, primary-key values)
    Notify(NotifyKind, Vec<Value>),
    Error(String),
}

/// Kind of an update-feed notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyKind {
    Update,
    Delete,
}

/// Body of `POST /v1/table_stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableStatsRequest {
    pub tables: Vec<String>,
}

/// Response of `POST /v1/table_stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableStatsResponse {
    pub total_row_count: u64,
    pub invalid_tables: Vec<String>,
}

/// Response of `GET /v1/health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthResponse {
    /// "ok" when the agent can serve reads and writes.
    pub status: String,
    pub actor_id: String,
    /// Highest version this node has issued.
    pub head: u64,
    /// This node has caught up with the cluster: a sync round was answered
    /// and no version is missing (true for a node with no peers to ask).
    #[serde(default)]
    pub caught_up: bool,
    /// Versions of known actors this node lacks below their heads (gaps).
    #[serde(default)]
    pub missing_versions: u64,
    /// Most versions this node still lacked of an active peer's heads after
    /// the last sync round with it.
    #[serde(default)]
    pub behind: u64,
    /// Seconds since the last completed sync round (`null`: none yet).
    #[serde(default)]
    pub last_sync_secs: Option<f64>,
    /// Members SWIM declares down.
    #[serde(default)]
    pub members_down: usize,
    /// Versions waiting to be broadcast.
    #[serde(default)]
    pub broadcast_queue: usize,
    /// Replication lag: seconds from the origin's commit to the merge here
    /// of the last version that arrived from a peer, by broadcast or sync
    /// (`null`: none yet). Clock skew between hosts shows up in it.
    #[serde(default)]
    pub replication_lag_secs: Option<f64>,
    /// Why `status` is not "ok" (empty when it is).
    #[serde(default)]
    pub reasons: Vec<String>,
    /// Members this node sees (itself excluded).
    pub members: usize,
    /// Fingerprint of this node's replicated schema (16 hex digits).
    #[serde(default)]
    pub schema: String,
    /// Active members whose replicated schema differs from this node's (as
    /// last seen in a sync round). Changes naming tables or columns a node
    /// lacks wait there until the schema files match.
    #[serde(default)]
    pub schema_mismatches: Vec<SchemaMismatch>,
}

/// A member whose replicated schema differs (see [`HealthResponse`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchemaMismatch {
    pub actor_id: String,
    pub addr: String,
    pub schema: String,
}

/// One entry of `GET /v1/members`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    pub actor_id: String,
    pub addr: String,
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<f64>,
}

/// Error body of every non-2xx response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_statements_are_refused_and_forms_round_trip() {
        for bad in [
            "1",
            "[]",
            "[1]",
            r#"["SELECT 1", 5]"#,
            r#"["SELECT 1", [], []]"#,
            r#"{"params": [1]}"#,
            r#"{"query": 1}"#,
            "null",
        ] {
            assert!(serde_json::from_str::<Statement>(bad).is_err(), "{bad}");
        }
        for s in [
            Statement::Simple("SELECT 1".into()),
            Statement::WithParams("SELECT ?".into(), vec![Value::Integer(1)]),
            Statement::WithNamedParams(
                "SELECT :a".into(),
                [("a".to_string(), Value::Text("x".into()))].into(),
            ),
            Statement::Verbose {
                query: "SELECT ?".into(),
                params: Some(vec![Value::Null]),
                named_params: None,
            },
        ] {
            let text = serde_json::to_string(&s).unwrap();
            assert_eq!(
                serde_json::from_str::<Statement>(&text).unwrap(),
                s,
                "{text}"
            );
        }
    }

    #[test]
    fn statement_forms_parse() {
        let s: Vec<Statement> = serde_json::from_str(
            r#"["SELECT 1", ["SELECT ?", [1, "a", null, 1.5, [1,2]]], ["SELECT :x", {":x": 2}], {"query": "SELECT ?", "params": [true]}]"#,
        )
        .unwrap();
        assert_eq!(s[0], Statement::Simple("SELECT 1".into()));
        assert_eq!(
            s[1],
            Statement::WithParams(
                "SELECT ?".into(),
                vec![
                    Value::Integer(1),
                    "a".into(),
                    Value::Null,
                    Value::Real(1.5),
                    Value::Blob(vec![1, 2])
                ]
            )
        );
        assert!(matches!(&s[2], Statement::WithNamedParams(_, m) if m[":x"] == Value::Integer(2)));
        assert!(
            matches!(&s[3], Statement::Verbose { params: Some(p), .. } if p == &[Value::Integer(1)])
        );
    }

    #[test]
    fn query_events_have_the_reference_shapes() {
        let lines = [
            QueryEvent::Columns(vec!["sandwich".into()]),
            QueryEvent::Row(1, vec!["burger".into()]),
            QueryEvent::EndOfQuery {
                time: 5e-8,
                change_id: None,
            },
            QueryEvent::Error("boom".into()),
        ]
        .map(|e| serde_json::to_string(&e).unwrap());
        assert_eq!(lines[0], r#"{"columns":["sandwich"]}"#);
        assert_eq!(lines[1], r#"{"row":[1,["burger"]]}"#);
        assert_eq!(lines[2], r#"{"eoq":{"time":5e-8}}"#);
        assert_eq!(lines[3], r#"{"error":"boom"}"#);
    }

    #[test]
    fn bad_values_are_rejected() {
        assert!(serde_json::from_str::<Value>(r#"{"a":1}"#).is_err());
        assert!(serde_json::from_str::<Value>("[300]").is_err());
    }
}

/// Answer of `POST /v1/discovery`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiscoveryAnswer {
    /// The catalog index the answer was computed at.
    pub index: u64,
    pub value: serde_json::Value,
}

/// Answer of `GET /v1/discovery/index`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiscoveryIndex {
    pub index: u64,
}
