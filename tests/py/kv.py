"""The real Consul client library py-consul using the KV store of a
3-agent Corrosion cluster (driven by tests/kv.rs, which starts the agents).

Writes on A, reads on A and C (after replication): get, recurse, keys with
and without a separator, flags, empty and binary values, delete and
delete-recurse; a blocking get on C that a put of another key on A does not
wake and a put of its own key does; compare-and-set, locks, sessions and
transactions refused with an error (never `False`) and nothing stored.

Arguments: the HTTP addresses (host:port) of agents A, B and C.
Prints `OK` last; exits non-zero on the first failed expectation.
"""

import sys
import threading
import time

import consul

from helpers import client, expect, wait_for


def value_on(c, key):
    _, e = c.kv.get(key)
    return None if e is None else e["Value"]


def main():
    a, _b, c = (client(x) for x in sys.argv[1:4])

    # Puts and gets on the writer.
    expect(a.kv.put("app/config/max", "15") is True, "put answers True")
    expect(a.kv.put("app/config/min", "1", flags=42) is True, "put with flags")
    expect(a.kv.put("app/hosts/web-1", "10.0.0.1") is True, "put a host")
    expect(a.kv.put("app/empty", "") is True, "put an empty value")
    expect(a.kv.put("other/x", "y") is True, "put elsewhere")
    index, e = a.kv.get("app/config/min")
    expect(e["Value"] == b"1" and e["Flags"] == 42, f"get with flags: {e}")
    expect(e["LockIndex"] == 0 and e["CreateIndex"] <= e["ModifyIndex"], f"indexes: {e}")
    expect(int(index) >= e["ModifyIndex"], "X-Consul-Index at least the entry's")
    _, e = a.kv.get("app/empty")
    expect(e["Value"] is None, f"an empty value is null: {e}")
    _, e = a.kv.get("missing/key")
    expect(e is None, "a missing key is None (404)")

    # Replicated: every read on C.
    wait_for("the keys on C", lambda: value_on(c, "other/x") == b"y")
    _, entries = c.kv.get("app/", recurse=True)
    expect(
        [x["Key"] for x in entries]
        == ["app/config/max", "app/config/min", "app/empty", "app/hosts/web-1"],
        f"recurse on C: {entries}",
    )
    _, keys = c.kv.get("app/", keys=True)
    expect(len(keys) == 4, f"keys without a separator: {keys}")
    _, keys = c.kv.get("app/", keys=True, separator="/")
    expect(keys == ["app/config/", "app/empty", "app/hosts/"], f"keys with separator: {keys}")
    _, keys = c.kv.get("", keys=True, separator="/")
    expect(keys == ["app/", "other/"], f"top-level folders: {keys}")
    _, keys = c.kv.get("nothing/", keys=True)
    expect(keys is None, "keys under a missing prefix: 404")

    # An identical put moves nothing.
    _, before = a.kv.get("app/config/max")
    a.kv.put("app/config/max", "15")
    _, after = a.kv.get("app/config/max")
    expect(before["ModifyIndex"] == after["ModifyIndex"], "an identical put keeps ModifyIndex")

    # Blocking on C: woken by its key, not by another.
    index, e = c.kv.get("app/config/max")
    result = {}

    def block():
        result["answer"] = c.kv.get("app/config/max", index=index, wait="30s")

    t = threading.Thread(target=block)
    t.start()
    time.sleep(0.3)
    a.kv.put("app/config/other", "noise")
    a.kv.put("other/x", "z")
    wait_for("the unrelated writes on C", lambda: value_on(c, "other/x") == b"z")
    time.sleep(0.3)
    expect(t.is_alive(), "a put of other keys did not wake the blocked get")
    started = time.monotonic()
    a.kv.put("app/config/max", "20")
    t.join(20)
    expect(not t.is_alive(), "the put of the key woke the blocked get")
    new_index, e = result["answer"]
    expect(e["Value"] == b"20", f"the woken get has the new value: {e}")
    expect(int(new_index) > int(index), "and a larger index")
    print(f"blocking wake-up on C after a put on A: {time.monotonic() - started:.3f}s", flush=True)

    # Blocking on a prefix with recurse.
    index, _ = c.kv.get("app/hosts/", recurse=True)

    def block_prefix():
        result["prefix"] = c.kv.get("app/hosts/", recurse=True, index=index, wait="30s")

    t = threading.Thread(target=block_prefix)
    t.start()
    time.sleep(0.3)
    a.kv.put("app/hosts/web-2", "10.0.0.2")
    t.join(20)
    expect(not t.is_alive(), "a put under the prefix woke the recurse watch")
    _, entries = result["prefix"]
    expect(len(entries) == 2, f"both hosts: {entries}")

    # Refused: never False, nothing stored.
    refused = [
        ("cas=0", lambda: a.kv.put("app/cas", "v", cas=0)),
        ("cas=N", lambda: a.kv.put("app/config/max", "v", cas=after["ModifyIndex"])),
        ("acquire", lambda: a.kv.put("app/lock", "v", acquire="00000000-0000-0000-0000-000000000001")),
        ("release", lambda: a.kv.put("app/lock", "v", release="00000000-0000-0000-0000-000000000001")),
        ("delete cas", lambda: a.kv.delete("app/config/max", cas=1)),
        ("session", lambda: a.session.create()),
        ("txn", lambda: a.txn.put([{"KV": {"Verb": "set", "Key": "app/txn", "Value": "dg=="}}])),
    ]
    for what, call in refused:
        try:
            r = call()
            expect(False, f"{what} was accepted: {r!r}")
        except consul.ConsulException as e:
            expect("not supported" in str(e), f"{what}: the error says why: {e}")
    for key in ["app/cas", "app/lock", "app/txn"]:
        expect(value_on(a, key) is None, f"nothing stored for {key}")
    expect(value_on(a, "app/config/max") == b"20", "the cas target kept its value")

    # Deletes, replicated.
    expect(a.kv.delete("app/empty") is True, "delete answers True")
    expect(a.kv.delete("app/hosts", recurse=True) is True, "delete recurse")
    wait_for(
        "the deletes on C",
        lambda: c.kv.get("app/", keys=True)[1] == ["app/config/max", "app/config/min", "app/config/other"],
    )
    print("OK", flush=True)


if __name__ == "__main__":
    main()
