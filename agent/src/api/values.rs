//! Conversions between the API's JSON values and the store's SQL values, and
//! running one API statement in a write transaction.

use corro_client::{Statement, Value};
use corro_store::{SqlValue, StoreError, WriteTx};

pub(crate) fn to_sql(v: &Value) -> SqlValue {
    match v {
        Value::Null => SqlValue::Null,
        Value::Integer(i) => SqlValue::Integer(*i),
        Value::Real(f) => SqlValue::Real(*f),
        Value::Text(s) => SqlValue::Text(s.clone()),
        Value::Blob(b) => SqlValue::Blob(b.clone()),
    }
}

pub(crate) fn from_ref(v: rusqlite::types::ValueRef<'_>) -> Value {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Integer(i),
        ValueRef::Real(f) => Value::Real(f),
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

/// Named parameters may be given with or without their `:`/`@`/`$` prefix.
fn param_name(name: &str) -> String {
    if name.starts_with([':', '@', '$']) {
        name.to_string()
    } else {
        format!(":{name}")
    }
}

/// Runs one statement inside a local write transaction.
pub(crate) fn execute(tx: &mut WriteTx<'_>, stmt: &Statement) -> Result<usize, StoreError> {
    match stmt {
        Statement::Simple(sql) => tx.execute(sql, &[]),
        Statement::WithParams(sql, params) => {
            tx.execute(sql, &params.iter().map(to_sql).collect::<Vec<_>>())
        }
        Statement::WithNamedParams(sql, named) => tx.execute_named(
            sql,
            &named
                .iter()
                .map(|(k, v)| (param_name(k), to_sql(v)))
                .collect::<Vec<_>>(),
        ),
        Statement::Verbose {
            query,
            params,
            named_params,
        } => match (params, named_params) {
            (Some(p), _) if !p.is_empty() => {
                tx.execute(query, &p.iter().map(to_sql).collect::<Vec<_>>())
            }
            (_, Some(n)) if !n.is_empty() => tx.execute_named(
                query,
                &n.iter()
                    .map(|(k, v)| (param_name(k), to_sql(v)))
                    .collect::<Vec<_>>(),
            ),
            _ => tx.execute(query, &[]),
        },
    }
}

/// Binds a statement's parameters to a prepared read statement.
pub(crate) fn bind(stmt: &mut rusqlite::Statement<'_>, s: &Statement) -> rusqlite::Result<()> {
    let positional =
        |stmt: &mut rusqlite::Statement<'_>, params: &[Value]| -> rusqlite::Result<()> {
            let expected = stmt.parameter_count();
            if expected != params.len() {
                return Err(rusqlite::Error::InvalidParameterCount(
                    params.len(),
                    expected,
                ));
            }
            for (i, p) in params.iter().enumerate() {
                stmt.raw_bind_parameter(i + 1, to_sql(p))?;
            }
            Ok(())
        };
    let named = |stmt: &mut rusqlite::Statement<'_>,
                 params: &std::collections::BTreeMap<String, Value>|
     -> rusqlite::Result<()> {
        for (k, v) in params {
            let name = param_name(k);
            let idx = stmt
                .parameter_index(&name)?
                .ok_or(rusqlite::Error::InvalidParameterName(name))?;
            stmt.raw_bind_parameter(idx, to_sql(v))?;
        }
        Ok(())
    };
    // Cached statements keep earlier bindings; start clean.
    stmt.clear_bindings();
    match s {
        Statement::Simple(_) => positional(stmt, &[]),
        Statement::WithParams(_, p) => positional(stmt, p),
        Statement::WithNamedParams(_, n) => named(stmt, n),
        Statement::Verbose {
            params,
            named_params,
            ..
        } => match (params, named_params) {
            (Some(p), _) if !p.is_empty() => positional(stmt, p),
            (_, Some(n)) if !n.is_empty() => named(stmt, n),
            _ => positional(stmt, &[]),
        },
    }
}
