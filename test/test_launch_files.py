"""The launch files are correct ROS 2 Python launch files whose executables and files exist in the
installed package. launch/launch_ros are not installable here, so the files are parsed (ast), not
run: every Node(package="csr_ros", executable=X) must be an installed lib/csr_ros/X that runs an
existing Python function, every FindPackageShare("csr_ros")/... path an installed share file, and
every LaunchConfiguration a declared argument with a description.
"""

from __future__ import annotations

import ast
import importlib
import os
import re
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.graph

ROOT = Path(__file__).resolve().parents[1]
PKG = "csr_ros"
LAUNCH_FILES = sorted((ROOT / "launch").glob("*.launch.py"))
# launch_ros.actions.Node keyword arguments (Humble and later) plus ExecuteProcess's we use
NODE_KEYWORDS = {"package", "executable", "name", "namespace", "exec_name", "parameters", "remappings",
                 "ros_arguments", "arguments", "output", "emulate_tty", "respawn", "respawn_delay"}


def _prefix() -> Path:
    candidates = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p] + [sys.prefix]
    for prefix in map(Path, candidates):
        if (prefix / "share/ament_index/resource_index/packages" / PKG).is_file():
            return prefix
    pytest.fail(f"{PKG} is not installed in any of {candidates}: run `bash scripts/setup.sh`")


def _name(node: ast.AST) -> str:
    f = node.func if isinstance(node, ast.Call) else node
    return f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and _name(n) == name]


def _kw(call: ast.Call, key: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == key), None)


def _const(node: ast.AST | None):
    return node.value if isinstance(node, ast.Constant) else None


def _share_paths(tree: ast.AST) -> list[str]:
    """Paths built as PathJoinSubstitution([FindPackageShare("csr_ros"), "a", "b"])."""
    out = []
    for call in _calls(tree, "PathJoinSubstitution"):
        parts = call.args[0].elts
        if parts and isinstance(parts[0], ast.Call) and _name(parts[0]) == "FindPackageShare":
            assert _const(parts[0].args[0]) == PKG
            out.append("/".join(_const(p) for p in parts[1:]))
    return out


@pytest.fixture(scope="module")
def trees() -> dict[str, ast.AST]:
    assert {p.name for p in LAUNCH_FILES} >= {"csr.launch.py", "replay.launch.py"}
    return {p.name: ast.parse(p.read_text(), str(p)) for p in LAUNCH_FILES}


def test_launch_files_define_generate_launch_description(trees):
    for name, tree in trees.items():
        funcs = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert "generate_launch_description" in funcs, name
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
        used = {_name(c) for c in ast.walk(tree) if isinstance(c, ast.Call)}
        launch_api = {"LaunchDescription", "DeclareLaunchArgument", "LaunchConfiguration", "Node",
                      "PathJoinSubstitution", "FindPackageShare", "IncludeLaunchDescription",
                      "PythonLaunchDescriptionSource", "ParameterValue", "OpaqueFunction"}
        assert (used & launch_api) <= imported, f"{name}: used but not imported: {(used & launch_api) - imported}"


def test_arguments_are_declared_with_descriptions(trees):
    for name, tree in trees.items():
        declared = {}
        for call in _calls(tree, "DeclareLaunchArgument"):
            desc = _const(_kw(call, "description"))
            assert desc, f"{name}: argument {_const(call.args[0])} has no description"
            declared[_const(call.args[0])] = desc
        used = {_const(c.args[0]) for c in _calls(tree, "LaunchConfiguration")}
        assert used <= set(declared), f"{name}: undeclared {used - set(declared)}"
    csr = {_const(c.args[0]) for c in _calls(trees["csr.launch.py"], "DeclareLaunchArgument")}
    assert csr >= {"params_file", "model", "namespace", "use_sim_time", "log_level"}


def test_replay_runs_the_graph_on_sim_time_with_the_player(trees):
    tree = trees["replay.launch.py"]
    include = _calls(tree, "IncludeLaunchDescription")
    assert include and "launch/csr.launch.py" in _share_paths(tree)
    launch_args = next(d for d in ast.walk(include[0]) if isinstance(d, ast.Dict))
    values = {_const(k): v for k, v in zip(launch_args.keys, launch_args.values)}
    assert _const(values["use_sim_time"]) == "true"
    nodes = {_const(_kw(c, "executable")): c for c in _calls(tree, "Node")}
    assert "csr_replay" in nodes
    # the command line launch_ros builds (arguments with their defaults, its own --ros-args) parses
    from csr_ros.cli import _without_ros_args, build_parser

    defaults = {_const(c.args[0]): _const(_kw(c, "default_value")) for c in _calls(tree, "DeclareLaunchArgument")}
    defaults["bag"] = "bag_dir"  # required argument
    argv = [_const(a) if isinstance(a, ast.Constant) else defaults[_const(a.args[0])]
            for a in _kw(nodes["csr_replay"], "arguments").elts]
    assert "--clock" in argv
    parsed = build_parser().parse_args(
        ["replay", *_without_ros_args(argv + ["--ros-args", "-r", "__node:=csr_replay"])])
    assert parsed.clock and parsed.bag == "bag_dir"


def test_executables_and_files_exist_in_the_installed_package(trees):
    prefix = _prefix()
    executables = set()
    for name, tree in trees.items():
        for call in _calls(tree, "Node"):
            assert _const(_kw(call, "package")) == PKG, name
            assert {k.arg for k in call.keywords} <= NODE_KEYWORDS, name
            executables.add(_const(_kw(call, "executable")))
        for rel in _share_paths(tree):
            assert (prefix / "share" / PKG / rel).is_file(), f"{name}: share/{PKG}/{rel} is not installed"
    assert executables == {"csr_node", "csr_replay"}
    for exe in executables:
        path = prefix / "lib" / PKG / exe
        assert path.is_file() and os.access(path, os.X_OK), f"{path} is not an installed executable"
        m = re.search(r"^from ([\w.]+) import (\w+)$", path.read_text(), re.M)
        assert m, f"{path} does not name its entry point"
        module = importlib.import_module(m.group(1))
        assert callable(getattr(module, m.group(2))), f"{exe}: {m.group(1)}:{m.group(2)} does not exist"


def test_default_params_file_is_installed_and_loads():
    from csr_ros.core.config import load_config, load_params_file, param_table

    installed = _prefix() / "share" / PKG / "config" / "csr.yaml"
    assert installed.is_file()
    flat = load_params_file(installed, "csr")
    table = {s.key for s in param_table()}
    load_config({k: v for k, v in flat.items() if k in table})
    assert flat["inputs.names"]
