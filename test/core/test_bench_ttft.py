"""The TTFT benchmark's code path (the one a GPU run uses) on the CPU with a tiny shape."""

from __future__ import annotations

import argparse
import json

import pytest

from csr_ros.cli.bench import ttft

pytestmark = pytest.mark.core


def test_bench_ttft_tiny_shape_writes_the_json(tmp_path):
    p = argparse.ArgumentParser()
    ttft.add_args(p)
    out = tmp_path / "ttft.json"
    args = p.parse_args(["--shape", "tiny", "--device", "cpu", "--lengths", "64,256", "--reps", "2",
                         "--full-reps", "1", "--attention", "default", "--json", str(out), "--plot", str(tmp_path / "t.png")])
    ttft.run(args)
    data = json.loads(out.read_text())
    assert data["model"] == "random-tiny" and data["dtype"] == "float32"
    assert [r["n"] for r in data["rows"]] == [64, 256]
    for r in data["rows"]:
        for col in ("full", "csr", "floor", "query_only", "decode", "csr_default", "query_only_default",
                    "bandwidth_floor"):
            assert r[f"{col}_ms"] > 0, col
        assert r["detail"]["first_tokens"]["query_only"] == r["detail"]["first_tokens"]["query_only_default"]
        assert r["same_first_token"], r["detail"]["first_tokens"]
    assert (tmp_path / "t.png").stat().st_size > 1000
