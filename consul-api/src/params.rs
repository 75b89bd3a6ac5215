//! Query parameters of the Consul-compatible routes, parsed as Consul does.
//!
//! Repeatable keys (`tag`, `node-meta`) keep every value. Booleans
//! (`passing`) accept Consul's spellings: present without a value, or one of
//! Go's `strconv.ParseBool` words. `wait` uses Consul's duration syntax
//! (default 5 m, at most 10 m); `index` is an unsigned integer. Anything
//! malformed is a 400 with Consul's message; unknown keys are ignored, as
//! Consul does (`stale`, `consistent`, `cached`, `ns`... are accepted: every
//! read here is local).

use std::time::Duration;

/// Default blocking wait.
pub(crate) const DEFAULT_WAIT: Duration = Duration::from_secs(300);
/// Longest blocking wait.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(600);

#[derive(Debug, Default, Clone)]
pub(crate) struct Params {
    pub dc: Option<String>,
    pub tags: Vec<String>,
    pub node_meta: Vec<(String, String)>,
    pub passing: bool,
    pub filter: Option<String>,
    pub near: Option<String>,
    pub index: Option<u64>,
    pub wait: Duration,
    pub pretty: bool,
    pub token: Option<String>,
}

fn parse_bool(key: &str, v: &str) -> Result<bool, String> {
    match v {
        "" | "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        other => Err(format!(
            "Invalid value for {key}: {other:?} is not a boolean"
        )),
    }
}

impl Params {
    /// Parses a raw query string.
    pub(crate) fn parse(query: Option<&str>) -> Result<Params, String> {
        let mut p = Params {
            wait: DEFAULT_WAIT,
            ..Params::default()
        };
        let Some(q) = query else {
            return Ok(p);
        };
        for (k, v) in form_urlencoded::parse(q.as_bytes()) {
            match &*k {
                "dc" if !v.is_empty() => p.dc = Some(v.into_owned()),
                "tag" => p.tags.push(v.into_owned()),
                "node-meta" => {
                    let (key, value) = v
                        .split_once(':')
                        .ok_or_else(|| format!("Invalid node-meta {v:?}: expected key:value"))?;
                    p.node_meta.push((key.to_string(), value.to_string()));
                }
                "passing" => p.passing = parse_bool("passing", &v)?,
                "filter" if !v.is_empty() => p.filter = Some(v.into_owned()),
                "near" if !v.is_empty() => p.near = Some(v.into_owned()),
                "index" if !v.is_empty() => {
                    p.index = Some(v.parse().map_err(|_| format!("Invalid index {v:?}"))?)
                }
                "wait" if !v.is_empty() => {
                    let w = crate::duration::parse(&v)
                        .ok_or_else(|| format!("Invalid wait time {v:?}"))?;
                    // As Consul: no wait means the default one.
                    p.wait = if w.is_zero() {
                        DEFAULT_WAIT
                    } else {
                        w.min(MAX_WAIT)
                    };
                }
                "pretty" => p.pretty = parse_bool("pretty", &v).unwrap_or(true),
                "token" if !v.is_empty() => p.token = Some(v.into_owned()),
                _ => {}
            }
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consul_spellings_parse() {
        let p = Params::parse(Some(
            "passing&tag=a&tag=b&node-meta=env:prod&wait=60000ms&index=7",
        ))
        .unwrap();
        assert!(p.passing);
        assert_eq!(p.tags, vec!["a", "b"]);
        assert_eq!(p.node_meta, vec![("env".to_string(), "prod".to_string())]);
        assert_eq!(p.wait, Duration::from_secs(60));
        assert_eq!(p.index, Some(7));
        assert!(Params::parse(Some("passing=1")).unwrap().passing);
        assert!(!Params::parse(Some("passing=false")).unwrap().passing);
        assert_eq!(Params::parse(Some("wait=1h")).unwrap().wait, MAX_WAIT);
        assert_eq!(Params::parse(Some("wait=0s")).unwrap().wait, DEFAULT_WAIT);
        assert_eq!(Params::parse(None).unwrap().wait, DEFAULT_WAIT);
        assert!(Params::parse(Some("stale&consistent&cached&ns=default")).is_ok());
        for bad in [
            "wait=10",
            "wait=abc",
            "index=-1",
            "index=x",
            "passing=maybe",
            "node-meta=nocolon",
        ] {
            assert!(Params::parse(Some(bad)).is_err(), "{bad}");
        }
    }
}
