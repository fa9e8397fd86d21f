"""The action registry: named, described action chunks the policy chooses from (no torch, no ROS).

A registry file (``config/actions.yaml``) declares the action dimensions (name, unit, limits)
and a closed set of entries. Each entry has a ``name`` and a ``description`` (both shown to the
model, which picks an entry by closed-set scoring) and a chunk of ``horizon_steps`` x D values,
given either literally (``values``: H rows of D numbers) or as a parametric ``primitive``
expanded to H steps of ``dt_s``. Free text is never parsed into motor commands: the only way
from the model to the motors is the index of an entry (or a learned head's bounded output),
clamped to the configured limits.

Primitives (``params`` map dimension names to numbers; dimensions not named are 0):

* ``hold``: ``value`` (default all 0) at every step;
* ``constant``: ``value`` at every step;
* ``linear``: ``start`` -> ``end`` linearly over the H steps;
* ``trapezoid``: 0 -> ``peak`` over ``ramp_steps`` steps, ``peak``, then back to 0 at the end;
* ``sine``: ``offset + amplitude * sin(2 pi frequency_hz t + phase_rad)``, ``t = i * dt_s``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from csr_ros.share import resolve_file

PRIMITIVES = ("hold", "constant", "linear", "trapezoid", "sine")


class ActionRegistryError(ValueError):
    """The registry file is invalid (the message names the file, the entry and the field)."""


@dataclass(frozen=True)
class ActionDim:
    """One action dimension: a column of every chunk. ``unit`` is informative (e.g. m/s)."""

    name: str
    unit: str
    min: float
    max: float


@dataclass(frozen=True)
class ActionEntry:
    """A registry entry. ``chunk`` is row-major ``horizon x len(dims)``, unclamped as configured."""

    name: str
    description: str
    chunk: tuple[float, ...]


def resolve_config_file(path: str, default_name: str) -> Path:
    """``path`` if given (must exist), else the shipped ``config/<default_name>`` of the installed
    package (:func:`csr_ros.share.resolve_file`); errors are :class:`ActionRegistryError`."""
    try:
        return resolve_file(path, Path("config") / default_name)
    except FileNotFoundError as e:
        raise ActionRegistryError(str(e)) from None


def _num(x: Any, where: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(float(x)):
        raise ActionRegistryError(f"{where}: expected a finite number, got {x!r}")
    return float(x)


class ActionRegistry:
    """A validated closed set of action chunks over fixed dimensions.

    Attributes:
        dims: the action dimensions (columns). horizon_steps: rows H. dt_s: seconds per row.
        entries: the entries, in file order. hold_name: the entry used as the safe hold chunk.
    """

    def __init__(self, dims: Sequence[ActionDim], entries: Sequence[ActionEntry], horizon_steps: int,
                 dt_s: float, hold_name: str = "hold"):
        self.dims = tuple(dims)
        self.entries = tuple(entries)
        self.horizon_steps, self.dt_s = horizon_steps, dt_s
        self._by_name = {e.name: e for e in self.entries}
        if hold_name not in self._by_name:
            raise ActionRegistryError(f"hold entry {hold_name!r} is not in the registry")
        self.hold_name = hold_name

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: str | Path, horizon_steps: int, dt_s: float) -> "ActionRegistry":
        """Read and validate a registry YAML file (errors name the file and the entry)."""
        p = Path(path)
        try:
            raw = yaml.safe_load(p.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise ActionRegistryError(f"{p}: {e}") from e
        return cls.from_dict(raw, horizon_steps, dt_s, source=str(p))

    @classmethod
    def from_dict(cls, raw: Any, horizon_steps: int, dt_s: float, source: str = "<dict>") -> "ActionRegistry":
        if horizon_steps < 1 or dt_s <= 0:
            raise ActionRegistryError(f"{source}: horizon_steps must be >= 1 and dt_s > 0")
        if not isinstance(raw, Mapping):
            raise ActionRegistryError(f"{source}: expected a mapping with 'dimensions' and 'entries'")
        dims = _parse_dims(raw.get("dimensions"), source)
        ents = raw.get("entries")
        if not isinstance(ents, list) or not ents:
            raise ActionRegistryError(f"{source}: 'entries' must be a non-empty list")
        entries, seen = [], set()
        for i, e in enumerate(ents):
            entry = _parse_entry(e, i, dims, horizon_steps, dt_s, source)
            if entry.name in seen:
                raise ActionRegistryError(f"{source}: entry {entry.name!r} is defined twice")
            seen.add(entry.name)
            entries.append(entry)
        return cls(dims, entries, horizon_steps, dt_s, str(raw.get("hold", "hold")))

    # ------------------------------------------------------------------ views
    @property
    def names(self) -> tuple[str, ...]:
        """Dimension names (the ``names`` of an ActionChunk)."""
        return tuple(d.name for d in self.dims)

    @property
    def entry_names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.entries)

    @property
    def chunk_size(self) -> int:
        return self.horizon_steps * len(self.dims)

    def entry(self, name: str) -> ActionEntry:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no action {name!r}; known: {', '.join(self._by_name)}") from None

    @property
    def hold_chunk(self) -> tuple[float, ...]:
        """The configured safe hold chunk, clamped."""
        return self.clamp(self._by_name[self.hold_name].chunk)

    def prompt_block(self) -> str:
        """The entries as the model sees them (one line each: ``name: description``)."""
        lines = "\n".join(f"- {e.name}: {e.description}" for e in self.entries)
        return f"\nAvailable actions (answer with one name):\n{lines}"

    # ------------------------------------------------------------------ safety
    def clamp(self, values: Sequence[float]) -> tuple[float, ...]:
        """Clamp a row-major ``H x D`` chunk to the per-dimension limits.

        Raises ValueError on a wrong size or a non-finite value (callers fall back to hold).
        """
        d = len(self.dims)
        if len(values) != self.chunk_size:
            raise ValueError(f"chunk has {len(values)} values, expected {self.horizon_steps} x {d}")
        out = []
        for i, v in enumerate(values):
            v = float(v)
            if not math.isfinite(v):
                raise ValueError(f"chunk value {i} is not finite ({v})")
            dim = self.dims[i % d]
            out.append(min(dim.max, max(dim.min, v)))
        return tuple(out)


def registry_from_config(cfg) -> ActionRegistry:
    """The registry ``cfg.control.actions_file`` names (the shipped one when empty)."""
    c = cfg.control
    return ActionRegistry.load(resolve_config_file(c.actions_file, "actions.yaml"), c.horizon_steps, c.dt_s)


# ---------------------------------------------------------------------- parsing helpers
def _parse_dims(raw: Any, source: str) -> list[ActionDim]:
    if not isinstance(raw, list) or not raw:
        raise ActionRegistryError(f"{source}: 'dimensions' must be a non-empty list")
    dims, names = [], set()
    for i, d in enumerate(raw):
        where = f"{source}: dimension {i}"
        if not isinstance(d, Mapping) or not isinstance(d.get("name"), str) or not d["name"]:
            raise ActionRegistryError(f"{where}: needs a non-empty 'name'")
        where = f"{source}: dimension {d['name']!r}"
        lo, hi = _num(d.get("min"), f"{where} min"), _num(d.get("max"), f"{where} max")
        if lo > hi or d["name"] in names:
            raise ActionRegistryError(f"{where}: min > max or duplicate name")
        names.add(d["name"])
        dims.append(ActionDim(d["name"], str(d.get("unit", "")), lo, hi))
    return dims


def _vector(raw: Any, dims: Sequence[ActionDim], where: str) -> list[float]:
    """A per-dimension vector from ``{dim: value}`` (others 0) or a list of D numbers."""
    names = [d.name for d in dims]
    if raw is None:
        return [0.0] * len(dims)
    if isinstance(raw, list):
        if len(raw) != len(dims):
            raise ActionRegistryError(f"{where}: has {len(raw)} values, expected {len(dims)} ({', '.join(names)})")
        return [_num(v, where) for v in raw]
    if isinstance(raw, Mapping):
        unknown = set(raw) - set(names)
        if unknown:
            raise ActionRegistryError(f"{where}: unknown dimension(s) {sorted(unknown)}; known: {names}")
        return [_num(raw.get(n, 0.0), f"{where}.{n}") for n in names]
    raise ActionRegistryError(f"{where}: expected a mapping of dimension names or a list, got {raw!r}")


def _parse_entry(e: Any, i: int, dims, h: int, dt_s: float, source: str) -> ActionEntry:
    if not isinstance(e, Mapping) or not isinstance(e.get("name"), str) or not e["name"].strip():
        raise ActionRegistryError(f"{source}: entry {i} needs a non-empty 'name'")
    name = e["name"].strip()
    where = f"{source}: entry {name!r}"
    if " " in name:
        raise ActionRegistryError(f"{where}: names must be one word (the model answers with the name)")
    desc = e.get("description")
    if not isinstance(desc, str) or not desc.strip():
        raise ActionRegistryError(f"{where}: needs a non-empty 'description'")
    if ("values" in e) == ("primitive" in e):
        raise ActionRegistryError(f"{where}: give exactly one of 'values' or 'primitive'")
    if "values" in e:
        rows = e["values"]
        if not isinstance(rows, list) or len(rows) != h:
            n = len(rows) if isinstance(rows, list) else rows
            raise ActionRegistryError(f"{where}: 'values' has {n} rows, the configured horizon is {h} steps")
        chunk = [v for r, row in enumerate(rows) for v in _vector(row, dims, f"{where} values[{r}]")]
    else:
        chunk = expand_primitive(e["primitive"], dims, h, dt_s, where)
    return ActionEntry(name, " ".join(desc.split()), tuple(chunk))


def expand_primitive(prim: Any, dims: Sequence[ActionDim], h: int, dt_s: float, where: str = "primitive") -> list[float]:
    """Expand a primitive spec to a row-major ``h x len(dims)`` list (see the module doc)."""
    if not isinstance(prim, Mapping) or prim.get("type") not in PRIMITIVES:
        raise ActionRegistryError(f"{where}: primitive needs a 'type' in {PRIMITIVES}")
    kind, p = prim["type"], prim.get("params") or {}
    if not isinstance(p, Mapping):
        raise ActionRegistryError(f"{where}: primitive 'params' must be a mapping")
    allowed = {"hold": {"value"}, "constant": {"value"}, "linear": {"start", "end"},
               "trapezoid": {"peak", "ramp_steps"},
               "sine": {"amplitude", "frequency_hz", "phase_rad", "offset"}}[kind]
    if set(p) - allowed:
        raise ActionRegistryError(f"{where}: unknown {kind} param(s) {sorted(set(p) - allowed)}; allowed: {sorted(allowed)}")
    rows: list[list[float]]
    if kind in ("hold", "constant"):
        rows = [_vector(p.get("value"), dims, f"{where} value")] * h
    elif kind == "linear":
        a, b = _vector(p.get("start"), dims, f"{where} start"), _vector(p.get("end"), dims, f"{where} end")
        rows = [[x + (y - x) * (i / (h - 1) if h > 1 else 1.0) for x, y in zip(a, b)] for i in range(h)]
    elif kind == "trapezoid":
        peak = _vector(p.get("peak"), dims, f"{where} peak")
        ramp = int(_num(p.get("ramp_steps", max(1, h // 4)), f"{where} ramp_steps"))
        if ramp < 1 or 2 * ramp > h:
            raise ActionRegistryError(f"{where}: ramp_steps must be in [1, {h // 2}] for a horizon of {h}")
        rows = [[v * min(1.0, (i + 1) / ramp, (h - i) / ramp) for v in peak] for i in range(h)]
    else:
        amp = _vector(p.get("amplitude"), dims, f"{where} amplitude")
        off = _vector(p.get("offset"), dims, f"{where} offset")
        f_hz = _num(p.get("frequency_hz", 1.0), f"{where} frequency_hz")
        ph = _num(p.get("phase_rad", 0.0), f"{where} phase_rad")
        rows = [[o + a * math.sin(2 * math.pi * f_hz * i * dt_s + ph) for a, o in zip(amp, off)] for i in range(h)]
    return [v for row in rows for v in row]
