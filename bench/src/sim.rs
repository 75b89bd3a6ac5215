//! `corro-bench sim`: the cluster protocol at fleet size in virtual time
//! ([`corro_replication::sim`]: the agents' own code over a seeded
//! in-memory network). Prints, for one cluster size, two tables:
//!
//! - membership (`--part swim`): formation time (or, with `--start
//!   formed`, a cluster that starts with whole views), SWIM traffic per
//!   node at rest, time for a crash to be seen everywhere, false `Down`
//!   verdicts under each of `--losses` (1 % and 5 %), and unless
//!   `--no-partition` the time for views to split and merge around a
//!   partition of 30 % of the nodes;
//! - spread of writes (`--part spread`): at 10 and 100 writes/s across
//!   the cluster, the time until 99 % and 100 % of nodes hold a write,
//!   broadcast messages and redundant receipts, what sync repaired, and
//!   bytes sent per node per second by kind (sync exchanges opening with
//!   a digest, as agents do, or with `--whole-states` a whole state).
//!
//! Seeded and reproducible; simulated time, so it runs in minutes.

use std::time::Instant;

use clap::Args;
use corro_replication::membership::State;
use corro_replication::sim::SwimSim;
use corro_replication::sim::spread::{SpreadConfig, simulate};

#[derive(Args)]
pub(crate) struct SimArgs {
    /// Cluster size.
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// One-way link delay range, ms.
    #[arg(long, default_value_t = 1)]
    latency_min: u64,
    #[arg(long, default_value_t = 20)]
    latency_max: u64,
    /// Crashes to time (one after another, each victim restarted after).
    #[arg(long, default_value_t = 20)]
    crashes: usize,
    /// Simulated seconds allowed for the full view to form.
    #[arg(long, default_value_t = 1800)]
    form_secs: u64,
    /// Simulated seconds watched for false downs at each loss rate.
    #[arg(long, default_value_t = 300)]
    watch_secs: u64,
    /// Which tables: swim, spread or all.
    #[arg(long, default_value = "all", value_parser = ["swim", "spread", "all"])]
    part: String,
    /// Cluster-wide write rates for the spread table.
    #[arg(long, value_delimiter = ',', default_value = "10,100")]
    rates: Vec<f64>,
    /// Writes measured at each rate (about; the window is this many over
    /// the rate, after 10 s of warm-up).
    #[arg(long, default_value_t = 1000)]
    spread_writes: u64,
    /// Share of broadcast sends and sync exchanges that fail in the spread
    /// table.
    #[arg(long, default_value_t = 0.01)]
    spread_loss: f64,
    /// Leave out the member-view push-pull of the agents' sync rounds
    /// (to see what it changes).
    #[arg(long)]
    no_pull: bool,
    /// Sync exchanges in the spread table open with a whole state (as
    /// builds before digest rounds, and the first round with each peer)
    /// instead of a digest.
    #[arg(long)]
    whole_states: bool,
    /// How the membership table's cluster forms: `announce` (everyone
    /// announces to node 0 and SWIM spreads the rest; formation is timed)
    /// or `formed` (every node starts holding a whole view, as after a
    /// settled join: for 10,000 nodes and more, where forming by gossip
    /// takes hours of wall time).
    #[arg(long, default_value = "announce", value_parser = ["announce", "formed"])]
    start: String,
    /// Loss rates (%) watched for false downs, each for `--watch-secs`.
    #[arg(long, value_delimiter = ',', default_value = "1,5")]
    losses: Vec<f64>,
    /// Leave out the 30 % partition (at 10,000 nodes its tens of
    /// thousands of membership updates, each searched linearly in foca's
    /// member list on every node, take hours of wall time).
    #[arg(long)]
    no_partition: bool,
}

/// The smallest and the mean number of active members in running nodes'
/// views.
fn views(sim: &SwimSim) -> (usize, f64) {
    let up: Vec<usize> = sim
        .nodes
        .iter()
        .filter(|x| x.up)
        .map(|x| x.core.active_count())
        .collect();
    let mean = up.iter().sum::<usize>() as f64 / up.len().max(1) as f64;
    (up.iter().copied().min().unwrap_or(0), mean)
}

/// Every running node knows all the other running nodes but at most
/// 0.1 % of them (and at least one may be missing).
fn nearly_full(sim: &SwimSim) -> bool {
    let others = sim.nodes.iter().filter(|x| x.up).count() - 1;
    views(sim).0 + (others / 1000).max(1) >= others
}

/// The share of running nodes whose view misses at most 0.1 % (at least
/// one) of the other running nodes.
fn share_nearly_full(sim: &SwimSim) -> f64 {
    let up = sim.nodes.iter().filter(|x| x.up).count();
    let others = up - 1;
    let ok = sim
        .nodes
        .iter()
        .filter(|x| x.up && x.core.active_count() + (others / 1000).max(1) >= others)
        .count();
    ok as f64 / up.max(1) as f64
}

fn pct(v: &mut [u64], p: f64) -> u64 {
    v.sort_unstable();
    v.get(((v.len() as f64 * p).ceil() as usize).saturating_sub(1))
        .copied()
        .unwrap_or(0)
}

pub(crate) fn run(a: SimArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.nodes >= 4, "--nodes must be at least 4");
    anyhow::ensure!(
        a.losses.iter().all(|l| (0.0..=100.0).contains(l)),
        "--losses are percentages from 0 to 100"
    );
    anyhow::ensure!(
        (0.0..=1.0).contains(&a.spread_loss),
        "--spread-loss is a share from 0 to 1"
    );
    if a.part != "spread" {
        swim(&a)?;
    }
    if a.part != "swim" {
        spread(&a)?;
    }
    Ok(())
}

/// The spread table: one row per write rate.
fn spread(a: &SimArgs) -> anyhow::Result<()> {
    let wall = Instant::now();
    let latency = (a.latency_min, a.latency_max.max(a.latency_min));
    println!(
        "spread: {} nodes, seed {}, links {}-{} ms, {:.0} % of sends and sync exchanges failing; about {} writes measured per rate, after 10 s",
        a.nodes,
        a.seed,
        latency.0,
        latency.1,
        a.spread_loss * 100.0,
        a.spread_writes
    );
    println!(
        "| writes/s | writes | reach 99 % p50 / p99 | reach 100 % p50 / p99 / max | broadcasts per write | redundant receipts per delivery | by sync / repaired per write | bytes/node/s: broadcast + sync state + sync changes = total |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut sizes = (0, 0, 0);
    let mut digest_differing = Vec::new();
    for &rate in &a.rates {
        let r = simulate(SpreadConfig {
            nodes: a.nodes,
            seed: a.seed,
            writes_per_sec: rate,
            warm_ms: 10_000,
            measure_ms: (a.spread_writes as f64 / rate.max(0.001) * 1000.0) as u64,
            drain_ms: 60_000,
            latency,
            loss: a.spread_loss,
            digest: !a.whole_states,
        });
        anyhow::ensure!(
            r.unreached == 0,
            "{} of {} writes did not reach every node within 60 s",
            r.unreached,
            r.writes
        );
        sizes = (r.write_frame, r.state_frame, r.digest_frame);
        if !a.whole_states {
            digest_differing.push(r.digest_differing);
        }
        println!(
            "| {rate} | {} | {} / {} ms | {} / {} / {} ms | {:.0} ({:.1} per node) | {:.2} | {:.2} % / {:.3} | {:.0} + {:.0} + {:.0} = {:.0} |",
            r.writes,
            r.reach_99.0,
            r.reach_99.1,
            r.reach_all.0,
            r.reach_all.1,
            r.reach_all.2,
            r.broadcasts_per_write,
            r.broadcasts_per_write / a.nodes as f64,
            r.redundant_per_delivery,
            r.by_sync * 100.0,
            r.repaired_per_write,
            r.broadcast_bytes,
            r.state_bytes,
            r.sync_change_bytes,
            r.broadcast_bytes + r.state_bytes + r.sync_change_bytes
        );
    }
    println!(
        "frames: one write broadcast {} B, one sync state {} B ({} actors), its digest {} B, a {} B trailer on each state, digest and bucket list, plus {} B per message below the frame; wall time {:.1?}",
        sizes.0,
        sizes.1,
        a.nodes,
        sizes.2,
        corro_replication::sim::spread::trailer_bytes(a.seed),
        corro_replication::sim::spread::WIRE_OVERHEAD,
        wall.elapsed()
    );
    if a.whole_states {
        println!("sync exchanges open with whole states (--whole-states)");
    } else {
        println!(
            "sync exchanges open with a digest; share finding some bucket differing, per rate: {}",
            digest_differing
                .iter()
                .map(|d| format!("{:.1} %", d * 100.0))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// The membership table.
fn swim(a: &SimArgs) -> anyhow::Result<()> {
    let n = a.nodes;
    let wall = Instant::now();
    let latency = (a.latency_min, a.latency_max.max(a.latency_min));
    let preformed = a.start == "formed";
    let mut sim = if preformed {
        eprintln!("sim: building {n} whole views ({n} × {n} members)...");
        let sim = SwimSim::preformed(n, a.seed, 0.0, latency);
        eprintln!("sim: views built in {:.1?}", wall.elapsed());
        sim
    } else {
        SwimSim::new(n, a.seed, 0.0, latency)
    };
    sim.pull = !a.no_pull;
    let formed = if preformed {
        None
    } else {
        // Everyone announces to node 0, again every 2 s while alone (as the
        // agents do).
        (1..n).for_each(|i| sim.announce(i, 0));
        // Formed: every running node misses at most 0.1 % of the others (at
        // least one may be missing: a few members can miss a peer for a long
        // time; the smallest view is reported).
        let formed = sim.rejoin_until(a.form_secs * 1000, nearly_full).ok_or_else(|| {
            let (min, mean) = views(&sim);
            anyhow::anyhow!(
                "{n} members did not form a view in {} s (simulated): views min {min}, mean {mean:.1}",
                a.form_secs
            )
        })?;
        let full = sim.run_while_not(120_000, 1000, SwimSim::everyone_sees_everyone);
        Some((formed, full))
    };

    println!(
        "sim: {n} nodes, seed {}, links {}-{} ms, member-view push-pull {}; wall time so far {:.1?}",
        a.seed,
        latency.0,
        latency.1,
        if sim.pull { "on" } else { "off" },
        wall.elapsed()
    );
    println!("| measure | result |");
    println!("|---|---|");
    match formed {
        Some((formed, full)) => {
            println!(
                "| views formed: every node misses at most 0.1 % (at least 1) of the others | {formed} ms |"
            );
            let (min, _) = views(&sim);
            println!(
                "| complete view on every node | {} |",
                full.map_or(
                    format!("not within 120 s more (smallest view {min} of {})", n - 1),
                    |t| format!("{} ms", formed + t)
                )
            );
        }
        None => println!(
            "| views formed | not measured: started formed (`--start formed`: whole views, every node tuned for {n} members, probe cycles and announces at random points) |"
        ),
    }

    // Traffic at rest.
    sim.run_until(sim.now + 10_000);
    let (t0, start) = (sim.traffic, sim.now);
    sim.run_until(sim.now + 60_000);
    let secs = (sim.now - start) as f64 / 1000.0;
    let per_node = |x: u64| x as f64 / secs / n as f64;
    println!(
        "| SWIM traffic at rest, sent per node | {:.1} packets/s, {:.0} bytes/s |",
        per_node(sim.traffic.packets - t0.packets),
        per_node(sim.traffic.bytes - t0.bytes)
    );

    // Crashes, one after another: time until every running node sees it
    // down (or has forgotten it); then the victim restarts (a new stamp)
    // and the next crash waits until everyone holds it again.
    let mut took = Vec::new();
    let mut slow_rejoins = 0;
    let mut pick = a.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for _ in 0..a.crashes {
        pick ^= pick << 13;
        pick ^= pick >> 7;
        pick ^= pick << 17;
        let victim = 1 + (pick % (n as u64 - 1)) as usize;
        // Deaths fall anywhere in the probe cycle.
        sim.run_until(sim.now + pick % 1000);
        sim.crash(victim);
        let t = sim
            .run_while_not(60_000, 10, |s| s.all_see(victim, State::Down))
            .ok_or_else(|| anyhow::anyhow!("crash of node {victim} not seen everywhere in 60 s"))?;
        took.push(t);
        let ts = sim.now + 1;
        sim.restart(victim, ts, if victim == 1 { 2 } else { 1 });
        // Back in every view (other members may still miss others: the
        // membership tail at 1,000 nodes).
        if sim
            .rejoin_until(120_000, |s| s.all_see(victim, State::Alive))
            .is_none()
        {
            slow_rejoins += 1;
        }
        sim.run_until(sim.now + 2_000);
    }
    let crashes = took.len();
    eprintln!(
        "sim: {crashes} crashes timed; wall time so far {:.1?}",
        wall.elapsed()
    );
    println!(
        "| crash -> down on every other node ({crashes} crashes, each restarted after; {slow_rejoins} restarted nodes not alive in every view within 120 s) | p50 {} ms, p99 {} ms, max {} ms |",
        pct(&mut took.clone(), 0.5),
        pct(&mut took.clone(), 0.99),
        pct(&mut took, 1.0)
    );

    // False downs under loss: nobody else crashes; any Down verdict about
    // a running node is false.
    for &percent in &a.losses {
        sim.loss = percent / 100.0;
        let step = wall.elapsed();
        let (before, renewed) = (sim.traffic.false_downs, sim.traffic.renewals);
        sim.run_until(sim.now + a.watch_secs * 1000);
        let falses = sim.traffic.false_downs - before;
        let node_hours = n as f64 * a.watch_secs as f64 / 3600.0;
        println!(
            "| false downs (incidents) at {} % loss over {} s | {falses} ({:.4} per node-hour); {} renewals of running members |",
            percent,
            a.watch_secs,
            falses as f64 / node_hours,
            sim.traffic.renewals - renewed
        );
        eprintln!(
            "sim: {percent} % loss watched in {:.1?}",
            wall.elapsed() - step
        );
    }
    sim.loss = 0.0;
    // Let any falsely downed node rejoin before the partition.
    sim.run_while_not(120_000, 1000, nearly_full);

    if a.no_partition {
        println!("| partition of 30 % | not run (`--no-partition`) |");
    } else {
        partition(&mut sim, n);
    }
    println!(
        "wall time {:.1?}; simulated {} s; packets refused {}; member views pulled {} ({} entries; {} refreshes), exchanges given up {}",
        wall.elapsed(),
        sim.now / 1000,
        sim.traffic.refused,
        sim.traffic.views,
        sim.traffic.view_entries,
        sim.traffic.view_refreshes,
        sim.traffic.views_lost
    );
    Ok(())
}

/// A partition of 30 %: each side declares the other down; then it heals
/// and views merge. Prints its rows.
fn partition(sim: &mut SwimSim, n: usize) {
    let renewals_before = sim.traffic.renewals;
    let minority: Vec<usize> = (0..n).filter(|i| i % 10 < 3).collect();
    sim.cut = minority.iter().copied().collect();
    let sides = |s: &SwimSim| {
        let (mut lo, mut hi) = ((usize::MAX, 0), (usize::MAX, 0));
        for (i, x) in s.nodes.iter().enumerate().filter(|(_, x)| x.up) {
            let c = x.core.active_count();
            let side = if s.cut.contains(&i) || (s.cut.is_empty() && i % 10 < 3) {
                &mut lo
            } else {
                &mut hi
            };
            side.0 = side.0.min(c);
            side.1 = side.1.max(c);
        }
        // Members of the other side still held active, by state, summed
        // over each side's nodes (what a split is waiting for: members
        // never heard to be suspect, or suspects not yet swept).
        let mut across = [[0u64; 2]; 2];
        for (i, x) in s.nodes.iter().enumerate().filter(|(_, x)| x.up) {
            let mine = s.cut.contains(&i) || (s.cut.is_empty() && i % 10 < 3);
            for (id, state) in x.core.iter_members() {
                let Some(j) = s.index_of(id.addr) else {
                    continue;
                };
                let theirs = s.cut.contains(&j) || (s.cut.is_empty() && j % 10 < 3);
                match state {
                    _ if mine == theirs => {}
                    State::Alive => across[usize::from(mine)][0] += 1,
                    State::Suspect => across[usize::from(mine)][1] += 1,
                    State::Down => {}
                }
            }
        }
        format!(
            "minority views {}..{}, majority views {}..{}; other side held alive/suspect: by minority {}/{}, by majority {}/{}",
            lo.0, lo.1, hi.0, hi.1, across[1][0], across[1][1], across[0][0], across[0][1]
        )
    };
    let t0 = sim.now;
    let split = sim.run_while_not(300_000, 1000, |s| {
        if (s.now - t0).is_multiple_of(10_000) {
            eprintln!("  partition: t={} s: {}", (s.now - t0) / 1000, sides(s));
        }
        // Every running node's view has shrunk to its own side's size.
        s.nodes
            .iter()
            .enumerate()
            .filter(|(_, x)| x.up)
            .all(|(i, x)| {
                let same_side = if s.cut.contains(&i) {
                    minority.len()
                } else {
                    n - minority.len()
                };
                x.core.active_count() < same_side
            })
    });
    sim.cut.clear();
    let t0 = sim.now;
    let reconnects = sim.traffic.reconnects;
    let most = std::cell::Cell::new(None);
    let healed = sim.run_while_not(600_000, 1000, |s| {
        if (s.now - t0).is_multiple_of(30_000) {
            eprintln!("  healing: t={} s: {}", (s.now - t0) / 1000, sides(s));
        }
        if most.get().is_none() && share_nearly_full(s) >= 0.99 {
            most.set(Some(s.now - t0));
        }
        nearly_full(s)
    });
    println!(
        "| partition of 30 %: each side sees only itself | {} |",
        split.map_or("not within 300 s".into(), |t| format!("{t} ms"))
    );
    println!(
        "| after healing: 99 % of nodes / every node miss at most 0.1 % (at least 1) | {} / {} ({} reconnect announces) |",
        most.get()
            .map_or("not within 600 s".into(), |t| format!("{t} ms")),
        healed.map_or(
            format!(
                "not within 600 s (smallest view {} of {})",
                views(sim).0,
                n - 2
            ),
            |t| format!("{t} ms")
        ),
        sim.traffic.reconnects - reconnects
    );
    println!(
        "| identities renewed through the partition and healing (each side declared the other down) | {} |",
        sim.traffic.renewals - renewals_before
    );
}
