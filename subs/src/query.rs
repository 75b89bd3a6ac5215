//! Subscription queries: which SQL can be maintained incrementally, and the
//! rewritten statements that maintain it.
//!
//! A subscription is one read-only `SELECT` over replicated tables (joins
//! allowed) without aggregates, `DISTINCT`, `GROUP BY`, `LIMIT`, compound
//! selects, CTEs or subqueries over tables: then every result row comes from
//! exactly one row of each table instance in `FROM`, and is identified by
//! their primary keys. The query is parsed with `sqlparser` (SQLite dialect)
//! and rewritten twice:
//!
//! - the *full* statement prepends the primary-key columns of every table
//!   instance to the projection (`"__corro_k<i>"`), so each result row carries
//!   its identity;
//! - a *filtered* statement per table instance adds
//!   `AND (alias.pk...) IN (VALUES (?, ...), ...)` to `WHERE`, to re-read only
//!   the result rows built from rows whose keys changed.
//!
//! Positional `?` parameters of the user's SQL are renumbered `?1..?n` so the
//! filter's parameters (numbered after them) never shift them. SQLite still
//! prepares the result on the store's read-only user connections, which
//! refuse anything that writes.

use sqlparser::ast::{
    Expr, GroupByExpr, Query, SelectItem, SetExpr, Statement, TableFactor, Value,
    visit_expressions, visit_expressions_mut, visit_relations,
};
use sqlparser::dialect::SQLiteDialect;
use sqlparser::parser::Parser;

use crate::SubError;

/// One table instance in the query's `FROM`/`JOIN`s.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    /// How the query refers to it (alias or table name).
    pub reference: String,
    pub table: String,
    pub pk: Vec<String>,
    /// Index of its first key column in a full result row.
    pub key_offset: usize,
}

/// The row condition of a one-table subscription ([`SubQuery::row_filter`]).
#[derive(Debug, Clone, PartialEq)]
pub struct RowFilter {
    pub table: String,
    /// How the condition refers to the table (alias or name).
    pub reference: String,
    pub pk: Vec<String>,
    /// SQL text of the condition.
    pub condition: String,
}

impl RowFilter {
    /// `SELECT pk..., CASE WHEN (c1) THEN 1 ELSE 0 END, ... FROM table AS reference WHERE pk IN
    /// (n keys)`: which of `conditions` each of `n` rows (bound as `?1...`,
    /// key columns in order per key) meets. Every condition must be one of
    /// filters on the same table under the same reference.
    pub fn match_sql(&self, conditions: &[&str], n: usize) -> String {
        let cols: Vec<String> = self
            .pk
            .iter()
            .map(|c| format!("{}.{}", quote(&self.reference), quote(c)))
            .collect();
        let tests: Vec<String> = conditions
            .iter()
            .map(|c| format!("CASE WHEN ({c}) THEN 1 ELSE 0 END"))
            .collect();
        let filter = keys_in(&cols, 0, n);
        format!(
            "SELECT {}, {} FROM {} AS {} WHERE {filter}",
            cols.join(", "),
            tests.join(", "),
            quote(&self.table),
            quote(&self.reference)
        )
    }
}

/// A parsed, accepted subscription query.
#[derive(Debug, Clone)]
pub struct SubQuery {
    /// The user's statement as the parser prints it back (normalized
    /// whitespace and case of keywords): same text, same subscription.
    pub normalized: String,
    pub sources: Vec<Source>,
    /// Number of key columns before the user's columns.
    pub key_cols: usize,
    /// Parameters the user's SQL takes: positional `?` (renumbered `?1..`)
    /// or distinct named ones; the filter's parameters come after them.
    pub positional: usize,
    /// The rewritten query (keys prepended, placeholders numbered).
    query: Query,
}

const AGGREGATES: &[&str] = &["count", "sum", "avg", "total", "group_concat", "string_agg"];

fn unsupported(what: &str) -> SubError {
    SubError::Unsupported(format!(
        "{what} cannot be maintained incrementally; subscribe to a plain SELECT (joins allowed) and aggregate on the client"
    ))
}

/// `cols IN (n keys)`, the keys bound as `?{after+1}...` (key columns in
/// order per key).
fn keys_in(cols: &[String], after: usize, n: usize) -> String {
    let width = cols.len();
    let mut next = after;
    let tuples: Vec<String> = (0..n)
        .map(|_| {
            let ps: Vec<String> = (0..width)
                .map(|_| {
                    next += 1;
                    format!("?{next}")
                })
                .collect();
            ps.join(", ")
        })
        .collect();
    if width == 1 {
        format!("{} IN ({})", cols[0], tuples.join(", "))
    } else {
        let tuples: Vec<String> = tuples.iter().map(|t| format!("({t})")).collect();
        format!("({}) IN (VALUES {})", cols.join(", "), tuples.join(", "))
    }
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

impl SubQuery {
    /// Parses and checks `sql`; `pk_of(table)` gives a replicated table's
    /// primary-key columns (`None`: not a replicated table).
    pub fn parse(sql: &str, pk_of: impl Fn(&str) -> Option<Vec<String>>) -> Result<Self, SubError> {
        let dialect = SQLiteDialect {};
        let mut statements =
            Parser::parse_sql(&dialect, sql).map_err(|e| SubError::Parse(e.to_string()))?;
        if statements.len() != 1 {
            return Err(SubError::Parse(format!(
                "a subscription is exactly one SELECT statement, got {}",
                statements.len()
            )));
        }
        let Some(Statement::Query(mut query)) = statements.pop() else {
            return Err(SubError::Parse(
                "a subscription must be a SELECT statement".into(),
            ));
        };
        let normalized = query.to_string();
        if query.with.is_some() {
            return Err(unsupported("WITH (common table expressions)"));
        }
        if query.limit_clause.is_some() || query.fetch.is_some() {
            return Err(unsupported("LIMIT/OFFSET"));
        }
        let SetExpr::Select(select) = query.body.as_mut() else {
            return Err(unsupported(
                "a compound SELECT (UNION, EXCEPT, ...) or VALUES",
            ));
        };
        if select.distinct.is_some() {
            return Err(unsupported("DISTINCT"));
        }
        if !matches!(&select.group_by, GroupByExpr::Expressions(e, m) if e.is_empty() && m.is_empty())
            || select.having.is_some()
        {
            return Err(unsupported("GROUP BY/HAVING"));
        }
        if select.from.is_empty() {
            return Err(SubError::Parse(
                "a subscription must read from at least one table".into(),
            ));
        }
        // Aggregates and window functions anywhere in the projection.
        let mut bad = None;
        let _ = visit_expressions(&select.projection, |e| {
            if let Expr::Function(f) = e {
                let name = f.name.to_string().to_ascii_lowercase();
                let args = match &f.args {
                    sqlparser::ast::FunctionArguments::List(l) => l.args.len(),
                    _ => 0,
                };
                if f.over.is_some() {
                    bad = Some("a window function".to_string());
                } else if AGGREGATES.contains(&name.as_str())
                    || ((name == "min" || name == "max") && args == 1)
                {
                    bad = Some(format!("the aggregate {name}()"));
                }
            }
            std::ops::ControlFlow::<()>::Continue(())
        });
        if let Some(what) = bad {
            return Err(unsupported(&what));
        }

        // Table instances in FROM and JOINs.
        let mut sources = Vec::new();
        let mut factors = Vec::new();
        for twj in &select.from {
            factors.push(&twj.relation);
            factors.extend(twj.joins.iter().map(|j| &j.relation));
        }
        let mut key_offset = 0;
        for f in factors {
            let TableFactor::Table {
                name, alias, args, ..
            } = f
            else {
                return Err(unsupported("a subquery or table function in FROM"));
            };
            if args.is_some() {
                return Err(unsupported("a table-valued function"));
            }
            if name.0.len() != 1 {
                return Err(SubError::UnknownTable(name.to_string()));
            }
            let table = match &name.0[0] {
                sqlparser::ast::ObjectNamePart::Identifier(i) => i.value.clone(),
                _ => return Err(SubError::UnknownTable(name.to_string())),
            };
            let pk = pk_of(&table).ok_or_else(|| SubError::UnknownTable(table.clone()))?;
            let reference = alias
                .as_ref()
                .map_or_else(|| table.clone(), |a| a.name.value.clone());
            sources.push(Source {
                reference,
                table,
                key_offset,
                pk: pk.clone(),
            });
            key_offset += pk.len();
        }
        // Tables read anywhere else (subqueries) would change unseen.
        let mut relations = 0;
        let _ = visit_relations(&*query, |_| {
            relations += 1;
            std::ops::ControlFlow::<()>::Continue(())
        });
        if relations != sources.len() {
            return Err(unsupported("a subquery over tables"));
        }

        // Number the user's `?` placeholders.
        let mut positional = 0;
        let mut numbered_ok = true;
        let mut named = std::collections::BTreeSet::new();
        let _ = visit_expressions_mut(&mut *query, |e| {
            if let Expr::Value(v) = e
                && let Value::Placeholder(p) = &mut v.value
            {
                if p == "?" {
                    positional += 1;
                    *p = format!("?{positional}");
                } else if p.starts_with('?') {
                    numbered_ok = false;
                } else {
                    named.insert(p.clone());
                }
            }
            std::ops::ControlFlow::<()>::Continue(())
        });
        if !numbered_ok {
            return Err(unsupported("numbered parameters (?NNN)"));
        }
        if positional > 0 && !named.is_empty() {
            return Err(unsupported("mixing positional and named parameters"));
        }
        let positional = positional + named.len();

        // Prepend the key columns.
        let keys: Vec<String> = sources
            .iter()
            .flat_map(|s| {
                s.pk.iter().enumerate().map(move |(j, c)| {
                    format!(
                        "{}.{} AS {}",
                        quote(&s.reference),
                        quote(c),
                        quote(&format!("__corro_k{}", s.key_offset + j))
                    )
                })
            })
            .collect();
        let key_cols = keys.len();
        let parsed = Parser::parse_sql(&dialect, &format!("SELECT {} FROM t", keys.join(", ")))
            .map_err(|e| SubError::Parse(e.to_string()))?;
        let Some(Statement::Query(kq)) = parsed.into_iter().next() else {
            return Err(SubError::Parse("rewriting the key columns failed".into()));
        };
        let SetExpr::Select(ks) = *kq.body else {
            return Err(SubError::Parse("rewriting the key columns failed".into()));
        };
        let SetExpr::Select(select) = query.body.as_mut() else {
            return Err(unsupported("a compound SELECT"));
        };
        let mut projection: Vec<SelectItem> = ks.projection;
        projection.append(&mut select.projection);
        select.projection = projection;

        Ok(SubQuery {
            normalized,
            sources,
            key_cols,
            positional,
            query: *query,
        })
    }

    /// The full query: key columns, then the user's columns.
    pub fn full_sql(&self) -> String {
        self.query.to_string()
    }

    /// The query restricted to rows whose source `source` has one of `n`
    /// keys, bound as `?{positional+1}...` (key columns in order per key).
    pub fn filtered_sql(&self, source: usize, n: usize) -> Result<String, SubError> {
        let s = &self.sources[source];
        let cols: Vec<String> =
            s.pk.iter()
                .map(|c| format!("{}.{}", quote(&s.reference), quote(c)))
                .collect();
        let filter = keys_in(&cols, self.positional, n);
        let dialect = SQLiteDialect {};
        let filter = Parser::new(&dialect)
            .try_with_sql(&filter)
            .and_then(|mut p| p.parse_expr())
            .map_err(|e| SubError::Parse(e.to_string()))?;
        let mut q = self.query.clone();
        // No ORDER BY needed for a partial re-read.
        q.order_by = None;
        let SetExpr::Select(select) = q.body.as_mut() else {
            return Err(unsupported("a compound SELECT"));
        };
        select.selection = Some(match select.selection.take() {
            Some(w) => Expr::BinaryOp {
                left: Box::new(Expr::Nested(Box::new(w))),
                op: sqlparser::ast::BinaryOperator::And,
                right: Box::new(filter),
            },
            None => filter,
        });
        Ok(q.to_string())
    }

    /// For a query over one table without parameters: the condition a row
    /// of that table must meet to be in the result (its `WHERE`, `1`
    /// without one; tested as `WHERE` tests it), so a change can be matched against many such
    /// subscriptions with one statement instead of re-reading it in each.
    pub fn row_filter(&self) -> Option<RowFilter> {
        let [s] = self.sources.as_slice() else {
            return None;
        };
        if self.positional > 0 {
            return None;
        }
        let SetExpr::Select(select) = self.query.body.as_ref() else {
            return None;
        };
        Some(RowFilter {
            table: s.table.clone(),
            reference: s.reference.clone(),
            pk: s.pk.clone(),
            condition: select
                .selection
                .as_ref()
                .map_or_else(|| "1".to_string(), ToString::to_string),
        })
    }

    /// Tables this subscription reads (each once).
    pub fn tables(&self) -> Vec<String> {
        let mut t: Vec<String> = self
            .sources
            .iter()
            .map(|s| s.table.to_ascii_lowercase())
            .collect();
        t.sort();
        t.dedup();
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pk(t: &str) -> Option<Vec<String>> {
        match t {
            "todos" => Some(vec!["id".into()]),
            "tags" => Some(vec!["todo".into(), "tag".into()]),
            _ => None,
        }
    }

    #[test]
    fn plain_and_joined_selects_get_key_columns() {
        let q = SubQuery::parse("select title from todos where completed_at is null", pk).unwrap();
        assert_eq!(q.key_cols, 1);
        assert_eq!(
            q.full_sql(),
            "SELECT \"todos\".\"id\" AS \"__corro_k0\", title FROM todos WHERE completed_at IS NULL"
        );
        assert_eq!(
            q.filtered_sql(0, 2).unwrap(),
            "SELECT \"todos\".\"id\" AS \"__corro_k0\", title FROM todos WHERE (completed_at IS NULL) AND \"todos\".\"id\" IN (?1, ?2)"
        );
        let q = SubQuery::parse(
            "SELECT t.title, g.tag FROM todos t JOIN tags g ON g.todo = t.id WHERE t.title = ? ORDER BY 1",
            pk,
        )
        .unwrap();
        assert_eq!(q.key_cols, 3);
        assert_eq!(q.positional, 1);
        assert_eq!(q.sources[1].key_offset, 1);
        assert!(q.full_sql().contains("t.title = ?1"), "{}", q.full_sql());
        let f = q.filtered_sql(1, 1).unwrap();
        assert!(
            f.ends_with(
                "WHERE (t.title = ?1) AND (\"g\".\"todo\", \"g\".\"tag\") IN (VALUES (?2, ?3))"
            ),
            "{f}"
        );
    }

    #[test]
    fn unsupported_shapes_are_refused_with_a_reason() {
        for (sql, want) in [
            ("SELECT count(*) FROM todos", "aggregate count()"),
            ("SELECT DISTINCT title FROM todos", "DISTINCT"),
            ("SELECT title FROM todos GROUP BY title", "GROUP BY"),
            ("SELECT title FROM todos LIMIT 3", "LIMIT"),
            (
                "SELECT title FROM todos UNION SELECT tag FROM tags",
                "compound",
            ),
            (
                "SELECT title FROM todos WHERE id IN (SELECT todo FROM tags)",
                "subquery over tables",
            ),
            (
                "SELECT * FROM (SELECT * FROM todos)",
                "subquery or table function",
            ),
            ("SELECT * FROM nope", "nope"),
            ("DELETE FROM todos", "must be a SELECT"),
            ("SELECT 1; SELECT 2", "exactly one"),
            ("SELEC title", "Expected"),
            ("SELECT 1", "at least one table"),
            ("WITH x AS (SELECT 1) SELECT * FROM todos", "WITH"),
            ("SELECT row_number() OVER () FROM todos", "window"),
        ] {
            let e = SubQuery::parse(sql, pk).unwrap_err().to_string();
            assert!(e.contains(want), "{sql}: {e}");
        }
        // Scalar min/max are fine.
        SubQuery::parse("SELECT max(title, 'a') FROM todos", pk).unwrap();
    }
}
