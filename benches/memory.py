"""Memory per request: peak RSS growth of the server per body byte, worst-case bodies.

For every datatype and both encodings (JSON, and JSON header + binary tensors) one body of
about --body-mb MB made of the smallest elements the encoding allows ("0," in JSON, "" for
BYTES, 4-byte empty strings in binary) is sent to a fresh `vigil serve` on
tests/data/repo. Each body passes the signature checks, so its data is decoded in full,
and is then refused (a later input with a bad element, or one element too many), so that
what is measured is decoding, not the model. Then the bodies the signature refuses
before decoding (BYTES to an FP32 input, the case seen on main: ~400 MB for 57 MB), and
huge shapes with tiny bodies.

Growth is VmHWM (/proc/<pid>/status) after the request minus VmHWM after a warm-up
request; the ratio is growth / body length. The body itself is part of the growth.

    python3 benches/memory.py [--vigil target/release/vigil] [--body-mb 40] [--only fp32]

Prints a table; record it in benches/RESULTS.md with the date and machine.
"""

import argparse
import http.client
import json
import os
import re
import struct
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# dtypes model inputs: x_<name> of shape [n, 3]; (V2 name, binary element size, JSON element).
NUMERIC = {
    "fp32": ("FP32", 4, "0"), "fp64": ("FP64", 8, "0"),
    "int8": ("INT8", 1, "0"), "int16": ("INT16", 2, "0"),
    "int32": ("INT32", 4, "0"), "int64": ("INT64", 8, "0"),
    "uint8": ("UINT8", 1, "0"), "uint16": ("UINT16", 2, "0"),
    "uint32": ("UINT32", 4, "0"), "uint64": ("UINT64", 8, "0"),
    "bool": ("BOOL", 1, "true"),
}


def small(name, bad=False):
    dt, _, el = NUMERIC[name]
    data = [[json.loads(el)] * 3]
    if bad:  # 300 fits no 8-bit type
        data = [[1, 2, 300]]
    return {"name": f"x_{name}", "shape": [1, 3], "datatype": dt, "data": data}


def dtypes_body(name, binary, body_bytes):
    """All eleven inputs; x_<name> big and first, a bad 8-bit input last."""
    dt, size, el = NUMERIC[name]
    per = size if binary else len(el) + 1
    rows = max(1, body_bytes // (3 * per))
    n = rows * 3
    bad = "uint8" if name == "int8" else "int8"
    others = [small(o) for o in NUMERIC if o not in (name, bad)] + [small(bad, bad=True)]
    if binary:
        big = {"name": f"x_{name}", "shape": [rows, 3], "datatype": dt,
               "parameters": {"binary_data_size": n * size}}
        header = json.dumps({"inputs": [big] + others}).encode()
        return header + bytes(n * size), len(header)
    text = ",".join([el] * n)
    prefix = json.dumps({"inputs": [{"name": f"x_{name}", "shape": [rows, 3], "datatype": dt,
                                     "data": [0]}]}).encode().rsplit(b"[0]", 1)[0]
    rest = json.dumps(others).encode()[1:-1]
    return prefix + b"[" + text.encode() + b"]}," + rest + b"]}", None


def strings_body(binary, body_bytes, name="text", shape_of=lambda n: [n - 1], datatype="BYTES"):
    """n empty strings; by default the shape claims one fewer, so all n are decoded."""
    if binary:
        n = body_bytes // 4
        header = json.dumps({"inputs": [{"name": name, "shape": shape_of(n), "datatype": datatype,
                                         "parameters": {"binary_data_size": 4 * n}}]}).encode()
        return header + bytes(4 * n), len(header)
    n = body_bytes // 3
    head = json.dumps({"inputs": [{"name": name, "shape": shape_of(n), "datatype": datatype,
                                   "data": [0]}]}).encode().rsplit(b"[0]", 1)[0]
    return head + b"[" + b",".join([b'""'] * n) + b"]}]}", None


def cases(body_bytes):
    for name in NUMERIC:
        for binary in (False, True):
            yield f"{name} (dtypes)", binary, "dtypes", lambda n=name, b=binary: dtypes_body(n, b, body_bytes)
    for binary in (False, True):
        yield "bytes (strings)", binary, "strings", lambda b=binary: strings_body(b, body_bytes)
    # Refused by the signature before decoding: BYTES to the FP32 input.
    for binary in (False, True):
        yield "bytes -> FP32", binary, "dtypes", lambda b=binary: strings_body(
            b, body_bytes, name="x_fp32", shape_of=lambda n: [n // 3, 3])
    # Huge shapes, tiny bodies.
    yield "shape 20Mx3, 1 elt", False, "dtypes", lambda: (json.dumps({"inputs": [
        {"name": "x_fp32", "shape": [20_000_000, 3], "datatype": "FP32", "data": [0]}]}).encode(), None)
    hdr = json.dumps({"inputs": [{"name": "x_fp32", "shape": [20_000_000, 3], "datatype": "FP32",
                                  "parameters": {"binary_data_size": 12}}]}).encode()
    yield "shape 20Mx3, 1 elt", True, "dtypes", lambda: (hdr + bytes(12), len(hdr))


def vm_hwm_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def post(addr, path, body, header_len):
    host, port = addr.rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=120)
    headers = {"Content-Type": "application/octet-stream" if header_len else "application/json"}
    if header_len is not None:
        headers["Inference-Header-Content-Length"] = str(header_len)
    c.request("POST", path, body=body, headers=headers)
    r = c.getresponse()
    text = r.read()
    c.close()
    return r.status, text


def warm_up(addr):
    status, text = post(addr, "/v2/models/dtypes/infer",
                        json.dumps({"inputs": [small(o) for o in NUMERIC]}).encode(), None)
    assert status == 200, text
    status, text = post(addr, "/v2/models/strings/infer", json.dumps(
        {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["a", ""]}]}).encode(), None)
    assert status == 200, text


def start(vigil, backend):
    cmd = [vigil, "serve", "--repository", os.path.join(ROOT, "tests", "data", "repo"),
           "--http-addr", "127.0.0.1:0", "--backend", backend]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "VIGIL_LOG": "info"})
    addr = None
    for line in proc.stderr:
        m = re.search(r"listening on http://(\S+)", line)
        if m:
            addr = m.group(1)
        if "repository loaded" in line:
            break
    deadline = time.monotonic() + 30
    while True:
        try:
            c = http.client.HTTPConnection(*addr.rsplit(":", 1), timeout=5)
            c.request("GET", "/v2/health/ready")
            if c.getresponse().status == 200:
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("vigil never became ready")
        time.sleep(0.05)
    return proc, addr


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vigil", default=os.path.join(ROOT, "target", "release", "vigil"))
    ap.add_argument("--backend", default="tract", choices=["tract", "ort"])
    ap.add_argument("--body-mb", type=float, default=40)
    ap.add_argument("--only", help="run only cases whose name contains this")
    args = ap.parse_args()
    body_bytes = int(args.body_mb * 1e6)
    print(f"{'case':<20} {'encoding':<8} {'body MB':>8} {'status':>6} {'growth MB':>10} {'x body':>7}  answer")
    worst = 0.0
    for label, binary, model, make in cases(body_bytes):
        if args.only and args.only not in label:
            continue
        body, header_len = make()
        proc, addr = start(args.vigil, args.backend)
        try:
            warm_up(addr)
            before = vm_hwm_kb(proc.pid)
            status, text = post(addr, f"/v2/models/{model}/infer", body, header_len)
            growth = (vm_hwm_kb(proc.pid) - before) * 1024
        finally:
            proc.terminate()
            proc.wait()
        try:
            answer = json.loads(text).get("error", "")[:70]
        except ValueError:
            answer = text[:70]
        ratio = growth / len(body)
        if len(body) > 1e6:
            worst = max(worst, ratio)
        enc = "binary" if binary else "json"
        print(f"{label:<20} {enc:<8} {len(body) / 1e6:8.1f} {status:>6} {growth / 1e6:10.1f} "
              f"{ratio:7.2f}  {answer}", flush=True)
    print(f"worst growth / body (bodies over 1 MB): {worst:.2f}")


if __name__ == "__main__":
    sys.exit(main())
