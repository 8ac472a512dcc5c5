"""vigil against real peers, on this machine, with the same model, body and client.

    benches/setup.sh                  # wrk, the FastAPI peer, MLServer (once)
    cargo build --release && cargo bench --bench ceiling --no-run
    python3 benches/load.py [--rounds 3] [--seconds 10] [--record]

Targets, all started at once on loopback and measured in turns (the order rotates every
round, so slow drifts of the shared machine hit every target alike):

- vigil on tract and on ONNX Runtime, serving the sample repository;
- vigil (tract) with `[drift] enabled = false` on the same model (drift off vs on);
- FastAPI + uvicorn (2 workers, uvloop, httptools) + orjson + onnxruntime (the Python peer,
  benches/peers/fastapi_server.py);
- MLServer 1.7.1 with a custom onnxruntime runtime (benches/peers/mlserver/runtime.py,
  parallel_workers = 0);
- a bare hyper server answering vigil's response body (benches/ceiling.rs): the ceiling.

Each measurement is `wrk -t2 -c64` for `--seconds` on a one-row V2 JSON request to the
iris model (logistic regression, 4 features); CPU time per request is the utime + stime of
the target's whole process tree over the requests it served. The batching pair runs the
MLP (32 features, 2 hidden layers) with and without `[batching]`. One-connection latency
(`wrk -t1 -c1`) compares vigil's median with the ceiling's. Idle RSS is read before any
load. Medians of per-round ratios are printed (and, with --record, appended to
benches/RESULTS.md with the date, machine and command).
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


def one_row(ref, model):
    with open(os.path.join(ROOT, "tests", "data", "refs", ref + ".json")) as f:
        t = json.load(f)["inputs"][0]
    per_row = len(t["data"]) // t["shape"][0]
    return json.dumps({"inputs": [{"name": t["name"], "shape": [1] + t["shape"][1:],
                                   "datatype": t["datatype"], "data": t["data"][:per_row]}]}).encode()


def tree_cpu(pid):
    """utime + stime (seconds) of pid and all its descendants."""
    children, stats = {}, {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
        except OSError:
            continue
        rest = s[s.rindex(")") + 2:].split()
        ppid, ut, st = int(rest[1]), int(rest[11]), int(rest[12])
        children.setdefault(ppid, []).append(int(d))
        stats[int(d)] = ut + st
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += stats.get(p, 0)
        todo.extend(children.get(p, []))
    return total / TICK


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Target:
    def __init__(self, name, cmd, port, path, body, env=None, cwd=None):
        self.name, self.port, self.path, self.body = name, port, path, body
        self.log = tempfile.NamedTemporaryFile(prefix=f"bench-{name}-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, cwd=cwd,
                                     env={**os.environ, **(env or {})}, start_new_session=True)
        self.body_file = tempfile.NamedTemporaryFile(prefix="bench-body-", delete=False)
        self.body_file.write(body)
        self.body_file.close()

    def url(self):
        return f"http://127.0.0.1:{self.port}{self.path}"

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
    cpu0 = tree_cpu(target.proc.pid)
    n, dur, errors, p50, p99 = wrk(target, connections, seconds, lua)
    cpu = tree_cpu(target.proc.pid) - cpu0
    return {"rps": n / dur, "errors": errors, "p50": p50, "p99": p99,
            "cpu_us": cpu / max(n, 1) * 1e6, "n": n}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--record", action="store_true", help="append the results to benches/RESULTS.md")
    ap.add_argument("--skip", default="", help="comma-separated targets to leave out")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))

    vigil = os.path.join(ROOT, "target", "release", "vigil")
    ort_lib = next(iter(sorted(
        os.path.join(d, f) for d in [os.path.join(ROOT, ".venv/lib/python3.11/site-packages/onnxruntime/capi")]
        if os.path.isdir(d) for f in os.listdir(d) if f.startswith("libonnxruntime.so."))), None)
    ceiling = None
    for line in subprocess.run(["cargo", "bench", "--bench", "ceiling", "--no-run", "--message-format=json"],
                               cwd=ROOT, capture_output=True, text=True).stdout.splitlines():
        msg = json.loads(line)
        if msg.get("target", {}).get("name") == "ceiling" and msg.get("executable"):
            ceiling = msg["executable"]
    for tool, path in (("wrk", shutil.which("wrk")), ("vigil", vigil), ("ceiling", ceiling)):
        if not path or not os.path.exists(path):
            raise SystemExit(f"{tool} missing: run benches/setup.sh, cargo build --release and "
                             "cargo bench --bench ceiling --no-run")

    work = tempfile.mkdtemp(prefix="vigil-bench-")
    iris_model = os.path.join(ROOT, "models", "iris", "1", "model.onnx")
    # Copies with drift off / batching off.
    variants = {}
    for tag, model, config in (("driftoff", "iris", "[drift]\nenabled = false\n"),
                               ("batchoff", "mlp", "[batching]\nmax_batch_size = 1\n")):
        d = os.path.join(work, tag, model)
        shutil.copytree(os.path.join(ROOT, "models", model), d)
        with open(os.path.join(d, "config.toml"), "w") as f:
            f.write(config)
        variants[tag] = os.path.dirname(d)
    iris_body = one_row("iris_v1", "iris")
    mlp_body = one_row("mlp_v1", "mlp")

    def vigil_target(name, repo, backend, path, body):
        port = free_port()
        cmd = [vigil, "serve", "--repository", repo, "--http-addr", f"127.0.0.1:{port}",
               "--backend", backend, "--state-dir", os.path.join(work, "state-" + name),
               "--poll-interval", "0"]
        if backend == "ort":
            cmd += ["--ort-library", ort_lib]
        return Target(name, cmd, port, path, body, env={"VIGIL_LOG": "warn"})

    targets = {}
    models = os.path.join(ROOT, "models")
    iris_path, mlp_path = "/v2/models/iris/infer", "/v2/models/mlp/infer"
    targets["vigil-tract"] = vigil_target("vigil-tract", models, "tract", iris_path, iris_body)
    if ort_lib:
        targets["vigil-ort"] = vigil_target("vigil-ort", models, "ort", iris_path, iris_body)
    targets["vigil-driftoff"] = vigil_target("vigil-driftoff", variants["driftoff"], "tract", iris_path,
                                             iris_body)
    targets["mlp-batch-on"] = vigil_target("mlp-batch-on", models, "tract", mlp_path, mlp_body)
    targets["mlp-batch-off"] = vigil_target("mlp-batch-off", variants["batchoff"], "tract", mlp_path,
                                            mlp_body)
    if "fastapi" not in skip:
        port = free_port()
        targets["fastapi"] = Target(
            "fastapi", [os.path.join(ROOT, ".venv-bench/bin/uvicorn"), "fastapi_server:app", "--workers", "2",
                        "--loop", "uvloop", "--http", "httptools", "--host", "127.0.0.1", "--port", str(port),
                        "--log-level", "warning", "--no-access-log"],
            port, iris_path, iris_body, env={"PEER_MODEL_PATH": iris_model},
            cwd=os.path.join(ROOT, "benches", "peers"))
    if "mlserver" not in skip:
        port = free_port()
        mdir = os.path.join(work, "mlserver")
        os.makedirs(os.path.join(mdir, "iris"))
        shutil.copy(os.path.join(ROOT, "benches", "peers", "mlserver", "runtime.py"), os.path.join(mdir, "iris"))
        with open(os.path.join(mdir, "settings.json"), "w") as f:
            json.dump({"parallel_workers": 0, "http_port": port, "grpc_port": free_port(),
                       "metrics_port": free_port(), "host": "127.0.0.1", "debug": False}, f)
        with open(os.path.join(mdir, "iris", "model-settings.json"), "w") as f:
            json.dump({"name": "iris", "implementation": "runtime.OnnxRuntime",
                       "parameters": {"uri": iris_model, "version": "1"}}, f)
        targets["mlserver"] = Target("mlserver", [os.path.join(ROOT, ".venv-mlserver/bin/mlserver"), "start", mdir],
                                     port, iris_path, iris_body, cwd=os.path.join(mdir, "iris"))

    lua = os.path.join(work, "post.lua")
    with open(lua, "w") as f:
        f.write(LUA)
    try:
        answers = {name: t.wait_ready() for name, t in targets.items()}
        # The ceiling answers exactly what vigil answers.
        resp = os.path.join(work, "response.json")
        with open(resp, "w") as f:
            json.dump(answers["vigil-tract"], f, separators=(",", ":"))
        port = free_port()
        targets["ceiling"] = Target("ceiling", [ceiling, f"127.0.0.1:{port}", resp], port, iris_path, iris_body)
        targets["ceiling"].wait_ready()
        time.sleep(1)
        idle_rss = {n: rss_mb(targets[n].proc.pid) for n in ("vigil-tract", "vigil-ort") if n in targets}
        model_mb = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(models)
                       for f in fs if f == "model.onnx") / 2**20
        for t in targets.values():  # warm-up
            wrk(t, args.connections, 2, lua)

        names = list(targets)
        rounds = []
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            res = {n: measure(targets[n], args.connections, args.seconds, lua) for n in order}
            rounds.append(res)
            print(f"round {r + 1}: " + ", ".join(f"{n} {res[n]['rps']:.0f}/s" for n in names), flush=True)
        single = {n: wrk(targets[n], 1, args.seconds, lua)[3] for n in ("ceiling", "vigil-tract", "vigil-ort")
                  if n in targets}
    finally:
        for t in targets.values():
            t.stop()

    def med(key, n):
        return statistics.median(r[n][key] for r in rounds)

    def ratio(f):
        return statistics.median(f(r) for r in rounds)

    lines = []
    lines.append(f"| target | req/s | p50 µs | p99 µs | CPU µs/req | errors |")
    lines.append("|---|---|---|---|---|---|")
    for n in names:
        errs = sum(r[n]["errors"] for r in rounds)
        lines.append(f"| {n} | {med('rps', n):.0f} | {med('p50', n):.0f} | {med('p99', n):.0f} | "
                     f"{med('cpu_us', n):.1f} | {errs} |")
    checks = []

    def check(label, value, target, ok):
        checks.append(f"| {label} | {value:.2f} | {target} | {'met' if ok else 'MISSED'} |")

    v = "vigil-tract"
    check("vigil (tract) / ceiling req/s", ratio(lambda r: r[v]["rps"] / r["ceiling"]["rps"]), "≥ 0.70",
          ratio(lambda r: r[v]["rps"] / r["ceiling"]["rps"]) >= 0.70)
    if "vigil-ort" in names:
        x = ratio(lambda r: r["vigil-ort"]["rps"] / r["ceiling"]["rps"])
        check("vigil (ort) / ceiling req/s", x, "≥ 0.70", x >= 0.70)
    if "fastapi" in names:
        x = ratio(lambda r: r[v]["rps"] / r["fastapi"]["rps"])
        check("vigil / FastAPI req/s", x, "≥ 6", x >= 6)
        x = ratio(lambda r: r[v]["cpu_us"] / r["fastapi"]["cpu_us"])
        check("vigil / FastAPI CPU per request", x, "≤ 0.125", x <= 0.125)
    if "mlserver" in names:
        x = ratio(lambda r: r[v]["rps"] / r["mlserver"]["rps"])
        check("vigil / MLServer req/s", x, "≥ 12", x >= 12)
    x = ratio(lambda r: r["mlp-batch-on"]["rps"] / r["mlp-batch-off"]["rps"])
    check("MLP batching on / off req/s", x, "≥ 2", x >= 2)
    x = ratio(lambda r: r[v]["cpu_us"] / r["vigil-driftoff"]["cpu_us"])
    check("drift on / off CPU per request", x, "≤ 1.05", x <= 1.05)
    x = ratio(lambda r: r[v]["rps"] / r["vigil-driftoff"]["rps"])
    check("drift on / off req/s", x, "≥ 0.95", x >= 0.95)
    for n in ("vigil-tract", "vigil-ort"):
        if n in single:
            d = single[n] - single["ceiling"]
            check(f"{n} 1-connection p50 − ceiling p50 (µs)", d, "≤ 25", d <= 25)
    for n, mb in idle_rss.items():
        check(f"{n} idle RSS MB (limit 40 + {model_mb:.1f} model MB)", mb, f"≤ {40 + model_mb:.1f}",
              mb <= 40 + model_mb)

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    header = (f"{time.strftime('%Y-%m-%d')}, commit {commit}, {platform.node()} ({os.cpu_count()} cores), "
              f"`python3 benches/load.py --rounds {args.rounds} --seconds {args.seconds}`, "
              f"wrk -t2 -c{args.connections}, one-row JSON; medians over {args.rounds} rounds; "
              f"1-connection p50: " + ", ".join(f"{n} {us} µs" for n, us in single.items()))
    report = "\n".join([header, "", *lines, "", "| ratio | measured | target | |", "|---|---|---|---|", *checks])
    print(report)
    if args.record:
        with open(os.path.join(ROOT, "benches", "RESULTS.md"), "a") as f:
            f.write("\n## Load against peers (issue #11)\n\n" + report + "\n")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
