"""Proves the dashboards and alert rules against a real Prometheus scraping a real vigil.

Run by tests/observability.sh (part of scripts/test.sh). Steps:
1. a temporary repository: iris v1 (stable, with its drift reference), iris v3 = a model
   with another signature as a failing canary (30 % split), iris v4 a corrupt file;
   drift settings that trip; a retrain webhook receiver that answers 503;
2. vigil (target/release/vigil) and Prometheus (Debian's, 1 s scrape and rule interval),
   each on 127.0.0.1:0, the port it bound read from its log;
3. traffic once Prometheus scrapes: normal and drifted requests, a failing request, an
   explicit load that retries the corrupt version;
4. checks: promtool check rules / check metrics / test rules; every panel expression and
   every alert expression (template variables substituted) returns at least one series
   through Prometheus's HTTP API, except the alerts covered by promtool unit tests; the
   template variable queries return values; the drift alert fires.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VIGIL = os.path.join(ROOT, "target", "release", "vigil")
GRAFANA = os.path.join(ROOT, "grafana")
# Alerts that cannot be provoked live on demand; grafana/prometheus/vigil-alerts.test.yml covers them.
UNIT_TESTED = {"VigilHighLatencyP99", "VigilScrapeDown", "VigilTaskPanicked", "VigilCanaryRolledBack"}


def reported_port(proc, marker, timeout=60):
    """The port a process started on 127.0.0.1:0 reports in its log: the HOST:PORT after
    `marker` (vigil: "listening on http://ADDR"; Prometheus: 'msg="Listening on"
    address=ADDR'). The rest of its log is drained in the background so that it never
    blocks."""
    found = []
    ready = threading.Event()

    def read():
        for line in proc.stderr:
            if not found and marker in line:
                addr = line.split(marker, 1)[1].split()[0].strip('"')
                port = int(addr.rsplit(":", 1)[1])
                if port:
                    found.append(port)
                    ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(timeout) or not found:
        raise SystemExit(f"{proc.args[0]} did not report its address ('{marker}')")
    return found[0]


def http(method, url, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait(what, cond, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        try:
            v = cond()
            if v:
                return v
        except (OSError, ValueError):
            # Not up yet: refused, or Prometheus's plain-text 503 while it starts.
            pass
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


class Hook(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(503)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def main():
    tmp = tempfile.mkdtemp(prefix="vigil-obs-")
    procs = []
    try:
        repo = os.path.join(tmp, "models")
        for v, src in ((1, "iris/1"), (3, "mlp/1")):
            os.makedirs(os.path.join(repo, "iris", str(v)))
            shutil.copy(os.path.join(ROOT, "models", src, "model.onnx"), os.path.join(repo, "iris", str(v)))
        shutil.copy(os.path.join(ROOT, "models/iris/1/reference.json"), os.path.join(repo, "iris/1"))
        os.makedirs(os.path.join(repo, "iris", "4"))
        with open(os.path.join(repo, "iris/4/model.onnx"), "wb") as f:
            f.write(b"not a model")
        hook = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
        threading.Thread(target=hook.serve_forever, daemon=True).start()
        with open(os.path.join(repo, "iris/config.toml"), "w") as f:
            f.write(f"""[version_policy]
specific = [1, 3, 4]
[rollout]
stable = 1
canary = 3
weight = 30
[rollout.analysis]
# Judged only after an hour: the live proof sees the judge's series with the canary in place.
steps = [30, 100]
interval = "1h"
max_wait = "2h"
min_requests = 1
[logging]
feedback_window = "10m"
[drift]
window_rows = 200
drift_share = 0.25
[retrain]
url = "http://127.0.0.1:{hook.server_port}/hook"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
max_attempts = 3
""")
        vigil = subprocess.Popen(
            [VIGIL, "serve", "--repository", repo, "--http-addr", "127.0.0.1:0", "--backend", "tract",
             "--poll-interval", "0", "--state-dir", os.path.join(tmp, "state")],
            stderr=subprocess.PIPE, text=True, env={**os.environ, "VIGIL_LOG": "info"})
        procs.append(vigil)
        vport = reported_port(vigil, "listening on http://")
        base = f"http://127.0.0.1:{vport}"
        wait("vigil ready", lambda: http("GET", base + "/v2/health/ready")[0] == 200)

        prom_dir = os.path.join(tmp, "prom")
        os.makedirs(prom_dir)
        shutil.copy(os.path.join(GRAFANA, "prometheus", "vigil-alerts.yml"), prom_dir)
        shutil.copy(os.path.join(GRAFANA, "prometheus", "vigil-fleet-rules.yml"), prom_dir)
        with open(os.path.join(prom_dir, "prometheus.yml"), "w") as f:
            yaml.safe_dump({
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": ["vigil-alerts.yml", "vigil-fleet-rules.yml"],
                "scrape_configs": [{"job_name": "vigil", "static_configs": [{"targets": [f"127.0.0.1:{vport}"]}]}],
            }, f)
        prom = subprocess.Popen(
            ["prometheus", f"--config.file={prom_dir}/prometheus.yml", f"--storage.tsdb.path={prom_dir}/data",
             "--web.listen-address=127.0.0.1:0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        procs.append(prom)
        pport = reported_port(prom, 'msg="Listening on" address=')
        papi = f"http://127.0.0.1:{pport}/api/v1"

        def query(expr):
            status, body = http("GET", papi + "/query?" + urllib.parse.urlencode({"query": expr}))
            doc = json.loads(body)
            if status != 200 or doc.get("status") != "success":
                raise SystemExit(f"query failed ({status}): {expr}\n{doc}")
            return doc["data"]["result"]

        wait("the first scrape", lambda: any(r["value"][1] == "1" for r in query('up{job="vigil"}')))

        # Traffic over several scrapes.
        train = np.load(os.path.join(ROOT, "models/iris/1/train.npy")).astype(float)
        rng = np.random.default_rng(0)
        def infer(rows):
            body = {"inputs": [{"name": "X", "shape": list(rows.shape), "datatype": "FP32", "data": rows.reshape(-1).tolist()}]}
            return http("POST", base + "/v2/models/iris/infer", body)[0]
        statuses = []
        for second in range(8):
            # Two seconds of training-like rows, then drifted ones (every feature +1.5).
            shift = 1.5 if second >= 2 else 0.0
            end = time.time() + 1
            while time.time() < end:
                statuses.append(infer(train[rng.integers(0, 150, 20)] + shift))
        # Labels for some requests the stable version answered: live and expected quality.
        labelled = []
        for i in range(40):
            body = {"id": f"obs-{i}", "inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32",
                                                  "data": train[i % 150].tolist()}]}
            status, out = http("POST", base + "/v2/models/iris/versions/1/infer", body)
            assert status == 200, out
            label = next(o for o in json.loads(out)["outputs"] if o["name"] == "label")["data"][0]
            labelled.append({"id": f"obs-{i}", "outputs": [{"name": "label", "data": [label]}]})
        status, out = http("POST", base + "/v2/models/iris/feedback", labelled[:30])
        assert status == 200 and json.loads(out)["joined"] == 30, out
        bad = {"inputs": [{"name": "X", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
        assert http("POST", base + "/v2/models/iris/versions/1/infer", bad)[0] == 400
        assert 200 in statuses and 400 in statuses, "the canary split answered both ways"
        # An explicit load retries the corrupt version: one more load failure.
        assert http("POST", base + "/v2/repository/models/iris/load", {})[0] in (200, 400)
        # Prometheus has scraped everything above once it sees vigil's current count of
        # load failures.
        failures = next(float(l.rsplit(" ", 1)[1]) for l in http("GET", base + "/metrics")[1].decode().splitlines()
                        if l.startswith('vigil_model_load_total{model="iris",outcome="failure"}'))
        wait("Prometheus to scrape the last traffic",
             lambda: any(float(r["value"][1]) == failures
                         for r in query('vigil_model_load_total{model="iris",outcome="failure"}')))

        # promtool on the rules, their unit tests, and the live metrics.
        subprocess.run(["promtool", "check", "rules", os.path.join(GRAFANA, "prometheus", "vigil-alerts.yml"),
                        os.path.join(GRAFANA, "prometheus", "vigil-fleet-rules.yml")], check=True)
        subprocess.run(["promtool", "test", "rules", os.path.join(GRAFANA, "prometheus", "vigil-alerts.test.yml")], check=True)
        metrics = http("GET", base + "/metrics")[1]
        subprocess.run(["promtool", "check", "metrics"], input=metrics, check=True)

        subst = {"$__rate_interval": "1m", "$__range": "5m", "${datasource}": "", "$model": ".*", "$version": ".*"}
        def fill(expr):
            for k, v in subst.items():
                expr = expr.replace(k, v)
            return expr

        checked = 0
        for name in ("vigil-overview.json", "vigil-drift.json"):
            with open(os.path.join(GRAFANA, "dashboards", name)) as f:
                dash = json.load(f)
            assert dash["schemaVersion"] >= 39
            names = [v["name"] for v in dash["templating"]["list"]]
            assert names[:2] == ["datasource", "model"], names
            for var in dash["templating"]["list"][1:]:
                q = fill(var["query"]["query"])
                metric_sel, label = q[len("label_values("):-1].rsplit(",", 1)
                status, body = http("GET", f"{papi}/label/{label.strip()}/values?" + urllib.parse.urlencode({"match[]": metric_sel}))
                assert json.loads(body)["data"], f"{name}: variable {var['name']} has no values"
            for panel in dash["panels"]:
                assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
                for t in panel["targets"]:
                    result = query(fill(t["expr"]))
                    if not result:
                        raise SystemExit(f"{name}: panel '{panel['title']}' returns no series:\n{t['expr']}")
                    checked += 1
        with open(os.path.join(GRAFANA, "prometheus", "vigil-alerts.yml")) as f:
            rules = [r for g in yaml.safe_load(f)["groups"] for r in g["rules"]]
        with open(os.path.join(GRAFANA, "prometheus", "vigil-alerts.test.yml")) as f:
            unit = {t["alertname"] for case in yaml.safe_load(f)["tests"] for t in case["alert_rule_test"]}
        for r in rules:
            if r["alert"] in UNIT_TESTED:
                assert r["alert"] in unit, f"{r['alert']} has no promtool unit test"
                continue
            if not query(r["expr"]):
                raise SystemExit(f"alert {r['alert']} returns no series:\n{r['expr']}")
            checked += 1

        def drift_firing():
            status, body = http("GET", papi + "/alerts")
            return any(a["labels"]["alertname"] == "VigilModelDrifting" and a["state"] == "firing"
                       for a in json.loads(body)["data"]["alerts"])
        wait("the drift alert to fire", drift_firing, timeout=90)
        print(f"observability: {checked} panel and alert expressions return data; the drift alert fires")
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
