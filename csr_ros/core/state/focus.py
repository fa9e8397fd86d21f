"""Query-time focus: which entities a question names, and their entity-memory lines.

A small model reads one fact well and cannot pick one fact out of many, so a question gets the
memory lines of the entities it names appended right before it (after the cached state, never
inside it: the state stays prefix-stable and the lines are cropped away with the query).

Matching, in order (pure string work; the embedding model is injected, so the core stays light):

1. exact: the entity key occurs in the question as written (whole words);
2. normalised: lower case, ``_ - . /`` and other punctuation as spaces, whitespace collapsed
   (``red_cup`` matches "the Red Cup");
3. only when 1-2 found nothing: ``similarity(question, entities)`` (e.g. all-MiniLM-L6-v2
   cosine similarity) at or above ``threshold``, best first.

A match that lies inside a longer match is dropped ("cup" inside "red cup").

Facets: every memory key has a first and a newest observation. A question that asks for one of
them (a whole-word cue such as "first" / "originally", or "now" / "currently", configured in
``memory.first_seen_cues`` and ``memory.last_seen_cues``) gets only that facet's lines; a
question with cues of both kinds or of neither gets both. Given the two lines "first seen:
laundry room" and "last seen: kitchen", SmolLM2-135M answered "where was it first seen?" with
the newest value in most of its misses on the development episodes, whatever the layout.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence

from csr_ros.core.state.entity_memory import EntityMemory, clean_value

Similarity = Callable[[str, Sequence[str]], Sequence[float]]
"""``similarity(question, entities) -> one score per entity`` (cosine, higher = closer)."""

_PUNCT = re.compile(r"[^0-9a-z]+")


def normalise(text: str) -> str:
    """Lower case, every run of non-alphanumerics as one space, trimmed."""
    return _PUNCT.sub(" ", text.lower()).strip()


@dataclass(frozen=True)
class FocusMatch:
    """An entity a question names. ``how``: exact | normalised | similar; ``score`` in [0, 1]."""

    entity: str
    how: str
    score: float


def _spans(haystack: str, needle: str) -> list[tuple[int, int]]:
    if not needle:
        return []
    rx = re.compile(r"(?<![0-9A-Za-z])" + re.escape(needle) + r"(?![0-9A-Za-z])")
    return [m.span() for m in rx.finditer(haystack)]


def _drop_nested(found: dict[str, list[tuple[int, int]]]) -> list[str]:
    """Entities with at least one span not inside another entity's longer span."""
    keep = []
    for e, spans in found.items():
        others = [s for o, ss in found.items() if o != e for s in ss]
        if any(not any(a <= s0 and s1 <= b and (b - a) > (s1 - s0) for a, b in others) for s0, s1 in spans):
            keep.append(e)
    return keep


FACETS = ("first", "last")
"""The two observations of a memory key, rendered as "first seen" and "last seen" lines."""


def _cue_rx(cues: Sequence[str]) -> re.Pattern | None:
    words = [w for w in map(normalise, cues) if w]
    if not words:
        return None
    return re.compile(r"(?<![0-9a-z])(?:" + "|".join(re.escape(w) for w in words) + r")(?![0-9a-z])")


class FocusMatcher:
    """Finds the entities a question names and the facets it asks for (see the module doc).

    Args:
        similarity: fallback scorer (None: no fallback).
        threshold: minimum fallback score, same scale as ``similarity``.
        max_entities: most entities returned, best first.
        first_cues, last_cues: whole-word cues of a question about the first / the newest
            observation (empty: both facets always).
    """

    def __init__(self, similarity: Similarity | None = None, threshold: float = 0.55, max_entities: int = 4,
                 first_cues: Sequence[str] = (), last_cues: Sequence[str] = ()):
        self.similarity, self.threshold, self.max_entities = similarity, threshold, max_entities
        self._cues = {"first": _cue_rx(first_cues), "last": _cue_rx(last_cues)}

    @classmethod
    def from_config(cls, memory_cfg, similarity: Similarity | None = None) -> "FocusMatcher":
        """The matcher of the ``memory`` parameter group."""
        return cls(similarity, memory_cfg.focus_threshold, memory_cfg.focus_max_lines,
                   memory_cfg.first_seen_cues, memory_cfg.last_seen_cues)

    def facets(self, question: str) -> tuple[str, ...]:
        """The facets ``question`` asks for: ("first",), ("last",) or both (cues of both kinds or none)."""
        nq = normalise(question)
        asked = tuple(f for f in FACETS if self._cues[f] is not None and self._cues[f].search(nq))
        return asked if len(asked) == 1 else FACETS

    def match(self, question: str, entities: Sequence[str]) -> list[FocusMatch]:
        """Matches, longest key first for text matches, best score first for the fallback."""
        nq = normalise(question)
        found: dict[str, list[tuple[int, int]]] = {}
        for e in entities:
            spans = _spans(nq, normalise(e))
            if spans:
                found[e] = spans
        if found:
            kept = sorted(_drop_nested(found), key=lambda e: (-len(normalise(e)), e))
            how = {e: "exact" if _spans(question, e) else "normalised" for e in kept}
            return [FocusMatch(e, how[e], 1.0) for e in kept[: self.max_entities]]
        return self._similar(question, entities)

    def _similar(self, question: str, entities: Sequence[str]) -> list[FocusMatch]:
        if self.similarity is None or not entities:
            return []
        scores = list(self.similarity(question, list(entities)))
        ranked = sorted(((s, e) for e, s in zip(entities, scores) if s >= self.threshold), key=lambda x: (-x[0], x[1]))
        return [FocusMatch(e, "similar", float(s)) for s, e in ranked[: self.max_entities]]


def entity_keys(memory: EntityMemory) -> dict[str, list[str]]:
    """Entity name -> its memory keys (``"<entity>.<attribute>"``); topic keys are not entities."""
    out: dict[str, list[str]] = {}
    for key in memory.keys():
        if key.startswith("/") or "." not in key:
            continue
        out.setdefault(key.rsplit(".", 1)[0], []).append(key)
    return out


def render_lines(memory: EntityMemory, keys: Sequence[str], epoch_ns: int,
                 facets: Sequence[str] = FACETS) -> list[str]:
    """Up to two lines per key, its first and its newest observation (times since ``epoch_ns``;
    ``facets`` picks which)::

        red cup location first seen: kitchen (at 12.3 s)
        red cup location last seen: bedroom (at 95.1 s)

    One labelled fact per line: a 135M model reads one fact well and mixes facts packed in one
    line (measured on development episodes, see episodes/README.md).
    """
    out = []
    for key in keys:
        e = memory.get(key)
        if e is None:
            continue
        entity, _, attribute = key.rpartition(".")
        name = f"{entity} {attribute}" if entity else key
        for facet, obs in (("first", e.first), ("last", e.last)):
            if facet not in facets:
                continue
            label = f"{facet} seen"
            value = clean_value(obs.value, memory.max_value_chars)
            out.append(f"{name} {label}: {value} (at {(obs.stamp_ns - epoch_ns) / 1e9:.1f} s)")
    return out


@dataclass(frozen=True)
class Focus:
    """What focus found for one question: the matches and the memory lines to append."""

    matches: tuple[FocusMatch, ...]
    lines: tuple[str, ...]
    facets: tuple[str, ...] = FACETS

    @property
    def entities(self) -> tuple[str, ...]:
        return tuple(m.entity for m in self.matches)


def focus_for(question: str, memory: EntityMemory | None, epoch_ns: int, matcher: FocusMatcher,
              max_lines: int = 4) -> Focus:
    """The memory lines of the entities ``question`` names (at most ``max_lines``, best first),
    of the facets it asks for."""
    if memory is None or len(memory) == 0:
        return Focus((), ())
    by_entity = entity_keys(memory)
    matches = matcher.match(question, list(by_entity))
    facets = matcher.facets(question)
    lines: list[str] = []
    for m in matches:
        lines += render_lines(memory, by_entity[m.entity], epoch_ns, facets)
    return Focus(tuple(matches), tuple(lines[:max_lines]), facets)
