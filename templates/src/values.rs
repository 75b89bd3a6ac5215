//! Query results as template values.
//!
//! `sql()` returns a [`Rows`]: iterable (`for row in sql(...)`), indexable
//! (`rows[0]`), with `len()`, `columns()`, `to_json()` and `to_csv()`. Each
//! [`Row`] reads its cells by name (`row.col`, `row["col"]`) or position
//! (`row[0]`), converting a cell only when it is read; a column the query
//! does not return is an error. `row.to_map()` gives an object map. SQL NULL reads as `()` (`is_null()` is true, it
//! renders as nothing); integers, reals and text as Rhai numbers and
//! strings; blobs as Rhai blobs.

use std::sync::Arc;

use corro_client::Value;
use rhai::{Dynamic, Map};

/// The result of one `sql()` call.
#[derive(Debug, Clone, Default)]
pub struct Rows {
    pub columns: Arc<Vec<String>>,
    pub rows: Arc<Vec<Vec<Value>>>,
}

impl Rows {
    pub fn new(columns: Vec<String>, rows: Vec<Vec<Value>>) -> Rows {
        Rows {
            columns: Arc::new(columns),
            rows: Arc::new(rows),
        }
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Row `i`.
    pub fn at(&self, i: usize) -> Option<Row> {
        (i < self.rows.len()).then(|| Row {
            rows: self.clone(),
            index: i,
        })
    }

    /// Row `i` as an object map.
    pub fn row(&self, i: usize) -> Option<Map> {
        let cells = self.rows.get(i)?;
        Some(
            self.columns
                .iter()
                .zip(cells)
                .map(|(c, v)| (c.as_str().into(), to_dynamic(v)))
                .collect(),
        )
    }

    /// JSON: an array of objects (column -> value), or with `arrays` an
    /// array of arrays in column order; `pretty` indents.
    pub fn to_json(&self, pretty: bool, arrays: bool) -> String {
        let rows: Vec<JsonRow<'_>> = self
            .rows
            .iter()
            .map(|cells| JsonRow {
                columns: if arrays { None } else { Some(&self.columns) },
                cells,
            })
            .collect();
        let text = if pretty {
            serde_json::to_string_pretty(&rows)
        } else {
            serde_json::to_string(&rows)
        };
        text.unwrap_or_default()
    }

    /// CSV (RFC 4180): a header line of column names, then one line per row;
    /// fields holding a comma, quote or line break are quoted. NULL is an
    /// empty field, blobs are hex.
    pub fn to_csv(&self) -> String {
        let mut out = String::new();
        let line = |out: &mut String, fields: &mut dyn Iterator<Item = String>| {
            let mut first = true;
            for f in fields {
                if !first {
                    out.push(',');
                }
                first = false;
                if f.contains([',', '"', '\n', '\r']) {
                    out.push('"');
                    out.push_str(&f.replace('"', "\"\""));
                    out.push('"');
                } else {
                    out.push_str(&f);
                }
            }
            out.push_str("\r\n");
        };
        line(&mut out, &mut self.columns.iter().cloned());
        for cells in self.rows.iter() {
            line(&mut out, &mut cells.iter().map(text_of));
        }
        out
    }
}

impl IntoIterator for Rows {
    type Item = Row;
    type IntoIter = RowsIter;

    fn into_iter(self) -> RowsIter {
        RowsIter {
            rows: self,
            next: 0,
        }
    }
}

/// Iterates a [`Rows`] row by row.
pub struct RowsIter {
    rows: Rows,
    next: usize,
}

impl Iterator for RowsIter {
    type Item = Row;

    fn next(&mut self) -> Option<Row> {
        let row = self.rows.at(self.next)?;
        self.next += 1;
        Some(row)
    }
}

/// One row of a [`Rows`]: `row.col`, `row["col"]` or `row[i]` reads a cell
/// (converted only when read, so a loop over many rows builds no maps).
#[derive(Debug, Clone)]
pub struct Row {
    rows: Rows,
    index: usize,
}

impl Row {
    fn cells(&self) -> &[Value] {
        self.rows.rows.get(self.index).map_or(&[], Vec::as_slice)
    }

    /// The cell of column `name`; `None` when the row has no such column.
    pub fn get(&self, name: &str) -> Option<Dynamic> {
        let i = self.rows.columns.iter().position(|c| c == name)?;
        self.cells().get(i).map(to_dynamic)
    }

    /// The cell at `i` (0-based, negative from the end).
    pub fn nth(&self, i: i64) -> Option<Dynamic> {
        let cells = self.cells();
        let i = if i < 0 { cells.len() as i64 + i } else { i };
        cells.get(usize::try_from(i).ok()?).map(to_dynamic)
    }

    pub fn columns(&self) -> &[String] {
        &self.rows.columns
    }

    /// The row as an object map.
    pub fn to_map(&self) -> Map {
        self.rows.row(self.index).unwrap_or_default()
    }
}

/// A SQL value as a Rhai value.
pub fn to_dynamic(v: &Value) -> Dynamic {
    match v {
        Value::Null => Dynamic::UNIT,
        Value::Integer(i) => Dynamic::from_int(*i),
        Value::Real(f) => Dynamic::from_float(*f),
        Value::Text(s) => Dynamic::from(s.clone()),
        Value::Blob(b) => Dynamic::from_blob(b.clone()),
    }
}

/// A Rhai value as a SQL parameter (`None`: not a SQL value).
pub fn from_dynamic(d: &Dynamic) -> Option<Value> {
    if d.is_unit() {
        return Some(Value::Null);
    }
    if let Ok(i) = d.as_int() {
        return Some(Value::Integer(i));
    }
    if let Ok(f) = d.as_float() {
        return Some(Value::Real(f));
    }
    if let Ok(b) = d.as_bool() {
        return Some(Value::Integer(i64::from(b)));
    }
    if d.is_string() {
        return Some(Value::Text(d.clone().into_string().ok()?));
    }
    if d.is_char() {
        return Some(Value::Text(d.as_char().ok()?.to_string()));
    }
    if d.is_blob() {
        return Some(Value::Blob(d.clone().into_blob().ok()?));
    }
    None
}

/// One row for JSON: an object in column order, or an array.
struct JsonRow<'a> {
    columns: Option<&'a [String]>,
    cells: &'a [Value],
}

impl serde::Serialize for JsonRow<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self.columns {
            Some(columns) => {
                let mut m = s.serialize_map(Some(self.cells.len()))?;
                for (c, v) in columns.iter().zip(self.cells) {
                    m.serialize_entry(c, &json_of(v))?;
                }
                m.end()
            }
            None => {
                let mut q = s.serialize_seq(Some(self.cells.len()))?;
                for v in self.cells {
                    q.serialize_element(&json_of(v))?;
                }
                q.end()
            }
        }
    }
}

fn json_of(v: &Value) -> serde_json::Value {
    match v {
        Value::Null => serde_json::Value::Null,
        Value::Integer(i) => (*i).into(),
        Value::Real(f) => serde_json::Number::from_f64(*f)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        Value::Text(s) => s.clone().into(),
        Value::Blob(b) => hex(b).into(),
    }
}

fn text_of(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::Integer(i) => i.to_string(),
        Value::Real(f) => f.to_string(),
        Value::Text(s) => s.clone(),
        Value::Blob(b) => hex(b),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Rows {
        Rows::new(
            vec!["id".into(), "title".into(), "done".into()],
            vec![
                vec![
                    Value::Integer(1),
                    Value::Text("a, \"b\"".into()),
                    Value::Null,
                ],
                vec![Value::Integer(2), Value::Text("c".into()), Value::Real(1.5)],
            ],
        )
    }

    #[test]
    fn csv_quotes_fields_that_need_it() {
        assert_eq!(
            sample().to_csv(),
            "id,title,done\r\n1,\"a, \"\"b\"\"\",\r\n2,c,1.5\r\n"
        );
    }

    #[test]
    fn json_as_objects_or_arrays() {
        assert_eq!(
            sample().to_json(false, false),
            r#"[{"id":1,"title":"a, \"b\"","done":null},{"id":2,"title":"c","done":1.5}]"#
        );
        assert_eq!(
            sample().to_json(false, true),
            r#"[[1,"a, \"b\"",null],[2,"c",1.5]]"#
        );
    }
}
