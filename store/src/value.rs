//! SQLite values as the store moves them around, their ordering, and the
//! primary-key encoding used to name rows in shadow tables and on the wire.
//!
//! The ordering is SQLite's (`NULL` < numbers < text < blob, integers and reals
//! compared numerically, text and blobs byte-wise) because the merge rule breaks
//! `col_version` ties with "the larger value wins". Keys are the postcard
//! encoding of the primary-key values after type affinity, which is
//! deterministic; REAL key values are refused before they get here because
//! `1` and `1.0` name one SQLite row but would encode differently.

use std::cmp::Ordering;

use rusqlite::types::{ToSqlOutput, Value, ValueRef};
use serde::{Deserialize, Serialize};

/// One SQLite value.
///
/// Text is kept as a Rust `String`; text that is not valid UTF-8 (only
/// reachable through casts of blobs) is converted lossily.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SqlValue {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl SqlValue {
    /// Same storage class and same value: what "the value did not change" means.
    pub fn same_as(&self, other: &SqlValue) -> bool {
        match (self, other) {
            (SqlValue::Real(a), SqlValue::Real(b)) => a.to_bits() == b.to_bits() || a == b,
            _ => self == other,
        }
    }

    fn class(&self) -> u8 {
        match self {
            SqlValue::Null => 0,
            SqlValue::Integer(_) | SqlValue::Real(_) => 1,
            SqlValue::Text(_) => 2,
            SqlValue::Blob(_) => 3,
        }
    }

    /// Compares like SQLite's `max()` / `ORDER BY` with the BINARY collation.
    pub fn sqlite_cmp(&self, other: &SqlValue) -> Ordering {
        use SqlValue::*;
        match (self, other) {
            (Integer(a), Integer(b)) => a.cmp(b),
            (Real(a), Real(b)) => a.total_cmp(b),
            (Integer(a), Real(b)) => int_real_cmp(*a, *b),
            (Real(a), Integer(b)) => int_real_cmp(*b, *a).reverse(),
            (Text(a), Text(b)) => a.as_bytes().cmp(b.as_bytes()),
            (Blob(a), Blob(b)) => a.cmp(b),
            _ => self.class().cmp(&other.class()),
        }
    }

    /// Rough encoded size, used to cut changesets into chunks.
    pub fn encoded_len(&self) -> usize {
        match self {
            SqlValue::Null => 1,
            SqlValue::Integer(_) => 9,
            SqlValue::Real(_) => 9,
            SqlValue::Text(s) => s.len() + 5,
            SqlValue::Blob(b) => b.len() + 5,
        }
    }

    pub fn from_ref(v: ValueRef<'_>) -> SqlValue {
        match v {
            ValueRef::Null => SqlValue::Null,
            ValueRef::Integer(i) => SqlValue::Integer(i),
            ValueRef::Real(f) => SqlValue::Real(f),
            ValueRef::Text(t) => SqlValue::Text(String::from_utf8_lossy(t).into_owned()),
            ValueRef::Blob(b) => SqlValue::Blob(b.to_vec()),
        }
    }
}

/// Exact integer/real comparison (no precision loss for large integers).
fn int_real_cmp(i: i64, r: f64) -> Ordering {
    if r.is_nan() {
        return Ordering::Greater;
    }
    if r >= 9_223_372_036_854_775_808.0 {
        return Ordering::Less;
    }
    if r < -9_223_372_036_854_775_808.0 {
        return Ordering::Greater;
    }
    let t = r.trunc();
    match i.cmp(&(t as i64)) {
        Ordering::Equal => {
            let frac = r - t;
            if frac > 0.0 {
                Ordering::Less
            } else if frac < 0.0 {
                Ordering::Greater
            } else {
                Ordering::Equal
            }
        }
        o => o,
    }
}

impl rusqlite::ToSql for SqlValue {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            SqlValue::Null => ToSqlOutput::Owned(Value::Null),
            SqlValue::Integer(i) => ToSqlOutput::Owned(Value::Integer(*i)),
            SqlValue::Real(f) => ToSqlOutput::Owned(Value::Real(*f)),
            SqlValue::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            SqlValue::Blob(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
        })
    }
}

impl rusqlite::types::FromSql for SqlValue {
    fn column_result(v: ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        Ok(SqlValue::from_ref(v))
    }
}

impl From<i64> for SqlValue {
    fn from(v: i64) -> Self {
        SqlValue::Integer(v)
    }
}
impl From<f64> for SqlValue {
    fn from(v: f64) -> Self {
        SqlValue::Real(v)
    }
}
impl From<&str> for SqlValue {
    fn from(v: &str) -> Self {
        SqlValue::Text(v.to_string())
    }
}
impl From<String> for SqlValue {
    fn from(v: String) -> Self {
        SqlValue::Text(v)
    }
}
impl From<Vec<u8>> for SqlValue {
    fn from(v: Vec<u8>) -> Self {
        SqlValue::Blob(v)
    }
}

/// Binds positional parameters, checking their number against the statement.
pub fn bind_positional(
    stmt: &mut rusqlite::Statement<'_>,
    params: &[SqlValue],
) -> rusqlite::Result<()> {
    let expected = stmt.parameter_count();
    if expected != params.len() {
        return Err(rusqlite::Error::InvalidParameterCount(
            params.len(),
            expected,
        ));
    }
    for (i, p) in params.iter().enumerate() {
        stmt.raw_bind_parameter(i + 1, p)?;
    }
    Ok(())
}

/// Binds named parameters; names carry their `:`, `@` or `$` prefix.
pub fn bind_named(
    stmt: &mut rusqlite::Statement<'_>,
    params: &[(String, SqlValue)],
) -> rusqlite::Result<()> {
    for (name, v) in params {
        let idx = stmt
            .parameter_index(name)?
            .ok_or_else(|| rusqlite::Error::InvalidParameterName(name.clone()))?;
        stmt.raw_bind_parameter(idx, v)?;
    }
    Ok(())
}

/// Encodes primary-key values (in key order) into the row key.
pub fn encode_key(values: &[SqlValue]) -> Vec<u8> {
    // Serializing plain enums and vectors into a Vec cannot fail.
    postcard::to_stdvec(values).unwrap_or_default()
}

/// Encodes a key straight from SQLite's values, byte-for-byte what
/// [`encode_key`] produces (postcard: length, then per value its variant
/// index and payload). `None` for text that is not UTF-8 (the caller then
/// falls back to [`encode_key`], which converts it lossily like every value).
pub(crate) fn encode_key_refs<'a>(
    values: impl ExactSizeIterator<Item = ValueRef<'a>>,
) -> Option<Vec<u8>> {
    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    let mut out = Vec::with_capacity(32);
    varint(&mut out, values.len() as u64);
    for v in values {
        match v {
            ValueRef::Null => out.push(0),
            ValueRef::Integer(i) => {
                out.push(1);
                // zigzag, as postcard encodes signed integers
                varint(&mut out, ((i << 1) ^ (i >> 63)) as u64);
            }
            ValueRef::Real(f) => {
                out.push(2);
                out.extend_from_slice(&f.to_le_bytes());
            }
            ValueRef::Text(t) => {
                std::str::from_utf8(t).ok()?;
                out.push(3);
                varint(&mut out, t.len() as u64);
                out.extend_from_slice(t);
            }
            ValueRef::Blob(b) => {
                out.push(4);
                varint(&mut out, b.len() as u64);
                out.extend_from_slice(b);
            }
        }
    }
    Some(out)
}

/// Decodes a row key produced by [`encode_key`].
pub fn decode_key(key: &[u8]) -> Result<Vec<SqlValue>, postcard::Error> {
    postcard::from_bytes(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordering_follows_sqlite_classes_and_numeric_comparison() {
        use SqlValue::*;
        let ordered = [
            Null,
            Integer(-5),
            Real(0.5),
            Integer(1),
            Real(1.5),
            Integer(2),
            Text("1".into()),
            Text("b".into()),
            Blob(vec![0]),
            Blob(vec![1]),
        ];
        for w in ordered.windows(2) {
            assert_eq!(
                w[0].sqlite_cmp(&w[1]),
                Ordering::Less,
                "{:?} < {:?}",
                w[0],
                w[1]
            );
            assert_eq!(w[1].sqlite_cmp(&w[0]), Ordering::Greater);
        }
        assert_eq!(Integer(1).sqlite_cmp(&Real(1.0)), Ordering::Equal);
        assert_eq!(Integer(i64::MAX).sqlite_cmp(&Real(9.3e18)), Ordering::Less);
        assert_eq!(Integer(-1).sqlite_cmp(&Real(-0.5)), Ordering::Less);
        assert_eq!(Integer(0).sqlite_cmp(&Real(-0.5)), Ordering::Greater);
    }

    #[test]
    fn same_as_distinguishes_storage_classes() {
        assert!(!SqlValue::Integer(1).same_as(&SqlValue::Real(1.0)));
        assert!(!SqlValue::Integer(1).same_as(&SqlValue::Text("1".into())));
        assert!(SqlValue::Null.same_as(&SqlValue::Null));
    }

    #[test]
    fn hand_encoded_keys_match_postcard() {
        let owned = vec![
            SqlValue::Text("héllo".into()),
            SqlValue::Integer(-7),
            SqlValue::Integer(i64::MAX),
            SqlValue::Integer(i64::MIN),
            SqlValue::Integer(300),
            SqlValue::Blob(vec![1, 2, 3]),
            SqlValue::Null,
            SqlValue::Real(0.5),
            SqlValue::Text("x".repeat(200)),
        ];
        let refs: Vec<ValueRef<'_>> = owned
            .iter()
            .map(|v| match v {
                SqlValue::Null => ValueRef::Null,
                SqlValue::Integer(i) => ValueRef::Integer(*i),
                SqlValue::Real(f) => ValueRef::Real(*f),
                SqlValue::Text(t) => ValueRef::Text(t.as_bytes()),
                SqlValue::Blob(b) => ValueRef::Blob(b),
            })
            .collect();
        assert_eq!(
            encode_key_refs(refs.into_iter()).unwrap(),
            encode_key(&owned)
        );
        assert_eq!(encode_key_refs([ValueRef::Text(&[0xff])].into_iter()), None);
    }

    #[test]
    fn keys_round_trip() {
        let k = vec![
            SqlValue::Text("a".into()),
            SqlValue::Integer(7),
            SqlValue::Blob(vec![1, 2]),
        ];
        assert_eq!(decode_key(&encode_key(&k)).unwrap(), k);
    }
}
