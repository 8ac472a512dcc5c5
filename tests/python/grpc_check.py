"""Drives a running vigil's gRPC front with the unmodified tritonclient.grpc client (and,
for typed contents and malformed messages, Triton's own generated stubs that ship with it).

Usage: grpc_check.py MODE GRPC_ADDR [ARGS...]

  serve GRPC_ADDR REPOSITORY ENGINE   every RPC on every model of the repository, raw and
                                      typed contents both ways, compared with onnxruntime
                                      run here; error codes; malformed messages
  auth GRPC_ADDR API_TOKEN ADMIN_TOKEN  tokens in `authorization` metadata
  denied GRPC_ADDR                    control plane on a non-loopback listener, no admin token
  canary GRPC_ADDR MODEL HEADER       sticky key from metadata; prints version per key
  watch GRPC_ADDR                     grpc.health.v1 Watch: prints each status it receives

Exits non-zero on any mismatch; prints what it checked.
"""

import os
import sys
import threading

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

mode, addr = sys.argv[1], sys.argv[2]


def expect_error(code, needle, f, *args, **kwargs):
    """Runs f and checks it fails with gRPC status `code` and a message containing `needle`."""
    try:
        f(*args, **kwargs)
    except InferenceServerException as e:
        assert e.status() == f"StatusCode.{code}", (code, e.status(), e.message())
        assert needle in e.message(), (needle, e.message())
        return e.message()
    except grpc.RpcError as e:
        assert e.code().name == code, (code, e.code(), e.details())
        assert needle in e.details(), (needle, e.details())
        return e.details()
    raise SystemExit(f"expected {code} ({needle}), the call succeeded")


# Typed contents: the field of InferTensorContents each datatype uses.
FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def typed_request(model, feeds, specs, binary_output):
    req = service_pb2.ModelInferRequest(model_name=model, id="typed")
    for spec in specs:
        arr = feeds[spec["name"]]
        t = req.inputs.add(name=spec["name"], datatype=spec["datatype"], shape=list(arr.shape))
        flat = arr.reshape(-1)
        if spec["datatype"] == "BYTES":
            values = [x.encode() if isinstance(x, str) else bytes(x) for x in flat]
        else:
            values = flat.tolist()
        getattr(t.contents, FIELD[spec["datatype"]]).extend(values)
    if not binary_output:
        req.parameters["binary_data_output"].bool_param = False
    return req


def typed_output(out):
    dt = out.datatype
    values = list(getattr(out.contents, FIELD[dt]))
    if dt == "BYTES":
        return np.array(values, dtype=object).reshape(tuple(out.shape))
    return np.array(values, dtype=triton_to_np_dtype(dt)).reshape(tuple(out.shape))


def compare(model, name, got, exp):
    assert got.shape == exp.shape, (model, name, got.shape, exp.shape)
    if exp.dtype.kind == "f":
        np.testing.assert_allclose(got, exp, rtol=1e-5, atol=1e-5, err_msg=f"{model}/{name}")
    elif exp.dtype.kind == "O":
        g = [x.decode() if isinstance(x, bytes) else x for x in got.reshape(-1)]
        e = [x.decode() if isinstance(x, bytes) else x for x in exp.reshape(-1)]
        assert g == e, (model, name, g, e)
    else:
        np.testing.assert_array_equal(got, exp.astype(got.dtype), err_msg=f"{model}/{name}")


def serve(repo, engine):
    import onnxruntime as ort

    client = grpcclient.InferenceServerClient(url=addr)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(addr))
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "vigil", meta
    for ext in ("binary_tensor_data", "model_configuration", "statistics", "model_repository"):
        assert ext in meta["extensions"], meta
    rng = np.random.default_rng(11)
    checked = 0
    models = sorted(m for m in os.listdir(repo) if os.path.isdir(os.path.join(repo, m)))
    assert models, f"no model directory in {repo}"
    index = client.get_model_repository_index(as_json=True)
    indexed = {m["name"] for m in index["models"]}
    assert set(models) <= indexed, (models, index)
    for model in models:
        assert client.is_model_ready(model), model
        md = client.get_model_metadata(model, as_json=True)
        cfg = client.get_model_config(model, as_json=True)["config"]
        version = md["versions"][-1]
        assert client.is_model_ready(model, version)
        assert cfg["name"] == model and cfg["backend"] == engine, cfg
        assert [i["name"] for i in cfg["input"]] == [i["name"] for i in md["inputs"]], cfg
        path = os.path.join(repo, model, version, "model.onnx")
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        names = [o["name"] for o in md["outputs"]]
        assert [i["name"] for i in md["inputs"]] == [i.name for i in sess.get_inputs()], md
        assert names == [o.name for o in sess.get_outputs()], md
        for batch in (1, 3):
            feeds, inputs = {}, []
            for spec in md["inputs"]:
                shape = [batch if int(d) == -1 else int(d) for d in spec["shape"]]
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
                inp = grpcclient.InferInput(spec["name"], shape, spec["datatype"])
                inp.set_data_from_numpy(arr)
                inputs.append(inp)
            want = dict(zip(names, sess.run(names, feeds)))
            # tritonclient's way: raw_input_contents in, raw_output_contents out.
            outputs = [grpcclient.InferRequestedOutput(n) for n in reversed(names)]
            res = client.infer(model, inputs, outputs=outputs, request_id=f"r{checked}")
            r = res.get_response()
            assert r.model_name == model and r.id == f"r{checked}", r
            assert [o.name for o in r.outputs] == list(reversed(names)), r.outputs
            for n in names:
                compare(model, n, res.as_numpy(n), want[n])
            # Typed contents in, raw out; typed in, typed out (binary_data_output = false).
            for binary in (True, False):
                resp = stub.ModelInfer(typed_request(model, feeds, md["inputs"], binary))
                assert resp.id == "typed" and resp.model_version == version, resp
                assert [o.name for o in resp.outputs] == names
                if binary:
                    assert len(resp.raw_output_contents) == len(names)
                else:
                    assert len(resp.raw_output_contents) == 0
                    for o in resp.outputs:
                        compare(model, o.name, typed_output(o), want[o.name])
            checked += 1
        stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
        assert int(stats["inference_stats"]["success"]["count"]) >= 6, stats
        print(f"ok {model} v{version} on {engine}: {len(md['inputs'])} inputs, {len(names)} outputs")
        last_model, last_md, last_inputs = model, md, inputs

    # Errors: the HTTP front's messages, with gRPC codes.
    expect_error("NOT_FOUND", "Request for unknown model: 'no_such_model' is not found", client.get_model_metadata, "no_such_model")
    assert not client.is_model_ready("no_such_model"), "an unknown model is not ready (no error, as Triton)"
    expect_error("NOT_FOUND", f"Request for unknown model: '{last_model}' version 99 is not found", client.get_model_config, last_model, "99")
    expect_error("INVALID_ARGUMENT", "not a positive integer", client.get_model_metadata, last_model, "-3")
    bad = grpcclient.InferInput("nope", [1, 4], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 4), np.float32))
    expect_error("INVALID_ARGUMENT", f"unexpected inference input 'nope' for model '{last_model}'", client.infer, last_model, [bad])
    expect_error("NOT_FOUND", "Request for unknown model: 'no_such_model' is not found", client.infer, "no_such_model", [bad])
    expect_error("INVALID_ARGUMENT", f"unexpected inference output 'zz' for model '{last_model}'", client.infer, last_model,
                 last_inputs, outputs=[grpcclient.InferRequestedOutput("zz")])
    # The same output asked twice would be answered twice: refused.
    dup = last_md["outputs"][0]["name"]
    expect_error("INVALID_ARGUMENT", f"output '{dup}' is requested more than once for model '{last_model}'", client.infer,
                 last_model, last_inputs, outputs=[grpcclient.InferRequestedOutput(dup)] * 2)

    # Malformed messages on the first input of the last model: each INVALID_ARGUMENT.
    spec = last_md["inputs"][0]
    base_shape = [1 if int(d) == -1 else int(d) for d in spec["shape"]]
    others = last_md["inputs"][1:]

    def raw_request(shape, raw, datatype=None):
        req = service_pb2.ModelInferRequest(model_name=last_model)
        req.inputs.add(name=spec["name"], datatype=datatype or spec["datatype"], shape=shape)
        req.raw_input_contents.append(raw)
        for o in others:
            s = [1 if int(d) == -1 else int(d) for d in o["shape"]]
            req.inputs.add(name=o["name"], datatype=o["datatype"], shape=s)
            n = int(np.prod(s))
            if o["datatype"] == "BYTES":
                req.raw_input_contents.append(b"".join(b"\x01\x00\x00\x00a" for _ in range(n)))
            else:
                req.raw_input_contents.append(bytes(n * np.dtype(triton_to_np_dtype(o["datatype"])).itemsize))
        return req

    n = int(np.prod(base_shape))
    cases = [
        (raw_request(base_shape, b"\x00" * 3), "raw_input_contents has 3 bytes" if spec["datatype"] != "BYTES" else "holds at most 0 BYTES"),
        (raw_request([2**31, 2**31, 2**31] + base_shape[3:], b""), "too large"),
        (raw_request([-1] + base_shape[1:], b""), "is negative"),
        (raw_request([2**40] + base_shape[1:], b""), "--max-tensor-elements"),
        (raw_request(base_shape, b"", datatype="FP16"), "unknown datatype 'FP16'"),
    ]
    req = raw_request(base_shape, b"\x00" * 64)
    req.raw_input_contents.append(b"extra")
    cases.append((req, "raw_input_contents has"))
    req = service_pb2.ModelInferRequest(model_name=last_model)
    req.inputs.add(name=spec["name"], datatype=spec["datatype"], shape=base_shape)
    cases.append((req, "needs"))
    for req, needle in cases:
        expect_error("INVALID_ARGUMENT", needle, stub.ModelInfer, req)
    print(f"ok {len(cases)} malformed messages refused with INVALID_ARGUMENT")
    # A message over --max-body-bytes is refused before any handler runs.
    if os.environ.get("VIGIL_CHECK_MAX_MESSAGE"):
        limit = int(os.environ["VIGIL_CHECK_MAX_MESSAGE"])
        # gRPC's status-code table, grpc-core (Triton) and grpc-go: RESOURCE_EXHAUSTED,
        # with the limit and the flag that sets it.
        expect_error("RESOURCE_EXHAUSTED", f"vs. {limit} bytes): the server takes messages of up to {limit} bytes (--max-body-bytes", stub.ModelInfer,
                     raw_request(base_shape, b"\x00" * (limit + 1)))
        print("ok an oversized message is RESOURCE_EXHAUSTED")

    # Repository control from loopback with no admin token: in poll mode the repository
    # decides what is served; a load rescans.
    expect_error("FAILED_PRECONDITION", "--model-control explicit", client.unload_model, last_model)
    client.load_model(last_model)
    assert client.is_model_ready(last_model)
    expect_error("NOT_FOUND", "failed to load 'ghost', failed to poll from model repository", client.load_model, "ghost")
    expect_error("INVALID_ARGUMENT", "failed to parse the model configuration override", client.load_model, last_model, config="{")
    assert client.is_server_live()
    print(f"grpc: {checked} inference checks passed")


def auth(api, admin):
    client = grpcclient.InferenceServerClient(url=addr)
    bearer = lambda t: {"authorization": f"Bearer {t}"}
    # Health is open.
    assert client.is_server_live()
    expect_error("UNAUTHENTICATED", "bearer token", client.get_server_metadata)
    expect_error("UNAUTHENTICATED", "bearer token", client.get_model_metadata, "iris", headers=bearer("wrong"))
    assert client.get_server_metadata(headers=bearer(api)).name == "vigil"
    assert client.get_server_metadata(headers=bearer(admin)).name == "vigil"
    inp = grpcclient.InferInput("X", [1, 4], "FP32")
    inp.set_data_from_numpy(np.ones((1, 4), np.float32))
    expect_error("UNAUTHENTICATED", "bearer token", client.infer, "iris", [inp])
    assert client.infer("iris", [inp], headers=bearer(api)).get_response().model_name == "iris"
    # Control plane: the admin token only.
    expect_error("UNAUTHENTICATED", "bearer token", client.get_model_repository_index, headers=bearer(api))
    expect_error("UNAUTHENTICATED", "bearer token", client.unload_model, "iris", headers=bearer(api))
    assert client.is_model_ready("iris", headers=bearer(api))
    client.get_model_repository_index(headers=bearer(admin))
    # --model-control explicit: unload, then load again.
    client.unload_model("iris", headers=bearer(admin))
    assert not client.is_model_ready("iris", headers=bearer(api)), "unloaded: not ready"
    client.load_model("iris", headers=bearer(admin))
    assert client.is_model_ready("iris", headers=bearer(api))
    print("grpc auth checks passed")


def denied():
    client = grpcclient.InferenceServerClient(url=addr)
    expect_error("PERMISSION_DENIED", "--admin-token", client.unload_model, "iris")
    expect_error("PERMISSION_DENIED", "--admin-token", client.get_model_repository_index)
    assert client.is_model_ready("iris")
    print("grpc denied checks passed")


def canary(model, header):
    client = grpcclient.InferenceServerClient(url=addr)
    inp = grpcclient.InferInput("X", [1, 4], "FP32")
    inp.set_data_from_numpy(np.ones((1, 4), np.float32))
    for key in [f"user-{i}" for i in range(40)]:
        versions = {
            client.infer(model, [inp], headers={header: key}).get_response().model_version
            for _ in range(3)
        }
        assert len(versions) == 1, (key, versions)
        print(f"key {key} version {versions.pop()}")
    print("grpc canary checks passed")


def watch():
    channel = grpc.insecure_channel(addr)
    # grpc.health.v1.Health/Watch with HealthCheckRequest{service: ""}; the answer's
    # field 1 is the status (1 SERVING, 2 NOT_SERVING).
    call = channel.unary_stream(
        "/grpc.health.v1.Health/Watch",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    check = channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    assert check(b"") == b"\x08\x01", "Check is not SERVING"
    name = b"inference.GRPCInferenceService"
    assert check(b"\x0a" + bytes([len(name)]) + name) == b"\x08\x01"
    # Reflection lists the services.
    refl = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    listed = b"".join(refl(iter([b"\x3a\x00"])))
    assert name in listed and b"grpc.health.v1.Health" in listed, listed
    print("reflection lists", name.decode(), flush=True)
    # "to-end": keep reading after NOT_SERVING until the server ends the stream.
    to_end = len(sys.argv) > 3 and sys.argv[3] == "to-end"
    for msg in call(b""):
        status = {b"\x08\x01": "SERVING", b"\x08\x02": "NOT_SERVING"}.get(msg, repr(msg))
        print(f"health {status}", flush=True)
        if status == "NOT_SERVING" and not to_end:
            break
    if to_end:
        print("watch ended by the server", flush=True)


def stall():
    """Opens a ModelInfer stream and never sends the message: the server must end it
    (DEADLINE_EXCEEDED naming --body-timeout), not hold it. No client deadline is set
    (grpc-timeout would end it from the client's side); a watchdog stands in."""
    channel = grpc.insecure_channel(addr)
    call = channel.stream_unary(
        "/inference.GRPCInferenceService/ModelInfer",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    never = threading.Event()

    def nothing():
        never.wait(60)
        return
        yield

    future = call.future(nothing())
    print("stream open", flush=True)
    try:
        future.result(timeout=float(os.environ.get("VIGIL_CHECK_STALL_WATCHDOG", "20")))
        raise SystemExit("a stream that sent nothing got an answer")
    except grpc.FutureTimeoutError:
        never.set()
        raise SystemExit("the server held a stream that sent nothing")
    except grpc.RpcError as e:
        never.set()
        assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, (e.code(), e.details())
        assert "--body-timeout" in e.details(), e.details()
        print(f"stalled stream ended: {e.code().name}: {e.details()}", flush=True)
    channel.close()


if mode == "serve":
    serve(sys.argv[3], sys.argv[4])
elif mode == "auth":
    auth(sys.argv[3], sys.argv[4])
elif mode == "denied":
    denied()
elif mode == "canary":
    canary(sys.argv[3], sys.argv[4])
elif mode == "watch":
    watch()
elif mode == "stall":
    stall()
else:
    raise SystemExit(f"unknown mode {mode}")
