#!/usr/bin/env python3
"""Writes corrosion.json, the Grafana dashboard for the agent's metrics.

Run it after changing the panels below: python3 make_dashboard.py
(docs/METRICS.md explains each metric; a test checks that every metric
named here is one the agent emits).
"""
import json
import os

DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'instance=~"$instance"'

panels = []
y = 0


def row(title):
    global y
    panels.append({"type": "row", "title": title, "collapsed": False,
                   "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                   "id": len(panels) + 1, "panels": []})
    y += 1


def graph(title, targets, unit="short", x=0, w=8, desc=""):
    panels.append({
        "type": "timeseries", "title": title, "description": desc,
        "datasource": DS, "id": len(panels) + 1,
        "gridPos": {"h": 8, "w": w, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"},
                    "tooltip": {"mode": "multi"}},
        "targets": [{"datasource": DS, "expr": e, "legendFormat": l,
                     "refId": chr(ord("A") + i)}
                    for i, (e, l) in enumerate(targets)],
    })


def line(*specs):
    """Panels side by side, 24 columns shared equally."""
    global y
    w = 24 // len(specs)
    for i, s in enumerate(specs):
        graph(*s[:2], **dict(s[2] if len(s) > 2 else {}), x=i * w, w=w)
    y += 8


def q99(metric, by=""):
    group = f"le{',' + by if by else ''}"
    return f"histogram_quantile(0.99, sum by ({group}) (rate({metric}_bucket{{{SEL}}}[5m])))"


row("Cluster")
line(
    ("Members by state", [(f'sum by (state) (corro_cluster_members{{{SEL}}})', "{{state}}")]),
    ("Writes fenced / schema mismatches", [
        (f"corro_cluster_writes_fenced{{{SEL}}}", "fenced {{instance}}"),
        (f"corro_schema_mismatched_peers{{{SEL}}}", "mismatched peers {{instance}}")]),
    ("SWIM packets/s", [
        (f"sum by (instance) (rate(corro_swim_packets_sent_total{{{SEL}}}[5m]))", "sent {{instance}}"),
        (f"sum by (instance) (rate(corro_swim_packets_dropped_total{{{SEL}}}[5m]))", "dropped {{instance}}"),
        (f"sum by (instance) (rate(corro_swim_packets_refused_total{{{SEL}}}[5m]))", "refused {{instance}}")],
     {"unit": "pps"}),
)
row("Replication")
line(
    ("Replication lag p99", [(q99("corro_replication_lag_seconds", "via"), "{{via}}")], {"unit": "s",
     "desc": "origin commit to merge here; sync includes catch-up of old history"}),
    ("Missing / behind versions", [
        (f"corro_store_missing_versions{{{SEL}}}", "missing {{instance}}"),
        (f"corro_sync_behind_versions{{{SEL}}}", "behind {{instance}}")]),
    ("Seconds since last sync round", [(f"corro_sync_last_round_age_seconds{{{SEL}}}", "{{instance}}")],
     {"unit": "s"}),
)
line(
    ("Changesets received/s", [
        (f"sum by (instance) (rate(corro_gossip_changesets_received_total{{{SEL}}}[5m]))", "all {{instance}}"),
        (f"sum by (instance) (rate(corro_sync_changesets_received_total{{{SEL}}}[5m]))", "by sync {{instance}}")]),
    ("Peer traffic", [
        (f"sum by (stream) (rate(corro_peer_sent_bytes_total{{{SEL}}}[5m]))", "sent {{stream}}"),
        (f"sum by (kind) (rate(corro_peer_received_bytes_total{{{SEL}}}[5m]))", "received {{kind}}")],
     {"unit": "Bps"}),
    ("Broadcast queue and losses", [
        (f"corro_gossip_broadcast_queue_depth{{{SEL}}}", "queue {{instance}}"),
        (f"rate(corro_gossip_broadcasts_dropped_total{{{SEL}}}[5m])", "dropped/s {{instance}}"),
        (f"rate(corro_gossip_broadcasts_failed_total{{{SEL}}}[5m])", "failed/s {{instance}}")]),
)
line(
    ("Sync rounds/s and pulls/s", [
        (f"sum by (instance) (rate(corro_sync_rounds_total{{{SEL}}}[5m]))", "rounds {{instance}}"),
        (f"sum by (instance) (rate(corro_sync_pulls_total{{{SEL}}}[5m]))", "pulls {{instance}}")]),
    ("Refused peer input/s", [
        (f"sum by (class) (rate(corro_peer_messages_refused_total{{{SEL}}}[5m]))", "{{class}}"),
        (f"sum (rate(corro_gossip_frames_refused_total{{{SEL}}}[5m]))", "streams refused"),
        (f"sum (rate(corro_gossip_connections_refused_total{{{SEL}}}[5m]))", "connections refused")]),
    ("Apply latency p99", [(q99("corro_store_apply_duration_seconds"), "apply")], {"unit": "s"}),
)
row("Store")
line(
    ("Writer queue", [
        (f"corro_store_writer_local_active{{{SEL}}}", "local {{instance}}"),
        (f"corro_store_writer_remote_waiting{{{SEL}}}", "remote {{instance}}")]),
    ("Read pool", [
        (f"corro_store_read_pool_in_use{{{SEL}}}", "in use {{instance}}"),
        (f"corro_store_read_pool_size{{{SEL}}}", "size {{instance}}"),
        (f"rate(corro_store_read_pool_waits_total{{{SEL}}}[5m])", "waits/s {{instance}}"),
        (f"rate(corro_store_read_pool_waited_seconds{{{SEL}}}[5m])", "waiting s/s {{instance}}")]),
    ("Head version", [(f"corro_store_head_version{{{SEL}}}", "{{instance}}")]),
)
row("HTTP API")
line(
    ("Requests/s by route and status", [
        (f"sum by (route, status) (rate(corro_api_requests_total{{{SEL}}}[5m]))", "{{route}} {{status}}")],
     {"unit": "reqps"}),
    ("Latency p99 by route", [(q99("corro_api_request_duration_seconds", "route"), "{{route}}")],
     {"unit": "s"}),
    ("Consul blocking queries held", [(f"corro_consul_blocking_queries{{{SEL}}}", "{{instance}}")]),
)
row("Discovery")
line(
    ("DNS answers/s by rcode", [
        (f"sum by (rcode) (rate(corro_dns_responses_total{{{SEL}}}[5m]))", "{{rcode}}"),
        (f"sum by (reason) (rate(corro_dns_dropped_total{{{SEL}}}[5m]))", "dropped {{reason}}")],
     {"unit": "reqps"}),
    ("Consul bridge", [
        (f"sum by (instance) (rate(corro_consul_polls_total{{{SEL}}}[5m]))", "polls/s {{instance}}"),
        (f"sum by (instance) (rate(corro_consul_poll_errors_total{{{SEL}}}[5m]))", "poll errors/s {{instance}}"),
        (f"sum by (instance) (rate(corro_consul_write_errors_total{{{SEL}}}[5m]))", "write errors/s {{instance}}"),
        (f"corro_consul_node_name_conflict{{{SEL}}}", "name conflict {{instance}}")]),
    ("Catalog index", [(f"corro_catalog_index{{{SEL}}}", "{{instance}}")]),
)
row("Templates and subscriptions")
line(
    ("Template renders/s", [
        (f"sum by (template) (rate(corro_tpl_renders_total{{{SEL}}}[5m]))", "renders {{template}}"),
        (f"sum by (template) (rate(corro_tpl_render_errors_total{{{SEL}}}[5m]))", "errors {{template}}"),
        (f"sum by (template) (rate(corro_tpl_writes_total{{{SEL}}}[5m]))", "writes {{template}}"),
        (f"sum by (result) (rate(corro_tpl_commands_total{{{SEL}}}[5m]))", "commands {{result}}")]),
    ("Template render p99", [(q99("corro_tpl_render_seconds"), "render")], {"unit": "s"}),
    ("Subscriptions", [
        (f"sum (corro_subs_active{{{SEL}}})", "active"),
        (f"sum (rate(corro_subs_changes_total{{{SEL}}}[5m]))", "changes/s"),
        (f"sum (rate(corro_subs_listeners_cut_total{{{SEL}}}[5m]))", "cut/s")]),
)

dashboard = {
    "title": "Corrosion",
    "uid": "corrosion-agent",
    "description": "Corrosion agents: cluster, replication, store, API, DNS, Consul bridge, templates",
    "tags": ["corrosion"],
    "schemaVersion": 39,
    "version": 1,
    "editable": True,
    "time": {"from": "now-1h", "to": "now"},
    "refresh": "30s",
    "templating": {"list": [
        {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source"},
        {"name": "instance", "type": "query", "datasource": DS, "label": "Instance",
         "query": "label_values(corro_store_head_version, instance)",
         "refresh": 2, "includeAll": True, "multi": True, "allValue": ".*",
         "current": {"text": "All", "value": "$__all"}},
    ]},
    "panels": panels,
}

here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "corrosion.json"), "w") as f:
    json.dump(dashboard, f, indent=2)
    f.write("\n")
