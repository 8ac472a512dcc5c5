"""vigil against real peers and a bare hyper ceiling, on this machine, in one run.

    benches/setup.sh                                   # wrk, the peers' venvs (once; idempotent)
    cargo build --release && cargo bench --bench ceiling --no-run
    python3 benches/load.py [--rounds 3] [--seconds 10] [--record]

Every target serves the same request with defaults unless named otherwise; the models are
built by benches/models.py (seeded) into a temporary directory, and each gets a reference
profile from `vigil profile`, so drift monitoring runs with its defaults:

- ceiling: benches/ceiling.rs, tokio multi-thread + hyper 1 answering vigil's own response
  body (built by `cargo bench --no-run`: the release profile);
- vigil-ort, vigil-tract: `vigil serve` on the 6-feature linear model (issue #19), drift on;
- vigil-ort-driftoff: the same with `[drift] enabled = false` (drift on/off pair);
- fastapi: FastAPI + uvicorn (2 workers, uvloop, httptools) + orjson + onnxruntime
  (benches/peers/fastapi_server.py); mlserver: MLServer 1.7.1, custom onnxruntime runtime;
- mlp-batch-on, mlp-batch-off: vigil (ONNX Runtime) on a 64->1024->1024->16 MLP, default
  batching and `[batching] max_batch_size = 1`.

How everything is measured the same way (see benches/RESULTS.md, issue #19, for why):
- every target and wrk run in the harness's own session. With sched_autogroup (on here,
  /proc/sys/kernel/sched_autogroup_enabled) each session is one scheduling group: a
  target in a session of its own, apart from wrk, pays a cross-group wake-up on every
  request/response on a busy machine, and a server doing almost nothing per request (the
  ceiling) is starved most: it read half of what the same binary reads beside wrk;
- `wrk -t2 -cN` with a Lua script that only sets method, body and headers once and prints
  a summary in `done` (no per-request Lua);
- rounds interleaved, order shuffled per round (seeded), medians of per-round ratios;
- CPU per request: utime+stime of the target's whole process tree over the requests it
  served; "cores" is that CPU over the wall time (a starved target shows it), and wrk's own
  CPU is reported beside it;
- idle CPU of every target is measured before load (idle peers must cost nothing);
- 1-connection p50 of vigil beside the ceiling's, in every round;
- RssAnon (/proc/PID/status) of each vigil target before load and again after all load.
The load average is printed with every round; on this shared 2-core machine req/s swing
with other people's builds while CPU µs per request stays put: prefer it.
"""

import argparse
import glob
import json
import os
import platform
import random
import re
import resource
import shlex
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
  io.write(string.format("RESULT %d %d %d %d %d %d\\n", summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_table():
    children, cpu = {}, {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
        except OSError:
            continue
        rest = s[s.rindex(")") + 2:].split()
        children.setdefault(int(rest[1]), []).append(int(d))
        cpu[int(d)] = int(rest[11]) + int(rest[12])
    return children, cpu


def tree_cpu(pid):
    """utime + stime (seconds) of pid and all its descendants."""
    children, cpu = proc_table()
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += cpu.get(p, 0)
        todo.extend(children.get(p, []))
    return total / TICK


def rss_anon_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def ort_library():
    """The ONNX Runtime the peers run (benches/setup.sh), else the test suite's .venv."""
    for venv in (".venv-bench", ".venv"):
        libs = sorted(glob.glob(os.path.join(ROOT, venv, "lib/python3*/site-packages/onnxruntime/"
                                             "capi/libonnxruntime.so.*")))
        if libs:
            return libs[-1]
    return None


def loadavg():
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


class Target:
    own_sessions = False  # --own-sessions: how load.py started targets before issue #19

    def __init__(self, name, cmd, port, path, body_file, env=None, cwd=None, models_mb=None):
        self.name, self.port, self.path, self.body_file = name, port, path, body_file
        self.models_mb = models_mb
        with open(body_file, "rb") as f:
            self.body = f.read()
        self.log = tempfile.NamedTemporaryFile(prefix=f"bench-{name}-", suffix=".log", delete=False)
        # A process group of its own (so stop() reaches uvicorn's and MLServer's workers),
        # but the harness's session: the same scheduling group as wrk (see the module doc).
        session = {"start_new_session": True} if Target.own_sessions else {"process_group": 0}
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, cwd=cwd,
                                     env={**os.environ, **(env or {})}, **session)

    def url(self):
        return f"http://127.0.0.1:{self.port}{self.path}"

    def wait_ready(self, timeout=180):
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
    """One wrk run; returns its figures and wrk's own CPU seconds."""
    threads = min(2, connections)
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "-s", lua,
                          target.url()], capture_output=True, text=True,
                         env={**os.environ, "VIGIL_BENCH_BODY": target.body_file})
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    m = re.search(r"RESULT (\d+) (\d+) (\d+) (\d+) (\d+) (\d+)", out.stdout)
    if not m:
        raise SystemExit(f"wrk failed on {target.name}:\n{out.stdout}\n{out.stderr}")
    n, dur_us, errors, non2xx, p50, p99 = map(int, m.groups())
    wrk_cpu = ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime
    return {"n": n, "dur": dur_us / 1e6, "errors": errors, "non2xx": non2xx, "p50": p50, "p99": p99,
            "wrk_cpu": wrk_cpu}


def measure(target, connections, seconds, lua):
    cpu0 = tree_cpu(target.proc.pid)
    r = wrk(target, connections, seconds, lua)
    cpu = tree_cpu(target.proc.pid) - cpu0
    n = max(r["n"], 1)
    return {**r, "rps": r["n"] / r["dur"], "cpu_us": cpu / n * 1e6, "cores": cpu / r["dur"],
            "wrk_us": r["wrk_cpu"] / n * 1e6}


def first_output(answer):
    return [float(v) for v in answer["outputs"][0]["data"]]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10, help="each 64-connection measurement")
    ap.add_argument("--single-seconds", type=int, default=5, help="each 1-connection measurement")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--vigil", default=os.path.join(ROOT, "target", "release", "vigil"))
    ap.add_argument("--ceiling", help="the ceiling binary (default: found by cargo bench --no-run)")
    ap.add_argument("--only", default="", help="comma-separated targets to run (default: all)")
    ap.add_argument("--own-sessions", action="store_true",
                    help="start each target in a session of its own, apart from wrk, as load.py did "
                         "before issue #19 (to reproduce the under-read ceiling)")
    ap.add_argument("--record", action="store_true", help="append the results to benches/RESULTS.md")
    args = ap.parse_args()
    Target.own_sessions = args.own_sessions
    # SIGTERM or SIGINT stop the targets too (the finally below), even from a background job.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(1))
    command = "python3 benches/load.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    load_start = loadavg()

    ort_lib = ort_library()
    ceiling = args.ceiling
    if not ceiling:
        for line in subprocess.run(["cargo", "bench", "--bench", "ceiling", "--no-run",
                                    "--message-format=json"],
                                   cwd=ROOT, capture_output=True, text=True).stdout.splitlines():
            msg = json.loads(line)
            if msg.get("target", {}).get("name") == "ceiling" and msg.get("executable"):
                ceiling = msg["executable"]
    bench_py = os.path.join(ROOT, ".venv-bench", "bin", "python")
    for tool, path in (("wrk", shutil.which("wrk")), ("vigil", args.vigil), ("ceiling", ceiling),
                       (".venv-bench", bench_py), ("libonnxruntime (.venv)", ort_lib)):
        if not path or not os.path.exists(path):
            raise SystemExit(f"{tool} missing: run benches/setup.sh, cargo build --release and "
                             "cargo bench --bench ceiling --no-run")

    work = tempfile.mkdtemp(prefix="vigil-bench-")
    built = os.path.join(work, "built")
    subprocess.run([bench_py, os.path.join(ROOT, "benches", "models.py"), built], check=True)
    for m in ("linear6", "heavy_mlp"):
        d = os.path.join(built, m, "1")
        subprocess.run([args.vigil, "profile", "--data", os.path.join(d, "train.npy"), "--model", d,
                        "--out", os.path.join(d, "reference.json")], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def repo(name, model, config=None):
        """A repository of its own for one target: the model, its profile, its config."""
        d = os.path.join(work, "repos", name, model)
        os.makedirs(os.path.join(d, "1"))
        for f in ("model.onnx", "reference.json"):
            shutil.copy(os.path.join(built, model, "1", f), os.path.join(d, "1", f))
        if config:
            with open(os.path.join(d, "config.toml"), "w") as f:
                f.write(config)
        return os.path.dirname(d), os.path.getsize(os.path.join(d, "1", "model.onnx")) / 2**20

    only = set(filter(None, args.only.split(",")))
    targets = {}

    def add(name, make):
        if not only or name in only:
            targets[name] = make()

    def vigil_target(name, model, backend, config=None):
        r, mb = repo(name, model, config)
        port = free_port()
        cmd = [args.vigil, "serve", "--repository", r, "--http-addr", f"127.0.0.1:{port}",
               "--backend", backend, "--state-dir", os.path.join(work, "state-" + name)]
        if backend == "ort":
            cmd += ["--ort-library", ort_lib]
        return Target(name, cmd, port, f"/v2/models/{model}/infer",
                      os.path.join(built, model, "request.json"), env={"VIGIL_LOG": "warn"},
                      models_mb=mb)

    linear = os.path.join(built, "linear6", "1", "model.onnx")
    linear_body = os.path.join(built, "linear6", "request.json")
    add("vigil-ort", lambda: vigil_target("vigil-ort", "linear6", "ort"))
    add("vigil-tract", lambda: vigil_target("vigil-tract", "linear6", "tract"))
    add("vigil-ort-driftoff", lambda: vigil_target("vigil-ort-driftoff", "linear6", "ort",
                                                    "[drift]\nenabled = false\n"))
    add("mlp-batch-on", lambda: vigil_target("mlp-batch-on", "heavy_mlp", "ort"))
    add("mlp-batch-off", lambda: vigil_target("mlp-batch-off", "heavy_mlp", "ort",
                                              "[batching]\nmax_batch_size = 1\n"))

    def fastapi():
        port = free_port()
        return Target("fastapi", [os.path.join(ROOT, ".venv-bench/bin/uvicorn"), "fastapi_server:app",
                                  "--workers", "2", "--loop", "uvloop", "--http", "httptools",
                                  "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
                                  "--no-access-log"],
                      port, "/v2/models/linear6/infer", linear_body, env={"PEER_MODEL_PATH": linear},
                      cwd=os.path.join(ROOT, "benches", "peers"))

    def mlserver():
        port = free_port()
        mdir = os.path.join(work, "mlserver")
        os.makedirs(os.path.join(mdir, "linear6"))
        shutil.copy(os.path.join(ROOT, "benches", "peers", "mlserver", "runtime.py"),
                    os.path.join(mdir, "linear6"))
        with open(os.path.join(mdir, "settings.json"), "w") as f:
            json.dump({"parallel_workers": 0, "http_port": port, "grpc_port": free_port(),
                       "metrics_port": free_port(), "host": "127.0.0.1", "debug": False}, f)
        with open(os.path.join(mdir, "linear6", "model-settings.json"), "w") as f:
            json.dump({"name": "linear6", "implementation": "runtime.OnnxRuntime",
                       "parameters": {"uri": linear, "version": "1"}}, f)
        return Target("mlserver", [os.path.join(ROOT, ".venv-mlserver/bin/mlserver"), "start", mdir],
                      port, "/v2/models/linear6/infer", linear_body, cwd=os.path.join(mdir, "linear6"))

    if os.path.exists(os.path.join(ROOT, ".venv-bench/bin/uvicorn")):
        add("fastapi", fastapi)
    if os.path.exists(os.path.join(ROOT, ".venv-mlserver/bin/mlserver")):
        add("mlserver", mlserver)

    lua = os.path.join(work, "post.lua")
    with open(lua, "w") as f:
        f.write(LUA)
    try:
        answers = {name: t.wait_ready() for name, t in targets.items()}
        # Same model, same row: every linear6 target must give the same score.
        linear_answers = {n: first_output(a) for n, a in answers.items() if a["model_name"] == "linear6"}
        ref = next(iter(linear_answers.values()), [])
        if any(len(v) != len(ref) or any(abs(a - b) > 1e-4 * max(1, abs(b)) for a, b in zip(v, ref))
               for v in linear_answers.values()):
            raise SystemExit(f"targets disagree on the same request: {linear_answers}")
        # The ceiling answers exactly what vigil answers.
        resp = os.path.join(work, "response.json")
        with open(resp, "w") as f:
            json.dump(answers.get("vigil-ort") or next(iter(answers.values()), {}), f,
                      separators=(",", ":"))
        if not only or "ceiling" in only:
            port = free_port()
            targets["ceiling"] = Target("ceiling", [ceiling, f"127.0.0.1:{port}", resp], port,
                                        "/v2/models/linear6/infer", linear_body)
            targets["ceiling"].wait_ready()
        time.sleep(1)
        vigils = [n for n in targets if targets[n].models_mb is not None]
        rss_idle = {n: rss_anon_mb(targets[n].proc.pid) for n in vigils}
        cpu0 = {n: tree_cpu(t.proc.pid) for n, t in targets.items()}
        t0 = time.time()
        time.sleep(5)
        idle_cpu = {n: (tree_cpu(t.proc.pid) - cpu0[n]) / (time.time() - t0) for n, t in targets.items()}
        print("idle CPU (% of a core over 5 s): " +
              ", ".join(f"{n} {c * 100:.1f}" for n, c in idle_cpu.items()), flush=True)
        for t in targets.values():  # warm-up
            wrk(t, args.connections, 2, lua)

        names = list(targets)
        single_names = [n for n in ("ceiling", "vigil-ort", "vigil-tract") if n in targets]
        rounds, singles, round_loads = [], [], []
        for r in range(args.rounds):
            order = names[:]
            random.Random(r).shuffle(order)
            res = {n: measure(targets[n], args.connections, args.seconds, lua) for n in order}
            s_order = single_names[:]
            random.Random(r).shuffle(s_order)
            single = {n: wrk(targets[n], 1, args.single_seconds, lua)["p50"] for n in s_order}
            rounds.append(res)
            singles.append(single)
            round_loads.append(loadavg())
            print(f"round {r + 1} (load {round_loads[-1]}): " +
                  ", ".join(f"{n} {res[n]['rps']:.0f}/s {res[n]['cpu_us']:.1f}µs" for n in names) +
                  "; 1-conn p50 " + ", ".join(f"{n} {us}µs" for n, us in single.items()), flush=True)
        time.sleep(2)
        rss_after = {n: rss_anon_mb(targets[n].proc.pid) for n in vigils}
    finally:
        for t in targets.values():
            t.stop()

    def med(key, n):
        return statistics.median(r[n][key] for r in rounds)

    def ratio(f):
        return statistics.median(f(r) for r in rounds)

    lines = ["| target | req/s | CPU µs/req | cores | wrk µs/req | p50 µs | p99 µs | errors | non-2xx |",
             "|---|---|---|---|---|---|---|---|---|"]
    for n in names:
        lines.append(f"| {n} | {med('rps', n):.0f} | {med('cpu_us', n):.1f} | {med('cores', n):.2f} | "
                     f"{med('wrk_us', n):.1f} | {med('p50', n):.0f} | {med('p99', n):.0f} | "
                     f"{sum(r[n]['errors'] for r in rounds)} | {sum(r[n]['non2xx'] for r in rounds)} |")
    checks = []

    def check(label, value, target, ok, fmt="{:.2f}"):
        checks.append(f"| {label} | {fmt.format(value)} | {target} | {'met' if ok else 'MISSED'} |")

    def both(a, b):
        return a in names and b in names

    for v in ("vigil-ort", "vigil-tract"):
        if both(v, "ceiling"):
            x = ratio(lambda r: r[v]["rps"] / r["ceiling"]["rps"])
            check(f"{v} / ceiling req/s", x, "≥ 0.70", x >= 0.70)
        if both(v, "fastapi"):
            x = ratio(lambda r: r[v]["rps"] / r["fastapi"]["rps"])
            check(f"{v} / FastAPI req/s", x, "≥ 6", x >= 6)
            x = ratio(lambda r: r[v]["cpu_us"] / r["fastapi"]["cpu_us"])
            check(f"{v} / FastAPI CPU per request", x, "≤ 0.125", x <= 0.125, "{:.3f}")
        if both(v, "mlserver"):
            x = ratio(lambda r: r[v]["rps"] / r["mlserver"]["rps"])
            check(f"{v} / MLServer req/s", x, "≥ 12", x >= 12)
    if both("vigil-ort", "vigil-ort-driftoff"):
        x = ratio(lambda r: r["vigil-ort"]["cpu_us"] / r["vigil-ort-driftoff"]["cpu_us"])
        check("drift on / off CPU per request (ort)", x, "≤ 1.05", x <= 1.05)
        x = ratio(lambda r: r["vigil-ort"]["rps"] / r["vigil-ort-driftoff"]["rps"])
        check("drift on / off req/s (ort)", x, "≥ 0.95", x >= 0.95)
    if both("mlp-batch-on", "mlp-batch-off"):
        x = ratio(lambda r: r["mlp-batch-on"]["rps"] / r["mlp-batch-off"]["rps"])
        check("heavy MLP batching on / off req/s", x, "≥ 2", x >= 2)
    for v in ("vigil-ort", "vigil-tract"):
        if v in single_names and "ceiling" in single_names:
            d = statistics.median(s[v] - s["ceiling"] for s in singles)
            check(f"{v} 1-connection p50 − ceiling's (µs)", d, "≤ 25", d <= 25, "{:.0f}")
    for n in vigils:
        limit = 40 + targets[n].models_mb
        for when, mb in (("idle", rss_idle[n]), ("after load", rss_after[n])):
            check(f"{n} RssAnon {when} (MB)", mb, f"≤ {limit:.1f}", mb <= limit, "{:.1f}")

    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    single_med = {n: statistics.median(s[n] for s in singles) for n in single_names}
    header = [
        f"{time.strftime('%Y-%m-%d %H:%M')}, commit {commit}, {platform.node()} "
        f"({os.cpu_count()} cores), `{command}`",
        f"(vigil: {args.vigil}; wrk -t2 -c{args.connections} × {args.seconds} s per target per round, "
        f"1 connection × {args.single_seconds} s; medians over {args.rounds} rounds).",
        f"Load average (1/5/15 min) at start {load_start}, after each round "
        + ", ".join(round_loads) + ".",
        "Idle CPU before load (% of a core): "
        + ", ".join(f"{n} {c * 100:.1f}" for n, c in idle_cpu.items()) + ".",
        "1-connection p50: " + ", ".join(f"{n} {us:.0f} µs" for n, us in single_med.items()) + ".",
    ]
    if max(float(x.split("/")[0]) for x in [load_start, *round_loads]) > os.cpu_count():
        header.append("**Busy machine** (1-min load above the core count): other processes took most "
                      "of the CPU (see the cores column), req/s, their ratios and latencies are "
                      "distorted; CPU µs per request is the figure to compare.")
    report = "\n".join([*header, "", *lines, "", "| ratio (median of per-round ratios) | measured | target | |",
                        "|---|---|---|---|", *checks])
    print(report)
    if args.record:
        # Newest first: the section goes before the first recorded one.
        path = os.path.join(ROOT, "benches", "RESULTS.md")
        with open(path) as f:
            text = f.read()
        at = text.find("\n## ") + 1 or len(text)
        section = f"## Load against peers and the ceiling (benches/load.py, issue #19)\n\n{report}\n\n"
        with open(path, "w") as f:
            f.write(text[:at] + section + text[at:])
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
