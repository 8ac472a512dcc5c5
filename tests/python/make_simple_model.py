"""Builds tests/data/triton/simple/{1,2}/model.onnx: Triton's quick-start `simple` model as
ONNX. INPUT0, INPUT1 INT32 [-1, 16] -> OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1.
Version 2 is the same graph (two versions, for the version policy tests). Run with any
Python that has `onnx`:

    .venv-mlflow/bin/python tests/python/make_simple_model.py
"""

import os

import onnx
from onnx import TensorProto, helper

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

io = lambda name: helper.make_tensor_value_info(name, TensorProto.INT32, ["N", 16])
graph = helper.make_graph(
    [
        helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
        helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
    ],
    "simple",
    [io("INPUT0"), io("INPUT1")],
    [io("OUTPUT0"), io("OUTPUT1")],
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
model.ir_version = 8
onnx.checker.check_model(model)
for version in ("1", "2"):
    out = os.path.join(ROOT, "tests/data/triton/simple", version, "model.onnx")
    onnx.save(model, out)
    print(out)
