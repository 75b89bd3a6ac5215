//! How fast and at what cost a write spreads
//! ([`corro_replication::sim::spread`]: the agents' broadcast decisions and
//! sync schedule in virtual time). Deterministic per seed.

#![allow(clippy::unwrap_used, clippy::print_stdout, reason = "test code")]

use corro_replication::sim::spread::{SpreadConfig, simulate};

fn cfg(
    nodes: usize,
    writes_per_sec: f64,
    latency: (u64, u64),
    loss: f64,
    seed: u64,
) -> SpreadConfig {
    SpreadConfig {
        nodes,
        seed,
        writes_per_sec,
        warm_ms: 5_000,
        measure_ms: 10_000,
        drain_ms: 60_000,
        latency,
        loss,
        digest: false,
    }
}

/// With 100 ms links and 1 % of sends failing, a write reaches 99 % of
/// 1,000 nodes within 2 s at p99 by broadcast alone; the few nodes a
/// broadcast misses (about e^-fanout of writes miss one) get it from sync
/// within seconds, and every write gets everywhere.
#[test]
fn a_write_reaches_a_thousand_nodes_within_two_seconds_at_p99() {
    for seed in 1..=3 {
        let r = simulate(cfg(1_000, 20.0, (90, 110), 0.01, seed));
        println!("1000 nodes, seed {seed}: {r:?}");
        assert!(r.writes > 100);
        assert_eq!(r.unreached, 0, "seed {seed}");
        assert!(r.reach_99.1 < 2_000, "seed {seed}: p99 {} ms", r.reach_99.1);
        assert!(
            r.reach_all.2 < 10_000,
            "seed {seed}: max {} ms",
            r.reach_all.2
        );
        assert!(
            r.repaired_per_write < 0.02,
            "seed {seed}: {}",
            r.repaired_per_write
        );
        assert!(r.by_sync > 0.0, "lost sends are repaired by sync");
        // The epidemic's redundancy: about fanout - 1 extra receipts per
        // delivery (ln 999 + 5 = 12 sends per node).
        assert!(
            (9.0..13.0).contains(&r.redundant_per_delivery),
            "{}",
            r.redundant_per_delivery
        );
    }
}

/// Link delays that vary (1-20 ms): a member first reached along a long
/// chain of fast links still forwards (the hop count does not run out),
/// so almost every write reaches every node by broadcast.
#[test]
fn varying_link_delays_do_not_stop_forwarding() {
    let r = simulate(cfg(1_000, 50.0, (1, 20), 0.0, 5));
    println!("1000 nodes, 1-20 ms: {r:?}");
    assert!(r.writes > 400);
    // Every member forwards once: n x fanout sends per write.
    assert!(
        r.broadcasts_per_write > 11_900.0,
        "{}",
        r.broadcasts_per_write
    );
    assert!(r.repaired_per_write < 0.02, "{}", r.repaired_per_write);
    assert!(r.reach_all.1 < 100, "p99 {} ms", r.reach_all.1);
}

/// Small clusters: one direct message per member, one hop, nothing
/// redundant.
#[test]
fn a_write_reaches_twenty_nodes_in_one_hop() {
    let r = simulate(cfg(20, 20.0, (95, 105), 0.0, 9));
    println!("20 nodes: {r:?}");
    assert_eq!(r.broadcasts_per_write, 19.0);
    assert_eq!(r.redundant_per_delivery, 0.0);
    assert!(r.reach_all.2 <= 105, "{}", r.reach_all.2);
    assert_eq!(r.by_sync, 0.0);
}

/// Sync costs what its opening states weigh: one state per exchange each
/// way, about 3 exchanges per round, a round every 1-4 s; the state of a
/// node grows with the number of actors (one per agent). (Whole-state
/// rounds: what builds before digest rounds do, and the first round with
/// each peer.)
#[test]
fn sync_state_bytes_grow_with_the_cluster() {
    let small = simulate(cfg(100, 10.0, (1, 20), 0.0, 4));
    let big = simulate(cfg(1_000, 10.0, (1, 20), 0.0, 4));
    println!("100: {small:?}\n1000: {big:?}");
    assert!(big.state_frame > 9 * small.state_frame);
    assert!(big.state_bytes > 9.0 * small.state_bytes);
    // Idle rounds back off to the 4 s ceiling (jittered): between one
    // round every 6 s and one every 2 s.
    assert!(
        (0.15..0.5).contains(&big.rounds_per_sec),
        "{}",
        big.rounds_per_sec
    );
}

/// Rounds opening with a digest: between nodes that hold the same writes
/// (nearly always, once broadcasts land) an exchange costs the digest and
/// a short bucket list, ~0.5 byte per actor instead of ~19, and a write a
/// broadcast missed still gets everywhere.
#[test]
fn digest_rounds_cut_sync_state_bytes_and_still_repair() {
    let whole = simulate(cfg(1_000, 10.0, (1, 20), 0.01, 4));
    let digest = simulate(SpreadConfig {
        digest: true,
        ..cfg(1_000, 10.0, (1, 20), 0.01, 4)
    });
    println!("whole: {whole:?}\ndigest: {digest:?}");
    assert_eq!(digest.unreached, 0);
    assert!(
        digest.by_sync > 0.0,
        "sync still delivers what broadcasts missed"
    );
    assert!(
        digest.digest_frame * 20 < digest.state_frame,
        "{} vs {}",
        digest.digest_frame,
        digest.state_frame
    );
    assert!(
        digest.state_bytes * 5.0 < whole.state_bytes,
        "{} vs {}",
        digest.state_bytes,
        whole.state_bytes
    );
    assert!(
        digest.digest_differing < 0.2,
        "most exchanges find nothing differing: {}",
        digest.digest_differing
    );
    // The same writes reach everyone as fast (sync repairs one round trip
    // later at most).
    assert!(digest.reach_99.1 <= whole.reach_99.1 + 5);
}
