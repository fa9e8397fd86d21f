"""Perception inputs from a params file, without ROS: the same serializers the node runs.

A params file configures the node's inputs as ``inputs.names`` + ``inputs.<name>.*`` (see
``config/csr.yaml``); here they are read from the flat parameter dict of
:func:`csr_ros.core.config.load_params_file`, validated with the serializers' own field specs,
and applied to recorded messages: throttle by ``min_period_s`` (recorded time), serialize,
count. A message on a topic no input listens to is ignored, exactly as on the robot.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from csr_ros.core.config import ConfigError, ParamSpec, validate
from csr_ros.nodes.input_filter import InputCounters, InputFilter
from csr_ros.nodes.serializers import (DEFAULT_SERIALIZER, SERIALIZERS, Observation, Rejected,
                                       build_serializer)


@dataclass(frozen=True)
class InputConfig:
    """One perception input (validated)."""

    name: str
    topic: str
    msg_type: str
    serializer: str
    min_period_s: float
    options: Mapping[str, Any] = field(default_factory=dict)


def split_params(flat: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(core table overrides, inputs.* entries)`` of a flat params dict."""
    core = {k: v for k, v in flat.items() if not k.startswith("inputs.")}
    inputs = {k: v for k, v in flat.items() if k.startswith("inputs.")}
    return core, inputs


def _value(flat: Mapping[str, Any], group: str, name: str, typ: str, default: Any, validation=None) -> Any:
    spec = ParamSpec(group, name, typ, default, "", True, validation or {})
    return validate(spec, flat.get(f"{group}.{name}", default))


def parse_inputs(flat: Mapping[str, Any]) -> list[InputConfig]:
    """The inputs listed in ``inputs.names`` (ConfigError names the bad parameter)."""
    names = flat.get("inputs.names", [])
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise ConfigError("parameter inputs.names: expected a list of input names")
    out = []
    for name in names:
        g = f"inputs.{name}"
        topic = _value(flat, g, "topic", "string", "", {"not_empty<>": []})
        msg_type = _value(flat, g, "type", "string", "", {"one_of<>": [sorted(DEFAULT_SERIALIZER)]})
        ser = _value(flat, g, "serializer", "string", "") or DEFAULT_SERIALIZER[msg_type]
        if ser not in SERIALIZERS or SERIALIZERS[ser].msg_type != msg_type:
            raise ConfigError(f"parameter {g}.serializer: {ser!r} does not read {msg_type}")
        period = float(_value(flat, g, "min_period_s", "double", 0.0, {"bounds<>": [0.0, 3600.0]}))
        options = {f.name: _value(flat, g, f.name, f.type, f.default, f.validation) for f in SERIALIZERS[ser].fields}
        build_serializer(name, ser, options)  # regex errors etc. surface here, at load time
        out.append(InputConfig(name, topic, msg_type, ser, period, options))
    topics = [i.topic for i in out]
    if len(set(topics)) != len(topics):
        raise ConfigError("parameter inputs: two inputs read the same topic")
    return out


class Perception:
    """Recorded messages -> observations (text + facts), as the node's ingest would produce them."""

    def __init__(self, inputs: list[InputConfig]):
        self.inputs = {i.topic: i for i in inputs}
        self.filters = {i.topic: InputFilter(build_serializer(i.name, i.serializer, i.options),
                                             int(i.min_period_s * 1e9)) for i in inputs}
        self.ignored = 0

    def source(self, topic: str) -> str:
        return topic

    def __call__(self, topic: str, msgtype: str, msg: Any, stamp_ns: int) -> Observation | None:
        cfg = self.inputs.get(topic)
        if cfg is None or cfg.msg_type != msgtype:
            self.ignored += 1
            return None
        f = self.filters[topic]
        try:
            _, obs = f.offer(msg, stamp_ns, stamp_ns)  # a bag's own stamps are its clock
        except Rejected:
            return None
        if obs is not None:
            f.commit(stamp_ns)
        return obs

    @property
    def counts(self) -> dict[str, InputCounters]:
        """Per topic: what the node's ingest would have counted."""
        return {t: f.counters for t, f in self.filters.items()}
