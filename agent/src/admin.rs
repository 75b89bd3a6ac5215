//! The admin interface: JSON lines over the unix socket at `admin.path`.
//!
//! One request per line, one answer per line:
//! `{"cmd": "ping"}`, `{"cmd": "reload"}` (re-apply schema files),
//! `{"cmd": "members"}`, `{"cmd": "books"}` (what this node holds of each
//! actor), `{"cmd": "verify"}` (integrity check and bookkeeping), `{"cmd": "log_level", "level": "debug"}`, `{"cmd": "log_reset"}`, `{"cmd": "rejoin"}`. Answers are
//! `{"ok": true, "result": ...}` or `{"ok": false, "error": "..."}`. The
//! socket is only reachable by local users with access to its path; `corrosion
//! reload` and the cluster commands use it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// A request on the admin socket.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub(crate) enum AdminRequest {
    Ping,
    Reload,
    Members,
    Books,
    Verify,
    LogLevel { level: String },
    LogReset,
    Rejoin,
}

/// What the admin server needs from the agent.
pub(crate) trait AdminHandler: Send + Sync + 'static {
    fn reload(&self) -> Result<serde_json::Value, String>;
    fn books(&self) -> serde_json::Value;
    /// SQLite's integrity check and the store's invariants (data, clocks,
    /// version index and bookkeeping agree); the first problem found.
    fn verify(&self) -> Result<serde_json::Value, String>;
    fn set_log_level(&self, level: &str) -> Result<(), String>;
    /// Back to the startup filter; which one.
    fn reset_log_level(&self) -> Result<String, String>;
    fn members(&self) -> serde_json::Value;
    /// Announces the node again; how many peers were asked.
    fn rejoin(&self) -> Result<usize, String>;
}

/// Binds the socket (replacing a stale one) and serves until `shutdown`.
pub(crate) async fn serve(
    path: PathBuf,
    handler: Arc<dyn AdminHandler>,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
    }
    if path.exists() {
        // A socket left by an agent that did not stop cleanly; a live agent
        // holds the database lock, which was checked before we got here.
        std::fs::remove_file(&path)
            .map_err(|e| anyhow::anyhow!("removing stale {}: {e}", path.display()))?;
    }
    let listener = UnixListener::bind(&path)
        .map_err(|e| anyhow::anyhow!("binding admin socket {}: {e}", path.display()))?;
    tracing::info!("Starting Corrosion admin socket at {}", path.display());
    Ok(crate::tasks::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let h = handler.clone();
                        tokio::spawn(async move {
                            if let Err(e) = session(stream, h).await {
                                tracing::debug!(error = %e, "admin session ended");
                            }
                        });
                    }
                    Err(e) => tracing::warn!(error = %e, "admin socket accept failed"),
                }
            }
        }
        let _ = std::fs::remove_file(&path);
    }))
}

async fn session(stream: UnixStream, handler: Arc<dyn AdminHandler>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
        let answer = match serde_json::from_str::<AdminRequest>(&line) {
            Err(e) => json!({"ok": false, "error": format!("bad request: {e}")}),
            Ok(req) => {
                let h = handler.clone();
                let r = tokio::task::spawn_blocking(move || match req {
                    AdminRequest::Ping => Ok(json!("pong")),
                    AdminRequest::Reload => h.reload(),
                    AdminRequest::Members => Ok(h.members()),
                    AdminRequest::Books => Ok(h.books()),
                    AdminRequest::Verify => h.verify(),
                    AdminRequest::LogReset => h.reset_log_level().map(|l| json!(l)),
                    AdminRequest::Rejoin => h.rejoin().map(|n| json!(n)),
                    AdminRequest::LogLevel { level } => {
                        h.set_log_level(&level).map(|()| json!(level))
                    }
                })
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
                match r {
                    Ok(result) => json!({"ok": true, "result": result}),
                    Err(error) => json!({"ok": false, "error": error}),
                }
            }
        };
        let mut out = serde_json::to_vec(&answer)?;
        out.push(b'\n');
        write.write_all(&out).await?;
    }
    Ok(())
}

/// Sends one request to an agent's admin socket and returns its result.
pub(crate) async fn request(path: &Path, req: &AdminRequest) -> anyhow::Result<serde_json::Value> {
    let stream = UnixStream::connect(path).await.map_err(|e| {
        anyhow::anyhow!(
            "connecting to the agent's admin socket {}: {e} (is the agent running?)",
            path.display()
        )
    })?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    write.write_all(&line).await?;
    let mut lines = BufReader::new(read).lines();
    let answer = lines
        .next_line()
        .await?
        .ok_or_else(|| anyhow::anyhow!("the agent closed the admin socket without answering"))?;
    let v: serde_json::Value = serde_json::from_str(&answer)?;
    if v["ok"] == json!(true) {
        Ok(v["result"].clone())
    } else {
        anyhow::bail!(
            "{}",
            v["error"]
                .as_str()
                .unwrap_or("the agent refused the request")
        )
    }
}
