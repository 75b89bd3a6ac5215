//! One query packet in, one answer packet out.
//!
//! Anything that is not a well-formed single question gets a response code
//! instead of an answer: a packet too short for a header, or itself a
//! response, is dropped; one that does not parse is FORMERR (with its ID);
//! another opcode, or a zone transfer (AXFR/IXFR), is NOTIMP; a class other
//! than IN/ANY, or a name outside the domain (and outside
//! `in-addr.arpa`/`ip6.arpa`), is REFUSED. Every outcome is counted
//! (`corro_dns_responses_total{rcode}`, `corro_dns_dropped_total`).
//!
//! **Encoded once.** The answer to a question (its lower-case name, type
//! and class) is built from the catalog and encoded record by record once,
//! then kept in a cache valid while the catalog index of the lookup's
//! topics is unchanged (so a change is never served stale once the catalog
//! has it). Every question type takes this path: A, AAAA, SRV with its glue,
//! TXT, PTR, the apex, and negative answers (NXDOMAIN or NODATA with the
//! SOA), so a client asking for a missing name a thousand times a second
//! costs one build. Answer records whose owner is the question are stored
//! with a pointer to the question, so every response echoes the letter
//! case the client asked with.
//!
//! **Per query**, from the encoded records: the answers are shuffled, cut
//! to `a_record_limit` addresses, cut to `udp_answer_limit` for UDP without
//! EDNS, then packed to the size limit (512 bytes for UDP without EDNS, the
//! client's EDNS size up to 4096, 65,535 over TCP): answers first, in
//! order, then each included answer's glue and the other additionals. A
//! record that does not fit is left out with everything after it (glue is
//! left out before answers), which is linear in the records and never
//! re-encodes anything. TC is set on a trimmed UDP answer only when
//! `enable_truncate` is on (as Consul), and always on a TCP answer that
//! had to be cut to fit 65,535 bytes.
//!
//! **Bounded.** The cache is bounded in bytes (`[dns] cache_max_bytes`) and
//! scan resistant: a flood of random names cycles through a small
//! probationary part and does not evict the names clients keep asking for.
//! A record the encoder refuses makes the answer SERVFAIL (counted in
//! `corro_dns_encode_errors_total`), never a silently dropped packet.

use std::borrow::Cow;
use std::sync::Arc;

use corro_catalog::{Catalog, Topic};
use hickory_proto::op::{Message, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, Record, RecordType};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder, NameEncoding};
use rand::seq::SliceRandom;

use crate::answer;
use crate::name;
use crate::settings::DnsSettings;

/// Largest UDP answer this responder sends to an EDNS client.
const MAX_UDP: usize = 4096;
/// Largest answer over TCP (the length prefix is 16 bits).
const MAX_TCP: usize = 65_535;
/// Bookkeeping counted per cached record on top of its bytes.
const RECORD_OVERHEAD: u64 = 48;
/// Bookkeeping counted per cached answer.
const ANSWER_OVERHEAD: u64 = 128;

/// One answer record and the additional record only it needs.
struct AnswerRecord {
    rec: Box<[u8]>,
    /// An A or AAAA record (subject to `a_record_limit`).
    addr: bool,
    /// Index into [`Compiled::glue`] (answers sharing a target share it).
    glue: Option<usize>,
}

/// An answer, encoded record by record.
struct Compiled {
    /// The topic index it was built at (0: depends on no topic).
    at: u64,
    rcode: ResponseCode,
    answers: Vec<AnswerRecord>,
    /// Distinct glue records of the answers.
    glue: Vec<Box<[u8]>>,
    authority: Vec<Box<[u8]>>,
    additionals: Vec<Box<[u8]>>,
    weight: u64,
}

#[derive(Clone)]
struct Weigh;

impl quick_cache::Weighter<Box<[u8]>, Arc<Compiled>> for Weigh {
    fn weight(&self, key: &Box<[u8]>, val: &Arc<Compiled>) -> u64 {
        key.len() as u64 + val.weight
    }
}

#[derive(Clone)]
struct CountEvictions;

impl quick_cache::Lifecycle<Box<[u8]>, Arc<Compiled>> for CountEvictions {
    type RequestState = ();
    fn begin_request(&self) -> Self::RequestState {}
    fn on_evict(&self, _: &mut (), _: Box<[u8]>, _: Arc<Compiled>) {
        metrics::counter!("corro_dns_cache_evictions_total").increment(1);
    }
}

type Cache = quick_cache::sync::Cache<
    Box<[u8]>,
    Arc<Compiled>,
    Weigh,
    quick_cache::DefaultHashBuilder,
    CountEvictions,
>;

/// Answers DNS packets from the catalog (cheap to clone).
#[derive(Clone)]
pub struct Responder {
    catalog: Catalog,
    settings: Arc<DnsSettings>,
    domain: Arc<[String]>,
    cache: Arc<Cache>,
    builds: Arc<std::sync::atomic::AtomicU64>,
}

/// A query's one question, parsed.
struct Question<'a> {
    id: u16,
    rd: bool,
    /// The question section as asked (name, type, class), echoed back.
    wire: Cow<'a, [u8]>,
    /// Lower-case name in wire form, type and class: the cache key.
    key: Vec<u8>,
    labels: Vec<String>,
    qtype: RecordType,
    qclass: DNSClass,
    /// The client's EDNS payload size (at least 512), when it sent OPT.
    edns: Option<usize>,
}

fn u16_at(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]))
}

/// Parses a query that is one uncompressed question and at most one OPT
/// record (what resolvers send); `None` leaves it to [`parse_full`].
fn parse_plain(packet: &[u8]) -> Option<Question<'_>> {
    if u16_at(packet, 4)? != 1
        || u16_at(packet, 6)? != 0
        || u16_at(packet, 8)? != 0
        || u16_at(packet, 10)? > 1
    {
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
        if len > 63 || i + 1 + len > packet.len() || i + 1 + len - 12 > 254 {
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
    let qtype = RecordType::from(u16::from_be_bytes([tail[0], tail[1]]));
    let qclass = DNSClass::from(u16::from_be_bytes([tail[2], tail[3]]));
    let mut edns = None;
    if u16_at(packet, 10)? == 1 {
        // OPT: root name, type 41, class = payload size, ttl, rdata.
        let opt = packet.get(q_end..q_end + 11)?;
        if opt[0] != 0 || u16::from_be_bytes([opt[1], opt[2]]) != 41 {
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
    Some(Question {
        id: u16::from_be_bytes([packet[0], packet[1]]),
        rd: packet[2] & 0x01 != 0,
        wire: Cow::Borrowed(&packet[12..q_end]),
        key,
        labels,
        qtype,
        qclass,
        edns,
    })
}

/// Parses any other well-formed query with hickory; `Err` is the response
/// code to answer with (FORMERR).
fn parse_full(packet: &[u8]) -> Result<Question<'static>, ResponseCode> {
    let msg = Message::from_vec(packet).map_err(|_| ResponseCode::FormErr)?;
    let [q] = msg.queries.as_slice() else {
        return Err(ResponseCode::FormErr);
    };
    let mut wire = Vec::new();
    {
        let mut e = BinEncoder::new(&mut wire);
        e.set_name_encoding(NameEncoding::Uncompressed);
        q.emit(&mut e).map_err(|_| ResponseCode::FormErr)?;
    }
    let labels: Vec<String> = q
        .name
        .iter()
        .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
        .collect();
    let mut key = Vec::with_capacity(wire.len());
    for l in q.name.iter() {
        key.push(l.len() as u8);
        key.extend(l.iter().map(u8::to_ascii_lowercase));
    }
    key.push(0);
    key.extend_from_slice(&u16::from(q.query_type).to_be_bytes());
    key.extend_from_slice(&u16::from(q.query_class).to_be_bytes());
    Ok(Question {
        id: msg.metadata.id,
        rd: msg.metadata.recursion_desired,
        wire: Cow::Owned(wire),
        key,
        labels,
        qtype: q.query_type,
        qclass: q.query_class,
        edns: msg
            .edns
            .as_ref()
            .map(|e| usize::from(e.max_payload()).max(512)),
    })
}

/// The catalog topics an answer to `lookup` depends on (none: it depends
/// only on the settings).
fn topics(lookup: &name::Lookup, local_node: &str) -> Vec<Topic> {
    use name::Lookup;
    match lookup {
        Lookup::Service { name, .. } => vec![Topic::service(name)],
        Lookup::Node(n) => vec![Topic::node(n)],
        Lookup::Apex => vec![Topic::node(local_node)],
        Lookup::Ptr(_) => vec![Topic::Nodes, Topic::Services],
        Lookup::Addr(_) | Lookup::Unknown | Lookup::Outside => Vec::new(),
    }
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

/// A record in wire form, names uncompressed and in their own case.
fn encode(r: &Record) -> Result<Vec<u8>, hickory_proto::ProtoError> {
    let mut buf = Vec::new();
    let mut e = BinEncoder::new(&mut buf);
    e.set_name_encoding(NameEncoding::Uncompressed);
    r.emit(&mut e)?;
    Ok(buf)
}

/// An answer record: one owned by the question (built with the root as
/// owner) points at the question instead.
fn encode_answer(r: &Record) -> Result<Box<[u8]>, hickory_proto::ProtoError> {
    let bytes = encode(r)?;
    if r.name.is_root() && bytes.first() == Some(&0) {
        let mut out = Vec::with_capacity(bytes.len() + 1);
        out.extend_from_slice(&[0xc0, 0x0c]);
        out.extend_from_slice(&bytes[1..]);
        Ok(out.into())
    } else {
        Ok(bytes.into())
    }
}

fn compile(built: answer::Built, at: u64) -> Result<Compiled, hickory_proto::ProtoError> {
    let mut answers = Vec::with_capacity(built.answers.len());
    let mut glue: Vec<Box<[u8]>> = Vec::new();
    let mut glue_at: std::collections::HashMap<Vec<u8>, usize> = Default::default();
    let mut weight = ANSWER_OVERHEAD;
    for (r, g) in &built.answers {
        let rec = encode_answer(r)?;
        weight += rec.len() as u64 + RECORD_OVERHEAD;
        let g = match g {
            None => None,
            Some(g) => {
                let bytes = encode(g)?;
                let next = glue.len();
                let at = *glue_at.entry(bytes.clone()).or_insert(next);
                if at == next {
                    weight += bytes.len() as u64 + RECORD_OVERHEAD;
                    glue.push(bytes.into_boxed_slice());
                }
                Some(at)
            }
        };
        answers.push(AnswerRecord {
            rec,
            addr: matches!(r.record_type(), RecordType::A | RecordType::AAAA),
            glue: g,
        });
    }
    let mut boxed = |rs: &[Record]| -> Result<Vec<Box<[u8]>>, hickory_proto::ProtoError> {
        rs.iter()
            .map(|r| {
                let b = encode(r)?;
                weight += b.len() as u64 + RECORD_OVERHEAD;
                Ok(b.into_boxed_slice())
            })
            .collect()
    };
    let authority = boxed(&built.authority)?;
    let additionals = boxed(&built.additionals)?;
    Ok(Compiled {
        at,
        rcode: built.rcode,
        answers,
        glue,
        authority,
        additionals,
        weight,
    })
}

/// Our OPT record: root owner, type 41, our payload size, no flags, no data.
const OPT: [u8; 11] = [
    0,
    0,
    41,
    (MAX_UDP >> 8) as u8,
    MAX_UDP as u8,
    0,
    0,
    0,
    0,
    0,
    0,
];

/// A response with only a header (and the question when known, with our
/// OPT record when the query had one).
fn error_reply(
    id: u16,
    op: OpCode,
    rd: bool,
    rcode: ResponseCode,
    q: Option<&Question<'_>>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + q.map_or(0, |q| q.wire.len() + OPT.len()));
    out.extend_from_slice(&id.to_be_bytes());
    out.push(0x80 | (u8::from(op) << 3) | u8::from(rd));
    out.push(u16::from(rcode) as u8 & 0x0f);
    out.extend_from_slice(&u16::from(q.is_some()).to_be_bytes());
    out.extend_from_slice(&[0; 4]);
    let opt = q.is_some_and(|q| q.edns.is_some());
    out.extend_from_slice(&u16::from(opt).to_be_bytes());
    if let Some(q) = q {
        out.extend_from_slice(&q.wire);
    }
    if opt {
        out.extend_from_slice(&OPT);
    }
    count(rcode);
    out
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
        // Question labels are compared lower-case.
        settings.datacenter = settings.datacenter.to_lowercase();
        let budget = settings.cache_max_bytes.max(64 * 1024);
        let options = quick_cache::OptionsBuilder::new()
            .estimated_items_capacity(((budget / 512) as usize).clamp(256, 1 << 20))
            .weight_capacity(budget)
            .hot_allocation(0.9)
            // Few shards: each holds a share of the budget, and an answer
            // larger than a shard's share would never be cached (a service
            // with thousands of instances); four keep contention low.
            .shards(4)
            .build();
        let cache = match options {
            Ok(o) => Cache::with_options(o, Weigh, Default::default(), CountEvictions),
            Err(_) => Cache::with(4096, budget, Weigh, Default::default(), CountEvictions),
        };
        Responder {
            catalog,
            settings: Arc::new(settings),
            domain: domain.into(),
            cache: Arc::new(cache),
            builds: Arc::default(),
        }
    }

    pub fn settings(&self) -> &DnsSettings {
        &self.settings
    }

    /// Bytes the answer cache holds (records, keys and bookkeeping).
    pub fn cache_bytes(&self) -> u64 {
        self.cache.weight()
    }

    /// Answers built so far (cache misses).
    pub fn builds(&self) -> u64 {
        self.builds.load(std::sync::atomic::Ordering::Relaxed)
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
        if op != OpCode::Query {
            return Some(error_reply(id, op, rd, ResponseCode::NotImp, None));
        }
        let q = match parse_plain(packet).map_or_else(|| parse_full(packet), Ok) {
            Ok(q) => q,
            Err(rcode) => return Some(error_reply(id, op, rd, rcode, None)),
        };
        if matches!(q.qtype, RecordType::AXFR | RecordType::IXFR) {
            return Some(error_reply(id, op, rd, ResponseCode::NotImp, Some(&q)));
        }
        if !matches!(q.qclass, DNSClass::IN | DNSClass::ANY) {
            return Some(error_reply(id, op, rd, ResponseCode::Refused, Some(&q)));
        }
        let c = self.compiled(&q);
        Some(self.assemble(&q, &c, udp))
    }

    /// The encoded answer to `q`: cached, or built now and cached.
    fn compiled(&self, q: &Question<'_>) -> Arc<Compiled> {
        let lookup = name::parse(&q.labels, &self.domain, &self.settings.datacenter);
        let topics = topics(&lookup, &self.settings.node_name);
        let (at, built) = {
            let index = self.catalog.read();
            let (at, serial) = if topics.is_empty() {
                (0, index.current())
            } else {
                let at = index.topic_index(&topics);
                (at, at)
            };
            if let Some(c) = self.cache.get(&q.key[..])
                && c.at == at
            {
                return c;
            }
            let built = answer::build(
                &index,
                &self.settings,
                &lookup,
                &Name::root(),
                q.qtype,
                serial as u32,
            );
            (at, built)
        };
        metrics::counter!("corro_dns_cache_misses_total").increment(1);
        self.builds
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let c = match compile(built, at) {
            Ok(c) => c,
            Err(e) => {
                metrics::counter!("corro_dns_encode_errors_total").increment(1);
                tracing::warn!(error = %e, name = ?q.labels, qtype = %q.qtype, "dns: an answer record could not be encoded; answering SERVFAIL");
                Compiled {
                    at,
                    rcode: ResponseCode::ServFail,
                    answers: Vec::new(),
                    glue: Vec::new(),
                    authority: Vec::new(),
                    additionals: Vec::new(),
                    weight: ANSWER_OVERHEAD,
                }
            }
        };
        let c = Arc::new(c);
        self.cache
            .insert(q.key.clone().into_boxed_slice(), c.clone());
        metrics::gauge!("corro_dns_cache_bytes").set(self.cache.weight() as f64);
        c
    }

    /// This query's response from the encoded answer: shuffled, limited
    /// and packed as the module doc says.
    fn assemble(&self, q: &Question<'_>, c: &Compiled, udp: bool) -> Vec<u8> {
        let s = &self.settings;
        let limit = match (udp, q.edns) {
            (false, _) => MAX_TCP,
            (true, Some(n)) => n.min(MAX_UDP),
            (true, None) => 512,
        };
        let mut order: Vec<usize> = (0..c.answers.len()).collect();
        order.shuffle(&mut rand::rng());
        if s.a_record_limit > 0 {
            let mut n = 0;
            order.retain(|&i| {
                let addr = c.answers[i].addr;
                n += usize::from(addr);
                !addr || n <= s.a_record_limit
            });
        }
        let mut trimmed = false;
        if udp && q.edns.is_none() && order.len() > s.udp_answer_limit {
            order.truncate(s.udp_answer_limit);
            trimmed = true;
        }
        let opt_len = if q.edns.is_some() { 11 } else { 0 };
        let auth_len: usize = c.authority.iter().map(|r| r.len()).sum();
        let mut room = limit.saturating_sub(12 + q.wire.len() + auth_len + opt_len);
        let mut answers: Vec<&[u8]> = Vec::with_capacity(order.len());
        let mut glue: Vec<usize> = Vec::new();
        let mut glued = vec![false; c.glue.len()];
        for &i in &order {
            let rec = &c.answers[i].rec;
            if rec.len() > room {
                trimmed = true;
                break;
            }
            room -= rec.len();
            answers.push(rec);
            if let Some(g) = c.answers[i].glue
                && !std::mem::replace(&mut glued[g], true)
            {
                glue.push(g);
            }
        }
        let mut additionals: Vec<&[u8]> = Vec::new();
        for g in glue
            .into_iter()
            .map(|g| &c.glue[g][..])
            .chain(c.additionals.iter().map(|a| &a[..]))
        {
            if g.len() > room {
                trimmed = true;
                break;
            }
            room -= g.len();
            additionals.push(g);
        }
        let tc = trimmed && (!udp || s.enable_truncate);
        let mut out = Vec::with_capacity(limit.min(
            12 + q.wire.len()
                + answers.iter().map(|r| r.len()).sum::<usize>()
                + auth_len
                + additionals.iter().map(|r| r.len()).sum::<usize>()
                + opt_len,
        ));
        out.extend_from_slice(&q.id.to_be_bytes());
        let aa = c.rcode != ResponseCode::Refused;
        out.push(0x80 | (u8::from(aa) << 2) | (u8::from(tc) << 1) | u8::from(q.rd));
        out.push(u16::from(c.rcode) as u8 & 0x0f);
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&(answers.len() as u16).to_be_bytes());
        out.extend_from_slice(&(c.authority.len() as u16).to_be_bytes());
        out.extend_from_slice(
            &((additionals.len() + usize::from(opt_len > 0)) as u16).to_be_bytes(),
        );
        out.extend_from_slice(&q.wire);
        for r in answers {
            out.extend_from_slice(r);
        }
        for r in &c.authority {
            out.extend_from_slice(r);
        }
        for r in additionals {
            out.extend_from_slice(r);
        }
        if opt_len > 0 {
            out.extend_from_slice(&OPT);
        }
        count(c.rcode);
        out
    }
}
