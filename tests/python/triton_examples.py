"""The calls Triton's own Python client examples make, with their expectations, against
vigil serving Triton's quick-start `simple` model (INPUT0, INPUT1 INT32[-1,16] → OUTPUT0
sum, OUTPUT1 difference) from a Triton repository with a config.pbtxt.

    triton_examples.py HTTP_ADDR GRPC_ADDR

Over HTTP and gRPC: synchronous, callback-async and asyncio inference with JSON/typed and
binary/raw tensors and requested outputs; health and metadata (query parameters
included); statistics; the unknown-model errors clients match on ("Request for unknown
model"); model control in explicit mode: load, load with a configuration override (a
malformed one fails with "failed to load"), unload, and a load of a model the repository
does not hold. The server's metadata name is vigil's own ("vigil", not "triton"). Exits
non-zero on the first failed expectation.
"""

import asyncio
import queue
import sys

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio
from tritonclient.utils import InferenceServerException

HTTP, GRPC = sys.argv[1], sys.argv[2]
MODEL = "simple"
A = np.arange(16, dtype=np.int32).reshape(1, 16)
B = np.ones((1, 16), dtype=np.int32)


def inputs(mod, binary=None):
    xs = [mod.InferInput("INPUT0", [1, 16], "INT32"), mod.InferInput("INPUT1", [1, 16], "INT32")]
    for x, data in zip(xs, (A, B)):
        if binary is None:
            x.set_data_from_numpy(data)
        else:
            x.set_data_from_numpy(data, binary_data=binary)
    return xs


def outputs(mod, binary=None):
    if binary is None:
        return [mod.InferRequestedOutput("OUTPUT0"), mod.InferRequestedOutput("OUTPUT1")]
    return [mod.InferRequestedOutput("OUTPUT0", binary_data=binary),
            mod.InferRequestedOutput("OUTPUT1", binary_data=binary)]


def check_sum_diff(result, what):
    s, d = result.as_numpy("OUTPUT0"), result.as_numpy("OUTPUT1")
    assert s is not None and d is not None, what
    assert s.dtype == np.int32 and s.shape == (1, 16), (what, s.dtype, s.shape)
    assert (s == A + B).all() and (d == A - B).all(), (what, s, d)


def unknown_model(f, what):
    try:
        f("wrong_model_name")
    except InferenceServerException as e:
        assert "Request for unknown model" in e.message(), (what, e.message())
    else:
        raise AssertionError(f"{what}: no error for an unknown model")


def http_sync():
    c = httpclient.InferenceServerClient(url=HTTP)
    for binary in (True, False):
        r = c.infer(MODEL, inputs(httpclient, binary), outputs=outputs(httpclient, binary),
                    request_id="ex1", query_params={"test_1": 1})
        check_sum_diff(r, f"http sync binary={binary}")
        assert r.get_response()["id"] == "ex1"
    # Only one output asked for: only it comes back.
    r = c.infer(MODEL, inputs(httpclient), outputs=[httpclient.InferRequestedOutput("OUTPUT1")])
    assert r.as_numpy("OUTPUT0") is None and (r.as_numpy("OUTPUT1") == A - B).all()
    unknown_model(lambda m: c.infer(m, inputs(httpclient)), "http infer")
    print("http sync ok")


def http_async():
    c = httpclient.InferenceServerClient(url=HTTP, concurrency=4)
    pending = [c.async_infer(MODEL, inputs(httpclient), outputs=outputs(httpclient)) for _ in range(8)]
    for p in pending:
        check_sum_diff(p.get_result(), "http async_infer")
    print("http async ok")


async def http_aio():
    async with httpaio.InferenceServerClient(url=HTTP) as c:
        assert await c.is_server_live() and await c.is_server_ready()
        assert await c.is_model_ready(MODEL)
        results = await asyncio.gather(*[c.infer(MODEL, inputs(httpaio)) for _ in range(4)])
        for r in results:
            check_sum_diff(r, "http aio")
        meta = await c.get_model_metadata(MODEL)
        assert meta["name"] == MODEL
    print("http aio ok")


def http_health_metadata():
    c = httpclient.InferenceServerClient(url=HTTP)
    assert c.is_server_live(query_params={"test_1": 1, "test_2": 2})
    assert c.is_server_ready() and c.is_model_ready(MODEL)
    meta = c.get_server_metadata()
    assert meta["name"] == "vigil" and meta["version"], meta
    meta = c.get_model_metadata(MODEL, query_params={"test_1": 1, "test_2": 2})
    assert meta["name"] == MODEL and meta["platform"] == "onnxruntime_onnx", meta
    assert [i["name"] for i in meta["inputs"]] == ["INPUT0", "INPUT1"], meta
    unknown_model(c.get_model_metadata, "http model metadata")
    assert not c.is_model_ready("wrong_model_name")
    cfg = c.get_model_config(MODEL)
    assert cfg["name"] == MODEL and cfg["max_batch_size"] == 8, cfg
    stats = c.get_inference_statistics(MODEL)["model_stats"]
    assert stats and all(s["name"] == MODEL for s in stats), stats
    assert sum(int(s["inference_count"]) for s in stats) > 0, stats
    print("http health and metadata ok")


def grpc_sync():
    c = grpcclient.InferenceServerClient(url=GRPC)
    r = c.infer(MODEL, inputs(grpcclient), outputs=outputs(grpcclient), request_id="g1")
    check_sum_diff(r, "grpc sync")
    assert r.get_response().id == "g1"
    unknown_model(lambda m: c.infer(m, inputs(grpcclient)), "grpc infer")
    print("grpc sync ok")


def grpc_async():
    c = grpcclient.InferenceServerClient(url=GRPC)
    done = queue.Queue()
    for _ in range(8):
        c.async_infer(MODEL, inputs(grpcclient), callback=lambda result, error: done.put((result, error)),
                      outputs=outputs(grpcclient))
    for _ in range(8):
        result, error = done.get(timeout=30)
        assert error is None, error
        check_sum_diff(result, "grpc async_infer")
    print("grpc async ok")


async def grpc_aio():
    async with grpcaio.InferenceServerClient(url=GRPC) as c:
        assert await c.is_server_live() and await c.is_server_ready()
        results = await asyncio.gather(*[c.infer(MODEL, inputs(grpcaio)) for _ in range(4)])
        for r in results:
            check_sum_diff(r, "grpc aio")
    print("grpc aio ok")


def grpc_health_metadata():
    c = grpcclient.InferenceServerClient(url=GRPC)
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready(MODEL)
    assert c.get_server_metadata().name == "vigil"
    meta = c.get_model_metadata(MODEL)
    assert meta.name == MODEL and meta.platform == "onnxruntime_onnx", meta
    unknown_model(c.get_model_metadata, "grpc model metadata")
    stats = c.get_inference_statistics(MODEL, as_json=True)["model_stats"]
    assert sum(int(s["inference_count"]) for s in stats) > 0, stats
    print("grpc health and metadata ok")


def model_control():
    c = httpclient.InferenceServerClient(url=HTTP)
    names = {m["name"] for m in c.get_model_repository_index()}
    assert names == {MODEL, "other"}, names
    c.load_model(MODEL)
    assert c.is_model_ready(MODEL)
    try:
        c.load_model(MODEL, config='"parameters": {"config": {{"max_batch_size": "16"}}}')
    except InferenceServerException as e:
        assert "failed to load" in e.message(), e.message()
    else:
        raise AssertionError("a malformed configuration override was accepted")
    assert c.get_model_config(MODEL)["max_batch_size"] == 8
    c.load_model(MODEL, config='{"max_batch_size":"16"}')
    assert c.get_model_config(MODEL)["max_batch_size"] == 16
    c.unload_model(MODEL)
    assert not c.is_model_ready(MODEL)
    try:
        c.load_model("wrong_model_name")
    except InferenceServerException as e:
        assert "failed to load" in e.message(), e.message()
    else:
        raise AssertionError("loading an unknown model succeeded")
    # The same over gRPC.
    g = grpcclient.InferenceServerClient(url=GRPC)
    g.load_model(MODEL)
    assert g.is_model_ready(MODEL)
    try:
        g.load_model(MODEL, config='"parameters": {"config": {{"max_batch_size": "16"}}}')
    except InferenceServerException as e:
        assert "failed to load" in e.message(), e.message()
    else:
        raise AssertionError("a malformed configuration override was accepted over gRPC")
    g.load_model(MODEL, config='{"max_batch_size":"4"}')
    assert g.get_model_config(MODEL, as_json=True)["config"]["max_batch_size"] == 4
    assert c.get_model_config(MODEL)["max_batch_size"] == 4
    g.unload_model(MODEL)
    assert not g.is_model_ready(MODEL)
    try:
        g.load_model("wrong_model_name")
    except InferenceServerException as e:
        assert "failed to load" in e.message(), e.message()
    else:
        raise AssertionError("loading an unknown model over gRPC succeeded")
    print("model control ok")


if __name__ == "__main__":
    if sys.argv[3:] == ["control"]:
        model_control()
    else:
        http_sync()
        http_async()
        asyncio.run(http_aio())
        http_health_metadata()
        grpc_sync()
        grpc_async()
        asyncio.run(grpc_aio())
        grpc_health_metadata()
    print("triton examples passed")
