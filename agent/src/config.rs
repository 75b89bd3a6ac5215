//! The agent's TOML configuration (reference chapter "Configuration").
//!
//! Every section and key of the reference is parsed into typed values
//! (addresses, paths, durations) even where a later feature gives it meaning
//! (`[gossip]` for the cluster, `[consul]` for the bridge). Unknown sections
//! and keys, and values of the wrong type, fail at start with the file, the
//! key and the reason. Defaults are documented on each field.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Where the agent looks when `-c` is not given.
pub(crate) const DEFAULT_CONFIG_PATH: &str = "/etc/corrosion/config.toml";

/// The embedded default used when no config file exists: data under
/// `./corrosion-data`, schema files from `./corrosion-data/schema`.
pub(crate) const EMBEDDED_DEFAULT: &str = r#"
[db]
path = "./corrosion-data/state.db"
schema_paths = ["./corrosion-data/schema"]

[gossip]
addr = "127.0.0.1:8787"
plaintext = true

[api]
addr = "127.0.0.1:8080"

[admin]
path = "./corrosion-data/admin.sock"

[dns]
addr = "127.0.0.1:8600"
"#;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    pub db: DbConfig,
    pub gossip: GossipConfig,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub subscriptions: SubscriptionsConfig,
    #[serde(default)]
    pub consul: ConsulConfig,
    /// The DNS responder (off without a `[dns]` section; on in the
    /// embedded default).
    pub dns: Option<DnsConfig>,
    /// Templates the agent keeps rendered (`[[template]]` blocks).
    #[serde(default)]
    pub template: Vec<TemplateConfig>,
    /// Native registration and the checks the agent runs.
    #[serde(default)]
    pub services: ServicesConfig,
    /// The web UI at `/ui/`.
    #[serde(default)]
    pub ui: UiConfig,
}

/// `[ui]`: the web UI every agent serves at `/ui/` on the API listener
/// (and on `[consul] http_addr`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UiConfig {
    /// Serve it (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Most live-update requests held open at once (default 1024); more
    /// are answered at once and those browsers poll once a second.
    #[serde(default = "default_ui_max_held")]
    pub max_held: usize,
}

fn default_ui_max_held() -> usize {
    1024
}

impl Default for UiConfig {
    fn default() -> Self {
        UiConfig {
            enabled: true,
            max_held: default_ui_max_held(),
        }
    }
}

/// `[services]`: this host's services registered with the agent itself
/// (Consul's agent API) and the health checks it runs for them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServicesConfig {
    /// Service definition files (Consul's JSON or HCL format): directories
    /// (their `*.json` and `*.hcl` files) or files, loaded at start and on
    /// SIGHUP / `corrosion reload`.
    #[serde(default)]
    pub paths: Vec<PathBuf>,
    /// Script (`args`) checks registered through the API or files
    /// (Consul's `enable_script_checks`; off: any local process could run
    /// programs as the agent's user).
    #[serde(default)]
    pub enable_script_checks: bool,
    /// Script checks from service definition files only (Consul's
    /// `enable_local_script_checks`).
    #[serde(default)]
    pub enable_local_script_checks: bool,
    /// Longest wait before an output-only check change is replicated
    /// (Consul's `check_update_interval`, 5 m); status changes go at once.
    #[serde(
        default = "default_check_update_interval",
        deserialize_with = "crate::consul::duration::deserialize"
    )]
    pub check_update_interval: std::time::Duration,
    /// Check probes in flight at once.
    #[serde(default = "default_max_concurrent_probes")]
    pub max_concurrent_probes: usize,
    /// Most services registered natively on this agent.
    #[serde(default = "default_max_services")]
    pub max_services: usize,
    /// Most checks the agent runs.
    #[serde(default = "default_max_checks")]
    pub max_checks: usize,
}

impl Default for ServicesConfig {
    fn default() -> Self {
        ServicesConfig {
            paths: Vec::new(),
            enable_script_checks: false,
            enable_local_script_checks: false,
            check_update_interval: default_check_update_interval(),
            max_concurrent_probes: default_max_concurrent_probes(),
            max_services: default_max_services(),
            max_checks: default_max_checks(),
        }
    }
}

fn default_check_update_interval() -> std::time::Duration {
    std::time::Duration::from_secs(300)
}

fn default_max_concurrent_probes() -> usize {
    512
}

fn default_max_services() -> usize {
    10_000
}

fn default_max_checks() -> usize {
    50_000
}

/// `[[template]]`: a template the agent renders itself (the same as
/// `corrosion template source:destination:command`, with more options).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TemplateConfig {
    /// The template file (`.rhai`).
    pub source: PathBuf,
    /// The file rendered.
    pub destination: PathBuf,
    /// Run through `sh -c` after the destination changed.
    #[serde(default)]
    pub command: Option<String>,
    /// Mode of the destination, octal in a string (`"0640"`) or a number;
    /// default: keep the existing mode (0644 for a new file).
    #[serde(default, deserialize_with = "deserialize_perms")]
    pub perms: Option<u32>,
    /// Copy the previous destination to `<destination>.bak` (default false).
    #[serde(default)]
    pub backup: bool,
    /// Quiescence wait `"min"` or `"min:max"` (default "100ms", max 4×min).
    #[serde(default, deserialize_with = "deserialize_wait")]
    pub wait: Option<corro_templates::Wait>,
    /// How long the command may run (default "30s").
    #[serde(
        default = "default_command_timeout",
        deserialize_with = "crate::consul::duration::deserialize"
    )]
    pub command_timeout: std::time::Duration,
}

impl TemplateConfig {
    pub(crate) fn spec(&self) -> corro_templates::Spec {
        let mut spec = corro_templates::Spec::new(&self.source, &self.destination);
        spec.command = self.command.clone();
        spec.perms = self.perms;
        spec.backup = self.backup;
        spec.wait = self.wait.unwrap_or_default();
        spec.command_timeout = self.command_timeout;
        spec
    }
}

fn default_command_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(30)
}

fn deserialize_perms<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Perms {
        Text(String),
        Number(u32),
    }
    let mode = match Perms::deserialize(d)? {
        Perms::Text(t) => {
            u32::from_str_radix(t.trim().trim_start_matches("0o"), 8).map_err(|_| {
                serde::de::Error::custom(format!("perms {t:?} is not an octal mode like \"0644\""))
            })?
        }
        Perms::Number(n) => n,
    };
    if mode > 0o7777 {
        return Err(serde::de::Error::custom(format!(
            "perms {mode:o} is not a file mode (at most 7777 octal)"
        )));
    }
    Ok(Some(mode))
}

fn deserialize_wait<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<corro_templates::Wait>, D::Error> {
    let text = String::deserialize(d)?;
    corro_templates::Wait::parse(&text, crate::consul::duration::parse)
        .map(Some)
        .ok_or_else(|| {
            serde::de::Error::custom(format!(
                "wait {text:?} is not \"min\" or \"min:max\" with durations like \"100ms\" (max >= min)"
            ))
        })
}

/// `[subscriptions]`: where subscriptions live and how long their change
/// logs and idle subscriptions are kept (not in the reference; defaults keep
/// at least a day or 100,000 changes of history).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubscriptionsConfig {
    /// Directory of subscription files (default: `subscriptions` next to
    /// the database).
    pub path: Option<PathBuf>,
    /// A logged change is purged only when it is beyond this many newest
    /// changes...
    #[serde(default = "default_log_changes")]
    pub log_max_changes: u64,
    /// ...and older than this...
    #[serde(default = "default_log_age")]
    pub log_max_age_secs: u64,
    /// ...but a log over this many bytes loses its oldest changes whatever
    /// their age.
    #[serde(default = "default_log_bytes")]
    pub log_max_bytes: u64,
    /// Subscriptions without listeners for this long are removed.
    #[serde(default = "default_idle_expiry")]
    pub idle_expiry_secs: u64,
    /// Changes a client may fall behind before it is disconnected.
    #[serde(default = "default_listener_buffer")]
    pub listener_buffer: usize,
}

fn default_log_changes() -> u64 {
    100_000
}
fn default_log_age() -> u64 {
    24 * 3600
}
fn default_log_bytes() -> u64 {
    64 << 20
}
fn default_idle_expiry() -> u64 {
    15 * 60
}
fn default_listener_buffer() -> usize {
    10_000
}

impl Default for SubscriptionsConfig {
    fn default() -> Self {
        SubscriptionsConfig {
            path: None,
            log_max_changes: default_log_changes(),
            log_max_age_secs: default_log_age(),
            log_max_bytes: default_log_bytes(),
            idle_expiry_secs: default_idle_expiry(),
            listener_buffer: default_listener_buffer(),
        }
    }
}

impl Config {
    /// Where subscription files live.
    pub(crate) fn subscriptions_dir(&self) -> PathBuf {
        self.subscriptions.path.clone().unwrap_or_else(|| {
            self.db.path.parent().map_or_else(
                || PathBuf::from("subscriptions"),
                |d| d.join("subscriptions"),
            )
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DbConfig {
    /// Path of the SQLite database (required).
    pub path: PathBuf,
    /// Schema files, or directories whose `*.sql` files are all loaded.
    #[serde(default)]
    pub schema_paths: Vec<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GossipConfig {
    /// UDP address the QUIC endpoint binds (required).
    pub addr: SocketAddr,
    /// Address advertised to peers (default: `addr`).
    pub external_addr: Option<SocketAddr>,
    /// Peers to join through: `host:port`, or `host:port@dns-server:port`.
    #[serde(default)]
    pub bootstrap: Vec<String>,
    /// QUIC without encryption (toy clusters, or a network that encrypts).
    #[serde(default)]
    pub plaintext: bool,
    /// Upper bound for QUIC's path MTU.
    pub max_mtu: Option<u16>,
    /// Idle timeout of QUIC connections (default 30 s).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_secs: u64,
    /// Skip generic segmentation offload.
    #[serde(default)]
    pub disable_gso: bool,
    pub tls: Option<TlsConfig>,
}

fn default_idle_timeout() -> u64 {
    30
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub ca_file: Option<PathBuf>,
    /// Do not check the peer certificate's authority.
    #[serde(default)]
    pub insecure: bool,
    /// Client certificate for mutual TLS.
    pub client: Option<TlsClientConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsClientConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApiConfig {
    /// HTTP API listener (default 127.0.0.1:8080).
    #[serde(default = "default_api_addr")]
    pub addr: SocketAddr,
    #[serde(default)]
    pub authz: AuthzConfig,
    /// PostgreSQL wire protocol listener (not served yet).
    #[expect(
        dead_code,
        reason = "parsed now; the PostgreSQL listener is a later stage"
    )]
    pub pg: Option<PgConfig>,
    /// Largest request body accepted (default 8 MiB); larger gets 413.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Most statements in one transaction (default 1000); more gets 413.
    #[serde(default = "default_max_statements")]
    pub max_statements: usize,
    /// Most rows one transaction may change (default 100,000); more gets 413.
    #[serde(default = "default_max_changes")]
    pub max_changes: usize,
    /// Default query timeout in seconds (default 30); `?timeout=` overrides.
    #[serde(default = "default_query_timeout")]
    pub query_timeout_secs: f64,
    /// Open connections from one client address (default 1000); more are
    /// answered 429.
    #[serde(default = "default_max_conns_per_client")]
    pub max_conns_per_client: usize,
    /// Open connections in total (default 16384); more are answered 429.
    #[serde(default = "default_max_conns")]
    pub max_conns: usize,
    /// Seconds a request head may take to arrive, which is also how long
    /// an idle keep-alive connection stays open (default 30).
    #[serde(default = "default_header_timeout")]
    pub header_timeout_secs: u64,
    /// Bytes of `POST /v1/queries` answers kept until the next write
    /// (default 16 MiB; 0 keeps none). Read at start.
    #[serde(default = "default_query_cache")]
    pub cache_max_bytes: u64,
}

fn default_query_cache() -> u64 {
    16 << 20
}

fn default_max_conns_per_client() -> usize {
    1000
}
fn default_max_conns() -> usize {
    16384
}
fn default_header_timeout() -> u64 {
    30
}

fn default_api_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_max_body() -> usize {
    8 * 1024 * 1024
}
fn default_max_statements() -> usize {
    1000
}
fn default_max_changes() -> usize {
    100_000
}
fn default_query_timeout() -> f64 {
    30.0
}

/// Longest query timeout accepted, in the config and in `?timeout=`.
pub(crate) const MAX_QUERY_TIMEOUT_SECS: f64 = 86_400.0;

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            addr: default_api_addr(),
            authz: AuthzConfig::default(),
            pg: None,
            max_body_bytes: default_max_body(),
            max_statements: default_max_statements(),
            max_changes: default_max_changes(),
            query_timeout_secs: default_query_timeout(),
            max_conns_per_client: default_max_conns_per_client(),
            max_conns: default_max_conns(),
            header_timeout_secs: default_header_timeout(),
            cache_max_bytes: default_query_cache(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuthzConfig {
    /// Every API request must send `Authorization: Bearer <token>`.
    #[serde(rename = "bearer-token")]
    pub bearer_token: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[expect(
    dead_code,
    reason = "parsed now; the PostgreSQL listener is a later stage"
)]
pub(crate) struct PgConfig {
    pub addr: SocketAddr,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AdminConfig {
    /// Unix socket of the admin interface (default /var/run/corrosion/admin.sock).
    #[serde(default = "default_admin_path")]
    pub path: PathBuf,
}

fn default_admin_path() -> PathBuf {
    PathBuf::from("/var/run/corrosion/admin.sock")
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            path: default_admin_path(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TelemetryConfig {
    pub prometheus: Option<PrometheusConfig>,
    /// `"from_env"` or `{ exporter = { endpoint = "..." } }` (not exported yet).
    #[serde(rename = "open-telemetry")]
    #[expect(dead_code, reason = "parsed now; OpenTelemetry export is a later step")]
    pub open_telemetry: Option<toml::Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PrometheusConfig {
    pub addr: SocketAddr,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogConfig {
    /// ANSI colors in plain logs (default true).
    #[serde(default = "yes")]
    pub colors: bool,
    /// `plain` (default) or `json`.
    #[serde(default)]
    pub format: LogFormat,
}

fn yes() -> bool {
    true
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            colors: true,
            format: LogFormat::Plain,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    #[default]
    Plain,
    Json,
}

/// `[consul]`: this agent's node in the discovery catalog, the Consul
/// bridge (`[consul.client]`) and the Consul-compatible HTTP API. Absent, the
/// node is still named (hostname, `dc1`) so the catalog works with no config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConsulConfig {
    /// Node name for this host's services (default: the hostname).
    pub node_name: Option<String>,
    /// Datacenter name (default "dc1").
    pub datacenter: Option<String>,
    /// The node's address in the catalog and DNS (default: the IP of
    /// `gossip.external_addr`, or of `gossip.addr` when that is not a
    /// wildcard, else 127.0.0.1).
    pub address: Option<std::net::IpAddr>,
    /// Node metadata (Consul's `node_meta`).
    #[serde(default)]
    pub node_meta: std::collections::BTreeMap<String, String>,
    /// Write a check whose only change is its output (default false: output
    /// churn would replicate every second).
    #[serde(default)]
    pub sync_output: bool,
    /// Rows of a node down this long are deleted (default "72h", as
    /// Consul's `reconnect_timeout`); a Consul duration or seconds.
    #[serde(
        default = "default_reap_after",
        deserialize_with = "crate::consul::duration::deserialize"
    )]
    pub reap_after: std::time::Duration,
    /// A second listener serving only the Consul-compatible routes (e.g.
    /// 127.0.0.1:8500 once Consul is gone).
    pub http_addr: Option<SocketAddr>,
    /// The local Consul agent to mirror; absent: no bridge.
    pub client: Option<ConsulClientConfig>,
    /// Bytes of encoded answers the Consul-compatible API keeps cached
    /// (default 32 MiB; keys, bodies and bookkeeping counted).
    #[serde(default = "default_answer_cache")]
    pub cache_max_bytes: u64,
}

fn default_answer_cache() -> u64 {
    32 << 20
}

fn default_reap_after() -> std::time::Duration {
    std::time::Duration::from_secs(72 * 3600)
}

impl Default for ConsulConfig {
    fn default() -> Self {
        ConsulConfig {
            node_name: None,
            datacenter: None,
            address: None,
            node_meta: Default::default(),
            sync_output: false,
            reap_after: default_reap_after(),
            http_addr: None,
            client: None,
            cache_max_bytes: default_answer_cache(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConsulClientConfig {
    /// Local Consul agent, `host:port` (default 127.0.0.1:8500).
    #[serde(default = "default_consul_addr")]
    pub addr: String,
    /// ACL token sent as X-Consul-Token.
    pub token: Option<String>,
    /// How often to poll (default 1s).
    #[serde(
        default = "default_poll",
        deserialize_with = "crate::consul::duration::deserialize"
    )]
    pub poll_interval: std::time::Duration,
    /// Timeout of each request to Consul (default 5s).
    #[serde(
        default = "default_consul_timeout",
        deserialize_with = "crate::consul::duration::deserialize"
    )]
    pub timeout: std::time::Duration,
    /// Largest answer accepted from Consul (default 16 MiB).
    #[serde(default = "default_consul_body")]
    pub max_body_bytes: usize,
    pub tls: Option<ConsulTlsConfig>,
}

fn default_consul_addr() -> String {
    "127.0.0.1:8500".into()
}
fn default_poll() -> std::time::Duration {
    std::time::Duration::from_secs(1)
}
fn default_consul_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(5)
}
fn default_consul_body() -> usize {
    16 << 20
}

/// `[consul.client.tls]`: HTTPS to the local Consul agent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConsulTlsConfig {
    /// CA to verify Consul's certificate with.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (when Consul verifies clients).
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Name to verify Consul's certificate against (default: the host of
    /// `addr`).
    pub server_name: Option<String>,
}

/// `[dns]`: the DNS responder for Consul names (keys as Consul's
/// `dns_config`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DnsConfig {
    /// UDP and TCP address (default 127.0.0.1:8600, Consul's port).
    #[serde(default = "default_dns_addr")]
    pub addr: SocketAddr,
    /// The domain answered (default "consul.").
    #[serde(default = "default_dns_domain")]
    pub domain: String,
    /// Leave out instances with a warning check (default false).
    #[serde(default)]
    pub only_passing: bool,
    /// TTL of service answers by service name, `*` for any (default 0).
    #[serde(default)]
    pub service_ttl: std::collections::BTreeMap<String, DnsTtl>,
    /// TTL of node answers (default 0).
    #[serde(default)]
    pub node_ttl: DnsTtl,
    /// Records in a UDP answer without EDNS (default 3, as Consul).
    #[serde(default = "default_udp_answer_limit")]
    pub udp_answer_limit: usize,
    /// A/AAAA records in any answer (default 0: no limit).
    #[serde(default)]
    pub a_record_limit: usize,
    /// Set TC on trimmed UDP answers so clients retry over TCP (default false).
    #[serde(default)]
    pub enable_truncate: bool,
    #[serde(default)]
    pub soa: DnsSoaConfig,
    /// Bytes of encoded answers kept cached (default 16 MiB).
    #[serde(default = "default_dns_cache")]
    pub cache_max_bytes: u64,
    /// After a start, questions wait (at most this long, default 3 s, at
    /// most 5 s: membership counts as settled 5 s after start anyway)
    /// until the catalog has taken in settled membership (a settled peer's
    /// member view), so that a restarted agent does not name a host that
    /// died while it was down; an agent that knows no peer answers at
    /// once, and "0s" never waits.
    #[serde(
        default = "default_dns_start_wait",
        deserialize_with = "crate::consul::duration::deserialize"
    )]
    pub start_wait: std::time::Duration,
}

fn default_dns_start_wait() -> std::time::Duration {
    std::time::Duration::from_secs(3)
}

fn default_dns_cache() -> u64 {
    16 << 20
}

/// A TTL: a Consul duration (`"10s"`) or seconds.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(transparent)]
pub(crate) struct DnsTtl(
    #[serde(deserialize_with = "crate::consul::duration::deserialize")] pub std::time::Duration,
);

impl DnsTtl {
    pub(crate) fn secs(self) -> u32 {
        self.0.as_secs().min(u64::from(u32::MAX)) as u32
    }
}

/// `[dns.soa]`: SOA timers, seconds (Consul's defaults).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DnsSoaConfig {
    #[serde(default = "soa_refresh")]
    pub refresh: u32,
    #[serde(default = "soa_retry")]
    pub retry: u32,
    #[serde(default = "soa_expire")]
    pub expire: u32,
    #[serde(default)]
    pub min_ttl: u32,
}

impl Default for DnsSoaConfig {
    fn default() -> Self {
        DnsSoaConfig {
            refresh: soa_refresh(),
            retry: soa_retry(),
            expire: soa_expire(),
            min_ttl: 0,
        }
    }
}

fn soa_refresh() -> u32 {
    3600
}
fn soa_retry() -> u32 {
    600
}
fn soa_expire() -> u32 {
    86400
}
fn default_dns_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8600))
}
fn default_dns_domain() -> String {
    "consul.".into()
}
fn default_udp_answer_limit() -> usize {
    3
}

/// Where a loaded config came from.
pub(crate) enum Source {
    File(PathBuf),
    Embedded,
}

impl Config {
    /// Parses `text`; errors name `origin`, the key and the reason.
    pub(crate) fn parse(text: &str, origin: &str) -> anyhow::Result<Config> {
        let config: Config = toml::from_str(text).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
        config.check(origin)?;
        Ok(config)
    }

    /// Rules that span keys.
    fn check(&self, origin: &str) -> anyhow::Result<()> {
        if self.gossip.tls.is_none() && !self.gossip.plaintext {
            anyhow::bail!(
                "{origin}: [gossip] needs a [gossip.tls] section (see `corrosion tls --help`) or plaintext = true (only on a trusted or already encrypted network)"
            );
        }
        if self.api.max_statements == 0
            || self.api.max_body_bytes == 0
            || self.api.max_changes == 0
            || self.api.max_conns == 0
            || self.api.max_conns_per_client == 0
            || self.api.header_timeout_secs == 0
        {
            anyhow::bail!(
                "{origin}: api.max_statements, api.max_body_bytes, api.max_changes, api.max_conns, api.max_conns_per_client and api.header_timeout_secs must be positive"
            );
        }
        if let Some(mtu) = self.gossip.max_mtu
            && mtu < 1200
        {
            anyhow::bail!(
                "{origin}: gossip.max_mtu = {mtu} is below 1200, the smallest MTU QUIC can run on"
            );
        }
        let t = self.api.query_timeout_secs;
        if !(t > 0.0 && t <= MAX_QUERY_TIMEOUT_SECS) {
            anyhow::bail!(
                "{origin}: api.query_timeout_secs = {t} must be a positive number of seconds, at most {MAX_QUERY_TIMEOUT_SECS} (one day)"
            );
        }
        if let Some(tls) = self.consul.client.as_ref().and_then(|c| c.tls.as_ref())
            && tls.cert_file.is_some() != tls.key_file.is_some()
        {
            anyhow::bail!(
                "{origin}: [consul.client.tls] needs both cert_file and key_file, or neither"
            );
        }
        if let Some(dns) = &self.dns {
            let d = dns.domain.trim_end_matches('.');
            if d.is_empty() || d.split('.').any(|l| l.is_empty() || l.len() > 63) {
                anyhow::bail!("{origin}: dns.domain {:?} is not a domain name", dns.domain);
            }
            if dns.udp_answer_limit == 0 {
                anyhow::bail!("{origin}: dns.udp_answer_limit must be positive");
            }
            // Membership counts as settled 5 s after start whatever
            // happens (`consul::SETTLE`), which ends the wait: a longer
            // value would promise what it cannot do.
            if dns.start_wait > crate::consul::SETTLE {
                anyhow::bail!(
                    "{origin}: dns.start_wait = {:?} is too long (at most {:?}: membership counts as settled by then)",
                    dns.start_wait,
                    crate::consul::SETTLE
                );
            }
        }
        if self
            .consul
            .node_name
            .as_ref()
            .is_some_and(|n| n.trim().is_empty())
        {
            anyhow::bail!("{origin}: consul.node_name is empty");
        }
        if self
            .api
            .authz
            .bearer_token
            .as_ref()
            .is_some_and(|t| t.trim().is_empty())
        {
            anyhow::bail!("{origin}: api.authz.bearer-token is empty");
        }
        Ok(())
    }

    /// Loads `path`; when it is the default path and does not exist, falls
    /// back to the embedded default.
    pub(crate) fn load(path: &Path, explicit: bool) -> anyhow::Result<(Config, Source)> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok((
                Config::parse(&text, &path.display().to_string())?,
                Source::File(path.to_path_buf()),
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => Ok((
                Config::parse(EMBEDDED_DEFAULT, "embedded default config")?,
                Source::Embedded,
            )),
            Err(e) => Err(anyhow::anyhow!("reading {}: {e}", path.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consul_defaults_without_a_section_match_an_empty_section() {
        let base = "[db]\npath = 'x'\n[gossip]\naddr = '127.0.0.1:1'\nplaintext = true\n";
        let none = Config::parse(base, "none").unwrap();
        let empty = Config::parse(&format!("{base}[consul]\n"), "empty").unwrap();
        assert_eq!(
            none.consul.reap_after,
            std::time::Duration::from_secs(72 * 3600)
        );
        assert_eq!(none.consul.reap_after, empty.consul.reap_after);
        let c = Config::parse(
            &format!("{base}[consul]\nnode_name = 'web-1'\nreap_after = '10m'\n[consul.client]\naddr = '127.0.0.1:8500'\ntoken = 't'\npoll_interval = '500ms'\n[consul.client.tls]\nca_file = 'ca.pem'\n"),
            "full",
        )
        .unwrap();
        assert_eq!(c.consul.reap_after, std::time::Duration::from_secs(600));
        let client = c.consul.client.unwrap();
        assert_eq!(client.poll_interval, std::time::Duration::from_millis(500));
        assert_eq!(client.timeout, std::time::Duration::from_secs(5));
        for (bad, want) in [
            ("[consul]\nreap_after = 'soon'\n", "invalid duration"),
            ("[consul]\nnode_name = ' '\n", "node_name is empty"),
            ("[consul]\nnodename = 'x'\n", "nodename"),
            (
                "[consul.client.tls]\ncert_file = 'c'\n",
                "both cert_file and key_file",
            ),
            // Each of these used to panic at start, or could not be met.
            ("[api]\nquery_timeout_secs = inf\n", "query_timeout_secs"),
            ("[api]\nquery_timeout_secs = nan\n", "query_timeout_secs"),
            ("[api]\nquery_timeout_secs = 1e300\n", "query_timeout_secs"),
            ("[api]\nquery_timeout_secs = -1\n", "query_timeout_secs"),
            ("[api]\nmax_conns_per_client = 0\n", "max_conns_per_client"),
            ("[api]\nheader_timeout_secs = 0\n", "header_timeout_secs"),
        ] {
            let e = format!(
                "{:#}",
                Config::parse(&format!("{base}{bad}"), "my.toml").unwrap_err()
            );
            assert!(e.contains(want), "{bad} -> {e}");
        }
    }

    #[test]
    fn dns_keys_parse_and_bad_ones_are_refused() {
        let base = "[db]\npath = 'x'\n[gossip]\naddr = '127.0.0.1:1'\nplaintext = true\n";
        assert!(
            Config::parse(base, "none").unwrap().dns.is_none(),
            "off without [dns]"
        );
        let c = Config::parse(
            &format!("{base}[dns]\naddr = '127.0.0.1:53'\ndomain = 'corp.'\nonly_passing = true\nnode_ttl = '30s'\nservice_ttl = {{ '*' = '5s', web = 10 }}\nudp_answer_limit = 5\na_record_limit = 2\nenable_truncate = true\nstart_wait = '500ms'\n[dns.soa]\nmin_ttl = 7\n"),
            "dns",
        )
        .unwrap();
        let dns = c.dns.unwrap();
        assert_eq!(dns.node_ttl.secs(), 30);
        assert_eq!(dns.start_wait, std::time::Duration::from_millis(500));
        assert_eq!(dns.service_ttl["*"].secs(), 5);
        assert_eq!(dns.service_ttl["web"].secs(), 10);
        assert_eq!(
            (
                dns.udp_answer_limit,
                dns.a_record_limit,
                dns.soa.min_ttl,
                dns.soa.refresh
            ),
            (5, 2, 7, 3600)
        );
        let d = Config::parse(&format!("{base}[dns]\n"), "defaults")
            .unwrap()
            .dns
            .unwrap();
        assert_eq!(d.addr, "127.0.0.1:8600".parse().unwrap());
        assert_eq!(d.domain, "consul.");
        assert_eq!(d.udp_answer_limit, 3);
        assert_eq!(d.start_wait, std::time::Duration::from_secs(3));
        for (bad, want) in [
            ("[dns]\nstart_wait = '6s'\n", "at most 5s"),
            ("[dns]\nrecursors = []\n", "recursors"),
            ("[dns]\nnode_ttl = 'soon'\n", "invalid duration"),
            ("[dns]\ndomain = 'a..b'\n", "not a domain name"),
            ("[dns]\nudp_answer_limit = 0\n", "udp_answer_limit"),
            ("[dns.soa]\nserial = 1\n", "serial"),
        ] {
            let e = format!(
                "{:#}",
                Config::parse(&format!("{base}{bad}"), "my.toml").unwrap_err()
            );
            assert!(e.contains(want), "{bad} -> {e}");
        }
        let embedded = Config::parse(EMBEDDED_DEFAULT, "embedded").unwrap();
        assert_eq!(
            embedded.dns.unwrap().addr,
            "127.0.0.1:8600".parse().unwrap(),
            "on in the embedded default"
        );
    }

    #[test]
    fn template_blocks_parse_as_documented_and_bad_ones_are_refused() {
        let base = "[db]\npath = 'x'\n[gossip]\naddr = '127.0.0.1:1'\nplaintext = true\n";
        // The example in docs/TEMPLATES.md.
        let doc = include_str!("../../docs/TEMPLATES.md");
        let example = doc
            .split("```toml\n")
            .nth(1)
            .and_then(|t| t.split("```").next())
            .unwrap();
        let c = Config::parse(&format!("{base}{example}"), "doc").unwrap();
        let spec = c.template[0].spec();
        assert_eq!(spec.perms, Some(0o644));
        assert!(spec.backup);
        assert_eq!(spec.command.as_deref(), Some("nginx -s reload"));
        assert_eq!(
            spec.wait,
            corro_templates::Wait::new(
                std::time::Duration::from_millis(100),
                Some(std::time::Duration::from_millis(400))
            )
        );
        assert_eq!(spec.command_timeout, std::time::Duration::from_secs(30));
        let c = Config::parse(
            &format!("{base}[[template]]\nsource = 'a'\ndestination = 'b'\nperms = 0o600\nwait = '2s'\n[[template]]\nsource = 'c'\ndestination = 'd'\n"),
            "two",
        )
        .unwrap();
        assert_eq!(c.template.len(), 2);
        assert_eq!(c.template[0].spec().perms, Some(0o600));
        assert_eq!(
            c.template[0].spec().wait.max,
            std::time::Duration::from_secs(8)
        );
        assert_eq!(c.template[1].spec(), corro_templates::Spec::new("c", "d"));
        for (bad, want) in [
            ("perms = '0999'", "octal"),
            ("perms = 0o17777", "file mode"),
            ("wait = '2s:1s'", "min:max"),
            ("wait = 'soon'", "min:max"),
            ("command_timeout = 'x'", "duration"),
            ("bogus = 1", "unknown field"),
        ] {
            let e = Config::parse(
                &format!("{base}[[template]]\nsource = 'a'\ndestination = 'b'\n{bad}\n"),
                "bad",
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
        let e = Config::parse(&format!("{base}[[template]]\nsource = 'a'\n"), "bad")
            .unwrap_err()
            .to_string();
        assert!(e.contains("destination"), "{e}");
    }

    #[test]
    fn packaged_config_parses_with_loopback_listeners() {
        let c = Config::parse(include_str!("../../packaging/config.toml"), "packaged").unwrap();
        assert!(c.api.addr.ip().is_loopback());
        assert!(c.gossip.addr.ip().is_loopback());
        assert!(c.dns.as_ref().is_some_and(|d| d.addr.ip().is_loopback()));
        assert_eq!(c.db.path, PathBuf::from("/var/lib/corrosion/state.db"));
        assert_eq!(c.db.schema_paths, [PathBuf::from("/etc/corrosion/schema")]);
    }

    #[test]
    fn embedded_default_parses() {
        let c = Config::parse(EMBEDDED_DEFAULT, "embedded").unwrap();
        assert_eq!(c.db.path, PathBuf::from("./corrosion-data/state.db"));
        assert_eq!(c.api.addr, "127.0.0.1:8080".parse().unwrap());
    }

    #[test]
    fn every_reference_section_parses() {
        let c = Config::parse(
            r#"
[db]
path = "/var/lib/corrosion/state.db"
schema_paths = ["/etc/corrosion/schema", "/path/to/table_name.sql"]
[gossip]
addr = "[::]:8787" # the address we bind to
external_addr = "[::1]:8787" # the address we advertise as
bootstrap = ["127.0.0.1:3333", "my-fly-app.internal:3333@[fdaa::3]:53"]
plaintext = false
max_mtu = 1372
disable_gso = true
idle_timeout_secs = 10
[gossip.tls]
cert_file = "/path/to/server_cert.pem"
key_file = "/path/to/server_key.pem"
ca_file = "/path/to/ca_cert.pem"
insecure = false
[gossip.tls.client]
cert_file = "/path/to/client_cert.pem"
key_file = "/path/to/client_key.pem"
[api]
addr = "127.0.0.1:8080"
authz.bearer-token = "s3cret"
pg.addr = "127.0.0.1:5470"
[admin]
path = "/var/run/corrosion/admin.sock"
[telemetry]
prometheus.addr = "0.0.0.0:9090"
open-telemetry.exporter = { endpoint = "10.0.0.0:9999" }
[log]
colors = false
[consul.client]
addr = "127.0.0.1:8500"
"#,
            "full",
        )
        .unwrap();
        assert_eq!(c.api.authz.bearer_token.as_deref(), Some("s3cret"));
        assert_eq!(c.gossip.idle_timeout_secs, 10);
        assert!(c.gossip.tls.as_ref().unwrap().client.is_some());
        assert!(!c.log.colors);
    }

    #[test]
    fn subscription_retention_keys_parse_with_defaults() {
        let base = "[db]\npath = 'x'\n[gossip]\naddr = '127.0.0.1:1'\nplaintext = true\n";
        let c = Config::parse(base, "defaults").unwrap();
        assert_eq!(
            (
                c.subscriptions.log_max_changes,
                c.subscriptions.log_max_age_secs,
                c.subscriptions.log_max_bytes
            ),
            (100_000, 86_400, 64 << 20)
        );
        let c = Config::parse(
            &format!("{base}[subscriptions]\nlog_max_bytes = 1000\nlog_max_changes = 5\n"),
            "set",
        )
        .unwrap();
        assert_eq!(c.subscriptions.log_max_bytes, 1000);
        assert_eq!(c.subscriptions.log_max_changes, 5);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_file_and_key() {
        for (text, want) in [
            (
                "[db]\npath = 'x'\nschema_path = []\n[gossip]\naddr='127.0.0.1:1'\n",
                "schema_path",
            ),
            (
                "[db]\npath = 'x'\n[gossip]\naddr='127.0.0.1:1'\n[gosip]\n",
                "gosip",
            ),
            ("[gossip]\naddr='127.0.0.1:1'\n", "db"),
            (
                "[db]\npath = 'x'\n[gossip]\naddr='not an address'\n",
                "addr",
            ),
            (
                "[db]\npath = 'x'\n[gossip]\naddr='127.0.0.1:1'\nplaintext = true\n[api]\nmax_statements = 0\n",
                "max_statements",
            ),
            (
                "[db]\npath = 'x'\n[gossip]\naddr='127.0.0.1:1'\n",
                "[gossip.tls]",
            ),
            (
                "[db]\npath = 'x'\n[gossip]\naddr='127.0.0.1:1'\n[gossip.tls]\ncert_file = 'c'\n",
                "key_file",
            ),
            (
                "[db]\npath = 'x'\n[gossip]\naddr='127.0.0.1:1'\n[log]\nformat = 'xml'\n",
                "xml",
            ),
            (
                "[db]\npath = 'x'\n[gossip]\naddr='127.0.0.1:1'\nplaintext = true\nmax_mtu = 576\n",
                "gossip.max_mtu = 576 is below 1200",
            ),
        ] {
            let e = format!("{:#}", Config::parse(text, "my.toml").unwrap_err());
            assert!(e.contains("my.toml") && e.contains(want), "{text}\n -> {e}");
        }
    }

    /// Key paths the config structs accept, read from this file's source:
    /// `section.key`, nested sections joined by dots, maps and free-form
    /// values as one key.
    fn struct_keys() -> std::collections::BTreeSet<String> {
        use std::collections::BTreeMap;
        let src = include_str!("config.rs");
        let mut structs: BTreeMap<&str, Vec<(String, String)>> = BTreeMap::new();
        let mut current: Option<&str> = None;
        let mut rename: Option<String> = None;
        for line in src.lines() {
            let t = line.trim();
            if let Some(rest) = t.strip_prefix("pub(crate) struct ")
                && let Some(name) = rest.strip_suffix(" {")
            {
                current = Some(name);
                structs.insert(name, Vec::new());
                continue;
            }
            let Some(cur) = current else { continue };
            if t == "}" {
                current = None;
            } else if let Some(r) = t.strip_prefix("#[serde(rename = \"") {
                rename = r.split('"').next().map(str::to_string);
            } else if let Some(field) = t.strip_prefix("pub ")
                && let Some((name, ty)) = field.split_once(": ")
            {
                let key = rename.take().unwrap_or_else(|| name.to_string());
                let ty = ty.trim_end_matches(',').to_string();
                structs.entry(cur).or_default().push((key, ty));
            }
        }
        fn walk(
            structs: &BTreeMap<&str, Vec<(String, String)>>,
            ty: &str,
            prefix: &str,
            out: &mut std::collections::BTreeSet<String>,
        ) {
            for (key, fty) in &structs[ty] {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                let inner = fty
                    .trim_start_matches("Option<")
                    .trim_start_matches("Vec<")
                    .trim_end_matches('>');
                if structs.contains_key(inner) {
                    walk(structs, inner, &path, out);
                } else {
                    out.insert(path);
                }
            }
        }
        let mut out = std::collections::BTreeSet::new();
        walk(&structs, "Config", "", &mut out);
        out
    }

    /// Key paths of a TOML document, stopping at `leaves`.
    fn doc_keys(
        v: &toml::Value,
        prefix: &str,
        leaves: &std::collections::BTreeSet<String>,
        out: &mut std::collections::BTreeSet<String>,
    ) {
        match v {
            toml::Value::Table(t) if !leaves.contains(prefix) => {
                for (k, v) in t {
                    let path = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    doc_keys(v, &path, leaves, out);
                }
            }
            toml::Value::Array(a) if a.iter().all(toml::Value::is_table) && !a.is_empty() => {
                for v in a {
                    doc_keys(v, prefix, leaves, out);
                }
            }
            _ => {
                out.insert(prefix.to_string());
            }
        }
    }

    #[test]
    fn the_config_reference_documents_every_key() {
        let doc = include_str!("../../docs/CONFIG.md");
        let example = doc
            .split("## Every key")
            .nth(1)
            .and_then(|s| s.split("```toml\n").nth(1))
            .and_then(|s| s.split("```").next())
            .expect("the full example in docs/CONFIG.md");
        // Every documented key is parsed (and its example value accepted).
        Config::parse(example, "docs/CONFIG.md").unwrap();
        let accepted = struct_keys();
        assert!(accepted.len() > 60, "{accepted:?}");
        assert!(accepted.contains("api.authz.bearer-token"), "{accepted:?}");
        assert!(
            accepted.contains("template.command_timeout"),
            "{accepted:?}"
        );
        let value: toml::Value = toml::from_str(example).unwrap();
        let mut documented = std::collections::BTreeSet::new();
        doc_keys(&value, "", &accepted, &mut documented);
        let undocumented: Vec<_> = accepted.difference(&documented).collect();
        assert!(
            undocumented.is_empty(),
            "keys missing from the example in docs/CONFIG.md: {undocumented:?}"
        );
        let unknown: Vec<_> = documented.difference(&accepted).collect();
        assert!(
            unknown.is_empty(),
            "documented but not accepted: {unknown:?}"
        );
        for key in &accepted {
            assert!(
                doc.contains(&format!("| `{key}` |")),
                "docs/CONFIG.md has no table row for `{key}`"
            );
        }
    }
}
