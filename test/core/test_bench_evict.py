"""The eviction benchmark's code path (both modes) on the tiny random model, a few cycles."""

from __future__ import annotations

import argparse
import json

import pytest

from csr_ros.cli.bench import evict

pytestmark = pytest.mark.core


@pytest.fixture
def one_thread():
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)  # the bench sets the inference thread's budget


def test_bench_evict_tiny_shape_writes_the_json_and_loses_nothing(tmp_path, one_thread):
    p = argparse.ArgumentParser()
    evict.add_args(p)
    out = tmp_path / "evict.json"
    args = p.parse_args(["--shape", "tiny", "--budget", "2048", "--cycles", "3", "--increment-hz", "40",
                         "--query-hz", "20", "--max-s", "60", "--json", str(out), "--plot", str(tmp_path / "e.png")])
    evict.run(args)
    data = json.loads(out.read_text())
    assert data["model"] == "random-tiny" and data["budget_tokens"] == 2048
    for mode in ("asr", "sync"):
        m = data["modes"][mode]
        assert m["cycles"] == 3 and m["queries"] > 0
        assert m["ttft_ms_p50"] <= m["ttft_ms_p99"] <= m["ttft_ms_max"]
        assert m["lost_increments"] == 0 and m["evicted_by_policy"] == 0
        assert m["accepted"] == m["in_state"] + m["represented_in_memory"]
    assert data["modes"]["sync"]["sync_fallbacks"] == 0  # sync mode compacts at the high-water mark
    assert data["hot_path_gate"]["enabled"] and data["threads"]["asr_query_hot"] == 0  # the default
    assert {"page_faults", "sys_ms", "cpu_ms"} <= set(data["samples"]["asr"]["queries"][0])
    assert (tmp_path / "e.png").stat().st_size > 1000


def test_stream_is_deterministic_and_carries_facts():
    a = [evict.observation(k, k) for k in range(20)]
    assert a == [evict.observation(k, k) for k in range(20)]
    assert {src for src, _, _ in a} == {"/joints", "/objects", "/odom", "/battery", "/speech"}
    assert all(facts for src, _, facts in a if src != "/speech")
