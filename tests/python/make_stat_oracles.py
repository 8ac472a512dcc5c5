"""Writes tests/data/oracle/stats.json: random inputs and what scipy 1.17 computes for them
(ks_2samp, wasserstein_distance, chisquare, jensenshannon, PSI, quantiles, mannwhitneyu and
the two-proportion z-test, Fisher's exact test). The Rust
tests compare vigil's statistics with these: 1e-9 on statistics, p-values relatively
(|ln p - ln p_scipy|, which is the relative difference and still means something when
p is 1e-200).

"ks_large" holds ks_2samp on samples above scipy's exact limit (more than 10000 values on
a side: scipy then uses kstwo.sf). Those samples are not stored: each is drawn from
vigil's seeded xorshift64* (monitor::profile::Rng), replayed here bit for bit, so the
file stays small: gen = [seed, n, shift, scale, ties], value = shift + scale * u with u
uniform in [0, 1) (53 bits), floored when ties is 1.

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

MASK = (1 << 64) - 1


def xorshift_uniform(seed, n):
    """monitor::profile::Rng::new(seed), next_u64() >> 11, as a float in [0, 1)."""
    x = max(seed, 1)
    out = np.empty(n)
    for i in range(n):
        x ^= x >> 12
        x ^= (x << 25) & MASK
        x ^= x >> 27
        out[i] = ((x * 0x2545F4914F6CDD1D) & MASK) >> 11
    return out / float(1 << 53)


def generated(seed, n, shift, scale, ties):
    v = shift + scale * xorshift_uniform(seed, n)
    return np.floor(v) if ties else v


out["ks_large"] = []
seed = 1000
# (n1, n2, shift of b, scale of b, ties): every kstwo method scipy picks is reached:
# small en (<= 140: Durbin matrix, Pomeranz, smirnov), large en with d small (Durbin
# matrix), moderate (Pelz-Good) and large (smirnov), p-values down to 1e-300 and 0.
large = [(10001, 500, 0.0, 1.0, 0), (10001, 500, 0.05, 1.0, 0), (12000, 1000, 0.02, 1.0, 0),
         (12000, 1000, 0.0, 1.0, 0), (20000, 5000, 0.01, 1.0, 0), (20000, 5000, 0.0, 1.02, 0),
         (20000, 10000, 0.03, 1.0, 0), (20000, 10000, 0.2, 1.0, 0), (15000, 100, 0.0, 1.0, 0),
         (15000, 100, 0.15, 1.0, 0), (10500, 130, 0.3, 1.0, 0), (10500, 130, 0.6, 1.0, 0),
         (11000, 60, 0.05, 1.0, 0), (11000, 30, 0.9, 1.0, 0), (50000, 10000, 0.005, 1.0, 0),
         (30000, 2000, 0.5, 1.0, 0), (30000, 2000, 0.0, 6.0, 1), (12000, 3000, 0.25, 6.0, 1),
         (10001, 10000, 0.0, 1.0, 0), (10001, 10000, 0.01, 1.0, 0), (40000, 7, 0.0, 1.0, 0),
         (40000, 7, 0.7, 1.0, 0), (10001, 2, 0.0, 1.0, 0), (25000, 9000, 0.015, 1.0, 0)]
for n1, n2, shift, scale, ties in large:
    ga = [seed, n1, 0.0, 6.0 if ties else 1.0, ties]
    gb = [seed + 1, n2, shift, scale, ties]
    seed += 2
    r = stats.ks_2samp(generated(*ga), generated(*gb))
    out["ks_large"].append({"a": ga, "b": gb, "statistic": float(r.statistic),
                            "pvalue": float(r.pvalue)})

# chi2_contingency(correction=False) on 2 x k tables (reference counts, window counts):
# the homogeneity test vigil runs when the reference is itself a sample of known size.
# Tables whose every expected count is at least 5 (vigil pools sparser columns first, so
# these are the tables it tests as they are). Its own generator: earlier cases unchanged.
crng = np.random.default_rng(17)
out["chi2_contingency"] = []
while len(out["chi2_contingency"]) < 120:
    k = int(crng.integers(2, 12))
    n_ref = int(crng.choice([50, 200, 1000, 5000, 100000]))
    n_win = int(crng.choice([40, 100, 1000, 3000]))
    p = crng.dirichlet(np.ones(k) * crng.uniform(0.5, 5))
    q = p if crng.uniform() < 0.5 else crng.dirichlet(np.ones(k) * 2)
    table = np.array([crng.multinomial(n_ref, p), crng.multinomial(n_win, q)])
    if (table.sum(axis=0) == 0).any():
        continue
    stat, pvalue, dof, expected = stats.chi2_contingency(table, correction=False)
    if expected.min() < 5:
        continue
    out["chi2_contingency"].append({"reference": table[0].tolist(), "observed": table[1].tolist(),
                                    "statistic": float(stat), "pvalue": float(pvalue),
                                    "dof": int(dof)})

# The canary judge's tests: mannwhitneyu(x, y, alternative="greater", method="asymptotic")
# on latency-like samples (lognormal, shifted, scaled, rounded to ties), and the pooled
# two-proportion z-test, checked as sqrt of chi2_contingency's statistic (no correction)
# with norm.sf for the one-sided p-value. Its own generator: earlier cases unchanged.
jrng = np.random.default_rng(20)
out["mannwhitneyu"] = []
for n1, n2 in [(1, 1), (1, 5), (2, 3), (5, 5), (8, 13), (20, 20), (30, 200), (100, 100), (200, 180),
               (500, 2000), (1000, 1000), (2048, 2048), (4096, 300)]:
    for kind in ("same", "slower", "faster", "wider", "ties", "ties_slower"):
        x = jrng.lognormal(0.0, 0.5, n1)
        y = jrng.lognormal(0.0, 0.5, n2)
        if kind == "slower":
            x = x * jrng.uniform(1.05, 1.6)
        elif kind == "faster":
            x = x / jrng.uniform(1.05, 1.6)
        elif kind == "wider":
            x = jrng.lognormal(0.0, 1.0, n1)
        elif kind.startswith("ties"):
            x = np.round(x * (1.3 if kind == "ties_slower" else 1.0), 1)
            y = np.round(y, 1)
        if np.concatenate([x, y]).min() == np.concatenate([x, y]).max():
            continue
        r = stats.mannwhitneyu(x, y, alternative="greater", method="asymptotic")
        out["mannwhitneyu"].append({"x": x.tolist(), "y": y.tolist(), "statistic": float(r.statistic),
                                    "pvalue": float(r.pvalue)})
out["two_proportions"] = []
while len(out["two_proportions"]) < 120:
    n1 = int(jrng.choice([1, 5, 30, 200, 1000, 100000, 10**9]))
    n2 = int(jrng.choice([1, 5, 30, 200, 1000, 100000, 10**9]))
    r1 = float(jrng.choice([0.0, 0.001, 0.01, 0.05, 0.3, 1.0]))
    r2 = r1 if jrng.uniform() < 0.4 else float(jrng.choice([0.0, 0.001, 0.01, 0.05, 0.3, 1.0]))
    x1, x2 = int(jrng.binomial(n1, r1)), int(jrng.binomial(n2, r2))
    table = np.array([[x1, n1 - x1], [x2, n2 - x2]])
    if (table.sum(axis=0) == 0).any():
        continue
    chi2 = stats.chi2_contingency(table, correction=False)[0]
    z = float(np.sign(x1 / n1 - x2 / n2) * np.sqrt(chi2))
    out["two_proportions"].append({"x1": x1, "n1": n1, "x2": x2, "n2": n2, "z": z,
                                   "pvalue": float(stats.norm.sf(z))})

# Fisher's exact test, one-sided: small counts (a canary step's errors, its slow tail) and
# large ones (millions of requests), events rare and common.
out["fisher_exact"] = []
frng = np.random.default_rng(22)
while len(out["fisher_exact"]) < 150:
    n1 = int(frng.choice([1, 3, 30, 46, 200, 416, 2048, 100000, 3000000]))
    n2 = int(frng.choice([1, 3, 30, 46, 200, 416, 2048, 100000, 3000000]))
    r1 = float(frng.choice([0.0, 0.001, 0.01, 0.05, 0.3, 1.0]))
    r2 = r1 if frng.uniform() < 0.4 else float(frng.choice([0.0, 0.001, 0.01, 0.05, 0.3, 1.0]))
    x1, x2 = int(frng.binomial(n1, r1)), int(frng.binomial(n2, r2))
    p = stats.fisher_exact([[x1, n1 - x1], [x2, n2 - x2]], alternative="greater")[1]
    out["fisher_exact"].append({"x1": x1, "n1": n1, "x2": x2, "n2": n2, "pvalue": float(p)})
# The cases named in compare.rs's doc comment.
for x1, n1, x2, n2 in [(2, 46, 1, 416), (1, 32, 0, 286), (33, 33, 0, 0 + 1), (5, 46, 0, 416)]:
    p = stats.fisher_exact([[x1, n1 - x1], [x2, n2 - x2]], alternative="greater")[1]
    out["fisher_exact"].append({"x1": x1, "n1": n1, "x2": x2, "n2": n2, "pvalue": float(p)})

path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "oracle", "stats.json")
with open(path, "w") as f:
    json.dump(out, f)
print("wrote", path, {k: len(v) for k, v in out.items() if isinstance(v, list)})
