"""Entity memory: what a stream of increments said about each entity or source (pure, no torch).

Every accepted increment updates one entry per key:

* an increment with facts gives one key per fact, ``"<entity>.<attribute>"``, with the fact's
  value and stamp (``cup.location = sink`` at 12.3 s);
* an increment without facts gives one key, its source topic, with its text as the value.

An entry keeps the first and the newest value with their stamps, and how many observations it
has seen. "First" and "newest" are by ``(stamp_ns, seq)``, so the result does not depend on the
order increments are folded in (:meth:`EntityMemory.merge` is commutative). The rendering is
deterministic: one line per key, sorted by key, times in seconds since the state's epoch.

Two uses: the ``entity_memory`` compaction policy renders the memory of the *evicted*
increments into the state's memory block; the engine keeps one over *all* accepted increments
for query-time focus (issue 8).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Iterable, Iterator

from csr_ros.core.state.ledger import Increment


@dataclass(frozen=True)
class Observation:
    """One value of a key at a time (``seq`` breaks stamp ties deterministically)."""

    value: str
    stamp_ns: int
    seq: int

    @property
    def order(self) -> tuple[int, int]:
        return self.stamp_ns, self.seq


@dataclass(frozen=True)
class MemoryEntry:
    """First and newest observation of one key, and the number of observations."""

    key: str
    first: Observation
    last: Observation
    count: int

    def updated(self, obs: Observation) -> "MemoryEntry":
        first = obs if obs.order < self.first.order else self.first
        last = obs if obs.order > self.last.order else self.last
        return MemoryEntry(self.key, first, last, self.count + 1)

    def merged(self, other: "MemoryEntry") -> "MemoryEntry":
        first = min(self.first, other.first, key=lambda o: o.order)
        last = max(self.last, other.last, key=lambda o: o.order)
        return MemoryEntry(self.key, first, last, self.count + other.count)


def clean_value(text: str, max_chars: int) -> str:
    """Whitespace-collapsed ``text`` cut to ``max_chars`` characters ("..." marks a cut)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= max_chars else flat[: max(0, max_chars - 3)].rstrip() + "..."


def _flat(text: str) -> str:
    return " ".join(text.lower().replace("_", " ").replace("-", " ").replace(".", " ").split())


def observations(inc: Increment) -> Iterator[tuple[str, Observation]]:
    """The ``(key, observation)`` pairs an increment contributes."""
    if inc.facts:
        for f in inc.facts:
            yield f"{f.entity}.{f.attribute}", Observation(" ".join(f.value.split()), f.stamp_ns, inc.seq)
    else:
        yield inc.source, Observation(" ".join(inc.text.split()), inc.stamp_ns, inc.seq)


def _recency(e: MemoryEntry) -> tuple[tuple[int, int], str]:
    """Order of entries by when they were last observed (ties by key)."""
    return e.last.order, e.key


class EntityMemory:
    """Per-key first/newest values with stamps and counts, updated as increments are accepted.

    Not thread-safe: one owner updates it (use :meth:`copy` to hand a snapshot to another thread).

    Attributes:
        max_value_chars: values longer than this are cut in the rendering (not in the entries).
        through_seq: the newest increment sequence number folded in (-1: none).
    """

    def __init__(self, max_value_chars: int = 96, max_keys: int = 4096):
        self.max_value_chars = max_value_chars
        self.max_keys = max_keys  # bound: beyond it the keys observed longest ago are forgotten
        self._entries: dict[str, MemoryEntry] = {}
        self.through_seq = -1
        self.increments = 0
        self.forgotten_keys = 0  # keys dropped by the max_keys bound (a flood of new names)

    # ----------------------------------------------------------------- updates
    def observe(self, inc: Increment) -> None:
        """Fold one increment in."""
        for key, obs in observations(inc):
            cur = self._entries.get(key)
            self._entries[key] = MemoryEntry(key, obs, obs, 1) if cur is None else cur.updated(obs)
        self.through_seq = max(self.through_seq, inc.seq)
        self.increments += 1
        self._bound()

    def _bound(self) -> None:
        """Forget the keys observed longest ago while more than ``max_keys`` are held."""
        over = len(self._entries) - self.max_keys
        if over <= 0:
            return
        for e in heapq.nsmallest(over, self._entries.values(), key=_recency):  # usually one
            del self._entries[e.key]
        self.forgotten_keys += over

    def newest_keys(self) -> list[str]:
        """All keys, the most recently observed first (ties by key)."""
        return [e.key for e in sorted(self._entries.values(), key=_recency, reverse=True)]

    def observe_all(self, incs: Iterable[Increment]) -> "EntityMemory":
        for inc in incs:
            self.observe(inc)
        return self

    def merge(self, other: "EntityMemory") -> "EntityMemory":
        """Fold another memory in (commutative: the result does not depend on the order)."""
        for key, entry in other._entries.items():
            cur = self._entries.get(key)
            self._entries[key] = entry if cur is None else cur.merged(entry)
        self.through_seq = max(self.through_seq, other.through_seq)
        self.increments += other.increments
        self._bound()
        return self

    def copy(self) -> "EntityMemory":
        out = EntityMemory(self.max_value_chars, self.max_keys)
        out._entries = dict(self._entries)  # entries are immutable
        out.through_seq, out.increments, out.forgotten_keys = self.through_seq, self.increments, self.forgotten_keys
        return out

    # ----------------------------------------------------------------- queries
    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def get(self, key: str) -> MemoryEntry | None:
        return self._entries.get(key)

    def keys(self) -> list[str]:
        """All keys, sorted."""
        return sorted(self._entries)

    def entries(self) -> list[MemoryEntry]:
        """All entries, sorted by key."""
        return [self._entries[k] for k in self.keys()]

    def entities(self) -> list[str]:
        """Distinct entity names (the part of a key before the first dot; topics as they are)."""
        return sorted({k.split(".", 1)[0] if not k.startswith("/") else k for k in self._entries})

    def place_values(self, attributes: Iterable[str]) -> list[str]:
        """Distinct first and newest values of the keys whose attribute is one of ``attributes``
        (e.g. the rooms of ``location`` keys), sorted."""
        attrs = set(attributes)
        out = {o.value for e in self._entries.values() if e.key.rpartition(".")[2] in attrs
               and not e.key.startswith("/") for o in (e.first, e.last)}
        return sorted(out)

    def holders(self, value: str, attributes: Iterable[str]) -> list[str]:
        """Reverse lookup: entities whose newest value of one of ``attributes`` is ``value``
        (case and ``_ - .`` insensitive), sorted (e.g. what is in the kitchen now)."""
        attrs, want = set(attributes), _flat(value)
        return sorted({e.key.rpartition(".")[0] for e in self._entries.values()
                       if not e.key.startswith("/") and e.key.rpartition(".")[2] in attrs
                       and _flat(e.last.value) == want})

    # --------------------------------------------------------------- rendering
    def line(self, key: str, epoch_ns: int) -> str:
        """One deterministic line for ``key``; times are whole seconds since ``epoch_ns``.

        ``cup.location: sink @95s (first kitchen table @12s, 7 obs)`` or, for a single
        observation, ``cup.location: sink @12s`` (compact: every token of the memory block is
        re-prefilled at each compaction).
        """
        e = self._entries[key]
        cut = self.max_value_chars
        last = f"{key}: {clean_value(e.last.value, cut)} @{(e.last.stamp_ns - epoch_ns) / 1e9:.0f}s"
        if e.count == 1 or e.first == e.last:
            return last
        first_t = (e.first.stamp_ns - epoch_ns) / 1e9
        return f"{last} (first {clean_value(e.first.value, cut)} @{first_t:.0f}s, {e.count} obs)"

    def render(self, epoch_ns: int, keys: Iterable[str] | None = None) -> list[str]:
        """Lines for ``keys`` (default: all), sorted by key; unknown keys are skipped."""
        chosen = self.keys() if keys is None else sorted(k for k in set(keys) if k in self._entries)
        return [self.line(k, epoch_ns) for k in chosen]

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, EntityMemory) and self._entries == other._entries
                and self.through_seq == other.through_seq and self.increments == other.increments)

    def __repr__(self) -> str:
        return f"EntityMemory({len(self)} keys, {self.increments} increments through seq {self.through_seq})"
