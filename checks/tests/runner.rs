//! The runner driven by a scripted prober in virtual time: staggered first
//! runs, intervals, thresholds, TTL expiry and updates, removal, the bound
//! on probes in flight and the timeout of a probe that never returns.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use corro_checks::probe::ProbeFuture;
use corro_checks::{CheckDefinition, Outcome, Prober, Runner, RunnerConfig, Start, Status, Update};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Answers each check with the next scripted outcome (then the last one
/// again) after 100 ms, or never (`hang`); counts probes and the most in
/// flight at once.
#[derive(Default)]
struct Script {
    outcomes: Mutex<HashMap<String, Vec<Status>>>,
    calls: AtomicUsize,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: AtomicUsize,
    hang: bool,
}

/// Counts a probe out when its future ends or is dropped (timed out).
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Prober for Script {
    fn probe(&self, check: Arc<CheckDefinition>) -> ProbeFuture {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let guard = InFlight(self.in_flight.clone());
        let status = {
            let mut o = self.outcomes.lock();
            let list = o
                .entry(check.id.clone())
                .or_insert_with(|| vec![Status::Passing]);
            if list.len() > 1 {
                list.remove(0)
            } else {
                list[0]
            }
        };
        let hang = self.hang;
        Box::pin(async move {
            let _guard = guard;
            if hang {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            Outcome::new(status, format!("probe says {status}"))
        })
    }
}

fn def(json: serde_json::Value) -> CheckDefinition {
    CheckDefinition::decode(json.as_object().expect("an object"))
        .expect("a valid check")
        .expect("not empty")
}

fn start(status: Status) -> Start {
    Start {
        status,
        output: String::new(),
        ttl_left: None,
        epoch: 0,
    }
}

async fn next(rx: &mut mpsc::Receiver<Update>) -> Update {
    tokio::time::timeout(Duration::from_secs(3600), rx.recv())
        .await
        .expect("an update within an hour of virtual time")
        .expect("the runner is running")
}

#[tokio::test(start_paused = true)]
async fn first_run_within_the_interval_then_every_interval() {
    let prober = Arc::new(Script::default());
    let stop = CancellationToken::new();
    let (runner, mut rx, _task) =
        Runner::start(prober.clone(), RunnerConfig::default(), stop.clone());
    let t0 = tokio::time::Instant::now();
    runner.add(
        def(serde_json::json!({"ID": "c", "Name": "c", "TCP": "x:1", "Interval": "10s"})),
        start(Status::Critical),
    );
    let u = next(&mut rx).await;
    assert_eq!((u.id.as_str(), u.status), ("c", Status::Passing));
    let first = t0.elapsed();
    assert!(
        first < Duration::from_secs(11),
        "first run staggered within the interval: {first:?}"
    );
    // Steady passing: no more updates, but probes every interval.
    tokio::time::sleep(Duration::from_secs(100)).await;
    let calls = prober.calls.load(Ordering::SeqCst);
    assert!(
        (9..=11).contains(&calls),
        "about one probe per 10 s: {calls}"
    );
    assert!(rx.try_recv().is_err(), "nothing changed, nothing sent");
    stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn thresholds_hold_back_a_flapping_target() {
    let prober = Arc::new(Script::default());
    prober.outcomes.lock().insert(
        "f".into(),
        vec![
            Status::Passing,
            Status::Critical,
            Status::Passing,
            Status::Critical,
            Status::Critical,
            Status::Critical,
        ],
    );
    let stop = CancellationToken::new();
    let (runner, mut rx, _task) =
        Runner::start(prober.clone(), RunnerConfig::default(), stop.clone());
    runner.add(
        def(
            serde_json::json!({"ID": "f", "Name": "f", "TCP": "x:1", "Interval": "1s",
            "FailuresBeforeCritical": 3, "SuccessBeforePassing": 2}),
        ),
        start(Status::Critical),
    );
    // The first result applies at once; the lone failures in between do
    // not; three in a row do.
    assert_eq!(next(&mut rx).await.status, Status::Passing);
    assert_eq!(next(&mut rx).await.status, Status::Critical);
    assert_eq!(prober.calls.load(Ordering::SeqCst), 6);
    stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn ttl_checks_expire_and_updates_restart_them() {
    let prober = Arc::new(Script::default());
    let stop = CancellationToken::new();
    let (runner, mut rx, _task) =
        Runner::start(prober.clone(), RunnerConfig::default(), stop.clone());
    runner.add(
        def(serde_json::json!({"ID": "t", "Name": "t", "TTL": "30s"})),
        start(Status::Critical),
    );
    assert!(runner.ttl("t", Status::Passing, "alive".into()).await);
    assert_eq!(next(&mut rx).await.output, "alive");
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(runner.ttl("t", Status::Passing, "still".into()).await);
    assert_eq!(next(&mut rx).await.output, "still");
    let t = tokio::time::Instant::now();
    let u = next(&mut rx).await;
    assert_eq!(u.status, Status::Critical);
    assert_eq!(
        u.output,
        "TTL expired (last output before timeout follows): still"
    );
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_secs(29) && waited <= Duration::from_secs(31),
        "{waited:?}"
    );
    assert!(!runner.ttl("missing", Status::Passing, String::new()).await);
    runner.add(
        def(serde_json::json!({"ID": "h", "Name": "h", "TCP": "x:1", "Interval": "5s"})),
        start(Status::Critical),
    );
    assert!(
        !runner.ttl("h", Status::Passing, String::new()).await,
        "not a TTL check"
    );
    assert_eq!(
        prober.calls.load(Ordering::SeqCst),
        0,
        "TTL checks are never probed"
    );
    stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_restored_ttl_expires_when_it_would_have() {
    let prober = Arc::new(Script::default());
    let stop = CancellationToken::new();
    let (runner, mut rx, _task) = Runner::start(prober, RunnerConfig::default(), stop.clone());
    let t = tokio::time::Instant::now();
    runner.add(
        def(serde_json::json!({"ID": "t", "Name": "t", "TTL": "60s"})),
        Start {
            status: Status::Passing,
            output: "ok".into(),
            ttl_left: Some(Duration::from_secs(5)),
            epoch: 0,
        },
    );
    let u = next(&mut rx).await;
    assert_eq!(u.status, Status::Critical);
    assert!(t.elapsed() < Duration::from_secs(6));
    stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn removed_checks_stop_and_their_results_are_dropped() {
    let prober = Arc::new(Script::default());
    let stop = CancellationToken::new();
    let (runner, mut rx, _task) =
        Runner::start(prober.clone(), RunnerConfig::default(), stop.clone());
    runner.add(
        def(serde_json::json!({"ID": "r", "Name": "r", "TCP": "x:1", "Interval": "1s"})),
        start(Status::Critical),
    );
    assert_eq!(next(&mut rx).await.status, Status::Passing);
    runner.remove("r");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let calls = prober.calls.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(prober.calls.load(Ordering::SeqCst) <= calls + 1);
    assert!(rx.try_recv().is_err());
    stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn probes_in_flight_are_bounded_and_hung_probes_time_out() {
    let prober = Arc::new(Script {
        hang: true,
        ..Default::default()
    });
    let stop = CancellationToken::new();
    let (runner, mut rx, _task) = Runner::start(
        prober.clone(),
        RunnerConfig { max_concurrent: 4 },
        stop.clone(),
    );
    for i in 0..20 {
        runner.add(
            def(
                serde_json::json!({"ID": format!("h{i}"), "Name": "h", "TCP": "x:1",
                "Interval": "10s", "Timeout": "2s"}),
            ),
            start(Status::Passing),
        );
    }
    let mut seen = std::collections::HashSet::new();
    while seen.len() < 20 {
        let u = next(&mut rx).await;
        assert_eq!(u.status, Status::Critical);
        assert_eq!(u.output, "Timed out (2s) running check");
        seen.insert(u.id);
    }
    assert!(prober.calls.load(Ordering::SeqCst) >= 20);
    assert_eq!(prober.max_in_flight.load(Ordering::SeqCst), 4);
    stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn durations_beyond_the_timer_queue_do_not_stop_the_runner() {
    let prober = Arc::new(Script::default());
    let stop = CancellationToken::new();
    let (runner, mut rx, task) =
        Runner::start(prober.clone(), RunnerConfig::default(), stop.clone());
    // 20,000 h (and 10^12 s) are past what the timer queue holds.
    runner.add(
        def(serde_json::json!({"ID": "long", "Name": "l", "TTL": "20000h"})),
        start(Status::Critical),
    );
    runner.add(
        def(serde_json::json!({"ID": "longer", "Name": "l", "TTL": "1000000000000s"})),
        start(Status::Critical),
    );
    runner.add(def(serde_json::json!({"ID": "slow", "Name": "s", "TCP": "x:1", "Interval": "1000000000000s"})), start(Status::Critical));
    assert!(runner.ttl("long", Status::Passing, "ok".into()).await);
    assert_eq!(next(&mut rx).await.id, "long");
    // Still running: a normal check keeps being probed.
    runner.add(
        def(serde_json::json!({"ID": "n", "Name": "n", "TCP": "x:1", "Interval": "1s"})),
        start(Status::Critical),
    );
    let u = next(&mut rx).await;
    assert_eq!(u.id, "n");
    assert!(!task.is_finished());
    stop.cancel();
}
