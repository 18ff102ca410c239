"""Per-model inference statistics in Triton's layout (`GET /v2/models/{name}/stats`, gRPC
`ModelStatistics`), which perf_analyzer reads: cumulative counts and nanoseconds since start.

Per request: `success` (whole request), `fail`, `queue` (longest wait of its rows in the batch
queue), `compute_input` (decode + letterbox, image model), `compute_infer` (the backend calls),
`compute_output` (post-processing, image model). `inference_count` counts images (rows);
`execution_count` the backend batches that ran at least one of them (a batch shared by two
requests of the same model counts once), `batch_stats` those batches by size.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from service.core.batcher import BatchOutput

DURATIONS = (
    "success",
    "fail",
    "queue",
    "compute_input",
    "compute_infer",
    "compute_output",
    "cache_hit",
    "cache_miss",
)
_SEEN = 4096  # batch ids remembered to count each batch once


@dataclass
class _Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.ns += round(seconds * 1e9)

    def to_json(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class ModelStatistics:
    last_inference_ms: int = 0
    inference_count: int = 0
    execution_count: int = 0
    durations: dict[str, _Duration] = field(default_factory=lambda: {k: _Duration() for k in DURATIONS})
    batches: dict[int, _Duration] = field(default_factory=dict)  # batch size -> its compute_infer
    _seen: OrderedDict[int, None] = field(default_factory=OrderedDict)

    def success(
        self, outputs: list[BatchOutput], request_s: float, input_s: float = 0.0, output_s: float = 0.0
    ) -> None:
        self.last_inference_ms = int(time.time() * 1000)
        self.inference_count += len(outputs)
        d = self.durations
        d["success"].add(request_s)
        d["queue"].add(max((o.queue_s for o in outputs), default=0.0))
        d["compute_input"].add(input_s)
        d["compute_output"].add(output_s)
        runs = {o.batch_id: o for o in outputs}
        d["compute_infer"].add(sum(o.inference_s for o in runs.values()))
        for batch_id, out in runs.items():
            if batch_id in self._seen:
                continue
            self._seen[batch_id] = None
            if len(self._seen) > _SEEN:
                self._seen.popitem(last=False)
            self.execution_count += 1
            self.batches.setdefault(out.batch_size, _Duration()).add(out.inference_s)

    def failure(self, request_s: float) -> None:
        self.durations["fail"].add(request_s)

    def to_json(self, name: str, version: str) -> dict[str, Any]:
        return {
            "name": name,
            "version": version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {k: v.to_json() for k, v in self.durations.items()},
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": {"count": d.count, "ns": 0},
                    "compute_infer": d.to_json(),
                    "compute_output": {"count": d.count, "ns": 0},
                }
                for size, d in sorted(self.batches.items())
            ],
        }


class StatisticsBook:
    """The statistics of each v2 model name and version since start (Triton's statistics extension),
    one book for the HTTP and gRPC transports."""

    def __init__(self) -> None:
        self._by_name: dict[tuple[str, int], ModelStatistics] = {}

    def of(self, name: str, version: int = 1) -> ModelStatistics:
        return self._by_name.setdefault((name, version), ModelStatistics())
