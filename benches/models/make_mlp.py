"""Writes a compute-heavy MLP for the batching and execution-mode benches (benches/hop.py):
64 -> 1024 -> 1024 -> 16, ReLU between, FP32, seeded weights, batch dimension dynamic.

    python benches/models/make_mlp.py OUT_DIR [--sizes 64,1024,1024,16]

writes OUT_DIR/model.onnx (about 4.5 MB at the default sizes, so it is made at bench time
rather than committed). Needs numpy and onnx (the .venv-mlflow environment has both).
"""

import argparse
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def build(sizes, seed=7):
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    prev = "input"
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        w = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
        b = (rng.standard_normal(n_out) * 0.01).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        out = "logits" if i == len(sizes) - 2 else f"h{i}"
        gemm_out = out if out == "logits" else f"g{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [gemm_out], name=f"gemm{i}"))
        if out != "logits":
            nodes.append(helper.make_node("Relu", [gemm_out], [out], name=f"relu{i}"))
        prev = out
    graph = helper.make_graph(
        nodes, "mlp_heavy",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, sizes[0]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, sizes[-1]])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir")
    ap.add_argument("--sizes", default="64,1024,1024,16")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    os.makedirs(args.out_dir, exist_ok=True)
    onnx.save(build(sizes), os.path.join(args.out_dir, "model.onnx"))


if __name__ == "__main__":
    main()
