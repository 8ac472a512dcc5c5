"""Writes tests/data/trees/: small two-class TreeEnsembleClassifier models and what
ONNX Runtime answers for them. src/backend/tract_trees.rs rewrites these models so tract
evaluates them; its tests compare tract's answers with these (labels exactly,
probabilities within 1e-5).

Before writing anything the script checks the ONNX Runtime semantics the rewrite copies
(onnxruntime 1.31.1, binary case, every weight on class 0). With s = the sum of the leaf
weights reached, plus base_values[0] when there is one:
  - label: classlabels[1] iff s > t, where t = 0.5 when every weight is >= 0, else 0;
  - probabilities: LOGISTIC gives [sigmoid(-s), sigmoid(s)]; NONE, SOFTMAX and
    SOFTMAX_ZERO give [1 - s, s] when every weight is >= 0, else [-s, s].
  (PROBIT fills the first column with garbage; vigil refuses it.)
s itself comes from a TreeEnsembleRegressor holding the same trees.

Needs scikit-learn, skl2onnx, onnx and onnxruntime (models/requirements.txt pins them);
use a scratch virtualenv:

    python3 -m venv /tmp/trees && /tmp/trees/bin/pip install -r models/requirements.txt
    /tmp/trees/bin/python tests/python/make_tree_oracles.py
"""

import copy
import json
import os

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper
from skl2onnx import to_onnx
from sklearn.datasets import load_breast_cancer, make_classification
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "data", "trees")
OPSET = {"": 15, "ai.onnx.ml": 3}


def session(model):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def tree_node(model):
    (node,) = [n for n in model.graph.node if n.op_type == "TreeEnsembleClassifier"]
    return node


def attr(node, name):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return None


def set_attr(node, name, value):
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(kept)
    if value is not None:
        node.attribute.append(helper.make_attribute(name, value))


def raw_score(model, X):
    """s for every row: the same trees as a TreeEnsembleRegressor, plus base_values[0]."""
    node = tree_node(model)
    keys = ["nodes_falsenodeids", "nodes_featureids", "nodes_hitrates",
            "nodes_missing_value_tracks_true", "nodes_modes", "nodes_nodeids", "nodes_treeids",
            "nodes_truenodeids", "nodes_values"]
    kwargs = {k: attr(node, k) for k in keys if attr(node, k) is not None}
    kwargs["nodes_modes"] = [m.decode() for m in kwargs["nodes_modes"]]
    reg = helper.make_node(
        "TreeEnsembleRegressor", ["X"], ["S"], domain="ai.onnx.ml", n_targets=1,
        aggregate_function="SUM", post_transform="NONE",
        target_ids=[0] * len(attr(node, "class_ids")), target_nodeids=attr(node, "class_nodeids"),
        target_treeids=attr(node, "class_treeids"), target_weights=attr(node, "class_weights"),
        **kwargs)
    g = helper.make_graph(
        [reg], "s", [helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, [None, X.shape[1]])],
        [helper.make_tensor_value_info("S", onnx.TensorProto.FLOAT, [None, 1])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 15),
                                            helper.make_opsetid("ai.onnx.ml", 3)])
    m.ir_version = model.ir_version
    (s,) = session(m).run(None, {"X": X})
    base = attr(node, "base_values") or [0.0]
    return s[:, 0] + np.float32(base[0])


def check_semantics(model, X, labels, probabilities):
    """Assert ONNX Runtime answered what the module docstring says."""
    node = tree_node(model)
    assert set(attr(node, "class_ids")) == {0}
    s = raw_score(model, X)
    classes = attr(node, "classlabels_int64s") or [c.decode() for c in attr(node, "classlabels_strings")]
    transform = (attr(node, "post_transform") or b"NONE").decode()
    all_positive = min(attr(node, "class_weights")) >= 0
    threshold = 0.5 if all_positive else 0.0
    if transform == "LOGISTIC":
        want = np.stack([1 / (1 + np.exp(s)), 1 / (1 + np.exp(-s))], axis=1)
    elif all_positive:
        want = np.stack([1 - s, s], axis=1)
    else:
        want = np.stack([-s, s], axis=1)
    assert np.allclose(probabilities, want, rtol=0, atol=1e-6), (probabilities, want)
    want_labels = [classes[1] if v > threshold else classes[0] for v in s]
    assert list(labels) == want_labels, (list(labels), want_labels)
    return int(np.sum(s == threshold))


def write(name, model, X):
    sess = session(model)
    labels, probabilities = sess.run(None, {sess.get_inputs()[0].name: X})
    labels = [v.item() if hasattr(v, "item") else str(v) for v in labels]
    ties = check_semantics(model, X, labels, probabilities)
    os.makedirs(OUT, exist_ok=True)
    if name != "breast_cancer":
        onnx.save(model, os.path.join(OUT, name + ".onnx"))
    doc = {
        "model": name,
        "onnxruntime": ort.__version__,
        "rows_on_threshold": ties,
        "inputs": X.tolist(),
        "labels": labels,
        "probabilities": probabilities.tolist(),
    }
    with open(os.path.join(OUT, name + ".json"), "w") as f:
        json.dump(doc, f)
    node = tree_node(model)
    print(f"{name}: {len(X)} rows, post_transform {attr(node, 'post_transform')}, "
          f"base_values {attr(node, 'base_values')}, {ties} rows exactly on the threshold")


def main():
    X, y = make_classification(n_samples=300, n_features=4, n_informative=3, n_redundant=0,
                               random_state=7)
    X = X.astype(np.float32)
    rows = X[:60]

    # Random forest, integer labels other than 0/1: every weight >= 0, post_transform NONE.
    # Four fully grown trees (pure leaves) of weight 1/4: many rows sum to exactly 0.5, the
    # tie ORT sends to class 0.
    rf = RandomForestClassifier(n_estimators=4, random_state=0)
    rf.fit(X, np.array([3, 7])[y])
    rf_m = to_onnx(rf, X[:1], options={id(rf): {"zipmap": False}}, target_opset=OPSET)
    write("rf_int", rf_m, rows)

    # Random forest with string labels.
    rfs = RandomForestClassifier(n_estimators=3, max_depth=3, random_state=1)
    rfs.fit(X, np.array(["no", "yes"])[y])
    rfs_m = to_onnx(rfs, X[:1], options={id(rfs): {"zipmap": False}}, target_opset=OPSET)
    write("rf_strings", rfs_m, rows)

    # Gradient boosting: mixed-sign weights, one base value, LOGISTIC.
    gb = GradientBoostingClassifier(n_estimators=5, max_depth=2, random_state=0).fit(X, y)
    gb_m = to_onnx(gb, X[:1], options={id(gb): {"zipmap": False}}, target_opset=OPSET)
    write("gb_logistic", gb_m, rows)

    # The same trees with other post_transforms (hand-edited; skl2onnx does not emit them).
    for transform in ["NONE", "SOFTMAX"]:
        m = copy.deepcopy(gb_m)
        set_attr(tree_node(m), "post_transform", transform)
        write(f"gb_{transform.lower()}", m, rows)

    # Every weight >= 0 with LOGISTIC and a base value: the label threshold stays 0.5.
    m = copy.deepcopy(rf_m)
    set_attr(tree_node(m), "post_transform", "LOGISTIC")
    set_attr(tree_node(m), "base_values", [0.125])
    write("rf_logistic_base", m, rows)

    # The sample model itself, on 120 rows of its data set (the model is in models/).
    Xb, _ = load_breast_cancer(return_X_y=True)
    bc = onnx.load(os.path.join(ROOT, "models", "breast_cancer", "1", "model.onnx"))
    write("breast_cancer", bc, Xb.astype(np.float32)[::4][:120])


if __name__ == "__main__":
    main()
