"""Writes a slower copy of iris v1: the same answers, after a chain of dense layers.

    make_slow_iris.py IRIS_MODEL OUT [LAYERS]

The model computes H = tanh(X W0) then LAYERS times H = tanh(H W) (W 256 x 256, one
initializer shared by every layer), and feeds X + relu(-|sum(H)|) (that is, X) to iris's own nodes, so
its labels and probabilities are iris's while each row costs about LAYERS x 65 k
multiply-adds more. The canary-judge tests use it as a canary slowed by a heavier model.
Run with a Python that has `onnx` and `numpy` (.venv-mlflow).
"""

import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

src, out = sys.argv[1], sys.argv[2]
layers = int(sys.argv[3]) if len(sys.argv) > 3 else 8
m = onnx.load(src)
g = m.graph
rng = np.random.default_rng(3)
w0 = numpy_helper.from_array((rng.standard_normal((4, 256)) / 2).astype(np.float32), "slow_w0")
w = numpy_helper.from_array((rng.standard_normal((256, 256)) / 16).astype(np.float32), "slow_w")
nodes = [helper.make_node("MatMul", ["X", "slow_w0"], ["slow_m0"]),
         helper.make_node("Tanh", ["slow_m0"], ["slow_h0"])]
for i in range(layers):
    nodes.append(helper.make_node("MatMul", [f"slow_h{i}", "slow_w"], [f"slow_m{i + 1}"]))
    nodes.append(helper.make_node("Tanh", [f"slow_m{i + 1}"], [f"slow_h{i + 1}"]))
nodes.append(helper.make_node("ReduceSum", [f"slow_h{layers}"], ["slow_s"], keepdims=0))
# 0 for any finite sum, through operations no engine folds away: relu(-|s|).
nodes.append(helper.make_node("Abs", ["slow_s"], ["slow_a"]))
nodes.append(helper.make_node("Neg", ["slow_a"], ["slow_n"]))
nodes.append(helper.make_node("Relu", ["slow_n"], ["slow_z"]))
nodes.append(helper.make_node("Add", ["X", "slow_z"], ["slow_x"]))
for n in g.node:
    for k, name in enumerate(n.input):
        if name == "X":
            n.input[k] = "slow_x"
old = list(g.node)
del g.node[:]
g.node.extend(nodes + old)
g.initializer.extend([w0, w])
onnx.checker.check_model(m)
onnx.save(m, out)
print(out)
