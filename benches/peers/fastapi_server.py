"""The Python peer: FastAPI + uvicorn + orjson + onnxruntime serving one ONNX model
through the same KServe V2 JSON contract as vigil (what a Python user would deploy
instead). Run by benches/load.py:

    PEER_MODEL_PATH=models/iris/1/model.onnx uvicorn fastapi_server:app --workers 2 \
        --loop uvloop --http httptools
"""

import os

import numpy as np
import onnxruntime as ort
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32,
          "UINT8": np.uint8, "BOOL": np.bool_}
V2 = {np.dtype(v): k for k, v in DTYPES.items()}

options = ort.SessionOptions()
options.intra_op_num_threads = 1
options.inter_op_num_threads = 1
session = ort.InferenceSession(os.environ["PEER_MODEL_PATH"], options, providers=["CPUExecutionProvider"])
outputs = [o.name for o in session.get_outputs()]
app = FastAPI()


@app.get("/v2/health/ready")
async def ready():
    return {"ready": True}


@app.post("/v2/models/{model}/infer")
async def infer(model: str, request: Request):
    body = orjson.loads(await request.body())
    feeds = {i["name"]: np.asarray(i["data"], dtype=DTYPES[i["datatype"]]).reshape(i["shape"])
             for i in body["inputs"]}
    results = session.run(outputs, feeds)
    answer = {"model_name": model, "model_version": "1", "outputs": [
        {"name": n, "datatype": V2[r.dtype], "shape": list(r.shape), "data": r.ravel().tolist()}
        for n, r in zip(outputs, results)]}
    if "id" in body:
        answer["id"] = body["id"]
    return Response(orjson.dumps(answer), media_type="application/json")
