"""Frozen, validated configuration built from the one parameter table (``parameters.yaml``).

Like generate_parameter_library, the table is the single source: this module generates one frozen
dataclass per group from it, applies overrides (``{"budget.budget_tokens": 1024}``, or a ROS-style
params file), and validates every value with a message that names the bad parameter.

    cfg = load_config({"budget.budget_tokens": 1024})
    cfg.budget.budget_tokens   # -> 1024
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

TABLE_PATH = Path(__file__).with_name("parameters.yaml")
_PY_TYPES = {"string": str, "int": int, "double": float, "bool": bool,
             "string_array": list, "double_array": list, "int_array": list}


class ConfigError(ValueError):
    """A parameter is unknown, of the wrong type or out of range (the message names it)."""


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """One row of the table."""

    group: str
    name: str
    type: str
    default: Any
    description: str
    read_only: bool
    validation: Mapping[str, Any]

    @property
    def key(self) -> str:
        return f"{self.group}.{self.name}"


@lru_cache(maxsize=1)
def param_table() -> tuple[ParamSpec, ...]:
    """All parameters of the table, in file order."""
    raw = yaml.safe_load(TABLE_PATH.read_text())
    out = []
    for group, entries in raw.items():
        for name, e in entries.items():
            if e["type"] not in _PY_TYPES:
                raise ConfigError(f"{group}.{name}: unsupported type {e['type']!r} in the table")
            out.append(ParamSpec(group, name, e["type"], e["default_value"], e["description"],
                                 bool(e.get("read_only", False)), e.get("validation") or {}))
    return tuple(out)


def _coerce(spec: ParamSpec, value: Any) -> Any:
    want = _PY_TYPES[spec.type]
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if want is int and isinstance(value, bool) or not isinstance(value, want):
        raise ConfigError(f"parameter {spec.key}: expected {spec.type}, got {value!r}")
    return list(value) if want is list else value


def validate(spec: ParamSpec, value: Any) -> Any:
    """Coerce and check one value against its row; raises ConfigError naming the parameter."""
    value = _coerce(spec, value)
    for rule, args in spec.validation.items():
        if rule == "bounds<>":
            lo, hi = args
            if not lo <= value <= hi:
                raise ConfigError(f"parameter {spec.key}: {value!r} is outside [{lo}, {hi}]")
        elif rule == "one_of<>":
            choices = args[0]
            if value not in choices:
                raise ConfigError(f"parameter {spec.key}: {value!r} is not one of {choices}")
        elif rule == "not_empty<>":
            if len(value) == 0:
                raise ConfigError(f"parameter {spec.key}: must not be empty")
        else:
            raise ConfigError(f"parameter {spec.key}: unknown validation rule {rule!r}")
    return value


@lru_cache(maxsize=1)
def _group_classes() -> dict[str, type]:
    groups: dict[str, list[ParamSpec]] = {}
    for spec in param_table():
        groups.setdefault(spec.group, []).append(spec)
    return {
        g: dataclasses.make_dataclass(
            f"{g.title().replace('_', '')}Config",
            [(s.name, _PY_TYPES[s.type]) for s in specs],
            frozen=True,
        )
        for g, specs in groups.items()
    }


@dataclasses.dataclass(frozen=True)
class CsrConfig:
    """The whole configuration: one frozen object per table group (``cfg.<group>.<name>``)."""

    groups: Mapping[str, Any]

    def __getattr__(self, group: str) -> Any:
        try:
            return self.__dict__["groups"][group]
        except KeyError:
            raise AttributeError(f"no parameter group {group!r}") from None

    def as_flat(self) -> dict[str, Any]:
        """``{"group.name": value}`` for every parameter."""
        return {f"{g}.{k}": v for g, obj in self.groups.items()
                for k, v in dataclasses.asdict(obj).items()}

    def replace(self, **flat: Any) -> "CsrConfig":
        """A copy with ``group__name=value`` overrides (validated)."""
        merged = self.as_flat()
        merged.update({k.replace("__", "."): v for k, v in flat.items()})
        return load_config(merged)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"budget": {"budget_tokens": 1}}`` -> ``{"budget.budget_tokens": 1}``."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def load_config(overrides: Mapping[str, Any] | None = None) -> CsrConfig:
    """Defaults from the table, then ``overrides`` (flat dotted keys or nested dicts), validated."""
    flat = flatten(overrides or {})
    specs = {s.key: s for s in param_table()}
    unknown = sorted(set(flat) - set(specs))
    if unknown:
        raise ConfigError(f"unknown parameter(s): {', '.join(unknown)}")
    values: dict[str, dict[str, Any]] = {}
    for key, spec in specs.items():
        values.setdefault(spec.group, {})[spec.name] = validate(spec, flat.get(key, spec.default))
    classes = _group_classes()
    return CsrConfig({g: classes[g](**v) for g, v in values.items()})


def load_params_file(path: str | Path, node_name: str | None = None) -> dict[str, Any]:
    """Flat overrides from a ROS 2 params file (``<node>: {ros__parameters: {...}}``) or a plain
    YAML mapping of the table's groups."""
    raw = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    merged: dict[str, Any] = {}
    for key, val in raw.items():
        if isinstance(val, Mapping) and "ros__parameters" in val:
            if node_name is None or key in (node_name, "/**", f"/{node_name}"):
                merged.update(flatten(val["ros__parameters"]))
        elif isinstance(val, Mapping):
            merged.update(flatten({key: val}))
        else:
            merged[key] = val
    return merged


def split_ros_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(plain, ros)``: the arguments outside and inside ``--ros-args ... [--]`` sections (where
    rcl reads its options; the markers themselves are in neither)."""
    plain, ros, inside = [], [], False
    for a in argv:
        if a == "--ros-args":
            inside = True
        elif inside and a == "--":
            inside = False
        else:
            (ros if inside else plain).append(a)
    return plain, ros
