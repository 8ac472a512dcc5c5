"""Overload: vigil under 4x its sustainable load, then back under it.

Starts `vigil serve` (tract, `--workers 1`, a short queue) and uses the CNN with a batch
of rows per request, so that one worker is the bottleneck and a Python client can offer
several times what it can serve. Three phases, each over keep-alive sockets:

1. sustainable: a closed loop of 2 connections; its rate of 200s is R;
2. overload: an open loop offering 4 x R for 10 s over 32 connections (requests are sent
   on schedule whatever the answers): rate and latency of 200s, of 503s, anything else;
3. recovery: an open loop at 0.5 x R for 5 s right after: errors and latency, the first
   second separately.

    python3 benches/overload.py [--seconds 10] [--rows 16]

Prints a table; record it in benches/RESULTS.md with the date and machine.
"""

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from latency import ROOT, read_response  # noqa: E402


def cnn_body(rows):
    with open(os.path.join(ROOT, "tests", "data", "refs", "cnn_v1.json")) as f:
        t = json.load(f)["inputs"][0]
    per_row = len(t["data"]) // t["shape"][0]
    data = (t["data"][:per_row]) * rows
    return json.dumps({"inputs": [{"name": t["name"], "shape": [rows] + t["shape"][1:],
                                   "datatype": t["datatype"], "data": data}]}).encode()


def request_bytes(addr, body):
    return (f"POST /v2/models/cnn/infer HTTP/1.1\r\nHost: {addr}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


def connect(addr):
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def closed_loop(addr, req, conns, seconds):
    results = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def run():
        s, buf, mine = connect(addr), b"", []
        while time.monotonic() < stop:
            t0 = time.monotonic()
            s.sendall(req)
            status, _, buf = read_response(s, buf)
            mine.append((t0, status, time.monotonic() - t0))
        with lock:
            results.extend(mine)

    threads = [threading.Thread(target=run) for _ in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def open_loop(addr, req, rate, conns, seconds):
    """Each connection sends on its own schedule (rate / conns per second); a request
    that is late because the previous answer was slow goes out at once."""
    results = []
    lock = threading.Lock()
    start = time.monotonic() + 0.05
    gap = conns / rate

    def run(k):
        s, buf, mine = connect(addr), b"", []
        i = 0
        while True:
            due = start + k * gap / conns + i * gap
            if due > start + seconds:
                break
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            t0 = time.monotonic()
            try:
                s.sendall(req)
                status, _, buf = read_response(s, buf)
            except (OSError, RuntimeError):
                status, s, buf = -1, connect(addr), b""
            mine.append((t0, status, time.monotonic() - t0))
            i += 1
        with lock:
            results.extend(mine)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def summary(name, results, seconds):
    ok = sorted(r[2] for r in results if r[1] == 200)
    shed = sorted(r[2] for r in results if r[1] == 503)
    other = [r for r in results if r[1] not in (200, 503)]

    def pct(xs, q):
        return xs[min(len(xs) - 1, int(q * len(xs)))] * 1e3 if xs else float("nan")

    print(f"{name:<22} {len(results) / seconds:8.0f} {len(ok) / seconds:8.0f} {len(shed) / seconds:8.0f} "
          f"{len(other):6d} {pct(ok, 0.5):8.1f} {pct(ok, 0.99):8.1f} {pct(shed, 0.5):8.2f} {pct(shed, 0.99):8.2f}")
    return len(ok) / seconds


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vigil", default=os.path.join(ROOT, "target", "release", "vigil"))
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--queue-size", type=int, default=8)
    args = ap.parse_args()
    cmd = [args.vigil, "serve", "--repository", os.path.join(ROOT, "models"), "--http-addr", "127.0.0.1:0",
           "--backend", "tract", "--workers", "1", "--queue-size", str(args.queue_size),
           "--state-dir", f"/tmp/vigil-overload-{os.getpid()}"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env={**os.environ, "VIGIL_LOG": "info"})
    try:
        addr = None
        for line in proc.stderr:
            m = re.search(r"listening on http://(\S+)", line)
            if m:
                addr = m.group(1)
            if "repository loaded" in line:
                break
        threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
        req = request_bytes(addr, cnn_body(args.rows))
        closed_loop(addr, req, 2, 2)  # warm up
        print(f"vigil tract, --workers 1 --queue-size {args.queue_size}, cnn {args.rows} rows per JSON request")
        print(f"{'phase':<22} {'offered':>8} {'200/s':>8} {'503/s':>8} {'other':>6} "
              f"{'200 p50':>8} {'200 p99':>8} {'503 p50':>8} {'503 p99':>8}   (rates per s, ms)")
        r = summary("sustainable (closed 2)", closed_loop(addr, req, 2, 5), 5)
        summary(f"4x = {4 * r:.0f}/s offered", open_loop(addr, req, 4 * r, 32, args.seconds), args.seconds)
        rec = open_loop(addr, req, 0.5 * r, 4, 5)
        t0 = min(x[0] for x in rec)
        summary("recovery, first 1 s", [x for x in rec if x[0] < t0 + 1], 1)
        summary("recovery, 5 s", rec, 5)
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    sys.exit(main())
