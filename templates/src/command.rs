//! The command run after a destination changes (`nginx -s reload`, ...).
//!
//! It runs through `sh -c` in its own process group, with a timeout; when
//! the timeout passes the whole group is killed (so `sh -c "a; b"` leaves
//! nothing behind). Its exit status and output (the first 4 KiB of each
//! stream) are returned for the log.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It exited; `code` is `None` when a signal ended it.
    Exited {
        code: Option<i32>,
        stdout: String,
        stderr: String,
    },
    /// The timeout passed; it was killed.
    TimedOut,
    /// It could not be started.
    Failed(String),
}

impl Outcome {
    pub fn success(&self) -> bool {
        matches!(self, Outcome::Exited { code: Some(0), .. })
    }
}

/// Output kept per stream.
const KEPT: usize = 4096;

/// Runs `command` with `timeout`.
pub async fn run(command: &str, timeout: Duration) -> Outcome {
    let mut child = match tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    let pid = child.id();
    let (mut out, mut err) = (child.stdout.take(), child.stderr.take());
    let finished = async {
        let (mut o, mut e) = (Vec::new(), Vec::new());
        let read_out = async {
            if let Some(s) = out.as_mut() {
                let _ = s.read_to_end(&mut o).await;
            }
        };
        let read_err = async {
            if let Some(s) = err.as_mut() {
                let _ = s.read_to_end(&mut e).await;
            }
        };
        let ((), ()) = tokio::join!(read_out, read_err);
        let status = child.wait().await;
        (status, o, e)
    };
    match tokio::time::timeout(timeout, finished).await {
        Ok((Ok(status), o, e)) => Outcome::Exited {
            code: status.code(),
            stdout: kept(&o),
            stderr: kept(&e),
        },
        Ok((Err(e), _, _)) => Outcome::Failed(e.to_string()),
        Err(_) => {
            if let Some(pid) = pid {
                // The group: `sh` and whatever it started.
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", "--", &format!("-{pid}")])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
            Outcome::TimedOut
        }
    }
}

fn kept(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(KEPT)]);
    text.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn exit_status_and_output_are_reported() {
        let o = run("echo hi; echo oops >&2; exit 3", Duration::from_secs(10)).await;
        assert_eq!(
            o,
            Outcome::Exited {
                code: Some(3),
                stdout: "hi".into(),
                stderr: "oops".into()
            }
        );
    }

    #[tokio::test]
    async fn a_command_past_its_timeout_is_killed_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("late");
        let cmd = format!("sleep 2; touch {}", marker.display());
        let t = std::time::Instant::now();
        assert_eq!(
            run(&cmd, Duration::from_millis(200)).await,
            Outcome::TimedOut
        );
        assert!(t.elapsed() < Duration::from_secs(2));
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(
            !marker.exists(),
            "the command's children outlived the timeout"
        );
    }
}
