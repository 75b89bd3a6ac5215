"""The real Consul client library py-consul registering services and checks
with a Corrosion agent's Consul agent API (driven by tests/native.rs, which
starts a 3-agent cluster with no Consul anywhere).

The script starts its own targets (an HTTP server, a TCP listener, a UDP
responder), registers on agent A with HTTP, TCP, UDP and TTL checks, and
watches agent C's catalog and health API: each change on A (a target
failing, a TTL failing, maintenance, deregistration) must show on C.

Arguments: the HTTP addresses (host:port) of agents A, B and C.
Prints timings and `OK`; exits non-zero on the first failed expectation.
"""

import http.server
import socket
import sys
import threading

import consul

from helpers import client, expect, wait_for
import consul.exceptions
from consul import Check


a, b, c = (client(x) for x in sys.argv[1:4])


class Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"healthy"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ok)
threading.Thread(target=web.serve_forever, daemon=True).start()
web_port = web.server_address[1]

tcp = socket.socket()
tcp.bind(("127.0.0.1", 0))
tcp.listen(128)
tcp_port = tcp.getsockname()[1]


def accept_forever():
    while True:
        try:
            conn, _ = tcp.accept()
            conn.close()
        except OSError:
            return


threading.Thread(target=accept_forever, daemon=True).start()

udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("127.0.0.1", 0))
udp_port = udp.getsockname()[1]


def answer_udp():
    while True:
        try:
            data, peer = udp.recvfrom(64)
            udp.sendto(b"ok", peer)
        except OSError:
            return


threading.Thread(target=answer_udp, daemon=True).start()

# Registrations on A.
expect(a.agent.service.register(
    "web", service_id="web-1", port=web_port, tags=["v1", "Primary"],
    meta={"version": "1.2"},
    check=Check.http(f"http://127.0.0.1:{web_port}/health", "1s", timeout="1s"),
), "register web")
expect(a.agent.service.register(
    "cache", service_id="cache-1", port=tcp_port,
    check=Check.tcp("127.0.0.1", tcp_port, "1s", timeout="1s"),
), "register cache")
expect(a.agent.check.register(
    "cache udp", check_id="cache-udp", service_id="cache-1",
    check={"udp": f"127.0.0.1:{udp_port}", "interval": "1s", "timeout": "500ms"},
), "register the udp check")
expect(a.agent.service.register("jobs", service_id="jobs-1", check=Check.ttl("30s")), "register jobs")
expect(a.agent.check.ttl_pass("service:jobs-1", "all good"), "ttl_pass")

# Registrations come back as registered, with Datacenter.
services = a.agent.services()
w = services.get("web-1", {})
expect(w.get("Service") == "web" and w.get("Port") == web_port and w.get("Tags") == ["v1", "Primary"]
       and w.get("Meta") == {"version": "1.2"} and w.get("Datacenter") == "dc1", f"echo {w}")
expect(sorted(services) == ["cache-1", "jobs-1", "web-1"], f"agent.services {sorted(services)}")
checks = a.agent.checks()
expect(sorted(checks) == ["cache-udp", "service:cache-1", "service:jobs-1", "service:web-1"], f"agent.checks {sorted(checks)}")
expect(checks["service:jobs-1"]["Output"] == "all good", f"TTL note {checks['service:jobs-1']}")


def passing_ids(agent, name):
    _, entries = agent.health.service(name, passing=True)
    return sorted(e["Service"]["ID"] for e in entries)


def statuses(agent, name):
    _, entries = agent.health.service(name)
    return {ch["CheckID"]: (ch["Status"], ch["Notes"]) for e in entries for ch in e["Checks"]}


t = wait_for("every service passing on C", lambda: passing_ids(c, "web") == ["web-1"]
             and passing_ids(c, "cache") == ["cache-1"] and passing_ids(c, "jobs") == ["jobs-1"])
print(f"all passing on C after {t:.2f} s", flush=True)
expect(passing_ids(b, "WEB") == ["web-1"], "names are case-insensitive on B")

# The HTTP target goes away: critical on C within interval + timeout + replication.
web.shutdown()
web.server_close()
t = wait_for("web-1 critical on C", lambda: passing_ids(c, "web") == [])
print(f"failed HTTP target critical on C after {t:.2f} s", flush=True)
expect(t < 1 + 1 + 3, f"web-1 took {t:.2f} s to go critical on C")

# TTL failing.
expect(a.agent.check.ttl_fail("service:jobs-1", "stuck"), "ttl_fail")
t = wait_for("jobs-1 critical on C", lambda: passing_ids(c, "jobs") == [])
print(f"TTL fail critical on C after {t:.2f} s", flush=True)

# Maintenance on, then off.
expect(a.agent.service.maintenance("cache-1", True, "upgrading"), "maintenance on")
wait_for("cache maintenance on C",
         lambda: statuses(c, "cache").get("_service_maintenance:cache-1") == ("critical", "upgrading"))
expect(passing_ids(c, "cache") == [], "cache not passing in maintenance")
expect(a.agent.service.maintenance("cache-1", False), "maintenance off")
wait_for("cache back on C", lambda: passing_ids(c, "cache") == ["cache-1"])

# Unknown IDs: Consul's 404 (py-consul's False), nothing changes.
expect(a.agent.service.deregister("no-such-service") is False, "deregister unknown")
expect(a.agent.check.deregister("no-such-check") is False, "deregister unknown check")
expect(a.agent.check.ttl_pass("no-such-check") is False, "ttl_pass unknown")
try:
    a.agent.check.ttl_pass("service:web-1")
    expect(False, "ttl_pass on an HTTP check must fail")
except consul.ConsulException as e:
    expect("does not have associated TTL" in str(e), f"non-TTL error text {e}")
try:
    a.agent.service.register("bad", address="0.0.0.0")
    expect(False, "an any-address must be refused")
except consul.exceptions.BadRequest as e:
    expect("Invalid service address" in str(e), f"bad address text {e}")
expect(sorted(a.agent.services()) == ["cache-1", "jobs-1", "web-1"], "refusals changed nothing")

# Deregistration: gone from C with its checks.
expect(a.agent.service.deregister("web-1"), "deregister web-1")
wait_for("web gone from C", lambda: c.catalog.service("web")[1] == [])
expect("service:web-1" not in a.agent.checks(), "its check went with it")
print("OK", flush=True)
