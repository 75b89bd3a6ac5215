//! Agents under churn, CI-sized (issue 24, item 3; the full-size run is
//! `corro-bench churn --agents 50`): 8 real agents on loopback, each with
//! a service and a TTL check registered through the Consul agent API,
//! gossiping through relays that delay (5 ms) and drop (1 %) packets; four
//! times, one agent is killed with SIGKILL and left dead 12 s (the
//! previous one restarted on its addresses) while KV writes go to the live
//! agents in turn and every live agent's DNS is asked for the service. At
//! the end every agent holds identical tables, every acknowledged write is
//! in them, no running agent was ever declared down, and every agent's DNS
//! dropped each dead agent's instance before it came back (how fast, the
//! 5 s bar, is the bench's figure: tests do not fail on timing alone).

#![allow(clippy::unwrap_used, clippy::print_stdout, reason = "test code")]

use std::time::Duration;

use corro_testkit::churn::{ChurnConfig, run};
use corro_testkit::relay::Impairment;

#[test]
fn eight_agents_under_churn_converge_lose_no_write_and_flap_no_one() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ChurnConfig {
        agents: 8,
        periods: 4,
        // Victims stay dead 12 s: long enough for every agent to drop them
        // from DNS (a crash is seen in ~5 s at this size).
        every: Duration::from_secs(12),
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
    assert_eq!(r.kills, 4, "{r:?}");
    assert!(r.writes_acked > 300, "{r:?}");
    assert!(
        r.converged_after_restart.is_some(),
        "tables differ 60 s after the last restart: {r:?}"
    );
    assert_eq!(r.writes_missing, 0, "acknowledged writes lost: {r:?}");
    assert!(r.false_downs.is_empty(), "{:#?}", r.false_downs);
    // Restarted agents told their new identity was down (a known defect,
    // docs/SCALE.md) are reported, not asserted.
    assert_eq!(r.unclassified_downs, 0, "{r:?}");
    assert!(r.dns_questions > 100, "{r:?}");
    // Every agent's DNS dropped every dead agent's instance before that
    // agent came back (how fast is the bench's figure, not asserted).
    assert!(r.removals > 0, "{r:?}");
    assert_eq!(
        r.not_removed, 0,
        "a dead agent stayed in some DNS answers until it restarted: {r:?}"
    );
}
