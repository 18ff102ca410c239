"""Kubernetes manifests (`deploy/k8s`): each overlay renders with kustomize, validates against the
Kubernetes API schemas, and its objects agree with each other and with the server they run.

Needs `kubectl` (kustomize built in) on PATH and `kubernetes-validate` (+ PyYAML) in this Python;
without them the tests fail, they do not skip. No cluster is contacted.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
OVERLAYS = ("cpu", "gpu")
# preStop `sleep` is beta (on by default) from 1.30; 1.28 rejects the field, 1.29 gates it off.
OLDEST_KUBERNETES = "1.30"
IMAGES = {"yolor-serving:cpu", "yolor-serving:gpu", "yolor-serving:tools"}
# Kinds without a schema in kubernetes-validate: custom resources, checked by hand below.
CRD_GROUPS = {"monitoring.coreos.com"}
DRAIN_MARGIN_S = 5  # the server's drain: at most request_timeout + 5 s after SIGTERM

Obj = dict[str, Any]


def _yaml() -> Any:
    try:
        import yaml
    except ImportError:
        pytest.fail("PyYAML is not installed in this Python: pip install pyyaml kubernetes-validate")
    return yaml


def _kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.fail("kubectl is not on PATH: these tests render deploy/k8s with `kubectl kustomize`")
    return path


@cache
def rendered(overlay: str) -> str:
    done = subprocess.run(
        [_kubectl(), "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"kubectl kustomize overlays/{overlay} failed:\n{done.stderr}"
    return done.stdout


def objects(overlay: str) -> list[Obj]:
    return [o for o in _yaml().safe_load_all(rendered(overlay)) if o]


def one(objs: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = [o for o in objs if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, rendered {len(found)}"
    return found[0]


def pod_spec(objs: list[Obj]) -> Obj:
    return one(objs, "Deployment", "yolor")["spec"]["template"]["spec"]


def server(objs: list[Obj]) -> Obj:
    (container,) = [c for c in pod_spec(objs)["containers"] if c["name"] == "server"]
    return container


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion of env values, command and args (unknown names stay as they are)."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), text)


def container_env(objs: list[Obj], container: Obj) -> dict[str, str]:
    """The environment the kubelet gives `container`: envFrom ConfigMaps, then env in order."""
    maps = {o["metadata"]["name"]: o.get("data", {}) for o in objs if o["kind"] == "ConfigMap"}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        assert name in maps, f"{container['name']} reads ConfigMap {name}, which is not rendered"
        env.update(maps[name])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = expand(var["value"], env)
        else:
            ref = var["valueFrom"]["configMapKeyRef"]
            assert ref["key"] in maps.get(ref["name"], {}), f"{var['name']}: no {ref['key']} in {ref['name']}"
            env[var["name"]] = maps[ref["name"]][ref["key"]]
    return env


def mounted_volume(container: Obj, path: str) -> str | None:
    """The writable volume whose mount holds `path` in `container` (the deepest mount wins)."""
    target = PurePosixPath(path)
    mounts = [
        m
        for m in container.get("volumeMounts", [])
        if target.is_relative_to(m["mountPath"]) and not m.get("readOnly", False)
    ]
    if not mounts:
        return None
    return max(mounts, key=lambda m: len(PurePosixPath(m["mountPath"]).parts))["name"]


def selects(selector: Obj, labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels + matchExpressions) against a label set."""
    if not selector:
        return False
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        present, value = expr["key"] in labels, labels.get(expr["key"])
        ok = {
            "In": present and value in expr.get("values", []),
            "NotIn": not present or value not in expr.get("values", []),
            "Exists": present,
            "DoesNotExist": not present,
        }[expr["operator"]]
        if not ok:
            return False
    return True


def cpu_cores(quantity: str | int | float) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def prestop_seconds(container: Obj) -> float:
    pre_stop = container["lifecycle"]["preStop"]
    if "sleep" in pre_stop:
        return float(pre_stop["sleep"]["seconds"])
    command = " ".join(pre_stop["exec"]["command"])
    found = re.search(r"\bsleep\s+(\d+(?:\.\d+)?)", command)
    assert found, f"preStop does not sleep: {command}"
    return float(found[1])


@cache
def adapter_rules() -> tuple[Obj, ...]:
    values = _yaml().safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())
    return tuple(values["rules"]["custom"])


def rule_series(rule: Obj) -> str:
    """The one metric a rule's seriesQuery selects, written `name{matchers}`."""
    query = rule["seriesQuery"].strip()
    found = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{(.*)\}", query)
    assert found, f"seriesQuery {query!r} does not name one metric"
    return found[1]


def exposed_name(rule: Obj) -> str:
    """The custom-metrics API name, as prometheus-adapter derives it (docs/config.md, "Naming")."""
    series = rule_series(rule)
    naming = rule.get("name", {})
    found = re.search(naming.get("matches") or ".*", series)
    assert found, f"name.matches {naming.get('matches')!r} does not match {series}"
    template = naming.get("as") or ("$1" if found.re.groups == 1 else "$0")
    assert found.re.groups <= 1 or naming.get("as"), "several capture groups need name.as"
    return re.sub(r"\$\{?(\d+)\}?", lambda m: found[int(m[1])], template)


def server_metric_types() -> dict[str, str]:
    from service.core.metrics import Metrics

    return {family.name: family.type for family in Metrics().registry.collect()}


# --- rendering and schema validation -------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_validates_against_the_kubernetes_schemas(overlay: str, tmp_path: Path) -> None:
    if importlib.util.find_spec("kubernetes_validate") is None:
        pytest.fail("kubernetes-validate is not installed in this Python: pip install kubernetes-validate")
    from kubernetes_validate.utils import latest_version

    versions = [OLDEST_KUBERNETES, latest_version()]
    manifest = tmp_path / f"{overlay}.yaml"
    manifest.write_text(rendered(overlay))
    command = [sys.executable, "-m", "kubernetes_validate", "--strict"]
    done = subprocess.run(
        [*command, *(f"-k{v}" for v in versions), str(manifest)], capture_output=True, text=True, timeout=300
    )
    report = done.stdout + done.stderr
    assert done.returncode == 0, report
    lines = report.splitlines()
    assert all(line.startswith(("INFO ", "WARN ")) for line in lines), report
    # A kind without a schema is only a warning to kubernetes-validate: allow custom resources only.
    missing = re.compile(r"WARN \S+ Couldn't find schema for kind (\S+) with api version (\S+) ")
    skipped = [missing.match(line) for line in lines if line.startswith("WARN ")]
    assert all(skipped), report
    groups = {m[2].split("/")[0] for m in skipped if m}
    assert groups <= CRD_GROUPS, f"not validated: {[m[0] for m in skipped if m]}"
    crds = [o for o in objects(overlay) if o["apiVersion"].split("/")[0] in CRD_GROUPS]
    checked = len(objects(overlay)) - len(crds)
    assert report.count(" passed for resource ") == checked * len(versions), report
    assert len(skipped) == len(crds) * len(versions), report


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_the_release_images(overlay: str) -> None:
    spec = pod_spec(objects(overlay))
    images = {c["image"] for c in spec["containers"] + spec.get("initContainers", [])}
    assert images <= IMAGES, f"placeholder or unknown images left: {images - IMAGES}"
    assert server(objects(overlay))["image"] == f"yolor-serving:{overlay}"


# --- the pod ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_server_environment_is_valid_settings(overlay: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.settings import Settings, unknown_variables

    objs = objects(overlay)
    env = container_env(objs, server(objs))
    assert unknown_variables(env) == [], "YOLOR_* variables that name no setting"
    for name in [n for n in os.environ if n.startswith("YOLOR_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings()  # raises on values out of bounds or inconsistent
    assert settings.workers == 1, "one process per pod: each worker would load its own model and batcher"
    assert settings.port == server(objs)["ports"][0]["containerPort"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_use_the_named_port(overlay: str) -> None:
    container = server(objects(overlay))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports.get("http") == 8000
    for probe, path in (
        ("startupProbe", "/readyz"),
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
    ):
        get = container[probe]["httpGet"]
        assert (get["path"], get["port"]) == (path, "http"), probe


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grace_period_covers_prestop_and_drain(overlay: str) -> None:
    objs = objects(overlay)
    container = server(objs)
    timeout_s = float(container_env(objs, container).get("YOLOR_REQUEST_TIMEOUT_S", 30))
    pre_stop = prestop_seconds(container)
    assert pre_stop > 0
    assert pod_spec(objs)["terminationGracePeriodSeconds"] > pre_stop + timeout_s + DRAIN_MARGIN_S


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pod_runs_unprivileged(overlay: str) -> None:
    objs = objects(overlay)
    spec = pod_spec(objs)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert (spec["securityContext"]["runAsUser"], spec["securityContext"]["runAsGroup"]) == (10001, 10001)
    # A Service named `yolor` would inject YOLOR_PORT=tcp://..., which the server reads as its port.
    assert spec["enableServiceLinks"] is False
    assert spec["automountServiceAccountToken"] is False
    for container in spec["containers"] + spec.get("initContainers", []):
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False, container["name"]
        assert context["capabilities"]["drop"] == ["ALL"], container["name"]
    container = server(objs)
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    tmp = mounted_volume(container, "/tmp")
    assert tmp is not None and any(v["name"] == tmp and "emptyDir" in v for v in spec["volumes"])


# --- overlay specifics -----------------------------------------------------------------------------


def test_gpu_pod_holds_one_gpu_and_serves_tensorrt() -> None:
    objs = objects("gpu")
    container = server(objs)
    env = container_env(objs, container)
    assert str(container["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    assert env["YOLOR_BACKEND"] == "tensorrt"
    assert env["YOLOR_DEVICE"].startswith("cuda")
    startup = container["startupProbe"]
    budget_s = startup["periodSeconds"] * startup["failureThreshold"]
    assert budget_s >= 15 * 60, "the first TensorRT build of a large net takes minutes"
    deployment = one(objs, "Deployment", "yolor")
    assert deployment["spec"]["progressDeadlineSeconds"] > budget_s


def test_gpu_init_container_exports_into_the_servers_model_dir() -> None:
    objs = objects("gpu")
    spec = pod_spec(objs)
    (init,) = spec["initContainers"]
    container = server(objs)
    env, init_env = container_env(objs, container), container_env(objs, init)
    assert init["image"] == "yolor-serving:tools"
    assert init["command"] == ["yolor-prepare"]
    name, dest = (expand(arg, init_env) for arg in init["args"])
    assert "$(" not in name + dest, f"unresolved variable in {init['args']}"
    # yolor-prepare NAME DEST writes DEST/NAME; the server must read that very directory.
    assert PurePosixPath(env["YOLOR_MODEL_DIR"]) == PurePosixPath(dest) / name
    volume = mounted_volume(init, dest)
    assert volume is not None and volume == mounted_volume(container, env["YOLOR_MODEL_DIR"])
    assert any(v["name"] == volume for v in spec["volumes"])
    assert mounted_volume(container, env["YOLOR_ENGINE_DIR"]) == volume
    assert mounted_volume(container, env["YOLOR_CACHE_DIR"]) == volume
    assert int(init_env["YOLOR_EXPORT_MAX_BATCH"]) <= int(env["YOLOR_QUEUE_SIZE"])


def test_cpu_overlay_serves_the_demo_model_without_a_gpu() -> None:
    objs = objects("cpu")
    spec = pod_spec(objs)
    for container in spec["containers"] + spec.get("initContainers", []):
        resources = container.get("resources", {})
        for part in ("requests", "limits"):
            assert "nvidia.com/gpu" not in resources.get(part, {}), container["name"]
    assert not spec.get("initContainers")
    container = server(objs)
    env = container_env(objs, container)
    assert env["YOLOR_BACKEND"] == "onnxruntime"
    assert "YOLOR_MODEL_DIR" not in env, "unset: the image's bundled demo model"
    # Inside a container the affinity mask is usually the whole node: threads follow the CPU limit.
    limit = cpu_cores(container["resources"]["limits"]["cpu"])
    runs, threads = int(env["YOLOR_ONNX_PARALLEL_RUNS"]), int(env["YOLOR_ONNX_INTRA_OP_THREADS"])
    assert runs * threads == limit  # ONNX Runtime's threads, all runs together, fill the pod's CPUs
    assert int(env["YOLOR_PREPROCESS_THREADS"]) <= limit


# --- objects that point at each other --------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_selectors_pick_the_server_pods(overlay: str) -> None:
    objs = objects(overlay)
    deployment = one(objs, "Deployment", "yolor")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    port_names = {p["name"] for p in server(objs)["ports"]}
    assert selects(deployment["spec"]["selector"], labels)
    service = one(objs, "Service", "yolor")
    assert selects({"matchLabels": service["spec"]["selector"]}, labels)
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    assert selects(one(objs, "PodDisruptionBudget")["spec"]["selector"], labels)
    for constraint in pod_spec(objs).get("topologySpreadConstraints", []):
        assert selects(constraint["labelSelector"], labels)
    monitor = one(objs, "PodMonitor")
    assert selects(monitor["spec"]["selector"], labels)
    for endpoint in monitor["spec"]["podMetricsEndpoints"]:
        assert endpoint["port"] in port_names
        assert endpoint.get("path", "/metrics") == "/metrics"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_autoscaler_targets_the_deployment_on_exposed_metrics(overlay: str) -> None:
    objs = objects(overlay)
    hpa = one(objs, "HorizontalPodAutoscaler")["spec"]
    ref = hpa["scaleTargetRef"]
    target = one(objs, ref["kind"], ref["name"])
    assert target["apiVersion"] == ref["apiVersion"]
    assert "replicas" not in target["spec"], "the HPA owns the replica count"
    assert 1 <= hpa["minReplicas"] <= hpa["maxReplicas"]
    metrics = hpa["metrics"]
    pods = {m["pods"]["metric"]["name"] for m in metrics if m["type"] == "Pods"}
    assert pods, "no Pods metric"
    exposed = {exposed_name(rule) for rule in adapter_rules()}
    assert pods <= exposed, f"not exposed by prometheus-adapter: {pods - exposed}"
    assert any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in metrics)
    # Utilization is relative to the request: without one on every container the metric fails.
    for container in target["spec"]["template"]["spec"]["containers"]:
        assert "cpu" in container["resources"]["requests"], container["name"]
    assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300


def test_adapter_rules_follow_the_config_format_and_the_servers_metrics() -> None:
    types = server_metric_types()
    assert adapter_rules()
    for rule in adapter_rules():
        series = rule_series(rule)
        assert types.get(series) == "gauge", f"{series} is not a gauge the server exports"
        assert re.search(r'namespace!=""', rule["seriesQuery"]) and re.search(r'pod!=""', rule["seriesQuery"])
        overrides = rule["resources"]["overrides"]
        assert overrides["namespace"] == {"resource": "namespace"}
        assert overrides["pod"] == {"resource": "pod"}
        query = rule["metricsQuery"]
        assert "<<.Series>>{<<.LabelMatchers>>}" in query and "by (<<.GroupBy>>)" in query
        assert not re.search(r"\b(i?rate|increase)\(", query), "rate() of a gauge"
        text = re.sub(r"<<[^>]*>>", "x", query)
        for opening, closing in ("()", "{}", "[]"):
            assert text.count(opening) == text.count(closing), query


RUNTIME_COMPONENT = "../../components/nvidia-runtime"


def test_the_nvidia_runtime_component_only_sets_the_runtime_class(tmp_path: Path) -> None:
    """The GPU overlay lists the component commented out; uncommented (as its comment says), the
    pod runs under RuntimeClass nvidia and nothing else changes."""
    kustomization = K8S / "overlays" / "gpu" / "kustomization.yaml"
    commented = [
        line for line in kustomization.read_text().splitlines() if line.strip() == f"# - {RUNTIME_COMPONENT}"
    ]
    assert len(commented) == 1, f"overlays/gpu does not list {RUNTIME_COMPONENT} commented out"
    assert "runtimeClassName" not in pod_spec(objects("gpu")), "optional: not on by default"
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    enabled = copy / "overlays" / "gpu" / "kustomization.yaml"
    enabled.write_text(enabled.read_text().replace(commented[0], commented[0].replace("# - ", "- ", 1)))
    done = subprocess.run([_kubectl(), "kustomize", str(copy / "overlays" / "gpu")], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    with_runtime = [o for o in _yaml().safe_load_all(done.stdout) if o]
    assert pod_spec(with_runtime).pop("runtimeClassName") == "nvidia"
    assert with_runtime == objects("gpu")
    assert "nvidia-runtime" not in (K8S / "overlays" / "cpu" / "kustomization.yaml").read_text()
