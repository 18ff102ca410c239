"""`yolor bench`: throughput and latency of a model as the service runs it (no torch needed)."""
