"""Triton's model-repository extension through the unmodified tritonclient.http client.

Usage: repository_check.py URL [ADMIN_TOKEN]
(vigil in explicit mode with iris loaded, cnn not; with a token, vigil runs with
--admin-token and load/unload must carry it)
"""

import sys

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

client = httpclient.InferenceServerClient(url=sys.argv[1])
token = sys.argv[2] if len(sys.argv) > 2 else None
admin = {"Authorization": f"Bearer {token}"} if token else None
if token:
    try:
        client.load_model("cnn")
        raise SystemExit("load without the admin token succeeded")
    except InferenceServerException as e:
        assert "bearer token" in str(e), e
assert "model_repository" in client.get_server_metadata()["extensions"]

if token:
    # The whole repository API is behind the admin token, the index included.
    try:
        client.get_model_repository_index()
        raise SystemExit("the repository index answered without the admin token")
    except InferenceServerException as e:
        assert "bearer token" in str(e), e
index = client.get_model_repository_index(headers=admin)
rows = {(r["name"], r.get("version")): r for r in index}
assert rows[("iris", "2")]["state"] == "READY", index
assert rows[("iris", "1")]["state"] == "UNAVAILABLE", index
assert rows[("cnn", "1")]["state"] == "UNAVAILABLE" and rows[("cnn", "1")]["reason"] == "unloaded", index

assert client.is_model_ready("iris")
assert not client.is_model_ready("cnn")
client.load_model("cnn", headers=admin)
assert client.is_model_ready("cnn")
x = httpclient.InferInput("input", [2, 1, 28, 28], "FP32")
x.set_data_from_numpy(np.zeros((2, 1, 28, 28), np.float32))
assert client.infer("cnn", [x]).as_numpy("logits").shape == (2, 10)
ready = client.get_model_repository_index(headers=admin)
assert any(r["name"] == "cnn" and r["state"] == "READY" for r in ready), ready

client.unload_model("cnn", headers=admin)
assert not client.is_model_ready("cnn")
try:
    client.infer("cnn", [x])
    raise SystemExit("inference on an unloaded model succeeded")
except InferenceServerException as e:
    assert e.message().startswith("Request for unknown model: 'cnn' is not found"), e

try:
    client.load_model("no_such_model", headers=admin)
    raise SystemExit("loading a missing model succeeded")
except InferenceServerException as e:
    assert e.message().startswith(
        "failed to load 'no_such_model', failed to poll from model repository"
    ), e

print("repository API checks passed")
