"""Scores drift windows as numpy and scipy compute them, from the rows a test served.

usage: drift_oracle.py TRAIN.npy WINDOWS.json

WINDOWS.json is a list of windows, each {"inputs": [[f0, f1, ...], ...] (the rows as the
server read them, FP32 values as exact doubles), "outputs": {name: [values]}}. The inputs'
reference is the training data; the outputs' reference is the first window's outputs
(vigil builds it from the first scored window). Prints, per window, every feature's
bin counts, PSI, Jensen-Shannon distance, KS (statistic, p-value), Wasserstein distance
over the reference's standard deviation, mean and std, chi-square of categorical
features (two samples: the reference's counts and the window's) on columns pooled until
each expects 5 rows, and whether the feature drifted
under the default [drift] settings (alpha 0.05 over the input feature count, PSI 0.2).
"""

import json
import sys

import numpy as np
from scipy import stats
from scipy.spatial.distance import jensenshannon

BINS = 10  # [drift] bins, and `vigil profile`'s default
MAX_CATEGORIES = 20  # integral features with at most this many values are categorical
PSI_FLOOR = 1e-4
CHI2_MIN_EXPECTED = 5.0
PSI_THRESHOLD = 0.2
KS_ALPHA = 0.05


def profile(col):
    col = col[np.isfinite(col)]
    distinct = np.unique(col)
    if np.all(col == np.floor(col)) and len(distinct) <= MAX_CATEGORIES:
        props = np.array([np.sum(col == c) for c in distinct]) / len(col)
        return {"kind": "categorical", "categories": distinct, "props": props, "sample": col}
    edges = np.unique(np.quantile(col, [i / BINS for i in range(1, BINS)]))
    counts = np.bincount(np.searchsorted(edges, col, side="right"), minlength=len(edges) + 1)
    return {"kind": "numeric", "edges": edges, "props": counts / len(col), "sample": col}


def psi(ref, cur):
    r, c = np.maximum(ref, PSI_FLOOR), np.maximum(cur, PSI_FLOOR)
    return float(np.sum((c - r) * np.log(c / r)))


def pooled_homogeneity(observed, reference):
    """scipy's chi2_contingency([reference, observed], correction=False) on columns pooled
    as vigil documents it: a column whose smaller expected count (column total x the
    smaller row total / grand total) is under 5 goes into one pool, then the least
    supported column joins the pool while the pool is under 5."""
    n_obs, n_ref = float(sum(observed)), float(sum(reference))
    if n_obs <= 0 or n_ref <= 0:
        return None
    factor = min(n_obs, n_ref) / (n_obs + n_ref)
    support = lambda c: (c[0] + c[1]) * factor
    if len(observed) != len(reference):
        raise ValueError(f"{len(observed)} observed categories against {len(reference)} in the reference")
    kept, pool, pooled = [], (0.0, 0.0), False
    for c in zip(map(float, observed), map(float, reference)):
        if support(c) < CHI2_MIN_EXPECTED:
            pool, pooled = (pool[0] + c[0], pool[1] + c[1]), True
        else:
            kept.append(c)
    if pooled:
        while support(pool) < CHI2_MIN_EXPECTED and kept:
            i = min(range(len(kept)), key=lambda j: support(kept[j]))
            c = kept.pop(i)
            pool = (pool[0] + c[0], pool[1] + c[1])
        if pool[0] > 0 or pool[1] > 0:
            kept.append(pool)
    if len(kept) < 2:
        return None
    table = np.array([[r for _, r in kept], [o for o, _ in kept]])
    stat, pvalue, _, _ = stats.chi2_contingency(table, correction=False)
    return float(stat), float(pvalue)


def score(ref, x, alpha):
    n = len(x)
    out = {"mean": float(x.mean()), "std": float(x.std())}
    if ref["kind"] == "numeric":
        counts = np.bincount(np.searchsorted(ref["edges"], x, side="right"), minlength=len(ref["edges"]) + 1)
        cur = counts / n
        ks = stats.ks_2samp(ref["sample"], x)
        out.update({
            "kind": "numeric",
            "window_counts": counts.tolist(),
            "psi": psi(ref["props"], cur),
            "js": float(jensenshannon(ref["props"], cur, base=2)),
            "ks_statistic": float(ks.statistic),
            "ks_pvalue": float(ks.pvalue),
            "wasserstein": float(stats.wasserstein_distance(ref["sample"], x) / max(ref["sample"].std(), 1e-3)),
        })
        out["drifted"] = out["ks_pvalue"] < alpha or out["psi"] >= PSI_THRESHOLD
    else:
        cats = ref["categories"]
        counts = [int(np.sum(x == c)) for c in cats] + [int(np.sum(~np.isin(x, cats)))]
        cur = np.array(counts) / n
        shares = np.append(ref["props"], 0.0)
        out.update({
            "kind": "categorical",
            "window_counts": counts,
            "psi": psi(shares, cur),
            "js": float(jensenshannon(shares, cur, base=2)),
            "unseen_share": float(cur[-1]),
        })
        # The reference is a sample of known size: two samples compared.
        chi = pooled_homogeneity(counts, np.round(shares * len(ref["sample"])))
        if chi is not None:
            out["chi2_statistic"], out["chi2_pvalue"] = chi
        out["drifted"] = chi is not None and chi[1] < alpha
    return out


def main():
    train = np.load(sys.argv[1]).astype(np.float64)
    windows = json.load(open(sys.argv[2]))
    refs_in = [profile(train[:, j]) for j in range(train.shape[1])]
    alpha = KS_ALPHA / train.shape[1]
    first = windows[0]["outputs"]
    refs_out = {name: profile(np.array(vals, dtype=np.float64)) for name, vals in first.items()}
    result = []
    for w, win in enumerate(windows):
        rows = np.array(win["inputs"], dtype=np.float64)
        features = {f"f{j}": score(refs_in[j], rows[:, j], alpha) for j in range(rows.shape[1])}
        outputs = {}
        if w > 0:
            outputs = {name: score(refs_out[name], np.array(vals, dtype=np.float64), alpha)
                       for name, vals in win["outputs"].items()}
        share = sum(f["drifted"] for f in features.values()) / len(features)
        result.append({"features": features, "outputs": outputs, "drift_share": share})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
