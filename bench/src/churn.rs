//! `corro-bench churn`: real agents under churn (issue 24, item 3). Runs
//! [`corro_testkit::churn`] at full size (default: 50 agents, 10 % killed
//! with SIGKILL 12 times 10 s apart, each victim restarted at the next
//! round, while KV writes continue) and prints the figures: writes
//! acknowledged and lost, convergence, false downs, and how long each
//! agent's DNS kept answering a dead agent's instance.

use std::time::{Duration, Instant};

use clap::Args;
use corro_testkit::churn::{ChurnConfig, run as churn};
use corro_testkit::relay::Impairment;

#[derive(Args)]
pub(crate) struct ChurnArgs {
    #[arg(long, default_value_t = 50)]
    agents: usize,
    /// Kill rounds.
    #[arg(long, default_value_t = 12)]
    periods: usize,
    /// Seconds between kill rounds (how long victims stay dead).
    #[arg(long, default_value_t = 10)]
    every: u64,
    /// Share of the agents killed each round.
    #[arg(long, default_value_t = 0.1)]
    share: f64,
    /// Milliseconds between the starts of two KV writes.
    #[arg(long, default_value_t = 20)]
    write_ms: u64,
    /// Gossip through relays that delay every packet this many ms (both
    /// ways) ...
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// ... and drop this share of them.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
}

pub(crate) fn run(a: ChurnArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.agents >= 2, "--agents must be at least 2");
    let dir = tempfile::tempdir()?;
    let wall = Instant::now();
    let cfg = ChurnConfig {
        agents: a.agents,
        periods: a.periods,
        every: Duration::from_secs(a.every),
        share: a.share,
        write_every: Duration::from_millis(a.write_ms),
        converge_limit: Duration::from_secs(300),
        impairment: (a.delay_ms > 0 || a.loss > 0.0).then_some(Impairment {
            delay: Duration::from_millis(a.delay_ms),
            loss: a.loss,
        }),
    };
    let r = churn(dir.path(), &cfg).map_err(anyhow::Error::msg)?;
    println!(
        "churn: {} agents, {:.0} % killed (SIGKILL) {} times {} s apart (victims restarted at the next round), a KV write started every {} ms (live agents in turn); gossip relays: {} ms delay each way, {:.1} % loss",
        a.agents,
        a.share * 100.0,
        a.periods,
        a.every,
        a.write_ms,
        a.delay_ms,
        a.loss * 100.0
    );
    let secs = |d: Duration| d.as_secs_f64();
    println!("| measure | result |");
    println!("|---|---|");
    println!("| kills | {} |", r.kills);
    println!(
        "| writes acknowledged / refused or cut off / acknowledged but missing at the end | {} / {} / {} |",
        r.writes_acked, r.writes_failed, r.writes_missing
    );
    let converged = match (r.converged_after_restart, r.converged_after_write) {
        (Some(x), Some(y)) => format!("{:.1} s / {:.1} s", secs(x), secs(y)),
        _ => "not within 300 s".into(),
    };
    println!(
        "| identical tables everywhere: after the last restart began / after the last acknowledged write (one comparison takes {:.2} s) | {converged} |",
        secs(r.poll)
    );
    println!(
        "| false downs / restarted agents told their new identity was down / down lines not tied to an agent | {} / {} / {} |",
        r.false_downs.len(),
        r.restart_renewals.len(),
        r.unclassified_downs
    );
    let removal = |what: &str, (p50, p99, max): (Duration, Duration, Duration), n: usize| {
        println!(
            "| {what}: p50 / p99 / max | {:.1} / {:.1} / {:.1} s over {n} |",
            secs(p50),
            secs(p99),
            secs(max)
        );
    };
    removal(
        "a dead agent dropped from a running agent's DNS answers, per (agent, death)",
        r.removal,
        r.removals,
    );
    removal(
        "the same, answering agents that (re)started < 15 s before the death or during it (unknown nodes count as alive for an agent's first 5 s)",
        r.removal_fresh,
        r.removals_fresh,
    );
    println!(
        "| (agent, death) pairs still named when the dead agent restarted: running / (re)started agents; left out: answering agent killed first | {} / {} ; {} |",
        r.not_removed, r.not_removed_fresh, r.answerer_died
    );
    println!(
        "| SRV questions / unanswered / answers naming an instance dead > 5 s | {} / {} / {} |",
        r.dns_questions, r.dns_timeouts, r.stale_answers
    );
    // The watcher asks the live agents one after another: removal times
    // above are late by up to one round of it.
    let churn_secs = (a.periods as f64) * (a.every as f64);
    let live = a.agents as f64 * (1.0 - a.share);
    println!(
        "| each live agent asked about every (removal times are late by up to this) | {:.1} s |",
        churn_secs * live / (r.dns_questions.max(1) as f64)
    );
    if !r.not_removed_pairs.is_empty() {
        let deaths: std::collections::BTreeSet<(usize, u32)> =
            r.not_removed_pairs.iter().map(|p| (p.1, p.2)).collect();
        let answering: std::collections::BTreeSet<usize> =
            r.not_removed_pairs.iter().map(|p| p.0).collect();
        println!(
            "still named at restart: {} pairs over {} deaths and {} answering agents",
            r.not_removed_pairs.len(),
            deaths.len(),
            answering.len()
        );
        for (a, v, d, last) in &r.not_removed_pairs {
            eprintln!("  n{a} still named n{v} (death {d}) {last:.1} s after it died");
        }
    }
    if !r.not_removed_fresh_pairs.is_empty() {
        let logged = r
            .not_removed_fresh_pairs
            .iter()
            .filter(|p| p.down_logged.is_some())
            .count();
        println!(
            "(re)started agents still naming a dead agent at its restart: {} pairs, {logged} of them had logged it down (DNS lagged SWIM), the rest never did",
            r.not_removed_fresh_pairs.len()
        );
        // How long after its own start each such agent still named the
        // dead one (its disk's rows served before its first member view).
        let mut own: Vec<f64> = r
            .not_removed_fresh_pairs
            .iter()
            .filter(|p| p.started_after.is_finite() && p.started_after > 0.0)
            .map(|p| p.last_named - p.started_after)
            .collect();
        own.sort_by(f64::total_cmp);
        if let (Some(first), Some(last)) = (own.first(), own.last()) {
            println!(
                "those started after the death named it until {first:.1}..{last:.1} s (median {:.1} s) after their own start ({} pairs)",
                own[own.len() / 2],
                own.len()
            );
        }
        for p in &r.not_removed_fresh_pairs {
            eprintln!(
                "  n{} (started {:+.1} s from the death) still named n{} (death {}) {:.1} s after it died; logged down: {}",
                p.answering,
                p.started_after,
                p.dead,
                p.death,
                p.last_named,
                p.down_logged
                    .map_or("never".to_string(), |d| format!("{d:.1} s after"))
            );
        }
    }
    for f in &r.false_downs {
        println!("false down: {f}");
    }
    for f in &r.restart_renewals {
        println!("renewed after restart: {f}");
    }
    println!("wall time {:.0?}", wall.elapsed());
    Ok(())
}
