"""``csr-ros demo`` end to end on the fake backend (the README's first command, without the
model): the graph starts, the shipped episode is replayed into it, every question is asked over
csr/ask and answered (none refused: a question waits for a free answer slot), the summary is
printed, and the demo ends by itself with exit code 0."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.graph, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
EPISODE = ROOT / "episodes" / "household_small"


def test_demo_replays_the_episode_answers_every_question_and_ends():
    ids = [json.loads(line)["id"] for line in (EPISODE / "qa.jsonl").read_text().splitlines() if line.strip()]
    # x40: the 400-s episode in 10 s, so questions arrive faster than the fake answers finish
    proc = subprocess.run([sys.executable, "-m", "csr_ros.cli", "demo", "--model", "fake", "--rate", "40"],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "refused" not in out
    asked = re.findall(r"\] Q (q\d+):", out)
    answered = re.findall(r"\] A (q\d+) \((\w+), TTFT \d+ ms\)", out)
    assert sorted(asked) == sorted(ids)
    assert sorted(rid for rid, _ in answered) == sorted(ids)
    assert {ctx for _, ctx in answered} == {"memory"}
    assert re.search(rf"summary: {len(ids)}/{len(ids)} questions answered", out)
    m = re.search(r"evictions: (\d+) asynchronous .*, (\d+) synchronous", out)
    assert m and int(m.group(1)) >= 1, out  # the 2048-token budget forces reconciliations
