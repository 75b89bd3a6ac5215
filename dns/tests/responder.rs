//! The responder without a network: after random churn through the real
//! store and catalog, every service's A answer holds exactly the addresses
//! of the instances the discovery model calls healthy; and no packet,
//! random or a mutated valid query, makes it panic.

#![allow(clippy::unwrap_used, reason = "tests")]

use std::collections::BTreeSet;
use std::net::IpAddr;

use corro_catalog::{Catalog, Liveness, MemberState, Status};
use corro_dns::{DnsSettings, Responder};
use corro_store::{SqlValue, Store};
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use proptest::prelude::*;

mod common;
use common::open;

fn query(name: &str, qtype: RecordType) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = 7;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    m.to_vec().unwrap()
}

const NAMES: [&str; 3] = ["web", "db", "api"];
const STATUSES: [&str; 3] = ["passing", "warning", "critical"];

#[derive(Debug, Clone)]
enum Op {
    Service {
        node: u8,
        id: u8,
        name: u8,
        addr: Option<u8>,
    },
    Drop {
        node: u8,
        id: u8,
    },
    Check {
        node: u8,
        id: u8,
        status: u8,
    },
    Node {
        node: u8,
        actor: u8,
    },
    Members {
        down: Vec<bool>,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3u8, 0..3u8, 0..3u8, proptest::option::of(0..4u8)).prop_map(|(node, id, name, addr)| Op::Service { node, id, name, addr }),
        1 => (0..3u8, 0..3u8).prop_map(|(node, id)| Op::Drop { node, id }),
        3 => (0..3u8, 0..3u8, 0..3u8).prop_map(|(node, id, status)| Op::Check { node, id, status }),
        2 => (0..3u8, 0..3u8).prop_map(|(node, actor)| Op::Node { node, actor }),
        1 => proptest::collection::vec(any::<bool>(), 2).prop_map(|down| Op::Members { down }),
    ]
}

fn text(s: impl Into<String>) -> SqlValue {
    SqlValue::Text(s.into())
}

fn check(
    catalog: &Catalog,
    responder: &Responder,
    only_passing: bool,
) -> Result<(), TestCaseError> {
    for name in NAMES {
        let want: BTreeSet<IpAddr> = catalog
            .read()
            .instances(name)
            .iter()
            .filter(|i| i.liveness != Liveness::Down)
            .filter(|i| {
                i.status == Status::Passing || (i.status == Status::Warning && !only_passing)
            })
            .filter_map(|i| {
                i.service
                    .address
                    .parse()
                    .ok()
                    .or_else(|| i.node.as_ref().and_then(|n| n.address.parse().ok()))
            })
            .collect();
        let answer = responder
            .respond(
                &query(&format!("{name}.service.consul."), RecordType::A),
                false,
            )
            .unwrap();
        let m = Message::from_vec(&answer).unwrap();
        let got: BTreeSet<IpAddr> = m
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                _ => None,
            })
            .collect();
        prop_assert_eq!(&got, &want, "{}", name);
        let healthy = catalog.read().instances(name).iter().any(|i| {
            i.liveness != Liveness::Down
                && (i.status == Status::Passing || (i.status == Status::Warning && !only_passing))
        });
        if !healthy {
            prop_assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        }
        // SRV takes the same cached path: one record per healthy instance
        // (the addresses above may coincide; instances do not).
        let want_srv = catalog
            .read()
            .instances(name)
            .iter()
            .filter(|i| i.liveness != Liveness::Down)
            .filter(|i| {
                i.status == Status::Passing || (i.status == Status::Warning && !only_passing)
            })
            .count();
        let srv = responder
            .respond(
                &query(&format!("{name}.service.consul."), RecordType::SRV),
                false,
            )
            .unwrap();
        let m = Message::from_vec(&srv).unwrap();
        prop_assert_eq!(m.answers.len(), want_srv, "SRV of {}", name);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, .. ProptestConfig::default() })]

    #[test]
    fn answers_equal_the_discovery_model_after_churn(ops in proptest::collection::vec(op(), 1..40), only_passing in any::<bool>()) {
        let (_dir, store, catalog) = open();
        let responder = Responder::new(catalog.clone(), DnsSettings { only_passing, ..DnsSettings::default() });
        let write = |sql: &str, p: Vec<SqlValue>| { store.transact(|tx| tx.execute(sql, &p)).unwrap(); };
        for op in &ops {
            match op {
                Op::Service { node, id, name, addr } => write(
                    "INSERT OR REPLACE INTO consul_services (node, id, name, address, port) VALUES (?, ?, ?, ?, 80)",
                    vec![text(format!("n{node}")), text(format!("s{id}")), text(NAMES[*name as usize]),
                         text(addr.map(|a| format!("10.9.0.{a}")).unwrap_or_default())],
                ),
                Op::Drop { node, id } => write("DELETE FROM consul_services WHERE node = ? AND id = ?",
                    vec![text(format!("n{node}")), text(format!("s{id}"))]),
                Op::Check { node, id, status } => write(
                    "INSERT OR REPLACE INTO consul_checks (node, id, service_id, status) VALUES (?, ?, ?, ?)",
                    vec![text(format!("n{node}")), text(format!("c{id}")), text(format!("s{id}")), text(STATUSES[*status as usize])],
                ),
                Op::Node { node, actor } => write(
                    "INSERT OR REPLACE INTO consul_nodes (node, actor_id, address) VALUES (?, ?, ?)",
                    vec![text(format!("n{node}")), text(format!("a{actor}")), text(format!("10.0.0.{node}"))],
                ),
                Op::Members { down } => {
                    let m = down.iter().enumerate().map(|(i, d)| {
                        (format!("a{i}"), if *d { MemberState::Down } else { MemberState::Alive }, None)
                    }).collect();
                    catalog.set_membership(m, true).unwrap();
                }
            }
            // After every change: answers (cached or not) follow at once.
            catalog.process_pending().unwrap();
            check(&catalog, &responder, only_passing)?;
        }
        check(&catalog, &responder, only_passing)?;
    }

}

proptest! {
    #![proptest_config(ProptestConfig { cases: 5_000, .. ProptestConfig::default() })]

    #[test]
    fn random_packets_never_panic(packet in proptest::collection::vec(any::<u8>(), 0..600)) {
        let (_dir, _store, catalog) = shared();
        let r = Responder::new(catalog, DnsSettings::default());
        let _ = r.respond(&packet, true);
        let _ = r.respond(&packet, false);
    }

    #[test]
    fn mutated_queries_never_panic(flips in proptest::collection::vec((0..64usize, any::<u8>()), 1..8), cut in 0..64usize) {
        let (_dir, _store, catalog) = shared();
        let r = Responder::new(catalog, DnsSettings::default());
        let mut q = query("v1.web.service.dc1.consul.", RecordType::SRV);
        for (at, b) in flips {
            let n = q.len();
            q[at % n] ^= b;
        }
        q.truncate(q.len().saturating_sub(cut % 8));
        let _ = r.respond(&q, true);
    }
}

#[test]
fn cached_answers_carry_each_querys_id_and_letter_case() {
    let (_dir, store, catalog) = open();
    store
        .transact(|tx| {
            tx.execute("INSERT INTO consul_nodes (node, actor_id, address) VALUES ('n1', '', '10.0.0.1')", &[])?;
            tx.execute("INSERT INTO consul_services (node, id, name) VALUES ('n1', 's1', 'web'), ('n1', 's2', 'web')", &[])
        })
        .unwrap();
    catalog.process_pending().unwrap();
    let r = Responder::new(catalog, DnsSettings::default());
    for (id, name) in [
        (1u16, "WEB.service.consul."),
        (2, "web.SERVICE.Consul."),
        (3, "wEb.service.consul."),
    ] {
        let mut q = query(name, RecordType::A);
        q[..2].copy_from_slice(&id.to_be_bytes());
        q[2] &= !0x01;
        let a = r.respond(&q, true).unwrap();
        assert_eq!(&a[..2], &id.to_be_bytes());
        assert_eq!(a[2] & 0x01, 0, "RD copied from the query");
        assert_eq!(&a[12..q.len()], &q[12..], "the question as asked");
        let m = Message::from_vec(&a).unwrap();
        assert_eq!(m.answers.len(), 2);
        assert_eq!(m.queries[0].name.to_ascii(), name);
    }
}

/// One store and catalog for the fuzz cases (opening one per case is slow).
fn shared() -> (std::sync::Arc<tempfile::TempDir>, Store, Catalog) {
    static ONE: std::sync::OnceLock<(std::sync::Arc<tempfile::TempDir>, Store, Catalog)> =
        std::sync::OnceLock::new();
    ONE.get_or_init(|| {
        let (d, s, c) = open();
        (std::sync::Arc::new(d), s, c)
    })
    .clone()
}

fn insert_many(store: &Store, node: &str, name: &str, n: usize) {
    store
        .transact(|tx| {
            tx.execute(
                "INSERT INTO consul_nodes (node, actor_id, address) VALUES (?, '', '10.0.0.1')",
                &[text(node)],
            )?;
            for i in 0..n {
                tx.execute(
                    "INSERT INTO consul_services (node, id, name, address, port) VALUES (?, ?, ?, ?, ?)",
                    &[
                        text(node),
                        text(format!("s{i}")),
                        text(name),
                        text(format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256)),
                        SqlValue::Integer(1000 + i as i64),
                    ],
                )?;
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn a_tcp_answer_over_64_kib_is_cut_to_fit_with_tc_instead_of_dropped() {
    let (_dir, store, catalog) = open();
    // 5,000 A records of 16 bytes: 80 KB, over the 65,535 a TCP answer holds.
    insert_many(&store, "n1", "big", 5000);
    catalog.process_pending().unwrap();
    let r = Responder::new(catalog, DnsSettings::default());
    let a = r
        .respond(&query("big.service.consul.", RecordType::A), false)
        .unwrap();
    assert!(a.len() <= 65_535, "{}", a.len());
    let m = Message::from_vec(&a).unwrap();
    assert!(m.metadata.truncation, "TC set on a cut TCP answer");
    assert!(
        m.answers.len() > 3000 && m.answers.len() < 5000,
        "{}",
        m.answers.len()
    );
    // Over UDP with EDNS: cut to the client's size; no TC unless asked for.
    let mut q = Message::query();
    q.add_query(Query::query(
        Name::from_ascii("big.service.consul.").unwrap(),
        RecordType::A,
    ));
    let mut e = hickory_proto::op::Edns::new();
    e.set_max_payload(1232);
    q.set_edns(e);
    let a = r.respond(&q.to_vec().unwrap(), true).unwrap();
    assert!(a.len() <= 1232, "{}", a.len());
    let m = Message::from_vec(&a).unwrap();
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), (1232 - 12 - 23 - 11) / 16);
}

#[test]
fn srv_and_negative_answers_are_cached_and_follow_changes() {
    let (_dir, store, catalog) = open();
    insert_many(&store, "n1", "web", 3);
    catalog.process_pending().unwrap();
    let r = Responder::new(catalog.clone(), DnsSettings::default());
    let srv = |r: &Responder| {
        Message::from_vec(
            &r.respond(&query("web.service.consul.", RecordType::SRV), true)
                .unwrap(),
        )
        .unwrap()
    };
    let m = srv(&r);
    assert_eq!(m.answers.len(), 3);
    assert_eq!(m.additionals.len(), 3, "each SRV's own glue");
    assert!(r.cache_bytes() > 0);
    let built = r.builds();
    // Asked again: served from the cache (nothing new is built).
    for _ in 0..100 {
        assert_eq!(srv(&r).answers.len(), 3);
    }
    assert_eq!(r.builds(), built);
    // A missing name: NXDOMAIN with the SOA, then a registration shows up.
    let nx = |r: &Responder| {
        Message::from_vec(
            &r.respond(&query("api.service.consul.", RecordType::A), true)
                .unwrap(),
        )
        .unwrap()
    };
    let m = nx(&r);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(m.authorities.len(), 1);
    let built = r.builds();
    for _ in 0..100 {
        assert_eq!(nx(&r).metadata.response_code, ResponseCode::NXDomain);
    }
    assert_eq!(r.builds(), built, "negative answers are cached too");
    insert_many(&store, "n2", "api", 1);
    catalog.process_pending().unwrap();
    let m = nx(&r);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(m.answers.len(), 1);
    // And a change to web is seen at once.
    store
        .transact(|tx| {
            tx.execute(
                "DELETE FROM consul_services WHERE node = 'n1' AND id = 's0'",
                &[],
            )
        })
        .unwrap();
    catalog.process_pending().unwrap();
    assert_eq!(srv(&r).answers.len(), 2);
}

#[test]
fn udp_without_edns_drops_glue_before_answers_and_keeps_pairs() {
    let (_dir, store, catalog) = open();
    insert_many(&store, "n1", "web", 10);
    catalog.process_pending().unwrap();
    let r = Responder::new(
        catalog,
        DnsSettings {
            udp_answer_limit: 10,
            enable_truncate: true,
            ..DnsSettings::default()
        },
    );
    let a = r
        .respond(&query("web.service.consul.", RecordType::SRV), true)
        .unwrap();
    assert!(a.len() <= 512);
    let m = Message::from_vec(&a).unwrap();
    assert!(m.metadata.truncation);
    // Every glue record present belongs to an answer present.
    let targets: BTreeSet<String> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some(s.target.to_ascii()),
            _ => None,
        })
        .collect();
    for g in &m.additionals {
        assert!(targets.contains(&g.name.to_ascii()), "{}", g.name);
    }
    assert!(!m.answers.is_empty());
}

#[test]
fn a_record_the_encoder_refuses_is_servfail_not_silence() {
    let (_dir, store, catalog) = open();
    // A TXT string can hold 255 bytes; node meta over that cannot be encoded.
    let meta = format!("{{\"k\": \"{}\"}}", "v".repeat(400));
    store
        .transact(|tx| {
            tx.execute(
                "INSERT INTO consul_nodes (node, actor_id, address, meta) VALUES ('n1', '', '10.0.0.1', ?)",
                &[text(meta.clone())],
            )
        })
        .unwrap();
    catalog.process_pending().unwrap();
    let r = Responder::new(catalog, DnsSettings::default());
    let a = r
        .respond(&query("n1.node.consul.", RecordType::TXT), true)
        .unwrap();
    let m = Message::from_vec(&a).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(m.metadata.id, 7);
    // The A answer of the same node is unaffected.
    let a = r
        .respond(&query("n1.node.consul.", RecordType::A), true)
        .unwrap();
    assert_eq!(Message::from_vec(&a).unwrap().answers.len(), 1);
}

#[test]
fn a_flood_of_random_names_stays_within_the_cache_budget() {
    let (_dir, store, catalog) = open();
    insert_many(&store, "n1", "web", 3);
    catalog.process_pending().unwrap();
    let budget = 256 * 1024;
    let r = Responder::new(
        catalog,
        DnsSettings {
            cache_max_bytes: budget,
            ..DnsSettings::default()
        },
    );
    for i in 0..50_000u32 {
        let name = format!("x{i:08x}-{}.service.consul.", "y".repeat((i % 40) as usize));
        let a = r.respond(&query(&name, RecordType::A), true).unwrap();
        assert_eq!(
            Message::from_vec(&a).unwrap().metadata.response_code,
            ResponseCode::NXDomain
        );
        if i % 997 == 0 {
            assert!(r.cache_bytes() <= budget, "{} > {budget}", r.cache_bytes());
            let a = r
                .respond(&query("web.service.consul.", RecordType::A), true)
                .unwrap();
            assert_eq!(Message::from_vec(&a).unwrap().answers.len(), 3);
        }
    }
    assert!(r.cache_bytes() <= budget);
}

#[test]
fn an_upper_case_datacenter_name_answers_in_any_case_and_errors_carry_opt() {
    let (_dir, store, catalog) = open();
    insert_many(&store, "n1", "web", 2);
    catalog.process_pending().unwrap();
    let r = Responder::new(
        catalog,
        DnsSettings {
            datacenter: "DC1".into(),
            ..DnsSettings::default()
        },
    );
    for name in ["web.service.dc1.consul.", "web.service.DC1.consul."] {
        let a = r.respond(&query(name, RecordType::A), true).unwrap();
        assert_eq!(Message::from_vec(&a).unwrap().answers.len(), 2, "{name}");
    }
    // A refused class with EDNS: the answer has our OPT record too.
    let mut q = Message::query();
    q.add_query(Query::query(
        Name::from_ascii("web.service.consul.").unwrap(),
        RecordType::A,
    ));
    q.queries[0].query_class = hickory_proto::rr::DNSClass::CH;
    q.set_edns(hickory_proto::op::Edns::new());
    let a = Message::from_vec(&r.respond(&q.to_vec().unwrap(), true).unwrap()).unwrap();
    assert_eq!(a.metadata.response_code, ResponseCode::Refused);
    assert!(a.edns.is_some());
}
