"""Kubernetes manifests (`deploy/k8s`): each overlay, and the cameras' StatefulSet (`streams`), renders
with kustomize, validates against the Kubernetes API schemas, and its objects agree with each other
and with the server they run.

Needs `kubectl` (kustomize built in) on PATH and `kubernetes-validate` (+ PyYAML) in this Python;
without them the tests fail, they do not skip. No cluster is contacted.
"""

from __future__ import annotations

import base64
import importlib.util
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
OVERLAYS = ("cpu", "gpu")
# Live cameras: a StatefulSet with a volume and a list of cameras per pod, beside the overlays.
STREAMS = "streams"
# Every kustomization rendered here (test id -> directory under deploy/k8s) and its server's image tag.
KUSTOMIZATIONS = {"cpu": "overlays/cpu", "gpu": "overlays/gpu", STREAMS: STREAMS}
RELEASE_TAGS = {"cpu": "cpu", "gpu": "gpu", STREAMS: "cpu"}
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
    """`overlay`: a key of KUSTOMIZATIONS."""
    done = subprocess.run(
        [_kubectl(), "kustomize", str(K8S / KUSTOMIZATIONS[overlay])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"kubectl kustomize {KUSTOMIZATIONS[overlay]} failed:\n{done.stderr}"
    return done.stdout


def objects(overlay: str) -> list[Obj]:
    return [o for o in _yaml().safe_load_all(rendered(overlay)) if o]


def one(objs: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = [o for o in objs if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, rendered {len(found)}"
    return found[0]


def workload(objs: list[Obj]) -> Obj:
    """The one Deployment or StatefulSet rendered."""
    found = [o for o in objs if o["kind"] in ("Deployment", "StatefulSet")]
    assert len(found) == 1, f"expected one workload, rendered {[o['metadata']['name'] for o in found]}"
    return found[0]


def pod_spec(objs: list[Obj]) -> Obj:
    return workload(objs)["spec"]["template"]["spec"]


def server(objs: list[Obj]) -> Obj:
    (container,) = [c for c in pod_spec(objs)["containers"] if c["name"] == "server"]
    return container


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion of env values, command and args (unknown names stay as they are)."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), text)


def secret_data(secret: Obj) -> dict[str, bytes]:
    data = {key: base64.b64decode(value) for key, value in secret.get("data", {}).items()}
    return data | {key: value.encode() for key, value in secret.get("stringData", {}).items()}


def container_env(
    objs: list[Obj],
    container: Obj,
    *,
    fields: dict[str, str] | None = None,
    secrets: dict[str, dict[str, str]] | None = None,
) -> dict[str, str]:
    """The environment the kubelet gives `container`: envFrom ConfigMaps, then env in order.

    `fields`: the pod's downward-API values by fieldPath; `secrets`: Secrets created outside the
    kustomization (name -> data). An optional secretKeyRef to neither stays unset, as in the kubelet.
    """
    maps = {o["metadata"]["name"]: o.get("data", {}) for o in objs if o["kind"] == "ConfigMap"}
    stored = {
        o["metadata"]["name"]: {k: v.decode() for k, v in secret_data(o).items()}
        for o in objs
        if o["kind"] == "Secret"
    } | (secrets or {})
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        assert name in maps, f"{container['name']} reads ConfigMap {name}, which is not rendered"
        env.update(maps[name])
    for var in container.get("env", []):
        source = var.get("valueFrom", {})
        if "value" in var:
            env[var["name"]] = expand(var["value"], env)
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            assert ref["key"] in maps.get(ref["name"], {}), f"{var['name']}: no {ref['key']} in {ref['name']}"
            env[var["name"]] = maps[ref["name"]][ref["key"]]
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            if ref["key"] in stored.get(ref["name"], {}):
                env[var["name"]] = stored[ref["name"]][ref["key"]]
            else:
                assert ref.get("optional"), f"{var['name']}: no {ref['key']} in Secret {ref['name']}"
        else:
            path = source["fieldRef"]["fieldPath"]
            assert fields is not None and path in fields, f"{var['name']}: pod field {path} not given"
            env[var["name"]] = fields[path]
    return env


def server_settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """Settings() from exactly the YOLOR_* variables in `env` (raises on invalid values)."""
    from service.settings import Settings

    for name in [n for n in os.environ if n.startswith("YOLOR_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


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


@pytest.mark.parametrize("overlay", KUSTOMIZATIONS)
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


@pytest.mark.parametrize("overlay", KUSTOMIZATIONS)
def test_images_are_the_release_images(overlay: str) -> None:
    spec = pod_spec(objects(overlay))
    images = {c["image"] for c in spec["containers"] + spec.get("initContainers", [])}
    assert images <= IMAGES, f"placeholder or unknown images left: {images - IMAGES}"
    assert server(objects(overlay))["image"] == f"yolor-serving:{RELEASE_TAGS[overlay]}"


# --- the pod ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", KUSTOMIZATIONS)
def test_server_environment_is_valid_settings(overlay: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.settings import unknown_variables

    objs = objects(overlay)
    env = container_env(objs, server(objs))
    assert unknown_variables(env) == [], "YOLOR_* variables that name no setting"
    settings = server_settings(env, monkeypatch)  # raises on values out of bounds or inconsistent
    assert settings.workers == 1, "one process per pod: each worker would load its own model and batcher"
    assert settings.port == server(objs)["ports"][0]["containerPort"]


@pytest.mark.parametrize("overlay", KUSTOMIZATIONS)
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


@pytest.mark.parametrize("overlay", KUSTOMIZATIONS)
def test_grace_period_covers_prestop_and_drain(overlay: str) -> None:
    objs = objects(overlay)
    container = server(objs)
    timeout_s = float(container_env(objs, container).get("YOLOR_REQUEST_TIMEOUT_S", 30))
    pre_stop = prestop_seconds(container)
    assert pre_stop > 0
    assert pod_spec(objs)["terminationGracePeriodSeconds"] > pre_stop + timeout_s + DRAIN_MARGIN_S


@pytest.mark.parametrize("overlay", KUSTOMIZATIONS)
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


# --- the cameras' StatefulSet (deploy/k8s/streams) -------------------------------------------------

CAMERAS = K8S / STREAMS / "cameras"
# Created by hand, outside the kustomization (its header says how): YOLOR_ADMIN_KEYS.
ADMIN_SECRET = {"yolor-streams-admin": {"admin-keys": "example-admin-key-1"}}


def statefulset(objs: list[Obj]) -> Obj:
    return one(objs, "StatefulSet", "yolor-streams")


def claim_templates(objs: list[Obj]) -> set[str]:
    return {t["metadata"]["name"] for t in statefulset(objs)["spec"].get("volumeClaimTemplates", [])}


def cameras_init(objs: list[Obj]) -> Obj:
    (init,) = [c for c in pod_spec(objs).get("initContainers", []) if c["name"] == "cameras"]
    return init


def cameras_mount(objs: list[Obj]) -> tuple[Obj, Obj]:
    """The init container's mount of the cameras Secret, and that Secret."""
    volumes = {v["name"]: v for v in pod_spec(objs)["volumes"]}
    (mount,) = [m for m in cameras_init(objs)["volumeMounts"] if "secret" in volumes.get(m["name"], {})]
    return mount, one(objs, "Secret", volumes[mount["name"]]["secret"]["secretName"])


def test_streams_pods_keep_their_streams_on_their_own_volume(monkeypatch: pytest.MonkeyPatch) -> None:
    objs = objects(STREAMS)
    container, init = server(objs), cameras_init(objs)
    assert "YOLOR_ADMIN_KEYS" not in container_env(objs, container), "a key in plain config"
    env = container_env(objs, container, secrets=ADMIN_SECRET)
    settings = server_settings(env, monkeypatch)
    assert env["YOLOR_WORKERS"] == "1" and settings.workers == 1, "more workers refuse streams"
    assert [k.get_secret_value() for k in settings.admin_keys] == ["example-admin-key-1"]
    assert settings.state_dir is not None
    # One PersistentVolumeClaim per pod, mounted where the server keeps streams.json and the init
    # container writes it; not a pod volume (an emptyDir would forget the streams with the pod).
    volume = mounted_volume(container, str(settings.state_dir / "streams.json"))
    assert volume is not None and volume in claim_templates(objs)
    assert volume not in {v["name"] for v in pod_spec(objs)["volumes"]}
    init_env = container_env(objs, init, fields={"metadata.name": "yolor-streams-0"})
    assert init_env["YOLOR_STATE_DIR"] == str(settings.state_dir)
    assert mounted_volume(init, init_env["YOLOR_STATE_DIR"]) == volume


def test_streams_objects_pick_the_streams_pods_and_no_others() -> None:
    objs = objects(STREAMS)
    sts = statefulset(objs)["spec"]
    labels = sts["template"]["metadata"]["labels"]
    port_names = {p["name"] for p in server(objs)["ports"]}
    assert selects(sts["selector"], labels)
    service = one(objs, "Service", sts["serviceName"])
    assert service["spec"]["clusterIP"] == "None", "a StatefulSet's serviceName: headless, a name per pod"
    assert selects({"matchLabels": service["spec"]["selector"]}, labels)
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    for constraint in pod_spec(objs).get("topologySpreadConstraints", []):
        assert selects(constraint["labelSelector"], labels)
    monitor = one(objs, "PodMonitor")
    assert selects(monitor["spec"]["selector"], labels)
    assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} <= port_names
    # In a namespace shared with an overlay, its Service, budget, monitor and spreading leave them be.
    for overlay in OVERLAYS:
        others = objects(overlay)
        assert not selects({"matchLabels": one(others, "Service", "yolor")["spec"]["selector"]}, labels)
        assert not selects(one(others, "PodDisruptionBudget")["spec"]["selector"], labels)
        assert not selects(one(others, "PodMonitor")["spec"]["selector"], labels)
        assert not selects(pod_spec(others)["topologySpreadConstraints"][0]["labelSelector"], labels)


def test_camera_files_are_stream_lists_one_per_pod(tmp_path: Path) -> None:
    from service.streams.store import StreamStore

    objs = objects(STREAMS)
    sts = statefulset(objs)
    replicas = sts["spec"]["replicas"]
    files = sorted(CAMERAS.glob("*.json"))
    assert files, f"no camera files in {CAMERAS}"
    ids: list[str] = []
    for file in files:
        ordinal = re.fullmatch(rf"{re.escape(sts['metadata']['name'])}-(\d+)\.json", file.name)
        assert ordinal and int(ordinal[1]) < replicas, f"{file.name} is no pod of {replicas} replicas"
        entries = json.loads(file.read_text())["streams"]
        state = tmp_path / file.stem
        state.mkdir()
        shutil.copy(file, state / "streams.json")
        # The server's own loader: an unreadable file is moved aside, an invalid entry skipped.
        specs = StreamStore(state).load()
        assert (state / "streams.json").exists(), f"{file.name} does not parse as a streams file"
        assert list(specs) == [str(e["id"]) for e in entries], f"{file.name}: entries skipped"
        assert all(spec.track and spec.source.startswith("rtsp://") for spec in specs.values())
        ids += specs
    assert len(ids) == len(set(ids)), f"stream ids repeat across pods: {ids}"
    # Every file is in the Secret the pods mount (a file not listed in kustomization.yaml is not).
    _, secret = cameras_mount(objs)
    assert secret_data(secret) == {file.name: file.read_bytes() for file in files}


def test_cameras_and_webhooks_are_within_the_allowed_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.streams.sources import SourcePolicy
    from service.streams.spec import StreamSpec

    objs = objects(STREAMS)
    settings = server_settings(container_env(objs, server(objs)), monkeypatch)
    assert "*" not in settings.stream_allowed_hosts, "`*` reaches no camera on a private network"

    def resolve(host: str) -> list[str]:  # no DNS here: a name stands for a reserved address
        try:
            return [str(ipaddress.ip_address(host))]
        except ValueError:
            return ["192.0.2.1"]

    policy = SourcePolicy(settings.stream_allowed_hosts, None, resolver=resolve)
    for file in sorted(CAMERAS.glob("*.json")):
        for entry in json.loads(file.read_text())["streams"]:
            spec = StreamSpec.model_validate(entry["spec"])
            policy.check(spec.source)  # SourceNotAllowed otherwise, as the server at POST /streams
            if spec.webhook is not None:
                policy.check_host(urlsplit(spec.webhook.url).hostname or "")


@pytest.mark.slow  # runs the init container's Python (imports the service) per pod
def test_cameras_init_container_writes_its_pods_file_or_nothing(tmp_path: Path) -> None:
    """The init container's command as rendered, run here: the Secret's mount is a folder holding its
    files, the pod's volume a folder of its own; `python3` is this Python (the image's has the
    package too)."""
    objs = objects(STREAMS)
    init = cameras_init(objs)
    mount, secret = cameras_mount(objs)
    assert mount.get("readOnly") is True
    assert mount["name"] not in {m["name"] for m in server(objs)["volumeMounts"]}, "only the init needs it"
    cameras = tmp_path / "cameras"
    cameras.mkdir()
    for key, value in secret_data(secret).items():
        (cameras / key).write_bytes(value)
    argv = [*init["command"], *init.get("args", [])]
    assert argv[0] == "python3" and mount["mountPath"] in argv, argv
    argv = [sys.executable, *(str(cameras) if arg == mount["mountPath"] else arg for arg in argv[1:])]
    volume = mounted_volume(server(objs), container_env(objs, server(objs))["YOLOR_STATE_DIR"])
    assert volume in claim_templates(objs)
    outside = {k: v for k, v in os.environ.items() if not k.startswith("YOLOR_") and k != "POD_NAME"}

    def run(pod: str) -> tuple[subprocess.CompletedProcess[str], Path]:
        env = container_env(objs, init, fields={"metadata.name": pod})
        assert mounted_volume(init, env["YOLOR_STATE_DIR"]) == volume, "not the server's state volume"
        state = tmp_path / "state" / pod
        state.mkdir(parents=True, exist_ok=True)
        env["YOLOR_STATE_DIR"] = str(state)
        command = [expand(arg, env) for arg in argv]
        done = subprocess.run(
            command, env=outside | env, cwd=REPO, capture_output=True, text=True, timeout=120
        )
        return done, state / "streams.json"

    # A pod with a file: its streams.json becomes that file, owner-only, whatever it held before.
    assert secret_data(secret)
    for key, value in secret_data(secret).items():
        pod = key.removesuffix(".json")
        before = tmp_path / "state" / pod / "streams.json"
        before.parent.mkdir(parents=True)
        before.write_text('{"format": "yolor-serving/streams/1", "streams": []}')
        before.chmod(0o644)
        done, written = run(pod)
        assert done.returncode == 0, done.stderr
        assert written.read_bytes() == value
        assert written.stat().st_mode & 0o777 == 0o600
        assert [p.name for p in written.parent.iterdir()] == ["streams.json"], "a temporary file left"
    # A pod without one keeps what it has (streams created through the API), or nothing.
    spare = f"{statefulset(objs)['metadata']['name']}-{statefulset(objs)['spec']['replicas']}"
    assert not (cameras / f"{spare}.json").exists()
    done, written = run(spare)
    assert done.returncode == 0, done.stderr
    assert list(written.parent.iterdir()) == []
    written.write_text("created through the API")
    done, _ = run(spare)
    assert done.returncode == 0, done.stderr
    assert written.read_text() == "created through the API"
    # A broken file stops the pod before the server starts, and its streams.json stays.
    (cameras / f"{spare}.json").write_text('{"format": "yolor-serving/streams/1", "streams": [{"id": "x"}]}')
    done, _ = run(spare)
    assert done.returncode != 0
    assert written.read_text() == "created through the API"


# --- traces (components/tracing) -----------------------------------------------------------------

TRACING_COMPONENT = "../../components/tracing"


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_the_tracing_component_turns_traces_on_and_names_the_pod(overlay: str, tmp_path: Path) -> None:
    """Both overlays list the component commented out; uncommented, the pods trace to the collector
    named in tracing.env, as the server reads it, with the pod, namespace and node as resource
    attributes; nothing else changes."""
    from service.settings import Settings
    from service.tracing import wanted

    kustomization = K8S / "overlays" / overlay / "kustomization.yaml"
    text = kustomization.read_text()
    assert f"- {TRACING_COMPONENT}" in text and "YOLOR_TRACING" not in str(objects(overlay))
    enabled = text.replace(f"# - {TRACING_COMPONENT}", f"- {TRACING_COMPONENT}")
    if overlay == "cpu":
        enabled = enabled.replace("# components:\n#   - ", "components:\n  - ")
    assert enabled != text
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    (copy / "overlays" / overlay / "kustomization.yaml").write_text(enabled)
    done = subprocess.run([_kubectl(), "kustomize", str(copy / "overlays" / overlay)], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    traced = [o for o in _yaml().safe_load_all(done.stdout) if o]
    (config,) = [
        o["data"] for o in traced if o["kind"] == "ConfigMap" and "yolor-config" in o["metadata"]["name"]
    ]
    assert Settings(tracing=config["YOLOR_TRACING"]).tracing is True and wanted(True, config)
    assert config["OTEL_EXPORTER_OTLP_ENDPOINT"].startswith("http://") and config["OTEL_TRACES_SAMPLER_ARG"]
    env = {e["name"]: e for e in server(traced)["env"]}
    assert env["K8S_POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    attributes = dict(pair.split("=") for pair in env["OTEL_RESOURCE_ATTRIBUTES"]["value"].split(","))
    assert (
        attributes["k8s.pod.name"] == "$(K8S_POD_NAME)" and attributes["k8s.node.name"] == "$(K8S_NODE_NAME)"
    )
    names = list(env)
    assert names.index("K8S_POD_NAME") < names.index("OTEL_RESOURCE_ATTRIBUTES")  # $(...) needs it first
    # Nothing else changes: without what the component adds (and the config's hashed name), the same.
    for key in (
        "YOLOR_TRACING",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_TRACES_SAMPLER",
        "OTEL_TRACES_SAMPLER_ARG",
    ):
        del config[key]
    added = {"K8S_POD_NAME", "K8S_NAMESPACE", "K8S_NODE_NAME", "OTEL_RESOURCE_ATTRIBUTES"}
    kept = [e for e in server(traced)["env"] if e["name"] not in added]
    if kept:
        server(traced)["env"] = kept
    else:
        del server(traced)["env"]
    hashed = re.compile(r"yolor-config-[a-z0-9]+")
    assert hashed.sub("yolor-config", str(traced)) == hashed.sub("yolor-config", str(objects(overlay)))
