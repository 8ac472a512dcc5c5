"""Hot swap under load: latency and errors while versions are swapped, against the same
load without swaps; and resident memory after many swaps.

    python3 benches/swap_load.py [--backend tract] [--swaps 50] [--rss-swaps 200]

1. Starts `vigil serve` on a temporary repository holding iris v1 (poll interval 0.1 s).
2. Steady phase: C client threads (keep-alive sockets, one-row JSON requests) for the
   time the swap phase takes, latency per request recorded.
3. Swap phase: the same load while S new versions are published by atomic rename (iris
   v1 and v2 files alternately), each waited for until it serves; old directories removed.
4. Memory: R more swaps without load; VmRSS after the first and after the last.
Prints p50/p99/errors per phase, the p99 ratio, and the RSS figures.
"""

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IRIS = [open(os.path.join(ROOT, "models", "iris", str(v), "model.onnx"), "rb").read() for v in (1, 2)]
BODY = json.dumps({"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32",
                               "data": [5.1, 3.5, 1.4, 0.2]}]}).encode()


def read_response(sock, buf):
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    status = int(head.split(b" ", 2)[1])
    length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
    while len(rest) < length:
        rest += sock.recv(65536)
    return status, rest[length:]


def client(addr, stop, out):
    host, port = addr.rsplit(":", 1)
    req = (f"POST /v2/models/iris/infer HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n"
           f"Content-Length: {len(BODY)}\r\n\r\n").encode() + BODY
    lat, errors = [], 0
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = b""
    while not stop.is_set():
        t0 = time.perf_counter_ns()
        try:
            sock.sendall(req)
            status, buf = read_response(sock, buf)
        except OSError:
            errors += 1
            sock = socket.create_connection((host, int(port)))
            buf = b""
            continue
        lat.append((time.perf_counter_ns() - t0) / 1000)
        if status != 200:
            errors += 1
    out.append((lat, errors))


def run_load(addr, clients, during):
    stop = threading.Event()
    out = []
    threads = [threading.Thread(target=client, args=(addr, stop, out)) for _ in range(clients)]
    for t in threads:
        t.start()
    start = time.time()
    during()
    elapsed = time.time() - start
    stop.set()
    for t in threads:
        t.join()
    lat = sorted(x for l, _ in out for x in l)
    errors = sum(e for _, e in out)
    return lat, errors, elapsed


def served_version(addr):
    with urllib.request.urlopen(f"http://{addr}/v2/models/iris") as r:
        return json.load(r)["versions"]


def swap(repo, addr, version):
    tmp = os.path.join(repo, "iris", f".tmp-{version}")
    os.makedirs(tmp)
    with open(os.path.join(tmp, "model.onnx"), "wb") as f:
        f.write(IRIS[version % 2])
    os.rename(tmp, os.path.join(repo, "iris", str(version)))
    while served_version(addr) != [str(version)]:
        time.sleep(0.02)
    old = os.path.join(repo, "iris", str(version - 2))
    if os.path.isdir(old):
        shutil.rmtree(old)


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def pct(lat, p):
    return lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vigil", default=os.path.join(ROOT, "target", "release", "vigil"))
    ap.add_argument("--backend", default="tract")
    ap.add_argument("--ort-library")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--swaps", type=int, default=50)
    ap.add_argument("--rss-swaps", type=int, default=200)
    args = ap.parse_args()
    repo = tempfile.mkdtemp(prefix="vigil-swap-")
    os.makedirs(os.path.join(repo, "iris", "1"))
    with open(os.path.join(repo, "iris", "1", "model.onnx"), "wb") as f:
        f.write(IRIS[1])
    cmd = [args.vigil, "serve", "--repository", repo, "--http-addr", "127.0.0.1:0",
           "--backend", args.backend, "--poll-interval", "0.1", "--state-dir", os.path.join(repo, ".state")]
    if args.ort_library:
        cmd += ["--ort-library", args.ort_library]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        addr = None
        for line in proc.stderr:
            m = re.search(r"listening on http://(\S+)", line)
            addr = addr or (m and m.group(1))
            if "repository loaded" in line:
                break
        threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
        version = [1]

        def swaps(n):
            def go():
                for _ in range(n):
                    version[0] += 1
                    swap(repo, addr, version[0])
            return go

        t0 = time.time()
        swap_lat, swap_err, swap_time = run_load(addr, args.clients, swaps(args.swaps))
        steady_lat, steady_err, _ = run_load(addr, args.clients, lambda: time.sleep(swap_time))
        print(f"vigil {args.backend}, {args.clients} clients, one-row iris JSON requests")
        print(f"{'phase':<10} {'requests':>9} {'errors':>7} {'p50 µs':>8} {'p99 µs':>8}")
        print(f"{'steady':<10} {len(steady_lat):>9} {steady_err:>7} {pct(steady_lat, .5):8.0f} {pct(steady_lat, .99):8.0f}")
        print(f"{'swapping':<10} {len(swap_lat):>9} {swap_err:>7} {pct(swap_lat, .5):8.0f} {pct(swap_lat, .99):8.0f}"
              f"   ({args.swaps} swaps in {swap_time:.1f} s)")
        print(f"p99 swapping / steady: {pct(swap_lat, .99) / pct(steady_lat, .99):.2f}")
        version[0] += 1
        swap(repo, addr, version[0])
        first = rss_kb(proc.pid)
        swaps(args.rss_swaps - 1)()
        last = rss_kb(proc.pid)
        print(f"RSS after swap 1: {first} kB; after swap {args.rss_swaps}: {last} kB ({(last / first - 1) * 100:+.1f}%)")
        print(f"total {time.time() - t0:.0f} s")
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(repo, ignore_errors=True)


if __name__ == "__main__":
    main()
