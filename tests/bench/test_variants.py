"""bench.variants: the side-by-side benchmarks' variants, command line and record."""

from __future__ import annotations

import argparse
import json

import pytest

from bench.variants import Run, Variant, resolve

pytestmark = pytest.mark.unit


def test_a_variant_names_its_revision_and_environment() -> None:
    assert Variant.parse("off") == Variant("off")
    assert Variant.parse("before@HEAD~1") == Variant("before", "HEAD~1")
    parsed = Variant.parse("on@abc123:YOLOR_TRACING=1,OTEL_EXPORTER_OTLP_ENDPOINT=http://h:4318")
    assert parsed == Variant(
        "on", "abc123", {"YOLOR_TRACING": "1", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://h:4318"}
    )


def test_a_run_records_which_commit_each_variant_ran(tmp_path) -> None:
    parser = argparse.ArgumentParser()
    Run.add_arguments(parser, levels="1,32", seconds=12.0, rounds=3)
    args = parser.parse_args(["--out", str(tmp_path), "--variant", "before@HEAD", "--variant", "now:X=1"])
    run = Run.of(args, default="off")
    assert (run.levels, run.seconds, run.rounds, run.size) == ([1, 32], 12.0, 3, (640, 480))
    assert [v.name for v in run.variants] == ["before", "now"]
    run.write("t", {"before": [1], "now": [2]}, "| table |\n", extra={"a": 1})
    record = json.loads((tmp_path / "t.json").read_text())
    head = resolve("HEAD")
    assert record["variants"] == {
        "before": {"revision": head, "env": {}},
        "now": {"revision": None, "env": {"X": "1"}},
    }
    assert record["extra"] == {"a": 1} and record["results"] == {"before": [1], "now": [2]}
    assert record["this_tree"].startswith(head)
    markdown = (tmp_path / "t.md").read_text()
    assert f"before = {head}" in markdown and markdown.endswith("| table |\n")
    assert Run.of(parser.parse_args(["--out", str(tmp_path)]), default="off").variants == [Variant("off")]
