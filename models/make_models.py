"""Build vigil's sample model repository and the test references.

Run from the repository root with the pinned packages in scripts/requirements.txt:

    .venv/bin/python models/make_models.py

Everything is seeded, so a re-run rebuilds the same models. Outputs:
  models/<model>/<version>/model.onnx   the served model
  models/<model>/<version>/train.npy    a sample of the training inputs (for drift profiles)
  tests/data/refs/<model>_v<version>.json   inputs and onnxruntime outputs the tests compare with
  tests/data/repo/...                    small models that exercise every datatype
"""

import json
import os
import shutil

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from skl2onnx import to_onnx
from sklearn.datasets import load_breast_cancer, load_digits, load_iris, make_classification
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.path.join(ROOT, "models")
REFS = os.path.join(ROOT, "tests", "data", "refs")
TEST_REPO = os.path.join(ROOT, "tests", "data", "repo")
OPSET = {"": 15, "ai.onnx.ml": 3}

V2_TYPE = {
    np.dtype("float32"): "FP32",
    np.dtype("float64"): "FP64",
    np.dtype("int8"): "INT8",
    np.dtype("int16"): "INT16",
    np.dtype("int32"): "INT32",
    np.dtype("int64"): "INT64",
    np.dtype("uint8"): "UINT8",
    np.dtype("uint16"): "UINT16",
    np.dtype("uint32"): "UINT32",
    np.dtype("uint64"): "UINT64",
    np.dtype("bool"): "BOOL",
}


def save_version(name, version, onnx_model, train):
    vdir = os.path.join(MODELS, name, str(version))
    os.makedirs(vdir, exist_ok=True)
    onnx.save(onnx_model, os.path.join(vdir, "model.onnx"))
    if train is not None:
        np.save(os.path.join(vdir, "train.npy"), train)


def tensor_json(name, arr):
    if arr.dtype.kind in "OU":
        return {"name": name, "datatype": "BYTES", "shape": list(arr.shape),
                "data": [str(v) for v in arr.reshape(-1)]}
    return {"name": name, "datatype": V2_TYPE[arr.dtype], "shape": list(arr.shape),
            "data": arr.reshape(-1).tolist()}


def write_reference(model_path, ref_name, feeds):
    """Run onnxruntime on `feeds` and store inputs and every output for the Rust tests."""
    sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    outs = sess.run(names, feeds)
    doc = {
        "inputs": [tensor_json(k, v) for k, v in feeds.items()],
        "outputs": [tensor_json(n, np.asarray(o)) for n, o in zip(names, outs)],
    }
    os.makedirs(REFS, exist_ok=True)
    with open(os.path.join(REFS, ref_name + ".json"), "w") as f:
        json.dump(doc, f)


def iris():
    X, y = load_iris(return_X_y=True)
    X = X.astype(np.float32)
    rng = np.random.default_rng(1)
    variants = {
        1: LogisticRegression(C=1.0, max_iter=500),
        2: LogisticRegression(C=0.05, max_iter=500),  # stronger regularisation: other answers
    }
    for version, clf in variants.items():
        clf.fit(X, y)
        m = to_onnx(clf, X[:1], options={id(clf): {"zipmap": False}}, target_opset=OPSET)
        save_version("iris", version, m, X)
        idx = rng.choice(len(X), 7, replace=False)
        write_reference(os.path.join(MODELS, "iris", str(version), "model.onnx"),
                        f"iris_v{version}", {m.graph.input[0].name: X[idx]})


def breast_cancer():
    X, y = load_breast_cancer(return_X_y=True)
    X = X.astype(np.float32)
    clf = GradientBoostingClassifier(n_estimators=40, max_depth=3, random_state=0).fit(X, y)
    m = to_onnx(clf, X[:1], options={id(clf): {"zipmap": False}}, target_opset=OPSET)
    save_version("breast_cancer", 1, m, X)
    # No config.toml: with ONNX Runtime present `auto` serves it on ort; on tract vigil
    # rewrites the two-class TreeEnsembleClassifier (which tract gets wrong) first.
    rng = np.random.default_rng(2)
    idx = rng.choice(len(X), 9, replace=False)
    write_reference(os.path.join(MODELS, "breast_cancer", "1", "model.onnx"),
                    "breast_cancer_v1", {m.graph.input[0].name: X[idx]})


def mlp():
    X, y = make_classification(n_samples=4000, n_features=32, n_informative=20, n_redundant=4,
                               n_classes=8, n_clusters_per_class=1, random_state=3)
    X = X.astype(np.float32)
    clf = MLPClassifier(hidden_layer_sizes=(256, 256), max_iter=60, random_state=3).fit(X, y)
    m = to_onnx(clf, X[:1], options={id(clf): {"zipmap": False}}, target_opset=OPSET)
    save_version("mlp", 1, m, X[:2000])
    rng = np.random.default_rng(3)
    idx = rng.choice(len(X), 16, replace=False)
    write_reference(os.path.join(MODELS, "mlp", "1", "model.onnx"), "mlp_v1",
                    {m.graph.input[0].name: X[idx]})


def cnn():
    """A small conv net on sklearn's digits, upsampled to 1x28x28.

    The two conv layers are fixed random filters (seeded); the dense head is a logistic
    regression fitted on their features, so the net really classifies digits.
    """
    digits = load_digits()
    imgs = digits.images.astype(np.float32) / 16.0
    # 8x8 -> 28x28: nearest-neighbour upsampling (x3 -> 24) and a 2-pixel border.
    up = np.kron(imgs, np.ones((3, 3), dtype=np.float32))
    X = np.zeros((len(up), 1, 28, 28), dtype=np.float32)
    X[:, 0, 2:26, 2:26] = up
    y = digits.target
    rng = np.random.default_rng(4)
    w1 = (rng.standard_normal((8, 1, 3, 3)) * 0.5).astype(np.float32)
    b1 = np.zeros(8, np.float32)
    w2 = (rng.standard_normal((16, 8, 3, 3)) * 0.2).astype(np.float32)
    b2 = np.zeros(16, np.float32)
    batch = "batch"
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p2"], ["features"], axis=1),
    ]
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))]
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 1, 28, 28])
    feat_out = helper.make_tensor_value_info("features", TensorProto.FLOAT, [batch, 16 * 7 * 7])
    feat_graph = helper.make_graph(nodes, "cnn_features", [inp], [feat_out], inits)
    feat_model = helper.make_model(feat_graph, opset_imports=[helper.make_opsetid("", 15)])
    feat_model.ir_version = 8
    sess = ort.InferenceSession(feat_model.SerializeToString(), providers=["CPUExecutionProvider"])
    feats = sess.run(None, {"input": X})[0]
    head = LogisticRegression(C=0.1, max_iter=2000).fit(feats, y)
    wd = head.coef_.T.astype(np.float32)  # [784, 10]
    bd = head.intercept_.astype(np.float32)
    nodes.append(helper.make_node("Gemm", ["features", "wd", "bd"], ["logits"]))
    inits += [numpy_helper.from_array(wd, "wd"), numpy_helper.from_array(bd, "bd")]
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 10])
    graph = helper.make_graph(nodes, "cnn", [inp], [out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    save_version("cnn", 1, model, X[:300])
    idx = rng.choice(len(X), 4, replace=False)
    write_reference(os.path.join(MODELS, "cnn", "1", "model.onnx"), "cnn_v1", {"input": X[idx]})


def dtypes_repo():
    """tests/data/repo: models that pass every datatype through (Identity), for both engines."""
    if os.path.exists(TEST_REPO):
        shutil.rmtree(TEST_REPO)
    types = [
        ("fp32", TensorProto.FLOAT, np.float32), ("fp64", TensorProto.DOUBLE, np.float64),
        ("int8", TensorProto.INT8, np.int8), ("int16", TensorProto.INT16, np.int16),
        ("int32", TensorProto.INT32, np.int32), ("int64", TensorProto.INT64, np.int64),
        ("uint8", TensorProto.UINT8, np.uint8), ("uint16", TensorProto.UINT16, np.uint16),
        ("uint32", TensorProto.UINT32, np.uint32), ("uint64", TensorProto.UINT64, np.uint64),
        ("bool", TensorProto.BOOL, np.bool_),
    ]
    nodes, inputs, outputs = [], [], []
    for name, proto, _ in types:
        nodes.append(helper.make_node("Identity", [f"x_{name}"], [f"y_{name}"]))
        inputs.append(helper.make_tensor_value_info(f"x_{name}", proto, ["n", 3]))
        outputs.append(helper.make_tensor_value_info(f"y_{name}", proto, ["n", 3]))
    # One real computation per family, so a wrong byte order cannot hide behind Identity.
    nodes.append(helper.make_node("Mul", ["x_fp32", "x_fp32"], ["sq_fp32"]))
    outputs.append(helper.make_tensor_value_info("sq_fp32", TensorProto.FLOAT, ["n", 3]))
    nodes.append(helper.make_node("Cast", ["x_int64"], ["cast_fp64"], to=TensorProto.DOUBLE))
    outputs.append(helper.make_tensor_value_info("cast_fp64", TensorProto.DOUBLE, ["n", 3]))
    graph = helper.make_graph(nodes, "dtypes", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = os.path.join(TEST_REPO, "dtypes", "1")
    os.makedirs(path)
    onnx.save(model, os.path.join(path, "model.onnx"))
    rng = np.random.default_rng(5)
    feeds = {}
    for name, _, np_t in types:
        if np_t is np.bool_:
            feeds[f"x_{name}"] = rng.integers(0, 2, (2, 3)).astype(np.bool_)
        elif np.issubdtype(np_t, np.floating):
            feeds[f"x_{name}"] = rng.standard_normal((2, 3)).astype(np_t)
        else:
            info = np.iinfo(np_t)
            feeds[f"x_{name}"] = np.array([[info.min, info.max, 0], [1, 7, info.max - 1]], dtype=np_t)
    write_reference(os.path.join(path, "model.onnx"), "dtypes_v1", feeds)

    # strings: BYTES in and out (engines that support string tensors).
    node = helper.make_node("Identity", ["text"], ["text_out"])
    g = helper.make_graph([node], "strings",
                          [helper.make_tensor_value_info("text", TensorProto.STRING, ["n"])],
                          [helper.make_tensor_value_info("text_out", TensorProto.STRING, ["n"])])
    sm = helper.make_model(g, opset_imports=[helper.make_opsetid("", 15)])
    sm.ir_version = 8
    spath = os.path.join(TEST_REPO, "strings", "1")
    os.makedirs(spath)
    onnx.save(sm, os.path.join(spath, "model.onnx"))
    write_reference(os.path.join(spath, "model.onnx"), "strings_v1",
                    {"text": np.array(["hello", "vigil", "ünïcode"], dtype=object)})

    # A model with a fixed batch dimension of 2: requests with another batch are a 400.
    node = helper.make_node("Relu", ["x"], ["y"])
    g = helper.make_graph([node], "fixed",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])])
    fm = helper.make_model(g, opset_imports=[helper.make_opsetid("", 15)])
    fm.ir_version = 8
    fpath = os.path.join(TEST_REPO, "fixed", "1")
    os.makedirs(fpath)
    onnx.save(fm, os.path.join(fpath, "model.onnx"))


if __name__ == "__main__":
    for d in ("iris", "breast_cancer", "mlp", "cnn"):
        shutil.rmtree(os.path.join(MODELS, d), ignore_errors=True)
    iris()
    breast_cancer()
    mlp()
    cnn()
    dtypes_repo()
    print("models written to", MODELS, "and", TEST_REPO)
