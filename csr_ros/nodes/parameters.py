"""The one parameter table (``csr_ros/core/parameters.yaml``) as ROS parameters, and back.

Every row becomes a declared ROS parameter with a ParameterDescriptor (description, integer or
floating-point range from ``bounds<>``, allowed values from ``one_of<>`` as additional
constraints, ``read_only`` where a change needs a restart). The values are read back and
validated by :func:`csr_ros.core.config.load_config`, so a bad value fails at start with a
message that names the parameter (:class:`csr_ros.core.config.ConfigError`).

Perception inputs are a list of records, which a ROS parameter cannot hold; like
generate_parameter_library's ``__map_`` they are spelled as

    inputs.names: [observations, joints]                 # string array: the input names
    inputs.observations.topic: /observations             # per input: topic, type, serializer,
    inputs.observations.type: std_msgs/msg/String        #   min_period_s, then the serializer's
    inputs.observations.patterns: ['(?P<entity>..)...']  #   own fields (serializers.SERIALIZERS)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                ParameterType)
from rclpy.exceptions import (InvalidParameterTypeException, InvalidParameterValueException,
                              ParameterException, ParameterUninitializedException)
from rclpy.node import Node
from rclpy.parameter import Parameter

from csr_ros.core.config import (ConfigError, CsrConfig, ParamSpec, load_config, param_table, split_ros_args,
                                 validate)
from csr_ros.nodes.serializers import DEFAULT_SERIALIZER, SERIALIZERS, Field, build_serializer

_ROS_TYPES = {
    "string": (ParameterType.PARAMETER_STRING, Parameter.Type.STRING),
    "int": (ParameterType.PARAMETER_INTEGER, Parameter.Type.INTEGER),
    "double": (ParameterType.PARAMETER_DOUBLE, Parameter.Type.DOUBLE),
    "bool": (ParameterType.PARAMETER_BOOL, Parameter.Type.BOOL),
    "string_array": (ParameterType.PARAMETER_STRING_ARRAY, Parameter.Type.STRING_ARRAY),
    "double_array": (ParameterType.PARAMETER_DOUBLE_ARRAY, Parameter.Type.DOUBLE_ARRAY),
    "int_array": (ParameterType.PARAMETER_INTEGER_ARRAY, Parameter.Type.INTEGER_ARRAY),
}
_INPUT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")

# Fields every input has (group ``inputs.<name>``), then its serializer's own fields.
INPUT_FIELDS = (
    Field("topic", "string", "", "Topic to subscribe to (relative names follow the node's namespace).",
          {"not_empty<>": []}),
    Field("type", "string", "", "Message type of the topic.",
          {"one_of<>": [sorted(DEFAULT_SERIALIZER)]}),
    Field("serializer", "string", "", "Serializer turning a message into an increment (empty: the "
          "type's default).", {"one_of<>": [["", *sorted(SERIALIZERS)]]}),
    Field("qos", "string", "", "Subscription QoS: sensor_data (best effort; matches any publisher), "
          "reliable, or empty: reliable for std_msgs/String observations, sensor_data otherwise.",
          {"one_of<>": [["", "sensor_data", "reliable"]]}),
    Field("min_period_s", "double", 0.0, "Minimum time between two increments of this input, s "
          "(messages arriving sooner are dropped, not rejected).", {"bounds<>": [0.0, 3600.0]}),
)


@dataclass(frozen=True)
class InputSpec:
    """One configured perception input (validated)."""

    name: str
    topic: str
    msg_type: str
    serializer: str
    min_period_s: float
    qos: str = "sensor_data"
    options: Mapping[str, Any] = field(default_factory=dict)


def descriptor_for(spec: ParamSpec) -> ParameterDescriptor:
    """ParameterDescriptor of one table row: description, type, range, read_only."""
    desc = ParameterDescriptor(name=spec.key, type=_ROS_TYPES[spec.type][0],
                               description=spec.description, read_only=spec.read_only)
    bounds = spec.validation.get("bounds<>")
    if bounds and spec.type == "int":
        desc.integer_range = [IntegerRange(from_value=int(bounds[0]), to_value=int(bounds[1]), step=0)]
    elif bounds and spec.type == "double":
        desc.floating_point_range = [FloatingPointRange(from_value=float(bounds[0]),
                                                        to_value=float(bounds[1]), step=0.0)]
    if "one_of<>" in spec.validation:
        desc.additional_constraints = f"one of {list(spec.validation['one_of<>'][0])}"
    return desc


def declare(node: Node, spec: ParamSpec) -> Any:
    """Declare one row on ``node`` (override from the params file / --ros-args wins) and return
    its value; raises ConfigError naming the parameter on a wrong type or an out-of-range value."""
    empty_array = spec.type.endswith("_array") and not spec.default
    default = _ROS_TYPES[spec.type][1] if empty_array else spec.default
    try:
        if node.has_parameter(spec.key):  # declared before (a lifecycle node configured again)
            value = node.get_parameter(spec.key).value
        else:
            value = node.declare_parameter(spec.key, default, descriptor_for(spec)).value
    except ParameterUninitializedException:
        value = None

    except InvalidParameterTypeException as e:
        raise ConfigError(f"parameter {spec.key}: expected {spec.type} ({e})") from None
    except (InvalidParameterValueException, ParameterException) as e:
        raise ConfigError(f"parameter {spec.key}: {e}") from None
    if value is None:  # an array declared by type only and not overridden
        return list(spec.default)
    return list(value) if spec.type.endswith("_array") else value


def declare_deferred(node: Node) -> dict[str, str]:
    """Declare every row of the table without failing (a lifecycle node validates at configure):
    a row whose override has a wrong type or is out of its range is declared with its default
    and returned as ``{key: message naming the parameter and its range}``."""
    bad = {}
    for spec in param_table():
        try:
            declare(node, spec)
        except ConfigError:
            override = node._parameter_overrides.get(spec.key)
            try:
                validate(spec, override.value if override is not None else None)
                bad[spec.key] = f"parameter {spec.key}: invalid value"
            except ConfigError as e:
                bad[spec.key] = str(e)
            node.declare_parameter(spec.key, _ROS_TYPES[spec.type][1] if spec.type.endswith("_array")
                                   and not spec.default else spec.default, descriptor_for(spec),
                                   ignore_override=True)
    return bad


def declare_table(node: Node) -> CsrConfig:
    """Declare every row of the table and return the validated core config."""
    flat = {spec.key: declare(node, spec) for spec in param_table()}
    return load_config(flat)


def _field_spec(group: str, f: Field, read_only: bool = True) -> ParamSpec:
    return ParamSpec(group, f.name, f.type, f.default, f.description, read_only, f.validation or {})


def _declare_fields(node: Node, group: str, fields: tuple[Field, ...]) -> dict[str, Any]:
    out = {}
    for f in fields:
        spec = _field_spec(group, f)
        out[f.name] = validate(spec, declare(node, spec))
    return out


def declare_input(node: Node, name: str) -> InputSpec:
    """Declare and validate ``inputs.<name>.*`` (common fields, then the serializer's own)."""
    if not _INPUT_NAME.match(name):
        raise ConfigError(f"parameter inputs.names: {name!r} is not a valid input name "
                          "(letters, digits and _, starting with a letter)")
    group = f"inputs.{name}"
    common = _declare_fields(node, group, INPUT_FIELDS)
    serializer = common["serializer"] or DEFAULT_SERIALIZER[common["type"]]
    if SERIALIZERS[serializer].msg_type != common["type"]:
        raise ConfigError(f"parameter {group}.serializer: {serializer!r} reads "
                          f"{SERIALIZERS[serializer].msg_type}, not {common['type']}")
    _check_topic(group, common["topic"])
    options = _declare_fields(node, group, SERIALIZERS[serializer].fields)
    build_serializer(name, serializer, options)  # checks what only the serializer can (regexes...)
    qos = common["qos"] or ("reliable" if common["type"] == "std_msgs/msg/String" else "sensor_data")
    return InputSpec(name, common["topic"], common["type"], serializer, common["min_period_s"],
                     qos, options)


def _check_topic(group: str, topic: str) -> None:
    from rclpy.exceptions import InvalidTopicNameException
    from rclpy.validate_topic_name import validate_topic_name

    try:
        validate_topic_name(topic)
    except InvalidTopicNameException as e:
        raise ConfigError(f"parameter {group}.topic: {e}") from None


NAMES_SPEC = ParamSpec("inputs", "names", "string_array", [], "Names of the perception inputs; "
                       "each is configured by inputs.<name>.* parameters.", True, {})


def declare_inputs(node: Node) -> list[InputSpec]:
    """Declare ``inputs.names`` and every listed input; names must be unique."""
    names = list(declare(node, NAMES_SPEC))
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"parameter inputs.names: duplicate input(s) {dupes}")
    return [declare_input(node, n) for n in names]


def load_node_config(node: Node) -> tuple[CsrConfig, list[InputSpec]]:
    """All of the node's configuration, declared and validated (ConfigError names the culprit)."""
    return declare_table(node), declare_inputs(node)


def overrides_from_params_file(path: str, node_name: str = "csr") -> list[Parameter]:
    """Parameters of ``node_name`` in a ROS 2 params file, as rclpy Parameters (for tests and
    in-process nodes: ``Node(..., parameter_overrides=...)``)."""
    from csr_ros.core.config import load_params_file

    return [Parameter(k, value=v) for k, v in load_params_file(path, node_name).items()]


DEFAULT_PARAMS_FILE = "config/csr.yaml"
"""The parameter file a start without one loads, under the installed ``share/csr_ros`` (the same
file launch/csr.launch.py passes by default): the model and the four perception inputs."""


def with_default_params_file(args: Sequence[str]) -> list[str]:
    """Command-line arguments of the graph process, with the installed ``share/csr_ros/config/csr.yaml``
    as the parameter file when the ROS arguments name none (``csr-ros run``, ``ros2 run csr_ros
    csr_node``). The default goes first, right after ``--ros-args`` (appended when absent), so the
    user's ``-p name:=value`` rules, which rcl applies in order, still win; a ``--params-file`` of
    the user's replaces it altogether (as ``params_file:=`` does in the launch file)."""
    from csr_ros.share import shipped

    args = list(args)
    if "--params-file" in split_ros_args(args)[1]:
        return args
    default = ["--params-file", str(shipped(DEFAULT_PARAMS_FILE))]
    if "--ros-args" not in args:
        return [*args, "--ros-args", *default]
    at = args.index("--ros-args") + 1
    return [*args[:at], *default, *args[at:]]
