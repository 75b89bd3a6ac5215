//! `corro-bench`: reproducible benchmarks that print their baseline.
//!
//! Every figure is measured next to a baseline from the same run on the same
//! machine (plain SQLite doing the same work), and the ratio is what
//! `docs/BENCHMARKS.md` records. Run with `cargo run --release -p corro-bench -- store`.
#![allow(clippy::print_stdout)]

mod checks;
mod churn;
mod cluster;
mod consul;
mod dns;
mod fleet;
mod hostile;
mod http;
mod kv;
mod limits;
mod sim;
mod store;
mod subs;
mod templates;
mod ui;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Corrosion benchmarks (each prints its plain baseline)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Replicated store vs plain SQLite: single-row writes, bulk insert,
    /// remote apply, disk size.
    Store(store::StoreArgs),
    /// One bulk load on one side only, for instruction counting under
    /// `valgrind --tool=callgrind` (deterministic, unlike wall-clock time here).
    #[command(hide = true)]
    StoreOnce(store::OnceArgs),
    /// What plain SQLite charges for the store's design: a trigger on
    /// inserts, and four pages per single-row commit.
    StoreLimits(limits::LimitsArgs),
    /// The HTTP API's reads and writes: primary-key queries vs nginx,
    /// one-row upserts vs plain SQLite commits.
    Http {
        #[command(subcommand)]
        cmd: http::HttpCmd,
    },
    /// Subscriptions on a large table under a steady write load.
    Subs(subs::SubsArgs),
    /// Checks run by the agent: 10,000 HTTP + 10,000 TTL checks at rest,
    /// registration throughput, a failing target leaving DNS.
    Checks {
        #[command(subcommand)]
        cmd: checks::ChecksCmd,
    },
    /// Real agents on loopback: convergence, latency, catch-up, failover.
    Cluster {
        #[command(subcommand)]
        cmd: cluster::ClusterCmd,
    },
    /// DNS queries/s against the responder and against NSD, alternating.
    Dns(dns::DnsArgs),
    /// Discovery through real agents: Consul API throughput vs nginx,
    /// blocking-query wake-up, held queries, failover to critical.
    Consul {
        #[command(subcommand)]
        cmd: consul::ConsulCmd,
    },
    /// Consul KV through real agents: GET vs nginx, PUT throughput,
    /// blocking wake-up across agents, 100,000 keys under one prefix.
    Kv {
        #[command(subcommand)]
        cmd: kv::KvCmd,
    },
    /// One agent's memory after each class of hostile client, next to its
    /// memory at rest.
    Hostile(hostile::HostileArgs),
    /// Templates through real agents: write -> file latency, renders/s and
    /// CPU per render vs plain SQLite rendering the same file.
    Templates {
        #[command(subcommand)]
        cmd: templates::TemplatesCmd,
    },
    /// The web UI at fleet size in a headless browser: time to interactive
    /// and change-to-repaint (needs chromium and chromium-driver).
    Ui(ui::UiArgs),
    /// The cluster protocol at fleet size in virtual time (the agents' own
    /// code): membership (formation, traffic, crash detection, false
    /// downs, partitions) and the spread of writes (reach, bytes, sync).
    Sim(sim::SimArgs),
    /// What a fleet's catalog costs one agent: memory, disk, CPU at rest,
    /// read times, catch-up of a new agent.
    Fleet(fleet::FleetArgs),
    /// Real agents under churn: SIGKILL and restart while writes go on;
    /// convergence, lost writes, false downs, stale DNS answers.
    Churn(churn::ChurnArgs),
}

fn main() -> anyhow::Result<()> {
    corro_testkit::crypto();
    match Cli::parse().cmd {
        Cmd::Store(args) => store::run(args),
        Cmd::StoreOnce(args) => store::once(args),
        Cmd::StoreLimits(args) => limits::run(args),
        Cmd::Checks { cmd } => checks::run(cmd),
        Cmd::Cluster { cmd } => cluster::run(cmd),
        Cmd::Subs(args) => subs::run(args),
        Cmd::Http { cmd } => http::run(cmd),
        Cmd::Consul { cmd } => consul::run(cmd),
        Cmd::Kv { cmd } => kv::run(cmd),
        Cmd::Dns(args) => dns::run(args),
        Cmd::Hostile(args) => hostile::run(args),
        Cmd::Templates { cmd } => templates::run(cmd),
        Cmd::Ui(args) => ui::run(args),
        Cmd::Sim(args) => sim::run(args),
        Cmd::Fleet(args) => fleet::run(args),
        Cmd::Churn(args) => churn::run(args),
    }
}
