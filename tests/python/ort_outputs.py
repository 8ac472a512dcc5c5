"""onnxruntime's answers to V2 JSON requests: the oracle for vigil's answers.

usage: ort_outputs.py MODEL.onnx REQUESTS.json

REQUESTS.json is a list of V2 request bodies with JSON data. Prints a list with, for
each request, its outputs as V2 JSON outputs ({name, datatype, shape, data}), in the
model's output order.
"""

import json
import sys

import numpy as np
import onnxruntime as ort

DATATYPES = {
    np.dtype(np.float32): "FP32", np.dtype(np.float64): "FP64", np.dtype(np.int64): "INT64",
    np.dtype(np.int32): "INT32", np.dtype(np.bool_): "BOOL",
}
FROM_V2 = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32, "BOOL": np.bool_}

sess = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
names = [o.name for o in sess.get_outputs()]
answers = []
for body in json.load(open(sys.argv[2])):
    feeds = {t["name"]: np.array(t["data"], dtype=FROM_V2[t["datatype"]]).reshape(t["shape"])
             for t in body["inputs"]}
    answers.append([{"name": n, "datatype": DATATYPES[a.dtype], "shape": list(a.shape), "data": a.reshape(-1).tolist()}
                    for n, a in zip(names, sess.run(names, feeds))])
print(json.dumps(answers))
