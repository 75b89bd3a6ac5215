//! Log output: plain or JSON per `[log]`, level from `RUST_LOG` (default
//! `info`), changeable at run time through the admin socket.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

use crate::config::{LogConfig, LogFormat};

/// Changes the log filter of a running agent.
#[derive(Clone)]
pub(crate) struct LogHandle {
    handle: reload::Handle<EnvFilter, Registry>,
    /// The filter the agent started with (`RUST_LOG`, else `info`).
    initial: String,
}

impl LogHandle {
    pub(crate) fn set(&self, directives: &str) -> Result<(), String> {
        let filter = EnvFilter::try_new(directives)
            .map_err(|e| format!("invalid log filter {directives:?}: {e}"))?;
        self.handle.reload(filter).map_err(|e| e.to_string())
    }

    /// Back to the filter the agent started with; which one.
    pub(crate) fn reset(&self) -> Result<String, String> {
        self.set(&self.initial)?;
        Ok(self.initial.clone())
    }
}

/// The filter from `RUST_LOG`, else `info`.
fn initial_directives() -> String {
    std::env::var("RUST_LOG")
        .ok()
        .filter(|v| EnvFilter::try_new(v).is_ok())
        .unwrap_or_else(|| "info".into())
}

fn filter() -> EnvFilter {
    EnvFilter::try_new(initial_directives()).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Logging for the agent: timestamps, format and colors from the config.
/// Colors only on a terminal (journald and files get plain text).
pub(crate) fn init_agent(cfg: &LogConfig) -> LogHandle {
    let (filter, handle) = reload::Layer::new(filter());
    let registry = tracing_subscriber::registry().with(filter);
    let colors = cfg.colors
        && std::env::var_os("NO_COLOR").is_none()
        && std::io::IsTerminal::is_terminal(&std::io::stdout());
    match cfg.format {
        LogFormat::Json => registry
            .with(tracing_subscriber::fmt::layer().json())
            .init(),
        LogFormat::Plain => registry
            .with(tracing_subscriber::fmt::layer().with_ansi(colors))
            .init(),
    }
    LogHandle {
        handle,
        initial: initial_directives(),
    }
}

/// Logging for client commands: no timestamps, so `exec` prints
/// `INFO corrosion: Rows affected: 1` as the reference shows.
pub(crate) fn init_client() {
    let colors = std::env::var_os("NO_COLOR").is_none()
        && std::io::IsTerminal::is_terminal(&std::io::stdout());
    tracing_subscriber::fmt()
        .with_env_filter(filter())
        .without_time()
        .with_ansi(colors)
        .init();
}
