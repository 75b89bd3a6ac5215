//! A check definition in Consul's format (`PUT /v1/agent/check/register`,
//! a service's `Check`/`Checks`, service definition files), decoded into a
//! typed [`CheckDefinition`] and validated with Consul's messages.

use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::fields::Fields;
use crate::output;
use crate::status::Status;

/// Consul's minimum interval; shorter ones run at this rate.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Default probe timeout (HTTP, TCP, UDP, gRPC, H2PING).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default timeout of script and OS service checks.
pub const DEFAULT_SCRIPT_TIMEOUT: Duration = Duration::from_secs(30);
/// Shortest `DeregisterCriticalServiceAfter` honoured (shorter ones wait this).
pub const MIN_DEREGISTER_AFTER: Duration = Duration::from_secs(60);
/// Longest probe timeout.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest interval, TTL or deregistration delay honoured (longer ones are
/// cut to this: the runner's timer queue holds at most about two years).
pub const MAX_PERIOD: Duration = Duration::from_secs(365 * 86_400);

/// An HTTP check's request.
#[derive(Clone, Debug, PartialEq)]
pub struct Http {
    pub url: String,
    pub method: String,
    /// Header names with their values, in the order given.
    pub headers: Vec<(String, Vec<String>)>,
    pub body: String,
    pub disable_redirects: bool,
    /// The request parsed once, on the first probe (not part of the
    /// definition: equal whatever it holds).
    pub prepared: crate::net::Prepared,
}

/// What a check probes.
#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    Grpc {
        target: String,
        use_tls: bool,
    },
    Http(Http),
    Ttl {
        ttl: Duration,
    },
    Tcp {
        addr: String,
        use_tls: bool,
    },
    Udp {
        addr: String,
    },
    /// Mirrors a service's health (by ID), on `node` or this agent.
    Alias {
        service: String,
        node: String,
    },
    Docker {
        container: String,
        shell: String,
        args: Vec<String>,
    },
    Script {
        args: Vec<String>,
    },
    H2Ping {
        addr: String,
        use_tls: bool,
    },
    OsService {
        name: String,
    },
}

impl Kind {
    /// The stored `Type`, as Consul names it.
    pub fn type_name(&self) -> &'static str {
        match self {
            Kind::Grpc { .. } => "grpc",
            Kind::Http(_) => "http",
            Kind::Ttl { .. } => "ttl",
            Kind::Tcp { .. } => "tcp",
            Kind::Udp { .. } => "udp",
            Kind::Alias { .. } => "alias",
            Kind::Docker { .. } => "docker",
            Kind::Script { .. } => "script",
            Kind::H2Ping { .. } => "h2ping",
            Kind::OsService { .. } => "os_service",
        }
    }

    /// Whether the agent probes it on an interval (not TTL or alias).
    pub fn is_probed(&self) -> bool {
        !matches!(self, Kind::Ttl { .. } | Kind::Alias { .. })
    }

    /// Whether it runs a program on this host (script or Docker).
    pub fn runs_programs(&self) -> bool {
        matches!(self, Kind::Script { .. } | Kind::Docker { .. })
    }
}

/// A decoded check.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckDefinition {
    pub id: String,
    pub name: String,
    pub notes: String,
    pub service_id: String,
    pub kind: Kind,
    pub interval: Duration,
    pub timeout: Option<Duration>,
    /// The status it starts with (`None`: critical, as Consul).
    pub initial_status: Option<Status>,
    pub success_before_passing: u32,
    pub failures_before_warning: Option<u32>,
    pub failures_before_critical: u32,
    pub deregister_critical_after: Option<Duration>,
    pub output_max_size: usize,
    pub tls_server_name: String,
    pub tls_skip_verify: bool,
}

/// Why a check body was refused; the text is Consul's where Consul has one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    /// Not decodable (wrong types): Consul's `Request decode failed: …`.
    #[error("{0}")]
    Decode(String),
    /// Decoded but invalid: Consul's `Invalid check: …`.
    #[error("{0}")]
    Invalid(String),
    /// `Missing check name` and the like (Consul's plain 400s).
    #[error("{0}")]
    Missing(String),
    /// A `Status` that is not passing, warning or critical.
    #[error("Status for checks must 'passing', 'warning', 'critical'")]
    BadStatus,
}

/// How many threshold counts a definition may ask for.
const MAX_THRESHOLD: u64 = 1_000_000;

impl CheckDefinition {
    /// Decodes a check object. `service` gives the owning service's ID when
    /// the check is part of a service definition (its `ServiceID` then).
    /// `Ok(None)`: an empty check (no kind at all, which Consul drops).
    pub fn decode(obj: &Map<String, Value>) -> Result<Option<CheckDefinition>, CheckError> {
        let f = Fields::new(obj);
        let d = CheckError::Decode;
        let s = |names: &[&str]| f.string_or_empty(names).map_err(d);
        let args = f
            .string_list(&["args", "scriptargs"])
            .map_err(d)?
            .unwrap_or_default();
        let http = s(&["http"])?;
        let tcp = s(&["tcp"])?;
        let udp = s(&["udp"])?;
        let grpc = s(&["grpc"])?;
        let h2ping = s(&["h2ping"])?;
        let os_service = s(&["osservice"])?;
        let alias_service = s(&["aliasservice"])?;
        let alias_node = s(&["aliasnode"])?;
        let docker = s(&["dockercontainerid"])?;
        let ttl = f.duration(&["ttl"]).map_err(d)?.unwrap_or_default();
        let interval = f.duration(&["interval"]).map_err(d)?.unwrap_or_default();
        let timeout = f
            .duration(&["timeout"])
            .map_err(d)?
            .filter(|t| !t.is_zero());
        let mut headers = Vec::new();
        if let Some(h) = f.object(&["header"]).map_err(d)? {
            for (k, v) in h {
                let values = match v {
                    Value::Array(items) => items
                        .iter()
                        .map(|i| i.as_str().map(str::to_string))
                        .collect::<Option<Vec<_>>>(),
                    Value::String(one) => Some(vec![one.clone()]),
                    _ => None,
                }
                .ok_or_else(|| d(format!("Header: {k:?} needs a list of strings")))?;
                headers.push((k.clone(), values));
            }
        }
        let use_tls =
            |names: &[&str], default: bool| f.bool(names).map(|b| b.unwrap_or(default)).map_err(d);
        // Consul's order for the stored type: grpc, http, ttl, tcp, udp,
        // alias, docker, script, h2ping, os_service.
        let kind = if !grpc.is_empty() {
            Kind::Grpc {
                target: grpc,
                use_tls: use_tls(&["grpcusetls"], false)?,
            }
        } else if !http.is_empty() {
            Kind::Http(Http {
                url: http,
                method: f
                    .string(&["method"])
                    .map_err(d)?
                    .filter(|m| !m.is_empty())
                    .unwrap_or_else(|| "GET".into()),
                headers,
                body: s(&["body"])?,
                disable_redirects: use_tls(&["disableredirects"], false)?,
                prepared: Default::default(),
            })
        } else if !ttl.is_zero() {
            Kind::Ttl { ttl }
        } else if !tcp.is_empty() {
            Kind::Tcp {
                addr: tcp,
                use_tls: use_tls(&["tcpusetls"], false)?,
            }
        } else if !udp.is_empty() {
            Kind::Udp { addr: udp }
        } else if !alias_service.is_empty() {
            Kind::Alias {
                service: alias_service,
                node: alias_node,
            }
        } else if !docker.is_empty() {
            Kind::Docker {
                container: docker,
                shell: s(&["shell"])?,
                args,
            }
        } else if !args.is_empty() {
            Kind::Script { args }
        } else if !h2ping.is_empty() {
            Kind::H2Ping {
                addr: h2ping,
                use_tls: use_tls(&["h2pingusetls"], true)?,
            }
        } else if !os_service.is_empty() {
            Kind::OsService { name: os_service }
        } else {
            let named = ["name", "id", "checkid", "interval"]
                .iter()
                .any(|n| f.get(&[n]).is_some());
            if !named {
                return Ok(None);
            }
            // A check with a name but nothing to run: Consul's message for it.
            return Err(CheckError::Invalid("TTL must be > 0 for TTL checks".into()));
        };
        let status = match f.string(&["status"]).map_err(d)? {
            None => None,
            Some(t) if t.is_empty() => None,
            Some(t) => Some(Status::parse(&t).ok_or(CheckError::BadStatus)?),
        };
        let count = |names: &[&str]| -> Result<Option<u32>, CheckError> {
            Ok(f.uint(names, MAX_THRESHOLD).map_err(d)?.map(|v| v as u32))
        };
        let def = CheckDefinition {
            id: s(&["id", "checkid"])?,
            name: s(&["name"])?,
            notes: s(&["notes"])?,
            service_id: s(&["serviceid"])?,
            interval,
            timeout,
            initial_status: status,
            success_before_passing: count(&["successbeforepassing"])?.unwrap_or(0),
            // 0 is Consul's "unset": the same as FailuresBeforeCritical.
            failures_before_warning: count(&["failuresbeforewarning"])?.filter(|n| *n > 0),
            failures_before_critical: count(&["failuresbeforecritical"])?.unwrap_or(0),
            deregister_critical_after: f
                .duration(&["deregistercriticalserviceafter"])
                .map_err(d)?
                .filter(|t| !t.is_zero()),
            // Lowers the agent-wide cap (4 KiB, as Consul's
            // check_output_max_size), never raises it.
            output_max_size: f
                .uint(&["outputmaxsize"], u64::MAX)
                .map_err(d)?
                .filter(|v| *v > 0)
                .map_or(output::DEFAULT_MAX, |v| {
                    (v as usize).min(output::DEFAULT_MAX)
                }),
            tls_server_name: s(&["tlsservername"])?,
            tls_skip_verify: use_tls(&["tlsskipverify"], false)?,
            kind,
        };
        // Interval and TTL together (the kind took the TTL only when no
        // interval kind was given, so check the raw fields).
        if !interval.is_zero() && !ttl.is_zero() {
            return Err(CheckError::Invalid(
                "Interval and TTL cannot both be specified".into(),
            ));
        }
        def.validate()?;
        Ok(Some(def))
    }

    /// Consul's `CheckType.Validate` rules, its messages.
    pub fn validate(&self) -> Result<(), CheckError> {
        let invalid = |m: &str| Err(CheckError::Invalid(m.to_string()));
        match &self.kind {
            Kind::Ttl { .. } if !self.interval.is_zero() => {
                invalid("Interval and TTL cannot both be specified")
            }
            Kind::Alias { .. } if !self.interval.is_zero() => {
                invalid("Interval cannot be set for Alias checks")
            }
            k if k.is_probed() && self.interval.is_zero() => invalid(
                "Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or OSService checks",
            ),
            _ => Ok(()),
        }
    }

    /// The interval the runner uses (from [`MIN_INTERVAL`] to [`MAX_PERIOD`]).
    pub fn effective_interval(&self) -> Duration {
        self.interval.clamp(MIN_INTERVAL, MAX_PERIOD)
    }

    /// The probe timeout the runner uses: the given one or Consul's
    /// default, but never longer than the interval (a probe cannot outlive
    /// its next run) nor [`MAX_TIMEOUT`] (a slot of the shared probe pool is
    /// held that long at most).
    pub fn effective_timeout(&self) -> Duration {
        let t = self.timeout.unwrap_or(match self.kind {
            Kind::Script { .. } | Kind::Docker { .. } | Kind::OsService { .. } => {
                DEFAULT_SCRIPT_TIMEOUT
            }
            _ => DEFAULT_TIMEOUT,
        });
        t.min(self.effective_interval()).min(MAX_TIMEOUT)
    }

    /// Consul's `Definition` object of a health check (`/v1/agent/checks`).
    pub fn definition_json(&self) -> Value {
        let dur = |d: Option<Duration>| crate::duration::format(d.unwrap_or_default());
        let mut out = json!({
            "Interval": dur(Some(self.interval)),
            "Timeout": dur(self.timeout),
            "DeregisterCriticalServiceAfter": dur(self.deregister_critical_after),
            "HTTP": "", "Header": null, "Method": "", "Body": "",
            "TLSServerName": self.tls_server_name, "TLSSkipVerify": self.tls_skip_verify,
            "TCP": "", "TCPUseTLS": false, "UDP": "", "GRPC": "", "GRPCUseTLS": false,
            "OSService": "", "H2PING": "", "H2PingUseTLS": false,
        });
        let o = out.as_object_mut().expect("an object");
        match &self.kind {
            Kind::Http(h) => {
                o.insert("HTTP".into(), json!(h.url));
                o.insert("Method".into(), json!(h.method));
                o.insert("Body".into(), json!(h.body));
                if !h.headers.is_empty() {
                    let m: Map<String, Value> = h
                        .headers
                        .iter()
                        .map(|(k, v)| (k.clone(), json!(v)))
                        .collect();
                    o.insert("Header".into(), Value::Object(m));
                }
            }
            Kind::Tcp { addr, use_tls } => {
                o.insert("TCP".into(), json!(addr));
                o.insert("TCPUseTLS".into(), json!(use_tls));
            }
            Kind::Udp { addr } => {
                o.insert("UDP".into(), json!(addr));
            }
            Kind::Grpc { target, use_tls } => {
                o.insert("GRPC".into(), json!(target));
                o.insert("GRPCUseTLS".into(), json!(use_tls));
            }
            Kind::H2Ping { addr, use_tls } => {
                o.insert("H2PING".into(), json!(addr));
                o.insert("H2PingUseTLS".into(), json!(use_tls));
            }
            Kind::OsService { name } => {
                o.insert("OSService".into(), json!(name));
            }
            Kind::Script { args } | Kind::Docker { args, .. } => {
                o.insert("ScriptArgs".into(), json!(args));
            }
            Kind::Ttl { .. } | Kind::Alias { .. } => {}
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(v: Value) -> Result<Option<CheckDefinition>, CheckError> {
        CheckDefinition::decode(v.as_object().unwrap())
    }

    #[test]
    fn kinds_in_consuls_order_with_defaults() {
        let c = decode(json!({"Name": "web", "HTTP": "http://x/", "Interval": "10s"}))
            .unwrap()
            .unwrap();
        assert_eq!(c.kind.type_name(), "http");
        assert!(matches!(&c.kind, Kind::Http(h) if h.method == "GET"));
        assert_eq!(c.effective_timeout(), DEFAULT_TIMEOUT);
        let c = decode(json!({"name": "t", "ttl": 30_000_000_000u64}))
            .unwrap()
            .unwrap();
        assert_eq!(
            c.kind,
            Kind::Ttl {
                ttl: Duration::from_secs(30)
            }
        );
        // gRPC wins over HTTP when both are given, as Consul's type order.
        let c = decode(json!({"Name": "g", "GRPC": "a:1", "HTTP": "http://x", "Interval": "1s"}))
            .unwrap()
            .unwrap();
        assert_eq!(c.kind.type_name(), "grpc");
        let c = decode(json!({"Name": "h", "H2PING": "a:1", "Interval": "1s"}))
            .unwrap()
            .unwrap();
        assert_eq!(
            c.kind,
            Kind::H2Ping {
                addr: "a:1".into(),
                use_tls: true
            }
        );
        assert_eq!(decode(json!({})).unwrap(), None);
    }

    #[test]
    fn consuls_validation_messages() {
        let e = |v| decode(v).unwrap_err().to_string();
        assert_eq!(
            e(json!({"Name": "x", "TCP": "a:1"})),
            "Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or OSService checks"
        );
        assert_eq!(
            e(json!({"Name": "x", "TTL": "10s", "Interval": "10s"})),
            "Interval and TTL cannot both be specified"
        );
        assert_eq!(e(json!({"Name": "x"})), "TTL must be > 0 for TTL checks");
        assert_eq!(
            e(json!({"Name": "x", "TTL": "1s", "Status": "ok"})),
            "Status for checks must 'passing', 'warning', 'critical'"
        );
        assert!(matches!(
            decode(json!({"Name": "x", "TTL": "soon"})),
            Err(CheckError::Decode(_))
        ));
        assert!(matches!(
            decode(json!({"Name": "x", "TTL": "1s", "SuccessBeforePassing": -1})),
            Err(CheckError::Decode(_))
        ));
    }

    #[test]
    fn caps_as_consul_and_bounded_timeouts() {
        let c = decode(json!({"Name": "t", "TTL": "1s", "OutputMaxSize": 1_000_000,
            "FailuresBeforeWarning": 0, "FailuresBeforeCritical": 5}))
        .unwrap()
        .unwrap();
        assert_eq!(
            c.output_max_size, 4096,
            "a check may lower the cap, not raise it"
        );
        assert_eq!(c.failures_before_warning, None, "0 means unset");
        let c =
            decode(json!({"Name": "h", "HTTP": "http://x/", "Interval": "5s", "Timeout": "1h"}))
                .unwrap()
                .unwrap();
        assert_eq!(
            c.effective_timeout(),
            Duration::from_secs(5),
            "never past the interval"
        );
        let c =
            decode(json!({"Name": "h", "HTTP": "http://x/", "Interval": "24h", "Timeout": "1h"}))
                .unwrap()
                .unwrap();
        assert_eq!(c.effective_timeout(), MAX_TIMEOUT);
    }

    #[test]
    fn definition_echoes_go_durations() {
        let c = decode(
            json!({"Name": "w", "HTTP": "http://x/", "Interval": "1m30s",
            "Header": {"Host": ["a"]}}),
        )
        .unwrap()
        .unwrap();
        let d = c.definition_json();
        assert_eq!(d["Interval"], "1m30s");
        assert_eq!(d["Timeout"], "0s");
        assert_eq!(d["Header"]["Host"][0], "a");
    }
}
