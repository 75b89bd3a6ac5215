//! Agents under churn, CI-sized (issue 24, item 3; the full-size run is
//! `corro-bench churn --agents 50`): 8 real agents on loopback, each with
//! a service and a TTL check registered through the Consul agent API,
//! gossiping through relays that delay (5 ms) and drop (1 %) packets; for
//! 30 s one agent is killed with SIGKILL every 5 s (the previous one
//! restarted on its addresses) while KV writes go to random live agents
//! and every live agent's DNS is asked for the service. At the end every
//! agent holds identical tables, every acknowledged write is in them, no
//! running agent was ever declared down, and no DNS answer named a dead
//! agent's instance for long (the 5 s bar itself is measured by the
//! bench, not asserted here: tests do not fail on timing alone).

#![allow(clippy::unwrap_used, clippy::print_stdout, reason = "test code")]

use std::time::Duration;

use corro_testkit::churn::{ChurnConfig, run};
use corro_testkit::relay::Impairment;

#[test]
fn eight_agents_under_churn_converge_lose_no_write_and_flap_no_one() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ChurnConfig {
        agents: 8,
        churn: Duration::from_secs(30),
        every: Duration::from_secs(5),
        share: 0.1,
        write_every: Duration::from_millis(50),
        converge_limit: Duration::from_secs(60),
        // Gossip through relays: 5 ms each way, 1 % of packets dropped.
        impairment: Some(Impairment {
            delay: Duration::from_millis(5),
            loss: 0.01,
        }),
    };
    let r = run(dir.path(), &cfg).unwrap();
    println!("{r:#?}");
    assert!(r.kills >= 5, "{r:?}");
    assert!(r.writes_acked > 100, "{r:?}");
    assert!(
        r.converged_after.is_some(),
        "tables differ 60 s after the last write: {r:?}"
    );
    assert_eq!(r.writes_missing, 0, "acknowledged writes lost: {r:?}");
    assert!(r.false_downs.is_empty(), "{:#?}", r.false_downs);
    assert!(r.dns_questions > 100, "{r:?}");
    // A dead agent's instance leaves every DNS answer (generous bound: the
    // bench measures the 5 s bar).
    assert!(r.max_stale < Duration::from_secs(20), "{r:?}");
}
