"""Drives a running vigil with the unmodified tritonclient.http client.

Usage: tritonclient_check.py URL REPOSITORY ENGINE

For every loaded model: server and model endpoints, then inference with tritonclient's
defaults (binary tensors both ways) and with JSON, on fresh random inputs, compared
with onnxruntime run in this process on the same model file. Exits non-zero on any
mismatch; prints what it checked.
"""

import json
import os
import sys
import urllib.request

import numpy as np
import onnxruntime as ort
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

url, repo, engine = sys.argv[1], sys.argv[2], sys.argv[3]
client = httpclient.InferenceServerClient(url=url)

assert client.is_server_live()
assert client.is_server_ready()
meta = client.get_server_metadata()
assert meta["name"] == "vigil", meta
# The OIP specification's path for server metadata answers like /v2.
with urllib.request.urlopen(f"http://{url}/v2/") as r:
    assert json.load(r) == meta, meta
for ext in ("binary_tensor_data", "model_configuration", "statistics"):
    assert ext in meta["extensions"], meta

rng = np.random.default_rng(7)
checked = 0
# Every model directory of the repository must be served: a model that is not ready is
# a failure, not a skip.
models = sorted(m for m in os.listdir(repo) if os.path.isdir(os.path.join(repo, m)))
assert models, f"no model directory in {repo}"
for model in models:
    if not client.is_model_ready(model):
        index = client.get_model_repository_index()
        raise SystemExit(f"{model} is not ready on {engine}: {index}")
    md = client.get_model_metadata(model)
    assert md["platform"] == "onnxruntime_onnx", md
    cfg = client.get_model_config(model)
    version = md["versions"][-1]
    assert client.is_model_ready(model, version)
    assert cfg["name"] == model and cfg["backend"] == engine, cfg
    path = os.path.join(repo, model, version, "model.onnx")
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        feeds, inputs = {}, []
        for spec in md["inputs"]:
            shape = [batch if d == -1 else d for d in spec["shape"]]
            dtype = triton_to_np_dtype(spec["datatype"])
            if spec["datatype"] == "BYTES":
                arr = np.array([f"s{i}" for i in range(int(np.prod(shape)))], dtype=object).reshape(shape)
            elif np.issubdtype(dtype, np.floating):
                arr = rng.normal(0, 2, shape).astype(dtype)
            elif dtype == np.bool_:
                arr = rng.integers(0, 2, shape).astype(np.bool_)
            else:
                arr = rng.integers(0, 100, shape).astype(dtype)
            feeds[spec["name"]] = arr
            inp = httpclient.InferInput(spec["name"], shape, spec["datatype"])
            inputs.append(inp)
        names = [o["name"] for o in md["outputs"]]
        # The metadata describes the model file: every input and output, in order.
        assert [i["name"] for i in md["inputs"]] == [i.name for i in sess.get_inputs()], (model, md)
        assert names == [o.name for o in sess.get_outputs()], (model, md)
        want = dict(zip(names, sess.run(names, feeds)))
        for binary in (True, False):
            for inp in inputs:
                inp.set_data_from_numpy(feeds[inp.name()], binary_data=binary)
            outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in names]
            res = client.infer(model, inputs, outputs=outputs, request_id=f"r{checked}")
            assert res.get_response()["model_name"] == model
            assert res.get_response()["id"] == f"r{checked}"
            answered = [o["name"] for o in res.get_response()["outputs"]]
            assert answered == names, (model, answered, names)
            for n in names:
                got = res.as_numpy(n)
                exp = want[n]
                assert got.shape == exp.shape, (model, n, got.shape, exp.shape)
                if exp.dtype.kind == "f":
                    np.testing.assert_allclose(got, exp, rtol=1e-5, atol=1e-5, err_msg=f"{model}/{n}")
                elif exp.dtype.kind == "O":
                    assert [x.decode() if isinstance(x, bytes) else x for x in got.reshape(-1)] == list(exp.reshape(-1))
                else:
                    np.testing.assert_array_equal(got, exp, err_msg=f"{model}/{n}")
            checked += 1
    stats = client.get_inference_statistics(model)
    s = stats["model_stats"][0]
    assert int(s["inference_stats"]["success"]["count"]) >= 4, s
    last_model = model
    print(f"ok {model} v{version} on {engine}: {len(md['inputs'])} inputs, {len(names)} outputs")

# Errors come back as exceptions with the server's message.
try:
    client.get_model_metadata("no_such_model")
    raise SystemExit("metadata of an unknown model did not fail")
except InferenceServerException as e:
    # Triton's own text, first: clients match on it.
    assert e.message().startswith("Request for unknown model: 'no_such_model' is not found"), e
try:
    bad = httpclient.InferInput("nope", [1, 4], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 4), np.float32))
    client.infer(last_model, [bad])
    raise SystemExit("an unknown input did not fail")
except InferenceServerException as e:
    assert e.message().startswith(f"unexpected inference input 'nope' for model '{last_model}'"), e

assert checked == 4 * len(models), (checked, models)
print(f"tritonclient: {checked} inference checks passed")
