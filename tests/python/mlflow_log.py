"""Logs and registers models in a running MLflow, as a training pipeline would.

Usage: mlflow_log.py TRACKING_URI MODELS_DIR [--more]

Registers `iris` versions 1 and 2 from MODELS_DIR/iris/{1,2}/model.onnx with
mlflow.onnx.log_model (each run also logs the version's reference.json as a run
artifact), and `notonnx` version 1, a pyfunc model vigil must refuse. With --more, also
`sklearn_only` version 1 (a scikit-learn model without an ONNX flavour) and `cnn`
version 1 from MODELS_DIR/cnn/1/model.onnx, which MLflow saves with its weights in an
external data file. Prints one JSON line: {"iris": [1, 2], "notonnx": [1], ...}.
"""

import json
import os
import sys

import mlflow
import mlflow.pyfunc
import onnx

uri, models = sys.argv[1], sys.argv[2]
mlflow.set_tracking_uri(uri)
out = {"iris": [], "notonnx": []}
for v in (1, 2):
    d = os.path.join(models, "iris", str(v))
    with mlflow.start_run():
        info = mlflow.onnx.log_model(onnx.load(os.path.join(d, "model.onnx")), name="model",
                                     registered_model_name="iris")
        mlflow.log_artifact(os.path.join(d, "reference.json"))
    out["iris"].append(int(info.registered_model_version))


class Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


with mlflow.start_run():
    info = mlflow.pyfunc.log_model(name="model", python_model=Echo(), registered_model_name="notonnx")
    out["notonnx"].append(int(info.registered_model_version))

if "--more" in sys.argv[3:]:
    import numpy as np
    import mlflow.sklearn
    from sklearn.linear_model import LogisticRegression

    x = np.load(os.path.join(models, "iris", "1", "train.npy"))
    clf = LogisticRegression(max_iter=200).fit(x, (x[:, 2] > 3).astype(int))
    with mlflow.start_run():
        # pip_requirements given: no slow inference of the model's requirements.
        info = mlflow.sklearn.log_model(clf, name="model", registered_model_name="sklearn_only",
                                        pip_requirements=["scikit-learn"])
    out["sklearn_only"] = [int(info.registered_model_version)]
    with mlflow.start_run():
        info = mlflow.onnx.log_model(onnx.load(os.path.join(models, "cnn", "1", "model.onnx")),
                                     name="model", registered_model_name="cnn")
    out["cnn"] = [int(info.registered_model_version)]
print(json.dumps(out))
