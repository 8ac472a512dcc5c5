"""PSI and Jensen-Shannon distance of each feature of rows against a vigil reference.json,
the oracle of tests/fleet.rs: shares per reference bin (numpy.searchsorted, side="right");
PSI = sum (a - e) * ln(a / e) with shares floored at 1e-4 (numpy; scipy has no PSI);
JS = scipy.spatial.distance.jensenshannon(reference, shares, base=2).

usage: fleet_psi.py REFERENCE.json ROWS.json   (ROWS: a list of float32 rows)
"""

import json
import sys

import numpy as np
from scipy.spatial.distance import jensenshannon

FLOOR = 1e-4


def main():
    reference = json.load(open(sys.argv[1]))
    rows = np.array(json.load(open(sys.argv[2])), dtype=np.float32).astype(np.float64)
    out = {"psi": {}, "js": {}}
    for j, f in enumerate(reference["features"]):
        x = rows[:, f["index"]]
        x = x[np.isfinite(x)]
        if f["kind"] == "numeric":
            edges = np.array(f["edges"], dtype=np.float64)
            counts = np.bincount(np.searchsorted(edges, x, side="right"), minlength=len(edges) + 1)
            expected = np.array(f["proportions"], dtype=np.float64)
        else:
            cats = np.array(f["categories"], dtype=np.float64)
            idx = np.array([np.flatnonzero(cats == v)[0] if np.any(cats == v) else len(cats) for v in x])
            counts = np.bincount(idx, minlength=len(cats) + 1)
            expected = np.append(np.array(f["proportions"], dtype=np.float64), 0.0)
        actual = counts / counts.sum()
        a, e = np.maximum(actual, FLOOR), np.maximum(expected, FLOOR)
        out["psi"][f["name"]] = float(np.sum((a - e) * np.log(a / e)))
        out["js"][f["name"]] = float(jensenshannon(expected, actual, base=2))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
