"""What the py-consul test scripts share: a client for an agent's address,
a failing check that ends the script, and a deadline poll."""

import sys
import time

import consul


def client(addr):
    host, port = addr.rsplit(":", 1)
    return consul.Consul(host=host, port=int(port))


def expect(cond, what):
    if not cond:
        print(f"FAILED: {what}", flush=True)
        sys.exit(1)


def wait_for(what, f, limit=20.0):
    """Polls f every 50 ms until it returns a true value; the seconds taken."""
    start = time.monotonic()
    while True:
        v = f()
        if v:
            return time.monotonic() - start
        if time.monotonic() - start > limit:
            print(f"FAILED: timed out after {limit} s waiting for {what}", flush=True)
            sys.exit(1)
        time.sleep(0.05)
