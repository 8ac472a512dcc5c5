"""The worker hop and batching (issue #19): inline against pool on a cheap model, batching
on against off on a compute-heavy MLP, with a bare hyper server as the ceiling.

    benches/setup.sh                  # wrk (once)
    cargo build --release && cargo bench --bench ceiling --no-run
    python3 benches/hop.py [--rounds 3] [--seconds 10] [--record] [--only a,b] [--vigil PATH]

Targets, all started at once on loopback and measured in turns (the order rotates every
round, so slow drifts of the shared machine hit every target alike):

- iris (logistic regression, 4 features, `[drift] enabled = false`) on tract and on ONNX
  Runtime, with `[execution] mode = "inline"`, with `mode = "pool"` (the worker pool with
  its default batching: what every version did before the mode existed) and with the pool
  and `[batching] max_batch_size = 1` (the hop alone);
- the heavy MLP 64 -> 1024 -> 1024 -> 16 (made at bench time by benches/models/make_mlp.py
  with the .venv-mlflow interpreter) on tract, with default batching and with
  `[batching] max_batch_size = 1`; `auto` puts it on the pool either way;
- the ceiling: benches/ceiling.rs answering iris's response body.

Each measurement is `wrk -t2 -c64` for `--seconds` on a one-row V2 JSON request. CPU time
per request is utime + stime of the target process over the requests it served (stable on
a shared machine, where req/s swings). One-connection p50 (`wrk -t1 -c1`) is taken for the
ceiling and the iris targets; idle RssAnon before any load. The mode `auto` picks for each
model is read from a server started without `[execution]`. Medians of per-round figures
and ratios are printed (and, with --record, appended to benches/RESULTS.md with the date,
commit, machine load and command).
"""

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICK = os.sysconf("SC_CLK_TCK")
LUA = """
wrk.method = "POST"
local f = io.open(os.getenv("VIGIL_BENCH_BODY"), "rb")
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d\\n", summary.requests, summary.duration,
    e.status + e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_row_iris():
    with open(os.path.join(ROOT, "tests", "data", "refs", "iris_v1.json")) as f:
        t = json.load(f)["inputs"][0]
    per_row = len(t["data"]) // t["shape"][0]
    return json.dumps({"inputs": [{"name": t["name"], "shape": [1] + t["shape"][1:],
                                   "datatype": t["datatype"], "data": t["data"][:per_row]}]}).encode()


def one_row_heavy():
    data = [round(((i * 37) % 17) / 17.0, 4) for i in range(64)]
    return json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                                   "data": data}]}).encode()


def proc_cpu(pid):
    """utime + stime (seconds) of pid (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    rest = s[s.rindex(")") + 2:].split()
    return (int(rest[11]) + int(rest[12])) / TICK


def rss_anon_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Target:
    def __init__(self, name, cmd, port, path, body, env=None):
        self.name, self.port, self.path, self.body = name, port, path, body
        self.log = tempfile.NamedTemporaryFile(prefix=f"hop-{name}-", suffix=".log", delete=False)
        # A process group of its own (for killpg) in the harness's session: a session of
        # its own is a scheduling group of its own under sched autogroup (see load.py).
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})}, process_group=0)
        self.body_file = tempfile.NamedTemporaryFile(prefix="hop-body-", delete=False)
        self.body_file.write(body)
        self.body_file.close()

    def url(self, path=None):
        return f"http://127.0.0.1:{self.port}{path or self.path}"

    def wait_ready(self, timeout=120):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited; log in {self.log.name}")
            try:
                req = urllib.request.Request(self.url(), data=self.body,
                                             headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=2) as r:
                    if r.status == 200:
                        return json.loads(r.read())
            except Exception:
                time.sleep(0.3)
        raise SystemExit(f"{self.name} not answering on {self.url()}; log in {self.log.name}")

    def get(self, path):
        with urllib.request.urlopen(self.url(path), timeout=5) as r:
            return json.loads(r.read())

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=15)
        except Exception:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def wrk(target, connections, seconds, lua):
    threads = min(2, connections)
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "-s", lua,
                          target.url()], capture_output=True, text=True,
                         env={**os.environ, "VIGIL_BENCH_BODY": target.body_file.name})
    m = re.search(r"RESULT (\d+) (\d+) (\d+) (\d+) (\d+)", out.stdout)
    if not m:
        raise SystemExit(f"wrk failed on {target.name}:\n{out.stdout}\n{out.stderr}")
    n, dur_us, errors, p50, p99 = map(int, m.groups())
    return n, dur_us / 1e6, errors, p50, p99


def measure(target, connections, seconds, lua):
    cpu0 = proc_cpu(target.proc.pid)
    n, dur, errors, p50, p99 = wrk(target, connections, seconds, lua)
    cpu = proc_cpu(target.proc.pid) - cpu0
    return {"rps": n / dur, "errors": errors, "p50": p50, "p99": p99,
            "cpu_us": cpu / max(n, 1) * 1e6, "n": n}


def find_ceiling():
    for line in subprocess.run(["cargo", "bench", "--bench", "ceiling", "--no-run", "--message-format=json"],
                               cwd=ROOT, capture_output=True, text=True).stdout.splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if msg.get("target", {}).get("name") == "ceiling" and msg.get("executable"):
            return msg["executable"]
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--vigil", default=os.path.join(ROOT, "target", "release", "vigil"))
    ap.add_argument("--only", default="", help="comma-separated targets to run (default: all)")
    ap.add_argument("--record", action="store_true", help="append the results to benches/RESULTS.md")
    args = ap.parse_args()
    only = set(filter(None, args.only.split(",")))
    # A SIGTERM (`timeout`, Ctrl-C's cousin) still stops the servers started below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    ort_lib = next(iter(sorted(
        os.path.join(d, f) for d in [os.path.join(ROOT, ".venv/lib/python3.11/site-packages/onnxruntime/capi")]
        if os.path.isdir(d) for f in os.listdir(d) if f.startswith("libonnxruntime.so."))), None)
    ceiling = find_ceiling()
    py_onnx = os.path.join(ROOT, ".venv-mlflow", "bin", "python")
    for tool, path in (("wrk", shutil.which("wrk")), ("vigil", args.vigil), ("ceiling", ceiling),
                       ("python with onnx (.venv-mlflow)", py_onnx)):
        if not path or not os.path.exists(path):
            raise SystemExit(f"{tool} missing: run benches/setup.sh, cargo build --release and "
                             "cargo bench --bench ceiling --no-run")

    work = tempfile.mkdtemp(prefix="vigil-hop-")
    iris_model = os.path.join(ROOT, "models", "iris", "1", "model.onnx")
    heavy_dir = os.path.join(work, "heavy-model")
    subprocess.run([py_onnx, os.path.join(ROOT, "benches", "models", "make_mlp.py"), heavy_dir], check=True)
    heavy_model = os.path.join(heavy_dir, "model.onnx")

    def repo(tag, name, model, config):
        d = os.path.join(work, tag, name)
        os.makedirs(os.path.join(d, "1"))
        shutil.copy(model, os.path.join(d, "1", "model.onnx"))
        with open(os.path.join(d, "config.toml"), "w") as f:
            f.write("[drift]\nenabled = false\n" + config)
        return os.path.dirname(d)

    iris_body, heavy_body = one_row_iris(), one_row_heavy()
    iris_path, heavy_path = "/v2/models/iris/infer", "/v2/models/heavy/infer"
    inline, pool = '[execution]\nmode = "inline"\n', '[execution]\nmode = "pool"\n'
    nobatch = "[batching]\nmax_batch_size = 1\n"
    specs = {
        "iris-tract-inline": ("tract", repo("ti", "iris", iris_model, inline), iris_path, iris_body),
        "iris-tract-pool": ("tract", repo("tp", "iris", iris_model, pool), iris_path, iris_body),
        "iris-tract-pool-nobatch": ("tract", repo("tn", "iris", iris_model, pool + nobatch), iris_path,
                                    iris_body),
        "iris-ort-inline": ("ort", repo("oi", "iris", iris_model, inline), iris_path, iris_body),
        "iris-ort-pool": ("ort", repo("op", "iris", iris_model, pool), iris_path, iris_body),
        "iris-ort-pool-nobatch": ("ort", repo("on", "iris", iris_model, pool + nobatch), iris_path, iris_body),
        "heavy-batch-on": ("tract", repo("hb", "heavy", heavy_model, ""), heavy_path, heavy_body),
        "heavy-batch-off": ("tract", repo("hn", "heavy", heavy_model, nobatch), heavy_path, heavy_body),
    }
    if not ort_lib:
        specs = {k: v for k, v in specs.items() if v[0] != "ort"}
    if only:
        specs = {k: v for k, v in specs.items() if k in only}

    def vigil_target(name, backend, repository, path, body):
        port = free_port()
        cmd = [args.vigil, "serve", "--repository", repository, "--http-addr", f"127.0.0.1:{port}",
               "--backend", backend, "--state-dir", os.path.join(work, "state-" + name),
               "--poll-interval", "0"]
        if backend == "ort":
            cmd += ["--ort-library", ort_lib]
        return Target(name, cmd, port, path, body, env={"VIGIL_LOG": "warn"})

    targets = {name: vigil_target(name, *spec) for name, spec in specs.items()}
    # What `auto` picks, on a server started without [execution] (not load-tested).
    auto_repo = os.path.join(work, "auto")
    os.makedirs(auto_repo)
    for name, model in (("iris", iris_model), ("heavy", heavy_model)):
        repo("auto", name, model, "")
    auto = vigil_target("auto", "tract", auto_repo, iris_path, iris_body)
    lua = os.path.join(work, "post.lua")
    with open(lua, "w") as f:
        f.write(LUA)
    loads = []
    try:
        answers = {name: t.wait_ready() for name, t in targets.items()}
        auto.wait_ready()
        auto_modes = {}
        for m in ("iris", "heavy"):
            st = auto.get(f"/v2/models/{m}/stats")["model_stats"][0].get("execution", {})
            auto_modes[m] = (st.get("mode", "?"), st.get("warmup_cpu_p90_us"))
        auto.stop()
        iris_answer = next((answers[n] for n in answers if n.startswith("iris")), None)
        if iris_answer is not None and (not only or "ceiling" in only):
            resp = os.path.join(work, "response.json")
            with open(resp, "w") as f:
                json.dump(iris_answer, f, separators=(",", ":"))
            port = free_port()
            targets["ceiling"] = Target("ceiling", [ceiling, f"127.0.0.1:{port}", resp], port, iris_path,
                                        iris_body)
            targets["ceiling"].wait_ready()
        time.sleep(1)
        idle_rss = {n: rss_anon_mb(t.proc.pid) for n, t in targets.items() if n != "ceiling"}
        for t in targets.values():  # warm-up
            wrk(t, args.connections, 2, lua)

        names = list(targets)
        rounds = []
        for r in range(args.rounds):
            loads.append(os.getloadavg()[0])
            order = names[r % len(names):] + names[:r % len(names)]
            res = {n: measure(targets[n], args.connections, args.seconds, lua) for n in order}
            rounds.append(res)
            print(f"round {r + 1}: " + ", ".join(f"{n} {res[n]['rps']:.0f}/s {res[n]['cpu_us']:.1f}µs"
                                                 for n in names), flush=True)
        single = {n: wrk(targets[n], 1, args.seconds, lua)[3] for n in names
                  if n == "ceiling" or n.startswith("iris")}
        modes = {}
        for n, t in targets.items():
            if n == "ceiling":
                continue
            m = "heavy" if n.startswith("heavy") else "iris"
            st = t.get(f"/v2/models/{m}/stats")["model_stats"][0].get("execution", {})
            modes[n] = st.get("mode", "?")
    finally:
        for t in targets.values():
            t.stop()
        auto.stop()

    def med(key, n):
        return statistics.median(r[n][key] for r in rounds)

    def ratio(f):
        return statistics.median(f(r) for r in rounds)

    lines = ["| target | mode | req/s | p50 µs | p99 µs | CPU µs/req | 1-conn p50 µs | idle RssAnon MB | errors |",
             "|---|---|---|---|---|---|---|---|---|"]
    for n in names:
        errs = sum(r[n]["errors"] for r in rounds)
        rss = f"{idle_rss[n]:.1f}" if n in idle_rss else ""
        lines.append(f"| {n} | {modes.get(n, '')} | {med('rps', n):.0f} | {med('p50', n):.0f} | "
                     f"{med('p99', n):.0f} | {med('cpu_us', n):.1f} | {single.get(n, '')} | {rss} | {errs} |")
    checks = []

    def check(label, value, target, ok):
        checks.append(f"| {label} | {value:.2f} | {target} | {'met' if ok else 'MISSED'} |")

    for eng in ("tract", "ort"):
        i, p = f"iris-{eng}-inline", f"iris-{eng}-pool"
        if i in names and p in names:
            x = ratio(lambda r: r[i]["cpu_us"] / r[p]["cpu_us"])
            checks.append(f"| {eng}: inline / pool CPU per request | {x:.2f} | < 1 | {'met' if x < 1 else 'MISSED'} |")
            x = ratio(lambda r: r[i]["rps"] / r[p]["rps"])
            checks.append(f"| {eng}: inline / pool req/s | {x:.2f} | > 1 | {'met' if x > 1 else 'MISSED'} |")
        if i in names and "ceiling" in names:
            x = ratio(lambda r: r[i]["rps"] / r["ceiling"]["rps"])
            check(f"{eng} inline / ceiling req/s", x, "≥ 0.70", x >= 0.70)
            x = med("cpu_us", i)
            check(f"{eng} inline CPU µs per request (FastAPI 139 µs / 8)", x, "≤ 17", x <= 17)
            d = single[i] - single["ceiling"]
            check(f"{eng} inline 1-connection p50 − ceiling p50 (µs)", d, "≤ 25", d <= 25)
    if "heavy-batch-on" in names and "heavy-batch-off" in names:
        x = ratio(lambda r: r["heavy-batch-on"]["rps"] / r["heavy-batch-off"]["rps"])
        check("heavy MLP batching on / off req/s", x, "≥ 2", x >= 2)

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    auto_line = "; ".join(f"{m}: {mode} (warm-up CPU p90 {p90} µs)" for m, (mode, p90) in auto_modes.items())
    header = (f"{time.strftime('%Y-%m-%d')}, commit {commit}, {platform.node()} ({os.cpu_count()} cores), "
              f"load average at each round {', '.join(f'{x:.1f}' for x in loads)}, "
              f"`python3 benches/hop.py --rounds {args.rounds} --seconds {args.seconds}"
              f"{' --only ' + args.only if args.only else ''}`, wrk -t2 -c{args.connections}, one-row JSON; "
              f"medians over {args.rounds} rounds. `auto` picks: {auto_line}")
    report = "\n".join([header, "", *lines, "", "| ratio | measured | target | |", "|---|---|---|---|", *checks])
    print(report)
    if args.record:
        with open(os.path.join(ROOT, "benches", "RESULTS.md"), "a") as f:
            f.write("\n## Worker hop and batching (issue #19)\n\n" + report + "\n")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
