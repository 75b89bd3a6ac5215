//! `corro-bench churn`: real agents under churn (issue 24, item 3). Runs
//! [`corro_testkit::churn`] at full size (default: 50 agents, 10 % killed
//! with SIGKILL and restarted every 10 s for 2 minutes while KV writes
//! continue) and prints the figures: writes acknowledged and lost,
//! convergence after the last write, false downs, and the longest a dead
//! agent's instance stayed in any agent's DNS answers.

use std::time::{Duration, Instant};

use clap::Args;
use corro_testkit::churn::{ChurnConfig, run as churn};
use corro_testkit::relay::Impairment;

#[derive(Args)]
pub(crate) struct ChurnArgs {
    #[arg(long, default_value_t = 50)]
    agents: usize,
    /// Seconds of churn.
    #[arg(long, default_value_t = 120)]
    secs: u64,
    /// Seconds between kills.
    #[arg(long, default_value_t = 10)]
    every: u64,
    /// Share of the agents killed each time.
    #[arg(long, default_value_t = 0.1)]
    share: f64,
    /// Milliseconds between KV writes.
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
    let dir = tempfile::tempdir()?;
    let wall = Instant::now();
    let cfg = ChurnConfig {
        agents: a.agents,
        churn: Duration::from_secs(a.secs),
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
        "churn: {} agents, {:.0} % killed (SIGKILL) and restarted every {} s for {} s, a KV write every {} ms; gossip relays: {} ms delay each way, {:.1} % loss",
        a.agents,
        a.share * 100.0,
        a.every,
        a.secs,
        a.write_ms,
        a.delay_ms,
        a.loss * 100.0
    );
    println!("| measure | result |");
    println!("|---|---|");
    println!("| kills | {} |", r.kills);
    println!(
        "| writes acknowledged / refused or cut off / acknowledged but missing at the end | {} / {} / {} |",
        r.writes_acked, r.writes_failed, r.writes_missing
    );
    println!(
        "| identical tables on every agent after the last write | {} |",
        r.converged_after
            .map_or("not within 300 s".into(), |d| format!(
                "{:.1} s",
                d.as_secs_f64()
            ))
    );
    println!("| false downs | {} |", r.false_downs.len());
    println!(
        "| longest a dead agent's instance stayed in a DNS answer / answers past 5 s | {:.1} s / {} of {} questions |",
        r.max_stale.as_secs_f64(),
        r.stale_over_5s,
        r.dns_questions
    );
    for f in &r.false_downs {
        println!("false down: {f}");
    }
    println!("wall time {:.0?}", wall.elapsed());
    Ok(())
}
