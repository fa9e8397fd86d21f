"""The action chunk between the model worker (writer) and the action clock (reader): one slot.

The worker puts each new decision into the slot; the publisher (a timer at the control rate, any
thread) reads it without ever waiting on the model. What the publisher gets at ``now_ns``:

* the current chunk from the step due at ``now_ns`` on (time-shifted: ``stamp_ns`` moved by
  whole steps, earlier rows dropped) while it is valid;
* otherwise the registry's hold chunk (``is_hold``) stamped ``now_ns``: no chunk yet, past
  ``valid_until`` (never a stale chunk), or stamped more than its validity after ``now_ns``
  (made before a clock jump back) — so the action topic never goes silent while serving;
* a hold *armed* by the worker (after a model failure, at deactivation) once, before anything else;
* not serving (lifecycle inactive) and nothing armed: nothing.

Thread-safe (its own lock); no torch, no ROS.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Callable

from csr_ros.core.runtime.outputs import ChunkOut


class ChunkSlot:
    """Single-slot latest chunk + one-shot armed hold (see the module doc).

    Args:
        make_hold: ``now_ns -> ChunkOut``, the registry's hold chunk stamped ``now_ns``.
        dt_ns: time between two rows of a chunk, ns.
        validity_ns: how long a chunk is valid after its stamp, ns.
    """

    def __init__(self, make_hold: Callable[[int], ChunkOut], dt_ns: int, validity_ns: int):
        self.make_hold, self.dt_ns, self.validity_ns = make_hold, int(dt_ns), int(validity_ns)
        self._lock = threading.Lock()
        self._chunk: ChunkOut | None = None
        self._armed: ChunkOut | None = None

    @property
    def current(self) -> ChunkOut | None:
        """The newest decision (None: none, or dropped)."""
        return self._chunk

    def put(self, chunk: ChunkOut) -> None:
        """A new decision replaces the current chunk (and any armed hold)."""
        with self._lock:
            self._chunk, self._armed = chunk, None

    def drop(self, hold: ChunkOut | None = None) -> None:
        """No current chunk from now on; ``hold``: publish it once, first."""
        with self._lock:
            self._chunk, self._armed = None, hold

    def for_publish(self, now_ns: int, serving: bool) -> ChunkOut | None:
        """What the publisher sends at ``now_ns`` (see the module doc); never blocks on the model."""
        with self._lock:
            armed, self._armed = self._armed, None
            current = self._chunk
        if armed is not None:
            return armed
        out = self.shifted(current, now_ns)
        if out is None and serving:
            out = self.make_hold(now_ns)
        return out

    def shifted(self, c: ChunkOut | None, now_ns: int) -> ChunkOut | None:
        """The valid rest of ``c`` at ``now_ns``, or None."""
        if c is None or now_ns >= c.valid_until_ns or c.stamp_ns - now_ns > self.validity_ns:
            return None
        i = max(0, (now_ns - c.stamp_ns) // self.dt_ns)
        if i == 0:
            return c
        if i >= c.horizon:
            return None
        d = len(c.names)
        return dataclasses.replace(c, stamp_ns=c.stamp_ns + i * self.dt_ns, horizon=c.horizon - i,
                                   data=c.data[i * d:])
