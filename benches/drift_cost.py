"""What drift monitoring costs at full load: the same vigil with drift on and off.

    cargo build --release
    python3 benches/drift_cost.py [--rounds 3] [--seconds 10] [--vigil target/release/vigil]
                                  [--config '[drift]\\n...']

Two vigil processes serve the same 6-feature linear model (y = X·w + b, written here as
ONNX by hand: no onnx package needed) with the same reference profile (`vigil profile` on
5000 seeded normal rows): one with the default `[drift]` (or --config), one with
`[drift] enabled = false`. Each round runs `wrk -t2 -c64 -d{seconds}s` with a one-row
V2 JSON body against each in turn (the order alternates, so slow drifts of the shared
machine hit both alike). CPU per request is the server process's utime + stime
(/proc/PID/stat, all its threads) over the run divided by the requests wrk counted.
Prints per-round figures, the medians of the per-round ratios (drift on / off), the
windows the drift-on server scored, and the load average before and after.
"""

import argparse
import json
import os
import random
import re
import signal
import socket
import statistics
import struct
import subprocess
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICK = os.sysconf("SC_CLK_TCK")
FEATURES = 6
LUA = """
wrk.method = "POST"
local f = io.open(os.getenv("VIGIL_BENCH_BODY"), "rb")
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d\\n", summary.requests, summary.duration,
    e.status + e.connect + e.read + e.write + e.timeout))
end
"""


# --- A minimal protobuf writer, enough for an ONNX ModelProto -------------------------

def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_int(no, n):
    return varint(no << 3) + varint(n)


def field_bytes(no, data):
    if isinstance(data, str):
        data = data.encode()
    return varint(no << 3 | 2) + varint(len(data)) + data


def value_info(name, dims):
    # ValueInfoProto{name=1, type=2}; TypeProto{tensor_type=1}; Tensor{elem_type=1, shape=2};
    # TensorShapeProto{dim=1}; Dimension{dim_value=1, dim_param=2}. FLOAT = 1.
    shape = b"".join(field_bytes(1, field_bytes(2, d) if isinstance(d, str) else field_int(1, d))
                     for d in dims)
    tensor = field_int(1, 1) + field_bytes(2, shape)
    return field_bytes(1, name) + field_bytes(2, field_bytes(1, tensor))


def initializer(name, dims, values):
    # TensorProto{dims=1, data_type=2, name=8, raw_data=9}.
    return (b"".join(field_int(1, d) for d in dims) + field_int(2, 1) + field_bytes(8, name)
            + field_bytes(9, struct.pack(f"<{len(values)}f", *values)))


def linear_model(weights, bias):
    """y = X·w + b as ONNX (opset 13): input X [batch, 6], output y [batch, 1]."""
    node = lambda ins, out, op: (b"".join(field_bytes(1, i) for i in ins) + field_bytes(2, out)
                                 + field_bytes(4, op))
    graph = (field_bytes(1, node(["X", "w"], "xw", "MatMul"))
             + field_bytes(1, node(["xw", "b"], "y", "Add"))
             + field_bytes(2, "linear6")
             + field_bytes(5, initializer("w", [len(weights), 1], weights))
             + field_bytes(5, initializer("b", [1], [bias]))
             + field_bytes(11, value_info("X", ["batch", len(weights)]))
             + field_bytes(12, value_info("y", ["batch", 1])))
    opset = field_bytes(1, "") + field_int(2, 13)
    return field_int(1, 8) + field_bytes(2, "drift_cost.py") + field_bytes(7, graph) + field_bytes(8, opset)


# --- Processes ------------------------------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    """utime + stime of the process (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    rest = s[s.rindex(")") + 2:].split()
    return (int(rest[11]) + int(rest[12])) / TICK


def load_average():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


class Server:
    def __init__(self, name, vigil, repo, work, body):
        self.name, self.body = name, body
        self.port = free_port()
        self.log = open(os.path.join(work, f"{name}.log"), "wb")
        cmd = [vigil, "serve", "--repository", repo, "--http-addr", f"127.0.0.1:{self.port}",
               "--backend", "tract", "--state-dir", os.path.join(work, "state-" + name),
               "--poll-interval", "0"]
        # A process group of its own (for killpg) in the harness's session: a session of
        # its own is a scheduling group of its own under sched autogroup (see load.py).
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "VIGIL_LOG": "warn"}, process_group=0)
        self.body_file = os.path.join(work, "body.json")
        with open(self.body_file, "wb") as f:
            f.write(body)

    def url(self, path="/v2/models/linear/infer"):
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_ready(self, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited; log in {self.log.name}")
            try:
                req = urllib.request.Request(self.url(), data=self.body,
                                             headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=2) as r:
                    if r.status == 200:
                        return
            except Exception:
                time.sleep(0.2)
        raise SystemExit(f"{self.name} not answering; log in {self.log.name}")

    def drift(self):
        with urllib.request.urlopen(self.url("/v2/models/linear/drift"), timeout=5) as r:
            return json.loads(r.read())["versions"][0]

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=15)
        except Exception:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def wrk(server, seconds, lua):
    out = subprocess.run(["wrk", "-t2", "-c64", f"-d{seconds}s", "-s", lua, server.url()],
                         capture_output=True, text=True,
                         env={**os.environ, "VIGIL_BENCH_BODY": server.body_file})
    m = re.search(r"RESULT (\d+) (\d+) (\d+)", out.stdout)
    if not m:
        raise SystemExit(f"wrk failed on {server.name}:\n{out.stdout}\n{out.stderr}")
    n, dur_us, errors = map(int, m.groups())
    return n, dur_us / 1e6, errors


def measure(server, seconds, lua):
    cpu0 = cpu_seconds(server.proc.pid)
    n, dur, errors = wrk(server, seconds, lua)
    cpu = cpu_seconds(server.proc.pid) - cpu0
    return {"rps": n / dur, "cpu_us": cpu / max(n, 1) * 1e6, "errors": errors, "n": n}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--vigil", default=os.path.join(ROOT, "target", "release", "vigil"))
    ap.add_argument("--config", default="", help="config.toml of the drift-on server")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="vigil-drift-cost-")
    rng = random.Random(20261207)
    weights = [rng.uniform(-1, 1) for _ in range(FEATURES)]
    model = linear_model(weights, 0.5)
    train = os.path.join(work, "train.csv")
    with open(train, "w") as f:
        f.write(",".join(f"x{j}" for j in range(FEATURES)) + "\n")
        for _ in range(5000):
            f.write(",".join(f"{rng.gauss(0, 1):.6f}" for _ in range(FEATURES)) + "\n")
    repos = {}
    for name, config in (("drift-on", args.config.replace("\\n", "\n")),
                         ("drift-off", "[drift]\nenabled = false\n")):
        v = os.path.join(work, name, "linear", "1")
        os.makedirs(v)
        with open(os.path.join(v, "model.onnx"), "wb") as f:
            f.write(model)
        with open(os.path.join(work, name, "linear", "config.toml"), "w") as f:
            f.write(config)
        repos[name] = os.path.join(work, name)
    ref = os.path.join(repos["drift-on"], "linear", "1", "reference.json")
    subprocess.run([args.vigil, "profile", "--data", train, "--model", os.path.dirname(ref), "--out", ref],
                   check=True, capture_output=True)
    with open(ref, "rb") as src, open(os.path.join(repos["drift-off"], "linear", "1", "reference.json"),
                                      "wb") as dst:
        dst.write(src.read())
    # One row near the training distribution (the window statistics are not the point).
    row = [round(rng.gauss(0, 1), 4) for _ in range(FEATURES)]
    body = json.dumps({"inputs": [{"name": "X", "shape": [1, FEATURES], "datatype": "FP32",
                                   "data": row}]}).encode()
    lua = os.path.join(work, "post.lua")
    with open(lua, "w") as f:
        f.write(LUA)

    servers = {n: Server(n, args.vigil, r, os.path.join(work, n), body) for n, r in repos.items()}
    load_before = load_average()
    rounds = []
    try:
        for s in servers.values():
            s.wait_ready()
        for s in servers.values():  # warm-up
            wrk(s, 2, lua)
        names = list(servers)
        for r in range(args.rounds):
            order = names if r % 2 == 0 else names[::-1]
            res = {n: measure(servers[n], args.seconds, lua) for n in order}
            rounds.append(res)
            print(f"round {r + 1}: " + ", ".join(
                f"{n} {res[n]['rps']:.0f} req/s {res[n]['cpu_us']:.2f} µs/req ({res[n]['errors']} errors)"
                for n in names), flush=True)
        report = servers["drift-on"].drift()
    finally:
        for s in servers.values():
            s.stop()

    ratio = lambda key: statistics.median(r["drift-on"][key] / r["drift-off"][key] for r in rounds)
    med = lambda n, key: statistics.median(r[n][key] for r in rounds)
    last = report.get("last_window") or {}
    print(f"vigil {args.vigil}; load average before {load_before}, after {load_average()}")
    for n in servers:
        print(f"{n}: median {med(n, 'rps'):.0f} req/s, {med(n, 'cpu_us'):.2f} µs CPU/request")
    print(f"drift on / off CPU per request: {ratio('cpu_us'):.3f} (target ≤ 1.05)")
    print(f"drift on / off req/s: {ratio('rps'):.3f} (target ≥ 0.95)")
    print(f"drift-on scored {report.get('windows')} windows; last one {last.get('rows')} rows")


if __name__ == "__main__":
    main()
