//! A service definition in Consul's format (`PUT /v1/agent/service/register`
//! bodies, `service` blocks of definition files): decoded, validated in
//! Consul's order with Consul's messages, and shown back exactly as
//! registered (Nomad re-registers on any difference in Kind, ID, Port,
//! Address, Name, EnableTagOverride, Meta, TaggedAddresses or Tags).
//!
//! Choices where Consul is silent or differs from what we can store:
//! - no tagged addresses are added (`lan_ipv4`, ...): the echo holds what
//!   the client sent;
//! - mesh and Enterprise fields (`Kind`, `Proxy`, `Connect`, `Namespace`,
//!   `Partition`, `PeerName`, `Locality`, `SocketPath`) are stored and echoed,
//!   and mean nothing else here;
//! - `Weights` absent or all zero (`{}`) is Consul's default `{1, 1}`;
//!   otherwise `Passing` below 1 or `Warning` below 0 is refused with
//!   Consul's message (`ValidateWeights`);
//! - `Port` outside 0–65535 is refused (`Validation failed: …`): DNS SRV
//!   answers cannot carry it.

use std::collections::BTreeMap;

use corro_catalog::model::{TaggedAddress, Weights};
use corro_checks::fields::Fields;
use corro_checks::{CheckDefinition, CheckError};
use serde_json::{Map, Value, json};

/// Fields stored and echoed but not interpreted (mesh, Enterprise).
const PASSTHROUGH: &[(&str, &str)] = &[
    ("proxy", "Proxy"),
    ("connect", "Connect"),
    ("namespace", "Namespace"),
    ("partition", "Partition"),
    ("peername", "PeerName"),
    ("locality", "Locality"),
];

const META_MAX_PAIRS: usize = 64;
/// Limits Consul does not have, so that one registration stays small (its
/// tags and addresses go to every node).
pub const MAX_TAGS: usize = 256;
pub const MAX_TAG_BYTES: usize = 1024;
pub const MAX_TAGGED_ADDRESSES: usize = 32;
pub const MAX_CHECKS: usize = 64;
pub const MAX_PASSTHROUGH_BYTES: usize = 16 * 1024;
pub const MAX_NAME_BYTES: usize = 1024;
const META_KEY_MAX: usize = 128;
const META_VALUE_MAX: usize = 512;

/// A decoded service definition.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceDefinition {
    pub kind: String,
    pub id: String,
    pub name: String,
    pub tags: Vec<String>,
    pub address: String,
    pub tagged_addresses: BTreeMap<String, TaggedAddress>,
    pub meta: BTreeMap<String, String>,
    pub port: i64,
    pub socket_path: String,
    pub weights: Weights,
    pub enable_tag_override: bool,
    /// Passthrough fields as given, under Consul's names.
    pub extra: BTreeMap<String, Value>,
    /// Its checks, IDs and names filled as Consul fills them.
    pub checks: Vec<CheckDefinition>,
    /// Each check's object as sent (same order as `checks`).
    pub check_bodies: Vec<Value>,
}

/// Why a service body was refused: the 400 body text, Consul's wording.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ServiceError(pub String);

impl ServiceDefinition {
    /// Decodes and validates a registration body (the object itself, or
    /// as in definition files the object under `service`).
    pub fn decode(v: &Value) -> Result<ServiceDefinition, ServiceError> {
        let decode_failed = |e: String| ServiceError(format!("Request decode failed: {e}"));
        let obj = v
            .as_object()
            .ok_or_else(|| decode_failed("expected a JSON object".into()))?;
        let f = Fields::new(obj);
        let s = |names: &[&str]| f.string_or_empty(names).map_err(decode_failed);
        let name = s(&["name", "service"])?;
        let id = s(&["id"])?;
        let kind = s(&["kind"])?;
        let address = s(&["address"])?;
        let socket_path = s(&["socketpath"])?;
        let tags = f
            .string_list(&["tags"])
            .map_err(decode_failed)?
            .unwrap_or_default();
        let meta: BTreeMap<String, String> = f
            .string_map(&["meta"])
            .map_err(decode_failed)?
            .unwrap_or_default()
            .into_iter()
            .collect();
        let port = f.int(&["port"]).map_err(decode_failed)?.unwrap_or(0);
        let enable_tag_override = f
            .bool(&["enabletagoverride"])
            .map_err(decode_failed)?
            .unwrap_or(false);
        let weights_in = match f.object(&["weights"]).map_err(decode_failed)? {
            None => None,
            Some(w) => {
                let wf = Fields::new(w);
                Some((
                    wf.int(&["passing"]).map_err(decode_failed)?.unwrap_or(0),
                    wf.int(&["warning"]).map_err(decode_failed)?.unwrap_or(0),
                ))
            }
        };
        let mut tagged_addresses = BTreeMap::new();
        if let Some(t) = f.object(&["taggedaddresses"]).map_err(decode_failed)? {
            for (k, v) in t {
                let a = v.as_object().ok_or_else(|| {
                    decode_failed(format!("TaggedAddresses: {k:?} needs an object"))
                })?;
                let af = Fields::new(a);
                tagged_addresses.insert(
                    k.clone(),
                    TaggedAddress {
                        address: af.string_or_empty(&["address"]).map_err(decode_failed)?,
                        port: af.int(&["port"]).map_err(decode_failed)?.unwrap_or(0),
                    },
                );
            }
        }
        let mut extra = BTreeMap::new();
        for (folded, shown) in PASSTHROUGH {
            if let Some(v) = f.get(&[folded]) {
                extra.insert(shown.to_string(), v.clone());
            }
        }
        let mut raw_checks: Vec<&Map<String, Value>> = Vec::new();
        if let Some(c) = f.get(&["check"]) {
            let c = c
                .as_object()
                .ok_or_else(|| decode_failed("Check: expected an object".into()))?;
            // An empty `Check` is no check (Consul drops it); an empty entry
            // of `Checks` is validated, and refused.
            if !c.is_empty() {
                raw_checks.push(c);
            }
        }
        if let Some(list) = f.get(&["checks"]) {
            let list = list
                .as_array()
                .ok_or_else(|| decode_failed("Checks: expected a list".into()))?;
            for c in list {
                raw_checks.push(
                    c.as_object()
                        .ok_or_else(|| decode_failed("Checks: expected objects".into()))?,
                );
            }
        }

        // Consul's order: name, address, weights, meta, validation, checks.
        if name.is_empty() {
            return Err(ServiceError("Missing service name".into()));
        }
        let too_big = |what: String| Err(ServiceError(format!("Validation failed: {what}")));
        if name.len() > MAX_NAME_BYTES || id.len() > MAX_NAME_BYTES {
            return too_big(format!("Name and ID are limited to {MAX_NAME_BYTES} bytes"));
        }
        if tags.len() > MAX_TAGS || tags.iter().any(|t| t.len() > MAX_TAG_BYTES) {
            return too_big(format!(
                "at most {MAX_TAGS} tags of at most {MAX_TAG_BYTES} bytes each"
            ));
        }
        if tagged_addresses.len() > MAX_TAGGED_ADDRESSES {
            return too_big(format!("at most {MAX_TAGGED_ADDRESSES} tagged addresses"));
        }
        if raw_checks.len() > MAX_CHECKS {
            return too_big(format!("at most {MAX_CHECKS} checks per service"));
        }
        let passthrough: usize = extra.values().map(|v| v.to_string().len()).sum();
        if passthrough > MAX_PASSTHROUGH_BYTES {
            return too_big(format!(
                "Proxy, Connect and the other stored-only fields are limited to {MAX_PASSTHROUGH_BYTES} bytes"
            ));
        }
        if is_any_address(&address) {
            return Err(ServiceError("Invalid service address".into()));
        }
        let weights = match weights_in {
            None | Some((0, 0)) => Weights::default(),
            Some((p, w)) => {
                if p < 1 {
                    return Err(ServiceError(
                        "Invalid Weights: Passing must be greater than 0".into(),
                    ));
                }
                if w < 0 {
                    return Err(ServiceError(
                        "Invalid Weights: Warning must be greater or equal than 0".into(),
                    ));
                }
                if p > 65535 || w > 65535 {
                    return Err(ServiceError(
                        "Invalid Weights: DNS Weight must be between 0 and 65535".into(),
                    ));
                }
                Weights {
                    passing: p,
                    warning: w,
                }
            }
        };
        validate_meta(&meta)?;
        if !(0..=65535).contains(&port) {
            return Err(ServiceError(format!(
                "Validation failed: Port must be from 0 to 65535, got {port}"
            )));
        }
        for (k, a) in &tagged_addresses {
            if !(0..=65535).contains(&a.port) {
                return Err(ServiceError(format!(
                    "Validation failed: TaggedAddresses[{k}].Port must be from 0 to 65535"
                )));
            }
        }
        let id = if id.is_empty() { name.clone() } else { id };
        let count = raw_checks.len();
        let mut checks = Vec::with_capacity(count);
        let mut check_bodies = Vec::with_capacity(count);
        let mut n = 0;
        for raw in raw_checks {
            let Some(mut c) = CheckDefinition::decode(raw).map_err(|e| match e {
                CheckError::Decode(m) => decode_failed(m),
                CheckError::Invalid(m) => ServiceError(format!("Invalid check: {m}")),
                CheckError::BadStatus => ServiceError(e.to_string()),
                CheckError::Missing(m) => ServiceError(m),
            })?
            else {
                return Err(ServiceError(
                    "Invalid check: TTL must be > 0 for TTL checks".into(),
                ));
            };
            check_bodies.push(Value::Object(raw.clone()));
            n += 1;
            if c.id.is_empty() {
                c.id = if count == 1 {
                    format!("service:{id}")
                } else {
                    format!("service:{id}:{n}")
                };
            }
            if c.name.is_empty() {
                c.name = format!("Service '{name}' check");
            }
            c.service_id = id.clone();
            checks.push(c);
        }
        Ok(ServiceDefinition {
            kind,
            id,
            name,
            tags,
            address,
            tagged_addresses,
            meta,
            port,
            socket_path,
            weights,
            enable_tag_override,
            extra,
            checks,
            check_bodies,
        })
    }

    /// Consul's `AgentService` object (`/v1/agent/services` values and
    /// `/v1/agent/service/:id` without its `ContentHash`).
    pub fn agent_json(&self, datacenter: &str) -> Value {
        let mut o = json!({
            "ID": self.id,
            "Service": self.name,
            "Tags": self.tags,
            "Meta": self.meta,
            "Port": self.port,
            "Address": self.address,
            "Weights": {"Passing": self.weights.passing, "Warning": self.weights.warning},
            "EnableTagOverride": self.enable_tag_override,
            "Datacenter": datacenter,
        });
        let m = o.as_object_mut().expect("an object");
        if !self.kind.is_empty() {
            m.insert("Kind".into(), json!(self.kind));
        }
        if !self.socket_path.is_empty() {
            m.insert("SocketPath".into(), json!(self.socket_path));
        }
        if !self.tagged_addresses.is_empty() {
            m.insert("TaggedAddresses".into(), json!(self.tagged_addresses));
        }
        for (k, v) in &self.extra {
            m.insert(k.clone(), v.clone());
        }
        o
    }
}

/// `0.0.0.0`, `::` and spellings of them (Consul's `ipaddr.IsAny`).
fn is_any_address(a: &str) -> bool {
    let a = a.trim_start_matches('[').trim_end_matches(']');
    a.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_unspecified())
}

/// Consul's service meta rules and messages.
fn validate_meta(meta: &BTreeMap<String, String>) -> Result<(), ServiceError> {
    let bad = |m: String| Err(ServiceError(format!("Invalid Service Meta: {m}")));
    if meta.len() > META_MAX_PAIRS {
        return bad(format!(
            "Node metadata cannot contain more than {META_MAX_PAIRS} key/value pairs"
        ));
    }
    for (k, v) in meta {
        let why = if k.is_empty() {
            Some("Key cannot be blank".to_string())
        } else if !k
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            Some("Key contains invalid characters".to_string())
        } else if k.len() > META_KEY_MAX {
            Some(format!(
                "Key is too long (limit: {META_KEY_MAX} characters)"
            ))
        } else if k.starts_with("consul-") {
            Some("Key prefix 'consul-' is reserved for internal use".to_string())
        } else if v.len() > META_VALUE_MAX {
            Some(format!(
                "Value is too long (limit: {META_VALUE_MAX} characters)"
            ))
        } else {
            None
        };
        if let Some(why) = why {
            return bad(format!("Couldn't load metadata pair ('{k}', '{v}'): {why}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(v: Value) -> Result<ServiceDefinition, ServiceError> {
        ServiceDefinition::decode(&v)
    }

    #[test]
    fn echo_is_what_was_registered() {
        let body = json!({
            "Name": "Web", "ID": "web-1", "Tags": ["b", "A", "b"], "Port": 8080,
            "Address": "10.0.0.5", "Meta": {"version": "2", "Zone_a": "x"},
            "TaggedAddresses": {"lan": {"Address": "10.0.0.5", "Port": 8080}},
            "EnableTagOverride": true, "Kind": "", "Connect": {"Native": true}
        });
        let d = decode(body).unwrap();
        let e = d.agent_json("dc1");
        assert_eq!(e["ID"], "web-1");
        assert_eq!(e["Service"], "Web");
        assert_eq!(e["Tags"], json!(["b", "A", "b"]));
        assert_eq!(e["Meta"], json!({"version": "2", "Zone_a": "x"}));
        assert_eq!(
            e["TaggedAddresses"]["lan"],
            json!({"Address": "10.0.0.5", "Port": 8080})
        );
        assert_eq!(e["Weights"], json!({"Passing": 1, "Warning": 1}));
        assert_eq!(e["EnableTagOverride"], true);
        assert_eq!(e["Connect"], json!({"Native": true}));
        assert_eq!(e["Datacenter"], "dc1");
        assert!(e.get("Kind").is_none());
        // snake_case spelling decodes to the same definition.
        let snake = decode(json!({
            "name": "Web", "id": "web-1", "tags": ["b", "A", "b"], "port": 8080,
            "address": "10.0.0.5", "meta": {"version": "2", "Zone_a": "x"},
            "tagged_addresses": {"lan": {"address": "10.0.0.5", "port": 8080}},
            "enable_tag_override": true, "connect": {"Native": true}
        }))
        .unwrap();
        assert_eq!(snake, d);
        // No tags: [], no meta: {}.
        let e = decode(json!({"Name": "x"})).unwrap().agent_json("dc1");
        assert_eq!(e["Tags"], json!([]));
        assert_eq!(e["Meta"], json!({}));
        assert_eq!(e["ID"], "x");
    }

    #[test]
    fn validation_in_consuls_order_and_words() {
        let e = |v| decode(v).unwrap_err().0;
        assert_eq!(e(json!({"Address": "0.0.0.0"})), "Missing service name");
        assert_eq!(
            e(json!({"Name": "a", "Address": "0.0.0.0"})),
            "Invalid service address"
        );
        assert_eq!(
            e(json!({"Name": "a", "Address": "::"})),
            "Invalid service address"
        );
        assert_eq!(
            e(json!({"Name": "a", "Weights": {"Passing": -1, "Warning": 1}})),
            "Invalid Weights: Passing must be greater than 0"
        );
        assert_eq!(
            e(json!({"Name": "a", "Weights": {"Passing": 1, "Warning": -1}})),
            "Invalid Weights: Warning must be greater or equal than 0"
        );
        assert!(
            e(json!({"Name": "a", "Meta": {"consul-x": "1"}}))
                .starts_with("Invalid Service Meta: ")
        );
        assert!(
            e(json!({"Name": "a", "Meta": {"a b": "1"}}))
                .contains("Key contains invalid characters")
        );
        assert!(e(json!({"Name": "a", "Port": "80"})).starts_with("Request decode failed: "));
        assert!(e(json!({"Name": "a", "Port": 70000})).starts_with("Validation failed: "));
        assert_eq!(
            e(json!({"Name": "a", "Check": {"TCP": "x:1"}})),
            "Invalid check: Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or OSService checks"
        );
        assert!(e(json!([1])).starts_with("Request decode failed: "));
        let many: Map<String, Value> = (0..65).map(|i| (format!("k{i}"), json!("v"))).collect();
        assert!(e(json!({"Name": "a", "Meta": many})).contains("more than 64"));
        let tags: Vec<String> = (0..300).map(|i| format!("t{i}")).collect();
        assert!(
            e(json!({"Name": "a", "Tags": tags}))
                .starts_with("Validation failed: at most 256 tags")
        );
        assert!(
            e(json!({"Name": "a", "Connect": {"x": "y".repeat(20_000)}}))
                .starts_with("Validation failed")
        );
    }

    #[test]
    fn check_ids_and_names_as_consul_fills_them() {
        let d = decode(json!({"Name": "web", "ID": "w1",
            "Check": {"TTL": "10s"}}))
        .unwrap();
        assert_eq!(d.checks[0].id, "service:w1");
        assert_eq!(d.checks[0].name, "Service 'web' check");
        assert_eq!(d.checks[0].service_id, "w1");
        let d = decode(json!({"Name": "web", "Check": {}, "Checks": [
            {"TTL": "10s"}, {"CheckID": "mine", "Name": "n", "TTL": "5s"}]}))
        .unwrap();
        let ids: Vec<&str> = d.checks.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["service:web:1", "mine"]);
        // An empty entry of Checks is validated (and refused), as Consul.
        assert_eq!(
            decode(json!({"Name": "web", "Checks": [{}]}))
                .unwrap_err()
                .0,
            "Invalid check: TTL must be > 0 for TTL checks"
        );
    }
}
