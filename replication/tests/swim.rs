//! SWIM membership simulated: many [`Membership`] cores over a seeded
//! in-memory network with latency, loss and partitions, on a simulated clock.
//! No sockets, no wall-clock time: the timings printed and asserted here are
//! simulated milliseconds, identical on every run of a seed.

#![allow(clippy::print_stdout, clippy::expect_used, reason = "test code")]

use corro_replication::membership::State;
use corro_replication::sim::{SwimSim as Sim, addr};

fn formed(n: usize, seed: u64, loss: f64, latency: (u64, u64)) -> Sim {
    let (sim, took) = Sim::formed(n, seed, loss, latency, 120_000)
        .unwrap_or_else(|| panic!("seed {seed}: {n} members did not all find each other"));
    println!("seed {seed}: {n} members formed a full view in {took} ms (simulated)");
    sim
}

#[test]
fn members_find_each_other_through_one_contact() {
    for seed in 0..3 {
        formed(100, seed, 0.10, (1, 20));
    }
}

/// The failure-detection bar, in simulation: a member that dies is marked
/// down by every other member of a 20-member cluster within 5 s, with 5 %
/// of packets lost (with 10 % lost, one seed in ten took 5.1 s).
#[test]
fn a_dead_member_is_marked_down_everywhere_within_five_seconds() {
    let mut worst = 0;
    for seed in 0..10 {
        let mut sim = formed(20, seed, 0.05, (1, 20));
        let victim = 1 + (seed as usize % 19);
        sim.nodes[victim].up = false;
        let took = sim
            .run_while_not(30_000, 100, |s| s.all_see(victim, State::Down))
            .unwrap_or_else(|| panic!("seed {seed}: member {victim} never marked down everywhere"));
        worst = worst.max(took);
        assert_eq!(sim.traffic.refused, 0, "seed {seed}: packets refused");
        assert_eq!(
            sim.traffic.false_downs, 0,
            "seed {seed}: a crash is no false down"
        );
        assert!(
            took < 5_000,
            "seed {seed}: marked down everywhere only after {took} ms"
        );
    }
    println!("kill -> down on all 19 others: worst {worst} ms over 10 seeds (simulated)");
}

/// Suspicion before down: a member that stalls for less than a probe
/// period plus the shortest suspicion (2.25 s; a GC pause, a slow disk) is
/// suspected at most, never declared down.
#[test]
fn a_briefly_paused_member_is_not_declared_down() {
    for seed in 0..5 {
        let mut sim = formed(20, seed, 0.0, (1, 5));
        let paused = 3;
        sim.nodes[paused].paused_until = sim.now + 2_000;
        let end = sim.now + 10_000;
        while sim.now < end {
            sim.run_until(sim.now + 100);
            if std::env::var("SWIM_TRACE").is_ok() {
                let states: Vec<_> = (0..20)
                    .filter(|&i| i != paused)
                    .map(|i| {
                        format!("{:?}", sim.state_of(i, paused))
                            .chars()
                            .nth(5)
                            .unwrap_or('?')
                    })
                    .collect();
                eprintln!("{} {}", sim.now, states.into_iter().collect::<String>());
            }
            for i in (0..20).filter(|&i| i != paused) {
                assert_ne!(
                    sim.state_of(i, paused),
                    Some(State::Down),
                    "seed {seed}: member {i} declared the paused member down"
                );
            }
        }
        assert!(sim.all_see(paused, State::Alive), "seed {seed}");
    }
}

/// A member that restarts with the same actor id and a later stamp replaces
/// its old incarnation: one entry per address, alive, with the new stamp.
#[test]
fn a_restarted_member_replaces_its_old_incarnation() {
    let mut sim = formed(10, 7, 0.0, (1, 5));
    let r = 4;
    sim.nodes[r].up = false;
    sim.run_until(sim.now + 1_000);
    sim.restart(r, 2, 0);
    sim.run_while_not(20_000, 100, |s| {
        (0..10).filter(|&i| i != r).all(|i| {
            let m = s.nodes[i].core.members();
            let entries: Vec<_> = m.iter().filter(|(id, _)| id.addr == addr(r)).collect();
            entries.len() == 1 && entries[0].0.ts == 2 && entries[0].1 == State::Alive
        })
    })
    .expect("every member sees the restarted incarnation, once, alive");
}

/// A partition: each side declares the other down; after healing, periodic
/// announces to down members merge the views again.
#[test]
fn views_merge_after_a_partition_heals() {
    let mut sim = formed(30, 11, 0.05, (1, 20));
    sim.cut = (0..10).collect();
    sim.run_while_not(60_000, 100, |s| {
        s.all_see(0, State::Down) || {
            // Members on node 0's side keep it alive; check the other side.
            (10..30).all(|i| s.state_of(i, 0) == Some(State::Down))
        }
    })
    .expect("the majority side declares the minority down");
    sim.cut.clear();
    let took = sim
        .run_while_not(120_000, 100, |s| s.everyone_sees_everyone())
        .expect("views merge after healing");
    println!("partition healed: full view again after {took} ms (simulated)");
}

/// A long partition: each side holds the other down, so no probe or
/// gossip crosses when it heals; only the drivers' reconnects (announces
/// to the addresses of members held as down) bring the views together.
#[test]
fn views_merge_after_a_long_partition_through_reconnects() {
    let mut sim = formed(40, 12, 0.01, (1, 20));
    sim.cut = (0..12).collect();
    sim.run_until(sim.now + 600_000);
    assert!(
        (12..40).all(|i| sim.state_of(i, 0) == Some(State::Down)),
        "the majority holds the minority down"
    );
    let before = sim.traffic.reconnects;
    sim.cut.clear();
    let took = sim
        .run_while_not(180_000, 1_000, |s| s.everyone_sees_everyone())
        .expect("views merge after a long partition heals");
    assert!(sim.traffic.reconnects > before);
    println!(
        "10-minute partition healed: full view again after {took} ms (simulated), {} reconnect announces",
        sim.traffic.reconnects - before
    );
}

/// Under 5 % loss, probes fail now and then and their targets are
/// suspected; told directly, they refute, and none is declared down nor
/// told it is down (foca sends "you are down" when its timer runs out even
/// after a refutation; a member renewed its identity for each).
#[test]
fn refuted_suspicions_neither_down_nor_renew_anyone() {
    for seed in 0..3 {
        let mut sim = formed(20, seed, 0.0, (1, 20));
        sim.loss = 0.05;
        sim.run_until(sim.now + 900_000);
        assert_eq!(sim.traffic.false_downs, 0, "seed {seed}: false downs");
        assert_eq!(
            sim.traffic.renewals, 0,
            "seed {seed}: running members renewed their identity"
        );
        assert_eq!(sim.traffic.refused, 0, "seed {seed}");
    }
}

/// False downs are counted, once per member and incarnation: with every
/// packet lost for a while, running members are declared down.
#[test]
fn false_downs_are_counted_once_per_incarnation() {
    let mut sim = formed(10, 3, 0.0, (1, 5));
    sim.loss = 1.0;
    sim.run_until(sim.now + 30_000);
    let counted = sim.traffic.false_downs;
    assert!(
        (1..=10).contains(&counted),
        "{counted} false downs for 10 members"
    );
    // Loss gone, members alone announce to a seed again (as the agents
    // do every 2 s) and views merge.
    sim.loss = 0.0;
    sim.rejoin_until(120_000, Sim::everyone_sees_everyone)
        .expect("views merge again");
    assert_eq!(sim.traffic.refused, 0);
}

/// Push-pull in sync rounds: a member that restarts while another is dead
/// learns the dead one's `Down` from the first member view it pulls (a
/// join's answer names active members only), and stops asking once a
/// settled view came. Without the pull it does not know the dead member.
#[test]
fn a_restarted_member_learns_from_its_first_view_that_a_dead_one_is_down() {
    for pull in [true, false] {
        let mut sim = formed(20, 5, 0.0, (1, 5));
        sim.pull = pull;
        let views_before = sim.traffic.views;
        let (dead, restarted) = (7, 12);
        sim.nodes[dead].up = false;
        sim.run_while_not(30_000, 100, |s| s.all_see(dead, State::Down))
            .expect("the dead member is down everywhere");
        // Long enough for the `Down` gossip to have stopped circulating.
        sim.run_until(sim.now + 30_000);
        sim.nodes[restarted].up = false;
        sim.run_until(sim.now + 500);
        sim.restart(restarted, 2, 0);
        let learned = sim.run_while_not(3_000, 50, |s| {
            s.state_of(restarted, dead) == Some(State::Down)
        });
        if pull {
            let took = learned.expect("the restarted member holds the dead one down");
            println!("restart -> dead member held down: {took} ms (simulated)");
            assert!(sim.traffic.views > views_before, "a view was pulled");
            sim.run_until(sim.now + 3_000);
            assert!(
                sim.nodes[restarted].view_pull.settled(),
                "a settled view ends the asking"
            );
        } else {
            assert_eq!(learned, None, "without push-pull it learns of it later");
            assert_eq!(sim.traffic.views, views_before, "no view pulled");
        }
    }
}

/// Settled members refresh their view from a peer now and then (every
/// 20-30 s at 40 members), and a refresh changes nothing in a steady
/// cluster: no false down, nobody renewed.
#[test]
fn settled_members_refresh_their_view_now_and_then() {
    let mut sim = formed(40, 9, 0.0, (1, 5));
    let before = sim.traffic.view_refreshes;
    sim.run_until(sim.now + 120_000);
    let refreshes = sim.traffic.view_refreshes - before;
    assert!(
        (40 * 3..=40 * 6).contains(&refreshes),
        "{refreshes} refreshes by 40 members in 120 s"
    );
    assert_eq!(sim.traffic.false_downs, 0);
    assert_eq!(sim.traffic.renewals, 0);
    assert!(Sim::everyone_sees_everyone(&sim));
}

/// A cluster that starts formed (every member has applied a whole view,
/// as after a settled join: how the bench starts clusters too large to
/// form by gossip in minutes): nobody sends anything before the first
/// probes, which are spread over the first probe period (not all members
/// at once); views stay whole with no false down and no renewal; probe
/// traffic at rest is what a cluster formed by announcing sends; and
/// dead members are down everywhere within 5 s, and back in every view
/// after restarting.
#[test]
fn a_preformed_cluster_behaves_as_a_formed_one() {
    let n = 300;
    let mut sim = Sim::preformed(n, 3, 0.01, (1, 20));
    assert!(sim.everyone_sees_everyone(), "every view whole at start");
    for i in [0, 7, n - 1] {
        assert_eq!(sim.nodes[i].core.active_count(), n - 1, "member {i}");
        assert_eq!(sim.state_of(i, (i + 1) % n), Some(State::Alive));
    }
    // First probes at a random point of the second probe period [P, 2P):
    // none before, and by 1.5 P about half the members have pinged (and
    // been answered); in step, all n pings and n acks would be out by then.
    let period = corro_replication::membership::PROBE_PERIOD.as_millis() as u64;
    sim.run_until(period - 1);
    assert_eq!(
        sim.traffic.packets, 0,
        "nothing sent before the first probes"
    );
    sim.run_until(period * 3 / 2 - 1);
    let early = sim.traffic.packets as f64 / n as f64;
    assert!(
        (0.6..1.4).contains(&early),
        "{early:.2} packets per member by 1.5 probe periods"
    );
    sim.run_until(30_000);
    assert!(sim.everyone_sees_everyone(), "views whole after 30 s");
    assert_eq!(sim.traffic.false_downs, 0);
    assert_eq!(sim.traffic.renewals, 0);
    assert_eq!(sim.traffic.refused, 0);
    // The same probe traffic as a cluster formed by announcing, once it
    // is at rest.
    let rate = |s: &mut Sim| {
        let (t0, p0) = (s.now, s.traffic.packets);
        s.run_until(t0 + 20_000);
        (s.traffic.packets - p0) as f64 / 20.0 / n as f64
    };
    let preformed = rate(&mut sim);
    let mut announced = formed(n, 3, 0.01, (1, 20));
    announced.run_until(announced.now + 30_000);
    let announced = rate(&mut announced);
    assert!(
        (preformed - announced).abs() < 0.1 * announced,
        "{preformed:.2} against {announced:.2} packets/s per member"
    );
    for victim in [42, 150, 299] {
        sim.crash(victim);
        let took = sim
            .run_while_not(30_000, 10, |s| s.all_see(victim, State::Down))
            .unwrap_or_else(|| panic!("member {victim} never marked down everywhere"));
        assert!(
            took < 5_000,
            "{victim} down everywhere only after {took} ms"
        );
        let ts = sim.now + 1;
        sim.restart(victim, ts, 1);
        sim.rejoin_until(60_000, |s| s.all_see(victim, State::Alive))
            .unwrap_or_else(|| panic!("restarted member {victim} not back in every view"));
        println!("preformed {n}: crash of {victim} down everywhere in {took} ms (simulated)");
    }
    assert_eq!(sim.traffic.false_downs, 0);
}
