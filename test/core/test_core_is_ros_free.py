"""csr_ros.core must import on a machine without ROS: every core module is imported in a
subprocess where rclpy, launch, *_msgs / *_srvs / *_interfaces and csr_ros.msg / csr_ros.nodes
cannot be imported (a meta-path finder raises ImportError for them)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.core

ROOT = Path(__file__).resolve().parents[2]

PROBE = r"""
import importlib, importlib.abc, json, pkgutil, sys
sys.path.insert(0, sys.argv[1])
BLOCKED_TOP = {"rclpy", "rcl", "rmw", "launch", "launch_ros", "launch_testing", "rosidl_runtime_py",
               "rosidl_parser", "ament_index_python", "rosbags"}
BLOCKED_SUFFIX = ("_msgs", "_srvs", "_interfaces", "_action")
attempts = []

class RosBlocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if (top in BLOCKED_TOP or top.endswith(BLOCKED_SUFFIX)
                or name.split(".")[:2] in (["csr_ros", "msg"], ["csr_ros", "nodes"])):
            attempts.append(name)
            raise ImportError(f"{name} is blocked: csr_ros.core must not import ROS")
        return None

sys.meta_path.insert(0, RosBlocker())
import csr_ros.core
names = ["csr_ros.core"] + [m.name for m in pkgutil.walk_packages(csr_ros.core.__path__, "csr_ros.core.")]
failed = {}
for name in names:
    try:
        importlib.import_module(name)
    except Exception as e:
        failed[name] = f"{type(e).__name__}: {e}"
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED_TOP)
print(json.dumps({"modules": names, "failed": failed, "attempts": attempts, "loaded": loaded}))
"""


def test_every_core_module_imports_without_ros():
    proc = subprocess.run([sys.executable, "-c", PROBE, str(ROOT)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"csr_ros.core.runtime.engine", "csr_ros.core.state.ledger", "csr_ros.core.config",
            "csr_ros.core.model.backends.fake"} <= set(out["modules"])
    assert out["failed"] == {}, out["failed"]
    assert out["attempts"] == [] and out["loaded"] == []


def test_the_blocker_blocks():
    """The probe itself works: importing rclpy through it fails."""
    probe = PROBE.replace('import csr_ros.core\n', 'import csr_ros.core\nimport rclpy\n')
    proc = subprocess.run([sys.executable, "-c", probe, str(ROOT)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0 and "rclpy is blocked" in proc.stderr
