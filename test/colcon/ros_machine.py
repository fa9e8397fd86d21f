"""A ROS 2 machine emulated from the pip route's wheels, for the colcon-route check.

On a ROS machine a user has ``/opt/ros/<distro>`` (sourced: ``AMENT_PREFIX_PATH``,
``CMAKE_PREFIX_PATH``, ``PYTHONPATH``, ``LD_LIBRARY_PATH``), the system ``python3`` and colcon as a
system tool. Here the same ROS 2 packages are the ``ros-*`` wheels in ``.venv``; this module makes
an *underlay* of them that looks like ``/opt/ros``:

* a tree of symlinks mirroring the ``.venv`` prefix with every file of csr_ros's own left out
  (its pip install, listed in its ``RECORD``): the colcon-built package must stand on its own,
  not on the copy the pip route installed;
* the environment ``setup.bash`` of a ROS install would set, pointing into that tree; the venv's
  base interpreter as the ``python3`` on ``PATH`` (CMake and the executables' ``#!/usr/bin/env
  python3`` find it, as they find ``/usr/bin/python3`` on a real install), the tree's ``bin/`` last;
* colcon from ``scripts/setup_colcon.sh`` (its own venv, as a system tool).
"""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PKG = "csr_ros"
OWN_NAME = re.compile(r"csr[_-]ros")  # csr_ros, csr-ros, libcsr_ros__*.so, csr_ros-0.1.0.dist-info
# What the underlay's setup.bash exports.
ROS_VARIABLES = ("AMENT_PREFIX_PATH", "CMAKE_PREFIX_PATH", "PYTHONPATH", "LD_LIBRARY_PATH", "ROS_DISTRO",
                 "ROS_VERSION", "ROS_PYTHON_VERSION")
# What makes the prefix a virtual environment (a ROS install has no interpreter of its own: CMake
# would otherwise find <prefix>/bin/python3 first, through CMAKE_PREFIX_PATH).
VENV_ONLY = re.compile(r"^(pyvenv\.cfg|\.csr_setup|python[0-9.]*|pip[0-9.]*|activate.*|Activate\.ps1)$")


@dataclass(frozen=True)
class RosMachine:
    """What a test needs of the emulated ROS machine."""

    colcon: Path       # the colcon executable
    underlay: Path     # the /opt/ros/<distro> stand-in
    env: dict[str, str]  # the environment after `source /opt/ros/<distro>/setup.bash`


def own_files() -> set[Path]:
    """Every path the pip route installed for csr_ros into this venv (from its RECORD)."""
    site = Path(sysconfig.get_paths()["purelib"])
    records = list(site.glob(f"{PKG}-*.dist-info/RECORD"))
    assert records, f"{PKG} is not pip-installed in {sys.prefix}: run `bash scripts/setup.sh`"
    out = set()
    for line in records[0].read_text().splitlines():
        rel = line.split(",", 1)[0]
        if rel:
            out.add(Path(os.path.normpath(site / rel)))
    return out


def mirror_without_own_files(src: Path, dst: Path) -> None:
    """``dst`` mirrors the venv ``src`` with symlinks, except csr_ros's own files (name or RECORD)
    and what makes it a venv (its interpreter, pyvenv.cfg)."""
    skip = own_files() | {src / name for name in os.listdir(src) if VENV_ONLY.match(name)}
    skip |= {src / "bin" / name for name in os.listdir(src / "bin") if VENV_ONLY.match(name)}
    keep_dirs = {a for p in skip for a in p.parents if a.is_relative_to(src)}

    def walk(s: Path, d: Path) -> None:
        d.mkdir(parents=True, exist_ok=True)
        for entry in os.scandir(s):
            path = Path(entry.path)
            if OWN_NAME.search(entry.name) or path in skip:
                continue
            if entry.is_symlink() and not os.path.isabs(os.readlink(path)):
                (d / entry.name).symlink_to(os.readlink(path))  # e.g. lib64 -> lib, kept inside
            elif path in keep_dirs and entry.is_dir(follow_symlinks=False):
                walk(path, d / entry.name)
            else:
                (d / entry.name).symlink_to(path)

    walk(src, dst)


def base_python() -> Path:
    """The interpreter the venv was made from (``home`` of pyvenv.cfg): the 'system' python3."""
    cfg = configparser.ConfigParser()
    cfg.read_string("[venv]\n" + (Path(sys.prefix) / "pyvenv.cfg").read_text())
    exe = Path(cfg["venv"]["home"]) / f"python{sys.version_info.major}.{sys.version_info.minor}"
    assert exe.is_file(), exe
    return exe


def ros_env(underlay: Path, system_bin: Path) -> dict[str, str]:
    """The environment of a shell that sourced the underlay's setup.bash (no venv active)."""
    venv_bin = str(Path(sys.prefix) / "bin")
    env = {k: v for k, v in os.environ.items()
           if k not in {"VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH", "LD_LIBRARY_PATH", "AMENT_PREFIX_PATH",
                        "CMAKE_PREFIX_PATH", "COLCON_PREFIX_PATH", "_ROS_WHEELS_BOOTSTRAP_COMPLETE",
                        "PYTEST_ADDOPTS"}}
    site = underlay / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != venv_bin]
    env.update(
        AMENT_PREFIX_PATH=str(underlay), CMAKE_PREFIX_PATH=str(underlay), PYTHONPATH=str(site),
        LD_LIBRARY_PATH=os.pathsep.join([str(underlay / "lib"), *map(str, sorted(site.glob("ros_*.libs")))]),
        PATH=os.pathsep.join([str(system_bin), *path, str(underlay / "bin")]),
        ROS_DISTRO="kilted", ROS_VERSION="2", ROS_PYTHON_VERSION="3", PYTHONUNBUFFERED="1")
    return env


def make_ros_machine(top: Path) -> RosMachine:
    """colcon (installed by scripts/setup_colcon.sh when missing) and an underlay under ``top``."""
    colcon = subprocess.run(["bash", str(ROOT / "scripts" / "setup_colcon.sh")], check=True,
                            capture_output=True, text=True).stdout.strip().splitlines()[-1]
    underlay = top / "opt_ros_kilted"
    mirror_without_own_files(Path(sys.prefix), underlay)
    system_bin = top / "usr_bin"
    system_bin.mkdir()
    for name in ("python3", "python"):
        (system_bin / name).symlink_to(base_python())
    env = ros_env(underlay, system_bin)
    exports = "".join(f"export {k}={shlex.quote(env[k])}\n" for k in ROS_VARIABLES)
    for name in ("setup.bash", "setup.sh", "local_setup.bash", "local_setup.sh"):  # as /opt/ros has
        (underlay / name).write_text(exports)
    return RosMachine(Path(colcon), underlay, env)


def copy_sources(dst: Path) -> None:
    """The working tree's files as a clone would have them (tracked + untracked, not ignored)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
