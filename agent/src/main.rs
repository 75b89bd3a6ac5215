//! `corrosion`: the agent and its command-line interface.
//!
//! This is the binary's edge: it parses arguments, loads the config, and
//! turns library errors into one clear line (`Error: ...`) and exit code 1.
//! `agent` runs the agent (`run.rs`); the other commands are clients of a
//! running agent or of its database (`commands.rs`).

/// mimalloc instead of glibc's malloc: many threads allocating small,
/// short-lived buffers (probes, requests) grew glibc's per-thread arenas
/// and cost malloc time (measured in docs/BENCHMARKS.md, "Checks run by
/// the agent").
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod admin;
mod api;
mod cluster;
mod commands;
mod config;
mod consul;
mod kv_cli;
mod logging;
mod run;
mod service;
mod services_cli;
mod tasks;
mod telemetry;
mod templates;
mod tls;
mod ui;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

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
    /// Override api.addr (for client commands: the agent to talk to)
    #[arg(long, global = true, value_name = "API_ADDR")]
    api_addr: Option<SocketAddr>,
    /// Override db.path
    #[arg(long, global = true, value_name = "DB_PATH")]
    db_path: Option<PathBuf>,
    /// Override admin.path
    #[arg(long, global = true, value_name = "ADMIN_PATH")]
    admin_path: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Launches the agent
    Agent,
    /// Execute a SQL statement that mutates the state of Corrosion
    Exec {
        /// Positional parameter (repeat for each `?`)
        #[arg(long)]
        param: Vec<String>,
        /// Print how long the transaction took
        #[arg(long)]
        timer: bool,
        query: String,
    },
    /// Query data from Corrosion w/ a SQL statement
    Query {
        /// Print column names first
        #[arg(long)]
        columns: bool,
        /// Print how long the query took
        #[arg(long)]
        timer: bool,
        /// Positional parameter (repeat for each `?`)
        #[arg(long)]
        param: Vec<String>,
        query: String,
    },
    /// Reload the config (re-apply the schema files)
    Reload,
    /// Backup the Corrosion DB
    Backup {
        /// Where to write the backup (must not exist)
        path: PathBuf,
    },
    /// Cluster membership commands
    Cluster {
        #[command(subcommand)]
        cmd: ClusterCommand,
    },
    /// Consul commands
    Consul {
        #[command(subcommand)]
        cmd: ConsulCommand,
    },
    /// Render templates (`SOURCE:DESTINATION[:COMMAND]`) and re-render them
    /// when the data they read changes
    Template {
        /// Render each template once and exit (non-zero if any failed)
        #[arg(short = 'o', long)]
        once: bool,
        #[arg(value_name = "TEMPLATE")]
        templates: Vec<String>,
    },
    /// Change the running agent's log filter
    Log {
        #[command(subcommand)]
        cmd: LogCommand,
    },
    /// Replication state of this node
    Sync {
        #[command(subcommand)]
        cmd: SyncCommand,
    },
    /// Tls-related commands
    Tls {
        #[command(subcommand)]
        cmd: TlsCommand,
    },
    /// This host's services, registered with the running agent (as
    /// `consul services`)
    Services {
        #[command(subcommand)]
        cmd: ServicesCommand,
    },
    /// Maintenance mode for this node or one of its services (as
    /// `consul maint`): a critical check that takes it out of answers;
    /// without a subcommand, what is in maintenance now
    Maint {
        #[command(subcommand)]
        cmd: Option<MaintCommand>,
    },
    /// Consul's KV store (as `consul kv`; Consul's `-flag` spellings work)
    Kv {
        #[command(subcommand)]
        cmd: KvCommand,
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

#[derive(Subcommand)]
enum ServicesCommand {
    /// Register the services of a definition file (Consul's JSON or HCL
    /// format), or one service described by flags
    Register {
        /// A service definition file (`*.json` or `*.hcl`)
        file: Option<PathBuf>,
        /// Service name (instead of a file)
        #[arg(long, conflicts_with = "file")]
        name: Option<String>,
        /// Service ID (default: the name)
        #[arg(long, requires = "name")]
        id: Option<String>,
        /// Service address (default: the node's)
        #[arg(long, requires = "name")]
        address: Option<String>,
        #[arg(long, requires = "name")]
        port: Option<u16>,
        /// A tag (repeat for more)
        #[arg(long = "tag", requires = "name")]
        tags: Vec<String>,
        /// Metadata as KEY=VALUE (repeat for more)
        #[arg(long = "meta", requires = "name")]
        meta: Vec<String>,
    },
    /// Deregister a service by ID, or the services of a definition file
    Deregister {
        /// A service ID, or a definition file whose services to deregister
        target: String,
    },
}

#[derive(Subcommand)]
enum KvCommand {
    /// Print a key's value; with --recurse every `key:value` under a
    /// prefix; with --keys the keys under a prefix
    Get {
        /// Every key under KEY, as `key:value` lines
        #[arg(long)]
        recurse: bool,
        /// List the keys under KEY (folders rolled up at --separator)
        #[arg(long)]
        keys: bool,
        /// Folder separator for --keys ("" for none)
        #[arg(long, default_value = "/")]
        separator: String,
        key: Option<String>,
    },
    /// Store a value: VALUE as given, `@FILE` for a file's bytes, `-` for
    /// stdin, nothing for an empty value
    Put {
        /// Consul's opaque unsigned 64-bit flags
        #[arg(long, default_value_t = 0)]
        flags: u64,
        key: String,
        #[arg(allow_hyphen_values = true)]
        value: Option<String>,
    },
    /// Delete a key, or with --recurse every key under a prefix (the empty
    /// prefix, every key, also needs --all)
    Delete {
        #[arg(long)]
        recurse: bool,
        /// With --recurse and no KEY: delete every key
        #[arg(long, requires = "recurse")]
        all: bool,
        key: Option<String>,
    },
    /// Print every entry under PREFIX in `consul kv export`'s JSON
    Export { prefix: Option<String> },
    /// Write the entries of a `consul kv export` (`@FILE`, `-` for stdin,
    /// or the JSON itself)
    Import {
        /// Put this before every imported key
        #[arg(long, default_value = "")]
        prefix: String,
        #[arg(default_value = "-")]
        data: String,
    },
}

#[derive(Subcommand)]
enum MaintCommand {
    /// Put the node (or `--service`) into maintenance
    Enable {
        /// A service ID (default: the whole node)
        #[arg(long)]
        service: Option<String>,
        /// Why (shown as the maintenance check's notes)
        #[arg(long)]
        reason: Option<String>,
    },
    /// Take the node (or `--service`) out of maintenance
    Disable {
        #[arg(long)]
        service: Option<String>,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// List the members this agent knows, with state and round-trip time
    Members {
        /// Print JSON (as `GET /v1/members`) instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Announce this node again to its seeds and known members (after a
    /// partition or an address change)
    Rejoin,
}

#[derive(Subcommand)]
enum LogCommand {
    /// Set the filter (`info`, `debug`, `corrosion::cluster=debug,info`, ...)
    Set { filter: String },
    /// Back to the filter the agent started with (RUST_LOG, else info)
    Reset,
}

#[derive(Subcommand)]
enum SyncCommand {
    /// Per actor: head, missing versions, partially held versions
    State {
        #[arg(long)]
        json: bool,
    },
    /// Check the running agent's database: SQLite's integrity check, and
    /// that data, clocks, version index and bookkeeping agree (non-zero
    /// exit naming the first problem otherwise)
    Verify,
}

#[derive(Subcommand)]
enum ConsulCommand {
    /// Mirror the local Consul agent's services and checks into the agent
    /// (the bridge as a separate process; `[consul.client]` in the config)
    Sync,
}

#[derive(Subcommand)]
enum TlsCommand {
    /// TLS certificate authority commands
    Ca {
        #[command(subcommand)]
        cmd: TlsCaCommand,
    },
    /// TLS server certificate commands
    Server {
        #[command(subcommand)]
        cmd: TlsServerCommand,
    },
    /// TLS client certificate commands (for mutual TLS)
    Client {
        #[command(subcommand)]
        cmd: TlsClientCommand,
    },
}

#[derive(Subcommand)]
enum TlsCaCommand {
    /// Generate a TLS certificate authority (ca_cert.pem, ca_key.pem)
    Generate {
        /// Where to write the files
        #[arg(long, default_value = ".")]
        output_dir: PathBuf,
    },
}

/// The CA that signs a certificate, and where to write it.
#[derive(clap::Args)]
struct SigningArgs {
    #[arg(long)]
    ca_key: PathBuf,
    #[arg(long)]
    ca_cert: PathBuf,
    /// Where to write the files
    #[arg(long, default_value = ".")]
    output_dir: PathBuf,
}

#[derive(Subcommand)]
enum TlsServerCommand {
    /// Generate a TLS server certificate from a CA (server_cert.pem, server_key.pem)
    Generate {
        /// The IP address peers use to reach this node
        ip: std::net::IpAddr,
        #[command(flatten)]
        ca: SigningArgs,
    },
}

#[derive(Subcommand)]
enum TlsClientCommand {
    /// Generate a TLS certificate from a CA (client_cert.pem, client_key.pem)
    Generate {
        #[command(flatten)]
        ca: SigningArgs,
    },
}

fn main() {
    // One rustls crypto provider for the whole process (ring, as quinn uses).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = kv_cli::consul_style_flags(std::env::args().collect());
    if let Err(e) = run(Cli::parse_from(args)) {
        eprintln!("Error: {e:#}");
        std::process::exit(1);
    }
}

#[expect(clippy::print_stdout, reason = "command output")]
fn run(cli: Cli) -> anyhow::Result<()> {
    let explicit = cli.config.is_some();
    let path = cli
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
    if let Command::Tls { cmd } = cli.cmd {
        logging::init_client();
        let written = match cmd {
            TlsCommand::Ca {
                cmd: TlsCaCommand::Generate { output_dir },
            } => tls::generate_ca(&output_dir)?,
            TlsCommand::Server {
                cmd: TlsServerCommand::Generate { ip, ca },
            } => tls::generate_server(ip, &ca.ca_cert, &ca.ca_key, &ca.output_dir)?,
            TlsCommand::Client {
                cmd: TlsClientCommand::Generate { ca },
            } => tls::generate_client(&ca.ca_cert, &ca.ca_key, &ca.output_dir)?,
        };
        for p in written {
            println!("wrote {}", p.display());
        }
        return Ok(());
    }
    // Client commands aimed at an agent with --api-addr need no config file.
    let needs_config = !(cli.api_addr.is_some()
        && matches!(
            cli.cmd,
            Command::Exec { .. }
                | Command::Query { .. }
                | Command::Template { .. }
                | Command::Services { .. }
                | Command::Maint { .. }
                | Command::Kv { .. }
        ));
    let loaded = if needs_config || path.exists() {
        Some(Config::load(&path, explicit)?)
    } else {
        None
    };
    let (mut config, source) = match loaded {
        Some((c, s)) => (Some(c), Some(s)),
        None => (None, None),
    };
    if let Some(c) = config.as_mut() {
        if let Some(p) = &cli.db_path {
            c.db.path = p.clone();
        }
        if let Some(a) = cli.api_addr {
            c.api.addr = a;
        }
        if let Some(p) = &cli.admin_path {
            c.admin.path = p.clone();
        }
    }
    let api_addr = cli.api_addr.or(config.as_ref().map(|c| c.api.addr));
    let token = config
        .as_ref()
        .and_then(|c| c.api.authz.bearer_token.clone());
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
    };
    let config_of = |c: Option<Config>| c.ok_or_else(|| anyhow::anyhow!("no config"));
    match cli.cmd {
        Command::Agent => {
            let config = config_of(config)?;
            let log = logging::init_agent(&config.log);
            let source = source.unwrap_or(Source::Embedded);
            runtime()?.block_on(run::agent(config, source, log))
        }
        Command::Exec {
            param,
            timer,
            query,
        } => {
            logging::init_client();
            let addr = api_addr.ok_or_else(|| anyhow::anyhow!("no API address"))?;
            runtime()?.block_on(commands::exec(addr, token, query, param, timer))
        }
        Command::Query {
            columns,
            timer,
            param,
            query,
        } => {
            logging::init_client();
            let addr = api_addr.ok_or_else(|| anyhow::anyhow!("no API address"))?;
            runtime()?.block_on(commands::query(addr, token, query, param, columns, timer))
        }
        Command::Template { once, templates } => {
            logging::init_client();
            let addr = api_addr.ok_or_else(|| anyhow::anyhow!("no API address"))?;
            runtime()?.block_on(templates::command(addr, token, templates, once))
        }
        Command::Log { cmd } => {
            logging::init_client();
            let config = config_of(config)?;
            let set = match cmd {
                LogCommand::Set { filter } => Some(filter),
                LogCommand::Reset => None,
            };
            runtime()?.block_on(commands::log(&config.admin.path, set))
        }
        Command::Sync {
            cmd: SyncCommand::State { json },
        } => {
            logging::init_client();
            let config = config_of(config)?;
            runtime()?.block_on(commands::sync_state(&config.admin.path, json))
        }
        Command::Sync {
            cmd: SyncCommand::Verify,
        } => {
            logging::init_client();
            let config = config_of(config)?;
            runtime()?.block_on(commands::verify(&config.admin.path))
        }
        Command::Reload => {
            logging::init_client();
            let config = config_of(config)?;
            runtime()?.block_on(commands::reload(&config.admin.path))
        }
        Command::Cluster {
            cmd: ClusterCommand::Rejoin,
        } => {
            logging::init_client();
            let config = config_of(config)?;
            runtime()?.block_on(commands::rejoin(&config.admin.path))
        }
        Command::Cluster {
            cmd: ClusterCommand::Members { json },
        } => {
            logging::init_client();
            let config = config_of(config)?;
            runtime()?.block_on(commands::members(&config.admin.path, json))
        }
        Command::Backup { path } => {
            logging::init_client();
            commands::backup(&config_of(config)?.db.path, &path)
        }
        Command::Consul {
            cmd: ConsulCommand::Sync,
        } => {
            let config = config_of(config)?;
            logging::init_agent(&config.log);
            runtime()?.block_on(consul::sync_command::run(&config, token))
        }
        Command::Services { cmd } => {
            logging::init_client();
            let addr = api_addr.ok_or_else(|| anyhow::anyhow!("no API address"))?;
            let client = corro_client::Client::new(addr, token);
            runtime()?.block_on(async move {
                match cmd {
                    ServicesCommand::Register {
                        file,
                        name,
                        id,
                        address,
                        port,
                        tags,
                        meta,
                    } => {
                        let bodies = match (file, name) {
                            (Some(f), _) => services_cli::bodies_of(&f)?,
                            (None, Some(name)) => {
                                vec![services_cli::from_flags(
                                    name, id, address, port, tags, meta,
                                )?]
                            }
                            (None, None) => anyhow::bail!("give a definition file or --name"),
                        };
                        services_cli::register(&client, bodies).await
                    }
                    ServicesCommand::Deregister { target } => {
                        services_cli::deregister(&client, &target).await
                    }
                }
            })
        }
        Command::Maint { cmd } => {
            logging::init_client();
            let addr = api_addr.ok_or_else(|| anyhow::anyhow!("no API address"))?;
            let client = corro_client::Client::new(addr, token);
            let (enable, service, reason) = match cmd {
                None => return runtime()?.block_on(services_cli::maint_list(&client)),
                Some(MaintCommand::Enable { service, reason }) => (true, service, reason),
                Some(MaintCommand::Disable { service }) => (false, service, None),
            };
            runtime()?.block_on(services_cli::maint(&client, enable, service, reason))
        }
        Command::Kv { cmd } => {
            logging::init_client();
            let addr = api_addr.ok_or_else(|| anyhow::anyhow!("no API address"))?;
            let client = corro_client::Client::new(addr, token);
            runtime()?.block_on(async move {
                match cmd {
                    KvCommand::Get {
                        recurse,
                        keys,
                        separator,
                        key,
                    } => {
                        kv_cli::get(
                            &client,
                            key.as_deref().unwrap_or(""),
                            recurse,
                            keys,
                            &separator,
                        )
                        .await
                    }
                    KvCommand::Put { flags, key, value } => {
                        kv_cli::put(&client, &key, value.as_deref(), flags).await
                    }
                    KvCommand::Delete { recurse, all, key } => {
                        kv_cli::delete(&client, key.as_deref(), recurse, all).await
                    }
                    KvCommand::Export { prefix } => {
                        kv_cli::export(&client, prefix.as_deref().unwrap_or("")).await
                    }
                    KvCommand::Import { prefix, data } => {
                        kv_cli::import(&client, &data, &prefix).await
                    }
                }
            })
        }
        Command::Tls { .. } => unreachable!("handled above"),
        Command::Restore {
            path,
            keep_actor_id,
        } => {
            logging::init_client();
            commands::restore(&config_of(config)?.db.path, &path, keep_actor_id)
        }
    }
}
