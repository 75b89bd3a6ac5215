//! Prometheus metrics on `telemetry.prometheus.addr` (GET `/metrics`, and `/`
//! as the reference's Fly.io example scrapes).
//!
//! Every metric the agent emits is listed once in [`METRICS`] with its kind,
//! labels and help text: the recorder is given the help text, unlabelled
//! counters and gauges are registered at zero so `rate()` works from the
//! first scrape, and tests check that the code emits nothing unlisted and
//! that docs/METRICS.md and the Grafana dashboard name only listed metrics.
//! Names follow `corro_<subsystem>_<thing>_<unit>`. Gauges sampled rather
//! than updated in place (store queues, read pool, missing versions, sync
//! health) are refreshed every second by [`sample`]. Without a configured
//! address the `metrics` macros are no-ops.

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use corro_store::Store;
use metrics_exporter_prometheus::PrometheusBuilder;

use crate::cluster::Cluster;

/// What a metric is, for its `# TYPE` and for registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric the agent emits.
pub(crate) struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    /// Label names (empty: one unlabelled series, registered at zero).
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

const fn m(
    name: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
    help: &'static str,
) -> Metric {
    Metric {
        name,
        kind,
        labels,
        help,
    }
}

use Kind::{Counter, Gauge, Histogram};

/// Every metric the agent emits (docs/METRICS.md is this table for readers).
#[rustfmt::skip]
pub(crate) const METRICS: &[Metric] = &[
    // HTTP API
    m("corro_api_requests_total", Counter, &["route", "status"], "API requests by matched route and HTTP status"),
    m("corro_api_request_duration_seconds", Histogram, &["route"], "API request latency by matched route"),
    m("corro_api_connections", Gauge, &[], "open API connections (the API and Consul listeners together)"),
    m("corro_api_connections_refused_total", Counter, &["reason"], "API connections refused or closed by a limit"),
    // Store
    m("corro_store_head_version", Gauge, &[], "this node's latest version"),
    m("corro_store_writer_local_active", Gauge, &[], "local transactions waiting for or holding the writer (a group commit counts once, its leader)"),
    m("corro_store_writer_remote_waiting", Gauge, &[], "remote applications queued for the writer"),
    m("corro_store_group_waiting", Gauge, &[], "local transactions queued for the next group commit"),
    m("corro_store_group_commits_total", Counter, &[], "groups of local transactions run together (one SQLite transaction for several callers' transactions; failed groups included)"),
    m("corro_store_group_transactions_total", Counter, &[], "callers' transactions run in group commits (divided by the commits: the mean group size)"),
    m("corro_store_group_reruns_total", Counter, &[], "statements that made SQLite roll back a group's whole transaction (the jobs before it are run again and committed, the ones after it form the next transaction)"),
    m("corro_store_apply_duration_seconds", Histogram, &[], "time to merge one batch of changesets received from peers"),
    m("corro_store_read_pool_size", Gauge, &[], "read-only SQLite connections in the pool"),
    m("corro_store_read_pool_in_use", Gauge, &[], "read connections lent out"),
    m("corro_store_read_pool_waits_total", Counter, &[], "reads that found every connection busy and waited"),
    m("corro_store_read_pool_waited_seconds", Gauge, &[], "time reads spent waiting for a connection, since start"),
    m("corro_query_cache_bytes", Gauge, &[], "bytes held by the POST /v1/queries answer cache"),
    m("corro_query_cache_entries", Gauge, &[], "answers held by the POST /v1/queries answer cache (current or stale)"),
    m("corro_query_cache_hits_total", Counter, &[], "queries answered from the cache"),
    m("corro_query_cache_misses_total", Counter, &[], "request bodies that found no answer read since the last write"),
    m("corro_query_cache_evictions_total", Counter, &[], "answers evicted to stay within api.cache_max_bytes (replacements not counted)"),
    m("corro_store_missing_versions", Gauge, &[], "versions of other actors known to exist and not held yet"),
    // Replication
    m("corro_replication_lag_seconds", Histogram, &["via"], "origin commit to merge here, per version, by path (broadcast or sync; sync includes catch-up of old history)"),
    m("corro_cluster_members", Gauge, &["state"], "members by SWIM state (alive, suspect, down), this node excluded"),
    m("corro_cluster_writes_fenced", Gauge, &[], "1 while local writes wait for the first sync round after a restart"),
    m("corro_schema_mismatched_peers", Gauge, &[], "peers whose last sync round showed a different replicated schema"),
    m("corro_peer_sent_bytes_total", Counter, &["stream"], "bytes sent to peers on broadcast and sync streams"),
    m("corro_peer_received_bytes_total", Counter, &["kind"], "bytes of peer frames received, by message kind"),
    m("corro_peer_messages_refused_total", Counter, &["class"], "decoded peer messages refused by validation, by class"),
    m("corro_gossip_members", Gauge, &[], "active members (alive or suspect) seen by the sync loop"),
    m("corro_gossip_broadcasts_sent_total", Counter, &[], "broadcast streams sent"),
    m("corro_gossip_broadcasts_failed_total", Counter, &[], "broadcast sends that failed (sync repairs)"),
    m("corro_gossip_broadcasts_dropped_total", Counter, &[], "versions dropped from a full broadcast queue (sync repairs)"),
    m("corro_gossip_broadcast_queue_depth", Gauge, &[], "versions waiting to be broadcast (bound 1,024)"),
    m("corro_gossip_changesets_received_total", Counter, &[], "changesets received by broadcast and sync"),
    m("corro_gossip_frames_refused_total", Counter, &[], "peer streams refused (bad frame, wrong version, failed round)"),
    m("corro_gossip_connections_opened_total", Counter, &[], "QUIC connections this node opened"),
    m("corro_gossip_connect_failures_total", Counter, &[], "QUIC connection attempts that failed or went unanswered for 3 s"),
    m("corro_gossip_connections_refused_total", Counter, &[], "incoming QUIC connections refused (TLS)"),
    m("corro_sync_rounds_total", Counter, &["opening"], "completed anti-entropy rounds (either side), by how they opened: digest or whole state"),
    m("corro_sync_pulls_total", Counter, &[], "pulls started outside the periodic rounds"),
    m("corro_sync_whole_state_peers", Gauge, &[], "peers sync rounds open with a whole state: known not to answer digests, or their last round failed (bound 65,536)"),
    m("corro_sync_changesets_sent_total", Counter, &[], "changesets sent by sync rounds"),
    m("corro_sync_changesets_received_total", Counter, &[], "changesets received by sync rounds"),
    m("corro_sync_states_refused_total", Counter, &[], "sync states and digests refused by validation"),
    m("corro_sync_interval_seconds", Gauge, &[], "current sync interval (1 s, doubling to 4 s while idle)"),
    m("corro_sync_behind_versions", Gauge, &[], "versions an active peer held and this node lacked at the last round with it (max over peers)"),
    m("corro_sync_last_round_age_seconds", Gauge, &[], "seconds since the last completed sync round (-1: none yet)"),
    m("corro_swim_members_active", Gauge, &[], "SWIM members alive or suspect"),
    m("corro_swim_member_up_total", Counter, &[], "members that came up"),
    m("corro_swim_member_down_total", Counter, &[], "members declared down"),
    m("corro_swim_packets_sent_total", Counter, &[], "SWIM datagrams sent"),
    m("corro_swim_packets_received_total", Counter, &[], "SWIM datagrams received"),
    m("corro_swim_packets_refused_total", Counter, &[], "SWIM datagrams refused (other version or malformed)"),
    m("corro_swim_packets_dropped_total", Counter, &[], "SWIM datagrams dropped (queue full or no connection)"),
    m("corro_swim_queue_depth", Gauge, &[], "inputs waiting for the SWIM driver (bound 4,096)"),
    m("corro_swim_reconnects_total", Counter, &[], "announces to members held as down (partition healing)"),
    m("corro_swim_reconnect_candidates", Gauge, &[], "addresses of down members still tried (bound 4,096)"),
    m("corro_swim_views_applied_total", Counter, &["kind"], "whole member views applied from a sync peer (push-pull), by kind: join or refresh"),
    m("corro_swim_views_withheld_total", Counter, &[], "member views not given to a peer that asked (one per peer per 2 s)"),
    // Subscriptions
    m("corro_subs_active", Gauge, &[], "subscriptions"),
    m("corro_subs_changes_total", Counter, &[], "subscription change events logged"),
    m("corro_subs_skipped_total", Counter, &[], "subscription re-reads skipped: no changed row meets the subscription's row condition and none was in its result"),
    m("corro_subs_refresh_seconds", Histogram, &[], "time to refresh one subscription after a commit"),
    m("corro_subs_listeners_cut_total", Counter, &[], "subscription clients disconnected for lagging"),
    // Discovery: catalog, Consul API, bridge, DNS
    m("corro_catalog_index", Gauge, &[], "the discovery catalog's current X-Consul-Index"),
    m("corro_store_disk_full", Gauge, &[], "1 while the disk is full and writes are refused"),
    m("corro_store_writes_refused_total", Counter, &["reason"], "peer changes not applied because writes are refused"),
    m("corro_catalog_stamped_topics", Gauge, &[], "catalog topics holding their own index stamp"),
    m("corro_catalog_watched_topics", Gauge, &[], "topics and KV keys or prefixes held queries wait on"),
    m("corro_kv_keys", Gauge, &[], "keys in the KV store (consul_kv), as this agent's catalog holds them"),
    m("corro_kv_value_bytes", Gauge, &[], "bytes of the KV store's values held in memory"),
    m("corro_kv_writes_total", Counter, &["op"], "KV writes through this agent's /v1/kv, by op"),
    m("corro_kv_refused_total", Counter, &["what"], "KV requests refused (compare-and-set, locks, sessions, transactions, oversized values, unreadable bodies)"),
    m("corro_catalog_counter_errors_total", Counter, &[], "failed writes of the X-Consul-Index counter file"),
    m("corro_consul_blocking_queries", Gauge, &[], "Consul blocking queries held right now"),
    m("corro_checks_registered", Gauge, &[], "health checks the agent runs (probed, TTL and alias)"),
    m("corro_checks_running", Gauge, &[], "check probes in flight"),
    m("corro_checks_waiting", Gauge, &[], "due check probes waiting for a free slot"),
    m("corro_checks_probes_total", Counter, &["type", "status"], "check probes run, by check type and result"),
    m("corro_checks_probe_seconds", Histogram, &["type"], "check probe duration by check type"),
    m("corro_checks_updates_total", Counter, &["status"], "check status or output changes published, by new status"),
    m("corro_registry_services", Gauge, &[], "services registered natively on this agent"),
    m("corro_registry_checks", Gauge, &[], "checks registered natively on this agent"),
    m("corro_registry_rows_written_total", Counter, &[], "rows of native registrations written to the replicated tables"),
    m("corro_registry_reaped_total", Counter, &[], "services deregistered for staying critical past DeregisterCriticalServiceAfter"),
    m("corro_consul_cache_bytes", Gauge, &[], "bytes held by the Consul API answer cache"),
    m("corro_consul_cache_entries", Gauge, &[], "answers held by the Consul API answer cache"),
    m("corro_consul_cache_hits_total", Counter, &[], "Consul API answers served from the cache"),
    m("corro_consul_cache_misses_total", Counter, &[], "Consul API answers computed (not cached or stale)"),
    m("corro_consul_cache_evictions_total", Counter, &[], "Consul API answers evicted from the cache"),
    m("corro_consul_polls_total", Counter, &[], "bridge polls of the local Consul agent"),
    m("corro_consul_poll_errors_total", Counter, &[], "bridge polls without a usable answer"),
    m("corro_consul_rows_written_total", Counter, &[], "statements the bridge wrote"),
    m("corro_consul_write_errors_total", Counter, &[], "bridge rounds that failed to write"),
    m("corro_consul_node_name_conflict", Gauge, &[], "1 while another live agent claims this node name"),
    m("corro_dns_responses_total", Counter, &["rcode"], "DNS queries answered, by response code"),
    m("corro_dns_dropped_total", Counter, &["reason"], "DNS packets dropped unanswered, by reason"),
    m("corro_dns_cache_bytes", Gauge, &[], "bytes held by the DNS answer cache"),
    m("corro_dns_cache_misses_total", Counter, &[], "DNS answers built (not cached, or cached at an older index)"),
    m("corro_dns_cache_evictions_total", Counter, &[], "DNS answers evicted from the cache"),
    m("corro_dns_encode_errors_total", Counter, &[], "DNS answers that could not be encoded (answered SERVFAIL)"),
    m("corro_dns_tcp_refused_total", Counter, &[], "DNS TCP connections closed on accept (1,024 already open)"),
    m("corro_dns_udp_reads_total", Counter, &[], "UDP receive calls that returned queries (several per call where batched: queries per call = responses / reads)"),
    // Templates
    m("corro_tpl_renders_total", Counter, &["template"], "template renders"),
    m("corro_ui_fragments_total", Counter, &["page"], "web UI fragment requests, by page"),
    m("corro_ui_renders_total", Counter, &["page"], "web UI fragments rendered, by page (held requests render only when what the page shows moved)"),
    m("corro_ui_held_requests", Gauge, &[], "web UI live-update requests held open now (bound: ui.max_held)"),
    m("corro_tpl_render_errors_total", Counter, &["template"], "failed renders (compile, script, SQL, write)"),
    m("corro_tpl_writes_total", Counter, &["template"], "rendered files written (changed output)"),
    m("corro_tpl_commands_total", Counter, &["result"], "template commands by result (ok, failed, timeout, error)"),
    m("corro_tpl_render_seconds", Histogram, &[], "render time (queries, script, write)"),
];

/// Buckets of every histogram (all are durations in seconds): Prometheus
/// histograms rather than summaries, so quantiles aggregate across agents.
const HISTOGRAM_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0,
];

/// How often queued histogram samples are folded into their buckets.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Gives the recorder every metric's help text and registers the unlabelled
/// counters and gauges at zero (and the sync round counter's two series).
fn describe() {
    for d in METRICS {
        match d.kind {
            Counter => {
                metrics::describe_counter!(d.name, d.help);
                if d.labels.is_empty() {
                    metrics::counter!(d.name).absolute(0);
                }
            }
            Gauge => {
                metrics::describe_gauge!(d.name, d.help);
                if d.labels.is_empty() {
                    metrics::gauge!(d.name).set(0.0);
                }
            }
            Histogram => metrics::describe_histogram!(d.name, d.help),
        }
    }
    // Labelled series whose label values are known up front.
    for opening in ["digest", "state"] {
        metrics::counter!("corro_sync_rounds_total", "opening" => opening).absolute(0);
    }
}

/// Installs the recorder and serves it.
pub(crate) async fn serve(addr: SocketAddr, stop: CancellationToken) -> anyhow::Result<()> {
    let handle = PrometheusBuilder::new()
        .set_buckets(HISTOGRAM_BUCKETS)
        .map_err(|e| anyhow::anyhow!("histogram buckets: {e}"))?
        .install_recorder()
        .map_err(|e| anyhow::anyhow!("installing the metrics recorder: {e}"))?;
    describe();
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding the metrics listener on {addr}: {e}"))?;
    tracing::info!(
        "Starting Prometheus metrics on tcp/{}",
        listener.local_addr()?
    );
    // Histogram samples queue in the recorder until they are folded into
    // buckets; without upkeep that happens only at a scrape, so an agent
    // nobody scrapes would grow by every request's sample.
    {
        let (handle, stop) = (handle.clone(), stop.clone());
        crate::tasks::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(UPKEEP_EVERY) => handle.run_upkeep(),
                }
            }
        });
    }
    let render = move || {
        let h = handle.clone();
        async move { h.render() }
    };
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(render.clone()))
        .route("/", axum::routing::get(render));
    crate::tasks::spawn(async move {
        let server = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = stop.cancelled().await;
        });
        if let Err(e) = server.await {
            tracing::warn!(error = %e, "metrics listener stopped");
        }
    });
    Ok(())
}

/// Refreshes the sampled gauges every second until `stop`.
pub(crate) fn sample(store: Store, cluster: Cluster, stop: CancellationToken) {
    crate::tasks::spawn(async move {
        loop {
            let s = store.clone();
            let missing = tokio::task::spawn_blocking(move || s.missing_versions())
                .await
                .unwrap_or(0);
            metrics::gauge!("corro_store_missing_versions").set(missing as f64);
            let q = store.writer_stats();
            metrics::gauge!("corro_store_writer_local_active").set(q.local_active as f64);
            metrics::gauge!("corro_store_writer_remote_waiting").set(q.remote_waiting as f64);
            let g = store.group_stats();
            metrics::gauge!("corro_store_group_waiting").set(g.waiting as f64);
            metrics::counter!("corro_store_group_commits_total").absolute(g.groups);
            metrics::counter!("corro_store_group_transactions_total").absolute(g.transactions);
            metrics::counter!("corro_store_group_reruns_total").absolute(g.reruns);
            metrics::gauge!("corro_store_head_version").set(store.head() as f64);
            let p = store.read_pool_stats();
            metrics::gauge!("corro_store_read_pool_size").set(p.size as f64);
            metrics::gauge!("corro_store_read_pool_in_use").set(p.in_use as f64);
            metrics::counter!("corro_store_read_pool_waits_total").absolute(p.waits);
            metrics::gauge!("corro_store_read_pool_waited_seconds")
                .set(p.waited_nanos as f64 / 1e9);
            let a = store.answer_stats();
            metrics::gauge!("corro_query_cache_bytes").set(a.bytes as f64);
            metrics::gauge!("corro_query_cache_entries").set(a.entries as f64);
            metrics::counter!("corro_query_cache_hits_total").absolute(a.hits);
            metrics::counter!("corro_query_cache_misses_total").absolute(a.misses);
            metrics::counter!("corro_query_cache_evictions_total").absolute(a.evictions);
            let h = cluster.sync_health();
            metrics::gauge!("corro_sync_behind_versions").set(h.behind as f64);
            metrics::gauge!("corro_sync_last_round_age_seconds")
                .set(h.last_sync.map_or(-1.0, |d| d.as_secs_f64()));
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    });
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::path::{Path, PathBuf};

    fn workspace() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the agent crate sits in the workspace")
            .to_path_buf()
    }

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).expect("source dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                rust_files(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    /// `corro_...` names in `counter!("…"`, `gauge!("…"`, `histogram!("…"`.
    fn emitted() -> BTreeSet<String> {
        let mut files = Vec::new();
        for krate in [
            "agent",
            "store",
            "replication",
            "subs",
            "catalog",
            "checks",
            "consul-api",
            "consul-bridge",
            "registry",
            "dns",
            "templates",
            "ui",
        ] {
            rust_files(&workspace().join(krate).join("src"), &mut files);
        }
        let mut names = BTreeSet::new();
        for f in files {
            let text = std::fs::read_to_string(&f).expect("readable source");
            for mac in ["counter!(", "gauge!(", "histogram!("] {
                for (i, _) in text.match_indices(mac) {
                    let rest = text[i + mac.len()..].trim_start();
                    if let Some(rest) = rest.strip_prefix("\"corro_") {
                        let end = rest.find('"').expect("closing quote");
                        names.insert(format!("corro_{}", &rest[..end]));
                    }
                }
            }
        }
        names
    }

    fn listed() -> BTreeSet<String> {
        METRICS.iter().map(|m| m.name.to_string()).collect()
    }

    #[test]
    fn every_emitted_metric_is_listed_and_every_listed_one_is_emitted() {
        let (emitted, listed) = (emitted(), listed());
        assert_eq!(listed.len(), METRICS.len(), "a metric is listed twice");
        let unlisted: Vec<_> = emitted.difference(&listed).collect();
        assert!(
            unlisted.is_empty(),
            "emitted but not in METRICS: {unlisted:?}"
        );
        let dead: Vec<_> = listed.difference(&emitted).collect();
        assert!(dead.is_empty(), "in METRICS but never emitted: {dead:?}");
    }

    #[test]
    fn metric_names_follow_the_convention() {
        for d in METRICS {
            let parts: Vec<&str> = d.name.split('_').collect();
            assert!(
                parts.len() >= 3
                    && parts[0] == "corro"
                    && d.name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{} is not corro_<subsystem>_<thing>[_<unit>]",
                d.name
            );
            match d.kind {
                Counter => assert!(d.name.ends_with("_total"), "counter {}", d.name),
                Histogram => assert!(d.name.ends_with("_seconds"), "histogram {}", d.name),
                Gauge => assert!(!d.name.ends_with("_total"), "gauge {}", d.name),
            }
            assert!(!d.help.is_empty(), "{} has no help", d.name);
        }
    }

    #[test]
    fn the_metrics_doc_lists_every_metric_with_its_labels() {
        let doc =
            std::fs::read_to_string(workspace().join("docs/METRICS.md")).expect("docs/METRICS.md");
        for d in METRICS {
            let shown = if d.labels.is_empty() {
                format!("`{}`", d.name)
            } else {
                format!("`{}{{{}}}`", d.name, d.labels.join(","))
            };
            assert!(
                doc.contains(&shown),
                "docs/METRICS.md does not list {shown}"
            );
        }
    }

    #[test]
    fn the_grafana_dashboard_names_only_emitted_metrics() {
        let path = workspace().join("packaging/grafana/corrosion.json");
        let text = std::fs::read_to_string(&path).expect("dashboard");
        let json: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
        let listed = listed();
        let mut used = BTreeSet::new();
        for panel in json["panels"].as_array().expect("panels") {
            for t in panel["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"].as_str().expect("expr");
                for (i, _) in expr.match_indices("corro_") {
                    let name: String = expr[i..]
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                        .collect();
                    let base = name.strip_suffix("_bucket").unwrap_or(&name).to_string();
                    assert!(
                        listed.contains(&base),
                        "dashboard uses unknown metric {name}"
                    );
                    used.insert(base);
                }
            }
        }
        // The operator's first questions have a panel.
        for m in [
            "corro_cluster_members",
            "corro_replication_lag_seconds",
            "corro_store_missing_versions",
            "corro_api_requests_total",
            "corro_dns_responses_total",
            "corro_consul_poll_errors_total",
            "corro_tpl_render_errors_total",
            "corro_store_read_pool_waits_total",
        ] {
            assert!(used.contains(m), "no panel shows {m}");
        }
    }
}
