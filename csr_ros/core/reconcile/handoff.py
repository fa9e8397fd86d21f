"""A single-slot, versioned, thread-safe latest-value mailbox (no torch, no ROS).

The reconciler (producer, its own thread) offers a rebuilt state tagged with its version; the
inference side (consumer, at a frame boundary) takes it only if it is newer than what it serves.
Only the newest offer is kept: a consumer that falls behind never sees a backlog, and neither
side ever waits for the other (the lock only guards two assignments).

    box: Handoff[tuple[StateLedger, KVState]] = Handoff()
    box.offer(3, (ledger, kv))          # reconciler thread
    got = box.take_if_newer(2)          # inference thread -> (3, (ledger, kv)), slot now empty
"""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

T = TypeVar("T")


class Handoff(Generic[T]):
    """Latest-value mailbox with a version per value (like a realtime buffer, but versioned)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._version: int | None = None
        self._payload: T | None = None
        self._high_water: int | None = None  # newest version ever offered (also after a take)

    def offer(self, version: int, payload: T) -> bool:
        """Put ``payload`` in the slot unless a same-or-newer version was already offered.

        Returns True when stored (replacing an older, not-yet-taken payload), False when the
        offer is not newer than the newest offer so far (it is dropped).
        """
        with self._lock:
            if self._high_water is not None and version <= self._high_water:
                return False
            self._version, self._payload, self._high_water = version, payload, version
            return True

    def take_if_newer(self, current_version: int) -> tuple[int, T] | None:
        """Take the payload if its version is newer than ``current_version``; empties the slot.

        A payload that is NOT newer than ``current_version`` is stale (the consumer moved on,
        e.g. through a synchronous fallback) and is discarded as well; None is returned.
        """
        with self._lock:
            if self._version is None:
                return None
            version, payload = self._version, self._payload
            self._version, self._payload = None, None
        if version <= current_version:
            return None
        return version, payload  # type: ignore[return-value]

    def peek_version(self) -> int | None:
        """Version waiting in the slot (None when empty); does not take it."""
        with self._lock:
            return self._version

    def clear(self) -> None:
        """Drop whatever waits in the slot (the version high-water mark is kept)."""
        with self._lock:
            self._version, self._payload = None, None
