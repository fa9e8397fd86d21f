"""The colcon route of the README, on a ROS 2 machine emulated from the wheels (ros_machine.py):
clone into a workspace, ``colcon build``, ``source install/setup.bash``, start the installed
``csr_node`` with no arguments, ``colcon test``.

Deselected by default (marker ``colcon``): CI runs it in its own step (`.ci/run`), ``pytest -m
colcon``. Cost on 2 cores (measured under the CPU lock): the build 21-49 s, the node's start ~8 s,
``colcon test`` (the whole suite, as a user on a ROS machine runs it) 2-4 min; colcon's own venv
is made once (~35 s). With ``CSR_COLCON_JSON=<path>`` the measured times are written there.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from ros_machine import PKG, ROOT, RosMachine, copy_sources  # test/colcon/ros_machine.py

pytestmark = [pytest.mark.colcon, pytest.mark.slow]

UP_TIMEOUT_S = 300.0   # model load on a loaded 2-core machine
TIMINGS: dict[str, float] = {}


def _colcon(machine: RosMachine, ws: Path, *args: str, timeout_s: float) -> tuple[int, str, float]:
    """Runs ``colcon <args>`` in the workspace; (exit code, output, wall time in s)."""
    t0 = time.monotonic()
    r = subprocess.run([str(machine.colcon), *args], cwd=ws, env=machine.env, capture_output=True,
                       text=True, timeout=timeout_s)
    return r.returncode, r.stdout + r.stderr, time.monotonic() - t0


def _in_workspace_shell(ws: Path, command: str) -> list[str]:
    """``command`` in a shell that sourced the workspace's install/setup.bash (over the underlay)."""
    return ["bash", "-c", f"source {ws}/install/setup.bash && {command}"]


@pytest.fixture(scope="module")
def workspace(ros_machine: RosMachine, tmp_path_factory) -> Path:
    """``~/ws`` with ``src/csr_ros`` (the working tree as a clone has it), built with colcon."""
    ws = tmp_path_factory.mktemp("ws")
    copy_sources(ws / "src" / PKG)
    rc, out, build_s = _colcon(ros_machine, ws, "build", "--packages-select", PKG, timeout_s=900)
    assert rc == 0, out[-6000:]
    TIMINGS["colcon_build_s"] = round(build_s, 1)
    return ws


def test_the_install_tree_has_the_package_and_the_underlay_does_not(workspace, ros_machine):
    prefix = workspace / "install" / PKG
    for rel in ("lib/csr_ros/csr_node", "lib/csr_ros/csr_replay", "share/csr_ros/package.xml",
                "share/csr_ros/config/csr.yaml", "share/csr_ros/config/actions.yaml",
                "share/csr_ros/launch/csr.launch.py", "share/csr_ros/episodes/household_small/qa.jsonl",
                "share/ament_index/resource_index/packages/csr_ros"):
        assert (prefix / rel).is_file(), rel
    assert os.access(prefix / "lib/csr_ros/csr_node", os.X_OK)
    assert not list(ros_machine.underlay.glob("share/ament_index/resource_index/packages/csr*"))
    # what a sourced shell imports: the package, its messages and its share dir from install/
    code = ("import csr_ros, csr_ros.msg, rclpy; from csr_ros.share import share_dir; "
            "print(csr_ros.__file__, csr_ros.msg.__file__, share_dir(), rclpy.__file__)")
    r = subprocess.run(_in_workspace_shell(workspace, f"python3 -c '{code}'"), cwd=workspace.parent,
                       env=ros_machine.env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    pkg, msg, share, rclpy_file = map(Path, r.stdout.split())
    assert pkg.is_relative_to(prefix) and msg.is_relative_to(prefix) and share == prefix / "share" / PKG
    assert rclpy_file.is_relative_to(ros_machine.underlay)


def test_installed_csr_node_without_arguments_comes_up_with_4_inputs_and_exits_0_on_sigint(
        workspace, ros_machine, tmp_path):
    log_path = tmp_path / "csr_node.log"
    exe = workspace / "install" / PKG / "lib" / PKG / "csr_node"
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(_in_workspace_shell(workspace, f"exec {exe}"), cwd=tmp_path,
                                env=ros_machine.env, stdout=log, stderr=subprocess.STDOUT)
    try:
        while "csr graph up:" not in log_path.read_text() and proc.poll() is None \
                and time.monotonic() - t0 < UP_TIMEOUT_S:
            time.sleep(0.2)
        TIMINGS["csr_node_up_s"] = round(time.monotonic() - t0, 1)
        text = log_path.read_text()
        assert "csr graph up: 4 inputs, backend hf" in text, text[-4000:]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, log_path.read_text()[-4000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _suite_size() -> int:
    """How many tests the pip route's ``pytest`` selects (the same addopts and markers)."""
    r = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:]
    return sum(1 for line in r.stdout.splitlines() if "::" in line)


def test_colcon_test_runs_the_whole_suite_and_it_passes(workspace, ros_machine):
    rc, out, test_s = _colcon(ros_machine, workspace, "test", "--packages-select", PKG, timeout_s=1500)
    TIMINGS["colcon_test_s"] = round(test_s, 1)
    assert rc == 0, out[-6000:]
    xunit = workspace / "build" / PKG / "test_results" / PKG / "pytest.xunit.xml"
    assert xunit.is_file(), out[-6000:]
    suite = ET.parse(xunit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    assert counts["failures"] == counts["errors"] == 0, out[-6000:]
    assert counts["tests"] == _suite_size(), counts
    TIMINGS["colcon_test_count"] = counts["tests"]
    rc, summary, _ = _colcon(ros_machine, workspace, "test-result", "--verbose", timeout_s=120)
    assert rc == 0, summary


def teardown_module(module) -> None:
    """Prints the measured times (and writes them to ``$CSR_COLCON_JSON`` when set)."""
    print(f"\ncolcon route timings: {TIMINGS}")
    if os.environ.get("CSR_COLCON_JSON") and TIMINGS:
        path = Path(os.environ["CSR_COLCON_JSON"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**TIMINGS, "cores": os.cpu_count()}, indent=2) + "\n")
