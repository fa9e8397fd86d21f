"""What the producers (ROS callbacks) may queue for the model thread: bounded, checked at the door.

* :class:`CoalescingInbox`: perception waiting for the next frame, one bounded queue per source
  (topic). When a source is faster than the frames (a camera at 10x its rate, a burst), its
  oldest waiting message is dropped for the newest one (coalescing: the newest state of a topic
  supersedes an older one that was never appended). Memory stays bounded by
  ``depth_per_source * sources``; nothing already accepted into the state is ever dropped.
* :func:`request_refusal`: why a language request cannot be opened (empty, too long, control
  characters), before any model work; the scheduler adds the concurrency limit.

No torch, no ROS: thread safety is the caller's (the scheduler holds its lock around these).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Sequence

Item = tuple[str, int, str, tuple]
"""``(source, stamp_ns, text, facts)``: one observation waiting for the next frame."""


def has_control_chars(text: str) -> bool:
    """True when ``text`` holds a C0/C1 control character other than tab, newline, carriage return."""
    return any((ord(c) < 32 and c not in "\t\n\r") or 0x7F <= ord(c) < 0xA0 for c in text)


@dataclass
class InboxCounters:
    """Messages (observations) offered, and dropped by coalescing."""

    offered: int = 0
    coalesced: int = 0


class CoalescingInbox:
    """Per-source bounded FIFO queues that keep their global arrival order.

    Args:
        depth_per_source: most waiting items of one source (>= 1); a newer item beyond it
            replaces the oldest waiting item of the same source.
        max_sources: most distinct sources waiting at once (a bound on memory even if a caller
            invents sources); an item of a new source beyond it is dropped (coalesced).
    """

    def __init__(self, depth_per_source: int = 8, max_sources: int = 256):
        if depth_per_source < 1 or max_sources < 1:
            raise ValueError("depth_per_source and max_sources must be >= 1")
        self.depth_per_source, self.max_sources = depth_per_source, max_sources
        self.counters = InboxCounters()
        self._items: "OrderedDict[int, Item]" = OrderedDict()  # arrival number -> item
        self._by_source: dict[str, list[int]] = {}  # source -> its waiting arrival numbers
        self._next = 0

    def __len__(self) -> int:
        return len(self._items)

    def waiting(self, source: str) -> int:
        """Items of ``source`` waiting now."""
        return len(self._by_source.get(source, ()))

    def put(self, source: str, stamp_ns: int, text: str, facts: Sequence = ()) -> bool:
        """Queue one observation. False when it coalesced an older one (or was dropped)."""
        self.counters.offered += 1
        keys = self._by_source.get(source)
        if keys is None:
            if len(self._by_source) >= self.max_sources:
                self.counters.coalesced += 1
                return False
            keys = self._by_source[source] = []
        kept_all = True
        if len(keys) >= self.depth_per_source:
            del self._items[keys.pop(0)]
            self.counters.coalesced += 1
            kept_all = False
        key, self._next = self._next, self._next + 1
        self._items[key] = (source, int(stamp_ns), text, tuple(facts))
        keys.append(key)
        return kept_all

    def take_all(self) -> list[Item]:
        """Every waiting item in arrival order; the inbox is empty afterwards."""
        out = list(self._items.values())
        self._items.clear()
        self._by_source.clear()
        return out


def request_refusal(request_id: str, question: str, max_id_chars: int, max_question_chars: int,
                    context: str = "") -> str:
    """Why a request cannot be opened ("" when it can). ``question`` is already whitespace-normalised;
    ``context``: "" (the configured one), "state" or "memory"."""
    if context not in ("", "state", "memory"):
        return f"unknown answer context {context[:32]!r} (state or memory)"
    for what, text, limit in (("request id", request_id, max_id_chars), ("question", question, max_question_chars)):
        if not text:
            return f"empty {what}"
        if len(text) > limit:
            return f"{what} longer than {limit} characters"
        if has_control_chars(text):
            return f"{what} has control characters"
    return ""


def printable_id(request_id: str, max_id_chars: int) -> str:
    """The request id echoed in a refusal: control characters replaced, cut to ``max_id_chars``."""
    cut = request_id[:max_id_chars]
    return "".join("?" if has_control_chars(c) else c for c in cut)


class ThrottledLog:
    """At most one log line per ``key`` every ``period_s`` (monotonic clock); the next line that
    gets through says how many were held back. Thread-safe enough for counters of log lines
    (a lost increment of ``suppressed`` under a race only changes the "more" count)."""

    def __init__(self, logger: logging.Logger, period_s: float = 5.0,
                 clock_s: Callable[[], float] = time.monotonic):
        self.logger, self.period_s, self.clock_s = logger, period_s, clock_s
        self._last: dict[str, float] = {}
        self.suppressed: dict[str, int] = {}
        self.emitted = 0

    def __call__(self, level: int, key: str, msg: str, *args) -> bool:
        """Log ``msg % args`` at ``level`` unless ``key`` logged less than ``period_s`` ago."""
        now = self.clock_s()
        last = self._last.get(key)
        if last is not None and 0 <= now - last < self.period_s:
            self.suppressed[key] = self.suppressed.get(key, 0) + 1
            return False
        more = self.suppressed.pop(key, 0)
        self._last[key] = now
        self.emitted += 1
        self.logger.log(level, msg + (f" ({more} more since the last report)" if more else ""), *args)
        return True
