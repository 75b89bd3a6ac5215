//! The check runner: one task schedules every check of this agent, runs
//! due probes on a bounded set of tasks (thousands of checks, no thread or
//! process per check), applies thresholds and TTLs ([`crate::state`]) and
//! sends what changed to its owner.
//!
//! Scheduling as Consul's: a probed check first runs at a random point
//! within its interval (checks registered together do not fire together),
//! then an interval after each run ends; intervals under 1 s run at 1 s.
//! A TTL check goes critical when its TTL passes without an update.
//! A probe that outlives its timeout (plus a second of grace) is dropped
//! and reported critical.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::time::{DelayQueue, delay_queue};

use crate::definition::{CheckDefinition, Kind, MAX_PERIOD};
use crate::probe::{Outcome, Prober};
use crate::state::{CheckState, Update};
use crate::status::Status;

/// Runner limits.
#[derive(Clone, Debug)]
pub struct RunnerConfig {
    /// Probes in flight at once; further due checks wait their turn.
    pub max_concurrent: usize,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            max_concurrent: 512,
        }
    }
}

/// How a check starts.
#[derive(Clone, Debug)]
pub struct Start {
    pub status: Status,
    pub output: String,
    /// TTL checks: time left before expiry (restored after a restart);
    /// `None` means a full TTL.
    pub ttl_left: Option<Duration>,
    /// Echoed in this check's updates: the caller tells a replaced
    /// check's late updates from the new one's.
    pub epoch: u64,
}

enum Command {
    Add(Arc<CheckDefinition>, Start),
    Remove(String),
    Ttl {
        id: String,
        status: Status,
        note: String,
        /// `None`: no TTL check of that ID; else the update it made.
        done: oneshot::Sender<Option<Option<Update>>>,
    },
}

/// Handle to the runner task (cheap to clone).
#[derive(Clone)]
pub struct Runner {
    tx: mpsc::UnboundedSender<Command>,
}

impl Runner {
    /// Starts the runner; changes arrive on the returned receiver. Ends when
    /// `stop` is cancelled (probes in flight are dropped).
    pub fn start(
        prober: Arc<dyn Prober>,
        cfg: RunnerConfig,
        stop: CancellationToken,
    ) -> (Runner, mpsc::Receiver<Update>, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (out_tx, out_rx) = mpsc::channel(4096);
        let task = tokio::spawn(run(prober, cfg, rx, out_tx, stop));
        (Runner { tx }, out_rx, task)
    }

    /// As [`Runner::start`], on a thread of its own with a single-threaded
    /// runtime: the probes, their timers and the connections they open stay
    /// on one thread. On the agent's multi-threaded runtime every probe's
    /// wakeups crossed threads (about 17 context switches per probe,
    /// measured with 1,000 probes/s). `done` resolves when the runner has
    /// ended, and errs if it panicked.
    pub fn start_on_thread(
        prober: Arc<dyn Prober>,
        cfg: RunnerConfig,
        stop: CancellationToken,
    ) -> std::io::Result<(Runner, mpsc::Receiver<Update>, oneshot::Receiver<()>)> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (out_tx, out_rx) = mpsc::channel(4096);
        let (done_tx, done) = oneshot::channel();
        std::thread::Builder::new()
            .name("corro-checks".into())
            .spawn(move || {
                rt.block_on(run(prober, cfg, rx, out_tx, stop));
                let _ = done_tx.send(());
            })?;
        Ok((Runner { tx }, out_rx, done))
    }

    /// Adds or replaces a check (a replaced check keeps nothing of the old
    /// one but what `start` says).
    pub fn add(&self, def: impl Into<Arc<CheckDefinition>>, start: Start) {
        let _ = self.tx.send(Command::Add(def.into(), start));
    }

    pub fn remove(&self, id: &str) {
        let _ = self.tx.send(Command::Remove(id.to_string()));
    }

    /// A TTL check's update; `false` if the runner holds no TTL check `id`.
    pub async fn ttl(&self, id: &str, status: Status, note: String) -> bool {
        self.ttl_update(id, status, note).await.is_some()
    }

    /// As [`Runner::ttl`], with the update it made (also sent on the
    /// updates channel, with the same `seq`), so the caller can show it
    /// before answering. `None`: no TTL check `id`.
    pub async fn ttl_update(
        &self,
        id: &str,
        status: Status,
        note: String,
    ) -> Option<Option<Update>> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Command::Ttl {
                id: id.to_string(),
                status,
                note,
                done,
            })
            .ok()?;
        rx.await.ok().flatten()
    }
}

struct Entry {
    def: Arc<CheckDefinition>,
    state: CheckState,
    /// Its slot in the timer queue, if scheduled.
    timer: Option<delay_queue::Key>,
    /// Bumped on replace: results of an older generation are dropped.
    generation: u64,
}

struct Loop {
    prober: Arc<dyn Prober>,
    cfg: RunnerConfig,
    checks: HashMap<String, Entry>,
    timers: DelayQueue<String>,
    waiting: VecDeque<(String, u64)>,
    running: JoinSet<(String, u64, Outcome, Duration)>,
    generation: u64,
    /// The last update's `seq`.
    seq: u64,
    out: mpsc::Sender<Update>,
}

async fn run(
    prober: Arc<dyn Prober>,
    cfg: RunnerConfig,
    mut rx: mpsc::UnboundedReceiver<Command>,
    out: mpsc::Sender<Update>,
    stop: CancellationToken,
) {
    let mut l = Loop {
        prober,
        cfg,
        checks: HashMap::new(),
        timers: DelayQueue::new(),
        waiting: VecDeque::new(),
        running: JoinSet::new(),
        generation: 0,
        seq: 0,
        out,
    };
    // The gauges as last set (set again only when they move).
    let mut shown = (usize::MAX, usize::MAX);
    loop {
        let timers_idle = l.timers.is_empty();
        let none_running = l.running.is_empty();
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            cmd = rx.recv() => match cmd {
                Some(c) => l.command(c).await,
                None => return,
            },
            Some(done) = l.running.join_next(), if !none_running => {
                if let Ok((id, generation, outcome, took)) = done {
                    l.finished(id, generation, outcome, took).await;
                }
                l.launch_waiting();
            }
            Some(exp) = std::future::poll_fn(|cx| l.timers.poll_expired(cx)), if !timers_idle => {
                l.due(exp.into_inner()).await;
            }
        }
        let now = (l.running.len(), l.waiting.len());
        if now != shown {
            shown = now;
            metrics::gauge!("corro_checks_running").set(now.0 as f64);
            metrics::gauge!("corro_checks_waiting").set(now.1 as f64);
        }
    }
}

impl Loop {
    /// Numbers and sends an update; returns it as sent.
    async fn send(&mut self, u: Option<Update>) -> Option<Update> {
        let mut u = u?;
        self.seq += 1;
        u.seq = self.seq;
        metrics::counter!("corro_checks_updates_total", "status" => u.status.as_str()).increment(1);
        let _ = self.out.send(u.clone()).await;
        Some(u)
    }

    async fn command(&mut self, c: Command) {
        match c {
            Command::Add(def, start) => {
                self.drop_check(&def.id);
                self.generation += 1;
                let mut state = CheckState::new(&def, start.status, start.output);
                state.epoch = start.epoch;
                let first = match &def.kind {
                    Kind::Ttl { ttl } => Some(start.ttl_left.unwrap_or(*ttl).min(MAX_PERIOD)),
                    k if k.is_probed() || matches!(k, Kind::Alias { .. }) => {
                        let every = alias_or_interval(&def);
                        Some(
                            rand::rng()
                                .random_range(Duration::ZERO..every.max(Duration::from_millis(1))),
                        )
                    }
                    _ => None,
                };
                let timer = first.map(|d| self.timers.insert(def.id.clone(), d));
                self.checks.insert(
                    def.id.clone(),
                    Entry {
                        def,
                        state,
                        timer,
                        generation: self.generation,
                    },
                );
                metrics::gauge!("corro_checks_registered").set(self.checks.len() as f64);
            }
            Command::Remove(id) => {
                self.drop_check(&id);
                metrics::gauge!("corro_checks_registered").set(self.checks.len() as f64);
            }
            Command::Ttl {
                id,
                status,
                note,
                done,
            } => {
                let Some(e) = self.checks.get_mut(&id) else {
                    let _ = done.send(None);
                    return;
                };
                let Kind::Ttl { ttl } = e.def.kind else {
                    let _ = done.send(None);
                    return;
                };
                // Every update restarts the TTL.
                let ttl = ttl.min(MAX_PERIOD);
                match e.timer {
                    Some(k) => self.timers.reset(&k, ttl),
                    None => e.timer = Some(self.timers.insert(id.clone(), ttl)),
                }
                let u = e.state.on_ttl(status, &note);
                let u = self.send(u).await;
                let _ = done.send(Some(u));
            }
        }
    }

    fn drop_check(&mut self, id: &str) {
        if let Some(e) = self.checks.remove(id)
            && let Some(k) = e.timer
        {
            self.timers.remove(&k);
        }
    }

    async fn due(&mut self, id: String) {
        let Some(e) = self.checks.get_mut(&id) else {
            return;
        };
        e.timer = None;
        if let Kind::Ttl { .. } = e.def.kind {
            let u = e.state.on_ttl_expired();
            self.send(u).await;
            return;
        }
        let generation = e.generation;
        self.waiting.push_back((id, generation));
        self.launch_waiting();
    }

    fn launch_waiting(&mut self) {
        while self.running.len() < self.cfg.max_concurrent.max(1) {
            let Some((id, generation)) = self.waiting.pop_front() else {
                return;
            };
            let Some(e) = self.checks.get(&id).filter(|e| e.generation == generation) else {
                continue;
            };
            let def = e.def.clone();
            let probe = self.prober.probe(def.clone());
            let limit = def.effective_timeout() + Duration::from_secs(1);
            self.running.spawn(async move {
                let started = Instant::now();
                let outcome = match tokio::time::timeout(limit, probe).await {
                    Ok(o) => o,
                    Err(_) => Outcome::new(
                        Status::Critical,
                        format!(
                            "Timed out ({}) running check",
                            crate::duration::format(def.effective_timeout())
                        ),
                    ),
                };
                (id, generation, outcome, started.elapsed())
            });
        }
    }

    async fn finished(&mut self, id: String, generation: u64, outcome: Outcome, took: Duration) {
        let Some(e) = self
            .checks
            .get_mut(&id)
            .filter(|e| e.generation == generation)
        else {
            return;
        };
        metrics::histogram!("corro_checks_probe_seconds", "type" => e.def.kind.type_name())
            .record(took.as_secs_f64());
        metrics::counter!("corro_checks_probes_total", "type" => e.def.kind.type_name(), "status" => outcome.status.as_str())
            .increment(1);
        let next = alias_or_interval(&e.def);
        e.timer = Some(self.timers.insert(id, next));
        let u = e.state.on_outcome(outcome);
        self.send(u).await;
    }
}

/// How often a check runs: its interval (at least 1 s); alias checks, which
/// have none, re-read their service every second.
fn alias_or_interval(def: &CheckDefinition) -> Duration {
    match def.kind {
        Kind::Alias { .. } => Duration::from_secs(1),
        _ => def.effective_interval(),
    }
    .min(MAX_PERIOD)
}
