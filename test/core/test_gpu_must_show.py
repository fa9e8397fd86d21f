"""scripts/gpu_check.sh's self-test (CPU fallbacks) and its PASS/FAIL summary on synthetic bench JSON,
so a change of a bench's JSON keys breaks here and not on a borrowed GPU. ~8 s."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from csr_ros.cli.bench import gpu_must_show, gpu_summary

pytestmark = pytest.mark.core
ROOT = Path(__file__).resolve().parents[2]


def test_selftest_on_the_cpu(tmp_path):
    res = gpu_must_show.selftest(str(tmp_path), "cpu")
    assert res["split_kv"]["correct"] and res["split_kv"]["use_split_kv"] is False  # never on a CPU
    assert res["buckets"]["equal"] and res["buckets"]["same_kv_length_and_ledger"]
    assert res["greedy"]["equal"] and res["streams"]["fallback_ok"]
    assert json.loads((tmp_path / "selftest.json").read_text())["device"] == "cpu"


def _write(out: Path, name: str, d: dict) -> None:
    (out / name).write_text(json.dumps(d))


def test_summary_marks_each_must_show(tmp_path):
    row = {"n": 122880, "query_only_ms": 15.0, "decode_ms": 11.0, "csr_ms": 29.0, "bandwidth_floor_ms": 8.3,
           "same_first_token": False, "same_first_token_within_noise": True, "graph_check": {"same_tokens": True},
           "logit_check": {"full_top2_gap": 0.03},
           "query_lengths": {"45": {"query_ms": 20.0, "ref_size": 32, "ref_ms": 14.0, "ratio": 20 / 14, "path": "graph"}}}
    _write(tmp_path, "ttft_gpu.json", {"device": "NVIDIA H100", "rows": [row]})
    asr = {"cycles": 100, "queries": 500, "ttft_ms_p50": 20.0, "ttft_ms_p99": 24.0, "ttft_ms_max": 45.0,
           "p99_over_p50": 1.2, "max_over_p50": 2.25, "lost_increments": 0, "sync_fallbacks": 0,
           "runner_forwards": {"graph": 900, "declined": 0}}
    _write(tmp_path, "evict_gpu.json", {"modes": {"asr": asr}})
    _write(tmp_path, "multitask_gpu.json", {"modes": {"shared": {"publish_hz": 10.0, "period_err_ms_p99": 1.0,
                                                                 "decision_hz": 9.95, "lang_tok_s": 140.0,
                                                                 "frame_overruns": 0, "frames": 200}}})
    got = {name: ok for name, ok, _ in gpu_summary.summarize(str(tmp_path))}
    assert got["query_only_ms <= 16 (N=122880)"] and not got["decode_ms <= 10 (N=122880)"]
    assert got["csr_ms <= 30 (N=122880)"] is True
    assert got["45-token query within 1.3x of the 32-token one (N=122880)"] is False
    assert got["first token = full re-prefill's at every N, or a tie within bf16 noise (logit_check)"]
    assert got["evict: ASR p99/p50 <= 1.25"] and not got["evict: ASR max/p50 <= 2"]
    assert got["evict: synchronous baseline in the same run"] is False
    assert got["multitask: decisions >= 10 Hz (>= 9.9 on the 10 Hz frame clock)"]
    assert got["multitask: language >= 150 tokens/s over 4 open answers"] is False
    assert got["selftest.json"] is None  # the stage that did not run is MISSING, not PASS
    assert len(json.loads((tmp_path / "checks.json").read_text())) == len(got)


def test_script_parses():
    assert subprocess.run(["bash", "-n", str(ROOT / "scripts" / "gpu_check.sh")]).returncode == 0
    assert subprocess.run([sys.executable, "-m", "csr_ros.cli.bench.gpu_must_show"], cwd=ROOT,
                          capture_output=True).returncode == 2  # usage
