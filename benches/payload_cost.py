"""What the payload log costs per logged request: the same vigil with every request
logged (`[logging] sample = 1.0`, `--payload-dir`) and without logging.

    cargo build --release
    python3 benches/payload_cost.py [--rounds 3] [--seconds 10] [--vigil target/release/vigil]
                                    [--sample 1.0] [--cloudevents [--receiver python|nginx]]

Reuses drift_cost.py's hand-written 6-feature linear ONNX model, its wrk driver and its
CPU measure: utime + stime of the server process (all its threads, so the writer thread's
encoding, writing and gzip are counted) over a wrk run, divided by the requests wrk
counted. The order of the two servers alternates between rounds. Prints per-round
figures, the medians of the per-round ratios (logged / plain), the records written and
dropped, the bytes on disk, and the load average before and after.

With --cloudevents the logged server also POSTs every record to a local receiver: a Python
`ThreadingHTTPServer` in this process (`--receiver python`, the default), or nginx
answering `return 202;` in a process of its own (`--receiver nginx`; Debian's nginx, one
worker, keep-alive up to 1e6 requests per connection), which tells the sink's own
ceiling. It prints the delivered share, the drops by reason, and the CPU time of the
sink's threads (`vigil-ce-*`, from /proc/PID/task) per delivered pair.
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


def start_nginx(work):
    """nginx answering 202 to every POST on /events, counting requests in stub_status.
    Returns (process, port, events) where events() is the count of POSTs so far."""
    d = os.path.join(work, "nginx")
    os.makedirs(d, exist_ok=True)
    port = dc.free_port()
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port};
    location = /status {{ stub_status; }}
    location /events {{ return 202; }}
  }}
}}
""")
    proc = subprocess.Popen(["/usr/sbin/nginx", "-c", conf, "-p", d, "-e", f"{d}/error.log"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, process_group=0)
    status_calls = [0]

    def events():
        status_calls[0] += 1
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as r:
            text = r.read().decode()
        # "Active connections: N\nserver accepts handled requests\n A H R\n..."
        requests = int(text.splitlines()[2].split()[2])
        return requests - status_calls[0]

    for _ in range(100):
        try:
            events()
            break
        except OSError:
            import time
            time.sleep(0.05)
    else:
        raise SystemExit(f"nginx did not start; see {d}/error.log")
    return proc, port, events


def thread_cpu(pid, prefix):
    """utime + stime (seconds) of the process's threads whose name starts with prefix."""
    total = 0.0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                st = f.read()
        except OSError:
            continue
        name = st[st.index("(") + 1:st.rindex(")")]
        if name.startswith(prefix):
            rest = st[st.rindex(")") + 2:].split()
            total += (int(rest[11]) + int(rest[12])) / dc.TICK
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--sample", default="1.0")
    ap.add_argument("--vigil", default=os.path.join(dc.ROOT, "target", "release", "vigil"))
    ap.add_argument("--cloudevents", action="store_true",
                    help="the logged server also POSTs each record to a local CloudEvents "
                         "receiver (an http.server thread answering 202)")
    ap.add_argument("--receiver", choices=["python", "nginx"], default="python",
                    help="the CloudEvents receiver: Python's http.server (in this process) "
                         "or nginx answering `return 202;`")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="vigil-payload-cost-")
    sink = ""
    nginx = None
    received = lambda: RECEIVED["events"]
    if args.cloudevents and args.receiver == "nginx":
        nginx, port, received = start_nginx(work)
        sink = f'cloudevents_url = "http://127.0.0.1:{port}/events"\n'
    elif args.cloudevents:
        sink = f'cloudevents_url = "http://127.0.0.1:{start_receiver()}/events"\n'

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
        sink_cpu = thread_cpu(logged.proc.pid, "vigil-ce")
        if args.cloudevents:
            # Pairs still in flight finish (or time out, 2 s) before the count is read.
            import time
            time.sleep(3)
            events = received()
    finally:
        for s in servers.values():
            s.stop()
        if nginx is not None:
            os.killpg(nginx.pid, 15)
            nginx.wait()
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
        pairs = events / 2
        offered = pairs + drops["sink_full"] + drops["sink_error"]
        wall = 2 + sum(r["logged"]["n"] / r["logged"]["rps"] for r in rounds)  # + warm-up
        print(f"CloudEvents sink ({args.receiver} receiver): {pairs:.0f} of {offered:.0f} records "
              f"delivered ({100 * pairs / max(offered, 1):.1f} %), sink_full {drops['sink_full']:.0f}, "
              f"sink_error {drops['sink_error']:.0f}; ~{pairs / max(wall, 1e-9):.0f} pairs/s over the "
              f"measured rounds; sink threads (vigil-ce-*) {sink_cpu:.2f} s CPU, "
              f"{1e6 * sink_cpu / max(pairs, 1):.1f} µs per delivered pair")


if __name__ == "__main__":
    main()
