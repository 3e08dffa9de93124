"""perf/* figures: host memory of the process tree, throughput from a round's metrics."""
import subprocess
import sys
import time

import pytest

from launch.resources import host_rss_mb, round_perf


def test_host_memory_counts_child_processes():
    before = host_rss_mb()
    child = subprocess.Popen([sys.executable, "-c",
                              "import sys, time; b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096]);"
                              " print('ready', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        during = host_rss_mb()
        assert during - before > 250          # the child's 300 MiB, touched page by page
    finally:
        child.kill()
        child.wait()
    time.sleep(0.1)
    assert host_rss_mb() < during - 250


def test_round_perf_derives_throughput_from_the_round():
    m = round_perf({"time/search": 4.0, "tokens/generated": 1000, "time/policy_train": 2.0,
                    "learner/policy_steps": 10, "search/simulations": 24.0, "perf/problems_per_s": 2.0}, batch_size=32)
    assert m["perf/simulations_per_s"] == pytest.approx(48.0)
    assert m["perf/tokens_per_s"] == pytest.approx(250.0)
    assert m["perf/learner_samples_per_s"] == pytest.approx(160.0)
    assert m["perf/host_rss_mb"] > 10
    bootstrap = round_perf({"tokens/generated": 0}, batch_size=32)   # no search phase: no token rate
    assert not {"perf/tokens_per_s", "perf/learner_samples_per_s", "perf/simulations_per_s"} & set(bootstrap)
