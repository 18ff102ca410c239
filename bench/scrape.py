"""What the server says it did, from its Prometheus `/metrics`: images, batch sizes, CPU time.

Read before and after a measured window; the difference (`ServerCounters.minus`) is the window's.
`process_cpu_seconds_total` is the server process's user + system CPU time (prometheus-client's
process collector, Linux only; absent elsewhere, then None). With several uvicorn workers each
scrape reaches one worker, so these numbers are that worker's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

MODEL_LABELS = {"model", "version"}  # what a model's metrics carry besides their own labels


@dataclass(frozen=True)
class ServerCounters:
    images: float = 0.0  # yolor_images_total
    batches: float = 0.0  # yolor_batch_size_count
    batched_images: float = 0.0  # yolor_batch_size_sum
    batch_buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count
    cpu_seconds: float | None = None

    @classmethod
    def parse(cls, text: str) -> ServerCounters:
        values: dict[str, float] = {}
        buckets: dict[float, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:  # summed over the models (labels model, version)
                labels = set(sample.labels) - MODEL_LABELS
                if sample.name == "yolor_batch_size_bucket":
                    le = float(sample.labels["le"])
                    buckets[le] = buckets.get(le, 0.0) + sample.value
                elif not labels:
                    values[sample.name] = values.get(sample.name, 0.0) + sample.value
        return cls(
            images=values.get("yolor_images_total", 0.0),
            batches=values.get("yolor_batch_size_count", 0.0),
            batched_images=values.get("yolor_batch_size_sum", 0.0),
            batch_buckets=buckets,
            cpu_seconds=values.get("process_cpu_seconds_total"),
        )

    def minus(self, before: ServerCounters) -> ServerCounters:
        cpu = None
        if self.cpu_seconds is not None and before.cpu_seconds is not None:
            cpu = self.cpu_seconds - before.cpu_seconds
        return ServerCounters(
            images=self.images - before.images,
            batches=self.batches - before.batches,
            batched_images=self.batched_images - before.batched_images,
            batch_buckets={le: n - before.batch_buckets.get(le, 0.0) for le, n in self.batch_buckets.items()},
            cpu_seconds=cpu,
        )

    @property
    def mean_batch(self) -> float | None:
        return self.batched_images / self.batches if self.batches else None

    def batch_histogram(self) -> dict[str, int]:
        """Batches per size bucket, e.g. {"1": 3, "2": 0, "3-4": 5, ...}; empty buckets left out."""
        out: dict[str, int] = {}
        previous_le, previous_n = 0.0, 0.0
        for le in sorted(self.batch_buckets):
            n = self.batch_buckets[le] - previous_n
            if n > 0:
                low, high = int(previous_le) + 1, le
                name = (
                    f">{int(previous_le)}"
                    if high == float("inf")
                    else (str(int(high)) if low == high else f"{low}-{int(high)}")
                )
                out[name] = round(n)
            previous_le, previous_n = le, self.batch_buckets[le]
        return out
