"""Observation stamps on ONE clock: the clock that also stamps the action chunks.

A perception message carries either its own stamp (``header.stamp``: when the sensor saw it,
on the sensor's clock) or none (``std_msgs/String``: the node uses the receive time, on the
node's clock). The state renders every increment's and every fact's time relative to ONE epoch
(pinned by the first increment), so all stamps must be on one clock. They are not when a bag is
replayed without ``use_sim_time`` (header stamps are the recording's, years away from the
node's clock), or when a sensor's clock is not synchronised: a fact would then read
"(at 95687906.5 s)". :func:`on_clock` keeps a message's own stamp when it agrees with the
scheduler's clock (within ``max_skew_ns``) and otherwise takes the receive time, moving the
facts' stamps by the same amount (their offsets within the message are kept).

The clock itself can jump back (a simulator reset, a bag loop): :class:`Timeline` keeps the
state's stamps monotone across such jumps (episode segments; see there).
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass
from typing import Callable, Sequence

from csr_ros.core.state.ledger import Fact


def on_clock(stamp_ns: int, facts: Sequence[Fact], now_ns: int, max_skew_ns: int) -> tuple[int, tuple[Fact, ...], bool]:
    """``(stamp_ns, facts, restamped)`` on the clock that read ``now_ns`` (ns).

    ``stamp_ns`` is kept when ``|now_ns - stamp_ns| <= max_skew_ns``, or when ``now_ns`` is 0 (a
    simulated clock before its first ``/clock``: nothing to compare with); else it becomes
    ``now_ns`` (the receive time) and every fact's stamp moves by ``now_ns - stamp_ns``.
    """
    if abs(now_ns - stamp_ns) <= max_skew_ns or now_ns == 0:
        return stamp_ns, tuple(facts), False
    return now_ns, shift_facts(facts, now_ns - stamp_ns), True


def shift_facts(facts: Sequence[Fact], shift_ns: int) -> tuple[Fact, ...]:
    """``facts`` with every stamp moved by ``shift_ns`` (ns)."""
    if not shift_ns:
        return tuple(facts)
    return tuple(dataclasses.replace(f, stamp_ns=f.stamp_ns + shift_ns) for f in facts)


@dataclass(frozen=True)
class ClockJump:
    """A jump back of the clock (a simulator reset, a bag loop, a system clock stepped back).

    ``delta_ns`` (< 0): the reading minus the newest earlier reading; ``now_ns``: the reading that
    revealed it (the clock's own time); ``segment``: the episode segment that starts here (the
    first segment is 0); ``offset_ns``: what :meth:`Timeline.to_state` adds from now on.
    """

    delta_ns: int
    now_ns: int
    segment: int
    offset_ns: int


class Timeline:
    """The state's timeline over a clock that may jump back.

    The cached state renders every time relative to one pinned epoch, and its stamps must never
    go back: a time already rendered is never re-rendered, and "(at 12.0 s)" followed by
    "(at -987.5 s)" would tell the model nothing true. The clock (ROS time; simulated under
    ``use_sim_time``) can jump back: a simulator reset, ``ros2 bag play --loop``. So stamps go
    into the state on its own timeline: the clock's time plus an offset that is 0 until the
    first jump back. A jump back of more than ``threshold_ns`` (smaller steps are reading races
    between threads and are ignored) starts a new *episode segment*: the offset grows so that
    the new segment starts ``threshold_ns`` after the newest time the state had seen, and the
    time goes on from there. The scheduler records the jump in the ledger (a marker increment),
    so the segment boundary is in the state and on disk, never silent.

    Readings go through :meth:`now_ns` (thread-safe: the clock is read under the lock, so
    readings are serialised). A reading of exactly 0 is a simulated clock that has not received
    its first ``/clock`` yet: it is passed through and neither detects nor moves anything.

    Args:
        clock_ns: the clock (ns). threshold_ns: smallest backward step that is a jump (ns, > 0).
        last_state_ns: the newest stamp the state already holds (a restored ledger), or None.
    """

    def __init__(self, clock_ns: Callable[[], int], threshold_ns: int, last_state_ns: int | None = None):
        if threshold_ns <= 0:
            raise ValueError("threshold_ns must be > 0")
        self.clock_ns, self.threshold_ns = clock_ns, threshold_ns
        self.offset_ns = 0
        self.segment = 0
        self._last_ns = last_state_ns  # newest reading (clock time; state time - offset)
        self._lock = threading.Lock()

    def now_ns(self) -> tuple[int, ClockJump | None]:
        """``(clock reading, the jump back it revealed or None)``."""
        with self._lock:
            now = int(self.clock_ns())
            if now == 0:
                return now, None
            last, jump = self._last_ns, None
            if last is not None and now < last - self.threshold_ns:
                self.segment += 1
                self.offset_ns += last - now + self.threshold_ns
                jump = ClockJump(now - last, now, self.segment, self.offset_ns)
            if last is None or now > last or jump is not None:
                self._last_ns = now
            return now, jump

    def to_state(self, stamp_ns: int) -> int:
        """A stamp on the clock -> the same instant on the state's timeline (ns)."""
        return stamp_ns + self.offset_ns
