"""The models benches/load.py serves, built from seeded weights (a re-run writes the same files).

    .venv-bench/bin/python benches/models.py OUT_DIR

Writes, per model, OUT_DIR/<model>/1/model.onnx, OUT_DIR/<model>/1/train.npy (a sample
of training inputs; load.py turns it into reference.json with `vigil profile`, so drift
monitoring runs with its defaults) and OUT_DIR/<model>/request.json (one-row V2 JSON):

- linear6: the model of issue #19, a linear regression on 6 features
  (input FP32 [N, 6] -> MatMul -> Add -> score FP32 [N, 1]); compute is negligible, so a
  request's cost is the server's own.
- heavy_mlp: 64 -> 1024 -> 1024 -> 16 (Gemm + Relu, Gemm + Relu, Gemm; 4.3 MB of FP32
  weights): heavy enough per row that running 32 rows at once beats 32 single-row runs,
  which is what the batching on/off pair measures.
"""

import json
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 15
IR_VERSION = 8  # readable by tract 0.23 and ONNX Runtime 1.31


def save(out, name, graph, train):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="vigil benches/models.py")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    d = os.path.join(out, name, "1")
    os.makedirs(d, exist_ok=True)
    onnx.save(model, os.path.join(d, "model.onnx"))
    train = train.astype(np.float32)
    np.save(os.path.join(d, "train.npy"), train)
    # The request load.py sends: the first training row, one-row V2 JSON.
    with open(os.path.join(out, name, "request.json"), "w") as f:
        json.dump({"inputs": [{"name": "input", "shape": [1, train.shape[1]], "datatype": "FP32",
                               "data": [float(v) for v in train[0]]}]}, f)


def linear6(out, rng):
    w = rng.normal(0, 1, (6, 1)).astype(np.float32)
    b = np.array([0.5], dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["xw"]),
         helper.make_node("Add", ["xw", "b"], ["score"])],
        "linear6",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 6])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    train = rng.normal([0, 1, -1, 5, 0, 10], [1, 2, 0.5, 3, 1, 4], (5000, 6))
    save(out, "linear6", graph, train)


def heavy_mlp(out, rng):
    sizes = [64, 1024, 1024, 16]
    nodes, inits, x = [], [], "input"
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        w = (rng.normal(0, 1, (a, b)) / np.sqrt(a)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"),
                  numpy_helper.from_array(np.zeros(b, np.float32), f"b{i}")]
        last = i == len(sizes) - 2
        y = "logits" if last else f"h{i}"
        nodes.append(helper.make_node("Gemm", [x, f"w{i}", f"b{i}"], [y if last else y + "_pre"]))
        if not last:
            nodes.append(helper.make_node("Relu", [y + "_pre"], [y]))
        x = y
    graph = helper.make_graph(
        nodes, "heavy_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 16])], inits)
    save(out, "heavy_mlp", graph, rng.normal(0, 1, (5000, 64)))


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    rng = np.random.default_rng(19)
    linear6(sys.argv[1], rng)
    heavy_mlp(sys.argv[1], rng)


if __name__ == "__main__":
    main()
