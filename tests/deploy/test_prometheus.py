"""deploy/prometheus: promtool accepts the config and rules, the rule unit tests pass and can fail,
and a real Prometheus scraping the real service answers every rule and dashboard query.

promtool and prometheus (2.x) must be on PATH (CI installs Debian's `prometheus` package).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from bench.server import free_port
from tests.support.processes import started_process, wait_until_ok

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULES = PROMETHEUS_DIR / "alerts.yml"
RULE_TESTS = PROMETHEUS_DIR / "alerts.test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "yolor.json"

# What Grafana substitutes before sending a dashboard query (any positive window is fine here).
GRAFANA_VARIABLES = {"$__rate_interval": "30s", "$__interval": "15s", "$__range": "5m", "$model": ".*"}
THRESHOLD_ALERT = re.compile(
    r"^(?P<quantity>.+?)\s*(?P<op>>=|<=|==|!=|>|<)\s*(?P<threshold>-?[0-9.]+(?:e-?\d+)?)$"
)
EXPECTED_ALERTS = {
    "YolorHighErrorRate": "5m",
    "YolorQueueSaturated": "5m",
    "YolorHighLatencyP99": "10m",
    "YolorTargetDown": "1m",
    "YolorNotReady": "5m",
    "YolorBackendStalled": "1m",
    "YolorStreamStopped": "2m",
}
ADMIN_KEY = "admin-key-for-streams"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"`{name}` is not on PATH; these tests need Prometheus 2.x tools "
            "(Debian/Ubuntu: apt-get install prometheus)",
            pytrace=False,
        )
    return path


def promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    command = [tool("promtool"), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=cwd, check=False)


def output(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


def rules() -> list[dict[str, Any]]:
    (group,) = yaml.safe_load(RULES.read_text())["groups"]
    assert group["name"] == "yolor"
    return group["rules"]


def split_alert(expr: str) -> tuple[str, str, str]:
    """`quantity op threshold` of an alert expression; fails if it is not of that form."""
    match = THRESHOLD_ALERT.match(expr.strip())
    assert match, f"alert expression is not `<quantity> <op> <number>`: {expr!r}"
    return match["quantity"], match["op"], match["threshold"]


# --- promtool -----------------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize(
    "args",
    [("check", "config", CONFIG), ("check", "rules", RULES), ("test", "rules", RULE_TESTS)],
    ids=["check-config", "check-rules", "test-rules"],
)
def test_promtool_accepts(args):
    result = promtool(*args)
    assert result.returncode == 0, output(result)


@pytest.mark.unit
def test_compose_config_scrapes_the_service_and_loads_the_rules():
    config = yaml.safe_load(CONFIG.read_text())
    assert config["global"] == {"scrape_interval": "5s", "evaluation_interval": "5s"}
    assert config["rule_files"] == ["alerts.yml"]
    (job,) = config["scrape_configs"]
    assert (job["job_name"], job["metrics_path"]) == ("yolor", "/metrics")
    assert job["static_configs"] == [{"targets": ["yolor:8000"]}]


@pytest.mark.unit
def test_every_alert_compares_a_quantity_with_a_threshold_and_is_documented():
    alerts = {rule["alert"]: rule for rule in rules() if "alert" in rule}
    assert {name: rule["for"] for name, rule in alerts.items()} == EXPECTED_ALERTS
    for name, rule in alerts.items():
        split_alert(rule["expr"])
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert {"summary", "description"} <= rule["annotations"].keys(), name


@pytest.mark.unit
def test_every_rule_has_unit_tests():
    alerts_tested, exprs_tested = set(), []
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        alerts_tested |= {test["alertname"] for test in case.get("alert_rule_test", [])}
        exprs_tested += [test["expr"] for test in case.get("promql_expr_test", [])]
    assert alerts_tested == {rule["alert"] for rule in rules() if "alert" in rule}
    for record in (rule["record"] for rule in rules() if "record" in rule):
        assert any(record in expr for expr in exprs_tested), f"no promql_expr_test reads {record}"


# --- the unit tests can fail --------------------------------------------------------------------


def run_rule_tests(rule_list: list[dict[str, Any]], directory: Path) -> subprocess.CompletedProcess[str]:
    """alerts.test.yml run against `rule_list`, written as alerts.yml in `directory`."""
    document = {"groups": [{"name": "yolor", "rules": rule_list}]}
    (directory / RULES.name).write_text(yaml.safe_dump(document, sort_keys=False))
    shutil.copy(RULE_TESTS, directory / RULE_TESTS.name)
    return promtool("test", "rules", RULE_TESTS.name, cwd=directory)


@pytest.mark.unit
def test_the_rewritten_rules_pass_unchanged(tmp_path):
    """Control for the mutations below: writing the rules back out changes nothing promtool sees."""
    result = run_rule_tests(rules(), tmp_path)
    assert result.returncode == 0, output(result)


THRESHOLD_MUTATIONS = [
    ("YolorHighErrorRate", "0.5"),  # the 10% case no longer fires
    ("YolorHighErrorRate", "0.001"),  # the 0.5% case fires
    ("YolorQueueSaturated", "0.5"),
    ("YolorQueueSaturated", "0.001"),
    ("YolorHighLatencyP99", "5"),
    ("YolorHighLatencyP99", "0.1"),
    ("YolorTargetDown", "1"),
    ("YolorNotReady", "1"),
    ("YolorBackendStalled", "1"),
]


@pytest.mark.unit
@pytest.mark.parametrize(("alert", "threshold"), THRESHOLD_MUTATIONS, ids=lambda v: str(v))
def test_rule_tests_fail_when_a_threshold_moves(tmp_path, alert, threshold):
    mutated = rules()
    (rule,) = (r for r in mutated if r.get("alert") == alert)
    quantity, op, old = split_alert(rule["expr"])
    assert old != threshold
    rule["expr"] = f"{quantity} {op} {threshold}"
    result = run_rule_tests(mutated, tmp_path)
    assert result.returncode != 0, output(result)
    assert alert in result.stdout + result.stderr, output(result)


@pytest.mark.unit
@pytest.mark.parametrize("alert", sorted(EXPECTED_ALERTS))
def test_rule_tests_fail_without_the_for_duration(tmp_path, alert):
    mutated = rules()
    (rule,) = (r for r in mutated if r.get("alert") == alert)
    rule["for"] = "0s"
    result = run_rule_tests(mutated, tmp_path)
    assert result.returncode != 0, output(result)
    assert alert in result.stdout + result.stderr, output(result)


# --- a real Prometheus scraping the real service ------------------------------------------------


@pytest.fixture
def service(tmp_path) -> Iterator[str]:
    """`yolor serve` (the bundled demo model) on 127.0.0.1; yields its base URL once ready."""
    from tests.support.video import make_clip, sample_frames

    port = free_port()
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "cam.mp4").write_bytes(make_clip(sample_frames(20)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("YOLOR_")}
    env |= {"YOLOR_STREAM_ROOT": str(tmp_path / "clips"), "YOLOR_ADMIN_KEYS": ADMIN_KEY}
    env |= {"YOLOR_TRACING": "1", "OTEL_TRACES_EXPORTER": "none"}  # traced, for the exemplars
    command = [sys.executable, "-m", "cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    log = tmp_path / "service.log"
    with started_process(command, log, cwd=REPO, env=env) as process:
        wait_until_ok(f"http://127.0.0.1:{port}/readyz", process, log, timeout_s=60)
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
def prometheus(tmp_path, service) -> Iterator[str]:
    """The deploy config with 1s intervals and the service as target; yields the API base URL."""
    config = yaml.safe_load(CONFIG.read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [service.removeprefix("http://")]}]
    shutil.copy(RULES, tmp_path / RULES.name)
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    command = [
        tool("prometheus"),
        f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--enable-feature=exemplar-storage",  # as docker-compose.yml runs it
    ]
    log = tmp_path / "prometheus.log"
    with started_process(command, log, cwd=tmp_path) as process:
        wait_until_ok(f"http://127.0.0.1:{port}/-/ready", process, log, timeout_s=30)
        yield f"http://127.0.0.1:{port}"


def dashboard_queries() -> list[str]:
    queries = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, f"unsubstituted Grafana variable in {target['expr']!r}"
            queries.append(expr)
    return queries


def rule_queries() -> list[str]:
    """Each recording rule's expression and its recorded series; each alert's compared quantity."""
    queries = []
    for rule in rules():
        if "record" in rule:
            queries += [rule["expr"], rule["record"]]
        else:
            queries.append(split_alert(rule["expr"])[0])
    return queries


# Label values the rules and the dashboard rely on, as the service really writes them.
LABEL_FACTS = [
    'yolor_requests_total{route="/detect", status="200"}',
    'yolor_requests_total{route="/detect", status="415"}',
    'yolor_requests_total{route="/detect/json", status="200"}',
    'yolor_requests_total{route="unmatched", status="404"}',
    'yolor_rejected_total{reason="invalid_image"}',
    'yolor_request_duration_seconds_bucket{route="/detect", le="+Inf"}',
    'yolor_model_info{model!="", version!="", arch!="", backend!="", precision!="", max_batch!=""}',
    'yolor_images_total{model!="", version!=""}',
    'yolor_stream_frames_total{stage="processed"} > 0',
    'yolor_stream_state{state="running"} == 1',
]


def start_stream(base_url: str) -> None:
    """A clip played in a loop as a stream, tracked, with a line and a zone: every stream series."""
    spec = {
        "source": "cam.mp4", "loop": True, "fps": 10, "track": True,
        "lines": [{"name": "middle", "start": [0, 0.5], "end": [1, 0.5]}],
        "zones": [{"name": "left", "polygon": [[0, 0], [0.5, 0], [0.5, 1], [0, 1]]}],
    }  # fmt: skip
    response = httpx.post(f"{base_url}/streams", json=spec, headers={"X-API-Key": ADMIN_KEY}, trust_env=False)
    assert response.status_code == 201, response.text


def query(client: httpx.Client, expr: str) -> list[dict[str, Any]]:
    response = client.get("/api/v1/query", params={"query": expr})
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", f"{expr!r}: {body}"
    return body["data"]["result"]


def send_traffic(base_url: str) -> int:
    """Good and bad requests; returns the number of images answered."""
    import cv2
    from skimage import data

    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    assert ok
    image = ("astronaut.jpg", jpeg.tobytes(), "image/jpeg")
    images = 0
    with httpx.Client(base_url=base_url, timeout=30, trust_env=False) as client:
        for count in (2, 3, 4, 2):
            response = client.post("/detect", files=[("images", image)] * count)
            assert response.status_code == 200, response.text
            images += count
        body = {"images": [base64.b64encode(image[1]).decode()]}
        assert client.post("/detect/json", json=body).status_code == 200
        images += 1
        for _ in range(2):
            bad = client.post("/detect", files=[("images", ("notes.jpg", b"not an image", "image/jpeg"))])
            assert bad.status_code == 415, bad.text
        assert client.get("/no/such/path").status_code == 404
    return images


def problems_after(deadline: float, check: Callable[[], list[str]]) -> list[str]:
    """Run `check` until it reports no problems or `deadline` (monotonic) passes; its last report."""
    while (problems := check()) and time.monotonic() < deadline:
        time.sleep(0.5)
    return problems


@pytest.mark.api
@pytest.mark.slow
def test_prometheus_answers_every_rule_and_dashboard_query(service, prometheus, tmp_path):
    """Every dashboard query, recording rule (expression and recorded series) and alert quantity
    returns data once the service has had good and bad traffic; every rule evaluates without error."""
    expressions = list(dict.fromkeys(dashboard_queries() + rule_queries() + LABEL_FACTS))
    rule_names = {rule.get("record") or rule["alert"] for rule in rules()}
    deadline = time.monotonic() + 60
    with httpx.Client(base_url=prometheus, timeout=10, trust_env=False) as client:

        def not_scraped() -> list[str]:
            values = [sample["value"][1] for sample in query(client, 'up{job="yolor"}')]
            return [] if values == ["1"] else [f'up{{job="yolor"}} = {values}']

        assert not (problems := problems_after(deadline, not_scraped)), problems
        start_stream(service)
        images = send_traffic(service)

        def traffic_not_scraped() -> list[str]:
            result = query(client, "sum(yolor_images_total)")
            seen = float(result[0]["value"][1]) if result else None
            return [] if seen == images else [f"yolor_images_total = {seen}, {images} images sent"]

        assert not (problems := problems_after(deadline, traffic_not_scraped)), problems

        def empty_results() -> list[str]:
            return [expr for expr in expressions if not query(client, expr)]

        empty = problems_after(deadline, empty_results)
        assert not empty, f"queries with an empty result (logs in {tmp_path}):\n" + "\n".join(empty)

        def unhealthy_rules() -> list[str]:
            groups = client.get("/api/v1/rules").json()["data"]["groups"]
            found = {rule["name"]: rule for group in groups for rule in group["rules"]}
            return [
                f"{name}: {found[name]['health']} {found[name].get('lastError', '')}"
                if name in found
                else f"{name}: not loaded"
                for name in sorted(rule_names)
                if name not in found or found[name]["health"] != "ok"
            ]

        unhealthy = problems_after(deadline, unhealthy_rules)
        assert not unhealthy, f"rules not healthy (logs in {tmp_path}):\n" + "\n".join(unhealthy)

        # The service is traced: Prometheus keeps a latency exemplar naming a request's trace.
        traced = httpx.post(f"{service}/detect/json", json={"images": []}, trust_env=False, timeout=30)
        trace_id = traced.headers["traceparent"].split("-")[1]

        def no_exemplar() -> list[str]:
            found = client.get(
                "/api/v1/query_exemplars",
                params={"query": "yolor_request_duration_seconds_bucket", "start": time.time() - 600},
            ).json()["data"]
            ids = {e["labels"].get("trace_id") for series in found for e in series["exemplars"]}
            return (
                []
                if trace_id in ids
                else [f"no exemplar with trace_id {trace_id}: {sorted(map(str, ids))[:5]}"]
            )

        assert not (problems := problems_after(deadline + 30, no_exemplar)), problems
