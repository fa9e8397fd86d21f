"""The parameter table as ROS parameters: descriptors, params files, validation naming the culprit."""

from __future__ import annotations

from pathlib import Path

import pytest
import rclpy
from rclpy.context import Context
from rclpy.node import Node
from rclpy.parameter import Parameter

from csr_ros.core.config import ConfigError, load_params_file, param_table
from csr_ros import share
from csr_ros.nodes.parameters import (DEFAULT_PARAMS_FILE, load_node_config, overrides_from_params_file,
                                    with_default_params_file)

pytestmark = pytest.mark.nodes

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = [ROOT / "config" / "csr.yaml", ROOT / "config" / "test_fake.yaml"]
MINIMAL = [Parameter("inputs.names", value=["obs"]), Parameter("inputs.obs.topic", value="/observations"),
           Parameter("inputs.obs.type", value="std_msgs/msg/String")]


def _node(ctx, overrides) -> Node:
    return Node("csr", context=ctx, parameter_overrides=list(overrides))


def test_every_table_row_is_declared_with_description_range_and_read_only(ros_context):
    node = _node(ros_context, MINIMAL)
    try:
        cfg, inputs = load_node_config(node)
        for spec in param_table():
            d = node.describe_parameter(spec.key)
            assert d.description == spec.description and d.read_only == spec.read_only, spec.key
            bounds = spec.validation.get("bounds<>")
            ranges = list(d.integer_range) + list(d.floating_point_range)
            assert bool(bounds) == bool(ranges), spec.key
            if bounds:
                assert (ranges[0].from_value, ranges[0].to_value) == tuple(bounds), spec.key
            assert node.get_parameter(spec.key).value == spec.default
        assert cfg.as_flat() == {s.key: s.default for s in param_table()}
        assert [(i.name, i.serializer, i.qos) for i in inputs] == [("obs", "string", "reliable")]
        assert node.describe_parameter("inputs.obs.patterns").description.startswith("Regexes")
    finally:
        node.destroy_node()


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_params_files_cover_the_whole_table_and_load(ros_context, path):
    flat = load_params_file(path, "csr")
    missing = sorted({s.key for s in param_table()} - set(flat))
    assert not missing, f"{path.name} lacks {missing}"
    node = _node(ros_context, overrides_from_params_file(str(path)))
    try:
        cfg, inputs = load_node_config(node)
    finally:
        node.destroy_node()
    assert {k: v for k, v in cfg.as_flat().items()} == {k: flat[k] for k in cfg.as_flat()}
    assert [i.name for i in inputs] == flat["inputs.names"]
    for spec in inputs:
        assert spec.topic == flat[f"inputs.{spec.name}.topic"]


def test_example_inputs_of_csr_yaml():
    flat = load_params_file(CONFIGS[0], "csr")
    types = {flat[f"inputs.{n}.topic"]: flat[f"inputs.{n}.type"] for n in flat["inputs.names"]}
    assert types == {"/observations": "std_msgs/msg/String", "/joint_states": "sensor_msgs/msg/JointState",
                     "/camera/image_raw": "sensor_msgs/msg/Image", "/robot_pose": "geometry_msgs/msg/PoseStamped"}


def test_params_file_through_rcl_arguments(ros_domain_id):
    """The path `csr-ros run --params-file` and launch take: rcl parses the file (YAML arrays,
    regexes) and the node's declarations pick the values up."""
    ctx = Context()
    rclpy.init(context=ctx, domain_id=ros_domain_id,
               args=["--ros-args", "--params-file", str(CONFIGS[0]), "-p", "budget.budget_tokens:=4096"])
    node = Node("csr", context=ctx)
    try:
        cfg, inputs = load_node_config(node)
    finally:
        node.destroy_node()
        ctx.try_shutdown()
    flat = load_params_file(CONFIGS[0], "csr")
    assert cfg.budget.budget_tokens == 4096
    assert cfg.model.backend == flat["model.backend"]
    obs = next(i for i in inputs if i.serializer == "string")
    assert obs.options["patterns"] == flat[f"inputs.{obs.name}.patterns"] and obs.options["patterns"]


@pytest.mark.parametrize("override, culprit", [
    (Parameter("budget.budget_tokens", value=5), "budget.budget_tokens"),             # out of range
    (Parameter("budget.budget_tokens", value="many"), "budget.budget_tokens"),        # wrong type
    (Parameter("budget.high_water_frac", value=1), "budget.high_water_frac"),         # int for double
    (Parameter("model.backend", value="tpu"), "model.backend"),                       # not one of
    (Parameter("inputs.obs.type", value="std_msgs/msg/Int32"), "inputs.obs.type"),
    (Parameter("inputs.obs.serializer", value="pose"), "inputs.obs.serializer"),      # wrong type
    (Parameter("inputs.obs.topic", value="not a topic"), "inputs.obs.topic"),
    (Parameter("inputs.obs.min_period_s", value=-1.0), "inputs.obs.min_period_s"),
    (Parameter("inputs.obs.patterns", value=["(?P<entity>x)"]), r"inputs.obs.patterns\[0\]"),
    (Parameter("inputs.names", value=["obs", "obs"]), "inputs.names"),
    (Parameter("inputs.names", value=["obs", "9lives"]), "inputs.names"),
    (Parameter("inputs.names", value=["obs", "cam"]), "inputs.cam.topic"),            # not configured
])
def test_bad_values_fail_at_start_naming_the_parameter(ros_context, override, culprit):
    overrides = {p.name: p for p in MINIMAL}
    overrides[override.name] = override
    node = _node(ros_context, overrides.values())
    try:
        with pytest.raises(ConfigError, match=culprit):
            load_node_config(node)
    finally:
        node.destroy_node()


def _graph_config(ros_domain_id, args: list[str]):
    """The node ``csr``'s configuration when the graph process is started with ``args`` (rcl parses
    them exactly as in ``csr_node``), after :func:`with_default_params_file`."""
    ctx = Context()
    rclpy.init(args=["csr_node", *with_default_params_file(args)], context=ctx, domain_id=ros_domain_id)
    try:
        node = Node("csr", context=ctx)
        try:
            return load_node_config(node)
        finally:
            node.destroy_node()
    finally:
        ctx.try_shutdown()


def test_without_a_params_file_the_installed_csr_yaml_is_loaded_and_p_rules_still_win(ros_domain_id):
    shipped_yaml = share.shipped(DEFAULT_PARAMS_FILE)
    assert shipped_yaml == share.share_dir() / "config" / "csr.yaml" != ROOT / "config" / "csr.yaml"
    flat = load_params_file(shipped_yaml, "csr")
    cfg, inputs = _graph_config(ros_domain_id, [])
    assert [i.name for i in inputs] == flat["inputs.names"] and len(inputs) == 4
    assert cfg.model.model == flat["model.model"]
    rate_hz = flat["control.control_rate_hz"] / 2
    cfg, inputs = _graph_config(ros_domain_id, ["--ros-args", "-p", f"control.control_rate_hz:={rate_hz}"])
    assert cfg.control.control_rate_hz == rate_hz and len(inputs) == 4


def test_a_users_params_file_replaces_the_default(ros_domain_id, tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("/**:\n  ros__parameters:\n    inputs:\n      names: [obs]\n"
                    "      obs: {topic: /observations, type: std_msgs/msg/String}\n")
    args = ["--ros-args", "--params-file", str(mine)]
    assert with_default_params_file(args) == args
    _, inputs = _graph_config(ros_domain_id, args)
    assert [i.name for i in inputs] == ["obs"]


def test_default_params_file_goes_first_inside_the_ros_arguments():
    default = str(share.shipped(DEFAULT_PARAMS_FILE))
    assert with_default_params_file([]) == ["--ros-args", "--params-file", default]
    assert with_default_params_file(["--ros-args", "-p", "a:=1"]) == [
        "--ros-args", "--params-file", default, "-p", "a:=1"]
    # a --params-file outside --ros-args is not rcl's: the default still applies
    assert with_default_params_file(["--params-file", "x", "--ros-args", "--"])[3:5] == ["--params-file", default]
