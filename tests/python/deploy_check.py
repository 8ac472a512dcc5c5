"""Validates deploy/ offline: the Kubernetes manifests against the Kubernetes schemas
(kubernetes-validate, strict), the KServe and Prometheus-Operator objects (CRDs, whose
schemas are not bundled) structurally with their containers validated as core Pods, and
vigil-specific promises: probes on the V2 health endpoints, a termination grace above
preStop + --shutdown-grace, a volume for --state-dir, the payload log on a shared
ReadWriteMany volume with VIGIL_PAYLOAD_REPLICA from the pod's name, every container's arguments
accepted by the real `vigil serve`, the Dockerfile's COPY sources present.

usage: deploy_check.py VIGIL_BINARY   (prints what it checked; exits non-zero on a failure)
"""

import copy
import os
import re
import subprocess
import sys
import tempfile

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(ROOT, "deploy")
K8S_VERSION = "1.30.0"


def fail(msg):
    raise SystemExit(f"deploy check: {msg}")


def validate(docs, what):
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump_all(docs, f)
    r = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "-k", K8S_VERSION, f.name],
                       capture_output=True, text=True)
    os.unlink(f.name)
    if r.returncode != 0 or "failed" in r.stdout.lower():
        fail(f"{what} does not validate against Kubernetes {K8S_VERSION}:\n{r.stdout}{r.stderr}")
    return r.stdout.count("passed")


def as_pod(container, name):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": {"containers": [container]}}


def check_args(vigil, args, what):
    args = [a for a in args if a != "serve"]
    r = subprocess.run([vigil, "serve", *args, "--help"], capture_output=True, text=True)
    if r.returncode != 0:
        fail(f"{what}: `vigil serve {' '.join(args)}` is refused:\n{r.stderr}")


def seconds(arg_list, flag, default):
    for a in arg_list:
        if a.startswith(flag + "="):
            return float(a.split("=", 1)[1])
    return default


def main():
    vigil = sys.argv[1]
    checked = []

    with open(os.path.join(DEPLOY, "kubernetes", "vigil.yaml")) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    n = validate(docs, "deploy/kubernetes/vigil.yaml")
    checked.append(f"{n} core resources valid (strict, Kubernetes {K8S_VERSION})")
    kinds = {d["kind"]: d for d in docs}
    for k in ("Deployment", "Service", "PodDisruptionBudget"):
        if k not in kinds:
            fail(f"vigil.yaml has no {k}")
    dep = kinds["Deployment"]
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    if c["readinessProbe"]["httpGet"]["path"] != "/v2/health/ready":
        fail("readiness probe is not /v2/health/ready")
    if c["livenessProbe"]["httpGet"]["path"] != "/v2/health/live":
        fail("liveness probe is not /v2/health/live")
    grace = seconds(c["args"], "--shutdown-grace", 30.0)
    pre = c["lifecycle"]["preStop"]["exec"]["command"]
    pre_s = float(pre[-1]) if pre[0] == "sleep" else 0.0
    if pod["terminationGracePeriodSeconds"] <= grace + pre_s:
        fail(f"terminationGracePeriodSeconds {pod['terminationGracePeriodSeconds']} is not above "
             f"preStop {pre_s} s + --shutdown-grace {grace} s")
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    state = next(a.split("=", 1)[1] for a in c["args"] if a.startswith("--state-dir="))
    if state not in mounts:
        fail(f"no volume mounted at the state dir {state}")
    # The payload log: on a mounted volume, each pod in its own subdirectory named by the
    # downward API, on a claim every replica can write (or the files are per pod).
    payload = next((a.split("=", 1)[1] for a in c["args"] if a.startswith("--payload-dir=")), None)
    if payload is None:
        fail("the Deployment does not configure the payload log (--payload-dir)")
    payload_mount = next((m for m in c["volumeMounts"] if m["mountPath"] == payload), None)
    if payload_mount is None or payload_mount.get("readOnly"):
        fail(f"no writable volume mounted at the payload dir {payload}")
    replica = [e for e in c.get("env", []) if e["name"] == "VIGIL_PAYLOAD_REPLICA"]
    if not replica or replica[0].get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "metadata.name":
        fail("VIGIL_PAYLOAD_REPLICA must come from the pod's name (downward API)")
    volume = next(v for v in pod["volumes"] if v["name"] == payload_mount["name"])
    claim = volume.get("persistentVolumeClaim", {}).get("claimName")
    pvc = next((d for d in docs if d["kind"] == "PersistentVolumeClaim" and d["metadata"]["name"] == claim), None)
    if pvc is None or "ReadWriteMany" not in pvc["spec"]["accessModes"]:
        fail(f"the payload volume must be a ReadWriteMany claim defined here (got {volume})")
    if "requests" not in c["resources"]:
        fail("no resource requests")
    if not pod["securityContext"].get("runAsNonRoot"):
        fail("the pod may run as root")
    ann = dep["spec"]["template"]["metadata"]["annotations"]
    if ann.get("prometheus.io/path") != "/metrics":
        fail("no scrape annotations")
    svc_port = kinds["Service"]["spec"]["ports"][0]["targetPort"]
    if svc_port not in [p["name"] for p in c["ports"]]:
        fail("the Service targets no container port")
    pdb_sel = kinds["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"]
    if pdb_sel != dep["spec"]["selector"]["matchLabels"]:
        fail("the PodDisruptionBudget selects other pods")
    check_args(vigil, c["args"], "Deployment")
    checked.append("Deployment: probes, grace, state volume, payload log on a shared volume, scrape annotations, "
                   "Service, PDB, arguments")

    with open(os.path.join(DEPLOY, "kubernetes", "podmonitor.yaml")) as f:
        pm = yaml.safe_load(f)
    if pm["apiVersion"] != "monitoring.coreos.com/v1" or pm["kind"] != "PodMonitor":
        fail("podmonitor.yaml is not a PodMonitor")
    ep = pm["spec"]["podMetricsEndpoints"][0]
    if ep["path"] != "/metrics" or ep["port"] not in [p["name"] for p in c["ports"]]:
        fail("the PodMonitor does not scrape vigil's /metrics port")
    if pm["spec"]["selector"]["matchLabels"] != dep["spec"]["selector"]["matchLabels"]:
        fail("the PodMonitor selects other pods")
    checked.append("PodMonitor")

    with open(os.path.join(DEPLOY, "kserve", "cluster-serving-runtime.yaml")) as f:
        rt = yaml.safe_load(f)
    if (rt["apiVersion"], rt["kind"]) != ("serving.kserve.io/v1alpha1", "ClusterServingRuntime"):
        fail("cluster-serving-runtime.yaml is not a KServe ClusterServingRuntime")
    if rt["spec"]["protocolVersions"] != ["v2"]:
        fail("the runtime must speak protocolVersion v2")
    if "onnx" not in [m["name"] for m in rt["spec"]["supportedModelFormats"]]:
        fail("the runtime does not support the onnx model format")
    unknown = set(rt["spec"]) - {"annotations", "supportedModelFormats", "protocolVersions", "containers",
                                 "multiModel", "disabled", "grpcEndpoint", "httpDataEndpoint",
                                 "replicas", "storageHelper", "nodeSelector", "affinity", "tolerations",
                                 "volumes", "imagePullSecrets", "builtInAdapter", "workerSpec"}
    if unknown:
        fail(f"unknown ClusterServingRuntime fields {unknown}")
    rc = rt["spec"]["containers"][0]
    if rc["name"] != "kserve-container":
        fail("KServe expects the container to be named kserve-container")
    validate([as_pod(copy.deepcopy(rc), "runtime")], "the runtime's container")
    check_args(vigil, rc["args"], "ClusterServingRuntime")
    if "--repository=/mnt/models" not in rc["args"]:
        fail("the runtime must serve KServe's /mnt/models")
    # The admin token comes from a Secret, in the runtime as in the Deployment (without
    # one the control plane is closed on their non-loopback listeners).
    for where, container in (("ClusterServingRuntime", rc),
                             ("Deployment", dep["spec"]["template"]["spec"]["containers"][0])):
        token = [e for e in container.get("env", []) if e["name"] == "VIGIL_ADMIN_TOKEN"]
        if not token or "secretKeyRef" not in token[0].get("valueFrom", {}):
            fail(f"{where}: VIGIL_ADMIN_TOKEN must come from a Secret")
    with open(os.path.join(DEPLOY, "kserve", "inference-service.yaml")) as f:
        isvc = yaml.safe_load(f)
    if (isvc["apiVersion"], isvc["kind"]) != ("serving.kserve.io/v1beta1", "InferenceService"):
        fail("inference-service.yaml is not an InferenceService")
    model = isvc["spec"]["predictor"]["model"]
    if model["runtime"] != rt["metadata"]["name"] or model["modelFormat"]["name"] != "onnx":
        fail("the InferenceService does not use the vigil runtime for onnx")
    if model.get("protocolVersion") != "v2":
        fail("the InferenceService must use protocolVersion v2")
    checked.append("KServe ClusterServingRuntime and InferenceService")

    with open(os.path.join(DEPLOY, "Dockerfile")) as f:
        docker = f.read()
    for src in re.findall(r"^COPY (?!--from)(.+) \S+$", docker, re.M):
        for path in src.split():
            if not os.path.exists(os.path.join(ROOT, path)):
                fail(f"Dockerfile copies {path}, which does not exist")
    if not re.search(r"^USER (?!0\b|root\b)\S+", docker, re.M):
        fail("the image runs as root")
    checked.append("Dockerfile: COPY sources exist, non-root user")
    print("deploy check: " + "; ".join(checked))


if __name__ == "__main__":
    main()
