"""Where the installed package's files are: ``<prefix>/share/csr_ros``, found through the ament index.

Every non-Python file csr_ros reads at run time (parameter files, the action registry, action
heads, the shipped episode, launch files) is installed under ``<prefix>/share/csr_ros`` by
``CMakeLists.txt``, on both routes:

* colcon / a ROS install: ``<prefix>`` is on ``AMENT_PREFIX_PATH`` (``source install/setup.bash``);
* pip (``scripts/setup.sh``): the CMake install tree goes into the virtual environment's root,
  which nothing puts on ``AMENT_PREFIX_PATH``, so the interpreter's own prefix is searched last.

A prefix holds the package when its ament index has the marker
``share/ament_index/resource_index/packages/csr_ros`` (what ``ament_index_python`` and
launch_ros look for). Nothing here looks at the source tree: a checkout that was not installed
has no share directory, and the error says so. Standard library only (no ROS import), so the
ROS-free core may use it for its shipped defaults.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PACKAGE = "csr_ros"
_MARKER = Path("share") / "ament_index" / "resource_index" / "packages" / PACKAGE


class ShareNotFound(FileNotFoundError):
    """The installed ``share/csr_ros`` (or a file in it) is not where the ament index says."""


def prefixes() -> list[Path]:
    """The install prefixes searched, in order: ``AMENT_PREFIX_PATH``, then ``sys.prefix``."""
    out: list[Path] = []
    for p in [*os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep), sys.prefix]:
        if p and Path(p) not in out:
            out.append(Path(p))
    return out


def share_dir() -> Path:
    """``<prefix>/share/csr_ros`` of the first prefix whose ament index lists the package."""
    for p in prefixes():
        if (p / _MARKER).is_file():
            return p / "share" / PACKAGE
    searched = ", ".join(str(p) for p in prefixes())
    raise ShareNotFound(f"package {PACKAGE!r} is not installed in any ament prefix ({searched}); "
                        "run scripts/setup.sh (pip route) or colcon build + source install/setup.bash")


def shipped(relative: str | Path) -> Path:
    """A file or folder shipped under ``share/csr_ros`` (e.g. ``config/actions.yaml``); must exist."""
    path = share_dir() / relative
    if not path.exists():
        raise ShareNotFound(f"{path}: not in the installed share directory (reinstall the package)")
    return path


def resolve_file(path: str, default: str | Path) -> Path:
    """``path`` when given (``~`` expanded; it must exist), else the shipped ``default``
    (relative to ``share/csr_ros``)."""
    if path:
        p = Path(path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"{path}: no such file")
        return p
    return shipped(default)


def import_root() -> Path:
    """The folder the running ``csr_ros`` package was imported from (``site-packages`` when
    installed, a checkout when run from one): what a child process needs on its path to run
    the same code (the parent of the package folder the import system found first)."""
    import csr_ros

    return Path(next(iter(csr_ros.__path__))).resolve().parent


def child_env(base: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
    """Environment for a child Python process that runs this same ``csr_ros``: ``PYTHONPATH``
    is *extended* with :func:`import_root` (never replaced: on a ROS install rclpy and the
    generated messages come through it), plus ``extra``."""
    env = dict(os.environ if base is None else base, **extra)
    paths = [str(import_root()), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env
