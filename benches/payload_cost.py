"""What the payload log costs per logged request: the same vigil with every request
logged (`[logging] sample = 1.0`, `--payload-dir`) and without logging.

    cargo build --release
    python3 benches/payload_cost.py [--rounds 3] [--seconds 10] [--vigil target/release/vigil]
                                    [--sample 1.0]

Reuses drift_cost.py's hand-written 6-feature linear ONNX model, its wrk driver and its
CPU measure: utime + stime of the server process (all its threads, so the writer thread's
encoding, writing and gzip are counted) over a wrk run, divided by the requests wrk
counted. The order of the two servers alternates between rounds. Prints per-round
figures, the medians of the per-round ratios (logged / plain), the records written and
dropped, the bytes on disk, and the load average before and after.
"""

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import drift_cost as dc  # noqa: E402


class Server(dc.Server):
    def __init__(self, name, vigil, repo, work, body, extra):
        os.makedirs(work, exist_ok=True)
        self.name, self.body = name, body
        self.port = dc.free_port()
        self.log = open(os.path.join(work, f"{name}.log"), "wb")
        cmd = [vigil, "serve", "--repository", repo, "--http-addr", f"127.0.0.1:{self.port}",
               "--backend", "tract", "--state-dir", os.path.join(work, "state"),
               "--poll-interval", "0", *extra]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "VIGIL_LOG": "warn"}, process_group=0)
        self.body_file = os.path.join(work, "body.json")
        with open(self.body_file, "wb") as f:
            f.write(body)

    def metric(self, prefix):
        with urllib.request.urlopen(self.url("/metrics"), timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(prefix):
                    return float(line.rsplit(" ", 1)[1])
        return 0.0


RECEIVED = {"events": 0}


def start_receiver():
    """A CloudEvents receiver on 127.0.0.1 that reads each event and answers 202; counts
    the events in RECEIVED."""
    import http.server
    import threading

    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            self.rfile.read(int(self.headers.get("content-length", 0)))
            with lock:
                RECEIVED["events"] += 1
            self.send_response(202)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv.server_address[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--sample", default="1.0")
    ap.add_argument("--vigil", default=os.path.join(dc.ROOT, "target", "release", "vigil"))
    ap.add_argument("--cloudevents", action="store_true",
                    help="the logged server also POSTs each record to a local CloudEvents "
                         "receiver (an http.server thread answering 202)")
    args = ap.parse_args()
    sink = ""
    if args.cloudevents:
        sink = f'cloudevents_url = "http://127.0.0.1:{start_receiver()}/events"\n'

    work = tempfile.mkdtemp(prefix="vigil-payload-cost-")
    rng = random.Random(20261207)
    model = dc.linear_model([rng.uniform(-1, 1) for _ in range(dc.FEATURES)], 0.5)
    payload_dir = os.path.join(work, "payload")
    setups = {
        "logged": (f"[logging]\nsample = {args.sample}\n{sink}", ["--payload-dir", payload_dir]),
        "plain": ("", []),
    }
    row = [round(rng.gauss(0, 1), 4) for _ in range(dc.FEATURES)]
    body = json.dumps({"inputs": [{"name": "X", "shape": [1, dc.FEATURES], "datatype": "FP32",
                                   "data": row}]}).encode()
    lua = os.path.join(work, "post.lua")
    with open(lua, "w") as f:
        f.write(dc.LUA)
    servers = {}
    for name, (config, extra) in setups.items():
        v = os.path.join(work, name, "linear", "1")
        os.makedirs(v)
        with open(os.path.join(v, "model.onnx"), "wb") as f:
            f.write(model)
        with open(os.path.join(work, name, "linear", "config.toml"), "w") as f:
            f.write(config)
        servers[name] = Server(name, args.vigil, os.path.join(work, name), os.path.join(work, name + "-run"),
                               body, extra)
    load_before = dc.load_average()
    rounds = []
    try:
        for s in servers.values():
            s.wait_ready()
        for s in servers.values():
            dc.wrk(s, 2, lua)
        names = list(servers)
        for r in range(args.rounds):
            order = names if r % 2 == 0 else names[::-1]
            res = {n: dc.measure(servers[n], args.seconds, lua) for n in order}
            rounds.append(res)
            print(f"round {r + 1}: " + ", ".join(
                f"{n} {res[n]['rps']:.0f} req/s {res[n]['cpu_us']:.2f} µs/req ({res[n]['errors']} errors)"
                for n in names), flush=True)
        logged = servers["logged"]
        written = logged.metric('vigil_payload_records_total{model="linear"}')
        drops = {r: logged.metric(f'vigil_payload_dropped_total{{model="linear",reason="{r}"}}')
                 for r in ("queue_full", "write_error", "sink_full", "sink_error")}
        dropped = sum(drops.values())
    finally:
        for s in servers.values():
            s.stop()
    disk = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(payload_dir) for f in fs)
    ratio = lambda key: statistics.median(r["logged"][key] / r["plain"][key] for r in rounds)
    med = lambda n, key: statistics.median(r[n][key] for r in rounds)
    print(f"vigil {args.vigil}; load average before {load_before}, after {dc.load_average()}")
    for n in servers:
        print(f"{n}: median {med(n, 'rps'):.0f} req/s, {med(n, 'cpu_us'):.2f} µs CPU/request")
    print(f"logged / plain CPU per request: {ratio('cpu_us'):.3f}; "
          f"extra {med('logged', 'cpu_us') - med('plain', 'cpu_us'):.2f} µs CPU per logged request")
    print(f"logged / plain req/s: {ratio('rps'):.3f}")
    print(f"records written {written:.0f}, dropped {dropped:.0f}; {disk} bytes on disk (gzip + active)")
    if args.cloudevents:
        pairs = RECEIVED["events"] / 2
        offered = pairs + drops["sink_full"] + drops["sink_error"]
        print(f"CloudEvents sink: {pairs:.0f} of {offered:.0f} records delivered "
              f"({100 * pairs / max(offered, 1):.1f} %), sink_full {drops['sink_full']:.0f}, "
              f"sink_error {drops['sink_error']:.0f}")


if __name__ == "__main__":
    main()
