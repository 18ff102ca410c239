"""deploy/grafana: the provisioned datasource, the dashboard provider and the dashboard fit together,
and every metric the dashboard charts is one the service exports (or a recording rule).

That each query returns data from a real Prometheus is checked in test_prometheus.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "deploy" / "grafana"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "yolor.yml"
DASHBOARD = GRAFANA / "dashboards" / "yolor.json"
PROMETHEUS_CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"
RULES = REPO / "deploy" / "prometheus" / "alerts.yml"

# Where docker compose mounts deploy/grafana/dashboards, and the home dashboard it names
# (GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH).
DASHBOARDS_MOUNT = "/var/lib/grafana/dashboards"
HOME_DASHBOARD = "/var/lib/grafana/dashboards/yolor.json"
GRID_COLUMNS = 24


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


@pytest.fixture(scope="module")
def datasources() -> dict[str, dict[str, Any]]:
    document = yaml.safe_load(DATASOURCES.read_text())
    assert document["apiVersion"] == 1
    return {source["uid"]: source for source in document["datasources"]}


@pytest.fixture(scope="module")
def datasource(datasources) -> dict[str, Any]:
    (default,) = [source for source in datasources.values() if source.get("isDefault")]
    return default


def targets(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [target for panel in dashboard["panels"] for target in panel["targets"]]


def test_the_datasource_is_the_compose_prometheus(datasource):
    assert datasource["type"] == "prometheus"
    assert datasource["uid"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    assert datasource["isDefault"] is True
    scrape_interval = yaml.safe_load(PROMETHEUS_CONFIG.read_text())["global"]["scrape_interval"]
    # $__rate_interval is at least 4 x this, so every rate window holds enough samples.
    assert datasource["jsonData"]["timeInterval"] == scrape_interval


def test_an_exemplars_trace_id_opens_the_trace_in_the_compose_jaeger(datasource, datasources):
    """The Prometheus datasource turns the exemplar label the service writes into a link to the
    provisioned Jaeger (the compose `tracing` profile), and the latency panels ask for exemplars."""
    from service.tracing import EXEMPLAR_TRACE_ID

    (destination,) = datasource["jsonData"]["exemplarTraceIdDestinations"]
    jaeger = datasources[destination["datasourceUid"]]
    assert jaeger["type"] == "jaeger" and jaeger["url"] == "http://jaeger:16686"
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    assert "16686:16686" in compose["jaeger"]["ports"] and compose["jaeger"]["profiles"] == ["tracing"]
    assert destination["name"] == EXEMPLAR_TRACE_ID


def test_the_latency_panels_show_exemplars(dashboard):
    latency = [t for t in targets(dashboard) if "request_duration_seconds_bucket" in t["expr"]]
    assert latency and all(t.get("exemplar") is True for t in latency)


def test_the_provider_loads_the_dashboard_from_the_compose_mount():
    document = yaml.safe_load(PROVIDERS.read_text())
    assert document["apiVersion"] == 1
    (provider,) = document["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == DASHBOARDS_MOUNT
    assert f"{DASHBOARDS_MOUNT}/{DASHBOARD.name}" == HOME_DASHBOARD
    assert DASHBOARD.parent == GRAFANA / "dashboards"  # the directory compose mounts there


def test_the_dashboard_identifies_itself(dashboard):
    assert dashboard["uid"] == "yolor"
    assert dashboard["title"] == "YOLOR serving"
    assert isinstance(dashboard["schemaVersion"], int) and 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["panels"]


def test_every_panel_and_target_uses_the_provisioned_datasource(dashboard, datasource):
    expected = {"type": datasource["type"], "uid": datasource["uid"]}
    for panel in dashboard["panels"]:
        assert panel["datasource"] == expected, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == expected, (panel["title"], target)


def test_panels_have_unique_ids_and_targets_have_unique_ref_ids_and_an_expr(dashboard):
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), ids
    for panel in dashboard["panels"]:
        assert panel["type"] in {"timeseries", "stat"}, panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert all(ref_ids) and len(ref_ids) == len(set(ref_ids)), (panel["title"], ref_ids)
        for target in panel["targets"]:
            assert isinstance(target["expr"], str) and target["expr"].strip(), (panel["title"], target)


def test_panels_fit_the_grid_without_overlapping(dashboard):
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= GRID_COLUMNS, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


def test_rate_windows_follow_the_dashboard(dashboard):
    """Range windows are Grafana's ($__rate_interval, or $__range for totals), never fixed."""
    for target in targets(dashboard):
        for window in re.findall(r"\[([^\]]*)\]", target["expr"]):
            assert window in {"$__rate_interval", "$__range"}, target["expr"]


def exported_series() -> dict[str, set[str]]:
    """Each metric of the service's registry -> the series names it exposes (`_created` aside)."""
    from service.core.metrics import Metrics
    from service.streams.metrics import StreamMetrics

    registry = Metrics().registry
    StreamMetrics(registry, list)  # the streams' metrics, as the app registers them (no stream: no samples)
    parts = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    return {
        family.name: {family.name + suffix for suffix in parts.get(family.type, ("",))}
        for family in registry.collect()
    }


def recorded_series() -> set[str]:
    (group,) = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["record"] for rule in group["rules"] if "record" in rule}


def charted_series(dashboard: dict[str, Any]) -> set[str]:
    names = set()
    for target in targets(dashboard):
        names |= set(re.findall(r"\b(?:job\w*:\w+:\w+|yolor_\w+|process_\w+|up)\b", target["expr"]))
    return names


def test_every_charted_series_is_exported_or_recorded(dashboard):
    exported = set().union(*exported_series().values())
    assert charted_series(dashboard) - exported - recorded_series() - {"up"} == set()


def test_every_metric_of_the_service_is_charted(dashboard):
    charted = charted_series(dashboard)
    # prometheus-client's standard process_* series are not ours to chart one by one
    ours = {metric: series for metric, series in exported_series().items() if metric.startswith("yolor_")}
    uncharted = [metric for metric, series in ours.items() if not series & charted]
    assert uncharted == []
    assert {
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    } <= charted  # the server's CPU and RSS
