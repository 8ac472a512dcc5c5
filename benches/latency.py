"""Round-trip latency of one-row inference requests, per sample model.

Starts `vigil serve` on 127.0.0.1 (any free port), then for each model sends N sequential
requests over one keep-alive connection (a plain socket: no HTTP library overhead beyond
parsing the status line and Content-Length) and prints the median, p90 and p99 in
microseconds. The body is the first row of the model's reference input
(tests/data/refs), as V2 JSON, batch 1.

    python3 benches/latency.py --backend tract
    python3 benches/latency.py --backend ort --ort-library .venv/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime.so.1.31.1

Times include the client's own work (Python, ~10-20 µs per request); numbers swing with
whatever else the machine does, so record the command and machine with the figures.
"""

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = [("iris", "iris_v2"), ("mlp", "mlp_v1"), ("cnn", "cnn_v1"), ("breast_cancer", "breast_cancer_v1")]


def one_row_body(refname):
    with open(os.path.join(ROOT, "tests", "data", "refs", refname + ".json")) as f:
        ref = json.load(f)
    inputs = []
    for t in ref["inputs"]:
        per_row = len(t["data"]) // t["shape"][0]
        inputs.append({"name": t["name"], "shape": [1] + t["shape"][1:], "datatype": t["datatype"],
                       "data": t["data"][:per_row]})
    return json.dumps({"inputs": inputs}).encode()


def read_response(sock, buf):
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("connection closed")
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    status = int(head.split(b" ", 2)[1])
    length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
    while len(rest) < length:
        rest += sock.recv(65536)
    return status, rest[:length], rest[length:]


def measure(addr, model, body, n, warmup):
    host, port = addr.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    req = (f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: {addr}\r\n"
           f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    buf = b""
    times = []
    for i in range(warmup + n):
        t0 = time.perf_counter_ns()
        sock.sendall(req)
        status, _, buf = read_response(sock, buf)
        t1 = time.perf_counter_ns()
        if status != 200:
            raise RuntimeError(f"{model}: HTTP {status}")
        if i >= warmup:
            times.append((t1 - t0) / 1000)
    sock.close()
    times.sort()
    return statistics.median(times), times[int(0.9 * n)], times[int(0.99 * n)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vigil", default=os.path.join(ROOT, "target", "release", "vigil"))
    ap.add_argument("--backend", default="tract", choices=["tract", "ort"])
    ap.add_argument("--ort-library")
    ap.add_argument("-n", type=int, default=3000)
    ap.add_argument("--warmup", type=int, default=300)
    args = ap.parse_args()
    cmd = [args.vigil, "serve", "--repository", os.path.join(ROOT, "models"),
           "--http-addr", "127.0.0.1:0", "--backend", args.backend]
    if args.ort_library:
        cmd += ["--ort-library", args.ort_library]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env={**os.environ, "VIGIL_LOG": "info"})
    try:
        addr = None
        for line in proc.stderr:
            m = re.search(r"listening on http://(\S+)", line)
            if m:
                addr = m.group(1)
            if "repository loaded" in line:
                break
        print(f"vigil {args.backend} on {addr}; {args.n} sequential one-row JSON requests per model")
        print(f"{'model':<14} {'p50 µs':>8} {'p90 µs':>8} {'p99 µs':>8}")
        for model, ref in MODELS:
            if args.backend == "tract" and model == "breast_cancer":
                continue
            p50, p90, p99 = measure(addr, model, one_row_body(ref), args.n, args.warmup)
            print(f"{model:<14} {p50:8.0f} {p90:8.0f} {p99:8.0f}")
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    sys.exit(main())
