//! Question names → what they ask for, as Consul's DNS interface defines
//! them (all case-insensitive; the caller passes lower-case labels without
//! the root):
//!
//! | name | lookup |
//! |---|---|
//! | `<service>.service[.<dc>].<domain>` | instances of a service |
//! | `<tag>.<service>.service[.<dc>].<domain>` | instances with a tag |
//! | `_<service>._<tag\|tcp\|udp>.service[.<dc>].<domain>` | RFC 2782 form (`tcp`/`udp`: any tag) |
//! | `<node>.node[.<dc>].<domain>` | a node |
//! | `<hex>.addr[.<dc>].<domain>` | the address itself (8 hex digits: IPv4, 32: IPv6) |
//! | `<domain>` | the zone apex (SOA, NS) |
//! | `d.c.b.a.in-addr.arpa`, nibbles `.ip6.arpa` | PTR for a node or service address |
//!
//! Another datacenter's name is an unknown name (this agent serves one).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What a question name asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Service {
        name: String,
        tag: Option<String>,
    },
    Node(String),
    Addr(IpAddr),
    Apex,
    Ptr(IpAddr),
    /// In the domain, but no such name: NXDOMAIN.
    Unknown,
    /// Not this responder's domain: REFUSED.
    Outside,
}

fn hex_ip(h: &str) -> Option<IpAddr> {
    if !h.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    match h.len() {
        8 => u32::from_str_radix(h, 16)
            .ok()
            .map(|n| IpAddr::V4(Ipv4Addr::from(n))),
        32 => u128::from_str_radix(h, 16)
            .ok()
            .map(|n| IpAddr::V6(Ipv6Addr::from(n))),
        _ => None,
    }
}

/// The `<hex>` label of an address (for SRV targets).
pub fn ip_hex(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{:08x}", u32::from(v4)),
        IpAddr::V6(v6) => format!("{:032x}", u128::from(v6)),
    }
}

fn ptr(labels: &[String]) -> Option<Lookup> {
    let n = labels.len();
    if n >= 2 && labels[n - 2] == "in-addr" && labels[n - 1] == "arpa" {
        let octets = &labels[..n - 2];
        if octets.len() != 4 {
            return Some(Lookup::Unknown);
        }
        let mut b = [0u8; 4];
        for (i, o) in octets.iter().rev().enumerate() {
            match o.parse::<u8>() {
                Ok(v) => b[i] = v,
                Err(_) => return Some(Lookup::Unknown),
            }
        }
        return Some(Lookup::Ptr(IpAddr::V4(Ipv4Addr::from(b))));
    }
    if n >= 2 && labels[n - 2] == "ip6" && labels[n - 1] == "arpa" {
        let nibbles = &labels[..n - 2];
        if nibbles.len() != 32 || nibbles.iter().any(|l| l.len() != 1) {
            return Some(Lookup::Unknown);
        }
        let hex: String = nibbles.iter().rev().map(String::as_str).collect();
        return Some(hex_ip(&hex).map_or(Lookup::Unknown, Lookup::Ptr));
    }
    None
}

/// Parses lower-case `labels` (root excluded) against `domain`'s labels.
pub fn parse(labels: &[String], domain: &[String], datacenter: &str) -> Lookup {
    if let Some(p) = ptr(labels) {
        return p;
    }
    if labels.len() < domain.len() || labels[labels.len() - domain.len()..] != *domain {
        return Lookup::Outside;
    }
    let rest = &labels[..labels.len() - domain.len()];
    if rest.is_empty() {
        return Lookup::Apex;
    }
    let is_kind = |l: &str| matches!(l, "service" | "node" | "addr");
    let (kind_at, dc) = match rest.len() {
        n if is_kind(&rest[n - 1]) => (n - 1, None),
        n if n >= 2 && is_kind(&rest[n - 2]) => (n - 2, Some(rest[n - 1].as_str())),
        _ => return Lookup::Unknown,
    };
    if dc.is_some_and(|d| d != datacenter) {
        return Lookup::Unknown;
    }
    let prefix = &rest[..kind_at];
    match (rest[kind_at].as_str(), prefix) {
        ("service", [svc]) => Lookup::Service {
            name: svc.clone(),
            tag: None,
        },
        ("service", [a, b]) if a.starts_with('_') && b.starts_with('_') => {
            let tag = &b[1..];
            Lookup::Service {
                name: a[1..].to_string(),
                tag: (!matches!(tag, "tcp" | "udp")).then(|| tag.to_string()),
            }
        }
        ("service", [tag, svc]) => Lookup::Service {
            name: svc.clone(),
            tag: Some(tag.clone()),
        },
        ("node", [node]) => Lookup::Node(node.clone()),
        ("addr", [hex]) => hex_ip(hex).map_or(Lookup::Unknown, Lookup::Addr),
        _ => Lookup::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str) -> Lookup {
        let labels: Vec<String> = name
            .trim_end_matches('.')
            .split('.')
            .filter(|l| !l.is_empty())
            .map(|l| l.to_ascii_lowercase())
            .collect();
        parse(&labels, &["consul".to_string()], "dc1")
    }

    fn svc(name: &str, tag: Option<&str>) -> Lookup {
        Lookup::Service {
            name: name.into(),
            tag: tag.map(Into::into),
        }
    }

    #[test]
    fn every_name_form() {
        assert_eq!(p("web.service.consul"), svc("web", None));
        assert_eq!(p("WEB.Service.CONSUL."), svc("web", None));
        assert_eq!(p("web.service.dc1.consul"), svc("web", None));
        assert_eq!(p("web.service.dc2.consul"), Lookup::Unknown);
        assert_eq!(p("v1.web.service.consul"), svc("web", Some("v1")));
        assert_eq!(p("_web._tcp.service.consul"), svc("web", None));
        assert_eq!(p("_web._v1.service.dc1.consul"), svc("web", Some("v1")));
        assert_eq!(p("n1.node.consul"), Lookup::Node("n1".into()));
        assert_eq!(p("n1.node.dc1.consul."), Lookup::Node("n1".into()));
        assert_eq!(
            p("7f000001.addr.consul"),
            Lookup::Addr("127.0.0.1".parse().unwrap())
        );
        assert_eq!(
            p("20010db8000000000000000000000001.addr.dc1.consul"),
            Lookup::Addr("2001:db8::1".parse().unwrap())
        );
        assert_eq!(p("consul."), Lookup::Apex);
        assert_eq!(
            p("1.0.0.127.in-addr.arpa"),
            Lookup::Ptr("127.0.0.1".parse().unwrap())
        );
        let v6 = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa";
        assert_eq!(p(v6), Lookup::Ptr("2001:db8::1".parse().unwrap()));
        for unknown in [
            "x.consul",
            "a.b.c.service.consul",
            "zz.addr.consul",
            "node.consul",
            "1.2.in-addr.arpa",
        ] {
            assert_eq!(p(unknown), Lookup::Unknown, "{unknown}");
        }
        assert_eq!(p("example.com"), Lookup::Outside);
        assert_eq!(p("web.service.consul.example.com"), Lookup::Outside);
        assert_eq!(ip_hex("127.0.0.1".parse().unwrap()), "7f000001");
    }
}
