//! Prometheus metrics on `telemetry.prometheus.addr` (GET `/metrics`, and `/`
//! as the reference's Fly.io example scrapes).
//!
//! Metrics are named `corro_<subsystem>_<thing>_<unit>`: API requests and
//! latency per route and status, writer queue depths, this node's head
//! version, gossip broadcasts sent/dropped/forwarded, changesets received,
//! sync rounds, refused frames and known members. Without a configured
//! address the `metrics` macros are no-ops.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use corro_store::Store;
use metrics_exporter_prometheus::PrometheusBuilder;
use tokio::sync::watch;

/// Installs the recorder and serves it; also samples store gauges.
pub(crate) async fn serve(
    addr: SocketAddr,
    store: Store,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| anyhow::anyhow!("installing the metrics recorder: {e}"))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding the metrics listener on {addr}: {e}"))?;
    tracing::info!(
        "Starting Prometheus metrics on tcp/{}",
        listener.local_addr()?
    );
    let render = move || {
        let h = handle.clone();
        async move { h.render() }
    };
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(render.clone()))
        .route("/", axum::routing::get(render));
    let mut stop_server = stop.clone();
    tokio::spawn(async move {
        let server = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = stop_server.changed().await;
        });
        if let Err(e) = server.await {
            tracing::warn!(error = %e, "metrics listener stopped");
        }
    });
    tokio::spawn(async move {
        loop {
            let q = store.writer_stats();
            metrics::gauge!("corro_store_writer_local_active").set(q.local_active as f64);
            metrics::gauge!("corro_store_writer_remote_waiting").set(q.remote_waiting as f64);
            metrics::gauge!("corro_store_head_version").set(store.head() as f64);
            tokio::select! {
                _ = stop.changed() => break,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    });
    Ok(())
}

/// Counts API requests and their latency by route and status.
pub(crate) async fn track_api(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let started = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!("corro_api_requests_total", "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("corro_api_request_duration_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    resp
}
