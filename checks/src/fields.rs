//! A JSON object read the way Consul's decoder reads a definition: a key
//! matches whatever its case, with or without underscores, so `ServiceID`,
//! `serviceid` and `service_id` are one field (Consul accepts CamelCase and
//! snake_case). Only the object's own keys are folded; the contents of maps
//! such as `Meta` or `Header` are data and keep their spelling.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Map, Value};

/// A definition object with folded keys.
pub struct Fields<'a> {
    map: HashMap<String, &'a Value>,
}

/// Folds a key: lower case, without `_` and `-`.
pub fn fold(key: &str) -> String {
    key.chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

/// What a value of the wrong type or shape reads as (`field: reason`).
pub type FieldError = String;

impl<'a> Fields<'a> {
    /// Reads `obj`; for equal folded keys the last one wins (as Go's
    /// decoder lets a later key overwrite an earlier one).
    pub fn new(obj: &'a Map<String, Value>) -> Fields<'a> {
        Fields {
            map: obj.iter().map(|(k, v)| (fold(k), v)).collect(),
        }
    }

    /// The first present, non-null value among `names` (folded names).
    pub fn get(&self, names: &[&str]) -> Option<&'a Value> {
        names
            .iter()
            .find_map(|n| self.map.get(*n).copied())
            .filter(|v| !v.is_null())
    }

    pub fn string(&self, names: &[&str]) -> Result<Option<String>, FieldError> {
        match self.get(names) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("{}: expected a string", names[0])),
        }
    }

    pub fn string_or_empty(&self, names: &[&str]) -> Result<String, FieldError> {
        Ok(self.string(names)?.unwrap_or_default())
    }

    pub fn bool(&self, names: &[&str]) -> Result<Option<bool>, FieldError> {
        match self.get(names) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(format!("{}: expected true or false", names[0])),
        }
    }

    /// A non-negative integer up to `max`.
    pub fn uint(&self, names: &[&str], max: u64) -> Result<Option<u64>, FieldError> {
        match self.get(names) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_u64() {
                Some(v) if v <= max => Ok(Some(v)),
                _ => Err(format!(
                    "{}: expected a whole number from 0 to {max}, got {n}",
                    names[0]
                )),
            },
            Some(_) => Err(format!("{}: expected a number", names[0])),
        }
    }

    /// A signed integer (Consul's `int` fields, such as `Weights`).
    pub fn int(&self, names: &[&str]) -> Result<Option<i64>, FieldError> {
        match self.get(names) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_i64()
                .map(Some)
                .ok_or_else(|| format!("{}: expected a whole number, got {n}", names[0])),
            Some(_) => Err(format!("{}: expected a number", names[0])),
        }
    }

    pub fn duration(&self, names: &[&str]) -> Result<Option<Duration>, FieldError> {
        match self.get(names) {
            None => Ok(None),
            Some(v) => crate::duration::from_json(v)
                .map(Some)
                .map_err(|e| format!("{}: {e}", names[0])),
        }
    }

    pub fn string_list(&self, names: &[&str]) -> Result<Option<Vec<String>>, FieldError> {
        match self.get(names) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| match i {
                    Value::String(s) => Ok(s.clone()),
                    _ => Err(format!("{}: expected a list of strings", names[0])),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(format!("{}: expected a list of strings", names[0])),
        }
    }

    pub fn object(&self, names: &[&str]) -> Result<Option<&'a Map<String, Value>>, FieldError> {
        match self.get(names) {
            None => Ok(None),
            Some(Value::Object(o)) => Ok(Some(o)),
            Some(_) => Err(format!("{}: expected an object", names[0])),
        }
    }

    /// A map of strings (`Meta`).
    pub fn string_map(&self, names: &[&str]) -> Result<Option<Vec<(String, String)>>, FieldError> {
        let Some(o) = self.object(names)? else {
            return Ok(None);
        };
        o.iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                _ => Err(format!("{}: values must be strings ({k:?})", names[0])),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn camel_and_snake_case_are_one_field() {
        let v: Value = serde_json::json!({
            "ServiceID": "a", "deregister_critical_service_after": "90s",
            "TLSSkipVerify": true, "Meta": {"Mixed_Case": "x"}
        });
        let f = Fields::new(v.as_object().unwrap());
        assert_eq!(f.string(&["serviceid"]).unwrap().as_deref(), Some("a"));
        assert_eq!(
            f.duration(&["deregistercriticalserviceafter"]).unwrap(),
            Some(Duration::from_secs(90))
        );
        assert_eq!(f.bool(&["tlsskipverify"]).unwrap(), Some(true));
        assert_eq!(
            f.string_map(&["meta"]).unwrap().unwrap(),
            vec![("Mixed_Case".to_string(), "x".to_string())]
        );
        assert!(f.uint(&["serviceid"], 10).is_err());
    }
}
