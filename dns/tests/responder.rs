//! The responder without a network: after random churn through the real
//! store and catalog, every service's A answer holds exactly the addresses
//! of the instances the discovery model calls healthy; and no packet,
//! random or a mutated valid query, makes it panic.

#![allow(clippy::unwrap_used, reason = "tests")]

use std::collections::BTreeSet;
use std::net::IpAddr;

use corro_catalog::{Catalog, Liveness, MemberState, Status};
use corro_dns::{DnsSettings, Responder};
use corro_store::{SqlValue, Store, StoreOptions};
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use proptest::prelude::*;

fn open() -> (tempfile::TempDir, Store, Catalog) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("state.db"), StoreOptions::default()).unwrap();
    store
        .apply_schema_paths(&[
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/schema/consul.sql")
        ])
        .unwrap();
    let catalog = Catalog::open(&store, None).unwrap();
    (dir, store, catalog)
}

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
