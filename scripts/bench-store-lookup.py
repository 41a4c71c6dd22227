#!/usr/bin/env python3
"""Credentials read from the store in etcd (issue 43), one run, same machine:

    scripts/bench-store-lookup.py [CREDENTIALS] [REQUESTS]   (default 1000000, 2000)

Writes CREDENTIALS token records into a one-member etcd on loopback as the
store keeps them (by name and by digest), then starts the release
`sessiongate serve --credentials-from-store` (two VMs) and reports:

- its start (the "ready in" it logs) and resident memory after its first
  requests: what a VM costs with the credentials in etcd;
- the latency of REQUESTS sequential `GET /me`, each with a credential the
  VM has not seen (a lookup: a miss of the cache), and of REQUESTS with one
  credential it holds (a hit), p50 and p99, from this client;
- etcd's range and txn counts (its /metrics) over each run, per request;
- the same latencies through a serve with the credentials in a file store
  of the same size (the host keeps them, no etcd), for the added cost.

etcd here is one member on loopback; a real cluster adds its round trip to
every lookup. Needs etcd (Debian etcd-server) and a release build
($CARGO_TARGET_DIR/release/sessiongate, built if missing).
"""

import base64
import hashlib
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COUNT = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
REQUESTS = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
PREFIX = "bench"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def secret(i):
    return f"fus_{i:040d}"


def record(i):
    s = secret(i)
    return {
        "name": f"c{i:07d}",
        "kind": "token",
        "hash": hashlib.sha256(s.encode()).hexdigest(),
        "hint": "fus_****" + s[-3:],
        "customer": "acme",
        "sites": "all",
        "level": "standard",
        "created": 1,
    }


def b64(b):
    return base64.b64encode(b).decode()


def post(port, path, body):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("POST", path, json.dumps(body), {"content-type": "application/json"})
    r = c.getresponse()
    data = r.read()
    c.close()
    if r.status != 200:
        raise SystemExit(f"etcd answered {r.status}: {data[:200]!r}")
    return data


def write(port, start, stop):
    batch = []
    for i in range(start, stop):
        rec = record(i)
        value = b64(json.dumps(rec, separators=(",", ":")).encode())
        for key in (f"{PREFIX}/credentials/{rec['name']}", f"{PREFIX}/digests/{rec['hash']}"):
            batch.append({"request_put": {"key": b64(key.encode()), "value": value}})
        if len(batch) >= 120:
            post(port, "/v3/kv/txn", {"success": batch})
            batch = []
    if batch:
        post(port, "/v3/kv/txn", {"success": batch})


def etcd_counts(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    c.close()

    def total(name):
        return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))

    return total("etcd_debugging_mvcc_range_total"), total("etcd_debugging_mvcc_txn_total")


def get(port, auth):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    t = time.perf_counter()
    c.request("GET", "/me", headers={"authorization": auth})
    r = c.getresponse()
    r.read()
    elapsed = time.perf_counter() - t
    c.close()
    return r.status, elapsed


def percentiles(samples):
    s = sorted(samples)
    return s[len(s) // 2] * 1000, s[int(len(s) * 0.99)] * 1000


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def start_serve(binary, work, store, extra):
    port, admin = free_port(), free_port()
    log = open(os.path.join(work, f"serve-{port}.log"), "w+")
    p = subprocess.Popen(
        [binary, "serve", "--listen", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{admin}",
         "--workers", "2", "--store", store, *extra],
        stdout=subprocess.DEVNULL, stderr=log)
    started = time.perf_counter()
    while True:
        log.seek(0)
        text = log.read()
        if "listening on" in text:
            ready = re.search(r"ready in (\d+) ms", text)
            return p, port, ready.group(1) if ready else "?", time.perf_counter() - started
        if p.poll() is not None or time.perf_counter() - started > 600:
            raise SystemExit(f"serve did not start:\n{text}")
        time.sleep(0.02)


def run(name, port, etcd_port, auths):
    before = etcd_counts(etcd_port) if etcd_port else (0, 0)
    statuses, times = set(), []
    for auth in auths:
        status, elapsed = get(port, auth)
        statuses.add(status)
        times.append(elapsed)
    after = etcd_counts(etcd_port) if etcd_port else (0, 0)
    p50, p99 = percentiles(times)
    ranges = (after[0] - before[0]) / len(auths)
    txns = (after[1] - before[1]) / len(auths)
    print(f"  {name:<34} p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  statuses {sorted(statuses)}"
          + (f"  etcd per request: {ranges:.2f} range, {txns:.2f} txn" if etcd_port else ""))


def main():
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    binary = os.path.join(target, "release", "sessiongate")
    if not os.access(binary, os.X_OK):
        subprocess.run(["cargo", "build", "--quiet", "--release", "-p", "sessiongate"], cwd=ROOT, check=True)
    with tempfile.TemporaryDirectory() as work:
        client, peer = free_port(), free_port()
        etcd = subprocess.Popen(
            ["etcd", "--name", "m0", "--data-dir", os.path.join(work, "etcd"),
             "--listen-client-urls", f"http://127.0.0.1:{client}",
             "--advertise-client-urls", f"http://127.0.0.1:{client}",
             "--listen-peer-urls", f"http://127.0.0.1:{peer}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
             "--initial-cluster", f"m0=http://127.0.0.1:{peer}",
             "--quota-backend-bytes", str(8 << 30), "--logger", "zap", "--log-level", "error"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        serves = []
        try:
            for _ in range(100):
                try:
                    etcd_counts(client)
                    break
                except OSError:
                    time.sleep(0.1)
            t = time.perf_counter()
            threads = [threading.Thread(target=write, args=(client, k * COUNT // 4, (k + 1) * COUNT // 4))
                       for k in range(4)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            print(f"{COUNT} credentials written to etcd in {time.perf_counter() - t:.1f} s")
            store = f"etcd://127.0.0.1:{client}/{PREFIX}"
            p, port, ready, took = start_serve(binary, work, store, ["--credentials-from-store"])
            serves.append(p)
            print(f"serve --credentials-from-store, 2 VMs: ready in {ready} ms (logged), "
                  f"listening {took * 1000:.0f} ms after exec")
            misses = [f"Bearer {secret(i)}" for i in range(1, REQUESTS + 1)]
            run("first request of each (a lookup)", port, client, misses)
            run("a held credential (cached)", port, client, [f"Bearer {secret(1)}"] * REQUESTS)
            print(f"  resident memory after {REQUESTS + 1} credentials seen: {rss_kb(p.pid) // 1024} MB")
            # The same requests with the credentials in a file store, kept by the host.
            path = os.path.join(work, "tokens.json")
            with open(path, "w") as f:
                f.write('{"version": 1, "credentials": [\n')
                for i in range(COUNT):
                    f.write(json.dumps(record(i)) + (",\n" if i + 1 < COUNT else "\n"))
                f.write("]}\n")
            p2, port2, ready2, took2 = start_serve(binary, work, path, [])
            serves.append(p2)
            print(f"serve with the {COUNT} in a file store (the host keeps them), 2 VMs: ready in "
                  f"{ready2} ms (logged), resident {rss_kb(p2.pid) // 1024} MB")
            run("first request of each", port2, None, misses)
            run("a held credential", port2, None, [f"Bearer {secret(1)}"] * REQUESTS)
        finally:
            for s in serves:
                s.kill()
            etcd.kill()


if __name__ == "__main__":
    main()
