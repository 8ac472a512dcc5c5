"""Writes tests/data/oracle/stats.json: random inputs and what scipy 1.17 computes for them
(ks_2samp, wasserstein_distance, chisquare, jensenshannon, PSI, quantiles). The Rust
tests compare vigil's statistics with these: 1e-9 on statistics, 1e-6 on p-values.

    .venv/bin/python tests/python/make_stat_oracles.py
"""

import json
import os

import numpy as np
import scipy
from scipy import stats
from scipy.spatial.distance import jensenshannon

rng = np.random.default_rng(2026)
out = {"scipy": scipy.__version__, "ks": [], "wasserstein": [], "chisquare": [], "js": [], "psi": [],
       "quantile": []}


def sample(n, kind):
    if kind == "normal":
        return rng.normal(0, 1, n)
    if kind == "shifted":
        return rng.normal(rng.uniform(-1, 1), rng.uniform(0.5, 2), n)
    if kind == "ties":
        return rng.integers(0, 6, n).astype(float)
    return rng.exponential(1.0, n)


sizes = [(1, 1), (1, 7), (3, 3), (5, 8), (10, 10), (13, 29), (40, 40), (50, 200), (99, 100),
         (100, 100), (250, 1000), (333, 777), (1000, 1000), (1000, 5000), (2500, 1000),
         (5000, 1000), (5000, 10000), (4096, 1024), (7, 10000), (10000, 10000)]
for n1, n2 in sizes:
    for kind in ("normal", "shifted", "ties", "exp"):
        a = sample(n1, "normal" if kind != "ties" else "ties")
        b = sample(n2, kind)
        r = stats.ks_2samp(a, b)
        out["ks"].append({"a": a.tolist(), "b": b.tolist(), "statistic": float(r.statistic),
                          "pvalue": float(r.pvalue)})
for _ in range(40):
    n1, n2 = rng.integers(1, 400, 2)
    kind = rng.choice(["normal", "ties", "exp"])
    a, b = sample(n1, kind), sample(n2, "shifted" if kind != "ties" else "ties")
    out["wasserstein"].append({"u": a.tolist(), "v": b.tolist(),
                               "distance": float(stats.wasserstein_distance(a, b))})
for _ in range(40):
    k = int(rng.integers(2, 12))
    exp_p = rng.dirichlet(np.ones(k))
    n = int(rng.integers(20, 5000))
    obs = rng.multinomial(n, rng.dirichlet(np.ones(k)) if rng.random() < 0.5 else exp_p).astype(float)
    expd = exp_p * n
    r = stats.chisquare(obs, expd)
    out["chisquare"].append({"observed": obs.tolist(), "expected": expd.tolist(),
                             "statistic": float(r.statistic), "pvalue": float(r.pvalue)})
for _ in range(40):
    k = int(rng.integers(2, 12))
    p = rng.dirichlet(np.ones(k))
    q = rng.multinomial(int(rng.integers(5, 500)), rng.dirichlet(np.ones(k))).astype(float)
    if rng.random() < 0.3:
        p[rng.integers(0, k)] = 0.0
    out["js"].append({"p": p.tolist(), "q": q.tolist(), "distance": float(jensenshannon(p, q, base=2))})
    ref = np.maximum(p / p.sum(), 1e-4)
    cur = np.maximum(q / q.sum(), 1e-4)
    out["psi"].append({"reference": (p / p.sum()).tolist(), "current": (q / q.sum()).tolist(),
                       "psi": float(np.sum((cur - ref) * np.log(cur / ref)))})
for _ in range(20):
    x = rng.normal(0, 3, int(rng.integers(1, 300)))
    qs = [i / 10 for i in range(1, 10)]
    out["quantile"].append({"x": x.tolist(), "q": qs, "values": np.quantile(x, qs).tolist()})

path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "oracle", "stats.json")
with open(path, "w") as f:
    json.dump(out, f)
print("wrote", path, {k: len(v) for k, v in out.items() if isinstance(v, list)})
