//! What the responder needs to know: its domain, TTLs, limits, and the
//! local node and datacenter.

use std::collections::BTreeMap;

/// SOA record fields (Consul's defaults).
#[derive(Debug, Clone)]
pub struct SoaSettings {
    pub refresh: u32,
    pub retry: u32,
    pub expire: u32,
    /// Minimum TTL, also the negative-caching TTL.
    pub min_ttl: u32,
}

impl Default for SoaSettings {
    fn default() -> Self {
        SoaSettings {
            refresh: 3600,
            retry: 600,
            expire: 86400,
            min_ttl: 0,
        }
    }
}

/// Responder settings (from `[dns]`).
#[derive(Debug, Clone)]
pub struct DnsSettings {
    /// The domain answered, lower-case, without a trailing dot (`consul`).
    pub domain: String,
    /// This agent's datacenter.
    pub datacenter: String,
    /// This agent's node name (the NS and SOA name).
    pub node_name: String,
    /// Leave out instances with a warning check.
    pub only_passing: bool,
    /// TTL of service answers by service name; `*` for the rest.
    pub service_ttl: BTreeMap<String, u32>,
    pub node_ttl: u32,
    /// Records in a UDP answer without EDNS.
    pub udp_answer_limit: usize,
    /// A/AAAA records in any answer (0: no limit).
    pub a_record_limit: usize,
    /// Set TC when a UDP answer had to be trimmed.
    pub enable_truncate: bool,
    pub soa: SoaSettings,
    /// Bytes of encoded answers kept cached.
    pub cache_max_bytes: u64,
}

impl Default for DnsSettings {
    fn default() -> Self {
        DnsSettings {
            domain: "consul".into(),
            datacenter: "dc1".into(),
            node_name: "localhost".into(),
            only_passing: false,
            service_ttl: BTreeMap::new(),
            node_ttl: 0,
            udp_answer_limit: 3,
            a_record_limit: 0,
            enable_truncate: false,
            soa: SoaSettings::default(),
            cache_max_bytes: 16 << 20,
        }
    }
}

impl DnsSettings {
    /// The TTL of service `name`'s answers (the name in any case, then `*`,
    /// else 0).
    pub fn service_ttl(&self, name: &str) -> u32 {
        self.service_ttl
            .get(name)
            .or_else(|| {
                self.service_ttl
                    .iter()
                    .find(|(k, _)| corro_catalog::same_name(k, name))
                    .map(|(_, v)| v)
            })
            .or_else(|| self.service_ttl.get("*"))
            .copied()
            .unwrap_or(0)
    }
}
