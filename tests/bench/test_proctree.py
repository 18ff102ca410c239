"""A process tree's CPU and memory, against processes whose use is known."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from bench.proctree import ProcessTree, descendants

pytestmark = pytest.mark.unit

# A parent that starts two children: one burns ~0.6 s of CPU, one holds 150 MB touched; all sleep.
TREE = """
import subprocess, sys, time
burn = "import time\\nt = time.process_time()\\nwhile time.process_time() - t < 0.6: pass\\ntime.sleep(30)"
hold = "x = bytearray(150 << 20)\\nx[::4096] = b'1' * len(x[::4096])\\nimport time\\ntime.sleep(30)"
kids = [subprocess.Popen([sys.executable, "-c", c]) for c in (burn, hold)]
print("started", flush=True)
time.sleep(30)
"""


def test_cpu_and_memory_of_the_whole_tree():
    parent = subprocess.Popen([sys.executable, "-c", TREE], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None and parent.stdout.readline().strip() == "started"
        tree = ProcessTree(parent.pid, interval_s=0.1)
        tree.watch()
        deadline = time.monotonic() + 10
        while tree.cpu_seconds() < 0.6 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        pids = descendants(parent.pid)
        assert len(pids) == 3 and pids[0] == parent.pid
        cpu = tree.cpu_seconds()
        assert 0.6 <= cpu < 3.0  # the burner's 0.6 s, plus three interpreters' start-up
        peak = tree.stop()
        assert 150 << 20 <= peak < 400 << 20
    finally:
        for pid in descendants(parent.pid)[1:]:
            subprocess.run(["kill", str(pid)], check=False)
        parent.kill()
        parent.wait()
        assert parent.stdout is not None
        parent.stdout.close()
