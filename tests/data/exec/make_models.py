"""Small models for the execution-mode tests (tests/execution.rs). Seeded; a re-run writes
the same files. Run from the repository root with an interpreter that has onnx and numpy
(.venv-mlflow has both):

    .venv-mlflow/bin/python tests/data/exec/make_models.py

  lookup/1/model.onnx  Gather of a 4-entry table by an INT64 index [batch]: a few µs of
                       compute (auto runs it inline); an index past the table makes tract
                       panic (slice index out of bounds), which must be answered 400.
  heavy/1/model.onnx   x [batch, 256] -> outer product x x^T [batch, 256, 256] -> its square
                       (16.7 M multiply-adds a row) -> sum [batch]: milliseconds of compute
                       in a file of a few hundred bytes (auto keeps it on the pool).
"""

import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))


def save(model, name):
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = os.path.join(HERE, name, "1")
    os.makedirs(path, exist_ok=True)
    onnx.save(model, os.path.join(path, "model.onnx"))


def lookup():
    table = numpy_helper.from_array(np.array([0.5, 1.5, 2.5, 3.5], dtype=np.float32), "table")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "index"], ["value"], axis=0)],
        "lookup",
        [helper.make_tensor_value_info("index", TensorProto.INT64, [None])],
        [helper.make_tensor_value_info("value", TensorProto.FLOAT, [None])],
        initializer=[table])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)]), "lookup")


def heavy():
    axes_col = numpy_helper.from_array(np.array([2], dtype=np.int64), "axes_col")
    axes_row = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes_row")
    axes_sum = numpy_helper.from_array(np.array([1, 2], dtype=np.int64), "axes_sum")
    nodes = [
        helper.make_node("Unsqueeze", ["x", "axes_col"], ["col"]),
        helper.make_node("Unsqueeze", ["x", "axes_row"], ["row"]),
        helper.make_node("MatMul", ["col", "row"], ["outer"]),
        helper.make_node("MatMul", ["outer", "outer"], ["square"]),
        helper.make_node("ReduceSum", ["square", "axes_sum"], ["y"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "heavy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])],
        initializer=[axes_col, axes_row, axes_sum])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)]), "heavy")


if __name__ == "__main__":
    lookup()
    heavy()
