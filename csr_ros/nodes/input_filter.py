"""The per-input decision every perception message goes through: throttle, serialize, count.

ROS-free (messages are read by attribute), so the node's ingest (:mod:`csr_ros.nodes.ingest`,
which adds locking, forwarding and throttled logging) and the offline evaluation
(:mod:`csr_ros.cli.eval.inputs`, which replays a bag through the same decision) share it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from csr_ros.nodes.serializers import Observation, Rejected

Serializer = Callable[[Any, int], "Observation | None"]


@dataclass
class InputCounters:
    """Per-input counts (messages)."""

    received: int = 0
    accepted: int = 0
    throttled: int = 0
    unchanged: int = 0
    rejected: int = 0
    last_reject_reason: str = ""


class InputFilter:
    """Throttle (``min_period_ns`` between two accepted messages, on the caller's clock), then
    serialize; counts every outcome. Not thread-safe (the ingest holds a lock around it)."""

    def __init__(self, serializer: Serializer, min_period_ns: int):
        self.serializer, self.min_period_ns = serializer, int(min_period_ns)
        self.counters = InputCounters()
        self._last_accept_ns: int | None = None

    def offer(self, msg: Any, stamp_ns: int, now_ns: int) -> tuple[str, Observation | None]:
        """One message stamped ``stamp_ns``, received at ``now_ns`` (ns). Returns ("accepted",
        observation), ("throttled" | "unchanged", None), or raises :class:`Rejected` (counted;
        the reason is kept in ``counters.last_reject_reason``). Any other serializer error is
        counted and re-raised as :class:`Rejected` naming it."""
        c = self.counters
        c.received += 1
        last = self._last_accept_ns
        if last is not None and 0 <= now_ns - last < self.min_period_ns:
            c.throttled += 1
            return "throttled", None
        try:
            obs = self.serializer(msg, stamp_ns)
        except Rejected as e:
            self._count_reject(f"rejected a malformed message: {e}")
            raise
        except Exception as e:  # noqa: BLE001 - a serializer bug must not escape as anything else
            self._count_reject(f"failed on a message: {type(e).__name__}: {e}")
            raise Rejected(f"{type(e).__name__}: {e}") from e
        if obs is None:
            c.unchanged += 1
            return "unchanged", None
        return "accepted", obs

    def commit(self, now_ns: int) -> None:
        """The accepted observation was forwarded: count it and restart the throttle window."""
        self._last_accept_ns = now_ns
        self.counters.accepted += 1

    def _count_reject(self, reason: str) -> None:
        self.counters.rejected += 1
        self.counters.last_reject_reason = reason
