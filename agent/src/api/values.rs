//! Conversions between the API's JSON values and the store's SQL values, and
//! running one API statement in a write transaction.

use corro_client::{Statement, Value};
use corro_store::{SqlValue, StoreError, WriteTx, bind_named, bind_positional};

pub(crate) use corro_subs::values::{from_ref, to_sql};

/// Named parameters may be given with or without their `:`/`@`/`$` prefix.
fn param_name(name: &str) -> String {
    if name.starts_with([':', '@', '$']) {
        name.to_string()
    } else {
        format!(":{name}")
    }
}

/// The statement's parameters in the store's form: positional, or named.
pub(crate) fn params(s: &Statement) -> (Vec<SqlValue>, Vec<(String, SqlValue)>) {
    let named = |n: &std::collections::BTreeMap<String, Value>| {
        n.iter().map(|(k, v)| (param_name(k), to_sql(v))).collect()
    };
    match s {
        Statement::Simple(_) => (Vec::new(), Vec::new()),
        Statement::WithParams(_, p) => (p.iter().map(to_sql).collect(), Vec::new()),
        Statement::WithNamedParams(_, n) => (Vec::new(), named(n)),
        Statement::Verbose {
            params,
            named_params,
            ..
        } => match (params, named_params) {
            (Some(p), _) if !p.is_empty() => (p.iter().map(to_sql).collect(), Vec::new()),
            (_, Some(n)) if !n.is_empty() => (Vec::new(), named(n)),
            _ => (Vec::new(), Vec::new()),
        },
    }
}

/// Runs one statement inside a local write transaction.
pub(crate) fn execute(tx: &mut WriteTx<'_>, stmt: &Statement) -> Result<usize, StoreError> {
    match params(stmt) {
        (_, named) if !named.is_empty() => tx.execute_named(stmt.sql(), &named),
        (positional, _) => tx.execute(stmt.sql(), &positional),
    }
}

/// Binds a statement's parameters to a prepared read statement.
pub(crate) fn bind(stmt: &mut rusqlite::Statement<'_>, s: &Statement) -> rusqlite::Result<()> {
    // Cached statements keep earlier bindings; start clean.
    stmt.clear_bindings();
    match params(s) {
        (_, named) if !named.is_empty() => bind_named(stmt, &named),
        (positional, _) => bind_positional(stmt, &positional),
    }
}
