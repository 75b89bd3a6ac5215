//! Running templates: render, write, run the command, and again on change.
//!
//! Each template ([`Spec`]) gets a task that
//! 1. waits (bounded by `catch_up_timeout`) until the agent has caught up
//!    with the cluster, so a freshly started host does not write a config
//!    holding a fraction of the cluster's services;
//! 2. compiles the template, renders it on a blocking thread and writes the
//!    destination when the output changed ([`crate::output`]), then runs the
//!    command ([`crate::command`]);
//! 3. waits for a change to what the render read (a table its queries read,
//!    or the discovery model), lets it settle ([`crate::wait`]) and renders
//!    again; an edit of the template file (watched with `notify`)
//!    recompiles it.
//!
//! A failed render (script error, missing column, agent unreachable) keeps
//! the last good file, logs the template, line and reason, and retries
//! with backoff (1 s doubling to 30 s) as well as on the next change. A
//! render stopped by `key()` on a missing key is not a failure: as in
//! consul-template it waits (an INFO line, no retry timer, no error count)
//! until that key is written. With `once`, each template renders once and
//! the set returns an error if any failed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use crate::status::Outcome as Attempt;

use tokio::sync::{mpsc, watch};

use crate::command::{self, Outcome};
use crate::engine::{Compiled, Limits, RenderError, Renderer};
use crate::output::{self, WriteOptions, Written};
use crate::source::{Deps, Hub, Source};
use crate::wait::{Quiescence, Wait};

/// One template to keep rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub source: PathBuf,
    pub destination: PathBuf,
    /// Run through `sh -c` after the destination changed.
    pub command: Option<String>,
    pub perms: Option<u32>,
    pub backup: bool,
    pub wait: Wait,
    pub command_timeout: Duration,
}

impl Spec {
    /// A template with the defaults: wait 100 ms (max 400 ms), command
    /// timeout 30 s, mode kept, no backup.
    pub fn new(source: impl Into<PathBuf>, destination: impl Into<PathBuf>) -> Spec {
        Spec {
            source: source.into(),
            destination: destination.into(),
            command: None,
            perms: None,
            backup: false,
            wait: Wait::default(),
            command_timeout: Duration::from_secs(30),
        }
    }

    /// Parses the command line form `src:dst[:command]` (the command is
    /// everything after the second colon, colons included).
    pub fn parse_arg(arg: &str) -> Result<Spec, String> {
        let mut parts = arg.splitn(3, ':');
        let src = parts.next().unwrap_or_default();
        let dst = parts.next().unwrap_or_default();
        if src.is_empty() || dst.is_empty() {
            return Err(format!(
                "template {arg:?}: expected SOURCE:DESTINATION[:COMMAND]"
            ));
        }
        let mut spec = Spec::new(src, dst);
        spec.command = parts
            .next()
            .filter(|c| !c.trim().is_empty())
            .map(String::from);
        Ok(spec)
    }
}

/// Why `once` failed.
#[derive(Debug, thiserror::Error)]
#[error("{failed} of {total} templates failed to render")]
pub struct OnceError {
    pub failed: usize,
    pub total: usize,
}

/// Templates sharing one data source.
#[derive(Clone)]
pub struct TemplateSet {
    pub source: Arc<dyn Source>,
    pub hub: Hub,
    /// What `hostname()` returns.
    pub hostname: String,
    pub limits: Limits,
    /// Becomes true once the agent caught up with the cluster.
    pub caught_up: watch::Receiver<bool>,
    /// The longest the first render waits for `caught_up`.
    pub catch_up_timeout: Duration,
    /// Where each template's last outcome is shown (the web UI).
    pub status: crate::status::StatusBoard,
}

impl TemplateSet {
    /// Runs every template until `shutdown` becomes true (or, with `once`,
    /// until each rendered once).
    pub async fn run(
        self,
        specs: Vec<Spec>,
        once: bool,
        shutdown: CancellationToken,
    ) -> Result<(), OnceError> {
        let total = specs.len();
        let mut tasks = tokio::task::JoinSet::new();
        for spec in specs {
            let set = self.clone();
            let shutdown = shutdown.clone();
            tasks.spawn(async move { set.run_one(spec, once, shutdown).await });
        }
        let mut failed = 0;
        while let Some(r) = tasks.join_next().await {
            if !matches!(r, Ok(Ok(()))) {
                failed += 1;
            }
        }
        if failed > 0 {
            return Err(OnceError { failed, total });
        }
        Ok(())
    }

    async fn wait_caught_up(&self, spec: &Spec, shutdown: &CancellationToken) {
        let mut rx = self.caught_up.clone();
        let waited = tokio::select! {
            r = tokio::time::timeout(self.catch_up_timeout, rx.wait_for(|c| *c)) => r.is_ok(),
            _ = shutdown.cancelled() => true,
        };
        if !waited {
            tracing::warn!(
                target: crate::LOG_TARGET,
                template = %spec.source.display(),
                timeout = ?self.catch_up_timeout,
                "the agent has not caught up with the cluster; rendering anyway"
            );
        }
    }

    async fn run_one(
        &self,
        spec: Spec,
        once: bool,
        shutdown: CancellationToken,
    ) -> Result<(), RenderError> {
        let name = spec.source.display().to_string();
        // Collect changes from before the first render on.
        let slot = self.hub.slot();
        let (file_tx, mut file_rx) = mpsc::channel::<()>(4);
        let _watcher = watch_file(&spec.source, file_tx);
        self.wait_caught_up(&spec, &shutdown).await;
        tracing::info!(
            target: crate::LOG_TARGET,
            template = %name,
            destination = %spec.destination.display(),
            "watching and rendering {} to {}",
            spec.source.display(),
            spec.destination.display()
        );
        let board = self
            .status
            .add(name.clone(), spec.destination.display().to_string());
        let renderer = Arc::new(Renderer::new(
            self.source.clone(),
            self.hostname.clone(),
            self.limits,
        ));
        let mut compiled: Option<Arc<Compiled>> = None;
        let mut deps = Deps::default();
        let mut q = Quiescence::default();
        let mut retry_at: Option<Instant> = None;
        let mut backoff = Duration::from_secs(1);
        let (mut reload, mut render_now) = (true, true);
        // An edit is read once the file has been quiet for SOURCE_SETTLE
        // (an editor's truncate-then-write would otherwise compile the
        // empty file between the two and render it), at most SOURCE_SETTLE_MAX
        // after the first event of a burst.
        let mut reload_at: Option<(Instant, Instant)> = None;
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            if reload {
                reload = false;
                match compile(&renderer, &spec.source).await {
                    Ok(c) => {
                        compiled = Some(Arc::new(c));
                        render_now = true;
                    }
                    Err(e) => {
                        self.status
                            .record(board, Attempt::Failed(&format!("does not compile: {e}")));
                        metrics::counter!("corro_tpl_render_errors_total", "template" => name.clone())
                            .increment(1);
                        tracing::error!(target: crate::LOG_TARGET, template = %name, line = e.line, error = %e.message, "template does not compile; keeping the last good file");
                        if once {
                            return Err(e);
                        }
                    }
                }
            }
            if let (true, Some(tpl)) = (render_now, compiled.clone()) {
                render_now = false;
                q.clear();
                retry_at = None;
                // Changes up to here are covered by this render.
                let _ = slot.take();
                let outcome = self.render_and_write(&renderer, tpl, &spec, &name).await;
                match (&outcome, renderer.waiting_for()) {
                    (Ok(_), _) => self.status.record(board, Attempt::Rendered),
                    (Err(_), Some(k)) => self.status.record(board, Attempt::Waiting(&k)),
                    (Err(e), None) => self.status.record(board, Attempt::Failed(&e.to_string())),
                }
                match outcome {
                    Ok(d) => {
                        deps = d;
                        self.source.watch(&deps);
                        backoff = Duration::from_secs(1);
                        if once {
                            return Ok(());
                        }
                    }
                    Err(e) => {
                        if once {
                            return Err(e);
                        }
                        // What the failed render read (a key it waits
                        // for): a change there re-renders before the retry.
                        let failed = renderer.failed_deps();
                        let watching = failed != Deps::default();
                        if watching {
                            deps = failed;
                            self.source.watch(&deps);
                        }
                        // Waiting for a key: its creation re-renders, no
                        // retry timer (a missing key is not a fault).
                        if !(watching && renderer.waiting_for().is_some()) {
                            retry_at = Some(Instant::now() + backoff);
                            backoff = (backoff * 2).min(Duration::from_secs(30));
                        }
                    }
                }
                // Changes made while rendering, to what it read.
                if slot.take().touches(&deps) {
                    q.change(Instant::now());
                }
                continue;
            }
            let deadline = [q.deadline(spec.wait), retry_at, reload_at.map(|(at, _)| at)]
                .into_iter()
                .flatten()
                .min();
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = slot.changed() => {
                    if slot.take().touches(&deps) {
                        q.change(Instant::now());
                    }
                }
                Some(()) = file_rx.recv() => {
                    let now = Instant::now();
                    let first = reload_at.map_or(now, |(_, first)| first);
                    reload_at = Some(((now + SOURCE_SETTLE).min(first + SOURCE_SETTLE_MAX), first));
                }
                _ = sleep_until(deadline), if deadline.is_some() => {
                    let now = Instant::now();
                    if reload_at.is_some_and(|(at, _)| at <= now) {
                        reload_at = None;
                        tracing::info!(target: crate::LOG_TARGET, template = %name, "template file changed; recompiling");
                        reload = true;
                    }
                    if q.due(spec.wait, now) || retry_at.is_some_and(|r| r <= now) {
                        render_now = true;
                    }
                }
            }
        }
    }

    /// Renders, writes when changed, runs the command. The deps of a
    /// successful render.
    async fn render_and_write(
        &self,
        renderer: &Arc<Renderer>,
        tpl: Arc<Compiled>,
        spec: &Spec,
        name: &str,
    ) -> Result<Deps, RenderError> {
        let r = renderer.clone();
        let dest = spec.destination.clone();
        let opts = WriteOptions {
            perms: spec.perms,
            backup: spec.backup,
        };
        let started = Instant::now();
        let result = tokio::task::spawn_blocking(move || {
            let rendered = r.render(&tpl)?;
            let written = output::write(&dest, rendered.output.as_bytes(), &opts);
            Ok::<_, RenderError>((rendered, written))
        })
        .await
        .unwrap_or_else(|e| {
            Err(RenderError {
                line: None,
                message: format!("render task failed: {e}"),
            })
        });
        metrics::histogram!("corro_tpl_render_seconds").record(started.elapsed().as_secs_f64());
        metrics::counter!("corro_tpl_renders_total", "template" => name.to_string()).increment(1);
        let (rendered, written) = match result {
            Ok(v) => v,
            Err(e) => {
                if let Some(key) = renderer.waiting_for() {
                    // consul-template's behaviour: wait for the key, quietly.
                    tracing::info!(target: crate::LOG_TARGET, template = %name, key = %key, "waiting for the KV key to exist; not rendered yet");
                    return Err(e);
                }
                metrics::counter!("corro_tpl_render_errors_total", "template" => name.to_string())
                    .increment(1);
                tracing::error!(target: crate::LOG_TARGET, template = %name, line = e.line, error = %e.message, "render failed; keeping the last good file");
                return Err(e);
            }
        };
        match written {
            Ok(Written::Unchanged) => {
                tracing::debug!(target: crate::LOG_TARGET, template = %name, "output unchanged");
            }
            Ok(Written::Replaced) => {
                metrics::counter!("corro_tpl_writes_total", "template" => name.to_string())
                    .increment(1);
                tracing::info!(
                    target: crate::LOG_TARGET,
                    template = %name,
                    destination = %spec.destination.display(),
                    bytes = rendered.output.len(),
                    took = ?started.elapsed(),
                    "rendered"
                );
                if let Some(cmd) = &spec.command {
                    run_command(name, cmd, spec.command_timeout).await;
                }
            }
            Err(e) => {
                metrics::counter!("corro_tpl_render_errors_total", "template" => name.to_string())
                    .increment(1);
                let e = RenderError {
                    line: None,
                    message: format!("writing {}: {e}", spec.destination.display()),
                };
                tracing::error!(target: crate::LOG_TARGET, template = %name, error = %e.message, "write failed; keeping the last good file");
                return Err(e);
            }
        }
        Ok(rendered.deps)
    }
}

async fn run_command(name: &str, cmd: &str, timeout: Duration) {
    let outcome = command::run(cmd, timeout).await;
    let result = match &outcome {
        Outcome::Exited { code: Some(0), .. } => "ok",
        Outcome::Exited { .. } => "failed",
        Outcome::TimedOut => "timeout",
        Outcome::Failed(_) => "error",
    };
    metrics::counter!("corro_tpl_commands_total", "result" => result).increment(1);
    match outcome {
        Outcome::Exited {
            code: Some(0),
            stdout,
            stderr,
        } => {
            tracing::info!(target: crate::LOG_TARGET, template = %name, command = %cmd, stdout = %stdout, stderr = %stderr, "command succeeded");
        }
        Outcome::Exited {
            code,
            stdout,
            stderr,
        } => {
            tracing::error!(target: crate::LOG_TARGET, template = %name, command = %cmd, code = ?code, stdout = %stdout, stderr = %stderr, "command failed");
        }
        Outcome::TimedOut => {
            tracing::error!(target: crate::LOG_TARGET, template = %name, command = %cmd, timeout = ?timeout, "command timed out and was killed");
        }
        Outcome::Failed(e) => {
            tracing::error!(target: crate::LOG_TARGET, template = %name, command = %cmd, error = %e, "command could not start");
        }
    }
}

async fn compile(renderer: &Arc<Renderer>, path: &Path) -> Result<Compiled, RenderError> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| RenderError {
            line: None,
            message: format!("reading {}: {e}", path.display()),
        })?;
    let r = renderer.clone();
    tokio::task::spawn_blocking(move || r.compile(&text))
        .await
        .unwrap_or_else(|e| {
            Err(RenderError {
                line: None,
                message: e.to_string(),
            })
        })
}

/// How long a template file must be quiet after an edit before it is read.
const SOURCE_SETTLE: Duration = Duration::from_millis(100);
/// A file written to without pause is still read this long after it began.
const SOURCE_SETTLE_MAX: Duration = Duration::from_secs(1);

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(d) = deadline {
        tokio::time::sleep_until(d.into()).await;
    }
}

/// Watches the template file (through its directory, so editors that
/// replace the file are seen); `None` when watching is not possible (the
/// template then only re-renders on data changes).
fn watch_file(path: &Path, tx: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    use notify::{EventKind, RecursiveMode, Watcher};
    let name = path.file_name()?.to_owned();
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(ev) = res else { return };
        if !matches!(
            ev.kind,
            EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_)
        ) {
            return;
        }
        if ev.paths.iter().any(|p| p.file_name() == Some(&name)) {
            let _ = tx.try_send(());
        }
    })
    .map_err(
        |e| tracing::warn!(target: crate::LOG_TARGET, error = %e, "cannot watch template files"),
    )
    .ok()?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|e| tracing::warn!(target: crate::LOG_TARGET, dir = %dir.display(), error = %e, "cannot watch the template's directory"))
        .ok()?;
    Some(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_form() {
        let s = Spec::parse_arg("a.rhai:out.txt:nginx -s reload; echo a:b").unwrap();
        assert_eq!(s.source, PathBuf::from("a.rhai"));
        assert_eq!(s.destination, PathBuf::from("out.txt"));
        assert_eq!(s.command.as_deref(), Some("nginx -s reload; echo a:b"));
        assert_eq!(Spec::parse_arg("a.rhai:b").unwrap().command, None);
        assert!(Spec::parse_arg("a.rhai").is_err());
        assert!(Spec::parse_arg(":b").is_err());
    }
}
