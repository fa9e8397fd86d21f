"""The GPU runs' options of ``bench evict``, ``bench multitask`` and ``bench ttft`` on the CPU with the
tiny shape: ``--cuda-graphs explicit`` (the padded bucketed forward without capture), ``--hot-stream``,
``--split-kv``, ``--graph-max-tokens``, ``--query-lengths``. The real scheduler, language lane and
reconciler run; every timed query and increment goes through the graph runner (none eager), the
rebuild never does. ~40 s on 2 cores."""

from __future__ import annotations

import argparse
import json

import pytest

from csr_ros.cli.bench import evict, multitask, ttft
from csr_ros.cli.bench.ttft_lengths import reference_size
from csr_ros.core.model import attention

pytestmark = pytest.mark.core
GPU_OPTS = ["--cuda-graphs", "explicit", "--split-kv", "on", "--graph-max-tokens", "256"]


@pytest.fixture(autouse=True)
def restore_globals():
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
    attention.set_split_kv(False)


def parse(mod, argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    mod.add_args(p)
    return p.parse_args(argv)


def test_bench_evict_gpu_options_on_the_cpu(tmp_path):
    out = tmp_path / "evict.json"
    evict.run(parse(evict, ["--shape", "tiny", "--device", "cpu", "--budget", "2048", "--cycles", "2",
                            "--increment-hz", "40", "--query-hz", "20", "--max-s", "60", "--modes", "asr",
                            "--hot-stream", "on", "--json", str(out), *GPU_OPTS]))
    data = json.loads(out.read_text())
    asr = data["modes"]["asr"]
    assert asr["cycles"] == 2 and asr["lost_increments"] == 0 and asr["sync_fallbacks"] == 0
    gpu = data["gpu"]
    assert gpu["cuda_graphs"] == "explicit" and gpu["graph_sizes"][-1] == 256 and gpu["split_kv"] is True
    fwd = asr["runner_forwards"]
    assert fwd["explicit"] > asr["queries"] and fwd["declined"] == 0  # no timed query or increment ran eagerly
    assert fwd["background"] > 0  # the rebuild (and its replay) kept off the runner


def test_bench_multitask_gpu_options_on_the_cpu(tmp_path):
    out = tmp_path / "multitask.json"
    multitask.run(parse(multitask, ["--shape", "tiny", "--device", "cpu", "--modes", "shared", "--rounds", "1",
                                    "--duration-s", "2", "--warmup-s", "0.5", "--state-tokens", "300",
                                    "--policy-period-s", "0.1", "--tokens-per-frame", "2", "--threads", "1",
                                    "--hot-stream", "on", "--json", str(out), *GPU_OPTS]))
    data = json.loads(out.read_text())
    shared = data["modes"]["shared"]
    assert shared["decision_hz"] > 0 and shared["lang_tok_s"] > 0 and shared["stale_published"] == 0
    assert data["gpu"]["runner_stats"]["explicit"] > 0 and data["gpu"]["hot_stream"] == "on"


def test_bench_ttft_query_lengths_on_the_cpu(tmp_path):
    out = tmp_path / "ttft.json"
    ttft.run(parse(ttft, ["--shape", "tiny", "--device", "cpu", "--lengths", "128", "--reps", "1", "--full-reps", "1",
                          "--query-lengths", "17,45", "--json", str(out), *GPU_OPTS]))
    row = json.loads(out.read_text())["rows"][0]
    assert row["graph_check"]["same_tokens"]
    by_len = row["query_lengths"]
    assert set(by_len) == {"17", "45"} and by_len["45"]["ref_size"] == 32
    assert all(v["path"] == "explicit" and v["query_ms"] > 0 for v in by_len.values())


def test_reference_sizes():
    assert [reference_size(n) for n in (17, 45, 80, 1)] == [32, 32, 96, 32]
