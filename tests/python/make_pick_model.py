"""Builds tests/data/pick/1/model.onnx: `Y = T[I]`, a Gather from the constant table
T = [10, 20, 30, 40] by the INT64 input I of shape [N, 1].

An index outside -4..4 passes vigil's checks (right names, datatypes, shapes) and fails
in the engine (tract panics on it, ONNX Runtime reports an error), so one request in a
batch can fail on its own. Run with any Python that has `onnx`:

    .venv-mlflow/bin/python tests/python/make_pick_model.py
"""

import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

i = helper.make_tensor_value_info("I", TensorProto.INT64, ["N", 1])
y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 1])
table = numpy_helper.from_array(np.array([10, 20, 30, 40], np.float32), "T")
node = helper.make_node("Gather", ["T", "I"], ["Y"], axis=0)
graph = helper.make_graph([node], "pick", [i], [y], initializer=[table])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
model.ir_version = 8
onnx.checker.check_model(model)
out = os.path.join(ROOT, "tests/data/pick/1/model.onnx")
onnx.save(model, out)
print(out)
