"""The real Consul client library py-consul against a 3-agent Corrosion
cluster (driven by agent/tests/py_consul.rs, which starts the agents and a
stand-in Consul agent on node A, and changes a check when this script says
it is blocking).

Arguments: the HTTP addresses (host:port) of agents A, B and C.
Exits non-zero on the first failed expectation.
"""

import sys


from helpers import client, expect, wait_for


a, b, c = (client(x) for x in sys.argv[1:4])

for name, agent in (("A", a), ("B", b), ("C", c)):
    index, services = agent.catalog.services()
    expect(int(index) > 0, f"{name}: catalog.services index {index}")
    expect(services.get("web") == ["primary", "v1"], f"{name}: catalog.services {services}")

    index, entries = agent.catalog.service("web", tag="primary")
    expect([e["ServiceID"] for e in entries] == ["web-1"], f"{name}: catalog.service tag=primary {entries}")
    expect(entries[0]["Node"] == "host-a" and entries[0]["ServicePort"] == 8080, f"{name}: {entries[0]}")

    index, nodes = agent.catalog.nodes()
    expect(sorted(n["Node"] for n in nodes) == ["host-a", "host-b", "host-c"], f"{name}: catalog.nodes {nodes}")

    index, healthy = agent.health.service("web", passing=True)
    expect([e["Service"]["ID"] for e in healthy] == ["web-1"], f"{name}: health.service passing {healthy}")

    index, critical = agent.health.state("critical")
    expect([ch["CheckID"] for ch in critical] == ["service:web-2"], f"{name}: health.state critical {critical}")

    index, any_state = agent.health.state("any")
    expect(len(any_state) == 5, f"{name}: health.state any {any_state}")

    self_ = agent.agent.self()
    expect(self_["Config"]["NodeName"] == {"A": "host-a", "B": "host-b", "C": "host-c"}[name], f"{name}: agent.self")

    members = agent.agent.members()
    expect(sorted(m["Name"] for m in members) == ["host-a", "host-b", "host-c"], f"{name}: agent.members {members}")
    expect(all(m["Status"] == 1 for m in members), f"{name}: members alive {members}")

    expect(agent.status.leader() != "", f"{name}: status.leader")

# A blocking health.service on C returns when web-1's check changes on A's
# Consul agent.
index, before = c.health.service("web")
print(f"BLOCKING {index}", flush=True)
new_index, after = c.health.service("web", index=index, wait="60s")
expect(int(new_index) > int(index), f"blocking index {index} -> {new_index}")
statuses = {e["Service"]["ID"]: [ch["Status"] for ch in e["Checks"] if ch["ServiceID"]] for e in after}
expect(statuses.get("web-1") == ["warning"], f"blocking result {statuses}")
print("OK", flush=True)
