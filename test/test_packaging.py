"""The package's build description is consistent and the installed prefix is what ROS expects.

ROS-free (no rclpy import in this process): package.xml, CMakeLists.txt and msg/ are read as
text; the generated messages are imported in a subprocess.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytestmark = pytest.mark.core

ROOT = Path(__file__).resolve().parents[1]
PKG = "csr_ros"
MSG_FILES = sorted((ROOT / "msg").glob("*.msg"))
PRIMITIVES = {
    "bool", "byte", "char", "float32", "float64", "int8", "uint8", "int16", "uint16",
    "int32", "uint32", "int64", "uint64", "string", "wstring",
}


def _msg_dependencies() -> set[str]:
    """Packages whose types the .msg files use (e.g. std_msgs from std_msgs/Header)."""
    deps = set()
    for path in MSG_FILES:
        for line in path.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            ftype = re.sub(r"\[.*\]$", "", line.split()[0])
            ftype = re.sub(r"<=\d+$", "", ftype)  # bounded strings
            if "/" in ftype:
                deps.add(ftype.split("/")[0])
            else:
                assert ftype in PRIMITIVES, f"{path.name}: unqualified type {ftype!r}"
    return deps


def _package_xml() -> ET.Element:
    return ET.parse(ROOT / "package.xml").getroot()


def _rosidl_call() -> str:
    text = (ROOT / "CMakeLists.txt").read_text()
    m = re.search(r"rosidl_generate_interfaces\s*\((.*?)\)", text, re.S)
    assert m, "CMakeLists.txt has no rosidl_generate_interfaces(...)"
    return m.group(1)


def _install_prefix() -> Path:
    """The prefix csr_ros is installed in: an AMENT_PREFIX_PATH entry (colcon) or the venv."""
    candidates = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    candidates.append(sys.prefix)
    for prefix in map(Path, candidates):
        if (prefix / "share/ament_index/resource_index/packages" / PKG).is_file():
            return prefix
    pytest.fail(f"{PKG} is not installed in any of {candidates}: run `bash scripts/setup.sh`")


def test_msg_files_exist():
    assert {p.stem for p in MSG_FILES} >= {"StateIncrement", "ActionChunk", "Utterance", "CacheStatus"}


def test_package_xml_declares_what_the_msgs_need():
    root = _package_xml()
    assert root.tag == "package" and root.get("format") == "3"
    assert root.findtext("name") == PKG
    assert root.findtext("export/build_type") == "ament_cmake"
    assert "rosidl_interface_packages" in [e.text for e in root.findall("member_of_group")]

    def listed(*tags: str) -> set[str]:
        return {e.text for tag in tags for e in root.findall(tag)}

    build = listed("depend", "build_depend", "buildtool_depend")
    run = listed("depend", "exec_depend")
    assert "rosidl_default_generators" in build
    assert "rosidl_default_runtime" in run
    deps = _msg_dependencies()
    assert deps, "the msgs use std_msgs/builtin_interfaces types"
    assert deps <= build and deps <= run, f"not declared in package.xml: {deps - (build & run)}"


def test_every_msg_is_generated_with_its_dependencies():
    call = _rosidl_call()
    listed = set(re.findall(r'"?(msg/[\w/]+\.msg)"?', call))
    assert listed == {f"msg/{p.name}" for p in MSG_FILES}
    m = re.search(r"DEPENDENCIES\s+([^)]*)", call)
    assert m and _msg_dependencies() <= set(m.group(1).split())


def test_installed_prefix_has_the_ros_layout():
    prefix = _install_prefix()
    share = prefix / "share" / PKG
    assert (share / "package.xml").is_file()
    assert ET.parse(share / "package.xml").getroot().findtext("name") == PKG
    for exe in ("csr_node", "csr_replay"):
        path = prefix / "lib" / PKG / exe
        assert path.is_file(), path
        assert os.access(path, os.X_OK), f"{path} is not executable"
        assert path.read_text().startswith("#!/usr/bin/env python3\n")
    assert sorted(p.name for p in (share / "msg").glob("*.msg")) == sorted(p.name for p in MSG_FILES)
    # what the installed `csr-ros demo` reads when it runs outside the source tree
    assert (share / "episodes" / "household_small" / "qa.jsonl").is_file()
    assert (share / "config" / "csr.yaml").is_file()


@pytest.mark.parametrize("cwd", ["source_tree", "elsewhere"])
def test_generated_msgs_import_from_source_tree_and_installed_copy(cwd, tmp_path):
    """From the repository root the source csr_ros/ shadows the installed one; extend_path in
    csr_ros/__init__.py must still find the generated csr_ros.msg of the installed copy."""
    code = (
        "import csr_ros, csr_ros.msg\n"
        "from csr_ros.msg import StateIncrement, ActionChunk, Utterance, CacheStatus\n"
        "print(csr_ros.__file__); print(csr_ros.msg.__file__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT if cwd == "source_tree" else tmp_path,
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    pkg_file, msg_file = map(Path, out.stdout.split())
    installed = _install_prefix()
    assert msg_file.resolve().is_relative_to(installed.resolve())
    if cwd == "source_tree":
        assert pkg_file.resolve() == (ROOT / PKG / "__init__.py").resolve()
    else:
        assert pkg_file.resolve().is_relative_to(installed.resolve())
