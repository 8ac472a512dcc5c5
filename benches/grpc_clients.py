"""gRPC against HTTP with the clients users run: tritonclient.grpc (grpcio, C core) and
tritonclient.http (geventhttpclient), one request at a time, on the same vigil process and
model (iris, 3 rows of FP32; inputs binary on both fronts, outputs as each client
returns them by default: raw on gRPC, JSON on HTTP), rounds interleaved.

grpc_load.rs measures the server with lean Rust clients; this measures what a Python
user sees end to end. Reports per front: p50, p90 and req/s, and vigil's CPU per request
(utime + stime of the process over the round), which is the figure that holds still on a
shared machine.

    .venv/bin/python benches/grpc_clients.py [--seconds 4] [--rounds 3] [--vigil PATH]
        [--backend tract|ort]
"""

import argparse
import os
import re
import subprocess
import sys
import time

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def start(vigil, backend):
    cmd = [vigil, "serve", "--repository", os.path.join(ROOT, "models"), "--backend", backend,
           "--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0", "--poll-interval", "0"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "VIGIL_LOG": "info"})
    http = grpc = None
    for line in proc.stderr:
        m = re.search(r"listening on http://(\S+)", line)
        if m:
            http = m.group(1)
        m = re.search(r"listening on grpc://(\S+)", line)
        if m:
            grpc = m.group(1)
        if http and grpc:
            break
    if not (http and grpc):
        raise SystemExit("vigil did not report both listeners")
    # Keep reading its log so that a full pipe never blocks it.
    import threading
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    return proc, http, grpc


def client_call(front, addr, rows):
    x = rows.astype(np.float32)
    if front == "grpc":
        c = grpcclient.InferenceServerClient(addr)
        inp = grpcclient.InferInput("X", list(x.shape), "FP32")
    else:
        c = httpclient.InferenceServerClient(addr)
        inp = httpclient.InferInput("X", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, **({"binary_data": True} if front == "http" else {}))
    while not c.is_model_ready("iris"):
        time.sleep(0.05)

    def call():
        r = c.infer("iris", [inp])
        return r.as_numpy("label")

    return c, call


def measure(pid, call, seconds):
    for _ in range(200):
        call()
    lat = []
    cpu0 = cpu_seconds(pid)
    t0 = time.perf_counter()
    end = t0 + seconds
    while True:
        s = time.perf_counter()
        call()
        e = time.perf_counter()
        lat.append(e - s)
        if e >= end:
            break
    wall = time.perf_counter() - t0
    cpu = cpu_seconds(pid) - cpu0
    lat.sort()
    n = len(lat)
    return {"n": n, "rps": n / wall, "p50": lat[n // 2] * 1e6, "p90": lat[n * 9 // 10] * 1e6,
            "cpu": cpu / n * 1e6}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vigil", default=os.path.join(ROOT, "target", "release", "vigil"))
    ap.add_argument("--backend", default="tract", choices=["tract", "ort"])
    ap.add_argument("--seconds", type=float, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    proc, http, grpc = start(args.vigil, args.backend)
    try:
        rows = np.array([[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3], [7.7, 3.0, 6.1, 2.3]])
        clients = {f: client_call(f, a, rows) for f, a in (("grpc", grpc), ("http", http))}
        a, b = clients["grpc"][1](), clients["http"][1]()
        assert (a == b).all(), (a, b)
        print(f"vigil {args.backend}, iris, 3 rows; load {open('/proc/loadavg').read().split()[:3]}")
        results = {"grpc": [], "http": []}
        for r in range(args.rounds):
            for front in (("grpc", "http") if r % 2 == 0 else ("http", "grpc")):
                m = measure(proc.pid, clients[front][1], args.seconds)
                results[front].append(m)
                print(f"round {r + 1} {front:<5} {m['n']:>7} req  {m['rps']:8.0f} req/s  "
                      f"p50 {m['p50']:6.0f} µs  p90 {m['p90']:6.0f} µs  server CPU {m['cpu']:6.1f} µs/req")
        print("medians:")
        for front, ms in results.items():
            med = {k: float(np.median([m[k] for m in ms])) for k in ("rps", "p50", "p90", "cpu")}
            print(f"  {front:<5} {med['rps']:8.0f} req/s  p50 {med['p50']:6.0f} µs  "
                  f"p90 {med['p90']:6.0f} µs  server CPU {med['cpu']:6.1f} µs/req")
        print(f"load after {open('/proc/loadavg').read().split()[:3]}")
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    sys.exit(main())
