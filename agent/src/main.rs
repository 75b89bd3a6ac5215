//! `corrosion`: the agent and its command-line interface.
//!
//! This is the binary's edge: it parses arguments, loads the config, and
//! turns library errors into one clear line and a non-zero exit. The agent
//! currently opens the replicated store, applies the schema files (again on
//! SIGHUP) and runs until SIGINT/SIGTERM; the HTTP API, the cluster and the
//! discovery features attach here as they land.

mod config;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand};
use corro_store::{RestoreOptions, Store, StoreOptions};

use crate::config::{Config, DEFAULT_CONFIG_PATH, Source};

#[derive(Parser)]
#[command(
    name = "corrosion",
    version,
    about = "Gossip-replicated SQLite for service discovery"
)]
struct Cli {
    /// Set the config file path
    #[arg(
        short = 'c',
        long = "config",
        global = true,
        value_name = "CONFIG_PATH"
    )]
    config: Option<PathBuf>,
    /// Override db.path
    #[arg(long, global = true, value_name = "DB_PATH")]
    db_path: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Launches the agent
    Agent,
    /// Backup the Corrosion DB
    Backup {
        /// Where to write the backup (must not exist)
        path: PathBuf,
    },
    /// Restore the Corrosion DB from a backup (the agent must be stopped)
    Restore {
        /// The backup file
        path: PathBuf,
        /// Keep this node's actor id (only when restoring this node's own backup)
        #[arg(long)]
        keep_actor_id: bool,
    },
}

fn main() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("Error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let explicit = cli.config.is_some();
    let path = cli
        .config
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
    let (mut config, source) = Config::load(&path, explicit)?;
    if let Some(p) = cli.db_path {
        config.db.path = p;
    }
    match cli.cmd {
        Command::Agent => agent(config, source),
        Command::Backup { path } => {
            let store = Store::open(&config.db.path, StoreOptions::default())
                .with_context(|| format!("opening {}", config.db.path.display()))?;
            store.backup(&path)?;
            tracing::info!(path = %path.display(), "backup written");
            Ok(())
        }
        Command::Restore {
            path,
            keep_actor_id,
        } => {
            corro_store::restore(
                &config.db.path,
                &path,
                RestoreOptions {
                    keep_actor: keep_actor_id,
                },
            )?;
            tracing::info!(db = %config.db.path.display(), "restored from {}", path.display());
            Ok(())
        }
    }
}

fn apply_schema(store: &Store, config: &Config) -> anyhow::Result<()> {
    let paths: Vec<&PathBuf> = config
        .db
        .schema_paths
        .iter()
        .filter(|p| p.exists())
        .collect();
    for missing in config.db.schema_paths.iter().filter(|p| !p.exists()) {
        tracing::warn!(path = %missing.display(), "schema path does not exist; skipping");
    }
    let started = Instant::now();
    let diff = store.apply_schema_paths(&paths)?;
    for t in &diff.new_tables {
        tracing::info!("creating table '{}'", t.name);
    }
    tracing::info!("Applied schema in {}s", started.elapsed().as_secs_f64());
    Ok(())
}

fn agent(config: Config, source: Source) -> anyhow::Result<()> {
    tracing::info!("Starting Corrosion Agent v{}", env!("CARGO_PKG_VERSION"));
    match &source {
        Source::File(p) => tracing::info!(config = %p.display(), "loaded config"),
        Source::Embedded => tracing::info!(
            "no config file at {DEFAULT_CONFIG_PATH}; using the embedded default (data in ./corrosion-data)"
        ),
    }
    if let Source::Embedded = source {
        for p in &config.db.schema_paths {
            std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
        }
    }
    let store = Store::open(&config.db.path, StoreOptions::default())
        .with_context(|| format!("opening {}", config.db.path.display()))?;
    tracing::info!("Actor ID: {}", store.actor_id());
    apply_schema(&store, &config)?;

    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGHUP, SIGINT, SIGTERM])?;
    for sig in signals.forever() {
        match sig {
            SIGHUP => {
                tracing::info!("SIGHUP: re-applying schema files");
                if let Err(e) = apply_schema(&store, &config) {
                    tracing::error!("schema not applied, the previous one stays in force: {e:#}");
                }
            }
            _ => {
                tracing::info!("shutting down");
                break;
            }
        }
    }
    Ok(())
}
