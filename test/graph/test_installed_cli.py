"""The installed package's commands with their defaults, from a temporary directory outside the
repository (as a user runs them after the set-up): nothing may depend on the source tree.

* ``csr-ros run`` with no arguments loads the installed ``share/csr_ros/config/csr.yaml``: the
  graph comes up with the model (backend hf, ~2 s to load) and its 4 perception inputs, and
  exits 0 on SIGINT. On the colcon route, which has no ``csr-ros`` console script, the installed
  ROS executable ``lib/csr_ros/csr_node`` is started the same way (no arguments).
* ``csr-ros bench soak --minutes 1`` (the README's command) completes and writes its JSON
  (``out/soak.json`` under the working directory). Costs its one minute plus ~10 s.

The child's environment is this one unchanged (no source root added to PYTHONPATH): it imports
the installed package.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from csr_ros.share import share_dir

pytestmark = [pytest.mark.graph, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
UP_TIMEOUT_S = 300.0  # the model's load on a loaded 2-core machine
CONSOLE = Path(sys.prefix) / "bin" / "csr-ros"  # the pip route's console script


def _cli(*args: str) -> list[str]:
    """``csr-ros <args>`` as installed (the module of the installed package where no console script is)."""
    return [str(CONSOLE), *args] if CONSOLE.is_file() else [sys.executable, "-m", "csr_ros.cli", *args]


def _graph_without_arguments() -> list[str]:
    if CONSOLE.is_file():
        return [str(CONSOLE), "run"]
    return [str(share_dir().parents[1] / "lib" / "csr_ros" / "csr_node")]  # colcon: install/csr_ros/lib/...


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    assert not tmp_path.resolve().is_relative_to(ROOT.resolve())
    return tmp_path


def test_run_without_arguments_has_the_installed_configs_4_inputs_and_exits_0_on_sigint(outside):
    log_path = outside / "run.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(_graph_without_arguments(), cwd=outside, stdout=log, stderr=subprocess.STDOUT,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        t0 = time.monotonic()
        while "csr graph up:" not in log_path.read_text() and proc.poll() is None \
                and time.monotonic() - t0 < UP_TIMEOUT_S:
            time.sleep(0.2)
        text = log_path.read_text()
        assert "csr graph up: 4 inputs, backend hf" in text, text[-4000:]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, log_path.read_text()[-4000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_bench_soak_one_minute_completes_and_writes_its_json(outside):
    proc = subprocess.run(_cli("bench", "soak", "--minutes", "1"), cwd=outside, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    result = json.loads((outside / "out" / "soak.json").read_text())
    assert result["minutes"] == 1.0 and result["backend"] == "fake"
    assert result["chunks_received"] > 0 and result["increments_on_disk"] > 0
    assert result["increments_lost"] == 0, result
