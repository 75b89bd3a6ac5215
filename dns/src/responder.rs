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
//!
//! **Fast path.** A plain question (one name without compression, at most
//! an OPT record) whose answer is a run of A or AAAA records is answered
//! from a cache of encoded responses, keyed by the lower-case question, the
//! transport's size limit and EDNS, and valid while the catalog index of
//! the lookup's topics is unchanged (so a change is never served stale
//! once the catalog has it). A hit costs the key, one index lookup, a copy,
//! patching the ID, the RD bit and the question's letter case, and
//! shuffling the fixed-size answer records in place. Everything else
//! (SRV, trimmed answers, errors) takes the full path.

use std::collections::HashMap;
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

/// Encoded answers kept at most (emptied when full).
const CACHE_ENTRIES: usize = 65_536;

/// An encoded answer whose A/AAAA records can be shuffled in place.
struct Cached {
    index: u64,
    bytes: Vec<u8>,
    /// Where the answer records start, their length and count.
    at: usize,
    rr: usize,
    count: usize,
}

/// Answers DNS packets from the catalog (cheap to clone).
#[derive(Clone)]
pub struct Responder {
    catalog: Catalog,
    settings: Arc<DnsSettings>,
    domain: Arc<[String]>,
    cache: Arc<parking_lot::Mutex<HashMap<Vec<u8>, Cached>>>,
}

/// The parts of a plain question the fast path needs.
struct Plain<'a> {
    /// Lower-case question (name, type, class) + size limit + EDNS flag.
    key: Vec<u8>,
    /// The question as sent (for its letter case).
    question: &'a [u8],
    labels: Vec<String>,
    qtype: u16,
}

/// Parses a query that is one uncompressed question and at most one OPT
/// record; `None` sends it down the full path.
fn plain(packet: &[u8], udp: bool) -> Option<Plain<'_>> {
    let count = |i: usize| u16::from_be_bytes([packet[i], packet[i + 1]]);
    if count(4) != 1 || count(6) != 0 || count(8) != 0 || count(10) > 1 {
        return None;
    }
    let mut i = 12;
    let mut labels = Vec::new();
    let mut key = Vec::with_capacity(64);
    loop {
        let len = usize::from(*packet.get(i)?);
        if len == 0 {
            break;
        }
        if len > 63 || i + 1 + len > packet.len() || i - 12 > 255 {
            return None;
        }
        let label = packet[i + 1..i + 1 + len].to_ascii_lowercase();
        key.push(len as u8);
        key.extend_from_slice(&label);
        labels.push(String::from_utf8(label).ok()?);
        i += 1 + len;
    }
    let q_end = i + 5;
    let tail = packet.get(i + 1..q_end)?;
    key.push(0);
    key.extend_from_slice(tail);
    let qtype = u16::from_be_bytes([tail[0], tail[1]]);
    let qclass = u16::from_be_bytes([tail[2], tail[3]]);
    if qclass != 1 {
        return None;
    }
    let mut edns = None;
    if count(10) == 1 {
        // OPT: root name, type 41, class = payload size, ttl, rdata.
        let opt = packet.get(q_end..q_end + 11)?;
        if opt[0] != 0 || u16::from_be_bytes([opt[1], opt[2]]) != 41 || opt[5] != 0 || opt[6] != 0 {
            return None;
        }
        let rdlen = usize::from(u16::from_be_bytes([opt[9], opt[10]]));
        if q_end + 11 + rdlen != packet.len() {
            return None;
        }
        edns = Some(usize::from(u16::from_be_bytes([opt[3], opt[4]])).max(512));
    } else if q_end != packet.len() {
        return None;
    }
    let limit = match (udp, edns) {
        (false, _) => usize::MAX,
        (true, Some(n)) => n.min(MAX_UDP),
        (true, None) => 512,
    };
    key.extend_from_slice(&(limit as u64).to_be_bytes());
    key.push(u8::from(edns.is_some()));
    Some(Plain {
        key,
        question: &packet[12..q_end],
        labels,
        qtype,
    })
}

/// The catalog topics an answer to `lookup` depends on (`None`: not cached).
fn topics(lookup: &name::Lookup) -> Option<Vec<corro_catalog::Topic>> {
    use corro_catalog::Topic;
    match lookup {
        name::Lookup::Service { name, .. } => Some(vec![Topic::service(name)]),
        name::Lookup::Node(n) => Some(vec![Topic::node(n)]),
        _ => None,
    }
}

/// Where a response's answers start and, when they are all A (or all
/// AAAA) records named by a pointer to the question, their size.
fn shuffleable(bytes: &[u8], question_len: usize) -> Option<(usize, usize, usize)> {
    let count = usize::from(u16::from_be_bytes([*bytes.get(6)?, *bytes.get(7)?]));
    let at = 12 + question_len;
    let rr = match bytes.get(at + 2..at + 4)? {
        [0, 1] => 16,
        [0, 28] => 28,
        _ => return None,
    };
    for k in 0..count {
        let r = bytes.get(at + k * rr..at + (k + 1) * rr)?;
        if r[..2] != [0xc0, 0x0c] || r[2..4] != bytes[at + 2..at + 4] {
            return None;
        }
    }
    Some((at, rr, count))
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
            cache: Arc::default(),
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
        let fast = if op == OpCode::Query {
            plain(packet, udp)
        } else {
            None
        };
        let mut store_as = None;
        if let Some(p) = &fast {
            let lookup = name::parse(&p.labels, &self.domain, &self.settings.datacenter);
            let want = matches!(p.qtype, 1 | 28);
            if let (true, Some(t)) = (want, topics(&lookup)) {
                let index = self.catalog.read().topic_index(&t);
                if let Some(hit) = self.hit(&p.key, index, packet, p.question) {
                    count(ResponseCode::NoError);
                    return Some(hit);
                }
                store_as = Some(index);
            }
        }
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
        // A subset (record limits, trimming) must be drawn anew per query,
        // so such answers are never cached.
        let mut subset = false;
        if self.settings.a_record_limit > 0 {
            let before = built.answers.len();
            let mut n = 0;
            built.answers.retain(|r| {
                let addr = matches!(r.record_type(), RecordType::A | RecordType::AAAA);
                n += usize::from(addr);
                !addr || n <= self.settings.a_record_limit
            });
            subset = built.answers.len() < before;
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
        if let (Some(index), Some(p), false) = (store_as, &fast, trimmed || subset)
            && built.rcode == ResponseCode::NoError
            && let Some((at, rr, count)) = shuffleable(&bytes, p.question.len())
        {
            let mut cache = self.cache.lock();
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
            cache.insert(
                p.key.clone(),
                Cached {
                    index,
                    bytes: bytes.clone(),
                    at,
                    rr,
                    count,
                },
            );
        }
        Some(bytes)
    }

    /// The cached answer for `key` at catalog index `index`, made this
    /// query's: its ID, RD bit and question case, answers reshuffled.
    fn hit(&self, key: &[u8], index: u64, packet: &[u8], question: &[u8]) -> Option<Vec<u8>> {
        let mut out = {
            let cache = self.cache.lock();
            let c = cache.get(key).filter(|c| c.index == index)?;
            let mut out = c.bytes.clone();
            let mut rng = rand::rng();
            for i in (1..c.count).rev() {
                let j = rand::Rng::random_range(&mut rng, 0..=i);
                if i != j {
                    let (a, b) = (c.at + i * c.rr, c.at + j * c.rr);
                    for k in 0..c.rr {
                        out.swap(a + k, b + k);
                    }
                }
            }
            out
        };
        out[..2].copy_from_slice(&packet[..2]);
        out[2] = (out[2] & !0x01) | (packet[2] & 0x01);
        out.get_mut(12..12 + question.len())?
            .copy_from_slice(question);
        Some(out)
    }
}
