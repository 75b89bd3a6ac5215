//! Records for a [`Lookup`], read from the catalog index.
//!
//! Health as the HTTP catalog: an instance is answered when its aggregated
//! status is passing, or warning unless `only_passing`; critical and
//! maintenance instances, and those of nodes SWIM declared down (their
//! `serfHealth` is critical), are left out. A service with no instance left
//! is NXDOMAIN, as Consul answers. A name that exists without records of
//! the asked type is NOERROR with no answer (NODATA); both carry the SOA in
//! the authority section.

use std::net::IpAddr;

use corro_catalog::{Index, Instance, Liveness, Status};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::name::{Lookup, ip_hex};
use crate::settings::DnsSettings;

/// A response's content before encoding.
#[derive(Debug, Default)]
pub struct Built {
    pub rcode: ResponseCode,
    /// Answers, each with the additional record that only it needs (an SRV
    /// target's address): when an answer is left out, so is its glue.
    pub answers: Vec<(Record, Option<Record>)>,
    pub authority: Vec<Record>,
    /// Additionals not tied to one answer (the apex NS's address).
    pub additionals: Vec<Record>,
}

fn fqdn(s: &str) -> Option<Name> {
    let mut n = Name::from_ascii(s).ok()?;
    n.set_fqdn(true);
    Some(n)
}

fn addr_record(name: &Name, ttl: u32, ip: IpAddr) -> Record {
    match ip {
        IpAddr::V4(v4) => Record::from_rdata(name.clone(), ttl, RData::A(A(v4))),
        IpAddr::V6(v6) => Record::from_rdata(name.clone(), ttl, RData::AAAA(AAAA(v6))),
    }
}

fn wants(qtype: RecordType, ip: IpAddr) -> bool {
    match qtype {
        RecordType::A => ip.is_ipv4(),
        RecordType::AAAA => ip.is_ipv6(),
        RecordType::ANY => true,
        _ => false,
    }
}

/// The SOA of the zone.
pub fn soa(s: &DnsSettings, serial: u32) -> Option<Record> {
    let apex = fqdn(&s.domain)?;
    let rdata = SOA::new(
        fqdn(&format!("ns.{}", s.domain))?,
        fqdn(&format!("hostmaster.{}", s.domain))?,
        serial,
        s.soa.refresh as i32,
        s.soa.retry as i32,
        s.soa.expire as i32,
        s.soa.min_ttl,
    );
    Some(Record::from_rdata(apex, s.soa.min_ttl, RData::SOA(rdata)))
}

/// The address an instance answers with: the service's own address when it
/// is an IP, else its node's.
fn instance_ip(inst: &Instance) -> Option<IpAddr> {
    inst.service
        .address
        .parse()
        .ok()
        .or_else(|| inst.node.as_ref().and_then(|n| n.address.parse().ok()))
}

fn healthy(inst: &Instance, only_passing: bool) -> bool {
    inst.liveness != Liveness::Down
        && match inst.status {
            Status::Passing => true,
            Status::Warning => !only_passing,
            Status::Critical | Status::Maintenance => false,
        }
}

fn node_name(s: &DnsSettings, node: &str) -> Option<Name> {
    fqdn(&format!("{node}.node.{}.{}", s.datacenter, s.domain))
}

/// Builds the answer to `lookup` for `qtype` (`qname` as asked, used as the
/// owner name of the answers; `serial` goes into the SOA).
pub fn build(
    index: &Index,
    s: &DnsSettings,
    lookup: &Lookup,
    qname: &Name,
    qtype: RecordType,
    serial: u32,
) -> Built {
    let mut b = Built::default();
    let nodata_or = |b: &mut Built, rcode: ResponseCode| {
        b.rcode = rcode;
        b.authority.extend(soa(s, serial));
    };
    match lookup {
        Lookup::Outside => b.rcode = ResponseCode::Refused,
        Lookup::Unknown => nodata_or(&mut b, ResponseCode::NXDomain),
        Lookup::Apex => {
            let ns_name = fqdn(&format!("ns.{}", s.domain));
            let local_ip = index
                .node(&s.node_name)
                .and_then(|n| n.address.parse::<IpAddr>().ok());
            if matches!(qtype, RecordType::SOA | RecordType::ANY) {
                b.answers.extend(soa(s, serial).map(|r| (r, None)));
            }
            if matches!(qtype, RecordType::NS | RecordType::ANY)
                && let Some(ns) = &ns_name
            {
                b.answers.push((
                    Record::from_rdata(qname.clone(), s.node_ttl, RData::NS(NS(ns.clone()))),
                    None,
                ));
                if let Some(ip) = local_ip {
                    b.additionals.push(addr_record(ns, s.node_ttl, ip));
                }
            }
            if b.answers.is_empty() {
                nodata_or(&mut b, ResponseCode::NoError);
            }
        }
        Lookup::Service { name, tag } => {
            let ttl = s.service_ttl(name);
            let instances: Vec<Instance> = index
                .instances(name)
                .into_iter()
                .filter(|i| tag.as_ref().is_none_or(|t| i.service.has_tag(t)))
                .filter(|i| healthy(i, s.only_passing))
                .collect();
            if instances.is_empty() {
                nodata_or(&mut b, ResponseCode::NXDomain);
                return b;
            }
            for inst in &instances {
                let ip = instance_ip(inst);
                match qtype {
                    RecordType::SRV => {
                        let svc_ip: Option<IpAddr> = inst.service.address.parse().ok();
                        let node_ip: Option<IpAddr> =
                            inst.node.as_ref().and_then(|n| n.address.parse().ok());
                        let (target, glue) = match (svc_ip, node_ip) {
                            (Some(sip), n) if Some(sip) != n => (
                                fqdn(&format!(
                                    "{}.addr.{}.{}",
                                    ip_hex(sip),
                                    s.datacenter,
                                    s.domain
                                )),
                                Some(sip),
                            ),
                            _ => (node_name(s, &inst.service.node), node_ip),
                        };
                        let Some(target) = target else { continue };
                        let w = if inst.status == Status::Warning {
                            inst.service.weights.warning
                        } else {
                            inst.service.weights.passing
                        };
                        let srv = SRV::new(
                            1,
                            w.clamp(0, u16::MAX as i64) as u16,
                            inst.service.port.clamp(0, u16::MAX as i64) as u16,
                            target.clone(),
                        );
                        b.answers.push((
                            Record::from_rdata(qname.clone(), ttl, RData::SRV(srv)),
                            glue.map(|g| addr_record(&target, ttl, g)),
                        ));
                    }
                    RecordType::TXT => {
                        if let Some(n) = &inst.node
                            && !n.meta.is_empty()
                        {
                            let txt: Vec<String> =
                                n.meta.iter().map(|(k, v)| format!("{k}={v}")).collect();
                            b.answers.push((
                                Record::from_rdata(qname.clone(), ttl, RData::TXT(TXT::new(txt))),
                                None,
                            ));
                        }
                    }
                    _ => {
                        if let Some(ip) = ip.filter(|ip| wants(qtype, *ip)) {
                            b.answers.push((addr_record(qname, ttl, ip), None));
                        }
                    }
                }
            }
            if b.answers.is_empty() {
                nodata_or(&mut b, ResponseCode::NoError);
            }
        }
        Lookup::Node(node) => {
            let Some(n) = index.node(node) else {
                nodata_or(&mut b, ResponseCode::NXDomain);
                return b;
            };
            let ttl = s.node_ttl;
            if let Ok(ip) = n.address.parse::<IpAddr>()
                && wants(qtype, ip)
            {
                b.answers.push((addr_record(qname, ttl, ip), None));
            }
            if matches!(qtype, RecordType::TXT | RecordType::ANY) && !n.meta.is_empty() {
                let txt: Vec<String> = n.meta.iter().map(|(k, v)| format!("{k}={v}")).collect();
                b.answers.push((
                    Record::from_rdata(qname.clone(), ttl, RData::TXT(TXT::new(txt))),
                    None,
                ));
            }
            if b.answers.is_empty() {
                nodata_or(&mut b, ResponseCode::NoError);
            }
        }
        Lookup::Addr(ip) => {
            if wants(qtype, *ip) {
                b.answers.push((addr_record(qname, s.node_ttl, *ip), None));
            } else {
                nodata_or(&mut b, ResponseCode::NoError);
            }
        }
        Lookup::Ptr(ip) => {
            let text = ip.to_string();
            let mut targets: Vec<Name> = index
                .nodes()
                .filter(|n| n.address == text)
                .filter_map(|n| node_name(s, &n.node))
                .collect();
            let mut services: Vec<Name> = index
                .services()
                .filter(|sv| sv.address == text)
                .filter_map(|sv| {
                    fqdn(&format!(
                        "{}.service.{}.{}",
                        sv.name, s.datacenter, s.domain
                    ))
                })
                .collect();
            services.dedup();
            targets.extend(services);
            if targets.is_empty() {
                nodata_or(&mut b, ResponseCode::NXDomain);
            } else if matches!(qtype, RecordType::PTR | RecordType::ANY) {
                for t in targets {
                    b.answers.push((
                        Record::from_rdata(qname.clone(), s.node_ttl, RData::PTR(PTR(t))),
                        None,
                    ));
                }
            } else {
                nodata_or(&mut b, ResponseCode::NoError);
            }
        }
    }
    b
}
