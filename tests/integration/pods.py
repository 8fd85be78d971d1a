"""Client pods and inference requests for the lab tests that check serving through a Service:
a client pod (the client image: busybox + curl) in a namespace, a request for the
predictive-maintenance model, and the answer onnxruntime gives locally for it."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import numpy as np
import onnxruntime as ort

from .conftest import REPO

MODEL = "predictive-maintenance"
PORT = 8080
FEATURES = [[7.9, 8.4, 6.1, 5.2, 3.1, 78.0, 14.2, 1450.0]]


def client_pod(namespace: str, node: str, image: str) -> dict[str, Any]:
    """A PSS-restricted pod that sleeps, for `kubectl exec … curl` (pinned to ``node`` unless empty)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "client", "namespace": namespace},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 1,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "client",
                    "image": image,
                    "args": ["-c", "sleep 900"],
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]},
                    },
                    "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                }
            ],
            "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "1Mi"}}],
        },
    }


def request_body() -> str:
    return json.dumps({"inputs": [{"name": "features", "shape": [1, 8], "datatype": "FP32", "data": FEATURES[0]}]})


def infer_url(cluster_ip: str) -> str:
    return f"http://{cluster_ip}:{PORT}/v2/models/{MODEL}/infer"


def curl_args(url: str) -> list[str]:
    """One inference request with curl (5 s budget): its answer on stdout."""
    return ["curl", "-sS", "-m", "5", "-H", "Content-Type: application/json", "--data-binary", request_body(), url]


def assert_answer(proc: subprocess.CompletedProcess[str]) -> None:
    """The request succeeded and its outputs are onnxruntime's for the same input."""
    assert proc.returncode == 0, proc.stdout + proc.stderr
    outputs = {o["name"]: o for o in json.loads(proc.stdout)["outputs"]}
    session = ort.InferenceSession(str(REPO / f"models/{MODEL}/1/model.onnx"))
    label, probabilities = session.run(None, {"features": np.array(FEATURES, dtype=np.float32)})
    assert outputs["label"]["data"] == label.tolist()
    np.testing.assert_allclose(outputs["probabilities"]["data"], probabilities.ravel(), rtol=1e-6)


def assert_refused(proc: subprocess.CompletedProcess[str]) -> None:
    """curl failed to connect: 7 = connection refused (kube-router rejects), 28 = timed out (a
    dropping policy); no answer came back."""
    assert proc.returncode != 0 and ("exit code 7" in proc.stderr or "exit code 28" in proc.stderr), (
        proc.stdout + proc.stderr
    )
    assert "outputs" not in proc.stdout
