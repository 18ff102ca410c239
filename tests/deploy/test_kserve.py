"""deploy/kserve: the KServe ServingRuntime and InferenceService, rendered with kustomize. KServe's
CRDs are not in kubernetes-validate, so the runtime's container is validated as a Pod's (the pod
KServe makes of it), and what KServe matches by hand: the InferenceService's model format, runtime
and protocol against the runtime's, the server's environment as our settings, ports and probe."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.test_k8s import OLDEST_KUBERNETES, _kubectl, _yaml, one, server_settings

pytestmark = pytest.mark.unit

KSERVE = Path(__file__).resolve().parents[2] / "deploy" / "kserve"
GROUP = "serving.kserve.io"


def objects() -> list[dict[str, Any]]:
    done = subprocess.run(
        [_kubectl(), "kustomize", str(KSERVE)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return [o for o in _yaml().safe_load_all(done.stdout) if o]


def runtime_container(objs: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = one(objs, "ServingRuntime")["spec"]["containers"]
    return container


def test_the_inference_service_uses_the_runtime_by_format_name_and_protocol() -> None:
    objs = objects()
    assert {o["apiVersion"].split("/")[0] for o in objs} == {GROUP}
    runtime, service = one(objs, "ServingRuntime"), one(objs, "InferenceService")
    assert runtime["apiVersion"] == f"{GROUP}/v1alpha1" and service["apiVersion"] == f"{GROUP}/v1beta1"
    model = service["spec"]["predictor"]["model"]
    formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["modelFormat"]["name"] in formats and model["runtime"] == runtime["metadata"]["name"]
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"] == ["v2", "grpc-v2"]
    assert model["storageUri"].split("://")[0] in {"pvc", "s3", "gs", "https", "hdfs", "oci"}
    container = runtime_container(objs)
    assert container["name"] == "kserve-container"  # the name KServe looks for
    assert container["image"] == "yolor-serving:cpu"


def test_the_runtime_serves_the_storage_initializers_folder_as_a_repository(monkeypatch) -> None:
    from service.settings import unknown_variables

    container = runtime_container(objects())
    env = {var["name"]: var["value"] for var in container["env"]}
    assert unknown_variables(env) == []
    settings = server_settings(env, monkeypatch)
    assert str(settings.model_repository) == "/mnt/models"  # where KServe puts storageUri
    assert settings.workers == 1 and settings.grpc_port == 8001
    (port,) = container["ports"]
    assert port["containerPort"] == settings.port == container["readinessProbe"]["httpGet"]["port"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"


def test_the_runtime_container_validates_as_a_pods(tmp_path: Path) -> None:
    if importlib.util.find_spec("kubernetes_validate") is None:
        pytest.fail("kubernetes-validate is not installed in this Python: pip install kubernetes-validate")
    container = runtime_container(objects())
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "yolor"},
        "spec": {"containers": [container]},
    }
    manifest = tmp_path / "pod.yaml"
    manifest.write_text(_yaml().safe_dump(pod))
    done = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", f"-k{OLDEST_KUBERNETES}", str(manifest)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0 and " passed for resource " in done.stdout, done.stdout + done.stderr
