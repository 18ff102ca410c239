"""`yolor bench peers`: the same model served by `yolor serve` and by the peer servers a user would
consider (LitServe, Ray Serve, BentoML, MLServer), each with its own batching and its documented way
to scale on one host, doing the same work per image (bench/peers/work.py), checked to answer the same
detections, then measured side by side under the same load.

The peers run from their own venvs (`venvs.py`, installed on demand under .venv/cache/peers), never
from the project's: `apps/` and `work.py` are imported only there.
"""
