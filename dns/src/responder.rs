//! One query packet in, one answer packet out.
//!
//! Anything that is not a well-formed single question gets a response code
//! instead of an answer: a packet too short for a header, or itself a
//! response, is dropped; one that does not parse is FORMERR (with its ID);
//! another opcode, or a zone transfer (AXFR/IXFR), is NOTIMP; a name outside
//! the domain (and outside `in-addr.arpa`/`ip6.arpa`) is REFUSED. Every
//! outcome is counted (`corro_dns_responses_total{rcode}`,
//! `corro_dns_dropped_total`).
//!
//! UDP answers are trimmed to fit: without EDNS to `udp_answer_limit`
//! answers and 512 bytes, with EDNS to the client's buffer size; TC is set
//! on a trimmed answer only when `enable_truncate` is on (as Consul). TCP
//! answers are whole. Answers are shuffled on every query.

use std::sync::Arc;

use corro_catalog::Catalog;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, RecordType};
use rand::seq::SliceRandom;

use crate::answer;
use crate::name;
use crate::settings::DnsSettings;

/// Largest UDP answer this responder sends to an EDNS client.
const MAX_UDP: usize = 4096;

/// Answers DNS packets from the catalog (cheap to clone).
#[derive(Clone)]
pub struct Responder {
    catalog: Catalog,
    settings: Arc<DnsSettings>,
    domain: Arc<[String]>,
}

fn count(rcode: ResponseCode) {
    let label = match rcode {
        ResponseCode::NoError => "noerror",
        ResponseCode::NXDomain => "nxdomain",
        ResponseCode::FormErr => "formerr",
        ResponseCode::NotImp => "notimp",
        ResponseCode::Refused => "refused",
        ResponseCode::ServFail => "servfail",
        _ => "other",
    };
    metrics::counter!("corro_dns_responses_total", "rcode" => label).increment(1);
}

fn dropped(why: &'static str) -> Option<Vec<u8>> {
    metrics::counter!("corro_dns_dropped_total", "reason" => why).increment(1);
    None
}

impl Responder {
    pub fn new(catalog: Catalog, settings: DnsSettings) -> Responder {
        let domain: Vec<String> = settings
            .domain
            .trim_end_matches('.')
            .split('.')
            .filter(|l| !l.is_empty())
            .map(str::to_ascii_lowercase)
            .collect();
        let mut settings = settings;
        settings.domain = domain.join(".");
        Responder {
            catalog,
            settings: Arc::new(settings),
            domain: domain.into(),
        }
    }

    pub fn settings(&self) -> &DnsSettings {
        &self.settings
    }

    fn error(
        id: u16,
        op: OpCode,
        rd: bool,
        rcode: ResponseCode,
        q: Option<&hickory_proto::op::Query>,
    ) -> Option<Vec<u8>> {
        let mut m = Message::error_msg(id, op, rcode);
        m.metadata.recursion_desired = rd;
        if let Some(q) = q {
            m.add_query(q.clone());
        }
        count(rcode);
        m.to_vec().ok()
    }

    /// The answer to `packet`, or `None` to drop it.
    pub fn respond(&self, packet: &[u8], udp: bool) -> Option<Vec<u8>> {
        if packet.len() < 12 {
            return dropped("short");
        }
        if packet[2] & 0x80 != 0 {
            return dropped("response");
        }
        let id = u16::from_be_bytes([packet[0], packet[1]]);
        let rd = packet[2] & 0x01 != 0;
        let op = OpCode::from_u8((packet[2] >> 3) & 0x0f);
        let msg = match Message::from_vec(packet) {
            Ok(m) => m,
            Err(_) => return Self::error(id, OpCode::Query, rd, ResponseCode::FormErr, None),
        };
        if op != OpCode::Query {
            return Self::error(id, op, rd, ResponseCode::NotImp, None);
        }
        let [q] = msg.queries.as_slice() else {
            return Self::error(id, op, rd, ResponseCode::FormErr, None);
        };
        if matches!(q.query_type, RecordType::AXFR | RecordType::IXFR) {
            return Self::error(id, op, rd, ResponseCode::NotImp, Some(q));
        }
        if !matches!(q.query_class, DNSClass::IN | DNSClass::ANY) {
            return Self::error(id, op, rd, ResponseCode::Refused, Some(q));
        }
        let labels: Vec<String> = q
            .name
            .iter()
            .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
            .collect();
        let lookup = name::parse(&labels, &self.domain, &self.settings.datacenter);
        let mut built = {
            let index = self.catalog.read();
            answer::build(&index, &self.settings, &lookup, &q.name, q.query_type)
        };
        let mut rng = rand::rng();
        built.answers.shuffle(&mut rng);
        if self.settings.a_record_limit > 0 {
            let mut n = 0;
            built.answers.retain(|r| {
                let addr = matches!(r.record_type(), RecordType::A | RecordType::AAAA);
                n += usize::from(addr);
                !addr || n <= self.settings.a_record_limit
            });
        }
        let mut resp = Message::new(id, MessageType::Response, OpCode::Query);
        resp.metadata.authoritative = built.rcode != ResponseCode::Refused;
        resp.metadata.recursion_desired = rd;
        resp.metadata.response_code = built.rcode;
        resp.add_query(q.clone());
        let client_edns = msg
            .edns
            .as_ref()
            .map(|e| usize::from(e.max_payload()).max(512));
        if client_edns.is_some() {
            let mut e = Edns::new();
            e.set_max_payload(MAX_UDP as u16);
            resp.set_edns(e);
        }
        let limit = match (udp, client_edns) {
            (false, _) => usize::MAX,
            (true, Some(n)) => n.min(MAX_UDP),
            (true, None) => 512,
        };
        let mut trimmed = false;
        if udp && client_edns.is_none() && built.answers.len() > self.settings.udp_answer_limit {
            built.answers.truncate(self.settings.udp_answer_limit);
            trimmed = true;
        }
        resp.insert_answers(built.answers);
        resp.insert_authorities(built.authority);
        resp.insert_additionals(built.additionals);
        let mut bytes = resp.to_vec().ok()?;
        // Over the size: additionals first, then answers from the end.
        while bytes.len() > limit {
            if resp.additionals.pop().is_none() && resp.answers.pop().is_none() {
                break;
            }
            trimmed = true;
            bytes = resp.to_vec().ok()?;
        }
        if trimmed && self.settings.enable_truncate {
            resp.metadata.truncation = true;
            bytes = resp.to_vec().ok()?;
        }
        count(built.rcode);
        Some(bytes)
    }
}
